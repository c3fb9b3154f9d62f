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


class RegisterServlet:
    PATTERNS = [client_path("/register")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        hs = self._hs
        kind = query_string(request, "kind") or "user"
        if kind == "guest":
            raise MatrixError(403, Codes.GUEST_ACCESS_FORBIDDEN, "Guest access is disabled")
        if kind != "user":
            raise MatrixError(400, Codes.INVALID_PARAM, f"Unknown registration kind {kind!r}")
        raw = parse_json_object(request)
        body = parse_body(raw, RegisterBody)
        if not hs.config.registration.enabled:
            raise MatrixError(403, Codes.FORBIDDEN, "Registration has been disabled")
        # Report a bad or taken username before asking the client to authenticate.
        if body.username is not None:
            await hs.registration.check_available(body.username)
        async with hs.uia.operation(
            raw, "POST", "/register", hs.uia.registration_flows(), user_id=None
        ):
            if body.password is None:
                # Checked after UIA so a client's first, empty request still gets the flows.
                # Password login is the only way back in: without one the account would be
                # lost as soon as this session ends.
                raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: password")
            hs.registration_limiter.check(hs.client_ip(request))
            user_id = await hs.registration.register(body.username, body.password)
        if body.inhibit_login:
            return 200, {"user_id": user_id, "home_server": hs.server_name}
        tokens = await hs.login.start_session(
            user_id, body.device_id, body.initial_device_display_name, body.refresh_token
        )
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
        valid = self._hs.uia.is_registration_token_valid(token)
        return 200, {"valid": valid}
