"""Other servers' media, fetched over federation and kept (spec: server-server "Content
Repository").

`RemoteMedia.fetch(origin, media_id)` answers from the `media` table when the item was
fetched before (a row with `server_name` = the origin and `user_id` NULL). Otherwise it asks
the origin's authenticated endpoint, `GET /_matrix/federation/v1/media/download/{mediaId}`,
whose `multipart/mixed` answer holds a JSON part then either the bytes or a `Location` to
fetch them from (a plain GET, through the same IP range filter as federation). A server
that does not know that endpoint (404 M_UNRECOGNIZED, 400, 405) is asked the deprecated
`/_matrix/media/v3/download/{origin}/{mediaId}?allow_remote=false` instead, as the spec
says. The bytes are stored under their SHA-256 before the row is written, like an upload.

Errors: the origin says 404 → 404 M_NOT_FOUND; it cannot be reached, times out, answers
something unreadable or too large (over `media.max_upload_bytes`) → 502 M_UNKNOWN, and
nothing is recorded. One fetch per media item is in flight at a time; callers asking for
the same item meanwhile wait for it and then find it stored.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IProtocol
from twisted.web.client import URI, Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from federation.client import FederationClient, RawResponse, build_path
from federation.discovery import (
    CONNECT_TIMEOUT_S,
    BlockedAddressError,
    IPRangeFilter,
    TlsConnector,
    getaddrinfo_resolver,
    is_ip_literal,
    read_limited_body,
)
from federation.errors import HttpResponseError, RequestSendFailed
from homeserver.clock import Clock
from homeserver.config import MediaConfig
from homeserver.errors import Codes, MatrixError
from homeserver.events.canonical import parse_json
from homeserver.identifiers import is_valid_server_name
from homeserver.linearizer import Linearizer
from media_repo.providers.base import StorageProvider, StorageUnavailable
from media_repo.stored_objects import store_and_reference
from storage.stores.media import MediaInfo, MediaStore

logger = logging.getLogger(__name__)

FEDERATION_DOWNLOAD_PATH = "/_matrix/federation/v1/media/download/%s"
LEGACY_DOWNLOAD_PATH = "/_matrix/media/v3/download/%s/%s"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# Room for the multipart framing and the JSON part around the media's bytes.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
DEFAULT_TIMEOUT_MS = 60_000


# -- pure parsing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One body part: lower-case header names to values, and its bytes."""

    headers: dict[str, str]
    body: bytes


def header_parameter(value: str, name: str) -> str | None:
    """A `; name=value` parameter of a header such as Content-Type (quotes removed)."""
    for param in value.split(";")[1:]:
        key, sep, raw = param.partition("=")
        if sep and key.strip().lower() == name:
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            return raw
    return None


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """The parts of a `multipart/*` body (RFC 2046), or ValueError when it is not one."""
    if not content_type.split(";", 1)[0].strip().lower().startswith("multipart/"):
        raise ValueError(f"not multipart: {content_type[:100]!r}")
    boundary = header_parameter(content_type, "boundary")
    if not boundary or len(boundary) > 200:
        raise ValueError("no usable boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    # The first delimiter may open the body with no CRLF before it.
    pieces = (b"\r\n" + body).split(delimiter)
    parts: list[Part] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            return parts
        # Transport padding (spaces, tabs) may follow a delimiter before its CRLF.
        line_end = piece.find(b"\r\n")
        if line_end == -1 or piece[:line_end].strip(b" \t"):
            raise ValueError("malformed delimiter line")
        piece = piece[line_end + 2:]
        if piece.startswith(b"\r\n"):
            raw_headers, content = b"", piece[2:]
        else:
            raw_headers, sep, content = piece.partition(b"\r\n\r\n")
            if not sep:
                raise ValueError("a part's headers never end")
        headers: dict[str, str] = {}
        for line in raw_headers.split(b"\r\n") if raw_headers else []:
            name, colon, value = line.partition(b":")
            if not colon or not name.strip():
                raise ValueError("malformed part header")
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
        parts.append(Part(headers, content))
    raise ValueError("no closing delimiter")


def disposition_file_name(value: str | None) -> str | None:
    """The file name of a Content-Disposition header (`filename*=utf-8''...` preferred),
    or None; names that could not be a plain file name are dropped."""
    if not value:
        return None
    name: str | None = None
    encoded = header_parameter(value, "filename*")
    if encoded is not None:
        charset, _, rest = encoded.partition("'")
        _, _, quoted = rest.partition("'")
        if charset.lower() in ("utf-8", "us-ascii", ""):
            try:
                name = unquote(quoted, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                name = None
    if name is None:
        name = header_parameter(value, "filename")
    if not name or "/" in name or "\x00" in name or len(name) > 255:
        return None
    return name


@dataclass(frozen=True)
class FetchedMedia:
    data: bytes
    content_type: str
    file_name: str | None


def _describe_media(headers: dict[str, str], data: bytes) -> FetchedMedia:
    content_type = headers.get("content-type", "").strip() or DEFAULT_CONTENT_TYPE
    if len(content_type) > 255 or not content_type.isprintable():
        content_type = DEFAULT_CONTENT_TYPE
    return FetchedMedia(data, content_type, disposition_file_name(headers.get("content-disposition")))


# -- following a Location part ------------------------------------------------------------


@implementer(IAgentEndpointFactory)
class _FilteredEndpointFactory:
    """http and https connections only to addresses the IP range filter allows."""

    def __init__(
        self, reactor: Any, ip_filter: IPRangeFilter, connector: TlsConnector, verify: bool
    ) -> None:
        self._reactor = reactor
        self._ip_filter = ip_filter
        self._connector = connector
        self._verify = verify
        self._resolve = getaddrinfo_resolver(reactor)

    def endpointForURI(self, uri: URI) -> Any:
        return _Endpoint(self, uri.scheme, uri.host.decode("ascii").strip("[]"), uri.port)

    async def connect(
        self, protocol_factory: Any, scheme: bytes, host: str, port: int
    ) -> IProtocol:
        if scheme == b"https":
            return await self._connector.connect(
                protocol_factory, host, port, host, self._verify
            )
        addresses = [host] if is_ip_literal(host) else await self._resolve(host)
        allowed = [a for a in addresses if self._ip_filter.allows(a)]
        if not allowed:
            raise BlockedAddressError(f"{host} resolves only to blocked addresses")
        tcp_class: Any = TCP6ClientEndpoint if ":" in allowed[0] else TCP4ClientEndpoint
        endpoint = tcp_class(self._reactor, allowed[0], port, timeout=CONNECT_TIMEOUT_S)
        protocol: IProtocol = await endpoint.connect(protocol_factory)
        return protocol


class _Endpoint:
    def __init__(
        self, factory: _FilteredEndpointFactory, scheme: bytes, host: str, port: int
    ) -> None:
        self._factory = factory
        self._scheme = scheme
        self._host = host
        self._port = port

    def connect(self, protocol_factory: Any) -> defer.Deferred[IProtocol]:
        return defer.ensureDeferred(
            self._factory.connect(protocol_factory, self._scheme, self._host, self._port)
        )


class LocationFetcher:
    """A plain GET of the URL in a `Location` part (an S3 presigned URL, say): http or https
    only, through the federation IP range filter, with a size cap and a timeout."""

    def __init__(
        self, reactor: Any, ip_filter: IPRangeFilter, connector: TlsConnector, verify: bool
    ) -> None:
        self._reactor = reactor
        self._agent = Agent.usingEndpointFactory(
            reactor, _FilteredEndpointFactory(reactor, ip_filter, connector, verify)
        )

    async def __call__(self, url: str, max_bytes: int, timeout_s: float) -> RawResponse:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {url[:100]!r}")

        async def fetch() -> RawResponse:
            response = await self._agent.request(b"GET", url.encode("ascii"), Headers())
            body = await read_limited_body(response, max_bytes)
            headers = {
                name.decode("latin-1").lower(): values[-1].decode("latin-1")
                for name, values in response.headers.getAllRawHeaders()
            }
            return RawResponse(response.code, headers, body)

        d = defer.ensureDeferred(fetch())
        d.addTimeout(timeout_s, self._reactor)
        return await d


# -- the fetcher ------------------------------------------------------------------------


def _unavailable(origin: str, media_id: str, why: str) -> MatrixError:
    logger.info("remote media mxc://%s/%s unavailable: %s", origin, media_id, why)
    return MatrixError(502, Codes.UNKNOWN, f"Could not fetch the media from {origin}")


def _not_found() -> MatrixError:
    return MatrixError(404, Codes.NOT_FOUND, "Unknown media ID")


class RemoteMedia:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        client: FederationClient,
        store: MediaStore,
        provider: StorageProvider,
        config: MediaConfig,
        fetch_location: LocationFetcher | None = None,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._client = client
        self._store = store
        self._provider = provider
        self._config = config
        self._fetch_location = fetch_location
        self._timeout_ms = timeout_ms
        self._fetches = Linearizer("remote_media")

    async def fetch(
        self, origin: str, media_id: str, max_bytes: int | None = None,
        allow_remote: bool = True,
    ) -> MediaInfo:
        """The stored copy of mxc://origin/media_id, fetched first if need be (not when
        `allow_remote` is false: 404 then)."""
        if origin == self._server_name or not is_valid_server_name(origin):
            raise _not_found()
        async with self._fetches.queue((origin, media_id)):
            info = await self._store.get_media(origin, media_id)
            if info is not None and info.uploaded:
                if info.quarantined:
                    raise _not_found()
                return info
            if not allow_remote:
                raise _not_found()
            limit = max_bytes or self._config.max_upload_bytes
            media = await self._download(origin, media_id, limit)
            return await self._record(origin, media_id, media)

    async def _download(self, origin: str, media_id: str, max_bytes: int) -> FetchedMedia:
        try:
            response = await self._client.get_raw(
                origin, build_path(FEDERATION_DOWNLOAD_PATH, media_id),
                timeout_ms=self._timeout_ms,
                max_response_bytes=max_bytes + MULTIPART_OVERHEAD_BYTES,
            )
        except HttpResponseError as e:
            if (e.code == 404 and e.errcode == Codes.UNRECOGNIZED) or e.code in (400, 405):
                return await self._download_legacy(origin, media_id, max_bytes)
            if e.code == 404:
                raise _not_found() from None
            raise _unavailable(origin, media_id, str(e)) from None
        except RequestSendFailed as e:
            raise _unavailable(origin, media_id, e.reason) from None
        try:
            parts = parse_multipart(response.headers.get("content-type", ""), response.body)
            if len(parts) < 2:
                raise ValueError(f"{len(parts)} parts, not 2")
            if not isinstance(parse_json(parts[0].body), dict):
                raise ValueError("the first part is not a JSON object")
        except ValueError as e:
            raise _unavailable(origin, media_id, f"unreadable answer: {e}") from None
        content = parts[1]
        location = content.headers.get("location")
        if location is not None:
            return await self._follow(origin, media_id, location, max_bytes)
        if len(content.body) > max_bytes:
            raise _unavailable(origin, media_id, f"{len(content.body)} bytes, over the limit")
        return _describe_media(content.headers, content.body)

    async def _follow(
        self, origin: str, media_id: str, location: str, max_bytes: int
    ) -> FetchedMedia:
        if self._fetch_location is None:
            raise _unavailable(origin, media_id, "redirected, and redirects are not followed")
        try:
            response = await self._fetch_location(location, max_bytes, self._timeout_ms / 1000)
        except Exception as e:  # connection, blocked address, timeout, size
            raise _unavailable(origin, media_id, f"following the redirect: {e}") from None
        if response.code != 200:
            raise _unavailable(origin, media_id, f"the redirect answered HTTP {response.code}")
        return _describe_media(response.headers, response.body)

    async def _download_legacy(
        self, origin: str, media_id: str, max_bytes: int
    ) -> FetchedMedia:
        """The deprecated unauthenticated endpoint, for servers before spec v1.11."""
        try:
            response = await self._client.get_raw(
                origin, build_path(LEGACY_DOWNLOAD_PATH, origin, media_id),
                {"allow_remote": ["false"]},
                signed=False, timeout_ms=self._timeout_ms, max_response_bytes=max_bytes,
            )
        except HttpResponseError as e:
            if e.code == 404:
                raise _not_found() from None
            raise _unavailable(origin, media_id, str(e)) from None
        except RequestSendFailed as e:
            raise _unavailable(origin, media_id, e.reason) from None
        return _describe_media(response.headers, response.body)

    async def _record(self, origin: str, media_id: str, media: FetchedMedia) -> MediaInfo:
        sha256 = hashlib.sha256(media.data).hexdigest()
        try:
            await store_and_reference(
                self._clock,
                self._provider,
                self._store,
                sha256,
                media.data,
                media.content_type,
                lambda generation: self._store.record_upload(
                    origin, media_id, None, media.content_type, media.file_name,
                    len(media.data), sha256, self._clock.time_msec(), key_generation=generation,
                ),
            )
        except StorageUnavailable as e:
            logger.warning("media storage unavailable: %s", e)
            raise MatrixError(
                504 if e.timed_out else 502, Codes.UNKNOWN, "Media storage is unavailable"
            ) from None
        except Exception:
            # Another process fetched it meanwhile (the row's key is taken): use theirs.
            info = await self._store.get_media(origin, media_id)
            if info is None or not info.uploaded:
                raise
        else:
            logger.info("fetched mxc://%s/%s (%d bytes, %s)", origin, media_id,
                        len(media.data), media.content_type)
        info = await self._store.get_media(origin, media_id)
        assert info is not None
        return info
