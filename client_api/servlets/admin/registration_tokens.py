"""Synapse's admin API for registration tokens (`/_synapse/admin/v1/registration_tokens`),
with its JSON. The work is `homeserver.admin.registration_tokens`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, parse_bool_query, parse_json_object
from client_api.servlets.admin.access import admin_path, require_admin
from storage.stores.registration_tokens import RegistrationToken

if TYPE_CHECKING:
    from homeserver.app import HomeServer


def token_json(token: RegistrationToken) -> dict[str, Any]:
    return {
        "token": token.token,
        "uses_allowed": token.uses_allowed,
        "pending": token.pending,
        "completed": token.completed,
        "expiry_time": token.expiry_time,
    }


class RegistrationTokensServlet:
    PATTERNS = [admin_path("/registration_tokens")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        tokens = await self._hs.admin.registration_tokens.list_tokens(
            parse_bool_query(request, "valid")
        )
        return 200, {"registration_tokens": [token_json(t) for t in tokens]}


class NewRegistrationTokenServlet:
    # Only POST: GET, PUT and DELETE on `.../new` are about a token named "new".
    PATTERNS = [admin_path("/registration_tokens/new")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_json_object(request)
        token = await self._hs.admin.registration_tokens.create_token(admin.user_id, body)
        return 200, token_json(token)


class RegistrationTokenServlet:
    PATTERNS = [admin_path("/registration_tokens/(?P<token>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, token: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        return 200, token_json(await self._hs.admin.registration_tokens.get_token(token))

    async def on_PUT(self, request: HeddleRequest, token: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_json_object(request)
        updated = await self._hs.admin.registration_tokens.update_token(
            admin.user_id, token, body
        )
        return 200, token_json(updated)

    async def on_DELETE(self, request: HeddleRequest, token: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        await self._hs.admin.registration_tokens.delete_token(admin.user_id, token)
        return 200, {}
