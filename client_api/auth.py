"""Finding who made a request: the access token, from the header or the query string."""

from __future__ import annotations

from typing import TYPE_CHECKING

from client_api.http import HeddleRequest
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.app import HomeServer


def access_token_from(request: HeddleRequest) -> str | None:
    raw_header = request.getHeader(b"authorization")
    if raw_header is not None:
        header = raw_header.decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MatrixError(401, Codes.MISSING_TOKEN, "Invalid Authorization header")
        return token.strip()
    assert request.args is not None
    # Deprecated since v1.11, but the spec still requires servers to accept it.
    values = request.args.get(b"access_token")
    if values:
        return values[0].decode("ascii", "replace")
    return None


async def require_user(
    hs: HomeServer,
    request: HeddleRequest,
    allow_locked: bool = False,
    allow_guest: bool = False,
) -> Requester:
    """Who made the request: 401 M_MISSING_TOKEN without a token, M_UNKNOWN_TOKEN for a bad
    one, M_USER_LOCKED for a locked account unless `allow_locked` (only logging out is).

    Guests get 403 M_GUEST_ACCESS_FORBIDDEN unless `allow_guest`: servlets opt in for the
    endpoints the spec's "Guest access" section lists, so a new endpoint is closed to guests
    until someone decides otherwise."""
    token = access_token_from(request)
    if token is None:
        raise MatrixError(401, Codes.MISSING_TOKEN, "Missing access token")
    requester = await hs.tokens.validate(token, allow_locked=allow_locked)
    if requester.is_guest and not allow_guest:
        raise MatrixError(403, Codes.GUEST_ACCESS_FORBIDDEN, "Guest access is not allowed here")
    user_agent = request.getHeader(b"user-agent")
    await hs.devices.record_activity(
        requester.user_id,
        requester.device_id,
        hs.client_ip(request),
        user_agent.decode("utf-8", "replace") if user_agent else None,
    )
    return requester


async def optional_user(hs: HomeServer, request: HeddleRequest) -> Requester | None:
    if access_token_from(request) is None:
        return None
    # What anyone may do without a token, a guest may do with one.
    return await require_user(hs, request, allow_guest=True)
