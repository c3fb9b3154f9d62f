"""Login, token refresh and logout."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body
from homeserver.auth.login_tokens import IssuedLoginToken
from homeserver.auth.tokens import IssuedTokens
from homeserver.auth.uia import PASSWORD

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
    token: str | None = None


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


class GetLoginTokenBody(RequestBody):
    auth: dict[str, Any] | None = None


class GetLoginTokenServlet:
    """A single-use m.login.token for another client, after the user proves it is them."""

    PATTERNS = [client_path("/login/get_token", "v1")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        hs = self._hs
        requester = await require_user(hs, request)
        raw = parse_json_object(request)
        parse_body(raw, GetLoginTokenBody)
        hs.login_tokens.check_enabled()
        if hs.login_tokens.require_ui_auth:
            # Heddle's UIA sessions authorise one operation each, so every token needs its own
            # password check, as the spec asks of this endpoint.
            async with hs.uia.operation(
                raw, "POST", "/login/get_token", [[PASSWORD]], user_id=requester.user_id
            ):
                issued = await self._issue(requester.user_id)
        else:
            issued = await self._issue(requester.user_id)
        return 200, {"login_token": issued.login_token, "expires_in_ms": issued.expires_in_ms}

    async def _issue(self, user_id: str) -> IssuedLoginToken:
        # Counted after user-interactive auth, as Synapse does: a challenge costs nothing.
        self._hs.login_token_limiter.check(user_id)
        return await self._hs.login_tokens.issue(user_id)


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
