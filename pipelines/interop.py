"""clip-retrieval's embedding layout, both directions.

clip-retrieval (``clip inference``) writes, per output partition ``N``::

    img_emb/img_emb_N.npy          float16 (rows, D), L2-normalised
    text_emb/text_emb_N.npy        float16 (rows, D), same row order (optional)
    metadata/metadata_N.parquet    one row per embedding: image_path, caption, and the sample's
                                   metadata (url, key, status, width, height, sha256, ...)

A workspace's copy-detection descriptors (``copy_emb``) travel in a folder of their own,
``copy_emb/copy_emb_N.npy`` (float16, same row order as ``img_emb_N``; a zero row where a sample
has no descriptor), which clip-retrieval's tools ignore and import reads back.

``N`` is zero-padded to the number of partitions' digits. LAION's published embeddings use the
same layout, so a workspace can be audited with no image download.

Export writes partition ``N`` = workspace part ``N``. Rows without an image embedding (failed
samples) have no place in that layout; they go to ``failed/failed_N.parquet`` (a folder
clip-retrieval's tools never look at) so that import(export(WS)) is lossless. A row whose
caption was not embedded gets a zero vector in ``text_emb_N.npy`` and ``has_text_emb = false`` in
the metadata (an L2-normalised embedding is never zero).

Import accepts genuine clip-retrieval output: keys come from ``key``, else ``image_path``, else
``NNNNNRRRR``; clip-retrieval's ``success`` status means ``ok``; a missing ``text_emb`` folder
gives null text embeddings; float32 arrays are stored as float16.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.common import fixed_list_array, vectors

logger = logging.getLogger(__name__)

SCALARS = ("key", "url", "caption", "sha256", "width", "height", "status", "error", "clip_score")
_N = re.compile(r"^img_emb_(\d+)\.npy$")


class InteropError(ValueError):
    """The folder is not a usable clip-retrieval layout; the message names the file."""


def _pad(n_max: int) -> int:
    return len(str(max(n_max, 0)))


def export_part(table: pa.Table, index: int, out: Path, pad: int) -> dict[str, int]:
    """Write one workspace part as ``img_emb_N`` / ``text_emb_N`` / ``metadata_N`` (+ failed)."""
    dim = table.schema.field("image_emb").type.list_size
    name = str(index).zfill(pad)
    image = vectors(table.column("image_emb"), dtype=np.float16, dim=dim, name="image_emb")
    text = vectors(table.column("text_emb"), dtype=np.float16, dim=dim, name="text_emb")
    img, has_img = image.matrix, image.valid
    txt, has_txt = text.matrix, text.valid
    embedded = table.filter(pa.array(has_img))
    meta = {c: embedded.column(c) for c in SCALARS}
    meta = {
        "image_path": embedded.column("key"),
        **meta,
        "has_text_emb": pa.array(has_txt[has_img]),
    }
    for sub in ("img_emb", "text_emb", "metadata", "failed"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    np.save(out / "img_emb" / f"img_emb_{name}.npy", img[has_img])
    np.save(out / "text_emb" / f"text_emb_{name}.npy", txt[has_img])
    if "copy_emb" in table.column_names:
        copy = vectors(table.column("copy_emb"), dtype=np.float16, name="copy_emb").matrix
        (out / "copy_emb").mkdir(parents=True, exist_ok=True)
        np.save(out / "copy_emb" / f"copy_emb_{name}.npy", copy[has_img])
    pq.write_table(pa.table(meta), out / "metadata" / f"metadata_{name}.parquet")
    failed = table.filter(pa.array(~has_img))
    if failed.num_rows:
        cols = {c: failed.column(c) for c in SCALARS}
        cols["text_emb"] = failed.column("text_emb").cast(pa.list_(pa.float16()))
        pq.write_table(pa.table(cols), out / "failed" / f"failed_{name}.parquet")
    return {"embedded": embedded.num_rows, "failed": failed.num_rows}


@dataclass
class ImportedPart:
    """One partition read back: its number, the table (embedding schema), where it came from."""

    index: int
    table: pa.Table
    files: dict[str, str]
    converted_float32: bool = False


def find_partitions(folder: Path) -> list[tuple[int, str]]:
    """``(N, suffix)`` of every ``img_emb/img_emb_<suffix>.npy``, sorted by N."""
    emb = folder / "img_emb"
    if not emb.is_dir():
        raise InteropError(
            f"{folder}: no img_emb/ folder (expected clip-retrieval's layout: "
            "img_emb/img_emb_N.npy, text_emb/text_emb_N.npy, "
            "metadata/metadata_N.parquet)"
        )
    found = []
    for p in emb.iterdir():
        m = _N.match(p.name)
        if m:
            found.append((int(m.group(1)), m.group(1)))
    if not found:
        raise InteropError(f"{emb}: no img_emb_N.npy files")
    found.sort()
    dup = [n for n, c in zip(*np.unique([n for n, _ in found], return_counts=True)) if c > 1]
    if dup:
        raise InteropError(f"{emb}: partition numbers appear twice with different padding: {dup}")
    return found


def _load_matrix(path: Path, what: str) -> tuple[np.ndarray, bool]:
    try:
        m = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InteropError(f"{path}: not a readable .npy file: {exc}") from exc
    if m.ndim != 2:
        raise InteropError(f"{path}: {what} must be 2-D (rows, dim), got shape {m.shape}")
    if m.dtype == np.float16:
        return np.asarray(m), False
    if m.dtype in (np.float32, np.float64):
        return np.asarray(m, dtype=np.float16), True
    raise InteropError(f"{path}: {what} has dtype {m.dtype}, expected float16 or float32")


def _col(meta: pa.Table | None, names: tuple[str, ...], n: int, typ: pa.DataType) -> pa.Array:
    if meta is not None:
        for name in names:
            if name in meta.column_names:
                col = meta.column(name).combine_chunks()
                try:
                    return col.cast(typ)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    return (
                        pa.array([None if v is None else str(v) for v in col.to_pylist()], typ)
                        if typ == pa.string()
                        else pa.nulls(n, typ)
                    )
    return pa.nulls(n, typ)


def _statuses(meta: pa.Table | None, n: int) -> list[str]:
    if meta is None or "status" not in meta.column_names:
        return ["ok"] * n
    out = []
    for s in meta.column("status").to_pylist():
        out.append("ok" if s in (None, "success", "ok") else str(s))
    return out


def import_partition(
    folder: Path, index: int, suffix: str, schema: pa.Schema | None = None
) -> ImportedPart:
    """Read partition ``suffix`` of a clip-retrieval folder as an embedding table."""
    img_path = folder / "img_emb" / f"img_emb_{suffix}.npy"
    img, conv = _load_matrix(img_path, "image embeddings")
    n, dim = img.shape
    files = {"img_emb": str(img_path)}
    txt_path = folder / "text_emb" / f"text_emb_{suffix}.npy"
    txt = None
    if txt_path.exists():
        txt, conv_t = _load_matrix(txt_path, "text embeddings")
        conv = conv or conv_t
        if txt.shape != img.shape:
            raise InteropError(
                f"{txt_path}: shape {txt.shape} does not match {img_path} {img.shape}"
            )
        files["text_emb"] = str(txt_path)
    meta_path = folder / "metadata" / f"metadata_{suffix}.parquet"
    meta = None
    if meta_path.exists():
        meta = pq.read_table(meta_path)
        if meta.num_rows != n:
            raise InteropError(f"{meta_path}: {meta.num_rows} rows but {img_path} has {n}")
        files["metadata"] = str(meta_path)
    else:
        logger.warning("%s missing: keys are generated, no url or caption", meta_path)
    width = max(4, len(str(max(n - 1, 0))))
    keys = _col(meta, ("key", "image_path"), n, pa.string()).to_pylist()
    keys = [k if k is not None else f"{index:05d}{i:0{width}d}" for i, k in enumerate(keys)]
    has_txt = np.zeros(n, dtype=bool)
    if txt is not None:
        has_txt = np.abs(txt).sum(axis=1) > 0
        if meta is not None and "has_text_emb" in meta.column_names:
            has_txt &= np.asarray(meta.column("has_text_emb").to_pylist(), dtype=bool)
    if meta is not None and "clip_score" in meta.column_names:
        score = meta.column("clip_score").combine_chunks().cast(pa.float32())
    else:
        dots = (
            (img.astype(np.float32) * (txt.astype(np.float32) if txt is not None else 0)).sum(
                axis=1
            )
            if txt is not None
            else np.zeros(n, np.float32)
        )
        score = pa.array(dots.astype(np.float32), pa.float32(), mask=~has_txt)
    vec = pa.list_(pa.float16(), dim)
    image_emb = fixed_list_array(img)
    text_emb = fixed_list_array(txt if txt is not None else np.zeros((n, dim), np.float16), has_txt)
    cols = {
        "key": pa.array(keys, pa.string()),
        "url": _col(meta, ("url", "URL"), n, pa.string()),
        "caption": _col(meta, ("caption", "TEXT", "text"), n, pa.string()),
        "sha256": _col(meta, ("sha256",), n, pa.string()),
        "width": _col(meta, ("width", "WIDTH"), n, pa.int32()),
        "height": _col(meta, ("height", "HEIGHT"), n, pa.int32()),
        "status": pa.array(_statuses(meta, n), pa.string()),
        "error": _col(meta, ("error", "error_message"), n, pa.string()),
        "image_emb": image_emb.cast(vec),
        "text_emb": text_emb.cast(vec),
        "clip_score": score,
    }
    copy_path = folder / "copy_emb" / f"copy_emb_{suffix}.npy"
    if copy_path.exists():
        copy, conv_c = _load_matrix(copy_path, "copy descriptors")
        conv = conv or conv_c
        if copy.shape[0] != n:
            raise InteropError(f"{copy_path}: {copy.shape[0]} rows but {img_path} has {n}")
        cdim = copy.shape[1]
        has_copy = np.abs(copy).sum(axis=1) > 0
        cols["copy_emb"] = fixed_list_array(copy, has_copy).cast(pa.list_(pa.float16(), cdim))
        files["copy_emb"] = str(copy_path)
    table = pa.table(cols)
    failed_path = folder / "failed" / f"failed_{suffix}.parquet"
    if failed_path.exists():
        f = pq.read_table(failed_path)
        f_cols = {c: f.column(c) for c in SCALARS}
        f_cols["image_emb"] = pa.nulls(f.num_rows, vec)
        if "copy_emb" in cols:
            f_cols["copy_emb"] = pa.nulls(f.num_rows, cols["copy_emb"].type)
        f_cols["text_emb"] = (
            f.column("text_emb").cast(vec)
            if "text_emb" in f.column_names
            else pa.nulls(f.num_rows, vec)
        )
        failed = pa.table({name: f_cols[name] for name in table.column_names}).cast(table.schema)
        table = pa.concat_tables([table, failed])
        files["failed"] = str(failed_path)
    table = table.sort_by("key")
    if schema is not None:
        table = table.cast(schema)
    return ImportedPart(index, table, files, conv)
