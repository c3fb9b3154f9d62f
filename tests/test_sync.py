"""/sync over real HTTP: initial, incremental, long-poll, tokens."""

from twisted.internet import defer, reactor, task

from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.sync.tokens import StreamToken
from tests.harness import HomeserverTestCase, on_both_engines

ALICE = "@alice:test.heddle"
BOB = "@bob:test.heddle"
# Transactions the server runs on timers, whichever request is being served meanwhile.
BACKGROUND_TRANSACTIONS = frozenset({"rotate_push_actions"})


class SyncHelpers(HomeserverTestCase):
    """Users, a room made through the event creator, and /sync over HTTP."""

    async def setup_users(self):
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]

    async def make_room(self, members=(ALICE,)) -> str:
        creator = self.hs.event_creator
        room_id, _ = await creator.create_room(KNOWN_ROOM_VERSIONS["11"], ALICE, {"room_version": "11"}, False)
        await creator.send(room_id, ALICE, "m.room.member", {"membership": "join"}, state_key=ALICE)
        await creator.send(room_id, ALICE, "m.room.power_levels", {"users": {ALICE: 100}}, state_key="")
        await creator.send(room_id, ALICE, "m.room.join_rules", {"join_rule": "public"}, state_key="")
        for member in members:
            if member != ALICE:
                await creator.send(room_id, member, "m.room.member", {"membership": "join"}, state_key=member)
        return room_id

    async def sync(self, token, since=None, **params):
        query = "&".join(f"{k}={v}" for k, v in params.items())
        path = "/_matrix/client/v3/sync?" + query
        if since:
            path += f"&since={since}"
        r = await self.request("GET", path, token=token)
        self.assertEqual(r.code, 200, r)
        return r.json


@on_both_engines
class Sync(SyncHelpers):
    async def test_initial_and_incremental(self):
        await self.setup_users()
        room_id = await self.make_room([ALICE, BOB])
        first = await self.sync(self.bob)
        room = first["rooms"]["join"][room_id]
        types = [e["type"] for e in room["timeline"]["events"]] + [e["type"] for e in room["state"]["events"]]
        self.assertIn("m.room.create", types)
        self.assertEqual(room["summary"]["m.joined_member_count"], 2)
        await self.hs.event_creator.send(room_id, ALICE, "m.room.message", {"body": "hello", "msgtype": "m.text"})
        second = await self.sync(self.bob, since=first["next_batch"])
        timeline = second["rooms"]["join"][room_id]["timeline"]
        self.assertEqual([e["content"].get("body") for e in timeline["events"]], ["hello"])
        self.assertFalse(timeline["limited"])
        # Nothing new: an empty incremental sync.
        third = await self.sync(self.bob, since=second["next_batch"])
        self.assertEqual(third["rooms"]["join"], {})

    async def test_limited_timeline_and_state_delta(self):
        await self.setup_users()
        room_id = await self.make_room([ALICE, BOB])
        first = await self.sync(self.bob)
        await self.hs.event_creator.send(room_id, ALICE, "m.room.name", {"name": "Lounge"}, state_key="")
        for i in range(15):
            await self.hs.event_creator.send(room_id, ALICE, "m.room.message", {"body": str(i)})
        second = await self.sync(self.bob, since=first["next_batch"])
        room = second["rooms"]["join"][room_id]
        self.assertTrue(room["timeline"]["limited"])
        self.assertEqual(len(room["timeline"]["events"]), 10)
        self.assertEqual([e["type"] for e in room["state"]["events"]], ["m.room.name"])
        self.assertTrue(room["timeline"]["prev_batch"].startswith("t"))

    async def test_own_profile_change_is_not_a_new_join(self):
        # A new display name is an m.room.member event (join -> join): the room arrives as
        # an incremental update, not as a freshly joined room with its full state again.
        await self.setup_users()
        room_id = await self.make_room([ALICE, BOB])
        first = await self.sync(self.bob)
        await self.hs.event_creator.send(
            room_id, BOB, "m.room.member", {"membership": "join", "displayname": "Bobby"},
            state_key=BOB,
        )
        second = await self.sync(self.bob, since=first["next_batch"])
        room = second["rooms"]["join"][room_id]
        self.assertFalse(room["timeline"]["limited"])
        self.assertEqual(
            [(e["type"], e["content"].get("displayname")) for e in room["timeline"]["events"]],
            [("m.room.member", "Bobby")],
        )
        self.assertEqual(room["state"]["events"], [])

    async def test_long_poll_wakes_on_message(self):
        await self.setup_users()
        room_id = await self.make_room([ALICE, BOB])
        first = await self.sync(self.bob)
        pending = defer.ensureDeferred(self.sync(self.bob, since=first["next_batch"], timeout=10000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        await self.hs.event_creator.send(room_id, ALICE, "m.room.message", {"body": "wake"})
        result = await pending
        events = result["rooms"]["join"][room_id]["timeline"]["events"]
        self.assertEqual(events[-1]["content"]["body"], "wake")

    async def test_long_poll_times_out_with_same_position(self):
        await self.setup_users()
        await self.make_room([ALICE, BOB])
        first = await self.sync(self.bob)
        result = await self.sync(self.bob, since=first["next_batch"], timeout=300)
        self.assertEqual(result["rooms"]["join"], {})
        self.assertEqual(result["next_batch"], first["next_batch"])

    async def test_invite_and_leave_sections(self):
        await self.setup_users()
        room_id = await self.make_room()
        first = await self.sync(self.bob)
        await self.hs.event_creator.send(room_id, ALICE, "m.room.member", {"membership": "invite"}, state_key=BOB)
        second = await self.sync(self.bob, since=first["next_batch"])
        invite = second["rooms"]["invite"][room_id]["invite_state"]["events"]
        self.assertIn(("m.room.member", BOB), {(e["type"], e["state_key"]) for e in invite})
        await self.hs.event_creator.send(room_id, BOB, "m.room.member", {"membership": "join"}, state_key=BOB)
        third = await self.sync(self.bob, since=second["next_batch"])
        self.assertIn(room_id, third["rooms"]["join"])
        await self.hs.event_creator.send(room_id, ALICE, "m.room.member", {"membership": "leave"}, state_key=BOB)
        fourth = await self.sync(self.bob, since=third["next_batch"])
        self.assertIn(room_id, fourth["rooms"]["leave"])
        await self.hs.event_creator.send(room_id, ALICE, "m.room.message", {"body": "after kick"})
        fifth = await self.sync(self.bob, since=fourth["next_batch"])
        self.assertNotIn(room_id, fifth["rooms"]["leave"])
        self.assertNotIn(room_id, fifth["rooms"]["join"])

    async def test_bad_tokens(self):
        await self.setup_users()
        for bad in ("garbage", "s", "s1_x", "t1-2", "s" + "9" * 30):
            r = await self.request("GET", f"/_matrix/client/v3/sync?since={bad}", token=self.bob)
            self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", "/_matrix/client/v3/sync?timeout=abc", token=self.bob)
        self.assertError(r, 400, "M_INVALID_PARAM")


@on_both_engines
class SyncStreams(HomeserverTestCase):
    """Typing, receipts, account data, presence and filters surfacing in /sync, over HTTP."""

    async def asyncSetUp(self):
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]
        r = await self.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=self.alice)
        self.assertEqual(r.code, 200, r)
        self.room_id = r.json["room_id"]
        r = await self.request("POST", f"/_matrix/client/v3/join/{self.room_id}", {}, token=self.bob)
        self.assertEqual(r.code, 200, r)

    async def sync(self, token, since=None, **params):
        path = "/_matrix/client/v3/sync?" + "&".join(f"{k}={v}" for k, v in params.items())
        if since:
            path += f"&since={since}"
        r = await self.request("GET", path, token=token)
        self.assertEqual(r.code, 200, r)
        return r.json

    async def test_typing_and_receipts_in_ephemeral(self):
        await self.asyncSetUp()
        first = await self.sync(self.bob)
        r = await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{self.room_id}/typing/{ALICE}",
            {"typing": True, "timeout": 10000}, token=self.alice,
        )
        self.assertEqual(r.code, 200, r)
        second = await self.sync(self.bob, since=first["next_batch"])
        ephemeral = second["rooms"]["join"][self.room_id]["ephemeral"]["events"]
        self.assertIn({"type": "m.typing", "content": {"user_ids": [ALICE]}}, ephemeral)
        r = await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{self.room_id}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "hi"}, token=self.alice,
        )
        event_id = r.json["event_id"]
        r = await self.request(
            "POST", f"/_matrix/client/v3/rooms/{self.room_id}/receipt/m.read/{event_id}", {}, token=self.bob
        )
        self.assertEqual(r.code, 200, r)
        third = await self.sync(self.alice, since=second["next_batch"])
        receipts = [e for e in third["rooms"]["join"][self.room_id]["ephemeral"]["events"] if e["type"] == "m.receipt"]
        self.assertEqual(list(receipts[0]["content"][event_id]["m.read"]), [BOB])

    async def test_account_data_global_and_room(self):
        await self.asyncSetUp()
        first = await self.sync(self.bob)
        await self.request("PUT", f"/_matrix/client/v3/user/{BOB}/account_data/org.example.g", {"a": 1}, token=self.bob)
        await self.request(
            "PUT", f"/_matrix/client/v3/user/{BOB}/rooms/{self.room_id}/account_data/org.example.r", {"b": 2}, token=self.bob
        )
        second = await self.sync(self.bob, since=first["next_batch"])
        self.assertIn({"type": "org.example.g", "content": {"a": 1}}, second["account_data"]["events"])
        room_data = second["rooms"]["join"][self.room_id]["account_data"]["events"]
        self.assertIn({"type": "org.example.r", "content": {"b": 2}}, room_data)
        # An initial sync carries the latest account data too.
        initial = await self.sync(self.bob)
        self.assertIn({"type": "org.example.g", "content": {"a": 1}}, initial["account_data"]["events"])

    async def test_presence_of_room_mates(self):
        await self.asyncSetUp()
        first = await self.sync(self.bob)
        r = await self.request("PUT", f"/_matrix/client/v3/presence/{ALICE}/status", {"presence": "online", "status_msg": "here"}, token=self.alice)
        self.assertEqual(r.code, 200, r)
        second = await self.sync(self.bob, since=first["next_batch"])
        alice_presence = [e for e in second["presence"]["events"] if e["sender"] == ALICE]
        self.assertEqual(alice_presence[-1]["content"]["status_msg"], "here")

    async def test_stored_filter_limits_timeline_and_types(self):
        await self.asyncSetUp()
        for i in range(5):
            await self.request(
                "PUT", f"/_matrix/client/v3/rooms/{self.room_id}/send/m.room.message/m{i}",
                {"msgtype": "m.text", "body": str(i)}, token=self.alice,
            )
        r = await self.request(
            "POST", f"/_matrix/client/v3/user/{BOB}/filter",
            {"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}}, token=self.bob,
        )
        filter_id = r.json["filter_id"]
        data = await self.sync(self.bob, filter=filter_id)
        timeline = data["rooms"]["join"][self.room_id]["timeline"]
        self.assertEqual([e["content"]["body"] for e in timeline["events"]], ["3", "4"])
        self.assertTrue(timeline["limited"])
        r = await self.request("GET", "/_matrix/client/v3/sync?filter=nope", token=self.bob)
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", "/_matrix/client/v3/sync?filter={bad", token=self.bob)
        self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_lazy_loading_members(self):
        await self.asyncSetUp()
        carol = (await self.register("carol"))["access_token"]
        await self.request("POST", f"/_matrix/client/v3/join/{self.room_id}", {}, token=carol)
        await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{self.room_id}/send/m.room.message/x",
            {"msgtype": "m.text", "body": "only alice speaks"}, token=self.alice,
        )
        lazy = '{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}'
        data = await self.sync(self.bob, filter=lazy)
        members = {
            e["state_key"] for e in data["rooms"]["join"][self.room_id]["state"]["events"]
            if e["type"] == "m.room.member"
        }
        self.assertEqual(members, {ALICE, BOB})

    async def test_history_visibility_joined_hides_earlier_timeline(self):
        await self.asyncSetUp()
        r = await self.request("POST", "/_matrix/client/v3/createRoom", {
            "preset": "public_chat",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}],
        }, token=self.alice)
        room = r.json["room_id"]
        await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/secret",
            {"msgtype": "m.text", "body": "before you came"}, token=self.alice,
        )
        await self.request("POST", f"/_matrix/client/v3/join/{room}", {}, token=self.bob)
        data = await self.sync(self.bob)
        bodies = [e["content"].get("body") for e in data["rooms"]["join"][room]["timeline"]["events"]]
        self.assertNotIn("before you came", bodies)


@on_both_engines
class IncrementalSyncCost(HomeserverTestCase):
    """An incremental sync touches the database for what changed, not for every room."""

    async def count_transactions(self, token, since):
        calls = []
        original = self.hs.db.run_interaction

        async def counting(desc, *args, **kwargs):
            # The push-action rotation runs on its own schedule and may land in any
            # request's window: not part of what a sync costs.
            if desc not in BACKGROUND_TRANSACTIONS:
                calls.append(desc)
            return await original(desc, *args, **kwargs)

        self.hs.db.run_interaction = counting
        try:
            r = await self.request("GET", f"/_matrix/client/v3/sync?since={since}", token=token)
            self.assertEqual(r.code, 200, r)
        finally:
            self.hs.db.run_interaction = original
        return calls, r.json

    async def test_quiet_sync_cost_does_not_grow_with_rooms(self):
        alice = (await self.register("alice"))["access_token"]
        costs = []
        for extra_rooms in (2, 12):
            for _ in range(extra_rooms - len(costs) * 2):
                r = await self.request("POST", "/_matrix/client/v3/createRoom", {}, token=alice)
                self.assertEqual(r.code, 200, r)
            r = await self.request("GET", "/_matrix/client/v3/sync", token=alice)
            since = r.json["next_batch"]
            calls, body = await self.count_transactions(alice, since)
            self.assertEqual(body["rooms"]["join"], {})
            costs.append(len(calls))
        self.assertEqual(costs[0], costs[1], f"transactions per quiet sync: {costs}")

    async def test_one_changed_room_costs_the_same_in_many_rooms(self):
        costs = []
        for name, room_count in (("few", 1), ("many", 10)):
            token = (await self.register(name))["access_token"]
            rooms = []
            for _ in range(room_count):
                r = await self.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)
                rooms.append(r.json["room_id"])
            r = await self.request("GET", "/_matrix/client/v3/sync", token=token)
            since = r.json["next_batch"]
            await self.request("PUT", f"/_matrix/client/v3/rooms/{rooms[0]}/send/m.room.message/t",
                               {"msgtype": "m.text", "body": "x"}, token=token)
            calls, body = await self.count_transactions(token, since)
            self.assertEqual(list(body["rooms"]["join"]), [rooms[0]])
            costs.append(sorted(calls))
        # The same queries whether the user is in 1 room or 10: the quiet rooms cost nothing.
        self.assertEqual(costs[0], costs[1])


@on_both_engines
class TokensFromTheFuture(HomeserverTestCase):
    async def test_streams_ahead_of_the_server_are_sent_in_full(self):
        alice = (await self.register("alice"))["access_token"]
        await self.request("PUT", f"/_matrix/client/v3/user/{ALICE}/account_data/org.example.x", {"v": 1}, token=alice)
        r = await self.request("GET", "/_matrix/client/v3/sync", token=alice)
        token = StreamToken.parse(r.json["next_batch"])
        # As if the server restarted below positions it had handed out.
        ahead = token.copy_and_replace("account_data", token.account_data + 50)
        r = await self.request("GET", f"/_matrix/client/v3/sync?since={ahead}", token=alice)
        self.assertEqual(r.code, 200, r)
        self.assertIn({"type": "org.example.x", "content": {"v": 1}}, r.json["account_data"]["events"])


@on_both_engines
class AbandonedLongPoll(HomeserverTestCase):
    async def test_disconnected_long_poll_stops_waiting(self):
        from twisted.internet import protocol
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        token = (await self.register("alice"))["access_token"]
        r = await self.request("GET", "/_matrix/client/v3/sync", token=token)
        since = r.json["next_batch"]
        port = int(self.base_url.rsplit(":", 1)[1])
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol.Protocol())
        client.transport.write(
            f"GET /_matrix/client/v3/sync?since={since}&timeout=60000 HTTP/1.1\r\n"
            f"Host: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        for _ in range(50):
            await task.deferLater(reactor, 0.02, lambda: None)
            if self.hs.notifier._waiters:
                break
        self.assertIn("@alice:test.heddle", self.hs.notifier._waiters)
        client.transport.loseConnection()
        for _ in range(50):
            await task.deferLater(reactor, 0.02, lambda: None)
            if not self.hs.notifier._waiters:
                break
        self.assertEqual(self.hs.notifier._waiters, {})


@on_both_engines
class Heroes(HomeserverTestCase):
    async def test_heroes_follow_membership_order_and_fall_back_to_leavers(self):
        alice = (await self.register("alice"))["access_token"]
        zed = (await self.register("zed"))["access_token"]
        bob = (await self.register("bob"))["access_token"]
        r = await self.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=alice)
        room = r.json["room_id"]
        await self.request("POST", f"/_matrix/client/v3/join/{room}", {}, token=zed)
        await self.request("POST", f"/_matrix/client/v3/join/{room}", {}, token=bob)
        r = await self.request("GET", "/_matrix/client/v3/sync", token=alice)
        summary = r.json["rooms"]["join"][room]["summary"]
        self.assertEqual(summary["m.heroes"], ["@zed:test.heddle", "@bob:test.heddle"])
        self.assertEqual(summary["m.joined_member_count"], 3)
        for token in (zed, bob):
            await self.request("POST", f"/_matrix/client/v3/rooms/{room}/leave", {}, token=token)
        r = await self.request("GET", "/_matrix/client/v3/sync", token=alice)
        self.assertEqual(r.json["rooms"]["join"][room]["summary"]["m.heroes"], ["@zed:test.heddle", "@bob:test.heddle"])


@on_both_engines
class OneMessageManyListeners(HomeserverTestCase):
    """One message wakes every listener in the room at once; what they all ask alike (the
    room's timeline between the same positions, its heroes) is read once, and streams where
    nothing happened (account data, receipts, device lists) are not read at all."""

    LISTENERS = 50

    async def test_listeners_woken_by_one_message_share_the_reads(self):
        speaker = (await self.register("speaker"))["access_token"]
        r = await self.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=speaker)
        room = r.json["room_id"]
        tokens = []
        for i in range(self.LISTENERS):
            token = (await self.register(f"listener{i}"))["access_token"]
            r = await self.request("POST", f"/_matrix/client/v3/join/{room}", {}, token=token)
            self.assertEqual(r.code, 200, r)
            tokens.append(token)
        sinces = []
        for token in tokens:
            # Offline: listeners coming online would wake each other with presence.
            r = await self.request("GET", "/_matrix/client/v3/sync?set_presence=offline", token=token)
            sinces.append(r.json["next_batch"])

        calls: list[str] = []
        original = self.hs.db.run_interaction

        async def counting(desc, *args, **kwargs):
            # The push-action rotation runs on its own schedule and may land in any
            # request's window: not part of what a sync costs.
            if desc not in BACKGROUND_TRANSACTIONS:
                calls.append(desc)
            return await original(desc, *args, **kwargs)

        self.hs.db.run_interaction = counting
        try:
            polls = [
                defer.ensureDeferred(self.request(
                    "GET", f"/_matrix/client/v3/sync?since={since}&timeout=10000&set_presence=offline",
                    token=token,
                ))
                for token, since in zip(tokens, sinces, strict=True)
            ]
            for _ in range(250):
                if len(self.hs.notifier._waiters) == self.LISTENERS:
                    break
                await task.deferLater(reactor, 0.02, lambda: None)
            self.assertEqual(len(self.hs.notifier._waiters), self.LISTENERS)
            del calls[:]
            await self.hs.event_creator.send(room, "@speaker:test.heddle", "m.room.message", {"body": "hello all"})
            responses = await defer.gatherResults(polls)
        finally:
            self.hs.db.run_interaction = original

        timelines = []
        for response in responses:
            self.assertEqual(response.code, 200, response)
            joined = response.json["rooms"]["join"][room]
            timelines.append(joined["timeline"]["events"])
            self.assertEqual(joined["summary"]["m.joined_member_count"], self.LISTENERS + 1)
        self.assertEqual([[e["content"]["body"] for e in t] for t in timelines], [["hello all"]] * self.LISTENERS)
        self.assertEqual(calls.count("get_room_events_between"), 1, calls)
        self.assertEqual(calls.count("get_heroes"), 1, calls)
        self.assertLessEqual(calls.count("get_state_groups_for_events"), 1, calls)
        # Whether the message is redacted: asked once, not once per listener serializing it.
        self.assertLessEqual(calls.count("get_redactions"), 1, calls)
        for quiet in ("get_account_data_changed", "get_receipts_for_rooms", "get_membership_changes"):
            self.assertEqual(calls.count(quiet), 0, calls)
