"""Test harness: real servers on loopback, on SQLite and PostgreSQL, driven over real HTTP.

- `on_both_engines` turns a test mixin into one TestCase per engine.
- `HomeserverTestCase` starts a full `HomeServer` (listeners on random loopback ports) per test.
- `request()` speaks raw HTTP for the bad-input tests; `nio()` runs matrix-nio coroutines.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from homeserver.app import HomeServer
from homeserver.config import HomeserverConfig, parse_config
from homeserver.signing_key import write_new_signing_key

T = TypeVar("T")

SERVER_NAME = "test.heddle"
# The password `HomeserverTestCase.register` and `login` use by default.
PASSWORD = "correct horse battery"
# Where the suite finds PostgreSQL; every run creates (and drops) its own database there.
POSTGRES_ADMIN_URL = os.environ.get(
    "HEDDLE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ENGINES = ("sqlite", "postgresql")

_pg_database_urls: dict[int, str] = {}


def postgres_database_url(slot: int = 0) -> str:
    """A database for this test process, created on first use and dropped at exit. Tests
    running several servers (federation) give each its own `slot`."""
    if slot not in _pg_database_urls:
        name = f"heddle_test_{os.getpid()}_{uuid.uuid4().hex[:8]}s{slot}"
        admin = psycopg2.connect(POSTGRES_ADMIN_URL)
        admin.autocommit = True
        with admin.cursor() as cur:
            _drop_abandoned_databases(cur)
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        _pg_database_urls[slot] = f"{base}/{name}"
        atexit.register(_drop_database, name)
    return _pg_database_urls[slot]


def _drop_abandoned_databases(cur: Any) -> None:
    """Drop test databases whose run was killed before its atexit hook (its PID is gone)."""
    cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'heddle_test_%'")
    for (name,) in cur.fetchall():
        parts = name.split("_")
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except PermissionError:
            pass  # alive, owned by someone else


def _drop_database(name: str) -> None:
    try:
        admin = psycopg2.connect(POSTGRES_ADMIN_URL)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    except Exception as e:  # the run is over; a leftover database is not worth a traceback
        print(f"could not drop test database {name}: {e}", file=sys.stderr)


def reset_postgres_database(url: str) -> None:
    """Empty every table (keeping the schema) so each test starts from nothing."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'schema_migrations'"
            )
            tables = [row[0] for row in cur.fetchall()]
            if tables:
                cur.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
        conn.commit()
    finally:
        conn.close()


def database_url_for(engine: str, data_dir: Path, slot: int = 0) -> str:
    if engine == "sqlite":
        return f"sqlite:///{data_dir / 'homeserver.db'}"
    url = postgres_database_url(slot)
    reset_postgres_database(url)
    return url


def isolate_from_dns(hs: HomeServer) -> None:
    """Tests never reach the network: SRV lookups find nothing, .well-known fetches and
    host name lookups fail at once (IP literals, as test servers use, still work)."""

    async def no_srv(name: str) -> list[Any]:
        return []

    async def no_well_known(host: str) -> Any:
        raise ConnectionRefusedError(f"tests do not fetch https://{host}/.well-known")

    async def no_host_lookup(host: str) -> list[str]:
        raise ConnectionRefusedError(f"tests do not resolve {host}")

    hs.server_resolver._lookup_srv = no_srv  # type: ignore[attr-defined]
    hs.server_resolver._fetch_well_known = no_well_known  # type: ignore[attr-defined]
    hs.federation_connector._resolve_host = no_host_lookup  # type: ignore[attr-defined]


def make_config(
    engine: str, data_dir: Path, slot: int = 0, keep_database: bool = False, **overrides: Any
) -> HomeserverConfig:
    """A config for a test server: random loopback ports, fast bcrypt, no rate limits."""
    key_path = data_dir / "signing.key"
    if not key_path.exists():
        write_new_signing_key(key_path)
    raw: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "data_dir": str(data_dir),
        "signing_key_path": str(key_path),
        "listeners": [
            {"type": "client", "bind_address": "127.0.0.1", "port": 0},
            {"type": "metrics", "bind_address": "127.0.0.1", "port": 0},
        ],
        "database": {
            "url": postgres_database_url(slot)
            if keep_database and engine == "postgresql"
            else database_url_for(engine, data_dir, slot)
        },
        "registration": {"enabled": True, "shared_secret": "test-shared-secret"},
        "auth": {"jwt_secret": "test-jwt-secret-" + "x" * 32, "bcrypt_rounds": 4},
        "rate_limits": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_config(raw, source="test config", environ={})


@contextlib.contextmanager
def transactions_recorded(hs: HomeServer) -> Iterator[list[str]]:
    """The names of the database transactions `hs` runs meanwhile, in order."""
    calls: list[str] = []
    original = hs.db.run_interaction

    async def counting(desc: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(desc)
        return await original(desc, *args, **kwargs)

    hs.db.run_interaction = counting  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        hs.db.run_interaction = original  # type: ignore[method-assign]


def on_both_engines(mixin: type) -> type:
    """Make `mixin` (tests + HomeserverTestCase behaviour) run once per database engine.

    Returns the SQLite case and plants the PostgreSQL twin in the mixin's module, so trial
    collects both: `FooTests_sqlite` and `FooTests_postgresql`.
    """
    module = sys.modules[mixin.__module__]
    created = []
    for engine in ENGINES:
        name = f"{mixin.__name__}_{engine}"
        case = type(name, (mixin, unittest.TestCase), {"engine": engine, "__module__": mixin.__module__})
        setattr(module, name, case)
        created.append(case)
    return mixin


def BytesProducer(body: bytes) -> FileBodyProducer:
    """A request body for twisted's Agent."""
    return FileBodyProducer(io.BytesIO(body))


class Response:
    def __init__(self, code: int, headers: Headers, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.body[:300]!r}>"


class HomeserverTestCase:
    """Mixin: a running homeserver per test. Use with `on_both_engines`."""

    engine = "sqlite"
    # Per-test config overrides, e.g. {"registration": {"enabled": False}}.
    config_overrides: dict[str, Any] = {}

    hs: HomeServer
    base_url: str
    metrics_url: str

    def make_data_dir(self, prefix: str = "heddle-test-") -> Path:
        """A new directory for a server's data (database, keys, media), removed when the test
        ends. Cleanups run last-in first-out, so servers using it, whose cleanups are added
        later, have stopped by then."""
        data_dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.addCleanup(shutil.rmtree, data_dir, ignore_errors=True)  # type: ignore[attr-defined]
        return data_dir

    async def start_server(self, **overrides: Any) -> HomeServer:
        previous: HomeServer | None = getattr(self, "hs", None)
        if previous is not None:
            # Starting again (with other settings) replaces this test's server: one writing
            # process per database, so the first lets go of it.
            await previous.stop()
        data_dir = self.make_data_dir()
        return await self._run_server(
            make_config(self.engine, data_dir, **{**self.config_overrides, **overrides})
        )

    async def restart_server(
        self, prepare: Callable[[HomeServer], None] | None = None
    ) -> HomeServer:
        """Stop this test's server and start another on the same database and data
        directory; `prepare` is called with it between its set-up and its listening."""
        data_dir = Path(self.hs.config.data_dir)
        await self.hs.stop()
        config = make_config(self.engine, data_dir, keep_database=True, **self.config_overrides)
        return await self._run_server(config, prepare)

    async def _run_server(
        self, config: HomeserverConfig, prepare: Callable[[HomeServer], None] | None = None
    ) -> HomeServer:
        hs = HomeServer(config, reactor)
        isolate_from_dns(hs)
        # Stopped even if start-up fails half-way: stopping closes the database and lets go of
        # its writer lock, which the next test's server on the same database needs.
        self.addCleanup(lambda: defer.ensureDeferred(hs.stop()))  # type: ignore[attr-defined]
        await hs.setup()
        if prepare is not None:
            prepare(hs)
        hs.start_listening()
        client_port, metrics_port = (p.getHost().port for p in hs.ports)
        self.hs = hs
        self.base_url = f"http://127.0.0.1:{client_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"
        return hs

    def setUp(self) -> defer.Deferred[HomeServer]:
        return defer.ensureDeferred(self.start_server())

    # ----- raw HTTP ------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        base_url: str | None = None,
    ) -> Response:
        all_headers = Headers({b"User-Agent": [b"heddle-tests"]})
        if token is not None:
            all_headers.setRawHeaders(b"Authorization", [f"Bearer {token}".encode()])
        for name, value in (headers or {}).items():
            all_headers.setRawHeaders(name.encode(), [value.encode()])
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        producer = BytesProducer(payload) if payload is not None else None
        if payload is not None and not all_headers.hasHeader(b"Content-Type"):
            all_headers.setRawHeaders(b"Content-Type", [b"application/json"])
        agent = Agent(reactor)
        url = (base_url or self.base_url) + path
        response = await agent.request(method.encode(), url.encode(), all_headers, producer)
        data = await readBody(response)
        return Response(response.code, response.headers, data)

    async def register(
        self, username: str, password: str = PASSWORD, **extra: Any
    ) -> dict[str, Any]:
        body = {"username": username, "password": password, "auth": {"type": "m.login.dummy"}}
        body.update(extra)
        response = await self.request("POST", "/_matrix/client/v3/register", body)
        assert response.code == 200, response
        return response.json

    async def login(
        self, username: str, password: str = PASSWORD, **extra: Any
    ) -> dict[str, Any]:
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": username},
            "password": password,
        }
        body.update(extra)
        response = await self.request("POST", "/_matrix/client/v3/login", body)
        assert response.code == 200, response
        return response.json

    def assertError(self, response: Response, code: int, errcode: str) -> dict[str, Any]:
        assert response.code == code, f"expected {code} {errcode}, got {response!r}"
        body = response.json
        assert body.get("errcode") == errcode, f"expected {errcode}, got {body!r}"
        assert isinstance(body.get("error"), str)
        return body


def password_auth(
    user: str = "alice", password: str = PASSWORD, session: str | None = None
) -> dict[str, Any]:
    """A user-interactive auth `m.login.password` stage for `user`."""
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }
    if session is not None:
        auth["session"] = session
    return auth


# ----- matrix-nio ------------------------------------------------------------------------


def nio(coro: Coroutine[Any, Any, T]) -> defer.Deferred[T]:
    """Await a matrix-nio (asyncio) coroutine from a trial test on the asyncio reactor."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro))


def ensure_deferred(f: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Decorator for `async def` tests, so trial waits for them."""

    def wrapper(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(f(*args, **kwargs))

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper
