"""Profiles: display name and avatar URL of local users.

Spec: api/client-server/profile.yaml; client-server API "Profiles".
"""

from __future__ import annotations

from urllib.parse import quote

from nio import (
    AsyncClient,
    LoginResponse,
    ProfileGetAvatarResponse,
    ProfileGetDisplayNameResponse,
    ProfileGetResponse,
    ProfileSetAvatarResponse,
    ProfileSetDisplayNameError,
    ProfileSetDisplayNameResponse,
)

from tests.harness import HomeserverTestCase, nio, on_both_engines

PASSWORD = "correct horse battery"
ALICE = "@alice:test.heddle"
BOB = "@bob:test.heddle"
AVATAR = "mxc://test.heddle/AbCdEf123"


def profile_path(user_id: str, field: str | None = None) -> str:
    path = f"/_matrix/client/v3/profile/{quote(user_id, safe='@:')}"
    return f"{path}/{field}" if field else path


@on_both_engines
class ProfileTests(HomeserverTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]

    async def put(self, user_id: str, field: str, body: object, token: str | None = None):
        return await self.request(
            "PUT", profile_path(user_id, field), body, token=self.alice if token is None else token
        )

    async def test_nio_profile(self):
        client = AsyncClient(self.base_url, ALICE)
        self.addCleanup(lambda: nio(client.close()))
        self.assertIsInstance(await nio(client.login(PASSWORD)), LoginResponse)

        resp = await nio(client.set_displayname("Alice Wonderland"))
        self.assertIsInstance(resp, ProfileSetDisplayNameResponse)
        got = await nio(client.get_displayname())
        self.assertIsInstance(got, ProfileGetDisplayNameResponse)
        self.assertEqual(got.displayname, "Alice Wonderland")

        resp = await nio(client.set_avatar(AVATAR))
        self.assertIsInstance(resp, ProfileSetAvatarResponse)
        avatar = await nio(client.get_avatar())
        self.assertIsInstance(avatar, ProfileGetAvatarResponse)
        self.assertEqual(avatar.avatar_url, AVATAR)

        profile = await nio(client.get_profile())
        self.assertIsInstance(profile, ProfileGetResponse)
        self.assertEqual((profile.displayname, profile.avatar_url), ("Alice Wonderland", AVATAR))

        # Someone else sees the same.
        other = await nio(client.get_displayname(BOB))
        self.assertEqual(other.displayname, "bob")

    async def test_nio_set_displayname_too_long(self):
        client = AsyncClient(self.base_url, ALICE)
        self.addCleanup(lambda: nio(client.close()))
        self.assertIsInstance(await nio(client.login(PASSWORD)), LoginResponse)
        resp = await nio(client.set_displayname("x" * 257))
        self.assertIsInstance(resp, ProfileSetDisplayNameError)
        self.assertEqual(resp.status_code, "M_TOO_LARGE")

    async def test_default_profile(self):
        # Registration sets the display name to the localpart; there is no avatar.
        r = await self.request("GET", profile_path(ALICE))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"displayname": "alice"})
        r = await self.request("GET", profile_path(ALICE, "displayname"))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"displayname": "alice"})
        # "There is no profile field with this key for this user": 404.
        r = await self.request("GET", profile_path(ALICE, "avatar_url"))
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_set_displayname_and_avatar(self):
        r = await self.put(ALICE, "displayname", {"displayname": "Alice 🐇 Liddell"})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})
        r = await self.put(ALICE, "avatar_url", {"avatar_url": AVATAR})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})
        r = await self.request("GET", profile_path(ALICE, "displayname"))
        self.assertEqual(r.json, {"displayname": "Alice 🐇 Liddell"})
        r = await self.request("GET", profile_path(ALICE, "avatar_url"))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"avatar_url": AVATAR})
        r = await self.request("GET", profile_path(ALICE))
        self.assertEqual(r.json, {"displayname": "Alice 🐇 Liddell", "avatar_url": AVATAR})
        # Reading needs no access token, and is the same with one.
        r = await self.request("GET", profile_path(ALICE), token=self.bob)
        self.assertEqual(r.json, {"displayname": "Alice 🐇 Liddell", "avatar_url": AVATAR})
        # Bob's profile is untouched.
        r = await self.request("GET", profile_path(BOB))
        self.assertEqual(r.json, {"displayname": "bob"})

    async def test_escaped_user_id_in_path(self):
        r = await self.request(
            "GET", "/_matrix/client/v3/profile/%40alice%3Atest.heddle/displayname"
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"displayname": "alice"})
        r = await self.request(
            "PUT",
            "/_matrix/client/v3/profile/%40alice%3Atest.heddle/displayname",
            {"displayname": "Escaped"},
            token=self.alice,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", profile_path(ALICE, "displayname"))
        self.assertEqual(r.json, {"displayname": "Escaped"})

    async def test_empty_displayname_clears_it(self):
        r = await self.put(ALICE, "displayname", {"displayname": ""})
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", profile_path(ALICE, "displayname"))
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.request("GET", profile_path(ALICE))
        self.assertEqual(r.json, {})

    async def test_cannot_set_another_users_profile(self):
        for field, value in (("displayname", "Mallory"), ("avatar_url", AVATAR)):
            r = await self.put(BOB, field, {field: value})
            self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("GET", profile_path(BOB))
        self.assertEqual(r.json, {"displayname": "bob"})
        # Nor of a user that does not exist, nor of a remote user.
        r = await self.put("@nobody:test.heddle", "displayname", {"displayname": "x"})
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.put("@alice:elsewhere.example", "displayname", {"displayname": "x"})
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_setting_needs_access_token(self):
        r = await self.request("PUT", profile_path(ALICE, "displayname"), {"displayname": "x"})
        self.assertError(r, 401, "M_MISSING_TOKEN")
        r = await self.request(
            "PUT", profile_path(ALICE, "avatar_url"), {"avatar_url": AVATAR}, token="bogus"
        )
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        r = await self.request("GET", profile_path(ALICE))
        self.assertEqual(r.json, {"displayname": "alice"})

    async def test_unknown_user(self):
        for path in (
            profile_path("@nobody:test.heddle"),
            profile_path("@nobody:test.heddle", "displayname"),
            profile_path("@nobody:test.heddle", "avatar_url"),
        ):
            r = await self.request("GET", path)
            self.assertError(r, 404, "M_NOT_FOUND")

    async def test_invalid_user_id(self):
        for bad in ("alice", "@alice", "@:test.heddle", "@alice:bad_server!"):
            r = await self.request("GET", profile_path(bad))
            self.assertError(r, 400, "M_INVALID_PARAM")
            r = await self.request("GET", profile_path(bad, "displayname"))
            self.assertError(r, 400, "M_INVALID_PARAM")
            r = await self.put(bad, "displayname", {"displayname": "x"})
            self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_wrong_types(self):
        for value in (42, ["Alice"], {"name": "Alice"}, True):
            r = await self.put(ALICE, "displayname", {"displayname": value})
            self.assertError(r, 400, "M_BAD_JSON")
            r = await self.put(ALICE, "avatar_url", {"avatar_url": value})
            self.assertError(r, 400, "M_BAD_JSON")
        r = await self.put(ALICE, "displayname", ["displayname"])
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request(
            "PUT", profile_path(ALICE, "displayname"), raw=b"{displayname", token=self.alice
        )
        self.assertError(r, 400, "M_NOT_JSON")
        r = await self.request("GET", profile_path(ALICE))
        self.assertEqual(r.json, {"displayname": "alice"})

    async def test_missing_field(self):
        r = await self.put(ALICE, "displayname", {})
        self.assertError(r, 400, "M_MISSING_PARAM")
        r = await self.put(ALICE, "avatar_url", {"displayname": "wrong key"})
        self.assertError(r, 400, "M_MISSING_PARAM")
        r = await self.request("GET", profile_path(ALICE))
        self.assertEqual(r.json, {"displayname": "alice"})

    async def test_too_long(self):
        r = await self.put(ALICE, "displayname", {"displayname": "x" * 257})
        self.assertError(r, 400, "M_TOO_LARGE")
        r = await self.put(ALICE, "avatar_url", {"avatar_url": "mxc://test.heddle/" + "x" * 1000})
        self.assertError(r, 400, "M_TOO_LARGE")
        r = await self.request("GET", profile_path(ALICE))
        self.assertEqual(r.json, {"displayname": "alice"})
        # The limits themselves are fine.
        r = await self.put(ALICE, "displayname", {"displayname": "x" * 256})
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", profile_path(ALICE, "displayname"))
        self.assertEqual(r.json, {"displayname": "x" * 256})

    async def test_nul_characters_refused(self):
        """PostgreSQL cannot store NUL in text; both engines refuse it with a 400, not a 500."""
        r = await self.put(ALICE, "displayname", {"displayname": "Al\u0000ice"})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.put(ALICE, "avatar_url", {"avatar_url": "mxc://test.heddle/a\u0000"})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", "/_matrix/client/v3/profile/@al%00ice:test.heddle")
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", profile_path(ALICE))
        self.assertEqual(r.json, {"displayname": "alice"})
