"""Room aliases hosted on this server (`#localpart:our.server` -> room ID)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Transaction


@dataclass(frozen=True)
class RoomAliasMapping:
    room_alias: str
    room_id: str
    # The user who created the alias: they may always delete it.
    creator: str


class AliasStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_room_id(self, room_alias: str) -> str | None:
        """The room an alias points to, or None if it is not one of ours."""
        row = await self._db.run_interaction(
            "get_alias_room_id",
            lambda txn: txn.select_one(
                "SELECT room_id FROM room_aliases WHERE room_alias = ?", (room_alias,)
            ),
        )
        return row[0] if row else None

    async def create_alias(self, room_alias: str, room_id: str, creator: str) -> bool:
        """Point `room_alias` at `room_id`; False (and no change) if the alias is taken."""

        def txn_fn(txn: Transaction) -> bool:
            if txn.select_one(
                "SELECT 1 FROM room_aliases WHERE room_alias = ?", (room_alias,)
            ) is not None:
                return False
            # The primary key settles a race between two creators of the same alias.
            txn.execute(
                "INSERT INTO room_aliases (room_alias, room_id, creator) VALUES (?, ?, ?)"
                " ON CONFLICT (room_alias) DO NOTHING",
                (room_alias, room_id, creator),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("create_alias", txn_fn)

    async def get_aliases_for_room(self, room_id: str) -> list[str]:
        rows = await self._db.run_interaction(
            "get_aliases_for_room",
            lambda txn: txn.select_all(
                "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY room_alias",
                (room_id,),
            ),
        )
        return [row[0] for row in rows]

    async def get_alias(self, room_alias: str) -> RoomAliasMapping | None:
        """The alias with who created it, or None if it is not one of ours."""
        row = await self._db.run_interaction(
            "get_alias",
            lambda txn: txn.select_one(
                "SELECT room_alias, room_id, creator FROM room_aliases WHERE room_alias = ?",
                (room_alias,),
            ),
        )
        return RoomAliasMapping(row[0], row[1], row[2]) if row else None

    async def delete_alias(self, room_alias: str) -> str | None:
        """Remove the alias; the room it pointed to, or None if there was no such alias."""

        def txn_fn(txn: Transaction) -> str | None:
            row = txn.select_one(
                "SELECT room_id FROM room_aliases WHERE room_alias = ?", (room_alias,)
            )
            if row is None:
                return None
            txn.execute("DELETE FROM room_aliases WHERE room_alias = ?", (room_alias,))
            return row[0]

        return await self._db.run_interaction("delete_alias", txn_fn)

    async def move_aliases(self, old_room_id: str, new_room_id: str) -> list[str]:
        """Point every alias of `old_room_id` at `new_room_id` (a room upgrade); the aliases
        moved."""

        def txn_fn(txn: Transaction) -> list[str]:
            rows = txn.select_all(
                "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY room_alias",
                (old_room_id,),
            )
            txn.execute(
                "UPDATE room_aliases SET room_id = ? WHERE room_id = ?", (new_room_id, old_room_id)
            )
            return [row[0] for row in rows]

        return await self._db.run_interaction("move_aliases", txn_fn)
