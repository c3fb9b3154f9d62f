"""Long-polling /sync with many listeners: what a parked long-poll costs, and that every
listener still gets every event once and in order. Over real HTTP on loopback."""

import json
from urllib.parse import quote

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

import homeserver.auth.tokens as auth_tokens
import homeserver.sync.encoding as sync_encoding
from client_api.http import Router, client_path
from tests.harness import HomeserverTestCase, on_both_engines

API = "/_matrix/client/v3"
# Room for every message of a burst in one response (the default limit of 10 would leave a
# gap, which is not what is tested here).
BIG_TIMELINE = quote(json.dumps({"room": {"timeline": {"limit": 100}}}))


async def until(condition, tries=250):
    for _ in range(tries):
        if condition():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition never held")


class FanOutHelpers(HomeserverTestCase):
    async def room_with(self, names):
        tokens = [(await self.register(name))["access_token"] for name in names]
        r = await self.request("POST", f"{API}/createRoom", {"preset": "public_chat"}, token=tokens[0])
        room = r.json["room_id"]
        for token in tokens[1:]:
            r = await self.request("POST", f"{API}/join/{room}", {}, token=token)
            self.assertEqual(r.code, 200, r)
        return room, tokens

    async def sync(self, token, since=None, timeout=0):
        path = f"{API}/sync?set_presence=offline&filter={BIG_TIMELINE}&timeout={timeout}"
        if since is not None:
            path += f"&since={since}"
        r = await self.request("GET", path, token=token)
        self.assertEqual(r.code, 200, r)
        return r.json

    def count_passes(self):
        passes = []
        original = self.hs.sync.sync

        async def counting(request):
            passes.append(request.user_id)
            return await original(request)

        self.hs.sync.sync = counting
        self.addCleanup(setattr, self.hs.sync, "sync", original)
        return passes


@on_both_engines
class ParkedLongPoll(FanOutHelpers):
    async def test_long_poll_with_the_current_token_waits_without_a_pass(self):
        room, (alice, bob) = await self.room_with(["alice", "bob"])
        since = (await self.sync(bob))["next_batch"]
        passes = self.count_passes()
        pending = defer.ensureDeferred(self.sync(bob, since, timeout=10000))
        await until(lambda: "@bob:test.heddle" in self.hs.notifier._waiters)
        # Nothing moved since the token: nothing to compute before waiting.
        self.assertEqual(passes, [])
        await self.request(
            "PUT", f"{API}/rooms/{room}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hi"},
            token=alice,
        )
        response = await pending
        events = response["rooms"]["join"][room]["timeline"]["events"]
        self.assertEqual([e["content"]["body"] for e in events], ["hi"])
        self.assertEqual(passes, ["@bob:test.heddle"])

    async def test_parked_long_poll_times_out_with_an_empty_response(self):
        room, (alice, bob) = await self.room_with(["alice", "bob"])
        since = (await self.sync(bob))["next_batch"]
        response = await self.sync(bob, since, timeout=300)
        self.assertEqual(response["next_batch"], since)
        self.assertEqual(response["rooms"]["join"], {})
        self.assertEqual(self.hs.notifier._waiters, {})

    async def test_unacknowledged_to_device_messages_are_still_deleted_by_a_long_poll(self):
        alice = await self.register("alice")
        bob = await self.register("bob")
        first = (await self.sync(bob["access_token"]))["next_batch"]
        r = await self.request(
            "PUT", f"{API}/sendToDevice/org.example.ping/t1",
            {"messages": {bob["user_id"]: {bob["device_id"]: {"n": 1}}}},
            token=alice["access_token"],
        )
        self.assertEqual(r.code, 200, r)
        delivered = await self.sync(bob["access_token"], first)
        self.assertEqual([m["content"] for m in delivered["to_device"]["events"]], [{"n": 1}])
        # Its `next_batch` is the current token, but the pass must run before waiting: it
        # acknowledges the message, which is then deleted.
        pending = defer.ensureDeferred(
            self.sync(bob["access_token"], delivered["next_batch"], timeout=10000)
        )
        await until(lambda: bob["user_id"] in self.hs.notifier._waiters)
        again = await self.sync(bob["access_token"], first)
        self.assertEqual(again["to_device"]["events"], [])
        self.assertFalse(pending.called)
        pending.cancel()
        pending.addErrback(lambda _: None)


@on_both_engines
class ManyListeners(FanOutHelpers):
    LISTENERS = 12
    SENDERS = 3
    EACH = 8

    async def test_every_listener_gets_every_message_once_in_order_under_concurrent_sends(self):
        names = [f"sender{i}" for i in range(self.SENDERS)] + [f"listener{i}" for i in range(self.LISTENERS)]
        room, tokens = await self.room_with(names)
        senders, listeners = tokens[: self.SENDERS], tokens[self.SENDERS :]
        received = {token: [] for token in listeners}
        responses = {token: 0 for token in listeners}
        sinces = {token: (await self.sync(token))["next_batch"] for token in listeners}
        total = self.SENDERS * self.EACH

        async def listen(token):
            since = sinces[token]
            while len(received[token]) < total:
                response = await self.sync(token, since, timeout=10000)
                responses[token] += 1
                since = response["next_batch"]
                timeline = response["rooms"]["join"].get(room, {}).get("timeline", {})
                self.assertFalse(timeline.get("limited"), timeline)
                received[token] += [
                    e["event_id"] for e in timeline.get("events", []) if e["type"] == "m.room.message"
                ]

        async def send(token, n):
            for i in range(self.EACH):
                r = await self.request(
                    "PUT", f"{API}/rooms/{room}/send/m.room.message/s{n}-{i}",
                    {"msgtype": "m.text", "body": f"{n}-{i}"}, token=token,
                )
                self.assertEqual(r.code, 200, r)

        listening = [defer.ensureDeferred(listen(token)) for token in listeners]
        await until(lambda: len(self.hs.notifier._waiters) == self.LISTENERS)
        await defer.gatherResults(
            [defer.ensureDeferred(send(token, n)) for n, token in enumerate(senders)]
        )
        await defer.gatherResults(listening)
        r = await self.request(
            "GET", f"{API}/rooms/{room}/messages?dir=b&limit=100", token=listeners[0]
        )
        order = [e["event_id"] for e in reversed(r.json["chunk"]) if e["type"] == "m.room.message"]
        self.assertEqual(len(order), total)
        for token in listeners:
            self.assertEqual(received[token], order)

    async def test_a_shared_room_section_is_encoded_once_for_the_listeners_it_wakes(self):
        names = ["speaker"] + [f"listener{i}" for i in range(self.LISTENERS)]
        room, tokens = await self.room_with(names)
        listeners = tokens[1:]
        sinces = [(await self.sync(token))["next_batch"] for token in listeners]
        encoded_shared = []
        original = sync_encoding.SharedPart.text

        def counting(part):
            if part._text is None:
                encoded_shared.append(part)
            return original(part)

        sync_encoding.SharedPart.text = counting
        self.addCleanup(setattr, sync_encoding.SharedPart, "text", original)
        polls = [
            defer.ensureDeferred(self.sync(token, since, timeout=10000))
            for token, since in zip(listeners, sinces, strict=True)
        ]
        await until(lambda: len(self.hs.notifier._waiters) == self.LISTENERS)
        await self.request(
            "PUT", f"{API}/rooms/{room}/send/m.room.message/t1", {"msgtype": "m.text", "body": "all"},
            token=tokens[0],
        )
        responses = await defer.gatherResults(polls)
        for response in responses:
            events = response["rooms"]["join"][room]["timeline"]["events"]
            self.assertEqual([e["content"]["body"] for e in events], ["all"])
        # Once per millisecond at most (the events' `age`), not once per listener.
        self.assertGreaterEqual(len(encoded_shared), 1)
        self.assertLess(len(encoded_shared), self.LISTENERS)


@on_both_engines
class RepeatedRequests(FanOutHelpers):
    async def test_a_token_signature_is_checked_once_and_revocation_still_applies(self):
        token = (await self.register("alice"))["access_token"]
        decoded = []
        original = auth_tokens.jwt.decode

        def counting(*args, **kwargs):
            decoded.append(args[0])
            return original(*args, **kwargs)

        auth_tokens.jwt.decode = counting
        self.addCleanup(setattr, auth_tokens.jwt, "decode", original)
        for _ in range(3):
            r = await self.request("GET", f"{API}/account/whoami", token=token)
            self.assertEqual(r.code, 200, r)
        self.assertEqual(decoded, [token])
        # A token altered after its signature: refused, whatever was remembered.
        tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        r = await self.request("GET", f"{API}/account/whoami", token=tampered)
        self.assertEqual((r.code, r.json["errcode"]), (401, "M_UNKNOWN_TOKEN"))
        r = await self.request("POST", f"{API}/logout", {}, token=token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/account/whoami", token=token)
        self.assertEqual((r.code, r.json["errcode"]), (401, "M_UNKNOWN_TOKEN"))


class CountingPattern:
    def __init__(self, path):
        self._pattern = client_path(path)
        self.tries = 0

    # What the router reads of a pattern besides matching with it (its literal text).
    @property
    def pattern(self):
        return self._pattern.pattern

    @property
    def flags(self):
        return self._pattern.flags

    def match(self, text):
        self.tries += 1
        return self._pattern.match(text)


class RouterMatches(unittest.TestCase):
    """The router alone, not over HTTP (its behaviour over HTTP is in test_http_core)."""

    def make_router(self):
        class Rooms:
            PATTERNS = [CountingPattern("/rooms/(?P<room_id>[^/]+)/state")]

            async def on_GET(self, request, room_id):
                return 200, {}

        class Sync:
            PATTERNS = [CountingPattern("/sync")]

            async def on_GET(self, request):
                return 200, {}

        router = Router()
        router.register_servlet(Rooms())
        router.register_servlet(Sync())
        return router, Rooms.PATTERNS[0], Sync.PATTERNS[0]

    def test_a_path_is_matched_against_the_routes_once(self):
        router, rooms, sync = self.make_router()
        route, args, _ = router.match("GET", "/_matrix/client/v3/sync")
        self.assertEqual((route.name, args), ("Sync", {}))
        # The first match tries the patterns (those its literal text does not rule out).
        first = (rooms.tries, sync.tries)
        self.assertEqual(sync.tries, 1)
        for _ in range(2):
            route, args, _ = router.match("GET", "/_matrix/client/v3/sync")
            self.assertEqual((route.name, args), ("Sync", {}))
        self.assertEqual((rooms.tries, sync.tries), first)

    def test_remembered_matches_are_the_callers_to_change(self):
        router, _, _ = self.make_router()
        _, args, allowed = router.match("PUT", "/_matrix/client/v3/rooms/%21a%3Ab/state")
        self.assertEqual((args, allowed), ({}, ["GET"]))
        _, args, _ = router.match("GET", "/_matrix/client/v3/rooms/%21a%3Ab/state")
        self.assertEqual(args, {"room_id": "!a:b"})
        args["room_id"] = "changed"
        allowed.append("POST")
        self.assertEqual(router.match("GET", "/_matrix/client/v3/rooms/%21a%3Ab/state")[1], {"room_id": "!a:b"})
        self.assertEqual(router.match("PUT", "/_matrix/client/v3/rooms/%21a%3Ab/state")[2], ["GET"])


@on_both_engines
class BatchOfSeveralRooms(FanOutHelpers):
    async def test_a_long_poll_woken_by_a_batch_gets_every_room_of_it(self):
        # Messages of two rooms written in one transaction: the listener woken by the first
        # must not be answered with a token past the second without the second's room.
        room_a, (alice, bob) = await self.room_with(["alice", "bob"])
        r = await self.request("POST", f"{API}/createRoom", {"preset": "public_chat"}, token=alice)
        room_b = r.json["room_id"]
        self.assertEqual((await self.request("POST", f"{API}/join/{room_b}", {}, token=bob)).code, 200)
        r = await self.request("POST", f"{API}/createRoom", {"preset": "public_chat"}, token=alice)
        room_c = r.json["room_id"]
        since = (await self.sync(bob))["next_batch"]
        since = (await self.sync(bob, since))["next_batch"]

        persister = self.hs.persister
        original = persister._write_batch
        gate: defer.Deferred[None] = defer.Deferred()
        batches: list[list[str]] = []

        async def gated(batch):
            if not batches:
                batches.append([item.event.room_id for item in batch])
                await gate  # the first batch (room C) waits until A's and B's are queued
            else:
                batches.append([item.event.room_id for item in batch])
            return await original(batch)

        persister._write_batch = gated
        self.addCleanup(setattr, persister, "_write_batch", original)

        got: list[str] = []

        async def listen(token):
            while len(got) < 2:
                body = await self.sync(bob, token, timeout=3000)
                if body["next_batch"] == token:
                    break
                token = body["next_batch"]
                for room in body["rooms"]["join"].values():
                    got.extend(e["content"]["body"] for e in room["timeline"]["events"]
                               if e["type"] == "m.room.message")

        listening = defer.ensureDeferred(listen(since))
        await until(lambda: "@bob:test.heddle" in self.hs.notifier._waiters)

        def send(room_id, body):
            return defer.ensureDeferred(self.request(
                "PUT", f"{API}/rooms/{room_id}/send/m.room.message/{body}",
                {"msgtype": "m.text", "body": body}, token=alice,
            ))

        sends = [send(room_c, "c")]
        await until(lambda: bool(batches))
        sends += [send(room_a, "a"), send(room_b, "b")]
        await until(lambda: persister.pending(room_a) and persister.pending(room_b))
        gate.callback(None)
        for r in await defer.gatherResults(sends):
            self.assertEqual(r.code, 200, r)
        await listening
        self.assertEqual(batches[1:2], [[room_a, room_b]])
        self.assertEqual(sorted(got), ["a", "b"])
