"""Reading room history: /messages, /context and single events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import (
    HeddleRequest,
    client_path,
    parse_int_query,
    parse_timestamp_lookup,
    query_string,
    require_query_string,
)
from homeserver.errors import Codes, MatrixError
from homeserver.rooms.messages import DEFAULT_LIMIT, MAX_LIMIT

if TYPE_CHECKING:
    from homeserver.app import HomeServer


def parse_limit(request: HeddleRequest, default: int = DEFAULT_LIMIT) -> int:
    """The `limit` query parameter: a non-negative integer, capped at MAX_LIMIT."""
    return parse_int_query(request, "limit", default, min_value=0, max_value=MAX_LIMIT)


class MessagesServlet:
    PATTERNS = [client_path("/rooms/(?P<room_id>[^/]+)/messages")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        direction = require_query_string(request, "dir")
        if direction not in ("b", "f"):
            raise MatrixError(400, Codes.INVALID_PARAM, "'dir' must be 'b' or 'f'")
        event_filter = await self._hs.filtering.resolve_room_event_filter(
            requester.user_id, query_string(request, "filter")
        )
        # The query's `limit` wins; a filter's own `limit` is the default when there is none.
        limit = parse_limit(request, default=event_filter.limit_or(DEFAULT_LIMIT, MAX_LIMIT))
        return 200, await self._hs.messages.get_messages(
            requester,
            room_id,
            direction,
            query_string(request, "from"),
            query_string(request, "to"),
            limit,
            event_filter,
        )


class ContextServlet:
    PATTERNS = [client_path("/rooms/(?P<room_id>[^/]+)/context/(?P<event_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str, event_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        limit = parse_limit(request)
        event_filter = await self._hs.filtering.resolve_room_event_filter(
            requester.user_id, query_string(request, "filter")
        )
        return 200, await self._hs.messages.get_context(
            requester, room_id, event_id, limit, event_filter
        )


class EventServlet:
    PATTERNS = [client_path("/rooms/(?P<room_id>[^/]+)/event/(?P<event_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str, event_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        return 200, await self._hs.messages.get_event(requester, room_id, event_id)


class TimestampToEventServlet:
    PATTERNS = [client_path("/rooms/(?P<room_id>[^/]+)/timestamp_to_event", versions="v1")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        ts, forwards = parse_timestamp_lookup(request)
        found = await self._hs.timestamp_lookup.closest_for_user(
            requester.user_id, room_id, ts, forwards
        )
        return 200, found.to_json()
