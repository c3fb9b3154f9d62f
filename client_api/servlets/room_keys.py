"""Server-side key backups: /room_keys/version[/{version}] and
/room_keys/keys[/{roomId}[/{sessionId}]]?version=..."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object, require_query_string
from client_api.validation import RequestBody, parse_body
from homeserver.events.canonical import MAX_SAFE_INTEGER
from storage.stores.room_keys import RoomKey

if TYPE_CHECKING:
    from homeserver.app import HomeServer

ROOM = "(?P<room_id>[^/]+)"
SESSION = "(?P<session_id>[^/]+)"

Count = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]


class VersionBody(RequestBody):
    algorithm: str
    auth_data: dict[str, Any]


class UpdateVersionBody(VersionBody):
    version: str | None = None


class KeyBackupDataBody(RequestBody):
    first_message_index: Count
    forwarded_count: Count
    is_verified: bool
    session_data: dict[str, Any]

    def room_key(self) -> RoomKey:
        return RoomKey(
            self.first_message_index, self.forwarded_count, self.is_verified, self.session_data
        )


class RoomKeyBackupBody(RequestBody):
    sessions: dict[str, KeyBackupDataBody]

    def room_keys(self) -> dict[str, RoomKey]:
        return {session_id: key.room_key() for session_id, key in self.sessions.items()}


class RoomKeysBody(RequestBody):
    rooms: dict[str, RoomKeyBackupBody]


def room_key_json(key: RoomKey) -> dict[str, Any]:
    return {
        "first_message_index": key.first_message_index,
        "forwarded_count": key.forwarded_count,
        "is_verified": key.is_verified,
        "session_data": key.session_data,
    }


def sessions_json(sessions: dict[str, RoomKey]) -> dict[str, Any]:
    return {"sessions": {session_id: room_key_json(key) for session_id, key in sessions.items()}}


class RoomKeysVersionServlet:
    PATTERNS = [client_path("/room_keys/version")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), VersionBody)
        version = await self._hs.room_keys.create_version(
            requester.user_id, body.algorithm, body.auth_data
        )
        return 200, {"version": version}

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, await self._hs.room_keys.get_version(requester.user_id)


class RoomKeysVersionByIdServlet:
    PATTERNS = [client_path("/room_keys/version/(?P<version>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, version: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, await self._hs.room_keys.get_version(requester.user_id, version)

    async def on_PUT(self, request: HeddleRequest, version: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), UpdateVersionBody)
        await self._hs.room_keys.update_version(
            requester.user_id, version, body.algorithm, body.auth_data, body.version
        )
        return 200, {}

    async def on_DELETE(self, request: HeddleRequest, version: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        await self._hs.room_keys.delete_version(requester.user_id, version)
        return 200, {}


class RoomKeysServlet:
    PATTERNS = [client_path("/room_keys/keys")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        version = require_query_string(request, "version")
        body = parse_body(parse_json_object(request), RoomKeysBody)
        rooms = {room_id: room.room_keys() for room_id, room in body.rooms.items()}
        return 200, await self._hs.room_keys.upload_keys(requester.user_id, version, rooms)

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        version = require_query_string(request, "version")
        rooms = await self._hs.room_keys.get_keys(requester.user_id, version)
        return 200, {"rooms": {room_id: sessions_json(s) for room_id, s in rooms.items()}}

    async def on_DELETE(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        version = require_query_string(request, "version")
        return 200, await self._hs.room_keys.delete_keys(requester.user_id, version)


class RoomKeysRoomServlet:
    PATTERNS = [client_path(f"/room_keys/keys/{ROOM}")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        version = require_query_string(request, "version")
        body = parse_body(parse_json_object(request), RoomKeyBackupBody)
        return 200, await self._hs.room_keys.upload_keys(
            requester.user_id, version, {room_id: body.room_keys()}
        )

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        version = require_query_string(request, "version")
        rooms = await self._hs.room_keys.get_keys(requester.user_id, version, room_id)
        # No keys for the room is `{"sessions": {}}`, not an error (spec).
        return 200, sessions_json(rooms.get(room_id, {}))

    async def on_DELETE(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        version = require_query_string(request, "version")
        return 200, await self._hs.room_keys.delete_keys(requester.user_id, version, room_id)


class RoomKeysSessionServlet:
    PATTERNS = [client_path(f"/room_keys/keys/{ROOM}/{SESSION}")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(
        self, request: HeddleRequest, room_id: str, session_id: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        version = require_query_string(request, "version")
        body = parse_body(parse_json_object(request), KeyBackupDataBody)
        return 200, await self._hs.room_keys.upload_keys(
            requester.user_id, version, {room_id: {session_id: body.room_key()}}
        )

    async def on_GET(
        self, request: HeddleRequest, room_id: str, session_id: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        version = require_query_string(request, "version")
        key = await self._hs.room_keys.get_key(requester.user_id, version, room_id, session_id)
        return 200, room_key_json(key)

    async def on_DELETE(
        self, request: HeddleRequest, room_id: str, session_id: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        version = require_query_string(request, "version")
        return 200, await self._hs.room_keys.delete_keys(
            requester.user_id, version, room_id, session_id
        )
