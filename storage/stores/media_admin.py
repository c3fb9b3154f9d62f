"""What the admin API reads and changes in the media tables: a user's media, quarantine and
protection, and deleting media rows (returning the stored keys nothing refers to any more,
for the caller to remove from storage after the commit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.database import Database, Transaction
from storage.stores.media import mark_storage_key_deleting_txn

# order_by values (Synapse's) and the column each sorts on. Heddle does not record when
# media was last read, so `last_access_ts` sorts as `created_ts` does.
ORDER_COLUMNS = {
    "media_id": "media_id",
    "upload_name": "upload_name",
    "created_ts": "created_ts",
    "last_access_ts": "created_ts",
    "media_length": "size",
    "media_type": "content_type",
    "quarantined_by": "quarantined_by",
    "safe_from_quarantine": "safe_from_quarantine",
}


@dataclass(frozen=True)
class MediaListing:
    media_id: str
    content_type: str | None
    upload_name: str | None
    size: int
    created_ts: int
    quarantined_by: str | None
    safe_from_quarantine: bool
    sha256: str


@dataclass(frozen=True)
class MediaDetails:
    server_name: str
    media_id: str
    user_id: str | None
    content_type: str | None
    upload_name: str | None
    size: int | None
    created_ts: int
    sha256: str | None
    quarantined_by: str | None
    safe_from_quarantine: bool


@dataclass(frozen=True)
class DeletedMedia:
    media_ids: list[str]
    # Storage keys (contents and thumbnails) that no remaining row refers to.
    orphaned_keys: list[str]


class MediaAdminStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def user_media(
        self, user_id: str, offset: int, limit: int, order_by: str, descending: bool
    ) -> tuple[list[MediaListing], int]:
        """A page of the media `user_id` uploaded (IDs not yet used are left out), and how
        many there are in all. Ties are broken by media ID, ascending, for a stable order."""
        column = ORDER_COLUMNS[order_by]
        # NULLs (no upload name, never quarantined) sort as the smallest on both engines.
        direction = "DESC NULLS LAST" if descending else "ASC NULLS FIRST"

        def txn_fn(txn: Transaction) -> tuple[list[MediaListing], int]:
            where = "WHERE user_id = ? AND sha256 IS NOT NULL"
            total = txn.select_one(f"SELECT COUNT(*) FROM media {where}", (user_id,))
            rows = txn.select_all(
                "SELECT media_id, content_type, upload_name, size, created_ts, quarantined_by,"
                f" safe_from_quarantine, sha256 FROM media {where}"
                f" ORDER BY {column} {direction}, media_id ASC LIMIT ? OFFSET ?",
                (user_id, limit, offset),
            )
            media = [
                MediaListing(r[0], r[1], r[2], int(r[3]), int(r[4]), r[5], bool(r[6]), r[7])
                for r in rows
            ]
            return media, int(total[0]) if total else 0

        return await self._db.run_interaction("admin_user_media", txn_fn)

    async def media_details(self, server_name: str, media_id: str) -> MediaDetails | None:
        row = await self._db.run_interaction(
            "admin_media_details",
            lambda txn: txn.select_one(
                "SELECT server_name, media_id, user_id, content_type, upload_name, size,"
                " created_ts, sha256, quarantined_by, safe_from_quarantine"
                " FROM media WHERE server_name = ? AND media_id = ?",
                (server_name, media_id),
            ),
        )
        if row is None:
            return None
        return MediaDetails(
            row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), row[7], row[8],
            bool(row[9]),
        )

    async def set_quarantined(self, server_name: str, media_id: str, by: str | None) -> bool:
        """Quarantine (by `by`) or release the media, and every other media with the same
        contents; False if there is no such media."""

        def txn_fn(txn: Transaction) -> bool:
            if txn.select_one(
                "SELECT 1 FROM media WHERE server_name = ? AND media_id = ?",
                (server_name, media_id),
            ) is None:
                return False
            _quarantine_txn(txn, [(server_name, media_id)], by)
            return True

        return await self._db.run_interaction("set_media_quarantined", txn_fn)

    async def quarantine_user_media(self, user_id: str, by: str) -> int:
        """Quarantine what `user_id` uploaded (and the same contents elsewhere); how many
        items were."""

        def txn_fn(txn: Transaction) -> int:
            rows = txn.select_all(
                "SELECT server_name, media_id FROM media WHERE user_id = ?", (user_id,)
            )
            return _quarantine_txn(txn, [(row[0], row[1]) for row in rows], by)

        return await self._db.run_interaction("quarantine_user_media", txn_fn)

    async def quarantine_many(self, media: list[tuple[str, str]], by: str) -> int:
        """Quarantine these (server name, media ID) pairs (and the same contents elsewhere);
        how many items were."""
        return await self._db.run_interaction(
            "quarantine_media_list", lambda txn: _quarantine_txn(txn, media, by)
        )

    async def set_protected(self, server_name: str, media_id: str, safe: bool) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE media SET safe_from_quarantine = ? WHERE server_name = ? AND media_id = ?",
                (safe, server_name, media_id),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("set_media_protected", txn_fn)

    async def room_exists(self, room_id: str) -> bool:
        row = await self._db.run_interaction(
            "admin_room_exists",
            lambda txn: txn.select_one("SELECT 1 FROM rooms WHERE room_id = ?", (room_id,)),
        )
        return row is not None

    async def room_event_json_with_mxc(self, room_id: str) -> list[str]:
        """The JSON of the room's events that mention an mxc:// URI anywhere."""
        rows = await self._db.run_interaction(
            "room_events_with_media",
            lambda txn: txn.select_all(
                "SELECT json FROM events WHERE room_id = ? AND json LIKE ?",
                (room_id, "%mxc://%"),
            ),
        )
        return [row[0] for row in rows]

    async def old_local_media(
        self, server_name: str, before_ts: int, size_gt: int, keep_profiles: bool
    ) -> list[str]:
        """IDs of local media uploaded before `before_ts`, larger than `size_gt` bytes, and
        not protected; with `keep_profiles`, not a user's or a room's avatar either."""
        sql = (
            "SELECT media_id FROM media WHERE server_name = ? AND sha256 IS NOT NULL"
            " AND created_ts < ? AND size > ? AND NOT safe_from_quarantine"
        )
        if keep_profiles:
            mxc = "'mxc://' || server_name || '/' || media_id"
            sql += (
                f" AND NOT EXISTS (SELECT 1 FROM profiles WHERE avatar_url = {mxc})"
                " AND NOT EXISTS (SELECT 1 FROM events WHERE type = 'm.room.avatar'"
                f" AND json LIKE '%' || {mxc} || '%')"
            )
        rows = await self._db.run_interaction(
            "old_local_media",
            lambda txn: txn.select_all(sql, (server_name, before_ts, size_gt)),
        )
        return [row[0] for row in rows]

    async def old_remote_media(self, local_server: str, before_ts: int) -> list[tuple[str, str]]:
        """Cached copies of other servers' media fetched before `before_ts`. Quarantined
        ones are kept, so purging the cache does not let them be fetched afresh."""
        rows = await self._db.run_interaction(
            "old_remote_media",
            lambda txn: txn.select_all(
                "SELECT server_name, media_id FROM media WHERE server_name <> ?"
                " AND created_ts < ? AND NOT quarantined",
                (local_server, before_ts),
            ),
        )
        return [(row[0], row[1]) for row in rows]

    async def delete_media(self, media: list[tuple[str, str]]) -> DeletedMedia:
        """Delete these media rows and their thumbnails' rows in one transaction."""

        def txn_fn(txn: Transaction) -> DeletedMedia:
            deleted: list[str] = []
            candidates: set[str] = set()
            for server_name, media_id in media:
                row = txn.select_one(
                    "SELECT sha256 FROM media WHERE server_name = ? AND media_id = ?",
                    (server_name, media_id),
                )
                if row is None:
                    continue
                sha256 = row[0]
                thumbs = txn.select_all(
                    "SELECT storage_key FROM media_thumbnails"
                    " WHERE server_name = ? AND media_id = ?",
                    (server_name, media_id),
                )
                candidates.update(t[0] for t in thumbs)
                txn.execute(
                    "DELETE FROM media_thumbnails WHERE server_name = ? AND media_id = ?",
                    (server_name, media_id),
                )
                txn.execute(
                    "DELETE FROM media WHERE server_name = ? AND media_id = ?",
                    (server_name, media_id),
                )
                deleted.append(media_id)
                if sha256 is not None:
                    # Identical uploads share their contents: the last reference frees them.
                    txn.execute(
                        "UPDATE media_content SET refcount = refcount - 1 WHERE sha256 = ?",
                        (sha256,),
                    )
                    txn.execute(
                        "DELETE FROM media_content WHERE sha256 = ? AND refcount <= 0",
                        (sha256,),
                    )
                    candidates.add(sha256)
            orphaned = [k for k in sorted(candidates) if _unused(txn, k)]
            for key in orphaned:
                mark_storage_key_deleting_txn(txn, key)
            return DeletedMedia(deleted, orphaned)

        return await self._db.run_interaction("delete_media", txn_fn)

    async def finish_storage_key_deletions(self, storage_keys: list[str]) -> None:
        """The objects are gone from storage (or could not be removed): new references
        may be made to them again, after storing them anew."""

        def txn_fn(txn: Transaction) -> None:
            for key in storage_keys:
                txn.execute(
                    "UPDATE media_storage_keys SET deleting = ? WHERE storage_key = ?",
                    (False, key),
                )

        await self._db.run_interaction("finish_storage_key_deletions", txn_fn)

def _quarantine_txn(txn: Transaction, media: list[tuple[str, str]], by: str | None) -> int:
    """Quarantine (`by` set) or release the media and every media with the same contents,
    as Synapse does: a re-upload of quarantined bytes must not serve them under a new ID.
    Protected media is never quarantined. Returns how many items changed."""
    quarantine = by is not None
    # Quarantining passes protected media by; releasing does not need to.
    unprotected = " AND NOT safe_from_quarantine" if quarantine else ""
    changing = " AND NOT quarantined" if quarantine else " AND quarantined"
    hashes: set[str] = set()
    changed = 0
    for server_name, media_id in media:
        row = txn.select_one(
            f"SELECT sha256 FROM media WHERE server_name = ? AND media_id = ?{unprotected}",
            (server_name, media_id),
        )
        if row is None:
            continue
        if row[0] is not None:
            hashes.add(row[0])
        txn.execute(
            "UPDATE media SET quarantined = ?, quarantined_by = ?"
            f" WHERE server_name = ? AND media_id = ?{unprotected}{changing}",
            (quarantine, by, server_name, media_id),
        )
        changed += max(txn.rowcount, 0)
    for sha256 in sorted(hashes):
        txn.execute(
            f"UPDATE media SET quarantined = ?, quarantined_by = ? WHERE sha256 = ?"
            f"{unprotected}{changing}",
            (quarantine, by, sha256),
        )
        changed += max(txn.rowcount, 0)
    return changed


def _unused(txn: Transaction, key: str) -> bool:
    # Keys are content hashes: a thumbnail's bytes could equal another upload's, or another
    # media's thumbnail, so a key is removed only when no row refers to it at all.
    args: Any = (key,)
    return (
        txn.select_one("SELECT 1 FROM media_content WHERE sha256 = ?", args) is None
        and txn.select_one("SELECT 1 FROM media_thumbnails WHERE storage_key = ?", args) is None
    )
