"""Room history visibility: which events of a room a user may read.

Two questions, two entry points:

- `HistoryVisibility.get_room_access(user_id, room_id)`: may the user read the room at all?
  Joined users may; users who left (or were banned) may read up to the event that removed
  them; anyone may read a room whose history is currently `world_readable`. Everyone else
  (never joined, invited, knocking, or forgot the room) may not.
- `HistoryVisibility.filter_events_for_user(user_id, events)`: of these events, which may
  the user see? Decided per event from the state *at that event* (spec module "Room History
  Visibility", "Server behaviour"):

  1. `history_visibility` was `world_readable`: allow;
  2. the user's membership was `join`: allow;
  3. `shared`, and the user joined the room at any point after the event: allow;
  4. `invited`, and the user's membership was `invite`: allow;
  5. otherwise deny.

  For `m.room.history_visibility` events the visibility before *or* after the event counts;
  for the user's own `m.room.member` events their membership before *or* after counts.

`HistoryVisibility.filter_relations_for_user(user_id, rows)` answers the second question
for relation rows (a thread's replies, counted for its summary) without reading the events
this server made after the user's current join.

Erasure: a user who deactivated with `erase` had their events "served redacted to users
who join the room after" (spec: `POST /account/deactivate`). `filter_events_for_user`
returns such events pruned (the redaction algorithm) to every viewer whose membership was
not `join` at the event; those who were joined still see them whole.

Every read path that hands room events to a client (/messages, /context, /event, /sync,
/search) runs them through `filter_events_for_user`. It reads only two state keys per state
group (the history visibility and the user's membership), batched over all events, through
`StateStore.get_state_for_groups`, which caches them: state groups never change.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from homeserver.events.model import Event
from homeserver.events.redaction import prune_event_dict
from homeserver.events.serialize import ERASED_VIEW
from homeserver.events.types import HISTORY_VISIBILITY, MEMBER
from storage.stores.accounts import AccountStore
from storage.stores.events import EventStore, StoredEvent
from storage.stores.relations import RelationRow
from storage.stores.rooms import RoomStore
from storage.stores.state import StateKey, StateStore

WORLD_READABLE = "world_readable"
SHARED = "shared"
INVITED = "invited"
JOINED = "joined"
VISIBILITIES = (WORLD_READABLE, SHARED, INVITED, JOINED)

# How far back through a user's membership changes in one room we look for their last join.
MAX_MEMBERSHIP_WALK = 100

Position = tuple[int, int]  # (topological, stream): an event's place in the room's history


def visibility_from_content(content: Mapping[str, object] | None) -> str:
    """The effective visibility: absent or not understood means `shared` (spec)."""
    value = content.get("history_visibility") if content is not None else None
    return value if isinstance(value, str) and value in VISIBILITIES else SHARED


def is_allowed(visibility: str, membership: str | None, joined_later: bool) -> bool:
    """Rules 1-5 above for one (visibility, membership) at an event."""
    if visibility == WORLD_READABLE or membership == "join":
        return True
    if visibility == SHARED:
        return joined_later
    if visibility == INVITED:
        return membership == "invite"
    return False


@dataclass(frozen=True)
class RoomAccess:
    """What `get_room_access` found: the user may read the room, possibly only up to a point."""

    room_id: str
    # The user's current membership (None: never had one, or the room was forgotten).
    membership: str | None
    # The event that removed the user (leave, kick or ban) as (topological, stream): nothing
    # after it is readable. None when there is no such limit.
    until: Position | None = None
    # The admin API's reads: history visibility does not apply.
    see_everything: bool = False

    @property
    def max_stream(self) -> int | None:
        return self.until[1] if self.until is not None else None


class HistoryVisibility:
    def __init__(
        self,
        server_name: str,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        accounts: AccountStore,
    ) -> None:
        self._server_name = server_name
        self._events = events
        self._state = state
        self._rooms = rooms
        self._accounts = accounts

    # ----- the room as a whole -------------------------------------------------------------

    async def current_visibility(self, room_id: str) -> str:
        event_id = await self._state.get_current_state_event_id(room_id, HISTORY_VISIBILITY, "")
        event = await self._events.get_event(event_id) if event_id is not None else None
        return visibility_from_content(event.content if event is not None else None)

    async def is_world_readable(self, room_id: str) -> bool:
        """Whether anyone may read the room now (its current history visibility)."""
        return await self.current_visibility(room_id) == WORLD_READABLE

    async def get_room_access(self, user_id: str, room_id: str) -> RoomAccess | None:
        """Whether `user_id` may read `room_id` at all (None: no, or no such room)."""
        if await self._events.get_room_version(room_id) is None:
            return None
        if user_id in await self._state.get_current_members(room_id, "join"):
            # The state store's member lists (in memory once read, kept in step after each
            # commit) answer for joined users, nearly every reader, without a transaction.
            return RoomAccess(room_id, "join")
        member = await self._rooms.get_membership(room_id, user_id)
        if member is not None and member.membership == "join":
            return RoomAccess(room_id, "join")
        membership = member.membership if member is not None and not member.forgotten else None
        world_readable = await self.is_world_readable(room_id)
        if member is not None and membership in ("leave", "ban") and not world_readable:
            # "After a user has left a room, they may see any events which they were allowed
            # to see before they left the room, but no events received after they left."
            removal = await self._events.get_stored_event(member.event_id)
            if removal is None:
                return None
            return RoomAccess(
                room_id, membership, (removal.topological_ordering, removal.stream_ordering)
            )
        if membership in ("leave", "ban") or world_readable:
            # A world-readable room: per-event visibility decides, with no cut-off, so events
            # sent after the user left while the room was world-readable stay readable.
            return RoomAccess(room_id, membership)
        return None

    # ----- single events ---------------------------------------------------------------------

    async def filter_events_for_user(
        self, user_id: str, events: Sequence[StoredEvent]
    ) -> list[StoredEvent]:
        """The events `user_id` may see, in the order given, pruned where their sender is
        erased and the user was not joined when they were sent. Outliers and rejected
        events (never part of a timeline) are always dropped. Events may come from several
        rooms."""
        candidates = [
            e for e in events if not e.outlier and e.event.rejected_reason is None
        ]
        if not candidates:
            return []
        groups = await self._events.get_state_groups_for_events(
            [e.event.event_id for e in candidates]
        )
        keys: list[StateKey] = [(HISTORY_VISIBILITY, ""), (MEMBER, user_id)]
        befores = {
            groups[e.event.event_id][0]
            for e in candidates
            if e.event.event_id in groups and groups[e.event.event_id][0] is not None
        }
        state = await self._state.get_state_for_groups(
            [g for g in befores if g is not None], keys
        )
        state_events = await self._events.get_events(
            {event_id for group_state in state.values() for event_id in group_state.values()}
        )

        def at(group: int | None, key: StateKey) -> Mapping[str, object] | None:
            if group is None:
                return None
            event_id = state.get(group, {}).get(key)
            event = state_events.get(event_id) if event_id is not None else None
            return event.content if event is not None else None

        def at_group(group: int | None) -> tuple[str, str | None]:
            """(visibility, the user's membership) in a state group."""
            member_content = at(group, keys[1])
            membership = member_content.get("membership") if member_content else None
            return (
                visibility_from_content(at(group, keys[0])),
                membership if isinstance(membership, str) else None,
            )

        # Most events share their state group with many others (only state changes make
        # new ones): read each group's two values once.
        by_group: dict[int | None, tuple[str, str | None]] = {}
        last_join: dict[str, Position | None] = {}
        currently_joined: dict[str, bool] = {}
        visible: list[StoredEvent] = []
        # Visible events whose viewer was not joined when they were sent, by event ID.
        not_joined_at: set[str] = set()
        for stored in candidates:
            event = stored.event
            before = groups.get(event.event_id, (None, None))[0]
            if before not in by_group:
                by_group[before] = at_group(before)
            visibility, membership = by_group[before]
            visibilities = [visibility]
            if event.type == HISTORY_VISIBILITY and event.state_key == "":
                visibilities.append(visibility_from_content(event.content))
            memberships = [membership]
            if event.type == MEMBER and event.state_key == user_id:
                memberships.append(event.membership)

            joined_later = False
            if SHARED in visibilities and "join" not in memberships:
                room_id = event.room_id
                if room_id not in currently_joined:
                    # The member list in memory answers for a joined viewer (most of them).
                    currently_joined[room_id] = user_id in await self._state.get_current_members(
                        room_id, "join"
                    )
                    if not currently_joined[room_id]:
                        member = await self._rooms.get_membership(room_id, user_id)
                        if member is not None and member.membership == "join":
                            currently_joined[room_id] = True
                        elif member is not None:
                            last_join[room_id] = await self._last_join(user_id, member.event_id)
                join_at = last_join.get(room_id)
                joined_later = currently_joined[room_id] or (
                    join_at is not None
                    and (stored.topological_ordering, stored.stream_ordering) < join_at
                )
            if any(
                is_allowed(v, m, joined_later)
                for v, m in itertools.product(visibilities, memberships)
            ):
                visible.append(stored)
                if "join" not in memberships:
                    not_joined_at.add(event.event_id)
        return await self._prune_erased(user_id, visible, not_joined_at)

    async def _prune_erased(
        self, user_id: str, visible: list[StoredEvent], not_joined_at: set[str]
    ) -> list[StoredEvent]:
        """`visible`, with the events in `not_joined_at` sent by erased local users (other
        than the viewer) replaced by their redacted form."""
        senders = {
            stored.event.sender
            for stored in visible
            if stored.event.event_id in not_joined_at
            and stored.event.sender != user_id
            and stored.event.sender.partition(":")[2] == self._server_name
        }
        erased = await self._accounts.erased_users(senders)
        if not erased:
            return visible
        return [
            _pruned(stored)
            if stored.event.sender in erased and stored.event.event_id in not_joined_at
            else stored
            for stored in visible
        ]

    async def filter_relations_for_user(
        self, user_id: str, rows: Sequence[RelationRow]
    ) -> list[RelationRow]:
        """The relation rows whose events `user_id` may see, in the order given (a thread's
        summary counts every reply the viewer may see: threads can be long).

        Events this server created after the user's current membership became `join` are
        visible without reading them: each was built on the room's current state, which
        held that join (as for `homeserver/sync/handler.py`'s shared sections). The rest
        (events from other servers, whose state may differ, and older ones) are checked
        one by one."""
        joined_since: dict[str, int | None] = {}
        for room_id in {row.room_id for row in rows}:
            member = await self._rooms.get_membership(room_id, user_id)
            joined = member is not None and member.membership == "join"
            joined_since[room_id] = member.changed_at if member is not None and joined else None

        def surely_visible(row: RelationRow) -> bool:
            since = joined_since[row.room_id]
            return (
                since is not None
                and row.stream_ordering > since
                and row.sender.partition(":")[2] == self._server_name
            )

        to_check = [row.event_id for row in rows if not surely_visible(row)]
        visible_ids: set[str] = set()
        if to_check:
            loaded = await self._events.get_stored_events(to_check)
            visible = await self.filter_events_for_user(user_id, list(loaded.values()))
            visible_ids = {stored.event.event_id for stored in visible}
        return [row for row in rows if surely_visible(row) or row.event_id in visible_ids]

    async def _last_join(self, user_id: str, member_event_id: str) -> Position | None:
        """Where the user last joined: walk back from their current membership event through
        the membership events it replaced, to the newest `join`."""
        event_id: str | None = member_event_id
        key: StateKey = (MEMBER, user_id)
        for _ in range(MAX_MEMBERSHIP_WALK):
            if event_id is None:
                return None
            stored = await self._events.get_stored_event(event_id)
            if stored is None:
                return None
            if stored.event.membership == "join":
                return (stored.topological_ordering, stored.stream_ordering)
            before = (await self._events.get_state_groups_for_events([event_id])).get(
                event_id, (None, None)
            )[0]
            if before is None:
                return None
            event_id = (await self._state.get_state_for_groups([before], [key]))[before].get(key)
        return None



def _pruned(stored: StoredEvent) -> StoredEvent:
    """The event as redaction leaves it (content pruned to what the algorithm keeps), for
    a viewer who may not see what an erased user wrote."""
    event = stored.event
    pruned = Event(
        prune_event_dict(event.pdu, event.room_version),
        event.room_version,
        event_id=event.event_id,
        rejected_reason=event.rejected_reason,
    )
    return StoredEvent(
        pruned,
        stored.stream_ordering,
        stored.topological_ordering,
        # Marked, so that what is kept of the event's serialized form for viewers who see
        # it whole is never handed to this viewer (homeserver/events/serialize.py).
        {**stored.internal_metadata, ERASED_VIEW: True},
        stored.outlier,
    )
