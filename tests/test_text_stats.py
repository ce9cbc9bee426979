from __future__ import annotations

import numpy as np
import pytest

from detectors.stats import wilson_interval
from detectors.text import match_keyword, normalize_caption


def test_match_keyword_boundaries_and_plurals() -> None:
    caps = [
        "Two DOGS on grass",
        "a catalog of cars",
        "Van  Gogh - starry night",
        "van-gogh",
        None,
        "",
        "the dog's bone",
        "vangogh",
    ]
    assert match_keyword(caps, "dog").tolist() == [
        True,
        False,
        False,
        False,
        False,
        False,
        True,
        False,
    ]
    assert match_keyword(caps, "cat").tolist() == [False] * 8
    assert match_keyword(caps, "van gogh").tolist() == [
        False,
        False,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    with pytest.raises(ValueError):
        match_keyword(caps, "  ")


def test_normalize_caption() -> None:
    assert normalize_caption("  Photo of a RED Dog!!  ") == "photo of a red dog"
    assert normalize_caption(None) == ""


def test_wilson() -> None:
    lo, hi = wilson_interval(10, 100)
    assert lo == pytest.approx(0.0552, abs=1e-3) and hi == pytest.approx(0.1744, abs=1e-3)
    lo, hi = wilson_interval(np.array([0, 5]), np.array([0, 5]))
    assert lo[0] == 0 and hi[0] == 1 and hi[1] == pytest.approx(1.0)
    # the ends are exact, not float noise: 0 of n has ci_low 0.0, n of n has ci_high 1.0
    lo, hi = wilson_interval(np.array([0, 100]), np.array([100, 100]))
    assert lo[0] == 0.0 and hi[1] == 1.0 and 0 < hi[0] < 0.04 and 0.96 < lo[1] < 1


def test_benjamini_hochberg_matches_scipy_and_skips_nan() -> None:
    from detectors.stats import benjamini_hochberg

    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=200), [1e-5, 3e-4, 0.01]])
    q = benjamini_hochberg(p)
    scipy_stats = pytest.importorskip("scipy.stats")
    if hasattr(scipy_stats, "false_discovery_control"):  # scipy >= 1.11
        assert np.allclose(q, scipy_stats.false_discovery_control(p, method="bh"))
    assert np.all(q >= p) and np.all(q <= 1)
    assert benjamini_hochberg([0.01, np.nan, 0.04]).tolist()[::2] == pytest.approx([0.02, 0.04])
    assert np.isnan(benjamini_hochberg([np.nan])[0]) and benjamini_hochberg([]).size == 0


def test_binomial_pvalue_is_the_upper_tail() -> None:
    from scipy.stats import binom

    from detectors.stats import binomial_pvalue

    assert binomial_pvalue(5, 100, 0.02) == pytest.approx(binom.sf(4, 100, 0.02))
    assert binomial_pvalue(0, 100, 0.02) == 1.0 and binomial_pvalue(3, 0, 0.5) == 1.0
    assert binomial_pvalue(1, 10, 0.0) == 0.0 and binomial_pvalue(10, 10, 1.0) == 1.0


def test_median_mad_is_a_robust_sigma_over_finite_values() -> None:
    from detectors.stats import median_mad, robust_z

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 20_000)
    med, s = median_mad(np.concatenate([x, [np.nan, np.inf]]))
    assert med == pytest.approx(3.0, abs=0.05) and s == pytest.approx(2.0, rel=0.03)
    # 20% gross outliers at 1e6 move the scale by < 50% (breakdown point 50%); the SD explodes
    y = np.concatenate([x, np.full(5_000, 1e6)])
    assert median_mad(y)[1] < 3.0 < 1e5 < float(np.std(y))
    assert median_mad([]) == (0.0, 0.0) and median_mad([np.nan]) == (0.0, 0.0)
    assert np.all(robust_z(np.ones(5)) == 0)
    z = robust_z(x)
    assert np.median(z) == pytest.approx(0.0, abs=1e-9) and np.median(np.abs(z)) * 1.4826 == (
        pytest.approx(1.0)
    )
