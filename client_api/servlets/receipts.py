"""Receipts and read markers: POST /rooms/{roomId}/receipt/{receiptType}/{eventId} and
POST /rooms/{roomId}/read_markers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body
from homeserver.account_data import FULLY_READ
from homeserver.receipts import READ, READ_PRIVATE

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
        body = parse_json_object(request)
        await self._hs.read_markers.post_receipt(
            requester.user_id, room_id, receipt_type, event_id, body
        )
        return 200, {}


class ReadMarkersBody(RequestBody):
    fully_read: str | None = Field(None, alias=FULLY_READ)
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
        return 200, {}
