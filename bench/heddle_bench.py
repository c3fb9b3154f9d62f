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
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The server and client helpers live in bench/servers.py and bench/scenarios.py (shared with
# compare_bench.py); re-exported here for the benchmarks that import them from this module.
from bench.scenarios import Client, gather_limited, new_clients, summary  # noqa: E402
from bench.servers import (  # noqa: E402
    HEDDLE,
    cpu_seconds,
    create_pg_database,
    drop_pg_database,
    free_port,
    running_server,
    wait_until_up,
)

__all__ = [
    "HEDDLE", "ROOT", "Client", "cpu_seconds", "create_pg_database", "drop_pg_database",
    "free_port", "gather_limited", "new_clients", "running_server", "summary", "wait_until_up",
]


async def transaction_counts(metrics_url: str) -> dict[str, int]:
    """Database transactions run so far, by name, and the statements they sent, under
    "statements:" and the name (from the server's /metrics)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(metrics_url) as r:
            text = await r.text()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        for metric, prefix in (("heddle_db_transaction_duration_seconds_count{", ""),
                               ("heddle_db_statements_total{", "statements:")):
            if line.startswith(metric):
                name = line.split('desc="', 1)[1].split('"', 1)[0]
                counts[prefix + name] = int(float(line.rsplit(" ", 1)[1]))
    return counts


@asynccontextmanager
async def profiled(pid: int | None) -> AsyncIterator[None]:
    """Profile the server meanwhile, when it runs under bench/profiled_server.py."""
    profiling = pid is not None and bool(os.environ.get("HEDDLE_BENCH_PROFILE"))
    if profiling:
        assert pid is not None
        os.kill(pid, signal.SIGUSR1)
    try:
        yield
    finally:
        if profiling:
            assert pid is not None
            os.kill(pid, signal.SIGUSR2)


async def send_throughput(
    session: aiohttp.ClientSession, base: str, server: dict[str, Any] | None = None,
    per_sender: int = 25,
) -> dict[str, Any]:
    senders = await new_clients(session, base, 20, "sender")
    room_id = await senders[0].create_room(preset="public_chat")
    await asyncio.gather(*(s.join(room_id) for s in senders[1:]))
    latencies: list[float] = []
    server = server or {}
    before = await transaction_counts(server["metrics"]) if "metrics" in server else {}
    cpu_before = cpu_seconds(server["pid"]) if "pid" in server else 0.0

    async def run(sender: Client) -> None:
        for i in range(per_sender):
            start = time.perf_counter()
            await sender.send(room_id, f"message {i}")
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with profiled(server.get("pid")):
        await asyncio.gather(*(run(s) for s in senders))
    elapsed = time.perf_counter() - start
    total = len(senders) * per_sender
    result = {"messages": total, "seconds": round(elapsed, 3),
              "messages_per_second": round(total / elapsed, 1),
              "send_latency": summary(latencies)}
    if "pid" in server:
        # CPU time the server spent (all its threads): what a message costs, whatever else
        # runs on the machine.
        cpu = cpu_seconds(server["pid"]) - cpu_before
        result["server_cpu_ms_per_message"] = round(cpu * 1000 / total, 3)
    if "metrics" in server:
        after = await transaction_counts(server["metrics"])
        moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        txns = {k: v for k, v in moved.items() if not k.startswith("statements:")}
        statements = {k[len("statements:"):]: v for k, v in moved.items()
                      if k.startswith("statements:")}
        result["transactions_per_message"] = round(sum(txns.values()) / total, 2)
        result["statements_per_message"] = round(sum(statements.values()) / total, 2)
        result["transactions"] = dict(sorted(txns.items(), key=lambda kv: -kv[1]))
        result["statements"] = dict(sorted(statements.items(), key=lambda kv: -kv[1]))
    return result


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


SCENARIOS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "send_throughput": send_throughput,
    "sync_latency": sync_latency,
    "initial_sync_100_rooms": initial_sync_100_rooms,
    "messages_pagination": messages_pagination,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite", help="'sqlite' or a PostgreSQL admin URL")
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--per-sender", type=int, default=25,
                        help="send_throughput: messages each of the 20 senders sends")
    args = parser.parse_args()
    results: dict[str, Any] = {"db": "sqlite" if args.db == "sqlite" else "postgresql"}
    for name in args.only or list(SCENARIOS):
        about: dict[str, Any] = {}
        async with running_server(args.db, about=about) as base:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                if name == "send_throughput":
                    results[name] = await send_throughput(
                        session, base, about, per_sender=args.per_sender
                    )
                else:
                    results[name] = await SCENARIOS[name](session, base)
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.chdir(ROOT)
    asyncio.run(main())
