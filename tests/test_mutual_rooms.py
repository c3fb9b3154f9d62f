"""GET /_matrix/client/v1/mutual_rooms (spec v1.19): the rooms the requester and another
user are both joined to, in batches with a `from` token. Over real HTTP on both engines.
"""

from __future__ import annotations

from urllib.parse import quote

from homeserver.rooms import mutual_rooms
from tests.harness import SERVER_NAME, HomeserverTestCase, on_both_engines

API = "/_matrix/client/v3"
MUTUAL = "/_matrix/client/v1/mutual_rooms"
BOB = f"@bob:{SERVER_NAME}"


def q(value: str) -> str:
    return quote(value, safe="")


@on_both_engines
class MutualRooms(HomeserverTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]
        self.carol = (await self.register("carol"))["access_token"]

    async def room(self, creator: str, *joiners: str) -> str:
        r = await self.request(
            "POST", f"{API}/createRoom", {"preset": "public_chat"}, token=creator
        )
        self.assertEqual(r.code, 200, r)
        room_id = r.json["room_id"]
        for token in joiners:
            r = await self.request("POST", f"{API}/join/{q(room_id)}", {}, token=token)
            self.assertEqual(r.code, 200, r)
        return room_id

    async def mutual(self, user_id: str, token: str | None = None, since: str | None = None):
        path = f"{MUTUAL}?user_id={q(user_id)}"
        if since is not None:
            path += f"&from={q(since)}"
        return await self.request("GET", path, token=token or self.alice)

    async def test_only_rooms_both_are_joined_to(self):
        shared = sorted(
            [await self.room(self.alice, self.bob), await self.room(self.bob, self.alice)]
        )
        await self.room(self.alice)  # Alice alone.
        await self.room(self.bob, self.carol)  # Bob without Alice.
        left = await self.room(self.alice, self.bob)
        r = await self.request("POST", f"{API}/rooms/{q(left)}/leave", {}, token=self.bob)
        self.assertEqual(r.code, 200, r)
        r = await self.mutual(BOB)
        self.assertEqual((r.code, r.json), (200, {"joined": shared, "count": 2}))
        # Bob sees the same from his side.
        r = await self.mutual(f"@alice:{SERVER_NAME}", token=self.bob)
        self.assertEqual(r.json["joined"], shared)

    async def test_unknown_user_shares_nothing(self):
        await self.room(self.alice, self.bob)
        r = await self.mutual("@nobody:elsewhere.example")
        self.assertEqual((r.code, r.json), (200, {"joined": [], "count": 0}))

    async def test_batches_follow_the_from_token(self):
        self.patch(mutual_rooms, "MUTUAL_ROOMS_BATCH_SIZE", 2)
        rooms = sorted([await self.room(self.alice, self.bob) for _ in range(5)])
        seen: list[str] = []
        since = None
        for expected in (rooms[0:2], rooms[2:4], rooms[4:5]):
            r = await self.mutual(BOB, since=since)
            self.assertEqual(r.code, 200, r)
            self.assertEqual((r.json["joined"], r.json["count"]), (expected, 5))
            seen += r.json["joined"]
            since = r.json.get("next_batch")
        self.assertIsNone(since)
        self.assertEqual(seen, rooms)

    async def test_bad_requests(self):
        r = await self.request("GET", MUTUAL, token=self.alice)
        self.assertError(r, 400, "M_MISSING_PARAM")
        for user_id in (
            "bob",
            "@:example.org",
            "@bob",
            "@bo b:example.org",
            f"@alice:{SERVER_NAME}",
        ):
            r = await self.mutual(user_id)
            self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.mutual(BOB, since="***")
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request(
            "GET", f"{MUTUAL}?user_id={q(BOB)}&user_id={q(BOB)}", token=self.alice
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", f"{MUTUAL}?user_id={q(BOB)}")
        self.assertError(r, 401, "M_MISSING_TOKEN")
