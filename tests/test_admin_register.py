"""Shared-secret admin registration (Synapse's `/_synapse/admin/v1/register`) and the
metrics listener (`/health`, `/metrics`)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from twisted.internet.task import Clock as FakeReactor
from twisted.trial import unittest

from homeserver.auth.shared_secret import NONCE_LIFETIME_MS, SharedSecretRegistration
from homeserver.clock import Clock
from homeserver.config import RegistrationConfig
from homeserver.errors import MatrixError
from tests.harness import SERVER_NAME, HomeserverTestCase, Response, on_both_engines

SHARED_SECRET = "test-shared-secret"  # what tests.harness.make_config configures
REGISTER = "/_synapse/admin/v1/register"
PASSWORD = "correct horse battery"


def synapse_mac(secret: str, nonce: str, username: str, password: str, admin: bool) -> str:
    """The HMAC-SHA1 Synapse's register_new_matrix_user sends, written out independently."""
    message = b"\x00".join(
        [nonce.encode(), username.encode(), password.encode(), b"admin" if admin else b"notadmin"]
    )
    return hmac.new(secret.encode(), message, hashlib.sha1).hexdigest()


@on_both_engines
class SharedSecretRegistrationTests(HomeserverTestCase):
    async def nonce(self) -> str:
        r = await self.request("GET", REGISTER)
        self.assertEqual(r.code, 200, r)
        nonce = r.json["nonce"]
        self.assertIsInstance(nonce, str)
        self.assertGreaterEqual(len(nonce), 16)
        return nonce

    async def post(
        self,
        username: str,
        password: str = PASSWORD,
        admin: bool = False,
        nonce: str | None = None,
        mac: str | None = None,
        **extra: Any,
    ) -> Response:
        if nonce is None:
            nonce = await self.nonce()
        if mac is None:
            mac = synapse_mac(SHARED_SECRET, nonce, username, password, admin)
        body = {
            "nonce": nonce,
            "username": username,
            "password": password,
            "admin": admin,
            "mac": mac,
        }
        body.update(extra)
        return await self.request("POST", REGISTER, body)

    async def test_register_admin(self):
        r = await self.post("root", admin=True)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], f"@root:{SERVER_NAME}")
        self.assertEqual(r.json["home_server"], SERVER_NAME)
        self.assertIsInstance(r.json["device_id"], str)
        self.assertNotIn("refresh_token", r.json)
        account = await self.hs.accounts.get_account("@root:test.heddle")
        self.assertIsNotNone(account)
        self.assertTrue(account.is_admin)
        self.assertFalse(account.deactivated)
        # The returned session works, and so does the password.
        who = await self.request(
            "GET", "/_matrix/client/v3/account/whoami", token=r.json["access_token"]
        )
        self.assertEqual(who.code, 200, who)
        self.assertEqual(who.json["user_id"], "@root:test.heddle")
        self.assertEqual(who.json["device_id"], r.json["device_id"])
        await self.login("root")

    async def test_register_non_admin(self):
        r = await self.post("plain", admin=False)
        self.assertEqual(r.code, 200, r)
        account = await self.hs.accounts.get_account("@plain:test.heddle")
        self.assertFalse(account.is_admin)

    async def test_admin_flag_defaults_to_false(self):
        nonce = await self.nonce()
        body = {
            "nonce": nonce,
            "username": "plain",
            "password": PASSWORD,
            "mac": synapse_mac(SHARED_SECRET, nonce, "plain", PASSWORD, False),
        }
        r = await self.request("POST", REGISTER, body)
        self.assertEqual(r.code, 200, r)
        self.assertFalse((await self.hs.accounts.get_account("@plain:test.heddle")).is_admin)

    async def test_displayname(self):
        r = await self.post("root", admin=True, displayname="The Administrator")
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", "/_matrix/client/v3/profile/@root:test.heddle/displayname")
        self.assertEqual(r.json, {"displayname": "The Administrator"})

    async def test_bad_mac(self):
        nonce = await self.nonce()
        wrong_secret = synapse_mac("not-the-secret", nonce, "mallory", PASSWORD, True)
        r = await self.post("mallory", admin=True, nonce=nonce, mac=wrong_secret)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.post("mallory", admin=True, mac="00" * 20)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.post("mallory", admin=True, mac="not hex")
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.post("mallory", admin=True, mac="é" * 40)
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertIsNone(await self.hs.accounts.get_account("@mallory:test.heddle"))

    async def test_mac_covers_admin_flag(self):
        """A MAC for a normal account cannot be replayed to create an admin."""
        nonce = await self.nonce()
        mac = synapse_mac(SHARED_SECRET, nonce, "mallory", PASSWORD, False)
        r = await self.post("mallory", admin=True, nonce=nonce, mac=mac)
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertIsNone(await self.hs.accounts.get_account("@mallory:test.heddle"))

    async def test_mac_covers_username_and_password(self):
        nonce = await self.nonce()
        mac = synapse_mac(SHARED_SECRET, nonce, "alice", PASSWORD, False)
        r = await self.post("mallory", nonce=nonce, mac=mac)
        self.assertError(r, 403, "M_FORBIDDEN")
        nonce = await self.nonce()
        mac = synapse_mac(SHARED_SECRET, nonce, "alice", PASSWORD, False)
        r = await self.post("alice", password="another password", nonce=nonce, mac=mac)
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertIsNone(await self.hs.accounts.get_account("@alice:test.heddle"))

    async def test_nonce_is_single_use(self):
        nonce = await self.nonce()
        r = await self.post("first", nonce=nonce)
        self.assertEqual(r.code, 200, r)
        r = await self.post("second", nonce=nonce)
        self.assertEqual(r.code, 400, r)
        self.assertEqual(r.json["errcode"], "M_UNKNOWN")
        self.assertIsNone(await self.hs.accounts.get_account("@second:test.heddle"))

    async def test_nonce_consumed_by_failed_attempt(self):
        nonce = await self.nonce()
        r = await self.post("alice", nonce=nonce, mac="00" * 20)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.post("alice", nonce=nonce)
        self.assertError(r, 400, "M_UNKNOWN")
        self.assertIsNone(await self.hs.accounts.get_account("@alice:test.heddle"))

    async def test_unknown_nonce(self):
        r = await self.post("alice", nonce="f" * 64)
        self.assertError(r, 400, "M_UNKNOWN")
        self.assertIsNone(await self.hs.accounts.get_account("@alice:test.heddle"))

    async def test_nonces_are_distinct(self):
        self.assertEqual(len({await self.nonce() for _ in range(5)}), 5)

    async def test_username_taken_or_invalid(self):
        await self.register("alice", inhibit_login=True)
        r = await self.post("alice")
        self.assertError(r, 400, "M_USER_IN_USE")
        r = await self.post("bad name!")
        self.assertError(r, 400, "M_INVALID_USERNAME")

    async def test_weak_password(self):
        r = await self.post("alice", password="short")
        self.assertError(r, 400, "M_WEAK_PASSWORD")
        self.assertIsNone(await self.hs.accounts.get_account("@alice:test.heddle"))

    async def test_bad_body(self):
        nonce = await self.nonce()
        for bad in (
            {"username": "alice", "password": PASSWORD, "mac": "00"},
            {"nonce": nonce, "password": PASSWORD, "mac": "00"},
            {"nonce": nonce, "username": "alice", "password": PASSWORD},
            {
                "nonce": nonce,
                "username": "alice",
                "password": PASSWORD,
                "mac": "00",
                "admin": "yes",
            },
        ):
            r = await self.request("POST", REGISTER, bad)
            self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("POST", REGISTER, raw=b"nonce=1")
        self.assertError(r, 400, "M_NOT_JSON")
        # Malformed requests did not use up the nonce.
        r = await self.post("alice", nonce=nonce)
        self.assertEqual(r.code, 200, r)

    async def test_works_with_open_registration_disabled(self):
        await self.start_server(registration={"enabled": False})
        r = await self.post("root", admin=True)
        self.assertEqual(r.code, 200, r)
        self.assertTrue((await self.hs.accounts.get_account("@root:test.heddle")).is_admin)

    async def test_disabled_without_shared_secret(self):
        await self.start_server(registration={"shared_secret": None})
        r = await self.request("GET", REGISTER)
        self.assertError(r, 400, "M_UNKNOWN")
        mac = synapse_mac(SHARED_SECRET, "a" * 64, "root", PASSWORD, True)
        r = await self.request(
            "POST",
            REGISTER,
            {
                "nonce": "a" * 64,
                "username": "root",
                "password": PASSWORD,
                "admin": True,
                "mac": mac,
            },
        )
        self.assertError(r, 400, "M_UNKNOWN")
        self.assertIsNone(await self.hs.accounts.get_account("@root:test.heddle"))

    async def test_admin_may_edit_other_profiles(self):
        admin = (await self.post("root", admin=True)).json["access_token"]
        await self.register("alice", inhibit_login=True)
        r = await self.request(
            "PUT",
            "/_matrix/client/v3/profile/@alice:test.heddle/displayname",
            {"displayname": "Renamed by admin"},
            token=admin,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", "/_matrix/client/v3/profile/@alice:test.heddle/displayname")
        self.assertEqual(r.json, {"displayname": "Renamed by admin"})


@on_both_engines
class MetricsListenerTests(HomeserverTestCase):
    async def test_health(self):
        r = await self.request("GET", "/health", base_url=self.metrics_url)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.body, b"OK")
        self.assertTrue(r.header("Content-Type").startswith("text/plain"))

    async def test_metrics(self):
        # Serve one client request so the request counter has a sample for it.
        r = await self.request("GET", "/_matrix/client/v3/account/whoami")
        self.assertEqual(r.code, 401, r)
        r = await self.request("GET", "/metrics", base_url=self.metrics_url)
        self.assertEqual(r.code, 200, r)
        text = r.body.decode()
        self.assertIn("# TYPE heddle_http_requests_total counter", text)
        self.assertIn("# TYPE heddle_db_pool_connections_in_use gauge", text)
        sample = [
            line
            for line in text.splitlines()
            if line.startswith("heddle_http_requests_total{")
            and 'endpoint="WhoamiServlet"' in line
            and 'code="401"' in line
        ]
        self.assertEqual(len(sample), 1, text)
        self.assertGreaterEqual(float(sample[0].rsplit(" ", 1)[1]), 1)

    async def test_metrics_listener_does_not_serve_client_api(self):
        r = await self.request("GET", "/_matrix/client/versions", base_url=self.metrics_url)
        self.assertEqual(r.code, 404, r)


class NonceTests(unittest.TestCase):
    """The nonces `SharedSecretRegistration` holds: single use, short-lived and bounded in
    number. Only nonce handling is exercised: a wrong HMAC shows the nonce was known."""

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.registration = SharedSecretRegistration(
            Clock(self.reactor),
            RegistrationConfig(shared_secret=SHARED_SECRET),
            None,  # type: ignore[arg-type]  # not reached with a wrong HMAC
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            max_nonces=3,
        )

    async def errcode_for(self, nonce: str) -> str:
        with self.assertRaises(MatrixError) as cm:
            await self.registration.register(nonce, "alice", PASSWORD, "00", False, None)
        return cm.exception.errcode

    async def test_a_known_nonce_gets_as_far_as_the_hmac_check(self) -> None:
        nonce = self.registration.new_nonce()
        self.assertEqual(await self.errcode_for(nonce), "M_FORBIDDEN")
        # Used up by the failed attempt.
        self.assertEqual(await self.errcode_for(nonce), "M_UNKNOWN")

    async def test_oldest_nonces_are_forgotten_beyond_the_cap(self) -> None:
        nonces = [self.registration.new_nonce() for _ in range(5)]
        for nonce in nonces[:2]:
            self.assertEqual(await self.errcode_for(nonce), "M_UNKNOWN")
        for nonce in nonces[2:]:
            self.assertEqual(await self.errcode_for(nonce), "M_FORBIDDEN")

    async def test_nonces_expire(self) -> None:
        old = self.registration.new_nonce()
        self.reactor.advance(NONCE_LIFETIME_MS / 1000 + 1)
        fresh = self.registration.new_nonce()
        self.assertEqual(await self.errcode_for(old), "M_UNKNOWN")
        self.assertEqual(await self.errcode_for(fresh), "M_FORBIDDEN")
