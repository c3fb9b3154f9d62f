"""End-to-end encryption keys: device identity keys, one-time and fallback keys,
cross-signing keys and uploaded signatures (tables in 0007_e2e_keys.sql).

Keys are JSON text, stored and returned as given; the handler parses, checks and merges.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from storage.database import Database, Transaction

MASTER = "master"
SELF_SIGNING = "self_signing"
USER_SIGNING = "user_signing"


@dataclass(frozen=True)
class StoredDeviceKeys:
    device_id: str
    key_json: str
    # From the devices table; None when the device has no name (or no longer exists).
    display_name: str | None


@dataclass(frozen=True)
class ClaimedKey:
    key_id: str  # `algorithm:key_id`
    key_json: str


@dataclass(frozen=True)
class CrossSigningKey:
    key_type: str
    key_id: str
    key_json: str


@dataclass(frozen=True)
class KeySignature:
    """`user_id` signed, with its key `key_id`, the key of `target_user_id` named
    `target_device_id` (a device ID, or a master key's public key)."""

    user_id: str
    key_id: str
    target_user_id: str
    target_device_id: str
    signature: str


class E2eKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ----- device keys ---------------------------------------------------------------------

    async def get_device_keys(self, user_id: str, device_id: str) -> str | None:
        row = await self._db.run_interaction(
            "get_e2e_device_keys",
            lambda txn: txn.select_one(
                "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ),
        )
        return row[0] if row else None

    async def set_device_keys(
        self, user_id: str, device_id: str, key_json: str, now_ms: int
    ) -> bool:
        """Store a device's keys; False if exactly these were stored already. Keys stored
        for a device ID for the first time drop any signatures left from an earlier device
        of that ID."""

        def txn_fn(txn: Transaction) -> bool:
            row = txn.select_one(
                "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            )
            if row is not None and row[0] == key_json:
                return False
            if row is None:
                txn.execute(
                    "DELETE FROM e2e_cross_signing_signatures"
                    " WHERE target_user_id = ? AND target_device_id = ?",
                    (user_id, device_id),
                )
            txn.execute(
                "INSERT INTO e2e_device_keys (user_id, device_id, key_json, ts_added_ms)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, device_id)"
                " DO UPDATE SET key_json = excluded.key_json",
                (user_id, device_id, key_json, now_ms),
            )
            return True

        return await self._db.run_interaction("set_e2e_device_keys", txn_fn)

    async def get_device_keys_for_users(
        self, user_ids: Collection[str]
    ) -> dict[str, dict[str, StoredDeviceKeys]]:
        """Every device with keys of these users (users without any are left out)."""

        def txn_fn(txn: Transaction) -> list[tuple[str, str, str, str | None]]:
            return txn.select_in_chunks(  # type: ignore[return-value]
                "SELECT k.user_id, k.device_id, k.key_json, d.display_name"
                " FROM e2e_device_keys k LEFT JOIN devices d"
                " ON d.user_id = k.user_id AND d.device_id = k.device_id"
                " WHERE k.user_id IN ({in}) ORDER BY k.user_id, k.device_id",
                sorted(set(user_ids)),
            )

        rows = await self._db.run_interaction("get_e2e_device_keys_for_users", txn_fn)
        result: dict[str, dict[str, StoredDeviceKeys]] = {}
        for user_id, device_id, key_json, display_name in rows:
            result.setdefault(user_id, {})[device_id] = StoredDeviceKeys(
                device_id, key_json, display_name
            )
        return result

    # ----- one-time and fallback keys ------------------------------------------------------

    async def get_one_time_keys(
        self, user_id: str, device_id: str, key_ids: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """The stored JSON of those of these (algorithm, key ID) one-time keys that exist."""
        wanted = set(key_ids)

        def txn_fn(txn: Transaction) -> list[tuple[str, str, str]]:
            return txn.select_in_chunks(  # type: ignore[return-value]
                "SELECT algorithm, key_id, key_json FROM e2e_one_time_keys"
                " WHERE user_id = ? AND device_id = ? AND key_id IN ({in})",
                sorted({key_id for _, key_id in wanted}),
                args_before=(user_id, device_id),
            )

        rows = await self._db.run_interaction("get_e2e_one_time_keys", txn_fn)
        return {(a, k): j for a, k, j in rows if (a, k) in wanted}

    async def add_one_time_keys(
        self,
        user_id: str,
        device_id: str,
        keys: Iterable[tuple[str, str, str]],
        now_ms: int,
    ) -> None:
        """Add (algorithm, key ID, JSON) one-time keys as one upload; key IDs already held
        are left as they are."""
        rows = list(keys)
        if not rows:
            return

        def txn_fn(txn: Transaction) -> None:
            row = txn.select_one(
                "SELECT MAX(upload_seq) FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            )
            seq = (row[0] if row and row[0] is not None else 0) + 1
            txn.execute_many(
                "INSERT INTO e2e_one_time_keys"
                " (user_id, device_id, algorithm, key_id, key_json, upload_seq, ts_added_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING",
                [(user_id, device_id, a, k, j, seq, now_ms) for a, k, j in rows],
            )

        await self._db.run_interaction("add_e2e_one_time_keys", txn_fn)

    async def count_one_time_keys(self, user_id: str, device_id: str) -> dict[str, int]:
        rows = await self._db.run_interaction(
            "count_e2e_one_time_keys",
            lambda txn: txn.select_all(
                "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys"
                " WHERE user_id = ? AND device_id = ? GROUP BY algorithm",
                (user_id, device_id),
            ),
        )
        return {algorithm: int(count) for algorithm, count in rows}

    async def set_fallback_key(
        self, user_id: str, device_id: str, algorithm: str, key_id: str, key_json: str
    ) -> bool:
        """Make this the device's fallback key for `algorithm`, unused. The same key
        uploaded again changes nothing (a used key stays used); returns whether it changed."""

        def txn_fn(txn: Transaction) -> bool:
            row = txn.select_one(
                "SELECT key_id, key_json FROM e2e_fallback_keys"
                " WHERE user_id = ? AND device_id = ? AND algorithm = ?",
                (user_id, device_id, algorithm),
            )
            if row is not None and tuple(row) == (key_id, key_json):
                return False
            txn.execute(
                "INSERT INTO e2e_fallback_keys"
                " (user_id, device_id, algorithm, key_id, key_json, used)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET"
                " key_id = excluded.key_id, key_json = excluded.key_json, used = excluded.used",
                (user_id, device_id, algorithm, key_id, key_json, False),
            )
            return True

        return await self._db.run_interaction("set_e2e_fallback_key", txn_fn)

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        rows = await self._db.run_interaction(
            "get_e2e_unused_fallback_key_types",
            lambda txn: txn.select_all(
                "SELECT algorithm FROM e2e_fallback_keys"
                " WHERE user_id = ? AND device_id = ? AND used = ? ORDER BY algorithm",
                (user_id, device_id, False),
            ),
        )
        return [row[0] for row in rows]

    async def claim_keys(
        self, wanted: Collection[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], ClaimedKey]:
        """For each (user ID, device ID, algorithm): the device's oldest one-time key of that
        algorithm, deleted as it is handed out, else its fallback key, marked used. Missing
        from the result when the device has neither. In one transaction, so no key is ever
        handed out twice (PostgreSQL: a concurrent claim of the same row is a serialization
        failure, and the retry picks the next key)."""

        def txn_fn(txn: Transaction) -> dict[tuple[str, str, str], ClaimedKey]:
            claimed: dict[tuple[str, str, str], ClaimedKey] = {}
            for user_id, device_id, algorithm in wanted:
                row = txn.select_one(
                    "SELECT key_id, key_json FROM e2e_one_time_keys"
                    " WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                    " ORDER BY upload_seq, key_id LIMIT 1",
                    (user_id, device_id, algorithm),
                )
                if row is not None:
                    txn.execute(
                        "DELETE FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?"
                        " AND algorithm = ? AND key_id = ?",
                        (user_id, device_id, algorithm, row[0]),
                    )
                    if txn.rowcount != 1:
                        raise RuntimeError("one-time key vanished while being claimed")
                    claimed[(user_id, device_id, algorithm)] = ClaimedKey(
                        f"{algorithm}:{row[0]}", row[1]
                    )
                    continue
                row = txn.select_one(
                    "SELECT key_id, key_json, used FROM e2e_fallback_keys"
                    " WHERE user_id = ? AND device_id = ? AND algorithm = ?",
                    (user_id, device_id, algorithm),
                )
                if row is None:
                    continue
                if not row[2]:
                    txn.execute(
                        "UPDATE e2e_fallback_keys SET used = ?"
                        " WHERE user_id = ? AND device_id = ? AND algorithm = ?",
                        (True, user_id, device_id, algorithm),
                    )
                claimed[(user_id, device_id, algorithm)] = ClaimedKey(
                    f"{algorithm}:{row[0]}", row[1]
                )
            return claimed

        return await self._db.run_interaction("claim_e2e_keys", txn_fn)

    # ----- cross-signing -------------------------------------------------------------------

    async def get_cross_signing_keys(
        self, user_ids: Collection[str]
    ) -> dict[str, dict[str, CrossSigningKey]]:
        """user ID -> key type -> key, for the users that have any."""

        def txn_fn(txn: Transaction) -> list[tuple[str, str, str, str]]:
            return txn.select_in_chunks(  # type: ignore[return-value]
                "SELECT user_id, key_type, key_id, key_json FROM e2e_cross_signing_keys"
                " WHERE user_id IN ({in})",
                sorted(set(user_ids)),
            )

        rows = await self._db.run_interaction("get_e2e_cross_signing_keys", txn_fn)
        result: dict[str, dict[str, CrossSigningKey]] = {}
        for user_id, key_type, key_id, key_json in rows:
            result.setdefault(user_id, {})[key_type] = CrossSigningKey(key_type, key_id, key_json)
        return result

    async def set_cross_signing_keys(
        self, user_id: str, keys: Collection[CrossSigningKey], now_ms: int
    ) -> list[str]:
        """Store these keys of the user, in one transaction; returns the key types that
        changed. A replaced key takes its signatures with it: those it made, and for a
        master key those made of it."""

        def txn_fn(txn: Transaction) -> list[str]:
            changed = []
            for key in keys:
                row = txn.select_one(
                    "SELECT key_id, key_json FROM e2e_cross_signing_keys"
                    " WHERE user_id = ? AND key_type = ?",
                    (user_id, key.key_type),
                )
                if row is not None and tuple(row) == (key.key_id, key.key_json):
                    continue
                changed.append(key.key_type)
                if row is not None and row[0] != key.key_id:
                    old_key_id = row[0]
                    txn.execute(
                        "DELETE FROM e2e_cross_signing_signatures WHERE user_id = ? AND key_id = ?",
                        (user_id, old_key_id),
                    )
                    if key.key_type == MASTER:
                        txn.execute(
                            "DELETE FROM e2e_cross_signing_signatures"
                            " WHERE target_user_id = ? AND target_device_id = ?",
                            (user_id, old_key_id.partition(":")[2]),
                        )
                txn.execute(
                    "INSERT INTO e2e_cross_signing_keys"
                    " (user_id, key_type, key_id, key_json, ts_added_ms) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (user_id, key_type) DO UPDATE SET key_id = excluded.key_id,"
                    " key_json = excluded.key_json, ts_added_ms = excluded.ts_added_ms",
                    (user_id, key.key_type, key.key_id, key.key_json, now_ms),
                )
            return changed

        return await self._db.run_interaction("set_e2e_cross_signing_keys", txn_fn)

    async def get_signatures(self, target_user_ids: Collection[str]) -> list[KeySignature]:
        """Every stored signature of a key of these users."""

        def txn_fn(txn: Transaction) -> list[tuple[str, str, str, str, str]]:
            return txn.select_in_chunks(  # type: ignore[return-value]
                "SELECT user_id, key_id, target_user_id, target_device_id, signature"
                " FROM e2e_cross_signing_signatures WHERE target_user_id IN ({in})"
                " ORDER BY user_id, key_id",
                sorted(set(target_user_ids)),
            )

        rows = await self._db.run_interaction("get_e2e_cross_signing_signatures", txn_fn)
        return [KeySignature(*row) for row in rows]

    async def store_signatures(self, signatures: Collection[KeySignature]) -> None:
        if not signatures:
            return
        await self._db.run_interaction(
            "store_e2e_cross_signing_signatures",
            lambda txn: txn.execute_many(
                "INSERT INTO e2e_cross_signing_signatures"
                " (user_id, key_id, target_user_id, target_device_id, signature)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, key_id, target_user_id, target_device_id)"
                " DO UPDATE SET signature = excluded.signature",
                [
                    (s.user_id, s.key_id, s.target_user_id, s.target_device_id, s.signature)
                    for s in signatures
                ],
            ),
        )
