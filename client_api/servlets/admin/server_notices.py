"""Synapse's `POST /_synapse/admin/v1/send_server_notice` and its idempotent PUT form
(`.../send_server_notice/{txnId}`). The work is
`homeserver.admin.server_notices.ServerNoticesHandler`."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from pydantic import Field

from client_api.http import HeddleRequest, parse_json_object
from client_api.servlets.admin.access import admin_path, require_admin
from client_api.validation import RequestBody, parse_body
from homeserver.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class ServerNoticeBody(RequestBody):
    user_id: str = Field(max_length=255)
    content: dict[str, Any]
    type: str = Field("m.room.message", min_length=1, max_length=255)
    state_key: str | None = None


async def _send(hs: HomeServer, request: HeddleRequest, txn_id: str) -> tuple[int, Any]:
    admin = await require_admin(hs, request)
    raw = parse_json_object(request)
    # A missing field is M_MISSING_PARAM here, as Synapse answers (not parse_body's M_BAD_JSON).
    for required in ("user_id", "content"):
        if required not in raw:
            raise MatrixError(400, Codes.MISSING_PARAM, f"Missing required field '{required}'")
    body = parse_body(raw, ServerNoticeBody)
    if body.state_key is not None:
        raise MatrixError(
            400, Codes.INVALID_PARAM, "State events are not sent as server notices here"
        )
    event_id = await hs.server_notices.send_notice(
        admin, body.user_id, body.type, body.content, txn_id
    )
    return 200, {"event_id": event_id}


class SendServerNoticeServlet:
    PATTERNS = [admin_path("/send_server_notice")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        # Each POST is a new notice: its own transaction ID.
        return await _send(self._hs, request, secrets.token_urlsafe(16))


class SendServerNoticeTxnServlet:
    PATTERNS = [admin_path("/send_server_notice/(?P<txn_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(self, request: HeddleRequest, txn_id: str) -> tuple[int, Any]:
        return await _send(self._hs, request, txn_id)
