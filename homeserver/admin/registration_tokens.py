"""Registration tokens made by admins (Synapse's `/v1/registration_tokens`): checking what
an admin asks for, and recording each change. The tokens work in the
`m.login.registration_token` stage beside the config's (`homeserver/auth/uia.py`)."""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from homeserver.admin.audit import AdminAudit
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from storage.stores.registration_tokens import RegistrationToken, RegistrationTokenStore

TOKEN_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"
MAX_TOKEN_LENGTH = 64
DEFAULT_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,64}")
# Not set in a request: leave the field as it is.
_OMITTED = object()


def audit_target(token: str) -> str:
    """How the audit log and server log name a token: by a hash prefix, as the token itself
    lets anyone register (logs never hold secrets). An admin who knows the token can find
    its entries with the same hash."""
    return "registration_token:" + hashlib.sha256(token.encode()).hexdigest()[:16]


def _is_int(value: Any) -> bool:
    # JSON's true and false are Python ints; neither is a number of uses or a time.
    return isinstance(value, int) and not isinstance(value, bool)


def _uses_allowed(value: Any) -> int | None:
    if value is None or (_is_int(value) and value >= 0):
        return value  # type: ignore[no-any-return]
    raise MatrixError(
        400, Codes.INVALID_PARAM, "uses_allowed must be a non-negative integer or null"
    )


class AdminRegistrationTokensHandler:
    def __init__(self, clock: Clock, store: RegistrationTokenStore, audit: AdminAudit) -> None:
        self._clock = clock
        self._store = store
        self._audit = audit

    def _expiry_time(self, value: Any) -> int | None:
        if value is None:
            return None
        if not _is_int(value):
            raise MatrixError(400, Codes.INVALID_PARAM, "expiry_time must be an integer or null")
        if value < self._clock.time_msec():
            raise MatrixError(400, Codes.INVALID_PARAM, "expiry_time must not be in the past")
        return value  # type: ignore[no-any-return]

    async def list_tokens(self, valid: bool | None) -> list[RegistrationToken]:
        return await self._store.list_tokens(valid, self._clock.time_msec())

    async def get_token(self, token: str) -> RegistrationToken:
        found = await self._store.get_token(token)
        if found is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"No such registration token: {token}")
        return found

    async def create_token(self, admin: str, body: dict[str, Any]) -> RegistrationToken:
        uses_allowed = _uses_allowed(body.get("uses_allowed"))
        expiry_time = self._expiry_time(body.get("expiry_time"))
        token = body.get("token")
        if token is None:
            length = body.get("length", DEFAULT_TOKEN_LENGTH)
            if not _is_int(length) or not 0 < length <= MAX_TOKEN_LENGTH:
                raise MatrixError(
                    400,
                    Codes.INVALID_PARAM,
                    f"length must be an integer from 1 to {MAX_TOKEN_LENGTH}",
                )
            # A random token can collide with an existing one: try a few.
            for _ in range(10):
                token = "".join(secrets.choice(TOKEN_CHARACTERS) for _ in range(length))
                if await self._store.create_token(token, uses_allowed, expiry_time):
                    break
            else:
                # Only likely when most tokens of a very short length exist already.
                raise MatrixError(
                    400,
                    Codes.INVALID_PARAM,
                    "Could not generate an unused token of this length; ask for a longer one",
                )
        else:
            if not isinstance(token, str) or not _TOKEN.fullmatch(token):
                raise MatrixError(
                    400,
                    Codes.INVALID_PARAM,
                    f"token must be 1 to {MAX_TOKEN_LENGTH} characters of [A-Za-z0-9._~-]",
                )
            if not await self._store.create_token(token, uses_allowed, expiry_time):
                raise MatrixError(400, Codes.INVALID_PARAM, f"Token already exists: {token}")
        created = await self.get_token(token)
        await self._audit.record(
            admin,
            "create_registration_token",
            audit_target(token),
            {"uses_allowed": uses_allowed, "expiry_time": expiry_time},
        )
        return created

    async def update_token(self, admin: str, token: str, body: dict[str, Any]) -> RegistrationToken:
        changes: dict[str, int | None] = {}
        if (uses := body.get("uses_allowed", _OMITTED)) is not _OMITTED:
            changes["uses_allowed"] = _uses_allowed(uses)
        if (expiry := body.get("expiry_time", _OMITTED)) is not _OMITTED:
            changes["expiry_time"] = self._expiry_time(expiry)
        updated = await self._store.update_token(token, changes)
        if updated is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"No such registration token: {token}")
        if changes:
            await self._audit.record(
                admin, "update_registration_token", audit_target(token), dict(changes)
            )
        return updated

    async def delete_token(self, admin: str, token: str) -> None:
        if not await self._store.delete_token(token):
            raise MatrixError(404, Codes.NOT_FOUND, f"No such registration token: {token}")
        await self._audit.record(admin, "delete_registration_token", audit_target(token))
