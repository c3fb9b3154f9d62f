"""Access tokens and refresh tokens: issuing, validating, expiring, refreshing, revoking.

Spec: client-server API, "Using access tokens", "Relationship between access tokens and
devices", "Refreshing access tokens", "Soft logout"; api/client-server/refresh.yaml, logout.yaml.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import jwt
from nio import AsyncClient, LoginResponse, LogoutResponse, WhoamiError, WhoamiResponse
from twisted.internet import defer, reactor, task

from tests.harness import SERVER_NAME, HomeserverTestCase, Response, nio, on_both_engines

PASSWORD = "correct horse battery"
WHOAMI = "/_matrix/client/v3/account/whoami"
REFRESH = "/_matrix/client/v3/refresh"
DEFAULT_ACCESS_LIFETIME_MS = 15 * 60 * 1000


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """An `alg: none` JWT: what an attacker sends hoping the signature is not checked."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


class TokenAssertions:
    async def whoami(self, token: str) -> Response:
        return await self.request("GET", WHOAMI, token=token)

    async def assertTokenWorks(
        self, token: str, user_id: str, device_id: str | None = None
    ) -> None:
        r = await self.whoami(token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], user_id)
        if device_id is not None:
            self.assertEqual(r.json["device_id"], device_id)

    async def assertTokenRevoked(self, token: str) -> dict[str, Any]:
        """401 M_UNKNOWN_TOKEN without soft_logout: the session is gone for good."""
        body = self.assertError(await self.whoami(token), 401, "M_UNKNOWN_TOKEN")
        self.assertIs(body.get("soft_logout", False), False, body)
        return body

    async def assertTokenSoftLoggedOut(self, token: str) -> dict[str, Any]:
        body = self.assertError(await self.whoami(token), 401, "M_UNKNOWN_TOKEN")
        self.assertIs(body.get("soft_logout"), True, body)
        return body

    async def refresh(self, refresh_token: Any) -> Response:
        return await self.request("POST", REFRESH, {"refresh_token": refresh_token})

    async def refresh_ok(self, refresh_token: str) -> dict[str, Any]:
        r = await self.refresh(refresh_token)
        self.assertEqual(r.code, 200, r)
        self.assertIsInstance(r.json["access_token"], str)
        self.assertIsInstance(r.json["refresh_token"], str)
        self.assertIsInstance(r.json["expires_in_ms"], int)
        return r.json


@on_both_engines
class AccessTokenTests(TokenAssertions, HomeserverTestCase):
    async def test_many_first_uses_at_once_all_succeed(self):
        """A new token used by many requests at once (a client opening its connections):
        each marks it used, and none of them fails for racing the others."""
        session = await self.register("alice")
        # Straight to the handler, so the first uses really overlap (not sent one by one).
        requesters = await defer.gatherResults([
            defer.ensureDeferred(self.hs.tokens.validate(session["access_token"]))
            for _ in range(50)
        ])
        self.assertEqual({r.user_id for r in requesters}, {session["user_id"]})

    async def test_nio_login_whoami_logout(self):
        await self.register("alice")
        client = AsyncClient(self.base_url, "@alice:test.heddle")
        self.addCleanup(lambda: nio(client.close()))
        login = await nio(client.login(PASSWORD, device_name="nio device"))
        self.assertIsInstance(login, LoginResponse)
        self.assertEqual(login.user_id, "@alice:test.heddle")
        self.assertTrue(login.device_id)
        token = login.access_token

        who = await nio(client.whoami())
        self.assertIsInstance(who, WhoamiResponse)
        self.assertEqual(who.user_id, "@alice:test.heddle")
        self.assertEqual(who.device_id, login.device_id)
        self.assertIs(who.is_guest, False)

        out = await nio(client.logout())
        self.assertIsInstance(out, LogoutResponse)
        # The token is dead, and so is the device (logout.yaml: "The device associated with
        # the access token is also deleted").
        await self.assertTokenRevoked(token)
        client.access_token = token
        who = await nio(client.whoami())
        self.assertIsInstance(who, WhoamiError)
        self.assertEqual(who.status_code, "M_UNKNOWN_TOKEN")
        self.assertIs(who.soft_logout, False)
        other = await self.login("alice")
        r = await self.request("GET", "/_matrix/client/v3/devices", token=other["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertNotIn(login.device_id, [d["device_id"] for d in r.json["devices"]])

    async def test_non_refreshing_token_never_expires(self):
        await self.register("alice")
        session = await self.login("alice")
        self.assertNotIn("refresh_token", session)
        self.assertNotIn("expires_in_ms", session)
        claims = claims_of(session["access_token"])
        self.assertNotIn("exp", claims)
        self.assertEqual(claims["iss"], SERVER_NAME)
        self.assertEqual(claims["sub"], "@alice:test.heddle")
        self.assertEqual(claims["dev"], session["device_id"])
        self.assertIsInstance(claims["jti"], str)
        self.assertIsInstance(claims["iat"], int)
        await self.assertTokenWorks(
            session["access_token"], "@alice:test.heddle", session["device_id"]
        )

    async def test_register_without_refresh_gets_non_expiring_token(self):
        body = await self.register("alice")
        self.assertNotIn("refresh_token", body)
        self.assertNotIn("expires_in_ms", body)
        self.assertNotIn("exp", claims_of(body["access_token"]))

    async def test_refreshing_login_issues_expiring_token(self):
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        self.assertIsInstance(session["refresh_token"], str)
        self.assertEqual(session["expires_in_ms"], DEFAULT_ACCESS_LIFETIME_MS)
        claims = claims_of(session["access_token"])
        self.assertIn("exp", claims)
        lifetime_s = claims["exp"] - claims["iat"]
        self.assertTrue(
            DEFAULT_ACCESS_LIFETIME_MS // 1000
            <= lifetime_s
            <= DEFAULT_ACCESS_LIFETIME_MS // 1000 + 2,
            claims,
        )
        await self.assertTokenWorks(
            session["access_token"], "@alice:test.heddle", session["device_id"]
        )

    async def test_register_with_refresh_token(self):
        body = await self.register("alice", refresh_token=True)
        self.assertIsInstance(body["refresh_token"], str)
        self.assertEqual(body["expires_in_ms"], DEFAULT_ACCESS_LIFETIME_MS)
        new = await self.refresh_ok(body["refresh_token"])
        await self.assertTokenWorks(new["access_token"], "@alice:test.heddle", body["device_id"])

    async def test_missing_token(self):
        body = self.assertError(await self.request("GET", WHOAMI), 401, "M_MISSING_TOKEN")
        self.assertNotIn("soft_logout", body)

    async def test_non_bearer_authorization_header(self):
        r = await self.request("GET", WHOAMI, headers={"Authorization": "Basic YWxpY2U6cHc="})
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_garbage_tokens(self):
        for token in ("garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9..", "hrt_abc_def", "x" * 2000):
            await self.assertTokenRevoked(token)

    async def test_access_token_in_query_string(self):
        # Deprecated, but "Homeservers MUST support both methods".
        await self.register("alice")
        session = await self.login("alice")
        r = await self.request("GET", f"{WHOAMI}?access_token={session['access_token']}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["device_id"], session["device_id"])
        r = await self.request("GET", f"{WHOAMI}?access_token=nonsense")
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    async def test_token_signed_with_another_secret(self):
        await self.register("alice")
        session = await self.login("alice")
        claims = claims_of(session["access_token"])
        forged = jwt.encode(claims, "some-other-secret-" + "y" * 32, algorithm="HS256")
        await self.assertTokenRevoked(forged)
        # The same claims with the server's own secret but another algorithm: not accepted.
        other_alg = jwt.encode(claims, self.hs.config.auth.jwt_secret, algorithm="HS512")
        await self.assertTokenRevoked(other_alg)
        # The genuine token is unaffected.
        await self.assertTokenWorks(session["access_token"], "@alice:test.heddle")

    async def test_unsigned_token(self):
        await self.register("alice")
        session = await self.login("alice")
        forged = unsigned_jwt(claims_of(session["access_token"]))
        await self.assertTokenRevoked(forged)

    async def test_tampered_claims(self):
        await self.register("alice")
        await self.register("bob")
        session = await self.login("alice")
        header, payload, signature = session["access_token"].split(".")
        claims = claims_of(session["access_token"])
        claims["sub"] = "@bob:test.heddle"
        tampered = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
        await self.assertTokenRevoked(tampered)

    async def test_signed_token_needs_its_database_row(self):
        """A correctly signed JWT is not enough: the `jti` row must exist and match."""
        await self.register("alice")
        await self.register("bob")
        session = await self.login("alice")
        secret = self.hs.config.auth.jwt_secret
        claims = claims_of(session["access_token"])
        unknown_jti = {**claims, "jti": secrets.token_urlsafe(18)}
        await self.assertTokenRevoked(jwt.encode(unknown_jti, secret, algorithm="HS256"))
        # Alice's real token ID, but claiming to be Bob, or another device.
        as_bob = {**claims, "sub": "@bob:test.heddle"}
        await self.assertTokenRevoked(jwt.encode(as_bob, secret, algorithm="HS256"))
        other_device = {**claims, "dev": "OTHERDEVICE"}
        await self.assertTokenRevoked(jwt.encode(other_device, secret, algorithm="HS256"))
        no_jti = {k: v for k, v in claims.items() if k != "jti"}
        await self.assertTokenRevoked(jwt.encode(no_jti, secret, algorithm="HS256"))
        await self.assertTokenWorks(session["access_token"], "@alice:test.heddle")

    async def test_logout_revokes_token_and_deletes_device(self):
        await self.register("alice")
        first = await self.login("alice")
        second = await self.login("alice")
        await self.assertTokenWorks(first["access_token"], "@alice:test.heddle")
        r = await self.request("POST", "/_matrix/client/v3/logout", token=first["access_token"])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})
        await self.assertTokenRevoked(first["access_token"])
        # Logging out twice: the token is already gone.
        r = await self.request("POST", "/_matrix/client/v3/logout", token=first["access_token"])
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        # Other sessions are untouched; the logged-out device is gone.
        await self.assertTokenWorks(
            second["access_token"], "@alice:test.heddle", second["device_id"]
        )
        r = await self.request(
            "GET", f"/_matrix/client/v3/devices/{first['device_id']}", token=second["access_token"]
        )
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_logout_revokes_refresh_token(self):
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        r = await self.request("POST", "/_matrix/client/v3/logout", token=session["access_token"])
        self.assertEqual(r.code, 200, r)
        body = self.assertError(
            await self.refresh(session["refresh_token"]), 401, "M_UNKNOWN_TOKEN"
        )
        self.assertIs(body.get("soft_logout", False), False)

    async def test_logout_all(self):
        await self.register("alice")
        await self.register("bob")
        sessions = [await self.login("alice") for _ in range(2)]
        refreshing = await self.login("alice", refresh_token=True)
        bob = await self.login("bob")
        r = await self.request(
            "POST", "/_matrix/client/v3/logout/all", token=sessions[0]["access_token"]
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})
        for session in [*sessions, refreshing]:
            await self.assertTokenRevoked(session["access_token"])
        self.assertError(await self.refresh(refreshing["refresh_token"]), 401, "M_UNKNOWN_TOKEN")
        # Every device of Alice's is gone; Bob is unaffected.
        fresh = await self.login("alice")
        r = await self.request("GET", "/_matrix/client/v3/devices", token=fresh["access_token"])
        self.assertEqual([d["device_id"] for d in r.json["devices"]], [fresh["device_id"]])
        await self.assertTokenWorks(bob["access_token"], "@bob:test.heddle")

    async def test_nio_logout_all(self):
        await self.register("alice")
        other = await self.login("alice")
        client = AsyncClient(self.base_url, "@alice:test.heddle")
        self.addCleanup(lambda: nio(client.close()))
        self.assertIsInstance(await nio(client.login(PASSWORD)), LoginResponse)
        token = client.access_token
        self.assertIsInstance(await nio(client.logout(all_devices=True)), LogoutResponse)
        await self.assertTokenRevoked(token)
        await self.assertTokenRevoked(other["access_token"])

    async def test_login_with_existing_device_id_revokes_its_tokens(self):
        """Spec: if the client sets the device_id, the server invalidates any access and
        refresh tokens previously assigned to that device."""
        await self.register("alice", inhibit_login=True)
        first = await self.login("alice", device_id="PHONE", refresh_token=True)
        self.assertEqual(first["device_id"], "PHONE")
        await self.assertTokenWorks(first["access_token"], "@alice:test.heddle", "PHONE")
        second = await self.login("alice", device_id="PHONE")
        self.assertEqual(second["device_id"], "PHONE")
        await self.assertTokenRevoked(first["access_token"])
        self.assertError(await self.refresh(first["refresh_token"]), 401, "M_UNKNOWN_TOKEN")
        await self.assertTokenWorks(second["access_token"], "@alice:test.heddle", "PHONE")
        r = await self.request("GET", "/_matrix/client/v3/devices", token=second["access_token"])
        self.assertEqual([d["device_id"] for d in r.json["devices"]], ["PHONE"])

    async def test_same_device_id_for_two_users_is_independent(self):
        await self.register("alice")
        await self.register("bob")
        alice = await self.login("alice", device_id="SHARED")
        bob = await self.login("bob", device_id="SHARED")
        await self.assertTokenWorks(alice["access_token"], "@alice:test.heddle", "SHARED")
        await self.assertTokenWorks(bob["access_token"], "@bob:test.heddle", "SHARED")


@on_both_engines
class RefreshTokenTests(TokenAssertions, HomeserverTestCase):
    async def test_refresh_returns_working_pair(self):
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        new = await self.refresh_ok(session["refresh_token"])
        self.assertEqual(new["expires_in_ms"], DEFAULT_ACCESS_LIFETIME_MS)
        self.assertNotEqual(new["access_token"], session["access_token"])
        self.assertNotEqual(new["refresh_token"], session["refresh_token"])
        # The new tokens are bound to the same device.
        await self.assertTokenWorks(new["access_token"], "@alice:test.heddle", session["device_id"])
        claims = claims_of(new["access_token"])
        self.assertEqual(claims["dev"], session["device_id"])
        self.assertIn("exp", claims)
        # And the new refresh token refreshes again.
        newer = await self.refresh_ok(new["refresh_token"])
        await self.assertTokenWorks(
            newer["access_token"], "@alice:test.heddle", session["device_id"]
        )

    async def test_refresh_needs_no_access_token(self):
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        # A bogus Authorization header is irrelevant: /refresh authenticates by refresh token.
        r = await self.request(
            "POST", REFRESH, {"refresh_token": session["refresh_token"]}, token="nonsense"
        )
        self.assertEqual(r.code, 200, r)

    async def test_refresh_with_unknown_token(self):
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        for bad in ("hrt_unknown_token", "nonsense", "", session["access_token"]):
            body = self.assertError(await self.refresh(bad), 401, "M_UNKNOWN_TOKEN")
            self.assertIs(body.get("soft_logout", False), False, body)
        # None of that hurt the real session.
        await self.refresh_ok(session["refresh_token"])

    async def test_refresh_bad_body(self):
        self.assertError(await self.request("POST", REFRESH, {}), 400, "M_BAD_JSON")
        self.assertError(await self.refresh(12), 400, "M_BAD_JSON")
        self.assertError(await self.refresh(None), 400, "M_BAD_JSON")
        r = await self.request("POST", REFRESH, raw=b"{not json")
        self.assertError(r, 400, "M_NOT_JSON")

    async def test_login_refresh_token_flag_must_be_boolean(self):
        await self.register("alice")
        r = await self.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": PASSWORD,
                "refresh_token": "true",
            },
        )
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_old_access_token_valid_until_new_tokens_are_used(self):
        """Like the old refresh token, the old access token keeps working until the client
        shows it has the new pair (a client that lost the response must not be left with
        nothing); once the new access token is used, the old one is revoked."""
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        # Validated (and cached) before the refresh: the revocation must still apply.
        await self.assertTokenWorks(session["access_token"], "@alice:test.heddle")
        new = await self.refresh_ok(session["refresh_token"])
        await self.assertTokenWorks(session["access_token"], "@alice:test.heddle")
        await self.assertTokenWorks(new["access_token"], "@alice:test.heddle", session["device_id"])
        await self.assertTokenRevoked(session["access_token"])
        await self.assertTokenWorks(new["access_token"], "@alice:test.heddle")

    async def test_old_access_token_revoked_when_new_refresh_token_is_used(self):
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        new = await self.refresh_ok(session["refresh_token"])
        newer = await self.refresh_ok(new["refresh_token"])
        await self.assertTokenRevoked(session["access_token"])
        # The middle pair is the newest one's predecessor: it lives until that is used.
        await self.assertTokenWorks(new["access_token"], "@alice:test.heddle")
        await self.assertTokenWorks(newer["access_token"], "@alice:test.heddle")
        await self.assertTokenRevoked(new["access_token"])

    async def test_refresh_repeatable_until_new_tokens_are_used(self):
        """The old refresh token stays valid until the new access or refresh token is used,
        so a client that lost the response can repeat the refresh."""
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        first = await self.refresh_ok(session["refresh_token"])
        # The response was "lost": refresh again with the same token.
        second = await self.refresh_ok(session["refresh_token"])
        self.assertNotEqual(second["access_token"], first["access_token"])
        self.assertNotEqual(second["refresh_token"], first["refresh_token"])
        third = await self.refresh_ok(session["refresh_token"])
        # The latest pair works.
        await self.assertTokenWorks(
            third["access_token"], "@alice:test.heddle", session["device_id"]
        )

    async def test_reuse_after_new_access_token_used_revokes_session(self):
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        new = await self.refresh_ok(session["refresh_token"])
        await self.assertTokenWorks(new["access_token"], "@alice:test.heddle", session["device_id"])
        # The old refresh token is now retired; presenting it means it leaked.
        body = self.assertError(
            await self.refresh(session["refresh_token"]), 401, "M_UNKNOWN_TOKEN"
        )
        self.assertIs(body.get("soft_logout", False), False, body)
        # The whole device session is revoked: the newest access and refresh tokens too.
        await self.assertTokenRevoked(new["access_token"])
        await self.assertTokenRevoked(session["access_token"])
        self.assertError(await self.refresh(new["refresh_token"]), 401, "M_UNKNOWN_TOKEN")

    async def test_reuse_after_new_refresh_token_used_revokes_session(self):
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        new = await self.refresh_ok(session["refresh_token"])
        # Using the new refresh token (without ever using the new access token) retires the old.
        newer = await self.refresh_ok(new["refresh_token"])
        await self.assertTokenWorks(
            newer["access_token"], "@alice:test.heddle", session["device_id"]
        )
        self.assertError(await self.refresh(session["refresh_token"]), 401, "M_UNKNOWN_TOKEN")
        await self.assertTokenRevoked(newer["access_token"])
        self.assertError(await self.refresh(newer["refresh_token"]), 401, "M_UNKNOWN_TOKEN")

    async def test_reuse_after_repeated_refresh_revokes_session(self):
        """A repeated refresh's successor, once used, retires the shared predecessor."""
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        await self.refresh_ok(session["refresh_token"])
        second = await self.refresh_ok(session["refresh_token"])
        await self.assertTokenWorks(second["access_token"], "@alice:test.heddle")
        self.assertError(await self.refresh(session["refresh_token"]), 401, "M_UNKNOWN_TOKEN")
        await self.assertTokenRevoked(second["access_token"])

    async def test_reuse_revokes_only_that_device(self):
        await self.register("alice")
        leaked = await self.login("alice", refresh_token=True)
        other = await self.login("alice", refresh_token=True)
        new = await self.refresh_ok(leaked["refresh_token"])
        await self.assertTokenWorks(new["access_token"], "@alice:test.heddle")
        self.assertError(await self.refresh(leaked["refresh_token"]), 401, "M_UNKNOWN_TOKEN")
        await self.assertTokenRevoked(new["access_token"])
        await self.assertTokenWorks(other["access_token"], "@alice:test.heddle", other["device_id"])
        await self.refresh_ok(other["refresh_token"])

    async def test_refresh_after_device_deleted(self):
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        keeper = await self.login("alice")
        r = await self.request(
            "POST",
            "/_matrix/client/v3/delete_devices",
            {
                "devices": [session["device_id"]],
                "auth": {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "alice"},
                    "password": PASSWORD,
                },
            },
            token=keeper["access_token"],
        )
        self.assertEqual(r.code, 200, r)
        self.assertError(await self.refresh(session["refresh_token"]), 401, "M_UNKNOWN_TOKEN")


@on_both_engines
class TokenExpiryTests(TokenAssertions, HomeserverTestCase):
    config_overrides = {"auth": {"access_token_lifetime_ms": 1000}}

    async def test_expired_access_token_is_soft_logout(self):
        await self.register("alice")
        used = await self.login("alice", refresh_token=True)
        unused = await self.login("alice", refresh_token=True)
        forever = await self.login("alice")
        self.assertEqual(used["expires_in_ms"], 1000)
        # One token is validated (and so cached) before it expires, the other never is.
        await self.assertTokenWorks(used["access_token"], "@alice:test.heddle", used["device_id"])
        await sleep(1.2)
        await self.assertTokenSoftLoggedOut(used["access_token"])
        await self.assertTokenSoftLoggedOut(unused["access_token"])
        # Tokens issued without refresh support do not expire.
        await self.assertTokenWorks(forever["access_token"], "@alice:test.heddle")
        # The refresh token outlives the access token and gets the session going again.
        new = await self.refresh_ok(used["refresh_token"])
        self.assertEqual(new["expires_in_ms"], 1000)
        await self.assertTokenWorks(new["access_token"], "@alice:test.heddle", used["device_id"])
        # The device survived its token's expiry.
        r = await self.request("GET", "/_matrix/client/v3/devices", token=forever["access_token"])
        self.assertIn(used["device_id"], [d["device_id"] for d in r.json["devices"]])

    async def test_soft_logged_out_client_can_log_in_to_same_device(self):
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        await sleep(1.2)
        await self.assertTokenSoftLoggedOut(session["access_token"])
        again = await self.login("alice", device_id=session["device_id"])
        self.assertEqual(again["device_id"], session["device_id"])
        await self.assertTokenWorks(
            again["access_token"], "@alice:test.heddle", session["device_id"]
        )

    async def test_expired_refresh_token_is_soft_logout(self):
        await self.start_server(
            auth={"access_token_lifetime_ms": 1000, "refresh_token_lifetime_ms": 1000}
        )
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        await sleep(1.2)
        body = self.assertError(
            await self.refresh(session["refresh_token"]), 401, "M_UNKNOWN_TOKEN"
        )
        self.assertIs(body.get("soft_logout"), True, body)
        await self.assertTokenSoftLoggedOut(session["access_token"])
