"""The outbound federation queue: PDUs and EDUs for each remote server, persisted first and
then sent in transactions (`PUT /_matrix/federation/v1/send/{txnId}`), one at a time per
destination, with backoff after failures and catch-up after a long outage.

Every destination has at most one sending loop. It reads the oldest queued items (50 PDUs,
100 EDUs), sends them, and deletes exactly those rows once the destination answered 200;
then it reads again, until the queue is empty. A failure keeps the rows and persists a
backoff (doubling from `retry_min_interval_ms` up to `retry_max_interval_ms`); a timer
retries when it ends, or sooner if we hear from that server (`wake_destination`).

EDUs of which only the latest counts (a user typing in a room, a user's read receipt, a
user's presence) are not persisted: they are held in memory per destination under a key,
a newer one replacing the one waiting, and go out with the persisted items (at least half
of a transaction's EDU room is theirs while they wait). Typing lapses on its own and would
be stale after a restart anyway; receipts and presence are kept by their own stores and
the next change sends them again. Holding them costs no write and cannot conflict with
another writer, however often clients send them (Synapse keeps these EDUs in memory too).
EDUs that must arrive (to-device messages, device list updates) are persisted first.

Catch-up: after an outage the whole backlog is sent, oldest first, 50 PDUs a transaction.
The spec would let a sender skip to the newest event of each room and leave the receiver to
fetch the gap with `get_missing_events`, but a receiver fetches only so much that way (Synapse
10 events, then the state at the gap), so its users would miss messages. Sending in stream
order means the receiver always holds an event's prev_events and never has a gap to fill.
"""

from __future__ import annotations

import logging
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from twisted.internet import defer

from federation.errors import HttpResponseError, RequestSendFailed
from homeserver.clock import Clock
from homeserver.config import FederationConfig
from storage.stores.federation_queue import (
    MAX_EDUS_PER_TRANSACTION,
    FederationQueueStore,
    OutboundBatch,
    QueuedEdu,
    RetryState,
)

logger = logging.getLogger(__name__)

SEND_PATH = "/_matrix/federation/v1/send/"
# Answers to a transaction that mean "this transaction is bad", not "try later".
UNDELIVERABLE_CODES = frozenset({400, 413})

QUEUED_PDUS = Gauge(
    "heddle_federation_queue_pdus",
    "PDUs queued for a destination (exact at each attempt, counted up in between)",
    ["destination"],
)
QUEUED_EDUS = Gauge(
    "heddle_federation_queue_edus",
    "EDUs queued for a destination (exact at each attempt, counted up in between)",
    ["destination"],
)
BACKOFF_SECONDS = Gauge(
    "heddle_federation_destination_backoff_seconds",
    "Current retry interval of a destination after failed deliveries (0 when healthy)",
    ["destination"],
)
TRANSACTION_SECONDS = Histogram(
    "heddle_federation_transaction_seconds", "Time taken to send one outbound transaction"
)
TRANSACTIONS = Counter(
    "heddle_federation_transactions_total",
    "Outbound transactions by result (success, http_error, send_failed, dropped, error)",
    ["result"],
)

LoadPdus = Callable[[list[str]], Awaitable[list[dict[str, Any]]]]

# Destinations kept in memory. Beyond this many, those idle and healthy (nothing held, no
# backoff, nothing unsaved, no loop running) are forgotten, with their metric labels: their
# queue and retry state are in the database, read back when they are next needed. Only
# beyond it, so the servers of busy rooms never pay that read.
MAX_DESTINATIONS_IN_MEMORY = 10_000


@dataclass(frozen=True)
class _HeldEdu(QueuedEdu):
    """An EDU held in memory under `key` (see the module docstring). Its `edu_id` comes from
    the same allocator as persisted EDUs, so the IDs in one transaction never collide."""

    key: str


@dataclass
class _Destination:
    """What the sender knows about one destination, in memory."""

    name: str
    # A sending loop is running (at most one per destination).
    running: bool = False
    # The retry state has been read from the database (or the destination is new to us).
    loaded: bool = False
    retry_last_ts: int = 0
    retry_interval_ms: int = 0
    failure_ts: int | None = None
    # The in-memory retry state has not been written back yet.
    dirty: bool = False
    # Something was queued, or we heard from the server, while the loop was running.
    more: bool = False
    # We heard from the server: any backoff is over.
    woken: bool = False
    retry_call: Any = None
    # EDUs held in memory, by key, oldest first.
    held_edus: dict[str, _HeldEdu] = field(default_factory=dict)
    # The last transaction attempted, so a retry of the very same batch reuses its ID.
    last_batch_key: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    last_txn_id: str | None = None

    def retry_state(self) -> RetryState:
        return RetryState(self.retry_last_ts, self.retry_interval_ms, self.failure_ts)


class FederationSender:
    def __init__(
        self,
        reactor: Any,
        clock: Clock,
        server_name: str,
        config: FederationConfig,
        store: FederationQueueStore,
        client: Any,
        load_pdus: LoadPdus,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._server_name = server_name
        self._config = config
        self._store = store
        self._client = client
        self._load_pdus = load_pdus
        self._rng = rng or random.Random()
        self._destinations: dict[str, _Destination] = {}
        # Size at which idle destinations are next forgotten (see MAX_DESTINATIONS_IN_MEMORY).
        self._forget_idle_at = MAX_DESTINATIONS_IN_MEMORY
        self._stopped = False
        # Transaction IDs: unique across restarts because each run has its own prefix.
        self._txn_prefix = str(clock.time_msec())
        self._txn_counter = 0
        # EDU IDs order the EDU queue; allocated here, starting after the largest stored.
        self._next_edu_id: int | None = None

    # ----- public API ----------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every destination with queued items, respecting persisted backoff."""
        await self._ensure_edu_ids()
        if not self._config.enabled:
            return
        pending = await self._store.get_destinations_with_pending()
        for name, lengths in pending.items():
            if name == self._server_name:
                continue
            dest = self._destination(name)
            QUEUED_PDUS.labels(name).set(lengths.pdus)
            QUEUED_EDUS.labels(name).set(lengths.edus)
            self._kick(dest)
        if pending:
            logger.info("resuming federation sending to %d destinations", len(pending))

    def stop(self) -> None:
        """Stop sending: cancel retry timers; running loops end at their next step."""
        self._stopped = True
        for dest in self._destinations.values():
            if dest.retry_call is not None and dest.retry_call.active():
                dest.retry_call.cancel()
            dest.retry_call = None

    async def send_pdu(
        self, event_id: str, room_id: str, stream_ordering: int, destinations: Iterable[str]
    ) -> None:
        """Queue an event for `destinations` (never ourselves), persisted before any
        sending starts, then start sending to those not backing off."""
        if not self._config.enabled or self._stopped:
            return
        names = sorted({d for d in destinations if d != self._server_name})
        if not names:
            return
        await self._store.enqueue_pdus((name, stream_ordering, event_id, room_id) for name in names)
        for name in names:
            QUEUED_PDUS.labels(name).inc()
        self.on_queued(names)

    async def send_edu(
        self,
        destination: str,
        edu_type: str,
        content: dict[str, Any],
        dedupe_key: str | None = None,
    ) -> None:
        """Queue an EDU for `destination`: persisted, or with a `dedupe_key` (e.g. typing of
        one user in one room) held in memory only, replacing an EDU still waiting under the
        same key and taking its place at the end of the queue."""
        if not self._config.enabled or self._stopped or destination == self._server_name:
            return
        await self._ensure_edu_ids()
        assert self._next_edu_id is not None
        edu_id = self._next_edu_id
        self._next_edu_id += 1
        if dedupe_key is None:
            await self._store.enqueue_edu(destination, edu_id, edu_type, content)
            QUEUED_EDUS.labels(destination).inc()
        else:
            held = self._destination(destination).held_edus
            if held.pop(dedupe_key, None) is None:
                QUEUED_EDUS.labels(destination).inc()
            held[dedupe_key] = _HeldEdu(edu_id, edu_type, content, dedupe_key)
        self.on_queued([destination])

    def on_queued(self, destinations: Iterable[str]) -> None:
        """Items were queued for `destinations` (by `send_pdu`/`send_edu`, or by a caller
        that used `FederationQueueStore.enqueue_pdus_txn` in its own transaction, once that
        committed): start sending to those that are not backing off."""
        if not self._config.enabled or self._stopped:
            return
        for name in destinations:
            if name != self._server_name:
                self._kick(self._destination(name))

    def wake_destination(self, destination: str) -> None:
        """We heard from `destination`: it is up, so end its backoff and send what is queued."""
        if not self._config.enabled or self._stopped or destination == self._server_name:
            return
        dest = self._destination(destination)
        dest.woken = True
        if dest.retry_call is not None and dest.retry_call.active():
            dest.retry_call.cancel()
        dest.retry_call = None
        if dest.loaded and dest.retry_interval_ms:
            logger.info("%s is back: ending its backoff", destination)
            self._clear_backoff(dest)
        self._kick(dest)

    def peer_is_up(self, destination: str) -> None:
        """We heard from `destination` (it answered a request of ours, or signed one to us):
        if it is backing off, its queue goes now instead of waiting out the backoff. Cheap
        for a destination with nothing held back, as it runs on every such request."""
        if not self._config.enabled or self._stopped:
            return
        dest = self._destinations.get(destination)
        if dest is None or dest.running:
            return
        waiting = dest.retry_call is not None and dest.retry_call.active()
        if waiting or dest.retry_interval_ms:
            self.wake_destination(destination)

    def is_backing_off(self, destination: str) -> bool:
        dest = self._destinations.get(destination)
        return dest is not None and self._in_backoff(dest)

    def is_sending(self, destination: str) -> bool:
        """Whether the destination's sending loop is running (a transaction may be in
        flight, or the queue is being read)."""
        dest = self._destinations.get(destination)
        return dest is not None and dest.running

    # ----- scheduling ----------------------------------------------------------------------

    def _destination(self, name: str) -> _Destination:
        dest = self._destinations.get(name)
        if dest is None:
            if len(self._destinations) >= self._forget_idle_at:
                self._forget_idle_destinations()
            dest = self._destinations[name] = _Destination(name)
        return dest

    def _forget_idle_destinations(self) -> None:
        idle = [dest.name for dest in self._destinations.values() if self._is_idle(dest)]
        for name in idle:
            del self._destinations[name]
            for gauge in (QUEUED_PDUS, QUEUED_EDUS, BACKOFF_SECONDS):
                try:
                    gauge.remove(name)
                except KeyError:
                    pass
        # If most are busy, sweeping again at the next new destination would cost as much
        # for as little: wait until the map has grown as much again.
        self._forget_idle_at = max(MAX_DESTINATIONS_IN_MEMORY, 2 * len(self._destinations))
        logger.debug("forgot %d idle federation destinations", len(idle))

    @staticmethod
    def _is_idle(dest: _Destination) -> bool:
        return not (
            dest.running
            or dest.more
            or dest.dirty
            or dest.held_edus
            or dest.retry_interval_ms
            or (dest.retry_call is not None and dest.retry_call.active())
        )

    def _in_backoff(self, dest: _Destination) -> bool:
        return dest.retry_interval_ms > 0 and (
            self._clock.time_msec() < dest.retry_last_ts + dest.retry_interval_ms
        )

    def _kick(self, dest: _Destination, force: bool = False) -> None:
        """Start the destination's loop unless it is running (then it reads again before
        stopping) or backing off (its retry timer will start it)."""
        if self._stopped:
            return
        if dest.running:
            dest.more = True
            return
        if not force and self._in_backoff(dest):
            return
        dest.running = True
        defer.ensureDeferred(self._run(dest))

    def _retry_timer_fired(self, dest: _Destination) -> None:
        dest.retry_call = None
        self._kick(dest, force=True)

    def _schedule_retry(self, dest: _Destination) -> None:
        delay_ms = max(dest.retry_last_ts + dest.retry_interval_ms - self._clock.time_msec(), 0)
        if dest.retry_call is not None and dest.retry_call.active():
            dest.retry_call.cancel()
        dest.retry_call = self._reactor.callLater(delay_ms / 1000, self._retry_timer_fired, dest)

    def _clear_backoff(self, dest: _Destination) -> None:
        """End the backoff in memory (written back by the loop); `failure_ts` stays until a
        transaction succeeds, which logs the recovery."""
        dest.retry_last_ts = 0
        dest.retry_interval_ms = 0
        dest.dirty = True
        BACKOFF_SECONDS.labels(dest.name).set(0)

    def _next_interval_ms(self, previous_ms: int, can_retry: bool) -> int:
        cap = self._config.retry_max_interval_ms
        if not can_retry:
            return cap
        base = previous_ms * 2 if previous_ms > 0 else self._config.retry_min_interval_ms
        # Jitter, so destinations that failed together do not all retry together.
        return int(min(base * self._rng.uniform(1.0, 1.25), cap))

    # ----- the sending loop ----------------------------------------------------------------

    async def _run(self, dest: _Destination) -> None:
        try:
            await self._send_until_empty(dest)
        except Exception:
            if self._stopped:
                return
            # A database or loading error, not the destination's fault: try again later,
            # backing off like after a failed delivery (written back on the next run).
            logger.exception("federation sending loop for %s failed", dest.name)
            dest.retry_interval_ms = self._next_interval_ms(dest.retry_interval_ms, True)
            dest.retry_last_ts = self._clock.time_msec()
            dest.dirty = True
            self._schedule_retry(dest)
        finally:
            dest.running = False

    async def _send_until_empty(self, dest: _Destination) -> None:
        if not dest.loaded:
            recorded = await self._store.get_retry_state(dest.name)
            dest.loaded = True
            # A destination new to the database is written once, healthy, so that the
            # admin API lists every server this one federates with, not only failing ones.
            stored = recorded if recorded is not None else RetryState()
            dest.failure_ts = stored.failure_ts
            if dest.woken:
                dest.dirty = bool(stored.retry_interval_ms) or recorded is None
            else:
                dest.retry_last_ts = stored.retry_last_ts
                dest.retry_interval_ms = stored.retry_interval_ms
                BACKOFF_SECONDS.labels(dest.name).set(stored.retry_interval_ms / 1000)
                dest.dirty = dest.dirty or recorded is None
                if self._in_backoff(dest):
                    self._schedule_retry(dest)
                    return
        dest.woken = False
        while not self._stopped:
            if dest.dirty:
                dest.dirty = False
                await self._store.set_retry_state(dest.name, dest.retry_state())
            dest.more = False
            batch = await self._next_batch(dest)
            QUEUED_PDUS.labels(dest.name).set(batch.pdu_queue_length)
            QUEUED_EDUS.labels(dest.name).set(batch.edu_queue_length)
            if self._stopped:
                return
            if batch.is_empty():
                if dest.more or dest.dirty:
                    continue
                return
            if not await self._send_batch(dest, batch):
                return

    async def _send_batch(self, dest: _Destination, batch: OutboundBatch) -> bool:
        """Send one transaction. True: carry on (it was delivered and its rows deleted, or
        it failed but the backoff is already over); False: stop, a retry is scheduled."""
        pdus = await self._load_pdus([p.event_id for p in batch.pdus])
        txn_id = self._transaction_id(dest, batch)
        body = {
            "origin": self._server_name,
            "origin_server_ts": self._clock.time_msec(),
            "pdus": pdus,
            "edus": [{"edu_type": e.edu_type, "content": e.content} for e in batch.edus],
        }
        path = SEND_PATH + urllib.parse.quote(txn_id, safe="")
        started = time.monotonic()
        try:
            response = await self._client.put_json(dest.name, path, body)
        except HttpResponseError as e:
            if e.code in UNDELIVERABLE_CODES:
                # The destination says this transaction itself is unacceptable (malformed,
                # too large): sending it again cannot help and would block the queue.
                TRANSACTIONS.labels("dropped").inc()
                logger.warning(
                    "%s refused transaction %s (HTTP %d %s): dropping its %d PDUs and %d EDUs",
                    dest.name, txn_id, e.code, e.errcode, len(batch.pdus), len(batch.edus),
                )
                await self._dequeue(dest, batch)
                dest.last_batch_key = dest.last_txn_id = None
                return True
            TRANSACTION_SECONDS.observe(time.monotonic() - started)
            TRANSACTIONS.labels("http_error").inc()
            return await self._back_off(dest, e, True)
        except RequestSendFailed as e:
            TRANSACTION_SECONDS.observe(time.monotonic() - started)
            result = "send_failed"
            TRANSACTIONS.labels(result).inc()
            can_retry = e.can_retry if isinstance(e, RequestSendFailed) else True
            return await self._back_off(dest, e, can_retry)
        except Exception as e:
            TRANSACTIONS.labels("error").inc()
            logger.exception("sending transaction %s to %s failed unexpectedly", txn_id, dest.name)
            return await self._back_off(dest, e, True)
        TRANSACTION_SECONDS.observe(time.monotonic() - started)
        TRANSACTIONS.labels("success").inc()
        logger.debug(
            "sent transaction %s to %s: %d PDUs, %d EDUs",
            txn_id,
            dest.name,
            len(pdus),
            len(batch.edus),
        )
        self._log_pdu_errors(dest.name, txn_id, response)
        await self._dequeue(dest, batch)
        dest.last_batch_key = dest.last_txn_id = None
        if dest.failure_ts is not None:
            logger.info(
                "%s is reachable again: sending its backlog of %d PDUs",
                dest.name, max(batch.pdu_queue_length - len(batch.pdus), 0),
            )
            dest.failure_ts = None
            dest.retry_last_ts = dest.retry_interval_ms = 0
            dest.dirty = True
            BACKOFF_SECONDS.labels(dest.name).set(0)
        return True

    async def _next_batch(self, dest: _Destination) -> OutboundBatch:
        """The oldest persisted PDUs and EDUs, and the oldest held EDUs. While EDUs of both
        kinds wait, each gets at least half the room, so a backlog of one (say to-device
        messages) never holds the other back."""
        held_share = min(len(dest.held_edus), MAX_EDUS_PER_TRANSACTION // 2)
        batch = await self._store.get_next_batch(
            dest.name, max_edus=MAX_EDUS_PER_TRANSACTION - held_share
        )
        held = islice(dest.held_edus.values(), MAX_EDUS_PER_TRANSACTION - len(batch.edus))
        return replace(
            batch,
            edus=[*batch.edus, *held],
            edu_queue_length=batch.edu_queue_length + len(dest.held_edus),
        )

    async def _dequeue(self, dest: _Destination, batch: OutboundBatch) -> None:
        """Take the batch off the queue: delete its rows and let go of its held EDUs, except
        those replaced meanwhile (the newer one is still to be sent)."""
        persisted: list[int] = []
        for edu in batch.edus:
            if not isinstance(edu, _HeldEdu):
                persisted.append(edu.edu_id)
            elif dest.held_edus.get(edu.key) is edu:
                del dest.held_edus[edu.key]
        await self._store.delete_sent(
            dest.name, [p.stream_ordering for p in batch.pdus], persisted
        )

    def _transaction_id(self, dest: _Destination, batch: OutboundBatch) -> str:
        """A new ID, unless this is a retry of exactly the batch last attempted: a receiver
        that processed it but whose answer was lost then recognises it."""
        key = (
            tuple(p.stream_ordering for p in batch.pdus),
            tuple(e.edu_id for e in batch.edus),
        )
        if key != dest.last_batch_key or dest.last_txn_id is None:
            self._txn_counter += 1
            dest.last_batch_key = key
            dest.last_txn_id = f"{self._txn_prefix}-{self._txn_counter}"
        return dest.last_txn_id

    async def _back_off(self, dest: _Destination, error: Exception, can_retry: bool) -> bool:
        """Record a failure and schedule the retry. True if we heard from the server while
        recording it, so the loop should go on at once."""
        dest.woken = False
        now = self._clock.time_msec()
        dest.retry_interval_ms = self._next_interval_ms(dest.retry_interval_ms, can_retry)
        dest.retry_last_ts = now
        if dest.failure_ts is None:
            dest.failure_ts = now
        BACKOFF_SECONDS.labels(dest.name).set(dest.retry_interval_ms / 1000)
        logger.warning(
            "sending to %s failed (%s); retrying in %.1f s",
            dest.name,
            error,
            dest.retry_interval_ms / 1000,
        )
        dest.dirty = False
        await self._store.set_retry_state(dest.name, dest.retry_state())
        if self._stopped:
            return False
        if dest.woken:
            # We heard from the server while recording the failure: try again now.
            self._clear_backoff(dest)
            return True
        self._schedule_retry(dest)
        return False

    def _log_pdu_errors(self, destination: str, txn_id: str, response: Any) -> None:
        """Per-PDU errors in a 200 answer are the receiver's verdict; they are not retried."""
        results = response.get("pdus") if isinstance(response, dict) else None
        if not isinstance(results, dict):
            return
        for event_id, result in results.items():
            if isinstance(result, dict) and "error" in result:
                logger.warning(
                    "%s refused event %s in transaction %s: %s",
                    destination,
                    event_id,
                    txn_id,
                    result["error"],
                )

    async def _ensure_edu_ids(self) -> None:
        if self._next_edu_id is None:
            max_id = await self._store.get_max_edu_id()
            # A concurrent caller may have initialised (and used) the allocator meanwhile.
            if self._next_edu_id is None:
                self._next_edu_id = max_id + 1
