"""Run the `heddle` command under cProfile, switched on and off by signals, so a benchmark
can profile only its measured phase (not the set-up before it).

    python bench/profiled_server.py OUT.prof --config homeserver.yaml

SIGUSR1 starts profiling; SIGUSR2 stops it and writes the figures to OUT.prof (sort them
with `python -m pstats OUT.prof`). Used by `heddle_bench.running_server` when
HEDDLE_BENCH_PROFILE names the output file.
"""

from __future__ import annotations

import cProfile
import signal
import sys
from types import FrameType

from homeserver.cli import main


def run(output: str, argv: list[str]) -> None:
    profiler = cProfile.Profile()

    def start(_signum: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(output)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    main(argv)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2:])
