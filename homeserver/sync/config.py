"""Turning a /sync `filter` parameter (a filter ID or inline JSON) into a SyncConfig."""

from __future__ import annotations

import json
from typing import Any

from homeserver.errors import Codes, MatrixError
from homeserver.sync.handler import SyncConfig


class SyncConfigs:
    async def for_request(self, user_id: str, filter_param: str | None) -> SyncConfig:
        if filter_param is None:
            return SyncConfig()
        if not filter_param.startswith("{"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Stored filters are not supported yet")
        try:
            raw: Any = json.loads(filter_param)
        except ValueError:
            raise MatrixError(400, Codes.NOT_JSON, "Filter is not valid JSON") from None
        if not isinstance(raw, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Filter must be a JSON object")
        room = raw.get("room", {})
        timeline = room.get("timeline", {}) if isinstance(room, dict) else {}
        state = room.get("state", {}) if isinstance(room, dict) else {}
        limit = timeline.get("limit", 10)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise MatrixError(400, Codes.BAD_JSON, "timeline.limit must be a positive integer")
        return SyncConfig(
            timeline_limit=min(limit, 100),
            lazy_load_members=state.get("lazy_load_members") is True,
            include_leave=room.get("include_leave") is True,
        )
