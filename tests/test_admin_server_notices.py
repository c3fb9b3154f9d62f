"""Server notices (spec: "Server Notices") sent through Synapse's admin API
(`/_synapse/admin/v1/send_server_notice`), over real HTTP on both engines: one room per
user, invited and tagged `m.server_notice`, an invite that cannot be rejected, and the
refusals."""

from __future__ import annotations

from typing import Any

from tests.admin_helpers import ADMIN, AdminTestCase, q
from tests.harness import SERVER_NAME, on_both_engines
from tests.room_helpers import API, User

NOTICES = f"@notices:{SERVER_NAME}"
SEND = f"{ADMIN}/v1/send_server_notice"


def notice(user_id: str, body: str = "Maintenance tonight") -> dict[str, Any]:
    return {"user_id": user_id, "content": {"msgtype": "m.server_notice", "body": body}}


@on_both_engines
class ServerNoticesTests(AdminTestCase):
    config_overrides = {"server_notices": {"system_mxid_localpart": "notices",
                                           "room_name": "From the admins"}}

    async def invites(self, user: User) -> dict[str, Any]:
        r = await self.request("GET", f"{API}/sync?timeout=0", token=user.token)
        assert r.code == 200, r
        rooms: dict[str, Any] = r.json["rooms"]["invite"]
        return rooms

    async def test_one_room_per_user_invited_tagged_and_unrejectable(self):
        admin, alice = await self.make_admin(), await self.user("alice")
        r = await self.request("POST", SEND, notice(alice.user_id), token=admin.token)
        self.assertEqual(r.code, 200, r)
        first = r.json["event_id"]
        (room_id,) = (await self.invites(alice)).keys()
        # Rejecting the invite is refused; joining works, and the notice is there.
        r = await self.membership_action(alice, room_id, "leave")
        self.assertError(r, 403, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM")
        self.assertEqual((await self.join(alice, room_id)).code, 200)
        r = await self.request("GET", f"{API}/rooms/{q(room_id)}/event/{q(first)}", token=alice.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["sender"], NOTICES)
        self.assertEqual(r.json["content"]["msgtype"], "m.server_notice")
        r = await self.request("GET", f"{API}/user/{q(alice.user_id)}/rooms/{q(room_id)}/tags",
                               token=alice.token)
        self.assertIn("m.server_notice", r.json["tags"])
        r = await self.get_state(alice, room_id, "m.room.name")
        self.assertEqual(r.json["name"], "From the admins")
        # Members cannot post in it.
        self.assertEqual((await self.send(alice, room_id)).code, 403)
        # The second notice goes to the same room, and a PUT retried sends once.
        path = f"{SEND}/txn1"
        second = await self.request("PUT", path, notice(alice.user_id, "2"), token=admin.token)
        again = await self.request("PUT", path, notice(alice.user_id, "2"), token=admin.token)
        self.assertEqual(second.json["event_id"], again.json["event_id"])
        r = await self.request("GET", f"{API}/rooms/{q(room_id)}/event/{q(second.json['event_id'])}",
                               token=alice.token)
        self.assertEqual(r.code, 200, r)
        # Having left (after joining), she is invited back to the same room.
        self.assertEqual((await self.membership_action(alice, room_id, "leave")).code, 200)
        r = await self.request("POST", SEND, notice(alice.user_id, "3"), token=admin.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(list(await self.invites(alice)), [room_id])
        # Each request is logged (the retried PUT too, naming the same event).
        logged = await self.audit(alice.user_id)
        self.assertEqual({e.action for e in logged}, {"send_server_notice"})
        self.assertEqual(len({e.details["event_id"] for e in logged}), 3)

    async def test_bad_requests_are_refused(self):
        admin, alice = await self.make_admin(), await self.user("alice")
        r = await self.request("POST", SEND, notice(alice.user_id), token=alice.token)
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertError(await self.request("POST", SEND, notice(alice.user_id)), 401, "M_MISSING_TOKEN")
        r = await self.request("POST", SEND, notice(f"@nobody:{SERVER_NAME}"), token=admin.token)
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.request("POST", SEND, notice("@bob:elsewhere.example"), token=admin.token)
        self.assertError(r, 400, "M_INVALID_PARAM")
        # A missing field is M_MISSING_PARAM, a wrong one M_BAD_JSON (as Synapse answers).
        r = await self.request("POST", SEND, {"user_id": alice.user_id}, token=admin.token)
        self.assertError(r, 400, "M_MISSING_PARAM")
        r = await self.request("POST", SEND, {"content": {"body": "x"}}, token=admin.token)
        self.assertError(r, 400, "M_MISSING_PARAM")
        r = await self.request("POST", SEND, {**notice(alice.user_id), "content": "x"},
                               token=admin.token)
        self.assertError(r, 400, "M_BAD_JSON")
        self.assertEqual(await self.invites(alice), {})

    async def test_refused_when_not_configured(self):
        await self.start_server(server_notices={"system_mxid_localpart": None})
        admin, alice = await self.make_admin(), await self.user("alice")
        r = await self.request("POST", SEND, notice(alice.user_id), token=admin.token)
        self.assertError(r, 400, "M_UNKNOWN")
