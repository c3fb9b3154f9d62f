"""E-mail third-party identifiers: validation by mail through a real SMTP server on loopback,
adding and removing addresses, registering with one, logging in with one, password resets.

Spec: api/client-server/registration.yaml, administrative_contact.yaml, login.yaml,
password_management.yaml; client-server API "Adding Account Administrative Contact
Information", "m.login.email.identity", "Identifier types"; appendices "3PID Types".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from homeserver.config import ConfigError, parse_config
from tests.admin_helpers import AdminTestCase, q
from tests.harness import (
    PASSWORD,
    HomeserverTestCase,
    Response,
    make_config,
    on_both_engines,
    password_auth,
)
from tests.smtp_server import DeliveredMail, SmtpInbox, free_port

V3 = "/_matrix/client/v3"
ADD_TOKEN = f"{V3}/account/3pid/email/requestToken"
RESET_TOKEN = f"{V3}/account/password/email/requestToken"
REGISTER_TOKEN = f"{V3}/register/email/requestToken"
THREEPIDS = f"{V3}/account/3pid"
SECRET = "monkeys_are_GREAT"
NEW_PASSWORD = "battery staple horse"


def email_config(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "tls": "none",
        "notif_from": "Heddle <noreply@test.heddle>",
        "registration": "optional",
        **extra,
    }


class EmailTestCase(HomeserverTestCase):
    """A homeserver whose mail goes to `self.inbox`, a real SMTP server."""

    email_extra: dict[str, Any] = {}

    def setUp(self) -> defer.Deferred[Any]:
        self.inbox = SmtpInbox()
        self.inbox.start()
        self.addCleanup(self.inbox.stop)  # type: ignore[attr-defined]
        return defer.ensureDeferred(
            self.start_server(email=email_config(self.inbox.port, **self.email_extra))
        )

    async def request_token(
        self,
        path: str,
        address: str,
        send_attempt: int = 1,
        client_secret: str = SECRET,
        **extra: Any,
    ) -> Response:
        body = {"client_secret": client_secret, "email": address, "send_attempt": send_attempt}
        return await self.request("POST", path, {**body, **extra})

    async def mail_for(self, path: str, address: str, **extra: Any) -> tuple[str, DeliveredMail]:
        """Ask for a validation mail; the session ID and the mail that arrived."""
        before = len(self.inbox.mails)
        r = await self.request_token(path, address, **extra)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(len(self.inbox.mails), before + 1)
        mail = self.inbox.last()
        self.assertEqual(mail.link_params["sid"], r.json["sid"])
        return r.json["sid"], mail

    async def follow(self, mail: DeliveredMail) -> Response:
        return await self.request("GET", mail.link_path_and_query)

    async def validated(self, path: str, address: str, **extra: Any) -> str:
        sid, mail = await self.mail_for(path, address, **extra)
        r = await self.follow(mail)
        self.assertEqual(r.code, 200, r)
        return sid

    async def add_threepid(self, token: str, sid: str, user: str = "alice") -> Response:
        return await self.request(
            "POST",
            f"{V3}/account/3pid/add",
            {"client_secret": SECRET, "sid": sid, "auth": password_auth(user)},
            token=token,
        )

    async def bind_address(self, user: str, token: str, address: str) -> None:
        sid = await self.validated(ADD_TOKEN, address)
        r = await self.add_threepid(token, sid, user)
        self.assertEqual(r.code, 200, r)

    async def delete_threepid(self, token: str, address: str) -> Response:
        return await self.request(
            "POST",
            f"{V3}/account/3pid/delete",
            {"medium": "email", "address": address},
            token=token,
        )

    async def session_rows(self) -> int:
        row = await self.hs.db.run_interaction(
            "count",
            lambda txn: txn.select_one("SELECT COUNT(*) FROM threepid_validation_sessions"),
        )
        return int(row[0])

    async def login_with_email(self, address: str, password: str = PASSWORD) -> Response:
        return await self.request(
            "POST",
            f"{V3}/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": address},
                "password": password,
            },
        )


@on_both_engines
class AddThreepidTests(EmailTestCase):
    async def test_add_list_login_and_delete_an_address(self) -> None:
        alice = await self.register("alice")
        sid, mail = await self.mail_for(ADD_TOKEN, "Alice@Example.ORG")
        # Sent to the canonical address, from the configured sender, with Heddle's template.
        self.assertEqual(mail.recipients, ["alice@example.org"])
        self.assertEqual(mail.sender, "noreply@test.heddle")
        self.assertIn("test.heddle", mail.subject)
        self.assertIn("/_matrix/client/unstable/add_threepid/email/submit_token?", mail.link)
        r = await self.follow(mail)
        self.assertEqual(r.code, 200, r)
        self.assertIn(b"validated", r.body)

        # /3pid/add is user-interactive: a password challenge first.
        r = await self.request(
            "POST",
            f"{V3}/account/3pid/add",
            {"client_secret": SECRET, "sid": sid},
            token=alice["access_token"],
        )
        self.assertEqual(r.code, 401, r)
        self.assertEqual(r.json["flows"], [{"stages": ["m.login.password"]}])
        r = await self.add_threepid(alice["access_token"], sid)
        self.assertEqual(r.code, 200, r)

        r = await self.request("GET", THREEPIDS, token=alice["access_token"])
        self.assertEqual(r.code, 200, r)
        (threepid,) = r.json["threepids"]
        self.assertEqual(threepid["medium"], "email")
        self.assertEqual(threepid["address"], "alice@example.org")
        self.assertIsInstance(threepid["validated_at"], int)
        self.assertIsInstance(threepid["added_at"], int)

        # Logging in by address, in any case.
        r = await self.login_with_email("ALICE@example.org")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], "@alice:test.heddle")
        self.assertError(
            await self.login_with_email("alice@example.org", "wrong"), 403, "M_FORBIDDEN"
        )

        r = await self.delete_threepid(alice["access_token"], "alice@EXAMPLE.org")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"id_server_unbind_result": "no-support"})
        r = await self.request("GET", THREEPIDS, token=alice["access_token"])
        self.assertEqual(r.json, {"threepids": []})
        self.assertError(await self.login_with_email("alice@example.org"), 403, "M_FORBIDDEN")

    async def test_capability_says_3pid_changes_are_enabled(self) -> None:
        alice = await self.register("alice")
        r = await self.request("GET", f"{V3}/capabilities", token=alice["access_token"])
        self.assertEqual(r.json["capabilities"]["m.3pid_changes"], {"enabled": True})

    async def test_same_send_attempt_sends_no_second_mail(self) -> None:
        sid, first = await self.mail_for(ADD_TOKEN, "alice@example.org")
        r = await self.request_token(ADD_TOKEN, "alice@example.org", send_attempt=1)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["sid"], sid)
        self.assertEqual(len(self.inbox.mails), 1)
        # A higher attempt sends a new mail in the same session; its token replaces the
        # first one's.
        sid2, second = await self.mail_for(ADD_TOKEN, "alice@example.org", send_attempt=2)
        self.assertEqual(sid2, sid)
        self.assertNotEqual(first.link_params["token"], second.link_params["token"])
        self.assertEqual((await self.follow(first)).code, 400)
        self.assertEqual((await self.follow(second)).code, 200)

    async def test_a_link_works_once_and_a_session_adds_once(self) -> None:
        alice = await self.register("alice")
        sid, mail = await self.mail_for(ADD_TOKEN, "alice@example.org")
        self.assertEqual((await self.follow(mail)).code, 200)
        r = await self.follow(mail)
        self.assertEqual(r.code, 400, r)
        self.assertIn(b"already been used", r.body)
        self.assertEqual((await self.add_threepid(alice["access_token"], sid)).code, 200)
        r = await self.add_threepid(alice["access_token"], sid)
        self.assertError(r, 400, "M_THREEPID_AUTH_FAILED")

    async def test_expired_link_is_refused(self) -> None:
        alice = await self.register("alice")
        sid, mail = await self.mail_for(ADD_TOKEN, "alice@example.org")
        now = self.hs.clock.time_msec()
        lifetime = self.hs.config.email.validation_token_lifetime_ms
        self.hs.clock.time_msec = lambda: now + lifetime + 1  # type: ignore[method-assign]
        r = await self.follow(mail)
        self.assertEqual(r.code, 400, r)
        self.assertIn(b"expired", r.body)
        self.assertError(
            await self.add_threepid(alice["access_token"], sid), 400, "M_THREEPID_AUTH_FAILED"
        )

    async def test_validation_too_long_ago_cannot_be_used(self) -> None:
        alice = await self.register("alice")
        sid = await self.validated(ADD_TOKEN, "alice@example.org")
        now = self.hs.clock.time_msec()
        lifetime = self.hs.config.email.validated_session_lifetime_ms
        self.hs.clock.time_msec = lambda: now + lifetime + 1  # type: ignore[method-assign]
        self.assertError(
            await self.add_threepid(alice["access_token"], sid), 400, "M_THREEPID_AUTH_FAILED"
        )

    async def test_link_with_another_session_or_secret_does_not_validate(self) -> None:
        alice = await self.register("alice")
        sid, mail = await self.mail_for(ADD_TOKEN, "alice@example.org")
        params = mail.link_params
        path = "/_matrix/client/unstable/add_threepid/email/submit_token"
        for sid_, secret, token in [
            ("unknown", params["client_secret"], params["token"]),
            (sid, "another_secret", params["token"]),
            (sid, params["client_secret"], "not-the-token"),
        ]:
            r = await self.request("GET", f"{path}?sid={sid_}&client_secret={secret}&token={token}")
            self.assertEqual(r.code, 400, r)
        # Another session's token does not validate this one either.
        other_sid, other = await self.mail_for(
            ADD_TOKEN, "other@example.org", client_secret="other_secret"
        )
        r = await self.request(
            "GET",
            f"{path}?sid={sid}&client_secret={SECRET}&token={other.link_params['token']}",
        )
        self.assertEqual(r.code, 400, r)
        # None of that burnt the real link; a wrong secret cannot use the session.
        self.assertError(
            await self.add_threepid(alice["access_token"], sid), 400, "M_THREEPID_AUTH_FAILED"
        )
        self.assertEqual((await self.follow(mail)).code, 200)
        r = await self.request(
            "POST",
            f"{V3}/account/3pid/add",
            {"client_secret": "another_secret", "sid": sid, "auth": password_auth("alice")},
            token=alice["access_token"],
        )
        self.assertError(r, 400, "M_THREEPID_AUTH_FAILED")
        self.assertEqual((await self.add_threepid(alice["access_token"], sid)).code, 200)

    async def test_the_access_log_keeps_the_link_secret(self) -> None:
        sid, mail = await self.mail_for(ADD_TOKEN, "alice@example.org")
        with self.assertLogs("client_api.http", level="INFO") as logs:
            self.assertEqual((await self.follow(mail)).code, 200)
        logged = "\n".join(logs.output)
        self.assertIn("submit_token", logged)
        self.assertIn(sid, logged)
        self.assertNotIn(mail.link_params["token"], logged)
        self.assertNotIn(SECRET, logged)

    async def test_submit_token_by_post(self) -> None:
        sid, mail = await self.mail_for(ADD_TOKEN, "alice@example.org")
        path = "/_matrix/client/unstable/add_threepid/email/submit_token"
        body = {"sid": sid, "client_secret": SECRET, "token": "wrong"}
        self.assertError(await self.request("POST", path, body), 400, "M_INVALID_PARAM")
        body["token"] = mail.link_params["token"]
        r = await self.request("POST", path, body)
        self.assertEqual((r.code, r.json), (200, {"success": True}))

    async def test_next_link_redirects_with_the_session(self) -> None:
        sid, mail = await self.mail_for(
            ADD_TOKEN, "alice@example.org", next_link="https://client.example/done?x=1"
        )
        r = await self.follow(mail)
        self.assertEqual(r.code, 302, r)
        self.assertEqual(r.header("Location"), "https://client.example/done?x=1")

    async def test_session_for_registration_cannot_add_an_address(self) -> None:
        alice = await self.register("alice")
        sid = await self.validated(REGISTER_TOKEN, "alice@example.org")
        self.assertError(
            await self.add_threepid(alice["access_token"], sid), 400, "M_THREEPID_AUTH_FAILED"
        )

    async def test_address_in_use_is_refused(self) -> None:
        bob = await self.register("bob")
        await self.bind_address("bob", bob["access_token"], "shared@example.org")
        alice = await self.register("alice")
        for path in (ADD_TOKEN, REGISTER_TOKEN):
            r = await self.request_token(path, "Shared@example.org")
            self.assertError(r, 400, "M_THREEPID_IN_USE")
        self.assertEqual(len(self.inbox.mails), 1)
        # Validated before bob took it: the add itself refuses.
        await self.delete_threepid(bob["access_token"], "shared@example.org")
        sid = await self.validated(ADD_TOKEN, "shared@example.org")
        await self.bind_address("bob", bob["access_token"], "shared@example.org")
        self.assertError(
            await self.add_threepid(alice["access_token"], sid), 400, "M_THREEPID_IN_USE"
        )

    async def test_deleting_an_address_one_does_not_have_changes_nothing(self) -> None:
        bob = await self.register("bob")
        await self.bind_address("bob", bob["access_token"], "bob@example.org")
        alice = await self.register("alice")
        for address in ("bob@example.org", "nobody@example.org", "not an address"):
            r = await self.delete_threepid(alice["access_token"], address)
            self.assertEqual(r.code, 200, r)
            self.assertEqual(r.json, {"id_server_unbind_result": "no-support"})
        r = await self.request("GET", THREEPIDS, token=bob["access_token"])
        self.assertEqual([t["address"] for t in r.json["threepids"]], ["bob@example.org"])

    async def test_deactivation_releases_the_address(self) -> None:
        bob = await self.register("bob")
        await self.bind_address("bob", bob["access_token"], "bob@example.org")
        r = await self.request(
            "POST",
            f"{V3}/account/deactivate",
            {"auth": password_auth("bob")},
            token=bob["access_token"],
        )
        self.assertEqual(r.code, 200, r)
        alice = await self.register("alice")
        await self.bind_address("alice", alice["access_token"], "bob@example.org")

    async def test_bad_input(self) -> None:
        alice = await self.register("alice")
        token = alice["access_token"]
        cases: list[tuple[str, str, Any, int, str]] = [
            (
                "POST",
                ADD_TOKEN,
                {"client_secret": SECRET, "email": "no-at-sign", "send_attempt": 1},
                400,
                "M_INVALID_PARAM",
            ),
            (
                "POST",
                ADD_TOKEN,
                {"client_secret": SECRET, "email": "a@b\r\nBcc: x@y", "send_attempt": 1},
                400,
                "M_INVALID_PARAM",
            ),
            (
                "POST",
                ADD_TOKEN,
                {"client_secret": SECRET, "email": "Alice <a@example.org>", "send_attempt": 1},
                400,
                "M_INVALID_PARAM",
            ),
            (
                "POST",
                ADD_TOKEN,
                {"client_secret": "has space", "email": "a@example.org", "send_attempt": 1},
                400,
                "M_INVALID_PARAM",
            ),
            (
                "POST",
                ADD_TOKEN,
                {"client_secret": "", "email": "a@example.org", "send_attempt": 1},
                400,
                "M_INVALID_PARAM",
            ),
            (
                "POST",
                ADD_TOKEN,
                {"client_secret": "x" * 256, "email": "a@example.org", "send_attempt": 1},
                400,
                "M_INVALID_PARAM",
            ),
            (
                "POST",
                ADD_TOKEN,
                {"client_secret": SECRET, "email": "a@example.org", "send_attempt": "1"},
                400,
                "M_BAD_JSON",
            ),
            (
                "POST",
                ADD_TOKEN,
                {"client_secret": SECRET, "email": "a@example.org"},
                400,
                "M_BAD_JSON",
            ),
            (
                "POST",
                ADD_TOKEN,
                {
                    "client_secret": SECRET,
                    "email": "a@example.org",
                    "send_attempt": 1,
                    "next_link": "file:///etc/passwd",
                },
                400,
                "M_INVALID_PARAM",
            ),
            (
                "POST",
                f"{V3}/register/msisdn/requestToken",
                {"client_secret": SECRET, "country": "GB", "phone_number": "1", "send_attempt": 1},
                400,
                "M_THREEPID_MEDIUM_NOT_SUPPORTED",
            ),
            (
                "POST",
                f"{V3}/account/3pid/msisdn/requestToken",
                {},
                400,
                "M_THREEPID_MEDIUM_NOT_SUPPORTED",
            ),
            (
                "POST",
                f"{V3}/account/password/msisdn/requestToken",
                {},
                400,
                "M_THREEPID_MEDIUM_NOT_SUPPORTED",
            ),
            (
                "POST",
                f"{V3}/account/3pid/add",
                {"client_secret": "bad secret!", "sid": "x", "auth": password_auth("alice")},
                400,
                "M_INVALID_PARAM",
            ),
            ("POST", f"{V3}/account/3pid/add", {"sid": "x"}, 400, "M_BAD_JSON"),
            (
                "POST",
                f"{V3}/account/3pid/delete",
                {"medium": "carrier-pigeon", "address": "x"},
                400,
                "M_INVALID_PARAM",
            ),
            ("POST", f"{V3}/account/3pid/delete", {"medium": "email"}, 400, "M_BAD_JSON"),
            (
                "POST",
                f"{V3}/account/3pid/bind",
                {
                    "client_secret": SECRET,
                    "id_server": "id.example",
                    "id_access_token": "t",
                    "sid": "s",
                },
                400,
                "M_SERVER_NOT_TRUSTED",
            ),
            (
                "POST",
                THREEPIDS,
                {
                    "three_pid_creds": {
                        "client_secret": SECRET,
                        "id_server": "id.example",
                        "id_access_token": "t",
                        "sid": "s",
                    }
                },
                400,
                "M_SERVER_NOT_TRUSTED",
            ),
        ]
        for method, path, body, code, errcode in cases:
            self.assertError(await self.request(method, path, body, token=token), code, errcode)
        r = await self.request(
            "POST",
            f"{V3}/account/3pid/unbind",
            {"medium": "email", "address": "a@example.org"},
            token=token,
        )
        self.assertEqual((r.code, r.json), (200, {"id_server_unbind_result": "no-support"}))
        self.assertEqual(self.inbox.mails, [])
        self.assertEqual(await self.session_rows(), 0)
        r = await self.request(
            "GET", "/_matrix/client/unstable/add_threepid/email/submit_token?sid=x"
        )
        self.assertEqual(r.code, 400, r)
        self.assertIn(b"Missing", r.body)

    async def test_login_with_bad_third_party_identifiers(self) -> None:
        for identifier, code, errcode in [
            (
                {"type": "m.id.thirdparty", "medium": "msisdn", "address": "441234"},
                400,
                "M_UNKNOWN",
            ),
            ({"type": "m.id.thirdparty", "medium": "email"}, 400, "M_BAD_JSON"),
            (
                {"type": "m.id.thirdparty", "medium": "email", "address": "nobody@example.org"},
                403,
                "M_FORBIDDEN",
            ),
            (
                {"type": "m.id.thirdparty", "medium": "email", "address": "not an address"},
                400,
                "M_INVALID_PARAM",
            ),
        ]:
            r = await self.request(
                "POST",
                f"{V3}/login",
                {"type": "m.login.password", "identifier": identifier, "password": PASSWORD},
            )
            self.assertError(r, code, errcode)


@on_both_engines
class FailingSmtpTests(EmailTestCase):
    async def assertMailFailed(self, **email: Any) -> None:
        """With the server restarted with these e-mail settings (if any), a request for a
        mail is a plain 500 that delivers nothing and records no session."""
        if email:
            await self.start_server(email=email_config(**{"port": self.inbox.port, **email}))
        r = await self.request_token(ADD_TOKEN, "alice@example.org")
        body = self.assertError(r, 500, "M_UNKNOWN")
        # Said plainly, without the SMTP server's own words.
        self.assertIn("sending the e-mail", body["error"])
        self.assertNotIn("550", body["error"])
        self.assertEqual(self.inbox.mails, [])
        self.assertEqual(await self.session_rows(), 0)

    async def test_smtp_server_refusing_the_mail_leaves_no_session(self) -> None:
        self.inbox.refuse_with = "550 5.1.1 Mailbox unavailable"
        await self.assertMailFailed()
        # Once the server takes mail again, the same attempt goes through.
        self.inbox.refuse_with = None
        sid, mail = await self.mail_for(ADD_TOKEN, "alice@example.org")
        self.assertEqual((await self.follow(mail)).code, 200)

    async def test_starttls_required_but_not_offered_sends_nothing(self) -> None:
        # The loopback server offers no STARTTLS: `tls: starttls` must not fall back to
        # plain text.
        await self.assertMailFailed(tls="starttls")

    async def test_implicit_tls_to_a_plain_server_fails_cleanly(self) -> None:
        await self.assertMailFailed(tls="implicit")

    async def test_unreachable_smtp_server_leaves_no_session(self) -> None:
        await self.assertMailFailed(port=free_port())


@on_both_engines
class RateLimitTests(EmailTestCase):
    async def test_requests_for_one_address_are_limited(self) -> None:
        await self.start_server(
            email=email_config(self.inbox.port),
            rate_limits={
                "enabled": True,
                "threepid_validation_per_email": {"per_second": 0.001, "burst_count": 2},
            },
        )
        for attempt in (1, 2):
            r = await self.request_token(ADD_TOKEN, "alice@example.org", send_attempt=attempt)
            self.assertEqual(r.code, 200, r)
        r = await self.request_token(ADD_TOKEN, "ALICE@example.org", send_attempt=3)
        self.assertError(r, 429, "M_LIMIT_EXCEEDED")
        self.assertEqual(len(self.inbox.mails), 2)
        # Another address is not held back by this one.
        self.assertEqual((await self.request_token(ADD_TOKEN, "bob@example.org")).code, 200)


@on_both_engines
class PasswordResetTests(EmailTestCase):
    async def reset(self, sid: str, **extra: Any) -> Response:
        auth = {
            "type": "m.login.email.identity",
            "threepid_creds": {"sid": sid, "client_secret": SECRET},
        }
        return await self.request(
            "POST", f"{V3}/account/password", {"new_password": NEW_PASSWORD, "auth": auth, **extra}
        )

    async def test_reset_by_email_logs_out_every_device(self) -> None:
        alice = await self.register("alice")
        await self.bind_address("alice", alice["access_token"], "alice@example.org")
        sid, mail = await self.mail_for(RESET_TOKEN, "alice@example.org")
        self.assertIn("Password reset", mail.subject)
        self.assertIn("/_synapse/client/password_reset/email/submit_token", mail.link)
        # Not validated yet: the stage fails.
        r = await self.reset(sid)
        self.assertEqual(r.code, 401, r)
        self.assertEqual(r.json["flows"], [{"stages": ["m.login.email.identity"]}])
        self.assertEqual(r.json["errcode"], "M_UNAUTHORIZED")
        self.assertEqual((await self.follow(mail)).code, 200)
        r = await self.reset(sid)
        self.assertEqual(r.code, 200, r)
        self.assertError(
            await self.request("GET", f"{V3}/account/whoami", token=alice["access_token"]),
            401,
            "M_UNKNOWN_TOKEN",
        )
        await self.login("alice", NEW_PASSWORD)
        # The validated session was used up.
        r = await self.reset(sid)
        self.assertEqual(r.code, 401, r)

    async def test_reset_can_keep_devices(self) -> None:
        alice = await self.register("alice")
        await self.bind_address("alice", alice["access_token"], "alice@example.org")
        sid = await self.validated(RESET_TOKEN, "alice@example.org")
        self.assertEqual((await self.reset(sid, logout_devices=False)).code, 200)
        r = await self.request("GET", f"{V3}/account/whoami", token=alice["access_token"])
        self.assertEqual(r.code, 200, r)
        await self.login("alice", NEW_PASSWORD)

    async def test_unknown_address_is_not_found(self) -> None:
        r = await self.request_token(RESET_TOKEN, "nobody@example.org")
        self.assertError(r, 400, "M_THREEPID_NOT_FOUND")
        self.assertEqual(self.inbox.mails, [])

    async def test_session_for_adding_cannot_reset(self) -> None:
        alice = await self.register("alice")
        await self.bind_address("alice", alice["access_token"], "alice@example.org")
        sid = await self.validated(ADD_TOKEN, "other@example.org")
        self.assertEqual((await self.reset(sid)).code, 401)


@on_both_engines
class InhibitedErrorsTests(EmailTestCase):
    email_extra = {"inhibit_3pid_errors": True}

    async def test_unknown_and_used_addresses_get_a_made_up_session(self) -> None:
        r = await self.request_token(RESET_TOKEN, "nobody@example.org")
        self.assertEqual(r.code, 200, r)
        self.assertIsInstance(r.json["sid"], str)
        bob = await self.register("bob")
        await self.bind_address("bob", bob["access_token"], "bob@example.org")
        r = await self.request_token(ADD_TOKEN, "bob@example.org", client_secret="x")
        self.assertEqual(r.code, 200, r)
        # Only bob's own validation mail went out.
        self.assertEqual(len(self.inbox.mails), 1)


@on_both_engines
class RegistrationByEmailTests(EmailTestCase):
    email_extra = {"registration": "required"}

    async def test_registration_requires_a_validated_address(self) -> None:
        r = await self.request(
            "POST", f"{V3}/register", {"username": "alice", "password": PASSWORD}
        )
        self.assertEqual(r.code, 401, r)
        self.assertEqual(r.json["flows"], [{"stages": ["m.login.email.identity"]}])
        session = r.json["session"]
        # The dummy stage is not a flow any more.
        r = await self.request(
            "POST",
            f"{V3}/register",
            {
                "username": "alice",
                "password": PASSWORD,
                "auth": {"type": "m.login.dummy", "session": session},
            },
        )
        self.assertError(r, 400, "M_UNRECOGNIZED")

        sid = await self.validated(REGISTER_TOKEN, "Alice@Example.org")
        auth = {
            "type": "m.login.email.identity",
            "threepid_creds": {"sid": sid, "client_secret": SECRET},
            "session": session,
        }
        r = await self.request(
            "POST", f"{V3}/register", {"username": "alice", "password": PASSWORD, "auth": auth}
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", THREEPIDS, token=r.json["access_token"])
        self.assertEqual([t["address"] for t in r.json["threepids"]], ["alice@example.org"])
        # The address is now in use.
        self.assertError(
            await self.request_token(REGISTER_TOKEN, "alice@example.org", client_secret="b"),
            400,
            "M_THREEPID_IN_USE",
        )


@on_both_engines
class RegistrationFlowTests(EmailTestCase):
    async def test_optional_email_is_a_second_flow(self) -> None:
        r = await self.request("POST", f"{V3}/register", {"username": "alice"})
        self.assertEqual(r.code, 401, r)
        self.assertEqual(
            r.json["flows"],
            [{"stages": ["m.login.dummy"]}, {"stages": ["m.login.email.identity"]}],
        )
        # Credentials missing or for no validated session: the stage fails, the session stays.
        for auth, errcode in [
            ({"type": "m.login.email.identity"}, "M_MISSING_PARAM"),
            (
                {
                    "type": "m.login.email.identity",
                    "threepid_creds": {"sid": "nope", "client_secret": SECRET},
                },
                "M_UNAUTHORIZED",
            ),
        ]:
            body = {
                "username": "alice",
                "password": PASSWORD,
                "auth": {**auth, "session": r.json["session"]},
            }
            failed = await self.request("POST", f"{V3}/register", body)
            self.assertEqual(failed.code, 401, failed)
            self.assertEqual(failed.json["errcode"], errcode)
        # The deprecated top-level medium/address login works too.
        alice = await self.register("alice")
        await self.bind_address("alice", alice["access_token"], "alice@example.org")
        r = await self.request(
            "POST",
            f"{V3}/login",
            {
                "type": "m.login.password",
                "medium": "email",
                "address": "alice@example.org",
                "password": PASSWORD,
            },
        )
        self.assertEqual(r.code, 200, r)

    async def test_registration_token_endpoint_follows_the_registration_config(self) -> None:
        body = {"client_secret": SECRET, "email": "a@example.org", "send_attempt": 1}
        await self.start_server(email=email_config(self.inbox.port, registration="off"))
        r = await self.request("POST", REGISTER_TOKEN, body)
        self.assertError(r, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
        await self.start_server(
            email=email_config(self.inbox.port), registration={"enabled": False}
        )
        self.assertError(await self.request("POST", REGISTER_TOKEN, body), 403, "M_FORBIDDEN")
        self.assertEqual(self.inbox.mails, [])


@on_both_engines
class EmailDisabledTests(HomeserverTestCase):
    async def test_email_endpoints_say_the_medium_is_not_supported(self) -> None:
        alice = await self.register("alice")
        body = {"client_secret": SECRET, "email": "a@example.org", "send_attempt": 1}
        for path in (ADD_TOKEN, RESET_TOKEN, REGISTER_TOKEN):
            self.assertError(
                await self.request("POST", path, body), 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"
            )
        r = await self.request(
            "POST",
            f"{V3}/account/3pid/add",
            {"client_secret": SECRET, "sid": "x"},
            token=alice["access_token"],
        )
        self.assertError(r, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
        # A password change still needs the token.
        r = await self.request("POST", f"{V3}/account/password", {"new_password": NEW_PASSWORD})
        self.assertError(r, 401, "M_MISSING_TOKEN")
        r = await self.request("GET", f"{V3}/capabilities", token=alice["access_token"])
        self.assertEqual(r.json["capabilities"]["m.3pid_changes"], {"enabled": False})
        r = await self.request("POST", f"{V3}/register", {"username": "bob", "password": PASSWORD})
        self.assertEqual(r.json["flows"], [{"stages": ["m.login.dummy"]}])


@on_both_engines
class AdminThreepidTests(EmailTestCase, AdminTestCase):
    async def test_admin_sets_and_shows_the_addresses(self) -> None:
        admin = await self.make_admin()
        path = f"/v2/users/{q('@alice:test.heddle')}"
        r = await self.admin_call(
            admin,
            "PUT",
            path,
            {
                "password": PASSWORD,
                "threepids": [{"medium": "email", "address": "Alice@Example.org"}],
            },
        )
        self.assertEqual(r.code, 201, r)
        self.assertEqual([t["address"] for t in r.json["threepids"]], ["alice@example.org"])
        self.assertEqual((await self.login_with_email("alice@example.org")).code, 200)
        # A client-added address shows in the admin API.
        bob = await self.register("bob")
        await self.bind_address("bob", bob["access_token"], "bob@example.org")
        r = await self.admin_get(admin, f"/v2/users/{q('@bob:test.heddle')}")
        (threepid,) = r.json["threepids"]
        self.assertEqual(threepid["medium"], "email")
        self.assertEqual(threepid["address"], "bob@example.org")
        # Another account's address is refused and nothing changes.
        r = await self.admin_call(
            admin,
            "PUT",
            path,
            {
                "displayname": "Changed",
                "threepids": [{"medium": "email", "address": "bob@example.org"}],
            },
        )
        self.assertError(r, 400, "M_THREEPID_IN_USE")
        r = await self.admin_get(admin, path)
        self.assertEqual(r.json["displayname"], "alice")
        self.assertEqual([t["address"] for t in r.json["threepids"]], ["alice@example.org"])
        # The list replaces the account's addresses.
        r = await self.admin_call(
            admin, "PUT", path, {"threepids": [{"medium": "email", "address": "a2@example.org"}]}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual([t["address"] for t in r.json["threepids"]], ["a2@example.org"])
        self.assertError(await self.login_with_email("alice@example.org"), 403, "M_FORBIDDEN")
        r = await self.admin_call(admin, "PUT", path, {"threepids": []})
        self.assertEqual(r.json["threepids"], [])


class EmailConfigTests(unittest.TestCase):
    def test_config_errors(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir(parents=True)
        base = make_config("sqlite", data_dir).model_dump()
        for email, expected in [
            ({"enabled": True}, "notif_from is required"),
            ({"registration": "required"}, "needs enabled: true"),
            ({"smtp_user": "u"}, "go together"),
            ({"tls": "ssl"}, "email.tls"),
            (
                {"registration_template": {"subject": "{nope}", "body": "{link}"}},
                "{link}, {server_name} and {app_name}",
            ),
            ({"password_reset_template": {"subject": "s", "body": "no link"}}, "must contain"),
        ]:
            with self.assertRaises(ConfigError) as cm:
                parse_config({**base, "email": email}, environ={})
            self.assertIn(expected, str(cm.exception))
        config = parse_config(
            {**base, "email": {"enabled": True, "notif_from": "a@b.c", "tls": "implicit"}},
            environ={},
        )
        self.assertEqual(config.email.port, 465)
