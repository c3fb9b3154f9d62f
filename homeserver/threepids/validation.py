"""E-mail validation sessions: /requestToken sends a mail with a link; following the link
validates the session; registration, /account/3pid/add and password resets then use the
validated session once."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

from homeserver.clock import Clock
from homeserver.config import EmailConfig, EmailTemplate
from homeserver.errors import Codes, MatrixError
from homeserver.ratelimit import RateLimiter
from homeserver.threepids.addresses import (
    EMAIL,
    canonical_email,
    check_client_secret,
    check_next_link,
    domain_allowed,
)
from homeserver.threepids.mailer import MailError, SmtpMailer
from storage.stores.threepids import ThreepidStore, TokenCheck, ValidatedAddress

logger = logging.getLogger(__name__)

# What a session is for; a session validated for one cannot be used for another.
REGISTRATION = "registration"
ADD_THREEPID = "add_threepid"
PASSWORD_RESET = "password_reset"

# Where the link in each purpose's mail points: Synapse's paths, so links and proxy rules
# written for Synapse keep working. Every one of them validates any session.
SUBMIT_TOKEN_PATHS = {
    REGISTRATION: "_matrix/client/unstable/registration/email/submit_token",
    ADD_THREEPID: "_matrix/client/unstable/add_threepid/email/submit_token",
    PASSWORD_RESET: "_synapse/client/password_reset/email/submit_token",
}

_CHECK_MESSAGES = {
    TokenCheck.UNKNOWN_SESSION: "Unknown validation session",
    TokenCheck.ALREADY_USED: "This link has already been used",
    TokenCheck.WRONG_TOKEN: "This link is not valid: it may be from an older mail",
    TokenCheck.EXPIRED: "This link has expired: ask for a new mail",
}


@dataclass(frozen=True)
class EmailTokenRequest:
    client_secret: str
    email: str
    send_attempt: int
    next_link: str | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def email_not_supported() -> MatrixError:
    return MatrixError(
        400,
        Codes.THREEPID_MEDIUM_NOT_SUPPORTED,
        "This server does not validate e-mail addresses",
    )


class ThreepidValidation:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        config: EmailConfig,
        link_base_url: str,
        store: ThreepidStore,
        mailer: SmtpMailer,
        per_address: RateLimiter,
        per_email: RateLimiter,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._config = config
        self._link_base_url = link_base_url
        self._store = store
        self._mailer = mailer
        self._per_address = per_address
        self._per_email = per_email

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def require_enabled(self) -> None:
        if not self._config.enabled:
            raise email_not_supported()

    async def request_email_token(
        self, purpose: str, request: EmailTokenRequest, client_ip: str
    ) -> dict[str, str]:
        """Send a validation mail (unless this send_attempt was already sent); the session
        ID. In use / unknown addresses are refused as the spec says, or answered with a
        made-up session when `inhibit_3pid_errors` is on."""
        self.require_enabled()
        check_client_secret(request.client_secret)
        address = canonical_email(request.email)
        if request.next_link is not None:
            check_next_link(request.next_link)
        if not domain_allowed(address, self._config.allowed_domains):
            raise MatrixError(
                403, Codes.THREEPID_DENIED, "This server does not accept addresses in that domain"
            )
        self._per_address.check(client_ip)
        self._per_email.check(address)

        owner = await self._store.get_user_id(EMAIL, address)
        refusal: MatrixError | None = None
        if purpose == PASSWORD_RESET and owner is None:
            refusal = MatrixError(400, Codes.THREEPID_NOT_FOUND, "E-mail address not found")
        elif purpose != PASSWORD_RESET and owner is not None:
            refusal = MatrixError(400, Codes.THREEPID_IN_USE, "E-mail address is already in use")
        if refusal is not None:
            if self._config.inhibit_3pid_errors:
                return {"sid": secrets.token_urlsafe(16)}
            raise refusal

        now = self._clock.time_msec()
        pending = await self._store.get_pending_validation(
            EMAIL, address, request.client_secret, purpose, now
        )
        if pending is not None and request.send_attempt <= pending.send_attempt:
            # The spec: a retry with the same send_attempt succeeds without another mail.
            return {"sid": pending.session_id}
        session_id = pending.session_id if pending is not None else secrets.token_urlsafe(16)
        token = secrets.token_urlsafe(32)
        link = (
            self._link_base_url
            + SUBMIT_TOKEN_PATHS[purpose]
            + "?"
            + urlencode({"token": token, "client_secret": request.client_secret, "sid": session_id})
        )
        template = self._template(purpose)
        try:
            await self._mailer.send(
                address, self._fill(template.subject, link), self._fill(template.body, link)
            )
        except MailError:
            # Nothing is recorded: no session claims a mail that never left.
            raise MatrixError(
                500, Codes.UNKNOWN, "An error was encountered when sending the e-mail"
            ) from None
        await self._store.record_mail_sent(
            session_id,
            EMAIL,
            address,
            request.client_secret,
            purpose,
            request.send_attempt,
            request.next_link,
            hash_token(token),
            now + self._config.validation_token_lifetime_ms,
            now,
        )
        logger.info("sent a %s validation mail for session %s", purpose, session_id)
        return {"sid": session_id}

    async def submit_token(self, session_id: str, client_secret: str, token: str) -> str | None:
        """Validate the session with the token from its mail; its next_link. 400
        M_INVALID_PARAM, saying why, when the token does not validate it."""
        self.require_enabled()
        check_client_secret(client_secret)
        outcome, next_link = await self._store.check_token(
            session_id, client_secret, hash_token(token), self._clock.time_msec()
        )
        if outcome is not TokenCheck.VALID:
            raise MatrixError(400, Codes.INVALID_PARAM, _CHECK_MESSAGES[outcome])
        return next_link

    async def take_validated(
        self, session_id: str, client_secret: str, purpose: str
    ) -> ValidatedAddress | None:
        """The address a validated session of `purpose` proved, using the session up; None
        when there is no such session or its validation is too old."""
        check_client_secret(client_secret)
        since = self._clock.time_msec() - self._config.validated_session_lifetime_ms
        return await self._store.take_validated(session_id, client_secret, purpose, since)

    async def expire_sessions(self) -> None:
        lifetime = (
            self._config.validation_token_lifetime_ms + self._config.validated_session_lifetime_ms
        )
        await self._store.delete_sessions_created_before(self._clock.time_msec() - lifetime)

    def _template(self, purpose: str) -> EmailTemplate:
        if purpose == REGISTRATION:
            return self._config.registration_template
        if purpose == ADD_THREEPID:
            return self._config.add_threepid_template
        return self._config.password_reset_template

    def _fill(self, text: str, link: str) -> str:
        return text.format(link=link, server_name=self._server_name, app_name=self._config.app_name)
