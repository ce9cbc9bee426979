"""docs/quality.md is built from the benchmarks' quality rows (benchmarks/quality.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality  # noqa: E402


def test_a_row_reported_on_its_tuning_seeds_is_refused():
    with pytest.raises(ValueError, match="reported on tuning seeds"):
        quality.row("dedup", "recall", 0.9, tune=[0, 1], report=[1, 2], setting="served")


def test_the_table_holds_every_row_and_names_files_without_rows(tmp_path):
    r = quality.row(
        "dedup", "precision", 0.97, ci=(0.95, 0.98), n=400, tune=[0], report=[5], setting="ingest"
    )
    (tmp_path / "a.json").write_text(json.dumps({"quality_rows": [r]}))
    (tmp_path / "speed.json").write_text(json.dumps({"seconds": 3}))
    out = tmp_path / "quality.md"
    quality.main(["--results", str(tmp_path), "--out", str(out)])
    text = out.read_text()
    assert "| dedup | precision | 0.970 | [0.950, 0.980] | 400 | ingest | 0 | 5 |" in text
    assert "`speed.json`" in text


def test_rows_measured_with_other_model_weights_are_marked(tmp_path):
    r = quality.row("objects", "precision", 0.9, tune=[0], report=[5], setting="served")
    now = quality.shipped_models(["tiny-synth"])
    old = {"tiny-synth": "0" * 64}
    for name, models in (("current", now), ("old", old), ("unrecorded", None)):
        data = {"quality_rows": [r], **({"models": models} if models else {})}
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    out = tmp_path / "quality.md"
    quality.main(["--results", str(tmp_path), "--out", str(out)])
    text = out.read_text()
    assert "| current.json |" in text
    assert "| old.json (earlier tiny-synth weights) |" in text
    assert "| unrecorded.json (model weights not recorded) |" in text
    with pytest.raises(ValueError, match="unknown tiny model"):
        quality.shipped_models(["ViT-B-32"])
