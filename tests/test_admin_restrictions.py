"""What admins can do to an account short of deactivating it, and that it is enforced:
locking (the spec's 401 M_USER_LOCKED on everything but logout), suspension (reads
allowed, sending, joining, inviting and profile changes refused with 403
M_USER_SUSPENDED), shadow bans (events answered with an ID and dropped) and rate limit
overrides. Over real HTTP on both engines."""

from __future__ import annotations

from typing import Any

from tests.admin_helpers import AdminTestCase, User, q
from tests.harness import PASSWORD, SERVER_NAME, on_both_engines

API = "/_matrix/client/v3"
LOCK = "/_matrix/client/v1/admin/lock"
SUSPEND = "/_matrix/client/v1/admin/suspend"
ALICE = f"@alice:{SERVER_NAME}"


@on_both_engines
class LockTests(AdminTestCase):
    async def lock(self, admin: User, user_id: str, locked: bool = True) -> Any:
        return await self.request("PUT", f"{LOCK}/{q(user_id)}", {"locked": locked},
                                  token=admin.token)

    async def test_locked_user_gets_user_locked_everywhere_but_logout(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        # Validated (and cached) before the lock: the lock still applies at once.
        r = await self.request("GET", f"{API}/account/whoami", token=alice.token)
        self.assertEqual(r.code, 200, r)
        r = await self.lock(admin, ALICE)
        self.assertEqual((r.code, r.json), (200, {"locked": True}))
        r = await self.request("GET", f"{LOCK}/{q(ALICE)}", token=admin.token)
        self.assertEqual(r.json, {"locked": True})
        for method, path, body in (
            ("GET", f"{API}/account/whoami", None),
            ("GET", f"{API}/sync", None),
            ("GET", f"{API}/rooms/{q(room_id)}/messages?dir=b", None),
            ("PUT", f"{API}/rooms/{q(room_id)}/send/m.room.message/t1", {"body": "x"}),
            ("GET", f"{API}/capabilities", None),
        ):
            r = await self.request(method, path, body, token=alice.token)
            body_json = self.assertError(r, 401, "M_USER_LOCKED")
            # The spec's soft logout: the client keeps its session for when it is unlocked.
            self.assertIs(body_json["soft_logout"], True)
        # Logging in is refused too (after the password matched).
        r = await self.request(
            "POST", f"{API}/login",
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
             "password": PASSWORD},
        )
        self.assertError(r, 401, "M_USER_LOCKED")
        # Unlocking restores the very same session.
        r = await self.lock(admin, ALICE, False)
        self.assertEqual(r.json, {"locked": False})
        r = await self.request("GET", f"{API}/account/whoami", token=alice.token)
        self.assertEqual(r.code, 200, r)
        actions = [e.action for e in await self.audit(ALICE)]
        self.assertEqual(actions, ["lock", "unlock"])

    async def test_locked_user_may_log_out(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        other = await self.login("alice")
        await self.lock(admin, ALICE)
        r = await self.request("POST", f"{API}/logout", {}, token=alice.token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("POST", f"{API}/logout/all", {}, token=other["access_token"])
        self.assertEqual(r.code, 200, r)
        await self.lock(admin, ALICE, False)
        r = await self.request("GET", f"{API}/account/whoami", token=other["access_token"])
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    async def test_locked_user_cannot_refresh(self):
        """The spec: a locked account "cannot obtain a new access token until the account
        has been unlocked"; the refresh token is kept, so the session resumes on unlock."""
        admin = await self.make_admin()
        await self.user("alice")
        session = await self.login("alice", refresh_token=True)
        await self.lock(admin, ALICE)
        r = await self.request("POST", f"{API}/refresh",
                               {"refresh_token": session["refresh_token"]})
        self.assertIs(self.assertError(r, 401, "M_USER_LOCKED")["soft_logout"], True)
        await self.lock(admin, ALICE, False)
        r = await self.request("POST", f"{API}/refresh",
                               {"refresh_token": session["refresh_token"]})
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/account/whoami", token=r.json["access_token"])
        self.assertEqual(r.code, 200, r)

    async def test_deactivated_user_cannot_refresh(self):
        admin = await self.make_admin()
        await self.user("alice")
        session = await self.login("alice", refresh_token=True)
        r = await self.admin_call(admin, "POST", f"/v1/deactivate/{q(ALICE)}", {})
        self.assertEqual(r.code, 200, r)
        r = await self.request("POST", f"{API}/refresh",
                               {"refresh_token": session["refresh_token"]})
        self.assertIs(self.assertError(r, 401, "M_UNKNOWN_TOKEN").get("soft_logout", False),
                      False)

    async def test_lock_refusals(self):
        admin = await self.make_admin()
        other_admin = await self.make_admin("other")
        await self.user("alice")
        r = await self.lock(admin, admin.user_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.lock(admin, other_admin.user_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.lock(admin, "@alice:elsewhere.example")
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("PUT", f"{LOCK}/{q(ALICE)}", {}, token=admin.token)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("PUT", f"{LOCK}/{q(ALICE)}", {"locked": "yes"}, token=admin.token)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.admin_call(admin, "POST", f"/v1/deactivate/{q(ALICE)}", {})
        self.assertEqual(r.code, 200, r)
        # The spec: deactivated accounts are "not found" here.
        r = await self.lock(admin, ALICE)
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.request("GET", f"{LOCK}/{q(ALICE)}", token=admin.token)
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_lock_through_synapse_put(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        r = await self.admin_call(admin, "PUT", f"/v2/users/{q(ALICE)}", {"locked": True})
        self.assertEqual(r.code, 200, r)
        self.assertTrue(r.json["locked"])
        r = await self.request("GET", f"{API}/account/whoami", token=alice.token)
        self.assertError(r, 401, "M_USER_LOCKED")


@on_both_engines
class SuspensionTests(AdminTestCase):
    async def suspend(self, admin: User, user_id: str, suspended: bool = True) -> Any:
        return await self.request(
            "PUT", f"{SUSPEND}/{q(user_id)}", {"suspended": suspended}, token=admin.token
        )

    async def test_suspended_user_may_not_upgrade_a_room(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        self.assertEqual((await self.suspend(admin, ALICE)).code, 200)

        async def rooms() -> int:
            row = await self.hs.db.run_interaction(
                "count_rooms", lambda txn: txn.select_one("SELECT COUNT(*) FROM rooms", ())
            )
            return int(row[0])

        before = await rooms()
        r = await self.request("POST", f"{API}/rooms/{q(room_id)}/upgrade",
                               {"new_version": "11"}, token=alice.token)
        self.assertError(r, 403, "M_USER_SUSPENDED")
        # Refused before anything was made.
        self.assertEqual(await rooms(), before)

    async def test_suspended_user_may_read_but_not_act(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(bob, preset="public_chat")
        other_room = await self.create_room(bob, preset="public_chat")
        r = await self.join(alice, room_id)
        self.assertEqual(r.code, 200, r)
        own = (await self.send(alice, room_id)).json["event_id"]
        bobs = (await self.send(bob, room_id)).json["event_id"]
        r = await self.suspend(admin, ALICE)
        self.assertEqual((r.code, r.json), (200, {"suspended": True}))
        r = await self.request("GET", f"{SUSPEND}/{q(ALICE)}", token=admin.token)
        self.assertEqual(r.json, {"suspended": True})

        # Reading works.
        for path in (
            f"{API}/sync",
            f"{API}/rooms/{q(room_id)}/messages?dir=b",
            f"{API}/account/whoami",
            f"{API}/joined_rooms",
        ):
            r = await self.request("GET", path, token=alice.token)
            self.assertEqual(r.code, 200, (path, r))

        # Acting does not.
        refused = [
            await self.send(alice, room_id),
            await self.put_state(alice, room_id, "m.room.topic", {"topic": "x"}),
            await self.join(alice, other_room),
            await self.membership_action(alice, room_id, "invite", {"user_id": "@x:test.heddle"}),
            await self.request("POST", f"{API}/createRoom", {}, token=alice.token),
            await self.request(
                "PUT", f"{API}/profile/{q(ALICE)}/displayname", {"displayname": "x"},
                token=alice.token,
            ),
            await self.request(
                "PUT", f"{API}/rooms/{q(room_id)}/redact/{q(bobs)}/r1", {}, token=alice.token
            ),
            await self.send(alice, room_id, {"redacts": bobs}, event_type="m.room.redaction"),
        ]
        for r in refused:
            self.assertError(r, 403, "M_USER_SUSPENDED")

        # Redacting one's own events and leaving are allowed.
        r = await self.request(
            "PUT", f"{API}/rooms/{q(room_id)}/redact/{q(own)}/r2", {}, token=alice.token
        )
        self.assertEqual(r.code, 200, r)
        r = await self.membership_action(alice, room_id, "leave")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership_of(room_id, alice), "leave")

        # Unsuspended: back to normal.
        r = await self.suspend(admin, ALICE, False)
        self.assertEqual(r.json, {"suspended": False})
        r = await self.join(alice, other_room)
        self.assertEqual(r.code, 200, r)
        r = await self.send(alice, other_room)
        self.assertEqual(r.code, 200, r)
        self.assertEqual([e.action for e in await self.audit(ALICE)], ["suspend", "unsuspend"])

    async def test_suspended_user_may_refresh(self):
        """Suspended users may keep and open sessions (the spec's list of what they can
        do includes logging in), so a refresh works and the new token is still suspended."""
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        session = await self.login("alice", refresh_token=True)
        await self.suspend(admin, ALICE)
        r = await self.request("POST", f"{API}/refresh",
                               {"refresh_token": session["refresh_token"]})
        self.assertEqual(r.code, 200, r)
        refreshed = User(ALICE, r.json["access_token"], session["device_id"])
        self.assertError(await self.send(refreshed, room_id), 403, "M_USER_SUSPENDED")

    async def test_synapse_suspend_endpoint(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        r = await self.admin_call(admin, "PUT", f"/v1/suspend/{q(ALICE)}", {"suspend": True})
        self.assertEqual((r.code, r.json), (200, {f"user_{ALICE}_suspended": True}))
        r = await self.send(alice, room_id)
        self.assertError(r, 403, "M_USER_SUSPENDED")
        r = await self.admin_get(admin, f"/v2/users/{q(ALICE)}")
        self.assertTrue(r.json["suspended"])

    async def test_suspend_refusals(self):
        admin = await self.make_admin()
        other_admin = await self.make_admin("other")
        r = await self.suspend(admin, admin.user_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.suspend(admin, other_admin.user_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.suspend(admin, "@alice:elsewhere.example")
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.suspend(admin, ALICE)
        self.assertError(r, 404, "M_NOT_FOUND")


@on_both_engines
class ShadowBanTests(AdminTestCase):
    async def test_shadow_banned_events_get_an_id_and_go_nowhere(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(bob, preset="public_chat")
        r = await self.join(alice, room_id)
        self.assertEqual(r.code, 200, r)
        r = await self.admin_call(admin, "POST", f"/v1/users/{q(ALICE)}/shadow_ban")
        self.assertEqual((r.code, r.json), (200, {}))
        before = len(await self.room_events(room_id))

        r = await self.send(alice, room_id, {"msgtype": "m.text", "body": "spam"})
        self.assertEqual(r.code, 200, r)
        fake_id = r.json["event_id"]
        self.assertTrue(fake_id.startswith("$"))
        self.assertEqual(len(fake_id), 44)
        r = await self.put_state(alice, room_id, "org.example.state", {"x": 1})
        self.assertEqual(r.code, 200, r)
        await self.user("carol")
        r = await self.membership_action(
            alice, room_id, "invite", {"user_id": f"@carol:{SERVER_NAME}"}
        )
        self.assertEqual(r.code, 200, r)
        r = await self.put_state(
            alice, room_id, "m.room.member", {"membership": "invite"}, f"@carol:{SERVER_NAME}"
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "PUT", f"{API}/rooms/{q(room_id)}/typing/{q(ALICE)}",
            {"typing": True, "timeout": 30000}, token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        # Nothing reached the room, and bob cannot fetch the "event".
        self.assertEqual(len(await self.room_events(room_id)), before)
        r = await self.request("GET", f"{API}/rooms/{q(room_id)}/event/{q(fake_id)}",
                               token=bob.token)
        self.assertError(r, 404, "M_NOT_FOUND")
        self.assertEqual(self.hs.typing.get_typing_users(room_id), [])

        r = await self.admin_call(admin, "DELETE", f"/v1/users/{q(ALICE)}/shadow_ban")
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.send(alice, room_id, {"msgtype": "m.text", "body": "hello again"})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(len(await self.room_events(room_id)), before + 1)
        r = await self.admin_get(admin, f"/v2/users/{q(ALICE)}")
        self.assertFalse(r.json["shadow_banned"])
        self.assertEqual(
            [e.action for e in await self.audit(ALICE)], ["shadow_ban", "unshadow_ban"]
        )


    async def test_shadow_banned_room_upgrade_goes_nowhere(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(alice, preset="public_chat")
        r = await self.admin_call(admin, "POST", f"/v1/users/{q(ALICE)}/shadow_ban")
        self.assertEqual(r.code, 200, r)
        before = len(await self.room_events(room_id))
        r = await self.request("POST", f"{API}/rooms/{q(room_id)}/upgrade",
                               {"new_version": "11"}, token=alice.token)
        self.assertEqual(r.code, 200, r)
        self.assertTrue(r.json["replacement_room"].startswith("!"))
        self.assertEqual(len(await self.room_events(room_id)), before)
        self.assertIsNone(await self.hs.event_store.get_room_version(r.json["replacement_room"]))

    async def test_shadow_banned_retry_gets_the_same_event_id(self):
        """A retried transaction is answered with the ID of the first attempt, as for
        anyone else (spec: "Transaction identifiers"); a new ID would give the ban away.
        Redactions through /redact and /send keep theirs the same way."""
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(bob, preset="public_chat")
        self.assertEqual((await self.join(alice, room_id)).code, 200)
        own = (await self.send(alice, room_id, txn_id="before-ban")).json["event_id"]
        await self.admin_call(admin, "POST", f"/v1/users/{q(ALICE)}/shadow_ban")
        before = len(await self.room_events(room_id))

        first = await self.send(alice, room_id, txn_id="retried")
        second = await self.send(alice, room_id, txn_id="retried")
        self.assertEqual(first.code, 200, first)
        self.assertEqual(second.json["event_id"], first.json["event_id"])
        # Another transaction ID is another event.
        other = await self.send(alice, room_id, txn_id="another")
        self.assertNotEqual(other.json["event_id"], first.json["event_id"])
        redact = f"{API}/rooms/{q(room_id)}/redact/{q(own)}/r1"
        first = await self.request("PUT", redact, {}, token=alice.token)
        second = await self.request("PUT", redact, {}, token=alice.token)
        self.assertEqual(first.code, 200, first)
        self.assertEqual(second.json["event_id"], first.json["event_id"])
        # A retry of a transaction made before the ban still names the real event.
        self.assertEqual(
            (await self.send(alice, room_id, txn_id="before-ban")).json["event_id"], own
        )
        self.assertEqual(len(await self.room_events(room_id)), before)


@on_both_engines
class RatelimitOverrideTests(AdminTestCase):
    config_overrides = {
        "rate_limits": {
            "enabled": True,
            "message_per_user": {"per_second": 0.001, "burst_count": 2},
        }
    }

    async def test_override_lifts_and_sets_the_message_limit(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(admin, preset="public_chat")
        r = await self.join(alice, room_id)
        self.assertEqual(r.code, 200, r)
        path = f"/v1/users/{q(ALICE)}/override_ratelimit"
        r = await self.admin_get(admin, path)
        self.assertEqual((r.code, r.json), (200, {}))
        codes = [(await self.send(alice, room_id)).code for _ in range(3)]
        self.assertEqual(codes, [200, 200, 429])

        r = await self.admin_call(admin, "POST", path, {"messages_per_second": 0, "burst_count": 0})
        self.assertEqual(r.json, {"messages_per_second": 0, "burst_count": 0})
        r = await self.admin_get(admin, path)
        self.assertEqual(r.json, {"messages_per_second": 0, "burst_count": 0})
        codes = [(await self.send(alice, room_id)).code for _ in range(5)]
        self.assertEqual(codes, [200] * 5)

        r = await self.admin_call(admin, "DELETE", path)
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.admin_get(admin, path)
        self.assertEqual(r.json, {})
        r = await self.send(alice, room_id)
        self.assertEqual(r.code, 429, r)
        self.assertEqual(
            [e.action for e in await self.audit(ALICE)],
            ["set_ratelimit_override", "delete_ratelimit_override"],
        )

    async def test_bad_override(self):
        admin = await self.make_admin()
        await self.user("alice")
        path = f"/v1/users/{q(ALICE)}/override_ratelimit"
        for body, errcode in (
            ({"messages_per_second": -1}, "M_INVALID_PARAM"),
            ({"burst_count": -3}, "M_INVALID_PARAM"),
            ({"messages_per_second": "10"}, "M_BAD_JSON"),
            ({"messages_per_second": 1.5}, "M_BAD_JSON"),
            ({"burst_count": 2**70}, "M_INVALID_PARAM"),
        ):
            r = await self.admin_call(admin, "POST", path, body)
            self.assertError(r, 400, errcode)
        r = await self.admin_get(admin, path)
        self.assertEqual(r.json, {})

