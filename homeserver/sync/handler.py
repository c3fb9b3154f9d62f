"""Computing /sync responses: initial, incremental and long-polling.

Incremental sync asks the in-memory change indexes which of the user's rooms changed since
the token (`StreamChangeCache`), so its cost follows what changed, not how many rooms the
user is in. Only when a token is older than what the indexes remember does it fall back to
the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.events.serialize import EventSerializer
from homeserver.sync.change_cache import StreamChangeCache
from homeserver.sync.notifier import Notifier
from homeserver.sync.tokens import RoomPosition, StreamToken
from storage.stores.events import EventStore, StoredEvent
from storage.stores.rooms import Membership, RoomStore
from storage.stores.state import StateStore
from storage.stream_ids import StreamIdGenerator

logger = logging.getLogger(__name__)

# State shared with invitees and knockers (spec: "Stripped state"); Synapse's set.
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.name",
    "m.room.encryption",
    "m.room.topic",
)
MAX_HEROES = 5
MEMBERSHIP_CACHE_SIZE = 50_000


@dataclass
class SyncConfig:
    """What the client asked for (from its filter)."""

    timeline_limit: int = 10
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    include_leave: bool = False
    # Room IDs to sync (None: all).
    rooms: Collection[str] | None = None
    not_rooms: Collection[str] = ()
    timeline_filter: Callable[[Event], bool] = lambda event: True
    state_filter: Callable[[Event], bool] = lambda event: True


@dataclass
class SyncRequest:
    user_id: str
    device_id: str
    since: StreamToken | None
    full_state: bool
    config: SyncConfig = field(default_factory=SyncConfig)


@dataclass
class _RoomTimeline:
    events: list[StoredEvent]
    limited: bool
    prev_batch: str


class SyncHandler:
    def __init__(
        self,
        clock: Clock,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        serializer: EventSerializer,
        notifier: Notifier,
        event_stream: StreamIdGenerator,
        room_changes: StreamChangeCache,
        membership_changes: StreamChangeCache,
    ) -> None:
        self._clock = clock
        self._events = events
        self._state = state
        self._rooms = rooms
        self._serializer = serializer
        self._notifier = notifier
        self._event_stream = event_stream
        self._room_changes = room_changes
        self._membership_changes = membership_changes
        # user_id -> (events position when read, memberships): kept until the user's
        # memberships change, so a quiet incremental sync does no per-room database work.
        self._memberships_cache: dict[str, tuple[int, list[Membership]]] = {}

    def current_token(self) -> StreamToken:
        return StreamToken(events=self._event_stream.current)

    async def wait_for_sync(self, request: SyncRequest, timeout_ms: int) -> dict[str, Any]:
        """Compute the response; if it is empty, wait for news up to `timeout_ms` and retry."""
        deadline = self._clock.time_msec() + timeout_ms
        while True:
            notified_at = self._notifier.position(request.user_id)
            response, empty = await self.sync(request)
            remaining = deadline - self._clock.time_msec()
            if request.since is None or not empty or remaining <= 0:
                return response
            if not await self._notifier.wait(request.user_id, notified_at, remaining):
                # Timed out: the (empty) response carries the latest token.
                return (await self.sync(request))[0]

    async def sync(self, request: SyncRequest) -> tuple[dict[str, Any], bool]:
        """One sync pass; returns (response, whether it holds nothing new)."""
        now = self.current_token()
        since = request.since
        if since is not None and since.events > now.events:
            # A token from the future (another process, or a restored database): treat as now.
            since = now
        rooms_section, rooms_empty = await self._rooms_section(request, since, now)
        response: dict[str, Any] = {
            "next_batch": str(now),
            "rooms": rooms_section,
            "account_data": {"events": []},
            "presence": {"events": []},
        }
        return response, rooms_empty and since is not None

    # ----- rooms ---------------------------------------------------------------------------

    async def _rooms_section(
        self, request: SyncRequest, since: StreamToken | None, now: StreamToken
    ) -> tuple[dict[str, Any], bool]:
        user_id = request.user_id
        config = request.config
        memberships = [
            m for m in await self._memberships_of(user_id, now) if self._room_wanted(config, m.room_id)
        ]
        section: dict[str, dict[str, Any]] = {"join": {}, "invite": {}, "leave": {}, "knock": {}}

        if since is None:
            changed_rooms: set[str] | None = None
            membership_changed = {m.room_id for m in memberships}
        else:
            room_ids = [m.room_id for m in memberships]
            from_cache = self._room_changes.changed_since(room_ids, since.events)
            if from_cache is not None:
                changed_rooms = {str(r) for r in from_cache}
            else:
                # The token predates what the change index remembers: ask the database.
                changed_rooms = await self._events.get_rooms_changed_since(room_ids, since.events)
            membership_changed = {
                m.room_id for m in memberships if m.stream_ordering > since.events
            }

        for membership in memberships:
            room_id = membership.room_id
            is_new = membership.room_id in membership_changed
            if membership.stream_ordering > now.events:
                # The membership changed after `now` was taken; the next sync will carry it.
                continue
            if membership.membership == "join":
                if (
                    since is not None
                    and not request.full_state
                    and not is_new
                    and changed_rooms is not None
                    and room_id not in changed_rooms
                ):
                    continue
                room = await self._joined_room(
                    request, room_id, None if (is_new or request.full_state) else since, now
                )
                if room is not None:
                    section["join"][room_id] = room
            elif membership.membership == "invite" and (is_new or since is None or request.full_state):
                section["invite"][room_id] = {
                    "invite_state": {"events": await self._stripped_state(membership)}
                }
            elif membership.membership == "knock" and (is_new or since is None or request.full_state):
                section["knock"][room_id] = {
                    "knock_state": {"events": await self._stripped_state(membership)}
                }
            elif membership.membership in ("leave", "ban"):
                # Left rooms appear once, when the leave happens; on initial sync only if asked.
                if since is None and not config.include_leave:
                    continue
                if since is not None and not is_new and not request.full_state:
                    continue
                room = await self._left_room(request, membership, since)
                if room is not None:
                    section["leave"][room_id] = room
        empty = not any(section.values())
        return section, empty

    async def _memberships_of(self, user_id: str, now: StreamToken) -> list[Membership]:
        """The user's memberships, from memory unless they changed since we last looked."""
        cached = self._memberships_cache.get(user_id)
        if cached is not None and not self._membership_changes.has_changed_since(
            user_id, cached[0]
        ):
            return cached[1]
        memberships = await self._rooms.get_rooms_for_user(
            user_id, ("join", "invite", "leave", "ban", "knock")
        )
        self._memberships_cache[user_id] = (now.events, memberships)
        if len(self._memberships_cache) > MEMBERSHIP_CACHE_SIZE:
            self._memberships_cache.pop(next(iter(self._memberships_cache)))
        return memberships

    @staticmethod
    def _room_wanted(config: SyncConfig, room_id: str) -> bool:
        if config.rooms is not None and room_id not in config.rooms:
            return False
        return room_id not in config.not_rooms

    async def _timeline(
        self, room_id: str, config: SyncConfig, after: int, up_to: int
    ) -> _RoomTimeline:
        limit = config.timeline_limit
        # Fetch extra so filtering still fills the limit in the common case.
        fetched = await self._events.get_room_events_between(room_id, after, up_to, limit * 2 + 1)
        wanted = [s for s in fetched if config.timeline_filter(s.event)]
        limited = len(wanted) > limit or (len(fetched) == limit * 2 + 1 and len(wanted) >= limit)
        events = wanted[-limit:] if limit > 0 else []
        if events:
            first = events[0]
            prev = RoomPosition(first.topological_ordering, first.stream_ordering - 1)
        else:
            prev = RoomPosition(None, up_to)
        return _RoomTimeline(events, limited, str(prev))

    async def _joined_room(
        self, request: SyncRequest, room_id: str, since: StreamToken | None, now: StreamToken
    ) -> dict[str, Any] | None:
        config = request.config
        after = since.events if since is not None else 0
        timeline = await self._timeline(room_id, config, after, now.events)
        state_events = await self._state_for_sync(
            room_id, timeline, since, now, config, request.user_id
        )
        device = (request.user_id, request.device_id)
        room: dict[str, Any] = {
            "timeline": {
                "events": await self._serializer.serialize(
                    timeline.events, device, include_room_id=False
                ),
                "limited": timeline.limited,
                "prev_batch": timeline.prev_batch,
            },
            "state": {
                "events": await self._serializer.serialize(
                    state_events, device, include_room_id=False
                )
            },
            "ephemeral": {"events": []},
            "account_data": {"events": []},
        }
        if since is None or timeline.events or state_events:
            room["summary"] = await self._summary(room_id, request.user_id)
        elif since is not None:
            return None
        return room

    async def _state_for_sync(
        self,
        room_id: str,
        timeline: _RoomTimeline,
        since: StreamToken | None,
        now: StreamToken,
        config: SyncConfig,
        user_id: str,
    ) -> list[StoredEvent]:
        """The `state` block: state at the start of the timeline the client lacks."""
        if timeline.events:
            first = await self._events.get_stored_event(timeline.events[0].event.event_id)
            group = await self._state_group_before(first)
        else:
            group = await self._events.get_state_group_at_stream(room_id, now.events)
        state_at_start = await self._state.get_state_group(group) if group is not None else {}

        timeline_has_all_changes = since is not None and not timeline.limited
        if since is None:
            wanted = dict(state_at_start)
        elif timeline_has_all_changes:
            # Every state change since the token is in the timeline itself.
            wanted = {}
        else:
            since_group = await self._events.get_state_group_at_stream(room_id, since.events)
            state_at_since = (
                await self._state.get_state_group(since_group) if since_group is not None else {}
            )
            wanted = {k: e for k, e in state_at_start.items() if state_at_since.get(k) != e}

        if config.lazy_load_members:
            # Only the members the client needs to render this timeline (and itself). We do
            # not track what each device already has, so these may be redundant: allowed.
            senders = {s.event.sender for s in timeline.events} | {user_id}
            wanted = {k: e for k, e in wanted.items() if k[0] != "m.room.member"}
            wanted.update(
                {("m.room.member", u): state_at_start[("m.room.member", u)]
                 for u in senders if ("m.room.member", u) in state_at_start}
            )
        wanted_ids = set(wanted.values())

        # State events already in the timeline need not be repeated.
        in_timeline = {s.event.event_id for s in timeline.events}
        stored = await self._events.get_stored_events(wanted_ids - in_timeline)
        result = [s for s in stored.values() if config.state_filter(s.event)]
        result.sort(key=lambda s: s.stream_ordering)
        return result

    async def _state_group_before(self, stored: StoredEvent | None) -> int | None:
        if stored is None:
            return None
        return await self._events.get_state_group_before(stored.event.event_id)

    async def _summary(self, room_id: str, user_id: str) -> dict[str, Any]:
        joined = await self._state.get_current_members(room_id, "join")
        invited = await self._state.get_current_members(room_id, "invite")
        heroes = sorted(u for u in list(joined) + list(invited) if u != user_id)[:MAX_HEROES]
        return {
            "m.joined_member_count": len(joined),
            "m.invited_member_count": len(invited),
            "m.heroes": heroes,
        }

    async def _stripped_state(self, membership: Membership) -> list[dict[str, Any]]:
        state = await self._state.get_current_state_ids(membership.room_id)
        ids = [state[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state]
        events = await self._events.get_events(ids + [membership.event_id])
        member_event = events.get(membership.event_id)
        if member_event is not None:
            inviter_key = ("m.room.member", member_event.sender)
            if inviter_key in state and member_event.sender != membership.user_id:
                inviter = await self._events.get_event(state[inviter_key])
                if inviter is not None:
                    events[inviter.event_id] = inviter
        return [_stripped(e) for e in events.values()]

    async def _left_room(
        self, request: SyncRequest, membership: Membership, since: StreamToken | None
    ) -> dict[str, Any] | None:
        """A room the user left or was banned from: history up to the leave event only."""
        config = request.config
        after = since.events if since is not None else 0
        timeline = await self._timeline(
            membership.room_id, config, after, membership.stream_ordering
        )
        up_to = StreamToken(events=membership.stream_ordering)
        state_events = await self._state_for_sync(
            membership.room_id, timeline, since, up_to, config, request.user_id
        )
        device = (request.user_id, request.device_id)
        return {
            "timeline": {
                "events": await self._serializer.serialize(
                    timeline.events, device, include_room_id=False
                ),
                "limited": timeline.limited,
                "prev_batch": timeline.prev_batch,
            },
            "state": {
                "events": await self._serializer.serialize(
                    state_events, device, include_room_id=False
                )
            },
            "account_data": {"events": []},
        }


def _stripped(event: Event) -> dict[str, Any]:
    return {
        "type": event.type,
        "state_key": event.state_key,
        "content": dict(event.content),
        "sender": event.sender,
    }

