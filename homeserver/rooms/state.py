"""Reading a room's state as a user may see it: /state, /members, /joined_members.

Who may read the room at all is `HistoryVisibility.get_room_access`: a joined user sees the
current state; a user who has left (or was kicked or banned) sees the state as it was when
they left, until they forget the room; anyone may read the current state of a
`world_readable` room. Everyone else gets 403, for an unknown room too: the spec lists only
403 for these endpoints, and a 404 would tell outsiders which rooms exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.errors import Codes, MatrixError
from homeserver.events.model import StateKey
from homeserver.events.types import MEMBER
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.sync.tokens import RoomPosition
from storage.stores.events import EventStore, StoredEvent
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

_NOT_A_MEMBER = "You aren't a member of the room and weren't previously a member of the room"


class RoomStateHandler:
    def __init__(
        self,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        visibility: HistoryVisibility,
    ) -> None:
        self._events = events
        self._state = state
        self._rooms = rooms
        self._visibility = visibility

    async def get_state(self, user_id: str, room_id: str) -> list[StoredEvent]:
        """Every state event the user may see, in a stable order (by type, then state key)."""
        state_ids = await self._visible_state_ids(user_id, room_id)
        loaded = await self._events.get_stored_events(state_ids.values())
        return [loaded[state_ids[key]] for key in sorted(state_ids) if state_ids[key] in loaded]

    async def get_state_event(
        self, user_id: str, room_id: str, event_type: str, state_key: str
    ) -> StoredEvent:
        state_ids = await self._visible_state_ids(user_id, room_id)
        event_id = state_ids.get((event_type, state_key))
        stored = await self._events.get_stored_event(event_id) if event_id else None
        if stored is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Event not found")
        return stored

    async def get_members(
        self,
        user_id: str,
        room_id: str,
        at: str | None = None,
        membership: str | None = None,
        not_membership: str | None = None,
    ) -> list[StoredEvent]:
        """m.room.member events at `at` (a pagination or sync token; default: now).

        With both filters the spec asks for an "or": membership is `membership` *or* is
        not `not_membership`.
        """
        position = RoomPosition.parse(at) if at is not None else None
        state_ids = await self._visible_state_ids(user_id, room_id, position)
        member_ids = [eid for (etype, _), eid in sorted(state_ids.items()) if etype == MEMBER]
        loaded = await self._events.get_stored_events(member_ids)
        members = [loaded[eid] for eid in member_ids if eid in loaded]

        def wanted(stored: StoredEvent) -> bool:
            value = stored.event.membership
            checks = []
            if membership is not None:
                checks.append(value == membership)
            if not_membership is not None:
                checks.append(value != not_membership)
            return any(checks) if checks else True

        return [m for m in members if wanted(m)]

    async def get_joined_members(self, user_id: str, room_id: str) -> dict[str, dict[str, Any]]:
        """user_id -> {display_name, avatar_url} as set in their member events."""
        if not await self._rooms.is_joined(room_id, user_id):
            raise MatrixError(403, Codes.FORBIDDEN, "You aren't a member of the room")
        members = await self._state.get_current_members(room_id, "join")
        loaded = await self._events.get_stored_events(members.values())
        joined: dict[str, dict[str, Any]] = {}
        for member, event_id in sorted(members.items()):
            stored = loaded.get(event_id)
            content = stored.event.content if stored is not None else {}
            display_name = content.get("displayname")
            avatar_url = content.get("avatar_url")
            joined[member] = {
                "display_name": display_name if isinstance(display_name, str) else None,
                "avatar_url": avatar_url if isinstance(avatar_url, str) else None,
            }
        return joined

    # ----- what the user may see -----------------------------------------------------------

    async def _visible_state_ids(
        self, user_id: str, room_id: str, position: RoomPosition | None = None
    ) -> Mapping[StateKey, str]:
        access = await self._visibility.get_room_access(user_id, room_id)
        if access is None:
            raise MatrixError(403, Codes.FORBIDDEN, _NOT_A_MEMBER)
        if access.until is not None:
            # Left: the state when they left, or at `position` if that is earlier.
            removed = RoomPosition(*access.until)
            if position is None or not _is_before(position, removed):
                position = removed
        if position is None:
            return await self._state.get_current_state_ids(room_id)
        group = await self._events.get_state_group_at_position(
            room_id, position.topological, position.stream
        )
        return await self._state.get_state_group(group) if group is not None else {}


def _is_before(position: RoomPosition, removed: RoomPosition) -> bool:
    """Whether `position` is earlier in the room than the event at `removed`."""
    assert removed.topological is not None
    if position.topological is None:
        return position.stream < removed.stream
    return (position.topological, position.stream) < (removed.topological, removed.stream)
