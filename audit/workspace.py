"""The workspace: one folder per audit, with the layout of docs/architecture.md.

Every file is written atomically (temporary file in the same folder, fsync, rename), so a crash
never leaves a half-written part; a part is complete only once its ``.SUCCESS`` marker exists,
and reruns skip complete parts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK

STATUSES = (
    "ok",
    "failed_to_download",
    "failed_to_decode",
    "hash_mismatch",
    "missing_caption",
    "failed_to_embed",
)
"""Known sample statuses. ``hash_mismatch`` and ``missing_caption`` rows may still carry
embeddings (the image decoded); ``failed_*`` rows never do."""

FINDINGS = (
    "duplicates",
    "concepts",
    "word_replication",
    "object_replication",
    "poisons",
    "memorization",
)


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


EMBEDDING_SCHEMA = embedding_schema


class InvariantError(RuntimeError):
    """Rows were lost or duplicated by a stage."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; give the usual umask-based mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    For writers that want a file name (``pq.write_table``, ``PIL.Image.save``, tar writers).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; give the usual umask-based mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
        field = table.schema.field(i)
        table = table.set_column(
            i,
            field.with_type(pa.list_(field.type.value_type)),
            table.column(i).cast(pa.list_(field.type.value_type)),
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
        field = table.schema.field(i)
        typ = pa.list_(field.type.value_type, int(size))
        table = table.set_column(i, field.with_type(typ), table.column(i).cast(typ))
    return table


def write_table_atomic(path: str | Path, table: pa.Table) -> None:
    """Write a parquet file atomically (fixed-size list columns via :func:`parquet_safe`)."""
    with atomic_path(path) as tmp:
        pq.write_table(parquet_safe(table), tmp)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (sorted keys, indented, non-finite floats as null)."""
    atomic_write_bytes(
        path,
        (json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode(),
    )


def _jsonable(obj: Any) -> Any:
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


class Workspace:
    """A workspace folder. Cheap to construct; creates folders lazily on write."""

    def __init__(self, path: str | Path) -> None:
        # absolute, so that paths built from the layout properties (relative to the root) and
        # then passed back to write_json/read_json are not joined onto the root a second time
        self.root = Path(path).absolute()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # ---- layout -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "audit.toml"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def findings_dir(self) -> Path:
        return self.root / "findings"

    @property
    def generations_dir(self) -> Path:
        return self.root / "generations"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def filtered_dir(self) -> Path:
        return self.root / "filtered"

    def part_path(self, index: int, folder: str | Path | None = None) -> Path:
        """``embeddings/part-NNNNN.parquet`` (or the same name under another folder)."""
        base = Path(folder) if folder is not None else self.embeddings_dir
        return base / f"part-{index:05d}.parquet"

    # ---- markers ------------------------------------------------------------------------
    @staticmethod
    def marker_path(part: str | Path) -> Path:
        part = Path(part)
        return part.with_name(part.name.split(".")[0] + ".SUCCESS")

    def is_done(self, part: str | Path) -> bool:
        """A part is complete when both the file and its ``.SUCCESS`` marker exist."""
        return Path(part).exists() and self.marker_path(part).exists()

    def mark_done(self, part: str | Path, info: dict[str, Any] | None = None) -> None:
        write_json_atomic(self.marker_path(part), {"finished": time.time(), **(info or {})})

    def write_part(
        self, part: str | Path, table: pa.Table, info: dict[str, Any] | None = None
    ) -> None:
        """Write one part atomically, then its ``.SUCCESS`` marker."""
        write_table_atomic(part, table)
        self.mark_done(part, {"rows": table.num_rows, **(info or {})})

    # ---- generic writers ----------------------------------------------------------------
    def write_table(self, path: str | Path, table: pa.Table) -> Path:
        p = self._resolve(path)
        write_table_atomic(p, table)
        return p

    def write_json(self, path: str | Path, obj: Any) -> Path:
        p = self._resolve(path)
        write_json_atomic(p, obj)
        return p

    def read_json(self, path: str | Path, default: Any = None) -> Any:
        p = self._resolve(path)
        if not p.exists():
            return default
        return json.loads(p.read_text())

    def _resolve(self, path: str | Path) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    # ---- embeddings ---------------------------------------------------------------------
    def embedding_parts(self) -> list[Path]:
        """Complete embedding parts, in order (parts without a marker are ignored)."""
        if not self.embeddings_dir.exists():
            return []
        return [p for p in sorted(self.embeddings_dir.glob("part-*.parquet")) if self.is_done(p)]

    def has_embeddings(self) -> bool:
        return bool(self.embedding_parts())

    def embeddings(self) -> pds.Dataset:
        """All complete embedding parts as one Arrow dataset."""
        parts = self.embedding_parts()
        if not parts:
            raise FileNotFoundError(
                f"no embeddings in {self.embeddings_dir}: run `laion-audit embed {self.root}` "
                f"or `laion-audit import-embeddings DIR --out {self.root}` first"
            )
        return pds.dataset([str(p) for p in parts], format="parquet")

    def load_embeddings(self, columns: list[str] | None = None, only_ok: bool = False) -> pa.Table:
        """Read embeddings as one table. ``only_ok`` keeps rows that carry an image embedding."""
        ds = self.embeddings()
        flt = pds.field("image_emb").is_valid() if only_ok else None
        return restore_fixed_lists(ds.to_table(columns=columns, filter=flt), _fixed_sizes(ds))

    def model_info(self) -> dict[str, Any]:
        return self.read_json(self.embeddings_dir / "model.json", default={}) or {}

    # ---- findings -----------------------------------------------------------------------
    def finding_path(self, name: str) -> Path:
        return self.findings_dir / f"{name}.parquet"

    def has_finding(self, name: str) -> bool:
        return self.finding_path(name).exists()

    def write_finding(self, name: str, table: pa.Table, meta: dict[str, Any] | None = None) -> Path:
        """Write ``findings/<name>.parquet`` and ``findings/<name>.json`` (metadata) atomically.

        The parquet is written first; the JSON (with row count) marks the finding complete.
        """
        path = self.finding_path(name)
        write_table_atomic(path, table)
        info = {"name": name, "rows": table.num_rows, "written": time.time(), **(meta or {})}
        write_json_atomic(path.with_suffix(".json"), info)
        logger.info("wrote %s (%d rows)", path, table.num_rows)
        return path

    def read_finding(self, name: str) -> pa.Table:
        path = self.finding_path(name)
        if not path.exists():
            raise FileNotFoundError(f"no finding '{name}' in {self.findings_dir}: run that stage")
        return restore_fixed_lists(pq.read_table(path))

    def finding_meta(self, name: str) -> dict[str, Any]:
        return self.read_json(self.finding_path(name).with_suffix(".json"), default={}) or {}

    # ---- run metadata -------------------------------------------------------------------
    def record_stage(self, stage: str, info: dict[str, Any]) -> None:
        """Append a stage's timing/config record to ``run.json`` (read by the report)."""
        data = self.read_json("run.json", default={"stages": {}}) or {"stages": {}}
        data.setdefault("stages", {})[stage] = {"finished": time.time(), **info}
        self.write_json("run.json", data)


def _fixed_sizes(ds: pds.Dataset) -> dict[str, int]:
    raw = (ds.schema.metadata or {}).get(FIXED_LISTS_KEY)
    return json.loads(raw) if raw else {}


def status_counts(statuses: Iterable[str]) -> dict[str, int]:
    return dict(Counter(statuses))


def check_invariant(
    input_keys: Iterable[str], output_keys: Iterable[str], stage: str = "stage"
) -> dict[str, int]:
    """Every input key appears exactly once in the output, ok or failed.

    Returns ``{"input": n, "output": m}``; raises ``InvariantError`` naming up to five missing,
    unexpected or duplicated keys.
    """
    inp = list(input_keys)
    out = list(output_keys)
    in_set = set(inp)
    counts = Counter(out)
    dup = sorted(k for k, c in counts.items() if c > 1)
    missing = sorted(in_set - counts.keys())
    extra = sorted(counts.keys() - in_set)
    if len(in_set) != len(inp):
        in_dup = sorted(k for k, c in Counter(inp).items() if c > 1)
        raise InvariantError(f"{stage}: input keys are not unique, e.g. {in_dup[:5]}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} input keys missing from the output, e.g. {missing[:5]}")
    if dup:
        problems.append(f"{len(dup)} keys written more than once, e.g. {dup[:5]}")
    if extra:
        problems.append(f"{len(extra)} output keys not in the input, e.g. {extra[:5]}")
    if problems:
        raise InvariantError(f"{stage}: " + "; ".join(problems))
    return {"input": len(inp), "output": len(out)}
