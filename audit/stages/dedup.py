"""``laion-audit dedup WS``: exact, near-duplicate and caption duplicate groups.

Reads ``WS/embeddings`` and writes ``WS/findings/duplicates.parquet`` (+ ``duplicates.json``)
with the detectors of :mod:`detectors.dedup`; the near-duplicate part can also run as the Beam
pipeline of :mod:`pipelines.dedup_beam` (``--method beam``, any runner).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from audit.config import ConfigError, require
from audit.copies import SPACES, CopySpace, copy_space
from audit.errors import InputError
from audit.stages import add_beam_arguments, add_workspace_argument
from detectors import dedup as dd

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
is_representative, nearest_key, similarity (one row per sample and kind, for groups of size
>= 2), and WS/findings/duplicates.json (detector, threshold and where it came from, path used,
counts, timings). With --calibrate TRUTH (a parquet with key and dup_group, e.g. a testbed's
truth.parquet), a threshold sweep against the planted groups is logged and stored in the json.
"""

KEEP_POLICIES = ("first", "clip_score", "resolution", "central")
METHODS = ("auto", "exact", "partitioned", "beam")


@dataclass
class Config:
    """Options of ``laion-audit dedup`` (``[dedup]`` in audit.toml)."""

    threshold: float | None = None
    space: str = "auto"
    method: str = "auto"
    max_memory: float = 4.0
    exact_max_n: int = 50_000
    partition_size: int = 1000
    max_probes: int = 2
    probe_scale: float = 0.25
    assign: str = "auto"
    keep: str = "first"
    kinds: list[str] = field(default_factory=lambda: ["exact", "near", "caption"])
    seed: int = 0
    calibrate: str | None = None
    min_precision: float = 0.98
    runner: str | None = None
    dask_local: int | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None:
            require(
                -1.0 < self.threshold < 1.0,
                "dedup.threshold",
                "must be a cosine similarity in (-1, 1)",
                self.threshold,
            )
        require(
            self.space in SPACES, "dedup.space", f"must be one of {', '.join(SPACES)}", self.space
        )
        require(
            self.method in METHODS,
            "dedup.method",
            f"must be one of {', '.join(METHODS)}",
            self.method,
        )
        require(self.max_memory > 0, "dedup.max_memory", "must be > 0 (GB)", self.max_memory)
        require(self.exact_max_n >= 0, "dedup.exact_max_n", "must be >= 0", self.exact_max_n)
        require(
            self.partition_size >= 2, "dedup.partition_size", "must be >= 2", self.partition_size
        )
        require(self.max_probes >= 0, "dedup.max_probes", "must be >= 0", self.max_probes)
        require(
            self.assign in dd.ASSIGN_METHODS,
            "dedup.assign",
            f"must be one of {', '.join(dd.ASSIGN_METHODS)}",
            self.assign,
        )
        require(
            0 < self.probe_scale <= 1, "dedup.probe_scale", "must be in (0, 1]", self.probe_scale
        )
        require(
            self.keep in KEEP_POLICIES,
            "dedup.keep",
            f"must be one of {', '.join(KEEP_POLICIES)}",
            self.keep,
        )
        self.kinds = [k.strip() for k in self.kinds if k and k.strip()]
        bad = [k for k in self.kinds if k not in ("exact", "near", "caption")]
        require(
            not bad and bool(self.kinds),
            "dedup.kinds",
            "must be a non-empty list of exact, near, caption",
            self.kinds,
        )
        require(
            0 < self.min_precision <= 1,
            "dedup.min_precision",
            "must be in (0, 1]",
            self.min_precision,
        )
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="near-duplicate cosine threshold (default 0.5 for the copy "
        "descriptor; in CLIP space calibrated for the model in "
        "embeddings/model.json, 0.95 for real CLIP models)",
    )
    parser.add_argument(
        "--space",
        default=None,
        choices=SPACES,
        help="embedding near-duplicates are found in: copy (copy_emb, SSCD), "
        "clip (image_emb), or auto (copy when the embeddings have it; "
        "default)",
    )
    parser.add_argument(
        "--method",
        default=None,
        choices=METHODS,
        help="near-duplicate search: exact, partitioned, beam, or auto (exact "
        "up to --exact-max-n vectors, else partitioned; default)",
    )
    parser.add_argument(
        "--max-memory",
        dest="max_memory",
        type=float,
        default=None,
        metavar="GB",
        help="memory budget for the exact path's index (default 4)",
    )
    parser.add_argument(
        "--exact-max-n",
        dest="exact_max_n",
        type=int,
        default=None,
        metavar="N",
        help="auto: exact search up to N vectors (default 50000)",
    )
    parser.add_argument(
        "--partition-size",
        dest="partition_size",
        type=int,
        default=None,
        metavar="N",
        help="partitioned path: vectors per partition (default 1000)",
    )
    parser.add_argument(
        "--max-probes",
        dest="max_probes",
        type=int,
        default=None,
        metavar="P",
        help="partitioned path: neighbouring partitions probed per vector, at most (default 2)",
    )
    parser.add_argument(
        "--probe-scale",
        dest="probe_scale",
        type=float,
        default=None,
        metavar="S",
        help="partitioned path: share of the worst-case boundary "
        "distance that triggers a probe, 1 = exact bound "
        "(default 0.25)",
    )
    parser.add_argument(
        "--assign",
        default=None,
        choices=dd.ASSIGN_METHODS,
        help="partitioned path: how rows find their partitions: flat (score "
        "every centroid), hnsw (an HNSW graph over the centroids, for "
        "millions of partitions), auto (default: hnsw above "
        f"{dd.FLAT_ASSIGN_MAX} partitions)",
    )
    parser.add_argument(
        "--keep",
        default=None,
        choices=KEEP_POLICIES,
        help="which member of a group is its representative (default first)",
    )
    parser.add_argument(
        "--kinds",
        default=None,
        metavar="LIST",
        help="comma-separated kinds to find: exact,near,caption (default all)",
    )
    parser.add_argument("--seed", type=int, default=None, help="k-means seed (default 0)")
    parser.add_argument(
        "--calibrate",
        default=None,
        metavar="TRUTH",
        help="parquet with key and dup_group (e.g. a testbed's truth.parquet): "
        "sweep thresholds against it and record the result",
    )
    parser.add_argument(
        "--min-precision",
        dest="min_precision",
        type=float,
        default=None,
        help="--calibrate: required group precision (default 0.98)",
    )
    add_beam_arguments(parser)


# ------------------------------------------------------------------------------ loading


def _vectors(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-size-list column -> (valid mask, float16 matrix with zero rows where null)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        raise InputError(f"image_emb must be a fixed-size list column (got {col.type})")
    dim = col.type.list_size
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    x = np.zeros((len(col), dim), dtype=np.float16)
    if valid.any():
        import pyarrow.compute as pc

        flat = pc.list_flatten(col.filter(pa.array(valid)))
        x[valid] = flat.to_numpy(zero_copy_only=False).astype(np.float16).reshape(-1, dim)
    return valid, x


def load_inputs(ws: Any, column: str = "image_emb") -> dict[str, Any]:
    """The columns dedup needs, sorted by key; ``x`` holds ``column`` (the copy descriptor or
    the CLIP image embedding). Raises InputError naming what is missing."""
    ds = ws.embeddings()
    names = set(ds.schema.names)
    missing = {"key", column} - names
    if missing:
        raise InputError(f"embeddings lack columns {sorted(missing)} (in {ws.embeddings_dir})")
    wanted = [
        c
        for c in (
            "key",
            "sha256",
            "pixel_hash",
            "caption",
            column,
            "width",
            "height",
            "clip_score",
            "status",
        )
        if c in names
    ]
    t = ws.load_embeddings(columns=wanted)
    if t.num_rows == 0:
        raise InputError(f"no rows in {ws.embeddings_dir}")
    t = t.sort_by("key")
    keys = np.asarray(t.column("key").to_pylist(), dtype=object)
    if any(k is None for k in keys):
        raise InputError("embeddings contain rows with a null key")
    if keys.size > 1 and np.any(keys[1:] == keys[:-1]):
        dup = keys[1:][keys[1:] == keys[:-1]][:5].tolist()
        raise InputError(f"embeddings contain duplicated keys, e.g. {dup}")
    valid, x = _vectors(t.column(column))
    out: dict[str, Any] = {"keys": keys, "valid": valid, "x": x, "n": t.num_rows}
    for c in ("sha256", "pixel_hash", "caption", "status"):
        out[c] = t.column(c).to_pylist() if c in names else None
    for c in ("width", "height", "clip_score"):
        out[c] = (
            t.column(c).to_numpy(zero_copy_only=False).astype(np.float64) if c in names else None
        )
    return out


# ------------------------------------------------------------------------------ policy


def priority_for(policy: str, data: dict[str, Any]) -> np.ndarray | None:
    """Per-row preference for the keep-one policy (higher wins; None = smallest key)."""
    if policy == "first":
        return None
    if policy == "clip_score":
        if data["clip_score"] is None:
            raise InputError("--keep clip_score: the embeddings have no clip_score column")
        return data["clip_score"]
    if policy == "resolution":
        if data["width"] is None or data["height"] is None:
            raise InputError("--keep resolution: the embeddings have no width/height columns")
        return data["width"] * data["height"]
    raise ValueError(policy)


def resolve_threshold(
    cfg: Config, ws: Any, space: CopySpace | None = None
) -> tuple[float, str, str | None]:
    """(threshold, where it came from, model name)."""
    from detectors.dedup import DEFAULT_THRESHOLDS, REFERENCE_THRESHOLD

    info = ws.model_info()
    model = info.get("name") or info.get("model")
    if space is not None and space.is_copy:
        if cfg.threshold is not None:
            return float(cfg.threshold), "option", space.model
        return float(space.threshold), space.source, space.model
    if cfg.threshold is not None:
        return float(cfg.threshold), "option", model
    if model in DEFAULT_THRESHOLDS:
        return DEFAULT_THRESHOLDS[model], f"default for model {model}", model
    why = (
        f"model {model!r} has no calibrated default"
        if model
        else "embeddings/model.json names no model"
    )
    logger.warning("%s: using the real-CLIP threshold %.2f", why, REFERENCE_THRESHOLD)
    return REFERENCE_THRESHOLD, f"reference default ({why})", model


# ------------------------------------------------------------------------------ calibration


def truth_labels(truth_path: str | Path, keys: np.ndarray) -> np.ndarray:
    """Planted group per key from a truth parquet (``key``, ``dup_group``); -1 = none."""
    import pyarrow.parquet as pq

    p = Path(truth_path)
    if not p.is_file():
        raise ConfigError(f"dedup.calibrate: file not found (got {str(p)!r})")
    t = pq.read_table(p)
    if not {"key", "dup_group"} <= set(t.column_names):
        raise InputError(f"{p}: needs columns key and dup_group (has {t.column_names})")
    m = dict(zip(t.column("key").to_pylist(), t.column("dup_group").to_pylist()))
    return np.array([-1 if m.get(k) is None else int(m[k]) for k in keys], dtype=np.int64)


def calibrate(
    x: np.ndarray,
    truth: np.ndarray,
    min_precision: float = 0.98,
    thresholds: np.ndarray | None = None,
) -> dict[str, Any]:
    """Sweep near-duplicate thresholds against planted groups (see
    :func:`detectors.dedup.threshold_sweep`) and pick one."""
    from detectors.dedup import choose_threshold, threshold_sweep

    sweep = threshold_sweep(x, truth, thresholds)
    chosen = choose_threshold(sweep, min_precision)
    return {"sweep": sweep, "chosen": chosen, "min_precision": min_precision}


# ------------------------------------------------------------------------------ run


def _near_beam(
    cfg: Config,
    args: argparse.Namespace,
    ws: Any,
    threshold: float,
    priority_column: str | None,
    column: str = "image_emb",
) -> tuple[pa.Table, dict[str, Any]]:
    import pyarrow.parquet as pq

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
            partition_size=cfg.partition_size,
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
        from detectors.dedup import group_table

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


def _kind_table(
    kind: str,
    data: dict[str, Any],
    labels: np.ndarray,
    cfg: Config,
    priority: np.ndarray | None,
    offset: int,
    nearest: tuple[np.ndarray, np.ndarray] | None = None,
) -> pa.Table:
    from detectors.dedup import group_centrality, group_nearest, group_table, pick_representatives

    if cfg.keep == "central":
        priority = group_centrality(data["x"], labels)
        priority[~data["valid"]] = np.nan
    rep = pick_representatives(labels, priority)
    if nearest is None:
        nearest = group_nearest(data["x"], labels, data["valid"])
    return group_table(data["keys"], labels, kind, rep, nearest[0], nearest[1], offset)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.workspace import Workspace
    from detectors.text import normalize_caption

    ws = Workspace(args.workspace)
    t_start = time.perf_counter()
    space = copy_space(ws, cfg.space, "dedup.space")
    data = load_inputs(ws, space.column)
    n = data["n"]
    threshold, source, model = resolve_threshold(cfg, ws, space)
    priority = priority_for(cfg.keep, data)
    timings: dict[str, float] = {"load": round(time.perf_counter() - t_start, 3)}
    tables: list[pa.Table] = []
    counts: dict[str, dict[str, int]] = {}
    meta: dict[str, Any] = {
        "detector": dd.NAME,
        "threshold": threshold,
        "threshold_source": source,
        "model": model,
        "keep": cfg.keep,
        "space": space.to_dict(),
        "kinds": cfg.kinds,
        "n_samples": n,
        "n_with_embedding": int(data["valid"].sum()),
    }
    offset = 0

    def add(kind: str, table: pa.Table) -> None:
        nonlocal offset
        tables.append(table)
        gids = table.column("group_id").to_numpy()
        n_groups = int(np.unique(gids).size)
        counts[kind] = {
            "groups": n_groups,
            "rows": table.num_rows,
            "removable": table.num_rows - n_groups,
        }
        offset = int(gids.max()) + 1 if gids.size else offset

    if "exact" in cfg.kinds:
        t0 = time.perf_counter()
        if data["sha256"] is None:
            logger.warning("embeddings have no sha256 column: no exact duplicates by bytes")
        # only images that decoded: identical empty files or error pages are failures, not
        # duplicates (the row's status says so)
        decoded = data["valid"]
        labs = [
            dd.value_groups([h if ok else None for h, ok in zip(v, decoded)])
            for v in (data["sha256"], data["pixel_hash"])
            if v
        ]
        labels = dd.merge_labels(n, *labs) if labs else np.full(n, -1, np.int64)
        meta["exact_hashes"] = [c for c in ("sha256", "pixel_hash") if data[c] is not None]
        if data["pixel_hash"] is None:
            logger.info("no pixel_hash column: exact duplicates by the sha256 of the bytes only")
        add("exact", _kind_table("exact", data, labels, cfg, priority, offset))
        timings["exact"] = round(time.perf_counter() - t0, 3)

    if "near" in cfg.kinds:
        t0 = time.perf_counter()
        vrows = np.flatnonzero(data["valid"])
        if cfg.method == "beam":
            pcol = {"clip_score": "clip_score"}.get(cfg.keep)
            if cfg.keep == "resolution":
                raise ConfigError(
                    "dedup.keep: 'resolution' is not available with --method "
                    "beam (got 'resolution')"
                )
            table, info = _near_beam(cfg, args, ws, threshold, pcol, space.column)
            gid = table.column("group_id").to_numpy() + offset
            table = table.set_column(
                table.schema.get_field_index("group_id"), "group_id", pa.array(gid, pa.int64())
            )
            add("near", table)
        else:
            xs = data["x"][vrows]
            edges = dd.near_duplicate_edges(
                xs,
                threshold,
                method=cfg.method,
                exact_max_n=cfg.exact_max_n,
                max_memory_gb=cfg.max_memory,
                partition_size=cfg.partition_size,
                max_probes=cfg.max_probes,
                probe_scale=cfg.probe_scale,
                seed=cfg.seed,
                assign=cfg.assign,
                sample_index=dd.hash_sample(
                    data["keys"][vrows].tolist(),
                    dd.partition_sample_size(len(vrows), cfg.partition_size),
                ),
            )
            info = dict(edges.info)
            labels = np.full(n, -1, np.int64)
            labels[vrows] = dd.components(len(vrows), edges)
            labels = dd.relabel_groups(labels)
            nb_v, sim_v = dd.best_partner(len(vrows), edges)
            nbr = np.full(n, -1, np.int64)
            sim = np.full(n, np.nan, np.float32)
            has = nb_v >= 0
            nbr[vrows[has]] = vrows[nb_v[has]]
            sim[vrows] = sim_v
            info["n_edges"] = len(edges)
            add("near", _kind_table("near", data, labels, cfg, priority, offset, (nbr, sim)))
        meta["near"] = info
        timings["near"] = round(time.perf_counter() - t0, 3)
        if cfg.calibrate:
            sweep_at = (
                np.round(np.arange(0.30, 0.951, 0.05), 2) if space.is_copy else None
            )  # copy descriptors spread copies over a wide range
            meta["calibration"] = calibrate(
                data["x"][vrows],
                truth_labels(cfg.calibrate, data["keys"][vrows]),
                cfg.min_precision,
                sweep_at,
            )
            _log_calibration(meta["calibration"])

    if "caption" in cfg.kinds:
        t0 = time.perf_counter()
        if data["caption"] is None:
            logger.warning("embeddings have no caption column: no caption duplicates")
            labels = np.full(n, -1, np.int64)
        else:
            labels = dd.value_groups([normalize_caption(c) for c in data["caption"]])
        add("caption", _kind_table("caption", data, labels, cfg, priority, offset))
        timings["caption"] = round(time.perf_counter() - t0, 3)

    table = (
        pa.concat_tables(tables)
        if tables
        else _kind_table("exact", data, np.full(n, -1, np.int64), cfg, None, 0)
    )
    timings["total"] = round(time.perf_counter() - t_start, 3)
    meta.update(counts=counts, timings=timings)
    ws.write_finding("duplicates", table, meta)
    for kind, c in counts.items():
        logger.info(
            "%s duplicates: %d groups, %d samples (%d removable)",
            kind,
            c["groups"],
            c["rows"],
            c["removable"],
        )
    return 0


def _log_calibration(cal: dict[str, Any]) -> None:
    for r in cal["sweep"]:
        logger.info(
            "threshold %.3f: precision %.4f recall %.4f f1 %.4f (direct pairs: "
            "precision %.4f recall %.4f)",
            r["threshold"],
            r["precision"],
            r["recall"],
            r["f1"],
            r["pair_precision"],
            r["pair_recall"],
        )
    c = cal["chosen"]
    logger.info(
        "calibrated threshold: %.3f (precision %.4f, recall %.4f, f1 %.4f)",
        c["threshold"],
        c["precision"],
        c["recall"],
        c["f1"],
    )
