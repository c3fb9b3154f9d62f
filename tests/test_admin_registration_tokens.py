"""The admin API for registration tokens (Synapse's `/_synapse/admin/v1/registration_tokens`),
over real HTTP on both engines: access, creating, listing, updating and deleting tokens, the
bad input each refuses, the audit log, and registering with an admin-made token (its
`pending` and `completed` counts, a used-up or expired token refused)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from urllib.parse import quote

from tests.admin_helpers import ADMIN, AdminTestCase, User
from tests.harness import on_both_engines

TOKENS = "/v1/registration_tokens"
REGISTER = "/_matrix/client/v3/register"
VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"
STAGE = "m.login.registration_token"
PASSWORD = "correct horse battery"
DAY_MS = 24 * 3600 * 1000


def token_paths(token: str) -> list[tuple[str, str, Any]]:
    return [
        ("GET", f"{ADMIN}{TOKENS}", None),
        ("POST", f"{ADMIN}{TOKENS}/new", {"token": "abcd"}),
        ("GET", f"{ADMIN}{TOKENS}/{token}", None),
        ("PUT", f"{ADMIN}{TOKENS}/{token}", {"uses_allowed": 1}),
        ("DELETE", f"{ADMIN}{TOKENS}/{token}", None),
    ]


class TokenTestCase(AdminTestCase):
    config_overrides = {"registration": {"require_token": True, "tokens": ["fromconfig"]}}

    async def user(self, localpart: str) -> User:
        # Registration needs a token here: the config's.
        session = await self.register(localpart, auth={"type": STAGE, "token": "fromconfig"})
        return User(session["user_id"], session["access_token"], session["device_id"])

    def now_ms(self) -> int:
        return self.hs.clock.time_msec()

    async def create(self, admin: User, **body: Any) -> dict[str, Any]:
        r = await self.admin_call(admin, "POST", f"{TOKENS}/new", body)
        self.assertEqual(r.code, 200, r)
        return r.json

    async def get(self, admin: User, token: str) -> dict[str, Any]:
        r = await self.admin_get(admin, f"{TOKENS}/{quote(token)}")
        self.assertEqual(r.code, 200, r)
        return r.json

    async def start_registration(self, localpart: str, token: str) -> tuple[int, dict[str, Any]]:
        """Pass the token stage in a new session without finishing (no password)."""
        r = await self.request(
            "POST", REGISTER, {"username": localpart, "auth": {"type": STAGE, "token": token}}
        )
        return r.code, r.json

    async def register_with(self, localpart: str, token: str) -> Any:
        return await self.request(
            "POST",
            REGISTER,
            {"username": localpart, "password": PASSWORD, "auth": {"type": STAGE, "token": token}},
        )


@on_both_engines
class RegistrationTokenAccessTests(TokenTestCase):
    async def test_every_endpoint_needs_a_token(self):
        for method, path, body in token_paths("abcd"):
            r = await self.request(method, path, body)
            self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_every_endpoint_refuses_non_admins(self):
        admin = await self.make_admin()
        await self.create(admin, token="abcd")
        mallory = await self.user("mallory")
        for token in ("abcd", "unknown"):
            for method, path, body in token_paths(token):
                r = await self.request(method, path, body, token=mallory.token)
                self.assertError(r, 403, "M_FORBIDDEN")
        self.assertEqual((await self.get(admin, "abcd"))["uses_allowed"], None)
        self.assertEqual(len(await self.hs.admin_audit_store.entries()), 1)

    async def test_unknown_tokens_are_not_found(self):
        admin = await self.make_admin()
        for method, path, body in token_paths("unknown"):
            if path.endswith(("/registration_tokens", "/new")):
                continue
            r = await self.request(method, path, body, token=admin.token)
            self.assertError(r, 404, "M_NOT_FOUND")


@on_both_engines
class RegistrationTokenAdminTests(TokenTestCase):
    async def test_create_with_defaults(self):
        admin = await self.make_admin()
        body = await self.create(admin)
        self.assertRegex(body["token"], r"^[A-Za-z0-9._~-]{16}$")
        self.assertEqual(
            {k: v for k, v in body.items() if k != "token"},
            {"uses_allowed": None, "pending": 0, "completed": 0, "expiry_time": None},
        )
        self.assertEqual(await self.get(admin, body["token"]), body)

    async def test_create_with_length(self):
        admin = await self.make_admin()
        for length in (1, 64):
            body = await self.create(admin, length=length)
            self.assertEqual(len(body["token"]), length)

    async def test_create_with_every_field(self):
        admin = await self.make_admin()
        expiry = self.now_ms() + DAY_MS
        body = await self.create(admin, token="a.b_c~d-9", uses_allowed=3, expiry_time=expiry)
        self.assertEqual(
            body,
            {
                "token": "a.b_c~d-9",
                "uses_allowed": 3,
                "pending": 0,
                "completed": 0,
                "expiry_time": expiry,
            },
        )

    async def test_create_refuses_bad_input(self):
        admin = await self.make_admin()
        await self.create(admin, token="taken")
        past = self.now_ms() - 1000
        bad: list[dict[str, Any]] = [
            {"token": ""},
            {"token": "a" * 65},
            {"token": "has space"},
            {"token": "slash/"},
            {"token": "ümlaut"},
            {"token": 5},
            {"token": "taken"},
            {"length": 0},
            {"length": 65},
            {"length": "8"},
            {"length": True},
            {"uses_allowed": -1},
            {"uses_allowed": 1.5},
            {"uses_allowed": "1"},
            {"expiry_time": past},
            {"expiry_time": "tomorrow"},
        ]
        for body in bad:
            r = await self.admin_call(admin, "POST", f"{TOKENS}/new", body)
            self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.admin_call(admin, "POST", f"{TOKENS}/new", [])
        self.assertEqual(r.code, 400, r)
        r = await self.admin_get(admin, TOKENS)
        self.assertEqual([t["token"] for t in r.json["registration_tokens"]], ["taken"])

    async def test_list_and_valid_filter(self):
        admin = await self.make_admin()
        await self.create(admin, token="open")
        await self.create(admin, token="used", uses_allowed=0)
        await self.create(admin, token="later", expiry_time=self.now_ms() + DAY_MS)
        await self.create(admin, token="expired", expiry_time=self.now_ms() + DAY_MS)
        await self.hs.registration_token_store.update_token("expired", {"expiry_time": 1})

        async def listed(**params: Any) -> list[str]:
            r = await self.admin_get(admin, TOKENS, **params)
            self.assertEqual(r.code, 200, r)
            return sorted(t["token"] for t in r.json["registration_tokens"])

        self.assertEqual(await listed(), ["expired", "later", "open", "used"])
        self.assertEqual(await listed(valid="true"), ["later", "open"])
        self.assertEqual(await listed(valid="false"), ["expired", "used"])
        r = await self.admin_get(admin, TOKENS, valid="maybe")
        self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_update(self):
        admin = await self.make_admin()
        await self.create(admin, token="defg", uses_allowed=1)
        expiry = self.now_ms() + DAY_MS
        r = await self.admin_call(admin, "PUT", f"{TOKENS}/defg", {"expiry_time": expiry})
        self.assertEqual(r.code, 200, r)
        self.assertEqual((r.json["uses_allowed"], r.json["expiry_time"]), (1, expiry))
        r = await self.admin_call(admin, "PUT", f"{TOKENS}/defg", {"uses_allowed": None})
        self.assertEqual((r.json["uses_allowed"], r.json["expiry_time"]), (None, expiry))
        r = await self.admin_call(admin, "PUT", f"{TOKENS}/defg", {"expiry_time": None})
        self.assertEqual((r.json["uses_allowed"], r.json["expiry_time"]), (None, None))
        # An empty body changes nothing.
        r = await self.admin_call(admin, "PUT", f"{TOKENS}/defg", {})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, await self.get(admin, "defg"))

    async def test_update_refuses_bad_input(self):
        admin = await self.make_admin()
        await self.create(admin, token="defg", uses_allowed=2)
        for body in (
            {"uses_allowed": -1},
            {"uses_allowed": "2"},
            {"expiry_time": self.now_ms() - 1000},
            {"expiry_time": 1.5},
        ):
            r = await self.admin_call(admin, "PUT", f"{TOKENS}/defg", body)
            self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual((await self.get(admin, "defg"))["uses_allowed"], 2)

    async def test_a_token_named_new_is_reachable(self):
        admin = await self.make_admin()
        await self.create(admin, token="new")
        self.assertEqual((await self.get(admin, "new"))["token"], "new")
        r = await self.admin_call(admin, "DELETE", f"{TOKENS}/new")
        self.assertEqual((r.code, r.json), (200, {}))

    async def test_delete(self):
        admin = await self.make_admin()
        await self.create(admin, token="wxyz")
        r = await self.admin_call(admin, "DELETE", f"{TOKENS}/wxyz")
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.admin_get(admin, f"{TOKENS}/wxyz")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.admin_call(admin, "DELETE", f"{TOKENS}/wxyz")
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_changes_are_audited(self):
        admin = await self.make_admin()
        expiry = self.now_ms() + DAY_MS
        logged: list[str] = []
        handler = logging.Handler(logging.INFO)
        handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
        logger = logging.getLogger("heddle.admin.audit")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        self.addCleanup(logger.removeHandler, handler)
        await self.create(admin, token="abcd", uses_allowed=2)
        await self.admin_call(admin, "PUT", f"{TOKENS}/abcd", {"expiry_time": expiry})
        await self.admin_get(admin, f"{TOKENS}/abcd")
        await self.admin_get(admin, TOKENS)
        await self.admin_call(admin, "DELETE", f"{TOKENS}/abcd")
        # Logs never hold the token itself, which lets anyone register: a hash names it.
        target = "registration_token:" + hashlib.sha256(b"abcd").hexdigest()[:16]
        entries = [(e.admin_user_id, e.action, e.details) for e in await self.audit(target)]
        self.assertEqual(
            entries,
            [
                (
                    admin.user_id,
                    "create_registration_token",
                    {"uses_allowed": 2, "expiry_time": None},
                ),
                (admin.user_id, "update_registration_token", {"expiry_time": expiry}),
                (admin.user_id, "delete_registration_token", {}),
            ],
        )
        self.assertEqual(len(logged), 3)
        self.assertFalse([line for line in logged if "abcd" in line], logged)


@on_both_engines
class RegisteringWithAdminTokensTests(TokenTestCase):
    async def test_admin_token_registers_and_counts(self):
        admin = await self.make_admin()
        await self.create(admin, token="abcd", uses_allowed=3)
        r = await self.register_with("alice", "abcd")
        self.assertEqual(r.code, 200, r)
        body = await self.get(admin, "abcd")
        self.assertEqual((body["pending"], body["completed"]), (0, 1))

    async def test_config_tokens_still_work_and_are_not_listed(self):
        admin = await self.make_admin()
        r = await self.register_with("alice", "fromconfig")
        self.assertEqual(r.code, 200, r)
        r = await self.admin_get(admin, TOKENS)
        self.assertEqual(r.json["registration_tokens"], [])

    async def test_a_session_past_the_stage_is_pending(self):
        admin = await self.make_admin()
        await self.create(admin, token="abcd", uses_allowed=1)
        code, body = await self.start_registration("alice", "abcd")
        # The stage passed; the password is still missing.
        self.assertEqual(code, 400, body)
        self.assertEqual(body["errcode"], "M_MISSING_PARAM")
        token = await self.get(admin, "abcd")
        self.assertEqual((token["pending"], token["completed"]), (1, 0))
        # The pending use takes the only one: nobody else can register with it meanwhile.
        r = await self.register_with("bob", "abcd")
        self.assertEqual(r.code, 401, r)
        self.assertEqual(r.json["errcode"], "M_FORBIDDEN")
        r = await self.request("GET", f"{VALIDITY}?token=abcd")
        self.assertEqual(r.json, {"valid": False})

    async def test_an_expired_session_gives_its_use_back(self):
        admin = await self.make_admin()
        await self.create(admin, token="abcd", uses_allowed=1)
        await self.start_registration("alice", "abcd")
        await self.hs.db.run_interaction(
            "age_sessions",
            lambda txn: txn.execute("UPDATE ui_auth_sessions SET created_ts = ?", (0,)),
        )
        await self.hs.uia.expire_sessions()
        token = await self.get(admin, "abcd")
        self.assertEqual((token["pending"], token["completed"]), (0, 0))
        r = await self.register_with("bob", "abcd")
        self.assertEqual(r.code, 200, r)

    async def test_a_used_up_token_is_refused(self):
        admin = await self.make_admin()
        await self.create(admin, token="once", uses_allowed=1)
        r = await self.register_with("alice", "once")
        self.assertEqual(r.code, 200, r)
        r = await self.register_with("bob", "once")
        self.assertEqual(r.code, 401, r)
        self.assertEqual(r.json["errcode"], "M_FORBIDDEN")
        r = await self.request("GET", f"{VALIDITY}?token=once")
        self.assertEqual(r.json, {"valid": False})
        token = await self.get(admin, "once")
        self.assertEqual((token["pending"], token["completed"]), (0, 1))
        # Raising the limit opens it again.
        await self.admin_call(admin, "PUT", f"{TOKENS}/once", {"uses_allowed": 2})
        r = await self.register_with("bob", "once")
        self.assertEqual(r.code, 200, r)

    async def test_an_expired_token_is_refused(self):
        admin = await self.make_admin()
        await self.create(admin, token="late", expiry_time=self.now_ms() + DAY_MS)
        r = await self.request("GET", f"{VALIDITY}?token=late")
        self.assertEqual(r.json, {"valid": True})
        await self.hs.registration_token_store.update_token("late", {"expiry_time": 1})
        r = await self.register_with("alice", "late")
        self.assertEqual(r.code, 401, r)
        self.assertEqual(r.json["errcode"], "M_FORBIDDEN")
        r = await self.request("GET", f"{VALIDITY}?token=late")
        self.assertEqual(r.json, {"valid": False})

    async def test_a_deleted_token_is_refused(self):
        admin = await self.make_admin()
        await self.create(admin, token="gone")
        await self.admin_call(admin, "DELETE", f"{TOKENS}/gone")
        r = await self.register_with("alice", "gone")
        self.assertEqual(r.code, 401, r)
