"""GET /notifications (spec: "Listing Notifications"): the events a user was notified of,
newest first, with the actions that matched and whether they have been read."""

from __future__ import annotations

from typing import Any

from homeserver.errors import Codes, MatrixError
from homeserver.events.serialize import EventSerializer
from storage.stores.events import EventStore
from storage.stores.push_actions import PushActionStore

JsonDict = dict[str, Any]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def parse_from_token(token: str | None) -> int | None:
    """A `next_token` we gave: the stream position to continue below. 400 M_INVALID_PARAM
    for anything else."""
    if token is None or token == "":
        return None
    if not token.isascii() or not token.isdigit() or len(token) > 18 or int(token) <= 0:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid 'from' token")
    return int(token)


class NotificationsHandler:
    def __init__(
        self, store: PushActionStore, events: EventStore, serializer: EventSerializer
    ) -> None:
        self._store = store
        self._events = events
        self._serializer = serializer

    async def get_notifications(
        self, user_id: str, from_token: str | None, limit: int, only: str | None
    ) -> JsonDict:
        before = parse_from_token(from_token)
        # One more than asked: whether there is a next page.
        rows = await self._store.get_notifications(
            user_id, before, limit + 1, only_highlight=only == "highlight"
        )
        page, more = rows[:limit], len(rows) > limit
        stored = await self._events.get_stored_events([n.event_id for n in page])
        present = [n for n in page if n.event_id in stored]
        serialized = await self._serializer.serialize(
            [stored[n.event_id] for n in present], None, include_room_id=False
        )
        body: JsonDict = {
            "notifications": [
                {
                    "actions": n.actions,
                    "event": event,
                    "read": n.read,
                    "room_id": n.room_id,
                    "ts": n.ts,
                }
                for n, event in zip(present, serialized, strict=True)
            ]
        }
        if more and page:
            body["next_token"] = str(page[-1].stream_ordering)
        return body
