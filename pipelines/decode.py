"""Safe decoding of untrusted image bytes and caption bytes.

Scraped data contains every kind of broken or hostile file. ``decode_image`` turns bytes into an
RGB ``PIL.Image`` or raises :class:`DecodeError` with a one-line reason; it never lets a bad file
crash a worker:

- only raster formats from :data:`SAFE_FORMATS` are opened (PIL's EPS plugin, for one, would run
  Ghostscript on the data);
- decompression bombs are refused from the header, before any pixel is decoded
  (``max_pixels``), and oversized payloads before they are parsed (``max_bytes``);
- EXIF orientation is applied; palette, alpha, CMYK, 16-bit, float and greyscale images become
  RGB (transparent pixels are composited on white); animated images use their first frame;
- truncated or corrupt data fails with PIL's reason.

``decode_caption`` turns caption bytes into text and says when it is missing or not UTF-8.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485
"""Default pixel limit (width x height), PIL's own ``MAX_IMAGE_PIXELS`` (about 9459 x 9459)."""

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Default limit on the size of one encoded image."""

SAFE_FORMATS: tuple[str, ...] = (
    "JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO", "PPM", "ICO", "TGA", "AVIF",
)  # fmt: skip
"""PIL formats we agree to parse. Everything else is ``failed_to_decode``."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "pgm", "pbm", "ico",
    "tga", "avif", "mpo", "jfif",
})  # fmt: skip
"""File extensions treated as images by the readers (content is sniffed, not trusted)."""

_SNIFF = (
    (b"<svg", "an SVG document"),
    (b"<?xml", "an XML document"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"%pdf", "a PDF document"),
    (b"%!ps", "a PostScript document"),
    (b"{", "JSON text"),
)


_OPENABLE: tuple[str, ...] | None = None


def _openable_formats() -> tuple[str, ...]:
    """:data:`SAFE_FORMATS` that this PIL build can open (plugins loaded once)."""
    global _OPENABLE
    if _OPENABLE is None:
        Image.init()
        _OPENABLE = tuple(f for f in SAFE_FORMATS if f in Image.OPEN)
    return _OPENABLE


class DecodeError(ValueError):
    """The bytes are not a usable image; ``str(exc)`` is the reason recorded in ``error``."""


@dataclass
class DecodedImage:
    """An RGB image plus what was found in the file."""

    image: Image.Image
    format: str
    mode: str
    width: int
    height: int
    frames: int = 1


def _describe_unknown(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    for prefix, what in _SNIFF:
        if head.startswith(prefix):
            return f"not an image: looks like {what}"
    return f"unsupported or unrecognised image format (first bytes {data[:8]!r})"


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparent pixels (alpha, palette transparency) are composited on ``background``;
    16-bit and 32-bit integer greyscale are scaled from 0..65535; float images from 0..1
    (or clipped to 0..255 when their values exceed 1).
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("PA",):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr, 0, 65535) / 257.0
        return Image.fromarray(np.round(arr).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.round(np.clip(arr, 0, 255)).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    # "1", "L", "CMYK", "YCbCr", "LAB", "HSV", "RGBX": PIL knows the conversion.
    return img.convert("RGB")


def decode_image(
    data: bytes | bytearray | memoryview | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedImage:
    """Decode untrusted image bytes into an RGB image, or raise :class:`DecodeError`.

    The pixel limit is checked from the header before any decoding (decompression bombs);
    animated images keep their first frame; EXIF orientation is applied.
    """
    if data is None:
        raise DecodeError("no image data")
    data = bytes(data)
    if len(data) == 0:
        raise DecodeError("empty image file (0 bytes)")
    if len(data) > max_bytes:
        raise DecodeError(f"image file too large: {len(data)} bytes > max_bytes {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_openable_formats())
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb refused: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError(_describe_unknown(data)) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a per-sample failure
        raise DecodeError(f"corrupt image header: {type(exc).__name__}: {exc}") from None
    try:
        fmt = img.format or "unknown"
        width, height = img.size
        if width <= 0 or height <= 0:
            raise DecodeError(f"invalid image size {width}x{height}")
        if width * height > max_pixels:
            raise DecodeError(
                f"decompression bomb refused: {width}x{height} = {width * height} pixels "
                f"> max_pixels {max_pixels}"
            )
        frames = int(getattr(img, "n_frames", 1) or 1)
        if frames > 1:
            img.seek(0)
        mode = img.mode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - a broken EXIF block: keep the stored orientation
            oriented = img
        rgb = to_rgb(oriented if oriented is not None else img)
        if rgb is img:
            rgb = img.copy()  # detach from the file object
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt pixel data
        raise DecodeError(f"corrupt or truncated image data ({fmt}): {exc}") from None
    finally:
        img.close()
    return DecodedImage(rgb, fmt, mode, rgb.width, rgb.height, frames)


def decode_caption(raw: bytes | str | None) -> tuple[str | None, str | None]:
    """Caption text and a problem description (``None`` when the caption is fine).

    Missing or blank captions give ``(None, "missing caption")``. Bytes that are not UTF-8 give
    the text with the bad bytes escaped (``\\xNN``) and a problem naming the first bad byte; such a
    caption is recorded, not embedded.
    """
    if raw is None:
        return None, "missing caption"
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 1]
            text = raw.decode("utf-8", errors="backslashreplace")
            return text, f"caption is not valid UTF-8 (byte {bad!r} at offset {exc.start})"
    else:
        text = str(raw)
    if not text.strip():
        return None, "missing caption"
    return text, None
