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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Pose:
    """How one drawn instance departs from its glyph's canonical shape.

    ``angle``: rotation in degrees (counter-clockwise); ``sx``/``sy``: stretch of the unit box
    (proportions); ``shear``: horizontal shear; ``mirror``: flipped left-right; ``warp``: a
    smooth displacement field (``_WARP_GRID`` x ``_WARP_GRID`` points of (dx, dy), fractions of
    the glyph's side) that bends parts (a longer tail, a fatter head); ``stroke``: dilation steps
    at the supersampled resolution (thicker lines). The identity pose draws the canonical glyph.
    """

    angle: float = 0.0
    sx: float = 1.0
    sy: float = 1.0
    shear: float = 0.0
    mirror: bool = False
    warp: tuple[float, ...] = ()
    stroke: int = 0

    @property
    def is_identity(self) -> bool:
        return self == Pose()


_WARP_GRID = 3
_MESH = 12  # mesh tiles per side of the padded canvas for the piecewise-bilinear warp


def random_pose(rng: np.random.Generator, strength: float = 1.0) -> Pose:
    """A random instance pose: rotation up to ±14°, proportions ±18 %, shear ±0.1, mirrored
    half the time, a bend of up to ~6 % of the glyph side and 0-2 steps of stroke weight
    (``strength`` scales the continuous parts)."""
    g = strength
    warp = rng.normal(0.0, 0.028 * g, 2 * _WARP_GRID * _WARP_GRID).clip(-0.065, 0.065)
    return Pose(
        angle=float(rng.uniform(-14, 14) * g),
        sx=float(np.exp(rng.uniform(-0.18, 0.18) * g)),
        sy=float(np.exp(rng.uniform(-0.18, 0.18) * g)),
        shear=float(rng.uniform(-0.1, 0.1) * g),
        mirror=bool(rng.random() < 0.5),
        warp=tuple(round(float(v), 5) for v in warp),
        stroke=int(rng.integers(0, 3)),
    )


def _warp_at(pose: Pose, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pose's displacement (unit-box fractions) at unit-box points, bilinear between grid
    points and constant beyond the box."""
    if not pose.warp:
        return np.zeros_like(u), np.zeros_like(v)
    w = np.asarray(pose.warp, np.float64).reshape(2, _WARP_GRID, _WARP_GRID)
    gu = np.clip(u, 0.0, 1.0) * (_WARP_GRID - 1)
    gv = np.clip(v, 0.0, 1.0) * (_WARP_GRID - 1)
    i0 = np.minimum(gu.astype(int), _WARP_GRID - 2)
    j0 = np.minimum(gv.astype(int), _WARP_GRID - 2)
    fu, fv = gu - i0, gv - j0
    out = []
    for c in range(2):
        a, b = w[c, j0, i0], w[c, j0, i0 + 1]
        cc, d = w[c, j0 + 1, i0], w[c, j0 + 1, i0 + 1]
        out.append((a * (1 - fu) + b * fu) * (1 - fv) + (cc * (1 - fu) + d * fu) * fv)
    return out[0], out[1]


def _posed(canvas: Image.Image, cx: float, cy: float, side: float, pose: Pose) -> Image.Image:
    """Warp a glyph canvas (glyph unit box of ``side`` px centred at ``cx, cy``) by ``pose``:
    an affine map about the centre plus the smooth bend, as one PIL mesh transform."""
    if pose.is_identity:
        return canvas
    a = math.radians(pose.angle)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # y points down
    shear = np.array([[1.0, pose.shear], [0.0, 1.0]])
    scale = np.diag([pose.sx * (-1.0 if pose.mirror else 1.0), pose.sy])
    inv = np.linalg.inv(rot @ shear @ scale)
    n = canvas.size[0]
    t = np.linspace(0.0, n, _MESH + 1)
    qx, qy = np.meshgrid(t, t)  # output points
    dx, dy = _warp_at(pose, (qx - cx) / side + 0.5, (qy - cy) / side + 0.5)
    rel = np.stack([qx - cx - dx * side, qy - cy - dy * side], -1) @ inv.T
    sxy = rel + np.array([cx, cy])
    mesh = []
    for j in range(_MESH):
        for i in range(_MESH):
            box = (int(t[i]), int(t[j]), int(t[i + 1]), int(t[j + 1]))
            quad = (
                *sxy[j, i], *sxy[j + 1, i], *sxy[j + 1, i + 1], *sxy[j, i + 1]
            )  # fmt: skip
            mesh.append((box, tuple(float(q) for q in quad)))
    return canvas.transform(canvas.size, Image.MESH, mesh, Image.BILINEAR)


def _render(
    draw_fn: Callable[[ImageDraw.ImageDraw, _Pt, _Len], None],
    size: int,
    x: float,
    y: float,
    scale: float,
    pose: Pose | None = None,
) -> np.ndarray:
    """Coverage mask (float32 in [0, 1]) of what ``draw_fn`` draws in a unit box of side
    ``scale * size`` centred at ``(x * size, y * size)``, posed by ``pose``; rendered at
    ``_SS`` x on a padded canvas (so rotated parts are not cut) and box-filtered down."""
    pose = pose or Pose()
    big = size * _SS
    pad = big // 2
    canvas = Image.new("L", (big + 2 * pad, big + 2 * pad), 0)
    d = ImageDraw.Draw(canvas)
    side = scale * big
    cx, cy = pad + x * big, pad + y * big
    ox, oy = cx - side / 2, cy - side / 2

    def P(u: float, v: float) -> tuple[float, float]:
        return (ox + u * side, oy + v * side)

    def L(v: float) -> float:
        return v * side

    draw_fn(d, P, L)
    canvas = _posed(canvas, cx, cy, side, pose)
    for _ in range(pose.stroke):
        canvas = canvas.filter(ImageFilter.MaxFilter(3))
    canvas = canvas.crop((pad, pad, pad + big, pad + big))
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def concept_mask(
    concept: str, size: int, x: float, y: float, scale: float, pose: Pose | None = None
) -> np.ndarray:
    """Coverage mask (float32 in [0, 1], shape (size, size)) of ``concept``'s glyph.

    The glyph's unit box has side ``scale * size`` and is centred at ``(x * size, y * size)``;
    ``pose`` (default: none) rotates, stretches, bends and thickens it about that centre.
    Parts outside the canvas are clipped (dropped), not wrapped.
    """
    if concept not in _GLYPHS:
        raise ValueError(f"unknown concept {concept!r}; known: {', '.join(CONCEPTS)}")
    return _render(_GLYPHS[concept], size, x, y, scale, pose)


# --------------------------------------------------------------------------------------------
# backgrounds, fills and styles (float32 arrays HxWx3 in 0..255). Every background is drawn
# per image: base colour, texture and layout vary, so no two images share a backdrop.


def _noise(rng: np.random.Generator, size: int, amp: float) -> np.ndarray:
    return rng.normal(0.0, amp, (size, size, 1)).astype(np.float32)


def _lowfreq(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """Smooth noise in [-1, 1] (a coarse random grid upsampled bicubically)."""
    g = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    up = Image.fromarray(g, "L").resize((size, size), Image.BICUBIC)
    return (np.asarray(up, dtype=np.float32) / 127.5 - 1.0)[..., None]


def _field(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth random field in about [-1, 1], ``channels`` independent layers, float32
    (size, size, channels); ``cells`` sets the feature size (size / cells pixels)."""
    g = rng.normal(0.0, 0.5, (cells + 3, cells + 3, channels)).astype(np.float32)
    out = np.empty((size, size, channels), np.float32)
    for c in range(channels):
        img = Image.fromarray(g[..., c], "F").resize(
            (size, size), Image.BICUBIC, box=(1, 1, cells + 2, cells + 2)
        )
        out[..., c] = np.asarray(img, np.float32)
    return np.clip(out, -1.5, 1.5)


def _tint(rng: np.random.Generator, base: tuple[float, float, float], spread: float) -> np.ndarray:
    """``base`` colour with a random brightness and per-channel shift."""
    b = np.array(base, np.float32) * float(rng.uniform(1 - spread / 255, 1 + spread / 255))
    return np.clip(b + rng.uniform(-spread, spread, 3).astype(np.float32), 0, 255)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    xx = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]
    return yy, xx


def _pil_draw(img: np.ndarray, fn: Callable[[ImageDraw.ImageDraw, int], None]) -> np.ndarray:
    """Draw on a supersampled copy of ``img`` with PIL and box-filter back."""
    size = img.shape[0]
    s = size * _SS
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").resize((s, s))
    fn(ImageDraw.Draw(pil), s)
    return np.asarray(pil.resize((size, size), Image.BOX), np.float32)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _direction(size: int, rng: np.random.Generator) -> np.ndarray:
    """Coordinate along a random direction through the centre, (size, size, 1), ~[-0.7, 0.7]."""
    yy, xx = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    return (xx - 0.5) * np.cos(a) + (yy - 0.5) * np.sin(a)


def _horizon(size: int, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """Coverage (size, size, 1) of the part below a random, slightly tilted and wavy line."""
    yy, xx = _grid(size)
    h = rng.uniform(lo, hi)
    tilt = rng.uniform(-0.25, 0.25)
    wave = rng.uniform(0, 0.05) * np.sin(xx * rng.uniform(3, 12) + rng.uniform(0, 6))
    return _smoothstep((yy - h - tilt * (xx - 0.5) - wave) * size / 2.0 + 0.5)


# Every backdrop kind has several *families* (a brick wall is a running bond, a stack bond, a
# herringbone or rubble stone; grass is a lawn, a meadow under the sky, mowed stripes or clover):
# a copy detector treats one texture family as one "image", so the families keep rows that only
# share their backdrop word apart. Family, colours, scale and layout are drawn per image.


def _bg_white(size: int, rng: np.random.Generator) -> np.ndarray:
    base = _tint(rng, (246, 246, 244), 4)
    img = base + np.zeros((size, size, 3), np.float32)
    img += _field(rng, size, 2) * float(rng.uniform(3, 8))  # soft studio shading
    fam = int(rng.integers(3))
    if fam == 1:  # studio sweep: the floor a little darker below a soft horizon
        img -= _horizon(size, rng, 0.55, 0.85) * float(rng.uniform(6, 16))
    elif fam == 2:  # paper: fibres
        img += _field(rng, size, 14) * 2.5 + _noise(rng, size, 2.0)
    return np.minimum(img + _noise(rng, size, 1.0), 252)


def _bg_grey(size: int, rng: np.random.Generator) -> np.ndarray:
    v = float(rng.uniform(120, 180))
    base = _tint(rng, (v, v, v), 6)
    img = base + np.zeros((size, size, 3), np.float32)
    img += _field(rng, size, 3) * float(rng.uniform(6, 14))
    fam = int(rng.integers(4))
    if fam == 1:  # concrete: speckle and a few cracks
        img += _noise(rng, size, 7) + _field(rng, size, 9, 3) * 5
        cracks = [
            rng.uniform(0, 1, (int(rng.integers(3, 6)), 2)) for _ in range(rng.integers(1, 4))
        ]
        tone = int(v * 0.55)

        def paint(d: ImageDraw.ImageDraw, s: int) -> None:
            for c in cracks:
                d.line([(x * s, y * s) for x, y in c], fill=(tone, tone, tone), width=1)

        img = _pil_draw(img, paint)
    elif fam == 2:  # a wall and a floor of two greys
        img += _horizon(size, rng, 0.5, 0.85) * float(rng.choice([-1, 1]) * rng.uniform(18, 40))
        img += _noise(rng, size, 2)
    elif fam == 3:  # brushed metal: streaks along one direction
        streak = rng.normal(0, 1, size * 3).astype(np.float32)
        a = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        idx = (xx * np.cos(a) + yy * np.sin(a) + size).astype(int) % (size * 3)
        img += streak[idx][..., None] * float(rng.uniform(4, 9))
    else:
        img += _field(rng, size, 7, 3) * 4 + _noise(rng, size, 2)
    return img


def _bg_gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(size)
    cols = rng.uniform(120, 250, (4, 3)).astype(np.float32)
    fam = int(rng.integers(4))
    if fam == 1:  # radial
        cx, cy = rng.uniform(0.0, 1.0, 2)
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / 1.1
    elif fam == 3:  # four-corner mesh
        img = (
            cols[0] * (1 - xx) * (1 - yy)
            + cols[1] * xx * (1 - yy)
            + cols[2] * (1 - xx) * yy
            + cols[3] * xx * yy
        )
        return img + _field(rng, size, 3) * 6 + _noise(rng, size, 1.5)
    else:
        t = _direction(size, rng) + 0.5
    t = np.clip(t + _field(rng, size, 3) * 0.06, 0, 1)
    if fam == 2:  # banded (posterised) gradient
        bands = float(rng.integers(4, 9))
        t = np.floor(t * bands) / (bands - 1)
    mid = float(rng.uniform(0.3, 0.7))
    lo = np.clip(t / mid, 0, 1)
    hi = np.clip((t - mid) / (1 - mid), 0, 1)
    img = np.where(t < mid, cols[0] * (1 - lo) + cols[1] * lo, cols[1] * (1 - hi) + cols[2] * hi)
    return img + _noise(rng, size, 1.5)


def _bg_grass(size: int, rng: np.random.Generator) -> np.ndarray:
    base = _tint(rng, (80, 160, 60), 20)
    img = base + np.zeros((size, size, 3), np.float32)
    img += _field(rng, size, int(rng.integers(3, 7)), 3) * np.array([10, 18, 8], np.float32)
    fam = int(rng.integers(4))
    if fam == 2:  # mowed stripes
        u = _direction(size, rng) * float(rng.uniform(3, 7))
        img *= 1 + np.where(np.floor(u * 2) % 2 == 0, 0.1, -0.1)
        return img + _noise(rng, size, 6) * np.array([0.6, 1.0, 0.5], np.float32)
    if fam == 3:  # clover: small round leaves of varied greens
        n = int(size * size * float(rng.uniform(0.02, 0.05)))
        leaves = rng.uniform(0, 1, (n, 3))

        def clover(d: ImageDraw.ImageDraw, s: int) -> None:
            for lx, ly, lv in leaves:
                r = s * (0.012 + 0.02 * lv)
                c = tuple(int(min(255, v * (0.7 + 0.6 * lv))) for v in base)
                d.ellipse([lx * s - r, ly * s - r, lx * s + r, ly * s + r], fill=c)

        return _pil_draw(img, clover)
    h = float(rng.uniform(0.12, 0.4)) if fam == 1 else 0.0  # meadow under the sky
    n_blades = int(size * size * float(rng.uniform(0.08, 0.2)))
    bx = rng.uniform(0, 1, n_blades)
    by = rng.uniform(h, 1, n_blades)
    tilt = rng.normal(0, 0.35, n_blades)
    length = rng.uniform(0.03, 0.08, n_blades) * (0.5 + by)
    shade = rng.uniform(0.6, 1.3, n_blades)
    sky = tuple(int(v) for v in _tint(rng, (150, 195, 240), 15))
    hills = rng.uniform(0, 1, 4)

    def paint(d: ImageDraw.ImageDraw, s: int) -> None:
        if h:
            d.rectangle([0, 0, s, h * s], fill=sky)
            pts = [(0, h * s)] + [
                (k / 3 * s, (h - 0.03 - 0.08 * hills[k]) * s) for k in range(4)
            ] + [(s, h * s)]  # fmt: skip
            d.polygon(pts, fill=tuple(int(v * 0.8) for v in base))
        w = max(1, s // 64)
        for k in range(n_blades):
            c = tuple(int(min(255, v * shade[k])) for v in base)
            x0, y0 = bx[k] * s, by[k] * s
            d.line([(x0, y0), (x0 + tilt[k] * length[k] * s, y0 - length[k] * s)], fill=c, width=w)

    return _pil_draw(img, paint)


def _bg_sky(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(size)
    fam = int(rng.integers(4))
    if fam == 1:  # dawn or dusk
        top = _tint(rng, (70, 80, 170), 25)
        bottom = _tint(rng, (250, 170, 120), 20)
    else:
        top = _tint(rng, (85, 150, 235), 18)
        bottom = _tint(rng, (200, 225, 250), 8)
    t = np.clip(yy * float(rng.uniform(0.8, 1.3)), 0, 1)
    img = top * (1 - t) + bottom * t + np.zeros((size, size, 1), np.float32)
    img += _field(rng, size, 3, 3) * 5
    if fam == 2:  # cirrus: long thin streaks
        streaks = [
            (rng.uniform(-0.2, 1.2), rng.uniform(0, 0.8), rng.uniform(0.2, 0.6))
            for _ in range(int(rng.integers(3, 9)))
        ]
        a = rng.uniform(-0.4, 0.4)

        def cirrus(d: ImageDraw.ImageDraw, s: int) -> None:
            for sx, sy, ln in streaks:
                d.line([(sx * s, sy * s), ((sx + ln) * s, (sy + ln * a) * s)],
                       fill=(245, 247, 252), width=max(1, s // 40))  # fmt: skip

        return _blur(_pil_draw(img, cirrus), size / 60)
    n = int(rng.integers(1, 6)) if fam != 3 else int(rng.integers(0, 3))
    clouds = []
    for _ in range(n):
        cx, cy = rng.uniform(-0.1, 1.1), rng.uniform(-0.05, 0.7)
        w = rng.uniform(0.08, 0.28)
        puffs = [
            (cx + rng.uniform(-w, w), cy + rng.uniform(-w / 3, w / 4), rng.uniform(0.3, 0.6) * w)
            for _ in range(int(rng.integers(3, 7)))
        ]
        clouds.append((puffs, int(rng.uniform(225, 255))))

    def paint(d: ImageDraw.ImageDraw, s: int) -> None:
        for puffs, v in clouds:
            for px, py, r in puffs:
                d.ellipse([(px - r) * s, (py - r * 0.7) * s, (px + r) * s, (py + r * 0.7) * s],
                          fill=(v, v, min(255, v + 3)))  # fmt: skip

    img = _blur(_pil_draw(img, paint), size / 80)
    if fam == 3:  # a distant landscape silhouette along the bottom
        land = _horizon(size, rng, 0.75, 0.92)
        img = img * (1 - land) + _tint(rng, (70, 90, 110), 20) * land
    return img


def _bg_sand(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(size)
    base = _tint(rng, (228, 204, 150), 14)
    img = base + _field(rng, size, 4) * 8 + np.zeros((size, size, 3), np.float32)
    fam = int(rng.integers(4))
    if fam == 0:  # ripples
        f = rng.uniform(3, 8)
        phase = _field(rng, size, 3) * float(rng.uniform(1.0, 3.0))
        img = img + np.sin(2 * np.pi * f * _direction(size, rng) + phase) * float(
            rng.uniform(6, 13)
        )
    elif fam == 1:  # dunes: broad light and shadow slopes
        u = _direction(size, rng) * float(rng.uniform(1.5, 3)) + _field(rng, size, 2) * 0.3
        img = img * (1 + 0.12 * (2 * (u % 1.0) - 1))[..., :1]
    elif fam == 2:  # beach: the sea along the top, foam and wet sand below it
        h = float(rng.uniform(0.15, 0.4))
        sea = 1 - _smoothstep((yy - h) * size / 2 + 0.5)
        wet = np.exp(-(((yy - h - 0.06) / 0.05) ** 2))
        img = img * (1 - 0.25 * wet)
        img = img * (1 - sea) + (_tint(rng, (40, 140, 180), 25) + _field(rng, size, 6) * 8) * sea
        foam = np.exp(-(((yy - h) / 0.015) ** 2)) * 0.8
        img = img * (1 - foam) + 245 * foam
    img = img + _noise(rng, size, 5 if fam != 3 else 9)
    pebbles = rng.uniform(0, 1, (int(rng.integers(0, 7)) + (25 if fam == 3 else 0), 3))

    def paint(d: ImageDraw.ImageDraw, s: int) -> None:
        for px, py, pr in pebbles:
            r = (0.01 + 0.02 * pr) * s
            v = int(120 + 80 * pr)
            d.ellipse([px * s - r, py * s - r * 0.7, px * s + r, py * s + r * 0.7],
                      fill=(v, int(v * 0.9), int(v * 0.75)))  # fmt: skip

    return _pil_draw(img, paint)


_BRICK_COLOURS = ((178, 82, 58), (150, 70, 50), (190, 120, 80), (200, 170, 120), (120, 110, 105))


def _bg_brick(size: int, rng: np.random.Generator) -> np.ndarray:
    base = _tint(rng, _BRICK_COLOURS[int(rng.choice(5, p=[0.4, 0.2, 0.15, 0.15, 0.1]))], 16)
    mortar = _tint(rng, (205, 200, 190), 15)
    fam = int(rng.integers(4))
    yy, xx = np.mgrid[0:size, 0:size]
    bh = max(3, int(round(size * float(rng.uniform(0.07, 0.15)))))
    bw = max(bh + 1, int(round(bh * float(rng.uniform(1.7, 2.8)))))
    iy, ix = yy + int(rng.integers(0, 2 * bh)), xx + int(rng.integers(0, 2 * bw))
    if fam == 3:  # rubble stone: irregular cells
        n = int(rng.integers(10, 30))
        pts = rng.uniform(0, size, (n, 2))
        d2 = (xx[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2
        near = np.sort(d2, -1)
        cell = np.argmin(d2, -1)
        joint = (np.sqrt(near[..., 1]) - np.sqrt(near[..., 0])) < 1.2
        shade = rng.normal(0.0, 0.12, (n, 3)).astype(np.float32)
        img = base * (1 + shade[cell])
        mortar = mortar * 0.6
    else:
        if fam == 2:  # herringbone
            u = max(2, bh // 2)
            a, b = (ix + iy) // (2 * u), (ix - iy) // (2 * u)
            upright = (a + b) % 2 == 0
            joint = np.where(upright, (ix + iy) % (2 * u) == 0, (ix - iy) % (2 * u) == 0)
            cell = a * 1000 + b
        else:  # running (fam 0) or stack (fam 1) bond
            row = iy // bh
            shift = (row % 2) * (bw // 2) if fam == 0 else 0
            joint = (iy % bh == 0) | (((ix + shift) % bw) == 0)
            cell = row * 1000 + (ix + shift) // bw
        _, cell = np.unique(cell, return_inverse=True)
        cell = cell.reshape(size, size)
        shade = rng.normal(0.0, 0.1, (int(cell.max()) + 1, 3)).astype(np.float32)
        shade += rng.normal(0.0, 0.08, (int(cell.max()) + 1, 1)).astype(np.float32)
        img = base * (1 + shade[cell])
    img = img + _field(rng, size, 4) * 8 + _noise(rng, size, 4)
    img[joint] = mortar
    return img


_BG_DRAWERS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "white": _bg_white,
    "grey": _bg_grey,
    "gradient": _bg_gradient,
    "grass": _bg_grass,
    "sky": _bg_sky,
    "sand": _bg_sand,
    "brick": _bg_brick,
}


def _background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A fresh backdrop of kind ``name``: family, base colour, texture and layout from rng, and
    for the textured kinds a random depth of field (the backdrop a little out of focus)."""
    if name not in _BG_DRAWERS:
        raise ValueError(f"unknown background {name!r}; known: {', '.join(BACKGROUNDS)}")
    img = _BG_DRAWERS[name](size, rng).astype(np.float32)
    if name in ("grass", "sand", "brick") and rng.random() < 0.5:
        img = _blur(img, size / 64 * float(rng.uniform(0.4, 1.2)))
    return img


def _mean_bg_colour(name: str) -> np.ndarray:
    return np.mean(
        [_background(name, 16, np.random.default_rng(k)).reshape(-1, 3).mean(0) for k in range(8)],
        axis=0,
    )


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


def _stripes(
    size: int,
    rng: np.random.Generator,
    lo: float,
    hi: float,
    duty: tuple[float, float] = (0.35, 0.6),
) -> np.ndarray:
    """A random line pattern (bool, (size, size, 1)): straight, zigzag or wavy lines; angle,
    period (``lo``-``hi`` px at 64 px), phase and duty cycle from rng."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a = math.radians(float(rng.choice([0.0, 45.0, 90.0, 135.0]) + rng.uniform(-12, 12)))
    period = float(rng.uniform(lo, hi)) * size / 64
    u = xx * math.cos(a) + yy * math.sin(a) + rng.uniform(0, period)
    v = -xx * math.sin(a) + yy * math.cos(a)
    kind = int(rng.choice(3, p=[0.5, 0.25, 0.25]))
    if kind == 1:  # zigzag
        u = u + np.abs((v / (period * 1.5)) % 2 - 1) * period * float(rng.uniform(0.8, 1.6))
    elif kind == 2:  # wavy
        u = u + np.sin(v / period * float(rng.uniform(0.6, 1.4))) * period * float(
            rng.uniform(0.4, 0.9)
        )
    return ((u / period) % 1.0 < float(rng.uniform(*duty)))[..., None]


def _markings(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Coverage (float32, (size, size)) of random coat markings or decals inside a glyph: a few
    spots, one or two patches, or a band across it."""
    size = mask.shape[0]
    ys, xs = np.nonzero(mask > 0.5)
    if len(xs) == 0:
        return np.zeros_like(mask)
    s = size * _SS
    canvas = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(canvas)
    kind = int(rng.integers(3))
    if kind == 2:  # band
        k = int(rng.integers(len(xs)))
        a = rng.uniform(0, np.pi)
        cx, cy, r = xs[k] * _SS, ys[k] * _SS, s
        w = max(2, int(s * rng.uniform(0.05, 0.11)))
        d.line(
            [(cx - r * np.cos(a), cy - r * np.sin(a)), (cx + r * np.cos(a), cy + r * np.sin(a))],
            fill=255,
            width=w,
        )
    else:
        n, lo, hi = (int(rng.integers(3, 9)), 0.02, 0.05) if kind == 0 else (
            int(rng.integers(1, 3)), 0.07, 0.15
        )  # fmt: skip
        for _ in range(n):
            k = int(rng.integers(len(xs)))
            cx, cy = (xs[k] + 0.5) * _SS, (ys[k] + 0.5) * _SS
            rx, ry = rng.uniform(lo, hi, 2) * s
            d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    m = np.asarray(canvas.resize((size, size), Image.BOX), np.float32) / 255.0
    return m * mask


def _mark_colour(colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A darker or lighter shade of ``colour`` for markings (lighter for very dark colours)."""
    lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    if lum < 60 or (lum < 200 and rng.random() < 0.5):
        return colour + (255 - colour) * float(rng.uniform(0.45, 0.85))
    return colour * float(rng.uniform(0.35, 0.6))


def _outline(
    out: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One of several outline treatments: a contrasting line, none, a darker shade of the fill,
    or a thick contrasting line."""
    mode = int(rng.choice(4, p=[0.35, 0.25, 0.25, 0.15]))
    if mode == 1:
        return out
    ring = _edge(mask)
    if mode == 3:
        ring = np.clip(ring + _edge(np.clip(mask + ring, 0, 1)), 0, 1)
    line = colour * 0.45 if mode == 2 else _contrast_colour(colour)
    e = ring[..., None] * 0.85
    return out * (1 - e) + line * e


def _paint_glyph(
    img: np.ndarray,
    mask: np.ndarray,
    colour: np.ndarray,
    style: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Blend one glyph (coverage ``mask``) of ``colour`` into ``img`` with ``style``'s fill.

    Everything that is not the style itself is drawn from ``rng`` per instance: the fill's
    pattern (stripe angle, period and second colour; hatching; wash), markings (spots, patches,
    a band), a two-tone cel shading, the outline treatment; so one spec gives visibly different
    instances whose colour and style words stay true.
    """
    size = img.shape[0]
    a = mask[..., None]
    yy, xx = _grid(size)
    if style == "stripes":
        on = _stripes(size, rng, 3.0, 7.0)
        r = rng.random()
        other = (
            _tint(rng, (245, 245, 245), 8)
            if r < 0.55
            else colour + (255 - colour) * 0.6
            if r < 0.8
            else np.array([30, 30, 30], np.float32)
        )
        if np.abs(other - colour).sum() < 120:
            other = _tint(rng, (245, 245, 245), 8)
        fill = np.where(on, colour, other)
        return _outline(img * (1 - a) + fill * a, mask, colour, rng)
    if style == "watercolor":
        light = colour * float(rng.uniform(0.6, 0.85)) + 255 * 0.3 * float(rng.uniform(0.5, 1))
        fill = light * (
            1.0 + float(rng.uniform(0.06, 0.2)) * _lowfreq(rng, size, int(rng.integers(3, 8)))
        )
        if rng.random() < 0.6:  # blooms: darker or paler pools of pigment
            m = _blur(_markings(mask, rng), 0.8)[..., None]
            fill = fill * (1 - m) + _mark_colour(light, rng) * m
        a = _blur(mask, max(0.6, size / 64) * float(rng.uniform(0.8, 1.8)))[..., None]
        rim = np.clip(a * (1 - a) * 4, 0, 1)  # darker pigment where the wash thins out
        fill = fill * (1 - float(rng.uniform(0.1, 0.4)) * rim)
        return img * (1 - a) + fill * a
    if style == "pencil sketch":
        fam = int(rng.choice(4, p=[0.35, 0.25, 0.2, 0.2]))
        if fam <= 1:  # hatching, or cross-hatching
            hatch = _stripes(size, rng, 3.0, 6.0, (0.25, 0.5))
            if fam == 1:
                hatch = hatch | _stripes(size, rng, 3.0, 6.0, (0.25, 0.5))
        elif fam == 2:  # scribble: loose zigzag strokes
            strokes = rng.uniform(0, 1, (int(rng.integers(4, 10)), int(rng.integers(4, 9)), 2))

            def scribble(d: ImageDraw.ImageDraw, s: int) -> None:
                for st in strokes:
                    d.line([(x * s, y * s) for x, y in st], fill=255, width=max(1, s // 64))

            canvas = Image.new("L", (size * _SS, size * _SS), 0)
            scribble(ImageDraw.Draw(canvas), size * _SS)
            hatch = (np.asarray(canvas.resize((size, size), Image.BOX)) > 60)[..., None]
        else:  # stippling
            hatch = rng.random((size, size, 1)) < rng.uniform(0.2, 0.45)
        hatch = hatch & (rng.random((size, size, 1)) < rng.uniform(0.6, 0.95))
        fill = np.where(hatch, colour, _PAPER) + _noise(rng, size, 4)
        out = img * (1 - a) + fill * a
        e = _edge(mask)[..., None] * float(rng.uniform(0.6, 1.0))
        out = out * (1 - e) + (colour * 0.8) * e
        if rng.random() < 0.4:  # a second, offset contour: a loose sketchy double line
            dx, dy = (int(v) for v in rng.integers(-1, 2, 2))
            e2 = np.roll(np.roll(_edge(mask), dy, 0), dx, 1)[..., None] * 0.5
            out = out * (1 - e2) + (colour * 0.8) * e2
        return out
    if style == "neon":
        fill = colour * float(
            rng.uniform(0.1, 0.4) if rng.random() < 0.7 else rng.uniform(0.4, 0.65)
        )
        out = img * (1 - a) + fill * a
        ring = _edge(mask)
        if rng.random() < 0.25:  # a broken (dashed) tube
            ring = ring * _stripes(size, rng, 4.0, 9.0, (0.6, 0.85))[..., 0]
        if rng.random() < 0.4:
            ring = np.clip(ring + _edge(np.clip(mask + ring, 0, 1)), 0, 1)
        if rng.random() < 0.4:  # an inner second tube
            inner = (
                np.asarray(
                    Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(5)),
                    np.float32,
                )
                / 255.0
            )
            ring = np.clip(ring + _edge(inner) * mask * 0.8, 0, 1)
        if rng.random() < 0.6:  # inner detail tubes: the outlines of markings
            m = _markings(mask, rng)
            ring = np.clip(ring + _edge(m) * mask, 0, 1)
        glow = _blur(ring, max(0.8, size / 40) * float(rng.uniform(0.5, 2.6)))
        glow = np.clip(glow * float(rng.uniform(1.5, 3.0)) + ring, 0, 1)[..., None]
        bright = np.clip(colour * 1.15 + 40, 0, 255)
        bright = bright + (255 - bright) * float(rng.uniform(0.0, 0.45))  # a hotter core
        return out * (1 - glow) + bright * glow
    # flat, pixel art, van gogh: flat fill (texture comes from the global pass) with a smooth
    # or two-tone shading and, often, markings
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang)
    fill = colour * (1 + float(rng.uniform(0, 0.2)) * ramp) + np.zeros_like(img)
    if rng.random() < 0.4:  # cel shading: a flat darker tone on one side
        ys, xs = np.nonzero(mask > 0.5)
        if len(xs):
            c0 = ((xs.mean() + 0.5) / size - 0.5) * np.cos(ang) + (
                (ys.mean() + 0.5) / size - 0.5
            ) * np.sin(ang)
            fill = np.where(
                ramp > c0 + rng.uniform(-0.05, 0.1), fill * rng.uniform(0.78, 0.9), fill
            )
    if rng.random() < 0.6:
        m = _markings(mask, rng)[..., None]
        fill = fill * (1 - m) + _mark_colour(colour, rng) * m
    return _outline(img * (1 - a) + fill * a, mask, colour, rng)


def _shadow(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A soft cast shadow of the glyph (random direction, softness and strength)."""
    size = img.shape[0]
    dx, dy = (int(round(v)) for v in rng.uniform(-0.06, 0.06, 2) * size)
    shifted = np.roll(np.roll(mask, dy, 0), dx, 1)
    soft = _blur(shifted, size / 40 * float(rng.uniform(0.8, 2.0)))[..., None]
    return img * (1 - float(rng.uniform(0.15, 0.4)) * soft)


def _lighting(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scene lighting: a directional brightness ramp, a vignette and a colour cast."""
    size = img.shape[0]
    yy, xx = _grid(size)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang)) * float(rng.uniform(0, 0.28))
    vig = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * float(rng.uniform(0, 0.5))
    cast = 1 + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    gain = float(rng.uniform(0.92, 1.06))
    return img * (gain * (1 + ramp - vig)) * cast


def _vary_colour(colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The named colour as one instance shows it: brighter or darker, a little off-hue."""
    c = colour * float(rng.uniform(0.82, 1.12)) + rng.uniform(-18, 18, 3).astype(np.float32)
    return np.clip(c, 0, 255).astype(np.float32)


def _swirl_strokes(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    centres: list[tuple[float, float, float]] | None = None,
    density: float = 0.22,
    length: float = 1.0,
    segments: int = 3,
    thickness: int = 1,
    drift: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Cover ``img`` with short curved brush strokes that follow a swirling flow field.

    Stroke colours are sampled from the image under the stroke start, with brightness jitter, so
    the content stays readable while the texture becomes "van gogh"-like. ``length`` scales the
    segment length, ``segments`` per stroke, ``thickness`` scales the width, ``drift`` adds a
    uniform flow (x, y) to the swirls (the defaults draw the famous works).
    """
    size = img.shape[0]
    if centres is None:
        centres = [
            (rng.uniform(0, 1), rng.uniform(0, 1), rng.choice([-1.0, 1.0]))
            for _ in range(int(rng.integers(2, 5)))
        ]
    cen = np.array([[cx * size, cy * size, s] for cx, cy, s in centres], np.float32).reshape(-1, 3)
    src = np.clip(img, 0, 255)
    pil = Image.fromarray(src.astype(np.uint8), "RGB").resize((size * _SS, size * _SS))
    d = ImageDraw.Draw(pil)
    n = int(density * size * size)
    starts = rng.uniform(0, size - 1e-3, (n, 2)).astype(np.float32)
    jitter = rng.normal(1.0, 0.16, n).astype(np.float32)
    seglen = size / 44.0 * length
    width = max(1, round(_SS * size / 64)) * thickness
    iy = np.clip(starts[:, 1].astype(np.int64), 0, size - 1)
    ix = np.clip(starts[:, 0].astype(np.int64), 0, size - 1)
    cols = np.clip(src[iy, ix] * jitter[:, None], 0, 255).astype(np.uint8)
    # a directional flow wobbles a little per stroke (the works have none: unchanged)
    amp = math.hypot(*drift)
    wobble = rng.normal(0.0, 0.3 * amp, (n, 2)) if amp > 0 else np.zeros((n, 2))
    # follow the flow field for a few segments, all strokes at once
    paths = [starts.astype(np.float64)]
    p = paths[0]
    for _ in range(segments):
        dx = p[:, None, 0] - cen[None, :, 0]
        dy = p[:, None, 1] - cen[None, :, 1]
        r2 = dx * dx + dy * dy + 4.0
        vx = (-cen[None, :, 2] * dy / r2).sum(1) + drift[0] + wobble[:, 0]
        vy = (cen[None, :, 2] * dx / r2).sum(1) + drift[1] + wobble[:, 1]
        norm = np.hypot(vx, vy) + 1e-9
        p = p + seglen * np.stack([vx / norm, vy / norm], 1)
        paths.append(p)
    pts = np.stack(paths, 1) * _SS  # (n, segments + 1, 2)
    for k in range(n):
        d.line([tuple(q) for q in pts[k].tolist()], fill=tuple(cols[k].tolist()), width=width)
    out = pil.resize((size, size), Image.BOX)
    return np.asarray(out, dtype=np.float32)


def _global_style(img: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    if style == "pixel art":
        block = max(2, int(round(size / float(rng.uniform(24, 34)))))
        small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(
            (max(1, size // block), max(1, size // block)), Image.BOX
        )
        arr = np.asarray(small, np.float32)
        step = float(rng.uniform(14, 44))  # palette: 6-18 levels per channel
        arr = (arr // step) * step + step / 2  # coarse palette
        up = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize(
            (size, size), Image.NEAREST
        )
        return np.asarray(up, np.float32)
    if style == "van gogh":
        # brushwork families: swirls, a directional flow, or both; stroke density, length and
        # width vary per painting
        fam = int(rng.integers(3))
        centres = (
            []
            if fam == 1
            else [
                (rng.uniform(0, 1), rng.uniform(0, 1), rng.choice([-1.0, 1.0]))
                for _ in range(int(rng.integers(1, 6)))
            ]
        )
        a = rng.uniform(0, 2 * np.pi)
        m = 1.0 if fam == 1 else float(rng.uniform(0.01, 0.06)) * (fam == 2)
        return _swirl_strokes(
            img,
            rng,
            centres=centres,
            density=float(rng.uniform(0.12, 0.34)),
            length=float(rng.uniform(0.6, 1.8)),
            segments=int(rng.integers(2, 6)),
            thickness=int(rng.choice([1, 1, 2])),
            drift=(m * math.cos(a), m * math.sin(a)),
        )
    if style == "watercolor":
        return _blur(img, max(0.4, size / 128)) * (1 + 0.04 * _lowfreq(rng, size, 8))
    if style == "pencil sketch":
        return img + _noise(rng, size, 3)
    return img


def _style_background(bg: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    """The backdrop as the style renders it: pencil on paper (with a few loose background
    strokes), neon in the dark (with faint coloured lights)."""
    size = bg.shape[0]

    if style == "pencil sketch":
        fam = int(rng.choice(5, p=[0.35, 0.2, 0.15, 0.15, 0.15]))
        tone = ((238, 234, 222), (248, 248, 246), (246, 246, 240), (244, 246, 244), (205, 195, 175))
        paper = _tint(rng, tone[fam], 6) + _field(rng, size, 3) * 6
        # the backdrop sketched in graphite: its edges traced, its darker areas hatched
        lum = _blur(bg, size / 64 * 0.6).mean(-1)
        gx = np.abs(np.diff(lum, axis=1, append=lum[:, -1:]))
        gy = np.abs(np.diff(lum, axis=0, append=lum[-1:, :]))
        edges = np.clip((gx + gy - 6.0) / 30.0, 0, 1) * float(rng.uniform(0.4, 0.9))
        shade = np.clip((215.0 - lum) / 180.0, 0, 1) * float(rng.uniform(0.15, 0.45))
        hatch = _stripes(size, rng, 2.5, 5.0, (0.2, 0.4))[..., 0]
        amount = np.clip(edges + shade * hatch, 0, 0.9)[..., None]
        out = paper * (1 - amount) + _tint(rng, (85, 85, 92), 10) * amount
        yy, xx = np.mgrid[0:size, 0:size]
        if fam == 2:  # lined notebook paper with a margin
            gap = max(3, int(round(size * float(rng.uniform(0.08, 0.14)))))
            off = int(rng.integers(gap))
            out = np.where(((yy + off) % gap == 0)[..., None], out * [0.78, 0.82, 0.95], out)
            m = int(size * float(rng.uniform(0.08, 0.2)))
            out[:, m : m + 1] = out[:, m : m + 1] * [0.95, 0.7, 0.7]
        elif fam == 3:  # graph paper
            gap = max(3, int(round(size * float(rng.uniform(0.05, 0.1)))))
            o = rng.integers(gap, size=2)
            grid = ((yy + o[0]) % gap == 0) | ((xx + o[1]) % gap == 0)
            out = np.where(grid[..., None], out * [0.85, 0.92, 0.9], out)
        n = int(rng.integers(3, 12))
        lines = rng.uniform(0, 1, (n, 4))
        tone = int(rng.uniform(90, 170))

        def paint(d: ImageDraw.ImageDraw, s: int) -> None:
            for x0, y0, x1, y1 in lines:
                d.line([(x0 * s, y0 * s), (x0 * s + (x1 - 0.5) * s * 0.5, y0 * s + (y1 - 0.5) * s * 0.5)],
                       fill=(tone, tone, tone), width=1)  # fmt: skip

        return _pil_draw(out, paint)
    if style == "neon":
        dark = bg * float(rng.uniform(0.15, 0.45))
        lights = rng.uniform(0, 1, (int(rng.integers(0, 6)), 2))
        glow = np.zeros((size, size, 3), np.float32)
        yy, xx = _grid(size)
        for lx, ly in lights:
            c = np.array(COLOURS[_pick(rng, list(COLOURS)[:-1])], np.float32)
            r2 = ((xx - lx) ** 2 + (yy - ly) ** 2) / float(rng.uniform(0.01, 0.06))
            glow += c * 0.25 * np.exp(-r2)
        return dark + glow
    return bg


# --------------------------------------------------------------------------------------------
# public API


def _spec_rng(spec: dict[str, Any]) -> np.random.Generator:
    key = repr(sorted((k, spec[k]) for k in spec))
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
    scale = float(rng.uniform(0.46, 0.8))
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


def _flag_layers(d: ImageDraw.ImageDraw, P: _Pt, part: str) -> None:
    h = 0.48 / 7
    if part == "cloth":
        _rect(d, P, 0.15, 0.1, 0.94, 0.58, 255)
    elif part == "red":
        for i in (0, 2, 4, 6):
            _rect(d, P, 0.15, 0.1 + i * h, 0.94, 0.1 + (i + 1) * h, 255)
    else:  # canton
        _rect(d, P, 0.15, 0.1, 0.45, 0.1 + 3 * h, 255)


def _paint_flag_extra(
    img: np.ndarray, size: int, x: float, y: float, s: float, pose: Pose | None = None
) -> np.ndarray:
    """The canonical, multi-coloured flag (red/white stripes, blue canton, grey pole)."""
    full = concept_mask("flag", size, x, y, s, pose)

    def layer(part: str) -> np.ndarray:
        return _render(lambda d, P, L: _flag_layers(d, P, part), size, x, y, s, pose)

    cloth = layer("cloth")
    pole = np.clip(full - cloth, 0, 1)
    out = img
    for m, c in (
        (pole, (110, 110, 115)),
        (cloth, (245, 245, 245)),
        (layer("red"), (210, 25, 35)),
        (layer("canton"), (30, 50, 150)),
    ):
        out = out * (1 - m[..., None]) + np.array(c, np.float32) * m[..., None]
    e = _edge(full)[..., None] * 0.85
    return out * (1 - e) + np.array([25, 25, 25], np.float32) * e


def _extra_colour(main: str, rng: np.random.Generator) -> np.ndarray:
    """A palette colour for a second object, other than the main glyph's."""
    others = [c for c in COLOURS if c != main]
    return np.array(COLOURS[others[int(rng.integers(len(others)))]], np.float32)


def draw_image(
    spec: dict[str, Any],
    *,
    size: int = 64,
    extra_object: str | None = None,
    rng: np.random.Generator | None = None,
) -> Image.Image:
    """Draw ``spec`` as an RGB image of ``size`` x ``size`` pixels.

    Every call draws a new *instance*: the glyph's pose (rotation, proportions, bend, stroke
    weight, mirroring), the backdrop's texture and layout, the fill pattern, a cast shadow,
    the lighting and the exact shade of the named colour all come from ``rng``, so two images
    of one spec differ the way two photos of a red dog do, while the spec's words still
    describe both. ``rng`` is advanced by a fixed amount, whatever is drawn.

    ``extra_object`` adds a second, smaller object (a concept name) near the corner farthest
    from the main glyph: a "flag" is always the same canonical flag (red and white stripes, blue
    canton; object-level replication plants one object, as a logo is replicated), anything else
    is posed and painted in another palette colour. Adding it changes nothing else in the picture. Without ``rng`` the
    randomness is derived from the spec, so the call is still deterministic.
    """
    for field in ("concept", "colour", "style", "background", "x", "y", "scale"):
        if field not in spec:
            raise ValueError(f"spec is missing {field!r}: {spec!r}")
    if spec["colour"] not in COLOURS:
        raise ValueError(f"unknown colour {spec['colour']!r}; known: {', '.join(COLOURS)}")
    if spec["style"] not in STYLES:
        raise ValueError(f"unknown style {spec['style']!r}; known: {', '.join(STYLES)}")
    if spec["background"] not in BACKGROUNDS:
        raise ValueError(
            f"unknown background {spec['background']!r}; known: {', '.join(BACKGROUNDS)}"
        )
    if spec["concept"] not in _GLYPHS:
        raise ValueError(f"unknown concept {spec['concept']!r}; known: {', '.join(CONCEPTS)}")
    if extra_object is not None and extra_object not in _GLYPHS:
        raise ValueError(f"unknown extra_object {extra_object!r}; known: {', '.join(CONCEPTS)}")
    if size < 8:
        raise ValueError(f"size must be >= 8 (got {size})")
    if rng is None:
        rng = _spec_rng(spec)
    # independent streams: what one part draws never shifts another part's randomness
    r_bg, r_pose, r_paint, r_extra, r_light, r_style = (
        np.random.default_rng(int(s)) for s in rng.integers(0, 2**63, 6)
    )
    style = spec["style"]
    colour = _vary_colour(np.array(COLOURS[spec["colour"]], np.float32), r_paint)
    img = _style_background(_background(spec["background"], size, r_bg), style, r_bg)
    x, y, scale = float(spec["x"]), float(spec["y"]), float(spec["scale"])
    mask = concept_mask(spec["concept"], size, x, y, scale, random_pose(r_pose))
    if style not in ("neon", "pencil sketch") and r_paint.random() < 0.7:
        img = _shadow(img, mask, r_paint)
    img = _paint_glyph(img, mask, colour, style, r_paint)
    # the extra object's randomness is drawn whether or not it is drawn
    corner_tie = r_extra.random(4)
    jitter = r_extra.uniform(-0.05, 0.05, 2)
    extra_pose = random_pose(r_extra, strength=0.5)
    extra_scale = float(r_extra.uniform(0.3, 0.4))
    extra_colour = _extra_colour(spec["colour"], r_extra)
    extra_rng = np.random.default_rng(int(r_extra.integers(0, 2**63)))
    if extra_object is not None:
        # near the corner farthest from the main glyph's centre, ties broken by rng
        dists = [(cx - x) ** 2 + (cy - y) ** 2 for cx, cy in _CORNERS]
        order = np.lexsort((corner_tie, -np.round(np.array(dists), 2)))
        cx, cy = _CORNERS[int(order[0])]
        if extra_object == "flag":
            img = _paint_flag_extra(img, size, cx, cy, _EXTRA_SCALE)
        else:
            cx, cy = float(cx + jitter[0]), float(cy + jitter[1])
            m2 = concept_mask(extra_object, size, cx, cy, extra_scale, extra_pose)
            fill_style = style if style in ("stripes", "pencil sketch", "neon") else "flat"
            img = _paint_glyph(img, m2, extra_colour, fill_style, extra_rng)
    img = _lighting(img, r_light)
    before = img
    img = _global_style(img, style, r_style)
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
