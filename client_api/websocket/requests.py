"""Requests over a WebSocket: the frequent small actions a client would otherwise make over
HTTP. Each is its HTTP endpoint's path parameters as fields plus that endpoint's JSON `body`,
validated with the servlet's own model and passed to the handler the servlet calls, so the
results and errors are the same as over HTTP (see docs/websocket.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field

from client_api.servlets.receipts import ReadMarkersBody
from client_api.servlets.typing import TypingBody
from client_api.validation import RequestBody, parse_body
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_room_id

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class _Request(RequestBody):
    type: str
    request_id: str = Field(min_length=1, max_length=255)
    body: dict[str, Any] = Field(default_factory=dict)


class SendRequest(_Request):
    """PUT /rooms/{room_id}/send/{event_type}/{txn_id}."""

    room_id: str
    event_type: str
    txn_id: str


class TypingRequest(_Request):
    """PUT /rooms/{room_id}/typing/{user_id}; `user_id` defaults to the sender's own."""

    room_id: str
    user_id: str | None = None


class ReceiptRequest(_Request):
    """POST /rooms/{room_id}/receipt/{receipt_type}/{event_id}."""

    room_id: str
    receipt_type: str
    event_id: str


class ReadMarkersRequest(_Request):
    """POST /rooms/{room_id}/read_markers."""

    room_id: str


RequestHandler = Callable[[Requester, dict[str, Any]], Awaitable[dict[str, Any]]]


class WebSocketRequests:
    """Request type -> what answers it."""

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs
        self.handlers: dict[str, RequestHandler] = {
            "send": self._send,
            "typing": self._typing,
            "receipt": self._receipt,
            "read_markers": self._read_markers,
        }

    async def handle(self, requester: Requester, message: dict[str, Any]) -> dict[str, Any]:
        """The response body for one request message; raises MatrixError as HTTP would."""
        handler = self.handlers.get(message.get("type", ""))
        if handler is None:
            raise MatrixError(
                400, Codes.UNRECOGNIZED, f"Unknown message type {str(message.get('type'))[:50]!r}"
            )
        return await handler(requester, message)

    async def _send(self, requester: Requester, message: dict[str, Any]) -> dict[str, Any]:
        request = parse_body(message, SendRequest)
        check_room_id(request.room_id)
        event_id = await self._hs.event_sender.send_message(
            requester, request.room_id, request.event_type, request.body, request.txn_id
        )
        return {"event_id": event_id}

    async def _typing(self, requester: Requester, message: dict[str, Any]) -> dict[str, Any]:
        request = parse_body(message, TypingRequest)
        body = parse_body(request.body, TypingBody)
        await self._hs.typing.set_typing(
            requester,
            request.room_id,
            request.user_id or requester.user_id,
            body.typing,
            body.timeout,
        )
        return {}

    async def _receipt(self, requester: Requester, message: dict[str, Any]) -> dict[str, Any]:
        request = parse_body(message, ReceiptRequest)
        await self._hs.read_markers.post_receipt(
            requester.user_id, request.room_id, request.receipt_type, request.event_id, request.body
        )
        return {}

    async def _read_markers(
        self, requester: Requester, message: dict[str, Any]
    ) -> dict[str, Any]:
        request = parse_body(message, ReadMarkersRequest)
        body = parse_body(request.body, ReadMarkersBody)
        await self._hs.read_markers.set_read_markers(
            requester.user_id, request.room_id, body.fully_read, body.read, body.read_private
        )
        return {}
