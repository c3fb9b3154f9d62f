"""Media repository over HTTP: uploads (direct and asynchronous), downloads through the
authenticated and the legacy endpoints, limits, and what is refused."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from nio import AsyncClient, UploadResponse

from tests.harness import HomeserverTestCase, ensure_deferred, nio, on_both_engines

MEDIA = "/_matrix/media/v3"
CLIENT_MEDIA = "/_matrix/client/v1/media"


class MediaTestCase(HomeserverTestCase):
    async def upload(
        self, token: str, data: bytes, content_type: str = "application/octet-stream",
        filename: str | None = None,
    ) -> Any:
        path = f"{MEDIA}/upload" + (f"?filename={filename}" if filename else "")
        return await self.request(
            "POST", path, raw=data, token=token, headers={"Content-Type": content_type}
        )

    async def uploaded(self, token: str, data: bytes, content_type: str = "image/png") -> str:
        r = await self.upload(token, data, content_type)
        assert r.code == 200, r
        uri = r.json["content_uri"]
        assert uri.startswith("mxc://"), uri
        return uri[len("mxc://"):]


@on_both_engines
class UploadDownloadTests(MediaTestCase):
    @ensure_deferred
    async def test_upload_then_download_byte_for_byte(self):
        alice = await self.register("alice")
        data = os.urandom(300_000)
        r = await self.upload(alice["access_token"], data, "application/pdf", "report.pdf")
        self.assertEqual(r.code, 200, r)
        server_media = r.json["content_uri"][len("mxc://"):]
        self.assertTrue(server_media.startswith("test.heddle/"))
        for path, token in (
            (f"{CLIENT_MEDIA}/download/{server_media}", alice["access_token"]),
            (f"{MEDIA}/download/{server_media}", None),
        ):
            r = await self.request("GET", path, token=token)
            self.assertEqual(r.code, 200, r)
            self.assertEqual(r.body, data)
            self.assertEqual(r.header("Content-Type"), "application/pdf")
            # Not a type browsers show safely: an attachment, never inline.
            self.assertEqual(r.header("Content-Disposition"), 'attachment; filename="report.pdf"')
            self.assertIn("sandbox", r.header("Content-Security-Policy"))
            self.assertEqual(r.header("X-Content-Type-Options"), "nosniff")
        # A file name in the path wins, and is encoded when it is not plain ASCII.
        r = await self.request(
            "GET", f"{CLIENT_MEDIA}/download/{server_media}/r%C3%A9sum%C3%A9.pdf",
            token=alice["access_token"],
        )
        self.assertEqual(
            r.header("Content-Disposition"), "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf"
        )

    @ensure_deferred
    async def test_images_are_inline_and_html_is_not(self):
        alice = await self.register("alice")
        token = alice["access_token"]
        png = await self.uploaded(token, b"\x89PNG fake", "image/png")
        html = await self.uploaded(token, b"<script>alert(1)</script>", "text/html")
        r = await self.request("GET", f"{CLIENT_MEDIA}/download/{png}", token=token)
        self.assertEqual(r.header("Content-Disposition"), "inline")
        r = await self.request("GET", f"{CLIENT_MEDIA}/download/{html}", token=token)
        self.assertEqual(r.header("Content-Disposition"), "attachment")
        self.assertEqual(r.header("Content-Type"), "text/html")

    @ensure_deferred
    async def test_identical_uploads_are_stored_once(self):
        alice = await self.register("alice")
        bob = await self.register("bob")
        data = b"the same bytes" * 1000
        first = await self.uploaded(alice["access_token"], data)
        second = await self.uploaded(bob["access_token"], data)
        self.assertNotEqual(first, second)
        sha = hashlib.sha256(data).hexdigest()
        row = await self.hs.db.run_interaction(
            "t", lambda txn: txn.select_one(
                "SELECT refcount, size FROM media_content WHERE sha256 = ?", (sha,)
            ),
        )
        self.assertEqual(tuple(row), (2, len(data)))
        store_dir = self.hs.config.resolve_path(self.hs.config.media.store_path)
        files = [f for _, _, names in os.walk(store_dir) for f in names]
        self.assertEqual(files, [sha])

    @ensure_deferred
    async def test_unknown_and_malformed_media(self):
        alice = await self.register("alice")
        token = alice["access_token"]
        for path in (
            f"{CLIENT_MEDIA}/download/test.heddle/doesNotExist",
            f"{CLIENT_MEDIA}/download/test.heddle/..%2F..%2Fetc%2Fpasswd",
            f"{CLIENT_MEDIA}/download/test.heddle/%2E%2E",
            f"{MEDIA}/download/test.heddle/a%00b",
            f"{MEDIA}/download/other.example/abcdef?allow_remote=false",
        ):
            r = await self.request("GET", path, token=token)
            self.assertError(r, 404, "M_NOT_FOUND")
        # Another server's media, whose server cannot be reached (tests resolve no names).
        r = await self.request("GET", f"{CLIENT_MEDIA}/download/other.example/abcdef",
                               token=token)
        self.assertError(r, 502, "M_UNKNOWN")
        r = await self.request("GET", f"{CLIENT_MEDIA}/download/test.heddle/abc")
        self.assertError(r, 401, "M_MISSING_TOKEN")
        r = await self.upload(token, b"x", filename="..%2Fescape")
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("POST", f"{MEDIA}/upload", raw=b"x")
        self.assertError(r, 401, "M_MISSING_TOKEN")

    @ensure_deferred
    async def test_config(self):
        alice = await self.register("alice")
        for path in (f"{CLIENT_MEDIA}/config", f"{MEDIA}/config"):
            r = await self.request("GET", path, token=alice["access_token"])
            self.assertEqual(r.code, 200, r)
            self.assertEqual(r.json, {"m.upload.size": self.hs.config.media.max_upload_bytes})

    @ensure_deferred
    async def test_nio_upload_and_download(self):
        await self.register("alice")
        client = AsyncClient(self.base_url, "@alice:test.heddle")
        try:
            from tests.harness import PASSWORD

            await nio(client.login(PASSWORD))
            data = os.urandom(50_000)
            response, _ = await nio(
                client.upload(lambda *_: data, content_type="image/jpeg",
                              filename="photo.jpg", filesize=len(data))
            )
            self.assertIsInstance(response, UploadResponse, response)
            downloaded = await nio(client.download(response.content_uri))
            self.assertEqual(downloaded.body, data)
            self.assertEqual(downloaded.content_type, "image/jpeg")
        finally:
            await nio(client.close())


@on_both_engines
class UploadLimitTests(MediaTestCase):
    config_overrides = {
        "media": {
            "max_upload_bytes": 10_000,
            "blocked_content_types": ["application/x-msdownload", "video/*"],
            "max_bytes_per_user": 15_000,
        }
    }

    @ensure_deferred
    async def test_too_large(self):
        alice = await self.register("alice")
        r = await self.upload(alice["access_token"], b"x" * 10_001)
        self.assertError(r, 413, "M_TOO_LARGE")
        # Past eight times the limit the body is not even read: the connection is closed
        # or a 413 comes back, but nothing is stored either way.
        self.assertEqual(await self._media_rows(), 0)
        r = await self.upload(alice["access_token"], b"x" * 10_000)
        self.assertEqual(r.code, 200, r)

    @ensure_deferred
    async def test_blocked_types_and_quota(self):
        alice = await self.register("alice")
        token = alice["access_token"]
        r = await self.upload(token, b"MZ", "application/x-msdownload")
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.upload(token, b"x", "video/mp4")
        self.assertError(r, 403, "M_FORBIDDEN")
        await self.uploaded(token, b"a" * 9_000, "image/png")
        r = await self.upload(token, b"b" * 9_000, "image/png")
        self.assertError(r, 403, "M_RESOURCE_LIMIT_EXCEEDED")
        self.assertEqual(await self._media_rows(), 1)

    async def _media_rows(self) -> int:
        row = await self.hs.db.run_interaction(
            "t", lambda txn: txn.select_one("SELECT COUNT(*) FROM media")
        )
        return int(row[0])


@on_both_engines
class UploadRateLimitTests(MediaTestCase):
    config_overrides = {
        "rate_limits": {"enabled": True, "media_upload_per_user": {"per_second": 0.01,
                                                                   "burst_count": 2},
                        "registration_per_address": {"per_second": 100, "burst_count": 100}},
    }

    @ensure_deferred
    async def test_uploads_are_rate_limited(self):
        alice = await self.register("alice")
        for _ in range(2):
            await self.uploaded(alice["access_token"], os.urandom(10))
        r = await self.upload(alice["access_token"], b"one more")
        body = self.assertError(r, 429, "M_LIMIT_EXCEEDED")
        self.assertGreater(body["retry_after_ms"], 0)


@on_both_engines
class AsyncUploadTests(MediaTestCase):
    @ensure_deferred
    async def test_create_then_upload(self):
        alice = await self.register("alice")
        token = alice["access_token"]
        r = await self.request("POST", "/_matrix/media/v1/create", {}, token=token)
        self.assertEqual(r.code, 200, r)
        server_media = r.json["content_uri"][len("mxc://"):]
        self.assertGreater(r.json["unused_expires_at"], 0)
        # Not uploaded yet: a download that will not wait answers 504 M_NOT_YET_UPLOADED.
        r = await self.request(
            "GET", f"{CLIENT_MEDIA}/download/{server_media}?timeout_ms=0", token=token
        )
        self.assertError(r, 504, "M_NOT_YET_UPLOADED")
        r = await self.request(
            "PUT", f"{MEDIA}/upload/{server_media}?filename=a.txt", raw=b"later",
            token=token, headers={"Content-Type": "text/plain"},
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{CLIENT_MEDIA}/download/{server_media}", token=token)
        self.assertEqual(r.body, b"later")
        self.assertEqual(r.header("Content-Disposition"), 'inline; filename="a.txt"')
        # Once uploaded, it cannot be overwritten.
        r = await self.request(
            "PUT", f"{MEDIA}/upload/{server_media}", raw=b"again", token=token,
            headers={"Content-Type": "text/plain"},
        )
        self.assertError(r, 409, "M_CANNOT_OVERWRITE_MEDIA")

    @ensure_deferred
    async def test_unused_ids_expire(self):
        alice = await self.register("alice")
        token = alice["access_token"]
        r = await self.request("POST", "/_matrix/media/v1/create", {}, token=token)
        server_media = r.json["content_uri"][len("mxc://"):]
        expires = r.json["unused_expires_at"]
        self.assertEqual(await self.hs.media_store.delete_expired_pending(expires - 1), 0)
        self.assertEqual(await self.hs.media_store.delete_expired_pending(expires), 1)
        r = await self.request(
            "PUT", f"{MEDIA}/upload/{server_media}", raw=b"too late", token=token,
            headers={"Content-Type": "text/plain"},
        )
        self.assertError(r, 404, "M_NOT_FOUND")

    @ensure_deferred
    async def test_someone_elses_media_id(self):
        alice = await self.register("alice")
        bob = await self.register("bob")
        r = await self.request("POST", "/_matrix/media/v1/create", {}, token=alice["access_token"])
        server_media = r.json["content_uri"][len("mxc://"):]
        r = await self.request(
            "PUT", f"{MEDIA}/upload/{server_media}", raw=b"mine now",
            token=bob["access_token"], headers={"Content-Type": "text/plain"},
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        for path in (f"{MEDIA}/upload/test.heddle/nope", f"{MEDIA}/upload/other.example/x"):
            r = await self.request(
                "PUT", path, raw=b"x", token=bob["access_token"],
                headers={"Content-Type": "text/plain"},
            )
            self.assertError(r, 404, "M_NOT_FOUND")

    @ensure_deferred
    async def test_pending_ids_are_limited(self):
        alice = await self.register("alice")
        limit = self.hs.config.media.max_pending_uploads_per_user
        for _ in range(limit):
            r = await self.request(
                "POST", "/_matrix/media/v1/create", {}, token=alice["access_token"]
            )
            self.assertEqual(r.code, 200, r)
        r = await self.request("POST", "/_matrix/media/v1/create", {}, token=alice["access_token"])
        self.assertError(r, 429, "M_LIMIT_EXCEEDED")


@on_both_engines
class LegacyDownloadsOffTests(MediaTestCase):
    config_overrides = {"media": {"legacy_unauthenticated_downloads": False}}

    @ensure_deferred
    async def test_only_authenticated_downloads(self):
        alice = await self.register("alice")
        server_media = await self.uploaded(alice["access_token"], b"data")
        r = await self.request("GET", f"{MEDIA}/download/{server_media}")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.request(
            "GET", f"{CLIENT_MEDIA}/download/{server_media}", token=alice["access_token"]
        )
        self.assertEqual(r.body, b"data")


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 130, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


@on_both_engines
class ThumbnailTests(MediaTestCase):
    async def _thumb(self, token: str | None, server_media: str, query: str, legacy=False):
        base = MEDIA if legacy else CLIENT_MEDIA
        return await self.request("GET", f"{base}/thumbnail/{server_media}?{query}", token=token)

    def _size(self, data: bytes) -> tuple[int, int]:
        import io

        from PIL import Image

        return Image.open(io.BytesIO(data)).size

    @ensure_deferred
    async def test_crop_and_scale(self):
        alice = await self.register("alice")
        token = alice["access_token"]
        photo = await self.uploaded(token, _jpeg(1600, 1200), "image/jpeg")
        r = await self._thumb(token, photo, "width=96&height=96&method=crop")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.header("Content-Type"), "image/jpeg")
        self.assertEqual(self._size(r.body), (96, 96))
        r = await self._thumb(token, photo, "width=300&height=300&method=scale")
        # The smallest configured scale size covering 300x300 is 640x480.
        self.assertEqual(self._size(r.body), (640, 480))
        r = await self._thumb(None, photo, "width=32&height=32&method=crop", legacy=True)
        self.assertEqual(self._size(r.body), (32, 32))
        await self.hs.media.stop()
        rows = await self.hs.media_store.get_thumbnails("test.heddle", photo.split("/")[1])
        # Configured sizes were made at upload; requests reuse them.
        self.assertEqual(len(rows), 5)

    @ensure_deferred
    async def test_refusals(self):
        alice = await self.register("alice")
        token = alice["access_token"]
        text = await self.uploaded(token, b"just text", "text/plain")
        corrupt = await self.uploaded(token, b"\x89PNG\r\n\x1a\n broken", "image/png")
        png = await self.uploaded(token, _png(50, 50), "image/png")
        self.assertError(await self._thumb(token, text, "width=32&height=32"), 400, "M_UNKNOWN")
        self.assertError(
            await self._thumb(token, corrupt, "width=32&height=32"), 400, "M_UNKNOWN"
        )
        self.assertError(
            await self._thumb(token, png, "width=32&height=32&method=zoom"), 400,
            "M_INVALID_PARAM",
        )
        self.assertError(await self._thumb(token, png, "width=32"), 400, "M_MISSING_PARAM")
        self.assertError(
            await self._thumb(token, png, "width=0&height=5"), 400, "M_INVALID_PARAM"
        )
        self.assertError(
            await self._thumb(token, "test.heddle/nothingHere", "width=32&height=32"), 404,
            "M_NOT_FOUND",
        )
        self.assertError(await self._thumb(None, png, "width=32&height=32"), 401,
                         "M_MISSING_TOKEN")

    @ensure_deferred
    async def test_decompression_bomb_is_refused(self):
        import struct
        import zlib

        def chunk(kind: bytes, payload: bytes) -> bytes:
            body = kind + payload
            return struct.pack(">I", len(payload)) + body + struct.pack(
                ">I", zlib.crc32(body) & 0xFFFFFFFF
            )

        # A small file declaring 50,000 x 50,000 pixels.
        bomb = (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
            + chunk(b"IEND", b"")
        )
        alice = await self.register("alice")
        token = alice["access_token"]
        server_media = await self.uploaded(token, bomb, "image/png")
        r = await self._thumb(token, server_media, "width=96&height=96&method=crop")
        self.assertError(r, 400, "M_UNKNOWN")
        # The original is still served as uploaded.
        r = await self.request("GET", f"{CLIENT_MEDIA}/download/{server_media}", token=token)
        self.assertEqual(r.body, bomb)


@on_both_engines
class S3StorageTests(MediaTestCase):
    """Media on S3-compatible storage (a moto server on loopback): uploads land in the
    bucket, downloads redirect to a presigned URL that serves the same bytes."""

    async def start_server(self, **overrides: Any) -> Any:
        from tests.moto_server import moto_endpoint, new_bucket

        self.bucket = new_bucket()
        s3 = {
            "bucket": self.bucket,
            "endpoint_url": moto_endpoint(),
            "region": "us-east-1",
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "timeout_ms": 5000,
            "direct_uploads": True,
        }
        return await super().start_server(media={"s3": s3, "max_upload_bytes": 200_000},
                                          **overrides)

    @ensure_deferred
    async def test_upload_goes_to_the_bucket_and_download_redirects(self):
        from twisted.internet import threads

        from tests.moto_server import s3_client

        alice = await self.register("alice")
        token = alice["access_token"]
        data = os.urandom(100_000)
        server_media = await self.uploaded(token, data, "image/png")
        keys = await threads.deferToThread(
            lambda: [o["Key"] for o in
                     s3_client().list_objects_v2(Bucket=self.bucket).get("Contents", [])]
        )
        self.assertIn(hashlib.sha256(data).hexdigest(), keys)
        r = await self.request("GET", f"{CLIENT_MEDIA}/download/{server_media}", token=token)
        self.assertEqual(r.code, 307, r)
        location = r.header("Location")
        self.assertTrue(location.startswith(s3_client().meta.endpoint_url), location)
        fetched = await self.request("GET", "", base_url=location)
        self.assertEqual(fetched.code, 200)
        self.assertEqual(fetched.body, data)
        self.assertEqual(fetched.header("Content-Type"), "image/png")
        # Legacy clients that cannot follow redirects get the bytes proxied.
        r = await self.request("GET", f"{MEDIA}/download/{server_media}")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.body, data)
        r = await self.request("GET", f"{MEDIA}/download/{server_media}?allow_redirect=true")
        self.assertEqual(r.code, 307)


    @ensure_deferred
    async def test_thumbnails_on_s3(self):
        import io

        from PIL import Image

        alice = await self.register("alice")
        token = alice["access_token"]
        photo = await self.uploaded(token, _jpeg(1200, 900), "image/jpeg")
        r = await self.request(
            "GET", f"{CLIENT_MEDIA}/thumbnail/{photo}?width=96&height=96&method=crop",
            token=token,
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(Image.open(io.BytesIO(r.body)).size, (96, 96))
        r = await self.request(
            "GET", f"{CLIENT_MEDIA}/thumbnail/{photo}?width=320&height=240&method=scale",
            token=token,
        )
        self.assertEqual(Image.open(io.BytesIO(r.body)).size, (320, 240))

    @ensure_deferred
    async def test_presigned_urls_expire(self):
        from urllib.parse import parse_qs, urlsplit

        alice = await self.register("alice")
        token = alice["access_token"]
        server_media = await self.uploaded(token, b"short-lived", "text/plain")
        r = await self.request("GET", f"{CLIENT_MEDIA}/download/{server_media}", token=token)
        query = parse_qs(urlsplit(r.header("Location")).query)
        # moto does not enforce expiry, so check what the URL asks of a real S3.
        self.assertEqual(
            query["X-Amz-Expires"], [str(self.hs.config.media.s3.presigned_url_lifetime_ms // 1000)]
        )

    @ensure_deferred
    async def test_direct_upload_to_storage(self):
        alice = await self.register("alice")
        bob = await self.register("bob")
        token = alice["access_token"]
        r = await self.request(
            "POST", "/_matrix/media/v1/create", {"org.heddle.content_type": "image/png"},
            token=token,
        )
        self.assertEqual(r.code, 200, r)
        server_media = r.json["content_uri"][len("mxc://"):]
        upload_url = r.json["org.heddle.upload_url"]
        data = os.urandom(50_000)
        put = await self.request(
            "PUT", "", raw=data, base_url=upload_url, headers={"Content-Type": "image/png"}
        )
        self.assertEqual(put.code, 200, put)
        complete = f"/_matrix/media/v1/org.heddle/upload_complete/{server_media}"
        # Someone else cannot claim it.
        r = await self.request("POST", complete, {"content_type": "image/png"},
                               token=bob["access_token"])
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("POST", complete, {"content_type": "image/png",
                                                  "filename": "d.png"}, token=token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{MEDIA}/download/{server_media}")
        self.assertEqual(r.body, data)
        r = await self.request("POST", complete, {"content_type": "image/png"}, token=token)
        self.assertError(r, 409, "M_CANNOT_OVERWRITE_MEDIA")

    @ensure_deferred
    async def test_direct_upload_checked_before_it_counts(self):
        alice = await self.register("alice")
        token = alice["access_token"]

        async def created() -> tuple[str, str]:
            r = await self.request("POST", "/_matrix/media/v1/create", {}, token=token)
            return (r.json["content_uri"][len("mxc://"):], r.json["org.heddle.upload_url"])

        # Nothing uploaded yet.
        server_media, _ = await created()
        complete = f"/_matrix/media/v1/org.heddle/upload_complete/{server_media}"
        r = await self.request("POST", complete, {}, token=token)
        self.assertError(r, 400, "M_UNKNOWN")
        # Too large: refused, and the staged object is gone.
        server_media, url = await created()
        put = await self.request(
            "PUT", "", raw=b"x" * 200_001, base_url=url,
            headers={"Content-Type": "application/octet-stream"},
        )
        self.assertEqual(put.code, 200, put)
        complete = f"/_matrix/media/v1/org.heddle/upload_complete/{server_media}"
        r = await self.request("POST", complete, {}, token=token)
        self.assertError(r, 413, "M_TOO_LARGE")
        r = await self.request(
            "GET", f"{CLIENT_MEDIA}/download/{server_media}?timeout_ms=0", token=token
        )
        self.assertError(r, 504, "M_NOT_YET_UPLOADED")


@on_both_engines
class S3DownTests(MediaTestCase):
    config_overrides = {
        "media": {
            "s3": {
                "bucket": "nowhere",
                # A loopback port nothing listens on.
                "endpoint_url": "http://127.0.0.1:9",
                "region": "us-east-1",
                "access_key_id": "testing",
                "secret_access_key": "testing",
                "timeout_ms": 1000,
            }
        }
    }

    @ensure_deferred
    async def test_storage_down_is_a_clear_502_and_nothing_recorded(self):
        alice = await self.register("alice")
        r = await self.upload(alice["access_token"], b"bytes", "text/plain")
        self.assertError(r, 502, "M_UNKNOWN")
        row = await self.hs.db.run_interaction(
            "t", lambda txn: txn.select_one("SELECT COUNT(*) FROM media")
        )
        self.assertEqual(row[0], 0)


@on_both_engines
class TruncatedUploadTests(MediaTestCase):
    @ensure_deferred
    async def test_upload_cut_short_records_nothing(self):
        from twisted.internet import protocol, reactor, task
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        alice = await self.register("alice")
        port = int(self.base_url.rsplit(":", 1)[1])
        request = (
            f"POST {MEDIA}/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {alice['access_token']}\r\n"
            "Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
        ).encode() + b"only the start of it"
        client = protocol.Protocol()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        await connectProtocol(endpoint, client)
        client.transport.write(request)
        await task.deferLater(reactor, 0.3, lambda: None)
        client.transport.loseConnection()
        await task.deferLater(reactor, 0.3, lambda: None)
        row = await self.hs.db.run_interaction(
            "t", lambda txn: txn.select_one("SELECT COUNT(*) FROM media")
        )
        self.assertEqual(row[0], 0)
        store_dir = self.hs.config.resolve_path(self.hs.config.media.store_path)
        self.assertEqual([f for _, _, names in os.walk(store_dir) for f in names], [])
