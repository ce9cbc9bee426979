"""Small statistics shared by detectors."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(
    successes: int | np.ndarray, n: int | np.ndarray, z: float = 1.959963984540054
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion (95% by default).

    Works elementwise on arrays; ``n == 0`` gives the uninformative interval (0, 1).
    """
    k = np.asarray(successes, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n_arr > 0, k / n_arr, 0.0)
        denom = 1.0 + z * z / n_arr
        centre = (p + z * z / (2 * n_arr)) / denom
        half = z * np.sqrt(p * (1 - p) / n_arr + z * z / (4 * n_arr * n_arr)) / denom
        low = np.where(n_arr > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
        high = np.where(n_arr > 0, np.clip(centre + half, 0.0, 1.0), 1.0)
        # exact ends: no successes -> 0 (not 3e-18), all successes -> 1
        low = np.where(k <= 0, 0.0, low)
        high = np.where((n_arr > 0) & (k >= n_arr), 1.0, high)
    if np.ndim(low) == 0:
        return float(low), float(high)  # type: ignore[return-value]
    return low, high


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The one AUROC of the project: area under the ROC curve (ties count half; NaN scores rank lowest; NaN if one class)."""
    labels = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(s)
    return float((r[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise rows as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


MAD_TO_SIGMA = 1.4826
"""The median absolute deviation times this estimates a Gaussian's standard deviation."""


def median_mad(x: np.ndarray) -> tuple[float, float]:
    """Median and scaled MAD (``1.4826 * median |x - median|``, a robust standard deviation with
    a 50% breakdown point) of the finite values of ``x``; ``(0.0, 0.0)`` when there are none."""
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if not x.size:
        return 0.0, 0.0
    med = float(np.median(x))
    return med, float(np.median(np.abs(x - med)) * MAD_TO_SIGMA)


def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD) (:func:`median_mad`, over the finite values); a constant
    input gives zeros, NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    med, mad = median_mad(x)
    if not math.isfinite(mad) or mad <= 1e-12:
        return np.zeros_like(x)
    return (x - med) / mad


FDR_METHOD = "benjamini-hochberg"
DEFAULT_FDR = 0.05
"""Default q-level of the Benjamini-Hochberg correction of findings drawn from many tests."""


def binomial_pvalue(
    successes: int | np.ndarray, n: int | np.ndarray, p0: float | np.ndarray
) -> np.ndarray:
    """One-sided exact binomial p-value ``P(X >= successes)`` for ``X ~ Binomial(n, p0)``:
    the evidence that a rate exceeds ``p0``. ``n == 0`` or ``successes == 0`` gives 1;
    ``p0 <= 0`` with a success gives 0, ``p0 >= 1`` gives 1."""
    from scipy.stats import binom

    k = np.asarray(successes, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    p = np.clip(np.asarray(p0, dtype=np.float64), 0.0, 1.0)
    out = np.where((k <= 0) | (n_arr <= 0), 1.0, binom.sf(k - 1, n_arr, p))
    out = np.where((k > 0) & (n_arr > 0) & (p <= 0), 0.0, out)
    out = np.where(p >= 1, 1.0, out)
    return np.clip(out, 0.0, 1.0)


def benjamini_hochberg(
    pvalues: np.ndarray | list[float], weights: np.ndarray | list[float] | None = None
) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of a family of tests.

    ``q_(i) = min over j >= i of p_(j) * m / j`` (p sorted ascending, ``m`` = number of tests,
    capped at 1); rejecting every test with ``q <= alpha`` controls the false discovery rate at
    ``alpha`` for independent or positively dependent tests. The same numbers as
    ``scipy.stats.false_discovery_control(p, method="bh")`` (scipy >= 1.11), kept here so that
    older scipy works too. NaN p-values are not tests: their q is NaN and they do not count in
    ``m``.

    ``weights`` (weighted BH, Genovese, Roeder & Wasserman 2006): non-negative prior weights
    fixed before the data are tested, rescaled to mean 1 over the tests; the procedure runs on
    ``p / w``. A test with twice the weight needs half the evidence; FDR control holds as for
    BH. Weight 0 never rejects.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.shape != p.shape or (w < 0).any() or not np.isfinite(w).all():
            raise ValueError("weights must be finite, non-negative and one per p-value")
        mean = w[ok].mean() if m else 1.0
        if mean <= 0:
            raise ValueError("weights must not all be 0")
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(w > 0, p / (w / mean), np.inf)  # weight 0: never rejected (q = 1)
    if m == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    q[order] = np.clip(np.minimum.accumulate(scaled[::-1])[::-1], 0.0, 1.0)
    return q
