"""/sync with `use_state_after`: rooms carry the state up to the end of the timeline in
`state_after` instead of `state`, over real HTTP."""

import json
from typing import Any

from homeserver.sync.handler import MAX_HEROES
from tests.harness import on_both_engines
from tests.test_sync import ALICE, BOB, SyncHelpers

CAROL = "@carol:test.heddle"


def state_keys(block: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["type"], e["state_key"]) for e in block["events"]}


@on_both_engines
class SyncStateAfter(SyncHelpers):
    async def setup_users(self) -> None:
        await super().setup_users()
        self.carol = (await self.register("carol"))["access_token"]

    async def send(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
    ) -> str:
        event = await self.hs.event_creator.send(
            room_id, sender, event_type, content, state_key=state_key
        )
        return event.event.event_id

    async def test_initial_sync_with_and_without_the_flag(self):
        await self.setup_users()
        room_id = await self.make_room((ALICE, BOB))
        plain = (await self.sync(self.bob))["rooms"]["join"][room_id]
        self.assertNotIn("state_after", plain)
        timeline_ids = {e["event_id"] for e in plain["timeline"]["events"]}
        # `state` is the state at the start of the timeline: nothing in the timeline again.
        self.assertFalse(timeline_ids & {e["event_id"] for e in plain["state"]["events"]})

        room = (await self.sync(self.bob, use_state_after="true"))["rooms"]["join"][room_id]
        self.assertNotIn("state", room)
        # The whole state at the end of the timeline, state events in the timeline included.
        self.assertEqual(
            state_keys(room["state_after"]),
            {
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.join_rules", ""),
                ("m.room.member", ALICE),
                ("m.room.member", BOB),
            },
        )
        self.assertIn(
            ("m.room.member", BOB),
            {(e["type"], e.get("state_key")) for e in room["timeline"]["events"]},
        )
        self.assertEqual(
            (await self.sync(self.bob, use_state_after="false"))["rooms"]["join"][room_id].keys(),
            plain.keys(),
        )

    async def test_incremental_state_event_in_the_timeline(self):
        await self.setup_users()
        room_id = await self.make_room((ALICE, BOB))
        since = (await self.sync(self.bob))["next_batch"]
        topic = await self.send(room_id, ALICE, "m.room.topic", {"topic": "Tea"}, state_key="")
        await self.send(room_id, ALICE, "m.room.message", {"msgtype": "m.text", "body": "hi"})

        plain = (await self.sync(self.bob, since=since))["rooms"]["join"][room_id]
        self.assertEqual(plain["state"]["events"], [])
        room = (await self.sync(self.bob, since=since, use_state_after="true"))["rooms"]["join"][
            room_id
        ]
        self.assertFalse(room["timeline"]["limited"])
        self.assertIn(topic, [e["event_id"] for e in room["timeline"]["events"]])
        self.assertEqual([e["event_id"] for e in room["state_after"]["events"]], [topic])
        self.assertNotIn("state", room)

        # Nothing changed since: the room is left out.
        latest = (await self.sync(self.bob, since=since, use_state_after="true"))["next_batch"]
        after = await self.sync(self.bob, since=latest, use_state_after="true")
        self.assertNotIn(room_id, after["rooms"]["join"])

    async def test_incremental_with_a_gap(self):
        await self.setup_users()
        room_id = await self.make_room((ALICE, BOB))
        since = (await self.sync(self.bob))["next_batch"]
        name = await self.send(room_id, ALICE, "m.room.name", {"name": "Lounge"}, state_key="")
        for i in range(15):
            await self.send(room_id, ALICE, "m.room.message", {"msgtype": "m.text", "body": str(i)})
        topic = await self.send(room_id, ALICE, "m.room.topic", {"topic": "Tea"}, state_key="")

        plain = (await self.sync(self.bob, since=since))["rooms"]["join"][room_id]
        self.assertEqual([e["event_id"] for e in plain["state"]["events"]], [name])
        room = (await self.sync(self.bob, since=since, use_state_after="true"))["rooms"]["join"][
            room_id
        ]
        self.assertTrue(room["timeline"]["limited"])
        self.assertNotIn(name, [e["event_id"] for e in room["timeline"]["events"]])
        self.assertEqual([e["event_id"] for e in room["state_after"]["events"]], [name, topic])
        self.assertNotIn("state", room)

    async def test_left_room(self):
        await self.setup_users()
        room_id = await self.make_room((ALICE, BOB))
        since = (await self.sync(self.bob))["next_batch"]
        topic = await self.send(room_id, ALICE, "m.room.topic", {"topic": "Tea"}, state_key="")
        leave = await self.send(
            room_id, BOB, "m.room.member", {"membership": "leave"}, state_key=BOB
        )
        await self.send(room_id, ALICE, "m.room.name", {"name": "After"}, state_key="")

        plain = (await self.sync(self.bob, since=since))["rooms"]["leave"][room_id]
        self.assertNotIn("state_after", plain)
        room = (await self.sync(self.bob, since=since, use_state_after="true"))["rooms"]["leave"][
            room_id
        ]
        self.assertNotIn("state", room)
        # Up to the leave, not past it.
        self.assertEqual([e["event_id"] for e in room["state_after"]["events"]], [topic, leave])

        # An initial sync that includes left rooms: the whole state as of the leave.
        include_leave = json.dumps({"room": {"include_leave": True}}, separators=(",", ":"))
        initial = await self.sync(self.bob, filter=include_leave, use_state_after="true")
        left = initial["rooms"]["leave"][room_id]
        self.assertNotIn("state", left)
        keys = state_keys(left["state_after"])
        self.assertIn(("m.room.topic", ""), keys)
        self.assertIn(("m.room.member", BOB), keys)
        self.assertNotIn(("m.room.name", ""), keys)

    async def test_lazy_loading_members(self):
        await self.setup_users()
        room_id = await self.make_room((ALICE, BOB, CAROL))
        await self.send(room_id, ALICE, "m.room.message", {"msgtype": "m.text", "body": "hi"})
        lazy = json.dumps(
            {"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": True}}},
            separators=(",", ":"),
        )

        def members(room: dict[str, Any]) -> set[str]:
            return {k for t, k in state_keys(room["state_after"]) if t == "m.room.member"}

        full = (await self.sync(self.bob, use_state_after="true"))["rooms"]["join"][room_id]
        self.assertEqual(members(full), {ALICE, BOB, CAROL})
        initial = await self.sync(self.bob, filter=lazy, use_state_after="true")
        room = initial["rooms"]["join"][room_id]
        self.assertNotIn("state", room)
        self.assertEqual(members(room), {ALICE, BOB})
        self.assertIn(("m.room.join_rules", ""), state_keys(room["state_after"]))

        # Incremental: the new speaker's member event comes along, though it did not change.
        await self.send(room_id, CAROL, "m.room.message", {"msgtype": "m.text", "body": "me"})
        later = await self.sync(
            self.bob, since=initial["next_batch"], filter=lazy, use_state_after="true"
        )
        self.assertIn(CAROL, members(later["rooms"]["join"][room_id]))

    async def test_garbage_value_is_refused(self):
        await self.setup_users()
        for value in ("yes", "1", "True"):
            r = await self.request(
                "GET", f"/_matrix/client/v3/sync?use_state_after={value}", token=self.bob
            )
            self.assertEqual(r.code, 400, value)
            self.assertEqual(r.json["errcode"], "M_INVALID_PARAM")

    async def test_viewers_with_and_without_the_flag_sharing_a_room(self):
        # Both viewers' incremental syncs cover the same window of the same room with the same
        # filter: one computes the room's section, the other must not be served its form.
        await self.setup_users()
        # Members before them, so that neither is a hero candidate (who computes alone).
        fillers = tuple(f"@filler{i}:test.heddle" for i in range(MAX_HEROES))
        room_id = await self.make_room((ALICE, *fillers, BOB, CAROL))
        took_shared: list[str] = []
        sync = self.hs.sync
        original_takes = sync._takes_shared

        async def takes_shared(user_id: str, section: Any) -> bool:
            taken = await original_takes(user_id, section)
            if taken:
                took_shared.append(user_id)
            return taken

        sync._takes_shared = takes_shared
        first_bob = (await self.sync(self.bob))["next_batch"]
        first_carol = (await self.sync(self.carol))["next_batch"]
        for round_number in range(2):
            topic = await self.send(
                room_id, ALICE, "m.room.topic", {"topic": str(round_number)}, state_key=""
            )
            await self.send(room_id, ALICE, "m.room.message", {"msgtype": "m.text", "body": "x"})
            users = [(self.bob, first_bob, True), (self.carol, first_carol, False)]
            if round_number:
                users.reverse()
            for token, since, flag in users:
                params = {"use_state_after": "true"} if flag else {}
                data = await self.sync(token, since=since, **params)
                room = data["rooms"]["join"][room_id]
                if flag:
                    self.assertNotIn("state", room)
                    self.assertEqual(
                        [e["event_id"] for e in room["state_after"]["events"]], [topic]
                    )
                    first_bob = data["next_batch"]
                else:
                    self.assertNotIn("state_after", room)
                    self.assertEqual(room["state"]["events"], [])
                    first_carol = data["next_batch"]
        # Every pass went through the shared sections (each form computed once for its own).
        self.assertEqual(sorted(took_shared), [BOB, BOB, CAROL, CAROL])
