"""Inbound transactions and membership endpoints: /send, make_*/send_* for join, leave and
knock, and invites."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, parse_json_object
from federation.acl import check_server_acl
from federation.transport.auth import authenticate_request, federation_json_body_and_origin
from federation.transport.routes import federation_path
from homeserver.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.app import HomeServer

_ROOM = "(?P<room_id>[^/]+)"
_EVENT = "(?P<event_id>[^/]+)"
_USER = "(?P<user_id>[^/]+)"


class SendTransactionServlet:
    PATTERNS = [federation_path("/send/(?P<txn_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(self, request: HeddleRequest, txn_id: str) -> tuple[int, Any]:
        origin, body = await federation_json_body_and_origin(self._hs, request)
        return 200, await self._hs.federation_transactions.on_transaction(origin, txn_id, body)


class MakeMembershipServlet:
    PATTERNS = [
        federation_path(f"/make_(?P<membership>join|leave|knock)/{_ROOM}/{_USER}"),
    ]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(
        self, request: HeddleRequest, membership: str, room_id: str, user_id: str
    ) -> tuple[int, Any]:
        origin = await authenticate_request(self._hs, request, None)
        await check_server_acl(self._hs, room_id, origin)
        versions = [
            v.decode("utf-8", "replace") for v in (request.args or {}).get(b"ver", [])
        ]
        if membership == "knock" and not versions:
            raise MatrixError(400, Codes.MISSING_PARAM, "'ver' is required")
        return 200, await self._hs.federation_membership.make_membership(
            origin, room_id, user_id, membership, versions
        )


class SendMembershipServlet:
    PATTERNS = [
        federation_path(
            f"/send_(?P<membership>join|leave|knock)/{_ROOM}/{_EVENT}", versions="v1|v2"
        ),
    ]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(
        self, request: HeddleRequest, membership: str, room_id: str, event_id: str
    ) -> tuple[int, Any]:
        origin, body = await federation_json_body_and_origin(self._hs, request)
        await check_server_acl(self._hs, room_id, origin)
        fed = self._hs.federation_membership
        event, _ = await fed.send_membership(origin, room_id, event_id, body, membership)
        v1 = request.path.startswith(b"/_matrix/federation/v1/")
        if membership == "join":
            response: Any = await fed.join_response(event)
        elif membership == "knock":
            response = await fed.knock_response(event)
        else:
            response = {}
        if v1 and membership != "knock":
            # The v1 APIs answered [200, body] (spec: deprecated, kept for old servers).
            return 200, [200, response]
        return 200, response


class InviteServlet:
    PATTERNS = [federation_path(f"/invite/{_ROOM}/{_EVENT}", versions="v1|v2")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(self, request: HeddleRequest, room_id: str, event_id: str) -> tuple[int, Any]:
        body = parse_json_object(request)
        origin = await authenticate_request(self._hs, request, body)
        v1 = request.path.startswith(b"/_matrix/federation/v1/")
        pdu: Any
        version: Any
        if v1:
            # v1 sent the bare event, with the stripped state in its unsigned section.
            unsigned = body.get("unsigned")
            state = unsigned.get("invite_room_state") if isinstance(unsigned, dict) else None
            pdu, version, state = body, "1", state
        else:
            pdu = body.get("event")
            version = body.get("room_version")
            state = body.get("invite_room_state")
        if not isinstance(pdu, dict):
            raise MatrixError(400, Codes.BAD_JSON, "'event' must be an object")
        await check_server_acl(self._hs, room_id, origin)
        response = await self._hs.federation_membership.receive_invite(
            origin, room_id, event_id, pdu, version, state
        )
        return 200, ([200, response] if v1 else response)
