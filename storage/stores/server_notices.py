"""Which room is each local user's server notices room."""

from __future__ import annotations

from storage.database import Database


class ServerNoticeStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_room(self, user_id: str) -> str | None:
        row = await self._db.run_interaction(
            "get_server_notice_room",
            lambda txn: txn.select_one(
                "SELECT room_id FROM server_notice_rooms WHERE user_id = ?", (user_id,)
            ),
        )
        return row[0] if row else None

    async def set_room(self, user_id: str, room_id: str) -> None:
        await self._db.run_interaction(
            "set_server_notice_room",
            lambda txn: txn.execute(
                "INSERT INTO server_notice_rooms (user_id, room_id) VALUES (?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET room_id = excluded.room_id",
                (user_id, room_id),
            ),
        )

    async def is_notice_room_of(self, user_id: str, room_id: str) -> bool:
        row = await self._db.run_interaction(
            "is_server_notice_room",
            lambda txn: txn.select_one(
                "SELECT 1 FROM server_notice_rooms WHERE user_id = ? AND room_id = ?",
                (user_id, room_id),
            ),
        )
        return row is not None
