"""WebSocket sync against long-polling, on a real Heddle server started here.

    .venv/bin/python bench/websocket_bench.py --db sqlite --subscribers 200
    .venv/bin/python bench/websocket_bench.py --db postgresql://postgres@127.0.0.1:5432/postgres

N users in one room listen for messages, either over the WebSocket transport or by
long-polling /sync; one more user sends messages, one at a time. Measured: the time from
sending each message to each listener holding it (p50/p99; this includes the send itself,
so it bounds the server's commit-to-frame time from above), and the server's resident
memory per idle subscribed WebSocket. Printed as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from heddle_bench import ROOT, Client, new_clients, running_server, summary, sync_latency
from prometheus_client.parser import text_string_to_metric_families

WS_PATH = "/_matrix/client/unstable/org.heddle.ws/sync"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def setup_room(session: aiohttp.ClientSession, base: str, n: int, prefix: str) -> tuple[list[Client], Client, str]:
    readers = await new_clients(session, base, n, prefix)
    sender = (await new_clients(session, base, 1, prefix + "speaker"))[0]
    room_id = await sender.create_room(preset="public_chat")
    for start in range(0, n, 50):
        await asyncio.gather(*(r.join(room_id) for r in readers[start:start + 50]))
    return readers, sender, room_id


class WsListener:
    """One subscribed socket; records when each message body arrives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, room_id: str) -> None:
        self.ws = ws
        self.room_id = room_id
        self.arrivals: dict[str, float] = {}
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async for message in self.ws:
            frame = json.loads(message.data)
            if frame["type"] != "sync":
                continue
            self.ready.set()
            room = frame["body"]["rooms"]["join"].get(self.room_id, {})
            now = time.perf_counter()
            for event in room.get("timeline", {}).get("events", []):
                self.arrivals.setdefault(event["content"].get("body", ""), now)


# What listeners say their presence is: "online" as clients do (then each one's presence
# changes reach all the others), or "offline" (`--presence`), to see messages alone.
SET_PRESENCE = "online"


async def open_listener(session: aiohttp.ClientSession, base: str, reader: Client, room_id: str) -> WsListener:
    ws = await session.ws_connect("ws" + base[4:] + WS_PATH, max_msg_size=0)
    await ws.send_json({"type": "auth", "access_token": reader.token})
    await ws.send_json({
        "type": "subscribe", "filter": {"room": {"timeline": {"limit": 1}}},
        "set_presence": SET_PRESENCE,
    })
    listener = WsListener(ws, room_id)
    listener.task = asyncio.ensure_future(listener.run())  # type: ignore[attr-defined]
    await listener.ready.wait()
    return listener


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(session: aiohttp.ClientSession, metrics_url: str) -> Samples:
    async with session.get(metrics_url) as response:
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def frames_out(samples: Samples) -> float:
    return samples.get(("heddle_websocket_frames_total", (("direction", "out"),)), 0.0)


async def wait_until_quiet(session: aiohttp.ClientSession, metrics_url: str) -> float:
    """Wait until the server has pushed nothing for a second (the presence of a thousand
    users coming online is still being pushed to their room-mates after they subscribe);
    returns how long that took, in seconds."""
    started = time.monotonic()
    last = frames_out(await scrape(session, metrics_url))
    quiet_polls = 0
    while quiet_polls < 4 and time.monotonic() - started < 600:
        await asyncio.sleep(0.25)
        now = frames_out(await scrape(session, metrics_url))
        quiet_polls = quiet_polls + 1 if now == last else 0
        last = now
    return round(time.monotonic() - started, 1)


def histogram_quantiles(before: Samples, after: Samples, name: str) -> dict[str, Any]:
    """p50/p99 of what a histogram recorded between two scrapes, as bucket upper bounds."""
    buckets: list[tuple[float, float]] = []
    for (sample, labels), value in after.items():
        if sample == name + "_bucket":
            bound = float(dict(labels)["le"])
            buckets.append((bound, value - before.get((sample, labels), 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0

    def bound_of(q: float) -> float | None:
        for bound, count in buckets:
            if count >= q * total:
                return bound
        return None

    def ms(bound: float | None) -> float | str | None:
        return "over the top bucket" if bound == float("inf") else (
            None if bound is None else bound * 1000
        )

    return {"count": int(total), "p50_at_most_ms": ms(bound_of(0.5)),
            "p99_at_most_ms": ms(bound_of(0.99))}


def transactions_per_message(before: Samples, after: Samples, messages: int) -> dict[str, float]:
    """Database transactions by name during the measured phase, per message sent."""
    counts: dict[str, float] = {}
    for (sample, labels), value in after.items():
        if sample == "heddle_db_transaction_duration_seconds_count":
            done = value - before.get((sample, labels), 0.0)
            if done:
                counts[dict(labels)["desc"]] = round(done / messages, 1)
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


@asynccontextmanager
async def profiled(pid: int) -> AsyncIterator[None]:
    """Profile the server meanwhile, when it runs under bench/profiled_server.py."""
    profiling = bool(os.environ.get("HEDDLE_BENCH_PROFILE"))
    if profiling:
        os.kill(pid, signal.SIGUSR1)
    try:
        yield
    finally:
        if profiling:
            os.kill(pid, signal.SIGUSR2)


async def websocket_latency(
    session: aiohttp.ClientSession, base: str, server: dict[str, Any], n: int, messages: int
) -> dict[str, Any]:
    readers, sender, room_id = await setup_room(session, base, n, "wsreader")
    listeners: list[WsListener] = []
    for start in range(0, n, 50):
        listeners += await asyncio.gather(
            *(open_listener(session, base, r, room_id) for r in readers[start:start + 50])
        )
    settling_s = await wait_until_quiet(session, server["metrics"])
    before = await scrape(session, server["metrics"])
    async with profiled(server["pid"]):
        latencies = await measure_pushes(listeners, sender, room_id, messages)
    after = await scrape(session, server["metrics"])
    for listener in listeners:
        await listener.ws.close()
    return {
        "subscribers": n,
        "messages": messages,
        "settling_after_subscribing_s": settling_s,
        "send_to_frame": summary(latencies),
        "server_commit_to_frame": histogram_quantiles(
            before, after, "heddle_websocket_push_latency_seconds"
        ),
        "db_transactions_per_message": transactions_per_message(before, after, messages),
    }


async def measure_pushes(
    listeners: list[WsListener], sender: Client, room_id: str, messages: int
) -> list[float]:
    latencies: list[float] = []
    for i in range(messages):
        body = f"ping {i}"
        await asyncio.sleep(0.2)
        sent_at = time.perf_counter()
        await sender.send(room_id, body)
        deadline = time.monotonic() + 30
        while any(body not in listener.arrivals for listener in listeners):
            if time.monotonic() > deadline:
                raise RuntimeError("a listener never got the message")
            await asyncio.sleep(0.005)
        latencies += [listener.arrivals[body] - sent_at for listener in listeners]
    return latencies


async def idle_memory(session: aiohttp.ClientSession, base: str, pid: int, n: int) -> dict[str, Any]:
    readers, _sender, room_id = await setup_room(session, base, n, "idle")
    # One round first, so caches and code paths warm up outside the measurement.
    warm = await asyncio.gather(*(open_listener(session, base, r, room_id) for r in readers[:20]))
    for listener in warm:
        await listener.ws.close()
    await asyncio.sleep(1)
    before = rss_kib(pid)
    listeners: list[WsListener] = []
    for start in range(0, n, 50):
        listeners += await asyncio.gather(
            *(open_listener(session, base, r, room_id) for r in readers[start:start + 50])
        )
    await asyncio.sleep(1)
    after = rss_kib(pid)
    for listener in listeners:
        await listener.ws.close()
    return {"idle_sockets": n, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_socket": round((after - before) / n, 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite", help="'sqlite' or a PostgreSQL admin URL")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--idle", type=int, default=1000, help="idle sockets for the memory figure")
    parser.add_argument(
        "--parts", default="websocket,long_poll,memory",
        help="which measurements to run (comma-separated); each starts its own server",
    )
    parser.add_argument(
        "--presence", choices=("online", "offline"), default="online",
        help="the listeners' set_presence (offline: no presence traffic between them)",
    )
    args = parser.parse_args()
    global SET_PRESENCE
    SET_PRESENCE = args.presence
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {
        "db": "sqlite" if args.db == "sqlite" else "postgresql", "presence": args.presence,
    }
    connector = lambda: aiohttp.TCPConnector(limit=0)  # noqa: E731
    if "websocket" in parts:
        server: dict[str, Any] = {}
        async with running_server(args.db, about=server) as base:
            async with aiohttp.ClientSession(connector=connector()) as session:
                results["websocket"] = await websocket_latency(
                    session, base, server, args.subscribers, args.messages
                )
        print(json.dumps(results["websocket"]), flush=True)
    if "long_poll" in parts:
        async with running_server(args.db) as base:
            async with aiohttp.ClientSession(connector=connector()) as session:
                results["long_poll"] = await sync_latency(
                    session, base, args.subscribers, args.messages, args.presence
                )
        print(json.dumps(results["long_poll"]), flush=True)
    if "memory" in parts:
        pids: list[int] = []
        async with running_server(args.db, pids) as base:
            async with aiohttp.ClientSession(connector=connector()) as session:
                results["memory"] = await idle_memory(session, base, pids[0], args.idle)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.chdir(ROOT)
    asyncio.run(main())
