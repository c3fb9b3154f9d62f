"""GET /_matrix/federation/v1/openid/userinfo: who made an OpenID token.

Not X-Matrix authenticated: the caller is usually a service that is not a homeserver (an
integration manager), and the token is the credential.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, require_query_string
from federation.transport.routes import federation_path

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class OpenIdUserInfoServlet:
    PATTERNS = [federation_path("/openid/userinfo")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        token = require_query_string(request, "access_token")
        return 200, {"sub": await self._hs.openid.user_for_token(token)}
