"""Stream positions: handed out in order, and `current` only moves past committed ones.

Two rooms may persist concurrently, so position 11 can commit before 10. Readers (sync)
must never see 11 while 10 is still in flight, or they would skip 10 forever; `current` is
therefore the highest position below which everything has finished.

One generator per stream per process. Several processes writing one stream (scale-out)
need a shared allocator (a PostgreSQL sequence) and per-writer positions: not done yet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class StreamIdGenerator:
    def __init__(self, name: str, current: int) -> None:
        self.name = name
        self._last_allocated = current
        self._current = current
        self._unfinished: set[int] = set()
        # Called whenever `current` may have moved (the stream bus delivers held updates).
        self._advance_listeners: list[Callable[[], None]] = []

    def on_advance(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after each write block ends (`current` may have moved)."""
        self._advance_listeners.append(listener)

    def initialise(self, current: int) -> None:
        """Start from the highest position in the database (at start-up, before any write)."""
        assert not self._unfinished
        self._last_allocated = self._current = current

    @property
    def current(self) -> int:
        return self._current

    def _advance(self) -> None:
        self._current = min(self._unfinished) - 1 if self._unfinished else self._last_allocated
        for listener in self._advance_listeners:
            listener()

    @asynccontextmanager
    async def next(self) -> AsyncIterator[int]:
        """Reserve the next position for the duration of the block (the write transaction).

        If the block raises (nothing was written), the position is handed back when no later
        one was taken. `current` must never pass the highest position in the database: at
        start-up it is read back from there, and a client holding a token beyond it would
        miss the next writes.
        """
        self._last_allocated += 1
        position = self._last_allocated
        self._unfinished.add(position)
        try:
            yield position
        except BaseException:
            self.unused(position)
            raise
        finally:
            self._unfinished.discard(position)
            self._advance()

    def reserve(self, count: int) -> list[int]:
        """Reserve the next `count` positions (a transaction writing several events), until
        `release`: `next` for several positions at once."""
        positions = list(range(self._last_allocated + 1, self._last_allocated + 1 + count))
        self._last_allocated += count
        self._unfinished.update(positions)
        return positions

    def release(self, positions: list[int], unwritten: list[int]) -> None:
        """The write of `positions` (from `reserve`) ended; those in `unwritten` were not
        written (handed back if no later one was taken, as `unused`)."""
        for position in sorted(unwritten, reverse=True):
            self.unused(position)
        self._unfinished.difference_update(positions)
        self._advance()

    def unused(self, position: int) -> None:
        """Hand back a position the block decided not to write (see `next`); call it as the
        block's last step. A gap left by an earlier position is harmless: later positions
        are written above it."""
        if position == self._last_allocated:
            self._last_allocated -= 1


class MemoryStreamIdGenerator:
    """Positions of a stream held in memory only (typing): each change is visible at once,
    so `current` is simply the last position handed out. It restarts from 0 with the
    process; a client token ahead of it is treated as knowing nothing."""

    def __init__(self, name: str, current: int = 0) -> None:
        self.name = name
        self._current = current

    def initialise(self, current: int) -> None:
        self._current = current

    @property
    def current(self) -> int:
        return self._current

    def on_advance(self, listener: Callable[[], None]) -> None:
        """Nothing is ever held back here, so there is nothing to tell."""

    def advance(self) -> int:
        """The next position, visible at once."""
        self._current += 1
        return self._current
