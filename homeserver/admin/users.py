"""Admin actions on users: listing, creating and changing accounts, deactivation, password
resets, sessions and devices, login-as, and the restrictions (lock, suspension, shadow ban,
rate limit override) that `homeserver/auth/restrictions.py` enforces.

Every method takes the acting admin's `Requester` (the servlet has checked it is an admin),
refuses remote users (400 M_INVALID_PARAM) and unknown ones (404 M_NOT_FOUND), and records
each change in the audit log. A change to what `Requester` carries (admin, locked,
suspended, shadow-banned, rate limit override) drops the user's cached tokens so it applies
to their next request, in every process.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from homeserver.admin.audit import AdminAudit
from homeserver.auth.account import AccountHandler
from homeserver.auth.devices import DeviceHandler, check_device_id, check_display_name
from homeserver.auth.registration import RegistrationHandler
from homeserver.auth.tokens import Requester, TokenHandler
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import split_user_id
from homeserver.profile import ProfileHandler, check_avatar_url, check_displayname
from homeserver.push.pushers import serialize_pusher
from homeserver.rooms.deactivation import AccountDeactivation
from homeserver.threepids.bindings import ThreepidBindings
from storage.stores.accounts import Account, AccountStore, RatelimitOverride
from storage.stores.devices import Device
from storage.stores.profiles import Profile, ProfileStore
from storage.stores.pushers import PusherStore
from storage.stores.rooms import RoomStore
from storage.stores.user_admin import UserAdminStore, UserListing, UserQuery

logger = logging.getLogger(__name__)

ALL_MEMBERSHIPS = ("join", "invite", "knock", "leave", "ban")

# User types an admin may give an account, as Synapse's defaults (None: an ordinary user).
USER_TYPES = ("bot", "support")
# Login-as tokens: one hour unless the admin asks for less (or more, up to a day). They are
# a debugging tool, not a way to hand out long-lived credentials for someone else.
LOGIN_AS_DEFAULT_LIFETIME_MS = 60 * 60 * 1000
LOGIN_AS_MAX_LIFETIME_MS = 24 * 60 * 60 * 1000
# The device ID a login-as token is bound to: no device row exists for it, so the user does
# not see it in their device list.
LOGIN_AS_DEVICE_PREFIX = "ADMIN_LOGIN_AS_"


@dataclass(frozen=True)
class UserDetails:
    account: Account
    profile: Profile | None
    last_seen_ts: int | None
    threepids: list[dict[str, Any]]


@dataclass(frozen=True)
class UserChanges:
    """What `PUT /_synapse/admin/v2/users/{userId}` asks for; None leaves a field as it is."""

    password: str | None = None
    logout_devices: bool = True
    # "" removes the display name or avatar.
    displayname: str | None = None
    avatar_url: str | None = None
    admin: bool | None = None
    deactivated: bool | None = None
    locked: bool | None = None
    # Whether `user_type` was given at all (None then clears it).
    user_type_given: bool = False
    user_type: str | None = None
    # (medium, address) pairs that become the account's whole set of bound addresses.
    threepids: list[tuple[str, str]] | None = None


def _last_admin(what: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, f"Cannot {what} the last server admin")


class AdminUsersHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        accounts: AccountStore,
        user_admin: UserAdminStore,
        profiles: ProfileStore,
        rooms: RoomStore,
        pushers: PusherStore,
        registration: RegistrationHandler,
        account: AccountHandler,
        devices: DeviceHandler,
        tokens: TokenHandler,
        profile: ProfileHandler,
        deactivation: AccountDeactivation,
        audit: AdminAudit,
        threepids: ThreepidBindings,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._accounts = accounts
        self._user_admin = user_admin
        self._profiles = profiles
        self._rooms = rooms
        self._pushers = pushers
        self._registration = registration
        self._account = account
        self._devices = devices
        self._tokens = tokens
        self._profile = profile
        self._deactivation = deactivation
        self._audit = audit
        self._threepids = threepids

    # ----- looking users up -------------------------------------------------------------

    def check_local(self, user_id: str) -> None:
        """400 M_INVALID_PARAM unless `user_id` is a well-formed ID of this server."""
        _, server = split_user_id(user_id)
        if server != self._server_name:
            raise MatrixError(
                400, Codes.INVALID_PARAM, "User does not belong to the local server."
            )

    async def require_account(self, user_id: str) -> Account:
        """The local account, or 400 (remote user) / 404 M_NOT_FOUND (no such account)."""
        self.check_local(user_id)
        account = await self._accounts.get_account(user_id)
        if account is None:
            raise MatrixError(404, Codes.NOT_FOUND, "User not found")
        return account

    async def _require_active(self, user_id: str) -> Account:
        """As `require_account`, and 404 for a deactivated one (the spec's lock and suspend
        endpoints say "not found, or deactivated")."""
        account = await self.require_account(user_id)
        if account.deactivated:
            raise MatrixError(404, Codes.NOT_FOUND, "User not found")
        return account

    async def list_users(
        self, query: UserQuery, offset: int, limit: int
    ) -> tuple[list[UserListing], int]:
        return await self._user_admin.list_users(query, offset, limit)

    async def get_user(self, user_id: str) -> UserDetails:
        account = await self.require_account(user_id)
        return await self._details(account)

    async def _details(self, account: Account) -> UserDetails:
        devices = await self._devices.get_devices(account.user_id)
        seen = [d.last_seen_ts for d in devices if d.last_seen_ts is not None]
        return UserDetails(
            account,
            await self._profiles.get_profile(account.user_id),
            max(seen, default=None),
            await self._threepids.list_for_user(account.user_id),
        )

    # ----- creating and changing accounts -------------------------------------------------

    async def create_or_modify(
        self, admin: Requester, user_id: str, changes: UserChanges
    ) -> tuple[bool, UserDetails]:
        """(created, the account now). A new account gets the password (none: it cannot log
        in until one is set), display name (default: the localpart) and flags asked for."""
        self.check_local(user_id)
        if changes.user_type_given and changes.user_type not in (None, *USER_TYPES):
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"'user_type' must be null or one of {USER_TYPES}"
            )
        account = await self._accounts.get_account(user_id)
        if account is None:
            await self._create(admin, user_id, changes)
            created = True
        else:
            await self._modify(admin, account, changes)
            created = False
        account = await self.require_account(user_id)
        return created, await self._details(account)

    async def _create(self, admin: Requester, user_id: str, changes: UserChanges) -> None:
        if changes.deactivated:
            raise MatrixError(400, Codes.INVALID_PARAM, "A new account cannot be deactivated")
        self._check_values(changes)
        threepids = await self._checked_threepids(user_id, changes)
        localpart, _ = split_user_id(user_id)
        await self._registration.register(
            localpart,
            changes.password,
            admin=bool(changes.admin),
            displayname=changes.displayname or None,
        )
        if changes.avatar_url:
            await self._profile.set_avatar_url(admin, user_id, changes.avatar_url)
        if changes.user_type is not None:
            await self._accounts.set_user_type(user_id, changes.user_type)
        if changes.locked:
            await self._accounts.set_flag(user_id, "locked", True)
        if threepids is not None:
            await self._threepids.replace(user_id, threepids)
        await self._audit.record(
            admin.user_id,
            "create_user",
            user_id,
            {
                "admin": bool(changes.admin),
                "has_password": changes.password is not None,
                "locked": bool(changes.locked),
                "user_type": changes.user_type,
            },
        )

    async def _modify(self, admin: Requester, account: Account, changes: UserChanges) -> None:
        user_id = account.user_id
        # Every check first, so a refused request changes nothing.
        self._check_values(changes)
        threepids = await self._checked_threepids(user_id, changes)
        if changes.admin is False and account.is_admin:
            await self._check_may_remove_admin(admin, user_id, "demote")
        if changes.deactivated is True and not account.deactivated:
            await self._check_may_remove_admin(admin, user_id, "deactivate")
        if changes.locked is True and not account.locked and user_id == admin.user_id:
            raise MatrixError(400, Codes.INVALID_PARAM, "You cannot lock your own account")
        changed: dict[str, Any] = {}
        if changes.admin is False and account.is_admin:
            # First of the writes: the check above can be overtaken by a concurrent
            # demotion or deactivation, this one cannot.
            if not await self._accounts.demote_admin(user_id):
                raise _last_admin("demote")
            changed["admin"] = False
        elif changes.admin is True and not account.is_admin:
            await self._accounts.set_flag(user_id, "is_admin", True)
            changed["admin"] = True
        if changes.deactivated is False and account.deactivated:
            await self._accounts.reactivate(user_id)
            changed["deactivated"] = False
        if changes.password is not None:
            await self._account.change_password(
                user_id, changes.password, changes.logout_devices, None
            )
            changed["password"] = "changed"
            changed["logout_devices"] = changes.logout_devices
        if changes.displayname is not None:
            await self._profile.set_displayname(admin, user_id, changes.displayname)
            changed["displayname"] = changes.displayname
        if changes.avatar_url is not None:
            await self._profile.set_avatar_url(admin, user_id, changes.avatar_url)
            changed["avatar_url"] = changes.avatar_url
        if changes.locked is not None and changes.locked != account.locked:
            await self._accounts.set_flag(user_id, "locked", changes.locked)
            changed["locked"] = changes.locked
        if changes.user_type_given and changes.user_type != account.user_type:
            await self._accounts.set_user_type(user_id, changes.user_type)
            changed["user_type"] = changes.user_type
        if threepids is not None:
            await self._threepids.replace(user_id, threepids)
            changed["threepids"] = [address for _, address in threepids]
        self._tokens.forget_user(user_id)
        if changes.deactivated is True and not account.deactivated:
            await self._deactivate(user_id, erase=False)
            changed["deactivated"] = True
        if changed:
            await self._audit.record(admin.user_id, "modify_user", user_id, changed)

    async def _checked_threepids(
        self, user_id: str, changes: UserChanges
    ) -> list[tuple[str, str]] | None:
        if changes.threepids is None:
            return None
        return await self._threepids.check_replacement(user_id, changes.threepids)

    def _check_values(self, changes: UserChanges) -> None:
        """The values a PUT would write, checked before any is (400 otherwise)."""
        if changes.password is not None:
            self._registration.check_password(changes.password)
        check_displayname(changes.displayname)
        check_avatar_url(changes.avatar_url)

    async def set_admin(self, admin: Requester, user_id: str, is_admin: bool) -> None:
        """Make the user a server admin or not (an existing account only)."""
        account = await self.require_account(user_id)
        await self._modify(admin, account, UserChanges(admin=is_admin))

    async def _check_may_remove_admin(self, admin: Requester, user_id: str, what: str) -> None:
        """Refuse (400) to deactivate or demote the last active admin, or oneself: either
        could leave the server with nobody able to administer it."""
        target = await self._accounts.get_account(user_id)
        if target is not None and target.is_admin and not target.deactivated:
            if await self._accounts.count_active_admins() <= 1:
                raise _last_admin(what)
        if user_id == admin.user_id:
            raise MatrixError(400, Codes.INVALID_PARAM, f"You cannot {what} yourself")

    # ----- deactivation and passwords ------------------------------------------------------

    async def deactivate(self, admin: Requester, user_id: str, erase: bool) -> None:
        account = await self.require_account(user_id)
        await self._check_may_remove_admin(admin, user_id, "deactivate")
        if account.deactivated and not erase:
            return
        await self._deactivate(user_id, erase)
        await self._audit.record(admin.user_id, "deactivate_user", user_id, {"erase": erase})

    async def _deactivate(self, user_id: str, erase: bool) -> None:
        # The last-admin check again, atomically with the write (see `_modify`).
        await self._deactivation.deactivate(user_id, erase, keep_an_admin=True)

    async def reset_password(
        self, admin: Requester, user_id: str, new_password: str, logout_devices: bool
    ) -> None:
        await self.require_account(user_id)
        await self._account.change_password(user_id, new_password, logout_devices, None)
        await self._audit.record(
            admin.user_id, "reset_password", user_id, {"logout_devices": logout_devices}
        )

    # ----- sessions and devices ------------------------------------------------------------

    async def whois(self, requester: Requester, user_id: str) -> dict[str, list[Device]]:
        """device ID -> the device (its last-seen address, agent and time), for the user
        themselves or an admin (the spec allows either)."""
        if requester.user_id != user_id and not requester.is_admin:
            raise MatrixError(403, Codes.FORBIDDEN, "You are not a server admin")
        await self.require_account(user_id)
        return {d.device_id: [d] for d in await self._devices.get_devices(user_id)}

    async def devices(self, user_id: str) -> list[Device]:
        await self.require_account(user_id)
        return await self._devices.get_devices(user_id)

    async def device(self, user_id: str, device_id: str) -> Device:
        await self.require_account(user_id)
        return await self._devices.get_device(user_id, device_id)

    async def create_device(self, admin: Requester, user_id: str, device_id: object) -> None:
        await self._require_active(user_id)
        device_id = check_device_id(device_id)
        _, created = await self._devices.ensure_device(user_id, device_id, None)
        if created:
            await self._audit.record(
                admin.user_id, "create_device", user_id, {"device_id": device_id}
            )

    async def rename_device(
        self, admin: Requester, user_id: str, device_id: str, display_name: object
    ) -> None:
        await self.require_account(user_id)
        name = check_display_name(display_name)
        if name is None:
            return
        await self._devices.set_display_name(user_id, device_id, name)
        await self._audit.record(
            admin.user_id,
            "rename_device",
            user_id,
            {"device_id": device_id, "display_name": name},
        )

    async def delete_devices(self, admin: Requester, user_id: str, device_ids: list[str]) -> None:
        await self.require_account(user_id)
        await self._devices.delete_devices(user_id, device_ids)
        await self._audit.record(
            admin.user_id, "delete_devices", user_id, {"device_ids": device_ids}
        )

    async def login_as(self, admin: Requester, user_id: str, valid_until_ms: int | None) -> str:
        """An access token for `user_id`, expiring by `valid_until_ms` (default: an hour
        from now; at most a day). Refused for oneself, deactivated and locked accounts."""
        account = await self.require_account(user_id)
        if user_id == admin.user_id:
            raise MatrixError(400, Codes.INVALID_PARAM, "You cannot log in as yourself")
        if account.deactivated:
            raise MatrixError(
                403, Codes.USER_DEACTIVATED, "Cannot log in as a deactivated user"
            )
        if account.locked:
            # The token would be refused on every use (401 M_USER_LOCKED).
            raise MatrixError(400, Codes.INVALID_PARAM, "Cannot log in as a locked user")
        now = self._clock.time_msec()
        expires = now + LOGIN_AS_DEFAULT_LIFETIME_MS if valid_until_ms is None else valid_until_ms
        if expires <= now or expires > now + LOGIN_AS_MAX_LIFETIME_MS:
            raise MatrixError(
                400,
                Codes.INVALID_PARAM,
                "'valid_until_ms' must be in the future and at most a day from now",
            )
        device_id = LOGIN_AS_DEVICE_PREFIX + secrets.token_hex(5).upper()
        token = await self._tokens.issue_without_device(user_id, device_id, expires)
        await self._audit.record(
            admin.user_id,
            "login_as",
            user_id,
            {"device_id": device_id, "valid_until_ms": expires},
        )
        return token

    # ----- rooms and account data ----------------------------------------------------------

    async def joined_rooms(self, user_id: str) -> list[str]:
        await self.require_account(user_id)
        return [m.room_id for m in await self._rooms.get_rooms_for_user(user_id)]

    async def memberships(self, user_id: str) -> dict[str, str]:
        """room ID -> the user's current membership, whatever it is (rooms the user has
        forgotten left out)."""
        await self.require_account(user_id)
        found = await self._rooms.get_rooms_for_user(user_id, ALL_MEMBERSHIPS)
        return {m.room_id: m.membership for m in found}

    async def pushers(self, user_id: str) -> list[dict[str, Any]]:
        await self.require_account(user_id)
        return [serialize_pusher(p) for p in await self._pushers.get_pushers(user_id)]

    async def username_available(self, localpart: str) -> None:
        """400 M_INVALID_USERNAME or M_USER_IN_USE unless `localpart` could be registered
        (whether registration is open or not)."""
        await self._registration.check_available(localpart)

    async def account_data(
        self, user_id: str
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        await self.require_account(user_id)
        return await self._user_admin.all_account_data(user_id)

    # ----- restrictions ------------------------------------------------------------------

    async def is_locked(self, user_id: str) -> bool:
        return (await self._require_active(user_id)).locked

    async def is_suspended(self, user_id: str) -> bool:
        return (await self._require_active(user_id)).suspended

    async def set_locked(self, admin: Requester, user_id: str, locked: bool) -> None:
        await self._restrict(admin, user_id, "locked", locked)

    async def set_suspended(self, admin: Requester, user_id: str, suspended: bool) -> None:
        await self._restrict(admin, user_id, "suspended", suspended)

    async def _restrict(self, admin: Requester, user_id: str, flag: str, value: bool) -> None:
        """Lock or suspend (or undo it). As the spec has it: 404 for a deactivated account,
        403 M_FORBIDDEN for oneself or another admin."""
        account = await self._require_active(user_id)
        if user_id == admin.user_id:
            raise MatrixError(403, Codes.FORBIDDEN, "You cannot restrict your own account")
        if account.is_admin:
            raise MatrixError(403, Codes.FORBIDDEN, "You cannot restrict another server admin")
        if getattr(account, flag) == value:
            return
        await self._accounts.set_flag(user_id, flag, value)
        self._tokens.forget_user(user_id)
        action = {"locked": "lock", "suspended": "suspend"}[flag]
        await self._audit.record(
            admin.user_id, action if value else f"un{action}", user_id, {flag: value}
        )

    async def set_shadow_banned(self, admin: Requester, user_id: str, banned: bool) -> None:
        account = await self.require_account(user_id)
        if user_id == admin.user_id:
            raise MatrixError(400, Codes.INVALID_PARAM, "You cannot shadow-ban yourself")
        if account.shadow_banned == banned:
            return
        await self._accounts.set_flag(user_id, "shadow_banned", banned)
        self._tokens.forget_user(user_id)
        await self._audit.record(
            admin.user_id, "shadow_ban" if banned else "unshadow_ban", user_id, {}
        )

    async def ratelimit_override(self, user_id: str) -> RatelimitOverride | None:
        return (await self.require_account(user_id)).ratelimit_override

    async def set_ratelimit_override(
        self, admin: Requester, user_id: str, override: RatelimitOverride | None
    ) -> None:
        """Set (or, with None, remove) the user's message rate limit override."""
        account = await self.require_account(user_id)
        if override is None and account.ratelimit_override is None:
            return
        await self._accounts.set_ratelimit_override(user_id, override)
        self._tokens.forget_user(user_id)
        if override is None:
            await self._audit.record(admin.user_id, "delete_ratelimit_override", user_id, {})
        else:
            await self._audit.record(
                admin.user_id,
                "set_ratelimit_override",
                user_id,
                {
                    "messages_per_second": override.messages_per_second,
                    "burst_count": override.burst_count,
                },
            )
