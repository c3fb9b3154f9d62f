"""The user directory: POST /user_directory/search.

Spec: api/client-server/users.yaml; client-server API "User Directory". A user finds the
users they share a room with and those in rooms with a `public` join rule or
`world_readable` history, by user ID or display name, case-insensitively.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.harness import HomeserverTestCase, Response, on_both_engines

CLIENT = "/_matrix/client/v3"
SEARCH = f"{CLIENT}/user_directory/search"


def uid(name: str) -> str:
    return f"@{name}:test.heddle"


@on_both_engines
class UserDirectoryTests(HomeserverTestCase):
    async def setUp(self):
        await super().setUp()
        self.tokens: dict[str, str] = {}
        for name in ("alice", "bob", "carol", "dave", "eve"):
            self.tokens[name] = (await self.register(name))["access_token"]
        # alice + bob share an invite-only room; carol is in a public room; eve is in an
        # invite-only room with world-readable history; dave is alone in a private room.
        self.shared = await self.create_room("alice", preset="private_chat", invite=[uid("bob")])
        await self.join("bob", self.shared)
        self.public = await self.create_room("carol", preset="public_chat")
        self.readable = await self.create_room(
            "eve",
            preset="private_chat",
            initial_state=[
                {
                    "type": "m.room.history_visibility",
                    "content": {"history_visibility": "world_readable"},
                }
            ],
        )
        self.hidden = await self.create_room("dave", preset="private_chat")

    async def create_room(self, name: str, **body: Any) -> str:
        r = await self.request("POST", f"{CLIENT}/createRoom", body, token=self.tokens[name])
        self.assertEqual(r.code, 200, r)
        return r.json["room_id"]

    async def join(self, name: str, room_id: str) -> None:
        r = await self.request(
            "POST", f"{CLIENT}/join/{quote(room_id, safe='')}", {}, token=self.tokens[name]
        )
        self.assertEqual(r.code, 200, r)

    async def set_displayname(self, name: str, displayname: str) -> None:
        r = await self.request(
            "PUT",
            f"{CLIENT}/profile/{quote(uid(name), safe='')}/displayname",
            {"displayname": displayname},
            token=self.tokens[name],
        )
        self.assertEqual(r.code, 200, r)

    async def search(self, term: str, searcher: str = "alice", **extra: Any) -> Response:
        body = {"search_term": term, **extra}
        return await self.request("POST", SEARCH, body, token=self.tokens[searcher])

    async def found(self, term: str, searcher: str = "alice", **extra: Any) -> list[str]:
        r = await self.search(term, searcher, **extra)
        self.assertEqual(r.code, 200, r)
        return [result["user_id"] for result in r.json["results"]]

    async def test_who_is_visible(self):
        self.assertEqual(await self.found("bob"), [uid("bob")])  # shares a room
        self.assertEqual(await self.found("carol"), [uid("carol")])  # in a public room
        self.assertEqual(await self.found("eve"), [uid("eve")])  # in a world-readable room
        self.assertEqual(await self.found("dave"), [])  # shares nothing
        # Dave sees the public ones, not the private pair.
        self.assertEqual(await self.found("bob", "dave"), [])
        self.assertEqual(await self.found("carol", "dave"), [uid("carol")])

    async def test_result_shape_and_profile_fields(self):
        r = await self.request(
            "PUT",
            f"{CLIENT}/profile/{quote(uid('bob'), safe='')}/avatar_url",
            {"avatar_url": "mxc://test.heddle/bob"},
            token=self.tokens["bob"],
        )
        self.assertEqual(r.code, 200, r)
        await self.set_displayname("bob", "Bobby Tables")
        r = await self.search("bob")
        self.assertEqual(
            r.json,
            {
                "results": [
                    {
                        "user_id": uid("bob"),
                        "display_name": "Bobby Tables",
                        "avatar_url": "mxc://test.heddle/bob",
                    }
                ],
                "limited": False,
            },
        )
        # Users without a display name have no such key.
        r = await self.request(
            "PUT",
            f"{CLIENT}/profile/{quote(uid('carol'), safe='')}/displayname",
            {"displayname": None},
            token=self.tokens["carol"],
        )
        self.assertEqual(r.code, 200, r)
        r = await self.search("carol")
        self.assertEqual(r.json["results"], [{"user_id": uid("carol")}])

    async def test_display_name_matching_is_case_insensitive(self):
        await self.set_displayname("bob", "Bobby Tables")
        await self.set_displayname("carol", "Élodie Ünal")
        self.assertEqual(await self.found("TABLES"), [uid("bob")])
        self.assertEqual(await self.found("bobby tab"), [uid("bob")])
        self.assertEqual(await self.found("tables bobby"), [uid("bob")])
        self.assertEqual(await self.found("bobby carol"), [])
        # Beyond ASCII, on both engines.
        for term in ("élodie", "ÉLODIE", "ünal", "élodie ÜNAL", "Élo"):
            self.assertEqual(await self.found(term), [uid("carol")], term)
        await self.set_displayname("eve", "Дмитрий")
        self.assertEqual(await self.found("дмитрий"), [uid("eve")])
        self.assertEqual(await self.found("ДМИТ"), [uid("eve")])

    async def test_user_id_matching(self):
        self.assertEqual(await self.found("@CAROL:TEST.heddle"), [uid("carol")])
        self.assertEqual(await self.found("aro"), [uid("carol")])
        # LIKE wildcards are literal characters.
        self.assertEqual(await self.found("%"), [])
        self.assertEqual(await self.found("_"), [])
        self.assertEqual(await self.found("!"), [])

    async def test_ranking_and_limit(self):
        for name in ("xavier", "maxine", "axel"):
            self.tokens[name] = (await self.register(name))["access_token"]
            await self.join(name, self.public)
        await self.set_displayname("maxine", "Max")
        r = await self.request(
            "PUT",
            f"{CLIENT}/profile/{quote(uid('axel'), safe='')}/displayname",
            {"displayname": None},
            token=self.tokens["axel"],
        )
        self.assertEqual(r.code, 200, r)
        # Prefix matches first, then users with a display name, then by user ID.
        self.assertEqual(
            await self.found("x"), [uid("xavier"), uid("maxine"), uid("axel")]
        )
        r = await self.search("x", limit=2)
        self.assertEqual([x["user_id"] for x in r.json["results"]], [uid("xavier"), uid("maxine")])
        self.assertTrue(r.json["limited"])
        r = await self.search("x", limit=3)
        self.assertFalse(r.json["limited"])
        r = await self.search("x", limit=0)
        self.assertEqual(r.json, {"results": [], "limited": True})

        # Non-ASCII terms are matched, ranked and limited the same way.
        await self.set_displayname("axel", "Ëxel")
        await self.set_displayname("xavier", "Xavier Ëlan")
        self.assertEqual(await self.found("ë"), [uid("axel"), uid("xavier")])
        r = await self.search("Ë", limit=1)
        self.assertEqual(r.json, {"results": [{"user_id": uid("axel"), "display_name": "Ëxel"}], "limited": True})

    async def test_each_user_once(self):
        # Bob shares two rooms with alice and is in a public one.
        other = await self.create_room("alice", preset="private_chat", invite=[uid("bob")])
        await self.join("bob", other)
        await self.join("bob", self.public)
        self.assertEqual(await self.found("bob"), [uid("bob")])

    async def test_leaving_and_deactivation(self):
        r = await self.request(
            "POST", f"{CLIENT}/rooms/{quote(self.shared, safe='')}/leave", {}, token=self.tokens["bob"]
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.found("bob"), [])
        # A deactivated account never shows, even while its memberships remain.
        await self.hs.accounts.mark_deactivated(uid("carol"), erase=False)
        self.assertEqual(await self.found("carol"), [])

    async def test_searcher_finds_itself_only_through_public_rooms(self):
        # Alice is only in the private room she shares with Bob.
        self.assertEqual(await self.found("alice"), [])
        self.assertEqual(await self.found("dave", "dave"), [])
        # Carol is in a public room: there, she is anyone's to find, her own too.
        self.assertEqual(await self.found("carol", "carol"), [uid("carol")])
        r = await self.request(
            "PUT",
            f"{CLIENT}/rooms/{quote(self.shared, safe='')}/state/m.room.join_rules/",
            {"join_rule": "public"},
            token=self.tokens["alice"],
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.found("alice"), [uid("alice")])

    async def test_public_and_world_readable_rooms_follow_state_changes(self):
        r = await self.request(
            "PUT",
            f"{CLIENT}/rooms/{quote(self.public, safe='')}/state/m.room.join_rules/",
            {"join_rule": "invite"},
            token=self.tokens["carol"],
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.found("carol"), [])
        r = await self.request(
            "PUT",
            f"{CLIENT}/rooms/{quote(self.hidden, safe='')}/state/m.room.join_rules/",
            {"join_rule": "public"},
            token=self.tokens["dave"],
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.found("dave"), [uid("dave")])

    async def test_escaped_nul_in_room_state_does_not_break_search(self):
        # Legal JSON that PostgreSQL's JSON functions cannot read: the room does not count
        # as public (on both engines alike), and everyone else's search still works.
        r = await self.request(
            "PUT",
            f"{CLIENT}/rooms/{quote(self.hidden, safe='')}/state/m.room.join_rules/",
            {"join_rule": "public", "note": "a\u0000b"},
            token=self.tokens["dave"],
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.found("dave"), [])
        self.assertEqual(await self.found("carol"), [uid("carol")])

    async def test_bad_input(self):
        token = self.tokens["alice"]
        self.assertError(await self.request("POST", SEARCH, raw=b"{", token=token), 400, "M_NOT_JSON")
        for body in (
            {},
            ["bob"],
            {"search_term": 5},
            {"search_term": None},
            {"search_term": "bob", "limit": "5"},
            {"search_term": "bob", "limit": 2.5},
        ):
            self.assertError(await self.request("POST", SEARCH, body, token=token), 400, "M_BAD_JSON")
        self.assertError(await self.search("bob", limit=-1), 400, "M_INVALID_PARAM")
        self.assertError(await self.search("b" * 1000), 400, "M_INVALID_PARAM")
        self.assertError(
            await self.request("POST", SEARCH, {"search_term": "bob"}), 401, "M_MISSING_TOKEN"
        )
