from __future__ import annotations

import secrets

from homeserver.auth.passwords import PasswordHasher
from homeserver.clock import Clock
from homeserver.config import RegistrationConfig
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_new_localpart, user_id
from storage.stores.accounts import AccountStore, UserInUseError

MAX_PASSWORD_LENGTH = 512


def check_password_policy(password: object, config: RegistrationConfig) -> str:
    if not isinstance(password, str):
        raise MatrixError(400, Codes.BAD_JSON, "'password' must be a string")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise MatrixError(400, Codes.INVALID_PARAM, "Password is too long")
    if len(password) < config.min_password_length:
        raise MatrixError(
            400,
            Codes.WEAK_PASSWORD,
            f"Password must be at least {config.min_password_length} characters",
        )
    return password


class RegistrationHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        config: RegistrationConfig,
        accounts: AccountStore,
        hasher: PasswordHasher,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._config = config
        self._accounts = accounts
        self._hasher = hasher

    async def check_available(self, localpart: str) -> str:
        """The user ID `localpart` would get, or 400 M_INVALID_USERNAME / M_USER_IN_USE."""
        check_new_localpart(localpart, self._server_name)
        mxid = user_id(localpart, self._server_name)
        if await self._accounts.is_user_id_taken(mxid):
            raise MatrixError(400, Codes.USER_IN_USE, "User ID already taken")
        return mxid

    async def register(
        self,
        localpart: str | None,
        password: str | None,
        admin: bool = False,
        displayname: str | None = None,
    ) -> str:
        """Create an account; a localpart is generated when none is given."""
        if password is not None:
            check_password_policy(password, self._config)
        if localpart is None:
            return await self._register_generated(password, admin)
        mxid = await self.check_available(localpart)
        password_hash = await self._hasher.hash(password) if password is not None else None
        try:
            await self._accounts.create_account(
                mxid, password_hash, self._clock.time_msec(), admin, displayname or localpart
            )
        except UserInUseError:
            raise MatrixError(400, Codes.USER_IN_USE, "User ID already taken") from None
        return mxid

    async def _register_generated(self, password: str | None, admin: bool) -> str:
        password_hash = await self._hasher.hash(password) if password is not None else None
        for _ in range(10):
            localpart = "".join(secrets.choice("0123456789") for _ in range(10))
            mxid = user_id(localpart, self._server_name)
            try:
                await self._accounts.create_account(
                    mxid, password_hash, self._clock.time_msec(), admin, localpart
                )
                return mxid
            except UserInUseError:
                continue
        raise MatrixError(500, Codes.UNKNOWN, "Could not generate a free user ID")
