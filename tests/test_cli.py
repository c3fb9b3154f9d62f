"""The `heddle` console script, run for real as a subprocess: generating a config, first start,
running from a config, one-line errors for bad configs, `register-user`, and environment
overrides."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import stat
import sys
from pathlib import Path
from typing import Any

import yaml
from signedjson.key import decode_signing_key_base64
from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

import homeserver
from homeserver import cli
from homeserver.cli import federation_port_for
from homeserver.config import JWT_SECRET_PLACEHOLDER, load_config
from homeserver.signing_key import load_signing_key
from tests.harness import BytesProducer, postgres_database_url, reset_postgres_database

HEDDLE = str(Path(sys.executable).with_name("heddle"))
VERSIONS = "/_matrix/client/versions"
PASSWORD = "correct horse battery"


def child_env(**overrides: str) -> dict[str, str]:
    """The test's environment without any HEDDLE_* variable, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEDDLE_")}
    env.update(overrides)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nobody listens on 127.0.0.1:port (connections lingering in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class HeddleProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.ended: defer.Deferred[HeddleProcess] = defer.Deferred()
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.stdout += data

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Any) -> None:
        self.running = False
        self.exit_code = reason.value.exitCode
        self.signal = reason.value.signal
        self.ended.callback(self)

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return (
            f"<heddle exit={self.exit_code} signal={self.signal}\n"
            f"--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}>"
        )


class CliTestCase(unittest.TestCase):
    def tmpdir(self) -> Path:
        path = Path(self.mktemp()).resolve()
        path.mkdir(parents=True)
        return path

    def spawn(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> HeddleProcess:
        proc = HeddleProcess()
        reactor.spawnProcess(  # type: ignore[attr-defined]
            proc,
            HEDDLE,
            [HEDDLE, *args],
            env=env if env is not None else child_env(),
            path=str(cwd or self.tmpdir()),
        )

        async def kill() -> None:
            if proc.running:
                proc.transport.signalProcess("KILL")
                await proc.ended

        self.addCleanup(lambda: defer.ensureDeferred(kill()))
        return proc

    async def wait(self, proc: HeddleProcess, timeout: float = 60) -> HeddleProcess:
        for _ in range(int(timeout / 0.05)):
            if not proc.running:
                return proc
            await sleep(0.05)
        proc.transport.signalProcess("KILL")
        await proc.ended
        self.fail(f"heddle did not exit within {timeout}s: {proc!r}")

    async def heddle(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> HeddleProcess:
        """Run `heddle ARGS` to completion."""
        return await self.wait(self.spawn(*args, env=env, cwd=cwd))

    def assertOneLineError(
        self, proc: HeddleProcess, *fragments: str, only_line: bool = True
    ) -> str:
        """Exit code non-zero and one `heddle: ...` line naming the problem. With `only_line`,
        that line is all of stderr (errors found before logging starts)."""
        self.assertNotEqual(proc.exit_code, 0, proc)
        self.assertIsNone(proc.signal, proc)
        lines = proc.err.splitlines()
        errors = [line for line in lines if line.startswith("heddle:")]
        self.assertEqual(len(errors), 1, proc)
        self.assertEqual(lines[-1], errors[0], f"the error is the last thing said: {proc!r}")
        if only_line:
            self.assertEqual(lines, errors, proc)
            self.assertNotIn("Traceback", proc.err)
        for fragment in fragments:
            self.assertIn(fragment, errors[0], proc)
        return errors[0]

    # ----- configs ------------------------------------------------------------------------

    async def generate(
        self,
        server_name: str = "localhost",
        data_dir: Path | None = None,
        *,
        port: int | None = None,
    ) -> Path:
        """`heddle generate-config`, then every listener moved to a free loopback port."""
        data_dir = data_dir or self.tmpdir() / "data"
        client_port = port if port is not None else free_port()
        proc = await self.heddle(
            "generate-config",
            "--server-name",
            server_name,
            "--data-dir",
            str(data_dir),
            "--port",
            str(client_port),
        )
        self.assertEqual(proc.exit_code, 0, proc)
        config_path = data_dir / "homeserver.yaml"
        raw = yaml.safe_load(config_path.read_text())
        for listener in raw["listeners"][1:]:
            listener["port"] = free_port()
        # Tests should not wait for bcrypt's production cost.
        raw["auth"]["bcrypt_rounds"] = 4
        config_path.write_text(yaml.safe_dump(raw))
        return config_path

    def edit_config(self, config_path: Path, **changes: Any) -> dict[str, Any]:
        raw = yaml.safe_load(config_path.read_text())
        raw.update(changes)
        config_path.write_text(yaml.safe_dump(raw))
        return raw

    def client_url(self, config_path: Path) -> str:
        raw = yaml.safe_load(config_path.read_text())
        client = next(lst for lst in raw["listeners"] if lst["type"] == "client")
        return f"http://127.0.0.1:{client['port']}"

    def metrics_url(self, config_path: Path) -> str:
        raw = yaml.safe_load(config_path.read_text())
        metrics = next(lst for lst in raw["listeners"] if lst["type"] == "metrics")
        return f"http://127.0.0.1:{metrics['port']}"

    # ----- servers ------------------------------------------------------------------------

    async def http(self, method: str, url: str, body: Any = None) -> tuple[int, bytes]:
        headers = Headers({b"User-Agent": [b"heddle-cli-tests"]})
        producer = None
        if body is not None:
            producer = BytesProducer(json.dumps(body).encode())
            headers.setRawHeaders(b"Content-Type", [b"application/json"])
        response = await Agent(reactor).request(method.encode(), url.encode(), headers, producer)
        return response.code, await readBody(response)

    async def start_server(
        self, *args: str, base_url: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> HeddleProcess:
        """Run `heddle ARGS` and wait until it answers GET /_matrix/client/versions."""
        proc = self.spawn(*args, env=env, cwd=cwd)
        for _ in range(600):
            if not proc.running:
                self.fail(f"heddle exited instead of serving: {proc!r}")
            try:
                code, body = await self.http("GET", base_url + VERSIONS)
            except Exception:
                await sleep(0.05)
                continue
            self.assertEqual(code, 200, body)
            self.assertIn("versions", json.loads(body))
            return proc
        self.fail(f"heddle did not start serving within 30s: {proc!r}")

    async def stop_server(self, proc: HeddleProcess) -> None:
        """SIGTERM, then a clean exit: status 0, no traceback."""
        proc.transport.signalProcess("TERM")
        await self.wait(proc, timeout=30)
        self.assertEqual(proc.exit_code, 0, proc)
        self.assertIsNone(proc.signal, proc)
        self.assertNotIn("Traceback", proc.err)
        self.assertNotIn("Unhandled", proc.err)

    async def login(self, base_url: str, user: str, password: str = PASSWORD) -> tuple[int, Any]:
        code, body = await self.http(
            "POST",
            base_url + "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
            },
        )
        return code, json.loads(body)

    def sqlite_rows(self, db_path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        conn = sqlite3.connect(str(db_path))
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


class GenerateConfigTests(CliTestCase):
    async def test_writes_config_and_signing_key_without_starting(self) -> None:
        data_dir = self.tmpdir() / "nested" / "data"
        port = free_port()
        proc = await self.heddle(
            "generate-config",
            "--server-name",
            "example.org",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        )
        self.assertEqual(proc.exit_code, 0, proc)
        config_path = data_dir / "homeserver.yaml"
        self.assertIn(str(config_path), proc.out)
        self.assertEqual(stat.S_IMODE(config_path.stat().st_mode), 0o600)

        config = load_config(str(config_path), environ={})
        self.assertEqual(config.server_name, "example.org")
        self.assertEqual(Path(config.data_dir), data_dir)
        self.assertEqual(config.listeners[0].type, "client")
        self.assertEqual(config.listeners[0].port, port)
        self.assertEqual(config.database_url, f"sqlite:///{data_dir / 'homeserver.db'}")
        federation = next(lst for lst in config.listeners if lst.type == "federation")
        self.assertEqual((federation.port, federation.tls), (federation_port_for(port), True))
        cert_path = config.resolve_path(federation.tls_certificate_path or "")
        self.assertEqual(cert_path, data_dir / "example.org.tls.crt")
        tls_key_path = config.resolve_path(federation.tls_private_key_path or "")
        self.assertEqual(stat.S_IMODE(tls_key_path.stat().st_mode), 0o600)

        key_path = config.resolve_path(config.signing_key_path)
        self.assertEqual(key_path, data_dir / "example.org.signing.key")
        self.assertEqual(stat.S_IMODE(key_path.stat().st_mode), 0o600)
        algorithm, version, seed = key_path.read_text().split()
        key = decode_signing_key_base64(algorithm, version, seed)
        self.assertEqual((key.alg, key.version), ("ed25519", "a_1"))

        # Nothing was started: no database, nothing listening.
        self.assertEqual(
            sorted(p.name for p in data_dir.iterdir()),
            [
                "example.org.signing.key",
                "example.org.tls.crt",
                "example.org.tls.key",
                "homeserver.yaml",
            ],
        )
        self.assertTrue(port_is_free(port))

    async def test_refuses_to_overwrite(self) -> None:
        data_dir = self.tmpdir()
        first = await self.heddle(
            "generate-config", "--server-name", "localhost", "--data-dir", str(data_dir)
        )
        self.assertEqual(first.exit_code, 0, first)
        config_text = (data_dir / "homeserver.yaml").read_text()
        key_text = (data_dir / "localhost.signing.key").read_text()

        for name in ("localhost", "other.example"):
            again = await self.heddle(
                "generate-config", "--server-name", name, "--data-dir", str(data_dir)
            )
            self.assertOneLineError(again, str(data_dir / "homeserver.yaml"), "already exists")
        self.assertEqual((data_dir / "homeserver.yaml").read_text(), config_text)
        self.assertEqual((data_dir / "localhost.signing.key").read_text(), key_text)

    async def test_keeps_an_existing_signing_key(self) -> None:
        data_dir = self.tmpdir()
        (data_dir / "localhost.signing.key").write_text("ed25519 a_1 keepme\n")
        proc = await self.heddle(
            "generate-config", "--server-name", "localhost", "--data-dir", str(data_dir)
        )
        self.assertEqual(proc.exit_code, 0, proc)
        self.assertEqual((data_dir / "localhost.signing.key").read_text(), "ed25519 a_1 keepme\n")

    async def test_invalid_server_name_creates_nothing(self) -> None:
        data_dir = self.tmpdir() / "new"
        proc = await self.heddle(
            "generate-config", "--server-name", "bad name!", "--data-dir", str(data_dir)
        )
        self.assertOneLineError(
            proc, "--server-name", "'bad name!'", "not a valid Matrix server name"
        )
        self.assertFalse(data_dir.exists())

    async def test_invalid_port_creates_nothing(self) -> None:
        data_dir = self.tmpdir() / "new"
        proc = await self.heddle(
            "generate-config",
            "--server-name",
            "localhost",
            "--data-dir",
            str(data_dir),
            "--port",
            "70000",
        )
        self.assertOneLineError(proc, "--port", "70000")
        self.assertFalse(data_dir.exists())

    async def test_default_data_dir_and_option_placement(self) -> None:
        cwd = self.tmpdir()
        proc = await self.heddle("generate-config", "--server-name", "localhost", cwd=cwd)
        self.assertEqual(proc.exit_code, 0, proc)
        config = load_config(str(cwd / "heddle-data" / "homeserver.yaml"), environ={})
        self.assertEqual(Path(config.data_dir), cwd / "heddle-data")
        self.assertEqual(config.listeners[0].port, 8008)

        # --data-dir given before the command is honoured too.
        proc = await self.heddle(
            "--data-dir",
            str(cwd / "before"),
            "generate-config",
            "--server-name",
            "localhost",
            cwd=cwd,
        )
        self.assertEqual(proc.exit_code, 0, proc)
        self.assertTrue((cwd / "before" / "homeserver.yaml").exists())

    async def test_version(self) -> None:
        proc = await self.heddle("--version")
        self.assertEqual(proc.exit_code, 0, proc)
        self.assertEqual(proc.out, f"heddle {homeserver.__version__}\n")

    def test_every_option_and_command_has_help(self) -> None:
        undocumented = []

        def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    helped = {choice.dest for choice in action._choices_actions if choice.help}
                    for name, subparser in action.choices.items():
                        if name not in helped:
                            undocumented.append(f"{prefix}{name}")
                        walk(subparser, f"{prefix}{name} ")
                elif not action.help or action.help == argparse.SUPPRESS:
                    undocumented.append(f"{prefix}{'/'.join(action.option_strings)}")

        walk(cli._parser(), "heddle ")
        self.assertEqual(undocumented, [])

    async def test_usage_errors(self) -> None:
        proc = await self.heddle("generate-config")
        self.assertNotEqual(proc.exit_code, 0, proc)
        self.assertIn("--server-name", proc.err)
        proc = await self.heddle("--help")
        self.assertEqual(proc.exit_code, 0, proc)
        for command in ("generate-config", "register-user"):
            self.assertIn(command, proc.out)


class GenerateSigningKeyTests(CliTestCase):
    async def test_writes_a_key_and_refuses_to_overwrite_it(self) -> None:
        key_path = self.tmpdir() / "keys" / "example.org.signing.key"
        proc = await self.heddle("generate-signing-key", "--output", str(key_path))
        self.assertEqual(proc.exit_code, 0, proc)
        self.assertEqual(proc.out, f"Wrote {key_path} (key ID ed25519:a_1)\n")
        self.assertEqual(stat.S_IMODE(key_path.stat().st_mode), 0o600)
        self.assertEqual(load_signing_key(key_path).version, "a_1")
        first = key_path.read_text()

        proc = await self.heddle("generate-signing-key", "-o", str(key_path))
        self.assertOneLineError(proc, str(key_path), "already exists", "--force")
        self.assertEqual(key_path.read_text(), first)

        proc = await self.heddle(
            "generate-signing-key", "-o", str(key_path), "--key-version", "a_2", "--force"
        )
        self.assertEqual(proc.exit_code, 0, proc)
        self.assertEqual(load_signing_key(key_path).version, "a_2")
        self.assertNotEqual(key_path.read_text().split()[2], first.split()[2])

    async def test_a_server_runs_with_the_key(self) -> None:
        config_path = await self.generate("localhost")
        key_path = config_path.parent / "localhost.signing.key"
        proc = await self.heddle("generate-signing-key", "-o", str(key_path), "--force")
        self.assertEqual(proc.exit_code, 0, proc)
        base_url = self.client_url(config_path)
        server = await self.start_server("--config", str(config_path), base_url=base_url)
        await self.stop_server(server)

    async def test_refusals(self) -> None:
        directory = self.tmpdir()
        self.assertOneLineError(
            await self.heddle("generate-signing-key", "-o", str(directory)), "is a directory"
        )
        self.assertOneLineError(
            await self.heddle(
                "generate-signing-key", "-o", str(directory / "k"), "--key-version", "a:1"
            ),
            "--key-version",
            "'a:1'",
        )
        self.assertEqual(list(directory.iterdir()), [])
        proc = await self.heddle("generate-signing-key")
        self.assertNotEqual(proc.exit_code, 0, proc)
        self.assertIn("--output", proc.err)


class RunTests(CliTestCase):
    async def test_first_start_generates_then_serves_and_stops_cleanly(self) -> None:
        """`heddle --server-name localhost --data-dir D`, with the generated client port moved
        off 8008 (the zero-config test below uses 8008 itself when it is free)."""
        data_dir = self.tmpdir() / "data"
        config_path = await self.generate("localhost", data_dir)
        base_url = self.client_url(config_path)
        proc = await self.start_server(
            "--server-name", "localhost", "--data-dir", str(data_dir), base_url=base_url
        )
        self.assertTrue((data_dir / "homeserver.db").exists())
        self.assertEqual(
            [
                row[0]
                for row in self.sqlite_rows(
                    data_dir / "homeserver.db", "SELECT number FROM schema_migrations"
                )
            ][:1],
            [1],
        )
        code, body = await self.http("GET", self.metrics_url(config_path) + "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"heddle_http_requests_total", body)
        await self.stop_server(proc)
        self.assertTrue(port_is_free(int(base_url.rsplit(":", 1)[1])))

        # The second start finds everything in place and serves again.
        proc = await self.start_server(
            "--server-name", "localhost", "--data-dir", str(data_dir), base_url=base_url
        )
        await self.stop_server(proc)
        self.assertNotIn("Generated", proc.err)

    async def test_zero_config_first_start(self) -> None:
        """`heddle --server-name localhost` and nothing else: config, ed25519 key and SQLite
        database appear in ./heddle-data, and the client API answers on 127.0.0.1:8008."""
        # The environment cannot move list items (listeners), so this needs the real ports.
        for port in (8008, 9008):
            if not port_is_free(port):
                raise unittest.SkipTest(
                    f"127.0.0.1:{port} is in use; the zero-config server binds it"
                )
        cwd = self.tmpdir()
        proc = await self.start_server(
            "--server-name", "localhost", cwd=cwd, base_url="http://127.0.0.1:8008"
        )
        data_dir = cwd / "heddle-data"
        self.assertIn(f"Generated {Path('heddle-data') / 'homeserver.yaml'}", proc.err)
        config = load_config(str(data_dir / "homeserver.yaml"), environ={})
        self.assertEqual(config.server_name, "localhost")
        self.assertEqual(Path(config.data_dir), data_dir)
        algorithm, version, seed = (data_dir / "localhost.signing.key").read_text().split()
        self.assertEqual(decode_signing_key_base64(algorithm, version, seed).alg, "ed25519")
        self.assertTrue((data_dir / "homeserver.db").exists())
        # Open registration works out of the box on the loopback-only server.
        code, body = await self.http(
            "POST",
            "http://127.0.0.1:8008/_matrix/client/v3/register",
            {"username": "first", "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
        )
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["user_id"], "@first:localhost")
        await self.stop_server(proc)

    async def test_runs_from_a_config_file(self) -> None:
        """`heddle --config FILE` with a hand-written config: relative paths are relative to
        the file (not the working directory), the signing key is read from there."""
        base = self.tmpdir()
        config_dir = base / "etc"
        config_dir.mkdir()
        key_source = await self.generate("example.test", base / "generated")
        generated = yaml.safe_load(key_source.read_text())
        (config_dir / "state").mkdir()
        (config_dir / "state" / "my.key").write_text(
            (base / "generated" / "example.test.signing.key").read_text()
        )
        port = free_port()
        config_path = config_dir / "server.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "server_name": "example.test",
                    "data_dir": "state",
                    "signing_key_path": "my.key",
                    "listeners": [{"type": "client", "port": port}],
                    "database": {"url": "sqlite:///db/heddle.sqlite"},
                    "auth": {"jwt_secret": generated["auth"]["jwt_secret"], "bcrypt_rounds": 4},
                }
            )
        )
        elsewhere = self.tmpdir()
        proc = await self.start_server(
            "--config", str(config_path), cwd=elsewhere, base_url=f"http://127.0.0.1:{port}"
        )
        self.assertTrue((config_dir / "state" / "db" / "heddle.sqlite").exists())
        self.assertEqual(list(elsewhere.iterdir()), [])
        await self.stop_server(proc)


class BadConfigTests(CliTestCase):
    async def run_config(
        self, config_path: Path, *extra: str, env: dict[str, str] | None = None
    ) -> HeddleProcess:
        return await self.heddle("--config", str(config_path), *extra, env=env)

    async def test_unknown_key(self) -> None:
        config_path = await self.generate()
        with config_path.open("a") as f:
            f.write("serve_server_wellknwon: true\n")
        proc = await self.run_config(config_path)
        self.assertOneLineError(proc, str(config_path), "serve_server_wellknwon: unknown option")

    async def test_unknown_nested_key(self) -> None:
        config_path = await self.generate()
        raw = yaml.safe_load(config_path.read_text())
        raw["listeners"][0]["bind"] = "0.0.0.0"
        config_path.write_text(yaml.safe_dump(raw))
        proc = await self.run_config(config_path)
        self.assertOneLineError(proc, "listeners.0.bind: unknown option")

    async def test_wrong_types(self) -> None:
        config_path = await self.generate()
        original = config_path.read_text()
        raw = yaml.safe_load(original)
        for value in ("abc", "8008", -1):
            raw["listeners"][0]["port"] = value
            config_path.write_text(yaml.safe_dump(raw))
            proc = await self.run_config(config_path)
            self.assertOneLineError(proc, "listeners.0.port", repr(value))
        raw = yaml.safe_load(original)
        raw["registration"]["enabled"] = "sometimes"
        config_path.write_text(yaml.safe_dump(raw))
        self.assertOneLineError(
            await self.run_config(config_path), "registration.enabled", "'sometimes'"
        )

    async def test_invalid_yaml(self) -> None:
        config_path = await self.generate()
        config_path.write_text(config_path.read_text() + "listeners: [unclosed\n")
        proc = await self.run_config(config_path)
        self.assertOneLineError(proc, str(config_path), "not valid YAML at line")

    async def test_not_a_mapping(self) -> None:
        config_path = self.tmpdir() / "homeserver.yaml"
        config_path.write_text("- just\n- a list\n")
        self.assertOneLineError(await self.run_config(config_path), "top level must be a mapping")

    async def test_missing_config_file(self) -> None:
        missing = self.tmpdir() / "nope.yaml"
        proc = await self.run_config(missing)
        self.assertOneLineError(
            proc, f"cannot read config file {missing}", "No such file or directory"
        )

    async def test_no_config_and_no_server_name(self) -> None:
        cwd = self.tmpdir()
        proc = await self.heddle(cwd=cwd)
        self.assertOneLineError(proc, "no config", "--server-name")
        self.assertEqual(list(cwd.iterdir()), [])

    async def test_garbage_signing_key(self) -> None:
        config_path = await self.generate()
        key_path = config_path.parent / "localhost.signing.key"
        for content, problem in (
            ("garbage\n", "is not in the 'ed25519 <version> <key>' format"),
            ("ed25519 a_1 !!!not-base64!!!\n", "does not hold a valid ed25519 key"),
        ):
            key_path.write_text(content)
            proc = await self.run_config(config_path)
            self.assertOneLineError(proc, f"signing key {key_path}", problem)

    async def test_unreadable_signing_key(self) -> None:
        config_path = await self.generate()
        key_path = config_path.parent / "localhost.signing.key"
        key_path.unlink()
        proc = await self.run_config(config_path)
        self.assertOneLineError(
            proc, f"cannot read signing key {key_path}", "No such file or directory"
        )
        # Unreadable even for root: a directory where the key file should be.
        key_path.mkdir()
        proc = await self.run_config(config_path)
        self.assertOneLineError(proc, f"cannot read signing key {key_path}", "Is a directory")

    async def test_port_in_use(self) -> None:
        config_path = await self.generate()
        port = int(self.client_url(config_path).rsplit(":", 1)[1])
        squatter = socket.socket()
        self.addCleanup(squatter.close)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        proc = await self.run_config(config_path)
        # Logging has started by then (migrations ran), so other lines may precede the error.
        self.assertOneLineError(
            proc, f"cannot listen on 127.0.0.1:{port}", "address already in use", only_line=False
        )
        self.assertNotIn("Traceback", proc.err)

    async def test_unreachable_database(self) -> None:
        """Nothing listens on the port: one line saying so, no traceback (that is logged at
        debug level only), for the server and for register-user alike."""
        config_path = await self.generate()
        port = free_port()
        env = child_env(HEDDLE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/heddle")
        proc = await self.run_config(config_path, env=env)
        line = self.assertOneLineError(
            proc, "cannot connect to the database", f"127.0.0.1:{port}/heddle", "Connection refused"
        )
        self.assertEqual(proc.err, line + "\n")
        proc = await self.heddle(
            "register-user", "--config", str(config_path), "-u", "x", "-p", PASSWORD, env=env
        )
        self.assertOneLineError(proc, "cannot connect to the database", "Connection refused")

    async def test_database_that_does_not_exist(self) -> None:
        config_path = await self.generate()
        base = postgres_database_url().rsplit("/", 1)[0]
        url = f"{base}/heddle_no_such_database"
        proc = await self.run_config(config_path, env=child_env(HEDDLE_DATABASE_URL=url))
        line = self.assertOneLineError(
            proc,
            "cannot connect to the database",
            "/heddle_no_such_database",
            'database "heddle_no_such_database" does not exist',
        )
        self.assertEqual(proc.err, line + "\n")

    async def test_unsupported_database_scheme(self) -> None:
        config_path = await self.generate()
        raw = yaml.safe_load(config_path.read_text())
        raw["database"]["url"] = "mysql://heddle:hunter2@127.0.0.1/heddle"
        config_path.write_text(yaml.safe_dump(raw))
        line = self.assertOneLineError(
            await self.run_config(config_path),
            f"{config_path}: database.url: mysql:// is not supported",
            "sqlite:///",
            "postgresql://",
        )
        self.assertNotIn("hunter2", line)

    async def test_placeholder_jwt_secret(self) -> None:
        """A config that kept the sample's placeholder secret does not start."""
        config_path = await self.generate()
        raw = yaml.safe_load(config_path.read_text())
        raw["auth"]["jwt_secret"] = JWT_SECRET_PLACEHOLDER
        config_path.write_text(yaml.safe_dump(raw))
        self.assertOneLineError(
            await self.run_config(config_path),
            f"{config_path}: auth.jwt_secret: is the sample config's placeholder",
            "secrets.token_urlsafe(48)",
        )

    async def test_server_name_mismatch(self) -> None:
        config_path = await self.generate("localhost")
        proc = await self.heddle(
            "--server-name", "other.example", "--data-dir", str(config_path.parent)
        )
        self.assertOneLineError(proc, str(config_path), "'localhost'", "'other.example'")
        proc = await self.heddle("--server-name", "other.example", "--config", str(config_path))
        self.assertOneLineError(proc, "'localhost'", "'other.example'")

    async def test_invalid_server_name(self) -> None:
        data_dir = self.tmpdir() / "data"
        proc = await self.heddle("--server-name", "bad name", "--data-dir", str(data_dir))
        self.assertOneLineError(
            proc, "--server-name", "'bad name'", "not a valid Matrix server name"
        )
        self.assertFalse(data_dir.exists())

        config_path = await self.generate()
        self.edit_config(config_path, server_name="under_score.example")
        proc = await self.run_config(config_path)
        self.assertOneLineError(
            proc, "server_name", "'under_score.example'", "not a valid Matrix server name"
        )


class RegisterUserTests(CliTestCase):
    async def test_register_admin_then_log_in(self) -> None:
        config_path = await self.generate("localhost")
        db_path = config_path.parent / "homeserver.db"
        proc = await self.heddle(
            "register-user", "--config", str(config_path), "-u", "admin", "-p", PASSWORD, "--admin"
        )
        self.assertEqual(proc.exit_code, 0, proc)
        self.assertEqual(proc.out.strip(), "Created @admin:localhost (admin)")
        rows = self.sqlite_rows(
            db_path,
            "SELECT is_admin, password_hash FROM users WHERE user_id = ?",
            ("@admin:localhost",),
        )
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0][0], 1)
        self.assertTrue(rows[0][1].startswith("$2"), "a bcrypt hash, not the password")

        # The same user again: one line, non-zero, nothing changed.
        again = await self.heddle(
            "register-user",
            "--config",
            str(config_path),
            "-u",
            "admin",
            "-p",
            "other password",
            "--admin",
        )
        self.assertOneLineError(again, "User ID already taken")
        self.assertEqual(
            self.sqlite_rows(
                db_path, "SELECT password_hash FROM users WHERE user_id = ?", ("@admin:localhost",)
            ),
            [(rows[0][1],)],
        )

        base_url = self.client_url(config_path)
        server = await self.start_server("--config", str(config_path), base_url=base_url)
        code, body = await self.login(base_url, "admin")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["user_id"], "@admin:localhost")
        self.assertIsInstance(body["access_token"], str)
        code, body = await self.login(base_url, "admin", "wrong password")
        self.assertEqual(code, 403, body)

        # register-user next to the running server (same SQLite file), options before the
        # command this time: a plain user, usable at once.
        proc = await self.heddle(
            "--config", str(config_path), "register-user", "-u", "Bob", "-p", PASSWORD
        )
        self.assertEqual(proc.exit_code, 0, proc)
        self.assertEqual(proc.out.strip(), "Created @bob:localhost")
        code, body = await self.login(base_url, "bob")
        self.assertEqual(code, 200, body)
        await self.stop_server(server)
        self.assertEqual(
            self.sqlite_rows(
                db_path, "SELECT is_admin FROM users WHERE user_id = ?", ("@bob:localhost",)
            ),
            [(0,)],
        )

    async def test_default_config_location(self) -> None:
        config_path = await self.generate("localhost")
        proc = await self.heddle(
            "register-user", "--data-dir", str(config_path.parent), "-u", "carol", "-p", PASSWORD
        )
        self.assertEqual(proc.exit_code, 0, proc)
        self.assertEqual(proc.out.strip(), "Created @carol:localhost")
        cwd = config_path.parent.parent
        (cwd / "heddle-data").symlink_to(config_path.parent)
        proc = await self.heddle("register-user", "-u", "dave", "-p", PASSWORD, cwd=cwd)
        self.assertEqual(proc.exit_code, 0, proc)

    async def test_refusals_are_one_line(self) -> None:
        config_path = await self.generate("localhost")
        proc = await self.heddle(
            "register-user", "--config", str(config_path), "-u", "weak", "-p", "short"
        )
        self.assertOneLineError(proc, "at least 8 characters")
        proc = await self.heddle(
            "register-user", "--config", str(config_path), "-u", "no spaces", "-p", PASSWORD
        )
        self.assertOneLineError(proc)
        proc = await self.heddle(
            "register-user",
            "--config",
            str(self.tmpdir() / "missing.yaml"),
            "-u",
            "x",
            "-p",
            PASSWORD,
        )
        self.assertOneLineError(proc, "cannot read config file")
        (config_path.parent / "localhost.signing.key").write_text("garbage\n")
        proc = await self.heddle(
            "register-user", "--config", str(config_path), "-u", "eve", "-p", PASSWORD
        )
        self.assertOneLineError(proc, "signing key", "format")
        # None of the refused registrations created anyone.
        self.assertEqual(
            self.sqlite_rows(config_path.parent / "homeserver.db", "SELECT user_id FROM users"), []
        )


class EnvironmentOverrideTests(CliTestCase):
    async def test_server_name_and_database_url(self) -> None:
        config_path = await self.generate("localhost")
        other_db = self.tmpdir() / "elsewhere.db"
        proc = await self.heddle(
            "register-user",
            "--config",
            str(config_path),
            "-u",
            "carol",
            "-p",
            PASSWORD,
            env=child_env(
                HEDDLE_SERVER_NAME="env.example", HEDDLE_DATABASE_URL=f"sqlite:///{other_db}"
            ),
        )
        self.assertEqual(proc.exit_code, 0, proc)
        self.assertEqual(proc.out.strip(), "Created @carol:env.example")
        self.assertEqual(
            self.sqlite_rows(other_db, "SELECT user_id FROM users"), [("@carol:env.example",)]
        )
        self.assertFalse((config_path.parent / "homeserver.db").exists())

    async def test_postgres_database_url(self) -> None:
        config_path = await self.generate("localhost")
        url = postgres_database_url()
        reset_postgres_database(url)
        proc = await self.heddle(
            "register-user",
            "--config",
            str(config_path),
            "-u",
            "pat",
            "-p",
            PASSWORD,
            "--admin",
            env=child_env(HEDDLE_DATABASE_URL=url),
        )
        self.assertEqual(proc.exit_code, 0, proc)
        import psycopg2

        conn = psycopg2.connect(url)
        self.addCleanup(conn.close)
        with conn.cursor() as cur:
            cur.execute("SELECT user_id, is_admin FROM users")
            self.assertEqual(cur.fetchall(), [("@pat:localhost", True)])
        self.assertFalse((config_path.parent / "homeserver.db").exists())

        # And a server runs on it.
        base_url = self.client_url(config_path)
        server = await self.start_server(
            "--config", str(config_path), base_url=base_url, env=child_env(HEDDLE_DATABASE_URL=url)
        )
        code, body = await self.login(base_url, "pat")
        self.assertEqual(code, 200, body)
        await self.stop_server(server)

    async def test_rate_limits_enabled(self) -> None:
        """The generated config has rate limits on: repeated failed logins get 429. With
        HEDDLE_RATE_LIMITS__ENABLED=false they never do."""
        config_path = await self.generate("localhost")
        base_url = self.client_url(config_path)

        async def failed_login_codes(env: dict[str, str]) -> list[int]:
            server = await self.start_server(
                "--config", str(config_path), base_url=base_url, env=env
            )
            codes = [(await self.login(base_url, "nobody", "wrong password"))[0] for _ in range(8)]
            await self.stop_server(server)
            return codes

        limited = await failed_login_codes(child_env())
        self.assertIn(429, limited)
        unlimited = await failed_login_codes(child_env(HEDDLE_RATE_LIMITS__ENABLED="false"))
        self.assertEqual(unlimited, [403] * 8)

    async def test_unknown_option_from_the_environment_names_the_variable(self) -> None:
        config_path = await self.generate("localhost")
        proc = await self.heddle(
            "--config", str(config_path), env=child_env(HEDDLE_REGISTRATON__ENABLED="true")
        )
        line = self.assertOneLineError(
            proc, "environment variable HEDDLE_REGISTRATON__ENABLED: registraton: unknown option"
        )
        self.assertNotIn(str(config_path), line)

    async def test_bad_environment_value_is_one_line(self) -> None:
        config_path = await self.generate("localhost")
        proc = await self.heddle(
            "--config", str(config_path), env=child_env(HEDDLE_RATE_LIMITS__ENABLED="perhaps")
        )
        self.assertOneLineError(proc, "rate_limits.enabled", "'perhaps'")
        proc = await self.heddle(
            "--config", str(config_path), env=child_env(HEDDLE_SERVER_NAME="not valid")
        )
        self.assertOneLineError(proc, "server_name")
