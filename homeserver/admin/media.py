"""The admin API for media (Synapse's `/v1/media/...`, `/v1/users/{userId}/media`,
`/v1/room/{roomId}/media/quarantine`, `/v1/purge_media_cache`): listing a user's media,
quarantine and protection, deleting media and the stored bytes and thumbnails no other media
shares. Quarantined media is not served (`MediaRepository.get_media_info` answers 404)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from homeserver.admin.audit import AdminAudit
from homeserver.admin.users import AdminUsersHandler
from homeserver.errors import Codes, MatrixError
from media_repo.providers.base import StorageProvider, StorageUnavailable
from media_repo.repository import is_valid_media_id
from storage.stores.media_admin import MediaAdminStore, MediaDetails, MediaListing

logger = logging.getLogger(__name__)

# Timestamps below this are in seconds, not milliseconds (Synapse's check: December 1970 in
# milliseconds is August 2920 in seconds).
MIN_TIMESTAMP_MS = 30_000_000_000


@dataclass(frozen=True)
class MediaPage:
    media: list[MediaListing]
    total: int


def mxc(server_name: str, media_id: str) -> str:
    return f"mxc://{server_name}/{media_id}"


def _split_mxc(uri: Any) -> tuple[str, str] | None:
    if not isinstance(uri, str) or not uri.startswith("mxc://"):
        return None
    server_name, _, media_id = uri[len("mxc://"):].partition("/")
    if not server_name or not is_valid_media_id(media_id):
        return None
    return server_name, media_id


def media_in_event(event: dict[str, Any]) -> set[tuple[str, str]]:
    """The media an event's content points at: `url` (files, images, stickers, room
    avatars), `info.thumbnail_url`, and `avatar_url` (member events)."""
    content = event.get("content")
    if not isinstance(content, dict):
        return set()
    found = {_split_mxc(content.get("url")), _split_mxc(content.get("avatar_url"))}
    info = content.get("info")
    if isinstance(info, dict):
        found.add(_split_mxc(info.get("thumbnail_url")))
    return {m for m in found if m is not None}


def check_timestamp(before_ts: int) -> None:
    if before_ts < MIN_TIMESTAMP_MS:
        raise MatrixError(
            400,
            Codes.INVALID_PARAM,
            "before_ts is from 1970: give a timestamp in milliseconds",
        )


class AdminMediaHandler:
    def __init__(
        self,
        server_name: str,
        store: MediaAdminStore,
        provider: StorageProvider,
        users: AdminUsersHandler,
        audit: AdminAudit,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._provider = provider
        self._users = users
        self._audit = audit

    def _check_media_id(self, media_id: str) -> None:
        if not is_valid_media_id(media_id):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid media ID")

    def _check_local_media(self, server_name: str, media_id: str) -> None:
        if server_name != self._server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, "Can only delete local media")
        self._check_media_id(media_id)

    # ----- listing ---------------------------------------------------------------------------

    async def user_media(
        self, user_id: str, offset: int, limit: int, order_by: str, descending: bool
    ) -> MediaPage:
        await self._users.require_account(user_id)
        media, total = await self._store.user_media(user_id, offset, limit, order_by, descending)
        return MediaPage(media, total)

    async def media_details(self, server_name: str, media_id: str) -> MediaDetails:
        """One item, local or a cached remote copy (404 for one never fetched)."""
        self._check_media_id(media_id)
        details = await self._store.media_details(server_name, media_id)
        if details is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown media")
        return details

    async def room_media(self, room_id: str) -> tuple[list[str], list[str]]:
        """The mxc:// URIs the room's events point at: (this server's, other servers')."""
        media = await self._media_in_room(room_id)
        local = [mxc(s, m) for s, m in media if s == self._server_name]
        remote = [mxc(s, m) for s, m in media if s != self._server_name]
        return local, remote

    async def _media_in_room(self, room_id: str) -> list[tuple[str, str]]:
        if not room_id.startswith("!"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room ID")
        if not await self._store.room_exists(room_id):
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        media: set[tuple[str, str]] = set()
        for raw in await self._store.room_event_json_with_mxc(room_id):
            media |= media_in_event(json.loads(raw))
        return sorted(media)

    # ----- quarantine and protection -------------------------------------------------------

    async def set_quarantined(
        self, admin: str, server_name: str, media_id: str, quarantined: bool
    ) -> None:
        """Quarantine or release one item, local or a cached remote copy (a remote item
        never fetched here is unknown: 404). Protected media stays unquarantined."""
        self._check_media_id(media_id)
        if not await self._store.set_quarantined(
            server_name, media_id, admin if quarantined else None
        ):
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown media")
        action = "quarantine_media" if quarantined else "unquarantine_media"
        await self._audit.record(admin, action, mxc(server_name, media_id))

    async def quarantine_user_media(self, admin: str, user_id: str) -> int:
        await self._users.require_account(user_id)
        count = await self._store.quarantine_user_media(user_id, admin)
        await self._audit.record(
            admin, "quarantine_user_media", user_id, {"num_quarantined": count}
        )
        return count

    async def quarantine_room_media(self, admin: str, room_id: str) -> int:
        """Quarantine the media the room's events point at (local media and cached remote
        copies; encrypted events' media cannot be seen, so is not touched)."""
        count = await self._store.quarantine_many(await self._media_in_room(room_id), admin)
        await self._audit.record(
            admin, "quarantine_room_media", room_id, {"num_quarantined": count}
        )
        return count

    async def set_protected(self, admin: str, media_id: str, protected: bool) -> None:
        self._check_media_id(media_id)
        if not await self._store.set_protected(self._server_name, media_id, protected):
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown media")
        action = "protect_media" if protected else "unprotect_media"
        await self._audit.record(admin, action, mxc(self._server_name, media_id))

    # ----- deleting --------------------------------------------------------------------------

    async def delete_media(self, admin: str, server_name: str, media_id: str) -> list[str]:
        self._check_local_media(server_name, media_id)
        deleted = await self._delete([(server_name, media_id)])
        if not deleted:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown media")
        await self._audit.record(admin, "delete_media", mxc(server_name, media_id))
        return deleted

    async def delete_user_media(
        self,
        admin: str,
        user_id: str,
        offset: int,
        limit: int,
        order_by: str,
        descending: bool,
    ) -> list[str]:
        """Delete one page of what `user_id` uploaded (as `user_media` would list it)."""
        page = await self.user_media(user_id, offset, limit, order_by, descending)
        deleted = await self._delete([(self._server_name, m.media_id) for m in page.media])
        await self._audit.record(admin, "delete_user_media", user_id, {"total": len(deleted)})
        return deleted

    async def delete_old_local_media(
        self, admin: str, before_ts: int, size_gt: int, keep_profiles: bool
    ) -> list[str]:
        check_timestamp(before_ts)
        ids = await self._store.old_local_media(
            self._server_name, before_ts, size_gt, keep_profiles
        )
        deleted = await self._delete([(self._server_name, media_id) for media_id in ids])
        await self._audit.record(
            admin,
            "delete_old_media",
            self._server_name,
            {
                "before_ts": before_ts,
                "size_gt": size_gt,
                "keep_profiles": keep_profiles,
                "total": len(deleted),
            },
        )
        return deleted

    async def purge_remote_media_cache(self, admin: str, before_ts: int) -> int:
        check_timestamp(before_ts)
        old = await self._store.old_remote_media(self._server_name, before_ts)
        deleted = await self._delete(old)
        await self._audit.record(
            admin,
            "purge_media_cache",
            self._server_name,
            {"before_ts": before_ts, "deleted": len(deleted)},
        )
        return len(deleted)

    async def _delete(self, media: list[tuple[str, str]]) -> list[str]:
        """Delete the rows, then the stored bytes no remaining row refers to. The rows go
        first: if storage then fails, the orphaned bytes are only wasted space, where the
        other order could leave rows pointing at nothing."""
        if not media:
            return []
        result = await self._store.delete_media(media)
        try:
            for key in result.orphaned_keys:
                try:
                    await self._provider.delete(key)
                except StorageUnavailable as e:
                    logger.warning("media storage: could not delete %s: %s", key, e)
        finally:
            # Uploads of the same contents waiting on these deletions store them anew.
            if result.orphaned_keys:
                await self._store.finish_storage_key_deletions(result.orphaned_keys)
        logger.info("deleted %d media items, %d stored objects", len(result.media_ids),
                    len(result.orphaned_keys))
        return result.media_ids
