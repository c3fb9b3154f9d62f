"""Pushers: GET /pushers, POST /pushers/set (spec: api/client-server/pusher.yaml)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class PushersServlet:
    PATTERNS = [client_path("/pushers")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, {"pushers": await self._hs.pushers.get_pushers(requester.user_id)}


class SetPusherServlet:
    PATTERNS = [client_path("/pushers/set")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        # The body's checks (which errcode for what) are the handler's: `parse_set_pusher`.
        await self._hs.pushers.set_pusher(requester, parse_json_object(request))
        return 200, {}
