"""Logging in from an existing session: POST /login/get_token and the m.login.token flow.

Over real HTTP on loopback, on both database engines.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task

from tests.harness import HomeserverTestCase, on_both_engines, password_auth

GET_TOKEN = "/_matrix/client/v1/login/get_token"
LOGIN = "/_matrix/client/v3/login"
CAPABILITIES = "/_matrix/client/v3/capabilities"
ENABLED = {"auth": {"login_via_existing_session": {"enabled": True}}}


def token_login(token: Any) -> dict[str, Any]:
    return {"type": "m.login.token", "token": token}


class LoginTokenHelpers(HomeserverTestCase):
    async def get_token(self, access_token: str) -> dict[str, Any]:
        """A login token, through the password challenge."""
        r = await self.request("POST", GET_TOKEN, {}, token=access_token)
        self.assertEqual(r.code, 401, r)  # type: ignore[attr-defined]
        session = r.json["session"]
        self.assertEqual(r.json["flows"], [{"stages": ["m.login.password"]}])  # type: ignore[attr-defined]
        r = await self.request(
            "POST", GET_TOKEN, {"auth": password_auth("alice", session=session)}, token=access_token
        )
        self.assertEqual(r.code, 200, r)  # type: ignore[attr-defined]
        return r.json


@on_both_engines
class LoginTokenTests(LoginTokenHelpers):
    config_overrides = ENABLED

    async def test_flow_and_capability_are_advertised(self):
        r = await self.request("GET", LOGIN)
        self.assertIn({"type": "m.login.token", "get_login_token": True}, r.json["flows"])
        alice = await self.register("alice")
        r = await self.request("GET", CAPABILITIES, token=alice["access_token"])
        self.assertEqual(r.json["capabilities"]["m.get_login_token"], {"enabled": True})

    async def test_token_logs_in_a_new_device_once(self):
        alice = await self.register("alice")
        issued = await self.get_token(alice["access_token"])
        self.assertEqual(issued["expires_in_ms"], 300_000)
        r = await self.request("POST", LOGIN, token_login(issued["login_token"]))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], alice["user_id"])
        self.assertNotEqual(r.json["device_id"], alice["device_id"])
        whoami = await self.request(
            "GET", "/_matrix/client/v3/account/whoami", token=r.json["access_token"]
        )
        self.assertEqual(whoami.json["user_id"], alice["user_id"])
        # Single use: the same token again is refused.
        r = await self.request("POST", LOGIN, token_login(issued["login_token"]))
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_every_token_needs_its_own_password_check(self):
        alice = await self.register("alice")
        await self.get_token(alice["access_token"])
        r = await self.request("POST", GET_TOKEN, {}, token=alice["access_token"])
        self.assertEqual(r.code, 401, r)

    async def test_wrong_password_gets_no_token(self):
        alice = await self.register("alice")
        r = await self.request("POST", GET_TOKEN, {}, token=alice["access_token"])
        auth = password_auth("alice", "wrong password", session=r.json["session"])
        r = await self.request("POST", GET_TOKEN, {"auth": auth}, token=alice["access_token"])
        self.assertEqual(r.code, 401, r)
        self.assertEqual(r.json["errcode"], "M_FORBIDDEN")

    async def test_unknown_and_malformed_tokens(self):
        r = await self.request("POST", LOGIN, token_login("hlt_not-a-token"))
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("POST", LOGIN, token_login(42))
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("POST", LOGIN, {"type": "m.login.token"})
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_needs_an_access_token(self):
        r = await self.request("POST", GET_TOKEN, {})
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_deactivated_user_cannot_use_an_earlier_token(self):
        alice = await self.register("alice")
        issued = await self.get_token(alice["access_token"])
        r = await self.request(
            "POST", "/_matrix/client/v3/account/deactivate", {}, token=alice["access_token"]
        )
        auth = password_auth("alice", session=r.json["session"])
        r = await self.request(
            "POST",
            "/_matrix/client/v3/account/deactivate",
            {"auth": auth},
            token=alice["access_token"],
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("POST", LOGIN, token_login(issued["login_token"]))
        self.assertError(r, 403, "M_USER_DEACTIVATED")


@on_both_engines
class LoginTokenExpiryTests(LoginTokenHelpers):
    config_overrides = {
        "auth": {"login_via_existing_session": {"enabled": True, "token_timeout_ms": 1000}}
    }

    async def test_expired_token_is_refused(self):
        alice = await self.register("alice")
        issued = await self.get_token(alice["access_token"])
        self.assertEqual(issued["expires_in_ms"], 1000)
        await task.deferLater(reactor, 1.1, lambda: None)
        r = await self.request("POST", LOGIN, token_login(issued["login_token"]))
        body = self.assertError(r, 403, "M_FORBIDDEN")
        self.assertIn("expired", body["error"])


@on_both_engines
class LoginTokenWithoutUiaTests(LoginTokenHelpers):
    config_overrides = {
        "auth": {"login_via_existing_session": {"enabled": True, "require_ui_auth": False}},
        "rate_limits": {"enabled": True},
    }

    async def test_no_password_needed_but_rate_limited(self):
        alice = await self.register("alice")
        r = await self.request("POST", GET_TOKEN, {}, token=alice["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertTrue(r.json["login_token"])
        # One a minute per user.
        r = await self.request("POST", GET_TOKEN, {}, token=alice["access_token"])
        self.assertError(r, 429, "M_LIMIT_EXCEEDED")


@on_both_engines
class LoginTokenDisabledTests(LoginTokenHelpers):
    async def test_disabled_by_default(self):
        r = await self.request("GET", LOGIN)
        self.assertEqual([f["type"] for f in r.json["flows"]], ["m.login.password"])
        alice = await self.register("alice")
        r = await self.request("GET", CAPABILITIES, token=alice["access_token"])
        self.assertEqual(r.json["capabilities"]["m.get_login_token"], {"enabled": False})
        r = await self.request("POST", GET_TOKEN, {}, token=alice["access_token"])
        self.assertError(r, 400, "M_FORBIDDEN")
        r = await self.request("POST", LOGIN, token_login("hlt_anything"))
        self.assertError(r, 400, "M_UNKNOWN")
