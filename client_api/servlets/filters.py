"""Uploading and downloading filters (POST/GET /user/{userId}/filter)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from homeserver.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class CreateFilterServlet:
    PATTERNS = [client_path("/user/(?P<user_id>[^/]+)/filter")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        if user_id != requester.user_id:
            raise MatrixError(403, Codes.FORBIDDEN, "Cannot create filters for other users")
        body = parse_json_object(request)
        filter_id = await self._hs.filtering.create_filter(requester.user_id, body)
        return 200, {"filter_id": filter_id}


class GetFilterServlet:
    PATTERNS = [client_path("/user/(?P<user_id>[^/]+)/filter/(?P<filter_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str, filter_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        if user_id != requester.user_id:
            raise MatrixError(403, Codes.FORBIDDEN, "Cannot get filters for other users")
        return 200, await self._hs.filtering.get_filter_json(requester.user_id, filter_id)
