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
import time
from pathlib import Path
from typing import Any

import aiohttp
from heddle_bench import ROOT, Client, new_clients, running_server, summary, sync_latency

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


async def open_listener(session: aiohttp.ClientSession, base: str, reader: Client, room_id: str) -> WsListener:
    ws = await session.ws_connect("ws" + base[4:] + WS_PATH, max_msg_size=0)
    await ws.send_json({"type": "auth", "access_token": reader.token})
    await ws.send_json({"type": "subscribe", "filter": {"room": {"timeline": {"limit": 1}}}})
    listener = WsListener(ws, room_id)
    listener.task = asyncio.ensure_future(listener.run())  # type: ignore[attr-defined]
    await listener.ready.wait()
    return listener


async def websocket_latency(session: aiohttp.ClientSession, base: str, n: int, messages: int) -> dict[str, Any]:
    readers, sender, room_id = await setup_room(session, base, n, "wsreader")
    listeners: list[WsListener] = []
    for start in range(0, n, 50):
        listeners += await asyncio.gather(
            *(open_listener(session, base, r, room_id) for r in readers[start:start + 50])
        )
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
    for listener in listeners:
        await listener.ws.close()
    return {"subscribers": n, "messages": messages, "send_to_frame": summary(latencies)}


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
    args = parser.parse_args()
    results: dict[str, Any] = {"db": "sqlite" if args.db == "sqlite" else "postgresql"}
    connector = lambda: aiohttp.TCPConnector(limit=0)  # noqa: E731
    async with running_server(args.db) as base:
        async with aiohttp.ClientSession(connector=connector()) as session:
            results["websocket"] = await websocket_latency(session, base, args.subscribers, args.messages)
    print(json.dumps(results["websocket"]), flush=True)
    async with running_server(args.db) as base:
        async with aiohttp.ClientSession(connector=connector()) as session:
            results["long_poll"] = await sync_latency(session, base, args.subscribers, args.messages)
    print(json.dumps(results["long_poll"]), flush=True)
    pids: list[int] = []
    async with running_server(args.db, pids) as base:
        async with aiohttp.ClientSession(connector=connector()) as session:
            results["memory"] = await idle_memory(session, base, pids[0], args.idle)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.chdir(ROOT)
    asyncio.run(main())
