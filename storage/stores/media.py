"""Media metadata: media IDs, the deduplicated contents they point at, thumbnails."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Transaction


class StorageKeyChanged(Exception):
    """A stored object was deleted (or is being deleted) since the caller read its
    generation: store it again and retry."""


def claim_storage_key_txn(txn: Transaction, storage_key: str, seen_generation: int) -> None:
    """In the transaction adding a reference to `storage_key`: raise `StorageKeyChanged`
    unless the object is still the one whose generation the caller read before it checked
    (or stored) the object. The row is written either way, so a deletion deciding on the
    same key at the same moment conflicts with this transaction (PostgreSQL retries the
    later one, which then sees the other's outcome)."""
    txn.execute(
        "INSERT INTO media_storage_keys (storage_key, generation, deleting) VALUES (?, 0, ?)"
        " ON CONFLICT (storage_key) DO UPDATE SET generation = media_storage_keys.generation",
        (storage_key, False),
    )
    row = txn.select_one(
        "SELECT generation, deleting FROM media_storage_keys WHERE storage_key = ?",
        (storage_key,),
    )
    if row is None or row[1] or int(row[0]) != seen_generation:
        raise StorageKeyChanged(storage_key)


def mark_storage_key_deleting_txn(txn: Transaction, storage_key: str) -> None:
    """In the transaction that found `storage_key` unreferenced: a deletion of the object
    begins (`finish_storage_key_deletions` ends it)."""
    txn.execute(
        "INSERT INTO media_storage_keys (storage_key, generation, deleting) VALUES (?, 1, ?)"
        " ON CONFLICT (storage_key) DO UPDATE SET"
        " generation = media_storage_keys.generation + 1, deleting = ?",
        (storage_key, True, True),
    )


@dataclass(frozen=True)
class MediaInfo:
    server_name: str
    media_id: str
    user_id: str | None
    content_type: str | None
    upload_name: str | None
    size: int | None
    sha256: str | None
    created_ts: int
    unused_expires_at: int | None
    quarantined: bool

    @property
    def uploaded(self) -> bool:
        return self.sha256 is not None


_COLUMNS = (
    "server_name, media_id, user_id, content_type, upload_name, size, sha256, created_ts,"
    " unused_expires_at, quarantined"
)


def _info(row: tuple) -> MediaInfo:
    server_name, media_id, user_id, content_type, name, size, sha256, created, expires, q = row
    return MediaInfo(
        server_name, media_id, user_id, content_type, name, size, sha256, created, expires,
        bool(q),
    )


class MediaStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_media(self, server_name: str, media_id: str) -> MediaInfo | None:
        row = await self._db.run_interaction(
            "get_media",
            lambda txn: txn.select_one(
                f"SELECT {_COLUMNS} FROM media WHERE server_name = ? AND media_id = ?",
                (server_name, media_id),
            ),
        )
        return _info(row) if row else None

    async def create_pending(
        self, server_name: str, media_id: str, user_id: str, now_ms: int, expires_at: int
    ) -> None:
        await self._db.run_interaction(
            "create_pending_media",
            lambda txn: txn.execute(
                "INSERT INTO media (server_name, media_id, user_id, created_ts,"
                " unused_expires_at) VALUES (?, ?, ?, ?, ?)",
                (server_name, media_id, user_id, now_ms, expires_at),
            ),
        )

    async def count_pending(self, user_id: str, now_ms: int) -> int:
        row = await self._db.run_interaction(
            "count_pending_media",
            lambda txn: txn.select_one(
                "SELECT COUNT(*) FROM media WHERE user_id = ? AND sha256 IS NULL"
                " AND unused_expires_at > ?",
                (user_id, now_ms),
            ),
        )
        return int(row[0]) if row else 0

    async def bytes_uploaded_by(self, user_id: str) -> int:
        row = await self._db.run_interaction(
            "bytes_uploaded_by",
            lambda txn: txn.select_one(
                "SELECT COALESCE(SUM(size), 0) FROM media WHERE user_id = ?", (user_id,)
            ),
        )
        return int(row[0]) if row else 0

    async def record_upload(
        self,
        server_name: str,
        media_id: str,
        user_id: str | None,
        content_type: str,
        upload_name: str | None,
        size: int,
        sha256: str,
        now_ms: int,
        pending: bool = False,
        key_generation: int | None = None,
    ) -> bool:
        """Point a media ID at stored contents (adding a reference to them), in one
        transaction. With `pending`, fills an ID made by `create_pending`, only if it is
        still empty: False when it was used meanwhile (or never existed). Contents already
        quarantined under another ID are quarantined under this one too. With
        `key_generation` (see `claim_storage_key_txn`), raises `StorageKeyChanged` if the
        contents were deleted since the caller read it."""

        def txn_fn(txn: Transaction) -> bool:
            if key_generation is not None:
                claim_storage_key_txn(txn, sha256, key_generation)
            # Contents an admin quarantined stay quarantined under any new media ID.
            found = txn.select_one(
                "SELECT quarantined_by FROM media WHERE sha256 = ? AND quarantined LIMIT 1",
                (sha256,),
            )
            quarantined_by = (found[0] or "") if found else None
            if pending:
                txn.execute(
                    "UPDATE media SET content_type = ?, upload_name = ?, size = ?, sha256 = ?,"
                    " unused_expires_at = NULL, quarantined = ?, quarantined_by = ?"
                    " WHERE server_name = ? AND media_id = ? AND sha256 IS NULL",
                    (content_type, upload_name, size, sha256, quarantined_by is not None,
                     quarantined_by, server_name, media_id),
                )
                if txn.rowcount != 1:
                    return False
            else:
                txn.execute(
                    f"INSERT INTO media ({_COLUMNS}, quarantined_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (server_name, media_id, user_id, content_type, upload_name, size, sha256,
                     now_ms, None, quarantined_by is not None, quarantined_by),
                )
            txn.execute(
                "INSERT INTO media_content (sha256, size, refcount) VALUES (?, ?, 1)"
                " ON CONFLICT (sha256) DO UPDATE SET refcount = media_content.refcount + 1",
                (sha256, size),
            )
            return True

        return await self._db.run_interaction("record_media_upload", txn_fn)

    async def delete_expired_pending(self, now_ms: int) -> int:
        def txn_fn(txn: Transaction) -> int:
            txn.execute(
                "DELETE FROM media WHERE sha256 IS NULL AND unused_expires_at <= ?", (now_ms,)
            )
            return max(txn.rowcount, 0)

        return await self._db.run_interaction("delete_expired_pending_media", txn_fn)

    async def get_thumbnails(self, server_name: str, media_id: str) -> list[tuple]:
        """(width, height, method, animated, content_type, storage_key, size) rows."""
        return await self._db.run_interaction(
            "get_media_thumbnails",
            lambda txn: txn.select_all(
                "SELECT width, height, method, animated, content_type, storage_key, size"
                " FROM media_thumbnails WHERE server_name = ? AND media_id = ?",
                (server_name, media_id),
            ),
        )

    async def store_thumbnail(
        self, server_name: str, media_id: str, width: int, height: int, method: str,
        animated: bool, content_type: str, storage_key: str, size: int, key_generation: int,
    ) -> None:
        """Record a thumbnail stored under `storage_key`; `key_generation` as in
        `record_upload`."""

        def txn_fn(txn: Transaction) -> None:
            claim_storage_key_txn(txn, storage_key, key_generation)
            txn.execute(
                "INSERT INTO media_thumbnails (server_name, media_id, width, height, method,"
                " animated, content_type, storage_key, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (server_name, media_id, width, height, method, animated)"
                " DO NOTHING",
                (server_name, media_id, width, height, method, animated, content_type,
                 storage_key, size),
            )

        await self._db.run_interaction("store_media_thumbnail", txn_fn)

    async def storage_key_generation(self, storage_key: str) -> int | None:
        """How many times the stored object was deleted (0: never), or None while a
        deletion is removing it. Read before trusting that the object exists."""
        row = await self._db.run_interaction(
            "storage_key_generation",
            lambda txn: txn.select_one(
                "SELECT generation, deleting FROM media_storage_keys WHERE storage_key = ?",
                (storage_key,),
            ),
        )
        if row is None:
            return 0
        return None if row[1] else int(row[0])

    async def clear_storage_key_deletions(self) -> None:
        """At start-up: deletions a stopped process left marked are over (their objects
        may or may not be gone; whoever needs one stores it again)."""
        await self._db.run_interaction(
            "clear_storage_key_deletions",
            lambda txn: txn.execute(
                "UPDATE media_storage_keys SET deleting = ? WHERE deleting = ?", (False, True)
            ),
        )
