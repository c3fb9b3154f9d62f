"""Profile changes reach rooms: a new displayname or avatar_url is sent as an m.room.member
join event into every room the user is joined to.

Spec: client-server API "Profiles" ("Events on Change of Profile Information").
"""

from __future__ import annotations

from typing import Any

from nio import ProfileSetAvatarResponse, ProfileSetDisplayNameResponse

from homeserver.errors import Codes, MatrixError
from tests.harness import nio, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

AVATAR = "mxc://test.heddle/avatar1"


@on_both_engines
class ProfilePropagationTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room_a = await self.create_room(self.alice, preset="public_chat")
        self.room_b = await self.create_room(self.bob, preset="public_chat")
        r = await self.join(self.alice, self.room_b)
        assert r.code == 200, r

    async def member_content(self, room_id: str, user: User) -> dict[str, Any]:
        state = await self.current_state(room_id)
        return dict(state[("m.room.member", user.user_id)].content)

    async def member_event_count(self, room_id: str, user: User) -> int:
        return sum(
            1
            for event in await self.room_events(room_id)
            if event.type == "m.room.member" and event.state_key == user.user_id
        )

    async def test_displayname_and_avatar_reach_every_joined_room(self):
        client = self.nio_client(self.alice)
        resp = await nio(client.set_displayname("Alice Liddell"))
        self.assertIsInstance(resp, ProfileSetDisplayNameResponse)
        for room_id in (self.room_a, self.room_b):
            content = await self.member_content(room_id, self.alice)
            self.assertEqual(content["membership"], "join")
            self.assertEqual(content["displayname"], "Alice Liddell")

        resp = await nio(client.set_avatar(AVATAR))
        self.assertIsInstance(resp, ProfileSetAvatarResponse)
        for room_id in (self.room_a, self.room_b):
            content = await self.member_content(room_id, self.alice)
            self.assertEqual(content["avatar_url"], AVATAR)
            self.assertEqual(content["displayname"], "Alice Liddell")
        # Bob's membership is untouched.
        self.assertNotIn("avatar_url", await self.member_content(self.room_b, self.bob))

    async def test_other_member_content_is_kept(self):
        r = await self.put_state(
            self.alice,
            self.room_a,
            "m.room.member",
            {"membership": "join", "org.example.flair": "gold", "reason": "old reason"},
            state_key=self.alice.user_id,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "PUT",
            f"{API}/profile/{q(self.alice.user_id)}/displayname",
            {"displayname": "Al"},
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        content = await self.member_content(self.room_a, self.alice)
        self.assertEqual(
            content, {"membership": "join", "org.example.flair": "gold", "displayname": "Al"}
        )

    async def test_clearing_the_displayname_removes_it(self):
        await nio(self.nio_client(self.alice).set_displayname("Alice"))
        r = await self.request(
            "PUT",
            f"{API}/profile/{q(self.alice.user_id)}/displayname",
            {"displayname": None},
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        self.assertNotIn("displayname", await self.member_content(self.room_a, self.alice))

    async def test_only_joined_rooms_and_only_real_changes(self):
        r = await self.membership_action(self.alice, self.room_b, "leave")
        self.assertEqual(r.code, 200, r)
        room_c = await self.create_room(self.bob)
        r = await self.membership_action(self.bob, room_c, "invite", {"user_id": self.alice.user_id})
        self.assertEqual(r.code, 200, r)
        counts = {
            room: await self.member_event_count(room, self.alice)
            for room in (self.room_a, self.room_b, room_c)
        }
        await nio(self.nio_client(self.alice).set_displayname("Alice"))
        self.assertEqual(await self.member_event_count(self.room_a, self.alice), counts[self.room_a] + 1)
        self.assertEqual(await self.member_event_count(self.room_b, self.alice), counts[self.room_b])
        self.assertEqual(await self.member_event_count(room_c, self.alice), counts[room_c])
        self.assertEqual((await self.member_content(self.room_b, self.alice))["membership"], "leave")
        # Setting the same name again sends nothing.
        await nio(self.nio_client(self.alice).set_displayname("Alice"))
        self.assertEqual(await self.member_event_count(self.room_a, self.alice), counts[self.room_a] + 1)

    async def test_a_failing_room_does_not_stop_the_others(self):
        creator = self.hs.event_creator
        real_send = creator.send

        async def send(room_id: str, *args: Any, **kwargs: Any) -> Any:
            if room_id == self.room_a:
                raise MatrixError(403, Codes.FORBIDDEN, "refused for the test")
            return await real_send(room_id, *args, **kwargs)

        creator.send = send  # type: ignore[method-assign]
        try:
            r = await self.request(
                "PUT",
                f"{API}/profile/{q(self.alice.user_id)}/displayname",
                {"displayname": "Resilient"},
                token=self.alice.token,
            )
        finally:
            creator.send = real_send  # type: ignore[method-assign]
        # The profile change itself succeeded.
        self.assertEqual(r.code, 200, r)
        # Room A keeps the name from registration; room B got the new one.
        self.assertEqual((await self.member_content(self.room_a, self.alice))["displayname"], "alice")
        self.assertEqual(
            (await self.member_content(self.room_b, self.alice))["displayname"], "Resilient"
        )
