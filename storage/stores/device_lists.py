"""Device lists: the device-list stream, and the cached device lists of remote users.

The stream keeps one row per user (their latest change). Who shares rooms with whom is read
from `room_memberships` (the current membership of every user in every room we know).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from storage.database import IN_CHUNK_SIZE, Database, Transaction

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class MembershipChange:
    """`other_user_id`'s current membership of a room, and the user's own (`mine`)."""

    room_id: str
    other_user_id: str
    other_membership: str
    mine: str


@dataclass(frozen=True)
class RemoteUser:
    user_id: str
    stream_id: int
    stale: bool
    master_key: JsonDict | None
    self_signing_key: JsonDict | None


@dataclass(frozen=True)
class RemoteDevice:
    device_id: str
    display_name: str | None
    keys: JsonDict | None


def _dumps(value: JsonDict | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _loads(value: str | None) -> JsonDict | None:
    if value is None:
        return None
    loaded = json.loads(value)
    return loaded if isinstance(loaded, dict) else None


def _stream_upsert_txn(
    txn: Transaction, user_id: str, stream_id: int, device_change: bool
) -> int | None:
    row = txn.select_one(
        "SELECT edu_stream_id FROM device_lists_stream WHERE user_id = ?", (user_id,)
    )
    txn.execute(
        "INSERT INTO device_lists_stream (user_id, stream_id, edu_stream_id) VALUES (?, ?, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id,"
        " edu_stream_id = COALESCE(excluded.edu_stream_id, device_lists_stream.edu_stream_id)"
        # Two concurrent changes: the later position stays, whichever commits last.
        " WHERE device_lists_stream.stream_id < excluded.stream_id",
        (user_id, stream_id, stream_id if device_change else None),
    )
    return int(row[0]) if row and row[0] is not None else None


class DeviceListStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ----- the stream ------------------------------------------------------------------------

    async def get_max_stream_id(self) -> int:
        row = await self._db.run_interaction(
            "get_max_device_list_stream_id",
            lambda txn: txn.select_one("SELECT MAX(stream_id) FROM device_lists_stream"),
        )
        return int(row[0]) if row and row[0] is not None else 0

    async def add_change(self, user_id: str, stream_id: int, device_change: bool) -> int | None:
        """Record a change of `user_id`'s device list (`device_change`: one of their devices,
        to announce with an m.device_list_update; else their cross-signing keys, or any
        change of a remote user) at `stream_id`. Returns the position of the user's
        previous device change (the EDU's `prev_id`), None if there was none."""
        return await self._db.run_interaction(
            "add_device_list_change", _stream_upsert_txn, user_id, stream_id, device_change
        )

    async def get_edu_stream_id(self, user_id: str) -> int | None:
        """The position of the local user's latest device change, if any."""
        row = await self._db.run_interaction(
            "get_device_list_edu_stream_id",
            lambda txn: txn.select_one(
                "SELECT edu_stream_id FROM device_lists_stream WHERE user_id = ?", (user_id,)
            ),
        )
        return int(row[0]) if row and row[0] is not None else None

    async def get_users_changed(self, after: int, up_to: int) -> set[str]:
        """Users whose latest change is in (after, up_to]."""
        rows = await self._db.run_interaction(
            "get_device_list_users_changed",
            lambda txn: txn.select_all(
                "SELECT user_id FROM device_lists_stream WHERE stream_id > ? AND stream_id <= ?",
                (after, up_to),
            ),
        )
        return {row[0] for row in rows}

    # ----- who shares rooms ------------------------------------------------------------------

    async def get_membership_changes(
        self,
        user_id: str,
        after: int,
        up_to: int,
        room_ids: Collection[str] | None,
        own_changes: bool,
    ) -> list[MembershipChange]:
        """Memberships that may change whom `user_id` shares rooms with, in the events window
        (after, up_to]: in the rooms the user is joined to (only `room_ids`, if given),
        every other member whose membership changed in the window; with `own_changes`, in
        the rooms the user joined or left in the window, every other member joined or
        changed in the window."""

        def txn_fn(txn: Transaction) -> list[MembershipChange]:
            rows: list[tuple[Any, ...]] = []
            others = (
                "SELECT other.room_id, other.user_id, other.membership, mine.membership"
                " FROM room_memberships mine"
                " JOIN room_memberships other ON other.room_id = mine.room_id"
                " WHERE mine.user_id = ? AND mine.membership = 'join' AND other.user_id <> ?"
                " AND other.membership_stream_ordering > ?"
                " AND other.membership_stream_ordering <= ?"
            )
            args = (user_id, user_id, after, up_to)
            if room_ids is None:
                rows.extend(txn.select_all(others, args))
            elif room_ids:
                rows.extend(
                    txn.select_in_chunks(
                        others + " AND mine.room_id IN ({in})", room_ids, args_before=args
                    )
                )
            if own_changes:
                rows.extend(
                    txn.select_all(
                        "SELECT other.room_id, other.user_id, other.membership, mine.membership"
                        " FROM room_memberships mine"
                        " JOIN room_memberships other ON other.room_id = mine.room_id"
                        " WHERE mine.user_id = ? AND other.user_id <> ?"
                        " AND mine.membership_stream_ordering > ?"
                        " AND mine.membership_stream_ordering <= ?"
                        " AND (other.membership = 'join'"
                        "      OR (other.membership_stream_ordering > ?"
                        "          AND other.membership_stream_ordering <= ?))",
                        (user_id, user_id, after, up_to, after, up_to),
                    )
                )
            return [MembershipChange(r[0], r[1], r[2], r[3]) for r in rows]

        return await self._db.run_interaction("get_device_list_membership_changes", txn_fn)

    async def get_users_sharing_with_local_users(self, user_ids: Collection[str]) -> set[str]:
        """Those of `user_ids` joined to a room one of this server's users is joined to."""

        def txn_fn(txn: Transaction) -> set[str]:
            rows = txn.select_in_chunks(
                "SELECT DISTINCT theirs.user_id FROM room_memberships theirs"
                " JOIN room_memberships ours ON ours.room_id = theirs.room_id"
                " JOIN users ON users.user_id = ours.user_id"
                " WHERE theirs.membership = 'join' AND ours.membership = 'join'"
                " AND theirs.user_id IN ({in})",
                user_ids,
            )
            return {row[0] for row in rows}

        return await self._db.run_interaction("get_users_sharing_with_local_users", txn_fn)

    # ----- remote device lists ---------------------------------------------------------------

    async def get_remote_user(self, user_id: str) -> RemoteUser | None:
        row = await self._db.run_interaction(
            "get_remote_device_list_user",
            lambda txn: txn.select_one(
                "SELECT stream_id, stale, master_key, self_signing_key"
                " FROM device_lists_remote_users WHERE user_id = ?",
                (user_id,),
            ),
        )
        if row is None:
            return None
        return RemoteUser(user_id, int(row[0]), bool(row[1]), _loads(row[2]), _loads(row[3]))

    async def get_remote_devices(self, user_id: str) -> list[RemoteDevice]:
        rows = await self._db.run_interaction(
            "get_remote_devices",
            lambda txn: txn.select_all(
                "SELECT device_id, display_name, keys_json FROM device_lists_remote_devices"
                " WHERE user_id = ? ORDER BY device_id",
                (user_id,),
            ),
        )
        return [RemoteDevice(row[0], row[1], _loads(row[2])) for row in rows]

    async def get_tracked_remote_users(self, among: Collection[str]) -> set[str]:
        rows = await self._db.run_interaction(
            "get_tracked_remote_users",
            lambda txn: txn.select_in_chunks(
                "SELECT user_id FROM device_lists_remote_users WHERE user_id IN ({in})", among
            ),
        )
        return {row[0] for row in rows}

    async def replace_remote_user(
        self,
        user_id: str,
        stream_id: int,
        devices: Iterable[RemoteDevice],
        master_key: JsonDict | None,
        self_signing_key: JsonDict | None,
    ) -> None:
        """Store a user's whole device list (a user/devices answer), no longer stale."""
        device_rows = [(user_id, d.device_id, d.display_name, _dumps(d.keys)) for d in devices]

        def txn_fn(txn: Transaction) -> None:
            txn.execute("DELETE FROM device_lists_remote_devices WHERE user_id = ?", (user_id,))
            txn.execute_many(
                "INSERT INTO device_lists_remote_devices"
                " (user_id, device_id, display_name, keys_json) VALUES (?, ?, ?, ?)",
                device_rows,
            )
            txn.execute(
                "INSERT INTO device_lists_remote_users"
                " (user_id, stream_id, stale, master_key, self_signing_key)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id,"
                " stale = excluded.stale, master_key = excluded.master_key,"
                " self_signing_key = excluded.self_signing_key",
                (user_id, stream_id, False, _dumps(master_key), _dumps(self_signing_key)),
            )

        await self._db.run_interaction("replace_remote_device_list", txn_fn)

    async def update_remote_device(
        self, user_id: str, stream_id: int, device: RemoteDevice, deleted: bool
    ) -> None:
        """Apply one m.device_list_update to a tracked user's list."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "DELETE FROM device_lists_remote_devices WHERE user_id = ? AND device_id = ?",
                (user_id, device.device_id),
            )
            if not deleted:
                txn.execute(
                    "INSERT INTO device_lists_remote_devices"
                    " (user_id, device_id, display_name, keys_json) VALUES (?, ?, ?, ?)",
                    (user_id, device.device_id, device.display_name, _dumps(device.keys)),
                )
            txn.execute(
                "UPDATE device_lists_remote_users SET stream_id = ? WHERE user_id = ?",
                (stream_id, user_id),
            )

        await self._db.run_interaction("update_remote_device", txn_fn)

    async def set_remote_signing_keys(
        self, user_id: str, master_key: JsonDict | None, self_signing_key: JsonDict | None
    ) -> None:
        """Replace the cross-signing keys of a tracked user (a key left None is kept)."""

        def txn_fn(txn: Transaction) -> None:
            for column, value in (("master_key", master_key), ("self_signing_key", self_signing_key)):
                if value is not None:
                    txn.execute(
                        f"UPDATE device_lists_remote_users SET {column} = ? WHERE user_id = ?",
                        (_dumps(value), user_id),
                    )

        await self._db.run_interaction("set_remote_signing_keys", txn_fn)

    async def mark_remote_stale(self, user_id: str) -> None:
        await self._db.run_interaction(
            "mark_remote_device_list_stale",
            lambda txn: txn.execute(
                "UPDATE device_lists_remote_users SET stale = ? WHERE user_id = ?",
                (True, user_id),
            ),
        )

    async def forget_remote_users(self, user_ids: Collection[str]) -> None:
        """Stop holding these users' device lists (no local user shares a room with them)."""

        users = list(user_ids)

        def txn_fn(txn: Transaction) -> None:
            for start in range(0, len(users), IN_CHUNK_SIZE):
                chunk = users[start : start + IN_CHUNK_SIZE]
                placeholders = ",".join("?" for _ in chunk)
                for table in ("device_lists_remote_devices", "device_lists_remote_users"):
                    txn.execute(f"DELETE FROM {table} WHERE user_id IN ({placeholders})", chunk)

        await self._db.run_interaction("forget_remote_device_lists", txn_fn)
