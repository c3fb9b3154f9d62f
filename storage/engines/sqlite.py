from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from storage.engines.base import JSON_PATH_KEY, Engine


class SqliteEngine(Engine):
    name = "sqlite"
    integrity_error = sqlite3.IntegrityError
    max_connections = 1
    # Python's sqlite3 would only open a transaction at the first write, so reads before it
    # would see other processes' commits mid-transaction; the connection runs in autocommit
    # mode and every transaction starts with an explicit BEGIN instead.
    begin_statement = "BEGIN"

    def __init__(self, url: str) -> None:
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("sqlite://"):]
        self.path = path or ":memory:"

    def connect(self) -> Any:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # One connection used from the pool's single thread, but not always the same thread.
        conn = sqlite3.connect(
            self.path, check_same_thread=False, timeout=10.0, isolation_level=None
        )
        self.on_new_connection(conn)
        return conn

    def on_new_connection(self, conn: Any) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")

    def is_retryable(self, exc: BaseException) -> bool:
        # Another process (e.g. `heddle register-user` next to a running server) holding the
        # write lock past busy_timeout surfaces as "database is locked": worth a retry.
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)

    def convert_sql(self, sql: str) -> str:
        return sql

    def json_text(self, column: str, *path: str) -> str:
        assert all(JSON_PATH_KEY.fullmatch(key) for key in path), path
        json_path = "$" + "".join(f'."{key}"' for key in path)
        # Documents with an escaped NUL read as NULL, as they must on PostgreSQL.
        return (
            f"(CASE WHEN instr({column}, '\\u0000') > 0 THEN NULL"
            f" ELSE json_extract({column}, '{json_path}') END)"
        )

    def describe(self) -> str:
        return f"sqlite ({self.path})"
