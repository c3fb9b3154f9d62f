"""Typing notifications: PUT /rooms/{roomId}/typing/{userId}."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class TypingBody(RequestBody):
    typing: bool
    # Milliseconds; may be omitted when `typing` is false.
    timeout: int | None = None


class TypingServlet:
    PATTERNS = [client_path("/rooms/(?P<room_id>[^/]+)/typing/(?P<user_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(self, request: HeddleRequest, room_id: str, user_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), TypingBody)
        await self._hs.typing.set_typing(requester, room_id, user_id, body.typing, body.timeout)
        return 200, {}
