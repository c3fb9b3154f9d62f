"""Server-side search (POST /search, category `room_events`).

Which rooms: every room the user is or was in (joined, left, banned; not forgotten), as the
spec says ("including those that they have left"), narrowed by the filter's `rooms` and
`not_rooms` and, for a room group's `next_batch`, to that room. A room left is searched
only up to the event that removed the user (`HistoryVisibility.get_room_access`).

Which events: the full-text index (`storage.stores.search`) finds candidates matching every
word of the term in the requested keys, from the filter's senders, never from users the
searcher ignores. Each page is then read as /messages reads history: the rest of the filter
(types, `contains_url`), then `HistoryVisibility.filter_events_for_user`, in batches,
until the page is full or `MAX_SCANNED` candidates have been read (then the page may be
short, with a `next_batch` to carry on). Redacted events are not in the index.

Pagination: `order_by: recent` pages by stream position (newest first), `rank` by how many
candidates in rank order came before; each `next_batch` says which, and a room group's
carries its room (`homeserver.rooms.search_request.SearchBatch`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from homeserver.auth.tokens import Requester
from homeserver.events.serialize import EventSerializer
from homeserver.rooms.messages import MessagesHandler
from homeserver.rooms.search_request import (
    ROOM_EVENTS,
    SearchBatch,
    SearchRequest,
    highlight_words,
    parse_batch,
)
from homeserver.rooms.state import RoomStateHandler
from homeserver.rooms.visibility import HistoryVisibility
from storage.stores.events import EventStore, StoredEvent
from storage.stores.rooms import RoomStore
from storage.stores.search import RANK, SearchHit, SearchScope, SearchStore

# Candidates read for one page at most, whatever the filter and visibility hide: a page
# costs a bounded amount, and a short page comes with a `next_batch`.
MAX_SCANNED = 1000
MAX_BATCH = 200
# The memberships whose rooms are searched.
SEARCHED_MEMBERSHIPS = ("join", "leave", "ban")


@dataclass
class _Scan:
    """What a page's scan found, and where the next page starts."""

    results: list[tuple[SearchHit, StoredEvent]] = field(default_factory=list)
    # Stream position below which (recent), or rank rows after which (rank), to carry on.
    position: int = 0
    exhausted: bool = False
    # rank order: rows consumed per room, so a room group's next_batch knows its own offset.
    consumed_in_room: dict[str, int] = field(default_factory=dict)


class SearchHandler:
    def __init__(
        self,
        store: SearchStore,
        events: EventStore,
        rooms: RoomStore,
        visibility: HistoryVisibility,
        messages: MessagesHandler,
        room_state: RoomStateHandler,
        serializer: EventSerializer,
        ignored_by: Callable[[str], Awaitable[frozenset[str]]],
    ) -> None:
        self._store = store
        self._events = events
        self._rooms = rooms
        self._visibility = visibility
        self._messages = messages
        self._room_state = room_state
        self._serializer = serializer
        self._ignored_by = ignored_by

    async def search(
        self, requester: Requester, request: SearchRequest | None, next_batch: str | None
    ) -> dict[str, Any]:
        if request is None:
            return {"search_categories": {}}
        batch = parse_batch(next_batch, request.order_by) if next_batch is not None else None
        user_id = requester.user_id
        scope = await self._scope(user_id, request, batch)
        # The count reads the index on its own: on PostgreSQL it runs beside the scan, on
        # another connection of the pool.
        counting = defer.ensureDeferred(self._store.count(scope, request.words))
        try:
            scan = await self._scan(user_id, request, scope, batch)
        finally:
            count = await counting

        device = (user_id, requester.device_id)
        stored = [event for _, event in scan.results]
        serialized = await self._serializer.serialize(
            stored, requester_device=device, bundle_aggregations=True
        )
        results: list[dict[str, Any]] = []
        for (hit, event), body in zip(scan.results, serialized, strict=True):
            result: dict[str, Any] = {"rank": hit.rank, "result": body}
            if request.event_context is not None:
                result["context"] = await self._context(user_id, device, event, request)
            results.append(result)

        next_token: SearchBatch | None = None
        if not scan.exhausted:
            next_token = SearchBatch(
                request.order_by, scan.position, batch.room_id if batch is not None else None
            )
        response: dict[str, Any] = {
            "results": results,
            "count": count,
            "highlights": highlight_words(request.words, [hit.value for hit, _ in scan.results]),
        }
        if next_token is not None:
            response["next_batch"] = next_token.encode()
        groups = self._groups(request, scan, next_token, first_page=batch is None)
        if groups:
            response["groups"] = groups
        if request.include_state:
            response["state"] = await self._state(user_id, device, scan)
        return {"search_categories": {ROOM_EVENTS: response}}

    # ----- which rows ------------------------------------------------------------------

    async def _scope(
        self, user_id: str, request: SearchRequest, batch: SearchBatch | None
    ) -> SearchScope:
        event_filter = request.event_filter
        rooms: dict[str, int | None] = {}
        for member in await self._rooms.get_rooms_for_user(user_id, SEARCHED_MEMBERSHIPS):
            room_id = member.room_id
            if not event_filter.allows_room(room_id):
                continue
            if batch is not None and batch.room_id is not None and room_id != batch.room_id:
                continue
            if member.membership == "join":
                rooms[room_id] = None
                continue
            # Left or banned: up to their removal (none when the room is world-readable).
            access = await self._visibility.get_room_access(user_id, room_id)
            if access is not None:
                rooms[room_id] = access.max_stream
        ignored = await self._ignored_by(user_id)
        return SearchScope(
            rooms=rooms,
            keys=request.keys,
            senders=event_filter.senders,
            not_senders=event_filter.not_senders | ignored,
        )

    async def _scan(
        self,
        user_id: str,
        request: SearchRequest,
        scope: SearchScope,
        batch: SearchBatch | None,
    ) -> _Scan:
        limit = request.limit
        rank_order = request.order_by == RANK
        scan = _Scan(position=batch.position if batch is not None else 0)
        before_stream = batch.position if batch is not None and not rank_order else None
        offset = batch.position if batch is not None and rank_order else 0
        scanned = 0
        if limit == 0:
            scan.exhausted = True
            return scan
        while len(scan.results) < limit and scanned < MAX_SCANNED:
            wanted = limit - len(scan.results)
            # One more than needed the first time, so a last page is known to be the last;
            # larger batches once the filter or visibility has been seen to hide events.
            size = min(
                wanted + 1 if scanned == 0 else max(wanted + 1, 50),
                MAX_BATCH,
                MAX_SCANNED - scanned,
            )
            hits = await self._store.search(
                scope,
                request.words,
                request.order_by,
                size,
                before_stream=before_stream,
                offset=offset,
            )
            visible = await self._visible(user_id, request, hits)
            for hit in hits:
                if len(scan.results) == limit:
                    # The page filled up inside this batch: carry on after its last result.
                    return scan
                offset += 1
                before_stream = hit.stream_ordering
                scan.position = offset if rank_order else before_stream
                scan.consumed_in_room[hit.room_id] = scan.consumed_in_room.get(hit.room_id, 0) + 1
                if hit.event_id in visible:
                    scan.results.append((hit, visible[hit.event_id]))
            scanned += len(hits)
            if len(hits) < size:
                scan.exhausted = True
                return scan
        return scan

    async def _visible(
        self, user_id: str, request: SearchRequest, hits: list[SearchHit]
    ) -> dict[str, StoredEvent]:
        """Of the hits' events, those passing the rest of the filter that the user may see."""
        loaded = await self._events.get_stored_events([hit.event_id for hit in hits])
        candidates = [
            loaded[hit.event_id]
            for hit in hits
            if hit.event_id in loaded and request.event_filter.allows(loaded[hit.event_id])
        ]
        # An erased sender's events come back pruned to viewers who were not there: their
        # words matched, but the viewer may no longer read them, so they are not found.
        return {
            stored.event.event_id: stored
            for stored in await self._visibility.filter_events_for_user(user_id, candidates)
            if stored.event.content == loaded[stored.event.event_id].event.content
        }

    # ----- what comes with the results ---------------------------------------------------

    async def _context(
        self,
        user_id: str,
        device: tuple[str, str],
        stored: StoredEvent,
        request: SearchRequest,
    ) -> dict[str, Any]:
        assert request.event_context is not None
        wanted = request.event_context
        around = await self._messages.events_around(
            user_id, stored, wanted.before_limit, wanted.after_limit
        )
        serialize = self._serializer.serialize
        context: dict[str, Any] = {
            "events_before": await serialize(
                around.before, requester_device=device, bundle_aggregations=True
            ),
            "events_after": await serialize(
                around.after, requester_device=device, bundle_aggregations=True
            ),
            "start": around.start,
            "end": around.end,
        }
        if wanted.include_profile:
            # Each sender's profile as their membership event had it when they sent their
            # first event of those returned: the "historic" profile.
            members = await self._messages.sender_members(
                [*reversed(around.before), stored, *around.after]
            )
            profiles: dict[str, dict[str, Any]] = {}
            for member in members:
                content = member.event.content
                profile: dict[str, Any] = {}
                for key in ("displayname", "avatar_url"):
                    if isinstance(content.get(key), str):
                        profile[key] = content[key]
                assert member.event.state_key is not None
                profiles[member.event.state_key] = profile
            context["profile_info"] = profiles
        return context

    def _groups(
        self,
        request: SearchRequest,
        scan: _Scan,
        next_token: SearchBatch | None,
        first_page: bool,
    ) -> dict[str, Any]:
        groups: dict[str, dict[str, dict[str, Any]]] = {}
        for key in request.group_by:
            by_value: dict[str, dict[str, Any]] = {}
            for hit, stored in scan.results:
                value = hit.room_id if key == "room_id" else stored.event.sender
                group = by_value.setdefault(value, {"results": [], "order": len(by_value) + 1})
                group["results"].append(hit.event_id)
            if key == "room_id" and next_token is not None:
                for room_id, group in by_value.items():
                    position = next_token.position
                    if request.order_by == RANK and next_token.room_id is None:
                        # Within one room, only that room's rows count towards the offset.
                        if not first_page:
                            # Earlier pages' rows per room are not known: no token.
                            continue
                        position = scan.consumed_in_room.get(room_id, 0)
                    group["next_batch"] = SearchBatch(request.order_by, position, room_id).encode()
            groups[key] = by_value
        return groups

    async def _state(
        self, user_id: str, device: tuple[str, str], scan: _Scan
    ) -> dict[str, list[dict[str, Any]]]:
        """Each result room's state as the user may see it: current while joined, as it
        was when they left otherwise."""
        state: dict[str, list[dict[str, Any]]] = {}
        for room_id in dict.fromkeys(hit.room_id for hit, _ in scan.results):
            events = await self._room_state.get_state(user_id, room_id)
            state[room_id] = await self._serializer.serialize(events, requester_device=device)
        return state
