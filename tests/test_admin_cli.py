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
from homeserver.errors import Codes, MatrixError
from tests.admin_helpers import AdminTestCase
from tests.harness import PASSWORD, SERVER_NAME, on_both_engines
from tests.test_admin_media import MediaAdminTestCase


class AdminCliTestCase(AdminTestCase):
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


@on_both_engines
class AdminCliTests(AdminCliTestCase):

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


@on_both_engines
class AdminCliRoomTests(AdminCliTestCase, MediaAdminTestCase):
    async def setUp(self):
        await super().setUp()
        self.admin = await self.make_admin()
        self.alice = await self.user("alice")

    async def admin_cli(self, *argv: str) -> tuple[int, Any, str]:
        return await self.heddle_admin("--token", self.admin.token, *argv)

    async def test_rooms_list_show_block_and_delete(self):
        room_id = await self.create_room(self.alice, name="Doomed")
        status, listed, _ = await self.admin_cli("rooms", "--search", "Doom")
        self.assertEqual(status, 0)
        self.assertEqual([r["room_id"] for r in listed["rooms"]], [room_id])
        status, shown, _ = await self.admin_cli("room", room_id)
        self.assertEqual((status, shown["name"]), (0, "Doomed"))
        status, _, _ = await self.admin_cli("block-room", room_id)
        self.assertEqual(status, 0)
        self.assertEqual(await self.hs.room_admin_store.get_block(room_id), self.admin.user_id)
        status, _, _ = await self.admin_cli("unblock-room", room_id)
        self.assertIsNone(await self.hs.room_admin_store.get_block(room_id))
        # The delete is waited for: its final status is printed.
        status, done, _ = await self.admin_cli("delete-room", room_id, "--poll-interval", "0.02")
        self.assertEqual(status, 0)
        self.assertEqual(done["status"], "complete")
        self.assertEqual(done["shutdown_room"]["kicked_users"], [self.alice.user_id])
        status, _, err = await self.admin_cli("room", room_id)
        self.assertEqual(status, 1)
        self.assertIn("M_NOT_FOUND", err)

    async def test_delete_room_failures_and_no_wait(self):
        room_id = await self.create_room(self.alice)
        status, _, err = await self.admin_cli("delete-room", f"!nosuchroom:{SERVER_NAME}")
        self.assertEqual(status, 1)
        self.assertIn("M_NOT_FOUND", err)
        # Alice cannot be made to leave: without --force-purge the delete fails.
        self.patch(self.hs.membership, "leave", _refuse)
        status, printed, err = await self.admin_cli(
            "delete-room", room_id, "--poll-interval", "0.02"
        )
        self.assertEqual((status, printed), (1, None))
        self.assertIn("the delete failed", err)
        status, printed, _ = await self.admin_cli("delete-room", room_id, "--no-wait", "--no-purge")
        self.assertEqual(status, 0)
        self.assertEqual(set(printed), {"delete_id"})

    async def test_registration_tokens(self):
        status, made, err = await self.admin_cli("create-token", "--token", "abc", "--uses", "2")
        self.assertEqual(status, 0, err)
        self.assertEqual((made["token"], made["uses_allowed"]), ("abc", 2))
        status, made, _ = await self.admin_cli("create-token", "--length", "10")
        self.assertEqual(len(made["token"]), 10)
        status, listed, _ = await self.admin_cli("tokens", "--valid", "true")
        self.assertEqual(
            sorted(t["token"] for t in listed["registration_tokens"]),
            sorted(["abc", made["token"]]),
        )
        status, _, _ = await self.admin_cli("delete-token", "abc")
        self.assertEqual(status, 0)
        self.assertIsNone(await self.hs.registration_token_store.get_token("abc"))
        status, _, err = await self.admin_cli("delete-token", "abc")
        self.assertEqual(status, 1)
        self.assertIn("M_NOT_FOUND", err)
        status, _, err = await self.admin_cli("create-token", "--uses", "-1")
        self.assertEqual(status, 1)
        self.assertIn("M_INVALID_PARAM", err)

    async def test_media(self):
        media_id = await self.upload(self.alice, b"x" * 10, "text/plain")
        mxc = f"mxc://{SERVER_NAME}/{media_id}"
        status, _, _ = await self.admin_cli("quarantine-media", mxc)
        self.assertEqual(status, 0)
        self.assertEqual(await self.download_code(self.alice, media_id), 404)
        status, _, _ = await self.admin_cli("unquarantine-media", f"{SERVER_NAME}/{media_id}")
        self.assertEqual(await self.download_code(self.alice, media_id), 200)
        status, deleted, _ = await self.admin_cli("delete-media", mxc)
        self.assertEqual((status, deleted["deleted_media"]), (0, [media_id]))
        self.assertEqual(await self.download_code(self.alice, media_id), 404)
        await self.cache_remote("remote1", b"y" * 5)
        status, purged, _ = await self.admin_cli(
            "purge-remote-media", "--before-ts", str(self.hs.clock.time_msec() + 1000)
        )
        self.assertEqual((status, purged), (0, {"deleted": 1}))
        status, _, err = await self.admin_cli("delete-media", "https://example.org/x")
        self.assertEqual(status, 1)
        self.assertIn("not a media URI", err)


async def _refuse(*args: Any, **kwargs: Any) -> None:
    raise MatrixError(403, Codes.FORBIDDEN, "not now")
