"""The one error type handlers raise, and the spec's error codes."""

from __future__ import annotations

from typing import Any


class Codes:
    FORBIDDEN = "M_FORBIDDEN"
    # Spec: "Invite permission": the invitee blocks invites.
    INVITE_BLOCKED = "M_INVITE_BLOCKED"
    UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
    MISSING_TOKEN = "M_MISSING_TOKEN"
    USER_LOCKED = "M_USER_LOCKED"
    USER_DEACTIVATED = "M_USER_DEACTIVATED"
    USER_SUSPENDED = "M_USER_SUSPENDED"
    BAD_JSON = "M_BAD_JSON"
    NOT_JSON = "M_NOT_JSON"
    NOT_FOUND = "M_NOT_FOUND"
    LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
    UNRECOGNIZED = "M_UNRECOGNIZED"
    UNKNOWN = "M_UNKNOWN"
    UNAUTHORIZED = "M_UNAUTHORIZED"
    USER_IN_USE = "M_USER_IN_USE"
    INVALID_USERNAME = "M_INVALID_USERNAME"
    EXCLUSIVE = "M_EXCLUSIVE"
    MISSING_PARAM = "M_MISSING_PARAM"
    INVALID_PARAM = "M_INVALID_PARAM"
    TOO_LARGE = "M_TOO_LARGE"
    PROFILE_TOO_LARGE = "M_PROFILE_TOO_LARGE"
    KEY_TOO_LARGE = "M_KEY_TOO_LARGE"
    WEAK_PASSWORD = "M_WEAK_PASSWORD"
    GUEST_ACCESS_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"
    CANNOT_LEAVE_SERVER_NOTICE_ROOM = "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM"
    THREEPID_NOT_FOUND = "M_THREEPID_NOT_FOUND"
    THREEPID_IN_USE = "M_THREEPID_IN_USE"
    THREEPID_DENIED = "M_THREEPID_DENIED"
    THREEPID_AUTH_FAILED = "M_THREEPID_AUTH_FAILED"
    THREEPID_MEDIUM_NOT_SUPPORTED = "M_THREEPID_MEDIUM_NOT_SUPPORTED"
    SERVER_NOT_TRUSTED = "M_SERVER_NOT_TRUSTED"
    ROOM_IN_USE = "M_ROOM_IN_USE"
    BAD_ALIAS = "M_BAD_ALIAS"
    UNSUPPORTED_ROOM_VERSION = "M_UNSUPPORTED_ROOM_VERSION"
    INVALID_ROOM_STATE = "M_INVALID_ROOM_STATE"
    INCOMPATIBLE_ROOM_VERSION = "M_INCOMPATIBLE_ROOM_VERSION"
    RESOURCE_LIMIT_EXCEEDED = "M_RESOURCE_LIMIT_EXCEEDED"
    CANNOT_OVERWRITE_MEDIA = "M_CANNOT_OVERWRITE_MEDIA"
    NOT_YET_UPLOADED = "M_NOT_YET_UPLOADED"
    UNABLE_TO_AUTHORISE_JOIN = "M_UNABLE_TO_AUTHORISE_JOIN"
    WRONG_ROOM_KEYS_VERSION = "M_WRONG_ROOM_KEYS_VERSION"
    INVALID_SIGNATURE = "M_INVALID_SIGNATURE"
    DUPLICATE_ANNOTATION = "M_DUPLICATE_ANNOTATION"


class MatrixError(Exception):
    """An error the client should see, rendered as the spec's JSON error body.

    `extra` keys are merged into the body (e.g. `soft_logout`, `retry_after_ms`);
    `headers` are added to the response (e.g. `Retry-After`).
    """

    def __init__(
        self,
        http_code: int,
        errcode: str,
        message: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{http_code} {errcode}: {message}")
        self.http_code = http_code
        self.errcode = errcode
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.message}
        body.update(self.extra)
        return body


class LimitExceededError(MatrixError):
    def __init__(self, retry_after_ms: int) -> None:
        retry_after_s = max(1, -(-retry_after_ms // 1000))
        super().__init__(
            429,
            Codes.LIMIT_EXCEEDED,
            "Too many requests",
            headers={"Retry-After": str(retry_after_s)},
            retry_after_ms=retry_after_ms,
        )


class InteractiveAuthIncomplete(Exception):
    """Not an error for the logs: the 401 body that drives user-interactive auth."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("user-interactive auth incomplete")
        self.body = body
