"""The key endpoints: our own keys, and the notary API (spec: "Retrieving server keys")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, parse_int_query, parse_json_object
from federation.transport.auth import require_federation_enabled
from federation.transport.routes import key_path
from homeserver.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.app import HomeServer

# Most servers one POST /_matrix/key/v2/query may ask about.
MAX_QUERY_SERVERS = 100


class ServerKeysServlet:
    """GET /_matrix/key/v2/server (and the deprecated /server/{keyId}, which ignores the ID)."""

    PATTERNS = [key_path("/server"), key_path("/server/(?P<key_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, key_id: str | None = None) -> tuple[int, Any]:
        require_federation_enabled(self._hs)
        return 200, self._hs.keyring.own_key_response()


class QueryServerKeysServlet:
    """GET /_matrix/key/v2/query/{serverName}: one server's keys, co-signed by us."""

    PATTERNS = [key_path("/query/(?P<server_name>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, server_name: str) -> tuple[int, Any]:
        require_federation_enabled(self._hs)
        minimum = parse_int_query(request, "minimum_valid_until_ts", min_value=0)
        result = await self._hs.keyring.query_server_keys(server_name, minimum)
        return 200, result


class BulkQueryServerKeysServlet:
    """POST /_matrix/key/v2/query: several servers' keys, co-signed by us."""

    PATTERNS = [key_path("/query")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        require_federation_enabled(self._hs)
        body = parse_json_object(request)
        server_keys = body.get("server_keys")
        if not isinstance(server_keys, dict):
            raise MatrixError(400, Codes.BAD_JSON, "'server_keys' must be an object")
        if len(server_keys) > MAX_QUERY_SERVERS:
            raise MatrixError(400, Codes.BAD_JSON, f"At most {MAX_QUERY_SERVERS} servers per query")
        query: dict[str, dict[str, dict[str, Any]]] = {}
        for server_name, criteria in server_keys.items():
            if not isinstance(criteria, dict) or not all(
                isinstance(c, dict) for c in criteria.values()
            ):
                raise MatrixError(
                    400, Codes.BAD_JSON, f"Query criteria for {server_name!r} must be objects"
                )
            for c in criteria.values():
                ts = c.get("minimum_valid_until_ts")
                if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool)):
                    raise MatrixError(400, Codes.BAD_JSON, "'minimum_valid_until_ts' must be an integer")
            query[server_name] = criteria
        return 200, await self._hs.keyring.query_keys(query)
