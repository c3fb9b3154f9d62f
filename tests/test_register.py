"""Registration, username availability, registration tokens and user-interactive auth (UIA).

Driven over real HTTP (raw requests for the bad-input cases, matrix-nio for the happy paths)
against a server on loopback, on both database engines.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

from nio import AsyncClient, RegisterResponse, WhoamiResponse
from nio.responses import RegisterErrorResponse
from twisted.internet import defer

from tests.harness import SERVER_NAME, HomeserverTestCase, Response, nio, on_both_engines

REGISTER = "/_matrix/client/v3/register"
AVAILABLE = "/_matrix/client/v3/register/available"
VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"
PASSWORD = "correct horse battery"
DUMMY = {"type": "m.login.dummy"}
# "@" + localpart + ":test.heddle" may be at most 255 bytes.
MAX_LOCALPART = 255 - len(f"@:{SERVER_NAME}")


def mxid(localpart: str) -> str:
    return f"@{localpart}:{SERVER_NAME}"


class RegisterHelpers(HomeserverTestCase):
    async def post_register(self, body: Any = None, query: str = "", **kwargs: Any) -> Response:
        return await self.request("POST", REGISTER + query, body, **kwargs)

    async def start_uia(self, **body: Any) -> str:
        """Make the first, auth-less request and return the session it opened."""
        r = await self.post_register(body)
        self.assertEqual(r.code, 401, r)
        return r.json["session"]

    async def assertAvailable(self, localpart: str) -> None:
        r = await self.request("GET", f"{AVAILABLE}?username={quote(localpart)}")
        self.assertEqual((r.code, r.json), (200, {"available": True}))

    async def assertTaken(self, localpart: str) -> None:
        r = await self.request("GET", f"{AVAILABLE}?username={quote(localpart)}")
        self.assertError(r, 400, "M_USER_IN_USE")

    def assertChallenge(self, response: Response, stages: list[str]) -> dict[str, Any]:
        """A UIA 401 body as the spec describes it: flows, params, session."""
        self.assertEqual(response.code, 401, response)
        body = response.json
        self.assertEqual(body["flows"], [{"stages": stages}])
        self.assertIsInstance(body["params"], dict)
        self.assertIsInstance(body["session"], str)
        self.assertTrue(body["session"])
        return body

    async def whoami(self, token: str) -> dict[str, Any]:
        r = await self.request("GET", "/_matrix/client/v3/account/whoami", token=token)
        self.assertEqual(r.code, 200, r)
        return r.json


# ----- matrix-nio -------------------------------------------------------------------------


@on_both_engines
class NioRegistrationTests(RegisterHelpers):
    def client(self, user: str = "") -> AsyncClient:
        client = AsyncClient(self.base_url, user)
        self.addCleanup(lambda: nio(client.close()))
        return client

    async def test_nio_register(self):
        client = self.client()
        resp = await nio(client.register("alice", PASSWORD, device_name="Nio Phone"))
        self.assertIsInstance(resp, RegisterResponse, resp)
        self.assertEqual(resp.user_id, mxid("alice"))
        self.assertTrue(resp.device_id)
        self.assertTrue(resp.access_token)
        # nio adopts the new session: the token works for it.
        who = await nio(client.whoami())
        self.assertIsInstance(who, WhoamiResponse, who)
        self.assertEqual(who.user_id, mxid("alice"))
        self.assertEqual(who.device_id, resp.device_id)
        r = await self.request(
            "GET", f"/_matrix/client/v3/devices/{resp.device_id}", token=resp.access_token
        )
        self.assertEqual(r.json["display_name"], "Nio Phone")

    async def test_nio_register_continues_a_uia_session(self):
        session = await self.start_uia(username="alice", password=PASSWORD)
        client = self.client()
        resp = await nio(client.register("alice", PASSWORD, session_token=session))
        self.assertIsInstance(resp, RegisterResponse, resp)
        self.assertEqual(resp.user_id, mxid("alice"))

    async def test_nio_register_taken_name(self):
        # nio logs a warning when an error body does not parse as the success response.
        self.patch(logging.getLogger("nio.responses"), "disabled", True)
        await self.register("alice")
        resp = await nio(self.client().register("alice", PASSWORD))
        self.assertIsInstance(resp, RegisterErrorResponse)
        self.assertEqual(resp.status_code, "M_USER_IN_USE")

    async def test_nio_register_then_login(self):
        resp = await nio(self.client().register("alice", PASSWORD))
        self.assertIsInstance(resp, RegisterResponse, resp)
        other = self.client(mxid("alice"))
        login = await nio(other.login(PASSWORD, device_name="second"))
        self.assertEqual(login.user_id, mxid("alice"))
        self.assertNotEqual(login.device_id, resp.device_id)


# ----- user-interactive auth --------------------------------------------------------------


@on_both_engines
class RegistrationUiaTests(RegisterHelpers):
    async def test_no_auth_gives_401_with_flows(self):
        r = await self.post_register({"username": "alice", "password": PASSWORD})
        body = self.assertChallenge(r, ["m.login.dummy"])
        # A fresh challenge is not an error and has completed nothing.
        self.assertNotIn("errcode", body)
        self.assertEqual(body.get("completed", []), [])
        await self.assertAvailable("alice")

    async def test_empty_body_gives_401_with_flows(self):
        # Clients probe the flows with an empty request before showing a form.
        r = await self.post_register({})
        self.assertChallenge(r, ["m.login.dummy"])
        r = await self.post_register(raw=b"")
        self.assertChallenge(r, ["m.login.dummy"])

    async def test_each_challenge_gets_its_own_session(self):
        first = await self.start_uia()
        second = await self.start_uia()
        self.assertNotEqual(first, second)

    async def test_dummy_stage_completes_the_session(self):
        session = await self.start_uia(username="alice", password=PASSWORD)
        r = await self.post_register(
            {"username": "alice", "password": PASSWORD, "auth": {**DUMMY, "session": session}}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], mxid("alice"))

    async def test_dummy_stage_without_session(self):
        r = await self.post_register({"username": "alice", "password": PASSWORD, "auth": DUMMY})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], mxid("alice"))

    async def test_auth_with_only_a_session_reports_progress(self):
        session = await self.start_uia()
        r = await self.post_register(
            {"username": "alice", "password": PASSWORD, "auth": {"session": session}}
        )
        body = self.assertChallenge(r, ["m.login.dummy"])
        self.assertEqual(body["session"], session)
        self.assertEqual(body.get("completed", []), [])
        await self.assertAvailable("alice")

    async def test_session_remembers_completed_stages(self):
        # The dummy stage completes, then the request fails for a non-auth reason (weak
        # password). Retrying with just the session must not ask for the stage again.
        session = await self.start_uia()
        r = await self.post_register(
            {"username": "alice", "password": "short", "auth": {**DUMMY, "session": session}}
        )
        self.assertError(r, 400, "M_WEAK_PASSWORD")
        await self.assertAvailable("alice")
        r = await self.post_register(
            {"username": "alice", "password": PASSWORD, "auth": {"session": session}}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], mxid("alice"))

    async def test_session_remembers_the_opening_requests_parameters(self):
        """A client may give its parameters once, with the request that opens the session,
        and then send only `auth` (SyTest's "registration remembers parameters")."""
        session = await self.start_uia(
            username="alice", password="übers3kr1t pässword", device_id="XYZZY",
            initial_device_display_name="display name",
        )
        r = await self.post_register({"auth": {**DUMMY, "session": session}})
        self.assertEqual(r.code, 200, r)
        self.assertEqual((r.json["user_id"], r.json["device_id"]), (mxid("alice"), "XYZZY"))
        r = await self.request(
            "GET", "/_matrix/client/v3/devices/XYZZY", token=r.json["access_token"]
        )
        self.assertEqual((r.code, r.json["display_name"]), (200, "display name"), r)
        # The remembered password (stored only as a hash) is the account's password.
        await self.login("alice", "übers3kr1t pässword")

        # inhibit_login is remembered too; a later request's parameters win over earlier ones.
        session = await self.start_uia(username="bob", password=PASSWORD, inhibit_login=True)
        r = await self.post_register(
            {"username": "carol", "auth": {**DUMMY, "session": session}}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], mxid("carol"))
        self.assertNotIn("access_token", r.json)
        await self.assertAvailable("bob")
        await self.login("carol")

    async def test_opening_request_checks_the_password_policy(self):
        r = await self.post_register({"username": "alice", "password": "short"})
        self.assertError(r, 400, "M_WEAK_PASSWORD")
        r = await self.post_register({"username": "alice", "password": 12})
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_unknown_session_is_400(self):
        r = await self.post_register(
            {
                "username": "alice",
                "password": PASSWORD,
                "auth": {**DUMMY, "session": "no-such-session"},
            }
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        await self.assertAvailable("alice")

    async def test_session_must_be_a_string(self):
        r = await self.post_register(
            {"username": "alice", "password": PASSWORD, "auth": {**DUMMY, "session": 12}}
        )
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_auth_must_be_an_object(self):
        for auth in ("m.login.dummy", ["m.login.dummy"], 1, True):
            r = await self.post_register({"username": "alice", "password": PASSWORD, "auth": auth})
            self.assertError(r, 400, "M_BAD_JSON")
        await self.assertAvailable("alice")

    async def test_unknown_stage_type_is_400_unrecognized(self):
        for stage in ("m.login.bogus", "m.login.password", "m.login.registration_token", 5):
            r = await self.post_register(
                {"username": "alice", "password": PASSWORD, "auth": {"type": stage}}
            )
            self.assertError(r, 400, "M_UNRECOGNIZED")
        await self.assertAvailable("alice")

    async def _session_for_delete_devices(self, user: str) -> tuple[str, str]:
        token = (await self.register(user))["access_token"]
        r = await self.request(
            "POST", "/_matrix/client/v3/delete_devices", {"devices": []}, token=token
        )
        body = self.assertChallenge(r, ["m.login.password"])
        return token, body["session"]

    async def test_session_started_for_another_endpoint_is_403(self):
        _, session = await self._session_for_delete_devices("alice")
        r = await self.post_register(
            {"username": "bob", "password": PASSWORD, "auth": {**DUMMY, "session": session}}
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        await self.assertAvailable("bob")

    async def test_registration_session_cannot_be_used_elsewhere(self):
        session = await self.start_uia()
        token = (await self.register("alice"))["access_token"]
        r = await self.request(
            "POST",
            "/_matrix/client/v3/delete_devices",
            {
                "devices": [],
                "auth": {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "alice"},
                    "password": PASSWORD,
                    "session": session,
                },
            },
            token=token,
        )
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_session_started_for_another_user_is_403(self):
        _, alice_session = await self._session_for_delete_devices("alice")
        bob = await self.register("bob")
        r = await self.request(
            "POST",
            "/_matrix/client/v3/delete_devices",
            {
                "devices": [bob["device_id"]],
                "auth": {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "bob"},
                    "password": PASSWORD,
                    "session": alice_session,
                },
            },
            token=bob["access_token"],
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        # Bob's device survived.
        await self.whoami(bob["access_token"])


# ----- successful registration ------------------------------------------------------------


@on_both_engines
class RegistrationTests(RegisterHelpers):
    async def test_response_shape(self):
        r = await self.post_register({"username": "alice", "password": PASSWORD, "auth": DUMMY})
        self.assertEqual(r.code, 200, r)
        body = r.json
        self.assertEqual(body["user_id"], mxid("alice"))
        self.assertIsInstance(body["access_token"], str)
        self.assertIsInstance(body["device_id"], str)
        self.assertTrue(body["device_id"])
        self.assertNotIn("refresh_token", body)
        self.assertNotIn("expires_in_ms", body)
        who = await self.whoami(body["access_token"])
        self.assertEqual(who["user_id"], mxid("alice"))
        self.assertEqual(who["device_id"], body["device_id"])
        self.assertFalse(who.get("is_guest", False))
        await self.assertTaken("alice")

    async def test_registered_user_can_log_in(self):
        await self.register("alice")
        login = await self.login("alice")
        self.assertEqual(login["user_id"], mxid("alice"))

    async def test_explicit_kind_user(self):
        r = await self.post_register(
            {"username": "alice", "password": PASSWORD, "auth": DUMMY}, query="?kind=user"
        )
        self.assertEqual(r.code, 200, r)

    async def test_r0_path(self):
        r = await self.request(
            "POST",
            "/_matrix/client/r0/register",
            {"username": "alice", "password": PASSWORD, "auth": DUMMY},
        )
        self.assertEqual(r.code, 200, r)

    async def test_inhibit_login(self):
        r = await self.post_register(
            {"username": "alice", "password": PASSWORD, "auth": DUMMY, "inhibit_login": True}
        )
        self.assertEqual(r.code, 200, r)
        body = r.json
        self.assertEqual(body["user_id"], mxid("alice"))
        for key in ("access_token", "device_id", "refresh_token", "expires_in_ms"):
            self.assertNotIn(key, body)
        # The account exists and has no devices until it logs in.
        await self.assertTaken("alice")
        login = await self.login("alice")
        r = await self.request("GET", "/_matrix/client/v3/devices", token=login["access_token"])
        self.assertEqual([d["device_id"] for d in r.json["devices"]], [login["device_id"]])

    async def test_inhibit_login_false_logs_in(self):
        body = await self.register("alice", inhibit_login=False)
        self.assertIn("access_token", body)

    async def test_refresh_token(self):
        body = await self.register("alice", refresh_token=True)
        self.assertIsInstance(body["refresh_token"], str)
        self.assertTrue(body["refresh_token"])
        self.assertIsInstance(body["expires_in_ms"], int)
        self.assertGreater(body["expires_in_ms"], 0)
        await self.whoami(body["access_token"])
        r = await self.request(
            "POST", "/_matrix/client/v3/refresh", {"refresh_token": body["refresh_token"]}
        )
        self.assertEqual(r.code, 200, r)
        self.assertNotEqual(r.json["access_token"], body["access_token"])
        await self.whoami(r.json["access_token"])

    async def test_refresh_token_false(self):
        body = await self.register("alice", refresh_token=False)
        self.assertNotIn("refresh_token", body)
        self.assertNotIn("expires_in_ms", body)

    async def test_device_id_and_display_name_honoured(self):
        body = await self.register(
            "alice", device_id="MYDEVICE", initial_device_display_name="Jungle Phone"
        )
        self.assertEqual(body["device_id"], "MYDEVICE")
        who = await self.whoami(body["access_token"])
        self.assertEqual(who["device_id"], "MYDEVICE")
        r = await self.request(
            "GET", "/_matrix/client/v3/devices/MYDEVICE", token=body["access_token"]
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["display_name"], "Jungle Phone")

    async def test_generated_device_id(self):
        first = await self.register("alice")
        second = await self.register("bob")
        self.assertTrue(first["device_id"])
        self.assertTrue(second["device_id"])

    async def test_generated_username(self):
        r = await self.post_register({"password": PASSWORD, "auth": DUMMY})
        self.assertEqual(r.code, 200, r)
        user_id = r.json["user_id"]
        self.assertRegex(user_id, rf"^@[a-z0-9._=\-/+]+:{re.escape(SERVER_NAME)}$")
        localpart = user_id[1:].split(":", 1)[0]
        await self.assertTaken(localpart)
        login = await self.login(localpart)
        self.assertEqual(login["user_id"], user_id)
        other = await self.post_register({"password": PASSWORD, "auth": DUMMY})
        self.assertEqual(other.code, 200, other)
        self.assertNotEqual(other.json["user_id"], user_id)

    async def test_longest_allowed_username(self):
        localpart = "a" * MAX_LOCALPART
        self.assertEqual(len(mxid(localpart).encode()), 255)
        body = await self.register(localpart)
        self.assertEqual(body["user_id"], mxid(localpart))

    async def test_username_with_all_allowed_characters(self):
        localpart = "a.b_c=d-e/f+g0"
        body = await self.register(localpart)
        self.assertEqual(body["user_id"], mxid(localpart))
        await self.login(localpart)

    async def test_unknown_fields_are_ignored(self):
        body = await self.register("alice", org_example_extension={"x": 1})
        self.assertEqual(body["user_id"], mxid("alice"))

    async def test_guest_registration_is_forbidden(self):
        for body in ({}, {"initial_device_display_name": "guest"}):
            r = await self.post_register(body, query="?kind=guest")
            self.assertError(r, 403, "M_GUEST_ACCESS_FORBIDDEN")

    async def test_unknown_kind_is_400(self):
        r = await self.post_register(
            {"username": "alice", "password": PASSWORD, "auth": DUMMY}, query="?kind=admin"
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        await self.assertAvailable("alice")


# ----- bad input --------------------------------------------------------------------------


@on_both_engines
class RegistrationBadInputTests(RegisterHelpers):
    async def test_malformed_json(self):
        for raw in (b'{"username": "alice", ', b"username=alice&password=x", b"\x80\x81"):
            r = await self.post_register(raw=raw)
            self.assertError(r, 400, "M_NOT_JSON")

    async def test_json_not_an_object(self):
        for raw in (b'["alice"]', b'"alice"', b"1", b"null"):
            r = await self.post_register(raw=raw)
            self.assertError(r, 400, "M_BAD_JSON")

    async def test_wrong_types(self):
        cases = [
            {"username": 42},
            {"username": ["alice"]},
            {"username": "alice", "password": 12345678},
            {"username": "alice", "inhibit_login": "true"},
            {"username": "alice", "inhibit_login": 1},
            {"username": "alice", "refresh_token": "yes"},
            {"username": "alice", "device_id": 7},
            {"username": "alice", "initial_device_display_name": ["phone"]},
            {"username": "alice", "auth": "m.login.dummy"},
        ]
        for case in cases:
            body = {"password": PASSWORD, "auth": DUMMY, **case}
            r = await self.post_register(body)
            self.assertError(r, 400, "M_BAD_JSON")
        await self.assertAvailable("alice")

    async def test_missing_password(self):
        # The first, auth-less request still gets the flows...
        r = await self.post_register({"username": "alice"})
        self.assertChallenge(r, ["m.login.dummy"])
        # ...but an account is not created without a password to log back in with.
        r = await self.post_register({"username": "alice", "auth": DUMMY})
        self.assertError(r, 400, "M_MISSING_PARAM")
        await self.assertAvailable("alice")
        r = await self.post_register({"username": "alice", "password": None, "auth": DUMMY})
        self.assertError(r, 400, "M_MISSING_PARAM")

    async def test_capitals_are_folded(self):
        """Synapse's behaviour, which SyTest checks: capitals in a requested username are
        folded to lower case rather than refused."""
        r = await self.post_register({"username": "User-UPPER", "password": PASSWORD})
        self.assertChallenge(r, ["m.login.dummy"])
        r = await self.post_register(
            {"username": "User-UPPER", "password": PASSWORD, "auth": DUMMY}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], mxid("user-upper"))
        await self.assertTaken("user-upper")
        # The folded name is taken now, whatever its case.
        r = await self.post_register({"username": "USER-upper", "password": PASSWORD})
        self.assertError(r, 400, "M_USER_IN_USE")

    async def test_invalid_usernames(self):
        for username in (
            "al ice",
            "alice!",
            "ali:ce",
            "@alice",
            "alice@example",
            "ÅLICE",
            "ålice",
            "ali\u00a0ce",
            "alice\n",
            "",
            "_alice",
            "al#ice",
            "al%ice",
        ):
            # Reported before UIA, i.e. even without an auth dict...
            r = await self.post_register({"username": username, "password": PASSWORD})
            self.assertError(r, 400, "M_INVALID_USERNAME")
            # ...and of course with one.
            r = await self.post_register(
                {"username": username, "password": PASSWORD, "auth": DUMMY}
            )
            self.assertError(r, 400, "M_INVALID_USERNAME")

    async def test_username_too_long(self):
        localpart = "a" * (MAX_LOCALPART + 1)
        self.assertEqual(len(mxid(localpart).encode()), 256)
        for body in (
            {"username": localpart, "password": PASSWORD},
            {"username": localpart, "password": PASSWORD, "auth": DUMMY},
        ):
            r = await self.post_register(body)
            self.assertError(r, 400, "M_INVALID_USERNAME")
        r = await self.post_register(
            {"username": "a" * 10_000, "password": PASSWORD, "auth": DUMMY}
        )
        self.assertError(r, 400, "M_INVALID_USERNAME")

    async def test_username_taken(self):
        await self.register("alice")
        # Before UIA...
        r = await self.post_register({"username": "alice", "password": PASSWORD})
        self.assertError(r, 400, "M_USER_IN_USE")
        # ...and with it.
        r = await self.post_register(
            {"username": "alice", "password": "other password", "auth": DUMMY}
        )
        self.assertError(r, 400, "M_USER_IN_USE")
        # The original password still works; the account was not overwritten.
        await self.login("alice")
        r = await self.request(
            "POST",
            "/_matrix/client/v3/login",
            {"type": "m.login.password", "user": "alice", "password": "other password"},
        )
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_username_taken_after_uia_started(self):
        # Someone else takes the name while the client is authenticating.
        session = await self.start_uia(username="alice", password=PASSWORD)
        await self.register("alice", password="someone else's")
        r = await self.post_register(
            {"username": "alice", "password": PASSWORD, "auth": {**DUMMY, "session": session}}
        )
        self.assertError(r, 400, "M_USER_IN_USE")

    async def test_concurrent_registrations_of_one_name(self):
        body = {"username": "racer", "password": PASSWORD, "auth": DUMMY}
        results = await defer.gatherResults(
            [defer.ensureDeferred(self.post_register(body)) for _ in range(6)]
        )
        successes = [r for r in results if r.code == 200]
        self.assertEqual(len(successes), 1, results)
        for r in results:
            if r.code != 200:
                self.assertError(r, 400, "M_USER_IN_USE")
        # The one winner's token works and the account is usable.
        who = await self.whoami(successes[0].json["access_token"])
        self.assertEqual(who["user_id"], mxid("racer"))
        await self.login("racer")

    async def test_weak_password(self):
        for password in ("", "short", "1234567"):
            r = await self.post_register({"username": "alice", "password": password, "auth": DUMMY})
            self.assertError(r, 400, "M_WEAK_PASSWORD")
        await self.assertAvailable("alice")
        # The default minimum is 8 characters.
        await self.register("alice", password="12345678")

    async def test_configured_minimum_password_length(self):
        await self.start_server(registration={"min_password_length": 12})
        r = await self.post_register(
            {"username": "alice", "password": "elevenchars", "auth": DUMMY}
        )
        self.assertError(r, 400, "M_WEAK_PASSWORD")
        await self.register("alice", password="twelve chars")

    async def test_overlong_password(self):
        r = await self.post_register({"username": "alice", "password": "x" * 513, "auth": DUMMY})
        self.assertError(r, 400, "M_INVALID_PARAM")
        await self.assertAvailable("alice")

    async def test_invalid_device_id(self):
        r = await self.post_register(
            {"username": "alice", "password": PASSWORD, "auth": DUMMY, "device_id": ""}
        )
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_overlong_device_display_name(self):
        r = await self.post_register(
            {
                "username": "alice",
                "password": PASSWORD,
                "auth": DUMMY,
                "initial_device_display_name": "x" * 101,
            }
        )
        self.assertError(r, 400, "M_TOO_LARGE")


@on_both_engines
class RegistrationBodyLimitTests(RegisterHelpers):
    config_overrides = {"limits": {"max_request_body_bytes": 2048}}

    async def test_body_over_limit(self):
        body = {"username": "alice", "password": "p" * 4000, "auth": DUMMY}
        r = await self.post_register(body)
        self.assertError(r, 413, "M_TOO_LARGE")
        await self.assertAvailable("alice")


@on_both_engines
class RegistrationDisabledTests(RegisterHelpers):
    config_overrides = {"registration": {"enabled": False}}

    async def test_register_is_forbidden(self):
        for body in (
            {},
            {"username": "alice", "password": PASSWORD},
            {"username": "alice", "password": PASSWORD, "auth": DUMMY},
        ):
            r = await self.post_register(body)
            self.assertError(r, 403, "M_FORBIDDEN")
        await self.assertAvailable("alice")

    async def test_token_validity_is_forbidden(self):
        r = await self.request("GET", f"{VALIDITY}?token=anything")
        self.assertError(r, 403, "M_FORBIDDEN")


@on_both_engines
class RegistrationTokenTests(RegisterHelpers):
    config_overrides = {
        "registration": {"require_token": True, "tokens": ["fBVFdqVE", "second-token_1.~"]}
    }
    STAGE = "m.login.registration_token"

    async def test_flows_require_a_token(self):
        r = await self.post_register({"username": "alice", "password": PASSWORD})
        self.assertChallenge(r, [self.STAGE])

    async def test_right_token_registers(self):
        session = await self.start_uia(username="alice", password=PASSWORD)
        r = await self.post_register(
            {
                "username": "alice",
                "password": PASSWORD,
                "auth": {"type": self.STAGE, "token": "fBVFdqVE", "session": session},
            }
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], mxid("alice"))
        await self.whoami(r.json["access_token"])

    async def test_right_token_without_prior_session(self):
        r = await self.post_register(
            {
                "username": "alice",
                "password": PASSWORD,
                "auth": {"type": self.STAGE, "token": "second-token_1.~"},
            }
        )
        self.assertEqual(r.code, 200, r)

    async def test_wrong_token_is_401_forbidden_then_retry(self):
        session = await self.start_uia(username="alice", password=PASSWORD)
        for token in ("wrong", "FBVFDQVE", "fBVFdqVE ", 12345, None):
            auth: dict[str, Any] = {"type": self.STAGE, "session": session}
            if token is not None:
                auth["token"] = token
            r = await self.post_register({"username": "alice", "password": PASSWORD, "auth": auth})
            body = self.assertChallenge(r, [self.STAGE])
            self.assertEqual(body["errcode"], "M_FORBIDDEN")
            self.assertIsInstance(body["error"], str)
            self.assertEqual(body["session"], session)
            self.assertEqual(body.get("completed", []), [])
        await self.assertAvailable("alice")
        # The failures did not spoil the session.
        r = await self.post_register(
            {
                "username": "alice",
                "password": PASSWORD,
                "auth": {"type": self.STAGE, "token": "fBVFdqVE", "session": session},
            }
        )
        self.assertEqual(r.code, 200, r)

    async def test_dummy_stage_is_not_enough(self):
        r = await self.post_register({"username": "alice", "password": PASSWORD, "auth": DUMMY})
        self.assertError(r, 400, "M_UNRECOGNIZED")
        await self.assertAvailable("alice")

    async def test_validity(self):
        r = await self.request("GET", f"{VALIDITY}?token=fBVFdqVE")
        self.assertEqual((r.code, r.json), (200, {"valid": True}))
        r = await self.request("GET", f"{VALIDITY}?token={quote('second-token_1.~')}")
        self.assertEqual((r.code, r.json), (200, {"valid": True}))
        r = await self.request("GET", f"{VALIDITY}?token=nottherighttoken")
        self.assertEqual((r.code, r.json), (200, {"valid": False}))

    async def test_validity_missing_token(self):
        r = await self.request("GET", VALIDITY)
        self.assertError(r, 400, "M_MISSING_PARAM")

    async def test_validity_malformed_token(self):
        for token in ("a" * 65, "has space", "slash/", "ümlaut", "fBVFdqVE\n"):
            r = await self.request("GET", f"{VALIDITY}?token={quote(token)}")
            self.assertError(r, 400, "M_INVALID_PARAM")


@on_both_engines
class TokenValidityWithoutRequiredTokensTests(RegisterHelpers):
    async def test_no_tokens_configured(self):
        r = await self.request("GET", f"{VALIDITY}?token=fBVFdqVE")
        self.assertEqual((r.code, r.json), (200, {"valid": False}))


# ----- /register/available ----------------------------------------------------------------


@on_both_engines
class AvailabilityTests(RegisterHelpers):
    async def test_available(self):
        r = await self.request("GET", f"{AVAILABLE}?username=alice")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"available": True})

    async def test_taken(self):
        await self.register("alice")
        r = await self.request("GET", f"{AVAILABLE}?username=alice")
        self.assertError(r, 400, "M_USER_IN_USE")
        await self.assertAvailable("bob")

    async def test_invalid(self):
        for username in ("Alice", "al ice", "_alice", "ali:ce", "a" * (MAX_LOCALPART + 1)):
            r = await self.request("GET", f"{AVAILABLE}?username={quote(username)}")
            self.assertError(r, 400, "M_INVALID_USERNAME")

    async def test_empty(self):
        r = await self.request("GET", f"{AVAILABLE}?username=")
        self.assertError(r, 400, "M_INVALID_USERNAME")

    async def test_missing_param(self):
        r = await self.request("GET", AVAILABLE)
        self.assertError(r, 400, "M_MISSING_PARAM")

    async def test_longest_name_is_available(self):
        await self.assertAvailable("a" * MAX_LOCALPART)

    async def test_does_not_reserve(self):
        await self.assertAvailable("alice")
        await self.assertAvailable("alice")
        await self.register("alice")
        await self.assertTaken("alice")

    async def test_wrong_method(self):
        r = await self.request("POST", f"{AVAILABLE}?username=alice", {})
        self.assertError(r, 405, "M_UNRECOGNIZED")


# ----- rate limiting ----------------------------------------------------------------------


@on_both_engines
class RegistrationRateLimitTests(RegisterHelpers):
    config_overrides = {
        "rate_limits": {
            "enabled": True,
            "registration_per_address": {"per_second": 0.01, "burst_count": 2},
        }
    }

    async def test_registration_is_rate_limited(self):
        # Challenges do not count: only completed registrations use up the bucket.
        for _ in range(3):
            await self.start_uia()
        await self.register("alice")
        await self.register("bob")
        r = await self.post_register({"username": "carol", "password": PASSWORD, "auth": DUMMY})
        body = self.assertError(r, 429, "M_LIMIT_EXCEEDED")
        self.assertIsInstance(body["retry_after_ms"], int)
        self.assertGreater(body["retry_after_ms"], 0)
        retry_after = r.header("Retry-After")
        self.assertIsNotNone(retry_after)
        self.assertRegex(retry_after, r"^[0-9]+$")
        self.assertGreaterEqual(int(retry_after) * 1000, body["retry_after_ms"])
        # Nothing was created by the refused request.
        r = await self.request(
            "POST",
            "/_matrix/client/v3/login",
            {"type": "m.login.password", "user": "carol", "password": PASSWORD},
        )
        self.assertError(r, 403, "M_FORBIDDEN")
