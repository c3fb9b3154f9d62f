"""Access tokens (JWTs backed by a revocable row) and rotating refresh tokens."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.config import AuthConfig
from homeserver.errors import Codes, MatrixError
from homeserver.replication import Replication
from storage.stores.accounts import AccountStore, RatelimitOverride
from storage.stores.tokens import NewTokens, RefreshOutcome, TokenStore

logger = logging.getLogger(__name__)

JWT_ALGORITHM = "HS256"
REFRESH_TOKEN_PREFIX = "hrt_"
# Validated tokens kept in memory; revocation removes them (see `forget`), in every process
# through replication. The TTL bounds how long a revocation can go unseen if Redis is down.
TOKEN_CACHE_SIZE = 50_000
TOKEN_CACHE_TTL_S = 60.0
REVOKED_TOKENS_STREAM = "revoked_tokens"
REVOKED_USERS_STREAM = "revoked_users"


@dataclass(frozen=True)
class Requester:
    """Who made an authenticated request."""

    user_id: str
    device_id: str
    token_id: str
    is_admin: bool
    is_guest: bool = False
    # When the access token expires (ms); None for tokens issued without a refresh token.
    expires_ts: int | None = None
    # What admins set on the account (see `homeserver/admin/users.py`). Changing any of them
    # drops the user's cached requesters (`forget_user`), so they apply at once.
    locked: bool = False
    suspended: bool = False
    shadow_banned: bool = False
    ratelimit_override: RatelimitOverride | None = None


# (revoked token IDs, user whose every token was revoked or None)
RevocationListener = Callable[[list[str], "str | None"], None]


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    device_id: str
    expires_in_ms: int | None
    refresh_token: str | None


def _unknown_token(message: str, soft_logout: bool = False) -> MatrixError:
    return MatrixError(401, Codes.UNKNOWN_TOKEN, message, soft_logout=soft_logout)


def _user_locked() -> MatrixError:
    # soft_logout: the spec's; the client keeps its session and encryption state.
    return MatrixError(401, Codes.USER_LOCKED, "This account has been locked", soft_logout=True)


def _hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenHandler:
    def __init__(
        self,
        config: AuthConfig,
        server_name: str,
        clock: Clock,
        tokens: TokenStore,
        accounts: AccountStore,
        replication: Replication,
    ) -> None:
        self._config = config
        self._server_name = server_name
        self._clock = clock
        self._tokens = tokens
        self._accounts = accounts
        self._replication = replication
        # token_id -> who it authenticates.
        self._cache: LruCache[str, Requester] = LruCache(
            "access_tokens", TOKEN_CACHE_SIZE, ttl_s=TOKEN_CACHE_TTL_S, clock=clock
        )
        # access token -> its claims, once its signature checked out: a long-polling client
        # sends the same token again and again, and checking it cost more than the rest of
        # a quiet long-poll. Only the signature: revocation and expiry are checked as ever.
        self._verified: LruCache[str, dict[str, Any]] = LruCache(
            "access_token_signatures", TOKEN_CACHE_SIZE
        )
        replication.subscribe(REVOKED_TOKENS_STREAM, self._forget_local)
        replication.subscribe(REVOKED_USERS_STREAM, self._forget_user_local)
        replication.on_resync(self._cache.clear)
        # Told of every revocation seen by this process (its own and, through replication,
        # other processes'), so long-lived connections (WebSockets) can close at once.
        self._revocation_listeners: list[RevocationListener] = []

    def _mint_jwt(
        self, token_id: str, user_id: str, device_id: str, expires_ts: int | None
    ) -> str:
        claims: dict[str, object] = {
            "iss": self._server_name,
            "sub": user_id,
            "dev": device_id,
            "jti": token_id,
            "iat": self._clock.time_msec() // 1000,
        }
        if expires_ts is not None:
            # JWT `exp` is in seconds; the row keeps the exact millisecond deadline.
            claims["exp"] = -(-expires_ts // 1000)
        return jwt.encode(claims, self._config.jwt_secret, algorithm=JWT_ALGORITHM)

    def _new_refresh_token(self) -> tuple[str, str]:
        token_id = secrets.token_urlsafe(12)
        return token_id, f"{REFRESH_TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"

    async def issue(
        self, user_id: str, device_id: str, with_refresh: bool, replace_device_tokens: bool = False
    ) -> IssuedTokens:
        """Issue an access token (expiring, with a refresh token, if the client can refresh)."""
        now = self._clock.time_msec()
        access_expires = now + self._config.access_token_lifetime_ms if with_refresh else None
        token_id = secrets.token_urlsafe(18)
        access_token = self._mint_jwt(token_id, user_id, device_id, access_expires)
        refresh_id = refresh_token = None
        if with_refresh:
            refresh_id, refresh_token = self._new_refresh_token()
        revoked = await self._tokens.add_access_token(
            token_id,
            user_id,
            device_id,
            now,
            access_expires,
            refresh_token_id=refresh_id,
            refresh_token_hash=_hash_refresh_token(refresh_token) if refresh_token else None,
            refresh_expires_ts=now + self._config.refresh_token_lifetime_ms if with_refresh else None,
            replace_device_tokens=replace_device_tokens,
        )
        self.forget(revoked)
        return IssuedTokens(
            access_token,
            device_id,
            self._config.access_token_lifetime_ms if with_refresh else None,
            refresh_token,
        )

    async def refresh(self, refresh_token: str) -> IssuedTokens:
        if not refresh_token.startswith(REFRESH_TOKEN_PREFIX):
            raise _unknown_token("Unknown refresh token")
        token_hash = _hash_refresh_token(refresh_token)
        # The account first: a locked or deactivated account gets no new tokens, and its
        # refresh token is left as it was (a locked account's session resumes on unlock).
        user_id = await self._tokens.get_refresh_token_user(token_hash)
        if user_id is None:
            raise _unknown_token("Unknown refresh token")
        await self._check_account_may_refresh(user_id)
        now = self._clock.time_msec()
        access_expires = now + self._config.access_token_lifetime_ms
        new_refresh_id, new_refresh_token = self._new_refresh_token()
        # The JWT names the user and device, which the store only learns inside the
        # transaction; the access token ID is fixed first and the JWT minted afterwards.
        access_token_id = secrets.token_urlsafe(18)
        result = await self._tokens.rotate_refresh_token(
            token_hash,
            now,
            NewTokens(
                access_token_id=access_token_id,
                access_expires_ts=access_expires,
                refresh_token_id=new_refresh_id,
                refresh_token_hash=_hash_refresh_token(new_refresh_token),
                refresh_expires_ts=now + self._config.refresh_token_lifetime_ms,
            ),
        )
        self.forget(result.revoked_access_token_ids)
        if result.outcome is RefreshOutcome.UNKNOWN:
            raise _unknown_token("Unknown refresh token")
        if result.outcome is RefreshOutcome.EXPIRED:
            raise _unknown_token("Refresh token has expired", soft_logout=True)
        if result.outcome is RefreshOutcome.REUSED:
            logger.warning(
                "refresh token reused for %s/%s: session revoked", result.user_id, result.device_id
            )
            raise _unknown_token("Refresh token was already used; the session has been revoked")
        assert result.user_id is not None and result.device_id is not None
        access_token = self._mint_jwt(
            access_token_id, result.user_id, result.device_id, access_expires
        )
        return IssuedTokens(
            access_token, result.device_id, self._config.access_token_lifetime_ms, new_refresh_token
        )

    async def _check_account_may_refresh(self, user_id: str) -> None:
        """Suspended accounts may refresh (the spec lets them keep and open sessions);
        deactivated ones get the plain 401 of a dead session, locked ones the spec's
        401 M_USER_LOCKED with soft_logout, as every other request of theirs does."""
        account = await self._accounts.get_account(user_id)
        if account is None or account.deactivated:
            raise _unknown_token("Account has been deactivated")
        if account.locked:
            raise _user_locked()

    async def validate(self, access_token: str, allow_locked: bool = False) -> Requester:
        """Check signature, expiry and revocation; 401 M_UNKNOWN_TOKEN if any fails.

        A locked account's tokens stay valid (unlocking restores its sessions, as the spec
        asks) but are refused with 401 M_USER_LOCKED everywhere except where `allow_locked`
        (logging out)."""
        claims = self._verified.get(access_token)
        if claims is None:
            claims = self._verify_signature(access_token)
            self._verified.set(access_token, claims)
        token_id = claims["jti"]
        requester = self._cache.get(token_id)
        if requester is None:
            requester = await self._load(token_id, claims)
        # The row's millisecond deadline, not the JWT `exp` (whole seconds, rounded up), so a
        # cached token expires exactly when an uncached one does.
        if requester.expires_ts is not None and requester.expires_ts <= self._clock.time_msec():
            raise _unknown_token("Access token has expired", soft_logout=True)
        if requester.locked and not allow_locked:
            raise _user_locked()
        return requester

    def _verify_signature(self, access_token: str) -> dict[str, Any]:
        """The claims of a JWT this server signed; 401 M_UNKNOWN_TOKEN for anything else."""
        try:
            claims = jwt.decode(
                access_token,
                self._config.jwt_secret,
                algorithms=[JWT_ALGORITHM],
                # Expiry is checked against the reactor clock, to the millisecond.
                options={"require": ["jti", "sub", "dev"], "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            raise _unknown_token("Unrecognised access token") from None
        if not isinstance(claims["jti"], str):
            raise _unknown_token("Unrecognised access token")
        return claims

    async def _load(self, token_id: str, claims: dict) -> Requester:
        row = await self._tokens.get_access_token(token_id)
        if row is None or row.user_id != claims["sub"] or row.device_id != claims["dev"]:
            raise _unknown_token("Access token has been revoked")
        if row.expires_ts is not None and row.expires_ts <= self._clock.time_msec():
            raise _unknown_token("Access token has expired", soft_logout=True)
        account = await self._accounts.get_account(row.user_id)
        if account is None or account.deactivated:
            raise _unknown_token("Account has been deactivated")
        if not row.used:
            # The client now holds this token: those it replaced are dropped everywhere.
            self.forget(await self._tokens.mark_access_token_used(token_id, row.refresh_token_id))
        requester = Requester(
            user_id=row.user_id,
            device_id=row.device_id,
            token_id=token_id,
            is_admin=account.is_admin,
            is_guest=account.is_guest,
            expires_ts=row.expires_ts,
            locked=account.locked,
            suspended=account.suspended,
            shadow_banned=account.shadow_banned,
            ratelimit_override=account.ratelimit_override,
        )
        self._cache.set(token_id, requester)
        return requester

    async def issue_without_device(self, user_id: str, device_id: str, expires_ts: int) -> str:
        """An expiring access token with no refresh token, for a device ID that has no
        device row: admins' login-as tokens, which the user must not see in their device
        list. Such a token survives the user's logout of all devices (their devices are
        what that deletes), as in Synapse; it ends at `expires_ts`, on /logout with it, or
        when the account is deactivated."""
        token_id = secrets.token_urlsafe(18)
        await self._tokens.add_access_token(
            token_id, user_id, device_id, self._clock.time_msec(), expires_ts
        )
        return self._mint_jwt(token_id, user_id, device_id, expires_ts)

    def forget(self, token_ids: Iterable[str]) -> None:
        """Drop revoked tokens from every process's cache so they are refused at once."""
        token_ids = list(token_ids)
        if token_ids:
            self._forget_local(token_ids)
            self._replication.publish(REVOKED_TOKENS_STREAM, token_ids)

    def forget_user(self, user_id: str) -> None:
        """Drop all cached tokens of a user (account deactivated, or an admin changed what
        `Requester` carries), in every process."""
        self._forget_user_local(user_id)
        self._replication.publish(REVOKED_USERS_STREAM, user_id)

    def add_revocation_listener(self, listener: RevocationListener) -> None:
        """Call `listener(token_ids, user_id)` after tokens are revoked: the token IDs, or
        (an account deactivated) every token of `user_id`."""
        self._revocation_listeners.append(listener)

    def _forget_local(self, token_ids: list[str]) -> None:
        for token_id in token_ids:
            self._cache.pop(token_id, None)
        for listener in self._revocation_listeners:
            listener(token_ids, None)

    def _forget_user_local(self, user_id: str) -> None:
        self._cache.pop_where(lambda _token_id, requester: requester.user_id == user_id)
        for listener in self._revocation_listeners:
            listener([], user_id)

    async def revoke(self, requester: Requester) -> None:
        await self._tokens.delete_access_token(requester.token_id)
        self.forget([requester.token_id])
