"""Checks on event content that local clients send, beyond what the auth rules enforce.

The auth rules decide whether an event is *allowed* (403). These checks catch content that
is *malformed* before it becomes an event, so the client gets 400 M_BAD_JSON naming the
field instead of a 403 that reads like a permissions problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import is_valid_user_id

POWER_LEVEL_SCALARS = (
    "ban", "events_default", "invite", "kick", "redact", "state_default", "users_default",
)


def _is_level(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_power_levels_content(content: Mapping[str, Any]) -> None:
    """Power levels must be integers (strictly: no numeric strings, floats or booleans).

    Room versions 10+ refuse anything else in the auth rules; we refuse it for local
    clients in every room version, as Synapse does, with 400 M_BAD_JSON.
    """
    for key in POWER_LEVEL_SCALARS:
        if key in content and not _is_level(content[key]):
            raise MatrixError(400, Codes.BAD_JSON, f"Power level '{key}' must be an integer")
    for key in ("events", "notifications"):
        if key not in content:
            continue
        value = content[key]
        if not isinstance(value, dict):
            raise MatrixError(400, Codes.BAD_JSON, f"'{key}' must be an object")
        for name, level in value.items():
            if not _is_level(level):
                raise MatrixError(
                    400, Codes.BAD_JSON, f"Power level '{key}.{name}' must be an integer"
                )
    if "users" in content:
        users = content["users"]
        if not isinstance(users, dict):
            raise MatrixError(400, Codes.BAD_JSON, "'users' must be an object")
        for user_id, level in users.items():
            if not is_valid_user_id(user_id):
                raise MatrixError(400, Codes.BAD_JSON, f"'users' key {user_id!r} is not a user ID")
            if not _is_level(level):
                raise MatrixError(
                    400, Codes.BAD_JSON, f"Power level of {user_id} must be an integer"
                )
