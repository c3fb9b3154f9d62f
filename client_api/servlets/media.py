"""Media: upload (direct and asynchronous), download, config; the authenticated endpoints
under /_matrix/client/v1/media and the legacy ones under /_matrix/media."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import (
    HeddleRequest,
    RawBody,
    parse_int_query,
    parse_json_object,
    query_string,
    require_query_string,
)
from homeserver.errors import Codes, MatrixError
from media_repo.headers import CONTENT_SECURITY_POLICY, content_disposition

if TYPE_CHECKING:
    from homeserver.app import HomeServer

_SERVER = "(?P<server_name>[^/]+)"
_MEDIA = "(?P<media_id>[^/]+)"
_FILE = "(?:/(?P<file_name>[^/]*))?"  # nio sends an empty file name: ".../{mediaId}/"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
DIRECT_UPLOAD_TYPE_FIELD = "org.heddle.content_type"
DIRECT_UPLOAD_URL_FIELD = "org.heddle.upload_url"
def legacy_media_path(path: str) -> re.Pattern[str]:
    return re.compile(f"^/_matrix/media/(?:r0|v3){path}$")


def client_media_path(path: str) -> re.Pattern[str]:
    return re.compile(f"^/_matrix/client/v1/media{path}$")


def media_response(data: bytes, content_type: str | None, file_name: str | None) -> RawBody:
    content_type = content_type or DEFAULT_CONTENT_TYPE
    headers = {
        "Content-Type": content_type,
        "Content-Disposition": content_disposition(content_type, file_name),
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "cross-origin",
        # Media never changes once uploaded.
        "Cache-Control": "public, max-age=86400, s-maxage=86400",
    }
    return RawBody(data, headers)


def parse_thumbnail_query(request: HeddleRequest) -> tuple[int, int, str, bool, int | None]:
    """The thumbnail query (client and federation alike): width, height, method, animated
    and timeout_ms."""
    width = parse_int_query(request, "width", min_value=1)
    height = parse_int_query(request, "height", min_value=1)
    if width is None or height is None:
        raise MatrixError(400, Codes.MISSING_PARAM, "'width' and 'height' are required")
    method = query_string(request, "method") or "scale"
    animated = (query_string(request, "animated") or "false").lower() == "true"
    wait_ms = parse_int_query(request, "timeout_ms", min_value=0)
    return width, height, method, animated, wait_ms


def _allow_remote(request: HeddleRequest) -> bool:
    """Legacy clients may ask us not to fetch other servers' media (`allow_remote=false`)."""
    return (query_string(request, "allow_remote") or "true").lower() != "false"


def _upload_body(request: HeddleRequest) -> tuple[bytes, str, str | None]:
    assert request.content is not None
    data = request.content.read()
    content_type = request.getHeader(b"content-type")
    content_type_text = (
        content_type.decode("utf-8", "replace") if content_type else DEFAULT_CONTENT_TYPE
    )
    file_name = query_string(request, "filename")
    if file_name is not None and ("/" in file_name or "\x00" in file_name):
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid file name")
    return data, content_type_text, file_name


class UploadServlet:
    PATTERNS = [legacy_media_path("/upload")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        data, content_type, file_name = _upload_body(request)
        uri = await self._hs.media.upload(requester.user_id, data, content_type, file_name)
        return 200, {"content_uri": uri}


class CreateMediaServlet:
    PATTERNS = [re.compile("^/_matrix/media/v1/create$")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_json_object(request)
        uri, expires = await self._hs.media.create(requester.user_id)
        response: dict[str, Any] = {"content_uri": uri, "unused_expires_at": expires}
        # Extension: with S3 direct uploads, a URL to PUT the bytes to (with this
        # Content-Type), then POST .../org.heddle/upload_complete/{serverName}/{mediaId}.
        content_type = body.get(DIRECT_UPLOAD_TYPE_FIELD, DEFAULT_CONTENT_TYPE)
        if not isinstance(content_type, str):
            raise MatrixError(400, Codes.BAD_JSON, f"'{DIRECT_UPLOAD_TYPE_FIELD}' must be a string")
        url = self._hs.media.direct_upload_url(uri.rsplit("/", 1)[1], content_type)
        if url is not None:
            response[DIRECT_UPLOAD_URL_FIELD] = url
        return 200, response


class CompleteDirectUploadServlet:
    """Heddle extension: the client finished its direct upload to storage."""

    PATTERNS = [re.compile(f"^/_matrix/media/v1/org.heddle/upload_complete/{_SERVER}/{_MEDIA}$")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(
        self, request: HeddleRequest, server_name: str, media_id: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_json_object(request)
        content_type = body.get("content_type", DEFAULT_CONTENT_TYPE)
        file_name = body.get("filename")
        if not isinstance(content_type, str) or not (
            file_name is None or isinstance(file_name, str)
        ):
            raise MatrixError(400, Codes.BAD_JSON, "'content_type' and 'filename' are strings")
        await self._hs.media.complete_direct_upload(
            requester.user_id, server_name, media_id, content_type, file_name
        )
        return 200, {}


class AsyncUploadServlet:
    PATTERNS = [legacy_media_path(f"/upload/{_SERVER}/{_MEDIA}")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(
        self, request: HeddleRequest, server_name: str, media_id: str
    ) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        data, content_type, file_name = _upload_body(request)
        await self._hs.media.upload_to(
            requester.user_id, server_name, media_id, data, content_type, file_name
        )
        return 200, {}


class _Download:
    """Shared by the authenticated and the legacy download endpoints."""

    authenticated = True

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(
        self,
        request: HeddleRequest,
        server_name: str,
        media_id: str,
        file_name: str | None = None,
    ) -> tuple[int, Any]:
        if self.authenticated:
            await require_user(self._hs, request, allow_guest=True)
        elif not self._hs.config.media.legacy_unauthenticated_downloads:
            raise MatrixError(404, Codes.NOT_FOUND, "Use the authenticated media endpoints")
        wait_ms = parse_int_query(request, "timeout_ms", min_value=0)
        media = self._hs.media
        if server_name == self._hs.server_name and self._may_redirect(request):
            info = await media.get_media_info(server_name, media_id, wait_ms)
            url = media.download_url(info, file_name or None)
            if url is not None:
                # The storage serves the bytes itself (S3 presigned URL, short-lived).
                return 307, RawBody(b"", {"Location": url, "Cache-Control": "no-store"})
        download = await media.download(server_name, media_id, wait_ms, _allow_remote(request))
        info = download.info
        return 200, media_response(download.data, info.content_type, file_name or info.upload_name)


    def _may_redirect(self, request: HeddleRequest) -> bool:
        # Clients of the authenticated endpoints must follow redirects (spec v1.11); the
        # legacy ones say whether they can with allow_redirect.
        if self.authenticated:
            return True
        return (query_string(request, "allow_redirect") or "false").lower() == "true"


class DownloadServlet(_Download):
    PATTERNS = [client_media_path(f"/download/{_SERVER}/{_MEDIA}{_FILE}")]


class LegacyDownloadServlet(_Download):
    PATTERNS = [legacy_media_path(f"/download/{_SERVER}/{_MEDIA}{_FILE}")]
    authenticated = False


class MediaConfigServlet:
    PATTERNS = [client_media_path("/config"), legacy_media_path("/config")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_user(self._hs, request)
        return 200, {"m.upload.size": self._hs.media.max_upload_bytes}


class _Thumbnail:
    authenticated = True

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(
        self, request: HeddleRequest, server_name: str, media_id: str
    ) -> tuple[int, Any]:
        if self.authenticated:
            await require_user(self._hs, request, allow_guest=True)
        elif not self._hs.config.media.legacy_unauthenticated_downloads:
            raise MatrixError(404, Codes.NOT_FOUND, "Use the authenticated media endpoints")
        width, height, method, animated, wait_ms = parse_thumbnail_query(request)
        thumb = await self._hs.media.thumbnail(
            server_name, media_id, width, height, method, animated, wait_ms,
            _allow_remote(request),
        )
        return 200, media_response(thumb.data, thumb.content_type, None)


class ThumbnailServlet(_Thumbnail):
    PATTERNS = [client_media_path(f"/thumbnail/{_SERVER}/{_MEDIA}")]


class LegacyThumbnailServlet(_Thumbnail):
    PATTERNS = [legacy_media_path(f"/thumbnail/{_SERVER}/{_MEDIA}")]
    authenticated = False


class PreviewUrlServlet:
    """OpenGraph data for a URL (media_repo/preview.py). Both endpoints need an access token
    (the legacy one too, per the spec). With previews disabled the endpoint answers like an
    unknown one, 404 M_UNRECOGNIZED, before authentication."""

    PATTERNS = [client_media_path("/preview_url"), legacy_media_path("/preview_url")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        previewer = self._hs.url_previewer
        if not previewer.enabled:
            raise MatrixError(404, Codes.UNRECOGNIZED, "URL previews are disabled")
        requester = await require_user(self._hs, request)
        url = require_query_string(request, "url")
        # Validated, but a preview is not chosen by time (see media_repo/preview.py).
        parse_int_query(request, "ts", min_value=0)
        return 200, await previewer.preview(requester.user_id, url)
