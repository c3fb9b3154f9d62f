"""Server-side key backups: each user's backup versions and the session keys stored in them.

Every write to a version's keys starts by updating that version's row. On PostgreSQL
(REPEATABLE READ) two transactions writing the same version therefore conflict, and the
later one is retried from the start with the other's keys visible; on SQLite transactions
run one at a time anyway. So each write sees the keys as they are, decides which to replace,
and moves the etag in one step: concurrent uploads never lose a key or an etag change, and
an upload racing the deletion of its version can not leave keys behind in a deleted version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Transaction


@dataclass(frozen=True)
class RoomKey:
    """The backed-up key of one megolm session (spec: `KeyBackupData`)."""

    first_message_index: int
    forwarded_count: int
    is_verified: bool
    # Encrypted by the client (algorithm-dependent): opaque here.
    session_data: dict[str, Any]


@dataclass(frozen=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: dict[str, Any]
    etag: int
    # How many session keys the version holds.
    count: int


@dataclass(frozen=True)
class BackupKeysState:
    """A version's etag and key count, read in the transaction that changed its keys."""

    etag: int
    count: int


@dataclass(frozen=True)
class UploadResult:
    # The user's current version when the upload ran (None: they have no backup).
    current_version: int | None
    # None when the upload was not to the current version, and so wrote nothing.
    state: BackupKeysState | None


# Given the stored key and an uploaded one for the same session, whether to replace it.
ReplacePolicy = Callable[[RoomKey, RoomKey], bool]

_KEY_COLUMNS = "first_message_index, forwarded_count, is_verified, session_data"


def _room_key(row: tuple[Any, ...]) -> RoomKey:
    first_message_index, forwarded_count, is_verified, session_data = row
    return RoomKey(
        int(first_message_index), int(forwarded_count), bool(is_verified), json.loads(session_data)
    )


def _lock_version(txn: Transaction, user_id: str, version: int) -> bool:
    """Write-lock a live (not deleted) version's row; False if there is no such version."""
    txn.execute(
        "UPDATE room_key_backup_versions SET etag = etag"
        " WHERE user_id = ? AND version = ? AND NOT deleted",
        (user_id, version),
    )
    return txn.rowcount > 0


def _bump_etag(txn: Transaction, user_id: str, version: int) -> None:
    txn.execute(
        "UPDATE room_key_backup_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?",
        (user_id, version),
    )


def _state(txn: Transaction, user_id: str, version: int) -> BackupKeysState:
    row = txn.select_one(
        "SELECT etag FROM room_key_backup_versions WHERE user_id = ? AND version = ?",
        (user_id, version),
    )
    assert row is not None
    return BackupKeysState(int(row[0]), _count(txn, user_id, version))


def _count(txn: Transaction, user_id: str, version: int) -> int:
    row = txn.select_one(
        "SELECT COUNT(*) FROM room_keys WHERE user_id = ? AND version = ?", (user_id, version)
    )
    return int(row[0]) if row else 0


def _current_version(txn: Transaction, user_id: str) -> int | None:
    row = txn.select_one(
        "SELECT MAX(version) FROM room_key_backup_versions WHERE user_id = ? AND NOT deleted",
        (user_id,),
    )
    return int(row[0]) if row and row[0] is not None else None


def _version_exists(txn: Transaction, user_id: str, version: int) -> bool:
    row = txn.select_one(
        "SELECT 1 FROM room_key_backup_versions WHERE user_id = ? AND version = ? AND NOT deleted",
        (user_id, version),
    )
    return row is not None


def _key_filter(
    user_id: str, version: int, room_id: str | None, session_id: str | None
) -> tuple[str, list[Any]]:
    where = "user_id = ? AND version = ?"
    args: list[Any] = [user_id, version]
    if room_id is not None:
        where += " AND room_id = ?"
        args.append(room_id)
        if session_id is not None:
            where += " AND session_id = ?"
            args.append(session_id)
    return where, args


class RoomKeysStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ----- versions ------------------------------------------------------------------------

    async def create_version(self, user_id: str, algorithm: str, auth_data: dict[str, Any]) -> int:
        """A new version, numbered after every version the user ever had (deleted ones
        included); it becomes the current one."""

        def txn_fn(txn: Transaction) -> int:
            row = txn.select_one(
                "SELECT MAX(version) FROM room_key_backup_versions WHERE user_id = ?", (user_id,)
            )
            version = (int(row[0]) if row and row[0] is not None else 0) + 1
            # A concurrent creation committing the same number first makes this a
            # serialization failure on PostgreSQL, and the retry takes the next number.
            txn.execute(
                "INSERT INTO room_key_backup_versions (user_id, version, algorithm, auth_data)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, version) DO NOTHING",
                (user_id, version, algorithm, json.dumps(auth_data)),
            )
            if txn.rowcount != 1:
                raise RuntimeError(f"backup version {version} of {user_id} already exists")
            return version

        return await self._db.run_interaction("create_room_key_backup_version", txn_fn)

    async def get_version(self, user_id: str, version: int | None = None) -> BackupVersion | None:
        """A live version (by default the current one) with its etag and key count."""

        def txn_fn(txn: Transaction) -> BackupVersion | None:
            wanted = _current_version(txn, user_id) if version is None else version
            if wanted is None:
                return None
            row = txn.select_one(
                "SELECT algorithm, auth_data, etag FROM room_key_backup_versions"
                " WHERE user_id = ? AND version = ? AND NOT deleted",
                (user_id, wanted),
            )
            if row is None:
                return None
            algorithm, auth_data, etag = row
            return BackupVersion(
                wanted, algorithm, json.loads(auth_data), int(etag), _count(txn, user_id, wanted)
            )

        return await self._db.run_interaction("get_room_key_backup_version", txn_fn)

    async def update_auth_data(self, user_id: str, version: int, auth_data: dict[str, Any]) -> bool:
        """Replace a live version's auth_data; False if there is no such version."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE room_key_backup_versions SET auth_data = ?"
                " WHERE user_id = ? AND version = ? AND NOT deleted",
                (json.dumps(auth_data), user_id, version),
            )
            return txn.rowcount > 0

        return await self._db.run_interaction("update_room_key_backup_version", txn_fn)

    async def delete_version(self, user_id: str, version: int) -> bool:
        """Delete a version and all its keys. True if the version exists or existed (deleting
        it again is not an error), False if the user never had it."""

        def txn_fn(txn: Transaction) -> bool:
            row = txn.select_one(
                "SELECT deleted FROM room_key_backup_versions WHERE user_id = ? AND version = ?",
                (user_id, version),
            )
            if row is None:
                return False
            if not row[0]:
                txn.execute(
                    "UPDATE room_key_backup_versions SET deleted = ?"
                    " WHERE user_id = ? AND version = ?",
                    (True, user_id, version),
                )
                txn.execute(
                    "DELETE FROM room_keys WHERE user_id = ? AND version = ?", (user_id, version)
                )
            return True

        return await self._db.run_interaction("delete_room_key_backup_version", txn_fn)

    # ----- keys ----------------------------------------------------------------------------

    async def upload_keys(
        self,
        user_id: str,
        version: int,
        keys: Mapping[str, Mapping[str, RoomKey]],
        should_replace: ReplacePolicy,
    ) -> UploadResult:
        """Store `keys` ({room_id: {session_id: key}}) in `version` if it is the user's current
        version: new sessions are added, a stored key is replaced where `should_replace`
        says so. The etag moves if anything changed."""

        def txn_fn(txn: Transaction) -> UploadResult:
            _lock_version(txn, user_id, version)
            current = _current_version(txn, user_id)
            if current != version:
                return UploadResult(current, None)
            inserts: list[tuple[Any, ...]] = []
            updates: list[tuple[Any, ...]] = []
            for room_id, sessions in keys.items():
                stored = {
                    row[0]: _room_key(row[1:])
                    for row in txn.select_in_chunks(
                        f"SELECT session_id, {_KEY_COLUMNS} FROM room_keys"
                        " WHERE user_id = ? AND version = ? AND room_id = ?"
                        " AND session_id IN ({in})",
                        sessions,
                        args_before=(user_id, version, room_id),
                    )
                }
                for session_id, key in sessions.items():
                    old = stored.get(session_id)
                    values = (
                        key.first_message_index,
                        key.forwarded_count,
                        key.is_verified,
                        json.dumps(key.session_data),
                    )
                    if old is None:
                        inserts.append((user_id, version, room_id, session_id, *values))
                    elif should_replace(old, key):
                        updates.append((*values, user_id, version, room_id, session_id))
            if inserts:
                txn.execute_many(
                    "INSERT INTO room_keys (user_id, version, room_id, session_id,"
                    f" {_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    inserts,
                )
            if updates:
                txn.execute_many(
                    "UPDATE room_keys SET first_message_index = ?, forwarded_count = ?,"
                    " is_verified = ?, session_data = ?"
                    " WHERE user_id = ? AND version = ? AND room_id = ? AND session_id = ?",
                    updates,
                )
            if inserts or updates:
                _bump_etag(txn, user_id, version)
            return UploadResult(current, _state(txn, user_id, version))

        return await self._db.run_interaction("upload_room_keys", txn_fn)

    async def get_keys(
        self,
        user_id: str,
        version: int,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, dict[str, RoomKey]] | None:
        """The keys of a live version ({room_id: {session_id: key}}), all of them or those of
        one room (or one session of it); None if there is no such version."""

        def txn_fn(txn: Transaction) -> dict[str, dict[str, RoomKey]] | None:
            if not _version_exists(txn, user_id, version):
                return None
            where, args = _key_filter(user_id, version, room_id, session_id)
            rooms: dict[str, dict[str, RoomKey]] = {}
            for row in txn.select_all(
                f"SELECT room_id, session_id, {_KEY_COLUMNS} FROM room_keys WHERE {where}"
                " ORDER BY room_id, session_id",
                args,
            ):
                rooms.setdefault(row[0], {})[row[1]] = _room_key(row[2:])
            return rooms

        return await self._db.run_interaction("get_room_keys", txn_fn)

    async def delete_keys(
        self,
        user_id: str,
        version: int,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> BackupKeysState | None:
        """Delete a live version's keys (all, one room's, or one session's); None if there is
        no such version. The etag moves if anything was deleted."""

        def txn_fn(txn: Transaction) -> BackupKeysState | None:
            if not _lock_version(txn, user_id, version):
                return None
            where, args = _key_filter(user_id, version, room_id, session_id)
            txn.execute(f"DELETE FROM room_keys WHERE {where}", args)
            if txn.rowcount > 0:
                _bump_etag(txn, user_id, version)
            return _state(txn, user_id, version)

        return await self._db.run_interaction("delete_room_keys", txn_fn)
