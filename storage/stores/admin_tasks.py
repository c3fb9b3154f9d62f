"""The admin API's background tasks (room deletes, history purges): one row each, written
as the task moves on, so their status outlives the process that ran them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.database import Database

# A task not yet over (Synapse's words for the states of its scheduled tasks).
RUNNING_STATUSES = ("scheduled", "active")

_COLUMNS = "id, action, resource_id, status, started_ts, updated_ts, result, error, items_done"


@dataclass(frozen=True)
class AdminTask:
    id: str
    action: str
    resource_id: str
    status: str
    started_ts: int
    updated_ts: int
    result: dict[str, Any] | None
    error: str | None
    items_done: int

    @property
    def running(self) -> bool:
        return self.status in RUNNING_STATUSES


def _task(row: tuple[Any, ...]) -> AdminTask:
    return AdminTask(
        id=row[0],
        action=row[1],
        resource_id=row[2],
        status=row[3],
        started_ts=int(row[4]),
        updated_ts=int(row[5]),
        result=json.loads(row[6]) if row[6] is not None else None,
        error=row[7],
        items_done=int(row[8]),
    )


@dataclass(frozen=True)
class TaskQuery:
    action: str | None = None
    resource_id: str | None = None
    status: str | None = None
    # Only tasks last changed before this time.
    max_ts: int | None = None


class AdminTaskStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(self, task: AdminTask) -> None:
        await self._db.run_interaction(
            "insert_admin_task",
            lambda txn: txn.execute(
                f"INSERT INTO admin_tasks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task.id,
                    task.action,
                    task.resource_id,
                    task.status,
                    task.started_ts,
                    task.updated_ts,
                    json.dumps(task.result) if task.result is not None else None,
                    task.error,
                    task.items_done,
                ),
            ),
        )

    async def update(
        self,
        task_id: str,
        ts: int,
        *,
        status: str | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        items_done: int | None = None,
    ) -> None:
        """Set the fields given (those left None keep their value) and `updated_ts`."""
        changes: dict[str, Any] = {"updated_ts": ts}
        if status is not None:
            changes["status"] = status
        if result is not None:
            changes["result"] = json.dumps(result)
        if error is not None:
            changes["error"] = error
        if items_done is not None:
            changes["items_done"] = items_done
        assignments = ", ".join(f"{column} = ?" for column in changes)
        await self._db.run_interaction(
            "update_admin_task",
            lambda txn: txn.execute(
                f"UPDATE admin_tasks SET {assignments} WHERE id = ?",
                [*changes.values(), task_id],
            ),
        )

    async def get(self, task_id: str) -> AdminTask | None:
        row = await self._db.run_interaction(
            "get_admin_task",
            lambda txn: txn.select_one(
                f"SELECT {_COLUMNS} FROM admin_tasks WHERE id = ?", (task_id,)
            ),
        )
        return _task(row) if row is not None else None

    async def find(self, query: TaskQuery) -> list[AdminTask]:
        """The tasks matching every field of `query` given, oldest first."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("action", query.action),
            ("resource_id", query.resource_id),
            ("status", query.status),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.max_ts is not None:
            where.append("updated_ts < ?")
            args.append(query.max_ts)
        sql = f"SELECT {_COLUMNS} FROM admin_tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_ts, id"
        rows = await self._db.run_interaction(
            "find_admin_tasks", lambda txn: txn.select_all(sql, args)
        )
        return [_task(row) for row in rows]

    async def delete_finished_before(self, ts: int) -> None:
        """Forget the tasks that ended before `ts`."""
        marks = ",".join("?" for _ in RUNNING_STATUSES)
        await self._db.run_interaction(
            "delete_old_admin_tasks",
            lambda txn: txn.execute(
                f"DELETE FROM admin_tasks WHERE updated_ts < ? AND status NOT IN ({marks})",
                (ts, *RUNNING_STATUSES),
            ),
        )
