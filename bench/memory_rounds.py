"""Memory of one Heddle process across repeated rounds of the same load.

    .venv/bin/python bench/memory_rounds.py                       # 4 rounds, SQLite
    .venv/bin/python bench/memory_rounds.py --rounds 6 --no-tracemalloc   # RSS only
    .venv/bin/python bench/memory_rounds.py --db postgresql://postgres@127.0.0.1:5432/postgres

One server runs for the whole bench, in a child process (this script with `--serve`),
listening on loopback only. After setup and after each round the child collects garbage and
reports its RSS (VmRSS), its peak RSS (VmHWM), the Python objects alive by type, the
`heddle_cache_size` gauges, and (unless `--no-tracemalloc`) what tracemalloc saw grow
since the previous round, by source line. tracemalloc costs memory itself (its traces):
take RSS figures from `--no-tracemalloc` runs.

A round is the load `bench/heddle_bench.py` uses for syncing, scaled up: 200 new users
long-poll `/sync` (30 s timeout) while 20 new users send 20 messages each into 10 new
public rooms (20 readers and 2 senders per room), until every reader has seen every
message of its room. Each round registers new users and creates new rooms, so anything the
server keeps per user, device, token or room without a bound grows round after round;
with bounded caches, RSS should level off once they are full.

A growing RSS alone does not prove a leak: CPython's allocator keeps freed arenas and
fragments, and glibc's malloc keeps freed memory, so RSS may stay up after what filled it
is gone. The tracemalloc and object-count diffs tell them apart: they count live Python
objects only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MEASURE_PREFIX = "MEASURE "


# ----- the server side (child process) -----------------------------------------------------


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _cache_sizes() -> dict[str, float]:
    from prometheus_client import REGISTRY

    sizes: dict[str, float] = {}
    for family in REGISTRY.collect():
        if family.name == "heddle_cache_size":
            for sample in family.samples:
                sizes[sample.labels["cache"]] = sample.value
    return sizes


class _Measurer:
    def __init__(self, trace: bool, top: int) -> None:
        self.trace = trace
        self.top = top
        self.previous: tracemalloc.Snapshot | None = None
        self.previous_types: Counter[str] = Counter()

    def measure(self, label: str) -> dict[str, Any]:
        gc.collect()
        types = Counter(type(o).__name__ for o in gc.get_objects())
        result: dict[str, Any] = {
            "label": label,
            "rss_kb": _proc_status_kb("VmRSS"),
            "peak_rss_kb": _proc_status_kb("VmHWM"),
            "gc_objects": sum(types.values()),
            "type_growth": [
                [name, types[name], grown]
                for name, grown in (types - self.previous_types).most_common(self.top)
            ] if self.previous_types else [],
            "caches": _cache_sizes(),
        }
        self.previous_types = types
        if self.trace:
            snapshot = tracemalloc.take_snapshot().filter_traces(
                (tracemalloc.Filter(False, tracemalloc.__file__),)
            )
            current, _peak = tracemalloc.get_traced_memory()
            result["traced_kb"] = current // 1024
            if self.previous is not None:
                # Grouped by the whole kept traceback (`--frames`), innermost frame first.
                stats = snapshot.compare_to(self.previous, "traceback")
                result["top_growers"] = [
                    [[str(frame) for frame in reversed(s.traceback)], s.size_diff // 1024,
                     s.count_diff]
                    for s in stats[: self.top]
                ]
            self.previous = snapshot
        return result


def serve(config_path: str, trace: bool, frames: int, top: int) -> None:
    """Run the homeserver; answer `measure LABEL` lines on stdin with one JSON line."""
    if trace:
        tracemalloc.start(frames)
    from twisted.internet import defer, reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from homeserver.app import HomeServer
    from homeserver.cli import setup_logging
    from homeserver.config import load_config

    config = load_config(config_path)
    setup_logging(config)
    hs = HomeServer(config, reactor)
    measurer = _Measurer(trace, top)

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            command, _, label = line.decode().strip().partition(" ")
            if command == "measure":
                self._answer(measurer.measure(label))
            elif command == "stop":
                reactor.stop()  # type: ignore[attr-defined]

        def _answer(self, result: dict[str, Any]) -> None:
            self.transport.write((MEASURE_PREFIX + json.dumps(result) + "\n").encode())

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:  # type: ignore[attr-defined]
                reactor.stop()  # type: ignore[attr-defined]

    async def start() -> None:
        await hs.setup()
        hs.start_listening()
        stdio.StandardIO(Commands())
        sys.stderr.write("serving\n")
        sys.stderr.flush()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()))  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "before", "shutdown", lambda: defer.ensureDeferred(hs.stop())
    )
    reactor.run()  # type: ignore[attr-defined]


# ----- the load side (this process) --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The child process: start it, ask it to measure, stop it."""

    def __init__(self, args: argparse.Namespace) -> None:
        import yaml

        self.data_dir = Path(tempfile.mkdtemp(prefix="heddle-memory-"))
        self.port = free_port()
        self.pg_name: str | None = None
        self.admin_url = args.db
        subprocess.run(
            [sys.executable, "-m", "homeserver.cli", "generate-config", "--server-name",
             "bench.local", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            check=True, stdout=subprocess.DEVNULL, cwd=ROOT,
        )
        config_path = self.data_dir / "homeserver.yaml"
        config = yaml.safe_load(config_path.read_text())
        config["listeners"] = [{"type": "client", "bind_address": "127.0.0.1", "port": self.port}]
        config["rate_limits"] = {"enabled": False}
        config["auth"]["bcrypt_rounds"] = 4
        config["logging"] = {"level": "WARNING"}
        if args.db != "sqlite":
            self.pg_name = f"heddle_bench_{uuid.uuid4().hex[:8]}"
            self._pg(f'CREATE DATABASE "{self.pg_name}"')
            url = args.db.rsplit("/", 1)[0] + "/" + self.pg_name
            config["database"] = {"url": url, "max_connections": 10}
        config_path.write_text(yaml.safe_dump(config))
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(config_path),
                   "--frames", str(args.frames), "--top", str(args.top)]
        if not args.tracemalloc:
            command.append("--no-tracemalloc")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def _pg(self, statement: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
        conn.close()

    def measure(self, label: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"measure {label}\n")
        self.process.stdin.flush()
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("the server exited")
            if line.startswith(MEASURE_PREFIX):
                return json.loads(line[len(MEASURE_PREFIX):])

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.pg_name is not None:
            self._pg(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Client:
    def __init__(self, session: Any, base: str) -> None:
        self.session = session
        self.base = base
        self.token = ""

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.request(method, self.base + path, json=body, headers=headers) as r:
            data = await r.json()
            if r.status != 200:
                raise RuntimeError(f"{method} {path}: {r.status} {data}")
            return data

    async def register(self, name: str) -> None:
        data = await self.call(
            "POST", "/_matrix/client/v3/register",
            {"username": name, "password": "bench-password", "auth": {"type": "m.login.dummy"}},
        )
        self.token = data["access_token"]


async def _bounded(coroutines: list[Any], limit: int = 20) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def run(coroutine: Any) -> Any:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(run(c) for c in coroutines))


async def one_round(base: str, round_no: int, args: argparse.Namespace) -> dict[str, float]:
    import aiohttp

    prefix = f"r{round_no}_{secrets.token_hex(3)}_"
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        readers = [Client(session, base) for _ in range(args.readers)]
        senders = [Client(session, base) for _ in range(args.senders)]
        await _bounded(
            [c.register(f"{prefix}reader{i}") for i, c in enumerate(readers)]
            + [c.register(f"{prefix}sender{i}") for i, c in enumerate(senders)]
        )
        rooms = await _bounded([
            senders[i].call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})
            for i in range(args.rooms)
        ])
        room_ids = [r["room_id"] for r in rooms]
        room_of_reader = {i: room_ids[i % args.rooms] for i in range(len(readers))}
        room_of_sender = {i: room_ids[i % args.rooms] for i in range(len(senders))}
        await _bounded(
            [readers[i].call("POST", f"/_matrix/client/v3/join/{room_of_reader[i]}", {})
             for i in range(len(readers))]
            + [senders[i].call("POST", f"/_matrix/client/v3/join/{room_of_sender[i]}", {})
               for i in range(args.rooms, len(senders))]
        )
        expected: Counter[str] = Counter(room_of_sender[i] for i in range(len(senders)))
        for room_id in expected:
            expected[room_id] *= args.messages
        tokens = await _bounded([r.call("GET", "/_matrix/client/v3/sync?timeout=0") for r in readers])
        setup_s = time.perf_counter() - started
        syncs = 0

        async def read(i: int, since: str) -> None:
            nonlocal syncs
            room_id = room_of_reader[i]
            seen = 0
            while seen < expected[room_id]:
                data = await readers[i].call(
                    "GET", f"/_matrix/client/v3/sync?timeout=30000&since={since}"
                )
                syncs += 1
                since = data["next_batch"]
                timeline = data["rooms"]["join"].get(room_id, {}).get("timeline", {})
                seen += sum(
                    1 for e in timeline.get("events", [])
                    if e["type"] == "m.room.message" and e["content"].get("body", "").startswith(prefix)
                )

        async def send(i: int) -> None:
            for n in range(args.messages):
                txn = secrets.token_hex(8)
                await senders[i].call(
                    "PUT",
                    f"/_matrix/client/v3/rooms/{room_of_sender[i]}/send/m.room.message/{txn}",
                    {"msgtype": "m.text", "body": f"{prefix} message {n} from sender {i}"},
                )

        load_started = time.perf_counter()
        reading = [asyncio.ensure_future(read(i, t["next_batch"])) for i, t in enumerate(tokens)]
        await asyncio.sleep(0.5)  # let the readers park in their long-polls
        await asyncio.gather(*(send(i) for i in range(len(senders))))
        await asyncio.wait_for(asyncio.gather(*reading), timeout=300)
        return {
            "setup_s": round(setup_s, 1),
            "load_s": round(time.perf_counter() - load_started, 1),
            "syncs": syncs,
            "messages": len(senders) * args.messages,
        }


def _print_measurement(m: dict[str, Any], load: dict[str, float] | None, args: argparse.Namespace) -> None:
    line = f"{m['label']:>8}: RSS {m['rss_kb'] / 1024:6.1f} MB (peak {m['peak_rss_kb'] / 1024:.1f})"
    line += f", {m['gc_objects']:,} gc objects"
    if "traced_kb" in m:
        line += f", traced {m['traced_kb'] / 1024:.1f} MB"
    if load:
        line += f"; load {load}"
    print(line, flush=True)
    if m["caches"]:
        print("          caches: " + ", ".join(
            f"{name}={int(size)}" for name, size in sorted(m["caches"].items())
        ))
    if m.get("type_growth"):
        print("          object types grown: " + ", ".join(
            f"{name} +{grown}" for name, _count, grown in m["type_growth"][: args.top]
        ))
    for frames, kb, count in m.get("top_growers", [])[: args.top]:
        print(f"          {kb:+7d} KB {count:+8d} objs  {frames[0]}")
        for frame in frames[1:]:
            print(f"                                    < {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite", help="'sqlite' or a PostgreSQL admin URL")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--readers", type=int, default=200)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--messages", type=int, default=20, help="messages per sender per round")
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc frames kept")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.tracemalloc, args.frames, args.top)
        return
    if args.senders < args.rooms:
        parser.error("--senders must be at least --rooms")
    server = Server(args)
    results: list[dict[str, Any]] = []
    try:
        from heddle_bench import wait_until_up

        # Start-up under tracemalloc with many frames takes a while.
        asyncio.run(wait_until_up(server.base, 120.0))
        results.append(server.measure("start"))
        _print_measurement(results[-1], None, args)
        for round_no in range(1, args.rounds + 1):
            load = asyncio.run(one_round(server.base, round_no, args))
            results.append({**server.measure(f"round {round_no}"), "load": load})
            _print_measurement(results[-1], load, args)
    finally:
        server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    main()
