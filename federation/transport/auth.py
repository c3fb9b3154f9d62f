"""Authenticating inbound federation requests (spec: "Request Authentication")."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, parse_json_object
from federation.errors import SignatureVerifyError
from federation.xmatrix import XMatrixAuth, parse_authorization, request_json
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import is_valid_server_name

if TYPE_CHECKING:
    from homeserver.app import HomeServer

logger = logging.getLogger(__name__)


def require_federation_enabled(hs: HomeServer) -> None:
    if not hs.config.federation.enabled:
        raise MatrixError(403, Codes.FORBIDDEN, "Federation is disabled on this server")


def _x_matrix_headers(request: HeddleRequest) -> list[XMatrixAuth]:
    headers = request.requestHeaders.getRawHeaders(b"authorization") or []
    parsed = []
    for raw in headers:
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MatrixError(401, Codes.UNAUTHORIZED, "Malformed Authorization header") from None
        if not value.strip().lower().startswith("x-matrix "):
            continue
        try:
            parsed.append(parse_authorization(value))
        except ValueError as e:
            raise MatrixError(400, Codes.UNAUTHORIZED, f"Malformed X-Matrix header: {e}") from None
    return parsed


async def authenticate_request(hs: HomeServer, request: HeddleRequest, content: Any | None) -> str:
    """The name of the server that signed this request, or 401 M_UNAUTHORIZED (400 for a
    malformed X-Matrix header or an origin that is not a server name, as Synapse answers).

    `content` is the parsed JSON body (None when the request has none). Every X-Matrix
    header must name the same origin and, when it names a destination, this server; one
    valid signature suffices. 403 M_FORBIDDEN when federation is disabled.
    """
    require_federation_enabled(hs)
    auths = _x_matrix_headers(request)
    if not auths:
        raise MatrixError(401, Codes.UNAUTHORIZED, "Missing X-Matrix Authorization header")
    origin = auths[0].origin
    if any(auth.origin != origin for auth in auths):
        raise MatrixError(401, Codes.UNAUTHORIZED, "X-Matrix headers name different origins")
    if not is_valid_server_name(origin):
        raise MatrixError(400, Codes.UNAUTHORIZED, "X-Matrix origin is not a valid server name")
    for auth in auths:
        if auth.destination is not None and auth.destination != hs.server_name:
            raise MatrixError(
                401, Codes.UNAUTHORIZED, f"Request is for {auth.destination!r}, not this server"
            )
    assert request.method is not None and request.uri is not None
    method = request.method.decode("ascii")
    uri = request.uri.decode("ascii", errors="replace")
    now = hs.clock.time_msec()
    problems = []
    for auth in auths:
        signed = request_json(method, uri, origin, auth.destination, content)
        signed["signatures"] = {origin: {auth.key_id: auth.signature}}
        try:
            await hs.keyring.verify_json_for_server(origin, signed, now)
            # It is up: whatever we hold back for it can go now.
            hs.federation_sender.peer_is_up(origin)
            return origin
        except SignatureVerifyError as e:
            problems.append(str(e))
    logger.info("Rejected federation request %s %s from %s: %s", method, uri, origin, "; ".join(problems))
    raise MatrixError(401, Codes.UNAUTHORIZED, f"Invalid X-Matrix signature from {origin}")


async def federation_json_body_and_origin(
    hs: HomeServer, request: HeddleRequest
) -> tuple[str, dict[str, Any]]:
    """Parse the JSON object body (400 M_NOT_JSON / M_BAD_JSON) and authenticate the request
    over it; returns (origin, body)."""
    require_federation_enabled(hs)
    body = parse_json_object(request)
    origin = await authenticate_request(hs, request, body)
    return origin, body
