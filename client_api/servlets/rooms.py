"""Rooms: creating them, sending events and state, redacting, and reading state and members."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object, query_string
from client_api.validation import RequestBody, parse_body
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_room_id
from homeserver.rooms.creation import RoomSpec
from homeserver.rooms.membership import MEMBERSHIPS

if TYPE_CHECKING:
    from homeserver.app import HomeServer

ROOM = "/rooms/(?P<room_id>[^/]+)"


class InitialStateEvent(RequestBody):
    type: str
    state_key: str = ""
    content: dict[str, Any]


class Invite3pid(RequestBody):
    id_server: str
    # "Servers can treat this as optional" (spec: invite_3pid).
    id_access_token: str | None = None
    medium: str
    address: str


class CreateRoomBody(RequestBody):
    visibility: Literal["public", "private"] | None = None
    room_alias_name: str | None = None
    name: str | None = None
    topic: str | None = None
    invite: list[str] = Field(default_factory=list)
    invite_3pid: list[Invite3pid] = Field(default_factory=list)
    room_version: str | None = None
    creation_content: dict[str, Any] | None = None
    initial_state: list[InitialStateEvent] = Field(default_factory=list)
    preset: Literal["private_chat", "public_chat", "trusted_private_chat"] | None = None
    is_direct: bool | None = None
    power_level_content_override: dict[str, Any] | None = None


class CreateRoomServlet:
    PATTERNS = [client_path("/createRoom")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), CreateRoomBody)
        spec = RoomSpec(
            visibility=body.visibility,
            preset=body.preset,
            room_version=body.room_version,
            room_alias_name=body.room_alias_name,
            name=body.name,
            topic=body.topic,
            invite=body.invite,
            invite_3pid=[i.model_dump() for i in body.invite_3pid],
            creation_content=body.creation_content or {},
            initial_state=[(e.type, e.state_key, e.content) for e in body.initial_state],
            is_direct=bool(body.is_direct),
            power_level_content_override=body.power_level_content_override,
        )
        room_id = await self._hs.room_creation.create_room(requester, spec)
        return 200, {"room_id": room_id}


class UpgradeRoomBody(RequestBody):
    new_version: str
    additional_creators: list[str] | None = None


class UpgradeRoomServlet:
    PATTERNS = [client_path(f"{ROOM}/upgrade")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        check_room_id(room_id)
        body = parse_body(parse_json_object(request), UpgradeRoomBody)
        new_room_id = await self._hs.room_upgrades.upgrade_room(
            requester, room_id, body.new_version, body.additional_creators
        )
        return 200, {"replacement_room": new_room_id}


class SendEventServlet:
    PATTERNS = [client_path(f"{ROOM}/send/(?P<event_type>[^/]+)/(?P<txn_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(
        self, request: HeddleRequest, room_id: str, event_type: str, txn_id: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        check_room_id(room_id)
        content = parse_json_object(request)
        event_id = await self._hs.event_sender.send_message(
            requester, room_id, event_type, content, txn_id
        )
        return 200, {"event_id": event_id}


class StateEventServlet:
    # The state key may be empty, with or without the trailing slash.
    PATTERNS = [
        client_path(f"{ROOM}/state/(?P<event_type>[^/]+)(?:/(?P<state_key>[^/]*))?")
    ]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(
        self, request: HeddleRequest, room_id: str, event_type: str, state_key: str = ""
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        check_room_id(room_id)
        output = query_string(request, "format") or "content"
        if output not in ("content", "event"):
            raise MatrixError(400, Codes.INVALID_PARAM, "'format' must be 'content' or 'event'")
        stored = await self._hs.room_state.get_state_event(
            requester.user_id, room_id, event_type, state_key
        )
        [event] = await self._hs.event_serializer.serialize([stored])
        return 200, event if output == "event" else event["content"]

    async def on_PUT(
        self, request: HeddleRequest, room_id: str, event_type: str, state_key: str = ""
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        check_room_id(room_id)
        content = parse_json_object(request)
        event_id = await self._hs.event_sender.set_state(
            requester, room_id, event_type, state_key, content
        )
        return 200, {"event_id": event_id}


class RoomStateServlet:
    PATTERNS = [client_path(f"{ROOM}/state")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        check_room_id(room_id)
        state = await self._hs.room_state.get_state(requester.user_id, room_id)
        return 200, await self._hs.event_serializer.serialize(state)


class RedactBody(RequestBody):
    reason: str | None = None


class RedactServlet:
    PATTERNS = [client_path(f"{ROOM}/redact/(?P<event_id>[^/]+)/(?P<txn_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(
        self, request: HeddleRequest, room_id: str, event_id: str, txn_id: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        check_room_id(room_id)
        body = parse_body(parse_json_object(request), RedactBody)
        redaction_id = await self._hs.event_sender.redact(
            requester, room_id, event_id, body.reason, txn_id
        )
        return 200, {"event_id": redaction_id}


class MembersServlet:
    PATTERNS = [client_path(f"{ROOM}/members")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        check_room_id(room_id)
        membership = query_string(request, "membership")
        not_membership = query_string(request, "not_membership")
        for name, value in (("membership", membership), ("not_membership", not_membership)):
            if value is not None and value not in MEMBERSHIPS:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, f"'{name}' must be one of {', '.join(MEMBERSHIPS)}"
                )
        members = await self._hs.room_state.get_members(
            requester.user_id,
            room_id,
            at=query_string(request, "at"),
            membership=membership,
            not_membership=not_membership,
        )
        return 200, {"chunk": await self._hs.event_serializer.serialize(members)}


class JoinedMembersServlet:
    PATTERNS = [client_path(f"{ROOM}/joined_members")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        check_room_id(room_id)
        joined = await self._hs.room_state.get_joined_members(requester.user_id, room_id)
        return 200, {"joined": joined}
