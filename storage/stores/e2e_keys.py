"""End-to-end encryption keys: device identity keys, one-time and fallback keys,
cross-signing keys and uploaded signatures (tables in 0007_e2e_keys.sql).

Keys are JSON text, stored and returned as given; the handler parses, checks and merges.

Each device's key counts (unclaimed one-time keys, unused fallback keys), which every /sync
pass reports, are kept in memory after the first read and forgotten after each commit that
changes them (`get_key_counts`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from homeserver.caches import LruCache
from storage.database import Database, Transaction

MASTER = "master"
SELF_SIGNING = "self_signing"
USER_SIGNING = "user_signing"

# Devices whose key counts are held in memory (a few hundred bytes each): every device that
# syncs reads its own on each pass, so this covers the devices of a large server's active
# users; one forgotten is read again on its next sync.
KEY_COUNTS_CACHE_DEVICES = 100_000

UserDevice = tuple[str, str]  # (user ID, device ID)


@dataclass(frozen=True)
class StoredDeviceKeys:
    device_id: str
    key_json: str
    # From the devices table; None when the device has no name (or no longer exists).
    display_name: str | None


@dataclass(frozen=True)
class KeyCounts:
    """What /sync tells a device of its keys. Shared with the cache: read-only."""

    # Algorithm -> unclaimed one-time keys (algorithms without any are left out).
    one_time_keys: Mapping[str, int]
    # Algorithms whose fallback key has not been handed out since it was uploaded, sorted.
    unused_fallback_key_types: tuple[str, ...]


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
    def __init__(self, db: Database, key_counts_devices: int = KEY_COUNTS_CACHE_DEVICES) -> None:
        self._db = db
        self._key_counts: LruCache[UserDevice, KeyCounts] = LruCache(
            "e2e_key_counts", key_counts_devices
        )
        # Device -> reads of its key counts in flight, and how many changes committed during
        # them (entries exist only while reads are in flight): a read overtaken by a change
        # is not cached (see `get_key_counts`).
        self._key_count_reads: Counter[UserDevice] = Counter()
        self._key_count_changes: Counter[UserDevice] = Counter()
        # Called with the devices whose key counts this process changed, after commit. The
        # cache is per process: `homeserver/areas/stores.py` tells the other processes on
        # this database over Redis, as for current state.
        self.key_counts_listeners: list[Callable[[list[UserDevice]], None]] = []

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
            self._key_counts_changed_txn(txn, [(user_id, device_id)])

        await self._db.run_interaction("add_e2e_one_time_keys", txn_fn)

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
            self._key_counts_changed_txn(txn, [(user_id, device_id)])
            return True

        return await self._db.run_interaction("set_e2e_fallback_key", txn_fn)

    async def get_key_counts(self, user_id: str, device_id: str) -> KeyCounts:
        """The device's unclaimed one-time keys and unused fallback key types, from memory if
        held, else read (in one transaction) and, unless a change committed meanwhile,
        remembered.

        Every write of the one-time and fallback key tables forgets the devices it changed
        after it commits (`_key_counts_changed_txn`, `key_counts_changed`). A read that began
        before such a commit may return the older counts after the device was forgotten;
        its caller uses them (as any read may be a moment old), but they are not cached, so
        the cache never goes back in time.
        """
        device = (user_id, device_id)
        cached = self._key_counts.get(device)
        if cached is not None:
            return cached
        changes_before = self._key_count_changes[device]
        self._key_count_reads[device] += 1
        try:
            counts = await self._db.run_interaction(
                "get_e2e_key_counts", _key_counts_txn, user_id, device_id
            )
        finally:
            unchanged = self._key_count_changes[device] == changes_before
            self._key_count_reads[device] -= 1
            if self._key_count_reads[device] <= 0:
                del self._key_count_reads[device]
                self._key_count_changes.pop(device, None)
        if unchanged and device not in self._key_counts:
            self._key_counts.set(device, counts)
        return counts

    def _key_counts_changed_txn(self, txn: Transaction, devices: Collection[UserDevice]) -> None:
        """These devices' one-time or fallback keys change in this transaction: forget their
        counts once it commits (a rolled back or retried attempt forgets nothing)."""
        if devices:
            txn.call_after(self.key_counts_changed, list(devices))

    def key_counts_changed(self, devices: list[UserDevice]) -> None:
        """After commit: these devices' one-time or fallback keys changed (here, or in the
        device store's deletion of devices); forget their counts here and in other processes."""
        self.forget_key_counts(devices)
        for listener in self.key_counts_listeners:
            listener(devices)

    def forget_key_counts(self, devices: Iterable[UserDevice]) -> None:
        """Forget these devices' key counts (their keys changed, perhaps in another process)."""
        for device in devices:
            if device in self._key_count_reads:
                self._key_count_changes[device] += 1
            self._key_counts.pop(device)

    def clear_key_counts(self) -> None:
        """Forget every device's key counts (changes may have been missed)."""
        for device in self._key_count_reads:
            self._key_count_changes[device] += 1
        self._key_counts.clear()

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
            # Devices whose counts this claim changes: a one-time key went, or a fallback key
            # became used.
            changed: set[UserDevice] = set()
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
                    changed.add((user_id, device_id))
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
                    changed.add((user_id, device_id))
                claimed[(user_id, device_id, algorithm)] = ClaimedKey(
                    f"{algorithm}:{row[0]}", row[1]
                )
            self._key_counts_changed_txn(txn, changed)
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


def _key_counts_txn(txn: Transaction, user_id: str, device_id: str) -> KeyCounts:
    one_time = txn.select_all(
        "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys"
        " WHERE user_id = ? AND device_id = ? GROUP BY algorithm",
        (user_id, device_id),
    )
    fallback = txn.select_all(
        "SELECT algorithm FROM e2e_fallback_keys"
        " WHERE user_id = ? AND device_id = ? AND used = ? ORDER BY algorithm",
        (user_id, device_id, False),
    )
    return KeyCounts(
        MappingProxyType({algorithm: int(count) for algorithm, count in one_time}),
        tuple(row[0] for row in fallback),
    )
