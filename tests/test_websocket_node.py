"""A WebSocket sync client on Node's built-in `WebSocket` (tests/node/ws_sync_client.mjs),
as a browser-like client would use it: it subscribes from a token taken before a message
was sent, receives that message in a push, sends one over the socket and gets it back, in
the room's order, the same as a long-polling client sees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from twisted.internet import utils
from twisted.trial import unittest

from tests.harness import on_both_engines
from tests.room_helpers import API, RoomTestCase, q

NODE = shutil.which("node")
CLIENT = Path(__file__).parent / "node" / "ws_sync_client.mjs"


@on_both_engines
class NodeWebSocketClient(RoomTestCase):
    async def test_node_client_receives_and_sends_over_the_socket(self) -> None:
        if NODE is None:
            raise unittest.SkipTest("node is not installed")
        _, _, status = await utils.getProcessOutputAndValue(
            NODE, ["--experimental-websocket", "-e",
                   "process.exit(typeof WebSocket === 'function' ? 0 : 3)"],
        )
        if status != 0:
            raise unittest.SkipTest("this node has no built-in WebSocket (Node 20.10 or later)")
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room_id)).code, 200)
        r = await self.request("GET", f"{API}/sync?timeout=0", token=alice.token)
        since = r.json["next_batch"]
        r = await self.request(
            "PUT", f"{API}/rooms/{q(room_id)}/send/m.room.message/before",
            {"msgtype": "m.text", "body": "from bob over HTTP"}, token=bob.token,
        )
        self.assertEqual(r.code, 200, r)
        from_bob = r.json["event_id"]

        ws_url = "ws" + self.base_url[4:] + "/_matrix/client/unstable/org.heddle.ws/sync"
        out, err, status = await utils.getProcessOutputAndValue(
            NODE,
            ["--experimental-websocket", str(CLIENT), ws_url, alice.token, room_id, since,
             "from bob over HTTP", "from alice over the socket"],
        )
        self.assertEqual(status, 0, err.decode(errors="replace"))
        result = json.loads(out.decode().strip().splitlines()[-1])
        sent = result["sent"]
        self.assertTrue(sent.startswith("$"), result)
        self.assertEqual(result["received"], [from_bob, sent])

        # A long-polling client reads the same events, in the same order.
        r = await self.request("GET", f"{API}/sync?since={q(since)}", token=bob.token)
        timeline = r.json["rooms"]["join"][room_id]["timeline"]["events"]
        self.assertEqual(
            [e["event_id"] for e in timeline if e["type"] == "m.room.message"], [from_bob, sent]
        )
        sent_event = next(e for e in timeline if e["event_id"] == sent)
        self.assertEqual(sent_event["content"]["body"], "from alice over the socket")
        self.assertEqual(sent_event["sender"], alice.user_id)
