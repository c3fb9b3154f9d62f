"""Spaces: a space's hierarchy and a room's summary.

Spec: api/client-server/space_hierarchy.yaml, room_summary.yaml.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import optional_user, require_user
from client_api.http import (
    HeddleRequest,
    client_path,
    parse_bool_query,
    parse_int_query,
    query_string,
)
from client_api.servlets.membership import via_servers
from homeserver.rooms.spaces import MAX_DEPTH, MAX_LIMIT, HierarchyQuery

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class SpaceHierarchyServlet:
    PATTERNS = [client_path("/rooms/(?P<room_id>[^/]+)/hierarchy", "v1")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        query = HierarchyQuery(
            suggested_only=parse_bool_query(request, "suggested_only") or False,
            limit=parse_int_query(request, "limit", min_value=1, max_value=MAX_LIMIT),
            max_depth=parse_int_query(request, "max_depth", min_value=0, max_value=MAX_DEPTH),
            from_token=query_string(request, "from"),
        )
        return 200, await self._hs.spaces.get_hierarchy(requester, room_id, query)


class RoomSummaryServlet:
    PATTERNS = [client_path("/room_summary/(?P<room_id_or_alias>[^/]+)", "v1")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id_or_alias: str) -> tuple[int, Any]:
        # The spec lets servers answer without a token for rooms open to anyone.
        requester = await optional_user(self._hs, request)
        summary = await self._hs.spaces.get_room_summary(
            requester, room_id_or_alias, via_servers(request)
        )
        return 200, summary
