"""A real-photo copy-detection benchmark built from photos that installed packages ship.

No copy detector in this project was trained or tuned on these photos: scikit-image's wheel
bundles a set of classic test photographs under ``skimage/data/`` and scikit-learn's bundles two
sample photos under ``sklearn/datasets/images/``. They are read straight from the installed
packages (never copied into this repository) with Pillow; neither library is imported.

:func:`build_photo_copies` writes img2dataset-format shards holding every photo once plus its
copies (:func:`audit.testbed.transforms.copy_transform`: crops of 10-50 %, resizes, JPEG q30-90,
colour jitter, blur, mirroring, text and sticker overlays, borders, other file formats, and
random combinations of them) and a ``truth.parquet`` (``key``, ``photo``, ``split``,
``dup_group`` = the photo, ``is_original``, ``transform``). The photos are split in two: the
``tune`` photos may be used to choose settings (input size, threshold), the ``report`` photos
only to report numbers.
"""

from __future__ import annotations

import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from audit.testbed.transforms import COPY_TRANSFORMS, copy_transform, random_copy_kinds

# (package, file inside the package's data folder, name). Natural photographs and scans only:
# the synthetic test patterns (chessboard, colour wheel, phantom, logo) are left out.
PHOTO_FILES: tuple[tuple[str, str, str], ...] = (
    ("sklearn", "datasets/images/china.jpg", "china"),
    ("sklearn", "datasets/images/flower.jpg", "flower"),
    ("skimage", "data/camera.png", "camera"),
    ("skimage", "data/coins.png", "coins"),
    ("skimage", "data/grass.png", "grass"),
    ("skimage", "data/moon.png", "moon"),
    ("skimage", "data/astronaut.png", "astronaut"),
    ("skimage", "data/chelsea.png", "chelsea"),
    ("skimage", "data/coffee.png", "coffee"),
    ("skimage", "data/hubble_deep_field.jpg", "hubble"),
    ("skimage", "data/ihc.png", "ihc"),
    ("skimage", "data/motorcycle_left.png", "motorcycle"),
    ("skimage", "data/retina.jpg", "retina"),
    ("skimage", "data/rocket.jpg", "rocket"),
    ("skimage", "data/brick.png", "brick"),
    ("skimage", "data/gravel.png", "gravel"),
    ("skimage", "data/cell.png", "cell"),
    ("skimage", "data/clock_motion.png", "clock"),
    ("skimage", "data/page.png", "page"),
    ("skimage", "data/text.png", "text"),
)
TUNE_PHOTOS = ("china", "flower", "camera", "coins", "grass", "moon")
"""Photos settings may be chosen on; the others are for reporting only."""
MAX_SIDE = 512


class PhotosUnavailable(RuntimeError):
    """The packages that ship the photos are not installed."""


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PhotosUnavailable(
            f"the real-photo benchmark reads photos shipped by {package!r}, which is not "
            "installed (pip install scikit-image scikit-learn)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def photo_names(split: str = "all") -> list[str]:
    """Photo names of a split: ``tune``, ``report`` or ``all``."""
    if split not in ("tune", "report", "all"):
        raise ValueError(f"split must be tune, report or all (got {split!r})")
    names = [n for _, _, n in PHOTO_FILES]
    if split == "all":
        return names
    return [n for n in names if (n in TUNE_PHOTOS) == (split == "tune")]


def load_photo(name: str) -> Image.Image:
    """One benchmark photo as an RGB image, longest side at most :data:`MAX_SIDE`."""
    for package, rel, n in PHOTO_FILES:
        if n == name:
            path = _package_dir(package) / rel
            if not path.is_file():
                raise PhotosUnavailable(f"photo {name!r} not found at {path}")
            with Image.open(path) as im:
                im.load()
                img = im.convert("RGB")
            if max(img.size) > MAX_SIDE:
                img.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
            return img
    raise ValueError(f"unknown photo {name!r}; known: {', '.join(photo_names())}")


@dataclass(frozen=True)
class PhotoCopies:
    out: Path
    shards: Path
    truth: Path
    rows: int


def build_photo_copies(
    out: str | Path,
    *,
    seed: int = 0,
    split: str = "all",
    photos: list[str] | None = None,
    combos: int = 4,
    shard_size: int = 100,
) -> PhotoCopies:
    """Write the benchmark under ``out``: ``shards/`` (img2dataset format), ``truth.parquet``
    and ``photos.json``. Each photo appears once as a PNG original, once per single edit of
    :data:`COPY_TRANSFORMS`, and ``combos`` times with 2-3 random edits. Deterministic per
    ``seed``; rows are shuffled so copies do not sit next to their original."""
    from audit.testbed.generate import write_img2dataset_shards

    out = Path(out)
    names = photos if photos is not None else photo_names(split)
    rows: list[dict] = []
    for p_index, name in enumerate(names):
        img = load_photo(name)
        rng = np.random.default_rng([seed, p_index])
        buf = io.BytesIO()
        img.save(buf, "PNG")
        variants = [(buf.getvalue(), "original")]
        for kind in COPY_TRANSFORMS:
            data, _, desc = copy_transform(img, [kind], rng)
            variants.append((data, desc))
        for _ in range(combos):
            kinds = random_copy_kinds(rng, 3)
            while len(kinds) < 2:
                kinds = random_copy_kinds(rng, 3)
            data, _, desc = copy_transform(img, kinds, rng)
            variants.append((data, desc))
        for data, desc in variants:
            rows.append(
                {
                    "photo": name,
                    "split": "tune" if name in TUNE_PHOTOS else "report",
                    "dup_group": p_index,
                    "is_original": desc == "original",
                    "transform": desc,
                    "data": data,
                }
            )
    order = np.random.default_rng([seed, 10_000]).permutation(len(rows))
    rows = [rows[i] for i in order]
    urls = [f"http://photos.invalid/{i:06d}" for i in range(len(rows))]
    captions = [f"a photo: {r['photo']}" for r in rows]
    stats = write_img2dataset_shards(
        out / "shards", urls, captions, [r["data"] for r in rows], shard_size
    )
    from audit.testbed.generate import img2dataset_key

    truth = pa.table(
        {
            "key": [img2dataset_key(i, shard_size) for i in range(len(rows))],
            **{
                c: [r[c] for r in rows]
                for c in ("photo", "split", "dup_group", "is_original", "transform")
            },
        }
    )
    pq.write_table(truth, out / "truth.parquet")
    (out / "photos.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "photos": names,
                "combos": combos,
                "rows": len(rows),
                "tune_photos": [n for n in names if n in TUNE_PHOTOS],
                "shards": len(stats),
            },
            indent=2,
        )
        + "\n"
    )
    return PhotoCopies(out, out / "shards", out / "truth.parquet", len(rows))
