"""One writing process per database: a second Heddle on the same SQLite file or PostgreSQL
database refuses to start (in-process and through the `heddle` command) and starts once the
first has stopped; a server that loses the lock stops writing and stops itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg2
import yaml
from twisted.internet import defer, reactor
from twisted.trial import unittest

from homeserver.app import DatabaseInUseError, HomeServer
from storage.database import Transaction, WriterLockLostError
from storage.engines.postgres import PostgresEngine
from tests.harness import (
    PASSWORD,
    POSTGRES_ADMIN_URL,
    HomeserverTestCase,
    on_both_engines,
    postgres_database_url,
    reset_postgres_database,
)
from tests.test_cli import CliTestCase, child_env, free_port

API = "/_matrix/client/v3"


def refusal(location: str) -> str:
    return (
        f"another Heddle process is already writing to this database ({location});"
        " stop it first"
    )


def count_users(txn: Transaction) -> int:
    row = txn.select_one("SELECT COUNT(*) FROM users")
    assert row is not None
    return int(row[0])


class WriterLockCase(HomeserverTestCase):
    def location(self) -> str:
        return self.hs.db.engine.location()

    def another_server(self, **kwargs: Any) -> HomeServer:
        """A second HomeServer on this test's database, stopped when the test ends."""
        other = HomeServer(self.hs.config, reactor, **kwargs)
        self.addCleanup(lambda: defer.ensureDeferred(other.stop()))  # type: ignore[attr-defined]
        return other

    def record_fatal_errors(self) -> list[str | None]:
        """Keep a lost lock from stopping the test run's reactor; note the calls instead."""
        calls: list[str | None] = []
        self.hs.on_fatal_error = lambda: calls.append(self.hs.fatal_error)
        return calls


@on_both_engines
class WriterLockTests(WriterLockCase):
    async def test_second_writer_is_refused_until_the_first_stops(self) -> None:
        alice = (await self.register("alice"))["access_token"]
        second = self.another_server()
        with self.assertRaises(DatabaseInUseError) as refused:  # type: ignore[attr-defined]
            await second.setup()
        self.assertEqual(str(refused.exception), refusal(self.location()))  # type: ignore[attr-defined]
        # The first server is unaffected.
        r = await self.request("POST", f"{API}/createRoom", {}, token=alice)
        self.assertEqual(r.code, 200, r)  # type: ignore[attr-defined]

        await self.hs.stop()
        third = self.another_server()
        await third.setup()
        third.start_listening()
        third_url = f"http://127.0.0.1:{third.ports[0].getHost().port}"
        # It writes: a new room and a message in it.
        r = await self.request("POST", f"{API}/createRoom", {}, token=alice, base_url=third_url)
        self.assertEqual(r.code, 200, r)  # type: ignore[attr-defined]
        room_id = r.json["room_id"]
        r = await self.request(
            "PUT",
            f"{API}/rooms/{room_id}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "hello"},
            token=alice,
            base_url=third_url,
        )
        self.assertEqual(r.code, 200, r)  # type: ignore[attr-defined]

    async def test_server_without_the_lock_starts_next_to_the_writer(self) -> None:
        # What `heddle register-user` does next to a running server.
        second = self.another_server(writer_lock=False)
        await second.setup()
        await second.registration.register("bob", PASSWORD)
        await self.login("bob")

    async def test_lost_lock_refuses_every_transaction_and_stops_the_server(self) -> None:
        fatal = self.record_fatal_errors()
        self.assertTrue(await self.hs.db.check_writer_lock())
        await self.break_writer_lock()

        self.assertFalse(await self.hs.db.check_writer_lock())
        message = (
            f"lost the writer lock on the database ({self.location()});"
            " stopping, since another process may be writing to it"
        )
        self.assertEqual(fatal, [message])  # type: ignore[attr-defined]
        with self.assertRaises(WriterLockLostError):  # type: ignore[attr-defined]
            await self.hs.db.run_interaction("count_users", count_users)
        r = await self.request(
            "POST",
            f"{API}/register",
            {"username": "carol", "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
        )
        self.assertEqual(r.code, 500, r)  # type: ignore[attr-defined]
        # The lock is free for another process: the reason this one must not write on.
        await self.another_server().setup()
        # Reported once, however often it is found lost.
        self.assertFalse(await self.hs.db.check_writer_lock())
        self.assertEqual(len(fatal), 1)  # type: ignore[attr-defined]

    async def break_writer_lock(self) -> None:
        if self.engine == "sqlite":
            # The lock file replaced behind the server's back: whoever locks the new file
            # would write next to it.
            lock_path = Path(self.location() + ".lock")
            lock_path.unlink()
            lock_path.touch()
        else:
            terminate_backends(self.hs.config.database_url, pool=False)


LOCK_SESSION = "heddle writer lock"


def terminate_backends(database_url: str, lock: bool = True, pool: bool = True) -> None:
    """End sessions on one database from outside, as a server restart or an administrator
    would: the writer lock's, the connection pool's, or both."""
    database = database_url.rsplit("/", 1)[1]
    admin = psycopg2.connect(POSTGRES_ADMIN_URL)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()"
                " AND ((%s AND application_name = %s) OR (%s AND application_name <> %s))",
                (database, lock, LOCK_SESSION, pool, LOCK_SESSION),
            )
            assert cur.fetchall(), "no session to terminate"
    finally:
        admin.close()


class PostgresReconnectTests(WriterLockCase, unittest.TestCase):
    engine = "postgresql"

    async def test_pool_does_not_reconnect_without_the_lock(self) -> None:
        """A database restart ends every session, the lock's too: the pool, finding its
        connection gone, checks the lock before reconnecting instead of writing on."""
        fatal = self.record_fatal_errors()
        self.assertEqual(await self.hs.db.run_interaction("count_users", count_users), 0)
        terminate_backends(self.hs.config.database_url)
        with self.assertRaises(WriterLockLostError):
            await self.hs.db.run_interaction("count_users", count_users)
        self.assertEqual(len(fatal), 1)

    async def test_pool_reconnects_while_the_lock_holds(self) -> None:
        """Guard for the test above: a pool connection lost on its own is reopened."""
        self.record_fatal_errors()
        self.assertEqual(await self.hs.db.run_interaction("count_users", count_users), 0)
        terminate_backends(self.hs.config.database_url, lock=False)
        self.assertEqual(await self.hs.db.run_interaction("count_users", count_users), 0)
        self.assertTrue(await self.hs.db.check_writer_lock())


class WriterLockCliTests(CliTestCase):
    """`heddle` started twice on one database: the second says why in one line and exits."""

    async def second_config(self, config_path: Path) -> Path:
        """The same server and database (SQLite: the same file), on other ports."""
        raw = yaml.safe_load(config_path.read_text())
        for listener in raw["listeners"]:
            listener["port"] = free_port()
        second = config_path.with_name("second.yaml")
        second.write_text(yaml.safe_dump(raw))
        return second

    async def check_refused_until_the_first_stops(
        self, config_path: Path, location: str, env: dict[str, str]
    ) -> None:
        second_path = await self.second_config(config_path)
        first = await self.start_server(
            "--config", str(config_path), base_url=self.client_url(config_path), env=env
        )
        proc = await self.heddle("--config", str(second_path), env=env)
        self.assertEqual(proc.exit_code, 1, proc)
        line = self.assertOneLineError(proc)
        self.assertEqual(line, "heddle: " + refusal(location))

        await self.stop_server(first)
        second = await self.start_server(
            "--config", str(second_path), base_url=self.client_url(second_path), env=env
        )
        await self.stop_server(second)

    async def test_sqlite(self) -> None:
        config_path = await self.generate("localhost")
        location = str(config_path.parent / "homeserver.db")
        await self.check_refused_until_the_first_stops(config_path, location, child_env())

    async def test_postgresql(self) -> None:
        config_path = await self.generate("localhost")
        url = postgres_database_url()
        reset_postgres_database(url)
        await self.check_refused_until_the_first_stops(
            config_path, url, child_env(HEDDLE_DATABASE_URL=url)
        )



class PostgresLockReleaseTests(unittest.TestCase):
    def test_a_released_lock_can_be_taken_at_once(self) -> None:
        """A restart takes the lock right after the stopped server released it: releasing
        must not leave it to the server's backend to end the session in its own time."""
        engine = PostgresEngine(postgres_database_url(7))
        lock = engine.try_writer_lock()
        assert lock is not None
        self.addCleanup(lock.release)
        self.assertIsNone(engine.try_writer_lock())
        # Released on the server while the session still lives (as a closed connection's
        # session may, for a while): the next taker does not depend on when it ends.
        lock.unlock()
        self.assertEqual(lock._conn.closed, 0)
        again = engine.try_writer_lock()
        self.assertIsNotNone(again)
        assert again is not None
        again.release()
        lock.release()
        after = engine.try_writer_lock()
        self.assertIsNotNone(after)
        assert after is not None
        after.release()
