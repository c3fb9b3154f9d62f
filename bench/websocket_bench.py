"""WebSocket sync against long-polling, on a real Heddle server started here.

    .venv/bin/python bench/websocket_bench.py --db sqlite --subscribers 200
    .venv/bin/python bench/websocket_bench.py --db postgresql://postgres@127.0.0.1:5432/postgres

N users in one room listen for messages, either over the WebSocket transport or by
long-polling /sync; one more user sends messages, one at a time. Measured: the time from
sending each message to each listener holding it (p50/p99; this includes the send itself,
so it bounds the server's commit-to-frame time from above), and the server's resident
memory per idle subscribed WebSocket (`memory`) and per idle long-poll held open
(`long_poll_memory`): `--idle` users in rooms of `--per-room`, each holding one. The idle
sockets offer permessage-deflate as browsers do (`--compress 0` not to). Printed as JSON.

    PYTHONPATH=. .venv/bin/python bench/websocket_bench.py --parts memory,long_poll_memory --idle 10000
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
from urllib.parse import quote

import aiohttp
from heddle_bench import (
    ROOT,
    Client,
    cpu_seconds,
    gather_limited,
    new_clients,
    running_server,
    summary,
    sync_latency,
)
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


LISTENER_FILTER = {"room": {"timeline": {"limit": 1}}}
SYNC_PATH = f"/_matrix/client/v3/sync?filter={quote(json.dumps(LISTENER_FILTER))}"
# What listeners say their presence is: "online" as clients do (then each one's presence
# changes reach all the others), or "offline" (`--presence`), to see messages alone.
SET_PRESENCE = "online"


async def open_listener(
    session: aiohttp.ClientSession, base: str, reader: Client, room_id: str, compress: int = 0
) -> WsListener:
    """A subscribed socket; `compress` is the window bits offered with permessage-deflate
    (15: what browsers offer), 0 to offer none."""
    ws = await session.ws_connect("ws" + base[4:] + WS_PATH, max_msg_size=0, compress=compress)
    await ws.send_json({"type": "auth", "access_token": reader.token})
    await ws.send_json(
        {"type": "subscribe", "filter": LISTENER_FILTER, "set_presence": SET_PRESENCE}
    )
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
    """Profile the server meanwhile, when it runs under bench/profiled_server.py, or trace
its allocations, under bench/traced_server.py."""
    trace_to = os.environ.get("HEDDLE_BENCH_TRACEMALLOC")
    profiling = bool(os.environ.get("HEDDLE_BENCH_PROFILE") or trace_to)
    if trace_to and os.path.exists(trace_to):
        os.unlink(trace_to)
    if profiling:
        os.kill(pid, signal.SIGUSR1)
    try:
        yield
    finally:
        if profiling:
            os.kill(pid, signal.SIGUSR2)
        while trace_to and not os.path.exists(trace_to):
            # Comparing the snapshots takes a while; the server must not stop meanwhile.
            await asyncio.sleep(1)


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
    cpu_before = cpu_seconds(server["pid"])
    async with profiled(server["pid"]):
        latencies = await measure_pushes(listeners, sender, room_id, messages)
    cpu_used = cpu_seconds(server["pid"]) - cpu_before
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
        # The send, its commit and every listener's push (and the measuring's own requests).
        "server_cpu_ms_per_message": round(cpu_used / messages * 1000, 1),
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


async def users_in_rooms(
    session: aiohttp.ClientSession, base: str, n: int, prefix: str, per_room: int,
    warm: bool = False,
) -> list[tuple[Client, str]]:
    """`n` new users, in public rooms of `per_room` of them (each room created by one more
    user): (user, their room). With `warm`, each then syncs once over HTTP, so what the
    server keeps of a user who syncs (caches, presence) is there before the measurement."""
    users = await new_clients(session, base, n, prefix)
    owners = await new_clients(session, base, -(-n // per_room), prefix + "owner")
    rooms = await gather_limited(owner.create_room(preset="public_chat") for owner in owners)
    placed = [(user, rooms[i // per_room]) for i, user in enumerate(users)]
    await gather_limited((user.join(room_id) for user, room_id in placed), 50)
    if warm:
        await gather_limited((user.call("GET", SYNC_PATH + "&timeout=0") for user in users), 50)
    return placed


def connections_session() -> aiohttp.ClientSession:
    """A session of its own for the measured connections: none of them reuses a keep-alive
    connection opened (and counted in the server's memory) before the measurement."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def idle_memory(
    setup: aiohttp.ClientSession, base: str, server: dict[str, Any], n: int, per_room: int,
    compress: int, warm: bool,
) -> dict[str, Any]:
    placed = await users_in_rooms(setup, base, n, "idle", per_room, warm)
    pid, metrics = server["pid"], server["metrics"]
    async with connections_session() as session:
        # One round first, so caches and code paths warm up outside the measurement.
        warm_up = await asyncio.gather(
            *(open_listener(session, base, user, room, compress) for user, room in placed[:20])
        )
        for listener in warm_up:
            await listener.ws.close()
        await wait_until_quiet(session, metrics)
        before = rss_kib(pid)
        async with profiled(pid):
            started = time.monotonic()
            listeners = await gather_limited(
                (open_listener(session, base, user, room, compress) for user, room in placed), 50
            )
            opening_s = round(time.monotonic() - started, 1)
            settling_s = await wait_until_quiet(session, metrics)
            after = rss_kib(pid)
        compressed = sum(1 for listener in listeners if listener.ws.compress)
        for listener in listeners:
            listener.task.cancel()  # type: ignore[attr-defined]
        await gather_limited((listener.ws.close() for listener in listeners), 200)
    return {"idle_sockets": n, "per_room": per_room, "warm_users": warm,
            "offered_compression": compress,
            "compression_negotiated": compressed, "opening_s": opening_s,
            "settling_s": settling_s, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_socket": round((after - before) / n, 1)}


def in_flight(samples: Samples) -> float:
    return samples.get(("heddle_http_requests_in_flight", ()), 0.0)


async def wait_until_parked(session: aiohttp.ClientSession, metrics_url: str, n: int) -> float:
    """Wait until at least `n` requests have been in flight for a second (every long-poll
    parked, none returning for the presence of room-mates coming online); returns how long
    that took, in seconds."""
    started = time.monotonic()
    steady_polls = 0
    while steady_polls < 4:
        if time.monotonic() - started > 600:
            raise RuntimeError("the long-polls never all parked")
        await asyncio.sleep(0.25)
        parked = in_flight(await scrape(session, metrics_url)) >= n
        steady_polls = steady_polls + 1 if parked else 0
    return round(time.monotonic() - started, 1)


async def idle_long_poll_memory(
    setup: aiohttp.ClientSession, base: str, server: dict[str, Any], n: int, per_room: int,
    warm: bool,
) -> dict[str, Any]:
    """The same users and rooms as `idle_memory`, each holding `/sync?timeout=30000` open
    instead of a socket (after an initial sync with the sockets' filter, as a subscription
    starts with one)."""
    placed = await users_in_rooms(setup, base, n, "idle", per_room, warm)
    pid, metrics = server["pid"], server["metrics"]
    sync_path = SYNC_PATH

    async def poll_forever(poller: Client, started: list[int]) -> None:
        since = (await poller.call("GET", sync_path + "&timeout=0"))["next_batch"]
        started.append(1)
        while True:
            path = f"{sync_path}&timeout=30000&since={quote(since)}"
            since = (await poller.call("GET", path))["next_batch"]

    async with connections_session() as session:
        pollers = []
        for user, _room in placed:
            poller = Client(session, base)
            poller.token, poller.user_id = user.token, user.user_id
            pollers.append(poller)
        warm_started: list[int] = []
        warm_up = [asyncio.ensure_future(poll_forever(p, warm_started)) for p in pollers[:20]]
        await wait_until_parked(session, metrics, 20)
        for polling in warm_up:
            polling.cancel()
        await asyncio.sleep(1)
        before = rss_kib(pid)
        async with profiled(pid):
            started_at = time.monotonic()
            started: list[int] = []
            polls = []
            for start in range(0, n, 50):
                # At most 50 initial syncs at a time, as the sockets are opened.
                polls += [
                    asyncio.ensure_future(poll_forever(p, started))
                    for p in pollers[start:start + 50]
                ]
                while len(started) < min(start + 50, n):
                    await asyncio.sleep(0.01)
            opening_s = round(time.monotonic() - started_at, 1)
            settling_s = await wait_until_parked(session, metrics, n)
            after = rss_kib(pid)
        for polling in polls:
            polling.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
    return {"idle_long_polls": n, "per_room": per_room, "warm_users": warm,
            "opening_s": opening_s,
            "settling_s": settling_s, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_long_poll": round((after - before) / n, 1)}


# Filter of the fan-out listeners: room for every message of a batch (a limited timeline
# would drop some, which the benchmark counts as missing).
FAN_OUT_FILTER = {"room": {"timeline": {"limit": 100}}}


class Poller:
    """One listener long-polling /sync in a loop; records when each message body arrives,
    how many responses it took, and any message received twice or out of order."""

    def __init__(self, client: Client, room_id: str, since: str) -> None:
        self.client = client
        self.room_id = room_id
        self.since = since
        self.arrivals: dict[str, float] = {}
        self.order: list[str] = []
        self.responses = 0
        self.duplicates = 0
        self.limited = 0

    async def run(self, timeout_ms: int = 30000) -> None:
        path = (f"/_matrix/client/v3/sync?filter={quote(json.dumps(FAN_OUT_FILTER))}"
                f"&set_presence={SET_PRESENCE}&timeout={timeout_ms}")
        while True:
            data = await self.client.call("GET", f"{path}&since={quote(self.since)}")
            now = time.perf_counter()
            self.since = data["next_batch"]
            self.responses += 1
            timeline = data["rooms"]["join"].get(self.room_id, {}).get("timeline", {})
            self.limited += bool(timeline.get("limited"))
            for event in timeline.get("events", []):
                body = event.get("content", {}).get("body", "")
                if not body.startswith("fan "):
                    continue
                if body in self.arrivals:
                    self.duplicates += 1
                    continue
                self.arrivals[body] = now
                self.order.append(body)


async def long_poll_fan_out(
    session: aiohttp.ClientSession, base: str, server: dict[str, Any], n: int, messages: int,
    rate: float,
) -> dict[str, Any]:
    """`n` listeners long-poll /sync in one room without pause while one more user sends
    `messages` messages on a schedule of `rate` a second (each send awaited: a slow server
    slows the sends, which is reported). Measured: send to receive for every listener and
    message, what never arrived or arrived twice or out of order, the sync responses
    written, and the server's CPU time per delivered event."""
    readers, sender, room_id = await setup_room(session, base, n, "fanout")
    sync0 = (f"/_matrix/client/v3/sync?filter={quote(json.dumps(FAN_OUT_FILTER))}"
             f"&set_presence={SET_PRESENCE}&timeout=0")
    tokens = await gather_limited((r.call("GET", sync0) for r in readers), 50)
    pollers = [Poller(r, room_id, t["next_batch"]) for r, t in zip(readers, tokens, strict=True)]
    tasks = [asyncio.ensure_future(p.run()) for p in pollers]
    settling_s = await wait_until_parked(session, server["metrics"], n)
    # Presence of the listeners coming online may still be answered: start from quiet.
    responses_before = sum(p.responses for p in pollers)
    before = await scrape(session, server["metrics"])
    cpu_before = cpu_seconds(server["pid"])
    client_cpu_before = sum(os.times()[:2])
    sent_at: dict[str, float] = {}
    send_latencies: list[float] = []
    async with profiled(server["pid"]):
        started = time.perf_counter()
        for i in range(messages):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = f"fan {i}"
            sent_at[body] = time.perf_counter()
            await sender.send(room_id, body)
            send_latencies.append(time.perf_counter() - sent_at[body])
        sending_s = time.perf_counter() - started
        deadline = time.monotonic() + 60
        while any(len(p.arrivals) < messages for p in pollers) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        delivering_s = time.perf_counter() - started
    cpu_used = cpu_seconds(server["pid"]) - cpu_before
    client_cpu = sum(os.times()[:2]) - client_cpu_before
    after = await scrape(session, server["metrics"])
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [
        p.arrivals[body] - sent_at[body] for p in pollers for body in p.arrivals if body in sent_at
    ]
    expected = [f"fan {i}" for i in range(messages)]
    delivered = len(latencies)
    return {
        "listeners": n, "messages": messages, "rate_asked": rate,
        "rate_sent": round(messages / sending_s, 1),
        "send_latency": summary(send_latencies),
        "settling_s": settling_s,
        "send_to_receive": summary(latencies) if latencies else {},
        "missing": n * messages - delivered,
        "listeners_missing_some": sum(1 for p in pollers if len(p.arrivals) < messages),
        "duplicates": sum(p.duplicates for p in pollers),
        "out_of_order": sum(1 for p in pollers if p.order != expected[:len(p.order)]),
        "limited_timelines": sum(p.limited for p in pollers),
        "sync_responses": sum(p.responses for p in pollers) - responses_before,
        "delivering_s": round(delivering_s, 2),
        "server_cpu_s": round(cpu_used, 2),
        "server_cpu_ms_per_delivered_event": round(cpu_used / max(delivered, 1) * 1000, 3),
        "server_cpu_ms_per_message": round(cpu_used / messages * 1000, 1),
        "client_cpu_s": round(client_cpu, 2),
        "db_transactions_per_message": transactions_per_message(before, after, messages),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite", help="'sqlite' or a PostgreSQL admin URL")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--idle", type=int, default=1000, help="idle sockets for the memory figure")
    parser.add_argument("--per-room", type=int, default=100, help="idle users per room")
    parser.add_argument(
        "--warm-users", action="store_true",
        help="each idle user syncs once over HTTP before the measurement, which then counts "
        "the connections without what the server keeps per user",
    )
    parser.add_argument(
        "--compress", type=int, default=15,
        help="window bits the idle sockets offer with permessage-deflate; 0: none",
    )
    parser.add_argument(
        "--parts", default="websocket,long_poll,memory",
        help="which measurements to run (comma-separated: websocket, long_poll, memory, "
        "long_poll_memory, long_poll_fan_out); each starts its own server",
    )
    parser.add_argument(
        "--rate", type=float, default=20.0,
        help="messages a second for the fan-out part (long_poll_fan_out)",
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
        long_poll_server: dict[str, Any] = {}
        async with running_server(args.db, about=long_poll_server) as base:
            async with aiohttp.ClientSession(connector=connector()) as session:
                transactions: dict[str, float] = {}

                @asynccontextmanager
                async def counting_transactions() -> AsyncIterator[None]:
                    before = await scrape(session, long_poll_server["metrics"])
                    # Profiled message by message: the profile written is the last one's.
                    async with profiled(long_poll_server["pid"]):
                        yield
                    after = await scrape(session, long_poll_server["metrics"])
                    for name, count in transactions_per_message(before, after, 1).items():
                        transactions[name] = transactions.get(name, 0.0) + count

                results["long_poll"] = await sync_latency(
                    session, base, args.subscribers, args.messages, args.presence,
                    server_pid=long_poll_server["pid"], each_message=counting_transactions,
                )
                results["long_poll"]["db_transactions_per_message"] = {
                    name: round(count / args.messages, 1)
                    for name, count in sorted(transactions.items(), key=lambda item: -item[1])
                }
        print(json.dumps(results["long_poll"]), flush=True)
    if "long_poll_fan_out" in parts:
        server = {}
        async with running_server(args.db, about=server) as base:
            async with aiohttp.ClientSession(connector=connector()) as session:
                results["long_poll_fan_out"] = await long_poll_fan_out(
                    session, base, server, args.subscribers, args.messages, args.rate
                )
        print(json.dumps(results["long_poll_fan_out"]), flush=True)
    # For the idle parts: room for the warm-up sockets too, should they not be gone yet; and
    # no presence change while the idle users come online (going idle after 5 minutes without
    # activity, offline 30 seconds after a sync), which would push to every room-mate.
    idle_config = {
        "websocket": {"max_connections": args.idle + 100},
        "presence": {"idle_timeout_ms": 3_600_000, "sync_timeout_ms": 3_600_000},
    }
    if "memory" in parts:
        server = {}
        async with running_server(args.db, about=server, config_sections=idle_config) as base:
            async with aiohttp.ClientSession(connector=connector()) as session:
                results["memory"] = await idle_memory(
                    session, base, server, args.idle, args.per_room, args.compress, args.warm_users
                )
        print(json.dumps(results["memory"]), flush=True)
    if "long_poll_memory" in parts:
        server = {}
        async with running_server(args.db, about=server, config_sections=idle_config) as base:
            async with aiohttp.ClientSession(connector=connector()) as session:
                results["long_poll_memory"] = await idle_long_poll_memory(
                    session, base, server, args.idle, args.per_room, args.warm_users
                )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.chdir(ROOT)
    asyncio.run(main())
