"""Device management: listing, renaming and deleting devices (with user-interactive auth).

Spec: api/client-server/device_management.yaml; client-server API "User-Interactive
Authentication API" and "Relationship between access tokens and devices".
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from nio import (
    AsyncClient,
    DeleteDevicesAuthResponse,
    DeleteDevicesResponse,
    DevicesResponse,
    LoginResponse,
    UpdateDeviceResponse,
)

from tests.harness import (
    PASSWORD,
    HomeserverTestCase,
    Response,
    nio,
    on_both_engines,
    password_auth,
)

ALICE = "@alice:test.heddle"
DEVICES = "/_matrix/client/v3/devices"
DELETE_DEVICES = "/_matrix/client/v3/delete_devices"
WHOAMI = "/_matrix/client/v3/account/whoami"


class DeviceAssertions:
    def assertPasswordChallenge(self, r: Response, errcode: str | None = None) -> str:
        """A UIA 401 offering the one m.login.password flow; returns the session ID."""
        self.assertEqual(r.code, 401, r)
        body = r.json
        self.assertEqual(body["flows"], [{"stages": ["m.login.password"]}])
        self.assertIsInstance(body["params"], dict)
        self.assertIsInstance(body["session"], str)
        self.assertTrue(body["session"])
        if errcode is None:
            self.assertNotIn("errcode", body)
        else:
            self.assertEqual(body["errcode"], errcode)
            self.assertIsInstance(body["error"], str)
        return body["session"]

    async def device_ids(self, token: str) -> list[str]:
        r = await self.request("GET", DEVICES, token=token)
        self.assertEqual(r.code, 200, r)
        return sorted(d["device_id"] for d in r.json["devices"])

    async def assertRevoked(self, token: str) -> None:
        r = await self.request("GET", WHOAMI, token=token)
        body = self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        self.assertIs(body.get("soft_logout", False), False)

    async def assertWorks(self, token: str) -> None:
        r = await self.request("GET", WHOAMI, token=token)
        self.assertEqual(r.code, 200, r)


@on_both_engines
class DeviceTests(DeviceAssertions, HomeserverTestCase):
    async def setUp(self):
        await super().setUp()
        await self.register("alice", inhibit_login=True)

    # ----- matrix-nio -------------------------------------------------------------------

    async def test_nio_list_rename_delete(self):
        client = AsyncClient(self.base_url, ALICE)
        self.addCleanup(lambda: nio(client.close()))
        login = await nio(client.login(PASSWORD, device_name="nio laptop"))
        self.assertIsInstance(login, LoginResponse)
        other = await self.login("alice", initial_device_display_name="old phone")

        devices = await nio(client.devices())
        self.assertIsInstance(devices, DevicesResponse)
        by_id = {d.id: d for d in devices.devices}
        self.assertEqual(set(by_id), {login.device_id, other["device_id"]})
        self.assertEqual(by_id[login.device_id].display_name, "nio laptop")
        self.assertEqual(by_id[other["device_id"]].display_name, "old phone")
        # The listing request itself was this device's activity.
        self.assertEqual(by_id[login.device_id].last_seen_ip, "127.0.0.1")
        self.assertIsNotNone(by_id[login.device_id].last_seen_date)

        renamed = await nio(client.update_device(other["device_id"], {"display_name": "new phone"}))
        self.assertIsInstance(renamed, UpdateDeviceResponse)
        devices = await nio(client.devices())
        self.assertEqual(
            {d.id: d.display_name for d in devices.devices}[other["device_id"]], "new phone"
        )

        # Without auth: the UIA challenge.
        challenge = await nio(client.delete_devices([other["device_id"]]))
        self.assertIsInstance(challenge, DeleteDevicesAuthResponse)
        self.assertEqual(challenge.flows, [{"stages": ["m.login.password"]}])
        # nio's documented auth dict uses the deprecated top-level `user`.
        auth = {
            "type": "m.login.password",
            "user": "alice",
            "password": PASSWORD,
            "session": challenge.session,
        }
        deleted = await nio(client.delete_devices([other["device_id"]], auth=auth))
        self.assertIsInstance(deleted, DeleteDevicesResponse)
        await self.assertRevoked(other["access_token"])
        devices = await nio(client.devices())
        self.assertEqual([d.id for d in devices.devices], [login.device_id])

    async def test_nio_delete_devices_wrong_password(self):
        client = AsyncClient(self.base_url, ALICE)
        self.addCleanup(lambda: nio(client.close()))
        self.assertIsInstance(await nio(client.login(PASSWORD)), LoginResponse)
        other = await self.login("alice")
        auth = {"type": "m.login.password", "user": "alice", "password": "wrong password"}
        resp = await nio(client.delete_devices([other["device_id"]], auth=auth))
        self.assertIsInstance(resp, DeleteDevicesAuthResponse)
        await self.assertWorks(other["access_token"])

    # ----- listing and reading ------------------------------------------------------------

    async def test_list_devices(self):
        first = await self.login("alice", device_id="FIRST", initial_device_display_name="One")
        second = await self.login("alice", device_id="SECOND")
        r = await self.request("GET", DEVICES, token=first["access_token"])
        self.assertEqual(r.code, 200, r)
        devices = {d["device_id"]: d for d in r.json["devices"]}
        self.assertEqual(set(devices), {"FIRST", "SECOND"})
        self.assertEqual(devices["FIRST"]["display_name"], "One")
        # last_seen_* is recorded when a device makes an authenticated request.
        now = self.hs.clock.time_msec()
        self.assertEqual(devices["FIRST"]["last_seen_ip"], "127.0.0.1")
        self.assertIsInstance(devices["FIRST"]["last_seen_ts"], int)
        self.assertLessEqual(devices["FIRST"]["last_seen_ts"], now)
        self.assertGreater(devices["FIRST"]["last_seen_ts"], now - 60_000)
        self.assertIsNone(devices["SECOND"]["last_seen_ts"])
        await self.assertWorks(second["access_token"])
        r = await self.request("GET", f"{DEVICES}/SECOND", token=first["access_token"])
        self.assertEqual(r.json["last_seen_ip"], "127.0.0.1")
        self.assertIsInstance(r.json["last_seen_ts"], int)

    async def test_list_devices_only_own(self):
        await self.register("bob", inhibit_login=True)
        alice = await self.login("alice", device_id="ALICEDEV")
        bob = await self.login("bob", device_id="BOBDEV")
        self.assertEqual(await self.device_ids(alice["access_token"]), ["ALICEDEV"])
        self.assertEqual(await self.device_ids(bob["access_token"]), ["BOBDEV"])

    async def test_devices_require_token(self):
        self.assertError(await self.request("GET", DEVICES), 401, "M_MISSING_TOKEN")
        self.assertError(await self.request("GET", f"{DEVICES}/X"), 401, "M_MISSING_TOKEN")
        r = await self.request("PUT", f"{DEVICES}/X", {"display_name": "x"})
        self.assertError(r, 401, "M_MISSING_TOKEN")
        self.assertError(await self.request("DELETE", f"{DEVICES}/X", {}), 401, "M_MISSING_TOKEN")
        r = await self.request("POST", DELETE_DEVICES, {"devices": []})
        self.assertError(r, 401, "M_MISSING_TOKEN")
        r = await self.request("GET", DEVICES, token="nonsense")
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    async def test_get_device(self):
        session = await self.login("alice", device_id="DEV", initial_device_display_name="Laptop")
        r = await self.request("GET", f"{DEVICES}/DEV", token=session["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["device_id"], "DEV")
        self.assertEqual(r.json["display_name"], "Laptop")
        self.assertEqual(r.json["last_seen_ip"], "127.0.0.1")

    async def test_get_unknown_device(self):
        await self.register("bob", inhibit_login=True)
        await self.login("bob", device_id="BOBDEV")
        session = await self.login("alice")
        r = await self.request("GET", f"{DEVICES}/NOSUCHDEVICE", token=session["access_token"])
        self.assertError(r, 404, "M_NOT_FOUND")
        # Another user's device is not one of ours either.
        r = await self.request("GET", f"{DEVICES}/BOBDEV", token=session["access_token"])
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_device_id_needing_url_escaping(self):
        device_id = "my phone/1?#%"
        session = await self.login("alice", device_id=device_id)
        self.assertEqual(session["device_id"], device_id)
        path = f"{DEVICES}/{quote(device_id, safe='')}"
        r = await self.request("GET", path, token=session["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["device_id"], device_id)
        r = await self.request(
            "PUT", path, {"display_name": "renamed"}, token=session["access_token"]
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", path, token=session["access_token"])
        self.assertEqual(r.json["display_name"], "renamed")

    # ----- renaming -----------------------------------------------------------------------

    async def test_rename_device(self):
        session = await self.login("alice", device_id="DEV", initial_device_display_name="Before")
        token = session["access_token"]
        r = await self.request("PUT", f"{DEVICES}/DEV", {"display_name": "After"}, token=token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})
        r = await self.request("GET", f"{DEVICES}/DEV", token=token)
        self.assertEqual(r.json["display_name"], "After")
        # Without display_name nothing changes.
        r = await self.request("PUT", f"{DEVICES}/DEV", {}, token=token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{DEVICES}/DEV", token=token)
        self.assertEqual(r.json["display_name"], "After")
        # Unicode survives the round trip.
        r = await self.request(
            "PUT", f"{DEVICES}/DEV", {"display_name": "Téléphone 📱"}, token=token
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{DEVICES}/DEV", token=token)
        self.assertEqual(r.json["display_name"], "Téléphone 📱")

    async def test_rename_another_device_of_mine(self):
        mine = await self.login("alice", device_id="MINE")
        await self.login("alice", device_id="OTHER")
        r = await self.request(
            "PUT", f"{DEVICES}/OTHER", {"display_name": "Renamed"}, token=mine["access_token"]
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{DEVICES}/OTHER", token=mine["access_token"])
        self.assertEqual(r.json["display_name"], "Renamed")

    async def test_rename_unknown_device(self):
        await self.register("bob", inhibit_login=True)
        await self.login("bob", device_id="BOBDEV", initial_device_display_name="Bob's")
        session = await self.login("alice")
        token = session["access_token"]
        r = await self.request("PUT", f"{DEVICES}/NOSUCH", {"display_name": "x"}, token=token)
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.request("PUT", f"{DEVICES}/NOSUCH", {}, token=token)
        self.assertError(r, 404, "M_NOT_FOUND")
        # Regular clients may not create devices this way.
        self.assertEqual(await self.device_ids(token), [session["device_id"]])
        # Nor rename someone else's.
        r = await self.request("PUT", f"{DEVICES}/BOBDEV", {"display_name": "pwned"}, token=token)
        self.assertError(r, 404, "M_NOT_FOUND")
        bob = await self.login("bob")
        r = await self.request("GET", f"{DEVICES}/BOBDEV", token=bob["access_token"])
        self.assertEqual(r.json["display_name"], "Bob's")

    async def test_rename_display_name_too_long(self):
        session = await self.login("alice", device_id="DEV", initial_device_display_name="Keep")
        token = session["access_token"]
        r = await self.request("PUT", f"{DEVICES}/DEV", {"display_name": "x" * 101}, token=token)
        body = self.assertError(r, 400, "M_TOO_LARGE")
        self.assertIn("100", body["error"])
        r = await self.request("GET", f"{DEVICES}/DEV", token=token)
        self.assertEqual(r.json["display_name"], "Keep")
        r = await self.request("PUT", f"{DEVICES}/DEV", {"display_name": "x" * 100}, token=token)
        self.assertEqual(r.code, 200, r)

    async def test_rename_bad_body(self):
        session = await self.login("alice", device_id="DEV", initial_device_display_name="Keep")
        token = session["access_token"]
        for bad in (
            {"display_name": 123},
            {"display_name": ["x"]},
            {"display_name": {"a": 1}},
            {"display_name": True},
        ):
            r = await self.request("PUT", f"{DEVICES}/DEV", bad, token=token)
            self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("PUT", f"{DEVICES}/DEV", ["display_name"], token=token)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("PUT", f"{DEVICES}/DEV", raw=b"{nope", token=token)
        self.assertError(r, 400, "M_NOT_JSON")
        r = await self.request("GET", f"{DEVICES}/DEV", token=token)
        self.assertEqual(r.json["display_name"], "Keep")

    async def test_nul_characters_refused(self):
        """PostgreSQL cannot store NUL in text; both engines refuse it with a 400, not a 500."""
        session = await self.login("alice", device_id="DEV", initial_device_display_name="Keep")
        token = session["access_token"]
        r = await self.request("PUT", f"{DEVICES}/DEV", {"display_name": "a\u0000b"}, token=token)
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", f"{DEVICES}/DEV%00", token=token)
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request(
            "POST", DELETE_DEVICES, {"devices": ["DEV\u0000"], "auth": password_auth()}, token=token
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": PASSWORD,
                "initial_device_display_name": "nul\u0000",
            },
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual(await self.device_ids(token), ["DEV"])
        r = await self.request("GET", f"{DEVICES}/DEV", token=token)
        self.assertEqual(r.json["display_name"], "Keep")

    async def test_initial_device_display_name_too_long_at_login(self):
        r = await self.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": PASSWORD,
                "initial_device_display_name": "x" * 101,
            },
        )
        self.assertError(r, 400, "M_TOO_LARGE")

    # ----- deleting one device --------------------------------------------------------------

    async def test_delete_device_with_uia(self):
        mine = await self.login("alice", device_id="MINE")
        doomed = await self.login("alice", device_id="DOOMED", refresh_token=True)
        token = mine["access_token"]
        await self.assertWorks(doomed["access_token"])

        # No body at all (older clients) and an empty body both get the challenge.
        self.assertPasswordChallenge(await self.request("DELETE", f"{DEVICES}/DOOMED", token=token))
        session = self.assertPasswordChallenge(
            await self.request("DELETE", f"{DEVICES}/DOOMED", {}, token=token)
        )
        # Wrong password: 401 again, same session, with M_FORBIDDEN in the UIA body.
        r = await self.request(
            "DELETE",
            f"{DEVICES}/DOOMED",
            {"auth": password_auth(password="wrong password", session=session)},
            token=token,
        )
        self.assertEqual(self.assertPasswordChallenge(r, errcode="M_FORBIDDEN"), session)
        self.assertEqual(r.json["completed"], [])
        await self.assertWorks(doomed["access_token"])

        r = await self.request(
            "DELETE", f"{DEVICES}/DOOMED", {"auth": password_auth(session=session)}, token=token
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})
        # The device and its access and refresh tokens are gone; ours is fine.
        await self.assertRevoked(doomed["access_token"])
        r = await self.request(
            "POST", "/_matrix/client/v3/refresh", {"refresh_token": doomed["refresh_token"]}
        )
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        r = await self.request("GET", f"{DEVICES}/DOOMED", token=token)
        self.assertError(r, 404, "M_NOT_FOUND")
        self.assertEqual(await self.device_ids(token), ["MINE"])
        await self.assertWorks(token)

    async def test_delete_device_without_session(self):
        # The first request may already carry the auth (as Complement's clients do).
        mine = await self.login("alice", device_id="MINE")
        await self.login("alice", device_id="DOOMED")
        r = await self.request(
            "DELETE", f"{DEVICES}/DOOMED", {"auth": password_auth()}, token=mine["access_token"]
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.device_ids(mine["access_token"]), ["MINE"])

    async def test_delete_current_device(self):
        mine = await self.login("alice", device_id="MINE")
        r = await self.request(
            "DELETE", f"{DEVICES}/MINE", {"auth": password_auth()}, token=mine["access_token"]
        )
        self.assertEqual(r.code, 200, r)
        await self.assertRevoked(mine["access_token"])

    async def test_delete_unknown_or_already_deleted_device(self):
        """200, "The device was successfully removed, or had been removed previously"."""
        mine = await self.login("alice", device_id="MINE")
        await self.login("alice", device_id="DOOMED")
        token = mine["access_token"]
        # Still user-interactive auth first: the request never succeeds without it.
        self.assertPasswordChallenge(
            await self.request("DELETE", f"{DEVICES}/NOSUCH", {}, token=token)
        )
        r = await self.request(
            "DELETE", f"{DEVICES}/NOSUCH", {"auth": password_auth()}, token=token
        )
        self.assertEqual(r.code, 200, r)
        for _ in range(2):
            r = await self.request(
                "DELETE", f"{DEVICES}/DOOMED", {"auth": password_auth()}, token=token
            )
            self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.device_ids(token), ["MINE"])

    async def test_delete_device_needs_own_credentials(self):
        """A password stage naming another account is 403, even with that account's password
        (Sytest/Complement: "requires UI auth user to match device owner")."""
        await self.register("bob", "bobs password", inhibit_login=True)
        mine = await self.login("alice", device_id="MINE")
        await self.login("alice", device_id="OTHER")
        token = mine["access_token"]
        for user in ("bob", "@bob:test.heddle"):
            r = await self.request(
                "DELETE",
                f"{DEVICES}/OTHER",
                {"auth": password_auth(user=user, password="bobs password")},
                token=token,
            )
            self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("GET", f"{DEVICES}/OTHER", token=token)
        self.assertEqual(r.code, 200, r)
        # Alice's own password still works afterwards.
        r = await self.request("DELETE", f"{DEVICES}/OTHER", {"auth": password_auth()}, token=token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{DEVICES}/OTHER", token=token)
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_cannot_delete_other_users_device(self):
        await self.register("bob", inhibit_login=True)
        bob = await self.login("bob", device_id="BOBDEV")
        alice = await self.login("alice")
        r = await self.request(
            "DELETE", f"{DEVICES}/BOBDEV", {"auth": password_auth()}, token=alice["access_token"]
        )
        # Answered as for a device Alice does not have; Bob's is untouched.
        self.assertEqual(r.code, 200, r)
        await self.assertWorks(bob["access_token"])
        self.assertEqual(await self.device_ids(bob["access_token"]), ["BOBDEV"])

    async def test_uia_session_bound_to_its_request(self):
        """A session started to delete one device cannot authorise deleting another."""
        mine = await self.login("alice", device_id="MINE")
        await self.login("alice", device_id="FIRST")
        second = await self.login("alice", device_id="SECOND")
        token = mine["access_token"]
        session = self.assertPasswordChallenge(
            await self.request("DELETE", f"{DEVICES}/FIRST", {}, token=token)
        )
        r = await self.request(
            "DELETE", f"{DEVICES}/SECOND", {"auth": password_auth(session=session)}, token=token
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        await self.assertWorks(second["access_token"])
        # Nor can another user continue it.
        await self.register("bob", inhibit_login=True)
        bob = await self.login("bob")
        r = await self.request(
            "DELETE",
            f"{DEVICES}/FIRST",
            {"auth": {"type": "m.login.password", "session": session}},
            token=bob["access_token"],
        )
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_uia_unknown_session_and_stage(self):
        mine = await self.login("alice", device_id="MINE")
        await self.login("alice", device_id="OTHER")
        token = mine["access_token"]
        r = await self.request(
            "DELETE",
            f"{DEVICES}/OTHER",
            {"auth": password_auth(session="no-such-session")},
            token=token,
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        # A stage this endpoint does not offer.
        r = await self.request(
            "DELETE", f"{DEVICES}/OTHER", {"auth": {"type": "m.login.dummy"}}, token=token
        )
        self.assertError(r, 400, "M_UNRECOGNIZED")
        r = await self.request("DELETE", f"{DEVICES}/OTHER", {"auth": "password"}, token=token)
        self.assertError(r, 400, "M_BAD_JSON")
        self.assertEqual(await self.device_ids(token), ["MINE", "OTHER"])

    # ----- bulk deletion ----------------------------------------------------------------------

    async def test_delete_devices_bulk(self):
        await self.register("bob", inhibit_login=True)
        bob = await self.login("bob", device_id="BOBDEV")
        keep = await self.login("alice", device_id="KEEP")
        one = await self.login("alice", device_id="ONE")
        two = await self.login("alice", device_id="TWO")
        token = keep["access_token"]
        body: dict[str, Any] = {"devices": ["ONE", "TWO", "NOSUCH", "BOBDEV"]}

        session = self.assertPasswordChallenge(
            await self.request("POST", DELETE_DEVICES, body, token=token)
        )
        r = await self.request(
            "POST",
            DELETE_DEVICES,
            {**body, "auth": password_auth(password="wrong", session=session)},
            token=token,
        )
        self.assertPasswordChallenge(r, errcode="M_FORBIDDEN")
        await self.assertWorks(one["access_token"])

        r = await self.request(
            "POST", DELETE_DEVICES, {**body, "auth": password_auth(session=session)}, token=token
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})
        await self.assertRevoked(one["access_token"])
        await self.assertRevoked(two["access_token"])
        await self.assertWorks(token)
        self.assertEqual(await self.device_ids(token), ["KEEP"])
        # Unknown IDs are ignored, and another user's device of the same name is untouched.
        await self.assertWorks(bob["access_token"])
        self.assertEqual(await self.device_ids(bob["access_token"]), ["BOBDEV"])

    async def test_delete_devices_empty_list(self):
        keep = await self.login("alice", device_id="KEEP")
        r = await self.request(
            "POST",
            DELETE_DEVICES,
            {"devices": [], "auth": password_auth()},
            token=keep["access_token"],
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.device_ids(keep["access_token"]), ["KEEP"])

    async def test_delete_devices_bad_body(self):
        keep = await self.login("alice", device_id="KEEP")
        token = keep["access_token"]
        for bad in ({}, {"devices": "KEEP"}, {"devices": [1, 2]}, {"devices": None}):
            r = await self.request(
                "POST", DELETE_DEVICES, {**bad, "auth": password_auth()}, token=token
            )
            self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("POST", DELETE_DEVICES, raw=b"not json", token=token)
        self.assertError(r, 400, "M_NOT_JSON")
        self.assertEqual(await self.device_ids(token), ["KEEP"])
