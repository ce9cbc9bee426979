"""The workspace: one folder per audit, with the layout of docs/architecture.md.

Every file is written atomically (temporary file in the same folder, fsync, rename), so a crash
never leaves a half-written part; a part is complete only once its ``.SUCCESS`` marker exists,
and reruns skip complete parts.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from pipelines.common import (  # noqa: F401 - re-exported: the workspace's conventions
    FAILED_STATUSES,
    FINDINGS,
    FIXED_LISTS_KEY,
    STATUSES,
    ModelInfo,
    Status,
    atomic_path,
    atomic_write_bytes,
    embedding_schema,
    jsonable,
    parquet_safe,
    restore_fixed_lists,
    write_json_atomic,
    write_table_atomic,
)

logger = logging.getLogger(__name__)


EMBEDDING_SCHEMA = embedding_schema
_jsonable = jsonable


class InvariantError(RuntimeError):
    """Rows were lost or duplicated by a stage."""


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
        """``embeddings/model.json`` as written (see :meth:`model` for the typed view)."""
        return self.read_json(self.embeddings_dir / "model.json", default={}) or {}

    def model(self) -> ModelInfo:
        """What ``embeddings/model.json`` says, with the older spellings resolved."""
        return ModelInfo.from_dict(self.model_info())

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
