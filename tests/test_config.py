"""Configuration: parsing and validation, defaults, environment overrides, paths, the generated
config, and the signing key file. Pure unit tests: no server, no subprocess."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from signedjson.key import decode_signing_key_base64, get_verify_key
from twisted.trial import unittest

from homeserver.config import (
    ConfigError,
    HomeserverConfig,
    generate_config_text,
    load_config,
    parse_config,
)
from homeserver.signing_key import load_signing_key, write_new_signing_key

JWT_SECRET = "j" * 40


def minimal(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "server_name": "example.com",
        "signing_key_path": "example.com.signing.key",
        "auth": {"jwt_secret": JWT_SECRET},
    }
    raw.update(extra)
    return raw


def parse(raw: Any, environ: dict[str, str] | None = None) -> HomeserverConfig:
    return parse_config(raw, source="test.yaml", environ=environ or {})


class ParseErrorTests(unittest.TestCase):
    def assertConfigError(
        self, raw: Any, *fragments: str, environ: dict[str, str] | None = None
    ) -> str:
        with self.assertRaises(ConfigError) as cm:
            parse(raw, environ)
        message = str(cm.exception)
        self.assertNotIn("\n", message, "config errors are one line")
        self.assertTrue(message.startswith("test.yaml: "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_minimal_config_is_valid(self) -> None:
        self.assertEqual(parse(minimal()).server_name, "example.com")

    def test_unknown_keys_are_refused_at_every_level(self) -> None:
        self.assertConfigError(minimal(bogus=1), "bogus: unknown option")
        self.assertConfigError(
            minimal(database={"url": "sqlite:///x.db", "uri": "x"}), "database.uri: unknown option"
        )
        self.assertConfigError(
            minimal(listeners=[{"port": 1, "host": "x"}]), "listeners.0.host: unknown option"
        )
        self.assertConfigError(
            minimal(
                rate_limits={"login_per_address": {"per_second": 1, "burst_count": 1, "burst": 2}}
            ),
            "rate_limits.login_per_address.burst: unknown option",
        )
        raw = minimal()
        raw["auth"]["jwt_secrets"] = "typo"
        self.assertConfigError(raw, "auth.jwt_secrets: unknown option")

    def test_missing_required_options(self) -> None:
        self.assertConfigError(
            {k: v for k, v in minimal().items() if k != "server_name"},
            "server_name: required option is missing",
        )
        self.assertConfigError(minimal(auth={}), "auth.jwt_secret: required option is missing")
        self.assertConfigError(
            {k: v for k, v in minimal().items() if k != "signing_key_path"},
            "signing_key_path: required option is missing",
        )
        # An empty file: everything required is missing, and the count says so.
        self.assertConfigError(None, "required option is missing", "(and 2 more)")

    def test_top_level_must_be_a_mapping(self) -> None:
        for raw in (["server_name"], "server_name: x", 42):
            self.assertConfigError(raw, "top level must be a mapping")

    def test_port_must_be_an_integer_in_range(self) -> None:
        self.assertConfigError(minimal(listeners=[{"port": "abc"}]), "listeners.0.port", "'abc'")
        # Strict: a quoted number is a string, not a port.
        self.assertConfigError(minimal(listeners=[{"port": "8008"}]), "listeners.0.port", "'8008'")
        self.assertConfigError(minimal(listeners=[{"port": -1}]), "listeners.0.port", "-1")
        self.assertConfigError(minimal(listeners=[{"port": 65536}]), "listeners.0.port", "65536")
        self.assertConfigError(minimal(listeners=[{"port": 8008.5}]), "listeners.0.port")
        self.assertConfigError(minimal(listeners=[{"port": True}]), "listeners.0.port")
        self.assertConfigError(minimal(listeners=[{}, {"port": None}]), "listeners.1.port")

    def test_wrong_types(self) -> None:
        cases: list[tuple[dict[str, Any], str]] = [
            (minimal(server_name=8008), "server_name"),
            (minimal(listeners={"type": "client"}), "listeners"),
            (minimal(listeners=[{"type": "media"}]), "listeners.0.type"),
            (minimal(listeners=[{"tls": "yes"}]), "listeners.0.tls"),
            (minimal(registration={"enabled": "true"}), "registration.enabled"),
            (minimal(registration={"enabled": 1}), "registration.enabled"),
            (minimal(registration={"tokens": "abc"}), "registration.tokens"),
            (minimal(registration={"tokens": [1, 2]}), "registration.tokens.0"),
            (minimal(registration={"min_password_length": -1}), "registration.min_password_length"),
            (minimal(database={"url": "mysql://localhost/heddle"}), "database.url"),
            (minimal(database={"url": 5}), "database.url"),
            (minimal(database={"max_connections": 0}), "database.max_connections"),
            (minimal(database="sqlite:///x.db"), "database"),
            (minimal(auth={"jwt_secret": "too-short"}), "auth.jwt_secret"),
            (minimal(auth={"jwt_secret": 12345678901234567890123456789012345}), "auth.jwt_secret"),
            (minimal(auth={"jwt_secret": JWT_SECRET, "bcrypt_rounds": 3}), "auth.bcrypt_rounds"),
            (
                minimal(auth={"jwt_secret": JWT_SECRET, "access_token_lifetime_ms": 10}),
                "auth.access_token_lifetime_ms",
            ),
            (minimal(rate_limits={"enabled": "no"}), "rate_limits.enabled"),
            (
                minimal(rate_limits={"login_per_address": {"per_second": 0, "burst_count": 1}}),
                "rate_limits.login_per_address.per_second",
            ),
            (
                minimal(rate_limits={"login_per_address": {"per_second": 1, "burst_count": 0}}),
                "rate_limits.login_per_address.burst_count",
            ),
            (minimal(limits={"max_request_body_bytes": 10}), "limits.max_request_body_bytes"),
            (minimal(logging={"level": "debug"}), "logging.level"),
            (minimal(federation={"verify_tls": "false"}), "federation.verify_tls"),
        ]
        for raw, location in cases:
            message = self.assertConfigError(raw, f"{location}: ")
            self.assertNotIn("unknown option", message)

    def test_unsupported_database_scheme_names_the_supported_ones(self) -> None:
        message = self.assertConfigError(
            minimal(database={"url": "mysql://heddle:hunter2@db.example/heddle"}),
            "database.url: mysql:// is not supported",
            "sqlite:///",
            "postgresql://",
        )
        self.assertNotIn("hunter2", message, "a database URL may hold a password")
        self.assertConfigError(
            minimal(database={"url": "homeserver.db"}), "database.url: is not a database URL"
        )

    def test_secrets_are_not_echoed_in_errors(self) -> None:
        message = self.assertConfigError(
            minimal(auth={"jwt_secret": "hunter2-short"}), "auth.jwt_secret: "
        )
        self.assertNotIn("hunter2", message)
        message = self.assertConfigError(
            minimal(registration={"shared_secret": 1234567}), "registration.shared_secret: "
        )
        self.assertNotIn("1234567", message)

    def test_placeholder_jwt_secret_is_refused(self) -> None:
        for placeholder in (
            "change me: a long random string, at least 32 characters",
            "CHANGE ME to something with at least 32 characters",
            "changeme-changeme-changeme-changeme",
        ):
            message = self.assertConfigError(
                minimal(auth={"jwt_secret": placeholder}),
                "auth.jwt_secret: is the sample config's placeholder",
                "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'",
            )
            self.assertNotIn(placeholder, message)

    def test_invalid_server_names(self) -> None:
        for name in (
            "",
            "has space",
            "under_score.com",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:abc",
            "[::1",
            "[not-ipv6]",
            "a/b",
        ):
            self.assertConfigError(
                minimal(server_name=name), "server_name", "not a valid Matrix server name"
            )

    def test_valid_server_names(self) -> None:
        for name in (
            "localhost",
            "example.com",
            "example.com:8448",
            "1.2.3.4",
            "1.2.3.4:1",
            "[::1]",
            "[1234:5678::abcd]:443",
            "a-b.example",
        ):
            self.assertEqual(parse(minimal(server_name=name)).server_name, name)


class DefaultsTests(unittest.TestCase):
    def test_defaults(self) -> None:
        config = parse(minimal())
        self.assertEqual(config.data_dir, ".")
        self.assertIsNone(config.public_baseurl)
        self.assertEqual(len(config.listeners), 1)
        listener = config.listeners[0]
        self.assertEqual(
            (
                listener.type,
                listener.bind_address,
                listener.port,
                listener.tls,
                listener.x_forwarded,
            ),
            ("client", "127.0.0.1", 8008, False, False),
        )
        self.assertEqual(config.database.url, "sqlite:///homeserver.db")
        self.assertEqual(config.database.max_connections, 10)
        self.assertIs(config.registration.enabled, False)
        self.assertIs(config.registration.require_token, False)
        self.assertEqual(config.registration.tokens, [])
        self.assertIsNone(config.registration.shared_secret)
        self.assertEqual(config.registration.min_password_length, 8)
        self.assertEqual(config.auth.access_token_lifetime_ms, 15 * 60 * 1000)
        self.assertEqual(config.auth.refresh_token_lifetime_ms, 7 * 24 * 3600 * 1000)
        self.assertEqual(config.auth.bcrypt_rounds, 12)
        self.assertIs(config.rate_limits.enabled, True)
        self.assertEqual(config.rate_limits.login_failures_per_account.burst_count, 3)
        self.assertEqual(config.limits.max_request_body_bytes, 1024 * 1024)
        self.assertIs(config.federation.verify_tls, True)
        self.assertIn("127.0.0.0/8", config.federation.ip_range_blocklist)
        self.assertEqual(config.logging.level, "INFO")
        self.assertIsNone(config.logging.file)

    def test_mutable_defaults_are_not_shared(self) -> None:
        first, second = parse(minimal()), parse(minimal())
        first.registration.tokens.append("leak")
        first.listeners.append(first.listeners[0])
        self.assertEqual(second.registration.tokens, [])
        self.assertEqual(len(second.listeners), 1)

    def test_listeners_may_be_empty_or_several(self) -> None:
        self.assertEqual(parse(minimal(listeners=[])).listeners, [])
        config = parse(minimal(listeners=[{"port": 1}, {"type": "metrics", "port": 2}]))
        self.assertEqual(
            [(lst.type, lst.port) for lst in config.listeners], [("client", 1), ("metrics", 2)]
        )


class EnvironmentOverrideTests(unittest.TestCase):
    def test_named_variables(self) -> None:
        config = parse(
            minimal(public_baseurl="https://file.example/", logging={"level": "INFO"}),
            {
                "HEDDLE_SERVER_NAME": "env.example:8448",
                "HEDDLE_DATABASE_URL": "postgresql://heddle:p%40ss@db.example:5432/heddle",
                "HEDDLE_PUBLIC_BASEURL": "https://env.example/",
                "HEDDLE_JWT_SECRET": "e" * 32,
                "HEDDLE_REGISTRATION_SHARED_SECRET": "shh",
                "HEDDLE_LOG_LEVEL": "DEBUG",
            },
        )
        self.assertEqual(config.server_name, "env.example:8448")
        self.assertEqual(config.database.url, "postgresql://heddle:p%40ss@db.example:5432/heddle")
        self.assertEqual(config.database_url, config.database.url)
        self.assertEqual(config.public_baseurl, "https://env.example/")
        self.assertEqual(config.auth.jwt_secret, "e" * 32)
        self.assertEqual(config.registration.shared_secret, "shh")
        self.assertEqual(config.logging.level, "DEBUG")

    def test_section_key_variables_take_natural_types(self) -> None:
        config = parse(
            minimal(rate_limits={"enabled": True}),
            {
                "HEDDLE_RATE_LIMITS__ENABLED": "false",
                "HEDDLE_AUTH__BCRYPT_ROUNDS": "4",
                "HEDDLE_REGISTRATION__ENABLED": "true",
                "HEDDLE_REGISTRATION__TOKENS": "[abc, def]",
                "HEDDLE_LIMITS__MAX_REQUEST_BODY_BYTES": "2048",
                "HEDDLE_RATE_LIMITS__LOGIN_PER_ADDRESS__PER_SECOND": "2.5",
                "HEDDLE_RATE_LIMITS__LOGIN_PER_ADDRESS__BURST_COUNT": "9",
            },
        )
        self.assertIs(config.rate_limits.enabled, False)
        self.assertEqual(config.auth.bcrypt_rounds, 4)
        self.assertEqual(config.auth.jwt_secret, JWT_SECRET)  # untouched sibling
        self.assertIs(config.registration.enabled, True)
        self.assertEqual(config.registration.tokens, ["abc", "def"])
        self.assertEqual(config.limits.max_request_body_bytes, 2048)
        self.assertEqual(config.rate_limits.login_per_address.per_second, 2.5)
        self.assertEqual(config.rate_limits.login_per_address.burst_count, 9)

    def test_environment_wins_over_file(self) -> None:
        config = parse(
            minimal(rate_limits={"enabled": False}), {"HEDDLE_RATE_LIMITS__ENABLED": "true"}
        )
        self.assertIs(config.rate_limits.enabled, True)

    def test_secrets_and_urls_stay_strings(self) -> None:
        """A secret that YAML would read as a number, boolean or null is still that text."""
        for value in (
            "1" * 40,  # an int to YAML
            "0" + "7" * 35,  # an octal int to YAML 1.1
            "1_000_000_000_000_000_000_000_000_000_000",
            "[" + "x, " * 12 + "y]",  # a list
            "{" + "k: v, " * 6 + "z: w}",  # a mapping
            "a: b: c " * 6,  # not YAML at all
            "'quoted secret with spaces inside'",
        ):
            self.assertGreaterEqual(len(value), 32)
            config = parse(
                minimal(),
                {
                    "HEDDLE_JWT_SECRET": value,
                    "HEDDLE_REGISTRATION_SHARED_SECRET": value,
                },
            )
            self.assertEqual(config.auth.jwt_secret, value)
            self.assertEqual(config.registration.shared_secret, value)
            config = parse(
                minimal(),
                {"HEDDLE_AUTH__JWT_SECRET": value, "HEDDLE_REGISTRATION__SHARED_SECRET": value},
            )
            self.assertEqual(config.auth.jwt_secret, value)
            self.assertEqual(config.registration.shared_secret, value)
        for secret in ("12345", "yes", "null", "1.5"):
            config = parse(minimal(), {"HEDDLE_REGISTRATION_SHARED_SECRET": secret})
            self.assertEqual(config.registration.shared_secret, secret)
        config = parse(minimal(), {"HEDDLE_DATABASE_URL": "sqlite:///data: dir/#1.db"})
        self.assertEqual(config.database.url, "sqlite:///data: dir/#1.db")

    def test_unrelated_variables_are_ignored(self) -> None:
        config = parse(
            minimal(),
            {
                "PATH": "/usr/bin",
                "SERVER_NAME": "nope.example",
                "HEDDLE_TEST_POSTGRES_URL": "postgresql://elsewhere/db",
                "heddle_server_name": "nope.example",
            },
        )
        self.assertEqual(config.server_name, "example.com")
        self.assertEqual(config.database.url, "sqlite:///homeserver.db")

    def test_bad_environment_values_are_config_errors(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            parse(minimal(), {"HEDDLE_RATE_LIMITS__ENABLED": "maybe"})
        self.assertIn("rate_limits.enabled", str(cm.exception))
        with self.assertRaises(ConfigError) as cm:
            parse(minimal(), {"HEDDLE_NO_SUCH__OPTION": "1"})
        self.assertIn("no_such: unknown option", str(cm.exception))
        with self.assertRaises(ConfigError) as cm:
            parse(minimal(), {"HEDDLE_SERVER_NAME": "not valid!"})
        self.assertIn("server_name", str(cm.exception))
        with self.assertRaises(ConfigError) as cm:
            parse(minimal(database="sqlite:///x.db"), {"HEDDLE_DATABASE_URL": "sqlite:///y.db"})
        self.assertIn("HEDDLE_DATABASE_URL", str(cm.exception))
        # Listeners are a list: the environment cannot address them, and says so.
        with self.assertRaises(ConfigError):
            parse(minimal(listeners=[{"port": 1}]), {"HEDDLE_LISTENERS__0__PORT": "2"})

    def test_errors_in_environment_overrides_name_the_variable(self) -> None:
        """An unknown option or a bad value that came from the environment is reported as that
        variable's, not as a mistake in the config file."""
        cases = [
            ("HEDDLE_REGISTRATON__ENABLED", "true", "registraton: unknown option"),
            ("HEDDLE_REGISTRATION__ENABLD", "true", "registration.enabld: unknown option"),
            (
                "HEDDLE_REGISTRATION__ENABLED",
                "maybe",
                "registration.enabled: Input should be a valid boolean (got 'maybe')",
            ),
            ("HEDDLE_RATE_LIMITS__MESSAGE_PER_USER", "5", "rate_limits.message_per_user: "),
            ("HEDDLE_SERVER_NAME", "not valid!", "server_name: is not a valid Matrix server name"),
            ("HEDDLE_DATA_DIR", "12", "data_dir: Input should be a valid string (got 12)"),
        ]
        for variable, value, expected in cases:
            with self.assertRaises(ConfigError) as cm:
                parse(minimal(), {variable: value})
            self.assertTrue(
                str(cm.exception).startswith(f"environment variable {variable}: {expected}"),
                str(cm.exception),
            )
        # Overrides elsewhere do not take the blame for the file's own mistakes.
        with self.assertRaises(ConfigError) as cm:
            parse(
                minimal(registration={"enabled": "sometimes"}),
                {"HEDDLE_REGISTRATION__REQUIRE_TOKEN": "true", "HEDDLE_LOG_LEVEL": "INFO"},
            )
        self.assertTrue(
            str(cm.exception).startswith("test.yaml: registration.enabled: "), str(cm.exception)
        )

    def test_process_environment_is_the_default(self) -> None:
        self.patch(os, "environ", {"HEDDLE_SERVER_NAME": "from-environ.example"})
        self.assertEqual(parse_config(minimal()).server_name, "from-environ.example")
        self.assertEqual(parse_config(minimal(), environ={}).server_name, "example.com")


class PathTests(unittest.TestCase):
    def write_config(self, relative: str, raw: dict[str, Any]) -> Path:
        path = Path(self.mktemp()).resolve() / relative
        path.parent.mkdir(parents=True)
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        return path

    def test_relative_data_dir_is_relative_to_the_config_file(self) -> None:
        path = self.write_config("etc/heddle/homeserver.yaml", minimal(data_dir="../../var/heddle"))
        config = load_config(str(path), environ={})
        expected = (path.parent / "../../var/heddle").resolve()
        self.assertEqual(Path(config.data_dir), expected)
        self.assertTrue(Path(config.data_dir).is_absolute())
        self.assertEqual(config.resolve_path("k.key"), expected / "k.key")

    def test_default_data_dir_is_the_config_directory(self) -> None:
        path = self.write_config("conf/homeserver.yaml", minimal())
        config = load_config(str(path), environ={})
        self.assertEqual(Path(config.data_dir), path.parent.resolve())
        self.assertEqual(
            config.database_url, f"sqlite:///{path.parent.resolve() / 'homeserver.db'}"
        )

    def test_relative_config_path_is_resolved_too(self) -> None:
        path = self.write_config("rel/homeserver.yaml", minimal(data_dir="data"))
        cwd = os.getcwd()
        os.chdir(path.parent.parent)
        self.addCleanup(os.chdir, cwd)
        config = load_config("rel/homeserver.yaml", environ={})
        self.assertEqual(Path(config.data_dir), (path.parent / "data").resolve())

    def test_absolute_data_dir_is_kept(self) -> None:
        absolute = str(Path(self.mktemp()).resolve())
        path = self.write_config("c/homeserver.yaml", minimal(data_dir=absolute))
        self.assertEqual(load_config(str(path), environ={}).data_dir, absolute)

    def test_resolve_path(self) -> None:
        config = parse(minimal(data_dir="/srv/heddle"))
        self.assertEqual(config.resolve_path("keys/a.key"), Path("/srv/heddle/keys/a.key"))
        self.assertEqual(config.resolve_path("/etc/heddle/a.key"), Path("/etc/heddle/a.key"))

    def test_database_url_resolution(self) -> None:
        def url(database_url: str) -> str:
            return parse(
                minimal(data_dir="/srv/heddle", database={"url": database_url})
            ).database_url

        self.assertEqual(url("sqlite:///homeserver.db"), "sqlite:////srv/heddle/homeserver.db")
        self.assertEqual(url("sqlite:///db/heddle.db"), "sqlite:////srv/heddle/db/heddle.db")
        self.assertEqual(url("sqlite:////var/lib/heddle.db"), "sqlite:////var/lib/heddle.db")
        self.assertEqual(url("sqlite:///:memory:"), "sqlite:///:memory:")
        self.assertEqual(url("postgresql://u@h:5432/d"), "postgresql://u@h:5432/d")
        self.assertEqual(url("postgres://u@h/d"), "postgres://u@h/d")

    def test_load_errors_are_one_line(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        cases: list[tuple[str, str]] = []
        missing = directory / "missing.yaml"
        cases.append(
            (str(missing), f"cannot read config file {missing}: No such file or directory")
        )
        cases.append((str(directory), f"cannot read config file {directory}"))
        bad_yaml = directory / "bad.yaml"
        bad_yaml.write_text(
            "server_name: example.com\nlisteners: [\n  - port: 1\n", encoding="utf-8"
        )
        cases.append((str(bad_yaml), f"{bad_yaml}: not valid YAML at line"))
        tabs = directory / "tabs.yaml"
        tabs.write_text("server_name: a\n\tport: 1\n", encoding="utf-8")
        cases.append((str(tabs), f"{tabs}: not valid YAML"))
        unknown = directory / "unknown.yaml"
        unknown.write_text(yaml.safe_dump(minimal(prot=1)), encoding="utf-8")
        cases.append((str(unknown), f"{unknown}: prot: unknown option"))
        empty = directory / "empty.yaml"
        empty.write_text("", encoding="utf-8")
        cases.append((str(empty), f"{empty}: "))
        for path, expected in cases:
            with self.assertRaises(ConfigError) as cm:
                load_config(path, environ={})
            self.assertIn(expected, str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))

    def test_load_config_applies_environment(self) -> None:
        path = self.write_config("e/homeserver.yaml", minimal())
        config = load_config(str(path), environ={"HEDDLE_DATABASE_URL": "postgresql://x@y/z"})
        self.assertEqual(config.database_url, "postgresql://x@y/z")


class ClientBaseUrlTests(unittest.TestCase):
    def url(self, **extra: Any) -> str:
        return parse(minimal(**extra)).client_base_url

    def test_public_baseurl_wins_and_ends_with_one_slash(self) -> None:
        self.assertEqual(
            self.url(public_baseurl="https://matrix.example.com"), "https://matrix.example.com/"
        )
        self.assertEqual(
            self.url(public_baseurl="https://matrix.example.com/"), "https://matrix.example.com/"
        )
        self.assertEqual(
            self.url(public_baseurl="https://example.com/matrix//"), "https://example.com/matrix/"
        )

    def test_derived_from_the_client_listener(self) -> None:
        self.assertEqual(self.url(), "http://127.0.0.1:8008/")
        self.assertEqual(
            self.url(listeners=[{"bind_address": "0.0.0.0", "port": 80}]), "http://localhost:80/"
        )
        self.assertEqual(
            self.url(listeners=[{"bind_address": "::", "port": 8008}]), "http://localhost:8008/"
        )
        self.assertEqual(
            self.url(listeners=[{"bind_address": "::1", "port": 8008}]), "http://[::1]:8008/"
        )
        self.assertEqual(
            self.url(listeners=[{"port": 8448, "tls": True}]), "https://127.0.0.1:8448/"
        )
        self.assertEqual(
            self.url(
                listeners=[
                    {"type": "metrics", "port": 9000},
                    {"bind_address": "10.1.2.3", "port": 81},
                ]
            ),
            "http://10.1.2.3:81/",
        )

    def test_without_a_client_listener(self) -> None:
        self.assertEqual(
            self.url(listeners=[{"type": "metrics", "port": 9000}]), "https://example.com/"
        )
        self.assertEqual(self.url(listeners=[]), "https://example.com/")


class GenerateConfigTextTests(unittest.TestCase):
    def generate(
        self, server_name: str = "localhost", port: int = 8008
    ) -> tuple[HomeserverConfig, dict[str, Any]]:
        data_dir = Path(self.mktemp())
        text = generate_config_text(server_name, str(data_dir), port)
        raw = yaml.safe_load(text)
        config = parse(yaml.safe_load(text))
        self.assertEqual(Path(config.data_dir), data_dir.resolve())
        return config, raw

    def test_generated_config_is_valid_and_complete(self) -> None:
        config, raw = self.generate("localhost", 8008)
        self.assertEqual(config.server_name, "localhost")
        self.assertEqual(config.signing_key_path, "localhost.signing.key")
        self.assertEqual(
            [(lst.type, lst.bind_address, lst.port) for lst in config.listeners],
            [("client", "127.0.0.1", 8008), ("metrics", "127.0.0.1", 9008)],
        )
        self.assertEqual(config.database.url, "sqlite:///homeserver.db")
        self.assertEqual(
            config.database_url, f"sqlite:///{Path(config.data_dir) / 'homeserver.db'}"
        )
        self.assertIs(config.registration.enabled, True)
        self.assertGreaterEqual(len(config.auth.jwt_secret), 32)
        self.assertGreaterEqual(len(config.registration.shared_secret or ""), 32)
        self.assertEqual(config.client_base_url, "http://127.0.0.1:8008/")
        # Every option written is one the schema knows (parse() forbids unknown ones), and the
        # secrets are plain strings.
        self.assertIsInstance(raw["auth"]["jwt_secret"], str)
        self.assertIsInstance(raw["registration"]["shared_secret"], str)

    def test_secrets_are_fresh_each_time(self) -> None:
        first, _ = self.generate()
        second, _ = self.generate()
        self.assertNotEqual(first.auth.jwt_secret, second.auth.jwt_secret)
        self.assertNotEqual(first.registration.shared_secret, second.registration.shared_secret)

    def test_port(self) -> None:
        config, _ = self.generate(port=18123)
        self.assertEqual([lst.port for lst in config.listeners], [18123, 19123])
        # Near the top of the range the metrics port must still be a port.
        config, _ = self.generate(port=65000)
        ports = [lst.port for lst in config.listeners]
        self.assertEqual(ports[0], 65000)
        self.assertTrue(0 < ports[1] <= 65535 and ports[1] != 65000, ports)
        for port in (-1, 65536):
            with self.assertRaises(ConfigError) as cm:
                generate_config_text("localhost", self.mktemp(), port)
            self.assertIn("--port", str(cm.exception))

    def test_server_names_needing_yaml_quoting(self) -> None:
        for name, key_file in (
            ("example.com:8448", "example.com_8448.signing.key"),
            ("true", "true.signing.key"),
            ("null", "null.signing.key"),
            ("1234", "1234.signing.key"),
            ("[::1]", "[__1].signing.key"),
            ("[2001:db8::1]:8448", "[2001_db8__1]_8448.signing.key"),
        ):
            config, raw = self.generate(name)
            self.assertEqual(config.server_name, name)
            self.assertEqual(raw["server_name"], name)
            self.assertEqual(config.signing_key_path, key_file)

    def test_data_dir_needing_quoting(self) -> None:
        data_dir = Path(self.mktemp()) / "it's: #here"
        config = parse(yaml.safe_load(generate_config_text("localhost", str(data_dir))))
        self.assertEqual(Path(config.data_dir), data_dir.resolve())

    def test_invalid_server_name_is_refused(self) -> None:
        for name in ("bad name", "", "example.com:99999"):
            with self.assertRaises(ConfigError) as cm:
                generate_config_text(name, self.mktemp())
            self.assertIn("--server-name", str(cm.exception))
            self.assertIn("not a valid Matrix server name", str(cm.exception))


class SigningKeyTests(unittest.TestCase):
    def key_path(self) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        return directory / "keys" / "server.signing.key"

    def test_written_key_is_ed25519_in_signedjson_format(self) -> None:
        path = self.key_path()
        write_new_signing_key(path)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        text = path.read_text(encoding="ascii")
        self.assertTrue(text.endswith("\n"))
        algorithm, version, seed = text.split()
        self.assertEqual((algorithm, version), ("ed25519", "a_1"))
        key = decode_signing_key_base64(algorithm, version, seed)
        self.assertEqual((key.alg, key.version), ("ed25519", "a_1"))
        self.assertNotIn("=", seed, "signedjson keys are unpadded base64")

        loaded = load_signing_key(path)
        self.assertEqual(get_verify_key(loaded).encode(), get_verify_key(key).encode())
        self.assertEqual(loaded.version, "a_1")

    def test_each_key_is_new(self) -> None:
        first, second = self.key_path(), self.key_path()
        write_new_signing_key(first)
        write_new_signing_key(second, version="b_2")
        self.assertNotEqual(first.read_text().split()[2], second.read_text().split()[2])
        self.assertEqual(load_signing_key(second).version, "b_2")

    def test_bad_key_files(self) -> None:
        path = self.key_path()
        path.parent.mkdir(parents=True)
        cases = [
            (b"garbage\n", "is not in the 'ed25519 <version> <key>' format"),
            (b"", "is not in the 'ed25519 <version> <key>' format"),
            (b"curve25519 a_1 AAAA\n", "is not in the 'ed25519 <version> <key>' format"),
            (b"ed25519 a_1\n", "is not in the 'ed25519 <version> <key>' format"),
            (b"ed25519 a_1 AAAA extra\n", "is not in the 'ed25519 <version> <key>' format"),
            (b"ed25519 a_1 !!!!\n", "does not hold a valid ed25519 key"),
            (b"ed25519 a_1 AAAA\n", "does not hold a valid ed25519 key"),
            (b"\xff\xfe\x00binary", "is not in the 'ed25519 <version> <key>' format"),
        ]
        for content, expected in cases:
            path.write_bytes(content)
            with self.assertRaises(ConfigError) as cm:
                load_signing_key(path)
            self.assertIn(str(path), str(cm.exception))
            self.assertIn(expected, str(cm.exception), content)
            self.assertNotIn("\n", str(cm.exception))

    def test_unreadable_key_files(self) -> None:
        path = self.key_path()
        with self.assertRaises(ConfigError) as cm:
            load_signing_key(path)
        self.assertIn(
            f"cannot read signing key {path}: No such file or directory", str(cm.exception)
        )
        path.mkdir(parents=True)
        with self.assertRaises(ConfigError) as cm:
            load_signing_key(path)
        self.assertIn(f"cannot read signing key {path}: Is a directory", str(cm.exception))
