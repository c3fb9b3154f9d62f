"""Presence of local users (spec: "Presence"): online, unavailable or offline, a status
message, and when the user last did something.

The presence of every user not offline is held in memory (so the periodic check costs what
the online users number); offline users are read from the database when asked about. Each
change that clients should hear about takes the next position in the presence stream, is
written to the database, and wakes the syncs of everyone sharing a room with the user.

How presence moves:
- PUT /presence sets the state and status message (and counts as activity when online).
- Activity (`bump_active`: receipts, read markers, sending events) records the time and
  brings an unavailable user back online.
- Syncing (`syncing` / `on_sync`, with the request's `set_presence`) brings an offline user
  online, or marks them unavailable; it does not count as activity, so a client left open
  does not keep its user online forever.
- A periodic check makes online users idle (unavailable) after `idle_timeout_ms` without
  activity, and users offline once they have had no sync for `sync_timeout_ms`.

Only changes to the state, status message or `currently_active`, and jumps of the last
active time, are sent to clients and other servers (and wake syncs); while `currently_active`
is true the last active time moves silently (spec: "Last active ago"; see
`is_notable_change`). What moves silently is held in memory, where every read finds it
(`last_active_ago` is computed when presence is read), and written now and then
(`SAVE_ACTIVITY_INTERVAL_MS`) and when the server stops, so a restart resumes from it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from typing import Any

from twisted.internet import defer, task

from homeserver.auth.tokens import Requester
from homeserver.clock import Clock
from homeserver.config import PresenceConfig
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import split_user_id
from homeserver.linearizer import Linearizer
from homeserver.rooms.shared_rooms import SharedRooms
from homeserver.streams.bus import StreamBus, StreamUpdate
from homeserver.streams.registry import Stream
from storage.stores.presence import PresenceStore, UserPresence

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

ONLINE = "online"
UNAVAILABLE = "unavailable"
OFFLINE = "offline"
PRESENCE_STATES = frozenset({ONLINE, UNAVAILABLE, OFFLINE})
# `currently_active` lapses after this long without activity (as in Synapse).
LAST_ACTIVE_GRANULARITY_MS = 60_000
TIMEOUT_CHECK_INTERVAL_S = 5.0
# Another server's user goes offline after this long without word of them: their server may
# be gone for good, and would otherwise leave them online here (and in memory) forever.
# Servers repeat their users' presence more often than that (Synapse: the same 30 minutes).
REMOTE_PRESENCE_TIMEOUT_MS = 30 * 60_000
# How often our users who are not offline have their presence sent again to the servers
# they share rooms with, so those servers' timeouts (above; Synapse's) do not take them
# offline while they are still here. Synapse repeats its own every 25 minutes too.
PRESENCE_REPEAT_INTERVAL_MS = 25 * 60_000
# How often the silent changes of users not offline (the last active time of a currently
# active user, sync times) are written: clients are not told of them, but a restart reads
# them back. Offline users' are written at every timeout check, as they then leave memory.
# Synapse also writes such changes once a minute.
SAVE_ACTIVITY_INTERVAL_MS = 60_000


def is_notable_change(prev: UserPresence, new: UserPresence) -> bool:
    """Whether clients (and other servers) should be told of the change from `prev` to `new`.

    Followed: the spec's "Last active ago" (while `currently_active` is true the server
    sends no further updates of the last active time, until `currently_active` turns false
    or the state leaves `online`), and Synapse's `should_notify`, which says when: a change of
    the state, the status message or `currently_active`; or, for a user not currently
    active, a last active time moved on by more than `LAST_ACTIVE_GRANULARITY_MS`. So an
    active user sending message after message wakes nobody with presence; their last active
    time is still kept (and written later), and is current whenever presence is read."""
    if prev.state != new.state or prev.status_msg != new.status_msg:
        return True
    jumped = new.last_active_ts - prev.last_active_ts > LAST_ACTIVE_GRANULARITY_MS
    if new.state == ONLINE:
        return prev.currently_active != new.currently_active or (
            jumped and not new.currently_active
        )
    return jumped


def with_user_id(events: list[JsonDict]) -> list[JsonDict]:
    """`m.presence` events as the deprecated endpoints (GET /initialSync, the room one and
    GET /events) gave them, and Synapse still does: with the user in `content.user_id` too,
    where clients of those endpoints look for it."""
    return [{**e, "content": {**e["content"], "user_id": e["sender"]}} for e in events]


class PresenceHandler:
    def __init__(
        self,
        config: PresenceConfig,
        server_name: str,
        clock: Clock,
        reactor: Any,
        store: PresenceStore,
        shared_rooms: SharedRooms,
        stream: Stream,
        bus: StreamBus,
    ) -> None:
        self._config = config
        self._server_name = server_name
        self._clock = clock
        self._reactor = reactor
        self._store = store
        # Who shares a room with whom, from memory: asked on every notable change and by
        # every incremental sync while presence changes.
        self._shared_rooms = shared_rooms
        self._stream = stream
        self._ids = stream.id_generator()
        # Keyed by user_id.
        self._changes = stream.users_index()
        self._bus = bus
        # Everyone not offline: the users the timeouts apply to.
        self._states: dict[str, UserPresence] = {}
        # Offline users who changed since the last timeout check, held until it runs, so one
        # who keeps doing things (say, sending without syncing) is not re-read every time.
        self._recent_offline: dict[str, UserPresence] = {}
        # Users held (in either map) whose presence changed only in what clients are not
        # told of (the last active time creeping on, sync times) since it was written: the
        # timeout check writes that (see SAVE_ACTIVITY_INTERVAL_MS), rather than each change
        # costing a write.
        self._unsaved: set[str] = set()
        # Database reads of presence in flight, each collecting the users dropped from memory
        # while it ran (what it read may be older than what they were dropped with).
        self._reads: dict[int, dict[str, UserPresence]] = {}
        self._read_ids = itertools.count()
        # Users the idle timeout made unavailable (rather than they themselves): syncing does
        # not bring them back online, only activity does.
        self._idle: set[str] = set()
        # user_id -> number of /sync requests in flight.
        self._syncing: dict[str, int] = {}
        self._writers = Linearizer("presence")
        self._timeouts: task.LoopingCall | None = None
        # When our users' presence was last sent again to other servers (see
        # PRESENCE_REPEAT_INTERVAL_MS).
        self._last_repeat_ms = clock.time_msec()
        # When the silent changes of users not offline were last written.
        self._last_save_ms = clock.time_msec()
        # Called with each notable change of a local user's presence (federation tells the
        # servers the user shares rooms with).
        self.local_change_listeners: list[Callable[[UserPresence], Awaitable[None]]] = []

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    @property
    def current_position(self) -> int:
        return self._stream.current

    async def start(self) -> None:
        """Load everyone not offline (so their timeouts run) and start the timeout check."""
        if not self.enabled:
            return
        for presence in await self._store.get_not_offline():
            self._states[presence.user_id] = presence
        self._timeouts = task.LoopingCall(
            lambda: defer.ensureDeferred(self._check_timeouts_logged())
        )
        self._timeouts.clock = self._reactor
        self._timeouts.start(TIMEOUT_CHECK_INTERVAL_S, now=False)

    def stop(self) -> None:
        if self._timeouts is not None and self._timeouts.running:
            self._timeouts.stop()

    async def save(self) -> None:
        """Write every silent change held (when the server stops)."""
        if self.enabled:
            await self._save_unsaved(include_not_offline=True)

    # ----- reading ---------------------------------------------------------------------------

    @property
    def users_in_memory(self) -> int:
        """How many users' presence is held in memory: those not offline, and offline ones
        who changed since the last timeout check."""
        return len(self._states) + len(self._recent_offline)

    def _held(self, user_id: str) -> UserPresence | None:
        return self._states.get(user_id) or self._recent_offline.get(user_id)

    async def get_states(self, user_ids: Collection[str]) -> dict[str, UserPresence]:
        found: dict[str, UserPresence] = {}
        missing: list[str] = []
        for user_id in user_ids:
            held = self._held(user_id)
            if held is None:
                missing.append(user_id)
            else:
                found[user_id] = held
        if missing:
            read_id = next(self._read_ids)
            dropped: dict[str, UserPresence] = {}
            self._reads[read_id] = dropped
            try:
                stored = await self._store.get_presence(missing)
            finally:
                del self._reads[read_id]
            for user_id in missing:
                # The user may have changed while we read: memory is then newer.
                found[user_id] = (
                    self._held(user_id)
                    or dropped.get(user_id)
                    or stored.get(user_id)
                    or UserPresence.default(user_id)
                )
        return {u: found[u] for u in user_ids}

    async def get_state(self, user_id: str) -> UserPresence:
        return (await self.get_states([user_id]))[user_id]

    def format_content(self, presence: UserPresence, now_ms: int | None = None) -> JsonDict:
        """The `content` of an `m.presence` event (also the GET /presence body)."""
        now = self._clock.time_msec() if now_ms is None else now_ms
        content: JsonDict = {"presence": presence.state}
        if presence.last_active_ts:
            content["last_active_ago"] = max(0, now - presence.last_active_ts)
        if presence.status_msg is not None:
            content["status_msg"] = presence.status_msg
        if presence.state == ONLINE:
            content["currently_active"] = presence.currently_active
        return content

    def format_event(self, presence: UserPresence, now_ms: int | None = None) -> JsonDict:
        return {
            "type": "m.presence",
            "sender": presence.user_id,
            "content": self.format_content(presence, now_ms),
        }

    async def get_presence_for_client(self, requester: Requester, user_id: str) -> JsonDict:
        """GET /presence/{userId}/status: yourself, or someone you share a room with.

        403 M_FORBIDDEN for anyone else (as Synapse), so presence does not leak to strangers.
        """
        split_user_id(user_id)
        if requester.user_id != user_id and user_id not in await self.users_sharing_rooms(
            requester.user_id
        ):
            raise MatrixError(403, Codes.FORBIDDEN, "You are not allowed to see their presence")
        if not self.enabled:
            return {"presence": OFFLINE}
        return self.format_content(await self.get_state(user_id))

    async def users_sharing_rooms(self, user_id: str) -> set[str]:
        """Everyone joined to a room the user is joined to, the user included."""
        return await self._shared_rooms.get_users_sharing_rooms(user_id) | {user_id}

    # ----- changing --------------------------------------------------------------------------

    async def set_presence(
        self, requester: Requester, user_id: str, state: str, status_msg: str | None
    ) -> None:
        """PUT /presence/{userId}/status. A missing status message clears it."""
        split_user_id(user_id)
        if requester.user_id != user_id:
            raise MatrixError(403, Codes.FORBIDDEN, "You cannot set the presence of another user")
        if state not in PRESENCE_STATES:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid presence state {state!r}")
        if not self.enabled:
            return
        now = self._clock.time_msec()
        async with self._writers.queue(user_id):
            prev = await self.get_state(user_id)
            # Setting presence shows a client is connected, whether or not it syncs yet.
            new = prev.copy_and_replace(state=state, status_msg=status_msg, last_user_sync_ts=now)
            if state == ONLINE:
                new = new.copy_and_replace(last_active_ts=now, currently_active=True)
            else:
                new = new.copy_and_replace(currently_active=False)
            self._idle.discard(user_id)
            await self._update(prev, new)

    async def set_remote_presence(
        self,
        user_id: str,
        state: str,
        last_active_ago: int | None,
        currently_active: bool,
        status_msg: str | None,
    ) -> None:
        """Presence of another server's user, as its server told us (an m.presence EDU).
        Idle and sync timeouts are that server's business; ours only takes them offline
        when their server stops telling us about them (`REMOTE_PRESENCE_TIMEOUT_MS`; the
        time we last heard is kept as `last_user_sync_ts`)."""
        if not self.enabled or state not in PRESENCE_STATES:
            return
        now = self._clock.time_msec()
        async with self._writers.queue(user_id):
            prev = await self.get_state(user_id)
            last_active = now - max(last_active_ago or 0, 0)
            new = prev.copy_and_replace(
                state=state,
                status_msg=status_msg,
                last_active_ts=last_active if last_active_ago is not None else prev.last_active_ts,
                currently_active=currently_active and state == ONLINE,
                last_user_sync_ts=now,
            )
            await self._update(prev, new)

    def _is_mine(self, user_id: str) -> bool:
        return user_id.endswith(":" + self._server_name)

    async def bump_active(self, user_id: str) -> None:
        """The user did something pro-actively: record the time; unavailable becomes online."""
        if not self.enabled:
            return
        now = self._clock.time_msec()
        async with self._writers.queue(user_id):
            prev = await self.get_state(user_id)
            new = prev.copy_and_replace(last_active_ts=now)
            if prev.state == UNAVAILABLE:
                new = new.copy_and_replace(state=ONLINE)
            if new.state == ONLINE:
                new = new.copy_and_replace(currently_active=True)
            self._idle.discard(user_id)
            await self._update(prev, new)

    async def on_sync(self, user_id: str, set_presence: str | None) -> None:
        """A /sync request arrived with this `set_presence` (None means the default, online).

        "offline" leaves presence alone; "online" brings an offline user (or one who chose
        unavailable) online; "unavailable" marks the user unavailable.
        """
        state = ONLINE if set_presence is None else set_presence
        if state not in PRESENCE_STATES:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid set_presence {state!r}")
        if not self.enabled or state == OFFLINE:
            return
        now = self._clock.time_msec()
        async with self._writers.queue(user_id):
            prev = await self.get_state(user_id)
            new = prev.copy_and_replace(last_user_sync_ts=now)
            if state == ONLINE and (
                prev.state == OFFLINE or (prev.state == UNAVAILABLE and user_id not in self._idle)
            ):
                new = new.copy_and_replace(state=ONLINE, last_active_ts=now, currently_active=True)
            elif state == UNAVAILABLE and prev.state != UNAVAILABLE:
                new = new.copy_and_replace(state=UNAVAILABLE, currently_active=False)
                self._idle.discard(user_id)
            await self._update(prev, new)

    @asynccontextmanager
    async def syncing(self, user_id: str, set_presence: str | None) -> AsyncIterator[None]:
        """Wrap a whole /sync request: `on_sync` at the start, and while any sync is in
        flight the user cannot time out to offline. Preferred over calling `on_sync` alone."""
        counted = await self.start_syncing(user_id, set_presence)
        try:
            yield
        finally:
            if counted:
                self.stop_syncing(user_id)

    async def start_syncing(self, user_id: str, set_presence: str | None) -> bool:
        """The first half of `syncing`, for a sync held open for long (a WebSocket
        subscription), which then keeps no context manager: `on_sync`, and the user counted
        as syncing. Returns whether they were counted (not with "offline"): only then is
        `stop_syncing` due."""
        await self.on_sync(user_id, set_presence)
        if set_presence == OFFLINE or not self.enabled:
            return False
        self._syncing[user_id] = self._syncing.get(user_id, 0) + 1
        return True

    def stop_syncing(self, user_id: str) -> None:
        """The second half of `syncing`, after `start_syncing` returned True."""
        remaining = self._syncing[user_id] - 1
        if remaining:
            self._syncing[user_id] = remaining
        else:
            del self._syncing[user_id]
        # The sync timeout counts from the end of the last sync.
        state = self._states.get(user_id)
        if state is not None:
            self._states[user_id] = state.copy_and_replace(
                last_user_sync_ts=self._clock.time_msec()
            )

    async def check_timeouts(self, now_ms: int | None = None) -> None:
        """Apply the idle and sync timeouts to every user not offline (other servers' users:
        the timeout for not hearing of them), then write and let go of the offline users who
        changed since the last check; now and then, write the silent changes of the others
        and send our users' presence again (run periodically)."""
        now = self._clock.time_msec() if now_ms is None else now_ms
        for user_id in list(self._states):
            if not self._is_mine(user_id):
                await self._check_remote_timeout(user_id, now)
                continue
            async with self._writers.queue(user_id):
                prev = self._states.get(user_id)
                if prev is None:
                    continue  # went offline meanwhile
                new = prev
                if prev.state == ONLINE:
                    inactive_ms = now - prev.last_active_ts
                    if inactive_ms > self._config.idle_timeout_ms:
                        new = new.copy_and_replace(state=UNAVAILABLE, currently_active=False)
                        self._idle.add(user_id)
                    elif prev.currently_active and inactive_ms > LAST_ACTIVE_GRANULARITY_MS:
                        new = new.copy_and_replace(currently_active=False)
                if (
                    user_id not in self._syncing
                    and now - prev.last_user_sync_ts > self._config.sync_timeout_ms
                ):
                    new = new.copy_and_replace(state=OFFLINE, currently_active=False)
                    self._idle.discard(user_id)
                if new != prev:
                    await self._update(prev, new)
        save_not_offline = now - self._last_save_ms >= SAVE_ACTIVITY_INTERVAL_MS
        if save_not_offline:
            self._last_save_ms = now
        await self._save_unsaved(include_not_offline=save_not_offline)
        if now - self._last_repeat_ms >= PRESENCE_REPEAT_INTERVAL_MS:
            self._last_repeat_ms = now
            await self._repeat_to_other_servers()

    async def _check_remote_timeout(self, user_id: str, now: int) -> None:
        async with self._writers.queue(user_id):
            prev = self._states.get(user_id)
            if prev is None or now - prev.last_user_sync_ts <= REMOTE_PRESENCE_TIMEOUT_MS:
                return
            logger.info("no presence of %s for 30 minutes: taking them offline", user_id)
            await self._update(prev, prev.copy_and_replace(state=OFFLINE, currently_active=False))

    async def _repeat_to_other_servers(self) -> None:
        """Send our users' presence (those not offline) again to the servers they share
        rooms with: the sender keeps only the latest per user, so this costs one EDU each."""
        ours = [p for user_id, p in list(self._states.items()) if self._is_mine(user_id)]
        for presence in ours:
            for listener in self.local_change_listeners:
                await listener(presence)

    async def _save_unsaved(self, include_not_offline: bool) -> None:
        """Write offline users' silent changes (and, with `include_not_offline`, everyone's),
        and forget the offline users who did not change again meanwhile (reads then find them
        in the database)."""
        recent = dict(self._recent_offline)
        unsaved: list[UserPresence] = []
        for user_id in self._unsaved:
            presence = recent.get(user_id)
            if presence is None and include_not_offline:
                presence = self._states.get(user_id)
            if presence is not None:
                unsaved.append(presence)
        if unsaved:
            await self._store.store_presence_activity(unsaved)
        for presence in unsaved:
            # Unless it changed again while being written.
            if self._held(presence.user_id) is presence:
                self._unsaved.discard(presence.user_id)
        for user_id, presence in recent.items():
            if self._recent_offline.get(user_id) is presence:
                del self._recent_offline[user_id]
                self._dropped(presence)

    def _dropped(self, presence: UserPresence) -> None:
        for dropped in self._reads.values():
            dropped[presence.user_id] = presence

    def _hold(self, presence: UserPresence, saved: bool) -> None:
        """Make `presence` the user's current presence (`saved`: as written to the database)."""
        user_id = presence.user_id
        if presence.state != OFFLINE:
            self._states[user_id] = presence
            self._recent_offline.pop(user_id, None)
        else:
            self._states.pop(user_id, None)
            self._recent_offline[user_id] = presence
        if saved:
            self._unsaved.discard(user_id)
        else:
            self._unsaved.add(user_id)

    async def _check_timeouts_logged(self) -> None:
        try:
            await self.check_timeouts()
        except Exception:
            logger.exception("presence timeout check failed")

    async def _update(self, prev: UserPresence, new: UserPresence) -> None:
        """Hold `new` as the user's presence; if clients should hear of it, give it a stream
        position, persist it and notify everyone who shares a room with the user.

        Call with the user's writer lock held.
        """
        if not is_notable_change(prev, new):
            self._hold(new, saved=False)
            return
        # Read before the write: between the write ending and its publication nothing may
        # yield, or a sync could read the new position before the change index has it.
        sharing = await self.users_sharing_rooms(new.user_id)
        async with self._ids.next() as stream_id:
            new = new.copy_and_replace(stream_id=stream_id)
            await self._store.store_presence(new)
        self._hold(new, saved=True)
        await self._bus.publish(
            StreamUpdate.of("presence", stream_id, users=[new.user_id], wake=sharing, detail=new)
        )
        if self._is_mine(new.user_id):
            for listener in self.local_change_listeners:
                await listener(new)
        logger.info(
            "presence of %s: %s -> %s (position %d)", new.user_id, prev.state, new.state, stream_id
        )

    # ----- for sync --------------------------------------------------------------------------

    async def get_presence_events(
        self, user_id: str, since: int | None, up_to: int | None = None
    ) -> list[JsonDict]:
        """`m.presence` events for the user and everyone sharing a room with them.

        With `since` None (an initial sync): everyone not offline. Otherwise: everyone whose
        presence changed after `since` (and at or before `up_to`), offline included. (0 is a
        position like any other: a token taken before any presence changed.)
        """
        if not self.enabled:
            return []
        now = self._clock.time_msec()
        if since is None:
            states = await self.get_states(await self.users_sharing_rooms(user_id))
            return [self.format_event(p, now) for p in states.values() if p.state != OFFLINE]
        recently_changed = self._changes.all_changed_since(since)
        if recently_changed is not None:
            # Start from who changed (usually few), not from everyone the user shares a
            # room with: an incremental sync then costs what changed.
            if not recently_changed:
                return []
            candidates = {str(u) for u in recently_changed}
            changed: set[str] = await self._shared_rooms.get_users_sharing_rooms(
                user_id, among=candidates
            )
            if user_id in candidates:
                changed.add(user_id)
        else:
            # Too old for the in-memory index: ask the database who changed.
            interested = await self.users_sharing_rooms(user_id)
            rows = await self._store.get_presence_changed(interested, since, up_to)
            changed = {row.user_id for row in rows}
        states = await self.get_states([str(u) for u in changed])
        return [
            self.format_event(p, now)
            for p in states.values()
            if p.stream_id > since and (up_to is None or p.stream_id <= up_to)
        ]

    async def get_changed_presence_events(
        self, user_ids: Collection[str], since: int, up_to: int | None = None
    ) -> list[JsonDict]:
        """`m.presence` events of those of `user_ids` whose presence changed after `since`
        (and at or before `up_to`): for someone peeking into a room, its members'."""
        if not self.enabled or not user_ids:
            return []
        recently_changed = self._changes.all_changed_since(since)
        if recently_changed is not None:
            changed = {str(u) for u in recently_changed} & set(user_ids)
        else:
            rows = await self._store.get_presence_changed(set(user_ids), since, up_to)
            changed = {row.user_id for row in rows}
        if not changed:
            return []
        now = self._clock.time_msec()
        states = await self.get_states(list(changed))
        return [
            self.format_event(p, now)
            for p in states.values()
            if p.stream_id > since and (up_to is None or p.stream_id <= up_to)
        ]

    async def get_presence_events_for_users(self, user_ids: Iterable[str]) -> list[JsonDict]:
        """Current `m.presence` events of these users, whatever their state (e.g. for someone
        the syncing user has just come to share a room with)."""
        if not self.enabled:
            return []
        now = self._clock.time_msec()
        states = await self.get_states(list(user_ids))
        return [self.format_event(p, now) for p in states.values()]
