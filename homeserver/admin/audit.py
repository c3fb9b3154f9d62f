"""Recording admin actions: a row in `admin_audit_log` and a server log line for every
admin action that changed something (and every login-as token issued)."""

from __future__ import annotations

import json
import logging
from typing import Any

from homeserver.clock import Clock
from storage.stores.admin_audit import AdminAuditStore

logger = logging.getLogger("heddle.admin.audit")


class AdminAudit:
    def __init__(self, clock: Clock, store: AdminAuditStore) -> None:
        self._clock = clock
        self._store = store

    async def record(
        self, admin_user_id: str, action: str, target: str, details: dict[str, Any] | None = None
    ) -> None:
        """Called after the change succeeded, so the log holds only what happened. `details`
        must hold no secret (no password, no token)."""
        details = details or {}
        # The log line first: if the database write fails, the action is still on record.
        logger.info(
            "admin action %s by %s on %s %s",
            action,
            admin_user_id,
            target,
            json.dumps(details, sort_keys=True),
        )
        await self._store.record(self._clock.time_msec(), admin_user_id, action, target, details)
