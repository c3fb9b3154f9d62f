"""The `heddle` command: run the server, write a config, create users."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError

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
    parser.add_argument("--config", "-c", help="run from this config file")
    parser.add_argument("--server-name", help="server name (generates a config on first start)")
    parser.add_argument(
        "--data-dir", default=DEFAULT_DATA_DIR, help=f"data directory (default {DEFAULT_DATA_DIR})"
    )
    sub = parser.add_subparsers(dest="command")

    gen = sub.add_parser("generate-config", help="write a config and signing key, then exit")
    gen.add_argument("--server-name", required=True)
    # SUPPRESS: when not given after the command, keep the value given before it (argparse
    # would otherwise overwrite `heddle --data-dir D generate-config` with the default).
    gen.add_argument("--data-dir", default=argparse.SUPPRESS)
    gen.add_argument("--port", type=int, default=8008, help="client listener port (default 8008)")

    reg = sub.add_parser("register-user", help="create an account directly in the database")
    reg.add_argument(
        "--config",
        "-c",
        default=argparse.SUPPRESS,
        help="config file (default: <data-dir>/homeserver.yaml)",
    )
    reg.add_argument("--data-dir", default=argparse.SUPPRESS)
    reg.add_argument("--user", "-u", required=True, help="localpart of the new user")
    reg.add_argument("--password", "-p", help="password (prompted for when omitted)")
    reg.add_argument("--admin", action="store_true", help="make the user a server admin")
    return parser


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

    # The global reactor's type is an interface union mypy cannot call methods on usefully.
    reactor: Any = default_reactor
    setup_logging(config)
    hs = HomeServer(config, reactor)
    exit_code = [0]

    async def start() -> None:
        try:
            await hs.setup()
            hs.start_listening()
        except CannotListenError as e:
            raise StartupError(
                f"cannot listen on {e.interface or '*'}:{e.port}: {_listen_reason(e)}"
            ) from None
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
    reactor.run()
    return exit_code[0]


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
            hs = HomeServer(config, reactor)
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
        if args.command == "register-user":
            sys.exit(register_user(args))
        sys.exit(run_server(_config_for_run(args)))
    except (ConfigError, StartupError) as e:
        print(f"heddle: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
