"""GET /events: the deprecated event stream, and its one living use, peeking into a
world-readable room (`room_id=`).

A request names a sync token (`from`, as /sync's `next_batch`; now when absent) and returns
what happened after it, long-polling through the `Notifier` as /sync does when nothing has
yet: the timeline events of the user's rooms (or of the one peeked room), and, when not
peeking, as Synapse's stream has them, the user's account data (room tags and other room
account data carry their `room_id`), read receipts and typing in its joined rooms (with
`room_id`), and presence of the users it shares a room with. `end` is the token to carry on
from.
"""

from __future__ import annotations

from typing import Any

from homeserver.account_data import AccountDataHandler
from homeserver.auth.tokens import Requester
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.events.serialize import EventSerializer
from homeserver.presence import PresenceHandler, with_user_id
from homeserver.receipts import ReceiptsHandler
from homeserver.rooms.shared_rooms import SharedRooms
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.streams.registry import StreamRegistry
from homeserver.sync.notifier import Notifier
from homeserver.sync.tokens import StreamToken
from homeserver.typing import TypingHandler
from storage.stores.events import EventStore, StoredEvent
from storage.stores.state import StateStore

# Events one response carries at most; `end` then points just after the last of them.
MAX_EVENTS = 100
DEFAULT_TIMEOUT_MS = 30_000


class EventStreamHandler:
    def __init__(
        self,
        clock: Clock,
        events: EventStore,
        shared_rooms: SharedRooms,
        visibility: HistoryVisibility,
        serializer: EventSerializer,
        notifier: Notifier,
        streams: StreamRegistry,
        account_data: AccountDataHandler,
        receipts: ReceiptsHandler,
        typing: TypingHandler,
        presence: PresenceHandler,
        state: StateStore,
    ) -> None:
        self._state = state
        self._account_data = account_data
        self._receipts = receipts
        self._typing = typing
        self._presence = presence
        self._clock = clock
        self._events = events
        self._shared_rooms = shared_rooms
        self._visibility = visibility
        self._serializer = serializer
        self._notifier = notifier
        self._streams = streams
        self._room_changes = streams["events"].rooms_index()

    async def get_events(
        self,
        requester: Requester,
        from_token: str | None,
        timeout_ms: int,
        room_id: str | None,
        limit: int = MAX_EVENTS,
    ) -> dict[str, Any]:
        """At most `limit` events (1 to MAX_EVENTS). 400 M_INVALID_PARAM for a token that is
        not ours; with `room_id`, 403 M_FORBIDDEN unless the user is joined to the room or it
        is world-readable."""
        start = (
            self._streams.parse_token(from_token)
            if from_token is not None
            else self._streams.current_token()
        )
        user_id = requester.user_id
        peeking = False
        if room_id is not None:
            peeking = await self._check_may_peek(user_id, room_id)
        deadline = self._clock.time_msec() + timeout_ms
        while True:
            notified_at = self._notifier.position(user_id)
            now = self._streams.current_token()
            found, end_position = await self._events_after(
                user_id, start.events, now.events, room_id, limit
            )
            others = await self._others(user_id, start, now, room_id)
            remaining = deadline - self._clock.time_msec()
            if found or others or remaining <= 0:
                break
            if peeking:
                assert room_id is not None
                with self._notifier.peeking(user_id, room_id):
                    woken = await self._notifier.wait(user_id, notified_at, remaining)
            else:
                woken = await self._notifier.wait(user_id, notified_at, remaining)
            if not woken:
                # One last look: what arrived as the timer fired is not left for later.
                now = self._streams.current_token()
                found, end_position = await self._events_after(
                    user_id, start.events, now.events, room_id, limit
                )
                others = await self._others(user_id, start, now, room_id)
                break
        end = StreamToken.of(self._streams.names, dict(now.items()) | {"events": end_position})
        chunk = await self._serializer.serialize(
            found, requester_device=(user_id, requester.device_id)
        )
        return {"chunk": chunk + others, "start": str(start), "end": str(end)}

    async def _others(
        self, user_id: str, start: StreamToken, now: StreamToken, room_id: str | None
    ) -> list[dict[str, Any]]:
        """What the user's other streams gained in (start, now]: account data, receipts,
        typing and presence, as events. With `room_id` (peeking, or one room of the
        user's): that room's receipts and typing, and its members' presence."""
        if room_id is not None:
            return await self._room_others(user_id, room_id, start, now)
        result: list[dict[str, Any]] = []
        if start.account_data < now.account_data:
            changes = await self._account_data.get_changes(
                user_id, start.account_data, now.account_data
            )
            result += changes.global_events
            for changed_room, events in changes.room_events.items():
                result += [{**e, "room_id": changed_room} for e in events]
        if start.receipts < now.receipts or start.typing < now.typing:
            joined = list(await self._shared_rooms.joined_rooms(user_id))
            if start.receipts < now.receipts:
                receipts = await self._receipts.get_receipt_events(
                    user_id, joined, start.receipts, now.receipts
                )
                result += [{**e, "room_id": r} for r, e in receipts.items()]
            if start.typing < now.typing:
                typing = self._typing.get_typing_events(joined, start.typing)
                result += [{**e, "room_id": r} for r, e in typing.items()]
        if start.presence < now.presence:
            result += with_user_id(
                await self._presence.get_presence_events(user_id, start.presence, now.presence)
            )
        return result

    async def _check_may_peek(self, user_id: str, room_id: str) -> bool:
        """Whether the user peeks (is not joined): allowed only into a world-readable room.
        The same 403 for a room that does not exist, so that its existence does not leak."""
        if room_id in await self._shared_rooms.joined_rooms(user_id):
            return False
        if await self._events.get_room_version(room_id) is None or not (
            await self._visibility.is_world_readable(room_id)
        ):
            raise MatrixError(
                403, Codes.FORBIDDEN, "You are not in this room and it is not world-readable"
            )
        return True

    async def _events_after(
        self, user_id: str, after: int, up_to: int, room_id: str | None, limit: int
    ) -> tuple[list[StoredEvent], int]:
        """The events the user may see with after < stream position <= up_to, at most
        `limit` of them, and the stream position they reach."""
        if after >= up_to:
            return [], max(after, up_to)
        if room_id is not None:
            room_ids = [room_id]
        else:
            # Joined rooms, and rooms whose membership changed in the window (a leave or a
            # kick is news too).
            room_ids = [
                m.room_id
                for m in await self._shared_rooms.memberships_of(user_id)
                if m.membership == "join" or m.stream_ordering > after
            ]
        changed = self._room_changes.changed_since(room_ids, after)
        if changed is None:
            changed_rooms = await self._events.get_rooms_changed_since(room_ids, after)
        else:
            changed_rooms = {str(r) for r in changed}
        candidates: list[StoredEvent] = []
        for changed_room in sorted(changed_rooms):
            candidates.extend(
                await self._events.get_room_events_between(
                    changed_room, after, up_to, limit + 1, oldest_first=True
                )
            )
        candidates.sort(key=lambda e: e.stream_ordering)
        reached = up_to
        if len(candidates) > limit:
            # Each room gave its earliest events, so the earliest overall are all here.
            candidates = candidates[:limit]
            reached = candidates[-1].stream_ordering
        return await self._visibility.filter_events_for_user(user_id, candidates), reached

    async def _room_others(
        self, user_id: str, room_id: str, start: StreamToken, now: StreamToken
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = []
        if start.receipts < now.receipts:
            receipts = await self._receipts.get_receipt_events(
                user_id, [room_id], start.receipts, now.receipts
            )
            result += [{**e, "room_id": r} for r, e in receipts.items()]
        if start.typing < now.typing:
            typing = self._typing.get_typing_events([room_id], start.typing)
            result += [{**e, "room_id": r} for r, e in typing.items()]
        if start.presence < now.presence:
            members = await self._state.get_current_members(room_id, "join")
            result += with_user_id(
                await self._presence.get_changed_presence_events(
                    members, start.presence, now.presence
                )
            )
        return result
