"""The media repository: uploads (direct and asynchronous), downloads, limits and dedup.

Contents are stored once per SHA-256 (identical uploads share them, `media_content` counts
the references); a media ID is a row in `media` pointing at its contents. Bytes go to the
storage provider before the row is written, so a failed or half-done store never leaves a
media ID that claims to be available.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer, task, threads

from homeserver.clock import Clock
from homeserver.config import MediaConfig
from homeserver.errors import Codes, MatrixError
from homeserver.ratelimit import RateLimiter
from media_repo.providers.base import StorageProvider, StorageUnavailable
from media_repo.stored_objects import store_and_reference
from media_repo.thumbnails import (
    DEFAULT_THUMBNAIL_SIZES,
    METHODS,
    THUMBNAILABLE_TYPES,
    ThumbnailError,
    make_thumbnail,
    pick_pregenerated,
)
from storage.stores.media import MediaInfo, MediaStore

if TYPE_CHECKING:
    from media_repo.remote import RemoteMedia

T = TypeVar("T")
logger = logging.getLogger(__name__)

MEDIA_ID_LENGTH = 24
# A download of a media ID created but not uploaded yet waits at most this long.
DEFAULT_NOT_YET_UPLOADED_WAIT_MS = 20_000
MAX_NOT_YET_UPLOADED_WAIT_MS = 60_000
_POLL_INTERVAL_S = 0.25
_MEDIA_ID_ALPHABET = string.ascii_letters + string.digits


def new_media_id() -> str:
    return "".join(secrets.choice(_MEDIA_ID_ALPHABET) for _ in range(MEDIA_ID_LENGTH))


def is_valid_media_id(media_id: str) -> bool:
    """Media IDs are opaque but must be safe in a URL path and a storage key: the spec's
    `[A-Za-z0-9_-]+`."""
    return 0 < len(media_id) <= 255 and all(c in _MEDIA_ID_ALPHABET + "_-" for c in media_id)


def _staging_key(media_id: str) -> str:
    """Where a direct upload lands before it is checked."""
    return f"upload-{media_id}"


def content_type_matches(content_type: str, patterns: list[str]) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    family = base.split("/", 1)[0] + "/*"
    return any(p.lower() in (base, family) for p in patterns)


@dataclass(frozen=True)
class Download:
    info: MediaInfo
    data: bytes
    # For a thumbnail: its own type (the original's is in `info`).
    content_type: str | None = None


def _base_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class MediaRepository:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        reactor: Any,
        config: MediaConfig,
        store: MediaStore,
        provider: StorageProvider,
        upload_limiter: RateLimiter,
        remote: RemoteMedia | None = None,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._reactor = reactor
        self._config = config
        self._store = store
        self._provider = provider
        self._upload_limiter = upload_limiter
        # Thumbnails being generated after an upload, awaited at shutdown.
        self._background: set[defer.Deferred[None]] = set()
        # Other servers' media, fetched over federation. None: their media is 404.
        self.remote = remote

    @property
    def max_upload_bytes(self) -> int:
        return self._config.max_upload_bytes

    # ----- uploading -----------------------------------------------------------------------

    def _check_content_type(self, content_type: str) -> None:
        config = self._config
        if content_type_matches(content_type, config.blocked_content_types) or (
            config.allowed_content_types
            and not content_type_matches(content_type, config.allowed_content_types)
        ):
            raise MatrixError(
                403, Codes.FORBIDDEN, f"Uploads of type {content_type!r} are not allowed"
            )

    async def _check_quota(self, user_id: str, size: int) -> None:
        quota = self._config.max_bytes_per_user
        if quota and await self._store.bytes_uploaded_by(user_id) + size > quota:
            raise MatrixError(
                403, Codes.RESOURCE_LIMIT_EXCEEDED, "Your media storage quota is used up",
                limit_type="m.upload.quota",
            )

    async def _store_and_reference(
        self, key: str, data: bytes, content_type: str, reference: Callable[[int], Awaitable[T]]
    ) -> T:
        """Identical contents (and thumbnails) are stored once, under their hash: store
        `data` unless it is there, then add the row pointing at it (`reference`), safely
        against an admin deleting the same object meanwhile (`store_and_reference`)."""
        try:
            return await store_and_reference(
                self._clock, self._provider, self._store, key, data, content_type, reference
            )
        except StorageUnavailable as e:
            logger.warning("media storage unavailable: %s", e)
            raise MatrixError(
                504 if e.timed_out else 502, Codes.UNKNOWN, "Media storage is unavailable"
            ) from None

    async def upload(
        self, user_id: str, data: bytes, content_type: str, upload_name: str | None
    ) -> str:
        """Store a new upload; returns its mxc:// URI."""
        self._upload_limiter.check(user_id)
        self._check_size(len(data))
        self._check_content_type(content_type)
        await self._check_quota(user_id, len(data))
        uri = await self._store_new(user_id, data, content_type, upload_name)
        logger.info("%s uploaded %s (%d bytes, %s)", user_id, uri, len(data), content_type)
        return uri

    async def store_server_media(self, data: bytes, content_type: str) -> str:
        """Store media the server fetched itself (URL preview images): owned by no user, so
        no rate limit or quota; the caller bounds its size. Returns its mxc:// URI."""
        return await self._store_new(None, data, content_type, None)

    async def _store_new(
        self, user_id: str | None, data: bytes, content_type: str, upload_name: str | None
    ) -> str:
        """Store the bytes, then give them a new media ID; returns its mxc:// URI."""
        media_id = new_media_id()
        sha256 = hashlib.sha256(data).hexdigest()
        await self._store_and_reference(
            sha256,
            data,
            content_type,
            lambda generation: self._store.record_upload(
                self._server_name, media_id, user_id, content_type, upload_name, len(data),
                sha256, self._clock.time_msec(), key_generation=generation,
            ),
        )
        self._pregenerate(media_id, content_type, data)
        return f"mxc://{self._server_name}/{media_id}"

    def _pregenerate(self, media_id: str, content_type: str, data: bytes) -> None:
        """Make the configured thumbnail sizes of an image in the background (spec: servers
        SHOULD), so the first client asking does not wait."""
        if _base_type(content_type) not in THUMBNAILABLE_TYPES:
            return

        async def generate() -> None:
            for width, height, method in DEFAULT_THUMBNAIL_SIZES:
                try:
                    await self._thumbnail_for(
                        self._server_name, media_id, data, width, height, method, False
                    )
                except (ThumbnailError, MatrixError) as e:
                    logger.info("no thumbnails for %s: %s", media_id, e)
                    return
                except Exception:
                    logger.exception("thumbnailing %s failed", media_id)
                    return

        running = defer.ensureDeferred(generate())
        self._background.add(running)
        running.addBoth(lambda _: self._background.discard(running))

    async def stop(self) -> None:
        """Let background thumbnailing finish (at shutdown)."""
        while self._background:
            await defer.DeferredList(list(self._background))

    def _check_size(self, size: int) -> None:
        if size > self._config.max_upload_bytes:
            raise MatrixError(413, Codes.TOO_LARGE, "The upload is larger than allowed")

    def direct_upload_url(self, media_id: str, content_type: str) -> str | None:
        """With S3 and `direct_uploads`, a presigned PUT for a media ID from `create`: the
        client sends the bytes to storage, then calls `complete_direct_upload`."""
        s3 = self._config.s3
        if s3 is None or not s3.direct_uploads:
            return None
        return self._provider.upload_url(
            _staging_key(media_id), content_type, self._config.max_upload_bytes,
            s3.presigned_url_lifetime_ms // 1000,
        )

    async def complete_direct_upload(
        self, user_id: str, server_name: str, media_id: str, content_type: str,
        upload_name: str | None,
    ) -> None:
        """The client says its direct upload is done: check what arrived in storage (it
        exists, its size is within the limit) before the media ID points at it. The bytes
        are moved under their hash like any upload, so dedup and thumbnails still work."""
        if self._config.s3 is None or not self._config.s3.direct_uploads:
            raise MatrixError(404, Codes.UNRECOGNIZED, "Direct uploads are not enabled")
        staging = _staging_key(media_id)
        info = await self._pending_for(user_id, server_name, media_id)
        try:
            size = await self._provider.size_of(staging)
            if size is None:
                raise MatrixError(400, Codes.UNKNOWN, "Nothing was uploaded to the given URL")
            if size > self._config.max_upload_bytes:
                await self._provider.delete(staging)
                raise MatrixError(413, Codes.TOO_LARGE, "The upload is larger than allowed")
            data = await self._provider.fetch(staging)
        except StorageUnavailable as e:
            raise MatrixError(
                504 if e.timed_out else 502, Codes.UNKNOWN, "Media storage is unavailable"
            ) from None
        if data is None or len(data) != size:
            raise MatrixError(400, Codes.UNKNOWN, "The upload changed while being checked")
        try:
            await self.upload_to(user_id, info.server_name, media_id, data, content_type,
                                 upload_name, rate_limited=False)
        finally:
            await self._provider.delete(staging)

    async def _pending_for(self, user_id: str, server_name: str, media_id: str) -> MediaInfo:
        """A media ID from `create` that `user_id` may still upload into."""
        if server_name != self._server_name or not is_valid_media_id(media_id):
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown media ID")
        info = await self._store.get_media(server_name, media_id)
        now = self._clock.time_msec()
        if info is None or (
            not info.uploaded and info.unused_expires_at is not None
            and info.unused_expires_at <= now
        ):
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown media ID")
        if info.user_id != user_id:
            raise MatrixError(403, Codes.FORBIDDEN, "This media ID belongs to someone else")
        if info.uploaded:
            raise MatrixError(409, Codes.CANNOT_OVERWRITE_MEDIA, "Media already uploaded")
        return info

    async def create(self, user_id: str) -> tuple[str, int]:
        """Reserve a media ID for a later upload (async upload): (mxc URI, expiry)."""
        now = self._clock.time_msec()
        if await self._store.count_pending(user_id, now) >= self._config.max_pending_uploads_per_user:
            raise MatrixError(
                429, Codes.LIMIT_EXCEEDED, "Too many media IDs waiting for their upload",
                retry_after_ms=self._config.unused_expires_after_ms,
            )
        media_id = new_media_id()
        expires = now + self._config.unused_expires_after_ms
        await self._store.create_pending(self._server_name, media_id, user_id, now, expires)
        return f"mxc://{self._server_name}/{media_id}", expires

    async def upload_to(
        self,
        user_id: str,
        server_name: str,
        media_id: str,
        data: bytes,
        content_type: str,
        upload_name: str | None,
        rate_limited: bool = True,
    ) -> None:
        """Fill a media ID reserved by `create`."""
        await self._pending_for(user_id, server_name, media_id)
        now = self._clock.time_msec()
        if rate_limited:
            self._upload_limiter.check(user_id)
        self._check_size(len(data))
        self._check_content_type(content_type)
        await self._check_quota(user_id, len(data))
        sha256 = hashlib.sha256(data).hexdigest()
        if not await self._store_and_reference(
            sha256,
            data,
            content_type,
            lambda generation: self._store.record_upload(
                server_name, media_id, user_id, content_type, upload_name, len(data), sha256,
                now, pending=True, key_generation=generation,
            ),
        ):
            raise MatrixError(409, Codes.CANNOT_OVERWRITE_MEDIA, "Media already uploaded")
        self._pregenerate(media_id, content_type, data)

    # ----- downloading ---------------------------------------------------------------------

    async def get_media_info(
        self, server_name: str, media_id: str, wait_ms: int | None = None,
        allow_remote: bool = True,
    ) -> MediaInfo:
        """The metadata of an available media item: 404 M_NOT_FOUND if unknown or
        quarantined; for an ID whose upload has not happened, wait up to `wait_ms`, then
        504 M_NOT_YET_UPLOADED. Another server's media is our stored copy, fetched first
        unless `allow_remote` is false (`RemoteMedia.fetch`: 404, or 502 if unreachable)."""
        if not is_valid_media_id(media_id):
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown media ID")
        if server_name != self._server_name:
            if self.remote is None:
                raise MatrixError(
                    404, Codes.NOT_FOUND, "Media from other servers is not available"
                )
            return await self.remote.fetch(server_name, media_id, allow_remote=allow_remote)
        wait = DEFAULT_NOT_YET_UPLOADED_WAIT_MS if wait_ms is None else wait_ms
        deadline = self._clock.time_msec() + min(max(wait, 0), MAX_NOT_YET_UPLOADED_WAIT_MS)
        while True:
            info = await self._store.get_media(server_name, media_id)
            if info is None or info.quarantined:
                raise MatrixError(404, Codes.NOT_FOUND, "Unknown media ID")
            if info.uploaded:
                return info
            if self._clock.time_msec() >= deadline:
                raise MatrixError(504, Codes.NOT_YET_UPLOADED, "The media is not uploaded yet")
            await task.deferLater(self._reactor, _POLL_INTERVAL_S, lambda: None)

    def download_url(self, info: MediaInfo, file_name: str | None) -> str | None:
        """A presigned URL for the bytes when the provider can hand one out and the config
        asks for redirects (S3); None means the bytes are served by us."""
        s3 = self._config.s3
        if s3 is None or not s3.redirect_downloads or info.sha256 is None:
            return None
        return self._provider.download_url(
            info.sha256,
            file_name or info.upload_name,
            info.content_type or "application/octet-stream",
            s3.presigned_url_lifetime_ms // 1000,
        )

    async def download(
        self, server_name: str, media_id: str, wait_ms: int | None = None,
        allow_remote: bool = True,
    ) -> Download:
        info = await self.get_media_info(server_name, media_id, wait_ms, allow_remote)
        assert info.sha256 is not None
        try:
            data = await self._provider.fetch(info.sha256)
        except StorageUnavailable as e:
            logger.warning("media storage unavailable: %s", e)
            raise MatrixError(
                504 if e.timed_out else 502, Codes.UNKNOWN, "Media storage is unavailable"
            ) from None
        if data is None:
            logger.error("media %s/%s: contents %s missing from storage", server_name,
                         media_id, info.sha256)
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown media ID")
        return Download(info, data)

    # ----- thumbnails ----------------------------------------------------------------------

    async def thumbnail(
        self,
        server_name: str,
        media_id: str,
        width: int,
        height: int,
        method: str,
        animated: bool,
        wait_ms: int | None = None,
        allow_remote: bool = True,
    ) -> Download:
        """A thumbnail at the configured size that best serves the request (spec: servers
        return one of their sizes, never the exact request), made on first use and kept.
        400 M_UNKNOWN when the media is not an image that can be thumbnailed."""
        if method not in METHODS:
            raise MatrixError(400, Codes.INVALID_PARAM, "'method' must be crop or scale")
        if width < 1 or height < 1:
            raise MatrixError(400, Codes.INVALID_PARAM, "'width' and 'height' must be positive")
        # Another server's media is thumbnailed here, from our copy of the original.
        original = await self.download(server_name, media_id, wait_ms, allow_remote)
        if _base_type(original.info.content_type) not in THUMBNAILABLE_TYPES:
            raise MatrixError(400, Codes.UNKNOWN, "This media cannot be thumbnailed")
        w, h, m = pick_pregenerated(list(DEFAULT_THUMBNAIL_SIZES), width, height, method)
        data, content_type = await self._thumbnail_for(
            server_name, media_id, original.data, w, h, m, animated
        )
        return Download(original.info, data, content_type)

    async def _thumbnail_for(
        self, server_name: str, media_id: str, original: bytes, width: int, height: int,
        method: str, animated: bool,
    ) -> tuple[bytes, str]:
        for row in await self._store.get_thumbnails(server_name, media_id):
            if tuple(row[:3]) == (width, height, method) and bool(row[3]) == animated:
                stored = await self._fetch(row[5])
                if stored is not None:
                    return stored, row[4]
        try:
            thumb = await threads.deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(),
                make_thumbnail, original, width, height, method, animated,
            )
        except ThumbnailError as e:
            raise MatrixError(400, Codes.UNKNOWN, f"Cannot thumbnail this media: {e}") from None
        key = hashlib.sha256(thumb.data).hexdigest()
        await self._store_and_reference(
            key,
            thumb.data,
            thumb.content_type,
            lambda generation: self._store.store_thumbnail(
                server_name, media_id, width, height, method, animated, thumb.content_type,
                key, len(thumb.data), generation,
            ),
        )
        return thumb.data, thumb.content_type

    async def _fetch(self, key: str) -> bytes | None:
        try:
            return await self._provider.fetch(key)
        except StorageUnavailable as e:
            raise MatrixError(
                504 if e.timed_out else 502, Codes.UNKNOWN, "Media storage is unavailable"
            ) from None
