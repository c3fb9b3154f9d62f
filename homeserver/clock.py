from __future__ import annotations

from typing import Any

from twisted.internet import task


class Clock:
    """Time from the reactor, so tests can drive it and nothing calls time.time() directly."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def time(self) -> float:
        return float(self._reactor.seconds())

    def time_msec(self) -> int:
        return int(self._reactor.seconds() * 1000)

    async def sleep(self, seconds: float) -> None:
        await task.deferLater(self._reactor, seconds, lambda: None)
