"""Media across servers: B fetches A's media over federation (the authenticated
multipart endpoint, a Location part, the legacy fallback), keeps it, thumbnails it, and
reports what went wrong; A's federation media endpoints themselves."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from PIL import Image
from twisted.internet import defer
from twisted.trial import unittest

import federation.transport.media as federation_media
from client_api.http import RawBody
from federation.client import RawResponse, build_path
from federation.errors import HttpResponseError
from media_repo.remote import disposition_file_name, parse_multipart
from tests.federation_helpers import FederationTestCase, Server
from tests.harness import ensure_deferred, on_both_engines

MEDIA = "/_matrix/media/v3"
CLIENT_MEDIA = "/_matrix/client/v1/media"
FED_MEDIA = "/_matrix/federation/v1/media"


def _png(width: int = 400, height: int = 300) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(out, format="PNG")
    return out.getvalue()


class FederationMediaTestCase(FederationTestCase):
    async def upload(self, server: Server, token: str, data: bytes, content_type: str,
                     filename: str | None = None) -> str:
        path = f"{MEDIA}/upload" + (f"?filename={filename}" if filename else "")
        r = await self.request("POST", path, raw=data, token=token,
                               headers={"Content-Type": content_type}, base_url=server.base_url)
        assert r.code == 200, r
        return str(r.json["content_uri"])[len("mxc://"):]

    def count_served(self, server: Server) -> list[str]:
        """Media IDs `server`'s repository serves bytes for, in order (every download
        through any endpoint, federation's included, goes through `download`)."""
        served: list[str] = []
        original = server.hs.media.download

        async def counting(server_name: str, media_id: str, *args: Any, **kwargs: Any) -> Any:
            served.append(media_id)
            return await original(server_name, media_id, *args, **kwargs)

        server.hs.media.download = counting  # type: ignore[method-assign]
        return served

    async def media_rows(self, server: Server) -> list[tuple]:
        return await server.hs.db.run_interaction(
            "t", lambda txn: txn.select_all(
                "SELECT server_name, media_id, user_id, content_type, upload_name, size"
                " FROM media ORDER BY created_ts"
            ),
        )

    def stored_files(self, server: Server) -> list[str]:
        store_dir = server.hs.config.resolve_path(server.hs.config.media.store_path)
        return sorted(f for _, _, names in os.walk(store_dir) for f in names)


@on_both_engines
class RemoteDownloadTests(FederationMediaTestCase):
    @ensure_deferred
    async def test_remote_media_is_fetched_once_then_served_from_the_cache(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        alice = await self.fed_user(a, "alice")
        bob = await self.fed_user(b, "bob")
        data = os.urandom(200_000)
        server_media = await self.upload(a, alice.token, data, "application/pdf", "report.pdf")
        self.assertTrue(server_media.startswith(a.server_name + "/"))
        served_by_a = self.count_served(a)
        path = f"{CLIENT_MEDIA}/download/{server_media}"
        # Two clients at once: one request reaches A.
        first, second = await defer.gatherResults([
            defer.ensureDeferred(self.call(b, "GET", path, token=bob.token)),
            defer.ensureDeferred(self.call(b, "GET", path, token=bob.token)),
        ])
        for r in (first, second):
            self.assertEqual(r.code, 200, r)
            self.assertEqual(r.body, data)
            self.assertEqual(r.header("Content-Type"), "application/pdf")
            self.assertEqual(r.header("Content-Disposition"), 'attachment; filename="report.pdf"')
        self.assertEqual(len(served_by_a), 1)
        # Recorded as A's media, owned by no local user, stored under its hash.
        media_id = server_media.split("/", 1)[1]
        self.assertEqual(
            [tuple(row) for row in await self.media_rows(b)],
            [(a.server_name, media_id, None, "application/pdf", "report.pdf", len(data))],
        )
        self.assertEqual(self.stored_files(b), [hashlib.sha256(data).hexdigest()])
        # Served from B's copy, even with A gone, and through the legacy endpoint too.
        await self.stop_peer(a)
        r = await self.call(b, "GET", path, token=bob.token)
        self.assertEqual((r.code, r.body), (200, data))
        r = await self.call(b, "GET", f"{MEDIA}/download/{server_media}")
        self.assertEqual((r.code, r.body), (200, data))
        self.assertEqual(len(served_by_a), 1)

    @ensure_deferred
    async def test_location_part_is_followed(self):
        """A keeps its media on S3 and answers with a presigned URL: B fetches the bytes
        from there (through its IP range filter) and keeps them."""
        from tests.moto_server import moto_endpoint, new_bucket

        s3 = {
            "bucket": new_bucket(), "endpoint_url": moto_endpoint(), "region": "us-east-1",
            "access_key_id": "testing", "secret_access_key": "testing", "timeout_ms": 5000,
        }
        a = await self.start_peer(0, media={"s3": s3})
        b = await self.start_peer(1)
        alice = await self.fed_user(a, "alice")
        bob = await self.fed_user(b, "bob")
        data = os.urandom(50_000)
        server_media = await self.upload(a, alice.token, data, "image/png", "cat.png")
        media_id = server_media.split("/", 1)[1]
        response = await b.hs.federation_client.get_raw(
            a.server_name, f"{FED_MEDIA}/download/{media_id}"
        )
        parts = parse_multipart(response.headers["content-type"], response.body)
        self.assertTrue(parts[1].headers["location"].startswith(moto_endpoint()))
        self.assertEqual(parts[1].body, b"")
        r = await self.call(b, "GET", f"{CLIENT_MEDIA}/download/{server_media}", token=bob.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.body, data)
        self.assertEqual(r.header("Content-Type"), "image/png")
        rows = await self.media_rows(b)
        self.assertEqual([tuple(row) for row in rows],
                         [(a.server_name, media_id, None, "image/png", "cat.png", len(data))])

    @ensure_deferred
    async def test_thumbnail_of_remote_image_is_made_locally(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        alice = await self.fed_user(a, "alice")
        bob = await self.fed_user(b, "bob")
        server_media = await self.upload(a, alice.token, _png(), "image/png")
        r = await self.call(
            b, "GET", f"{CLIENT_MEDIA}/thumbnail/{server_media}?width=64&height=64&method=scale",
            token=bob.token,
        )
        self.assertEqual(r.code, 200, r)
        self.assertIn(r.header("Content-Type"), ("image/png", "image/jpeg", "image/webp"))
        thumb = Image.open(io.BytesIO(r.body))
        self.assertLess(thumb.size[0], 400)
        media_id = server_media.split("/", 1)[1]
        rows = await b.hs.media_store.get_thumbnails(a.server_name, media_id)
        self.assertEqual(len(rows), 1)

    @ensure_deferred
    async def test_unknown_remote_media_is_404(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        bob = await self.fed_user(b, "bob")
        r = await self.call(
            b, "GET", f"{CLIENT_MEDIA}/download/{a.server_name}/doesNotExist", token=bob.token
        )
        self.assertError(r, 404, "M_NOT_FOUND")
        self.assertEqual(await self.media_rows(b), [])

    @ensure_deferred
    async def test_unreachable_origin_is_502(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        bob = await self.fed_user(b, "bob")
        await self.stop_peer(a)
        r = await self.call(
            b, "GET", f"{CLIENT_MEDIA}/download/{a.server_name}/freshMediaId", token=bob.token
        )
        self.assertError(r, 502, "M_UNKNOWN")
        self.assertEqual(await self.media_rows(b), [])

    @ensure_deferred
    async def test_garbage_answer_is_502_and_nothing_is_kept(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        alice = await self.fed_user(a, "alice")
        bob = await self.fed_user(b, "bob")
        server_media = await self.upload(a, alice.token, b"real bytes", "text/plain")
        for garbage in (
            RawBody(b"not multipart at all", {"Content-Type": "multipart/mixed; boundary=zz"}),
            RawBody(b"--zz\r\nContent-Type: application/json\r\n\r\n{}\r\n--zz--\r\n",
                    {"Content-Type": "multipart/mixed; boundary=zz"}),
            RawBody(b"plain bytes", {"Content-Type": "text/plain"}),
        ):
            self.patch(federation_media, "multipart_body",
                       lambda *args, garbage=garbage, **kwargs: garbage)
            r = await self.call(b, "GET", f"{CLIENT_MEDIA}/download/{server_media}",
                                token=bob.token)
            self.assertError(r, 502, "M_UNKNOWN")
        self.assertEqual(await self.media_rows(b), [])
        self.assertEqual(self.stored_files(b), [])

    @ensure_deferred
    async def test_remote_media_over_the_size_limit_is_502(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1, media={"max_upload_bytes": 4096})
        alice = await self.fed_user(a, "alice")
        bob = await self.fed_user(b, "bob")
        big = await self.upload(a, alice.token, os.urandom(100_000), "application/pdf")
        small = await self.upload(a, alice.token, os.urandom(4000), "application/pdf")
        r = await self.call(b, "GET", f"{CLIENT_MEDIA}/download/{big}", token=bob.token)
        self.assertError(r, 502, "M_UNKNOWN")
        self.assertEqual(await self.media_rows(b), [])
        r = await self.call(b, "GET", f"{CLIENT_MEDIA}/download/{small}", token=bob.token)
        self.assertEqual(r.code, 200, r)

    @ensure_deferred
    async def test_falls_back_to_the_legacy_endpoint(self):
        """A server without the federation media endpoints (404 M_UNRECOGNIZED) is asked
        the deprecated client endpoint, unsigned, with allow_remote=false."""
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        bob = await self.fed_user(b, "bob")
        client = b.hs.federation_client
        asked: list[tuple[str, Any, bool]] = []

        async def old_server(destination: str, path: str, args: Any = None, *,
                             signed: bool = True, **kwargs: Any) -> RawResponse:
            asked.append((path, args, signed))
            if path.startswith("/_matrix/federation/"):
                raise HttpResponseError(destination, 404, {"errcode": "M_UNRECOGNIZED"})
            return RawResponse(200, {"content-type": "image/gif",
                                     "content-disposition": "inline; filename=\"a b.gif\""},
                               b"GIF89a legacy")

        self.patch(client, "get_raw", old_server)
        r = await self.call(b, "GET", f"{CLIENT_MEDIA}/download/{a.server_name}/oldMedia",
                            token=bob.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.body, b"GIF89a legacy")
        self.assertEqual(r.header("Content-Type"), "image/gif")
        self.assertEqual(asked, [
            (f"{FED_MEDIA}/download/oldMedia", None, True),
            (build_path("/_matrix/media/v3/download/%s/%s", a.server_name, "oldMedia"),
             {"allow_remote": ["false"]}, False),
        ])
        rows = await self.media_rows(b)
        self.assertEqual([tuple(row) for row in rows],
                         [(a.server_name, "oldMedia", None, "image/gif", "a b.gif", 13)])


@on_both_engines
class FederationMediaEndpointTests(FederationMediaTestCase):
    @ensure_deferred
    async def test_download_and_thumbnail_answer_multipart(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        alice = await self.fed_user(a, "alice")
        data = os.urandom(5000)
        media_id = (await self.upload(a, alice.token, data, "application/pdf", "x.pdf"))
        media_id = media_id.split("/", 1)[1]
        client = b.hs.federation_client
        response = await client.get_raw(a.server_name, f"{FED_MEDIA}/download/{media_id}")
        self.assertTrue(response.headers["content-type"].startswith("multipart/mixed; boundary="))
        parts = parse_multipart(response.headers["content-type"], response.body)
        self.assertEqual(len(parts), 2)
        self.assertEqual(parts[0].headers, {"content-type": "application/json"})
        self.assertEqual(parts[0].body, b"{}")
        self.assertEqual(parts[1].headers["content-type"], "application/pdf")
        self.assertEqual(disposition_file_name(parts[1].headers["content-disposition"]), "x.pdf")
        self.assertEqual(parts[1].body, data)

        png = (await self.upload(a, alice.token, _png(), "image/png")).split("/", 1)[1]
        response = await client.get_raw(
            a.server_name, f"{FED_MEDIA}/thumbnail/{png}",
            {"width": ["32"], "height": ["32"], "method": ["crop"]},
        )
        parts = parse_multipart(response.headers["content-type"], response.body)
        self.assertEqual(len(parts), 2)
        self.assertTrue(parts[1].headers["content-type"].startswith("image/"))
        self.assertLess(Image.open(io.BytesIO(parts[1].body)).size[0], 400)

    @ensure_deferred
    async def test_unauthenticated_unknown_and_remote_media_are_refused(self):
        a = await self.start_peer(0)
        b = await self.start_peer(1)
        alice = await self.fed_user(a, "alice")
        media_id = (await self.upload(a, alice.token, b"x", "text/plain")).split("/", 1)[1]
        client = b.hs.federation_client
        with self.assertRaises(HttpResponseError) as caught:
            await client.get_raw(a.server_name, f"{FED_MEDIA}/download/{media_id}",
                                 signed=False)
        self.assertEqual((caught.exception.code, caught.exception.errcode),
                         (401, "M_UNAUTHORIZED"))
        for path in (f"{FED_MEDIA}/download/nope", f"{FED_MEDIA}/thumbnail/nope?width=1&height=1"):
            with self.assertRaises(HttpResponseError) as caught:
                await client.get_raw(a.server_name, path)
            self.assertEqual((caught.exception.code, caught.exception.errcode),
                             (404, "M_NOT_FOUND"))
        # B serves only its own media: A's, cached on B, is not B's to hand out.
        bob = await self.fed_user(b, "bob")
        r = await self.call(b, "GET", f"{CLIENT_MEDIA}/download/{a.server_name}/{media_id}",
                            token=bob.token)
        self.assertEqual(r.code, 200, r)
        with self.assertRaises(HttpResponseError) as caught:
            await a.hs.federation_client.get_raw(b.server_name, f"{FED_MEDIA}/download/{media_id}")
        self.assertEqual(caught.exception.code, 404)


class MultipartParsingTests(unittest.TestCase):
    """Pure parsing: no servers."""

    def test_preamble_padding_and_headerless_part(self):
        body = (b"preamble\r\n--b1 \r\nContent-Type: application/json\r\n\r\n{}\r\n"
                b"--b1\r\n\r\nraw\r\n--b1--\r\nepilogue")
        parts = parse_multipart('multipart/mixed; boundary="b1"', body)
        self.assertEqual([(p.headers, p.body) for p in parts],
                         [({"content-type": "application/json"}, b"{}"), ({}, b"raw")])

    def test_not_multipart_or_unterminated(self):
        for content_type, body in (
            ("application/json", b"{}"),
            ("multipart/mixed", b"--x\r\n\r\n\r\n--x--"),
            ("multipart/mixed; boundary=x", b"--x\r\nContent-Type: a\r\n\r\nbody"),
        ):
            with self.assertRaises(ValueError):
                parse_multipart(content_type, body)

    def test_file_names(self):
        self.assertEqual(disposition_file_name("inline; filename*=utf-8''r%C3%A9sum%C3%A9.pdf"),
                         "résumé.pdf")
        self.assertEqual(disposition_file_name('attachment; filename="a.txt"'), "a.txt")
        self.assertIsNone(disposition_file_name('attachment; filename="../etc/passwd"'))
        self.assertIsNone(disposition_file_name("inline"))
