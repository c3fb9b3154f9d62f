"""Relationships made on another server aggregate here: edits, reactions and threads sent
from a second Heddle (live and backfilled) and from a real Synapse; and those made here
aggregate on Synapse, read through its own client API."""

from __future__ import annotations

from typing import Any

from tests.federation_helpers import API, FederationTestCase, FedUser, q
from tests.harness import ensure_deferred, on_both_engines

V1 = "/_matrix/client/v1"
SYNAPSE_PW = "synapse-test-password"


def edit_of(event_id: str, body: str) -> dict[str, Any]:
    return {
        "msgtype": "m.text",
        "body": f"* {body}",
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
    }


def reaction(event_id: str, key: str) -> dict[str, Any]:
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}


def in_thread(root_id: str, body: str) -> dict[str, Any]:
    return {
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {"rel_type": "m.thread", "event_id": root_id},
    }


@on_both_engines
class RelationsAcrossServers(FederationTestCase):
    async def send(
        self, user: FedUser, room_id: str, event_type: str, content: dict[str, Any], txn: str
    ) -> str:
        r = await self.user_call(
            user, "PUT", f"{API}/rooms/{q(room_id)}/send/{q(event_type)}/{txn}", content
        )
        assert r.code == 200, r
        return str(r.json["event_id"])

    async def bundle(self, user: FedUser, room_id: str, event_id: str) -> dict[str, Any] | None:
        r = await self.user_call(user, "GET", f"{API}/rooms/{q(room_id)}/event/{q(event_id)}")
        if r.code != 200:
            return None
        return dict(r.json["unsigned"].get("m.relations", {}))

    async def relation_ids(self, user: FedUser, room_id: str, event_id: str) -> list[str]:
        r = await self.user_call(
            user, "GET", f"{V1}/rooms/{q(room_id)}/relations/{q(event_id)}?limit=50"
        )
        return [e["event_id"] for e in r.json.get("chunk", [])] if r.code == 200 else []

    @ensure_deferred
    async def test_edit_reaction_and_thread_from_the_other_server(self):
        a, b, alice, bob = await self.two_peers()
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        room_id = r.json["room_id"]
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(a.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        await self.wait_for(
            lambda: self._is(self.membership(alice, room_id, bob.user_id), "join"),
            what="bob's join on A",
        )
        root = await self.send_text(bob, room_id, "v1", "t1")
        edit = await self.send(bob, room_id, "m.room.message", edit_of(root, "v2"), "t2")
        react = await self.send(bob, room_id, "m.reaction", reaction(root, "👍"), "t3")
        reply = await self.send(bob, room_id, "m.room.message", in_thread(root, "r"), "t4")

        async def aggregated_on_a() -> bool:
            bundle = await self.bundle(alice, room_id, root)
            return bool(bundle) and "m.replace" in bundle and "m.thread" in bundle

        await self.wait_for(aggregated_on_a, what="bob's relations aggregated on A")
        bundle = await self.bundle(alice, room_id, root)
        assert bundle is not None
        self.assertEqual(bundle["m.replace"]["event_id"], edit)
        self.assertEqual(bundle["m.thread"]["latest_event"]["event_id"], reply)
        self.assertFalse(bundle["m.thread"]["current_user_participated"])
        await self.wait_for(
            lambda: self._is(self.relation_ids(alice, room_id, root), [reply, react, edit]),
            what="every relation listed on A",
        )

    @ensure_deferred
    async def test_backfilled_relations_aggregate(self):
        a, b, alice, bob = await self.two_peers()
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        room_id = r.json["room_id"]
        r = await self.user_call(
            alice, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.history_visibility",
            {"history_visibility": "world_readable"},
        )
        self.assertEqual(r.code, 200, r)
        root = await self.send_text(alice, room_id, "v1", "o1")
        edit = await self.send(alice, room_id, "m.room.message", edit_of(root, "v2"), "o2")
        for i in range(3):
            await self.send_text(alice, room_id, f"filler {i}", f"f{i}")
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(a.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        # Bob's server fetches the history by backfill while he scrolls back.
        bodies = await self.timeline_bodies(bob, room_id)
        self.assertIn("v1", bodies)
        r = await self.user_call(bob, "GET", f"{API}/rooms/{q(room_id)}/messages?dir=b&limit=50")
        by_id = {e["event_id"]: e for e in r.json["chunk"]}
        self.assertEqual(by_id[root]["unsigned"]["m.relations"]["m.replace"]["event_id"], edit)


@on_both_engines
class RelationsFromSynapse(FederationTestCase):
    timeout = 300

    @ensure_deferred
    async def test_an_edit_and_a_reaction_made_on_synapse_aggregate_here(self):
        heddle, peer, alice, bob = await self.heddle_and_synapse(SYNAPSE_PW)
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        room_id = r.json["room_id"]
        r = await peer.request(
            "POST", f"{API}/join/{q(room_id)}?server_name={q(heddle.server_name)}", {},
            token=bob["access_token"],
        )
        self.assertEqual(r.code, 200, r)

        async def synapse_send(event_type: str, content: dict[str, Any], txn: str) -> str:
            r = await peer.request(
                "PUT", f"{API}/rooms/{q(room_id)}/send/{q(event_type)}/{txn}", content,
                token=bob["access_token"],
            )
            assert r.code == 200, r
            return str(r.json["event_id"])

        root = await synapse_send("m.room.message", {"msgtype": "m.text", "body": "v1"}, "s1")
        edit = await synapse_send("m.room.message", edit_of(root, "v2"), "s2")
        react = await synapse_send("m.reaction", reaction(root, "👍"), "s3")
        # Alice reacts to it from here too.
        r = await self.user_call(
            alice, "PUT", f"{API}/rooms/{q(room_id)}/send/m.reaction/h1", reaction(root, "👍")
        )
        self.assertEqual(r.code, 200, r)
        mine = r.json["event_id"]

        async def edit_on_heddle() -> bool:
            r = await self.user_call(alice, "GET", f"{API}/rooms/{q(room_id)}/event/{q(root)}")
            if r.code != 200:
                return False
            replace = r.json["unsigned"].get("m.relations", {}).get("m.replace")
            return bool(replace) and replace["event_id"] == edit

        await self.wait_for(edit_on_heddle, timeout=60, what="Synapse's edit aggregated")

        async def reactions_on_heddle() -> bool:
            r = await self.user_call(
                alice, "GET",
                f"{V1}/rooms/{q(room_id)}/relations/{q(root)}/m.annotation/m.reaction",
            )
            return r.code == 200 and {e["event_id"] for e in r.json["chunk"]} == {react, mine}

        await self.wait_for(reactions_on_heddle, timeout=60, what="both reactions listed")

    @ensure_deferred
    async def test_relations_made_here_aggregate_on_synapse(self):
        """Alice (here) edits, reacts to and replies in a thread under her message; Bob
        reads them through Synapse's client API: /relations lists every child, and the
        message's bundle (`/event` and `/messages`) carries the edit and the thread."""
        heddle, peer, alice, bob = await self.heddle_and_synapse(SYNAPSE_PW)
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        room_id = r.json["room_id"]
        r = await peer.request(
            "POST", f"{API}/join/{q(room_id)}?server_name={q(heddle.server_name)}", {},
            token=bob["access_token"],
        )
        self.assertEqual(r.code, 200, r)

        async def send(event_type: str, content: dict[str, Any], txn: str) -> str:
            r = await self.user_call(
                alice, "PUT", f"{API}/rooms/{q(room_id)}/send/{q(event_type)}/{txn}", content
            )
            assert r.code == 200, r
            return str(r.json["event_id"])

        root = await send("m.room.message", {"msgtype": "m.text", "body": "v1"}, "h1")
        edit = await send("m.room.message", edit_of(root, "v2"), "h2")
        react = await send("m.reaction", reaction(root, "👍"), "h3")
        first = await send("m.room.message", in_thread(root, "r1"), "h4")
        reply = await send("m.room.message", in_thread(root, "r2"), "h5")

        async def synapse_get(path: str) -> Any:
            r = await peer.request("GET", path, token=bob["access_token"])
            return r.json if r.code == 200 else None

        async def listed_on_synapse() -> bool:
            body = await synapse_get(f"{V1}/rooms/{q(room_id)}/relations/{q(root)}?limit=50")
            return body is not None and len(body["chunk"]) == 4

        await self.wait_for(listed_on_synapse, timeout=60, what="every relation on Synapse")
        body = await synapse_get(f"{V1}/rooms/{q(room_id)}/relations/{q(root)}?limit=50")
        # Newest first, as Synapse pages backwards by default.
        self.assertEqual([e["event_id"] for e in body["chunk"]], [reply, first, react, edit])
        annotations = await synapse_get(
            f"{V1}/rooms/{q(room_id)}/relations/{q(root)}/m.annotation/m.reaction"
        )
        self.assertEqual([e["event_id"] for e in annotations["chunk"]], [react])
        self.assertEqual(annotations["chunk"][0]["content"]["m.relates_to"]["key"], "👍")
        threaded = await synapse_get(f"{V1}/rooms/{q(room_id)}/relations/{q(root)}/m.thread")
        self.assertEqual([e["event_id"] for e in threaded["chunk"]], [reply, first])

        def check_bundle(event: dict[str, Any]) -> None:
            relations = event["unsigned"]["m.relations"]
            self.assertEqual(relations["m.replace"]["event_id"], edit)
            thread = relations["m.thread"]
            self.assertEqual(thread["latest_event"]["event_id"], reply)
            self.assertEqual(thread["count"], 2)
            self.assertFalse(thread["current_user_participated"])

        check_bundle(await synapse_get(f"{API}/rooms/{q(room_id)}/event/{q(root)}"))
        messages = await synapse_get(f"{API}/rooms/{q(room_id)}/messages?dir=b&limit=50")
        by_id = {e["event_id"]: e for e in messages["chunk"]}
        check_bundle(by_id[root])
        threads = await synapse_get(f"{V1}/rooms/{q(room_id)}/threads")
        self.assertEqual([e["event_id"] for e in threads["chunk"]], [root])
