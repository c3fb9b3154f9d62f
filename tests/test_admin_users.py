"""The admin API for users (Synapse's `/_synapse/admin/.../users...` and the spec's
`/admin/whois`), over real HTTP on both engines: access control, the user list, querying,
creating and changing accounts, deactivation, password resets, sessions, devices, rooms,
account data, login-as, and the audit log every change writes."""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from tests.admin_helpers import ADMIN, AdminTestCase, User, q
from tests.harness import PASSWORD, SERVER_NAME, on_both_engines

API = "/_matrix/client/v3"
ALICE = f"@alice:{SERVER_NAME}"
REMOTE = "@someone:elsewhere.example"
UNKNOWN = f"@nobody:{SERVER_NAME}"


def user_paths(user_id: str) -> list[tuple[str, str, Any]]:
    """Every admin endpoint of this change, about `user_id`: (method, full path, body)."""
    u = q(user_id)
    return [
        ("GET", f"{ADMIN}/v2/users", None),
        ("GET", f"{ADMIN}/v3/users", None),
        ("GET", f"{ADMIN}/v2/users/{u}", None),
        ("PUT", f"{ADMIN}/v2/users/{u}", {"displayname": "x"}),
        ("GET", f"{ADMIN}/v1/users/{u}/admin", None),
        ("PUT", f"{ADMIN}/v1/users/{u}/admin", {"admin": True}),
        ("POST", f"{ADMIN}/v1/deactivate/{u}", {}),
        ("POST", f"{ADMIN}/v1/reset_password/{u}", {"new_password": "another password"}),
        ("GET", f"{ADMIN}/v1/whois/{u}", None),
        ("GET", f"{ADMIN}/v2/users/{u}/devices", None),
        ("POST", f"{ADMIN}/v2/users/{u}/devices", {"device_id": "NEWDEVICE"}),
        ("GET", f"{ADMIN}/v2/users/{u}/devices/DEV", None),
        ("PUT", f"{ADMIN}/v2/users/{u}/devices/DEV", {"display_name": "x"}),
        ("DELETE", f"{ADMIN}/v2/users/{u}/devices/DEV", None),
        ("POST", f"{ADMIN}/v2/users/{u}/delete_devices", {"devices": ["DEV"]}),
        ("GET", f"{ADMIN}/v1/users/{u}/joined_rooms", None),
        ("GET", f"{ADMIN}/v1/users/{u}/accountdata", None),
        ("POST", f"{ADMIN}/v1/users/{u}/login", {}),
        ("POST", f"{ADMIN}/v1/users/{u}/shadow_ban", None),
        ("DELETE", f"{ADMIN}/v1/users/{u}/shadow_ban", None),
        ("GET", f"{ADMIN}/v1/users/{u}/override_ratelimit", None),
        ("POST", f"{ADMIN}/v1/users/{u}/override_ratelimit", {}),
        ("DELETE", f"{ADMIN}/v1/users/{u}/override_ratelimit", None),
        ("PUT", f"{ADMIN}/v1/suspend/{u}", {"suspend": True}),
        ("GET", f"/_matrix/client/v1/admin/lock/{u}", None),
        ("PUT", f"/_matrix/client/v1/admin/lock/{u}", {"locked": True}),
        ("GET", f"/_matrix/client/v1/admin/suspend/{u}", None),
        ("PUT", f"/_matrix/client/v1/admin/suspend/{u}", {"suspended": True}),
    ]


class _Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@on_both_engines
class AdminAccessTests(AdminTestCase):
    async def test_every_endpoint_needs_a_token(self):
        for method, path, body in user_paths(ALICE):
            r = await self.request(method, path, body)
            self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_every_endpoint_refuses_non_admins_before_looking_the_user_up(self):
        mallory = await self.user("mallory")
        alice = await self.user("alice")
        # About an existing user, an unknown one and a remote one alike: a non-admin learns
        # nothing about which users exist (the spec: authorisation before lookup).
        for target in (alice.user_id, UNKNOWN, REMOTE):
            for method, path, body in user_paths(target):
                if "/whois/" in path and target == mallory.user_id:
                    continue
                r = await self.request(method, path, body, token=mallory.token)
                self.assertError(r, 403, "M_FORBIDDEN")
        # Nothing was changed.
        account = await self.hs.accounts.get_account(alice.user_id)
        self.assertFalse(account.deactivated or account.locked or account.suspended)
        self.assertEqual(await self.hs.admin_audit_store.entries(), [])

    async def test_whois_lets_users_ask_about_themselves(self):
        alice = await self.user("alice")
        for path in (f"{ADMIN}/v1/whois/{q(ALICE)}", f"{API}/admin/whois/{q(ALICE)}"):
            r = await self.request("GET", path, token=alice.token)
            self.assertEqual(r.code, 200, r)
            self.assertEqual(r.json["user_id"], ALICE)

    async def test_unknown_users_are_not_found(self):
        admin = await self.make_admin()
        for method, path, body in user_paths(UNKNOWN):
            if path.endswith("/users"):
                continue
            if method == "PUT" and "/v2/users/" in path and "/devices" not in path:
                continue  # creates the user
            r = await self.request(method, path, body, token=admin.token)
            self.assertError(r, 404, "M_NOT_FOUND")

    async def test_remote_users_are_refused(self):
        admin = await self.make_admin()
        for method, path, body in user_paths(REMOTE):
            if path.endswith("/users"):
                continue
            r = await self.request(method, path, body, token=admin.token)
            self.assertError(r, 400, "M_INVALID_PARAM")
        for bad in ("not-a-user-id", "@no-server"):
            r = await self.admin_get(admin, f"/v2/users/{q(bad)}")
            self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_changes_are_audited_and_logged(self):
        admin = await self.make_admin()
        await self.user("alice")
        handler = _Logged()
        logger = logging.getLogger("heddle.admin.audit")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        self.addCleanup(logger.removeHandler, handler)
        r = await self.admin_call(admin, "PUT", f"/v2/users/{q(ALICE)}", {"displayname": "Al"})
        self.assertEqual(r.code, 200, r)
        # Reads are not audited.
        await self.admin_get(admin, f"/v2/users/{q(ALICE)}")
        await self.admin_get(admin, "/v2/users")
        entries = await self.audit(ALICE)
        self.assertEqual(len(entries), 1)
        entry = entries[0]
        self.assertEqual(
            (entry.admin_user_id, entry.action, entry.target, entry.details),
            (admin.user_id, "modify_user", ALICE, {"displayname": "Al"}),
        )
        self.assertGreater(entry.ts, 0)
        self.assertEqual(len(handler.messages), 1)
        self.assertIn("modify_user", handler.messages[0])
        self.assertIn(admin.user_id, handler.messages[0])
        self.assertIn(ALICE, handler.messages[0])

    async def test_passwords_never_reach_the_audit_log(self):
        admin = await self.make_admin()
        await self.user("alice")
        secret = "a brand new secret password"
        r = await self.admin_call(
            admin, "POST", f"/v1/reset_password/{q(ALICE)}", {"new_password": secret}
        )
        self.assertEqual(r.code, 200, r)
        r = await self.admin_call(admin, "PUT", f"/v2/users/{q(ALICE)}", {"password": secret})
        self.assertEqual(r.code, 200, r)
        entries = await self.audit(ALICE)
        self.assertEqual([e.action for e in entries], ["reset_password", "modify_user"])
        self.assertNotIn(secret, repr(entries))

    async def test_capabilities_offer_account_moderation_to_admins_only(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        r = await self.request("GET", f"{API}/capabilities", token=admin.token)
        self.assertEqual(
            r.json["capabilities"]["m.account_moderation"], {"lock": True, "suspend": True}
        )
        r = await self.request("GET", f"{API}/capabilities", token=alice.token)
        self.assertNotIn("m.account_moderation", r.json["capabilities"])

    async def test_shared_secret_registration_still_works(self):
        r = await self.request("GET", f"{ADMIN}/v1/register")
        self.assertEqual(r.code, 200, r)
        self.assertIn("nonce", r.json)


@on_both_engines
class UserListTests(AdminTestCase):
    async def setUp(self):
        await super().setUp()
        self.admin = await self.make_admin("root")
        for name in ("alice", "bob", "carol", "dave", "erin"):
            await self.user(name)

    async def list(self, version: str = "v2", **params: Any) -> dict[str, Any]:
        r = await self.admin_get(self.admin, f"/{version}/users", **params)
        self.assertEqual(r.code, 200, r)
        return r.json

    def names(self, body: dict[str, Any]) -> list[str]:
        return [u["name"].split(":")[0][1:] for u in body["users"]]

    async def test_listing_shape(self):
        body = await self.list()
        self.assertEqual(body["total"], 6)
        self.assertNotIn("next_token", body)
        self.assertEqual(self.names(body), ["alice", "bob", "carol", "dave", "erin", "root"])
        alice = body["users"][0]
        self.assertEqual(
            set(alice),
            {
                "name", "is_guest", "admin", "user_type", "deactivated", "erased",
                "shadow_banned", "displayname", "avatar_url", "creation_ts", "last_seen_ts",
                "locked",
            },
        )
        self.assertEqual(alice["name"], ALICE)
        self.assertEqual(alice["displayname"], "alice")
        self.assertFalse(alice["admin"])
        self.assertTrue(body["users"][-1]["admin"])
        # Milliseconds in the list (Synapse's).
        self.assertGreater(alice["creation_ts"], 10**12)
        # Seen: only root, who asked for the list.
        self.assertIsNone(alice["last_seen_ts"])
        self.assertIsInstance(body["users"][-1]["last_seen_ts"], int)

    async def test_pagination(self):
        seen: list[str] = []
        token: str | None = "0"
        pages = 0
        while token is not None:
            body = await self.list(**{"from": token, "limit": 2})
            self.assertEqual(body["total"], 6)
            self.assertLessEqual(len(body["users"]), 2)
            seen += self.names(body)
            token = body.get("next_token")
            if token is not None:
                self.assertIsInstance(token, str)
            pages += 1
        self.assertEqual(pages, 3)
        self.assertEqual(seen, ["alice", "bob", "carol", "dave", "erin", "root"])
        # Past the end: an empty page, no next token.
        body = await self.list(**{"from": 100})
        self.assertEqual((body["users"], body["total"]), ([], 6))
        self.assertNotIn("next_token", body)

    async def test_bad_pagination_and_filters_are_refused(self):
        for params in (
            {"from": "abc"},
            {"from": "-1"},
            {"from": "1.5"},
            {"from": "9" * 30},
            {"limit": "0"},
            {"limit": "-5"},
            {"limit": "ten"},
            {"order_by": "password_hash"},
            {"dir": "up"},
            {"admins": "maybe"},
            {"guests": "1"},
            {"deactivated": "yes"},
        ):
            r = await self.admin_get(self.admin, "/v2/users", **params)
            self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_name_and_user_id_filters(self):
        r = await self.admin_call(
            self.admin, "PUT", f"/v2/users/{q(ALICE)}", {"displayname": "Zebra Person"}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(self.names(await self.list(name="zebra")), ["alice"])
        self.assertEqual(self.names(await self.list(name="CAR")), ["carol"])
        # `name` looks at localparts, not the server name.
        self.assertEqual((await self.list(name="heddle"))["total"], 0)
        self.assertEqual(self.names(await self.list(user_id="o")), ["bob", "carol", "root"])
        # LIKE wildcards are taken literally.
        self.assertEqual((await self.list(user_id="%"))["total"], 0)
        self.assertEqual((await self.list(name="_"))["total"], 0)

    async def test_deactivated_v2_and_v3(self):
        r = await self.admin_call(self.admin, "POST", f"/v1/deactivate/{q(ALICE)}", {})
        self.assertEqual(r.code, 200, r)
        # v2: left out unless asked for; then included with the others.
        self.assertNotIn("alice", self.names(await self.list()))
        self.assertIn("alice", self.names(await self.list(deactivated="true")))
        self.assertEqual((await self.list(deactivated="true"))["total"], 6)
        # v3: a filter with three states.
        self.assertEqual((await self.list("v3"))["total"], 6)
        self.assertEqual(self.names(await self.list("v3", deactivated="true")), ["alice"])
        self.assertNotIn("alice", self.names(await self.list("v3", deactivated="false")))

    async def test_admins_filter_and_ordering(self):
        self.assertEqual(self.names(await self.list(admins="true")), ["root"])
        self.assertNotIn("root", self.names(await self.list(admins="false")))
        self.assertEqual(
            self.names(await self.list(dir="b")),
            ["root", "erin", "dave", "carol", "bob", "alice"],
        )
        # Ties broken by name, ascending, whichever the direction.
        self.assertEqual(
            self.names(await self.list(order_by="admin", dir="b")),
            ["root", "alice", "bob", "carol", "dave", "erin"],
        )
        by_creation = self.names(await self.list(order_by="creation_ts"))
        self.assertEqual(by_creation[0], "root")
        for order_by in ("displayname", "last_seen_ts", "avatar_url", "user_type", "is_guest",
                         "deactivated", "shadow_banned", "locked"):
            body = await self.list(order_by=order_by)
            self.assertEqual(body["total"], 6, order_by)

    async def test_missing_values_sort_first_on_both_engines(self):
        # SQLite and PostgreSQL disagree on where NULLs sort by default; the list does not.
        for user_id, name in ((f"@bob:{SERVER_NAME}", ""), (f"@carol:{SERVER_NAME}", "Aaron")):
            r = await self.admin_call(
                self.admin, "PUT", f"/v2/users/{q(user_id)}", {"displayname": name}
            )
            self.assertEqual(r.code, 200, r)
        self.assertEqual(
            self.names(await self.list(order_by="displayname")),
            ["bob", "carol", "alice", "dave", "erin", "root"],
        )
        self.assertEqual(
            self.names(await self.list(order_by="displayname", dir="b")),
            ["root", "erin", "dave", "alice", "carol", "bob"],
        )

    async def test_locked_users_listed_only_when_asked(self):
        r = await self.request(
            "PUT", f"/_matrix/client/v1/admin/lock/{q(ALICE)}", {"locked": True},
            token=self.admin.token,
        )
        self.assertEqual(r.code, 200, r)
        self.assertNotIn("alice", self.names(await self.list()))
        listed = await self.list(locked="true")
        self.assertIn("alice", self.names(listed))
        self.assertTrue(listed["users"][0]["locked"])


@on_both_engines
class UserListNameFilterTests(AdminTestCase):
    """`name` matches the localpart or display name (Synapse's user_admin_api.md), never
    the server name and its port; letters are compared case-insensitively by Unicode's
    mapping, the same on both engines whatever PostgreSQL's locale."""

    async def test_name_filter_folds_unicode_and_skips_the_server_name(self):
        await self.start_server(server_name="Chat.Example:8448")
        admin = await self.make_admin("root")
        for localpart, displayname in (
            ("emile", "Émile Zoë"),
            ("sofia", "ΣΟΦΙΑ"),
            ("chat", None),
            ("plain", "Plain Person"),
        ):
            user = await self.user(localpart)
            if displayname is not None:
                r = await self.request(
                    "PUT",
                    f"{API}/profile/{q(user.user_id)}/displayname",
                    {"displayname": displayname},
                    token=user.token,
                )
                self.assertEqual(r.code, 200, r)

        async def names(**params: Any) -> list[str]:
            r = await self.admin_get(admin, "/v2/users", **params)
            self.assertEqual(r.code, 200, r)
            return sorted(u["name"] for u in r.json["users"])

        def ids(*localparts: str) -> list[str]:
            return sorted(f"@{lp}:Chat.Example:8448" for lp in localparts)

        for term in ("émile", "ÉMILE", "zoë", "ZOË", "Émile zoË"):
            self.assertEqual(await names(name=term), ids("emile"), term)
        self.assertEqual(await names(name="σοφ"), ids("sofia"))
        self.assertEqual(await names(name="ΣΟΦΙΑ"), ids("sofia"))
        # The server name and port are not searched; a localpart equal to part of it is.
        self.assertEqual(await names(name="8448"), [])
        self.assertEqual(await names(name="example"), [])
        self.assertEqual(await names(name=":"), [])
        self.assertEqual(await names(name="chat"), ids("chat"))
        self.assertEqual(await names(name="CHAT"), ids("chat"))
        # `user_id` is about the whole ID (Synapse's "user IDs that contain this value").
        self.assertEqual(await names(user_id="8448"), ids("root", "emile", "sofia", "chat", "plain"))
        self.assertEqual(await names(user_id="@EMILE:chat"), ids("emile"))


@on_both_engines
class UserAccountTests(AdminTestCase):
    async def test_query_user(self):
        admin = await self.make_admin()
        await self.user("alice")
        r = await self.admin_get(admin, f"/v2/users/{q(ALICE)}")
        self.assertEqual(r.code, 200, r)
        body = r.json
        self.assertEqual(body["name"], ALICE)
        self.assertEqual(body["displayname"], "alice")
        self.assertEqual(body["threepids"], [])
        self.assertEqual(body["external_ids"], [])
        for flag in ("is_guest", "admin", "deactivated", "erased", "shadow_banned",
                     "locked", "suspended"):
            self.assertIs(body[flag], False, flag)
        self.assertIsNone(body["user_type"])
        # Seconds here (Synapse's), unlike the list.
        self.assertLess(body["creation_ts"], 10**11)
        self.assertGreater(body["creation_ts"], 10**9)

    async def test_create_user(self):
        admin = await self.make_admin()
        r = await self.admin_call(
            admin,
            "PUT",
            f"/v2/users/{q(ALICE)}",
            {"password": PASSWORD, "displayname": "Alice", "admin": False,
             "user_type": "bot", "avatar_url": "mxc://test.heddle/abc"},
        )
        self.assertEqual(r.code, 201, r)
        self.assertEqual(r.json["name"], ALICE)
        self.assertEqual(r.json["displayname"], "Alice")
        self.assertEqual(r.json["avatar_url"], "mxc://test.heddle/abc")
        self.assertEqual(r.json["user_type"], "bot")
        self.assertFalse(r.json["admin"])
        await self.login("alice")
        [entry] = await self.audit(ALICE)
        self.assertEqual(entry.action, "create_user")
        self.assertEqual(entry.details["user_type"], "bot")

    async def test_create_without_password_cannot_log_in(self):
        admin = await self.make_admin()
        r = await self.admin_call(admin, "PUT", f"/v2/users/{q(ALICE)}", {})
        self.assertEqual(r.code, 201, r)
        r = await self.request(
            "POST", f"{API}/login",
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
             "password": PASSWORD},
        )
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_create_admin_with_bad_input(self):
        admin = await self.make_admin()
        for body, code, errcode in (
            ({"admin": "yes"}, 400, "M_BAD_JSON"),
            ({"user_type": "wizard"}, 400, "M_INVALID_PARAM"),
            ({"password": "x"}, 400, "M_WEAK_PASSWORD"),
            ({"threepids": [{"medium": "email", "address": "not an address"}]}, 400,
             "M_INVALID_PARAM"),
            ({"threepids": [{"medium": "msisdn", "address": "447700900000"}]}, 400,
             "M_INVALID_PARAM"),
            ({"threepids": [{"medium": "email"}]}, 400, "M_INVALID_PARAM"),
            ({"deactivated": True}, 400, "M_INVALID_PARAM"),
        ):
            r = await self.admin_call(admin, "PUT", f"/v2/users/{q(ALICE)}", body)
            self.assertError(r, code, errcode)
        r = await self.admin_call(admin, "PUT", f"/v2/users/{q('@Bad Name:test.heddle')}", {})
        self.assertError(r, 400, "M_INVALID_USERNAME")
        self.assertIsNone(await self.hs.accounts.get_account(ALICE))

    async def test_modify_user(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        r = await self.admin_call(
            admin, "PUT", f"/v2/users/{q(ALICE)}",
            {"displayname": "Alice A.", "admin": True, "user_type": "support"},
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["displayname"], "Alice A.")
        self.assertTrue(r.json["admin"])
        self.assertEqual(r.json["user_type"], "support")
        # The new admin can use the admin API at once.
        r = await self.admin_get(alice, "/v2/users")
        self.assertEqual(r.code, 200, r)
        # user_type: null clears it; leaving it out keeps it.
        r = await self.admin_call(admin, "PUT", f"/v2/users/{q(ALICE)}", {"displayname": ""})
        self.assertEqual((r.json["user_type"], r.json["displayname"]), ("support", None))
        r = await self.admin_call(admin, "PUT", f"/v2/users/{q(ALICE)}", {"user_type": None})
        self.assertIsNone(r.json["user_type"])

    async def test_modify_password_logs_out_unless_asked_not_to(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        r = await self.admin_call(
            admin, "PUT", f"/v2/users/{q(ALICE)}",
            {"password": "second password", "logout_devices": False},
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/account/whoami", token=alice.token)
        self.assertEqual(r.code, 200, r)
        r = await self.admin_call(
            admin, "PUT", f"/v2/users/{q(ALICE)}", {"password": "third password"}
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/account/whoami", token=alice.token)
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        await self.login("alice", "third password")

    async def test_a_refused_put_changes_nothing(self):
        """A value that would be refused (a display name too long, a password too short) is
        found before anything is written: no password changed, no device logged out, no
        account made."""
        admin = await self.make_admin()
        alice = await self.user("alice")
        for body in ({"password": "new password!", "displayname": "x" * 5000},
                     {"password": "new password!", "avatar_url": "m" * 5000},
                     {"displayname": "Alice", "password": ""}):
            r = await self.admin_call(admin, "PUT", f"/v2/users/{q(ALICE)}", body)
            self.assertEqual(r.code, 400, r)
        r = await self.request("GET", f"{API}/account/whoami", token=alice.token)
        self.assertEqual(r.code, 200, r)
        await self.login("alice", PASSWORD)
        r = await self.admin_call(
            admin, "PUT", f"/v2/users/{q(f'@new:{SERVER_NAME}')}",
            {"password": "new password!", "avatar_url": "m" * 5000},
        )
        self.assertEqual(r.code, 400, r)
        self.assertIsNone(await self.hs.accounts.get_account(f"@new:{SERVER_NAME}"))
        self.assertEqual(await self.hs.admin_audit_store.entries(), [])

    async def test_admins_cannot_demote_or_deactivate_themselves_through_put(self):
        admin = await self.make_admin()
        r = await self.admin_call(admin, "PUT", f"/v2/users/{q(admin.user_id)}", {"admin": False})
        body = self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertIn("last server admin", body["error"])
        await self.make_admin("second")
        r = await self.admin_call(admin, "PUT", f"/v2/users/{q(admin.user_id)}", {"admin": False})
        body = self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertIn("yourself", body["error"])
        r = await self.admin_call(
            admin, "PUT", f"/v2/users/{q(admin.user_id)}", {"deactivated": True}
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertTrue((await self.hs.accounts.get_account(admin.user_id)).is_admin)

    async def test_admin_flag_endpoint(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        path = f"/v1/users/{q(ALICE)}/admin"
        r = await self.admin_get(admin, path)
        self.assertEqual((r.code, r.json), (200, {"admin": False}))
        r = await self.admin_call(admin, "PUT", path, {"admin": True})
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.admin_get(alice, path)
        self.assertEqual(r.json, {"admin": True})
        r = await self.admin_call(admin, "PUT", path, {"admin": "no"})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.admin_call(alice, "PUT", f"/v1/users/{q(alice.user_id)}/admin",
                                  {"admin": False})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.admin_call(admin, "PUT", path, {"admin": False})
        self.assertEqual(r.code, 200, r)
        r = await self.admin_get(alice, path)
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertEqual(
            [(e.action, e.details) for e in await self.audit(ALICE)],
            [("modify_user", {"admin": True}), ("modify_user", {"admin": False})],
        )

    async def test_reactivate_through_put(self):
        admin = await self.make_admin()
        await self.user("alice")
        r = await self.admin_call(admin, "PUT", f"/v2/users/{q(ALICE)}", {"deactivated": True})
        self.assertEqual(r.code, 200, r)
        self.assertTrue(r.json["deactivated"])
        r = await self.admin_call(
            admin, "PUT", f"/v2/users/{q(ALICE)}",
            {"deactivated": False, "password": "a new start"},
        )
        self.assertEqual(r.code, 200, r)
        self.assertFalse(r.json["deactivated"])
        await self.login("alice", "a new start")


@on_both_engines
class DeactivationTests(AdminTestCase):
    async def test_deactivate_user(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(bob, preset="public_chat")
        invited_to = await self.create_room(bob, invite=[ALICE])
        r = await self.join(alice, room_id)
        self.assertEqual(r.code, 200, r)
        r = await self.admin_call(admin, "POST", f"/v1/deactivate/{q(ALICE)}", {})
        self.assertEqual(r.code, 200, r)
        account = await self.hs.accounts.get_account(ALICE)
        self.assertTrue(account.deactivated)
        self.assertFalse(account.erased)
        # Logged out, cannot log in, out of the room and its invite declined.
        r = await self.request("GET", f"{API}/account/whoami", token=alice.token)
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        r = await self.request(
            "POST", f"{API}/login",
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
             "password": PASSWORD},
        )
        self.assertEqual(r.code, 403, r)
        self.assertEqual(await self.membership_of(room_id, alice), "leave")
        self.assertEqual(await self.membership_of(invited_to, alice), "leave")
        # The profile stays without `erase`.
        r = await self.admin_get(admin, f"/v2/users/{q(ALICE)}")
        self.assertEqual(r.json["displayname"], "alice")
        [entry] = await self.audit(ALICE)
        self.assertEqual((entry.action, entry.details), ("deactivate_user", {"erase": False}))

    async def test_deactivate_with_erase(self):
        admin = await self.make_admin()
        await self.user("alice")
        r = await self.admin_call(admin, "POST", f"/v1/deactivate/{q(ALICE)}", {"erase": True})
        self.assertEqual(r.code, 200, r)
        r = await self.admin_get(admin, f"/v2/users/{q(ALICE)}")
        self.assertTrue(r.json["erased"])
        self.assertTrue(r.json["deactivated"])
        self.assertIsNone(r.json["displayname"])

    async def test_empty_body_is_accepted(self):
        admin = await self.make_admin()
        await self.user("alice")
        r = await self.request(
            "POST", f"{ADMIN}/v1/deactivate/{q(ALICE)}", raw=b"", token=admin.token
        )
        self.assertEqual(r.code, 200, r)

    async def test_last_admin_and_oneself_are_refused(self):
        admin = await self.make_admin()
        r = await self.admin_call(admin, "POST", f"/v1/deactivate/{q(admin.user_id)}", {})
        body = self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertIn("last server admin", body["error"])
        second = await self.make_admin("second")
        r = await self.admin_call(admin, "POST", f"/v1/deactivate/{q(admin.user_id)}", {})
        body = self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertIn("yourself", body["error"])
        self.assertFalse((await self.hs.accounts.get_account(admin.user_id)).deactivated)
        # Another admin may be deactivated while one remains.
        r = await self.admin_call(admin, "POST", f"/v1/deactivate/{q(second.user_id)}", {})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.audit(admin.user_id), [])

    async def test_bad_body(self):
        admin = await self.make_admin()
        await self.user("alice")
        r = await self.admin_call(admin, "POST", f"/v1/deactivate/{q(ALICE)}", {"erase": "yes"})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request(
            "POST", f"{ADMIN}/v1/deactivate/{q(ALICE)}", raw=b"{not json", token=admin.token
        )
        self.assertError(r, 400, "M_NOT_JSON")


@on_both_engines
class PasswordAndSessionTests(AdminTestCase):
    async def test_reset_password(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        r = await self.admin_call(
            admin, "POST", f"/v1/reset_password/{q(ALICE)}", {"new_password": "new password!"}
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/account/whoami", token=alice.token)
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        await self.login("alice", "new password!")
        [entry] = await self.audit(ALICE)
        self.assertEqual(entry.details, {"logout_devices": True})

    async def test_reset_password_keeping_sessions(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        r = await self.admin_call(
            admin, "POST", f"/v1/reset_password/{q(ALICE)}",
            {"new_password": "new password!", "logout_devices": False},
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/account/whoami", token=alice.token)
        self.assertEqual(r.code, 200, r)

    async def test_reset_password_bad_input(self):
        admin = await self.make_admin()
        await self.user("alice")
        r = await self.admin_call(admin, "POST", f"/v1/reset_password/{q(ALICE)}", {})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.admin_call(
            admin, "POST", f"/v1/reset_password/{q(ALICE)}", {"new_password": "x"}
        )
        self.assertError(r, 400, "M_WEAK_PASSWORD")

    async def test_whois(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        r = await self.request(
            "GET", f"{API}/account/whoami", token=alice.token,
            headers={"User-Agent": "AliceClient/1.0"},
        )
        self.assertEqual(r.code, 200, r)
        for path in (f"{ADMIN}/v1/whois/{q(ALICE)}", f"{API}/admin/whois/{q(ALICE)}",
                     f"/_matrix/client/r0/admin/whois/{q(ALICE)}"):
            r = await self.request("GET", path, token=admin.token)
            self.assertEqual(r.code, 200, r)
            self.assertEqual(r.json["user_id"], ALICE)
            [(device_id, info)] = r.json["devices"].items()
            self.assertEqual(device_id, alice.device_id)
            [session] = info["sessions"]
            [connection] = session["connections"]
            self.assertEqual(connection["ip"], "127.0.0.1")
            # The first request's (last-seen is written at most once a minute).
            self.assertEqual(connection["user_agent"], "AliceClient/1.0")
            self.assertIsInstance(connection["last_seen"], int)

    async def test_devices(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        second = await self.login("alice", device_id="SECOND")
        u = q(ALICE)
        r = await self.admin_get(admin, f"/v2/users/{u}/devices")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["total"], 2)
        ids = sorted(d["device_id"] for d in r.json["devices"])
        self.assertEqual(ids, sorted([alice.device_id, "SECOND"]))
        device = next(d for d in r.json["devices"] if d["device_id"] == alice.device_id)
        self.assertEqual(
            set(device),
            {"device_id", "display_name", "last_seen_ip", "last_seen_user_agent",
             "last_seen_ts", "user_id"},
        )
        self.assertEqual(device["user_id"], ALICE)
        r = await self.admin_call(
            admin, "PUT", f"/v2/users/{u}/devices/SECOND", {"display_name": "phone"}
        )
        self.assertEqual(r.code, 200, r)
        r = await self.admin_get(admin, f"/v2/users/{u}/devices/SECOND")
        self.assertEqual(r.json["display_name"], "phone")
        r = await self.admin_get(admin, f"/v2/users/{u}/devices/NOPE")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.admin_call(
            admin, "PUT", f"/v2/users/{u}/devices/NOPE", {"display_name": "x"}
        )
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.admin_call(admin, "DELETE", f"/v2/users/{u}/devices/SECOND")
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/account/whoami", token=second["access_token"])
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        r = await self.admin_call(admin, "POST", f"/v2/users/{u}/devices", {"device_id": "NEW"})
        self.assertEqual(r.code, 201, r)
        r = await self.admin_call(
            admin, "POST", f"/v2/users/{u}/delete_devices",
            {"devices": [alice.device_id, "NEW", "NEVER_EXISTED"]},
        )
        self.assertEqual(r.code, 200, r)
        r = await self.admin_get(admin, f"/v2/users/{u}/devices")
        self.assertEqual(r.json, {"devices": [], "total": 0})
        r = await self.admin_call(admin, "POST", f"/v2/users/{u}/delete_devices", {"devices": "x"})
        self.assertError(r, 400, "M_BAD_JSON")
        actions = [e.action for e in await self.audit(ALICE)]
        self.assertEqual(
            actions,
            ["rename_device", "delete_devices", "create_device", "delete_devices"],
        )

    async def test_joined_rooms_and_account_data(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        first = await self.create_room(alice)
        second = await self.create_room(alice)
        r = await self.admin_get(admin, f"/v1/users/{q(ALICE)}/joined_rooms")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(sorted(r.json["joined_rooms"]), sorted([first, second]))
        self.assertEqual(r.json["total"], 2)
        r = await self.request(
            "PUT", f"{API}/user/{q(ALICE)}/account_data/org.example.settings", {"a": 1},
            token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "PUT", f"{API}/user/{q(ALICE)}/rooms/{q(first)}/account_data/org.example.r",
            {"b": 2}, token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.admin_get(admin, f"/v1/users/{q(ALICE)}/accountdata")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["account_data"]["global"]["org.example.settings"], {"a": 1})
        self.assertEqual(r.json["account_data"]["rooms"], {first: {"org.example.r": {"b": 2}}})


@on_both_engines
class LoginAsTests(AdminTestCase):
    async def test_login_as_user(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        r = await self.admin_call(admin, "POST", f"/v1/users/{q(ALICE)}/login", {})
        self.assertEqual(r.code, 200, r)
        token = r.json["access_token"]
        r = await self.request("GET", f"{API}/account/whoami", token=token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["user_id"], ALICE)
        # Not a device the user sees.
        r = await self.request("GET", f"{API}/devices", token=alice.token)
        self.assertEqual([d["device_id"] for d in r.json["devices"]], [alice.device_id])
        [entry] = await self.audit(ALICE)
        self.assertEqual(entry.action, "login_as")
        self.assertEqual(entry.admin_user_id, admin.user_id)
        self.assertNotIn(token, repr(entry))
        # It expires (an hour by default): the row holds the deadline.
        claims_row = await self.hs.token_store.get_access_token(
            __import__("jwt").decode(token, options={"verify_signature": False})["jti"]
        )
        now = self.hs.clock.time_msec()
        self.assertLessEqual(claims_row.expires_ts, now + 60 * 60 * 1000)
        self.assertGreater(claims_row.expires_ts, now)
        # Logging out with it ends it.
        r = await self.request("POST", f"{API}/logout", {}, token=token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/account/whoami", token=token)
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")
        r = await self.request("GET", f"{API}/account/whoami", token=alice.token)
        self.assertEqual(r.code, 200, r)

    async def test_login_as_a_locked_user_is_refused(self):
        admin = await self.make_admin()
        await self.user("alice")
        r = await self.request(
            "PUT", f"/_matrix/client/v1/admin/lock/{q(ALICE)}", {"locked": True}, token=admin.token
        )
        self.assertEqual(r.code, 200, r)
        r = await self.admin_call(admin, "POST", f"/v1/users/{q(ALICE)}/login", {})
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertNotIn("login_as", [e.action for e in await self.audit(ALICE)])

    async def test_valid_until(self):
        admin = await self.make_admin()
        await self.user("alice")
        now = self.hs.clock.time_msec()
        r = await self.admin_call(
            admin, "POST", f"/v1/users/{q(ALICE)}/login", {"valid_until_ms": now + 60_000}
        )
        self.assertEqual(r.code, 200, r)
        self.hs.clock.time_msec = lambda: now + 60_001  # type: ignore[method-assign]
        r = await self.request("GET", f"{API}/account/whoami", token=r.json["access_token"])
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    async def test_refused(self):
        admin = await self.make_admin()
        await self.user("alice")
        now = self.hs.clock.time_msec()
        for body in ({"valid_until_ms": now - 1000}, {"valid_until_ms": now + 10 * 86400_000}):
            r = await self.admin_call(admin, "POST", f"/v1/users/{q(ALICE)}/login", body)
            self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.admin_call(
            admin, "POST", f"/v1/users/{q(ALICE)}/login", {"valid_until_ms": "soon"}
        )
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.admin_call(admin, "POST", f"/v1/users/{q(admin.user_id)}/login", {})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.admin_call(admin, "POST", f"/v1/deactivate/{q(ALICE)}", {})
        self.assertEqual(r.code, 200, r)
        r = await self.admin_call(admin, "POST", f"/v1/users/{q(ALICE)}/login", {})
        self.assertError(r, 403, "M_USER_DEACTIVATED")
        self.assertEqual([e.action for e in await self.audit(ALICE)], ["deactivate_user"])


@on_both_engines
class LastAdminRaceTests(AdminTestCase):
    """Two admins removing each other at the same moment: both requests pass the
    handler's early check (held back until both have made it), and the guarded write lets
    only one through, so one active admin always remains."""

    async def both_past_the_early_check(self) -> None:
        counted: list[defer.Deferred[None]] = []
        count_active_admins = self.hs.accounts.count_active_admins

        async def counted_together() -> int:
            result = await count_active_admins()
            if len(counted) == 2:
                return result
            arrived: defer.Deferred[None] = defer.Deferred()
            counted.append(arrived)
            if len(counted) == 2:
                for waiting in counted:
                    waiting.callback(None)
            await arrived
            return result

        self.hs.accounts.count_active_admins = counted_together  # type: ignore[method-assign]

    async def race(self, first: tuple[User, str, str, Any], second: tuple[User, str, str, Any]):
        await self.both_past_the_early_check()
        responses = await defer.gatherResults(
            [
                defer.ensureDeferred(self.admin_call(admin, method, path, body))
                for admin, method, path, body in (first, second)
            ]
        )
        self.assertEqual(sorted(r.code for r in responses), [200, 400], responses)
        refused = next(r for r in responses if r.code == 400)
        self.assertError(refused, 400, "M_INVALID_PARAM")
        self.assertEqual(await self.hs.accounts.count_active_admins(), 1)

    async def test_concurrent_demotions_leave_an_admin(self):
        one = await self.make_admin("one")
        two = await self.make_admin("two")
        await self.race(
            (one, "PUT", f"/v2/users/{q(two.user_id)}", {"admin": False}),
            (two, "PUT", f"/v2/users/{q(one.user_id)}", {"admin": False}),
        )

    async def test_concurrent_deactivations_leave_an_admin(self):
        one = await self.make_admin("one")
        two = await self.make_admin("two")
        await self.race(
            (one, "POST", f"/v1/deactivate/{q(two.user_id)}", {}),
            (two, "POST", f"/v1/deactivate/{q(one.user_id)}", {}),
        )
        # The refused deactivation changed nothing: its target is whole.
        survivors = [
            u for u in (one, two) if not (await self.hs.accounts.get_account(u.user_id)).deactivated
        ]
        self.assertEqual(len(survivors), 1)
        r = await self.request("GET", f"{API}/account/whoami", token=survivors[0].token)
        self.assertEqual(r.code, 200, r)

    async def test_demotion_racing_a_deactivation_leaves_an_admin(self):
        one = await self.make_admin("one")
        two = await self.make_admin("two")
        await self.race(
            (one, "PUT", f"/v2/users/{q(two.user_id)}", {"admin": False}),
            (two, "POST", f"/v1/deactivate/{q(one.user_id)}", {}),
        )

    async def test_store_guard_holds_when_transactions_overlap(self):
        """The store's check and write, run at once on separate connections (PostgreSQL's
        pool has several): without row locks each would see two admins and demote."""
        for round_ in range(10):
            one, two = f"@one{round_}:{SERVER_NAME}", f"@two{round_}:{SERVER_NAME}"
            for user_id in (one, two):
                await self.user(user_id[1:].split(":")[0])
                await self.hs.accounts.set_flag(user_id, "is_admin", True)
            results = await defer.gatherResults(
                [
                    defer.ensureDeferred(self.hs.accounts.demote_admin(one)),
                    defer.ensureDeferred(self.hs.accounts.mark_deactivated(two, False, True)),
                ]
            )
            self.assertEqual(sorted(results), [False, True])
            self.assertEqual(await self.hs.accounts.count_active_admins(), 1)
            # Next round: the survivor steps down in favour of the new pair.
            for user_id in (one, two):
                await self.hs.accounts.set_flag(user_id, "is_admin", False)


@on_both_engines
class DeactivationResumeTests(AdminTestCase):
    """Leaving rooms is remembered with the deactivation itself: a process that dies half
    way through finishes the work when it starts again."""

    async def test_interrupted_deactivation_is_finished_at_start_up(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        rooms = [await self.create_room(bob, preset="public_chat") for _ in range(3)]
        for room_id in rooms:
            self.assertEqual((await self.join(alice, room_id)).code, 200)
        invited_to = await self.create_room(bob, invite=[ALICE])
        # The process "dies" while leaving the second room: that leave never returns.
        leave = self.hs.membership.leave
        attempted: list[str] = []

        async def dies_on_the_second(requester: Any, room_id: str, *args: Any) -> Any:
            attempted.append(room_id)
            if len(attempted) == 2:
                await defer.Deferred()
            return await leave(requester, room_id, *args)

        self.hs.membership.leave = dies_on_the_second  # type: ignore[method-assign]
        request = defer.ensureDeferred(
            self.admin_call(admin, "POST", f"/v1/deactivate/{q(ALICE)}", {})
        )
        request.addErrback(lambda _failure: None)  # cancelled below: the client gives up
        while len(attempted) < 2:
            await deferLater(reactor, 0.01, lambda: None)
        left = [r for r in rooms + [invited_to] if await self.membership_of(r, alice) == "leave"]
        self.assertEqual(len(left), 1)
        self.assertEqual(await self.hs.accounts.pending_deactivations(), [ALICE])
        request.cancel()
        await deferLater(reactor, 0.05, lambda: None)

        await self.restart_server()
        await self.hs.deactivations_resumed
        for room_id in rooms + [invited_to]:
            self.assertEqual(await self.membership_of(room_id, alice), "leave", room_id)
        self.assertEqual(await self.hs.accounts.pending_deactivations(), [])
        self.assertTrue((await self.hs.accounts.get_account(ALICE)).deactivated)

    async def test_finished_deactivation_leaves_nothing_pending(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        r = await self.request(
            "POST",
            f"{API}/account/deactivate",
            {"auth": {"type": "m.login.password", "user": ALICE, "password": PASSWORD}},
            token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership_of(room_id, alice), "leave")
        self.assertEqual(await self.hs.accounts.pending_deactivations(), [])
        # Reactivated by an admin: nothing of the old deactivation is left to resume.
        r = await self.admin_call(admin, "PUT", f"/v2/users/{q(ALICE)}", {"deactivated": False, "password": "new password 1"})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.hs.accounts.pending_deactivations(), [])


@on_both_engines
class ErasureTests(AdminTestCase):
    """Deactivation with `erase`: the user's events are served redacted to users who were
    not in the room when they were sent (spec: `POST /account/deactivate`, `erase`), on
    every read path; those who were there still see them whole."""

    async def test_erased_users_events_are_redacted_for_later_joiners(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        dave = await self.user("dave")
        room_id = await self.create_room(bob, preset="public_chat")
        self.assertEqual((await self.join(alice, room_id)).code, 200)
        secret = {"msgtype": "m.text", "body": "something alice regrets"}
        event_id = (await self.send(alice, room_id, secret)).json["event_id"]
        after_id = (await self.send(bob, room_id, {"msgtype": "m.text", "body": "later"})).json[
            "event_id"
        ]
        r = await self.admin_call(admin, "POST", f"/v1/deactivate/{q(ALICE)}", {"erase": True})
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.join(dave, room_id)).code, 200)

        async def seen_by(user: User) -> list[dict[str, Any]]:
            """Alice's message as each read path gives it to `user`."""
            base = f"{API}/rooms/{q(room_id)}"
            found = []
            r = await self.request("GET", f"{base}/messages?dir=b&limit=50", token=user.token)
            found += [e for e in r.json["chunk"] if e["event_id"] == event_id]
            r = await self.request("GET", f"{base}/event/{q(event_id)}", token=user.token)
            found.append(r.json)
            r = await self.request("GET", f"{base}/context/{q(event_id)}", token=user.token)
            found.append(r.json["event"])
            r = await self.request("GET", f"{base}/context/{q(after_id)}", token=user.token)
            found += [e for e in r.json["events_before"] if e["event_id"] == event_id]
            sync_filter = '{"room":{"timeline":{"limit":50}}}'
            r = await self.request(
                "GET", f"{API}/sync?filter={q(sync_filter)}", token=user.token
            )
            timeline = r.json["rooms"]["join"][room_id]["timeline"]["events"]
            found += [e for e in timeline if e["event_id"] == event_id]
            self.assertEqual(len(found), 5, found)
            return found

        # Each viewer in turn, both orders: the server keeps events' serialized forms, and
        # the whole form must never reach dave, nor the pruned one bob.
        for viewer, content in ((bob, secret), (dave, {}), (bob, secret), (dave, {})):
            for event in await seen_by(viewer):
                self.assertEqual(event["content"], content, (viewer.user_id, event))
                self.assertEqual(event["sender"], ALICE)
        # Alice's own membership events lose their display name for dave too.
        r = await self.request(
            "GET", f"{API}/rooms/{q(room_id)}/messages?dir=b&limit=50", token=dave.token
        )
        joins = [
            e for e in r.json["chunk"]
            if e["type"] == "m.room.member" and e["state_key"] == ALICE
            and e["content"].get("membership") == "join"
        ]
        self.assertTrue(joins)
        self.assertEqual([e["content"] for e in joins], [{"membership": "join"}] * len(joins))
        # Search finds it only for those who may still read its words.
        search = {"search_categories": {"room_events": {"search_term": "regrets"}}}
        for user, found in ((dave, []), (bob, [event_id])):
            r = await self.request("POST", f"{API}/search", search, token=user.token)
            self.assertEqual(r.code, 200, r)
            results = r.json["search_categories"]["room_events"]["results"]
            self.assertEqual([hit["result"]["event_id"] for hit in results], found, user)
        # The profile is gone.
        r = await self.admin_get(admin, f"/v2/users/{q(ALICE)}")
        self.assertIsNone(r.json["displayname"])
        self.assertIsNone(r.json["avatar_url"])

    async def test_without_erase_later_joiners_see_everything(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        dave = await self.user("dave")
        room_id = await self.create_room(bob, preset="public_chat")
        await self.join(alice, room_id)
        event_id = (await self.send(alice, room_id)).json["event_id"]
        await self.admin_call(admin, "POST", f"/v1/deactivate/{q(ALICE)}", {})
        await self.join(dave, room_id)
        r = await self.request(
            "GET", f"{API}/rooms/{q(room_id)}/event/{q(event_id)}", token=dave.token
        )
        self.assertEqual(r.json["content"]["body"], "hello")
