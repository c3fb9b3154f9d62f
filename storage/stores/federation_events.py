"""Reads of the room DAG that federation needs: auth chains, walks backwards from events
(get_missing_events, backfill), backward extremities, and inbound transaction results."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

from storage.database import Database, Transaction


class FederationEventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_held_event_ids(
        self, event_ids: Iterable[str], include_outliers: bool = True
    ) -> set[str]:
        """Which of `event_ids` are stored. Without `include_outliers`, only those already
        processed as part of the room's DAG: timeline, rejected or soft-failed events (the
        latter two have state groups or are not outliers), not bare outliers."""
        wanted = list(dict.fromkeys(event_ids))
        if not wanted:
            return set()

        def txn_fn(txn: Transaction) -> set[str]:
            if include_outliers:
                rows = txn.select_in_chunks(
                    "SELECT event_id FROM events WHERE event_id IN ({in})", wanted
                )
            else:
                rows = txn.select_in_chunks(
                    "SELECT event_id FROM events WHERE event_id IN ({in})"
                    " AND (outlier = ? OR state_group_before IS NOT NULL)",
                    wanted,
                    args_after=(False,),
                )
            return {row[0] for row in rows}

        return await self._db.run_interaction("get_held_event_ids", txn_fn)

    async def get_auth_chain_ids(self, event_ids: Collection[str]) -> set[str]:
        """Every event reachable from `event_ids` through auth_events (not including the
        starting events unless another one's chain reaches them)."""
        start = list(dict.fromkeys(event_ids))

        def txn_fn(txn: Transaction) -> set[str]:
            seen: set[str] = set()
            frontier = start
            while frontier:
                rows = txn.select_in_chunks(
                    "SELECT auth_id FROM event_auth WHERE event_id IN ({in})", frontier
                )
                fresh = {row[0] for row in rows} - seen
                seen |= fresh
                frontier = list(fresh)
            return seen

        return await self._db.run_interaction("get_auth_chain_ids", txn_fn)

    async def walk_back(
        self,
        room_id: str,
        latest: Collection[str],
        earliest: Collection[str],
        limit: int,
        min_depth: int = 0,
    ) -> list[str]:
        """Event IDs reached breadth-first through prev_events from `latest` (excluded),
        stopping at `earliest` (excluded) and at `min_depth`, at most `limit`: what
        get_missing_events and backfill answer with. Only timeline events of the room."""
        stop = set(earliest)

        def txn_fn(txn: Transaction) -> list[str]:
            found: list[str] = []
            seen: set[str] = set(latest) | stop
            frontier = list(dict.fromkeys(latest))
            while frontier and len(found) < limit:
                rows = txn.select_in_chunks(
                    "SELECT ed.prev_event_id, e.topological_ordering FROM event_edges ed"
                    " JOIN events e ON e.event_id = ed.prev_event_id"
                    " WHERE ed.event_id IN ({in}) AND e.room_id = ? AND e.outlier = ?",
                    frontier,
                    args_after=(room_id, False),
                )
                # Deepest first, so the most recent history is returned before older.
                candidates = sorted(
                    {(depth, eid) for eid, depth in rows if eid not in seen}, reverse=True
                )
                frontier = []
                for depth, event_id in candidates:
                    seen.add(event_id)
                    if depth < min_depth:
                        continue
                    found.append(event_id)
                    frontier.append(event_id)
                    if len(found) >= limit:
                        break
            return found

        return await self._db.run_interaction("walk_back", txn_fn)

    async def get_backward_extremities(self, room_id: str) -> list[tuple[str, int]]:
        """(event_id, depth of the deepest event citing it) for the room's missing events."""
        rows = await self._db.run_interaction(
            "get_backward_extremities",
            lambda txn: txn.select_all(
                "SELECT b.event_id, MAX(e.topological_ordering) FROM event_backward_extremities b"
                " JOIN event_edges ed ON ed.prev_event_id = b.event_id"
                " JOIN events e ON e.event_id = ed.event_id"
                " WHERE b.room_id = ? GROUP BY b.event_id",
                (room_id,),
            ),
        )
        return [(row[0], row[1]) for row in rows]

    async def is_next_to_backward_gap(self, room_id: str, event_id: str, prev_ids: Collection[str]) -> bool:
        """Whether the event, or one of its prev_events, is an event we know of but do not
        hold (a backward extremity): history just before it may be missing here."""
        ids = [event_id, *prev_ids]
        placeholders = ", ".join("?" for _ in ids)
        row = await self._db.run_interaction(
            "is_next_to_backward_gap",
            lambda txn: txn.select_one(
                "SELECT 1 FROM event_backward_extremities"
                f" WHERE room_id = ? AND event_id IN ({placeholders}) LIMIT 1",
                (room_id, *ids),
            ),
        )
        return row is not None

    async def is_next_to_forward_gap(self, room_id: str, event_id: str) -> bool:
        """Whether history just after the event may be missing here: no event we hold (and
        did not reject) cites it, and it is not one of the room's latest events (a forward
        extremity, after which there is nothing to miss)."""

        def txn(t: Transaction) -> bool:
            if t.select_one(
                "SELECT 1 FROM event_forward_extremities WHERE room_id = ? AND event_id = ?",
                (room_id, event_id),
            ):
                return False
            cited = t.select_one(
                "SELECT 1 FROM event_edges ed JOIN events e ON e.event_id = ed.event_id"
                " WHERE ed.prev_event_id = ? AND e.rejected_reason IS NULL LIMIT 1",
                (event_id,),
            )
            return cited is None

        return bool(await self._db.run_interaction("is_next_to_forward_gap", txn))

    async def get_transaction_response(self, origin: str, transaction_id: str) -> Any | None:
        row = await self._db.run_interaction(
            "get_transaction_response",
            lambda txn: txn.select_one(
                "SELECT response_json FROM received_transactions"
                " WHERE origin = ? AND transaction_id = ?",
                (origin, transaction_id),
            ),
        )
        return json.loads(row[0]) if row else None

    async def store_transaction_response(
        self, origin: str, transaction_id: str, response: Any, now_ms: int
    ) -> None:
        await self._db.run_interaction(
            "store_transaction_response",
            lambda txn: txn.execute(
                "INSERT INTO received_transactions (origin, transaction_id, response_json,"
                " received_ts) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (origin, transaction_id) DO NOTHING",
                (origin, transaction_id, json.dumps(response), now_ms),
            ),
        )

    async def delete_old_transactions(self, before_ms: int) -> None:
        await self._db.run_interaction(
            "delete_old_transactions",
            lambda txn: txn.execute(
                "DELETE FROM received_transactions WHERE received_ts < ?", (before_ms,)
            ),
        )
