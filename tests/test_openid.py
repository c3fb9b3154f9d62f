"""OpenID tokens: requested through the client API, exchanged over federation for the user's
ID (spec: client-server "OpenID", server-server "OpenID"), on both engines over real HTTP,
and between two Heddles.
"""

from __future__ import annotations

from federation.errors import HttpResponseError
from homeserver.auth.openid import OPENID_TOKEN_LIFETIME_MS
from homeserver.errors import MatrixError
from tests.federation_helpers import API, FederationTestCase, q
from tests.harness import SERVER_NAME, HomeserverTestCase, ensure_deferred, on_both_engines

USERINFO = "/_matrix/federation/v1/openid/userinfo"


@on_both_engines
class RequestToken(HomeserverTestCase):
    async def test_token_for_oneself(self):
        alice = await self.register("alice")
        r = await self.request(
            "POST",
            f"{API}/user/{q(alice['user_id'])}/openid/request_token",
            {},
            token=alice["access_token"],
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["token_type"], "Bearer")
        self.assertEqual(r.json["matrix_server_name"], SERVER_NAME)
        self.assertEqual(r.json["expires_in"], 3600)
        self.assertEqual(
            await self.hs.openid.user_for_token(r.json["access_token"]), alice["user_id"]
        )
        # It is not an access token for the client API.
        r = await self.request("GET", f"{API}/account/whoami", token=r.json["access_token"])
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    async def test_not_for_another_user(self):
        alice = await self.register("alice")
        bob = await self.register("bob")
        r = await self.request(
            "POST",
            f"{API}/user/{q(bob['user_id'])}/openid/request_token",
            {},
            token=alice["access_token"],
        )
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_needs_auth_and_an_object(self):
        alice = await self.register("alice")
        path = f"{API}/user/{q(alice['user_id'])}/openid/request_token"
        r = await self.request("POST", path, {})
        self.assertError(r, 401, "M_MISSING_TOKEN")
        r = await self.request("POST", path, [], token=alice["access_token"])
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_expired_token_is_unknown(self):
        alice = await self.register("alice")
        body = await self.hs.openid.request_token(
            await self.hs.tokens.validate(alice["access_token"]), alice["user_id"]
        )
        real_time = self.hs.clock.time_msec
        self.patch(
            self.hs.openid._clock, "time_msec", lambda: real_time() + OPENID_TOKEN_LIFETIME_MS + 1
        )
        with self.assertRaises(MatrixError) as cm:
            await self.hs.openid.user_for_token(body["access_token"])
        self.assertEqual((cm.exception.http_code, cm.exception.errcode), (401, "M_UNKNOWN_TOKEN"))


@on_both_engines
class UserInfoOverFederation(FederationTestCase):
    @ensure_deferred
    async def test_other_server_learns_who_made_the_token(self):
        a, b, alice, bob = await self.two_peers()
        r = await self.user_call(
            alice, "POST", f"{API}/user/{q(alice.user_id)}/openid/request_token", {}
        )
        self.assertEqual(r.code, 200, r)
        token = r.json["access_token"]
        self.assertEqual(r.json["matrix_server_name"], a.server_name)
        # B asks A, as an integration manager would (no X-Matrix signature needed).
        client = b.hs.federation_client
        body = await client.get_json(
            a.server_name, USERINFO, {"access_token": [token]}, signed=False
        )
        self.assertEqual(body, {"sub": alice.user_id})
        for bad in ("not-a-token", token + "x"):
            with self.assertRaises(HttpResponseError) as cm:
                await client.get_json(
                    a.server_name, USERINFO, {"access_token": [bad]}, signed=False
                )
            self.assertEqual(cm.exception.code, 401)
            self.assertEqual(cm.exception.errcode, "M_UNKNOWN_TOKEN")
        with self.assertRaises(HttpResponseError) as cm:
            await client.get_json(a.server_name, USERINFO, signed=False)
        self.assertEqual(cm.exception.code, 400)
