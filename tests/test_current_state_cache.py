"""The state store's in-memory current state and member lists: kept exactly in step with
`current_state_events`, changed only after commit, and dropped by other processes over Redis.
"""

from __future__ import annotations

import uuid

from twisted.internet import defer, reactor, task

from homeserver.app import HomeServer
from storage.persister import _update_current_state_txn
from storage.stores.state import StateStore
from tests.harness import HomeserverTestCase, on_both_engines, transactions_recorded
from tests.room_helpers import RoomTestCase

TOPIC = ("m.room.topic", "")
ALICE = "@alice:test.heddle"
BOB = "@bob:test.heddle"


class CacheTestCase(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.carol = await self.user("carol")
        self.room_id = await self.create_room(self.alice, preset="public_chat")

    async def table_state(self, room_id: str) -> dict[tuple[str, str], str]:
        """What `current_state_events` holds, read past every cache."""
        rows = await self.hs.db.run_interaction(
            "test_table_state",
            lambda txn: txn.select_all(
                "SELECT type, state_key, event_id FROM current_state_events WHERE room_id = ?",
                (room_id,),
            ),
        )
        return {(t, k): e for t, k, e in rows}

    async def table_members(self, room_id: str, membership: str) -> set[str]:
        rows = await self.hs.db.run_interaction(
            "test_table_members",
            lambda txn: txn.select_all(
                "SELECT state_key FROM current_state_events"
                " WHERE room_id = ? AND type = 'm.room.member' AND membership = ?",
                (room_id, membership),
            ),
        )
        return {r[0] for r in rows}

    async def set_topic_behind_the_stores_back(self, room_id: str, event_id: str) -> None:
        await self.hs.db.run_interaction(
            "test_set_topic",
            lambda txn: txn.execute(
                "UPDATE current_state_events SET event_id = ?"
                " WHERE room_id = ? AND type = ? AND state_key = ?",
                (event_id, room_id, *TOPIC),
            ),
        )

    async def assert_cache_matches_table(self, store: StateStore, room_id: str) -> None:
        self.assertEqual(
            dict(await store.get_current_state_ids(room_id)), await self.table_state(room_id)
        )
        for membership in ("join", "invite", "leave", "ban"):
            self.assertEqual(
                set(await store.get_current_members(room_id, membership)),
                await self.table_members(room_id, membership),
                membership,
            )

    async def count_transactions(self, action):
        with transactions_recorded(self.hs) as calls:
            await action()
        return calls


@on_both_engines
class CurrentStateCacheTests(CacheTestCase):
    async def test_membership_changes_update_cached_member_lists(self):
        store = self.hs.state_store
        # Warm the cache, then move members through join, invite, leave and ban.
        await self.assert_cache_matches_table(store, self.room_id)
        r = await self.join(self.bob, self.room_id)
        self.assertEqual(r.code, 200, r)
        self.assertIn(self.bob.user_id, await store.get_current_members(self.room_id, "join"))
        await self.membership_action(self.alice, self.room_id, "invite", {"user_id": self.carol.user_id})
        self.assertEqual(
            set(await store.get_current_members(self.room_id, "invite")), {self.carol.user_id}
        )
        await self.assert_cache_matches_table(store, self.room_id)
        await self.join(self.carol, self.room_id)
        await self.membership_action(self.bob, self.room_id, "leave")
        await self.membership_action(self.alice, self.room_id, "ban", {"user_id": self.bob.user_id})
        await self.assert_cache_matches_table(store, self.room_id)
        self.assertEqual(
            set(await store.get_current_members(self.room_id, "join")),
            {self.alice.user_id, self.carol.user_id},
        )
        self.assertEqual(await store.get_current_members(self.room_id, "invite"), {})
        everyone = await store.get_current_members(self.room_id, None)
        self.assertEqual(set(everyone), {self.alice.user_id, self.bob.user_id, self.carol.user_id})

    async def test_state_events_update_cached_state(self):
        store = self.hs.state_store
        await store.get_current_state_ids(self.room_id)
        r = await self.put_state(self.alice, self.room_id, "m.room.topic", {"topic": "one"})
        self.assertEqual(r.code, 200, r)
        topic_id = r.json["event_id"]
        self.assertEqual((await store.get_current_state_ids(self.room_id))[TOPIC], topic_id)
        self.assertEqual(await store.get_current_state_event_id(self.room_id, *TOPIC), topic_id)
        await self.assert_cache_matches_table(store, self.room_id)
        # And it agrees with the room's current state group.
        group = await self.hs.event_store.get_current_state_group(self.room_id)
        self.assertEqual(
            await store.get_state_group(group), dict(await store.get_current_state_ids(self.room_id))
        )

    async def test_what_callers_were_given_does_not_change_under_them(self):
        store = self.hs.state_store
        before = await store.get_current_state_ids(self.room_id)
        joined_before = await store.get_current_members(self.room_id, "join")
        snapshot, joined_snapshot = dict(before), dict(joined_before)
        await self.join(self.bob, self.room_id)
        await self.put_state(self.alice, self.room_id, "m.room.topic", {"topic": "new"})
        self.assertEqual(dict(before), snapshot)
        self.assertEqual(dict(joined_before), joined_snapshot)
        with self.assertRaises(TypeError):
            before[TOPIC] = "$mutated"  # type: ignore[index]

    async def test_cache_answers_without_the_database(self):
        """Guard for the tests here: reads really are served from memory once warm."""
        store = self.hs.state_store
        cached = dict(await store.get_current_state_ids(self.room_id))
        await self.set_topic_behind_the_stores_back(self.room_id, "$behind")
        self.assertEqual(dict(await store.get_current_state_ids(self.room_id)), cached)
        store.invalidate_current_state(self.room_id)
        self.assertEqual(
            dict(await store.get_current_state_ids(self.room_id)), await self.table_state(self.room_id)
        )

    async def test_sending_a_message_reads_no_state_or_members_from_the_database(self):
        await self.join(self.bob, self.room_id)
        await self.send(self.alice, self.room_id)  # warms the room
        calls = await self.count_transactions(lambda: self.send(self.bob, self.room_id))
        self.assertNotIn("get_current_state", calls)
        self.assertNotIn("get_current_state_event_id", calls)
        self.assertIn("persist_event", calls)

    async def test_rolled_back_change_leaves_the_cache_alone(self):
        store = self.hs.state_store
        r = await self.put_state(self.alice, self.room_id, "m.room.topic", {"topic": "old"})
        old_topic = await self.hs.event_store.get_event(r.json["event_id"])
        await self.put_state(self.alice, self.room_id, "m.room.topic", {"topic": "kept"})
        cached = dict(await store.get_current_state_ids(self.room_id))

        def fails(txn):
            # As the persister would write a topic, then the transaction fails.
            _update_current_state_txn(txn, store, self.hs.server_name, old_topic, 0)
            raise RuntimeError("rolled back")

        with self.assertRaises(RuntimeError):
            await self.hs.db.run_interaction("test_rolled_back", fails)
        self.assertEqual(dict(await store.get_current_state_ids(self.room_id)), cached)
        await self.assert_cache_matches_table(store, self.room_id)

    async def test_read_overtaken_by_a_change_is_not_cached(self):
        """A read that started before a change committed may return the old state, but must
        not be remembered, or the cache would stay behind the table."""
        store = self.hs.state_store
        store.invalidate_current_state(self.room_id)
        reading = defer.ensureDeferred(store.get_current_state_ids(self.room_id))
        # The change "commits" while the read is in flight (and after it took its snapshot).
        store.current_state_changed(self.room_id, TOPIC, "$new_topic", None)
        old = await reading
        self.assertNotIn(TOPIC, old)
        await self.hs.db.run_interaction(
            "test_insert_topic",
            lambda txn: txn.execute(
                "INSERT INTO current_state_events (room_id, type, state_key, event_id, membership)"
                " VALUES (?, ?, ?, ?, NULL)",
                (self.room_id, *TOPIC, "$new_topic"),
            ),
        )
        self.assertEqual((await store.get_current_state_ids(self.room_id))[TOPIC], "$new_topic")

    async def test_cache_holds_a_bounded_number_of_rooms(self):
        store = StateStore(self.hs.db, current_state_rooms=2)
        rooms = [self.room_id] + [await self.create_room(self.alice) for _ in range(2)]
        for room_id in rooms:
            await self.put_state(self.alice, room_id, "m.room.topic", {"topic": "t"})
            await store.get_current_state_ids(room_id)
        # The least recently used room was dropped; the two others are still held.
        for room_id in rooms:
            await self.set_topic_behind_the_stores_back(room_id, "$behind")
        # Most recently used first, so reading the dropped room last evicts nothing we check.
        topics = [(await store.get_current_state_ids(r))[TOPIC] for r in reversed(rooms)]
        self.assertNotEqual(topics[0], "$behind")
        self.assertNotEqual(topics[1], "$behind")
        self.assertEqual(topics[2], "$behind")

    async def test_notify_room_wakes_joined_members_and_extra_users(self):
        await self.join(self.bob, self.room_id)
        notifier = self.hs.notifier
        users = (self.alice, self.bob, self.carol)
        before = {u.user_id: notifier.position(u.user_id) for u in users}
        await notifier.notify_room(self.room_id)
        self.assertGreater(notifier.position(self.alice.user_id), before[self.alice.user_id])
        self.assertGreater(notifier.position(self.bob.user_id), before[self.bob.user_id])
        self.assertEqual(notifier.position(self.carol.user_id), before[self.carol.user_id])
        await notifier.notify_room(self.room_id, extra_users=[self.carol.user_id])
        self.assertGreater(notifier.position(self.carol.user_id), before[self.carol.user_id])

    async def test_member_who_leaves_is_woken_by_their_leave(self):
        await self.join(self.bob, self.room_id)
        before = self.hs.notifier.position(self.bob.user_id)
        r = await self.membership_action(self.bob, self.room_id, "leave")
        self.assertEqual(r.code, 200, r)
        self.assertGreater(self.hs.notifier.position(self.bob.user_id), before)
        self.assertNotIn(self.bob.user_id, await self.hs.state_store.get_current_members(self.room_id))


@on_both_engines
class CurrentStateFanOut(HomeserverTestCase):
    """Two processes on one database and Redis: a change on one drops the other's copy."""

    def setUp(self):
        prefix = f"heddle-test-{uuid.uuid4().hex}"
        return defer.ensureDeferred(
            self.start_server(redis={"enabled": True, "channel_prefix": prefix})
        )

    async def start_second_server(self) -> HomeServer:
        other = HomeServer(self.hs.config, reactor, writer_lock=False)
        await other.setup()
        other.start_listening()
        self.addCleanup(lambda: defer.ensureDeferred(other.stop()))
        # Count what this process publishes and the other receives, to know when the
        # messages sent so far have all arrived.
        self.published: list[str] = []
        self.received: list[str] = []
        self.hs.state_store.current_state_listeners.append(self.published.append)
        invalidate = other.state_store.invalidate_current_state

        def counting(room_id: str) -> None:
            self.received.append(room_id)
            invalidate(room_id)

        other.state_store.invalidate_current_state = counting  # type: ignore[method-assign]
        return other

    async def fan_out_delivered(self) -> None:
        for _ in range(100):
            if len(self.received) >= len(self.published):
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"{len(self.published)} published, {len(self.received)} received")

    async def room_with_alice(self) -> str:
        alice = (await self.register("alice"))["access_token"]
        r = await self.request(
            "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=alice
        )
        self.assertEqual(r.code, 200, r)
        # The room's creation was published too: let it arrive before the tests begin.
        await self.fan_out_delivered()
        return r.json["room_id"]

    async def test_join_on_one_process_reaches_the_others_cache(self):
        other = await self.start_second_server()
        room_id = await self.room_with_alice()
        # The second process caches the room's members.
        self.assertEqual(set(await other.state_store.get_current_members(room_id)), {ALICE})
        bob = (await self.register("bob"))["access_token"]
        r = await self.request("POST", f"/_matrix/client/v3/join/{room_id}", {}, token=bob)
        self.assertEqual(r.code, 200, r)
        await self.fan_out_delivered()
        self.assertEqual(set(await other.state_store.get_current_members(room_id)), {ALICE, BOB})

    async def test_without_redis_message_cache_would_stay_behind(self):
        """Guard for the test above: the second process really does answer from its cache."""
        other = await self.start_second_server()
        room_id = await self.room_with_alice()
        self.assertEqual(set(await other.state_store.get_current_members(room_id)), {ALICE})
        # A join written behind both processes' backs (no fan-out) goes unseen.
        await self.hs.db.run_interaction(
            "test_join_behind",
            lambda txn: txn.execute(
                "INSERT INTO current_state_events (room_id, type, state_key, event_id, membership)"
                " VALUES (?, 'm.room.member', ?, '$fake', 'join')",
                (room_id, BOB),
            ),
        )
        self.assertEqual(set(await other.state_store.get_current_members(room_id)), {ALICE})
