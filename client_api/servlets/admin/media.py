"""Synapse's admin API for media, at its paths and with its JSON. The work is
`homeserver.admin.media.AdminMediaHandler`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import (
    HeddleRequest,
    parse_bool_query,
    parse_int_query,
    query_string,
)
from client_api.servlets.admin.access import (
    admin_path,
    parse_page,
    require_admin,
)
from homeserver.errors import Codes, MatrixError
from storage.stores.media_admin import ORDER_COLUMNS, MediaDetails, MediaListing

if TYPE_CHECKING:
    from homeserver.app import HomeServer

SERVER_MEDIA = r"/(?P<server_name>[^/]+)/(?P<media_id>[^/]+)"


def listing_json(media: MediaListing, user_id: str) -> dict[str, Any]:
    return {
        "media_id": media.media_id,
        "user_id": user_id,
        "media_type": media.content_type,
        "media_length": media.size,
        "upload_name": media.upload_name,
        "created_ts": media.created_ts,
        # Heddle does not record when media was last read.
        "last_access_ts": None,
        "quarantined_by": media.quarantined_by,
        "safe_from_quarantine": media.safe_from_quarantine,
        "url_cache": None,
        "authenticated": None,
        "sha256": media.sha256,
    }


def details_json(media: MediaDetails, local: bool) -> dict[str, Any]:
    return {
        "media_origin": None if local else media.server_name,
        "user_id": media.user_id,
        "media_id": media.media_id,
        "media_type": media.content_type,
        "media_length": media.size,
        "upload_name": media.upload_name,
        "created_ts": media.created_ts,
        # Synapse's file name for a remote copy; Heddle stores contents under their hash.
        "filesystem_id": None if local else media.sha256,
        "url_cache": None,
        "last_access_ts": None,
        "quarantined_by": media.quarantined_by,
        "authenticated": None,
        "safe_from_quarantine": media.safe_from_quarantine if local else None,
        "sha256": media.sha256,
    }


def _before_ts(request: HeddleRequest) -> int:
    before_ts = parse_int_query(request, "before_ts", min_value=0)
    if before_ts is None:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing query parameter 'before_ts'")
    return before_ts


class UserMediaServlet:
    PATTERNS = [admin_path("/users/(?P<user_id>[^/]+)/media")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        offset, limit, order_by, descending = _page(request)
        page = await self._hs.admin.media.user_media(user_id, offset, limit, order_by, descending)
        body: dict[str, Any] = {
            "media": [listing_json(m, user_id) for m in page.media],
            "total": page.total,
        }
        if offset + len(page.media) < page.total:
            body["next_token"] = offset + len(page.media)
        return 200, body

    async def on_DELETE(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        """Deletes the page of the user's media the same parameters would list."""
        admin = await require_admin(self._hs, request)
        offset, limit, order_by, descending = _page(request)
        deleted = await self._hs.admin.media.delete_user_media(
            admin.user_id, user_id, offset, limit, order_by, descending
        )
        return 200, {"deleted_media": deleted, "total": len(deleted)}


def _page(request: HeddleRequest) -> tuple[int, int, str, bool]:
    """`from`, `limit`, `order_by` and `dir` of a user's media: (offset, limit, order_by,
    descending)."""
    offset, limit = parse_page(request)
    order_by = query_string(request, "order_by")
    direction = query_string(request, "dir")
    if order_by is None and direction is None:
        # Synapse's default when neither is given: newest first.
        order_by, direction = "created_ts", "b"
    order_by = order_by or "created_ts"
    direction = direction or "f"
    if order_by not in ORDER_COLUMNS:
        raise MatrixError(
            400, Codes.INVALID_PARAM, f"order_by must be one of {sorted(ORDER_COLUMNS)}"
        )
    if direction not in ("f", "b"):
        raise MatrixError(400, Codes.INVALID_PARAM, "dir must be 'f' or 'b'")
    return offset, limit, order_by, direction == "b"


class QuarantineMediaServlet:
    PATTERNS = [admin_path("/media/(?P<action>quarantine|unquarantine)" + SERVER_MEDIA)]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(
        self, request: HeddleRequest, action: str, server_name: str, media_id: str
    ) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        await self._hs.admin.media.set_quarantined(
            admin.user_id, server_name, media_id, action == "quarantine"
        )
        return 200, {}


class RoomMediaServlet:
    PATTERNS = [admin_path("/room/(?P<room_id>[^/]+)/media")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        local, remote = await self._hs.admin.media.room_media(room_id)
        return 200, {"local": local, "remote": remote}


class QuarantineRoomMediaServlet:
    PATTERNS = [
        admin_path("/room/(?P<room_id>[^/]+)/media/quarantine"),
        # Synapse's older path, which tools still use.
        admin_path("/quarantine_media/(?P<room_id>[^/]+)"),
    ]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        count = await self._hs.admin.media.quarantine_room_media(admin.user_id, room_id)
        return 200, {"num_quarantined": count}


class QuarantineUserMediaServlet:
    PATTERNS = [admin_path("/user/(?P<user_id>[^/]+)/media/quarantine")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        count = await self._hs.admin.media.quarantine_user_media(admin.user_id, user_id)
        return 200, {"num_quarantined": count}


class ProtectMediaServlet:
    PATTERNS = [admin_path("/media/(?P<action>protect|unprotect)/(?P<media_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, action: str, media_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        await self._hs.admin.media.set_protected(admin.user_id, media_id, action == "protect")
        return 200, {}


class DeleteOldMediaServlet:
    PATTERNS = [
        admin_path("/media/delete"),
        # Synapse's older path, naming the (local) server.
        admin_path("/media/(?P<server_name>[^/]+)/delete"),
    ]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(
        self, request: HeddleRequest, server_name: str | None = None
    ) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        before_ts = _before_ts(request)
        size_gt = parse_int_query(request, "size_gt", 0, min_value=0)
        keep_profiles = parse_bool_query(request, "keep_profiles")
        if server_name is not None and server_name != self._hs.server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, "Can only delete local media")
        deleted = await self._hs.admin.media.delete_old_local_media(
            admin.user_id, before_ts, size_gt, True if keep_profiles is None else keep_profiles
        )
        return 200, {"deleted_media": deleted, "total": len(deleted)}


class MediaServlet:
    PATTERNS = [admin_path("/media" + SERVER_MEDIA)]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(
        self, request: HeddleRequest, server_name: str, media_id: str
    ) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        details = await self._hs.admin.media.media_details(server_name, media_id)
        return 200, {"media_info": details_json(details, server_name == self._hs.server_name)}

    async def on_DELETE(
        self, request: HeddleRequest, server_name: str, media_id: str
    ) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        deleted = await self._hs.admin.media.delete_media(admin.user_id, server_name, media_id)
        return 200, {"deleted_media": deleted, "total": len(deleted)}


class PurgeMediaCacheServlet:
    PATTERNS = [admin_path("/purge_media_cache")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        deleted = await self._hs.admin.media.purge_remote_media_cache(
            admin.user_id, _before_ts(request)
        )
        return 200, {"deleted": deleted}
