"""The admin API driven by matrix-synapse-admin (the `synapse_admin` package), a Python
library wrapping Synapse's admin API for scripts, against a real server on both engines.

The library is not one of Heddle's dependencies: it lives in a virtualenv of its own
(`.ci/run` builds `.synapse-admin-venv` from `.ci/synapse-admin-requirements.txt`), found
through `$HEDDLE_SYNAPSE_ADMIN_PYTHON`, that virtualenv's Python, which runs
`tests/synapse_admin_driver.py` with the calls to make. Without the variable these tests
are skipped; set to anything that does not run, they fail.

(matrix-admin-sdk, the other such library on PyPI, cannot serve: see docs/architecture.md,
"Tests".)
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import SkipTest

from storage.stores.federation_queue import RetryState
from tests.admin_helpers import AdminTestCase, q
from tests.harness import SERVER_NAME, on_both_engines

LIBRARY_PYTHON = os.environ.get("HEDDLE_SYNAPSE_ADMIN_PYTHON")
DRIVER = Path(__file__).resolve().parent / "synapse_admin_driver.py"
MEDIA = "/_matrix/media/v3"
ALICE = f"@alice:{SERVER_NAME}"
CAROL = f"@carol:{SERVER_NAME}"


@on_both_engines
class SynapseAdminLibraryTests(AdminTestCase):
    async def setUp(self) -> None:
        if not LIBRARY_PYTHON:
            raise SkipTest("set HEDDLE_SYNAPSE_ADMIN_PYTHON to a Python with matrix-synapse-admin")
        await super().setUp()
        self.admin = await self.make_admin()

    def _drive(self, calls: list[list[Any]]) -> subprocess.CompletedProcess[str]:
        assert LIBRARY_PYTHON is not None
        job = {
            "base_url": self.base_url,
            "server_name": SERVER_NAME,
            "token": self.admin.token,
            "calls": calls,
        }
        return subprocess.run(
            [LIBRARY_PYTHON, str(DRIVER)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=60,
            # The library may look for a config file under $HOME; it must find none.
            env={**os.environ, "HOME": self.mktemp()},
        )

    async def call(self, *calls: list[Any]) -> list[dict[str, Any]]:
        """Each call's outcome (on a thread: the server under test runs on this reactor)."""
        done = await threads.deferToThread(self._drive, list(calls))
        self.assertEqual(done.returncode, 0, done.stderr)
        outcomes: list[dict[str, Any]] = json.loads(done.stdout)
        return outcomes

    async def results(self, *calls: list[Any]) -> list[Any]:
        """Each call's result; fails on any error."""
        outcomes = await self.call(*calls)
        for call, outcome in zip(calls, outcomes, strict=True):
            self.assertIn("result", outcome, f"{call}: {outcome}")
        return [outcome["result"] for outcome in outcomes]

    async def test_users(self) -> None:
        await self.user("alice")
        listed, details, created, is_admin = await self.results(
            ["User", "lists", [], {}],
            ["User", "query", [ALICE], {}],
            ["User", "create_modify", [CAROL], {"password": "carol pw 1", "displayname": "Carol"}],
            ["User", "is_admin", [ALICE], {}],
        )
        self.assertEqual([u["name"] for u in listed], [ALICE, self.admin.user_id])
        self.assertEqual((details["name"], details["admin"]), (ALICE, False))
        self.assertIs(created, True)
        self.assertIs(is_admin, False)
        await self.login("carol", "carol pw 1")
        token, ratelimit, banned, reset, joined = await self.results(
            ["User", "login", [CAROL], {}],
            ["User", "set_ratelimit", [CAROL, 0, 0], {}],
            ["User", "shadow_ban", [CAROL], {}],
            ["User", "reset_password", [CAROL, "carol pw 2"], {"logout": False}],
            ["User", "joined_room", [CAROL], {}],
        )
        r = await self.request("GET", "/_matrix/client/v3/account/whoami", token=token)
        self.assertEqual((r.code, r.json["user_id"]), (200, CAROL))
        self.assertEqual((ratelimit, banned, reset, joined), ([0, 0], True, True, []))
        account = await self.hs.accounts.get_account(CAROL)
        self.assertTrue(account.shadow_banned)
        await self.login("carol", "carol pw 2")
        (deactivated,) = await self.results(["User", "deactivate", [CAROL], {"erase": False}])
        self.assertIs(deactivated, True)
        self.assertTrue((await self.hs.accounts.get_account(CAROL)).deactivated)
        # An error answer reaches the library as Synapse's would.
        (unknown,) = await self.call(["User", "query", [f"@nobody:{SERVER_NAME}"], {}])
        self.assertEqual(unknown["errcode"], "M_NOT_FOUND")

    async def test_rooms(self) -> None:
        alice = await self.user("alice")
        room_id = await self.create_room(alice, name="Library room", preset="public_chat")
        doomed = await self.create_room(alice, name="Doomed", preset="public_chat")
        listed, details, members, state, made_admin, blocked, block_status = await self.results(
            ["Room", "lists", [], {}],
            ["Room", "details", [room_id], {}],
            ["Room", "list_members", [room_id], {}],
            ["Room", "get_state", [room_id], {}],
            ["Room", "set_admin", [room_id], {}],
            ["Room", "block", [doomed], {}],
            ["Room", "block_status", [doomed], {}],
        )
        self.assertEqual({r["room_id"] for r in listed}, {room_id, doomed})
        self.assertEqual((details["room_id"], details["name"]), (room_id, "Library room"))
        self.assertEqual(members, [ALICE])
        self.assertIn("m.room.create", {event["type"] for event in state})
        self.assertEqual((made_admin, blocked, block_status), (True, True, True))
        power_levels = (await self.current_state(room_id))[("m.room.power_levels", "")]
        self.assertEqual(power_levels.content["users"][self.admin.user_id], 100)
        (delete_id,) = await self.results(["Room", "delete_async", [doomed], {}])
        status: Any = None
        for _ in range(50):
            (status,) = await self.results(["Room", "delete_status_id", [delete_id], {}])
            if status["status"] == "complete":
                break
        self.assertEqual(status["status"], "complete", status)
        r = await self.admin_get(self.admin, f"/v1/rooms/{q(doomed)}")
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_media(self) -> None:
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        r = await self.request(
            "POST",
            f"{MEDIA}/upload?filename=a.txt",
            raw=b"library media",
            token=alice.token,
            headers={"Content-Type": "text/plain"},
        )
        self.assertEqual(r.code, 200, r)
        mxc = r.json["content_uri"]
        media_id = mxc.rsplit("/", 1)[1]
        await self.send(alice, room_id, {"msgtype": "m.file", "body": "a.txt", "url": mxc})
        listed, in_room, protected, quarantined, released, deleted = await self.results(
            ["User", "list_media", [ALICE], {}],
            ["Media", "list_media", [room_id], {}],
            ["Media", "protect_media", [media_id], {}],
            ["Media", "quarantine_id", [media_id], {}],
            ["Media", "quarantine_remove", [media_id], {}],
            ["Media", "delete_local_media", [media_id], {}],
        )
        self.assertEqual([m["media_id"] for m in listed], [media_id])
        self.assertEqual(in_room, {"local": [mxc], "remote": []})
        self.assertEqual((protected, quarantined, released, deleted), (True, True, True, True))
        r = await self.request("GET", f"{MEDIA}/download/{SERVER_NAME}/{media_id}")
        self.assertEqual(r.code, 404, r)

    async def test_federation(self) -> None:
        store = self.hs.federation_queue_store
        await store.set_retry_state("a.example", RetryState(0, 0, None))
        await store.set_retry_state("b.example", RetryState(5_000, 60_000, 1_000))
        listed, rooms, unknown = await self.call(
            ["Management", "federation_list", [], {}],
            ["Management", "federation_room", ["a.example"], {}],
            ["Management", "federation_room", ["nowhere.example"], {}],
        )
        self.assertEqual([d["destination"] for d in listed["result"]], ["a.example", "b.example"])
        self.assertEqual(rooms, {"result": []})
        self.assertEqual(unknown["errcode"], "M_NOT_FOUND")
