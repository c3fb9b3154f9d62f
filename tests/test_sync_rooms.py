"""Joined rooms in /sync as clients read them: filtered timelines, room summaries and lazily
loaded members across incremental syncs. Over real HTTP on loopback, on both engines."""

from __future__ import annotations

import json
from typing import Any

from tests.harness import on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q


class SyncRoomHelpers(RoomTestCase):
    async def sync(self, user: User, since: str | None = None, **params: Any) -> dict[str, Any]:
        query = "&".join(f"{k}={q(v if isinstance(v, str) else json.dumps(v))}" for k, v in params.items())
        path = f"{API}/sync?timeout=0&{query}"
        if since is not None:
            path += f"&since={q(since)}"
        r = await self.request("GET", path, token=user.token)
        self.assertEqual(r.code, 200, r)
        return r.json

    async def filler(self, user: User, room_id: str, count: int) -> None:
        for _ in range(count):
            r = await self.send(user, room_id, {"filler": True}, event_type="org.example.filler")
            self.assertEqual(r.code, 200, r)


@on_both_engines
class FilteredTimeline(SyncRoomHelpers):
    async def test_type_filter_reaches_back_past_other_events(self):
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        r = await self.send(alice, room_id, {"msgtype": "m.text", "body": "the message"})
        message_id = r.json["event_id"]
        await self.filler(alice, room_id, 12)
        flt = {"room": {"timeline": {"limit": 1, "types": ["m.room.message"]}}}
        room = (await self.sync(alice, filter=flt))["rooms"]["join"][room_id]
        self.assertEqual([e["event_id"] for e in room["timeline"]["events"]], [message_id])
        # Every earlier event was read and none matches: nothing is left out.
        self.assertFalse(room["timeline"]["limited"])

    async def test_a_filter_taking_no_type_reads_one_page_only(self):
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        await self.filler(alice, room_id, 30)
        reads = []
        original = self.hs.event_store.get_room_events_between

        async def counting(*args, **kwargs):
            reads.append(args)
            return await original(*args, **kwargs)

        self.hs.event_store.get_room_events_between = counting
        try:
            room = (await self.sync(alice, filter={"room": {"timeline": {"types": []}}}))["rooms"]["join"][room_id]
        finally:
            self.hs.event_store.get_room_events_between = original
        self.assertEqual(room["timeline"]["events"], [])
        self.assertEqual([a for a in reads if a[0] == room_id], [reads[0]])


LAZY = {"room": {"timeline": {"limit": 10}, "state": {"lazy_load_members": True}}}
LAZY_ONE = {"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": True}}}
LAZY_REDUNDANT = {
    "room": {
        "timeline": {"limit": 10},
        "state": {"lazy_load_members": True, "include_redundant_members": True},
    }
}


def state_members(body: dict[str, Any], room_id: str) -> dict[str, str]:
    """state_key -> membership of the member events in the room's state block."""
    room = body["rooms"]["join"].get(room_id, {"state": {"events": []}})
    return {
        e["state_key"]: e["content"]["membership"]
        for e in room["state"]["events"]
        if e["type"] == "m.room.member"
    }


@on_both_engines
class LazyMembersIncremental(SyncRoomHelpers):
    async def room_with(self, *users: User) -> str:
        room_id = await self.create_room(users[0], preset="public_chat")
        for user in users[1:]:
            r = await self.join(user, room_id)
            self.assertEqual(r.code, 200, r)
        return room_id

    async def test_only_new_senders_members_come_in_later_syncs(self):
        alice, bob, carol = await self.user("alice"), await self.user("bob"), await self.user("carol")
        room_id = await self.room_with(alice, bob, carol)
        await self.filler(bob, room_id, 10)
        first = await self.sync(alice, filter=LAZY)
        self.assertEqual(state_members(first, room_id), {alice.user_id: "join", bob.user_id: "join"})
        await self.send(carol, room_id)
        await self.send(bob, room_id)
        second = await self.sync(alice, first["next_batch"], filter=LAZY)
        # Bob's membership came with the first sync; the user's own is no news either.
        self.assertEqual(state_members(second, room_id), {carol.user_id: "join"})
        await self.send(bob, room_id)
        await self.send(carol, room_id)
        third = await self.sync(alice, second["next_batch"], filter=LAZY)
        self.assertEqual(state_members(third, room_id), {})

    async def test_redundant_members_are_sent_when_asked(self):
        alice, bob, carol = await self.user("alice"), await self.user("bob"), await self.user("carol")
        room_id = await self.room_with(alice, bob, carol)
        await self.filler(bob, room_id, 9)
        await self.send(carol, room_id)
        first = await self.sync(alice, filter=LAZY_REDUNDANT)
        self.assertEqual(
            set(state_members(first, room_id)), {alice.user_id, bob.user_id, carol.user_id}
        )
        await self.send(bob, room_id)
        await self.send(carol, room_id)
        second = await self.sync(alice, first["next_batch"], filter=LAZY_REDUNDANT)
        self.assertEqual(set(state_members(second, room_id)), {bob.user_id, carol.user_id})

    async def test_a_retried_token_gets_the_members_again(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        await self.filler(alice, room_id, 10)
        first = await self.sync(alice, filter=LAZY)
        self.assertEqual(state_members(first, room_id), {alice.user_id: "join"})
        await self.send(bob, room_id)
        second = await self.sync(alice, first["next_batch"], filter=LAZY)
        self.assertEqual(state_members(second, room_id), {bob.user_id: "join"})
        # The client never saw that response and asks again from the same token.
        again = await self.sync(alice, first["next_batch"], filter=LAZY)
        self.assertEqual(state_members(again, room_id), {bob.user_id: "join"})
        # A new initial sync (a client that lost its store) forgets what was sent before:
        # Bob's membership, not in it, comes with his next message.
        await self.filler(alice, room_id, 1)
        fresh = await self.sync(alice, filter=LAZY_ONE)
        self.assertEqual(state_members(fresh, room_id), {alice.user_id: "join"})
        await self.send(bob, room_id)
        after = await self.sync(alice, fresh["next_batch"], filter=LAZY_ONE)
        self.assertEqual(state_members(after, room_id), {bob.user_id: "join"})

    async def test_a_gap_brings_the_membership_changes_in_it(self):
        alice, bob, carol, dave = (
            await self.user("alice"), await self.user("bob"), await self.user("carol"),
            await self.user("dave"),
        )
        room_id = await self.room_with(alice, bob, carol)
        await self.filler(bob, room_id, 10)
        first = await self.sync(alice, filter=LAZY)
        self.assertEqual(state_members(first, room_id), {alice.user_id: "join", bob.user_id: "join"})
        self.assertEqual((await self.join(dave, room_id)).code, 200)
        await self.filler(carol, room_id, 12)
        second = await self.sync(alice, first["next_batch"], filter=LAZY)
        self.assertTrue(second["rooms"]["join"][room_id]["timeline"]["limited"])
        # Carol speaks; Dave joined in the gap, which the client would otherwise not know.
        self.assertEqual(
            state_members(second, room_id), {carol.user_id: "join", dave.user_id: "join"}
        )
        r = await self.membership_action(dave, room_id, "leave")
        self.assertEqual(r.code, 200, r)
        await self.filler(carol, room_id, 12)
        third = await self.sync(alice, second["next_batch"], filter=LAZY)
        self.assertEqual(state_members(third, room_id), {dave.user_id: "leave"})


@on_both_engines
class RoomSummary(SyncRoomHelpers):
    async def test_heroes_only_for_rooms_without_a_name(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room_id)).code, 200)
        summary = (await self.sync(alice))["rooms"]["join"][room_id]["summary"]
        self.assertEqual(summary["m.heroes"], [bob.user_id])
        r = await self.put_state(alice, room_id, "m.room.name", {"name": "Named"})
        self.assertEqual(r.code, 200, r)
        summary = (await self.sync(alice))["rooms"]["join"][room_id]["summary"]
        self.assertEqual(summary, {"m.joined_member_count": 2, "m.invited_member_count": 0})
        # An empty name names nothing: the heroes are back.
        r = await self.put_state(alice, room_id, "m.room.name", {"name": ""})
        self.assertEqual(r.code, 200, r)
        summary = (await self.sync(alice))["rooms"]["join"][room_id]["summary"]
        self.assertEqual(summary["m.heroes"], [bob.user_id])


@on_both_engines
class StateAcrossMembershipChanges(SyncRoomHelpers):
    async def test_room_joined_and_left_between_syncs_comes_with_its_state(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.create_room(alice)
        r = await self.put_state(alice, room_id, "org.example.state", {"my_key": 1})
        self.assertEqual(r.code, 200, r)
        r = await self.membership_action(alice, room_id, "invite", {"user_id": bob.user_id})
        self.assertEqual(r.code, 200, r)
        flt = {
            "room": {
                "timeline": {"types": []},
                "state": {"types": ["org.example.state"]},
                "include_leave": True,
            }
        }
        first = await self.sync(bob, filter=flt)
        self.assertIn(room_id, first["rooms"]["invite"])
        self.assertEqual((await self.join(bob, room_id)).code, 200)
        self.assertEqual((await self.membership_action(bob, room_id, "leave")).code, 200)
        second = await self.sync(bob, first["next_batch"], filter=flt)
        state = second["rooms"]["leave"][room_id]["state"]["events"]
        self.assertEqual(
            [(e["type"], e["content"]) for e in state], [("org.example.state", {"my_key": 1})]
        )

    async def test_current_state_from_history_the_user_may_not_read_is_in_the_timeline(self):
        creator, syncer, invitee = (
            await self.user("creator"), await self.user("syncer"), await self.user("invitee")
        )
        room_id = await self.create_room(creator, preset="public_chat")
        self.assertEqual((await self.join(syncer, room_id)).code, 200)
        r = await self.put_state(
            creator, room_id, "m.room.history_visibility", {"history_visibility": "joined"}
        )
        self.assertEqual(r.code, 200, r)
        first = await self.sync(syncer)
        self.assertEqual((await self.membership_action(syncer, room_id, "leave")).code, 200)
        r = await self.send(creator, room_id, {"msgtype": "m.text", "body": "while away"})
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.join(invitee, room_id)).code, 200)
        self.assertEqual((await self.join(syncer, room_id)).code, 200)
        second = await self.sync(syncer, first["next_batch"])
        timeline = second["rooms"]["join"][room_id]["timeline"]["events"]
        joins = [
            e["state_key"] for e in timeline
            if e["type"] == "m.room.member" and e["content"]["membership"] == "join"
        ]
        self.assertIn(invitee.user_id, joins)
        # A message from that stretch stays hidden.
        self.assertNotIn("while away", [e["content"].get("body") for e in timeline])


@on_both_engines
class NewRoomMatesPresence(SyncRoomHelpers):
    async def test_someone_joining_brings_their_presence(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        r = await self.request(
            "PUT", f"{API}/presence/{q(bob.user_id)}/status",
            {"presence": "online", "status_msg": "here"}, token=bob.token,
        )
        self.assertEqual(r.code, 200, r)
        first = await self.sync(alice)
        # Bob's presence changed before he shared a room with Alice: not news by itself.
        self.assertEqual((await self.join(bob, room_id)).code, 200)
        second = await self.sync(alice, first["next_batch"])
        bobs = [e for e in second["presence"]["events"] if e["sender"] == bob.user_id]
        self.assertEqual(len(bobs), 1, second["presence"])
        self.assertEqual(bobs[0]["content"]["status_msg"], "here")
        third = await self.sync(alice, second["next_batch"])
        self.assertEqual(
            [e for e in third["presence"]["events"] if e["sender"] == bob.user_id], []
        )
