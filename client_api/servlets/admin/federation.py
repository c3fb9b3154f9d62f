"""The admin API for federation destinations and the server's version, at Synapse's paths
and with its JSON. The work is `homeserver.admin.federation.AdminFederationHandler`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, parse_json_object, query_string
from client_api.servlets.admin.access import (
    admin_path,
    parse_direction,
    parse_page,
    require_admin,
)
from homeserver import __version__
from homeserver.errors import Codes, MatrixError
from storage.stores.federation_queue import DESTINATION_ORDER, RetryState

if TYPE_CHECKING:
    from homeserver.app import HomeServer

DESTINATIONS = "/federation/destinations"


def destination_json(destination: str, state: RetryState) -> dict[str, Any]:
    return {
        "destination": destination,
        "retry_last_ts": state.retry_last_ts,
        "retry_interval": state.retry_interval_ms,
        "failure_ts": state.failure_ts,
        # Not recorded by Heddle; Synapse's answer allows null ("not tracked yet").
        "last_successful_stream_ordering": None,
    }


def _choice(request: HeddleRequest, name: str, allowed: Any, default: str) -> str:
    value = query_string(request, name)
    if value is None or value == "":
        return default
    if value not in allowed:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Unknown {name}: {value[:50]!r}")
    return value


class DestinationsServlet:
    PATTERNS = [admin_path(DESTINATIONS)]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        offset, limit = parse_page(request)
        order_by = _choice(request, "order_by", DESTINATION_ORDER, "destination")
        direction = parse_direction(request)
        rows, total = await self._hs.admin_federation.list_destinations(
            offset, limit, order_by, direction == "b"
        )
        body: dict[str, Any] = {
            "destinations": [destination_json(r.destination, r.retry) for r in rows],
            "total": total,
        }
        if offset + len(rows) < total:
            body["next_token"] = str(offset + len(rows))
        return 200, body


class DestinationServlet:
    PATTERNS = [admin_path(DESTINATIONS + r"/(?P<destination>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, destination: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        state = await self._hs.admin_federation.get_destination(destination)
        return 200, destination_json(destination, state)


class DestinationRoomsServlet:
    PATTERNS = [admin_path(DESTINATIONS + r"/(?P<destination>[^/]+)/rooms")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, destination: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        offset, limit = parse_page(request)
        direction = parse_direction(request)
        room_ids, total = await self._hs.admin_federation.destination_rooms(
            destination, offset, limit, direction == "b"
        )
        body: dict[str, Any] = {
            # Heddle does not record deliveries per room: no last PDU sent in each.
            "rooms": [{"room_id": room_id, "stream_ordering": None} for room_id in room_ids],
            "total": total,
        }
        if offset + len(room_ids) < total:
            body["next_token"] = str(offset + len(room_ids))
        return 200, body


class ResetConnectionServlet:
    PATTERNS = [admin_path(DESTINATIONS + r"/(?P<destination>[^/]+)/reset_connection")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, destination: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        parse_json_object(request)
        await self._hs.admin_federation.reset_connection(admin, destination)
        return 200, {}


class ServerVersionServlet:
    PATTERNS = [admin_path("/server_version")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        # No token needed, as Synapse's: federation's /version tells anyone anyway.
        return 200, {"server_version": __version__}
