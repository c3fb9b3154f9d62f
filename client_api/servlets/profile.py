"""Profiles: display name and avatar URL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from homeserver.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.app import HomeServer

PROFILE_FIELDS = ("displayname", "avatar_url")


class ProfileServlet:
    PATTERNS = [client_path("/profile/(?P<user_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        profile = await self._hs.profiles.get_profile(user_id)
        body = {"displayname": profile.displayname, "avatar_url": profile.avatar_url}
        return 200, {k: v for k, v in body.items() if v is not None}


class ProfileFieldServlet:
    PATTERNS = [client_path("/profile/(?P<user_id>[^/]+)/(?P<field>displayname|avatar_url)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str, field: str) -> tuple[int, Any]:
        profile = await self._hs.profiles.get_profile(user_id)
        value = getattr(profile, field)
        if value is None:
            # The spec's 404: "There is no profile field with this key for this user".
            raise MatrixError(404, Codes.NOT_FOUND, f"The user has no {field}")
        return 200, {field: value}

    async def on_PUT(self, request: HeddleRequest, user_id: str, field: str) -> tuple[int, Any]:
        # Guests may set their display name, and no other profile field.
        requester = await require_user(self._hs, request, allow_guest=field == "displayname")
        body = parse_json_object(request)
        if field not in body:
            raise MatrixError(400, Codes.MISSING_PARAM, f"Missing '{field}'")
        if field == "displayname":
            await self._hs.profiles.set_displayname(requester, user_id, body[field])
        else:
            await self._hs.profiles.set_avatar_url(requester, user_id, body[field])
        return 200, {}
