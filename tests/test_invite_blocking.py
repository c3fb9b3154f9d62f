"""Invite blocking (spec: "Invite permission"): a user whose `m.invite_permission_config`
account data has `default_action: block` gets no invites. Local invites (the invite
endpoint, a member state event, createRoom's `invite`) and invites over federation answer
403 M_INVITE_BLOCKED, and /sync serves none of the user's invites, earlier ones included.
"""

from __future__ import annotations

from typing import Any

from tests.federation_helpers import FederationTestCase, FedUser
from tests.harness import ensure_deferred, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

CONFIG = "m.invite_permission_config"
BLOCK = {"default_action": "block"}


def config_path(user_id: str) -> str:
    return f"{API}/user/{q(user_id)}/account_data/{CONFIG}"


@on_both_engines
class LocalInviteBlockingTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def set_config(self, user: User, content: Any) -> None:
        r = await self.request("PUT", config_path(user.user_id), content, token=user.token)
        self.assertEqual(r.code, 200, r)

    async def invite(self, room_id: str, invitee: User):
        return await self.request(
            "POST", f"{API}/rooms/{q(room_id)}/invite", {"user_id": invitee.user_id},
            token=self.alice.token,
        )

    async def membership(self, room_id: str, user: User) -> str | None:
        r = await self.request(
            "GET", f"{API}/rooms/{q(room_id)}/state/m.room.member/{q(user.user_id)}",
            token=self.alice.token,
        )
        return r.json.get("membership") if r.code == 200 else None

    async def invited_rooms(self, user: User) -> dict[str, Any]:
        r = await self.request("GET", f"{API}/sync", token=user.token)
        self.assertEqual(r.code, 200, r)
        return dict(r.json.get("rooms", {}).get("invite", {}))

    def assert_blocked(self, r: Any) -> None:
        self.assertEqual(r.code, 403, r)
        self.assertEqual(r.json["errcode"], "M_INVITE_BLOCKED", r)

    async def test_invite_endpoint_follows_the_config_at_once(self):
        first = await self.create_room(self.alice)
        second = await self.create_room(self.alice)
        # Read (and held) as "not blocked" by this first invite.
        r = await self.invite(first, self.bob)
        self.assertEqual(r.code, 200, r)
        await self.set_config(self.bob, BLOCK)
        self.assert_blocked(await self.invite(second, self.bob))
        self.assertIsNone(await self.membership(second, self.bob))
        # Spec: "the same event without the `default_action` property" unblocks.
        await self.set_config(self.bob, {})
        r = await self.invite(second, self.bob)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership(second, self.bob), "invite")

    async def test_member_state_event_invite_is_blocked(self):
        room_id = await self.create_room(self.alice)
        await self.set_config(self.bob, BLOCK)
        r = await self.put_state(
            self.alice, room_id, "m.room.member", {"membership": "invite"}, self.bob.user_id
        )
        self.assert_blocked(r)
        self.assertIsNone(await self.membership(room_id, self.bob))
        await self.set_config(self.bob, {"default_action": None})
        r = await self.put_state(
            self.alice, room_id, "m.room.member", {"membership": "invite"}, self.bob.user_id
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership(room_id, self.bob), "invite")

    async def test_create_room_with_a_blocking_invitee_is_refused(self):
        carol = await self.user("carol")
        await self.set_config(self.bob, BLOCK)
        r = await self.request(
            "POST", f"{API}/createRoom", {"invite": [carol.user_id, self.bob.user_id]},
            token=self.alice.token,
        )
        self.assert_blocked(r)
        r = await self.request("GET", f"{API}/joined_rooms", token=self.alice.token)
        self.assertEqual(r.json["joined_rooms"], [])
        self.assertEqual(await self.invited_rooms(carol), {})
        await self.set_config(self.bob, {})
        r = await self.request(
            "POST", f"{API}/createRoom", {"invite": [carol.user_id, self.bob.user_id]},
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        self.assertIn(r.json["room_id"], await self.invited_rooms(self.bob))
        self.assertIn(r.json["room_id"], await self.invited_rooms(carol))

    async def test_invalid_or_unsupported_config_receives_invites(self):
        # Spec: "A missing, invalid or unsupported value means that the user wants to
        # receive invites as normal."
        for content in ({}, {"default_action": "allow"}, {"default_action": 1},
                        {"default_action": ["block"]}, {"default_action": "BLOCK"}):
            room_id = await self.create_room(self.alice)
            await self.set_config(self.bob, BLOCK)
            self.assert_blocked(await self.invite(room_id, self.bob))
            await self.set_config(self.bob, content)
            r = await self.invite(room_id, self.bob)
            self.assertEqual(r.code, 200, (content, r))
            self.assertIn(room_id, await self.invited_rooms(self.bob), content)

    async def test_sync_hides_invites_received_before_the_block(self):
        room_id = await self.create_room(self.alice)
        r = await self.invite(room_id, self.bob)
        self.assertEqual(r.code, 200, r)
        self.assertIn(room_id, await self.invited_rooms(self.bob))
        await self.set_config(self.bob, BLOCK)
        self.assertEqual(await self.invited_rooms(self.bob), {})
        # Other endpoints are not affected: the invite is still in the room's state.
        self.assertEqual(await self.membership(room_id, self.bob), "invite")
        # Servers MAY serve suppressed invites again once blocking is off; Heddle does.
        await self.set_config(self.bob, {})
        self.assertIn(room_id, await self.invited_rooms(self.bob))


@on_both_engines
class FederatedInviteBlockingTests(FederationTestCase):
    async def _set_config(self, user: FedUser, content: Any) -> None:
        r = await self.user_call(user, "PUT", config_path(user.user_id), content)
        self.assertEqual(r.code, 200, r)

    async def _invited(self, user: FedUser) -> dict[str, Any]:
        r = await self.user_call(user, "GET", f"{API}/sync")
        self.assertEqual(r.code, 200, r)
        return dict(r.json.get("rooms", {}).get("invite", {}))

    @ensure_deferred
    async def test_invite_over_federation_is_refused_while_blocked(self) -> None:
        a, b, alice, bob = await self.two_peers()
        await self._set_config(bob, BLOCK)
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "private_chat"})
        self.assertEqual(r.code, 200, r)
        room_id = str(r.json["room_id"])
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/invite",
                                 {"user_id": bob.user_id})
        # B answers 403 M_INVITE_BLOCKED; A passes it on to alice.
        self.assertEqual(r.code, 403, r)
        self.assertEqual(r.json["errcode"], "M_INVITE_BLOCKED", r)
        self.assertIsNone(await self.membership(alice, room_id, bob.user_id))
        self.assertEqual(await self._invited(bob), {})
        # createRoom: the room is made, the remote invitee's refusal is reported.
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"invite": [bob.user_id]})
        self.assertEqual(r.code, 403, r)
        self.assertEqual(r.json["errcode"], "M_INVITE_BLOCKED", r)
        r = await self.user_call(alice, "GET", f"{API}/joined_rooms")
        self.assertEqual(len(r.json["joined_rooms"]), 2, r)

        await self._set_config(bob, {})
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/invite",
                                 {"user_id": bob.user_id})
        self.assertEqual(r.code, 200, r)

        async def invited() -> bool:
            return room_id in await self._invited(bob)

        await self.wait_for(invited, what="bob's invite on B")
