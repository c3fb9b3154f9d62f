"""Turning a login identifier and password into a user ID, for /login and UIA alike."""

from __future__ import annotations

from typing import Any

from homeserver.auth.passwords import PasswordHasher
from homeserver.errors import Codes, MatrixError
from homeserver.ratelimit import RateLimiter
from homeserver.threepids.addresses import EMAIL
from homeserver.threepids.bindings import ThreepidBindings
from storage.stores.accounts import Account, AccountStore

INVALID_CREDENTIALS = "Invalid username or password"


def user_id_from_identifier(body: dict[str, Any], server_name: str) -> str:
    """The user a login or `m.login.password` stage names, as a full user ID.

    Accepts `identifier: {type: m.id.user, user: ...}` and the deprecated top-level `user`.
    """
    identifier = body.get("identifier")
    if identifier is None and "user" in body:
        identifier = {"type": "m.id.user", "user": body["user"]}
    if not isinstance(identifier, dict):
        raise MatrixError(400, Codes.BAD_JSON, "'identifier' must be an object")
    id_type = identifier.get("type")
    if id_type != "m.id.user":
        raise MatrixError(
            400, Codes.UNKNOWN, f"Login identifier type {id_type!r} is not supported"
        )
    user = identifier.get("user")
    if not isinstance(user, str) or not user:
        raise MatrixError(400, Codes.BAD_JSON, "'identifier.user' must be a non-empty string")
    if user.startswith("@"):
        localpart, _, server = user[1:].partition(":")
        if server != server_name:
            # Not one of ours: treated like any unknown account.
            raise MatrixError(403, Codes.FORBIDDEN, INVALID_CREDENTIALS)
        user = localpart
    # Local accounts only ever get lower-case localparts; match what people type.
    return f"@{user.lower()}:{server_name}"


class CredentialChecker:
    def __init__(
        self,
        server_name: str,
        accounts: AccountStore,
        hasher: PasswordHasher,
        threepids: ThreepidBindings,
        failures_per_account: RateLimiter,
    ) -> None:
        self._server_name = server_name
        self._accounts = accounts
        self._hasher = hasher
        self._threepids = threepids
        self._failures = failures_per_account

    async def user_id_for_identifier(self, body: dict[str, Any]) -> str:
        """The user a login or password stage names: `m.id.user`, or `m.id.thirdparty`
        with an e-mail address bound to an account (also as the deprecated top-level
        `medium` and `address`). An address bound to nobody is 403, like a wrong password,
        so logging in does not tell which addresses have accounts."""
        identifier = body.get("identifier")
        if identifier is None and "medium" in body and "address" in body:
            identifier = {
                "type": "m.id.thirdparty",
                "medium": body["medium"],
                "address": body["address"],
            }
        if not isinstance(identifier, dict) or identifier.get("type") != "m.id.thirdparty":
            return user_id_from_identifier(body, self._server_name)
        medium, address = identifier.get("medium"), identifier.get("address")
        if not isinstance(medium, str) or not isinstance(address, str):
            raise MatrixError(
                400, Codes.BAD_JSON, "'identifier' needs 'medium' and 'address' strings"
            )
        if medium != EMAIL:
            raise MatrixError(
                400, Codes.UNKNOWN, f"Logging in with a {medium!r} address is not supported"
            )
        user_id = await self._threepids.user_for_email(address)
        if user_id is None:
            self._failures.check_only(address)
            # The same bcrypt cost as a wrong password, so timing does not tell either.
            password = body.get("password")
            await self._hasher.check(
                password if isinstance(password, str) else "", self._hasher.dummy_hash
            )
            self._failures.record(address)
            raise MatrixError(403, Codes.FORBIDDEN, INVALID_CREDENTIALS)
        return user_id

    async def check_password(self, user_id: str, password: Any) -> None:
        """Succeed silently or raise 403 M_FORBIDDEN; never say whether the user exists."""
        if not isinstance(password, str):
            raise MatrixError(400, Codes.BAD_JSON, "'password' must be a string")
        self._failures.check_only(user_id)
        account = await self._accounts.get_account(user_id)
        stored_hash = account.password_hash if account is not None else None
        # Unknown users and users without a password still cost one bcrypt check, so the
        # response time does not tell whether the account exists.
        if not await self._hasher.check(password, stored_hash or self._hasher.dummy_hash) or (
            account is None or stored_hash is None
        ):
            self._failures.record(user_id)
            raise MatrixError(403, Codes.FORBIDDEN, INVALID_CREDENTIALS)
        check_may_log_in(account)

    async def check_token_user(self, user_id: str) -> None:
        """A user a login token names may still log in (not deactivated or locked since)."""
        account = await self._accounts.get_account(user_id)
        if account is None:
            raise MatrixError(403, Codes.FORBIDDEN, "Invalid login token")
        check_may_log_in(account)


def check_may_log_in(account: Account) -> None:
    """403 M_USER_DEACTIVATED or 401 M_USER_LOCKED for an account that may not log in."""
    if account.deactivated:
        raise MatrixError(403, Codes.USER_DEACTIVATED, "This account has been deactivated")
    if account.locked:
        # Only after the password matched, so a lock tells nobody else the account exists.
        raise MatrixError(
            401, Codes.USER_LOCKED, "This account has been locked", soft_logout=True
        )
