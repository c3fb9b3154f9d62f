"""Presence memory: only users not offline are held (so the timeout check costs what the online
users number); offline users are read from the database, and nothing they did is lost."""

from __future__ import annotations

from tests.harness import on_both_engines
from tests.test_presence import MINUTE_MS, PresenceTestCase


@on_both_engines
class PresenceMemoryTests(PresenceTestCase):
    async def test_offline_lookups_do_not_grow_the_in_memory_map(self):
        presence = self.hs.presence
        held = presence.users_in_memory
        strangers = [f"@stranger{i}:test.heddle" for i in range(200)]
        states = await presence.get_states(strangers)
        self.assertEqual({s.state for s in states.values()}, {"offline"})
        await presence.get_presence_events(self.alice.user_id, None)
        await presence.get_presence_events_for_users([self.bob.user_id, self.carol.user_id])
        r = await self.get_presence(self.alice, self.bob)
        self.assertEqual((r.code, r.json["presence"]), (200, "offline"))
        self.assertEqual(presence.users_in_memory, held)

    async def test_user_who_goes_offline_leaves_memory_and_is_read_back(self):
        presence = self.hs.presence
        held = presence.users_in_memory
        await self.put_presence(self.alice, {"presence": "online", "status_msg": "back soon"})
        self.assertEqual(presence.users_in_memory, held + 1)
        await presence.check_timeouts(self.now() + MINUTE_MS)
        self.assertEqual(presence.users_in_memory, held)
        state = await presence.get_state(self.alice.user_id)
        self.assertEqual((state.state, state.status_msg), ("offline", "back soon"))
        # Coming back online puts them back in memory, where the timeouts apply again.
        await presence.on_sync(self.alice.user_id, None)
        self.assertEqual(presence.users_in_memory, held + 1)
        self.assertEqual(await self.state_of(self.alice), "online")

    async def test_offline_activity_is_kept_until_written_then_read_back(self):
        presence = self.hs.presence
        clock = self.hs.clock
        start = clock.time_msec()
        held = presence.users_in_memory
        self.patch(clock, "time_msec", lambda: start)
        position = presence.current_position
        await presence.bump_active(self.bob.user_id)  # a jump from never: written at once
        self.assertGreater(presence.current_position, position)
        # Held until the next check, so activity that goes on is not re-read each time.
        self.assertEqual(presence.users_in_memory, held + 1)
        # Activity a few seconds later is not news to clients, so it is not written yet...
        self.patch(clock, "time_msec", lambda: start + 5000)
        position = presence.current_position
        await presence.bump_active(self.bob.user_id)
        self.assertEqual(presence.current_position, position)
        self.assertEqual(presence.users_in_memory, held + 1)
        self.assertEqual((await presence.get_state(self.bob.user_id)).last_active_ts, start + 5000)
        stored = await self.hs.presence_store.get_presence([self.bob.user_id])
        self.assertEqual(stored[self.bob.user_id].last_active_ts, start)
        # ...until the periodic check writes it and lets it go.
        await presence.check_timeouts()
        self.assertEqual(presence.users_in_memory, held)
        stored = await self.hs.presence_store.get_presence([self.bob.user_id])
        self.assertEqual(stored[self.bob.user_id].last_active_ts, start + 5000)
        state = await presence.get_state(self.bob.user_id)
        self.assertEqual((state.state, state.last_active_ts), ("offline", start + 5000))
        # A later jump is measured from the last activity, as before it was written.
        self.patch(clock, "time_msec", lambda: start + 5000 + MINUTE_MS - 1)
        await presence.bump_active(self.bob.user_id)
        self.assertEqual(presence.current_position, position)
        await presence.check_timeouts()
        self.assertEqual(presence.users_in_memory, held)

    async def test_timeout_check_visits_only_users_not_offline(self):
        presence = self.hs.presence
        await presence.get_states([f"@stranger{i}:test.heddle" for i in range(100)])
        await self.put_presence(self.alice, {"presence": "online"})
        visited: list[str] = []
        queue = presence._writers.queue

        def counting(key: str):
            visited.append(key)
            return queue(key)

        self.patch(presence._writers, "queue", counting)
        await presence.check_timeouts()
        self.assertEqual(visited, [self.alice.user_id])
