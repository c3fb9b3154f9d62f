"""docker/: the Dockerfile, docker-compose.yml and .dockerignore agree with the code they
package.

No Docker engine is needed: the files are parsed, and what they name (console script, CLI
flags, config options, environment overrides, listener ports, the /health route, the files
Heddle writes) is checked against Heddle itself.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from twisted.trial import unittest

from client_api.routes import CLIENT_SERVLETS
from homeserver import cli
from homeserver.cli import federation_port_for, generate_config
from homeserver.config import ListenerConfig, generate_config_text, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "docker-compose.yml"
DOCKER_README = DOCKER / "README.md"
# The build context is the repository root (compose: `context: ..`); builders read the ignore
# file there. BuildKit would prefer docker/Dockerfile.dockerignore, which must not exist.
DOCKERIGNORE = ROOT / ".dockerignore"

_DEFAULT_VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def instruction(name: str) -> list[str]:
    return [args for keyword, args in dockerfile_instructions() if keyword == name]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def substitute_defaults(value: str) -> str:
    """Compose's `${VAR:-default}` with VAR unset."""
    return _DEFAULT_VAR.sub(lambda m: m.group(2), value)


def heddle_environment() -> dict[str, str]:
    env = compose()["services"]["heddle"]["environment"]
    assert isinstance(env, dict), "heddle's environment should be a mapping"
    return {name: substitute_defaults(str(value)) for name, value in env.items()}


def console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    scripts = {}
    for line in parser["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = line.partition("=")
        scripts[name.strip()] = target.strip()
    return scripts


class DockerfileTests(unittest.TestCase):
    def test_base_image_is_python_311_slim(self) -> None:
        self.assertEqual(instruction("FROM"), ["python:3.11-slim"])

    def test_runs_the_heddle_console_script_with_the_data_volume_config(self) -> None:
        self.assertEqual(instruction("ENTRYPOINT"), [], "an ENTRYPOINT would swallow `docker run IMAGE heddle ...`")
        (cmd,) = instruction("CMD")
        argv = exec_form(cmd)
        self.assertEqual(argv[0], "heddle")
        self.assertEqual(console_scripts().get("heddle"), "homeserver.cli:main")
        args = cli._parser().parse_args(argv[1:])
        self.assertIsNone(args.command, "with no command, heddle runs the server")
        self.assertEqual(args.config, f"/data/{cli.CONFIG_FILE_NAME}")

    def test_exposes_client_and_metrics_ports_and_the_data_volume(self) -> None:
        exposed = {int(p) for args in instruction("EXPOSE") for p in args.split()}
        self.assertEqual(exposed, {8008, 8448, 9008})
        self.assertIn("/data", " ".join(instruction("VOLUME")))

    def test_runs_as_a_non_root_user(self) -> None:
        users = instruction("USER")
        self.assertTrue(users, "no USER: the server would run as root")
        self.assertNotIn(users[-1].split(":")[0], ("root", "0"))

    def test_copies_every_package_the_distribution_contains(self) -> None:
        parser = configparser.ConfigParser()
        parser.read(ROOT / "setup.cfg")
        include = parser["options.packages.find"]["include"].split()
        packages = {pattern.rstrip("*") for pattern in include}
        # COPY SRC... DEST: everything but the last word is a source in the build context.
        copied = {
            source.rstrip("/") for args in instruction("COPY") for source in shlex.split(args)[:-1]
        }
        for package in packages:
            self.assertIn(package, copied, f"docker/Dockerfile does not COPY {package}/")
        for needed in ("setup.cfg", "pyproject.toml", "README.md"):
            self.assertIn(needed, copied)
        for source in copied:
            self.assertTrue((ROOT / source).exists(), f"COPY source {source} does not exist")

    def test_healthcheck_uses_the_client_listener_health_route(self) -> None:
        (healthcheck,) = instruction("HEALTHCHECK")
        self.assertIn("http://127.0.0.1:8008/health", healthcheck)
        self.assertTrue(_client_route_matches("/health"))


class ComposeTests(unittest.TestCase):
    def test_services(self) -> None:
        services = compose()["services"]
        # No Redis: it only connects Heddle processes sharing a database, and a second
        # process on one database refuses to start.
        self.assertEqual(set(services), {"heddle", "postgres"})
        self.assertEqual(services["postgres"]["image"], "postgres:16")

    def test_heddle_is_built_from_the_repository_with_this_dockerfile(self) -> None:
        build = compose()["services"]["heddle"]["build"]
        context = (DOCKER / build["context"]).resolve()
        self.assertEqual(context, ROOT)
        self.assertEqual((context / build["dockerfile"]).resolve(), DOCKERFILE)

    def test_every_service_has_a_healthcheck_and_heddle_waits_for_its_dependencies(self) -> None:
        services = compose()["services"]
        for name, service in services.items():
            self.assertIn("test", service.get("healthcheck", {}), f"{name} has no healthcheck")
        depends = services["heddle"]["depends_on"]
        self.assertEqual(
            {name: dep["condition"] for name, dep in depends.items()},
            {"postgres": "service_healthy"},
        )
        test = " ".join(services["heddle"]["healthcheck"]["test"])
        self.assertIn("http://127.0.0.1:8008/health", test)

    def test_database_url_points_at_the_postgres_service(self) -> None:
        url = heddle_environment()["HEDDLE_DATABASE_URL"]
        match = re.fullmatch(r"postgresql://(\w+):([^@]*)@postgres:5432/(\w+)", url)
        self.assertIsNotNone(match, url)
        assert match is not None
        pg_env = {
            k: substitute_defaults(str(v))
            for k, v in compose()["services"]["postgres"]["environment"].items()
        }
        self.assertEqual(match.group(1), pg_env["POSTGRES_USER"])
        self.assertEqual(match.group(2), pg_env["POSTGRES_PASSWORD"])
        self.assertEqual(match.group(3), pg_env["POSTGRES_DB"])

    def test_environment_overrides_are_options_heddle_accepts(self) -> None:
        env = heddle_environment()
        self.assertTrue(all(name.startswith("HEDDLE_") for name in env))
        config = parse_config(_generated_config(), source="generated", environ=env)
        self.assertTrue(config.database.url.startswith("postgresql://"))
        self.assertFalse(config.registration.enabled)

    def test_public_baseurl_is_set_and_defaults_to_the_published_client_port(self) -> None:
        raw = compose()["services"]["heddle"]["environment"]["HEDDLE_PUBLIC_BASEURL"]
        self.assertEqual(_DEFAULT_VAR.fullmatch(raw).group(1), "PUBLIC_BASEURL")  # type: ignore[union-attr]
        # As the docker README has it: the config's listeners opened to 0.0.0.0, from which
        # Heddle alone would derive a URL naming the container's own address.
        opened = yaml.safe_load(
            generate_config_text("example.org", "/data").replace("127.0.0.1", "0.0.0.0")
        )
        config = parse_config(opened, environ=heddle_environment())
        published = {
            int(str(p).rsplit(":", 1)[-1]): str(p) for p in compose()["services"]["heddle"]["ports"]
        }
        client_port = next(lst.port for lst in config.listeners if lst.type == "client")
        self.assertEqual(published[client_port], f"{client_port}:{client_port}")
        self.assertEqual(config.client_base_url, f"http://localhost:{client_port}/")
        self.assertIn("PUBLIC_BASEURL=https://", DOCKER_README.read_text(encoding="utf-8"))

    def test_ports_reach_the_default_listener_ports(self) -> None:
        service = compose()["services"]["heddle"]
        container_ports = {int(str(p).rsplit(":", 1)[-1]) for p in service["ports"]}
        default_port = ListenerConfig().port
        self.assertEqual(container_ports, {default_port, federation_port_for(default_port), 9008})
        # `heddle generate-config` adds the federation listener to the generated text.
        generated = yaml.safe_load(generate_config_text("example.org", "/data"))
        self.assertEqual(
            {listener["port"] for listener in generated["listeners"]}
            | {federation_port_for(default_port)},
            container_ports,
        )

    def test_data_volume_is_mounted_at_data(self) -> None:
        volumes = compose()["services"]["heddle"]["volumes"]
        self.assertIn("/data", [str(v).split(":")[1] for v in volumes])


class DockerReadmeTests(unittest.TestCase):
    """The commands docker/README.md gives are ones the heddle CLI accepts."""

    def _heddle_commands(self) -> list[list[str]]:
        commands = []
        for line in DOCKER_README.read_text(encoding="utf-8").splitlines():
            words = shlex.split(line.split("  #")[0]) if "heddle heddle" in line else []
            if words:
                commands.append(words[words.index("heddle", words.index("heddle") + 1) + 1:])
        return commands

    def test_heddle_commands_parse(self) -> None:
        commands = self._heddle_commands()
        self.assertGreaterEqual(len(commands), 2)
        names = set()
        for argv in commands:
            args = cli._parser().parse_args(argv)
            names.add(args.command)
            if args.command == "generate-config":
                self.assertEqual(args.data_dir, "/data")
            if args.command == "register-user":
                self.assertEqual(args.config, f"/data/{cli.CONFIG_FILE_NAME}")
        self.assertEqual(names, {"generate-config", "register-user"})

    def test_documented_bind_address_edit_opens_every_listener(self) -> None:
        match = re.search(r"sed -i '(s/([^/]+)/([^/]+)/)'", DOCKER_README.read_text())
        self.assertIsNotNone(match, "docker/README.md should show the sed command")
        assert match is not None
        old, new = match.group(2), match.group(3)
        text = generate_config_text("example.org", "/data")
        self.assertIn(old, text)
        config = parse_config(yaml.safe_load(text.replace(old, new)), environ={})
        self.assertTrue(config.listeners)
        self.assertEqual({listener.bind_address for listener in config.listeners}, {"0.0.0.0"})


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!...`, regex) per pattern, in order, as Docker reads them: paths are
    relative to the context root, `*` and `?` stay within one path segment, `**` spans any."""
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] in "*?":
                regex, i = regex + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex + r"\Z")))
    return rules


def dockerignored(path: str) -> bool:
    """Whether the build context leaves `path` out: the last pattern matching it or one of its
    parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in dockerignore_rules():
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def files_heddle_writes_in_a_data_dir() -> list[str]:
    """What a first start writes in its data directory: config, signing key, TLS certificate
    and key (from `generate_config`), the SQLite database, its journal and its lock file."""
    data_dir = Path(tempfile.mkdtemp(prefix="heddle-dockerignore-"))
    try:
        config = load_config(str(generate_config("localhost", str(data_dir))), environ={})
        written = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file())
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    database = Path(config.database_url.removeprefix("sqlite:///")).name
    return written + [database, f"{database}-wal", f"{database}-journal", f"{database}.lock"]


class DockerignoreTests(unittest.TestCase):
    def test_ignore_file_sits_at_the_build_context_root(self) -> None:
        build = compose()["services"]["heddle"]["build"]
        self.assertEqual((DOCKER / build["context"]).resolve() / ".dockerignore", DOCKERIGNORE)
        self.assertTrue(DOCKERIGNORE.exists())
        self.assertFalse(
            (DOCKER / "Dockerfile.dockerignore").exists(),
            "BuildKit would read docker/Dockerfile.dockerignore instead of .dockerignore",
        )

    def test_local_environments_and_test_output_stay_out(self) -> None:
        for path in (
            ".git/config",
            ".venv/bin/python",
            ".ci-venv/bin/python",
            ".synapse-venv/lib/python3.11/site-packages/synapse/__init__.py",
            "_trial_temp/test.log",
            "_trial_temp-1/test.log",
            "heddle-tests.log",
            "homeserver/__pycache__/cli.cpython-311.pyc",
            "heddle.egg-info/PKG-INFO",
            ".env",
        ):
            self.assertTrue(dockerignored(path), f"{path} would be sent to the builder")

    def test_keys_and_databases_stay_out_wherever_they_are(self) -> None:
        written = files_heddle_writes_in_a_data_dir()
        self.assertIn("homeserver.yaml", written)
        self.assertIn("localhost.signing.key", written)
        self.assertIn("localhost.tls.key", written)
        for name in written:
            # The quick start's ./heddle-data, another directory, or the repository root.
            for path in (f"heddle-data/{name}", f"my-server/{name}", name):
                self.assertTrue(dockerignored(path), f"{path} would be sent to the builder")

    def test_everything_the_dockerfile_copies_is_in_the_context(self) -> None:
        sources = [source for args in instruction("COPY") for source in shlex.split(args)[:-1]]
        if shutil.which("git") is None or not (ROOT / ".git").exists():
            raise unittest.SkipTest("needs git to list the repository's files")
        tracked = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "--", *sources],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        self.assertGreater(len(tracked), len(sources))
        left_out = [path for path in tracked if dockerignored(path)]
        self.assertEqual(left_out, [], "the Dockerfile copies these, but .dockerignore drops them")


class ReadmeLinkTests(unittest.TestCase):
    """Relative links in docker/README.md point at files and headings that exist."""

    def test_links_resolve(self) -> None:
        links = re.findall(r"\]\(([^)\s]+)\)", DOCKER_README.read_text(encoding="utf-8"))
        relative = [link for link in links if "://" not in link]
        self.assertTrue(relative)
        for link in relative:
            target, _, anchor = link.partition("#")
            path = (DOCKER / target).resolve() if target else DOCKER_README
            self.assertTrue(path.exists(), f"docker/README.md links to missing {target}")
            if anchor:
                self.assertIn(anchor, _heading_anchors(path), f"no heading for #{anchor} in {target}")


def _heading_anchors(markdown: Path) -> set[str]:
    """GitHub's anchors for a file's headings: lower case, punctuation dropped, spaces to -."""
    anchors = set()
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _generated_config() -> dict[str, Any]:
    return yaml.safe_load(generate_config_text("example.org", "/data"))


def _client_route_matches(path: str) -> bool:
    return any(
        pattern.match(path)
        for servlet in CLIENT_SERVLETS
        for pattern in getattr(servlet, "PATTERNS", [])
    )
