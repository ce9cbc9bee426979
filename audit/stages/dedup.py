"""``laion-audit dedup WS``: exact, near-duplicate and caption duplicate groups.

Reads ``WS/embeddings`` and writes ``WS/findings/duplicates.parquet`` (+ ``duplicates.json``)
with the detectors of :mod:`detectors.dedup`; the near-duplicate part can also run as the Beam
pipeline of :mod:`pipelines.dedup_beam` (``--method beam``, any runner).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.config import BeamOptions, ConfigError, add_options, add_workspace_argument, option
from audit.copies import SPACES
from detectors.dedup import ASSIGN_METHODS, FLAT_ASSIGN_MAX, KINDS
from detectors.duplicates import KEEP_POLICIES

if TYPE_CHECKING:
    import pyarrow as pa

    from audit.workspace import Workspace

logger = logging.getLogger(__name__)

ACCEPTS_BEAM_OPTIONS = True

HELP = "find exact, near-duplicate and caption duplicates (FAISS, connected components)"
DESCRIPTION = """\
Find duplicate groups among the workspace's samples, three kinds:

  exact    same image bytes (the sha256 recorded at download; also the decoded-pixel hash when
           the embeddings carry a `pixel_hash` column), among images that decoded: failed rows
           (empty files, error pages) are failures, counted by embed, never duplicates
  near     copy-descriptor embeddings (copy_emb, SSCD) with cosine similarity above
           --threshold (default 0.5), grouped by connected components. Workspaces without
           copy_emb (or --space clip) use CLIP image embeddings instead, at the threshold
           calibrated for the model in embeddings/model.json (0.95 for real CLIP models)
  caption  identical captions after normalisation (case, Unicode, punctuation, spaces)

Near-duplicates: exact FAISS search for up to --exact-max-n vectors, else the partitioned path
(spherical k-means partitions trained on a sample, exact search inside each partition plus the
probe vectors of neighbouring partitions; memory bounded by partition size). --method beam runs
the partitioned path as a Beam pipeline (any --runner; extra flags go to Beam). GPU FAISS is
used when present.

Each group keeps one representative (--keep: first = smallest key, clip_score, resolution, or
central = closest to the group's mean embedding); every member gets its nearest other member
and that similarity (image cosine; for exact and caption groups among their members).

Writes WS/findings/duplicates.parquet: key, group_id, group_size, kind, representative_key,
is_representative, nearest_key, similarity, adds_beyond_exact (one row per sample and kind, for
groups of size >= 2; adds_beyond_exact: a near group holding images of two or more exact groups
or ungrouped images, so it removes something the exact groups do not) and
WS/findings/duplicates.json (detector, threshold and where it came from, path used, counts per
kind, unique_removable = the rows removable once groups of every kind that share a row are
merged, each counted once, timings). With --calibrate TRUTH (a parquet with key and dup_group, e.g. a testbed's
truth.parquet), a threshold sweep against the planted groups is logged and stored in the json.
"""

METHODS = ("auto", "exact", "partitioned", "beam")


@dataclass
class Config(BeamOptions):
    """Options of ``laion-audit dedup`` (``[dedup]`` in audit.toml)."""

    threshold: float | None = option(
        None,
        help="near-duplicate cosine threshold",
        gt=-1,
        lt=1,
        metavar="T",
        default_help="0.5 for the copy descriptor; in CLIP space calibrated for the model in "
        "embeddings/model.json, 0.95 for real CLIP models",
    )
    space: str = option(
        "auto",
        help="embedding near-duplicates are found in: copy (copy_emb, SSCD), clip (image_emb), "
        "or auto (copy when the embeddings have it)",
        choices=SPACES,
    )
    method: str = option(
        "auto",
        help="near-duplicate search: exact, partitioned, beam, or auto (exact up to "
        "--exact-max-n vectors, else partitioned)",
        choices=METHODS,
    )
    max_memory: float = option(
        4.0, help="memory budget for the exact path's index", gt=0, metavar="GB"
    )
    exact_max_n: int = option(50_000, help="auto: exact search up to N vectors", ge=0)
    partition_size: int | None = option(
        None,
        help="partitioned and beam paths: vectors per partition",
        ge=2,
        metavar="N",
        default_help="1000 up to 10^6 rows, then about sqrt(rows) (docs/scale.md)",
    )
    max_probes: int = option(
        2,
        help="partitioned path: neighbouring partitions probed per vector, at most",
        ge=0,
        metavar="P",
    )
    probe_scale: float = option(
        0.25,
        help="partitioned path: share of the worst-case boundary distance that triggers a "
        "probe, 1 = exact bound",
        gt=0,
        le=1,
        metavar="S",
    )
    assign: str = option(
        "auto",
        help="partitioned path: how rows find their partitions: flat (score every centroid), "
        "hnsw (an HNSW graph over the centroids, for millions of partitions), auto (hnsw "
        f"above {FLAT_ASSIGN_MAX} partitions)",
        choices=ASSIGN_METHODS,
    )
    keep: str = option(
        "first", help="which member of a group is its representative", choices=KEEP_POLICIES
    )
    kinds: list[str] = option(
        list(KINDS), help="kinds to find", choices=KINDS, nonempty=True, metavar="LIST"
    )
    seed: int = option(0, help="k-means seed")
    calibrate: str | None = option(
        None,
        help="parquet with key and dup_group (e.g. a testbed's truth.parquet): sweep "
        "thresholds against it and record the result",
        metavar="TRUTH",
    )
    min_precision: float = option(0.98, help="--calibrate: required group precision", gt=0, le=1)

    def check(self) -> None:
        if (self.runner or self.dask_local) and self.method not in ("beam", "auto"):
            raise ConfigError(
                f"dedup.method: --runner/--dask-local need --method beam (got {self.method!r})"
            )
        if self.runner or self.dask_local:
            self.method = "beam"
        if self.method == "beam" and self.keep == "central":
            raise ConfigError(
                "dedup.keep: 'central' is not available with --method beam (got 'central')"
            )
        if self.method == "beam" and self.keep == "resolution" and "near" in self.kinds:
            raise ConfigError(
                "dedup.keep: 'resolution' is not available with --method beam (got 'resolution')"
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    add_options(parser, Config)


def _near_beam(
    cfg: Config,
    args: argparse.Namespace,
    ws: Workspace,
    threshold: float,
    priority_column: str | None,
    column: str,
    partition_size: int,
) -> tuple[pa.Table, dict[str, Any]]:
    """Near-duplicate rows by the Beam pipeline (``--method beam``), read back from its
    output shards (which are deleted)."""
    import pyarrow.parquet as pq

    from detectors.dedup import group_table
    from pipelines.beam_options import beam_setup
    from pipelines.dedup_beam import run_near_dedup

    out_dir = ws.root / "tmp" / "dedup_near"
    if out_dir.exists():
        for f in out_dir.glob("*"):
            f.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with beam_setup(
        getattr(args, "beam_args", []) or [], runner=cfg.runner, dask_local=cfg.dask_local
    ) as setup:
        run_near_dedup(
            [str(p) for p in ws.embedding_parts()],
            str(out_dir / "near"),
            threshold,
            priority_column=priority_column,
            setup=setup,
            partition_size=partition_size,
            max_probes=cfg.max_probes,
            probe_scale=cfg.probe_scale,
            seed=cfg.seed,
            assign=cfg.assign,
            vector_column=column,
        )
        runner_name = setup.runner_name
    files = sorted(out_dir.glob("near*.parquet"))
    table = pq.read_table([str(f) for f in files]) if files else None
    if table is None or table.num_rows == 0:
        e = np.zeros(0, np.int64)
        table = group_table(np.zeros(0, object), e, "near", e, e, np.zeros(0, np.float32))
    table = table.sort_by([("group_id", "ascending"), ("key", "ascending")])
    for f in [*files, *out_dir.glob("near-model.npz")]:  # shards + the two-pass model
        f.unlink()
    return table, {
        "method": "beam",
        "runner": runner_name,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.copies import copy_space, near_threshold
    from audit.inputs import load_keyed_rows, truth_groups
    from audit.workspace import Workspace
    from detectors import duplicates as dups
    from detectors.dedup import NAME, auto_partition_size

    ws = Workspace(args.workspace)
    t_start = time.perf_counter()
    space = copy_space(ws, cfg.space, "dedup.space")
    data = load_keyed_rows(ws, space.column)
    threshold, source, model = near_threshold(cfg.threshold, ws.model(), space)
    priority = data.keep_priority(cfg.keep)
    central = cfg.keep == "central"
    timings: dict[str, float] = {"load": round(time.perf_counter() - t_start, 3)}
    meta: dict[str, Any] = {
        "detector": NAME,
        "threshold": threshold,
        "threshold_source": source,
        "model": model,
        "keep": cfg.keep,
        "space": space.to_dict(),
        "kinds": cfg.kinds,
        "n_samples": data.n,
        "n_with_embedding": int(data.valid.sum()),
    }
    tables = []
    if "exact" in cfg.kinds:
        t0 = time.perf_counter()
        if data.sha256 is None:
            logger.warning("embeddings have no sha256 column: no exact duplicates by bytes")
        if data.pixel_hash is None:
            logger.info("no pixel_hash column: exact duplicates by the sha256 of the bytes only")
        # only images that decoded (valid): identical empty files or error pages are failures
        labels = dups.exact_labels(data.n, [data.sha256, data.pixel_hash], data.valid)
        meta["exact_hashes"] = [c for c in ("sha256", "pixel_hash") if getattr(data, c) is not None]
        tables.append(
            dups.kind_table("exact", data.keys, labels, data.x, data.valid, priority, central)
        )
        timings["exact"] = round(time.perf_counter() - t0, 3)
    if "near" in cfg.kinds:
        t0 = time.perf_counter()
        partition_size = cfg.partition_size or auto_partition_size(int(data.valid.sum()))
        meta["partition_size"] = partition_size
        if cfg.method == "beam":
            pcol = {"clip_score": "clip_score"}.get(cfg.keep)
            table, meta["near"] = _near_beam(
                cfg, args, ws, threshold, pcol, space.column, partition_size
            )
        else:
            table, meta["near"] = dups.near_table(
                data.keys, data.x, data.valid, threshold, priority, central,
                method=cfg.method, exact_max_n=cfg.exact_max_n, max_memory_gb=cfg.max_memory,
                partition_size=partition_size, max_probes=cfg.max_probes,
                probe_scale=cfg.probe_scale, seed=cfg.seed, assign=cfg.assign,
            )  # fmt: skip
        tables.append(table)
        timings["near"] = round(time.perf_counter() - t0, 3)
        if cfg.calibrate:
            vrows = np.flatnonzero(data.valid)
            # copy descriptors spread copies over a wide range
            sweep_at = np.round(np.arange(0.30, 0.951, 0.05), 2) if space.is_copy else None
            truth = truth_groups(cfg.calibrate, data.keys[vrows], "dedup.calibrate")
            meta["calibration"] = dups.calibrate(data.x[vrows], truth, cfg.min_precision, sweep_at)
    if "caption" in cfg.kinds:
        t0 = time.perf_counter()
        if data.caption is None:
            logger.warning("embeddings have no caption column: no caption duplicates")
            labels = np.full(data.n, -1, np.int64)
        else:
            labels = dups.caption_labels(data.caption)
        tables.append(
            dups.kind_table("caption", data.keys, labels, data.x, data.valid, priority, central)
        )
        timings["caption"] = round(time.perf_counter() - t0, 3)

    table = dups.combine(tables)
    kinds = [k for k in KINDS if k in cfg.kinds]
    meta.update(dups.summarize(table, kinds))
    timings["total"] = round(time.perf_counter() - t_start, 3)
    meta["timings"] = timings
    ws.write_finding("duplicates", table, meta)
    for kind, c in meta["counts"].items():
        logger.info(
            "%s duplicates: %d groups, %d samples (%d removable)",
            kind,
            c["groups"],
            c["rows"],
            c["removable"],
        )
    logger.info(
        "%d rows removable once each (groups of %s sharing a row merged)",
        meta["unique_removable"],
        ", ".join(kinds),
    )
    return 0
