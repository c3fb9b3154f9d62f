"""User-interactive authentication: flows, sessions and the stages we support."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from homeserver.auth.credentials import CredentialChecker
from homeserver.clock import Clock
from homeserver.config import EmailConfig, RegistrationConfig
from homeserver.errors import Codes, InteractiveAuthIncomplete, MatrixError
from homeserver.threepids.validation import PASSWORD_RESET, REGISTRATION, ThreepidValidation
from storage.stores.registration_tokens import RegistrationTokenStore
from storage.stores.uia import UiaSession, UiaStore

DUMMY = "m.login.dummy"
PASSWORD = "m.login.password"
REGISTRATION_TOKEN = "m.login.registration_token"
EMAIL_IDENTITY = "m.login.email.identity"

# Which validation sessions the e-mail stage accepts, by the endpoint authenticating.
_EMAIL_STAGE_PURPOSES = {"/register": REGISTRATION, "/account/password": PASSWORD_RESET}

# How long a client has to finish a UIA session; also how long a completed one stays usable,
# so a client can retry the operation after a transient failure.
SESSION_LIFETIME_MS = 60 * 60 * 1000


class WrongUserError(MatrixError):
    """A password stage naming an account other than the requester's: a plain 403 rather
    than a stage to retry, as Synapse answers and Sytest/Complement's "DELETE
    /device/{deviceId} requires UI auth user to match device owner" expects."""

    def __init__(self) -> None:
        super().__init__(403, Codes.FORBIDDEN, "You may only authenticate as yourself")


class UserInteractiveAuth:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        store: UiaStore,
        credentials: CredentialChecker,
        registration: RegistrationConfig,
        email: EmailConfig,
        registration_tokens: RegistrationTokenStore,
        threepid_validation: ThreepidValidation,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._credentials = credentials
        self._registration = registration
        self._registration_tokens = registration_tokens
        self._email = email
        self._threepid_validation = threepid_validation

    def registration_flows(self) -> list[list[str]]:
        """The token (or dummy) flow, and the e-mail stage as `email.registration` says:
        beside it (optional) or in its place (required)."""
        token = self._registration.require_token
        plain = [REGISTRATION_TOKEN] if token else [DUMMY]
        with_email = [REGISTRATION_TOKEN, EMAIL_IDENTITY] if token else [EMAIL_IDENTITY]
        if self._email.registration == "required":
            return [with_email]
        if self._email.registration == "optional":
            return [plain, with_email]
        return [plain]

    async def authenticate(
        self,
        body: dict[str, Any],
        method: str,
        uri: str,
        flows: list[list[str]],
        user_id: str | None,
    ) -> tuple[dict[str, Any], str]:
        """Run one UIA round; return (completed stages' results, session ID) once a flow is
        complete. Otherwise raise `InteractiveAuthIncomplete` with the 401 body the spec
        describes. `user_id` is set for endpoints that re-authenticate a logged-in user.
        Endpoints use `operation`, which also retires the session.
        """
        auth = body.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise MatrixError(400, Codes.BAD_JSON, "'auth' must be an object")
        session = await self._session_for(auth, method, uri, user_id)
        if auth is None:
            raise InteractiveAuthIncomplete(self._challenge(session, flows))

        stage = auth.get("type")
        completed = dict(session.completed)
        if stage is not None:
            if not isinstance(stage, str) or not any(stage in flow for flow in flows):
                raise MatrixError(400, Codes.UNRECOGNIZED, f"Unrecognised auth type {stage!r}")
            if stage not in completed:
                try:
                    result = await self._check_stage(stage, auth, uri, user_id)
                except MatrixError as e:
                    if e.http_code == 429 or isinstance(e, WrongUserError):
                        raise
                    challenge = self._challenge(session, flows)
                    # The spec's failed-stage answer: the flows, the stages done so far
                    # (none, here, for a first attempt) and what went wrong.
                    challenge.update(
                        completed=list(completed), errcode=e.errcode, error=e.message
                    )
                    raise InteractiveAuthIncomplete(challenge) from None
                await self._store.mark_stage_completed(session.session_id, stage, result)
                completed[stage] = result

        if any(all(s in completed for s in flow) for flow in flows):
            return completed, session.session_id
        challenge = self._challenge(session, flows)
        challenge["completed"] = list(completed)
        raise InteractiveAuthIncomplete(challenge)

    @asynccontextmanager
    async def operation(
        self,
        body: dict[str, Any],
        method: str,
        uri: str,
        flows: list[list[str]],
        user_id: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Authenticate, run the block, then retire the session.

        A completed session authorises one operation: once the block succeeds the session is
        deleted, so it cannot be replayed (another /delete_devices with a different list, a
        registration token stretched over several accounts). If the block fails for a reason
        other than auth, the session stays, and the client may retry with just its ID, as the
        spec describes.
        """
        completed, session_id = await self.authenticate(body, method, uri, flows, user_id)
        # Claimed atomically before the operation runs, so two concurrent requests with the
        # same completed session cannot both go through.
        if not await self._store.claim_session(session_id):
            raise MatrixError(
                400, Codes.INVALID_PARAM, "This auth session is being used by another request"
            )
        try:
            yield completed
        except BaseException:
            await self._store.release_session(session_id)
            raise
        await self._store.delete_session(session_id)

    async def _session_for(
        self, auth: dict[str, Any] | None, method: str, uri: str, user_id: str | None
    ) -> UiaSession:
        now = self._clock.time_msec()
        session_id = auth.get("session") if auth else None
        if session_id is None:
            session_id = secrets.token_urlsafe(24)
            await self._store.create_session(session_id, now, method, uri, user_id)
            return UiaSession(session_id, now, method, uri, user_id, {})
        if not isinstance(session_id, str):
            raise MatrixError(400, Codes.BAD_JSON, "'auth.session' must be a string")
        session = await self._store.get_session(session_id)
        if session is None or session.created_ts + SESSION_LIFETIME_MS < now:
            raise MatrixError(400, Codes.INVALID_PARAM, "Unknown user-interactive auth session")
        if (session.method, session.uri, session.user_id) != (method, uri, user_id):
            raise MatrixError(
                403,
                Codes.FORBIDDEN,
                "This auth session was started for a different request or user",
            )
        return session

    def _challenge(self, session: UiaSession, flows: list[list[str]]) -> dict[str, Any]:
        return {
            "flows": [{"stages": flow} for flow in flows],
            "params": {},
            "session": session.session_id,
        }

    async def _check_stage(
        self, stage: str, auth: dict[str, Any], uri: str, user_id: str | None
    ) -> Any:
        if stage == DUMMY:
            return True
        if stage == PASSWORD:
            claimed = await self._credentials.user_id_for_identifier(auth)
            if user_id is None or claimed != user_id:
                raise WrongUserError()
            await self._credentials.check_password(user_id, auth.get("password"))
            return user_id
        if stage == REGISTRATION_TOKEN:
            return await self._check_registration_token(auth.get("token"))
        if stage == EMAIL_IDENTITY and uri in _EMAIL_STAGE_PURPOSES:
            return await self._check_email(auth, _EMAIL_STAGE_PURPOSES[uri])
        raise MatrixError(400, Codes.UNRECOGNIZED, f"Unrecognised auth type {stage!r}")

    async def _check_registration_token(self, token: Any) -> dict[str, Any]:
        """The stage's result: the token, and whether it is an admin-made one whose use is
        now counted as pending (to become completed, or be given back if the session
        expires). The config's tokens have no limits and are not counted."""
        if isinstance(token, str):
            if self._is_config_token(token):
                return {"token": token, "counted": False}
            if await self._registration_tokens.start_use(token, self._clock.time_msec()):
                return {"token": token, "counted": True}
        raise MatrixError(401, Codes.FORBIDDEN, "Invalid registration token")

    async def _check_email(self, auth: dict[str, Any], purpose: str) -> dict[str, Any]:
        """The stage's result: the address a validated session proved (the session is used
        up; the UIA session keeps the result for retries)."""
        self._threepid_validation.require_enabled()
        # `threepidCreds` is what clients before r0.5 sent; Synapse accepts both.
        creds = auth.get("threepid_creds", auth.get("threepidCreds"))
        if not isinstance(creds, dict):
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: threepid_creds")
        session_id, client_secret = creds.get("sid"), creds.get("client_secret")
        if not isinstance(session_id, str) or not isinstance(client_secret, str):
            raise MatrixError(
                400, Codes.BAD_JSON, "threepid_creds needs 'sid' and 'client_secret' strings"
            )
        validated = await self._threepid_validation.take_validated(
            session_id, client_secret, purpose
        )
        if validated is None:
            raise MatrixError(
                401, Codes.UNAUTHORIZED, "The e-mail address has not been validated"
            )
        return {
            "medium": validated.medium,
            "address": validated.address,
            "validated_at": validated.validated_at,
        }

    def _is_config_token(self, token: str) -> bool:
        return any(
            secrets.compare_digest(token.encode(), t.encode()) for t in self._registration.tokens
        )

    async def is_registration_token_valid(self, token: str) -> bool:
        return self._is_config_token(token) or await self._registration_tokens.is_valid(
            token, self._clock.time_msec()
        )

    async def registration_completed(self, completed: dict[str, Any]) -> None:
        """An account was made in a session with these completed stages: a counted
        registration token's pending use becomes a completed one."""
        token = _counted_token(completed)
        if token is not None:
            await self._registration_tokens.complete_use(token)

    async def expire_sessions(self) -> None:
        expired = await self._store.delete_sessions_older_than(
            self._clock.time_msec() - SESSION_LIFETIME_MS
        )
        # Sessions that took one of a registration token's uses and never registered give
        # it back.
        for completed in expired:
            token = _counted_token(completed)
            if token is not None:
                await self._registration_tokens.abandon_use(token)


def _counted_token(completed: dict[str, Any]) -> str | None:
    result = completed.get(REGISTRATION_TOKEN)
    if isinstance(result, dict) and result.get("counted") and isinstance(result.get("token"), str):
        return str(result["token"])
    return None
