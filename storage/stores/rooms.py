"""Rooms and who is in them."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Transaction


@dataclass(frozen=True)
class Membership:
    room_id: str
    user_id: str
    event_id: str
    membership: str
    stream_ordering: int
    forgotten: bool
    # Where the membership itself last changed; `stream_ordering` also moves for a joined
    # member's new display name or avatar.
    changed_at: int


_MEMBERSHIP_COLUMNS = (
    "room_id, user_id, event_id, membership, stream_ordering, forgotten,"
    " membership_stream_ordering"
)


def _membership(row: tuple) -> Membership:
    return Membership(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6])


# Rooms whose heroes one statement of `get_heroes_in_rooms` reads.
HEROES_ROOMS_PER_STATEMENT = 50


def _heroes_txn(txn: Transaction, room_id: str, user_id: str, limit: int) -> list[str]:
    """See `RoomStore.get_heroes`."""
    for memberships in (("join", "invite"), ("leave", "ban")):
        rows = txn.select_all(
            "SELECT user_id FROM room_memberships WHERE room_id = ? AND user_id <> ?"
            " AND membership IN (?, ?) ORDER BY stream_ordering LIMIT ?",
            (room_id, user_id, *memberships, limit),
        )
        if rows:
            return [row[0] for row in rows]
    return []


class RoomStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def store_room(
        self, room_id: str, room_version: str, creator: str, is_public: bool, now_ms: int
    ) -> None:
        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts)"
                " VALUES (?, ?, ?, ?, ?)",
                (room_id, room_version, creator, is_public, now_ms),
            )
            # The admin room list's row for it, kept as its current state changes.
            txn.execute("INSERT INTO room_list_summary (room_id) VALUES (?)", (room_id,))

        await self._db.run_interaction("store_room", txn_fn)

    async def get_membership(self, room_id: str, user_id: str) -> Membership | None:
        row = await self._db.run_interaction(
            "get_membership",
            lambda txn: txn.select_one(
                f"SELECT {_MEMBERSHIP_COLUMNS} FROM room_memberships"
                " WHERE room_id = ? AND user_id = ?",
                (room_id, user_id),
            ),
        )
        return _membership(row) if row else None

    async def is_joined(self, room_id: str, user_id: str) -> bool:
        """Whether the user's current membership of the room is `join`."""
        row = await self._db.run_interaction(
            "is_joined",
            lambda txn: txn.select_one(
                "SELECT 1 FROM room_memberships WHERE room_id = ? AND user_id = ?"
                " AND membership = ?",
                (room_id, user_id, "join"),
            ),
        )
        return row is not None

    async def get_joined_members_by_age(self, room_id: str) -> list[str]:
        """The room's joined members, the one whose membership changed longest ago first."""
        rows = await self._db.run_interaction(
            "get_joined_members_by_age",
            lambda txn: txn.select_all(
                "SELECT user_id FROM room_memberships WHERE room_id = ? AND membership = ?"
                " ORDER BY stream_ordering",
                (room_id, "join"),
            ),
        )
        return [row[0] for row in rows]

    async def get_rooms_for_user(
        self, user_id: str, memberships: Collection[str] = ("join",)
    ) -> list[Membership]:
        """The user's current membership rows with one of `memberships`, not forgotten."""

        def txn_fn(txn: Transaction) -> list[Membership]:
            placeholders = ",".join("?" for _ in memberships)
            rows = txn.select_all(
                f"SELECT {_MEMBERSHIP_COLUMNS} FROM room_memberships"
                f" WHERE user_id = ? AND membership IN ({placeholders}) AND forgotten = ?",
                [user_id, *memberships, False],
            )
            return [_membership(row) for row in rows]

        return await self._db.run_interaction("get_rooms_for_user", txn_fn)

    async def get_heroes(self, room_id: str, user_id: str, limit: int) -> list[str]:
        """The room's first `limit` members other than `user_id` by when their membership
        took effect: joined or invited ones, or else those who left or were banned."""
        return await self._db.run_interaction("get_heroes", _heroes_txn, room_id, user_id, limit)

    async def get_heroes_in_rooms(
        self, room_ids: Collection[str], user_id: str, limit: int
    ) -> dict[str, list[str]]:
        """`get_heroes` of each room, in one transaction (an initial sync's rooms)."""

        wanted = list(dict.fromkeys(room_ids))

        def txn_fn(txn: Transaction) -> dict[str, list[str]]:
            found: dict[str, list[str]] = {room_id: [] for room_id in wanted}
            # Joined and invited members of many rooms in one statement (one round trip on
            # PostgreSQL): a UNION ALL of each room's own indexed read.
            one_room = (
                "SELECT * FROM (SELECT room_id, user_id, stream_ordering FROM room_memberships"
                " WHERE room_id = ? AND user_id <> ? AND membership IN (?, ?)"
                " ORDER BY stream_ordering LIMIT ?) AS h{i}"
            )
            for start in range(0, len(wanted), HEROES_ROOMS_PER_STATEMENT):
                chunk = wanted[start:start + HEROES_ROOMS_PER_STATEMENT]
                args: list[Any] = []
                for room_id in chunk:
                    args += [room_id, user_id, "join", "invite", limit]
                rows = txn.select_all(
                    " UNION ALL ".join(one_room.format(i=i) for i in range(len(chunk))), args
                )
                for room_id, member, _ in sorted(rows, key=lambda row: row[2]):
                    found[room_id].append(member)
            for room_id, heroes in found.items():
                if not heroes:  # nobody joined or invited: those who left, as `get_heroes`
                    found[room_id] = _heroes_txn(txn, room_id, user_id, limit)
            return found

        return await self._db.run_interaction("get_heroes_in_rooms", txn_fn)

    async def get_users_sharing_rooms(
        self, user_id: str, among: Collection[str] | None = None
    ) -> set[str]:
        """Users joined to at least one room `user_id` is joined to (the user included, if
        joined anywhere); with `among`, only those of them."""

        def txn_fn(txn: Transaction) -> set[str]:
            sql = (
                "SELECT DISTINCT other.user_id FROM room_memberships mine"
                " JOIN room_memberships other ON other.room_id = mine.room_id"
                " WHERE mine.user_id = ? AND mine.membership = 'join'"
                " AND other.membership = 'join'"
            )
            if among is None:
                return {row[0] for row in txn.select_all(sql, (user_id,))}
            return {
                row[0]
                for row in txn.select_in_chunks(
                    sql + " AND other.user_id IN ({in})", among, args_before=[user_id]
                )
            }

        return await self._db.run_interaction("get_users_sharing_rooms", txn_fn)

    async def forget(self, room_id: str, user_id: str) -> bool:
        """Mark a left room forgotten; False if the user is still joined/invited/knocking."""

        def txn_fn(txn: Transaction) -> bool:
            row = txn.select_one(
                "SELECT membership FROM room_memberships WHERE room_id = ? AND user_id = ?",
                (room_id, user_id),
            )
            if row is None or row[0] not in ("leave", "ban"):
                return False
            txn.execute(
                "UPDATE room_memberships SET forgotten = ? WHERE room_id = ? AND user_id = ?",
                (True, room_id, user_id),
            )
            return True

        return await self._db.run_interaction("forget_room", txn_fn)
