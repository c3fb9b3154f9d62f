"""Reading room history: /messages pagination, /context around an event, and single events.

Positions in history are `RoomPosition` tokens (`t{topological}-{stream}`, see
`homeserver.sync.tokens`): a token names the gap *just after* the event at that position.
Paginating backwards from a token returns that event first; forwards, the event after it.
So a backwards page that stopped at event E continues from "just before E", written as
`t{E.topological}-{E.stream - 1}`, and a forwards page that stopped at E from `t{E...}-{E...}`.
A sync token (`s...`, a /sync `next_batch`) is accepted too and means "just after the last
event of the room that sync had delivered at that stream position".

Every event returned has passed the filter and `HistoryVisibility.filter_events_for_user`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.events.serialize import EventSerializer
from homeserver.events.types import MEMBER
from homeserver.filtering import RoomEventFilter
from homeserver.rooms.visibility import HistoryVisibility, Position, RoomAccess
from homeserver.sync.tokens import MAX_POSITION, RoomPosition
from storage.stores.events import EventStore, StoredEvent
from storage.stores.state import StateKey, StateStore

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
# With a filter or history visibility hiding most events, one request reads at most this
# many events before answering with what it found (and an `end` token to carry on from), so a
# request costs a bounded amount whatever the room holds. An empty `chunk` with an `end` is
# allowed by the spec ("Clients should continue to paginate until no `end` property").
MAX_SCANNED_EVENTS = 2000
MAX_BATCH = 500
# Before any history: forwards from here starts at the room's first event. Depths start at 0
# (federation accepts a room whose create event has depth 0) and backfilled events have
# negative stream positions, so the stream part is the lowest a token can carry.
START_OF_ROOM: Position = (0, -MAX_POSITION)


@dataclass(frozen=True)
class EventsAround:
    """The visible events either side of one event, newest first before it, oldest first
    after it, and the tokens to paginate on from each end."""

    before: list[StoredEvent]
    after: list[StoredEvent]
    start: str
    end: str


@dataclass
class _Page:
    events: list[StoredEvent]
    # Where a further request in the same direction carries on.
    next_position: Position
    # True when nothing further exists in that direction (within `to` and the user's limit).
    exhausted: bool
    # The room's gaps in history, as the depth of the deepest event citing each (read with
    # the first batch when asked for); None when not read.
    gaps: list[int] | None = None


def _position_of(stored: StoredEvent) -> Position:
    return (stored.topological_ordering, stored.stream_ordering)


# (room_id, lowest, highest) -> whether anything new was stored; see `MessagesHandler.backfill`.
Backfill = Callable[[str, int | None, int], Awaitable[bool]]


def _continue_after(stored: StoredEvent, direction: str) -> Position:
    """The position from which a page in `direction` continues past `stored`."""
    if direction == "b":
        return (stored.topological_ordering, stored.stream_ordering - 1)
    return _position_of(stored)


def _gap_between(gaps: list[int] | None, lowest: int | None, highest: int) -> bool:
    """Whether backfill may find anything for a page between depths `lowest` (None: no
    bound) and `highest`: it fetches only before the gaps cited from that range (None:
    the gaps were not read, so perhaps)."""
    if gaps is None:
        return True
    return any((lowest is None or depth >= lowest) and depth <= highest for depth in gaps)


def _token(position: Position) -> str:
    return str(RoomPosition(position[0], position[1]))


class MessagesHandler:
    def __init__(
        self,
        events: EventStore,
        state: StateStore,
        visibility: HistoryVisibility,
        serializer: EventSerializer,
        backfill: Backfill | None = None,
        ignored_by: Callable[[str], Awaitable[frozenset[str]]] | None = None,
    ) -> None:
        self._events = events
        # user_id -> whom they ignore: those users' events other than state are left out
        # of pages (`/messages`, `/context`), as sync leaves them out of timelines. The spec
        # says so of sync only; Synapse leaves them out of every page too, and a client
        # that asked not to see someone should not meet them again by scrolling back.
        self._ignored_by = ignored_by
        self._state = state
        self._visibility = visibility
        self._serializer = serializer
        # Federation: fetch from other servers the history missing before the room's events
        # of depth `lowest` (None: any) to `highest`; True if any came (`Backfill`).
        self.backfill = backfill

    # ----- GET /rooms/{roomId}/messages --------------------------------------------------

    async def get_messages(
        self,
        requester: Requester,
        room_id: str,
        direction: str,
        from_token: str | None,
        to_token: str | None,
        limit: int,
        event_filter: RoomEventFilter,
        as_admin: bool = False,
    ) -> dict[str, Any]:
        """One page of history. 403 M_FORBIDDEN if the user may not read the room;
        400 M_INVALID_PARAM for malformed tokens. `as_admin` (the admin API, whose caller
        has checked the room exists): every timeline event of the room, whatever the
        requester's membership and the history visibility."""
        # Parse tokens before the access check: a malformed request is a 400 either way.
        from_parsed = RoomPosition.parse(from_token) if from_token is not None else None
        to_parsed = RoomPosition.parse(to_token) if to_token is not None else None
        if as_admin:
            access = RoomAccess(room_id, None, see_everything=True)
        else:
            access = await self._require_access(requester.user_id, room_id)

        if from_parsed is not None:
            from_position = await self._resolve(room_id, from_parsed)
        elif direction == "b":
            from_position = await self._latest_position(room_id, access)
        else:
            from_position = START_OF_ROOM
        to_position = await self._resolve(room_id, to_parsed) if to_parsed is not None else None
        start = from_token if from_token is not None else _token(from_position)

        if limit == 0:
            return {"chunk": [], "start": start, "end": _token(from_position)}
        may_backfill = direction == "b" and self.backfill is not None
        page = await self._paginate(
            requester.user_id, access, from_position, direction, limit, event_filter,
            to_position, with_gaps=may_backfill,
        )
        lowest = None if page.exhausted else page.next_position[0]
        if (
            self.backfill is not None
            and may_backfill
            and _gap_between(page.gaps, lowest, from_position[0])
            and await self.backfill(room_id, lowest, from_position[0])
        ):
            # History ran out here, or the page crossed a gap (events whose prev_events we
            # never received: a federation outage longer than catch-up fetched), but other
            # servers hold more: what they sent was stored, so read again.
            page = await self._paginate(
                requester.user_id, access, from_position, direction, limit, event_filter,
                to_position,
            )
        device = (requester.user_id, requester.device_id)
        response: dict[str, Any] = {
            "chunk": await self._serializer.serialize(
                page.events, requester_device=device, bundle_aggregations=True
            ),
            "start": start,
        }
        # Backwards, `end` goes once the start of the (visible) history is reached. Forwards,
        # the end of history moves as events arrive, so a page with events always carries
        # an `end` to resume from later; only an empty, exhausted page has none.
        if not page.exhausted or (direction == "f" and page.events):
            response["end"] = _token(page.next_position)
        if event_filter.lazy_load_members:
            # Redundant members are always sent: the spec allows it, and remembering what each
            # device has seen is not worth its cost here.
            members = await self.sender_members(page.events)
            response["state"] = await self._serializer.serialize(members, requester_device=device)
        return response

    # ----- GET /rooms/{roomId}/context/{eventId} -------------------------------------------

    async def get_context(
        self,
        requester: Requester,
        room_id: str,
        event_id: str,
        limit: int,
        event_filter: RoomEventFilter,
        as_admin: bool = False,
    ) -> dict[str, Any]:
        """The event, up to `limit` events around it (half before, half after), and the state
        after the last of them. 403 if the room is not readable, 404 if the event is not
        there or not visible. The filter applies to everything but the event itself.
        `as_admin`: as in `get_messages`, the room's whole timeline is visible."""
        if as_admin:
            access = RoomAccess(room_id, None, see_everything=True)
            stored = await self._timeline_event(room_id, event_id)
        else:
            access = await self._require_access(requester.user_id, room_id)
            stored = await self._readable_event(requester.user_id, room_id, event_id)
        before_limit = limit // 2
        before, after = await self._around(
            requester.user_id, access, stored, before_limit, limit - before_limit, event_filter
        )
        last = after.events[-1] if after.events else stored
        state = await self.state_after(last)
        state = [s for s in state if event_filter.allows(s)]
        if event_filter.lazy_load_members:
            senders = {e.event.sender for e in (*before.events, stored, *after.events)}
            state = [
                s for s in state if s.event.type != MEMBER or s.event.state_key in senders
            ]
        device = (requester.user_id, requester.device_id)
        serialize = self._serializer.serialize
        return {
            "event": (
                await serialize([stored], requester_device=device, bundle_aggregations=True)
            )[0],
            "events_before": await serialize(
                before.events, requester_device=device, bundle_aggregations=True
            ),
            "events_after": await serialize(
                after.events, requester_device=device, bundle_aggregations=True
            ),
            "start": _token(before.next_position),
            "end": _token(after.next_position),
            "state": await serialize(state, requester_device=device),
        }

    async def events_around(
        self, user_id: str, stored: StoredEvent, before_limit: int, after_limit: int
    ) -> EventsAround:
        """Up to `before_limit` events before `stored` and `after_limit` after it that
        `user_id` may see (search results' `context`), with the tokens bounding them. The
        caller has checked that `stored` itself is visible."""
        access = await self._require_access(user_id, stored.event.room_id)
        before, after = await self._around(
            user_id, access, stored, before_limit, after_limit, RoomEventFilter()
        )
        return EventsAround(
            before.events, after.events, _token(before.next_position),
            _token(after.next_position),
        )

    async def _around(
        self,
        user_id: str,
        access: RoomAccess,
        stored: StoredEvent,
        before_limit: int,
        after_limit: int,
        event_filter: RoomEventFilter,
    ) -> tuple[_Page, _Page]:
        before = await self._paginate(
            user_id, access, _continue_after(stored, "b"), "b", before_limit, event_filter
        )
        after = await self._paginate(
            user_id, access, _position_of(stored), "f", after_limit, event_filter
        )
        return before, after

    # ----- GET /rooms/{roomId}/event/{eventId} ---------------------------------------------

    async def get_event(self, requester: Requester, room_id: str, event_id: str) -> dict[str, Any]:
        """One event; 404 M_NOT_FOUND if it does not exist or the user may not see it (the
        spec gives one answer for both, so nothing leaks about rooms the user cannot read)."""
        if await self._visibility.get_room_access(requester.user_id, room_id) is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Event not found")
        stored = await self._readable_event(requester.user_id, room_id, event_id)
        serialized = await self._serializer.serialize(
            [stored],
            requester_device=(requester.user_id, requester.device_id),
            bundle_aggregations=True,
        )
        return serialized[0]

    async def get_event_by_id(self, requester: Requester, event_id: str) -> dict[str, Any]:
        """One event, whatever its room (the deprecated GET /events/{eventId}); the same
        404 as `get_event` when it is unknown or not visible."""
        stored = await self._events.get_stored_event(event_id)
        if stored is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Event not found")
        return await self.get_event(requester, stored.event.room_id, event_id)

    # ----- the parts ---------------------------------------------------------------------

    async def _require_access(self, user_id: str, room_id: str) -> RoomAccess:
        access = await self._visibility.get_room_access(user_id, room_id)
        if access is None:
            # The same answer for rooms that do not exist, so their existence does not leak.
            raise MatrixError(403, Codes.FORBIDDEN, "You are not allowed to read this room")
        return access

    async def _readable_event(self, user_id: str, room_id: str, event_id: str) -> StoredEvent:
        return await readable_event(self._events, self._visibility, user_id, room_id, event_id)

    async def _timeline_event(self, room_id: str, event_id: str) -> StoredEvent:
        """The event if it is in the room's timeline (not an outlier), whoever asks."""
        stored = await self._events.get_stored_event(event_id)
        if stored is None or stored.event.room_id != room_id or stored.outlier:
            raise MatrixError(404, Codes.NOT_FOUND, "Event not found")
        return stored

    async def _resolve(self, room_id: str, position: RoomPosition) -> Position:
        return await resolve_position(self._events, room_id, position)

    async def _latest_position(self, room_id: str, access: RoomAccess) -> Position:
        if access.until is not None:
            return access.until
        found = await self._events.get_room_position_at_stream(room_id)
        return found if found is not None else START_OF_ROOM

    async def _paginate(
        self,
        user_id: str,
        access: RoomAccess,
        from_position: Position,
        direction: str,
        limit: int,
        event_filter: RoomEventFilter,
        to_position: Position | None = None,
        with_gaps: bool = False,
    ) -> _Page:
        """Up to `limit` events from `from_position` that pass the filter and are visible to
        the user, reading in batches; never past the user's cut-off (`access.until`). With
        `with_gaps`, the room's gaps in history are read with the first batch."""
        gaps: list[int] | None = None
        found: list[StoredEvent] = []
        position = from_position
        scanned = 0
        exhausted = False
        ignored = await self._ignored_by(user_id) if self._ignored_by is not None else frozenset()
        while len(found) < limit and scanned < MAX_SCANNED_EVENTS:
            wanted = limit - len(found)
            # One more than needed the first time, so a last page is known to be the last;
            # larger batches once the filter or visibility has been seen to hide events.
            batch_size = min(
                wanted + 1 if scanned == 0 else max(wanted + 1, 100),
                MAX_BATCH,
                MAX_SCANNED_EVENTS - scanned,
            )
            if with_gaps and gaps is None:
                batch, gaps = await self._events.paginate_room_events_and_gaps(
                    access.room_id,
                    position,
                    direction,
                    batch_size,
                    to_key=to_position,
                    max_stream=access.max_stream,
                )
            else:
                batch = await self._events.paginate_room_events(
                    access.room_id,
                    position,
                    direction,
                    batch_size,
                    to_key=to_position,
                    max_stream=access.max_stream,
                )
            scanned += len(batch)
            if batch:
                position = _continue_after(batch[-1], direction)
            passing = await self._apply_filter(batch, event_filter)
            if access.see_everything:
                found.extend(
                    e for e in passing if not e.outlier and e.event.rejected_reason is None
                )
            else:
                if ignored:
                    passing = [
                        e for e in passing if e.event.is_state or e.event.sender not in ignored
                    ]
                found.extend(await self._visibility.filter_events_for_user(user_id, passing))
            if len(batch) < batch_size:
                exhausted = True
                break
        if len(found) > limit:
            # The batch went past the last event returned: carry on just after that one.
            found = found[:limit]
            position = _continue_after(found[-1], direction)
            exhausted = False
        return _Page(found, position, exhausted, gaps)

    async def _apply_filter(
        self, events: list[StoredEvent], event_filter: RoomEventFilter
    ) -> list[StoredEvent]:
        if event_filter.contains_url is None:
            return event_filter.filter_events(events)
        # `contains_url` looks at content as served: a redacted event has lost its `url`.
        redacted = await self._events.get_redactions([e.event.event_id for e in events])
        return [
            e
            for e in events
            if event_filter.matches(
                e.event.type,
                e.event.sender,
                e.event.room_id,
                {} if e.event.event_id in redacted else e.event.content,
            )
        ]

    async def sender_members(self, events: list[StoredEvent]) -> list[StoredEvent]:
        """Lazy loading: each sender's membership event, as of the first event (in history
        order) they sent in `events`."""
        first_by_sender: dict[str, StoredEvent] = {}
        for stored in sorted(events, key=_position_of):
            first_by_sender.setdefault(stored.event.sender, stored)
        if not first_by_sender:
            return []
        groups = await self._events.get_state_groups_for_events(
            [s.event.event_id for s in first_by_sender.values()]
        )

        def group_of(stored: StoredEvent) -> int | None:
            before, after = groups.get(stored.event.event_id, (None, None))
            return after if after is not None else before

        keys: list[StateKey] = [(MEMBER, sender) for sender in first_by_sender]
        state = await self._state.get_state_for_groups(
            {g for g in map(group_of, first_by_sender.values()) if g is not None}, keys
        )
        member_ids: list[str] = []
        for sender, stored in first_by_sender.items():
            group = group_of(stored)
            member_id = state.get(group, {}).get((MEMBER, sender)) if group is not None else None
            if member_id is not None:
                member_ids.append(member_id)
        loaded = await self._events.get_stored_events(member_ids)
        return [loaded[eid] for eid in dict.fromkeys(member_ids) if eid in loaded]

    async def state_after(self, stored: StoredEvent) -> list[StoredEvent]:
        """The room's state after `stored`, in stream order."""
        groups = await self._events.get_state_groups_for_events([stored.event.event_id])
        before, after = groups.get(stored.event.event_id, (None, None))
        group = after if after is not None else before
        if group is None:
            return []
        state_ids = await self._state.get_state_group(group)
        loaded = await self._events.get_stored_events(state_ids.values())
        return _in_order(loaded[eid] for eid in state_ids.values() if eid in loaded)


def _in_order(events: Iterable[StoredEvent]) -> list[StoredEvent]:
    return sorted(events, key=_position_of)


async def readable_event(
    events: EventStore, visibility: HistoryVisibility, user_id: str, room_id: str, event_id: str
) -> StoredEvent:
    """The event, if it is in `room_id` and `user_id` may see it; 404 otherwise (the same
    answer either way, so that an event's existence does not leak)."""
    stored = await events.get_stored_event(event_id)
    # As the viewer may see it (redacted if its sender is erased and they were not there).
    visible = (
        await visibility.filter_events_for_user(user_id, [stored])
        if stored is not None and stored.event.room_id == room_id
        else []
    )
    if not visible:
        raise MatrixError(404, Codes.NOT_FOUND, "Event not found")
    return visible[0]


async def resolve_position(events: EventStore, room_id: str, position: RoomPosition) -> Position:
    """A token as a history position; a sync token becomes the position of the room's last
    event at or before its stream position."""
    if position.topological is not None:
        return (position.topological, position.stream)
    found = await events.get_room_position_at_stream(room_id, position.stream)
    return found if found is not None else START_OF_ROOM
