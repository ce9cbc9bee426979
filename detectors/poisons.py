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

Combination (:func:`combine`): each evidence score (:data:`DEFAULT_EVIDENCE`: alignment, pull,
k-distance, LOF, chroma_hf_v1) becomes a robust z-score; the image-level ones over every row
(median, 1.4826 MAD: :data:`POOLED_EVIDENCE`), the others per concept: centre = median, scale =
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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from detectors.stats import (
    auroc,  # noqa: F401 - part of this module's API
    median_mad,
    normalize_rows,
)

ALIGNMENT_COS = "alignment_cos_v1"
ALIGNMENT_GMM = "alignment_gmm_v1"
CONCEPT_PULL = "concept_pull_v1"
KDIST = "kdist_v1"
LOF = "lof_v1"
SPECTRAL = "spectral_v1"
SPLIT_VIEW = "split_view_v1"
COMBINED = "combined_v1"
CHROMA_HF = "chroma_hf_v1"
FREQ_HF = "freq_hf_v1"
VAE_RECON = "vae_recon_v1"
DIFFUSION_LOSS = "diffusion_loss_v1"
DIFFUSION_GAIN = "diffusion_gain_v1"

PIXEL_SCORES: tuple[str, ...] = (CHROMA_HF, FREQ_HF)
"""Scores computed from the decoded pixels (no model)."""
GENERATOR_SCORES: tuple[str, ...] = (VAE_RECON, DIFFUSION_LOSS, DIFFUSION_GAIN)
"""Scores computed with the text-to-image model being audited (``poisons --generator``)."""
IMAGE_SCORES: tuple[str, ...] = PIXEL_SCORES + GENERATOR_SCORES
DEFAULT_TIMESTEPS: tuple[int, ...] = (100, 300, 500, 700)
"""Diffusion timesteps (of 1000) at which the per-sample training loss is measured."""

SCORE_NAMES: tuple[str, ...] = (ALIGNMENT_COS, ALIGNMENT_GMM, CONCEPT_PULL, KDIST, LOF, SPECTRAL)
"""Scores computed from embeddings (split-view comes from ingest)."""

DEFAULT_EVIDENCE: tuple[str, ...] = (ALIGNMENT_COS, CONCEPT_PULL, KDIST, LOF, CHROMA_HF)
"""Evidence in the combined score by default (chosen on the tune seed 11 of
benchmarks/bench_poisons.py; docs/poisons.md has the numbers). ``chroma_hf_v1`` is in because it
is the one score that sees perturbations aimed at the generator: on the tune seed it raised the
combined AUROC inside the attacked concept for Nightshade-style poisons from 0.43 to 0.92 and
for Glaze-style cloaks from 0.73 to 0.91, left dirty-label at 0.997, and moved the false-flag
rate at the default threshold from 0.0053 to 0.0056. It is NaN (z = 0) where no pixels were
read. The spectral signature is computed and stored but left out: it separated neither poison
kind (AUROC about 0.3-0.5 inside the poisoned concept) and only added noise; ``freq_hf_v1`` and
the generator scores stayed near chance."""

EVIDENCE: dict[str, tuple[str, float]] = {
    ALIGNMENT_COS: (ALIGNMENT_COS, -1.0),
    CONCEPT_PULL: (CONCEPT_PULL, 1.0),
    KDIST: (KDIST, 1.0),
    LOF: (LOF, 1.0),
    SPECTRAL: (SPECTRAL, 1.0),
    CHROMA_HF: (CHROMA_HF, 1.0),
    FREQ_HF: (FREQ_HF, 1.0),
    VAE_RECON: (VAE_RECON, 1.0),
    DIFFUSION_LOSS: (DIFFUSION_LOSS, 1.0),
    DIFFUSION_GAIN: (DIFFUSION_GAIN, 1.0),
}
"""Evidence the combined score may use: name -> (column, sign). The GMM probability is a
bounded column, mostly exactly 0 (no robust scale), so its information enters through the
cosine z."""

POOLED_EVIDENCE = frozenset(IMAGE_SCORES)
"""Evidence standardised over every scored row rather than per concept: what PGD noise or a
generator's loss look like does not depend on what the picture shows, and a concept whose
images are mostly poisons cannot hide them from a pooled reference. Centre = median, scale =
1.4826 MAD (breakdown point 50%: robust to the many poisons of a flooded concept)."""


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
    image_scores: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Raw per-concept scores, one row per (sample, concept) membership.

    ``image_scores``: per-sample arrays (n,) of :data:`IMAGE_SCORES` computed elsewhere (from the
    pixels, or with the generator); copied into every membership of the sample. Missing ones
    are NaN columns.

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
        for name in IMAGE_SCORES:
            v = (image_scores or {}).get(name)
            df[name] = np.asarray(v, dtype=np.float64)[rows] if v is not None else np.nan
        frames.append(df)
    if not frames:
        cols = ["row", "concept", "concept_size", "k", *SCORE_NAMES, "pull_concept", *IMAGE_SCORES]
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
        scale = median_mad(x)[1]
    return med, scale


def evidence_z(scores: pd.DataFrame, params: PoisonParams | None = None) -> pd.DataFrame:
    """Robust z-score of each evidence column (``<name>_z``; NaN scores -> 0).

    Per concept for the embedding scores: the scale is floored at ``scale_floor`` times the
    pooled scale of the same column; concepts smaller than ``min_concept_size`` are standardised
    with the pooled centre and scale.
    Pooled for :data:`POOLED_EVIDENCE` (median and 1.4826 MAD over every membership).
    """
    params = params or PoisonParams()
    out = pd.DataFrame(index=scores.index)
    for name in params.evidence:
        col, sign = EVIDENCE[name]
        v = sign * scores[col].to_numpy(dtype=np.float64)
        if name in POOLED_EVIDENCE:
            c, s = median_mad(v)
            zi = (v - c) / max(s, 1e-9)
            out[f"{name}_z"] = np.where(np.isfinite(zi), zi, 0.0)
            continue
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
    if name == CHROMA_HF:
        return (
            f"{name} z={z:.1f}: high-frequency colour noise ({row[CHROMA_HF]:.2f}), the trace "
            "of a per-channel adversarial perturbation (Nightshade/Glaze-style)"
        )
    if name in (VAE_RECON, DIFFUSION_LOSS, DIFFUSION_GAIN):
        return f"{name} z={z:.1f}: the generator finds this pair unusual ({row[name]:.4f})"
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
    """Kind of each flagged row: "perturbed" when its strongest evidence is an image-level
    score (:data:`IMAGE_SCORES`: adversarial noise aimed at a generator, Nightshade/Glaze-style);
    "clean" when it belongs to a collapsed group (``collapse_p`` < ``collapse_alpha``, see
    :func:`anchor_collapse`: Nightshade's single-anchor signature); else "dirty" when its
    alignment evidence fires or its GMM mismatch p >= 0.5 (the image does not match its
    caption); else "clean" (aligned, but pulled toward another concept or out of place). Rows
    not flagged are "none"."""
    align_z = scores.get(f"{ALIGNMENT_COS}_z", pd.Series(0.0, index=scores.index)).to_numpy()
    gmm = scores[ALIGNMENT_GMM].fillna(0.0).to_numpy()
    dirty = (align_z >= fire_z) | (gmm >= 0.5)
    if collapse_p is not None:
        collapsed = np.nan_to_num(np.asarray(collapse_p, dtype=np.float64), nan=1.0)
        dirty &= collapsed >= collapse_alpha
    zcols = [c for c in scores.columns if c.endswith("_z")]
    image_cols = [c for c in zcols if c[:-2] in POOLED_EVIDENCE]
    perturbed = np.zeros(len(scores), dtype=bool)
    if image_cols:
        zs = scores[zcols].to_numpy(dtype=np.float64)
        best = np.asarray(zcols, dtype=object)[np.nanargmax(np.nan_to_num(zs, nan=-np.inf), 1)]
        perturbed = np.isin(best, image_cols)
    kind = np.where(dirty, "dirty", "clean")
    kind = np.where(perturbed, "perturbed", kind)
    return np.where(~flagged, "none", kind)


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


# ---- image-level scores: frequency domain and the generator's own view ------------------------


def _gray(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114])
    return a / 255.0


def high_frequency_share(images: Sequence[np.ndarray], cutoff: float = 0.5) -> np.ndarray:
    """Share of each image's spectral energy above ``cutoff`` x the Nyquist frequency (radial,
    in normalised frequency, so comparable across sizes): grayscale, mean removed, Hann window,
    2-D FFT power. Adversarial perturbations add broadband high-frequency energy; smooth
    drawings and photos keep most of theirs at low frequencies. NaN for images under 8 px."""
    out = np.full(len(images), np.nan)
    for i, img in enumerate(images):
        g = _gray(img)
        if g.ndim != 2 or min(g.shape) < 8:
            continue
        h, w = g.shape
        win = np.outer(np.hanning(h), np.hanning(w))
        p = np.abs(np.fft.fft2((g - g.mean()) * win)) ** 2
        fy = np.fft.fftfreq(h)[:, None] / 0.5
        fx = np.fft.fftfreq(w)[None, :] / 0.5
        r = np.sqrt(fy**2 + fx**2)
        p[0, 0] = 0.0
        total = p.sum()
        out[i] = float(p[r > cutoff].sum() / total) if total > 0 else 0.0
    return out


def _box_highpass(a: np.ndarray) -> np.ndarray:
    """``a`` minus its 3x3 box blur (edges replicated): the content above the box filter's
    passband, i.e. roughly the upper half of the spatial frequencies."""
    h, w = a.shape
    pad = np.pad(a, 1, mode="edge")
    blur = sum(pad[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0
    return a - blur


def chroma_high_frequency(images: Sequence[np.ndarray]) -> np.ndarray:
    """log(median |high-pass Cb| + median |high-pass Cr| + 0.1), per image (YCbCr of JPEG, in
    0-255 units; high-pass = minus the 3x3 box blur).

    An L-infinity perturbation optimised by signed gradient steps moves each colour channel of
    each pixel independently, so it adds high-frequency energy to the chroma channels, where
    drawings and photographs carry little (their detail is mostly luminance, and 4:2:0 JPEG
    keeps chroma at half resolution). The median keeps sparse colour edges out. A JPEG 4:2:0
    re-encoding removes most of this signal. NaN for images under 8 px."""
    out = np.full(len(images), np.nan)
    m = np.array(
        [[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
    )  # Cb, Cr rows of the JPEG YCbCr transform (the offset does not matter after high-pass)
    for i, img in enumerate(images):
        a = np.asarray(img, dtype=np.float64)
        if a.ndim != 3 or min(a.shape[:2]) < 8:
            continue
        cbcr = a[..., :3] @ m.T
        e = sum(float(np.median(np.abs(_box_highpass(cbcr[..., c])))) for c in range(2))
        out[i] = math.log(e + 0.1)
    return out


def pixel_scores(images: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    """:data:`PIXEL_SCORES` for each image (uint8 HxWx3 arrays; None -> NaN)."""
    ok = [i for i, im in enumerate(images) if im is not None]
    sub = [images[i] for i in ok]
    out = {name: np.full(len(images), np.nan) for name in PIXEL_SCORES}
    if sub:
        out[CHROMA_HF][ok] = chroma_high_frequency(sub)  # type: ignore[arg-type]
        out[FREQ_HF][ok] = high_frequency_share(sub)  # type: ignore[arg-type]
    return out


def generator_resolution(pipe: Any) -> int:
    """The square side the pipeline's UNet was trained at (sample size x VAE scale factor)."""
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, int) else int(size[0])
    return int(size * vae_factor)


def _generator_batch(images: Sequence[Any], res: int) -> Any:
    """Images as a (B, 3, res, res) tensor in [-1, 1]: shorter side resized to ``res``
    (bicubic, antialiased), then centre-cropped, as text-to-image training pipelines do."""
    import torch
    from PIL import Image

    arrs = []
    for im in images:
        pil = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8))
        pil = pil.convert("RGB")
        w, h = pil.size
        if (w, h) != (res, res):
            s = res / min(w, h)
            nw, nh = max(res, round(w * s)), max(res, round(h * s))
            pil = pil.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
            left, top = (nw - res) // 2, (nh - res) // 2
            pil = pil.crop((left, top, left + res, top + res))
        arrs.append(np.asarray(pil, np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def generator_scores(
    pipe: Any,
    images: Sequence[Any],
    captions: Sequence[str],
    *,
    seeds: Sequence[int] | None = None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    batch_size: int = 32,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """What the text-to-image model being audited sees in each (image, caption) pair.

    - ``vae_recon_v1``: mean squared error (in [-1, 1] units) between the image and its VAE
      reconstruction (decode of the encoder's posterior mean). A poison whose latent was pushed
      toward another image decodes to something else than it shows.
    - ``diffusion_loss_v1``: the per-sample training loss (noise-prediction MSE, or the
      v-target's, per the scheduler) of the caption-conditioned UNet, averaged over
      ``timesteps``, with a fixed noise per sample (``seeds[i]``, default the row index).
    - ``diffusion_gain_v1``: that loss minus the same loss with the empty caption: how much the
      caption fails to help denoise the image (> 0: the caption makes it worse).

    Images are resized/cropped to the model's training resolution. ``pipe``: a loaded diffusers
    text-to-image pipeline (vae, unet, text_encoder, tokenizer, scheduler). Returns arrays of
    ``len(images)``; None images give NaN.
    """
    import torch
    from diffusers import DDPMScheduler

    n = len(images)
    if len(captions) != n:
        raise ValueError(f"{n} images but {len(captions)} captions")
    seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
    res = generator_resolution(pipe)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    n_train = int(sched.config.num_train_timesteps)
    ts = [int(t) for t in timesteps if 0 <= int(t) < n_train]
    if not ts:
        raise ValueError(f"timesteps must lie in [0, {n_train}) (got {list(timesteps)})")
    vae, unet, te, tok = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
    scaling = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    vtype = next(unet.parameters()).dtype

    def text_states(texts: list[str]) -> Any:
        ids = tok(
            texts,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return te(ids)[0].to(vtype)

    out = {name: np.full(n, np.nan) for name in GENERATOR_SCORES}
    ok = [i for i in range(n) if images[i] is not None]
    with torch.no_grad():
        empty = text_states([""])
        for b in range(0, len(ok), batch_size):
            idx = ok[b : b + batch_size]
            x = _generator_batch([images[i] for i in idx], res).to(device, vae.dtype)
            z = vae.encode(x).latent_dist.mean
            rec = vae.decode(z).sample.float().clamp(-1, 1)
            out[VAE_RECON][idx] = ((rec - x.float()) ** 2).flatten(1).mean(1).cpu().numpy()
            z = ((z - shift) * scaling).to(vtype)
            cond = text_states([str(captions[i] or "") for i in idx])
            unc = empty.expand(len(idx), -1, -1)
            loss_c = torch.zeros(len(idx))
            loss_u = torch.zeros(len(idx))
            gens = [torch.Generator("cpu").manual_seed(seeds[i]) for i in idx]
            for t in ts:
                noise = torch.stack([torch.randn(z.shape[1:], generator=g) for g in gens])
                noise = noise.to(device, vtype)
                tt = torch.full((len(idx),), t, dtype=torch.long, device=device)
                zt = sched.add_noise(z, noise, tt)
                if sched.config.prediction_type == "v_prediction":
                    target = sched.get_velocity(z, noise, tt)
                else:
                    target = noise
                for states, acc in ((cond, loss_c), (unc, loss_u)):
                    pred = unet(zt, tt, encoder_hidden_states=states).sample
                    acc += ((pred.float() - target.float()) ** 2).flatten(1).mean(1).cpu()
            loss_c /= len(ts)
            loss_u /= len(ts)
            out[DIFFUSION_LOSS][idx] = loss_c.numpy()
            out[DIFFUSION_GAIN][idx] = (loss_c - loss_u).numpy()
    return out


# ---- membership, flags, kinds, ranking: one row per sample -------------------------------------

DEFAULT_THRESHOLD = 6.0
"""Default flag threshold on the combined score (robust-z units): ``poisons --z-threshold``."""

SPLIT_VIEW_REASON = (
    "split_view_v1: the URL now serves bytes that differ from the recorded "
    "sha256 (ingest status hash_mismatch)"
)


def caption_centroids(text_emb: np.ndarray, members: list[np.ndarray]) -> np.ndarray:
    """Model-free fallback concept embeddings: the normalised mean caption embedding of each
    concept's members (zero rows for concepts without members)."""

    out = np.zeros((len(members), text_emb.shape[1]), np.float32)
    for i, rows in enumerate(members):
        if len(rows):
            out[i] = text_emb[rows].mean(axis=0)
    return normalize_rows(out)


def membership(
    captions: list[str | None],
    concepts: list[str],
    *,
    text_emb: np.ndarray | None,
    concept_emb: np.ndarray | None,
    mode: str,
    semantic_threshold: dict[str, float] | None = None,
) -> np.ndarray:
    """(n, K) mask: caption names concept k (word match), or (semantic) its text embedding's
    nearest reference in ``concept_emb`` is k's, with cosine >= that concept's threshold."""
    from detectors.text import match_keyword

    named = np.zeros((len(captions), len(concepts)), dtype=bool)
    if mode in ("word", "both"):
        for j, c in enumerate(concepts):
            named[:, j] = match_keyword(captions, c)
    if mode in ("semantic", "both"):
        if text_emb is None or concept_emb is None:
            raise ValueError("semantic match needs text and concept embeddings")
        sims = text_emb @ concept_emb.T
        best = sims.argmax(axis=1)
        for j, c in enumerate(concepts):
            thr = (semantic_threshold or {}).get(c)
            if thr is None or not math.isfinite(thr):
                continue
            named[:, j] |= (best == j) & (sims[:, j] >= thr)
    return named


def score_memberships(
    image_emb: np.ndarray,
    clip_score: np.ndarray,
    named: np.ndarray,
    concepts: list[str],
    concept_emb: np.ndarray | None,
    params: PoisonParams | None = None,
    image_scores: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Scores and combined score for every (sample, concept) membership (see
    :func:`score_concepts` and :func:`combine`)."""
    params = params or PoisonParams()
    members = [np.flatnonzero(named[:, j]) for j in range(len(concepts))]
    raw = score_concepts(
        image_emb,
        clip_score,
        members,
        concepts,
        concept_emb=concept_emb,
        named=named,
        params=params,
        image_scores=image_scores,
    )
    return combine(raw, params)


def collapse_pvalues(
    per_key: pd.DataFrame,
    image_emb: np.ndarray,
    named: np.ndarray,
    concepts: list[str],
    params: PoisonParams,
    split_view: np.ndarray,
) -> np.ndarray:
    """:func:`detectors.poisons.anchor_collapse` p-value for each flagged, non-split-view row,
    grouped by concept (at least 3 flagged rows), against random subsets of the concept's
    members that are not flagged; NaN elsewhere."""
    out = np.full(len(per_key), np.nan)
    cand = per_key["flagged"].to_numpy(dtype=bool) & ~split_view
    cand &= per_key["concept"].notna().to_numpy()
    flagged_rows = set(per_key.loc[cand, "row"].astype(int))
    index = {c: j for j, c in enumerate(concepts)}
    cand_pos = np.flatnonzero(cand)
    for _, idx in per_key.iloc[cand_pos].groupby("concept").indices.items():
        pos = cand_pos[idx]
        if len(pos) < 3:
            continue
        own = index[str(per_key["concept"].iloc[pos[0]])]
        ref_rows = [r for r in np.flatnonzero(named[:, own]) if r not in flagged_rows]
        rows = per_key["row"].iloc[pos].to_numpy(dtype=np.int64)
        out[pos] = anchor_collapse(image_emb[rows], image_emb[ref_rows], seed=params.seed)
    return out


def select_per_key(
    comb: pd.DataFrame,
    keys: np.ndarray,
    split_keys: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    expected_rate: float | None = None,
    params: PoisonParams | None = None,
    image_emb: np.ndarray | None = None,
    named: np.ndarray | None = None,
    concepts: list[str] | None = None,
) -> pd.DataFrame:
    """Flag memberships, then keep one row per key (its most suspicious concept; flagged if
    flagged under any concept), add split-view rows (always flagged, combined = +inf), guess
    kinds, write reasons, and rank (1 = most suspicious)."""
    params = params or PoisonParams()
    comb = comb.copy()
    comb["flagged"] = flag(comb, threshold=threshold)
    comb["review"] = (
        review_quota(comb, expected_rate)
        if expected_rate is not None and len(comb)
        else np.zeros(len(comb), dtype=bool)
    )
    comb["key"] = keys[comb["row"].to_numpy(dtype=np.int64)] if len(comb) else []
    if len(comb):
        for col in ("flagged", "review"):
            comb[col] = comb.groupby("key")[col].transform("max").astype(bool)
    comb = comb.sort_values(["key", "combined_score"], ascending=[True, False], kind="stable")
    per_key = comb.drop_duplicates("key", keep="first").copy()
    concept_lists = comb.groupby("key", sort=False)["concept"].agg("|".join)
    per_key["concepts"] = per_key["key"].map(concept_lists)
    split = {str(k) for k in split_keys}
    per_key["split_view_v1"] = per_key["key"].isin(split)
    extra = sorted(split - set(per_key["key"]))
    if extra:
        per_key = pd.concat(
            [per_key, pd.DataFrame({"key": extra, "split_view_v1": True})], ignore_index=True
        )
    sv = per_key["split_view_v1"].to_numpy(dtype=bool)
    per_key["flagged"] = per_key["flagged"].astype("boolean").fillna(False).to_numpy(bool) | sv
    per_key["review"] = per_key["review"].astype("boolean").fillna(False).to_numpy(bool)
    per_key[ALIGNMENT_GMM] = per_key[ALIGNMENT_GMM].astype(float)
    per_key["anchor_collapse_p"] = (
        collapse_pvalues(per_key, image_emb, named, concepts, params, sv)
        if image_emb is not None and named is not None and concepts is not None
        else np.nan
    )
    per_key["kind"] = guess_kind(
        per_key,
        per_key["flagged"].to_numpy(dtype=bool),
        params.fire_z,
        per_key["anchor_collapse_p"].to_numpy(dtype=np.float64),
    )
    per_key.loc[sv, "kind"] = "split_view"
    per_key["combined_score"] = per_key["combined_score"].astype(float)
    per_key.loc[sv, "combined_score"] = np.inf
    reasons = per_key["reasons"].fillna("").astype(str)
    per_key["reasons"] = np.where(
        sv, np.where(reasons != "", SPLIT_VIEW_REASON + "; " + reasons, SPLIT_VIEW_REASON), reasons
    )
    review_only = per_key["review"] & ~per_key["flagged"]
    per_key.loc[review_only, "reasons"] = [
        _review_reason(r, params) for _, r in per_key[review_only].iterrows()
    ]
    order = np.lexsort(
        (
            per_key["key"].to_numpy(dtype=str),
            -np.nan_to_num(per_key["combined_score"].to_numpy(), nan=-np.inf),
        )
    )
    per_key = per_key.iloc[order].reset_index(drop=True)
    per_key["rank"] = np.arange(1, len(per_key) + 1, dtype=np.int64)
    return per_key


def score_and_select(
    keys: np.ndarray,
    image_emb: np.ndarray,
    clip_score: np.ndarray,
    named: np.ndarray,
    concepts: list[str],
    concept_emb: np.ndarray | None,
    split_keys: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    expected_rate: float | None = None,
    params: PoisonParams | None = None,
    image_scores: dict[str, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score, combine, flag and rank; one row per key (its most suspicious concept).

    Keys that name no concept are not scored (nothing to compare them with) unless they are
    split-view rows, which are always output and flagged. Returns the table and timings.
    """
    t0 = time.perf_counter()
    comb = score_memberships(
        image_emb, clip_score, named, concepts, concept_emb, params, image_scores
    )
    t1 = time.perf_counter()
    per_key = select_per_key(
        comb,
        keys,
        split_keys,
        threshold=threshold,
        expected_rate=expected_rate,
        params=params,
        image_emb=image_emb,
        named=named,
        concepts=concepts,
    )
    t2 = time.perf_counter()
    return per_key, {"scores_s": round(t1 - t0, 3), "select_s": round(t2 - t1, 3)}


def _review_reason(row: pd.Series, params: PoisonParams) -> str:
    """Note for a row on the review list (expected-rate quota) that is not flagged."""
    zs = {e: row.get(f"{e}_z", np.nan) for e in params.evidence}
    best = max(zs, key=lambda e: -np.inf if not np.isfinite(zs[e]) else zs[e])
    fired = row.get("reasons") or ""
    return (
        "top-ranked for review (expected-rate quota of its concept), not a poison candidate: "
        f"combined score below the threshold; strongest evidence {best} z={zs[best]:.1f}"
        + (f"; {fired}" if fired else "")
    )


def _dense_positions(order: np.ndarray) -> np.ndarray:
    """1-based rank of each element given the argsort ``order`` (ties by position)."""
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def vulnerability_table(
    concepts: list[str],
    named: np.ndarray,
    per_key: pd.DataFrame,
    concepts_finding: pd.DataFrame | None,
    word_counts: dict[str, int],
    n_total: int,
) -> pd.DataFrame:
    """Concepts ranked by how few poisons would matter and how many candidates they hold.

    ``sparsity_rank`` 1 = fewest images (semantic count when known, else word count);
    ``candidate_rank`` 1 = most flagged candidates (then highest share; remaining ties by list
    order); ``vulnerability_rank`` orders by the sum of the two ranks, ties broken by sparsity. ``share_if_100_poisons`` is the
    share of the concept that 100 poisons (Nightshade's order of magnitude) would make up.
    """
    df = pd.DataFrame({"concept": concepts, "n_scored": named.sum(axis=0).astype(np.int64)})
    if concepts_finding is not None and len(concepts_finding):
        keep = [
            c
            for c in (
                "concept",
                "word_count",
                "word_freq",
                "semantic_count",
                "semantic_freq",
                "sparse",
                "n_total",
            )
            if c in concepts_finding
        ]
        df = df.merge(concepts_finding[keep], on="concept", how="left")
    for col in ("word_count", "word_freq", "semantic_count", "semantic_freq", "sparse"):
        if col not in df:
            df[col] = np.nan
    df["sparse"] = df["sparse"].astype("boolean")
    wc = df["concept"].map(word_counts).astype(float)
    df["word_count"] = df["word_count"].astype(float).fillna(wc)
    df["word_freq"] = df["word_freq"].astype(float).fillna(wc / max(n_total, 1))
    flagged = per_key[per_key["flagged"] & per_key["concept"].notna()]
    cand = flagged.groupby("concept").size()
    df["candidates"] = df["concept"].map(cand).fillna(0).astype(np.int64)
    df["candidate_share"] = df["candidates"] / df["n_scored"].clip(lower=1)
    size = df["semantic_count"].astype(float).fillna(df["word_count"].astype(float))
    df["share_if_100_poisons"] = 100.0 / (size + 100.0)
    df["sparsity_rank"] = size.rank(method="min", ascending=True).astype(np.int64)
    cand_order = np.lexsort((-df["candidate_share"].to_numpy(), -df["candidates"].to_numpy()))
    df["candidate_rank"] = _dense_positions(cand_order)
    total = (df["sparsity_rank"] + df["candidate_rank"]).to_numpy()
    df["vulnerability_rank"] = _dense_positions(np.lexsort((df["sparsity_rank"].to_numpy(), total)))
    return df.sort_values("vulnerability_rank").reset_index(drop=True)


# ---- entry point -----------------------------------------------------------------------------


def image_scores(
    open_image: Any,
    keys: Sequence[Any],
    captions: Sequence[str],
    *,
    pixel: bool = True,
    pipe: Any = None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    device: str = "cpu",
    chunk: int = 2048,
) -> tuple[dict[str, np.ndarray], int]:
    """:data:`PIXEL_SCORES` (``pixel``) and :data:`GENERATOR_SCORES` (``pipe``) for each key,
    reading ``open_image(key)`` (a PIL image or None) ``chunk`` at a time; the generator's
    noise is seeded per key (crc32). Returns the scores and how many images were read."""
    import zlib

    names = (PIXEL_SCORES if pixel else ()) + (GENERATOR_SCORES if pipe is not None else ())
    out = {n: np.full(len(keys), np.nan) for n in names}
    read = 0
    for b in range(0, len(keys), chunk):
        ks = list(keys[b : b + chunk])
        imgs = [open_image(k) for k in ks]
        read += sum(im is not None for im in imgs)
        if pixel:
            arrs = [None if im is None else np.asarray(im.convert("RGB")) for im in imgs]
            for n, v in pixel_scores(arrs).items():
                out[n][b : b + len(ks)] = v
        if pipe is not None:
            seeds = [zlib.crc32(str(k).encode()) for k in ks]
            g = generator_scores(
                pipe, imgs, list(captions[b : b + len(ks)]), seeds=seeds, timesteps=timesteps,
                device=device,
            )  # fmt: skip
            for n, v in g.items():
                out[n][b : b + len(ks)] = v
    return out, read


def finding_columns(per_key: pd.DataFrame) -> list[tuple[str, str]]:
    """The ``poisons`` finding's columns in order, with their Arrow type names."""
    z_cols = sorted(c for c in per_key.columns if c.endswith("_z"))
    f32 = [ALIGNMENT_COS, ALIGNMENT_GMM, CONCEPT_PULL]
    return [
        ("key", "string"), ("concept", "string"), ("concepts", "string"),
        ("concept_size", "int32"), ("k", "int32"), *[(c, "float32") for c in f32],
        ("pull_concept", "string"), (KDIST, "float32"), (LOF, "float32"),
        (SPECTRAL, "float32"), (SPLIT_VIEW, "bool_"), *[(c, "float32") for c in IMAGE_SCORES],
        *[(c, "float32") for c in z_cols], ("anchor_collapse_p", "float32"),
        ("combined_score", "float64"), ("rank", "int64"), ("flagged", "bool_"),
        ("review", "bool_"), ("kind", "string"), ("reasons", "string"),
    ]  # fmt: skip


def semantic_reference_from(
    concepts_finding: pd.DataFrame | None,
    concepts: Sequence[str],
    prompt_emb: np.ndarray,
    semantic_threshold: float | None,
) -> tuple[np.ndarray, dict[str, float], str] | None:
    """Reference embeddings, cosine thresholds and their source for semantic membership.

    With a ``concepts`` finding that carries ``reference_emb`` and ``semantic_threshold``, its
    references and calibrated radius (``semantic_threshold`` overrides the radius); concepts
    missing from it get no semantic members. Else the prompt-ensemble embeddings with
    ``semantic_threshold``; None when there is neither."""
    d = prompt_emb.shape[1]
    df = concepts_finding
    if df is not None and {"reference_emb", "semantic_threshold"} <= set(df.columns):
        ref = np.zeros((len(concepts), d), np.float32)
        thr: dict[str, float] = {}
        rows = {str(r.concept): r for r in df.itertuples()}
        for j, c in enumerate(concepts):
            r = rows.get(c)
            if r is None or r.reference_emb is None or r.semantic_threshold is None:
                continue
            v = np.asarray(r.reference_emb, dtype=np.float32)
            if v.shape != (d,) or not np.isfinite(r.semantic_threshold):
                continue
            ref[j] = v / max(float(np.linalg.norm(v)), 1e-12)
            thr[c] = float(r.semantic_threshold)
        if semantic_threshold is not None:
            thr = dict.fromkeys(thr, float(semantic_threshold))
        if thr:
            return ref, thr, "concepts finding"
    if semantic_threshold is not None:
        return prompt_emb, dict.fromkeys(concepts, float(semantic_threshold)), "prompts"
    return None


def summarize(
    per_key: pd.DataFrame,
    n_total: int,
    n_scorable: int,
    n_unscorable: int,
    n_without_concept: int,
    n_split_view: int,
) -> dict[str, Any]:
    """The finding's counts: rows, flags (by kind) and the review list."""
    flagged = per_key["flagged"].to_numpy(dtype=bool) if len(per_key) else np.zeros(0, bool)
    review = per_key["review"].to_numpy(dtype=bool) if len(per_key) else np.zeros(0, bool)
    kinds = per_key.loc[flagged, "kind"].value_counts().to_dict() if len(per_key) else {}
    return {
        "n_total": int(n_total),
        "n_scorable": int(n_scorable),
        "n_unscorable": int(n_unscorable),
        "n_scored": int(per_key["concept"].notna().sum()) if len(per_key) else 0,
        "n_without_concept": int(n_without_concept),
        "n_split_view": int(n_split_view),
        "n_flagged": int(flagged.sum()),
        "n_review": int(review.sum()),
        "n_review_not_flagged": int((review & ~flagged).sum()),
        "flagged_by_kind": {str(k): int(v) for k, v in sorted(kinds.items())},
    }


COVERAGE_SEES = 0.9
"""A score *sees* a poison kind when its measured AUROC (served images, report seeds) is at least
this; *blind* below 0.7 (an AUROC under 0.5 means the score moves the other way: no evidence for
a flag either); partly in between."""

POISON_KINDS: dict[str, str] = {
    "dirty": "dirty-label",
    "clean": "clean-label (PGD toward the auditor's CLIP)",
    "nightshade": "Nightshade-style (PGD on the generator's VAE latent)",
    "glaze": "Glaze-style (style cloak, PGD on the VAE latent)",
}
"""The poison kinds of the benchmark (testbed ``poison_kind``), with the words the report uses.
Split-view is not measured by a score: ``split_view_v1`` is ingest's hash check, always flagged."""

MEASURED_AUROC: dict[str, dict[str, tuple[float, float]]] = {
    ALIGNMENT_COS: {"dirty": (1.00, 0.99), "clean": (0.96, 0.78), "nightshade": (0.53, 0.54), "glaze": (0.64, 0.54)},
    ALIGNMENT_GMM: {"dirty": (0.99, 0.99), "clean": (0.96, 0.77), "nightshade": (0.55, 0.54), "glaze": (0.43, 0.42)},
    CONCEPT_PULL: {"dirty": (1.00, 1.00), "clean": (1.00, 0.96), "nightshade": (0.51, 0.46), "glaze": (0.55, 0.54)},
    KDIST: {"dirty": (1.00, 1.00), "clean": (0.88, 0.74), "nightshade": (0.40, 0.37), "glaze": (0.67, 0.66)},
    LOF: {"dirty": (1.00, 1.00), "clean": (0.94, 0.76), "nightshade": (0.47, 0.45), "glaze": (0.49, 0.47)},
    SPECTRAL: {"dirty": (0.32, 0.28), "clean": (0.15, 0.14), "nightshade": (0.27, 0.30), "glaze": (0.45, 0.31)},
    CHROMA_HF: {"dirty": (0.47, 0.48), "clean": (0.94, 0.76), "nightshade": (0.99, 0.87), "glaze": (0.98, 0.63)},
    FREQ_HF: {"dirty": (0.47, 0.47), "clean": (0.46, 0.44), "nightshade": (0.53, 0.51), "glaze": (0.26, 0.19)},
    VAE_RECON: {"dirty": (0.43, 0.44), "clean": (0.45, 0.39), "nightshade": (0.74, 0.63), "glaze": (0.41, 0.27)},
    DIFFUSION_LOSS: {"dirty": (0.41, 0.42), "clean": (0.42, 0.41), "nightshade": (0.43, 0.43), "glaze": (0.33, 0.31)},
    DIFFUSION_GAIN: {"dirty": (0.56, 0.59), "clean": (0.36, 0.33), "nightshade": (0.52, 0.55), "glaze": (0.47, 0.45)},
    COMBINED: {"dirty": (1.00, 1.00), "clean": (0.96, 0.89), "nightshade": (0.96, 0.69), "glaze": (0.94, 0.55)},
}  # fmt: skip
"""AUROC per score and poison kind, (served, every image re-encoded JPEG q75 4:2:0), mean over
the report seeds of ``benchmarks/bench_poisons.py`` (``summary["report|served"]`` and
``["report|jpeg75"]`` of :data:`MEASURED_SOURCE`, rounded; a test keeps them equal). Per score:
the poisons against the other members of the attacked concept (Glaze-style: against every
ordinary row); ``combined_v1``: the default evidence, against every ordinary row."""

MEASURED_RECALL: dict[str, tuple[float, float]] = {
    "dirty": (1.0, 1.0), "clean": (0.0, 0.0), "nightshade": (0.0, 0.0), "glaze": (0.0, 0.0),
}  # fmt: skip
"""Share of the planted poisons flagged by the default rule (combined >= 6), (served, JPEG q75),
report seeds; false-flag rate on ordinary rows 0.006 served, 0.005 re-encoded."""

MEASURED_SETTING = (
    "benchmarks/bench_poisons.py: SynthLAION testbeds of 3000 rows, 1% of the attacked concept "
    "poisoned, PGD L-inf 8/255 (clean-label) and 16/255 (generator-aimed), served as JPEG q95 "
    "4:4:4; settings chosen on seed 11, reported: mean of seeds 2024 and 4242; per score the "
    "poisons against the other members of the attacked concept (Glaze-style: every ordinary "
    "row), combined_v1 against every ordinary row"
)
MEASURED_SOURCE = "benchmarks/results/poisons.json"

CHROMA_Z: dict[str, tuple[float, float]] = {
    "nightshade": (3.4, 4.5), "glaze": (2.9, 3.3), "clean": (1.4, 2.9),
    "ordinary q95": (2.4, 2.5), "ordinary max": (5.3, 5.4), "nightshade jpeg75": (0.7, 3.2),
}  # fmt: skip
"""Pooled robust z of chroma_hf_v1 (range over the planted poisons of the report seeds, served;
for ordinary rows the range of each seed's 95th percentile and maximum; "jpeg75": after JPEG
q75 re-encoding): ``chroma_z`` in :data:`MEASURED_SOURCE`'s runs."""

_NEAR_CHANCE = (FREQ_HF, ALIGNMENT_COS, ALIGNMENT_GMM, DIFFUSION_LOSS, DIFFUSION_GAIN)


def _auroc_range(scores: Sequence[str], kinds: Sequence[str]) -> str:
    v = [MEASURED_AUROC[s][k][0] for s in scores for k in kinds]
    return f"{min(v):.2f}-{max(v):.2f}"


REAL_PHOTOS: dict[str, tuple[float, float]] = {
    "perturbed PNG vs clean JPEG q90 4:2:0": (1.00, 1.00),
    "perturbed PNG vs clean PNG": (0.96, 0.99),
    "perturbed JPEG q95 4:4:4 vs clean PNG": (0.95, 1.00),
    "both re-encoded JPEG q75 4:2:0": (0.62, 0.74),
}
"""chroma_hf_v1 AUROC on real photos, (L-inf 8/255, 16/255): the report photos of
``real_photos`` in :data:`MEASURED_SOURCE` (8 colour photos of audit.testbed.photos, 4 crops
each at 128 px, the testbed's VAE-latent PGD)."""
REAL_PHOTOS_CLEAN_PNG_Z_MAX = 4.0
"""Largest chroma z of a clean PNG crop against the clean JPEG q90 crops (report photos)."""

MEASURED_INGEST: dict[str, tuple[float, float]] = {
    "dirty": (1.00, 1.00), "clean": (0.96, 0.88), "nightshade": (0.95, 0.58), "glaze": (0.92, 0.45),
}  # fmt: skip
"""combined_v1 AUROC per poison kind against every ordinary row through the user's path, (as
served, every image stored as JPEG q75 at download): ``ingest`` of :data:`MEASURED_SOURCE`
(report seeds, ``laion-audit download`` + ``embed``, then the stage with its defaults: its own
concept list from the captions), mean over the seeds, rounded; a test keeps them equal."""
MEASURED_INGEST_FPR: dict[str, tuple[float, float]] = {
    "stage_concepts": (0.0084, 0.0071), "generator_concepts": (0.0060, 0.0058),
}  # fmt: skip
"""False-flag rate on ordinary rows through the same path, (served, JPEG q75), with the stage's
own concept list and with the testbed generator's list on the same workspaces."""

COVERAGE_LIMITS: tuple[str, ...] = (
    "Ranked, not flagged: Nightshade-style, Glaze-style and clean-label PGD poisons rank high "
    f"through {CHROMA_HF} (combined AUROC {MEASURED_AUROC[COMBINED]['nightshade'][0]:.2f}, "
    f"{MEASURED_AUROC[COMBINED]['glaze'][0]:.2f}, {MEASURED_AUROC[COMBINED]['clean'][0]:.2f}) "
    f"but none was flagged at the default z >= {DEFAULT_THRESHOLD:g}: their chroma z is "
    f"{CHROMA_Z['nightshade'][0]}-{CHROMA_Z['nightshade'][1]} (Nightshade-style), "
    f"{CHROMA_Z['glaze'][0]}-{CHROMA_Z['glaze'][1]} (Glaze-style), "
    f"{CHROMA_Z['clean'][0]}-{CHROMA_Z['clean'][1]} (clean-label), while ordinary rows' 95th "
    f"percentile is {CHROMA_Z['ordinary q95'][1]} and their maximum {CHROMA_Z['ordinary max'][1]}. "
    "Read the top of the ranking or an --expected-rate review list; a lower --z-threshold "
    "flags ordinary rows too.",
    f"JPEG 4:2:0 re-encoding removes most of the chroma signal: after JPEG q75 {CHROMA_HF}'s "
    f"AUROC is {MEASURED_AUROC[CHROMA_HF]['glaze'][1]:.2f} (Glaze-style), "
    f"{MEASURED_AUROC[CHROMA_HF]['clean'][1]:.2f} (clean-label), "
    f"{REAL_PHOTOS['both re-encoded JPEG q75 4:2:0'][1]:.2f} on real photos at 16/255 and "
    f"{MEASURED_AUROC[CHROMA_HF]['nightshade'][1]:.2f} for Nightshade-style poisons, whose "
    f"chroma z falls to {CHROMA_Z['nightshade jpeg75'][0]}-{CHROMA_Z['nightshade jpeg75'][1]}; "
    f"the combined AUROC falls to {MEASURED_AUROC[COMBINED]['nightshade'][1]:.2f}, "
    f"{MEASURED_AUROC[COMBINED]['glaze'][1]:.2f} and {MEASURED_AUROC[COMBINED]['clean'][1]:.2f} "
    "(Nightshade-style, Glaze-style, clean-label).",
    f"Real photos: {CHROMA_HF} separates PGD'd photo crops served as PNG from clean ones served "
    f"as JPEG q90 4:2:0 (AUROC {REAL_PHOTOS['perturbed PNG vs clean JPEG q90 4:2:0'][1]:.2f} "
    "at 16/255) and from clean PNGs "
    f"({REAL_PHOTOS['perturbed PNG vs clean PNG'][0]:.2f} at 8/255, "
    f"{REAL_PHOTOS['perturbed PNG vs clean PNG'][1]:.2f} at 16/255), but lossless images carry "
    "more colour detail than 4:2:0 JPEGs, so in a mostly-JPEG dataset a clean PNG gets a higher "
    f"chroma z (up to {REAL_PHOTOS_CLEAN_PNG_Z_MAX} on the report photos) for its format, "
    "not for a poison.",
    f"{FREQ_HF} (frequency-domain share), the alignment scores and the generator's loss "
    f"({DIFFUSION_LOSS}, {DIFFUSION_GAIN} with --generator) stayed near or below chance for "
    "the Nightshade- and Glaze-style poisons (AUROC "
    f"{_auroc_range(_NEAR_CHANCE, ('nightshade', 'glaze'))}), as the Nightshade paper argues "
    "for alignment-, frequency- and loss-based defences: the poisons are natural-looking "
    f"images whose captions match them. The generator's VAE ({VAE_RECON}, --generator) partly "
    f"sees the Nightshade-style poisons aimed at it (AUROC {MEASURED_AUROC[VAE_RECON]['nightshade'][0]:.2f}, "
    f"{MEASURED_AUROC[VAE_RECON]['nightshade'][1]:.2f} after JPEG q75), not the Glaze-style ones "
    f"({MEASURED_AUROC[VAE_RECON]['glaze'][0]:.2f}).",
    "The embedding scores see dirty-label pairs (AUROC about 1.0; "
    f"{MEASURED_RECALL['dirty'][0]:.0%} flagged at the default rule), not pixel perturbations.",
    "Through the user's path (laion-audit download + embed, then this stage with its own "
    "concept list from the captions, not the testbed generator's): combined AUROC "
    f"{MEASURED_INGEST['nightshade'][0]:.2f} (Nightshade-style) and "
    f"{MEASURED_INGEST['glaze'][0]:.2f} (Glaze-style), both optimised against tiny-sd's VAE and "
    f"not the detector's CLIP, {MEASURED_INGEST['clean'][0]:.2f} (clean-label), "
    f"{MEASURED_INGEST['dirty'][0]:.2f} (dirty-label) as served; with every image stored as "
    f"JPEG q75 at download {MEASURED_INGEST['nightshade'][1]:.2f}, "
    f"{MEASURED_INGEST['glaze'][1]:.2f}, {MEASURED_INGEST['clean'][1]:.2f} and "
    f"{MEASURED_INGEST['dirty'][1]:.2f}. The stage's longer list (caption terms such as "
    "backgrounds, textures and products besides the objects) gives a row more concepts to be an "
    "outlier in: false-flag "
    f"rate {MEASURED_INGEST_FPR['stage_concepts'][0]:.2%} against "
    f"{MEASURED_INGEST_FPR['generator_concepts'][0]:.2%} with the generator's list on the "
    "same workspaces (served).",
    "Measured with tiny models on 64 px drawings and 128-256 px photo crops, with this "
    "project's L-infinity PGD (no perceptual constraint, visible at 16/255); the published "
    "Nightshade and Glaze optimise under a perceptual budget on larger images and may leave a "
    "weaker colour trace.",
)
"""What the scores cannot do, from the measurements above: the report and docs/poisons.md show
these lines as they are."""


def _kinds_where(by_kind: dict[str, tuple[float, float]], lo: float, hi: float) -> list[str]:
    return [k for k in POISON_KINDS if k in by_kind and lo <= by_kind[k][0] < hi]


def coverage(evidence: Sequence[str], computed: Sequence[str]) -> dict[str, Any]:
    """Which poison kinds each score was measured to see, partly see and not see
    (:data:`MEASURED_AUROC`), whether this run computed it and whether it entered the combined
    score, plus the measured limits: what the report's poison section and docs/poisons.md say
    about blind spots."""
    rows = {}
    have = set(SCORE_NAMES) | set(computed) | {COMBINED}
    for score, by_kind in MEASURED_AUROC.items():
        rows[score] = {
            "auroc": {k: a[0] for k, a in by_kind.items()},
            "auroc_jpeg_q75": {k: a[1] for k, a in by_kind.items()},
            "sees": _kinds_where(by_kind, COVERAGE_SEES, math.inf),
            "partly": _kinds_where(by_kind, 0.7, COVERAGE_SEES),
            "blind_to": _kinds_where(by_kind, -math.inf, 0.7),
            "computed": score in have,
            # a score in --evidence that this run did not compute (--no-pixel-scores) is z 0
            "in_combined": (score in set(evidence) and score in have) or score == COMBINED,
        }
    return {
        "source": MEASURED_SOURCE,
        "docs": "docs/poisons.md",
        "setting": MEASURED_SETTING,
        "rule": f"sees: AUROC >= {COVERAGE_SEES}; partly: 0.7-{COVERAGE_SEES}; blind: < 0.7",
        "kinds": dict(POISON_KINDS),
        "kind_order": list(POISON_KINDS),
        "scores": rows,
        "score_order": list(rows),
        "recall_at_default_threshold": {k: v[0] for k, v in MEASURED_RECALL.items()},
        "real_photos_chroma_auroc": {k: list(v) for k, v in REAL_PHOTOS.items()},
        "ingest_combined_auroc": {k: list(v) for k, v in MEASURED_INGEST.items()},
        "limits": list(COVERAGE_LIMITS),
    }


def coverage_markdown() -> str:
    """The coverage table and limits as markdown (docs/poisons.md holds this text verbatim)."""
    kinds = list(POISON_KINDS)
    head = ["score", *[POISON_KINDS[k].split(" (")[0] for k in kinds], "sees", "cannot see"]
    out = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    cov = coverage(DEFAULT_EVIDENCE, IMAGE_SCORES)
    for score, r in cov["scores"].items():
        name = f"`{score}`" + (" (default evidence)" if score in DEFAULT_EVIDENCE else "")
        cells = [f"{r['auroc'][k]:.2f} / {r['auroc_jpeg_q75'][k]:.2f}" for k in kinds]
        out.append(
            f"| {name} | " + " | ".join(cells)
            + f" | {', '.join(r['sees'] + [p + ' (partly)' for p in r['partly']]) or '-'}"
            + f" | {', '.join(r['blind_to']) or '-'} |"
        )  # fmt: skip
    out += [
        "",
        f"AUROC served / after JPEG q75 4:2:0 re-encoding. {MEASURED_SETTING}. "
        f"{cov['rule']} (served). Recall of the default rule (combined >= "
        f"{DEFAULT_THRESHOLD:g}), served: "
        + ", ".join(f"{k} {v[0]:.2f}" for k, v in MEASURED_RECALL.items())
        + ".",
        "",
        f"Real photos, {CHROMA_HF} AUROC of PGD'd crops against clean ones (8 colour photos of "
        "audit.testbed.photos not used for any setting, 4 crops each at 128 px, the testbed's "
        "VAE-latent PGD; intervals in docs/quality.md):",
        "",
        "| served as | L-inf 8/255 | L-inf 16/255 |",
        "|---|---|---|",
        *[f"| {k} | {a:.2f} | {b:.2f} |" for k, (a, b) in REAL_PHOTOS.items()],
        "",
        *[f"- {line}" for line in COVERAGE_LIMITS],
    ]
    return "\n".join(out) + "\n"
