"""The room's event closest to a time (spec v1.6: GET /rooms/{roomId}/timestamp_to_event, and
its federation twin GET /timestamp_to_event/{roomId}).

Locally, the room's timeline event sent closest to the time in the asked direction (the
admin API's query). When that answer may not be the closest because history next to it is
missing here (Synapse's heuristic: going forwards, the event or one of its prev_events is a
backward extremity; going backwards, nothing we hold cites it and it is not one of the
room's latest events), or when nothing was found, the room's other servers are asked in
turn; the first event one names is fetched from it and stored as backfilled history (so
`/context` and `/messages` can start from it), and answered if it is closer than the local
one. A server that cannot answer, or names an event that cannot be fetched or is on the
wrong side of the time, is passed over: the local answer (or 404) stands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from federation.client import build_path
from federation.errors import FederationError
from federation.event_handler import FederationEventHandler
from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import server_of
from homeserver.rooms.visibility import HistoryVisibility
from storage.stores.events import EventStore
from storage.stores.federation_events import FederationEventStore
from storage.stores.room_admin import RoomAdminStore
from storage.stores.rooms import RoomStore

logger = logging.getLogger(__name__)


def no_event_found(ts: int, forwards: bool) -> MatrixError:
    return MatrixError(
        404,
        Codes.NOT_FOUND,
        f"Unable to find event from {ts} in direction {'f' if forwards else 'b'}",
    )


@dataclass(frozen=True)
class ClosestEvent:
    event_id: str
    origin_server_ts: int

    def to_json(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "origin_server_ts": self.origin_server_ts}


@dataclass(frozen=True)
class RemoteTimestampLookup:
    """What asking other servers needs; absent when federation is disabled."""

    server_name: str
    client: Any  # FederationClient: its `get_json`
    events: FederationEventHandler
    rooms: RoomStore

    async def servers_to_ask(self, room_id: str) -> list[str]:
        """The room's other servers, those in it longest first: the spec's advice, since
        they are the likeliest to hold old history (Synapse orders them so too)."""
        ordered = dict.fromkeys(
            server_of(user_id) for user_id in await self.rooms.get_joined_members_by_age(room_id)
        )
        return [server for server in ordered if server not in (self.server_name, "")]


class TimestampLookup:
    def __init__(
        self,
        events: EventStore,
        fed_events: FederationEventStore,
        room_admin: RoomAdminStore,
        visibility: HistoryVisibility,
        remote: RemoteTimestampLookup | None = None,
    ) -> None:
        self._visibility = visibility
        self._events = events
        self._fed_events = fed_events
        self._room_admin = room_admin
        self._remote = remote

    async def local_closest(self, room_id: str, ts: int, forwards: bool) -> ClosestEvent | None:
        """The closest timeline event this server holds (what the federation endpoint
        answers: other servers ask for our history, not for what we could find)."""
        found = await self._room_admin.closest_event_to_ts(room_id, ts, forwards)
        return ClosestEvent(*found) if found is not None else None

    async def closest_for_user(
        self, user_id: str, room_id: str, ts: int, forwards: bool
    ) -> ClosestEvent:
        """`closest`, for a user who may read the room (joined, or it is world-readable, or
        they left it); 403 M_FORBIDDEN otherwise, unknown rooms included."""
        if await self._visibility.get_room_access(user_id, room_id) is None:
            raise MatrixError(403, Codes.FORBIDDEN, "You are not allowed to read this room")
        return await self.closest(room_id, ts, forwards)

    async def closest(self, room_id: str, ts: int, forwards: bool) -> ClosestEvent:
        """The closest event, asking other servers when ours may not be; 404 M_NOT_FOUND
        when there is none in that direction."""
        local = await self.local_closest(room_id, ts, forwards)
        if self._remote is not None and await self._may_be_beyond_a_gap(room_id, local, forwards):
            remote = await self._ask_remote(self._remote, room_id, ts, forwards)
            if remote is not None and (
                local is None
                or abs(remote.origin_server_ts - ts) < abs(local.origin_server_ts - ts)
            ):
                return remote
        if local is None:
            raise no_event_found(ts, forwards)
        return local

    async def _may_be_beyond_a_gap(
        self, room_id: str, local: ClosestEvent | None, forwards: bool
    ) -> bool:
        if local is None:
            return True
        if forwards:
            event = await self._events.get_event(local.event_id)
            prev_ids = event.prev_event_ids if event is not None else ()
            return await self._fed_events.is_next_to_backward_gap(room_id, local.event_id, prev_ids)
        return await self._fed_events.is_next_to_forward_gap(room_id, local.event_id)

    async def _ask_remote(
        self, remote: RemoteTimestampLookup, room_id: str, ts: int, forwards: bool
    ) -> ClosestEvent | None:
        args = {"ts": [str(ts)], "dir": ["f" if forwards else "b"]}
        path = build_path("/_matrix/federation/v1/timestamp_to_event/%s", room_id)
        for server in await remote.servers_to_ask(room_id):
            try:
                answer = await remote.client.get_json(server, path, args)
            except FederationError as e:
                logger.info("timestamp_to_event in %s: %s did not answer: %s", room_id, server, e)
                continue
            event_id = answer.get("event_id") if isinstance(answer, dict) else None
            if not isinstance(event_id, str):
                logger.info("timestamp_to_event in %s: bad answer from %s", room_id, server)
                continue
            found = await self._fetch_as_history(remote, server, room_id, event_id)
            # The event's own timestamp counts, not the one the server claimed for it.
            if found is not None and (
                found.origin_server_ts >= ts if forwards else found.origin_server_ts <= ts
            ):
                return found
        return None

    async def _fetch_as_history(
        self, remote: RemoteTimestampLookup, server: str, room_id: str, event_id: str
    ) -> ClosestEvent | None:
        """The event, fetched from `server` and stored as backfilled history unless we
        already hold it in the room's timeline; None if that cannot be done."""
        stored = await self._events.get_stored_event(event_id)
        if stored is None or stored.outlier:
            room_version = await self._events.get_room_version(room_id)
            if room_version is None:
                return None
            try:
                response = await remote.client.get_json(
                    server, build_path("/_matrix/federation/v1/event/%s", event_id)
                )
            except FederationError as e:
                logger.info("timestamp_to_event: cannot fetch %s from %s: %s", event_id, server, e)
                return None
            pdus = response.get("pdus") if isinstance(response, dict) else None
            if not isinstance(pdus, list):
                return None
            events = [
                e
                for e in await remote.events.check_pdus(list(pdus[:1]), room_version, room_id)
                if e.event_id == event_id
            ]
            await remote.events.process_backfilled(server, events)
            stored = await self._events.get_stored_event(event_id)
        if (
            stored is None
            or stored.outlier
            or stored.event.room_id != room_id
            or stored.event.rejected_reason is not None
        ):
            return None
        return ClosestEvent(event_id, stored.event.origin_server_ts)
