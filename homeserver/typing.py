"""Typing notifications: who is typing in which room, held in memory only.

Typing is ephemeral (spec: "Typing Notifications"), so nothing is written to the database.
Every change (a user starts, stops, or times out) takes the next position in the typing
stream; sync asks which rooms changed after the position in its token and gets each such
room's complete list of typing users, which clients use to *replace* what they knew.

Positions start from 0 in each process. A token from before a restart can therefore be
ahead of `current_position`; such a token is treated as knowing nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from twisted.internet import defer

from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.linearizer import Linearizer
from homeserver.streams.bus import StreamBus, StreamUpdate
from homeserver.streams.registry import Stream
from storage.stores.rooms import RoomStore

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 30_000
# Clients re-send every 20-30 s (spec); a longer claim is cut to this.
MAX_TIMEOUT_MS = 120_000


class TypingHandler:
    def __init__(
        self,
        reactor: Any,
        rooms: RoomStore,
        stream: Stream,
        bus: StreamBus,
    ) -> None:
        self._reactor = reactor
        self._rooms = rooms
        self._ids = stream.memory_ids()
        # Keyed by room_id.
        self._changes = stream.rooms_index()
        self._bus = bus
        # room_id -> user_id -> the timer that ends their typing.
        self._typing: dict[str, dict[str, Any]] = {}
        # Called with (room_id, user_id, typing) when a local user starts or stops typing
        # (federation tells the room's other servers).
        self.local_change_listeners: list[Callable[[str, str, bool], Awaitable[None]]] = []
        # One local change of a user in a room at a time, listeners included: they hear of
        # the changes in the order they were made, so the last one told is the state held.
        self._local_changes = Linearizer("typing")
        self._stopped = False

    @property
    def current_position(self) -> int:
        return self._ids.current

    async def set_typing(
        self,
        requester: Requester,
        room_id: str,
        user_id: str,
        typing: bool,
        timeout_ms: int | None = None,
    ) -> None:
        """Start (for `timeout_ms`) or stop `user_id` typing in `room_id`.

        403 M_FORBIDDEN for someone else's typing state or a room the user is not joined to.
        """
        if requester.user_id != user_id:
            raise MatrixError(403, Codes.FORBIDDEN, "Cannot set another user's typing state")
        if not await self._rooms.is_joined(room_id, user_id):
            raise MatrixError(403, Codes.FORBIDDEN, "You are not joined to this room")
        if requester.shadow_banned:
            # Accepted and not shown: nobody else may learn they are here.
            return
        async with self._local_changes.queue((room_id, user_id)):
            if typing:
                timeout = DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms
                await self.started_typing(
                    room_id, user_id, min(max(timeout, 0), MAX_TIMEOUT_MS)
                )
            else:
                await self.stopped_typing(room_id, user_id)
            for listener in self.local_change_listeners:
                await listener(room_id, user_id, typing)

    async def started_typing(self, room_id: str, user_id: str, timeout_ms: int) -> None:
        if self._stopped:
            # A request (or federation EDU) still in flight at shutdown: no timer may outlive
            # the server.
            return
        users = self._typing.setdefault(room_id, {})
        timer = users.get(user_id)
        if timer is not None and timer.active():
            # Still typing: only the expiry moves, so nobody needs telling.
            timer.reset(timeout_ms / 1000.0)
            return
        users[user_id] = self._reactor.callLater(
            timeout_ms / 1000.0, self._expire, room_id, user_id
        )
        await self._changed(room_id)

    async def stopped_typing(self, room_id: str, user_id: str) -> None:
        users = self._typing.get(room_id, {})
        timer = users.pop(user_id, None)
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        if not users:
            self._typing.pop(room_id, None)
        await self._changed(room_id)

    def _expire(self, room_id: str, user_id: str) -> None:
        users = self._typing.get(room_id, {})
        users.pop(user_id, None)
        if not users:
            self._typing.pop(room_id, None)

        async def changed() -> None:
            try:
                await self._changed(room_id)
            except Exception:
                logger.exception("typing timeout of %s in %s: notifying failed", user_id, room_id)

        defer.ensureDeferred(changed())

    async def _changed(self, room_id: str) -> None:
        await self._bus.publish(StreamUpdate.of("typing", self._ids.advance(), rooms=[room_id]))

    # ----- for sync ---------------------------------------------------------------------------

    def get_typing_users(self, room_id: str) -> list[str]:
        return sorted(self._typing.get(room_id, {}))

    def rooms_changed_since(self, room_ids: Collection[str], since: int) -> set[str]:
        """Which of `room_ids` have a different set of typing users than at `since`.

        With `since` 0 (an initial sync), the rooms where anyone is typing.
        """
        if since <= 0 or since > self._ids.current:
            # Initial sync, or a token from before a restart: report whatever is current.
            return {r for r in room_ids if self._typing.get(r)}
        changed = self._changes.changed_since(room_ids, since)
        if changed is None:
            return set(room_ids)
        return {str(room_id) for room_id in changed}

    def get_typing_events(self, room_ids: Collection[str], since: int) -> dict[str, dict[str, Any]]:
        """room_id -> the `m.typing` ephemeral event, for the rooms changed since `since`."""
        return {
            room_id: {"type": "m.typing", "content": {"user_ids": self.get_typing_users(room_id)}}
            for room_id in self.rooms_changed_since(room_ids, since)
        }

    def stop(self) -> None:
        """Cancel every timer (at shutdown); typing started afterwards is ignored."""
        self._stopped = True
        for users in self._typing.values():
            for timer in users.values():
                if timer.active():
                    timer.cancel()
        self._typing.clear()
