"""Run SyTest (Matrix's integration suite) against a fresh Heddle and compare with the known list.

    python tests/sytest/run.py                      # SQLite, the whole suite
    python tests/sytest/run.py --db postgresql      # a fresh PostgreSQL database
    python tests/sytest/run.py tests/12login/01threepid-and-password.pl   # some files only

Starts Heddle with the SyTest test profile (tests/sytest/profile.yaml) on free loopback ports,
runs `$SYTEST_HOME/run.sh` against it in SyTest's manual mode with `--room-version 11`, stops
the server, then reads SyTest's `results.tsv` and compares it with
tests/sytest/expected-failures.txt:

- a test that failed and is not on the list is a regression: the exit status is 1;
- a listed test that passed is printed, to be removed from the list (the list only shrinks);
- pass / fail / skip counts are printed. Skipped tests are not failures.

Environment:
    SYTEST_HOME               SyTest set-up (run.sh, setup.sh); default ../shared/sytest beside
                              the repository
    HEDDLE_TEST_POSTGRES_URL  PostgreSQL admin URL for --db postgresql (default
                              postgresql://postgres@127.0.0.1:5432/postgres)
    TIMEOUT_FACTOR, SYTEST_TIMEOUT   passed on to run.sh (SyTest's per-test timeout multiplier,
                              and the whole run's limit in seconds)
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PROFILE = HERE / "profile.yaml"
EXPECTED = HERE / "expected-failures.txt"
ROOM_VERSION = "11"
# In expected-failures.txt: "<test name> | <reason>" (split at the last " | ").
SEPARATOR = " | "


def log(message: str) -> None:
    print(f"sytest: {message}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` laid over `base`, key by key inside nested sections."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Heddle:
    """One Heddle process with the SyTest profile, in its own data directory."""

    def __init__(self, db: str, data_dir: Path, pg_admin_url: str) -> None:
        self.db = db
        self.data_dir = data_dir
        self.pg_admin_url = pg_admin_url
        self.pg_name: str | None = None
        self.client_port = free_port()
        self.federation_port = free_port()
        # SyTest's fake federation server reaches Heddle at its server name.
        self.server_name = f"localhost:{self.federation_port}"
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.log_path = data_dir / "heddle.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.shared_secret = ""

    def _heddle(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "homeserver.cli", *args]

    def write_config(self) -> Path:
        subprocess.run(
            self._heddle("generate-config", "--server-name", self.server_name, "--data-dir",
                         str(self.data_dir), "--port", str(self.client_port)),
            check=True, stdout=subprocess.DEVNULL, env=self.env, cwd=REPO,
        )
        path = self.data_dir / "homeserver.yaml"
        generated = yaml.safe_load(path.read_text())
        config = merge(generated, yaml.safe_load(PROFILE.read_text()))
        federation = next(lst for lst in generated["listeners"] if lst["type"] == "federation")
        config["listeners"] = [
            {"type": "client", "bind_address": "127.0.0.1", "port": self.client_port},
            {
                "type": "federation", "bind_address": "127.0.0.1", "port": self.federation_port,
                "tls": True,
                "tls_certificate_path": federation["tls_certificate_path"],
                "tls_private_key_path": federation["tls_private_key_path"],
            },
        ]
        config["logging"] = {"level": "INFO", "file": str(self.log_path)}
        if self.db == "postgresql":
            self.pg_name = f"heddle_sytest_{uuid.uuid4().hex[:8]}"
            self._psql(f'CREATE DATABASE "{self.pg_name}"')
            config["database"] = {
                "url": self.pg_admin_url.rsplit("/", 1)[0] + "/" + self.pg_name,
                "max_connections": 10,
            }
        self.shared_secret = config["registration"]["shared_secret"]
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _psql(self, sql: str) -> None:
        subprocess.run(["psql", self.pg_admin_url, "-Atqc", sql], check=True,
                       stdout=subprocess.DEVNULL)

    def start(self) -> None:
        config_path = self.write_config()
        stderr = open(self.data_dir / "stderr.log", "wb")
        self.process = subprocess.Popen(
            self._heddle("--config", str(config_path)), stdin=subprocess.DEVNULL,
            stdout=stderr, stderr=subprocess.STDOUT, env=self.env, cwd=self.data_dir,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    "Heddle exited at start-up:\n"
                    + (self.data_dir / "stderr.log").read_text()[-3000:]
                )
            try:
                with urllib.request.urlopen(self.url + "/_matrix/client/versions", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Heddle did not answer within 120 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.pg_name is not None:
            self._psql(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            self.pg_name = None


def read_expected(path: Path) -> dict[str, str]:
    """Test name -> reason, from the expected-failures list."""
    expected: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        name, sep, reason = line.rpartition(SEPARATOR)
        if not sep or not name.strip() or not reason.strip():
            raise SystemExit(f"{path}:{number}: expected '<test name>{SEPARATOR}<reason>'")
        expected[name.strip()] = reason.strip()
    return expected


def read_results(path: Path) -> list[dict[str, str]]:
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for fields in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(fields) >= 4:
                rows.append({"number": fields[0], "status": fields[1], "file": fields[2],
                             "name": fields[3], "reason": fields[4] if len(fields) > 4 else ""})
    return rows


def compare(rows: list[dict[str, str]], expected: dict[str, str], whole_suite: bool) -> int:
    """Print the comparison; return the number of regressions."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    failed = [r for r in rows if r["status"] == "fail"]
    regressions = [r for r in failed if r["name"] not in expected]
    passing = {r["name"] for r in rows if r["status"] in ("pass", "xpass")}
    fixed = [name for name in expected if name in passing]
    ran = {r["name"] for r in rows}
    absent = [name for name in expected if name not in ran] if whole_suite else []

    if regressions:
        print(f"\nREGRESSIONS: {len(regressions)} failed and are not in "
              f"{EXPECTED.relative_to(REPO)}:")
        for r in regressions:
            print(f"  [{r['file']}] {r['name']}\n      {r['reason']}")
    if fixed:
        print(f"\nNOW PASSING: {len(fixed)} listed tests passed; remove them from "
              f"{EXPECTED.relative_to(REPO)}:")
        for name in fixed:
            print(f"  {name}")
    if absent:
        print(f"\nNOT RUN: {len(absent)} listed tests are no longer in SyTest's output "
              "(renamed or removed upstream?):")
        for name in absent:
            print(f"  {name}")
    print(
        f"\nSyTest: {counts.get('pass', 0)} passed, {counts.get('fail', 0)} failed "
        f"({len(failed) - len(regressions)} expected, {len(regressions)} regressions), "
        f"{counts.get('skip', 0)} skipped"
        + (f", {counts['xfail']} xfail" if counts.get("xfail") else "")
        + (f", {counts['xpass']} xpass" if counts.get("xpass") else "")
        + f"; {len(rows)} tests"
    )
    return len(regressions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--out", metavar="DIR", help="SyTest output folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true",
                        help="keep Heddle's data directory and log (kept anyway on failure)")
    parser.add_argument("--no-retry", action="store_true",
                        help="do not run the files of unlisted failures a second time")
    parser.add_argument("files", nargs="*", metavar="TEST_FILE",
                        help="only these SyTest files, e.g. tests/12login/02cas.pl")
    args = parser.parse_args(argv)

    sytest_home = Path(os.environ.get("SYTEST_HOME") or REPO.parent / "shared" / "sytest")
    run_sh = sytest_home / "run.sh"
    if not run_sh.exists():
        log(f"no SyTest at {sytest_home} (set SYTEST_HOME)")
        return 2
    expected = read_expected(EXPECTED)
    rows: list[dict[str, str]] = []
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="heddle-sytest-out-"))
    data_dir = Path(tempfile.mkdtemp(prefix=f"heddle-sytest-{args.db}-"))
    pg_url = os.environ.get("HEDDLE_TEST_POSTGRES_URL",
                            "postgresql://postgres@127.0.0.1:5432/postgres")

    heddle = Heddle(args.db, data_dir, pg_url)
    started = time.monotonic()
    try:
        heddle.start()
        log(f"Heddle ({args.db}) at {heddle.url}, server name {heddle.server_name}, "
            f"data in {data_dir}")
        env = {
            **os.environ,
            "SYTEST_REG_SECRET": heddle.shared_secret,
            "SYTEST_EXTRA_ARGS": " ".join(
                filter(None, [f"--room-version {ROOM_VERSION}",
                              os.environ.get("SYTEST_EXTRA_ARGS", "")])
            ),
        }
        log(f"running SyTest into {out}")
        rc = subprocess.run(
            [str(run_sh), heddle.url, heddle.server_name, str(out), *args.files], env=env
        ).returncode
        results = out / "results.tsv"
        rows = read_results(results) if results.exists() else []
        unlisted = [r for r in rows if r["status"] == "fail" and r["name"] not in expected]
        retried: dict[str, str] = {}
        if unlisted and not args.no_retry:
            # A test that timed out on a loaded machine may pass on its own: run the files of
            # the unlisted failures again, with longer timeouts, before calling them regressions.
            files = sorted({r["file"] for r in unlisted})
            factor = float(os.environ.get("TIMEOUT_FACTOR") or 1) * 3
            log(f"{len(unlisted)} unlisted failures: running {', '.join(files)} again "
                f"(TIMEOUT_FACTOR={factor:g})")
            subprocess.run(
                [str(run_sh), heddle.url, heddle.server_name, str(out / "retry"), *files],
                env={**env, "TIMEOUT_FACTOR": f"{factor:g}"},
            )
            retry_results = out / "retry" / "results.tsv"
            if retry_results.exists():
                again = {r["name"]: r["status"] for r in read_results(retry_results)}
                retried = {r["name"]: again.get(r["name"], "fail") for r in unlisted}
    finally:
        heddle.stop()
    minutes = (time.monotonic() - started) / 60
    log(f"SyTest exited {rc} after {minutes:.1f} min; output in {out}")

    if not rows:
        log(f"no {results}: SyTest did not run (exit {rc}); Heddle's log: {heddle.log_path}")
        return 2
    flaky = [name for name, status in retried.items() if status in ("pass", "xpass")]
    if flaky:
        print(f"\nFLAKY: {len(flaky)} unlisted tests failed, then passed when run again:")
        for name in flaky:
            print(f"  {name}")
        for row in rows:
            if row["name"] in flaky and row["status"] == "fail":
                row["status"] = "pass"
                row["reason"] = "passed when run again"
    regressions = compare(rows, expected, whole_suite=not args.files)
    partial = rc in (124, 137)
    if partial:
        log("SyTest hit its time limit: the results are partial")
    if regressions or partial:
        log(f"Heddle's data and log kept in {data_dir}")
        return 1
    if args.keep:
        log(f"Heddle's data and log kept in {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
