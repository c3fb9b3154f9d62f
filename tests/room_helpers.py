"""Shared set-up for the room and membership tests: users registered over HTTP, matrix-nio
clients logged in as them, and raw HTTP helpers for the room endpoints."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from nio import AsyncClient

from tests.harness import HomeserverTestCase, Response, nio

API = "/_matrix/client/v3"
_txn_ids = itertools.count(1)


def q(value: str) -> str:
    """A path segment: room IDs, aliases, user IDs and state keys all need escaping."""
    return quote(value, safe="")


@dataclass
class User:
    user_id: str
    token: str
    device_id: str


class RoomTestCase(HomeserverTestCase):
    async def user(self, localpart: str) -> User:
        session = await self.register(localpart)
        return User(session["user_id"], session["access_token"], session["device_id"])

    def nio_client(self, user: User) -> AsyncClient:
        """A matrix-nio client using the user's access token (closed at the end of the test)."""
        client = AsyncClient(self.base_url, user.user_id, device_id=user.device_id)
        client.access_token = user.token
        client.user_id = user.user_id
        self.addCleanup(lambda: nio(client.close()))  # type: ignore[attr-defined]
        return client

    # ----- raw HTTP ------------------------------------------------------------------------

    async def create_room(self, user: User, **body: Any) -> str:
        r = await self.request("POST", f"{API}/createRoom", body, token=user.token)
        assert r.code == 200, r
        return r.json["room_id"]

    async def send(
        self,
        user: User,
        room_id: str,
        content: Any = None,
        event_type: str = "m.room.message",
        txn_id: str | None = None,
        **kwargs: Any,
    ) -> Response:
        if content is None:
            content = {"msgtype": "m.text", "body": "hello"}
        txn = txn_id or f"txn{next(_txn_ids)}"
        return await self.request(
            "PUT",
            f"{API}/rooms/{q(room_id)}/send/{q(event_type)}/{txn}",
            content,
            token=user.token,
            **kwargs,
        )

    async def put_state(
        self, user: User, room_id: str, event_type: str, content: Any, state_key: str = ""
    ) -> Response:
        return await self.request(
            "PUT",
            f"{API}/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}",
            content,
            token=user.token,
        )

    async def get_state(
        self, user: User, room_id: str, event_type: str | None = None, state_key: str = "",
        **params: str,
    ) -> Response:
        path = f"{API}/rooms/{q(room_id)}/state"
        if event_type is not None:
            path += f"/{q(event_type)}/{q(state_key)}"
        if params:
            path += "?" + urlencode(params)
        return await self.request("GET", path, token=user.token)

    async def membership_action(
        self, user: User, room_id: str, action: str, body: Any = None
    ) -> Response:
        return await self.request(
            "POST", f"{API}/rooms/{q(room_id)}/{action}", body if body is not None else {},
            token=user.token,
        )

    async def join(self, user: User, room_id_or_alias: str, body: Any = None) -> Response:
        return await self.request(
            "POST", f"{API}/join/{q(room_id_or_alias)}", body if body is not None else {},
            token=user.token,
        )

    async def members(self, user: User, room_id: str, **params: str) -> Response:
        path = f"{API}/rooms/{q(room_id)}/members"
        if params:
            path += "?" + urlencode(params)
        return await self.request("GET", path, token=user.token)

    # ----- reading the server's view -------------------------------------------------------

    async def room_events(self, room_id: str) -> list[Any]:
        """Every timeline event of the room, in stream order (Event objects)."""
        stored = await self.hs.event_store.get_room_events_between(
            room_id, 0, self.hs.event_stream.current, 1000
        )
        return [s.event for s in stored]

    async def current_state(self, room_id: str) -> dict[tuple[str, str], Any]:
        ids = await self.hs.state_store.get_current_state_ids(room_id)
        events = await self.hs.event_store.get_events(ids.values())
        return {key: events[event_id] for key, event_id in ids.items()}

    async def membership_of(self, room_id: str, user: User) -> str | None:
        row = await self.hs.room_store.get_membership(room_id, user.user_id)
        return row.membership if row else None
