"""Benchmarks against a running Heddle server, started here from a fresh config.

    .venv/bin/python bench/heddle_bench.py --db sqlite
    .venv/bin/python bench/heddle_bench.py --db postgresql://postgres@127.0.0.1:5432/postgres

Scenarios: message send throughput (20 senders, one room), send-to-receive latency
seen by 50 syncing clients, initial sync of a user in 100 rooms, and /messages pagination
over 2,000 events. Results are printed as JSON. The clients are plain aiohttp (no Matrix
SDK), so what is measured is the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psycopg2
import yaml

ROOT = Path(__file__).resolve().parents[1]
HEDDLE = Path(sys.executable).parent / "heddle"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_pg_database(admin_url: str) -> tuple[str, str]:
    name = f"heddle_bench_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name, name


def drop_pg_database(admin_url: str, name: str) -> None:
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


async def wait_until_up(base: str, timeout_s: float) -> None:
    """Return once the server at `base` answers /versions."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(base + "/_matrix/client/versions") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("server did not start")


@asynccontextmanager
async def running_server(
    db: str,
    pids: list[int] | None = None,
    about: dict[str, Any] | None = None,
    config_sections: dict[str, dict[str, Any]] | None = None,
    prepare: Callable[[Path], None] | None = None,
):
    """Start a server; yield its base URL. Its process ID is appended to `pids`, and `about`
    gets "pid" and "metrics" (its /metrics URL), when given. `config_sections` are merged
    into the generated config's sections (`{"websocket": {"max_connections": 20000}}`).
    `prepare` is called with the config file's path once it is written and before the
    server starts (to fill its database, say)."""
    data_dir = Path(tempfile.mkdtemp(prefix="heddle-bench-"))
    port = free_port()
    subprocess.run(
        [str(HEDDLE), "generate-config", "--server-name", "bench.local", "--data-dir",
         str(data_dir), "--port", str(port)],
        check=True, stdout=subprocess.DEVNULL,
    )
    config_path = data_dir / "homeserver.yaml"
    config = yaml.safe_load(config_path.read_text())
    metrics_port = free_port()
    config["listeners"] = [
        {"type": "client", "bind_address": "127.0.0.1", "port": port},
        {"type": "metrics", "bind_address": "127.0.0.1", "port": metrics_port},
    ]
    config["rate_limits"] = {"enabled": False}
    config["auth"]["bcrypt_rounds"] = 4
    config["logging"] = {"level": "WARNING"}
    for section, values in (config_sections or {}).items():
        config.setdefault(section, {}).update(values)
    pg_name = None
    if db != "sqlite":
        url, pg_name = create_pg_database(db)
        config["database"] = {"url": url, "max_connections": 10}
    config_path.write_text(yaml.safe_dump(config))
    if prepare is not None:
        prepare(config_path)
    command = [str(HEDDLE), "--config", str(config_path)]
    profile_to = os.environ.get("HEDDLE_BENCH_PROFILE")
    if profile_to:
        # Profiling is off until the benchmark sends SIGUSR1 (see `profiled`).
        command = [sys.executable, str(ROOT / "bench" / "profiled_server.py"), profile_to,
                   "--config", str(config_path)]
    trace_to = os.environ.get("HEDDLE_BENCH_TRACEMALLOC")
    if trace_to:
        # Snapshots on SIGUSR1 and SIGUSR2, the same signals (see `profiled`).
        command = [sys.executable, str(ROOT / "bench" / "traced_server.py"), trace_to,
                   "--config", str(config_path)]
    process = subprocess.Popen(command)
    if pids is not None:
        pids.append(process.pid)
    if about is not None:
        about.update(pid=process.pid, metrics=f"http://127.0.0.1:{metrics_port}/metrics")
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_up(base, 60.0)  # a minute: slower under tracemalloc
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        if pg_name is not None:
            drop_pg_database(db, pg_name)


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.token = ""
        self.user_id = ""

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.request(
            method, self.base + path, json=body, headers=headers
        ) as r:
            data = await r.json()
            if r.status != 200:
                raise RuntimeError(f"{method} {path}: {r.status} {data}")
            return data

    async def register(self, name: str) -> None:
        data = await self.call(
            "POST", "/_matrix/client/v3/register",
            {"username": name, "password": "bench-password", "auth": {"type": "m.login.dummy"}},
        )
        self.token, self.user_id = data["access_token"], data["user_id"]

    async def create_room(self, **body: Any) -> str:
        return (await self.call("POST", "/_matrix/client/v3/createRoom", body))["room_id"]

    async def join(self, room_id: str) -> None:
        await self.call("POST", f"/_matrix/client/v3/join/{room_id}", {})

    async def send(self, room_id: str, body: str) -> str:
        txn = secrets.token_hex(8)
        data = await self.call(
            "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": body},
        )
        return data["event_id"]

    async def sync(
        self, since: str | None = None, timeout: int = 0, set_presence: str = "online"
    ) -> Any:
        path = f"/_matrix/client/v3/sync?timeout={timeout}&set_presence={set_presence}"
        if since:
            path += f"&since={since}"
        return await self.call("GET", path)


async def gather_limited(awaitables: Iterable[Awaitable[T]], limit: int = 100) -> list[T]:
    """Await them all, at most `limit` at a time; the results in order. (Thousands of
    requests at once would open thousands of connections, and run out of descriptors.)"""
    semaphore = asyncio.Semaphore(limit)

    async def one(awaitable: Awaitable[T]) -> T:
        async with semaphore:
            return await awaitable

    return await asyncio.gather(*(one(a) for a in awaitables))


async def new_clients(session: aiohttp.ClientSession, base: str, n: int, prefix: str) -> list[Client]:
    clients = [Client(session, base) for _ in range(n)]
    await gather_limited(c.register(f"{prefix}{i}") for i, c in enumerate(clients))
    return clients


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": len(values),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 2),
        "p99_ms": round(ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def send_throughput(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    senders = await new_clients(session, base, 20, "sender")
    room_id = await senders[0].create_room(preset="public_chat")
    await asyncio.gather(*(s.join(room_id) for s in senders[1:]))
    per_sender = 25
    latencies: list[float] = []

    async def run(sender: Client) -> None:
        for i in range(per_sender):
            start = time.perf_counter()
            await sender.send(room_id, f"message {i}")
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(run(s) for s in senders))
    elapsed = time.perf_counter() - start
    total = len(senders) * per_sender
    return {"messages": total, "seconds": round(elapsed, 3),
            "messages_per_second": round(total / elapsed, 1), "send_latency": summary(latencies)}


async def sync_latency(
    session: aiohttp.ClientSession,
    base: str,
    n: int = 50,
    messages: int = 10,
    set_presence: str = "online",
    server_pid: int | None = None,
    each_message: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
) -> dict[str, Any]:
    """With `server_pid`, also the server's CPU time per message (the send, and each reader's
    wake-up and next long-poll). `each_message`, if given, is entered around each message's
    send and delivery (to read the server's metrics then, say)."""
    readers = await new_clients(session, base, n, "reader")
    sender = (await new_clients(session, base, 1, "speaker"))[0]
    room_id = await sender.create_room(preset="public_chat")
    for start in range(0, n, 50):
        await asyncio.gather(*(r.join(room_id) for r in readers[start:start + 50]))
    tokens = {id(r): (await r.sync(set_presence=set_presence))["next_batch"] for r in readers}
    latencies: list[float] = []
    cpu_used = 0.0
    for i in range(messages):
        body = f"ping {i}"

        async def wait_for(reader: Client, body: str = body) -> float:
            since = tokens[id(reader)]
            while True:
                data = await reader.sync(since, timeout=10000, set_presence=set_presence)
                since = data["next_batch"]
                events = data["rooms"]["join"].get(room_id, {}).get("timeline", {}).get("events", [])
                if any(e["content"].get("body") == body for e in events):
                    tokens[id(reader)] = since
                    return time.perf_counter()

        waiters = [asyncio.ensure_future(wait_for(r)) for r in readers]
        await asyncio.sleep(0.2 + n / 2000)  # let every reader be parked in its long-poll
        async with each_message() if each_message is not None else nullcontext():
            cpu_before = cpu_seconds(server_pid) if server_pid is not None else 0.0
            sent_at = time.perf_counter()
            await sender.send(room_id, body)
            received = await asyncio.gather(*waiters)
        latencies.extend(t - sent_at for t in received)
        if server_pid is not None:
            cpu_used += cpu_seconds(server_pid) - cpu_before
    result: dict[str, Any] = {
        "readers": len(readers), "messages": messages, "send_to_receive": summary(latencies)
    }
    if server_pid is not None:
        result["server_cpu_ms_per_message"] = round(cpu_used / messages * 1000, 1)
    return result


def cpu_seconds(pid: int) -> float:
    """A process's user and system CPU time so far: unlike its latency, not inflated by
    whatever else runs on the machine (the clients, for a start)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Set by `main` for the scenario running: the server's process ID and /metrics URL.
SERVER: dict[str, Any] = {}
# Options of the scenarios below, set from the command line by `main`.
OPTIONS: dict[str, int] = {"messages_per_room": 20, "page_limit": 50, "repeats": 20}


async def transactions_by_name(session: aiohttp.ClientSession) -> dict[str, float]:
    """The server's count of finished database transactions so far, by name (its
    `heddle_db_transaction_duration_seconds` histogram); empty when no metrics are known."""
    if "metrics" not in SERVER:
        return {}
    async with session.get(SERVER["metrics"]) as r:
        text = await r.text()
    counts: dict[str, float] = {}
    prefix = "heddle_db_transaction_duration_seconds_count{"
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, value = line[len(prefix):].rsplit("} ", 1)
            desc = labels.split('desc="', 1)[1].split('"', 1)[0]
            counts[desc] = counts.get(desc, 0.0) + float(value)
    return counts


@asynccontextmanager
async def measured(session: aiohttp.ClientSession, requests: int, into: dict[str, Any]):
    """Around a measured phase of `requests` requests: profile the server meanwhile when it
    runs under bench/profiled_server.py (HEDDLE_BENCH_PROFILE), and put into `into` the
    database transactions it ran per request, by name, and the server's CPU time per request
    (its user and system time: unlike latency, not inflated by what else runs)."""
    before = await transactions_by_name(session)
    cpu_before = cpu_seconds(SERVER["pid"]) if "pid" in SERVER else 0.0
    profiling = bool(os.environ.get("HEDDLE_BENCH_PROFILE")) and "pid" in SERVER
    if profiling:
        os.kill(SERVER["pid"], signal.SIGUSR1)
    try:
        yield
    finally:
        if profiling:
            os.kill(SERVER["pid"], signal.SIGUSR2)
    cpu_after = cpu_seconds(SERVER["pid"]) if "pid" in SERVER else 0.0
    after = await transactions_by_name(session)
    into["server_cpu_ms_per_request"] = round((cpu_after - cpu_before) * 1000 / requests, 2)
    per_request = {
        name: round((count - before.get(name, 0.0)) / requests, 2)
        for name, count in after.items() if count - before.get(name, 0.0)
    }
    into["transactions_per_request"] = round(sum(per_request.values()), 2)
    into["transactions_by_name"] = dict(sorted(per_request.items(), key=lambda item: -item[1]))


async def initial_sync_100_rooms(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    user = (await new_clients(session, base, 1, "busy"))[0]
    other = (await new_clients(session, base, 1, "talker"))[0]
    per_room = OPTIONS["messages_per_room"]
    for i in range(100):
        room_id = await other.create_room(preset="public_chat", name=f"room {i}")
        await user.join(room_id)
        await asyncio.gather(*(other.send(room_id, f"hello {j}") for j in range(per_room)))
    await user.sync()  # warm-up: the first request after start-up fills the server's caches
    timings = []
    result: dict[str, Any] = {"rooms": 100, "messages_per_room": per_room}
    initial_costs: dict[str, Any] = {}
    async with measured(session, OPTIONS["repeats"], initial_costs):
        for _ in range(OPTIONS["repeats"]):
            start = time.perf_counter()
            data = await user.sync()
            timings.append(time.perf_counter() - start)
    assert len(data["rooms"]["join"]) == 100
    # The same after one message in a room the user is not in: the server's position moved,
    # so what is shared per room and position (timelines, heroes) is read again.
    elsewhere = await other.create_room(preset="public_chat", name="elsewhere")
    moved = []
    moved_costs: list[dict[str, Any]] = []
    for i in range(5):
        await other.send(elsewhere, f"meanwhile {i}")
        moved_costs.append({})
        async with measured(session, 1, moved_costs[-1]):
            start = time.perf_counter()
            await user.sync()
            moved.append(time.perf_counter() - start)
    result.update(initial_sync_after_news=summary(moved), after_news_costs={
        "server_cpu_ms_per_request": statistics.median(
            c["server_cpu_ms_per_request"] for c in moved_costs
        ),
        "transactions_per_request": statistics.median(
            c["transactions_per_request"] for c in moved_costs
        ),
        "transactions_by_name": moved_costs[-1]["transactions_by_name"],
    })
    incremental = []
    incremental_costs: dict[str, Any] = {}
    async with measured(session, 5, incremental_costs):
        for _ in range(5):
            start = time.perf_counter()
            await user.sync(data["next_batch"])
            incremental.append(time.perf_counter() - start)
    result.update(initial_sync=summary(timings), initial_sync_costs=initial_costs,
                  empty_incremental_sync=summary(incremental), incremental_costs=incremental_costs)
    return result


async def messages_pagination(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    user = (await new_clients(session, base, 1, "historian"))[0]
    room_id = await user.create_room(preset="private_chat")
    for chunk in range(0, 2000, 50):
        await asyncio.gather(*(user.send(room_id, f"event {chunk + i}") for i in range(50)))
    limit = OPTIONS["page_limit"]

    async def page_through() -> tuple[list[float], int]:
        timings = []
        token = None
        seen = 0
        while True:
            path = f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit={limit}"
            if token:
                path += f"&from={token}"
            start = time.perf_counter()
            data = await user.call("GET", path)
            timings.append(time.perf_counter() - start)
            seen += sum(1 for e in data["chunk"] if e["type"] == "m.room.message")
            token = data.get("end")
            if not token or not data["chunk"]:
                break
        assert seen == 2000, seen
        return timings, seen

    await page_through()  # warm-up
    rounds = max(1, OPTIONS["repeats"] // 5)
    pages = len((await page_through())[0])
    costs: dict[str, Any] = {}
    timings: list[float] = []
    start_all = time.perf_counter()
    async with measured(session, pages * rounds, costs):
        for _ in range(rounds):
            timings += (await page_through())[0]
    total = time.perf_counter() - start_all
    return {"events": 2000, "pages": len(timings), "rounds": rounds, "total_seconds": round(total, 3),
            "pages_per_second": round(len(timings) / total, 1), f"page_of_{limit}": summary(timings),
            **costs}


SCENARIOS = {
    "send_throughput": send_throughput,
    "sync_latency": sync_latency,
    "initial_sync_100_rooms": initial_sync_100_rooms,
    "messages_pagination": messages_pagination,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite", help="'sqlite' or a PostgreSQL admin URL")
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--messages-per-room", type=int, default=OPTIONS["messages_per_room"],
                        help="initial_sync_100_rooms: messages sent into each room")
    parser.add_argument("--page-limit", type=int, default=OPTIONS["page_limit"],
                        help="messages_pagination: the limit of each /messages page")
    parser.add_argument("--repeats", type=int, default=OPTIONS["repeats"],
                        help="initial syncs measured (and a fifth of it: /messages pagings)")
    args = parser.parse_args()
    OPTIONS.update(messages_per_room=args.messages_per_room, page_limit=args.page_limit,
                   repeats=args.repeats)
    results: dict[str, Any] = {"db": "sqlite" if args.db == "sqlite" else "postgresql"}
    for name in args.only or list(SCENARIOS):
        SERVER.clear()
        async with running_server(args.db, about=SERVER) as base:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                results[name] = await SCENARIOS[name](session, base)
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.chdir(ROOT)
    asyncio.run(main())
