"""Safe decoding: every kind of odd or hostile image becomes RGB or a clear DecodeError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipelines.decode import DecodeError, decode_caption, decode_image, to_rgb


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that claims ``width`` x ``height`` (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_plain_jpeg_and_png() -> None:
    img = Image.new("RGB", (30, 20), (200, 10, 10))
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "TIFF"):
        d = decode_image(encode(img, fmt))
        assert d.image.mode == "RGB" and d.image.size == (30, 20) and d.format == fmt


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    d = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert d.image.size == (10, 40)
    assert (d.width, d.height) == (10, 40)


def test_palette_with_transparency_composited_on_white() -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    img.putpixel((0, 0), 1)
    d = decode_image(encode(img, "PNG", transparency=0))
    px = np.asarray(d.image)
    assert px[0, 0].tolist() == [0, 0, 0]  # opaque palette entry 1 (black)
    assert px[4, 4].tolist() == [255, 255, 255]  # transparent red -> white background


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited(mode: str) -> None:
    img = Image.new(mode, (6, 6), (0, 0) if mode == "LA" else (0, 0, 0, 0))
    d = decode_image(encode(img, "PNG"))
    assert np.asarray(d.image)[3, 3].tolist() == [255, 255, 255]


def test_cmyk_jpeg_to_rgb() -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    d = decode_image(encode(img, "JPEG"))
    r, g, b = np.asarray(d.image)[8, 8].tolist()
    assert d.mode == "CMYK" and r > 200 and g < 60 and b < 60


def test_16_bit_greyscale_is_scaled() -> None:
    arr = np.full((4, 4), 257 * 100, dtype=np.uint16)
    arr[0, 0] = 65535
    img = Image.fromarray(arr)
    d = decode_image(encode(img, "PNG"))
    px = np.asarray(d.image)
    assert px[0, 0].tolist() == [255, 255, 255] and px[2, 2].tolist() == [100, 100, 100]


def test_float_tiff_and_bilevel() -> None:
    f = Image.fromarray(np.full((5, 5), 0.5, dtype=np.float32), "F")
    assert np.asarray(decode_image(encode(f, "TIFF")).image)[0, 0].tolist() == [128, 128, 128]
    one = Image.new("1", (5, 5), 1)
    assert np.asarray(decode_image(encode(one, "PNG")).image)[0, 0].tolist() == [255] * 3
    grey = Image.new("L", (5, 5), 77)
    assert np.asarray(decode_image(encode(grey, "JPEG")).image)[0, 0, 0] in range(75, 80)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    d = decode_image(buf.getvalue())
    r, g, b = np.asarray(d.image)[5, 5].tolist()
    assert d.frames == 2 and r > 200 and b < 50


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty image file"),
        (b"<!DOCTYPE html><html><body>404 not found</body></html>", "looks like an HTML page"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "looks like an SVG"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "PostScript"),
        (b"just some text, not an image", "unsupported or unrecognised image format"),
        (png_header_only(100_000, 100_000), "decompression bomb"),
    ],
)
def test_bad_bytes_have_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_image(data)


def test_truncated_jpeg_fails_with_reason() -> None:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode_image(data[: len(data) // 2])


def test_limits_are_configurable() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(DecodeError, match="decompression bomb refused: 100x100"):
        decode_image(data, max_pixels=5_000)
    with pytest.raises(DecodeError, match="too large"):
        decode_image(data, max_bytes=10)
    assert decode_image(data, max_pixels=10_000).image.size == (100, 100)


def test_to_rgb_keeps_rgb_untouched() -> None:
    img = Image.new("RGB", (2, 2))
    assert to_rgb(img) is img


def test_decode_caption() -> None:
    assert decode_caption("a red dog") == ("a red dog", None)
    assert decode_caption(b"a red dog") == ("a red dog", None)
    assert decode_caption("\ufeffa".encode()) == ("a", None)
    assert decode_caption(None) == (None, "missing caption")
    assert decode_caption(b"  \n") == (None, "missing caption")
    text, problem = decode_caption(b"caf\xe9 au lait")
    assert text == "caf\\xe9 au lait"
    assert problem is not None and "not valid UTF-8" in problem and "offset 3" in problem
