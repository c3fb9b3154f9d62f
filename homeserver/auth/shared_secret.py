"""Shared-secret registration (Synapse's `/_synapse/admin/v1/register`), which admin tools
and test suites written for Synapse use to create the first admin account: a single-use
nonce, then a registration signed with an HMAC of the configured shared secret. Same wire
format as Synapse, so `register_new_matrix_user`-style tools work against Heddle."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from homeserver.auth.login import LoginHandler
from homeserver.auth.registration import RegistrationHandler
from homeserver.auth.tokens import IssuedTokens
from homeserver.clock import Clock
from homeserver.config import RegistrationConfig
from homeserver.errors import Codes, MatrixError
from homeserver.ratelimit import RateLimiter

NONCE_LIFETIME_MS = 60 * 1000
# Nonces held at once; beyond this the oldest are forgotten, so asking for nonces without
# using them cannot grow memory without bound.
MAX_NONCES = 1000


def registration_mac(
    shared_secret: str, nonce: str, username: str, password: str, admin: bool
) -> str:
    mac = hmac.new(shared_secret.encode("utf-8"), digestmod=hashlib.sha1)
    for part in (nonce, username, password):
        mac.update(part.encode("utf-8"))
        mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    return mac.hexdigest()


class SharedSecretRegistration:
    def __init__(
        self,
        clock: Clock,
        config: RegistrationConfig,
        registration: RegistrationHandler,
        login: LoginHandler,
        per_address: RateLimiter,
        max_nonces: int = MAX_NONCES,
    ) -> None:
        self._clock = clock
        self._config = config
        self._registration = registration
        self._login = login
        self._per_address = per_address
        self._max_nonces = max_nonces
        # nonce -> when it was issued, oldest first.
        self._nonces: dict[str, int] = {}

    def _secret(self) -> str:
        secret = self._config.shared_secret
        if not secret:
            raise MatrixError(400, Codes.UNKNOWN, "Shared secret registration is not enabled")
        return secret

    def _expire_nonces(self) -> None:
        cutoff = self._clock.time_msec() - NONCE_LIFETIME_MS
        for nonce in [n for n, ts in self._nonces.items() if ts < cutoff]:
            del self._nonces[nonce]

    def new_nonce(self) -> str:
        """A nonce for one registration within NONCE_LIFETIME_MS (400 M_UNKNOWN if shared
        secret registration is off)."""
        self._secret()
        self._expire_nonces()
        nonce = secrets.token_hex(32)
        self._nonces[nonce] = self._clock.time_msec()
        while len(self._nonces) > self._max_nonces:
            del self._nonces[next(iter(self._nonces))]
        return nonce

    def check_request(self, client_ip: str) -> None:
        """Before the body is read: 400 M_UNKNOWN if shared secret registration is off, 429
        if this address registers too often."""
        self._secret()
        self._per_address.check(client_ip)

    async def register(
        self,
        nonce: str,
        username: str,
        password: str,
        mac: str,
        admin: bool,
        displayname: str | None,
    ) -> tuple[str, IssuedTokens]:
        """The account and its first session; 400 M_UNKNOWN for a nonce that was never
        issued, was used already or expired (a nonce is used up even by a failed attempt),
        403 M_FORBIDDEN for a wrong HMAC."""
        secret = self._secret()
        self._expire_nonces()
        if self._nonces.pop(nonce, None) is None:
            raise MatrixError(400, Codes.UNKNOWN, "Unrecognised or expired nonce")
        expected = registration_mac(secret, nonce, username, password, admin)
        # As bytes: compare_digest refuses (TypeError, a 500) a str with non-ASCII characters.
        if not hmac.compare_digest(expected.encode("ascii"), mac.lower().encode("utf-8")):
            raise MatrixError(403, Codes.FORBIDDEN, "HMAC incorrect")
        user_id = await self._registration.register(
            username.lower(), password, admin=admin, displayname=displayname
        )
        tokens = await self._login.start_session(user_id, None, None, with_refresh=False)
        return user_id, tokens
