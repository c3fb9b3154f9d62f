"""Client-API load for the benchmarks, server-agnostic: plain aiohttp clients (no Matrix SDK),
so the same requests go to Heddle and to Synapse and what is measured is the server.

Each scenario takes an `aiohttp.ClientSession`, a server base URL and its sizes, and returns
a dict of figures and of what it checked (the smoke test, tests/test_bench_smoke.py, runs
them at tiny sizes and asserts the checks; the benchmarks report the figures). Scenarios that
read the server's CPU time or memory take its process ID (`server_pid`; None skips those).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
import urllib.parse
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import aiohttp

from bench.servers import cpu_seconds, rss_bytes

T = TypeVar("T")

# Enough timeline per sync response that a listener that fell behind still gets every event
# (a "limited" timeline would leave some out).
FULL_TIMELINE_FILTER = json.dumps({"room": {"timeline": {"limit": 1000}}})


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
        return str((await self.call("POST", "/_matrix/client/v3/createRoom", body))["room_id"])

    async def join(self, room_id: str) -> None:
        await self.call("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room_id)}", {})

    async def send(self, room_id: str, body: str) -> str:
        txn = secrets.token_hex(8)
        data = await self.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": body},
        )
        return str(data["event_id"])

    async def sync(
        self,
        since: str | None = None,
        timeout: int = 0,
        set_presence: str = "online",
        filter_json: str | None = None,
    ) -> Any:
        path = f"/_matrix/client/v3/sync?timeout={timeout}&set_presence={set_presence}"
        if since:
            path += f"&since={urllib.parse.quote(since)}"
        if filter_json:
            path += f"&filter={urllib.parse.quote(filter_json)}"
        return await self.call("GET", path)


async def gather_limited(awaitables: Iterable[Awaitable[T]], limit: int = 100) -> list[T]:
    """Await them all, at most `limit` at a time; the results in order. (Thousands of
    requests at once would open thousands of connections, and run out of descriptors.)"""
    semaphore = asyncio.Semaphore(limit)

    async def one(awaitable: Awaitable[T]) -> T:
        async with semaphore:
            return await awaitable

    return await asyncio.gather(*(one(a) for a in awaitables))


async def new_clients(
    session: aiohttp.ClientSession, base: str, n: int, prefix: str
) -> list[Client]:
    clients = [Client(session, base) for _ in range(n)]
    await gather_limited((c.register(f"{prefix}{i}") for i, c in enumerate(clients)), 20)
    return clients


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[max(int(len(ordered) * fraction + 0.5) - 1, 0)]


def summary(values: list[float]) -> dict[str, float]:
    """Seconds in, milliseconds out."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {
        "count": len(values),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(percentile(ordered, 0.95) * 1000, 2),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def room_timeline(sync: Any, room_id: str) -> list[Any]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    return list(room.get("timeline", {}).get("events", []))


# ----- send: many senders, one room ---------------------------------------------------------


async def send(
    session: aiohttp.ClientSession, base: str, senders: int = 20, per_sender: int = 50
) -> dict[str, Any]:
    """`senders` users send `per_sender` messages each, all at once, into one room."""
    clients = await new_clients(session, base, senders, "sender")
    room_id = await clients[0].create_room(preset="public_chat")
    await gather_limited((c.join(room_id) for c in clients[1:]), 20)
    latencies: list[float] = []
    event_ids: list[str] = []

    async def run(sender: Client, n: int) -> None:
        for i in range(per_sender):
            start = time.perf_counter()
            event_ids.append(await sender.send(room_id, f"sender {n} message {i}"))
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(run(c, n) for n, c in enumerate(clients)))
    elapsed = time.perf_counter() - start
    total = senders * per_sender
    return {
        "senders": senders, "messages": total, "seconds": round(elapsed, 3),
        "events_per_second": round(total / elapsed, 1), "send_latency": summary(latencies),
        "distinct_event_ids": len(set(event_ids)),
    }


# ----- fan-out: long-polling listeners, one paced sender -------------------------------------


async def fanout(
    session: aiohttp.ClientSession,
    base: str,
    listeners: int = 50,
    messages: int = 100,
    rate: float = 20.0,
    server_pid: int | None = None,
    drain_timeout: float = 60.0,
) -> dict[str, Any]:
    """`listeners` users long-poll /sync in one room while another sends `messages` messages
    at `rate` a second. Every listener keeps one long-poll open, and starts the next as soon
    as a response comes. Measured per (listener, event): from the start of the PUT that sent
    it to the arrival of the sync response holding it. Checked: every listener got every
    event once, in the order sent."""
    readers = await new_clients(session, base, listeners, "listener")
    sender = (await new_clients(session, base, 1, "speaker"))[0]
    room_id = await sender.create_room(preset="public_chat")
    await gather_limited((r.join(room_id) for r in readers), 20)
    nonce = secrets.token_hex(4)
    prefix = f"fan {nonce} "
    first = await gather_limited(
        (r.sync(set_presence="offline", filter_json=FULL_TIMELINE_FILTER) for r in readers), 50
    )
    received: list[list[tuple[int, float]]] = [[] for _ in readers]
    responses = [0]
    counting = [False]
    errors: list[str] = []

    async def listen(index: int, reader: Client, since: str) -> None:
        while True:
            try:
                data = await reader.sync(
                    since, timeout=30000, set_presence="offline", filter_json=FULL_TIMELINE_FILTER
                )
            except (aiohttp.ClientError, RuntimeError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.1)
                continue
            now = time.perf_counter()
            if counting[0]:
                responses[0] += 1
            since = data["next_batch"]
            for event in room_timeline(data, room_id):
                body = event.get("content", {}).get("body", "")
                if event.get("type") == "m.room.message" and body.startswith(prefix):
                    received[index].append((int(body[len(prefix):]), now))

    tasks = [
        asyncio.ensure_future(listen(i, r, f["next_batch"]))
        for i, (r, f) in enumerate(zip(readers, first, strict=True))
    ]
    try:
        await asyncio.sleep(0.5 + listeners / 500)  # every listener parked in its long-poll
        cpu_before = cpu_seconds(server_pid) if server_pid is not None else 0.0
        counting[0] = True
        sent_at: list[float] = []
        started = time.perf_counter()
        for i in range(messages):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at.append(time.perf_counter())
            await sender.send(room_id, f"{prefix}{i}")
        send_seconds = time.perf_counter() - started
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and any(
            len({n for n, _ in got}) < messages for got in received
        ):
            await asyncio.sleep(0.05)
        drained = time.perf_counter() - started
        counting[0] = False
        cpu_used = cpu_seconds(server_pid) - cpu_before if server_pid is not None else None
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies: list[float] = []
    missing = duplicates = out_of_order = 0
    for got in received:
        indices = [n for n, _ in got]
        missing += messages - len(set(indices))
        duplicates += len(indices) - len(set(indices))
        out_of_order += indices != sorted(indices)
        seen: set[int] = set()
        for n, at in got:
            if n not in seen:
                seen.add(n)
                latencies.append(at - sent_at[n])
    delivered = sum(len({n for n, _ in got}) for got in received)
    result: dict[str, Any] = {
        "listeners": listeners, "messages": messages, "target_rate": rate,
        # Sends started a second (each waits for the one before it to be answered).
        "achieved_send_rate": round(
            (messages - 1) / (sent_at[-1] - sent_at[0]) if messages > 1 else 1 / send_seconds, 1
        ),
        "send_to_receive": summary(latencies),
        "delivered": delivered, "expected": listeners * messages,
        "missing": missing, "duplicates": duplicates, "listeners_out_of_order": out_of_order,
        "sync_responses": responses[0], "seconds_to_last_delivery": round(drained, 2),
        "listener_errors": len(errors), "first_errors": errors[:3],
    }
    if cpu_used is not None:
        result["server_cpu_seconds"] = round(cpu_used, 3)
        result["server_cpu_ms_per_delivered_event"] = (
            round(cpu_used / delivered * 1000, 3) if delivered else None
        )
    return result


# ----- initial sync of a user in many rooms -----------------------------------------------


async def initial_sync(
    session: aiohttp.ClientSession,
    base: str,
    rooms: int = 100,
    messages: int = 20,
    requests: int = 5,
) -> dict[str, Any]:
    """A user in `rooms` rooms, each with `messages` messages, syncs from nothing
    `requests` times (no filter, as a plain client does)."""
    user = (await new_clients(session, base, 1, "busy"))[0]
    other = (await new_clients(session, base, 1, "talker"))[0]

    async def fill(i: int) -> str:
        room_id = await other.create_room(preset="public_chat", name=f"room {i}")
        await user.join(room_id)
        for j in range(messages):
            await other.send(room_id, f"room {i} message {j}")
        return room_id

    room_ids = await gather_limited((fill(i) for i in range(rooms)), 10)
    timings = []
    data: Any = None
    for _ in range(requests):
        start = time.perf_counter()
        data = await user.sync(set_presence="offline")
        timings.append(time.perf_counter() - start)
    joined = data["rooms"]["join"] if data else {}
    with_last_message = sum(
        1 for i, room_id in enumerate(room_ids)
        if any(e.get("content", {}).get("body") == f"room {i} message {messages - 1}"
               for e in room_timeline(data, room_id))
    )
    return {
        "rooms": rooms, "messages_per_room": messages, "initial_sync": summary(timings),
        "rooms_in_response": sum(1 for r in room_ids if r in joined),
        "rooms_with_last_message": with_last_message,
        "response_bytes": len(json.dumps(data)),
    }


# ----- /messages paged backwards -----------------------------------------------------------


async def messages(
    session: aiohttp.ClientSession,
    base: str,
    events: int = 2000,
    limit: int = 50,
    fill_batch: int = 10,
) -> dict[str, Any]:
    """`events` messages in one room, then /messages backwards from the newest, `limit` a
    page, to the room's start. The messages are sent `fill_batch` at a time, each batch
    after the last has been answered: their order within a batch is the server's, between
    batches it is known. Checked: every message seen once, and every batch after the
    batches sent later (with `fill_batch=1`, exactly newest first)."""
    user = (await new_clients(session, base, 1, "historian"))[0]
    room_id = await user.create_room(preset="private_chat")
    for first in range(0, events, fill_batch):
        await asyncio.gather(
            *(user.send(room_id, f"event {i}") for i in range(first, min(first + fill_batch, events)))
        )
    quoted = urllib.parse.quote(room_id)
    timings = []
    seen: list[int] = []
    token = None
    start_all = time.perf_counter()
    while True:
        path = f"/_matrix/client/v3/rooms/{quoted}/messages?dir=b&limit={limit}"
        if token:
            path += f"&from={urllib.parse.quote(token)}"
        start = time.perf_counter()
        data = await user.call("GET", path)
        timings.append(time.perf_counter() - start)
        seen.extend(
            int(e["content"]["body"].split()[1]) for e in data["chunk"]
            if e["type"] == "m.room.message"
        )
        token = data.get("end")
        if not token or not data["chunk"]:
            break
    total = time.perf_counter() - start_all
    return {
        "events": events, "limit": limit, "pages": len(timings),
        "pages_per_second": round(len(timings) / total, 1), "page": summary(timings),
        "messages_seen": len(seen), "distinct_seen": len(set(seen)),
        "newest_first": [n // fill_batch for n in seen]
        == sorted((n // fill_batch for n in seen), reverse=True),
        "complete": sorted(set(seen)) == list(range(events)),
    }


# ----- idle long-polls ---------------------------------------------------------------------


async def idle(
    session: aiohttp.ClientSession,
    base: str,
    connections: int = 500,
    server_pid: int | None = None,
    per_user: int = 50,
) -> dict[str, Any]:
    """Open `connections` /sync long-polls that nothing will wake (`per_user` a user, each
    with its own timeout so that no server can merge them), and read the server's memory
    before and after. Also its memory on arrival (the server is fresh)."""
    rss_start = rss_bytes(server_pid) if server_pid is not None else None
    users = await new_clients(session, base, max(1, -(-connections // per_user)), "idler")
    tokens = [(await u.sync(set_presence="offline"))["next_batch"] for u in users]
    await asyncio.sleep(1.0)
    rss_before = rss_bytes(server_pid) if server_pid is not None else None
    opened = [0]
    answered: list[str] = []

    async def hold(i: int) -> None:
        user = users[i // per_user]
        opened[0] += 1
        try:
            await user.sync(tokens[i // per_user], timeout=240_000 + i, set_presence="offline")
            answered.append("response")
        except (aiohttp.ClientError, RuntimeError) as e:
            answered.append(f"{type(e).__name__}: {e}")

    tasks = []
    for i in range(connections):
        tasks.append(asyncio.ensure_future(hold(i)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # no flood of SYNs past the listen backlog
    await asyncio.sleep(2.0 + connections / 1000)
    rss_after = rss_bytes(server_pid) if server_pid is not None else None
    still_open = sum(1 for t in tasks if not t.done())
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result: dict[str, Any] = {
        "connections": connections, "still_open": still_open,
        "answered_early": len(answered), "first_answers": answered[:3],
    }
    if server_pid is not None:
        assert rss_start is not None and rss_before is not None and rss_after is not None
        result.update(
            rss_at_start_mb=round(rss_start / 2**20, 1),
            rss_before_mb=round(rss_before / 2**20, 1),
            rss_after_mb=round(rss_after / 2**20, 1),
            rss_per_connection_kb=round((rss_after - rss_before) / connections / 1024, 2),
        )
    return result
