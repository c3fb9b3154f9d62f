"""Run transactions on a thread pool, off the reactor thread, with retries.

Stores call `await db.run_interaction("desc", func, ...)`; `func(txn, ...)` runs on a pool
thread inside one transaction. It is retried as a whole when the engine reports a
serialization failure or deadlock, so it must not have side effects outside the database;
work that should only happen once the data is committed goes in `txn.call_after(...)`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from twisted.internet import threads
from twisted.python.threadpool import ThreadPool

from homeserver import metrics
from storage.engines import Engine, WriterLock

logger = logging.getLogger(__name__)

R = TypeVar("R")

MAX_ATTEMPTS = 5
# Values per query when a list becomes `IN (?, ?, ...)` placeholders: under SQLite's limit
# on bound variables (999 in old builds), with room for the query's other arguments.
IN_CHUNK_SIZE = 500
# Where `Transaction.select_in_chunks` puts the placeholders in its SQL.
IN_LIST = "{in}"


class WriterLockLostError(Exception):
    """This process no longer holds the database's writer lock (see `Database.take_writer_lock`),
    so another may be writing with the same stream positions: no transaction runs any more."""


class InvalidTextError(ValueError):
    """A string parameter containing NUL, which PostgreSQL cannot store in TEXT. Refused on
    every engine so SQLite and PostgreSQL agree; the HTTP layer answers 400 M_INVALID_PARAM."""


def _checked_args(args: Sequence[Any]) -> tuple[Any, ...]:
    args = tuple(args)
    for arg in args:
        if isinstance(arg, str) and "\x00" in arg:
            raise InvalidTextError("Text may not contain NUL characters")
    return args


class Transaction:
    """A thin cursor wrapper: portable SQL in, rows out, after-commit callbacks collected."""

    def __init__(self, cursor: Any, engine: Engine) -> None:
        self._cursor = cursor
        self.engine = engine
        self.after_callbacks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._begun = engine.begin_statement is None
        # Statements sent to the database (a BEGIN and each batch of rows count; the commit
        # does not): what a transaction costs in round trips, for the metrics.
        self.statements = 0

    def _begin(self, sql: str) -> None:
        # Engines that need an explicit BEGIN get it before the first statement, unless that
        # statement is itself a BEGIN (SQLite's BEGIN IMMEDIATE, to take the write lock).
        if not self._begun:
            self._begun = True
            if not sql.lstrip().upper().startswith("BEGIN"):
                assert self.engine.begin_statement is not None
                self.statements += 1
                self._cursor.execute(self.engine.begin_statement)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._begin(sql)
        self.statements += 1
        self._cursor.execute(self.engine.convert_sql(sql), _checked_args(args))

    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        checked: list[Sequence[Any]] = [_checked_args(r) for r in rows]
        if not checked:
            return
        self._begin(sql)
        self.statements += 1
        self.engine.execute_many(self._cursor, self.engine.convert_sql(sql), checked)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cursor.fetchall()

    def select_one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self.execute(sql, args)
        return self.fetchone()

    def select_all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.execute(sql, args)
        return self.fetchall()

    def select_in_chunks(
        self,
        sql: str,
        values: Iterable[Any],
        args_before: Sequence[Any] = (),
        args_after: Sequence[Any] = (),
        chunk_size: int = IN_CHUNK_SIZE,
    ) -> list[tuple[Any, ...]]:
        """The rows of `sql` for every one of `values`, which may be too many to bind at once.

        `sql` holds `{in}` once, where the comma-separated placeholders of a chunk of
        `values` go (write `IN ({in})`; `IN ({{in}})` inside an f-string). It runs once per
        chunk of at most `chunk_size` values with `args_before`, the chunk, then `args_after`
        as its arguments; the rows of every run are returned together, in order. No values:
        no query, no rows.
        """
        if sql.count(IN_LIST) != 1:
            raise ValueError(f"SQL must contain {IN_LIST} exactly once: {sql!r}")
        items = list(values)
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(items), chunk_size):
            chunk = items[start : start + chunk_size]
            placeholders = ",".join("?" for _ in chunk)
            rows.extend(
                self.select_all(
                    sql.replace(IN_LIST, placeholders), [*args_before, *chunk, *args_after]
                )
            )
        return rows

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def call_after(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback(*args)` on the reactor thread once this transaction has committed."""
        self.after_callbacks.append((callback, args))


class Database:
    def __init__(self, engine: Engine, reactor: Any) -> None:
        self.engine = engine
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=engine.max_connections, name="db-pool")
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        self._in_use = 0
        self._writer_lock: WriterLock | None = None
        self._writer_lock_lost = False
        self._on_writer_lock_lost: Callable[[], None] | None = None
        self._lost_lock = threading.Lock()
        metrics.DB_POOL_SIZE.set(engine.max_connections)
        self._pool.start()

    async def take_writer_lock(self, on_lost: Callable[[], None]) -> bool:
        """Claim the database as this process's to write (see `WriterLock`); False when
        another process holds it.

        Once it is held, losing it stops this Database for good: every transaction from then
        on fails with `WriterLockLostError`, and `on_lost()` runs once on the reactor thread.
        The loss is noticed by `check_writer_lock()` (which the caller runs periodically) and
        before any pool connection is reopened, since whatever broke that connection (a
        database restart, a network failure) may have ended the lock's session too.
        """
        lock = await threads.deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self.engine.try_writer_lock
        )
        if lock is None:
            return False
        self._writer_lock = lock
        self._on_writer_lock_lost = on_lost
        return True

    async def check_writer_lock(self) -> bool:
        """Whether this process still holds the writer lock it took (True if it took none)."""
        return bool(
            await threads.deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), self._writer_lock_held
            )
        )

    def _writer_lock_held(self) -> bool:
        """Check the writer lock (blocking; on a thread); a loss is recorded and reported."""
        lock = self._writer_lock
        if lock is None:
            return True
        if not self._writer_lock_lost and lock.is_held():
            return True
        if self._writer_lock is not lock:
            return True  # let go by close() meanwhile: released, not lost
        with self._lost_lock:
            first = not self._writer_lock_lost
            self._writer_lock_lost = True
        if first:
            logger.critical("lost the writer lock on %s", self.engine.location())
            if self._on_writer_lock_lost is not None:
                self._reactor.callFromThread(self._on_writer_lock_lost)
        return False

    def _lost_writer_lock_error(self) -> WriterLockLostError:
        return WriterLockLostError(f"this process lost the writer lock on {self.engine.location()}")

    async def run_interaction(
        self, desc: str, func: Callable[..., R], *args: Any, **kwargs: Any
    ) -> R:
        self._in_use += 1
        metrics.DB_CONNECTIONS_IN_USE.set(self._in_use)
        start = time.monotonic()
        try:
            result, txn = await threads.deferToThreadPool(
                self._reactor, self._pool, self._run_in_thread, desc, func, args, kwargs
            )
        finally:
            self._in_use -= 1
            metrics.DB_CONNECTIONS_IN_USE.set(self._in_use)
            metrics.DB_TRANSACTION_SECONDS.labels(desc).observe(time.monotonic() - start)
        metrics.DB_STATEMENTS.labels(desc).inc(txn.statements)
        for callback, cb_args in txn.after_callbacks:
            callback(*cb_args)
        return result

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.engine.connect()
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._connections_lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            try:
                conn.close()
            except Exception:
                pass

    def _run_in_thread(
        self, desc: str, func: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[R, Transaction]:
        attempt = 0
        while True:
            attempt += 1
            if self._writer_lock_lost:
                raise self._lost_writer_lock_error()
            conn = self._connection()
            cursor = conn.cursor()
            txn = Transaction(cursor, self.engine)
            try:
                result = func(txn, *args, **kwargs)
                conn.commit()
                return result, txn
            except Exception as e:
                if self.engine.is_retryable(e) and attempt < MAX_ATTEMPTS:
                    self._rollback(conn)
                    logger.info("[%s] retrying transaction after %s (attempt %d)", desc, e, attempt)
                    metrics.DB_TRANSACTION_RETRIES.labels(desc).inc()
                    time.sleep(0.01 * 2**attempt)
                    continue
                if self.engine.is_connection_lost(e) and attempt < MAX_ATTEMPTS:
                    # The server closed the connection (restart, idle timeout): reconnect once,
                    # unless the writer lock went with it.
                    logger.warning("[%s] database connection lost (%s); reconnecting", desc, e)
                    self._drop_connection()
                    if not self._writer_lock_held():
                        raise self._lost_writer_lock_error() from e
                    continue
                self._rollback(conn)
                raise
            finally:
                try:
                    cursor.close()
                except Exception:
                    pass

    def _rollback(self, conn: Any) -> None:
        try:
            conn.rollback()
        except Exception:
            logger.exception("rollback failed; dropping connection")
            self._drop_connection()

    def close(self) -> None:
        """Stop the pool and close every connection (on shutdown, and between tests), then
        let the writer lock go: nothing of this process writes after that."""
        self._pool.stop()
        with self._connections_lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
        lock, self._writer_lock = self._writer_lock, None
        if lock is not None:
            lock.release()
