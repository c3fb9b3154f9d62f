"""A real Synapse homeserver as a federation peer for Heddle's interop tests.

`SynapsePeer` writes a config, a self-signed certificate and a signing key into a work
directory and runs Synapse (from its own virtualenv, never Heddle's) as a subprocess on
`127.0.0.1:<port>`, with one TLS listener serving the client, federation and key APIs.
Nothing here imports Synapse: it is found by `synapse_python()`, and a test that needs it
calls `require_synapse()`, which raises `SkipTest` when there is none.

Usage (in an `async` trial test):

    peer = SynapsePeer(Path(self.mktemp()))          # or port=..., extra_config={...}
    self.addCleanup(ensure_stopped, peer)
    await peer.start()                               # ~3 s here
    alice = await peer.register_user("alice", "pw")  # {"user_id", "access_token", ...}
    response = await peer.request("GET", "/_matrix/client/v3/account/whoami",
                                  token=alice["access_token"])

Where Synapse comes from:

- `$HEDDLE_SYNAPSE_PYTHON`, if set (`.ci/run` sets it). Set but pointing at nothing is an
  error, not a skip: CI should not quietly stop running the interop tests.
- else `<repo>/.synapse-venv/bin/python` (what `.ci/run` creates; `.gitignore`d).

Settings that matter for federating with a Heddle test server on `127.0.0.1:<port>`:

- **Server names are `127.0.0.1:<port>`** (an IP literal with an explicit port). Synapse's
  federation agent (`synapse/http/federation/matrix_federation_agent.py`) skips
  `.well-known` when the name is an IP literal or has a port, and skips SRV when it has a
  port or is an IP literal: it opens TLS straight to that IP and port (port 8448 only when
  none is given), sends `Host: 127.0.0.1:<port>`, and sends no SNI for an IP address. So
  Heddle must serve federation (and `/_matrix/key/v2/server`) over **TLS on the very port
  in its server name**; its server name should be `127.0.0.1:<port>` too (`localhost:<port>`
  would also skip SRV and .well-known, but goes through name resolution).
- **`ip_range_blacklist: []`** (plus `ip_range_whitelist: [127.0.0.0/8]`). By default Synapse
  refuses outbound federation to private and loopback addresses (`ip_range_blacklist` has a
  built-in default list). `ip_range_whitelist` alone is NOT enough for a server name that is
  an IP literal: in Synapse 1.163 the federation client wraps its agent in a
  `BlocklistingAgentWrapper` that checks IP-literal hosts against the blocklist only, with
  no allowlist (`synapse/http/matrixfederationclient.py`); the log then says "Blocking
  access to 127.0.0.1" and the request fails with "403: IP address blocked". The whitelist
  only rescues addresses a DNS name resolves to. So the blocklist itself is emptied (Synapse
  still always blocks 0.0.0.0 and ::), as sytest does for the same reason. The deprecated
  `federation_ip_range_blacklist` is left unset: when present it replaces both for
  federation.
- **`federation_verify_certificates: false`**: Synapse accepts any certificate from the
  servers it federates with (Heddle's test certificate is self-signed). Synapse's own
  certificate is at `SynapsePeer.cert_path` (SAN `IP:127.0.0.1`) for a Heddle that wants to
  verify it; otherwise Heddle's federation client must not verify either.
- **`trusted_key_servers: []`**: no notary; Synapse fetches a server's signing keys from the
  server itself (`GET /_matrix/key/v2/server` on `127.0.0.1:<port>`), so Heddle must serve
  that over the same TLS port.
- **Retry backoff**: Synapse stops trying a destination it failed to reach for
  `federation.destination_min_retry_interval` (default 10 minutes, growing). It is set to
  a few seconds here so a Heddle server that starts after (or restarts while) the peer runs
  is retried quickly. The outbound federation timeout is 60 s by default, lowered to 20 s.
- Rate limits (`rc_*`) are raised far beyond what a test does, including `rc_federation`
  (which limits inbound federation requests per origin).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import time
import weakref
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from signedjson.key import (
    decode_signing_key_base64,
    encode_signing_key_base64,
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from twisted.internet import defer, reactor, task
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from tests.harness import BytesProducer, Response

REPO_ROOT = Path(__file__).resolve().parent.parent
SYNAPSE_PYTHON_ENV = "HEDDLE_SYNAPSE_PYTHON"
DEFAULT_SYNAPSE_PYTHON = REPO_ROOT / ".synapse-venv" / "bin" / "python"

# How long `start()` waits for /_matrix/client/versions to answer.
START_TIMEOUT = 60.0
# How long `stop()` waits after SIGTERM before SIGKILL.
STOP_TIMEOUT = 15.0

# A rate limit no test reaches.
_UNLIMITED = {"per_second": 10000, "burst_count": 100000}

# Environment variables not passed to Synapse: Heddle's virtualenv must not leak into
# Synapse's interpreter, and Synapse honours proxy variables for outbound federation.
_DROPPED_ENV = {
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
}


def synapse_python() -> str | None:
    """The Python interpreter that has Synapse installed, or None if there is none.

    Raises RuntimeError when $HEDDLE_SYNAPSE_PYTHON is set but names no file.
    """
    configured = os.environ.get(SYNAPSE_PYTHON_ENV)
    if configured:
        if not os.access(configured, os.X_OK):
            raise RuntimeError(f"${SYNAPSE_PYTHON_ENV}={configured} is not an executable")
        return configured
    if os.access(DEFAULT_SYNAPSE_PYTHON, os.X_OK):
        return str(DEFAULT_SYNAPSE_PYTHON)
    return None


def require_synapse() -> str:
    """`synapse_python()`, or SkipTest for a test that needs Synapse."""
    python = synapse_python()
    if python is None:
        raise unittest.SkipTest(
            f"no Synapse to federate with: set ${SYNAPSE_PYTHON_ENV} to a Python that has "
            f"matrix-synapse installed, or create {DEFAULT_SYNAPSE_PYTHON.parent.parent} "
            "(see .ci/run)"
        )
    return python


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_self_signed_cert(cert_path: Path, key_path: Path, ip: str = "127.0.0.1") -> None:
    """A self-signed certificate for `ip` (SAN IP address), valid from yesterday for a year."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@implementer(IPolicyForHTTPS)
class TrustOneCertificate:
    """A TLS policy for twisted.web Agent that trusts exactly one (self-signed) certificate.

    The hostname (here an IP address) is still checked against the certificate.
    """

    def __init__(self, cert_pem: bytes) -> None:
        self._trust_root = Certificate.loadPEM(cert_pem)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust_root)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class _PortInUse(RuntimeError):
    """Synapse could not bind its port."""


# Peers still running, killed at exit if a test forgot (or failed) to stop them.
_running: weakref.WeakSet[SynapsePeer] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for peer in list(_running):
        peer.kill_now()


class SynapsePeer:
    """One Synapse process on 127.0.0.1:<port>, its data kept in `work_dir`.

    `start()`/`stop()`/`restart()` are coroutines that never block the reactor; a test
    typically does `await peer.start()` then `self.addCleanup(lambda: defer.ensureDeferred(peer.stop()))`.
    """

    def __init__(
        self,
        work_dir: Path,
        port: int | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self._port_chosen = port is None
        self._started_once = False
        self._set_port(port if port is not None else free_port())
        self.extra_config = extra_config or {}
        self.config_path = self.work_dir / "homeserver.yaml"
        self.cert_path = self.work_dir / "tls.crt"
        self.tls_key_path = self.work_dir / "tls.key"
        self.signing_key_path = self.work_dir / "signing.key"
        self.log_path = self.work_dir / "homeserver.log"
        # Synapse's stdout and stderr: what it prints before its logging is set up.
        self.console_path = self.work_dir / "console.log"
        self.registration_shared_secret = "heddle-interop-" + secrets.token_hex(16)
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._console: Any = None

    def _set_port(self, port: int) -> None:
        self.port = port
        self.server_name = f"127.0.0.1:{port}"
        self.base_url = f"https://127.0.0.1:{port}"

    # ----- files -------------------------------------------------------------------------

    @property
    def signing_key(self) -> Any:
        """The signedjson signing key (`.version` is the key ID's suffix, e.g. "a_1")."""
        parts = self.signing_key_path.read_text(encoding="ascii").split()
        return decode_signing_key_base64(parts[0], parts[1], parts[2])

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.signing_key.version}"

    @property
    def verify_key_base64(self) -> str:
        return str(encode_verify_key_base64(get_verify_key(self.signing_key)))

    @property
    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def write_files(self) -> None:
        """Write what is missing (cert, keys) and the config (always, from current options)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not self.cert_path.exists() or not self.tls_key_path.exists():
            write_self_signed_cert(self.cert_path, self.tls_key_path)
        if not self.signing_key_path.exists():
            key = generate_signing_key("a_1")
            self.signing_key_path.write_text(
                f"ed25519 {key.version} {encode_signing_key_base64(key)}\n", encoding="ascii"
            )
            self.signing_key_path.chmod(0o600)
        log_config_path = self.work_dir / "log_config.yaml"
        log_config_path.write_text(yaml.safe_dump(self._log_config()), encoding="utf-8")
        config = _deep_merge(self._base_config(log_config_path), self.extra_config)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    def _log_config(self) -> dict[str, Any]:
        return {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s"
                    " - %(request)s - %(message)s"
                }
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filename": str(self.log_path),
                    "encoding": "utf8",
                }
            },
            "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }

    def _base_config(self, log_config_path: Path) -> dict[str, Any]:
        return {
            "server_name": self.server_name,
            "report_stats": False,
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [
                        {"names": ["client", "federation", "keys"], "compress": False}
                    ],
                }
            ],
            "tls_certificate_path": str(self.cert_path),
            "tls_private_key_path": str(self.tls_key_path),
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.work_dir / "homeserver.db")},
            },
            "log_config": str(log_config_path),
            "media_store_path": str(self.work_dir / "media_store"),
            "signing_key_path": str(self.signing_key_path),
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "federation_verify_certificates": False,
            # Allow federation to loopback, also for IP-literal server names; not
            # `federation_ip_range_blacklist` (deprecated). See the module docstring.
            "ip_range_blacklist": [],
            "ip_range_whitelist": ["127.0.0.0/8"],
            "federation": {
                "client_timeout": "20s",
                "destination_min_retry_interval": "2s",
                "destination_max_retry_interval": "10s",
                "max_short_retry_delay": "1s",
                "max_long_retry_delay": "5s",
            },
            "enable_registration": False,
            "registration_shared_secret": self.registration_shared_secret,
            "bcrypt_rounds": 4,
            "use_frozen_dicts": False,
            "enable_metrics": False,
            "allow_public_rooms_over_federation": True,
            "rc_message": _UNLIMITED,
            "rc_registration": _UNLIMITED,
            "rc_login": {
                "address": _UNLIMITED,
                "account": _UNLIMITED,
                "failed_attempts": _UNLIMITED,
            },
            "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
            "rc_joins_per_room": _UNLIMITED,
            "rc_invites": {
                "per_room": _UNLIMITED,
                "per_user": _UNLIMITED,
                "per_issuer": _UNLIMITED,
            },
            "rc_third_party_invite": _UNLIMITED,
            "rc_room_creation": _UNLIMITED,
            "rc_presence": {"per_user": _UNLIMITED},
            "rc_profile": _UNLIMITED,
            "rc_user_directory": _UNLIMITED,
            "rc_key_requests": _UNLIMITED,
            "rc_admin_redaction": _UNLIMITED,
            "rc_media_create": _UNLIMITED,
            "rc_federation": {
                "window_size": 1000,
                "sleep_limit": 10000,
                "sleep_delay": 1,
                "reject_limit": 100000,
                "concurrent": 1000,
            },
            "federation_rr_transactions_per_room_per_second": 10000,
        }

    # ----- process -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        """Write the config and files, spawn Synapse, and wait until its client API answers.

        A port chosen by `free_port()` can be taken by someone else before Synapse binds it;
        on the first start (no data tied to the server name yet) another port is tried.
        """
        if self.running:
            raise RuntimeError(f"Synapse {self.server_name} is already running")
        for attempt in range(3):
            try:
                await self._start_once()
                break
            except _PortInUse:
                if not self._port_chosen or self._started_once or attempt == 2:
                    raise
                # The database may already hold the old server name; it holds nothing else.
                for leftover in self.work_dir.glob("homeserver.db*"):
                    leftover.unlink()
                self._set_port(free_port())
        self._started_once = True

    async def _start_once(self) -> None:
        python = require_synapse()
        self.write_files()
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env["PYTHONUNBUFFERED"] = "1"
        began = time.monotonic()
        self._console = open(self.console_path, "ab")  # closed in _reap
        self._process = subprocess.Popen(
            [python, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.work_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
        )
        _running.add(self)
        deadline = began + START_TIMEOUT
        last_error = "no answer yet"
        while True:
            code = self._process.poll()
            if code is not None:
                self._reap()
                diagnostics = self._diagnostics()
                error = _PortInUse if "Address already in use" in diagnostics else RuntimeError
                raise error(
                    f"Synapse {self.server_name} exited with code {code} while starting\n"
                    + diagnostics
                )
            try:
                response = await self.request("GET", "/_matrix/client/versions", timeout=5)
                if response.code == 200:
                    break
                last_error = repr(response)
            except Exception as e:
                last_error = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                self.kill_now()
                raise RuntimeError(
                    f"Synapse {self.server_name} did not answer within {START_TIMEOUT:.0f}s"
                    f" (last: {last_error})\n" + self._diagnostics()
                )
            await task.deferLater(reactor, 0.25, lambda: None)
        self.startup_seconds = time.monotonic() - began

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; the data stays in `work_dir`."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                await task.deferLater(reactor, 0.1, lambda: None)
            if process.poll() is None:
                process.kill()
                while process.poll() is None:
                    await task.deferLater(reactor, 0.05, lambda: None)
        self._reap()

    async def restart(self) -> None:
        """Stop and start again: same port, same data, same keys."""
        await self.stop()
        await self.start()

    def kill_now(self) -> None:
        """SIGKILL without waiting on the reactor (for atexit and failed starts)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self._reap()

    def _reap(self) -> None:
        self._process = None
        _running.discard(self)
        if self._console is not None:
            self._console.close()
            self._console = None

    def log_tail(self, lines: int = 50) -> str:
        """The last `lines` lines of Synapse's log file."""
        return _tail(self.log_path, lines)

    def _diagnostics(self) -> str:
        return (
            f"--- {self.console_path} (tail) ---\n{_tail(self.console_path, 30)}\n"
            f"--- {self.log_path} (tail) ---\n{self.log_tail(50)}"
        )

    # ----- HTTP --------------------------------------------------------------------------

    def agent(self) -> Agent:
        """A twisted.web Agent that trusts this peer's self-signed certificate."""
        return Agent(reactor, contextFactory=TrustOneCertificate(self.cert_pem), connectTimeout=5)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        timeout: float = 30,
    ) -> Response:
        """One HTTPS request to this peer (certificate checked against `cert_path`)."""
        headers = Headers({b"User-Agent": [b"heddle-tests"]})
        if token is not None:
            headers.setRawHeaders(b"Authorization", [f"Bearer {token}".encode()])
        producer = None
        if body is not None:
            producer = BytesProducer(json.dumps(body).encode())
            headers.setRawHeaders(b"Content-Type", [b"application/json"])
        d = self.agent().request(method.encode(), (self.base_url + path).encode(), headers, producer)
        d.addTimeout(timeout, reactor)
        response = await d
        data = await readBody(response)
        return Response(response.code, response.headers, data)

    async def register_user(
        self, localpart: str, password: str, admin: bool = False
    ) -> dict[str, Any]:
        """Create a user with the shared-secret admin API; returns user_id, access_token, ..."""
        path = "/_synapse/admin/v1/register"
        response = await self.request("GET", path)
        if response.code != 200:
            raise RuntimeError(f"GET {path}: {response!r}")
        nonce = response.json["nonce"]
        message = b"\x00".join(
            [
                nonce.encode(),
                localpart.encode(),
                password.encode(),
                b"admin" if admin else b"notadmin",
            ]
        )
        mac = hmac.new(self.registration_shared_secret.encode(), message, hashlib.sha1)
        response = await self.request(
            "POST",
            path,
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        )
        if response.code != 200:
            raise RuntimeError(f"POST {path}: {response!r}")
        result: dict[str, Any] = response.json
        return result

    async def login(self, localpart: str, password: str) -> dict[str, Any]:
        """Password login over the client API; returns user_id, access_token, device_id."""
        response = await self.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": password,
            },
        )
        if response.code != 200:
            raise RuntimeError(f"login {localpart}: {response!r}")
        result: dict[str, Any] = response.json
        return result


def ensure_stopped(peer: SynapsePeer) -> defer.Deferred[None]:
    """For `addCleanup`: stop `peer` (a Deferred, as trial wants)."""
    return defer.ensureDeferred(peer.stop())
