"""GET /_matrix/federation/v1/user/devices/{userId}: a local user's devices and
cross-signing keys, with the device-list position they correspond to (server-server API,
"Device Management"). Any authenticated server may ask; 400 M_INVALID_PARAM for a user of
another server. A user we do not know has no devices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest
from federation.transport.auth import authenticate_request
from federation.transport.routes import federation_path
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import split_user_id

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class UserDevicesServlet:
    PATTERNS = [federation_path("/user/devices/(?P<user_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await authenticate_request(self._hs, request, None)
        _, server = split_user_id(user_id)
        if server != self._hs.server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, f"{user_id} is not a user of this server")
        return 200, await self._hs.device_lists.get_user_devices_for_federation(user_id)
