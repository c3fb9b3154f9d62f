from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

# Keys a JSON path in `json_text` may use: plain names, as event fields are.
JSON_PATH_KEY = re.compile(r"^[A-Za-z0-9_.]+$")


class WriterLock(ABC):
    """This process's claim to be the only one writing to a database.

    Stream positions and state-group IDs are handed out by per-process allocators, so two
    processes writing to one database would hand out the same ones. The lock is taken at
    start-up and held until `release()` or the end of the process. Both methods block (they
    may talk to the database): call them off the reactor thread.
    """

    @abstractmethod
    def is_held(self) -> bool:
        """Whether the lock is still ours (False once it has been lost, e.g. with the
        connection that held it)."""

    @abstractmethod
    def release(self) -> None:
        """Let the lock go; another process may take it from then on."""


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
    # Appended to a SELECT whose rows a transaction is about to decide on and change, so
    # that two such transactions cannot both act on the same snapshot (PostgreSQL's
    # REPEATABLE READ would let each commit: write skew). Empty where transactions already
    # run one at a time (SQLite: one connection, one writing process).
    for_update: str = ""

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

    def fold_case(self, expr: str) -> str:
        """SQL for `expr` lower-cased by Unicode's full mapping, as Python's `str.lower`
        does, whatever the database's locale: text searched case-insensitively is folded
        with this on every engine, and the search term with `str.lower`, so both engines
        find the same rows. `expr` is trusted SQL, never input."""
        raise NotImplementedError

    def execute_many(self, cursor: Any, sql: str, rows: list[Sequence[Any]]) -> None:
        """Run `sql` (already converted) once per row."""
        cursor.executemany(sql, rows)

    @abstractmethod
    def try_writer_lock(self) -> WriterLock | None:
        """Take this database's writer lock without waiting; None when another process (or
        another `Database` in this one) holds it. Blocks: call off the reactor thread."""

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retryable_errors)

    def is_connection_lost(self, exc: BaseException) -> bool:
        return False

    def describe(self) -> str:
        return self.name

    @abstractmethod
    def location(self) -> str:
        """Where the database is, for messages to operators: a SQLite file's path, or a
        PostgreSQL URL without its password and query string."""
