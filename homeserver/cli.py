"""The `heddle` command: run the server, write a config, create users."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError

from homeserver.admin import cli as admin_cli
from homeserver.config import (
    ConfigError,
    HomeserverConfig,
    generate_config_text,
    load_config,
)
from homeserver.errors import MatrixError
from homeserver.signing_key import write_new_signing_key
from homeserver.tls import generate_self_signed_certificate

logger = logging.getLogger("heddle")

CONFIG_FILE_NAME = "homeserver.yaml"
DEFAULT_DATA_DIR = "./heddle-data"


class StartupError(Exception):
    """A problem that stops the server from starting, worded for an operator in one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heddle",
        description="Heddle Matrix homeserver. With no command, runs the server.",
    )
    parser.add_argument("--version", action="version", version=f"heddle {_version()}")
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="run from this config file (default: <data-dir>/homeserver.yaml)",
    )
    parser.add_argument(
        "--server-name",
        metavar="NAME",
        help="server name, e.g. example.org; with no config yet, one is generated for it",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=DEFAULT_DATA_DIR,
        help=f"data directory (default {DEFAULT_DATA_DIR})",
    )
    sub = parser.add_subparsers(dest="command", title="commands")

    gen = sub.add_parser(
        "generate-config",
        help="write a config, signing key and TLS certificate, then exit",
        description="Write <data-dir>/homeserver.yaml (a working single-process SQLite setup "
        "with fresh secrets), the signing key and a self-signed certificate for the federation "
        "listener. Refuses to overwrite an existing config.",
    )
    gen.add_argument(
        "--server-name",
        required=True,
        metavar="NAME",
        help="the server name in user IDs (@alice:NAME); cannot be changed once there are users",
    )
    # SUPPRESS: when not given after the command, keep the value given before it (argparse
    # would otherwise overwrite `heddle --data-dir D generate-config` with the default).
    gen.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"where to write the files (default {DEFAULT_DATA_DIR})",
    )
    gen.add_argument(
        "--port",
        type=int,
        metavar="PORT",
        default=8008,
        help="client listener port (default 8008); the TLS federation listener gets PORT + 440 "
        "(8448) and the metrics listener PORT + 1000 (9008)",
    )

    key = sub.add_parser(
        "generate-signing-key",
        help="write a new ed25519 signing key, then exit",
        description="Write a new ed25519 signing key (mode 600) in the format signing_key_path "
        "expects. Refuses to overwrite an existing file unless --force is given: a server whose "
        "key is replaced must list the old one in federation.old_signing_keys.",
    )
    key.add_argument(
        "--output", "-o", metavar="FILE", required=True, help="file to write the key to"
    )
    key.add_argument(
        "--key-version",
        metavar="VERSION",
        default="a_1",
        help="the key's version, the part after 'ed25519:' in its key ID (default a_1); "
        "give a new one when rotating keys",
    )
    key.add_argument(
        "--force", action="store_true", help="overwrite the file at --output if it exists"
    )

    reg = sub.add_parser(
        "register-user",
        help="create an account directly in the database",
        description="Create an account directly in the database; works while the server runs.",
    )
    reg.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="config file (default: <data-dir>/homeserver.yaml)",
    )
    reg.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"data directory holding homeserver.yaml (default {DEFAULT_DATA_DIR})",
    )
    reg.add_argument(
        "--user", "-u", metavar="LOCALPART", required=True, help="localpart of the new user"
    )
    reg.add_argument("--password", "-p", help="password (prompted for when omitted)")
    reg.add_argument("--admin", action="store_true", help="make the user a server admin")

    admin_cli.add_parser(sub)
    return parser


# The version part of a key ID (`ed25519:<version>`): the spec allows [a-zA-Z0-9_].
_KEY_VERSION = re.compile(r"[A-Za-z0-9_]+")


def generate_signing_key(output: str, key_version: str = "a_1", force: bool = False) -> Path:
    """Write a new signing key to `output`; refuse to replace an existing file unless forced."""
    path = Path(output)
    if not _KEY_VERSION.fullmatch(key_version):
        raise StartupError(
            f"--key-version: {key_version!r} may only hold letters, digits and underscores"
        )
    if path.is_dir():
        raise StartupError(f"{path} is a directory; give the key file's path")
    if path.exists() and not force:
        raise StartupError(
            f"{path} already exists; not overwriting it (--force replaces it: list the old "
            "key in federation.old_signing_keys so events it signed stay verifiable)"
        )
    try:
        write_new_signing_key(path, key_version)
    except OSError as e:
        raise StartupError(f"cannot write signing key {path}: {e.strerror}") from None
    return path


def generate_config(server_name: str, data_dir: str, port: int = 8008) -> Path:
    """Write `<data_dir>/homeserver.yaml` and the signing key; refuse to overwrite."""
    directory = Path(data_dir)
    config_path = directory / CONFIG_FILE_NAME
    if config_path.exists():
        raise StartupError(f"{config_path} already exists; not overwriting it")
    # Validate (server name, port) before creating anything on disk.
    text = generate_config_text(server_name, data_dir, port)
    text = _with_federation_listener(text, server_name, port)
    directory.mkdir(parents=True, exist_ok=True)
    config_path.write_text(text, encoding="utf-8")
    config_path.chmod(0o600)
    config = load_config(str(config_path))
    key_path = config.resolve_path(config.signing_key_path)
    if not key_path.exists():
        write_new_signing_key(key_path)
    for listener in config.listeners:
        if listener.type != "federation" or not listener.tls:
            continue
        cert_path = config.resolve_path(listener.tls_certificate_path or "")
        tls_key_path = config.resolve_path(listener.tls_private_key_path or "")
        if not cert_path.exists() and not tls_key_path.exists():
            generate_self_signed_certificate(cert_path, tls_key_path, server_name)
    return config_path


def federation_port_for(client_port: int) -> int:
    """The generated federation listener's port: 440 above the client port (so the default
    8008 gives the spec's 8448), or below it near the top of the range; 0 stays 0."""
    if client_port == 0:
        return 0
    return client_port + 440 if client_port <= 65535 - 440 else client_port - 440


def _with_federation_listener(text: str, server_name: str, port: int) -> str:
    """Add a TLS federation listener, with a self-signed certificate, to a generated config."""
    base = server_name.replace(":", "_")
    block = f"""\
  # Other servers (federation), over TLS with a generated self-signed certificate. Like the
  # others it binds to loopback: to federate, bind 0.0.0.0 and use a certificate that other
  # servers trust (they refuse self-signed ones), e.g. from Let's Encrypt.
  - type: federation
    bind_address: 127.0.0.1
    port: {federation_port_for(port)}
    tls: true
    tls_certificate_path: {json.dumps(base + ".tls.crt")}
    tls_private_key_path: {json.dumps(base + ".tls.key")}
"""
    marker = "\ndatabase:\n"
    if marker not in text:
        raise StartupError("cannot add the federation listener to the generated config")
    head, tail = text.split(marker, 1)
    return f"{head}\n{block}database:\n{tail}"


def _config_for_run(args: argparse.Namespace) -> HomeserverConfig:
    if args.config:
        config_path = Path(args.config)
    else:
        config_path = Path(args.data_dir) / CONFIG_FILE_NAME
        if not config_path.exists():
            if not args.server_name:
                raise StartupError(
                    "no config: give --config FILE, or --server-name NAME to generate one"
                )
            generate_config(args.server_name, args.data_dir)
            print(f"Generated {config_path}", file=sys.stderr)
    config = load_config(str(config_path))
    if args.server_name and args.server_name != config.server_name:
        raise StartupError(
            f"{config_path} is for server {config.server_name!r}, not {args.server_name!r}"
        )
    return config


def setup_logging(config: HomeserverConfig) -> None:
    from client_api.http import RequestIdFilter

    handler: logging.Handler
    if config.logging.file:
        handler = logging.FileHandler(config.resolve_path(config.logging.file))
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(config.logging.level)


def run_server(config: HomeserverConfig) -> int:
    from twisted.internet import reactor as default_reactor

    from homeserver.app import HomeServer
    from homeserver.gc_manager import GarbageCollector

    # The global reactor's type is an interface union mypy cannot call methods on usefully.
    reactor: Any = default_reactor
    setup_logging(config)
    hs = HomeServer(config, reactor)
    garbage_collector = GarbageCollector(reactor)
    exit_code = [0]

    async def start() -> None:
        await check_database(hs)
        try:
            await hs.setup()
            hs.start_listening()
        except CannotListenError as e:
            raise StartupError(
                f"cannot listen on {e.interface or '*'}:{e.port}: {_listen_reason(e)}"
            ) from None
        garbage_collector.start()
        logger.info("Heddle %s is running as %s", _version(), config.server_name)

    def failed(failure: Any) -> None:
        if failure.check(StartupError, ConfigError):
            print(f"heddle: {failure.value}", file=sys.stderr)
        else:
            logger.error("start-up failed:\n%s", failure.getTraceback())
            message = _one_line(failure.getErrorMessage())
            print(f"heddle: start-up failed: {message}", file=sys.stderr)
        exit_code[0] = 1
        reactor.stop()

    reactor.callWhenRunning(
        lambda: defer.ensureDeferred(start()).addErrback(failed)
    )
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.ensureDeferred(hs.stop())
    )
    reactor.addSystemEventTrigger("after", "shutdown", garbage_collector.stop)
    reactor.run()
    # A server that stopped itself (it lost the database's writer lock) exits non-zero too.
    return exit_code[0] or (1 if hs.fatal_error else 0)


async def check_database(hs: Any) -> None:
    """Connect to the database once, before anything else uses it, so that one that is down,
    missing or refusing us stops start-up with one line (the traceback is logged at debug)."""
    try:
        await hs.db.run_interaction("check_database", lambda txn: None)
    except Exception as e:
        logger.debug("cannot connect to the database", exc_info=True)
        raise StartupError(
            f"cannot connect to the database {hs.db.engine.describe()}: {_database_reason(e)}"
        ) from None


# libpq starts a TCP connection failure with the host and port it tried, which the error names
# already (a Unix socket's path is kept: the description does not show it).
_LIBPQ_WHERE = re.compile(
    r'^connection to server at "[^"]*"( \([^)]*\))?, port \d+ failed: '
)


def _database_reason(e: Exception) -> str:
    """The driver's reason on one line: `Connection refused`, `database "x" does not exist`."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    reason = _LIBPQ_WHERE.sub("", lines[0])
    return " ".join(reason.removeprefix("FATAL:").split())


def _one_line(message: str) -> str:
    # Some errors (psycopg2's connection failures) span lines; operators get one.
    return " ".join(message.split())


def _listen_reason(e: CannotListenError) -> str:
    text = str(e.socketError)
    return "address already in use" if "in use" in text.lower() else text


def _version() -> str:
    from homeserver import __version__

    return __version__


def register_user(args: argparse.Namespace) -> int:
    from twisted.internet import task

    from homeserver.app import HomeServer

    config = load_config(args.config or str(Path(args.data_dir) / CONFIG_FILE_NAME))
    password = args.password
    if password is None:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Confirm password: "):
            raise StartupError("passwords do not match")

    async def create(reactor: Any) -> None:
        hs = None
        try:
            # Next to a running server: accounts are not numbered by its allocators.
            hs = HomeServer(config, reactor, writer_lock=False)
            await check_database(hs)
            await hs.setup()
            user_id = await hs.registration.register(
                args.user.lower(), password, admin=args.admin
            )
            print(f"Created {user_id}{' (admin)' if args.admin else ''}")
        except MatrixError as e:
            print(f"heddle: {e.message}", file=sys.stderr)
            raise SystemExit(1) from None
        except (ConfigError, StartupError) as e:
            print(f"heddle: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        except Exception as e:
            logger.debug("register-user failed", exc_info=True)
            print(f"heddle: register-user failed: {_one_line(str(e))}", file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            if hs is not None:
                await hs.stop()

    try:
        task.react(lambda reactor: defer.ensureDeferred(create(reactor)))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate-config":
            path = generate_config(args.server_name, args.data_dir, args.port)
            print(f"Wrote {path}")
            sys.exit(0)
        if args.command == "generate-signing-key":
            path = generate_signing_key(args.output, args.key_version, args.force)
            print(f"Wrote {path} (key ID ed25519:{args.key_version})")
            sys.exit(0)
        if args.command == "register-user":
            sys.exit(register_user(args))
        if args.command == "admin":
            sys.exit(admin_cli.run(args))
        sys.exit(run_server(_config_for_run(args)))
    except (ConfigError, StartupError) as e:
        print(f"heddle: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
