"""Presence: GET/PUT /presence/{userId}/status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class PresenceBody(RequestBody):
    presence: Literal["online", "offline", "unavailable"]
    status_msg: str | None = None


class PresenceStatusServlet:
    PATTERNS = [client_path("/presence/(?P<user_id>[^/]+)/status")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, await self._hs.presence.get_presence_for_client(requester, user_id)

    async def on_PUT(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), PresenceBody)
        await self._hs.presence.set_presence(requester, user_id, body.presence, body.status_msg)
        return 200, {}
