"""Creating accounts: POST /register for clients, and the checks every way in shares."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any

from homeserver.auth.login import LoginHandler
from homeserver.auth.passwords import PasswordHasher
from homeserver.auth.tokens import IssuedTokens, TokenHandler
from homeserver.auth.uia import EMAIL_IDENTITY, UserInteractiveAuth
from homeserver.clock import Clock
from homeserver.config import RegistrationConfig
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_new_localpart, user_id
from homeserver.ratelimit import RateLimiter
from homeserver.threepids.bindings import ThreepidBindings
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


@dataclass(frozen=True)
class ClientRegistration:
    """What a client's POST /register asks for, besides its authentication (`auth`)."""

    username: str | None = None
    password: str | None = None
    device_id: str | None = None
    initial_device_display_name: str | None = None
    inhibit_login: bool = False
    refresh_token: bool = False
    # A guest's access token: this registration upgrades that guest to a full account.
    guest_access_token: str | None = None


class RegistrationHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        config: RegistrationConfig,
        accounts: AccountStore,
        hasher: PasswordHasher,
        uia: UserInteractiveAuth,
        login: LoginHandler,
        tokens: TokenHandler,
        threepids: ThreepidBindings,
        per_address: RateLimiter,
        sessions_per_address: RateLimiter,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._config = config
        self._accounts = accounts
        self._hasher = hasher
        self._uia = uia
        self._login = login
        self._tokens = tokens
        self._threepids = threepids
        self._per_address = per_address
        self._sessions_per_address = sessions_per_address

    # ----- POST /register --------------------------------------------------------------------

    def check_password(self, password: object) -> str:
        """The password, if the server's policy accepts it; 400 otherwise."""
        return check_password_policy(password, self._config)

    def check_kind(self, kind: str) -> None:
        """The `kind` of account asked for: `user`, or `guest` when `allow_guest_access` is on
        (otherwise 403 M_GUEST_ACCESS_FORBIDDEN); anything else 400 M_INVALID_PARAM. Checked
        before the body is read."""
        if kind == "guest" and not self._config.allow_guest_access:
            raise MatrixError(403, Codes.GUEST_ACCESS_FORBIDDEN, "Guest access is disabled")
        if kind not in ("user", "guest"):
            raise MatrixError(400, Codes.INVALID_PARAM, f"Unknown registration kind {kind!r}")

    async def register_guest(
        self, request: ClientRegistration, client_ip: str
    ) -> tuple[str, IssuedTokens]:
        """A guest account (a generated numeric localpart, no password) and its session.

        Needs only `allow_guest_access`, not open registration, as in Synapse; the per-address
        registration limit applies. `username`, `password` and `inhibit_login` mean nothing
        for a guest and are ignored."""
        self.check_kind("guest")
        self._per_address.check(client_ip)
        user_id = await self._register_generated(None, admin=False, is_guest=True)
        tokens = await self._login.start_session(
            user_id, request.device_id, request.initial_device_display_name, request.refresh_token
        )
        return user_id, tokens

    async def _guest_to_upgrade(self, request: ClientRegistration) -> str:
        """The guest `guest_access_token` authenticates, who must name themselves in
        `username` (the spec asks for the guest's own localpart)."""
        assert request.guest_access_token is not None
        guest = await self._tokens.validate(request.guest_access_token)
        if not guest.is_guest:
            raise MatrixError(400, Codes.INVALID_PARAM, "guest_access_token is not a guest's")
        if request.username is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Upgrading a guest needs its username")
        if user_id(request.username.lower(), self._server_name) != guest.user_id:
            raise MatrixError(
                400, Codes.INVALID_PARAM, "username must be the guest's own localpart"
            )
        return guest.user_id

    async def register_via_client(
        self, body: dict[str, Any], request: ClientRegistration, client_ip: str
    ) -> tuple[str, IssuedTokens | None]:
        """A user account for a client, and its first session unless `inhibit_login`.

        In order: 403 if registration is disabled; the username's validity and availability
        (so a client learns of a bad name before authenticating); user-interactive auth
        (`body` carries `auth`); then the password, required after auth so a client's
        first, empty request still gets the flows; the per-address rate limit; the account.
        """
        if not self._config.enabled:
            raise MatrixError(403, Codes.FORBIDDEN, "Registration has been disabled")
        if request.username is not None:
            # Capitals are folded rather than refused, as Synapse does: "Alice" registers
            # @alice, and never finds out that user IDs are lower-case.
            request = replace(request, username=request.username.lower())
        guest_id = None
        if request.guest_access_token is not None:
            guest_id = await self._guest_to_upgrade(request)
        elif request.username is not None:
            await self.check_available(request.username)
        remembered_hash = None
        if body.get("auth") is None:
            # This request only opens an auth session (a database row): count it against the
            # address, so an unauthenticated client cannot create rows without limit.
            self._sessions_per_address.check(client_ip)
            if request.password is not None:
                # The session remembers the password (hashed) for a later request of the
                # session that leaves it out.
                remembered_hash = await self._hasher.hash(
                    check_password_policy(request.password, self._config)
                )
        # What this request asks for; filled in with what earlier requests of its UIA
        # session asked for and this one leaves out (None and False: not given).
        params: dict[str, Any] = {
            "username": request.username,
            "password_hash": remembered_hash,
            "device_id": request.device_id,
            "initial_device_display_name": request.initial_device_display_name,
            "inhibit_login": request.inhibit_login or None,
            "refresh_token": request.refresh_token or None,
        }
        async with self._uia.operation(
            body, "POST", "/register", self._uia.registration_flows(), user_id=None,
            params=params,
        ) as completed:
            password_hash = params.get("password_hash") if request.password is None else None
            if request.password is None and password_hash is None:
                # Password login is the only way back in: without one the account would be
                # lost as soon as this session ends.
                raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: password")
            self._per_address.check(client_ip)
            if guest_id is not None:
                new_user_id = await self._upgrade_guest(
                    guest_id, request.password, password_hash
                )
            else:
                email = completed.get(EMAIL_IDENTITY)
                if email is not None and await self._threepids.user_for_email(email["address"]):
                    # Bound to someone else since it was validated: checked before the account
                    # is made, so a refusal leaves no account behind.
                    raise MatrixError(
                        400, Codes.THREEPID_IN_USE, "E-mail address is already in use"
                    )
                new_user_id = await self.register(
                    params.get("username"), request.password, password_hash=password_hash
                )
                if email is not None:
                    await self._threepids.bind(
                        new_user_id, email["medium"], email["address"], email["validated_at"]
                    )
            await self._uia.registration_completed(completed)
        if params.get("inhibit_login"):
            return new_user_id, None
        tokens = await self._login.start_session(
            new_user_id,
            params.get("device_id"),
            params.get("initial_device_display_name"),
            bool(params.get("refresh_token")),
        )
        return new_user_id, tokens

    async def _upgrade_guest(
        self, guest_id: str, password: str | None, password_hash: str | None = None
    ) -> str:
        """The guest becomes a full account with `password` (or a hash of a password that
        passed the policy). Its earlier sessions stay and, once their cached requesters are
        dropped, carry a full account's rights."""
        if password is not None:
            password_hash = await self._hasher.hash(check_password_policy(password, self._config))
        if password_hash is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: password")
        if not await self._accounts.upgrade_guest(guest_id, password_hash):
            raise MatrixError(400, Codes.INVALID_PARAM, "This account is no longer a guest")
        self._tokens.forget_user(guest_id)
        return guest_id

    # ----- shared by every way of registering ------------------------------------------------

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
        password_hash: str | None = None,
    ) -> str:
        """Create an account; a localpart is generated when none is given. `password_hash`
        (of a password that passed the policy) stands in for `password` when that is None."""
        if password is not None:
            check_password_policy(password, self._config)
            password_hash = await self._hasher.hash(password)
        if localpart is None:
            return await self._register_generated(password_hash, admin)
        mxid = await self.check_available(localpart)
        try:
            await self._accounts.create_account(
                mxid, password_hash, self._clock.time_msec(), admin, displayname or localpart
            )
        except UserInUseError:
            raise MatrixError(400, Codes.USER_IN_USE, "User ID already taken") from None
        return mxid

    async def _register_generated(
        self, password_hash: str | None, admin: bool, is_guest: bool = False
    ) -> str:
        for _ in range(10):
            localpart = "".join(secrets.choice("0123456789") for _ in range(10))
            mxid = user_id(localpart, self._server_name)
            try:
                await self._accounts.create_account(
                    mxid, password_hash, self._clock.time_msec(), admin, localpart, is_guest
                )
                return mxid
            except UserInUseError:
                continue
        raise MatrixError(500, Codes.UNKNOWN, "Could not generate a free user ID")
