"""Heddle beside Synapse: the same client-API load against each, on SQLite and PostgreSQL.

    .venv/bin/python bench/compare_bench.py \\
        --db sqlite --db postgresql://postgres@127.0.0.1:5432/postgres --runs 3 --json out.json
    .venv/bin/python bench/compare_bench.py --only fanout --listeners 1000 --servers heddle

Every scenario gets a fresh server and database (Heddle from a generated config as in
heddle_bench.py; Synapse from `$HEDDLE_SYNAPSE_PYTHON` as in tests/synapse_peer.py, plain
HTTP, on PostgreSQL through psycopg2 in its virtualenv); rate limits are off and both log
warnings only. With `--runs N` the servers take turns (Synapse, Heddle, Synapse, Heddle...)
so that a change in the machine's load hits both; each figure is the median of its runs.
The clients (bench/scenarios.py, plain aiohttp) run in this process.

Scenarios (bench/scenarios.py):
  send          --senders users x --per-sender messages, concurrently, one room:
                events/s, send latency.
  fanout        --listeners users long-poll /sync in one room; one sender sends
                --fanout-messages at --rate a second: send-to-receive latency per
                (listener, event), the send rate reached, missing/duplicate deliveries,
                sync responses written, the server's CPU (user+sys, /proc) per delivered event.
  initial_sync  a user in --rooms rooms x --room-messages messages syncs from nothing
                --sync-requests times.
  messages      /messages backwards, --page-limit a page, over --history-events events: pages/s.
  idle          --idle-connections /sync long-polls held open: the server's memory per
                connection, and its memory when just started.

Prints a table (ratios Heddle/Synapse and Heddle-PG/Heddle-SQLite) and, with --json, writes
every run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sqlite3
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import scenarios  # noqa: E402
from bench.servers import SERVERS, Running  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"

Scenario = Callable[[aiohttp.ClientSession, Running, argparse.Namespace], Awaitable[dict[str, Any]]]

SCENARIOS: dict[str, Scenario] = {
    "send": lambda s, srv, a: scenarios.send(s, srv.base, a.senders, a.per_sender),
    "fanout": lambda s, srv, a: scenarios.fanout(
        s, srv.base, a.listeners, a.fanout_messages, a.rate, server_pid=srv.pid
    ),
    "initial_sync": lambda s, srv, a: scenarios.initial_sync(
        s, srv.base, a.rooms, a.room_messages, a.sync_requests
    ),
    "messages": lambda s, srv, a: scenarios.messages(s, srv.base, a.history_events, a.page_limit),
    "idle": lambda s, srv, a: scenarios.idle(s, srv.base, a.idle_connections, server_pid=srv.pid),
}

# What the table shows: (scenario, label, path into the result).
ROWS: list[tuple[str, str, tuple[str, ...]]] = [
    ("send", "events/s", ("events_per_second",)),
    ("send", "send p50 ms", ("send_latency", "p50_ms")),
    ("send", "send p99 ms", ("send_latency", "p99_ms")),
    ("fanout", "send->receive p50 ms", ("send_to_receive", "p50_ms")),
    ("fanout", "send->receive p99 ms", ("send_to_receive", "p99_ms")),
    ("fanout", "send rate reached /s", ("achieved_send_rate",)),
    ("fanout", "missing deliveries", ("missing",)),
    ("fanout", "duplicate deliveries", ("duplicates",)),
    ("fanout", "sync responses", ("sync_responses",)),
    ("fanout", "server CPU ms/delivered event", ("server_cpu_ms_per_delivered_event",)),
    ("initial_sync", "initial sync p50 ms", ("initial_sync", "p50_ms")),
    ("initial_sync", "initial sync p99 ms", ("initial_sync", "p99_ms")),
    ("messages", "pages/s", ("pages_per_second",)),
    ("messages", "page p50 ms", ("page", "p50_ms")),
    ("idle", "RSS at start MB", ("rss_at_start_mb",)),
    ("idle", "RSS per idle long-poll KB", ("rss_per_connection_kb",)),
]


def engine_name(db: str) -> str:
    return "sqlite" if db == "sqlite" else "postgresql"


def dig(result: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every numeric leaf replaced by its median over `runs` (those that did not fail);
    other leaves from the first."""
    runs = [r for r in runs if "error" not in r]

    def merge(values: list[Any]) -> Any:
        if all(isinstance(v, dict) for v in values):
            return {k: merge([v[k] for v in values if k in v]) for k in values[0]}
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            return statistics.median(values)
        return values[0]

    return merge(runs) if runs else {}


async def run_one(server: str, db: str, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with SERVERS[server](db) as running:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            started = time.perf_counter()
            result = await SCENARIOS[scenario](session, running, args)
            result["wall_seconds"] = round(time.perf_counter() - started, 1)
            result["load_average"] = [round(x, 2) for x in os.getloadavg()]
            return result


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value else "0"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def table(medians: dict[tuple[str, str, str], dict[str, Any]], dbs: list[str],
          servers: list[str], only: list[str]) -> str:
    engines = [engine_name(db) for db in dbs]
    header = ["scenario", "figure"]
    for engine in engines:
        header += [f"{server} {engine}" for server in ["synapse", "heddle"] if server in servers]
        if len(servers) == 2:
            header.append(f"H/S {engine}")
    pg_over_sqlite = "heddle" in servers and set(engines) == {"sqlite", "postgresql"}
    if pg_over_sqlite:
        header.append("Heddle PG/SQLite")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario, label, path in ROWS:
        if scenario not in only:
            continue
        row = [scenario, label]
        for engine in engines:
            values = {s: dig(medians.get((s, engine, scenario)), path) for s in servers}
            row += [fmt(values[s]) for s in ["synapse", "heddle"] if s in servers]
            if len(servers) == 2:
                row.append(ratio(values["heddle"], values["synapse"]))
        if pg_over_sqlite:
            row.append(ratio(
                dig(medians.get(("heddle", "postgresql", scenario)), path),
                dig(medians.get(("heddle", "sqlite", scenario)), path),
            ))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version, "load_average_at_start": os.getloadavg(),
    }


def raise_fd_limit() -> None:
    """Thousands of connections need thousands of descriptors, here and in the servers
    (which inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 1 << 20), hard))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", action="append",
                        help=f"'sqlite' or a PostgreSQL admin URL; repeatable "
                             f"(default: sqlite and {DEFAULT_PG})")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--servers", default="synapse,heddle",
                        help="comma-separated: heddle, synapse (default both)")
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--senders", type=int, default=20)
    sizes.add_argument("--per-sender", type=int, default=50)
    sizes.add_argument("--listeners", type=int, default=50, help="50; try 500, 1000")
    sizes.add_argument("--fanout-messages", type=int, default=100)
    sizes.add_argument("--rate", type=float, default=20.0, help="fan-out messages a second")
    sizes.add_argument("--rooms", type=int, default=100)
    sizes.add_argument("--room-messages", type=int, default=20)
    sizes.add_argument("--sync-requests", type=int, default=5)
    sizes.add_argument("--history-events", type=int, default=2000)
    sizes.add_argument("--page-limit", type=int, default=50)
    sizes.add_argument("--idle-connections", type=int, default=500, help="500; try 5000, 10000")
    args = parser.parse_args()
    dbs = args.db or ["sqlite", DEFAULT_PG]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for server in servers:
        if server not in SERVERS:
            parser.error(f"unknown server {server!r}")
    # Synapse first in each pair, as the table reads.
    servers = [s for s in ("synapse", "heddle") if s in servers]
    only = args.only or list(SCENARIOS)
    raise_fd_limit()

    about = machine()
    print(json.dumps({"machine": about}), flush=True)
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for db in dbs:
        for scenario in only:
            for n in range(args.runs):
                for server in servers:
                    try:
                        result = await run_one(server, db, scenario, args)
                    except Exception as e:  # one failed run is reported, not fatal
                        result = {"error": f"{type(e).__name__}: {e}"}
                    runs.setdefault((server, engine_name(db), scenario), []).append(result)
                    print(json.dumps({"server": server, "db": engine_name(db),
                                      "scenario": scenario, "run": n + 1, "result": result}),
                          flush=True)
    medians = {key: median_result(value) for key, value in runs.items()}
    about["load_average_at_end"] = os.getloadavg()
    print()
    print(f"runs: {args.runs}; load average at start {about['load_average_at_start']}, "
          f"at end {about['load_average_at_end']}")
    print(table(medians, dbs, servers, only))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": about, "args": {k: v for k, v in vars(args).items() if k != "json"},
            "runs": [{"server": s, "db": d, "scenario": c, "results": r}
                     for (s, d, c), r in runs.items()],
            "medians": [{"server": s, "db": d, "scenario": c, "result": r}
                        for (s, d, c), r in medians.items()],
        }, indent=1, default=str))


if __name__ == "__main__":
    os.chdir(ROOT)
    asyncio.run(main())
