"""E-mail validation (requestToken and the link in the mail) and the account's third-party
identifiers (/account/3pid and its add, delete, bind and unbind)."""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import (
    HeddleRequest,
    RawBody,
    client_path,
    parse_json_object,
    require_query_string,
)
from client_api.validation import RequestBody, parse_body
from homeserver.auth.uia import PASSWORD
from homeserver.errors import Codes, MatrixError
from homeserver.threepids.addresses import check_client_secret
from homeserver.threepids.bindings import check_medium
from homeserver.threepids.identity_client import check_id_server
from homeserver.threepids.validation import (
    ADD_THREEPID,
    PASSWORD_RESET,
    REGISTRATION,
    SUBMIT_TOKEN_PATHS,
    EmailTokenRequest,
    email_not_supported,
)

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class EmailRequestTokenBody(RequestBody):
    client_secret: str
    email: str
    send_attempt: int
    next_link: str | None = None
    # Ignored: this server validates addresses itself, as the spec allows.
    id_server: str | None = None
    id_access_token: str | None = None


class _EmailRequestTokenServlet:
    purpose: str

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    def check_allowed(self) -> None:
        """Refusals particular to the endpoint, before the body is looked at."""

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        self._hs.threepid_validation.require_enabled()
        self.check_allowed()
        body = parse_body(parse_json_object(request), EmailRequestTokenBody)
        return 200, await self._hs.threepid_validation.request_email_token(
            self.purpose,
            EmailTokenRequest(body.client_secret, body.email, body.send_attempt, body.next_link),
            self._hs.client_ip(request),
        )


class RegisterEmailRequestTokenServlet(_EmailRequestTokenServlet):
    PATTERNS = [client_path("/register/email/requestToken")]
    purpose = REGISTRATION

    def check_allowed(self) -> None:
        if not self._hs.config.registration.enabled:
            raise MatrixError(403, Codes.FORBIDDEN, "Registration has been disabled")
        if self._hs.config.email.registration == "off":
            raise MatrixError(
                400,
                Codes.THREEPID_MEDIUM_NOT_SUPPORTED,
                "This server does not register accounts with e-mail addresses",
            )


class PasswordEmailRequestTokenServlet(_EmailRequestTokenServlet):
    PATTERNS = [client_path("/account/password/email/requestToken")]
    purpose = PASSWORD_RESET


class AddThreepidEmailRequestTokenServlet(_EmailRequestTokenServlet):
    PATTERNS = [client_path("/account/3pid/email/requestToken")]
    purpose = ADD_THREEPID


class MsisdnRequestTokenServlet:
    """Phone numbers cannot be validated here: the spec's error for an unsupported medium."""

    PATTERNS = [
        client_path("/register/msisdn/requestToken"),
        client_path("/account/password/msisdn/requestToken"),
        client_path("/account/3pid/msisdn/requestToken"),
    ]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        raise MatrixError(
            400,
            Codes.THREEPID_MEDIUM_NOT_SUPPORTED,
            "This server does not validate phone numbers",
        )


class SubmitTokenBody(RequestBody):
    sid: str
    client_secret: str
    token: str


def _page(code: int, text: str) -> tuple[int, Any]:
    body = f"<!DOCTYPE html><html><body><p>{html.escape(text)}</p></body></html>"
    return code, RawBody(body.encode(), {"Content-Type": "text/html; charset=utf-8"})


class EmailSubmitTokenServlet:
    """The link in a validation mail (GET: an HTML page, or a redirect to next_link), and
    the same check as JSON (POST with sid, client_secret and token, answering
    `{"success": true}` as the identity service API's submitToken does)."""

    PATTERNS = [re.compile(f"^/{re.escape(path)}$") for path in SUBMIT_TOKEN_PATHS.values()]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        try:
            next_link = await self._hs.threepid_validation.submit_token(
                require_query_string(request, "sid"),
                require_query_string(request, "client_secret"),
                require_query_string(request, "token"),
            )
        except MatrixError as e:
            return _page(e.http_code, f"Your e-mail address could not be validated: {e.message}")
        if next_link is not None:
            return 302, RawBody(b"", {"Location": next_link})
        return _page(200, "Your e-mail address has been validated. You may close this page.")

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        body = parse_body(parse_json_object(request), SubmitTokenBody)
        await self._hs.threepid_validation.submit_token(body.sid, body.client_secret, body.token)
        return 200, {"success": True}


class ThreepidServlet:
    PATTERNS = [client_path("/account/3pid")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, {"threepids": await self._hs.threepids.list_for_user(requester.user_id)}

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        # Deprecated; the spec makes it the same as /3pid/bind.
        await require_user(self._hs, request)
        raise _no_identity_server()


def _no_identity_server() -> MatrixError:
    return MatrixError(
        400,
        Codes.SERVER_NOT_TRUSTED,
        "This server does not use identity servers; add addresses with /account/3pid/add",
    )


class ThreepidAddBody(RequestBody):
    client_secret: str
    sid: str
    auth: dict[str, Any] | None = None


class ThreepidAddServlet:
    PATTERNS = [client_path("/account/3pid/add")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        if not self._hs.threepid_validation.enabled:
            raise email_not_supported()
        raw = parse_json_object(request)
        body = parse_body(raw, ThreepidAddBody)
        async with self._hs.uia.operation(
            raw, "POST", "/account/3pid/add", [[PASSWORD]], user_id=requester.user_id
        ):
            await self._hs.threepids.add_validated(requester.user_id, body.sid, body.client_secret)
        return 200, {}


class ThreepidBody(RequestBody):
    medium: str
    address: str
    id_server: str | None = None


class ThreepidDeleteServlet:
    PATTERNS = [client_path("/account/3pid/delete")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), ThreepidBody)
        check_medium(body.medium)
        if body.id_server is not None:
            check_id_server(body.id_server)
        # Unbound at the identity servers first (at `id_server`, or wherever this server
        # bound it), as Synapse does: one failing leaves the address on the account.
        unbound = await self._hs.id_server_bindings.unbind(
            requester.user_id, body.medium, body.address, body.id_server
        )
        await self._hs.threepids.delete(requester.user_id, body.medium, body.address)
        return 200, {"id_server_unbind_result": _unbind_result(unbound)}


def _unbind_result(unbound: bool) -> str:
    return "success" if unbound else "no-support"


class ThreepidUnbindServlet:
    PATTERNS = [client_path("/account/3pid/unbind", versions="r0|v3|unstable")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), ThreepidBody)
        check_medium(body.medium)
        if body.id_server is not None:
            check_id_server(body.id_server)
        unbound = await self._hs.id_server_bindings.unbind(
            requester.user_id, body.medium, body.address, body.id_server
        )
        return 200, {"id_server_unbind_result": _unbind_result(unbound)}


class ThreepidBindBody(RequestBody):
    client_secret: str
    id_server: str
    id_access_token: str
    sid: str


class ThreepidBindServlet:
    PATTERNS = [client_path("/account/3pid/bind", versions="r0|v3|unstable")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), ThreepidBindBody)
        check_client_secret(body.client_secret)
        await self._hs.id_server_bindings.bind(
            requester.user_id, body.id_server, body.id_access_token, body.sid, body.client_secret
        )
        return 200, {}
