from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from storage.engines.base import JSON_PATH_KEY, Engine

_PLACEHOLDER = re.compile(r"\?")
EXECUTE_BATCH_PAGE_SIZE = 500


class PostgresEngine(Engine):
    name = "postgresql"
    integrity_error = psycopg2.IntegrityError
    retryable_errors = (
        psycopg2.errors.SerializationFailure,
        psycopg2.errors.DeadlockDetected,
    )

    def __init__(self, url: str, max_connections: int = 10) -> None:
        self.url = url
        self.max_connections = max_connections

    def connect(self) -> Any:
        conn = psycopg2.connect(self.url)
        self.on_new_connection(conn)
        return conn

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

    def is_connection_lost(self, exc: BaseException) -> bool:
        # An OperationalError without a SQLSTATE comes from the connection, not the query.
        return isinstance(exc, psycopg2.InterfaceError) or (
            isinstance(exc, psycopg2.OperationalError) and exc.pgcode is None
        )

    def describe(self) -> str:
        parts = urlsplit(self.url)
        return f"postgresql ({parts.hostname}:{parts.port or 5432}{parts.path})"
