"""Remote servers' verify keys, and the signed key responses they came in (for the notary)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Transaction


@dataclass(frozen=True)
class StoredVerifyKey:
    server_name: str
    key_id: str
    # Unpadded base64 of the ed25519 verify key.
    verify_key: str
    # Signatures made at or before this time are trusted.
    valid_until_ts: int
    # Set when the key was listed under old_verify_keys.
    expired_ts: int | None
    fetched_ts: int


@dataclass(frozen=True)
class StoredKeyResponse:
    server_name: str
    key_id: str
    # The server we got the response from: the origin itself or a notary.
    from_server: str
    valid_until_ts: int
    # The response as its server signed it.
    response: dict[str, Any]
    fetched_ts: int


class ServerKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def store_key_response(
        self,
        server_name: str,
        from_server: str,
        response: dict[str, Any],
        keys: Iterable[StoredVerifyKey],
        fetched_ts: int,
    ) -> None:
        """Record a validated key response and the keys taken from it, in one transaction.

        The response is stored once per key it lists (current and old), so it can be found by
        any of them; a newer response from the same server replaces the older one.
        """
        keys = list(keys)
        valid_until_ts = int(response.get("valid_until_ts", 0))
        response_json = json.dumps(response, separators=(",", ":"), sort_keys=True)

        def txn_fn(txn: Transaction) -> None:
            txn.execute_many(
                "INSERT INTO server_signing_keys"
                " (server_name, key_id, verify_key, valid_until_ts, expired_ts, fetched_ts)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (server_name, key_id) DO UPDATE SET"
                " verify_key = excluded.verify_key, valid_until_ts = excluded.valid_until_ts,"
                " expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts",
                [
                    (k.server_name, k.key_id, k.verify_key, k.valid_until_ts, k.expired_ts, k.fetched_ts)
                    for k in keys
                ],
            )
            txn.execute_many(
                "INSERT INTO server_key_responses"
                " (server_name, key_id, from_server, valid_until_ts, response_json, fetched_ts)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (server_name, key_id, from_server) DO UPDATE SET"
                " valid_until_ts = excluded.valid_until_ts,"
                " response_json = excluded.response_json, fetched_ts = excluded.fetched_ts"
                " WHERE server_key_responses.valid_until_ts <= excluded.valid_until_ts",
                [
                    (server_name, k.key_id, from_server, valid_until_ts, response_json, fetched_ts)
                    for k in keys
                ],
            )

        await self._db.run_interaction("store_key_response", txn_fn)

    async def get_verify_key(self, server_name: str, key_id: str) -> StoredVerifyKey | None:
        row = await self._db.run_interaction(
            "get_server_verify_key",
            lambda txn: txn.select_one(
                "SELECT verify_key, valid_until_ts, expired_ts, fetched_ts"
                " FROM server_signing_keys WHERE server_name = ? AND key_id = ?",
                (server_name, key_id),
            ),
        )
        if row is None:
            return None
        return StoredVerifyKey(server_name, key_id, row[0], row[1], row[2], row[3])

    async def get_key_responses(
        self, server_name: str, key_ids: Iterable[str] | None = None
    ) -> list[StoredKeyResponse]:
        """The stored responses for a server (only those listing one of `key_ids` when given),
        one per distinct response, latest valid_until_ts first."""
        wanted = None if key_ids is None else list(key_ids)

        def txn_fn(txn: Transaction) -> list[tuple[Any, ...]]:
            sql = (
                "SELECT key_id, from_server, valid_until_ts, response_json, fetched_ts"
                " FROM server_key_responses WHERE server_name = ?"
            )
            if wanted is None:
                return txn.select_all(sql, (server_name,))
            return txn.select_in_chunks(sql + " AND key_id IN ({in})", wanted, (server_name,))

        rows = await self._db.run_interaction("get_server_key_responses", txn_fn)
        seen: set[str] = set()
        responses: list[StoredKeyResponse] = []
        for key_id, from_server, valid_until_ts, response_json, fetched_ts in rows:
            if response_json in seen:
                continue
            seen.add(response_json)
            responses.append(
                StoredKeyResponse(
                    server_name, key_id, from_server, valid_until_ts, json.loads(response_json), fetched_ts
                )
            )
        responses.sort(key=lambda r: r.valid_until_ts, reverse=True)
        return responses
