"""GET /keys/changes: users whose devices changed between two sync tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, query_string, require_query_string

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class KeysChangesServlet:
    """`from` and `to` are `next_batch` tokens of /sync (`to` defaults to now, and is cut to
    now): `changed` as /sync's `device_lists` would report over that span, and `left`."""

    PATTERNS = [client_path("/keys/changes")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        since = self._hs.streams.parse_token(require_query_string(request, "from"))
        to_raw = query_string(request, "to")
        now = self._hs.sync.current_token()
        until = self._hs.streams.parse_token(to_raw) if to_raw is not None else now
        changed, left = await self._hs.device_lists.get_changes(
            requester.user_id,
            min(since.device_lists, now.device_lists),
            min(until.device_lists, now.device_lists),
            min(since.events, now.events),
            min(until.events, now.events),
        )
        return 200, {"changed": sorted(changed), "left": sorted(left)}
