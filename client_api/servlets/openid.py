"""OpenID: a token that proves to another service who the user is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class RequestOpenIdTokenServlet:
    PATTERNS = [client_path("/user/(?P<user_id>[^/]+)/openid/request_token")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        # The body is an empty object "reserved for future expansion": it must still be one.
        parse_json_object(request)
        return 200, await self._hs.openid.request_token(requester, user_id)
