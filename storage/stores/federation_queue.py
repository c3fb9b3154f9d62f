"""The outbound federation queue: PDUs and EDUs waiting for each destination, and each
destination's delivery (backoff) state."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from storage.database import Database, Transaction

# Most items one transaction may carry (the spec's limits: 50 PDUs, 100 EDUs).
MAX_PDUS_PER_TRANSACTION = 50
MAX_EDUS_PER_TRANSACTION = 100


@dataclass(frozen=True)
class QueuedPdu:
    stream_ordering: int
    event_id: str
    room_id: str


@dataclass(frozen=True)
class QueuedEdu:
    edu_id: int
    edu_type: str
    content: dict[str, Any]


@dataclass(frozen=True)
class OutboundBatch:
    """The next items for a destination, and how many of each were queued when read."""

    pdus: list[QueuedPdu] = field(default_factory=list)
    edus: list[QueuedEdu] = field(default_factory=list)
    pdu_queue_length: int = 0
    edu_queue_length: int = 0

    def is_empty(self) -> bool:
        return not self.pdus and not self.edus


@dataclass(frozen=True)
class QueueLengths:
    pdus: int
    edus: int


@dataclass(frozen=True)
class RetryState:
    """When the last attempt failed and how long to wait after it (0: not backing off), and
    when the current run of failures began (None while the destination is healthy)."""

    retry_last_ts: int = 0
    retry_interval_ms: int = 0
    failure_ts: int | None = None


@dataclass(frozen=True)
class DestinationRow:
    """A destination's delivery state, as the admin API lists it."""

    destination: str
    retry: RetryState


# The admin API's `order_by` values -> the column they sort on. NULLs (a healthy
# destination's `failure_ts`) sort as the smallest value on both engines. Heddle does not
# record the last PDU sent to each destination: sorting on it keeps the name order.
DESTINATION_ORDER = {
    "destination": "destination",
    "retry_last_ts": "retry_last_ts",
    "retry_interval": "retry_interval_ms",
    "failure_ts": "COALESCE(failure_ts, -1)",
    "last_successful_stream_ordering": "destination",
}


def _queue_lengths_txn(txn: Transaction, destination: str) -> QueueLengths:
    pdus = txn.select_one(
        "SELECT COUNT(*) FROM federation_outbound_pdus WHERE destination = ?", (destination,)
    )
    edus = txn.select_one(
        "SELECT COUNT(*) FROM federation_outbound_edus WHERE destination = ?", (destination,)
    )
    return QueueLengths(pdus[0] if pdus else 0, edus[0] if edus else 0)


class FederationQueueStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ----- enqueueing ----------------------------------------------------------------------

    @staticmethod
    def enqueue_pdus_txn(txn: Transaction, rows: Iterable[tuple[str, int, str, str]]) -> None:
        """Queue PDUs, each row being (destination, stream_ordering, event_id, room_id), as
        part of `txn` (e.g. the one persisting the event). A row already queued is kept."""
        rows = list(rows)
        if rows:
            txn.execute_many(
                "INSERT INTO federation_outbound_pdus"
                " (destination, stream_ordering, event_id, room_id) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (destination, stream_ordering) DO NOTHING",
                rows,
            )

    async def enqueue_pdus(self, rows: Iterable[tuple[str, int, str, str]]) -> None:
        rows = list(rows)
        if rows:
            await self._db.run_interaction("enqueue_federation_pdus", self.enqueue_pdus_txn, rows)

    async def enqueue_edu(
        self, destination: str, edu_id: int, edu_type: str, content: dict[str, Any]
    ) -> None:
        """Queue an EDU that must be delivered (to-device messages, device list updates).

        A plain insert of a new row: concurrent callers never touch the same row, so this
        cannot fail on a conflict. EDUs of which only the latest counts (typing, receipts,
        presence) are not stored at all: the sender holds them in memory, replacing one
        another, so that they cost no write. (The `dedupe_key` column is what once did
        that here; it is no longer written, and rows an older version left are sent once.)
        """
        await self._db.run_interaction(
            "enqueue_federation_edu",
            lambda txn: txn.execute(
                "INSERT INTO federation_outbound_edus (destination, edu_id, edu_type, content)"
                " VALUES (?, ?, ?, ?)",
                (destination, edu_id, edu_type, json.dumps(content)),
            ),
        )

    async def get_max_edu_id(self) -> int:
        row = await self._db.run_interaction(
            "get_max_federation_edu_id",
            lambda txn: txn.select_one("SELECT MAX(edu_id) FROM federation_outbound_edus"),
        )
        return row[0] if row and row[0] is not None else 0

    # ----- sending -------------------------------------------------------------------------

    async def get_next_batch(
        self,
        destination: str,
        max_pdus: int = MAX_PDUS_PER_TRANSACTION,
        max_edus: int = MAX_EDUS_PER_TRANSACTION,
    ) -> OutboundBatch:
        """The oldest queued PDUs (by stream ordering) and EDUs (by edu_id) of `destination`."""

        def txn_fn(txn: Transaction) -> OutboundBatch:
            pdus = txn.select_all(
                "SELECT stream_ordering, event_id, room_id FROM federation_outbound_pdus"
                " WHERE destination = ? ORDER BY stream_ordering LIMIT ?",
                (destination, max_pdus),
            )
            edus = txn.select_all(
                "SELECT edu_id, edu_type, content FROM federation_outbound_edus"
                " WHERE destination = ? ORDER BY edu_id LIMIT ?",
                (destination, max_edus),
            )
            lengths = _queue_lengths_txn(txn, destination)
            return OutboundBatch(
                [QueuedPdu(r[0], r[1], r[2]) for r in pdus],
                [QueuedEdu(r[0], r[1], json.loads(r[2])) for r in edus],
                lengths.pdus,
                lengths.edus,
            )

        return await self._db.run_interaction("get_federation_batch", txn_fn)

    async def delete_sent(
        self, destination: str, stream_orderings: Collection[int], edu_ids: Collection[int]
    ) -> None:
        """Remove exactly these rows (others may have been queued since the batch was read;
        an EDU replaced by a newer one under its dedupe key has a new edu_id and stays)."""

        def txn_fn(txn: Transaction) -> None:
            if stream_orderings:
                txn.execute_many(
                    "DELETE FROM federation_outbound_pdus"
                    " WHERE destination = ? AND stream_ordering = ?",
                    [(destination, s) for s in stream_orderings],
                )
            if edu_ids:
                txn.execute_many(
                    "DELETE FROM federation_outbound_edus WHERE destination = ? AND edu_id = ?",
                    [(destination, e) for e in edu_ids],
                )

        if stream_orderings or edu_ids:
            await self._db.run_interaction("delete_sent_federation_items", txn_fn)

    async def get_queue_lengths(self, destination: str) -> QueueLengths:
        return await self._db.run_interaction(
            "get_federation_queue_lengths", _queue_lengths_txn, destination
        )

    async def get_destinations_with_pending(self) -> dict[str, QueueLengths]:
        """Every destination with anything queued, with its queue lengths (for start-up)."""

        def txn_fn(txn: Transaction) -> dict[str, QueueLengths]:
            pdus = dict(
                txn.select_all(
                    "SELECT destination, COUNT(*) FROM federation_outbound_pdus"
                    " GROUP BY destination"
                )
            )
            edus = dict(
                txn.select_all(
                    "SELECT destination, COUNT(*) FROM federation_outbound_edus"
                    " GROUP BY destination"
                )
            )
            return {
                d: QueueLengths(pdus.get(d, 0), edus.get(d, 0))
                for d in sorted(set(pdus) | set(edus))
            }

        return await self._db.run_interaction("get_federation_pending_destinations", txn_fn)

    # ----- backoff -------------------------------------------------------------------------

    async def get_retry_state(self, destination: str) -> RetryState | None:
        """The destination's stored state; None if it was never recorded."""
        row = await self._db.run_interaction(
            "get_destination_retry_state",
            lambda txn: txn.select_one(
                "SELECT retry_last_ts, retry_interval_ms, failure_ts FROM destinations"
                " WHERE destination = ?",
                (destination,),
            ),
        )
        return RetryState(row[0], row[1], row[2]) if row else None

    async def list_destinations(
        self, offset: int, limit: int, order_by: str, descending: bool
    ) -> tuple[list[DestinationRow], int]:
        """A page of the recorded destinations in the order asked (`DESTINATION_ORDER`), the
        name breaking ties; and how many there are in all."""
        column = DESTINATION_ORDER[order_by]
        direction = "DESC" if descending else "ASC"

        def txn_fn(txn: Transaction) -> tuple[list[DestinationRow], int]:
            total_row = txn.select_one("SELECT COUNT(*) FROM destinations", ())
            rows = txn.select_all(
                "SELECT destination, retry_last_ts, retry_interval_ms, failure_ts"
                f" FROM destinations ORDER BY {column} {direction}, destination {direction}"
                " LIMIT ? OFFSET ?",
                (limit, offset),
            )
            page = [DestinationRow(r[0], RetryState(r[1], r[2], r[3])) for r in rows]
            return page, total_row[0] if total_row else 0

        return await self._db.run_interaction("list_destinations", txn_fn)

    async def destination_rooms(
        self, destination: str, offset: int, limit: int, descending: bool
    ) -> tuple[list[str], int]:
        """A page of the rooms (by room ID) where a user of `destination` is joined, which
        are the rooms this server sends to it; and how many there are in all. It scans
        the joined memberships (a suffix match has no index): an admin's occasional read."""
        # The server part of a user ID is everything after its first colon, so it ends the
        # ID; LIKE wildcards in the name are taken literally.
        escaped = destination.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where = "WHERE membership = 'join' AND user_id LIKE ? ESCAPE '\\'"
        pattern = "%:" + escaped
        direction = "DESC" if descending else "ASC"

        def txn_fn(txn: Transaction) -> tuple[list[str], int]:
            total = txn.select_one(
                f"SELECT COUNT(DISTINCT room_id) FROM room_memberships {where}", (pattern,)
            )
            rows = txn.select_all(
                f"SELECT DISTINCT room_id FROM room_memberships {where}"
                f" ORDER BY room_id {direction} LIMIT ? OFFSET ?",
                (pattern, limit, offset),
            )
            return [r[0] for r in rows], int(total[0]) if total else 0

        return await self._db.run_interaction("destination_rooms", txn_fn)

    async def set_retry_state(self, destination: str, state: RetryState) -> None:
        await self._db.run_interaction(
            "set_destination_retry_state",
            lambda txn: txn.execute(
                "INSERT INTO destinations"
                " (destination, retry_last_ts, retry_interval_ms, failure_ts)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (destination) DO UPDATE SET"
                " retry_last_ts = excluded.retry_last_ts,"
                " retry_interval_ms = excluded.retry_interval_ms,"
                " failure_ts = excluded.failure_ts",
                (destination, state.retry_last_ts, state.retry_interval_ms, state.failure_ts),
            ),
        )
