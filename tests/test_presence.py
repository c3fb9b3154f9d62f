"""Presence: GET/PUT /presence/{userId}/status, activity and timeouts, and what sync reads.

Spec: api/client-server/presence.yaml; client-server API "Presence" (last active ago, idle
timeout).
"""

from __future__ import annotations

from nio import PresenceGetError, PresenceGetResponse, PresenceSetResponse

from homeserver.sync.tokens import StreamToken
from tests.harness import nio, on_both_engines, transactions_recorded
from tests.room_helpers import API, RoomTestCase, User, q

MINUTE_MS = 60_000


def presence_path(user_id: str) -> str:
    return f"{API}/presence/{q(user_id)}/status"


class PresenceTestCase(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.carol = await self.user("carol")
        # Alice and Bob share a room; Carol shares none with them.
        self.room_id = await self.create_room(self.alice, preset="public_chat")
        r = await self.join(self.bob, self.room_id)
        assert r.code == 200, r

    async def put_presence(self, user: User, body: object, target: str | None = None):
        return await self.request(
            "PUT", presence_path(target or user.user_id), body, token=user.token
        )

    async def get_presence(self, viewer: User, target: User):
        return await self.request("GET", presence_path(target.user_id), token=viewer.token)

    async def state_of(self, user: User) -> str:
        return (await self.hs.presence.get_state(user.user_id)).state

    def now(self) -> int:
        return self.hs.clock.time_msec()


@on_both_engines
class PresenceApiTests(PresenceTestCase):
    async def test_nio_set_and_get_presence(self):
        client = self.nio_client(self.alice)
        resp = await nio(client.set_presence("online", "In a meeting"))
        self.assertIsInstance(resp, PresenceSetResponse)
        got = await nio(client.get_presence(self.alice.user_id))
        self.assertIsInstance(got, PresenceGetResponse)
        self.assertEqual(got.presence, "online")
        self.assertEqual(got.status_msg, "In a meeting")
        self.assertTrue(got.currently_active)
        self.assertIsInstance(got.last_active_ago, int)
        self.assertLess(got.last_active_ago, 10_000)

        # Bob shares a room with Alice, so he may look.
        bob_view = await nio(self.nio_client(self.bob).get_presence(self.alice.user_id))
        self.assertIsInstance(bob_view, PresenceGetResponse)
        self.assertEqual((bob_view.presence, bob_view.status_msg), ("online", "In a meeting"))

        resp = await nio(client.set_presence("unavailable"))
        self.assertIsInstance(resp, PresenceSetResponse)
        r = await self.get_presence(self.bob, self.alice)
        self.assertEqual(r.code, 200, r)
        # A missing status message clears it; currently_active is only given when online.
        self.assertEqual(r.json["presence"], "unavailable")
        self.assertNotIn("status_msg", r.json)
        self.assertNotIn("currently_active", r.json)

    async def test_presence_of_someone_never_seen_is_offline(self):
        r = await self.get_presence(self.bob, self.alice)
        self.assertEqual((r.code, r.json), (200, {"presence": "offline"}))

    async def test_strangers_cannot_see_presence(self):
        await self.put_presence(self.alice, {"presence": "online"})
        r = await self.get_presence(self.carol, self.alice)
        self.assertError(r, 403, "M_FORBIDDEN")
        resp = await nio(self.nio_client(self.carol).get_presence(self.alice.user_id))
        self.assertIsInstance(resp, PresenceGetError)
        # Once Carol joins, she can.
        r = await self.join(self.carol, self.room_id)
        self.assertEqual(r.code, 200, r)
        r = await self.get_presence(self.carol, self.alice)
        self.assertEqual(r.json["presence"], "online")

    async def test_cannot_set_someone_elses_presence(self):
        r = await self.put_presence(self.bob, {"presence": "offline"}, target=self.alice.user_id)
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_bad_requests(self):
        r = await self.put_presence(self.alice, {"presence": "busy"})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.put_presence(self.alice, {"status_msg": "hi"})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.put_presence(self.alice, {"presence": "online", "status_msg": 5})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request(
            "PUT", presence_path(self.alice.user_id), raw=b"{", token=self.alice.token
        )
        self.assertError(r, 400, "M_NOT_JSON")
        r = await self.request("GET", presence_path("not-a-user"), token=self.alice.token)
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", presence_path(self.alice.user_id))
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_receipts_count_as_activity(self):
        await self.put_presence(self.alice, {"presence": "unavailable"})
        r = await self.send(self.bob, self.room_id)
        r = await self.request(
            "POST",
            f"{API}/rooms/{q(self.room_id)}/receipt/m.read/{q(r.json['event_id'])}",
            {},
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.state_of(self.alice), "online")


@on_both_engines
class PresenceTimeoutTests(PresenceTestCase):
    async def test_idle_online_user_becomes_unavailable_and_activity_brings_them_back(self):
        await self.put_presence(self.alice, {"presence": "online", "status_msg": "here"})
        presence = self.hs.presence
        async with presence.syncing(self.alice.user_id, None):
            await presence.check_timeouts(self.now() + 2 * MINUTE_MS)
            state = await presence.get_state(self.alice.user_id)
            # Still online, but no longer currently active after a minute.
            self.assertEqual((state.state, state.currently_active), ("online", False))
            await presence.check_timeouts(self.now() + 6 * MINUTE_MS)
            self.assertEqual(await self.state_of(self.alice), "unavailable")
            # Syncing is not activity: an idle user stays unavailable.
            await presence.on_sync(self.alice.user_id, "online")
            self.assertEqual(await self.state_of(self.alice), "unavailable")
            await presence.bump_active(self.alice.user_id)
            state = await presence.get_state(self.alice.user_id)
            self.assertEqual((state.state, state.currently_active), ("online", True))
            self.assertEqual(state.status_msg, "here")

    async def test_user_who_stops_syncing_goes_offline(self):
        presence = self.hs.presence
        await presence.on_sync(self.alice.user_id, None)
        self.assertEqual(await self.state_of(self.alice), "online")
        # A sync in flight keeps the user from timing out.
        async with presence.syncing(self.alice.user_id, None):
            await presence.check_timeouts(self.now() + MINUTE_MS)
            self.assertEqual(await self.state_of(self.alice), "online")
        await presence.check_timeouts(self.now() + 10_000)
        self.assertEqual(await self.state_of(self.alice), "online")
        await presence.check_timeouts(self.now() + MINUTE_MS)
        self.assertEqual(await self.state_of(self.alice), "offline")

    async def test_another_servers_user_goes_offline_when_their_server_falls_silent(self):
        presence = self.hs.presence
        remote = "@dave:gone.example"
        await presence.set_remote_presence(remote, "online", 0, True, "at work")
        in_memory = presence.users_in_memory
        # Our own timeouts do not apply: after 29 minutes Dave is still online...
        await presence.check_timeouts(self.now() + 29 * MINUTE_MS)
        self.assertEqual((await presence.get_state(remote)).state, "online")
        # ...and his server telling us again restarts the wait.
        await presence.set_remote_presence(remote, "online", 0, True, "at work")
        await presence.check_timeouts(self.now() + 29 * MINUTE_MS)
        self.assertEqual((await presence.get_state(remote)).state, "online")
        # After 30 minutes without word he is offline, and no longer held in memory.
        await presence.check_timeouts(self.now() + 31 * MINUTE_MS)
        await presence.check_timeouts(self.now() + 31 * MINUTE_MS)
        state = await presence.get_state(remote)
        self.assertEqual((state.state, state.status_msg), ("offline", "at work"))
        self.assertEqual(presence.users_in_memory, in_memory - 1)

    async def test_our_users_presence_is_sent_again_before_other_servers_time_it_out(self):
        presence = self.hs.presence
        sent: list[tuple[str, str]] = []

        async def record(p):
            sent.append((p.user_id, p.state))

        presence.local_change_listeners.append(record)
        await self.put_presence(self.alice, {"presence": "online"})
        sent.clear()
        async with presence.syncing(self.alice.user_id, None):
            # Idle after 10 minutes: told as a change.
            await presence.check_timeouts(self.now() + 10 * MINUTE_MS)
            self.assertEqual(sent, [(self.alice.user_id, "unavailable")])
            sent.clear()
            # Within other servers' 30 minutes: sent again, unchanged, offline users not.
            await presence.check_timeouts(self.now() + 26 * MINUTE_MS)
            self.assertEqual(sent, [(self.alice.user_id, "unavailable")])
            # Not again until another interval has passed.
            await presence.check_timeouts(self.now() + 27 * MINUTE_MS)
            self.assertEqual(len(sent), 1)

    async def test_set_presence_on_sync(self):
        presence = self.hs.presence
        await presence.on_sync(self.alice.user_id, "offline")
        self.assertEqual(await self.state_of(self.alice), "offline")
        await presence.on_sync(self.alice.user_id, "unavailable")
        self.assertEqual(await self.state_of(self.alice), "unavailable")
        # A client returning from "unavailable" by choice comes back online.
        await presence.on_sync(self.alice.user_id, "online")
        self.assertEqual(await self.state_of(self.alice), "online")
        # An explicit PUT sets the state whatever the syncs say.
        await self.put_presence(self.alice, {"presence": "unavailable"})
        self.assertEqual(await self.state_of(self.alice), "unavailable")


@on_both_engines
class PresenceSyncApiTests(PresenceTestCase):
    async def test_initial_and_incremental_presence_for_room_sharers(self):
        presence = self.hs.presence
        await self.put_presence(self.alice, {"presence": "online", "status_msg": "hi"})
        await self.put_presence(self.carol, {"presence": "online"})
        events = await presence.get_presence_events(self.bob.user_id, None)
        # Bob sees Alice (shared room), not Carol (no shared room), and not himself (offline).
        self.assertEqual([e["sender"] for e in events], [self.alice.user_id])
        [event] = events
        self.assertEqual(event["type"], "m.presence")
        self.assertEqual(event["content"]["presence"], "online")
        self.assertEqual(event["content"]["status_msg"], "hi")
        self.assertTrue(event["content"]["currently_active"])

        position = presence.current_position
        self.assertEqual(await presence.get_presence_events(self.bob.user_id, position), [])
        await self.put_presence(self.alice, {"presence": "offline"})
        await self.put_presence(self.carol, {"presence": "offline"})
        events = await presence.get_presence_events(self.bob.user_id, position)
        # Incremental syncs carry changes to offline too.
        self.assertEqual(
            [(e["sender"], e["content"]["presence"]) for e in events],
            [(self.alice.user_id, "offline")],
        )
        # Bounded by up_to.
        self.assertEqual(
            await presence.get_presence_events(self.bob.user_id, position, up_to=position), []
        )
        # The database answers when the in-memory index cannot.
        self.hs.presence_changes.initialise(presence.current_position)
        events = await presence.get_presence_events(self.bob.user_id, position)
        self.assertEqual([e["sender"] for e in events], [self.alice.user_id])

    async def test_a_token_from_before_any_presence_is_incremental(self):
        """A sync token's presence position is 0 until someone's presence first changes: a
        sync from it is incremental (who changed since), not an initial one reading the
        presence of every room-mate."""
        offline_mates = [await self.user(f"mate{i}") for i in range(10)]
        for mate in offline_mates:
            r = await self.join(mate, self.room_id)
            self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/sync?set_presence=offline", token=self.bob.token)
        self.assertEqual(r.code, 200, r)
        since = r.json["next_batch"]
        self.assertTrue(since.startswith("s"))
        self.assertEqual(StreamToken.parse(since).presence, 0)
        await self.put_presence(self.alice, {"presence": "online"})
        with transactions_recorded(self.hs) as calls:
            r = await self.request(
                "GET", f"{API}/sync?set_presence=offline&since={q(since)}", token=self.bob.token
            )
        self.assertEqual(r.code, 200, r)
        senders = [e["sender"] for e in r.json["presence"]["events"]]
        self.assertEqual(senders, [self.alice.user_id])
        self.assertNotIn("get_presence", calls)

    async def test_changes_wake_everyone_sharing_a_room(self):
        notifier = self.hs.notifier
        before = {u.user_id: notifier.position(u.user_id) for u in (self.alice, self.bob, self.carol)}
        await self.put_presence(self.alice, {"presence": "online"})
        self.assertGreater(notifier.position(self.alice.user_id), before[self.alice.user_id])
        self.assertGreater(notifier.position(self.bob.user_id), before[self.bob.user_id])
        self.assertEqual(notifier.position(self.carol.user_id), before[self.carol.user_id])

    async def test_presence_for_users(self):
        events = await self.hs.presence.get_presence_events_for_users([self.carol.user_id])
        self.assertEqual(
            events,
            [{"type": "m.presence", "sender": self.carol.user_id, "content": {"presence": "offline"}}],
        )

    async def test_presence_persists_across_restart(self):
        await self.put_presence(self.alice, {"presence": "unavailable", "status_msg": "away"})
        position = self.hs.presence.current_position
        stored = await self.hs.presence_store.get_presence([self.alice.user_id])
        self.assertEqual(stored[self.alice.user_id].state, "unavailable")
        self.assertEqual(stored[self.alice.user_id].status_msg, "away")
        self.assertEqual(await self.hs.presence_store.get_max_stream_id(), position)
        # What start-up loads so the timeouts keep running.
        loaded = await self.hs.presence_store.get_not_offline()
        self.assertEqual([p.user_id for p in loaded], [self.alice.user_id])


@on_both_engines
class PresenceConfigTests(PresenceTestCase):
    config_overrides = {"presence": {"idle_timeout_ms": 1000}}

    async def test_idle_timeout_is_configurable(self):
        await self.put_presence(self.alice, {"presence": "online"})
        await self.hs.presence.check_timeouts(self.now() + 2000)
        self.assertEqual(await self.state_of(self.alice), "unavailable")


@on_both_engines
class PresenceDisabledTests(PresenceTestCase):
    config_overrides = {"presence": {"enabled": False}}

    async def test_disabled_presence_is_accepted_and_reads_offline(self):
        r = await self.put_presence(self.alice, {"presence": "online"})
        self.assertEqual(r.code, 200, r)
        r = await self.get_presence(self.bob, self.alice)
        self.assertEqual(r.json, {"presence": "offline"})
        self.assertEqual(await self.hs.presence.get_presence_events(self.bob.user_id, None), [])
        # Permissions still apply.
        r = await self.put_presence(self.bob, {"presence": "online"}, target=self.alice.user_id)
        self.assertError(r, 403, "M_FORBIDDEN")
