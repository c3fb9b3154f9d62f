"""Media bytes as files under one directory, sharded by the first characters of the key.

`base_dir/ab/cd/abcdef...`: two levels of two characters keep directories small for
content-addressed (hex) keys. Writes land in a temporary file in the target directory and
are renamed over the key, so a reader never sees a half-written file. All file I/O runs on
the reactor's thread pool.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import threads

from media_repo.providers.base import StorageUnavailable

T = TypeVar("T")

MAX_KEY_LENGTH = 200
_KEY_RE = re.compile(r"[A-Za-z0-9_.-]+")
# Temporary files start with this; keys may not start with "." so they never collide.
_TEMP_PREFIX = ".tmp-"


def validate_key(key: str) -> None:
    """Raise ValueError unless `key` is safe to use as a file name: only [A-Za-z0-9_.-],
    1 to 200 characters, no "..", not starting with "." (reserved for temporary files)."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"media key must be 1 to {MAX_KEY_LENGTH} characters")
    if not _KEY_RE.fullmatch(key):
        raise ValueError("media key may only contain A-Z, a-z, 0-9, '_', '.', '-'")
    if ".." in key or key.startswith("."):
        raise ValueError("media key may not contain '..' or start with '.'")


class FilesystemProvider:
    def __init__(self, base_dir: Path, reactor: Any) -> None:
        self._base_dir = Path(base_dir).absolute()
        self._reactor = reactor

    def path_for(self, key: str) -> Path:
        """Where `key` lives: base_dir/<key[0:2]>/<key[2:4]>/<key> (short keys get fewer
        levels). Raises ValueError for an unsafe key."""
        validate_key(key)
        shards = [part for part in (key[0:2], key[2:4]) if part not in ("", ".")]
        path = self._base_dir.joinpath(*shards, key)
        # Defence in depth: validation already makes escaping impossible.
        if os.path.commonpath([self._base_dir, path]) != str(self._base_dir):
            raise ValueError("media key escapes the storage directory")
        return path

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        try:
            return await threads.deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), func, *args
            )
        except OSError as e:
            raise StorageUnavailable(f"media storage I/O error: {e.strerror or e}") from e

    async def store(self, key: str, data: bytes, content_type: str) -> None:
        await self._in_thread(_write_atomically, self.path_for(key), data)

    async def fetch(self, key: str) -> bytes | None:
        return await self._in_thread(_read, self.path_for(key))

    async def exists(self, key: str) -> bool:
        return await self._in_thread(self.path_for(key).is_file)

    async def delete(self, key: str) -> None:
        # Empty shard directories are left in place: removing them would race with a
        # concurrent store into the same directory.
        await self._in_thread(self.path_for(key).unlink, True)

    async def size_of(self, key: str) -> int | None:
        return await self._in_thread(_size, self.path_for(key))

    def download_url(self, key: str, filename: str | None, content_type: str,
                     expires_in_s: int) -> str | None:
        return None

    def upload_url(self, key: str, content_type: str, max_bytes: int,
                   expires_in_s: int) -> str | None:
        return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it and rename it over `path`;
    on any failure the temporary file is removed and `path` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
