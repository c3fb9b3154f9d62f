"""Run the `heddle` command under cProfile, switched on and off by signals, so a benchmark
can profile only its measured phase (not the set-up before it).

    python bench/profiled_server.py OUT.prof --config homeserver.yaml

SIGUSR1 starts profiling; SIGUSR2 stops it and writes the figures to OUT.prof (sort them
with `python -m pstats OUT.prof`), and the time spent collecting garbage to OUT.prof.gc. Used by `heddle_bench.running_server` when
HEDDLE_BENCH_PROFILE names the output file.
"""

from __future__ import annotations

import cProfile
import gc
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from homeserver.cli import main


def run(output: str, argv: list[str]) -> None:
    profiler = cProfile.Profile()
    # Time in the cyclic garbage collector, by generation (the profile charges it to
    # whatever function happened to allocate when a collection started).
    gc_seconds = [0.0, 0.0, 0.0]
    gc_started = [0.0]

    def time_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_seconds[info["generation"]] += time.perf_counter() - gc_started[0]

    def start(_signum: int, _frame: FrameType | None) -> None:
        gc_seconds[:] = [0.0, 0.0, 0.0]
        gc.callbacks.append(time_gc)
        profiler.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        profiler.disable()
        gc.callbacks.remove(time_gc)
        profiler.dump_stats(output)
        Path(output + ".gc").write_text(
            " ".join(f"gen{g}={s:.3f}s" for g, s in enumerate(gc_seconds)) + "\n"
        )

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    main(argv)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2:])
