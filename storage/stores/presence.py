"""Presence of local users: the last state written, with its position in the presence stream."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from storage.database import Database, Transaction

OFFLINE = "offline"

_COLUMNS = (
    "user_id, state, status_msg, last_active_ts, last_user_sync_ts, currently_active, stream_id"
)


@dataclass(frozen=True)
class UserPresence:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int
    last_user_sync_ts: int
    currently_active: bool
    stream_id: int

    @classmethod
    def default(cls, user_id: str) -> UserPresence:
        """A user we have never seen: offline, never active."""
        return cls(user_id, OFFLINE, None, 0, 0, False, 0)

    def copy_and_replace(self, **changes: Any) -> UserPresence:
        return replace(self, **changes)


def _row(row: tuple[Any, ...]) -> UserPresence:
    user_id, state, status_msg, last_active, last_sync, currently_active, stream_id = row
    return UserPresence(
        user_id, state, status_msg, last_active, last_sync, bool(currently_active), stream_id
    )


class PresenceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_max_stream_id(self) -> int:
        row = await self._db.run_interaction(
            "get_max_presence_stream_id",
            lambda txn: txn.select_one("SELECT MAX(stream_id) FROM presence"),
        )
        return row[0] if row and row[0] is not None else 0

    async def store_presence(self, presence: UserPresence) -> None:
        await self._db.run_interaction(
            "store_presence",
            lambda txn: txn.execute(
                f"INSERT INTO presence ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state,"
                " status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts,"
                " last_user_sync_ts = excluded.last_user_sync_ts,"
                " currently_active = excluded.currently_active, stream_id = excluded.stream_id"
                # A write that took its position earlier but commits later must not win.
                " WHERE presence.stream_id < excluded.stream_id",
                (
                    presence.user_id,
                    presence.state,
                    presence.status_msg,
                    presence.last_active_ts,
                    presence.last_user_sync_ts,
                    presence.currently_active,
                    presence.stream_id,
                ),
            ),
        )

    async def store_presence_activity(self, presences: Collection[UserPresence]) -> None:
        """Write the last active and sync times (and `currently_active`) of presence that
        moved on without a new stream position. A row written since, at a later position,
        is left alone."""
        if not presences:
            return
        await self._db.run_interaction(
            "store_presence_activity",
            lambda txn: txn.execute_many(
                f"INSERT INTO presence ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET last_active_ts = excluded.last_active_ts,"
                " last_user_sync_ts = excluded.last_user_sync_ts,"
                " currently_active = excluded.currently_active"
                " WHERE presence.stream_id = excluded.stream_id",
                [
                    (
                        p.user_id,
                        p.state,
                        p.status_msg,
                        p.last_active_ts,
                        p.last_user_sync_ts,
                        p.currently_active,
                        p.stream_id,
                    )
                    for p in presences
                ],
            ),
        )

    async def get_presence(self, user_ids: Collection[str]) -> dict[str, UserPresence]:
        """Stored presence of those of `user_ids` that have any."""
        if not user_ids:
            return {}

        def txn_fn(txn: Transaction) -> dict[str, UserPresence]:
            rows = txn.select_in_chunks(
                f"SELECT {_COLUMNS} FROM presence WHERE user_id IN ({{in}})", user_ids
            )
            return {row[0]: _row(row) for row in rows}

        return await self._db.run_interaction("get_presence", txn_fn)

    async def get_not_offline(self) -> list[UserPresence]:
        """Everyone not offline (at start-up, so their timeouts keep running)."""
        rows = await self._db.run_interaction(
            "get_not_offline_presence",
            lambda txn: txn.select_all(
                f"SELECT {_COLUMNS} FROM presence WHERE state <> ?", (OFFLINE,)
            ),
        )
        return [_row(r) for r in rows]

    async def get_presence_changed(
        self, user_ids: Collection[str], after: int, up_to: int | None = None
    ) -> list[UserPresence]:
        """Presence of `user_ids` written with after < stream_id <= up_to."""
        if not user_ids:
            return []

        def txn_fn(txn: Transaction) -> list[UserPresence]:
            sql = f"SELECT {_COLUMNS} FROM presence WHERE user_id IN ({{in}}) AND stream_id > ?"
            args: list[Any] = [after]
            if up_to is not None:
                sql += " AND stream_id <= ?"
                args.append(up_to)
            return [_row(r) for r in txn.select_in_chunks(sql, user_ids, args_after=args)]

        return await self._db.run_interaction("get_presence_changed", txn_fn)
