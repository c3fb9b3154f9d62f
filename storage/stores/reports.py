"""Abuse reports users file about events, rooms and users, as the admin API reads them.

The three kinds live in three tables that share their ID, reporter, time and reason
columns; `ReportKind` says which table and which columns of its own each has, so one set
of queries serves all three."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.database import Database, Transaction


@dataclass(frozen=True)
class ReportKind:
    name: str
    table: str
    # The columns naming what was reported (and, for events, the score given).
    target_columns: tuple[str, ...]
    # The columns a list may be filtered on (exact matches).
    filter_columns: tuple[str, ...]


EVENT_REPORTS = ReportKind(
    "event",
    "event_reports",
    ("room_id", "event_id", "event_sender", "score"),
    ("user_id", "room_id", "event_sender"),
)
ROOM_REPORTS = ReportKind("room", "room_reports", ("room_id",), ("user_id", "room_id"))
USER_REPORTS = ReportKind(
    "user", "user_reports", ("target_user_id",), ("user_id", "target_user_id")
)
REPORT_KINDS = {kind.name: kind for kind in (EVENT_REPORTS, ROOM_REPORTS, USER_REPORTS)}

_COMMON_COLUMNS = ("id", "received_ts", "user_id", "reason")


@dataclass(frozen=True)
class Report:
    id: int
    received_ts: int
    # The reporter.
    user_id: str
    reason: str | None
    # What was reported: the room (event and room reports), the event and its sender
    # (event reports), the user (user reports).
    room_id: str | None = None
    event_id: str | None = None
    event_sender: str | None = None
    score: int | None = None
    target_user_id: str | None = None


def _columns(kind: ReportKind) -> str:
    return ", ".join((*_COMMON_COLUMNS, *kind.target_columns))


def _report(kind: ReportKind, row: tuple[Any, ...]) -> Report:
    report_id, received_ts, user_id, reason, *targets = row
    fields: dict[str, Any] = dict(zip(kind.target_columns, targets, strict=True))
    return Report(int(report_id), int(received_ts), user_id, reason, **fields)


class ReportStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_report(
        self,
        kind: ReportKind,
        received_ts: int,
        user_id: str,
        reason: str | None,
        **targets: Any,
    ) -> int:
        """Store a report; its ID. `targets` are the kind's target columns, all of them."""
        if set(targets) != set(kind.target_columns):
            raise ValueError(f"{kind.name} reports need {kind.target_columns}, got {targets}")
        columns = ("received_ts", "user_id", "reason", *kind.target_columns)
        values = (received_ts, user_id, reason, *(targets[c] for c in kind.target_columns))
        marks = ", ".join("?" for _ in columns)

        def txn_fn(txn: Transaction) -> int:
            row = txn.select_one(
                f"INSERT INTO {kind.table} ({', '.join(columns)}) VALUES ({marks}) RETURNING id",
                values,
            )
            assert row is not None
            return int(row[0])

        return await self._db.run_interaction(f"add_{kind.name}_report", txn_fn)

    async def list_reports(
        self,
        kind: ReportKind,
        offset: int,
        limit: int,
        newest_first: bool,
        filters: dict[str, str],
    ) -> tuple[list[Report], int]:
        """One page of the kind's reports, in the order they arrived (newest first with
        `newest_first`), and how many match `filters` (column -> exact value) in all."""
        unknown = set(filters) - set(kind.filter_columns)
        if unknown:
            raise ValueError(f"{kind.name} reports cannot be filtered on {sorted(unknown)}")
        where = " AND ".join(f"{column} = ?" for column in filters)
        where_clause = f" WHERE {where}" if where else ""
        args = list(filters.values())
        order = "DESC" if newest_first else "ASC"

        def txn_fn(txn: Transaction) -> tuple[list[Report], int]:
            count = txn.select_one(f"SELECT COUNT(*) FROM {kind.table}{where_clause}", args)
            rows = txn.select_all(
                f"SELECT {_columns(kind)} FROM {kind.table}{where_clause}"
                f" ORDER BY id {order} LIMIT ? OFFSET ?",
                [*args, limit, offset],
            )
            return [_report(kind, row) for row in rows], int(count[0]) if count else 0

        return await self._db.run_interaction(f"list_{kind.name}_reports", txn_fn)

    async def get_report(self, kind: ReportKind, report_id: int) -> Report | None:
        row = await self._db.run_interaction(
            f"get_{kind.name}_report",
            lambda txn: txn.select_one(
                f"SELECT {_columns(kind)} FROM {kind.table} WHERE id = ?", (report_id,)
            ),
        )
        return _report(kind, row) if row else None

    async def delete_report(self, kind: ReportKind, report_id: int) -> Report | None:
        """Delete the report; what it was, or None if there was no such report."""

        def txn_fn(txn: Transaction) -> Report | None:
            row = txn.select_one(
                f"DELETE FROM {kind.table} WHERE id = ? RETURNING {_columns(kind)}",
                (report_id,),
            )
            return _report(kind, row) if row else None

        return await self._db.run_interaction(f"delete_{kind.name}_report", txn_fn)
