"""GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event and the federation
GET /timestamp_to_event/{roomId} (spec v1.6): the event closest to a time, over real HTTP on
both engines; and between two Heddles, the fallback to another server when the local answer
sits next to a gap in the history this server holds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task

from federation.errors import HttpResponseError
from tests.federation_helpers import FederationTestCase, FedUser
from tests.harness import HomeserverTestCase, ensure_deferred, on_both_engines
from tests.room_helpers import q

API = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"
FED_PATH = "/_matrix/federation/v1/timestamp_to_event/%s"


async def tick() -> None:
    """Let the clock move on, so consecutive events have distinct timestamps."""
    await task.deferLater(reactor, 0.01, lambda: None)


@on_both_engines
class TimestampToEvent(HomeserverTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]
        r = await self.request("POST", f"{API}/createRoom", {}, token=self.alice)
        self.room_id = r.json["room_id"]

    async def send(self, body: str) -> tuple[str, int]:
        await tick()
        r = await self.request(
            "PUT",
            f"{API}/rooms/{q(self.room_id)}/send/m.room.message/{body}",
            {"msgtype": "m.text", "body": body},
            token=self.alice,
        )
        event_id = r.json["event_id"]
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room_id)}/event/{q(event_id)}", token=self.alice
        )
        return event_id, r.json["origin_server_ts"]

    async def lookup(
        self, ts: Any, direction: Any, token: str | None = None, room_id: str | None = None
    ):
        path = f"{V1}/rooms/{q(room_id or self.room_id)}/timestamp_to_event"
        params = [f"{k}={v}" for k, v in (("ts", ts), ("dir", direction)) if v is not None]
        return await self.request(
            "GET", path + ("?" + "&".join(params) if params else ""), token=token or self.alice
        )

    async def test_closest_in_each_direction(self):
        first, first_ts = await self.send("one")
        second, second_ts = await self.send("two")
        self.assertLess(first_ts, second_ts)
        r = await self.lookup(first_ts + 1, "f")
        self.assertEqual(
            (r.code, r.json), (200, {"event_id": second, "origin_server_ts": second_ts})
        )
        r = await self.lookup(second_ts - 1, "b")
        self.assertEqual((r.code, r.json), (200, {"event_id": first, "origin_server_ts": first_ts}))
        # The time itself counts.
        r = await self.lookup(first_ts, "f")
        self.assertEqual(r.json["event_id"], first)

    async def test_nothing_in_range_is_404(self):
        _, last_ts = await self.send("last")
        r = await self.lookup(last_ts + 60_000, "f")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.lookup(0, "b")
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_bad_parameters(self):
        for ts, direction, errcode in (
            (None, "f", "M_MISSING_PARAM"),
            (1, None, "M_MISSING_PARAM"),
            ("soon", "f", "M_INVALID_PARAM"),
            (-5, "f", "M_INVALID_PARAM"),
            (1, "forwards", "M_INVALID_PARAM"),
        ):
            r = await self.lookup(ts, direction)
            self.assertError(r, 400, errcode)

    async def test_not_allowed_to_see_the_room(self):
        _, ts = await self.send("private")
        r = await self.lookup(ts, "b", token=self.bob)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.lookup(ts, "b", room_id="!unknown:test.heddle")
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("GET", f"{V1}/rooms/{q(self.room_id)}/timestamp_to_event?ts=1&dir=f")
        self.assertError(r, 401, "M_MISSING_TOKEN")


@on_both_engines
class TimestampToEventAcrossServers(FederationTestCase):
    async def event_ts(self, user: FedUser, room_id: str, event_id: str) -> int:
        r = await self.user_call(user, "GET", f"{API}/rooms/{q(room_id)}/event/{q(event_id)}")
        assert r.code == 200, r
        return int(r.json["origin_server_ts"])

    async def lookup(self, user: FedUser, room_id: str, ts: int, direction: str):
        return await self.user_call(
            user, "GET", f"{V1}/rooms/{q(room_id)}/timestamp_to_event?ts={ts}&dir={direction}"
        )

    @ensure_deferred
    async def test_gap_before_the_join_is_filled_from_the_other_server(self):
        a, b, alice, bob = await self.two_peers()
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        room_id = r.json["room_id"]
        r = await self.user_call(
            alice,
            "PUT",
            f"{API}/rooms/{q(room_id)}/state/m.room.history_visibility",
            {"history_visibility": "shared"},
        )
        sent = []
        for i in range(3):
            await tick()
            event_id = await self.send_text(alice, room_id, f"old {i}", f"o{i}")
            sent.append((event_id, await self.event_ts(alice, room_id, event_id)))
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(a.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        target_id, target_ts = sent[1]
        # B holds nothing of that history: its closest event going forwards is after a gap.
        self.assertIsNone(await b.hs.event_store.get_stored_event(target_id))
        r = await self.lookup(bob, room_id, sent[0][1] + 1, "f")
        self.assertEqual(
            (r.code, r.json), (200, {"event_id": target_id, "origin_server_ts": target_ts})
        )
        # The event is now history on B, and /context can start from it.
        stored = await b.hs.event_store.get_stored_event(target_id)
        self.assertFalse(stored is None or stored.outlier)
        r = await self.user_call(
            bob, "GET", f"{API}/rooms/{q(room_id)}/context/{q(target_id)}?limit=2"
        )
        self.assertEqual((r.code, r.json["event"]["event_id"]), (200, target_id))
        # Nothing anywhere before the room was made.
        r = await self.lookup(bob, room_id, 0, "b")
        self.assertError(r, 404, "M_NOT_FOUND")

    @ensure_deferred
    async def test_federation_endpoint_answers_only_servers_in_the_room(self):
        a, b, alice, bob = await self.two_peers()
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "private_chat"})
        room_id = r.json["room_id"]
        event_id = await self.send_text(alice, room_id, "hello", "t1")
        ts = await self.event_ts(alice, room_id, event_id)
        client = b.hs.federation_client
        path = FED_PATH % q(room_id)
        with self.assertRaises(HttpResponseError) as cm:
            await client.get_json(a.server_name, path, {"ts": [str(ts)], "dir": ["b"]})
        self.assertEqual((cm.exception.code, cm.exception.errcode), (403, "M_FORBIDDEN"))
        # Once bob is in, B may ask.
        r = await self.user_call(
            alice, "POST", f"{API}/rooms/{q(room_id)}/invite", {"user_id": bob.user_id}
        )
        self.assertEqual(r.code, 200, r)
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}?via={q(a.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        body = await client.get_json(a.server_name, path, {"ts": [str(ts)], "dir": ["b"]})
        self.assertEqual(body, {"event_id": event_id, "origin_server_ts": ts})
        with self.assertRaises(HttpResponseError) as cm:
            await client.get_json(a.server_name, path, {"ts": ["0"], "dir": ["b"]})
        self.assertEqual((cm.exception.code, cm.exception.errcode), (404, "M_NOT_FOUND"))
        with self.assertRaises(HttpResponseError) as cm:
            await client.get_json(a.server_name, path, {"ts": [str(ts)], "dir": ["sideways"]})
        self.assertEqual((cm.exception.code, cm.exception.errcode), (400, "M_INVALID_PARAM"))
