"""docs/deploy/: the nginx, Caddy and systemd examples are valid for their tools, and send each
path to the Heddle listener that serves it, on the ports `heddle generate-config` writes.

Each tool's own check runs when the tool is installed (`nginx -t`, `caddy adapt`,
`systemd-analyze verify`) and the test says so when it is not. nginx is also run for real on
loopback, with `nginx.conf` moved to free ports, in front of a running Heddle: requests through
it must reach the client API, the federation API and both `.well-known` answers.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from homeserver.app import HomeServer
from homeserver.cli import federation_port_for, generate_config
from homeserver.config import HomeserverConfig, ListenerConfig, load_config
from homeserver.tls import generate_self_signed_certificate
from tests.harness import SERVER_NAME, isolate_from_dns, make_config
from tests.synapse_peer import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy"
NGINX_CONF = DEPLOY / "nginx.conf"
CADDYFILE = DEPLOY / "Caddyfile"
UNIT = DEPLOY / "heddle.service"
DEPLOY_README = DEPLOY / "README.md"

# The names the examples use: the server name, and the host clients and servers connect to.
SERVER_HOST = "example.org"
MATRIX_HOST = "matrix.example.org"

# Paths other servers call, and paths clients call, as the spec names them.
FEDERATION_PATHS = (
    "/_matrix/federation/v1/version",
    "/_matrix/federation/v1/send/txn1",
    "/_matrix/key/v2/server",
    "/_matrix/key/v2/query",
)
CLIENT_PATHS = (
    "/_matrix/client/versions",
    "/_matrix/client/v3/sync",
    "/_matrix/media/v3/upload",
    "/_matrix/client/v1/media/download/example.org/abc",
    "/.well-known/matrix/client",
    "/.well-known/matrix/server",
)


@dataclass(frozen=True)
class Upstream:
    """Where a proxy sends a request: Heddle's listener on loopback."""

    tls: bool
    port: int


def generated_config() -> HomeserverConfig:
    """What `heddle generate-config --server-name example.org` writes (in a temporary directory)."""
    data_dir = Path(tempfile.mkdtemp(prefix="heddle-deploy-"))
    try:
        return load_config(str(generate_config(SERVER_HOST, str(data_dir))), environ={})
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def generated_listener(listener_type: str) -> ListenerConfig:
    (listener,) = [lst for lst in generated_config().listeners if lst.type == listener_type]
    return listener


def expected_upstream(path: str) -> Upstream:
    """The listener of a generated config that serves `path`."""
    federation = path.startswith(("/_matrix/federation/", "/_matrix/key/"))
    listener = generated_listener("federation" if federation else "client")
    return Upstream(listener.tls, listener.port)


def replace_once(text: str, old: str, new: str, what: str) -> str:
    """Replace every `old`, which must occur: an example that changed shape fails here, by name,
    instead of being tested half-adapted."""
    if old not in text:
        raise AssertionError(f"{what} no longer contains {old!r}; update this test with it")
    return text.replace(old, new)


# ----- nginx ---------------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def children(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]


_NGINX_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|[{};]|[^\s{};'"]+""")


def parse_nginx(text: str) -> list[Directive]:
    """nginx's configuration syntax: `name args;` and `name args { ... }`, `#` comments."""
    tokens = _NGINX_TOKEN.findall("\n".join(line.split("#", 1)[0] for line in text.splitlines()))
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for token in tokens:
        if token == ";":
            stack[-1].append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            directive = Directive(words[0], words[1:], [])
            stack[-1].append(directive)
            stack.append(directive.block)  # type: ignore[arg-type]
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        else:
            words.append(token)
    assert len(stack) == 1 and not words, "unbalanced braces in nginx.conf"
    return stack[0]


def nginx_server(servers: list[Directive], host: str) -> Directive:
    """The HTTPS server block for `host` (the one on port 80 only redirects)."""
    (server,) = [
        s
        for s in servers
        if host in s.children("server_name")[0].args
        and any("ssl" in listen.args for listen in s.children("listen"))
    ]
    return server


def nginx_upstream(server: Directive, path: str) -> Upstream | None:
    """Where nginx sends `path` in `server`: the longest matching prefix location wins (the
    examples use no regular-expression locations, checked below)."""
    locations = server.children("location")
    for location in locations:
        assert len(location.args) == 1, f"only prefix locations expected: {location.args}"
    matching = [loc for loc in locations if path.startswith(loc.args[0])]
    if not matching:
        return None
    best = max(matching, key=lambda loc: len(loc.args[0]))
    (proxy_pass,) = best.children("proxy_pass")
    match = re.fullmatch(r"(https?)://127\.0\.0\.1:(\d+)", proxy_pass.args[0])
    assert match, (
        f"location {best.args[0]}: proxy_pass {proxy_pass.args[0]} should name a loopback port and "
        "no URI part (with one, nginx rewrites the signed request URI)"
    )
    return Upstream(match.group(1) == "https", int(match.group(2)))


def uncommented_port_8448_block(text: str) -> str:
    """The commented-out `server` block serving federation on port 8448, uncommented."""
    match = re.search(r"^# server \{\n(?:#.*\n)*?# \}\n", text, re.MULTILINE)
    assert match, "nginx.conf should show the port 8448 server block, commented out"
    return "\n".join(line[2:] for line in match.group(0).splitlines()) + "\n"


def nginx_main_config(tmp: Path, site: str) -> Path:
    """An nginx main config holding `site` in `http`, with every file it writes under `tmp`."""
    (tmp / "site.conf").write_text(site, encoding="utf-8")
    main = tmp / "nginx.conf"
    temp_paths = "\n".join(
        f"    {name}_temp_path {tmp / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main.write_text(
        f"""daemon off;
master_process off;
pid {tmp / "nginx.pid"};
error_log {tmp / "error.log"} warn;
events {{}}
http {{
    access_log off;
{temp_paths}
    include {tmp / "site.conf"};
}}
""",
        encoding="utf-8",
    )
    return main


def with_test_certificates(text: str, tmp: Path) -> str:
    """nginx.conf with its Let's Encrypt paths pointing at a throwaway self-signed certificate."""
    cert, key = tmp / "proxy.crt", tmp / "proxy.key"
    if not cert.exists():
        generate_self_signed_certificate(cert, key, MATRIX_HOST)
    text = re.sub(r"/etc/letsencrypt/live/[^/]+/fullchain\.pem", str(cert), text)
    return re.sub(r"/etc/letsencrypt/live/[^/]+/privkey\.pem", str(key), text)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )


def nginx_test(main: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    nginx = nginx_binary()
    assert nginx is not None
    return subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=30,
    )


class NginxConfigTests(unittest.TestCase):
    def setUp(self) -> None:
        self.text = NGINX_CONF.read_text(encoding="utf-8")
        self.servers = [d for d in parse_nginx(self.text) if d.name == "server"]

    def test_federation_paths_go_to_the_federation_listener_over_tls(self) -> None:
        server = nginx_server(self.servers, MATRIX_HOST)
        for path in FEDERATION_PATHS:
            self.assertEqual(nginx_upstream(server, path), expected_upstream(path), path)
        self.assertEqual(expected_upstream("/_matrix/key/v2/server"), Upstream(True, 8448))

    def test_client_paths_and_well_known_go_to_the_client_listener(self) -> None:
        server = nginx_server(self.servers, MATRIX_HOST)
        for path in CLIENT_PATHS:
            self.assertEqual(nginx_upstream(server, path), expected_upstream(path), path)
        self.assertEqual(expected_upstream("/_matrix/client/versions"), Upstream(False, 8008))

    def test_server_name_host_delegates_with_well_known(self) -> None:
        server = nginx_server(self.servers, SERVER_HOST)
        for path in ("/.well-known/matrix/server", "/.well-known/matrix/client"):
            self.assertEqual(nginx_upstream(server, path), expected_upstream(path), path)
        self.assertIsNone(nginx_upstream(server, "/_matrix/client/versions"))

    def test_port_8448_block_reaches_only_the_federation_listener(self) -> None:
        (server,) = parse_nginx(uncommented_port_8448_block(self.text))
        self.assertIn("8448", " ".join(server.children("listen")[0].args))
        upstream = nginx_upstream(server, "/_matrix/federation/v1/version")
        assert upstream is not None
        self.assertTrue(upstream.tls)

    def test_client_address_is_set_not_appended(self) -> None:
        # Heddle trusts the first X-Forwarded-For address; appending keeps the client's own.
        self.assertNotIn("$proxy_add_x_forwarded_for", self.text)
        server = nginx_server(self.servers, MATRIX_HOST)
        headers = {tuple(d.args) for d in server.children("proxy_set_header")}
        self.assertIn(("X-Forwarded-For", "$remote_addr"), headers)
        for location in server.children("location"):
            # A location with a proxy_set_header of its own inherits none of the server's.
            self.assertEqual(location.children("proxy_set_header"), [], location.args)

    def test_uploads_up_to_the_default_media_limit_get_through(self) -> None:
        server = nginx_server(self.servers, MATRIX_HOST)
        (size,) = server.children("client_max_body_size")
        match = re.fullmatch(r"(\d+)([kKmMgG]?)", size.args[0])
        assert match is not None
        factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
        self.assertGreaterEqual(int(match.group(1)) * factor, generated_config().media.max_upload_bytes)

    def test_nginx_accepts_the_config(self) -> None:
        if nginx_binary() is None:
            raise unittest.SkipTest("nginx is not installed (apt-get install nginx-light)")
        tmp = Path(tempfile.mkdtemp(prefix="heddle-nginx-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        for what, site in (
            ("nginx.conf", self.text),
            ("its port 8448 block", uncommented_port_8448_block(self.text)),
        ):
            result = nginx_test(nginx_main_config(tmp, with_test_certificates(site, tmp)), tmp)
            self.assertEqual(result.returncode, 0, f"nginx -t on {what}: {result.stderr}")
            # Deprecated or ignored directives are warnings, with exit status 0. One is expected
            # from nginx 1.25.1 on, which the file's header explains.
            warnings = [
                line
                for line in result.stderr.splitlines()
                if "[warn]" in line and '"listen ... http2" directive is deprecated' not in line
            ]
            self.assertEqual(warnings, [], what)


# ----- nginx in front of a running Heddle -----------------------------------------------------


def _tls_context() -> ssl.SSLContext:
    # The proxy's certificate here is a throwaway self-signed one.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _ConnectionWithSNI(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 that names `host` in TLS (SNI) as a client of that host would."""

    def __init__(self, port: int, host: str) -> None:
        super().__init__("127.0.0.1", port, context=_tls_context(), timeout=30)
        self._sni_host = host

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = _tls_context().wrap_socket(self.sock, server_hostname=self._sni_host)


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    port: int,
    host: str,
    path: str,
    *,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
    tls: bool = True,
) -> Answer:
    """One blocking request to the proxy (run it in a thread: Heddle runs on this reactor)."""
    if tls:
        connection: http.client.HTTPConnection = _ConnectionWithSNI(port, host)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    all_headers = {"Host": host, **(headers or {})}
    payload = None if body is None else json.dumps(body).encode()
    if payload is not None:
        all_headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


def wait_for_port(
    port: int, process: subprocess.Popen[str], error_log: Path, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = error_log.read_text(encoding="utf-8") if error_log.exists() else ""
            raise AssertionError(f"nginx exited with status {process.returncode}: {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nginx did not listen on 127.0.0.1:{port} within {timeout}s")


class NginxInFrontOfHeddleTests(unittest.TestCase):
    """nginx.conf, moved from 443/80/8448 and Heddle's generated ports to free loopback
    ports, serving a Heddle configured as docs/deploy/README.md says. The proxy's behaviour,
    not storage, is under test: SQLite alone is enough."""

    timeout = 120

    def setUp(self) -> Any:
        if nginx_binary() is None:
            raise unittest.SkipTest("nginx is not installed (apt-get install nginx-light)")
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="heddle-nginx-run-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        data_dir = self.tmp / "heddle"
        data_dir.mkdir()
        cert, key = data_dir / "federation.crt", data_dir / "federation.key"
        generate_self_signed_certificate(cert, key, SERVER_NAME)
        config = make_config(
            "sqlite",
            data_dir,
            public_baseurl=f"https://{MATRIX_HOST}/",
            serve_server_wellknown=True,
            federation_address=f"{MATRIX_HOST}:443",
            listeners=[
                {"type": "client", "port": 0, "x_forwarded": True},
                {
                    "type": "federation",
                    "port": 0,
                    "tls": True,
                    "tls_certificate_path": str(cert),
                    "tls_private_key_path": str(key),
                    "x_forwarded": True,
                },
            ],
        )
        hs = HomeServer(config, reactor)
        isolate_from_dns(hs)
        self.addCleanup(lambda: defer.ensureDeferred(hs.stop()))
        await hs.setup()
        hs.start_listening()
        self.client_port, self.federation_port = (p.getHost().port for p in hs.ports)

        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.https_port, self.http_port, self.port_8448 = sorted(ports)
        text = NGINX_CONF.read_text(encoding="utf-8")
        site = self._adapted(text + uncommented_port_8448_block(text))
        main = nginx_main_config(self.tmp, with_test_certificates(site, self.tmp))
        nginx = nginx_binary()
        assert nginx is not None
        process = subprocess.Popen(
            [nginx, "-p", str(self.tmp), "-e", str(self.tmp / "error.log"), "-c", str(main)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

        def stop_nginx() -> None:
            process.terminate()
            process.wait(timeout=10)
            if process.stderr is not None:
                process.stderr.close()

        self.addCleanup(stop_nginx)
        for port in (self.https_port, self.http_port, self.port_8448):
            await threads.deferToThread(wait_for_port, port, process, self.tmp / "error.log")

    def _adapted(self, site: str) -> str:
        """`site` on the test's free ports, in front of the test server's listeners."""
        client, federation = generated_listener("client"), generated_listener("federation")
        what = "docs/deploy/nginx.conf"
        site = re.sub(r"^\s*listen \[::\]:\d+.*;\n", "", site, flags=re.MULTILINE)
        site = replace_once(site, "listen 443 ssl", f"listen 127.0.0.1:{self.https_port} ssl", what)
        site = replace_once(site, "listen 80;", f"listen 127.0.0.1:{self.http_port};", what)
        site = replace_once(site, "listen 8448 ssl", f"listen 127.0.0.1:{self.port_8448} ssl", what)
        to_federation = f"https://127.0.0.1:{self.federation_port}"
        site = replace_once(site, f"https://127.0.0.1:{federation.port}", to_federation, what)
        # The port 8448 block's upstream is the federation listener moved to another port.
        site = replace_once(site, "https://127.0.0.1:8449", to_federation, what)
        to_client = f"http://127.0.0.1:{self.client_port}"
        return replace_once(site, f"http://127.0.0.1:{client.port}", to_client, what)

    async def get(self, path: str, host: str = MATRIX_HOST, **kwargs: Any) -> Answer:
        port = kwargs.pop("port", self.https_port)
        return await threads.deferToThread(fetch, port, host, path, **kwargs)

    async def test_client_api_answers_through_the_proxy(self) -> None:
        answer = await self.get("/_matrix/client/versions")
        self.assertEqual(answer.status, 200, answer.body)
        self.assertIn("versions", answer.json)

    async def test_federation_api_answers_through_the_proxy(self) -> None:
        keys = await self.get("/_matrix/key/v2/server")
        self.assertEqual(keys.status, 200, keys.body)
        self.assertEqual(keys.json["server_name"], SERVER_NAME)
        self.assertTrue(keys.json["verify_keys"])
        version = await self.get("/_matrix/federation/v1/version")
        self.assertEqual(version.status, 200, version.body)
        self.assertIn("server", version.json)
        # The client listener does not serve federation: a proxy sending all of /_matrix
        # there would answer other servers with 404s.
        direct = await threads.deferToThread(
            fetch, self.client_port, "127.0.0.1", "/_matrix/key/v2/server", tls=False
        )
        self.assertEqual(direct.status, 404)

    async def test_federation_answers_on_the_port_8448_block(self) -> None:
        answer = await self.get("/_matrix/federation/v1/version", port=self.port_8448)
        self.assertEqual(answer.status, 200, answer.body)
        answer = await self.get("/_matrix/key/v2/server", host=SERVER_HOST, port=self.port_8448)
        self.assertEqual(answer.json["server_name"], SERVER_NAME)

    async def test_server_name_delegates_to_the_proxy_host(self) -> None:
        server = await self.get("/.well-known/matrix/server", host=SERVER_HOST)
        self.assertEqual(server.status, 200, server.body)
        self.assertEqual(server.json, {"m.server": f"{MATRIX_HOST}:443"})
        client = await self.get("/.well-known/matrix/client", host=SERVER_HOST)
        self.assertEqual(client.status, 200, client.body)
        self.assertEqual(client.json["m.homeserver"]["base_url"], f"https://{MATRIX_HOST}/")
        # Exactly one CORS header: browsers refuse an answer with two.
        self.assertEqual(client.headers.get_all("Access-Control-Allow-Origin"), ["*"])

    async def test_plain_http_redirects_to_https(self) -> None:
        answer = await self.get("/_matrix/client/versions", port=self.http_port, tls=False)
        self.assertEqual(answer.status, 301)
        self.assertEqual(
            answer.headers["Location"], f"https://{MATRIX_HOST}/_matrix/client/versions"
        )

    async def test_heddle_sees_the_proxy_peer_not_a_client_chosen_address(self) -> None:
        spoofed = {"X-Forwarded-For": "203.0.113.7"}
        registered = await self.get(
            "/_matrix/client/v3/register",
            method="POST",
            body={"username": "alice", "password": "correct horse battery",
                  "auth": {"type": "m.login.dummy"}},
            headers=spoofed,
        )
        self.assertEqual(registered.status, 200, registered.body)
        token = registered.json["access_token"]
        devices = await self.get(
            "/_matrix/client/v3/devices",
            headers={**spoofed, "Authorization": f"Bearer {token}"},
        )
        self.assertEqual(devices.status, 200, devices.body)
        (device,) = devices.json["devices"]
        self.assertEqual(device["last_seen_ip"], "127.0.0.1")


# ----- Caddy ---------------------------------------------------------------------------------


def caddy_sites(text: str) -> dict[str, str]:
    """Top-level site blocks of a Caddyfile (comments dropped): address -> block body."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    sites: dict[str, str] = {}
    depth, address = 0, ""
    body: list[str] = []
    for line in lines:
        if depth == 0 and line.rstrip().endswith("{"):
            address, body = line.rstrip()[:-1].strip(), []
        elif depth > 0:
            body.append(line)
        depth += line.count("{") - line.count("}")
        assert depth >= 0, "unbalanced braces in the Caddyfile"
        if depth == 0 and address:
            sites[address] = "\n".join(body[:-1])
            address = ""
    assert depth == 0, "unbalanced braces in the Caddyfile"
    return sites


def caddy_json_upstream(routes: list[dict[str, Any]], path: str) -> Upstream | None:
    """Where Caddy's adapted JSON routes send `path`: the first route whose path matcher
    matches (a trailing `*` is a prefix), then the reverse_proxy inside it."""
    for route in routes:
        patterns = [p for m in route.get("match", []) for p in m.get("path", [])]
        if route.get("match") and not any(
            path.startswith(p[:-1]) if p.endswith("*") else path == p for p in patterns
        ):
            continue
        for handler in route.get("handle", []):
            if handler["handler"] == "subroute":
                return caddy_json_upstream(handler["routes"], path)
            if handler["handler"] == "reverse_proxy":
                (upstream,) = handler["upstreams"]
                host, _, port = upstream["dial"].rpartition(":")
                assert host == "127.0.0.1", upstream
                return Upstream("tls" in handler.get("transport", {}), int(port))
            if handler["handler"] == "static_response":
                return None
    return None


class CaddyfileTests(unittest.TestCase):
    def setUp(self) -> None:
        self.text = CADDYFILE.read_text(encoding="utf-8")
        self.sites = caddy_sites(self.text)

    def test_sites(self) -> None:
        self.assertEqual(set(self.sites), {MATRIX_HOST, SERVER_HOST})

    def test_federation_matcher_goes_first_to_the_federation_listener(self) -> None:
        federation = generated_listener("federation")
        body = self.sites[MATRIX_HOST]
        self.assertRegex(body, r"@federation path /_matrix/federation/\* /_matrix/key/\*\n")
        self.assertIn(f"reverse_proxy https://127.0.0.1:{federation.port} {{", body)
        self.assertIn("tls_insecure_skip_verify", body)
        client = generated_listener("client")
        self.assertIn(f"reverse_proxy 127.0.0.1:{client.port}\n", body + "\n")
        self.assertLess(body.index("handle @federation"), body.index("handle @client"))

    def adapt(self, caddyfile: Path) -> dict[str, Any]:
        """`caddy adapt`: the Caddyfile as Caddy's JSON config, refused on errors or warnings."""
        caddy = shutil.which("caddy")
        if caddy is None:
            raise unittest.SkipTest("caddy is not installed (apt-get install caddy)")
        result = subprocess.run(
            [caddy, "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn('"level":"warn"', result.stderr)
        config: dict[str, Any] = json.loads(result.stdout)
        return config

    def test_caddy_routes_each_path_to_its_listener(self) -> None:
        servers = self.adapt(CADDYFILE)["apps"]["http"]["servers"]
        by_host = {
            host: route["handle"][0]["routes"]
            for server in servers.values()
            for route in server["routes"]
            for match in route.get("match", [])
            for host in match.get("host", [])
        }
        for path in FEDERATION_PATHS + CLIENT_PATHS:
            self.assertEqual(
                caddy_json_upstream(by_host[MATRIX_HOST], path), expected_upstream(path), path
            )
        self.assertIsNone(caddy_json_upstream(by_host[MATRIX_HOST], "/admin"))
        for path in ("/.well-known/matrix/server", "/.well-known/matrix/client"):
            self.assertEqual(
                caddy_json_upstream(by_host[SERVER_HOST], path), expected_upstream(path), path
            )

    def test_port_8448_site_proxies_to_a_tls_upstream(self) -> None:
        match = re.search(r"^# (\S+:8448.*\{)\n((?:#.*\n)*?)# \}\n", self.text, re.MULTILINE)
        assert match, "the Caddyfile should show the port 8448 site, commented out"
        site = "\n".join([match.group(1)] + [line[2:] for line in match.group(2).splitlines()])
        tmp = Path(tempfile.mkdtemp(prefix="heddle-caddy-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        (tmp / "Caddyfile").write_text(site + "\n}\n", encoding="utf-8")
        servers = self.adapt(tmp / "Caddyfile")["apps"]["http"]["servers"]
        (server,) = servers.values()
        self.assertEqual(server["listen"], [":8448"])
        routes = server["routes"][0]["handle"][0]["routes"]
        upstream = caddy_json_upstream(routes, "/_matrix/federation/v1/version")
        assert upstream is not None
        self.assertTrue(upstream.tls)


# ----- systemd -------------------------------------------------------------------------------


class SystemdUnitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.text = UNIT.read_text(encoding="utf-8")

    def test_runs_the_server_from_the_data_directory_config(self) -> None:
        (exec_start,) = re.findall(r"^ExecStart=(.*)$", self.text, re.MULTILINE)
        argv = exec_start.split()
        self.assertTrue(argv[0].endswith("/bin/heddle"), argv)
        self.assertEqual(argv[1:], ["--config", "/var/lib/heddle/homeserver.yaml"])
        self.assertIn("ReadWritePaths=/var/lib/heddle\n", self.text)
        self.assertIn("Restart=on-failure\n", self.text)

    def test_systemd_accepts_the_unit(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        tmp = Path(tempfile.mkdtemp(prefix="heddle-unit-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        # verify insists that ExecStart's program exists; stand one in for the installed heddle.
        program = tmp / "heddle"
        program.write_text("#!/bin/sh\n", encoding="utf-8")
        program.chmod(0o755)
        unit = tmp / "heddle.service"
        unit.write_text(
            replace_once(self.text, "/opt/heddle/.venv/bin/heddle", str(program), "heddle.service"),
            encoding="utf-8",
        )
        result = subprocess.run(
            [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        # Unknown keys and bad values are only warnings (exit status 0): none may appear.
        lines = [line for line in result.stderr.splitlines() if str(unit) in line or "heddle" in line]
        self.assertEqual((result.returncode, lines), (0, []), result.stderr)


# ----- the README that goes with them ----------------------------------------------------------


class DeployReadmeTests(unittest.TestCase):
    def test_heddle_config_shown_is_valid_and_matches_the_proxies(self) -> None:
        text = DEPLOY_README.read_text(encoding="utf-8")
        (block,) = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
        generated = generated_config()
        raw = yaml.safe_load(block)
        data_dir = Path(tempfile.mkdtemp(prefix="heddle-deploy-readme-"))
        self.addCleanup(shutil.rmtree, data_dir, ignore_errors=True)
        config = make_config("sqlite", data_dir, **raw)
        listeners = {lst.type: lst for lst in config.listeners}
        self.assertEqual(
            {(t, lst.port, lst.tls) for t, lst in listeners.items()},
            {(lst.type, lst.port, lst.tls) for lst in generated.listeners},
        )
        self.assertEqual(listeners["federation"].port, federation_port_for(listeners["client"].port))
        self.assertTrue(listeners["client"].x_forwarded)
        self.assertEqual({lst.bind_address for lst in config.listeners}, {"127.0.0.1"})
        self.assertTrue(config.serve_server_wellknown)
        self.assertEqual(config.federation_address, f"{MATRIX_HOST}:443")
        self.assertEqual(config.client_base_url, f"https://{MATRIX_HOST}/")


class ReadmeTests(unittest.TestCase):
    """What the top-level README says about listeners and proxies is what Heddle does."""

    def setUp(self) -> None:
        self.text = (ROOT / "README.md").read_text(encoding="utf-8")

    def test_quick_start_names_every_listener_a_generated_config_opens(self) -> None:
        for listener in generated_config().listeners:
            scheme = "https" if listener.tls else "http"
            self.assertIn(f"`{scheme}://127.0.0.1:{listener.port}`", self.text, listener.type)
        self.assertIn("`P + 440`", self.text)
        self.assertEqual(federation_port_for(9000), 9440)

    def test_reverse_proxy_section_gives_federation_its_own_upstream(self) -> None:
        section = self.text.split("### Behind a reverse proxy", 1)[1].split("\n### ", 1)[0]
        for prefix in ("/_matrix/federation", "/_matrix/key"):
            self.assertIn(f"`{prefix}`", section)
        self.assertIn("(docs/deploy/README.md)", section)
        self.assertTrue(DEPLOY_README.exists())
