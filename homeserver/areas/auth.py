"""Accounts, access tokens, devices, passwords, user-interactive auth, login and
registration."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.areas.core import Core
from homeserver.areas.stores import Stores
from homeserver.auth.account import AccountHandler
from homeserver.auth.credentials import CredentialChecker
from homeserver.auth.devices import DeviceHandler, DeviceListUpdates
from homeserver.auth.login import LoginHandler
from homeserver.auth.login_tokens import LoginTokenHandler
from homeserver.auth.openid import OpenIdTokens
from homeserver.auth.passwords import PasswordHasher
from homeserver.auth.registration import RegistrationHandler
from homeserver.auth.shared_secret import SharedSecretRegistration
from homeserver.auth.tokens import TokenHandler
from homeserver.auth.uia import UserInteractiveAuth
from homeserver.ratelimit import RateLimiter
from homeserver.threepids.bindings import ThreepidBindings
from homeserver.threepids.id_server_bindings import IdentityServerBindings
from homeserver.threepids.identity_client import IdentityServerClient
from homeserver.threepids.mailer import SmtpMailer
from homeserver.threepids.validation import ThreepidValidation


@dataclass(frozen=True)
class Auth:
    hasher: PasswordHasher
    tokens: TokenHandler
    devices: DeviceHandler
    credentials: CredentialChecker
    uia: UserInteractiveAuth
    login: LoginHandler
    login_tokens: LoginTokenHandler
    login_token_limiter: RateLimiter
    registration_limiter: RateLimiter
    registration: RegistrationHandler
    shared_secret_registration: SharedSecretRegistration
    account: AccountHandler
    openid: OpenIdTokens
    threepid_validation: ThreepidValidation
    threepids: ThreepidBindings
    id_server_bindings: IdentityServerBindings


def build_auth(core: Core, stores: Stores, device_lists: DeviceListUpdates) -> Auth:
    config = core.config
    limits = config.rate_limits
    hasher = PasswordHasher(config.auth.bcrypt_rounds)
    tokens = TokenHandler(
        config.auth,
        core.server_name,
        core.clock,
        stores.token_store,
        stores.accounts,
        core.replication,
    )
    devices = DeviceHandler(core.clock, stores.device_store, tokens, device_lists)
    threepid_validation = ThreepidValidation(
        core.server_name,
        core.clock,
        config.email,
        config.email_link_base_url,
        stores.threepid_store,
        SmtpMailer(config.email, core.server_name, core.reactor),
        core.limiter("threepid_validation_per_address", limits.threepid_validation_per_address),
        core.limiter("threepid_validation_per_email", limits.threepid_validation_per_email),
    )
    threepids = ThreepidBindings(core.clock, stores.threepid_store, threepid_validation)
    identity = config.identity_servers
    id_server_bindings = IdentityServerBindings(
        core.server_name,
        core.signing_key,
        IdentityServerClient(core.reactor, identity) if identity.threepid_binding else None,
        stores.threepid_store,
    )
    credentials = CredentialChecker(
        core.server_name,
        stores.accounts,
        hasher,
        threepids,
        core.limiter("login_failures_per_account", limits.login_failures_per_account),
    )
    uia = UserInteractiveAuth(
        core.server_name,
        core.clock,
        stores.uia_store,
        credentials,
        config.registration,
        config.email,
        stores.registration_token_store,
        threepid_validation,
    )
    login_tokens = LoginTokenHandler(
        config.auth.login_via_existing_session, core.clock, stores.login_token_store
    )
    login = LoginHandler(
        core.server_name,
        credentials,
        devices,
        tokens,
        login_tokens,
        core.limiter("login_per_address", limits.login_per_address),
        core.limiter("login_per_account", limits.login_per_account),
    )
    registration_limiter = core.limiter(
        "registration_per_address", limits.registration_per_address
    )
    registration = RegistrationHandler(
        core.server_name,
        core.clock,
        config.registration,
        stores.accounts,
        hasher,
        uia,
        login,
        tokens,
        threepids,
        registration_limiter,
        core.limiter(
            "registration_sessions_per_address", limits.registration_sessions_per_address
        ),
    )
    return Auth(
        hasher=hasher,
        tokens=tokens,
        devices=devices,
        credentials=credentials,
        uia=uia,
        login=login,
        login_tokens=login_tokens,
        login_token_limiter=core.limiter(
            "login_token_requests_per_user", limits.login_token_requests_per_user
        ),
        registration_limiter=registration_limiter,
        registration=registration,
        shared_secret_registration=SharedSecretRegistration(
            core.clock, config.registration, registration, login, registration_limiter
        ),
        account=AccountHandler(
            config.registration,
            stores.accounts,
            hasher,
            devices,
            tokens,
            stores.pusher_store,
            threepids,
        ),
        openid=OpenIdTokens(core.server_name, core.clock, stores.openid_token_store),
        threepid_validation=threepid_validation,
        threepids=threepids,
        id_server_bindings=id_server_bindings,
    )
