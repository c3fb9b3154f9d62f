"""Account data: per-user JSON blobs, global (room_id '') or scoped to a room."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Transaction

# The room_id column's value for global account data.
GLOBAL = ""


@dataclass(frozen=True)
class AccountData:
    user_id: str
    # None for global account data.
    room_id: str | None
    type: str
    content: dict[str, Any]
    stream_id: int


def _row(row: tuple[Any, ...]) -> AccountData:
    user_id, room_id, type_, content, stream_id = row
    return AccountData(user_id, room_id or None, type_, json.loads(content), stream_id)


class AccountDataStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_max_stream_id(self) -> int:
        row = await self._db.run_interaction(
            "get_max_account_data_stream_id",
            lambda txn: txn.select_one("SELECT MAX(stream_id) FROM account_data"),
        )
        return row[0] if row and row[0] is not None else 0

    async def set_account_data(
        self,
        user_id: str,
        room_id: str | None,
        data_type: str,
        content: dict[str, Any],
        stream_id: int,
    ) -> None:
        await self._db.run_interaction(
            "set_account_data",
            lambda txn: txn.execute(
                "INSERT INTO account_data (user_id, room_id, type, content, stream_id)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, room_id, type)"
                " DO UPDATE SET content = excluded.content, stream_id = excluded.stream_id"
                # Two concurrent writes: the later position wins whichever commits last, so
                # the table's highest stream_id is always the stream's last written position.
                " WHERE account_data.stream_id < excluded.stream_id",
                (user_id, room_id or GLOBAL, data_type, json.dumps(content), stream_id),
            ),
        )

    async def get_account_data(
        self, user_id: str, room_id: str | None, data_type: str
    ) -> dict[str, Any] | None:
        row = await self._db.run_interaction(
            "get_account_data",
            lambda txn: txn.select_one(
                "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
                (user_id, room_id or GLOBAL, data_type),
            ),
        )
        return json.loads(row[0]) if row else None

    async def get_global_for_users(
        self, user_ids: Collection[str], data_type: str
    ) -> dict[str, dict[str, Any]]:
        """user_id -> content of their global `data_type`, for those who have one."""
        rows = await self._db.run_interaction(
            "get_global_account_data_for_users",
            lambda txn: txn.select_in_chunks(
                "SELECT user_id, content FROM account_data WHERE user_id IN ({in})"
                " AND room_id = ? AND type = ?",
                user_ids,
                args_after=(GLOBAL, data_type),
            ),
        )
        return {user_id: json.loads(content) for user_id, content in rows}

    async def get_global_of_type(self, data_type: str) -> dict[str, dict[str, Any]]:
        """user_id -> content of their global `data_type`, for every user who has one."""
        rows = await self._db.run_interaction(
            "get_global_account_data_of_type",
            lambda txn: txn.select_all(
                "SELECT user_id, content FROM account_data WHERE room_id = ? AND type = ?",
                (GLOBAL, data_type),
            ),
        )
        return {user_id: json.loads(content) for user_id, content in rows}

    async def get_account_data_changed(
        self, user_id: str, after: int, up_to: int | None = None
    ) -> list[AccountData]:
        """All of the user's account data written with after < stream_id <= up_to."""

        def txn_fn(txn: Transaction) -> list[AccountData]:
            sql = (
                "SELECT user_id, room_id, type, content, stream_id FROM account_data"
                " WHERE user_id = ? AND stream_id > ?"
            )
            args: list[Any] = [user_id, after]
            if up_to is not None:
                sql += " AND stream_id <= ?"
                args.append(up_to)
            return [_row(r) for r in txn.select_all(sql + " ORDER BY stream_id", args)]

        return await self._db.run_interaction("get_account_data_changed", txn_fn)
