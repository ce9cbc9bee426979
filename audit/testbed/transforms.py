"""The transforms of copy-detection benchmarks, for planting near-duplicates.

Copy-detection benchmarks (DISC21, Copydays) build their copies from an original with the edits
that images undergo when re-posted: crops, resizes, re-encoding at low JPEG quality, colour
changes, blur, mirroring, overlaid text or stickers, added borders, and a change of file format.
:func:`copy_transform` applies one or several of them, deterministically from a numpy
``Generator``, and returns the edited image with a description of what was done (recorded per
row in a testbed's ``truth.parquet``), so a detector's misses can be broken down by edit.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

COPY_TRANSFORMS = (
    "crop",
    "resize",
    "jpeg",
    "jitter",
    "blur",
    "flip",
    "text",
    "emoji",
    "border",
    "format",
)
"""Every edit :func:`copy_transform` knows, in the order it applies them."""

_WORDS = ("SALE", "hello", "#nofilter", "© 2024", "wow", "look!", "meme", "repost", "lol")
FORMATS = ("PNG", "WEBP", "BMP", "JPEG")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def _crop(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Remove 10-50 % of the area, keeping a random window of the same aspect ratio."""
    removed = float(rng.uniform(0.10, 0.50))
    side = np.sqrt(1.0 - removed)
    w, h = img.size
    cw, ch = max(8, int(round(w * side))), max(8, int(round(h * side)))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch)), f"crop:{removed:.2f}"


def _resize(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    f = float(rng.choice([0.3, 0.4, 0.5, 0.6, 0.75, 1.5]))
    w, h = img.size
    size = (max(16, int(round(w * f))), max(16, int(round(h * f))))
    return img.resize(size, Image.BICUBIC), f"resize:{f:g}"


def _jitter(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    b, c, s = (float(v) for v in rng.uniform(0.7, 1.3, size=3))
    img = ImageEnhance.Brightness(img).enhance(b)
    img = ImageEnhance.Contrast(img).enhance(c)
    img = ImageEnhance.Color(img).enhance(s)
    return img, f"jitter:{b:.2f},{c:.2f},{s:.2f}"


def _blur(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    r = float(rng.uniform(0.5, 2.0)) * max(img.size) / 256
    return img.filter(ImageFilter.GaussianBlur(r)), f"blur:{r:.2f}"


def _text(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    img = img.copy()
    w, h = img.size
    word = str(rng.choice(_WORDS))
    size = max(10, int(h * float(rng.uniform(0.08, 0.16))))
    draw = ImageDraw.Draw(img)
    font = _font(size)
    x = int(rng.integers(0, max(1, w // 2)))
    y = int(rng.choice([int(h * 0.03), int(h * 0.82)]))
    colour = tuple(int(v) for v in rng.choice([[255, 255, 255], [0, 0, 0], [255, 230, 0]]))
    draw.text(
        (x, y),
        word,
        fill=colour,
        font=font,
        stroke_width=max(1, size // 12),
        stroke_fill=(0, 0, 0) if colour != (0, 0, 0) else (255, 255, 255),
    )
    return img, f"text:{word}"


def _emoji(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A sticker: a smiley face (yellow disc, eyes, mouth) over a corner of the image."""
    img = img.copy()
    w, h = img.size
    r = max(6, int(min(w, h) * float(rng.uniform(0.08, 0.15))))
    cx = int(rng.choice([r + 2, w - r - 2]))
    cy = int(rng.choice([r + 2, h - r - 2]))
    d = ImageDraw.Draw(img)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 204, 0), outline=(120, 80, 0))
    e = max(1, r // 5)
    for ex in (cx - r // 3, cx + r // 3):
        d.ellipse((ex - e, cy - r // 3 - e, ex + e, cy - r // 3 + e), fill=(60, 40, 0))
    d.arc(
        (cx - r // 2, cy - r // 4, cx + r // 2, cy + r // 2),
        20,
        160,
        fill=(60, 40, 0),
        width=max(1, r // 8),
    )
    return img, f"emoji:{r}"


def _border(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    frac = float(rng.uniform(0.04, 0.15))
    b = max(2, int(round(min(img.size) * frac)))
    colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
    return ImageOps.expand(img, border=b, fill=colour), f"border:{frac:.2f}"


_EDITS = {
    "crop": _crop,
    "resize": _resize,
    "jitter": _jitter,
    "blur": _blur,
    "flip": lambda img, rng: (ImageOps.mirror(img), "flip"),
    "text": _text,
    "emoji": _emoji,
    "border": _border,
}


def copy_transform(
    img: Image.Image, kinds: Sequence[str], rng: np.random.Generator
) -> tuple[bytes, str, str]:
    """Apply the edits ``kinds`` (a subset of :data:`COPY_TRANSFORMS`, applied in that order)
    to ``img`` and encode the result. Returns ``(encoded bytes, file extension, description)``.

    ``jpeg`` re-encodes at quality 30-90; ``format`` saves as PNG, WEBP or BMP (or a default
    JPEG); without either the copy is saved as PNG.
    """
    unknown = [k for k in kinds if k not in COPY_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown copy transforms {unknown}; known: {', '.join(COPY_TRANSFORMS)}")
    img = img.convert("RGB")
    desc: list[str] = []
    for kind in COPY_TRANSFORMS:
        if kind in kinds and kind in _EDITS:
            img, d = _EDITS[kind](img, rng)
            desc.append(d)
    buf = io.BytesIO()
    if "jpeg" in kinds:
        q = int(rng.integers(30, 91))
        img.save(buf, "JPEG", quality=q)
        desc.append(f"jpeg:{q}")
        ext = ".jpg"
    elif "format" in kinds:
        fmt = str(rng.choice(FORMATS))
        img.save(buf, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
        desc.append(f"format:{fmt.lower()}")
        ext = "." + {"JPEG": "jpg"}.get(fmt, fmt.lower())
    else:
        img.save(buf, "PNG")
        ext = ".png"
    return buf.getvalue(), ext, "+".join(desc) or "reencode"


def random_copy_kinds(rng: np.random.Generator, max_edits: int = 3) -> list[str]:
    """One to ``max_edits`` distinct edits drawn uniformly (a copy as it is found re-posted)."""
    n = int(rng.integers(1, max_edits + 1))
    return [str(k) for k in rng.choice(COPY_TRANSFORMS, size=n, replace=False)]
