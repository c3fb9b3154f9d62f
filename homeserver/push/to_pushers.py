"""What push rule evaluation tells the pushers: each new notification, and each drop of a
user's unread count (a receipt), with the user's unread count across their rooms (the
badge a push gateway shows). Users without an HTTP pusher cost nothing here."""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer

from homeserver.events.model import Event
from homeserver.push.counts import NotificationCounts
from homeserver.push.delivery import PushDelivery
from homeserver.push.pushers import PusherHandler
from homeserver.rooms.shared_rooms import SharedRooms
from storage.stores.push_actions import RoomCounts

logger = logging.getLogger(__name__)


class PusherBridge:
    def __init__(
        self,
        counts: NotificationCounts,
        shared_rooms: SharedRooms,
        pushers: PusherHandler,
        delivery: PushDelivery,
    ) -> None:
        self._counts = counts
        self._shared_rooms = shared_rooms
        self._pushers = pushers
        self._delivery = delivery

    async def unread(self, user_id: str) -> int:
        """Notifying actions unread across the user's joined rooms."""
        rooms = await self._shared_rooms.joined_rooms(user_id)
        counts = await self._counts.get_many(user_id, rooms)
        return sum(c.totals()[0] for c in counts.values())

    async def on_notification(
        self, user_id: str, room_id: str, event: Event, actions: tuple[Any, ...],
        counts: RoomCounts | None,
    ) -> None:
        """A `PushActionGenerator.notification_listeners` entry."""
        if not self._delivery.has_http_pusher(user_id):
            return
        unread = await self.unread(user_id)
        await self._pushers.on_notification(
            user_id, room_id, event, actions, {"unread": unread, "missed_calls": 0}
        )

    def read_moved(self, user_id: str, room_id: str) -> None:
        """A `ReceiptsHandler.read_listeners` entry, after the counts forgot the room: a
        badge-only update, in the background."""
        if self._delivery.has_http_pusher(user_id):
            defer.ensureDeferred(self._counts_changed(user_id))

    async def _counts_changed(self, user_id: str) -> None:
        try:
            await self._pushers.on_counts_changed(user_id, {"unread": await self.unread(user_id)})
        except Exception:
            logger.exception("Telling the pushers of %s's new unread count failed", user_id)
