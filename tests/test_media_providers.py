"""Media storage providers: the local filesystem and S3 (against a moto server on
loopback). Both pass the same contract; each then has its own edge cases."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from media_repo.headers import content_disposition
from media_repo.providers.base import StorageProvider, StorageUnavailable
from media_repo.providers.filesystem import FilesystemProvider
from media_repo.providers.s3 import S3Provider
from tests.harness import ensure_deferred
from tests.moto_server import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    free_port,
    moto_endpoint,
    new_bucket,
    s3_client,
)

KEY = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
OTHER_KEY = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
UNSAFE_KEYS = ("../x", "a/b", "", "x" * 300, "..", ".hidden", "ab/../../etc", "a\\b",
               "a\x00b", "/etc/passwd", "ab cd")


def http_request(method: str, url: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A blocking HTTP request (run it in a thread): status, headers (lower-cased), body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        conn.close()


async def fetch_url(method: str, url: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return await threads.deferToThread(http_request, method, url, body, headers)


class ProviderContract:
    """What every StorageProvider does; subclasses set `self.provider` in setUp."""

    provider: StorageProvider

    # Provided by unittest.TestCase.
    assertEqual: Any
    assertIsNone: Any
    assertTrue: Any
    assertFalse: Any

    @ensure_deferred
    async def test_round_trip_is_byte_for_byte(self) -> None:
        data = bytes(range(256)) * 4
        await self.provider.store(KEY, data, "application/octet-stream")
        self.assertEqual(await self.provider.fetch(KEY), data)
        self.assertTrue(await self.provider.exists(KEY))
        self.assertEqual(await self.provider.size_of(KEY), len(data))
        await self.provider.delete(KEY)
        self.assertFalse(await self.provider.exists(KEY))
        self.assertIsNone(await self.provider.fetch(KEY))
        self.assertIsNone(await self.provider.size_of(KEY))

    @ensure_deferred
    async def test_five_megabytes_of_random_data_round_trip(self) -> None:
        data = os.urandom(5 * 1024 * 1024)
        await self.provider.store(KEY, data, "application/octet-stream")
        self.assertEqual(await self.provider.fetch(KEY), data)
        self.assertEqual(await self.provider.size_of(KEY), len(data))

    @ensure_deferred
    async def test_empty_file_round_trips(self) -> None:
        await self.provider.store(KEY, b"", "text/plain")
        self.assertTrue(await self.provider.exists(KEY))
        self.assertEqual(await self.provider.fetch(KEY), b"")
        self.assertEqual(await self.provider.size_of(KEY), 0)

    @ensure_deferred
    async def test_missing_key_is_absent(self) -> None:
        self.assertIsNone(await self.provider.fetch(KEY))
        self.assertFalse(await self.provider.exists(KEY))
        self.assertIsNone(await self.provider.size_of(KEY))

    @ensure_deferred
    async def test_deleting_a_missing_key_is_not_an_error(self) -> None:
        await self.provider.delete(KEY)
        await self.provider.store(KEY, b"x", "text/plain")
        await self.provider.delete(KEY)
        await self.provider.delete(KEY)
        self.assertFalse(await self.provider.exists(KEY))

    @ensure_deferred
    async def test_overwrite_replaces_the_bytes(self) -> None:
        await self.provider.store(KEY, b"first version, longer", "text/plain")
        await self.provider.store(KEY, b"second", "text/plain")
        self.assertEqual(await self.provider.fetch(KEY), b"second")
        self.assertEqual(await self.provider.size_of(KEY), 6)

    @ensure_deferred
    async def test_keys_are_independent(self) -> None:
        await self.provider.store(KEY, b"one", "text/plain")
        await self.provider.store(OTHER_KEY, b"two", "text/plain")
        await self.provider.store(KEY + "-thumb-32x32", b"three", "image/png")
        self.assertEqual(await self.provider.fetch(KEY), b"one")
        self.assertEqual(await self.provider.fetch(OTHER_KEY), b"two")
        self.assertEqual(await self.provider.fetch(KEY + "-thumb-32x32"), b"three")
        await self.provider.delete(KEY)
        self.assertEqual(await self.provider.fetch(OTHER_KEY), b"two")

    @ensure_deferred
    async def test_concurrent_stores_of_one_key_leave_whole_bytes(self) -> None:
        data = os.urandom(256 * 1024)
        await defer.gatherResults([
            defer.ensureDeferred(self.provider.store(KEY, data, "application/octet-stream"))
            for _ in range(8)
        ], consumeErrors=True)
        self.assertEqual(await self.provider.fetch(KEY), data)

    @ensure_deferred
    async def test_unsafe_keys_are_rejected(self) -> None:
        for key in UNSAFE_KEYS:
            for call in (
                lambda k: self.provider.store(k, b"x", "text/plain"),
                self.provider.fetch,
                self.provider.exists,
                self.provider.size_of,
                self.provider.delete,
            ):
                try:
                    await call(key)
                except ValueError:
                    continue
                raise AssertionError(f"key {key!r} was accepted")


class FilesystemProviderTests(ProviderContract, unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="heddle-media-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        self.base_dir = self.root / "media"
        self.provider = self.fs = FilesystemProvider(self.base_dir, reactor)

    def all_files(self) -> list[Path]:
        return [Path(d) / f for d, _, files in os.walk(self.root) for f in files]

    def temp_files(self) -> list[Path]:
        return [p for p in self.all_files() if p.name.startswith(".")]

    @ensure_deferred
    async def test_files_are_sharded_by_the_first_four_characters(self) -> None:
        await self.fs.store(KEY, b"x", "text/plain")
        self.assertEqual(self.all_files(), [self.base_dir / "01" / "23" / KEY])

    @ensure_deferred
    async def test_short_keys_stay_inside_the_base_directory(self) -> None:
        for key in ("a", "ab", "abc", "a.", "ab.", "a-.b"):
            await self.fs.store(key, key.encode(), "text/plain")
            self.assertEqual(await self.fs.fetch(key), key.encode())
        for path in self.all_files():
            self.assertTrue(path.resolve().is_relative_to(self.base_dir.resolve()), path)

    @ensure_deferred
    async def test_traversal_keys_touch_nothing(self) -> None:
        (self.root / "x").write_bytes(b"outside")
        await self.test_unsafe_keys_are_rejected()
        self.assertEqual((self.root / "x").read_bytes(), b"outside")
        self.assertEqual(self.all_files(), [self.root / "x"])

    @ensure_deferred
    async def test_no_temporary_files_are_left_behind(self) -> None:
        for i in range(5):
            await self.fs.store(KEY, os.urandom(1000 + i), "application/octet-stream")
        await self.fs.store(OTHER_KEY, b"x", "text/plain")
        self.assertEqual(self.temp_files(), [])
        self.assertEqual(len(self.all_files()), 2)

    @ensure_deferred
    async def test_failed_rename_leaves_no_file_under_the_key(self) -> None:
        def failing_replace(src: Any, dst: Any) -> None:
            raise OSError(28, "No space left on device")

        self.patch(os, "replace", failing_replace)
        with self.assertRaises(StorageUnavailable):
            await self.fs.store(KEY, b"new bytes", "text/plain")
        self.assertFalse(await self.fs.exists(KEY))
        self.assertEqual(self.temp_files(), [])

    @ensure_deferred
    async def test_failed_overwrite_keeps_the_old_bytes(self) -> None:
        await self.fs.store(KEY, b"old bytes", "text/plain")
        original_fsync = os.fsync

        def failing_fsync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        self.patch(os, "fsync", failing_fsync)
        with self.assertRaises(StorageUnavailable):
            await self.fs.store(KEY, b"new bytes that never land", "text/plain")
        self.patch(os, "fsync", original_fsync)
        self.assertEqual(await self.fs.fetch(KEY), b"old bytes")
        self.assertEqual(self.temp_files(), [])

    @ensure_deferred
    async def test_unreadable_storage_is_unavailable_not_missing(self) -> None:
        await self.fs.store(KEY, b"x", "text/plain")
        path = self.fs.path_for(KEY)
        path.unlink()
        path.mkdir()  # a directory where the file should be: reading it fails
        with self.assertRaises(StorageUnavailable):
            await self.fs.fetch(KEY)

    def test_no_urls_for_local_files(self) -> None:
        self.assertIsNone(self.fs.download_url(KEY, "a.png", "image/png", 60))
        self.assertIsNone(self.fs.upload_url(KEY, "image/png", 1000, 60))


class S3ProviderTests(ProviderContract, unittest.TestCase):
    def setUp(self) -> None:
        self.endpoint = moto_endpoint()
        self.bucket = new_bucket()
        self.provider = self.s3 = self.make_provider(self.endpoint)

    def make_provider(self, endpoint: str, **kwargs: Any) -> S3Provider:
        return S3Provider(self.bucket, endpoint, REGION, ACCESS_KEY_ID, SECRET_ACCESS_KEY,
                          reactor, **kwargs)

    @ensure_deferred
    async def test_store_sets_the_content_type(self) -> None:
        await self.s3.store(KEY, b"{}", "application/json")
        head = s3_client().head_object(Bucket=self.bucket, Key=KEY)
        self.assertEqual(head["ContentType"], "application/json")

    @ensure_deferred
    async def test_key_prefix_is_prepended(self) -> None:
        prefixed = self.make_provider(self.endpoint, key_prefix="media/")
        await prefixed.store(KEY, b"x", "text/plain")
        keys = [o["Key"] for o in
                s3_client().list_objects_v2(Bucket=self.bucket).get("Contents", [])]
        self.assertEqual(keys, [f"media/{KEY}"])
        self.assertFalse(await self.s3.exists(KEY))
        self.assertEqual(await prefixed.fetch(KEY), b"x")

    @ensure_deferred
    async def test_presigned_download_serves_the_bytes_with_headers(self) -> None:
        data = os.urandom(100_000)
        await self.s3.store(KEY, data, "application/octet-stream")
        url = self.s3.download_url(KEY, "holiday snap.png", "image/png", 60)
        assert url is not None
        status, headers, body = await fetch_url("GET", url)
        self.assertEqual(status, 200)
        self.assertEqual(body, data)
        self.assertEqual(headers["content-type"], "image/png")
        self.assertEqual(headers["content-disposition"], 'inline; filename="holiday snap.png"')

    @ensure_deferred
    async def test_presigned_download_of_unsafe_type_is_an_attachment(self) -> None:
        await self.s3.store(KEY, b"<script>alert(1)</script>", "text/html")
        url = self.s3.download_url(KEY, "naïve \"page\".html", "text/html", 60)
        assert url is not None
        status, headers, _ = await fetch_url("GET", url)
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-disposition"],
                         "attachment; filename*=utf-8''na%C3%AFve%20%22page%22.html")

    def test_presigned_urls_carry_their_expiry(self) -> None:
        for url in (self.s3.download_url(KEY, None, "text/plain", 90),
                    self.s3.upload_url(KEY, "text/plain", 1000, 90)):
            assert url is not None
            query = parse_qs(urlsplit(url).query)
            self.assertEqual(query["X-Amz-Expires"], ["90"])
            self.assertEqual(query["X-Amz-Algorithm"], ["AWS4-HMAC-SHA256"])
            signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
            age = datetime.now(UTC).replace(tzinfo=None) - signed_at
            self.assertLess(abs(age.total_seconds()), 60)

    @ensure_deferred
    async def test_expired_presigned_download_is_refused(self) -> None:
        await self.s3.store(KEY, b"secret", "text/plain")
        url = self.s3.download_url(KEY, None, "text/plain", 1)
        assert url is not None
        await task.deferLater(reactor, 2.1, lambda: None)
        status, _, body = await fetch_url("GET", url)
        if status == 200:
            # moto (5.x) checks neither signatures nor expiry of presigned URLs; real S3
            # and MinIO answer 403 AccessDenied "Request has expired".
            raise unittest.SkipTest("moto does not enforce presigned URL expiry")
        self.assertEqual(status, 403)
        self.assertNotIn(b"secret", body)

    @ensure_deferred
    async def test_presigned_upload_stores_the_bytes(self) -> None:
        data = os.urandom(50_000)
        url = self.s3.upload_url(KEY, "image/jpeg", len(data), 60)
        assert url is not None
        status, _, _ = await fetch_url("PUT", url, data, {"Content-Type": "image/jpeg"})
        self.assertEqual(status, 200)
        self.assertEqual(await self.s3.fetch(KEY), data)
        self.assertEqual(await self.s3.size_of(KEY), len(data))
        head = s3_client().head_object(Bucket=self.bucket, Key=KEY)
        self.assertEqual(head["ContentType"], "image/jpeg")

    @ensure_deferred
    async def test_endpoint_down_is_unavailable_quickly(self) -> None:
        down = self.make_provider(f"http://127.0.0.1:{free_port()}", timeout_s=1,
                                  max_attempts=2)
        started = time.monotonic()
        for call in (
            lambda: down.store(KEY, b"x", "text/plain"),
            lambda: down.fetch(KEY),
            lambda: down.exists(KEY),
            lambda: down.size_of(KEY),
            lambda: down.delete(KEY),
        ):
            with self.assertRaises(StorageUnavailable) as caught:
                await call()
            self.assertFalse(caught.exception.timed_out)
        self.assertLess(time.monotonic() - started, 10)
        self.assertFalse(await self.s3.exists(KEY))

    @ensure_deferred
    async def test_silent_endpoint_times_out(self) -> None:
        # Accepts connections (the kernel does, via the backlog) but never answers.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        silent = self.make_provider(f"http://127.0.0.1:{port}", timeout_s=0.5,
                                    max_attempts=1)
        started = time.monotonic()
        with self.assertRaises(StorageUnavailable) as caught:
            await silent.store(KEY, b"x", "text/plain")
        self.assertTrue(caught.exception.timed_out)
        self.assertLess(time.monotonic() - started, 5)
        self.assertFalse(await self.s3.exists(KEY))

    @ensure_deferred
    async def test_missing_bucket_is_unavailable(self) -> None:
        gone = S3Provider("heddle-no-such-bucket", self.endpoint, REGION, ACCESS_KEY_ID,
                          SECRET_ACCESS_KEY, reactor)
        with self.assertRaises(StorageUnavailable):
            await gone.store(KEY, b"x", "text/plain")
        with self.assertRaises(StorageUnavailable):
            await gone.fetch(KEY)


class ContentDispositionTests(unittest.TestCase):
    def test_safe_types_are_inline(self) -> None:
        self.assertEqual(content_disposition("image/png", None), "inline")
        self.assertEqual(content_disposition("Text/Plain; charset=utf-8", "a.txt"),
                         'inline; filename="a.txt"')

    def test_other_types_are_attachments(self) -> None:
        for content_type in ("text/html", "image/svg+xml", "application/javascript", ""):
            self.assertEqual(content_disposition(content_type, None), "attachment")

    def test_non_ascii_and_quotes_are_percent_encoded(self) -> None:
        self.assertEqual(content_disposition("image/png", "日本.png"),
                         "inline; filename*=utf-8''%E6%97%A5%E6%9C%AC.png")
        self.assertEqual(content_disposition("image/png", 'a"b\\c'),
                         "inline; filename*=utf-8''a%22b%5Cc")
        self.assertEqual(content_disposition("image/png", "a\r\nb"),
                         "inline; filename*=utf-8''a%0D%0Ab")
