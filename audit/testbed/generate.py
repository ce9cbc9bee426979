"""SynthLAION generator: a LAION-like corpus with planted, known truth.

``build_testbed(out_dir, n, seed, **rates)`` writes::

    out_dir/
      urls.parquet      LAION-style url list: URL, TEXT, WIDTH, HEIGHT, sha256 (of the image as
                        it was when the list was built; row i is img2dataset's sample i)
      files/<name>      the bytes a web server would send for each URL (404 rows: no file)
      shards/           what `img2dataset --input_format parquet --url_col URL --caption_col TEXT
                        --output_format webdataset --resize_mode no --skip_reencode True`
                        writes for that list: 00000.tar ({key}.jpg/.json/.txt for successes),
                        00000.parquet (every row, with status and error_message),
                        00000_stats.json
      truth.parquet     one row per key: what was planted (see TRUTH_SCHEMA)
      testbed.json      parameters, counts, img2dataset options, poison statistics

URLs are written against the placeholder base ``http://127.0.0.1:{port}`` (the port of a server
that does not exist yet). :func:`audit.testbed.server.serve_testbed` serves ``files/`` and yields
the real base URL; :func:`write_url_list` / :func:`urls_for` rewrite the list for it, so
img2dataset's real download path can run against the testbed. Keys are img2dataset's
(``compute_key``): with the default ``shard_size`` of 10,000, row i has key ``f"{i:09d}"``.
A real download reproduces the truth keys when it uses the same ``number_sample_per_shard``.

Planted truth, all disjoint except where noted:

- concepts follow a Zipf law over a fixed ranking (``zipf_s``), so the tail is sparse;
- every other image is its own drawing: ``draw.draw_image`` draws a new instance per row (pose,
  proportions, backdrop texture, fill pattern, markings, lighting, shade of the colour), so rows
  the truth calls distinct differ the way two photos of one subject do; ``extra_object_rate`` of
  them also show a second, smaller object (recorded in ``extra_object``, never named in the
  caption, never the object of object-level replication, never a poison pair's concept);
- exact-duplicate groups (same bytes, different URLs and captions) and near-duplicate groups
  (a source image and copies made with the edits of copy-detection benchmarks: crops of
  10-50 %, resizes, JPEG q 30-90, colour jitter, blur, mirroring, text or emoji overlays,
  borders, other formats; see :func:`plant_copy`), each with varied captions;
- word-level replication: inside the "van gogh" subset, each famous work (``draw.WORKS``, one
  fixed picture per work) is repeated ``work_rate * n`` times as copies (the same benchmark
  edits, or none) with varied captions naming it (each work's copies are one ``dup_group`` with
  ``dup_kind`` "work");
- object-level replication: a flag drawn into ``object_rate`` of the images of the
  ``object_keyword`` concept (astronaut); their captions never name it. Astronauts are never
  drawn in the van gogh style, so the two keyword subsets do not overlap;
- poisons: dirty-label pairs (caption names concept A, the image shows B); clean-label poisons
  against the auditor's CLIP (``clean``: an image of A, perturbed by PGD under an L-infinity
  budget toward one anchor image of B in the tiny CLIP's embedding space; the caption stays A);
  and poisons aimed at the generator, whose VAE encoder turns images into the latents it trains
  on (:func:`audit.testbed.poison.pgd_toward_latents`, L-infinity ``gen_eps``):
  ``nightshade`` (an image of A whose latent is moved toward the latent of the same picture
  with B drawn in place of A; caption stays A) and ``glaze`` (an image in style S, caption
  naming S, whose latent is moved toward the same picture drawn in style T);
- broken inputs: truncated and zero-byte files, wrong formats (HTML or text served as .jpg),
  404s (no file), and split-view rows (the served file is another image; urls.parquet keeps the
  original's sha256).

Same parameters and seed give byte-identical files (every random choice comes from a
``numpy.random.Generator`` seeded from ``(seed, stream, index)``; JPEG/PNG parameters are fixed;
tar members carry a fixed mtime and the shard stats fixed times). Clean-label, Nightshade- and
Glaze-style poisons depend on the CLIP or VAE weights and on torch's CPU kernels, so they are
reproducible on one machine and torch build; elsewhere their pixels may differ by a rounding
step. :func:`poison_sources` redraws a testbed's poisons before the attack and their targets.

With ``copy_check=True`` (the CLI's default) the generator checks itself after writing: it embeds
every decodable served image with the SSCD copy descriptor and records, under ``copy_check`` in
``testbed.json``, how similar the most similar *distinct* pairs are and how dissimilar the least
similar *planted* pairs are, and draws a contact sheet of both (``audit.testbed.selfcheck``).
Those numbers depend on the detector and its runtime; ``copy_check`` is null when the check was
off or the detector could not be loaded.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tarfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance

from audit.log import progress
from audit.testbed import draw
from audit.testbed.transforms import copy_transform, random_copy_kinds

logger = logging.getLogger(__name__)

GENERATOR = "synthlaion_v2"
URL_BASE_PLACEHOLDER = "http://127.0.0.1:{port}"
FILES_DIR = "files"
SHARDS_DIR = "shards"
NOT_FOUND_ERROR = "HTTP Error 404: File not found"  # what urllib reports for our server's 404
TAR_MTIME = 0.0  # fixed member mtime (img2dataset's TarWriter uses time.time(), a float too)
STATS_TIME = 0.0  # fixed start/end/duration in *_stats.json

#: The img2dataset options whose output ``shards/`` reproduces (row order aside: a real run
#: writes rows in download-completion order). ``number_sample_per_shard`` is the testbed's
#: ``shard_size``.
IMG2DATASET_OPTIONS: dict[str, Any] = {
    "input_format": "parquet",
    "url_col": "URL",
    "caption_col": "TEXT",
    "output_format": "webdataset",
    "encode_format": "jpg",
    "encode_quality": 95,
    "resize_mode": "no",
    "skip_reencode": True,
    "compute_hash": "sha256",
    "extract_exif": True,
    "oom_shard_count": 5,
    "retries": 0,
}

#: Zipf rank order of the concepts (rank 1 = most frequent); concepts of ``draw.CONCEPTS`` not
#: listed here follow in their own order.
CONCEPT_RANKING: tuple[str, ...] = (
    "dog", "astronaut", "cat", "car", "tree", "house", "flower", "bird", "fish", "boat", "sun",
    "star", "moon", "heart", "cup", "clock", "key", "chair", "umbrella", "rocket", "guitar",
    "bicycle", "mushroom", "flag",
)  # fmt: skip

BROKEN_KINDS = ("truncated", "zero_byte", "wrong_format", "missing", "split_view")
POISON_KINDS = ("none", "dirty", "clean", "nightshade", "glaze")
"""``truth.poison_kind``: dirty-label; clean-label against the auditor's CLIP; Nightshade-style
and Glaze-style against the generator's VAE."""
GENERATOR_POISONS = ("nightshade", "glaze")
NEAR_TRANSFORMS = ("resize", "crop", "jitter", "jpeg")
"""The mild edits of generator v1 (:func:`_transform`), kept for
``audit.training.train_tiny_clip.near_dup_metrics``; planted copies now use :func:`plant_copy`."""
COPY_MIN_SIDE = 112
"""Copies are edited at no less than this side (the drawing upscaled by a whole factor first), so
the benchmark edits keep their meaning on 64 px drawings: a 30 % resize leaves 38 px, not 19,
and text, stickers and borders keep their proportions."""
MAX_COPY_EDITS = 2

TRUTH_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("concept", pa.string()),  # what the image shows (null for famous works)
        ("caption_concept", pa.string()),  # the concept the caption names (differs when dirty)
        ("style", pa.string()),
        ("colour", pa.string()),
        ("background", pa.string()),
        ("dup_group", pa.int64()),  # shared by exact, near and work copies of one image
        ("dup_kind", pa.string()),  # "exact" | "near" | "work" | null
        ("transform", pa.string()),  # near/work copies: what was applied ("original", "crop+jpeg")
        ("work_id", pa.string()),
        ("keyword", pa.string()),  # "van gogh" (van gogh style subset) | object_keyword | null
        ("object_present", pa.bool_()),  # the unmentioned object was drawn in
        ("extra_object", pa.string()),  # a second, smaller, unmentioned concept drawn in
        ("poison_kind", pa.string()),  # see POISON_KINDS
        # concept B the poison's image features carry (style T for "glaze")
        ("poison_target", pa.string()),
        ("broken_kind", pa.string()),  # one of BROKEN_KINDS or null
        ("served_concept", pa.string()),  # split_view: what the served image shows
        ("file_name", pa.string()),
        ("sha256", pa.string()),  # as recorded in urls.parquet
        ("served_sha256", pa.string()),  # of files/<file_name>; null when 404
        ("width", pa.int32()),  # as recorded in urls.parquet
        ("height", pa.int32()),
    ]
)

URLS_SCHEMA = pa.schema(
    [
        ("URL", pa.string()),
        ("TEXT", pa.string()),
        ("WIDTH", pa.int64()),
        ("HEIGHT", pa.int64()),
        ("sha256", pa.string()),
    ]
)


# ------------------------------------------------------------------------------ parameters


def _parse_pairs(field_name: str, pairs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for p in pairs:
        a, sep, b = str(p).partition(":")
        a, b = a.strip(), b.strip()
        if not sep or not a or not b:
            raise ValueError(f"testbed.{field_name}: expected 'A:B' concept pairs (got {p!r})")
        for c in (a, b):
            if c not in draw.CONCEPTS:
                raise ValueError(
                    f"testbed.{field_name}: unknown concept {c!r} in {p!r} "
                    f"(known: {', '.join(draw.CONCEPTS)})"
                )
        if a == b:
            raise ValueError(
                f"testbed.{field_name}: a pair needs two different concepts (got {p!r})"
            )
        out.append((a, b))
    return tuple(out)


def _parse_style_pairs(field_name: str, pairs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for p in pairs:
        a, sep, b = str(p).partition(":")
        a, b = a.strip(), b.strip()
        if not sep or not a or not b:
            raise ValueError(f"testbed.{field_name}: expected 'S:T' style pairs (got {p!r})")
        for c in (a, b):
            if c not in draw.STYLES:
                raise ValueError(
                    f"testbed.{field_name}: unknown style {c!r} in {p!r} "
                    f"(known: {', '.join(draw.STYLES)})"
                )
        if a == b:
            raise ValueError(f"testbed.{field_name}: a pair needs two different styles (got {p!r})")
        if a == "van gogh":
            raise ValueError(
                f"testbed.{field_name}: 'van gogh' is the famous works' keyword subset and "
                f"cannot be the cloaked style (got {p!r})"
            )
        out.append((a, b))
    return tuple(out)


@dataclass(frozen=True)
class TestbedParams:
    """Every knob of the generator. Rates are shares of ``n`` rows unless said otherwise."""

    __test__ = False  # not a pytest test class, despite the name

    n: int = 2000
    seed: int = 0
    size: int = 64
    shard_size: int = 10000
    zipf_s: float = 1.0
    exact_dup_rate: float = 0.04
    near_dup_rate: float = 0.06
    work_rate: float = 0.007
    works: tuple[str, ...] = tuple(draw.WORKS)
    object_keyword: str = "astronaut"
    object_name: str = "flag"
    object_rate: float = 0.10
    extra_object_rate: float = 0.25
    dirty_rate: float = 0.01
    dirty_pairs: tuple[str, ...] = ("cat:bird", "tree:boat")
    clean_rate: float = 0.01
    clean_pairs: tuple[str, ...] = ("dog:cat", "car:bicycle")
    pgd_eps: float = 8 / 255
    pgd_steps: int = 40
    poison_format: str = "jpeg"
    poison_model: str = "tiny-synth"
    poison_pretrained: str | None = None
    nightshade_rate: float = 0.01
    nightshade_pairs: tuple[str, ...] = ("house:clock",)
    glaze_rate: float = 0.01
    glaze_pairs: tuple[str, ...] = ("watercolor:pixel art",)
    gen_eps: float = 16 / 255
    gen_steps: int = 50
    generator: str = "tiny-sd"
    device: str = "cpu"
    truncated_rate: float = 0.005
    zero_byte_rate: float = 0.0025
    wrong_format_rate: float = 0.0025
    missing_rate: float = 0.01
    split_view_rate: float = 0.005
    png_rate: float = 0.05

    def __post_init__(self) -> None:
        def bad(name: str, msg: str) -> None:
            raise ValueError(f"testbed.{name}: {msg} (got {getattr(self, name)!r})")

        object.__setattr__(self, "works", tuple(self.works))
        object.__setattr__(self, "dirty_pairs", tuple(self.dirty_pairs))
        object.__setattr__(self, "clean_pairs", tuple(self.clean_pairs))
        object.__setattr__(self, "nightshade_pairs", tuple(self.nightshade_pairs))
        object.__setattr__(self, "glaze_pairs", tuple(self.glaze_pairs))
        if self.n < 1:
            bad("n", "must be >= 1")
        if self.size < 16:
            bad("size", "must be >= 16 pixels")
        if self.shard_size < 1:
            bad("shard_size", "must be >= 1")
        if self.zipf_s < 0:
            bad("zipf_s", "must be >= 0 (0 = uniform concepts)")
        for name in (
            "exact_dup_rate",
            "near_dup_rate",
            "work_rate",
            "object_rate",
            "extra_object_rate",
            "dirty_rate",
            "clean_rate",
            "nightshade_rate",
            "glaze_rate",
            "truncated_rate",
            "zero_byte_rate",
            "wrong_format_rate",
            "missing_rate",
            "split_view_rate",
            "png_rate",
        ):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                bad(name, "must be between 0 and 1")
        for w in self.works:
            if w not in draw.WORKS:
                bad("works", f"unknown work {w!r} (known: {', '.join(draw.WORKS)})")
        if self.object_keyword not in draw.CONCEPTS:
            bad("object_keyword", "must be a concept")
        if self.object_name not in draw.CONCEPTS:
            bad("object_name", "must be a concept")
        if not 0 < self.pgd_eps <= 1:
            bad("pgd_eps", "must be in (0, 1] (pixel units: 8/255 = 0.0314)")
        if self.pgd_steps < 1:
            bad("pgd_steps", "must be >= 1")
        if not 0 < self.gen_eps <= 1:
            bad("gen_eps", "must be in (0, 1] (pixel units: 16/255 = 0.0627)")
        if self.gen_steps < 1:
            bad("gen_steps", "must be >= 1")
        if self.poison_format not in ("jpeg", "png"):
            bad("poison_format", "must be 'jpeg' or 'png'")
        dirty = _parse_pairs("dirty_pairs", self.dirty_pairs)
        clean = _parse_pairs("clean_pairs", self.clean_pairs)
        nightshade = _parse_pairs("nightshade_pairs", self.nightshade_pairs)
        glaze = _parse_style_pairs("glaze_pairs", self.glaze_pairs)
        if self.dirty_rate > 0 and not dirty:
            bad("dirty_pairs", "needs at least one pair when dirty_rate > 0")
        if self.clean_rate > 0 and not clean:
            bad("clean_pairs", "needs at least one pair when clean_rate > 0")
        if self.nightshade_rate > 0 and not nightshade:
            bad("nightshade_pairs", "needs at least one pair when nightshade_rate > 0")
        if self.glaze_rate > 0 and not glaze:
            bad("glaze_pairs", "needs at least one pair when glaze_rate > 0")

    @property
    def dirty(self) -> tuple[tuple[str, str], ...]:
        return _parse_pairs("dirty_pairs", self.dirty_pairs)

    @property
    def clean(self) -> tuple[tuple[str, str], ...]:
        return _parse_pairs("clean_pairs", self.clean_pairs)

    @property
    def nightshade(self) -> tuple[tuple[str, str], ...]:
        return _parse_pairs("nightshade_pairs", self.nightshade_pairs)

    @property
    def glaze(self) -> tuple[tuple[str, str], ...]:
        return _parse_style_pairs("glaze_pairs", self.glaze_pairs)


# ------------------------------------------------------------------------------ helpers


def img2dataset_key(index: int, shard_size: int, oom_shard_count: int = 5) -> str:
    """The key img2dataset gives input row ``index`` (its ``compute_key``)."""
    oom = math.ceil(math.log10(shard_size)) if shard_size > 1 else 0
    shard, i = divmod(index, shard_size)
    return f"{(10**oom) * shard + i:0{oom + oom_shard_count}d}"


def resolve_url(url: str, base_url: str) -> str:
    """Replace the placeholder base of a testbed URL with ``base_url`` (a running server)."""
    if url.startswith(URL_BASE_PLACEHOLDER):
        return base_url.rstrip("/") + url[len(URL_BASE_PLACEHOLDER) :]
    return url


def urls_for(testbed_dir: str | Path, base_url: str) -> pa.Table:
    """``urls.parquet`` with every URL pointing at ``base_url`` (e.g. from ``serve_testbed``)."""
    table = pq.read_table(Path(testbed_dir) / "urls.parquet")
    urls = [resolve_url(u, base_url) for u in table.column("URL").to_pylist()]
    return table.set_column(table.schema.get_field_index("URL"), "URL", pa.array(urls, pa.string()))


def write_url_list(testbed_dir: str | Path, base_url: str, out_path: str | Path) -> Path:
    """Write ``urls_for(testbed_dir, base_url)`` as a parquet url list for img2dataset."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(urls_for(testbed_dir, base_url), out)
    return out


def write_served_images(
    out_dir: str | Path, images: Sequence[Any], captions: Sequence[str], fmt: str = "PNG"
) -> list[str]:
    """Any images as a folder that :func:`audit.testbed.server.serve_testbed` serves and
    :func:`write_url_list` points at the server, like a testbed's: ``files/<i:09d>.<ext>`` (the
    PIL ``images`` encoded as ``fmt``) and ``urls.parquet`` (``URLS_SCHEMA``: URL against the
    placeholder base, TEXT, WIDTH, HEIGHT, sha256 of the served bytes); row i is sample i.
    Returns the file names, in order (the URL of sample i ends with ``/files/<name i>``)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    out = Path(out_dir)
    (out / FILES_DIR).mkdir(parents=True, exist_ok=True)
    ext = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[fmt.upper()]
    names, urls, shas, widths, heights = [], [], [], [], []
    for i, img in enumerate(images):
        buf = io.BytesIO()
        img.save(buf, format=fmt.upper())
        data = buf.getvalue()
        name = f"{i:09d}{ext}"
        (out / FILES_DIR / name).write_bytes(data)
        names.append(name)
        urls.append(f"{URL_BASE_PLACEHOLDER}/{FILES_DIR}/{name}")
        shas.append(_sha256(data))
        widths.append(img.width)
        heights.append(img.height)
    table = {
        "URL": urls,
        "TEXT": list(captions),
        "WIDTH": widths,
        "HEIGHT": heights,
        "sha256": shas,
    }
    pq.write_table(pa.Table.from_pydict(table, URLS_SCHEMA), out / "urls.parquet")
    return names


def load_truth(testbed_dir: str | Path) -> pa.Table:
    """``truth.parquet`` of a testbed (one row per key, sorted by key)."""
    path = Path(testbed_dir) / "truth.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {testbed_dir} a testbed folder?")
    return pq.read_table(path)


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def _concept_ranking() -> list[str]:
    ranked = [c for c in CONCEPT_RANKING if c in draw.CONCEPTS]
    return ranked + [c for c in draw.CONCEPTS if c not in ranked]


def _group_sizes(total: int, lo: int, hi: int, rng: np.random.Generator) -> list[int]:
    """Split ``total`` rows into groups of ``lo..hi`` (a remainder below ``lo`` joins the last
    group; a total below ``lo`` gives no group)."""
    sizes: list[int] = []
    left = total
    while left >= lo:
        s = min(int(rng.integers(lo, hi + 1)), left)
        if left - s and left - s < lo:
            s = left if left <= hi else left - lo
        sizes.append(s)
        left -= s
    return sizes


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _count(rate: float, n: int) -> int:
    """``rate * n`` rounded half up (Python's round() would send 0.5 to 0)."""
    return int(math.floor(rate * n + 0.5))


# ------------------------------------------------------------------------------ images


def _encode(
    img: Image.Image, fmt: str, rng: np.random.Generator, quality: int | None = None
) -> tuple[bytes, str]:
    """Encode with deterministic, varied parameters; returns (bytes, file extension)."""
    q = int(rng.choice([75, 80, 85, 90, 95])) if quality is None else quality
    ss = int(rng.choice([0, 2]))  # chroma subsampling 4:4:4 or 4:2:0, as real sites vary
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=6)
        return buf.getvalue(), ".png"
    img.save(buf, "JPEG", quality=q, subsampling=ss, optimize=False, progressive=False)
    return buf.getvalue(), ".jpg"


def _transform(
    img: Image.Image, kinds: Sequence[str], rng: np.random.Generator, jpeg_range: tuple[int, int]
) -> tuple[Image.Image, str, int | None]:
    """Generator v1's mild near-duplicate edits (see NEAR_TRANSFORMS), in a fixed order;
    returns (image, description, jpeg q)."""
    desc: list[str] = []
    q = None
    if "resize" in kinds:
        f = float(rng.choice([0.75, 0.875, 1.25, 1.5]))
        s = max(16, int(round(img.size[0] * f)))
        img = img.resize((s, s), Image.BICUBIC)
        desc.append(f"resize:{s}")
    if "crop" in kinds:
        w, h = img.size
        m = max(2, w // 12)
        box = tuple(int(v) for v in rng.integers(1, m + 1, size=4))
        img = img.crop((box[0], box[1], w - box[2], h - box[3])).resize((w, h), Image.BICUBIC)
        desc.append("crop:" + ",".join(map(str, box)))
    if "jitter" in kinds:
        b, c, s = (float(v) for v in rng.uniform(0.88, 1.12, size=3))
        img = ImageEnhance.Brightness(img).enhance(b)
        img = ImageEnhance.Contrast(img).enhance(c)
        img = ImageEnhance.Color(img).enhance(s)
        desc.append(f"jitter:{b:.2f},{c:.2f},{s:.2f}")
    if "jpeg" in kinds:
        q = int(rng.integers(jpeg_range[0], jpeg_range[1] + 1))
        desc.append(f"jpeg:{q}")
    return img, "+".join(desc) if desc else "reencode", q


def plant_copy(
    img: Image.Image, rng: np.random.Generator, *, max_edits: int = MAX_COPY_EDITS
) -> tuple[bytes, str, str]:
    """A copy of ``img`` as copy-detection benchmarks make them: 1 to ``max_edits`` edits of
    :data:`audit.testbed.transforms.COPY_TRANSFORMS` (crop 10-50 %, resize, JPEG q30-90, colour
    jitter, blur, flip, text, emoji, border, format), applied by
    :func:`~audit.testbed.transforms.copy_transform` to the drawing upscaled (bicubic, by a
    whole factor) to at least :data:`COPY_MIN_SIDE` px. Returns (bytes, extension,
    description), e.g. ``"upscale:2+crop:0.31+jpeg:55"``."""
    factor = max(1, math.ceil(COPY_MIN_SIDE / max(img.size)))
    big = img.resize((img.size[0] * factor, img.size[1] * factor), Image.BICUBIC)
    data, ext, desc = copy_transform(big, random_copy_kinds(rng, max_edits), rng)
    return data, ext, (f"upscale:{factor}+{desc}" if factor > 1 else desc)


def _image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


_WRONG_FORMATS = (
    ("html", "404 Not Found", "The requested image was not found on this server."),
    ("html", "Access Denied", "You don't have permission to access this resource."),
    ("html", "Image removed", "This image has been removed by its owner."),
    ("text", "", "Hotlinking is not allowed. Please visit our website."),
    ("text", "", "error: bandwidth quota exceeded"),
)


def _wrong_format_bytes(rng: np.random.Generator) -> bytes:
    kind, title, msg = _WRONG_FORMATS[int(rng.integers(len(_WRONG_FORMATS)))]
    if kind == "html":
        return (
            f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>\n"
            f"<body><h1>{title}</h1><p>{msg}</p></body></html>\n"
        ).encode()
    return (msg + "\n").encode()


# ------------------------------------------------------------------------------ planning


@dataclass
class _Unit:
    """One drawn source image and the rows made from it."""

    kind: str  # single | exact | near | work | dirty | clean | nightshade | glaze | broken
    size: int
    concept: str | None = None
    caption_concept: str | None = None
    poison_target: str | None = None
    work_id: str | None = None
    broken_kind: str | None = None
    dup_group: int | None = None
    flag: bool = False
    pair: int | None = None
    extra: str | None = None  # a second, unmentioned concept drawn in
    style: str | None = None  # glaze: the cloaked style


@dataclass
class _Row:
    kind: str
    caption: str
    concept: str | None
    caption_concept: str | None
    style: str | None
    colour: str | None
    background: str | None
    served: bytes | None
    ext: str
    sha256: str
    width: int
    height: int
    dup_group: int | None = None
    dup_kind: str | None = None
    transform: str | None = None
    work_id: str | None = None
    object_present: bool = False
    extra_object: str | None = None
    poison_kind: str = "none"
    poison_target: str | None = None
    broken_kind: str | None = None
    served_concept: str | None = None
    source: Image.Image | None = field(default=None, repr=False)  # poisons, before PGD
    target: Image.Image | None = field(default=None, repr=False)  # nightshade/glaze PGD target
    pair: int | None = None


def _plan(p: TestbedParams) -> tuple[list[_Unit], dict[str, int]]:
    rng = _rng(p.seed, 0)
    ranking = _concept_ranking()
    weights = np.arange(1, len(ranking) + 1, dtype=np.float64) ** -p.zipf_s
    weights /= weights.sum()

    def concept() -> str:
        return ranking[int(rng.choice(len(ranking), p=weights))]

    units: list[_Unit] = []
    group = 0
    per_work = _count(p.work_rate, p.n)
    if p.work_rate > 0:
        per_work = max(2, per_work)
    for wid in p.works if per_work else ():
        units.append(_Unit("work", per_work, work_id=wid, dup_group=group))
        group += 1
    for kind, rate, hi in (("exact", p.exact_dup_rate, 4), ("near", p.near_dup_rate, 5)):
        for s in _group_sizes(_count(rate, p.n), 2, hi, rng):
            units.append(_Unit(kind, s, concept=concept(), dup_group=group))
            group += 1
    for kind, rate, pairs in (("dirty", p.dirty_rate, p.dirty), ("clean", p.clean_rate, p.clean)):
        if not pairs:
            continue
        for k, (pair, cnt) in enumerate(
            zip(pairs, _split(_count(rate, p.n), len(pairs)), strict=True)
        ):
            a, b = pair
            for _ in range(cnt):
                image_concept = b if kind == "dirty" else a
                units.append(
                    _Unit(
                        kind, 1, concept=image_concept, caption_concept=a, poison_target=b, pair=k
                    )
                )
    for k, (pair, cnt) in enumerate(
        zip(p.nightshade, _split(_count(p.nightshade_rate, p.n), len(p.nightshade)), strict=True)
    ):
        a, b = pair
        for _ in range(cnt):
            units.append(_Unit("nightshade", 1, concept=a, poison_target=b, pair=k))
    # glaze: images of any concept (never the object keyword's) in the cloaked style; their own
    # random stream, so the other rows' concepts do not depend on the glaze rate
    glaze_rng = _rng(p.seed, 6)
    for k, (pair, cnt) in enumerate(
        zip(p.glaze, _split(_count(p.glaze_rate, p.n), len(p.glaze)), strict=True)
    ):
        s, t = pair
        for _ in range(cnt):
            c = p.object_keyword
            while c == p.object_keyword:
                c = ranking[int(glaze_rng.choice(len(ranking), p=weights))]
            units.append(_Unit("glaze", 1, concept=c, poison_target=t, pair=k, style=s))
    for bk in BROKEN_KINDS:
        for _ in range(_count(getattr(p, f"{bk}_rate"), p.n)):
            units.append(_Unit("broken", 1, concept=concept(), broken_kind=bk))
    used = sum(u.size for u in units)
    if used > p.n:
        raise ValueError(
            f"testbed: the planted rates need {used} rows but n is {p.n}; lower the rates or "
            "raise n"
        )
    units.extend(_Unit("single", 1, concept=concept()) for _ in range(p.n - used))
    for u in units:
        if u.caption_concept is None and u.kind != "work":
            u.caption_concept = u.concept

    # object-level replication: flag whole units until object_rate of the keyword's images
    n_obj = sum(u.size for u in units if u.concept == p.object_keyword)
    target = _count(p.object_rate, n_obj)
    eligible = [
        u for u in units if u.concept == p.object_keyword and u.kind in ("single", "exact", "near")
    ]
    flagged = 0
    for i in rng.permutation(len(eligible)):
        u = eligible[int(i)]
        if flagged + u.size <= target:
            u.flag = True
            flagged += u.size

    # a second, smaller object in some images: never in the object keyword's images (their only
    # extra object is the planted one) or in poisons, never the planted object itself or a poison
    # pair's concept (so it neither fakes object-level replication nor looks like a poison)
    banned = {p.object_keyword, p.object_name}
    banned |= {c for pair in (*p.dirty, *p.clean, *p.nightshade) for c in pair}
    pool = [c for c in draw.CONCEPTS if c not in banned]
    extra_rng = _rng(p.seed, 5)
    for u in units:
        take = extra_rng.random() < p.extra_object_rate
        pick = pool[int(extra_rng.integers(len(pool)))] if pool else None
        if (
            take
            and pick is not None
            and u.kind in ("single", "exact", "near")
            and u.concept not in (None, p.object_keyword)
        ):
            if pick == u.concept:
                pick = pool[(pool.index(pick) + 1) % len(pool)]
            u.extra = pick if pick != u.concept else None
    return units, {"object_rows": n_obj, "object_target": target, "object_flagged": flagged}


def _spec(
    rng: np.random.Generator, concept: str, p: TestbedParams, style: str | None = None
) -> dict[str, Any]:
    """A random spec of ``concept``; the object keyword is never drawn in the van gogh style."""
    for _ in range(1000):
        s = draw.random_spec(rng)
        if style is not None and s["style"] != style:
            continue
        if concept == p.object_keyword and s["style"] == "van gogh":
            continue
        s["concept"] = concept
        return s
    raise RuntimeError(f"could not draw a spec for {concept!r} in style {style!r}")


def _render(u: _Unit, rng: np.random.Generator, p: TestbedParams) -> list[_Row]:
    """Draw a unit's source image and make its rows (captions, served bytes, truth)."""
    fmt = "png" if rng.random() < p.png_rate else "jpeg"
    if u.kind == "work":
        assert u.work_id is not None
        base = draw.draw_work(u.work_id, size=p.size)
        rows = []
        for _ in range(u.size):
            if rng.random() < 0.3:  # the picture as published, re-encoded
                data, ext = _encode(base, "jpeg", rng)
                desc = "reencode"
            else:
                data, ext, desc = plant_copy(base, rng, max_edits=2)
            width, height = _image_size(data)
            rows.append(
                _Row(
                    "work",
                    draw.work_caption(u.work_id, rng),
                    None,
                    None,
                    "van gogh",
                    None,
                    None,
                    data,
                    ext,
                    _sha256(data),
                    width,
                    height,
                    dup_group=u.dup_group,
                    dup_kind="work",
                    transform=desc,
                    work_id=u.work_id,
                )
            )
        return rows

    assert u.concept is not None and u.caption_concept is not None
    spec = _spec(rng, u.concept, p, style=u.style)
    extra = p.object_name if u.flag else u.extra
    target_rng = copy.deepcopy(rng)  # the generator poisons' target: the same draw, one change
    img = draw.draw_image(spec, size=p.size, extra_object=extra, rng=rng)
    cap_spec = {**spec, "concept": u.caption_concept}

    def caption() -> str:
        return draw.make_caption(cap_spec, rng, extra_object=extra, mention_extra=False)

    def row(
        data: bytes | None, ext: str, sha: str, wh: tuple[int, int] | Image.Image, **kw: Any
    ) -> _Row:
        width, height = wh.size if isinstance(wh, Image.Image) else wh
        return _Row(
            u.kind,
            caption(),
            u.concept,
            u.caption_concept,
            spec["style"],
            spec["colour"],
            spec["background"],
            data,
            ext,
            sha,
            width,
            height,
            object_present=u.flag,
            extra_object=u.extra,
            **kw,
        )

    if u.kind in ("single", "dirty"):
        data, ext = _encode(img, fmt, rng)
        kw: dict[str, Any] = {}
        if u.kind == "dirty":
            kw = {"poison_kind": "dirty", "poison_target": u.poison_target}
        return [row(data, ext, _sha256(data), img, **kw)]
    if u.kind == "exact":
        data, ext = _encode(img, fmt, rng)
        return [
            row(data, ext, _sha256(data), img, dup_group=u.dup_group, dup_kind="exact")
            for _ in range(u.size)
        ]
    if u.kind == "near":
        data, ext = _encode(img, fmt, rng)
        rows = [
            row(
                data,
                ext,
                _sha256(data),
                img,
                dup_group=u.dup_group,
                dup_kind="near",
                transform="original",
            )
        ]
        for _ in range(u.size - 1):
            d2, e2, desc = plant_copy(img, rng)
            rows.append(
                row(
                    d2,
                    e2,
                    _sha256(d2),
                    _image_size(d2),
                    dup_group=u.dup_group,
                    dup_kind="near",
                    transform=desc,
                )
            )
        return rows
    if u.kind in GENERATOR_POISONS:
        # nightshade: the same picture with B drawn in place of A; glaze: in style T
        change = {"concept": u.poison_target} if u.kind == "nightshade" else {}
        if u.kind == "glaze":
            change = {"style": u.poison_target}
        target = draw.draw_image({**spec, **change}, size=p.size, rng=target_rng)
        r = row(
            None,
            ".jpg" if p.poison_format == "jpeg" else ".png",
            "",
            img,
            poison_kind=u.kind,
            poison_target=u.poison_target,
        )
        if u.kind == "glaze":  # the caption names the cloaked style (Glaze protects a name)
            words = draw._STYLE_WORDS[spec["style"]]
            for _ in range(200):
                if any(w in r.caption.lower() for w in words):
                    break
                r.caption = caption()
        r.source, r.target, r.pair = img, target, u.pair
        return [r]
    if u.kind == "clean":
        r = row(
            None,
            ".jpg" if p.poison_format == "jpeg" else ".png",
            "",
            img,
            poison_kind="clean",
            poison_target=u.poison_target,
        )
        r.source, r.pair = img, u.pair
        return [r]
    # broken inputs
    bk = u.broken_kind
    data, ext = _encode(img, "jpeg" if bk == "truncated" else fmt, rng)
    if bk == "truncated":
        cut = int(len(data) * float(rng.uniform(0.3, 0.7)))
        served = data[:cut]
        return [row(served, ext, _sha256(served), img, broken_kind=bk)]
    if bk == "zero_byte":
        return [row(b"", ".jpg", _sha256(b""), img, broken_kind=bk)]
    if bk == "wrong_format":
        served = _wrong_format_bytes(rng)
        return [row(served, ".jpg", _sha256(served), img, broken_kind=bk)]
    if bk == "missing":
        return [row(None, ext, _sha256(data), img, broken_kind=bk)]
    if bk == "split_view":
        others = [c for c in draw.CONCEPTS if c != u.concept]
        other = others[int(rng.integers(len(others)))]
        im2 = draw.draw_image(_spec(rng, other, p), size=p.size, rng=rng)
        served, _ = _encode(im2, "jpeg", rng)
        return [row(served, ext, _sha256(data), img, broken_kind=bk, served_concept=other)]
    raise AssertionError(f"unknown unit kind {u.kind}/{bk}")


def _anchor(p: TestbedParams, pair_index: int, concept: str) -> tuple[dict, Image.Image]:
    rng = _rng(p.seed, 2, pair_index)
    spec = _spec(rng, concept, p, style="flat")
    return spec, draw.draw_image(spec, size=p.size, rng=rng)


def _make_clean_poisons(
    rows: list[_Row], p: TestbedParams, clip_model: tuple[Any, Any] | None, supplied: bool
) -> dict[str, Any]:
    """Run PGD on every clean-label row (batched) and fill in its served bytes."""
    todo = [r for r in rows if r.poison_kind == "clean"]
    if not todo:
        return {}
    from audit.testbed import poison

    if clip_model is None:
        raise ValueError("clean-label poisons need a CLIP model")
    model, preprocess = clip_model
    anchors = {k: _anchor(p, k, b) for k, (_, b) in enumerate(p.clean)}
    sources = [r.source for r in todo]
    anchor_imgs = [anchors[r.pair][1] for r in todo]
    jpeg = poison.JpegSpec(95, 0) if p.poison_format == "jpeg" else None
    t0 = time.perf_counter()
    poisons = poison.pgd_toward_anchors(
        model,
        preprocess,
        sources,
        anchor_imgs,
        eps=p.pgd_eps,
        steps=p.pgd_steps,
        jpeg=jpeg,
        device=p.device,
    )
    seconds = time.perf_counter() - t0
    served_imgs = []
    for r, im in zip(todo, poisons, strict=True):
        if jpeg is not None:
            data = jpeg.encode(im)
        else:
            buf = io.BytesIO()
            im.save(buf, "PNG", compress_level=6)
            data = buf.getvalue()
        r.served, r.sha256, r.source = data, _sha256(data), None
        served_imgs.append(Image.open(io.BytesIO(data)).convert("RGB"))
    before = poison.anchor_similarity(model, preprocess, sources, anchor_imgs, device=p.device)
    after = poison.anchor_similarity(model, preprocess, served_imgs, anchor_imgs, device=p.device)

    def linf(xs: list[Image.Image]) -> int:
        return max(
            int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())
            for a, b in zip(sources, xs, strict=True)
        )

    logger.info(
        "clean-label poisons: %d in %.1f s, mean cosine to anchor %.3f -> %.3f",
        len(todo),
        seconds,
        float(before.mean()),
        float(after.mean()),
    )
    return {
        "method": poison.NAME,
        "model": "caller-supplied" if supplied else p.poison_model,
        "pretrained": None if supplied else p.poison_pretrained,
        "eps": p.pgd_eps,
        "steps": p.pgd_steps,
        "served_format": p.poison_format,
        "anchors": {f"{a}:{b}": anchors[k][0] for k, (a, b) in enumerate(p.clean)},
        "anchor_cosine_before_mean": round(float(before.mean()), 4),
        "anchor_cosine_after_mean": round(float(after.mean()), 4),
        "anchor_cosine_gain_min": round(float((after - before).min()), 4),
        # the budget holds before encoding; the served JPEG adds its own compression error
        "perturbation_linf_max_pixels": linf(poisons),
        "served_linf_max_pixels": linf(served_imgs),
    }


def _encode_poison(im: Image.Image, p: TestbedParams) -> bytes:
    if p.poison_format == "jpeg":
        from audit.testbed.poison import JpegSpec

        return JpegSpec(95, 0).encode(im)
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def _make_generator_poisons(
    rows: list[_Row], p: TestbedParams, vae: Any | None, supplied: bool
) -> dict[str, Any]:
    """PGD on the VAE latent for every Nightshade- and Glaze-style row (batched), fill in the
    served bytes, and measure how far the served poisons' latents moved toward their targets."""
    todo = [r for r in rows if r.poison_kind in GENERATOR_POISONS]
    if not todo:
        return {}
    from audit.testbed import poison

    if vae is None:
        raise ValueError("Nightshade- and Glaze-style poisons need the generator's VAE")
    sources = [r.source for r in todo]
    targets = [r.target for r in todo]
    jpeg = poison.JpegSpec(95, 0) if p.poison_format == "jpeg" else None
    t0 = time.perf_counter()
    out = poison.pgd_toward_latents(
        vae, sources, targets, eps=p.gen_eps, steps=p.gen_steps, jpeg=jpeg, device=p.device
    )
    seconds = time.perf_counter() - t0
    served = []
    for r, im in zip(todo, out, strict=True):
        data = _encode_poison(im, p)
        r.served, r.sha256 = data, _sha256(data)
        served.append(Image.open(io.BytesIO(data)).convert("RGB"))
    before = poison.latent_distances(vae, sources, targets, device=p.device)
    after = poison.latent_distances(vae, served, targets, device=p.device)
    kinds = np.array([r.poison_kind for r in todo])
    stats: dict[str, Any] = {
        "method": poison.GENERATOR_METHOD,
        "generator": "caller-supplied" if supplied else p.generator,
        "eps": round(p.gen_eps, 6),
        "eps_pixels": round(p.gen_eps * 255, 2),
        "steps": p.gen_steps,
        "served_format": p.poison_format,
        "targets": {
            "nightshade": "the same drawing (spec and instance randomness) with concept B drawn "
            "in place of A",
            "glaze": "the same drawing in style T",
        },
    }
    for kind in GENERATOR_POISONS:
        m = kinds == kind
        if not m.any():
            continue
        ratio = after[m] / np.maximum(before[m], 1e-12)
        lin = [
            int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())
            for a, b, k in zip(sources, served, kinds, strict=True)
            if k == kind
        ]
        stats[kind] = {
            "count": int(m.sum()),
            "latent_distance_before_mean": round(float(before[m].mean()), 4),
            "latent_distance_after_mean": round(float(after[m].mean()), 4),
            "latent_distance_ratio_mean": round(float(ratio.mean()), 4),
            "latent_distance_ratio_max": round(float(ratio.max()), 4),
            "served_linf_max_pixels": max(lin),
        }
        for r in (r for r in todo if r.poison_kind == kind):
            r.source = r.target = None
    logger.info(
        "generator poisons: %d in %.1f s, latent distance to target x%.2f (mean)",
        len(todo),
        seconds,
        float((after / np.maximum(before, 1e-12)).mean()),
    )
    return stats


def poison_sources(testbed_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Redraw a testbed's Nightshade- and Glaze-style poisons before the attack: key ->
    ``{"kind", "target_label", "source", "target"}`` (PIL images: the drawing as it was before
    PGD and the image whose VAE latent PGD moved it toward). From ``testbed.json``'s
    parameters, without drawing anything else."""
    out = Path(testbed_dir)
    params = json.loads((out / "testbed.json").read_text())["params"]
    p = TestbedParams(**params)
    units, _ = _plan(p)
    offsets = np.cumsum([0] + [u.size for u in units])
    order = _rng(p.seed, 3).permutation(int(offsets[-1]))
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    found: dict[str, dict[str, Any]] = {}
    for i, u in enumerate(units):
        if u.kind not in GENERATOR_POISONS:
            continue
        (r,) = _render(u, _rng(p.seed, 1, i), p)
        key = img2dataset_key(int(position[offsets[i]]), p.shard_size)
        found[key] = {
            "kind": u.kind,
            "target_label": u.poison_target,
            "source": r.source,
            "target": r.target,
        }
    return found


# ------------------------------------------------------------------------------ img2dataset


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence libjpeg's 'Corrupt JPEG data' lines at the file-descriptor level, as
    img2dataset's resizer does around cv2."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def _is_jpeg(head: bytes) -> bool:
    """``imghdr.what(...) == "jpeg"`` (imghdr is deprecated; this is its JPEG test)."""
    return head[6:10] in (b"JFIF", b"Exif") or head[:4] == b"\xff\xd8\xff\xdb"


def _exif(data: bytes) -> str | None:
    import exifread

    try:
        tags = exifread.process_file(io.BytesIO(data), details=False)
        return json.dumps({k: str(v).strip() for k, v in tags.items() if v is not None})
    except Exception:  # noqa: BLE001 - img2dataset records None for any exif failure
        return None


def _resize_no(data: bytes) -> tuple[bytes | None, int | None, int | None, str | None]:
    """img2dataset's Resizer with resize_mode="no", skip_reencode=True, jpg quality 95:
    (image bytes, width, height, error)."""
    import cv2

    try:
        encode_needed = not _is_jpeg(data[:32])
        buf = np.frombuffer(data, np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError("Image decoding error")
        if img.ndim == 3 and img.shape[-1] == 4:
            alpha = img[:, :, 3, np.newaxis]
            img = np.rint((alpha / 255 * img[..., :3] + 255 - alpha).clip(0, 255))
            img = img.astype(np.uint8)
            encode_needed = True
        h, w = img.shape[:2]
        if encode_needed:
            out = cv2.imencode(".jpg", img, params=[int(cv2.IMWRITE_JPEG_QUALITY), 95])[1]
            return out.tobytes(), w, h, None
        return buf.tobytes(), w, h, None
    except Exception as err:  # noqa: BLE001 - img2dataset records str(err) as the error
        return None, None, None, str(err)


def _tar_add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(payload)
    ti.mtime = TAR_MTIME
    ti.mode = 0o0444
    ti.uname = "bigdata"
    ti.gname = "bigdata"
    tar.addfile(ti, io.BytesIO(payload))


def write_img2dataset_shards(
    out_dir: Path,
    urls: Sequence[str],
    captions: Sequence[str],
    served: Sequence[bytes | None],
    shard_size: int,
) -> list[dict]:
    """Write what img2dataset (IMG2DATASET_OPTIONS) writes when ``urls[i]`` serves
    ``served[i]`` (None = HTTP 404): per shard a webdataset tar, a parquet of every row and a
    stats json. Rows are in input order (a real run: completion order); times are fixed."""
    import logging as _logging

    out_dir.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [
            ("caption", pa.string()),
            ("url", pa.string()),
            ("key", pa.string()),
            ("status", pa.string()),
            ("error_message", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("original_width", pa.int32()),
            ("original_height", pa.int32()),
            ("exif", pa.string()),
            ("sha256", pa.string()),
        ]
    )
    exif_logger = _logging.getLogger("exifread")
    old_level = exif_logger.level
    exif_logger.setLevel(_logging.CRITICAL)
    all_stats = []
    try:
        for shard_id, start in enumerate(range(0, len(urls), shard_size)):
            stop = min(len(urls), start + shard_size)
            name = f"{shard_id:05d}"
            metas: list[dict[str, Any]] = []
            status: Counter[str] = Counter()
            successes = failed_dl = failed_resize = 0
            with (
                open(out_dir / f"{name}.tar", "wb") as fd,
                tarfile.open(fileobj=fd, mode="w|") as tar,
            ):
                for i in range(start, stop):
                    key = img2dataset_key(i, shard_size)
                    meta: dict[str, Any] = {
                        "caption": captions[i],
                        "url": urls[i],
                        "key": key,
                        "status": None,
                        "error_message": None,
                        "width": None,
                        "height": None,
                        "original_width": None,
                        "original_height": None,
                        "exif": None,
                        "sha256": None,
                    }
                    data = served[i]
                    if data is None:
                        failed_dl += 1
                        status[NOT_FOUND_ERROR] += 1
                        meta.update(status="failed_to_download", error_message=NOT_FOUND_ERROR)
                        metas.append(meta)
                        continue
                    with _quiet_stderr():
                        img, w, h, err = _resize_no(data)
                    if err is not None:
                        failed_resize += 1
                        status[err] += 1
                        meta.update(status="failed_to_resize", error_message=err)
                        metas.append(meta)
                        continue
                    assert img is not None
                    successes += 1
                    status["success"] += 1
                    meta.update(
                        status="success",
                        exif=_exif(data),
                        sha256=_sha256(data),
                        width=w,
                        height=h,
                        original_width=w,
                        original_height=h,
                    )
                    metas.append(meta)
                    # webdataset's TarWriter: members sorted by extension: jpg, json, txt
                    _tar_add(tar, f"{key}.jpg", img)
                    _tar_add(tar, f"{key}.json", json.dumps(meta, indent=4).encode())
                    _tar_add(tar, f"{key}.txt", str(captions[i]).encode())
            with open(out_dir / f"{name}.parquet", "wb") as fd:
                writer = pq.ParquetWriter(fd, schema)
                for b in range(0, len(metas), 100):  # img2dataset buffers 100 rows per write
                    chunk = metas[b : b + 100]
                    writer.write_table(
                        pa.Table.from_pydict(
                            {k: [m[k] for m in chunk] for k in schema.names}, schema
                        )
                    )
                writer.close()
            stats = {
                "count": stop - start,
                "successes": successes,
                "failed_to_download": failed_dl,
                "failed_to_resize": failed_resize,
                "duration": STATS_TIME,
                "start_time": STATS_TIME,
                "end_time": STATS_TIME,
                "status_dict": dict(status),
            }
            with open(out_dir / f"{name}_stats.json", "w") as f:
                json.dump(stats, f, indent=4)
            all_stats.append(stats)
    finally:
        exif_logger.setLevel(old_level)
    return all_stats


# ------------------------------------------------------------------------------ build

_OUTPUTS = ("files", "shards", "urls.parquet", "truth.parquet", "testbed.json", "testbed_pairs.png")


def _prepare_out(out: Path, overwrite: bool) -> None:
    existing = [name for name in _OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a testbed ({', '.join(existing)}); pass overwrite=True "
            "(--overwrite) or choose another folder"
        )
    for name in existing:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    (out / FILES_DIR).mkdir(parents=True)


def build_testbed(
    out_dir: str | Path,
    n: int = 2000,
    seed: int = 0,
    *,
    overwrite: bool = False,
    clip_model: tuple[Any, Any] | None = None,
    vae: Any | None = None,
    copy_check: bool = False,
    copy_sheet: str | Path | None = None,
    **rates: Any,
) -> dict[str, Any]:
    """Generate a testbed into ``out_dir`` (see the module docstring); returns the summary that
    is also written to ``testbed.json`` plus ``seconds``. ``rates`` are the other fields of
    :class:`TestbedParams`. ``clip_model``: an already loaded ``(model, preprocess)`` for the
    clean-label poisons instead of ``load_clip(poison_model, poison_pretrained)``; ``vae``: an
    already loaded VAE for the Nightshade- and Glaze-style poisons instead of the one of
    ``generator`` (:func:`audit.testbed.poison.load_vae`).

    ``copy_check``: afterwards, measure the testbed with the SSCD copy detector
    (:func:`audit.testbed.selfcheck.copy_check`; off by default here, so tests that build many
    small testbeds stay fast; on by default in ``laion-audit testbed``) and draw the contact
    sheet of its closest distinct and farthest planted pairs to ``copy_sheet`` (default
    ``out_dir/testbed_pairs.png``).
    """
    t0 = time.perf_counter()
    p = TestbedParams(n=n, seed=seed, **rates)
    out = Path(out_dir)
    units, obj_stats = _plan(p)
    supplied = clip_model is not None
    if any(u.kind == "clean" for u in units) and clip_model is None:
        from audit.models import load_clip  # load first: fail before drawing if weights are gone

        model, preprocess, _ = load_clip(p.poison_model, p.poison_pretrained, device=p.device)
        clip_model = (model, preprocess)
    vae_supplied = vae is not None
    if any(u.kind in GENERATOR_POISONS for u in units) and vae is None:
        from audit.testbed.poison import load_vae

        vae = load_vae(p.generator, device=p.device)
    _prepare_out(out, overwrite)

    rows: list[_Row] = []
    for i, u in enumerate(progress(units, desc="drawing testbed", unit="img")):
        rows.extend(_render(u, _rng(p.seed, 1, i), p))
    poison_stats = _make_clean_poisons(rows, p, clip_model, supplied)
    generator_stats = _make_generator_poisons(rows, p, vae, vae_supplied)

    order = _rng(p.seed, 3).permutation(len(rows))
    rows = [rows[int(i)] for i in order]
    name_rng = _rng(p.seed, 4)
    names: set[str] = set()
    cols: dict[str, list[Any]] = {f.name: [] for f in TRUTH_SCHEMA}
    urls, captions, served = [], [], []
    for i, r in enumerate(rows):
        while True:
            token = f"{int(name_rng.integers(0, 2**48)):012x}"
            if token not in names:
                names.add(token)
                break
        file_name = token + r.ext
        url = f"{URL_BASE_PLACEHOLDER}/{FILES_DIR}/{file_name}"
        if r.served is not None:
            (out / FILES_DIR / file_name).write_bytes(r.served)
        keyword = (
            "van gogh"
            if r.style == "van gogh"
            else p.object_keyword
            if r.caption_concept == p.object_keyword
            else None
        )
        values = {
            "key": img2dataset_key(i, p.shard_size),
            "url": url,
            "caption": r.caption,
            "concept": r.concept,
            "caption_concept": r.caption_concept,
            "style": r.style,
            "colour": r.colour,
            "background": r.background,
            "dup_group": r.dup_group,
            "dup_kind": r.dup_kind,
            "transform": r.transform,
            "work_id": r.work_id,
            "keyword": keyword,
            "object_present": r.object_present,
            "extra_object": r.extra_object,
            "poison_kind": r.poison_kind,
            "poison_target": r.poison_target,
            "broken_kind": r.broken_kind,
            "served_concept": r.served_concept,
            "file_name": file_name,
            "sha256": r.sha256,
            "served_sha256": None if r.served is None else _sha256(r.served),
            "width": r.width,
            "height": r.height,
        }
        for k, v in values.items():
            cols[k].append(v)
        urls.append(url)
        captions.append(r.caption)
        served.append(r.served)

    truth = pa.Table.from_pydict(cols, TRUTH_SCHEMA)
    pq.write_table(truth, out / "truth.parquet")
    pq.write_table(
        pa.Table.from_pydict(
            {
                "URL": urls,
                "TEXT": captions,
                "WIDTH": cols["width"],
                "HEIGHT": cols["height"],
                "sha256": cols["sha256"],
            },
            URLS_SCHEMA,
        ),
        out / "urls.parquet",
    )
    shard_stats = write_img2dataset_shards(out / SHARDS_DIR, urls, captions, served, p.shard_size)

    summary = _summary(p, rows, cols, obj_stats, poison_stats, shard_stats)
    summary["generator_poisons"] = generator_stats
    (out / "testbed.json").write_text(json.dumps(summary, indent=2) + "\n")
    if copy_check:
        from audit.testbed.selfcheck import copy_check as run_copy_check

        summary["copy_check"] = run_copy_check(out, sheet=copy_sheet, image_size=p.size)
        (out / "testbed.json").write_text(json.dumps(summary, indent=2) + "\n")
    seconds = time.perf_counter() - t0
    logger.info(
        "testbed: %d rows (%d files, %d shard(s)) in %s in %.1f s",
        p.n,
        summary["counts"]["files"],
        len(shard_stats),
        out,
        seconds,
    )
    return {**summary, "out_dir": str(out), "seconds": round(seconds, 3)}


def _summary(
    p: TestbedParams,
    rows: list[_Row],
    cols: dict[str, list[Any]],
    obj_stats: dict[str, int],
    poison_stats: dict[str, Any],
    shard_stats: list[dict],
) -> dict[str, Any]:
    concepts = Counter(c for c in cols["concept"] if c is not None)
    dup_kinds = Counter(k for k in cols["dup_kind"] if k is not None)
    groups = Counter(
        (g, k) for g, k in zip(cols["dup_group"], cols["dup_kind"], strict=True) if g is not None
    )
    n_obj = obj_stats["object_rows"]
    by_caption = Counter(c for c in cols["caption_concept"] if c is not None)
    poison_pairs: dict[str, dict[str, Any]] = {}
    by_style = Counter(s for s in cols["style"] if s is not None)
    for a, s, b, k in zip(
        cols["caption_concept"], cols["style"], cols["poison_target"], cols["poison_kind"],
        strict=True,
    ):  # fmt: skip
        if k != "none":
            attacked = s if k == "glaze" else a  # glaze attacks a style, the others a concept
            d = poison_pairs.setdefault(f"{k}:{attacked}:{b}", {"kind": k, "count": 0})
            d["count"] += 1
    for name, d in poison_pairs.items():  # share of the attacked concept's (style's) rows
        attacked = name.split(":")[1]
        total = by_style[attacked] if d["kind"] == "glaze" else by_caption[attacked]
        key = "share_of_style" if d["kind"] == "glaze" else "share_of_caption_concept"
        d[key] = round(d["count"] / total, 4)
    poison_pairs = dict(sorted(poison_pairs.items()))
    params = asdict(p)
    params["pgd_eps"] = round(p.pgd_eps, 6)
    params["gen_eps"] = round(p.gen_eps, 6)
    return {
        "generator": GENERATOR,
        "params": params,
        "url_base_placeholder": URL_BASE_PLACEHOLDER,
        "img2dataset_options": {**IMG2DATASET_OPTIONS, "number_sample_per_shard": p.shard_size},
        "counts": {
            "rows": len(rows),
            "files": sum(1 for r in rows if r.served is not None),
            "dup_rows": dict(sorted(dup_kinds.items())),
            "dup_groups": dict(sorted(Counter(k for _, k in groups).items())),
            "works": {w: sum(1 for x in cols["work_id"] if x == w) for w in p.works},
            "van_gogh_subset": sum(1 for k in cols["keyword"] if k == "van gogh"),
            "object_keyword_rows": n_obj,
            "object_present": obj_stats["object_flagged"],
            "object_rate_realised": round(obj_stats["object_flagged"] / n_obj, 4) if n_obj else 0,
            "extra_objects": dict(
                sorted(Counter(x for x in cols["extra_object"] if x is not None).items())
            ),
            "poisons": dict(sorted(Counter(k for k in cols["poison_kind"]).items())),
            "poison_pairs": poison_pairs,
            "broken": {k: sum(1 for x in cols["broken_kind"] if x == k) for k in BROKEN_KINDS},
            "concepts": dict(sorted(concepts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "styles": dict(sorted(Counter(s for s in cols["style"] if s).items())),
            "png_files": sum(1 for r in rows if r.ext == ".png" and r.served is not None),
        },
        "shards": [
            {
                "name": f"{i:05d}",
                **{
                    k: s[k]
                    for k in ("count", "successes", "failed_to_download", "failed_to_resize")
                },
            }
            for i, s in enumerate(shard_stats)
        ],
        "clean_poisons": poison_stats,
        "copy_check": None,  # filled in by build_testbed(copy_check=True)
    }
