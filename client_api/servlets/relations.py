"""Event relationships: GET /relations (children of an event) and GET /threads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_int_query, query_string
from homeserver.errors import Codes, MatrixError
from homeserver.rooms.relations import (
    DEFAULT_LIMIT,
    INCLUDE_ALL,
    INCLUDE_PARTICIPATED,
    MAX_LIMIT,
    THREADS_DEFAULT_LIMIT,
)

if TYPE_CHECKING:
    from homeserver.app import HomeServer

_ROOM = "/rooms/(?P<room_id>[^/]+)"


def _parse_limit(request: HeddleRequest, default: int) -> int:
    """`limit`: a positive integer; larger values are capped (the spec lets servers cap)."""
    return parse_int_query(request, "limit", default, min_value=1, max_value=MAX_LIMIT)


def _parse_bool(request: HeddleRequest, name: str) -> bool | None:
    value = query_string(request, name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise MatrixError(400, Codes.INVALID_PARAM, f"{name!r} must be 'true' or 'false'")
    return value == "true"


class RelationsServlet:
    PATTERNS = [
        client_path(f"{_ROOM}/relations/(?P<event_id>[^/]+)", versions="v1"),
        client_path(f"{_ROOM}/relations/(?P<event_id>[^/]+)/(?P<rel_type>[^/]+)", versions="v1"),
        client_path(
            f"{_ROOM}/relations/(?P<event_id>[^/]+)/(?P<rel_type>[^/]+)/(?P<event_type>[^/]+)",
            versions="v1",
        ),
    ]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(
        self,
        request: HeddleRequest,
        room_id: str,
        event_id: str,
        rel_type: str | None = None,
        event_type: str | None = None,
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        # An empty value is a bad value, not an absent one.
        direction = query_string(request, "dir")
        if direction is None:
            direction = "b"
        if direction not in ("b", "f"):
            raise MatrixError(400, Codes.INVALID_PARAM, "'dir' must be 'b' or 'f'")
        limit = _parse_limit(request, DEFAULT_LIMIT)
        recurse = _parse_bool(request, "recurse")
        return 200, await self._hs.relations.get_relations(
            requester,
            room_id,
            event_id,
            rel_type,
            event_type,
            query_string(request, "from"),
            query_string(request, "to"),
            limit,
            direction,
            recurse,
        )


class ThreadsServlet:
    PATTERNS = [client_path(f"{_ROOM}/threads", versions="v1")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        include = query_string(request, "include")
        if include is None:
            include = INCLUDE_ALL
        if include not in (INCLUDE_ALL, INCLUDE_PARTICIPATED):
            raise MatrixError(400, Codes.INVALID_PARAM, "'include' must be 'all' or 'participated'")
        limit = _parse_limit(request, THREADS_DEFAULT_LIMIT)
        return 200, await self._hs.relations.get_threads(
            requester, room_id, include, query_string(request, "from"), limit
        )
