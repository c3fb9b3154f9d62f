"""The admin API for rooms, at Synapse's paths and with its JSON. The work is
`homeserver.admin.rooms.AdminRoomsHandler`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import (
    HeddleRequest,
    parse_bool_query,
    parse_int_query,
    parse_json_bytes,
    parse_json_object,
    query_string,
)
from client_api.servlets.admin.access import (
    admin_path,
    parse_direction,
    parse_page,
    require_admin,
)
from client_api.servlets.history import parse_limit
from client_api.validation import RequestBody, parse_body
from homeserver.admin.rooms import ORDER_BY, DeleteParams, DeleteTask, RoomQuery
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_event_id
from homeserver.rooms.messages import DEFAULT_LIMIT, MAX_LIMIT

if TYPE_CHECKING:
    from homeserver.app import HomeServer

ROOM = r"/(?P<room_id>[^/]+)"


class RoomsServlet:
    PATTERNS = [admin_path("/rooms")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        offset, limit = parse_page(request)
        order_by = query_string(request, "order_by") or "name"
        if order_by not in ORDER_BY:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Unknown value for 'order_by': {order_by[:50]!r}"
            )
        query = RoomQuery(
            order_by=order_by,
            backwards=parse_direction(request) == "b",
            search_term=query_string(request, "search_term") or None,
            public_rooms=parse_bool_query(request, "public_rooms"),
            empty_rooms=parse_bool_query(request, "empty_rooms"),
        )
        rooms, total = await self._hs.admin_rooms.list_rooms(query, offset, limit)
        body: dict[str, Any] = {"rooms": rooms, "offset": offset, "total_rooms": total}
        if offset + len(rooms) < total:
            body["next_batch"] = offset + len(rooms)
        if offset > 0:
            body["prev_batch"] = max(0, offset - limit)
        return 200, body


class DeleteRoomBody(RequestBody):
    new_room_user_id: str | None = None
    room_name: str | None = None
    message: str | None = None
    block: bool = False
    purge: bool = True
    force_purge: bool = False


class RoomServlet:
    PATTERNS = [admin_path("/rooms" + ROOM)]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        return 200, await self._hs.admin_rooms.room_details(room_id)

    async def on_DELETE(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        """Version 1: the same delete as version 2's, answered when it is over."""
        admin = await require_admin(self._hs, request)
        return 200, await self._hs.admin_rooms.delete_now(admin, room_id, _parse_delete(request))


def _parse_delete(request: HeddleRequest) -> DeleteParams:
    # The body must be at least `{}` (Synapse's rule): a DELETE sent without one by
    # mistake must not purge a room with the defaults.
    assert request.content is not None
    raw = request.content.read()
    if not raw.strip():
        raise MatrixError(400, Codes.NOT_JSON, "The body must be a JSON object, at least {}")
    body = parse_body(parse_json_bytes(raw), DeleteRoomBody)
    return DeleteParams(
        new_room_user_id=body.new_room_user_id,
        room_name=body.room_name,
        message=body.message,
        block=body.block,
        purge=body.purge,
        force_purge=body.force_purge,
    )


class DeleteRoomServlet:
    """Version 2: the delete runs in the background; its ID is the answer."""

    PATTERNS = [admin_path("/rooms" + ROOM, versions="v2")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_DELETE(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        delete_id = await self._hs.admin_rooms.start_delete(
            admin, room_id, _parse_delete(request)
        )
        return 200, {"delete_id": delete_id}


def _task_json(task: DeleteTask, with_ids: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"status": task.status, "shutdown_room": task.shutdown_room()}
    if with_ids:
        body["delete_id"] = task.delete_id
        body["room_id"] = task.room_id
    if task.error is not None:
        body["error"] = task.error
    return body


class DeleteStatusByRoomServlet:
    PATTERNS = [admin_path("/rooms" + ROOM + "/delete_status", versions="v2")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        tasks = await self._hs.admin_rooms.delete_statuses(room_id)
        return 200, {"results": [_task_json(t) for t in tasks]}


class DeleteStatusServlet:
    PATTERNS = [admin_path("/rooms/delete_status/(?P<delete_id>[^/]+)", versions="v2")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, delete_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        return 200, _task_json(await self._hs.admin_rooms.delete_status(delete_id))


class RoomMembersServlet:
    PATTERNS = [admin_path("/rooms" + ROOM + "/members")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        members = await self._hs.admin_rooms.members(room_id)
        return 200, {"members": members, "total": len(members)}


class RoomStateServlet:
    PATTERNS = [admin_path("/rooms" + ROOM + "/state")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        event_type = query_string(request, "type") or None
        return 200, {"state": await self._hs.admin_rooms.state(room_id, event_type)}


class RoomMessagesServlet:
    """The client API's /messages for an admin who needn't be in the room: no history
    visibility applies. `dir` defaults to `f`, as Synapse's."""

    PATTERNS = [admin_path("/rooms" + ROOM + "/messages")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        direction = parse_direction(request)
        event_filter = await self._hs.filtering.resolve_room_event_filter(
            admin.user_id, query_string(request, "filter")
        )
        limit = parse_int_query(
            request,
            "limit",
            event_filter.limit_or(DEFAULT_LIMIT, MAX_LIMIT),
            min_value=0,
            max_value=MAX_LIMIT,
        )
        return 200, await self._hs.admin_rooms.messages(
            admin,
            room_id,
            direction,
            query_string(request, "from"),
            query_string(request, "to"),
            limit,
            event_filter,
        )


class BlockBody(RequestBody):
    block: bool


class BlockRoomServlet:
    PATTERNS = [admin_path("/rooms" + ROOM + "/block")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        blocker = await self._hs.admin_rooms.get_block(room_id)
        if blocker is None:
            return 200, {"block": False}
        return 200, {"block": True, "user_id": blocker}

    async def on_PUT(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), BlockBody)
        await self._hs.admin_rooms.set_block(admin, room_id, body.block)
        return 200, {"block": body.block}


class ForwardExtremitiesServlet:
    PATTERNS = [admin_path("/rooms" + ROOM + "/forward_extremities")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        results = await self._hs.admin_rooms.forward_extremities(room_id)
        return 200, {"count": len(results), "results": results}

    async def on_DELETE(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        return 200, {"deleted": await self._hs.admin_rooms.delete_forward_extremities(admin, room_id)}


class RoomContextServlet:
    """The client API's /context for an admin who needn't be in the room (as /messages)."""

    PATTERNS = [admin_path("/rooms" + ROOM + "/context/(?P<event_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str, event_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        check_event_id(event_id)
        limit = parse_limit(request)
        event_filter = await self._hs.filtering.resolve_room_event_filter(
            admin.user_id, query_string(request, "filter")
        )
        return 200, await self._hs.admin_rooms.context(
            admin, room_id, event_id, limit, event_filter
        )


class TimestampToEventServlet:
    PATTERNS = [admin_path("/rooms" + ROOM + "/timestamp_to_event")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        ts = parse_int_query(request, "ts", min_value=0)
        if ts is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing query parameter 'ts'")
        forwards = parse_direction(request) == "f"
        return 200, await self._hs.admin_rooms.timestamp_to_event(room_id, ts, forwards)


class MakeRoomAdminBody(RequestBody):
    user_id: str | None = None


class MakeRoomAdminServlet:
    PATTERNS = [admin_path("/rooms" + ROOM + "/make_room_admin")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), MakeRoomAdminBody)
        await self._hs.admin_rooms.make_room_admin(
            admin, room_id, body.user_id if body.user_id is not None else admin.user_id
        )
        return 200, {}


class PurgeHistoryBody(RequestBody):
    delete_local_events: bool = False
    purge_up_to_event_id: str | None = None
    purge_up_to_ts: int | None = None


class PurgeHistoryServlet:
    PATTERNS = [
        admin_path("/purge_history" + ROOM),
        admin_path("/purge_history" + ROOM + "/(?P<event_id>[^/]+)"),
    ]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(
        self, request: HeddleRequest, room_id: str, event_id: str | None = None
    ) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), PurgeHistoryBody)
        event_id = event_id or body.purge_up_to_event_id
        if event_id is not None:
            check_event_id(event_id)
        purge_id = await self._hs.admin_rooms.start_purge_history(
            admin, room_id, event_id, body.purge_up_to_ts, body.delete_local_events
        )
        return 200, {"purge_id": purge_id}


class PurgeHistoryStatusServlet:
    PATTERNS = [admin_path("/purge_history_status/(?P<purge_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, purge_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        purge = await self._hs.admin_rooms.purge_history_status(purge_id)
        body: dict[str, Any] = {"status": purge.status}
        if purge.error is not None:
            body["error"] = purge.error
        return 200, body
