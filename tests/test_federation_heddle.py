"""Two Heddle servers federating over TLS on loopback: joins both ways, messages and state
flowing both ways, invites and leaves, and delivery resuming after a restart."""

from __future__ import annotations

from tests.federation_helpers import API, FederationTestCase, q
from tests.harness import ensure_deferred, on_both_engines


@on_both_engines
class TwoHeddles(FederationTestCase):
    async def _shared_room(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        alice = await self.fed_user(a, "alice")
        bob = await self.fed_user(b, "bob")
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        assert r.code == 200, r
        room_id = r.json["room_id"]
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(a.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        return a, b, alice, bob, room_id

    @ensure_deferred
    async def test_join_and_talk_both_ways(self):
        a, b, alice, bob, room_id = await self._shared_room()
        # The join reached the resident server.
        await self.wait_for(
            lambda: self._is(self.membership(alice, room_id, bob.user_id), "join"),
            what="bob's join on A",
        )
        await self.send_text(alice, room_id, "hello from A", "t1")
        await self.wait_for(
            lambda: self._contains(self.timeline_bodies(bob, room_id), "hello from A"),
            what="A's message on B",
        )
        await self.send_text(bob, room_id, "hello from B", "t2")
        await self.wait_for(
            lambda: self._contains(self.timeline_bodies(alice, room_id), "hello from B"),
            what="B's message on A",
        )
        # State from B reaches A.
        r = await self.user_call(
            alice, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.topic", {"topic": "federated"}
        )
        self.assertEqual(r.code, 200, r)

        async def topic_on_b():
            r = await self.user_call(bob, "GET", f"{API}/rooms/{q(room_id)}/state/m.room.topic")
            return r.code == 200 and r.json.get("topic") == "federated"

        await self.wait_for(topic_on_b, what="topic on B")

    @ensure_deferred
    async def test_room_on_b_joined_from_a(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        alice = await self.fed_user(a, "alice")
        bob = await self.fed_user(b, "bob")
        r = await self.user_call(bob, "POST", f"{API}/createRoom", {"preset": "public_chat",
                                                                     "room_alias_name": "lobby"})
        room_id = r.json["room_id"]
        # Through the alias: a directory query to B.
        r = await self.user_call(alice, "POST", f"{API}/join/{q('#lobby:' + b.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["room_id"], room_id)
        await self.send_text(alice, room_id, "from A", "x1")
        await self.wait_for(
            lambda: self._contains(self.timeline_bodies(bob, room_id), "from A"),
            what="A's message on B",
        )

    @ensure_deferred
    async def test_invite_and_leave(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        alice = await self.fed_user(a, "alice")
        bob = await self.fed_user(b, "bob")
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "private_chat"})
        room_id = r.json["room_id"]
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/invite",
                                 {"user_id": bob.user_id})
        self.assertEqual(r.code, 200, r)

        async def invited():
            r = await self.user_call(bob, "GET", f"{API}/sync")
            return room_id in r.json.get("rooms", {}).get("invite", {})

        await self.wait_for(invited, what="invite in B's sync")
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}", {})
        self.assertEqual(r.code, 200, r)
        await self.wait_for(
            lambda: self._is(self.membership(alice, room_id, bob.user_id), "join"),
            what="bob joined on A",
        )
        r = await self.user_call(bob, "POST", f"{API}/rooms/{q(room_id)}/leave", {})
        self.assertEqual(r.code, 200, r)
        await self.wait_for(
            lambda: self._is(self.membership(alice, room_id, bob.user_id), "leave"),
            what="bob left on A",
        )

    @ensure_deferred
    async def test_delivery_resumes_after_restart(self):
        a, b, alice, bob, room_id = await self._shared_room()
        await self.wait_for(
            lambda: self._is(self.membership(alice, room_id, bob.user_id), "join"),
            what="bob's join on A",
        )
        await self.stop_peer(b)
        for i in range(3):
            await self.send_text(alice, room_id, f"while B was down {i}", f"d{i}")
        b = await self.restart_peer(b)
        bob.server = b
        await self.wait_for(
            lambda: self._contains(self.timeline_bodies(bob, room_id), "while B was down 2"),
            timeout=60,
            what="queued messages on B after restart",
        )

    @ensure_deferred
    async def test_history_backfilled_from_the_other_side(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        alice = await self.fed_user(a, "alice")
        bob = await self.fed_user(b, "bob")
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        room_id = r.json["room_id"]
        r = await self.user_call(
            alice, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.history_visibility",
            {"history_visibility": "world_readable"},
        )
        self.assertEqual(r.code, 200, r)
        for i in range(15):
            await self.send_text(alice, room_id, f"old {i}", f"o{i}")
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(a.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        # B holds only the state and the join; scrolling back fetches the rest from A.
        bodies = await self.timeline_bodies(bob, room_id)
        self.assertEqual(bodies, [f"old {i}" for i in range(15)])

    async def _is(self, awaitable, expected):
        return (await awaitable) == expected

    async def _contains(self, awaitable, expected):
        return expected in (await awaitable)
