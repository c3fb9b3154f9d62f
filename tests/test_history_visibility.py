"""Room history visibility (spec module "Room History Visibility") on every read path."""

from __future__ import annotations

from nio import (
    AsyncClient,
    JoinResponse,
    RoomCreateResponse,
    RoomForgetResponse,
    RoomGetEventError,
    RoomInviteResponse,
    RoomLeaveResponse,
    RoomMessagesError,
    RoomMessagesResponse,
    RoomMessageText,
)
from twisted.trial import unittest

from homeserver.rooms.visibility import (
    INVITED,
    JOINED,
    SHARED,
    WORLD_READABLE,
    is_allowed,
    visibility_from_content,
)
from storage.stores.events import StoredEvent
from tests.harness import nio, on_both_engines
from tests.history_helpers import ALICE, BOB, CAROL, HistoryTestCase, chunk_ids, ids


class VisibilityRules(unittest.TestCase):
    def test_unknown_or_missing_visibility_is_shared(self):
        self.assertEqual(visibility_from_content(None), SHARED)
        self.assertEqual(visibility_from_content({}), SHARED)
        self.assertEqual(visibility_from_content({"history_visibility": "everyone"}), SHARED)
        self.assertEqual(visibility_from_content({"history_visibility": 1}), SHARED)
        self.assertEqual(visibility_from_content({"history_visibility": "joined"}), JOINED)

    def test_rules(self):
        for membership in (None, "invite", "leave", "ban", "join"):
            self.assertTrue(is_allowed(WORLD_READABLE, membership, False))
        for visibility in (SHARED, INVITED, JOINED):
            self.assertTrue(is_allowed(visibility, "join", False))
            self.assertFalse(is_allowed(visibility, "leave", False))
            self.assertFalse(is_allowed(visibility, None, False))
        self.assertTrue(is_allowed(SHARED, None, True))
        self.assertTrue(is_allowed(SHARED, "leave", True))
        self.assertFalse(is_allowed(JOINED, None, True))
        self.assertTrue(is_allowed(INVITED, "invite", False))
        self.assertFalse(is_allowed(JOINED, "invite", True))


@on_both_engines
class HistoryVisibilityModes(HistoryTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        await self.register_users("alice", "bob", "carol")

    async def room_with(self, visibility: str) -> tuple[str, list[str]]:
        """A room with `visibility` set after the usual initial state; returns the room and
        the IDs of its events so far (create, join, power levels, join rules, visibility)."""
        room_id = await self.make_room(history_visibility=visibility)
        return room_id, await self.all_visible(room_id, ALICE)

    async def assertSees(self, room_id: str, user_id: str, expected: list[str]) -> None:
        self.assertEqual(await self.all_visible(room_id, user_id), expected)

    # ----- the four modes, seen by a user who joins later ------------------------------------

    async def test_shared_history_is_readable_by_later_members(self):
        room_id, setup = await self.room_with(SHARED)
        before = [await self.say(room_id, ALICE, f"before {i}") for i in range(3)]
        join = await self.membership(room_id, BOB, "join")
        after = await self.say(room_id, ALICE, "after")
        await self.assertSees(room_id, BOB, setup + ids(before) + ids([join, after]))

    async def test_joined_history_starts_at_the_join(self):
        room_id, setup = await self.room_with(JOINED)
        before = await self.say(room_id, ALICE, "before")
        await self.membership(room_id, BOB, "invite", sender=ALICE)
        while_invited = await self.say(room_id, ALICE, "while invited")
        join = await self.membership(room_id, BOB, "join")
        after = await self.say(room_id, ALICE, "after")
        # The set-up events were sent while the visibility was still `shared` (the default),
        # including the event that changed it: Bob, who joined later, sees those.
        await self.assertSees(room_id, BOB, setup + ids([join, after]))
        for hidden in (before, while_invited):
            self.assertError(await self.get_event(room_id, hidden.event.event_id, BOB), 404, "M_NOT_FOUND")
        self.assertEqual((await self.get_event(room_id, after.event.event_id, BOB)).code, 200)

    async def test_invited_history_starts_at_the_invite(self):
        room_id, setup = await self.room_with(INVITED)
        await self.say(room_id, ALICE, "before")
        invite = await self.membership(room_id, BOB, "invite", sender=ALICE)
        while_invited = await self.say(room_id, ALICE, "while invited")
        join = await self.membership(room_id, BOB, "join")
        after = await self.say(room_id, ALICE, "after")
        await self.assertSees(room_id, BOB, setup + ids([invite, while_invited, join, after]))

    async def test_world_readable_rooms_are_readable_without_joining(self):
        room_id = await self.make_room(history_visibility=JOINED)
        hidden = await self.say(room_id, ALICE, "members only")
        # Rooms that are not world-readable are closed to non-members.
        self.assertError(await self.messages(room_id, CAROL, dir="b"), 403, "M_FORBIDDEN")
        opened = await self.set_visibility(room_id, WORLD_READABLE)
        public = [await self.say(room_id, ALICE, f"public {i}") for i in range(3)]
        # Carol never joined: she sees what was sent while the room was world-readable,
        # including the change that made it so.
        await self.assertSees(room_id, CAROL, ids([opened, *public]))
        self.assertEqual((await self.get_event(room_id, public[0].event.event_id, CAROL)).code, 200)
        self.assertError(await self.get_event(room_id, hidden.event.event_id, CAROL), 404, "M_NOT_FOUND")
        context = await self.context(room_id, public[1].event.event_id, CAROL, limit=10)
        self.assertEqual(context.code, 200, context)
        self.assertEqual(chunk_ids(context, "events_before"), ids([public[0], opened]))
        self.assertEqual(chunk_ids(context, "events_after"), ids([public[2]]))

    async def test_visibility_changes_are_seen_on_both_sides_of_the_boundary(self):
        room_id = await self.make_room(history_visibility=WORLD_READABLE)
        closing = await self.set_visibility(room_id, JOINED)
        later = await self.say(room_id, ALICE, "members only")
        filter_for = self.hs.history_visibility.filter_events_for_user
        # The change away from world_readable is visible (it was world-readable before it);
        # what follows is not.
        self.assertEqual(ids(await filter_for(CAROL, [closing, later])), ids([closing]))

    async def test_visibility_applies_as_it_was_when_the_event_was_sent(self):
        room_id, setup = await self.room_with(JOINED)
        secret = await self.say(room_id, ALICE, "secret")
        opened = await self.set_visibility(room_id, SHARED)
        shared = await self.say(room_id, ALICE, "shared")
        join = await self.membership(room_id, BOB, "join")
        # Opening the history later does not reveal what was sent while it was closed.
        await self.assertSees(room_id, BOB, setup + ids([opened, shared, join]))
        self.assertNotIn(secret.event.event_id, await self.all_visible(room_id, BOB))

    # ----- leaving ----------------------------------------------------------------------------

    async def test_a_user_who_left_sees_nothing_after_leaving(self):
        room_id, setup = await self.room_with(JOINED)
        join = await self.membership(room_id, BOB, "join")
        during = await self.say(room_id, ALICE, "while bob is here")
        leave = await self.membership(room_id, BOB, "leave")
        after = [await self.say(room_id, ALICE, f"after {i}") for i in range(3)]
        await self.assertSees(room_id, BOB, setup + ids([join, during, leave]))
        self.assertError(await self.get_event(room_id, after[0].event.event_id, BOB), 404, "M_NOT_FOUND")
        # Paging forwards stops at the leave too.
        forwards = await self.messages(room_id, BOB, dir="f", limit=100)
        self.assertEqual(chunk_ids(forwards), setup + ids([join, during, leave]))
        # A token from after the leave does not get further.
        latest = (await self.messages(room_id, ALICE, dir="b", limit=1)).json["start"]
        from_latest = await self.messages(room_id, BOB, dir="b", limit=2, **{"from": latest})
        self.assertEqual(chunk_ids(from_latest), ids([leave, during]))
        context = await self.context(room_id, during.event.event_id, BOB, limit=10)
        self.assertEqual(chunk_ids(context, "events_after"), ids([leave]))
        # Alice still sees everything.
        self.assertEqual((await self.all_visible(room_id, ALICE))[-3:], ids(after))

    async def test_a_user_who_left_a_shared_room_keeps_history_from_before_joining(self):
        room_id, setup = await self.room_with(SHARED)
        earlier = await self.say(room_id, ALICE, "before bob")
        join = await self.membership(room_id, BOB, "join")
        leave = await self.membership(room_id, BOB, "leave")
        await self.say(room_id, ALICE, "after bob")
        await self.assertSees(room_id, BOB, setup + ids([earlier, join, leave]))

    async def test_rejoining_shows_the_gap_only_when_history_is_shared(self):
        for visibility, gap_visible in ((JOINED, False), (SHARED, True)):
            room_id, setup = await self.room_with(visibility)
            first_join = await self.membership(room_id, BOB, "join")
            leave = await self.membership(room_id, BOB, "leave")
            gap = await self.say(room_id, ALICE, "while bob is away")
            rejoin = await self.membership(room_id, BOB, "join")
            back = await self.say(room_id, ALICE, "welcome back")
            expected = setup + ids([first_join, leave] + ([gap] if gap_visible else []) + [rejoin, back])
            await self.assertSees(room_id, BOB, expected)

    async def test_a_banned_user_sees_history_up_to_the_ban(self):
        room_id, setup = await self.room_with(JOINED)
        join = await self.membership(room_id, BOB, "join")
        during = await self.say(room_id, ALICE, "hello")
        ban = await self.membership(room_id, BOB, "ban", sender=ALICE)
        await self.say(room_id, ALICE, "bob is gone")
        await self.assertSees(room_id, BOB, setup + ids([join, during, ban]))

    async def test_a_forgotten_room_cannot_be_read(self):
        room_id, _ = await self.room_with(SHARED)
        await self.membership(room_id, BOB, "join")
        message = await self.say(room_id, ALICE, "hi")
        await self.membership(room_id, BOB, "leave")
        self.assertEqual((await self.messages(room_id, BOB, dir="b")).code, 200)
        self.assertTrue(await self.hs.room_store.forget(room_id, BOB))
        self.assertError(await self.messages(room_id, BOB, dir="b"), 403, "M_FORBIDDEN")
        self.assertError(await self.get_event(room_id, message.event.event_id, BOB), 404, "M_NOT_FOUND")

    async def test_leaving_a_world_readable_room_keeps_it_readable(self):
        room_id, _ = await self.room_with(WORLD_READABLE)
        await self.membership(room_id, BOB, "join")
        await self.membership(room_id, BOB, "leave")
        after = await self.say(room_id, ALICE, "for everyone")
        self.assertEqual((await self.all_visible(room_id, BOB))[-1], after.event.event_id)

    # ----- with a real client -------------------------------------------------------------------

    async def test_nio_client_sees_history_per_visibility(self):
        room_id, setup = await self.room_with(JOINED)
        await self.say(room_id, ALICE, "before")
        join = await self.membership(room_id, BOB, "join")
        after: list[StoredEvent] = [await self.say(room_id, ALICE, f"after {i}") for i in range(2)]
        client = AsyncClient(self.base_url, BOB)
        client.access_token = self.tokens[BOB]
        self.addCleanup(lambda: nio(client.close()))
        response = await nio(client.room_messages(room_id, limit=3))
        self.assertIsInstance(response, RoomMessagesResponse)
        self.assertEqual([e.event_id for e in response.chunk], ids(list(reversed([join, *after]))))
        rest = await nio(client.room_messages(room_id, start=response.end, limit=100))
        self.assertEqual([e.event_id for e in rest.chunk], list(reversed(setup)))
        self.assertIsNone(rest.end)


@on_both_engines
class HistoryOverHttp(HistoryTestCase):
    """The whole flow through the client API: rooms made, joined, left and forgotten with
    matrix-nio, history read back with it."""

    async def setUp(self) -> None:
        await super().setUp()
        await self.register_users("alice", "bob")

    def client(self, user_id: str) -> AsyncClient:
        client = AsyncClient(self.base_url, user_id)
        client.access_token = self.tokens[user_id]
        client.user_id = user_id
        self.addCleanup(lambda: nio(client.close()))
        return client

    async def bodies(self, client: AsyncClient, room_id: str) -> list[str]:
        response = await nio(client.room_messages(room_id, limit=100))
        self.assertIsInstance(response, RoomMessagesResponse)
        return [e.body for e in reversed(response.chunk) if isinstance(e, RoomMessageText)]

    async def test_joined_history_leave_and_forget(self):
        alice, bob = self.client(ALICE), self.client(BOB)
        created = await nio(alice.room_create(initial_state=[{
            "type": "m.room.history_visibility", "state_key": "",
            "content": {"history_visibility": "joined"},
        }]))
        self.assertIsInstance(created, RoomCreateResponse, created)
        room_id = created.room_id
        text = {"msgtype": "m.text"}
        before = await nio(alice.room_send(room_id, "m.room.message", {**text, "body": "before"}))
        self.assertIsInstance(await nio(alice.room_invite(room_id, BOB)), RoomInviteResponse)
        self.assertIsInstance(await nio(bob.join(room_id)), JoinResponse)
        await nio(alice.room_send(room_id, "m.room.message", {**text, "body": "after 1"}))
        await nio(bob.room_send(room_id, "m.room.message", {**text, "body": "after 2"}))

        self.assertEqual(await self.bodies(bob, room_id), ["after 1", "after 2"])
        self.assertEqual(await self.bodies(alice, room_id), ["before", "after 1", "after 2"])
        hidden = await nio(bob.room_get_event(room_id, before.event_id))
        self.assertIsInstance(hidden, RoomGetEventError)
        self.assertEqual(hidden.status_code, "M_NOT_FOUND")

        self.assertIsInstance(await nio(bob.room_leave(room_id)), RoomLeaveResponse)
        await nio(alice.room_send(room_id, "m.room.message", {**text, "body": "later"}))
        self.assertEqual(await self.bodies(bob, room_id), ["after 1", "after 2"])
        self.assertEqual(await self.bodies(alice, room_id), ["before", "after 1", "after 2", "later"])

        self.assertIsInstance(await nio(bob.room_forget(room_id)), RoomForgetResponse)
        refused = await nio(bob.room_messages(room_id, limit=10))
        self.assertIsInstance(refused, RoomMessagesError)
        self.assertEqual(refused.status_code, "M_FORBIDDEN")
