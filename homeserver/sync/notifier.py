"""Wakes long-polling /sync requests (and WebSocket pushers) when something they care about
happens in this process.

Each user has a notification counter. A waiter first reads it (`position`), computes its
response, and then waits only if the counter has not moved since: so a notification that
lands between computing and waiting is never lost.

It subscribes to the stream bus (`on_stream_update`): an update wakes the joined members of
its rooms, read from the state store's cached member lists (so telling a room about a new
event, receipt or typing change costs no database read), and the users it says to wake.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer

from homeserver.caches import keep_newer_half, report_size
from homeserver.streams.bus import StreamUpdate
from storage.stores.state import StateStore

# Users whose notification position is held; past this, the older half is forgotten.
MAX_USER_POSITIONS = 100_000
# The times of this many latest notifications are held, so that a waiter woken late (it was
# busy when its news came) can still tell when that was.
NOTIFICATION_TIMES = 4096


class Notifier:
    def __init__(
        self, reactor: Any, state: StateStore, max_user_positions: int = MAX_USER_POSITIONS
    ) -> None:
        self._reactor = reactor
        self._state = state
        self._counter = itertools.count(1)
        self._positions: dict[str, int] = {}
        self._max_user_positions = max_user_positions
        # The highest position forgotten: a user not held reads as this. A waiter who read a
        # position before it was forgotten may then wake once for nothing (and looks again),
        # but never misses a notification.
        self._forgotten_up_to = 0
        self._waiters: dict[str, set[defer.Deferred[float]]] = {}
        # position -> when that notification was made (reactor seconds), the latest ones.
        self._times: dict[int, float] = {}
        report_size(
            self, "notifier_user_positions", max_user_positions, lambda n: len(n._positions)
        )

    def position(self, user_id: str) -> int:
        return self._positions.get(user_id, self._forgotten_up_to)

    def notified_at(self, user_id: str) -> float | None:
        """When `user_id`'s latest notification was made, if it is recent enough to be held."""
        return self._times.get(self.position(user_id))

    def notify_users(self, user_ids: Iterable[str]) -> None:
        position = next(self._counter)
        now = self._reactor.seconds()
        self._times[position] = now
        self._times.pop(position - NOTIFICATION_TIMES, None)
        for user_id in set(user_ids):
            self._positions[user_id] = position
            for waiter in self._waiters.pop(user_id, set()):
                if not waiter.called:
                    waiter.callback(now)
        if len(self._positions) > self._max_user_positions:
            self._forget_older_half()

    def _forget_older_half(self) -> None:
        self._positions, cutoff = keep_newer_half(self._positions)
        self._forgotten_up_to = max(self._forgotten_up_to, cutoff)

    async def notify_room(self, room_id: str, extra_users: Iterable[str] = ()) -> None:
        """Wake everyone joined to `room_id`, and `extra_users` (say, a member who just left)."""
        joined = await self._state.get_current_members(room_id, "join")
        self.notify_users(itertools.chain(joined, extra_users))

    async def on_stream_update(self, update: StreamUpdate) -> None:
        """Wake whoever should hear of a stream update (a `StreamBus` subscriber)."""
        users: set[str] = set(update.wake)
        if not update.private:
            for room_id in update.rooms:
                users.update(await self._state.get_current_members(room_id, "join"))
        if users:
            self.notify_users(users)

    def wake_after(self, user_id: str, since_position: int) -> defer.Deferred[float]:
        """A Deferred fired when `user_id` is notified after `since_position`, at once if they
        have been already, with the time of that notification (now, if it is too old to be
        held); cancelling it withdraws it. No timer and no coroutine behind it: what a held
        WebSocket waits on, thousands at a time."""
        if self.position(user_id) > since_position:
            at = self.notified_at(user_id)
            return defer.succeed(self._reactor.seconds() if at is None else at)
        waiter: defer.Deferred[float] = defer.Deferred(functools.partial(self._withdraw, user_id))
        self._waiters.setdefault(user_id, set()).add(waiter)
        return waiter

    def _withdraw(self, user_id: str, waiter: defer.Deferred[float]) -> None:
        waiters = self._waiters.get(user_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[user_id]

    async def wait(self, user_id: str, since_position: int, timeout_ms: int) -> bool:
        """Wait until `user_id` is notified after `since_position`, or the timeout passes.

        Returns True if notified (possibly before the call), False on timeout.
        """
        if self.position(user_id) > since_position:
            return True
        if timeout_ms <= 0:
            return False
        waiter: defer.Deferred[float] = defer.Deferred()
        self._waiters.setdefault(user_id, set()).add(waiter)

        def expire() -> None:
            if not waiter.called:
                waiter.callback(-1.0)

        timer = self._reactor.callLater(timeout_ms / 1000.0, expire)
        try:
            return await waiter >= 0
        finally:
            if timer.active():
                timer.cancel()
            waiters = self._waiters.get(user_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[user_id]
