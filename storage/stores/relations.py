"""Event relationships: which events relate to which, by rel_type and event type, in
history order (see `storage/schema/0012_relations.sql`)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.events.model import Event
from homeserver.events.relations import relation_of
from storage.database import Database, Transaction
from storage.stores.events import redaction_held_txn

# (topological_ordering, stream_ordering): a point in a room's history.
Position = tuple[int, int]


@dataclass(frozen=True)
class RelationRow:
    event_id: str
    parent_id: str
    room_id: str
    rel_type: str
    type: str
    sender: str
    aggregation_key: str | None
    topological_ordering: int
    stream_ordering: int

    @property
    def position(self) -> Position:
        return (self.topological_ordering, self.stream_ordering)


_COLUMNS = (
    "event_id, relates_to_id, room_id, rel_type, type, sender, aggregation_key,"
    " topological_ordering, stream_ordering"
)


def _row(row: tuple[Any, ...]) -> RelationRow:
    event_id, parent_id, room_id, rel_type, event_type, sender, key, topological, stream = row
    return RelationRow(
        event_id, parent_id, room_id, rel_type, event_type, sender, key, int(topological),
        int(stream),
    )


INSERT_RELATION_SQL = (
    "INSERT INTO event_relations (event_id, relates_to_id, rel_type, room_id, type, sender,"
    " aggregation_key, topological_ordering, stream_ordering)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)


def relation_rows(events: Iterable[tuple[Event, int]]) -> list[tuple[Any, ...]]:
    """Rows for `INSERT_RELATION_SQL` of those of (event, stream position) that relate to
    another event (the caller leaves out events whose redaction is held)."""
    rows = []
    for event, stream_ordering in events:
        relation = relation_of(event)
        if relation is not None:
            rows.append((event.event_id, relation.parent_id, relation.rel_type, event.room_id,
                         event.type, event.sender, relation.aggregation_key, event.depth,
                         stream_ordering))
    return rows


def store_relation_txn(txn: Transaction, event: Event, stream_ordering: int) -> None:
    """Record the event's relationship, if it has one, unless a redaction of it in its room
    is already held (federation can deliver a redaction before its target)."""
    relation = relation_of(event)
    if relation is None:
        return
    if redaction_held_txn(txn, event):
        return
    txn.execute(
        INSERT_RELATION_SQL,
        (event.event_id, relation.parent_id, relation.rel_type, event.room_id, event.type,
         event.sender, relation.aggregation_key, event.depth, stream_ordering),
    )


def forget_redacted_relation_txn(txn: Transaction, redacted_id: str, room_id: str) -> None:
    """A redaction strips `m.relates_to`: the redacted event relates to nothing any more (a
    redaction only ever applies within its own room)."""
    txn.execute(
        "DELETE FROM event_relations WHERE event_id = ? AND room_id = ?", (redacted_id, room_id)
    )


class RelationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_children(
        self,
        room_id: str,
        parent_id: str,
        rel_type: str | None,
        event_type: str | None,
        direction: str,
        limit: int,
        from_position: Position | None = None,
        to_position: Position | None = None,
        depth: int = 1,
    ) -> list[RelationRow]:
        """Up to `limit` events of the room relating to `parent_id`, in history order:
        newest first for direction `b`, oldest first for `f`, between the gaps
        `from_position` and `to_position` (each the gap just after the event at it).
        With `depth` > 1, events relating to those too, up to that many hops from the
        parent; the filters apply to the events returned, at any depth."""

        def txn_fn(txn: Transaction) -> list[RelationRow]:
            # Every event within `depth` hops (a cycle, possible with federated events
            # naming each other, stops at the depth limit; UNION drops repeats).
            tree = (
                "WITH RECURSIVE tree (event_id, hops) AS ("
                " SELECT event_id, 1 FROM event_relations WHERE relates_to_id = ? AND room_id = ?"
                " UNION SELECT c.event_id, tree.hops + 1 FROM event_relations c"
                " JOIN tree ON c.relates_to_id = tree.event_id"
                " WHERE tree.hops < ? AND c.room_id = ?)"
            )
            where = ["event_id IN (SELECT event_id FROM tree)", "room_id = ?"]
            args: list[Any] = [parent_id, room_id, depth, room_id, room_id]
            if rel_type is not None:
                where.append("rel_type = ?")
                args.append(rel_type)
            if event_type is not None:
                where.append("type = ?")
                args.append(event_type)
            # A position names the gap just after the event at it (as /messages tokens do).
            at_or_before = (
                "(topological_ordering < ? OR (topological_ordering = ? AND stream_ordering <= ?))"
            )
            after = "(topological_ordering > ? OR (topological_ordering = ? AND stream_ordering > ?))"
            if from_position is not None:
                where.append(at_or_before if direction == "b" else after)
                args += [from_position[0], from_position[0], from_position[1]]
            if to_position is not None:
                where.append(after if direction == "b" else at_or_before)
                args += [to_position[0], to_position[0], to_position[1]]
            order = "DESC" if direction == "b" else "ASC"
            args.append(limit)
            rows = txn.select_all(
                f"{tree} SELECT {_COLUMNS} FROM event_relations WHERE {' AND '.join(where)}"
                f" ORDER BY topological_ordering {order}, stream_ordering {order} LIMIT ?",
                args,
            )
            return [_row(row) for row in rows]

        return await self._db.run_interaction("get_relation_children", txn_fn)

    async def get_children_of_many(
        self, room_id: str, parent_ids: Collection[str], rel_types: Collection[str]
    ) -> list[RelationRow]:
        """Every event of the room relating to any of `parent_ids` with one of `rel_types`,
        in history order (what bundled aggregations are made from)."""
        if not parent_ids:
            return []

        def txn_fn(txn: Transaction) -> list[RelationRow]:
            marks = ", ".join("?" for _ in rel_types)
            rows = txn.select_in_chunks(
                f"SELECT {_COLUMNS} FROM event_relations WHERE relates_to_id IN ({{in}})"
                f" AND room_id = ? AND rel_type IN ({marks})",
                parent_ids,
                args_after=(room_id, *rel_types),
            )
            return sorted((_row(row) for row in rows), key=lambda r: r.position)

        return await self._db.run_interaction("get_relation_children_of_many", txn_fn)

    async def get_children_in_rooms(
        self, parents: Mapping[str, Collection[str]], rel_types: Collection[str]
    ) -> list[RelationRow]:
        """`get_children_of_many` for parents in several rooms (room_id -> parent IDs), in
        one transaction: every child with one of `rel_types` relating to a parent from the
        parent's own room, in history order."""
        parent_rooms = {
            parent_id: room_id for room_id, ids in parents.items() for parent_id in ids
        }
        if not parent_rooms:
            return []

        def txn_fn(txn: Transaction) -> list[RelationRow]:
            marks = ", ".join("?" for _ in rel_types)
            rows = txn.select_in_chunks(
                f"SELECT {_COLUMNS} FROM event_relations WHERE relates_to_id IN ({{in}})"
                f" AND rel_type IN ({marks})",
                list(parent_rooms),
                args_after=tuple(rel_types),
            )
            # A child counts only in its parent's room (any room's event may name any ID).
            found = [
                relation for relation in map(_row, rows)
                if parent_rooms.get(relation.parent_id) == relation.room_id
            ]
            return sorted(found, key=lambda r: r.position)

        if len(parents) == 1:
            ((room_id, parent_ids),) = parents.items()
            return await self.get_children_of_many(room_id, parent_ids, rel_types)
        return await self._db.run_interaction("get_relation_children_in_rooms", txn_fn)

    async def has_annotation(
        self, room_id: str, parent_id: str, sender: str, event_type: str, key: str
    ) -> bool:
        """Whether `sender` already annotated `parent_id` with `key` (a second identical
        reaction is refused)."""
        row = await self._db.run_interaction(
            "has_annotation",
            lambda txn: txn.select_one(
                "SELECT 1 FROM event_relations WHERE relates_to_id = ? AND room_id = ?"
                " AND rel_type = 'm.annotation' AND type = ? AND sender = ?"
                " AND aggregation_key = ?",
                (parent_id, room_id, event_type, sender, key),
            ),
        )
        return row is not None

    async def get_thread_roots(
        self,
        room_id: str,
        limit: int,
        before: Position | None = None,
        participant: str | None = None,
        until: Position | None = None,
    ) -> list[tuple[str, Position]]:
        """(root event ID, position of its latest thread event) of the room's threads,
        latest activity first, strictly below `before`. With `participant`, only threads
        that user started or replied in. With `until`, the room as it was at that event:
        thread events after it are not counted as activity."""

        def txn_fn(txn: Transaction) -> list[tuple[str, Position]]:
            at_or_before = (
                "({t}.topological_ordering < ? OR ({t}.topological_ordering = ?"
                " AND {t}.stream_ordering <= ?))"
            )
            until_args: list[Any] = []
            later_until = ""
            if until is not None:
                until_args = [until[0], until[0], until[1]]
                later_until = " AND " + at_or_before.format(t="l")
            # A thread's latest event is the one no other event of the thread follows.
            where = [
                "r.room_id = ?",
                "r.rel_type = 'm.thread'",
                "NOT EXISTS (SELECT 1 FROM event_relations l WHERE l.relates_to_id = r.relates_to_id"
                " AND l.room_id = r.room_id AND l.rel_type = 'm.thread'"
                " AND (l.topological_ordering > r.topological_ordering"
                " OR (l.topological_ordering = r.topological_ordering"
                f" AND l.stream_ordering > r.stream_ordering)){later_until})",
            ]
            args: list[Any] = [room_id, *until_args]
            if until is not None:
                where.append(at_or_before.format(t="r"))
                args += until_args
            if before is not None:
                where.append(
                    "(r.topological_ordering < ? OR (r.topological_ordering = ?"
                    " AND r.stream_ordering < ?))"
                )
                args += [before[0], before[0], before[1]]
            if participant is not None:
                where.append(
                    "(EXISTS (SELECT 1 FROM event_relations p WHERE p.relates_to_id = r.relates_to_id"
                    " AND p.room_id = r.room_id AND p.rel_type = 'm.thread' AND p.sender = ?)"
                    " OR EXISTS (SELECT 1 FROM events e WHERE e.event_id = r.relates_to_id"
                    " AND e.sender = ?))"
                )
                args += [participant, participant]
            args.append(limit)
            rows = txn.select_all(
                "SELECT r.relates_to_id, r.topological_ordering, r.stream_ordering"
                f" FROM event_relations r WHERE {' AND '.join(where)}"
                " ORDER BY r.topological_ordering DESC, r.stream_ordering DESC LIMIT ?",
                args,
            )
            return [(row[0], (int(row[1]), int(row[2]))) for row in rows]

        return await self._db.run_interaction("get_thread_roots", txn_fn)
