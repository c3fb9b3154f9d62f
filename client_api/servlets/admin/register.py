"""Shared-secret registration (`/_synapse/admin/v1/register`): see
`homeserver.auth.shared_secret`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, parse_json_object
from client_api.servlets.login import session_response
from client_api.validation import RequestBody, parse_body

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class SharedSecretBody(RequestBody):
    nonce: str
    username: str
    password: str
    mac: str
    admin: bool = False
    displayname: str | None = None


class SharedSecretRegisterServlet:
    PATTERNS = [re.compile(r"^/_synapse/admin/v1/register$")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        return 200, {"nonce": self._hs.shared_secret_registration.new_nonce()}

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        registration = self._hs.shared_secret_registration
        registration.check_request(self._hs.client_ip(request))
        body = parse_body(parse_json_object(request), SharedSecretBody)
        user_id, tokens = await registration.register(
            body.nonce, body.username, body.password, body.mac, body.admin, body.displayname
        )
        return 200, session_response(self._hs, user_id, tokens)
