"""Memorization scoring: does a generation copy a training cluster?

Pure numpy/pandas. The caller supplies embeddings and pixels; nothing here reads files or loads
models.

* Semantic copy (template copies included): a generation's best cosine similarity (CLIP image
  space) over *every* member of the finding's training cluster (Webster 2023: a template copy
  matches the cluster, not one image), compared with a copy threshold.
* Copy threshold, calibrated without labels, in two parts. (1) The pair threshold: the
  ``1 - alpha`` quantile of the cosine similarity of *unrelated* training pairs (random pairs of
  training images that are neither in the same duplicate group nor in the same replication
  cluster); with the default ``alpha = 1e-3`` an unrelated training image is called a copy of a
  given training image one time in a thousand. (2) Because a generation is scored by its best
  match over a whole reference set, each reference set (a finding's cluster, or the whole
  training set for prompts without a cluster) gets the larger of the pair threshold and the
  ``1 - alpha`` quantile of the same best-match statistic for training images unrelated to that
  set (:func:`max_unrelated_similarity`): a big or diverse reference set needs a higher bar.
* Verbatim verification (Carlini et al. 2023): tiled l2 — split both images into 16 tiles (4 x 4),
  take the root-mean-square pixel difference (pixels in [0, 1]) per tile and the maximum over
  tiles; a pair is verbatim when that distance is below a threshold calibrated the same way (the
  ``alpha`` quantile of the tiled l2 distance of unrelated training pairs).
* Per prompt: replication rate with a Wilson 95% interval, mean / p95 / max of the best
  similarity, object rate.
* Triage quality: AUROC and TPR at a fixed FPR of a per-prompt score against replication labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from detectors.stats import normalize_rows, wilson_interval

NAME = "memorization_v1"
TRIAGE_NAME = "triage_textcond_norm_v1"

DEFAULT_ALPHA = 1e-3
DEFAULT_TILES = 16
DEFAULT_MIN_COPY_SHARE = 0.02
"""The one definition of "this prompt replicates" (:func:`replicates`): the Wilson 95% lower
bound of its copy rate is at least this share (2%, Carlini et al.'s 10 of 500 generations).
Used alike by the report's card and ``report.json`` (over all prompts) and by the triage
labels of ``reproduce`` (``--min-copy-share``)."""


def best_match(
    queries: np.ndarray, references: np.ndarray, block: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Best cosine similarity of each query row over all reference rows, and its index.

    Rows are L2-normalised here (float32). ``references`` is processed in blocks of ``block``
    rows so memory stays ``O(len(queries) * block)``. An empty reference set gives similarity
    ``-inf`` and index ``-1`` for every query.
    """
    q = normalize_rows(np.atleast_2d(queries))
    r = normalize_rows(np.atleast_2d(references)) if len(references) else np.zeros((0, q.shape[1]))
    if r.shape[0] and r.shape[1] != q.shape[1]:
        raise ValueError(f"dimension mismatch: queries have {q.shape[1]}, references {r.shape[1]}")
    best = np.full(q.shape[0], -np.inf, dtype=np.float32)
    idx = np.full(q.shape[0], -1, dtype=np.int64)
    for start in range(0, r.shape[0], block):
        sims = q @ r[start : start + block].T
        j = sims.argmax(axis=1)
        s = sims[np.arange(len(j)), j]
        better = s > best
        best[better] = s[better]
        idx[better] = j[better] + start
    return best, idx


def _as_unit_pixels(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def tiled_l2(a: np.ndarray, b: np.ndarray, tiles: int = DEFAULT_TILES) -> np.ndarray:
    """Carlini et al.'s tiled l2 distance between image pairs.

    ``a`` and ``b``: arrays of shape (N, H, W[, C]) with the same shape, uint8 (scaled to [0, 1])
    or float in [0, 1]. ``tiles`` must be a perfect square (16 -> a 4 x 4 grid). Returns, per pair,
    the maximum over tiles of the root-mean-square pixel difference within the tile (0 =
    identical, 1 = opposite extremes). The maximum makes one unlike region enough to reject a
    "copy" that only shares its background.
    """
    x, y = _as_unit_pixels(a), _as_unit_pixels(b)
    if x.shape != y.shape:
        raise ValueError(f"tiled_l2 needs equal shapes, got {x.shape} and {y.shape}")
    if x.ndim == 3:
        x, y = x[..., None], y[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected (N, H, W[, C]) arrays, got shape {x.shape}")
    g = math.isqrt(tiles)
    if g * g != tiles or g < 1:
        raise ValueError(f"tiles must be a perfect square, got {tiles}")
    n, h, w, _ = x.shape
    if h < g or w < g:
        raise ValueError(f"images of {h}x{w} pixels are too small for {g}x{g} tiles")
    rows = np.linspace(0, h, g + 1).round().astype(int)
    cols = np.linspace(0, w, g + 1).round().astype(int)
    sq = (x - y) ** 2
    out = np.zeros(n, dtype=np.float32)
    for i in range(g):
        for j in range(g):
            tile = sq[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1], :]
            rms = np.sqrt(tile.reshape(n, -1).mean(axis=1))
            out = np.maximum(out, rms)
    return out


def _related(labels: Sequence[np.ndarray], i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Pairs (i, j) that share a non-negative label in any of the label arrays."""
    rel = np.zeros(len(i), dtype=bool)
    for lab in labels:
        lab = np.asarray(lab)
        li, lj = lab[i], lab[j]
        rel |= (li == lj) & (li >= 0)
    return rel


def sample_unrelated_pairs(
    n: int, labels: Sequence[np.ndarray] = (), max_items: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) among up to ``max_items`` random rows of ``n``, dropping related pairs.

    ``labels``: integer arrays of length ``n`` (e.g. duplicate group id, replication cluster id;
    -1 = no group). Two rows are related when they share a label >= 0; such pairs are dropped
    because they are copies by construction, not the "unrelated" population the threshold is
    calibrated on. Returns two index arrays into the original ``n`` rows.
    """
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=min(n, max_items), replace=False))
    ii, jj = np.triu_indices(len(pick), k=1)
    i, j = pick[ii], pick[jj]
    keep = ~_related(labels, i, j) if len(labels) else np.ones(len(i), dtype=bool)
    return i[keep], j[keep]


def unrelated_pair_similarities(
    embeddings: np.ndarray, labels: Sequence[np.ndarray] = (), max_items: int = 2000, seed: int = 0
) -> np.ndarray:
    """Cosine similarities of unrelated training pairs (see :func:`sample_unrelated_pairs`).

    With ``max_items = 2000`` this is up to ~2M pairs from one 2000 x 2000 matrix product.
    """
    emb = normalize_rows(embeddings)
    if emb.shape[0] < 2:
        raise ValueError("need at least 2 training embeddings to calibrate the copy threshold")
    i, j = sample_unrelated_pairs(emb.shape[0], labels, max_items, seed)
    if len(i) == 0:
        raise ValueError("no unrelated training pairs: every sampled pair shares a group")
    return np.einsum("ij,ij->i", emb[i], emb[j]).astype(np.float32)


def calibrate_copy_threshold(
    unrelated_sims: np.ndarray, alpha: float = DEFAULT_ALPHA, min_pairs: int = 100
) -> float:
    """The ``1 - alpha`` quantile of unrelated-pair cosine similarities.

    Raises ``ValueError`` with fewer than ``min_pairs`` pairs (too few for a tail quantile).
    """
    s = np.asarray(unrelated_sims, dtype=np.float64)
    s = s[np.isfinite(s)]
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if len(s) < min_pairs:
        raise ValueError(f"only {len(s)} unrelated pairs; need >= {min_pairs} to calibrate")
    return float(np.quantile(s, 1.0 - alpha))


def max_unrelated_similarity(
    queries: np.ndarray,
    references: np.ndarray,
    query_labels: Sequence[np.ndarray] = (),
    reference_labels: Sequence[np.ndarray] = (),
    query_ids: np.ndarray | None = None,
    reference_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Per query, the best cosine over the references it is *unrelated* to.

    A (query, reference) pair is related when the two share a label >= 0 in any of the paired
    label arrays (duplicate group, replication cluster) or the same id (the same sample). Such
    pairs are skipped; a query with no unrelated reference gets ``-inf``. This is the null
    distribution of the statistic a generation is scored with (a maximum over a reference set),
    for images that are not copies of it.
    """
    q = normalize_rows(np.atleast_2d(queries))
    r = normalize_rows(np.atleast_2d(references)) if len(references) else np.zeros((0, q.shape[1]))
    sims = q @ r.T
    related = np.zeros(sims.shape, dtype=bool)
    for ql, rl in zip(query_labels, reference_labels):
        ql, rl = np.asarray(ql), np.asarray(rl)
        related |= (ql[:, None] == rl[None, :]) & (ql[:, None] >= 0)
    if query_ids is not None and reference_ids is not None:
        related |= np.asarray(query_ids)[:, None] == np.asarray(reference_ids)[None, :]
    sims = np.where(related, -np.inf, sims)
    return sims.max(axis=1) if sims.shape[1] else np.full(len(q), -np.inf, np.float32)


def calibrate_reference_threshold(
    null_max: np.ndarray, pair_threshold: float, alpha: float = DEFAULT_ALPHA
) -> float:
    """Copy threshold for one reference set (a cluster, or the whole training set).

    ``null_max``: for training images unrelated to the reference set, their best cosine over it
    (:func:`max_unrelated_similarity`). The threshold is the larger of ``pair_threshold`` and the
    ``1 - alpha`` quantile of ``null_max``: a generation is scored by its *best* match over many
    references, so an unrelated image must not pass merely because the set is large. With a few
    hundred queries this quantile is close to their maximum.
    """
    m = np.asarray(null_max, dtype=np.float64)
    m = m[np.isfinite(m)]
    if not len(m):
        return float(pair_threshold)
    return float(max(pair_threshold, np.quantile(m, 1.0 - alpha)))


def calibrate_tiled_l2_threshold(
    unrelated_distances: np.ndarray, alpha: float = DEFAULT_ALPHA, min_pairs: int = 100
) -> float:
    """The ``alpha`` quantile of unrelated-pair tiled l2 distances (copies must be closer)."""
    d = np.asarray(unrelated_distances, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if len(d) < min_pairs:
        raise ValueError(f"only {len(d)} unrelated pairs; need >= {min_pairs} to calibrate")
    return float(np.quantile(d, alpha))


def summarize_generations(
    gens: pd.DataFrame, by: Sequence[str] = ("prompt_id",), z: float = 1.959963984540054
) -> pd.DataFrame:
    """Per-prompt summary of scored generations.

    ``gens`` has one row per generation with columns ``similarity`` (best cosine over the
    cluster), ``is_copy`` (bool) and optionally ``is_verbatim`` (bool or null when unchecked) and
    ``object_present`` (bool or null for findings without an object). Rows with a non-finite
    similarity (a generation whose embedding failed) are counted in ``n_failed`` and left out of
    the rates. Returns one row per group with ``n, n_copies, replication_rate, ci_low, ci_high,
    mean_sim, p95_sim, max_sim, n_verbatim, verbatim_rate, n_object, object_rate, object_ci_low,
    object_ci_high, n_failed``.
    """
    by = list(by)
    rows = []
    for key, g in gens.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        sim = g["similarity"].to_numpy(dtype=np.float64)
        ok = np.isfinite(sim)
        s = sim[ok]
        n = int(ok.sum())
        copies = int(g["is_copy"].to_numpy(dtype=bool)[ok].sum())
        lo, hi = wilson_interval(copies, n, z)
        row = dict(zip(by, key))
        row.update(
            n=n,
            n_copies=copies,
            replication_rate=copies / n if n else float("nan"),
            ci_low=float(lo),
            ci_high=float(hi),
            mean_sim=float(s.mean()) if n else float("nan"),
            p95_sim=float(np.quantile(s, 0.95)) if n else float("nan"),
            max_sim=float(s.max()) if n else float("nan"),
            n_failed=int((~ok).sum()),
        )
        verb = g.get("is_verbatim")
        if verb is not None and verb[ok].notna().any():
            v = verb[ok].dropna().astype(bool)
            row["n_verbatim"] = int(v.sum())
            row["verbatim_rate"] = float(v.mean())
        else:
            row["n_verbatim"], row["verbatim_rate"] = None, float("nan")
        obj = g.get("object_present")
        if obj is not None and obj[ok].notna().any():
            o = obj[ok].dropna().astype(bool)
            k = int(o.sum())
            olo, ohi = wilson_interval(k, len(o), z)
            row.update(
                n_object=k,
                object_rate=k / len(o),
                object_ci_low=float(olo),
                object_ci_high=float(ohi),
            )
        else:
            row.update(
                n_object=None,
                object_rate=float("nan"),
                object_ci_low=float("nan"),
                object_ci_high=float("nan"),
            )
        rows.append(row)
    cols = by + [
        "n",
        "n_copies",
        "replication_rate",
        "ci_low",
        "ci_high",
        "mean_sim",
        "p95_sim",
        "max_sim",
        "n_failed",
        "n_verbatim",
        "verbatim_rate",
        "n_object",
        "object_rate",
        "object_ci_low",
        "object_ci_high",
    ]
    return pd.DataFrame(rows, columns=cols)


def replicates(
    n_copies: np.ndarray | int,
    n: np.ndarray | int,
    min_share: float = DEFAULT_MIN_COPY_SHARE,
    z: float = 1.959963984540054,
) -> np.ndarray:
    """Does each prompt replicate? ``wilson_low(n_copies, n) >= min_share``.

    The copy rate's Wilson 95% lower bound, not the count: a prompt with no copy never
    replicates, and neither does one whose copies could be the copy threshold's false
    positives (at ``alpha = 1e-3`` a prompt of 500 unrelated generations has a ~39% chance of
    at least one false copy; 1 of 500 has a lower bound of 0.0004, 50 of 500 of 0.077).
    ``min_share = 0`` counts any prompt with a copy. NaN counts and ``n = 0`` never replicate.
    """
    k = np.nan_to_num(np.asarray(n_copies, dtype=np.float64), nan=0.0)
    n_arr = np.nan_to_num(np.asarray(n, dtype=np.float64), nan=0.0)
    lo, _ = wilson_interval(k, n_arr, z)
    return np.asarray((n_arr > 0) & (k > 0) & (np.asarray(lo) >= min_share - 1e-12))


def replication_labels(
    n_copies: np.ndarray, n: np.ndarray, min_share: float = DEFAULT_MIN_COPY_SHARE
) -> np.ndarray:
    """Binary "this prompt replicates" labels for the triage's AUROC: :func:`replicates`."""
    return replicates(n_copies, n, min_share)


def triage_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of a per-prompt triage score against binary replication labels (NaN if one class)."""
    from detectors.stats import auroc

    return auroc(labels, scores)


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float = 0.01) -> float:
    """True-positive rate at the largest threshold whose false-positive rate is <= ``fpr``."""
    from sklearn.metrics import roc_curve

    y = np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    f, t, _ = roc_curve(y, np.asarray(scores, dtype=np.float64))
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


def select_top(
    scores: np.ndarray,
    k: int | None,
    groups: Sequence[Any] | None = None,
    per_group: int = 0,
) -> np.ndarray:
    """Boolean mask of the ``k`` highest scores (ties broken by position; all when ``k`` is
    None or >= len). NaN scores rank last.

    With ``groups`` (one label per score, e.g. the finding of each prompt) and ``per_group``
    M > 0, each group's M highest scores are selected as well, so a budget of ``k`` cannot be
    spent on the prompt variants of one finding while another finding is never generated."""
    s = np.asarray(scores, dtype=np.float64)
    mask = np.zeros(len(s), dtype=bool)
    if k is None or k >= len(s):
        mask[:] = True
        return mask
    order = np.argsort(np.where(np.isfinite(s), -s, np.inf), kind="stable")
    mask[order[: max(k, 0)]] = True
    if groups is not None and per_group > 0:
        if len(groups) != len(s):
            raise ValueError(f"groups has {len(groups)} labels for {len(s)} scores")
        taken: dict[Any, int] = {}
        for i in order:
            g = groups[i]
            if taken.get(g, 0) < per_group:
                mask[i] = True
                taken[g] = taken.get(g, 0) + 1
    return mask


# ---- per-prompt tables ----------------------------------------------------------------------
def prompt_thresholds(
    prompts: pd.DataFrame, refs: dict[str, tuple[str, int]], calibration: dict[str, Any]
) -> dict[str, float]:
    """Each prompt's copy threshold: its cluster's (``calibration["cluster_thresholds"]``,
    falling back to ``copy_threshold``), or the whole training set's (``dataset_threshold``)
    for prompts scored against every training image."""
    out = {}
    for p in prompts.to_dict("records"):
        pid, fid = p["prompt_id"], str(p["finding_id"])
        if refs[pid][0] == "cluster":
            out[pid] = float(
                calibration["cluster_thresholds"].get(fid, calibration["copy_threshold"])
            )
        else:
            t = calibration["dataset_threshold"]
            out[pid] = float(calibration["copy_threshold"] if t is None else t)
    return out


_NOT_GENERATED = dict(
    n=0,
    n_copies=0,
    replication_rate=float("nan"),
    ci_low=0.0,
    ci_high=1.0,
    mean_sim=float("nan"),
    p95_sim=float("nan"),
    max_sim=float("nan"),
    n_failed=0,
    n_verbatim=None,
    verbatim_rate=float("nan"),
    n_object=None,
    object_rate=float("nan"),
    object_ci_low=float("nan"),
    object_ci_high=float("nan"),
)


def prompt_table(
    prompts: pd.DataFrame,
    gens: pd.DataFrame,
    refs: dict[str, tuple[str, int]],
    triage: np.ndarray,
    selected: np.ndarray,
    thresholds: dict[str, float],
) -> pd.DataFrame:
    """The memorization table: one row per prompt with its :func:`summarize_generations`
    summary (prompts left out by the triage get ``n = 0``), triage score and rank, whether it
    was generated, its reference set and copy threshold."""
    summary = {}
    if len(gens):
        summary = summarize_generations(gens, by=["prompt_id"]).set_index("prompt_id")
        summary = summary.to_dict("index")
    rank = pd.Series(triage).rank(ascending=False, method="first").to_numpy()
    rows = []
    for i, p in enumerate(prompts.to_dict("records")):
        ref = refs[p["prompt_id"]]
        rows.append(
            {
                **{k: p[k] for k in ("finding_id", "prompt_id", "prompt_kind", "prompt")},
                **{k: p[k] for k in ("keyword", "object", "source")},
                **summary.get(p["prompt_id"], _NOT_GENERATED),
                "triage_score": float(triage[i]),
                "triage_rank": float(rank[i]),
                "generated": bool(selected[i]),
                "reference": ref[0],
                "reference_size": int(ref[1]),
                "copy_threshold": thresholds[p["prompt_id"]],
                "detector": NAME,
            }
        )
    out = pd.DataFrame(rows)
    for col in ("n", "n_copies", "n_failed"):
        out[col] = out[col].astype("int64")
    for col in ("n_verbatim", "n_object"):
        out[col] = pd.array(out[col], dtype="Int64")
    return out


# ---- intervals over prompts -----------------------------------------------------------------
def bootstrap_over_prompts(
    statistic: Any,
    *arrays: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*arrays)`` resampling *prompts* (the rows
    of the arrays) with replacement. Generations of one prompt are not independent (a prompt
    that replicates copies in most seeds), so a Wilson interval over the pooled generations is
    far too narrow; the prompt is the unit. Resamples where the statistic is not finite (e.g.
    an AUROC with one class) are left out; (nan, nan) when none is."""
    cols = [np.asarray(a) for a in arrays]
    n = len(cols[0]) if cols else 0
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.array(
        [statistic(*(c[idx] for c in cols)) for idx in rng.integers(0, n, size=(n_boot, n))],
        dtype=np.float64,
    )
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def pooled_rate(n_copies: np.ndarray, n: np.ndarray) -> float:
    """Copies over generations, pooled over prompts (NaN without generations)."""
    total = float(np.sum(n))
    return float(np.sum(n_copies)) / total if total else float("nan")


COPY_RATE_INTERVAL = (
    "bootstrap over prompts (percentile, 95%), widened to the pooled Wilson 95% interval where "
    "that is wider"
)


def copy_rate_over_prompts(
    n_copies: np.ndarray, n: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The pooled copy rate of a group of prompts with a 95% interval, and the counts it rests
    on. The interval is the bootstrap over prompts (:func:`bootstrap_over_prompts`: prompts
    differ, so the pooled generations are no independent sample), widened to the pooled Wilson
    interval where that is wider: resampling cannot vary a group whose prompts all copied
    nothing (or everything), nor a group of one prompt, and a bootstrap interval of [0, 0]
    would claim a certainty 456 generations do not give."""
    k = np.asarray(n_copies, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    keep = m > 0
    k, m = k[keep], m[keep]
    lo, hi = bootstrap_over_prompts(pooled_rate, k, m, n_boot=n_boot, seed=seed)
    if len(m):
        w_lo, w_hi = wilson_interval(int(k.sum()), int(m.sum()))
        lo, hi = float(min(lo, w_lo)), float(max(hi, w_hi))
    return {
        "prompts": int(len(m)),
        "copies": int(k.sum()),
        "n": int(m.sum()),
        "rate": pooled_rate(k, m),
        "ci_low": lo,
        "ci_high": hi,
        "interval": COPY_RATE_INTERVAL,
    }


def resolvable_fprs(
    n_negatives: int, levels: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2)
) -> list[float]:
    """The false-positive rates a sample of ``n_negatives`` can resolve: those that allow at
    least one false positive (``fpr * n_negatives >= 1``). Below that, "FPR <= f" only means
    "no false positive", and a TPR there is a TPR at FPR 0 whatever ``f`` says."""
    return [f for f in levels if f * n_negatives >= 1 - 1e-9]


def triage_quality(
    scores: np.ndarray,
    labels: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    levels: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2),
) -> dict[str, Any]:
    """AUROC of a per-prompt triage score against replication labels with a bootstrap 95%
    interval over prompts, and the TPR at each false-positive rate the sample can resolve
    (:func:`resolvable_fprs`). The labels must come from prompts that were *not* chosen by the
    triage itself (e.g. a random subset of all prompts, each generated at the full N);
    otherwise the AUROC measures the selection, not the triage."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    lo, hi = bootstrap_over_prompts(
        lambda yy, ss: triage_auroc(ss, yy), y, s, n_boot=n_boot, seed=seed
    )
    n_neg = int((~y).sum())
    return {
        "prompts": int(len(y)),
        "positives": int(y.sum()),
        "negatives": n_neg,
        "auroc": triage_auroc(s, y),
        "auroc_ci": [lo, hi],
        "auroc_interval": "bootstrap over prompts (percentile, 95%)",
        "tpr_at_fpr": {f"{f:g}": tpr_at_fpr(s, y, f) for f in resolvable_fprs(n_neg, levels)},
    }
