"""whoami, password change, deactivation, third-party identifiers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body
from homeserver.auth.uia import PASSWORD

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class WhoamiServlet:
    PATTERNS = [client_path("/account/whoami")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        return 200, {
            "user_id": requester.user_id,
            "device_id": requester.device_id,
            "is_guest": requester.is_guest,
        }


class PasswordBody(RequestBody):
    new_password: str
    logout_devices: bool = True
    auth: dict[str, Any] | None = None


class PasswordServlet:
    # The spec makes the access token optional here for email-based resets; Heddle has no
    # email support yet, so a token is required (401 M_MISSING_TOKEN without one).
    PATTERNS = [client_path("/account/password")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        raw = parse_json_object(request)
        body = parse_body(raw, PasswordBody)
        async with self._hs.uia.operation(
            raw, "POST", "/account/password", [[PASSWORD]], user_id=requester.user_id
        ):
            await self._hs.account.change_password(
                requester.user_id, body.new_password, body.logout_devices, requester
            )
        return 200, {}


class DeactivateBody(RequestBody):
    erase: bool = False
    id_server: str | None = None
    auth: dict[str, Any] | None = None


class DeactivateServlet:
    PATTERNS = [client_path("/account/deactivate")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        raw = parse_json_object(request)
        body = parse_body(raw, DeactivateBody)
        async with self._hs.uia.operation(
            raw, "POST", "/account/deactivate", [[PASSWORD]], user_id=requester.user_id
        ):
            await self._hs.account_deactivation.deactivate(requester.user_id, body.erase)
        # No identity server bindings are ever made, so there is nothing to unbind; the spec
        # says the result "must be `success` if the homeserver has no identifiers to unbind".
        return 200, {"id_server_unbind_result": "success"}


class ThreepidServlet:
    PATTERNS = [client_path("/account/3pid")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_user(self._hs, request)
        # Heddle does not bind e-mail addresses or phone numbers to accounts (yet).
        return 200, {"threepids": []}
