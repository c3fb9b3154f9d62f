"""GET /sync."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import (
    HeddleRequest,
    RawBody,
    client_path,
    parse_bool_query,
    parse_int_query,
    query_string,
)
from homeserver.errors import Codes, MatrixError
from homeserver.sync.encoding import dumps_sync
from homeserver.sync.handler import SyncRequest

if TYPE_CHECKING:
    from homeserver.app import HomeServer

# Long-polls are capped so proxies and clients are not left hanging for hours.
MAX_TIMEOUT_MS = 5 * 60 * 1000
_JSON_HEADERS = {"Content-Type": "application/json"}


def check_set_presence(value: str | None) -> str:
    """The `set_presence` of a sync (default "online"), or 400 M_INVALID_PARAM."""
    set_presence = value or "online"
    if set_presence not in ("online", "offline", "unavailable"):
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid 'set_presence'")
    return set_presence


class SyncServlet:
    PATTERNS = [client_path("/sync")]
    # A long-poll whose client has gone should stop waiting (and stop counting the user as
    # syncing for presence) at once, not when its timeout ends.
    CANCEL_ON_DISCONNECT = True

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        since_raw = query_string(request, "since")
        since = self._hs.streams.parse_token(since_raw) if since_raw is not None else None
        # A negative timeout means "do not wait" (not an error).
        timeout_ms = max(parse_int_query(request, "timeout", 0, max_value=MAX_TIMEOUT_MS), 0)
        full_state_raw = query_string(request, "full_state") or "false"
        if full_state_raw not in ("true", "false"):
            raise MatrixError(400, Codes.INVALID_PARAM, "'full_state' must be true or false")
        set_presence = check_set_presence(query_string(request, "set_presence"))
        sync_filter = await self._hs.filtering.resolve_filter(
            requester.user_id, query_string(request, "filter")
        )
        sync_request = SyncRequest(
            user_id=requester.user_id,
            device_id=requester.device_id,
            since=since,
            full_state=full_state_raw == "true",
            filter=sync_filter,
            use_state_after=parse_bool_query(request, "use_state_after") or False,
        )
        async with self._hs.presence.syncing(requester.user_id, set_presence):
            response = await self._hs.sync.wait_for_sync(sync_request, timeout_ms)
        # The rooms' shared sections are encoded once for every listener a message wakes.
        return 200, RawBody(dumps_sync(response).encode("utf-8"), _JSON_HEADERS)
