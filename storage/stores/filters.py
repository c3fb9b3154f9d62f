"""Filters users upload (POST /user/{userId}/filter), numbered per user."""

from __future__ import annotations

import json
from typing import Any

from homeserver.events.canonical import encode_canonical_json
from storage.database import Database, Transaction

# Two uploads by one user can race for the next ID; the loser tries again.
_INSERT_ATTEMPTS = 5


class FilterStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_filter(self, user_id: str, filter_json: Any) -> int:
        """Store a filter and return its ID (0, 1, 2... per user). A filter identical to one
        the user already has gets that filter's ID: clients re-upload theirs on every start."""
        encoded = encode_canonical_json(filter_json).decode("utf-8")

        def txn_fn(txn: Transaction) -> int:
            row = txn.select_one(
                "SELECT filter_id FROM user_filters WHERE user_id = ? AND filter_json = ?",
                (user_id, encoded),
            )
            if row is not None:
                return int(row[0])
            row = txn.select_one(
                "SELECT MAX(filter_id) FROM user_filters WHERE user_id = ?", (user_id,)
            )
            filter_id = 0 if row is None or row[0] is None else int(row[0]) + 1
            txn.execute(
                "INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
                (user_id, filter_id, encoded),
            )
            return filter_id

        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._db.run_interaction("add_user_filter", txn_fn)
            except self._db.engine.integrity_error:
                if attempt >= _INSERT_ATTEMPTS:
                    raise

    async def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        row = await self._db.run_interaction(
            "get_user_filter",
            lambda txn: txn.select_one(
                "SELECT filter_json FROM user_filters WHERE user_id = ? AND filter_id = ?",
                (user_id, filter_id),
            ),
        )
        return json.loads(row[0]) if row else None
