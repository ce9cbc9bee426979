"""benchmarks/bench_embed.py: the DataLoader loop does the pipeline's work (same rows, same
embeddings: same chunks and padding), and the summary maths."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_embed import write_bad_corpus, write_simple_shard  # noqa: E402


def read_part(path: Path) -> list[dict]:
    from audit.workspace import restore_fixed_lists

    return restore_fixed_lists(pq.read_table(path)).to_pylist()


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_embed", REPO / "benchmarks" / "bench_embed.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_embed"] = mod  # Beam pickles its functions by reference
    spec.loader.exec_module(mod)
    return mod


def test_summary_ratio_and_result_file(tmp_path: Path) -> None:
    b = _bench()
    runs = []
    for r, (loop_s, pipe_s) in enumerate([(10.0, 11.0), (12.0, 12.0), (9.0, 20.0)]):
        for variant, s in (("loop", loop_s), ("pipeline", pipe_s)):
            runs.append(
                {"variant": variant, "repeat": r, "seconds": s, "images": 100,
                 "images_per_s": 100 / s, "shares": {"x": s / 100}}
            )  # fmt: skip
    res = b.summarise_mode(runs)
    assert res["loop"]["seconds"]["median"] == 10.0
    assert res["pipeline"]["seconds"]["median"] == 12.0
    assert res["pipeline"]["seconds"]["min"] == 11.0 and res["pipeline"]["seconds"]["max"] == 20.0
    assert res["ratio_of_medians_loop_over_pipeline"] == pytest.approx(10 / 12)
    assert res["paired_ratio_median"] == pytest.approx(10 / 11)
    assert res["target_met"] is False

    out = tmp_path / "embed.json"
    out.write_text(json.dumps({"benchmark": "embed", "model": "old layout"}))
    b.write_result(out, "a", {"v": 1})
    b.write_result(out, "b", {"v": 2})
    doc = json.loads(out.read_text())
    assert doc["schema"] == b.SCHEMA and doc["configs"] == {"a": {"v": 1}, "b": {"v": 2}}
    assert "model" not in doc


@pytest.mark.parametrize("with_copy", [False, True])
def test_loop_writes_what_the_pipeline_writes(tmp_path: Path, with_copy: bool) -> None:
    from audit.models import copy_model_available, load_clip
    from pipelines.readers import match_shards

    if with_copy and not copy_model_available("sscd"):
        pytest.skip("SSCD copy model not installed")
    b = _bench()
    shards = tmp_path / "shards"
    write_bad_corpus(shards)
    write_simple_shard(shards, 2, 7, seed=90, failed=2)  # 7 images: chunks of 4 + 3 (padded)
    specs = match_shards(str(shards))
    loader = functools.partial(load_clip, "tiny-synth", None, "cpu")
    copy_load = b.copy_loader("sscd", 64) if with_copy else None
    model, _, tok = loader()
    dim = int(model.encode_text(tok(["x"])).shape[-1])
    copy_dim = copy_load().dim if with_copy else None

    loop_dir = tmp_path / "loop"
    loop_dir.mkdir()
    loop = b.bench_loop(specs, loader, copy_load, "cpu", 4, 1, loop_dir)
    pipe = b.bench_pipeline(
        specs, loader, copy_load, "tiny", "cpu", 4, (dim, copy_dim), tmp_path / "ws", []
    )
    assert loop["images"] == pipe["images"] > 0
    assert loop["forward_passes"] == pipe["forward_passes"]
    assert pipe["instrumented"] and pipe["seconds_by_step"]["decode"] > 0
    assert pipe["seconds_by_step"]["write"] > 0
    assert (pipe["seconds_by_step"]["sscd_forward"] > 0) == with_copy
    for spec in specs:
        a = read_part(loop_dir / f"part-{spec.index:05d}.parquet")
        p = read_part(tmp_path / "ws" / "embeddings" / f"part-{spec.index:05d}.parquet")
        assert [r["key"] for r in a] == [r["key"] for r in p]
        assert [r["status"] for r in a] == [r["status"] for r in p]
        cols = ["image_emb", "text_emb"] + (["copy_emb"] if with_copy else [])
        for ra, rp in zip(a, p):
            for c in cols:
                assert (ra[c] is None) == (rp[c] is None), (ra["key"], c)
                if ra[c] is not None:
                    np.testing.assert_allclose(ra[c], rp[c], atol=2e-3)
