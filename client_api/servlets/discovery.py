"""What the server is and can do: versions, well-known, capabilities, health."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path
from client_api.websocket import FEATURE, websocket_url
from homeserver.errors import Codes, MatrixError
from homeserver.events.room_versions import CREATABLE_ROOM_VERSIONS

if TYPE_CHECKING:
    from homeserver.app import HomeServer

class VersionsServlet:
    PATTERNS = [re.compile(r"^/_matrix/client/versions$")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        return 200, {
            # Each version whose endpoints are all routed and whose changes have been checked
            # (homeserver/spec_versions.py).
            "versions": self._hs.spec_versions,
            "unstable_features": {FEATURE: self._hs.config.websocket.enabled},
        }


class ClientWellKnownServlet:
    PATTERNS = [re.compile(r"^/\.well-known/matrix/client$")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        config = self._hs.config
        body: dict[str, Any] = {"m.homeserver": {"base_url": config.client_base_url}}
        if config.websocket.enabled:
            body[FEATURE] = {"url": websocket_url(config)}
        return 200, body


class ServerWellKnownServlet:
    PATTERNS = [re.compile(r"^/\.well-known/matrix/server$")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        config = self._hs.config
        if not config.serve_server_wellknown:
            raise MatrixError(404, Codes.NOT_FOUND, "No .well-known/matrix/server here")
        return 200, {"m.server": config.federation_address or f"{config.server_name}:8448"}


class SupportWellKnownServlet:
    """Who runs this server (spec: GET /.well-known/matrix/support), from `support` in the
    config; 404 when it names nobody and no page, as the spec's "no support information"."""

    PATTERNS = [re.compile(r"^/\.well-known/matrix/support$")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        support = self._hs.config.support
        if not support.contacts and support.support_page is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No support information is configured")
        body: dict[str, Any] = {}
        if support.contacts:
            body["contacts"] = [c.model_dump(exclude_none=True) for c in support.contacts]
        if support.support_page is not None:
            body["support_page"] = support.support_page
        return 200, body


class CapabilitiesServlet:
    PATTERNS = [client_path("/capabilities")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        capabilities: dict[str, Any] = {
            "m.change_password": {"enabled": True},
            "m.set_displayname": {"enabled": True},
            "m.set_avatar_url": {"enabled": True},
            # Every field may be set (within the spec's size limits).
            "m.profile_fields": {"enabled": True},
            "m.3pid_changes": {"enabled": self._hs.config.email.enabled},
            "m.get_login_token": {"enabled": self._hs.login_tokens.enabled},
            "m.room_versions": {
                "default": self._hs.config.rooms.default_room_version,
                # Only the versions /createRoom accepts: clients offer these for
                # creation and upgrades.
                "available": {version: "stable" for version in CREATABLE_ROOM_VERSIONS},
            },
        }
        if requester.is_admin:
            # Omitted for everyone else, as the spec asks when both would be false.
            capabilities["m.account_moderation"] = {"lock": True, "suspend": True}
        return 200, {"capabilities": capabilities}


class HealthServlet:
    """Liveness for load balancers that only reach the client listener."""

    PATTERNS = [re.compile(r"^/health$")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        return 200, b"OK"
