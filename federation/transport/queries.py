"""Queries other servers make of this one (spec: "Querying for information", "Public Room
Directory"): a local user's profile, where one of our aliases points, our published rooms.
All X-Matrix authenticated.

- `query/profile`: 400 M_INVALID_PARAM for a user of another server, 404 M_NOT_FOUND for an
  unknown user or a `field` we do not have (the spec's 404 "the queried field does not
  exist"); fields that are not set are left out. Every field is answered, the extended ones
  (`m.tz`, custom keys) included.
- `query/directory`: 404 M_NOT_FOUND unless the alias is ours and points somewhere.
- `query/{type}` of any other type: 404 M_UNRECOGNIZED.
- `publicRooms`: the same pages as the client API's /publicRooms (no third-party networks,
  so `include_all_networks` changes nothing).
- `hierarchy/{roomId}`: a space we are in and its children, as the requesting server may
  see them (`homeserver/rooms/spaces.py`); 404 M_NOT_FOUND otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import (
    HeddleRequest,
    parse_bool_query,
    parse_int_query,
    query_string,
    require_query_string,
)
from client_api.servlets.directory import PublicRoomsBody
from client_api.validation import parse_body
from federation.transport.auth import authenticate_request, federation_json_body_and_origin
from federation.transport.routes import federation_path
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import split_room_alias, split_user_id
from homeserver.profile import profile_json
from homeserver.rooms.directory import PublicRoomsQuery

if TYPE_CHECKING:
    from homeserver.app import HomeServer

class QueryProfileServlet:
    """GET /_matrix/federation/v1/query/profile?user_id=&field="""

    PATTERNS = [federation_path("/query/profile")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await authenticate_request(self._hs, request, None)
        user_id = require_query_string(request, "user_id")
        field = query_string(request, "field")
        _, server = split_user_id(user_id)
        if server != self._hs.server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, f"{user_id} is not a user of this server")
        values = profile_json(await self._hs.profiles.get_full_profile(user_id))
        if field is None:
            return 200, values
        if field not in values:
            raise MatrixError(404, Codes.NOT_FOUND, f"No profile field {field[:100]!r}")
        return 200, {field: values[field]}


class QueryDirectoryServlet:
    """GET /_matrix/federation/v1/query/directory?room_alias="""

    PATTERNS = [federation_path("/query/directory")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await authenticate_request(self._hs, request, None)
        room_alias = require_query_string(request, "room_alias")
        _, server = split_room_alias(room_alias)
        if server != self._hs.server_name:
            raise MatrixError(404, Codes.NOT_FOUND, f"Room alias {room_alias} is not ours")
        room_id, servers = await self._hs.directory.resolve_local_alias(room_alias)
        return 200, {"room_id": room_id, "servers": servers}


class QueryServlet:
    """GET /_matrix/federation/v1/query/{queryType} for the query types we do not answer.
    Registered after the specific query servlets, which the router tries first."""

    PATTERNS = [federation_path("/query/(?P<query_type>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, query_type: str) -> tuple[int, Any]:
        await authenticate_request(self._hs, request, None)
        raise MatrixError(404, Codes.UNRECOGNIZED, f"Unknown query type {query_type[:100]!r}")


class FederationPublicRoomsServlet:
    """GET and POST /_matrix/federation/v1/publicRooms: our published room directory."""

    PATTERNS = [federation_path("/publicRooms")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await authenticate_request(self._hs, request, None)
        include_all_networks = bool(parse_bool_query(request, "include_all_networks"))
        query = PublicRoomsQuery(
            limit=parse_int_query(request, "limit"),
            since=query_string(request, "since"),
            third_party_instance_id=(
                None if include_all_networks else query_string(request, "third_party_instance_id")
            ),
        )
        return 200, await self._hs.room_list.get_public_rooms(None, query)

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        _, raw = await federation_json_body_and_origin(self._hs, request)
        body = parse_body(raw, PublicRoomsBody)
        query = PublicRoomsQuery(
            limit=body.limit,
            since=body.since,
            search_term=body.filter.generic_search_term if body.filter else None,
            room_types=body.filter.room_types if body.filter else None,
            third_party_instance_id=(
                None if body.include_all_networks else body.third_party_instance_id
            ),
        )
        return 200, await self._hs.room_list.get_public_rooms(None, query)


class FederationSpaceHierarchyServlet:
    """GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only="""

    PATTERNS = [federation_path("/hierarchy/(?P<room_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        origin = await authenticate_request(self._hs, request, None)
        suggested_only = parse_bool_query(request, "suggested_only") or False
        return 200, await self._hs.spaces.get_federation_hierarchy(origin, room_id, suggested_only)
