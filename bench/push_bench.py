"""What push rule evaluation and notification counts cost, in one process (no HTTP).

    PYTHONPATH=. .venv/bin/python bench/push_bench.py                 # SQLite
    PYTHONPATH=. .venv/bin/python bench/push_bench.py --db postgresql

1. Sending: a public room with `--members` local members (default 1,000); one member sends
   `--messages` messages straight through `EventSendHandler.send_message`, in rounds that
   alternate between evaluation on (every other member's rules evaluated, the actions
   written in the event's transaction) and off (the persister's push hook removed).
   Each round with evaluation then waits for the background work it left (counting its
   actions into the summary) and is reported twice: the sends alone, and the sends with
   that work (so no round pays for another's). Reported: events/s of each, the send
   latency (sends are sequential: the inverse of the rate) and what evaluation adds to it,
   and the database transactions per message with evaluation.
2. /sync: a user in `--rooms` rooms (default 100), each with 5 messages from another user:
   an initial sync (`SyncHandler.sync` with no token) with counts read cold (the counts
   cache emptied before each run), warm, and with counts switched off; then an incremental
   sync after one new message in one room, warm.

A fresh server and database per run; the numbers are medians of the runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorCore

import tests  # noqa: F401  (installs the reactor the test harness uses)
from homeserver.app import HomeServer
from homeserver.auth.tokens import Requester
from homeserver.rooms.creation import RoomSpec
from homeserver.sync.handler import SyncRequest
from tests.harness import SERVER_NAME, isolate_from_dns, make_config, transactions_recorded

SERVER = SERVER_NAME


def requester(localpart: str) -> Requester:
    return Requester(f"@{localpart}:{SERVER}", "BENCH", "t", False)


async def start(engine: str) -> HomeServer:
    data_dir = Path(tempfile.mkdtemp(prefix="heddle-push-bench-"))
    from twisted.internet import reactor

    hs = HomeServer(make_config(engine, data_dir), reactor)
    isolate_from_dns(hs)
    await hs.setup()
    return hs


async def send_bench(engine: str, members: int, messages: int, rounds: int) -> dict[str, Any]:
    hs = await start(engine)
    try:
        owner = requester("owner")
        room_id = await hs.room_creation.create_room(owner, RoomSpec(preset="public_chat"))
        for i in range(members - 1):
            await hs.membership.join(requester(f"m{i}"), room_id)
        push = hs.persister._push_actions
        rates: dict[str, list[float]] = {"on": [], "on_drained": [], "off": []}
        txns: list[str] = []
        counter = 0
        # A first message warms the rules and room caches (what a running server holds).
        await hs.event_sender.send_message(
            owner, room_id, "m.room.message", {"msgtype": "m.text", "body": "warm"}, "warm"
        )
        await drain(hs)
        for _ in range(rounds):
            for mode in ("on", "off"):
                hs.persister._push_actions = push if mode == "on" else None
                started = time.perf_counter()
                with transactions_recorded(hs) as calls:
                    for _ in range(messages):
                        counter += 1
                        await hs.event_sender.send_message(
                            owner, room_id, "m.room.message",
                            {"msgtype": "m.text", "body": f"message {counter}"}, f"t{counter}",
                        )
                sent = time.perf_counter()
                rates[mode].append(messages / (sent - started))
                if mode == "on":
                    txns.extend(calls)
                    # The background work the round left (counting its actions into the
                    # summary), done now and charged to it: no round pays for another's.
                    await drain(hs)
                    rates["on_drained"].append(messages / (time.perf_counter() - started))
        hs.persister._push_actions = push
        rows = await hs.db.run_interaction(
            "count", lambda txn: txn.select_one("SELECT COUNT(*) FROM event_push_actions")
        )
        on, drained, off = (statistics.median(rates[m]) for m in ("on", "on_drained", "off"))
        return {
            "members": members,
            "events_per_s_with_evaluation": round(on, 1),
            "events_per_s_with_evaluation_and_its_background_work": round(drained, 1),
            "events_per_s_without": round(off, 1),
            # Sends are one after another: the latency of one is the inverse of the rate.
            "send_latency_ms_with_evaluation": round(1000 / on, 2),
            "send_latency_ms_with_evaluation_and_background_work": round(1000 / drained, 2),
            "send_latency_ms_without": round(1000 / off, 2),
            "latency_added_by_evaluation_pct": round(100 * (off / on - 1), 1),
            "latency_added_with_background_work_pct": round(100 * (off / drained - 1), 1),
            "transactions_per_message_with_evaluation": round(
                len(txns) / (messages * rounds), 2
            ),
            "push_action_rows": rows[0] if rows else None,
        }
    finally:
        await hs.stop()


async def drain(hs: HomeServer) -> None:
    """Count every queued push action into the summary (or, on code from before the
    summary, move every staged one), as the background rotation would."""
    store = hs.stores.push_action_store
    rotate = getattr(store, "rotate", None) or store.flush_staging
    while await rotate():
        pass


async def sync_bench(engine: str, rooms: int, runs: int) -> dict[str, Any]:
    hs = await start(engine)
    try:
        owner, reader = requester("owner"), requester("reader")
        room_ids = []
        for i in range(rooms):
            room_id = await hs.room_creation.create_room(owner, RoomSpec(preset="public_chat"))
            await hs.membership.join(reader, room_id)
            for j in range(5):
                await hs.event_sender.send_message(
                    owner, room_id, "m.room.message",
                    {"msgtype": "m.text", "body": f"m{j}"}, f"r{i}m{j}",
                )
            room_ids.append(room_id)
        counts = hs.notification_counts

        async def initial() -> float:
            started = time.perf_counter()
            response, _, _ = await hs.sync.sync(
                SyncRequest(reader.user_id, reader.device_id, None, False)
            )
            elapsed = (time.perf_counter() - started) * 1000
            sample = response["rooms"]["join"][room_ids[0]]
            assert ("unread_notifications" in sample) == (hs.sync._counts is not None)
            return elapsed

        cold, warm, off = [], [], []
        for _ in range(runs):
            counts._cache.clear()
            cold.append(await initial())
            warm.append(await initial())
            saved, hs.sync._counts = hs.sync._counts, None
            off.append(await initial())
            hs.sync._counts = saved
        # Incremental: one new message in one room, counts warm.
        incremental = []
        for i in range(runs):
            since = hs.sync.current_token()
            await hs.event_sender.send_message(
                owner, room_ids[i % rooms], "m.room.message",
                {"msgtype": "m.text", "body": "new"}, f"inc{i}",
            )
            started = time.perf_counter()
            with transactions_recorded(hs) as calls:
                response, _, _ = await hs.sync.sync(
                    SyncRequest(reader.user_id, reader.device_id, since, False)
                )
            incremental.append((time.perf_counter() - started) * 1000)
            assert "get_notification_counts" not in calls, calls
        return {
            "rooms": rooms,
            "initial_sync_ms_counts_cold": round(statistics.median(cold), 1),
            "initial_sync_ms_counts_warm": round(statistics.median(warm), 1),
            "initial_sync_ms_without_counts": round(statistics.median(off), 1),
            "incremental_sync_ms_one_new_message": round(statistics.median(incremental), 2),
        }
    finally:
        await hs.stop()


async def main(reactor: IReactorCore, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=("send", "sync"))
    args = parser.parse_args(argv)
    if args.only in (None, "send"):
        print(await send_bench(args.db, args.members, args.messages, args.rounds), flush=True)
    if args.only in (None, "sync"):
        print(await sync_bench(args.db, args.rooms, args.runs), flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
