"""Profiles: display name, avatar URL and any other field (spec v1.16 "extended profiles")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from homeserver.errors import Codes, MatrixError
from homeserver.profile import profile_json

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class ProfileServlet:
    PATTERNS = [client_path("/profile/(?P<user_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        return 200, profile_json(await self._hs.profiles.get_full_profile(user_id))


class ProfileFieldServlet:
    # Any key: its grammar and length are checked by the handler, for the spec's errcodes.
    PATTERNS = [client_path("/profile/(?P<user_id>[^/]+)/(?P<key>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str, key: str) -> tuple[int, Any]:
        return 200, {key: await self._hs.profiles.get_field(user_id, key)}

    async def on_PUT(self, request: HeddleRequest, user_id: str, key: str) -> tuple[int, Any]:
        # Guests may set their display name, and no other profile field.
        requester = await require_user(self._hs, request, allow_guest=key == "displayname")
        body = parse_json_object(request)
        if key not in body:
            raise MatrixError(400, Codes.MISSING_PARAM, f"Missing '{key[:255]}'")
        await self._hs.profiles.set_field(requester, user_id, key, body[key])
        return 200, {}

    async def on_DELETE(self, request: HeddleRequest, user_id: str, key: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=key == "displayname")
        await self._hs.profiles.delete_field(requester, user_id, key)
        return 200, {}
