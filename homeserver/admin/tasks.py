"""The admin API's background tasks (room deletes, history purges): their record in the
database, what this process is running, and the switch that pauses them.

Only the writer process runs tasks, so which room is busy is known here without a query,
and a task found running in the database when that process starts died with the previous
one (`AdminRoomsHandler.recover_interrupted` decides what becomes of it).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from storage.stores.admin_tasks import RUNNING_STATUSES, AdminTask, AdminTaskStore, TaskQuery

# Synapse's action names for the two kinds of task.
DELETE_ROOM = "shutdown_and_purge_room"
PURGE_HISTORY = "purge_history"
# Finished tasks are answered by the status endpoints this long (Synapse's figure for a
# delete's status).
FINISHED_KEPT_MS = 24 * 60 * 60 * 1000
INTERRUPTED = "The server stopped while this task ran; run it again"
# Synapse's background jobs an admin can start, and why Heddle has nothing to run for each.
NOT_HEDDLE_JOBS = {
    "populate_stats_process_rooms": "Heddle keeps no room statistics tables: the room list"
    " counts members and state when asked, so there is nothing to recalculate",
    "regenerate_directory": "Heddle keeps no user directory tables: user search reads the"
    " profiles and rooms as they are, so there is nothing to regenerate",
    "event_resign": "Heddle does not re-sign stored events",
}


@dataclass
class RunningTask:
    """What this process knows of a task it runs, beyond its database row."""

    id: str
    action: str
    resource_id: str
    started_ts: int
    # Rows deleted so far.
    items_done: int = 0
    # Time spent working, pauses left out.
    busy_ms: int = 0


class AdminTasks:
    def __init__(self, clock: Clock, store: AdminTaskStore) -> None:
        self._clock = clock
        self._store = store
        self._running: dict[str, RunningTask] = {}
        self._enabled = True
        # Tasks waiting for `enabled` to be set again.
        self._paused: list[defer.Deferred[None]] = []

    # ----- starting and recording --------------------------------------------------------

    async def start(self, action: str, resource_id: str, result: dict[str, Any]) -> str:
        """Record a new task, `active` at once (it starts now, nothing queues it: it is
        never `scheduled`); its ID. 400 M_UNKNOWN if a task of the room (any action) is
        under way, as Synapse answers a second delete or purge."""
        # No await between this check and registering the task: two requests cannot both
        # pass it.
        if self.busy(resource_id):
            raise MatrixError(
                400, Codes.UNKNOWN, f"History purge already in progress for {resource_id}"
            )
        now = self._clock.time_msec()
        task = RunningTask(secrets.token_urlsafe(12), action, resource_id, now)
        self._running[task.id] = task
        try:
            await self._store.delete_finished_before(now - FINISHED_KEPT_MS)
            await self._store.insert(
                AdminTask(task.id, action, resource_id, "active", now, now, result, None, 0)
            )
        except BaseException:
            del self._running[task.id]
            raise
        return task.id

    def busy(self, resource_id: str) -> bool:
        return any(task.resource_id == resource_id for task in self._running.values())

    async def record_result(self, task_id: str, result: dict[str, Any]) -> None:
        """What the running task has done so far, for its status to tell."""
        await self._store.update(task_id, self._clock.time_msec(), result=result)

    async def progress(self, task_id: str, items: int, busy_ms: int) -> None:
        """`items` more rows deleted in `busy_ms` of work."""
        task = self._running[task_id]
        task.items_done += items
        task.busy_ms += busy_ms
        await self._store.update(task_id, self._clock.time_msec(), items_done=task.items_done)

    async def finish(
        self, task_id: str, result: dict[str, Any] | None, error: str | None
    ) -> None:
        """The task ended: complete without `error`, else failed."""
        try:
            await self._store.update(
                task_id,
                self._clock.time_msec(),
                status="complete" if error is None else "failed",
                result=result,
                error=error,
            )
        finally:
            self._running.pop(task_id, None)

    async def interrupted(self) -> list[AdminTask]:
        """At the writer process's start: the tasks its predecessor left running (this
        process has run none yet). Each must be resumed or finished."""
        return [
            task
            for status in RUNNING_STATUSES
            for task in await self._store.find(TaskQuery(status=status))
        ]

    def resume(self, task: AdminTask) -> None:
        """Run `task` (one of `interrupted`) on in this process."""
        self._running[task.id] = RunningTask(
            task.id, task.action, task.resource_id, task.started_ts, task.items_done
        )

    # ----- pausing -----------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._enabled

    def set_enabled(self, enabled: bool) -> None:
        """Pause (False) or resume the tasks between two batches; not kept over a restart."""
        self._enabled = enabled
        if enabled:
            waiting, self._paused = self._paused, []
            for waiter in waiting:
                waiter.callback(None)

    async def wait_until_enabled(self) -> None:
        """Called by a task before each batch."""
        while not self._enabled:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._paused.append(waiter)
            await waiter

    # ----- reading -----------------------------------------------------------------------

    def start_job(self, job_name: str) -> None:
        """Synapse's `start_job`: Heddle has none of its jobs to run (why is said for each
        of Synapse's), so every name is refused."""
        reason = NOT_HEDDLE_JOBS.get(job_name)
        if reason is not None:
            raise MatrixError(400, Codes.INVALID_PARAM, reason)
        raise MatrixError(400, Codes.UNKNOWN, "Invalid job_name")

    def running(self) -> list[RunningTask]:
        """This process's tasks under way, oldest first."""
        return sorted(self._running.values(), key=lambda task: (task.started_ts, task.id))

    async def get(self, task_id: str, action: str) -> AdminTask | None:
        task = await self._store.get(task_id)
        if task is None or task.action != action or self._expired(task):
            return None
        return task

    async def find(self, query: TaskQuery) -> list[AdminTask]:
        return [task for task in await self._store.find(query) if not self._expired(task)]

    def _expired(self, task: AdminTask) -> bool:
        return not task.running and (
            task.updated_ts < self._clock.time_msec() - FINISHED_KEPT_MS
        )
