"""What an initial /sync and a /messages page cost in database transactions, and that
reading many rooms together serves what each room alone would.

An initial sync reads what every room shares in one go (the children bundled under the
timeline events, for all rooms at once), and a page of history reads its events, the room's
gaps and the bundled children, nothing per event or per room: these tests count the
transactions so that a per-room or per-page read creeping back in fails here.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any
from urllib.parse import quote

import storage.stores.events
import storage.stores.rooms
from tests.harness import on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

# Transactions the server runs on timers or on presence, whichever request is being served
# meanwhile: not part of what a read costs.
BACKGROUND = frozenset({"rotate_push_actions", "get_presence", "store_presence_activity"})


def text(body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body}


def without_age(value: Any) -> Any:
    """`value` with every `unsigned.age` taken out (it moves between two requests)."""
    if isinstance(value, dict):
        return {k: without_age(v) for k, v in value.items() if k != "age"}
    if isinstance(value, list):
        return [without_age(v) for v in value]
    return value


class ReadCostCase(RoomTestCase):
    async def counted(self, method: str, path: str, token: str) -> tuple[Counter[str], Any]:
        """The response to one request, and the database transactions it ran, by name."""
        calls: list[str] = []
        original = self.hs.db.run_interaction

        async def counting(desc: str, *args: Any, **kwargs: Any) -> Any:
            if desc not in BACKGROUND:
                calls.append(desc)
            return await original(desc, *args, **kwargs)

        self.hs.db.run_interaction = counting  # type: ignore[method-assign]
        try:
            r = await self.request(method, path, token=token)
        finally:
            self.hs.db.run_interaction = original  # type: ignore[method-assign]
        self.assertEqual(r.code, 200, r)
        return Counter(calls), r.json

    async def sync(self, user: User, **params: str) -> Any:
        query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
        r = await self.request("GET", f"{API}/sync?{query}", token=user.token)
        self.assertEqual(r.code, 200, r)
        return r.json


@on_both_engines
class InitialSyncCost(ReadCostCase):
    async def setUp(self) -> None:
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.rooms: list[str] = []

    async def add_rooms(self, n: int) -> None:
        for i in range(n):
            room_id = await self.create_room(self.bob, preset="public_chat", name=f"room {i}")
            r = await self.join(self.alice, room_id)
            self.assertEqual(r.code, 200, r)
            for j in range(3):
                r = await self.send(self.bob, room_id, text(f"hello {j}"))
                self.assertEqual(r.code, 200, r)
            self.rooms.append(room_id)

    async def test_initial_sync_costs_the_same_in_few_and_many_rooms(self) -> None:
        costs = []
        for total in (2, 8):
            await self.add_rooms(total - len(self.rooms))
            cold, body = await self.counted("GET", f"{API}/sync", self.alice.token)
            self.assertEqual(set(body["rooms"]["join"]), set(self.rooms))
            # The children bundled under every room's timeline: one read for all rooms.
            self.assertEqual(
                sum(n for name, n in cold.items() if name.startswith("get_relation_children")),
                1, cold,
            )
            # The rooms' latest events too, and their state groups and redactions with them.
            self.assertEqual(cold["get_latest_events_in_rooms"], 1, cold)
            self.assertNotIn("get_room_events_between", cold)
            # And their heroes.
            self.assertEqual(cold["get_heroes_in_rooms"], 1, cold)
            self.assertNotIn("get_heroes", cold)
            warm, body = await self.counted("GET", f"{API}/sync", self.alice.token)
            self.assertEqual(set(body["rooms"]["join"]), set(self.rooms))
            costs.append(warm)
        # Once the rooms' timelines and state are in memory, nothing is read per room.
        self.assertEqual(costs[0], costs[1])
        self.assertLessEqual(sum(costs[1].values()), 5, costs[1])

    async def test_rooms_served_together_are_what_each_room_alone_gets(self) -> None:
        a = await self.create_room(self.bob, preset="public_chat", name="edits")
        b = await self.create_room(self.bob, preset="public_chat", name="threads")
        c = await self.create_room(self.bob, preset="public_chat", name="redactions")
        for room_id in (a, b, c):
            await self.join(self.alice, room_id)
        original = (await self.send(self.bob, a, text("typo"))).json["event_id"]
        await self.send(self.bob, a, {
            **text("* fixed"), "m.new_content": text("fixed"),
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        })
        await self.send(self.alice, a, {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": original, "key": "+1"},
        }, event_type="m.reaction")
        root = (await self.send(self.bob, b, text("root"))).json["event_id"]
        await self.send(self.alice, b, {
            **text("reply"), "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        })
        await self.send(self.bob, b, {
            **text("see"), "m.relates_to": {"rel_type": "m.reference", "event_id": root},
        })
        # An "edit" in another room names room a's event: it must not be bundled there.
        await self.send(self.bob, b, {
            **text("* hijack"), "m.new_content": text("hijack"),
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        })
        secret = (await self.send(self.bob, c, text("secret"))).json["event_id"]
        r = await self.request(
            "PUT", f"{API}/rooms/{q(c)}/redact/{q(secret)}/r1", {}, token=self.bob.token
        )
        self.assertEqual(r.code, 200, r)

        # Three rooms read two to a statement: both statements' rooms are served right.
        self.patch(storage.stores.events, "LATEST_EVENTS_ROOMS_PER_STATEMENT", 2)
        self.patch(storage.stores.rooms, "HEROES_ROOMS_PER_STATEMENT", 2)
        together = await self.sync(self.alice)
        served = {e["event_id"]: e for e in together["rooms"]["join"][a]["timeline"]["events"]}
        edit = served[original]["unsigned"]["m.relations"]["m.replace"]
        self.assertEqual(edit["content"]["m.new_content"]["body"], "fixed")
        thread_root = next(
            e for e in together["rooms"]["join"][b]["timeline"]["events"] if e["event_id"] == root
        )
        self.assertEqual(thread_root["unsigned"]["m.relations"]["m.thread"]["count"], 1)
        redacted = next(
            e for e in together["rooms"]["join"][c]["timeline"]["events"]
            if e["event_id"] == secret
        )
        self.assertEqual(redacted["content"], {})
        for room_id in (a, b, c):
            alone = await self.sync(
                self.alice, filter=json.dumps({"room": {"rooms": [room_id]}})
            )
            self.assertEqual(list(alone["rooms"]["join"]), [room_id])
            self.assertEqual(
                without_age(together["rooms"]["join"][room_id]),
                without_age(alone["rooms"]["join"][room_id]),
            )


@on_both_engines
class MessagesPageCost(ReadCostCase):
    async def test_a_page_of_history_costs_two_transactions(self) -> None:
        alice = await self.user("alice")
        room_id = await self.create_room(alice, preset="private_chat")
        sent = []
        for i in range(30):
            sent.append((await self.send(alice, room_id, text(f"event {i}"))).json["event_id"])
        path = f"{API}/rooms/{q(room_id)}/messages?dir=b&limit=10"
        _, first = await self.counted("GET", path, alice.token)
        self.assertEqual([e["event_id"] for e in first["chunk"]], sent[::-1][:10])
        costs, second = await self.counted("GET", f"{path}&from={first['end']}", alice.token)
        self.assertEqual([e["event_id"] for e in second["chunk"]], sent[::-1][10:20])
        # The page with the room's gaps in history, and the children bundled under it: the
        # reader's access comes from the room's member list in memory.
        self.assertEqual(
            costs, Counter({"paginate_room_events": 1, "get_relation_children_of_many": 1})
        )
        forwards, page = await self.counted(
            "GET",
            f"{API}/rooms/{q(room_id)}/messages?dir=f&limit=10&from={second['end']}",
            alice.token,
        )
        self.assertEqual([e["event_id"] for e in page["chunk"]], sent[10:20])
        self.assertEqual(
            forwards, Counter({"paginate_room_events": 1, "get_relation_children_of_many": 1})
        )


@on_both_engines
class SerializedOnce(ReadCostCase):
    """Events are serialized once and the result reused: what differs per request (`age`,
    the sender's `transaction_id`) and what changes later (a redaction, of the event or of
    the state it replaced) must still show."""

    async def messages(self, user: User, room_id: str) -> dict[str, Any]:
        r = await self.request(
            "GET", f"{API}/rooms/{q(room_id)}/messages?dir=b&limit=20", token=user.token
        )
        self.assertEqual(r.code, 200, r)
        return {e["event_id"]: e for e in r.json["chunk"]}

    async def test_reused_forms_stay_per_requester_and_follow_redactions(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room_id)
        message = (
            await self.send(alice, room_id, text("hello"), txn_id="mine")
        ).json["event_id"]
        first_topic = (await self.put_state(alice, room_id, "m.room.topic", {"topic": "one"}))
        second_topic = (await self.put_state(alice, room_id, "m.room.topic", {"topic": "two"}))
        topic_id = second_topic.json["event_id"]

        for _ in range(2):  # the second time from what the first one kept
            seen_by_alice = await self.messages(alice, room_id)
            seen_by_bob = await self.messages(bob, room_id)
            self.assertEqual(seen_by_alice[message]["unsigned"]["transaction_id"], "mine")
            self.assertNotIn("transaction_id", seen_by_bob[message]["unsigned"])
            self.assertIn("age", seen_by_bob[message]["unsigned"])
            self.assertEqual(seen_by_bob[message]["content"]["body"], "hello")
            self.assertEqual(seen_by_bob[topic_id]["unsigned"]["prev_content"], {"topic": "one"})

        for event_id in (message, first_topic.json["event_id"]):
            r = await self.request(
                "PUT", f"{API}/rooms/{q(room_id)}/redact/{q(event_id)}/r{event_id[1:6]}", {},
                token=alice.token,
            )
            self.assertEqual(r.code, 200, r)
        seen_by_bob = await self.messages(bob, room_id)
        self.assertEqual(seen_by_bob[message]["content"], {})
        self.assertIn("redacted_because", seen_by_bob[message]["unsigned"])
        self.assertEqual(seen_by_bob[topic_id]["unsigned"]["prev_content"], {})
        synced = await self.sync(bob)
        served = {e["event_id"]: e for e in synced["rooms"]["join"][room_id]["timeline"]["events"]}
        self.assertEqual(served[message]["content"], {})
