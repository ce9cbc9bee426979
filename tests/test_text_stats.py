from __future__ import annotations

import numpy as np
import pytest

from detectors.stats import wilson_interval
from detectors.text import match_keyword, normalize_caption


def test_match_keyword_boundaries_and_plurals() -> None:
    caps = ["Two DOGS on grass", "a catalog of cars", "Van  Gogh - starry night", "van-gogh",
            None, "", "the dog's bone", "vangogh"]
    assert match_keyword(caps, "dog").tolist() == [True, False, False, False, False, False,
                                                   True, False]
    assert match_keyword(caps, "cat").tolist() == [False] * 8
    assert match_keyword(caps, "van gogh").tolist() == [False, False, True, True, False, False,
                                                        False, False]
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
