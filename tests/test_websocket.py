"""The WebSocket sync transport (docs/websocket.md), driven by autobahn's Twisted client over
loopback: authentication, subscription, pushes, requests, and every kind of bad input.
"""

from __future__ import annotations

import gc
import itertools
import json
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from nio import AsyncClient, ReceiptEvent, SyncResponse, TypingNoticeEvent
from twisted.internet import defer, protocol, reactor, ssl, task
from twisted.web import server

from client_api.websocket import WEBSOCKET_PATH, websocket_url
from client_api.websocket.session import WebSocketSession
from homeserver.config import ListenerConfig
from homeserver.tls import generate_self_signed_certificate
from tests.harness import ensure_deferred, nio, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

_request_ids = itertools.count(1)


class _ClientProtocol(WebSocketClientProtocol):  # type: ignore[misc]
    client: WsClient

    def onOpen(self) -> None:
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.client.frames.append(json.loads(payload))
        # Bytes on the wire and after decompression so far: a message that grew the second
        # more than the first came compressed.
        stats = self.trafficStats
        wire, app = stats.incomingOctetsWebSocketLevel, stats.incomingOctetsAppLevel
        self.client.compressed.append(app - self.client.app_octets > wire - self.client.wire_octets)
        self.client.wire_octets, self.client.app_octets = wire, app

    def onPing(self, payload: bytes) -> None:
        self.client.pings += 1
        if self.client.answer_pings:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.client._closed(code, reason)


class WsClient:
    """A test client: every frame it receives is kept in `frames`, in order."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        # Whether each frame came compressed, in the same order.
        self.compressed: list[bool] = []
        self.wire_octets = self.app_octets = 0
        self.protocol: _ClientProtocol | None = None
        self.open: defer.Deferred[None] = defer.Deferred()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.is_closed = False
        self.pings = 0
        self.answer_pings = True

    def _opened(self, proto: _ClientProtocol) -> None:
        self.protocol = proto
        self.open.callback(None)

    def _closed(self, code: int | None, reason: str | None) -> None:
        self.is_closed = True
        # The code the server sent, even when it then dropped the connection (1006 locally).
        remote = getattr(self.protocol, "remoteCloseCode", None)
        self.close_code = remote if remote is not None else code
        self.close_reason = getattr(self.protocol, "remoteCloseReason", None) or reason
        if not self.open.called:
            self.open.errback(ConnectionError(f"handshake failed: {code} {reason}"))

    def send(self, message: Any) -> None:
        assert self.protocol is not None
        self.protocol.sendMessage(json.dumps(message).encode())

    def send_raw(self, data: bytes, binary: bool = False) -> None:
        assert self.protocol is not None
        self.protocol.sendMessage(data, isBinary=binary)

    def close(self) -> None:
        if self.protocol is not None and not self.is_closed:
            self.protocol.sendClose(1000)

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; frames: {self.frames[-5:]!r}")
            await task.deferLater(reactor, 0.01, lambda: None)

    async def request(self, type: str, **fields: Any) -> dict[str, Any]:
        """Send a message with a new request ID; return the response or error frame."""
        request_id = f"r{next(_request_ids)}"
        self.send({"type": type, "request_id": request_id, **fields})
        return await self.reply_to(request_id)

    async def reply_to(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def answered() -> bool:
            found[:] = [f for f in self.frames if f.get("request_id") == request_id]
            return bool(found)

        await self.wait_for(answered, timeout)
        return found[0]

    def syncs(self) -> list[dict[str, Any]]:
        return [f["body"] for f in self.frames if f["type"] == "sync"]

    async def next_sync(self, after: int, timeout: float = 10.0) -> dict[str, Any]:
        """The first sync body pushed after the first `after` ones."""
        await self.wait_for(lambda: len(self.syncs()) > after, timeout)
        return self.syncs()[after]

    async def wait_closed(self, timeout: float = 10.0) -> tuple[int | None, str | None]:
        await self.wait_for(lambda: self.is_closed, timeout)
        return self.close_code, self.close_reason


def nio_as_json(response: SyncResponse) -> dict[str, Any]:
    """The parts of a matrix-nio sync response the equivalence tests compare, as /sync JSON."""
    join: dict[str, Any] = {}
    for room_id, room in response.rooms.join.items():
        ephemeral: list[dict[str, Any]] = []
        for event in room.ephemeral:
            if isinstance(event, TypingNoticeEvent):
                ephemeral.append({"type": "m.typing", "content": {"user_ids": event.users}})
            elif isinstance(event, ReceiptEvent):
                content: dict[str, Any] = {}
                for receipt in event.receipts:
                    content.setdefault(receipt.event_id, {}).setdefault(receipt.receipt_type, {})[
                        receipt.user_id
                    ] = {"ts": receipt.timestamp}
                ephemeral.append({"type": "m.receipt", "content": content})
        join[room_id] = {
            "timeline": {"events": [event.source for event in room.timeline.events]},
            "ephemeral": {"events": ephemeral},
        }
    return {
        "rooms": {"join": join},
        "to_device": {"events": [event.source for event in response.to_device_events]},
        "device_lists": {"changed": list(response.device_list.changed)},
    }


def timeline_ids(body: dict[str, Any], room_id: str) -> list[str]:
    room = body["rooms"]["join"].get(room_id, {})
    return [e["event_id"] for e in room.get("timeline", {}).get("events", [])]


async def pushed_event(client: WsClient, room_id: str, event_id: str) -> tuple[dict[str, Any], int]:
    """The event once a push has carried it, and the index of that push's frame."""

    def frame_index() -> int | None:
        for index, frame in enumerate(client.frames):
            if frame["type"] == "sync" and event_id in timeline_ids(frame["body"], room_id):
                return index
        return None

    await client.wait_for(lambda: frame_index() is not None)
    index = frame_index()
    assert index is not None
    events = client.frames[index]["body"]["rooms"]["join"][room_id]["timeline"]["events"]
    return next(e for e in events if e["event_id"] == event_id), index


class WebSocketTestCase(RoomTestCase):
    async def connect(
        self,
        headers: dict[str, str] | None = None,
        compression: bool = False,
        tls: bool = False,
        port: int | None = None,
    ) -> WsClient:
        port = port or int(self.base_url.rsplit(":", 1)[1])
        url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}{WEBSOCKET_PATH}"
        client = WsClient()
        factory = WebSocketClientFactory(url, headers=headers or {})
        factory.protocol = type("P", (_ClientProtocol,), {"client": client})
        if compression:
            factory.setProtocolOptions(
                perMessageCompressionOffers=[PerMessageDeflateOffer()],
                perMessageCompressionAccept=lambda response: (
                    PerMessageDeflateResponseAccept(response)
                    if isinstance(response, PerMessageDeflateResponse)
                    else None
                ),
            )
        if tls:
            options = ssl.CertificateOptions(verify=False)
            connector = reactor.connectSSL("127.0.0.1", port, factory, options)
        else:
            connector = reactor.connectTCP("127.0.0.1", port, factory)
        self.addCleanup(connector.disconnect)  # type: ignore[attr-defined]
        await client.open
        return client

    async def authed(self, user: User) -> WsClient:
        client = await self.connect()
        reply = await client.request("auth", access_token=user.token)
        assert reply["type"] == "response", reply
        return client

    async def subscribed(self, user: User, **fields: Any) -> WsClient:
        client = await self.authed(user)
        reply = await client.request("subscribe", **fields)
        assert reply["type"] == "response", reply
        await client.next_sync(0)
        return client

    async def long_poll(self, user: User, since: str | None, timeout_ms: int = 0) -> dict[str, Any]:
        path = f"{API}/sync?timeout={timeout_ms}"
        if since is not None:
            path += f"&since={quote(since)}"
        r = await self.request("GET", path, token=user.token)
        assert r.code == 200, r
        return r.json

    async def room_with(self, alice: User, bob: User) -> str:
        room_id = await self.create_room(alice, preset="public_chat")
        r = await self.join(bob, room_id)
        assert r.code == 200, r
        return room_id


@on_both_engines
class WebSocketSyncTests(WebSocketTestCase):
    @ensure_deferred
    async def test_discovery_advertises_the_websocket(self) -> None:
        versions = (await self.request("GET", "/_matrix/client/versions")).json
        self.assertIs(versions["unstable_features"]["org.heddle.ws"], True)
        well_known = (await self.request("GET", "/.well-known/matrix/client")).json
        # The client base URL (from the listener config here) with ws://, and the path.
        base_url = well_known["m.homeserver"]["base_url"]
        self.assertTrue(base_url.startswith("http://"))
        self.assertEqual(
            well_known["org.heddle.ws"],
            {"url": "ws" + base_url[4:] + "_matrix/client/unstable/org.heddle.ws/sync"},
        )

    @ensure_deferred
    async def test_wss_on_a_tls_client_listener(self) -> None:
        """A TLS client listener serves the socket too (wss://), and says so."""
        data_dir = self.make_data_dir()
        cert, key = data_dir / "tls.crt", data_dir / "tls.key"
        generate_self_signed_certificate(cert, key, "127.0.0.1")
        listener = ListenerConfig(
            type="client", bind_address="127.0.0.1", port=0, tls=True,
            tls_certificate_path=str(cert), tls_private_key_path=str(key),
        )
        # Beside the plain listener the HTTP helpers use (stopped with the server).
        tls_port = self.hs._listen(listener)
        self.hs.ports.append(tls_port)
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        client = await self.connect(tls=True, port=tls_port.getHost().port)
        await client.request("auth", access_token=alice.token)
        await client.request("subscribe")
        await client.next_sync(0)
        event_id = (await self.send(bob, room_id)).json["event_id"]
        self.assertEqual(timeline_ids(await client.next_sync(1), room_id), [event_id])
        config = self.hs.config.model_copy(update={"listeners": [listener]})
        self.assertTrue(websocket_url(config).startswith("wss://127.0.0.1:0/"))

    @ensure_deferred
    async def test_messages_are_pushed_with_next_batch(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        client = await self.subscribed(alice)
        first = client.syncs()[0]
        self.assertIn(room_id, first["rooms"]["join"])
        r = await self.send(bob, room_id, {"msgtype": "m.text", "body": "hi"})
        event_id = r.json["event_id"]
        pushed = await client.next_sync(1)
        self.assertEqual(timeline_ids(pushed, room_id), [event_id])
        # Exactly a /sync body: the same response HTTP gives from the same token.
        http = await self.long_poll(alice, first["next_batch"])
        self.assertEqual(timeline_ids(http, room_id), [event_id])
        self.assertEqual(set(pushed), set(http))

    @ensure_deferred
    async def test_use_state_after(self) -> None:
        """`use_state_after` as /sync's: every push carries `state_after`, never `state`."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        client = await self.subscribed(alice, use_state_after=True)
        first = client.syncs()[0]["rooms"]["join"][room_id]
        self.assertNotIn("state", first)
        keys = {(e["type"], e["state_key"]) for e in first["state_after"]["events"]}
        self.assertIn(("m.room.create", ""), keys)
        r = await self.put_state(alice, room_id, "m.room.topic", {"topic": "Tea"})
        self.assertEqual(r.code, 200, r)
        pushed = (await client.next_sync(1))["rooms"]["join"][room_id]
        self.assertNotIn("state", pushed)
        state_after = [e["event_id"] for e in pushed["state_after"]["events"]]
        self.assertEqual(state_after, [r.json["event_id"]])
        # A boolean, not a string.
        other = await self.authed(alice)
        reply = await other.request("subscribe", use_state_after="true")
        self.assertEqual((reply["status"], reply["body"]["errcode"]), (400, "M_BAD_JSON"))

    @ensure_deferred
    async def test_same_events_in_same_order_as_a_long_polling_client(self) -> None:
        """Alice's first device listens on a WebSocket, her second long-polls /sync: both see
        the same timeline, typing, receipts, to-device messages and device-list changes."""

        async def long_poll(poller: User, since: str) -> tuple[dict[str, Any], str]:
            body = await self.long_poll(poller, since, timeout_ms=10_000)
            return body, body["next_batch"]

        await self.check_equivalence(long_poll)

    @ensure_deferred
    async def test_same_events_in_same_order_as_a_matrix_nio_client(self) -> None:
        """The same, with matrix-nio long-polling (its parsed responses turned back into the
        fields compared)."""
        clients: dict[str, AsyncClient] = {}

        async def nio_poll(poller: User, since: str) -> tuple[dict[str, Any], str]:
            if poller.token not in clients:
                clients[poller.token] = self.nio_client(poller)
            response = await nio(clients[poller.token].sync(timeout=10_000, since=since))
            assert isinstance(response, SyncResponse), response
            return nio_as_json(response), response.next_batch

        await self.check_equivalence(nio_poll)

    async def check_equivalence(
        self, poll_once: Callable[[User, str], Awaitable[tuple[dict[str, Any], str]]]
    ) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        second = await self.login("alice")
        poller = User(alice.user_id, second["access_token"], second["device_id"])
        start = (await self.long_poll(alice, None))["next_batch"]
        poll_start = (await self.long_poll(poller, None))["next_batch"]
        client = await self.subscribed(alice, since=start)

        def saw_marker(bodies: list[dict[str, Any]]) -> bool:
            return any(
                e["content"].get("body") == "done"
                for b in bodies
                for e in b["rooms"]["join"].get(room_id, {}).get("timeline", {}).get("events", [])
            )

        async def poll() -> list[dict[str, Any]]:
            bodies: list[dict[str, Any]] = []
            since = poll_start
            while not saw_marker(bodies):
                body, since = await poll_once(poller, since)
                bodies.append(body)
            return bodies

        polling = defer.ensureDeferred(poll())
        for n in range(3):
            r = await self.send(bob, room_id, {"msgtype": "m.text", "body": f"m{n}"})
            assert r.code == 200, r
        last_event = r.json["event_id"]
        r = await self.request(
            "PUT", f"{API}/rooms/{q(room_id)}/typing/{q(bob.user_id)}",
            {"typing": True, "timeout": 30_000}, token=bob.token,
        )
        assert r.code == 200, r
        r = await self.request(
            "POST", f"{API}/rooms/{q(room_id)}/receipt/m.read/{q(last_event)}", {}, token=bob.token
        )
        assert r.code == 200, r
        for n in range(2):
            r = await self.request(
                "PUT", f"{API}/sendToDevice/org.example.ping/td{n}",
                {"messages": {alice.user_id: {"*": {"n": n}}}}, token=bob.token,
            )
            assert r.code == 200, r
        await self.login("bob")  # a new device: a device-list change for bob's room-mates
        await self.send(bob, room_id, {"msgtype": "m.text", "body": "done"})
        polled = await polling
        await client.wait_for(lambda: saw_marker(client.syncs()))
        pushed = client.syncs()[1:]  # after the first (empty) response to `since`

        def summary(bodies: list[dict[str, Any]]) -> dict[str, Any]:
            room = [b["rooms"]["join"].get(room_id, {}) for b in bodies]
            ephemeral = [e for r in room for e in r.get("ephemeral", {}).get("events", [])]
            return {
                "timeline": [e["event_id"] for r in room for e in r.get("timeline", {}).get("events", [])],
                "typing": any(e["type"] == "m.typing" and e["content"]["user_ids"] == [bob.user_id] for e in ephemeral),
                "receipt": any(
                    e["type"] == "m.receipt" and bob.user_id in e["content"].get(last_event, {}).get("m.read", {})
                    for e in ephemeral
                ),
                "to_device": [(e["type"], e["content"]) for b in bodies for e in b["to_device"]["events"]],
                "device_lists": set().union(*(b["device_lists"]["changed"] for b in bodies)),
            }

        ws, http = summary(pushed), summary(polled)
        self.assertEqual(ws, http)
        self.assertEqual(len(ws["timeline"]), 4)
        self.assertTrue(ws["typing"] and ws["receipt"])
        self.assertEqual(ws["to_device"], [("org.example.ping", {"n": 0}), ("org.example.ping", {"n": 1})])
        self.assertIn(bob.user_id, ws["device_lists"])

    @ensure_deferred
    async def test_reconnect_with_since_loses_and_repeats_nothing(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        client = await self.subscribed(alice)
        m1 = (await self.send(bob, room_id)).json["event_id"]
        t1 = (await client.next_sync(1))["next_batch"]
        await self.to_device(bob, alice, {"n": 1})
        await client.wait_for(lambda: any(b["to_device"]["events"] for b in client.syncs()))
        p2 = client.syncs()[-1]
        self.assertEqual([e["content"] for e in p2["to_device"]["events"]], [{"n": 1}])
        t2 = p2["next_batch"]
        # One more push computed from t2: it must not count as the client having read t2.
        extra = (await self.send(bob, room_id)).json["event_id"]
        await client.wait_for(lambda: extra in timeline_ids(client.syncs()[-1], room_id))
        client.close()
        await client.wait_closed()
        # While away: two messages and a to-device message.
        m2 = (await self.send(bob, room_id)).json["event_id"]
        m3 = (await self.send(bob, room_id)).json["event_id"]
        await self.to_device(bob, alice, {"n": 2})

        # A client that never read the second push resumes from t1: the to-device message of
        # that push comes again (a pushed frame is not an acknowledgement).
        again = await self.subscribed(alice, since=t1)
        first = again.syncs()[0]
        self.assertEqual(timeline_ids(first, room_id), [extra, m2, m3])
        self.assertEqual([e["content"] for e in first["to_device"]["events"]], [{"n": 1}, {"n": 2}])
        self.assertNotIn(m1, timeline_ids(first, room_id))
        again.close()
        await again.wait_closed()

        # Resuming from the last next_batch received: what came after it, once.
        resumed = await self.subscribed(alice, since=t2)
        first = resumed.syncs()[0]
        self.assertEqual(timeline_ids(first, room_id), [extra, m2, m3])
        self.assertEqual([e["content"] for e in first["to_device"]["events"]], [{"n": 2}])

    async def to_device(self, sender: User, target: User, content: dict[str, Any]) -> None:
        r = await self.request(
            "PUT", f"{API}/sendToDevice/org.example.ping/td{next(_request_ids)}",
            {"messages": {target.user_id: {target.device_id: content}}}, token=sender.token,
        )
        assert r.code == 200, r

    @ensure_deferred
    async def test_ack_lets_to_device_messages_go(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        client = await self.subscribed(alice)
        await self.to_device(bob, alice, {"n": 1})
        pushed = await client.next_sync(1)
        reply = await client.request("ack", next_batch=pushed["next_batch"])
        self.assertEqual(reply["type"], "response", reply)
        # The next push deletes what was acknowledged; a reconnect from the first token finds
        # it gone.
        await self.to_device(bob, alice, {"n": 2})
        await client.next_sync(2)
        count = await self.hs.device_inbox_store.count_messages(alice.user_id, alice.device_id)
        self.assertEqual(count, 1)
        reply = await client.request("ack", next_batch="s999999999_0_0_0_0_999999_0")
        self.assertEqual(reply["body"]["errcode"], "M_INVALID_PARAM")

    @ensure_deferred
    async def test_a_slow_reader_gets_one_coalesced_response(self) -> None:
        """While the transport says its buffer is full nothing is computed; once it drains,
        one response carries everything since the last one."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        client = await self.subscribed(alice)
        (session,) = self.hs.websocket_connections._open
        session.pause_writing()  # what the transport calls when its buffer is full
        sent = [(await self.send(bob, room_id)).json["event_id"] for _ in range(5)]
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(client.syncs()), 1)
        session.resume_writing()
        pushed = await client.next_sync(1)
        self.assertEqual(timeline_ids(pushed, room_id), sent)
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(client.syncs()), 2)

    @ensure_deferred
    async def test_stopping_the_server_closes_sockets_with_1001(self) -> None:
        alice = await self.user("alice")
        client = await self.subscribed(alice)
        await self.hs.stop()
        code, _ = await client.wait_closed()
        self.assertEqual(code, 1001)
        self.assertEqual(len(self.hs.websocket_connections), 0)

    @ensure_deferred
    async def test_the_server_pings(self) -> None:
        await self.start_server(websocket={"ping_interval_ms": 1000})
        alice = await self.user("alice")
        client = await self.authed(alice)
        await client.wait_for(lambda: client.pings >= 1, timeout=5)
        self.assertFalse(client.is_closed)

    @ensure_deferred
    async def test_a_ping_not_answered_drops_the_connection(self) -> None:
        await self.start_server(websocket={"ping_interval_ms": 1000, "ping_timeout_ms": 1000})
        alice = await self.user("alice")
        client = await self.subscribed(alice)
        client.answer_pings = False
        await client.wait_closed(timeout=5)
        self.assertGreaterEqual(client.pings, 1)
        await client.wait_for(lambda: len(self.hs.websocket_connections) == 0)

    @ensure_deferred
    async def test_revoked_token_closes_the_socket_within_a_second(self) -> None:
        alice = await self.user("alice")
        client = await self.subscribed(alice)
        started = time.monotonic()
        r = await self.request("POST", f"{API}/logout", {}, token=alice.token)
        assert r.code == 200, r
        code, _reason = await client.wait_closed(timeout=1.0)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(code, 4001)
        error = client.frames[-1]
        self.assertEqual(error["type"], "error")
        self.assertEqual(error["body"]["errcode"], "M_UNKNOWN_TOKEN")
        self.assertFalse(error["body"]["soft_logout"])
        self.assertEqual(len(self.hs.websocket_connections), 0)

    @ensure_deferred
    async def test_deactivated_account_closes_the_socket(self) -> None:
        alice = await self.user("alice")
        client = await self.subscribed(alice)
        r = await self.request(
            "POST", f"{API}/account/deactivate",
            {"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                      "password": "correct horse battery"}},
            token=alice.token,
        )
        assert r.code == 200, r
        code, _ = await client.wait_closed(timeout=1.0)
        self.assertEqual(code, 4001)

    @ensure_deferred
    async def test_expired_token_closes_the_socket_with_soft_logout(self) -> None:
        await self.start_server(auth={"access_token_lifetime_ms": 1000})
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        alice = User(session["user_id"], session["access_token"], session["device_id"])
        client = await self.subscribed(alice)
        code, _ = await client.wait_closed(timeout=3.0)
        self.assertEqual(code, 4001)
        self.assertEqual(client.frames[-1]["body"]["errcode"], "M_UNKNOWN_TOKEN")
        self.assertIs(client.frames[-1]["body"]["soft_logout"], True)

    @ensure_deferred
    async def test_a_new_token_for_the_same_device_keeps_the_socket(self) -> None:
        await self.start_server(auth={"access_token_lifetime_ms": 60_000})
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        alice = User(session["user_id"], session["access_token"], session["device_id"])
        client = await self.subscribed(alice)
        r = await self.request(
            "POST", f"{API}/refresh", {"refresh_token": session["refresh_token"]}
        )
        assert r.code == 200, r
        reply = await client.request("auth", access_token=r.json["access_token"])
        self.assertEqual(reply["type"], "response", reply)
        # Someone else's token is refused on this socket.
        bob = await self.user("bob")
        reply = await client.request("auth", access_token=bob.token)
        self.assertEqual((reply["status"], reply["body"]["errcode"]), (403, "M_FORBIDDEN"))
        self.assertFalse(client.is_closed)


@on_both_engines
class WebSocketRequestTests(WebSocketTestCase):
    def assertSameError(self, reply: dict[str, Any], http: Any) -> None:
        self.assertEqual(reply["type"], "error", reply)
        self.assertEqual((reply["status"], reply["body"]["errcode"]), (http.code, http.json["errcode"]))

    @ensure_deferred
    async def test_send_with_txn_id_is_the_same_as_over_http(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        client = await self.authed(alice)
        content = {"msgtype": "m.text", "body": "over the socket"}
        reply = await client.request(
            "send", room_id=room_id, event_type="m.room.message", txn_id="t1", body=content
        )
        self.assertEqual(reply["type"], "response", reply)
        event_id = reply["body"]["event_id"]
        # The same transaction ID over HTTP (same device) is the same event.
        r = await self.send(alice, room_id, content, txn_id="t1")
        self.assertEqual(r.json["event_id"], event_id)
        again = await client.request(
            "send", room_id=room_id, event_type="m.room.message", txn_id="t1", body=content
        )
        self.assertEqual(again["body"]["event_id"], event_id)

        # Errors are HTTP's: a room alice is not in, a malformed room ID.
        other = await self.create_room(bob)
        reply = await client.request("send", room_id=other, event_type="m.room.message", txn_id="t2", body=content)
        self.assertSameError(reply, await self.send(alice, other, content, txn_id="t2"))
        reply = await client.request("send", room_id="nope", event_type="m.room.message", txn_id="t3", body=content)
        self.assertSameError(reply, await self.send(alice, "nope", content, txn_id="t3"))
        reply = await client.request("send", room_id=room_id, event_type="m.room.message", txn_id="t4", body=[1])
        self.assertEqual((reply["status"], reply["body"]["errcode"]), (400, "M_BAD_JSON"))

    @ensure_deferred
    async def test_typing_receipts_and_read_markers(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        event_id = (await self.send(bob, room_id)).json["event_id"]
        watcher = await self.subscribed(bob)
        client = await self.authed(alice)
        reply = await client.request("typing", room_id=room_id, body={"typing": True, "timeout": 10_000})
        self.assertEqual(reply, {"type": "response", "request_id": reply["request_id"], "body": {}})
        reply = await client.request("receipt", room_id=room_id, receipt_type="m.read", event_id=event_id)
        self.assertEqual(reply["type"], "response", reply)
        reply = await client.request("read_markers", room_id=room_id, body={"m.fully_read": event_id})
        self.assertEqual(reply["type"], "response", reply)

        def seen(kind: str) -> bool:
            return any(
                e["type"] == kind
                for b in watcher.syncs()
                for e in b["rooms"]["join"].get(room_id, {}).get("ephemeral", {}).get("events", [])
            )

        await watcher.wait_for(lambda: seen("m.typing") and seen("m.receipt"))
        r = await self.request(
            "GET", f"{API}/user/{q(alice.user_id)}/rooms/{q(room_id)}/account_data/m.fully_read",
            token=alice.token,
        )
        self.assertEqual(r.json, {"event_id": event_id})

        # Bad input gives HTTP's errors.
        typing_path = f"{API}/rooms/{q(room_id)}/typing/{q(alice.user_id)}"
        reply = await client.request("typing", room_id=room_id, body={"timeout": 5})
        self.assertSameError(reply, await self.request("PUT", typing_path, {"timeout": 5}, token=alice.token))
        reply = await client.request("typing", room_id=room_id, user_id=bob.user_id, body={"typing": True})
        self.assertSameError(
            reply,
            await self.request(
                "PUT", f"{API}/rooms/{q(room_id)}/typing/{q(bob.user_id)}", {"typing": True}, token=alice.token
            ),
        )
        reply = await client.request("receipt", room_id=room_id, receipt_type="m.bogus", event_id=event_id)
        self.assertSameError(
            reply,
            await self.request(
                "POST", f"{API}/rooms/{q(room_id)}/receipt/m.bogus/{q(event_id)}", {}, token=alice.token
            ),
        )
        reply = await client.request("read_markers", room_id=room_id, body={"m.fully_read": 5})
        self.assertSameError(
            reply,
            await self.request(
                "POST", f"{API}/rooms/{q(room_id)}/read_markers", {"m.fully_read": 5}, token=alice.token
            ),
        )

    @ensure_deferred
    async def test_unknown_request_type(self) -> None:
        alice = await self.user("alice")
        client = await self.authed(alice)
        reply = await client.request("teleport", room_id="!x:y")
        self.assertEqual((reply["status"], reply["body"]["errcode"]), (400, "M_UNRECOGNIZED"))
        # A request without a request ID is refused, and named as such.
        client.send({"type": "typing", "room_id": "!x:y", "body": {"typing": True}})
        await client.wait_for(lambda: client.frames[-1].get("request_id") is None)
        self.assertEqual(client.frames[-1]["body"]["errcode"], "M_BAD_JSON")
        self.assertIn("request_id", client.frames[-1]["body"]["error"])
        self.assertFalse(client.is_closed)

    @ensure_deferred
    async def test_requests_are_rate_limited_per_connection(self) -> None:
        await self.start_server(
            rate_limits={"enabled": True}, websocket={"request_rate": {"per_second": 0.1, "burst_count": 2}}
        )
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        client = await self.authed(alice)
        for _ in range(2):
            reply = await client.request("typing", room_id=room_id, body={"typing": True})
            self.assertEqual(reply["type"], "response", reply)
        reply = await client.request("typing", room_id=room_id, body={"typing": True})
        self.assertEqual((reply["status"], reply["body"]["errcode"]), (429, "M_LIMIT_EXCEEDED"))
        self.assertIn("retry_after_ms", reply["body"])
        # Another connection has its own bucket.
        other = await self.authed(alice)
        reply = await other.request("typing", room_id=room_id, body={"typing": True})
        self.assertEqual(reply["type"], "response", reply)


class _RawWebSocket(protocol.Protocol):
    """A WebSocket client written by hand, to misbehave: it can stop reading altogether."""

    def __init__(self) -> None:
        self.received = 0
        self.upgraded: defer.Deferred[None] = defer.Deferred()
        self.lost = False

    def connectionMade(self) -> None:
        sock = self.transport.getHandle()  # type: ignore[attr-defined]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.write(  # type: ignore[union-attr]
            f"GET {WEBSOCKET_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if not self.upgraded.called and b"101" in data.split(b"\r\n", 1)[0]:
            self.upgraded.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True

    def send_json(self, message: Any) -> None:
        payload = json.dumps(message).encode()
        mask = b"\x01\x02\x03\x04"
        if len(payload) < 126:
            header = bytes([0x81, 0x80 | len(payload)]) + mask
        else:
            header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(header + masked)  # type: ignore[union-attr]


@on_both_engines
class WebSocketBadInputTests(WebSocketTestCase):
    async def expect_close(self, client: WsClient, code: int, errcode: str | None = None) -> None:
        closed_with, _ = await client.wait_closed()
        self.assertEqual(closed_with, code)
        if errcode is not None:
            self.assertEqual(client.frames[-1]["type"], "error")
            self.assertEqual(client.frames[-1]["body"]["errcode"], errcode)

    @ensure_deferred
    async def test_no_auth_message_closes_after_the_timeout(self) -> None:
        await self.start_server(websocket={"auth_timeout_ms": 300})
        client = await self.connect()
        await self.expect_close(client, 4002, "M_MISSING_TOKEN")

    @ensure_deferred
    async def test_a_message_before_auth_closes(self) -> None:
        client = await self.connect()
        client.send({"type": "subscribe", "request_id": "1"})
        await self.expect_close(client, 4001, "M_MISSING_TOKEN")

    @ensure_deferred
    async def test_a_bad_token_closes(self) -> None:
        client = await self.connect()
        client.send({"type": "auth", "access_token": "not-a-token"})
        await self.expect_close(client, 4001, "M_UNKNOWN_TOKEN")
        client = await self.connect()
        client.send({"type": "auth"})
        await self.expect_close(client, 4001, "M_BAD_JSON")

    @ensure_deferred
    async def test_a_revoked_token_is_refused_at_auth(self) -> None:
        alice = await self.user("alice")
        await self.request("POST", f"{API}/logout", {}, token=alice.token)
        client = await self.connect()
        client.send({"type": "auth", "access_token": alice.token})
        await self.expect_close(client, 4001, "M_UNKNOWN_TOKEN")

    @ensure_deferred
    async def test_an_expired_token_is_refused_at_auth(self) -> None:
        await self.start_server(auth={"access_token_lifetime_ms": 1000})
        await self.register("alice")
        session = await self.login("alice", refresh_token=True)
        await task.deferLater(reactor, 1.1, lambda: None)
        client = await self.connect()
        client.send({"type": "auth", "access_token": session["access_token"]})
        await self.expect_close(client, 4001, "M_UNKNOWN_TOKEN")
        self.assertIs(client.frames[-1]["body"]["soft_logout"], True)

    @ensure_deferred
    async def test_malformed_messages_get_errors_and_the_socket_stays(self) -> None:
        alice = await self.user("alice")
        client = await self.authed(alice)
        for raw, errcode in ((b"{not json", "M_NOT_JSON"), (b"[1, 2]", "M_BAD_JSON"), (b'"\\ud800"', "M_BAD_JSON")):
            count = len(client.frames)
            client.send_raw(raw)
            await client.wait_for(lambda count=count: len(client.frames) > count)
            self.assertEqual(client.frames[-1]["type"], "error")
            self.assertEqual((client.frames[-1]["status"], client.frames[-1]["body"]["errcode"]), (400, errcode))
        self.assertFalse(client.is_closed)
        reply = await client.request("subscribe")
        self.assertEqual(reply["type"], "response")

    @ensure_deferred
    async def test_a_malformed_first_message_closes(self) -> None:
        client = await self.connect()
        client.send_raw(b"\x00garbage")
        await self.expect_close(client, 4001, "M_NOT_JSON")

    @ensure_deferred
    async def test_an_oversized_message_closes_with_1009(self) -> None:
        await self.start_server(websocket={"max_message_bytes": 2048})
        alice = await self.user("alice")
        client = await self.authed(alice)
        client.send({"type": "typing", "request_id": "1", "padding": "x" * 4096})
        await self.expect_close(client, 1009)

    @ensure_deferred
    async def test_a_binary_message_closes_with_1003(self) -> None:
        alice = await self.user("alice")
        client = await self.authed(alice)
        client.send_raw(json.dumps({"type": "subscribe"}).encode(), binary=True)
        await self.expect_close(client, 1003)

    @ensure_deferred
    async def test_a_filter_that_does_not_parse(self) -> None:
        alice = await self.user("alice")
        client = await self.authed(alice)
        for bad_filter in ("{not json", {"room": {"timeline": {"limit": "ten"}}}, "12345"):
            reply = await client.request("subscribe", filter=bad_filter)
            param = bad_filter if isinstance(bad_filter, str) else json.dumps(bad_filter)
            http = await self.request("GET", f"{API}/sync?filter={quote(param)}", token=alice.token)
            self.assertEqual(reply["type"], "error", reply)
            self.assertEqual((reply["status"], reply["body"]["errcode"]), (http.code, http.json["errcode"]))
        reply = await client.request("subscribe", since="garbage")
        self.assertEqual((reply["status"], reply["body"]["errcode"]), (400, "M_INVALID_PARAM"))
        # Still usable: a good filter subscribes.
        reply = await client.request("subscribe", filter={"room": {"timeline": {"limit": 1}}})
        self.assertEqual(reply["type"], "response", reply)
        await client.next_sync(0)
        reply = await client.request("subscribe")
        self.assertEqual((reply["status"], reply["body"]["errcode"]), (400, "M_INVALID_PARAM"))

    @ensure_deferred
    async def test_a_since_from_the_future_resyncs_as_http_does(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        future = "s999999999_0_0_0_0_0_0"
        client = await self.subscribed(alice, since=future)
        pushed = client.syncs()[0]
        http = await self.long_poll(alice, future)
        # A full sync, as /sync answers: the room with its state.
        self.assertEqual(set(pushed["rooms"]["join"]), {room_id})
        self.assertEqual(
            sorted(e["type"] for e in pushed["rooms"]["join"][room_id]["state"]["events"]),
            sorted(e["type"] for e in http["rooms"]["join"][room_id]["state"]["events"]),
        )
        self.assertLess(int(pushed["next_batch"][1:].split("_")[0]), 999999999)

    @ensure_deferred
    async def test_an_origin_not_allowed_is_refused(self) -> None:
        await self.start_server(websocket={"allowed_origins": ["https://app.example"]})
        alice = await self.user("alice")
        with self.assertRaises(ConnectionError):
            await self.connect(headers={"Origin": "https://evil.example"})
        client = await self.connect(headers={"Origin": "https://app.example"})
        reply = await client.request("auth", access_token=alice.token)
        self.assertEqual(reply["type"], "response")

    @ensure_deferred
    async def test_too_many_connections_are_refused(self) -> None:
        await self.start_server(websocket={"max_connections": 1})
        await self.connect()
        with self.assertRaises(ConnectionError):
            await self.connect()

    @ensure_deferred
    async def test_compressed_connection_works(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        client = await self.connect(compression=True)
        assert client.protocol is not None
        self.assertIsNotNone(client.protocol._perMessageCompress)
        await client.request("auth", access_token=alice.token)
        await client.request("subscribe")
        await client.next_sync(0)
        event_id = (await self.send(bob, room_id)).json["event_id"]
        self.assertEqual(timeline_ids(await client.next_sync(1), room_id), [event_id])

    @ensure_deferred
    async def test_compression_keeps_no_context_and_spares_small_frames(self) -> None:
        """permessage-deflate is negotiated without context takeover either way (so neither
        side keeps a compressor between messages); large frames come compressed and intact,
        one after another, and small ones uncompressed."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        client = await self.connect(compression=True)
        assert client.protocol is not None
        extensions = client.protocol.http_headers["sec-websocket-extensions"]
        self.assertIn("server_no_context_takeover", extensions)
        self.assertIn("client_no_context_takeover", extensions)
        self.assertIn("client_max_window_bits=12", extensions)
        reply = await client.request("auth", access_token=alice.token)
        self.assertFalse(client.compressed[client.frames.index(reply)])
        await client.request("subscribe")
        await client.next_sync(0)
        bodies = [" ".join(f"word{i * n}" for i in range(4000)) for n in (1, 2)]
        for body in bodies:
            r = await self.send(bob, room_id, {"msgtype": "m.text", "body": body})
            event, frame = await pushed_event(client, room_id, r.json["event_id"])
            self.assertEqual(event["content"]["body"], body)
            self.assertTrue(client.compressed[frame])

    @ensure_deferred
    async def test_an_idle_compressed_connection_holds_no_zlib_stream(self) -> None:
        """After a large message each way, the server keeps neither a compressor nor a
        decompressor for the connection: each would take tens to hundreds of KiB."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        client = await self.connect(compression=True)
        await client.request("auth", access_token=alice.token)
        await client.request("subscribe")
        await client.next_sync(0)
        body = " ".join(f"word{i}" for i in range(4000))
        # A large message from the client (compressed by it), and its push back (by us).
        reply = await client.request(
            "send", room_id=room_id, event_type="m.room.message", txn_id="big",
            body={"msgtype": "m.text", "body": body},
        )
        self.assertEqual(reply["type"], "response", reply)
        event, frame = await pushed_event(client, room_id, reply["body"]["event_id"])
        self.assertEqual(event["content"]["body"], body)
        self.assertTrue(client.compressed[frame])
        (session,) = self.hs.websocket_connections._open
        deflate = session._connection._perMessageCompress  # type: ignore[attr-defined]
        self.assertIsNotNone(deflate)
        self.assertIsNone(deflate._compressor)
        self.assertIsNone(deflate._decompressor)
        # ... and the next large message each way still works.
        reply = await client.request(
            "send", room_id=room_id, event_type="m.room.message", txn_id="bigger",
            body={"msgtype": "m.text", "body": body + "!"},
        )
        event, frame = await pushed_event(client, room_id, reply["body"]["event_id"])
        self.assertEqual(event["content"]["body"], body + "!")
        self.assertIsNone(deflate._compressor)
        self.assertIsNone(deflate._decompressor)

    @ensure_deferred
    async def test_an_idle_connection_holds_neither_its_upgrade_nor_its_last_response(self) -> None:
        """Once subscribed and waiting, a connection keeps nothing of the HTTP request that
        upgraded it, nor the responses it pushed (the first can be a large initial sync):
        all of it goes by reference counting, without waiting for a garbage collection."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        pushed: list[weakref.ref[dict[str, Any]]] = []

        class Tracked(dict):  # type: ignore[type-arg]
            """A response that can be watched for going away."""

        sync = self.hs.websocket_sync._sync
        compute = sync.sync

        async def tracked_sync(request: Any) -> tuple[dict[str, Any], bool, Any]:
            response, empty, next_batch = await compute(request)
            tracked = Tracked(response)
            pushed.append(weakref.ref(tracked))
            return tracked, empty, next_batch

        self.patch(sync, "sync", tracked_sync)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        client = await self.subscribed(alice)
        await pushed_event(client, room_id, (await self.send(bob, room_id)).json["event_id"])
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertGreaterEqual(len(pushed), 2)
        self.assertEqual([ref() for ref in pushed], [None] * len(pushed))
        upgrades = [
            o for o in gc.get_objects()
            if isinstance(o, server.Request) and o.path == WEBSOCKET_PATH.encode()
        ]
        self.assertEqual(upgrades, [])

    @ensure_deferred
    async def test_idle_connections_hold_no_timer_coroutine_or_deferred_of_their_own(self) -> None:
        """What thousands of idle sockets each hold is kept small: no timer per connection
        (one sweep checks every deadline), no coroutine or Deferred while waiting for news
        (one callback in the notifier), and autobahn's state in slots, not a dict."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        clients = [await self.subscribed(alice) for _ in range(10)]
        await pushed_event(clients[0], room_id, (await self.send(bob, room_id)).json["event_id"])
        for client in clients:
            await client.next_sync(1)
        await task.deferLater(reactor, 0.1, lambda: None)
        sessions = list(self.hs.websocket_connections._open)
        self.assertEqual(len(sessions), 10)
        per_connection = {id(session) for session in sessions} | {
            id(session._connection) for session in sessions
        }
        timers = [
            call for call in reactor.getDelayedCalls()
            if id(getattr(call.func, "__self__", None)) in per_connection
            or "batched" in repr(call).lower()  # autobahn's keep-alive pings
        ]
        self.assertEqual(timers, [])
        waiting = self.hs.notifier._waiters[alice.user_id]
        self.assertEqual(len(waiting), 10)
        for session in sessions:
            subscription = session._subscription
            self.assertIsNone(subscription._running)
            self.assertIn(subscription._news, waiting)
            connection = session._connection
            # Twisted's and autobahn's few attributes with class-level defaults.
            self.assertLessEqual(set(vars(connection)), {"transport", "factory", "connected", "peer"})
            self.assertIsNone(connection._utf8validator)
            self.assertIsNone(connection.current_frame_masker)

    @ensure_deferred
    async def test_a_message_fragmented_around_a_ping_is_still_read(self) -> None:
        """The UTF-8 validator lasts across a control frame between two fragments of one
        message, even when a character is split between them."""
        alice = await self.user("alice")
        client = await self.connect()
        proto = client.protocol
        assert proto is not None
        encoded = json.dumps(
            {"type": "auth", "request_id": "split", "access_token": alice.token,
             "note": "caf\u00e9"}, ensure_ascii=False,
        ).encode()
        cut = encoded.index("é".encode()) + 1  # between the two bytes of "é"
        proto.beginMessage(isBinary=False)
        proto.sendMessageFrame(encoded[:cut])
        proto.sendPing(b"between")
        await task.deferLater(reactor, 0.1, lambda: None)
        proto.sendMessageFrame(encoded[cut:])
        proto.endMessage()
        reply = await client.reply_to("split")
        self.assertEqual(reply["type"], "response", reply)
        self.assertFalse(client.is_closed)

    @ensure_deferred
    async def test_a_push_into_a_closing_socket_is_not_an_error(self) -> None:
        """A close under way when a push is written (the server's close frame sent, the
        client not yet answering) is a normal end: nothing is logged as an error, and the
        connection goes when the close completes."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        client = await self.subscribed(alice)
        assert client.protocol is not None
        (session,) = self.hs.websocket_connections._open
        position = session._position
        assert position is not None
        first_token = position.token
        # The client reads nothing more for now, so the close cannot complete.
        client.protocol.transport.pauseProducing()
        session._connection.sendClose(1000)  # type: ignore[attr-defined]
        with self.assertNoLogs("client_api.websocket", level="ERROR"):
            await self.send(bob, room_id)
            deadline = time.monotonic() + 10
            while position.token == first_token and time.monotonic() < deadline:
                await task.deferLater(reactor, 0.01, lambda: None)
            self.assertNotEqual(position.token, first_token)  # the push was made
            await task.deferLater(reactor, 0.1, lambda: None)
        client.protocol.transport.resumeProducing()
        code, _ = await client.wait_closed()
        self.assertEqual(code, 1000)
        await client.wait_for(lambda: len(self.hs.websocket_connections) == 0)

    @ensure_deferred
    async def test_an_idle_socket_is_closed(self) -> None:
        await self.start_server(websocket={"idle_timeout_ms": 1000, "ping_interval_ms": 60_000})
        alice = await self.user("alice")
        client = await self.authed(alice)
        code, _ = await client.wait_closed(timeout=5)
        self.assertEqual(code, 4000)

    @ensure_deferred
    async def test_a_client_that_never_reads_stays_bounded_then_is_dropped(self) -> None:
        await self.start_server(websocket={"slow_reader_timeout_ms": 3000})
        alice, bob = await self.user("alice"), await self.user("bob")
        room_id = await self.room_with(alice, bob)
        raw = _RawWebSocket()
        port = int(self.base_url.rsplit(":", 1)[1])
        await protocol.ClientCreator(reactor, lambda: raw).connectTCP("127.0.0.1", port)
        self.addCleanup(lambda: raw.transport.abortConnection())  # type: ignore[union-attr]
        await raw.upgraded
        raw.send_json({"type": "auth", "access_token": alice.token})
        raw.send_json({"type": "subscribe"})
        await task.deferLater(reactor, 0.3, lambda: None)
        (session,) = self.hs.websocket_connections._open
        server_transport = session._connection.transport  # type: ignore[attr-defined]
        server_transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        raw.transport.pauseProducing()  # type: ignore[union-attr]  # never read again
        largest_buffer = 0
        body = "x" * 4000
        for n in range(60):
            await self.send(bob, room_id, {"msgtype": "m.text", "body": f"{n} {body}"})
            buffered = len(server_transport.dataBuffer) + server_transport._tempDataLen
            largest_buffer = max(largest_buffer, buffered)
            if session._closed:
                break
        # Pushes stopped when the socket's buffer filled: what waits for the client is the
        # transport's buffer limit plus at most one response, not 60 messages' worth.
        self.assertTrue(session._paused or session._closed)
        self.assertLess(largest_buffer, 64 * 1024 + 3 * 8 * 1024)
        # ... and then the client is disconnected.
        deadline = time.monotonic() + 10
        while server_transport.connected and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(server_transport.connected)
        self.assertEqual(len(self.hs.websocket_connections), 0)

    @ensure_deferred
    async def test_a_thousand_connect_disconnect_cycles_leave_nothing_behind(self) -> None:
        alice = await self.user("alice")

        async def cycle() -> None:
            client = await self.subscribed(alice)
            client.close()
            await client.wait_closed()

        for _ in range(50):
            await defer.gatherResults([defer.ensureDeferred(cycle()) for _ in range(20)])
        deadline = time.monotonic() + 5
        while self.hs.websocket_connections and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.hs.websocket_connections), 0)
        self.assertEqual(self.hs.websocket_connections.indexed_sizes(), (0, 0))
        self.assertEqual(self.hs.notifier._waiters, {})
        self.assertNotIn(alice.user_id, self.hs.presence._syncing)
        gc.collect()
        self.assertEqual([o for o in gc.get_objects() if isinstance(o, WebSocketSession)], [])
        metrics = (await self.request("GET", "/metrics", base_url=self.metrics_url)).body.decode()
        self.assertIn("heddle_websocket_connections 0.0", metrics)
        self.assertIn('heddle_websocket_frames_total{direction="in"}', metrics)
        self.assertIn("heddle_websocket_push_latency_seconds_count", metrics)
