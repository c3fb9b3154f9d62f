"""Pushers and the queue of notifications waiting to be pushed through each
(`0014_pushers`)."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Transaction

HTTP = "http"

_PUSHER_COLUMNS = (
    "id, user_id, access_token_id, device_id, kind, app_id, pushkey, app_display_name,"
    " device_display_name, profile_tag, lang, data, enabled, pushkey_ts"
)


@dataclass(frozen=True)
class Pusher:
    id: int
    user_id: str
    access_token_id: str | None
    device_id: str | None
    kind: str
    app_id: str
    pushkey: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]
    enabled: bool
    # When the pusher was created or last set (ms).
    pushkey_ts: int


@dataclass(frozen=True)
class NewPusher:
    """What POST /pushers/set stores (`kind` not null)."""

    user_id: str
    access_token_id: str | None
    device_id: str | None
    kind: str
    app_id: str
    pushkey: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]


@dataclass(frozen=True)
class QueuedNotification:
    id: int
    pusher_id: int
    # The gateway's notification object without `devices`.
    notification: dict[str, Any]
    tweaks: dict[str, Any]
    badge_only: bool
    queued_ts: int
    attempts: int
    next_attempt_ts: int


def _pusher(row: tuple[Any, ...]) -> Pusher:
    (id_, user_id, token_id, device_id, kind, app_id, pushkey, app_name, device_name,
     profile_tag, lang, data, enabled, pushkey_ts) = row
    return Pusher(
        id_, user_id, token_id, device_id, kind, app_id, pushkey, app_name, device_name,
        profile_tag, lang, json.loads(data), bool(enabled), pushkey_ts,
    )


def _delete_pushers_txn(txn: Transaction, where: str, args: tuple[Any, ...]) -> int:
    """Delete the pushers matching `where` and their queued notifications (explicitly, though
    the foreign key would cascade, so nothing depends on SQLite's foreign-key setting)."""
    txn.execute(
        f"DELETE FROM pusher_queue WHERE pusher_id IN (SELECT id FROM pushers WHERE {where})",
        args,
    )
    txn.execute(f"DELETE FROM pushers WHERE {where}", args)
    return txn.rowcount


def delete_device_pushers_txn(txn: Transaction, user_id: str, device_ids: Collection[str]) -> None:
    """Delete the pushers created through these devices' tokens, as part of deleting the
    devices (logout included)."""
    for device_id in device_ids:
        _delete_pushers_txn(txn, "user_id = ? AND device_id = ?", (user_id, device_id))


class PusherStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ----- pushers ---------------------------------------------------------------------------

    async def get_pushers(self, user_id: str) -> list[Pusher]:
        rows = await self._db.run_interaction(
            "get_pushers",
            lambda txn: txn.select_all(
                f"SELECT {_PUSHER_COLUMNS} FROM pushers WHERE user_id = ? ORDER BY id",
                (user_id,),
            ),
        )
        return [_pusher(row) for row in rows]

    async def get_pusher(self, pusher_id: int) -> Pusher | None:
        row = await self._db.run_interaction(
            "get_pusher",
            lambda txn: txn.select_one(
                f"SELECT {_PUSHER_COLUMNS} FROM pushers WHERE id = ?", (pusher_id,)
            ),
        )
        return _pusher(row) if row else None

    async def set_pusher(self, pusher: NewPusher, now_ms: int, replace_others: bool) -> int:
        """Create the user's pusher for (app_id, pushkey), or update it in place (keeping its
        ID and queue). With `replace_others`, other users' pushers for the same app_id and
        pushkey are deleted in the same transaction. Returns the pusher's ID."""

        def txn_fn(txn: Transaction) -> int:
            if replace_others:
                _delete_pushers_txn(
                    txn,
                    "app_id = ? AND pushkey = ? AND user_id <> ?",
                    (pusher.app_id, pusher.pushkey, pusher.user_id),
                )
            row = txn.select_one(
                "INSERT INTO pushers (user_id, access_token_id, device_id, kind, app_id,"
                " pushkey, app_display_name, device_display_name, profile_tag, lang, data,"
                " enabled, pushkey_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, TRUE, ?)"
                " ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET"
                " access_token_id = excluded.access_token_id, device_id = excluded.device_id,"
                " kind = excluded.kind, app_display_name = excluded.app_display_name,"
                " device_display_name = excluded.device_display_name,"
                " profile_tag = excluded.profile_tag, lang = excluded.lang,"
                " data = excluded.data, enabled = TRUE, pushkey_ts = excluded.pushkey_ts"
                " RETURNING id",
                (
                    pusher.user_id, pusher.access_token_id, pusher.device_id, pusher.kind,
                    pusher.app_id, pusher.pushkey, pusher.app_display_name,
                    pusher.device_display_name, pusher.profile_tag, pusher.lang,
                    json.dumps(pusher.data, sort_keys=True, separators=(",", ":")), now_ms,
                ),
            )
            assert row is not None
            return int(row[0])

        return await self._db.run_interaction("set_pusher", txn_fn)

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> bool:
        """Delete the user's pusher for (app_id, pushkey); False if there was none."""
        deleted = await self._db.run_interaction(
            "delete_pusher",
            _delete_pushers_txn,
            "user_id = ? AND app_id = ? AND pushkey = ?",
            (user_id, app_id, pushkey),
        )
        return deleted > 0

    async def delete_pusher_by_id(self, pusher_id: int) -> None:
        await self._db.run_interaction(
            "delete_pusher_by_id", _delete_pushers_txn, "id = ?", (pusher_id,)
        )

    async def delete_all_for_user(self, user_id: str) -> int:
        return await self._db.run_interaction(
            "delete_user_pushers", _delete_pushers_txn, "user_id = ?", (user_id,)
        )

    # ----- the delivery queue ----------------------------------------------------------------

    async def enqueue(
        self,
        user_id: str,
        notification: dict[str, Any],
        tweaks: dict[str, Any],
        badge_only: bool,
        now_ms: int,
        keep_at_most: int | None = None,
    ) -> list[int]:
        """Queue `notification` for each of the user's enabled HTTP pushers; returns their
        IDs. A badge-only update replaces the badge-only updates still queued for those
        pushers: only the latest counts matter. With `keep_at_most`, a pusher's oldest
        notifications beyond that many are dropped."""

        def txn_fn(txn: Transaction) -> list[int]:
            pusher_ids = [
                row[0]
                for row in txn.select_all(
                    "SELECT id FROM pushers WHERE user_id = ? AND kind = ? AND enabled"
                    " ORDER BY id",
                    (user_id, HTTP),
                )
            ]
            if not pusher_ids:
                return []
            if badge_only:
                for pusher_id in pusher_ids:
                    txn.execute(
                        "DELETE FROM pusher_queue WHERE badge_only AND pusher_id = ?",
                        (pusher_id,),
                    )
            encoded = json.dumps(notification, separators=(",", ":"))
            encoded_tweaks = json.dumps(tweaks, separators=(",", ":"))
            txn.execute_many(
                "INSERT INTO pusher_queue (pusher_id, notification, tweaks, badge_only,"
                " queued_ts, attempts, next_attempt_ts) VALUES (?, ?, ?, ?, ?, 0, ?)",
                [
                    (pusher_id, encoded, encoded_tweaks, badge_only, now_ms, now_ms)
                    for pusher_id in pusher_ids
                ],
            )
            if keep_at_most is not None:
                for pusher_id in pusher_ids:
                    txn.execute(
                        "DELETE FROM pusher_queue WHERE pusher_id = ? AND id <= ("
                        " SELECT id FROM pusher_queue WHERE pusher_id = ?"
                        " ORDER BY id DESC LIMIT 1 OFFSET ?)",
                        (pusher_id, pusher_id, keep_at_most),
                    )
            return pusher_ids

        return await self._db.run_interaction("enqueue_push_notification", txn_fn)

    async def next_queued(self, pusher_id: int) -> tuple[Pusher, QueuedNotification] | None:
        """The pusher and the oldest notification queued for it; None when either is gone."""

        def txn_fn(txn: Transaction) -> tuple[Pusher, QueuedNotification] | None:
            pusher_row = txn.select_one(
                f"SELECT {_PUSHER_COLUMNS} FROM pushers WHERE id = ?", (pusher_id,)
            )
            if pusher_row is None:
                return None
            row = txn.select_one(
                "SELECT id, pusher_id, notification, tweaks, badge_only, queued_ts, attempts,"
                " next_attempt_ts FROM pusher_queue WHERE pusher_id = ? ORDER BY id LIMIT 1",
                (pusher_id,),
            )
            if row is None:
                return None
            id_, pid, notification, tweaks, badge_only, queued_ts, attempts, next_ts = row
            return _pusher(pusher_row), QueuedNotification(
                id_, pid, json.loads(notification), json.loads(tweaks), bool(badge_only),
                queued_ts, attempts, next_ts,
            )

        return await self._db.run_interaction("next_queued_push", txn_fn)

    async def delete_queued(self, queued_id: int) -> None:
        await self._db.run_interaction(
            "delete_queued_push",
            lambda txn: txn.execute("DELETE FROM pusher_queue WHERE id = ?", (queued_id,)),
        )

    async def reschedule(self, queued_id: int, attempts: int, next_attempt_ts: int) -> None:
        await self._db.run_interaction(
            "reschedule_queued_push",
            lambda txn: txn.execute(
                "UPDATE pusher_queue SET attempts = ?, next_attempt_ts = ? WHERE id = ?",
                (attempts, next_attempt_ts, queued_id),
            ),
        )

    async def users_with_http_pushers(self) -> set[str]:
        rows = await self._db.run_interaction(
            "users_with_http_pushers",
            lambda txn: txn.select_all(
                "SELECT DISTINCT user_id FROM pushers WHERE kind = ? AND enabled", (HTTP,)
            ),
        )
        return {row[0] for row in rows}

    async def pushers_with_queued(self) -> list[int]:
        """Every pusher with notifications waiting (to resume delivery at start-up)."""
        rows = await self._db.run_interaction(
            "pushers_with_queued_push",
            lambda txn: txn.select_all("SELECT DISTINCT pusher_id FROM pusher_queue"),
        )
        return sorted(row[0] for row in rows)

    async def count_queued(self, pusher_id: int) -> int:
        row = await self._db.run_interaction(
            "count_queued_push",
            lambda txn: txn.select_one(
                "SELECT COUNT(*) FROM pusher_queue WHERE pusher_id = ?", (pusher_id,)
            ),
        )
        return int(row[0]) if row else 0
