"""Logging in, and the device + token pair every new session gets (login and register)."""

from __future__ import annotations

from typing import Any

from homeserver.auth.credentials import CredentialChecker
from homeserver.auth.devices import DeviceHandler, check_device_id, check_display_name
from homeserver.auth.login_tokens import LoginTokenHandler
from homeserver.auth.tokens import IssuedTokens, TokenHandler
from homeserver.errors import Codes, MatrixError
from homeserver.ratelimit import RateLimiter

PASSWORD_LOGIN = "m.login.password"
TOKEN_LOGIN = "m.login.token"


class LoginHandler:
    def __init__(
        self,
        server_name: str,
        credentials: CredentialChecker,
        devices: DeviceHandler,
        tokens: TokenHandler,
        login_tokens: LoginTokenHandler,
        per_address: RateLimiter,
        per_account: RateLimiter,
    ) -> None:
        self._server_name = server_name
        self._credentials = credentials
        self._devices = devices
        self._tokens = tokens
        self._login_tokens = login_tokens
        self._per_address = per_address
        self._per_account = per_account

    def login_flows(self) -> list[dict[str, Any]]:
        flows: list[dict[str, Any]] = [{"type": PASSWORD_LOGIN}]
        if self._login_tokens.enabled:
            # Login tokens come only from /login/get_token, which `get_login_token` announces
            # to clients that are not logged in yet.
            flows.append({"type": TOKEN_LOGIN, "get_login_token": True})
        return flows

    async def login(self, body: dict[str, Any], client_ip: str) -> tuple[str, IssuedTokens]:
        self._per_address.check(client_ip)
        login_type = body.get("type")
        if login_type == PASSWORD_LOGIN:
            user_id = await self._credentials.user_id_for_identifier(body)
            self._per_account.check(user_id)
            await self._credentials.check_password(user_id, body.get("password"))
        elif login_type == TOKEN_LOGIN and self._login_tokens.enabled:
            user_id = await self._login_tokens.consume(body.get("token"))
            await self._credentials.check_token_user(user_id)
        else:
            raise MatrixError(400, Codes.UNKNOWN, f"Unknown login type {login_type!r}")
        tokens = await self.start_session(
            user_id,
            device_id=body.get("device_id"),
            display_name=body.get("initial_device_display_name"),
            with_refresh=body.get("refresh_token") is True,
        )
        return user_id, tokens

    async def start_session(
        self, user_id: str, device_id: Any, display_name: Any, with_refresh: bool
    ) -> IssuedTokens:
        """Create or reuse the device and issue its tokens.

        Reusing an existing device ID revokes that device's earlier tokens, as the spec asks.
        """
        if device_id is not None:
            device_id = check_device_id(device_id)
        display_name = check_display_name(display_name)
        device_id, created = await self._devices.ensure_device(user_id, device_id, display_name)
        return await self._tokens.issue(
            user_id, device_id, with_refresh, replace_device_tokens=not created
        )
