"""Account management: whoami, password change, deactivation, third-party identifiers.

Spec: api/client-server/whoami.yaml, password_management.yaml, account_deactivation.yaml,
administrative_contact.yaml; client-server API "User-Interactive Authentication API".
"""

from __future__ import annotations

from typing import Any

from nio import AsyncClient, LoginResponse, WhoamiResponse

from tests.harness import (
    PASSWORD,
    HomeserverTestCase,
    Response,
    nio,
    on_both_engines,
    password_auth,
)

NEW_PASSWORD = "battery staple horse"
ALICE = "@alice:test.heddle"
WHOAMI = "/_matrix/client/v3/account/whoami"
CHANGE_PASSWORD = "/_matrix/client/v3/account/password"
DEACTIVATE = "/_matrix/client/v3/account/deactivate"
DEVICES = "/_matrix/client/v3/devices"
REFRESH = "/_matrix/client/v3/refresh"


class AccountAssertions:
    def assertPasswordChallenge(self, r: Response, errcode: str | None = None) -> str:
        self.assertEqual(r.code, 401, r)
        self.assertEqual(r.json["flows"], [{"stages": ["m.login.password"]}])
        self.assertIsInstance(r.json["params"], dict)
        self.assertIsInstance(r.json["session"], str)
        if errcode is None:
            self.assertNotIn("errcode", r.json)
        else:
            self.assertEqual(r.json["errcode"], errcode)
            self.assertIsInstance(r.json["error"], str)
        return r.json["session"]

    async def assertWorks(self, token: str, device_id: str | None = None) -> None:
        r = await self.request("GET", WHOAMI, token=token)
        self.assertEqual(r.code, 200, r)
        if device_id is not None:
            self.assertEqual(r.json["device_id"], device_id)

    async def assertRevoked(self, token: str) -> None:
        body = self.assertError(
            await self.request("GET", WHOAMI, token=token), 401, "M_UNKNOWN_TOKEN"
        )
        self.assertIs(body.get("soft_logout", False), False)

    async def try_login(self, username: str, password: str) -> Response:
        return await self.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": username},
                "password": password,
            },
        )


@on_both_engines
class WhoamiTests(AccountAssertions, HomeserverTestCase):
    async def test_whoami(self):
        await self.register("alice", inhibit_login=True)
        session = await self.login("alice", device_id="MYDEVICE")
        r = await self.request("GET", WHOAMI, token=session["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"user_id": ALICE, "device_id": "MYDEVICE", "is_guest": False})

    async def test_whoami_after_register(self):
        body = await self.register("alice")
        r = await self.request("GET", WHOAMI, token=body["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], body["user_id"])
        self.assertEqual(r.json["device_id"], body["device_id"])
        self.assertIs(r.json["is_guest"], False)

    async def test_nio_whoami(self):
        await self.register("alice", inhibit_login=True)
        client = AsyncClient(self.base_url, ALICE)
        self.addCleanup(lambda: nio(client.close()))
        login = await nio(client.login(PASSWORD))
        self.assertIsInstance(login, LoginResponse)
        who = await nio(client.whoami())
        self.assertIsInstance(who, WhoamiResponse)
        self.assertEqual(
            (who.user_id, who.device_id, who.is_guest), (ALICE, login.device_id, False)
        )

    async def test_whoami_needs_token(self):
        self.assertError(await self.request("GET", WHOAMI), 401, "M_MISSING_TOKEN")
        r = await self.request("GET", WHOAMI, token="not-a-token")
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    async def test_threepids(self):
        session = await self.register("alice")
        r = await self.request(
            "GET", "/_matrix/client/v3/account/3pid", token=session["access_token"]
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"threepids": []})
        r = await self.request("GET", "/_matrix/client/v3/account/3pid")
        self.assertError(r, 401, "M_MISSING_TOKEN")


@on_both_engines
class PasswordChangeTests(AccountAssertions, HomeserverTestCase):
    async def setUp(self):
        await super().setUp()
        await self.register("alice", inhibit_login=True)

    async def change_password(self, token: str, **body: Any) -> Response:
        return await self.request("POST", CHANGE_PASSWORD, body, token=token)

    async def test_change_password_logs_out_other_devices(self):
        current = await self.login("alice", device_id="CURRENT", refresh_token=True)
        other = await self.login("alice", device_id="OTHER")
        other_refreshing = await self.login("alice", device_id="OTHER2", refresh_token=True)
        token = current["access_token"]

        session = self.assertPasswordChallenge(
            await self.change_password(token, new_password=NEW_PASSWORD)
        )
        r = await self.change_password(
            token, new_password=NEW_PASSWORD, auth=password_auth(password="wrong", session=session)
        )
        self.assertEqual(self.assertPasswordChallenge(r, errcode="M_FORBIDDEN"), session)
        # Nothing changed yet.
        await self.assertWorks(other["access_token"])
        self.assertEqual((await self.try_login("alice", NEW_PASSWORD)).code, 403)

        r = await self.change_password(
            token, new_password=NEW_PASSWORD, auth=password_auth(session=session)
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})

        # "The homeserver SHOULD NOT revoke the access token provided in the request."
        await self.assertWorks(token, "CURRENT")
        r = await self.request("POST", REFRESH, {"refresh_token": current["refresh_token"]})
        self.assertEqual(r.code, 200, r)
        # logout_devices defaults to true: every other device and its tokens are gone.
        await self.assertRevoked(other["access_token"])
        await self.assertRevoked(other_refreshing["access_token"])
        r = await self.request(
            "POST", REFRESH, {"refresh_token": other_refreshing["refresh_token"]}
        )
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        r = await self.request("GET", DEVICES, token=token)
        self.assertEqual([d["device_id"] for d in r.json["devices"]], ["CURRENT"])

        # The old password no longer logs in; the new one does.
        self.assertError(await self.try_login("alice", PASSWORD), 403, "M_FORBIDDEN")
        r = await self.try_login("alice", NEW_PASSWORD)
        self.assertEqual(r.code, 200, r)
        await self.assertWorks(r.json["access_token"])

    async def test_change_password_keeping_devices(self):
        current = await self.login("alice", device_id="CURRENT")
        other = await self.login("alice", device_id="OTHER")
        r = await self.change_password(
            current["access_token"],
            new_password=NEW_PASSWORD,
            logout_devices=False,
            auth=password_auth(),
        )
        self.assertEqual(r.code, 200, r)
        await self.assertWorks(current["access_token"], "CURRENT")
        await self.assertWorks(other["access_token"], "OTHER")
        r = await self.request("GET", DEVICES, token=current["access_token"])
        self.assertEqual(sorted(d["device_id"] for d in r.json["devices"]), ["CURRENT", "OTHER"])
        self.assertError(await self.try_login("alice", PASSWORD), 403, "M_FORBIDDEN")
        self.assertEqual((await self.try_login("alice", NEW_PASSWORD)).code, 200)

    async def test_explicit_logout_devices_true(self):
        current = await self.login("alice", device_id="CURRENT")
        other = await self.login("alice", device_id="OTHER")
        r = await self.change_password(
            current["access_token"],
            new_password=NEW_PASSWORD,
            logout_devices=True,
            auth=password_auth(),
        )
        self.assertEqual(r.code, 200, r)
        await self.assertRevoked(other["access_token"])
        await self.assertWorks(current["access_token"])

    async def test_weak_password_refused_after_auth(self):
        current = await self.login("alice")
        token = current["access_token"]
        session = self.assertPasswordChallenge(
            await self.change_password(token, new_password="short")
        )
        r = await self.change_password(
            token, new_password="short", auth=password_auth(session=session)
        )
        self.assertError(r, 400, "M_WEAK_PASSWORD")
        self.assertEqual((await self.try_login("alice", PASSWORD)).code, 200)
        # The completed session may be used to retry with a better password.
        r = await self.change_password(token, new_password=NEW_PASSWORD, auth={"session": session})
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.try_login("alice", NEW_PASSWORD)).code, 200)

    async def test_uia_for_another_account_is_forbidden(self):
        await self.register("bob", "bobs password", inhibit_login=True)
        current = await self.login("alice")
        r = await self.change_password(
            current["access_token"],
            new_password=NEW_PASSWORD,
            auth=password_auth(user="bob", password="bobs password"),
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertEqual((await self.try_login("alice", PASSWORD)).code, 200)
        self.assertEqual((await self.try_login("bob", "bobs password")).code, 200)

    async def test_session_from_another_endpoint_is_refused(self):
        current = await self.login("alice")
        token = current["access_token"]
        r = await self.request("POST", DEACTIVATE, {}, token=token)
        session = self.assertPasswordChallenge(r)
        r = await self.change_password(
            token, new_password=NEW_PASSWORD, auth=password_auth(session=session)
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertEqual((await self.try_login("alice", PASSWORD)).code, 200)

    async def test_bad_body(self):
        current = await self.login("alice")
        token = current["access_token"]
        for bad in (
            {},
            {"new_password": 12345678},
            {"new_password": None},
            {"new_password": NEW_PASSWORD, "logout_devices": "false"},
            {"new_password": NEW_PASSWORD, "auth": "password"},
        ):
            r = await self.request("POST", CHANGE_PASSWORD, {**bad}, token=token)
            self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("POST", CHANGE_PASSWORD, raw=b"[", token=token)
        self.assertError(r, 400, "M_NOT_JSON")
        self.assertEqual((await self.try_login("alice", PASSWORD)).code, 200)

    async def test_needs_access_token(self):
        r = await self.request(
            "POST", CHANGE_PASSWORD, {"new_password": NEW_PASSWORD, "auth": password_auth()}
        )
        self.assertError(r, 401, "M_MISSING_TOKEN")
        self.assertEqual((await self.try_login("alice", PASSWORD)).code, 200)


@on_both_engines
class DeactivationTests(AccountAssertions, HomeserverTestCase):
    async def setUp(self):
        await super().setUp()
        await self.register("alice", inhibit_login=True)

    async def set_profile(self, token: str) -> None:
        for field, value in (("displayname", "Alice A."), ("avatar_url", "mxc://test.heddle/abc")):
            r = await self.request(
                "PUT", f"/_matrix/client/v3/profile/{ALICE}/{field}", {field: value}, token=token
            )
            self.assertEqual(r.code, 200, r)

    async def test_deactivate(self):
        current = await self.login("alice", device_id="CURRENT")
        other = await self.login("alice", device_id="OTHER", refresh_token=True)
        token = current["access_token"]
        await self.set_profile(token)

        session = self.assertPasswordChallenge(
            await self.request("POST", DEACTIVATE, {}, token=token)
        )
        r = await self.request(
            "POST",
            DEACTIVATE,
            {"auth": password_auth(password="wrong", session=session)},
            token=token,
        )
        self.assertEqual(self.assertPasswordChallenge(r, errcode="M_FORBIDDEN"), session)
        # The failed stage's 401 still lists the stages done so far (none), as the spec's
        # example and Synapse do (SyTest's "Can't deactivate account with wrong password").
        self.assertEqual(r.json["completed"], [])
        await self.assertWorks(token)

        r = await self.request(
            "POST", DEACTIVATE, {"auth": password_auth(session=session)}, token=token
        )
        self.assertEqual(r.code, 200, r)
        # Nothing was bound at an identity server, so nothing needed unbinding.
        self.assertEqual(r.json, {"id_server_unbind_result": "success"})

        # Every token is revoked, refresh tokens included.
        await self.assertRevoked(token)
        await self.assertRevoked(other["access_token"])
        r = await self.request("POST", REFRESH, {"refresh_token": other["refresh_token"]})
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        # No more logins, with the old password or any other.
        for password in (PASSWORD, ""):
            r = await self.try_login("alice", password)
            self.assertEqual(r.code, 403, r)
            self.assertIn(r.json["errcode"], ("M_FORBIDDEN", "M_USER_DEACTIVATED"))
        # The user ID is never handed out again.
        r = await self.request(
            "POST",
            "/_matrix/client/v3/register",
            {"username": "alice", "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
        )
        self.assertError(r, 400, "M_USER_IN_USE")
        r = await self.request("GET", "/_matrix/client/v3/register/available?username=alice")
        self.assertError(r, 400, "M_USER_IN_USE")
        # The account still exists, marked deactivated.
        account = await self.hs.accounts.get_account(ALICE)
        self.assertIsNotNone(account)
        self.assertTrue(account.deactivated)
        # Without `erase`, the profile is kept.
        r = await self.request("GET", f"/_matrix/client/v3/profile/{ALICE}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"displayname": "Alice A.", "avatar_url": "mxc://test.heddle/abc"})

    async def test_deactivate_with_erase(self):
        current = await self.login("alice")
        token = current["access_token"]
        await self.set_profile(token)
        r = await self.request(
            "POST", DEACTIVATE, {"erase": True, "auth": password_auth()}, token=token
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["id_server_unbind_result"], "success")
        await self.assertRevoked(token)
        r = await self.request("GET", f"/_matrix/client/v3/profile/{ALICE}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})
        for field in ("displayname", "avatar_url"):
            r = await self.request("GET", f"/_matrix/client/v3/profile/{ALICE}/{field}")
            self.assertError(r, 404, "M_NOT_FOUND")

    async def test_deactivate_does_not_touch_other_users(self):
        await self.register("bob", inhibit_login=True)
        bob = await self.login("bob")
        alice = await self.login("alice")
        r = await self.request(
            "POST", DEACTIVATE, {"auth": password_auth()}, token=alice["access_token"]
        )
        self.assertEqual(r.code, 200, r)
        await self.assertWorks(bob["access_token"])
        self.assertEqual((await self.try_login("bob", PASSWORD)).code, 200)

    async def test_deactivate_leaves_rooms_and_declines_invites(self):
        """As Synapse does (the spec leaves it to the server): a deactivated user's rooms
        see them leave, and the invites they held are declined."""
        await self.register("bob", inhibit_login=True)
        bob = (await self.login("bob"))["access_token"]
        alice = (await self.login("alice"))["access_token"]
        rooms = "/_matrix/client/v3/createRoom"
        joined = (await self.request("POST", rooms, {"preset": "public_chat"}, token=bob)).json
        invited = (await self.request("POST", rooms, {"invite": [ALICE]}, token=bob)).json
        r = await self.request("POST", f"/_matrix/client/v3/join/{joined['room_id']}", {}, token=alice)
        self.assertEqual(r.code, 200, r)
        r = await self.request("POST", DEACTIVATE, {"auth": password_auth()}, token=alice)
        self.assertEqual(r.code, 200, r)
        for room in (joined, invited):
            r = await self.request(
                "GET",
                f"/_matrix/client/v3/rooms/{room['room_id']}/state/m.room.member/{ALICE}",
                token=bob,
            )
            self.assertEqual(r.code, 200, r)
            self.assertEqual(r.json["membership"], "leave")

    async def test_deactivate_needs_own_password(self):
        await self.register("bob", "bobs password", inhibit_login=True)
        alice = await self.login("alice")
        r = await self.request(
            "POST",
            DEACTIVATE,
            {"auth": password_auth(user="bob", password="bobs password")},
            token=alice["access_token"],
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        await self.assertWorks(alice["access_token"])
        account = await self.hs.accounts.get_account("@bob:test.heddle")
        self.assertFalse(account.deactivated)

    async def test_deactivate_bad_body(self):
        alice = await self.login("alice")
        token = alice["access_token"]
        auth = password_auth()
        for bad in (
            {"erase": "yes", "auth": auth},
            {"erase": 1, "auth": auth},
            {"id_server": 5, "auth": auth},
            {"auth": []},
        ):
            r = await self.request("POST", DEACTIVATE, bad, token=token)
            self.assertError(r, 400, "M_BAD_JSON")
        await self.assertWorks(token)
        account = await self.hs.accounts.get_account(ALICE)
        self.assertFalse(account.deactivated)

    async def test_deactivate_needs_access_token(self):
        r = await self.request("POST", DEACTIVATE, {"auth": password_auth()})
        self.assertError(r, 401, "M_MISSING_TOKEN")
        self.assertEqual((await self.try_login("alice", PASSWORD)).code, 200)
