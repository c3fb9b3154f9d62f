from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from storage.engines.base import JSON_PATH_KEY, Engine, WriterLock

WAL_SWITCH_TIMEOUT_SECONDS = 10.0


FOLD_CASE_FUNCTION = "heddle_fold_case"


def _fold_case(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class SqliteWriterLock(WriterLock):
    """An exclusive `flock` on `<database>.lock`, held through an open file descriptor. The
    kernel lets go when the descriptor is closed, including when the process dies, so a
    crash never leaves a stale lock. The file itself stays: deleting it would let a process
    lock a new file while another still holds the old one."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def is_held(self) -> bool:
        if self._fd is None:
            return False
        # Someone deleting or replacing the lock file would let another process lock the
        # new one: the lock only counts while the path still names the file we locked.
        try:
            on_disk, ours = os.stat(self.path), os.fstat(self._fd)
        except OSError:
            return False
        return (on_disk.st_dev, on_disk.st_ino) == (ours.st_dev, ours.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class MemoryWriterLock(WriterLock):
    """An in-memory database is private to its one connection: nothing to share, no lock."""

    def is_held(self) -> bool:
        return True

    def release(self) -> None:
        pass


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

    def try_writer_lock(self) -> WriterLock | None:
        if self.path == ":memory:":
            return MemoryWriterLock()
        lock_path = self.path + ".lock"
        Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # flock (not fcntl's record locks, which are per process): two opens of the file
            # conflict even within one process, as two servers in one test run do.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return SqliteWriterLock(lock_path, fd)

    def on_new_connection(self, conn: Any) -> None:
        conn.execute("PRAGMA busy_timeout=10000")
        self._use_write_ahead_log(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # SQLite's own LOWER() folds ASCII only.
        conn.create_function(FOLD_CASE_FUNCTION, 1, _fold_case, deterministic=True)

    @staticmethod
    def _use_write_ahead_log(conn: Any) -> None:
        """Switch the file to WAL, which persists in the file, once.

        The switch needs the database to itself, and SQLite reports "database is locked" at
        once, without waiting out busy_timeout, while another connection is creating the
        schema; so the switch is retried here instead (connections open on pool threads).
        """
        deadline = time.monotonic() + WAL_SWITCH_TIMEOUT_SECONDS
        delay = 0.005
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
                if str(mode).lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

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

    def fold_case(self, expr: str) -> str:
        return f"{FOLD_CASE_FUNCTION}({expr})"

    def describe(self) -> str:
        return f"sqlite ({self.path})"

    def location(self) -> str:
        return self.path
