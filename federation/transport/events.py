"""Read-only room endpoints other servers call (spec: "Retrieving events", "Backfilling and
retrieving missing events", "Authorization" of the server-server API): one event, the state
at an event, an event's auth chain, backfill and get_missing_events.

Every request is X-Matrix authenticated. Room-scoped ones answer 404 M_NOT_FOUND for a room
this server does not know, and 403 M_FORBIDDEN when the room's server ACL denies the origin
or the origin may not see the room: it has no joined member there and the room is not
world_readable. (That check is per room, not per event as history visibility would allow.)

Rejected events are never served; soft-failed ones are, as Synapse does (other servers
need them to make sense of the DAG). Redacted events are served in their redacted form.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import Field

from client_api.http import (
    HeddleRequest,
    parse_int_query,
    parse_timestamp_lookup,
    require_query_string,
)
from client_api.validation import RequestBody, parse_body
from federation.acl import check_server_acl
from federation.timestamp_lookup import no_event_found
from federation.transport.auth import authenticate_request, federation_json_body_and_origin
from federation.transport.routes import federation_path
from federation.visibility import pdus_for_server
from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import server_of
from homeserver.rooms.lookup import require_room
from storage.stores.events import StoredEvent

if TYPE_CHECKING:
    from homeserver.app import HomeServer

# Most events one /backfill answers with, whatever `limit` asks (Synapse caps it at 100 too).
MAX_BACKFILL_LIMIT = 100
# get_missing_events: `limit` defaults to 10 (the spec) and is cut to 20, as Synapse does.
DEFAULT_MISSING_EVENTS_LIMIT = 10
MAX_MISSING_EVENTS_LIMIT = 20

_ROOM = "(?P<room_id>[^/]+)"
_EVENT = "(?P<event_id>[^/]+)"


async def require_server_in_room(hs: HomeServer, room_id: str, origin: str) -> None:
    """404 M_NOT_FOUND for a room we do not know; 403 M_FORBIDDEN unless `origin` has a
    joined member in the room's current state or the room is world_readable."""
    await require_room(hs.event_store, room_id)
    members = await hs.state_store.get_current_members(room_id, "join")
    if any(server_of(user_id) == origin for user_id in members):
        return
    if await hs.history_visibility.is_world_readable(room_id):
        return
    raise MatrixError(403, Codes.FORBIDDEN, f"Server {origin} is not in room {room_id}")


async def _check_room_access(hs: HomeServer, room_id: str, origin: str) -> None:
    """404 for an unknown room, 403 if the ACL denies `origin` or it may not see the room."""
    await require_room(hs.event_store, room_id)
    await check_server_acl(hs, room_id, origin)
    await require_server_in_room(hs, room_id, origin)


async def _authenticate(hs: HomeServer, request: HeddleRequest) -> str:
    return await authenticate_request(hs, request, None)


async def _servable_event(hs: HomeServer, event_id: str, room_id: str | None) -> StoredEvent:
    """The stored event, or 404 M_NOT_FOUND if unknown, rejected or (given `room_id`) in
    another room."""
    stored = await hs.event_store.get_stored_event(event_id)
    if (
        stored is None
        or stored.event.rejected_reason is not None
        or (room_id is not None and stored.event.room_id != room_id)
    ):
        raise MatrixError(404, Codes.NOT_FOUND, f"Event {event_id} not found")
    return stored


async def _pdus(hs: HomeServer, event_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The PDUs of the events we hold among `event_ids`, in that order, rejected ones left
    out, redacted ones pruned."""
    ids = list(event_ids)
    loaded = await hs.event_store.get_stored_events(ids)
    servable = [
        loaded[eid] for eid in ids if eid in loaded and loaded[eid].event.rejected_reason is None
    ]
    return await hs.event_serializer.federation_forms(servable)


def _transaction(hs: HomeServer, pdus: list[dict[str, Any]]) -> dict[str, Any]:
    return {"origin": hs.server_name, "origin_server_ts": hs.clock.time_msec(), "pdus": pdus}


class EventServlet:
    """GET /_matrix/federation/v1/event/{eventId}: one PDU, wrapped in a transaction."""

    PATTERNS = [federation_path(f"/event/{_EVENT}")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, event_id: str) -> tuple[int, Any]:
        origin = await _authenticate(self._hs, request)
        stored = await _servable_event(self._hs, event_id, None)
        await _check_room_access(self._hs, stored.event.room_id, origin)
        pdus = await pdus_for_server(self._hs, origin, [stored])
        return 200, _transaction(self._hs, pdus)


async def _state_before(hs: HomeServer, event_id: str, room_id: str) -> tuple[list[str], list[str]]:
    """(state event IDs before the event, their auth chain IDs), both sorted. The missing
    `event_id` parameter is checked (400) before the room is (404), as Synapse does."""
    await _servable_event(hs, event_id, room_id)
    groups = await hs.event_store.get_state_groups_for_events([event_id])
    before = groups.get(event_id, (None, None))[0]
    if before is None:
        # An outlier: we hold the event but not the state of the room at it.
        raise MatrixError(404, Codes.NOT_FOUND, f"No state known at event {event_id}")
    state_ids = sorted(set((await hs.state_store.get_state_group(before)).values()))
    auth_chain = sorted(await hs.federation_event_store.get_auth_chain_ids(state_ids))
    return state_ids, auth_chain


class StateServlet:
    """GET /_matrix/federation/v1/state/{roomId}?event_id=: the state before the event (not
    including it) and the auth chain of that state, as PDUs."""

    PATTERNS = [federation_path(f"/state/{_ROOM}")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        origin = await _authenticate(self._hs, request)
        event_id = require_query_string(request, "event_id")
        await _check_room_access(self._hs, room_id, origin)
        state_ids, auth_chain = await _state_before(self._hs, event_id, room_id)
        return 200, {
            "pdus": await _pdus(self._hs, state_ids),
            "auth_chain": await _pdus(self._hs, auth_chain),
        }


class StateIdsServlet:
    """GET /_matrix/federation/v1/state_ids/{roomId}?event_id=: as /state, IDs only."""

    PATTERNS = [federation_path(f"/state_ids/{_ROOM}")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        origin = await _authenticate(self._hs, request)
        event_id = require_query_string(request, "event_id")
        await _check_room_access(self._hs, room_id, origin)
        state_ids, auth_chain = await _state_before(self._hs, event_id, room_id)
        return 200, {"pdu_ids": state_ids, "auth_chain_ids": auth_chain}


class EventAuthServlet:
    """GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}: the event's full auth chain."""

    PATTERNS = [federation_path(f"/event_auth/{_ROOM}/{_EVENT}")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str, event_id: str) -> tuple[int, Any]:
        origin = await _authenticate(self._hs, request)
        await _check_room_access(self._hs, room_id, origin)
        await _servable_event(self._hs, event_id, room_id)
        chain = await self._hs.federation_event_store.get_auth_chain_ids([event_id])
        return 200, {"auth_chain": await _pdus(self._hs, sorted(chain))}


class BackfillServlet:
    """GET /_matrix/federation/v1/backfill/{roomId}?v=...&limit=: the `v` events we hold, then
    those before them through prev_events (most recent first), `limit` in all (at most
    MAX_BACKFILL_LIMIT)."""

    PATTERNS = [federation_path(f"/backfill/{_ROOM}")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        origin = await _authenticate(self._hs, request)
        assert request.args is not None
        try:
            starts = [v.decode("utf-8") for v in request.args.get(b"v", [])]
        except UnicodeDecodeError:
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter 'v' is not UTF-8") from None
        if not starts:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing query parameter 'v'")
        limit = parse_int_query(request, "limit", min_value=0, max_value=MAX_BACKFILL_LIMIT)
        if limit is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing query parameter 'limit'")
        await _check_room_access(self._hs, room_id, origin)

        held = await self._hs.event_store.get_stored_events(starts)
        first = [
            eid for eid in dict.fromkeys(starts) if eid in held and held[eid].event.room_id == room_id
        ][:limit]
        earlier = await self._hs.federation_event_store.walk_back(
            room_id, starts, [], limit - len(first)
        )
        loaded = await self._hs.event_store.get_stored_events(first + earlier)
        servable = [
            loaded[eid]
            for eid in first + earlier
            if eid in loaded and loaded[eid].event.rejected_reason is None
        ]
        return 200, _transaction(self._hs, await pdus_for_server(self._hs, origin, servable))


class MissingEventsBody(RequestBody):
    """The spec requires both lists; an absent one is taken as empty, as Synapse does."""

    limit: int = DEFAULT_MISSING_EVENTS_LIMIT
    min_depth: int = 0
    earliest_events: list[str] = Field(default_factory=list)
    latest_events: list[str] = Field(default_factory=list)


class GetMissingEventsServlet:
    """POST /_matrix/federation/v1/get_missing_events/{roomId}: events before `latest_events`
    (breadth first through prev_events) that are not `earliest_events`, above `min_depth`,
    at most `limit`, oldest first."""

    PATTERNS = [federation_path(f"/get_missing_events/{_ROOM}")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        origin, raw = await federation_json_body_and_origin(self._hs, request)
        await _check_room_access(self._hs, room_id, origin)
        body = parse_body(raw, MissingEventsBody)
        limit = max(0, min(body.limit, MAX_MISSING_EVENTS_LIMIT))
        found = await self._hs.federation_event_store.walk_back(
            room_id, body.latest_events, body.earliest_events, limit, max(0, body.min_depth)
        )
        loaded = await self._hs.event_store.get_stored_events(found)
        events = sorted(
            (s for s in loaded.values() if s.event.rejected_reason is None),
            key=lambda s: (s.topological_ordering, s.stream_ordering),
        )
        return 200, {"events": await pdus_for_server(self._hs, origin, events)}


class TimestampToEventServlet:
    """GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir=: the closest event we
    hold (never asking further: the asking server does that), 404 M_NOT_FOUND for none."""

    PATTERNS = [federation_path(f"/timestamp_to_event/{_ROOM}")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        origin = await _authenticate(self._hs, request)
        ts, forwards = parse_timestamp_lookup(request)
        await _check_room_access(self._hs, room_id, origin)
        found = await self._hs.timestamp_lookup.local_closest(room_id, ts, forwards)
        if found is None:
            raise no_event_found(ts, forwards)
        return 200, found.to_json()
