"""Voice over IP: TURN server credentials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path
from homeserver.errors import Codes, MatrixError
from homeserver.voip import turn_credentials

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class TurnServerServlet:
    PATTERNS = [client_path("/voip/turnServer", versions="r0|v3")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        # Not in the spec's list for guests; `turn.allow_guests` decides, as in Synapse.
        requester = await require_user(self._hs, request, allow_guest=True)
        config = self._hs.config.turn
        if requester.is_guest and not config.allow_guests:
            raise MatrixError(403, Codes.GUEST_ACCESS_FORBIDDEN, "Guests may not use TURN here")
        return 200, turn_credentials(config, requester.user_id, self._hs.clock.time_msec())
