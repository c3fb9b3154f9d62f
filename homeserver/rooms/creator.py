"""Building, authorising and persisting locally created events, one writer per room."""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import (
    CREATE,
    MEMBER,
    REDACTION,
    AuthError,
    auth_types_for_event,
    check_auth_rules,
)
from homeserver.events.canonical import (
    CanonicalJsonError,
    check_canonical_values,
    encode_canonical_json,
)
from homeserver.events.hashing import room_id_from_create_event_id
from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import EventIdFormat, RoomVersion
from homeserver.events.signing import sign_event
from homeserver.linearizer import Linearizer
from homeserver.streams.bus import StreamBus, StreamUpdate
from storage.persister import ClientTransaction, EventContext, EventPersister, RebuildEvent
from storage.stores.events import EventStore, StoredEvent
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

MAX_EVENT_BYTES = 65536
MAX_IDENTIFIER_BYTES = 255
# An event cites at most this many forward extremities (the newest ones).
MAX_PREV_EVENTS = 10
# How many times an event is built before giving up when what it was built on keeps
# failing to persist.
MAX_BUILDS = 3


def _random_id(length: int = 18) -> str:
    return "".join(secrets.choice(string.ascii_letters) for _ in range(length))


class EventCreator:
    def __init__(
        self,
        server_name: str,
        signing_key: Any,
        clock: Clock,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        persister: EventPersister,
        bus: StreamBus,
        *,
        outbound_destinations: Callable[[Event], Awaitable[list[str]]] | None = None,
        remote_invite: Callable[[Event], Awaitable[Event]] | None = None,
    ) -> None:
        self._server_name = server_name
        self._signing_key = signing_key
        self._clock = clock
        self._events = events
        self._state = state
        self._rooms = rooms
        self._persister = persister
        # Each event that reached the room's timeline is published on the events stream with
        # its `StoredEvent` as detail (see `timeline_subscriber`).
        self._bus = bus
        self._writers = Linearizer("room_writer")
        # room -> (event ID, depth) of the room's newest event not yet known to be stored:
        # the next event's only prev_event (see `_send_once`).
        self._tips: dict[str, tuple[str, int]] = {}
        # Client transactions whose event is being stored -> requests with the same
        # transaction waiting for it.
        self._txns_in_flight: dict[tuple[str, str, str], list[defer.Deferred[StoredEvent]]] = {}
        # Federation (None when disabled): the servers a new local event goes to, queued
        # with the event; and having a remote invitee's server countersign an invite.
        self.outbound_destinations = outbound_destinations
        self.remote_invite = remote_invite

    @asynccontextmanager
    async def room_writer(self, room_id: str) -> AsyncIterator[None]:
        """The room's writer lock: held by whoever builds or persists an event of the room
        (local sends here, federated events in `federation.event_handler`), once the room's
        events in flight are stored (what it reads of the room is then what is stored)."""
        async with self._writers.queue(room_id):
            await self._persister.drain(room_id)
            self._tips.pop(room_id, None)
            yield

    def finish_event(self, pdu: dict[str, Any], room_version: RoomVersion) -> Event:
        """Sign and check a PDU built from a remote server's template (make_join etc.)."""
        return self._finish(pdu, room_version)

    async def persist_and_notify(
        self, room_id: str, event: Event, context: EventContext
    ) -> StoredEvent:
        """Persist an event (with the room's writer lock held) and wake its readers."""
        return await self._persist(room_id, event, context)

    async def notify_membership(self, stored: StoredEvent) -> None:
        """Wake the target of a membership stored outside the room's timeline (a remote
        invite, a knock or leave of a room we are not in)."""
        target = stored.event.state_key
        if target is None:
            return
        # No detail: it is not in the room's timeline, so nothing is sent on from here.
        await self._bus.publish(
            StreamUpdate.of(
                "events",
                stored.stream_ordering,
                rooms=[stored.event.room_id],
                users=[target],
                wake=[target],
            )
        )

    def _finish(self, pdu: dict[str, Any], room_version: RoomVersion) -> Event:
        """Sign, check size and canonical form, and wrap as an Event."""
        # Spec "Size limits": these identifiers are at most 255 bytes each.
        for key in ("type", "state_key", "sender", "room_id"):
            value = pdu.get(key)
            if isinstance(value, str) and len(value.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
                raise MatrixError(
                    400, Codes.BAD_JSON, f"Event '{key}' is longer than {MAX_IDENTIFIER_BYTES} bytes"
                )
        try:
            check_canonical_values(pdu)
        except CanonicalJsonError as e:
            raise MatrixError(400, Codes.BAD_JSON, f"Event is not canonical JSON: {e}") from None
        event_id = None
        if room_version.event_id_format is EventIdFormat.RANDOM_WITH_DOMAIN:
            event_id = f"${_random_id()}:{self._server_name}"
            pdu["event_id"] = event_id
        sign_event(pdu, self._server_name, self._signing_key, room_version)
        encoded = encode_canonical_json(pdu)
        if len(encoded) > MAX_EVENT_BYTES:
            raise MatrixError(413, Codes.TOO_LARGE, f"Event is larger than {MAX_EVENT_BYTES} bytes")
        return Event(pdu, room_version, event_id=event_id, canonical=encoded)

    def new_room_id(self) -> str:
        """A fresh room ID for a room version whose room IDs are not create event hashes."""
        return f"!{_random_id()}:{self._server_name}"

    async def create_room(
        self,
        room_version: RoomVersion,
        sender: str,
        content: Mapping[str, Any],
        is_public: bool,
        room_id: str | None = None,
    ) -> tuple[str, StoredEvent]:
        """Create the room row and its m.room.create event; returns (room_id, event).

        `room_id` (from `new_room_id`) is for a caller that must name the room before it
        exists (a room upgrade's tombstone); room versions whose room ID is the create
        event's hash take none."""
        pdu: dict[str, Any] = {
            "type": CREATE,
            "state_key": "",
            "sender": sender,
            "content": dict(content),
            "origin_server_ts": self._clock.time_msec(),
            "prev_events": [],
            "auth_events": [],
            "depth": 1,
        }
        if room_version.room_id_is_create_hash:
            if room_id is not None:
                raise ValueError(f"room version {room_version.identifier} names its own rooms")
        else:
            pdu["room_id"] = room_id if room_id is not None else self.new_room_id()
        event = self._finish(pdu, room_version)
        room_id = (
            room_id_from_create_event_id(event.event_id)
            if room_version.room_id_is_create_hash
            else pdu["room_id"]
        )
        try:
            check_auth_rules(event, {})
        except AuthError as e:
            raise MatrixError(400, Codes.BAD_JSON, f"Invalid create event: {e}") from None
        await self._rooms.store_room(
            room_id, room_version.identifier, sender, is_public, self._clock.time_msec()
        )
        async with self._writers.queue(room_id):
            stored = await self._persist(room_id, event, EventContext(state_group_before=None))
        return room_id, stored

    async def send(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        txn: ClientTransaction | None = None,
        extra: Mapping[str, Any] | None = None,
        before_persist: Callable[[Event], Awaitable[None]] | None = None,
    ) -> StoredEvent:
        """Build, authorise against the current state, and persist an event in `room_id`.

        403 M_FORBIDDEN when the auth rules refuse it. With `txn`, a retry of the same
        (user, device, transaction ID) returns the event the first attempt created.
        `before_persist` is awaited with the built, authorised event (its ID known) before it
        is persisted, with the room's writer held, so nothing else enters the room
        meanwhile; if it raises, the event is dropped.
        """
        if event_type == REDACTION and state_key is not None:
            # A "state" redaction would be stored, and served, as a redaction of whatever
            # it names, bypassing every redaction check.
            raise MatrixError(400, Codes.BAD_JSON, "m.room.redaction cannot be a state event")
        room_version = await self._events.get_room_version(room_id)
        if room_version is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        for attempt in range(1, MAX_BUILDS + 1):
            try:
                return await self._send_once(
                    room_id, room_version, sender, event_type, content, state_key, txn, extra,
                    before_persist,
                )
            except RebuildEvent:
                # An event it was built on failed to persist: build it again.
                if attempt == MAX_BUILDS:
                    raise
                logger.info("%s: building an event of %s again", room_id, sender)
        raise AssertionError("unreachable")

    async def _send_once(
        self,
        room_id: str,
        room_version: RoomVersion,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None,
        txn: ClientTransaction | None,
        extra: Mapping[str, Any] | None,
        before_persist: Callable[[Event], Awaitable[None]] | None,
    ) -> StoredEvent:
        txn_key = (txn.user_id, txn.device_id, txn.path_key) if txn is not None else None
        same_txn: defer.Deferred[StoredEvent] | None = None
        async with self._writers.queue(room_id):
            if self._persister.pending(room_id) and (
                room_id not in self._tips or state_key is not None
            ):
                # Events of the room are in flight but none is known to be the tip (one
                # failed): wait for them, then build on what was stored. A state event
                # always waits: its ID may leave the process before it is stored (a room
                # upgrade's tombstone is named by the new room, an invite is countersigned
                # by the invitee's server), so it must not be built on a message that may
                # yet fail and have it built again under another ID.
                await self._persister.drain(room_id)
            if txn_key is not None:
                # The caller looked in the database before taking the lock; what a
                # concurrent request with the same transaction stored since then was stored
                # by this process (the only writer), which remembers it, or is in flight.
                existing = self._events.cached_event_for_txn(*txn_key)
                if existing is not None:
                    stored = await self._events.get_stored_event(existing[1])
                    if stored is not None:
                        return stored
                if txn_key in self._txns_in_flight:
                    same_txn = defer.Deferred()
                    self._txns_in_flight[txn_key].append(same_txn)
            if same_txn is None:
                current = await self._state.get_current_state_ids(room_id)
                pdu = await self.build_pdu(
                    room_id, room_version, sender, event_type, content, state_key, current
                )
                if extra:
                    pdu.update(extra)
                event = self._finish(pdu, room_version)
                await self._check_auth(event, current)
                if before_persist is not None:
                    await before_persist(event)
                if (
                    self.remote_invite is not None
                    and event.type == MEMBER
                    and event.membership == "invite"
                    and event.state_key is not None
                    and event.state_key.split(":", 1)[-1] != self._server_name
                ):
                    # The invitee's server countersigns before the invite enters the room.
                    event = await self.remote_invite(event)
                context = EventContext(
                    state_group_before=await self._events.get_current_state_group(room_id),
                    replaces_state=current.get(event.state_tuple) if event.is_state else None,
                    txn=txn,
                )
                if self.outbound_destinations is not None:
                    context.outbound_destinations = tuple(await self.outbound_destinations(event))
                if event.is_state:
                    # The next event is authorised against the state this one changes: the
                    # lock is held until it is stored.
                    return await self._persist(room_id, event, context)
                # Anything else leaves the state as it is: the next event can be built on
                # this one (the tip) while it waits to be written, and written with it.
                queued = self._persister.enqueue(event, context)
                self._tips[room_id] = (event.event_id, event.depth)
                if txn_key is not None:
                    self._txns_in_flight[txn_key] = []
        if same_txn is not None:
            # Answered once the first request's event is stored.
            return await same_txn
        try:
            stored = await queued
        except Exception as e:
            # What it was built on is in doubt: the next sender waits for the room's events
            # in flight and builds on what was stored.
            self._tips.pop(room_id, None)
            for waiter in self._txns_in_flight.pop(txn_key, []) if txn_key else []:
                waiter.errback(RebuildEvent(str(e)))
            raise
        if self._tips.get(room_id, ("",))[0] == event.event_id:
            del self._tips[room_id]
        for waiter in self._txns_in_flight.pop(txn_key, []) if txn_key else []:
            waiter.callback(stored)
        return await self._announce(room_id, event, context, stored)

    async def build_pdu(
        self,
        room_id: str,
        room_version: RoomVersion,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None,
        current: Mapping[StateKey, str],
        on_tip: bool = True,
    ) -> dict[str, Any]:
        """An unsigned PDU on top of the room's forward extremities, citing its auth events
        from `current` (also the template a joining server gets from make_join).

        `on_tip`: built on the message still being written, if any (a send holding the
        room's lock). Without the lock (make_join's template), only on what is stored: the
        message in flight may yet fail, and be built again under another ID."""
        tip = self._tips.get(room_id) if on_tip else None
        extremities = [tip] if tip else await self._events.get_forward_extremities(room_id)
        extremities.sort(key=lambda e: e[1], reverse=True)
        prev = extremities[:MAX_PREV_EVENTS]
        depth = max((d for _, d in prev), default=0) + 1
        auth_keys = auth_types_for_event(event_type, sender, state_key, content, room_version)
        pdu: dict[str, Any] = {
            "room_id": room_id,
            "type": event_type,
            "sender": sender,
            "content": dict(content),
            "origin_server_ts": self._clock.time_msec(),
            "prev_events": [eid for eid, _ in prev],
            "auth_events": [current[k] for k in auth_keys if k in current],
            "depth": depth,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if room_version.event_id_format is EventIdFormat.RANDOM_WITH_DOMAIN:
            # v1/v2 cite events with their hashes.
            stored = await self._events.get_events(pdu["prev_events"] + pdu["auth_events"])
            pdu["prev_events"] = [[e, stored[e].pdu.get("hashes", {})] for e in pdu["prev_events"]]
            pdu["auth_events"] = [[e, stored[e].pdu.get("hashes", {})] for e in pdu["auth_events"]]
        return pdu

    async def check_allowed(
        self, room_id: str, sender: str, event_type: str, content: Mapping[str, Any],
        state_key: str | None = None,
    ) -> None:
        """403 M_FORBIDDEN unless `sender` may send this event now (nothing is persisted):
        a permission check before work that only makes sense if the event can follow."""
        room_version = await self._events.get_room_version(room_id)
        if room_version is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        current = await self._state.get_current_state_ids(room_id)
        pdu = await self.build_pdu(
            room_id, room_version, sender, event_type, content, state_key, current
        )
        await self._check_auth(self._finish(pdu, room_version), current)

    async def check_auth(self, event: Event, current: Mapping[StateKey, str]) -> None:
        """403 M_FORBIDDEN unless the auth rules allow `event` against `current`."""
        await self._check_auth(event, current)

    async def _check_auth(self, event: Event, current: Mapping[StateKey, str]) -> None:
        rv = event.room_version
        keys = auth_types_for_event(event.type, event.sender, event.state_key, event.content, rv)
        wanted = {k: current[k] for k in keys if k in current}
        create_id = current.get((CREATE, ""))
        if create_id is not None:
            wanted[(CREATE, "")] = create_id
        loaded = await self._events.get_events(wanted.values())
        state = {k: loaded[eid] for k, eid in wanted.items() if eid in loaded}
        try:
            check_auth_rules(event, state, create_event=state.get((CREATE, "")))
        except AuthError as e:
            raise MatrixError(403, Codes.FORBIDDEN, str(e)) from None

    async def _persist(self, room_id: str, event: Event, context: EventContext) -> StoredEvent:
        stored = await self._persister.persist(event, context)
        return await self._announce(room_id, event, context, stored)

    async def _announce(
        self, room_id: str, event: Event, context: EventContext, stored: StoredEvent
    ) -> StoredEvent:
        """Publish a stored event on the events stream (sync, federation, pushers)."""
        if stored.outlier or context.backfilled or event.rejected_reason is not None:
            # Nothing a client syncs on moved.
            return stored
        # Users whose membership changed (the events stream's index by user). The target of a
        # member event may no longer be joined (a leave, a kick) but must hear of it.
        members: set[str] = set()
        target: list[str] = []
        if event.type == MEMBER and event.state_key is not None:
            members.add(event.state_key)
            target.append(event.state_key)
        if context.current_state is not None:
            # A wholesale state change (resolved forks, a remote join) may change anyone's
            # membership; local users' memberships are what sync caches.
            members.update(key[1] for key in context.current_state if key[0] == MEMBER)
        await self._bus.publish(
            StreamUpdate.of(
                "events",
                stored.stream_ordering,
                rooms=[room_id],
                users=members,
                wake=target,
                detail=stored,
            )
        )
        return stored


def timeline_subscriber(
    callback: Callable[[StoredEvent], Awaitable[None]],
) -> Callable[[StreamUpdate], Awaitable[None]]:
    """A stream-bus subscriber calling `callback(stored)` for each event that reached its
    room's timeline (subscribe it to the events stream)."""

    async def on_update(update: StreamUpdate) -> None:
        if isinstance(update.detail, StoredEvent):
            await callback(update.detail)

    return on_update
