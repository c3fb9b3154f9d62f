"""matrix-js-sdk (the library under Element Web), run by Node on tests/node/js_sdk_client.mjs:
the thread list and unread counts its `Room` objects show, and a read receipt resetting
them. Needs `npm ci` in tests/node (`.ci/run` does it); skipped without Node or the
package."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from twisted.internet import utils
from twisted.trial import unittest

from tests.harness import on_both_engines
from tests.room_helpers import RoomTestCase, User

NODE = shutil.which("node")
NODE_DIR = Path(__file__).parent / "node"
CLIENT = NODE_DIR / "js_sdk_client.mjs"


def text(body: str, **extra: Any) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, **extra}


class JsSdkTestCase(RoomTestCase):
    def setUp(self) -> Any:
        if NODE is None:
            raise unittest.SkipTest("node is not installed")
        if not (NODE_DIR / "node_modules" / "matrix-js-sdk").is_dir():
            raise unittest.SkipTest("matrix-js-sdk is not installed (npm ci in tests/node)")
        return super().setUp()


@on_both_engines
class JsSdkThreadsAndUnreadCounts(JsSdkTestCase):
    async def js_sdk(self, user: User, room_id: str, threads: int, *mode: str) -> list[Any]:
        out, err, status = await utils.getProcessOutputAndValue(
            NODE,  # type: ignore[arg-type]
            [str(CLIENT), self.base_url, user.user_id, user.token, user.device_id, room_id,
             str(threads), *mode],
            path=str(NODE_DIR),
        )
        self.assertEqual(status, 0, err.decode(errors="replace"))
        return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]

    async def test_threads_and_unread_counts_as_the_room_shows_them(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room_id)).code, 200)

        async def sent(content: dict[str, Any]) -> str:
            r = await self.send(bob, room_id, content)
            self.assertEqual(r.code, 200, r)
            return str(r.json["event_id"])

        await sent(text("hello"))
        await sent(text("alice, look", **{"m.mentions": {"user_ids": [alice.user_id]}}))
        root = await sent(text("a thread starts here"))
        for i in range(2):
            await sent(text(f"in the thread {i}", **{"m.relates_to": {
                "rel_type": "m.thread", "event_id": root, "is_falling_back": True,
                "m.in_reply_to": {"event_id": root},
            }}))

        before, after = await self.js_sdk(alice, room_id, 1, "--read")
        # The main timeline: three messages, one of them a mention; the thread's two
        # replies are counted in the thread; the room's badge adds them up.
        self.assertEqual(before["main"], {"total": 3, "highlight": 1})
        self.assertEqual(before["threads"], [{"id": root, "replies": 2, "unread": 2}])
        self.assertEqual(before["unread"], {"total": 5, "highlight": 1})
        # A receipt on the main timeline's latest event (the thread's root, which the
        # client sends in the root's thread or the main timeline, as it chooses) reads the
        # main timeline; the thread's replies, after the root, stay unread.
        self.assertEqual(after["main"], {"total": 0, "highlight": 0})
        self.assertEqual(after["threads"], [{"id": root, "replies": 2, "unread": 2}])
        self.assertEqual(after["unread"], {"total": 2, "highlight": 0})


UPGRADE_CLIENT = NODE_DIR / "js_sdk_upgrade.mjs"


@on_both_engines
class JsSdkRoomUpgrade(JsSdkTestCase):
    """The SDK's `upgradeRoom` against the server's endpoint, and a member following the
    tombstone to the new room: the SDK links the two rooms (`getRoomUpgradeHistory`,
    `findPredecessor`) only if the tombstone and the create event's `predecessor` agree."""

    async def js_sdk(self, user: User, room_id: str, *mode: str) -> dict[str, Any]:
        out, err, status = await utils.getProcessOutputAndValue(
            NODE,  # type: ignore[arg-type]
            [str(UPGRADE_CLIENT), self.base_url, user.user_id, user.token, user.device_id,
             room_id, *mode],
            path=str(NODE_DIR),
        )
        self.assertEqual(status, 0, err.decode(errors="replace"))
        [line] = [line for line in out.decode().splitlines() if line.startswith("{")]
        result: dict[str, Any] = json.loads(line)
        return result

    async def test_upgrade_and_follow_the_tombstone(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        old = await self.create_room(alice, preset="public_chat", room_version="10")
        self.assertEqual((await self.join(bob, old)).code, 200)

        upgraded = await self.js_sdk(alice, old, "upgrade", "11")
        new = upgraded["replacement"]
        self.assertNotEqual(new, old)
        self.assertEqual(upgraded["history"], [old, new])
        self.assertEqual(upgraded["predecessor"], {"roomId": old, "eventId": upgraded["tombstone"]})
        self.assertEqual(upgraded["version"], "11")

        followed = await self.js_sdk(bob, old, "follow")
        self.assertEqual(followed["replacement"], new)
        self.assertEqual(followed["history"], [old, new])
        self.assertEqual(await self.membership_of(new, bob), "join")
