"""The admin API driven by synadm, the command-line admin tool Synapse admins use, as a
subprocess against a real server on both engines.

synadm is not one of Heddle's dependencies: it lives in a virtualenv of its own (`.ci/run`
builds `.synadm-venv` from `.ci/synadm-requirements.txt`), found through `$HEDDLE_SYNADM`,
the path of its `synadm` executable. Without the variable these
tests are skipped; with it set to anything that does not run, they fail, so a run that
meant to include them never skips them quietly.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import SkipTest

from tests.admin_helpers import AdminTestCase, User
from tests.harness import SERVER_NAME, on_both_engines

SYNADM = os.environ.get("HEDDLE_SYNADM")
ALICE = f"@alice:{SERVER_NAME}"
CAROL = f"@carol:{SERVER_NAME}"


@on_both_engines
class SynadmTests(AdminTestCase):
    async def setUp(self) -> None:
        if not SYNADM:
            raise SkipTest("set HEDDLE_SYNADM to a synadm executable to run these")
        await super().setUp()
        self.admin = await self.make_admin()
        self.home = self.make_data_dir("heddle-synadm-")
        self.config = self.home / "synadm.yaml"
        self.config.write_text(
            json.dumps(
                {
                    "user": self.admin.user_id,
                    "token": self.admin.token,
                    "base_url": self.base_url,
                    "admin_path": "/_synapse/admin",
                    "matrix_path": "/_matrix",
                    "format": "json",
                    "timeout": 30,
                    "server_discovery": "well-known",
                    "homeserver": SERVER_NAME,
                    "ssl_verify": False,
                }
            )
        )

    def _run_synadm(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        assert SYNADM is not None
        return subprocess.run(
            [SYNADM, "-c", str(self.config), "--batch", "-o", "minified", *args],
            capture_output=True,
            text=True,
            timeout=60,
            # synadm writes a debug log under $HOME.
            env={**os.environ, "HOME": str(self.home)},
        )

    async def synadm(self, *args: str) -> Any:
        """Run synadm (on a thread: the server under test runs on this reactor) and
        return the JSON of its last line of output (None if it printed nothing): some
        commands print what they are about to change first."""
        done = await threads.deferToThread(self._run_synadm, list(args))
        self.assertEqual(done.returncode, 0, f"synadm {args}: {done.stdout}{done.stderr}")
        out = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        try:
            return json.loads(out) if out else None
        except ValueError:
            self.fail(f"synadm {args} printed no JSON: {out!r} {done.stderr!r}")

    async def test_list_and_details(self) -> None:
        await self.user("alice")
        await self.user("bob")
        listed = await self.synadm("user", "list")
        self.assertEqual(listed["total"], 3)
        self.assertEqual(
            [u["name"] for u in listed["users"]],
            [ALICE, f"@bob:{SERVER_NAME}", self.admin.user_id],
        )
        page = await self.synadm("user", "list", "--limit", "2")
        self.assertEqual((len(page["users"]), page["next_token"]), (2, "2"))
        found = await self.synadm("user", "list", "--name", "bo")
        self.assertEqual([u["name"] for u in found["users"]], [f"@bob:{SERVER_NAME}"])
        details = await self.synadm("user", "details", ALICE)
        self.assertEqual(details["name"], ALICE)
        self.assertFalse(details["admin"])

    async def test_create_modify_and_deactivate(self) -> None:
        await self.synadm(
            "user", "modify", CAROL, "--password", "carol's password", "--display-name", "Carol"
        )
        await self.login("carol", "carol's password")
        details = await self.synadm("user", "details", CAROL)
        self.assertEqual(details["displayname"], "Carol")
        await self.synadm("user", "password", CAROL, "--password", "another password")
        await self.login("carol", "another password")
        await self.synadm("user", "deactivate", CAROL)
        self.assertTrue((await self.hs.accounts.get_account(CAROL)).deactivated)
        actions = [e.action for e in await self.audit(CAROL)]
        self.assertEqual(actions, ["create_user", "reset_password", "deactivate_user"])

    async def test_whois_login_and_moderation(self) -> None:
        alice: User = await self.user("alice")
        await self.request("GET", "/_matrix/client/v3/account/whoami", token=alice.token)
        whois = await self.synadm("user", "whois", ALICE)
        self.assertEqual(list(whois["devices"]), [alice.device_id])
        login = await self.synadm("user", "login", ALICE, "--expire-days", "1")
        r = await self.request(
            "GET", "/_matrix/client/v3/account/whoami", token=login["access_token"]
        )
        self.assertEqual(r.json["user_id"], ALICE)
        await self.synadm("user", "shadow-ban", ALICE)
        self.assertTrue((await self.hs.accounts.get_account(ALICE)).shadow_banned)
        await self.synadm("user", "shadow-ban", "--unban", ALICE)
        await self.synadm("user", "suspend", ALICE)
        self.assertTrue((await self.hs.accounts.get_account(ALICE)).suspended)
        await self.synadm("user", "modify", ALICE, "--lock")
        self.assertTrue((await self.hs.accounts.get_account(ALICE)).locked)

    async def test_rooms(self) -> None:
        alice: User = await self.user("alice")
        r = await self.request(
            "POST", "/_matrix/client/v3/createRoom", {"name": "Lobby"}, token=alice.token
        )
        room_id = r.json["room_id"]
        listed = await self.synadm("room", "list")
        self.assertEqual(
            (listed["total_rooms"], [room["name"] for room in listed["rooms"]]), (1, ["Lobby"])
        )
        details = await self.synadm("room", "details", room_id)
        self.assertEqual((details["room_id"], details["joined_members"]), (room_id, 1))
        members = await self.synadm("room", "members", room_id)
        self.assertEqual(members["members"], [ALICE])
        state = await self.synadm("room", "state", room_id)
        self.assertIn("m.room.create", {event["type"] for event in state["state"]})
        await self.synadm("room", "block", room_id)
        blocked = await self.synadm("room", "block-status", room_id)
        self.assertEqual(blocked, {"block": True, "user_id": self.admin.user_id})
        await self.synadm("room", "block", "--unblock", room_id)
        await self.synadm("room", "make-admin", room_id)
        started = await self.synadm("room", "delete", room_id)
        delete_id = started["delete_id"]
        for _ in range(100):
            status = await self.synadm("room", "delete-status", "--delete-id", delete_id)
            if status["status"] == "complete":
                break
        self.assertEqual(status["status"], "complete", status)
        self.assertIsNone(await self.hs.event_store.get_room_version(room_id))
        actions = [e.action for e in await self.audit(room_id)]
        self.assertEqual(
            actions, ["block_room", "unblock_room", "make_room_admin", "delete_room"]
        )

    async def test_synchronous_room_delete(self) -> None:
        alice: User = await self.user("alice")
        r = await self.request(
            "POST", "/_matrix/client/v3/createRoom", {"name": "Doomed"}, token=alice.token
        )
        room_id = r.json["room_id"]
        deleted = await self.synadm("room", "delete", "--v1", room_id)
        self.assertEqual(
            deleted,
            {"kicked_users": [ALICE], "failed_to_kick_users": [], "local_aliases": [],
             "new_room_id": None},
        )
        self.assertIsNone(await self.hs.event_store.get_room_version(room_id))

    async def test_registration_tokens(self) -> None:
        created = await self.synadm("regtok", "new", "--token", "abcd", "--uses-allowed", "2")
        self.assertEqual((created["token"], created["uses_allowed"]), ("abcd", 2))
        random = await self.synadm("regtok", "new", "--length", "20")
        self.assertEqual(len(random["token"]), 20)
        listed = await self.synadm("regtok", "list", "--ts")
        self.assertEqual(
            sorted(t["token"] for t in listed["registration_tokens"]),
            sorted(["abcd", random["token"]]),
        )
        await self.synadm("regtok", "update", "abcd", "--uses-allowed", "0")
        invalid = await self.synadm("regtok", "list", "--invalid", "--ts")
        self.assertEqual([t["token"] for t in invalid["registration_tokens"]], ["abcd"])
        details = await self.synadm("regtok", "details", "abcd", "--ts")
        self.assertEqual(details["uses_allowed"], 0)
        done = await threads.deferToThread(self._run_synadm, ["regtok", "delete", "abcd"])
        # synadm says so in words, not JSON.
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("successfully deleted", done.stdout)
        self.assertIsNone(await self.hs.registration_token_store.get_token("abcd"))

    async def test_media(self) -> None:
        alice: User = await self.user("alice")
        ids = []
        for data in (b"first", b"second", b"third"):
            r = await self.request(
                "POST", "/_matrix/media/v3/upload", raw=data, token=alice.token,
                headers={"Content-Type": "text/plain"},
            )
            ids.append(r.json["content_uri"].rsplit("/", 1)[1])
        listed = await self.synadm("media", "list", "--user-id", ALICE, "--ts")
        self.assertEqual(sorted(m["media_id"] for m in listed["media"]), sorted(ids))
        await self.synadm("media", "protect", ids[0])
        await self.synadm("media", "quarantine", "--media-id", ids[1])
        info = await self.hs.media_store.get_media(SERVER_NAME, ids[1])
        self.assertTrue(info is not None and info.quarantined)
        await self.synadm("media", "unquarantine", "--media-id", ids[1])
        await self.synadm("media", "quarantine", "--user-id", ALICE)
        protected = await self.hs.media_store.get_media(SERVER_NAME, ids[0])
        self.assertFalse(protected is None or protected.quarantined)
        await self.synadm("media", "delete", "--media-id", ids[2])
        self.assertIsNone(await self.hs.media_store.get_media(SERVER_NAME, ids[2]))
        await self.synadm("media", "purge", "--before-days", "1")
