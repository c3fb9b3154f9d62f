"""Third-party lookup (spec: "Third-party Networks").

Third-party networks are bridged by application services, and this server has none: it
knows no protocols, and every lookup finds nothing. The answers are those Synapse gives
with no application service registered: `{}` for the protocols, 404 M_NOT_FOUND for any
one protocol, and an empty list for user and location lookups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, require_query_string
from homeserver.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class ProtocolsServlet:
    PATTERNS = [client_path("/thirdparty/protocols")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_user(self._hs, request)
        return 200, {}


class ProtocolServlet:
    PATTERNS = [client_path("/thirdparty/protocol/(?P<protocol>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, protocol: str) -> tuple[int, Any]:
        await require_user(self._hs, request)
        raise MatrixError(404, Codes.NOT_FOUND, f"Unknown protocol {protocol!r}")


class ProtocolLookupServlet:
    """Users or locations of one protocol, by that protocol's fields."""

    PATTERNS = [client_path("/thirdparty/(?P<kind>user|location)/(?P<protocol>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, kind: str, protocol: str) -> tuple[int, Any]:
        await require_user(self._hs, request)
        return 200, []


class ReverseLookupServlet:
    """Third-party users of a Matrix user ID, or locations of a room alias."""

    PATTERNS = [client_path("/thirdparty/(?P<kind>user|location)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, kind: str) -> tuple[int, Any]:
        await require_user(self._hs, request)
        require_query_string(request, "userid" if kind == "user" else "alias")
        return 200, []
