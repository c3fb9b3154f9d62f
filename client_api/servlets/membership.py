"""Room membership: join, knock, invite, leave, forget, kick, ban, unban, /joined_rooms."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import (
    HeddleRequest,
    client_path,
    parse_json_object,
    query_string,
    require_query_string,
)
from client_api.validation import RequestBody, parse_body
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_room_id

if TYPE_CHECKING:
    from homeserver.app import HomeServer

ROOM = "/rooms/(?P<room_id>[^/]+)"


class ReasonBody(RequestBody):
    reason: str | None = None


class JoinBody(ReasonBody):
    third_party_signed: dict[str, Any] | None = None


class TargetBody(ReasonBody):
    user_id: str


async def _accept_third_party(
    hs: HomeServer, requester: Requester, room_id_or_alias: str, body: JoinBody
) -> None:
    """With `third_party_signed`, the third-party invite it proves becomes an invite first."""
    if body.third_party_signed is None:
        return
    room_id = room_id_or_alias
    if room_id_or_alias.startswith("#"):
        room_id, _ = await hs.directory.resolve_room_alias(room_id_or_alias)
    await hs.third_party_invites.accept_signed(requester, room_id, body.third_party_signed)


def via_servers(request: HeddleRequest) -> list[str]:
    """Servers to join or knock through: `via`, or the older `server_name` parameter."""
    args = request.args or {}
    values = args.get(b"via") or args.get(b"server_name") or []
    return [v.decode("utf-8", "replace") for v in values]


class JoinRoomByIdServlet:
    PATTERNS = [client_path(f"{ROOM}/join")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        check_room_id(room_id)
        body = parse_body(parse_json_object(request), JoinBody)
        await _accept_third_party(self._hs, requester, room_id, body)
        joined = await self._hs.membership.join(requester, room_id, body.reason)
        return 200, {"room_id": joined}


class JoinServlet:
    PATTERNS = [client_path("/join/(?P<room_id_or_alias>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id_or_alias: str) -> tuple[int, Any]:
        # Not in the spec's list for guests (only /rooms/{roomId}/join is), but Synapse allows
        # it, and clients join through it; the can_join check applies the same.
        requester = await require_user(self._hs, request, allow_guest=True)
        body = parse_body(parse_json_object(request), JoinBody)
        await _accept_third_party(self._hs, requester, room_id_or_alias, body)
        room_id = await self._hs.membership.join(
            requester, room_id_or_alias, body.reason, via=via_servers(request)
        )
        return 200, {"room_id": room_id}


class KnockServlet:
    PATTERNS = [client_path("/knock/(?P<room_id_or_alias>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id_or_alias: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), ReasonBody)
        room_id = await self._hs.membership.knock(
            requester, room_id_or_alias, body.reason, via=via_servers(request)
        )
        return 200, {"room_id": room_id}


class ThirdPartyInviteBody(RequestBody):
    id_server: str
    id_access_token: str
    medium: str
    address: str


class InviteServlet:
    PATTERNS = [client_path(f"{ROOM}/invite")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        check_room_id(room_id)
        raw = parse_json_object(request)
        if "user_id" not in raw and {"medium", "address"} <= raw.keys():
            # The third-party form of this endpoint (third_party_membership.yaml).
            self._hs.third_party_invites.require_enabled()
            third_party = parse_body(raw, ThirdPartyInviteBody)
            await self._hs.third_party_invites.invite(
                requester, room_id, third_party.id_server, third_party.id_access_token,
                third_party.medium, third_party.address,
            )
            return 200, {}
        body = parse_body(raw, TargetBody)
        await self._hs.membership.invite(requester, room_id, body.user_id, body.reason)
        return 200, {}


class LeaveServlet:
    PATTERNS = [client_path(f"{ROOM}/leave")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        check_room_id(room_id)
        body = parse_body(parse_json_object(request), ReasonBody)
        await self._hs.membership.leave(requester, room_id, body.reason)
        return 200, {}


class ForgetServlet:
    PATTERNS = [client_path(f"{ROOM}/forget")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        check_room_id(room_id)
        parse_json_object(request)
        await self._hs.membership.forget(requester, room_id)
        return 200, {}


class TargetMembershipServlet:
    """POST /rooms/{roomId}/kick, /ban and /unban: the same body (`user_id`, `reason`), the
    action named by the path."""

    PATTERNS = [client_path(f"{ROOM}/(?P<action>kick|ban|unban)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str, action: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        check_room_id(room_id)
        body = parse_body(parse_json_object(request), TargetBody)
        membership = self._hs.membership
        act = {"kick": membership.kick, "ban": membership.ban, "unban": membership.unban}[action]
        await act(requester, room_id, body.user_id, body.reason)
        return 200, {}


class JoinedRoomsServlet:
    PATTERNS = [client_path("/joined_rooms")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, {"joined_rooms": await self._hs.membership.joined_rooms(requester.user_id)}


class MutualRoomsServlet:
    PATTERNS = [client_path("/mutual_rooms", versions="v1")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        assert request.args is not None
        for name in (b"user_id", b"from"):
            if len(request.args.get(name, ())) > 1:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, f"Query parameter {name.decode()!r} given twice"
                )
        user_id = require_query_string(request, "user_id")
        from_token = query_string(request, "from")
        return 200, await self._hs.mutual_rooms.mutual_rooms(requester, user_id, from_token)
