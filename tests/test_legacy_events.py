"""The deprecated event stream and room previews: GET /events (long-polling, and peeking into
a world-readable room with `room_id`), GET /events/{eventId} and
GET /rooms/{roomId}/initialSync.

Over real HTTP on loopback, on both database engines.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

from twisted.internet import defer, reactor, task

from tests.harness import on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

WORLD_READABLE = [
    {
        "type": "m.room.history_visibility",
        "state_key": "",
        "content": {"history_visibility": "world_readable"},
    }
]


def room_event_ids(chunk: list[dict]) -> list[str]:
    """The room events of an /events chunk (which has presence, receipts, ... too)."""
    return [e["event_id"] for e in chunk if "event_id" in e]


class EventsHelpers(RoomTestCase):
    async def events(self, user: User, **params: str):
        return await self.request("GET", f"{API}/events?{urlencode(params)}", token=user.token)

    async def now_token(self, user: User) -> str:
        r = await self.events(user, timeout="0")
        assert r.code == 200, r
        return r.json["end"]

    async def initial_sync(self, user: User, room_id: str, **params: str):
        path = f"{API}/rooms/{q(room_id)}/initialSync"
        if params:
            path += "?" + urlencode(params)
        return await self.request("GET", path, token=user.token)


@on_both_engines
class EventStreamTests(EventsHelpers):
    async def test_returns_events_after_the_token(self):
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        since = await self.now_token(alice)
        sent = (await self.send(alice, room_id, {"msgtype": "m.text", "body": "one"})).json
        r = await self.events(alice, **{"from": since, "timeout": "0"})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(room_event_ids(r.json["chunk"]), [sent["event_id"]])
        self.assertEqual(r.json["start"], since)
        # Carrying on from `end` finds nothing new.
        r = await self.events(alice, **{"from": r.json["end"], "timeout": "0"})
        self.assertEqual(r.json["chunk"], [])

    async def test_long_poll_wakes_on_a_new_event(self):
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        since = await self.now_token(alice)
        started = time.monotonic()
        pending = defer.ensureDeferred(self.events(alice, **{"from": since, "timeout": "20000"}))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        sent = (await self.send(alice, room_id)).json
        r = await pending
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(room_event_ids(r.json["chunk"]), [sent["event_id"]])

    async def test_times_out_with_nothing(self):
        alice = await self.user("alice")
        since = await self.now_token(alice)
        r = await self.events(alice, **{"from": since, "timeout": "100"})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["chunk"], [])
        self.assertEqual(r.json["end"], since)

    async def test_other_rooms_are_not_seen(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice)
        since = await self.now_token(bob)
        await self.send(alice, room_id)
        r = await self.events(bob, **{"from": since, "timeout": "0"})
        self.assertEqual(r.json["chunk"], [])

    async def test_bad_from_token(self):
        alice = await self.user("alice")
        for bad in ("nonsense", "t1-2", "s1_x", "s" + "9" * 30):
            r = await self.events(alice, **{"from": bad, "timeout": "0"})
            self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.events(alice, timeout="soon")
        self.assertEqual(r.code, 400, r)

    async def test_limit_caps_the_events_and_is_checked(self):
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        since = await self.now_token(alice)
        sent = [(await self.send(alice, room_id)).json["event_id"] for _ in range(3)]
        r = await self.events(alice, **{"from": since, "timeout": "0", "limit": "2"})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(room_event_ids(r.json["chunk"]), sent[:2])
        r = await self.events(alice, **{"from": r.json["end"], "timeout": "0", "limit": "2"})
        self.assertEqual(room_event_ids(r.json["chunk"]), sent[2:])
        for bad in ("hello", "-1"):
            r = await self.events(alice, **{"from": since, "timeout": "0", "limit": bad})
            self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_account_data_receipts_and_typing_come_as_events(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room_id)).code, 200)
        since = await self.now_token(alice)
        r = await self.request(
            "PUT", f"{API}/user/{q(alice.user_id)}/account_data/org.example.g", {"a": 1},
            token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "PUT", f"{API}/user/{q(alice.user_id)}/rooms/{q(room_id)}/tags/u.work",
            {"order": 0.5}, token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.events(alice, **{"from": since, "timeout": "0"})
        self.assertEqual(r.code, 200, r)
        self.assertIn({"type": "org.example.g", "content": {"a": 1}}, r.json["chunk"])
        self.assertIn(
            {"type": "m.tag", "content": {"tags": {"u.work": {"order": 0.5}}}, "room_id": room_id},
            r.json["chunk"],
        )
        since = r.json["end"]
        message = (await self.send(bob, room_id)).json["event_id"]
        r = await self.request(
            "POST", f"{API}/rooms/{q(room_id)}/receipt/m.read/{q(message)}", {}, token=bob.token
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "PUT", f"{API}/rooms/{q(room_id)}/typing/{q(bob.user_id)}",
            {"typing": True, "timeout": 30000}, token=bob.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.events(alice, **{"from": since, "timeout": "0"})
        by_type = {e["type"]: e for e in r.json["chunk"]}
        self.assertEqual(by_type["m.room.message"]["event_id"], message)
        self.assertEqual(by_type["m.receipt"]["room_id"], room_id)
        self.assertIn(bob.user_id, by_type["m.receipt"]["content"][message]["m.read"])
        self.assertEqual(
            by_type["m.typing"], {"type": "m.typing", "room_id": room_id, "content": {"user_ids": [bob.user_id]}}
        )

    async def test_long_poll_wakes_on_account_data(self):
        alice = await self.user("alice")
        since = await self.now_token(alice)
        poll = defer.ensureDeferred(self.events(alice, **{"from": since, "timeout": "10000"}))
        await task.deferLater(reactor, 0.2, lambda: None)
        r = await self.request(
            "PUT", f"{API}/user/{q(alice.user_id)}/account_data/org.example.g", {"a": 2},
            token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await poll
        self.assertEqual(r.json["chunk"], [{"type": "org.example.g", "content": {"a": 2}}])


@on_both_engines
class PeekTests(EventsHelpers):
    async def test_peek_into_world_readable_room(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat", initial_state=WORLD_READABLE)
        since = await self.now_token(bob)
        pending = defer.ensureDeferred(
            self.events(bob, **{"from": since, "timeout": "20000", "room_id": room_id})
        )
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        sent = (await self.send(alice, room_id)).json
        r = await pending
        self.assertEqual(r.code, 200, r)
        self.assertEqual(room_event_ids(r.json["chunk"]), [sent["event_id"]])
        # Peeking joined nobody.
        self.assertIsNone(await self.membership_of(room_id, bob))
        self.assertEqual(self.hs.notifier._peekers, {})

    async def test_peeker_sees_the_rooms_receipts_typing_and_members_presence(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat", initial_state=WORLD_READABLE)
        message = (await self.send(alice, room_id)).json["event_id"]
        since = (await self.events(bob, timeout="0", room_id=room_id)).json["end"]
        r = await self.request(
            "POST", f"{API}/rooms/{q(room_id)}/receipt/m.read/{q(message)}", {}, token=alice.token
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "PUT", f"{API}/rooms/{q(room_id)}/typing/{q(alice.user_id)}",
            {"typing": True, "timeout": 30000}, token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "PUT", f"{API}/presence/{q(alice.user_id)}/status",
            {"presence": "online", "status_msg": "peek at me"}, token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.events(bob, **{"from": since, "timeout": "0", "room_id": room_id})
        self.assertEqual(r.code, 200, r)
        by_type = {e["type"]: e for e in r.json["chunk"]}
        self.assertIn(alice.user_id, by_type["m.receipt"]["content"][message]["m.read"])
        self.assertEqual(by_type["m.receipt"]["room_id"], room_id)
        self.assertEqual(by_type["m.typing"]["content"], {"user_ids": [alice.user_id]})
        self.assertEqual(by_type["m.presence"]["content"]["user_id"], alice.user_id)
        self.assertEqual(by_type["m.presence"]["content"]["status_msg"], "peek at me")

    async def test_peek_into_private_room_is_forbidden(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        r = await self.events(bob, timeout="0", room_id=room_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.events(bob, timeout="0", room_id="!unknown:test.heddle")
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.events(bob, timeout="0", room_id="not-a-room")
        self.assertEqual(r.code, 400, r)

    async def test_member_may_name_its_room(self):
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        other = await self.create_room(alice)
        since = await self.now_token(alice)
        sent = (await self.send(alice, room_id)).json
        await self.send(alice, other)
        r = await self.events(alice, **{"from": since, "timeout": "0", "room_id": room_id})
        self.assertEqual(room_event_ids(r.json["chunk"]), [sent["event_id"]])


@on_both_engines
class GuestEventsTests(EventsHelpers):
    config_overrides = {"registration": {"allow_guest_access": True}}

    async def test_guests_may_peek_but_not_stream_everything(self):
        alice = await self.user("alice")
        room_id = await self.create_room(alice, preset="public_chat", initial_state=WORLD_READABLE)
        r = await self.request("POST", f"{API}/register?kind=guest", {})
        self.assertEqual(r.code, 200, r)
        guest = User(r.json["user_id"], r.json["access_token"], r.json["device_id"])
        r = await self.events(guest, timeout="0")
        self.assertError(r, 403, "M_GUEST_ACCESS_FORBIDDEN")
        sent = (await self.send(alice, room_id)).json
        r = await self.events(guest, timeout="0", room_id=room_id)
        self.assertEqual(r.code, 200, r)
        r = await self.events(guest, **{"from": "s0", "timeout": "0", "room_id": room_id})
        self.assertEqual(r.code, 200, r)
        self.assertIn(sent["event_id"], room_event_ids(r.json["chunk"]))


@on_both_engines
class EventByIdTests(EventsHelpers):
    async def test_member_reads_event_stranger_does_not(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice)
        sent = (await self.send(alice, room_id)).json
        r = await self.request("GET", f"{API}/events/{q(sent['event_id'])}", token=alice.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["event_id"], sent["event_id"])
        self.assertEqual(r.json["room_id"], room_id)
        r = await self.request("GET", f"{API}/events/{q(sent['event_id'])}", token=bob.token)
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.request("GET", f"{API}/events/{q('$nope')}", token=alice.token)
        self.assertError(r, 404, "M_NOT_FOUND")


@on_both_engines
class RoomInitialSyncTests(EventsHelpers):
    async def test_member_snapshot(self):
        alice = await self.user("alice")
        room_id = await self.create_room(alice, preset="public_chat", name="Lobby")
        sent = [
            (await self.send(alice, room_id, {"msgtype": "m.text", "body": str(i)})).json
            for i in range(3)
        ]
        await self.request(
            "PUT",
            f"{API}/user/{q(alice.user_id)}/rooms/{q(room_id)}/tags/u.work",
            {"order": 0.5},
            token=alice.token,
        )
        r = await self.initial_sync(alice, room_id, limit="2")
        self.assertEqual(r.code, 200, r)
        body = r.json
        self.assertEqual(body["room_id"], room_id)
        self.assertEqual(body["membership"], "join")
        self.assertEqual(
            [e["event_id"] for e in body["messages"]["chunk"]],
            [s["event_id"] for s in sent[1:]],
        )
        types = {(e["type"], e["state_key"]) for e in body["state"]}
        self.assertIn(("m.room.name", ""), types)
        self.assertIn(("m.room.member", alice.user_id), types)
        self.assertEqual(body["visibility"], "private")
        self.assertEqual(
            body["account_data"],
            [{"type": "m.tag", "content": {"tags": {"u.work": {"order": 0.5}}}}],
        )
        self.assertIsInstance(body["presence"], list)
        self.assertIsInstance(body["receipts"], list)
        # `start` pages further back through /messages; `end` streams on through /events.
        r = await self.request(
            "GET",
            f"{API}/rooms/{q(room_id)}/messages?dir=b&limit=1&from={q(body['messages']['start'])}",
            token=alice.token,
        )
        self.assertEqual(r.json["chunk"][0]["event_id"], sent[0]["event_id"])
        later = (await self.send(alice, room_id)).json
        r = await self.events(alice, **{"from": body["messages"]["end"], "timeout": "0"})
        self.assertEqual(room_event_ids(r.json["chunk"]), [later["event_id"]])

    async def test_peek_into_world_readable_room(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat", initial_state=WORLD_READABLE)
        sent = (await self.send(alice, room_id)).json
        r = await self.initial_sync(bob, room_id)
        self.assertEqual(r.code, 200, r)
        self.assertNotIn("membership", r.json)
        self.assertEqual(r.json["messages"]["chunk"][-1]["event_id"], sent["event_id"])

    async def test_stranger_to_private_room_is_forbidden(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        r = await self.initial_sync(bob, room_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.initial_sync(bob, "!unknown:test.heddle")
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_departed_member_sees_the_room_as_they_left_it(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room_id)
        before = (await self.send(alice, room_id)).json
        await self.membership_action(bob, room_id, "leave")
        await self.send(alice, room_id)
        await self.put_state(alice, room_id, "m.room.topic", {"topic": "after"})
        r = await self.initial_sync(bob, room_id)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["membership"], "leave")
        chunk = r.json["messages"]["chunk"]
        self.assertEqual(chunk[-1]["type"], "m.room.member")
        self.assertEqual(chunk[-2]["event_id"], before["event_id"])
        self.assertNotIn(
            ("m.room.topic", ""), {(e["type"], e["state_key"]) for e in r.json["state"]}
        )

    async def test_start_is_given_at_the_start_of_the_history(self):
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        r = await self.initial_sync(alice, room_id, limit="50")
        self.assertEqual(r.code, 200, r)
        messages = r.json["messages"]
        self.assertEqual(messages["chunk"][0]["type"], "m.room.create")
        # Nothing is before the creation: paging back from `start` finds nothing more.
        r = await self.request(
            "GET",
            f"{API}/rooms/{q(room_id)}/messages?dir=b&from={q(messages['start'])}",
            token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["chunk"], [])


@on_both_engines
class GlobalInitialSyncTests(EventsHelpers):
    async def global_initial_sync(self, user: User, **params: str):
        path = f"{API}/initialSync"
        if params:
            path += "?" + urlencode(params)
        return await self.request("GET", path, token=user.token)

    async def test_every_room_with_messages_state_and_account_data(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        joined = await self.create_room(alice, preset="public_chat", name="Lobby")
        sent = [(await self.send(alice, joined, {"msgtype": "m.text", "body": str(i)})).json for i in range(3)]
        invited_to = await self.create_room(bob)
        r = await self.membership_action(bob, invited_to, "invite", {"user_id": alice.user_id})
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "PUT", f"{API}/user/{q(alice.user_id)}/rooms/{q(joined)}/tags/u.work",
            {"order": 0.5}, token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "PUT", f"{API}/user/{q(alice.user_id)}/account_data/org.example.g", {"a": 1},
            token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "POST", f"{API}/rooms/{q(joined)}/receipt/m.read/{q(sent[2]['event_id'])}", {},
            token=alice.token,
        )
        self.assertEqual(r.code, 200, r)

        r = await self.global_initial_sync(alice, limit="2")
        self.assertEqual(r.code, 200, r)
        body = r.json
        rooms = {room["room_id"]: room for room in body["rooms"]}
        self.assertEqual(set(rooms), {joined, invited_to})
        room = rooms[joined]
        self.assertEqual(room["membership"], "join")
        self.assertEqual(
            [e["event_id"] for e in room["messages"]["chunk"]], [s["event_id"] for s in sent[1:]]
        )
        self.assertIn("start", room["messages"])
        self.assertIn(("m.room.name", ""), {(e["type"], e["state_key"]) for e in room["state"]})
        self.assertIn({"type": "m.tag", "content": {"tags": {"u.work": {"order": 0.5}}}}, room["account_data"])
        invite = rooms[invited_to]
        self.assertEqual(invite["membership"], "invite")
        self.assertEqual(invite["inviter"], bob.user_id)
        self.assertEqual(invite["invite"]["content"]["membership"], "invite")
        self.assertIn({"type": "org.example.g", "content": {"a": 1}}, body["account_data"])
        receipt = next(e for e in body["receipts"] if e["room_id"] == joined)
        self.assertEqual(receipt["type"], "m.receipt")
        self.assertIn(alice.user_id, receipt["content"][sent[2]["event_id"]]["m.read"])
        self.assertIsInstance(body["presence"], list)
        # `end` streams on through /events.
        later = (await self.send(alice, joined)).json
        r = await self.events(alice, **{"from": body["end"], "timeout": "0"})
        self.assertEqual(room_event_ids(r.json["chunk"]), [later["event_id"]])

    async def test_left_rooms_only_when_archived(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room_id)
        before = (await self.send(alice, room_id)).json
        await self.membership_action(bob, room_id, "leave")
        await self.send(alice, room_id)
        r = await self.global_initial_sync(bob)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["rooms"], [])
        r = await self.global_initial_sync(bob, archived="true")
        self.assertEqual(r.code, 200, r)
        (room,) = r.json["rooms"]
        self.assertEqual(room["membership"], "leave")
        # The room as it was when Bob left.
        self.assertEqual(room["messages"]["chunk"][-2]["event_id"], before["event_id"])
        r = await self.global_initial_sync(bob, archived="maybe")
        self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_presence_names_its_user_in_the_content(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room_id)).code, 200)
        for user in (alice, bob):
            r = await self.request(
                "PUT", f"{API}/presence/{q(user.user_id)}/status", {"presence": "online"},
                token=user.token,
            )
            self.assertEqual(r.code, 200, r)
        r = await self.global_initial_sync(alice)
        self.assertEqual(r.code, 200, r)
        by_user = {e["content"].get("user_id"): e for e in r.json["presence"]}
        self.assertEqual(by_user[alice.user_id]["sender"], alice.user_id)
        self.assertEqual(by_user[bob.user_id]["content"]["presence"], "online")
        r = await self.initial_sync(bob, room_id)
        self.assertIn(alice.user_id, {e["content"].get("user_id") for e in r.json["presence"]})

    async def test_own_presence_even_offline(self):
        carol = await self.user("carol")
        r = await self.global_initial_sync(carol)
        self.assertEqual(r.code, 200, r)
        (own,) = [e for e in r.json["presence"] if e["sender"] == carol.user_id]
        self.assertEqual(own["content"]["user_id"], carol.user_id)
        self.assertIn("presence", own["content"])
