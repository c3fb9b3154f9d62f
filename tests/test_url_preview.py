"""URL previews (GET /_matrix/client/v1/media/preview_url and the legacy endpoint) against a
real origin server on loopback: OpenGraph parsing, the image kept as our own media,
redirects, size and time limits, the IP range block list, caching and errors."""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import quote

from PIL import Image
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server

from homeserver.errors import MatrixError
from media_repo.preview import parse_html, parse_preview_url
from tests.harness import HomeserverTestCase, ensure_deferred, on_both_engines

CLIENT_MEDIA = "/_matrix/client/v1/media"
LEGACY_MEDIA = "/_matrix/media/v3"
MAX_RESPONSE_BYTES = 100_000


def png_bytes(width: int = 12, height: int = 7) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(out, format="PNG")
    return out.getvalue()


PNG = png_bytes()


class Origin(resource.Resource):
    """The web server being previewed. Counts requests per path."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.base = ""  # http://127.0.0.1:<port>, set once listening
        self.hits: dict[str, int] = {}
        self.hosts: list[str] = []
        self.waiting: list[server.Request] = []

    def render_GET(self, request: server.Request) -> Any:
        path = request.path.decode()
        self.hits[path] = self.hits.get(path, 0) + 1
        self.hosts.append((request.getHeader(b"host") or b"").decode())
        route = getattr(self, "page_" + path.strip("/").replace("-", "_").replace(".", "_"), None)
        if route is None:
            request.setResponseCode(404)
            return b"not here"
        return route(request)

    def _html(self, request: server.Request, html: str, charset: str = "utf-8") -> bytes:
        request.setHeader(b"Content-Type", f"text/html; charset={charset}".encode())
        return html.encode(charset)

    def _redirect(self, request: server.Request, code: int, location: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Location", location.encode())
        return b"moved"

    def page_og(self, request: server.Request) -> bytes:
        return self._html(request, """<!doctype html><html><head>
            <title>The page title</title>
            <meta property="og:title" content="Matrix &amp; friends">
            <meta property="og:description" content="  A   long
                description ">
            <meta property="og:site_name" content="Example">
            <meta property="og:image" content="/image.png">
            <meta property="og:image:width" content="9999">
            <meta name="description" content="not this one">
            </head><body><p>Hello</p></body></html>""")

    def page_title_only(self, request: server.Request) -> bytes:
        return self._html(request, """<html><head><title> Just a
            title </title><meta name="description" content="Plain description"></head>
            <body></body></html>""")

    def page_latin1(self, request: server.Request) -> bytes:
        return self._html(request, "<title>Caf\u00e9 cr\u00e8me</title>", charset="iso-8859-1")

    def page_image_png(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"image/png")
        return PNG

    def page_not_an_image(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"image/png")
        return b"this is not a PNG"

    def page_broken_image(self, request: server.Request) -> bytes:
        return self._html(
            request, '<title>Broken</title><meta property="og:image" content="/not-an-image">'
        )

    def page_blocked_image(self, request: server.Request) -> bytes:
        image = self.base.replace("127.0.0.1", "127.0.0.2") + "/image.png"
        return self._html(
            request, f'<title>Blocked image</title><meta property="og:image" content="{image}">'
        )

    def page_r1(self, request: server.Request) -> bytes:
        return self._redirect(request, 302, "/r2")

    def page_r2(self, request: server.Request) -> bytes:
        return self._redirect(request, 301, f"{self.base}/r3")

    def page_r3(self, request: server.Request) -> bytes:
        return self._redirect(request, 307, "og")

    def page_loop(self, request: server.Request) -> bytes:
        return self._redirect(request, 302, "/loop")

    def page_to_blocked(self, request: server.Request) -> bytes:
        return self._redirect(request, 302, self.base.replace("127.0.0.1", "127.0.0.2") + "/og")

    def page_to_ftp(self, request: server.Request) -> bytes:
        return self._redirect(request, 302, "ftp://127.0.0.1/file")

    def page_huge(self, request: server.Request) -> bytes:
        return self._html(request, "<title>big</title>" + "x" * (MAX_RESPONSE_BYTES * 3))

    def page_huge_chunked(self, request: server.Request) -> Any:
        # No Content-Length: the limit must be enforced while reading.
        request.setHeader(b"Content-Type", b"text/html")
        for _ in range(30):
            request.write(b"<p>" + b"y" * 10_000 + b"</p>")
        request.finish()
        return server.NOT_DONE_YET

    def page_slow(self, request: server.Request) -> Any:
        self.waiting.append(request)
        return server.NOT_DONE_YET

    def page_held(self, request: server.Request) -> Any:
        self.waiting.append(request)
        return server.NOT_DONE_YET

    def release(self) -> None:
        for request in self.waiting:
            request.setHeader(b"Content-Type", b"text/html")
            request.write(b"<title>Held</title>")
            request.finish()
        self.waiting = []

    def page_server_error(self, request: server.Request) -> bytes:
        request.setResponseCode(500)
        return b"oops"

    def page_pdf(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/pdf")
        return b"%PDF-1.4"


class PreviewTestCase(HomeserverTestCase):
    config_overrides: dict[str, Any] = {
        "media": {
            "url_preview": {
                "enabled": True,
                "ip_range_allowlist": ["127.0.0.1/32"],
                "max_response_bytes": MAX_RESPONSE_BYTES,
                "timeout_ms": 5000,
            }
        }
    }

    origin: Origin
    token: str

    def setUp(self) -> Any:
        self.origin = Origin()
        port = reactor.listenTCP(0, server.Site(self.origin), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        self.origin.base = f"http://127.0.0.1:{port.getHost().port}"
        return super().setUp()

    def url(self, path: str) -> str:
        return self.origin.base + path

    async def preview(self, url: str, *, token: str | None = "", base: str = CLIENT_MEDIA,
                      ts: int | None = None) -> Any:
        if token == "":
            if not hasattr(self, "token"):
                self.token = (await self.register("alice"))["access_token"]
            token = self.token
        query = f"url={quote(url, safe='')}" + (f"&ts={ts}" if ts is not None else "")
        return await self.request("GET", f"{base}/preview_url?{query}", token=token)


@on_both_engines
class PreviewTests(PreviewTestCase):
    @ensure_deferred
    async def test_og_tags_and_image_become_the_preview(self):
        r = await self.preview(self.url("/og"), ts=1510610716656)
        self.assertEqual(r.code, 200, r)
        body = r.json
        self.assertEqual(body["og:title"], "Matrix & friends")
        self.assertEqual(body["og:description"], "A long description")
        self.assertEqual(body["og:site_name"], "Example")
        # The image is ours now, with its real size (not the page's claimed width).
        self.assertTrue(body["og:image"].startswith("mxc://test.heddle/"), body)
        self.assertEqual(body["og:image:type"], "image/png")
        self.assertEqual((body["og:image:width"], body["og:image:height"]), (12, 7))
        self.assertEqual(body["matrix:image:size"], len(PNG))
        # The Host header named the origin, though the connection went to its address.
        self.assertEqual(self.origin.hosts[0], self.origin.base[len("http://"):])
        media = body["og:image"][len("mxc://"):]
        r = await self.request("GET", f"{CLIENT_MEDIA}/download/{media}", token=self.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.body, PNG)

    @ensure_deferred
    async def test_legacy_endpoint_gives_the_same_preview(self):
        r = await self.preview(self.url("/title-only"), base=LEGACY_MEDIA)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"og:title": "Just a title", "og:description": "Plain description"})

    @ensure_deferred
    async def test_charset_from_content_type(self):
        r = await self.preview(self.url("/latin1"))
        self.assertEqual(r.json, {"og:title": "Caf\u00e9 cr\u00e8me"})

    @ensure_deferred
    async def test_direct_image_url_is_stored(self):
        r = await self.preview(self.url("/image.png"))
        self.assertEqual(r.code, 200, r)
        self.assertTrue(r.json["og:image"].startswith("mxc://test.heddle/"))
        self.assertEqual(r.json["matrix:image:size"], len(PNG))
        self.assertNotIn("og:title", r.json)

    @ensure_deferred
    async def test_an_image_that_is_not_one_is_left_out(self):
        r = await self.preview(self.url("/broken-image"))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"og:title": "Broken"})
        r = await self.preview(self.url("/not-an-image"))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})

    @ensure_deferred
    async def test_other_content_gives_an_empty_preview(self):
        r = await self.preview(self.url("/pdf"))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})

    @ensure_deferred
    async def test_redirect_chain_is_followed(self):
        r = await self.preview(self.url("/r1"))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["og:title"], "Matrix & friends")
        self.assertEqual([self.origin.hits.get(p) for p in ("/r1", "/r2", "/r3", "/og")],
                         [1, 1, 1, 1])

    @ensure_deferred
    async def test_too_many_redirects(self):
        r = await self.preview(self.url("/loop"))
        self.assertError(r, 502, "M_UNKNOWN")
        self.assertEqual(self.origin.hits["/loop"], 6)  # the first request and 5 redirects

    @ensure_deferred
    async def test_redirect_to_a_blocked_address_is_refused(self):
        r = await self.preview(self.url("/to-blocked"))
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertNotIn("/og", self.origin.hits)

    @ensure_deferred
    async def test_redirect_to_another_scheme_fails(self):
        r = await self.preview(self.url("/to-ftp"))
        self.assertError(r, 502, "M_UNKNOWN")

    @ensure_deferred
    async def test_image_on_a_blocked_address_is_left_out(self):
        r = await self.preview(self.url("/blocked-image"))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"og:title": "Blocked image"})
        self.assertNotIn("/image.png", self.origin.hits)

    @ensure_deferred
    async def test_response_over_the_limit_is_refused(self):
        for path in ("/huge", "/huge-chunked"):
            r = await self.preview(self.url(path))
            self.assertError(r, 502, "M_TOO_LARGE")

    @ensure_deferred
    async def test_error_status_fails(self):
        r = await self.preview(self.url("/server-error"))
        self.assertError(r, 502, "M_UNKNOWN")
        r = await self.preview(self.url("/nowhere"))
        self.assertError(r, 502, "M_UNKNOWN")

    @ensure_deferred
    async def test_second_request_is_served_from_the_cache(self):
        first = await self.preview(self.url("/og"))
        second = await self.preview(self.url("/og"), ts=1)
        third = await self.preview(self.url("/og"), base=LEGACY_MEDIA)
        self.assertEqual(first.json, second.json)
        self.assertEqual(first.json, third.json)
        self.assertEqual(self.origin.hits["/og"], 1)
        self.assertEqual(self.origin.hits["/image.png"], 1)

    @ensure_deferred
    async def test_concurrent_requests_share_one_fetch(self):
        await self.preview(self.url("/title-only"))  # registers alice first
        both = [defer.ensureDeferred(self.preview(self.url("/held"))) for _ in range(2)]
        for _ in range(100):
            await task.deferLater(reactor, 0.02, lambda: None)
            if self.origin.waiting:
                break
        await task.deferLater(reactor, 0.2, lambda: None)  # the second request arrives too
        self.origin.release()
        responses = await defer.gatherResults(both)
        self.assertEqual([r.json for r in responses], [{"og:title": "Held"}] * 2)
        self.assertEqual(self.origin.hits["/held"], 1)

    @ensure_deferred
    async def test_host_with_any_blocked_address_is_refused(self):
        resolved: list[str] = []

        async def resolve(host: str) -> list[str]:
            resolved.append(host)
            return ["93.184.216.34", "10.1.2.3"]

        self.hs.url_previewer._resolve_host = resolve
        r = await self.preview("http://rebind.example/og")
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertEqual(resolved, ["rebind.example"])

    @ensure_deferred
    async def test_host_name_connects_to_the_checked_address(self):
        async def resolve(host: str) -> list[str]:
            return ["127.0.0.1"]

        self.hs.url_previewer._resolve_host = resolve
        port = self.origin.base.rsplit(":", 1)[1]
        r = await self.preview(f"http://Preview.Example:{port}/title-only")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(self.origin.hosts, [f"preview.example:{port}"])

    @ensure_deferred
    async def test_unauthenticated_is_refused(self):
        for base in (CLIENT_MEDIA, LEGACY_MEDIA):
            r = await self.preview(self.url("/og"), token=None, base=base)
            self.assertError(r, 401, "M_MISSING_TOKEN")
        self.assertEqual(self.origin.hits, {})

    @ensure_deferred
    async def test_bad_parameters(self):
        r = await self.preview(self.url("/og"))  # registers alice
        self.assertEqual(r.code, 200, r)
        self.origin.hits.clear()
        r = await self.request("GET", f"{CLIENT_MEDIA}/preview_url", token=self.token)
        self.assertError(r, 400, "M_MISSING_PARAM")
        for bad in ("ftp://127.0.0.1/x", "http:///nohost", "not a url", "http://a b/",
                    "http://127.0.0.1:99999/", "javascript:alert(1)"):
            r = await self.preview(bad)
            self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.preview(self.url("/og"), ts="soon")  # type: ignore[arg-type]
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual(self.origin.hits, {})


class PreviewTimeoutTests(PreviewTestCase, unittest.TestCase):
    config_overrides = {
        "media": {
            "url_preview": {
                "enabled": True,
                "ip_range_allowlist": ["127.0.0.1/32"],
                "timeout_ms": 300,
            }
        }
    }

    @ensure_deferred
    async def test_slow_page_times_out(self):
        r = await self.preview(self.url("/slow"))
        self.assertError(r, 504, "M_UNKNOWN")
        self.assertEqual(self.origin.hits["/slow"], 1)


class HttpsPreviewTestCase(PreviewTestCase):
    """The origin over https, with a self-signed certificate."""

    def setUp(self) -> Any:
        from pathlib import Path

        from twisted.internet import ssl

        from homeserver.tls import generate_self_signed_certificate

        self.origin = Origin()
        folder = Path(self.mktemp())
        folder.mkdir()
        cert, key = folder / "origin.crt", folder / "origin.key"
        generate_self_signed_certificate(cert, key, "127.0.0.1")
        options = ssl.PrivateCertificate.loadPEM(cert.read_text() + key.read_text()).options()
        listener: Any = reactor
        port = listener.listenSSL(0, server.Site(self.origin), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.origin.base = f"https://127.0.0.1:{port.getHost().port}"
        return HomeserverTestCase.setUp(self)


class HttpsPreviewTests(HttpsPreviewTestCase, unittest.TestCase):
    @ensure_deferred
    async def test_an_untrusted_certificate_is_refused(self):
        r = await self.preview(self.url("/og"))
        self.assertError(r, 502, "M_UNKNOWN")
        self.assertEqual(self.origin.hits, {})


class HttpsPreviewWithoutCertificateChecksTests(HttpsPreviewTestCase, unittest.TestCase):
    # media.url_preview.verify_tls off (test servers with their own CA).
    config_overrides = {
        "media": {
            "url_preview": {
                **PreviewTestCase.config_overrides["media"]["url_preview"],
                "verify_tls": False,
            }
        }
    }

    @ensure_deferred
    async def test_the_page_is_previewed(self):
        r = await self.preview(self.url("/og"))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["og:title"], "Matrix & friends")
        self.assertTrue(r.json["og:image"].startswith("mxc://"), r.json)


class DefaultBlocklistTests(PreviewTestCase, unittest.TestCase):
    config_overrides = {"media": {"url_preview": {"enabled": True}}}

    @ensure_deferred
    async def test_loopback_is_refused_by_default(self):
        for url in (self.url("/og"), "http://[::1]/", "http://[::ffff:127.0.0.1]/",
                    "http://0.0.0.0/", "http://169.254.169.254/latest/meta-data/"):
            r = await self.preview(url)
            self.assertError(r, 403, "M_FORBIDDEN")
        self.assertEqual(self.origin.hits, {})


class DisabledTests(PreviewTestCase, unittest.TestCase):
    config_overrides = {}

    @ensure_deferred
    async def test_disabled_previews_are_an_unknown_endpoint(self):
        alice = (await self.register("alice"))["access_token"]
        for base in (CLIENT_MEDIA, LEGACY_MEDIA):
            for token in (alice, None):
                r = await self.preview(self.url("/og"), token=token, base=base)
                self.assertError(r, 404, "M_UNRECOGNIZED")
        self.assertEqual(self.origin.hits, {})


class ParsingTests(unittest.TestCase):
    """The pure parts: URL checks and HTML parsing."""

    def test_urls_are_normalised_for_the_request_line(self):
        u = parse_preview_url("HTTPS://user:pw@B\u00fccher.Example/a b?q=\u00e9#frag")
        self.assertEqual(u.scheme, "https")
        self.assertEqual(u.host, "xn--bcher-kva.example")
        self.assertEqual(u.port, 443)
        self.assertEqual(u.url, "https://xn--bcher-kva.example/a%20b?q=%C3%A9")
        v = parse_preview_url("http://[::1]:8080")
        self.assertEqual((v.host, v.port, v.url), ("::1", 8080, "http://[::1]:8080/"))

    def test_bad_urls(self):
        for bad in ("", "mxc://server/media", "http://", "http://:80/", "http://host:0/",
                    "http://ex_ample.com/"):
            with self.assertRaises(MatrixError, msg=bad) as cm:
                parse_preview_url(bad)
            self.assertEqual(cm.exception.http_code, 400)

    def test_first_og_tag_wins_and_image_is_made_absolute(self):
        info = parse_html(
            b'<meta property="og:image" content="img/a.png">'
            b'<meta property="og:image" content="img/b.png">'
            b'<meta name="og:title" content="Named">',
            "text/html",
            "https://example.com/dir/page.html",
        )
        self.assertEqual(info.image_url, "https://example.com/dir/img/a.png")
        self.assertEqual(info.og, {"og:title": "Named"})

    def test_meta_charset_and_non_http_images(self):
        html = '<meta charset="koi8-r"><title>\u043c\u0438\u0440</title>'
        info = parse_html(
            html.encode("koi8-r") + b'<meta property="og:image" content="data:image/png,xx">',
            "text/html",
            "https://example.com/",
        )
        self.assertEqual(info.og, {"og:title": "\u043c\u0438\u0440"})
        self.assertIsNone(info.image_url)
        # An unknown charset is ignored: UTF-8.
        info = parse_html(
            '<meta charset="no-such-set"><title>\u00e9</title>'.encode(), None, "http://a/"
        )
        self.assertEqual(info.og, {"og:title": "\u00e9"})

    def test_values_are_bounded(self):
        tags = "".join(f'<meta property="og:k{i}" content="v">' for i in range(200))
        info = parse_html(
            (tags + '<meta property="og:description" content="' + "d" * 5000 + '">').encode(),
            None,
            "http://example.com/",
        )
        self.assertLessEqual(len(info.og), 50)
        self.assertTrue(all(len(v) <= 1000 for v in info.og.values()))
