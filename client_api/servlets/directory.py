"""Room aliases, the published room directory and the user directory.

Spec: api/client-server/directory.yaml, list_public_rooms.yaml, users.yaml.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import optional_user, require_user
from client_api.http import (
    HeddleRequest,
    client_path,
    parse_int_query,
    parse_json_object,
    query_string,
)
from client_api.validation import RequestBody, parse_body
from homeserver.rooms.directory import PublicRoomsQuery
from homeserver.user_directory import DEFAULT_LIMIT

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class RoomAliasBody(RequestBody):
    room_id: str


class VisibilityBody(RequestBody):
    visibility: str = "public"


class PublicRoomsFilter(RequestBody):
    generic_search_term: str | None = None
    room_types: list[str | None] | None = None


class PublicRoomsBody(RequestBody):
    limit: int | None = None
    since: str | None = None
    filter: PublicRoomsFilter | None = None
    include_all_networks: bool | None = None
    third_party_instance_id: str | None = None


class UserDirectorySearchBody(RequestBody):
    search_term: str
    limit: int = DEFAULT_LIMIT


class RoomAliasServlet:
    PATTERNS = [client_path("/directory/room/(?P<room_alias>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_alias: str) -> tuple[int, Any]:
        room_id, servers = await self._hs.directory.resolve_room_alias(room_alias)
        return 200, {"room_id": room_id, "servers": servers}

    async def on_PUT(self, request: HeddleRequest, room_alias: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), RoomAliasBody)
        await self._hs.directory.create_association(requester, room_alias, body.room_id)
        return 200, {}

    async def on_DELETE(self, request: HeddleRequest, room_alias: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        await self._hs.directory.delete_association(requester, room_alias)
        return 200, {}


class RoomAliasesServlet:
    PATTERNS = [client_path("/rooms/(?P<room_id>[^/]+)/aliases")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        aliases = await self._hs.directory.get_local_aliases(requester, room_id)
        return 200, {"aliases": aliases}


class RoomVisibilityServlet:
    PATTERNS = [client_path("/directory/list/room/(?P<room_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        return 200, {"visibility": await self._hs.room_list.get_visibility(room_id)}

    async def on_PUT(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), VisibilityBody)
        await self._hs.room_list.set_visibility(requester, room_id, body.visibility)
        return 200, {}


class PublicRoomsServlet:
    PATTERNS = [client_path("/publicRooms")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        # The spec lists no authentication here; a token, if sent, must still be valid.
        await optional_user(self._hs, request)
        query = PublicRoomsQuery(
            limit=parse_int_query(request, "limit"), since=query_string(request, "since")
        )
        server = query_string(request, "server")
        return 200, await self._hs.room_list.get_public_rooms(server, query)

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), PublicRoomsBody)
        query = PublicRoomsQuery(
            limit=body.limit,
            since=body.since,
            search_term=body.filter.generic_search_term if body.filter else None,
            room_types=body.filter.room_types if body.filter else None,
            third_party_instance_id=body.third_party_instance_id,
        )
        server = query_string(request, "server")
        return 200, await self._hs.room_list.get_public_rooms(server, query)


class UserDirectorySearchServlet:
    PATTERNS = [client_path("/user_directory/search")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), UserDirectorySearchBody)
        return 200, await self._hs.user_directory.search(requester, body.search_term, body.limit)

