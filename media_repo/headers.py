"""Response headers for served media, one definition for every way media is served (our
download endpoints, and S3 presigned URLs that carry them as response overrides)."""

from __future__ import annotations

from urllib.parse import quote

# Content types a browser may render in place (the Matrix spec's list of types safe to
# serve `inline`); everything else is served as an attachment so that HTML, SVG and
# scripts uploaded as media are never rendered on the bucket's origin.
INLINE_CONTENT_TYPES = frozenset({
    "text/css", "text/plain", "text/csv",
    "application/json", "application/ld+json",
    "image/jpeg", "image/gif", "image/png", "image/apng", "image/webp", "image/avif",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mp4", "audio/webm", "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave",
    "audio/wav", "audio/x-wav", "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})


def content_disposition(content_type: str, filename: str | None) -> str:
    """`inline` or `attachment` (by content type), with the filename encoded per RFC 6266:
    a quoted `filename=` when it is plain printable ASCII, `filename*=utf-8''...`
    (percent-encoded, RFC 8187) otherwise."""
    base_type = content_type.split(";", 1)[0].strip().lower()
    disposition = "inline" if base_type in INLINE_CONTENT_TYPES else "attachment"
    if not filename:
        return disposition
    if all(0x20 <= ord(c) < 0x7F for c in filename) and '"' not in filename \
            and "\\" not in filename:
        return f'{disposition}; filename="{filename}"'
    return f"{disposition}; filename*=utf-8''{quote(filename, safe='')}"

# Served media never runs as a page of ours, whatever it claims to be.
CONTENT_SECURITY_POLICY = (
    "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf;"
    " style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
)
