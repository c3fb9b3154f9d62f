"""Shared-secret registration (`/_synapse/admin/v1/register`), which admin tools and test
suites written for Synapse use to create the first admin account. Same wire format as
Synapse so `register_new_matrix_user`-style tools work against Heddle."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, parse_json_object
from client_api.servlets.login import session_response
from client_api.validation import RequestBody, parse_body
from homeserver.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.app import HomeServer

NONCE_LIFETIME_MS = 60 * 1000


def registration_mac(
    shared_secret: str, nonce: str, username: str, password: str, admin: bool
) -> str:
    mac = hmac.new(shared_secret.encode("utf-8"), digestmod=hashlib.sha1)
    for part in (nonce, username, password):
        mac.update(part.encode("utf-8"))
        mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    return mac.hexdigest()


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
        self._nonces: dict[str, int] = {}

    def _secret(self) -> str:
        secret = self._hs.config.registration.shared_secret
        if not secret:
            raise MatrixError(400, Codes.UNKNOWN, "Shared secret registration is not enabled")
        return secret

    def _expire_nonces(self) -> None:
        cutoff = self._hs.clock.time_msec() - NONCE_LIFETIME_MS
        for nonce in [n for n, ts in self._nonces.items() if ts < cutoff]:
            del self._nonces[nonce]

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        self._secret()
        self._expire_nonces()
        nonce = secrets.token_hex(32)
        self._nonces[nonce] = self._hs.clock.time_msec()
        return 200, {"nonce": nonce}

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        secret = self._secret()
        self._hs.registration_limiter.check(self._hs.client_ip(request))
        body = parse_body(parse_json_object(request), SharedSecretBody)
        self._expire_nonces()
        if self._nonces.pop(body.nonce, None) is None:
            raise MatrixError(400, Codes.UNKNOWN, "Unrecognised or expired nonce")
        expected = registration_mac(secret, body.nonce, body.username, body.password, body.admin)
        # As bytes: compare_digest refuses (TypeError, a 500) a str with non-ASCII characters.
        if not hmac.compare_digest(expected.encode("ascii"), body.mac.lower().encode("utf-8")):
            raise MatrixError(403, Codes.FORBIDDEN, "HMAC incorrect")
        user_id = await self._hs.registration.register(
            body.username.lower(), body.password, admin=body.admin, displayname=body.displayname
        )
        tokens = await self._hs.login.start_session(user_id, None, None, with_refresh=False)
        return 200, session_response(self._hs, user_id, tokens)
