"""Send-to-device messaging: PUT /sendToDevice/{eventType}/{txnId}."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class SendToDeviceBody(RequestBody):
    # user_id -> device_id (or "*") -> message content
    messages: dict[str, dict[str, dict[str, Any]]]


class SendToDeviceServlet:
    PATTERNS = [client_path("/sendToDevice/(?P<event_type>[^/]+)/(?P<txn_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(
        self, request: HeddleRequest, event_type: str, txn_id: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        body = parse_body(parse_json_object(request), SendToDeviceBody)
        await self._hs.to_device.send_to_device(
            requester.user_id, requester.device_id, event_type, txn_id, body.messages
        )
        return 200, {}
