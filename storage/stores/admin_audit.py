"""The admin audit log: one row per admin action that changed something."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.database import Database


@dataclass(frozen=True)
class AuditEntry:
    id: int
    ts: int
    admin_user_id: str
    action: str
    target: str
    details: dict[str, Any]


class AdminAuditStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self, ts: int, admin_user_id: str, action: str, target: str, details: dict[str, Any]
    ) -> None:
        await self._db.run_interaction(
            "record_admin_action",
            lambda txn: txn.execute(
                "INSERT INTO admin_audit_log (ts, admin_user_id, action, target, details)"
                " VALUES (?, ?, ?, ?, ?)",
                (ts, admin_user_id, action, target, json.dumps(details, sort_keys=True)),
            ),
        )

    async def entries(self, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` entries, newest first; only those about `target` if given."""
        sql = "SELECT id, ts, admin_user_id, action, target, details FROM admin_audit_log"
        args: list[Any] = []
        if target is not None:
            sql += " WHERE target = ?"
            args.append(target)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        rows = await self._db.run_interaction(
            "admin_audit_entries", lambda txn: txn.select_all(sql, args)
        )
        return [
            AuditEntry(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))
            for row in rows
        ]
