"""GET /rooms/{roomId}/initialSync: one room's state and latest messages in one response.

The spec keeps it for peeking into rooms the user may read without being in them (a
world-readable room). A member gets the current state, the latest messages, the members'
presence, the room's receipts and the user's account data for the room. A user who left or
was banned gets the room as it was when they left, as Synapse answers (no presence or
receipts then). Anyone else gets 403 M_FORBIDDEN.
"""

from __future__ import annotations

from typing import Any

from homeserver.account_data import AccountDataHandler
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.events.serialize import EventSerializer
from homeserver.filtering import RoomEventFilter
from homeserver.presence import PresenceHandler
from homeserver.receipts import ReceiptsHandler
from homeserver.rooms.messages import MessagesHandler
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.streams.registry import StreamRegistry
from homeserver.sync.tokens import RoomPosition
from storage.stores.directory import RoomDirectoryStore
from storage.stores.events import EventStore, StoredEvent
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

_EVERYTHING = RoomEventFilter()


class RoomInitialSyncHandler:
    def __init__(
        self,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        directory: RoomDirectoryStore,
        visibility: HistoryVisibility,
        messages: MessagesHandler,
        serializer: EventSerializer,
        streams: StreamRegistry,
        receipts: ReceiptsHandler,
        presence: PresenceHandler,
        account_data: AccountDataHandler,
    ) -> None:
        self._events = events
        self._state = state
        self._rooms = rooms
        self._directory = directory
        self._visibility = visibility
        self._messages = messages
        self._serializer = serializer
        self._streams = streams
        self._receipts = receipts
        self._presence = presence
        self._account_data = account_data

    async def room_initial_sync(
        self, requester: Requester, room_id: str, limit: int
    ) -> dict[str, Any]:
        user_id = requester.user_id
        if await self._visibility.get_room_access(user_id, room_id) is None:
            # The same answer for rooms that do not exist, so their existence does not leak.
            raise MatrixError(403, Codes.FORBIDDEN, "You are not allowed to read this room")
        member = await self._rooms.get_membership(room_id, user_id)
        membership = member.membership if member is not None and not member.forgotten else None
        now = self._streams.current_token()
        result: dict[str, Any] = {"room_id": room_id}
        if member is not None and membership in ("leave", "ban"):
            departure = await self._events.get_stored_event(member.event_id)
            if departure is None:
                raise MatrixError(403, Codes.FORBIDDEN, "You are not allowed to read this room")
            state = await self._messages.state_after(departure)
            end = str(RoomPosition(departure.topological_ordering, departure.stream_ordering))
            result["presence"] = []
            result["receipts"] = []
        else:
            state = await self._current_state(room_id)
            end = str(now)
            joined = await self._state.get_current_members(room_id, "join")
            result["presence"] = await self._presence.get_presence_events_for_users(joined)
            receipts = await self._receipts.get_receipt_events(user_id, [room_id], 0, now.receipts)
            result["receipts"] = list(receipts.values())
        if membership is not None:
            # A world-readable room's peeker has none to tell (Synapse says "join").
            result["membership"] = membership
        # The latest messages, read backwards from `end` and given oldest first.
        page = await self._messages.get_messages(
            requester, room_id, "b", end, None, limit, _EVERYTHING
        )
        messages: dict[str, Any] = {"chunk": page["chunk"][::-1], "end": end}
        if "end" in page:
            # Where /messages carries on backwards; absent at the start of the history.
            messages["start"] = page["end"]
        result["messages"] = messages
        result["state"] = await self._serializer.serialize(
            state, requester_device=(user_id, requester.device_id)
        )
        published = await self._directory.get_visibility(room_id)
        result["visibility"] = "public" if published else "private"
        changes = await self._account_data.get_changes(user_id, 0)
        result["account_data"] = changes.room_events.get(room_id, [])
        return result

    async def _current_state(self, room_id: str) -> list[StoredEvent]:
        state_ids = await self._state.get_current_state_ids(room_id)
        loaded = await self._events.get_stored_events(state_ids.values())
        return sorted(
            (loaded[eid] for eid in state_ids.values() if eid in loaded),
            key=lambda e: e.stream_ordering,
        )
