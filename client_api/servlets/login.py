"""Login, token refresh and logout."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body
from homeserver.auth.tokens import IssuedTokens

if TYPE_CHECKING:
    from homeserver.app import HomeServer


def session_response(hs: HomeServer, user_id: str, tokens: IssuedTokens) -> dict[str, Any]:
    """The body /login and /register return for a new session."""
    body: dict[str, Any] = {
        "user_id": user_id,
        "access_token": tokens.access_token,
        "device_id": tokens.device_id,
        "home_server": hs.server_name,
        "well_known": {"m.homeserver": {"base_url": hs.config.client_base_url}},
    }
    if tokens.refresh_token is not None:
        body["refresh_token"] = tokens.refresh_token
        body["expires_in_ms"] = tokens.expires_in_ms
    return body


class LoginBody(RequestBody):
    type: str
    password: str | None = None
    device_id: str | None = None
    initial_device_display_name: str | None = None
    refresh_token: bool = False
    identifier: dict[str, Any] | None = None
    user: str | None = None


class LoginServlet:
    PATTERNS = [client_path("/login")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        return 200, {"flows": self._hs.login.login_flows()}

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        body = parse_json_object(request)
        parse_body(body, LoginBody)
        user_id, tokens = await self._hs.login.login(body, self._hs.client_ip(request))
        return 200, session_response(self._hs, user_id, tokens)


class RefreshBody(RequestBody):
    refresh_token: str


class RefreshServlet:
    PATTERNS = [client_path("/refresh", "v1|v3")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        body = parse_body(parse_json_object(request), RefreshBody)
        tokens = await self._hs.tokens.refresh(body.refresh_token)
        return 200, {
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "expires_in_ms": tokens.expires_in_ms,
        }


class LogoutServlet:
    PATTERNS = [client_path("/logout")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        # The spec lets a locked account log out (and nothing else).
        requester = await require_user(self._hs, request, allow_locked=True)
        # Logging out ends the device too (spec: "the device associated with the access token
        # is also deleted"), which revokes its access and refresh tokens.
        await self._hs.devices.delete_devices(requester.user_id, [requester.device_id])
        return 200, {}


class LogoutAllServlet:
    PATTERNS = [client_path("/logout/all")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_locked=True)
        await self._hs.devices.delete_all_devices(requester.user_id)
        return 200, {}
