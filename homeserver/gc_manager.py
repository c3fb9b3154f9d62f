"""Python's cyclic garbage collector, run from the reactor at bounded intervals.

Left to itself, the collector runs whenever enough objects were allocated, and a server
allocates in bursts: one message wakes a thousand sync passes, each allocating its
response, and a full collection of a large heap (tens or hundreds of milliseconds) lands in
the middle of the burst, holding up every push behind it. So, as Synapse does, automatic
collection is switched off and a timer runs a generation's collection when its usual
threshold is passed, but no more often than its minimum interval (a second for the youngest,
ten for the middle, a minute for the oldest): between bursts, not during one. Reference
counting still frees everything that is not part of a cycle at once; only cycles wait.

What exists once start-up is done (modules, configuration, the first caches) is moved out of
the collector's sight (`gc.freeze`), so full collections do not walk it again and again.

Used by the `heddle` command only: tests run many servers in one process and keep Python's
default collector.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Histogram
from twisted.internet import task

logger = logging.getLogger(__name__)

GC_SECONDS = Histogram(
    "heddle_gc_duration_seconds",
    "Time to collect garbage, by the oldest generation collected",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# Seconds between two collections of each generation, at the least.
MIN_INTERVALS_S = (1.0, 10.0, 60.0)
CHECK_INTERVAL_S = 0.1


class GarbageCollector:
    def __init__(
        self,
        reactor: Any,
        min_intervals_s: Sequence[float] = MIN_INTERVALS_S,
        *,
        collect: Callable[[int], int] = gc.collect,
        counts: Callable[[], tuple[int, int, int]] = gc.get_count,
        thresholds: Callable[[], tuple[int, ...]] = gc.get_threshold,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reactor = reactor
        self._min_intervals_s = tuple(min_intervals_s)
        self._collect = collect
        self._counts = counts
        self._thresholds = thresholds
        self._monotonic = monotonic
        self._last_run = [monotonic()] * 3
        self._loop: task.LoopingCall | None = None

    def start(self) -> None:
        """Take over from the automatic collector (after start-up)."""
        gc.collect()
        gc.freeze()
        gc.disable()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self._reactor
        self._loop.start(CHECK_INTERVAL_S, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        gc.enable()

    def check(self) -> None:
        """Collect the oldest generation that is over its threshold and has waited its
        minimum interval (collecting a generation collects the younger ones too)."""
        counts, thresholds = self._counts(), self._thresholds()
        now = self._monotonic()
        for generation in (2, 1, 0):
            if counts[generation] <= thresholds[generation]:
                continue
            if now - self._last_run[generation] < self._min_intervals_s[generation]:
                continue
            started = self._monotonic()
            unreachable = self._collect(generation)
            finished = self._monotonic()
            GC_SECONDS.labels(str(generation)).observe(finished - started)
            for younger in range(generation + 1):
                self._last_run[younger] = finished
            if finished - started > 0.1:
                logger.info(
                    "garbage collection of generation %d took %.0f ms (%d unreachable)",
                    generation, (finished - started) * 1000, unreachable,
                )
            return
