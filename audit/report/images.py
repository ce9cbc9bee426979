"""Image access for the report and the notebooks: training images by sample key, read straight
from the webdataset shards in ``WS/shards``, and generations under ``WS/generations``.

The shard index (key -> tar file, member offset, size) is built once by scanning the tar
headers; image bytes are then read with one seek per image, never by unpacking a shard.
Members whose names are absolute or contain ``..`` are ignored, as are non-image members. Keys
follow the embed stage's rules (:mod:`pipelines.readers`): webdataset's key rule, and a key that
several shards use is ``<shard stem>/<key>`` (:func:`pipelines.readers.qualify_keys`).

Every image, training image or generation, is decoded by :func:`pipelines.decode.decode_image`:
the same allow-listed formats and byte and pixel caps as the embed stage (shard bytes are
untrusted; PIL's EPS plugin, for one, would hand the data to Ghostscript). Members larger than
the byte cap are never read.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from pipelines.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DecodeError, decode_image

if TYPE_CHECKING:
    from pipelines.readers import ShardSpec

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


@dataclass(frozen=True)
class Member:
    """Where one sample's image lives: the tar file, the member name, its data offset and size."""

    tar: Path
    name: str
    offset: int
    size: int


class ShardIndex:
    """key -> image member of the webdataset shards under ``shards_dir`` (recursively).

    Built once, on first use. A truncated or unreadable tar contributes the members read before
    the damage and is logged; it never stops the report. Images are decoded with the byte and
    pixel caps ``max_bytes`` and ``max_pixels`` (the embed stage's defaults).
    """

    def __init__(
        self,
        shards_dir: str | Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.shards_dir = Path(shards_dir)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._index: dict[str, Member] | None = None
        self.n_tars = 0
        self.bad_tars: list[str] = []

    @property
    def index(self) -> dict[str, Member]:
        if self._index is None:
            self._index = self._build()
        return self._index

    def tars(self) -> list[Path]:
        if not self.shards_dir.is_dir():
            return []
        return sorted(self.shards_dir.rglob("*.tar"))

    def _qualified(self) -> dict[Path, ShardSpec]:
        """Shards (by resolved tar path) whose keys the embed stage qualifies by shard."""
        from pipelines.readers import match_shards, qualify_keys

        try:
            specs = qualify_keys(match_shards(str(self.shards_dir)))
        except (OSError, ValueError) as exc:
            logger.warning("cannot list the keys of %s: %s", self.shards_dir, exc)
            return {}
        return {Path(s.path).resolve(): s for s in specs if s.qualified and s.path}

    def _build(self) -> dict[str, Member]:
        from pipelines.readers import split_member_name

        index: dict[str, Member] = {}
        tars = self.tars()
        self.n_tars = len(tars)
        qualified = self._qualified() if tars else {}
        for tar_path in tars:
            spec = qualified.get(tar_path.resolve())
            try:
                with tarfile.open(tar_path, "r:") as tf:
                    for info in tf:
                        name = info.name
                        if not info.isfile() or name.startswith("/") or ".." in name.split("/"):
                            continue
                        key, ext = split_member_name(name)
                        if ext not in IMAGE_EXTENSIONS:
                            continue
                        if spec is not None:
                            key = spec.qualify(key)
                        if key in index:
                            continue
                        index[key] = Member(tar_path, name, info.offset_data, info.size)
            except (tarfile.TarError, OSError) as exc:
                self.bad_tars.append(str(tar_path))
                logger.warning(
                    "shard %s is unreadable after %d indexed images: %s", tar_path, len(index), exc
                )
        logger.debug("indexed %d images in %d shards", len(index), len(tars))
        return index

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    @property
    def available(self) -> bool:
        """True when at least one image can be read (workspaces built from imported embeddings
        have no shards)."""
        return bool(self.index)

    def read_bytes(self, key: str) -> bytes | None:
        """The image bytes stored for ``key``; ``None`` if the key has no image member or the
        member is larger than ``max_bytes`` (then nothing is read)."""
        member = self.index.get(key)
        if member is None:
            return None
        if member.size > self.max_bytes:
            logger.debug(
                "%s: member %s too large (%d bytes > max_bytes %d)",
                key,
                member.name,
                member.size,
                self.max_bytes,
            )
            return None
        with member.tar.open("rb") as fh:
            fh.seek(member.offset)
            data = fh.read(member.size)
        return data if len(data) == member.size else None

    def open_image(self, key: str) -> Image.Image | None:
        """The decoded RGB image for ``key``; ``None`` if missing, refused or undecodable."""
        data = self.read_bytes(key)
        if data is None:
            return None
        return decode_rgb(data, key, self.max_pixels, self.max_bytes)


def decode_rgb(
    data: bytes,
    what: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image | None:
    """Decode untrusted bytes to an RGB PIL image (first frame) with
    :func:`pipelines.decode.decode_image`; ``None`` (logged) when refused or undecodable."""
    try:
        return decode_image(data, max_pixels, max_bytes).image
    except DecodeError as exc:
        logger.debug("cannot decode %s: %s", what, exc)
    except Exception as exc:  # noqa: BLE001 - a decoder crash means "no thumbnail" too
        logger.debug("cannot decode %s: %s: %s", what, type(exc).__name__, exc)
    return None


def open_path(
    path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image | None:
    """An RGB image from a file (generations), through the same decoder as the shards;
    ``None`` if missing, larger than ``max_bytes`` or undecodable."""
    p = Path(path)
    if not p.is_file():
        return None
    if p.stat().st_size > max_bytes:
        logger.debug("%s too large (> max_bytes %d)", p, max_bytes)
        return None
    with p.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    return decode_rgb(data, str(p), max_pixels, max_bytes)


def thumb_name(key: str, suffix: str = ".png") -> str:
    """A thumbnail file name for ``key`` that no other key gets: a readable prefix (ASCII
    letters, digits, ``-`` and ``_``; other characters become ``_``; at most 60) plus 16 hex
    digits of the SHA-256 of the exact key, so ``a/b`` and ``a_b`` (or ``A`` and ``a`` on a
    case-insensitive disk) never share a file."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in key)
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{safe[:60]}-{digest}{suffix}"


def thumbnail(img: Image.Image, size: int) -> Image.Image:
    """Fit ``img`` into ``size`` x ``size``; small images are enlarged with nearest-neighbour
    so 64-pixel testbed images stay crisp."""
    img = img.copy()
    w, h = img.size
    scale = size / max(w, h)
    if scale < 1:
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
    elif scale >= 2:
        factor = int(scale)
        img = img.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    return img


def image_grid(
    images: Iterable[Image.Image | None], size: int = 64, cols: int = 8, pad: int = 2
) -> Image.Image:
    """Paste images into a grid (missing ones as grey tiles); for notebooks."""
    imgs = list(images)
    cols = max(1, min(cols, len(imgs) or 1))
    rows = max(1, -(-len(imgs) // cols))
    grid = Image.new("RGB", (cols * (size + pad) + pad, rows * (size + pad) + pad), "white")
    for i, img in enumerate(imgs):
        tile = thumbnail(img, size) if img is not None else Image.new("RGB", (size, size), "#bbb")
        tile = tile.resize((size, size)) if tile.size != (size, size) else tile
        grid.paste(tile, (pad + (i % cols) * (size + pad), pad + (i // cols) * (size + pad)))
    return grid
