"""Room aliases, canonical alias checks and the published room directory.

Spec: api/client-server/directory.yaml (aliases), list_public_rooms.yaml, room_state.yaml
(M_BAD_ALIAS); client-server API "Room aliases" and "Published room directory".
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from nio import (
    AsyncClient,
    LoginResponse,
    RoomDeleteAliasResponse,
    RoomGetVisibilityResponse,
    RoomPutAliasResponse,
    RoomResolveAliasError,
    RoomResolveAliasResponse,
)

from tests.harness import HomeserverTestCase, Response, nio, on_both_engines

PASSWORD = "correct horse battery"
ALICE = "@alice:test.heddle"
BOB = "@bob:test.heddle"
CLIENT = "/_matrix/client/v3"


def alias_path(alias: str) -> str:
    return f"{CLIENT}/directory/room/{quote(alias, safe='')}"


def room_path(room_id: str, rest: str) -> str:
    return f"{CLIENT}/rooms/{quote(room_id, safe='')}/{rest}"


def visibility_path(room_id: str) -> str:
    return f"{CLIENT}/directory/list/room/{quote(room_id, safe='')}"


class RoomHelpers(HomeserverTestCase):
    alice: str
    bob: str

    async def setUp(self):
        await super().setUp()
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]

    async def create_room(self, token: str, **body: Any) -> str:
        r = await self.request("POST", f"{CLIENT}/createRoom", body, token=token)
        self.assertEqual(r.code, 200, r)
        return r.json["room_id"]

    async def join(self, token: str, room: str) -> Response:
        return await self.request("POST", f"{CLIENT}/join/{quote(room, safe='')}", {}, token=token)

    async def put_alias(self, alias: str, room_id: str, token: str) -> Response:
        return await self.request("PUT", alias_path(alias), {"room_id": room_id}, token=token)

    async def set_state(
        self, token: str, room_id: str, event_type: str, content: Any, state_key: str = ""
    ) -> Response:
        path = room_path(room_id, f"state/{event_type}/{quote(state_key, safe='')}")
        return await self.request("PUT", path, content, token=token)

    async def get_state(self, token: str, room_id: str, event_type: str) -> Response:
        return await self.request("GET", room_path(room_id, f"state/{event_type}/"), token=token)

    async def make_admin(self, username: str) -> str:
        """A fresh token for `username`, made a server admin."""
        await self.hs.accounts.set_admin(f"@{username}:test.heddle", True)
        return (await self.login(username))["access_token"]


@on_both_engines
class AliasTests(RoomHelpers):
    async def test_nio_put_resolve_delete(self):
        room_id = await self.create_room(self.alice)
        client = AsyncClient(self.base_url, ALICE)
        self.addCleanup(lambda: nio(client.close()))
        self.assertIsInstance(await nio(client.login(PASSWORD)), LoginResponse)

        put = await nio(client.room_put_alias("#nio:test.heddle", room_id))
        self.assertIsInstance(put, RoomPutAliasResponse)
        resolved = await nio(client.room_resolve_alias("#nio:test.heddle"))
        self.assertIsInstance(resolved, RoomResolveAliasResponse)
        self.assertEqual(resolved.room_id, room_id)
        self.assertEqual(resolved.servers, ["test.heddle"])

        deleted = await nio(client.room_delete_alias("#nio:test.heddle"))
        self.assertIsInstance(deleted, RoomDeleteAliasResponse)
        gone = await nio(client.room_resolve_alias("#nio:test.heddle"))
        self.assertIsInstance(gone, RoomResolveAliasError)
        self.assertEqual(gone.status_code, "M_NOT_FOUND")

    async def test_resolve_needs_no_token_and_lists_servers(self):
        room_id = await self.create_room(self.alice, room_alias_name="general")
        r = await self.request("GET", alias_path("#general:test.heddle"))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"room_id": room_id, "servers": ["test.heddle"]})

    async def test_resolve_unknown_remote_and_malformed_aliases(self):
        self.assertError(
            await self.request("GET", alias_path("#nope:test.heddle")), 404, "M_NOT_FOUND"
        )
        # Another server's alias, whose server cannot be reached (tests resolve no names):
        # a clear 502, not a 500.
        body = self.assertError(
            await self.request("GET", alias_path("#room:elsewhere.example")), 502, "M_UNKNOWN"
        )
        self.assertIn("elsewhere.example", body["error"])
        for bad in ("no-sigil:test.heddle", "#no-server", "#:test.heddle", "#a:bad server"):
            self.assertError(await self.request("GET", alias_path(bad)), 400, "M_INVALID_PARAM")
        self.assertError(
            await self.request("GET", alias_path("#" + "a" * 250 + ":test.heddle")),
            400,
            "M_INVALID_PARAM",
        )

    async def test_unicode_alias(self):
        room_id = await self.create_room(self.alice)
        alias = "#café/ünïcode:test.heddle"
        self.assertEqual((await self.put_alias(alias, room_id, self.alice)).code, 200)
        r = await self.request("GET", alias_path(alias))
        self.assertEqual(r.json["room_id"], room_id)

    async def test_join_by_alias_and_by_bad_alias(self):
        room_id = await self.create_room(self.alice, preset="public_chat")
        self.assertEqual((await self.put_alias("#lobby:test.heddle", room_id, self.alice)).code, 200)
        self.assertError(await self.join(self.bob, "#nope:test.heddle"), 404, "M_NOT_FOUND")
        self.assertError(await self.join(self.bob, "#bad alias"), 400, "M_INVALID_PARAM")
        r = await self.join(self.bob, "#lobby:test.heddle")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["room_id"], room_id)

    async def test_duplicate_alias_is_409(self):
        room_id = await self.create_room(self.alice)
        other = await self.create_room(self.alice)
        self.assertEqual((await self.put_alias("#taken:test.heddle", room_id, self.alice)).code, 200)
        for target in (room_id, other):
            self.assertError(
                await self.put_alias("#taken:test.heddle", target, self.alice), 409, "M_UNKNOWN"
            )
        r = await self.request("GET", alias_path("#taken:test.heddle"))
        self.assertEqual(r.json["room_id"], room_id)
        # Taken through /createRoom too.
        r = await self.request(
            "POST", f"{CLIENT}/createRoom", {"room_alias_name": "taken"}, token=self.alice
        )
        self.assertError(r, 400, "M_ROOM_IN_USE")

    async def test_put_alias_bad_input(self):
        room_id = await self.create_room(self.alice)
        path = alias_path("#ok:test.heddle")
        self.assertError(
            await self.put_alias("#x:elsewhere.example", room_id, self.alice), 400, "M_INVALID_PARAM"
        )
        self.assertError(await self.put_alias("x:test.heddle", room_id, self.alice), 400, "M_INVALID_PARAM")
        self.assertError(
            await self.request("PUT", path, raw=b"{not json", token=self.alice), 400, "M_NOT_JSON"
        )
        self.assertError(await self.request("PUT", path, [room_id], token=self.alice), 400, "M_BAD_JSON")
        self.assertError(await self.request("PUT", path, {}, token=self.alice), 400, "M_BAD_JSON")
        self.assertError(
            await self.request("PUT", path, {"room_id": 7}, token=self.alice), 400, "M_BAD_JSON"
        )
        self.assertError(await self.put_alias("#ok:test.heddle", "no-sigil", self.alice), 400, "M_INVALID_PARAM")
        self.assertError(
            await self.put_alias("#ok:test.heddle", "!unknown:test.heddle", self.alice), 404, "M_NOT_FOUND"
        )
        self.assertError(
            await self.request("PUT", path, {"room_id": room_id}), 401, "M_MISSING_TOKEN"
        )
        # Nothing was created along the way.
        self.assertError(await self.request("GET", path), 404, "M_NOT_FOUND")

    async def test_only_members_may_create_aliases(self):
        room_id = await self.create_room(self.alice)
        self.assertError(await self.put_alias("#bob:test.heddle", room_id, self.bob), 403, "M_FORBIDDEN")
        # A server admin need not be in the room.
        admin = await self.make_admin("bob")
        self.assertEqual((await self.put_alias("#bob:test.heddle", room_id, admin)).code, 200)

    async def test_deleting_someone_elses_alias(self):
        room_id = await self.create_room(self.alice, preset="public_chat")
        self.assertEqual((await self.join(self.bob, room_id)).code, 200)
        self.assertEqual((await self.put_alias("#alices:test.heddle", room_id, self.alice)).code, 200)
        self.assertEqual((await self.put_alias("#bobs:test.heddle", room_id, self.bob)).code, 200)

        # Bob (power 0) may not delete Alice's alias...
        self.assertError(
            await self.request("DELETE", alias_path("#alices:test.heddle"), token=self.bob),
            403,
            "M_FORBIDDEN",
        )
        # ...but may delete his own; Alice, who may change the canonical alias, may delete his.
        self.assertEqual((await self.put_alias("#bobs2:test.heddle", room_id, self.bob)).code, 200)
        r = await self.request("DELETE", alias_path("#bobs2:test.heddle"), token=self.bob)
        self.assertEqual(r.code, 200, r)
        r = await self.request("DELETE", alias_path("#bobs:test.heddle"), token=self.alice)
        self.assertEqual(r.code, 200, r)
        # A server admin may delete anything.
        admin = await self.make_admin("bob")
        r = await self.request("DELETE", alias_path("#alices:test.heddle"), token=admin)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", room_path(room_id, "aliases"), token=self.alice)
        self.assertEqual(r.json, {"aliases": []})

    async def test_delete_unknown_remote_and_unauthenticated(self):
        self.assertError(
            await self.request("DELETE", alias_path("#nope:test.heddle"), token=self.alice),
            404,
            "M_NOT_FOUND",
        )
        self.assertError(
            await self.request("DELETE", alias_path("#x:elsewhere.example"), token=self.alice),
            400,
            "M_INVALID_PARAM",
        )
        self.assertError(
            await self.request("DELETE", alias_path("#nope:test.heddle")), 401, "M_MISSING_TOKEN"
        )

    async def test_deleting_an_alias_drops_it_from_the_canonical_alias(self):
        room_id = await self.create_room(self.alice, room_alias_name="main")
        self.assertEqual((await self.put_alias("#alt:test.heddle", room_id, self.alice)).code, 200)
        r = await self.set_state(
            self.alice,
            room_id,
            "m.room.canonical_alias",
            {"alias": "#main:test.heddle", "alt_aliases": ["#alt:test.heddle"]},
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("DELETE", alias_path("#main:test.heddle"), token=self.alice)
        self.assertEqual(r.code, 200, r)
        r = await self.get_state(self.alice, room_id, "m.room.canonical_alias")
        self.assertEqual(r.json, {"alt_aliases": ["#alt:test.heddle"]})

    async def test_local_aliases(self):
        room_id = await self.create_room(self.alice, room_alias_name="one")
        self.assertEqual((await self.put_alias("#two:test.heddle", room_id, self.alice)).code, 200)
        r = await self.request("GET", room_path(room_id, "aliases"), token=self.alice)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(sorted(r.json["aliases"]), ["#one:test.heddle", "#two:test.heddle"])

        # Outsiders are refused, unless the room is world_readable.
        self.assertError(
            await self.request("GET", room_path(room_id, "aliases"), token=self.bob), 403, "M_FORBIDDEN"
        )
        self.assertError(
            await self.request("GET", room_path("!unknown:test.heddle", "aliases"), token=self.bob),
            403,
            "M_FORBIDDEN",
        )
        r = await self.set_state(
            self.alice, room_id, "m.room.history_visibility", {"history_visibility": "world_readable"}
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", room_path(room_id, "aliases"), token=self.bob)
        self.assertEqual(r.code, 200, r)
        self.assertError(
            await self.request("GET", room_path("not-a-room", "aliases"), token=self.bob),
            400,
            "M_INVALID_PARAM",
        )
        self.assertError(
            await self.request("GET", room_path(room_id, "aliases")), 401, "M_MISSING_TOKEN"
        )


@on_both_engines
class CanonicalAliasTests(RoomHelpers):
    async def set_canonical(self, room_id: str, content: Any) -> Response:
        return await self.set_state(self.alice, room_id, "m.room.canonical_alias", content)

    async def test_valid_canonical_alias(self):
        room_id = await self.create_room(self.alice)
        self.assertEqual((await self.put_alias("#a:test.heddle", room_id, self.alice)).code, 200)
        self.assertEqual((await self.put_alias("#b:test.heddle", room_id, self.alice)).code, 200)
        r = await self.set_canonical(
            room_id, {"alias": "#a:test.heddle", "alt_aliases": ["#b:test.heddle"]}
        )
        self.assertEqual(r.code, 200, r)
        # No alias at all is fine, in every spelling.
        for content in ({}, {"alias": None}, {"alias": ""}, {"alt_aliases": []}):
            self.assertEqual((await self.set_canonical(room_id, content)).code, 200, content)

    async def test_alias_that_does_not_point_to_the_room_is_refused(self):
        room_id = await self.create_room(self.alice)
        other = await self.create_room(self.alice)
        self.assertEqual((await self.put_alias("#other:test.heddle", other, self.alice)).code, 200)
        self.assertEqual((await self.put_alias("#mine:test.heddle", room_id, self.alice)).code, 200)
        for content in (
            {"alias": "#other:test.heddle"},
            {"alias": "#missing:test.heddle"},
            {"alias": "#mine:test.heddle", "alt_aliases": ["#other:test.heddle"]},
            {"alt_aliases": ["#mine:test.heddle", "#missing:test.heddle"]},
            # Other servers' aliases cannot be checked until federation exists.
            {"alias": "#remote:elsewhere.example"},
        ):
            self.assertError(await self.set_canonical(room_id, content), 400, "M_BAD_ALIAS")
        r = await self.get_state(self.alice, room_id, "m.room.canonical_alias")
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_malformed_canonical_alias_is_refused(self):
        room_id = await self.create_room(self.alice)
        for content in (
            {"alias": "not-an-alias"},
            {"alias": 5},
            {"alt_aliases": "#a:test.heddle"},
            {"alt_aliases": None},
            {"alt_aliases": ["#ok-looking:test.heddle", 3]},
            {"alt_aliases": ["#no-server"]},
        ):
            self.assertError(await self.set_canonical(room_id, content), 400, "M_INVALID_PARAM")

    async def test_an_alias_that_drifted_does_not_block_other_changes(self):
        room_id = await self.create_room(self.alice, room_alias_name="drifty")
        other = await self.create_room(self.alice)
        # The alias moves to another room; the canonical alias event still names it.
        r = await self.request("DELETE", alias_path("#drifty:test.heddle"), token=self.alice)
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.put_alias("#drifty:test.heddle", other, self.alice)).code, 200)
        self.assertEqual((await self.put_alias("#new:test.heddle", room_id, self.alice)).code, 200)
        # (Deleting dropped it from the event; put it back the way an old event would have it.)
        await self.hs.event_creator.send(
            room_id, ALICE, "m.room.canonical_alias", {"alias": "#drifty:test.heddle"}, state_key=""
        )
        r = await self.set_canonical(
            room_id, {"alias": "#drifty:test.heddle", "alt_aliases": ["#new:test.heddle"]}
        )
        self.assertEqual(r.code, 200, r)


@on_both_engines
class PublicRoomsTests(RoomHelpers):
    async def public_rooms(self, token: str | None = None, **params: Any) -> Response:
        query = f"?{urlencode(params)}" if params else ""
        return await self.request("GET", f"{CLIENT}/publicRooms{query}", token=token)

    async def search(self, body: Any, token: str | None = None) -> Response:
        return await self.request(
            "POST", f"{CLIENT}/publicRooms", body, token=self.alice if token is None else token
        )

    async def test_lists_published_rooms_with_their_summary(self):
        room_id = await self.create_room(
            self.alice,
            visibility="public",
            name="Cheese",
            topic="Tasty tasty cheese",
            room_alias_name="cheese",
        )
        await self.create_room(self.alice, name="Secret")
        r = await self.set_state(self.alice, room_id, "m.room.avatar", {"url": "mxc://test.heddle/abc"})
        self.assertEqual(r.code, 200, r)

        r = await self.public_rooms()  # no token needed
        self.assertEqual(r.code, 200, r)
        self.assertEqual(
            r.json,
            {
                "chunk": [
                    {
                        "room_id": room_id,
                        "name": "Cheese",
                        "topic": "Tasty tasty cheese",
                        "canonical_alias": "#cheese:test.heddle",
                        "avatar_url": "mxc://test.heddle/abc",
                        "num_joined_members": 1,
                        "world_readable": False,
                        "guest_can_join": False,
                        "join_rule": "public",
                    }
                ],
                "total_room_count_estimate": 1,
            },
        )

    async def test_summary_flags_room_type_and_rich_topic(self):
        room_id = await self.create_room(
            self.alice,
            visibility="public",
            creation_content={"type": "m.space"},
            initial_state=[
                {"type": "m.room.guest_access", "content": {"guest_access": "can_join"}},
                {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}},
                {
                    "type": "m.room.topic",
                    "content": {
                        "topic": "plain fallback",
                        "m.topic": {
                            "m.text": [
                                {"mimetype": "text/html", "body": "<b>rich</b>"},
                                {"body": "plain from the block"},
                            ]
                        },
                    },
                },
            ],
        )
        r = await self.public_rooms()
        [entry] = r.json["chunk"]
        self.assertEqual(entry["room_id"], room_id)
        self.assertEqual(entry["room_type"], "m.space")
        self.assertTrue(entry["world_readable"])
        self.assertTrue(entry["guest_can_join"])
        self.assertEqual(entry["topic"], "plain from the block")
        self.assertNotIn("name", entry)

    async def test_redacted_name_is_not_shown(self):
        room_id = await self.create_room(self.alice, visibility="public", name="Oops")
        state = await self.request(
            "GET", room_path(room_id, "state/m.room.name/?format=event"), token=self.alice
        )
        event_id = state.json["event_id"]
        r = await self.request(
            "PUT", room_path(room_id, f"redact/{quote(event_id, safe='')}/t1"), {}, token=self.alice
        )
        self.assertEqual(r.code, 200, r)
        [entry] = (await self.public_rooms()).json["chunk"]
        self.assertNotIn("name", entry)

    async def test_order_and_pagination(self):
        users = [self.bob] + [(await self.register(f"user{i}"))["access_token"] for i in range(3)]
        rooms = [await self.create_room(self.alice, visibility="public") for _ in range(6)]
        # Rooms 1 and 2 get 3 extra members, room 4 gets 1: the rest tie and go by room ID.
        for index, extra in ((1, 3), (2, 3), (4, 1)):
            for token in users[:extra]:
                self.assertEqual((await self.join(token, rooms[index])).code, 200)
        sizes = {rooms[1]: 4, rooms[2]: 4, rooms[4]: 2}
        expected = sorted(rooms, key=lambda room: (-sizes.get(room, 1), room))

        pages, since = [], None
        while True:
            params = {"limit": 2, **({"since": since} if since else {})}
            r = await self.public_rooms(self.bob, **params)
            self.assertEqual(r.code, 200, r)
            self.assertEqual(r.json["total_room_count_estimate"], 6)
            pages.append(r.json)
            since = r.json.get("next_batch")
            if since is None:
                break
        self.assertEqual(len(pages), 3)
        seen = [entry["room_id"] for page in pages for entry in page["chunk"]]
        self.assertEqual(seen, expected)
        self.assertEqual(
            [e["num_joined_members"] for page in pages for e in page["chunk"]], [4, 4, 2, 1, 1, 1]
        )
        self.assertNotIn("prev_batch", pages[0])
        # prev_batch goes back a page, the same through GET and POST.
        back = await self.public_rooms(limit=2, since=pages[2]["prev_batch"])
        self.assertEqual(back.json["chunk"], pages[1]["chunk"])
        back = await self.search({"limit": 2, "since": back.json["prev_batch"]})
        self.assertEqual(back.json["chunk"], pages[0]["chunk"])
        self.assertNotIn("prev_batch", back.json)
        self.assertIn("next_batch", back.json)

        # Tokens stay valid when the directory changes: a room unpublished before the
        # boundary does not shift the next page.
        r = await self.request(
            "PUT", visibility_path(expected[0]), {"visibility": "private"}, token=self.alice
        )
        self.assertEqual(r.code, 200, r)
        r = await self.public_rooms(limit=2, since=pages[0]["next_batch"])
        self.assertEqual(r.json["chunk"], pages[1]["chunk"])

    async def test_search_term_and_room_types(self):
        cheese = await self.create_room(self.alice, visibility="public", name="Fromage de l'ÉCOLE")
        topic = await self.create_room(self.alice, visibility="public", topic="All about Cheese")
        alias = await self.create_room(self.alice, visibility="public", room_alias_name="cheddar")
        space = await self.create_room(
            self.alice, visibility="public", name="Space", creation_content={"type": "m.space"}
        )

        async def found(body: Any) -> set[str]:
            r = await self.search(body)
            self.assertEqual(r.code, 200, r)
            self.assertEqual(r.json["total_room_count_estimate"], len(r.json["chunk"]))
            return {entry["room_id"] for entry in r.json["chunk"]}

        self.assertEqual(await found({"filter": {"generic_search_term": "CHEESE"}}), {topic})
        self.assertEqual(await found({"filter": {"generic_search_term": "école"}}), {cheese})
        self.assertEqual(await found({"filter": {"generic_search_term": "cheddar"}}), {alias})
        self.assertEqual(await found({"filter": {"generic_search_term": "%"}}), set())
        self.assertEqual(
            await found({"filter": {"generic_search_term": "  "}}), {cheese, topic, alias, space}
        )
        self.assertEqual(await found({"filter": {"room_types": ["m.space"]}}), {space})
        self.assertEqual(
            await found({"filter": {"room_types": [None]}}), {cheese, topic, alias}
        )
        self.assertEqual(
            await found({"filter": {"room_types": [None], "generic_search_term": "space"}}), set()
        )
        # No application service bridges a third-party network here.
        self.assertEqual(await found({"third_party_instance_id": "irc"}), set())
        # Search results page like the rest.
        r = await self.search({"limit": 1, "filter": {"room_types": [None]}})
        self.assertEqual(len(r.json["chunk"]), 1)
        r = await self.search({"limit": 5, "since": r.json["next_batch"], "filter": {"room_types": [None]}})
        self.assertEqual(len(r.json["chunk"]), 2)

    async def test_bad_input(self):
        await self.create_room(self.alice, visibility="public")
        for params in ({"limit": "ten"}, {"limit": "-1"}, {"since": "garbage"}, {"since": "W10"}):
            self.assertError(await self.public_rooms(**params), 400, "M_INVALID_PARAM")
        self.assertError(await self.public_rooms(server="bad server!"), 400, "M_INVALID_PARAM")
        # Another server's directory, unreachable: a clear 502, not a 500.
        self.assertError(await self.public_rooms(server="elsewhere.example"), 502, "M_UNKNOWN")
        r = await self.public_rooms(server="test.heddle", limit="0")
        self.assertEqual(len(r.json["chunk"]), 1)

        post = f"{CLIENT}/publicRooms"
        self.assertError(await self.request("POST", post, raw=b"[", token=self.alice), 400, "M_NOT_JSON")
        for body in (
            ["limit"],
            {"limit": "5"},
            {"limit": True},
            {"since": 5},
            {"filter": "cheese"},
            {"filter": {"generic_search_term": 5}},
            {"filter": {"room_types": "m.space"}},
            {"filter": {"room_types": [5]}},
        ):
            self.assertError(await self.search(body), 400, "M_BAD_JSON")
        self.assertError(await self.search({"limit": -2}), 400, "M_INVALID_PARAM")
        self.assertError(await self.search({"since": "!!"}), 400, "M_INVALID_PARAM")
        self.assertError(await self.request("POST", post, {}), 401, "M_MISSING_TOKEN")
        self.assertError(
            await self.request("POST", f"{post}?server=elsewhere.example", {}, token=self.alice),
            502,
            "M_UNKNOWN",
        )

    async def test_visibility(self):
        room_id = await self.create_room(self.alice, preset="public_chat")
        self.assertEqual((await self.join(self.bob, room_id)).code, 200)
        client = AsyncClient(self.base_url, ALICE)
        self.addCleanup(lambda: nio(client.close()))
        got = await nio(client.room_get_visibility(room_id))
        self.assertIsInstance(got, RoomGetVisibilityResponse)
        self.assertEqual(got.visibility, "private")

        r = await self.request("PUT", visibility_path(room_id), {"visibility": "public"}, token=self.alice)
        self.assertEqual(r.code, 200, r)
        got = await nio(client.room_get_visibility(room_id))
        self.assertEqual(got.visibility, "public")
        listed = await self.public_rooms()
        self.assertEqual([e["room_id"] for e in listed.json["chunk"]], [room_id])

        # Bob is in the room but may not change the canonical alias.
        self.assertError(
            await self.request("PUT", visibility_path(room_id), {"visibility": "private"}, token=self.bob),
            403,
            "M_FORBIDDEN",
        )
        # The body defaults to public; a server admin may do it from outside the room.
        r = await self.request("PUT", visibility_path(room_id), {"visibility": "private"}, token=self.alice)
        self.assertEqual(r.code, 200, r)
        admin = await self.make_admin("bob")
        r = await self.request("PUT", visibility_path(room_id), {}, token=admin)
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.request("GET", visibility_path(room_id))).json, {"visibility": "public"})

    async def test_visibility_bad_input(self):
        room_id = await self.create_room(self.alice)
        path = visibility_path(room_id)
        self.assertError(await self.request("GET", visibility_path("!nope:test.heddle")), 404, "M_NOT_FOUND")
        self.assertError(
            await self.request("PUT", visibility_path("!nope:test.heddle"), {"visibility": "public"}, token=self.alice),
            404,
            "M_NOT_FOUND",
        )
        self.assertError(
            await self.request("PUT", path, {"visibility": "hidden"}, token=self.alice), 400, "M_INVALID_PARAM"
        )
        self.assertError(await self.request("PUT", path, {"visibility": 1}, token=self.alice), 400, "M_BAD_JSON")
        self.assertError(await self.request("PUT", path, raw=b"nope", token=self.alice), 400, "M_NOT_JSON")
        self.assertError(await self.request("PUT", path, {"visibility": "public"}), 401, "M_MISSING_TOKEN")
        # Outsiders may not publish someone's room.
        self.assertError(
            await self.request("PUT", path, {"visibility": "public"}, token=self.bob), 403, "M_FORBIDDEN"
        )
        self.assertEqual((await self.request("GET", path)).json, {"visibility": "private"})
