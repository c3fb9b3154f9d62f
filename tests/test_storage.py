"""The storage layer on both engines: the Database (transactions, retries, after-commit
callbacks, integrity errors), schema migrations, and the account/device/token/UIA/profile
stores."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
from prometheus_client import REGISTRY
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from storage import migrations
from storage.database import MAX_ATTEMPTS, Database, InvalidTextError, Transaction
from storage.engines import PostgresEngine, SqliteEngine, create_engine
from storage.migrations import (
    SchemaError,
    apply_migrations,
    migrations_for,
    split_statements,
)
from storage.stores.accounts import AccountStore, UserInUseError
from storage.stores.devices import DeviceStore
from storage.stores.profiles import Profile, ProfileStore
from storage.stores.tokens import NewTokens, RefreshOutcome, TokenStore
from storage.stores.uia import UiaStore
from tests.harness import (
    POSTGRES_ADMIN_URL,
    on_both_engines,
    postgres_database_url,
    reset_postgres_database,
)

ALICE = "@alice:test.heddle"
BOB = "@bob:test.heddle"
ACCOUNT_TABLES = {
    "users",
    "devices",
    "refresh_tokens",
    "access_tokens",
    "ui_auth_sessions",
    "profiles",
}


def retries(desc: str) -> float:
    value = REGISTRY.get_sample_value("heddle_db_transaction_retries_total", {"desc": desc})
    return value or 0.0


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class ShortBusyTimeoutSqliteEngine(SqliteEngine):
    """SQLite waiting 50 ms (not 10 s) for another connection's write lock before it reports
    "database is locked", so the retry path is reached quickly."""

    def on_new_connection(self, conn: Any) -> None:
        super().on_new_connection(conn)
        conn.execute("PRAGMA busy_timeout=50")


class DatabaseCase:
    """Mixin: `self.db`, a migrated Database on the engine under test (`self.engine`)."""

    engine = "sqlite"
    db: Database
    url: str

    def setUp(self) -> defer.Deferred[Any]:
        if self.engine == "sqlite":
            self.url = self.fresh_url()
        else:
            self.url = postgres_database_url()
            reset_postgres_database(self.url)
        self.db = self.make_database(self.url)
        return defer.ensureDeferred(apply_migrations(self.db))

    # ----- helpers -----------------------------------------------------------------------

    def fresh_url(self) -> str:
        """An empty database of our own: a new SQLite file, or a new PostgreSQL database."""
        if self.engine == "sqlite":
            directory = Path(tempfile.mkdtemp(prefix="heddle-storage-"))
            self.addCleanup(shutil.rmtree, directory, True)
            return f"sqlite:///{directory / 'test.db'}"
        name = f"heddle_test_storage_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        admin = psycopg2.connect(POSTGRES_ADMIN_URL)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()

        def drop() -> None:
            conn = psycopg2.connect(POSTGRES_ADMIN_URL)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.close()

        # Cleanups run last-in first-out: registered before any Database on it is closed.
        self.addCleanup(drop)  # type: ignore[attr-defined]
        return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name

    def make_database(self, url: str, engine: Any = None) -> Database:
        db = Database(engine or create_engine(url), reactor)
        self.addCleanup(db.close)  # type: ignore[attr-defined]
        return db

    def raw_connect(self, url: str | None = None) -> Any:
        """A plain DB-API connection of our own, outside the Database under test."""
        url = url or self.url
        if self.engine == "sqlite":
            conn = sqlite3.connect(url[len("sqlite:///") :], check_same_thread=False)
        else:
            conn = psycopg2.connect(url)
        self.addCleanup(conn.close)  # type: ignore[attr-defined]
        return conn

    def raw_select(self, sql: str, args: tuple[Any, ...] = (), url: str | None = None) -> list[Any]:
        conn = self.raw_connect(url)
        cur = conn.cursor()
        cur.execute(sql.replace("?", "%s") if self.engine == "postgresql" else sql, args)
        rows = cur.fetchall()
        conn.rollback()
        conn.close()
        return rows

    def tables(self, url: str) -> set[str]:
        if self.engine == "sqlite":
            rows = self.raw_select("SELECT name FROM sqlite_master WHERE type = 'table'", url=url)
        else:
            rows = self.raw_select(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", url=url
            )
        return {row[0] for row in rows}

    async def insert_user(self, user_id: str, created_ts: int = 0) -> None:
        await self.db.run_interaction(
            "test_insert_user",
            lambda txn: txn.execute(
                "INSERT INTO users (user_id, created_ts) VALUES (?, ?)", (user_id, created_ts)
            ),
        )

    async def user_ids(self) -> list[str]:
        rows = await self.db.run_interaction(
            "test_user_ids",
            lambda txn: txn.select_all("SELECT user_id FROM users ORDER BY user_id"),
        )
        return [row[0] for row in rows]


# ----- migrations ----------------------------------------------------------------------------


class MigrationFilesTests(unittest.TestCase):
    """Finding and splitting migration files (no database)."""

    def schema_dir(self, files: dict[str, str]) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        for name, text in files.items():
            (directory / name).write_text(text, encoding="utf-8")
        return directory

    def test_real_schema_is_numbered_from_one_without_gaps(self) -> None:
        for engine in ("sqlite", "postgresql"):
            numbers = [m.number for m in migrations_for(engine)]
            self.assertEqual(numbers, list(range(1, len(numbers) + 1)), engine)

    def test_engine_specific_file_replaces_portable_one(self) -> None:
        directory = self.schema_dir(
            {
                "0001_base.sql": "CREATE TABLE a (x INTEGER);\n",
                "0002_extra.sql": "CREATE TABLE b (x INTEGER);\n",
                "0002_extra.postgresql.sql": "CREATE TABLE b (x BIGINT);\n",
                "0003_only_sqlite.sqlite.sql": "CREATE TABLE c (x INTEGER);\n",
            }
        )
        pg = migrations_for("postgresql", directory)
        self.assertEqual(
            [(m.number, m.path.name) for m in pg],
            [
                (1, "0001_base.sql"),
                (2, "0002_extra.postgresql.sql"),
            ],
        )
        lite = migrations_for("sqlite", directory)
        self.assertEqual(
            [(m.number, m.path.name) for m in lite],
            [
                (1, "0001_base.sql"),
                (2, "0002_extra.sql"),
                (3, "0003_only_sqlite.sqlite.sql"),
            ],
        )
        self.assertEqual(lite[1].name, "extra")

    def test_unexpected_file_in_schema_directory_is_refused(self) -> None:
        directory = self.schema_dir({"1_bad-name.sql": "SELECT 1;\n"})
        with self.assertRaises(SchemaError) as cm:
            migrations_for("sqlite", directory)
        self.assertIn("1_bad-name.sql", str(cm.exception))

    def test_split_statements(self) -> None:
        sql = (
            "-- a comment; with a semicolon\n"
            "CREATE TABLE a (\n"
            "    x INTEGER\n"
            ");\n"
            "\n"
            "  -- indented comment\n"
            "CREATE INDEX a_x ON a (x);\n"
            "INSERT INTO a VALUES (1)"
        )
        self.assertEqual(
            split_statements(sql),
            [
                "CREATE TABLE a (\n    x INTEGER\n)",
                "CREATE INDEX a_x ON a (x)",
                "INSERT INTO a VALUES (1)",
            ],
        )
        self.assertEqual(split_statements("-- only a comment\n\n"), [])


@on_both_engines
class MigrationTests(DatabaseCase):
    def use_schema(self, files: dict[str, str]) -> Path:
        """Make apply_migrations read this schema directory instead of the real one."""
        directory = Path(tempfile.mkdtemp(prefix="heddle-schema-"))
        self.addCleanup(shutil.rmtree, directory, True)
        for name, text in files.items():
            (directory / name).write_text(text, encoding="utf-8")
        real = migrations.migrations_for
        self.patch(migrations, "migrations_for", lambda engine: real(engine, directory))
        return directory

    async def test_fresh_database_gets_every_migration_once(self) -> None:
        url = self.fresh_url()
        db = self.make_database(url)
        expected = migrations_for(db.engine.name)
        self.assertEqual(await apply_migrations(db), [m.number for m in expected])
        self.assertTrue(ACCOUNT_TABLES <= self.tables(url), self.tables(url))
        rows = self.raw_select(
            "SELECT number, name FROM schema_migrations ORDER BY number", url=url
        )
        self.assertEqual([tuple(r) for r in rows], [(m.number, m.name) for m in expected])

        # Applying again (the next start-up) applies nothing and changes nothing.
        self.assertEqual(await apply_migrations(db), [])
        again = self.make_database(url)
        self.assertEqual(await apply_migrations(again), [])
        rows_after = self.raw_select(
            "SELECT number, name FROM schema_migrations ORDER BY number", url=url
        )
        self.assertEqual(rows_after, rows)

    async def test_only_new_migrations_are_applied(self) -> None:
        directory = self.use_schema({"0001_one.sql": "CREATE TABLE t_one (x INTEGER);\n"})
        url = self.fresh_url()
        db = self.make_database(url)
        self.assertEqual(await apply_migrations(db), [1])
        (directory / "0002_two.sql").write_text("CREATE TABLE t_two (x INTEGER);\n")
        self.assertEqual(await apply_migrations(db), [2])
        self.assertEqual(await apply_migrations(db), [])
        self.assertTrue({"t_one", "t_two", "schema_migrations"} <= self.tables(url))

    async def test_database_newer_than_code_is_refused(self) -> None:
        url = self.fresh_url()
        db = self.make_database(url)
        await apply_migrations(db)
        newest = migrations_for(db.engine.name)[-1].number
        await db.run_interaction(
            "test_future_migration",
            lambda txn: txn.execute(
                "INSERT INTO schema_migrations (number, name, applied_ts) VALUES (?, ?, ?)",
                (newest + 7, "from_the_future", 0),
            ),
        )
        with self.assertRaises(SchemaError) as cm:
            await apply_migrations(db)
        self.assertIn(str(newest + 7), str(cm.exception))
        self.assertIn("newer", str(cm.exception))

    async def test_failed_migration_leaves_nothing_behind(self) -> None:
        """All migrations of one start-up apply in one transaction: a failure in the second
        must not leave the first one's tables behind, unrecorded, to break every later start."""
        directory = self.use_schema(
            {
                "0001_one.sql": "CREATE TABLE t_one (x INTEGER);\n",
                "0002_two.sql": (
                    "CREATE TABLE t_two (x INTEGER);\n"
                    "CREATE TABLE t_one (x INTEGER);\n"  # already exists: fails
                ),
            }
        )
        url = self.fresh_url()
        db = self.make_database(url)
        with self.assertRaises(Exception):  # noqa: B017 - the engine's own error type
            await apply_migrations(db)
        self.assertEqual(self.tables(url) & {"t_one", "t_two"}, set())
        if "schema_migrations" in self.tables(url):
            self.assertEqual(self.raw_select("SELECT number FROM schema_migrations", url=url), [])

        # Once the migration is fixed, the next start applies both.
        (directory / "0002_two.sql").write_text("CREATE TABLE t_two (x INTEGER);\n")
        self.assertEqual(await apply_migrations(db), [1, 2])
        self.assertTrue({"t_one", "t_two"} <= self.tables(url))

    async def test_concurrent_start_ups_apply_once(self) -> None:
        """Two processes starting on one empty database: one applies, the other finds it done."""
        url = self.fresh_url()
        first, second = self.make_database(url), self.make_database(url)
        results = await defer.gatherResults(
            [
                defer.ensureDeferred(apply_migrations(first)),
                defer.ensureDeferred(apply_migrations(second)),
            ],
            consumeErrors=True,
        )
        expected = [m.number for m in migrations_for(first.engine.name)]
        self.assertEqual(sorted(results, key=len), [[], expected])


# ----- the Database -----------------------------------------------------------------------


@on_both_engines
class DatabaseTests(DatabaseCase):
    async def test_result_args_and_kwargs(self) -> None:
        def txn_fn(txn: Transaction, a: int, *, b: int) -> tuple[Any, ...] | None:
            return txn.select_one("SELECT ? + ?", (a, b))

        row = await self.db.run_interaction("test_args", txn_fn, 2, b=3)
        self.assertEqual(row[0], 5)

    async def test_percent_signs_and_unicode_survive(self) -> None:
        """`?` placeholders are portable; a literal % must not be taken for a psycopg2 one."""
        row = await self.db.run_interaction(
            "test_percent",
            lambda txn: txn.select_one("SELECT '100%', ? || '%'", ("50",)),
        )
        self.assertEqual(tuple(row), ("100%", "50%"))
        name = "Zoë 🐈 %s %(x)s ?"
        await self.insert_user(ALICE)
        await self.db.run_interaction(
            "test_unicode",
            lambda txn: txn.execute(
                "INSERT INTO profiles (user_id, displayname) VALUES (?, ?)", (ALICE, name)
            ),
        )
        profile = await ProfileStore(self.db).get_profile(ALICE)
        self.assertEqual(profile, Profile(name, None))

    async def test_nul_in_text_is_refused_on_every_engine(self) -> None:
        """PostgreSQL cannot store NUL in TEXT; SQLite could, but the engines must agree."""
        with self.assertRaises(InvalidTextError):
            await self.db.run_interaction(
                "test_nul",
                lambda txn: txn.execute(
                    "INSERT INTO users (user_id, created_ts) VALUES (?, ?)", ("@a\x00b:x", 1)
                ),
            )
        with self.assertRaises(InvalidTextError):
            await self.db.run_interaction(
                "test_nul_many",
                lambda txn: txn.execute_many(
                    "INSERT INTO users (user_id, created_ts) VALUES (?, ?)",
                    [(ALICE, 1), ("@b\x00:x", 2)],
                ),
            )
        self.assertEqual(await self.user_ids(), [])

    async def test_exception_rolls_back_everything(self) -> None:
        after: list[str] = []

        def txn_fn(txn: Transaction) -> None:
            txn.execute("INSERT INTO users (user_id, created_ts) VALUES (?, ?)", (ALICE, 1))
            txn.execute("INSERT INTO users (user_id, created_ts) VALUES (?, ?)", (BOB, 1))
            txn.call_after(after.append, "ran")
            raise ValueError("boom")

        with self.assertRaises(ValueError):
            await self.db.run_interaction("test_rollback", txn_fn)
        self.assertEqual(await self.user_ids(), [])
        self.assertEqual(self.raw_select("SELECT user_id FROM users"), [])
        self.assertEqual(
            after, [], "call_after callbacks must not run for a rolled-back transaction"
        )

        # The connection is usable afterwards.
        await self.insert_user(ALICE)
        self.assertEqual(await self.user_ids(), [ALICE])

    async def test_call_after_runs_after_commit_on_the_reactor_thread(self) -> None:
        seen: list[Any] = []
        in_txn: list[bool] = []

        def callback(tag: str, n: int) -> None:
            # The data is committed: a separate connection sees it.
            rows = self.raw_select("SELECT user_id FROM users WHERE user_id = ?", (ALICE,))
            seen.append((tag, n, threading.current_thread() is threading.main_thread(), rows))

        def txn_fn(txn: Transaction) -> str:
            txn.execute("INSERT INTO users (user_id, created_ts) VALUES (?, ?)", (ALICE, 1))
            txn.call_after(callback, "first", 1)
            txn.call_after(callback, "second", 2)
            in_txn.append(bool(seen))
            return "result"

        self.assertEqual(await self.db.run_interaction("test_call_after", txn_fn), "result")
        self.assertEqual(in_txn, [False])
        self.assertEqual(
            [(tag, n, on_main) for tag, n, on_main, _ in seen],
            [("first", 1, True), ("second", 2, True)],
        )
        for *_, rows in seen:
            self.assertEqual([tuple(r) for r in rows], [(ALICE,)])

    async def test_integrity_errors_surface_as_engine_integrity_error(self) -> None:
        engine = self.db.engine
        self.assertIs(
            engine.integrity_error,
            sqlite3.IntegrityError if self.engine == "sqlite" else psycopg2.IntegrityError,
        )
        await self.insert_user(ALICE)
        with self.assertRaises(engine.integrity_error):
            await self.insert_user(ALICE)
        # Foreign keys are enforced on both engines.
        with self.assertRaises(engine.integrity_error):
            await DeviceStore(self.db).ensure_device(BOB, "DEV", None, 1)
        # NOT NULL too.
        with self.assertRaises(engine.integrity_error):
            await self.db.run_interaction(
                "test_not_null",
                lambda txn: txn.execute("INSERT INTO users (user_id) VALUES (?)", (BOB,)),
            )
        # None of that left a broken connection or partial data behind.
        await self.insert_user(BOB)
        self.assertEqual(await self.user_ids(), [ALICE, BOB])
        self.assertEqual(await DeviceStore(self.db).get_devices(BOB), [])

    async def test_sql_errors_propagate_and_connection_recovers(self) -> None:
        with self.assertRaises(Exception):  # noqa: B017 - each engine has its own error type
            await self.db.run_interaction(
                "test_bad_sql", lambda txn: txn.execute("SELECT * FROM no_such_table")
            )
        await self.insert_user(ALICE)
        self.assertEqual(await self.user_ids(), [ALICE])

    async def test_retryable_errors_retried_until_success(self) -> None:
        desc = _unique("test_retry_success")
        attempts: list[int] = []
        after: list[int] = []
        error = self.retryable_error()

        def txn_fn(txn: Transaction) -> str:
            attempts.append(1)
            txn.call_after(after.append, len(attempts))
            txn.execute(
                "INSERT INTO users (user_id, created_ts) VALUES (?, ?)", (ALICE, len(attempts))
            )
            if len(attempts) < 3:
                raise error
            return "done"

        self.assertEqual(await self.db.run_interaction(desc, txn_fn), "done")
        self.assertEqual(len(attempts), 3)
        self.assertEqual(retries(desc), 2)
        # Failed attempts were rolled back, and only the committed attempt's callbacks ran.
        rows = await self.db.run_interaction(
            "test_created_ts", lambda txn: txn.select_all("SELECT user_id, created_ts FROM users")
        )
        self.assertEqual([tuple(r) for r in rows], [(ALICE, 3)])
        self.assertEqual(after, [3])

    async def test_retries_give_up_after_max_attempts(self) -> None:
        desc = _unique("test_retry_give_up")
        attempts: list[int] = []
        error = self.retryable_error()

        def txn_fn(txn: Transaction) -> None:
            attempts.append(1)
            txn.execute("INSERT INTO users (user_id, created_ts) VALUES (?, ?)", (ALICE, 1))
            raise error

        with self.assertRaises(type(error)):
            await self.db.run_interaction(desc, txn_fn)
        self.assertEqual(len(attempts), MAX_ATTEMPTS)
        self.assertEqual(retries(desc), MAX_ATTEMPTS - 1)
        self.assertEqual(await self.user_ids(), [])

    async def test_other_errors_are_not_retried(self) -> None:
        desc = _unique("test_no_retry")
        attempts: list[int] = []

        def txn_fn(txn: Transaction) -> None:
            attempts.append(1)
            raise KeyError("not a database problem")

        with self.assertRaises(KeyError):
            await self.db.run_interaction(desc, txn_fn)
        self.assertEqual(len(attempts), 1)
        self.assertEqual(retries(desc), 0)

    async def test_select_in_chunks_binds_every_value_around_the_other_arguments(self) -> None:
        users = [f"@u{i:02d}:test.heddle" for i in range(10)]
        await self.db.run_interaction(
            "test_insert_users",
            lambda txn: txn.execute_many(
                "INSERT INTO users (user_id, created_ts) VALUES (?, ?)",
                [(user, i) for i, user in enumerate(users)],
            ),
        )
        wanted = [*users[1:9], "@nobody:test.heddle"]

        def select(txn: Transaction, chunk_size: int) -> list[tuple[Any, ...]]:
            return txn.select_in_chunks(
                "SELECT user_id FROM users WHERE created_ts > ? AND user_id IN ({in})"
                " AND created_ts < ? ORDER BY user_id",
                wanted,
                args_before=[1],
                args_after=[8],
                chunk_size=chunk_size,
            )

        expected = users[2:8]
        # One query per chunk, rows in chunk order: the same rows whatever the chunk size.
        for chunk_size in (1, 3, 500):
            rows = await self.db.run_interaction("test_in_chunks", select, chunk_size)
            self.assertEqual([row[0] for row in rows], expected, f"chunk_size={chunk_size}")

    async def test_select_in_chunks_without_values_runs_no_query(self) -> None:
        rows = await self.db.run_interaction(
            "test_in_chunks_empty",
            lambda txn: txn.select_in_chunks("SELECT x FROM no_such_table WHERE x IN ({in})", []),
        )
        self.assertEqual(rows, [])

    async def test_select_in_chunks_needs_one_placeholder_list(self) -> None:
        for sql in ("SELECT user_id FROM users", "SELECT 1 WHERE 1 IN ({in}) OR 2 IN ({in})"):
            with self.assertRaises(ValueError):
                await self.db.run_interaction(
                    "test_in_chunks_bad", lambda txn, sql=sql: txn.select_in_chunks(sql, [1])
                )

    def retryable_error(self) -> BaseException:
        if self.engine == "sqlite":
            return sqlite3.OperationalError("database is locked")
        return psycopg2.errors.SerializationFailure("could not serialize access")

    def test_engine_classifies_errors(self) -> None:
        engine = self.db.engine
        if self.engine == "sqlite":
            self.assertTrue(engine.is_retryable(sqlite3.OperationalError("database is locked")))
            self.assertTrue(
                engine.is_retryable(sqlite3.OperationalError("database table is locked"))
            )
            self.assertFalse(engine.is_retryable(sqlite3.OperationalError("no such table: x")))
            self.assertFalse(
                engine.is_retryable(sqlite3.IntegrityError("UNIQUE constraint failed"))
            )
        else:
            self.assertTrue(engine.is_retryable(psycopg2.errors.SerializationFailure()))
            self.assertTrue(engine.is_retryable(psycopg2.errors.DeadlockDetected()))
            self.assertFalse(engine.is_retryable(psycopg2.errors.UniqueViolation()))
            self.assertFalse(engine.is_retryable(psycopg2.errors.UndefinedTable()))
            self.assertFalse(engine.is_connection_lost(psycopg2.errors.UndefinedTable()))
            self.assertTrue(
                engine.is_connection_lost(psycopg2.InterfaceError("connection already closed"))
            )
            self.assertTrue(
                engine.is_connection_lost(psycopg2.OperationalError("server closed the connection"))
            )


class SqliteLockTests(DatabaseCase, unittest.TestCase):
    engine = "sqlite"

    async def test_sqlite_database_locked_by_another_connection_is_retried(self) -> None:
        db = self.make_database(self.url, ShortBusyTimeoutSqliteEngine(self.url))
        desc = _unique("test_sqlite_locked")
        # Another process (say `heddle register-user`) holds the write lock...
        blocker = sqlite3.connect(
            self.url[len("sqlite:///") :], isolation_level=None, check_same_thread=False
        )
        self.addCleanup(blocker.close)
        blocker.execute("BEGIN IMMEDIATE")
        blocker.execute("INSERT INTO users (user_id, created_ts) VALUES (?, ?)", (BOB, 1))
        attempts: list[int] = []

        def txn_fn(txn: Transaction) -> None:
            attempts.append(1)
            if len(attempts) == 2:
                # ...and lets go once our first attempt has failed with "database is locked".
                blocker.execute("COMMIT")
            txn.execute("INSERT INTO users (user_id, created_ts) VALUES (?, ?)", (ALICE, 1))

        await db.run_interaction(desc, txn_fn)
        self.assertEqual(len(attempts), 2)
        self.assertEqual(retries(desc), 1)
        self.assertEqual(await self.user_ids(), [ALICE, BOB])


class SqliteFirstConnectionTests(unittest.TestCase):
    def test_switch_to_wal_waits_for_a_connection_creating_the_schema(self) -> None:
        """The switch to WAL fails at once, without busy_timeout, while another connection
        writes to the fresh file in rollback-journal mode (as a second process applying the
        migrations does): connecting must wait for it, not fail with "database is locked"."""
        directory = tempfile.mkdtemp(prefix="heddle-wal-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "homeserver.db")
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.addCleanup(blocker.close)
        blocker.execute("BEGIN IMMEDIATE")
        blocker.execute("CREATE TABLE created_first (x INTEGER)")
        releaser = threading.Timer(0.2, blocker.execute, ("COMMIT",))
        releaser.start()
        self.addCleanup(releaser.join)

        conn = SqliteEngine("sqlite:///" + path).connect()
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone(), ("wal",))
        self.assertEqual(
            conn.execute("SELECT name FROM sqlite_master").fetchall(), [("created_first",)]
        )


class PostgresConcurrencyTests(DatabaseCase, unittest.TestCase):
    engine = "postgresql"

    async def test_postgres_serialization_failures_are_retried(self) -> None:
        """Two REPEATABLE READ transactions read then update one row: the loser gets a
        serialization failure, is retried from scratch, and both increments land."""
        await self.insert_user(ALICE, created_ts=0)
        desc = _unique("test_pg_serialization")
        before = retries(desc)
        barrier = threading.Barrier(2, timeout=10)
        lock = threading.Lock()
        attempts: dict[str, int] = {}
        after: list[str] = []

        def increment(txn: Transaction, who: str) -> int:
            with lock:
                attempts[who] = attempts.get(who, 0) + 1
                first_attempt = attempts[who] == 1
            (value,) = txn.select_one("SELECT created_ts FROM users WHERE user_id = ?", (ALICE,))
            if first_attempt:
                # Both transactions have now taken their snapshot and read the same value.
                barrier.wait()
            txn.execute("UPDATE users SET created_ts = ? WHERE user_id = ?", (value + 1, ALICE))
            txn.call_after(after.append, who)
            return value + 1

        results = await defer.gatherResults(
            [
                defer.ensureDeferred(self.db.run_interaction(desc, increment, "a")),
                defer.ensureDeferred(self.db.run_interaction(desc, increment, "b")),
            ],
            consumeErrors=True,
        )
        self.assertEqual(sorted(results), [1, 2])
        (value,) = self.raw_select("SELECT created_ts FROM users WHERE user_id = ?", (ALICE,))[0]
        self.assertEqual(value, 2)
        self.assertEqual(sum(attempts.values()), 3, attempts)
        self.assertGreaterEqual(retries(desc) - before, 1)
        self.assertEqual(sorted(after), ["a", "b"])

    async def test_postgres_lost_connection_is_reopened(self) -> None:
        db = self.make_database(self.url, PostgresEngine(self.url, max_connections=1))

        def backend_pid(txn: Transaction) -> int:
            return txn.select_one("SELECT pg_backend_pid()")[0]

        pid = await db.run_interaction("test_pid", backend_pid)
        admin = psycopg2.connect(POSTGRES_ADMIN_URL)
        admin.autocommit = True
        with admin.cursor() as cur:
            # As if the server restarted or dropped an idle connection.
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            for _ in range(100):
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cur.fetchone()[0] == 0:
                    break
                await task.deferLater(reactor, 0.05, lambda: None)
        admin.close()
        new_pid = await db.run_interaction("test_pid", backend_pid)
        self.assertNotEqual(new_pid, pid)

    async def test_case_folding_works_without_icu(self) -> None:
        """A PostgreSQL built without ICU has no "und-x-icu" collation: case-insensitive
        matching falls back to LOWER() instead of failing every query that folds case."""
        engine = PostgresEngine(self.url, max_connections=1)
        db = self.make_database(self.url, engine)

        def folded(txn: Transaction) -> str:
            return str(txn.select_one(f"SELECT {engine.fold_case('?')}", ("ÉMILE ZOË",))[0])

        # This machine's PostgreSQL has ICU: the whole of Unicode is folded.
        self.assertEqual(await db.run_interaction("test_fold", folded), "émile zoë")
        engine._has_icu = False  # as found on a server without ICU
        self.assertNotIn("COLLATE", engine.fold_case("x"))
        self.assertEqual((await db.run_interaction("test_fold", folded)).lower(), "émile zoë")


# ----- stores --------------------------------------------------------------------------------


@on_both_engines
class AccountStoreTests(DatabaseCase):
    def setUp(self) -> defer.Deferred[Any]:
        d = super().setUp()
        self.accounts = AccountStore(self.db)
        self.profiles = ProfileStore(self.db)
        return d

    async def test_create_and_get(self) -> None:
        await self.accounts.create_account(ALICE, "hash", 1234, is_admin=True, displayname="Alice")
        account = await self.accounts.get_account(ALICE)
        self.assertEqual(account.user_id, ALICE)
        self.assertEqual(account.password_hash, "hash")
        self.assertEqual(account.created_ts, 1234)
        self.assertIs(account.is_admin, True)
        self.assertIs(account.is_guest, False)
        self.assertIs(account.deactivated, False)
        self.assertEqual(await self.profiles.get_profile(ALICE), Profile("Alice", None))
        self.assertTrue(await self.accounts.is_user_id_taken(ALICE))

        await self.accounts.create_account(BOB, None, 5)
        bob = await self.accounts.get_account(BOB)
        self.assertIsNone(bob.password_hash)
        self.assertIs(bob.is_admin, False)
        self.assertEqual(await self.profiles.get_profile(BOB), Profile(None, None))

    async def test_unknown_user(self) -> None:
        self.assertIsNone(await self.accounts.get_account(ALICE))
        self.assertFalse(await self.accounts.is_user_id_taken(ALICE))
        self.assertIsNone(await self.profiles.get_profile(ALICE))

    async def test_duplicate_user_is_user_in_use(self) -> None:
        await self.accounts.create_account(ALICE, "first", 1)
        with self.assertRaises(UserInUseError):
            await self.accounts.create_account(ALICE, "second", 2)
        account = await self.accounts.get_account(ALICE)
        self.assertEqual((account.password_hash, account.created_ts), ("first", 1))

    async def test_racing_registrations_for_one_name(self) -> None:
        """Concurrent creates of one user: exactly one wins, every other gets UserInUseError
        (on PostgreSQL the losers pass the existence check and hit the primary key)."""
        outcomes = await defer.DeferredList(
            [
                defer.ensureDeferred(self.accounts.create_account(ALICE, f"hash{i}", i))
                for i in range(6)
            ],
            consumeErrors=True,
        )
        winners = [result for ok, result in outcomes if ok]
        losers = [result for ok, result in outcomes if not ok]
        self.assertEqual(len(winners), 1, outcomes)
        for failure in losers:
            self.assertTrue(failure.check(UserInUseError), failure)
        self.assertEqual(await self.user_ids(), [ALICE])
        rows = self.raw_select("SELECT count(*) FROM profiles WHERE user_id = ?", (ALICE,))
        self.assertEqual(rows[0][0], 1)

    async def test_password_admin_and_deactivation(self) -> None:
        await self.accounts.create_account(ALICE, "hash", 1, displayname="Alice")
        await self.profiles.set_avatar_url(ALICE, "mxc://test.heddle/abc")
        await self.accounts.set_password_hash(ALICE, "new-hash")
        await self.accounts.set_admin(ALICE, True)
        account = await self.accounts.get_account(ALICE)
        self.assertEqual(account.password_hash, "new-hash")
        self.assertIs(account.is_admin, True)
        await self.accounts.set_admin(ALICE, False)
        self.assertIs((await self.accounts.get_account(ALICE)).is_admin, False)

        await self.accounts.mark_deactivated(ALICE, erase=False)
        account = await self.accounts.get_account(ALICE)
        self.assertIs(account.deactivated, True)
        self.assertIsNone(account.password_hash)
        self.assertEqual(
            await self.profiles.get_profile(ALICE), Profile("Alice", "mxc://test.heddle/abc")
        )

        await self.accounts.create_account(BOB, "hash", 1, displayname="Bob")
        await self.profiles.set_avatar_url(BOB, "mxc://test.heddle/bob")
        await self.accounts.mark_deactivated(BOB, erase=True)
        self.assertIs((await self.accounts.get_account(BOB)).deactivated, True)
        self.assertEqual(await self.profiles.get_profile(BOB), Profile(None, None))


@on_both_engines
class ProfileStoreTests(DatabaseCase):
    async def test_set_and_clear(self) -> None:
        profiles = ProfileStore(self.db)
        await AccountStore(self.db).create_account(ALICE, None, 1, displayname="alice")
        await profiles.set_displayname(ALICE, "Alice 🐇")
        await profiles.set_avatar_url(ALICE, "mxc://test.heddle/a")
        self.assertEqual(
            await profiles.get_profile(ALICE), Profile("Alice 🐇", "mxc://test.heddle/a")
        )
        await profiles.set_displayname(ALICE, None)
        await profiles.set_avatar_url(ALICE, None)
        self.assertEqual(await profiles.get_profile(ALICE), Profile(None, None))

    async def test_setting_unknown_user_creates_nothing(self) -> None:
        profiles = ProfileStore(self.db)
        await profiles.set_displayname(ALICE, "ghost")
        self.assertIsNone(await profiles.get_profile(ALICE))


@on_both_engines
class UiaStoreTests(DatabaseCase):
    async def test_session_lifecycle(self) -> None:
        uia = UiaStore(self.db)
        self.assertIsNone(await uia.get_session("nope"))
        await uia.create_session("s1", 1000, "POST", "/_matrix/client/v3/register", None)
        await uia.create_session("s2", 2000, "DELETE", "/_matrix/client/v3/devices/D", ALICE)
        s1 = await uia.get_session("s1")
        self.assertEqual(
            (s1.session_id, s1.created_ts, s1.method, s1.uri, s1.user_id, s1.completed),
            ("s1", 1000, "POST", "/_matrix/client/v3/register", None, {}),
        )
        self.assertEqual((await uia.get_session("s2")).user_id, ALICE)

        await uia.mark_stage_completed("s1", "m.login.registration_token", "tok")
        await uia.mark_stage_completed("s1", "m.login.dummy", True)
        await uia.mark_stage_completed("s1", "m.login.terms", {"accepted": ["v1"]})
        await uia.mark_stage_completed("missing", "m.login.dummy", True)  # a no-op
        self.assertEqual(
            (await uia.get_session("s1")).completed,
            {
                "m.login.registration_token": "tok",
                "m.login.dummy": True,
                "m.login.terms": {"accepted": ["v1"]},
            },
        )
        self.assertIsNone(await uia.get_session("missing"))
        self.assertEqual((await uia.get_session("s2")).completed, {})

        await uia.delete_session("s2")
        self.assertIsNone(await uia.get_session("s2"))
        self.assertIsNotNone(await uia.get_session("s1"))

    async def test_duplicate_session_id_is_an_integrity_error(self) -> None:
        uia = UiaStore(self.db)
        await uia.create_session("s1", 1000, "POST", "/r", None)
        with self.assertRaises(self.db.engine.integrity_error):
            await uia.create_session("s1", 1001, "POST", "/r", None)

    async def test_expiry_cutoff_is_exclusive(self) -> None:
        uia = UiaStore(self.db)
        for session_id, ts in (("old", 999), ("edge", 1000), ("new", 1001)):
            await uia.create_session(session_id, ts, "POST", "/r", None)
        await uia.delete_sessions_older_than(1000)
        self.assertIsNone(await uia.get_session("old"))
        self.assertIsNotNone(await uia.get_session("edge"))
        self.assertIsNotNone(await uia.get_session("new"))


class TokenFixtures(DatabaseCase):
    def setUp(self) -> defer.Deferred[Any]:
        d = super().setUp()
        self.accounts = AccountStore(self.db)
        self.devices = DeviceStore(self.db)
        self.tokens = TokenStore(self.db)

        async def more(_: Any) -> None:
            await self.accounts.create_account(ALICE, "hash", 1)
            await self.accounts.create_account(BOB, "hash", 1)
            for user, device in ((ALICE, "D1"), (ALICE, "D2"), (BOB, "D1")):
                await self.devices.ensure_device(user, device, None, 1)

        d.addCallback(lambda r: defer.ensureDeferred(more(r)))
        return d

    async def access_token_ids(self, user_id: str, device_id: str) -> set[str]:
        rows = await self.db.run_interaction(
            "test_access_tokens",
            lambda txn: txn.select_all(
                "SELECT token_id FROM access_tokens WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ),
        )
        return {row[0] for row in rows}

    async def refresh_token_ids(self, user_id: str, device_id: str) -> set[str]:
        rows = await self.db.run_interaction(
            "test_refresh_tokens",
            lambda txn: txn.select_all(
                "SELECT token_id FROM refresh_tokens WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ),
        )
        return {row[0] for row in rows}


@on_both_engines
class DeviceStoreTests(TokenFixtures):
    async def test_ensure_get_rename_and_last_seen(self) -> None:
        self.assertFalse(await self.devices.ensure_device(ALICE, "D1", "other name", 5))
        self.assertTrue(await self.devices.ensure_device(ALICE, "D0", "Phone", 5))
        device = await self.devices.get_device(ALICE, "D0")
        self.assertEqual(
            (
                device.user_id,
                device.device_id,
                device.display_name,
                device.last_seen_ts,
                device.last_seen_ip,
            ),
            (ALICE, "D0", "Phone", None, None),
        )
        self.assertIsNone((await self.devices.get_device(ALICE, "D1")).display_name)
        self.assertIsNone(await self.devices.get_device(ALICE, "nope"))
        self.assertIsNone(await self.devices.get_device(BOB, "D2"))
        self.assertEqual(
            [d.device_id for d in await self.devices.get_devices(ALICE)], ["D0", "D1", "D2"]
        )
        self.assertEqual([d.device_id for d in await self.devices.get_devices(BOB)], ["D1"])

        self.assertTrue(await self.devices.set_display_name(ALICE, "D0", "Tablet"))
        self.assertFalse(await self.devices.set_display_name(ALICE, "nope", "Tablet"))
        self.assertEqual((await self.devices.get_device(ALICE, "D0")).display_name, "Tablet")

        await self.devices.record_last_seen(ALICE, "D0", "10.0.0.1", "nio", 99)
        device = await self.devices.get_device(ALICE, "D0")
        self.assertEqual((device.last_seen_ts, device.last_seen_ip), (99, "10.0.0.1"))
        self.assertIsNone((await self.devices.get_device(BOB, "D1")).last_seen_ts)

    async def test_delete_devices_revokes_their_tokens(self) -> None:
        await self.tokens.add_access_token("a1", ALICE, "D1", 1, None)
        await self.tokens.add_access_token("a1b", ALICE, "D1", 1, 100, "r1", "h1", 200)
        await self.tokens.add_access_token("a2", ALICE, "D2", 1, None, "r2", "h2", 200)
        await self.tokens.add_access_token("b1", BOB, "D1", 1, None, "rb", "hb", 200)

        deleted = await self.devices.delete_devices(ALICE, ["D1", "missing"])
        self.assertEqual(sorted(deleted.revoked_token_ids), ["a1", "a1b"])
        self.assertEqual(deleted.device_ids, ["D1"])
        self.assertIsNone(await self.devices.get_device(ALICE, "D1"))
        self.assertIsNone(await self.tokens.get_access_token("a1"))
        self.assertIsNone(await self.tokens.get_access_token("a1b"))
        self.assertEqual(await self.refresh_token_ids(ALICE, "D1"), set())
        # The other device, and Bob's device with the same ID, keep theirs.
        self.assertIsNotNone(await self.tokens.get_access_token("a2"))
        self.assertEqual(await self.refresh_token_ids(ALICE, "D2"), {"r2"})
        self.assertIsNotNone(await self.devices.get_device(BOB, "D1"))
        self.assertIsNotNone(await self.tokens.get_access_token("b1"))
        self.assertEqual(await self.refresh_token_ids(BOB, "D1"), {"rb"})

    async def test_delete_all_devices_except_one(self) -> None:
        await self.tokens.add_access_token("a1", ALICE, "D1", 1, None)
        await self.tokens.add_access_token("a2", ALICE, "D2", 1, None)
        await self.tokens.add_access_token("b1", BOB, "D1", 1, None)
        deleted = await self.devices.delete_all_devices(ALICE, except_device_id="D2")
        self.assertEqual((deleted.device_ids, deleted.revoked_token_ids), (["D1"], ["a1"]))
        self.assertEqual([d.device_id for d in await self.devices.get_devices(ALICE)], ["D2"])
        self.assertIsNotNone(await self.tokens.get_access_token("a2"))
        self.assertEqual((await self.devices.delete_all_devices(ALICE)).revoked_token_ids, ["a2"])
        self.assertEqual(await self.devices.get_devices(ALICE), [])
        self.assertIsNotNone(await self.tokens.get_access_token("b1"))


def new_tokens(n: int, expires: int = 10_000) -> NewTokens:
    return NewTokens(f"acc{n}", expires, f"ref{n}", f"hash{n}", expires)


@on_both_engines
class TokenStoreTests(TokenFixtures):
    async def test_access_token_rows(self) -> None:
        self.assertEqual(await self.tokens.add_access_token("a1", ALICE, "D1", 10, None), [])
        await self.tokens.add_access_token("a2", ALICE, "D1", 10, 500, "r2", "h2", 900)
        row = await self.tokens.get_access_token("a1")
        self.assertEqual(
            (
                row.token_id,
                row.user_id,
                row.device_id,
                row.expires_ts,
                row.refresh_token_id,
                row.used,
            ),
            ("a1", ALICE, "D1", None, None, False),
        )
        row = await self.tokens.get_access_token("a2")
        self.assertEqual((row.expires_ts, row.refresh_token_id), (500, "r2"))
        self.assertIsNone(await self.tokens.get_access_token("nope"))

        await self.tokens.delete_access_token("a1")
        self.assertIsNone(await self.tokens.get_access_token("a1"))
        self.assertIsNotNone(await self.tokens.get_access_token("a2"))

    async def test_replacing_device_tokens(self) -> None:
        await self.tokens.add_access_token("a1", ALICE, "D1", 1, None, "r1", "h1", 900)
        await self.tokens.add_access_token("a2", ALICE, "D2", 1, None)
        revoked = await self.tokens.add_access_token(
            "a3", ALICE, "D1", 2, None, "r3", "h3", 900, replace_device_tokens=True
        )
        self.assertEqual(revoked, ["a1"])
        self.assertEqual(await self.access_token_ids(ALICE, "D1"), {"a3"})
        self.assertEqual(await self.refresh_token_ids(ALICE, "D1"), {"r3"})
        self.assertEqual(await self.access_token_ids(ALICE, "D2"), {"a2"})

    async def test_duplicate_refresh_hash_is_refused_atomically(self) -> None:
        await self.tokens.add_access_token("a1", ALICE, "D1", 1, None, "r1", "h1", 900)
        with self.assertRaises(self.db.engine.integrity_error):
            await self.tokens.add_access_token("a2", ALICE, "D2", 1, None, "r2", "h1", 900)
        self.assertIsNone(await self.tokens.get_access_token("a2"))

    async def test_revoke_device_tokens(self) -> None:
        await self.tokens.add_access_token("a1", ALICE, "D1", 1, None, "r1", "h1", 900)
        await self.tokens.add_access_token("a2", ALICE, "D2", 1, None)
        self.assertEqual(await self.tokens.revoke_device_tokens(ALICE, "D1"), ["a1"])
        self.assertEqual(await self.access_token_ids(ALICE, "D1"), set())
        self.assertEqual(await self.refresh_token_ids(ALICE, "D1"), set())
        self.assertEqual(await self.access_token_ids(ALICE, "D2"), {"a2"})
        # The device itself stays (a soft logout keeps the device).
        self.assertIsNotNone(await self.devices.get_device(ALICE, "D1"))

    # -- refresh rotation, as storage/stores/tokens.py and the refresh_tokens table document --

    async def start_session(self) -> None:
        await self.tokens.add_access_token("acc0", ALICE, "D1", 1, 1000, "ref0", "hash0", 5000)

    async def test_unknown_refresh_token(self) -> None:
        await self.start_session()
        result = await self.tokens.rotate_refresh_token("no-such-hash", 10, new_tokens(1))
        self.assertEqual(result.outcome, RefreshOutcome.UNKNOWN)
        self.assertIsNone(result.user_id)
        self.assertIsNone(result.device_id)
        self.assertEqual(result.revoked_access_token_ids, [])
        self.assertIsNone(await self.tokens.get_access_token("acc1"))

    async def test_expired_refresh_token(self) -> None:
        await self.start_session()
        result = await self.tokens.rotate_refresh_token("hash0", 5000, new_tokens(1))
        self.assertEqual(result.outcome, RefreshOutcome.EXPIRED)
        self.assertEqual((result.user_id, result.device_id), (ALICE, "D1"))
        # Nothing was issued, nothing revoked.
        self.assertIsNone(await self.tokens.get_access_token("acc1"))
        self.assertEqual(await self.refresh_token_ids(ALICE, "D1"), {"ref0"})
        self.assertIsNotNone(await self.tokens.get_access_token("acc0"))
        # One millisecond earlier it still worked.
        result = await self.tokens.rotate_refresh_token("hash0", 4999, new_tokens(1))
        self.assertEqual(result.outcome, RefreshOutcome.ROTATED)

    async def test_rotation_issues_a_linked_pair(self) -> None:
        await self.start_session()
        result = await self.tokens.rotate_refresh_token("hash0", 10, new_tokens(1, expires=7777))
        self.assertEqual(result.outcome, RefreshOutcome.ROTATED)
        self.assertEqual((result.user_id, result.device_id), (ALICE, "D1"))
        self.assertEqual(result.revoked_access_token_ids, [])
        access = await self.tokens.get_access_token("acc1")
        self.assertEqual(
            (
                access.user_id,
                access.device_id,
                access.expires_ts,
                access.refresh_token_id,
                access.used,
            ),
            (ALICE, "D1", 7777, "ref1", False),
        )
        self.assertEqual(await self.refresh_token_ids(ALICE, "D1"), {"ref0", "ref1"})
        # The old access token lives on until it expires; the old refresh token is not yet
        # retired (the client may never have received the new pair).
        self.assertIsNotNone(await self.tokens.get_access_token("acc0"))

    async def test_repeating_an_unused_rotation_discards_the_unused_successor(self) -> None:
        """The client lost the refresh response: presenting the old token again works, and the
        pair it never received is thrown away."""
        await self.start_session()
        await self.tokens.rotate_refresh_token("hash0", 10, new_tokens(1))
        result = await self.tokens.rotate_refresh_token("hash0", 20, new_tokens(2))
        self.assertEqual(result.outcome, RefreshOutcome.ROTATED)
        self.assertEqual(result.revoked_access_token_ids, ["acc1"])
        self.assertIsNone(await self.tokens.get_access_token("acc1"))
        self.assertIsNotNone(await self.tokens.get_access_token("acc2"))
        self.assertEqual(await self.refresh_token_ids(ALICE, "D1"), {"ref0", "ref2"})
        # The discarded successor is unknown now.
        result = await self.tokens.rotate_refresh_token("hash1", 30, new_tokens(3))
        self.assertEqual(result.outcome, RefreshOutcome.UNKNOWN)

    async def test_using_the_new_access_token_retires_the_old_refresh_token(self) -> None:
        await self.start_session()
        await self.tokens.add_access_token("other", ALICE, "D2", 1, None, "refx", "hashx", 5000)
        await self.tokens.rotate_refresh_token("hash0", 10, new_tokens(1))
        # The access token issued with the retired refresh token goes with it.
        self.assertEqual(await self.tokens.mark_access_token_used("acc1", "ref1"), ["acc0"])
        self.assertIs((await self.tokens.get_access_token("acc1")).used, True)
        self.assertIsNone(await self.tokens.get_access_token("acc0"))

        # Presenting the retired token again means it leaked: the device session is revoked.
        result = await self.tokens.rotate_refresh_token("hash0", 20, new_tokens(2))
        self.assertEqual(result.outcome, RefreshOutcome.REUSED)
        self.assertEqual((result.user_id, result.device_id), (ALICE, "D1"))
        self.assertEqual(sorted(result.revoked_access_token_ids), ["acc1"])
        self.assertEqual(await self.access_token_ids(ALICE, "D1"), set())
        self.assertEqual(await self.refresh_token_ids(ALICE, "D1"), set())
        self.assertIsNone(await self.tokens.get_access_token("acc2"))
        # The successor died with the session; other devices are untouched.
        result = await self.tokens.rotate_refresh_token("hash1", 30, new_tokens(3))
        self.assertEqual(result.outcome, RefreshOutcome.UNKNOWN)
        self.assertEqual(await self.access_token_ids(ALICE, "D2"), {"other"})
        self.assertEqual(await self.refresh_token_ids(ALICE, "D2"), {"refx"})

    async def test_using_the_new_refresh_token_retires_the_old_one(self) -> None:
        await self.start_session()
        await self.tokens.rotate_refresh_token("hash0", 10, new_tokens(1))
        result = await self.tokens.rotate_refresh_token("hash1", 20, new_tokens(2))
        self.assertEqual(result.outcome, RefreshOutcome.ROTATED)
        # The first pair's access token is retired with its refresh token.
        self.assertEqual(result.revoked_access_token_ids, ["acc0"])
        self.assertIsNotNone(await self.tokens.get_access_token("acc1"))

        result = await self.tokens.rotate_refresh_token("hash0", 30, new_tokens(3))
        self.assertEqual(result.outcome, RefreshOutcome.REUSED)
        self.assertEqual(sorted(result.revoked_access_token_ids), ["acc1", "acc2"])
        self.assertEqual(await self.access_token_ids(ALICE, "D1"), set())
        self.assertIsNone(await self.tokens.get_access_token("acc3"))

    async def test_marking_a_plain_access_token_used(self) -> None:
        await self.tokens.add_access_token("a1", ALICE, "D1", 1, None)
        await self.tokens.mark_access_token_used("a1", None)
        self.assertIs((await self.tokens.get_access_token("a1")).used, True)
