"""What every admin endpoint starts with: who is asking, and are they a server admin."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from client_api.auth import require_user
from client_api.http import HeddleRequest, parse_int_query, query_string
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.app import HomeServer


async def require_admin(hs: HomeServer, request: HeddleRequest) -> Requester:
    """The requester, if a server admin: 401 M_MISSING_TOKEN without a token (and the
    usual 401s for a bad one), 403 M_FORBIDDEN for anyone else. Always before looking up
    what the request names, so non-admins cannot probe which users exist."""
    requester = await require_user(hs, request)
    if not requester.is_admin:
        raise MatrixError(403, Codes.FORBIDDEN, "You are not a server admin")
    return requester


# Admin lists' page size: Synapse's default, and the most one page may ask for.
DEFAULT_PAGE = 100
MAX_PAGE = 1000


def parse_page(request: HeddleRequest) -> tuple[int, int]:
    """A list's `from` (an offset, at least 0, default 0) and `limit` (at least 1, default
    DEFAULT_PAGE, cut to MAX_PAGE); 400 M_INVALID_PARAM for anything else."""
    offset = parse_int_query(request, "from", 0, min_value=0)
    limit = parse_int_query(request, "limit", DEFAULT_PAGE, min_value=1, max_value=MAX_PAGE)
    return offset, limit


def parse_direction(request: HeddleRequest, default: str = "f") -> str:
    """A list's `dir` parameter: "f" or "b" (`default` when absent); 400 M_INVALID_PARAM
    otherwise."""
    direction = query_string(request, "dir") or default
    if direction not in ("f", "b"):
        raise MatrixError(400, Codes.INVALID_PARAM, "'dir' must be 'f' or 'b'")
    return direction


def admin_path(path: str, versions: str = "v1") -> re.Pattern[str]:
    """A pattern for `/_synapse/admin/{versions}{path}`; `path` may use (?P<name>[^/]+)."""
    return re.compile(f"^/_synapse/admin/(?:{versions}){path}$")
