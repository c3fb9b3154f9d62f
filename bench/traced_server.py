"""Run the `heddle` command under tracemalloc, so a benchmark can see what the server
allocated during its measured phase and still holds at the end of it.

    python bench/traced_server.py OUT.txt --config homeserver.yaml

SIGUSR1 takes the first snapshot; SIGUSR2 takes the second (after collecting garbage) and
writes to OUT.txt (replacing it once complete) what grew in between, by source line and by the call stacks that
allocated it (deepest frame first). Used by `heddle_bench.running_server` when
HEDDLE_BENCH_TRACEMALLOC names the output file. Tracing costs memory of its own (and time):
take RSS figures from runs without it.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from types import FrameType

from homeserver.cli import main

FRAMES = 12
TOP = 60


def _report(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> str:
    # Ignore tracemalloc's own bookkeeping.
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    lines: list[str] = []
    by_line = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in by_line)
    lines.append(f"grown in all: {total / 1024:.1f} KiB\n\n## by line\n")
    for stat in by_line[:TOP]:
        if stat.size_diff <= 0:
            break
        frame = stat.traceback[0]
        lines.append(
            f"{stat.size_diff / 1024:10.1f} KiB {stat.count_diff:+8d} blocks  "
            f"{frame.filename}:{frame.lineno}"
        )
    lines.append("\n## by call stack\n")
    for stat in after.compare_to(before, "traceback")[: TOP // 2]:
        if stat.size_diff <= 0:
            break
        lines.append(f"{stat.size_diff / 1024:.1f} KiB {stat.count_diff:+d} blocks")
        lines.extend(f"    {frame.filename}:{frame.lineno}" for frame in stat.traceback)
    return "\n".join(lines) + "\n"


def run(output: str, argv: list[str]) -> None:
    tracemalloc.start(FRAMES)
    first: list[tracemalloc.Snapshot] = []

    def start(_signum: int, _frame: FrameType | None) -> None:
        gc.collect()
        first[:] = [tracemalloc.take_snapshot()]

    def stop(_signum: int, _frame: FrameType | None) -> None:
        gc.collect()
        second = tracemalloc.take_snapshot()
        if first:
            # Written whole or not at all: the benchmark waits for the file to appear.
            report = _report(first[0], second)
            with open(output + ".part", "w") as f:
                f.write(report)
            os.replace(output + ".part", output)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    main(argv)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2:])
