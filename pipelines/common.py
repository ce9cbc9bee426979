"""The vocabulary and file conventions ``audit/`` and ``pipelines/`` share.

Dependency-light (numpy, pyarrow; Beam only inside :func:`atomic_write_uri`), so every layer can
import it: the row statuses, the stage <-> finding names, what ``embeddings/model.json`` says
(:class:`ModelInfo`), the embedding table's schema, one Arrow-column -> matrix conversion
(:func:`vectors`) and one atomic-write convention (temporary file in the same folder, fsync,
rename; ``.SUCCESS`` markers for parts), for local paths and Beam ``FileSystems`` URIs alike.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# ------------------------------------------------------------------------------ statuses


class Status(str, enum.Enum):
    """What happened to a sample. Every input row carries exactly one."""

    OK = "ok"
    FAILED_TO_DOWNLOAD = "failed_to_download"
    FAILED_TO_DECODE = "failed_to_decode"
    HASH_MISMATCH = "hash_mismatch"
    MISSING_CAPTION = "missing_caption"
    FAILED_TO_EMBED = "failed_to_embed"

    def __str__(self) -> str:
        return self.value


STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
"""Known sample statuses. ``hash_mismatch`` and ``missing_caption`` rows may still carry
embeddings (the image decoded); ``failed_*`` rows never do."""

FAILED_STATUSES: tuple[str, ...] = (
    Status.FAILED_TO_DOWNLOAD.value,
    Status.FAILED_TO_DECODE.value,
    Status.HASH_MISMATCH.value,
    Status.FAILED_TO_EMBED.value,
)
"""Statuses whose image is not used (a hash mismatch decodes, but is not the listed image)."""

# ------------------------------------------------------------------------------ findings

STAGE_FINDINGS: dict[str, str] = {
    "dedup": "duplicates",
    "concepts": "concepts",
    "replication": "word_replication",
    "objects": "object_replication",
    "poisons": "poisons",
    "reproduce": "memorization",
}
"""The stage that writes each finding (``findings/<finding>.parquet|json``)."""

FINDINGS: tuple[str, ...] = tuple(STAGE_FINDINGS.values())
FINDING_STAGES: dict[str, str] = {v: k for k, v in STAGE_FINDINGS.items()}

# ------------------------------------------------------------------------------ model.json


@dataclass(frozen=True)
class ModelInfo:
    """What ``embeddings/model.json`` says about the embeddings' models.

    ``name``/``pretrained``: the open_clip model; ``dim``: its embedding size; ``copy_model``:
    the copy descriptor's record (name, dim, input_size, sha256), ``None`` when there is none.
    ``raw`` keeps every other field. Older workspaces spelled the name ``model`` and the size
    ``embed_dim``: both are read.
    """

    name: str | None = None
    pretrained: str | None = None
    dim: int | None = None
    normalized: bool = True
    copy_model: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, info: dict[str, Any] | None) -> ModelInfo:
        info = dict(info or {})
        dim = info.get("dim", info.get("embed_dim"))
        return cls(
            name=info.get("name") or info.get("model"),
            pretrained=info.get("pretrained"),
            dim=int(dim) if dim is not None else None,
            normalized=bool(info.get("normalized", True)),
            copy_model=info.get("copy_model") or None,
            raw=info,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.raw.items() if k not in ("model", "embed_dim")}
        out.update({"name": self.name, "pretrained": self.pretrained, "dim": self.dim})
        out["normalized"] = self.normalized
        if self.copy_model:
            out["copy_model"] = self.copy_model
        return out

    def get(self, key: str, default: Any = None) -> Any:
        """Any other model.json field (``image_size``, ``weights_sha256``, ...)."""
        return self.raw.get(key, default)


# ------------------------------------------------------------------------------ schema


def embedding_schema(dim: int, copy_dim: int | None = None) -> pa.Schema:
    """Schema of ``embeddings/part-NNNNN.parquet`` (L2-normalised float16 fixed-size lists).
    ``copy_dim``: the copy-detection descriptor's size (``copy_emb`` column), None = no copy
    model."""
    vec = pa.list_(pa.float16(), dim)
    copy = [("copy_emb", pa.list_(pa.float16(), copy_dim))] if copy_dim else []
    return pa.schema(
        [
            ("key", pa.string()),
            ("url", pa.string()),
            ("caption", pa.string()),
            ("sha256", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("image_emb", vec),
            ("text_emb", vec),
            ("clip_score", pa.float32()),
            *copy,
        ]
    )


# ------------------------------------------------------------------------------ vectors


class VectorColumnError(ValueError):
    """An embedding column that cannot be a matrix (not a list column, ragged, unexpected
    nulls). The message names the column."""


@dataclass(frozen=True)
class Vectors:
    """An embedding column as a matrix: ``matrix`` (n, d) with zero rows where the column is
    null, ``valid`` (n,) bool. Unpack by name, never by position."""

    matrix: np.ndarray
    valid: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def vectors(
    column: pa.ChunkedArray | pa.Array,
    *,
    dtype: Any = np.float32,
    dim: int | None = None,
    nulls: bool = True,
    name: str = "embedding",
) -> Vectors:
    """A list column (fixed-size, or variable lists of one length as parquet returns fixed-size
    lists with nulls) as :class:`Vectors`. ``nulls=False``: a null row is an error.
    ``dim``: the expected size (needed to shape an all-null or empty variable-list column)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type)):
        raise VectorColumnError(f"{name} must be a list column (got {arr.type})")
    if pa.types.is_fixed_size_list(arr.type):
        if dim is not None and dim != arr.type.list_size:
            raise VectorColumnError(f"{name} has size {arr.type.list_size}, expected {dim}")
        dim = arr.type.list_size
    n = len(arr)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if not nulls and not valid.all():
        raise VectorColumnError(
            f"{name} has {int((~valid).sum())} null rows where embeddings were expected"
        )
    present = arr.filter(pa.array(valid)) if not valid.all() else arr
    flat = np.asarray(pc.list_flatten(present).to_numpy(zero_copy_only=False), dtype=dtype)
    m = int(valid.sum())
    if dim is None:
        if m and flat.size % m:
            raise VectorColumnError(f"{name}: lists of different lengths")
        dim = flat.size // m if m else 0
    if flat.size != m * dim:
        raise VectorColumnError(f"{name}: lists of different lengths (expected {dim} values each)")
    if m == n:
        return Vectors(flat.reshape(n, dim), valid)
    out = np.zeros((n, dim), dtype=dtype)
    out[valid] = flat.reshape(m, dim)
    return Vectors(out, valid)


def fixed_list_array(
    matrix: np.ndarray, valid: np.ndarray | None = None, dtype: Any = np.float16
) -> pa.FixedSizeListArray:
    """The inverse of :func:`vectors`: an (n, d) matrix as a fixed-size list array, null where
    ``valid`` is False."""
    m = np.ascontiguousarray(np.asarray(matrix, dtype=dtype))
    n, d = m.shape
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1)), d, mask=mask)


# ------------------------------------------------------------------------------ atomic files

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
"""Mode of the files we write: what ``open()`` would give (mkstemp alone gives 0600)."""

SUCCESS_SUFFIX = ".SUCCESS"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; fsync it and rename it onto ``path`` if the
    block succeeds (nothing is left behind if it fails). For writers that want a file name
    (``pq.write_table``, ``PIL.Image.save``, tar writers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_uri(uri: str, data: bytes) -> None:
    """Write ``data`` atomically to a local path or a Beam ``FileSystems`` URI (gs://, s3://):
    a temporary name beside it, then a rename (on object stores the rename is a copy + delete,
    so readers never see a partial object)."""
    if "://" not in uri:
        atomic_write_bytes(uri, data)
        return
    import uuid

    from apache_beam.io.filesystems import FileSystems

    tmp = f"{uri}.{uuid.uuid4().hex}.tmp"
    with FileSystems.create(tmp, compression_type="uncompressed") as fh:
        fh.write(data)
    FileSystems.rename([tmp], [uri])


def success_marker(part: str | Path) -> Path:
    """The completion marker of a part: ``part-00001.parquet`` -> ``part-00001.SUCCESS``."""
    p = Path(part)
    return p.with_name(p.name.split(".", 1)[0] + SUCCESS_SUFFIX)


FIXED_LISTS_KEY = b"laion_audit.fixed_size_lists"


def parquet_safe(table: pa.Table) -> pa.Table:
    """Store top-level fixed-size list columns as variable lists, remembering their sizes in
    the schema metadata: pyarrow <= 25 writes null fixed-size lists to parquet but cannot read
    them back (apache/arrow#35692). :func:`restore_fixed_lists` undoes this after reading."""
    sizes = {f.name: f.type.list_size for f in table.schema if pa.types.is_fixed_size_list(f.type)}
    if not sizes:
        return table
    for name in sizes:
        i = table.schema.get_field_index(name)
        fld = table.schema.field(i)
        table = table.set_column(
            i,
            fld.with_type(pa.list_(fld.type.value_type)),
            table.column(i).cast(pa.list_(fld.type.value_type)),
        )
    meta = dict(table.schema.metadata or {})
    meta[FIXED_LISTS_KEY] = json.dumps(sizes).encode()
    return table.replace_schema_metadata(meta)


def restore_fixed_lists(table: pa.Table, sizes: dict[str, int] | None = None) -> pa.Table:
    """Cast list columns written by :func:`parquet_safe` back to fixed-size lists."""
    if sizes is None:
        raw = (table.schema.metadata or {}).get(FIXED_LISTS_KEY)
        sizes = json.loads(raw) if raw else {}
    for name, size in sizes.items():
        i = table.schema.get_field_index(name)
        if i < 0 or not pa.types.is_list(table.schema.field(i).type):
            continue
        fld = table.schema.field(i)
        typ = pa.list_(fld.type.value_type, int(size))
        table = table.set_column(i, fld.with_type(typ), table.column(i).cast(typ))
    return table


def write_table_atomic(path: str | Path, table: pa.Table) -> None:
    """Write a parquet file atomically (fixed-size list columns via :func:`parquet_safe`)."""
    with atomic_path(path) as tmp:
        pq.write_table(parquet_safe(table), tmp)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (sorted keys, indented, non-finite floats as null)."""
    atomic_write_bytes(
        path,
        (json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode(),
    )


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as Python values, paths as strings, NaN/inf as None."""
    import math

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


# ------------------------------------------------------------------------------ stats


@dataclass
class Timer:
    """What :meth:`Stats.track` yields: ``seconds`` is set when the block ends."""

    seconds: float = 0.0


class Stats:
    """Seconds and counts of a stage's steps, for its finding's JSON (the model is datatrove's
    ``track_time``)::

        stats = Stats()
        with stats.track("search") as t:   # t.seconds once the block ends
            ...
        stats.count("pairs", n)
        meta["stats"] = stats.to_dict()    # {"seconds": {"search": 1.234}, "counts": {...}}

    A name tracked or counted again adds up (the waves of one step make one total)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextlib.contextmanager
    def track(self, name: str) -> Iterator[Timer]:
        """Time the block (also when it raises) and add its seconds to ``name``."""
        import time

        timer = Timer()
        t0 = time.perf_counter()
        try:
            yield timer
        finally:
            timer.seconds = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + timer.seconds

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(n)

    def to_dict(self, digits: int = 3) -> dict[str, dict[str, Any]]:
        """``{"seconds": {name: rounded seconds}, "counts": {name: n}}``."""
        return {
            "seconds": {k: round(v, digits) for k, v in self.seconds.items()},
            "counts": dict(self.counts),
        }
