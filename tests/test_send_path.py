"""The send path under load: concurrent sends in one room are written together (group
commit) yet each is acknowledged once, in order, on a linear DAG; a retried transaction
gets its one event; an event that cannot be stored fails alone; and what one send costs
the database is counted."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet import defer, reactor, task

from homeserver.app import HomeServer
from homeserver.auth import tokens as tokens_module
from storage.database import Transaction
from tests.harness import on_both_engines
from tests.room_helpers import RoomTestCase

# What sending one message in a quiet room costs: the transaction-ID lookup (a retry gets
# the earlier event), then the write. The room's forward extremities, current state group
# and state come from memory.
ONE_SEND_TRANSACTIONS = ["get_event_for_txn", "persist_event"]
# The write's statements for a message with push actions, search text and a client
# transaction: events, edges, auth edges, transaction ID, the held-prevs lookup, backward
# extremities, the redactions lookup, search, three push tables, forward extremities (2).
# (Before group commit and the cached room state group: 14, in five transactions.)
ONE_SEND_WRITE_STATEMENTS = 13


@contextmanager
def statements_recorded(hs: HomeServer) -> Iterator[list[tuple[str, int]]]:
    """(name, statements sent) of each transaction `hs` commits meanwhile, in order."""
    calls: list[tuple[str, int]] = []
    original = hs.db.run_interaction

    async def counting(desc: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        def counted(txn: Transaction, *a: Any, **kw: Any) -> Any:
            result = func(txn, *a, **kw)
            calls.append((desc, txn.statements))
            return result

        return await original(desc, counted, *args, **kwargs)

    hs.db.run_interaction = counting  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        hs.db.run_interaction = original  # type: ignore[method-assign]


@on_both_engines
class SendPathTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.users = [await self.user(f"sender{i}") for i in range(5)]
        self.room_id = await self.create_room(self.users[0], preset="public_chat")
        for user in self.users[1:]:
            r = await self.join(user, self.room_id)
            self.assertEqual(r.code, 200, r)

    async def send_all(self, bodies: dict[int, list[str]]) -> dict[str, list[Any]]:
        """Each sender (index) sends its bodies one after another, all senders at once; the
        responses by body."""
        responses: dict[str, list[Any]] = {}

        async def run(index: int) -> None:
            for body in bodies[index]:
                r = await self.send(self.users[index], self.room_id,
                                    {"msgtype": "m.text", "body": body})
                responses.setdefault(body, []).append(r)

        await defer.gatherResults(
            [defer.ensureDeferred(run(i)) for i in bodies], consumeErrors=True
        )
        return responses

    async def timeline_after(self, event_id: str) -> list[Any]:
        events = await self.room_events(self.room_id)
        ids = [e.event_id for e in events]
        return events[ids.index(event_id) + 1:]

    def assert_linear(self, events: list[Any], first_prev: str) -> None:
        """Each event cites exactly the one before it (in stream order)."""
        prev = first_prev
        for event in events:
            self.assertEqual(event.prev_event_ids, [prev], event.content)
            prev = event.event_id

    async def test_concurrent_sends_are_stored_once_each_in_order_on_a_linear_dag(self):
        start = (await self.room_events(self.room_id))[-1].event_id
        bodies = {i: [f"{i}-{n}" for n in range(8)] for i in range(len(self.users))}
        with statements_recorded(self.hs) as calls:
            responses = await self.send_all(bodies)
        for body, rs in responses.items():
            self.assertEqual([r.code for r in rs], [200], body)
        events = await self.timeline_after(start)
        self.assertEqual(len(events), 40)
        # Each acknowledged ID is one stored event, and each body is stored once.
        self.assertEqual(
            {e.event_id for e in events}, {rs[0].json["event_id"] for rs in responses.values()}
        )
        self.assertEqual(sorted(e.content["body"] for e in events), sorted(responses))
        # Each sender's messages come in the order it sent them.
        for i, sent in bodies.items():
            stored = [e.content["body"] for e in events if e.sender == self.users[i].user_id]
            self.assertEqual(stored, sent)
        self.assert_linear(events, start)
        self.assertEqual(
            [eid for eid, _ in await self.hs.event_store.get_forward_extremities(self.room_id)],
            [events[-1].event_id],
        )
        # Sends that queued up behind a write were written together.
        writes = [n for desc, n in calls if desc == "persist_event"]
        self.assertLess(len(writes), 40, writes)

    async def test_cached_dag_tip_matches_the_tables(self):
        bodies = {i: [f"{i}-{n}" for n in range(4)] for i in range(len(self.users))}
        await self.send_all(bodies)
        cached = await self.hs.event_store.get_forward_extremities(self.room_id)
        cached_group = await self.hs.event_store.get_current_state_group(self.room_id)

        def tables(txn: Transaction) -> tuple[list[tuple[str, int]], int]:
            rows = txn.select_all(
                "SELECT f.event_id, e.topological_ordering FROM event_forward_extremities f"
                " JOIN events e USING (event_id) WHERE f.room_id = ?", (self.room_id,),
            )
            group = txn.select_one(
                "SELECT current_state_group FROM rooms WHERE room_id = ?", (self.room_id,)
            )
            assert group is not None
            return [(r[0], r[1]) for r in rows], group[0]

        extremities, group = await self.hs.db.run_interaction("test_tables", tables)
        self.assertEqual(cached, extremities)
        self.assertEqual(cached_group, group)
        # ... and are read from memory.
        with statements_recorded(self.hs) as calls:
            await self.hs.event_store.get_forward_extremities(self.room_id)
            await self.hs.event_store.get_current_state_group(self.room_id)
        self.assertEqual(calls, [])

    async def test_same_transaction_sent_concurrently_makes_one_event(self):
        start = (await self.room_events(self.room_id))[-1].event_id
        user = self.users[1]
        content = {"msgtype": "m.text", "body": "once"}
        # Other senders keep the room busy, so the retries meet the first one in flight.
        others = defer.ensureDeferred(
            self.send_all({i: [f"{i}-{n}" for n in range(5)] for i in (2, 3, 4)})
        )
        store = self.hs.event_store
        original = store.get_event_for_txn
        lookups: list[str] = []

        async def counting(user_id: str, device_id: str, txn_id: str) -> Any:
            lookups.append(txn_id)
            return await original(user_id, device_id, txn_id)

        store.get_event_for_txn = counting  # type: ignore[method-assign]
        self.addCleanup(setattr, store, "get_event_for_txn", original)
        responses = await defer.gatherResults([
            defer.ensureDeferred(self.send(user, self.room_id, content, txn_id="same"))
            for _ in range(6)
        ])
        await others
        # The transaction is looked up once per request (before the room's lock; under it,
        # what this process stored or has in flight is known without asking).
        self.assertEqual(len([t for t in lookups if t.endswith("/same")]), 6)
        self.assertEqual([r.code for r in responses], [200] * 6)
        self.assertEqual(len({r.json["event_id"] for r in responses}), 1)
        events = await self.timeline_after(start)
        self.assertEqual([e.content["body"] for e in events].count("once"), 1)
        self.assert_linear(events, start)

    async def test_an_event_that_cannot_be_stored_fails_alone(self):
        start = (await self.room_events(self.room_id))[-1].event_id
        persister = self.hs.persister
        original_txn, original_batch = persister._persist_batch_txn, persister._write_batch
        batches: list[list[str]] = []
        gate: defer.Deferred[None] = defer.Deferred()

        def failing(txn: Transaction, items: list[Any]) -> None:
            bodies = [item.event.content.get("body") for item in items]
            batches.append(bodies)
            original_txn(txn, items)  # written, then rolled back
            if "poison" in bodies:
                raise RuntimeError("this event cannot be stored")

        entered: list[Any] = []

        async def gated(batch: list[Any]) -> None:
            # The first write waits, so the next events queue up behind it.
            entered.append(batch)
            await gate
            await original_batch(batch)

        persister._persist_batch_txn = failing  # type: ignore[method-assign]
        persister._write_batch = gated  # type: ignore[method-assign]
        self.addCleanup(setattr, persister, "_persist_batch_txn", original_txn)
        self.addCleanup(setattr, persister, "_write_batch", original_batch)

        async def queued(count: int) -> None:
            while not entered or len(persister._queue) < count:
                await task.deferLater(reactor, 0.01)

        def send(index: int, body: str) -> defer.Deferred[Any]:
            return defer.ensureDeferred(
                self.send(self.users[index], self.room_id, {"msgtype": "m.text", "body": body})
            )

        # "a1" is written first; "a2", "poison" and "b3", "b4" (built on it) queue behind.
        sends = {"a1": send(1, "a1")}
        await queued(0)
        sends["a2"] = send(2, "a2")
        await queued(1)
        sends["poison"] = send(0, "poison")
        await queued(2)
        sends["b3"] = send(3, "b3")
        await queued(3)
        sends["b4"] = send(4, "b4")
        await queued(4)
        gate.callback(None)
        responses = {body: await d for body, d in sends.items()}
        self.assertEqual(batches[:2], [["a1"], ["a2", "poison", "b3", "b4"]])
        self.assertEqual(responses.pop("poison").code, 500)
        for body, r in responses.items():
            self.assertEqual(r.code, 200, (body, r))
        events = await self.timeline_after(start)
        self.assertEqual([e.content["body"] for e in events], ["a1", "a2", "b3", "b4"])
        self.assertEqual(
            [e.event_id for e in events], [r.json["event_id"] for r in responses.values()]
        )
        # No stored event cites the one that failed: those built on it were built again.
        self.assert_linear(events, start)

    async def test_state_change_amid_concurrent_sends_applies_to_later_ones(self):
        start = (await self.room_events(self.room_id))[-1].event_id
        owner, banned = self.users[0], self.users[4]
        with statements_recorded(self.hs) as calls:
            sends = defer.ensureDeferred(
                self.send_all({i: [f"{i}-{n}" for n in range(6)] for i in (1, 2, 3)})
            )
            r = await self.membership_action(
                owner, self.room_id, "ban", {"user_id": banned.user_id}
            )
            self.assertEqual(r.code, 200, r)
            r = await self.send(banned, self.room_id)
            self.assertEqual((r.code, r.json["errcode"]), (403, "M_FORBIDDEN"))
            await sends
        # The messages were written in fewer transactions than there are messages.
        self.assertLess([desc for desc, _ in calls].count("persist_event"), 19)
        events = await self.timeline_after(start)
        self.assert_linear(events, start)
        self.assertEqual(len(events), 19)
        self.assertEqual(
            (await self.current_state(self.room_id))[("m.room.member", banned.user_id)]
            .content["membership"],
            "ban",
        )

    async def test_one_send_costs_two_transactions(self):
        await self.send(self.users[1], self.room_id)  # warm the caches (and presence)
        decoded = []
        original_decode = tokens_module.jwt.decode

        def decode(*args: Any, **kwargs: Any) -> Any:
            decoded.append(args[0])
            return original_decode(*args, **kwargs)

        self.patch(tokens_module.jwt, "decode", decode)
        with statements_recorded(self.hs) as calls:
            r = await self.send(self.users[1], self.room_id)
        self.assertEqual(r.code, 200, r)
        # The access token's signature was verified by an earlier request.
        self.assertEqual(decoded, [])
        self.assertEqual([desc for desc, _ in calls], ONE_SEND_TRANSACTIONS)
        # The write's statements, BEGIN aside (PostgreSQL's driver sends its own).
        write = dict(calls)["persist_event"]
        begin = 1 if self.engine == "sqlite" else 0
        self.assertEqual(write - begin, ONE_SEND_WRITE_STATEMENTS)

    async def test_a_state_event_waits_for_the_message_in_flight(self):
        # A state event's ID can leave the process before it is stored (a tombstone named
        # by the upgraded room, an invite countersigned elsewhere): it is built only on
        # what is stored, never on a message still being written that may fail.
        persister = self.hs.persister
        original = persister._write_batch
        gate: defer.Deferred[None] = defer.Deferred()
        writing: list[list[str]] = []

        async def gated(batch: Any) -> None:
            writing.append([item.event.type for item in batch])
            if len(writing) == 1:
                await gate
            await original(batch)

        persister._write_batch = gated  # type: ignore[method-assign]
        self.addCleanup(setattr, persister, "_write_batch", original)
        message = defer.ensureDeferred(
            self.send(self.users[1], self.room_id, {"msgtype": "m.text", "body": "in flight"})
        )
        for _ in range(100):
            if writing:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        topic = defer.ensureDeferred(self.request(
            "PUT", f"/_matrix/client/v3/rooms/{self.room_id}/state/m.room.topic",
            {"topic": "after"}, token=self.users[0].token,
        ))
        await task.deferLater(reactor, 0.2, lambda: None)
        # The topic is not built, let alone queued, while the message is being written.
        self.assertEqual(persister.pending(self.room_id), 1)
        self.assertEqual(writing, [["m.room.message"]])
        gate.callback(None)
        message_id = (await message).json["event_id"]
        r = await topic
        self.assertEqual(r.code, 200, r)
        stored = await self.hs.event_store.get_stored_event(r.json["event_id"])
        assert stored is not None
        self.assertEqual(stored.event.prev_event_ids, [message_id])
