"""Interop with a real Synapse (from PyPI, in its own virtualenv) on loopback over TLS:
rooms created on either side and joined from the other, messages and state both ways,
invites, leaves, a remote profile lookup, and delivery after a restart."""

from __future__ import annotations

from typing import Any

from tests.federation_helpers import API, FederationTestCase, FedUser, q
from tests.harness import ensure_deferred, on_both_engines
from tests.synapse_peer import SynapsePeer

PW = "synapse-test-password"


@on_both_engines
class SynapseInterop(FederationTestCase):
    timeout = 300

    async def _setup(self) -> tuple[Any, SynapsePeer, FedUser, dict[str, Any]]:
        return await self.heddle_and_synapse(PW)

    async def _synapse(self, peer: SynapsePeer, user: dict[str, Any], method: str, path: str,
                       body: Any = None) -> Any:
        return await peer.request(method, path, body, token=user["access_token"])

    async def _synapse_bodies(self, peer: SynapsePeer, user: dict[str, Any], room_id: str
                              ) -> list[str]:
        r = await self._synapse(peer, user, "GET",
                                f"{API}/rooms/{q(room_id)}/messages?dir=b&limit=50")
        if r.code != 200:
            return []
        return [e["content"].get("body") for e in r.json["chunk"]
                if e["type"] == "m.room.message"]

    @ensure_deferred
    async def test_heddle_joins_synapse_room_and_talks(self):
        heddle, peer, alice, bob = await self._setup()
        r = await self._synapse(peer, bob, "POST", f"{API}/createRoom",
                                {"preset": "public_chat", "room_alias_name": "hall"})
        self.assertEqual(r.code, 200, r)
        room_id = r.json["room_id"]
        await self._synapse(peer, bob, "PUT", f"{API}/rooms/{q(room_id)}/send/m.room.message/s0",
                            {"msgtype": "m.text", "body": "before alice"})
        # Through the alias (a federation directory query), then make_join/send_join.
        r = await self.user_call(alice, "POST", f"{API}/join/{q('#hall:' + peer.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["room_id"], room_id)

        async def alice_joined_on_synapse():
            r = await self._synapse(peer, bob, "GET",
                                    f"{API}/rooms/{q(room_id)}/state/m.room.member/{q(alice.user_id)}")
            return r.code == 200 and r.json.get("membership") == "join"

        await self.wait_for(alice_joined_on_synapse, what="alice's join on Synapse")
        await self.send_text(alice, room_id, "hi from heddle", "h1")

        async def on_synapse():
            return "hi from heddle" in await self._synapse_bodies(peer, bob, room_id)

        await self.wait_for(on_synapse, timeout=60, what="Heddle's message on Synapse")
        r = await self._synapse(peer, bob, "PUT", f"{API}/rooms/{q(room_id)}/send/m.room.message/s1",
                                {"msgtype": "m.text", "body": "hi from synapse"})
        self.assertEqual(r.code, 200, r)
        await self.wait_for(
            lambda: self._contains(self.timeline_bodies(alice, room_id), "hi from synapse"),
            timeout=60, what="Synapse's message on Heddle",
        )
        # State from Synapse reaches Heddle.
        await self._synapse(peer, bob, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.topic",
                            {"topic": "interop"})

        async def topic_on_heddle():
            r = await self.user_call(alice, "GET", f"{API}/rooms/{q(room_id)}/state/m.room.topic")
            return r.code == 200 and r.json.get("topic") == "interop"

        await self.wait_for(topic_on_heddle, timeout=60, what="Synapse's topic on Heddle")
        # A remote profile lookup.
        await self._synapse(peer, bob, "PUT", f"{API}/profile/{q(bob['user_id'])}/displayname",
                            {"displayname": "Bob on Synapse"})
        r = await self.user_call(alice, "GET", f"{API}/profile/{q(bob['user_id'])}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json.get("displayname"), "Bob on Synapse")
        # Leaving.
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/leave", {})
        self.assertEqual(r.code, 200, r)

        async def alice_left_on_synapse():
            r = await self._synapse(peer, bob, "GET",
                                    f"{API}/rooms/{q(room_id)}/state/m.room.member/{q(alice.user_id)}")
            return r.code == 200 and r.json.get("membership") == "leave"

        await self.wait_for(alice_left_on_synapse, timeout=60, what="alice's leave on Synapse")

    @ensure_deferred
    async def test_synapse_joins_heddle_room_invite_and_restart(self):
        heddle, peer, alice, bob = await self._setup()
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "private_chat"})
        room_id = r.json["room_id"]
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/invite",
                                 {"user_id": bob["user_id"]})
        self.assertEqual(r.code, 200, r)

        async def invited_on_synapse():
            r = await self._synapse(peer, bob, "GET", f"{API}/sync?timeout=0")
            return room_id in r.json.get("rooms", {}).get("invite", {})

        await self.wait_for(invited_on_synapse, timeout=60, what="invite on Synapse")
        r = await self._synapse(peer, bob, "POST",
                                f"{API}/join/{q(room_id)}?server_name={q(heddle.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        await self.wait_for(
            lambda: self._is(self.membership(alice, room_id, bob["user_id"]), "join"),
            timeout=60, what="bob's join on Heddle",
        )
        r = await self._synapse(peer, bob, "PUT", f"{API}/rooms/{q(room_id)}/send/m.room.message/b1",
                                {"msgtype": "m.text", "body": "synapse in heddle's room"})
        self.assertEqual(r.code, 200, r)
        await self.wait_for(
            lambda: self._contains(self.timeline_bodies(alice, room_id), "synapse in heddle's room"),
            timeout=60, what="Synapse's message on Heddle",
        )
        # Synapse goes away; Heddle queues; Synapse comes back and gets it.
        await peer.stop()
        await self.send_text(alice, room_id, "while synapse was down", "h2")
        await peer.restart()

        async def delivered():
            return "while synapse was down" in await self._synapse_bodies(peer, bob, room_id)

        await self.wait_for(delivered, timeout=90, what="queued message on Synapse after restart")

    @ensure_deferred
    async def test_joins_rooms_of_every_version(self):
        heddle, peer, alice, bob = await self._setup()
        for version in ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"):
            r = await self._synapse(peer, bob, "POST", f"{API}/createRoom",
                                    {"preset": "public_chat", "room_version": version})
            self.assertEqual(r.code, 200, (version, r))
            room_id = r.json["room_id"]
            await self._synapse(
                peer, bob, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.topic",
                {"topic": f"v{version}"},
            )
            r = await self.user_call(
                alice, "POST", f"{API}/join/{q(room_id)}?via={q(peer.server_name)}", {}
            )
            self.assertEqual(r.code, 200, (version, r))
            r = await self.user_call(alice, "GET", f"{API}/rooms/{q(room_id)}/state/m.room.topic")
            self.assertEqual(r.json.get("topic"), f"v{version}", (version, r))
            await self.send_text(alice, room_id, f"hello v{version}", f"v{version}")

            async def arrived(room_id: str = room_id, version: str = version) -> bool:
                return f"hello v{version}" in await self._synapse_bodies(peer, bob, room_id)

            await self.wait_for(arrived, timeout=60, what=f"message in a v{version} room")

