"""What the admin API reads and writes about rooms beyond what clients do: one row of
figures per room for the room list and details, blocked rooms, and purging a room from the
database in transactions of bounded size."""

from __future__ import annotations

from dataclasses import dataclass, field

from homeserver.events.types import (
    AVATAR,
    CANONICAL_ALIAS,
    CREATE,
    ENCRYPTION,
    GUEST_ACCESS,
    HISTORY_VISIBILITY,
    JOIN_RULES,
    MEMBER,
    NAME,
    TOPIC,
)
from storage.database import Database, Transaction

TOMBSTONE = "m.room.tombstone"
# The state (empty state key) the room list and details describe a room with.
DESCRIBING_STATE_TYPES = (
    CREATE,
    NAME,
    TOPIC,
    AVATAR,
    CANONICAL_ALIAS,
    JOIN_RULES,
    GUEST_ACCESS,
    HISTORY_VISIBILITY,
    ENCRYPTION,
    TOMBSTONE,
)
# Rows one purge transaction deletes at most (per table), so a room of millions of events
# is removed in many short transactions that never hold the database (or, on SQLite, the
# writer) for long.
PURGE_BATCH = 1000


@dataclass(frozen=True)
class RoomFigures:
    room_id: str
    room_version: str
    creator: str | None
    is_public: bool
    joined_members: int
    joined_local_members: int
    state_events: int
    # event type -> event ID of the current state in DESCRIBING_STATE_TYPES.
    state_ids: dict[str, str] = field(default_factory=dict)


def _local_suffix(server_name: str) -> str:
    return ":" + server_name


def _figures_txn(
    txn: Transaction, server_name: str, room_id: str | None
) -> list[RoomFigures]:
    where, args = ("WHERE room_id = ?", [room_id]) if room_id is not None else ("", [])
    rooms = txn.select_all(
        f"SELECT room_id, room_version, creator, is_public FROM rooms {where}", args
    )
    if not rooms:
        return []
    counts: dict[str, list[int]] = {row[0]: [0, 0, 0] for row in rooms}
    suffix = _local_suffix(server_name)
    for rid, state_key, membership in txn.select_all(
        f"SELECT room_id, state_key, membership FROM current_state_events {where}"
        f"{' AND' if where else ' WHERE'} type = ?",
        [*args, MEMBER],
    ):
        if rid in counts and membership == "join":
            counts[rid][0] += 1
            if state_key.endswith(suffix):
                counts[rid][1] += 1
    for rid, total in txn.select_all(
        f"SELECT room_id, COUNT(*) FROM current_state_events {where} GROUP BY room_id", args
    ):
        if rid in counts:
            counts[rid][2] = total
    state_ids: dict[str, dict[str, str]] = {row[0]: {} for row in rooms}
    types = ",".join("?" for _ in DESCRIBING_STATE_TYPES)
    for rid, event_type, event_id in txn.select_all(
        "SELECT room_id, type, event_id FROM current_state_events"
        f" {where}{' AND' if where else ' WHERE'} state_key = '' AND type IN ({types})",
        [*args, *DESCRIBING_STATE_TYPES],
    ):
        if rid in state_ids:
            state_ids[rid][event_type] = event_id
    return [
        RoomFigures(
            room_id=rid,
            room_version=version,
            creator=creator,
            is_public=bool(public),
            joined_members=counts[rid][0],
            joined_local_members=counts[rid][1],
            state_events=counts[rid][2],
            state_ids=state_ids[rid],
        )
        for rid, version, creator, public in rooms
    ]


def _delete_events_txn(txn: Transaction, event_ids: list[str], also: tuple[str, ...]) -> None:
    """Delete `event_ids` and what hangs on each (their graph edges, auth links, relations,
    push actions, and those actions still queued for the count summary), and their rows in
    the tables `also` names, all keyed by event ID."""
    marks = ",".join("?" for _ in event_ids)
    # Push actions not yet counted into the summary are queued by stream position.
    txn.execute(
        "DELETE FROM event_push_rotation_queue WHERE stream_ordering IN"
        f" (SELECT stream_ordering FROM events WHERE event_id IN ({marks}))",
        event_ids,
    )
    for table in (
        "event_edges", "event_auth", "event_relations", "event_push_actions", *also, "events"
    ):
        txn.execute(f"DELETE FROM {table} WHERE event_id IN ({marks})", event_ids)


class RoomAdminStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ----- reading ---------------------------------------------------------------------

    async def all_room_figures(self, server_name: str) -> list[RoomFigures]:
        """Every room this server knows (the room list is sorted and paged from these)."""
        return await self._db.run_interaction(
            "admin_all_room_figures", _figures_txn, server_name, None
        )

    async def room_figures(self, server_name: str, room_id: str) -> RoomFigures | None:
        found = await self._db.run_interaction(
            "admin_room_figures", _figures_txn, server_name, room_id
        )
        return found[0] if found else None

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

    async def purge_event_batch(self, room_id: str, limit: int = PURGE_BATCH) -> list[str]:
        """Delete up to `limit` of the room's events and what hangs off them (DAG edges,
        auth links, redactions, relations, push actions); the IDs deleted, [] once none
        are left."""

        def txn_fn(txn: Transaction) -> list[str]:
            rows = txn.select_all(
                "SELECT event_id FROM events WHERE room_id = ? ORDER BY stream_ordering LIMIT ?",
                (room_id, limit),
            )
            event_ids = [row[0] for row in rows]
            if not event_ids:
                return []
            _delete_events_txn(txn, event_ids, ("redactions",))
            return event_ids

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
        memberships, receipts, ...); how many, 0 once none are left."""

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
        self, room_id: str, below_depth: int, keep_server: str | None, limit: int = PURGE_BATCH
    ) -> list[str]:
        """Delete up to `limit` of the room's timeline events deeper in history than
        `below_depth` (and what hangs off them); the IDs deleted, [] once none are left.
        State events stay (state and auth rules need them), and so do redactions (else what
        they redacted would reappear) and forward extremities; with `keep_server`, so do the
        events its users sent."""

        def txn_fn(txn: Transaction) -> list[str]:
            sql = (
                "SELECT event_id FROM events WHERE room_id = ? AND topological_ordering < ?"
                " AND state_key IS NULL AND type != 'm.room.redaction' AND outlier = ?"
                " AND event_id NOT IN"
                " (SELECT event_id FROM event_forward_extremities WHERE room_id = ?)"
            )
            args: list[object] = [room_id, below_depth, False, room_id]
            if keep_server is not None:
                escaped = (
                    keep_server.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                )
                sql += " AND sender NOT LIKE ? ESCAPE '\\'"
                args.append("%:" + escaped)
            sql += " ORDER BY stream_ordering LIMIT ?"
            args.append(limit)
            event_ids = [row[0] for row in txn.select_all(sql, args)]
            if not event_ids:
                return []
            _delete_events_txn(txn, event_ids, ("federation_outbound_pdus",))
            return event_ids

        return await self._db.run_interaction("admin_purge_history", txn_fn)
