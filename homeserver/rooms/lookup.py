"""Whether this server knows a room: the one place "no such room" is decided and worded."""

from __future__ import annotations

from homeserver.errors import Codes, MatrixError
from homeserver.events.room_versions import RoomVersion
from storage.stores.events import EventStore

UNKNOWN_ROOM = "Unknown room"


async def require_room(
    events: EventStore, room_id: str, not_found: str = UNKNOWN_ROOM
) -> RoomVersion:
    """The room's version; 404 M_NOT_FOUND (saying `not_found`) if this server does not know
    the room. Callers that must not reveal whether a room exists answer 403 instead and do
    not use this."""
    room_version = await events.get_room_version(room_id)
    if room_version is None:
        raise MatrixError(404, Codes.NOT_FOUND, not_found)
    return room_version
