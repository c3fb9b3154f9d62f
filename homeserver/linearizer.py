"""Serialise async work per key (e.g. one writer per room), without blocking other keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

from twisted.internet import defer


class Linearizer:
    def __init__(self, name: str) -> None:
        self.name = name
        # key -> Deferreds in arrival order; the head is the holder, each later one fires
        # when everything before it has finished.
        self._queues: dict[Hashable, list[defer.Deferred[None]]] = {}

    @asynccontextmanager
    async def queue(self, key: Hashable) -> AsyncIterator[None]:
        waiters = self._queues.setdefault(key, [])
        turn: defer.Deferred[None] = defer.Deferred()
        waiters.append(turn)
        if len(waiters) > 1:
            try:
                await turn
            except BaseException:
                # Cancelled while waiting: leave the queue without ever holding it.
                waiters.remove(turn)
                raise
        try:
            yield
        finally:
            waiters.pop(0)
            if waiters:
                waiters[0].callback(None)
            else:
                del self._queues[key]
