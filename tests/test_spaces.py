"""Spaces on one server: the client hierarchy walk (order, summaries, who sees what, depth,
pagination, loops, bad input), room summaries, and the federation hierarchy endpoint as
another server sees it.

Spec: api/client-server/space_hierarchy.yaml, room_summary.yaml,
api/server-server/space_hierarchy.yaml; client-server API "Spaces".
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from twisted.trial import unittest

from homeserver.rooms.spaces import child_sort_key, open_to_anyone, valid_order
from tests.harness import SERVER_NAME, Response, on_both_engines
from tests.room_helpers import RoomTestCase, User, q
from tests.test_federation_reads import FederationReadsCase

V1 = "/_matrix/client/v1"
FED = "/_matrix/federation/v1"
HERE = [SERVER_NAME]


class SpaceCase(RoomTestCase):
    async def space(self, user: User, preset: str = "public_chat", **body: Any) -> str:
        return await self.create_room(
            user, preset=preset, creation_content={"type": "m.space"}, **body
        )

    async def add_child(
        self, user: User, space: str, child: str, via: Any = None, **content: Any
    ) -> None:
        body = {"via": HERE if via is None else via, **content}
        r = await self.put_state(user, space, "m.space.child", body, child)
        assert r.code == 200, r

    async def hierarchy(self, user: User, room_id: str, **params: Any) -> Response:
        path = f"{V1}/rooms/{q(room_id)}/hierarchy"
        if params:
            path += "?" + urlencode(params)
        return await self.request("GET", path, token=user.token)

    async def room_ids(self, user: User, room_id: str, **params: Any) -> list[str]:
        r = await self.hierarchy(user, room_id, **params)
        assert r.code == 200, r
        return [room["room_id"] for room in r.json["rooms"]]

    async def summary(self, user: User | None, room: str, **params: Any) -> Response:
        path = f"{V1}/room_summary/{q(room)}"
        if params:
            path += "?" + urlencode(params, doseq=True)
        return await self.request("GET", path, token=user.token if user else None)


class AliceAndBob(SpaceCase):
    alice: User
    bob: User

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")


class OrderTests(unittest.SynchronousTestCase):
    def test_valid_order(self) -> None:
        self.assertEqual(valid_order(" ~"), " ~")
        self.assertEqual(valid_order("a" * 50), "a" * 50)
        for invalid in ("a" * 51, "\x7f", "\x1f", "é", 3, None):
            self.assertIsNone(valid_order(invalid), invalid)

    def test_knock_rules_count_only_in_versions_that_have_them(self) -> None:
        # This server creates no rooms of versions before 10; other servers' rooms may be.
        for rule, version, open_ in (
            ("knock", "6", False),
            ("knock", "7", True),
            ("knock_restricted", "9", False),
            ("knock_restricted", "10", True),
            ("knock", "unknown-version", True),
            ("public", "1", True),
            ("invite", "11", False),
        ):
            summary = {"room_id": "!r:x", "join_rule": rule, "room_version": version}
            self.assertEqual(open_to_anyone(summary), open_, (rule, version))

    def test_ties_go_to_timestamp_then_room_id(self) -> None:
        def child(room_id: str, ts: int, **content: Any) -> dict[str, Any]:
            return {
                "state_key": room_id,
                "origin_server_ts": ts,
                "content": {"via": ["x"], **content},
            }

        children = [
            child("!d", 1),
            child("!c", 1),
            child("!b", 5, order="x"),
            child("!a", 7, order="x"),
            child("!e", 0, order="\x7f"),
        ]
        self.assertEqual(
            [c["state_key"] for c in sorted(children, key=child_sort_key)],
            ["!b", "!a", "!e", "!c", "!d"],
        )


@on_both_engines
class HierarchyTests(AliceAndBob):
    async def test_spec_order_and_summaries(self) -> None:
        space = await self.space(self.alice, name="Space", topic="All of it")
        rooms = {
            name: await self.create_room(self.alice, preset="public_chat", name=name)
            for name in "abcde"
        }
        # The spec's example: b (" "), a ("aaaa"), c ("first"), then e and d by timestamp.
        await self.add_child(self.alice, space, rooms["b"], order=" ")
        await self.add_child(self.alice, space, rooms["a"], order="aaaa")
        await self.add_child(self.alice, space, rooms["e"], order="\x7f invalid")
        await self.add_child(self.alice, space, rooms["d"])
        await self.add_child(self.alice, space, rooms["c"], order="first")
        r = await self.hierarchy(self.bob, space)
        self.assertEqual(r.code, 200, r)
        names = [room.get("name") for room in r.json["rooms"]]
        self.assertEqual(names, ["Space", "b", "a", "c", "e", "d"])
        root = r.json["rooms"][0]
        self.assertEqual(root["room_type"], "m.space")
        self.assertEqual(root["topic"], "All of it")
        self.assertEqual(root["join_rule"], "public")
        self.assertEqual(root["num_joined_members"], 1)
        self.assertFalse(root["world_readable"])
        self.assertFalse(root["guest_can_join"])
        self.assertIn("room_version", root)
        self.assertNotIn("next_batch", r.json)
        children = root["children_state"]
        self.assertEqual(
            [c["state_key"] for c in children],
            [rooms["b"], rooms["a"], rooms["c"], rooms["e"], rooms["d"]],
        )
        for child in children:
            self.assertEqual(
                set(child), {"type", "state_key", "content", "sender", "origin_server_ts"}
            )
            self.assertEqual(child["sender"], self.alice.user_id)
        # A room that is not a space lists no children.
        self.assertEqual(r.json["rooms"][1]["children_state"], [])

    async def test_child_without_via_is_ignored(self) -> None:
        space = await self.space(self.alice)
        kept = await self.create_room(self.alice, preset="public_chat")
        removed = await self.create_room(self.alice, preset="public_chat")
        await self.add_child(self.alice, space, kept)
        await self.add_child(self.alice, space, removed, via=[])
        r = await self.hierarchy(self.alice, space)
        self.assertEqual([room["room_id"] for room in r.json["rooms"]], [space, kept])
        self.assertEqual([c["state_key"] for c in r.json["rooms"][0]["children_state"]], [kept])

    async def test_loops_visit_each_room_once(self) -> None:
        outer = await self.space(self.alice)
        inner = await self.space(self.alice)
        leaf = await self.create_room(self.alice, preset="public_chat")
        await self.add_child(self.alice, outer, outer)
        await self.add_child(self.alice, outer, inner)
        await self.add_child(self.alice, inner, outer)
        await self.add_child(self.alice, inner, leaf)
        self.assertEqual(await self.room_ids(self.bob, outer), [outer, inner, leaf])
        self.assertEqual(await self.room_ids(self.bob, inner), [inner, outer, leaf])
        # Paging one room at a time through the loop ends too, each room once.
        seen: list[str] = []
        token = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 1}
            if token:
                params["from"] = token
            r = await self.hierarchy(self.bob, outer, **params)
            self.assertEqual(r.code, 200, r)
            seen += [room["room_id"] for room in r.json["rooms"]]
            token = r.json.get("next_batch")
            if token is None:
                break
        self.assertEqual(seen, [outer, inner, leaf])

    async def test_depth_and_suggested_only(self) -> None:
        outer = await self.space(self.alice)
        inner = await self.space(self.alice)
        leaf = await self.create_room(self.alice, preset="public_chat")
        other = await self.create_room(self.alice, preset="public_chat")
        await self.add_child(self.alice, outer, inner, suggested=True)
        await self.add_child(self.alice, outer, other)
        await self.add_child(self.alice, inner, leaf, suggested=True)
        self.assertEqual(await self.room_ids(self.bob, outer, max_depth=0), [outer])
        self.assertEqual(await self.room_ids(self.bob, outer, max_depth=1), [outer, inner, other])
        self.assertEqual(await self.room_ids(self.bob, outer), [outer, inner, leaf, other])
        self.assertEqual(
            await self.room_ids(self.bob, outer, suggested_only="true"), [outer, inner, leaf]
        )

    async def test_who_sees_which_rooms(self) -> None:
        space = await self.space(self.alice)
        private = await self.create_room(self.alice, preset="private_chat", name="private")
        invited = await self.create_room(self.alice, preset="private_chat", name="invited")
        readable = await self.create_room(
            self.alice,
            preset="private_chat",
            name="readable",
            initial_state=[
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "world_readable"},
                }
            ],
        )
        knock = await self.create_room(
            self.alice,
            preset="private_chat",
            name="knock",
            room_version="10",
            initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
            ],
        )
        allowed_from = await self.create_room(self.alice, preset="public_chat", name="lobby")
        restricted = await self.create_room(
            self.alice,
            preset="private_chat",
            name="restricted",
            room_version="10",
            initial_state=[
                {
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": allowed_from}],
                    },
                }
            ],
        )
        for child in (private, invited, readable, knock, restricted):
            await self.add_child(self.alice, space, child)
        r = await self.membership_action(
            self.alice, invited, "invite", {"user_id": self.bob.user_id}
        )
        self.assertEqual(r.code, 200, r)

        async def names() -> set[str]:
            r = await self.hierarchy(self.bob, space)
            self.assertEqual(r.code, 200, r)
            return {room.get("name") for room in r.json["rooms"][1:]}

        self.assertEqual(await names(), {"invited", "readable", "knock"})
        # Joining the room the restricted one allows makes it visible.
        self.assertEqual((await self.join(self.bob, allowed_from)).code, 200)
        self.assertEqual(await names(), {"invited", "readable", "knock", "restricted"})
        r = await self.hierarchy(self.alice, space)
        by_name = {room.get("name"): room for room in r.json["rooms"]}
        self.assertIn("private", by_name)
        self.assertEqual(by_name["restricted"]["allowed_room_ids"], [allowed_from])
        self.assertEqual(by_name["knock"]["join_rule"], "knock")
        self.assertTrue(by_name["readable"]["world_readable"])

    async def test_private_or_unknown_space_is_403(self) -> None:
        private = await self.space(self.alice, preset="private_chat")
        r = await self.hierarchy(self.bob, private)
        self.assertEqual((r.code, r.json["errcode"]), (403, "M_FORBIDDEN"))
        r = await self.hierarchy(self.bob, "!unknown:" + SERVER_NAME)
        self.assertEqual((r.code, r.json["errcode"]), (403, "M_FORBIDDEN"))
        r = await self.hierarchy(self.bob, "not-a-room-id")
        self.assertEqual(r.code, 400, r)
        r = await self.request("GET", f"{V1}/rooms/{q(private)}/hierarchy")
        self.assertEqual(r.code, 401, r)

    async def test_bad_parameters_are_400(self) -> None:
        space = await self.space(self.alice)
        for params in (
            {"limit": "-1"},
            {"limit": "0"},
            {"limit": "many"},
            {"limit": "1.5"},
            {"max_depth": "-1"},
            {"max_depth": "deep"},
            {"suggested_only": "yes"},
            {"from": "garbage"},
        ):
            r = await self.hierarchy(self.alice, space, **params)
            self.assertEqual((r.code, r.json.get("errcode")), (400, "M_INVALID_PARAM"), params)

    async def test_pagination_tokens_belong_to_their_walk(self) -> None:
        space = await self.space(self.alice)
        other_space = await self.space(self.alice)
        children = [await self.create_room(self.alice, preset="public_chat") for _ in range(3)]
        for child in children:
            await self.add_child(self.alice, space, child)
        r = await self.hierarchy(self.alice, space, limit=2, max_depth=3)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(len(r.json["rooms"]), 2)
        token = r.json["next_batch"]
        # Another room, other parameters, another user: 400.
        for user, room, params in (
            (self.alice, other_space, {"max_depth": 3}),
            (self.alice, space, {"max_depth": 2}),
            (self.alice, space, {"max_depth": 3, "suggested_only": "true"}),
            (self.bob, space, {"max_depth": 3}),
        ):
            r = await self.hierarchy(user, room, **{"from": token, **params})
            self.assertEqual((r.code, r.json.get("errcode")), (400, "M_INVALID_PARAM"), params)
        r = await self.hierarchy(self.alice, space, **{"from": token, "max_depth": 3})
        self.assertEqual(r.code, 200, r)
        self.assertEqual([room["room_id"] for room in r.json["rooms"]], children[1:])
        self.assertNotIn("next_batch", r.json)
        # A token is good for one page.
        r = await self.hierarchy(self.alice, space, **{"from": token, "max_depth": 3})
        self.assertEqual(r.code, 400, r)

    async def test_unreachable_remote_child_is_skipped(self) -> None:
        space = await self.space(self.alice)
        local = await self.create_room(self.alice, preset="public_chat")
        await self.add_child(
            self.alice, space, "!gone:unreachable.example", via=["unreachable.example"], order="a"
        )
        await self.add_child(self.alice, space, local, order="b")
        self.assertEqual(await self.room_ids(self.bob, space), [space, local])

    async def test_nio_walks_a_space(self) -> None:
        from nio import SpaceGetHierarchyResponse

        from tests.harness import nio

        space = await self.space(self.alice, name="Space")
        child = await self.create_room(self.alice, preset="public_chat", name="child")
        await self.add_child(self.alice, space, child)
        client = self.nio_client(self.bob)
        response = await nio(client.space_get_hierarchy(space, limit=1))
        self.assertIsInstance(response, SpaceGetHierarchyResponse, response)
        self.assertEqual([room["room_id"] for room in response.rooms], [space])
        self.assertIsNotNone(response.next_batch)
        response = await nio(
            client.space_get_hierarchy(space, from_page=response.next_batch, limit=1)
        )
        self.assertIsInstance(response, SpaceGetHierarchyResponse, response)
        self.assertEqual([room["name"] for room in response.rooms], ["child"])


@on_both_engines
class RoomSummaryTests(AliceAndBob):
    async def test_encryption_and_room_version_in_summary_and_hierarchy(self) -> None:
        # Spec v1.15 (MSC3266): both answers carry `encryption` and `room_version`.
        megolm = "m.megolm.v1.aes-sha2"
        space = await self.space(self.alice, room_version="11")
        room = await self.create_room(
            self.alice,
            preset="public_chat",
            room_version="12",
            initial_state=[{"type": "m.room.encryption", "content": {"algorithm": megolm}}],
        )
        await self.add_child(self.alice, space, room)
        r = await self.summary(self.bob, room)
        self.assertEqual(r.code, 200, r)
        self.assertEqual((r.json["encryption"], r.json["room_version"]), (megolm, "12"))
        r = await self.hierarchy(self.bob, space)
        self.assertEqual(r.code, 200, r)
        by_id = {entry["room_id"]: entry for entry in r.json["rooms"]}
        self.assertNotIn("encryption", by_id[space])
        self.assertEqual(by_id[space]["room_version"], "11")
        self.assertEqual((by_id[room]["encryption"], by_id[room]["room_version"]), (megolm, "12"))

    async def test_public_room_by_id_and_alias(self) -> None:
        room = await self.create_room(
            self.alice, preset="public_chat", name="Hall", room_alias_name="hall"
        )
        r = await self.summary(None, room)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["name"], "Hall")
        self.assertEqual(r.json["canonical_alias"], f"#hall:{SERVER_NAME}")
        self.assertNotIn("membership", r.json)
        self.assertNotIn("children_state", r.json)
        r = await self.summary(self.bob, f"#hall:{SERVER_NAME}")
        self.assertEqual((r.code, r.json["room_id"], r.json["membership"]), (200, room, "leave"))
        r = await self.summary(self.alice, room)
        self.assertEqual(r.json["membership"], "join")

    async def test_private_room_only_for_members_and_invitees(self) -> None:
        room = await self.create_room(self.alice, preset="private_chat", name="secret")
        r = await self.summary(self.bob, room)
        self.assertEqual((r.code, r.json["errcode"]), (404, "M_NOT_FOUND"))
        r = await self.summary(None, room)
        self.assertEqual(r.code, 404, r)
        await self.membership_action(self.alice, room, "invite", {"user_id": self.bob.user_id})
        r = await self.summary(self.bob, room)
        self.assertEqual((r.code, r.json["membership"]), (200, "invite"))

    async def test_unknown_and_malformed(self) -> None:
        r = await self.summary(self.bob, "!nowhere:" + SERVER_NAME)
        self.assertEqual((r.code, r.json["errcode"]), (404, "M_NOT_FOUND"))
        r = await self.summary(self.bob, "!gone:unreachable.example", via=["unreachable.example"])
        self.assertEqual((r.code, r.json["errcode"]), (404, "M_NOT_FOUND"))
        r = await self.summary(self.bob, f"#nothing:{SERVER_NAME}")
        self.assertEqual((r.code, r.json["errcode"]), (404, "M_NOT_FOUND"))
        r = await self.summary(self.bob, "garbage")
        self.assertEqual(r.code, 400, r)


@on_both_engines
class FederationHierarchyTests(FederationReadsCase, SpaceCase):  # type: ignore[misc]
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")

    async def test_remote_server_sees_what_it_may(self) -> None:
        space = await self.space(self.alice, name="Space")
        public = await self.create_room(self.alice, preset="public_chat", name="public")
        private = await self.create_room(self.alice, preset="private_chat", name="private")
        await self.add_child(self.alice, space, public)
        await self.add_child(self.alice, space, private)
        await self.add_child(self.alice, space, "!elsewhere:other.example", via=["other.example"])
        r = await self.fed("GET", f"{FED}/hierarchy/{q(space)}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["room"]["room_id"], space)
        self.assertEqual(len(r.json["room"]["children_state"]), 3)
        self.assertEqual([c["room_id"] for c in r.json["children"]], [public])
        self.assertNotIn("children_state", r.json["children"][0])
        self.assertEqual(r.json["inaccessible_children"], [private])
        r = await self.fed("GET", f"{FED}/hierarchy/{q(private)}")
        self.assertEqual((r.code, r.json["errcode"]), (404, "M_NOT_FOUND"))
        r = await self.fed("GET", f"{FED}/hierarchy/{q('!nope:' + SERVER_NAME)}")
        self.assertEqual((r.code, r.json["errcode"]), (404, "M_NOT_FOUND"))
        r = await self.fed("GET", f"{FED}/hierarchy/{q(space)}", suggested_only="true")
        self.assertEqual(r.json["children"], [])
        r = await self.fed("GET", f"{FED}/hierarchy/{q(space)}", suggested_only="maybe")
        self.assertEqual(r.code, 400, r)
        r = await self.fed("GET", f"{FED}/hierarchy/{q(space)}", signed=False)
        self.assertEqual(r.code, 401, r)
