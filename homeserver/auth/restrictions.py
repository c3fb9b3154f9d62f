"""What an admin's restrictions on an account mean for its own requests.

Locked accounts never get this far (`TokenHandler.validate` refuses them). Suspended
accounts may read, leave rooms, redact their own events, manage devices, keys and key
backup, log out and deactivate, but not join, knock, invite, send, change state or their
profile (403 M_USER_SUSPENDED), following the spec's recommended list. Shadow-banned
accounts are told their events were sent, with an event ID, but nothing is stored or
delivered. The message rate limit can be overridden per user.
"""

from __future__ import annotations

import secrets

from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.ratelimit import RateLimiter


def check_not_suspended(requester: Requester) -> None:
    """403 M_USER_SUSPENDED if an admin suspended the requester's account."""
    if requester.suspended:
        raise MatrixError(
            403, Codes.USER_SUSPENDED, "You cannot perform this action while suspended."
        )


def fake_event_id() -> str:
    """What a shadow-banned sender is answered with: shaped like a room v4+ event ID (43
    URL-safe base64 characters), so the client cannot tell it from a real one."""
    return "$" + secrets.token_urlsafe(32)[:43]


def check_message_rate(limiter: RateLimiter, requester: Requester) -> None:
    """The per-user message rate limit, with the requester's override if an admin set one
    (0 per second: none at all). Server admins are never limited."""
    if requester.is_admin:
        return
    override = requester.ratelimit_override
    if override is None:
        limiter.check(requester.user_id)
    else:
        # A burst of 0 would refuse everything; an admin asking for a rate wants it usable.
        limiter.check(
            requester.user_id, override.messages_per_second, max(1, override.burst_count)
        )
