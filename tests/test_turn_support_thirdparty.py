"""TURN credentials, server support contacts and third-party lookups.

Spec: client-server API "Voice over IP" (GET /voip/turnServer), "Server support discovery"
(GET /.well-known/matrix/support) and "Third-party Networks" (GET /thirdparty/...), over real
HTTP on both engines.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path

from twisted.trial import unittest

from homeserver.config import ConfigError
from tests.harness import SERVER_NAME, HomeserverTestCase, make_config, on_both_engines

API = "/_matrix/client/v3"
TURN_URIS = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:443?transport=tcp"]


@on_both_engines
class TurnServer(HomeserverTestCase):
    async def token(self) -> str:
        return (await self.register("alice"))["access_token"]

    async def test_without_turn_configured_answers_empty(self):
        r = await self.request("GET", f"{API}/voip/turnServer", token=await self.token())
        self.assertEqual((r.code, r.json), (200, {}))

    async def test_needs_an_access_token(self):
        r = await self.request("GET", f"{API}/voip/turnServer")
        self.assertError(r, 401, "M_MISSING_TOKEN")
        r = await self.request("GET", f"{API}/voip/turnServer", token="not-a-token")
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    async def test_shared_secret_gives_coturn_rest_credentials(self):
        await self.start_server(
            turn={"uris": TURN_URIS, "shared_secret": "s3cret", "user_lifetime_ms": 86_400_000}
        )
        before = int(time.time())
        r = await self.request("GET", f"{API}/voip/turnServer", token=await self.token())
        self.assertEqual(r.code, 200, r)
        body = r.json
        self.assertEqual((body["uris"], body["ttl"]), (TURN_URIS, 86_400))
        expiry, user_id = body["username"].split(":", 1)
        self.assertEqual(user_id, f"@alice:{SERVER_NAME}")
        self.assertTrue(before + 86_400 <= int(expiry) <= int(time.time()) + 86_400)
        mac = hmac.new(b"s3cret", body["username"].encode(), hashlib.sha1).digest()
        self.assertEqual(body["password"], base64.b64encode(mac).decode())

    async def test_static_username_and_password(self):
        await self.start_server(turn={"uris": TURN_URIS, "username": "u", "password": "p"})
        r = await self.request("GET", f"{API}/voip/turnServer", token=await self.token())
        self.assertEqual(
            (r.code, r.json),
            (200, {"username": "u", "password": "p", "ttl": 3600, "uris": TURN_URIS}),
        )

    async def test_guests_only_when_allowed(self):
        # This server registers no guests; an account imported as one (Synapse's guests
        # carry over) is made here by flagging it.
        await self.start_server(
            turn={"uris": TURN_URIS, "username": "u", "password": "p", "allow_guests": False}
        )
        token = await self.token()
        await self.hs.db.run_interaction(
            "make_guest",
            lambda txn: txn.execute(
                "UPDATE users SET is_guest = ? WHERE user_id = ?", (True, f"@alice:{SERVER_NAME}")
            ),
        )
        self.hs.tokens.forget_user(f"@alice:{SERVER_NAME}")
        r = await self.request("GET", f"{API}/voip/turnServer", token=token)
        self.assertError(r, 403, "M_GUEST_ACCESS_FORBIDDEN")

    async def test_uris_without_credentials_answer_empty(self):
        await self.start_server(turn={"uris": TURN_URIS})
        r = await self.request("GET", f"{API}/voip/turnServer", token=await self.token())
        self.assertEqual((r.code, r.json), (200, {}))


class TurnAndSupportConfig(unittest.TestCase):
    def data_dir(self) -> Path:
        path = Path(self.mktemp())
        path.mkdir(parents=True)
        return path

    def test_a_uri_that_is_not_turn_is_refused(self):
        with self.assertRaises(ConfigError):
            make_config("sqlite", self.data_dir(), turn={"uris": ["stun:stun.example.org"]})

    def test_a_contact_with_no_way_to_reach_is_refused(self):
        with self.assertRaises(ConfigError):
            make_config("sqlite", self.data_dir(), support={"contacts": [{"role": "m.role.admin"}]})


@on_both_engines
class SupportWellKnown(HomeserverTestCase):
    async def test_404_when_unconfigured(self):
        r = await self.request("GET", "/.well-known/matrix/support")
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_contacts_and_page(self):
        contacts = [
            {
                "matrix_id": "@admin:example.org",
                "email_address": "a@example.org",
                "role": "m.role.admin",
            },
            {"email_address": "security@example.org", "role": "m.role.security"},
        ]
        page = "https://example.org/support.html"
        await self.start_server(support={"contacts": contacts, "support_page": page})
        r = await self.request("GET", "/.well-known/matrix/support")
        self.assertEqual((r.code, r.json), (200, {"contacts": contacts, "support_page": page}))

    async def test_page_only(self):
        await self.start_server(support={"support_page": "https://example.org/help"})
        r = await self.request("GET", "/.well-known/matrix/support")
        self.assertEqual((r.code, r.json), (200, {"support_page": "https://example.org/help"}))


@on_both_engines
class ThirdPartyLookups(HomeserverTestCase):
    async def test_no_protocols_and_nothing_found(self):
        token = (await self.register("alice"))["access_token"]
        r = await self.request("GET", f"{API}/thirdparty/protocols", token=token)
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.request("GET", f"{API}/thirdparty/protocol/irc", token=token)
        self.assertError(r, 404, "M_NOT_FOUND")
        for path in (
            "/thirdparty/location/irc?channel=%23matrix",
            "/thirdparty/user/irc?nick=bob",
            "/thirdparty/location?alias=%23matrix:example.org",
            "/thirdparty/user?userid=@bob:example.org",
        ):
            r = await self.request("GET", API + path, token=token)
            self.assertEqual((r.code, r.json), (200, []), path)

    async def test_reverse_lookups_need_their_parameter(self):
        token = (await self.register("alice"))["access_token"]
        for path in ("/thirdparty/location", "/thirdparty/user"):
            r = await self.request("GET", API + path, token=token)
            self.assertError(r, 400, "M_MISSING_PARAM")

    async def test_need_an_access_token(self):
        for path in ("/thirdparty/protocols", "/thirdparty/protocol/irc", "/thirdparty/user/irc"):
            r = await self.request("GET", API + path)
            self.assertError(r, 401, "M_MISSING_TOKEN")
