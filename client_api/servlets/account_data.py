"""Account data and room tags: /user/{userId}/account_data/{type},
/user/{userId}/rooms/{roomId}/account_data/{type}, /user/{userId}/rooms/{roomId}/tags[/{tag}]."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object

if TYPE_CHECKING:
    from homeserver.app import HomeServer

USER = "/user/(?P<user_id>[^/]+)"
ROOM = "/rooms/(?P<room_id>[^/]+)"


class AccountDataServlet:
    PATTERNS = [client_path(f"{USER}/account_data/(?P<data_type>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(self, request: HeddleRequest, user_id: str, data_type: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        content = parse_json_object(request)
        await self._hs.account_data.set_client_account_data(
            requester, user_id, None, data_type, content
        )
        return 200, {}

    async def on_GET(self, request: HeddleRequest, user_id: str, data_type: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, await self._hs.account_data.get_client_account_data(
            requester, user_id, None, data_type
        )


class RoomAccountDataServlet:
    PATTERNS = [client_path(f"{USER}{ROOM}/account_data/(?P<data_type>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(
        self, request: HeddleRequest, user_id: str, room_id: str, data_type: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        content = parse_json_object(request)
        await self._hs.account_data.set_client_account_data(
            requester, user_id, room_id, data_type, content
        )
        return 200, {}

    async def on_GET(
        self, request: HeddleRequest, user_id: str, room_id: str, data_type: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, await self._hs.account_data.get_client_account_data(
            requester, user_id, room_id, data_type
        )


class TagsServlet:
    PATTERNS = [client_path(f"{USER}{ROOM}/tags")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, {"tags": await self._hs.account_data.get_tags(requester, user_id, room_id)}


class TagServlet:
    PATTERNS = [client_path(f"{USER}{ROOM}/tags/(?P<tag>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(
        self, request: HeddleRequest, user_id: str, room_id: str, tag: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        content = parse_json_object(request)
        await self._hs.account_data.add_tag(requester, user_id, room_id, tag, content)
        return 200, {}

    async def on_DELETE(
        self, request: HeddleRequest, user_id: str, room_id: str, tag: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        await self._hs.account_data.remove_tag(requester, user_id, room_id, tag)
        return 200, {}
