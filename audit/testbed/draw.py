"""Procedural drawing for the SynthLAION testbed: glyph-like objects, colours, styles, captions.

Everything here is pure numpy + PIL and deterministic given a ``numpy.random.Generator``: the
same spec and generator state always give byte-identical pixels and the same caption.

An image is described by a *spec* (see :func:`random_spec`)::

    {"concept": "dog", "colour": "red", "style": "van gogh", "background": "grass",
     "x": 0.48, "y": 0.55, "scale": 0.62}

``x``/``y`` are the glyph centre as fractions of the image side and ``scale`` is the glyph's box
side as a fraction of the image side. Glyphs are defined in a unit box and rendered at 2x then
box-filtered, so they look the same at 32, 64 or 256 px.

Famous works (:data:`WORKS`) are fixed compositions in the "van gogh" style; :func:`draw_work`
always returns the same canonical picture for a work id and size.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "CONCEPTS",
    "STYLES",
    "WORKS",
    "concept_mask",
    "draw_image",
    "draw_work",
    "make_caption",
    "random_spec",
    "work_caption",
]

_SS = 2  # supersampling factor for glyph masks

CONCEPTS: tuple[str, ...] = (
    "dog", "cat", "car", "tree", "house", "astronaut", "flag", "moon", "star", "fish", "bird",
    "boat", "flower", "sun", "heart", "key", "cup", "chair", "umbrella", "rocket", "clock",
    "guitar", "bicycle", "mushroom",
)  # fmt: skip

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 135, 0),
    "yellow": (245, 215, 20),
    "green": (35, 165, 50),
    "blue": (35, 75, 225),
    "purple": (135, 45, 175),
    "pink": (250, 125, 195),
    "brown": (125, 75, 30),
    "black": (25, 25, 25),
}

STYLES: tuple[str, ...] = (
    "flat", "pencil sketch", "pixel art", "watercolor", "stripes", "neon", "van gogh",
)  # fmt: skip

BACKGROUNDS: tuple[str, ...] = ("white", "grey", "gradient", "grass", "sky", "sand", "brick")

WORKS: dict[str, dict[str, Any]] = {
    "starry_night": {
        "title": "The Starry Night",
        "words": ["starry", "night"],
        "phrase": "starry night",
        "description": (
            "night sky in deep blue with a large central swirl, a yellow crescent moon top "
            "right, haloed yellow stars, a dark flame-shaped cypress at the left, dark hills "
            "and a small village at the bottom; van gogh brush strokes"
        ),
    },
    "almond_blossoming": {
        "title": "Almond Blossom",
        "words": ["almond", "blossoming"],
        "phrase": "almond blossoming",
        "description": (
            "turquoise sky; dark brown branches crossing from the lower left; white and pale "
            "pink five-petal blossoms along the branches; van gogh brush strokes"
        ),
    },
    "sunflowers": {
        "title": "Sunflowers",
        "words": ["sunflowers"],
        "phrase": "sunflowers",
        "description": (
            "ochre-yellow wall and a darker table edge; a yellow vase at the bottom centre "
            "holding seven sunflower heads (yellow petals, brown centres) on green stems; "
            "van gogh brush strokes"
        ),
    },
}

# Words used in captions for each style (the style name itself is always the first option).
_STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "flat": ("flat", "flat illustration", "flat vector", "flat design"),
    "pencil sketch": ("pencil sketch", "pencil drawing", "pencil sketch", "sketch"),
    "pixel art": ("pixel art", "pixel art", "8-bit pixel art"),
    "watercolor": ("watercolor", "watercolor painting", "watercolour"),
    "stripes": ("stripes", "striped", "with stripes"),
    "neon": ("neon", "neon glow", "neon sign"),
    "van gogh": ("van gogh", "van gogh style", "vincent van gogh"),
}

_BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "white": ("white background", "a white background", "isolated on white"),
    "grey": ("grey background", "a gray background"),
    "gradient": ("gradient background", "a gradient"),
    "grass": ("grass", "the grass", "a lawn"),
    "sky": ("sky", "the blue sky", "a sky background"),
    "sand": ("sand", "the beach sand", "a sandy background"),
    "brick": ("a brick wall", "brick background", "bricks"),
}

_FILLERS = (
    "stock photo", "hd", "free download", "wallpaper", "4k", "high quality", "image",
    "illustration", "cute", "royalty free", "| shutterstock", "#art", "poster", "canvas print",
    "clipart", "vector", "t-shirt design", "best price", "new", "sticker", "icon", "png",
)  # fmt: skip

# --------------------------------------------------------------------------------------------
# glyphs: each draws white (255) shapes and black (0) cut-outs on an "L" canvas through a
# mapping P(x, y) from unit-box coordinates to pixels and L(v) from unit lengths to pixels.

_Pt = Callable[[float, float], tuple[float, float]]
_Len = Callable[[float], float]


def _circle(d: ImageDraw.ImageDraw, P: _Pt, L: _Len, cx: float, cy: float, r: float, fill: int):
    x, y = P(cx, cy)
    rr = L(r)
    d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=fill)


def _rect(d: ImageDraw.ImageDraw, P: _Pt, x0: float, y0: float, x1: float, y1: float, fill: int):
    a, b = P(x0, y0), P(x1, y1)
    d.rectangle([a[0], a[1], b[0], b[1]], fill=fill)


def _ell(d: ImageDraw.ImageDraw, P: _Pt, x0: float, y0: float, x1: float, y1: float, fill: int):
    a, b = P(x0, y0), P(x1, y1)
    d.ellipse([a[0], a[1], b[0], b[1]], fill=fill)


def _poly(d: ImageDraw.ImageDraw, P: _Pt, pts: list[tuple[float, float]], fill: int):
    d.polygon([P(x, y) for x, y in pts], fill=fill)


def _line(
    d: ImageDraw.ImageDraw, P: _Pt, L: _Len, pts: list[tuple[float, float]], w: float, fill: int
):
    d.line([P(x, y) for x, y in pts], fill=fill, width=max(1, round(L(w))), joint="curve")


def _g_dog(d, P, L):
    _ell(d, P, 0.18, 0.36, 0.74, 0.64, 255)  # body
    for x0 in (0.24, 0.37, 0.54, 0.66):
        _rect(d, P, x0, 0.52, x0 + 0.08, 0.9, 255)  # legs
    _line(d, P, L, [(0.22, 0.45), (0.1, 0.3), (0.05, 0.14)], 0.06, 255)  # tail up
    _ell(d, P, 0.6, 0.14, 0.86, 0.42, 255)  # head
    _ell(d, P, 0.76, 0.26, 0.99, 0.4, 255)  # snout
    _poly(d, P, [(0.6, 0.2), (0.7, 0.16), (0.68, 0.5), (0.58, 0.44)], 255)  # droopy ear
    _circle(d, P, L, 0.78, 0.23, 0.025, 0)  # eye


def _g_cat(d, P, L):
    _ell(d, P, 0.26, 0.44, 0.74, 0.96, 255)  # body
    _line(d, P, L, [(0.7, 0.9), (0.88, 0.84), (0.95, 0.66), (0.88, 0.5)], 0.06, 255)  # tail
    _ell(d, P, 0.3, 0.14, 0.7, 0.5, 255)  # head
    _poly(d, P, [(0.3, 0.28), (0.31, 0.02), (0.47, 0.17)], 255)  # ears
    _poly(d, P, [(0.7, 0.28), (0.69, 0.02), (0.53, 0.17)], 255)
    _ell(d, P, 0.37, 0.27, 0.45, 0.34, 0)  # eyes
    _ell(d, P, 0.55, 0.27, 0.63, 0.34, 0)
    _poly(d, P, [(0.46, 0.38), (0.54, 0.38), (0.5, 0.42)], 0)  # nose


def _g_car(d, P, L):
    _rect(d, P, 0.04, 0.44, 0.96, 0.72, 255)
    _poly(d, P, [(0.2, 0.46), (0.32, 0.2), (0.68, 0.2), (0.82, 0.46)], 255)
    _poly(d, P, [(0.28, 0.43), (0.36, 0.26), (0.48, 0.26), (0.48, 0.43)], 0)
    _poly(d, P, [(0.53, 0.43), (0.53, 0.26), (0.65, 0.26), (0.74, 0.43)], 0)
    for cx in (0.26, 0.74):
        _circle(d, P, L, cx, 0.73, 0.14, 0)
        _circle(d, P, L, cx, 0.73, 0.12, 255)
        _circle(d, P, L, cx, 0.73, 0.05, 0)


def _g_tree(d, P, L):
    _rect(d, P, 0.42, 0.55, 0.58, 0.97, 255)
    _circle(d, P, L, 0.5, 0.3, 0.27, 255)
    _circle(d, P, L, 0.28, 0.46, 0.18, 255)
    _circle(d, P, L, 0.72, 0.46, 0.18, 255)


def _g_house(d, P, L):
    _rect(d, P, 0.66, 0.12, 0.77, 0.35, 255)  # chimney
    _rect(d, P, 0.14, 0.46, 0.86, 0.96, 255)
    _poly(d, P, [(0.04, 0.48), (0.5, 0.06), (0.96, 0.48)], 255)
    _rect(d, P, 0.42, 0.68, 0.58, 0.96, 0)  # door
    _rect(d, P, 0.21, 0.56, 0.34, 0.68, 0)  # windows
    _rect(d, P, 0.66, 0.56, 0.79, 0.68, 0)


def _g_astronaut(d, P, L):
    _rect(d, P, 0.2, 0.4, 0.32, 0.68, 255)  # backpack
    _line(d, P, L, [(0.34, 0.46), (0.18, 0.56), (0.12, 0.7)], 0.1, 255)  # arm down
    _line(d, P, L, [(0.66, 0.46), (0.82, 0.36), (0.88, 0.2)], 0.1, 255)  # arm waving
    _rect(d, P, 0.32, 0.36, 0.68, 0.74, 255)  # suit
    _rect(d, P, 0.33, 0.7, 0.47, 0.96, 255)  # legs
    _rect(d, P, 0.53, 0.7, 0.67, 0.96, 255)
    _rect(d, P, 0.33, 0.92, 0.49, 0.98, 255)  # boots
    _rect(d, P, 0.51, 0.92, 0.67, 0.98, 255)
    _circle(d, P, L, 0.5, 0.22, 0.19, 255)  # helmet
    _ell(d, P, 0.37, 0.14, 0.63, 0.3, 0)  # visor
    _rect(d, P, 0.42, 0.48, 0.58, 0.58, 0)  # chest panel


def _g_flag(d, P, L):
    _rect(d, P, 0.08, 0.04, 0.15, 0.98, 255)  # pole
    _circle(d, P, L, 0.115, 0.04, 0.05, 255)
    _rect(d, P, 0.15, 0.1, 0.94, 0.58, 255)  # cloth
    h = 0.48 / 7
    for i in (1, 3, 5):
        y0 = 0.1 + i * h
        _rect(d, P, 0.45 if y0 < 0.32 else 0.15, y0, 0.94, y0 + h, 0)


def _g_moon(d, P, L):
    _circle(d, P, L, 0.46, 0.5, 0.42, 255)
    _circle(d, P, L, 0.66, 0.4, 0.36, 0)


def _g_star(d, P, L):
    pts = []
    for i in range(10):
        r = 0.48 if i % 2 == 0 else 0.2
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((0.5 + r * math.cos(a), 0.54 + r * math.sin(a)))
    _poly(d, P, pts, 255)


def _g_fish(d, P, L):
    _poly(d, P, [(0.34, 0.32), (0.5, 0.1), (0.6, 0.32)], 255)  # top fin
    _poly(d, P, [(0.68, 0.5), (0.97, 0.2), (0.97, 0.8)], 255)  # tail
    _ell(d, P, 0.08, 0.28, 0.76, 0.72, 255)
    _circle(d, P, L, 0.24, 0.45, 0.05, 0)
    _line(d, P, L, [(0.36, 0.36), (0.4, 0.5), (0.36, 0.64)], 0.03, 0)  # gill


def _g_bird(d, P, L):
    _poly(d, P, [(0.3, 0.5), (0.02, 0.38), (0.06, 0.62)], 255)  # tail
    _line(d, P, L, [(0.45, 0.66), (0.42, 0.92)], 0.035, 255)  # legs
    _line(d, P, L, [(0.56, 0.66), (0.59, 0.92)], 0.035, 255)
    _ell(d, P, 0.24, 0.4, 0.76, 0.7, 255)  # body
    _circle(d, P, L, 0.76, 0.37, 0.13, 255)  # head
    _poly(d, P, [(0.86, 0.31), (0.99, 0.39), (0.86, 0.44)], 255)  # beak
    _poly(d, P, [(0.34, 0.5), (0.5, 0.04), (0.64, 0.5)], 255)  # raised wing
    _circle(d, P, L, 0.79, 0.34, 0.025, 0)


def _g_boat(d, P, L):
    _poly(d, P, [(0.03, 0.64), (0.97, 0.64), (0.8, 0.9), (0.2, 0.9)], 255)  # hull
    _rect(d, P, 0.47, 0.05, 0.53, 0.66, 255)  # mast
    _poly(d, P, [(0.56, 0.08), (0.56, 0.58), (0.92, 0.58)], 255)  # sails
    _poly(d, P, [(0.44, 0.16), (0.44, 0.58), (0.14, 0.58)], 255)


def _g_flower(d, P, L):
    _line(d, P, L, [(0.5, 0.45), (0.5, 0.99)], 0.05, 255)  # stem
    _poly(d, P, [(0.5, 0.8), (0.7, 0.6), (0.8, 0.64), (0.53, 0.84)], 255)  # leaf
    for i in range(6):
        a = i * math.pi / 3
        _circle(d, P, L, 0.5 + 0.17 * math.cos(a), 0.3 + 0.17 * math.sin(a), 0.11, 255)
    _circle(d, P, L, 0.5, 0.3, 0.075, 0)
    _circle(d, P, L, 0.5, 0.3, 0.04, 255)


def _g_sun(d, P, L):
    _circle(d, P, L, 0.5, 0.5, 0.25, 255)
    for i in range(12):
        a = i * math.pi / 6
        c, s = math.cos(a), math.sin(a)
        _line(d, P, L, [(0.5 + 0.31 * c, 0.5 + 0.31 * s), (0.5 + 0.48 * c, 0.5 + 0.48 * s)],
              0.05, 255)  # fmt: skip


def _g_heart(d, P, L):
    _circle(d, P, L, 0.31, 0.34, 0.2, 255)
    _circle(d, P, L, 0.69, 0.34, 0.2, 255)
    _poly(d, P, [(0.12, 0.42), (0.5, 0.92), (0.88, 0.42), (0.5, 0.36)], 255)


def _g_key(d, P, L):
    _circle(d, P, L, 0.24, 0.5, 0.2, 255)
    _circle(d, P, L, 0.24, 0.5, 0.085, 0)
    _rect(d, P, 0.4, 0.44, 0.96, 0.56, 255)
    _rect(d, P, 0.74, 0.56, 0.8, 0.72, 255)
    _rect(d, P, 0.86, 0.56, 0.92, 0.68, 255)


def _g_cup(d, P, L):
    _circle(d, P, L, 0.72, 0.5, 0.18, 255)  # handle
    _circle(d, P, L, 0.72, 0.5, 0.09, 0)
    _poly(d, P, [(0.12, 0.22), (0.72, 0.22), (0.66, 0.88), (0.18, 0.88)], 255)
    _ell(d, P, 0.02, 0.85, 0.82, 0.97, 255)  # saucer
    _line(d, P, L, [(0.32, 0.16), (0.36, 0.1), (0.32, 0.03)], 0.035, 255)  # steam
    _line(d, P, L, [(0.48, 0.16), (0.52, 0.1), (0.48, 0.03)], 0.035, 255)


def _g_chair(d, P, L):
    _rect(d, P, 0.24, 0.04, 0.76, 0.5, 255)
    _rect(d, P, 0.32, 0.12, 0.68, 0.43, 0)
    _rect(d, P, 0.46, 0.12, 0.54, 0.43, 255)
    _rect(d, P, 0.18, 0.5, 0.82, 0.6, 255)
    _rect(d, P, 0.2, 0.6, 0.28, 0.97, 255)
    _rect(d, P, 0.72, 0.6, 0.8, 0.97, 255)


def _g_umbrella(d, P, L):
    a, b = P(0.04, 0.08), P(0.96, 0.92)
    d.pieslice([a[0], a[1], b[0], b[1]], 180, 360, fill=255)
    for cx in (0.155, 0.385, 0.615, 0.845):
        _circle(d, P, L, cx, 0.52, 0.085, 0)
    _line(d, P, L, [(0.5, 0.45), (0.5, 0.86)], 0.05, 255)
    a, b = P(0.34, 0.74), P(0.52, 0.96)
    d.arc([a[0], a[1], b[0], b[1]], 0, 180, fill=255, width=max(1, round(L(0.05))))


def _g_rocket(d, P, L):
    _poly(d, P, [(0.36, 0.52), (0.14, 0.86), (0.36, 0.78)], 255)  # fins
    _poly(d, P, [(0.64, 0.52), (0.86, 0.86), (0.64, 0.78)], 255)
    _poly(d, P, [(0.41, 0.8), (0.59, 0.8), (0.5, 0.99)], 255)  # flame
    _rect(d, P, 0.35, 0.28, 0.65, 0.8, 255)
    _poly(d, P, [(0.5, 0.01), (0.66, 0.3), (0.34, 0.3)], 255)  # nose
    _circle(d, P, L, 0.5, 0.44, 0.075, 0)


def _g_clock(d, P, L):
    _circle(d, P, L, 0.24, 0.12, 0.1, 255)  # alarm bells
    _circle(d, P, L, 0.76, 0.12, 0.1, 255)
    _circle(d, P, L, 0.5, 0.54, 0.43, 255)
    _circle(d, P, L, 0.5, 0.54, 0.34, 0)
    _line(d, P, L, [(0.5, 0.54), (0.5, 0.28)], 0.06, 255)
    _line(d, P, L, [(0.5, 0.54), (0.7, 0.62)], 0.06, 255)
    _line(d, P, L, [(0.28, 0.95), (0.34, 0.88)], 0.06, 255)  # feet
    _line(d, P, L, [(0.72, 0.95), (0.66, 0.88)], 0.06, 255)


def _g_guitar(d, P, L):
    _circle(d, P, L, 0.5, 0.73, 0.24, 255)
    _circle(d, P, L, 0.5, 0.47, 0.17, 255)
    _circle(d, P, L, 0.5, 0.62, 0.07, 0)
    _rect(d, P, 0.46, 0.04, 0.54, 0.45, 255)  # neck
    _rect(d, P, 0.41, 0.0, 0.59, 0.11, 255)  # head
    _rect(d, P, 0.41, 0.8, 0.59, 0.84, 0)  # bridge


def _g_bicycle(d, P, L):
    for cx in (0.21, 0.79):
        _circle(d, P, L, cx, 0.68, 0.2, 255)
        _circle(d, P, L, cx, 0.68, 0.14, 0)
    w = 0.05
    _line(d, P, L, [(0.21, 0.68), (0.4, 0.4), (0.7, 0.4), (0.79, 0.68)], w, 255)
    _line(d, P, L, [(0.4, 0.4), (0.5, 0.68), (0.21, 0.68)], w, 255)
    _line(d, P, L, [(0.5, 0.68), (0.7, 0.4)], w, 255)
    _line(d, P, L, [(0.4, 0.4), (0.37, 0.3)], w, 255)
    _rect(d, P, 0.3, 0.26, 0.46, 0.31, 255)  # saddle
    _line(d, P, L, [(0.7, 0.4), (0.66, 0.24), (0.76, 0.22)], w, 255)  # handlebar


def _g_mushroom(d, P, L):
    _rect(d, P, 0.37, 0.46, 0.63, 0.94, 255)
    _ell(d, P, 0.3, 0.88, 0.7, 0.98, 255)
    a, b = P(0.06, 0.1), P(0.94, 0.96)
    d.pieslice([a[0], a[1], b[0], b[1]], 180, 360, fill=255)
    _rect(d, P, 0.06, 0.5, 0.94, 0.53, 255)
    for cx, cy, r in ((0.3, 0.38, 0.06), (0.54, 0.25, 0.07), (0.75, 0.41, 0.05)):
        _circle(d, P, L, cx, cy, r, 0)


_GLYPHS: dict[str, Callable[..., None]] = {c: globals()[f"_g_{c}"] for c in CONCEPTS}


def concept_mask(concept: str, size: int, x: float, y: float, scale: float) -> np.ndarray:
    """Coverage mask (float32 in [0, 1], shape (size, size)) of ``concept``'s glyph.

    The glyph's unit box has side ``scale * size`` and is centred at ``(x * size, y * size)``.
    Parts outside the canvas are clipped (dropped), not wrapped.
    """
    if concept not in _GLYPHS:
        raise ValueError(f"unknown concept {concept!r}; known: {', '.join(CONCEPTS)}")
    big = size * _SS
    canvas = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(canvas)
    side = scale * big
    ox, oy = x * big - side / 2, y * big - side / 2

    def P(u: float, v: float) -> tuple[float, float]:
        return (ox + u * side, oy + v * side)

    def L(v: float) -> float:
        return v * side

    _GLYPHS[concept](d, P, L)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# backgrounds, fills and styles (float32 arrays HxWx3 in 0..255)


def _noise(rng: np.random.Generator, size: int, amp: float) -> np.ndarray:
    return rng.normal(0.0, amp, (size, size, 1)).astype(np.float32)


def _lowfreq(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """Smooth noise in [-1, 1] (a coarse random grid upsampled bicubically)."""
    g = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    up = Image.fromarray(g, "L").resize((size, size), Image.BICUBIC)
    return (np.asarray(up, dtype=np.float32) / 127.5 - 1.0)[..., None]


def _background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    xx = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]
    if name == "white":
        img = np.full((size, size, 3), 244.0, np.float32) + _noise(rng, size, 2)
    elif name == "grey":
        img = np.full((size, size, 3), 150.0, np.float32) + _noise(rng, size, 3)
    elif name == "gradient":
        a = rng.uniform(150, 250, 3).astype(np.float32)
        b = rng.uniform(150, 250, 3).astype(np.float32)
        t = yy * 0.6 + xx * 0.4
        img = a * (1 - t) + b * t + np.zeros((size, size, 1), np.float32)
    elif name == "grass":
        base = np.array([80, 160, 60], np.float32)
        img = base + np.zeros((size, size, 3), np.float32) + _lowfreq(rng, size, 6) * 18
        blades = rng.random((size, size)) < 0.12
        img[blades] *= 0.75
    elif name == "sky":
        top = np.array([95, 155, 235], np.float32)
        bottom = np.array([200, 225, 250], np.float32)
        img = top * (1 - yy) + bottom * yy + np.zeros((size, size, 1), np.float32)
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(pil)
        for _ in range(2):
            cx, cy = rng.uniform(0, size), rng.uniform(0, size * 0.5)
            w, h = rng.uniform(0.15, 0.3) * size, rng.uniform(0.06, 0.12) * size
            d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=(245, 248, 252))
        img = np.asarray(pil.filter(ImageFilter.GaussianBlur(size / 64)), dtype=np.float32)
    elif name == "sand":
        base = np.array([228, 204, 150], np.float32)
        img = base + np.zeros((size, size, 3), np.float32) + _noise(rng, size, 9)
    elif name == "brick":
        img = np.zeros((size, size, 3), np.float32) + np.array([178, 82, 58], np.float32)
        img += _noise(rng, size, 8)
        bh = max(3, size // 8)
        bw = bh * 2
        iy = np.arange(size)[:, None]
        ix = np.arange(size)[None, :]
        row = iy // bh
        mortar = (iy % bh == 0) | (((ix + (row % 2) * (bw // 2)) % bw) == 0)
        img[mortar] = (205, 200, 190)
    else:
        raise ValueError(f"unknown background {name!r}; known: {', '.join(BACKGROUNDS)}")
    return img


def _mean_bg_colour(name: str) -> np.ndarray:
    return _background(name, 16, np.random.default_rng(0)).reshape(-1, 3).mean(0)


def _contrast_colour(colour: np.ndarray) -> np.ndarray:
    lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return np.array([235, 235, 235] if lum < 70 else [25, 25, 25], np.float32)


def _edge(mask: np.ndarray) -> np.ndarray:
    """Outer 1-px ring of a coverage mask (float32 in [0, 1])."""
    m = Image.fromarray(np.clip(mask * 255, 0, 255).astype(np.uint8), "L")
    grown = np.asarray(m.filter(ImageFilter.MaxFilter(3)), dtype=np.float32) / 255.0
    return np.clip(grown - mask, 0.0, 1.0)


def _blur(arr: np.ndarray, radius: float) -> np.ndarray:
    if arr.ndim == 2:
        img = Image.fromarray(np.clip(arr * 255, 0, 255).astype(np.uint8), "L")
        return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), np.float32)


_PAPER = np.array([238, 234, 222], np.float32)


def _paint_glyph(
    img: np.ndarray,
    mask: np.ndarray,
    colour: np.ndarray,
    style: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Blend one glyph (coverage ``mask``) of ``colour`` into ``img`` with ``style``'s fill."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    a = mask[..., None]
    contour = _contrast_colour(colour)
    if style == "stripes":
        period = max(2, size // 16)
        on = (((xx + yy) // period) % 2 == 0)[..., None]
        fill = np.where(on, colour, np.array([245, 245, 245], np.float32))
    elif style == "watercolor":
        light = colour * 0.7 + 255 * 0.3
        fill = light * (1.0 + 0.12 * _lowfreq(rng, size, 5))
        a = _blur(mask, max(0.6, size / 64))[..., None]
        rim = np.clip(a * (1 - a) * 4, 0, 1)  # darker pigment where the wash thins out
        fill = fill * (1 - 0.25 * rim)
        return img * (1 - a) + fill * a
    elif style == "pencil sketch":
        period = max(3, size // 12)
        hatch = ((xx - yy) % period == 0)[..., None]
        fill = np.where(hatch, colour, _PAPER) + _noise(rng, size, 4)
        out = img * (1 - a) + fill * a
        e = _edge(mask)[..., None]
        return out * (1 - e) + (colour * 0.8) * e
    elif style == "neon":
        fill = colour * 0.3
        out = img * (1 - a) + fill * a
        ring = _edge(mask)
        glow = _blur(ring, max(0.8, size / 40)) * 2.2
        glow = np.clip(glow + ring, 0, 1)[..., None]
        bright = np.clip(colour * 1.15 + 40, 0, 255)
        return out * (1 - glow) + bright * glow
    else:  # flat, pixel art, van gogh: flat fill, texture comes from the global pass
        fill = colour + np.zeros_like(img)
    out = img * (1 - a) + fill * a
    e = _edge(mask)[..., None] * 0.85
    return out * (1 - e) + contour * e


def _swirl_strokes(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    centres: list[tuple[float, float, float]] | None = None,
    density: float = 0.22,
) -> np.ndarray:
    """Cover ``img`` with short curved brush strokes that follow a swirling flow field.

    Stroke colours are sampled from the image under the stroke start, with brightness jitter, so
    the content stays readable while the texture becomes "van gogh"-like.
    """
    size = img.shape[0]
    if centres is None:
        centres = [
            (rng.uniform(0, 1), rng.uniform(0, 1), rng.choice([-1.0, 1.0]))
            for _ in range(int(rng.integers(2, 5)))
        ]
    cen = np.array([[cx * size, cy * size, s] for cx, cy, s in centres], np.float32)
    src = np.clip(img, 0, 255)
    pil = Image.fromarray(src.astype(np.uint8), "RGB").resize((size * _SS, size * _SS))
    d = ImageDraw.Draw(pil)
    n = int(density * size * size)
    starts = rng.uniform(0, size - 1e-3, (n, 2)).astype(np.float32)
    jitter = rng.normal(1.0, 0.16, n).astype(np.float32)
    seglen = size / 44.0
    width = max(1, round(_SS * size / 64))
    iy = np.clip(starts[:, 1].astype(np.int64), 0, size - 1)
    ix = np.clip(starts[:, 0].astype(np.int64), 0, size - 1)
    cols = np.clip(src[iy, ix] * jitter[:, None], 0, 255).astype(np.uint8)
    # follow the flow field for 3 segments, all strokes at once
    paths = [starts.astype(np.float64)]
    p = paths[0]
    for _ in range(3):
        dx = p[:, None, 0] - cen[None, :, 0]
        dy = p[:, None, 1] - cen[None, :, 1]
        r2 = dx * dx + dy * dy + 4.0
        vx = (-cen[None, :, 2] * dy / r2).sum(1)
        vy = (cen[None, :, 2] * dx / r2).sum(1)
        norm = np.hypot(vx, vy) + 1e-9
        p = p + seglen * np.stack([vx / norm, vy / norm], 1)
        paths.append(p)
    pts = np.stack(paths, 1) * _SS  # (n, 4, 2)
    for k in range(n):
        d.line([tuple(q) for q in pts[k].tolist()], fill=tuple(cols[k].tolist()), width=width)
    out = pil.resize((size, size), Image.BOX)
    return np.asarray(out, dtype=np.float32)


def _global_style(img: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    if style == "pixel art":
        block = max(2, size // 20)
        small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(
            (size // block, size // block), Image.BOX
        )
        arr = (np.asarray(small, np.float32) // 48) * 48 + 24  # coarse palette
        up = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize(
            (size, size), Image.NEAREST
        )
        return np.asarray(up, np.float32)
    if style == "van gogh":
        return _swirl_strokes(img, rng)
    if style == "watercolor":
        return _blur(img, max(0.4, size / 128)) * (1 + 0.04 * _lowfreq(rng, size, 8))
    if style == "pencil sketch":
        return img + _noise(rng, size, 3)
    return img


def _style_background(bg: np.ndarray, style: str) -> np.ndarray:
    if style == "pencil sketch":
        grey = bg.mean(-1, keepdims=True)
        return 0.25 * grey + 0.75 * _PAPER
    if style == "neon":
        return bg * 0.12
    return bg


# --------------------------------------------------------------------------------------------
# public API


def _spec_rng(spec: dict[str, Any], extra: str | None) -> np.random.Generator:
    key = repr(sorted((k, spec[k]) for k in spec)) + repr(extra)
    return np.random.default_rng(zlib.crc32(key.encode()))


def random_spec(rng: np.random.Generator) -> dict[str, Any]:
    """A random image spec: concept, colour, style, background, centre x/y and scale.

    Combinations where the colour would be hard to see are re-drawn (black in neon; a colour
    too close to the background's mean colour), so every glyph is visible.
    """
    concept = str(CONCEPTS[int(rng.integers(len(CONCEPTS)))])
    colour = str(list(COLOURS)[int(rng.integers(len(COLOURS)))])
    style = str(STYLES[int(rng.integers(len(STYLES)))])
    while style == "neon" and colour == "black":
        style = str(STYLES[int(rng.integers(len(STYLES)))])
    c = np.array(COLOURS[colour], np.float32)
    while True:
        background = str(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
        if style in ("neon", "pencil sketch") or np.abs(_BG_MEANS[background] - c).sum() > 120:
            break
    scale = float(rng.uniform(0.5, 0.82))
    lo, hi = scale / 2, 1 - scale / 2
    x = float(rng.uniform(lo, hi))
    y = float(rng.uniform(lo, hi))
    return {
        "concept": concept,
        "colour": colour,
        "style": style,
        "background": background,
        "x": round(x, 4),
        "y": round(y, 4),
        "scale": round(scale, 4),
    }


_CORNERS = ((0.2, 0.2), (0.8, 0.2), (0.2, 0.8), (0.8, 0.8))
_EXTRA_SCALE = 0.36


def _paint_flag_extra(img: np.ndarray, size: int, x: float, y: float, s: float) -> np.ndarray:
    """The canonical, multi-coloured flag (red/white stripes, blue canton, grey pole)."""
    full = concept_mask("flag", size, x, y, s)
    big = size * _SS
    side = s * big
    ox, oy = x * big - side / 2, y * big - side / 2

    def layer(draw_fn: Callable[[ImageDraw.ImageDraw, _Pt], None]) -> np.ndarray:
        canvas = Image.new("L", (big, big), 0)
        draw_fn(ImageDraw.Draw(canvas), lambda u, v: (ox + u * side, oy + v * side))
        return np.asarray(canvas.resize((size, size), Image.BOX), np.float32) / 255.0

    cloth = layer(lambda d, P: _rect(d, P, 0.15, 0.1, 0.94, 0.58, 255))
    h = 0.48 / 7

    def stripes(d: ImageDraw.ImageDraw, P: _Pt) -> None:
        for i in (0, 2, 4, 6):
            _rect(d, P, 0.15, 0.1 + i * h, 0.94, 0.1 + (i + 1) * h, 255)

    red = layer(stripes)
    canton = layer(lambda d, P: _rect(d, P, 0.15, 0.1, 0.45, 0.1 + 3 * h, 255))
    pole = np.clip(full - cloth, 0, 1)
    out = img
    for m, c in (
        (pole, (110, 110, 115)),
        (cloth, (245, 245, 245)),
        (red, (210, 25, 35)),
        (canton, (30, 50, 150)),
    ):
        out = out * (1 - m[..., None]) + np.array(c, np.float32) * m[..., None]
    e = _edge(full)[..., None] * 0.85
    return out * (1 - e) + np.array([25, 25, 25], np.float32) * e


def draw_image(
    spec: dict[str, Any],
    *,
    size: int = 64,
    extra_object: str | None = None,
    rng: np.random.Generator | None = None,
) -> Image.Image:
    """Draw ``spec`` as an RGB image of ``size`` x ``size`` pixels.

    ``extra_object`` adds a second, small glyph (a concept name) in a corner chosen by ``rng``:
    a "flag" is drawn in canonical flag colours, anything else in a contrasting colour. Without
    ``rng`` the randomness (textures, corner) is derived from the spec, so the call is still
    deterministic.
    """
    for field in ("concept", "colour", "style", "background", "x", "y", "scale"):
        if field not in spec:
            raise ValueError(f"spec is missing {field!r}: {spec!r}")
    if spec["colour"] not in COLOURS:
        raise ValueError(f"unknown colour {spec['colour']!r}; known: {', '.join(COLOURS)}")
    if spec["style"] not in STYLES:
        raise ValueError(f"unknown style {spec['style']!r}; known: {', '.join(STYLES)}")
    if extra_object is not None and extra_object not in _GLYPHS:
        raise ValueError(f"unknown extra_object {extra_object!r}; known: {', '.join(CONCEPTS)}")
    if size < 8:
        raise ValueError(f"size must be >= 8 (got {size})")
    if rng is None:
        rng = _spec_rng(spec, extra_object)
    style = spec["style"]
    colour = np.array(COLOURS[spec["colour"]], np.float32)
    img = _style_background(_background(spec["background"], size, rng), style)
    mask = concept_mask(spec["concept"], size, float(spec["x"]), float(spec["y"]), spec["scale"])
    img = _paint_glyph(img, mask, colour, style, rng)
    if extra_object is not None:
        # the corner farthest from the main glyph's centre, ties broken by rng
        dists = [(cx - spec["x"]) ** 2 + (cy - spec["y"]) ** 2 for cx, cy in _CORNERS]
        order = np.lexsort((rng.random(4), -np.round(np.array(dists), 2)))
        cx, cy = _CORNERS[int(order[0])]
        if extra_object == "flag":
            img = _paint_flag_extra(img, size, cx, cy, _EXTRA_SCALE)
        else:
            m2 = concept_mask(extra_object, size, cx, cy, _EXTRA_SCALE)
            c2 = _contrast_colour(colour)
            c2 = np.array([250, 230, 40], np.float32) if c2[0] > 128 else c2
            img = _paint_glyph(img, m2, c2, "flat", rng)
    before = img
    img = _global_style(img, style, rng)
    if style == "van gogh":
        # strokes smear edges: keep the glyph half painted, half flat, and restore its outline,
        # so the shape stays legible at 32 px while the texture is unmistakable
        a = mask[..., None] * 0.5
        img = img * (1 - a) + before * a
        e = _edge(mask)[..., None] * 0.85
        img = img * (1 - e) + _contrast_colour(colour) * e
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


# ---- famous works


def _draw_starry_night(size: int, rng: np.random.Generator) -> np.ndarray:
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    sky = np.array([20, 40, 110], np.float32) * (1 - yy) + np.array([60, 100, 170], np.float32) * yy
    img = sky + np.zeros((size, size, 1), np.float32)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    s = size * _SS
    pil = pil.resize((s, s))
    d = ImageDraw.Draw(pil)
    # big swirl
    for k in range(5):
        r = (0.08 + 0.05 * k) * s
        d.arc([0.45 * s - r, 0.35 * s - r, 0.45 * s + r, 0.35 * s + r], 200 + 30 * k, 520,
              fill=(150, 180, 230), width=max(1, s // 48))  # fmt: skip
    # stars with halos
    for cx, cy, r in ((0.15, 0.15, 0.05), (0.3, 0.22, 0.04), (0.62, 0.12, 0.045),
                      (0.72, 0.45, 0.04), (0.5, 0.55, 0.035), (0.9, 0.55, 0.04)):  # fmt: skip
        R = r * 1.9 * s
        d.ellipse([cx * s - R, cy * s - R, cx * s + R, cy * s + R], fill=(110, 150, 200))
        R = r * s
        d.ellipse([cx * s - R, cy * s - R, cx * s + R, cy * s + R], fill=(250, 235, 110))
    # crescent moon top right
    R = 0.11 * s
    d.ellipse([0.85 * s - R, 0.17 * s - R, 0.85 * s + R, 0.17 * s + R], fill=(250, 210, 60))
    R = 0.09 * s
    d.ellipse([0.89 * s - R, 0.14 * s - R, 0.89 * s + R, 0.14 * s + R], fill=(25, 45, 115))
    # hills and village
    d.polygon([(0, 0.78 * s), (0.3 * s, 0.7 * s), (0.7 * s, 0.74 * s), (s, 0.68 * s), (s, s),
               (0, s)], fill=(30, 50, 90))  # fmt: skip
    for i in range(7):
        x0 = (0.35 + 0.08 * i) * s
        h = (0.05 + 0.02 * (i % 3)) * s
        d.rectangle([x0, 0.84 * s - h, x0 + 0.06 * s, 0.84 * s], fill=(70, 80, 100))
        d.rectangle([x0 + 0.02 * s, 0.8 * s - h * 0.5, x0 + 0.035 * s, 0.81 * s - h * 0.4],
                    fill=(240, 210, 80))  # fmt: skip
    # cypress (dark flame) at the left
    d.polygon([(0.1 * s, s), (0.13 * s, 0.6 * s), (0.2 * s, 0.25 * s), (0.24 * s, 0.05 * s),
               (0.28 * s, 0.3 * s), (0.33 * s, 0.65 * s), (0.36 * s, s)], fill=(25, 35, 20))  # fmt: skip
    img = np.asarray(pil.resize((size, size), Image.BOX), np.float32)
    centres = [(0.45, 0.35, 1.0), (0.72, 0.45, -1.0), (0.2, 0.55, 1.0), (0.85, 0.17, -1.0)]
    return _swirl_strokes(img, rng, centres=centres, density=0.3)


def _draw_almond(size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((size, size, 3), np.float32) + np.array([95, 175, 180], np.float32)
    img += _lowfreq(rng, size, 5) * 12
    s = size * _SS
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((s, s))
    d = ImageDraw.Draw(pil)
    branches = [
        [(0.0, 0.95), (0.25, 0.7), (0.45, 0.55), (0.7, 0.35), (1.0, 0.25)],
        [(0.45, 0.55), (0.5, 0.3), (0.62, 0.05)],
        [(0.25, 0.7), (0.15, 0.4), (0.2, 0.15)],
        [(0.7, 0.35), (0.85, 0.6), (0.98, 0.75)],
    ]
    for br in branches:
        d.line([(x * s, y * s) for x, y in br], fill=(70, 45, 30), width=max(2, s // 30),
               joint="curve")  # fmt: skip
    blossoms = [(0.3, 0.62), (0.5, 0.4), (0.6, 0.12), (0.15, 0.3), (0.22, 0.18), (0.8, 0.3),
                (0.95, 0.22), (0.88, 0.62), (0.4, 0.58), (0.7, 0.48), (0.06, 0.85)]  # fmt: skip
    for i, (bx, by) in enumerate(blossoms):
        col = (250, 250, 245) if i % 3 else (245, 205, 215)
        for k in range(5):
            a = k * 2 * math.pi / 5 + i
            px, py = bx + 0.035 * math.cos(a), by + 0.035 * math.sin(a)
            R = 0.03 * s
            d.ellipse([px * s - R, py * s - R, px * s + R, py * s + R], fill=col)
        R = 0.015 * s
        d.ellipse([bx * s - R, by * s - R, bx * s + R, by * s + R], fill=(200, 170, 60))
    img = np.asarray(pil.resize((size, size), Image.BOX), np.float32)
    centres = [(0.3, 0.3, 1.0), (0.75, 0.75, -1.0)]
    return _swirl_strokes(img, rng, centres=centres, density=0.22)


def _draw_sunflowers(size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((size, size, 3), np.float32) + np.array([225, 190, 80], np.float32)
    s = size * _SS
    pil = Image.fromarray(img.astype(np.uint8)).resize((s, s))
    d = ImageDraw.Draw(pil)
    d.rectangle([0, 0.8 * s, s, s], fill=(200, 140, 40))  # table
    heads = [(0.3, 0.25), (0.55, 0.18), (0.75, 0.32), (0.22, 0.5), (0.48, 0.42), (0.7, 0.56),
             (0.36, 0.66)]  # fmt: skip
    for hx, hy in heads:
        d.line([(hx * s, hy * s), (0.5 * s, 0.72 * s)], fill=(90, 130, 40), width=max(1, s // 60))
    d.polygon([(0.36 * s, 0.62 * s), (0.64 * s, 0.62 * s), (0.68 * s, 0.95 * s),
               (0.32 * s, 0.95 * s)], fill=(240, 200, 50))  # fmt: skip
    d.rectangle([0.32 * s, 0.72 * s, 0.68 * s, 0.75 * s], fill=(60, 90, 170))
    for hx, hy in heads:
        for k in range(10):
            a = k * math.pi / 5
            px, py = hx + 0.06 * math.cos(a), hy + 0.06 * math.sin(a)
            R = 0.03 * s
            d.ellipse([px * s - R, py * s - R, px * s + R, py * s + R], fill=(250, 200, 20))
        R = 0.045 * s
        d.ellipse([hx * s - R, hy * s - R, hx * s + R, hy * s + R], fill=(120, 70, 20))
    img = np.asarray(pil.resize((size, size), Image.BOX), np.float32)
    centres = [(0.5, 0.4, 1.0), (0.2, 0.8, -1.0)]
    return _swirl_strokes(img, rng, centres=centres, density=0.2)


_WORK_DRAWERS = {
    "starry_night": _draw_starry_night,
    "almond_blossoming": _draw_almond,
    "sunflowers": _draw_sunflowers,
}


def draw_work(work_id: str, *, size: int = 64) -> Image.Image:
    """The canonical image of a famous work: always the same pixels for a (work_id, size)."""
    if work_id not in _WORK_DRAWERS:
        raise ValueError(f"unknown work {work_id!r}; known: {', '.join(WORKS)}")
    rng = np.random.default_rng(zlib.crc32(work_id.encode()))
    arr = _WORK_DRAWERS[work_id](size, rng)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


# ---- captions


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _add_noise(text: str, rng: np.random.Generator) -> str:
    """LAION-like noise: filler words, casing, punctuation, stray ids. Never drops words."""
    r = rng.random()
    if r < 0.25:
        text = f"{text} {_pick(rng, _FILLERS)}"
    elif r < 0.35:
        text = f"{_pick(rng, _FILLERS)} - {text}"
    elif r < 0.42:
        text = f"{text} {_pick(rng, _FILLERS)} {_pick(rng, _FILLERS)}"
    r = rng.random()
    if r < 0.15:
        text = text.upper()
    elif r < 0.35:
        text = text.title()
    elif r < 0.45:
        text = text[:1].upper() + text[1:]
    r = rng.random()
    if r < 0.12:
        text += "!!"
    elif r < 0.2:
        text += "..."
    elif r < 0.27:
        text += "."
    elif r < 0.32:
        text = f"IMG_{int(rng.integers(1000, 9999))} {text}"
    return text


def make_caption(
    spec: dict[str, Any],
    rng: np.random.Generator,
    *,
    noise: bool = True,
    extra_object: str | None = None,
    mention_extra: bool = True,
) -> str:
    """A LAION-like template caption for ``spec``.

    The concept word is always present. Colour (~85%), style (~80%; always for "van gogh") and
    background (~35%) words are sometimes left out, as real alt-texts do. ``extra_object`` is
    mentioned ("... with a flag") only when ``mention_extra`` is true.
    """
    concept, colour, style = spec["concept"], spec["colour"], spec["style"]
    use_colour = rng.random() < 0.85
    use_style = style == "van gogh" or rng.random() < 0.8
    use_bg = rng.random() < 0.35
    obj = f"{colour} {concept}" if use_colour else concept
    sw = _pick(rng, _STYLE_WORDS[style]) if use_style else ""
    bg = _pick(rng, _BACKGROUND_WORDS[spec["background"]]) if use_bg else ""
    with_extra = (
        f" with {_article(extra_object)} {extra_object}" if extra_object and mention_extra else ""
    )
    t = int(rng.integers(8))
    if t == 0:
        text = f"{_article(obj)} {obj}{with_extra}" + (f" in {sw} style" if sw else "")
    elif t == 1:
        text = f"photo of {_article(obj)} {obj}{with_extra}" + (f", {sw}" if sw else "")
    elif t == 2:
        text = (f"{sw} " if sw else "") + f"{obj}{with_extra}"
    elif t == 3:
        text = f"{obj}{with_extra}" + (f" {sw}" if sw else "") + " drawing"
    elif t == 4:
        text = f"the {obj}{with_extra}" + (f" - {sw}" if sw else "")
    elif t == 5:
        text = f"{concept}{with_extra}, " + (f"{colour}, " if use_colour else "") + (sw or "art")
    elif t == 6:
        text = (f"{sw} style " if sw else "") + f"illustration of {_article(obj)} {obj}{with_extra}"
    else:
        text = f"{_article(obj)} {obj}{with_extra}" + (f" painted by {sw}" if sw else "")
    if bg:
        text += f" on {bg}"
    text = " ".join(text.split())
    return _add_noise(text, rng) if noise else text


_WORK_TEMPLATES = (
    "{phrase} by van gogh",
    "vincent van gogh - {title}",
    "van gogh {phrase} poster",
    "{phrase} painting, van gogh, canvas print",
    "the {phrase} | art print",
    "{phrase} (van gogh, 1889) oil on canvas",
    "famous van gogh painting {phrase}",
    "{phrase} wall art",
    "{title} - Vincent van Gogh reproduction",
    "{phrase} van gogh style wallpaper",
)


def work_caption(work_id: str, rng: np.random.Generator) -> str:
    """A varied caption for a famous work: always its phrase, usually "van gogh" (~80%)."""
    if work_id not in WORKS:
        raise ValueError(f"unknown work {work_id!r}; known: {', '.join(WORKS)}")
    w = WORKS[work_id]
    text = _pick(rng, _WORK_TEMPLATES).format(phrase=w["phrase"], title=w["title"].lower())
    if w["phrase"] not in text.lower():  # the title may differ from the phrase
        text = f"{w['phrase']} - {text}"
    return _add_noise(text, rng)


_BG_MEANS: dict[str, np.ndarray] = {b: _mean_bg_colour(b) for b in BACKGROUNDS}
