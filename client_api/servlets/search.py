"""Server-side search (POST /search)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object, query_string
from homeserver.rooms.search_request import parse_search_body

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class SearchServlet:
    PATTERNS = [client_path("/search")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        search_request = parse_search_body(parse_json_object(request))
        return 200, await self._hs.search.search(
            requester, search_request, query_string(request, "next_batch")
        )
