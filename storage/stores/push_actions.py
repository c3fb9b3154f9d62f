"""Push actions (what each local user's push rules said of an event) and the read positions
notification counts are measured from. Rows are written by the persister, in the event's
own transaction (`insert_txn`); counts and the notifications list are read here."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from storage.database import Database, Transaction

MAIN_THREAD = "main"
# The key of an unthreaded read position: it covers every thread.
UNTHREADED = ""
READ_RECEIPT_TYPES = ("m.read", "m.read.private")


@dataclass(frozen=True)
class PushActionRow:
    user_id: str
    thread_id: str
    notify: bool
    highlight: bool
    # The actions as JSON text.
    actions: str


@dataclass(frozen=True)
class PushActionBatch:
    """What the persister writes with one event: its actions per user, and the local
    sender's position in the event's thread (sending marks what came before read)."""

    rows: tuple[PushActionRow, ...]
    thread_id: str
    local_sender: str | None
    ts: int


@dataclass
class RoomCounts:
    """One user's notification state in one room: where they have read up to, and the
    counts of unread notifying and highlighting actions per thread ("main" included)."""

    # thread_id ("" for unthreaded) -> the stream position read up to.
    read_up_to: dict[str, int] = field(default_factory=dict)
    # thread_id -> [notifications, highlights] after the thread's read position.
    threads: dict[str, list[int]] = field(default_factory=dict)

    def position_of(self, thread_id: str) -> int:
        return max(self.read_up_to.get(UNTHREADED, 0), self.read_up_to.get(thread_id, 0))

    def with_action(
        self, thread_id: str, stream_ordering: int, notify: bool, highlight: bool
    ) -> RoomCounts:
        """These counts with one more action (unless it is already read)."""
        if stream_ordering <= self.position_of(thread_id):
            return self
        threads = {t: list(c) for t, c in self.threads.items()}
        counts = threads.setdefault(thread_id, [0, 0])
        counts[0] += int(notify)
        counts[1] += int(highlight)
        return RoomCounts(dict(self.read_up_to), threads)

    def with_read(self, thread_id: str, stream_ordering: int) -> RoomCounts:
        """These counts once the thread is read up to `stream_ordering`, a position past
        every action counted (the user's own new event)."""
        read_up_to = dict(self.read_up_to)
        read_up_to[thread_id] = max(read_up_to.get(thread_id, 0), stream_ordering)
        threads = {t: list(c) for t, c in self.threads.items() if t != thread_id}
        return RoomCounts(read_up_to, threads)

    def totals(self, thread_id: str | None = None) -> tuple[int, int]:
        """(notifications, highlights) of one thread, or of them all."""
        if thread_id is not None:
            counts = self.threads.get(thread_id, [0, 0])
            return counts[0], counts[1]
        return (
            sum(c[0] for c in self.threads.values()),
            sum(c[1] for c in self.threads.values()),
        )


@dataclass(frozen=True)
class Notification:
    room_id: str
    event_id: str
    stream_ordering: int
    thread_id: str
    highlight: bool
    actions: list[Any]
    ts: int
    read: bool


class PushActionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ----- writing (inside the persister's transaction) ------------------------------------

    @staticmethod
    def insert_txn(
        txn: Transaction,
        room_id: str,
        event_id: str,
        stream_ordering: int,
        batch: PushActionBatch,
    ) -> None:
        """One staging row for the event's actions (see `flush_staging_txn`), and the local
        sender's new position."""
        if batch.rows:
            actions: dict[str, int] = {}
            users = [
                [row.user_id, actions.setdefault(row.actions, len(actions)), int(row.notify),
                 int(row.highlight)]
                for row in batch.rows
            ]
            txn.execute(
                "INSERT INTO event_push_actions_staging (stream_ordering, event_id, room_id,"
                " thread_id, ts, users) VALUES (?, ?, ?, ?, ?, ?)",
                (stream_ordering, event_id, room_id, batch.thread_id, batch.ts,
                 json.dumps({"actions": list(actions), "users": users})),
            )
        if batch.local_sender is not None:
            txn.execute(
                "INSERT INTO push_sent_positions (user_id, room_id, thread_id, stream_ordering)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, room_id, thread_id)"
                " DO UPDATE SET stream_ordering = excluded.stream_ordering"
                " WHERE push_sent_positions.stream_ordering < excluded.stream_ordering",
                (batch.local_sender, room_id, batch.thread_id, stream_ordering),
            )

    async def flush_staging(self) -> int:
        """Move a batch of staged events' actions to the per-user table; returns how many
        events were moved."""
        return await self._db.run_interaction("flush_push_actions", flush_staging_txn)

    # ----- counts ------------------------------------------------------------------------

    async def get_counts(
        self, keys: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], RoomCounts]:
        """(user_id, room_id) -> counts, in one transaction."""
        if not keys:
            return {}

        def txn_fn(txn: Transaction) -> dict[tuple[str, str], RoomCounts]:
            _flush_all_txn(txn)
            return {key: _counts_txn(txn, *key) for key in keys}

        return await self._db.run_interaction("get_notification_counts", txn_fn)

    # ----- the notifications list ----------------------------------------------------------

    async def get_notifications(
        self, user_id: str, before: int | None, limit: int, only_highlight: bool
    ) -> list[Notification]:
        """The user's notifying actions, newest first, below `before` (a stream position)."""

        def txn_fn(txn: Transaction) -> list[Notification]:
            _flush_all_txn(txn)
            sql = (
                "SELECT room_id, event_id, stream_ordering, thread_id, highlight, actions, ts"
                " FROM event_push_actions WHERE user_id = ? AND notify = ?"
            )
            args: list[Any] = [user_id, True]
            if before is not None:
                sql += " AND stream_ordering < ?"
                args.append(before)
            if only_highlight:
                sql += " AND highlight = ?"
                args.append(True)
            sql += " ORDER BY stream_ordering DESC LIMIT ?"
            args.append(limit)
            rows = txn.select_all(sql, args)
            positions = {
                room_id: _read_positions_txn(txn, user_id, room_id)
                for room_id in {r[0] for r in rows}
            }
            result = []
            for room_id, event_id, ordering, thread_id, highlight, actions, ts in rows:
                read = positions[room_id]
                up_to = max(read.get(UNTHREADED, 0), read.get(thread_id, 0))
                result.append(
                    Notification(room_id, event_id, ordering, thread_id, bool(highlight),
                                 json.loads(actions), ts, ordering <= up_to)
                )
            return result

        return await self._db.run_interaction("get_notifications", txn_fn)


# Staged events moved per transaction.
FLUSH_BATCH = 200


def flush_staging_txn(txn: Transaction) -> int:
    staged = txn.select_all(
        "SELECT stream_ordering, event_id, room_id, thread_id, ts, users"
        " FROM event_push_actions_staging ORDER BY stream_ordering LIMIT ?",
        (FLUSH_BATCH,),
    )
    if not staged:
        return 0
    rows = []
    for stream_ordering, event_id, room_id, thread_id, ts, users in staged:
        packed = json.loads(users)
        actions = packed["actions"]
        for user_id, index, notify, highlight in packed["users"]:
            rows.append((user_id, room_id, event_id, stream_ordering, thread_id, bool(notify),
                         bool(highlight), actions[index], ts))
    # Grouped by user, so each user's page is visited once.
    rows.sort(key=lambda r: (r[0], r[3]))
    txn.execute_many(
        "INSERT INTO event_push_actions (user_id, room_id, event_id, stream_ordering,"
        " thread_id, notify, highlight, actions, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (user_id, stream_ordering) DO NOTHING",
        rows,
    )
    txn.execute_many(
        "DELETE FROM event_push_actions_staging WHERE stream_ordering = ?",
        [(row[0],) for row in staged],
    )
    return len(staged)


def _flush_all_txn(txn: Transaction) -> None:
    """Move every staged event: readers of the per-user table see all that is committed."""
    while flush_staging_txn(txn) >= FLUSH_BATCH:
        pass


def _read_positions_txn(txn: Transaction, user_id: str, room_id: str) -> dict[str, int]:
    """thread_id ("" unthreaded) -> the furthest position read: the later of the user's
    `m.read` and `m.read.private` receipts, and their own latest event in that thread."""
    positions: dict[str, int] = {}

    def take(rows: Iterable[tuple[Any, ...]]) -> None:
        for thread_id, ordering in rows:
            if ordering is not None and ordering > positions.get(thread_id, 0):
                positions[thread_id] = ordering

    take(
        txn.select_all(
            "SELECT r.thread_id, MAX(e.stream_ordering) FROM receipts r"
            " JOIN events e ON e.event_id = r.event_id"
            " WHERE r.room_id = ? AND r.user_id = ? AND r.receipt_type IN (?, ?)"
            " GROUP BY r.thread_id",
            (room_id, user_id, *READ_RECEIPT_TYPES),
        )
    )
    take(
        txn.select_all(
            "SELECT thread_id, stream_ordering FROM push_sent_positions"
            " WHERE user_id = ? AND room_id = ?",
            (user_id, room_id),
        )
    )
    return positions


_COUNT_COLUMNS = (
    "COUNT(CASE WHEN notify THEN 1 END), COUNT(CASE WHEN highlight THEN 1 END)"
)


def _counts_txn(txn: Transaction, user_id: str, room_id: str) -> RoomCounts:
    positions = _read_positions_txn(txn, user_id, room_id)
    base = positions.get(UNTHREADED, 0)
    threads: dict[str, list[int]] = {}
    for thread_id, notifications, highlights in txn.select_all(
        f"SELECT thread_id, {_COUNT_COLUMNS} FROM event_push_actions"
        " WHERE user_id = ? AND stream_ordering > ? AND room_id = ? GROUP BY thread_id",
        (user_id, base, room_id),
    ):
        threads[thread_id] = [notifications, highlights]
    # A thread read further than the unthreaded position: take away what it has read.
    for thread_id, position in positions.items():
        if thread_id == UNTHREADED or position <= base or thread_id not in threads:
            continue
        row = txn.select_one(
            f"SELECT {_COUNT_COLUMNS} FROM event_push_actions WHERE user_id = ?"
            " AND stream_ordering > ? AND stream_ordering <= ? AND room_id = ? AND thread_id = ?",
            (user_id, base, position, room_id, thread_id),
        )
        if row is not None:
            threads[thread_id][0] -= row[0]
            threads[thread_id][1] -= row[1]
    return RoomCounts(positions, {t: c for t, c in threads.items() if c[0] or c[1]})
