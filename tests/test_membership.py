"""Room membership: join (by ID and alias), knock, invite, leave, forget, kick, ban, unban,
/joined_rooms, and membership through PUT /state/m.room.member.

Spec: api/client-server/joining.yaml, knocking.yaml, inviting.yaml, leaving.yaml,
kicking.yaml, banning.yaml, list_joined_rooms.yaml; client-server API "Room membership".
"""

from __future__ import annotations

from nio import (
    JoinError,
    JoinResponse,
    RoomBanResponse,
    RoomForgetResponse,
    RoomInviteError,
    RoomInviteResponse,
    RoomKickResponse,
    RoomKnockResponse,
    RoomLeaveResponse,
    RoomUnbanResponse,
)
from twisted.internet import defer

from tests.harness import nio, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

MEMBER = "m.room.member"


@on_both_engines
class MembershipTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.carol = await self.user("carol")

    async def member_event(self, room_id: str, user: User):
        state = await self.current_state(room_id)
        return state.get((MEMBER, user.user_id))

    async def joined_rooms(self, user: User) -> list[str]:
        r = await self.request("GET", f"{API}/joined_rooms", token=user.token)
        self.assertEqual(r.code, 200, r)
        return r.json["joined_rooms"]

    # ----- matrix-nio flows ----------------------------------------------------------------

    async def test_nio_invite_join_leave_forget(self):
        alice = self.nio_client(self.alice)
        bob = self.nio_client(self.bob)
        created = await nio(alice.room_create(name="Private"))
        room_id = created.room_id

        refused = await nio(bob.join(room_id))
        self.assertIsInstance(refused, JoinError)
        self.assertEqual(refused.status_code, "M_FORBIDDEN")

        invited = await nio(alice.room_invite(room_id, self.bob.user_id))
        self.assertIsInstance(invited, RoomInviteResponse)
        invite = await self.member_event(room_id, self.bob)
        self.assertEqual(dict(invite.content), {"membership": "invite", "displayname": "bob"})
        self.assertEqual(invite.sender, self.alice.user_id)

        joined = await nio(bob.join(room_id))
        self.assertIsInstance(joined, JoinResponse)
        self.assertEqual(await self.membership_of(room_id, self.bob), "join")
        self.assertEqual(await self.joined_rooms(self.bob), [room_id])

        left = await nio(bob.room_leave(room_id))
        self.assertIsInstance(left, RoomLeaveResponse)
        self.assertEqual(await self.membership_of(room_id, self.bob), "leave")
        self.assertEqual(await self.joined_rooms(self.bob), [])
        forgot = await nio(bob.room_forget(room_id))
        self.assertIsInstance(forgot, RoomForgetResponse)
        row = await self.hs.room_store.get_membership(room_id, self.bob.user_id)
        self.assertTrue(row.forgotten)

        # Invite-only: after leaving, Bob needs a new invite; it un-forgets the room.
        refused = await nio(bob.join(room_id))
        self.assertIsInstance(refused, JoinError)
        await nio(alice.room_invite(room_id, self.bob.user_id))
        row = await self.hs.room_store.get_membership(room_id, self.bob.user_id)
        self.assertEqual((row.membership, row.forgotten), ("invite", False))

    async def test_nio_kick_ban_unban(self):
        alice = self.nio_client(self.alice)
        bob = self.nio_client(self.bob)
        room_id = await self.create_room(self.alice, preset="public_chat")
        self.assertIsInstance(await nio(bob.join(room_id)), JoinResponse)

        kicked = await nio(alice.room_kick(room_id, self.bob.user_id, reason="Too loud"))
        self.assertIsInstance(kicked, RoomKickResponse)
        event = await self.member_event(room_id, self.bob)
        self.assertEqual(dict(event.content), {"membership": "leave", "reason": "Too loud"})
        self.assertEqual(event.sender, self.alice.user_id)
        # A kicked user may come back to a public room.
        self.assertIsInstance(await nio(bob.join(room_id)), JoinResponse)

        banned = await nio(alice.room_ban(room_id, self.bob.user_id, reason="Still loud"))
        self.assertIsInstance(banned, RoomBanResponse)
        event = await self.member_event(room_id, self.bob)
        self.assertEqual(dict(event.content), {"membership": "ban", "reason": "Still loud"})
        refused = await nio(bob.join(room_id))
        self.assertIsInstance(refused, JoinError)
        self.assertEqual(refused.status_code, "M_FORBIDDEN")
        reinvite = await nio(alice.room_invite(room_id, self.bob.user_id))
        self.assertIsInstance(reinvite, RoomInviteError)
        self.assertEqual(reinvite.status_code, "M_FORBIDDEN")

        unbanned = await nio(alice.room_unban(room_id, self.bob.user_id))
        self.assertIsInstance(unbanned, RoomUnbanResponse)
        self.assertEqual(await self.membership_of(room_id, self.bob), "leave")
        self.assertIsInstance(await nio(bob.join(room_id)), JoinResponse)

    async def test_nio_knock(self):
        alice = self.nio_client(self.alice)
        bob = self.nio_client(self.bob)
        room_id = await self.create_room(
            self.alice, initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]
        )
        knocked = await nio(bob.room_knock(room_id, reason="Let me in"))
        self.assertIsInstance(knocked, RoomKnockResponse)
        self.assertEqual(knocked.room_id, room_id)
        event = await self.member_event(room_id, self.bob)
        self.assertEqual(
            dict(event.content), {"membership": "knock", "reason": "Let me in", "displayname": "bob"}
        )
        # An identical knock changes nothing.
        again = await self.request("POST", f"{API}/knock/{q(room_id)}", {"reason": "Let me in"}, token=self.bob.token)
        self.assertEqual(again.code, 200, again)
        # Accepting the knock is an invite.
        self.assertIsInstance(await nio(alice.room_invite(room_id, self.bob.user_id)), RoomInviteResponse)
        self.assertIsInstance(await nio(bob.join(room_id)), JoinResponse)

    # ----- joining -------------------------------------------------------------------------

    async def test_join_by_alias(self):
        room_id = await self.create_room(self.alice, preset="public_chat", room_alias_name="lobby")
        r = await self.join(self.bob, "#lobby:test.heddle")
        self.assertEqual((r.code, r.json), (200, {"room_id": room_id}))
        r = await self.join(self.carol, room_id)
        self.assertEqual((r.code, r.json), (200, {"room_id": room_id}))
        r = await self.request("POST", f"{API}/rooms/{q(room_id)}/join", {}, token=self.carol.token)
        self.assertEqual((r.code, r.json), (200, {"room_id": room_id}))

    async def test_join_bad_rooms_and_aliases(self):
        self.assertError(await self.join(self.bob, "#unknown:test.heddle"), 404, "M_NOT_FOUND")
        for bad in ("#nocolon", "#:test.heddle", "#a:bad server", "garbage", "@bob:test.heddle"):
            self.assertError(await self.join(self.bob, bad), 400, "M_INVALID_PARAM")
        # Other servers' rooms and aliases, when those servers cannot be reached (tests
        # resolve no names): a clear 502, never a 500.
        self.assertError(await self.join(self.bob, "#room:elsewhere.example"), 502, "M_UNKNOWN")
        self.assertError(await self.join(self.bob, "!room:elsewhere.example"), 502, "M_UNKNOWN")
        self.assertError(await self.join(self.bob, "!unknown:test.heddle"), 404, "M_NOT_FOUND")
        r = await self.request(
            "POST", f"{API}/rooms/{q('#lobby:test.heddle')}/join", {}, token=self.bob.token
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        room_id = await self.create_room(self.alice)
        r = await self.join(self.bob, room_id, {"reason": 5})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.join(self.bob, room_id, {"third_party_signed": {"mxid": self.bob.user_id}})
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("POST", f"{API}/join/{q(room_id)}", {}, token=None)
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_join_invite_only_room_without_invite(self):
        room_id = await self.create_room(self.alice)
        self.assertError(await self.join(self.bob, room_id), 403, "M_FORBIDDEN")
        self.assertIsNone(await self.membership_of(room_id, self.bob))

    async def test_join_carries_profile_and_reason_and_is_idempotent(self):
        r = await self.request(
            "PUT", f"{API}/profile/{q(self.bob.user_id)}/avatar_url",
            {"avatar_url": "mxc://test.heddle/b"}, token=self.bob.token,
        )
        self.assertEqual(r.code, 200, r)
        room_id = await self.create_room(self.alice, preset="public_chat")
        r = await self.join(self.bob, room_id, {"reason": "Hello"})
        self.assertEqual(r.code, 200, r)
        event = await self.member_event(room_id, self.bob)
        self.assertEqual(
            dict(event.content),
            {"membership": "join", "reason": "Hello", "displayname": "bob", "avatar_url": "mxc://test.heddle/b"},
        )
        count = len(await self.room_events(room_id))
        r = await self.join(self.bob, room_id, {"reason": "Hello"})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(len(await self.room_events(room_id)), count)

    # ----- invites -------------------------------------------------------------------------

    async def test_invite_errors(self):
        room_id = await self.create_room(self.alice, preset="public_chat")

        async def invite(user: User, body: object, room: str = room_id):
            return await self.membership_action(user, room, "invite", body)

        # Only members invite.
        self.assertError(await invite(self.bob, {"user_id": self.carol.user_id}), 403, "M_FORBIDDEN")
        self.assertEqual((await self.join(self.bob, room_id)).code, 200)
        # In a public_chat room inviting needs power 50; Bob has 0.
        self.assertError(await invite(self.bob, {"user_id": self.carol.user_id}), 403, "M_FORBIDDEN")
        # Already in the room.
        self.assertError(await invite(self.alice, {"user_id": self.bob.user_id}), 403, "M_FORBIDDEN")
        self.assertError(await invite(self.alice, {"user_id": "carol"}), 400, "M_INVALID_PARAM")
        self.assertError(await invite(self.alice, {}), 400, "M_BAD_JSON")
        self.assertError(await invite(self.alice, {"user_id": 7}), 400, "M_BAD_JSON")
        self.assertError(await invite(self.alice, {"user_id": "@nobody:test.heddle"}), 404, "M_NOT_FOUND")
        r = await invite(self.alice, {"user_id": "@dan:elsewhere.example"})
        self.assertEqual(r.code, 502, r)
        self.assertEqual(r.json["errcode"], "M_UNKNOWN")
        self.assertError(
            await invite(self.alice, {"id_server": "id.example", "medium": "email", "address": "c@d.e"}),
            403, "M_FORBIDDEN",
        )
        self.assertError(
            await invite(self.alice, {"user_id": self.carol.user_id}, room="!nowhere:test.heddle"),
            404, "M_NOT_FOUND",
        )
        # Inviting twice is fine, and sends nothing new.
        r = await invite(self.alice, {"user_id": self.carol.user_id, "reason": "Join us"})
        self.assertEqual((r.code, r.json), (200, {}))
        count = len(await self.room_events(room_id))
        r = await invite(self.alice, {"user_id": self.carol.user_id, "reason": "Join us"})
        self.assertEqual((r.code, r.json), (200, {}))
        self.assertEqual(len(await self.room_events(room_id)), count)
        event = await self.member_event(room_id, self.carol)
        self.assertEqual(event.content["reason"], "Join us")

    # ----- leaving, kicking, banning -------------------------------------------------------

    async def test_leave(self):
        room_id = await self.create_room(self.alice, invite=[self.bob.user_id])
        # Leaving rejects an invite.
        r = await self.membership_action(self.bob, room_id, "leave", {"reason": "No thanks"})
        self.assertEqual((r.code, r.json), (200, {}))
        event = await self.member_event(room_id, self.bob)
        self.assertEqual(dict(event.content), {"membership": "leave", "reason": "No thanks"})
        # Leaving again is harmless.
        r = await self.membership_action(self.bob, room_id, "leave")
        self.assertEqual(r.code, 200, r)
        # Never in the room.
        self.assertError(await self.membership_action(self.carol, room_id, "leave"), 403, "M_FORBIDDEN")
        self.assertError(
            await self.membership_action(self.carol, "!nowhere:test.heddle", "leave"), 404, "M_NOT_FOUND"
        )

    async def test_forget(self):
        room_id = await self.create_room(self.alice, preset="public_chat")
        self.assertEqual((await self.join(self.bob, room_id)).code, 200)
        r = await self.membership_action(self.bob, room_id, "forget")
        self.assertError(r, 400, "M_UNKNOWN")
        self.assertError(
            await self.membership_action(self.bob, "!nowhere:test.heddle", "forget"), 404, "M_NOT_FOUND"
        )
        # Nothing to forget for someone who was never there.
        r = await self.membership_action(self.carol, room_id, "forget")
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.membership_action(self.bob, room_id, "leave")).code, 200)
        self.assertEqual((await self.membership_action(self.bob, room_id, "forget")).code, 200)
        self.assertEqual(await self.joined_rooms(self.bob), [])
        # Joining again brings the room back.
        self.assertEqual((await self.join(self.bob, room_id)).code, 200)
        self.assertEqual(await self.joined_rooms(self.bob), [room_id])
        row = await self.hs.room_store.get_membership(room_id, self.bob.user_id)
        self.assertFalse(row.forgotten)

    async def test_kick_errors(self):
        room_id = await self.create_room(self.alice, preset="public_chat")
        self.assertEqual((await self.join(self.bob, room_id)).code, 200)
        r = await self.membership_action(self.bob, room_id, "kick", {"user_id": self.alice.user_id})
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.membership_action(self.alice, room_id, "kick", {"user_id": self.carol.user_id})
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.membership_action(self.alice, room_id, "kick", {"reason": "x"})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.membership_action(self.alice, room_id, "kick", {"user_id": "nope"})
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual(await self.membership_of(room_id, self.bob), "join")

    async def test_ban_of_a_user_with_higher_power(self):
        room_id = await self.create_room(
            self.alice,
            preset="public_chat",
            power_level_content_override={"users": {self.alice.user_id: 100, self.bob.user_id: 50}},
        )
        self.assertEqual((await self.join(self.bob, room_id)).code, 200)
        self.assertEqual((await self.join(self.carol, room_id)).code, 200)
        # Bob (50) may ban Carol (0) but not Alice (100); Carol may ban nobody.
        r = await self.membership_action(self.bob, room_id, "ban", {"user_id": self.alice.user_id})
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.membership_action(self.carol, room_id, "ban", {"user_id": self.bob.user_id})
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertEqual(await self.membership_of(room_id, self.alice), "join")
        r = await self.membership_action(self.bob, room_id, "ban", {"user_id": self.carol.user_id})
        self.assertEqual(r.code, 200, r)
        # A user who never joined can be banned too.
        dave = await self.user("dave")
        r = await self.membership_action(self.alice, room_id, "ban", {"user_id": dave.user_id})
        self.assertEqual(r.code, 200, r)
        self.assertError(await self.join(dave, room_id), 403, "M_FORBIDDEN")
        # Unbanning needs the ban level, and a ban.
        r = await self.membership_action(self.alice, room_id, "unban", {"user_id": self.bob.user_id})
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.membership_action(self.carol, room_id, "unban", {"user_id": dave.user_id})
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.membership_action(self.alice, room_id, "unban", {"user_id": dave.user_id})
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.join(dave, room_id)).code, 200)

    async def test_membership_through_state(self):
        room_id = await self.create_room(self.alice, preset="public_chat")
        self.assertEqual((await self.join(self.bob, room_id)).code, 200)
        # A per-room display name, set by the member themself.
        r = await self.put_state(
            self.bob, room_id, MEMBER, {"membership": "join", "displayname": "Bobby"}, self.bob.user_id
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/rooms/{q(room_id)}/joined_members", token=self.alice.token)
        self.assertEqual(r.json["joined"][self.bob.user_id]["display_name"], "Bobby")
        r = await self.put_state(self.alice, room_id, MEMBER, {"membership": "ban"}, self.bob.user_id)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership_of(room_id, self.bob), "ban")
        r = await self.put_state(self.alice, room_id, MEMBER, {"membership": "banned"}, self.carol.user_id)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.put_state(self.alice, room_id, MEMBER, {"membership": "join"}, "not-a-user")
        self.assertError(r, 400, "M_INVALID_PARAM")
        # Joining on someone else's behalf is not a thing.
        r = await self.put_state(self.alice, room_id, MEMBER, {"membership": "join"}, self.carol.user_id)
        self.assertError(r, 403, "M_FORBIDDEN")

    # ----- knocking ------------------------------------------------------------------------

    async def test_knock_errors(self):
        invite_only = await self.create_room(self.alice, room_alias_name="closed")
        r = await self.request("POST", f"{API}/knock/{q(invite_only)}", {}, token=self.bob.token)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("POST", f"{API}/knock/{q('#closed:test.heddle')}", {}, token=self.bob.token)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("POST", f"{API}/knock/{q('#gone:test.heddle')}", {}, token=self.bob.token)
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.request("POST", f"{API}/knock/{q('!gone:test.heddle')}", {}, token=self.bob.token)
        self.assertError(r, 404, "M_NOT_FOUND")
        knock_room = await self.create_room(
            self.alice,
            room_alias_name="knocky",
            initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
        )
        # Members cannot knock.
        r = await self.request("POST", f"{API}/knock/{q(knock_room)}", {}, token=self.alice.token)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("POST", f"{API}/knock/{q('#knocky:test.heddle')}", {}, token=self.bob.token)
        self.assertEqual((r.code, r.json), (200, {"room_id": knock_room}))
        # A knock can be withdrawn by leaving, or refused by a kick.
        r = await self.membership_action(self.bob, knock_room, "leave")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership_of(knock_room, self.bob), "leave")
        r = await self.request("POST", f"{API}/knock/{q(knock_room)}", {}, token=self.carol.token)
        self.assertEqual(r.code, 200, r)
        r = await self.membership_action(self.alice, knock_room, "kick", {"user_id": self.carol.user_id})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership_of(knock_room, self.carol), "leave")

    # ----- concurrency ---------------------------------------------------------------------

    async def test_concurrent_joins_leaves_and_messages(self):
        room_id = await self.create_room(self.alice, preset="public_chat")
        users = [await self.user(f"u{i}") for i in range(20)]
        first = await defer.gatherResults(
            [defer.ensureDeferred(self.join(u, room_id)) for u in users]
            + [defer.ensureDeferred(self.send(self.alice, room_id, {"body": str(i)})) for i in range(20)]
        )
        self.assertTrue(all(r.code == 200 for r in first), first)
        second = await defer.gatherResults(
            [defer.ensureDeferred(self.membership_action(u, room_id, "leave")) for u in users[:10]]
            + [defer.ensureDeferred(self.send(u, room_id)) for u in users[10:]]
        )
        self.assertTrue(all(r.code == 200 for r in second), second)
        self.assertEqual(len(await self.hs.event_store.get_forward_extremities(room_id)), 1)
        joined = await self.hs.state_store.get_current_members(room_id, "join")
        self.assertEqual(set(joined), {self.alice.user_id} | {u.user_id for u in users[10:]})
        r = await self.request("GET", f"{API}/rooms/{q(room_id)}/joined_members", token=self.alice.token)
        self.assertEqual(set(r.json["joined"]), set(joined))
        for user in users[:10]:
            self.assertEqual(await self.joined_rooms(user), [])
        group = await self.hs.event_store.get_current_state_group(room_id)
        self.assertEqual(
            await self.hs.state_store.get_state_group(group),
            await self.hs.state_store.get_current_state_ids(room_id),
        )


@on_both_engines
class RejectInviteToEmptyRoomTests(RoomTestCase):
    async def test_invite_to_a_local_room_everyone_left_can_be_rejected(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.create_room(alice, preset="private_chat")
        r = await self.membership_action(alice, room_id, "invite", {"user_id": bob.user_id})
        self.assertEqual(r.code, 200, r)
        r = await self.membership_action(alice, room_id, "leave")
        self.assertEqual(r.code, 200, r)
        # Nobody here is joined any more, but the room is this server's own.
        r = await self.membership_action(bob, room_id, "leave")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership_of(room_id, bob), "leave")
        r = await self.request("GET", f"{API}/sync?timeout=0", token=bob.token)
        self.assertEqual(r.json["rooms"]["invite"], {})
