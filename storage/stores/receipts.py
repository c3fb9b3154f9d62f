"""Read receipts: the latest event each (room, receipt type, user, thread) points at."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Transaction

# The thread_id column's value for unthreaded receipts.
UNTHREADED = ""

_COLUMNS = "room_id, receipt_type, user_id, thread_id, event_id, ts, stream_id"


@dataclass(frozen=True)
class Receipt:
    room_id: str
    receipt_type: str
    user_id: str
    # None for an unthreaded receipt; "main" or a thread root's event ID otherwise.
    thread_id: str | None
    event_id: str
    ts: int
    stream_id: int


def _row(row: tuple[Any, ...]) -> Receipt:
    room_id, receipt_type, user_id, thread_id, event_id, ts, stream_id = row
    return Receipt(room_id, receipt_type, user_id, thread_id or None, event_id, ts, stream_id)


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_max_stream_id(self) -> int:
        row = await self._db.run_interaction(
            "get_max_receipt_stream_id",
            lambda txn: txn.select_one("SELECT MAX(stream_id) FROM receipts"),
        )
        return row[0] if row and row[0] is not None else 0

    async def upsert_receipt(
        self,
        receipt: Receipt,
        event_stream_ordering: int,
    ) -> bool:
        """Store the receipt unless the existing one points at a later (or the same) event.

        Receipts are "read up to" markers, so one never moves backwards (as in Synapse).
        Returns whether anything was written.
        """

        def txn_fn(txn: Transaction) -> bool:
            key = (
                receipt.room_id,
                receipt.receipt_type,
                receipt.user_id,
                receipt.thread_id or UNTHREADED,
            )
            existing = txn.select_one(
                "SELECT r.event_id, e.stream_ordering FROM receipts r"
                " LEFT JOIN events e ON e.event_id = r.event_id"
                " WHERE r.room_id = ? AND r.receipt_type = ? AND r.user_id = ?"
                " AND r.thread_id = ?",
                key,
            )
            if existing is not None:
                if existing[0] == receipt.event_id:
                    return False
                if existing[1] is not None and existing[1] >= event_stream_ordering:
                    return False
            txn.execute(
                f"INSERT INTO receipts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (room_id, receipt_type, user_id, thread_id)"
                " DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts,"
                " stream_id = excluded.stream_id WHERE receipts.stream_id < excluded.stream_id",
                (*key, receipt.event_id, receipt.ts, receipt.stream_id),
            )
            return True

        return await self._db.run_interaction("upsert_receipt", txn_fn)

    async def get_receipt(
        self, room_id: str, receipt_type: str, user_id: str, thread_id: str | None = None
    ) -> Receipt | None:
        row = await self._db.run_interaction(
            "get_receipt",
            lambda txn: txn.select_one(
                f"SELECT {_COLUMNS} FROM receipts WHERE room_id = ? AND receipt_type = ?"
                " AND user_id = ? AND thread_id = ?",
                (room_id, receipt_type, user_id, thread_id or UNTHREADED),
            ),
        )
        return _row(row) if row else None

    async def get_receipts_for_rooms(
        self, room_ids: Collection[str], after: int, up_to: int | None = None
    ) -> list[Receipt]:
        """Receipts in `room_ids` written with after < stream_id <= up_to."""
        if not room_ids:
            return []

        def txn_fn(txn: Transaction) -> list[Receipt]:
            sql = f"SELECT {_COLUMNS} FROM receipts WHERE room_id IN ({{in}}) AND stream_id > ?"
            args: list[Any] = [after]
            if up_to is not None:
                sql += " AND stream_id <= ?"
                args.append(up_to)
            return [_row(r) for r in txn.select_in_chunks(sql, room_ids, args_after=args)]

        return await self._db.run_interaction("get_receipts_for_rooms", txn_fn)
