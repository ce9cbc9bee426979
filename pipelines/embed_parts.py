"""The embedding parts around the pipeline: where they are written, how a run resumes, and what
they add up to (``laion-audit embed`` calls these; the Beam transforms are in
:mod:`pipelines.embed`).

Parts live in one folder (``WS/embeddings``): ``part-NNNNN.parquet`` plus its ``.SUCCESS``
marker (JSON: finish time, rows, rows per status, the reader's report), written atomically, part
first. On cluster runners the workers write them under ``parts_uri`` (``gs://``, ``s3://``,
``hdfs://`` or a shared mount) and the launcher copies finished ones into the folder. A rerun
skips complete parts; :func:`run_waves` runs the rest in waves of ``shards_per_run`` shards.
This module does not import ``audit``: invariant checks and model records stay with the caller.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.common import (
    FAILED_STATUSES,
    STATUSES,
    Stats,
    atomic_write_uri,
    jsonable,
    parquet_safe,
    restore_fixed_lists,
    success_marker,
)
from pipelines.readers import ShardSpec, source_keys

logger = logging.getLogger(__name__)

EMBEDDINGS_DIR = "embeddings"
"""The parts' folder inside a workspace."""


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def part_path(folder: str | Path, index: int) -> Path:
    return Path(folder) / part_name(index)


def is_done(part: str | Path) -> bool:
    """A part is complete when the file and its ``.SUCCESS`` marker both exist."""
    return Path(part).exists() and success_marker(part).exists()


def read_marker(part: str | Path) -> dict[str, Any]:
    p = success_marker(part)
    return (json.loads(p.read_text()) or {}) if p.exists() else {}


def _join(folder: str, name: str) -> str:
    if "://" not in folder:
        return str(Path(folder) / name)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(folder, name)


def write_part(folder: str | Path, index: int, table: pa.Table, info: dict[str, Any]) -> None:
    """Part ``index`` into ``folder`` (a local path or a ``FileSystems`` URI), atomically, then
    its marker: a reader that sees the marker sees the whole part."""
    buf = io.BytesIO()
    pq.write_table(parquet_safe(table), buf)
    marker = {"finished": time.time(), "rows": table.num_rows, **info}
    text = json.dumps(jsonable(marker), indent=2, sort_keys=True, allow_nan=False) + "\n"
    name = part_name(index)
    atomic_write_uri(_join(str(folder), name), buf.getvalue())
    atomic_write_uri(_join(str(folder), success_marker(name).name), text.encode())


# ---- writers the pipeline calls (picklable) -------------------------------------------------
@dataclass
class WorkspacePartWriter:
    """``writer(index, table, info)`` for the pipeline: the part, then its ``.SUCCESS``.

    ``root`` is the workspace (parts go to ``root/embeddings``), or with ``parts_uri`` a
    location every worker can write (``gs://``, ``s3://``, ``hdfs://``, a shared mount), from
    where :func:`fetch_part` brings finished parts home. ``marker_extra`` goes into each marker.
    """

    root: str
    parts_uri: str | None = None
    marker_extra: dict | None = None

    def __call__(self, index: int, table: pa.Table, info: dict) -> None:
        folder = self.parts_uri or str(Path(self.root) / EMBEDDINGS_DIR)
        write_part(folder, index, table, {**info, **(self.marker_extra or {})})


@dataclass
class CopyMergeWriter:
    """Writer for ``--copy-only``: puts the ``copy_emb`` column of the new rows into the
    existing part (same keys, CLIP columns untouched), atomically, and records the copy model
    in the part's marker."""

    root: str
    copy_sha256: str

    def __call__(self, index: int, table: pa.Table, info: dict) -> None:
        folder = Path(self.root) / EMBEDDINGS_DIR
        part = part_path(folder, index)
        old = restore_fixed_lists(pq.read_table(part))
        new_keys = table.column("key").to_pylist()
        old_keys = old.column("key").to_pylist()
        if sorted(new_keys) != sorted(old_keys):
            raise RuntimeError(
                f"{part}: the shard now yields other keys than the part holds "
                f"({len(new_keys)} vs {len(old_keys)} rows); re-embed with --overwrite"
            )
        pos = {k: i for i, k in enumerate(new_keys)}
        copy = table.column("copy_emb").take(pa.array([pos[k] for k in old_keys]))
        i = old.schema.get_field_index("copy_emb")
        fld = pa.field("copy_emb", table.schema.field("copy_emb").type)
        merged = old.set_column(i, fld, copy) if i >= 0 else old.append_column(fld, copy)
        marker = read_marker(part)
        marker.pop("finished", None)
        marker.pop("rows", None)
        write_part(folder, index, merged, {**marker, "copy_model_sha256": self.copy_sha256})


# ---- parts written elsewhere (cluster runners) -----------------------------------------------
def remote_done(uri: str, index: int) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(_join(uri, success_marker(part_name(index)).name))


def fetch_part(uri: str, folder: str | Path, index: int) -> None:
    """Copy a finished part and its marker from ``uri`` into ``folder`` (atomically)."""
    from apache_beam.io.filesystems import FileSystems

    part = part_path(folder, index)
    for local in (part, success_marker(part)):
        with FileSystems.open(_join(uri, local.name)) as fh:
            atomic_write_uri(str(local), fh.read())


def delete_remote_parts(uri: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    try:
        old = [m.path for m in FileSystems.match([_join(uri, "part-*")])[0].metadata_list]
    except Exception:  # noqa: BLE001 - nothing there
        old = []
    if old:
        FileSystems.delete(old)


# ---- resuming ---------------------------------------------------------------------------------
def clear_parts(folder: str | Path) -> None:
    """Remove every part, marker, ``model.json`` and ``_stats.json`` (``--overwrite``)."""
    d = Path(folder)
    if d.exists():
        for p in [*d.glob("part-*"), d / "model.json", d / "_stats.json"]:
            p.unlink(missing_ok=True)


def clean_temp_files(folder: str | Path) -> int:
    """Remove the temporary files an interrupted run left; returns how many."""
    found = list(Path(folder).glob(".part-*.tmp")) if Path(folder).exists() else []
    for p in found:
        p.unlink(missing_ok=True)
    return len(found)


def redo_unqualified_parts(folder: str | Path, specs: Iterable[ShardSpec]) -> int:
    """Remove the markers of complete parts that hold a key now read as ``<shard>/<key>``
    (written before another shard with that key was added, or by a version that did not
    qualify keys), so that they are embedded again; returns how many."""
    n = 0
    for s in specs:
        part = part_path(folder, s.index)
        if s.qualified and is_done(part):
            keys = pq.read_table(part, columns=["key"]).column("key").to_pylist()
            if not s.qualified.isdisjoint(keys):
                success_marker(part).unlink()
                n += 1
    return n


# ---- running ------------------------------------------------------------------------------------
def format_counts(counts: dict[str, int]) -> str:
    """``"12 ok, 1 failed_to_decode"``: rows per status, known statuses first."""
    keys = [k for k in STATUSES if k in counts] + sorted(k for k in counts if k not in STATUSES)
    return ", ".join(f"{counts[k]:,} {k}" for k in keys) or "no rows"


@dataclass
class Waves:
    """How :func:`run_waves` runs: Beam flags and runner, shards per pipeline run (None: 64 on
    the DirectRunner, all at once elsewhere), and where workers write parts."""

    beam_args: list[str] = field(default_factory=list)
    runner: str | None = None
    dask_local: int | None = None
    shards_per_run: int | None = None
    parts_uri: str | None = None


def run_waves(
    folder: str | Path,
    todo: list[ShardSpec],
    total: int,
    handler: Any,
    writer: Any,
    schema: pa.Schema,
    settings: Any,
    waves: Waves,
    what: str,
    stats: Stats | None = None,
) -> None:
    """Run the embed pipeline over ``todo`` in waves, fetching remote parts after each wave and
    logging its rows per status; ``total`` shards in all (the rest were done before). Seconds
    and rows go to ``stats`` ("pipeline", "fetch"; "rows", "images_embedded")."""
    from pipelines.beam_options import beam_setup
    from pipelines.embed import metric_totals, run_embed

    stats = stats if stats is not None else Stats()
    with beam_setup(waves.beam_args, waves.runner, waves.dask_local) as setup:
        per_run = waves.shards_per_run
        if per_run is None:
            per_run = 64 if setup.is_direct else 0
        groups = (
            [todo]
            if per_run == 0
            else [todo[i : i + per_run] for i in range(0, len(todo), per_run)]
        )
        groups = [g for g in groups if g]
        logger.info(
            "embedding %d shards %s (%s), %d pipeline run(s)",
            len(todo),
            what,
            setup.runner_name,
            len(groups),
        )
        done = total - len(todo)
        for w, wave in enumerate(groups):
            with stats.track("pipeline") as timer:
                result = run_embed(
                    wave,
                    handler,
                    writer,
                    schema,
                    options=setup.options,
                    runner=setup.new_runner(),
                    settings=settings,
                )
            m = metric_totals(result)
            if waves.parts_uri:
                with stats.track("fetch"):
                    for s in wave:
                        fetch_part(waves.parts_uri, folder, s.index)
            done += len(wave)
            counts: Counter[str] = Counter()
            for s in wave:
                counts.update(read_marker(part_path(folder, s.index)).get("counts", {}))
            n_rows = sum(counts.values())
            stats.count("rows", n_rows)
            stats.count("images_embedded", m.get("images_embedded", 0))
            logger.info(
                "run %d/%d: %d parts, %d rows in %.1f s (%.0f rows/s; %d images embedded): %s; "
                "%d/%d parts done",
                w + 1,
                len(groups),
                len(wave),
                n_rows,
                timer.seconds,
                n_rows / max(timer.seconds, 1e-9),
                m.get("images_embedded", 0),
                format_counts(counts),
                done,
                total,
            )


# ---- what the parts add up to -------------------------------------------------------------------
@dataclass
class PartsSummary:
    """``stats`` (``_stats.json``), and the keys the sources list (``expected``) and the parts
    hold (``written``), for the caller's every-row-once check."""

    stats: dict[str, Any]
    expected: list[str]
    written: list[str]


def summarize_parts(folder: str | Path, specs: list[ShardSpec], source: str) -> PartsSummary:
    """Aggregate the part markers into ``_stats.json``'s content, and list the keys the
    sources hold (independently of the pipeline: manifests or file listings) and the keys the
    parts hold."""
    counts: Counter[str] = Counter()
    expected: list[str] = []
    written: list[str] = []
    damaged: dict[str, str] = {}
    rejected = with_image = with_text = with_copy = 0
    for spec in specs:
        part = part_path(folder, spec.index)
        marker = read_marker(part)
        counts.update(marker.get("counts", {}))
        report = marker.get("report", {}) or {}
        rejected += int(report.get("rejected_members", 0) or 0)
        if report.get("damaged"):
            damaged[f"part-{spec.index:05d}"] = report["damaged"]
        names = pq.read_schema(part).names
        cols = ["key", "image_emb", "text_emb"] + (["copy_emb"] if "copy_emb" in names else [])
        tab = pq.read_table(part, columns=cols)
        with_image += tab.num_rows - tab.column("image_emb").null_count
        with_text += tab.num_rows - tab.column("text_emb").null_count
        if "copy_emb" in names:
            with_copy += tab.num_rows - tab.column("copy_emb").null_count
        keys = tab.column("key").to_pylist()
        written.extend(keys)
        listed = source_keys(spec)
        if listed is None:  # a tar without manifest: only reading it tells its keys
            expected.extend(keys)
        else:  # plus samples found in the tar but not listed (recorded by the reader)
            expected.extend(listed + list(marker.get("extra_keys", [])))
    total = sum(counts.values())
    if total != len(written):
        raise RuntimeError(f"embed: part markers count {total} rows but parts hold {len(written)}")
    failed = sum(v for k, v in counts.items() if k in FAILED_STATUSES)
    stats = {
        "source": source,
        "parts": len(specs),
        "rows": total,
        "input_rows": len(expected),
        "counts": dict(sorted(counts.items())),
        "failed": failed,
        "usable": total - failed,
        "with_image_emb": with_image,
        "with_text_emb": with_text,
        "with_copy_emb": with_copy,
        "rejected_tar_members": rejected,
        "damaged_shards": damaged,
    }
    return PartsSummary(stats, expected, written)
