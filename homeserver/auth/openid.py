"""OpenID tokens (spec: client-server "OpenID", server-server "OpenID"): a user asks for a
short-lived token and hands it to another service (an integration manager, a widget), which
asks this server over federation who it belongs to. The token is good for nothing else.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from homeserver.auth.tokens import Requester
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from storage.stores.openid_tokens import OpenIdTokenStore

# How long a token is good for: an hour, as Synapse's.
OPENID_TOKEN_LIFETIME_MS = 3600 * 1000


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class OpenIdTokens:
    def __init__(self, server_name: str, clock: Clock, store: OpenIdTokenStore) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store

    async def request_token(self, requester: Requester, user_id: str) -> dict[str, Any]:
        """A new token for the requester; 403 for anyone else's user ID (the token says who
        the requester is, so it cannot be for someone else, admins included)."""
        if user_id != requester.user_id:
            raise MatrixError(
                403, Codes.FORBIDDEN, "Cannot request an OpenID token for another user"
            )
        token = secrets.token_urlsafe(32)
        now_ms = self._clock.time_msec()
        await self._store.add_token(
            _token_hash(token), user_id, now_ms + OPENID_TOKEN_LIFETIME_MS, now_ms
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": self._server_name,
            "expires_in": OPENID_TOKEN_LIFETIME_MS // 1000,
        }

    async def user_for_token(self, token: str) -> str:
        """Who made `token`; 401 M_UNKNOWN_TOKEN if it is unknown or expired."""
        user_id = await self._store.get_user_for_token(_token_hash(token), self._clock.time_msec())
        if user_id is None:
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Access token unknown or expired")
        return user_id
