"""Reads that many sync passes make at once, done once and shared.

One message in a room wakes every listener in it at the same moment, and each listener's
sync pass then asks the same questions: the room's timeline between the same two stream
positions, the room's heroes at the same position. `SharedReads` runs each such read once;
passes that ask while it is running wait for it, and those that ask soon after take its
result. Keys name immutable stream positions, so an entry never goes stale and is never
invalidated: a newer position is a new key. Only the most recent entries are kept.

The read runs on its own, not in the pass that started it: a pass cancelled mid-read (its
connection closed) does not cancel the read the others are waiting for.

With `max_age_s`, a finished entry is used only that long after it finished: for results
that also depend on something outside their key (what was redacted since, say), sharing
stays within the burst of passes one commit wakes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

from homeserver.caches import report_size
from homeserver.clock import Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Entry(Generic[V]):
    __slots__ = ("done", "done_at", "failure", "value", "waiters")

    def __init__(self) -> None:
        self.done = False
        self.done_at = 0.0
        self.value: V | None = None
        self.failure: Failure | None = None
        self.waiters: list[defer.Deferred[V]] = []


class SharedReads(Generic[K, V]):
    def __init__(
        self,
        name: str,
        max_entries: int,
        *,
        max_age_s: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_age_s is not None and clock is None:
            raise ValueError(f"shared reads {name}: max_age_s needs a clock")
        self._max_entries = max_entries
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        # How many reads were run (not shared): for tests and metrics.
        self.reads = 0
        report_size(self, f"sync_shared_{name}", max_entries, lambda s: len(s._entries))

    def has(self, key: K) -> bool:
        """Whether a read of `key` is done (and young enough to use) or under way."""
        entry = self._entries.get(key)
        return entry is not None and not (entry.done and self._too_old(entry))

    async def get(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """`read()`'s result, from a read of the same key already done or under way if any."""
        entry = self._entries.get(key)
        if entry is not None and entry.done and self._too_old(entry):
            entry = None
        if entry is None:
            entry = self._start(key, read)
        else:
            self._entries.move_to_end(key)
        if entry.done:
            return entry.value  # type: ignore[return-value]
        if entry.failure is not None:  # failed at once, before anyone waited
            entry.failure.raiseException()
        waiter: defer.Deferred[V] = defer.Deferred()
        entry.waiters.append(waiter)
        return await waiter

    def _too_old(self, entry: _Entry[V]) -> bool:
        if self._max_age_s is None or self._clock is None:
            return False
        return self._clock.time() - entry.done_at > self._max_age_s

    def _start(self, key: K, read: Callable[[], Awaitable[V]]) -> _Entry[V]:
        entry: _Entry[V] = _Entry()
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        self.reads += 1

        def finished(value: V) -> None:
            entry.done, entry.value = True, value
            if self._clock is not None:
                entry.done_at = self._clock.time()
            waiters, entry.waiters = entry.waiters, []
            for waiter in waiters:
                if not waiter.called:  # not cancelled meanwhile
                    waiter.callback(value)

        def failed(failure: Failure) -> None:
            # Not kept: the next pass to ask reads again.
            entry.failure = failure
            if self._entries.get(key) is entry:
                del self._entries[key]
            waiters, entry.waiters = entry.waiters, []
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(failure)

        async def run() -> V:
            return await read()

        defer.ensureDeferred(run()).addCallbacks(finished, failed)
        return entry
