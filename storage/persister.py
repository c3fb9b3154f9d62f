"""Writing an event: one transaction for the event, its edges, state and stream position.

Callers serialise writes per room (`homeserver.rooms.EventCreator` holds a per-room lock), so
prev_events, depth and current state stay consistent. Persist first, notify after: a crash
between the two loses nothing, as sync reads from the database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from homeserver.events.canonical import encode_canonical_json
from homeserver.events.model import Event
from storage.database import Database, Transaction
from storage.stores.events import StoredEvent
from storage.stores.state import StateKey, StateStore, create_state_group_txn
from storage.stream_ids import StreamIdGenerator


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


class IdAllocator:
    """Plain increasing IDs (state groups) for this process; see stream_ids for the caveat."""

    def __init__(self, current: int = 0) -> None:
        self._current = current

    def initialise(self, current: int) -> None:
        self._current = current

    def next(self) -> int:
        self._current += 1
        return self._current


class EventPersister:
    def __init__(
        self,
        db: Database,
        state: StateStore,
        event_stream: StreamIdGenerator,
        state_group_ids: IdAllocator,
    ) -> None:
        self._db = db
        self._state = state
        self._stream = event_stream
        self._state_group_ids = state_group_ids

    async def persist(self, event: Event, context: EventContext) -> StoredEvent:
        """Store the event; returns it with its stream position and state group after."""
        state_group_after = context.state_group_before
        new_group: int | None = None
        if event.is_state and event.rejected_reason is None and not context.outlier:
            new_group = self._state_group_ids.next()
            state_group_after = new_group
        metadata = dict(context.internal_metadata)
        if context.txn is not None:
            metadata["txn_id"] = context.txn.txn_id
            metadata["device_id"] = context.txn.device_id
        if context.replaces_state is not None:
            metadata["replaces_state"] = context.replaces_state

        async with self._stream.next() as stream_ordering:
            try:
                await self._db.run_interaction(
                    "persist_event",
                    self._persist_txn,
                    event,
                    context,
                    stream_ordering,
                    new_group,
                    state_group_after,
                    metadata,
                )
            except Exception:
                # The commit may have happened (a connection lost while committing), so
                # the cached current state cannot be trusted either way.
                self._state.invalidate_current_state(event.room_id)
                raise
        stored = StoredEvent(event, stream_ordering, event.depth, metadata, context.outlier)
        return stored

    def _persist_txn(
        self,
        txn: Transaction,
        event: Event,
        context: EventContext,
        stream_ordering: int,
        new_group: int | None,
        state_group_after: int | None,
        metadata: dict,
    ) -> None:
        room_id = event.room_id
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
                encode_canonical_json(event.pdu).decode("utf-8"),
                json.dumps(metadata),
                event.rejected_reason,
                context.outlier,
                context.state_group_before,
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
        if context.outlier or event.rejected_reason is not None:
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
                None if context.state_group_before is not None else {}
            )
            create_state_group_txn(
                txn,
                new_group,
                room_id,
                context.state_group_before,
                {key: event.event_id},
                full_state=full_state,
            )
        if context.updates_current_state:
            txn.execute(
                "UPDATE rooms SET current_state_group = ? WHERE room_id = ?",
                (state_group_after, room_id),
            )
            if event.is_state:
                _update_current_state_txn(txn, self._state, event, stream_ordering)

        if event.type == "m.room.redaction" and not event.is_state and event.redacts is not None:
            txn.execute(
                "INSERT INTO redactions (event_id, redacts) VALUES (?, ?)",
                (event.event_id, event.redacts),
            )


def _update_current_state_txn(
    txn: Transaction, state: StateStore, event: Event, stream_ordering: int
) -> None:
    assert event.state_key is not None
    membership = event.membership if event.type == "m.room.member" else None
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
            "INSERT INTO room_memberships (room_id, user_id, event_id, membership,"
            " stream_ordering, forgotten) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (room_id, user_id) DO UPDATE SET event_id = excluded.event_id,"
            " membership = excluded.membership, stream_ordering = excluded.stream_ordering,"
            " forgotten = excluded.forgotten",
            (event.room_id, event.state_key, event.event_id, membership, stream_ordering, False),
        )
