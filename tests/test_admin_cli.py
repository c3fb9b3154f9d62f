"""`heddle admin`: the admin API from a shell, run against a server over real HTTP on
loopback (in a thread: the command makes blocking requests, as it does from a shell)."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from twisted.internet import threads

from homeserver.admin import cli as admin_cli
from homeserver.cli import _parser
from tests.admin_helpers import AdminTestCase
from tests.harness import PASSWORD, SERVER_NAME, on_both_engines


@on_both_engines
class AdminCliTests(AdminTestCase):
    async def heddle_admin(self, *argv: str, password: str = PASSWORD) -> tuple[int, Any, str]:
        """Run `heddle admin --url <this server> argv...`: (status, printed JSON, stderr)."""
        args = _parser().parse_args(["admin", "--url", self.base_url, *argv])
        out, err = io.StringIO(), io.StringIO()

        def run() -> int:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return admin_cli.run(args, password=lambda: password)

        status = await threads.deferToThread(run)
        printed = json.loads(out.getvalue()) if out.getvalue() else None
        return status, printed, err.getvalue()

    async def test_actions_with_a_token(self):
        admin, alice = await self.make_admin(), await self.user("alice")
        status, version, _ = await self.heddle_admin("--token", admin.token, "version")
        self.assertEqual((status, set(version)), (0, {"server_version"}))
        status, users, _ = await self.heddle_admin("--token", admin.token, "users", "--name", "ali")
        self.assertEqual(status, 0)
        self.assertEqual([u["name"] for u in users["users"]], [alice.user_id])
        status, _, _ = await self.heddle_admin("--token", admin.token, "lock", alice.user_id)
        self.assertEqual(status, 0)
        status, shown, _ = await self.heddle_admin("--token", admin.token, "user", alice.user_id)
        self.assertTrue(shown["locked"])
        status, _, _ = await self.heddle_admin("--token", admin.token, "deactivate", alice.user_id)
        self.assertEqual(status, 0)
        self.assertTrue((await self.hs.accounts.get_account(alice.user_id)).deactivated)
        self.assertEqual(
            [e.action for e in await self.audit(alice.user_id)][-1], "deactivate_user"
        )

    async def test_logging_in_as_an_admin_and_out_again(self):
        admin = await self.make_admin("root")
        status, version, _ = await self.heddle_admin("--user", "root", "version")
        self.assertEqual(status, 0)
        self.assertIn("server_version", version)
        # The session it opened is closed: only the test's own device remains.
        devices = await self.hs.devices.get_devices(admin.user_id)
        self.assertEqual([d.device_id for d in devices], [admin.device_id])

    async def test_errors_are_reported_not_raised(self):
        admin, alice = await self.make_admin(), await self.user("alice")
        status, printed, err = await self.heddle_admin("--token", alice.token, "user", alice.user_id)
        self.assertEqual((status, printed), (1, None))
        self.assertIn("M_FORBIDDEN", err)
        status, _, err = await self.heddle_admin(
            "--token", admin.token, "user", f"@nobody:{SERVER_NAME}"
        )
        self.assertEqual(status, 1)
        self.assertIn("M_NOT_FOUND", err)
        status, _, err = await self.heddle_admin("--user", "root", "version", password="wrong")
        self.assertEqual(status, 1)
        self.assertIn("M_FORBIDDEN", err)
        status, _, err = await self.heddle_admin("version")
        self.assertEqual(status, 1)
        self.assertIn("--token", err)
        args = _parser().parse_args(["admin", "--url", "http://127.0.0.1:9", "version"])
        args.token = "x"
        self.assertEqual(await threads.deferToThread(admin_cli.run, args), 1)
