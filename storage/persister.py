"""Writing an event: one transaction for the event, its edges, state and stream position.

Callers serialise writes per room (`homeserver.rooms.EventCreator` holds a per-room lock), so
prev_events, depth and current state stay consistent. Persist first, notify after: a crash
between the two loses nothing, as sync reads from the database.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import defer

from homeserver.events.canonical import encode_canonical_json
from homeserver.events.model import Event
from homeserver.events.types import MEMBER
from storage.database import Database, Transaction
from storage.stores.events import EventStore, StoredEvent, redactions_held_txn
from storage.stores.federation_queue import FederationQueueStore
from storage.stores.push_actions import PushActionBatch, PushActionStore
from storage.stores.relations import (
    INSERT_RELATION_SQL,
    forget_redacted_relation_txn,
    relation_rows,
    store_relation_txn,
)
from storage.stores.room_admin import (
    note_current_state_change_txn,
    refresh_if_listed_txn,
    refresh_room_summaries_txn,
)
from storage.stores.search import (
    INSERT_SEARCH_SQL,
    forget_redacted_search_txn,
    index_event_txn,
    search_rows,
)
from storage.stores.state import (
    StateKey,
    StateStore,
    create_state_group_txn,
    load_group_txn,
)
from storage.stream_ids import StreamIdGenerator

logger = logging.getLogger(__name__)

# At most this many queued events are written in one transaction.
MAX_BATCH = 100
# Failed events remembered so that events built on them are built again (see
# `RebuildEvent`); failures are rare, and a later event cites one within moments.
FAILED_REMEMBERED = 1000

INSERT_EVENT_SQL = (
    "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender,"
    " topological_ordering, origin_server_ts, json, internal_metadata, rejected_reason,"
    " outlier, state_group_before, state_group_after)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_TXN_ID_SQL = (
    "INSERT INTO event_txn_ids (user_id, device_id, txn_id, room_id, event_id, inserted_ts)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)

# A user's latest membership of a room. `membership_stream_ordering` only moves when the
# membership itself changes (not for a joined member's new display name).
UPSERT_MEMBERSHIP_SQL = (
    "INSERT INTO room_memberships (room_id, user_id, event_id, membership,"
    " stream_ordering, forgotten, membership_stream_ordering) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (room_id, user_id) DO UPDATE SET event_id = excluded.event_id,"
    " membership = excluded.membership, stream_ordering = excluded.stream_ordering,"
    " forgotten = excluded.forgotten,"
    " membership_stream_ordering = CASE"
    " WHEN room_memberships.membership = excluded.membership"
    " THEN room_memberships.membership_stream_ordering"
    " ELSE excluded.membership_stream_ordering END"
)


@dataclass(frozen=True)
class ClientTransaction:
    """A client's PUT with a transaction ID: retries of the same path by the same device
    are the same request (spec: "Transaction identifiers")."""

    user_id: str
    device_id: str
    # The request path, transaction ID included: e.g. "send/!r:x/m.room.message/abc".
    path_key: str
    txn_id: str


@dataclass
class EventContext:
    """What persisting an event needs to know beyond the event itself."""

    # State group of the state before the event (None only for the create event).
    state_group_before: int | None
    # The event the new one replaces in state, if any (becomes unsigned.replaces_state).
    replaces_state: str | None = None
    # The client transaction that created the event, for idempotent retries and echoes.
    txn: ClientTransaction | None = None
    # Whether the event moves the room's current state on (false for outliers and for
    # events that do not extend the current forward extremities).
    updates_current_state: bool = True
    outlier: bool = False
    internal_metadata: dict = field(default_factory=dict)
    # Federation: the full state before the event when no stored group holds it (state
    # resolved across several prev_events, or learned from another server); stored as a new
    # group, a delta against `state_before_base` when given.
    state_before: Mapping[StateKey, str] | None = None
    state_before_base: int | None = None
    # Federation: the room's whole current state after this event, when it is not simply the
    # previous current state plus this event (forks resolved, a remote join's state).
    current_state: Mapping[StateKey, str] | None = None
    # Passed the auth rules against the state before it but not against the current state:
    # kept (with its state, for later events citing it) but hidden from clients and not a
    # forward extremity (spec: "Soft failure").
    soft_failed: bool = False
    # Old history fetched from another server: below every sync position, and no effect on
    # forward extremities or current state.
    backfilled: bool = False
    # Federation: an outlier row with this event ID may exist and is to be replaced.
    replace_outlier: bool = False
    # Federation: servers to send the event to, queued in the same transaction so a crash
    # after the commit cannot lose the delivery.
    outbound_destinations: tuple[str, ...] = ()


class RebuildEvent(Exception):
    """The event cites (as a prev_event) an event that failed to persist, so it was not
    written: nothing is stored, and the caller builds it again on what the room holds."""


class PushActionSource(Protocol):
    """Push rules applied to an event (`homeserver.push.actions.PushActionGenerator`):
    computed before the event's transaction, written in it, announced after its commit."""

    async def for_event(
        self, event: Event, context: EventContext
    ) -> PushActionBatch | None: ...

    def committed(self, event: Event, stream_ordering: int, batch: PushActionBatch) -> None: ...

    def commit_uncertain(self, event: Event, batch: PushActionBatch) -> None: ...


class IdAllocator:
    """Plain increasing IDs (state groups) for this process; see stream_ids for the caveat.

    With `step=-1`, decreasing IDs: the stream positions of outliers and backfilled events,
    which sit below every position a sync token can hold so sync never reports them.
    """

    def __init__(self, current: int = 0, step: int = 1) -> None:
        self._current = current
        self._step = step

    def initialise(self, current: int) -> None:
        self._current = current

    def next(self) -> int:
        self._current += self._step
        return self._current


class EventPersister:
    def __init__(
        self,
        db: Database,
        events: EventStore,
        state: StateStore,
        event_stream: StreamIdGenerator,
        state_group_ids: IdAllocator,
        backfill_ids: IdAllocator | None = None,
        push_actions: PushActionSource | None = None,
        *,
        server_name: str,
    ) -> None:
        self._db = db
        # Whose members are local, for the admin room list's summary of each room.
        self._server_name = server_name
        self._push_actions = push_actions
        self._events = events
        self._state = state
        self._stream = event_stream
        self._state_group_ids = state_group_ids
        self._backfill_ids = backfill_ids or IdAllocator(0, step=-1)
        # Events waiting to be written (see `enqueue`), and how many of each room are
        # queued or being written.
        self._queue: list[_Queued] = []
        self._writing = False
        self._pending: dict[str, int] = {}
        self._idle_waiters: dict[str, list[defer.Deferred[None]]] = {}
        self._failed: OrderedDict[str, None] = OrderedDict()

    async def persist_outliers(self, events: Iterable[Event]) -> None:
        """Store events whose state we do not know (a remote room's auth chain and state,
        auth events fetched on demand) in one transaction; ones already held are skipped."""
        rows = []
        for event in events:
            rows.append((self._backfill_ids.next(), event))
        if not rows:
            return
        await self._db.run_interaction("persist_outliers", self._persist_outliers_txn, rows)

    async def persist_out_of_room_membership(
        self, event: Event, metadata: dict
    ) -> StoredEvent:
        """A local user's membership in a room we hold no state for (an invite from another
        server, a knock or leave we sent): stored as an outlier, but with a position in the
        events stream and the user's membership row, so sync reports it."""
        async with self._stream.next() as stream_ordering:
            await self._db.run_interaction(
                "persist_out_of_room_membership",
                self._out_of_room_membership_txn,
                event,
                metadata,
                stream_ordering,
            )
        return StoredEvent(event, stream_ordering, event.depth, metadata, True)

    def _out_of_room_membership_txn(
        self, txn: Transaction, event: Event, metadata: dict, stream_ordering: int
    ) -> None:
        assert event.state_key is not None and event.membership is not None
        txn.execute("DELETE FROM events WHERE event_id = ? AND outlier = ?", (event.event_id, True))
        txn.execute(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender,"
            " topological_ordering, origin_server_ts, json, internal_metadata, rejected_reason,"
            " outlier, state_group_before, state_group_after)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (stream_ordering, event.event_id, event.room_id, event.type, event.state_key,
             event.sender, event.depth, event.origin_server_ts,
             encode_canonical_json(event.pdu).decode("utf-8"), json.dumps(metadata), None,
             True, None, None),
        )
        txn.execute(
            UPSERT_MEMBERSHIP_SQL,
            (event.room_id, event.state_key, event.event_id, event.membership, stream_ordering,
             False, stream_ordering),
        )

    def _persist_outliers_txn(self, txn: Transaction, rows: list[tuple[int, Event]]) -> None:
        known = {
            r[0]
            for r in txn.select_in_chunks(
                "SELECT event_id FROM events WHERE event_id IN ({in})",
                [event.event_id for _, event in rows],
            )
        }
        fresh = [(pos, ev) for pos, ev in rows if ev.event_id not in known]
        # The same event twice in one batch is stored once.
        unique: dict[str, tuple[int, Event]] = {}
        for pos, ev in fresh:
            unique.setdefault(ev.event_id, (pos, ev))
        txn.execute_many(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender,"
            " topological_ordering, origin_server_ts, json, internal_metadata, rejected_reason,"
            " outlier, state_group_before, state_group_after)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (pos, ev.event_id, ev.room_id, ev.type, ev.state_key, ev.sender, ev.depth,
                 ev.origin_server_ts, encode_canonical_json(ev.pdu).decode("utf-8"), "{}",
                 ev.rejected_reason, True, None, None)
                for pos, ev in unique.values()
            ],
        )
        txn.execute_many(
            "INSERT INTO event_edges (event_id, prev_event_id, room_id) VALUES (?, ?, ?)",
            [(ev.event_id, prev, ev.room_id) for _, ev in unique.values()
             for prev in dict.fromkeys(ev.prev_event_ids)],
        )
        txn.execute_many(
            "INSERT INTO event_auth (event_id, auth_id, room_id) VALUES (?, ?, ?)",
            [(ev.event_id, auth, ev.room_id) for _, ev in unique.values()
             for auth in dict.fromkeys(ev.auth_event_ids)],
        )

    async def persist(self, event: Event, context: EventContext) -> StoredEvent:
        """Store the event; returns it with its stream position and state group after."""
        if context.backfilled:
            return await self._persist_backfilled(event, context)
        return await self.enqueue(event, context)

    def enqueue(self, event: Event, context: EventContext) -> defer.Deferred[StoredEvent]:
        """Queue the event to be written after those queued before it; the Deferred fires
        with it stored (or fails: `RebuildEvent` if it cites an event that failed).

        Events queue up behind the transaction being written, and as many as are queued
        then (up to `MAX_BATCH`, of any rooms) are written together, in queue order, in one
        transaction: its commit acknowledges them all. A failing transaction is written
        again one event per transaction, so an event that cannot be stored fails alone.
        """
        assert not context.backfilled
        item = self._prepare(event, context)
        self._queue.append(item)
        self._pending[event.room_id] = self._pending.get(event.room_id, 0) + 1
        if not self._writing:
            self._writing = True
            defer.ensureDeferred(self._write_queue())
        return item.done

    def pending(self, room_id: str) -> int:
        """How many events of the room are queued or being written."""
        return self._pending.get(room_id, 0)

    async def drain(self, room_id: str) -> None:
        """Wait until no event of the room is queued or being written."""
        if self._pending.get(room_id):
            idle: defer.Deferred[None] = defer.Deferred()
            self._idle_waiters.setdefault(room_id, []).append(idle)
            await idle

    def _prepare(self, event: Event, context: EventContext) -> _Queued:
        groups = _NewGroups()
        if context.state_before is not None and context.state_group_before is None:
            groups.before = self._state_group_ids.next()
        state_group_after = (
            groups.before if groups.before is not None else context.state_group_before
        )
        new_group: int | None = None
        if event.is_state and event.rejected_reason is None and not context.outlier:
            new_group = self._state_group_ids.next()
            state_group_after = new_group
        if context.current_state is not None:
            groups.current = self._state_group_ids.next()
        groups.current_known, groups.known_current = self._events.cached_state_group(
            event.room_id
        )
        metadata = dict(context.internal_metadata)
        if context.soft_failed:
            metadata["soft_failed"] = True
        if context.txn is not None:
            metadata["txn_id"] = context.txn.txn_id
            metadata["device_id"] = context.txn.device_id
        if context.replaces_state is not None:
            metadata["replaces_state"] = context.replaces_state
        return _Queued(event, context, new_group, state_group_after, metadata, groups)

    async def _persist_backfilled(self, event: Event, context: EventContext) -> StoredEvent:
        item = self._prepare(event, context)
        stream_ordering = self._backfill_ids.next()
        try:
            await self._db.run_interaction(
                "persist_backfilled_event", self._persist_txn, event, context,
                stream_ordering, item.new_group, item.state_group_after, item.metadata,
                item.groups,
            )
        except Exception:
            self._forget_uncertain_redaction(event)
            raise
        return StoredEvent(event, stream_ordering, event.depth, item.metadata, context.outlier)

    async def _write_queue(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    await self._write_batch(batch)
                except Exception as e:  # not expected: each event's outcome is its own
                    logger.exception("writing queued events failed")
                    for item in batch:
                        if not item.done.called:
                            self._finished(item, e)
        finally:
            self._writing = False

    async def _write_batch(self, batch: list[_Queued]) -> None:
        # An event citing one that failed (earlier in the queue) is built again instead.
        ready = []
        for item in batch:
            if any(prev in self._failed for prev in item.event.prev_event_ids):
                self._note_failed(item.event.event_id)
                self._finished(item, RebuildEvent(item.event.event_id))
            else:
                ready.append(item)
        if not ready:
            return
        for item in ready:
            item.push = await self._push_actions_for(item.event, item.context)
        positions = self._stream.reserve(len(ready))
        for item, position in zip(ready, positions, strict=True):
            item.stream_ordering = position
        outcomes: list[tuple[_Queued, Exception | None]] = []
        released: set[int] = set()
        try:
            try:
                await self._db.run_interaction("persist_event", self._persist_batch_txn, ready)
                outcomes = [(item, None) for item in ready]
            except Exception as e:
                if len(ready) == 1:
                    outcomes = [(ready[0], e)]
                else:
                    # One event at a time: only the one that cannot be stored fails.
                    logger.warning("writing %d events at once failed (%s); one by one",
                                   len(ready), e)
                    outcomes = await self._write_one_by_one(ready)
            for item, error in outcomes:
                if error is None:
                    if item.push is not None and self._push_actions is not None:
                        # Before the position becomes current and the caller publishes
                        # the event: the sync that serves the event serves its count.
                        self._push_actions.committed(
                            item.event, item.stream_ordering, item.push
                        )
                else:
                    self._uncertain(item)
            # One position at a time, in order, each made current just before its sender
            # hears of it (and publishes the event): a sync woken by one event of the batch
            # is then answered up to that event, and finds its room in the change index.
            # Making the whole batch current first would let that sync answer with a token
            # past later events, of other rooms, not yet published, and never serve them.
            for item, error in outcomes:
                position = item.stream_ordering
                self._stream.release([position], unwritten=[position] if error else [])
                released.add(position)
                self._finished(item, error)
        finally:
            rest = [p for p in positions if p not in released]
            if rest:
                failed = {item.stream_ordering for item, error in outcomes if error is not None}
                self._stream.release(
                    rest, unwritten=[p for p in rest if p in failed or not outcomes]
                )

    async def _write_one_by_one(
        self, items: list[_Queued]
    ) -> list[tuple[_Queued, Exception | None]]:
        outcomes: list[tuple[_Queued, Exception | None]] = []
        failed: set[str] = set()
        for item in items:
            error: Exception | None = None
            if any(prev in failed for prev in item.event.prev_event_ids):
                error = RebuildEvent(item.event.event_id)
            else:
                try:
                    await self._db.run_interaction(
                        "persist_event", self._persist_batch_txn, [item]
                    )
                except Exception as e:
                    logger.warning("persisting %s failed: %s", item.event.event_id, e)
                    error = e
            if error is not None:
                failed.add(item.event.event_id)
            outcomes.append((item, error))
        return outcomes

    def _uncertain(self, item: _Queued) -> None:
        """After a failed write: the commit may have happened (a connection lost while
        committing), so what is cached about the room cannot be trusted either way."""
        event = item.event
        self._note_failed(event.event_id)
        self._state.invalidate_current_state(event.room_id)
        self._events.forget_dag_tip(event.room_id)
        self._forget_uncertain_redaction(event)
        if item.push is not None and self._push_actions is not None:
            self._push_actions.commit_uncertain(event, item.push)

    def _note_failed(self, event_id: str) -> None:
        self._failed[event_id] = None
        while len(self._failed) > FAILED_REMEMBERED:
            self._failed.popitem(last=False)

    def _finished(self, item: _Queued, error: Exception | None) -> None:
        room_id = item.event.room_id
        left = self._pending.get(room_id, 1) - 1
        if left > 0:
            self._pending[room_id] = left
        else:
            self._pending.pop(room_id, None)
        if error is None:
            item.done.callback(
                StoredEvent(
                    item.event, item.stream_ordering, item.event.depth, item.metadata,
                    item.context.outlier or item.context.soft_failed,
                )
            )
        else:
            item.done.errback(error)
        if left <= 0:
            for idle in self._idle_waiters.pop(room_id, []):
                idle.callback(None)

    def _persist_batch_txn(self, txn: Transaction, items: list[_Queued]) -> None:
        """Write queued events in order: runs of plain timeline events (see `_is_plain`) a
        statement per table, any other event on its own."""
        run: list[_Queued] = []
        for item in items:
            if _is_plain(item):
                run.append(item)
                continue
            if run:
                self._persist_plain_txn(txn, run)
                run = []
            self._persist_txn(
                txn, item.event, item.context, item.stream_ordering, item.new_group,
                item.state_group_after, item.metadata, item.groups, item.push,
            )
        if run:
            self._persist_plain_txn(txn, run)

    def _persist_plain_txn(self, txn: Transaction, items: list[_Queued]) -> None:
        """What `_persist_txn` writes for each of `items` (plain timeline events, in order),
        with one statement per table for all of them."""
        txn.execute_many(
            INSERT_EVENT_SQL,
            [
                (item.stream_ordering, item.event.event_id, item.event.room_id, item.event.type,
                 None, item.event.sender, item.event.depth, item.event.origin_server_ts,
                 item.event.canonical_json(), json.dumps(item.metadata), None, False,
                 item.context.state_group_before, item.state_group_after)
                for item in items
            ],
        )
        txn.execute_many(
            "INSERT INTO event_edges (event_id, prev_event_id, room_id) VALUES (?, ?, ?)",
            [(item.event.event_id, prev, item.event.room_id)
             for item in items for prev in item.event.prev_event_ids],
        )
        txn.execute_many(
            "INSERT INTO event_auth (event_id, auth_id, room_id) VALUES (?, ?, ?)",
            [(item.event.event_id, auth, item.event.room_id)
             for item in items for auth in item.event.auth_event_ids],
        )
        with_txn = [item for item in items if item.context.txn is not None]
        txn.execute_many(
            INSERT_TXN_ID_SQL,
            [(item.context.txn.user_id, item.context.txn.device_id, item.context.txn.path_key,
              item.event.room_id, item.event.event_id, item.event.origin_server_ts)
             for item in with_txn if item.context.txn is not None],
        )
        FederationQueueStore.enqueue_pdus_txn(
            txn,
            [(dest, item.stream_ordering, item.event.event_id, item.event.room_id)
             for item in items for dest in item.context.outbound_destinations],
        )
        # Backward extremities: prevs held neither in the database nor earlier in the run
        # become ones (as `_update_backward_extremities_txn` would find, event by event);
        # the events written stop being ones.
        written = {item.event.event_id for item in items}
        outside = list(dict.fromkeys(
            prev for item in items for prev in item.event.prev_event_ids if prev not in written
        ))
        held = {
            row[0]
            for row in txn.select_in_chunks(
                "SELECT event_id FROM events WHERE event_id IN ({in}) AND outlier = ?",
                outside, args_after=(False,),
            )
        }
        seen: set[str] = set()
        missing: dict[tuple[str, str], None] = {}
        for item in items:
            for prev in item.event.prev_event_ids:
                if prev not in held and prev not in seen:
                    missing[(item.event.room_id, prev)] = None
            seen.add(item.event.event_id)
        txn.execute_many(
            "INSERT INTO event_backward_extremities (room_id, event_id) VALUES (?, ?)"
            " ON CONFLICT (room_id, event_id) DO NOTHING",
            list(missing),
        )
        txn.execute_many(
            "DELETE FROM event_backward_extremities WHERE room_id = ? AND event_id = ?",
            [(item.event.room_id, item.event.event_id) for item in items],
        )
        redacted = redactions_held_txn(txn, [item.event for item in items])
        kept = [(item.event, item.stream_ordering) for item in items
                if item.event.event_id not in redacted]
        txn.execute_many(INSERT_RELATION_SQL, relation_rows(kept))
        txn.execute_many(INSERT_SEARCH_SQL, search_rows(kept))
        PushActionStore.insert_many_txn(
            txn,
            [(item.event.room_id, item.event.event_id, item.stream_ordering, item.push)
             for item in items if item.push is not None],
        )
        # Forward extremities: each event replaces its prevs; only the net change is written.
        removed: dict[tuple[str, str], None] = {}
        added: dict[tuple[str, str], None] = {}
        for item in items:
            room_id = item.event.room_id
            for prev in item.event.prev_event_ids:
                if (room_id, prev) in added:
                    del added[(room_id, prev)]
                else:
                    removed[(room_id, prev)] = None
            added[(room_id, item.event.event_id)] = None
        txn.execute_many(
            "DELETE FROM event_forward_extremities WHERE room_id = ? AND event_id = ?",
            list(removed),
        )
        txn.execute_many(
            "INSERT INTO event_forward_extremities (room_id, event_id) VALUES (?, ?)",
            list(added),
        )
        # The room's state group, where it is not known to be the event's already.
        groups: dict[str, int | None] = {}
        for item in items:
            if item.context.updates_current_state:
                known = item.groups.current_known and (
                    item.groups.known_current == item.state_group_after
                )
                if known:
                    groups.pop(item.event.room_id, None)
                else:
                    groups[item.event.room_id] = item.state_group_after
        txn.execute_many(
            "UPDATE rooms SET current_state_group = ? WHERE room_id = ?",
            [(group, room_id) for room_id, group in groups.items()],
        )
        for item in items:
            event, client_txn = item.event, item.context.txn
            if client_txn is not None:
                txn.call_after(
                    self._events.txn_stored, client_txn.user_id, client_txn.device_id,
                    client_txn.path_key, event.room_id, event.event_id,
                )
            txn.call_after(
                self._events.dag_tip_moved, event.room_id, event.prev_event_ids,
                (event.event_id, event.depth), item.state_group_after,
                item.context.updates_current_state,
            )

    async def _push_actions_for(
        self, event: Event, context: EventContext
    ) -> PushActionBatch | None:
        """The push actions to write with the event. A failure here is logged and the event
        stored without them: sending must not depend on anyone's push rules."""
        if self._push_actions is None or context.backfilled:
            return None
        try:
            return await self._push_actions.for_event(event, context)
        except Exception:
            logger.exception("Computing push actions for %s failed", event.event_id)
            return None

    def _forget_uncertain_redaction(self, event: Event) -> None:
        """After a failed persist: a redaction's row may have been committed all the same (a
        connection lost while committing), so what is cached about its target is in doubt."""
        redacts = _stored_as_redaction(event)
        if redacts is not None:
            self._events.forget_redactions_of(redacts)

    def _persist_txn(
        self,
        txn: Transaction,
        event: Event,
        context: EventContext,
        stream_ordering: int,
        new_group: int | None,
        state_group_after: int | None,
        metadata: dict,
        groups: _NewGroups,
        push: PushActionBatch | None = None,
    ) -> None:
        room_id = event.room_id
        state_group_before = context.state_group_before
        if context.replace_outlier:
            # Held as an outlier (an invite, an auth event) and now placed in the timeline.
            for table in ("event_edges", "event_auth"):
                txn.execute(f"DELETE FROM {table} WHERE event_id = ?", (event.event_id,))
            txn.execute(
                "DELETE FROM events WHERE event_id = ? AND outlier = ?", (event.event_id, True)
            )
        if groups.before is not None:
            assert context.state_before is not None
            base = context.state_before_base
            if base is not None:
                base_state = load_group_txn(txn, base)
                delta = _state_delta(base_state, context.state_before)
                create_state_group_txn(
                    txn, groups.before, room_id, base, delta, full_state=context.state_before
                )
            else:
                create_state_group_txn(
                    txn, groups.before, room_id, None, {}, full_state=context.state_before
                )
            state_group_before = groups.before
        txn.execute(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender,"
            " topological_ordering, origin_server_ts, json, internal_metadata, rejected_reason,"
            " outlier, state_group_before, state_group_after)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                stream_ordering,
                event.event_id,
                room_id,
                event.type,
                event.state_key,
                event.sender,
                event.depth,
                event.origin_server_ts,
                event.canonical_json(),
                json.dumps(metadata),
                event.rejected_reason,
                context.outlier or context.soft_failed,
                state_group_before,
                state_group_after,
            ),
        )
        txn.execute_many(
            "INSERT INTO event_edges (event_id, prev_event_id, room_id) VALUES (?, ?, ?)",
            [(event.event_id, prev, room_id) for prev in event.prev_event_ids],
        )
        txn.execute_many(
            "INSERT INTO event_auth (event_id, auth_id, room_id) VALUES (?, ?, ?)",
            [(event.event_id, auth, room_id) for auth in event.auth_event_ids],
        )
        if context.txn is not None:
            client_txn = context.txn
            txn.execute(
                "INSERT INTO event_txn_ids (user_id, device_id, txn_id, room_id, event_id,"
                " inserted_ts) VALUES (?, ?, ?, ?, ?, ?)",
                (client_txn.user_id, client_txn.device_id, client_txn.path_key, room_id,
                 event.event_id, event.origin_server_ts),
            )
            txn.call_after(
                self._events.txn_stored, client_txn.user_id, client_txn.device_id,
                client_txn.path_key, room_id, event.event_id,
            )
        if context.outlier or event.rejected_reason is not None:
            return
        FederationQueueStore.enqueue_pdus_txn(
            txn,
            [(dest, stream_ordering, event.event_id, room_id)
             for dest in context.outbound_destinations],
        )
        _update_backward_extremities_txn(txn, event)
        redacts = _stored_as_redaction(event)
        if redacts is not None:
            txn.execute(
                "INSERT INTO redactions (event_id, redacts) VALUES (?, ?)"
                " ON CONFLICT (event_id) DO NOTHING",
                (event.event_id, redacts),
            )
            txn.call_after(self._events.redaction_stored, redacts, event.event_id)
            refresh_if_listed_txn(txn, self._server_name, room_id, redacts)
            forget_redacted_relation_txn(txn, redacts, room_id)
            forget_redacted_search_txn(txn, redacts, room_id)
        if not context.soft_failed:
            # Hidden events relate to nothing clients can see and are never found by a
            # search; backfilled ones are both.
            store_relation_txn(txn, event, stream_ordering)
            index_event_txn(txn, event, stream_ordering)
        if push is not None and not context.soft_failed and not context.backfilled:
            PushActionStore.insert_txn(txn, room_id, event.event_id, stream_ordering, push)
        if context.soft_failed or context.backfilled:
            # Its state is kept (later events may cite it) but nothing else moves.
            if new_group is not None:
                create_state_group_txn(
                    txn, new_group, room_id, state_group_before, {event.state_tuple: event.event_id}
                )
            return

        # The new event replaces its prev_events as a forward extremity.
        for prev in event.prev_event_ids:
            txn.execute(
                "DELETE FROM event_forward_extremities WHERE room_id = ? AND event_id = ?",
                (room_id, prev),
            )
        txn.execute(
            "INSERT INTO event_forward_extremities (room_id, event_id) VALUES (?, ?)",
            (room_id, event.event_id),
        )

        if new_group is not None:
            key: StateKey = event.state_tuple
            # The create event starts from nothing; every later group is a delta.
            full_state: dict[StateKey, str] | None = (
                None if state_group_before is not None else {}
            )
            if state_group_before is None and context.state_before is not None:
                full_state = {**context.state_before, key: event.event_id}
            create_state_group_txn(
                txn,
                new_group,
                room_id,
                state_group_before,
                {key: event.event_id},
                full_state=full_state,
            )
        current_group: int | None = None
        if context.current_state is not None:
            assert groups.current is not None
            current_group = groups.current
            _replace_current_state_txn(
                txn, self._state, room_id, context.current_state, state_group_after,
                groups.current, stream_ordering,
            )
            refresh_room_summaries_txn(txn, self._server_name, [room_id])
        elif context.updates_current_state:
            current_group = state_group_after
            if not (groups.current_known and groups.known_current == state_group_after):
                # Not when the room is known to be at that group already (a message).
                txn.execute(
                    "UPDATE rooms SET current_state_group = ? WHERE room_id = ?",
                    (state_group_after, room_id),
                )
            if event.is_state:
                _update_current_state_txn(
                    txn, self._state, self._server_name, event, stream_ordering
                )
        txn.call_after(
            self._events.dag_tip_moved, room_id, event.prev_event_ids,
            (event.event_id, event.depth), current_group,
            context.current_state is not None or context.updates_current_state,
        )


def _stored_as_redaction(event: Event) -> str | None:
    """The event a redaction event redacts, as the `redactions` table records it."""
    if event.type == "m.room.redaction" and not event.is_state:
        return event.redacts
    return None


@dataclass
class _NewGroups:
    """State groups a federated event needs beyond the usual "after" group."""

    before: int | None = None
    current: int | None = None
    # The room's current state group as last committed, when known (cached).
    current_known: bool = False
    known_current: int | None = None


@dataclass
class _Queued:
    """An event waiting to be written, with what `_persist_txn` needs."""

    event: Event
    context: EventContext
    new_group: int | None
    state_group_after: int | None
    metadata: dict
    groups: _NewGroups
    push: PushActionBatch | None = None
    stream_ordering: int = 0
    done: defer.Deferred[StoredEvent] = field(default_factory=defer.Deferred)


def _is_plain(item: _Queued) -> bool:
    """A visible timeline event that is not state, not a redaction and brings no state of
    its own (a message): what `_persist_plain_txn` writes."""
    context, event = item.context, item.event
    return not (
        event.is_state
        or event.rejected_reason is not None
        or _stored_as_redaction(event) is not None
        or context.outlier
        or context.soft_failed
        or context.backfilled
        or context.replace_outlier
        or context.state_before is not None
        or context.current_state is not None
    )


def _state_delta(
    base: Mapping[StateKey, str], target: Mapping[StateKey, str]
) -> dict[StateKey, str | None]:
    delta: dict[StateKey, str | None] = {k: v for k, v in target.items() if base.get(k) != v}
    delta.update({k: None for k in base if k not in target})
    return delta


def _update_backward_extremities_txn(txn: Transaction, event: Event) -> None:
    """Backward extremities are the events we know are missing (cited as prev_events but
    not held): where backfill starts. Locally created events never add any."""
    txn.execute(
        "DELETE FROM event_backward_extremities WHERE room_id = ? AND event_id = ?",
        (event.room_id, event.event_id),
    )
    prevs = list(dict.fromkeys(event.prev_event_ids))
    if not prevs:
        return
    held = {
        row[0]
        for row in txn.select_in_chunks(
            "SELECT event_id FROM events WHERE event_id IN ({in}) AND outlier = ?", prevs,
            args_after=(False,),
        )
    }
    txn.execute_many(
        "INSERT INTO event_backward_extremities (room_id, event_id) VALUES (?, ?)"
        " ON CONFLICT (room_id, event_id) DO NOTHING",
        [(event.room_id, prev) for prev in prevs if prev not in held],
    )


def _replace_current_state_txn(
    txn: Transaction,
    state: StateStore,
    room_id: str,
    new_state: Mapping[StateKey, str],
    state_group_after: int | None,
    current_group: int,
    stream_ordering: int,
) -> None:
    """Make `new_state` the room's current state: a new group (a delta against the event's
    group), and the rows of current_state_events and room_memberships that changed."""
    if state_group_after is not None:
        after = load_group_txn(txn, state_group_after)
        create_state_group_txn(
            txn, current_group, room_id, state_group_after, _state_delta(after, new_state),
            full_state=new_state,
        )
    else:
        create_state_group_txn(txn, current_group, room_id, None, {}, full_state=new_state)
    txn.execute(
        "UPDATE rooms SET current_state_group = ? WHERE room_id = ?", (current_group, room_id)
    )
    old = {
        (t, k): e
        for t, k, e in txn.select_all(
            "SELECT type, state_key, event_id FROM current_state_events WHERE room_id = ?",
            (room_id,),
        )
    }
    changed = {k: v for k, v in new_state.items() if old.get(k) != v}
    removed = [k for k in old if k not in new_state]
    for t, k in removed:
        txn.execute(
            "DELETE FROM current_state_events WHERE room_id = ? AND type = ? AND state_key = ?",
            (room_id, t, k),
        )
    memberships: dict[str, str | None] = {}
    member_ids = [eid for (t, _), eid in changed.items() if t == MEMBER]
    for event_id, raw in txn.select_in_chunks(
        "SELECT event_id, json FROM events WHERE event_id IN ({in})", member_ids
    ):
        content = json.loads(raw).get("content")
        value = content.get("membership") if isinstance(content, dict) else None
        memberships[event_id] = value if isinstance(value, str) else None
    txn.execute_many(
        "INSERT INTO current_state_events (room_id, type, state_key, event_id, membership)"
        " VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (room_id, type, state_key)"
        " DO UPDATE SET event_id = excluded.event_id, membership = excluded.membership",
        [
            (room_id, t, k, eid, memberships.get(eid) if t == MEMBER else None)
            for (t, k), eid in changed.items()
        ],
    )
    txn.execute_many(
        UPSERT_MEMBERSHIP_SQL,
        [
            (room_id, k, eid, memberships.get(eid) or "leave", stream_ordering, False,
             stream_ordering)
            for (t, k), eid in changed.items()
            if t == MEMBER
        ],
    )
    txn.call_after(state.current_state_replaced, room_id)


def _update_current_state_txn(
    txn: Transaction, state: StateStore, server_name: str, event: Event, stream_ordering: int
) -> None:
    assert event.state_key is not None
    membership = event.membership if event.type == "m.room.member" else None
    replaced = txn.select_one(
        "SELECT membership FROM current_state_events"
        " WHERE room_id = ? AND type = ? AND state_key = ?",
        (event.room_id, event.type, event.state_key),
    )
    note_current_state_change_txn(
        txn, server_name, event, replaced[0] if replaced else None, replaced is not None
    )
    txn.execute(
        "INSERT INTO current_state_events (room_id, type, state_key, event_id, membership)"
        " VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (room_id, type, state_key)"
        " DO UPDATE SET event_id = excluded.event_id, membership = excluded.membership",
        (event.room_id, event.type, event.state_key, event.event_id, membership),
    )
    # The same change to the in-memory copy, once (and only if) it is committed.
    txn.call_after(
        state.current_state_changed, event.room_id, event.state_tuple, event.event_id, membership
    )
    if membership is not None:
        txn.execute(
            UPSERT_MEMBERSHIP_SQL,
            (event.room_id, event.state_key, event.event_id, membership, stream_ordering, False,
             stream_ordering),
        )
