"""Our media, served to other servers (spec: server-server "Content Repository", v1.11).

`GET /_matrix/federation/v1/media/download/{mediaId}` and `.../media/thumbnail/{mediaId}`
are X-Matrix authenticated and answer `multipart/mixed` with exactly two parts: the media's
metadata as JSON (always `{}` for now), then either the bytes (with their `Content-Type` and
`Content-Disposition`) or, when the storage serves them itself (S3 presigned URLs), a
`Location` header to fetch them from. Only local media is served: a media ID of ours that
does not exist (or another server's) is 404 M_NOT_FOUND.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, RawBody, parse_int_query
from client_api.servlets.media import parse_thumbnail_query
from federation.transport.auth import authenticate_request
from federation.transport.routes import federation_path
from media_repo.headers import content_disposition

if TYPE_CHECKING:
    from homeserver.app import HomeServer

_MEDIA = "(?P<media_id>[^/]+)"
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def multipart_body(
    data: bytes | None,
    content_type: str | None,
    file_name: str | None,
    location: str | None = None,
) -> RawBody:
    """The two-part answer: `{}`, then the bytes or (with `location`) a redirect part."""
    if location is not None:
        second_headers = {"Location": location}
        payload = b""
    else:
        content_type = content_type or DEFAULT_CONTENT_TYPE
        second_headers = {
            "Content-Type": content_type,
            "Content-Disposition": content_disposition(content_type, file_name),
        }
        payload = data or b""
    boundary = secrets.token_hex(16)
    while boundary.encode("ascii") in payload:  # practically never, but it must not be
        boundary = secrets.token_hex(16)
    delimiter = b"--" + boundary.encode("ascii")

    def headers_block(headers: dict[str, str]) -> bytes:
        return b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"

    body = b"".join([
        delimiter, b"\r\n",
        headers_block({"Content-Type": "application/json"}), b"{}", b"\r\n",
        delimiter, b"\r\n",
        headers_block(second_headers), payload, b"\r\n",
        delimiter, b"--\r\n",
    ])
    return RawBody(body, {"Content-Type": f"multipart/mixed; boundary={boundary}"})


class _FederationMedia:
    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs


class FederationDownloadServlet(_FederationMedia):
    """GET /_matrix/federation/v1/media/download/{mediaId}?timeout_ms="""

    PATTERNS = [federation_path(f"/media/download/{_MEDIA}")]

    async def on_GET(self, request: HeddleRequest, media_id: str) -> tuple[int, Any]:
        await authenticate_request(self._hs, request, None)
        wait_ms = parse_int_query(request, "timeout_ms", min_value=0)
        media = self._hs.media
        server_name = self._hs.server_name
        info = await media.get_media_info(server_name, media_id, wait_ms)
        url = media.download_url(info, None)
        if url is not None:
            return 200, multipart_body(None, None, None, location=url)
        download = await media.download(server_name, media_id, wait_ms)
        info = download.info
        return 200, multipart_body(download.data, info.content_type, info.upload_name)


class FederationThumbnailServlet(_FederationMedia):
    """GET /_matrix/federation/v1/media/thumbnail/{mediaId}?width=&height=&method=&animated=
    &timeout_ms="""

    PATTERNS = [federation_path(f"/media/thumbnail/{_MEDIA}")]

    async def on_GET(self, request: HeddleRequest, media_id: str) -> tuple[int, Any]:
        await authenticate_request(self._hs, request, None)
        width, height, method, animated, wait_ms = parse_thumbnail_query(request)
        thumb = await self._hs.media.thumbnail(
            self._hs.server_name, media_id, width, height, method, animated, wait_ms
        )
        return 200, multipart_body(thumb.data, thumb.content_type, None)
