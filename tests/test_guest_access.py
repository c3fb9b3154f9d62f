"""Guest access: POST /register?kind=guest, the endpoints a guest may use, joining only rooms
whose m.room.guest_access is can_join, and upgrading a guest to a full account.

Over real HTTP on loopback, on both database engines.
"""

from __future__ import annotations

from typing import Any

from tests.harness import PASSWORD, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q
from tests.test_media import _png

REGISTER = f"{API}/register"
GUESTS_ON = {"registration": {"allow_guest_access": True}}


class GuestHelpers(RoomTestCase):
    async def guest(self, **body: Any) -> User:
        r = await self.request("POST", f"{REGISTER}?kind=guest", body)
        assert r.code == 200, r
        return User(r.json["user_id"], r.json["access_token"], r.json["device_id"])

    async def open_room(self, owner: User, guest_access: str = "can_join") -> str:
        return await self.create_room(
            owner,
            preset="public_chat",
            initial_state=[
                {
                    "type": "m.room.guest_access",
                    "state_key": "",
                    "content": {"guest_access": guest_access},
                }
            ],
        )


@on_both_engines
class GuestRegistrationTests(GuestHelpers):
    config_overrides = GUESTS_ON

    async def test_guest_gets_a_session(self):
        guest = await self.guest(initial_device_display_name="phone")
        self.assertRegex(guest.user_id, r"^@[0-9]+:test\.heddle$")
        r = await self.request("GET", f"{API}/account/whoami", token=guest.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], guest.user_id)
        self.assertTrue(r.json["is_guest"])
        account = await self.hs.accounts.get_account(guest.user_id)
        assert account is not None
        self.assertTrue(account.is_guest)
        self.assertIsNone(account.password_hash)

    async def test_guest_without_open_registration(self):
        await self.start_server(registration={"enabled": False, "allow_guest_access": True})
        await self.guest()

    async def test_unknown_kind(self):
        r = await self.request("POST", f"{REGISTER}?kind=robot", {})
        self.assertError(r, 400, "M_INVALID_PARAM")


@on_both_engines
class GuestRegistrationDisabledTests(GuestHelpers):
    async def test_disabled_by_default(self):
        r = await self.request("POST", f"{REGISTER}?kind=guest", {})
        self.assertError(r, 403, "M_GUEST_ACCESS_FORBIDDEN")


@on_both_engines
class GuestEndpointTests(GuestHelpers):
    config_overrides = GUESTS_ON

    async def test_forbidden_endpoints(self):
        guest = await self.guest()
        alice = await self.user("alice")
        room_id = await self.open_room(alice)
        forbidden = [
            ("POST", f"{API}/createRoom", {}),
            ("GET", f"{API}/joined_rooms", None),
            ("GET", f"{API}/pushrules/", None),
            ("POST", f"{API}/rooms/{q(room_id)}/invite", {"user_id": alice.user_id}),
            ("PUT", f"{API}/profile/{q(guest.user_id)}/avatar_url", {"avatar_url": "mxc://a/b"}),
            ("DELETE", f"{API}/profile/{q(guest.user_id)}/avatar_url", {}),
            ("POST", f"{API}/account/password", {"new_password": "x" * 12}),
            ("GET", f"{API}/capabilities", None),
            ("DELETE", f"{API}/devices/{q(guest.device_id)}", {}),
            ("PUT", f"{API}/user/{q(guest.user_id)}/account_data/m.x", {}),
            ("POST", "/_matrix/client/v1/login/get_token", {}),
        ]
        for method, path, body in forbidden:
            r = await self.request(method, path, body, token=guest.token)
            self.assertError(r, 403, "M_GUEST_ACCESS_FORBIDDEN")

    async def test_allowed_endpoints(self):
        guest = await self.guest()
        alice = await self.user("alice")
        room_id = await self.open_room(alice)
        r = await self.membership_action(guest, room_id, "join")
        self.assertEqual(r.code, 200, r)
        r = await self.send(guest, room_id)
        self.assertEqual(r.code, 200, r)
        event_id = r.json["event_id"]
        allowed = [
            ("GET", f"{API}/sync?timeout=0", None),
            ("GET", f"{API}/events?timeout=0&room_id={q(room_id)}", None),
            ("GET", f"{API}/rooms/{q(room_id)}/initialSync", None),
            ("GET", f"{API}/rooms/{q(room_id)}/state", None),
            ("GET", f"{API}/rooms/{q(room_id)}/state/m.room.create/", None),
            ("GET", f"{API}/rooms/{q(room_id)}/messages?dir=b", None),
            ("GET", f"{API}/rooms/{q(room_id)}/members", None),
            ("GET", f"{API}/rooms/{q(room_id)}/event/{q(event_id)}", None),
            ("GET", f"{API}/rooms/{q(room_id)}/context/{q(event_id)}", None),
            ("PUT", f"{API}/profile/{q(guest.user_id)}/displayname", {"displayname": "G"}),
            ("DELETE", f"{API}/profile/{q(guest.user_id)}/displayname", {}),
            ("GET", f"{API}/devices", None),
            ("GET", f"{API}/devices/{q(guest.device_id)}", None),
            ("PUT", f"{API}/devices/{q(guest.device_id)}", {"display_name": "x"}),
            ("POST", f"{API}/keys/query", {"device_keys": {}}),
            ("POST", f"{API}/keys/upload", {}),
            ("POST", f"{API}/keys/claim", {"one_time_keys": {}}),
            ("PUT", f"{API}/sendToDevice/m.x/t1", {"messages": {}}),
            ("PUT", f"{API}/rooms/{q(room_id)}/state/m.room.topic/", {"topic": "t"}),
            ("POST", f"{API}/rooms/{q(room_id)}/leave", {}),
        ]
        for method, path, body in allowed:
            r = await self.request(method, path, body, token=guest.token)
            # Some are refused by the room's rules (a guest's power level), never for being
            # a guest.
            if isinstance(r.json, dict):
                self.assertNotEqual(r.json.get("errcode"), "M_GUEST_ACCESS_FORBIDDEN", (path, r))
            self.assertIn(r.code, (200, 403), (path, r))

    async def test_media_through_the_authenticated_endpoints(self):
        # Spec v1.12: guests may download and thumbnail from /_matrix/client/v1/media.
        guest = await self.guest()
        alice = await self.user("alice")
        image = _png(40, 40)
        r = await self.request(
            "POST", "/_matrix/media/v3/upload", raw=image, token=alice.token,
            headers={"Content-Type": "image/png"},
        )
        self.assertEqual(r.code, 200, r)
        server_media = r.json["content_uri"][len("mxc://"):]
        media = "/_matrix/client/v1/media"
        r = await self.request("GET", f"{media}/download/{server_media}", token=guest.token)
        self.assertEqual((r.code, r.body), (200, image), r)
        r = await self.request(
            "GET", f"{media}/thumbnail/{server_media}?width=10&height=10", token=guest.token
        )
        self.assertEqual((r.code, r.header("Content-Type")), (200, "image/png"), r)


@on_both_engines
class GuestJoinTests(GuestHelpers):
    config_overrides = GUESTS_ON

    async def test_can_join_room(self):
        alice = await self.user("alice")
        guest = await self.guest()
        room_id = await self.open_room(alice)
        r = await self.join(guest, room_id)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership_of(room_id, guest), "join")

    async def test_guests_leave_when_guest_access_is_revoked(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        guest = await self.guest()
        room_id = await self.open_room(alice)
        self.assertEqual((await self.join(guest, room_id)).code, 200)
        self.assertEqual((await self.join(bob, room_id)).code, 200)
        r = await self.put_state(
            alice, room_id, "m.room.guest_access", {"guest_access": "forbidden"}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership_of(room_id, guest), "leave")
        self.assertEqual(await self.membership_of(room_id, bob), "join")
        r = await self.join(guest, room_id)
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_forbidden_room_refuses_guest(self):
        alice = await self.user("alice")
        guest = await self.guest()
        room_id = await self.open_room(alice, guest_access="forbidden")
        r = await self.membership_action(guest, room_id, "join")
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertIsNone(await self.membership_of(room_id, guest))

    async def test_room_without_guest_access_refuses_guest(self):
        alice = await self.user("alice")
        guest = await self.guest()
        # public_chat sets m.room.guest_access to forbidden; a plain room has none at all.
        room_id = await self.create_room(alice, preset="public_chat")
        r = await self.join(guest, room_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        await self.put_state(alice, room_id, "m.room.guest_access", {})
        r = await self.join(guest, room_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        # A full account joins the same room.
        bob = await self.user("bob")
        r = await self.join(bob, room_id)
        self.assertEqual(r.code, 200, r)


@on_both_engines
class GuestUpgradeTests(GuestHelpers):
    config_overrides = GUESTS_ON

    async def upgrade(self, guest: User, **extra: Any) -> Any:
        localpart = guest.user_id[1:].split(":")[0]
        body = {
            "username": localpart,
            "password": PASSWORD,
            "guest_access_token": guest.token,
            "auth": {"type": "m.login.dummy"},
            **extra,
        }
        return await self.request("POST", REGISTER, body)

    async def test_guest_becomes_a_full_account(self):
        guest = await self.guest()
        r = await self.upgrade(guest)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], guest.user_id)
        new_token = r.json["access_token"]
        # The new session and the guest's own are now a full account's.
        for token in (new_token, guest.token):
            r = await self.request("GET", f"{API}/account/whoami", token=token)
            self.assertFalse(r.json["is_guest"])
            r = await self.request("GET", f"{API}/joined_rooms", token=token)
            self.assertEqual(r.code, 200, r)
        # It logs in with the password it chose.
        session = await self.login(guest.user_id)
        self.assertEqual(session["user_id"], guest.user_id)
        # And cannot be upgraded twice.
        r = await self.upgrade(guest)
        self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_username_must_be_the_guests_own(self):
        guest = await self.guest()
        r = await self.upgrade(guest, username="someoneelse")
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request(
            "POST",
            REGISTER,
            {
                "password": PASSWORD,
                "guest_access_token": guest.token,
                "auth": {"type": "m.login.dummy"},
            },
        )
        self.assertError(r, 400, "M_MISSING_PARAM")

    async def test_only_a_guests_token_upgrades(self):
        alice = await self.user("alice")
        r = await self.request(
            "POST",
            REGISTER,
            {
                "username": "alice",
                "password": PASSWORD,
                "guest_access_token": alice.token,
                "auth": {"type": "m.login.dummy"},
            },
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.upgrade(User("@123:test.heddle", "not-a-token", "D"))
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")
