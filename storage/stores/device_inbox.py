"""Send-to-device messages waiting for local devices, and what makes their delivery
idempotent: client transaction IDs and inbound federation message IDs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Transaction

# The device ID meaning "every device of the user" (spec: sendToDevice).
ALL_DEVICES = "*"


@dataclass(frozen=True)
class ClientTxnKey:
    """A PUT /sendToDevice request, as its retries are recognised."""

    user_id: str
    device_id: str
    event_type: str
    txn_id: str


@dataclass(frozen=True)
class FederationMessageKey:
    """An inbound m.direct_to_device EDU, as its repeats are recognised."""

    origin: str
    message_id: str


@dataclass(frozen=True)
class InboxMessage:
    stream_id: int
    # {"sender", "type", "content"}
    event: dict[str, Any]


def _record_key_txn(
    txn: Transaction, key: ClientTxnKey | FederationMessageKey, now_ms: int
) -> bool:
    """Record the request's key; False if it was already there (a retry or a repeat)."""
    if isinstance(key, ClientTxnKey):
        txn.execute(
            "INSERT INTO device_inbox_client_txns"
            " (user_id, device_id, event_type, txn_id, inserted_ts) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, device_id, event_type, txn_id) DO NOTHING",
            (key.user_id, key.device_id, key.event_type, key.txn_id, now_ms),
        )
    else:
        txn.execute(
            "INSERT INTO device_inbox_federation (origin, message_id, received_ts)"
            " VALUES (?, ?, ?) ON CONFLICT (origin, message_id) DO NOTHING",
            (key.origin, key.message_id, now_ms),
        )
    return txn.rowcount > 0


def _recipients_txn(
    txn: Transaction, user_id: str, by_device: Mapping[str, Any]
) -> dict[str, Any]:
    """device_id -> content for the user's existing devices. `*` means all of them; a
    message addressed to a device by name wins over the `*` one. Unknown devices are
    dropped (spec: the server only delivers to devices it knows)."""
    existing = {
        row[0]
        for row in txn.select_all("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))
    }
    out: dict[str, Any] = {}
    if ALL_DEVICES in by_device:
        out = dict.fromkeys(existing, by_device[ALL_DEVICES])
    for device_id, content in by_device.items():
        if device_id != ALL_DEVICES and device_id in existing:
            out[device_id] = content
    return out


class DeviceInboxStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_max_stream_id(self) -> int:
        """The highest position ever written (delivered messages included)."""

        def txn_fn(txn: Transaction) -> int:
            written = txn.select_one("SELECT MAX(stream_id) FROM device_inbox_positions")
            inbox = txn.select_one("SELECT MAX(stream_id) FROM device_inbox")
            return max(
                written[0] if written and written[0] is not None else 0,
                inbox[0] if inbox and inbox[0] is not None else 0,
            )

        return await self._db.run_interaction("get_max_device_inbox_stream_id", txn_fn)

    async def add_messages(
        self,
        stream_id: int,
        sender: str,
        event_type: str,
        messages: Mapping[str, Mapping[str, Any]],
        key: ClientTxnKey | FederationMessageKey,
        now_ms: int,
    ) -> dict[str, list[str]] | None:
        """Store messages for local users (user_id -> device_id or `*` -> content) at
        `stream_id`, in one transaction with the request's `key`. The position is recorded
        as used either way (see `get_max_stream_id`).

        Returns user_id -> the devices that got a message (users without any are absent),
        or None when `key` was already recorded: a retry, and nothing is stored.
        """

        def txn_fn(txn: Transaction) -> dict[str, list[str]] | None:
            txn.execute("INSERT INTO device_inbox_positions (stream_id) VALUES (?)", (stream_id,))
            if not _record_key_txn(txn, key, now_ms):
                return None
            rows: list[tuple[str, str, int, str]] = []
            delivered: dict[str, list[str]] = {}
            for user_id, by_device in messages.items():
                for device_id, content in sorted(_recipients_txn(txn, user_id, by_device).items()):
                    event = {"sender": sender, "type": event_type, "content": content}
                    rows.append((user_id, device_id, stream_id, json.dumps(event)))
                    delivered.setdefault(user_id, []).append(device_id)
            if rows:
                txn.execute_many(
                    "INSERT INTO device_inbox (user_id, device_id, stream_id, message_json)"
                    " VALUES (?, ?, ?, ?)",
                    rows,
                )
            return delivered

        return await self._db.run_interaction("add_device_inbox_messages", txn_fn)

    async def take_messages(
        self,
        user_id: str,
        device_id: str,
        acknowledged: int,
        up_to: int,
        limit: int,
        after: int | None = None,
    ) -> list[InboxMessage]:
        """Delete the device's messages at or before `acknowledged` (the client's sync token
        says it has them), then return the next ones, after `after` (by default
        `acknowledged`) and at or before `up_to`, oldest first: at most `limit` + 1, so the
        caller can tell there are more."""
        start = acknowledged if after is None else max(after, acknowledged)

        def txn_fn(txn: Transaction) -> list[InboxMessage]:
            if acknowledged > 0:
                txn.execute(
                    "DELETE FROM device_inbox"
                    " WHERE user_id = ? AND device_id = ? AND stream_id <= ?",
                    (user_id, device_id, acknowledged),
                )
            rows = txn.select_all(
                "SELECT stream_id, message_json FROM device_inbox"
                " WHERE user_id = ? AND device_id = ? AND stream_id > ? AND stream_id <= ?"
                " ORDER BY stream_id LIMIT ?",
                (user_id, device_id, start, up_to, limit + 1),
            )
            return [InboxMessage(row[0], json.loads(row[1])) for row in rows]

        return await self._db.run_interaction("take_device_inbox_messages", txn_fn)

    async def count_messages(self, user_id: str, device_id: str) -> int:
        """How many messages wait for the device (delivered but unacknowledged included)."""
        row = await self._db.run_interaction(
            "count_device_inbox_messages",
            lambda txn: txn.select_one(
                "SELECT COUNT(*) FROM device_inbox WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ),
        )
        return int(row[0]) if row else 0

    async def prune(self, before_ms: int) -> None:
        """Forget client transaction IDs and inbound message IDs recorded before `before_ms`,
        and every written position but the highest."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "DELETE FROM device_inbox_client_txns WHERE inserted_ts < ?", (before_ms,)
            )
            txn.execute("DELETE FROM device_inbox_federation WHERE received_ts < ?", (before_ms,))
            txn.execute(
                "DELETE FROM device_inbox_positions WHERE stream_id <"
                " (SELECT MAX(stream_id) FROM device_inbox_positions)"
            )

        await self._db.run_interaction("prune_device_inbox", txn_fn)
