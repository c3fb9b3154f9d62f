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
import statistics
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


# Set by `main` for the scenario running: the server's process ID and /metrics URL.
SERVER: dict[str, Any] = {}
# Options of the scenarios below, set from the command line by `main`.
OPTIONS: dict[str, int] = {"messages_per_room": 20, "page_limit": 50, "repeats": 20}


@asynccontextmanager
async def measured(requests: int, into: dict[str, Any]):
    """Around a measured phase of `requests` requests: profile the server meanwhile when it
    runs under bench/profiled_server.py (HEDDLE_BENCH_PROFILE), and put into `into` the
    database transactions it ran per request, by name, and the server's CPU time per request
    (its user and system time: unlike latency, not inflated by what else runs)."""
    async def transactions() -> dict[str, int]:
        if "metrics" not in SERVER:
            return {}
        counts = await transaction_counts(SERVER["metrics"])
        return {k: v for k, v in counts.items() if not k.startswith("statements:")}

    before = await transactions()
    cpu_before = cpu_seconds(SERVER["pid"]) if "pid" in SERVER else 0.0
    async with profiled(SERVER.get("pid")):
        yield
    cpu_after = cpu_seconds(SERVER["pid"]) if "pid" in SERVER else 0.0
    after = await transactions()
    into["server_cpu_ms_per_request"] = round((cpu_after - cpu_before) * 1000 / requests, 2)
    per_request = {
        name: round((count - before.get(name, 0)) / requests, 2)
        for name, count in after.items() if count - before.get(name, 0)
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
    async with measured(OPTIONS["repeats"], initial_costs):
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
        async with measured(1, moved_costs[-1]):
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
    async with measured(5, incremental_costs):
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
    async with measured(pages * rounds, costs):
        for _ in range(rounds):
            timings += (await page_through())[0]
    total = time.perf_counter() - start_all
    return {"events": 2000, "pages": len(timings), "rounds": rounds, "total_seconds": round(total, 3),
            "pages_per_second": round(len(timings) / total, 1), f"page_of_{limit}": summary(timings),
            **costs}


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
                if name == "send_throughput":
                    results[name] = await send_throughput(
                        session, base, SERVER, per_sender=args.per_sender
                    )
                else:
                    results[name] = await SCENARIOS[name](session, base)
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.chdir(ROOT)
    asyncio.run(main())
