"""GET /notifications: the events the user was notified of.

Spec: api/client-server/notifications.yaml.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_int_query, query_string
from homeserver.push.notifications import DEFAULT_LIMIT, MAX_LIMIT

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class NotificationsServlet:
    PATTERNS = [client_path("/notifications")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        limit = parse_int_query(request, "limit", DEFAULT_LIMIT, min_value=0, max_value=MAX_LIMIT)
        return 200, await self._hs.notifications.get_notifications(
            requester.user_id, query_string(request, "from"), limit, query_string(request, "only")
        )
