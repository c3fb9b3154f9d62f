"""Redactions apply only through the redaction rules, only in their own room."""

import json
import urllib.parse

from tests.harness import HomeserverTestCase, on_both_engines


@on_both_engines
class RedactionSafety(HomeserverTestCase):
    async def make_room(self, token, **body):
        r = await self.request("POST", "/_matrix/client/v3/createRoom", body, token=token)
        self.assertEqual(r.code, 200, r)
        return r.json["room_id"]

    async def send(self, token, room_id, body, txn):
        r = await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": body}, token=token,
        )
        self.assertEqual(r.code, 200, r)
        return r.json["event_id"]

    async def get_event(self, token, room_id, event_id):
        r = await self.request("GET", f"/_matrix/client/v3/rooms/{room_id}/event/{event_id}", token=token)
        self.assertEqual(r.code, 200, r)
        return r.json

    async def test_state_redaction_is_refused_and_cannot_reach_other_rooms(self):
        alice = (await self.register("alice"))["access_token"]
        mallory = (await self.register("mallory"))["access_token"]
        victim_room = await self.make_room(alice, preset="public_chat")
        secret = await self.send(alice, victim_room, "keep me", "t1")
        own_room = await self.make_room(mallory)
        r = await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{own_room}/state/m.room.redaction/x",
            {"redacts": secret}, token=mallory,
        )
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("POST", "/_matrix/client/v3/createRoom", {
            "initial_state": [{"type": "m.room.redaction", "state_key": "", "content": {"redacts": secret}}],
        }, token=mallory)
        self.assertEqual(r.code, 400, r)
        # A normal redaction sent into the attacker's own room naming the other room's event.
        r = await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{own_room}/send/m.room.redaction/y",
            {"redacts": secret}, token=mallory,
        )
        self.assertError(r, 404, "M_NOT_FOUND")
        event = await self.get_event(alice, victim_room, secret)
        self.assertEqual(event["content"]["body"], "keep me")

    async def test_a_redaction_from_another_room_does_not_hide_a_real_one(self):
        """Any server can store a redaction naming an event of a room it is not in (the
        server that sent it decides its content); it must never be the one that counts."""
        alice = (await self.register("alice"))["access_token"]
        mallory = (await self.register("mallory"))["access_token"]
        victim_room = await self.make_room(alice, preset="public_chat")
        secret = await self.send(alice, victim_room, "remove me", "t1")
        own_room = await self.make_room(mallory)
        # As it would arrive over federation: the servlet refuses it (see above), the
        # event pipeline stores it.
        await self.hs.event_creator.send(
            own_room, "@mallory:test.heddle", "m.room.redaction", {"redacts": secret}
        )
        self.assertEqual((await self.get_event(alice, victim_room, secret))["content"]["body"], "remove me")
        r = await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{victim_room}/redact/{secret}/r1", {}, token=alice
        )
        self.assertEqual(r.code, 200, r)
        event = await self.get_event(alice, victim_room, secret)
        self.assertEqual(event["content"], {})
        self.assertEqual(event["unsigned"]["redacted_because"]["event_id"], r.json["event_id"])
        # Also when nothing was cached: the table's answer.
        self.hs.event_store.clear_redactions_cache()
        event = await self.get_event(alice, victim_room, secret)
        self.assertEqual(event["content"], {})

    async def test_federation_event_format_does_not_leak_redacted_content(self):
        alice = (await self.register("alice"))["access_token"]
        room = await self.make_room(alice)
        secret = await self.send(alice, room, "oops, a password", "t1")
        r = await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{room}/redact/{secret}/r1", {}, token=alice
        )
        self.assertEqual(r.code, 200, r)
        flt = urllib.parse.quote(json.dumps({"event_format": "federation"}))
        r = await self.request("GET", f"/_matrix/client/v3/sync?filter={flt}", token=alice)
        self.assertEqual(r.code, 200, r)
        timeline = r.json["rooms"]["join"][room]["timeline"]["events"]
        self.assertNotIn("oops, a password", json.dumps(timeline))
        self.assertTrue(any("hashes" in e for e in timeline))  # really the federation form
