"""The admin API on a large server: user and room list pages, and room purges against a
concurrent /sync, on a real Heddle server started here (and on Synapse, `--synapse`).

    PYTHONPATH=$PWD .venv/bin/python bench/admin_bench.py --db sqlite
    PYTHONPATH=$PWD .venv/bin/python bench/admin_bench.py \\
        --db postgresql://postgres@127.0.0.1:5432/postgres
    PYTHONPATH=$PWD .venv/bin/python bench/admin_bench.py --synapse   # Synapse, SQLite

1. Lists: `--users` local users (default 100,000) and `--rooms` rooms (default 10,000).
   Each list query is asked `--runs` times (default 20) for its first page and for a deep
   one (limit 100 each); reported: p50 and p95 latency in ms. User queries: the default
   order, `name=` matching a tenth of the users, `order_by=creation_ts`, `order_by=name`
   with `dir=b`. Room queries: the default order (by name), `order_by=joined_members`,
   `order_by=name` with `dir=b`, and `search_term=` matching a tenth of the rooms.
2. Purges: two rooms of `--events` messages each (default 100,000). One user syncs
   (`/sync?since=...&timeout=0`, one request after another) in a room of its own while
   another user sends there every 200 ms; the sync latency is measured for `--baseline`
   seconds with nothing else running, then while the first big room is deleted with purge
   (`DELETE /v2/rooms/{id}`), then while the second one's history is purged
   (`POST /v1/purge_history/{id}`, everything before now, local events too). Reported:
   sync p50/p99/max and count in each window, and how long each purge took.

Filling the server: Heddle's database is filled before the server starts, in a process of
its own (`populate`): users are inserted as registration writes them (a `users` and a
`profiles` row each: no devices, no password), rooms are created, joined and written to
through Heddle's own handlers (`RoomCreationHandler.create_room`, `MembershipHandler.join`,
`EventSendHandler.send_message`), so every event, state group and membership is what the
server writes. `--snapshot DIR` keeps the filled database (the SQLite file, or a
PostgreSQL template database) and reuses it on the next run, so that runs of two versions
of the code measure the same data.

Synapse (`--synapse`, SQLite, started from `$HEDDLE_SYNAPSE_PYTHON` or
`.synapse-venv`): its users are inserted into its `users` and `profiles` tables (what its
registration writes there); `--synapse-real-rooms` rooms are created through its client API
and the rest of `--rooms` are copies of their rows in the three tables its room list reads
(`rooms`, `room_stats_state`, `room_stats_current`) with new room IDs and names: rooms that
have no events, listed exactly as real ones. Its purge rooms are filled through its client
API, so with `--synapse-events` messages (default 5,000): sending 100,000 through it takes
too long here.

Results are printed as JSON, with the load average when each part started.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psycopg2
import yaml
from heddle_bench import ROOT, Client, free_port, running_server, wait_until_up

# Display names and room names carry one of these, so a search for one matches a tenth.
WORDS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
SEARCH_WORD = "carol"
PAGE = 100
SEND_EVERY_S = 0.2
PASSWORD = "bench-password"


def user_localpart(i: int) -> str:
    return f"user{i:06d}"


def display_name(i: int) -> str:
    return f"{WORDS[i % len(WORDS)].title()} {i}"


def room_name(i: int) -> str | None:
    # One room in twenty has no name: the lists put those last.
    return None if i % 20 == 0 else f"{WORDS[i % len(WORDS)].title()} room {i}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentiles(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1], 1),
    }


# ----- filling Heddle's database (its own process: Twisted, Heddle's handlers) -----------


def populate_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="admin_bench.py populate")
    parser.add_argument("config")
    parser.add_argument("out")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--rooms", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--schema-only", action="store_true")
    args = parser.parse_args(argv)
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(populate(reactor, args)))


async def populate(reactor: Any, args: argparse.Namespace) -> None:
    from twisted.internet import defer

    from homeserver.app import HomeServer
    from homeserver.auth.tokens import Requester
    from homeserver.config import load_config
    from homeserver.rooms.creation import RoomSpec

    hs = HomeServer(load_config(args.config), reactor)
    await hs.setup()
    if args.schema_only:
        await hs.stop()
        return
    server = hs.config.server_name

    def requester(i: int) -> Requester:
        return Requester(f"@{user_localpart(i)}:{server}", "BENCH", "t", False)

    started = time.monotonic()
    now = int(time.time() * 1000)
    # What registration writes: a users row and a profiles row (creation times spread over
    # a year, not in ID order, so ordering by them is a real sort).
    users = [
        (f"@{user_localpart(i)}:{server}", now - (i * 7919 % args.users) * 300_000,
         display_name(i))
        for i in range(args.users)
    ]

    def insert_users(txn: Any, batch: list[tuple[str, int, str]]) -> None:
        txn.execute_many(
            "INSERT INTO users (user_id, password_hash, created_ts, is_admin)"
            " VALUES (?, NULL, ?, FALSE)",
            [(uid, ts) for uid, ts, _ in batch],
        )
        txn.execute_many(
            "INSERT INTO profiles (user_id, displayname) VALUES (?, ?)",
            [(uid, name) for uid, _, name in batch],
        )

    for start in range(0, len(users), 5000):
        await hs.db.run_interaction("bench_users", insert_users, users[start : start + 5000])
    users_s = time.monotonic() - started

    started = time.monotonic()
    for i in range(args.rooms):
        owner = (i * 7) % args.users
        private = i % 4 == 0
        spec = RoomSpec(
            preset="private_chat" if private else "public_chat",
            visibility="public" if i % 3 == 0 else None,
            name=room_name(i),
            room_alias_name=f"{WORDS[i % len(WORDS)]}-{i}" if i % 10 == 0 else None,
        )
        room_id = await hs.room_creation.create_room(requester(owner), spec)
        # Between one and five members in the public rooms.
        for k in range(0 if private else i % 5):
            joiner = (owner + 1 + k * 1009) % args.users
            await hs.membership.join(requester(joiner), room_id)
    rooms_s = time.monotonic() - started

    started = time.monotonic()
    big_rooms = []
    for n in range(2):
        owner, other = args.users - 1 - 2 * n, args.users - 2 - 2 * n
        room_id = await hs.room_creation.create_room(
            requester(owner), RoomSpec(preset="public_chat", name=f"Big room {n}")
        )
        await hs.membership.join(requester(other), room_id)
        big_rooms.append((room_id, owner, other))

    async def fill(room_id: str, owner: int, other: int) -> None:
        for j in range(args.events):
            await hs.event_sender.send_message(
                requester(owner if j % 2 else other), room_id, "m.room.message",
                {"msgtype": "m.text", "body": f"message {j}"}, f"big{j}",
            )

    # The two rooms at once: their writers are independent.
    await defer.gatherResults(
        [defer.ensureDeferred(fill(*room)) for room in big_rooms], consumeErrors=True
    )
    events_s = time.monotonic() - started
    await hs.stop()
    Path(args.out).write_text(json.dumps({
        "big_rooms": [room_id for room_id, _, _ in big_rooms],
        "fill_seconds": {
            "users": round(users_s, 1), "rooms": round(rooms_s, 1), "events": round(events_s, 1)
        },
    }))


def heddle_database(config_path: Path) -> tuple[str, Path | None]:
    """The database URL of the config at `config_path`, and the SQLite file if it is one."""
    config = yaml.safe_load(config_path.read_text())
    url = config.get("database", {}).get("url", "sqlite:///homeserver.db")
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        return url, path if path.is_absolute() else config_path.parent / path
    return url, None


def pg_admin(url: str) -> Any:
    conn = psycopg2.connect(url.rsplit("/", 1)[0] + "/postgres")
    conn.autocommit = True
    return conn


def heddle_preparer(args: argparse.Namespace, info: dict[str, Any]) -> Callable[[Path], None]:
    """Fill the new server's database before it starts: from `--snapshot` when it holds
    one, else through `populate` (saved to `--snapshot` when given)."""

    def prepare(config_path: Path) -> None:
        url, sqlite_file = heddle_database(config_path)
        config = yaml.safe_load(config_path.read_text())
        info["shared_secret"] = config["registration"]["shared_secret"]
        key_path = Path(config["signing_key_path"])
        if not key_path.is_absolute():
            key_path = config_path.parent / key_path
        snapshot = Path(args.snapshot) / ("sqlite" if sqlite_file else "postgresql") \
            if args.snapshot else None
        pg_name = url.rsplit("/", 1)[1]
        template = f"admin_bench_{args.users}_{args.rooms}_{args.events}"
        if snapshot is not None and (snapshot / "populated.json").exists():
            info.update(json.loads((snapshot / "populated.json").read_text()))
            shutil.copy(snapshot / "signing.key", key_path)
            if sqlite_file is not None:
                shutil.copy(snapshot / "homeserver.db", sqlite_file)
            else:
                conn = pg_admin(url)
                with conn.cursor() as cur:
                    cur.execute(f'DROP DATABASE "{pg_name}"')
                    cur.execute(f'CREATE DATABASE "{pg_name}" TEMPLATE "{template}"')
                conn.close()
            info["filled_from_snapshot"] = str(snapshot)
            return
        sqlite_snapshot = Path(args.snapshot or "/nonexistent") / "sqlite"
        if sqlite_file is None and (sqlite_snapshot / "populated.json").exists():
            # PostgreSQL gets the rows the server wrote into the SQLite snapshot: the same
            # data, without filling it a second time at PostgreSQL's slower pace.
            populate_command(config_path, args, "--schema-only")
            copy_sqlite_to_postgresql(sqlite_snapshot / "homeserver.db", url)
            shutil.copy(sqlite_snapshot / "signing.key", key_path)
            info.update(json.loads((sqlite_snapshot / "populated.json").read_text()))
            info["filled_from"] = f"a copy of {sqlite_snapshot}"
            save_snapshot(url, pg_name, template, key_path, snapshot, info)
            return
        out = config_path.parent / "populated.json"
        populate_command(config_path, args)
        info.update(json.loads(out.read_text()))
        if snapshot is not None:
            if sqlite_file is not None:
                snapshot.mkdir(parents=True, exist_ok=True)
                shutil.copy(key_path, snapshot / "signing.key")
                shutil.copy(sqlite_file, snapshot / "homeserver.db")
                shutil.copy(out, snapshot / "populated.json")
            else:
                save_snapshot(url, pg_name, template, key_path, snapshot, info)

    return prepare


def populate_command(config_path: Path, args: argparse.Namespace, *extra: str) -> None:
    subprocess.run(
        [sys.executable, __file__, "populate", str(config_path),
         str(config_path.parent / "populated.json"), "--users", str(args.users),
         "--rooms", str(args.rooms), "--events", str(args.events), *extra],
        check=True,
    )


def save_snapshot(
    url: str, pg_name: str, template: str, key_path: Path, snapshot: Path | None,
    info: dict[str, Any],
) -> None:
    """Keep the filled PostgreSQL database as a template database for later runs."""
    if snapshot is None:
        return
    snapshot.mkdir(parents=True, exist_ok=True)
    shutil.copy(key_path, snapshot / "signing.key")
    conn = pg_admin(url)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{template}"')
        cur.execute(f'CREATE DATABASE "{template}" TEMPLATE "{pg_name}"')
    conn.close()
    kept = {k: v for k, v in info.items() if k in ("big_rooms", "fill_seconds", "filled_from")}
    (snapshot / "populated.json").write_text(json.dumps(kept))


def copy_sqlite_to_postgresql(sqlite_path: Path, url: str) -> None:
    """Every row of every table of the SQLite database into the PostgreSQL one, which has
    the same schema (its migrations applied, no rows yet): booleans become booleans."""
    from psycopg2.extras import execute_values

    source = sqlite3.connect(sqlite_path)
    target = psycopg2.connect(url)
    with target, target.cursor() as cur:
        # Rows arrive in table order, not in the order foreign keys want.
        cur.execute("SET session_replication_role = replica")
        tables = [
            row[0]
            for row in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not row[0].startswith("sqlite_") and row[0] != "schema_migrations"
        ]
        for table in tables:
            cur.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = %s",
                (table,),
            )
            types = dict(cur.fetchall())
            if not types:
                continue
            read = source.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in read.description]
            booleans = [i for i, c in enumerate(columns) if types.get(c) == "boolean"]
            while rows := read.fetchmany(5000):
                if booleans:
                    rows = [
                        tuple(bool(v) if i in booleans and v is not None else v
                              for i, v in enumerate(row))
                        for row in rows
                    ]
                execute_values(
                    cur,
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s",
                    rows, page_size=5000,
                )
        # Identity columns continue after the rows copied.
        cur.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE is_identity = 'YES' AND table_schema = 'public'"
        )
        for table, column in cur.fetchall():
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                f" COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
            )
    source.close()
    target.close()


# ----- HTTP -------------------------------------------------------------------------------


class Api(Client):
    """A client (`heddle_bench.Client`) that also times its requests."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str = "") -> None:
        super().__init__(session, base)
        self.token = token

    async def timed(self, method: str, path: str, body: Any = None) -> tuple[float, Any]:
        started = time.perf_counter()
        data = await self.call(method, path, body)
        return (time.perf_counter() - started) * 1000, data


async def register(api: Api, secret: str, localpart: str, admin: bool = False) -> Api:
    """Shared-secret registration (Synapse's admin API, which Heddle serves too)."""
    path = "/_synapse/admin/v1/register"
    nonce = (await api.call("GET", path))["nonce"]
    mac = hmac.new(
        secret.encode(),
        b"\x00".join([nonce.encode(), localpart.encode(), PASSWORD.encode(),
                      b"admin" if admin else b"notadmin"]),
        hashlib.sha1,
    ).hexdigest()
    data = await api.call("POST", path, {
        "nonce": nonce, "username": localpart, "password": PASSWORD, "admin": admin, "mac": mac,
    })
    return Api(api.session, api.base, data["access_token"])


# ----- part 1: list pages -----------------------------------------------------------------

def list_queries(users: int, rooms: int) -> dict[str, tuple[str, int]]:
    """name -> (path and query, `from` of its deep page)."""
    deep_users, deep_rooms = max(0, users - 10 * PAGE), max(0, rooms - 10 * PAGE)
    return {
        "users_default": ("/_synapse/admin/v2/users?", deep_users),
        "users_name_search": (f"/_synapse/admin/v2/users?name={SEARCH_WORD}&", users // 20),
        "users_by_creation_ts": ("/_synapse/admin/v2/users?order_by=creation_ts&", deep_users),
        "users_by_name_backwards": ("/_synapse/admin/v2/users?order_by=name&dir=b&", deep_users),
        "rooms_default": ("/_synapse/admin/v1/rooms?", deep_rooms),
        "rooms_by_joined_members": (
            "/_synapse/admin/v1/rooms?order_by=joined_members&", deep_rooms
        ),
        "rooms_by_name_backwards": ("/_synapse/admin/v1/rooms?order_by=name&dir=b&", deep_rooms),
        "rooms_search_term": (
            f"/_synapse/admin/v1/rooms?search_term={SEARCH_WORD}&", rooms // 20
        ),
    }


async def list_pages(
    admin: Api, users: int, rooms: int, runs: int, only: list[str] | None = None
) -> dict[str, Any]:
    results: dict[str, Any] = {"load": load()}
    for name, (path, deep) in list_queries(users, rooms).items():
        if only and name not in only:
            continue
        for page, offset in (("first", 0), ("deep", deep)):
            url = f"{path}limit={PAGE}&from={offset}"
            await admin.call("GET", url)  # warm
            samples = []
            returned = total = None
            for _ in range(runs):
                ms, data = await admin.timed("GET", url)
                samples.append(ms)
                listed = data.get("users", data.get("rooms", []))
                returned, total = len(listed), data.get("total", data.get("total_rooms"))
            figures = percentiles(samples)
            results[f"{name}_{page}"] = {
                "from": offset, "returned": returned, "total": total,
                "p50_ms": figures["p50_ms"], "p95_ms": figures["p95_ms"],
            }
    return results


# ----- part 2: purges against a concurrent /sync -------------------------------------------


class SyncLoad:
    """One user syncing in its own room, one request after another, while another user
    sends there every `SEND_EVERY_S`: the latencies of the syncs."""

    def __init__(self, syncer: Api, talker: Api, room_id: str) -> None:
        self.syncer, self.talker, self.room_id = syncer, talker, room_id
        self.latencies: list[float] = []
        self.since = ""
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self.since = (await self.syncer.call("GET", "/_matrix/client/v3/sync"))["next_batch"]

    async def _sync_loop(self) -> None:
        while not self._stop.is_set():
            ms, data = await self.syncer.timed(
                "GET", f"/_matrix/client/v3/sync?timeout=0&since={quote(self.since)}"
            )
            self.latencies.append(ms)
            self.since = data["next_batch"]

    async def _send_loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            await self.talker.call(
                "PUT",
                f"/_matrix/client/v3/rooms/{quote(self.room_id)}/send/m.room.message/"
                f"{uuid.uuid4().hex}",
                {"msgtype": "m.text", "body": f"talk {n}"},
            )
            await asyncio.sleep(SEND_EVERY_S)

    async def during(self, work: Awaitable[Any]) -> tuple[list[float], Any]:
        """Run the load until `work` finishes; the sync latencies meanwhile, and its result."""
        self.latencies = []
        self._stop.clear()
        loops = [asyncio.ensure_future(self._sync_loop()), asyncio.ensure_future(self._send_loop())]
        try:
            result = await work
        finally:
            self._stop.set()
            await asyncio.gather(*loops)
        return self.latencies, result


async def wait_for_status(admin: Api, path: str) -> str:
    while True:
        await asyncio.sleep(0.5)
        status = (await admin.call("GET", path))["status"]
        if status in ("complete", "failed"):
            return status


async def purges(
    api: Api, admin: Api, secret: str, big_rooms: list[str], baseline_s: float
) -> dict[str, Any]:
    syncer = await register(api, secret, "syncer")
    talker = await register(api, secret, "talker")
    room_id = (await talker.call("POST", "/_matrix/client/v3/createRoom",
                                 {"preset": "public_chat"}))["room_id"]
    await syncer.call("POST", f"/_matrix/client/v3/join/{quote(room_id)}", {})
    load_ = SyncLoad(syncer, talker, room_id)
    await load_.start()
    results: dict[str, Any] = {"load": load()}
    latencies, _ = await load_.during(asyncio.sleep(baseline_s))
    results["sync_baseline"] = percentiles(latencies)

    # (name, method, path, body, the answer's ID key, its status path)
    tasks = (
        ("room_delete", "DELETE", f"/_synapse/admin/v2/rooms/{quote(big_rooms[0])}",
         {"purge": True}, "delete_id", "/_synapse/admin/v2/rooms/delete_status/"),
        ("purge_history", "POST", f"/_synapse/admin/v1/purge_history/{quote(big_rooms[1])}",
         {"purge_up_to_ts": int(time.time() * 1000), "delete_local_events": True},
         "purge_id", "/_synapse/admin/v1/purge_history_status/"),
    )
    for name, method, path, body, id_key, status_path in tasks:

        async def run(method: str = method, path: str = path, body: Any = body,
                      id_key: str = id_key, status_path: str = status_path) -> tuple[float, str]:
            started = time.monotonic()
            task_id = (await admin.call(method, path, body))[id_key]
            status = await wait_for_status(admin, status_path + task_id)
            return time.monotonic() - started, status

        results[f"load_before_{name}"] = load()
        latencies, (seconds, status) = await load_.during(run())
        results[f"sync_during_{name}"] = percentiles(latencies)
        results[name] = {"seconds": round(seconds, 1), "status": status}
    return results


# ----- Heddle -----------------------------------------------------------------------------


async def bench_heddle(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {"load_at_start": load()}
    prepare = heddle_preparer(args, info)
    async with running_server(args.db, prepare=prepare) as base:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            api = Api(session, base)
            secret = info.pop("shared_secret")
            admin = await register(api, secret, "benchadmin", admin=True)
            result: dict[str, Any] = {"server": "heddle", "db": args.db.split("@")[-1], **info}
            if "lists" in args.parts:
                result["lists"] = await list_pages(
                    admin, args.users, args.rooms, args.runs, args.queries
                )
            if "purge" in args.parts:
                result["purges"] = await purges(api, admin, secret, info["big_rooms"], args.baseline)
            return result


# ----- Synapse ----------------------------------------------------------------------------


def synapse_fill_users(db_path: Path, server_name: str, users: int) -> None:
    """What Synapse's registration writes into `users` and `profiles` (no devices)."""
    now = int(time.time())
    conn = sqlite3.connect(db_path, timeout=60)
    with conn:
        conn.executemany(
            "INSERT INTO users (name, password_hash, creation_ts, admin, is_guest,"
            " deactivated, shadow_banned, approved, locked, suspended)"
            " VALUES (?, NULL, ?, 0, 0, 0, FALSE, TRUE, FALSE, FALSE)",
            [(f"@{user_localpart(i)}:{server_name}", now - (i * 7919 % users) * 300)
             for i in range(users)],
        )
        conn.executemany(
            "INSERT INTO profiles (user_id, displayname, full_user_id) VALUES (?, ?, ?)",
            [(user_localpart(i), display_name(i), f"@{user_localpart(i)}:{server_name}")
             for i in range(users)],
        )
    conn.close()


def synapse_copy_rooms(db_path: Path, server_name: str, real: list[str], rooms: int) -> None:
    """Rooms `len(real)`..`rooms`-1: copies of the real rooms' rows in the tables Synapse's
    room list reads, with new IDs, names and member counts (those of Heddle's rooms)."""
    conn = sqlite3.connect(db_path, timeout=60)
    conn.row_factory = sqlite3.Row
    with conn:
        tables = {}
        for table in ("rooms", "room_stats_state", "room_stats_current"):
            tables[table] = [
                conn.execute(f"SELECT * FROM {table} WHERE room_id = ?", (room_id,)).fetchone()
                for room_id in real
            ]
        for i in range(len(real), rooms):
            room_id = f"!copy{i:06d}:{server_name}"
            for table, rows in tables.items():
                row = dict(rows[i % len(real)])
                row["room_id"] = room_id
                if table == "room_stats_state":
                    row["name"] = room_name(i)
                    row["canonical_alias"] = (
                        f"#{WORDS[i % len(WORDS)]}-{i}:{server_name}" if i % 10 == 0 else None
                    )
                if table == "room_stats_current":
                    members = 1 if i % 4 == 0 else 1 + i % 5
                    row["joined_members"] = row["local_users_in_room"] = members
                if table == "rooms":
                    row["is_public"] = i % 3 == 0
                columns = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})",
                             list(row.values()))
    conn.close()


async def synapse_fill_big_room(members: list[Api], events: int) -> str:
    room_id = (await members[0].call("POST", "/_matrix/client/v3/createRoom",
                                     {"preset": "public_chat", "name": "Big room"}))["room_id"]
    await members[1].call("POST", f"/_matrix/client/v3/join/{quote(room_id)}", {})
    for j in range(events):
        await members[j % 2].call(
            "PUT",
            f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/big{j}",
            {"msgtype": "m.text", "body": f"message {j}"},
        )
    return room_id


async def bench_synapse(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.synapse_peer import SynapsePeer, require_synapse

    python = require_synapse()
    work_dir = Path(tempfile.mkdtemp(prefix="heddle-admin-bench-synapse-"))
    port = free_port()
    peer = SynapsePeer(work_dir, port=port, extra_config={
        "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http",
                       "tls": False, "resources": [{"names": ["client"], "compress": False}]}],
    })
    # The peer's files (keys, config with rate limits off); logging at WARNING, not the
    # peer's INFO (which logs every SQL statement).
    peer.write_files()
    log_config = yaml.safe_load((work_dir / "log_config.yaml").read_text())
    log_config["root"]["level"] = "WARNING"
    log_config["loggers"] = {}
    (work_dir / "log_config.yaml").write_text(yaml.safe_dump(log_config))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    process = subprocess.Popen(
        [python, "-m", "synapse.app.homeserver", "-c", str(peer.config_path)],
        cwd=work_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {"server": "synapse", "db": "sqlite", "load_at_start": load()}
    try:
        await wait_until_up(base, 120.0)
        db_path = work_dir / "homeserver.db"
        secret = peer.registration_shared_secret
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            api = Api(session, base)
            admin = await register(api, secret, "benchadmin", admin=True)
            started = time.monotonic()
            synapse_fill_users(db_path, peer.server_name, args.users)
            users_s = time.monotonic() - started
            started = time.monotonic()
            real = []
            for i in range(min(args.synapse_real_rooms, args.rooms)):
                body: dict[str, Any] = {"preset": "private_chat" if i % 4 == 0 else "public_chat"}
                if room_name(i) is not None:
                    body["name"] = room_name(i)
                real.append((await admin.call("POST", "/_matrix/client/v3/createRoom", body))["room_id"])
            synapse_copy_rooms(db_path, peer.server_name, real, args.rooms)
            rooms_s = time.monotonic() - started
            started = time.monotonic()
            senders = [await register(api, secret, f"sender{n}") for n in range(4)]
            big_rooms = await asyncio.gather(
                synapse_fill_big_room(senders[0:2], args.synapse_events),
                synapse_fill_big_room(senders[2:4], args.synapse_events),
            )
            result["fill_seconds"] = {
                "users": round(users_s, 1), "rooms": round(rooms_s, 1),
                "events": round(time.monotonic() - started, 1),
            }
            result["events_per_purged_room"] = args.synapse_events
            if "lists" in args.parts:
                result["lists"] = await list_pages(
                    admin, args.users, args.rooms, args.runs, args.queries
                )
            if "purge" in args.parts:
                result["purges"] = await purges(api, admin, secret, list(big_rooms), args.baseline)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return result


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", default="sqlite", help="'sqlite' or a PostgreSQL admin URL")
    parser.add_argument("--synapse", action="store_true", help="measure Synapse (SQLite) instead")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rooms", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000, help="messages per purged room")
    parser.add_argument("--synapse-events", type=int, default=5_000)
    parser.add_argument("--synapse-real-rooms", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20, help="requests per list page")
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds of sync alone")
    parser.add_argument("--parts", default="lists,purge")
    parser.add_argument(
        "--queries", help="list queries to ask, comma-separated (default: all; see list_queries)"
    )
    parser.add_argument("--snapshot", help="a directory keeping the filled database")
    args = parser.parse_args(argv)
    args.parts = args.parts.split(",")
    args.queries = args.queries.split(",") if args.queries else None
    result = await (bench_synapse(args) if args.synapse else bench_heddle(args))
    print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["populate"]:
        populate_main(sys.argv[2:])
    else:
        asyncio.run(main(sys.argv[1:]))
