"""User profiles (display name and avatar) of local users."""

from __future__ import annotations

from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import split_user_id
from storage.stores.profiles import Profile, ProfileStore

MAX_DISPLAYNAME_LENGTH = 256
MAX_AVATAR_URL_LENGTH = 1000


class ProfileHandler:
    def __init__(self, server_name: str, store: ProfileStore) -> None:
        self._server_name = server_name
        self._store = store

    async def get_profile(self, user_id: str) -> Profile:
        _, server = split_user_id(user_id)
        if server != self._server_name:
            # Remote profiles need the federation query API (issue 4).
            raise MatrixError(404, Codes.NOT_FOUND, "Profile lookups on other servers are not supported yet")
        profile = await self._store.get_profile(user_id)
        if profile is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Profile was not found")
        return profile

    def _check_can_edit(self, requester: Requester, user_id: str) -> None:
        split_user_id(user_id)
        if requester.user_id != user_id and not requester.is_admin:
            raise MatrixError(403, Codes.FORBIDDEN, "You cannot change another user's profile")

    async def set_displayname(self, requester: Requester, user_id: str, value: object) -> None:
        self._check_can_edit(requester, user_id)
        if value is not None and not isinstance(value, str):
            raise MatrixError(400, Codes.BAD_JSON, "'displayname' must be a string")
        if value is not None and len(value) > MAX_DISPLAYNAME_LENGTH:
            raise MatrixError(
                400, Codes.TOO_LARGE, f"Display name may not exceed {MAX_DISPLAYNAME_LENGTH} characters"
            )
        await self.get_profile(user_id)
        await self._store.set_displayname(user_id, value or None)

    async def set_avatar_url(self, requester: Requester, user_id: str, value: object) -> None:
        self._check_can_edit(requester, user_id)
        if value is not None and not isinstance(value, str):
            raise MatrixError(400, Codes.BAD_JSON, "'avatar_url' must be a string")
        if value is not None and len(value) > MAX_AVATAR_URL_LENGTH:
            raise MatrixError(
                400, Codes.TOO_LARGE, f"Avatar URL may not exceed {MAX_AVATAR_URL_LENGTH} characters"
            )
        await self.get_profile(user_id)
        await self._store.set_avatar_url(user_id, value or None)
