from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from storage.database import Database, Transaction
from storage.stores.pushers import delete_device_pushers_txn


@dataclass(frozen=True)
class Device:
    user_id: str
    device_id: str
    display_name: str | None
    last_seen_ts: int | None
    last_seen_ip: str | None
    last_seen_user_agent: str | None = None


@dataclass(frozen=True)
class DeletedDevices:
    device_ids: list[str]
    revoked_token_ids: list[str]


_COLUMNS = (
    "user_id, device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent"
)
# What else belongs to a device and goes with it: its end-to-end keys and the to-device
# messages waiting for it.
_DEVICE_DATA_TABLES = ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys", "device_inbox")


def delete_device_tokens_txn(
    txn: Transaction, user_id: str, device_ids: Collection[str]
) -> list[str]:
    """Delete every access and refresh token of these devices; returns revoked access token IDs."""
    revoked: list[str] = []
    for device_id in device_ids:
        revoked.extend(
            row[0]
            for row in txn.select_all(
                "SELECT token_id FROM access_tokens WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            )
        )
        txn.execute(
            "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        )
        txn.execute(
            "DELETE FROM refresh_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        )
    return revoked


def _delete_devices_txn(
    txn: Transaction,
    user_id: str,
    device_ids: Collection[str],
    keys_deleted: Callable[[list[tuple[str, str]]], None] | None,
) -> DeletedDevices:
    revoked = delete_device_tokens_txn(txn, user_id, device_ids)
    deleted = []
    for device_id in device_ids:
        txn.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id))
        if txn.rowcount > 0:
            deleted.append(device_id)
        for table in _DEVICE_DATA_TABLES:
            txn.execute(
                f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?", (user_id, device_id)
            )
        # Signatures of the device's keys (by the user's self-signing key).
        txn.execute(
            "DELETE FROM e2e_cross_signing_signatures"
            " WHERE target_user_id = ? AND target_device_id = ?",
            (user_id, device_id),
        )
    # Pushers go with the device whose token created them (logout included).
    delete_device_pushers_txn(txn, user_id, device_ids)
    if keys_deleted is not None and device_ids:
        # Every device named, not only those whose row existed: their keys were deleted
        # either way.
        txn.call_after(keys_deleted, [(user_id, device_id) for device_id in device_ids])
    return DeletedDevices(deleted, revoked)


class DeviceStore:
    def __init__(
        self,
        db: Database,
        keys_deleted: Callable[[list[tuple[str, str]]], None] | None = None,
    ) -> None:
        self._db = db
        # Called after a deletion commits with the (user ID, device ID) of every device whose
        # one-time and fallback keys it deleted (`E2eKeyStore.key_counts_changed`, which
        # caches their counts).
        self._keys_deleted = keys_deleted

    async def ensure_device(
        self, user_id: str, device_id: str, display_name: str | None, now_ms: int
    ) -> bool:
        """Create the device if it does not exist; True if it was created."""

        def txn_fn(txn: Transaction) -> bool:
            if txn.select_one(
                "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
            ):
                return False
            txn.execute(
                "INSERT INTO devices (user_id, device_id, display_name, created_ts)"
                " VALUES (?, ?, ?, ?)",
                (user_id, device_id, display_name, now_ms),
            )
            return True

        return await self._db.run_interaction("ensure_device", txn_fn)

    async def get_device(self, user_id: str, device_id: str) -> Device | None:
        row = await self._db.run_interaction(
            "get_device",
            lambda txn: txn.select_one(
                f"SELECT {_COLUMNS} FROM devices WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ),
        )
        return Device(*row) if row else None

    async def get_devices(self, user_id: str) -> list[Device]:
        rows = await self._db.run_interaction(
            "get_devices",
            lambda txn: txn.select_all(
                f"SELECT {_COLUMNS} FROM devices WHERE user_id = ? ORDER BY device_id", (user_id,)
            ),
        )
        return [Device(*row) for row in rows]

    async def set_display_name(self, user_id: str, device_id: str, display_name: str) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
                (display_name, user_id, device_id),
            )
            return txn.rowcount > 0

        return await self._db.run_interaction("set_device_display_name", txn_fn)

    async def record_last_seen(
        self, user_id: str, device_id: str, ip: str, user_agent: str | None, now_ms: int
    ) -> None:
        await self._db.run_interaction(
            "record_device_last_seen",
            lambda txn: txn.execute(
                "UPDATE devices SET last_seen_ts = ?, last_seen_ip = ?, last_seen_user_agent = ?"
                " WHERE user_id = ? AND device_id = ?",
                (now_ms, ip, user_agent, user_id, device_id),
            ),
        )

    async def delete_devices(self, user_id: str, device_ids: Collection[str]) -> DeletedDevices:
        """Delete devices with all their tokens, keys and to-device messages, atomically;
        returns the devices that existed and the revoked access token IDs."""

        return await self._db.run_interaction(
            "delete_devices", _delete_devices_txn, user_id, list(device_ids), self._keys_deleted
        )

    async def delete_all_devices(
        self, user_id: str, except_device_id: str | None = None
    ) -> DeletedDevices:
        def txn_fn(txn: Transaction) -> DeletedDevices:
            device_ids = [
                row[0]
                for row in txn.select_all(
                    "SELECT device_id FROM devices WHERE user_id = ?", (user_id,)
                )
                if row[0] != except_device_id
            ]
            return _delete_devices_txn(txn, user_id, device_ids, self._keys_deleted)

        return await self._db.run_interaction("delete_all_devices", txn_fn)
