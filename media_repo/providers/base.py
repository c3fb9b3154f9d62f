"""The interface every media storage provider implements.

Keys are opaque strings chosen by the media repository (content-addressed: the SHA-256 of
the bytes, plus a suffix for thumbnails); providers never interpret them beyond mapping
them to a file or an object. All methods are async and never block the reactor.
"""

from __future__ import annotations

from typing import Protocol


class StorageUnavailable(Exception):
    """The storage backend could not be reached or answered with an error (502/504 to the
    client); nothing was recorded as stored."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class StorageProvider(Protocol):
    async def store(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key` (overwriting is harmless: same key, same bytes)."""

    async def fetch(self, key: str) -> bytes | None:
        """The bytes under `key`, or None if there are none."""

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Remove `key`; no error if it is already gone."""

    async def size_of(self, key: str) -> int | None:
        """The stored size in bytes, or None if absent (for checking direct uploads)."""

    def download_url(self, key: str, filename: str | None, content_type: str,
                     expires_in_s: int) -> str | None:
        """A short-lived URL the client can fetch the bytes from directly (S3 presigned
        GET), or None when the provider cannot hand out URLs (local files)."""

    def upload_url(self, key: str, content_type: str, max_bytes: int,
                   expires_in_s: int) -> str | None:
        """A short-lived URL a client can PUT the bytes to directly, or None."""
