"""Typing notifications: PUT /rooms/{roomId}/typing/{userId} and what sync reads.

Spec: api/client-server/typing.yaml; client-server API "Typing Notifications".
"""

from __future__ import annotations

from nio import RoomTypingError, RoomTypingResponse
from twisted.internet import reactor, task

from tests.harness import nio, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q


def typing_path(room_id: str, user_id: str) -> str:
    return f"{API}/rooms/{q(room_id)}/typing/{q(user_id)}"


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


@on_both_engines
class TypingTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room_id = await self.create_room(self.alice, preset="public_chat")
        r = await self.join(self.bob, self.room_id)
        assert r.code == 200, r

    async def put_typing(self, user: User, body: object, target: str | None = None):
        return await self.request(
            "PUT", typing_path(self.room_id, target or user.user_id), body, token=user.token
        )

    async def test_nio_typing_starts_and_stops(self):
        typing = self.hs.typing
        client = self.nio_client(self.alice)
        start = typing.current_position
        resp = await nio(client.room_typing(self.room_id, True, timeout=30000))
        self.assertIsInstance(resp, RoomTypingResponse)
        self.assertEqual(typing.get_typing_users(self.room_id), [self.alice.user_id])
        self.assertEqual(typing.current_position, start + 1)

        # Bob starts too: the room's list holds both, and the stream moved on.
        r = await self.put_typing(self.bob, {"typing": True, "timeout": 30000})
        self.assertEqual((r.code, r.json), (200, {}))
        self.assertEqual(
            typing.get_typing_users(self.room_id), sorted([self.alice.user_id, self.bob.user_id])
        )

        resp = await nio(client.room_typing(self.room_id, False))
        self.assertIsInstance(resp, RoomTypingResponse)
        self.assertEqual(typing.get_typing_users(self.room_id), [self.bob.user_id])
        self.assertEqual(typing.current_position, start + 3)

    async def test_sync_api_reports_changed_rooms_with_full_lists(self):
        typing = self.hs.typing
        other_room = await self.create_room(self.alice)
        before = typing.current_position
        await self.put_typing(self.alice, {"typing": True, "timeout": 10000})
        events = typing.get_typing_events([self.room_id, other_room], before)
        self.assertEqual(
            events,
            {self.room_id: {"type": "m.typing", "content": {"user_ids": [self.alice.user_id]}}},
        )
        self.assertEqual(typing.rooms_changed_since([self.room_id], typing.current_position), set())
        # An initial sync (position 0) sees the rooms where someone is typing.
        self.assertEqual(typing.rooms_changed_since([self.room_id, other_room], 0), {self.room_id})
        # A stop shows as an empty list, so clients replace what they knew.
        mid = typing.current_position
        await self.put_typing(self.alice, {"typing": False})
        self.assertEqual(
            typing.get_typing_events([self.room_id], mid),
            {self.room_id: {"type": "m.typing", "content": {"user_ids": []}}},
        )
        # A token from before a restart (ahead of us) is answered with the current state.
        self.assertEqual(typing.rooms_changed_since([self.room_id], typing.current_position + 50), set())

    async def test_repeating_typing_extends_without_a_new_position(self):
        await self.put_typing(self.alice, {"typing": True, "timeout": 10000})
        position = self.hs.typing.current_position
        await self.put_typing(self.alice, {"typing": True, "timeout": 20000})
        self.assertEqual(self.hs.typing.current_position, position)
        # Stopping when not typing changes nothing either.
        await self.put_typing(self.bob, {"typing": False})
        self.assertEqual(self.hs.typing.current_position, position)

    async def test_typing_times_out(self):
        await self.put_typing(self.alice, {"typing": True, "timeout": 50})
        self.assertEqual(self.hs.typing.get_typing_users(self.room_id), [self.alice.user_id])
        position = self.hs.typing.current_position
        await sleep(0.3)
        self.assertEqual(self.hs.typing.get_typing_users(self.room_id), [])
        self.assertEqual(self.hs.typing.current_position, position + 1)

    async def test_typing_arriving_at_shutdown_leaves_no_timer(self):
        # A request or federation EDU still in flight when the server stops: no timer may
        # outlive it (a stray timer fires into a stopped server).
        self.hs.typing.stop()
        await self.hs.typing.started_typing(self.room_id, self.alice.user_id, 30_000)
        self.assertEqual(self.hs.typing.get_typing_users(self.room_id), [])
        self.assertFalse([c for c in reactor.getDelayedCalls() if "_expire" in repr(c)])

    async def test_typing_wakes_room_members(self):
        notifier = self.hs.notifier
        bob_before = notifier.position(self.bob.user_id)
        await self.put_typing(self.alice, {"typing": True, "timeout": 10000})
        self.assertGreater(notifier.position(self.bob.user_id), bob_before)

    async def test_only_joined_members_may_type(self):
        carol = await self.user("carol")
        r = await self.put_typing(carol, {"typing": True, "timeout": 1000})
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request(
            "PUT", typing_path("!unknown:test.heddle", carol.user_id), {"typing": True},
            token=carol.token,
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        # After leaving, no longer.
        r = await self.membership_action(self.bob, self.room_id, "leave")
        self.assertEqual(r.code, 200, r)
        r = await self.put_typing(self.bob, {"typing": True, "timeout": 1000})
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_cannot_set_someone_elses_typing(self):
        r = await self.put_typing(self.alice, {"typing": True}, target=self.bob.user_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertEqual(self.hs.typing.get_typing_users(self.room_id), [])

    async def test_nio_typing_error_for_outsider(self):
        carol = await self.user("carol")
        resp = await nio(self.nio_client(carol).room_typing(self.room_id, True))
        self.assertIsInstance(resp, RoomTypingError)
        self.assertEqual(resp.status_code, "M_FORBIDDEN")

    async def test_bad_bodies(self):
        r = await self.put_typing(self.alice, {"typing": "yes"})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.put_typing(self.alice, {"timeout": 1000})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.put_typing(self.alice, {"typing": True, "timeout": "soon"})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request(
            "PUT", typing_path(self.room_id, self.alice.user_id), raw=b"{not json",
            token=self.alice.token,
        )
        self.assertError(r, 400, "M_NOT_JSON")
        r = await self.request(
            "PUT", typing_path(self.room_id, self.alice.user_id), {"typing": True}
        )
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_wrong_method(self):
        r = await self.request(
            "GET", typing_path(self.room_id, self.alice.user_id), token=self.alice.token
        )
        self.assertError(r, 405, "M_UNRECOGNIZED")
