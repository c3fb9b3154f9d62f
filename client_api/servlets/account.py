"""whoami, password change and reset, deactivation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import access_token_from, require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body
from homeserver.auth.uia import EMAIL_IDENTITY, PASSWORD
from homeserver.errors import Codes, MatrixError
from homeserver.threepids.identity_client import check_id_server

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
    # With an access token: a password change, re-authenticated by password. Without one
    # (and e-mail enabled): a reset, authenticated by a validated address of the account
    # (m.login.email.identity); 401 M_MISSING_TOKEN when e-mail is off.
    PATTERNS = [client_path("/account/password")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        if access_token_from(request) is None and self._hs.threepid_validation.enabled:
            return await self._reset(request)
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

    async def _reset(self, request: HeddleRequest) -> tuple[int, Any]:
        raw = parse_json_object(request)
        body = parse_body(raw, PasswordBody)
        async with self._hs.uia.operation(
            raw, "POST", "/account/password", [[EMAIL_IDENTITY]], user_id=None
        ) as completed:
            user_id = await self._hs.threepids.user_for_email(
                completed[EMAIL_IDENTITY]["address"]
            )
            if user_id is None:
                # Unbound since it was validated (Synapse's answer).
                raise MatrixError(404, Codes.NOT_FOUND, "E-mail address not found")
            await self._hs.account.change_password(
                user_id, body.new_password, body.logout_devices, None
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
        if body.id_server is not None:
            check_id_server(body.id_server)
        async with self._hs.uia.operation(
            raw, "POST", "/account/deactivate", [[PASSWORD]], user_id=requester.user_id
        ):
            unbound = await self._hs.account_deactivation.deactivate(
                requester.user_id, body.erase, id_server=body.id_server
            )
        # The spec: `success` also when there was nothing to unbind.
        return 200, {"id_server_unbind_result": "success" if unbound else "no-support"}
