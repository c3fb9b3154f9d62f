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

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet import defer

from homeserver.caches import keep_newer_half, report_size
from homeserver.streams.bus import StreamUpdate
from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

# Users whose notification position is held; past this, the older half is forgotten.
MAX_USER_POSITIONS = 100_000
# The times of this many latest notifications are held, so that a waiter woken late (it was
# busy when its news came) can still tell when that was.
NOTIFICATION_TIMES = 4096


# Called with the time (reactor seconds) of the notification it was waiting for.
NewsCallback = Callable[[float], None]


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
        # user ID -> what to call (with the notification's time) when they are next notified.
        # A tuple: nearly always of one callback, which a tuple holds in 48 bytes and a set in
        # 216, and every idle WebSocket has one here.
        self._waiters: dict[str, tuple[NewsCallback, ...]] = {}
        # position -> when that notification was made (reactor seconds), the latest ones.
        self._times: dict[int, float] = {}
        # room ID -> users peeking into it (GET /events?room_id= on a room they are not in),
        # with how many of their requests do: woken by the room's updates like its members.
        self._peekers: dict[str, dict[str, int]] = {}
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
            for callback in self._waiters.pop(user_id, ()):
                try:
                    callback(now)
                except Exception:
                    # One waiter's failure must not keep the others asleep.
                    logger.exception("waking %s failed", user_id)
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
                users.update(self._peekers.get(room_id, ()))
        if users:
            self.notify_users(users)

    @contextmanager
    def peeking(self, user_id: str, room_id: str) -> Iterator[None]:
        """While inside, `user_id` is woken by `room_id`'s updates as if joined to it."""
        peekers = self._peekers.setdefault(room_id, {})
        peekers[user_id] = peekers.get(user_id, 0) + 1
        try:
            yield
        finally:
            peekers[user_id] -= 1
            if not peekers[user_id]:
                del peekers[user_id]
            if not peekers:
                del self._peekers[room_id]

    def call_on_news(self, user_id: str, since_position: int, callback: NewsCallback) -> float | None:
        """Call `callback` (once, with the notification's time) when `user_id` is notified
        after `since_position`. If they have been already, nothing is registered: the time
        of that notification is returned (now, if it is too old to be held), else None.

        No Deferred, timer or coroutine: what a held WebSocket waits with, thousands at a
        time, is the one callback held here (`withdraw` takes it back)."""
        if self.position(user_id) > since_position:
            at = self.notified_at(user_id)
            return self._reactor.seconds() if at is None else at
        self._waiters[user_id] = self._waiters.get(user_id, ()) + (callback,)
        return None

    def withdraw(self, user_id: str, callback: NewsCallback) -> None:
        """Forget `callback` (equal, not necessarily identical: a bound method is a new
        object each time it is read), if it is still waiting."""
        waiters = self._waiters.get(user_id)
        if waiters is None:
            return
        remaining = tuple(held for held in waiters if held != callback)
        if remaining:
            self._waiters[user_id] = remaining
        else:
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

        def woken(at: float) -> None:
            if not waiter.called:
                waiter.callback(at)

        self._waiters[user_id] = self._waiters.get(user_id, ()) + (woken,)
        timer = self._reactor.callLater(timeout_ms / 1000.0, woken, -1.0)
        try:
            return await waiter >= 0
        finally:
            if timer.active():
                timer.cancel()
            self.withdraw(user_id, woken)
