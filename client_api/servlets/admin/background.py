"""Synapse's background updates API and scheduled tasks list, answered from Heddle's
admin tasks (room deletes and history purges, `homeserver.admin.tasks`): Heddle applies
its schema migrations before it serves, so those tasks are the only batched work an
admin starts and can pause."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, parse_int_query, parse_json_object, query_string
from client_api.servlets.admin.access import admin_path, require_admin
from client_api.validation import RequestBody, parse_body
from homeserver.errors import Codes, MatrixError
from storage.stores.admin_tasks import AdminTask, TaskQuery

if TYPE_CHECKING:
    from homeserver.app import HomeServer

# Synapse names each database; Heddle has one, which Synapse calls "master" by default.
DATABASE_NAME = "master"
TASK_STATUSES = ("scheduled", "active", "complete", "cancelled", "failed")


class BackgroundUpdatesStatusServlet:
    PATTERNS = [admin_path("/background_updates/status")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        tasks = self._hs.admin_tasks
        current: dict[str, Any] = {}
        running = tasks.running()
        if running:
            # One per database in Synapse's shape: the oldest task under way.
            oldest = running[0]
            current[DATABASE_NAME] = {
                "name": f"{oldest.action} {oldest.resource_id}",
                "total_item_count": oldest.items_done,
                "total_duration_ms": float(oldest.busy_ms),
                "average_items_per_ms": oldest.items_done / max(oldest.busy_ms, 1),
            }
        return 200, {"enabled": tasks.enabled, "current_updates": current}


class EnabledBody(RequestBody):
    enabled: bool = True


class BackgroundUpdatesEnabledServlet:
    PATTERNS = [admin_path("/background_updates/enabled")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        return 200, {"enabled": self._hs.admin_tasks.enabled}

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), EnabledBody)
        self._hs.admin_tasks.set_enabled(body.enabled)
        await self._hs.admin_audit.record(
            admin.user_id, "background_updates_enabled", "admin_tasks", {"enabled": body.enabled}
        )
        return 200, {"enabled": body.enabled}


class StartJobBody(RequestBody):
    job_name: str


class BackgroundUpdatesStartJobServlet:
    PATTERNS = [admin_path("/background_updates/start_job")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        raw = parse_json_object(request)
        if "job_name" not in raw:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing params: ['job_name']")
        self._hs.admin_tasks.start_job(parse_body(raw, StartJobBody).job_name)
        return 200, {}


def _scheduled_task_json(task: AdminTask) -> dict[str, Any]:
    return {
        "id": task.id,
        "action": task.action,
        "status": task.status,
        "timestamp_ms": task.updated_ts,
        "resource_id": task.resource_id,
        "result": task.result,
        "error": task.error,
    }


class ScheduledTasksServlet:
    PATTERNS = [admin_path("/scheduled_tasks")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        status = query_string(request, "status") or None
        if status is not None and status not in TASK_STATUSES:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"'status' must be one of {', '.join(TASK_STATUSES)}"
            )
        query = TaskQuery(
            action=query_string(request, "action_name") or None,
            resource_id=query_string(request, "resource_id") or None,
            status=status,
            max_ts=parse_int_query(request, "max_timestamp"),
        )
        tasks = await self._hs.admin_tasks.find(query)
        return 200, {"scheduled_tasks": [_scheduled_task_json(t) for t in tasks]}
