"""No message lost across a federation outage: one side is down while the other sends more
than a transaction's worth of messages (200, or 300 with a restart of the sender), comes
back, and every message reaches the other side's user the way a client reads a room —
incremental `/sync`, and `/messages` back from `prev_batch` whenever the timeline is
`limited`. Between two Heddles, and with Synapse on either side."""

from __future__ import annotations

import json
from typing import Any

from federation import event_handler
from tests.federation_helpers import API, FederationTestCase, FedUser, q
from tests.harness import ensure_deferred, on_both_engines
from tests.synapse_peer import SynapsePeer

SYNAPSE_PASSWORD = "synapse-outage-password"
# A sync filter as a client might use: a short timeline, so a backlog arrives `limited`.
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 20}}})
MESSAGES_FILTER = json.dumps({"types": ["m.room.message"]})


class RoomReader:
    """Reads one room as a client does: incremental syncs from a token; when a timeline is
    `limited`, `/messages` backwards from its `prev_batch` until it meets what was already
    seen. Collects message bodies (each must arrive once)."""

    def __init__(self, test: FederationTestCase, user: FedUser, room_id: str, since: str):
        self._test = test
        self.user = user
        self._room_id = room_id
        self._since = since
        self.seen_ids: set[str] = set()
        self.bodies: list[str] = []
        self.limited_syncs = 0

    async def sync_once(self) -> None:
        r = await self._test.user_call(
            self.user, "GET",
            f"{API}/sync?timeout=0&since={q(self._since)}&filter={q(SYNC_FILTER)}",
        )
        assert r.code == 200, r
        self._since = r.json["next_batch"]
        timeline = r.json.get("rooms", {}).get("join", {}).get(self._room_id, {}).get("timeline")
        if not timeline:
            return
        events = timeline.get("events", [])
        if timeline.get("limited"):
            self.limited_syncs += 1
            await self._paginate_back(timeline["prev_batch"])
        self._take(events)

    async def _paginate_back(self, token: str) -> None:
        """Fill the gap before a limited timeline, back to the first event already seen."""
        while True:
            r = await self._test.user_call(
                self.user, "GET",
                f"{API}/rooms/{q(self._room_id)}/messages?dir=b&limit=50&from={q(token)}"
                f"&filter={q(MESSAGES_FILTER)}",
            )
            assert r.code == 200, r
            chunk = r.json.get("chunk", [])
            fresh = [e for e in chunk if e["event_id"] not in self.seen_ids]
            self._take(fresh)
            if len(fresh) < len(chunk) or not chunk or "end" not in r.json:
                return
            token = r.json["end"]

    def _take(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event.get("type") != "m.room.message" or event["event_id"] in self.seen_ids:
                continue
            self.seen_ids.add(event["event_id"])
            self.bodies.append(event["content"]["body"])

    async def has_all(self, expected: set[str]) -> bool:
        await self.sync_once()
        return expected <= set(self.bodies)


class OutageMixin(FederationTestCase):
    timeout = 400

    async def since_token(self, user: FedUser) -> str:
        r = await self.user_call(user, "GET", f"{API}/sync?timeout=0")
        assert r.code == 200, r
        return str(r.json["next_batch"])

    async def send_many(self, user: FedUser, room_id: str, count: int, prefix: str) -> set[str]:
        bodies = {f"{prefix} {i}" for i in range(count)}
        for i in range(count):
            await self.send_text(user, room_id, f"{prefix} {i}", f"{q(prefix)}-{i}")
        return bodies

    def assert_received_once(self, reader: RoomReader, expected: set[str]) -> None:
        got = [b for b in reader.bodies if b in expected]
        self.assertEqual(len(got), len(set(got)), "a message arrived twice")
        self.assertEqual(set(got), expected)


@on_both_engines
class HeddleOutage(OutageMixin):
    @ensure_deferred
    async def test_receiver_down_while_200_messages_are_sent(self) -> None:
        a, b, alice, bob = await self.two_peers()
        room_id = await self.joined_public_room(a, alice, bob)
        reader = RoomReader(self, bob, room_id, await self.since_token(bob))
        await self.stop_peer(b)
        sent = await self.send_many(alice, room_id, 200, "while B was down")
        b = await self.restart_peer(b)
        bob.server = b
        await self.wait_for(lambda: reader.has_all(sent), timeout=120, what="200 messages on B")
        self.assert_received_once(reader, sent)
        # Nothing is left queued on A once B has everything.
        self.assertFalse(a.hs.federation_sender.is_backing_off(b.server_name))

    @ensure_deferred
    async def test_sender_restarted_with_300_messages_queued(self) -> None:
        a, b, alice, bob = await self.two_peers()
        room_id = await self.joined_public_room(a, alice, bob)
        reader = RoomReader(self, bob, room_id, await self.since_token(bob))
        await self.stop_peer(b)
        sent = await self.send_many(alice, room_id, 300, "queued on A")
        # A goes away with everything still queued; B comes back first, then A.
        await self.stop_peer(a)
        b = await self.restart_peer(b)
        bob.server = b
        a = await self.restart_peer(a)
        alice.server = a
        await self.wait_for(lambda: reader.has_all(sent), timeout=120, what="300 messages on B")
        self.assert_received_once(reader, sent)

    @ensure_deferred
    async def test_a_gap_left_after_catch_up_is_limited_and_backfilled(self) -> None:
        """When the sender skips to its newest event and more is missing than B fetches at
        once, B's user gets a `limited` timeline (however short) and `/messages` back from
        its `prev_batch` backfills the rest of the gap."""
        # B fetches at most 5 missing events: 94 of the 100 stay a gap.
        self.patch(event_handler, "MISSING_EVENTS_LIMIT", 5)
        self.patch(event_handler, "MISSING_EVENTS_MAX", 5)
        a, b, alice, bob = await self.two_peers()
        room_id = await self.joined_public_room(a, alice, bob)
        reader = RoomReader(self, bob, room_id, await self.since_token(bob))
        # Bob has read what came before, more than a page of it: paging back, he stops when
        # he meets it again, so the gap must be filled where it is, not once history runs out.
        seen = await self.send_many(alice, room_id, 60, "seen")
        await self.wait_for(lambda: reader.has_all(seen), what="60 messages on B")
        await self.stop_peer(b)
        sent = await self.send_many(alice, room_id, 100, "in the gap")
        # A sender that catches up with only its newest event in the room (as Synapse does).
        await a.hs.db.run_interaction(
            "keep_only_newest",
            lambda txn: txn.execute(
                "DELETE FROM federation_outbound_pdus WHERE destination = ? AND stream_ordering"
                " < (SELECT MAX(stream_ordering) FROM federation_outbound_pdus"
                " WHERE destination = ?)",
                (b.server_name, b.server_name),
            ),
        )
        b = await self.restart_peer(b)
        bob.server = b
        await self.wait_for(lambda: reader.has_all(sent), timeout=120, what="100 messages on B")
        self.assert_received_once(reader, sent)
        self.assertGreaterEqual(reader.limited_syncs, 1)
        # Nothing is missing any more: later syncs are not limited for it.
        before = reader.limited_syncs
        await self.send_text(alice, room_id, "after the gap", "after-gap")
        await self.wait_for(lambda: reader.has_all({"after the gap"}), what="a new message")
        self.assertEqual(reader.limited_syncs, before)


@on_both_engines
class SynapseOutage(OutageMixin):
    async def synapse_call(
        self, peer: SynapsePeer, user: dict[str, Any], method: str, path: str, body: Any = None
    ) -> Any:
        return await peer.request(method, path, body, token=user["access_token"])

    async def synapse_bodies(self, peer: SynapsePeer, user: dict[str, Any], room_id: str
                             ) -> set[str]:
        """Every message body Synapse's user can page back to (Synapse backfills gaps)."""
        bodies: set[str] = set()
        token = ""
        for _ in range(20):
            r = await self.synapse_call(
                peer, user, "GET",
                f"{API}/rooms/{q(room_id)}/messages?dir=b&limit=100"
                + (f"&from={q(token)}" if token else ""),
            )
            if r.code != 200:
                return set()
            chunk = r.json.get("chunk", [])
            bodies |= {e["content"].get("body") for e in chunk if e["type"] == "m.room.message"}
            if not chunk or "end" not in r.json:
                break
            token = r.json["end"]
        return bodies

    @ensure_deferred
    async def test_synapse_down_while_heddle_sends_200(self) -> None:
        heddle, peer, alice, bob = await self.heddle_and_synapse(SYNAPSE_PASSWORD)
        r = await self.user_call(alice, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        room_id = r.json["room_id"]
        r = await self.synapse_call(
            peer, bob, "POST", f"{API}/join/{q(room_id)}?server_name={q(heddle.server_name)}", {}
        )
        self.assertEqual(r.code, 200, r)
        await self.wait_for(
            lambda: self._is(self.membership(alice, room_id, bob["user_id"]), "join"),
            timeout=60, what="bob's join on Heddle",
        )
        await peer.stop()
        sent = await self.send_many(alice, room_id, 200, "while Synapse was down")
        await peer.restart()

        async def all_on_synapse() -> bool:
            return sent <= await self.synapse_bodies(peer, bob, room_id)

        await self.wait_for(all_on_synapse, timeout=180, what="200 messages on Synapse")

    @ensure_deferred
    async def test_heddle_down_while_synapse_sends_200_and_restarts(self) -> None:
        heddle, peer, alice, bob = await self.heddle_and_synapse(SYNAPSE_PASSWORD)
        r = await self.synapse_call(peer, bob, "POST", f"{API}/createRoom", {"preset": "public_chat"})
        self.assertEqual(r.code, 200, r)
        room_id = r.json["room_id"]
        r = await self.user_call(
            alice, "POST", f"{API}/join/{q(room_id)}?via={q(peer.server_name)}", {}
        )
        self.assertEqual(r.code, 200, r)
        reader = RoomReader(self, alice, room_id, await self.since_token(alice))
        # Synapse catches a server up only from the last event it delivered there: without
        # one, it never sends the backlog at all. So one message arrives first.
        r = await self.synapse_call(
            peer, bob, "PUT", f"{API}/rooms/{q(room_id)}/send/m.room.message/before",
            {"msgtype": "m.text", "body": "before the outage"},
        )
        self.assertEqual(r.code, 200, r)
        await self.wait_for(lambda: reader.has_all({"before the outage"}), timeout=60,
                            what="a first message on Heddle")
        await self.stop_peer(heddle)
        sent = {f"while Heddle was down {i}" for i in range(200)}
        for i in range(200):
            r = await self.synapse_call(
                peer, bob, "PUT", f"{API}/rooms/{q(room_id)}/send/m.room.message/down{i}",
                {"msgtype": "m.text", "body": f"while Heddle was down {i}"},
            )
            self.assertEqual(r.code, 200, r)
        # Synapse restarts with the 200 still unsent: it forgets its in-memory queue and
        # catches up by sending only its newest event in the room (as it also does after an
        # outage of over an hour). Heddle fetches the other 199 with get_missing_events.
        await peer.restart()
        heddle = await self.restart_peer(heddle)
        alice.server = heddle
        await self.wait_for(lambda: reader.has_all(sent), timeout=180,
                            what="200 messages on Heddle")
        self.assert_received_once(reader, sent)
