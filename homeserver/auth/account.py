"""Changing passwords and deactivating accounts."""

from __future__ import annotations

from homeserver.auth.devices import DeviceHandler
from homeserver.auth.passwords import PasswordHasher
from homeserver.auth.registration import check_password_policy
from homeserver.auth.tokens import Requester, TokenHandler
from homeserver.config import RegistrationConfig
from homeserver.errors import Codes, MatrixError
from homeserver.threepids.bindings import ThreepidBindings
from storage.stores.accounts import AccountStore
from storage.stores.pushers import PusherStore


class AccountHandler:
    def __init__(
        self,
        config: RegistrationConfig,
        accounts: AccountStore,
        hasher: PasswordHasher,
        devices: DeviceHandler,
        tokens: TokenHandler,
        pushers: PusherStore,
        threepids: ThreepidBindings,
    ) -> None:
        self._config = config
        self._accounts = accounts
        self._hasher = hasher
        self._devices = devices
        self._tokens = tokens
        self._pushers = pushers
        self._threepids = threepids

    async def change_password(
        self, user_id: str, new_password: object, logout_devices: bool, requester: Requester | None
    ) -> None:
        password = check_password_policy(new_password, self._config)
        await self._accounts.set_password_hash(user_id, await self._hasher.hash(password))
        if logout_devices:
            keep = requester.device_id if requester is not None else None
            await self._devices.delete_all_devices(user_id, except_device_id=keep)

    async def deactivate(self, user_id: str, erase: bool, keep_an_admin: bool = False) -> None:
        """With `keep_an_admin` (an admin deactivating someone), 400 if the user is the
        last active server admin, decided atomically before anything is changed."""
        if not await self._accounts.mark_deactivated(user_id, erase, keep_an_admin):
            raise MatrixError(400, Codes.INVALID_PARAM, "Cannot deactivate the last server admin")
        # Marked first: from here every token of the account is refused.
        self._tokens.forget_user(user_id)
        await self.remove_sessions(user_id)

    async def remove_sessions(self, user_id: str) -> None:
        """A deactivated account's devices (with their tokens), pushers and third-party
        IDs; done again when a deactivation interrupted by a restart is resumed."""
        await self._devices.delete_all_devices(user_id)
        # Deleting the devices deleted the pushers they set; this takes any other.
        await self._pushers.delete_all_for_user(user_id)
        # As Synapse does: a deactivated account's addresses may be used by a new one, and
        # cannot reset its password.
        await self._threepids.forget_user(user_id)
