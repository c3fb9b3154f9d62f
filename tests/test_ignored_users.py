"""Ignoring users (spec: "Ignoring Users"): once a user lists someone in
`m.ignored_user_list`, their events other than state are left out of the user's sync
timelines (at once, and for every listener woken by the same message) and of `/messages`
and `/context` pages, and their invites out of sync; un-ignoring sends their new events
again but not those missed meanwhile.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from tests.harness import ensure_deferred, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q


def timeline_ids(sync: dict[str, Any], room_id: str) -> list[str]:
    room = sync["rooms"]["join"].get(room_id, {})
    return [e["event_id"] for e in room.get("timeline", {}).get("events", [])]


@on_both_engines
class IgnoredUsersTests(RoomTestCase):
    async def sync(self, user: User, since: str | None = None) -> dict[str, Any]:
        path = f"{API}/sync?timeout=0" + (f"&since={q(since)}" if since else "")
        r = await self.request("GET", path, token=user.token)
        assert r.code == 200, r
        return r.json

    async def ignore(self, user: User, *ignored: User) -> None:
        r = await self.request(
            "PUT",
            f"{API}/user/{q(user.user_id)}/account_data/m.ignored_user_list",
            {"ignored_users": {other.user_id: {} for other in ignored}},
            token=user.token,
        )
        assert r.code == 200, r

    async def rename(self, user: User, room_id: str) -> str:
        """A state event `user` may send: a new display name in the room."""
        r = await self.put_state(
            user, room_id, "m.room.member", {"membership": "join", "displayname": "New"},
            state_key=user.user_id,
        )
        assert r.code == 200, r
        event_id: str = r.json["event_id"]
        return event_id

    async def room_of_three(self) -> tuple[User, User, User, str]:
        alice, bob, carol = [await self.user(n) for n in ("alice", "bob", "carol")]
        room_id = await self.create_room(alice, preset="public_chat")
        for member in (bob, carol):
            assert (await self.join(member, room_id)).code == 200
        return alice, bob, carol, room_id

    @ensure_deferred
    async def test_an_ignored_users_messages_leave_the_timeline_but_not_their_state(self) -> None:
        alice, bob, carol, room_id = await self.room_of_three()
        # Bob has synced (and so has been asked whom he ignores) before he ignores Carol:
        # the change must still apply at once.
        bob_since = (await self.sync(bob))["next_batch"]
        await self.ignore(bob, carol)
        alice_since = (await self.sync(alice))["next_batch"]
        bob_since = (await self.sync(bob, bob_since))["next_batch"]
        from_carol = (await self.send(carol, room_id)).json["event_id"]
        renamed = await self.rename(carol, room_id)
        from_alice = (await self.send(alice, room_id)).json["event_id"]
        # Both incremental syncs at once, as one message wakes a room's listeners together
        # (and they may share a room section).
        alice_sync, bob_sync = await defer.gatherResults([
            defer.ensureDeferred(self.sync(alice, alice_since)),
            defer.ensureDeferred(self.sync(bob, bob_since)),
        ])
        self.assertEqual(timeline_ids(alice_sync, room_id), [from_carol, renamed, from_alice])
        self.assertEqual(timeline_ids(bob_sync, room_id), [renamed, from_alice])
        # ... and from scratch.
        self.assertEqual(timeline_ids(await self.sync(bob), room_id)[-2:], [renamed, from_alice])
        self.assertIn(from_carol, timeline_ids(await self.sync(alice), room_id))

    @ensure_deferred
    async def test_unignoring_sends_new_events_but_not_those_missed(self) -> None:
        alice, bob, carol, room_id = await self.room_of_three()
        await self.ignore(bob, carol)
        since = (await self.sync(bob))["next_batch"]
        missed = (await self.send(carol, room_id)).json["event_id"]
        since = (await self.sync(bob, since))["next_batch"]
        await self.ignore(bob)
        since = (await self.sync(bob, since))["next_batch"]
        after = (await self.send(carol, room_id)).json["event_id"]
        ids = timeline_ids(await self.sync(bob, since), room_id)
        self.assertEqual(ids, [after])
        self.assertNotIn(missed, ids)

    @ensure_deferred
    async def test_invites_from_an_ignored_user_are_not_sent(self) -> None:
        alice, bob, carol = await self.user("alice"), await self.user("bob"), await self.user("carol")
        await self.ignore(bob, carol)
        since = (await self.sync(bob))["next_batch"]
        from_carol = await self.create_room(carol, invite=[bob.user_id])
        from_alice = await self.create_room(alice, invite=[bob.user_id])
        invites = (await self.sync(bob, since))["rooms"]["invite"]
        self.assertEqual(set(invites), {from_alice})
        self.assertEqual(set((await self.sync(bob))["rooms"]["invite"]), {from_alice})
        self.assertNotIn(from_carol, invites)

    @ensure_deferred
    async def test_pages_leave_out_an_ignored_users_messages(self) -> None:
        alice, bob, carol, room_id = await self.room_of_three()
        from_alice = (await self.send(alice, room_id)).json["event_id"]
        from_carol = (await self.send(carol, room_id)).json["event_id"]
        renamed = await self.rename(carol, room_id)
        last = (await self.send(alice, room_id)).json["event_id"]
        await self.ignore(bob, carol)

        async def page(user: User, limit: int) -> list[str]:
            r = await self.request(
                "GET", f"{API}/rooms/{q(room_id)}/messages?dir=b&limit={limit}", token=user.token
            )
            assert r.code == 200, r
            return [e["event_id"] for e in r.json["chunk"]]

        seen_by_alice = await page(alice, 5)
        self.assertEqual(seen_by_alice[:4], [last, renamed, from_carol, from_alice])
        # Carol's message is left out, her state event (and her join, before) is not.
        self.assertEqual(await page(bob, 4), [e for e in seen_by_alice if e != from_carol])
        r = await self.request(
            "GET", f"{API}/rooms/{q(room_id)}/context/{q(from_alice)}?limit=10", token=bob.token
        )
        assert r.code == 200, r
        context = [e["event_id"] for e in r.json["events_before"] + r.json["events_after"]]
        self.assertIn(renamed, context)
        self.assertIn(last, context)
        self.assertNotIn(from_carol, context)
