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
        # Slower under tracemalloc, and on a loaded machine.
        await wait_until_up(base, 240.0 if trace_to else 60.0)
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


async def initial_sync_100_rooms(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    user = (await new_clients(session, base, 1, "busy"))[0]
    other = (await new_clients(session, base, 1, "talker"))[0]
    for i in range(100):
        room_id = await other.create_room(preset="public_chat", name=f"room {i}")
        await user.join(room_id)
        for j in range(5):
            await other.send(room_id, f"hello {j}")
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        data = await user.sync()
        timings.append(time.perf_counter() - start)
    assert len(data["rooms"]["join"]) == 100
    incremental = []
    for _ in range(5):
        start = time.perf_counter()
        await user.sync(data["next_batch"])
        incremental.append(time.perf_counter() - start)
    return {"rooms": 100, "initial_sync": summary(timings), "empty_incremental_sync": summary(incremental)}


async def messages_pagination(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    user = (await new_clients(session, base, 1, "historian"))[0]
    room_id = await user.create_room(preset="private_chat")
    for chunk in range(0, 2000, 50):
        await asyncio.gather(*(user.send(room_id, f"event {chunk + i}") for i in range(50)))
    timings = []
    start_all = time.perf_counter()
    token = None
    seen = 0
    while True:
        path = f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100"
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
    return {"events": seen, "pages": len(timings), "total_seconds": round(time.perf_counter() - start_all, 3),
            "page_of_100": summary(timings)}


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
    args = parser.parse_args()
    results: dict[str, Any] = {"db": "sqlite" if args.db == "sqlite" else "postgresql"}
    for name in args.only or list(SCENARIOS):
        async with running_server(args.db) as base:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                results[name] = await SCENARIOS[name](session, base)
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.chdir(ROOT)
    asyncio.run(main())
