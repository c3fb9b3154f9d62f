"""URL previews (GET /_matrix/client/v1/media/preview_url): fetch a page for a client, read
its OpenGraph tags, and keep its image in our media repository.

The server fetches URLs chosen by users, so every fetch is guarded:

* Only http and https URLs with a host name or an IP literal are fetched.
* The host is resolved here (getaddrinfo on the thread pool) and refused (403 M_FORBIDDEN)
  when ANY of its addresses is in `ip_range_blocklist` and not in `ip_range_allowlist`
  (the federation `IPRangeFilter`). The connection then goes to one of those checked
  addresses directly, with the original `Host` header (and SNI, for https), so a DNS
  answer that changes between the check and the connection cannot reach a blocked address.
* Redirects (at most `MAX_REDIRECTS`) are followed by hand, and every hop is checked
  the same way.
* A body is read up to `max_response_bytes`; the connection is dropped beyond that
  (502 M_TOO_LARGE). A fetch, redirects included, gives up after `timeout_ms`
  (504 M_UNKNOWN). Any other failure to get a 2xx answer is 502 M_UNKNOWN.
* HTML is parsed with the standard library's `html.parser`, on the thread pool.

The answer holds the page's `og:*` tags (`og:title` falls back to `<title>`,
`og:description` to `<meta name="description">`). An `og:image`, or the URL itself when
it is an image, is fetched under the same rules, checked with Pillow (JPEG, PNG, GIF or
WebP only) and stored as server-owned media (no user quota); the answer then carries its
mxc:// URI, `og:image:type`, `og:image:width`, `og:image:height` and
`matrix:image:size`. An image that cannot be fetched or is not a supported image is left
out rather than failing the whole preview.

Previews are cached in memory per URL for `cache_ms` (at most `CACHE_MAX_ENTRIES`), and
concurrent requests for the same URL share one fetch. The `ts` query parameter is accepted
but does not select a version: the spec lets a server answer with a newer preview than
asked for, and keying the cache on `ts` would let a client force a fresh fetch of the
same URL by varying it.
"""

from __future__ import annotations

import codecs
import ipaddress
import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from twisted.internet import defer
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import URI, Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from federation.discovery import (
    BlockedAddressError,
    BodyTooLargeError,
    HostResolve,
    IPRangeFilter,
    connect_to_first,
    getaddrinfo_resolver,
    is_ip_literal,
    read_limited_body,
)
from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.config import ConfigError, UrlPreviewConfig
from homeserver.errors import Codes, MatrixError
from media_repo.repository import MediaRepository
from media_repo.thumbnails import ImageInfo, ThumbnailError, check_image

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
CACHE_MAX_ENTRIES = 1000
# What is kept of a page's tags: at most this many og:* keys, each value cut to this length.
MAX_OG_KEYS = 50
MAX_VALUE_CHARS = 1000
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?")
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
# Characters left as they are when percent-encoding a path or query for the request line.
_URL_SAFE = "/%!$&'()*+,;=:@-._~?"


# -- URLs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewUrl:
    """A URL that may be fetched: `host` is a lower-case ASCII name or a bare IP literal,
    `url` the ASCII form sent on the request line (no fragment, no user info)."""

    scheme: str
    host: str
    port: int
    url: str


def parse_preview_url(text: str) -> PreviewUrl:
    """400 M_INVALID_PARAM unless `text` is an http(s) URL with a host."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, "'url' is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise MatrixError(400, Codes.INVALID_PARAM, "Only http and https URLs can be previewed")
    host = parts.hostname or ""
    if not is_ip_literal(host):
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            host = ""
        if not _HOST_NAME.fullmatch(host):
            raise MatrixError(400, Codes.INVALID_PARAM, "'url' has no valid host")
    if port == 0:
        raise MatrixError(400, Codes.INVALID_PARAM, "'url' has an invalid port")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    path = quote(parts.path or "/", safe=_URL_SAFE)
    query = quote(parts.query, safe=_URL_SAFE)
    url = f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")
    return PreviewUrl(scheme, host, port or (443 if scheme == "https" else 80), url)


# -- HTML ----------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return " ".join(text.split())[:MAX_VALUE_CHARS]


class _OpenGraphParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.title: str | None = None
        self.description: str | None = None
        self._title_parts: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "meta":
            values = {name: value for name, value in attrs if value is not None}
            key = (values.get("property") or values.get("name") or "").strip().lower()
            content = values.get("content")
            if content is None:
                return
            # The first of a repeated tag wins (og:image is often given several times).
            if key.startswith("og:") and key not in self.og and len(self.og) < MAX_OG_KEYS:
                self.og[key] = _clean(content)
            elif key == "description" and self.description is None:
                self.description = _clean(content)
        elif tag == "title" and self.title is None:
            self._title_parts = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._title_parts is not None:
            self.title = _clean("".join(self._title_parts))
            self._title_parts = None

    def handle_data(self, data: str) -> None:
        if self._title_parts is not None:
            self._title_parts.append(data)


def _charset(body: bytes, content_type: str | None) -> str:
    """The page's encoding: the Content-Type's charset, else a <meta charset>, else UTF-8."""
    candidates: list[str] = []
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            candidates.append(value.strip().strip("\"'"))
    if m := _META_CHARSET.search(body[:4096]):
        candidates.append(m.group(1).decode("ascii"))
    for candidate in candidates:
        try:
            return codecs.lookup(candidate).name
        except LookupError:
            continue
    return "utf-8"


@dataclass(frozen=True)
class PageInfo:
    # og:* tags (with the <title>/description fallbacks), without any og:image* key.
    og: dict[str, str]
    # The absolute http(s) URL of the page's og:image, if it has one.
    image_url: str | None


def parse_html(body: bytes, content_type: str | None, page_url: str) -> PageInfo:
    """A page's OpenGraph data. Pure and CPU-bound: run it on a thread."""
    parser = _OpenGraphParser()
    try:
        parser.feed(body.decode(_charset(body, content_type), "replace"))
        parser.close()
    except Exception as e:  # html.parser is lenient; anything it still raises ends the scan
        logger.debug("HTML parsing stopped early: %s", e)
    og = {k: v for k, v in parser.og.items() if not k.startswith("og:image")}
    if "og:title" not in og and parser.title:
        og["og:title"] = parser.title
    if "og:description" not in og and parser.description:
        og["og:description"] = parser.description
    image = parser.og.get("og:image") or parser.og.get("og:image:url")
    image_url = None
    if image:
        absolute = urljoin(page_url, image)
        if urlsplit(absolute).scheme.lower() in ("http", "https"):
            image_url = absolute
    return PageInfo(og, image_url)


def _base_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _looks_like_html(content_type: str | None, body: bytes) -> bool:
    base = _base_type(content_type)
    if base:
        return base in _HTML_TYPES
    start = body[:1024].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html"))


# -- fetching ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fetched:
    url: str  # after redirects
    content_type: str | None
    body: bytes


class _PinnedEndpoint:
    """Connects to already-checked addresses of one host, in turn (TLS on top for https)."""

    def __init__(
        self,
        reactor: Any,
        target: PreviewUrl,
        addresses: list[str],
        timeout_s: float,
        verify_tls: bool = True,
    ) -> None:
        self._reactor = reactor
        self._target = target
        self._addresses = addresses
        self._timeout_s = timeout_s
        self._verify_tls = verify_tls

    def connect(self, protocol_factory: Any) -> defer.Deferred[IProtocol]:
        return defer.ensureDeferred(self._connect(protocol_factory))

    async def _connect(self, protocol_factory: Any) -> IProtocol:
        return await connect_to_first(
            self._reactor, self._addresses, self._target.host, self._target.port,
            self._target.scheme == "https", self._timeout_s, protocol_factory,
            verify=self._verify_tls,
        )


@implementer(IAgentEndpointFactory)
class _PinnedEndpointFactory:
    def __init__(self, endpoint: _PinnedEndpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: URI) -> _PinnedEndpoint:
        return self._endpoint


class _Discard(Protocol):
    """Drops a body nobody wants (a redirect's) by closing the connection."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


def _timed_out(result: Any, timeout: float) -> Any:
    # The Agent reports a cancelled request as ResponseNeverReceived (not CancelledError),
    # which the default conversion would let through: whatever the cancellation gave, a
    # fetch cut short by the timeout timed out.
    raise defer.TimeoutError(f"no answer within {timeout} s")


def _user_agent() -> bytes:
    from homeserver import __version__

    return f"Heddle/{__version__} (URL preview)".encode("ascii")


def _config_networks(config: UrlPreviewConfig) -> IPRangeFilter:
    for option in ("ip_range_blocklist", "ip_range_allowlist"):
        for text in getattr(config, option):
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ConfigError(
                    f"media.url_preview.{option}: {text!r} is not an IP range"
                ) from None
    return IPRangeFilter(config.ip_range_blocklist, config.ip_range_allowlist)


class UrlPreviewer:
    def __init__(
        self,
        reactor: Any,
        clock: Clock,
        config: UrlPreviewConfig,
        media: MediaRepository,
        resolve_host: HostResolve | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._config = config
        self._media = media
        self._ip_filter = _config_networks(config)
        self._resolve_host = resolve_host or getaddrinfo_resolver(reactor)
        # URL -> preview.
        self._cache: LruCache[str, dict[str, Any]] = LruCache(
            "url_previews", CACHE_MAX_ENTRIES, ttl_s=config.cache_ms / 1000, clock=clock
        )
        # URL -> callers waiting for a fetch already running.
        self._in_flight: dict[str, list[defer.Deferred[dict[str, Any]]]] = {}

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    async def preview(self, user_id: str, url: str) -> dict[str, Any]:
        """The OpenGraph preview of `url` (see the module docstring for the errors)."""
        if not self._config.enabled:
            raise MatrixError(404, Codes.UNRECOGNIZED, "URL previews are disabled")
        target = parse_preview_url(url)
        key = target.url
        cached = self._cache.get(key)
        if cached is not None:
            return dict(cached)
        waiters = self._in_flight.get(key)
        if waiters is not None:
            waiter: defer.Deferred[dict[str, Any]] = defer.Deferred()
            waiters.append(waiter)
            return dict(await waiter)
        self._in_flight[key] = waiters = []
        try:
            logger.info("URL preview of a page on %s for %s", target.host, user_id)
            result = await self._build_preview(target)
        except Exception as e:
            for waiter in waiters:
                waiter.errback(e)
            raise
        finally:
            del self._in_flight[key]
        self._remember(key, result)
        for waiter in waiters:
            waiter.callback(result)
        return dict(result)

    def _remember(self, key: str, result: dict[str, Any]) -> None:
        if self._config.cache_ms <= 0:
            return
        self._cache.set(key, result)

    async def _build_preview(self, target: PreviewUrl) -> dict[str, Any]:
        page = await self._fetch(target)
        if _base_type(page.content_type).startswith("image/"):
            return await self._image_fields(page) or {}
        if not _looks_like_html(page.content_type, page.body):
            return {}
        info: PageInfo = await deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(),
            parse_html, page.body, page.content_type, page.url,
        )
        result: dict[str, Any] = dict(info.og)
        if info.image_url is not None:
            result.update(await self._fetch_image(info.image_url))
        return result

    async def _fetch_image(self, url: str) -> dict[str, Any]:
        """The og:image fields for the image at `url`, or nothing if it cannot be had."""
        try:
            image = await self._fetch(parse_preview_url(url))
        except MatrixError as e:
            logger.info("URL preview image left out: %s", e.message)
            return {}
        return await self._image_fields(image) or {}

    async def _image_fields(self, fetched: _Fetched) -> dict[str, Any] | None:
        try:
            info: ImageInfo = await deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), check_image, fetched.body
            )
        except ThumbnailError as e:
            logger.info("URL preview image left out: %s", e)
            return None
        try:
            uri = await self._media.store_server_media(fetched.body, info.content_type)
        except MatrixError as e:  # storage unavailable: a preview without its image
            logger.warning("URL preview image not stored: %s", e.message)
            return None
        return {
            "og:image": uri,
            "og:image:type": info.content_type,
            "og:image:width": info.width,
            "og:image:height": info.height,
            "matrix:image:size": len(fetched.body),
        }

    async def _fetch(self, target: PreviewUrl) -> _Fetched:
        """GET `target`, following redirects, within the size and time limits."""
        d = defer.ensureDeferred(self._fetch_following_redirects(target))
        d.addTimeout(self._config.timeout_ms / 1000, self._reactor, onTimeoutCancel=_timed_out)
        try:
            return await d
        except MatrixError:
            raise
        except BlockedAddressError as e:
            logger.info("URL preview refused: %s", e)
            raise MatrixError(
                403, Codes.FORBIDDEN, "The URL's host is not allowed to be previewed"
            ) from None
        except BodyTooLargeError:
            raise MatrixError(
                502, Codes.TOO_LARGE,
                f"The response is larger than {self._config.max_response_bytes} bytes",
            ) from None
        except defer.TimeoutError:
            raise MatrixError(504, Codes.UNKNOWN, "Timed out fetching the URL") from None
        except Exception as e:
            logger.info("URL preview fetch from %s failed: %r", target.host, e)
            raise MatrixError(502, Codes.UNKNOWN, "Could not fetch the URL") from None

    async def _fetch_following_redirects(self, target: PreviewUrl) -> _Fetched:
        for _hop in range(MAX_REDIRECTS + 1):
            response = await self._request(target)
            location = response.headers.getRawHeaders(b"location")
            if response.code in _REDIRECT_CODES and location:
                response.deliverBody(_Discard())
                next_url = urljoin(target.url, location[0].decode("latin-1"))
                try:
                    target = parse_preview_url(next_url)
                except MatrixError:
                    raise MatrixError(
                        502, Codes.UNKNOWN, "The URL redirects to one that cannot be fetched"
                    ) from None
                continue
            if not 200 <= response.code < 300:
                response.deliverBody(_Discard())
                raise MatrixError(
                    502, Codes.UNKNOWN, f"The URL answered with HTTP {response.code}"
                )
            body = await read_limited_body(response, self._config.max_response_bytes)
            content_type = response.headers.getRawHeaders(b"content-type")
            return _Fetched(
                target.url, content_type[-1].decode("latin-1") if content_type else None, body
            )
        raise MatrixError(502, Codes.UNKNOWN, "The URL redirects too many times")

    async def _request(self, target: PreviewUrl) -> Any:
        addresses = await self._checked_addresses(target.host)
        endpoint = _PinnedEndpoint(
            self._reactor, target, addresses, self._config.timeout_ms / 1000,
            self._config.verify_tls,
        )
        agent = Agent.usingEndpointFactory(self._reactor, _PinnedEndpointFactory(endpoint))
        headers = Headers({
            b"User-Agent": [_user_agent()],
            b"Accept": [b"text/html, application/xhtml+xml, image/*;q=0.9, */*;q=0.5"],
        })
        # The Host header (and SNI) come from the URL; the connection goes to `addresses`.
        return await agent.request(b"GET", target.url.encode("ascii"), headers)

    async def _checked_addresses(self, host: str) -> list[str]:
        """`host`'s addresses; BlockedAddressError if any of them is blocked."""
        addresses = [host] if is_ip_literal(host) else await self._resolve_host(host)
        if not addresses:
            raise DNSLookupError(f"{host} has no addresses")
        blocked = [a for a in addresses if not self._ip_filter.allows(a)]
        if blocked:
            raise BlockedAddressError(f"{host} resolves to blocked address {blocked[0]}")
        return addresses
