"""The deprecated event stream and its room previews: GET /events (peeking with `room_id`),
GET /events/{eventId}, GET /rooms/{roomId}/initialSync and GET /initialSync."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import (
    HeddleRequest,
    client_path,
    parse_bool_query,
    parse_int_query,
    query_string,
)
from client_api.servlets.history import parse_limit
from client_api.servlets.sync import MAX_TIMEOUT_MS
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_room_id
from homeserver.sync.events_stream import DEFAULT_TIMEOUT_MS, MAX_EVENTS

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class EventsServlet:
    PATTERNS = [client_path("/events")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        # Guests may peek: the spec lists /events "as used for room previews" (with
        # `room_id`) among what guests may call, and nothing else of it.
        requester = await require_user(self._hs, request, allow_guest=True)
        timeout_ms = max(
            parse_int_query(request, "timeout", DEFAULT_TIMEOUT_MS, max_value=MAX_TIMEOUT_MS), 0
        )
        # Not in the spec's /events, but clients and Synapse send it: a number is checked
        # (400 otherwise), and caps the events returned. 0 means no cap of the caller's.
        limit = parse_int_query(request, "limit", 0, min_value=0, max_value=MAX_EVENTS)
        room_id = query_string(request, "room_id")
        if room_id is not None:
            check_room_id(room_id)
        elif requester.is_guest:
            raise MatrixError(
                403, Codes.GUEST_ACCESS_FORBIDDEN, "Guests may only peek, with room_id"
            )
        return 200, await self._hs.legacy_events.get_events(
            requester, query_string(request, "from"), timeout_ms, room_id, limit or MAX_EVENTS
        )


class EventByIdServlet:
    PATTERNS = [client_path("/events/(?P<event_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, event_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, await self._hs.messages.get_event_by_id(requester, event_id)


class RoomInitialSyncServlet:
    PATTERNS = [client_path("/rooms/(?P<room_id>[^/]+)/initialSync")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        check_room_id(room_id)
        return 200, await self._hs.room_initial_sync.room_initial_sync(
            requester, room_id, parse_limit(request)
        )


class InitialSyncServlet:
    PATTERNS = [client_path("/initialSync")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        archived = parse_bool_query(request, "archived") or False
        return 200, await self._hs.room_initial_sync.initial_sync(
            requester, parse_limit(request), archived
        )
