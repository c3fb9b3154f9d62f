"""The garbage collector run from the reactor, each generation at most so often."""

from __future__ import annotations

import gc

from twisted.internet.task import Clock
from twisted.trial import unittest

from homeserver.gc_manager import GarbageCollector


class FakeCollector:
    def __init__(self) -> None:
        self.now = 1000.0
        self.counts = [0, 0, 0]
        self.collected: list[int] = []

    def collect(self, generation: int) -> int:
        self.collected.append(generation)
        # As CPython does: a collection empties its generation and the younger ones, and
        # counts one more collection of the generation above.
        for younger in range(generation + 1):
            self.counts[younger] = 0
        if generation < 2:
            self.counts[generation + 1] += 1
        return 0

    def manager(self) -> GarbageCollector:
        return GarbageCollector(
            Clock(),
            (1.0, 10.0, 60.0),
            collect=self.collect,
            counts=lambda: (self.counts[0], self.counts[1], self.counts[2]),
            thresholds=lambda: (700, 10, 10),
            monotonic=lambda: self.now,
        )


class Intervals(unittest.TestCase):
    def test_each_generation_waits_its_minimum_interval(self) -> None:
        fake = FakeCollector()
        manager = fake.manager()
        fake.counts[0] = 5000
        manager.check()
        self.assertEqual(fake.collected, [])  # not a second since start
        fake.now += 1.0
        manager.check()
        self.assertEqual(fake.collected, [0])
        fake.counts[0] = 5000
        fake.now += 0.5
        manager.check()
        self.assertEqual(fake.collected, [0])  # a burst of allocations waits
        fake.now += 0.5
        manager.check()
        self.assertEqual(fake.collected, [0, 0])

    def test_the_oldest_due_generation_is_collected(self) -> None:
        fake = FakeCollector()
        manager = fake.manager()
        fake.counts = [800, 11, 11]
        fake.now += 30
        manager.check()
        self.assertEqual(fake.collected, [1])  # generation 2 waits its minute
        fake.counts = [800, 11, 11]
        fake.now += 30
        manager.check()
        self.assertEqual(fake.collected, [1, 2])
        # Collecting generation 2 collected the younger ones too: nothing due at once.
        fake.counts[0] = 800
        fake.now += 0.5
        manager.check()
        self.assertEqual(fake.collected, [1, 2])

    def test_below_thresholds_nothing_runs(self) -> None:
        fake = FakeCollector()
        manager = fake.manager()
        fake.counts = [700, 10, 10]
        fake.now += 3600
        manager.check()
        self.assertEqual(fake.collected, [])

    def test_start_and_stop_hand_the_collector_back(self) -> None:
        clock = Clock()
        manager = GarbageCollector(clock)
        self.addCleanup(gc.enable)
        self.addCleanup(gc.unfreeze)
        manager.start()
        self.assertFalse(gc.isenabled())
        clock.advance(0.1)  # the check runs on the reactor
        manager.stop()
        self.assertTrue(gc.isenabled())
        self.assertEqual(clock.getDelayedCalls(), [])
