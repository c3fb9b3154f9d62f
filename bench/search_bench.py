"""Server-side search: query latency over a large index, and what the index costs a send.

    .venv/bin/python bench/search_bench.py --db sqlite
    .venv/bin/python bench/search_bench.py --db postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/search_bench.py --db sqlite --messages 10000 --rooms 10   # quicker

1. Fill: one user creates `--rooms` rooms and sends `--messages` messages spread over them,
   each straight through `EventCreator.send` (the whole persist path, the index included),
   ten rooms at a time. Bodies are 6-12 words drawn from a 5,000-word vocabulary with a
   Zipf distribution, so some words are in a tenth of the messages and most in a few dozen.
   The time spent indexing (`index_event_txn`, inside each event's transaction) is summed
   apart from the rest.
2. Index cost: `--cost-sample` more messages sent with the index, then as many with
   `index_event_txn` replaced by a no-op, interleaved in blocks of 500 (the machine's load
   moves): events per second each way.
3. Queries over real HTTP (`POST /search`, the server's own listener, the client in the
   same process): `--queries` one-word searches for words drawn uniformly from the
   vocabulary (`order_by: rank`, then `recent`), and each of the ten commonest words.

With `--synapse` (and `HEDDLE_SYNAPSE_PYTHON`, or `.synapse-venv`), the same is done
against a Synapse instead (`tests/synapse_peer.py`: SQLite, whose search is FTS4), filled
over HTTP (`PUT /send`, ten rooms at a time) rather than in-process, so the fill rate is not
comparable; the queries are. Synapse's `rank` search does not paginate; `recent` does.

Results are printed as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task  # noqa: E402
from twisted.web.client import (  # noqa: E402
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    readBody,
)
from twisted.web.http_headers import Headers  # noqa: E402

import storage.persister as persister_module  # noqa: E402
from bench.heddle_bench import create_pg_database, drop_pg_database  # noqa: E402
from homeserver.app import HomeServer  # noqa: E402
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS  # noqa: E402
from tests.harness import make_config  # noqa: E402

VOCABULARY = 5000
USER = "@searcher:test.heddle"


def words_source(seed: int) -> tuple[list[str], Callable[[], str]]:
    """The vocabulary and a function making a message body from it (Zipf, s = 1)."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}x" for i in range(VOCABULARY)]
    weights = [1 / (rank + 1) for rank in range(VOCABULARY)]

    def body() -> str:
        return " ".join(rng.choices(vocabulary, weights, k=rng.randint(6, 12)))

    return vocabulary, body


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * fraction) - 1, 0)]


def timings(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p95_ms": round(percentile(values, 0.95) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


Search = Callable[[str, str], Awaitable[tuple[float, int]]]


async def query_latencies(
    search: Search, vocabulary: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """`args.queries` one-word searches (words drawn uniformly) in each order, after one
    to warm up: their latencies and how many matches they had. `search(word, order_by)`
    returns (seconds, count)."""
    rng = random.Random(args.seed + 1)
    queries = [rng.choice(vocabulary) for _ in range(args.queries)]
    await search(queries[0], "rank")
    by_order: dict[str, Any] = {}
    for order_by in ("rank", "recent"):
        latencies, counts = [], []
        for word in queries:
            elapsed, count = await search(word, order_by)
            latencies.append(elapsed)
            counts.append(count)
        by_order[order_by] = {**timings(latencies), "median_matches": statistics.median(counts)}
    return by_order


async def make_rooms(hs: HomeServer, count: int) -> list[str]:
    rooms = []
    rv = KNOWN_ROOM_VERSIONS["11"]
    for _ in range(count):
        room_id, _ = await hs.event_creator.create_room(
            rv, USER, {"room_version": "11"}, is_public=False
        )
        await hs.event_creator.send(
            room_id, USER, "m.room.member", {"membership": "join"}, state_key=USER
        )
        await hs.event_creator.send(
            room_id, USER, "m.room.power_levels", {"users": {USER: 100}}, state_key=""
        )
        rooms.append(room_id)
    return rooms


async def send_messages(
    hs: HomeServer, rooms: list[str], count: int, body: Callable[[], str], parallel: int = 10
) -> float:
    """Send `count` messages round-robin over `rooms`, `parallel` rooms at a time; seconds."""
    per_room = [
        count // len(rooms) + (1 if i < count % len(rooms) else 0) for i in range(len(rooms))
    ]

    async def fill(room_id: str, n: int) -> None:
        for _ in range(n):
            await hs.event_creator.send(
                room_id, USER, "m.room.message", {"msgtype": "m.text", "body": body()}
            )

    start = time.perf_counter()
    for first in range(0, len(rooms), parallel):
        await defer.gatherResults(
            [
                defer.ensureDeferred(fill(room_id, per_room[first + i]))
                for i, room_id in enumerate(rooms[first : first + parallel])
            ]
        )
    return time.perf_counter() - start


async def run(reactor: Any, args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="heddle-search-bench-"))
    pg_name = None
    overrides: dict[str, Any] = {"logging": {"level": "WARNING"}}
    if args.db != "sqlite":
        url, pg_name = create_pg_database(args.db)
        overrides["database"] = {"url": url, "max_connections": 10}
    engine = "sqlite" if args.db == "sqlite" else "postgresql"
    config = make_config(engine, data_dir, **overrides)
    hs = HomeServer(config, reactor)
    await hs.setup()
    hs.start_listening()
    try:
        result = await measure(reactor, hs, args)
        result["engine"] = engine
        result["load_average"] = os.getloadavg()
        print(json.dumps(result, indent=2))
    finally:
        await hs.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        if pg_name is not None:
            drop_pg_database(args.db, pg_name)


async def measure(reactor: Any, hs: HomeServer, args: argparse.Namespace) -> dict[str, Any]:
    vocabulary, body = words_source(args.seed)
    port = hs.ports[0].getHost().port
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=True))

    async def post(path: str, payload: Any, token: str | None = None) -> tuple[int, Any]:
        headers = Headers({b"Content-Type": [b"application/json"]})
        if token is not None:
            headers.setRawHeaders(b"Authorization", [f"Bearer {token}".encode()])
        response = await agent.request(
            b"POST",
            f"http://127.0.0.1:{port}/_matrix/client/v3{path}".encode(),
            headers,
            FileBodyProducer(io.BytesIO(json.dumps(payload).encode())),
        )
        return response.code, json.loads(await readBody(response))

    code, session = await post(
        "/register",
        {
            "username": "searcher",
            "password": "bench-password",
            "auth": {"type": "m.login.dummy"},
        },
    )
    assert code == 200 and session["user_id"] == USER, session
    token = session["access_token"]

    # 1. Fill, timing the index's share.
    index_seconds = 0.0
    original_index = persister_module.index_event_txn

    def timed_index(*a: Any) -> None:
        nonlocal index_seconds
        start = time.perf_counter()
        original_index(*a)
        index_seconds += time.perf_counter() - start

    persister_module.index_event_txn = timed_index  # type: ignore[assignment]
    rooms = await make_rooms(hs, args.rooms)
    fill_seconds = await send_messages(hs, rooms, args.messages, body)
    persister_module.index_event_txn = original_index  # type: ignore[assignment]

    # 2. Index cost, interleaved blocks with and without it.
    with_index: list[float] = []
    without_index: list[float] = []
    block = 500
    for _ in range(max(args.cost_sample // block, 1)):
        with_index.append(await send_messages(hs, rooms, block, body) / block)
        persister_module.index_event_txn = lambda *a: None  # type: ignore[assignment]
        try:
            without_index.append(await send_messages(hs, rooms, block, body) / block)
        finally:
            persister_module.index_event_txn = original_index  # type: ignore[assignment]

    # 3. Queries over HTTP.
    async def search(word: str, order_by: str) -> tuple[float, int]:
        body = {"search_categories": {"room_events": {"search_term": word, "order_by": order_by}}}
        start = time.perf_counter()
        code, data = await post("/search", body, token)
        elapsed = time.perf_counter() - start
        assert code == 200, data
        return elapsed, data["search_categories"]["room_events"]["count"]

    by_order = await query_latencies(search, vocabulary, args)
    common: dict[str, Any] = {}
    for word in vocabulary[:10]:
        elapsed, count = await search(word, "rank")
        common[word] = {"ms": round(elapsed * 1000, 2), "matches": count}

    total_events = args.messages + 2 * args.rooms
    return {
        "rooms": args.rooms,
        "messages": args.messages,
        "fill_seconds": round(fill_seconds, 1),
        "fill_events_per_second": round(args.messages / fill_seconds, 1),
        "index_ms_per_event_inside_transaction": round(index_seconds / total_events * 1000, 4),
        "send_ms_with_index": round(statistics.median(with_index) * 1000, 3),
        "send_ms_without_index": round(statistics.median(without_index) * 1000, 3),
        "events_per_second_with_index": round(1 / statistics.median(with_index), 1),
        "events_per_second_without_index": round(1 / statistics.median(without_index), 1),
        "one_word_query": by_order,
        "ten_commonest_words_rank": common,
    }


async def run_synapse(reactor: Any, args: argparse.Namespace) -> None:
    import hashlib
    import hmac
    import secrets
    from urllib.parse import quote

    from tests.synapse_peer import SynapsePeer, TrustOneCertificate

    vocabulary, body = words_source(args.seed)
    work_dir = Path(tempfile.mkdtemp(prefix="synapse-search-bench-"))
    peer = SynapsePeer(work_dir)
    await peer.start()
    try:
        # Kept-alive connections: a TLS handshake per query would dwarf the search.
        agent = Agent(
            reactor,
            contextFactory=TrustOneCertificate(peer.cert_pem),
            pool=HTTPConnectionPool(reactor, persistent=True),
        )
        base = f"https://{peer.server_name}"

        async def call(
            method: str, path: str, payload: Any = None, token: str | None = None
        ) -> Any:
            headers = Headers({b"Content-Type": [b"application/json"]})
            if token is not None:
                headers.setRawHeaders(b"Authorization", [f"Bearer {token}".encode()])
            producer = (
                FileBodyProducer(io.BytesIO(json.dumps(payload).encode()))
                if payload is not None
                else None
            )
            response = await agent.request(
                method.encode(), (base + path).encode(), headers, producer
            )
            data = json.loads(await readBody(response))
            assert response.code == 200, (path, data)
            return data

        register = "/_synapse/admin/v1/register"
        nonce = (await call("GET", register))["nonce"]
        mac = hmac.new(
            peer.registration_shared_secret.encode(),
            b"\x00".join([nonce.encode(), b"searcher", b"bench-password", b"notadmin"]),
            hashlib.sha1,
        ).hexdigest()
        token = (
            await call(
                "POST",
                register,
                {"nonce": nonce, "username": "searcher", "password": "bench-password", "mac": mac},
            )
        )["access_token"]
        api = "/_matrix/client/v3"
        rooms = [
            (await call("POST", f"{api}/createRoom", {}, token))["room_id"]
            for _ in range(args.rooms)
        ]
        per_room = args.synapse_messages // args.rooms

        async def fill(room_id: str) -> None:
            for _ in range(per_room):
                await call(
                    "PUT",
                    f"{api}/rooms/{quote(room_id)}/send/m.room.message/{secrets.token_hex(8)}",
                    {"msgtype": "m.text", "body": body()},
                    token,
                )

        start = time.perf_counter()
        for first in range(0, len(rooms), 10):
            await defer.gatherResults(
                [defer.ensureDeferred(fill(r)) for r in rooms[first : first + 10]]
            )
        fill_seconds = time.perf_counter() - start

        async def search(word: str, order_by: str) -> tuple[float, int]:
            started = time.perf_counter()
            data = await call(
                "POST",
                f"{api}/search",
                {"search_categories": {"room_events": {"search_term": word, "order_by": order_by}}},
                token,
            )
            return time.perf_counter() - started, data["search_categories"]["room_events"]["count"]

        by_order = await query_latencies(search, vocabulary, args)
        print(
            json.dumps(
                {
                    "server": "synapse",
                    "rooms": args.rooms,
                    "messages": per_room * args.rooms,
                    "fill_seconds_over_http": round(fill_seconds, 1),
                    "one_word_query": by_order,
                    "load_average": os.getloadavg(),
                },
                indent=2,
            )
        )
    finally:
        await peer.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="sqlite", help="'sqlite' or a PostgreSQL admin URL")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--cost-sample", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--synapse", action="store_true", help="measure a Synapse instead")
    parser.add_argument("--synapse-messages", type=int, default=10_000)
    args = parser.parse_args()
    runner = run_synapse if args.synapse else run
    task.react(lambda reactor: defer.ensureDeferred(runner(reactor, args)))


if __name__ == "__main__":
    main()
