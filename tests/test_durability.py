"""Durability: an event whose send was answered 200 survives the server being killed.

A real Heddle server (the `heddle` console script, a subprocess) on each engine takes
concurrent sends; every event ID answered with 200 is recorded; the server is killed with
SIGKILL while sends are still in flight, started again on the same database, and every
recorded event must be there (GET /event), once, in /messages, in the order each sender sent
its own. (Why this holds for a process kill, and what it does not promise for a power cut:
docs/architecture.md, "Durability".)

Also checked, on a server in the test process: the settings that durability rests on, read
on the database connections Heddle itself opens (SQLite in WAL mode with synchronous=NORMAL,
PostgreSQL with synchronous_commit on).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from twisted.internet import defer
from twisted.trial import unittest

from bench.servers import free_port, write_heddle_config
from tests.harness import (
    HomeserverTestCase,
    ensure_deferred,
    nio,
    on_both_engines,
    postgres_database_url,
    reset_postgres_database,
)

HEDDLE = Path(sys.executable).with_name("heddle")
SENDERS = 6
# Sends acknowledged before the kill (the kill comes once this many are in, sends still
# in flight).
ACKED_BEFORE_KILL = 120


class ServerProcess:
    """A `heddle` subprocess from a config file; started again on the same one."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        # Right after a SIGKILL, PostgreSQL may not yet have noticed the old process's
        # connections close, and so still hold its writer lock: the new one then stops at
        # once ("already writing"); try again for a while.
        for _ in range(40):
            if await self._start_once():
                return
            await asyncio.sleep(0.5)
        raise AssertionError("the database's writer lock was never released")

    async def _start_once(self) -> bool:
        """Start and wait for it to answer: True; False if it found the writer lock held."""
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(HEDDLE), "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.poll() is not None:
                    with open(self.log_path, "rb") as log:
                        log.seek(logged)
                        if b"already writing" in log.read():
                            return False
                    raise AssertionError(
                        f"heddle exited with {self.process.returncode}:\n"
                        + self.log_path.read_text(errors="replace")[-3000:]
                    )
                try:
                    async with session.get(self.base + "/_matrix/client/versions") as r:
                        if r.status == 200:
                            return True
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("heddle did not answer within a minute")
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, nothing is flushed or closed."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def call(
    session: aiohttp.ClientSession, base: str, method: str, path: str,
    token: str | None = None, body: Any = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, base + path, json=body, headers=headers) as r:
        return r.status, await r.json()


class KillMidStreamMixin:
    engine = "sqlite"

    def database_section(self, data_dir: Path) -> dict[str, Any] | None:
        if self.engine == "sqlite":
            return None  # generate-config's: a SQLite file in the data directory
        url = postgres_database_url()
        reset_postgres_database(url)
        return {"url": url}

    @ensure_deferred
    async def test_acknowledged_events_survive_sigkill(self) -> None:
        case: unittest.TestCase = self  # type: ignore[assignment]
        data_dir = Path(case.mktemp()).resolve()
        data_dir.mkdir(parents=True)
        port = free_port()
        config_path = write_heddle_config(
            data_dir, port, database=self.database_section(data_dir), heddle=HEDDLE
        )
        server = ServerProcess(config_path, port, data_dir / "server.log")
        case.addCleanup(server.stop)
        await nio(server.start())
        await nio(self.check_survival(server))

    async def check_survival(self, server: ServerProcess) -> None:
        base = server.base
        async with aiohttp.ClientSession() as session:
            tokens = []
            for i in range(SENDERS):
                code, data = await call(
                    session, base, "POST", "/_matrix/client/v3/register",
                    body={"username": f"writer{i}", "password": "durable-pw",
                          "auth": {"type": "m.login.dummy"}},
                )
                assert code == 200, data
                tokens.append(data["access_token"])
            code, data = await call(
                session, base, "POST", "/_matrix/client/v3/createRoom", tokens[0],
                {"preset": "public_chat"},
            )
            assert code == 200, data
            room_id = data["room_id"]
            room = quote(room_id)
            for token in tokens[1:]:
                code, data = await call(
                    session, base, "POST", f"/_matrix/client/v3/join/{room}", token, {}
                )
                assert code == 200, data

            # sender -> [(seq, event_id)] for every send answered 200.
            acked: dict[int, list[tuple[int, str]]] = {i: [] for i in range(SENDERS)}
            enough = asyncio.Event()

            async def write(sender: int) -> None:
                seq = 0
                while True:
                    path = (f"/_matrix/client/v3/rooms/{room}/send/m.room.message/"
                            f"{secrets.token_hex(8)}")
                    try:
                        code, data = await call(
                            session, base, "PUT", path, tokens[sender],
                            {"msgtype": "m.text", "body": f"w{sender} {seq}"},
                        )
                    except (aiohttp.ClientError, TimeoutError):
                        return  # the server is gone
                    assert code == 200, data
                    acked[sender].append((seq, data["event_id"]))
                    seq += 1
                    if sum(len(a) for a in acked.values()) >= ACKED_BEFORE_KILL:
                        enough.set()

            writers = [asyncio.ensure_future(write(i)) for i in range(SENDERS)]
            await asyncio.wait_for(enough.wait(), 120)
            # Every writer has a send in flight right now.
            server.kill()
            await asyncio.wait_for(asyncio.gather(*writers), 60)
        acked_total = sum(len(a) for a in acked.values())
        assert acked_total >= ACKED_BEFORE_KILL, acked_total

        await server.start()
        async with aiohttp.ClientSession() as session:
            for sender, sends in acked.items():
                for seq, event_id in sends:
                    code, data = await call(
                        session, base, "GET",
                        f"/_matrix/client/v3/rooms/{room}/event/{quote(event_id)}",
                        tokens[0],
                    )
                    assert code == 200, (event_id, code, data)
                    assert data["content"]["body"] == f"w{sender} {seq}", data

            # The room's whole timeline, newest first.
            timeline: list[dict[str, Any]] = []
            from_token = None
            while True:
                path = f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"
                if from_token:
                    path += f"&from={quote(from_token)}"
                code, data = await call(session, base, "GET", path, tokens[0])
                assert code == 200, data
                timeline.extend(data["chunk"])
                from_token = data.get("end")
                if not from_token or not data["chunk"]:
                    break
            ids = [e["event_id"] for e in timeline]
            assert len(ids) == len(set(ids)), "an event appears twice in /messages"
            position = {event_id: n for n, event_id in enumerate(reversed(ids))}
            for sender, sends in acked.items():
                lost = [event_id for _, event_id in sends if event_id not in position]
                assert not lost, f"writer{sender}: acknowledged events missing: {lost}"
                order = [position[event_id] for _, event_id in sends]
                assert order == sorted(order), f"writer{sender}: events out of order"

            # And the server goes on: a new send is answered and readable.
            code, data = await call(
                session, base, "PUT",
                f"/_matrix/client/v3/rooms/{room}/send/m.room.message/after-restart",
                tokens[1], {"msgtype": "m.text", "body": "after the restart"},
            )
            assert code == 200, data


class KillMidStreamTests_sqlite(KillMidStreamMixin, unittest.TestCase):
    engine = "sqlite"


class KillMidStreamTests_postgresql(KillMidStreamMixin, unittest.TestCase):
    engine = "postgresql"


class DurabilitySettingsTests(HomeserverTestCase):
    """The settings read back on Heddle's own pool connections."""

    @ensure_deferred
    async def test_commit_durability_settings(self) -> None:
        # Every connection of the pool, not just one: as many transactions as the pool has
        # threads, each waiting for all the others, so each is on a connection of its own.
        size = self.hs.db.engine.max_connections
        barrier = threading.Barrier(size, timeout=30)

        def read(txn: Any) -> list[Any]:
            barrier.wait()
            if self.engine == "sqlite":
                txn.execute("PRAGMA journal_mode")
                (journal,) = txn.fetchone()
                txn.execute("PRAGMA synchronous")
                (synchronous,) = txn.fetchone()
                return [str(journal).lower(), synchronous]
            txn.execute("SHOW synchronous_commit")
            (commit,) = txn.fetchone()
            txn.execute("SHOW fsync")
            (fsync,) = txn.fetchone()
            return [commit, fsync]

        results = await defer.gatherResults([
            defer.ensureDeferred(self.hs.db.run_interaction("durability_settings", read))
            for _ in range(size)
        ])
        assert len(results) == size
        for result in results:
            if self.engine == "sqlite":
                # WAL, and 1 = NORMAL: a commit is in the WAL file (the OS's page cache)
                # when it returns; 2 = FULL would also fsync the WAL at every commit.
                assert result == ["wal", 1], result
            else:
                assert result == ["on", "on"], result


on_both_engines(DurabilitySettingsTests)
