"""Collect the numbers of an audit workspace into one JSON-able dict (``WS/report/report.json``).

The schema is documented in ``docs/report_schema.md``. Every section has a ``status``:
``"ok"`` (its finding exists and was read), ``"not_run"`` (the stage that writes it has not run),
or ``"error"`` (the finding exists but cannot be read or lacks required columns; ``error`` says
why). Sections never fail the whole report. Lists that could grow with the dataset (groups,
clusters, poison candidates, concept rows) are capped by the ``limits`` and the caps are recorded
in ``limits`` so a reader knows a list is truncated (``*_total`` fields keep the full counts).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import platform
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from audit import __version__
from audit.report.mitigations import mitigations_section
from audit.workspace import Workspace, _jsonable

logger = logging.getLogger(__name__)

SCHEMA = "laion-audit-report/1"

_HEX = re.compile(r"\b[0-9a-fA-F]{16,}\b")
"""Hashes in error messages (grouped as one message in ``top_errors``)."""

_VERSIONED = re.compile(r"_v\d+(_[a-z]+)?$")
"""Score columns of the poisons finding are named with their detector's version
(``alignment_gmm_v1``, ``lof_v1_z``); other numeric columns are bookkeeping."""

SECTIONS = (
    "dataset",
    "duplicates",
    "concepts",
    "word_replication",
    "object_replication",
    "poisons",
    "memorization",
    "mitigations",
    "run",
)
"""Section keys of report.json, in page order."""

STAGE_OF = {
    "dataset": "download / embed / import-embeddings",
    "duplicates": "dedup",
    "concepts": "concepts",
    "word_replication": "replication",
    "object_replication": "objects",
    "poisons": "poisons",
    "memorization": "reproduce",
    "mitigations": "erase / attack / reproduce",
}
"""The stage (CLI subcommand) that writes each section's input, for "stage not run" notes."""

REQUIRED = {
    "duplicates": [
        "key",
        "group_id",
        "group_size",
        "kind",
        "representative_key",
        "is_representative",
    ],
    "concepts": [
        "concept",
        "word_count",
        "word_freq",
        "semantic_count",
        "semantic_freq",
        "sparse",
        "n_total",
    ],
    "word_replication": [
        "finding_id",
        "keyword",
        "cluster_rank",
        "size",
        "share",
        "mean_sim",
        "flagged",
    ],
    "object_replication": [
        "finding_id",
        "keyword",
        "object",
        "n_images",
        "image_rate",
        "ci_low",
        "ci_high",
        "flagged",
    ],
    "poisons": ["key", "combined_score", "rank", "flagged", "kind", "reasons"],
    "memorization": [
        "finding_id",
        "prompt_kind",
        "prompt",
        "n",
        "replication_rate",
        "ci_low",
        "ci_high",
    ],
}

POISON_BASE_COLUMNS = {
    "key",
    "concept",
    "combined_score",
    "rank",
    "flagged",
    "kind",
    "reasons",
    "caption",
    "url",
    "target",
    "target_concept",
}

VERSION_PACKAGES = (
    "numpy",
    "pyarrow",
    "pandas",
    "scikit-learn",
    "faiss-cpu",
    "faiss-gpu",
    "torch",
    "torchvision",
    "open_clip_torch",
    "diffusers",
    "transformers",
    "apache-beam",
    "img2dataset",
    "webdataset",
    "matplotlib",
    "pillow",
)


@dataclass
class Limits:
    """Caps on list lengths in report.json (the HTML shows the same items)."""

    groups: int = 8  # largest duplicate groups per kind
    group_members: int = 10  # member keys listed per duplicate group
    clusters: int = 8  # clusters per keyword
    cluster_members: int = 12  # member keys per cluster
    concepts: int = 300  # concept rows (sparsest first)
    object_examples: int = 12  # example keys per object finding
    poisons: int = 24  # top-ranked poison candidates
    prompts: int = 60  # memorization rows (highest replication first)
    generations: int = 6  # generation/nearest-training pairs per prompt
    histograms: int = 20  # prompts shown with a similarity histogram and pairs
    captions: int = 3  # example captions per cluster


class SectionError(Exception):
    """A finding is present but unusable (missing columns, unreadable)."""


# ---------------------------------------------------------------------------------------------
# helpers


def _f(x: Any) -> float | None:
    """A finite float or None."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _i(x: Any) -> int | None:
    v = _f(x)
    return None if v is None else int(v)


def _list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, float) and math.isnan(x):
        return []
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _str(x: Any) -> str | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return str(x)


def _bool(x: Any) -> bool:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return False
    return bool(x)


def _not_run(name: str) -> dict[str, Any]:
    return {"status": "not_run", "stage": STAGE_OF.get(name)}


def _read_finding(ws: Workspace, name: str) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The finding as a DataFrame plus its metadata; None when absent; SectionError if broken."""
    if not ws.has_finding(name):
        return None
    try:
        table = ws.read_finding(name)
    except (OSError, pa.ArrowException) as exc:
        raise SectionError(f"cannot read {ws.finding_path(name)}: {exc}") from exc
    missing = [c for c in REQUIRED.get(name, []) if c not in table.column_names]
    if missing:
        raise SectionError(
            f"{ws.finding_path(name).name} lacks columns {missing} (has {table.column_names})"
        )
    return table.to_pandas(), _meta(ws.finding_meta(name))


def _meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Finding metadata without bulky entries (anything that is a long list)."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, list) and len(v) > 50:
            continue
        out[k] = v
    return out


def _histogram(
    values: Iterable[float], bins: int = 20, lo: float | None = None, hi: float | None = None
) -> dict[str, list]:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"edges": [], "counts": []}
    lo = float(arr.min()) if lo is None else lo
    hi = float(arr.max()) if hi is None else hi
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges = np.histogram(arr, bins=bins, range=(lo, hi))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.astype(int).tolist()}


def _quantiles(values: np.ndarray) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": None, "p05": None, "p50": None, "p95": None}
    return {
        "mean": float(arr.mean()),
        "p05": float(np.percentile(arr, 5)),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
    }


# ---------------------------------------------------------------------------------------------
# sections


def _shard_parquets(ws: Workspace) -> list[Path]:
    if not ws.shards_dir.is_dir():
        return []
    return sorted(p for p in ws.shards_dir.rglob("*.parquet") if not p.name.startswith("."))


def dataset_section(ws: Workspace) -> dict[str, Any]:
    """Counts by status, hash mismatches, top error messages, the embedding model, shards."""
    shard_tars = sorted(ws.shards_dir.rglob("*.tar")) if ws.shards_dir.is_dir() else []
    shard_pq = _shard_parquets(ws)
    out: dict[str, Any] = {
        "status": "ok",
        "shards": {
            "tar_files": len(shard_tars),
            "parquet_files": len(shard_pq),
            "images_available": bool(shard_tars),
        },
        "model": ws.model_info() or None,
    }
    if ws.has_embeddings():
        table = ws.load_embeddings(columns=["key", "status", "error", "clip_score", "caption"])
        out["source"] = "embeddings"
    elif shard_pq:
        table = _shards_as_status_table(shard_pq)
        out["source"] = "shards"
    else:
        return _not_run("dataset")
    status = table.column("status").to_pylist()
    counts: dict[str, int] = {}
    for s in status:
        counts[s or "unknown"] = counts.get(s or "unknown", 0) + 1
    n = table.num_rows
    out.update(
        {
            "n_samples": n,
            "n_ok": counts.get("ok", 0),
            "n_failed": n - counts.get("ok", 0),
            "status_counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "hash_mismatches": counts.get("hash_mismatch", 0),
        }
    )
    errs: dict[str, int] = {}
    for s, e in zip(status, table.column("error").to_pylist()):
        if s != "ok" and e:
            msg = _HEX.sub("…", str(e).strip().splitlines()[0])[:160]
            errs[msg] = errs.get(msg, 0) + 1
    out["top_errors"] = [
        {"error": k, "count": v} for k, v in sorted(errs.items(), key=lambda kv: -kv[1])[:10]
    ]
    if "clip_score" in table.column_names:
        cs = table.column("clip_score").to_numpy(zero_copy_only=False)
        out["clip_score"] = _quantiles(np.asarray(cs, dtype=np.float64))
    if "caption" in table.column_names:
        caps = table.column("caption")
        out["unique_captions"] = int(pc.count_distinct(caps).as_py())
    stats = ws.read_json(ws.embeddings_dir / "_stats.json", default=None)
    if stats:
        out["embed_stats"] = stats
    filtered = ws.read_json(ws.filtered_dir / "summary.json", default=None)
    if filtered:
        out["filtered"] = filtered
    return out


def _shards_as_status_table(paths: list[Path]) -> pa.Table:
    """img2dataset shard parquets as (key, status, error); "success" becomes "ok"."""
    keys, status, error = [], [], []
    for p in paths:
        t = pq.read_table(p)
        cols = t.column_names
        if "key" not in cols or "status" not in cols:
            continue
        keys += t.column("key").to_pylist()
        status += ["ok" if s == "success" else s for s in t.column("status").to_pylist()]
        err_col = (
            "error_message" if "error_message" in cols else "error" if "error" in cols else None
        )
        error += t.column(err_col).to_pylist() if err_col else [None] * t.num_rows
    return pa.table({"key": keys, "status": status, "error": error})


def duplicates_section(ws: Workspace, limits: Limits) -> dict[str, Any]:
    """Per kind: groups, samples in groups, redundant samples, group-size histogram, largest
    groups with their member keys (representative first)."""
    got = _read_finding(ws, "duplicates")
    if got is None:
        return _not_run("duplicates")
    df, meta = got
    by_kind: dict[str, Any] = {}
    largest: list[dict[str, Any]] = []
    for kind, sub in df.groupby("kind", sort=True):
        groups = sub.groupby("group_id")
        sizes = groups["key"].nunique()
        hist = sizes.value_counts().sort_index()
        by_kind[str(kind)] = {
            "groups": int(len(sizes)),
            "samples": int(sizes.sum()),
            "redundant": int(sizes.sum() - len(sizes)),
            "largest_group": int(sizes.max()) if len(sizes) else 0,
            "size_histogram": {str(int(k)): int(v) for k, v in hist.items()},
        }
        for gid in sizes.sort_values(ascending=False, kind="stable").index[: limits.groups]:
            g = groups.get_group(gid)
            rep = g.loc[g["is_representative"].astype(bool), "key"]
            rep_key = str(rep.iloc[0]) if len(rep) else str(g["representative_key"].iloc[0])
            members = [rep_key] + sorted(k for k in g["key"].astype(str).unique() if k != rep_key)
            sims = g["similarity"] if "similarity" in g else pd.Series(dtype=float)
            largest.append(
                {
                    "kind": str(kind),
                    "group_id": int(gid),
                    "size": int(sizes[gid]),
                    "representative_key": rep_key,
                    "keys": members[: limits.group_members],
                    "min_similarity": _f(sims.min()) if len(sims.dropna()) else None,
                }
            )
    largest.sort(key=lambda g: (-g["size"], g["kind"], g["group_id"]))
    n_keys = int(df["key"].nunique())
    return {
        "status": "ok",
        "meta": meta,
        "by_kind": by_kind,
        "samples_in_any_group": n_keys,
        "largest_groups": largest,
    }


def concepts_section(ws: Workspace, limits: Limits) -> dict[str, Any]:
    """Word vs semantic frequency per concept, sparsest first."""
    got = _read_finding(ws, "concepts")
    if got is None:
        return _not_run("concepts")
    df, meta = got
    df = df.sort_values(["semantic_freq", "word_freq", "concept"], kind="stable")
    rows = []
    for r in df.itertuples(index=False):
        wf, sf = _f(r.word_freq), _f(r.semantic_freq)
        rows.append(
            {
                "concept": str(r.concept),
                "word_count": _i(r.word_count),
                "word_freq": wf,
                "semantic_count": _i(r.semantic_count),
                "semantic_freq": sf,
                "semantic_threshold": _f(getattr(r, "semantic_threshold", None)),
                "ratio": (sf / wf) if wf and sf is not None else None,
                "sparse": _bool(r.sparse),
                "n_total": _i(r.n_total),
            }
        )
    n_sparse = sum(r["sparse"] for r in rows)
    return {
        "status": "ok",
        "meta": meta,
        "n_concepts": len(rows),
        "n_sparse": n_sparse,
        "sparse_share": n_sparse / len(rows) if rows else None,
        "rows_total": len(rows),
        "rows": rows[: limits.concepts],
    }


def word_replication_section(ws: Workspace, limits: Limits) -> dict[str, Any]:
    """Per keyword, its clusters by size with top words, lifts, captions and member keys."""
    got = _read_finding(ws, "word_replication")
    if got is None:
        return _not_run("word_replication")
    df, meta = got
    keywords = []
    for kw, sub in df.groupby("keyword", sort=True):
        sub = sub.sort_values("cluster_rank", kind="stable")
        clusters = []
        for r in sub.to_dict("records"):
            members = [str(k) for k in _list(r.get("member_keys"))]
            reps = [str(k) for k in _list(r.get("representative_keys"))]
            medoid = _str(r.get("medoid_key"))
            shown = list(dict.fromkeys(([medoid] if medoid else []) + reps + members))
            clusters.append(
                {
                    "finding_id": str(r["finding_id"]),
                    "cluster_rank": _i(r["cluster_rank"]),
                    "size": _i(r["size"]),
                    "share": _f(r["share"]),
                    "mean_sim": _f(r["mean_sim"]),
                    "min_sim": _f(r.get("min_sim")),
                    "medoid_key": medoid,
                    "top_words": [str(w) for w in _list(r.get("top_words"))][:10],
                    "top_word_lift": [_f(v) for v in _list(r.get("top_word_lift"))][:10],
                    "prompt_words": _str(r.get("prompt_words")),
                    "example_captions": [str(c) for c in _list(r.get("example_captions"))][
                        : limits.captions
                    ],
                    "words_only_share": _f(r.get("words_only_share")),
                    "flagged": _bool(r["flagged"]),
                    "n_members": len(members) or _i(r["size"]),
                    "keys": shown[: limits.cluster_members],
                }
            )
        total = int(sub["size"].sum())
        keywords.append(
            {
                "keyword": str(kw),
                "n_clusters": len(clusters),
                "n_flagged": sum(c["flagged"] for c in clusters),
                "clustered_images": total,
                "cluster_sizes": [c["size"] for c in clusters],
                "clusters": clusters[: limits.clusters],
            }
        )
    keywords.sort(key=lambda k: (-k["n_flagged"], k["keyword"]))
    return {
        "status": "ok",
        "meta": meta,
        "n_keywords": len(keywords),
        "n_clusters": int(len(df)),
        "n_flagged": int(df["flagged"].astype(bool).sum()),
        "discovery_multiple_testing": (meta.get("discovery") or {}).get("multiple_testing"),
        "keywords": keywords,
    }


def object_replication_section(ws: Workspace, limits: Limits) -> dict[str, Any]:
    """Object rates inside each keyword's images with Wilson intervals and example keys."""
    got = _read_finding(ws, "object_replication")
    if got is None:
        return _not_run("object_replication")
    df, meta = got
    df = df.sort_values(["flagged", "image_rate"], ascending=[False, False], kind="stable")
    rows = []
    for r in df.to_dict("records"):
        rows.append(
            {
                "finding_id": str(r["finding_id"]),
                "keyword": str(r["keyword"]),
                "object": str(r["object"]),
                "n_images": _i(r["n_images"]),
                "image_rate": _f(r["image_rate"]),
                "ci_low": _f(r["ci_low"]),
                "ci_high": _f(r["ci_high"]),
                "caption_rate": _f(r.get("caption_rate")),
                "gap": _f(r.get("gap")),
                "outside_rate": _f(r.get("outside_rate")),
                "threshold": _f(r.get("threshold")),
                "p_value": _f(r.get("p_value")),
                "q_value": _f(r.get("q_value")),
                "flagged": _bool(r["flagged"]),
                "example_keys": [str(k) for k in _list(r.get("example_keys"))][
                    : limits.object_examples
                ],
            }
        )
    return {
        "status": "ok",
        "meta": meta,
        "n_findings": len(rows),
        "n_flagged": sum(r["flagged"] for r in rows),
        "multiple_testing": meta.get("multiple_testing"),
        "rows": rows,
    }


def poisons_section(ws: Workspace, limits: Limits) -> dict[str, Any]:
    """The top-ranked poison candidates with every detector score and the reason."""
    got = _read_finding(ws, "poisons")
    if got is None:
        return _not_run("poisons")
    df, meta = got
    score_cols = [
        c
        for c in df.columns
        if c not in POISON_BASE_COLUMNS
        and pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
        and _VERSIONED.search(c)
    ]
    df = df.sort_values(["rank", "key"], kind="stable")
    flagged = df["flagged"].astype(bool)
    # the expected-rate review list: a quota, not evidence; never counted as candidates
    review = (
        df["review"].fillna(False).astype(bool)
        if "review" in df.columns
        else pd.Series(False, index=df.index)
    )
    kinds = df.loc[flagged, "kind"].astype(str).value_counts()

    def row(r: dict[str, Any]) -> dict[str, Any]:
        return {
            "key": str(r["key"]),
            "rank": _i(r["rank"]),
            "concept": _str(r.get("concept")),
            "combined_score": _f(r["combined_score"]),
            "flagged": _bool(r["flagged"]),
            "review": _bool(r.get("review")) or False,
            "kind": str(r["kind"]),
            "reasons": _str(r["reasons"]) or "",
            "scores": {c: _f(r[c]) for c in score_cols},
            "caption": _str(r.get("caption")),
        }

    top = [row(r) for r in df.head(limits.poisons).to_dict("records")]
    review_only = [row(r) for r in df[review & ~flagged].head(limits.poisons).to_dict("records")]
    cs = df["combined_score"].astype(float)
    finite = cs[np.isfinite(cs)]
    lo = float(finite.min()) if len(finite) else 0.0
    hi = float(finite.max()) if len(finite) else 1.0
    return {
        "status": "ok",
        "meta": meta,
        "n_scored": int(len(df)),
        "n_flagged": int(flagged.sum()),
        "n_review": int(review.sum()),
        "n_review_not_flagged": int((review & ~flagged).sum()),
        "review_rule": (meta.get("parameters") or {}).get("review_rule"),
        "review": review_only,
        "n_infinite_scores": int(np.isinf(cs).sum()),
        "flagged_by_kind": {str(k): int(v) for k, v in kinds.items()},
        "score_columns": score_cols,
        "coverage": meta.get("coverage"),
        "combined_histogram": {
            "all": _histogram(finite, 30, lo, hi),
            "flagged": _histogram(cs[flagged & np.isfinite(cs)], 30, lo, hi),
        },
        "top": top,
    }


def generation_table(ws: Workspace) -> pd.DataFrame | None:
    """Per-generation scores written by the reproduce stage, if any (see docs/report_schema.md
    for the columns read: prompt id, seed, image path, similarity, nearest training key)."""
    gdir = ws.generations_dir
    if not gdir.is_dir():
        return None
    if (gdir / "scores.parquet").is_file():  # the reproduce stage's table of every generation
        files = [gdir / "scores.parquet"]
    else:
        files = sorted(p for p in gdir.rglob("*.parquet") if not p.name.startswith("."))
    frames = []
    for p in files:
        try:
            t = pq.read_table(p)
        except (OSError, pa.ArrowException) as exc:
            logger.warning("skipping unreadable generations file %s: %s", p, exc)
            continue
        cols = set(t.column_names)
        if not ({"seed"} <= cols and (cols & {"similarity", "best_sim", "sim", "max_sim"})):
            continue
        keep = [
            f.name
            for f in t.schema
            if not (
                pa.types.is_fixed_size_list(f.type)
                or pa.types.is_list(f.type)
                or pa.types.is_binary(f.type)
            )
        ]
        df = t.select(keep).to_pandas()
        df["_file"] = str(p)
        frames.append(df)
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    rename = {}
    for want, options in {
        "similarity": ("similarity", "best_sim", "sim", "max_sim"),
        "nearest_key": ("nearest_key", "best_key", "nearest_train_key", "match_key"),
        "path": ("path", "image_path", "file", "relpath"),
        "prompt_id": ("prompt_id", "prompt_key", "prompt_hash"),
    }.items():
        for o in options:
            if o in df.columns and want not in df.columns:
                rename[o] = want
                break
    df = df.rename(columns=rename)
    if {"prompt_id", "seed"} <= set(df.columns):  # the same generation listed in two tables
        df = df.drop_duplicates(subset=["prompt_id", "seed"], keep="last")
    return df


def _gen_path(ws: Workspace, row: dict[str, Any]) -> str | None:
    p = _str(row.get("path"))
    if not p:
        return None
    path = Path(p)
    if not path.is_absolute():
        for base in (ws.generations_dir, Path(row.get("_file", "")).parent, ws.root):
            if (base / path).is_file():
                path = base / path
                break
    if not path.is_file():
        return None
    try:
        return str(path.resolve().relative_to(ws.root.resolve()))
    except ValueError:
        return str(path.resolve())


def memorization_section(ws: Workspace, limits: Limits) -> dict[str, Any]:
    """Per prompt: replication rate with its interval, similarity summary and histogram, and
    generation / nearest-training-image pairs (the most similar generations first)."""
    got = _read_finding(ws, "memorization")
    if got is None:
        return _not_run("memorization")
    df, meta = got
    replicating, min_share = replicating_prompts(df, meta)
    df = df.assign(_replicates=replicating)
    gens = generation_table(ws)
    threshold = _f(meta.get("copy_threshold", meta.get("threshold")))
    if threshold is None and gens is not None and "threshold" in gens.columns:
        threshold = (
            _f(gens["threshold"].dropna().iloc[0]) if gens["threshold"].notna().any() else None
        )
    df = df.sort_values(
        ["replication_rate", "finding_id", "prompt_kind"],
        ascending=[False, True, True],
        kind="stable",
        na_position="last",
    )
    rows = []
    for r in df.head(limits.prompts).to_dict("records"):
        row = {
            "finding_id": str(r["finding_id"]),
            "prompt_kind": str(r["prompt_kind"]),
            "prompt": str(r["prompt"]),
            "n": _i(r["n"]),
            "replication_rate": _f(r["replication_rate"]),
            "ci_low": _f(r["ci_low"]),
            "ci_high": _f(r["ci_high"]),
            "mean_sim": _f(r.get("mean_sim")),
            "p95_sim": _f(r.get("p95_sim")),
            "max_sim": _f(r.get("max_sim")),
            "object_rate": _f(r.get("object_rate")),
            "triage_score": _f(r.get("triage_score")),
            "verbatim_rate": _f(r.get("verbatim_rate")),
            "n_copies": _i(r.get("n_copies")),
            "replicates": bool(r["_replicates"]),
            "generated": _bool(r.get("generated", True)) and (_i(r["n"]) or 0) > 0,
            "prompt_id": _str(r.get("prompt_id")),
            "similarity_histogram": None,
            "pairs": [],
        }
        if gens is not None:
            sel = _match_generations(gens, r)
            if sel is not None and len(sel):
                row["similarity_histogram"] = _histogram(
                    sel["similarity"].astype(float),
                    20,
                    -0.2 if sel["similarity"].min() < 0 else 0.0,
                    1.0,
                )
                best = sel.sort_values(["similarity", "seed"], ascending=[False, True])
                for g in best.head(limits.generations).to_dict("records"):
                    row["pairs"].append(
                        {
                            "seed": _i(g.get("seed")),
                            "similarity": _f(g.get("similarity")),
                            "generation": _gen_path(ws, g),
                            "nearest_key": _str(g.get("nearest_key")),
                            "copy": _bool(
                                g.get(
                                    "is_copy",
                                    g.get(
                                        "copy",
                                        (
                                            threshold is not None
                                            and _f(g.get("similarity")) is not None
                                            and _f(g.get("similarity")) >= threshold
                                        ),
                                    ),
                                )
                            ),
                            "verbatim": _bool(g.get("is_verbatim")) if "is_verbatim" in g else None,
                        }
                    )
        rows.append(row)
    n_findings = int(df["finding_id"].nunique())
    generated = df["n"].fillna(0).astype(int) > 0
    if "generated" in df.columns:
        generated &= df["generated"].fillna(True).astype(bool)
    return {
        "status": "ok",
        "meta": meta,
        "copy_threshold": threshold,
        "copy_space": (meta.get("space") or {}).get("column", "image_emb"),
        "copy_model": (meta.get("space") or {}).get("model"),
        "n_prompts": int(len(df)),
        "n_findings": n_findings,
        "n_generated": int(generated.sum()),
        "n_replicating": int(replicating.sum()),
        "min_copy_share": min_share,
        "replication_rule": (
            f"Wilson 95% lower bound of the copy rate >= {min_share:g}, over all prompts"
        ),
        "generations_available": gens is not None,
        "rows": rows,
    }


def replicating_prompts(df: pd.DataFrame, meta: dict[str, Any]) -> tuple[np.ndarray, float]:
    """Which prompts of the memorization finding replicate, by the one definition
    (:func:`detectors.memorization.replicates`) with the run's ``min_copy_share`` (its
    ``--min-copy-share``, recorded under ``triage`` in the finding's metadata; else the
    default), over every prompt of the finding. Returns the mask and the share used."""
    from detectors import memorization as mem

    share = _f((meta.get("triage") or {}).get("min_copy_share"))
    share = mem.DEFAULT_MIN_COPY_SHARE if share is None else share
    n = pd.to_numeric(df["n"], errors="coerce").fillna(0).to_numpy(dtype=np.float64)
    if "n_copies" in df.columns:
        k = pd.to_numeric(df["n_copies"], errors="coerce").to_numpy(dtype=np.float64)
    else:  # older findings: the count from the rate
        k = np.round(pd.to_numeric(df["replication_rate"], errors="coerce").to_numpy() * n)
    if "generated" in df.columns:
        n = np.where(df["generated"].fillna(True).astype(bool).to_numpy(), n, 0.0)
    return np.asarray(mem.replicates(k, n, share), dtype=bool), float(share)


def _match_generations(gens: pd.DataFrame, row: dict[str, Any]) -> pd.DataFrame | None:
    """The generations of one memorization row: by prompt id if both carry one, else by
    (finding_id, prompt_kind, prompt), else by prompt text."""
    if "prompt_id" in gens.columns and row.get("prompt_id") is not None:
        return gens[gens["prompt_id"].astype(str) == str(row["prompt_id"])]
    mask = pd.Series(True, index=gens.index)
    used = False
    for col in ("finding_id", "prompt_kind", "prompt"):
        if col in gens.columns:
            mask &= gens[col].astype(str) == str(row[col])
            used = True
    return gens[mask] if used else None


def _versions() -> dict[str, str]:
    out = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "laion-audit": __version__,
    }
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def run_section(ws: Workspace) -> dict[str, Any]:
    """Versions, per-stage config and timings (``run.json``), detector metadata, audit.toml."""
    run = ws.read_json("run.json", default={}) or {}
    stages = run.get("stages", {}) or {}
    ordered = sorted(stages.items(), key=lambda kv: kv[1].get("finished", 0))
    detectors = {}
    if ws.findings_dir.is_dir():
        for p in sorted(ws.findings_dir.glob("*.json")):
            m = ws.read_json(p, default={}) or {}
            detectors[p.stem] = {
                k: m.get(k)
                for k in (
                    "detector",
                    "detectors",
                    "version",
                    "seconds",
                    "timings",
                    "rows",
                    "written",
                )
                if k in m
            }
    toml_text = ws.config_path.read_text() if ws.config_path.is_file() else None
    return {
        "status": "ok",
        "versions": _versions(),
        "stages": [
            {
                "stage": k,
                "seconds": _f(v.get("seconds")),
                "finished": _f(v.get("finished")),
                "version": v.get("version"),
                "config": v.get("config", {}),
            }
            for k, v in ordered
        ],
        "total_seconds": sum(_f(v.get("seconds")) or 0.0 for _, v in ordered),
        "findings": detectors,
        "audit_toml": toml_text,
    }


def _captions_for(ws: Workspace, keys: set[str]) -> dict[str, str]:
    if not keys or not ws.has_embeddings():
        return {}
    t = ws.embeddings().to_table(
        columns=["key", "caption"], filter=pc.field("key").isin(pa.array(sorted(keys)))
    )
    return {
        k: c
        for k, c in zip(t.column("key").to_pylist(), t.column("caption").to_pylist())
        if c is not None
    }


def referenced_keys(report: dict[str, Any]) -> set[str]:
    """Every sample key the report shows a thumbnail for."""
    keys: set[str] = set()
    d = report.get("duplicates", {})
    for g in d.get("largest_groups", []) or []:
        keys.update(g["keys"])
    for kw in report.get("word_replication", {}).get("keywords", []) or []:
        for c in kw["clusters"]:
            keys.update(c["keys"])
    for r in report.get("object_replication", {}).get("rows", []) or []:
        keys.update(r["example_keys"])
    for section in ("top", "review"):
        for r in report.get("poisons", {}).get(section, []) or []:
            keys.add(r["key"])
    for r in report.get("memorization", {}).get("rows", []) or []:
        keys.update(p["nearest_key"] for p in r["pairs"] if p.get("nearest_key"))
    return keys


def build_report(ws: Workspace | str | Path, limits: Limits | None = None) -> dict[str, Any]:
    """Collect every section of the report for ``ws`` (a dict matching report_schema.md)."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    if not ws.root.is_dir():
        raise FileNotFoundError(f"workspace {ws.root} does not exist")
    limits = limits or Limits()
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workspace": str(ws.root.resolve()),
        "limits": asdict(limits),
    }
    builders = {
        "dataset": lambda: dataset_section(ws),
        "duplicates": lambda: duplicates_section(ws, limits),
        "concepts": lambda: concepts_section(ws, limits),
        "word_replication": lambda: word_replication_section(ws, limits),
        "object_replication": lambda: object_replication_section(ws, limits),
        "poisons": lambda: poisons_section(ws, limits),
        "memorization": lambda: memorization_section(ws, limits),
        "mitigations": lambda: mitigations_section(ws, limits),
        "run": lambda: run_section(ws),
    }
    for name, fn in builders.items():
        try:
            report[name] = fn()
        except SectionError as exc:
            logger.warning("report section %s: %s", name, exc)
            report[name] = {"status": "error", "error": str(exc), "stage": STAGE_OF.get(name)}
        except Exception as exc:  # noqa: BLE001 - one unusable finding must not lose the report
            logger.warning("report section %s failed: %s: %s", name, type(exc).__name__, exc)
            logger.debug("traceback", exc_info=True)
            report[name] = {
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "stage": STAGE_OF.get(name),
            }
    keys = referenced_keys(report)
    report["captions"] = _captions_for(ws, keys)
    for r in (report["poisons"].get("top", []) or []) + (report["poisons"].get("review") or []):
        if not r.get("caption"):
            r["caption"] = report["captions"].get(r["key"])
    report["build_seconds"] = round(time.perf_counter() - t0, 3)
    return _jsonable(report)
