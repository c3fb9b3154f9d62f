"""The core write path: create a room, send events, read state and the timeline back."""

from homeserver.errors import MatrixError
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from storage.persister import ClientTransaction
from tests.harness import HomeserverTestCase, on_both_engines

ALICE = "@alice:test.heddle"
BOB = "@bob:test.heddle"


@on_both_engines
class EventPipeline(HomeserverTestCase):
    async def make_room(self, version: str = "11") -> str:
        creator = self.hs.event_creator
        rv = KNOWN_ROOM_VERSIONS[version]
        content = {"room_version": version}
        if not rv.implicit_room_creator:
            content["creator"] = ALICE
        room_id, _ = await creator.create_room(rv, ALICE, content, is_public=False)
        await creator.send(room_id, ALICE, "m.room.member", {"membership": "join"}, state_key=ALICE)
        await creator.send(
            room_id, ALICE, "m.room.power_levels", {"users": {ALICE: 100}}
            if version != "12" else {"users": {}}, state_key="",
        )
        await creator.send(room_id, ALICE, "m.room.join_rules", {"join_rule": "invite"}, state_key="")
        return room_id

    async def test_room_versions_10_11_12(self):
        for version in ("10", "11", "12"):
            room_id = await self.make_room(version)
            state = await self.hs.state_store.get_current_state_ids(room_id)
            self.assertEqual(
                set(state),
                {("m.room.create", ""), ("m.room.member", ALICE), ("m.room.power_levels", ""),
                 ("m.room.join_rules", "")},
            )
            if version == "12":
                create_id = state[("m.room.create", "")]
                self.assertEqual(room_id, "!" + create_id[1:])
            sent = await self.hs.event_creator.send(room_id, ALICE, "m.room.message", {"body": "hi", "msgtype": "m.text"})
            self.assertEqual(sent.event.depth, 5)
            extremities = await self.hs.event_store.get_forward_extremities(room_id)
            self.assertEqual(extremities, [(sent.event.event_id, 5)])
            # The state group after the last state event matches the current state.
            group = await self.hs.event_store.get_current_state_group(room_id)
            self.assertEqual(await self.hs.state_store.get_state_group(group), state)

    async def test_auth_rules_refuse_outsiders_and_invite_only_joins(self):
        room_id = await self.make_room()
        with self.assertRaises(MatrixError) as cm:
            await self.hs.event_creator.send(room_id, BOB, "m.room.message", {"body": "x"})
        self.assertEqual((cm.exception.http_code, cm.exception.errcode), (403, "M_FORBIDDEN"))
        with self.assertRaises(MatrixError):
            await self.hs.event_creator.send(room_id, BOB, "m.room.member", {"membership": "join"}, state_key=BOB)
        await self.hs.event_creator.send(room_id, ALICE, "m.room.member", {"membership": "invite"}, state_key=BOB)
        await self.hs.event_creator.send(room_id, BOB, "m.room.member", {"membership": "join"}, state_key=BOB)
        members = await self.hs.state_store.get_current_members(room_id)
        self.assertEqual(set(members), {ALICE, BOB})
        rooms = await self.hs.room_store.get_rooms_for_user(BOB)
        self.assertEqual([m.room_id for m in rooms], [room_id])

    async def test_transaction_ids_are_idempotent(self):
        room_id = await self.make_room()
        txn = ClientTransaction(ALICE, "DEV", f"send/{room_id}/m.room.message/t1", "t1")
        first = await self.hs.event_creator.send(room_id, ALICE, "m.room.message", {"body": "a"}, txn=txn)
        again = await self.hs.event_creator.send(room_id, ALICE, "m.room.message", {"body": "a"}, txn=txn)
        self.assertEqual(first.event.event_id, again.event.event_id)
        serialized = await self.hs.event_serializer.serialize([first], requester_device=(ALICE, "DEV"))
        self.assertEqual(serialized[0]["unsigned"]["transaction_id"], "t1")
        other_device = await self.hs.event_serializer.serialize([first], requester_device=(ALICE, "X"))
        self.assertNotIn("transaction_id", other_device[0]["unsigned"])

    async def test_timeline_reads_and_redaction(self):
        room_id = await self.make_room()
        sent = [
            await self.hs.event_creator.send(room_id, ALICE, "m.room.message", {"body": str(i)})
            for i in range(5)
        ]
        latest = await self.hs.event_store.get_room_events_between(
            room_id, 0, self.hs.event_stream.current, 3
        )
        self.assertEqual([s.event.event_id for s in latest], [s.event.event_id for s in sent[2:]])
        last = sent[-1]
        back = await self.hs.event_store.paginate_room_events(
            room_id, (last.topological_ordering, last.stream_ordering), "b", 2
        )
        self.assertEqual([s.event.event_id for s in back], [sent[4].event.event_id, sent[3].event.event_id])
        await self.hs.event_creator.send(room_id, ALICE, "m.room.redaction", {"redacts": sent[0].event.event_id})
        stored = await self.hs.event_store.get_stored_event(sent[0].event.event_id)
        [serialized] = await self.hs.event_serializer.serialize([stored])
        self.assertEqual(serialized["content"], {})
        self.assertIn("redacted_because", serialized["unsigned"])

    async def test_oversized_event_is_refused(self):
        room_id = await self.make_room()
        with self.assertRaises(MatrixError) as cm:
            await self.hs.event_creator.send(room_id, ALICE, "m.room.message", {"body": "x" * 70000})
        self.assertEqual((cm.exception.http_code, cm.exception.errcode), (413, "M_TOO_LARGE"))
