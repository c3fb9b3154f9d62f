"""Sending a message is activity: an unavailable user comes back online. Which presence
changes wake room-mates' syncs (and go to other servers): changes of the state, status
message or `currently_active`, not the last active time of a user currently active, which is
kept all the same (spec: "Last active ago").
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from homeserver.presence import SAVE_ACTIVITY_INTERVAL_MS
from tests.harness import HomeserverTestCase, on_both_engines
from tests.room_helpers import API, User, q
from tests.test_presence import MINUTE_MS, PresenceTestCase

ALICE = "@alice:test.heddle"


@on_both_engines
class SendingIsActivity(HomeserverTestCase):
    async def test_unavailable_user_sending_a_message_is_online(self):
        token = (await self.register("alice"))["access_token"]
        r = await self.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)
        room_id = r.json["room_id"]
        r = await self.request("PUT", f"/_matrix/client/v3/presence/{ALICE}/status", {"presence": "unavailable"}, token=token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"/_matrix/client/v3/presence/{ALICE}/status", token=token)
        self.assertEqual(r.json["presence"], "unavailable")
        r = await self.request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
                               {"msgtype": "m.text", "body": "back"}, token=token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"/_matrix/client/v3/presence/{ALICE}/status", token=token)
        self.assertEqual(r.json["presence"], "online")
        self.assertTrue(r.json["currently_active"])


class WakesTestCase(PresenceTestCase):
    async def sync(self, user: User, since: str | None = None, timeout_ms: int = 0) -> Any:
        """A /sync that leaves the user's own presence alone."""
        path = f"{API}/sync?timeout={timeout_ms}&set_presence=offline"
        if since is not None:
            path += f"&since={q(since)}"
        r = await self.request("GET", path, token=user.token)
        self.assertEqual(r.code, 200, r)
        return r.json

    def count_wakes(self, user: User) -> list[int]:
        """From now on, one entry per time `user`'s syncs are woken."""
        wakes: list[int] = []
        notifier = self.hs.notifier
        notify_users = notifier.notify_users

        def counting(user_ids: Any) -> None:
            user_ids = set(user_ids)
            if user.user_id in user_ids:
                wakes.append(1)
            notify_users(user_ids)

        self.patch(notifier, "notify_users", counting)
        return wakes

    async def send_and_wait(self, sender: User, listener: User, since: str, body: str) -> Any:
        """`sender` sends a message while `listener` long-polls from `since`; once the send
        has returned (its presence activity included), what the listener has from `since`."""
        polling = defer.ensureDeferred(self.sync(listener, since, timeout_ms=5000))
        r = await self.send(sender, self.room_id, {"msgtype": "m.text", "body": body})
        self.assertEqual(r.code, 200, r)
        await polling
        return await self.sync(listener, since)

    def presence_of(self, body: Any) -> dict[str, dict[str, Any]]:
        return {e["sender"]: e["content"] for e in body["presence"]["events"]}

    def timeline_bodies(self, body: Any) -> list[str]:
        room = body["rooms"]["join"].get(self.room_id, {})
        return [e["content"].get("body") for e in room.get("timeline", {}).get("events", [])]


@on_both_engines
class ActivityWakes(WakesTestCase):
    async def test_active_user_sending_messages_wakes_room_mates_with_the_messages_only(self):
        await self.put_presence(self.alice, {"presence": "online"})
        first = since = (await self.sync(self.bob))["next_batch"]
        wakes = self.count_wakes(self.bob)
        for i in range(3):
            sent_after = self.now()
            body = await self.send_and_wait(self.alice, self.bob, since, f"message {i}")
            self.assertEqual(self.timeline_bodies(body), [f"message {i}"])
            self.assertEqual(self.presence_of(body), {})
            since = body["next_batch"]
        # One wake per message, and no presence change to read.
        self.assertEqual(len(wakes), 3)
        self.assertEqual(self.presence_of(await self.sync(self.bob, first)), {})
        # Yet the last active time moved on, as anyone reading presence sees.
        r = await self.get_presence(self.bob, self.alice)
        self.assertEqual((r.json["presence"], r.json["currently_active"]), ("online", True))
        self.assertLessEqual(r.json["last_active_ago"], self.now() - sent_after)

    async def test_unavailable_user_coming_back_online_wakes_room_mates(self):
        await self.put_presence(self.alice, {"presence": "unavailable"})
        since = (await self.sync(self.bob))["next_batch"]
        wakes = self.count_wakes(self.bob)
        body = await self.send_and_wait(self.alice, self.bob, since, "back")
        self.assertEqual(self.timeline_bodies(body), ["back"])
        content = self.presence_of(body)[self.alice.user_id]
        self.assertEqual((content["presence"], content["currently_active"]), ("online", True))
        # The message, then the change of presence.
        self.assertEqual(len(wakes), 2)

    async def test_going_idle_wakes_room_mates(self):
        presence = self.hs.presence
        await self.put_presence(self.alice, {"presence": "online"})
        async with presence.syncing(self.alice.user_id, None):
            await presence.check_timeouts(self.now() + 2 * MINUTE_MS)
            since = (await self.sync(self.bob))["next_batch"]
            # Only the state changes now (currently_active is already false).
            wakes = self.count_wakes(self.bob)
            await presence.check_timeouts(self.now() + 6 * MINUTE_MS)
        self.assertEqual(len(wakes), 1)
        body = await self.sync(self.bob, since)
        self.assertEqual(self.presence_of(body)[self.alice.user_id]["presence"], "unavailable")

    async def test_currently_active_turning_false_then_true_wakes_room_mates(self):
        presence = self.hs.presence
        await self.put_presence(self.alice, {"presence": "online"})
        since = (await self.sync(self.bob))["next_batch"]
        async with presence.syncing(self.alice.user_id, None):
            # A minute and more without activity: no longer currently active.
            await presence.check_timeouts(self.now() + 2 * MINUTE_MS)
        body = await self.sync(self.bob, since)
        content = self.presence_of(body)[self.alice.user_id]
        self.assertEqual((content["presence"], content["currently_active"]), ("online", False))
        # Activity makes her currently active again: room-mates hear of it after the message.
        wakes = self.count_wakes(self.bob)
        body = await self.send_and_wait(self.alice, self.bob, body["next_batch"], "still here")
        self.assertEqual(self.timeline_bodies(body), ["still here"])
        content = self.presence_of(body)[self.alice.user_id]
        self.assertEqual((content["presence"], content["currently_active"]), ("online", True))
        self.assertEqual(len(wakes), 2)


@on_both_engines
class SilentActivityIsWritten(WakesTestCase):
    async def test_last_active_time_of_an_active_user_is_written_for_the_next_start(self):
        presence, clock = self.hs.presence, self.hs.clock
        start = clock.time_msec()
        self.patch(clock, "time_msec", lambda: start)
        await self.put_presence(self.alice, {"presence": "online"})
        position = presence.current_position
        async with presence.syncing(self.alice.user_id, None):
            self.patch(clock, "time_msec", lambda: start + 10_000)
            r = await self.send(self.alice, self.room_id)
            self.assertEqual(r.code, 200, r)
            # Nobody was told...
            self.assertEqual(presence.current_position, position)
            r = await self.get_presence(self.bob, self.alice)
            self.assertEqual(r.json["last_active_ago"], 0)
            # ...and the periodic check writes it, so a restart reads it back.
            await presence.check_timeouts(start + 5_000 + SAVE_ACTIVITY_INTERVAL_MS)
        stored = await self.hs.presence_store.get_presence([self.alice.user_id])
        self.assertEqual(stored[self.alice.user_id].last_active_ts, start + 10_000)
        loaded = {p.user_id: p for p in await self.hs.presence_store.get_not_offline()}
        self.assertEqual(loaded[self.alice.user_id].last_active_ts, start + 10_000)
        self.assertEqual(presence.current_position, position)

    async def test_last_active_time_is_written_when_the_server_stops(self):
        presence, clock = self.hs.presence, self.hs.clock
        start = clock.time_msec() - 100_000
        self.patch(clock, "time_msec", lambda: start)
        await self.put_presence(self.alice, {"presence": "online"})
        # Active again 90 seconds later (10 seconds ago): nobody told, nothing written yet.
        self.patch(clock, "time_msec", lambda: start + 90_000)
        await presence.bump_active(self.alice.user_id)
        await self.restart_server()
        r = await self.get_presence(self.bob, self.alice)
        self.assertEqual(r.code, 200, r)
        self.assertLess(r.json["last_active_ago"], 60_000)
