"""Login: flows, password login (matrix-nio and raw HTTP), identifiers, devices, rate limits.

Driven over real HTTP against a server on loopback, on both database engines.
"""

from __future__ import annotations

import logging
from typing import Any

from nio import AsyncClient, LoginError, LoginResponse, WhoamiResponse
from twisted.internet import defer

from tests.harness import SERVER_NAME, HomeserverTestCase, Response, nio, on_both_engines

LOGIN = "/_matrix/client/v3/login"
WHOAMI = "/_matrix/client/v3/account/whoami"
PASSWORD = "correct horse battery"


def mxid(localpart: str) -> str:
    return f"@{localpart}:{SERVER_NAME}"


def password_login(user: str, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
        **extra,
    }


class LoginHelpers(HomeserverTestCase):
    async def post_login(self, body: Any = None, **kwargs: Any) -> Response:
        return await self.request("POST", LOGIN, body, **kwargs)

    async def assertTokenWorks(self, token: str, user_id: str, device_id: str | None = None):
        r = await self.request("GET", WHOAMI, token=token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], user_id)
        if device_id is not None:
            self.assertEqual(r.json["device_id"], device_id)

    async def assertTokenRevoked(self, token: str) -> None:
        r = await self.request("GET", WHOAMI, token=token)
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    def assertRateLimited(self, response: Response) -> None:
        body = self.assertError(response, 429, "M_LIMIT_EXCEEDED")
        self.assertIsInstance(body["retry_after_ms"], int)
        self.assertGreater(body["retry_after_ms"], 0)
        retry_after = response.header("Retry-After")
        self.assertIsNotNone(retry_after)
        self.assertRegex(retry_after, r"^[0-9]+$")
        self.assertGreaterEqual(int(retry_after), 1)
        self.assertGreaterEqual(int(retry_after) * 1000, body["retry_after_ms"])


class WithAlice(LoginHelpers):
    """A server with one account, @alice, password PASSWORD."""

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start_with_alice())

    async def _start_with_alice(self) -> None:
        await self.start_server()
        await self.register("alice")


@on_both_engines
class LoginFlowTests(LoginHelpers):
    async def test_get_login_flows(self):
        r = await self.request("GET", LOGIN)
        self.assertEqual(r.code, 200, r)
        flows = r.json["flows"]
        self.assertIsInstance(flows, list)
        for flow in flows:
            self.assertIsInstance(flow["type"], str)
        self.assertIn("m.login.password", [f["type"] for f in flows])

    async def test_get_login_flows_needs_no_token(self):
        r = await self.request("GET", "/_matrix/client/r0/login")
        self.assertEqual(r.code, 200, r)
        self.assertIn("flows", r.json)


@on_both_engines
class NioLoginTests(LoginHelpers):
    def client(self, user: str) -> AsyncClient:
        client = AsyncClient(self.base_url, user)
        self.addCleanup(lambda: nio(client.close()))
        return client

    async def test_nio_password_login(self):
        await self.register("alice")
        client = self.client(mxid("alice"))
        resp = await nio(client.login(PASSWORD, device_name="nio laptop"))
        self.assertIsInstance(resp, LoginResponse, resp)
        self.assertEqual(resp.user_id, mxid("alice"))
        self.assertTrue(resp.device_id)
        who = await nio(client.whoami())
        self.assertIsInstance(who, WhoamiResponse, who)
        self.assertEqual(who.device_id, resp.device_id)
        r = await self.request(
            "GET", f"/_matrix/client/v3/devices/{resp.device_id}", token=resp.access_token
        )
        self.assertEqual(r.json["display_name"], "nio laptop")

    async def test_nio_login_with_localpart(self):
        await self.register("alice")
        resp = await nio(self.client("alice").login(PASSWORD))
        self.assertIsInstance(resp, LoginResponse, resp)
        self.assertEqual(resp.user_id, mxid("alice"))

    async def test_nio_login_wrong_password(self):
        # nio logs a warning when an error body does not parse as the success response.
        self.patch(logging.getLogger("nio.responses"), "disabled", True)
        await self.register("alice")
        resp = await nio(self.client(mxid("alice")).login("not the password"))
        self.assertIsInstance(resp, LoginError)
        self.assertEqual(resp.status_code, "M_FORBIDDEN")

    async def test_nio_login_reusing_device_id(self):
        await self.register("alice")
        first = self.client(mxid("alice"))
        first_resp = await nio(first.login(PASSWORD))
        self.assertIsInstance(first_resp, LoginResponse, first_resp)
        # A client restoring its session logs in again with its device ID.
        second = self.client(mxid("alice"))
        second.device_id = first_resp.device_id
        second_resp = await nio(second.login(PASSWORD))
        self.assertIsInstance(second_resp, LoginResponse, second_resp)
        self.assertEqual(second_resp.device_id, first_resp.device_id)
        await self.assertTokenRevoked(first_resp.access_token)
        await self.assertTokenWorks(second_resp.access_token, mxid("alice"), first_resp.device_id)


@on_both_engines
class PasswordLoginTests(WithAlice):
    async def test_response_shape(self):
        r = await self.post_login(password_login("alice"))
        self.assertEqual(r.code, 200, r)
        body = r.json
        self.assertEqual(body["user_id"], mxid("alice"))
        self.assertIsInstance(body["access_token"], str)
        self.assertIsInstance(body["device_id"], str)
        self.assertTrue(body["device_id"])
        self.assertNotIn("refresh_token", body)
        self.assertNotIn("expires_in_ms", body)
        self.assertRegex(body["well_known"]["m.homeserver"]["base_url"], r"^https?://")
        await self.assertTokenWorks(body["access_token"], mxid("alice"), body["device_id"])

    async def test_legacy_top_level_user(self):
        r = await self.post_login(
            {"type": "m.login.password", "user": "alice", "password": PASSWORD}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], mxid("alice"))
        r = await self.post_login(
            {"type": "m.login.password", "user": mxid("alice"), "password": PASSWORD}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], mxid("alice"))

    async def test_full_user_id(self):
        r = await self.post_login(password_login(mxid("alice")))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], mxid("alice"))

    async def test_upper_case_localpart(self):
        for user in ("ALICE", "Alice", f"@ALICE:{SERVER_NAME}"):
            r = await self.post_login(password_login(user))
            self.assertEqual(r.code, 200, (user, r))
            self.assertEqual(r.json["user_id"], mxid("alice"))

    async def test_password_is_case_sensitive(self):
        r = await self.post_login(password_login("alice", PASSWORD.upper()))
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_each_login_is_a_new_device(self):
        first = await self.login("alice")
        second = await self.login("alice")
        self.assertNotEqual(first["device_id"], second["device_id"])
        self.assertNotEqual(first["access_token"], second["access_token"])
        await self.assertTokenWorks(first["access_token"], mxid("alice"), first["device_id"])
        await self.assertTokenWorks(second["access_token"], mxid("alice"), second["device_id"])

    async def test_device_id_and_display_name(self):
        body = await self.login("alice", device_id="LAPTOP", initial_device_display_name="Laptop")
        self.assertEqual(body["device_id"], "LAPTOP")
        r = await self.request(
            "GET", "/_matrix/client/v3/devices/LAPTOP", token=body["access_token"]
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["display_name"], "Laptop")

    async def test_existing_device_id_revokes_old_token_and_keeps_device(self):
        other = await self.login("alice", device_id="OTHER")
        first = await self.login("alice", device_id="PHONE", initial_device_display_name="Phone")
        second = await self.login(
            "alice", device_id="PHONE", initial_device_display_name="Renamed?"
        )
        self.assertEqual(second["device_id"], "PHONE")
        self.assertNotEqual(first["access_token"], second["access_token"])
        await self.assertTokenRevoked(first["access_token"])
        await self.assertTokenWorks(second["access_token"], mxid("alice"), "PHONE")
        # Other devices are untouched.
        await self.assertTokenWorks(other["access_token"], mxid("alice"), "OTHER")
        # The device is kept (not duplicated), and its name is not replaced: the spec says
        # initial_device_display_name is ignored for a known device.
        r = await self.request("GET", "/_matrix/client/v3/devices", token=second["access_token"])
        phones = [d for d in r.json["devices"] if d["device_id"] == "PHONE"]
        self.assertEqual(len(phones), 1)
        self.assertEqual(phones[0]["display_name"], "Phone")

    async def test_existing_device_id_revokes_old_refresh_token(self):
        first = await self.login("alice", device_id="PHONE", refresh_token=True)
        await self.login("alice", device_id="PHONE")
        r = await self.request(
            "POST", "/_matrix/client/v3/refresh", {"refresh_token": first["refresh_token"]}
        )
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    async def test_same_device_id_for_two_users(self):
        await self.register("bob")
        alice = await self.login("alice", device_id="SHARED")
        bob = await self.login("bob", device_id="SHARED")
        # One user's login does not touch another user's device of the same ID.
        await self.assertTokenWorks(alice["access_token"], mxid("alice"), "SHARED")
        await self.assertTokenWorks(bob["access_token"], mxid("bob"), "SHARED")

    async def test_refresh_token(self):
        body = await self.login("alice", refresh_token=True)
        self.assertIsInstance(body["refresh_token"], str)
        self.assertTrue(body["refresh_token"])
        self.assertIsInstance(body["expires_in_ms"], int)
        self.assertGreater(body["expires_in_ms"], 0)
        await self.assertTokenWorks(body["access_token"], mxid("alice"))

    async def test_refresh_token_false(self):
        body = await self.login("alice", refresh_token=False)
        self.assertNotIn("refresh_token", body)
        self.assertNotIn("expires_in_ms", body)

    async def test_unknown_fields_are_ignored(self):
        body = await self.login("alice", org_example_field=[1, 2, 3])
        self.assertEqual(body["user_id"], mxid("alice"))


@on_both_engines
class LoginFailureTests(WithAlice):
    async def test_wrong_password(self):
        r = await self.post_login(password_login("alice", "wrong password"))
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_unknown_user(self):
        r = await self.post_login(password_login("nobody"))
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_wrong_password_and_unknown_user_are_indistinguishable(self):
        attempts = [
            password_login("alice", "wrong password"),
            password_login("nobody", "wrong password"),
            password_login(mxid("nobody"), "wrong password"),
            password_login("@alice:other.server", PASSWORD),
            password_login("not a valid localpart!", "wrong password"),
            {"type": "m.login.password", "user": "nobody", "password": "wrong password"},
        ]
        responses = [await self.post_login(body) for body in attempts]
        for r in responses:
            self.assertError(r, 403, "M_FORBIDDEN")
        first = responses[0]
        for r in responses[1:]:
            self.assertEqual(r.code, first.code)
            self.assertEqual(r.body, first.body)
            self.assertEqual(r.header("Content-Type"), first.header("Content-Type"))

    async def test_failed_login_creates_no_device(self):
        await self.post_login(password_login("alice", "wrong", device_id="NEWDEV"))
        ok = await self.login("alice")
        r = await self.request("GET", "/_matrix/client/v3/devices", token=ok["access_token"])
        self.assertNotIn("NEWDEV", [d["device_id"] for d in r.json["devices"]])

    async def test_wrong_password_for_existing_device_keeps_its_token(self):
        session = await self.login("alice", device_id="PHONE")
        r = await self.post_login(password_login("alice", "wrong", device_id="PHONE"))
        self.assertError(r, 403, "M_FORBIDDEN")
        await self.assertTokenWorks(session["access_token"], mxid("alice"), "PHONE")

    async def test_malformed_json(self):
        for raw in (b'{"type": "m.login.password"', b"type=m.login.password", b"\xff"):
            r = await self.post_login(raw=raw)
            self.assertError(r, 400, "M_NOT_JSON")

    async def test_json_not_an_object(self):
        for raw in (b"[]", b'"m.login.password"', b"3"):
            r = await self.post_login(raw=raw)
            self.assertError(r, 400, "M_BAD_JSON")

    async def test_missing_or_wrong_type(self):
        body = password_login("alice")
        del body["type"]
        r = await self.post_login(body)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.post_login({**password_login("alice"), "type": 1})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.post_login({})
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_unknown_login_type(self):
        for login_type in ("m.login.bogus", "m.login.token", "m.login.dummy", ""):
            r = await self.post_login({**password_login("alice"), "type": login_type})
            self.assertError(r, 400, "M_UNKNOWN")

    async def test_unknown_identifier_type(self):
        # m.id.thirdparty with an e-mail address is supported: tests/test_threepids.py.
        for identifier in (
            {"type": "m.id.thirdparty", "medium": "msisdn", "address": "447700900000"},
            {"type": "m.id.phone", "country": "GB", "phone": "123456"},
            {"type": "m.id.bogus", "user": "alice"},
            {"user": "alice"},
        ):
            r = await self.post_login(
                {"type": "m.login.password", "identifier": identifier, "password": PASSWORD}
            )
            self.assertError(r, 400, "M_UNKNOWN")

    async def test_bad_identifier(self):
        cases = [
            {"type": "m.login.password", "password": PASSWORD},
            {"type": "m.login.password", "identifier": "alice", "password": PASSWORD},
            {"type": "m.login.password", "identifier": ["alice"], "password": PASSWORD},
            {"type": "m.login.password", "identifier": {"type": "m.id.user"}, "password": PASSWORD},
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": ""},
                "password": PASSWORD,
            },
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": 5},
                "password": PASSWORD,
            },
            {"type": "m.login.password", "user": 5, "password": PASSWORD},
        ]
        for body in cases:
            r = await self.post_login(body)
            self.assertError(r, 400, "M_BAD_JSON")

    async def test_missing_or_wrong_type_password(self):
        body = password_login("alice")
        del body["password"]
        r = await self.post_login(body)
        self.assertError(r, 400, "M_BAD_JSON")
        for password in (12345678, None, ["x"]):
            r = await self.post_login({**password_login("alice"), "password": password})
            self.assertError(r, 400, "M_BAD_JSON")

    async def test_wrong_types_for_optional_fields(self):
        for extra in (
            {"device_id": 5},
            {"initial_device_display_name": {"name": "x"}},
            {"refresh_token": "true"},
            {"refresh_token": 1},
        ):
            r = await self.post_login(password_login("alice", **extra))
            self.assertError(r, 400, "M_BAD_JSON")

    async def test_empty_device_id(self):
        r = await self.post_login(password_login("alice", device_id=""))
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_overlong_device_display_name(self):
        r = await self.post_login(password_login("alice", initial_device_display_name="n" * 101))
        self.assertError(r, 400, "M_TOO_LARGE")


@on_both_engines
class LoginAddressRateLimitTests(LoginHelpers):
    config_overrides = {
        "rate_limits": {
            "enabled": True,
            "login_per_address": {"per_second": 0.01, "burst_count": 2},
        }
    }

    async def test_login_is_rate_limited_per_address(self):
        await self.register("alice")
        await self.register("bob")
        await self.login("alice")
        r = await self.post_login(password_login("bob", "wrong password"))
        self.assertError(r, 403, "M_FORBIDDEN")
        # The bucket is empty now: even a correct login for another account is refused.
        r = await self.post_login(password_login("bob"))
        self.assertRateLimited(r)
        r = await self.post_login(password_login("alice"))
        self.assertRateLimited(r)

    async def test_rate_limited_login_creates_no_session(self):
        await self.register("alice")
        await self.login("alice")
        await self.login("alice")
        r = await self.post_login(password_login("alice", device_id="LIMITED"))
        self.assertRateLimited(r)
        token = (await self.register("bob"))["access_token"]
        r = await self.request("GET", "/_matrix/client/v3/devices", token=token)
        self.assertNotIn("LIMITED", [d["device_id"] for d in r.json["devices"]])

    async def test_forwarded_for_is_not_trusted_by_default(self):
        await self.register("alice")
        for ip in ("10.0.0.1", "10.0.0.2"):
            r = await self.post_login(password_login("alice"), headers={"X-Forwarded-For": ip})
            self.assertEqual(r.code, 200, r)
        r = await self.post_login(password_login("alice"), headers={"X-Forwarded-For": "10.0.0.3"})
        self.assertRateLimited(r)

    async def test_rate_limit_error_has_cors_headers(self):
        await self.register("alice")
        await self.login("alice")
        await self.login("alice")
        r = await self.post_login(password_login("alice"))
        self.assertRateLimited(r)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "*")


@on_both_engines
class LoginAccountRateLimitTests(LoginHelpers):
    config_overrides = {
        "rate_limits": {
            "enabled": True,
            "login_per_address": {"per_second": 100, "burst_count": 100},
            "login_per_account": {"per_second": 0.01, "burst_count": 2},
            "login_failures_per_account": {"per_second": 100, "burst_count": 100},
        }
    }

    async def test_login_is_rate_limited_per_account(self):
        await self.register("alice")
        await self.register("bob")
        await self.login("alice")
        await self.login("alice")
        r = await self.post_login(password_login("alice"))
        self.assertRateLimited(r)
        # The account is what is limited, however it is spelt.
        r = await self.post_login(password_login(f"@ALICE:{SERVER_NAME}"))
        self.assertRateLimited(r)
        # Other accounts from the same address are fine.
        await self.login("bob")


@on_both_engines
class LoginFailureRateLimitTests(LoginHelpers):
    config_overrides = {
        "rate_limits": {
            "enabled": True,
            "login_per_address": {"per_second": 100, "burst_count": 100},
            "login_per_account": {"per_second": 100, "burst_count": 100},
            "login_failures_per_account": {"per_second": 0.01, "burst_count": 2},
        }
    }

    async def test_failures_lock_the_account_temporarily(self):
        await self.register("alice")
        await self.register("bob")
        for _ in range(2):
            r = await self.post_login(password_login("alice", "guess"))
            self.assertError(r, 403, "M_FORBIDDEN")
        # Even the right password is refused now: the limiter does not leak whether it was.
        r = await self.post_login(password_login("alice"))
        self.assertRateLimited(r)
        r = await self.post_login(password_login("alice", "guess"))
        self.assertRateLimited(r)
        # Another account is not affected.
        await self.login("bob")

    async def test_successful_logins_are_not_failures(self):
        await self.register("alice")
        for _ in range(4):
            await self.login("alice")

    async def test_unknown_accounts_are_limited_the_same_way(self):
        # Otherwise the limiter would tell an attacker which accounts exist.
        for _ in range(2):
            r = await self.post_login(password_login("nobody", "guess"))
            self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.post_login(password_login("nobody", "guess"))
        self.assertRateLimited(r)
