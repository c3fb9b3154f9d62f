"""Receipts and read markers: POST /rooms/{roomId}/receipt/{receiptType}/{eventId},
POST /rooms/{roomId}/read_markers, and the m.receipt content sync reads.

Spec: api/client-server/receipts.yaml, read_markers.yaml; client-server API "Receipts"
(private and threaded read receipts) and "Read and unread markers".
"""

from __future__ import annotations

from nio import (
    ReceiptType,
    RoomReadMarkersResponse,
    UpdateReceiptMarkerError,
    UpdateReceiptMarkerResponse,
)

from tests.harness import nio, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q


def receipt_path(room_id: str, receipt_type: str, event_id: str) -> str:
    return f"{API}/rooms/{q(room_id)}/receipt/{q(receipt_type)}/{q(event_id)}"


@on_both_engines
class ReceiptTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room_id = await self.create_room(self.alice, preset="public_chat")
        r = await self.join(self.bob, self.room_id)
        assert r.code == 200, r

    async def message(self, user: User | None = None, content: dict | None = None) -> str:
        r = await self.send(user or self.alice, self.room_id, content)
        assert r.code == 200, r
        return r.json["event_id"]

    async def post_receipt(
        self, user: User, event_id: str, receipt_type: str = "m.read", body: object = None,
        room_id: str | None = None,
    ):
        return await self.request(
            "POST",
            receipt_path(room_id or self.room_id, receipt_type, event_id),
            body if body is not None else {},
            token=user.token,
        )

    async def receipts_for(self, user: User, since: int = 0) -> dict:
        events = await self.hs.receipts.get_receipt_events(user.user_id, [self.room_id], since)
        return events.get(self.room_id, {}).get("content", {})

    async def test_nio_read_receipt_is_seen_by_everyone(self):
        event_id = await self.message()
        client = self.nio_client(self.bob)
        resp = await nio(client.update_receipt_marker(self.room_id, event_id))
        self.assertIsInstance(resp, UpdateReceiptMarkerResponse)
        for viewer in (self.alice, self.bob):
            content = await self.receipts_for(viewer)
            receipt = content[event_id]["m.read"][self.bob.user_id]
            # nio sends threaded receipts for the main timeline.
            self.assertEqual(receipt["thread_id"], "main")
            self.assertIsInstance(receipt["ts"], int)

    async def test_unthreaded_receipt_has_no_thread_id(self):
        event_id = await self.message()
        r = await self.post_receipt(self.bob, event_id)
        self.assertEqual((r.code, r.json), (200, {}))
        content = await self.receipts_for(self.alice)
        self.assertEqual(set(content[event_id]["m.read"][self.bob.user_id]), {"ts"})

    async def test_private_receipts_are_only_visible_to_their_owner(self):
        event_id = await self.message()
        client = self.nio_client(self.bob)
        resp = await nio(
            client.update_receipt_marker(self.room_id, event_id, ReceiptType.read_private)
        )
        self.assertIsInstance(resp, UpdateReceiptMarkerResponse)
        own = await self.receipts_for(self.bob)
        self.assertIn(self.bob.user_id, own[event_id]["m.read.private"])
        self.assertEqual(await self.receipts_for(self.alice), {})
        # A public receipt on the same event shows to Alice without the private one.
        await self.post_receipt(self.bob, event_id, "m.read")
        seen_by_alice = await self.receipts_for(self.alice)
        self.assertEqual(set(seen_by_alice[event_id]), {"m.read"})

    async def test_private_receipt_only_wakes_its_owner(self):
        event_id = await self.message()
        # Bob's first activity is news to Alice through presence; later ones are not.
        await self.hs.presence.bump_active(self.bob.user_id)
        alice_before = self.hs.notifier.position(self.alice.user_id)
        bob_before = self.hs.notifier.position(self.bob.user_id)
        await self.post_receipt(self.bob, event_id, "m.read.private")
        self.assertEqual(self.hs.notifier.position(self.alice.user_id), alice_before)
        self.assertGreater(self.hs.notifier.position(self.bob.user_id), bob_before)
        await self.post_receipt(self.bob, event_id, "m.read")
        self.assertGreater(self.hs.notifier.position(self.alice.user_id), alice_before)

    async def test_incremental_receipts_only_show_changes(self):
        first = await self.message()
        second = await self.message()
        await self.post_receipt(self.alice, first)
        position = self.hs.receipts.current_position
        self.assertEqual(await self.receipts_for(self.bob, position), {})
        await self.post_receipt(self.bob, second)
        content = await self.receipts_for(self.bob, position)
        self.assertEqual(list(content), [second])
        self.assertEqual(list(content[second]["m.read"]), [self.bob.user_id])
        # up_to bounds what is read (sync reads up to the position in its new token).
        events = await self.hs.receipts.get_receipt_events(
            self.bob.user_id, [self.room_id], 0, up_to=position
        )
        self.assertEqual(list(events[self.room_id]["content"]), [first])

    async def test_receipts_do_not_move_backwards(self):
        first = await self.message()
        second = await self.message()
        await self.post_receipt(self.bob, second)
        position = self.hs.receipts.current_position
        r = await self.post_receipt(self.bob, first)
        self.assertEqual(r.code, 200, r)
        stored = await self.hs.receipt_store.get_receipt(self.room_id, "m.read", self.bob.user_id)
        assert stored is not None
        self.assertEqual(stored.event_id, second)
        self.assertEqual(await self.receipts_for(self.alice, position), {})
        # Repeating the same receipt changes nothing either.
        await self.post_receipt(self.bob, second)
        self.assertEqual(await self.receipts_for(self.alice, position), {})

    async def test_threaded_receipts(self):
        root = await self.message()
        in_thread = await self.message(
            content={
                "msgtype": "m.text",
                "body": "reply",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root},
            }
        )
        r = await self.post_receipt(self.bob, in_thread, body={"thread_id": root})
        self.assertEqual(r.code, 200, r)
        # The root itself belongs to the main timeline, and may also carry its thread's receipt.
        r = await self.post_receipt(self.bob, root, body={"thread_id": "main"})
        self.assertEqual(r.code, 200, r)
        r = await self.post_receipt(self.alice, root, body={"thread_id": root})
        self.assertEqual(r.code, 200, r)
        content = await self.receipts_for(self.alice)
        self.assertEqual(content[in_thread]["m.read"][self.bob.user_id]["thread_id"], root)
        self.assertEqual(content[root]["m.read"][self.bob.user_id]["thread_id"], "main")

        # Each thread (and the unthreaded receipt) is tracked separately.
        unthreaded = await self.message()
        r = await self.post_receipt(self.bob, unthreaded)
        self.assertEqual(r.code, 200, r)
        stored = await self.hs.receipt_store.get_receipt(
            self.room_id, "m.read", self.bob.user_id, root
        )
        assert stored is not None
        self.assertEqual(stored.event_id, in_thread)

    async def test_threaded_receipt_must_match_the_events_thread(self):
        root = await self.message()
        in_thread = await self.message(
            content={"body": "r", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}
        )
        # An annotation of a threaded event is in that thread too.
        reaction = await self.message(
            content={"m.relates_to": {"rel_type": "m.annotation", "event_id": in_thread, "key": "👍"}}
        )
        other = await self.message()
        r = await self.post_receipt(self.bob, in_thread, body={"thread_id": "main"})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.post_receipt(self.bob, other, body={"thread_id": root})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.post_receipt(self.bob, reaction, body={"thread_id": "main"})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.post_receipt(self.bob, reaction, body={"thread_id": root})
        self.assertEqual(r.code, 200, r)

    async def test_invalid_thread_ids(self):
        event_id = await self.message()
        for bad in ("", 5, None, ["main"]):
            r = await self.post_receipt(self.bob, event_id, body={"thread_id": bad})
            self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.post_receipt(self.bob, event_id, "m.fully_read", body={"thread_id": "main"})
        self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_receipt_errors(self):
        event_id = await self.message()
        r = await self.post_receipt(self.bob, event_id, "m.unknown")
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.post_receipt(self.bob, "$nonexistent:test.heddle")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.post_receipt(self.bob, "not-an-event-id")
        self.assertError(r, 400, "M_INVALID_PARAM")
        # An event of another room.
        other_room = await self.create_room(self.bob)
        r = await self.send(self.bob, other_room)
        r = await self.post_receipt(self.bob, r.json["event_id"])
        self.assertError(r, 404, "M_NOT_FOUND")
        # Someone not in the room.
        carol = await self.user("carol")
        r = await self.post_receipt(carol, event_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.post_receipt(self.bob, event_id, body=[1])
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("POST", receipt_path(self.room_id, "m.read", event_id), {})
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_nio_error_for_outsider(self):
        event_id = await self.message()
        carol = await self.user("carol")
        resp = await nio(self.nio_client(carol).update_receipt_marker(self.room_id, event_id))
        self.assertIsInstance(resp, UpdateReceiptMarkerError)
        self.assertEqual(resp.status_code, "M_FORBIDDEN")


@on_both_engines
class ReadMarkerTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room_id = await self.create_room(self.alice, preset="public_chat")
        r = await self.join(self.bob, self.room_id)
        assert r.code == 200, r
        self.events = []
        for _ in range(3):
            r = await self.send(self.alice, self.room_id)
            self.events.append(r.json["event_id"])

    def markers_path(self, room_id: str | None = None) -> str:
        return f"{API}/rooms/{q(room_id or self.room_id)}/read_markers"

    async def fully_read(self, user: User) -> dict | None:
        return await self.hs.account_data.get(user.user_id, self.room_id, "m.fully_read")

    async def test_nio_read_markers_set_marker_and_receipts(self):
        client = self.nio_client(self.bob)
        first, second, third = self.events
        resp = await nio(
            client.room_read_markers(self.room_id, first, read_event=second, private_read_event=third)
        )
        self.assertIsInstance(resp, RoomReadMarkersResponse)
        self.assertEqual(await self.fully_read(self.bob), {"event_id": first})
        store = self.hs.receipt_store
        public = await store.get_receipt(self.room_id, "m.read", self.bob.user_id)
        private = await store.get_receipt(self.room_id, "m.read.private", self.bob.user_id)
        assert public is not None and private is not None
        self.assertEqual((public.event_id, private.event_id), (second, third))
        # The fully read marker is room account data, which sync reads.
        changes = await self.hs.account_data.get_changes(self.bob.user_id, 0)
        self.assertIn(
            {"type": "m.fully_read", "content": {"event_id": first}},
            changes.room_events[self.room_id],
        )

    async def test_fully_read_may_move_backwards(self):
        first, _, third = self.events
        r = await self.request("POST", self.markers_path(), {"m.fully_read": third}, token=self.bob.token)
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.request("POST", self.markers_path(), {"m.fully_read": first}, token=self.bob.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.fully_read(self.bob), {"event_id": first})

    async def test_receipt_endpoint_sets_fully_read(self):
        r = await self.request(
            "POST", receipt_path(self.room_id, "m.fully_read", self.events[1]), {},
            token=self.bob.token,
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.fully_read(self.bob), {"event_id": self.events[1]})
        # m.fully_read never appears among receipts.
        events = await self.hs.receipts.get_receipt_events(self.bob.user_id, [self.room_id], 0)
        self.assertEqual(events, {})

    async def test_empty_body_changes_nothing(self):
        r = await self.request("POST", self.markers_path(), {}, token=self.bob.token)
        self.assertEqual(r.code, 200, r)
        self.assertIsNone(await self.fully_read(self.bob))

    async def test_bad_read_markers(self):
        r = await self.request("POST", self.markers_path(), {"m.fully_read": 5}, token=self.bob.token)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request(
            "POST", self.markers_path(), {"m.fully_read": "$missing:test.heddle"},
            token=self.bob.token,
        )
        self.assertError(r, 404, "M_NOT_FOUND")
        # A bad receipt in the same request leaves the good marker unset too.
        r = await self.request(
            "POST", self.markers_path(),
            {"m.fully_read": self.events[0], "m.read": "$missing:test.heddle"},
            token=self.bob.token,
        )
        self.assertError(r, 404, "M_NOT_FOUND")
        self.assertIsNone(await self.fully_read(self.bob))
        carol = await self.user("carol")
        r = await self.request(
            "POST", self.markers_path(), {"m.fully_read": self.events[0]}, token=carol.token
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("POST", self.markers_path(), raw=b"[]", token=self.bob.token)
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_fully_read_cannot_be_set_as_account_data(self):
        r = await self.request(
            "PUT",
            f"{API}/user/{q(self.bob.user_id)}/rooms/{q(self.room_id)}/account_data/m.fully_read",
            {"event_id": self.events[0]},
            token=self.bob.token,
        )
        self.assertError(r, 405, "M_BAD_JSON")
