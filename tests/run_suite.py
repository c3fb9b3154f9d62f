"""Run the whole test suite, one trial process per test module, several at a time.

    .venv/bin/python tests/run_suite.py            # every tests/test_*.py, one job per core
    .venv/bin/python tests/run_suite.py -j 1 tests.test_sync tests.test_login

Why not `trial -j N`: its workers run tests inside a reactor they start themselves, before
the suite can install the asyncio reactor matrix-nio needs, so the nio tests fail there and
a worker can hang. Here every module runs in a plain `python -m twisted.trial`, exactly as
when run alone, and the modules are shared out to `-j` such processes as each finishes its
previous one, the longest first (by the durations the previous run recorded, else by file
size).

Each module's output goes to `<temp>/<module>/output.log`; one line per module is printed as
it ends, then the output of every module that failed, then one trial-style summary line
(`PASSED (successes=N, skips=M)` or `FAILED (failures=..., errors=..., successes=...)`),
which `.ci/run` reads. Exit status 0 only if every module passed. A module still running
after `--module-timeout` seconds is killed and counted as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"^(PASSED|FAILED) \((.*)\)\s*$")
# trial's summary keys, and which of them fail a run.
FAILING = ("failures", "errors", "unexpectedSuccesses")


@dataclass
class ModuleResult:
    name: str
    seconds: float
    passed: bool
    counts: dict[str, int] = field(default_factory=dict)
    output: str = ""


def all_modules() -> list[str]:
    return sorted(f"tests.{path.stem}" for path in (ROOT / "tests").glob("test_*.py"))


def longest_first(modules: list[str], durations: dict[str, float]) -> list[str]:
    def weight(module: str) -> float:
        if module in durations:
            return durations[module]
        path = ROOT / (module.split(".")[0] + "/" + module.split(".")[1] + ".py")
        # Unknown yet: about a second per kilobyte of test code.
        return path.stat().st_size / 1000 if path.exists() else 0.0

    return sorted(modules, key=weight, reverse=True)


def parse_summary(output: str) -> dict[str, int] | None:
    for line in reversed(output.splitlines()):
        match = SUMMARY.match(line)
        if match:
            counts: dict[str, int] = {}
            for part in match.group(2).split(","):
                key, _, value = part.strip().partition("=")
                if value.isdigit():
                    counts[key] = int(value)
            return counts
    return None


async def run_module(module: str, temp: Path, timeout: float) -> ModuleResult:
    directory = temp / module
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "twisted.trial", f"--temp-directory={directory / '_trial_temp'}",
        module,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        # Its own process group, so that a module killed for hanging takes the servers it
        # started (Synapse, Node) with it.
        start_new_session=True,
    )
    try:
        raw, _ = await asyncio.wait_for(process.communicate(), timeout)
        output = raw.decode(errors="replace")
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        raw, _ = await process.communicate()
        output = raw.decode(errors="replace") + f"\nrun_suite: killed after {timeout:.0f} s\n"
    (directory / "output.log").write_text(output)
    seconds = time.monotonic() - started
    counts = parse_summary(output)
    if counts is None:
        # Crashed, or killed: no summary line. Count the module as one error.
        return ModuleResult(module, seconds, False, {"errors": 1}, output)
    passed = process.returncode == 0 and not any(counts.get(key) for key in FAILING)
    return ModuleResult(module, seconds, passed, counts, output)


async def run_all(modules: list[str], jobs: int, temp: Path, timeout: float) -> list[ModuleResult]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for module in modules:
        queue.put_nowait(module)
    results: list[ModuleResult] = []

    async def worker() -> None:
        while not queue.empty():
            module = queue.get_nowait()
            result = await run_module(module, temp, timeout)
            results.append(result)
            status = "ok" if result.passed else "FAILED"
            counts = ", ".join(f"{k}={v}" for k, v in sorted(result.counts.items()))
            print(f"{module}: {status} ({counts}) {result.seconds:.1f}s", flush=True)

    await asyncio.gather(*(worker() for _ in range(jobs)))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="test modules (default: all of tests/)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--temp-directory", type=Path, default=ROOT / "_trial_temp_suite")
    parser.add_argument("--module-timeout", type=float, default=1800.0)
    args = parser.parse_args()

    temp: Path = args.temp_directory.resolve()
    temp.mkdir(parents=True, exist_ok=True)
    durations_file = temp / "durations.json"
    durations: dict[str, float] = {}
    if durations_file.exists():
        durations = json.loads(durations_file.read_text())
    modules = longest_first(args.modules or all_modules(), durations)
    jobs = max(1, min(args.jobs, len(modules)))
    print(f"run_suite: {len(modules)} modules, {jobs} at a time; output in {temp}", flush=True)

    started = time.monotonic()
    results = asyncio.run(run_all(modules, jobs, temp, args.module_timeout))
    durations.update({r.name: round(r.seconds, 1) for r in results})
    durations_file.write_text(json.dumps(durations, indent=1, sort_keys=True))

    failed = [r for r in results if not r.passed]
    for result in failed:
        print(f"\n===== {result.name} (full output: {temp / result.name / 'output.log'})")
        print(result.output[-20000:])
    totals: dict[str, int] = {}
    for result in results:
        for key, value in result.counts.items():
            totals[key] = totals.get(key, 0) + value
    print(f"\nran {len(results)} modules in {time.monotonic() - started:.0f}s")
    if failed:
        print("failed modules: " + " ".join(r.name for r in failed))
    parts = ", ".join(f"{k}={v}" for k, v in sorted(totals.items()))
    print(f"{'FAILED' if failed else 'PASSED'} ({parts})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
