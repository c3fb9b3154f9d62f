"""The outbound federation queue: persisted per destination, sent in transactions of at most
50 PDUs and 100 EDUs, one in flight per destination, with backoff, the whole backlog sent
after an outage, and restarts."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY
from twisted.internet import defer, reactor, task

from federation import sender as sender_module
from federation.errors import HttpResponseError, RequestSendFailed
from federation.sender import SEND_PATH, FederationSender
from homeserver.clock import Clock
from homeserver.config import FederationConfig
from storage.stores.federation_queue import FederationQueueStore, RetryState
from tests.harness import SERVER_NAME, HomeserverTestCase, ensure_deferred, on_both_engines

MIN_MS = 1000
MAX_MS = 8000
REMOTE = "remote.example"
OTHER = "other.example"


class FakeClient:
    """Records every transaction; answers 200, or fails as told, or holds the answer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.mode = "ok"
        self.response: Any = {"pdus": {}}
        self.hold = False
        self.held: list[defer.Deferred[Any]] = []

    async def put_json(
        self, destination: str, path: str, data: dict[str, Any], *, timeout_ms: int | None = None
    ) -> Any:
        self.calls.append((destination, path, data))
        if self.hold:
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append(d)
            return await d
        if self.mode == "fail":
            raise RequestSendFailed(destination, "connection refused")
        if self.mode == "fatal":
            raise RequestSendFailed(destination, "blocked IP range", can_retry=False)
        if self.mode == "http":
            raise HttpResponseError(destination, 502, {"errcode": "M_UNKNOWN", "error": "down"})
        if self.mode == "refused":
            raise HttpResponseError(destination, 400, {"errcode": "M_BAD_JSON", "error": "no"})
        return self.response

    def sent_event_ids(self, destination: str = REMOTE) -> list[list[str]]:
        return [
            [p["event_id"] for p in data["pdus"]] for d, _, data in self.calls if d == destination
        ]


def event_id(n: int) -> str:
    return f"$event{n}"


async def load_pdus(event_ids: list[str]) -> list[dict[str, Any]]:
    # "$missing..." events are not in the database: skipped, as the real loader does.
    return [{"event_id": e, "type": "m.room.message"} for e in event_ids if "missing" not in e]


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not reached in time")
        await sleep(0.01)
        waited += 0.01


def queue_gauge(name: str, destination: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"destination": destination})


def backoff_gauge(destination: str) -> float | None:
    return REGISTRY.get_sample_value(
        "heddle_federation_destination_backoff_seconds", {"destination": destination}
    )


class FederationSenderTests(HomeserverTestCase):
    def setUp(self) -> defer.Deferred[Any]:
        d = super().setUp()

        def ready(result: Any) -> Any:
            self.store = FederationQueueStore(self.hs.db)
            # Timers run on a fake clock the tests advance; the database on the real reactor.
            self.fake = task.Clock()
            self.fake.advance(1_700_000_000)
            self.client = FakeClient()
            self.senders: list[FederationSender] = []
            self.sender = self.new_sender()
            return result

        return d.addCallback(ready)

    def new_sender(self, client: FakeClient | None = None, **config: Any) -> FederationSender:
        sender = FederationSender(
            self.fake,
            Clock(self.fake),
            SERVER_NAME,
            FederationConfig(retry_min_interval_ms=MIN_MS, retry_max_interval_ms=MAX_MS, **config),
            self.store,
            client or self.client,
            load_pdus,
            rng=random.Random(4),
        )
        self.senders.append(sender)
        self.addCleanup(sender.stop)
        return sender

    async def settle(self, *destinations: str, sender: FederationSender | None = None) -> None:
        """Wait until the sending loops of `destinations` have stopped."""
        sender = sender or self.sender
        names = destinations or (REMOTE,)
        await until(lambda: not any(sender.is_sending(d) for d in names))

    async def advance(self, ms: int) -> None:
        self.fake.advance(ms / 1000)
        await sleep(0)
        await self.settle()

    async def queue_lengths(self, destination: str = REMOTE) -> tuple[int, int]:
        lengths = await self.store.get_queue_lengths(destination)
        return lengths.pdus, lengths.edus

    async def send(self, n: int, room_id: str = "!room:test.heddle", *dests: str) -> None:
        await self.sender.send_pdu(event_id(n), room_id, n, dests or (REMOTE,))

    # ----- queueing and delivery -----------------------------------------------------------

    @ensure_deferred
    async def test_pdus_are_persisted_before_sending(self) -> None:
        self.client.mode = "fail"
        await self.send(1, "!room:test.heddle", REMOTE, OTHER)
        await self.settle(REMOTE, OTHER)
        # Both destinations were tried, failed, and still have the event queued.
        self.assertEqual(sorted(d for d, _, _ in self.client.calls), [OTHER, REMOTE])
        self.assertEqual(await self.queue_lengths(REMOTE), (1, 0))
        self.assertEqual(await self.queue_lengths(OTHER), (1, 0))

    @ensure_deferred
    async def test_a_healthy_destination_is_recorded_once(self) -> None:
        """Every destination sent to has a row (the admin API lists them all), written as
        healthy the first time, not only once it fails."""
        self.assertIsNone(await self.store.get_retry_state(REMOTE))
        await self.send(1)
        await self.settle()
        self.assertEqual(await self.store.get_retry_state(REMOTE), RetryState(0, 0, None))

    @ensure_deferred
    async def test_own_server_is_never_queued(self) -> None:
        self.client.hold = True
        await self.send(1, "!room:test.heddle", SERVER_NAME, REMOTE)
        await self.sender.send_edu(SERVER_NAME, "m.typing", {"typing": True})
        await until(lambda: len(self.client.calls) == 1)
        self.assertEqual(self.client.calls[0][0], REMOTE)
        self.assertEqual(await self.queue_lengths(SERVER_NAME), (0, 0))
        pending = await self.store.get_destinations_with_pending()
        self.assertEqual(list(pending), [REMOTE])
        self.client.held[0].callback({})
        await self.settle()

    @ensure_deferred
    async def test_delivered_transaction_deletes_its_rows(self) -> None:
        await self.send(1)
        await self.sender.send_edu(REMOTE, "m.receipt", {"!room:test.heddle": {}})
        await until(lambda: len(self.client.calls) >= 1)
        await self.settle()
        self.assertEqual(await self.queue_lengths(), (0, 0))
        destination, path, body = self.client.calls[0]
        self.assertEqual(destination, REMOTE)
        self.assertTrue(path.startswith(SEND_PATH))
        self.assertEqual(body["origin"], SERVER_NAME)
        self.assertEqual(body["origin_server_ts"], int(self.fake.seconds() * 1000))
        all_pdus = [p["event_id"] for _, _, data in self.client.calls for p in data["pdus"]]
        all_edus = [e for _, _, data in self.client.calls for e in data["edus"]]
        self.assertEqual(all_pdus, [event_id(1)])
        self.assertEqual(
            all_edus, [{"edu_type": "m.receipt", "content": {"!room:test.heddle": {}}}]
        )
        self.assertFalse(self.sender.is_backing_off(REMOTE))

    @ensure_deferred
    async def test_transactions_carry_at_most_50_pdus_and_100_edus(self) -> None:
        await self.store.enqueue_pdus(
            (REMOTE, n, event_id(n), "!room:test.heddle") for n in range(1, 121)
        )
        for n in range(1, 251):
            await self.store.enqueue_edu(REMOTE, n, "m.direct_to_device", {"n": n})
        self.sender.on_queued([REMOTE])
        await until(lambda: len(self.client.calls) == 3)
        await self.settle()
        bodies = [data for _, _, data in self.client.calls]
        self.assertEqual([len(b["pdus"]) for b in bodies], [50, 50, 20])
        self.assertEqual([len(b["edus"]) for b in bodies], [100, 100, 50])
        sent = [p["event_id"] for b in bodies for p in b["pdus"]]
        self.assertEqual(sent, [event_id(n) for n in range(1, 121)])
        self.assertEqual(
            [e["content"]["n"] for b in bodies for e in b["edus"]], list(range(1, 251))
        )
        # Every transaction has its own ID.
        self.assertEqual(len({path for _, path, _ in self.client.calls}), 3)
        self.assertEqual(await self.queue_lengths(), (0, 0))

    @ensure_deferred
    async def test_missing_events_are_skipped_and_dequeued(self) -> None:
        await self.sender.send_pdu("$missing", "!room:test.heddle", 1, [REMOTE])
        await self.send(2)
        await self.settle()
        self.assertEqual([e for ids in self.client.sent_event_ids() for e in ids], [event_id(2)])
        self.assertEqual(await self.queue_lengths(), (0, 0))

    @ensure_deferred
    async def test_per_pdu_errors_in_a_200_are_not_resent(self) -> None:
        self.client.response = {"pdus": {event_id(1): {"error": "You are not in this room"}}}
        await self.send(1)
        await self.settle()
        await self.advance(MAX_MS * 2)
        self.assertEqual(self.client.sent_event_ids(), [[event_id(1)]])
        self.assertEqual(await self.queue_lengths(), (0, 0))
        self.assertFalse(self.sender.is_backing_off(REMOTE))

    @ensure_deferred
    async def test_one_transaction_in_flight_per_destination(self) -> None:
        self.client.hold = True
        await self.send(1)
        await until(lambda: len(self.client.calls) == 1)
        await self.send(2)
        await self.send(3)
        await self.sender.send_edu(REMOTE, "m.presence", {"push": []})
        await sleep(0.2)
        self.assertEqual(len(self.client.calls), 1)
        self.client.held[0].callback({})
        await until(lambda: len(self.client.calls) == 2)
        self.assertEqual(self.client.sent_event_ids()[1], [event_id(2), event_id(3)])
        self.assertEqual(len(self.client.calls[1][2]["edus"]), 1)
        self.client.held[1].callback({})
        await self.settle()
        self.assertEqual(len(self.client.calls), 2)
        self.assertEqual(await self.queue_lengths(), (0, 0))

    @ensure_deferred
    async def test_destinations_are_independent(self) -> None:
        self.client.hold = True
        await self.send(1, "!room:test.heddle", REMOTE, OTHER)
        await until(lambda: len(self.client.calls) == 2)
        self.assertEqual(sorted(d for d, _, _ in self.client.calls), [OTHER, REMOTE])
        for held in self.client.held:
            held.callback({})
        await self.settle(REMOTE, OTHER)

    @ensure_deferred
    async def test_nothing_is_queued_when_federation_is_disabled(self) -> None:
        sender = self.new_sender(enabled=False)
        await sender.send_pdu(event_id(1), "!room:test.heddle", 1, [REMOTE])
        await sender.send_edu(REMOTE, "m.typing", {"typing": True})
        self.assertEqual(await self.queue_lengths(), (0, 0))
        self.assertEqual(self.client.calls, [])

    # ----- EDUs ----------------------------------------------------------------------------

    @ensure_deferred
    async def test_edu_with_dedupe_key_replaces_the_queued_one(self) -> None:
        self.client.mode = "fail"
        await self.sender.send_edu(REMOTE, "m.typing", {"n": 1}, dedupe_key="typing:!a")
        await self.settle()
        await self.sender.send_edu(REMOTE, "m.direct_to_device", {"n": 2})
        await self.sender.send_edu(REMOTE, "m.typing", {"n": 3}, dedupe_key="typing:!a")
        await self.sender.send_edu(REMOTE, "m.typing", {"n": 4}, dedupe_key="typing:!b")
        await self.sender.send_edu(REMOTE, "m.typing", {"n": 5}, dedupe_key="typing:!a")
        # EDUs with a key are held in memory: only the to-device one is in the database.
        self.assertEqual(await self.queue_lengths(), (0, 1))
        self.client.mode = "ok"
        self.sender.wake_destination(REMOTE)
        await self.settle()
        self.assertEqual([e["content"]["n"] for e in self.client.calls[-1][2]["edus"]], [2, 4, 5])
        self.assertEqual(await self.queue_lengths(), (0, 0))

    @ensure_deferred
    async def test_edu_replaced_while_in_flight_is_still_sent(self) -> None:
        self.client.hold = True
        await self.sender.send_edu(REMOTE, "m.typing", {"n": 1}, dedupe_key="typing:!a")
        await until(lambda: len(self.client.calls) == 1)
        await self.sender.send_edu(REMOTE, "m.typing", {"n": 2}, dedupe_key="typing:!a")
        self.client.held[0].callback({})
        await until(lambda: len(self.client.calls) == 2)
        self.assertEqual(self.client.calls[1][2]["edus"][0]["content"], {"n": 2})
        self.client.held[1].callback({})
        await self.settle()
        self.assertEqual(await self.queue_lengths(), (0, 0))

    @ensure_deferred
    async def test_edu_ids_continue_after_restart(self) -> None:
        self.client.mode = "fail"
        await self.sender.send_edu(REMOTE, "m.direct_to_device", {"n": 1})
        await self.sender.send_edu(REMOTE, "m.direct_to_device", {"n": 2})
        await self.settle()
        self.sender.stop()
        self.assertEqual(await self.store.get_max_edu_id(), 2)
        sender = self.new_sender(client=FakeClient())
        await sender.start()
        await sender.send_edu(REMOTE, "m.direct_to_device", {"n": 3})
        self.assertEqual(await self.store.get_max_edu_id(), 3)

    @ensure_deferred
    async def test_edus_with_a_key_cost_no_write_and_survive_failures(self) -> None:
        self.client.mode = "fail"
        for n in range(50):
            await self.sender.send_edu(REMOTE, "m.typing", {"n": n}, dedupe_key="typing:!a")
        await self.settle()
        self.assertEqual(await self.store.get_max_edu_id(), 0)
        self.assertEqual(await self.queue_lengths(), (0, 0))
        self.assertEqual(
            REGISTRY.get_sample_value(
                "heddle_federation_queue_edus", {"destination": REMOTE}
            ),
            1,
        )
        # Still waiting after the failures; the latest goes out once the server is back.
        self.client.mode = "ok"
        self.sender.wake_destination(REMOTE)
        await until(lambda: len(self.client.calls) >= 2)
        await self.settle()
        self.assertEqual(self.client.calls[-1][2]["edus"], [
            {"edu_type": "m.typing", "content": {"n": 49}}
        ])
        # Sent: nothing is left to send.
        self.sender.wake_destination(REMOTE)
        await self.settle()
        self.assertEqual(len([c for c in self.client.calls if c[2]["edus"]]), 2)

    @ensure_deferred
    async def test_a_refused_transaction_drops_its_edus_with_a_key_too(self) -> None:
        self.client.mode = "refused"
        await self.sender.send_edu(REMOTE, "m.typing", {"n": 1}, dedupe_key="typing:!a")
        await self.settle()
        self.client.mode = "ok"
        self.sender.wake_destination(REMOTE)
        await self.settle()
        self.assertEqual(len(self.client.calls), 1)

    @ensure_deferred
    async def test_a_backlog_of_persisted_edus_leaves_room_for_held_ones(self) -> None:
        for n in range(1, 251):
            await self.store.enqueue_edu(REMOTE, n, "m.direct_to_device", {"n": n})
        self.client.hold = True
        self.sender.on_queued([REMOTE])
        await until(lambda: len(self.client.calls) == 1)
        for room in range(80):
            await self.sender.send_edu(
                REMOTE, "m.typing", {"room": room}, dedupe_key=f"typing:!{room}"
            )
        self.client.held[0].callback({})
        await until(lambda: len(self.client.calls) == 2)
        # The second transaction: half to-device messages, half typing, oldest first.
        edus = self.client.calls[1][2]["edus"]
        self.assertEqual([e["content"]["n"] for e in edus[:50]], list(range(101, 151)))
        self.assertEqual([e["content"]["room"] for e in edus[50:]], list(range(50)))
        self.client.hold = False
        self.client.held[1].callback({})
        await self.settle()
        sent = [e["content"] for _, _, data in self.client.calls for e in data["edus"]]
        self.assertEqual(sorted(c["n"] for c in sent if "n" in c), list(range(1, 251)))
        self.assertEqual(sorted(c["room"] for c in sent if "room" in c), list(range(80)))
        self.assertEqual(await self.queue_lengths(), (0, 0))

    @ensure_deferred
    async def test_idle_destinations_are_forgotten_beyond_the_bound(self) -> None:
        self.patch(sender_module, "MAX_DESTINATIONS_IN_MEMORY", 4)
        sender = self.new_sender()
        # One destination is down (backing off, its event still queued): never forgotten.
        self.client.mode = "fail"
        await sender.send_pdu(event_id(1), "!room:test.heddle", 1, ["down.example"])
        await self.settle("down.example", sender=sender)
        self.client.mode = "ok"
        healthy = [f"s{n}.example" for n in range(12)]
        for n, name in enumerate(healthy, start=2):
            await sender.send_pdu(event_id(n), "!room:test.heddle", n, [name])
            await self.settle(name, sender=sender)
        self.assertEqual(sorted(d for d, _, _ in self.client.calls[1:]), sorted(healthy))
        remembered = sender._destinations.keys()
        self.assertLessEqual(len(remembered), 4)
        self.assertIn("down.example", remembered)
        self.assertTrue(sender.is_backing_off("down.example"))
        # What was forgotten left the metrics too; what is remembered is still there.
        forgotten = [name for name in healthy if name not in remembered]
        self.assertTrue(forgotten)
        for name in forgotten:
            self.assertIsNone(queue_gauge("heddle_federation_queue_pdus", name))
        self.assertEqual(queue_gauge("heddle_federation_queue_pdus", "down.example"), 1)
        # A forgotten destination is read back when needed: its next event goes out.
        await sender.send_pdu(event_id(99), "!room:test.heddle", 99, [forgotten[0]])
        await self.settle(forgotten[0], sender=sender)
        self.assertEqual(self.client.calls[-1][0], forgotten[0])
        self.assertEqual(await self.queue_lengths(forgotten[0]), (0, 0))

    # ----- backoff -------------------------------------------------------------------------

    @ensure_deferred
    async def test_backoff_grows_and_is_capped(self) -> None:
        self.client.mode = "fail"
        await self.send(1)
        await self.settle()
        intervals = []
        for _ in range(6):
            self.assertTrue(self.sender.is_backing_off(REMOTE))
            state = await self.store.get_retry_state(REMOTE)
            intervals.append(state.retry_interval_ms)
            self.assertEqual(backoff_gauge(REMOTE), state.retry_interval_ms / 1000)
            await self.advance(state.retry_interval_ms)
        self.assertEqual(len(self.client.calls), 7)
        self.assertTrue(MIN_MS <= intervals[0] <= MIN_MS * 1.25)
        for previous, current in zip(intervals, intervals[1:], strict=False):
            self.assertTrue(
                current == MAX_MS or 2 * previous <= current <= 2.5 * previous,
                f"{previous} -> {current}",
            )
        self.assertEqual(intervals[-2:], [MAX_MS, MAX_MS])
        state = await self.store.get_retry_state(REMOTE)
        self.assertIsNotNone(state.failure_ts)
        self.assertEqual(await self.queue_lengths(), (1, 0))

    @ensure_deferred
    async def test_http_errors_back_off_too(self) -> None:
        self.client.mode = "http"
        await self.send(1)
        await self.settle()
        self.assertTrue(self.sender.is_backing_off(REMOTE))
        self.assertEqual(await self.queue_lengths(), (1, 0))

    @ensure_deferred
    async def test_a_refused_transaction_is_dropped_not_retried_forever(self) -> None:
        self.client.mode = "refused"
        await self.send(1)
        await self.settle()
        self.assertFalse(self.sender.is_backing_off(REMOTE))
        self.assertEqual(await self.queue_lengths(), (0, 0))
        # The queue is not blocked: later events go out.
        self.client.mode = "ok"
        await self.send(2)
        await self.settle()
        self.assertEqual(self.client.sent_event_ids()[-1], [event_id(2)])

    @ensure_deferred
    async def test_non_retriable_failure_backs_off_at_the_maximum(self) -> None:
        self.client.mode = "fatal"
        await self.send(1)
        await self.settle()
        state = await self.store.get_retry_state(REMOTE)
        self.assertEqual(state.retry_interval_ms, MAX_MS)
        self.assertEqual(await self.queue_lengths(), (1, 0))

    @ensure_deferred
    async def test_retry_happens_after_the_interval(self) -> None:
        self.client.mode = "fail"
        await self.send(1)
        await self.settle()
        interval = (await self.store.get_retry_state(REMOTE)).retry_interval_ms
        self.client.mode = "ok"
        # New events wait for the backoff to end.
        await self.send(2)
        await self.advance(interval - 10)
        self.assertEqual(len(self.client.calls), 1)
        self.assertTrue(self.sender.is_backing_off(REMOTE))
        await self.advance(10)
        await until(lambda: len(self.client.calls) == 2)
        await self.settle()
        self.assertEqual(self.client.sent_event_ids()[1], [event_id(1), event_id(2)])
        # A different batch than the failed one gets a new transaction ID.
        self.assertNotEqual(self.client.calls[0][1], self.client.calls[1][1])
        self.assertFalse(self.sender.is_backing_off(REMOTE))
        self.assertEqual(await self.store.get_retry_state(REMOTE), RetryState(0, 0, None))
        self.assertEqual(backoff_gauge(REMOTE), 0)
        self.assertEqual(await self.queue_lengths(), (0, 0))

    @ensure_deferred
    async def test_retry_of_the_same_batch_keeps_its_transaction_id(self) -> None:
        self.client.mode = "fail"
        await self.send(1)
        await self.settle()
        self.client.mode = "ok"
        await self.advance(MAX_MS)
        await until(lambda: len(self.client.calls) == 2)
        self.assertEqual(self.client.calls[0][1], self.client.calls[1][1])

    @ensure_deferred
    async def test_wake_destination_clears_backoff_and_sends(self) -> None:
        self.client.mode = "fail"
        await self.send(1)
        await self.settle()
        self.assertTrue(self.sender.is_backing_off(REMOTE))
        self.client.mode = "ok"
        self.sender.wake_destination(REMOTE)
        self.assertFalse(self.sender.is_backing_off(REMOTE))
        await until(lambda: len(self.client.calls) == 2)
        await self.settle()
        self.assertEqual(await self.queue_lengths(), (0, 0))
        self.assertEqual(await self.store.get_retry_state(REMOTE), RetryState(0, 0, None))
        # The cancelled retry timer does not fire later.
        await self.advance(MAX_MS * 2)
        self.assertEqual(len(self.client.calls), 2)

    @ensure_deferred
    async def test_peer_heard_from_while_backing_off_gets_its_queue_at_once(self) -> None:
        self.client.mode = "fail"
        await self.send(1)
        await self.send(2)
        await self.settle()
        self.assertTrue(self.sender.is_backing_off(REMOTE))
        self.client.mode = "ok"
        # It sent us a request, or answered one of ours: no waiting out the backoff.
        self.sender.peer_is_up(REMOTE)
        await until(lambda: len(self.client.calls) == 2)
        await self.settle()
        self.assertEqual(self.client.sent_event_ids()[1], [event_id(1), event_id(2)])
        self.assertEqual(await self.queue_lengths(), (0, 0))

    @ensure_deferred
    async def test_peer_heard_from_with_nothing_held_back_costs_nothing(self) -> None:
        await self.send(1)
        await self.settle()
        calls = len(self.client.calls)
        self.sender.peer_is_up(REMOTE)
        self.sender.peer_is_up(OTHER)
        self.assertFalse(self.sender.is_sending(REMOTE))
        self.assertFalse(self.sender.is_sending(OTHER))
        await self.settle()
        self.assertEqual(len(self.client.calls), calls)

    @ensure_deferred
    async def test_wake_of_an_idle_destination_sends_nothing(self) -> None:
        self.sender.wake_destination(REMOTE)
        await self.settle()
        self.assertEqual(self.client.calls, [])

    # ----- restarts ------------------------------------------------------------------------

    @ensure_deferred
    async def test_restarting_loses_no_queued_event(self) -> None:
        self.client.mode = "fail"
        for n in (1, 2, 3):
            await self.send(n)
        await self.settle()
        self.sender.stop()
        self.fake.advance(MAX_MS / 1000)
        client = FakeClient()
        sender = self.new_sender(client=client)
        await sender.start()
        await until(lambda: len(client.calls) == 1)
        await self.settle(sender=sender)
        self.assertEqual(client.sent_event_ids(), [[event_id(1), event_id(2), event_id(3)]])
        self.assertEqual(await self.queue_lengths(), (0, 0))
        self.assertNotEqual(self.client.calls[0][1], client.calls[0][1])

    @ensure_deferred
    async def test_restart_respects_persisted_backoff(self) -> None:
        self.client.mode = "fail"
        await self.send(1)
        await self.settle()
        interval = (await self.store.get_retry_state(REMOTE)).retry_interval_ms
        self.sender.stop()
        client = FakeClient()
        sender = self.new_sender(client=client)
        await sender.start()
        await self.settle(sender=sender)
        self.assertEqual(client.calls, [])
        self.assertTrue(sender.is_backing_off(REMOTE))
        self.fake.advance(interval / 1000)
        await until(lambda: len(client.calls) == 1)
        await self.settle(sender=sender)
        self.assertEqual(await self.queue_lengths(), (0, 0))

    @ensure_deferred
    async def test_restart_woken_destination_ignores_persisted_backoff(self) -> None:
        self.client.mode = "fail"
        await self.send(1)
        await self.settle()
        self.sender.stop()
        client = FakeClient()
        sender = self.new_sender(client=client)
        sender.wake_destination(REMOTE)
        await until(lambda: len(client.calls) == 1)
        await self.settle(sender=sender)
        self.assertEqual(await self.queue_lengths(), (0, 0))
        self.assertEqual(await self.store.get_retry_state(REMOTE), RetryState(0, 0, None))

    # ----- catch-up ------------------------------------------------------------------------

    async def queue_two_rooms(self, count: int) -> None:
        """`count` events alternating between rooms !a (odd) and !b (even)."""
        await self.store.enqueue_pdus(
            (REMOTE, n, event_id(n), "!a:test.heddle" if n % 2 else "!b:test.heddle")
            for n in range(1, count + 1)
        )

    @ensure_deferred
    async def test_whole_backlog_is_sent_in_order_after_recovery(self) -> None:
        self.client.mode = "fail"
        await self.queue_two_rooms(160)
        self.sender.on_queued([REMOTE])
        await self.settle()
        self.client.mode = "ok"
        await self.advance(MAX_MS)
        await until(lambda: len(self.client.calls) == 5)
        await self.settle()
        sent = self.client.sent_event_ids()
        # The failed attempt, then every queued event, oldest first, 50 a transaction: the
        # receiver never has a gap to fill.
        self.assertEqual(sent[0], [event_id(n) for n in range(1, 51)])
        self.assertEqual([len(batch) for batch in sent[1:]], [50, 50, 50, 10])
        self.assertEqual(
            [eid for batch in sent[1:] for eid in batch], [event_id(n) for n in range(1, 161)]
        )
        self.assertEqual(await self.queue_lengths(), (0, 0))

    @ensure_deferred
    async def test_whole_backlog_is_sent_at_start_up(self) -> None:
        await self.queue_two_rooms(120)
        await self.store.enqueue_pdus([(OTHER, 1, event_id(1), "!a:test.heddle")])
        await self.sender.start()
        await until(lambda: len(self.client.calls) == 4)
        await self.settle(REMOTE, OTHER)
        self.assertEqual(
            [eid for batch in self.client.sent_event_ids(REMOTE) for eid in batch],
            [event_id(n) for n in range(1, 121)],
        )
        self.assertEqual(self.client.sent_event_ids(OTHER), [[event_id(1)]])


on_both_engines(FederationSenderTests)
