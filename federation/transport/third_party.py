"""POST /_matrix/federation/v1/3pid/onbind: an identity server says an address was bound to
an account, with the third-party invites it stored for that address.

Not X-Matrix authenticated: the caller is an identity server, not a homeserver; each invite's
signed block is checked by the auth rules against the keys the room's
`m.room.third_party_invite` event names. Also served on the client listener, where
deployments that share one port for both APIs are reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, parse_json_object
from federation.transport.routes import federation_path

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class ThirdPartyOnBindServlet:
    PATTERNS = [federation_path("/3pid/onbind")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        await self._hs.third_party_invites.on_bind(parse_json_object(request))
        return 200, {}
