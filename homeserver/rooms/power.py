"""Power in a room now: whether a user's power level reaches what an action needs.

The levels are the auth rules' own (`homeserver.events.auth`: `user_power_level`,
`required_power_level`, `named_level`), read against the room's current create and power
levels events. For policy the auth rules do not cover but that follows the same levels: who
may redact other users' events, delete an alias or publish a room.
"""

from __future__ import annotations

from collections.abc import Callable

from homeserver.events.auth import (
    StateMap,
    named_level,
    required_power_level,
    user_power_level,
)
from homeserver.events.room_versions import RoomVersion
from homeserver.events.types import CREATE, POWER_LEVELS
from storage.stores.events import EventStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

# The state the power level rules read.
_POWER_STATE = ((CREATE, ""), (POWER_LEVELS, ""))


class RoomPower:
    def __init__(self, events: EventStore, state: StateStore, rooms: RoomStore) -> None:
        self._events = events
        self._state = state
        self._rooms = rooms

    async def can_send_state(self, room_id: str, user_id: str, event_type: str) -> bool:
        """Whether the auth rules would let the user send a state event of this type now:
        joined, with at least the power level the type requires."""
        if not await self._rooms.is_joined(room_id, user_id):
            return False
        return await self._has_level(
            room_id,
            user_id,
            lambda state, version: required_power_level(event_type, True, state, version),
        )

    async def has_named_level(self, room_id: str, user_id: str, name: str) -> bool:
        """Whether the user's power level reaches the room's `ban`, `kick`, `redact` or
        `invite` level (membership is for the caller to check)."""
        return await self._has_level(
            room_id, user_id, lambda state, version: named_level(name, state, version)
        )

    async def _has_level(
        self,
        room_id: str,
        user_id: str,
        needed: Callable[[StateMap, RoomVersion], int],
    ) -> bool:
        """False for a room we do not know."""
        room_version = await self._events.get_room_version(room_id)
        if room_version is None:
            return False
        ids = {}
        for key in _POWER_STATE:
            event_id = await self._state.get_current_state_event_id(room_id, *key)
            if event_id is not None:
                ids[key] = event_id
        loaded = await self._events.get_events(ids.values())
        state = {key: loaded[eid] for key, eid in ids.items() if eid in loaded}
        return user_power_level(user_id, state, room_version) >= needed(state, room_version)
