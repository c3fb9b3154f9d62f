"""The admin API for rooms (Synapse's `/_synapse/admin/.../rooms...`), over real HTTP on
both engines: access control, the room list, details, members, state and history read by
an admin who is not in the room, blocking, deleting (and purging) rooms, and the audit log."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from tests.admin_helpers import ADMIN, AdminTestCase, User, q
from tests.harness import SERVER_NAME, on_both_engines

API = "/_matrix/client/v3"
UNKNOWN_ROOM = f"!nosuchroom:{SERVER_NAME}"
BAD_ROOM_IDS = ("not-a-room", "#alias:example.org", "!")


def room_paths(room_id: str) -> list[tuple[str, str, Any]]:
    """Every admin endpoint of this change about `room_id`: (method, full path, body)."""
    r = q(room_id)
    return [
        ("GET", f"{ADMIN}/v1/rooms/{r}", None),
        ("GET", f"{ADMIN}/v1/rooms/{r}/members", None),
        ("GET", f"{ADMIN}/v1/rooms/{r}/state", None),
        ("GET", f"{ADMIN}/v1/rooms/{r}/messages", None),
        ("GET", f"{ADMIN}/v1/rooms/{r}/forward_extremities", None),
        ("GET", f"{ADMIN}/v1/rooms/{r}/block", None),
        ("PUT", f"{ADMIN}/v1/rooms/{r}/block", {"block": True}),
        ("DELETE", f"{ADMIN}/v2/rooms/{r}", {}),
        ("GET", f"{ADMIN}/v2/rooms/{r}/delete_status", None),
        ("POST", f"{ADMIN}/v1/rooms/{r}/make_room_admin", {}),
        ("POST", f"{ADMIN}/v1/purge_history/{r}", {"purge_up_to_ts": 1}),
    ]


ALL_PATHS = [
    ("GET", f"{ADMIN}/v1/rooms", None),
    ("GET", f"{ADMIN}/v2/rooms/delete_status/x", None),
    ("GET", f"{ADMIN}/v1/purge_history_status/x", None),
]


class RoomAdminTestCase(AdminTestCase):
    async def wait_for_delete(self, admin: User, delete_id: str) -> dict[str, Any]:
        for _ in range(300):
            r = await self.admin_get(admin, f"/v2/rooms/delete_status/{delete_id}")
            self.assertEqual(r.code, 200, r)
            if r.json["status"] in ("complete", "failed"):
                return r.json
            await task.deferLater(reactor, 0.02, lambda: None)
        self.fail("the delete did not finish")

    def hold_purge_start(self) -> defer.Deferred[None]:
        """Hold room purges at their start (the room still known) until the Deferred
        returned fires."""
        store = self.hs.room_admin_store
        original = store.purge_room_start
        release: defer.Deferred[None] = defer.Deferred()

        async def held(room_id: str) -> None:
            await release
            await original(room_id)

        self.patch(store, "purge_room_start", held)
        return release


@on_both_engines
class AdminRoomAccessTests(RoomAdminTestCase):
    async def test_every_endpoint_needs_a_token(self):
        for method, path, body in room_paths(UNKNOWN_ROOM) + ALL_PATHS:
            r = await self.request(method, path, body)
            self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_every_endpoint_refuses_non_admins_before_looking_the_room_up(self):
        alice = await self.user("alice")
        mallory = await self.user("mallory")
        room_id = await self.create_room(alice)
        for target in (room_id, UNKNOWN_ROOM, "not-a-room"):
            for method, path, body in room_paths(target) + ALL_PATHS:
                r = await self.request(method, path, body, token=mallory.token)
                self.assertError(r, 403, "M_FORBIDDEN")
        # Nothing was changed, not even the blocks, and the room is still there.
        self.assertIsNone(await self.hs.room_admin_store.get_block(room_id))
        self.assertEqual(await self.membership_of(room_id, alice), "join")
        self.assertEqual(await self.hs.admin_audit_store.entries(), [])

    async def test_unknown_rooms_are_not_found(self):
        admin = await self.make_admin()
        for method, path, body in room_paths(UNKNOWN_ROOM):
            if path.endswith("/block"):
                continue  # a room may be blocked before this server knows it
            r = await self.request(method, path, body, token=admin.token)
            self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.admin_get(admin, "/v2/rooms/delete_status/nosuchid")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.admin_get(admin, "/v1/purge_history_status/nosuchid")
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_bad_room_ids_are_refused(self):
        admin = await self.make_admin()
        for bad in BAD_ROOM_IDS:
            for method, path, body in room_paths(bad):
                r = await self.request(method, path, body, token=admin.token)
                self.assertError(r, 400, "M_INVALID_PARAM")


@on_both_engines
class RoomListTests(RoomAdminTestCase):
    async def setUp(self):
        await super().setUp()
        self.admin = await self.make_admin()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        # Three rooms: names b, a, c; "a" has two members and is public; c is encrypted.
        self.room_b = await self.create_room(self.alice, name="Bravo")
        self.room_a = await self.create_room(
            self.alice, name="alpha", visibility="public", room_alias_name="alpharoom"
        )
        self.assertEqual((await self.join(self.bob, self.room_a)).code, 200)
        self.room_c = await self.create_room(
            self.bob,
            name="Charlie",
            initial_state=[
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ],
        )

    async def list(self, **params: Any) -> dict[str, Any]:
        r = await self.admin_get(self.admin, "/v1/rooms", **params)
        self.assertEqual(r.code, 200, r)
        return r.json

    def ids(self, body: dict[str, Any]) -> list[str]:
        return [room["room_id"] for room in body["rooms"]]

    async def test_listing_shape_and_default_order(self):
        body = await self.list()
        self.assertEqual(body["total_rooms"], 3)
        self.assertEqual(body["offset"], 0)
        self.assertNotIn("next_batch", body)
        self.assertNotIn("prev_batch", body)
        # By name, compared code point by code point: capitals first.
        self.assertEqual(
            [room["name"] for room in body["rooms"]], sorted(["Bravo", "alpha", "Charlie"])
        )
        alpha = next(room for room in body["rooms"] if room["room_id"] == self.room_a)
        self.assertEqual(
            alpha,
            {
                "room_id": self.room_a,
                "name": "alpha",
                "canonical_alias": f"#alpharoom:{SERVER_NAME}",
                "joined_members": 2,
                "joined_local_members": 2,
                "version": alpha["version"],
                "creator": self.alice.user_id,
                "encryption": None,
                "federatable": True,
                "public": True,
                "join_rules": "public",
                "guest_access": alpha["guest_access"],
                "history_visibility": "shared",
                "state_events": alpha["state_events"],
                "room_type": None,
            },
        )
        self.assertGreater(alpha["state_events"], 5)
        charlie = next(room for room in body["rooms"] if room["room_id"] == self.room_c)
        self.assertEqual(charlie["encryption"], "m.megolm.v1.aes-sha2")

    async def test_order_by_and_dir(self):
        body = await self.list(order_by="joined_members")
        self.assertEqual(self.ids(body)[0], self.room_a)
        body = await self.list(order_by="joined_members", dir="b")
        self.assertEqual(self.ids(body)[-1], self.room_a)
        forwards = self.ids(await self.list(order_by="name"))
        backwards = self.ids(await self.list(order_by="name", dir="b"))
        self.assertEqual(backwards, list(reversed(forwards)))
        body = await self.list(order_by="encryption")
        # Rooms without encryption have no value: last.
        self.assertEqual(self.ids(body)[0], self.room_c)

    async def test_pagination(self):
        first = await self.list(limit=2)
        self.assertEqual(len(first["rooms"]), 2)
        self.assertEqual(first["next_batch"], 2)
        self.assertNotIn("prev_batch", first)
        second = await self.list(limit=2, **{"from": first["next_batch"]})
        self.assertEqual(len(second["rooms"]), 1)
        self.assertEqual(second["offset"], 2)
        self.assertEqual(second["prev_batch"], 0)
        self.assertNotIn("next_batch", second)
        self.assertEqual(
            sorted(self.ids(first) + self.ids(second)),
            sorted([self.room_a, self.room_b, self.room_c]),
        )

    async def test_search_and_filters(self):
        self.assertEqual(self.ids(await self.list(search_term="ALPH")), [self.room_a])
        # The alias's localpart matches; the room ID too (case-sensitively).
        self.assertEqual(self.ids(await self.list(search_term="alpharoom")), [self.room_a])
        self.assertEqual(self.ids(await self.list(search_term=self.room_b)), [self.room_b])
        self.assertEqual((await self.list(search_term="nothing like it"))["total_rooms"], 0)
        self.assertEqual(self.ids(await self.list(public_rooms="true")), [self.room_a])
        self.assertEqual((await self.list(public_rooms="false"))["total_rooms"], 2)
        self.assertEqual((await self.list(empty_rooms="true"))["total_rooms"], 0)

    async def test_list_follows_names_members_and_redactions(self):
        # The list is read from a summary row per room the persister keeps: every change
        # of the current state clients see shows at once.
        renamed = await self.put_state(self.alice, self.room_b, "m.room.name", {"name": "Zulu"})
        self.assertEqual(renamed.code, 200, renamed)
        await self.put_state(self.alice, self.room_b, "m.room.join_rules", {"join_rule": "public"})
        self.assertEqual((await self.join(self.bob, self.room_b)).code, 200)
        body = await self.list()
        self.assertEqual([room["name"] for room in body["rooms"]], ["Charlie", "Zulu", "alpha"])
        zulu = next(room for room in body["rooms"] if room["room_id"] == self.room_b)
        self.assertEqual((zulu["joined_members"], zulu["join_rules"]), (2, "public"))
        self.assertEqual(self.ids(await self.list(search_term="zul")), [self.room_b])
        r = await self.request(
            "POST", f"{API}/rooms/{q(self.room_b)}/leave", {}, token=self.bob.token
        )
        self.assertEqual(r.code, 200, r)
        # A redacted name is no name: the room sorts last and is not found by it.
        r = await self.request(
            "PUT", f"{API}/rooms/{q(self.room_b)}/redact/{q(renamed.json['event_id'])}/t1",
            {}, token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        body = await self.list()
        self.assertEqual(self.ids(body)[-1], self.room_b)
        self.assertEqual(
            (body["rooms"][-1]["name"], body["rooms"][-1]["joined_members"]), (None, 1)
        )
        self.assertEqual((await self.list(search_term="zul"))["total_rooms"], 0)

    async def test_names_sort_by_code_point_and_search_ignores_case_beyond_ascii(self):
        # The same order on both engines, whatever PostgreSQL's collation is.
        for name in ("éclair", "Émile", "ábc"):
            await self.create_room(self.alice, name=name)
        body = await self.list()
        self.assertEqual(
            [room["name"] for room in body["rooms"]],
            sorted(["Bravo", "alpha", "Charlie", "éclair", "Émile", "ábc"]),
        )
        self.assertEqual(
            [room["name"] for room in (await self.list(search_term="ÉCLAIR"))["rooms"]],
            ["éclair"],
        )
        self.assertEqual(
            [room["name"] for room in (await self.list(search_term="%"))["rooms"]], []
        )

    async def test_names_with_nul_are_listed_and_searched(self):
        # PostgreSQL's text cannot hold NUL: neither sending such a name nor searching for
        # it may fail.
        room_id = await self.create_room(self.alice, name="nul\u0000name")
        body = await self.list(search_term="nul\u0000")
        self.assertEqual(self.ids(body), [room_id])
        self.assertEqual(body["rooms"][0]["name"], "nul\ufffdname")

    async def test_rooms_held_before_the_summary_are_filled_in(self):
        before = await self.list()
        await self.hs.db.run_interaction(
            "forget_summaries", lambda txn: txn.execute("DELETE FROM room_list_summary")
        )
        self.assertEqual((await self.list())["total_rooms"], 0)
        filled = await self.hs.room_admin_store.fill_room_list_summaries(SERVER_NAME, batch=2)
        self.assertEqual(filled, 3)
        self.assertEqual(await self.list(), before)

    async def test_bad_parameters_are_refused(self):
        for params in (
            {"from": "-1"},
            {"from": "x"},
            {"limit": "0"},
            {"limit": "-5"},
            {"order_by": "nonsense"},
            {"dir": "sideways"},
            {"public_rooms": "maybe"},
        ):
            r = await self.admin_get(self.admin, "/v1/rooms", **params)
            self.assertError(r, 400, "M_INVALID_PARAM")


@on_both_engines
class RoomReadTests(RoomAdminTestCase):
    async def test_details_members_state_and_messages_without_joining(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(
            alice, name="Private", topic="Secret things", preset="private_chat"
        )
        await self.put_state(alice, room_id, "m.room.history_visibility",
                             {"history_visibility": "joined"})
        for i in range(3):
            self.assertEqual((await self.send(alice, room_id, {"msgtype": "m.text",
                                                               "body": f"m{i}"})).code, 200)
        # The admin is not in the room: the client API refuses them.
        r = await self.request(
            "GET", f"{API}/rooms/{q(room_id)}/messages?dir=b", token=admin.token
        )
        self.assertError(r, 403, "M_FORBIDDEN")

        r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["name"], "Private")
        self.assertEqual(r.json["topic"], "Secret things")
        self.assertEqual(r.json["joined_local_devices"], 1)
        self.assertEqual(r.json["join_rules"], "invite")
        self.assertFalse(r.json["forgotten"])
        self.assertFalse(r.json["tombstoned"])
        self.assertIsNone(r.json["replacement_room"])

        r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}/members")
        self.assertEqual(r.json, {"members": [alice.user_id], "total": 1})

        r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}/state")
        types = {event["type"] for event in r.json["state"]}
        self.assertIn("m.room.create", types)
        self.assertIn("m.room.topic", types)
        r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}/state", type="m.room.name")
        self.assertEqual([e["content"] for e in r.json["state"]], [{"name": "Private"}])

        r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}/messages", dir="b", limit=2)
        self.assertEqual(r.code, 200, r)
        self.assertEqual([e["content"]["body"] for e in r.json["chunk"]], ["m2", "m1"])
        r = await self.admin_get(
            admin, f"/v1/rooms/{q(room_id)}/messages", dir="b", limit=2, **{"from": r.json["end"]}
        )
        self.assertEqual(r.json["chunk"][0]["content"]["body"], "m0")
        # Forwards (the default) from the start: the create event first.
        r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}/messages")
        self.assertEqual(r.json["chunk"][0]["type"], "m.room.create")

        r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}/forward_extremities")
        self.assertEqual(r.json["count"], 1)
        self.assertEqual(set(r.json["results"][0]),
                         {"event_id", "state_group", "depth", "received_ts"})
        self.assertEqual(await self.hs.admin_audit_store.entries(), [])

    async def test_bad_message_parameters_are_refused(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        for params in ({"dir": "x"}, {"from": "garbage"}, {"limit": "-1"}, {"filter": "{"}):
            r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}/messages", **params)
            self.assertEqual(r.code, 400, (params, r))


@on_both_engines
class BlockRoomTests(RoomAdminTestCase):
    async def test_blocked_rooms_refuse_joins_and_invites(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}/block")
        self.assertEqual(r.json, {"block": False})

        r = await self.admin_call(admin, "PUT", f"/v1/rooms/{q(room_id)}/block", {"block": True})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"block": True})
        r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}/block")
        self.assertEqual(r.json, {"block": True, "user_id": admin.user_id})

        self.assertError(await self.join(bob, room_id), 403, "M_FORBIDDEN")
        r = await self.membership_action(alice, room_id, "invite", {"user_id": bob.user_id})
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.put_state(alice, room_id, "m.room.member",
                                 {"membership": "invite"}, state_key=bob.user_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertIsNone(await self.membership_of(room_id, bob))

        r = await self.admin_call(admin, "PUT", f"/v1/rooms/{q(room_id)}/block", {"block": False})
        self.assertEqual(r.json, {"block": False})
        self.assertEqual((await self.join(bob, room_id)).code, 200)
        actions = [(e.action, e.admin_user_id) for e in await self.audit(room_id)]
        self.assertEqual(
            actions, [("block_room", admin.user_id), ("unblock_room", admin.user_id)]
        )

    async def test_unknown_rooms_can_be_blocked(self):
        admin = await self.make_admin()
        r = await self.admin_call(
            admin, "PUT", f"/v1/rooms/{q(UNKNOWN_ROOM)}/block", {"block": True}
        )
        self.assertEqual(r.code, 200, r)
        r = await self.admin_get(admin, f"/v1/rooms/{q(UNKNOWN_ROOM)}/block")
        self.assertEqual(r.json["block"], True)

    async def test_bad_bodies_are_refused(self):
        admin = await self.make_admin()
        for body in ({}, {"block": "yes"}, []):
            r = await self.admin_call(admin, "PUT", f"/v1/rooms/{q(UNKNOWN_ROOM)}/block", body)
            self.assertEqual(r.code, 400, r)


@on_both_engines
class DeleteRoomTests(RoomAdminTestCase):
    async def setUp(self):
        await super().setUp()
        self.admin = await self.make_admin()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room_id = await self.create_room(
            self.alice, name="Doomed", visibility="public", room_alias_name="doomed"
        )
        self.assertEqual((await self.join(self.bob, self.room_id)).code, 200)
        for _ in range(5):
            await self.send(self.alice, self.room_id)

    async def delete(self, body: Any) -> Any:
        return await self.admin_call(self.admin, "DELETE", f"/v2/rooms/{q(self.room_id)}", body)

    async def count(self, table: str) -> int:
        row = await self.hs.db.run_interaction(
            "count",
            lambda txn: txn.select_one(
                f"SELECT COUNT(*) FROM {table} WHERE room_id = ?", (self.room_id,)
            ),
        )
        return row[0]

    async def test_delete_and_purge_leaves_nothing(self):
        self.assertGreater(await self.count("event_search"), 0)
        r = await self.delete({})
        self.assertEqual(r.code, 200, r)
        delete_id = r.json["delete_id"]
        status = await self.wait_for_delete(self.admin, delete_id)
        self.assertEqual(status["status"], "complete", status)
        self.assertEqual(status["room_id"], self.room_id)
        self.assertEqual(
            sorted(status["shutdown_room"]["kicked_users"]),
            sorted([self.alice.user_id, self.bob.user_id]),
        )
        self.assertEqual(status["shutdown_room"]["local_aliases"], [f"#doomed:{SERVER_NAME}"])
        self.assertIsNone(status["shutdown_room"]["new_room_id"])
        # No member, alias, directory entry, event or state left.
        for table in ("events", "current_state_events", "room_memberships", "room_aliases",
                      "state_groups", "rooms", "event_forward_extremities", "event_search"):
            self.assertEqual(await self.count(table), 0, table)
        r = await self.request("GET", f"{API}/directory/room/{q('#doomed:' + SERVER_NAME)}")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.request("GET", f"{API}/publicRooms")
        self.assertEqual(r.json["chunk"], [])
        r = await self.request("GET", f"{API}/joined_rooms", token=self.alice.token)
        self.assertEqual(r.json["joined_rooms"], [])
        r = await self.admin_get(self.admin, f"/v1/rooms/{q(self.room_id)}")
        self.assertError(r, 404, "M_NOT_FOUND")
        # The status by room; the delete is audited.
        r = await self.admin_get(self.admin, f"/v2/rooms/{q(self.room_id)}/delete_status")
        self.assertEqual([t["delete_id"] for t in r.json["results"]], [delete_id])
        (entry,) = await self.audit(self.room_id)
        self.assertEqual((entry.action, entry.admin_user_id), ("delete_room", self.admin.user_id))
        self.assertEqual(entry.details["delete_id"], delete_id)

    async def test_purge_runs_in_bounded_transactions(self):
        from storage.stores import room_admin

        self.patch(room_admin, "PURGE_BATCH", 3)
        store = self.hs.room_admin_store
        calls: list[int] = []
        original = store.purge_event_batch

        async def counting(room_id: str, limit: int = 3) -> list[str]:
            found = await original(room_id, 3)
            calls.append(len(found))
            return found

        self.patch(store, "purge_event_batch", counting)
        r = await self.delete({})
        status = await self.wait_for_delete(self.admin, r.json["delete_id"])
        self.assertEqual(status["status"], "complete", status)
        self.assertGreater(len(calls), 3)
        self.assertTrue(all(n <= 3 for n in calls))
        self.assertEqual(await self.count("events"), 0)

    async def test_purge_rests_between_batches_on_one_connection(self):
        # On SQLite, after each batch the purge leaves the database to other requests for as
        # long as the batch held it.
        store = self.hs.room_admin_store
        original = store.purge_event_batch
        batches = 0

        async def counting(room_id: str, limit: int) -> list[str]:
            nonlocal batches
            batches += 1
            return await original(room_id, 3)

        self.patch(store, "purge_event_batch", counting)
        pauses: list[float] = []
        clock = self.hs.admin_rooms._clock
        sleep = clock.sleep

        async def recording(seconds: float) -> None:
            pauses.append(seconds)
            await sleep(seconds)

        self.patch(clock, "sleep", recording)
        r = await self.delete({})
        status = await self.wait_for_delete(self.admin, r.json["delete_id"])
        self.assertEqual(status["status"], "complete", status)
        self.assertGreater(batches, 3)
        if self.hs.db.engine.name == "sqlite":
            # A rest after each batch that deleted something (all but the last, empty one
            # of the events; state groups and other rows too).
            self.assertGreaterEqual(len(pauses), batches - 1)
            self.assertTrue(all(0 <= pause <= 1.0 for pause in pauses))
        else:
            # A pool of connections: the purge's batches run beside other requests.
            self.assertEqual(pauses, [])

    async def test_delete_without_purge_and_with_block(self):
        r = await self.delete({"purge": False, "block": True})
        status = await self.wait_for_delete(self.admin, r.json["delete_id"])
        self.assertEqual(status["status"], "complete", status)
        self.assertEqual(await self.membership_of(self.room_id, self.alice), "leave")
        self.assertEqual(await self.membership_of(self.room_id, self.bob), "leave")
        self.assertEqual(await self.count("room_aliases"), 0)
        r = await self.request("GET", f"{API}/publicRooms")
        self.assertEqual(r.json["chunk"], [])
        self.assertError(await self.join(self.bob, self.room_id), 403, "M_FORBIDDEN")
        self.assertGreater(await self.count("events"), 0)

    async def test_new_room_takes_the_members_and_aliases(self):
        r = await self.delete(
            {"new_room_user_id": self.admin.user_id, "room_name": "Moved", "message": "Gone"}
        )
        status = await self.wait_for_delete(self.admin, r.json["delete_id"])
        self.assertEqual(status["status"], "complete", status)
        new_room = status["shutdown_room"]["new_room_id"]
        self.assertIsNotNone(new_room)
        self.assertEqual(await self.membership_of(new_room, self.alice), "join")
        self.assertEqual(await self.membership_of(new_room, self.bob), "join")
        r = await self.request("GET", f"{API}/directory/room/{q('#doomed:' + SERVER_NAME)}")
        self.assertEqual(r.json["room_id"], new_room)
        r = await self.admin_get(self.admin, f"/v1/rooms/{q(new_room)}")
        self.assertEqual(r.json["name"], "Moved")
        bodies = [e.content.get("body") for e in await self.room_events(new_room)]
        self.assertIn("Gone", bodies)
        self.assertEqual(await self.count("events"), 0)

    async def test_a_room_mid_delete_cannot_be_deleted_again(self):
        # Hold the delete at its purge until the second request is answered.
        release = self.hold_purge_start()
        r = await self.delete({})
        self.assertEqual(r.code, 200, r)
        status = await self.admin_get(self.admin, f"/v2/rooms/delete_status/{r.json['delete_id']}")
        self.assertEqual(status.json["status"], "active")
        again = await self.delete({})
        self.assertError(again, 400, "M_UNKNOWN")
        release.callback(None)
        status = await self.wait_for_delete(self.admin, r.json["delete_id"])
        self.assertEqual(status["status"], "complete")
        # Once finished, the room is gone: a new delete finds nothing.
        self.assertError(await self.delete({}), 404, "M_NOT_FOUND")

    async def test_bad_bodies_are_refused(self):
        for body in (None, {"purge": "yes"}, {"new_room_user_id": "@x:elsewhere.example"},
                     {"new_room_user_id": "nonsense"}):
            r = await self.delete(body)
            self.assertEqual(r.code, 400, (body, r))
        self.assertEqual(await self.membership_of(self.room_id, self.alice), "join")


@on_both_engines
class MakeRoomAdminTests(RoomAdminTestCase):
    async def power_of(self, room_id: str, user_id: str) -> Any:
        state = await self.current_state(room_id)
        return state[("m.room.power_levels", "")].content.get("users", {}).get(user_id)

    async def test_the_admin_is_invited_and_given_the_highest_local_level(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(alice, preset="private_chat")
        r = await self.admin_call(admin, "POST", f"/v1/rooms/{q(room_id)}/make_room_admin", {})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership_of(room_id, admin), "invite")
        self.assertGreaterEqual(await self.power_of(room_id, admin.user_id), 100)
        # The invite lets them in, with the power to act.
        self.assertEqual((await self.join(admin, room_id)).code, 200)
        r = await self.put_state(admin, room_id, "m.room.name", {"name": "Taken over"})
        self.assertEqual(r.code, 200, r)
        (entry,) = await self.audit(room_id)
        self.assertEqual((entry.action, entry.details["user_id"]),
                         ("make_room_admin", admin.user_id))

    async def test_another_user_of_a_public_room_is_not_invited(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        r = await self.admin_call(
            admin, "POST", f"/v1/rooms/{q(room_id)}/make_room_admin", {"user_id": bob.user_id}
        )
        self.assertEqual(r.code, 200, r)
        self.assertIsNone(await self.membership_of(room_id, bob))
        self.assertGreaterEqual(await self.power_of(room_id, bob.user_id), 100)

    async def test_refusals(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        path = f"/v1/rooms/{q(room_id)}/make_room_admin"
        r = await self.admin_call(admin, "POST", path, {"user_id": "@x:elsewhere.example"})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.admin_call(admin, "POST", path, {"user_id": 5})
        self.assertEqual(r.code, 400, r)
        # Nobody local is left to grant power.
        self.assertEqual((await self.membership_action(alice, room_id, "leave")).code, 200)
        r = await self.admin_call(admin, "POST", path, {})
        self.assertError(r, 400, "M_UNKNOWN")
        self.assertEqual(await self.audit(room_id), [])


@on_both_engines
class PurgeHistoryTests(RoomAdminTestCase):
    async def setUp(self):
        await super().setUp()
        self.admin = await self.make_admin()
        self.alice = await self.user("alice")
        self.room_id = await self.create_room(self.alice, name="Chatty")
        self.event_ids = []
        for i in range(5):
            r = await self.send(self.alice, self.room_id, {"msgtype": "m.text", "body": f"m{i}"})
            self.event_ids.append(r.json["event_id"])

    async def purge(self, body: Any, event_id: str | None = None) -> Any:
        path = f"/v1/purge_history/{q(self.room_id)}"
        if event_id is not None:
            path += f"/{q(event_id)}"
        return await self.admin_call(self.admin, "POST", path, body)

    async def wait_for_purge(self, purge_id: str) -> dict[str, Any]:
        for _ in range(300):
            r = await self.admin_get(self.admin, f"/v1/purge_history_status/{purge_id}")
            self.assertEqual(r.code, 200, r)
            if r.json["status"] != "active":
                return r.json
            await task.deferLater(reactor, 0.02, lambda: None)
        self.fail("the purge did not finish")

    async def bodies(self) -> list[str]:
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room_id)}/messages?dir=b&limit=50",
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        return [e["content"]["body"] for e in r.json["chunk"] if e["type"] == "m.room.message"]

    async def test_history_goes_in_batches_past_the_state_it_keeps(self):
        # Topic changes between the messages stay; batches of two continue from where the
        # last one stopped, past them.
        for i in range(3):
            await self.put_state(self.alice, self.room_id, "m.room.topic", {"topic": f"t{i}"})
            r = await self.send(self.alice, self.room_id, {"msgtype": "m.text", "body": f"n{i}"})
            self.event_ids.append(r.json["event_id"])
        store = self.hs.room_admin_store
        original = store.purge_history_batch
        sizes: list[int] = []

        async def small(room_id: str, depth: int, keep: Any, after: Any, limit: int) -> Any:
            deleted, after = await original(room_id, depth, keep, after, 2)
            sizes.append(len(deleted))
            return deleted, after

        self.patch(store, "purge_history_batch", small)
        r = await self.purge(
            {"delete_local_events": True, "purge_up_to_event_id": self.event_ids[-1]}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.wait_for_purge(r.json["purge_id"]), {"status": "complete"})
        self.assertEqual(await self.bodies(), ["n2"])
        self.assertEqual(sizes, [2, 2, 2, 1, 0])
        state = await self.get_state(self.alice, self.room_id, "m.room.topic")
        self.assertEqual(state.json, {"topic": "t2"})

    async def test_history_before_the_event_goes_state_stays(self):
        r = await self.purge(
            {"delete_local_events": True, "purge_up_to_event_id": self.event_ids[3]}
        )
        self.assertEqual(r.code, 200, r)
        status = await self.wait_for_purge(r.json["purge_id"])
        self.assertEqual(status, {"status": "complete"})
        self.assertEqual(await self.bodies(), ["m4", "m3"])
        # The purged messages are gone from the search index too; the name (state) stays.
        indexed = await self.hs.db.run_interaction(
            "indexed",
            lambda txn: txn.select_all(
                "SELECT event_id, value FROM event_search WHERE room_id = ?", (self.room_id,)
            ),
        )
        self.assertCountEqual(
            indexed, [(self.event_ids[3], "m3"), (self.event_ids[4], "m4")] + [
                (row[0], "Chatty") for row in indexed if row[1] == "Chatty"
            ],
        )
        self.assertEqual(sum(1 for row in indexed if row[1] == "Chatty"), 1)
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room_id)}/event/{q(self.event_ids[0])}",
            token=self.alice.token,
        )
        self.assertError(r, 404, "M_NOT_FOUND")
        # The room still works: state and new messages.
        r = await self.admin_get(self.admin, f"/v1/rooms/{q(self.room_id)}")
        self.assertEqual(r.json["name"], "Chatty")
        self.assertEqual((await self.send(self.alice, self.room_id)).code, 200)
        (entry,) = await self.audit(self.room_id)
        self.assertEqual(entry.action, "purge_history")

    async def test_local_events_are_kept_unless_asked(self):
        r = await self.purge({}, event_id=self.event_ids[4])
        status = await self.wait_for_purge(r.json["purge_id"])
        self.assertEqual(status["status"], "complete")
        self.assertEqual(await self.bodies(), ["m4", "m3", "m2", "m1", "m0"])

    async def test_up_to_a_timestamp(self):
        r = await self.purge({"delete_local_events": True, "purge_up_to_ts": 2**52})
        status = await self.wait_for_purge(r.json["purge_id"])
        self.assertEqual(status["status"], "complete")
        # The last event is the point: everything before it goes.
        self.assertEqual(await self.bodies(), ["m4"])
        r = await self.purge({"purge_up_to_ts": 1})
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_refusals(self):
        other = await self.create_room(self.alice)
        self.assertError(await self.purge({}), 400, "M_BAD_JSON")
        r = await self.purge({"purge_up_to_event_id": "not-an-event"})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.purge({}, event_id=(await self.room_events(other))[0].event_id)
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.purge({"purge_up_to_ts": "soon"})
        self.assertEqual(r.code, 400, r)
        # Hold the purge at its first batch until both requests below are answered.
        store = self.hs.room_admin_store
        original = store.purge_history_batch
        release: defer.Deferred[None] = defer.Deferred()

        async def held(*args: Any, **kwargs: Any) -> list[str]:
            await release
            return await original(*args, **kwargs)

        self.patch(store, "purge_history_batch", held)
        first = await self.purge({"delete_local_events": True, "purge_up_to_ts": 2**52})
        self.assertEqual(first.code, 200, first)
        # While it runs, neither a second purge nor a delete of the room.
        self.assertError(await self.purge({"purge_up_to_ts": 2**52}), 400, "M_UNKNOWN")
        r = await self.admin_call(self.admin, "DELETE", f"/v2/rooms/{q(self.room_id)}", {})
        self.assertError(r, 400, "M_UNKNOWN")
        release.callback(None)
        self.assertEqual(
            (await self.wait_for_purge(first.json["purge_id"]))["status"], "complete"
        )
        self.assertEqual(
            [e.action for e in await self.audit(self.room_id)], ["purge_history"]
        )
