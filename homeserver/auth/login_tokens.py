"""Login tokens: a logged-in client gets a single-use, short-lived token
(POST /login/get_token) that another client logs in with (the m.login.token flow)."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass

from homeserver.clock import Clock
from homeserver.config import LoginViaExistingSessionConfig
from homeserver.errors import Codes, MatrixError
from storage.stores.login_tokens import LoginTokenOutcome, LoginTokenStore

logger = logging.getLogger(__name__)

LOGIN_TOKEN_PREFIX = "hlt_"


@dataclass(frozen=True)
class IssuedLoginToken:
    login_token: str
    expires_in_ms: int


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LoginTokenHandler:
    def __init__(
        self, config: LoginViaExistingSessionConfig, clock: Clock, store: LoginTokenStore
    ) -> None:
        self._config = config
        self._clock = clock
        self._store = store

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    @property
    def require_ui_auth(self) -> bool:
        return self._config.require_ui_auth

    def check_enabled(self) -> None:
        if not self._config.enabled:
            # The spec's 400 for a user who "does not have an ability to generate tokens".
            raise MatrixError(
                400, Codes.FORBIDDEN, "Logging in with an existing session is disabled"
            )

    async def issue(self, user_id: str) -> IssuedLoginToken:
        """A new token; only its hash is stored."""
        self.check_enabled()
        token = LOGIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock.time_msec()
        await self._store.add_token(_hash(token), user_id, now, now + self._config.token_timeout_ms)
        return IssuedLoginToken(token, self._config.token_timeout_ms)

    async def consume(self, token: object) -> str:
        """The user a token logs in, spending it; 403 M_FORBIDDEN if it is unknown, spent or
        expired (as Synapse answers)."""
        if not isinstance(token, str) or not token:
            raise MatrixError(400, Codes.BAD_JSON, "'token' must be a non-empty string")
        result = await self._store.consume_token(_hash(token), self._clock.time_msec())
        if result.outcome is LoginTokenOutcome.CONSUMED:
            assert result.user_id is not None
            return result.user_id
        if result.outcome is LoginTokenOutcome.USED:
            logger.warning("login token of %s presented again", result.user_id)
            raise MatrixError(403, Codes.FORBIDDEN, "Login token has already been used")
        if result.outcome is LoginTokenOutcome.EXPIRED:
            raise MatrixError(403, Codes.FORBIDDEN, "Login token has expired")
        raise MatrixError(403, Codes.FORBIDDEN, "Invalid login token")
