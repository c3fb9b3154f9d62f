"""Server access control lists (`m.room.server_acl`; client-server API "Server Access Control
Lists (ACLs) for rooms", server-server API "Server Access Control Lists (ACLs)").

`server_allowed_by_acl` is the pure rule; `check_server_acl` applies a room's current ACL to
the server making a federation request (403 M_FORBIDDEN when it is denied).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from homeserver.errors import Codes, MatrixError
from homeserver.events.types import SERVER_ACL

if TYPE_CHECKING:
    from homeserver.app import HomeServer

def server_allowed_by_acl(server_name: str, acl_content: Mapping[str, Any]) -> bool:
    """Whether `server_name` may take part in a room whose `m.room.server_acl` content is
    `acl_content`, in the spec's order: IP literals (when `allow_ip_literals` is false), then
    `deny`, then `allow`; anything not allowed is denied (so a missing `allow` denies all).
    Globs match the host without its port, case-insensitively. Entries that are not strings,
    and `allow`/`deny` values that are not lists, are ignored."""
    host = _host_of(server_name)
    allow_ip_literals = acl_content.get("allow_ip_literals", True)
    if allow_ip_literals is False and _is_ip_literal(host):
        return False
    if any(_glob(pattern).fullmatch(host) for pattern in _patterns(acl_content.get("deny"))):
        return False
    return any(_glob(pattern).fullmatch(host) for pattern in _patterns(acl_content.get("allow")))


def _host_of(server_name: str) -> str:
    """The server name without its port: `[::1]:8448` -> `[::1]`, `a.org:80` -> `a.org`."""
    if server_name.startswith("["):
        end = server_name.find("]")
        return server_name[: end + 1] if end != -1 else server_name
    return server_name.split(":", 1)[0]


def _is_ip_literal(host: str) -> bool:
    if host.startswith("["):
        return True
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _patterns(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [pattern for pattern in value if isinstance(pattern, str)]


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    """The spec's glob (appendices, "Glob-style matching"): `*` is any run of characters,
    `?` exactly one; everything else is literal."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


async def get_room_acl(hs: HomeServer, room_id: str) -> Mapping[str, Any] | None:
    """The content of the room's current `m.room.server_acl` event, or None without one."""
    event_id = await hs.state_store.get_current_state_event_id(room_id, SERVER_ACL, "")
    if event_id is None:
        return None
    event = await hs.event_store.get_event(event_id)
    return event.content if event is not None else None


async def check_server_acl(hs: HomeServer, room_id: str, origin: str) -> None:
    """403 M_FORBIDDEN when the room's current server ACL denies `origin`."""
    acl = await get_room_acl(hs, room_id)
    if acl is not None and not server_allowed_by_acl(origin, acl):
        raise MatrixError(403, Codes.FORBIDDEN, f"Server {origin} is denied by the room's ACL")
