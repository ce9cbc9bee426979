"""``reproduce --safety sld:PRESET``: Safe Latent Diffusion changes the generation, stays
deterministic per seed, and is part of the settings fingerprint (chunks never mix)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.config import ConfigError
from pipelines.reproduce import GenerationSettings, SeededGenerator
from pipelines.safety import SLD_PRESETS, fingerprint, parse_safety, sld_parameters

PROMPT = "sunflowers by van gogh"
CONCEPT = "sunflowers, a painting by vincent van gogh"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # see tests/test_erase.py


@pytest.fixture(scope="module")
def gen() -> SeededGenerator:
    from audit.models import load_generator

    return SeededGenerator(load_generator("tiny-sd"))


def _settings(safety: str | None = None) -> GenerationSettings:
    return GenerationSettings(
        "tiny-sd", steps=6, height=64, width=64, safety=safety, safety_concept=CONCEPT
    )


def _pixels(gen: SeededGenerator, settings: GenerationSettings) -> list[np.ndarray]:
    return [np.asarray(im, np.int16) for im in gen.generate(PROMPT, [0, 1], settings)]


def test_sld_changes_generation_deterministically(gen: SeededGenerator) -> None:
    plain = _pixels(gen, _settings())
    for mode in ("sld:medium", "sld:max"):
        a, b = _pixels(gen, _settings(mode)), _pixels(gen, _settings(mode))
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), f"{mode} not deterministic"
        assert all(np.abs(x - p).mean() > 1 for x, p in zip(a, plain)), f"{mode} changed nothing"
    # the plain pipeline is untouched by having built the safe one
    assert all(np.array_equal(x, y) for x, y in zip(plain, _pixels(gen, _settings())))


def test_fingerprint_separates_safety_runs() -> None:
    plain = _settings().fingerprint()
    assert "safety" not in plain  # runs without safety keep their earlier fingerprint
    med, strong = _settings("sld:medium").fingerprint(), _settings("sld:strong").fingerprint()
    assert med != plain and med != strong
    assert med["safety_concept"] == CONCEPT and med["safety_parameters"] == SLD_PRESETS["medium"]
    other = GenerationSettings("tiny-sd", steps=6, height=64, width=64, safety="sld:medium")
    assert other.fingerprint() != med  # a different concept is a different run
    assert fingerprint(None, CONCEPT) == {}


def test_presets_and_validation() -> None:
    assert [SLD_PRESETS[k]["sld_guidance_scale"] for k in SLD_PRESETS] == [200, 1000, 2000, 5000]
    assert sld_parameters("sld:weak", 50)["sld_warmup_steps"] == 15
    assert sld_parameters("sld:weak", 20)["sld_warmup_steps"] == 6  # same share of the schedule
    assert parse_safety("sld:max") == "max"
    with pytest.raises(ValueError):
        parse_safety("sld:extreme")
    from audit.stages.reproduce import Config

    assert Config(safety="sld:strong").safety == "sld:strong"
    with pytest.raises(ConfigError, match="reproduce.safety"):
        Config(safety="sld:extreme")
