"""Servers for the benchmarks: a fresh Heddle or Synapse, on SQLite or PostgreSQL.

`running_server(db)` starts Heddle (the `heddle` console script beside this Python) from a
freshly generated config; `running_synapse(db)` starts Synapse (its own virtualenv, found
as `tests/synapse_peer.py` finds it: `$HEDDLE_SYNAPSE_PYTHON`) with a plain-HTTP client
listener. Both yield a `Running` (base URL and the server's process ID), take rate limits
off and log warnings only, and drop their PostgreSQL database afterwards. `db` is "sqlite"
or a PostgreSQL admin URL (a database is created there for the server).

`cpu_seconds(pid)` and `rss_bytes(pid)` read /proc for a process and its descendants.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import yaml

ROOT = Path(__file__).resolve().parents[1]
HEDDLE = Path(sys.executable).parent / "heddle"


@dataclass
class Running:
    """A started server: where it answers, and its process."""

    name: str  # "heddle" or "synapse"
    base: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_pg_database(admin_url: str, c_locale: bool = False) -> tuple[str, str]:
    """A new database beside `admin_url`'s: (its URL, its name). `c_locale` makes it UTF-8
    with the C collation, as Synapse insists on."""
    name = f"heddle_bench_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        if c_locale:
            cur.execute(
                f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
                " TEMPLATE template0"
            )
        else:
            cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name, name


def drop_pg_database(admin_url: str, name: str) -> None:
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


async def wait_until_up(
    base: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once the server at `base` answers /versions (raise if `process` exits first)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} while starting")
            try:
                async with session.get(base + "/_matrix/client/versions") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("server did not start")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(_children(current))
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time so far of a process and its descendants: unlike latency,
    not inflated by whatever else runs on the machine (the clients, for a start)."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_heddle_config(
    data_dir: Path,
    port: int,
    metrics_port: int | None = None,
    database: dict[str, Any] | None = None,
    config_sections: dict[str, dict[str, Any]] | None = None,
    heddle: Path = HEDDLE,
) -> Path:
    """`heddle generate-config` into `data_dir`, then: a client listener on 127.0.0.1:`port`
    (and a metrics one), rate limits off, fast bcrypt, warnings only, `database` (a
    `database` section; SQLite in `data_dir` if None), `config_sections` merged in. Returns
    the config file's path."""
    subprocess.run(
        [str(heddle), "generate-config", "--server-name", "bench.local", "--data-dir",
         str(data_dir), "--port", str(port)],
        check=True, stdout=subprocess.DEVNULL,
    )
    config_path = data_dir / "homeserver.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["listeners"] = [{"type": "client", "bind_address": "127.0.0.1", "port": port}]
    if metrics_port is not None:
        config["listeners"].append(
            {"type": "metrics", "bind_address": "127.0.0.1", "port": metrics_port}
        )
    config["rate_limits"] = {"enabled": False}
    config["auth"]["bcrypt_rounds"] = 4
    config["logging"] = {"level": "WARNING"}
    for section, values in (config_sections or {}).items():
        config.setdefault(section, {}).update(values)
    if database is not None:
        config["database"] = database
    config_path.write_text(yaml.safe_dump(config))
    return config_path


@asynccontextmanager
async def running_server(
    db: str,
    pids: list[int] | None = None,
    about: dict[str, Any] | None = None,
    config_sections: dict[str, dict[str, Any]] | None = None,
    prepare: Callable[[Path], None] | None = None,
) -> AsyncIterator[str]:
    """Start a Heddle server; yield its base URL. Its process ID is appended to `pids`, and
    `about` gets "pid" and "metrics" (its /metrics URL), when given. `config_sections` are
    merged into the generated config's sections (`{"websocket": {"max_connections": 20000}}`).
    `prepare` is called with the config file's path once it is written and before the
    server starts (to fill its database, say)."""
    data_dir = Path(tempfile.mkdtemp(prefix="heddle-bench-"))
    port, metrics_port = free_port(), free_port()
    pg_name = None
    database = None
    if db != "sqlite":
        url, pg_name = create_pg_database(db)
        database = {"url": url, "max_connections": 10}
    config_path = write_heddle_config(data_dir, port, metrics_port, database, config_sections)
    if prepare is not None:
        prepare(config_path)
    command = [str(HEDDLE), "--config", str(config_path)]
    profile_to = os.environ.get("HEDDLE_BENCH_PROFILE")
    if profile_to:
        # Profiling is off until the benchmark sends SIGUSR1 (see heddle_bench's `profiled`).
        command = [sys.executable, str(ROOT / "bench" / "profiled_server.py"), profile_to,
                   "--config", str(config_path)]
    trace_to = os.environ.get("HEDDLE_BENCH_TRACEMALLOC")
    if trace_to:
        # Snapshots on SIGUSR1 and SIGUSR2, the same signals.
        command = [sys.executable, str(ROOT / "bench" / "traced_server.py"), trace_to,
                   "--config", str(config_path)]
    process = subprocess.Popen(command)
    if pids is not None:
        pids.append(process.pid)
    if about is not None:
        about.update(pid=process.pid, metrics=f"http://127.0.0.1:{metrics_port}/metrics")
    base = f"http://127.0.0.1:{port}"
    try:
        # Slower under tracemalloc, and on a loaded machine.
        await wait_until_up(base, 240.0 if trace_to else 60.0, process)
        yield base
    finally:
        _stop(process)
        if pg_name is not None:
            drop_pg_database(db, pg_name)
        shutil.rmtree(data_dir, ignore_errors=True)


@asynccontextmanager
async def running_heddle(db: str) -> AsyncIterator[Running]:
    """`running_server`, yielding a `Running`."""
    pids: list[int] = []
    async with running_server(db, pids=pids) as base:
        yield Running("heddle", base, pids[0])


def _synapse_log_config(path: Path, log_file: Path) -> None:
    """Warnings and worse, to a file: as Heddle logs in the benchmarks (Synapse's INFO
    request lines would cost it time Heddle does not spend)."""
    path.write_text(yaml.safe_dump({
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain",
                              "filename": str(log_file)}},
        "root": {"level": "WARNING", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }))


@asynccontextmanager
async def running_synapse(db: str) -> AsyncIterator[Running]:
    """Start a Synapse (config from `tests.synapse_peer.SynapsePeer`: every rate limit
    unlimited) with open registration (m.login.dummy) on a plain-HTTP client listener."""
    sys.path.insert(0, str(ROOT))
    from tests.synapse_peer import _DROPPED_ENV, SynapsePeer, require_synapse

    python = require_synapse()
    work_dir = Path(tempfile.mkdtemp(prefix="synapse-bench-"))
    port = free_port()
    log_config = work_dir / "bench_log_config.yaml"
    _synapse_log_config(log_config, work_dir / "homeserver.log")
    extra: dict[str, Any] = {
        "listeners": [{
            "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
            "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}],
        }],
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "log_config": str(log_config),
        # Repeated identical /sync requests would otherwise be answered from a cache.
        "caches": {"sync_response_cache_duration": 0},
    }
    pg_name = None
    if db != "sqlite":
        url, pg_name = create_pg_database(db, c_locale=True)
        rest = url.split("://", 1)[1]
        user_host, database = rest.rsplit("/", 1)
        user, _, host_port = user_host.rpartition("@")
        host, _, pg_port = host_port.partition(":")
        extra["database"] = {"name": "psycopg2", "args": {
            "user": user.split(":")[0] or "postgres", "host": host, "port": int(pg_port or 5432),
            "database": database, "cp_min": 5, "cp_max": 10,
        }}
    peer = SynapsePeer(work_dir, port=port, extra_config=extra)
    peer.write_files()
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    console = open(work_dir / "console.log", "ab")
    process = subprocess.Popen(
        [python, "-m", "synapse.app.homeserver", "-c", str(peer.config_path)],
        cwd=work_dir, env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_up(base, 120.0, process)
        yield Running("synapse", base, process.pid)
    finally:
        _stop(process)
        console.close()
        if pg_name is not None:
            drop_pg_database(db, pg_name)
        shutil.rmtree(work_dir, ignore_errors=True)


SERVERS = {"heddle": running_heddle, "synapse": running_synapse}
