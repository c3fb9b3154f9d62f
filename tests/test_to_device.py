"""Send-to-device messaging on one server: PUT /sendToDevice/{eventType}/{txnId}, the
per-device inbox, and what /sync gets from it.

Spec: api/client-server/to_device.yaml; client-server API "Send-to-Device messaging"
(delivered once, deleted when the client syncs with the next token, at most 100 per sync).
"""

from __future__ import annotations

import itertools
from typing import Any

from nio import (
    SyncResponse,
    ToDeviceError,
    ToDeviceMessage,
    ToDeviceResponse,
    UnknownToDeviceEvent,
)
from twisted.internet import defer, reactor

from homeserver.app import HomeServer
from homeserver.e2e.to_device import MAX_EDU_BYTES
from homeserver.events.canonical import encode_canonical_json
from homeserver.sync.tokens import StreamToken
from tests.harness import nio, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

_txn_ids = itertools.count(1)


def to_device_path(event_type: str, txn_id: str) -> str:
    return f"{API}/sendToDevice/{q(event_type)}/{q(txn_id)}"


@on_both_engines
class SendToDeviceTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def send_to_device(
        self, sender: User, messages: Any, event_type: str = "org.example.ping",
        txn_id: str | None = None,
    ):
        return await self.request(
            "PUT",
            to_device_path(event_type, txn_id or f"t{next(_txn_ids)}"),
            {"messages": messages},
            token=sender.token,
        )

    async def login_again(self, localpart: str) -> User:
        session = await self.login(localpart)
        return User(session["user_id"], session["access_token"], session["device_id"])

    async def inbox(self, user: User, since: int = 0, limit: int = 100):
        """What the user's device would get from /sync now (without acknowledging)."""
        return await self.hs.to_device.get_for_sync(
            user.user_id, user.device_id, since, self.hs.to_device.current_position, limit
        )

    async def test_message_delivered_with_sender_type_and_content(self):
        content = {"body": "ping", "nested": {"n": [1, 2, 3]}, "ünïcode": "✓"}
        r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: content}},
                            event_type="m.room_key_request")
        self.assertEqual((r.code, r.json), (200, {}))
        events, position = await self.inbox(self.bob)
        self.assertEqual(
            events,
            [{"sender": self.alice.user_id, "type": "m.room_key_request", "content": content}],
        )
        self.assertEqual(position, self.hs.to_device.current_position)
        self.assertGreater(position, 0)
        # Only the addressed device: alice's own device got nothing.
        self.assertEqual((await self.inbox(self.alice))[0], [])

    async def test_nio_client_sends_to_device(self):
        client = self.nio_client(self.alice)
        message = ToDeviceMessage("org.example.nio", self.bob.user_id, self.bob.device_id,
                                  {"hello": "bob"})
        resp = await nio(client.to_device(message, tx_id="nio-1"))
        self.assertIsInstance(resp, ToDeviceResponse, resp)
        events, _ = await self.inbox(self.bob)
        self.assertEqual(
            events, [{"sender": self.alice.user_id, "type": "org.example.nio",
                      "content": {"hello": "bob"}}]
        )

    async def test_star_reaches_every_device_of_the_user(self):
        bob2 = await self.login_again("bob")
        r = await self.send_to_device(self.alice, {self.bob.user_id: {"*": {"to": "all"}}})
        self.assertEqual(r.code, 200, r)
        for device in (self.bob, bob2):
            events, _ = await self.inbox(device)
            self.assertEqual([e["content"] for e in events], [{"to": "all"}])

    async def test_named_device_wins_over_star_in_the_same_request(self):
        bob2 = await self.login_again("bob")
        r = await self.send_to_device(
            self.alice,
            {self.bob.user_id: {"*": {"to": "all"}, bob2.device_id: {"to": "bob2"}}},
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual([e["content"] for e in (await self.inbox(self.bob))[0]], [{"to": "all"}])
        self.assertEqual([e["content"] for e in (await self.inbox(bob2))[0]], [{"to": "bob2"}])

    async def test_star_does_not_reach_devices_created_later(self):
        r = await self.send_to_device(self.alice, {self.bob.user_id: {"*": {"n": 1}}})
        self.assertEqual(r.code, 200, r)
        bob2 = await self.login_again("bob")
        self.assertEqual((await self.inbox(bob2))[0], [])
        self.assertEqual(len((await self.inbox(self.bob))[0]), 1)

    async def test_retried_transaction_is_delivered_once(self):
        messages = {self.bob.user_id: {self.bob.device_id: {"n": 1}}}
        first = await self.send_to_device(self.alice, messages, txn_id="same")
        again = await self.send_to_device(self.alice, messages, txn_id="same")
        self.assertEqual((first.code, first.json), (200, {}))
        self.assertEqual((again.code, again.json), (200, {}))
        events, _ = await self.inbox(self.bob)
        self.assertEqual(len(events), 1)
        # Even a retry with another body is the same request (the spec: same endpoint,
        # same device, same transaction ID).
        r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: {"n": 2}}},
                            txn_id="same")
        self.assertEqual(r.code, 200, r)
        self.assertEqual([e["content"] for e in (await self.inbox(self.bob))[0]], [{"n": 1}])

    async def test_transaction_ids_are_scoped_to_device_and_event_type(self):
        messages = {self.bob.user_id: {self.bob.device_id: {"n": 1}}}
        alice2 = await self.login_again("alice")
        for sender, event_type in (
            (self.alice, "org.example.a"),
            (alice2, "org.example.a"),
            (self.alice, "org.example.b"),
        ):
            r = await self.send_to_device(sender, messages, event_type=event_type, txn_id="shared")
            self.assertEqual(r.code, 200, r)
        events, _ = await self.inbox(self.bob)
        self.assertEqual(len(events), 3)

    async def test_acknowledged_messages_are_deleted(self):
        for n in range(2):
            r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: {"n": n}}})
            self.assertEqual(r.code, 200, r)
        events, position = await self.inbox(self.bob)
        self.assertEqual([e["content"] for e in events], [{"n": 0}, {"n": 1}])
        # Not acknowledged yet (the client may not have received the response): again.
        events, _ = await self.inbox(self.bob)
        self.assertEqual(len(events), 2)
        # A sync from `position` acknowledges them: gone for good.
        events, next_position = await self.inbox(self.bob, since=position)
        self.assertEqual(events, [])
        self.assertEqual(next_position, position)
        self.assertEqual(await self.hs.device_inbox_store.count_messages(
            self.bob.user_id, self.bob.device_id), 0)
        self.assertEqual((await self.inbox(self.bob))[0], [])
        # A later message is delivered after the acknowledged ones.
        r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: {"n": 2}}})
        events, _ = await self.inbox(self.bob, since=position)
        self.assertEqual([e["content"] for e in events], [{"n": 2}])

    async def test_limit_returns_the_oldest_and_the_position_of_the_last(self):
        for n in range(5):
            r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: {"n": n}}})
            self.assertEqual(r.code, 200, r)
        current = self.hs.to_device.current_position
        seen: list[int] = []
        since = 0
        while True:
            events, position = await self.inbox(self.bob, since=since, limit=2)
            seen.extend(e["content"]["n"] for e in events)
            if len(events) < 2:
                self.assertEqual(position, current)
                break
            self.assertLess(position, current)
            since = position
        self.assertEqual(seen, [0, 1, 2, 3, 4])

    async def test_messages_after_up_to_wait_for_the_next_sync(self):
        r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: {"n": 1}}})
        up_to = self.hs.to_device.current_position
        r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: {"n": 2}}})
        self.assertEqual(r.code, 200, r)
        events, position = await self.hs.to_device.get_for_sync(
            self.bob.user_id, self.bob.device_id, 0, up_to
        )
        self.assertEqual(([e["content"] for e in events], position), ([{"n": 1}], up_to))

    async def test_token_from_beyond_the_stream_acknowledges_nothing(self):
        r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: {"n": 1}}})
        self.assertEqual(r.code, 200, r)
        current = self.hs.to_device.current_position
        events, position = await self.hs.to_device.get_for_sync(
            self.bob.user_id, self.bob.device_id, current + 1000, current
        )
        self.assertEqual(([e["content"] for e in events], position), ([{"n": 1}], current))

    async def test_sending_wakes_the_recipient(self):
        before = self.hs.notifier.position(self.bob.user_id)
        r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: {"n": 1}}})
        self.assertEqual(r.code, 200, r)
        self.assertGreater(self.hs.notifier.position(self.bob.user_id), before)

    async def test_unknown_users_and_devices_are_ignored(self):
        r = await self.send_to_device(
            self.alice,
            {
                "@nobody:test.heddle": {"*": {"n": 1}, "DEV": {"n": 1}},
                self.bob.user_id: {"NOSUCHDEVICE": {"n": 2}, self.bob.device_id: {"n": 3}},
            },
        )
        self.assertEqual((r.code, r.json), (200, {}))
        self.assertEqual([e["content"] for e in (await self.inbox(self.bob))[0]], [{"n": 3}])
        self.assertEqual(await self.hs.device_inbox_store.count_messages(
            "@nobody:test.heddle", "DEV"), 0)

    async def queued_edus(self, destination: str) -> list[dict]:
        batch = await self.hs.federation_queue_store.get_next_batch(destination)
        return [e.content for e in batch.edus if e.edu_type == "m.direct_to_device"]

    async def test_remote_users_get_one_edu_per_server(self):
        r = await self.send_to_device(
            self.alice,
            {
                "@carol:one.example": {"C1": {"n": 1}},
                "@dave:one.example": {"*": {"n": 2}},
                "@erin:two.example": {"E1": {"n": 3}},
                self.bob.user_id: {self.bob.device_id: {"n": 4}},
            },
            event_type="m.room.encrypted",
        )
        self.assertEqual(r.code, 200, r)
        [one] = await self.queued_edus("one.example")
        [two] = await self.queued_edus("two.example")
        self.assertEqual(one["messages"], {"@carol:one.example": {"C1": {"n": 1}},
                                           "@dave:one.example": {"*": {"n": 2}}})
        self.assertEqual(two["messages"], {"@erin:two.example": {"E1": {"n": 3}}})
        for edu in (one, two):
            self.assertEqual((edu["sender"], edu["type"]), (self.alice.user_id,
                                                             "m.room.encrypted"))
            self.assertIsInstance(edu["message_id"], str)
            self.assertTrue(0 < len(edu["message_id"]) <= 32)
        self.assertNotEqual(one["message_id"], two["message_id"])
        # Local recipients are not sent anywhere.
        self.assertEqual(await self.queued_edus("test.heddle"), [])
        self.assertEqual([e["content"] for e in (await self.inbox(self.bob))[0]], [{"n": 4}])
        # A retry queues nothing more.
        r = await self.send_to_device(self.alice, {"@erin:two.example": {"E1": {"n": 3}}},
                                      event_type="m.room.encrypted", txn_id="remote-retry")
        r = await self.send_to_device(self.alice, {"@erin:two.example": {"E1": {"n": 3}}},
                                      event_type="m.room.encrypted", txn_id="remote-retry")
        self.assertEqual(len(await self.queued_edus("two.example")), 2)

    async def test_edu_too_large_for_one_is_split(self):
        chunk = {"data": "z" * 30_000}
        messages = {"@carol:one.example": {f"D{n}": chunk for n in range(5)},
                    "@dave:one.example": {"*": chunk}}
        r = await self.send_to_device(self.alice, messages)
        self.assertEqual(r.code, 200, r)
        edus = await self.queued_edus("one.example")
        self.assertGreater(len(edus), 1)
        self.assertEqual(len({e["message_id"] for e in edus}), len(edus))
        merged: dict = {}
        for edu in edus:
            self.assertLessEqual(len(encode_canonical_json(
                {"edu_type": "m.direct_to_device", "content": edu})), MAX_EDU_BYTES)
            for user_id, by_device in edu["messages"].items():
                merged.setdefault(user_id, {}).update(by_device)
        self.assertEqual(merged, messages)

    async def test_empty_messages_is_accepted(self):
        r = await self.send_to_device(self.alice, {})
        self.assertEqual((r.code, r.json), (200, {}))

    # ----- sizes -------------------------------------------------------------------------------

    async def test_oversized_message_is_refused_and_nothing_is_delivered(self):
        big = {"data": "x" * MAX_EDU_BYTES}
        r = await self.send_to_device(
            self.alice,
            {self.bob.user_id: {self.bob.device_id: big}, self.alice.user_id: {"*": {"n": 1}}},
        )
        self.assertError(r, 413, "M_TOO_LARGE")
        self.assertEqual((await self.inbox(self.bob))[0], [])
        self.assertEqual((await self.inbox(self.alice))[0], [])
        # The refused transaction ID was not used up.
        r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: {"n": 1}}},
                            txn_id="after-413")
        self.assertEqual(r.code, 200, r)

    async def test_message_just_under_the_limit_is_accepted(self):
        # Room for the EDU around it (sender, type, message_id, user and device IDs).
        big = {"data": "x" * (MAX_EDU_BYTES - 400)}
        r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: big}})
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.inbox(self.bob))[0][0]["content"], big)

    async def test_many_messages_each_under_the_limit_are_accepted(self):
        # 10 devices x 30 KB: far over 64 KiB together, fine one by one.
        devices = [self.bob]
        for _ in range(9):
            devices.append(await self.login_again("bob"))
        chunk = {"data": "y" * 30_000}
        r = await self.send_to_device(self.alice, {self.bob.user_id: {d.device_id: chunk for d in devices}})
        self.assertEqual(r.code, 200, r)
        for device in devices:
            self.assertEqual((await self.inbox(device))[0][0]["content"], chunk)

    # ----- bad requests ------------------------------------------------------------------------

    async def test_not_json_is_refused(self):
        r = await self.request("PUT", to_device_path("m.x", "bad1"), raw=b"{not json",
                               token=self.alice.token)
        self.assertError(r, 400, "M_NOT_JSON")

    async def test_body_not_an_object_is_refused(self):
        r = await self.request("PUT", to_device_path("m.x", "bad2"), [1, 2],
                               token=self.alice.token)
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_missing_messages_is_refused(self):
        r = await self.request("PUT", to_device_path("m.x", "bad3"), {"msgs": {}},
                               token=self.alice.token)
        body = self.assertError(r, 400, "M_BAD_JSON")
        self.assertIn("messages", body["error"])
        r = await self.request("PUT", to_device_path("m.x", "bad3b"), raw=b"",
                               token=self.alice.token)
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_malformed_messages_are_refused(self):
        for n, messages in enumerate((
            [],
            {self.bob.user_id: []},
            {self.bob.user_id: {self.bob.device_id: "not an object"}},
            {self.bob.user_id: {self.bob.device_id: None}},
        )):
            r = await self.send_to_device(self.alice, messages, txn_id=f"malformed{n}")
            self.assertError(r, 400, "M_BAD_JSON")
        self.assertEqual((await self.inbox(self.bob))[0], [])

    async def test_key_that_is_not_a_user_id_is_refused(self):
        for n, user_id in enumerate(("bob", "@bob", "@:test.heddle", "@bob:bad host")):
            r = await self.send_to_device(
                self.alice,
                {user_id: {"D": {}}, self.bob.user_id: {self.bob.device_id: {"n": 1}}},
                txn_id=f"baduser{n}",
            )
            self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual((await self.inbox(self.bob))[0], [])

    async def test_overlong_event_type_or_transaction_id_is_refused(self):
        messages = {self.bob.user_id: {self.bob.device_id: {"n": 1}}}
        r = await self.send_to_device(self.alice, messages, event_type="t" * 256)
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.send_to_device(self.alice, messages, txn_id="x" * 256)
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual((await self.inbox(self.bob))[0], [])
        r = await self.send_to_device(self.alice, messages, event_type="t" * 255,
                                      txn_id="x" * 255)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(len((await self.inbox(self.bob))[0]), 1)

    async def test_requires_an_access_token(self):
        r = await self.request("PUT", to_device_path("m.x", "noauth"), {"messages": {}})
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_nio_error_for_bad_recipient(self):
        client = self.nio_client(self.alice)
        message = ToDeviceMessage("org.example.nio", "not-a-user", "D", {})
        resp = await nio(client.to_device(message, tx_id="nio-bad"))
        self.assertIsInstance(resp, ToDeviceError, resp)
        self.assertEqual(resp.status_code, "M_INVALID_PARAM")

    # ----- positions ---------------------------------------------------------------------------

    async def test_positions_are_not_reused_after_a_restart(self):
        r = await self.send_to_device(self.alice, {self.bob.user_id: {self.bob.device_id: {"n": 1}}})
        self.assertEqual(r.code, 200, r)
        # Another send with no local recipient still takes (and records) a position.
        r = await self.send_to_device(self.alice, {"@nobody:test.heddle": {"*": {}}})
        self.assertEqual(r.code, 200, r)
        position = self.hs.to_device.current_position
        # Delivered and acknowledged: the inbox is empty.
        await self.inbox(self.bob)
        await self.inbox(self.bob, since=position)
        self.assertEqual(
            await self.hs.device_inbox_store.count_messages(self.bob.user_id,
                                                            self.bob.device_id), 0)
        # Pruning keeps the highest position.
        await self.hs.device_inbox_store.prune(self.hs.clock.time_msec() + 1)
        restarted = HomeServer(self.hs.config, reactor, writer_lock=False)
        await restarted.setup()
        try:
            self.assertEqual(restarted.to_device.current_position, position)
        finally:
            await restarted.stop()

    async def test_pruned_transaction_ids_are_forgotten(self):
        messages = {self.bob.user_id: {self.bob.device_id: {"n": 1}}}
        r = await self.send_to_device(self.alice, messages, txn_id="old")
        self.assertEqual(r.code, 200, r)
        await self.hs.to_device.prune()
        # Less than a day old: still remembered.
        r = await self.send_to_device(self.alice, messages, txn_id="old")
        self.assertEqual(len((await self.inbox(self.bob))[0]), 1)
        await self.hs.device_inbox_store.prune(self.hs.clock.time_msec() + 1)
        r = await self.send_to_device(self.alice, messages, txn_id="old")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(len((await self.inbox(self.bob))[0]), 2)


@on_both_engines
class ToDeviceSyncTests(RoomTestCase):
    """The `to_device` section of /sync, over HTTP."""

    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def send_to_device(self, n: int, device_id: str | None = None) -> None:
        r = await self.request(
            "PUT",
            to_device_path("org.example.ping", f"s{next(_txn_ids)}"),
            {"messages": {self.bob.user_id: {device_id or self.bob.device_id: {"n": n}}}},
            token=self.alice.token,
        )
        assert r.code == 200, r

    async def sync(self, user: User, since: str | None = None, timeout: int = 0):
        path = f"{API}/sync?timeout={timeout}"
        if since is not None:
            path += f"&since={q(since)}"
        r = await self.request("GET", path, token=user.token)
        assert r.code == 200, r
        return r.json

    def contents(self, body: dict) -> list:
        return [e["content"] for e in body.get("to_device", {}).get("events", [])]

    async def test_delivered_until_the_next_token_is_used(self):
        await self.send_to_device(1)
        first = await self.sync(self.bob)
        self.assertEqual(first["to_device"]["events"], [
            {"sender": self.alice.user_id, "type": "org.example.ping", "content": {"n": 1}}
        ])
        # The response may have been lost: without its token, the message comes again.
        self.assertEqual(self.contents(await self.sync(self.bob)), [{"n": 1}])
        # Syncing with next_batch acknowledges it: not sent again, and deleted.
        second = await self.sync(self.bob, first["next_batch"])
        self.assertEqual(self.contents(second), [])
        self.assertEqual(await self.hs.device_inbox_store.count_messages(
            self.bob.user_id, self.bob.device_id), 0)
        self.assertEqual(self.contents(await self.sync(self.bob, first["next_batch"])), [])
        self.assertEqual(self.contents(await self.sync(self.bob)), [])
        # New messages come after the acknowledged ones, once.
        await self.send_to_device(2)
        third = await self.sync(self.bob, second["next_batch"])
        self.assertEqual(self.contents(third), [{"n": 2}])
        self.assertEqual(self.contents(await self.sync(self.bob, third["next_batch"])), [])

    async def test_only_the_addressed_device_gets_it(self):
        bob2 = await self.login("bob")
        await self.send_to_device(1, device_id=bob2["device_id"])
        self.assertEqual(self.contents(await self.sync(self.bob)), [])
        other = User(bob2["user_id"], bob2["access_token"], bob2["device_id"])
        self.assertEqual(self.contents(await self.sync(other)), [{"n": 1}])

    async def test_more_than_100_come_in_order_over_several_syncs(self):
        for n in range(105):
            await self.send_to_device(n)
        current = self.hs.to_device.current_position
        first = await self.sync(self.bob)
        self.assertEqual(self.contents(first), [{"n": n} for n in range(100)])
        # next_batch stops at the last message delivered, so the rest are not skipped.
        token = StreamToken.parse(first["next_batch"])
        self.assertLess(token.to_device, current)
        second = await self.sync(self.bob, first["next_batch"])
        self.assertEqual(self.contents(second), [{"n": n} for n in range(100, 105)])
        self.assertEqual(StreamToken.parse(second["next_batch"]).to_device, current)
        self.assertEqual(self.contents(await self.sync(self.bob, second["next_batch"])), [])

    async def test_long_poll_is_woken_by_a_message(self):
        first = await self.sync(self.bob)
        started = reactor.seconds()
        polling = defer.ensureDeferred(self.sync(self.bob, first["next_batch"], timeout=20_000))
        await self.send_to_device(7)
        body = await polling
        self.assertEqual(self.contents(body), [{"n": 7}])
        self.assertLess(reactor.seconds() - started, 10)

    async def test_nio_client_receives_to_device_events(self):
        await self.send_to_device(1)
        client = self.nio_client(self.bob)
        resp = await nio(client.sync(timeout=0))
        self.assertIsInstance(resp, SyncResponse, resp)
        [event] = resp.to_device_events
        self.assertIsInstance(event, UnknownToDeviceEvent)
        self.assertEqual((event.sender, event.type, event.source["content"]),
                         (self.alice.user_id, "org.example.ping", {"n": 1}))
        # nio syncs on from next_batch: the message is acknowledged and not seen again.
        resp = await nio(client.sync(timeout=0))
        self.assertIsInstance(resp, SyncResponse, resp)
        self.assertEqual(resp.to_device_events, [])
