"""Matrix identifier grammar (appendices: server names, user IDs, room aliases, room and
event IDs)."""

from __future__ import annotations

import ipaddress
import re

from homeserver.errors import Codes, MatrixError

_DNS_NAME = re.compile(r"^[A-Za-z0-9\-.]{1,255}$")
_PORT = re.compile(r"^[0-9]{1,5}$")
# Localparts of new users: the historical grammar is wider, but new accounts get this one.
_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")
MAX_USER_ID_BYTES = 255


def is_valid_server_name(name: str) -> bool:
    host, port = name, None
    if name.startswith("["):
        end = name.find("]")
        if end == -1:
            return False
        host, rest = name[1:end], name[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        if rest:
            if not rest.startswith(":"):
                return False
            port = rest[1:]
    else:
        if ":" in name:
            host, port = name.rsplit(":", 1)
        if not host or not _DNS_NAME.fullmatch(host):
            return False
    if port is not None and (not _PORT.fullmatch(port) or not 0 < int(port) < 65536):
        return False
    return True


def user_id(localpart: str, server_name: str) -> str:
    return f"@{localpart}:{server_name}"


def split_user_id(mxid: str) -> tuple[str, str]:
    """Split `@local:server` into its parts, or raise 400 M_INVALID_PARAM."""
    if not isinstance(mxid, str) or not mxid.startswith("@") or ":" not in mxid:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid user ID: {mxid!r}")
    localpart, server = mxid[1:].split(":", 1)
    if not localpart or not is_valid_server_name(server):
        raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid user ID: {mxid!r}")
    return localpart, server


def check_new_localpart(localpart: str, server_name: str) -> None:
    """Validate a localpart a new account would get; 400 M_INVALID_USERNAME if it cannot."""
    if not localpart:
        raise MatrixError(400, Codes.INVALID_USERNAME, "User ID cannot be empty")
    if not _LOCALPART.fullmatch(localpart):
        raise MatrixError(
            400,
            Codes.INVALID_USERNAME,
            "User ID can only contain characters a-z, 0-9, or '=_-./+'",
        )
    if localpart[0] == "_":
        # Synapse reserves leading underscores for application services; we follow so
        # appservice namespaces written for Synapse keep working.
        raise MatrixError(400, Codes.INVALID_USERNAME, "User ID may not begin with '_'")
    if len(user_id(localpart, server_name).encode("utf-8")) > MAX_USER_ID_BYTES:
        raise MatrixError(
            400, Codes.INVALID_USERNAME, f"User ID may not be longer than {MAX_USER_ID_BYTES} bytes"
        )


MAX_ROOM_ALIAS_BYTES = 255


def split_room_alias(alias: str) -> tuple[str, str]:
    """Split `#local:server` into its parts, or raise 400 M_INVALID_PARAM.

    The localpart may hold any code point but `:` and NUL (appendices: "Room Aliases");
    the whole alias is at most 255 bytes.
    """
    if not isinstance(alias, str) or not alias.startswith("#") or ":" not in alias:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid room alias: {str(alias)[:100]!r}")
    localpart, server = alias[1:].split(":", 1)
    if (
        not localpart
        or "\x00" in localpart
        or not is_valid_server_name(server)
        or len(alias.encode("utf-8")) > MAX_ROOM_ALIAS_BYTES
    ):
        raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid room alias: {alias[:100]!r}")
    return localpart, server


# Room and event IDs, like every identifier, are at most 255 bytes (appendices: "Identifier
# Grammar"). Their shape depends on the room version: `!opaque:server` and `$opaque:server`
# in early versions, `$hash` from room v3 and `!hash` (no server part) from room v12, so the
# sigil and a non-empty rest are all that every version shares.
MAX_ROOM_ID_BYTES = 255
MAX_EVENT_ID_BYTES = 255


def _check_sigil_id(value: object, sigil: str, max_bytes: int, what: str) -> None:
    if (
        not isinstance(value, str)
        or not value.startswith(sigil)
        or len(value) < 2
        or len(value.encode("utf-8")) > max_bytes
    ):
        raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid {what}: {str(value)[:100]!r}")


def check_room_id(room_id: object) -> None:
    """400 M_INVALID_PARAM unless `room_id` is a room ID of some room version."""
    _check_sigil_id(room_id, "!", MAX_ROOM_ID_BYTES, "room ID")


def check_event_id(event_id: object) -> None:
    """400 M_INVALID_PARAM unless `event_id` is an event ID of some room version."""
    _check_sigil_id(event_id, "$", MAX_EVENT_ID_BYTES, "event ID")
