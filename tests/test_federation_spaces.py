"""Spaces across servers: walking a space whose children live on another server (through
the federation hierarchy endpoint), room summaries of remote rooms, an unreachable server's
rooms skipped; between two Heddles, and between a Heddle and a real Synapse both ways."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from tests.federation_helpers import API, FederationTestCase, FedUser, Server, q
from tests.harness import Response, ensure_deferred, on_both_engines
from tests.synapse_peer import SynapsePeer

V1 = "/_matrix/client/v1"
PW = "synapse-test-password"
SPACE = {"type": "m.space"}


def hierarchy_path(room_id: str, **params: Any) -> str:
    path = f"{V1}/rooms/{q(room_id)}/hierarchy"
    return path + ("?" + urlencode(params) if params else "")


def summary_path(room_id: str, via: str) -> str:
    return f"{V1}/room_summary/{q(room_id)}?" + urlencode({"via": via})


class SpacesCase(FederationTestCase):
    async def create(self, user: FedUser, **body: Any) -> str:
        r = await self.user_call(user, "POST", f"{API}/createRoom", body)
        assert r.code == 200, r
        return str(r.json["room_id"])

    async def add_child(self, user: FedUser, space: str, child: str, via: str, order: str) -> None:
        r = await self.user_call(
            user,
            "PUT",
            f"{API}/rooms/{q(space)}/state/m.space.child/{q(child)}",
            {"via": [via], "order": order},
        )
        assert r.code == 200, r

    async def walk(self, user: FedUser, space: str, **params: Any) -> list[str]:
        r = await self.user_call(user, "GET", hierarchy_path(space, **params))
        assert r.code == 200, r
        return [room.get("name", room["room_id"]) for room in r.json["rooms"]]


@on_both_engines
class TwoHeddleSpaces(SpacesCase):
    async def _space_on_a_with_rooms_on_b(
        self,
    ) -> tuple[Server, Server, FedUser, FedUser, str, dict[str, str]]:
        a, b, alice, bob = await self.two_peers()
        space = await self.create(
            alice, preset="public_chat", name="A space", creation_content=SPACE
        )
        rooms = {
            "public": await self.create(bob, preset="public_chat", name="B public"),
            "private": await self.create(bob, preset="private_chat", name="B private"),
            "space": await self.create(
                bob, preset="public_chat", name="B space", creation_content=SPACE
            ),
            "deep": await self.create(bob, preset="public_chat", name="B deep"),
        }
        await self.add_child(alice, space, rooms["public"], b.server_name, "1")
        await self.add_child(alice, space, rooms["private"], b.server_name, "2")
        await self.add_child(alice, space, rooms["space"], b.server_name, "3")
        await self.add_child(bob, rooms["space"], rooms["deep"], b.server_name, "1")
        return a, b, alice, bob, space, rooms

    @ensure_deferred
    async def test_walk_into_rooms_on_another_heddle(self):
        a, b, alice, bob, space, rooms = await self._space_on_a_with_rooms_on_b()
        self.assertEqual(
            await self.walk(alice, space), ["A space", "B public", "B space", "B deep"]
        )
        self.assertEqual(
            await self.walk(alice, space, max_depth=1), ["A space", "B public", "B space"]
        )
        r = await self.user_call(alice, "GET", hierarchy_path(space))
        remote_space = r.json["rooms"][2]
        self.assertEqual(remote_space["room_type"], "m.space")
        self.assertEqual([c["state_key"] for c in remote_space["children_state"]], [rooms["deep"]])
        self.assertEqual(r.json["rooms"][1]["num_joined_members"], 1)
        r = await self.user_call(alice, "GET", summary_path(rooms["public"], b.server_name))
        self.assertEqual(r.code, 200, r)
        self.assertEqual((r.json["name"], r.json["membership"]), ("B public", "leave"))
        r = await self.user_call(alice, "GET", summary_path(rooms["private"], b.server_name))
        self.assertEqual((r.code, r.json["errcode"]), (404, "M_NOT_FOUND"))

    @ensure_deferred
    async def test_answers_are_cached_and_inaccessible_children_not_asked_about(self):
        a, b, alice, bob, space, rooms = await self._space_on_a_with_rooms_on_b()
        hidden = await self.create(bob, preset="private_chat", name="B hidden")
        await self.add_child(bob, rooms["space"], hidden, b.server_name, "2")
        asked: list[str] = []
        answer = b.hs.spaces.get_federation_hierarchy

        async def counting(origin: str, room_id: str, suggested_only: bool) -> Any:
            asked.append(room_id)
            return await answer(origin, room_id, suggested_only)

        b.hs.spaces.get_federation_hierarchy = counting  # type: ignore[method-assign]
        expected = ["A space", "B public", "B space", "B deep"]
        self.assertEqual(await self.walk(alice, space), expected)
        # B said `hidden` is out of A's reach: A does not ask about it.
        self.assertEqual(sorted(asked), sorted([rooms["public"], rooms["private"], rooms["space"]]))
        asked.clear()
        self.assertEqual(await self.walk(alice, space), expected)
        # Answers are cached; only the room B refused is asked about again.
        self.assertEqual(asked, [rooms["private"]])

    @ensure_deferred
    async def test_unreachable_server_skips_its_rooms(self):
        a, b, alice, bob, space, rooms = await self._space_on_a_with_rooms_on_b()
        await self.stop_peer(b)
        self.assertEqual(await self.walk(alice, space), ["A space"])
        r = await self.user_call(alice, "GET", summary_path(rooms["public"], b.server_name))
        self.assertEqual((r.code, r.json["errcode"]), (404, "M_NOT_FOUND"))


@on_both_engines
class SynapseSpaces(SpacesCase):
    timeout = 300

    async def _synapse(
        self, peer: SynapsePeer, user: dict[str, Any], method: str, path: str, body: Any = None
    ) -> Response:
        return await peer.request(method, path, body, token=user["access_token"])

    @ensure_deferred
    async def test_heddle_walks_a_space_on_synapse(self):
        heddle, peer, alice, bob = await self.heddle_and_synapse(PW)

        async def create(**body: Any) -> str:
            r = await self._synapse(peer, bob, "POST", f"{API}/createRoom", body)
            self.assertEqual(r.code, 200, r)
            return str(r.json["room_id"])

        space = await create(preset="public_chat", name="S space", creation_content=SPACE)
        public = await create(preset="public_chat", name="S public")
        private = await create(preset="private_chat", name="S private")
        for order, child in (("1", public), ("2", private)):
            r = await self._synapse(
                peer,
                bob,
                "PUT",
                f"{API}/rooms/{q(space)}/state/m.space.child/{q(child)}",
                {"via": [peer.server_name], "order": order},
            )
            self.assertEqual(r.code, 200, r)
        # Not in the space yet: Heddle cannot walk it, but can summarise it through Synapse.
        r = await self.user_call(alice, "GET", hierarchy_path(space))
        self.assertEqual(r.code, 403, r)
        r = await self.user_call(alice, "GET", summary_path(space, peer.server_name))
        self.assertEqual(r.code, 200, r)
        self.assertEqual((r.json["name"], r.json["room_type"]), ("S space", "m.space"))
        r = await self.user_call(alice, "GET", summary_path(private, peer.server_name))
        self.assertEqual(r.code, 404, r)
        r = await self.user_call(alice, "POST", f"{API}/join/{q(space)}?via={peer.server_name}", {})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.walk(alice, space), ["S space", "S public"])

    @ensure_deferred
    async def test_synapse_walks_a_space_on_heddle(self):
        heddle, peer, alice, bob = await self.heddle_and_synapse(PW)
        space = await self.create(
            alice, preset="public_chat", name="H space", creation_content=SPACE
        )
        public = await self.create(alice, preset="public_chat", name="H public")
        private = await self.create(alice, preset="private_chat", name="H private")
        inner = await self.create(
            alice, preset="public_chat", name="H inner", creation_content=SPACE
        )
        deep = await self.create(alice, preset="public_chat", name="H deep")
        await self.add_child(alice, space, public, heddle.server_name, "1")
        await self.add_child(alice, space, private, heddle.server_name, "2")
        await self.add_child(alice, space, inner, heddle.server_name, "3")
        await self.add_child(alice, inner, deep, heddle.server_name, "1")
        r = await self._synapse(
            peer, bob, "POST", f"{API}/join/{q(space)}?server_name={heddle.server_name}", {}
        )
        self.assertEqual(r.code, 200, r)
        r = await self._synapse(peer, bob, "GET", hierarchy_path(space))
        self.assertEqual(r.code, 200, r)
        names = [room.get("name") for room in r.json["rooms"]]
        self.assertEqual(names, ["H space", "H public", "H inner", "H deep"])
        # Synapse's room summary of a room it is not in comes from our hierarchy endpoint.
        r = await self._synapse(peer, bob, "GET", summary_path(public, heddle.server_name))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["name"], "H public")
