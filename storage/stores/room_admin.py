"""What the admin API reads and writes about rooms beyond what clients do: one row of
figures per room for the room list and details, blocked rooms, and purging a room from the
database in transactions of bounded size."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.events.model import Event
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.events.types import (
    CANONICAL_ALIAS,
    CREATE,
    ENCRYPTION,
    GUEST_ACCESS,
    HISTORY_VISIBILITY,
    JOIN_RULES,
    MEMBER,
    NAME,
)
from storage.database import Database, Transaction

# Rows one purge transaction deletes at most (per table), so a room of millions of events
# is removed in many short transactions that never hold the database (or, on SQLite, the
# writer) for long.
PURGE_BATCH = 1000
# Events one purge transaction deletes at most: each brings several rows along (DAG edges,
# auth links, push actions), so fewer of them make a transaction of about PURGE_BATCH rows.
PURGE_EVENT_BATCH = 200


@dataclass(frozen=True)
class HistoryPosition:
    """Where a history purge's next batch starts: past this event's place in the room's
    depth order."""

    depth: int
    stream_ordering: int


def listed_values(event_type: str, content: Mapping[str, Any]) -> dict[str, Any]:
    """What the room list summary holds from the current state event of `event_type` (empty
    state key) with `content`; `content` {} when the room has none."""
    if event_type == CREATE:
        federate, room_type = content.get("m.federate", True), content.get("type")
        return {
            "federatable": federate if isinstance(federate, bool) else True,
            "room_type": _text(room_type),
        }
    if event_type == NAME:
        name = _text(content.get("name"))
        return {"name": name, "name_folded": name.lower() if name is not None else None}
    if event_type == CANONICAL_ALIAS:
        alias = _text(content.get("alias"))
        localpart = alias[1:].split(":", 1)[0].lower() if alias is not None else None
        return {"canonical_alias": alias, "alias_localpart_folded": localpart}
    if event_type in _TEXT_COLUMNS:
        column, key = _TEXT_COLUMNS[event_type]
        return {column: _text(content.get(key))}
    return {}


_TEXT_COLUMNS = {
    JOIN_RULES: ("join_rules", "join_rule"),
    GUEST_ACCESS: ("guest_access", "guest_access"),
    HISTORY_VISIBILITY: ("history_visibility", "history_visibility"),
    ENCRYPTION: ("encryption", "algorithm"),
}
# The state the summary is made of (TOPIC, AVATAR and TOMBSTONE are only in the details).
LISTED_STATE_TYPES = (CREATE, NAME, CANONICAL_ALIAS, *_TEXT_COLUMNS)
_SUMMARY_COLUMNS = (
    "name", "name_folded", "canonical_alias", "alias_localpart_folded", "join_rules",
    "guest_access", "history_visibility", "encryption", "federatable", "room_type",
    "joined_members", "joined_local_members", "state_events",
)
# Sort keys of the room list -> (SQL, whether it can be NULL). Text from `rooms` is sorted
# by code point on PostgreSQL too (the summary's own text columns are declared so).
_ORDER_SQL = {
    "name": ("s.name", True),
    "canonical_alias": ("s.canonical_alias", True),
    "joined_members": ("s.joined_members", False),
    "joined_local_members": ("s.joined_local_members", False),
    "version": ("r.room_version{c}", False),
    "creator": ("r.creator{c}", True),
    "encryption": ("s.encryption", True),
    "federatable": ("s.federatable", False),
    "public": ("r.is_public", False),
    "join_rules": ("s.join_rules", True),
    "guest_access": ("s.guest_access", True),
    "history_visibility": ("s.history_visibility", True),
    "state_events": ("s.state_events", False),
}
ROOM_SORT_KEYS = frozenset(_ORDER_SQL)


def _text(value: Any) -> str | None:
    # PostgreSQL's text cannot hold NUL: the summary keeps U+FFFD in its place (a search
    # term's NULs are replaced likewise), the same on both engines.
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else None


@dataclass(frozen=True)
class RoomFigures:
    """One room as the admin room list shows it."""

    room_id: str
    room_version: str
    creator: str | None
    is_public: bool
    name: str | None
    canonical_alias: str | None
    join_rules: str | None
    guest_access: str | None
    history_visibility: str | None
    encryption: str | None
    federatable: bool
    room_type: str | None
    joined_members: int
    joined_local_members: int
    state_events: int


@dataclass(frozen=True)
class RoomListFilter:
    search_term: str | None = None
    public_rooms: bool | None = None
    empty_rooms: bool | None = None


_FIGURES_SELECT = (
    "SELECT r.room_id, r.room_version, r.creator, r.is_public, s.name, s.canonical_alias,"
    " s.join_rules, s.guest_access, s.history_visibility, s.encryption, s.federatable,"
    " s.room_type, s.joined_members, s.joined_local_members, s.state_events"
)
# Every row of `rooms` has its summary row (written with it, or at start-up for rooms held
# before the summary existed).
_FIGURES_FROM = " FROM room_list_summary AS s JOIN rooms AS r ON r.room_id = s.room_id"


def _figures(row: tuple) -> RoomFigures:
    return RoomFigures(
        row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6], row[7], row[8], row[9],
        bool(row[10]), row[11], int(row[12]), int(row[13]), int(row[14]),
    )


def _escape_like(value: str) -> str:
    """`value` in a LIKE pattern (with ESCAPE '\\'), its wildcards taken literally."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like_anywhere(value: str) -> str:
    return f"%{_escape_like(value)}%"


def _list_where(txn: Transaction, query: RoomListFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if query.public_rooms is not None:
        clauses.append("r.is_public = ?")
        args.append(query.public_rooms)
    if query.empty_rooms is not None:
        clauses.append("s.joined_members = 0" if query.empty_rooms else "s.joined_members > 0")
    if query.search_term:
        # The name and the alias's localpart ignore case (both sides lower-cased by the
        # server); the room ID does not (as Synapse).
        contains = "instr(r.room_id, ?) > 0" if txn.engine.name == "sqlite" else (
            "strpos(r.room_id, ?) > 0"
        )
        clauses.append(
            "(s.name_folded LIKE ? ESCAPE '\\' OR s.alias_localpart_folded LIKE ? ESCAPE '\\'"
            f" OR {contains})"
        )
        term = query.search_term.replace("\x00", "\ufffd")
        folded = _like_anywhere(term.lower())
        args += [folded, folded, term]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _local_suffix(server_name: str) -> str:
    return ":" + server_name


def refresh_room_summaries_txn(
    txn: Transaction, server_name: str, room_ids: Collection[str]
) -> None:
    """Compute the summary rows of `room_ids` from their current state, written over any
    the rooms have (rooms the server does not hold are left out)."""
    suffix = _local_suffix(server_name)
    for chunk in _chunks(list(room_ids), 200):
        marks = ",".join("?" for _ in chunk)
        versions = dict(
            txn.select_all(
                f"SELECT room_id, room_version FROM rooms WHERE room_id IN ({marks})", chunk
            )
        )
        rows: dict[str, dict[str, Any]] = {}
        for room_id in versions:
            row: dict[str, Any] = {"joined_members": 0, "joined_local_members": 0}
            for event_type in LISTED_STATE_TYPES:
                row.update(listed_values(event_type, {}))
            rows[room_id] = row
        for room_id, total in txn.select_all(
            "SELECT room_id, COUNT(*) FROM current_state_events"
            f" WHERE room_id IN ({marks}) GROUP BY room_id",
            chunk,
        ):
            if room_id in rows:
                rows[room_id]["state_events"] = int(total)
        for room_id, state_key in txn.select_all(
            "SELECT room_id, state_key FROM current_state_events"
            f" WHERE room_id IN ({marks}) AND type = ? AND membership = 'join'",
            [*chunk, MEMBER],
        ):
            if room_id in rows:
                rows[room_id]["joined_members"] += 1
                if state_key.endswith(suffix):
                    rows[room_id]["joined_local_members"] += 1
        types = ",".join("?" for _ in LISTED_STATE_TYPES)
        for room_id, event_type, raw, redacted in txn.select_all(
            "SELECT c.room_id, c.type, e.json, " + _REDACTED_SQL.format(event="c.event_id")
            + " FROM current_state_events AS c JOIN events AS e ON e.event_id = c.event_id"
            f" WHERE c.room_id IN ({marks}) AND c.state_key = '' AND c.type IN ({types})",
            [*chunk, *LISTED_STATE_TYPES],
        ):
            if room_id in rows:
                content = _visible_content(json.loads(raw), versions[room_id], bool(redacted))
                rows[room_id].update(listed_values(event_type, content))
        columns = ", ".join(_SUMMARY_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _SUMMARY_COLUMNS)
        txn.execute_many(
            f"INSERT INTO room_list_summary (room_id, {columns})"
            f" VALUES (?, {', '.join('?' for _ in _SUMMARY_COLUMNS)})"
            f" ON CONFLICT (room_id) DO UPDATE SET {updates}",
            [
                (room_id, *(row.get(c, 0) for c in _SUMMARY_COLUMNS))
                for room_id, row in rows.items()
            ],
        )


# Whether the event is redacted as clients see it: a redaction from the same room (one
# naming an event of another room is never the answer; see `EventStore.get_redactions`).
_REDACTED_SQL = (
    "(SELECT COUNT(*) FROM redactions AS rd JOIN events AS re ON re.event_id = rd.event_id"
    " WHERE rd.redacts = {event} AND re.room_id = e.room_id)"
)


def _visible_content(pdu: dict[str, Any], room_version: str, redacted: bool) -> Mapping[str, Any]:
    if redacted:
        version = KNOWN_ROOM_VERSIONS.get(room_version)
        pdu = prune_event_dict(pdu, version) if version is not None else {}
    content = pdu.get("content")
    return content if isinstance(content, dict) else {}


def note_current_state_change_txn(
    txn: Transaction,
    server_name: str,
    event: Event,
    previous_membership: str | None,
    replaced: bool,
) -> None:
    """Bring the room's summary row up to date with `event` having become current state:
    it replaced an event of the same type and state key (`replaced`, with that one's
    membership) or was the first. Touches one row, whatever the room's size."""
    assert event.state_key is not None
    changes: dict[str, Any] = {}
    if event.state_key == "" and event.type in LISTED_STATE_TYPES:
        redacted = txn.select_one(
            "SELECT " + _REDACTED_SQL.format(event="?") + " FROM events AS e"
            " WHERE e.event_id = ?",
            (event.event_id, event.event_id),
        )
        content = _visible_content(
            event.pdu, event.room_version.identifier, bool(redacted and redacted[0])
        )
        changes = listed_values(event.type, content)
    joined = (event.membership == "join") - (previous_membership == "join") \
        if event.type == MEMBER else 0
    local = joined if event.state_key.endswith(_local_suffix(server_name)) else 0
    sets = [f"{column} = ?" for column in changes]
    txn.execute(
        "UPDATE room_list_summary SET state_events = state_events + ?,"
        " joined_members = joined_members + ?, joined_local_members = joined_local_members + ?"
        + "".join(", " + s for s in sets)
        + " WHERE room_id = ?",
        (0 if replaced else 1, joined, local, *changes.values(), event.room_id),
    )


def refresh_if_listed_txn(txn: Transaction, server_name: str, room_id: str, event_id: str) -> None:
    """After `event_id` was redacted: refresh the room's summary if the event is current
    state it is made of."""
    types = ",".join("?" for _ in LISTED_STATE_TYPES)
    if txn.select_one(
        "SELECT 1 FROM current_state_events WHERE room_id = ? AND event_id = ?"
        f" AND state_key = '' AND type IN ({types})",
        (room_id, event_id, *LISTED_STATE_TYPES),
    ):
        refresh_room_summaries_txn(txn, server_name, [room_id])


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _delete_events_txn(
    txn: Transaction, events: list[tuple[int, str]], also: tuple[str, ...]
) -> None:
    """Delete `events` ((stream ordering, event ID) pairs) and what hangs on each (their
    graph edges, auth links, relations, search index rows, push actions, and those actions
    still queued for the count summary), and their rows in the tables `also` names, keyed
    by event ID. Every delete goes through a key: a batch costs what it deletes, not the
    table's size."""
    orderings = [ordering for ordering, _ in events]
    event_ids = [event_id for _, event_id in events]
    by_ordering = ",".join("?" for _ in orderings)
    # Push actions (and those not yet counted into the summary) are keyed by position.
    for table in ("event_push_rotation_queue", "event_push_actions"):
        txn.execute(f"DELETE FROM {table} WHERE stream_ordering IN ({by_ordering})", orderings)
    marks = ",".join("?" for _ in event_ids)
    for table in (
        "event_edges", "event_auth", "event_relations", "event_search", *also, "events"
    ):
        txn.execute(f"DELETE FROM {table} WHERE event_id IN ({marks})", event_ids)


class RoomAdminStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def one_connection(self) -> bool:
        """Whether every transaction goes through one connection (SQLite), so a long run
        of purge batches holds up every other request."""
        return self._db.engine.max_connections == 1

    # ----- reading ---------------------------------------------------------------------

    async def list_rooms(
        self, query: RoomListFilter, sort_key: str, descending: bool, offset: int, limit: int
    ) -> tuple[list[RoomFigures], int]:
        """One page of the rooms matching `query`, sorted by `sort_key` (one of
        `ROOM_SORT_KEYS`), and how many match in all. Rooms without a value come last
        either way; ties are broken by room ID, ascending."""
        column, nullable = _ORDER_SQL[sort_key]
        direction = "DESC" if descending else "ASC"

        def txn_fn(txn: Transaction) -> tuple[list[RoomFigures], int]:
            sort = column.format(c=' COLLATE "C"' if txn.engine.name == "postgresql" else "")
            order = f" ORDER BY ({sort} IS NULL), " if nullable else " ORDER BY "
            order += f"{sort} {direction}, s.room_id ASC"
            where, args = _list_where(txn, query)
            total = txn.select_one("SELECT COUNT(*)" + _FIGURES_FROM + where, args)
            rows = txn.select_all(
                _FIGURES_SELECT + _FIGURES_FROM + where + order + " LIMIT ? OFFSET ?",
                [*args, limit, offset],
            )
            return [_figures(row) for row in rows], int(total[0]) if total else 0

        return await self._db.run_interaction("admin_list_rooms", txn_fn)

    async def room_figures(self, room_id: str) -> RoomFigures | None:
        row = await self._db.run_interaction(
            "admin_room_figures",
            lambda txn: txn.select_one(
                _FIGURES_SELECT + _FIGURES_FROM + " WHERE r.room_id = ?", (room_id,)
            ),
        )
        return _figures(row) if row else None

    async def fill_room_list_summaries(self, server_name: str, batch: int = 500) -> int:
        """Write the summary rows rooms lack (those held before the summary existed), a
        batch of rooms per transaction; how many were written."""
        filled = 0
        while True:
            missing = await self._db.run_interaction(
                "admin_rooms_without_summary",
                lambda txn: [
                    row[0]
                    for row in txn.select_all(
                        "SELECT room_id FROM rooms AS r WHERE NOT EXISTS"
                        " (SELECT 1 FROM room_list_summary AS s WHERE s.room_id = r.room_id)"
                        " LIMIT ?",
                        (batch,),
                    )
                ],
            )
            if not missing:
                return filled
            await self._db.run_interaction(
                "admin_fill_room_summaries", refresh_room_summaries_txn, server_name, missing
            )
            filled += len(missing)

    async def local_devices_in_room(self, room_id: str) -> int:
        """How many devices the room's joined local members have."""
        row = await self._db.run_interaction(
            "admin_local_devices_in_room",
            lambda txn: txn.select_one(
                "SELECT COUNT(*) FROM devices d JOIN current_state_events c"
                " ON c.state_key = d.user_id"
                " WHERE c.room_id = ? AND c.type = ? AND c.membership = 'join'",
                (room_id, MEMBER),
            ),
        )
        return int(row[0]) if row else 0

    async def forgotten_by_all_local_users(self, server_name: str, room_id: str) -> bool:
        """Whether every local user with a membership of the room has forgotten it (false
        when no local user ever had one)."""
        suffix = _local_suffix(server_name)

        def txn_fn(txn: Transaction) -> bool:
            rows = txn.select_all(
                "SELECT user_id, forgotten FROM room_memberships WHERE room_id = ?", (room_id,)
            )
            local = [bool(forgotten) for user_id, forgotten in rows if user_id.endswith(suffix)]
            return bool(local) and all(local)

        return await self._db.run_interaction("admin_room_forgotten", txn_fn)

    async def forward_extremities(self, room_id: str) -> list[tuple[str, int | None, int]]:
        """(event ID, state group after it, depth) of each forward extremity."""
        rows = await self._db.run_interaction(
            "admin_forward_extremities",
            lambda txn: txn.select_all(
                "SELECT f.event_id, e.state_group_after, e.topological_ordering"
                " FROM event_forward_extremities f JOIN events e USING (event_id)"
                " WHERE f.room_id = ? ORDER BY f.event_id",
                (room_id,),
            ),
        )
        return [(row[0], row[1], int(row[2])) for row in rows]

    async def delete_extra_forward_extremities(self, room_id: str) -> int:
        """Delete all the room's forward extremities but the newest (by arrival); how many
        were deleted. The next event sent in the room then points at that one only."""

        def txn_fn(txn: Transaction) -> int:
            newest = txn.select_one(
                "SELECT f.event_id FROM event_forward_extremities f JOIN events e"
                " USING (event_id) WHERE f.room_id = ? ORDER BY e.stream_ordering DESC LIMIT 1",
                (room_id,),
            )
            if newest is None:
                return 0
            txn.execute(
                "DELETE FROM event_forward_extremities WHERE room_id = ? AND event_id <> ?",
                (room_id, newest[0]),
            )
            return txn.rowcount

        return await self._db.run_interaction("admin_delete_forward_extremities", txn_fn)

    async def closest_event_to_ts(
        self, room_id: str, ts: int, forwards: bool
    ) -> tuple[str, int] | None:
        """(event ID, origin_server_ts) of the room's timeline event sent closest to `ts`,
        at or after it (`forwards`) or at or before it; ties go to the earlier arrival
        going forwards, the later one going backwards. Outliers and rejected events are
        not in the timeline."""
        compare, order = (">=", "ASC") if forwards else ("<=", "DESC")
        row = await self._db.run_interaction(
            "admin_closest_event_to_ts",
            lambda txn: txn.select_one(
                "SELECT event_id, origin_server_ts FROM events"
                f" WHERE room_id = ? AND origin_server_ts {compare} ? AND outlier = ?"
                " AND rejected_reason IS NULL"
                f" ORDER BY origin_server_ts {order}, stream_ordering {order} LIMIT 1",
                (room_id, ts, False),
            ),
        )
        return (row[0], int(row[1])) if row else None

    # ----- blocking ----------------------------------------------------------------------

    async def get_block(self, room_id: str) -> str | None:
        """The admin who blocked the room, or None if it is not blocked."""
        row = await self._db.run_interaction(
            "get_room_block",
            lambda txn: txn.select_one(
                "SELECT user_id FROM blocked_rooms WHERE room_id = ?", (room_id,)
            ),
        )
        return row[0] if row else None

    async def set_block(self, room_id: str, admin_user_id: str | None, ts: int) -> None:
        """Block the room (by `admin_user_id`), or unblock it (None)."""

        def txn_fn(txn: Transaction) -> None:
            if admin_user_id is None:
                txn.execute("DELETE FROM blocked_rooms WHERE room_id = ?", (room_id,))
                return
            # A second block keeps the first admin's name, as Synapse does.
            txn.execute(
                "INSERT INTO blocked_rooms (room_id, user_id, ts) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id) DO NOTHING",
                (room_id, admin_user_id, ts),
            )

        await self._db.run_interaction("set_room_block", txn_fn)

    # ----- aliases -----------------------------------------------------------------------

    async def move_aliases(self, room_id: str, new_room_id: str) -> list[str]:
        """Point every alias of `room_id` at `new_room_id`; the aliases moved."""

        def txn_fn(txn: Transaction) -> list[str]:
            aliases = [
                row[0]
                for row in txn.select_all(
                    "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY room_alias",
                    (room_id,),
                )
            ]
            txn.execute(
                "UPDATE room_aliases SET room_id = ? WHERE room_id = ?", (new_room_id, room_id)
            )
            return aliases

        return await self._db.run_interaction("admin_move_aliases", txn_fn)

    # ----- purging -----------------------------------------------------------------------

    async def purge_event_batch(
        self, room_id: str, limit: int = PURGE_EVENT_BATCH
    ) -> list[str]:
        """Delete up to `limit` of the room's events and what hangs off them (DAG edges,
        auth links, redactions, relations, push actions); the IDs deleted, [] once none
        are left."""

        def txn_fn(txn: Transaction) -> list[str]:
            rows = txn.select_all(
                "SELECT stream_ordering, event_id FROM events WHERE room_id = ?"
                " ORDER BY stream_ordering LIMIT ?",
                (room_id, limit),
            )
            events = [(int(row[0]), row[1]) for row in rows]
            if events:
                _delete_events_txn(txn, events, ("redactions",))
            return [event_id for _, event_id in events]

        return await self._db.run_interaction("admin_purge_events", txn_fn)

    async def purge_state_group_batch(self, room_id: str, limit: int = PURGE_BATCH) -> int:
        """Delete up to `limit` of the room's state groups with their entries; how many."""

        def txn_fn(txn: Transaction) -> int:
            groups = [
                row[0]
                for row in txn.select_all(
                    "SELECT id FROM state_groups WHERE room_id = ? LIMIT ?", (room_id, limit)
                )
            ]
            if groups:
                marks = ",".join("?" for _ in groups)
                txn.execute(
                    f"DELETE FROM state_group_entries WHERE state_group IN ({marks})", groups
                )
                txn.execute(f"DELETE FROM state_groups WHERE id IN ({marks})", groups)
            return len(groups)

        return await self._db.run_interaction("admin_purge_state_groups", txn_fn)

    async def purge_room_row_batch(self, room_id: str, limit: int = PURGE_BATCH) -> int:
        """Delete up to `limit` rows of the room's other per-room tables (current state,
        memberships, receipts, abuse reports, ...); how many, 0 once none are left."""

        def txn_fn(txn: Transaction) -> int:
            deleted = 0
            # Tables keyed by room and something else: delete by that key, a batch at a time.
            for table, keys in (
                ("current_state_events", ("type", "state_key")),
                ("room_memberships", ("user_id",)),
                ("receipts", ("receipt_type", "user_id", "thread_id")),
                ("account_data", ("user_id", "type")),
                ("room_keys", ("user_id", "version", "session_id")),
                ("push_sent_positions", ("user_id", "thread_id")),
                ("event_push_summary", ("user_id", "thread_id")),
                ("server_notice_rooms", ("user_id",)),
                ("event_txn_ids", ("user_id", "device_id", "txn_id")),
                ("federation_outbound_pdus", ("destination", "stream_ordering")),
                ("event_forward_extremities", ("event_id",)),
                ("event_backward_extremities", ("event_id",)),
                # Reports about the room and its events: what they point at is gone.
                ("event_reports", ("id",)),
                ("room_reports", ("id",)),
            ):
                columns = ", ".join(keys)
                rows = txn.select_all(
                    f"SELECT {columns} FROM {table} WHERE room_id = ? LIMIT ?",
                    (room_id, limit - deleted),
                )
                if rows:
                    match = " AND ".join(f"{k} = ?" for k in keys)
                    txn.execute_many(
                        f"DELETE FROM {table} WHERE room_id = ? AND {match}",
                        [(room_id, *row) for row in rows],
                    )
                    deleted += len(rows)
                if deleted >= limit:
                    return deleted
            return deleted

        return await self._db.run_interaction("admin_purge_room_rows", txn_fn)

    async def purge_room_start(self, room_id: str) -> None:
        """The first step: the room's aliases and its row (its directory entry with it),
        after which the server no longer knows the room."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute("DELETE FROM room_aliases WHERE room_id = ?", (room_id,))
            txn.execute("DELETE FROM room_list_summary WHERE room_id = ?", (room_id,))
            txn.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))

        await self._db.run_interaction("admin_purge_room_start", txn_fn)

    # ----- purging history -------------------------------------------------------------

    async def depth_before_ts(self, room_id: str, ts: int) -> int | None:
        """The depth of the room's last event (by arrival) sent before `ts`, or None."""
        row = await self._db.run_interaction(
            "admin_depth_before_ts",
            lambda txn: txn.select_one(
                "SELECT topological_ordering FROM events"
                " WHERE room_id = ? AND origin_server_ts < ? AND outlier = ?"
                " ORDER BY stream_ordering DESC LIMIT 1",
                (room_id, ts, False),
            ),
        )
        return int(row[0]) if row else None

    async def purge_history_batch(
        self,
        room_id: str,
        below_depth: int,
        keep_server: str | None,
        after: HistoryPosition | None = None,
        limit: int = PURGE_EVENT_BATCH,
    ) -> tuple[list[str], HistoryPosition | None]:
        """Delete up to `limit` of the room's timeline events deeper in history than
        `below_depth` (and what hangs off them), oldest first, from past `after` (what the
        previous batch returned); the IDs deleted ([] once none are left) and where the
        next batch starts. State events stay (state and auth rules need them), and so do
        redactions (else what they redacted would reappear) and forward extremities; with
        `keep_server`, so do the events its users sent. Batches walk the room's depth
        index from where the last one stopped, so the events kept are read once, not once
        per batch."""

        def txn_fn(txn: Transaction) -> tuple[list[str], HistoryPosition | None]:
            sql = (
                "SELECT stream_ordering, event_id, topological_ordering FROM events"
                " WHERE room_id = ? AND topological_ordering < ?"
                " AND state_key IS NULL AND type != 'm.room.redaction' AND outlier = ?"
                " AND event_id NOT IN"
                " (SELECT event_id FROM event_forward_extremities WHERE room_id = ?)"
            )
            args: list[object] = [room_id, below_depth, False, room_id]
            if after is not None:
                sql += " AND (topological_ordering, stream_ordering) > (?, ?)"
                args += [after.depth, after.stream_ordering]
            if keep_server is not None:
                sql += " AND sender NOT LIKE ? ESCAPE '\\'"
                args.append("%:" + _escape_like(keep_server))
            sql += " ORDER BY topological_ordering, stream_ordering LIMIT ?"
            args.append(limit)
            rows = txn.select_all(sql, args)
            if not rows:
                return [], None
            events = [(int(row[0]), row[1]) for row in rows]
            _delete_events_txn(txn, events, ("federation_outbound_pdus",))
            last = rows[-1]
            return [event_id for _, event_id in events], HistoryPosition(int(last[2]), int(last[0]))

        return await self._db.run_interaction("admin_purge_history", txn_fn)
