from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

# Keys a JSON path in `json_text` may use: plain names, as event fields are.
JSON_PATH_KEY = re.compile(r"^[A-Za-z0-9_.]+$")


class Engine(ABC):
    """The differences between database engines, as data and small functions.

    SQL in stores is written once with `?` placeholders; engines translate what they must.
    """

    name: str
    # Exceptions worth retrying the whole transaction for (serialization failures, deadlocks,
    # "database is locked").
    retryable_errors: tuple[type[BaseException], ...] = ()
    integrity_error: type[BaseException]
    # Sent before a transaction's first statement, for engines whose driver does not open
    # transactions itself (None: the driver does).
    begin_statement: str | None = None
    # Upper bound for the connection pool; SQLite is single-writer, so it gets one connection.
    max_connections: int = 1

    @abstractmethod
    def connect(self) -> Any:
        """Open a DB-API connection ready for use (called on a pool thread)."""

    @abstractmethod
    def convert_sql(self, sql: str) -> str:
        """Turn portable SQL (`?` placeholders) into this engine's dialect."""

    def json_text(self, column: str, *path: str) -> str:
        """SQL for the value at `path` (object keys) in the JSON text held in `column`, as
        text; NULL where the path is absent. `column` and `path` are trusted SQL, never input.
        """
        raise NotImplementedError

    def execute_many(self, cursor: Any, sql: str, rows: list[Sequence[Any]]) -> None:
        """Run `sql` (already converted) once per row."""
        cursor.executemany(sql, rows)

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retryable_errors)

    def is_connection_lost(self, exc: BaseException) -> bool:
        return False

    def describe(self) -> str:
        return self.name
