"""Reading events, the room DAG and the events stream."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from homeserver.caches import LruCache
from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from storage.database import Database, Transaction

# Events parsed from their JSON, the largest cache of all (a few KB each; see
# docs/architecture.md, "Caches").
EVENT_CACHE_SIZE = 10_000
# Rooms whose version is remembered (a room's version never changes).
ROOM_VERSION_CACHE_SIZE = 10_000
# Events whose redaction (or lack of one) is remembered: one per cached event, as every event
# served is asked about.
REDACTIONS_CACHE_SIZE = EVENT_CACHE_SIZE
# Rooms whose forward extremities and current state group are remembered (read for every
# event built in the room).
DAG_TIP_CACHE_SIZE = 10_000
# Client transactions whose event is remembered (a retry usually follows within seconds).
TXN_CACHE_SIZE = 10_000


@dataclass
class DagTip:
    """A room's forward extremities (event ID -> depth) and current state group, as last
    committed: what the next event in the room is built on."""

    extremities: dict[str, int]
    state_group: int | None

_EVENT_COLUMNS = (
    "e.event_id, e.json, e.internal_metadata, e.rejected_reason, e.stream_ordering,"
    " e.topological_ordering, e.outlier, r.room_version"
)


@dataclass(frozen=True)
class StoredEvent:
    """An event with what this server knows about it beyond the PDU."""

    event: Event
    stream_ordering: int
    topological_ordering: int
    internal_metadata: dict[str, Any]
    outlier: bool


# Rooms whose latest events one statement of `get_latest_events_in_rooms` reads.
LATEST_EVENTS_ROOMS_PER_STATEMENT = 50

# `LruCache.peek`'s answer for an event not held (None means held as not redacted).


def redaction_held_txn(txn: Transaction, event: Event) -> bool:
    """Whether a redaction of `event` in its room is already stored (federation can deliver
    a redaction before its target): what is derived from the event's content (relations,
    search text) is then not written."""
    row = txn.select_one(
        "SELECT 1 FROM redactions r JOIN events re ON re.event_id = r.event_id"
        " WHERE r.redacts = ? AND re.room_id = ?",
        (event.event_id, event.room_id),
    )
    return row is not None


def redactions_held_txn(txn: Transaction, events: Iterable[Event]) -> set[str]:
    """`redaction_held_txn` for several events at once: the IDs of those a redaction of
    which in their room is held."""
    rooms = {event.event_id: event.room_id for event in events}
    return {
        redacts
        for redacts, room_id in txn.select_in_chunks(
            "SELECT r.redacts, re.room_id FROM redactions r"
            " JOIN events re ON re.event_id = r.event_id WHERE r.redacts IN ({in})",
            list(rooms),
        )
        if rooms.get(redacts) == room_id
    }


# Transaction IDs looked up per statement (three parameters each).
TXN_LOOKUP_CHUNK = 50


def _select_txns_txn(
    txn: Transaction, keys: list[tuple[str, str, str]]
) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(room_id, event_id) of each (user, device, transaction) stored."""
    found = {}
    for start in range(0, len(keys), TXN_LOOKUP_CHUNK):
        chunk = keys[start : start + TXN_LOOKUP_CHUNK]
        where = " OR ".join(["(user_id = ? AND device_id = ? AND txn_id = ?)"] * len(chunk))
        for user_id, device_id, txn_id, room_id, event_id in txn.select_all(
            "SELECT user_id, device_id, txn_id, room_id, event_id FROM event_txn_ids"
            f" WHERE {where}",
            [value for key in chunk for value in key],
        ):
            found[(user_id, device_id, txn_id)] = (room_id, event_id)
    return found


def _row_to_stored(row: tuple[Any, ...]) -> StoredEvent:
    event_id, raw, metadata, rejected, stream, topo, outlier, room_version = row
    version = KNOWN_ROOM_VERSIONS[room_version]
    event = Event(json.loads(raw), version, event_id=event_id, rejected_reason=rejected)
    return StoredEvent(event, stream, topo, json.loads(metadata), bool(outlier))


def _select_events_txn(txn: Transaction, event_ids: Collection[str]) -> list[StoredEvent]:
    rows = txn.select_in_chunks(
        f"SELECT {_EVENT_COLUMNS} FROM events e JOIN rooms r USING (room_id)"
        " WHERE e.event_id IN ({in})",
        event_ids,
    )
    return [_row_to_stored(row) for row in rows]


def _redactions_txn(txn: Transaction, event_ids: Collection[str]) -> dict[str, str]:
    """See `EventStore.get_redactions`."""
    # A redaction applies only within its own room, but any server in any room can send
    # one naming an event ID it has seen: those are never the answer, or one could hide a
    # real redaction of the event. (A target not stored yet has no room to compare: its
    # redactions count, and are checked when serialized.)
    found: dict[str, str] = {}
    for redacts, event_id, same_room in txn.select_in_chunks(
        "SELECT r.redacts, r.event_id,"
        " CASE WHEN t.room_id IS NULL OR t.room_id = re.room_id THEN 1 ELSE 0 END"
        " FROM redactions r"
        " JOIN events re ON re.event_id = r.event_id"
        " LEFT JOIN events t ON t.event_id = r.redacts"
        " WHERE r.redacts IN ({in})",
        event_ids,
    ):
        if same_room:
            found.setdefault(redacts, event_id)
    return found


def _paginate_txn(
    txn: Transaction,
    room_id: str,
    from_key: tuple[int, int],
    direction: str,
    limit: int,
    to_key: tuple[int, int] | None,
    max_stream: int | None,
) -> list[tuple[Any, ...]]:
    """See `EventStore.paginate_room_events`: the rows, for `EventStore._from_rows` (the
    room's version, the same for all, is not read per row).

    Positions are compared as row values, `(topological, stream) <= (?, ?)`, which both
    engines take as a range of the (room_id, topological_ordering, stream_ordering) index,
    read in order up to the limit; the equivalent `t < ? OR (t = ? AND s <= ?)` made
    PostgreSQL read the room's whole history before the position and sort it."""
    args: list[Any] = [room_id, False, *from_key]
    if direction == "b":
        condition = "(e.topological_ordering, e.stream_ordering) <= (?, ?)"
        order = "DESC"
    else:
        condition = "(e.topological_ordering, e.stream_ordering) > (?, ?)"
        order = "ASC"
    bound = ""
    if to_key is not None:
        if direction == "b":
            bound = " AND (e.topological_ordering, e.stream_ordering) > (?, ?)"
        else:
            bound = " AND (e.topological_ordering, e.stream_ordering) <= (?, ?)"
        args += [*to_key]
    if max_stream is not None:
        bound += " AND e.stream_ordering <= ?"
        args.append(max_stream)
    args.append(limit)
    return txn.select_all(
        "SELECT e.event_id, e.json, e.internal_metadata, e.rejected_reason, e.stream_ordering,"
        " e.topological_ordering, e.outlier, e.state_group_before, e.state_group_after"
        " FROM events e"
        " WHERE e.room_id = ? AND e.outlier = ? AND e.rejected_reason IS NULL"
        f" AND {condition}{bound}"
        f" ORDER BY e.topological_ordering {order}, e.stream_ordering {order} LIMIT ?",
        args,
    )


class EventStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: LruCache[str, StoredEvent] = LruCache("events", EVENT_CACHE_SIZE)
        self._room_versions: LruCache[str, RoomVersion] = LruCache(
            "room_versions", ROOM_VERSION_CACHE_SIZE
        )
        # State groups of an event never change once it is persisted as a timeline event.
        self._state_groups: LruCache[str, tuple[int | None, int | None]] = LruCache(
            "event_state_groups", EVENT_CACHE_SIZE
        )
        # event_id -> the redaction `get_redactions` answers for it, or None: not redacted.
        # Unlike events it changes: the persister calls `redaction_stored` after each commit
        # that stores a redaction (see `get_redactions`).
        self._redactions: LruCache[str, str | None] = LruCache(
            "event_redactions", REDACTIONS_CACHE_SIZE
        )
        # Moves on with every redaction stored: a read of the table that began before a move
        # may have missed that redaction, so its answers are not cached.
        self._redactions_generation = 0
        # Called with (redacts, redaction event ID) after this process stored a redaction.
        # The cache is per process: `homeserver/areas/stores.py` tells the others over the
        # "redactions" replication stream (Redis), which apply it with
        # `redaction_stored_elsewhere`. Until the message arrives they may serve the event
        # unredacted, as from a read made a moment earlier; without Redis, run one process.
        self.redaction_listeners: list[Callable[[str, str], None]] = []
        # The persister keeps these in step after each commit (`dag_tip_moved`); a read of
        # the tables that began before a move is not cached (the generation changed).
        self._dag_tips: LruCache[str, DagTip] = LruCache("room_dag_tips", DAG_TIP_CACHE_SIZE)
        self._dag_generation = 0
        # (user, device, path key) -> (room, event) of transactions this process stored (the
        # persister adds each after its commit; rows are never changed, only purged with
        # their room).
        self._txns: LruCache[tuple[str, str, str], tuple[str, str]] = LruCache(
            "event_txn_ids", TXN_CACHE_SIZE
        )
        self._txn_lookups: list[
            tuple[tuple[str, str, str], defer.Deferred[tuple[str, str] | None]]
        ] = []
        self._txn_lookup_running = False

    # ----- single events -------------------------------------------------------------------

    def _cache_put(self, stored: StoredEvent) -> None:
        self._cache.set(stored.event.event_id, stored)

    def forget_event(self, event_id: str) -> None:
        """Drop cached copies of an event whose row was replaced (an outlier that became a
        timeline event)."""
        self._cache.pop(event_id, None)
        self._state_groups.pop(event_id, None)

    def forget_room(self, room_id: str, event_ids: Iterable[str]) -> None:
        """Drop cached copies of a purged room's version and events (this process only)."""
        self._room_versions.pop(room_id, None)
        self.forget_dag_tip(room_id)
        self._txns.pop_where(lambda _key, stored: stored[0] == room_id)
        for event_id in event_ids:
            self.forget_event(event_id)
            self._redactions.pop(event_id, None)

    async def get_stored_events(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        wanted = list(dict.fromkeys(event_ids))
        found, missing = self._cache.get_many(wanted)
        if missing:
            for stored in await self._db.run_interaction(
                "get_events", _select_events_txn, missing
            ):
                self._cache_put(stored)
                found[stored.event.event_id] = stored
        return found

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        return {eid: s.event for eid, s in (await self.get_stored_events(event_ids)).items()}

    async def get_stored_event(self, event_id: str) -> StoredEvent | None:
        return (await self.get_stored_events([event_id])).get(event_id)

    async def get_event(self, event_id: str) -> Event | None:
        stored = await self.get_stored_event(event_id)
        return stored.event if stored else None

    # ----- rooms and the DAG ---------------------------------------------------------------

    async def get_room_version(self, room_id: str) -> RoomVersion | None:
        version = self._room_versions.get(room_id)
        if version is None:
            row = await self._db.run_interaction(
                "get_room_version",
                lambda txn: txn.select_one(
                    "SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)
                ),
            )
            if row is None:
                return None
            version = KNOWN_ROOM_VERSIONS[row[0]]
            self._room_versions.set(room_id, version)
        return version

    async def get_forward_extremities(self, room_id: str) -> list[tuple[str, int]]:
        """(event_id, depth) of the events with no children yet."""
        tip = await self._dag_tip(room_id)
        return list(tip.extremities.items())

    async def get_current_state_group(self, room_id: str) -> int | None:
        return (await self._dag_tip(room_id)).state_group

    async def _dag_tip(self, room_id: str) -> DagTip:
        tip = self._dag_tips.get(room_id)
        if tip is not None:
            return tip
        generation = self._dag_generation

        def txn_fn(txn: Transaction) -> DagTip:
            rows = txn.select_all(
                "SELECT f.event_id, e.topological_ordering FROM event_forward_extremities f"
                " JOIN events e USING (event_id) WHERE f.room_id = ?",
                (room_id,),
            )
            row = txn.select_one(
                "SELECT current_state_group FROM rooms WHERE room_id = ?", (room_id,)
            )
            return DagTip({r[0]: r[1] for r in rows}, row[0] if row else None)

        tip = await self._db.run_interaction("get_dag_tip", txn_fn)
        if generation == self._dag_generation and (tip.extremities or tip.state_group is not None):
            self._dag_tips.set(room_id, tip)
        return DagTip(dict(tip.extremities), tip.state_group)

    def dag_tip_moved(
        self,
        room_id: str,
        replaced: Iterable[str],
        extremity: tuple[str, int] | None,
        state_group: int | None,
        set_state_group: bool,
    ) -> None:
        """After commit: the persister made `extremity` (event ID, depth) a forward extremity
        of the room in place of `replaced`, and (if `set_state_group`) `state_group` its
        current state group. Calls for a room come in commit order."""
        self._dag_generation += 1
        tip = self._dag_tips.peek(room_id)
        if tip is None:
            return
        extremities = dict(tip.extremities)
        for event_id in replaced:
            extremities.pop(event_id, None)
        if extremity is not None:
            extremities[extremity[0]] = extremity[1]
        self._dag_tips.replace(
            room_id, DagTip(extremities, state_group if set_state_group else tip.state_group)
        )

    def cached_state_group(self, room_id: str) -> tuple[bool, int | None]:
        """(held, group): the room's current state group if cached."""
        tip = self._dag_tips.peek(room_id)
        return (False, None) if tip is None else (True, tip.state_group)

    def forget_dag_tip(self, room_id: str) -> None:
        """Forget the room's cached extremities and state group (a write whose outcome is
        unknown, an admin's deletion of extremities)."""
        self._dag_generation += 1
        self._dag_tips.pop(room_id, None)

    async def get_state_group_before(self, event_id: str) -> int | None:
        row = await self._db.run_interaction(
            "get_state_group_before",
            lambda txn: txn.select_one(
                "SELECT state_group_before FROM events WHERE event_id = ?", (event_id,)
            ),
        )
        return row[0] if row else None

    async def get_state_group_at_position(
        self, room_id: str, topological: int | None, stream: int
    ) -> int | None:
        """The group of the room's state at a point in its history: the state after the
        latest timeline event at or before (topological, stream), or at or before stream
        position `stream` when `topological` is None (a sync token). None if no event is
        that early."""

        def txn_fn(txn: Transaction) -> tuple[Any, ...] | None:
            if topological is None:
                return txn.select_one(
                    "SELECT state_group_after FROM events WHERE room_id = ?"
                    " AND stream_ordering <= ? AND outlier = ? AND rejected_reason IS NULL"
                    " ORDER BY stream_ordering DESC LIMIT 1",
                    (room_id, stream, False),
                )
            return txn.select_one(
                "SELECT state_group_after FROM events WHERE room_id = ?"
                " AND (topological_ordering < ? OR (topological_ordering = ? AND stream_ordering <= ?))"
                " AND outlier = ? AND rejected_reason IS NULL"
                " ORDER BY topological_ordering DESC, stream_ordering DESC LIMIT 1",
                (room_id, topological, topological, stream, False),
            )

        row = await self._db.run_interaction("get_state_group_at_position", txn_fn)
        return row[0] if row else None

    async def get_redactions(self, event_ids: Collection[str]) -> dict[str, str]:
        """event_id -> ID of a redaction that applies to it, for those that are redacted.

        Answered from memory for events asked about before, "not redacted" included. A read
        that began before a redaction was stored may return without it, after that
        redaction's `redaction_stored` ran; such a read is used by its caller (as any read
        may be slightly old) but not cached, so the cache never goes back in time.
        """
        wanted = list(dict.fromkeys(event_ids))
        if not wanted:
            return {}
        held, missing = self._redactions.get_many(wanted)
        result = {
            event_id: redaction for event_id, redaction in held.items() if redaction is not None
        }
        if not missing:
            return result

        generation = self._redactions_generation
        fetched = await self._db.run_interaction("get_redactions", _redactions_txn, missing)
        if generation == self._redactions_generation:
            for event_id in missing:
                self._redactions.set(event_id, fetched.get(event_id))
        result.update(fetched)
        return result

    def redaction_stored(self, redacts: str, redaction_id: str) -> None:
        """After commit: the persister stored `redaction_id` as a redaction of `redacts` (which
        may not be held yet: federation can deliver a redaction before its target)."""
        self._redaction_added(redacts, redaction_id)
        for listener in self.redaction_listeners:
            listener(redacts, redaction_id)

    def redaction_stored_elsewhere(self, redacts: str, redaction_id: str) -> None:
        """Another process stored a redaction of `redacts` (told over replication)."""
        self._redaction_added(redacts, redaction_id)

    def _redaction_added(self, redacts: str, redaction_id: str) -> None:
        self._redactions_generation += 1
        # Asked of the table next time, which knows whether it is in the event's own room.
        self._redactions.pop(redacts, None)

    def forget_redactions_of(self, redacts: str) -> None:
        """Whether a redaction of `redacts` was stored is unknown (its transaction failed
        while committing): ask the table next time."""
        self._redactions_generation += 1
        self._redactions.pop(redacts, None)

    def clear_redactions_cache(self) -> None:
        """Forget every event's redactions (redactions stored elsewhere may have been
        missed)."""
        self._redactions_generation += 1
        self._redactions.clear()

    async def get_event_for_txn(
        self, user_id: str, device_id: str, txn_id: str
    ) -> tuple[str, str] | None:
        """(room_id, event_id) an earlier request with this transaction ID created."""
        key = (user_id, device_id, txn_id)
        found = self._txns.get(key)
        if found is not None:
            return found
        # Lookups queue behind the one being read and are then read together.
        answer: defer.Deferred[tuple[str, str] | None] = defer.Deferred()
        self._txn_lookups.append((key, answer))
        if not self._txn_lookup_running:
            self._txn_lookup_running = True
            defer.ensureDeferred(self._look_up_txns())
        return await answer

    async def _look_up_txns(self) -> None:
        try:
            while self._txn_lookups:
                batch, self._txn_lookups = self._txn_lookups, []
                try:
                    found = await self._db.run_interaction(
                        "get_event_for_txn", _select_txns_txn, list({k for k, _ in batch})
                    )
                except Exception as e:
                    for _, answer in batch:
                        answer.errback(e)
                    continue
                for key, answer in batch:
                    answer.callback(found.get(key))
        finally:
            self._txn_lookup_running = False

    def cached_event_for_txn(
        self, user_id: str, device_id: str, txn_id: str
    ) -> tuple[str, str] | None:
        """`get_event_for_txn` from memory only: what this process stored recently."""
        return self._txns.get((user_id, device_id, txn_id))

    def txn_stored(
        self, user_id: str, device_id: str, txn_id: str, room_id: str, event_id: str
    ) -> None:
        """After commit: the transaction's event is stored."""
        self._txns.set((user_id, device_id, txn_id), (room_id, event_id))

    async def record_txn_event(
        self, user_id: str, device_id: str, txn_id: str, room_id: str, event_id: str, now_ms: int
    ) -> str:
        """Remember `event_id` as what the transaction made, without an event (a
        shadow-banned sender's), so a retry is answered as a real send's is. Returns the
        event ID now recorded: a concurrent request with the same transaction may have won."""

        def txn_fn(txn: Transaction) -> str:
            txn.execute(
                "INSERT INTO event_txn_ids (user_id, device_id, txn_id, room_id, event_id,"
                " inserted_ts) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
                (user_id, device_id, txn_id, room_id, event_id, now_ms),
            )
            row = txn.select_one(
                "SELECT event_id FROM event_txn_ids"
                " WHERE user_id = ? AND device_id = ? AND txn_id = ?",
                (user_id, device_id, txn_id),
            )
            assert row is not None  # inserted above, or there already
            return str(row[0])

        return await self._db.run_interaction("record_txn_event", txn_fn)

    async def get_max_stream_ordering(self) -> int:
        row = await self._db.run_interaction(
            "get_max_stream_ordering",
            lambda txn: txn.select_one("SELECT MAX(stream_ordering) FROM events"),
        )
        return row[0] if row and row[0] is not None else 0

    async def get_min_stream_ordering(self) -> int:
        """The lowest position held (outliers and backfilled events sit below zero)."""
        row = await self._db.run_interaction(
            "get_min_stream_ordering",
            lambda txn: txn.select_one("SELECT MIN(stream_ordering) FROM events"),
        )
        return min(row[0], 0) if row and row[0] is not None else 0

    # ----- timeline queries ----------------------------------------------------------------

    async def get_room_events_between(
        self, room_id: str, after: int, up_to: int, limit: int, oldest_first: bool = False
    ) -> list[StoredEvent]:
        """The latest `limit` timeline events with after < stream_ordering <= up_to, in order
        (with `oldest_first`, the earliest `limit` instead: a stream read in steps)."""
        order = "ASC" if oldest_first else "DESC"

        def txn_fn(txn: Transaction) -> list[StoredEvent]:
            rows = txn.select_all(
                f"SELECT {_EVENT_COLUMNS} FROM events e JOIN rooms r USING (room_id)"
                " WHERE e.room_id = ? AND e.stream_ordering > ? AND e.stream_ordering <= ?"
                " AND e.outlier = ? AND e.rejected_reason IS NULL"
                f" ORDER BY e.stream_ordering {order} LIMIT ?",
                (room_id, after, up_to, False, limit),
            )
            stored = [_row_to_stored(row) for row in rows]
            return stored if oldest_first else stored[::-1]

        events = await self._db.run_interaction("get_room_events_between", txn_fn)
        for stored in events:
            self._cache_put(stored)
        return events

    async def get_latest_events_in_rooms(
        self, room_ids: Collection[str], up_to: int, limit: int
    ) -> dict[str, list[StoredEvent]]:
        """`get_room_events_between(room_id, 0, up_to, limit)` for each room, in one
        transaction (an initial sync reads every room of the user), with the events' state
        groups and redactions read into the caches as well (what a sync asks next)."""
        wanted = list(dict.fromkeys(room_ids))
        if not wanted:
            return {}

        def txn_fn(
            txn: Transaction,
        ) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, str], dict[str, str]]:
            versions = {
                room_id: version
                for room_id, version in txn.select_in_chunks(
                    "SELECT room_id, room_version FROM rooms WHERE room_id IN ({in})", wanted
                )
            }
            rows: dict[str, list[tuple[Any, ...]]] = {room_id: [] for room_id in wanted}
            # Each room's latest events as one statement for many rooms (one round trip on
            # PostgreSQL, not one a room): a UNION ALL of each room's own indexed read.
            one_room = (
                "SELECT * FROM (SELECT e.room_id, e.event_id, e.json, e.internal_metadata,"
                " e.rejected_reason, e.stream_ordering, e.topological_ordering, e.outlier,"
                " e.state_group_before, e.state_group_after FROM events e"
                " WHERE e.room_id = ? AND e.stream_ordering > ? AND e.stream_ordering <= ?"
                " AND e.outlier = ? AND e.rejected_reason IS NULL"
                " ORDER BY e.stream_ordering DESC LIMIT ?) AS r{i}"
            )
            for start in range(0, len(wanted), LATEST_EVENTS_ROOMS_PER_STATEMENT):
                chunk = wanted[start:start + LATEST_EVENTS_ROOMS_PER_STATEMENT]
                sql = " UNION ALL ".join(one_room.format(i=i) for i in range(len(chunk)))
                args: list[Any] = []
                for room_id in chunk:
                    args += [room_id, 0, up_to, False, limit]
                for row in txn.select_all(sql, args):
                    rows[row[0]].append(row[1:])
            for room_rows in rows.values():
                room_rows.sort(key=lambda row: row[4])
            event_ids = [row[0] for room_rows in rows.values() for row in room_rows]
            return rows, versions, _redactions_txn(txn, event_ids) if event_ids else {}

        generation = self._redactions_generation
        rows, versions, redactions = await self._db.run_interaction(
            "get_latest_events_in_rooms", txn_fn
        )
        found: dict[str, list[StoredEvent]] = {}
        for room_id, room_rows in rows.items():
            version = versions.get(room_id)
            if version is None:
                found[room_id] = []
                continue
            self._room_versions.set(room_id, KNOWN_ROOM_VERSIONS[version])
            found[room_id] = self._from_rows(
                room_rows, KNOWN_ROOM_VERSIONS[version], redactions, generation
            )
        return found

    async def follows_gap(self, room_id: str, event_ids: Collection[str]) -> bool:
        """Whether any of the events cites a prev_event we do not hold (a backward
        extremity): history is missing just before it, for backfill to fetch."""
        if not event_ids:
            return False

        def txn_fn(txn: Transaction) -> bool:
            return bool(
                txn.select_in_chunks(
                    "SELECT 1 FROM event_backward_extremities b"
                    " JOIN event_edges ed ON ed.prev_event_id = b.event_id"
                    " WHERE b.room_id = ? AND ed.event_id IN ({in}) LIMIT 1",
                    event_ids,
                    args_before=(room_id,),
                )
            )

        return await self._db.run_interaction("follows_gap", txn_fn)

    async def paginate_room_events(
        self,
        room_id: str,
        from_key: tuple[int, int],
        direction: str,
        limit: int,
        to_key: tuple[int, int] | None = None,
        max_stream: int | None = None,
    ) -> list[StoredEvent]:
        """Timeline events ordered by (topological, stream) from `from_key`, exclusive.

        Backwards (`b`) returns events before `from_key`, newest first; forwards (`f`)
        returns events after it, oldest first. `to_key` bounds the walk (exclusive).
        """
        version = await self.get_room_version(room_id)
        if version is None:
            return []

        def txn_fn(txn: Transaction) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
            rows = _paginate_txn(txn, room_id, from_key, direction, limit, to_key, max_stream)
            return rows, _redactions_txn(txn, [row[0] for row in rows])

        generation = self._redactions_generation
        rows, redactions = await self._db.run_interaction("paginate_room_events", txn_fn)
        return self._from_rows(rows, version, redactions, generation)

    def _from_rows(
        self,
        rows: list[tuple[Any, ...]],
        version: RoomVersion,
        redactions: dict[str, str],
        generation: int,
    ) -> list[StoredEvent]:
        """Events of one room read by `_paginate_txn`, taken from the cache where held:
        parsing an event's JSON costs more than the rest of reading it (pages of history
        are read again and again, by every reader scrolling back). Their state groups and
        `redactions` (read with them, from redactions `generation`: see `get_redactions`)
        are cached for the visibility check and serializing that follow."""
        if generation == self._redactions_generation:
            for row in rows:
                if row[0] not in self._redactions:
                    self._redactions.set(row[0], redactions.get(row[0]))
        held, _ = self._cache.get_many(row[0] for row in rows)
        events = []
        for row in rows:
            event_id = row[0]
            stored = held.get(event_id)
            if stored is None:
                stored = _row_to_stored((*row[:7], version.identifier))
                self._cache_put(stored)
            if event_id not in self._state_groups:
                self._state_groups.set(event_id, (row[7], row[8]))
            events.append(stored)
        return events

    async def paginate_room_events_and_gaps(
        self,
        room_id: str,
        from_key: tuple[int, int],
        direction: str,
        limit: int,
        to_key: tuple[int, int] | None = None,
        max_stream: int | None = None,
    ) -> tuple[list[StoredEvent], list[int]]:
        """`paginate_room_events`, and in the same transaction the room's gaps in history
        (backward extremities) as the depth of the deepest event citing each: what a reader
        paging back must know before asking federation for more, without a transaction of
        its own."""

        def txn_fn(
            txn: Transaction,
        ) -> tuple[list[tuple[Any, ...]], dict[str, str], list[int]]:
            rows = _paginate_txn(
                txn, room_id, from_key, direction, limit, to_key, max_stream
            )
            redactions = _redactions_txn(txn, [row[0] for row in rows])
            gaps = txn.select_all(
                "SELECT MAX(e.topological_ordering) FROM event_backward_extremities b"
                " JOIN event_edges ed ON ed.prev_event_id = b.event_id"
                " JOIN events e ON e.event_id = ed.event_id"
                " WHERE b.room_id = ? GROUP BY b.event_id",
                (room_id,),
            )
            return rows, redactions, [int(row[0]) for row in gaps]

        version = await self.get_room_version(room_id)
        if version is None:
            return [], []
        generation = self._redactions_generation
        rows, redactions, gaps = await self._db.run_interaction("paginate_room_events", txn_fn)
        return self._from_rows(rows, version, redactions, generation), gaps

    async def get_state_groups_for_events(
        self, event_ids: Collection[str]
    ) -> dict[str, tuple[int | None, int | None]]:
        """event_id -> (state group before, state group after), for the events we have."""
        wanted = [eid for eid in dict.fromkeys(event_ids)]
        found, missing = self._state_groups.get_many(wanted)
        if not missing:
            return found

        def txn_fn(txn: Transaction) -> list[tuple[Any, ...]]:
            return txn.select_in_chunks(
                "SELECT event_id, state_group_before, state_group_after FROM events"
                " WHERE event_id IN ({in})",
                missing,
            )

        for event_id, before, after in await self._db.run_interaction(
            "get_state_groups_for_events", txn_fn
        ):
            found[event_id] = (before, after)
            self._state_groups.set(event_id, (before, after))
        return found

    async def get_room_position_at_stream(
        self, room_id: str, max_stream: int | None = None
    ) -> tuple[int, int] | None:
        """(topological, stream) of the last timeline event of the room in history order
        among those at or before stream position `max_stream` (all if None); None if the
        room has no such event."""

        def txn_fn(txn: Transaction) -> tuple[Any, ...] | None:
            args: list[Any] = [room_id, False]
            bound = ""
            if max_stream is not None:
                bound = " AND stream_ordering <= ?"
                args.append(max_stream)
            return txn.select_one(
                "SELECT topological_ordering, stream_ordering FROM events"
                " WHERE room_id = ? AND outlier = ? AND rejected_reason IS NULL" + bound +
                " ORDER BY topological_ordering DESC, stream_ordering DESC LIMIT 1",
                args,
            )

        row = await self._db.run_interaction("get_room_position_at_stream", txn_fn)
        return (int(row[0]), int(row[1])) if row else None

    async def get_rooms_changed_since(self, room_ids: Collection[str], after: int) -> set[str]:
        """Which of `room_ids` have timeline events after stream position `after`."""
        if not room_ids:
            return set()

        def txn_fn(txn: Transaction) -> set[str]:
            return {
                row[0]
                for row in txn.select_in_chunks(
                    "SELECT DISTINCT room_id FROM events WHERE stream_ordering > ?"
                    " AND room_id IN ({in})",
                    room_ids,
                    args_before=[after],
                )
            }

        return await self._db.run_interaction("get_rooms_changed_since", txn_fn)
