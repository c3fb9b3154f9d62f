"""Account registration, username availability, registration-token validity."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from client_api.http import (
    HeddleRequest,
    client_path,
    parse_json_object,
    query_string,
    require_query_string,
)
from client_api.servlets.login import session_response
from client_api.validation import RequestBody, parse_body
from homeserver.auth.registration import ClientRegistration
from homeserver.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.app import HomeServer

REGISTRATION_TOKEN_MAX_LENGTH = 64
_REGISTRATION_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")


class RegisterBody(RequestBody):
    username: str | None = None
    password: str | None = None
    device_id: str | None = None
    initial_device_display_name: str | None = None
    inhibit_login: bool = False
    refresh_token: bool = False
    auth: dict[str, Any] | None = None
    guest_access_token: str | None = None


class RegisterServlet:
    PATTERNS = [client_path("/register")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        hs = self._hs
        kind = query_string(request, "kind") or "user"
        hs.registration.check_kind(kind)
        raw = parse_json_object(request)
        body = parse_body(raw, RegisterBody)
        asked = ClientRegistration(
            username=body.username,
            password=body.password,
            device_id=body.device_id,
            initial_device_display_name=body.initial_device_display_name,
            inhibit_login=body.inhibit_login,
            refresh_token=body.refresh_token,
            guest_access_token=body.guest_access_token,
        )
        if kind == "guest":
            guest_id, guest_tokens = await hs.registration.register_guest(
                asked, hs.client_ip(request)
            )
            return 200, session_response(hs, guest_id, guest_tokens)
        user_id, tokens = await hs.registration.register_via_client(
            raw, asked, hs.client_ip(request)
        )
        if tokens is None:
            return 200, {"user_id": user_id, "home_server": hs.server_name}
        return 200, session_response(hs, user_id, tokens)


class RegisterAvailableServlet:
    PATTERNS = [client_path("/register/available")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        username = require_query_string(request, "username")
        self._hs.registration_limiter.check_only(self._hs.client_ip(request))
        await self._hs.registration.check_available(username)
        return 200, {"available": True}


class RegistrationTokenValidityServlet:
    PATTERNS = [client_path("/register/m.login.registration_token/validity", "v1")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        token = require_query_string(request, "token")
        if not self._hs.config.registration.enabled:
            # The spec's answer when registration is off: every token is invalid, with 403.
            raise MatrixError(403, Codes.FORBIDDEN, "Registration is not enabled")
        if not _REGISTRATION_TOKEN.fullmatch(token):
            raise MatrixError(400, Codes.INVALID_PARAM, "Registration tokens are 1-64 characters of [A-Za-z0-9._~-]")
        self._hs.registration_limiter.check(self._hs.client_ip(request))
        valid = await self._hs.uia.is_registration_token_valid(token)
        return 200, {"valid": valid}
