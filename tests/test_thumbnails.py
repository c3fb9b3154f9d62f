"""Thumbnail generation (media_repo/thumbnails.py): pure functions, no reactor.

Every image is generated in memory with Pillow, except the decompression bomb, whose PNG
is written by hand so that it declares 50,000 x 50,000 pixels in a few dozen bytes.
"""

from __future__ import annotations

import io
import struct
import unittest
import zlib

from PIL import Image, ImageCms

from media_repo.thumbnails import (
    DEFAULT_THUMBNAIL_SIZES,
    THUMBNAILABLE_TYPES,
    ThumbnailError,
    check_image,
    crop_region,
    make_thumbnail,
    pick_pregenerated,
    scaled_size,
)

ORIENTATION = 0x0112


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _photo(width: int, height: int, fmt: str = "JPEG", **params: object) -> bytes:
    """A gradient, so JPEG has something to compress and orientation is visible."""
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    return _encode(img, fmt, **params)


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _pixel(img: Image.Image, x: int, y: int) -> tuple[int, ...]:
    """A pixel as a tuple of channel values, whatever the mode (L gives a 1-tuple)."""
    value = img.getpixel((x, y))
    if isinstance(value, tuple):
        return tuple(int(v) for v in value)
    assert isinstance(value, int | float)
    return (int(value),)


def _frames(img: Image.Image) -> int:
    return int(getattr(img, "n_frames", 1))


def _animated_gif(frames: int = 3, size: tuple[int, int] = (200, 100)) -> bytes:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    images = [Image.new("RGB", size, colours[i % len(colours)]) for i in range(frames)]
    return _encode(images[0], "GIF", save_all=True, append_images=images[1:],
                   duration=50, loop=0)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG declaring width x height, with one tiny IDAT: it cannot
    decode fully, but its header is all a lazy opener reads."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 16)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


class GeometryTests(unittest.TestCase):
    def test_scale_landscape_fits_width(self) -> None:
        self.assertEqual(scaled_size(1000, 500, 320, 240), (320, 160))

    def test_scale_portrait_fits_height(self) -> None:
        self.assertEqual(scaled_size(500, 1000, 320, 240), (120, 240))

    def test_scale_never_upscales(self) -> None:
        self.assertEqual(scaled_size(100, 50, 320, 240), (100, 50))

    def test_scale_very_thin_image_keeps_one_pixel(self) -> None:
        self.assertEqual(scaled_size(10000, 1, 100, 100), (100, 1))

    def test_crop_landscape_trims_sides(self) -> None:
        box, size = crop_region(1000, 500, 96, 96)
        self.assertEqual(box, (250, 0, 750, 500))
        self.assertEqual(size, (96, 96))

    def test_crop_portrait_trims_top_and_bottom(self) -> None:
        box, size = crop_region(500, 1000, 100, 50)
        self.assertEqual(box, (0, 375, 500, 625))
        self.assertEqual(size, (100, 50))

    def test_crop_smaller_than_box_keeps_aspect_without_upscaling(self) -> None:
        box, size = crop_region(100, 50, 96, 96)
        self.assertEqual(box, (25, 0, 75, 50))
        self.assertEqual(size, (50, 50))


class CheckImageTests(unittest.TestCase):
    def test_reports_dimensions_and_type(self) -> None:
        info = check_image(_photo(64, 48))
        self.assertEqual((info.width, info.height), (64, 48))
        self.assertEqual(info.content_type, "image/jpeg")
        self.assertFalse(info.animated)
        self.assertEqual(info.frames, 1)

    def test_animated_gif_is_reported_animated(self) -> None:
        info = check_image(_animated_gif(3))
        self.assertEqual(info.content_type, "image/gif")
        self.assertTrue(info.animated)
        self.assertEqual(info.frames, 3)

    def test_refuses_image_over_max_pixels(self) -> None:
        with self.assertRaises(ThumbnailError):
            check_image(_photo(100, 100), max_pixels=9_999)
        check_image(_photo(100, 100), max_pixels=10_000)

    def test_fifty_thousand_square_png_is_refused_from_its_header(self) -> None:
        with self.assertRaises(ThumbnailError):
            check_image(_png_header_only(50_000, 50_000))
        with self.assertRaises(ThumbnailError):
            make_thumbnail(_png_header_only(50_000, 50_000), 32, 32, "crop")

    def test_header_under_pillow_limit_but_over_ours_is_refused(self) -> None:
        # 40 megapixels: below Pillow's own bomb threshold, above the 32 MP default.
        with self.assertRaises(ThumbnailError):
            make_thumbnail(_png_header_only(8_000, 5_000), 96, 96, "crop")

    def test_text_file_is_refused(self) -> None:
        with self.assertRaises(ThumbnailError):
            check_image(b"Hello, this is definitely not an image.\n" * 10)

    def test_unsupported_image_format_is_refused(self) -> None:
        bmp = _encode(Image.new("RGB", (10, 10)), "BMP")
        with self.assertRaises(ThumbnailError):
            check_image(bmp)

    def test_thumbnailable_types(self) -> None:
        self.assertEqual(THUMBNAILABLE_TYPES,
                         {"image/jpeg", "image/png", "image/gif", "image/webp"})


class ScaleAndCropTests(unittest.TestCase):
    def test_scale_landscape_jpeg(self) -> None:
        thumb = make_thumbnail(_photo(1000, 500), 320, 240, "scale")
        self.assertEqual((thumb.width, thumb.height), (320, 160))
        self.assertEqual(thumb.content_type, "image/jpeg")
        self.assertEqual(_open(thumb.data).size, (320, 160))

    def test_scale_portrait_jpeg(self) -> None:
        thumb = make_thumbnail(_photo(600, 1200), 320, 240, "scale")
        self.assertEqual(_open(thumb.data).size, (120, 240))

    def test_scale_small_image_keeps_size_but_is_reencoded(self) -> None:
        exif = Image.Exif()
        exif[0x010F] = "Spy Camera Co."  # Make
        original = _photo(100, 50, exif=exif.tobytes())
        thumb = make_thumbnail(original, 320, 240, "scale")
        self.assertEqual((thumb.width, thumb.height), (100, 50))
        self.assertNotEqual(thumb.data, original)
        self.assertNotIn(b"Spy Camera", thumb.data)

    def test_crop_landscape_is_exactly_the_box(self) -> None:
        thumb = make_thumbnail(_photo(1000, 500), 96, 96, "crop")
        self.assertEqual(_open(thumb.data).size, (96, 96))

    def test_crop_portrait_to_landscape_box(self) -> None:
        thumb = make_thumbnail(_photo(480, 640), 320, 240, "crop")
        self.assertEqual(_open(thumb.data).size, (320, 240))

    def test_crop_small_image_is_not_upscaled(self) -> None:
        thumb = make_thumbnail(_photo(100, 50), 96, 96, "crop")
        self.assertEqual(_open(thumb.data).size, (50, 50))

    def test_large_jpeg_uses_reduced_decoding_and_keeps_quality_size(self) -> None:
        thumb = make_thumbnail(_photo(4000, 3000), 32, 32, "crop")
        self.assertEqual(_open(thumb.data).size, (32, 32))

    def test_bad_method_and_size_are_programming_errors(self) -> None:
        with self.assertRaises(ValueError):
            make_thumbnail(_photo(10, 10), 32, 32, "stretch")
        with self.assertRaises(ValueError):
            make_thumbnail(_photo(10, 10), 0, 32, "scale")


class MetadataTests(unittest.TestCase):
    def _rotated_photo(self) -> bytes:
        exif = Image.Exif()
        exif[ORIENTATION] = 6  # stored landscape, displayed rotated 90 degrees clockwise
        exif[0x010F] = "Spy Camera Co."
        return _photo(400, 200, exif=exif.tobytes())

    def test_exif_orientation_6_swaps_dimensions(self) -> None:
        thumb = make_thumbnail(self._rotated_photo(), 320, 240, "scale")
        self.assertEqual((thumb.width, thumb.height), (120, 240))
        out = _open(thumb.data).convert("L")
        self.assertEqual(out.size, (120, 240))
        # The stored image darkens towards its top edge; turned clockwise, that edge is
        # now on the right.
        self.assertGreater(_pixel(out, 5, 120)[0], _pixel(out, 114, 120)[0] + 100)

    def test_exif_orientation_6_with_crop(self) -> None:
        thumb = make_thumbnail(self._rotated_photo(), 100, 150, "crop")
        self.assertEqual(_open(thumb.data).size, (100, 150))

    def test_output_has_no_exif(self) -> None:
        thumb = make_thumbnail(self._rotated_photo(), 96, 96, "crop")
        out = _open(thumb.data)
        self.assertNotIn("exif", out.info)
        self.assertEqual(len(out.getexif()), 0)
        self.assertNotIn(b"Exif", thumb.data)

    def test_output_has_no_icc_profile(self) -> None:
        profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        img = Image.new("RGB", (200, 100), (10, 200, 30))
        thumb = make_thumbnail(_encode(img, "JPEG", icc_profile=profile), 96, 96, "crop")
        self.assertNotIn("icc_profile", _open(thumb.data).info)

    def test_png_text_chunks_are_stripped(self) -> None:
        from PIL import PngImagePlugin
        meta = PngImagePlugin.PngInfo()
        meta.add_text("Author", "secret-author-name")
        data = _encode(Image.new("RGB", (200, 200), (1, 2, 3)), "PNG", pnginfo=meta)
        thumb = make_thumbnail(data, 32, 32, "crop")
        self.assertNotIn(b"secret-author-name", thumb.data)


class FormatTests(unittest.TestCase):
    def test_png_with_alpha_stays_png_with_alpha(self) -> None:
        img = Image.new("RGBA", (300, 200), (255, 0, 0, 0))
        img.paste((0, 0, 255, 255), (100, 50, 200, 150))
        thumb = make_thumbnail(_encode(img, "PNG"), 96, 96, "crop")
        self.assertEqual(thumb.content_type, "image/png")
        out = _open(thumb.data)
        self.assertEqual(out.format, "PNG")
        self.assertEqual(out.mode, "RGBA")
        self.assertEqual(_pixel(out, 0, 0)[3], 0)  # corners stay transparent
        self.assertEqual(_pixel(out, 48, 48)[3], 255)

    def test_opaque_png_stays_png(self) -> None:
        thumb = make_thumbnail(_photo(300, 200, "PNG"), 96, 96, "crop")
        self.assertEqual(thumb.content_type, "image/png")

    def test_palette_png_with_transparency_keeps_it(self) -> None:
        img = Image.new("P", (100, 100), 0)
        img.putpalette([255, 255, 255, 255, 0, 0] + [0] * 762)
        img.paste(1, (25, 25, 75, 75))
        thumb = make_thumbnail(_encode(img, "PNG", transparency=0), 50, 50, "scale")
        out = _open(thumb.data).convert("RGBA")
        self.assertEqual(thumb.content_type, "image/png")
        self.assertEqual(_pixel(out, 0, 0)[3], 0)

    def test_opaque_webp_becomes_jpeg(self) -> None:
        thumb = make_thumbnail(_photo(300, 200, "WEBP"), 96, 96, "crop")
        self.assertEqual(thumb.content_type, "image/jpeg")

    def test_sixteen_bit_greyscale_png(self) -> None:
        img = Image.new("I;16", (100, 100), 40000)
        thumb = make_thumbnail(_encode(img, "PNG"), 32, 32, "crop")
        out = _open(thumb.data)
        self.assertEqual(out.size, (32, 32))
        self.assertEqual(_pixel(out.convert("L"), 5, 5), (40000 // 256,))

    def test_cmyk_jpeg_becomes_rgb(self) -> None:
        data = _encode(Image.new("CMYK", (200, 200), (0, 255, 255, 0)), "JPEG")
        thumb = make_thumbnail(data, 32, 32, "crop")
        out = _open(thumb.data)
        self.assertEqual(out.mode, "RGB")
        r, g, b = _pixel(out, 16, 16)
        self.assertGreater(r, 200)
        self.assertLess(g, 60)


class AnimationTests(unittest.TestCase):
    def test_animated_gif_gives_animated_gif_with_every_frame(self) -> None:
        thumb = make_thumbnail(_animated_gif(3), 96, 96, "crop", animated=True)
        self.assertTrue(thumb.animated)
        self.assertEqual(thumb.content_type, "image/gif")
        out = Image.open(io.BytesIO(thumb.data))
        self.assertEqual(_frames(out), 3)
        self.assertEqual(out.size, (96, 96))
        colours = []
        for index in range(3):
            out.seek(index)
            colours.append(_pixel(out.convert("RGB"), 48, 48))
        self.assertEqual(colours, [(255, 0, 0), (0, 255, 0), (0, 0, 255)])

    def test_animated_gif_scale(self) -> None:
        thumb = make_thumbnail(_animated_gif(3), 100, 100, "scale", animated=True)
        out = Image.open(io.BytesIO(thumb.data))
        self.assertEqual((out.size, _frames(out)), ((100, 50), 3))

    def test_animated_gif_without_animated_gives_still_first_frame(self) -> None:
        thumb = make_thumbnail(_animated_gif(3), 96, 96, "crop", animated=False)
        self.assertFalse(thumb.animated)
        self.assertEqual(thumb.content_type, "image/png")
        out = Image.open(io.BytesIO(thumb.data))
        self.assertEqual(_frames(out), 1)
        self.assertEqual(_pixel(out.convert("RGB"), 48, 48), (255, 0, 0))

    def test_animated_webp_gives_animated_webp(self) -> None:
        frames = [Image.new("RGB", (200, 100), c)
                  for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
        data = _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                       duration=50, loop=0)
        thumb = make_thumbnail(data, 50, 50, "crop", animated=True)
        self.assertEqual((thumb.content_type, thumb.animated), ("image/webp", True))
        out = Image.open(io.BytesIO(thumb.data))
        self.assertEqual((out.size, _frames(out)), ((50, 50), 3))

    def test_animated_request_for_still_jpeg_gives_still(self) -> None:
        thumb = make_thumbnail(_photo(200, 100), 96, 96, "crop", animated=True)
        self.assertEqual((thumb.content_type, thumb.animated), ("image/jpeg", False))

    def test_frames_are_capped(self) -> None:
        thumb = make_thumbnail(_animated_gif(120, (20, 20)), 10, 10, "crop", animated=True)
        out = Image.open(io.BytesIO(thumb.data))
        self.assertEqual(_frames(out), 100)


class CorruptInputTests(unittest.TestCase):
    def test_random_bytes(self) -> None:
        with self.assertRaises(ThumbnailError):
            make_thumbnail(bytes(range(256)) * 4, 32, 32, "crop")

    def test_empty_bytes(self) -> None:
        with self.assertRaises(ThumbnailError):
            make_thumbnail(b"", 32, 32, "crop")

    def test_truncated_jpeg(self) -> None:
        data = _photo(400, 300, quality=95)
        with self.assertRaises(ThumbnailError):
            make_thumbnail(data[: len(data) // 2], 32, 32, "crop")

    def test_truncated_png(self) -> None:
        data = _photo(400, 300, "PNG")
        with self.assertRaises(ThumbnailError):
            make_thumbnail(data[: len(data) // 2], 32, 32, "crop")

    def test_png_with_corrupt_pixel_data(self) -> None:
        with self.assertRaises(ThumbnailError):
            make_thumbnail(_png_header_only(100, 100), 32, 32, "crop")

    def test_text_file(self) -> None:
        with self.assertRaises(ThumbnailError):
            make_thumbnail(b"#!/bin/sh\necho hello\n", 32, 32, "scale")


class PickPregeneratedTests(unittest.TestCase):
    sizes = list(DEFAULT_THUMBNAIL_SIZES)

    def test_defaults_are_the_spec_sizes(self) -> None:
        self.assertEqual(self.sizes, [(32, 32, "crop"), (96, 96, "crop"),
                                      (320, 240, "scale"), (640, 480, "scale"),
                                      (800, 600, "scale")])

    def test_exact_match(self) -> None:
        self.assertEqual(pick_pregenerated(self.sizes, 96, 96, "crop"), (96, 96, "crop"))

    def test_smallest_larger_of_same_method(self) -> None:
        self.assertEqual(pick_pregenerated(self.sizes, 40, 40, "crop"), (96, 96, "crop"))
        self.assertEqual(pick_pregenerated(self.sizes, 321, 200, "scale"),
                         (640, 480, "scale"))

    def test_other_method_when_same_method_is_too_small(self) -> None:
        self.assertEqual(pick_pregenerated(self.sizes, 200, 200, "crop"),
                         (320, 240, "scale"))

    def test_small_scale_request_prefers_scale(self) -> None:
        self.assertEqual(pick_pregenerated(self.sizes, 32, 32, "scale"),
                         (320, 240, "scale"))

    def test_nothing_big_enough_gives_largest_of_same_method(self) -> None:
        self.assertEqual(pick_pregenerated(self.sizes, 2000, 2000, "scale"),
                         (800, 600, "scale"))
        self.assertEqual(pick_pregenerated(self.sizes, 2000, 2000, "crop"),
                         (96, 96, "crop"))

    def test_nothing_of_the_method_gives_largest_overall(self) -> None:
        sizes = [(32, 32, "crop"), (64, 64, "crop")]
        self.assertEqual(pick_pregenerated(sizes, 1000, 1000, "scale"), (64, 64, "crop"))

    def test_no_sizes_configured(self) -> None:
        with self.assertRaises(ValueError):
            pick_pregenerated([], 32, 32, "crop")


if __name__ == "__main__":
    unittest.main()
