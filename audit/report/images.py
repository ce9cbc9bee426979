"""Image access for the report and the notebooks: training images by sample key, read straight
from the webdataset shards in ``WS/shards``, and generations under ``WS/generations``.

The shard index (key -> tar file, member offset, size) is built once by scanning the tar
headers; image bytes are then read with one seek per image, never by unpacking a shard.
Members whose names are absolute or contain ``..`` are ignored, as are non-image members.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

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
    the damage and is logged; it never stops the report.
    """

    def __init__(self, shards_dir: str | Path) -> None:
        self.shards_dir = Path(shards_dir)
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

    def _build(self) -> dict[str, Member]:
        index: dict[str, Member] = {}
        tars = self.tars()
        self.n_tars = len(tars)
        for tar_path in tars:
            try:
                with tarfile.open(tar_path, "r:") as tf:
                    for info in tf:
                        name = info.name
                        if not info.isfile() or name.startswith("/") or ".." in name.split("/"):
                            continue
                        base = name.rsplit("/", 1)[-1]
                        if "." not in base:
                            continue
                        key, ext = base.split(".", 1)
                        if ext.lower() not in IMAGE_EXTENSIONS or key in index:
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
        """The image bytes stored for ``key``, or ``None`` if the key has no image member."""
        member = self.index.get(key)
        if member is None:
            return None
        with member.tar.open("rb") as fh:
            fh.seek(member.offset)
            data = fh.read(member.size)
        return data if len(data) == member.size else None

    def open_image(self, key: str) -> Image.Image | None:
        """The decoded RGB image for ``key``; ``None`` if missing or undecodable."""
        data = self.read_bytes(key)
        if data is None:
            return None
        return decode_rgb(data, key)


def decode_rgb(data: bytes, what: str = "image") -> Image.Image | None:
    """Decode bytes to an RGB PIL image (first frame); ``None`` (logged) when undecodable."""
    try:
        img = Image.open(io.BytesIO(data))
        img.seek(0)
        img.load()
        return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "no thumbnail"
        logger.debug("cannot decode %s: %s", what, exc)
        return None


def open_path(path: str | Path) -> Image.Image | None:
    """An RGB image from a file (generations); ``None`` if missing or undecodable."""
    p = Path(path)
    if not p.is_file():
        return None
    return decode_rgb(p.read_bytes(), str(p))


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
