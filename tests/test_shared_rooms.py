"""Who shares a room with whom, answered from memory (`homeserver/rooms/shared_rooms.py`):
right the moment a membership changes, and without the database join on the hot paths
(presence in incremental syncs, device lists).

Spec: client-server API "Presence" (a user's presence goes to the users who share a room
with them), "Tracking the device list for a user".
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.trial import unittest

from homeserver.rooms.shared_rooms import SharedRooms
from homeserver.streams.registry import Stream
from homeserver.sync.change_cache import StreamChangeCache
from storage.stores.rooms import Membership
from storage.stream_ids import MemoryStreamIdGenerator
from tests.harness import on_both_engines
from tests.room_helpers import API, User, q
from tests.test_presence import PresenceTestCase

# The database join the in-memory answer replaces, by its transaction name.
SHARING_QUERY = "get_users_sharing_rooms"


class SharedRoomsTestCase(PresenceTestCase):
    async def sync(self, user: User, since: str | None = None, timeout_ms: int = 0) -> Any:
        """A /sync that leaves the user's own presence alone, so only others' shows."""
        path = f"{API}/sync?timeout={timeout_ms}&set_presence=offline"
        if since is not None:
            path += f"&since={q(since)}"
        r = await self.request("GET", path, token=user.token)
        self.assertEqual(r.code, 200, r)
        return r.json

    def presence_of(self, body: Any) -> dict[str, dict[str, Any]]:
        return {e["sender"]: e["content"] for e in body["presence"]["events"]}

    async def transactions_named(self, desc: str) -> float:
        """How many database transactions called `desc` ran, from the server's /metrics."""
        r = await self.request("GET", "/metrics", base_url=self.metrics_url)
        self.assertEqual(r.code, 200, r)
        for family in text_string_to_metric_families(r.body.decode()):
            if family.name == "heddle_db_transaction_duration_seconds":
                for s in family.samples:
                    if s.name.endswith("_count") and s.labels.get("desc") == desc:
                        return s.value
        return 0.0


@on_both_engines
class RoomMatesAfterMembershipChanges(SharedRoomsTestCase):
    async def test_new_room_mate_is_woken_by_and_sees_presence_at_once(self):
        # Both users' rooms are read (and kept) before Carol joins.
        await self.put_presence(self.alice, {"presence": "online"})
        r = await self.get_presence(self.carol, self.alice)
        self.assertError(r, 403, "M_FORBIDDEN")
        await self.sync(self.carol)

        r = await self.join(self.carol, self.room_id)
        self.assertEqual(r.code, 200, r)
        since = (await self.sync(self.carol))["next_batch"]
        polling = defer.ensureDeferred(self.sync(self.carol, since, timeout_ms=5000))
        await self.put_presence(self.alice, {"presence": "online", "status_msg": "hello carol"})
        body = await polling
        self.assertEqual(self.presence_of(body)[self.alice.user_id]["status_msg"], "hello carol")
        r = await self.get_presence(self.carol, self.alice)
        self.assertEqual((r.code, r.json.get("status_msg")), (200, "hello carol"))
        # And the other way: Carol's presence reaches Alice.
        since = (await self.sync(self.alice))["next_batch"]
        await self.put_presence(self.carol, {"presence": "unavailable"})
        body = await self.sync(self.alice, since)
        self.assertEqual(self.presence_of(body)[self.carol.user_id]["presence"], "unavailable")

    async def test_former_room_mate_stops_seeing_presence_at_once(self):
        # Both users' rooms are read (and kept) while they share the room.
        await self.put_presence(self.alice, {"presence": "online"})
        await self.put_presence(self.bob, {"presence": "online"})
        r = await self.get_presence(self.bob, self.alice)
        self.assertEqual(r.code, 200, r)
        await self.sync(self.alice)
        await self.sync(self.bob)

        r = await self.membership_action(self.bob, self.room_id, "leave")
        self.assertEqual(r.code, 200, r)
        r = await self.get_presence(self.bob, self.alice)
        self.assertError(r, 403, "M_FORBIDDEN")
        bob_since = (await self.sync(self.bob))["next_batch"]
        alice_since = (await self.sync(self.alice))["next_batch"]
        bob_woken_at = self.hs.notifier.position(self.bob.user_id)
        await self.put_presence(self.alice, {"presence": "unavailable", "status_msg": "away"})
        # Bob is neither woken nor told.
        self.assertEqual(self.hs.notifier.position(self.bob.user_id), bob_woken_at)
        self.assertEqual(self.presence_of(await self.sync(self.bob, bob_since)), {})
        # Nor is Alice told of Bob.
        await self.put_presence(self.bob, {"presence": "unavailable"})
        body = await self.sync(self.alice, alice_since)
        self.assertEqual(set(self.presence_of(body)), {self.alice.user_id})


@on_both_engines
class NoDatabaseJoinOnHotPaths(SharedRoomsTestCase):
    async def test_incremental_sync_with_a_presence_change_makes_no_sharing_query(self):
        since = (await self.sync(self.bob))["next_batch"]
        before = await self.transactions_named(SHARING_QUERY)
        await self.put_presence(self.alice, {"presence": "online", "status_msg": "here"})
        body = await self.sync(self.bob, since)
        self.assertEqual(self.presence_of(body)[self.alice.user_id]["status_msg"], "here")
        self.assertEqual(await self.transactions_named(SHARING_QUERY), before)

    async def test_device_list_change_reaches_room_mates_without_a_sharing_query(self):
        since = (await self.sync(self.bob))["next_batch"]
        before = await self.transactions_named(SHARING_QUERY)
        r = await self.request(
            "PUT",
            f"{API}/devices/{q(self.alice.device_id)}",
            {"display_name": "laptop"},
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        body = await self.sync(self.bob, since)
        self.assertIn(self.alice.user_id, body["device_lists"]["changed"])
        # Carol shares no room with Alice: not told.
        body = await self.sync(self.carol, since)
        self.assertNotIn(self.alice.user_id, body["device_lists"]["changed"])
        self.assertEqual(await self.transactions_named(SHARING_QUERY), before)


@on_both_engines
class ForgottenRooms(SharedRoomsTestCase):
    async def test_forgotten_room_leaves_sync_at_once(self):
        since = (await self.sync(self.bob))["next_batch"]
        r = await self.membership_action(self.bob, self.room_id, "leave")
        self.assertEqual(r.code, 200, r)
        # Bob's memberships are read (and kept) after the leave...
        body = await self.sync(self.bob, since)
        self.assertIn(self.room_id, body["rooms"]["leave"])
        # ...and a forget, which moves no stream, drops the room from his syncs all the same.
        r = await self.membership_action(self.bob, self.room_id, "forget")
        self.assertEqual(r.code, 200, r)
        body = await self.sync(self.bob, since)
        self.assertNotIn(self.room_id, body["rooms"]["leave"])


class _PendingRooms:
    """A room store whose membership reads wait until the test answers them."""

    def __init__(self) -> None:
        self.reads: list[defer.Deferred[list[Membership]]] = []

    def get_rooms_for_user(self, user_id: str, memberships: Any) -> defer.Deferred[list[Membership]]:
        read: defer.Deferred[list[Membership]] = defer.Deferred()
        self.reads.append(read)
        return read


class _NoState:
    async def get_current_members(self, room_id: str, membership: str = "join") -> Any:
        return {}


def _joined(room_id: str, user_id: str = "@u:test.heddle") -> Membership:
    return Membership(room_id, user_id, "$e", "join", 1, False, 1)


class ReadsRacingChanges(unittest.TestCase):
    """A read of a user's memberships that a change overtakes is used but not kept."""

    def setUp(self) -> None:
        self.rooms = _PendingRooms()
        self.ids = MemoryStreamIdGenerator("events")
        self.index = StreamChangeCache("test_shared_rooms_memberships", 0)
        stream = Stream("events", self.ids, user_changes=self.index)
        self.shared = SharedRooms(self.rooms, _NoState(), stream)  # type: ignore[arg-type]

    def test_membership_change_during_a_read_makes_the_next_lookup_read_again(self) -> None:
        first = defer.ensureDeferred(self.shared.joined_rooms("@u:test.heddle"))
        # The user joins a room while the read is in flight; the read saw the old rooms.
        self.index.entity_changed("@u:test.heddle", self.ids.advance())
        self.rooms.reads[0].callback([])
        self.assertEqual(self.successResultOf(first), frozenset())
        second = defer.ensureDeferred(self.shared.joined_rooms("@u:test.heddle"))
        self.assertEqual(len(self.rooms.reads), 2)
        self.rooms.reads[1].callback([_joined("!new:test.heddle")])
        self.assertEqual(self.successResultOf(second), frozenset({"!new:test.heddle"}))
        # Now kept: no more reads until the next change.
        third = defer.ensureDeferred(self.shared.joined_rooms("@u:test.heddle"))
        self.assertEqual(self.successResultOf(third), frozenset({"!new:test.heddle"}))
        self.assertEqual(len(self.rooms.reads), 2)

    def test_forget_during_a_read_makes_the_next_lookup_read_again(self) -> None:
        first = defer.ensureDeferred(self.shared.memberships_of("@u:test.heddle"))
        self.shared.forget("@u:test.heddle")
        self.rooms.reads[0].callback([_joined("!old:test.heddle")])
        self.successResultOf(first)
        defer.ensureDeferred(self.shared.memberships_of("@u:test.heddle"))
        self.assertEqual(len(self.rooms.reads), 2)
