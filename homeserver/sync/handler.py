"""Computing /sync responses: initial, incremental and long-polling.

Incremental sync asks the in-memory change indexes which of the user's rooms changed since
the token (`StreamChangeCache`), so its cost follows what changed, not how many rooms the
user is in. Only when a token is older than what the indexes remember does it fall back to
the database. The user's own memberships are cached until they change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from homeserver.account_data import AccountDataHandler
from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.events.serialize import EventSerializer
from homeserver.filtering import Filter, RoomEventFilter
from homeserver.presence import PresenceHandler
from homeserver.push.counts import NotificationCounts
from homeserver.receipts import ReceiptsHandler
from homeserver.rooms.shared_rooms import SharedRooms
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.streams.registry import StreamRegistry
from homeserver.sync.encoding import SharedJoinedRoom, SharedPart
from homeserver.sync.lazy_members import LazyMembersSent
from homeserver.sync.notifier import Notifier
from homeserver.sync.shared_reads import SharedReads
from homeserver.sync.tokens import RoomPosition, StreamToken
from homeserver.typing import TypingHandler
from storage.stores.events import EventStore, StoredEvent
from storage.stores.rooms import Membership, RoomStore
from storage.stores.state import StateStore

if TYPE_CHECKING:
    from homeserver.e2e.device_lists import DeviceListHandler
    from homeserver.e2e.keys import E2eKeysHandler
    from homeserver.e2e.to_device import ToDeviceHandler

logger = logging.getLogger(__name__)

V = TypeVar("V")

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
DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 100
# Pages of a room's timeline one sync reads at most to fill a filtered timeline.
TIMELINE_PAGES = 5
# Devices that were sent to-device messages and have not acknowledged them yet (see
# `_to_device_section`); past this many, the oldest entries are forgotten.
TO_DEVICE_UNACKED_SIZE = 100_000
# Reads shared by the sync passes one commit wakes (see `SharedReads`): one entry per room
# and stream position, so a few thousand cover every room active in the last moments.
SHARED_READS_SIZE = 4096
# A shared room section (see `_SharedRoomSection`) serves the passes one commit wakes; a
# pass later than this computes it again (a redaction since then must show).
SHARED_SECTION_MAX_AGE_S = 2.0


@dataclass
class SyncRequest:
    user_id: str
    device_id: str
    since: StreamToken | None
    full_state: bool
    filter: Filter = field(default_factory=Filter.default)
    # The to-device position the client has confirmed receiving, when it is behind `since`
    # (a WebSocket pushes from its last push, which the client may never have read):
    # to-device messages are deleted only up to it. None: `since` confirms them.
    to_device_acknowledged: int | None = None
    # `use_state_after`: rooms carry `state_after` (the state changes up to the end of the
    # timeline) instead of `state` (those up to its start).
    use_state_after: bool = False

    @property
    def state_block(self) -> str:
        """The name of the rooms' state block in this request's response."""
        return "state_after" if self.use_state_after else "state"


@dataclass
class _RoomTimeline:
    events: list[StoredEvent]
    limited: bool
    prev_batch: str
    # Every fetched event that passed the visibility check, served or not.
    visible: list[StoredEvent]


@dataclass(frozen=True)
class _PendingRoom:
    """A joined room's section computed for one viewer, before its events are serialized."""

    timeline: _RoomTimeline
    state: list[StoredEvent]


@dataclass(frozen=True)
class _SharedRoomSection:
    """A joined room's incremental sync section between two positions, computed once for
    every viewer with the same filter who has been joined since before the first position.

    One message wakes every member of its room; each of their sync passes would read,
    filter and serialize the same events. A viewer takes this section when it would have
    computed the same: it was joined throughout, so every event from this server is visible
    to it (its membership at each of them was `join`); the events from other servers, whose
    state may predate its join, are checked for it (`remote_events`); it sent none of the
    served events (which would carry its `transaction_id`), is not among the hero
    candidates (heroes leave the viewer out), took no part in a thread whose root is
    served (`current_user_participated` is per viewer), and would aggregate the same
    children under the served events: it may see each of them (checked like the remote
    events, for those from other servers or from before the first position) and ignores
    none of their senders. Anyone else computes the section alone.
    """

    # timeline, state and summary; None when there is nothing to send.
    room: dict[str, Any] | None
    senders: frozenset[str]
    remote_events: tuple[StoredEvent, ...]
    hero_candidates: tuple[str, ...]
    # Who started or replied in a thread whose root is in the timeline: the section says
    # `current_user_participated: false` on every root, which is not what they would see.
    thread_participants: frozenset[str]
    # The children aggregated under the served events (`EventSerializer.bundled_children`):
    # the senders a viewer must not ignore, and those a viewer must be checked to see.
    bundled_senders: frozenset[str]
    bundled_to_check: tuple[StoredEvent, ...]
    # Who joined in the served timeline (the viewer's new room-mates, for presence).
    joined: frozenset[str] = frozenset()
    # [time in ms, the room as of then]: what every viewer served in that millisecond shares.
    _latest: list[Any] = field(default_factory=list, compare=False, repr=False)

    def as_of(self, now_ms: int) -> SharedPart:
        """The room with each timeline event's `age` as of `now_ms`, made once a millisecond
        (viewers served in the same one share it, and its JSON text)."""
        if self._latest and self._latest[0] == now_ms:
            return self._latest[1]  # type: ignore[no-any-return]
        assert self.room is not None
        timeline = self.room["timeline"]
        aged = SharedPart({
            **self.room,
            "timeline": {
                **timeline,
                "events": [
                    {**e, "unsigned": {**e["unsigned"], "age": max(0, now_ms - e["origin_server_ts"])}}
                    if "age" in e.get("unsigned", ()) and "origin_server_ts" in e
                    else e
                    for e in timeline["events"]
                ],
            },
        })
        self._latest[:] = [now_ms, aged]
        return aged


@dataclass
class _Pass:
    """One sync computation: the request, the window (since, now], and what it found."""

    request: SyncRequest
    since: StreamToken | None
    now: StreamToken
    # Rooms whose members the user newly shares (for presence of new room-mates).
    newly_joined: set[str] = field(default_factory=set)
    # room_id -> the user's membership, for the rooms this pass looked at.
    memberships: dict[str, Membership] = field(default_factory=dict)
    # Who joined the user's rooms in the timelines served (for their presence).
    new_room_mates: set[str] = field(default_factory=set)
    # room_id -> what the user may see of the room's latest events up to `now` (read for
    # every room of an initial sync at once: see `_read_rooms_at_once`).
    visible: dict[str, list[StoredEvent]] = field(default_factory=dict)


class SyncHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        shared_rooms: SharedRooms,
        serializer: EventSerializer,
        notifier: Notifier,
        streams: StreamRegistry,
        visibility: HistoryVisibility,
        typing: TypingHandler,
        receipts: ReceiptsHandler,
        account_data: AccountDataHandler,
        presence: PresenceHandler,
        *,
        device_lists: DeviceListHandler | None = None,
        to_device: ToDeviceHandler | None = None,
        e2e_keys: E2eKeysHandler | None = None,
        counts: NotificationCounts | None = None,
        ignored_by: Callable[[str], Awaitable[frozenset[str]]] | None = None,
        blocks_invites: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self._server_name = server_name
        # user_id -> whom they ignore (spec: "Ignoring Users"): their events other than state
        # are left out of the user's timelines, and their invites out of its invites.
        self._ignored_by = ignored_by
        # user_id -> whether they block invites (spec: "Invite permission"): then no invite
        # is served, those received before the block included.
        self._blocks_invites = blocks_invites
        # Unread notification counts per (user, room).
        self._counts = counts
        self._clock = clock
        self._events = events
        self._state = state
        self._rooms = rooms
        # Each user's memberships, from memory unless they changed since last read (a quiet
        # incremental sync then does no per-room database work).
        self._shared_rooms = shared_rooms
        self._serializer = serializer
        self._notifier = notifier
        self._streams = streams
        self._room_changes = streams["events"].rooms_index()
        self._visibility = visibility
        self._typing = typing
        self._receipts = receipts
        self._account_data = account_data
        self._presence = presence
        # End-to-end encryption: device-list changes, send-to-device messages, and
        # one-time/fallback key counts.
        self.device_lists = device_lists
        self.to_device = to_device
        self.e2e_keys = e2e_keys
        # (user_id, device_id) -> to-device position of the last messages delivered, until a
        # sync acknowledges them: only then does a sync with nothing new delete them.
        self._to_device_unacked: LruCache[tuple[str, str], int] = LruCache(
            "sync_to_device_unacknowledged", TO_DEVICE_UNACKED_SIZE
        )
        # Which lazily loaded members each device was sent (see `LazyMembersSent`).
        self._lazy_sent = LazyMembersSent()
        # (room_id, after, up_to, batch) -> the room's timeline events in (after, up_to].
        self._shared_timelines: SharedReads[tuple[str, int, int, int], list[StoredEvent]] = (
            SharedReads("timelines", SHARED_READS_SIZE)
        )
        # (room_id, events position) -> heroes candidates, for any viewer (see `_heroes`).
        self._shared_heroes: SharedReads[tuple[str, int], list[str]] = SharedReads(
            "heroes", SHARED_READS_SIZE
        )
        # (room_id, since, now, filter, use_state_after) -> the room's section for viewers
        # who qualify (the flag names its state block: `state` or `state_after`).
        self._shared_sections: SharedReads[
            tuple[str, int, int, Filter, bool], _SharedRoomSection
        ] = SharedReads(
            "room_sections", SHARED_READS_SIZE, max_age_s=SHARED_SECTION_MAX_AGE_S, clock=clock
        )

    def current_token(self) -> StreamToken:
        return self._streams.current_token()

    async def wait_for_sync(self, request: SyncRequest, timeout_ms: int) -> dict[str, Any]:
        """Compute the response; if it is empty, wait for news up to `timeout_ms` and retry."""
        deadline = self._clock.time_msec() + timeout_ms
        while True:
            notified_at = self._notifier.position(request.user_id)
            remaining = deadline - self._clock.time_msec()
            if remaining <= 0 or not self._nothing_new(request):
                response, empty, _ = await self.sync(request)
                remaining = deadline - self._clock.time_msec()
                if request.since is None or not empty or remaining <= 0:
                    return response
            if not await self._notifier.wait(request.user_id, notified_at, remaining):
                # Timed out: the (empty) response carries the latest token.
                return (await self.sync(request))[0]

    def _nothing_new(self, request: SyncRequest) -> bool:
        """Whether a pass for `request` would certainly find nothing, without making it: its
        token is the current one in every stream (as a long-poll's `since` is, made again at
        once by a client that was just answered) and no to-device message awaits its
        acknowledgement (a pass would delete those). A long-poll then waits at once."""
        since = request.since
        return (
            since is not None
            and not request.full_state
            and request.to_device_acknowledged is None
            and since == self.current_token()
            and (request.user_id, request.device_id) not in self._to_device_unacked
        )

    async def sync(self, request: SyncRequest) -> tuple[dict[str, Any], bool, StreamToken]:
        """One sync pass; returns (response, whether it holds nothing new, its `next_batch`
        as a token)."""
        now = self.current_token()
        since = request.since
        if since is not None and since.events > now.events:
            # A token from the future (a restored database): resync from scratch.
            since = None
        if since is not None:
            # Other streams ahead of the server (typing restarts at 0 with the process; a
            # restored database): send that stream in full rather than miss what comes next.
            for stream, position in since.items():
                if position > now.get(stream):
                    since = since.copy_and_replace(stream, 0)
        sync_pass = _Pass(request, since, now)
        rooms = await self._rooms_section(sync_pass)
        account_data = await self._account_data_section(sync_pass, rooms)
        # Last of the room parts: every joined room the response holds has its counts.
        await self._add_notification_counts(sync_pass, rooms["join"])
        presence = await self._presence_section(sync_pass)
        device_lists = await self._device_lists_section(sync_pass)
        to_device, to_device_position = await self._to_device_section(sync_pass)
        next_batch = now.copy_and_replace("to_device", to_device_position)
        response: dict[str, Any] = {
            "next_batch": str(next_batch),
            "rooms": rooms,
            "account_data": {"events": account_data},
            "presence": {"events": presence},
            "to_device": {"events": to_device},
            "device_lists": device_lists,
        }
        await self._add_key_counts(sync_pass, response)
        empty = (
            not any(rooms.values())
            and not account_data
            and not presence
            and not to_device
            and not device_lists["changed"]
            and not device_lists["left"]
        )
        return response, empty and since is not None, next_batch

    # ----- global sections -----------------------------------------------------------------

    async def _account_data_section(
        self, sync_pass: _Pass, rooms: dict[str, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        request, since = sync_pass.request, sync_pass.since
        initial = since is None or request.full_state
        if not initial and since is not None and since.account_data == sync_pass.now.account_data:
            return []
        changes = await self._account_data.get_changes(
            request.user_id,
            since.account_data if since is not None and not initial else 0,
            sync_pass.now.account_data,
            initial=initial,
        )
        room_filter = request.filter.room
        for room_id, events in changes.room_events.items():
            wanted = room_filter.account_data.filter_events(events)
            if not wanted or not room_filter.allows_room(room_id):
                continue
            for section in ("join", "leave"):
                if room_id in rooms[section]:
                    rooms[section][room_id]["account_data"]["events"] = wanted
                    break
            else:
                if self._is_joined(sync_pass, room_id):
                    rooms["join"][room_id] = self._empty_joined_room(request)
                    rooms["join"][room_id]["account_data"]["events"] = wanted
        return request.filter.account_data.filter_events(changes.global_events)

    async def _presence_section(self, sync_pass: _Pass) -> list[dict[str, Any]]:
        request, since = sync_pass.request, sync_pass.since
        if (
            since is not None
            and not request.full_state
            and since.presence == sync_pass.now.presence
            and not sync_pass.newly_joined
            and not sync_pass.new_room_mates
        ):
            return []
        events = await self._presence.get_presence_events(
            request.user_id,
            since.presence if since is not None and not request.full_state else None,
            sync_pass.now.presence,
        )
        if sync_pass.newly_joined or sync_pass.new_room_mates:
            # New room-mates' presence may not have changed, but this user has never seen it:
            # the members of rooms it joined, and those who joined its rooms.
            known = {e["sender"] for e in events}
            new_mates: set[str] = set(sync_pass.new_room_mates)
            for room_id in sync_pass.newly_joined:
                new_mates.update(await self._state.get_current_members(room_id, "join"))
            new_mates -= known | {request.user_id}
            if new_mates:
                events += await self._presence.get_presence_events_for_users(new_mates)
        return request.filter.presence.filter_events(events)

    # ----- end-to-end encryption -------------------------------------------------------------

    async def _device_lists_section(self, sync_pass: _Pass) -> dict[str, list[str]]:
        """Users whose devices the client should query again, and those it shares no room
        with any more: incremental syncs only (the spec's `device_lists`)."""
        since, now = sync_pass.since, sync_pass.now
        if (
            since is None
            or self.device_lists is None
            or not self.device_lists.may_have_changes(
                since.device_lists, now.device_lists, since.events
            )
        ):
            return {"changed": [], "left": []}
        user_id = sync_pass.request.user_id
        joined = await self._shared_rooms.joined_rooms(user_id)
        changed, left = await self.device_lists.get_changes(
            user_id, since.device_lists, now.device_lists, since.events, now.events, joined
        )
        return {"changed": sorted(changed), "left": sorted(left)}

    async def _to_device_section(self, sync_pass: _Pass) -> tuple[list[dict[str, Any]], int]:
        """The device's to-device events, and the to-device position for `next_batch`.

        Messages are deleted once a sync token acknowledges them. A sync with nothing new
        for the device skips the database, unless messages it was sent still await that
        acknowledgement."""
        now = sync_pass.now.to_device
        if self.to_device is None:
            return [], now
        request, since = sync_pass.request, sync_pass.since
        since_position = since.to_device if since is not None else 0
        key = (request.user_id, request.device_id)
        if since is not None and since_position >= now and key not in self._to_device_unacked:
            return [], now
        events, position = await self.to_device.get_for_sync(
            request.user_id,
            request.device_id,
            since_position,
            now,
            acknowledged=request.to_device_acknowledged,
        )
        self._to_device_unacked.pop(key, None)
        if events:
            self._to_device_unacked.set(key, position)
        return events, position

    async def _add_key_counts(self, sync_pass: _Pass, response: dict[str, Any]) -> None:
        """The device's unclaimed one-time keys per algorithm, and the algorithms of its
        unused fallback keys."""
        if self.e2e_keys is None:
            return
        request = sync_pass.request
        counts = await self.e2e_keys.count_one_time_keys(request.user_id, request.device_id)
        # Clients (matrix-nio, as Synapse's users) read this count to decide when to upload
        # more keys; zero is sent rather than left out.
        response["device_one_time_keys_count"] = {"signed_curve25519": 0, **counts}
        response["device_unused_fallback_key_types"] = (
            await self.e2e_keys.unused_fallback_key_types(request.user_id, request.device_id)
        )

    # ----- rooms ---------------------------------------------------------------------------

    async def _rooms_section(self, sync_pass: _Pass) -> dict[str, dict[str, Any]]:
        request, since, now = sync_pass.request, sync_pass.since, sync_pass.now
        room_filter = request.filter.room
        memberships = [
            m
            for m in await self._shared_rooms.memberships_of(request.user_id)
            if room_filter.allows_room(m.room_id) and m.stream_ordering <= now.events
        ]
        sync_pass.memberships = {m.room_id: m for m in memberships}
        if request.filter.lazy_load_members:
            self._lazy_sent.start(
                request.user_id, request.device_id,
                since.events if since is not None else None, now.events,
            )
        section: dict[str, dict[str, Any]] = {"join": {}, "invite": {}, "leave": {}, "knock": {}}

        joined_ids = [m.room_id for m in memberships if m.membership == "join"]
        if since is None or request.full_state:
            changed_rooms: set[str] = set(joined_ids)
        else:
            from_cache = self._room_changes.changed_since(joined_ids, since.events)
            if from_cache is not None:
                changed_rooms = {str(r) for r in from_cache}
            else:
                # The token predates what the change index remembers: ask the database.
                changed_rooms = await self._events.get_rooms_changed_since(
                    joined_ids, since.events
                )

        if since is None or request.full_state:
            await self._read_rooms_at_once(sync_pass, joined_ids)
        # Joined rooms in order, those computed for this viewer alone still to be serialized.
        joined_rooms: list[tuple[str, dict[str, Any] | _PendingRoom]] = []
        for membership in memberships:
            room_id = membership.room_id
            is_new = since is None or membership.stream_ordering > since.events
            if membership.membership == "join":
                # A new display name is a member event too, but not a newly joined room.
                is_new = since is None or membership.changed_at > since.events
                if room_id not in changed_rooms and not is_new:
                    continue
                if is_new and since is not None:
                    sync_pass.newly_joined.add(room_id)
                fresh = is_new or request.full_state
                room = await self._joined_room(sync_pass, room_id, None if fresh else since)
                if room is not None:
                    joined_rooms.append((room_id, room))
            elif membership.membership == "invite":
                if (is_new or request.full_state) and not await self._invite_hidden(
                    request.user_id, membership
                ):
                    events = await self._stripped_state(membership)
                    section["invite"][room_id] = {"invite_state": {"events": events}}
            elif membership.membership == "knock":
                if is_new or request.full_state:
                    events = await self._stripped_state(membership)
                    section["knock"][room_id] = {"knock_state": {"events": events}}
            elif membership.membership in ("leave", "ban"):
                # Left rooms appear once, when the leave happens; on initial sync only if asked.
                if since is None and not room_filter.include_leave:
                    continue
                if since is not None and not is_new and not request.full_state:
                    continue
                section["leave"][room_id] = await self._left_room(sync_pass, membership)

        section["join"] = await self._finish_joined_rooms(sync_pass, joined_rooms)
        await self._add_ephemeral(sync_pass, section["join"], joined_ids)
        return section

    async def _add_notification_counts(
        self, sync_pass: _Pass, joined: dict[str, dict[str, Any]]
    ) -> None:
        """Each joined room in the response gets the user's unread notification counts: the
        viewer's own part of a shared section. Held in memory once read, and moved by each
        commit that changes them, so a pass woken by a message reads nothing for them."""
        if self._counts is None or not joined:
            return
        request = sync_pass.request
        per_thread = request.filter.room.timeline.unread_thread_notifications
        counts = await self._counts.get_many(request.user_id, list(joined))
        for room_id, room in joined.items():
            room_counts = counts.get(room_id)
            if room_counts is not None:
                room.update(self._counts.sync_fields(room_counts, per_thread))

    def _is_joined(self, sync_pass: _Pass, room_id: str) -> bool:
        member = sync_pass.memberships.get(room_id)
        return member is not None and member.membership == "join"

    async def _add_ephemeral(
        self, sync_pass: _Pass, joined: dict[str, dict[str, Any]], joined_ids: list[str]
    ) -> None:
        """Typing and receipts for joined rooms, adding rooms that only have those."""
        request, since = sync_pass.request, sync_pass.since
        fresh = since is None or request.full_state
        if (
            not fresh
            and since is not None
            and since.typing == sync_pass.now.typing
            and since.receipts == sync_pass.now.receipts
            and not sync_pass.newly_joined
        ):
            return  # neither stream moved (a pass woken by a message, say)
        typing = self._typing.get_typing_events(
            joined_ids, 0 if fresh or since is None else since.typing
        )
        receipts = await self._receipts.get_receipt_events(
            request.user_id,
            joined_ids,
            0 if fresh or since is None else since.receipts,
            sync_pass.now.receipts,
        )
        ephemeral_filter = request.filter.room.ephemeral
        for room_id in joined_ids:
            events = []
            # On a fresh sync only rooms where someone is typing; otherwise every change,
            # including "stopped typing".
            if room_id in typing and (not fresh or typing[room_id]["content"]["user_ids"]):
                events.append(typing[room_id])
            if room_id in receipts:
                events.append(receipts[room_id])
            if since is not None and room_id in sync_pass.newly_joined:
                # Newly joined: send the room's receipts in full, not just the recent ones.
                full = await self._receipts.get_receipt_events(
                    request.user_id, [room_id], 0, sync_pass.now.receipts
                )
                events = [e for e in events if e["type"] != "m.receipt"] + list(full.values())
            events = ephemeral_filter.filter_events(events)
            if not events:
                continue
            room = joined.get(room_id)
            if room is None:
                room = joined[room_id] = self._empty_joined_room(request)
            room["ephemeral"]["events"] = events

    @staticmethod
    def _empty_joined_room(request: SyncRequest) -> dict[str, Any]:
        return {
            "timeline": {"events": [], "limited": False},
            request.state_block: {"events": []},
            "ephemeral": {"events": []},
            "account_data": {"events": []},
        }

    async def _read_rooms_at_once(self, sync_pass: _Pass, room_ids: list[str]) -> None:
        """Read every room's latest events and heroes in one transaction each, and check
        what the user may see of the events in one pass, rather than a room at a time: what
        the check reads (the user's membership where history is shared, whether senders are
        erased) is then read once for all rooms."""
        request, now = sync_pass.request, sync_pass.now
        batch = self._timeline_batch(request.filter.room.timeline)
        # The rooms' latest events, read in one transaction for the rooms not read already
        # at this position (a position moves with every event on the server, so nearly
        # every initial sync has to read them).
        unread = [r for r in room_ids if not self._shared_timelines.has((r, 0, now.events, batch))]
        if len(unread) > 1:
            latest = await self._events.get_latest_events_in_rooms(unread, now.events, batch)
            for room_id, events in latest.items():
                await self._shared_timelines.get(
                    (room_id, 0, now.events, batch), partial(_read_already, events)
                )
        # And their heroes.
        unread = [r for r in room_ids if not self._shared_heroes.has((r, now.events))]
        if len(unread) > 1:
            heroes = await self._rooms.get_heroes_in_rooms(unread, "", MAX_HEROES + 1)
            for room_id, candidates in heroes.items():
                await self._shared_heroes.get(
                    (room_id, now.events), partial(_read_already, candidates)
                )
        fetched: list[StoredEvent] = []
        for room_id in room_ids:
            fetched += await self._fetch_timeline(room_id, 0, now.events, batch)
        by_room: dict[str, list[StoredEvent]] = {room_id: [] for room_id in room_ids}
        for stored in await self._visibility.filter_events_for_user(request.user_id, fetched):
            by_room[stored.event.room_id].append(stored)
        sync_pass.visible = by_room

    @staticmethod
    def _timeline_batch(timeline_filter: RoomEventFilter) -> int:
        """How many of a room's latest events are read for a timeline: extra, so that
        filtering still fills the limit in the common case."""
        return max(timeline_filter.limit_or(DEFAULT_TIMELINE_LIMIT, MAX_TIMELINE_LIMIT) * 2, 10) + 1

    async def _fetch_timeline(
        self, room_id: str, after: int, up_to: int, batch: int
    ) -> list[StoredEvent]:
        return await self._shared_timelines.get(
            (room_id, after, up_to, batch),
            lambda: self._room_events_between(room_id, after, up_to, batch),
        )

    async def _timeline(
        self,
        viewer: str | None,
        room_id: str,
        timeline_filter: RoomEventFilter,
        after: int,
        up_to: int,
        checked: list[StoredEvent] | None = None,
    ) -> _RoomTimeline:
        """The room's timeline in (after, up_to] as `viewer` may see it; with no viewer, every
        event that can be in a timeline at all (for `_SharedRoomSection`). `checked`: what
        the viewer may see of those events, when already known."""
        limit = timeline_filter.limit_or(DEFAULT_TIMELINE_LIMIT, MAX_TIMELINE_LIMIT)
        # Fetch extra so filtering still fills the limit in the common case; when the
        # filter leaves too few (a type filter in a busy room), read further back, a few
        # pages at most, as Synapse does.
        batch = self._timeline_batch(timeline_filter)
        fetched: list[StoredEvent] = []
        visible: list[StoredEvent] = []
        wanted: list[StoredEvent] = []
        upper = up_to
        exhausted = False
        for page_number in range(TIMELINE_PAGES):
            page = await self._fetch_timeline(room_id, after, upper, batch)
            page_visible = await self._visible_to(
                viewer, room_id, page, checked if page_number == 0 else None
            )
            fetched = page + fetched
            visible = page_visible + visible
            wanted = timeline_filter.filter_events(page_visible) + wanted
            if len(page) < batch:
                exhausted = True
                break
            if len(wanted) >= limit or timeline_filter.types == ():
                break  # full, or a filter that takes no type at all
            upper = page[0].stream_ordering - 1
        limited = len(wanted) > limit or not exhausted
        events = wanted[-limit:] if limit > 0 else []
        if not limited and after > 0 and await self._after_gap(room_id, events):
            # Other servers' events arrived with history missing before them (more than
            # federation fetched at once): `limited` tells the client to paginate back from
            # `prev_batch`, where `/messages` backfills the gap.
            limited = True
        if events:
            first = events[0]
            prev = RoomPosition(first.topological_ordering, first.stream_ordering - 1)
        elif fetched:
            first = fetched[0]
            prev = RoomPosition(first.topological_ordering, first.stream_ordering - 1)
        else:
            prev = RoomPosition(None, up_to)
        return _RoomTimeline(events, limited, str(prev), visible)

    async def _visible_to(
        self,
        viewer: str | None,
        room_id: str,
        fetched: list[StoredEvent],
        checked: list[StoredEvent] | None = None,
    ) -> list[StoredEvent]:
        """What `viewer` sees of `fetched`; `checked`: the history visibility check's result
        for them, when already known."""
        if viewer is None:
            return [e for e in fetched if not e.outlier and e.event.rejected_reason is None]
        if checked is not None:
            visible = checked
        else:
            visible = await self._visibility.filter_events_for_user(viewer, fetched)
        if len(visible) < len(fetched) and any(e.event.is_state for e in fetched):
            # The room's current state is the viewer's to see (it is in the state block
            # anyway): its events stay in the timeline even from a stretch of history the
            # viewer may not read, as Synapse keeps them, so a client that builds the
            # room's state from the timeline sees, say, who joined while it was away.
            current = set((await self._state.get_current_state_ids(room_id)).values())
            kept = {e.event.event_id for e in visible}
            restored = [
                e for e in fetched if e.event.event_id in current and e.event.event_id not in kept
            ]
            if restored:
                visible = sorted([*visible, *restored], key=lambda e: e.stream_ordering)
        ignored = await self._ignored(viewer)
        if ignored:
            visible = [e for e in visible if e.event.is_state or e.event.sender not in ignored]
        return visible

    async def _room_events_between(
        self, room_id: str, after: int, up_to: int, limit: int
    ) -> list[StoredEvent]:
        fetched = await self._events.get_room_events_between(room_id, after, up_to, limit)
        # Every viewer's visibility check reads these events' state groups, and serializing
        # them for every viewer asks whether they are redacted: read both once here, into
        # the store's caches, rather than once per viewer woken at the same moment.
        event_ids = [e.event.event_id for e in fetched]
        await self._events.get_state_groups_for_events(event_ids)
        await self._events.get_redactions(event_ids)
        return fetched

    async def _after_gap(self, room_id: str, events: list[StoredEvent]) -> bool:
        # Only other servers' events can follow a gap: ours always extend what we hold.
        remote = [
            e.event.event_id
            for e in events
            if e.event.sender.partition(":")[2] != self._server_name
        ]
        return bool(remote) and await self._events.follows_gap(room_id, remote)

    async def _serialize(
        self, sync_pass: _Pass, events: list[StoredEvent], timeline: bool = False
    ) -> list[dict[str, Any]]:
        request = sync_pass.request
        return await self._serialize_for(
            request.filter, (request.user_id, request.device_id), events, timeline
        )

    async def _serialize_for(
        self,
        flt: Filter,
        requester_device: tuple[str, str] | None,
        events: list[StoredEvent],
        timeline: bool = False,
    ) -> list[dict[str, Any]]:
        """Timeline events carry their bundled aggregations; with no requester (a shared
        section), as seen by nobody: see `_SharedRoomSection.thread_participants`."""
        serialized = await self._serializer.serialize(
            events, requester_device, include_room_id=False, bundle_aggregations=timeline
        )
        if flt.event_fields is None and flt.event_format == "client":
            return serialized
        pdus = await self._serializer.federation_forms(events)
        return [flt.format_event(client, pdu) for client, pdu in zip(serialized, pdus, strict=True)]

    async def _finish_joined_rooms(
        self, sync_pass: _Pass, rooms: list[tuple[str, dict[str, Any] | _PendingRoom]]
    ) -> dict[str, dict[str, Any]]:
        """The joined rooms' sections, in order: those computed for this viewer alone are
        serialized together, so that what serializing reads (redactions, the children
        bundled under each event) is read once for all of them rather than once a room."""
        pending = [room for _, room in rooms if isinstance(room, _PendingRoom)]
        if not pending:
            return {room_id: room for room_id, room in rooms if isinstance(room, dict)}
        request, now = sync_pass.request, sync_pass.now
        timelines = await self._serialize(
            sync_pass, [e for room in pending for e in room.timeline.events], timeline=True
        )
        states = await self._serialize(sync_pass, [e for room in pending for e in room.state])
        joined: dict[str, dict[str, Any]] = {}
        timeline_at = state_at = 0
        for room_id, room in rooms:
            if not isinstance(room, _PendingRoom):
                joined[room_id] = room
                continue
            timeline_end = timeline_at + len(room.timeline.events)
            state_end = state_at + len(room.state)
            joined[room_id] = {
                "timeline": {
                    "events": timelines[timeline_at:timeline_end],
                    "limited": room.timeline.limited,
                    "prev_batch": room.timeline.prev_batch,
                },
                request.state_block: {"events": states[state_at:state_end]},
                "ephemeral": {"events": []},
                "account_data": {"events": []},
                "summary": await self._summary(room_id, request.user_id, now.events),
            }
            timeline_at, state_at = timeline_end, state_end
        return joined

    async def _joined_room(
        self, sync_pass: _Pass, room_id: str, since: StreamToken | None
    ) -> dict[str, Any] | _PendingRoom | None:
        """The room's section: shared with other viewers (see `_SharedRoomSection`), or
        this viewer's own, still to be serialized (`_finish_joined_rooms`); None if there
        is nothing new."""
        request, now = sync_pass.request, sync_pass.now
        if since is not None and self._may_share(sync_pass, room_id, since):
            section = await self._shared_sections.get(
                (room_id, since.events, now.events, request.filter, request.use_state_after),
                lambda: self._shared_room_section(
                    room_id, since, now, request.filter, request.use_state_after
                ),
            )
            if await self._takes_shared(request.user_id, section):
                sync_pass.new_room_mates.update(section.joined)
                return self._viewer_copy(section) if section.room is not None else None
        after = since.events if since is not None else 0
        timeline = await self._timeline(
            request.user_id, room_id, request.filter.room.timeline, after, now.events,
            sync_pass.visible.get(room_id) if after == 0 else None,
        )
        state_events = await self._state_for_sync(sync_pass, room_id, timeline, since, now.events)
        if since is not None:
            sync_pass.new_room_mates.update(_joins(timeline.events))
        if since is not None and not timeline.events and not state_events:
            return None
        return _PendingRoom(timeline, state_events)

    def _viewer_copy(self, section: _SharedRoomSection) -> dict[str, Any]:
        """A viewer's own copy of a shared room section: its own ephemeral and account data
        blocks (filled in later), and each timeline event's `age` as of now. Everything
        else is shared and never changed."""
        return SharedJoinedRoom(
            section.as_of(self._clock.time_msec()),
            {"ephemeral": {"events": []}, "account_data": {"events": []}},
        )

    def _may_share(self, sync_pass: _Pass, room_id: str, since: StreamToken) -> bool:
        """Whether the viewer may take a `_SharedRoomSection`, as far as can be told before
        computing it: joined since before `since`, with no member event of its own after
        (a room joined since is computed afresh anyway; a new display name is left out
        too, to keep the rule simple: its membership at every event is then its current
        one)."""
        if sync_pass.request.full_state or sync_pass.request.filter.lazy_load_members:
            return False
        member = sync_pass.memberships.get(room_id)
        return (
            member is not None
            and member.membership == "join"
            and member.stream_ordering <= since.events
        )

    async def _ignored(self, user_id: str) -> frozenset[str]:
        if self._ignored_by is None:
            return frozenset()
        return await self._ignored_by(user_id)

    async def _invite_hidden(self, user_id: str, membership: Membership) -> bool:
        """Spec: "Servers must not send room invites from ignored users to clients", nor
        any invite to a user who blocks invites ("Invite permission")."""
        if self._blocks_invites is not None and await self._blocks_invites(user_id):
            return True
        ignored = await self._ignored(user_id)
        if not ignored:
            return False
        invite = await self._events.get_event(membership.event_id)
        return invite is not None and invite.sender in ignored

    async def _takes_shared(self, user_id: str, section: _SharedRoomSection) -> bool:
        if (
            user_id in section.senders
            or user_id in section.hero_candidates
            or user_id in section.thread_participants
        ):
            return False
        ignored = await self._ignored(user_id)
        if ignored and not (
            ignored.isdisjoint(section.senders) and ignored.isdisjoint(section.bundled_senders)
        ):
            return False
        to_check = [*section.remote_events, *section.bundled_to_check]
        if not to_check:
            return True
        visible = await self._visibility.filter_events_for_user(user_id, to_check)
        # Each seen as it is: none hidden, and none redacted for this viewer (an erased
        # sender's event from before it joined comes back as another, pruned, object).
        return len(visible) == len(to_check) and all(
            seen is checked for seen, checked in zip(visible, to_check, strict=True)
        )

    async def _shared_room_section(
        self,
        room_id: str,
        since: StreamToken,
        now: StreamToken,
        flt: Filter,
        use_state_after: bool,
    ) -> _SharedRoomSection:
        timeline = await self._timeline(None, room_id, flt.room.timeline, since.events, now.events)
        # Lazy-loading filters never share, so the state block holds no viewer's own member.
        request = SyncRequest("", "", since, False, flt, use_state_after=use_state_after)
        state_events = await self._state_for_sync(
            _Pass(request, since, now), room_id, timeline, since, now.events
        )
        remote = tuple(
            e for e in timeline.visible if e.event.sender.partition(":")[2] != self._server_name
        )
        candidates = tuple(await self._hero_candidates(room_id, now.events))
        served = [*timeline.events, *state_events]
        senders = frozenset(e.event.sender for e in served)
        if not timeline.events and not state_events:
            return _SharedRoomSection(
                None, senders, remote, candidates, frozenset(), frozenset(), ()
            )
        timeline_events = await self._serialize_for(flt, None, timeline.events, timeline=True)
        participants: frozenset[str] = frozenset()
        bundled: list[StoredEvent] = []
        if any("m.relations" in e.get("unsigned", ()) for e in timeline_events):
            found, bundled = await self._serializer.bundled_children(timeline.events)
            participants = frozenset(found)
        # The viewers were joined from `since` on: this server's events after it they see.
        to_check = tuple(
            e for e in bundled
            if e.stream_ordering <= since.events
            or e.event.sender.partition(":")[2] != self._server_name
        )
        room = {
            "timeline": {
                "events": timeline_events,
                "limited": timeline.limited,
                "prev_batch": timeline.prev_batch,
            },
            request.state_block: {"events": await self._serialize_for(flt, None, state_events)},
            "summary": await self._summary(room_id, "", now.events),
        }
        return _SharedRoomSection(
            room, senders, remote, candidates, participants,
            frozenset(e.event.sender for e in bundled), to_check, _joins(timeline.events),
        )

    async def _state_for_sync(
        self,
        sync_pass: _Pass,
        room_id: str,
        timeline: _RoomTimeline,
        since: StreamToken | None,
        up_to: int,
    ) -> list[StoredEvent]:
        """The `state` block: state at the start of the timeline the client lacks."""
        request = sync_pass.request
        if request.use_state_after:
            return await self._state_after_for_sync(request, room_id, timeline, since, up_to)
        if since is not None and not timeline.limited and not request.filter.lazy_load_members:
            # Every state change since the token is in the timeline itself.
            return []
        if timeline.events:
            # Read with the timeline (`_room_events_between`) into the store's cache.
            first_id = timeline.events[0].event.event_id
            groups = await self._events.get_state_groups_for_events([first_id])
            group = groups[first_id][0] if first_id in groups else None
        else:
            group = await self._events.get_state_group_at_position(room_id, None, up_to)
        state_at_start = await self._state.get_state_group(group) if group is not None else {}

        if since is None:
            wanted = dict(state_at_start)
        elif not timeline.limited:
            # Every state change since the token is in the timeline itself.
            wanted = {}
        else:
            since_group = await self._events.get_state_group_at_position(room_id, None, since.events)
            state_at_since = (
                await self._state.get_state_group(since_group) if since_group is not None else {}
            )
            wanted = {k: e for k, e in state_at_start.items() if state_at_since.get(k) != e}

        if request.filter.lazy_load_members:
            wanted = self._lazy_members(sync_pass, room_id, timeline, since, state_at_start, wanted)
        else:
            # State events already in the timeline need not be repeated.
            in_timeline = {s.event.event_id for s in timeline.events}
            wanted = {k: e for k, e in wanted.items() if e not in in_timeline}

        stored = await self._events.get_stored_events(set(wanted.values()))
        result = request.filter.room.state.filter_events(list(stored.values()))
        result.sort(key=lambda s: s.stream_ordering)
        if request.filter.lazy_load_members and not request.filter.include_redundant_members:
            members = [
                (s.event.state_key, s.event.event_id)
                for s in [*result, *timeline.events]
                if s.event.type == "m.room.member" and s.event.state_key is not None
            ]
            self._lazy_sent.record(
                request.user_id, request.device_id, room_id, sync_pass.now.events, members
            )
        return result

    def _lazy_members(
        self,
        sync_pass: _Pass,
        room_id: str,
        timeline: _RoomTimeline,
        since: StreamToken | None,
        state_at_start: Mapping[tuple[str, str], str],
        wanted: dict[tuple[str, str], str],
    ) -> dict[tuple[str, str], str]:
        """The state block with lazily loaded members: the members needed to render the
        timeline (and, in a room synced afresh, the user), taken from the state at its start.
        After a gap every membership change in it is kept too, as Synapse does, so a client
        does not go on listing someone who left meanwhile. Members the device was already
        sent are left out unless the filter asks for redundant ones."""
        request = sync_pass.request
        in_timeline = {s.event.event_id for s in timeline.events}
        needed: set[str] = set()
        members_in_timeline: set[str] = set()
        for stored in timeline.events:
            event = stored.event
            # A sender whose membership came earlier in the timeline is known from there.
            if event.sender not in members_in_timeline:
                needed.add(event.sender)
            if event.type == "m.room.member" and event.state_key is not None:
                members_in_timeline.add(event.state_key)
        if since is None:
            needed.add(request.user_id)
            wanted = {k: e for k, e in wanted.items() if k[0] != "m.room.member"}
        wanted.update(
            {
                ("m.room.member", u): state_at_start[("m.room.member", u)]
                for u in needed
                if ("m.room.member", u) in state_at_start
            }
        )
        wanted = {k: e for k, e in wanted.items() if e not in in_timeline}
        if sync_pass.since is None or request.filter.include_redundant_members:
            return wanted
        members = {k[1]: e for k, e in wanted.items() if k[0] == "m.room.member"}
        unsent = self._lazy_sent.unsent(
            request.user_id, request.device_id, room_id, sync_pass.since.events, members
        )
        return {
            k: e for k, e in wanted.items() if k[0] != "m.room.member" or k[1] in unsent
        }

    async def _state_after_for_sync(
        self,
        request: SyncRequest,
        room_id: str,
        timeline: _RoomTimeline,
        since: StreamToken | None,
        up_to: int,
    ) -> list[StoredEvent]:
        """The `state_after` block: the state at the end of the timeline (at `up_to`) the
        client lacks, state events in the timeline included: the client takes its state
        from this block alone."""
        end_group = await self._events.get_state_group_at_position(room_id, None, up_to)
        since_group = (
            await self._events.get_state_group_at_position(room_id, None, since.events)
            if since is not None
            else None
        )
        if since is not None and since_group == end_group and not request.filter.lazy_load_members:
            return []  # the state did not change: nothing to read
        state_at_end = await self._state.get_state_group(end_group) if end_group is not None else {}
        if since is None:
            wanted = dict(state_at_end)
        else:
            state_at_since = (
                await self._state.get_state_group(since_group) if since_group is not None else {}
            )
            wanted = {k: e for k, e in state_at_end.items() if state_at_since.get(k) != e}

        if request.filter.lazy_load_members:
            # Only the members needed to render this timeline (and the user), as for
            # `state`; plus the member changes in the timeline itself, which the client
            # must not take from there.
            needed = {s.event.sender for s in timeline.events} | {request.user_id}
            in_timeline = {s.event.event_id for s in timeline.events}
            changed = {
                k: e for k, e in wanted.items() if k[0] == "m.room.member" and e in in_timeline
            }
            wanted = {k: e for k, e in wanted.items() if k[0] != "m.room.member"}
            wanted.update(
                {
                    ("m.room.member", u): state_at_end[("m.room.member", u)]
                    for u in needed
                    if ("m.room.member", u) in state_at_end
                }
            )
            wanted.update(changed)

        stored = await self._events.get_stored_events(set(wanted.values()))
        result = request.filter.room.state.filter_events(list(stored.values()))
        result.sort(key=lambda s: s.stream_ordering)
        return result

    async def _summary(self, room_id: str, user_id: str, position: int) -> dict[str, Any]:
        # Counts from the state store's in-memory member lists; no database read when cached.
        joined = await self._state.get_current_members(room_id, "join")
        invited = await self._state.get_current_members(room_id, "invite")
        summary: dict[str, Any] = {
            "m.joined_member_count": len(joined),
            "m.invited_member_count": len(invited),
        }
        # Heroes name a room that has no name of its own: the spec requires them only
        # then, and Synapse sends them only then. Spec: the first members by stream
        # ordering, joined or invited, never the user; left and banned ones when none.
        if not await self._has_name(room_id):
            summary["m.heroes"] = await self._heroes(room_id, user_id, position)
        return summary

    async def _has_name(self, room_id: str) -> bool:
        """Whether the room has a non-empty `m.room.name` or canonical alias."""
        for event_type, key in (("m.room.name", "name"), ("m.room.canonical_alias", "alias")):
            event_id = await self._state.get_current_state_event_id(room_id, event_type, "")
            if event_id is None:
                continue
            event = await self._events.get_event(event_id)
            if event is not None and isinstance(event.content.get(key), str) and event.content[key]:
                return True
        return False

    async def _hero_candidates(self, room_id: str, position: int) -> list[str]:
        """The room's first members, one more than there are heroes: read once for every
        viewer, who is then taken out (see `_heroes`)."""
        return await self._shared_heroes.get(
            (room_id, position), lambda: self._rooms.get_heroes(room_id, "", MAX_HEROES + 1)
        )

    async def _heroes(self, room_id: str, user_id: str, position: int) -> list[str]:
        """The room's heroes for `user_id`, from one read shared by every viewer: the first
        members other than nobody, one more than needed, with the viewer taken out."""
        candidates = await self._hero_candidates(room_id, position)
        heroes = [u for u in candidates if u != user_id][:MAX_HEROES]
        if not heroes and candidates:
            # The viewer is the room's only joined or invited member: the heroes are then
            # those who left or were banned, which the shared read did not look at.
            return await self._rooms.get_heroes(room_id, user_id, MAX_HEROES)
        return heroes

    async def _stripped_state(self, membership: Membership) -> list[dict[str, Any]]:
        stored = await self._events.get_stored_event(membership.event_id)
        if stored is not None:
            # An invite from another server (or a knock through one) carries the room's
            # stripped state as that server sent it: we hold none of the room's state.
            for key in ("invite_room_state", "knock_room_state"):
                remote = stored.internal_metadata.get(key)
                if isinstance(remote, list):
                    return [*remote, _stripped(stored.event)]
        state = await self._state.get_current_state_ids(membership.room_id)
        ids = [state[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state]
        events = await self._events.get_events(ids + [membership.event_id])
        member_event = events.get(membership.event_id)
        if member_event is not None and member_event.sender != membership.user_id:
            inviter_key = ("m.room.member", member_event.sender)
            if inviter_key in state:
                inviter = await self._events.get_event(state[inviter_key])
                if inviter is not None:
                    events[inviter.event_id] = inviter
        return [_stripped(e) for e in events.values()]

    async def _left_room(self, sync_pass: _Pass, membership: Membership) -> dict[str, Any]:
        """A room the user left or was banned from: history up to the leave event only."""
        request, since = sync_pass.request, sync_pass.since
        fresh = (
            since is None
            or request.full_state
            or await self._joined_within(membership, since.events)
        )
        after = 0 if fresh or since is None else since.events
        timeline = await self._timeline(
            request.user_id,
            membership.room_id,
            request.filter.room.timeline,
            after,
            membership.stream_ordering,
        )
        state_events = await self._state_for_sync(
            sync_pass, membership.room_id, timeline, None if fresh else since,
            membership.stream_ordering,
        )
        events = timeline.events
        if not events and membership.stream_ordering > after:
            # A leave of a room this server holds no timeline of (an invite rejected, a
            # knock withdrawn, or refused by the room): the leave alone, so the client
            # sees why the room moved (as Synapse shows out-of-band memberships).
            stored = await self._events.get_stored_event(membership.event_id)
            if stored is not None and stored.outlier and \
                    stored.stream_ordering == membership.stream_ordering:
                events = [stored]
        return {
            "timeline": {
                "events": await self._serialize(sync_pass, events, timeline=True),
                "limited": timeline.limited,
                "prev_batch": timeline.prev_batch,
            },
            request.state_block: {"events": await self._serialize(sync_pass, state_events)},
            "account_data": {"events": []},
        }

    async def _joined_within(self, membership: Membership, since: int) -> bool:
        """Whether the user joined the room it has left after `since`: the client then
        never had its state, and is sent all of it, as for a room joined since."""
        group = await self._events.get_state_group_before(membership.event_id)
        state = await self._state.get_state_group(group) if group is not None else {}
        before_id = state.get(("m.room.member", membership.user_id))
        if before_id is None:
            return False
        before = await self._events.get_stored_event(before_id)
        return (
            before is not None
            and before.event.content.get("membership") == "join"
            and before.stream_ordering > since
        )


def _joins(events: list[StoredEvent]) -> frozenset[str]:
    """The users whose joins are among these events (a new display name counts too: its
    presence sent again is no harm)."""
    return frozenset(
        e.event.state_key
        for e in events
        if e.event.type == "m.room.member"
        and e.event.state_key is not None
        and e.event.content.get("membership") == "join"
    )


async def _read_already(value: V) -> V:
    """A read whose result is already at hand (to hand it to `SharedReads`)."""
    return value


def _stripped(event: Event) -> dict[str, Any]:
    return {
        "type": event.type,
        "state_key": event.state_key,
        "content": dict(event.content),
        "sender": event.sender,
    }
