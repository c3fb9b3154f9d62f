"""Receipts and read markers: POST /rooms/{roomId}/receipt/{receiptType}/{eventId} and
POST /rooms/{roomId}/read_markers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body
from homeserver.errors import Codes, MatrixError
from homeserver.receipts import FULLY_READ, READ, READ_PRIVATE, RECEIPT_TYPES

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class ReceiptServlet:
    PATTERNS = [
        client_path(
            "/rooms/(?P<room_id>[^/]+)/receipt/(?P<receipt_type>[^/]+)/(?P<event_id>[^/]+)"
        )
    ]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(
        self, request: HeddleRequest, room_id: str, receipt_type: str, event_id: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        if receipt_type not in RECEIPT_TYPES | {FULLY_READ}:
            raise MatrixError(
                400,
                Codes.INVALID_PARAM,
                f"Receipt type must be one of {', '.join(sorted(RECEIPT_TYPES | {FULLY_READ}))}",
            )
        body = parse_json_object(request)
        thread_id = None
        if "thread_id" in body:
            thread_id = body["thread_id"]
            if not isinstance(thread_id, str) or not thread_id:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, "thread_id field must be a non-empty string"
                )
            if receipt_type == FULLY_READ:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, f"thread_id is not compatible with {FULLY_READ}"
                )
        user_id = requester.user_id
        if receipt_type == FULLY_READ:
            # Spec: the same as /read_markers with only m.fully_read.
            await self._hs.read_markers.set_fully_read(user_id, room_id, event_id)
        else:
            await self._hs.receipts.send_receipt(user_id, room_id, receipt_type, event_id, thread_id)
        await self._hs.presence.bump_active(user_id)
        return 200, {}


class ReadMarkersBody(RequestBody):
    fully_read: str | None = Field(None, alias="m.fully_read")
    read: str | None = Field(None, alias=READ)
    read_private: str | None = Field(None, alias=READ_PRIVATE)


class ReadMarkersServlet:
    PATTERNS = [client_path("/rooms/(?P<room_id>[^/]+)/read_markers")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), ReadMarkersBody)
        await self._hs.read_markers.set_read_markers(
            requester.user_id, room_id, body.fully_read, body.read, body.read_private
        )
        await self._hs.presence.bump_active(requester.user_id)
        return 200, {}
