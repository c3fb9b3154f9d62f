"""Two Heddle servers federating over TLS on loopback: joins both ways, messages and state
flowing both ways, invites and leaves, and delivery resuming after a restart."""

from __future__ import annotations

from tests.federation_helpers import API, FederationTestCase, q
from tests.harness import ensure_deferred, on_both_engines


@on_both_engines
class TwoHeddles(FederationTestCase):
    async def _shared_room(self):
        a, b, alice, bob = await self.two_peers()
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
        a, b, alice, bob = await self.two_peers()
        r = await self.user_call(bob, "POST", f"{API}/createRoom", {"preset": "public_chat",
                                                                     "room_alias_name": "lobby"})
        room_id = r.json["room_id"]
        # Through the alias: a directory query to B.
        r = await self.user_call(alice, "POST", f"{API}/join/{q('#lobby:' + b.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["room_id"], room_id)
        await self.send_text(alice, room_id, "greetings from A", "x1")
        await self.wait_for(
            lambda: self._contains(self.timeline_bodies(bob, room_id), "greetings from A"),
            what="A's message on B",
        )
        # B indexed the event it received for search.
        self.assertEqual(await self.search_bodies(bob, "greetings"), ["greetings from A"])

    @ensure_deferred
    async def test_invite_and_leave(self):
        a, b, alice, bob = await self.two_peers()
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
        a, b, alice, bob = await self.two_peers()
        room_id = await self.history_then_join(alice, bob, 15)
        # B holds only the state and the join; scrolling back fetches the rest from A.
        bodies = await self.timeline_bodies(bob, room_id)
        self.assertEqual(bodies, [f"old {i}" for i in range(15)])
        # What was backfilled is found by a search on B.
        found = await self.search_bodies(bob, "old")
        self.assertCountEqual(found, [f"old {i}" for i in range(15)])

    @ensure_deferred
    async def test_outliers_after_a_restart(self):
        # Outlier positions count down from the lowest one stored, also after a restart.
        a, b, alice, bob, room_id = await self._shared_room()
        b = await self.restart_peer(b)
        bob.server = b
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        second = r.json["room_id"]
        r = await self.user_call(bob, "POST", f"{API}/join/{q(second)}?via={q(a.server_name)}", {})
        self.assertEqual(r.code, 200, r)

    @ensure_deferred
    async def test_history_before_joining_is_served_redacted(self):
        a, b, alice, bob = await self.two_peers()
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        room_id = r.json["room_id"]
        await self.user_call(
            alice, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.history_visibility",
            {"history_visibility": "joined"},
        )
        await self.send_text(alice, room_id, "before bob", "s1")
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(a.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        after = await self.send_text(alice, room_id, "after bob", "s2")
        response = await b.hs.federation_client.get_json(
            a.server_name,
            f"/_matrix/federation/v1/backfill/{q(room_id)}",
            args={"v": [after], "limit": ["20"]},
        )
        contents = [ev["content"] for ev in response["pdus"] if ev["type"] == "m.room.message"]
        self.assertIn({"msgtype": "m.text", "body": "after bob"}, contents)
        self.assertIn({}, contents)  # "before bob", redacted for B
        self.assertNotIn({"msgtype": "m.text", "body": "before bob"}, contents)
        # B's own user sees none of it either, once "after bob" has arrived.
        await self.wait_for(
            lambda: self._contains(self.timeline_bodies(bob, room_id), "after bob"),
            what="the later message on B",
        )
        self.assertEqual(await self.timeline_bodies(bob, room_id), ["after bob"])

    @ensure_deferred
    async def test_events_arriving_during_a_join_wait_for_it(self):
        from twisted.internet import reactor, task

        a, b, alice, bob = await self.two_peers()
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        room_id = r.json["room_id"]
        membership = b.hs.federation_membership
        complete = membership._complete_join

        async def slow_complete(*args):
            # A has accepted the join: it now sends B a message, which must not be lost
            # while B is still storing the room.
            await self.send_text(alice, room_id, "during the join", "dj")
            await task.deferLater(reactor, 0.5, lambda: None)
            return await complete(*args)

        membership._complete_join = slow_complete
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(a.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        await self.wait_for(
            lambda: self._contains(self.timeline_bodies(bob, room_id), "during the join"),
            what="the message sent during the join",
        )



@on_both_engines
class InboundBadInput(FederationTestCase):
    """PDUs crafted on B (signed with B's key, sent with B's X-Matrix signature) and pushed
    to A's /send: each kind of bad PDU is refused without corrupting A's room."""

    async def _setup(self):
        a, b, alice, bob = await self.two_peers()
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        room_id = r.json["room_id"]
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(a.server_name)}", {})
        assert r.code == 200, r
        self.a, self.b, self.alice, self.bob, self.room_id = a, b, alice, bob, room_id

    async def _pdu(self, sender, content, **changes):
        hs = self.b.hs
        rv = await hs.event_store.get_room_version(self.room_id)
        current = await hs.state_store.get_current_state_ids(self.room_id)
        pdu = await hs.event_creator.build_pdu(
            self.room_id, rv, sender, "m.room.message", content, None, current
        )
        pdu.update(changes)
        return hs.event_creator.finish_event(pdu, rv)

    async def _send(self, pdus, txn_id, edus=()):
        return await self.b.hs.federation_client.put_json(
            self.a.server_name,
            f"/_matrix/federation/v1/send/{txn_id}",
            {"origin": self.b.server_name, "origin_server_ts": 1, "pdus": pdus,
             "edus": list(edus)},
        )

    async def _stored(self, event_id):
        return await self.a.hs.event_store.get_stored_event(event_id)

    @ensure_deferred
    async def test_good_pdu_and_duplicate_transaction(self):
        await self._setup()
        event = await self._pdu(self.bob.user_id, {"msgtype": "m.text", "body": "crafted"})
        first = await self._send([event.pdu], "t-dup")
        self.assertEqual(first, {"pdus": {event.event_id: {}}})
        self.assertIn("crafted", await self.timeline_bodies(self.alice, self.room_id))
        again = await self._send([event.pdu], "t-dup")
        self.assertEqual(again, first)
        bodies = await self.timeline_bodies(self.alice, self.room_id)
        self.assertEqual(bodies.count("crafted"), 1)
        # Remembered answers are pruned after a day.
        store = self.a.hs.federation_event_store
        self.assertIsNotNone(await store.get_transaction_response(self.b.server_name, "t-dup"))
        await self.a.hs.federation_transactions.prune()
        self.assertIsNotNone(await store.get_transaction_response(self.b.server_name, "t-dup"))
        await store.delete_old_transactions(self.a.hs.clock.time_msec() + 1)
        self.assertIsNone(await store.get_transaction_response(self.b.server_name, "t-dup"))

    @ensure_deferred
    async def test_bad_signature_is_dropped(self):
        await self._setup()
        event = await self._pdu(self.bob.user_id, {"msgtype": "m.text", "body": "tampered"})
        pdu = dict(event.pdu)
        sigs = {k: dict(v) for k, v in pdu["signatures"].items()}
        key_id = next(iter(sigs[self.b.server_name]))
        sigs[self.b.server_name][key_id] = "A" * 86
        pdu["signatures"] = sigs
        result = await self._send([pdu], "t-sig")
        self.assertIn("error", result["pdus"][event.event_id])
        self.assertIsNone(await self._stored(event.event_id))

    @ensure_deferred
    async def test_forged_sender_is_dropped(self):
        await self._setup()
        # Claims to be from A's user but only B signed it.
        event = await self._pdu(self.alice.user_id, {"msgtype": "m.text", "body": "forged"})
        result = await self._send([event.pdu], "t-forged")
        self.assertIn("error", result["pdus"][event.event_id])
        self.assertIsNone(await self._stored(event.event_id))
        self.assertNotIn("forged", await self.timeline_bodies(self.alice, self.room_id))

    @ensure_deferred
    async def test_modified_content_keeps_a_redacted_copy(self):
        await self._setup()
        event = await self._pdu(self.bob.user_id, {"msgtype": "m.text", "body": "original"})
        pdu = dict(event.pdu)
        pdu["content"] = {"msgtype": "m.text", "body": "changed in transit"}
        result = await self._send([pdu], "t-hash")
        self.assertEqual(result["pdus"][event.event_id], {})
        stored = await self._stored(event.event_id)
        self.assertIsNotNone(stored)
        self.assertEqual(dict(stored.event.content), {})

    @ensure_deferred
    async def test_event_failing_auth_is_rejected(self):
        await self._setup()
        mallory = f"@mallory:{self.b.server_name}"  # never joined
        event = await self._pdu(mallory, {"msgtype": "m.text", "body": "not a member"})
        await self._send([event.pdu], "t-auth")
        stored = await self._stored(event.event_id)
        self.assertIsNotNone(stored)
        self.assertIsNotNone(stored.event.rejected_reason)
        self.assertNotIn("not a member", await self.timeline_bodies(self.alice, self.room_id))
        members = await self.a.hs.state_store.get_current_members(self.room_id, None)
        self.assertNotIn(mallory, members)

    @ensure_deferred
    async def test_event_after_a_rejected_one(self):
        # An event citing a rejected event as its prev_event: the state there is the state
        # before the rejected event, known locally (the sender need not serve it).
        await self._setup()
        mallory = f"@mallory:{self.b.server_name}"
        rejected = await self._pdu(mallory, {"msgtype": "m.text", "body": "not a member"})
        self.assertEqual(await self._send([rejected.pdu], "t-rej1"),
                         {"pdus": {rejected.event_id: {}}})
        later = await self._pdu(
            self.bob.user_id, {"msgtype": "m.text", "body": "after the rejected one"},
            prev_events=[rejected.event_id], depth=rejected.depth + 1,
        )
        self.assertEqual(await self._send([later.pdu], "t-rej2"), {"pdus": {later.event_id: {}}})
        self.assertIn("after the rejected one", await self.timeline_bodies(self.alice, self.room_id))
        self.assertNotIn("not a member", await self.timeline_bodies(self.alice, self.room_id))
        stored = await self._stored(later.event_id)
        self.assertIsNone(stored.event.rejected_reason)
        # The rejected event's state is not served.
        from federation.errors import HttpResponseError

        with self.assertRaises(HttpResponseError) as cm:
            await self.b.hs.federation_client.get_json(
                self.a.server_name, f"/_matrix/federation/v1/state_ids/{q(self.room_id)}",
                args={"event_id": [rejected.event_id]},
            )
        self.assertEqual(cm.exception.code, 404)

    @ensure_deferred
    async def test_pushed_event_whose_prev_events_are_not_served_is_dropped(self):
        # B pushes an event whose prev_event it then does not serve through
        # get_missing_events: A drops the event rather than take the state there from B.
        await self._setup()
        handler = self.a.hs.federation_events
        real_client = handler._client
        asked: list[str] = []

        class Withholding:
            async def post_json(self, destination, path, data, **kw):
                asked.append(path)
                if "/get_missing_events/" in path:
                    return {"events": []}
                return await real_client.post_json(destination, path, data, **kw)

            async def get_json(self, destination, path, *args, **kw):
                asked.append(path)
                return await real_client.get_json(destination, path, *args, **kw)

        handler._client = Withholding()
        self.addCleanup(setattr, handler, "_client", real_client)
        unsent = await self._pdu(self.bob.user_id, {"msgtype": "m.text", "body": "withheld"})
        event = await self._pdu(
            self.bob.user_id, {"msgtype": "m.text", "body": "after the withheld one"},
            prev_events=[unsent.event_id], depth=unsent.depth + 1,
        )
        result = await self._send([event.pdu], "t-withheld")
        self.assertIn("error", result["pdus"][event.event_id])
        self.assertTrue(any("/get_missing_events/" in p for p in asked), asked)
        self.assertFalse(any("/state_ids/" in p or "/state/" in p for p in asked), asked)
        self.assertIsNone(await self._stored(event.event_id))

    @ensure_deferred
    async def test_invite_with_a_bad_signature_is_forbidden(self):
        from federation.errors import HttpResponseError

        await self._setup()
        r = await self.user_call(self.bob, "POST", f"{API}/createRoom", {"preset": "private_chat"})
        room_id = r.json["room_id"]
        hs = self.b.hs
        rv = await hs.event_store.get_room_version(room_id)
        current = await hs.state_store.get_current_state_ids(room_id)
        pdu = await hs.event_creator.build_pdu(
            room_id, rv, self.bob.user_id, "m.room.member", {"membership": "invite"},
            self.alice.user_id, current,
        )
        invite = hs.event_creator.finish_event(pdu, rv)
        tampered = dict(invite.pdu)
        sigs = {k: dict(v) for k, v in tampered["signatures"].items()}
        key_id = next(iter(sigs[self.b.server_name]))
        sigs[self.b.server_name][key_id] = "A" * 86
        tampered["signatures"] = sigs
        with self.assertRaises(HttpResponseError) as cm:
            await hs.federation_client.put_json(
                self.a.server_name,
                f"/_matrix/federation/v2/invite/{q(room_id)}/{q(invite.event_id)}",
                {"event": tampered, "room_version": rv.identifier, "invite_room_state": []},
            )
        self.assertEqual((cm.exception.code, cm.exception.errcode), (403, "M_FORBIDDEN"))

    @ensure_deferred
    async def test_unknown_prev_events(self):
        await self._setup()
        event = await self._pdu(
            self.bob.user_id, {"msgtype": "m.text", "body": "orphan"},
            prev_events=["$" + "x" * 43],
        )
        result = await self._send([event.pdu], "t-prev")
        self.assertIn("error", result["pdus"][event.event_id])
        self.assertNotIn("orphan", await self.timeline_bodies(self.alice, self.room_id))
        # The room still works.
        await self.send_text(self.alice, self.room_id, "still fine", "ok1")
        self.assertIn("still fine", await self.timeline_bodies(self.alice, self.room_id))

    @ensure_deferred
    async def test_transaction_over_the_limits(self):
        from federation.errors import HttpResponseError

        await self._setup()
        event = await self._pdu(self.bob.user_id, {"msgtype": "m.text", "body": "x"})
        with self.assertRaises(HttpResponseError) as cm:
            await self._send([event.pdu] * 51, "t-big")
        self.assertEqual(cm.exception.code, 400)
        self.assertEqual(cm.exception.errcode, "M_BAD_JSON")
        with self.assertRaises(HttpResponseError) as cm:
            await self._send([], "t-edus", edus=[{"edu_type": "m.typing", "content": {}}] * 101)
        self.assertEqual(cm.exception.code, 400)


@on_both_engines
class EphemeralAcrossServers(FederationTestCase):
    """Typing, receipts and presence reach the other server's users through /sync."""

    async def _setup(self):
        a, b, alice, bob = await self.two_peers()
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        room_id = r.json["room_id"]
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(a.server_name)}", {})
        assert r.code == 200, r
        await self.wait_for(
            lambda: self._is_joined(alice, room_id, bob.user_id), what="bob's join on A"
        )
        return a, b, alice, bob, room_id

    async def _is_joined(self, user, room_id, member):
        return await self.membership(user, room_id, member) == "join"

    async def _ephemeral(self, user, room_id, event_type):
        r = await self.user_call(user, "GET", f"{API}/sync?timeout=0")
        room = r.json.get("rooms", {}).get("join", {}).get(room_id, {})
        return [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == event_type]

    @ensure_deferred
    async def test_typing_both_ways(self):
        a, b, alice, bob, room_id = await self._setup()
        r = await self.user_call(bob, "PUT", f"{API}/rooms/{q(room_id)}/typing/{q(bob.user_id)}",
                                 {"typing": True, "timeout": 20000})
        self.assertEqual(r.code, 200, r)

        async def bob_typing_on_a():
            events = await self._ephemeral(alice, room_id, "m.typing")
            return events and bob.user_id in events[0]["content"]["user_ids"]

        await self.wait_for(bob_typing_on_a, what="bob typing on A")
        r = await self.user_call(bob, "PUT", f"{API}/rooms/{q(room_id)}/typing/{q(bob.user_id)}",
                                 {"typing": False})

        async def bob_stopped_on_a():
            return a.hs.typing.get_typing_users(room_id) == []

        await self.wait_for(bob_stopped_on_a, what="bob stopped typing on A")
        await self.user_call(alice, "PUT", f"{API}/rooms/{q(room_id)}/typing/{q(alice.user_id)}",
                             {"typing": True, "timeout": 20000})

        async def alice_typing_on_b():
            return alice.user_id in b.hs.typing.get_typing_users(room_id)

        await self.wait_for(alice_typing_on_b, what="alice typing on B")

    @ensure_deferred
    async def test_read_receipt_reaches_the_other_server(self):
        a, b, alice, bob, room_id = await self._setup()
        event_id = await self.send_text(alice, room_id, "read me", "r1")
        await self.wait_for(
            lambda: self._has_event(bob, room_id, event_id), what="message on B"
        )
        r = await self.user_call(
            bob, "POST", f"{API}/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", {}
        )
        self.assertEqual(r.code, 200, r)

        async def receipt_on_a():
            for event in await self._ephemeral(alice, room_id, "m.receipt"):
                readers = event["content"].get(event_id, {}).get("m.read", {})
                if bob.user_id in readers:
                    return True
            return False

        await self.wait_for(receipt_on_a, what="bob's receipt on A")

    @ensure_deferred
    async def test_presence_reaches_the_other_server(self):
        a, b, alice, bob, room_id = await self._setup()
        r = await self.user_call(bob, "PUT", f"{API}/presence/{q(bob.user_id)}/status",
                                 {"presence": "unavailable", "status_msg": "away"})
        self.assertEqual(r.code, 200, r)

        async def presence_on_a():
            r = await self.user_call(alice, "GET", f"{API}/presence/{q(bob.user_id)}/status")
            return r.code == 200 and r.json.get("presence") == "unavailable" and \
                r.json.get("status_msg") == "away"

        await self.wait_for(presence_on_a, what="bob's presence on A")

    async def _has_event(self, user, room_id, event_id):
        r = await self.user_call(user, "GET", f"{API}/rooms/{q(room_id)}/event/{q(event_id)}")
        return r.code == 200
