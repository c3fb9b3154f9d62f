"""Joining a big Synapse-hosted room over federation: Heddle's joiner against Synapse's.

    .venv/bin/python bench/federation_join.py --db sqlite
    .venv/bin/python bench/federation_join.py --db postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/federation_join.py --db sqlite --db postgresql://...   # both, one room
    .venv/bin/python bench/federation_join.py --members 50 --state 200        # a quick check

What it does, with real servers as subprocesses on loopback:

1. starts a Synapse (`tests/synapse_peer.py`'s `SynapsePeer`, SQLite, fresh directory), the
   resident server;
2. builds a public room there: a creator, `--members - 1` more local users who join it
   (20 at a time), then custom `bench.state` state events from the creator, one at a time,
   until the room has `--state` state events in all (the member events count); the DAG's
   forks are merged (messages) so that the room has one forward extremity;
3. starts Heddle (`heddle generate-config`, then a federation listener over TLS on the port
   of its server name `127.0.0.1:<port>`, loopback federation allowed, certificates not
   verified, rate limits off), on SQLite or PostgreSQL (`--db`, as in heddle_bench.py; with
   several `--db`, one server per database joins in turn and stays in the room);
4. times a Heddle user's `POST /join/{room}?via=<synapse>` until it answers 200, then until
   `/joined_members` on Heddle lists everyone; and the CPU time the Heddle and the resident
   Synapse processes used meanwhile (from /proc/<pid>/stat), plus the resident's own
   accounting of the make_join/send_join requests (its access log);
5. for comparison, starts a second Synapse and times one of its users joining the same
   room through the first. Synapse 1.163 joins with partial state ("faster joins": the
   resident omits the member events from send_join and the joiner fetches the rest in the
   background), so both the answer to /join and the moment `/joined_members` answers (which
   on Synapse waits for the full state) are reported;
6. prints a markdown table and JSON (to stdout, or to the file named by --json).

`--profile FILE` runs Heddle under cProfile (slower; for finding where the time goes, not
for the figures) and prints its top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEDDLE = Path(sys.executable).parent / "heddle"
DEFAULT_SYNAPSE_PYTHON = "/work/synapse-venv/bin/python"
API = "/_matrix/client/v3"
CONCURRENCY = 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def q(value: str) -> str:
    return quote(value, safe="")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----- processes ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except FileNotFoundError:
        pass
    return None


class CpuMeter:
    """CPU seconds used by some processes since `start()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.base = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def used(self) -> dict[str, float]:
        return {name: round(cpu_seconds(pid) - self.base[name], 2) for name, pid in self.pids.items()}


# ----- Synapse's access log -------------------------------------------------------------------

_ACCESS = re.compile(
    r"Processed request: (?P<wall>[\d.]+)sec/(?P<send>[-\d.]+)sec "
    r"ru=\((?P<ru_user>[\d.]+)sec, (?P<ru_sys>[\d.]+)sec\) "
    r"db=\((?P<db_sched>[\d.]+)sec/(?P<db_txn>[\d.]+)sec/(?P<db_count>\d+)\) "
    r"(?P<bytes>\d+)B (?P<code>\d+)!? \"(?P<method>\w+) (?P<path>\S+)"
)


def log_time(line: str) -> float | None:
    """The time a Synapse or Heddle log line was written ("2026-11-26 05:31:13,283 ...")."""
    try:
        stamp = time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return time.mktime(stamp) + int(line[20:23]) / 1000


def log_offset(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def federation_requests(path: Path, start: int, end: int) -> list[dict[str, Any]]:
    """The federation requests Synapse finished serving between two offsets of its log."""
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode("utf-8", "replace")
    requests = []
    for line in text.splitlines():
        m = _ACCESS.search(line)
        if m and m["path"].startswith("/_matrix/federation/"):
            requests.append({
                "finished": log_time(line),
                "method": m["method"],
                "endpoint": m["path"].split("/")[4].split("?")[0],
                "wall_s": float(m["wall"]),
                "cpu_s": round(float(m["ru_user"]) + float(m["ru_sys"]), 3),
                "db_s": float(m["db_txn"]),
                "code": int(m["code"]),
                "bytes": int(m["bytes"]),
            })
    return requests


def summarise_requests(requests: list[dict[str, Any]]) -> dict[str, Any]:
    by_endpoint: dict[str, dict[str, Any]] = {}
    for r in requests:
        e = by_endpoint.setdefault(
            r["endpoint"], {"count": 0, "wall_s": 0.0, "cpu_s": 0.0, "bytes": 0, "codes": []}
        )
        e["count"] += 1
        e["wall_s"] = round(e["wall_s"] + r["wall_s"], 3)
        e["cpu_s"] = round(e["cpu_s"] + r["cpu_s"], 3)
        e["bytes"] += r["bytes"]
        if r["code"] not in e["codes"]:
            e["codes"].append(r["code"])
    return by_endpoint


# ----- HTTP -----------------------------------------------------------------------------------


class Http:
    """JSON over one aiohttp session, against one server."""

    def __init__(self, session: Any, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = None,
        timeout: float = 600, ok: tuple[int, ...] = (200,),
    ) -> Any:
        import aiohttp

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.base + path, json=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            text = await r.text()
            if r.status not in ok:
                raise RuntimeError(f"{method} {self.base}{path}: HTTP {r.status} {text[:500]}")
            return json.loads(text) if text else None


async def synapse_register(http: Http, secret: str, localpart: str, admin: bool = False) -> dict:
    """Shared-secret registration (Synapse's admin API); returns user_id and access_token."""
    path = "/_synapse/admin/v1/register"
    nonce = (await http.call("GET", path))["nonce"]
    password = "bench-" + localpart
    message = b"\x00".join(
        [nonce.encode(), localpart.encode(), password.encode(), b"admin" if admin else b"notadmin"]
    )
    mac = hmac.new(secret.encode(), message, hashlib.sha1).hexdigest()
    return await http.call("POST", path, {
        "nonce": nonce, "username": localpart, "password": password, "admin": admin, "mac": mac,
    })


async def bounded(n: int, coroutines: Any) -> list[Any]:
    semaphore = asyncio.Semaphore(n)

    async def run(c: Any) -> Any:
        async with semaphore:
            return await c

    return await asyncio.gather(*(run(c) for c in coroutines))


async def state_count(http: Http, room_id: str, token: str) -> int:
    return len(await http.call("GET", f"{API}/rooms/{q(room_id)}/state", token=token))


async def joined_count(http: Http, room_id: str, token: str, timeout: float = 600) -> int | None:
    try:
        data = await http.call(
            "GET", f"{API}/rooms/{q(room_id)}/joined_members", token=token, timeout=timeout
        )
    except RuntimeError:
        return None
    return len(data["joined"])


async def wait_for_members(
    http: Http, room_id: str, token: str, expected: int, deadline_s: float = 1800
) -> float:
    deadline = time.monotonic() + deadline_s
    while True:
        count = await joined_count(http, room_id, token)
        if count is not None and count >= expected:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise RuntimeError(f"joined_members still shows {count}, not {expected}")
        await asyncio.sleep(0.05)


# ----- building the room on Synapse -----------------------------------------------------------


async def merge_forks(http: Http, room_id: str, admin_token: str) -> None:
    """Send messages until the room has one forward extremity (Synapse's admin API).

    Concurrent sends fork the DAG; a joiner's make_join template names at most 10 forward
    extremities, and the state it gets is the state at those, so with more forks a joiner
    would not see the whole state. Each message merges up to 10 (messages are not state).
    """
    path = f"/_synapse/admin/v1/rooms/{q(room_id)}/forward_extremities"
    for _ in range(100):
        count = (await http.call("GET", path, token=admin_token))["count"]
        if count <= 1:
            return
        await http.call(
            "PUT", f"{API}/rooms/{q(room_id)}/send/m.room.message/merge{time.time_ns()}",
            {"msgtype": "m.text", "body": f"merging {count} forward extremities"},
            token=admin_token,
        )
    raise RuntimeError(f"the room still has {count} forward extremities")


async def build_room(http: Http, secret: str, members: int, target_state: int) -> dict[str, Any]:
    began = time.perf_counter()
    creator = await synapse_register(http, secret, "creator", admin=True)
    room_id = (await http.call(
        "POST", f"{API}/createRoom", {"preset": "public_chat", "name": "bench"},
        token=creator["access_token"],
    ))["room_id"]
    log(f"room {room_id} created; registering and joining {members - 1} users")

    done = [0]

    async def member(i: int) -> None:
        user = await synapse_register(http, secret, f"member{i}")
        await http.call("POST", f"{API}/join/{q(room_id)}", {}, token=user["access_token"])
        done[0] += 1
        if done[0] % 200 == 0:
            log(f"  {done[0]} joined")

    await bounded(CONCURRENCY, (member(i) for i in range(1, members)))
    await merge_forks(http, room_id, creator["access_token"])
    joined_at = time.perf_counter()
    have = await state_count(http, room_id, creator["access_token"])
    extra = max(0, target_state - have)
    log(f"{members} members, {have} state events; sending {extra} bench.state events")

    async def state_event(i: int) -> None:
        await http.call(
            "PUT", f"{API}/rooms/{q(room_id)}/state/bench.state/key{i:05d}",
            {"index": i, "note": f"benchmark state event number {i}"},
            token=creator["access_token"],
        )
        if (i + 1) % 1000 == 0:
            log(f"  {i + 1} sent")

    # One at a time: concurrent state events fork the DAG, and then Synapse resolves the
    # state of up to 20 branches (each with thousands of entries) for every new event,
    # which made it 5 times slower (4 events/s).
    for i in range(extra):
        await state_event(i)
    await merge_forks(http, room_id, creator["access_token"])
    total = await state_count(http, room_id, creator["access_token"])
    joined = await joined_count(http, room_id, creator["access_token"])
    built = time.perf_counter()
    if joined != members or total < target_state:
        raise RuntimeError(f"room has {joined} members and {total} state events")
    return {
        "room_id": room_id,
        "creator": creator,
        "members": joined,
        "state_events": total,
        "seconds_users_and_joins": round(joined_at - began, 1),
        "seconds_state_events": round(built - joined_at, 1),
        "seconds": round(built - began, 1),
    }


# ----- Heddle ---------------------------------------------------------------------------------


class HeddleServer:
    def __init__(self, db: str, profile: str | None) -> None:
        from tests.synapse_peer import free_port

        self.db = db
        self.profile = profile
        self.data_dir = Path(tempfile.mkdtemp(prefix="heddle-fedjoin-"))
        self.client_port = free_port()
        self.federation_port = free_port()
        self.server_name = f"127.0.0.1:{self.federation_port}"
        self.base = f"http://127.0.0.1:{self.client_port}"
        self.log_path = self.data_dir / "heddle.log"
        self.stderr_path = self.data_dir / "stderr.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.pg_name: str | None = None

    def start(self) -> None:
        from bench.heddle_bench import create_pg_database

        subprocess.run(
            [str(HEDDLE), "generate-config", "--server-name", self.server_name, "--data-dir",
             str(self.data_dir), "--port", str(self.client_port)],
            check=True, stdout=subprocess.DEVNULL,
        )
        config_path = self.data_dir / "homeserver.yaml"
        import yaml

        config = yaml.safe_load(config_path.read_text())
        generated = {listener["type"]: listener for listener in config["listeners"]}
        federation = generated["federation"]
        config["listeners"] = [
            {"type": "client", "bind_address": "127.0.0.1", "port": self.client_port},
            {
                "type": "federation",
                "bind_address": "127.0.0.1",
                "port": self.federation_port,
                "tls": True,
                "tls_certificate_path": federation["tls_certificate_path"],
                "tls_private_key_path": federation["tls_private_key_path"],
            },
        ]
        config["federation"] = {"verify_tls": False, "ip_range_allowlist": ["127.0.0.0/8"]}
        config["rate_limits"] = {"enabled": False}
        config["auth"]["bcrypt_rounds"] = 4
        config["logging"] = {"level": "INFO", "file": str(self.log_path)}
        if self.db != "sqlite":
            url, self.pg_name = create_pg_database(self.db)
            config["database"] = {"url": url, "max_connections": 10}
        config_path.write_text(yaml.safe_dump(config))
        command = [str(HEDDLE), "--config", str(config_path)]
        if self.profile:
            command = [sys.executable, "-m", "cProfile", "-o", self.profile, *command]
        self.stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def wait_ready(self, session: Any) -> None:
        http = Http(session, self.base)
        for _ in range(400):
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError("Heddle exited:\n" + self.stderr_path.read_text()[-3000:])
            try:
                await http.call("GET", "/_matrix/client/versions", timeout=2)
                return
            except Exception:
                await asyncio.sleep(0.05)
        raise RuntimeError("Heddle did not start")

    def stop(self) -> None:
        from bench.heddle_bench import drop_pg_database

        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.pg_name is not None:
            drop_pg_database(self.db, self.pg_name)
            self.pg_name = None


def heddle_log_lines(path: Path, start: int, end: int) -> list[str]:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start).decode("utf-8", "replace").splitlines()


# ----- the benchmark --------------------------------------------------------------------------


def await_deferred(d: Any) -> Any:
    return d.asFuture(asyncio.get_running_loop())


async def start_peer(name: str, work_dir: Path) -> Any:
    from twisted.internet import defer

    from tests.synapse_peer import SynapsePeer

    peer = SynapsePeer(work_dir / name)
    await await_deferred(defer.ensureDeferred(peer.start()))
    assert peer._process is not None
    log(f"Synapse {name} on {peer.server_name} (pid {peer._process.pid}), "
        f"started in {peer.startup_seconds:.1f}s")
    return peer


async def stop_peer(peer: Any) -> None:
    from twisted.internet import defer

    await await_deferred(defer.ensureDeferred(peer.stop()))


def peer_session(peer: Any) -> Any:
    import aiohttp

    context = ssl.create_default_context(cafile=str(peer.cert_path))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=context))


async def heddle_join(
    heddle: HeddleServer, resident: Any, room: dict[str, Any], already_joined: int,
) -> dict[str, Any]:
    import aiohttp

    result: dict[str, Any] = {"db": "sqlite" if heddle.db == "sqlite" else "postgresql"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await heddle.wait_ready(session)
        log(f"Heddle {heddle.server_name} (pid {heddle.pid}), data in {heddle.data_dir}")
        http = Http(session, heddle.base)
        user = await http.call("POST", f"{API}/register", {
            "username": "joiner", "password": "bench-password",
            "auth": {"type": "m.login.dummy"},
        })
        token = user["access_token"]
        room_id = room["room_id"]
        expected = room["members"] + already_joined + 1
        meter = CpuMeter({"heddle": heddle.pid, "resident": resident._process.pid})
        synapse_mark = log_offset(resident.log_path)
        heddle_mark = log_offset(heddle.log_path)
        log(f"Heddle user joins {room_id} via {resident.server_name}")
        began_wall = time.time()
        began = time.perf_counter()
        await http.call(
            "POST", f"{API}/join/{q(room_id)}?via={q(resident.server_name)}", {},
            token=token, timeout=1800,
        )
        joined = time.perf_counter()
        cpu_join = meter.used()
        readable = await wait_for_members(http, room_id, token, expected)
        cpu_readable = meter.used()
        # Let the resident's log catch up with the requests it just answered.
        await asyncio.sleep(1)
        served = federation_requests(resident.log_path, synapse_mark,
                                     log_offset(resident.log_path))
        lines = heddle_log_lines(heddle.log_path, heddle_mark, log_offset(heddle.log_path))
        state_on_heddle = await state_count(http, room_id, token)
        joined_lines = [line for line in lines if " joined !" in line]
        result["breakdown"] = breakdown(
            began_wall, joined - began, served, log_time(joined_lines[0]) if joined_lines else None
        )
        result.update({
            "join_seconds": round(joined - began, 2),
            "state_readable_seconds": round(readable - began, 2),
            "cpu_during_join": cpu_join,
            "cpu_until_readable": cpu_readable,
            "heddle_peak_rss_mb": peak_rss_mb(heddle.pid),
            "state_events_on_heddle": state_on_heddle,
            "resident_served": summarise_requests(served),
            "heddle_log": [line for line in lines if " joined !" in line or "WARNING" in line
                           or "ERROR" in line or "dropped" in line][:20],
        })
        log(f"Heddle: join {result['join_seconds']}s, readable "
            f"{result['state_readable_seconds']}s, {state_on_heddle} state events")
    return result


def breakdown(
    began: float, total: float, served: list[dict[str, Any]], joined_logged: float | None
) -> dict[str, float]:
    """Where the seconds of a Heddle join went, from both servers' log timestamps (same
    clock; millisecond resolution): until the resident finished answering make_join, then
    send_join (the resident building and sending the room's state), then Heddle checking
    and storing it (until its "joined" log line), then answering the client."""
    ends = {r["endpoint"]: r["finished"] for r in served if r["finished"] is not None}
    walls = {r["endpoint"]: r["wall_s"] for r in served}
    if "make_join" not in ends or "send_join" not in ends or joined_logged is None:
        return {}
    return {
        "until_make_join_answered": round(ends["make_join"] - began, 2),
        "send_join_at_resident": walls["send_join"],
        "until_send_join_answered": round(ends["send_join"] - ends["make_join"], 2),
        "heddle_checks_and_stores": round(joined_logged - ends["send_join"], 2),
        "after_joined_logged": round(began + total - joined_logged, 2),
    }


async def synapse_join(
    work_dir: Path, resident: Any, room: dict[str, Any], already_joined: int,
) -> dict[str, Any]:
    joiner = await start_peer("joiner", work_dir)
    try:
        async with peer_session(joiner) as session:
            http = Http(session, joiner.base_url)
            user = await synapse_register(http, joiner.registration_shared_secret, "joiner")
            token = user["access_token"]
            room_id = room["room_id"]
            expected = room["members"] + already_joined + 1
            meter = CpuMeter({"joiner": joiner._process.pid, "resident": resident._process.pid})
            synapse_mark = log_offset(resident.log_path)
            log(f"Synapse user joins {room_id} via {resident.server_name}")
            began = time.perf_counter()
            await http.call(
                "POST", f"{API}/join/{q(room_id)}?server_name={q(resident.server_name)}", {},
                token=token, timeout=1800,
            )
            joined = time.perf_counter()
            cpu_join = meter.used()
            # /joined_members waits, on Synapse, until a partial-state room has its full state.
            readable = await wait_for_members(http, room_id, token, expected)
            cpu_readable = meter.used()
            await asyncio.sleep(1)
            served = federation_requests(resident.log_path, synapse_mark,
                                         log_offset(resident.log_path))
            result = {
                "join_seconds": round(joined - began, 2),
                "state_readable_seconds": round(readable - began, 2),
                "cpu_during_join": cpu_join,
                "cpu_until_readable": cpu_readable,
                "joiner_peak_rss_mb": peak_rss_mb(joiner._process.pid),
                "resident_served": summarise_requests(served),
            }
            log(f"Synapse: join {result['join_seconds']}s, readable "
                f"{result['state_readable_seconds']}s")
            return result
    finally:
        await stop_peer(joiner)


def table(results: dict[str, Any]) -> str:
    room = results["room"]
    rows = [
        f"Room on Synapse: {room['members']} members, {room['state_events']} state events "
        f"(built in {room['seconds']} s).",
        "",
        "| joiner | POST /join answered | members readable | joiner CPU (join / until readable) "
        "| resident Synapse CPU (join / until readable) | resident send_join: wall, response |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    notes = []

    def send_join(served: dict[str, Any]) -> str:
        e = served.get("send_join")
        if not e:
            return "-"
        return f"{e['wall_s']:.2f} s, {e['bytes'] / 1e6:.1f} MB"

    for h in results.get("heddle", []):
        rows.append(
            f"| Heddle ({h['db']}) | {h['join_seconds']:.2f} s | {h['state_readable_seconds']:.2f} s "
            f"| {h['cpu_during_join']['heddle']:.1f} / {h['cpu_until_readable']['heddle']:.1f} s "
            f"| {h['cpu_during_join']['resident']:.1f} / {h['cpu_until_readable']['resident']:.1f} s "
            f"| {send_join(h['resident_served'])} |"
        )
        b = h.get("breakdown")
        if b:
            notes.append(
                f"Heddle ({h['db']}): make_join answered after {b['until_make_join_answered']} s; "
                f"send_join took {b['until_send_join_answered']} s (resident's own timing "
                f"{b['send_join_at_resident']} s); Heddle then checked and stored the state in "
                f"{b['heddle_checks_and_stores']} s and answered the client "
                f"{b['after_joined_logged']} s later."
            )
    s = results.get("synapse")
    if s:
        rows.append(
            f"| Synapse 1.163 (SQLite, partial-state join) | {s['join_seconds']:.2f} s "
            f"| {s['state_readable_seconds']:.2f} s "
            f"| {s['cpu_during_join']['joiner']:.1f} / {s['cpu_until_readable']['joiner']:.1f} s "
            f"| {s['cpu_during_join']['resident']:.1f} / {s['cpu_until_readable']['resident']:.1f} s "
            f"| {send_join(s['resident_served'])} |"
        )
    return "\n".join(rows + [""] + notes)


async def main(args: argparse.Namespace) -> None:
    from tests.synapse_peer import SYNAPSE_PYTHON_ENV

    python = args.synapse_python or os.environ.get(SYNAPSE_PYTHON_ENV) or DEFAULT_SYNAPSE_PYTHON
    os.environ[SYNAPSE_PYTHON_ENV] = python
    work_dir = Path(tempfile.mkdtemp(prefix="heddle-fedjoin-synapse-"))
    results: dict[str, Any] = {
        "members": args.members, "state": args.state,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    resident = await start_peer("resident", work_dir)
    heddles: list[HeddleServer] = []
    try:
        async with peer_session(resident) as session:
            http = Http(session, resident.base_url)
            room = await build_room(http, resident.registration_shared_secret,
                                    args.members, args.state)
            log(f"room built in {room['seconds']} s")
            results["room"] = {k: v for k, v in room.items() if k != "creator"}
            # Each Heddle keeps running until the end: a later joiner fetches the earlier
            # joiners' join events, and their servers' signing keys, with the room's state.
            results["heddle"] = []
            for db in [] if args.skip_heddle else args.db or ["sqlite"]:
                heddle = HeddleServer(db, args.profile)
                heddles.append(heddle)
                heddle.start()
                results["heddle"].append(
                    await heddle_join(heddle, resident, room, len(heddles) - 1)
                )
            if not args.skip_synapse:
                results["synapse"] = await synapse_join(work_dir, resident, room, len(heddles))
    finally:
        for heddle in heddles:
            heddle.stop()
            if args.keep:
                log(f"Heddle's data and log kept in {heddle.data_dir}")
            else:
                shutil.rmtree(heddle.data_dir, ignore_errors=True)
        await stop_peer(resident)
        if args.keep:
            log(f"Synapse data and logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    if args.profile and heddles:
        import pstats

        pstats.Stats(args.profile).sort_stats("cumulative").print_stats(40)
    print(table(results))
    text = json.dumps(results, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)


def run() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--db", action="append",
        help="'sqlite' (the default) or a PostgreSQL admin URL; repeat it to join the same "
             "room from one Heddle server per database, one after the other",
    )
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--state", type=int, default=5000,
                        help="state events in the room in all, member events included")
    parser.add_argument("--synapse-python",
                        help="Python with Synapse (default $HEDDLE_SYNAPSE_PYTHON, "
                             f"else {DEFAULT_SYNAPSE_PYTHON})")
    parser.add_argument("--json", help="write the JSON results to this file")
    parser.add_argument("--skip-heddle", action="store_true")
    parser.add_argument("--skip-synapse", action="store_true")
    parser.add_argument("--profile", help="run Heddle under cProfile, writing stats here")
    parser.add_argument("--keep", action="store_true", help="keep data directories and logs")
    args = parser.parse_args()
    if args.profile and args.db and len(args.db) > 1:
        parser.error("--profile takes one --db")
    os.chdir(ROOT)

    # SynapsePeer is Twisted code, the clients here aiohttp: one asyncio loop runs both.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    from twisted.internet import defer, task

    task.react(lambda _reactor: defer.Deferred.fromFuture(loop.create_task(main(args))))


if __name__ == "__main__":
    run()
