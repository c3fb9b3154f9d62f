"""Push actions (what each local user's push rules said of an event), the unread counts kept
from them, and the read positions counts are measured from.

Three tables (`0015_push_summary`):

- `event_push_actions`: one row per event, written by the persister in the event's own
  transaction (`insert_txn`): the users whose actions notify or highlight, grouped by
  outcome. A message in a room of a thousand local members is one row of a few kilobytes,
  not a thousand rows on a thousand users' pages.
- `event_push_summary`: per (user, room, thread), the unread counts over the events already
  counted ("rotated"), with the read position they were counted after.
- `event_push_rotation_queue`: the events not counted in the summary yet, also written with
  the event. Rotation (`rotate_txn`) takes a batch of them and updates each touched user's
  summary row once per batch, so a busy room's members are written once per batch of
  events rather than once per event.

A user's counts in a room are their summary rows (counted again from `event_push_actions`
when their read position moved since: a receipt, or an event they sent) plus the events
still queued. Nothing of a count lives only in memory or only in the summary: the summary is
derivable from `event_push_actions` and the read positions, which are written in the
transactions of the events and receipts themselves, so a crash at any point loses no count.
Readers only read: a stale row is counted again by each reader until the next rotation that
touches it writes it.

`GET /notifications` reads the per-event rows of the user's rooms (those they have a summary
row in, left ones included, and queued events) newest first and keeps the events whose line
for the user notifies. Keeping per-user rows for highlights only was the other choice: it
would make `only=highlight` an index read, but write a thousand rows in the event's
transaction for every `@room`, the cost this layout exists to remove; per-event rows flagged
`highlight` keep that filter short, highlights being rare.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.database import IN_CHUNK_SIZE, Database, Transaction

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
class ActionGroup:
    """The users one event gave the same actions."""

    # The actions as JSON text.
    actions: str
    notify: bool
    highlight: bool
    users: tuple[str, ...]


@dataclass(frozen=True)
class PushActionBatch:
    """What the persister writes with one event: its actions, users grouped by outcome, and
    the local sender's position in the event's thread (sending marks what came before
    read)."""

    groups: tuple[ActionGroup, ...]
    thread_id: str
    local_sender: str | None
    ts: int

    @property
    def rows(self) -> tuple[PushActionRow, ...]:
        """One row per user (for callers that want them one by one)."""
        return tuple(
            PushActionRow(user_id, self.thread_id, g.notify, g.highlight, g.actions)
            for g in self.groups
            for user_id in g.users
        )


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


# ----- the per-event JSON ---------------------------------------------------------------------


def encode_groups(groups: Iterable[ActionGroup]) -> str:
    """One line per group: notify and highlight as two digits, the actions' JSON text, a
    tab, then the users separated by spaces. Not JSON: encoding or decoding a thousand user
    IDs as JSON strings costs about 90 µs either way, joining or splitting them about 10.
    Neither a user ID (ours: `homeserver.identifiers`; the push generator leaves out any
    other) nor JSON text holds a tab, a newline or a space outside a string."""
    return "\n".join(
        f"{int(g.notify)}{int(g.highlight)}{g.actions}\t{' '.join(g.users)}" for g in groups
    )


def decode_groups(text: str) -> list[tuple[str, bool, bool, list[str]]]:
    """(actions JSON text, notify, highlight, users) per group. Also reads the JSON object
    0013 staged: {"actions": [<actions JSON text>, ...], "users": [[user_id, index into
    actions, notify, highlight], ...]}."""
    if text.startswith("{"):
        packed = json.loads(text)
        grouped: dict[tuple[int, bool, bool], list[str]] = {}
        for user_id, index, notify, highlight in packed["users"]:
            grouped.setdefault((index, bool(notify), bool(highlight)), []).append(user_id)
        actions = packed["actions"]
        return [(actions[i], n, h, users) for (i, n, h), users in grouped.items()]
    decoded = []
    for line in text.split("\n"):
        head, users = line.split("\t", 1)
        decoded.append((head[2:], head[0] == "1", head[1] == "1", users.split(" ")))
    return decoded


def outcome_for(text: str, user_id: str) -> tuple[str, bool, bool] | None:
    """The user's (actions, notify, highlight) in one event's JSON; None if they have none.
    Most rows of a user's rooms do name them, but a quick look for their ID skips decoding
    the rows that do not."""
    if user_id not in text:
        return None
    if text.startswith("{"):
        for actions, notify, highlight, users in decode_groups(text):
            if user_id in users:
                return actions, notify, highlight
        return None
    for line in text.split("\n"):
        tab = line.index("\t")
        start = line.find(user_id, tab)
        while start != -1:
            end = start + len(user_id)
            # A whole entry, not part of a longer user ID.
            if line[start - 1] in "\t " and (end == len(line) or line[end] == " "):
                return line[2:tab], line[0] == "1", line[1] == "1"
            start = line.find(user_id, end)
    return None


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
        """The event's row and its place in the rotation queue, and the local sender's new
        position."""
        if batch.groups:
            txn.execute(
                "INSERT INTO event_push_actions (stream_ordering, event_id, room_id,"
                " thread_id, ts, groups, highlight) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stream_ordering, event_id, room_id, batch.thread_id, batch.ts,
                 encode_groups(batch.groups), any(g.highlight for g in batch.groups)),
            )
            txn.execute(
                "INSERT INTO event_push_rotation_queue (stream_ordering, room_id)"
                " VALUES (?, ?)",
                (stream_ordering, room_id),
            )
        if batch.local_sender is not None:
            txn.execute(
                "INSERT INTO push_sent_positions (user_id, room_id, thread_id, stream_ordering)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, room_id, thread_id)"
                " DO UPDATE SET stream_ordering = excluded.stream_ordering"
                " WHERE push_sent_positions.stream_ordering < excluded.stream_ordering",
                (batch.local_sender, room_id, batch.thread_id, stream_ordering),
            )

    @staticmethod
    def insert_many_txn(
        txn: Transaction, events: Iterable[tuple[str, str, int, PushActionBatch]]
    ) -> None:
        """`insert_txn` for several (room_id, event_id, stream_ordering, batch), in order,
        a statement per table."""
        events = list(events)
        with_groups = [e for e in events if e[3].groups]
        txn.execute_many(
            "INSERT INTO event_push_actions (stream_ordering, event_id, room_id,"
            " thread_id, ts, groups, highlight) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(pos, event_id, room_id, b.thread_id, b.ts, encode_groups(b.groups),
              any(g.highlight for g in b.groups)) for room_id, event_id, pos, b in with_groups],
        )
        txn.execute_many(
            "INSERT INTO event_push_rotation_queue (stream_ordering, room_id) VALUES (?, ?)",
            [(pos, room_id) for room_id, _, pos, _ in with_groups],
        )
        txn.execute_many(
            "INSERT INTO push_sent_positions (user_id, room_id, thread_id, stream_ordering)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, room_id, thread_id)"
            " DO UPDATE SET stream_ordering = excluded.stream_ordering"
            " WHERE push_sent_positions.stream_ordering < excluded.stream_ordering",
            [(b.local_sender, room_id, b.thread_id, pos) for room_id, _, pos, b in events
             if b.local_sender is not None],
        )

    async def rotate(self) -> int:
        """Count a batch of queued events into the summary; returns how many were counted."""
        return await self._db.run_interaction("rotate_push_actions", rotate_txn)

    # ----- counts ------------------------------------------------------------------------

    async def get_counts(
        self, keys: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], RoomCounts]:
        """(user_id, room_id) -> counts, in one transaction."""
        if not keys:
            return {}

        def txn_fn(txn: Transaction) -> dict[tuple[str, str], RoomCounts]:
            return {key: _counts_txn(txn, *key) for key in keys}

        return await self._db.run_interaction("get_notification_counts", txn_fn)

    # ----- the notifications list ----------------------------------------------------------

    async def get_notifications(
        self, user_id: str, before: int | None, limit: int, only_highlight: bool
    ) -> list[Notification]:
        """The user's notifying actions, newest first, below `before` (a stream position).

        Read from the per-event rows of the rooms the user has a summary row in (every room
        they were ever notified in once rotated) and of the events still queued, newest
        first, a page at a time, keeping those whose actions for the user notify."""

        def txn_fn(txn: Transaction) -> list[Notification]:
            found: list[tuple[int, str, str, str, int, str, bool]] = []
            below = before
            while len(found) < limit:
                sql = (
                    "SELECT stream_ordering, room_id, event_id, thread_id, ts, groups"
                    " FROM event_push_actions"
                    " WHERE (room_id IN (SELECT room_id FROM event_push_summary"
                    " WHERE user_id = ?)"
                    " OR stream_ordering IN (SELECT stream_ordering"
                    " FROM event_push_rotation_queue))"
                )
                args: list[Any] = [user_id]
                if below is not None:
                    sql += " AND stream_ordering < ?"
                    args.append(below)
                if only_highlight:
                    sql += " AND highlight = ?"
                    args.append(True)
                sql += " ORDER BY stream_ordering DESC LIMIT ?"
                page = max(2 * (limit - len(found)), NOTIFICATIONS_PAGE)
                args.append(page)
                rows = txn.select_all(sql, args)
                for ordering, room_id, event_id, thread_id, ts, groups in rows:
                    outcome = outcome_for(groups, user_id)
                    if outcome is None or not outcome[1]:
                        continue
                    if only_highlight and not outcome[2]:
                        continue
                    found.append(
                        (ordering, room_id, event_id, thread_id, ts, outcome[0], outcome[2])
                    )
                if len(rows) < page:
                    break
                below = rows[-1][0]
            found = found[:limit]
            positions = {
                room_id: _read_positions_txn(txn, user_id, room_id)
                for room_id in {r[1] for r in found}
            }
            result = []
            for ordering, room_id, event_id, thread_id, ts, actions, highlight in found:
                read = positions[room_id]
                up_to = max(read.get(UNTHREADED, 0), read.get(thread_id, 0))
                result.append(
                    Notification(room_id, event_id, ordering, thread_id, highlight,
                                 json.loads(actions), ts, ordering <= up_to)
                )
            return result

        return await self._db.run_interaction("get_notifications", txn_fn)


# Queued events counted per rotation transaction.
ROTATE_BATCH = 500
# Summary rows written per statement (7 values each: under SQLite's 999 bound variables).
SUMMARY_ROWS_PER_STATEMENT = 100
# Per-event rows read per query of GET /notifications (at least).
NOTIFICATIONS_PAGE = 100


def rotate_txn(txn: Transaction) -> int:
    """Count the oldest queued events into the summary: per room, each touched (user,
    thread)'s row is read, brought up to date and written once for the whole batch."""
    queued = txn.select_all(
        "SELECT stream_ordering FROM event_push_rotation_queue"
        " ORDER BY stream_ordering LIMIT ?",
        (ROTATE_BATCH,),
    )
    if not queued:
        return 0
    orderings = [row[0] for row in queued]
    # The delete is the claim: a concurrent rotation of the same events conflicts with it
    # (a serialization failure, and the transaction is retried).
    for start in range(0, len(orderings), IN_CHUNK_SIZE):
        chunk = orderings[start : start + IN_CHUNK_SIZE]
        txn.execute(
            "DELETE FROM event_push_rotation_queue WHERE stream_ordering IN"
            f" ({','.join('?' for _ in chunk)})",
            chunk,
        )
    events = txn.select_in_chunks(
        "SELECT stream_ordering, room_id, thread_id, groups FROM event_push_actions"
        " WHERE stream_ordering IN ({in})",
        orderings,
    )
    by_room: dict[str, list[tuple[int, str, str]]] = {}
    for ordering, room_id, thread_id, groups in sorted(events):
        by_room.setdefault(room_id, []).append((ordering, thread_id, groups))
    batch = set(orderings)
    for room_id, room_events in by_room.items():
        _rotate_room_txn(txn, room_id, room_events, batch)
    return len(orderings)


def _group_lines(text: str) -> list[str]:
    """An event's groups as `encode_groups` lines (0013's JSON object made into them)."""
    if text.startswith("{"):
        return encode_groups(
            ActionGroup(a, n, h, tuple(users)) for a, n, h, users in decode_groups(text)
        ).split("\n")
    return text.split("\n")


def _rotate_room_txn(
    txn: Transaction, room_id: str, events: list[tuple[int, str, str]], batch: set[int]
) -> None:
    """`events` in stream order."""
    # The same group line (same actions, same users) recurs event after event in a busy
    # room: each distinct line is counted once, times the events it is in, with the latest
    # of them. A thousand members then cost a few C-level passes per batch, not per event.
    lines: dict[tuple[str, str], list[int]] = {}
    for ordering, thread_id, text in events:
        for line in _group_lines(text):
            seen = lines.get((thread_id, line))
            if seen is None:
                lines[(thread_id, line)] = [1, ordering]
            else:
                seen[0] += 1
                seen[1] = ordering
    # Per thread: how many of the batch's events notify and highlight each user, and the
    # latest event of the batch they are in.
    per_thread: dict[str, tuple[Counter[str], Counter[str], dict[str, int]]] = {}
    for (thread_id, line), (times, last) in sorted(lines.items(), key=lambda item: item[1][1]):
        notifs, highlights, latest = per_thread.setdefault(thread_id, (Counter(), Counter(), {}))
        head, _, users_text = line.partition("\t")
        users = users_text.split(" ")
        counted = users if times == 1 else dict.fromkeys(users, times)
        if head[0] == "1":
            notifs.update(counted)
        if head[1] == "1":
            highlights.update(counted)
        # In order of their latest event: the last one written is the latest.
        latest.update(dict.fromkeys(users, last))
    users = sorted({user_id for _, _, latest in per_thread.values() for user_id in latest})
    positions = _room_read_positions_txn(txn, room_id, users)
    # Users who have read into the batch (a receipt, their own event): take off what they
    # read. Few users, for few events.
    first = events[0][0]
    for user_id, read in positions.items():
        for thread_id, (notifs, highlights, latest) in per_thread.items():
            effective = max(read.get(UNTHREADED, 0), read.get(thread_id, 0))
            if effective < first or user_id not in latest:
                continue
            for ordering, event_thread, text in events:
                if event_thread != thread_id or ordering > effective:
                    continue
                outcome = outcome_for(text, user_id)
                if outcome is not None:
                    notifs[user_id] -= outcome[1]
                    highlights[user_id] -= outcome[2]
    existing = {
        (user_id, thread_id): (notifs, highlights, read_position, ordering)
        for user_id, thread_id, notifs, highlights, read_position, ordering
        in txn.select_in_chunks(
            "SELECT user_id, thread_id, notif_count, highlight_count, read_position,"
            " stream_ordering FROM event_push_summary WHERE room_id = ? AND user_id IN ({in})",
            users,
            args_before=(room_id,),
        )
    }
    rows = []
    for thread_id, (notifs, highlights, latest) in per_thread.items():
        for user_id, last in latest.items():
            read = positions.get(user_id, {})
            effective = max(read.get(UNTHREADED, 0), read.get(thread_id, 0))
            base_notifs, base_highlights, base_latest = _base_counts_txn(
                txn, user_id, room_id, thread_id, effective,
                existing.get((user_id, thread_id)), batch,
            )
            rows.append((
                user_id, room_id, thread_id, base_notifs + notifs[user_id],
                base_highlights + highlights[user_id], effective, max(base_latest, last),
            ))
    # Grouped by user, so each user's page is visited once; many rows per statement, which
    # PostgreSQL plans once rather than once a row (a tenth of the time for a thousand).
    rows.sort()
    for start in range(0, len(rows), SUMMARY_ROWS_PER_STATEMENT):
        chunk = rows[start : start + SUMMARY_ROWS_PER_STATEMENT]
        txn.execute(
            "INSERT INTO event_push_summary (user_id, room_id, thread_id, notif_count,"
            " highlight_count, read_position, stream_ordering) VALUES "
            + ", ".join("(?, ?, ?, ?, ?, ?, ?)" for _ in chunk)
            + " ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET"
            " notif_count = excluded.notif_count, highlight_count = excluded.highlight_count,"
            " read_position = excluded.read_position, stream_ordering = excluded.stream_ordering",
            [value for row in chunk for value in row],
        )


def _base_counts_txn(
    txn: Transaction,
    user_id: str,
    room_id: str,
    thread_id: str,
    effective: int,
    row: tuple[int, int, int, int] | None,
    exclude: Collection[int] = (),
) -> tuple[int, int, int]:
    """(notifications, highlights, latest event counted) of a summary row for the read
    position `effective`: the row's own when it was counted after that position, none when
    everything it counted is read, else counted again from the rotated events."""
    if row is None:
        return 0, 0, 0
    notifs, highlights, read_position, latest = row
    if effective >= latest:
        return 0, 0, latest
    if effective == read_position:
        return notifs, highlights, latest
    notifs = highlights = 0
    for ordering, text in txn.select_all(
        "SELECT e.stream_ordering, e.groups FROM event_push_actions e"
        " WHERE e.room_id = ? AND e.thread_id = ? AND e.stream_ordering > ?"
        " AND e.stream_ordering <= ? AND NOT EXISTS (SELECT 1 FROM event_push_rotation_queue q"
        " WHERE q.stream_ordering = e.stream_ordering)",
        (room_id, thread_id, effective, latest),
    ):
        if ordering in exclude:
            continue
        outcome = outcome_for(text, user_id)
        if outcome is not None:
            notifs += outcome[1]
            highlights += outcome[2]
    return notifs, highlights, latest


def _room_read_positions_txn(
    txn: Transaction, room_id: str, users: Sequence[str]
) -> dict[str, dict[str, int]]:
    """user_id -> their read positions in the room (see `_read_positions_txn`)."""
    positions: dict[str, dict[str, int]] = {}
    wanted = set(users)

    def take(rows: Iterable[tuple[Any, ...]]) -> None:
        for user_id, thread_id, ordering in rows:
            if ordering is None or user_id not in wanted:
                continue
            read = positions.setdefault(user_id, {})
            if ordering > read.get(thread_id, 0):
                read[thread_id] = ordering

    take(
        txn.select_all(
            "SELECT r.user_id, r.thread_id, MAX(e.stream_ordering) FROM receipts r"
            " JOIN events e ON e.event_id = r.event_id"
            " WHERE r.room_id = ? AND r.receipt_type IN (?, ?)"
            " GROUP BY r.user_id, r.thread_id",
            (room_id, *READ_RECEIPT_TYPES),
        )
    )
    take(
        txn.select_in_chunks(
            "SELECT user_id, thread_id, stream_ordering FROM push_sent_positions"
            " WHERE room_id = ? AND user_id IN ({in})",
            users,
            args_before=(room_id,),
        )
    )
    return positions


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


def _counts_txn(txn: Transaction, user_id: str, room_id: str) -> RoomCounts:
    """The summary's counts, each thread's brought to the user's read position now, plus
    the events still queued. Only reads: a reader never conflicts with a rotation (on
    PostgreSQL, a thousand members reading their counts at once would otherwise all try to
    rotate the same batch), and a stale row counted again here is written by the next
    rotation that touches it."""
    positions = _read_positions_txn(txn, user_id, room_id)

    def effective(thread_id: str) -> int:
        return max(positions.get(UNTHREADED, 0), positions.get(thread_id, 0))

    threads: dict[str, list[int]] = {}
    for thread_id, notifs, highlights, read_position, latest in txn.select_all(
        "SELECT thread_id, notif_count, highlight_count, read_position, stream_ordering"
        " FROM event_push_summary WHERE user_id = ? AND room_id = ?",
        (user_id, room_id),
    ):
        n, h, _ = _base_counts_txn(
            txn, user_id, room_id, thread_id, effective(thread_id),
            (notifs, highlights, read_position, latest),
        )
        threads[thread_id] = [n, h]
    for ordering, thread_id, text in txn.select_all(
        "SELECT e.stream_ordering, e.thread_id, e.groups FROM event_push_actions e"
        " JOIN event_push_rotation_queue q ON q.stream_ordering = e.stream_ordering"
        " WHERE q.room_id = ?",
        (room_id,),
    ):
        outcome = outcome_for(text, user_id)
        if outcome is None or ordering <= effective(thread_id):
            continue
        counts = threads.setdefault(thread_id, [0, 0])
        counts[0] += outcome[1]
        counts[1] += outcome[2]
    return RoomCounts(positions, {t: c for t, c in threads.items() if c[0] or c[1]})
