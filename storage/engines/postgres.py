from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from storage.engines.base import JSON_PATH_KEY, Engine, WriterLock

logger = logging.getLogger(__name__)
_PLACEHOLDER = re.compile(r"\?")
EXECUTE_BATCH_PAGE_SIZE = 500
# The advisory lock a writing process holds for its whole life: a fixed 64-bit key, taken
# from a hash of a name so it stays clear of small numbers (the migration lock's, other
# software's). Advisory locks are per database, so one server can host many Heddles.
WRITER_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"heddle: the one writing process").digest()[:8], "big", signed=True
)
# The lock's connection is idle between checks: TCP keepalives (and a limit on unacknowledged
# data, for a check sent into a dead network) make a vanished server or network show up as
# an error within about half a minute instead of the kernel's many minutes.
_LOCK_CONNECTION_OPTIONS = {
    "application_name": "heddle writer lock",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


class PostgresWriterLock(WriterLock):
    """A session-level advisory lock, held by a connection of its own (autocommit, so it
    never sits in an open transaction). PostgreSQL drops the lock when that session ends,
    whether the process exits, the connection breaks or the server restarts; the connection
    is never reopened, since another process may have taken the lock in between."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def is_held(self) -> bool:
        # A session-level advisory lock lasts as long as its session: a working round trip on
        # the connection that took it is proof enough.
        try:
            with self._conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except psycopg2.Error:
            return False

    def release(self) -> None:
        # Unlocked explicitly first: closing alone ends the session only when the server's
        # backend gets round to it, and a server started right after (a restart) could
        # still find the lock taken.
        self.unlock()
        try:
            self._conn.close()
        except psycopg2.Error:
            pass

    def unlock(self) -> None:
        """Give the lock up on the server, before the connection closes."""
        try:
            with self._conn.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (WRITER_LOCK_KEY,))
        except psycopg2.Error:
            pass


class PostgresEngine(Engine):
    name = "postgresql"
    integrity_error = psycopg2.IntegrityError
    retryable_errors = (
        psycopg2.errors.SerializationFailure,
        psycopg2.errors.DeadlockDetected,
    )

    # The second of two transactions locking the same rows waits for the first, then gets
    # a serialization failure if the first changed them, and is retried on what it wrote.
    for_update = " FOR UPDATE"

    def __init__(self, url: str, max_connections: int = 10) -> None:
        self.url = url
        self.max_connections = max_connections
        # Whether the server has ICU's root collation; found out on the first connection
        # (made at start-up, before any query is built).
        self._has_icu: bool | None = None

    def connect(self) -> Any:
        conn = psycopg2.connect(self.url)
        if self._has_icu is None:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'")
                self._has_icu = cursor.fetchone() is not None
            conn.rollback()
            if not self._has_icu:
                logger.warning(
                    "PostgreSQL has no ICU collation: case-insensitive searches fold"
                    " only what the database's LC_CTYPE folds (ASCII alone under C)"
                )
        self.on_new_connection(conn)
        return conn

    def try_writer_lock(self) -> PostgresWriterLock | None:
        conn = psycopg2.connect(self.url, **_LOCK_CONNECTION_OPTIONS)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK_KEY,))
                row = cursor.fetchone()
        except BaseException:
            conn.close()
            raise
        if row is None or not row[0]:
            conn.close()
            return None
        return PostgresWriterLock(conn)

    def on_new_connection(self, conn: Any) -> None:
        # REPEATABLE READ: a transaction sees one snapshot; conflicting writers get a
        # serialization failure, which the database layer retries.
        conn.set_session(
            isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, autocommit=False
        )

    def convert_sql(self, sql: str) -> str:
        # psycopg2 treats % as the start of a placeholder: escape literal ones first.
        return _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))

    def execute_many(self, cursor: Any, sql: str, rows: list[Sequence[Any]]) -> None:
        # psycopg2's executemany makes one round trip per row; batches of statements make
        # storing a big room's state (tens of thousands of rows) take one round trip per page.
        psycopg2.extras.execute_batch(cursor, sql, rows, page_size=EXECUTE_BATCH_PAGE_SIZE)

    def json_text(self, column: str, *path: str) -> str:
        assert all(JSON_PATH_KEY.fullmatch(key) for key in path), path
        pg_path = "{" + ",".join(f'"{key}"' for key in path) + "}"
        # PostgreSQL's JSON types refuse to turn an escaped NUL (\u0000) anywhere in a
        # document into text, failing the whole query; such documents (legal JSON, and so
        # legal event content) read as NULL instead, on every engine.
        return (
            f"(CASE WHEN strpos({column}, '\\u0000') > 0 THEN NULL"
            f" ELSE ({column})::json #>> '{pg_path}' END)"
        )

    def fold_case(self, expr: str) -> str:
        # The ICU root collation: Unicode's mapping whatever the database's LC_CTYPE (with
        # the C locale Heddle's set-up recommends, plain LOWER() folds ASCII only). A
        # PostgreSQL built without ICU has no such collation: plain LOWER() there.
        if self._has_icu is False:
            return f"LOWER({expr})"
        return f'LOWER(({expr}) COLLATE "und-x-icu")'

    def is_connection_lost(self, exc: BaseException) -> bool:
        # An OperationalError without a SQLSTATE comes from the connection, not the query.
        return isinstance(exc, psycopg2.InterfaceError) or (
            isinstance(exc, psycopg2.OperationalError) and exc.pgcode is None
        )

    def describe(self) -> str:
        parts = urlsplit(self.url)
        return f"postgresql ({parts.hostname}:{parts.port or 5432}{parts.path})"

    def location(self) -> str:
        parts = urlsplit(self.url)
        user_info, _, host_port = parts.netloc.rpartition("@")
        user = user_info.split(":", 1)[0]
        return f"{parts.scheme}://{user + '@' if user else ''}{host_port}{parts.path}"
