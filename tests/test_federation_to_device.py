"""Send-to-device messaging between two Heddles: the m.direct_to_device EDU both ways,
`*` fanned out by the receiving server, duplicate message IDs stored once, and EDUs whose
sender is not the origin's user dropped.

Spec: server-server API "Send-to-device messaging" (m.direct_to_device), client-server API
"Send-to-Device messaging".
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import defer

from tests.federation_helpers import API, FederationTestCase, FedUser, Server, q
from tests.harness import on_both_engines

_txn_ids = itertools.count(1)


@on_both_engines
class FederatedToDevice(FederationTestCase):
    async def send_to_device(
        self, sender: FedUser, messages: Any, event_type: str = "org.example.ping"
    ):
        r = await self.user_call(
            sender, "PUT", f"{API}/sendToDevice/{q(event_type)}/t{next(_txn_ids)}",
            {"messages": messages},
        )
        assert r.code == 200, r

    async def inbox(self, server: Server, user_id: str, device_id: str) -> list[dict]:
        to_device = server.hs.to_device
        events, _ = await to_device.get_for_sync(
            user_id, device_id, 0, to_device.current_position
        )
        return events

    async def wait_for_inbox(
        self, server: Server, user_id: str, device_id: str, count: int, what: str
    ) -> list[dict]:
        async def arrived() -> list[dict] | None:
            events = await self.inbox(server, user_id, device_id)
            return events if len(events) >= count else None

        events: list[dict] = await self.wait_for(arrived, what=what)
        return events

    async def send_edu_from_b(self, a: Server, b: Server, content: dict) -> None:
        """A transaction from B to A carrying one m.direct_to_device EDU, as B would sign it."""
        await b.hs.federation_client.put_json(
            a.server_name,
            f"/_matrix/federation/v1/send/crafted{next(_txn_ids)}",
            {"origin": b.server_name, "origin_server_ts": 1, "pdus": [],
             "edus": [{"edu_type": "m.direct_to_device", "content": content}]},
        )

    async def test_messages_both_ways(self):
        a, b, alice, bob = await self.two_peers()
        alice_device, bob_device = await self.device_of(alice), await self.device_of(bob)
        content = {"algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": {"k": "v"}}
        await self.send_to_device(alice, {bob.user_id: {bob_device: content}},
                                  event_type="m.room.encrypted")
        events = await self.wait_for_inbox(b, bob.user_id, bob_device, 1, "alice's message on B")
        self.assertEqual(
            events, [{"sender": alice.user_id, "type": "m.room.encrypted", "content": content}]
        )
        await self.send_to_device(bob, {alice.user_id: {alice_device: {"reply": True}}})
        events = await self.wait_for_inbox(a, alice.user_id, alice_device, 1,
                                           "bob's message on A")
        self.assertEqual(
            events,
            [{"sender": bob.user_id, "type": "org.example.ping", "content": {"reply": True}}],
        )

    async def test_star_is_fanned_out_by_the_receiving_server(self):
        a, b, alice, bob = await self.two_peers()
        bob_device = await self.device_of(bob)
        _, bob_device2 = await self.second_device(bob)
        await self.send_to_device(alice, {bob.user_id: {"*": {"to": "all"}},
                                          "@nobody:" + b.server_name: {"*": {"to": "x"}}})
        for device in (bob_device, bob_device2):
            events = await self.wait_for_inbox(b, bob.user_id, device, 1, f"message on {device}")
            self.assertEqual([e["content"] for e in events], [{"to": "all"}])

    async def test_repeated_message_id_is_stored_once(self):
        a, b, alice, bob = await self.two_peers()
        alice_device = await self.device_of(alice)
        content = {"sender": bob.user_id, "type": "org.example.ping", "message_id": "m-1",
                   "messages": {alice.user_id: {alice_device: {"n": 1}}}}
        await self.send_edu_from_b(a, b, content)
        self.assertEqual(len(await self.inbox(a, alice.user_id, alice_device)), 1)
        # The same EDU again, in another transaction: ignored.
        await self.send_edu_from_b(a, b, content)
        events = await self.inbox(a, alice.user_id, alice_device)
        self.assertEqual([e["content"] for e in events], [{"n": 1}])
        # Another message ID is another message.
        await self.send_edu_from_b(a, b, {**content, "message_id": "m-2",
                                          "messages": {alice.user_id: {alice_device: {"n": 2}}}})
        events = await self.inbox(a, alice.user_id, alice_device)
        self.assertEqual([e["content"] for e in events], [{"n": 1}, {"n": 2}])

    async def test_sender_not_of_the_origin_is_dropped(self):
        a, b, alice, bob = await self.two_peers()
        alice_device = await self.device_of(alice)
        for n, sender in enumerate((
            alice.user_id,                  # A's own user, claimed by B
            "@mallory:third.example",       # a third server's user
            "not a user id",
        )):
            await self.send_edu_from_b(a, b, {
                "sender": sender, "type": "org.example.ping", "message_id": f"forged-{n}",
                "messages": {alice.user_id: {alice_device: {"forged": n}}},
            })
        # The transactions were accepted (EDU problems are not the transaction's), but
        # nothing was stored; a genuine one afterwards is.
        self.assertEqual(await self.inbox(a, alice.user_id, alice_device), [])
        await self.send_edu_from_b(a, b, {
            "sender": bob.user_id, "type": "org.example.ping", "message_id": "genuine",
            "messages": {alice.user_id: {alice_device: {"genuine": True}}},
        })
        events = await self.inbox(a, alice.user_id, alice_device)
        self.assertEqual([(e["sender"], e["content"]) for e in events],
                         [(bob.user_id, {"genuine": True})])

    async def test_malformed_edus_and_other_servers_users_are_ignored(self):
        a, b, alice, bob = await self.two_peers()
        alice_device = await self.device_of(alice)
        good = {alice.user_id: {alice_device: {"n": 1}}}
        base = {"sender": bob.user_id, "type": "org.example.ping"}
        for content in (
            base | {"messages": good},                                   # no message_id
            base | {"message_id": "", "messages": good},
            base | {"message_id": 7, "messages": good},
            base | {"message_id": "m" * 256, "messages": good},
            base | {"message_id": "m", "type": 5, "messages": good},
            {"type": "org.example.ping", "message_id": "m", "messages": good},  # no sender
            base | {"message_id": "m", "messages": [alice.user_id]},
            base | {"message_id": "m", "messages": {alice.user_id: {alice_device: "str"}}},
            base | {"message_id": "m", "messages": {alice.user_id: "str"}},
            # For B's own user: not ours to deliver.
            base | {"message_id": "m", "messages": {bob.user_id: {"*": {"n": 1}}}},
        ):
            await self.send_edu_from_b(a, b, content)
        self.assertEqual(await self.inbox(a, alice.user_id, alice_device), [])
        # The well-formed EDU, whose message_id none of the above used up, is stored.
        await self.send_edu_from_b(a, b, base | {"message_id": "m", "messages": good})
        events = await self.inbox(a, alice.user_id, alice_device)
        self.assertEqual([e["content"] for e in events], [{"n": 1}])

    async def test_remote_message_arrives_in_sync(self):
        a, b, alice, bob = await self.two_peers()
        bob_device = await self.device_of(bob)
        r = await self.user_call(bob, "GET", f"{API}/sync?timeout=0")
        assert r.code == 200, r
        since = r.json["next_batch"]
        # A long-poll on B, to be woken by the EDU from A.
        polling = defer.ensureDeferred(
            self.user_call(bob, "GET", f"{API}/sync?timeout=30000&since={q(since)}")
        )
        await self.send_to_device(alice, {bob.user_id: {bob_device: {"over": "federation"}}})
        events: list[dict] = []
        for _ in range(10):
            r = await polling
            self.assertEqual(r.code, 200, r)
            events = r.json["to_device"]["events"]
            since = r.json["next_batch"]
            if events:
                break
            # Woken by something else (a device-list or presence change): poll again.
            polling = defer.ensureDeferred(
                self.user_call(bob, "GET", f"{API}/sync?timeout=30000&since={q(since)}")
            )
        self.assertEqual(
            events,
            [{"sender": alice.user_id, "type": "org.example.ping",
              "content": {"over": "federation"}}],
        )
        r = await self.user_call(bob, "GET", f"{API}/sync?timeout=0&since={q(since)}")
        self.assertEqual(r.json["to_device"]["events"], [])
