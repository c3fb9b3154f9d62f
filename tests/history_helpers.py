"""Shared set-up for the history tests (/messages, /context, /event, visibility, filters):
users registered over HTTP, rooms built through the server's EventCreator."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from storage.stores.events import StoredEvent
from tests.harness import HomeserverTestCase, Response

ALICE = "@alice:test.heddle"
BOB = "@bob:test.heddle"
CAROL = "@carol:test.heddle"


class HistoryTestCase(HomeserverTestCase):
    tokens: dict[str, str]

    async def register_users(self, *localparts: str) -> None:
        self.tokens = {}
        for localpart in localparts:
            session = await self.register(localpart)
            self.tokens[session["user_id"]] = session["access_token"]

    async def make_room(
        self,
        history_visibility: str | None = None,
        join_rule: str = "public",
        version: str = "11",
        creator: str = ALICE,
    ) -> str:
        events = self.hs.event_creator
        rv = KNOWN_ROOM_VERSIONS[version]
        content: dict[str, Any] = {"room_version": version}
        if not rv.implicit_room_creator:
            content["creator"] = creator
        room_id, _ = await events.create_room(rv, creator, content, is_public=False)
        await events.send(room_id, creator, "m.room.member", {"membership": "join"}, state_key=creator)
        power: dict[str, Any] = {"users": {} if version == "12" else {creator: 100}}
        await events.send(room_id, creator, "m.room.power_levels", power, state_key="")
        await events.send(room_id, creator, "m.room.join_rules", {"join_rule": join_rule}, state_key="")
        if history_visibility is not None:
            await self.set_visibility(room_id, history_visibility, creator)
        return room_id

    async def set_visibility(self, room_id: str, visibility: str, sender: str = ALICE) -> StoredEvent:
        return await self.hs.event_creator.send(
            room_id, sender, "m.room.history_visibility",
            {"history_visibility": visibility}, state_key="",
        )

    async def membership(
        self, room_id: str, user_id: str, membership: str, sender: str | None = None
    ) -> StoredEvent:
        return await self.hs.event_creator.send(
            room_id, sender or user_id, "m.room.member", {"membership": membership},
            state_key=user_id,
        )

    async def say(self, room_id: str, sender: str, body: str, **content: Any) -> StoredEvent:
        return await self.hs.event_creator.send(
            room_id, sender, "m.room.message", {"msgtype": "m.text", "body": body, **content}
        )

    async def messages(
        self, room_id: str, user_id: str, **params: Any
    ) -> Response:
        query = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()}
        return await self.request(
            "GET",
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages?{urlencode(query)}",
            token=self.tokens[user_id],
        )

    async def context(self, room_id: str, event_id: str, user_id: str, **params: Any) -> Response:
        query = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()}
        return await self.request(
            "GET",
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/context/"
            f"{quote(event_id, safe='')}?{urlencode(query)}",
            token=self.tokens[user_id],
        )

    async def get_event(self, room_id: str, event_id: str, user_id: str) -> Response:
        return await self.request(
            "GET",
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/event/{quote(event_id, safe='')}",
            token=self.tokens[user_id],
        )

    async def all_visible(self, room_id: str, user_id: str) -> list[str]:
        """Every event ID the user can page back to, oldest first (asserting a 200)."""
        response = await self.messages(room_id, user_id, dir="b", limit=1000)
        assert response.code == 200, response
        return [e["event_id"] for e in reversed(response.json["chunk"])]


def ids(events: list[StoredEvent]) -> list[str]:
    return [e.event.event_id for e in events]


def chunk_ids(response: Response, key: str = "chunk") -> list[str]:
    return [e["event_id"] for e in response.json[key]]
