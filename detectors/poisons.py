"""Poison-candidate scores over CLIP embeddings: pure numpy / scikit-learn, no I/O.

Every score is oriented so that *higher is more suspicious* and carries a versioned name:

- ``alignment_cos_v1``: image-text cosine (stored as is; its evidence is ``-cos``).
- ``alignment_gmm_v1``: per concept, a two-component 1-D Gaussian mixture on the cosines
  (SafeCLIP); the probability that a pair belongs to the low-similarity component. When the
  mixture is not clearly better than one Gaussian (BIC gain below ``min_bic_gain``) or the
  concept is too small, the data show no separate mismatched population and the score is 0.
- ``concept_pull_v1``: zero-shot over the concept list. ``margin = max over concepts the caption
  does not name of cos(image, concept) - max over concepts it names``; > 0 means the image's
  features sit closer to another concept (Nightshade's signature: looks like A, reads as B).
- ``kdist_v1``: cosine-space distance to the k-th nearest neighbour inside the concept.
- ``lof_v1``: scikit-learn's Local Outlier Factor inside the concept (1 = inlier).
- ``spectral_v1``: |projection| on the top singular vector of the centred concept image
  embeddings (spectral signatures, Tran et al. 2018).
- ``split_view_v1``: the served image's hash differs from the recorded one (ingest status
  ``hash_mismatch``); a fact, not a statistic.

Combination (:func:`combine`): per concept, each evidence score (:data:`DEFAULT_EVIDENCE`:
alignment, pull, k-distance, LOF) becomes a robust z-score: centre = median, scale =
(q90 - median) / 1.2816, the upper-tail analogue of the MAD (it calibrates right-skewed scores
such as LOF), floored at a fraction of the pooled scale so a very homogeneous concept cannot
turn noise into huge z. ``combined = max_j z_j + second_weight * second-largest z_j``: one
strong piece of evidence is enough, a second one adds. A score *fires* when its z reaches
``fire_z``; the reasons string names the fired scores. Split-view rows get
``combined = +inf`` (in the stage).

Kind guess (:func:`guess_kind`): "clean" when a flagged row belongs to a group of flagged rows
of its concept that collapse onto each other (:func:`anchor_collapse`, Nightshade's single
anchor), else "dirty" when the alignment evidence fires (image and caption disagree), else
"clean".

Concept sizes: k for the neighbour scores is ``clip(round(sqrt(n)), k_min, k_max)``, shrunk to
``n // 4`` for small concepts; concepts below ``min_concept_size`` get no neighbour or spectral
scores (NaN) and their per-sample scores are z-scored against the pooled distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from detectors.stats import auroc  # noqa: F401 - part of this module's API

ALIGNMENT_COS = "alignment_cos_v1"
ALIGNMENT_GMM = "alignment_gmm_v1"
CONCEPT_PULL = "concept_pull_v1"
KDIST = "kdist_v1"
LOF = "lof_v1"
SPECTRAL = "spectral_v1"
SPLIT_VIEW = "split_view_v1"
COMBINED = "combined_v1"

SCORE_NAMES: tuple[str, ...] = (ALIGNMENT_COS, ALIGNMENT_GMM, CONCEPT_PULL, KDIST, LOF, SPECTRAL)
"""Scores computed from embeddings (split-view comes from ingest)."""

DEFAULT_EVIDENCE: tuple[str, ...] = (ALIGNMENT_COS, CONCEPT_PULL, KDIST, LOF)
"""Evidence in the combined score by default. The spectral signature is computed and stored but
left out: on the SynthLAION benchmark it separated neither poison kind (AUROC about 0.3-0.5
inside the poisoned concept, see benchmarks/bench_poisons.py) and only added noise."""

EVIDENCE: dict[str, tuple[str, float]] = {
    ALIGNMENT_COS: (ALIGNMENT_COS, -1.0),
    CONCEPT_PULL: (CONCEPT_PULL, 1.0),
    KDIST: (KDIST, 1.0),
    LOF: (LOF, 1.0),
    SPECTRAL: (SPECTRAL, 1.0),
}
"""Evidence the combined score may use: name -> (column, sign). The GMM probability is a
bounded column, mostly exactly 0 (no robust scale), so its information enters through the
cosine z."""


RULES = ("max2", "sum")
"""Combination rules: ``max2`` = top z + second_weight * second z; ``sum`` = sum of the positive
z-scores divided by sqrt(number of evidence scores) (Stouffer-like)."""


@dataclass(frozen=True)
class PoisonParams:
    """Parameters of the per-concept scores and their combination."""

    k_min: int = 16
    k_max: int = 32
    min_concept_size: int = 8
    max_reference: int = 20000
    min_bic_gain: float = 10.0
    fire_z: float = 3.5
    scale_floor: float = 0.25
    second_weight: float = 0.5
    rule: str = "max2"
    evidence: tuple[str, ...] = DEFAULT_EVIDENCE
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"need 1 <= k_min <= k_max (got {self.k_min}, {self.k_max})")
        if self.min_concept_size < 3:
            raise ValueError(f"min_concept_size must be >= 3 (got {self.min_concept_size})")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES} (got {self.rule!r})")
        unknown = [e for e in self.evidence if e not in EVIDENCE]
        if unknown or not self.evidence:
            raise ValueError(
                f"evidence must be a non-empty subset of {list(EVIDENCE)} "
                f"(got {list(self.evidence)})"
            )


def adaptive_k(n: int, k_min: int = 16, k_max: int = 32) -> int:
    """Neighbourhood size for a concept of ``n`` samples (0 when ``n < 3``)."""
    if n < 3:
        return 0
    k = min(max(round(math.sqrt(n)), k_min), k_max)
    return max(1, min(k, n // 4 if n < 4 * k_min else k, n - 1))


def alignment_gmm(
    cos: np.ndarray, *, seed: int = 0, min_samples: int = 8, min_bic_gain: float = 10.0
) -> np.ndarray:
    """Probability that each pair belongs to the low-cosine component of a 2-Gaussian mixture.

    Returns zeros when there are fewer than ``min_samples`` finite values or when two components
    do not beat one by ``min_bic_gain`` in BIC (no separate mismatched population). Non-finite
    cosines get NaN.
    """
    from sklearn.mixture import GaussianMixture

    cos = np.asarray(cos, dtype=np.float64)
    out = np.full(cos.shape, np.nan)
    ok = np.isfinite(cos)
    out[ok] = 0.0
    x = cos[ok].reshape(-1, 1)
    if len(x) < min_samples or np.ptp(x) <= 1e-9:
        return out
    g1 = GaussianMixture(1, random_state=seed, init_params="random_from_data").fit(x)
    # start the low component in the lower tail (no k-means initialisation: 1-D, and cheap)
    init = np.quantile(x, [0.02, 0.5]).reshape(2, 1)
    g2 = GaussianMixture(
        2, random_state=seed, means_init=init, reg_covar=1e-5, init_params="random_from_data"
    ).fit(x)
    if g1.bic(x) - g2.bic(x) < min_bic_gain:
        return out
    low = int(np.argmin(g2.means_.ravel()))
    out[ok] = g2.predict_proba(x)[:, low]
    return out


def concept_pull(
    image_emb: np.ndarray, concept_emb: np.ndarray, named: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot pull of each image away from the concepts its caption names.

    ``image_emb`` (n, d) and ``concept_emb`` (K, d) are L2-normalised; ``named`` (n, K) is True
    where the caption names concept k. Returns ``(margin, nearest_other)``: margin = best cosine
    over unnamed concepts minus best over named ones, and the index of that best unnamed concept.
    Rows that name no concept or every concept get NaN and -1.
    """
    image_emb = np.asarray(image_emb, dtype=np.float32)
    concept_emb = np.asarray(concept_emb, dtype=np.float32)
    named = np.asarray(named, dtype=bool)
    if image_emb.ndim != 2 or concept_emb.ndim != 2 or image_emb.shape[1] != concept_emb.shape[1]:
        raise ValueError(
            f"shape mismatch: image_emb {image_emb.shape}, concept_emb {concept_emb.shape}"
        )
    if named.shape != (image_emb.shape[0], concept_emb.shape[0]):
        raise ValueError(
            f"named must be (n, K) = {(image_emb.shape[0], concept_emb.shape[0])} "
            f"(got {named.shape})"
        )
    sims = image_emb @ concept_emb.T
    own = np.where(named, sims, -np.inf).max(axis=1)
    other_s = np.where(named, -np.inf, sims)
    nearest = other_s.argmax(axis=1)
    other = other_s[np.arange(len(sims)), nearest]
    bad = ~np.isfinite(own) | ~np.isfinite(other)
    margin = (other - own).astype(np.float64)
    margin[bad] = np.nan
    nearest = np.where(bad, -1, nearest)
    return margin, nearest


def _neighbours(
    x: np.ndarray, k: int, max_reference: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distances/indices of each row's k nearest *other* rows among a reference set.

    The reference is all rows, or a random ``max_reference`` of them for large concepts (so
    memory stays bounded by the reference size). Returns (dist (n, k), idx (n, k), ref_idx).
    """
    from sklearn.neighbors import NearestNeighbors

    n = len(x)
    if n <= max_reference:
        ref = np.arange(n)
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x)
        dist, idx = nn.kneighbors()
        return dist, ref[idx], ref
    ref = np.sort(rng.choice(n, size=max_reference, replace=False))
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x[ref])
    dist, idx = nn.kneighbors(x)
    gidx = ref[idx]
    is_self = gidx == np.arange(n)[:, None]
    # drop the self match where present, else the (k+1)-th neighbour
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False
    return (dist[keep].reshape(n, k), gidx[keep].reshape(n, k), ref)


def k_distance(x: np.ndarray, k: int, *, max_reference: int = 20000, seed: int = 0) -> np.ndarray:
    """Euclidean distance (on L2-normalised rows: sqrt(2 - 2 cos)) to the k-th nearest other row."""
    x = np.asarray(x, dtype=np.float32)
    if k < 1 or len(x) <= k:
        return np.full(len(x), np.nan)
    dist, _, _ = _neighbours(x, k, max_reference, np.random.default_rng(seed))
    return dist[:, -1].astype(np.float64)


def lof_scores(x: np.ndarray, k: int, *, max_reference: int = 20000, seed: int = 0) -> np.ndarray:
    """Local Outlier Factor (about 1 for inliers, larger for outliers) with ``k`` neighbours.

    Fitted on all rows, or on a random reference of ``max_reference`` rows for large concepts
    (the others are scored as novelties against it).
    """
    from sklearn.neighbors import LocalOutlierFactor

    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if k < 1 or n <= k:
        return np.full(n, np.nan)
    if n <= max_reference:
        lof = LocalOutlierFactor(n_neighbors=k, algorithm="brute").fit(x)
        return -lof.negative_outlier_factor_.astype(np.float64)
    rng = np.random.default_rng(seed)
    ref = np.sort(rng.choice(n, size=max_reference, replace=False))
    out = np.empty(n)
    lof = LocalOutlierFactor(n_neighbors=k, algorithm="brute", novelty=True).fit(x[ref])
    out[ref] = -lof.negative_outlier_factor_
    rest = np.setdiff1d(np.arange(n), ref)
    out[rest] = -lof.score_samples(x[rest])
    return out


def spectral_signature(x: np.ndarray) -> np.ndarray:
    """|projection| of each centred row on the top right singular vector of the centred rows."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 3:
        return np.full(len(x), np.nan)
    xc = x - x.mean(axis=0, keepdims=True)
    # top right singular vector = top eigenvector of the (d, d) scatter matrix: memory and time
    # bounded by d, not by the concept size
    _, vecs = np.linalg.eigh(xc.T @ xc)
    return np.abs(xc @ vecs[:, -1])


def score_concepts(
    image_emb: np.ndarray,
    clip_score: np.ndarray,
    members: Sequence[np.ndarray],
    concepts: Sequence[str],
    *,
    concept_emb: np.ndarray | None,
    named: np.ndarray,
    params: PoisonParams | None = None,
) -> pd.DataFrame:
    """Raw per-concept scores, one row per (sample, concept) membership.

    ``image_emb`` (n, d) L2-normalised; ``clip_score`` (n,) image-text cosine; ``members[c]`` the
    row indices whose caption names ``concepts[c]``; ``named`` (n, K) the same as a mask (used by
    the concept pull); ``concept_emb`` (K, d) concept text embeddings, or None to skip the pull
    (its column is then NaN). Returns columns ``row, concept, concept_size, k`` and
    :data:`SCORE_NAMES` plus ``pull_concept`` (the unnamed concept the image is nearest to).
    """
    params = params or PoisonParams()
    image_emb = np.asarray(image_emb, dtype=np.float32)
    clip_score = np.asarray(clip_score, dtype=np.float64)
    if len(members) != len(concepts):
        raise ValueError(f"members ({len(members)}) and concepts ({len(concepts)}) differ")
    if clip_score.shape != (len(image_emb),):
        raise ValueError(f"clip_score must have shape ({len(image_emb)},), got {clip_score.shape}")
    if concept_emb is not None:
        margin, nearest = concept_pull(image_emb, concept_emb, named)
    else:
        margin, nearest = np.full(len(image_emb), np.nan), np.full(len(image_emb), -1)
    frames = []
    for c, (concept, rows) in enumerate(zip(concepts, members)):
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            continue
        n = len(rows)
        x = image_emb[rows]
        cos = clip_score[rows]
        big = n >= params.min_concept_size
        k = adaptive_k(n, params.k_min, params.k_max) if big else 0
        seed = params.seed + c
        df = pd.DataFrame(
            {
                "row": rows,
                "concept": concept,
                "concept_size": np.int32(n),
                "k": np.int32(k),
                ALIGNMENT_COS: cos,
                ALIGNMENT_GMM: alignment_gmm(
                    cos,
                    seed=seed,
                    min_samples=params.min_concept_size,
                    min_bic_gain=params.min_bic_gain,
                ),
                CONCEPT_PULL: margin[rows],
                "pull_concept": [concepts[j] if j >= 0 else None for j in nearest[rows]],
                KDIST: (
                    k_distance(x, k, max_reference=params.max_reference, seed=seed)
                    if big
                    else np.full(n, np.nan)
                ),
                LOF: (
                    lof_scores(x, k, max_reference=params.max_reference, seed=seed)
                    if big
                    else np.full(n, np.nan)
                ),
                SPECTRAL: spectral_signature(x) if big else np.full(n, np.nan),
            }
        )
        frames.append(df)
    if not frames:
        cols = ["row", "concept", "concept_size", "k", *SCORE_NAMES, "pull_concept"]
        return pd.DataFrame({c: [] for c in cols})
    return pd.concat(frames, ignore_index=True)


def _robust_center_scale(x: np.ndarray) -> tuple[float, float]:
    """Median and upper-tail scale ``(q90 - median) / 1.2816`` (sigma for a Gaussian; not moved
    by < 10% contamination; calibrates right-skewed scores such as LOF better than the MAD),
    falling back to 1.4826 MAD when the upper tail is flat."""
    x = x[np.isfinite(x)]
    if not len(x):
        return 0.0, 0.0
    med, q90 = (float(v) for v in np.quantile(x, [0.5, 0.9]))
    scale = (q90 - med) / 1.2815516
    if scale <= 1e-12:
        scale = float(np.median(np.abs(x - med)) * 1.4826)
    return med, scale


def evidence_z(scores: pd.DataFrame, params: PoisonParams | None = None) -> pd.DataFrame:
    """Per-concept robust z-score of each evidence column (``<name>_z``; NaN scores -> 0).

    The scale is floored at ``scale_floor`` times the pooled scale of the same column; concepts
    smaller than ``min_concept_size`` are standardised with the pooled centre and scale.
    """
    params = params or PoisonParams()
    out = pd.DataFrame(index=scores.index)
    for name in params.evidence:
        col, sign = EVIDENCE[name]
        v = sign * scores[col].to_numpy(dtype=np.float64)
        pooled_c, pooled_s = _robust_center_scale(v)
        floor = max(params.scale_floor * pooled_s, 1e-9)
        z = np.zeros(len(v))
        for _, idx in scores.groupby("concept", sort=False).indices.items():
            vi = v[idx]
            if len(idx) >= params.min_concept_size:
                c, s = _robust_center_scale(vi)
            else:
                c, s = pooled_c, pooled_s
            zi = (vi - c) / max(s, floor)
            z[idx] = np.where(np.isfinite(zi), zi, 0.0)
        out[f"{name}_z"] = z
    return out


def combine(scores: pd.DataFrame, params: PoisonParams | None = None) -> pd.DataFrame:
    """Add ``<evidence>_z`` columns, ``combined_score``, ``fired`` (list of names) and ``reasons``.

    ``combined = top z + second_weight * second z`` over the evidence scores (see module doc).
    """
    params = params or PoisonParams()
    z = evidence_z(scores, params)
    zs = z.to_numpy()
    order = np.sort(zs, axis=1)[:, ::-1]
    top = order[:, 0]
    second = np.clip(order[:, 1], 0, None) if zs.shape[1] > 1 else 0.0
    out = pd.concat([scores, z], axis=1)
    if params.rule == "max2":
        out["combined_score"] = top + params.second_weight * second
    else:
        out["combined_score"] = np.clip(zs, 0, None).sum(axis=1) / math.sqrt(zs.shape[1])
    names = list(params.evidence)
    reasons, fired = [], []
    for i, row in enumerate(zs):
        idx = [j for j in np.argsort(-row) if row[j] >= params.fire_z]
        fired.append([names[j] for j in idx])
        parts = []
        for j in idx:
            parts.append(_reason(names[j], row[j], out.iloc[i]))
        reasons.append("; ".join(parts))
    out["fired"] = fired
    out["reasons"] = reasons
    return out


def _reason(name: str, z: float, row: pd.Series) -> str:
    if name == CONCEPT_PULL:
        return (
            f"{name} z={z:.1f}: image nearer '{row['pull_concept']}' than its caption's "
            f"concept (margin {row[CONCEPT_PULL]:+.3f})"
        )
    if name == ALIGNMENT_COS:
        return (
            f"{name} z={z:.1f}: low image-text cosine {row[ALIGNMENT_COS]:.3f} "
            f"(mismatch p={row[ALIGNMENT_GMM]:.2f})"
        )
    if name == KDIST:
        return f"{name} z={z:.1f}: far from its concept's images (k-distance {row[KDIST]:.3f})"
    if name == LOF:
        return f"{name} z={z:.1f}: local outlier in its concept (LOF {row[LOF]:.2f})"
    if name == SPECTRAL:
        return f"{name} z={z:.1f}: large projection on the concept's top singular direction"
    return f"{name} z={z:.1f}"


def flag(scores: pd.DataFrame, *, threshold: float | None = None) -> np.ndarray:
    """Poison-candidate flags per row of a :func:`combine` frame: ``combined_score >=
    threshold``. Evidence only: a row is flagged when its scores say so, however many or few
    rows that makes (a quota, :func:`review_quota`, never flags)."""
    if threshold is None:
        raise ValueError("give a threshold")
    return scores["combined_score"].to_numpy(dtype=np.float64) >= threshold


REVIEW_RATE_FACTOR = 1.5
"""A review quota inspects this many times the expected poison rate."""


def review_quota(
    scores: pd.DataFrame, expected_rate: float, rate_factor: float = REVIEW_RATE_FACTOR
) -> np.ndarray:
    """The top ``ceil(rate_factor * expected_rate * concept_size)`` rows of each concept by
    combined score (the spectral-signature convention of inspecting ~1.5x the expected poison
    rate): a *review list* of fixed size per concept, whatever the evidence. On clean data it
    is as long as on poisoned data, so it is kept apart from :func:`flag` and never counted as
    poison candidates."""
    if not 0 < expected_rate < 1:
        raise ValueError(f"expected_rate must be in (0, 1) (got {expected_rate})")
    comb = scores["combined_score"].to_numpy(dtype=np.float64)
    out = np.zeros(len(scores), dtype=bool)
    for _, idx in scores.groupby("concept", sort=False).indices.items():
        m = math.ceil(rate_factor * expected_rate * len(idx))
        top = idx[np.argsort(-comb[idx], kind="stable")[:m]]
        out[top] = True
    return out


def anchor_collapse(
    group: np.ndarray, reference: np.ndarray, *, m: int = 3, n_null: int = 200, seed: int = 0
) -> np.ndarray:
    """Empirical p-value, per row of ``group``, that it sits as close to the other group rows as
    rows of a random same-size subset of ``reference`` sit to each other.

    The statistic is a row's mean cosine to its ``m`` most similar other rows. Nightshade-style
    poisons of one concept are all pulled toward a single anchor image, so they collapse onto
    each other far more tightly than natural images do; ``reference`` is the natural (not
    flagged) members of the same concept. Dirty-label images are natural images of another
    concept, about as spread out as natural images of any concept. Returns NaN for every row
    when the group has fewer than 3 rows or the reference is smaller than the group.
    """
    group = np.asarray(group, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    g = len(group)
    if g < 3 or len(reference) < g:
        return np.full(g, np.nan)
    m = min(m, g - 1)

    def top_m(x: np.ndarray) -> np.ndarray:
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return np.sort(s, axis=1)[:, -m:].mean(axis=1)

    stat = top_m(group)
    rng = np.random.default_rng(seed)
    null = np.concatenate(
        [top_m(reference[rng.choice(len(reference), g, replace=False)]) for _ in range(n_null)]
    )
    null.sort()
    # share of null values >= each statistic, with the +1 correction of permutation tests
    ge = len(null) - np.searchsorted(null, stat, side="left")
    return (ge + 1) / (len(null) + 1)


def guess_kind(
    scores: pd.DataFrame,
    flagged: np.ndarray,
    fire_z: float = 3.5,
    collapse_p: np.ndarray | None = None,
    collapse_alpha: float = 0.05,
) -> np.ndarray:
    """Kind of each flagged row: "clean" when it belongs to a collapsed group (``collapse_p`` <
    ``collapse_alpha``, see :func:`anchor_collapse`: Nightshade's single-anchor signature);
    else "dirty" when its alignment evidence fires or its GMM mismatch p >= 0.5 (the image does
    not match its caption); else "clean" (aligned, but pulled toward another concept or out of
    place). Rows not flagged are "none"."""
    align_z = scores.get(f"{ALIGNMENT_COS}_z", pd.Series(0.0, index=scores.index)).to_numpy()
    gmm = scores[ALIGNMENT_GMM].fillna(0.0).to_numpy()
    dirty = (align_z >= fire_z) | (gmm >= 0.5)
    if collapse_p is not None:
        collapsed = np.nan_to_num(np.asarray(collapse_p, dtype=np.float64), nan=1.0)
        dirty &= collapsed >= collapse_alpha
    return np.where(~flagged, "none", np.where(dirty, "dirty", "clean"))


def precision_at(labels: np.ndarray, scores: np.ndarray, m: int | None = None) -> float:
    """Share of true positives among the ``m`` top-scored rows (``m`` = number of positives)."""
    labels = np.asarray(labels, dtype=bool)
    m = int(labels.sum()) if m is None else int(m)
    if m <= 0:
        return float("nan")
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    top = np.argsort(-s, kind="stable")[:m]
    return float(labels[top].mean())
