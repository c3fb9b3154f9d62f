"""Admin lookups over real HTTP on both engines: whether a username is free, a user's room
memberships and pushers, an event's context and the event nearest a time in a room read
by an admin who is not in it, and deleting a room's extra forward extremities."""

from __future__ import annotations

from typing import Any

from tests.admin_helpers import ADMIN, AdminTestCase, q
from tests.harness import SERVER_NAME, on_both_engines
from tests.test_pushers import SET, http_pusher

UNKNOWN_USER = f"@nobody:{SERVER_NAME}"
UNKNOWN_ROOM = f"!nosuchroom:{SERVER_NAME}"
UNKNOWN_EVENT = "$nosuchevent"


def user_paths(user_id: str) -> list[tuple[str, str, Any]]:
    u = q(user_id)
    return [
        ("GET", f"{ADMIN}/v1/users/{u}/memberships", None),
        ("GET", f"{ADMIN}/v1/users/{u}/pushers", None),
    ]


def room_paths(room_id: str, event_id: str = UNKNOWN_EVENT) -> list[tuple[str, str, Any]]:
    r = q(room_id)
    return [
        ("GET", f"{ADMIN}/v1/rooms/{r}/context/{q(event_id)}", None),
        ("GET", f"{ADMIN}/v1/rooms/{r}/timestamp_to_event?ts=0", None),
        ("DELETE", f"{ADMIN}/v1/rooms/{r}/forward_extremities", None),
    ]


OTHER_PATHS = [("GET", f"{ADMIN}/v1/username_available?username=someone", None)]


@on_both_engines
class AccessTests(AdminTestCase):
    async def test_no_token_is_401_and_non_admins_get_403(self):
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        paths = user_paths(alice.user_id) + room_paths(room_id) + OTHER_PATHS
        for method, path, body in paths:
            self.assertError(await self.request(method, path, body), 401, "M_MISSING_TOKEN")
            r = await self.request(method, path, body, token=alice.token)
            self.assertError(r, 403, "M_FORBIDDEN")

    async def test_unknown_users_rooms_and_events_are_not_found(self):
        admin = await self.make_admin()
        for method, path, body in user_paths(UNKNOWN_USER) + room_paths(UNKNOWN_ROOM):
            r = await self.request(method, path, body, token=admin.token)
            self.assertError(r, 404, "M_NOT_FOUND")
        room_id = await self.create_room(admin)
        r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}/context/{q(UNKNOWN_EVENT)}")
        self.assertError(r, 404, "M_NOT_FOUND")
        # An event of another room is not found in this one.
        other = await self.create_room(admin)
        event_id = (await self.send(admin, other)).json["event_id"]
        r = await self.admin_get(admin, f"/v1/rooms/{q(room_id)}/context/{q(event_id)}")
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_bad_ids_and_parameters_are_400(self):
        admin = await self.make_admin()
        room_id = await self.create_room(admin)
        r = q(room_id)
        for path, params in (
            (f"/v1/users/{q('not-a-user')}/memberships", {}),
            (f"/v1/users/{q('not-a-user')}/pushers", {}),
            (f"/v1/rooms/{q('not-a-room')}/timestamp_to_event", {"ts": 0}),
            (f"/v1/rooms/{r}/context/not-an-event", {}),
            (f"/v1/rooms/{r}/context/{q(UNKNOWN_EVENT)}", {"limit": "many"}),
            (f"/v1/rooms/{r}/context/{q(UNKNOWN_EVENT)}", {"filter": "{not json"}),
            (f"/v1/rooms/{r}/timestamp_to_event", {}),
            (f"/v1/rooms/{r}/timestamp_to_event", {"ts": "soon"}),
            (f"/v1/rooms/{r}/timestamp_to_event", {"ts": -1}),
            (f"/v1/rooms/{r}/timestamp_to_event", {"ts": 0, "dir": "x"}),
            ("/v1/username_available", {}),
        ):
            response = await self.admin_get(admin, path, **params)
            self.assertEqual(response.code, 400, (path, params, response))


@on_both_engines
class UserLookupTests(AdminTestCase):
    async def test_username_available(self):
        admin = await self.make_admin()
        await self.user("taken")
        r = await self.admin_get(admin, "/v1/username_available", username="free")
        self.assertEqual((r.code, r.json), (200, {"available": True}))
        r = await self.admin_get(admin, "/v1/username_available", username="taken")
        self.assertError(r, 400, "M_USER_IN_USE")
        for bad in ("Upper", "sp ace", "_leading", "a" * 300, ""):
            r = await self.admin_get(admin, "/v1/username_available", username=bad)
            self.assertEqual(r.code, 400, (bad, r))
            if bad:
                self.assertError(r, 400, "M_INVALID_USERNAME")

    async def test_username_available_while_registration_is_closed(self):
        admin = await self.make_admin()
        self.hs.config.registration.enabled = False
        r = await self.admin_get(admin, "/v1/username_available", username="free")
        self.assertEqual((r.code, r.json), (200, {"available": True}))

    async def test_memberships_of_every_kind(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        joined = await self.create_room(alice)
        left = await self.create_room(admin, preset="public_chat")
        invited = await self.create_room(admin)
        self.assertEqual((await self.join(alice, left)).code, 200)
        r = await self.request(
            "POST", f"/_matrix/client/v3/rooms/{q(left)}/leave", {}, token=alice.token
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "POST",
            f"/_matrix/client/v3/rooms/{q(invited)}/invite",
            {"user_id": alice.user_id},
            token=admin.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.admin_get(admin, f"/v1/users/{q(alice.user_id)}/memberships")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(
            r.json, {"memberships": {joined: "join", left: "leave", invited: "invite"}}
        )

    async def test_pushers(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        r = await self.admin_get(admin, f"/v1/users/{q(alice.user_id)}/pushers")
        self.assertEqual(r.json, {"pushers": [], "total": 0})
        r = await self.request("POST", SET, http_pusher(), token=alice.token)
        self.assertEqual(r.code, 200, r)
        r = await self.admin_get(admin, f"/v1/users/{q(alice.user_id)}/pushers")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["total"], 1)
        (pusher,) = r.json["pushers"]
        expected = http_pusher()
        for key in ("kind", "app_id", "pushkey", "app_display_name", "device_display_name",
                    "lang", "data"):
            self.assertEqual(pusher[key], expected[key], key)


@on_both_engines
class RoomLookupTests(AdminTestCase):
    async def setUp(self):
        await super().setUp()
        self.admin = await self.make_admin()
        self.alice = await self.user("alice")
        # A private room the admin is not in.
        self.room_id = await self.create_room(self.alice, preset="private_chat")
        self.sent = []
        for n in range(5):
            r = await self.send(self.alice, self.room_id, {"msgtype": "m.text", "body": f"m{n}"})
            self.sent.append(r.json["event_id"])

    async def test_context_without_joining(self):
        middle = self.sent[2]
        r = await self.request(
            "GET", f"/_matrix/client/v3/rooms/{q(self.room_id)}/context/{q(middle)}",
            token=self.admin.token,
        )
        self.assertEqual(r.code, 403, r)  # the client API refuses the admin
        r = await self.admin_get(
            self.admin, f"/v1/rooms/{q(self.room_id)}/context/{q(middle)}", limit=4
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["event"]["event_id"], middle)
        self.assertEqual([e["event_id"] for e in r.json["events_before"]], self.sent[1::-1])
        self.assertEqual([e["event_id"] for e in r.json["events_after"]], self.sent[3:5])
        self.assertIn("m.room.create", {e["type"] for e in r.json["state"]})
        for key in ("start", "end"):
            self.assertIsInstance(r.json[key], str)

    async def test_timestamp_to_event(self):
        events = {e.event_id: e for e in await self.room_events(self.room_id)}
        ts = events[self.sent[2]].origin_server_ts
        path = f"/v1/rooms/{q(self.room_id)}/timestamp_to_event"
        r = await self.admin_get(self.admin, path, ts=ts + 10**9, dir="b")
        self.assertEqual(r.json["event_id"], self.sent[-1])
        r = await self.admin_get(self.admin, path, ts=ts)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["origin_server_ts"], ts)
        found = events[r.json["event_id"]]
        self.assertGreaterEqual(found.origin_server_ts, ts)
        # Nothing after the last event, nothing before the first.
        r = await self.admin_get(self.admin, path, ts=ts + 10**9)
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.admin_get(self.admin, path, ts=0, dir="b")
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_delete_extra_forward_extremities(self):
        path = f"/v1/rooms/{q(self.room_id)}/forward_extremities"
        r = await self.admin_call(self.admin, "DELETE", path)
        self.assertEqual((r.code, r.json), (200, {"deleted": 0}))
        # Make a fork: two more extremities, pointing at older events.
        newest = self.sent[-1]
        await self.hs.db.run_interaction(
            "fork",
            lambda txn: txn.execute_many(
                "INSERT INTO event_forward_extremities (room_id, event_id) VALUES (?, ?)",
                [(self.room_id, self.sent[0]), (self.room_id, self.sent[1])],
            ),
        )
        r = await self.admin_get(self.admin, path)
        self.assertEqual(r.json["count"], 3)
        r = await self.admin_call(self.admin, "DELETE", path)
        self.assertEqual((r.code, r.json), (200, {"deleted": 2}))
        r = await self.admin_get(self.admin, path)
        self.assertEqual([e["event_id"] for e in r.json["results"]], [newest])
        # The room still works, and its next event follows the kept one only.
        r = await self.send(self.alice, self.room_id)
        self.assertEqual(r.code, 200, r)
        entries = await self.audit(self.room_id)
        self.assertEqual(
            [(e.action, e.details) for e in entries],
            [("delete_forward_extremities", {"deleted": n}) for n in (0, 2)],
        )
