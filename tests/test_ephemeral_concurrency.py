"""High-frequency writes under concurrency, in a room shared with another server: typing,
receipts, read markers, presence and send-to-device, each hammered over real HTTP with many
requests in flight. None may fail because two writes conflicted in the database (no 5xx),
and once the requests are done both servers agree on the final state.

Spec: client-server API "Typing Notifications", "Receipts", "Read and unread markers",
"Presence", "Send-to-Device messaging"; server-server API "Typing Notifications",
"Receipts", "Presence", "Send-to-device messaging".
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer

from tests.federation_helpers import API, FederationTestCase, FedUser, Server, q
from tests.harness import Response, on_both_engines

IN_FLIGHT = 16
# Enough requests that, before the fix, conflicting writes on PostgreSQL exhausted the
# retries of some of them; few enough to keep each test well under 20 s.
REQUESTS = 400
# Messages the receipt and read marker tests point at.
EVENTS = 64


async def hammer(
    calls: list[Callable[[], Awaitable[Response]]], in_flight: int = IN_FLIGHT
) -> list[Response]:
    """Run every call, at most `in_flight` at a time; their responses, in order."""
    semaphore = defer.DeferredSemaphore(in_flight)
    return list(
        await defer.gatherResults(
            [semaphore.run(lambda call=call: defer.ensureDeferred(call())) for call in calls],
            consumeErrors=True,
        )
    )


@on_both_engines
class EphemeralWritesUnderConcurrency(FederationTestCase):
    timeout = 60

    def record_edus(self, server: Server, destination: Server, edu_type: str) -> list[Any]:
        """The content of every `edu_type` EDU `server` queues for `destination` from now on,
        in the order it queues them: the last one is what `destination` ends up with."""
        sent: list[Any] = []
        sender = server.hs.federation_sender
        queue = sender.send_edu

        async def recording(name: str, kind: str, content: Any, dedupe_key: Any = None) -> None:
            if name == destination.server_name and kind == edu_type:
                sent.append(content)
            await queue(name, kind, content, dedupe_key)

        sender.send_edu = recording  # type: ignore[method-assign]
        return sent

    def assert_no_server_errors(self, responses: list[Response]) -> None:
        failed = [r for r in responses if r.code >= 500]
        self.assertEqual(failed, [], f"{len(failed)} of {len(responses)} requests failed")
        self.assertEqual({r.code for r in responses}, {200})

    async def messages_on_both(self, alice: FedUser, b: Server, room_id: str, n: int) -> list[str]:
        """`n` messages from alice, in order, once B holds them all (receipts for events a
        server does not have are ignored)."""
        event_ids = [await self.send_text(alice, room_id, f"m{i}", f"m{i}") for i in range(n)]

        async def all_on_b() -> bool:
            return all([await b.hs.event_store.get_event(e) is not None for e in event_ids])

        await self.wait_for(all_on_b, what="the messages on B")
        return event_ids

    async def test_typing(self) -> None:
        a, b, alice, bob, room_id = await self.shared_room()
        rng = random.Random(1)
        path = f"{API}/rooms/{q(room_id)}/typing/{q(alice.user_id)}"
        sent = self.record_edus(a, b, "m.typing")
        bodies = [
            {"typing": True, "timeout": 30000} if rng.random() < 0.5 else {"typing": False}
            for _ in range(REQUESTS)
        ]
        responses = await hammer(
            [lambda body=body: self.user_call(alice, "PUT", path, body) for body in bodies]
        )
        self.assert_no_server_errors(responses)

        # Whatever was applied last on A is what B ends up with: the EDUs went out in the
        # order the changes were made.
        final = a.hs.typing.get_typing_users(room_id)
        self.assertIn(final, ([], [alice.user_id]))
        self.assertEqual(len(sent), REQUESTS)
        self.assertEqual(sent[-1]["typing"], final == [alice.user_id])

        async def b_agrees() -> bool:
            return b.hs.typing.get_typing_users(room_id) == final

        await self.wait_for(b_agrees, timeout=10, what=f"B to see typing {final}")

    async def test_receipts(self) -> None:
        a, b, alice, bob, room_id = await self.shared_room()
        event_ids = await self.messages_on_both(alice, b, room_id, EVENTS)
        sent = self.record_edus(a, b, "m.receipt")
        # Forwards, as a client reading along sends them, so that many of them move the
        # receipt.
        targets = [event_id for event_id in event_ids for _ in range(REQUESTS // EVENTS)]
        responses = await hammer(
            [
                lambda event_id=event_id: self.user_call(
                    alice, "POST", f"{API}/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", {}
                )
                for event_id in targets
            ]
        )
        self.assert_no_server_errors(responses)
        await self.assert_last_receipt_everywhere(a, b, alice, room_id, event_ids, sent)

    async def test_read_markers(self) -> None:
        a, b, alice, bob, room_id = await self.shared_room()
        event_ids = await self.messages_on_both(alice, b, room_id, EVENTS)
        sent = self.record_edus(a, b, "m.receipt")
        targets = [event_id for event_id in event_ids for _ in range(REQUESTS // EVENTS)]
        responses = await hammer(
            [
                lambda event_id=event_id: self.user_call(
                    alice, "POST", f"{API}/rooms/{q(room_id)}/read_markers",
                    {"m.fully_read": event_id, "m.read": event_id},
                )
                for event_id in targets
            ]
        )
        self.assert_no_server_errors(responses)

        # The fully read marker may move backwards (the last request applied wins, and
        # requests overtake each other); the read receipt only moves forwards.
        fully_read = await a.hs.account_data.get(alice.user_id, room_id, "m.fully_read")
        assert fully_read is not None
        self.assertIn(fully_read["event_id"], event_ids[-IN_FLIGHT:])
        await self.assert_last_receipt_everywhere(a, b, alice, room_id, event_ids, sent)

    async def test_presence(self) -> None:
        a, b, alice, bob, room_id = await self.shared_room()
        rng = random.Random(5)
        status_path = f"{API}/presence/{q(alice.user_id)}/status"
        sent = self.record_edus(a, b, "m.presence")
        calls: list[Callable[[], Awaitable[Response]]] = []
        for i in range(REQUESTS):
            kind = rng.random()
            if kind < 0.6:
                body = {"presence": rng.choice(["online", "unavailable"]), "status_msg": f"s{i}"}
                calls.append(lambda body=body: self.user_call(alice, "PUT", status_path, body))
            else:
                # Syncing is activity too: it brings alice online, or marks her unavailable.
                set_presence = rng.choice(["online", "unavailable"])
                calls.append(
                    lambda p=set_presence: self.user_call(
                        alice, "GET", f"{API}/sync?timeout=0&set_presence={p}"
                    )
                )
        responses = await hammer(calls)
        self.assert_no_server_errors(responses)

        # B holds what A holds: the notable changes went out in the order they were made.
        final = await a.hs.presence.get_state(alice.user_id)
        self.assertIn(final.state, ("online", "unavailable"))
        [last] = sent[-1]["push"]
        self.assertEqual(
            (last["presence"], last.get("status_msg")), (final.state, final.status_msg)
        )

        async def b_agrees() -> bool:
            seen = await b.hs.presence.get_state(alice.user_id)
            return (seen.state, seen.status_msg) == (final.state, final.status_msg)

        await self.wait_for(
            b_agrees, timeout=10, what=f"B to see {final.state} {final.status_msg!r}"
        )

    async def test_send_to_device(self) -> None:
        a, b, alice, bob, room_id = await self.shared_room()
        bob_device = await self.device_of(bob)
        _, alice_phone_device = await self.second_device(alice)

        def send(n: int) -> Callable[[], Awaitable[Response]]:
            body = {
                "messages": {
                    bob.user_id: {bob_device: {"n": n}},
                    alice.user_id: {alice_phone_device: {"n": n}},
                }
            }
            return lambda: self.user_call(alice, "PUT", f"{API}/sendToDevice/m.test/t{n}", body)

        responses = await hammer([send(n) for n in range(REQUESTS)])
        self.assert_no_server_errors(responses)

        # Every message is delivered once: to alice's other device here, to bob's on B.
        inbox = a.hs.device_inbox_store
        self.assertEqual(
            await inbox.count_messages(alice.user_id, alice_phone_device), REQUESTS
        )

        async def all_on_b() -> bool:
            count = await b.hs.device_inbox_store.count_messages(bob.user_id, bob_device)
            self.assertLessEqual(count, REQUESTS)
            return count == REQUESTS

        await self.wait_for(all_on_b, timeout=15, what="every message on B")

    async def assert_last_receipt_everywhere(
        self,
        a: Server,
        b: Server,
        alice: FedUser,
        room_id: str,
        event_ids: list[str],
        sent: list[Any],
    ) -> None:
        """Alice's receipt points at the newest event on A, in the last receipt EDU A queued
        for B (each one further on than the one before), and on B."""
        receipt = await a.hs.receipt_store.get_receipt(room_id, "m.read", alice.user_id)
        assert receipt is not None
        self.assertEqual(receipt.event_id, event_ids[-1])
        positions = [
            event_ids.index(content[room_id]["m.read"][alice.user_id]["event_ids"][0])
            for content in sent
        ]
        self.assertEqual(positions, sorted(set(positions)))
        self.assertEqual(positions[-1], len(event_ids) - 1)
        await self.wait_for(
            lambda: self._receipt_on(b, room_id, alice.user_id, event_ids[-1]),
            timeout=10,
            what="alice's last receipt on B",
        )

    async def _receipt_on(self, server: Server, room_id: str, user_id: str, event_id: str) -> Any:
        receipt = await server.hs.receipt_store.get_receipt(room_id, "m.read", user_id)
        return receipt is not None and receipt.event_id == event_id
