"""Small statistics shared by detectors."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int | np.ndarray, n: int | np.ndarray,
                    z: float = 1.959963984540054) -> tuple[np.ndarray, np.ndarray]:
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


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise rows as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD); a constant input gives zeros."""
    x = np.asarray(x, dtype=np.float64)
    med = np.median(x) if x.size else 0.0
    mad = np.median(np.abs(x - med)) * 1.4826 if x.size else 0.0
    if not math.isfinite(mad) or mad <= 1e-12:
        return np.zeros_like(x)
    return (x - med) / mad
