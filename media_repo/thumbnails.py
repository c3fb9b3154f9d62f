"""Thumbnail generation: pure functions, bytes in and bytes out.

Nothing here touches the reactor, the disk or the network. Decoding and resizing are
CPU-bound, so the caller runs `check_image` and `make_thumbnail` in a thread
(`deferToThread`). Spec: client-server API, content repository, "Thumbnails".

Choices, in one place:

* Only JPEG, PNG, GIF and WebP are opened at all (`Image.open(..., formats=...)`), so
  Pillow's other, less exercised decoders are never reachable from hostile uploads.
* Decompression bombs are refused from the header alone: `Image.open` is lazy and
  reads only the dimensions, which are compared with `max_pixels` before any pixel is
  decoded. Pillow's own guard (`Image.MAX_IMAGE_PIXELS`, which raises
  `DecompressionBombError` beyond twice that value while opening) is left at its
  default rather than changed process-wide, and its error is reported as
  `ThumbnailError`; with the default `max_pixels` our limit is the tighter one.
* "scale" fits the image inside the box keeping its aspect ratio and never upscales; an
  image already inside the box keeps its dimensions.
* "crop" takes the largest centred region with the box's aspect ratio and shrinks it to
  exactly the box. When the image is smaller than the box in either direction it is not
  upscaled: the region is returned at its native size, so the aspect ratio is the one
  asked for but the dimensions are smaller (the spec allows this when "the original
  content makes that impossible").
* Even when no resizing is needed the image is re-encoded, so EXIF (GPS position,
  camera serial numbers) and every other metadata chunk is stripped. The EXIF
  orientation is applied to the pixels first. An embedded ICC profile is used to
  convert the pixels to sRGB and is then dropped.
* Output format for stills: PNG for PNG and GIF input (line art, palettes, text) and for
  anything with transparency; JPEG otherwise (photographs).
* `animated=True` on an animated GIF or WebP gives an animated thumbnail in the same
  format, every frame resized. At most `MAX_ANIMATED_FRAMES` frames are kept, and fewer
  if decoding or encoding them would exceed the pixel budgets below; an animation that
  cannot keep at least two frames becomes a still. Animated PNG (APNG) input is
  thumbnailed as a still of its first frame. `animated=False` always gives a still.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from PIL import Image, ImageOps

THUMBNAILABLE_TYPES: frozenset[str] = frozenset(
    {"image/jpeg", "image/png", "image/gif", "image/webp"}
)

# The sizes the spec says servers SHOULD pre-generate: (width, height, method).
DEFAULT_THUMBNAIL_SIZES: tuple[tuple[int, int, str], ...] = (
    (32, 32, "crop"),
    (96, 96, "crop"),
    (320, 240, "scale"),
    (640, 480, "scale"),
    (800, 600, "scale"),
)

METHODS: frozenset[str] = frozenset({"crop", "scale"})

DEFAULT_MAX_PIXELS = 32_000_000
MAX_ANIMATED_FRAMES = 100
# Pixels decoded across all frames of an animation (source dimensions x frames).
MAX_ANIMATED_INPUT_PIXELS = 400_000_000
# Pixels written across all frames of an animated thumbnail.
MAX_ANIMATED_OUTPUT_PIXELS = 20_000_000

JPEG_QUALITY = 80
WEBP_QUALITY = 80

_FORMAT_TO_TYPE = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}
_ANIMATABLE = frozenset({"GIF", "WEBP"})

# What Pillow's decoders raise on corrupt, truncated or hostile input.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,  # raised by several plugins for malformed headers
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    Image.DecompressionBombError,
)


class ThumbnailError(Exception):
    """The data is not an image we can thumbnail: corrupt, truncated, of an unsupported
    type, or too large to decode safely."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    content_type: str
    animated: bool
    frames: int


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    content_type: str
    width: int
    height: int
    animated: bool


# ---------------------------------------------------------------------------
# Inspection


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Identify `data` from its header without decoding its pixels.

    Raises ThumbnailError if it is not a JPEG/PNG/GIF/WebP image, if its header is
    malformed, or if width * height exceeds `max_pixels`.
    """
    _img, info = _open(data, max_pixels)
    return info


def _open(data: bytes, max_pixels: int) -> tuple[Image.Image, ImageInfo]:
    try:
        img = Image.open(io.BytesIO(data), formats=list(_FORMAT_TO_TYPE))
    except Image.DecompressionBombError as e:
        raise ThumbnailError(f"image too large: {e}") from e
    except _DECODE_ERRORS as e:
        raise ThumbnailError(f"not a supported image: {e}") from e

    width, height = img.size
    if width < 1 or height < 1:
        raise ThumbnailError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ThumbnailError(
            f"image too large: {width}x{height} exceeds {max_pixels} pixels"
        )
    fmt = _format_of(img)
    try:
        # MPO (a JPEG with extra pictures, e.g. stereo or depth) is not an animation.
        frames = 1 if fmt == "JPEG" else int(getattr(img, "n_frames", 1))
        img.seek(0)
    except _DECODE_ERRORS as e:
        raise ThumbnailError(f"corrupt image: {e}") from e
    info = ImageInfo(
        width=width,
        height=height,
        content_type=_FORMAT_TO_TYPE[fmt],
        animated=frames > 1,
        frames=frames,
    )
    return img, info


def _format_of(img: Image.Image) -> str:
    # Pillow's JPEG opener hands back an MPO image for multi-picture JPEGs from cameras.
    return "JPEG" if img.format == "MPO" else (img.format or "")


# ---------------------------------------------------------------------------
# Geometry (pure integer arithmetic, unit-tested directly)


def scaled_size(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int]:
    """The "scale" output size: fit within width x height, aspect kept, no upscaling."""
    if src_w <= width and src_h <= height:
        return src_w, src_h
    if width * src_h <= height * src_w:
        # The width is the binding constraint.
        return width, max(1, min(height, round(src_h * width / src_w)))
    return max(1, min(width, round(src_w * height / src_h))), height


def crop_region(
    src_w: int, src_h: int, width: int, height: int
) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The "crop" geometry: the largest centred (left, top, right, bottom) region of the
    source with the box's aspect ratio, and the size to output it at (the box, or the
    region itself when the source is too small to fill the box without upscaling)."""
    if src_w * height >= src_h * width:
        # Source is wider than the box: keep the full height, trim the sides.
        region_h = src_h
        region_w = max(1, min(src_w, round(src_h * width / height)))
    else:
        region_w = src_w
        region_h = max(1, min(src_h, round(src_w * height / width)))
    left = (src_w - region_w) // 2
    top = (src_h - region_h) // 2
    box = (left, top, left + region_w, top + region_h)
    if region_w >= width and region_h >= height:
        return box, (width, height)
    return box, (region_w, region_h)


def _output_size(src_w: int, src_h: int, width: int, height: int, method: str) -> tuple[int, int]:
    if method == "scale":
        return scaled_size(src_w, src_h, width, height)
    return crop_region(src_w, src_h, width, height)[1]


def _resize(frame: Image.Image, width: int, height: int, method: str) -> Image.Image:
    src_w, src_h = frame.size
    if method == "scale":
        size = scaled_size(src_w, src_h, width, height)
        if size == frame.size:
            return frame
        return frame.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    box, size = crop_region(src_w, src_h, width, height)
    if size == (box[2] - box[0], box[3] - box[1]):
        return frame.crop(box)
    return frame.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


# ---------------------------------------------------------------------------
# Thumbnailing


def make_thumbnail(
    data: bytes,
    width: int,
    height: int,
    method: str,
    animated: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Thumbnail:
    """Thumbnail `data` for a width x height request with `method` ("crop" or "scale").

    Raises ValueError for a bad request (method or non-positive size; the caller
    validates those) and ThumbnailError for data that cannot be thumbnailed.
    """
    if method not in METHODS:
        raise ValueError(f"unknown thumbnail method {method!r}")
    if width < 1 or height < 1:
        raise ValueError(f"thumbnail size must be positive, not {width}x{height}")

    img, info = _open(data, max_pixels)
    fmt = _format_of(img)
    try:
        if animated and info.animated and fmt in _ANIMATABLE:
            thumb = _animated_thumbnail(img, info, fmt, width, height, method)
            if thumb is not None:
                return thumb
            img.seek(0)
        return _still_thumbnail(img, fmt, width, height, method)
    except Image.DecompressionBombError as e:
        raise ThumbnailError(f"image too large: {e}") from e
    except _DECODE_ERRORS as e:
        raise ThumbnailError(f"corrupt image: {e}") from e


def _still_thumbnail(
    img: Image.Image, fmt: str, width: int, height: int, method: str
) -> Thumbnail:
    if fmt == "JPEG":
        _draft_jpeg(img, width, height, method)
    img.load()
    frame = ImageOps.exif_transpose(img)
    frame = _to_srgb(frame, img.info.get("icc_profile"))
    frame = _normalise_mode(frame)
    frame = _resize(frame, width, height, method)

    has_alpha = frame.mode in ("RGBA", "LA")
    if has_alpha or fmt in ("PNG", "GIF"):
        return _encode_still(frame, "PNG")
    return _encode_still(frame, "JPEG")


def _draft_jpeg(img: Image.Image, width: int, height: int, method: str) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the thumbnail is small enough;
    `draft` never goes below the size asked for, so quality is unaffected."""
    src_w, src_h = img.size
    transposed = _exif_orientation(img) in (5, 6, 7, 8)
    if transposed:
        src_w, src_h = src_h, src_w
    if method == "scale":
        need_w, need_h = scaled_size(src_w, src_h, width, height)
    else:
        # The crop region is shrunk to the box; the whole image scaled by the same factor.
        box, (out_w, out_h) = crop_region(src_w, src_h, width, height)
        region_w, region_h = box[2] - box[0], box[3] - box[1]
        need_w = -(-src_w * out_w // region_w)
        need_h = -(-src_h * out_h // region_h)
    if transposed:
        need_w, need_h = need_h, need_w
    img.draft(img.mode if img.mode in ("RGB", "L") else None, (need_w, need_h))


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except _DECODE_ERRORS:
        return 1


def _to_srgb(frame: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert pixels tagged with an ICC profile to sRGB, so that dropping the profile
    from the output does not shift colours. On any failure the pixels are kept as they
    are (slightly off colours beat no thumbnail)."""
    if not icc or frame.mode not in ("RGB", "RGBA", "CMYK"):
        return frame
    # Imported on first use: its colour-management library costs a server 3 MB of memory
    # from the start, and most images carry no profile.
    from PIL import ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        dst = ImageCms.createProfile("sRGB")
        out_mode = "RGBA" if frame.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(frame, src, dst, outputMode=out_mode)
    except ImageCms.PyCMSError:
        return frame
    except _DECODE_ERRORS:
        return frame
    return converted if converted is not None else frame


def _has_transparency(frame: Image.Image) -> bool:
    if frame.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return True
    return "transparency" in frame.info


def _normalise_mode(frame: Image.Image) -> Image.Image:
    """Bring any decoded mode to L, LA, RGB or RGBA (what resizing and both encoders
    handle well); palette images are expanded so resampling is not nearest-neighbour."""
    if frame.mode in ("L", "LA", "RGB", "RGBA"):
        return frame
    if _has_transparency(frame):
        return frame.convert("RGBA")
    if frame.mode.startswith("I;16") or frame.mode == "I":
        # 16-bit greyscale: scale down to 8 bits rather than clip at 255.
        return frame.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if frame.mode in ("1", "F"):
        return frame.convert("L")
    return frame.convert("RGB")


def _encode_still(frame: Image.Image, fmt: str) -> Thumbnail:
    out = frame.copy() if frame.info else frame
    out.info = {}  # never let Pillow carry EXIF, ICC, text chunks or comments over
    buf = io.BytesIO()
    if fmt == "JPEG":
        if out.mode not in ("RGB", "L"):
            out = out.convert("RGB")
        out.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
        content_type = "image/jpeg"
    else:
        out.save(buf, "PNG")
        content_type = "image/png"
    return Thumbnail(
        data=buf.getvalue(),
        content_type=content_type,
        width=out.width,
        height=out.height,
        animated=False,
    )


def _animated_thumbnail(
    img: Image.Image, info: ImageInfo, fmt: str, width: int, height: int, method: str
) -> Thumbnail | None:
    """Every frame resized, in the source format; None when fewer than two frames fit
    the budgets (the caller then makes a still)."""
    out_w, out_h = _output_size(info.width, info.height, width, height, method)
    keep = min(
        info.frames,
        MAX_ANIMATED_FRAMES,
        MAX_ANIMATED_INPUT_PIXELS // (info.width * info.height),
        MAX_ANIMATED_OUTPUT_PIXELS // (out_w * out_h),
    )
    if keep < 2:
        return None

    frames: list[Image.Image] = []
    durations: list[int] = []
    for index in range(keep):
        img.seek(index)
        if img.width * img.height > info.width * info.height:
            # A frame larger than the canvas it declared: not worth the risk.
            raise ThumbnailError("animation frame larger than its canvas")
        frame = img.convert("RGBA")
        if frame.size != (info.width, info.height):
            frame = frame.resize((info.width, info.height))
        frames.append(_resize(frame, width, height, method))
        durations.append(int(img.info.get("duration", 100)) or 100)
    loop = int(img.info.get("loop", 0))

    first, rest = frames[0], frames[1:]
    for frame in frames:
        frame.info = {}
    buf = io.BytesIO()
    if fmt == "GIF":
        first.save(
            buf, "GIF", save_all=True, append_images=rest, duration=durations,
            loop=loop, disposal=2, optimize=False,
        )
        content_type = "image/gif"
    else:
        first.save(
            buf, "WEBP", save_all=True, append_images=rest, duration=durations,
            loop=loop, quality=WEBP_QUALITY,
        )
        content_type = "image/webp"
    return Thumbnail(
        data=buf.getvalue(),
        content_type=content_type,
        width=first.width,
        height=first.height,
        animated=True,
    )


# ---------------------------------------------------------------------------
# Choosing a pre-generated size


def pick_pregenerated(
    sizes: list[tuple[int, int, str]] | tuple[tuple[int, int, str], ...],
    width: int,
    height: int,
    method: str,
) -> tuple[int, int, str]:
    """The configured (width, height, method) that best serves a request.

    Per the spec the server returns the smallest thumbnail at least as large as asked
    for, of the same method if possible. In order of preference:

    1. the smallest configured size of the same method covering width x height;
    2. the smallest configured size of the other method covering it;
    3. nothing covers it: the largest size of the same method (closest we have), or,
       if there is none of that method, the largest size overall.

    "Smallest" and "largest" compare area, then width. Raises ValueError if `sizes` is
    empty.
    """
    if not sizes:
        raise ValueError("no thumbnail sizes configured")

    def area(size: tuple[int, int, str]) -> tuple[int, int]:
        return size[0] * size[1], size[0]

    covering = [s for s in sizes if s[0] >= width and s[1] >= height]
    same_method = [s for s in covering if s[2] == method]
    if same_method:
        return min(same_method, key=area)
    if covering:
        return min(covering, key=area)
    same_method = [s for s in sizes if s[2] == method]
    return max(same_method or list(sizes), key=area)
