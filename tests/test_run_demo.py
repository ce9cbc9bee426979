"""`laion-audit run audit.toml` (order, skipping finished stages, reruns downstream of a
change) with small fake stages, and `laion-audit demo` end to end (slow)."""

from __future__ import annotations

import argparse
import json
import os
import types
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

import audit.cli
from audit.cli import main
from audit.workspace import Workspace
from tests.report_fixtures import demo_workspace, make_workspace

CALLS: list[str] = []


def _fake_stage(name: str, finding: str, fail: bool = False) -> types.ModuleType:
    """A stage module following the contract: writes one finding, records its call."""
    mod = types.ModuleType(f"fake_{name}")

    @dataclass
    class Config:
        threshold: float = 0.5

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("workspace", nargs="?", default=None)
        parser.add_argument("--threshold", type=float, default=None)

    def run(cfg: Config, args: argparse.Namespace) -> int:
        CALLS.append(name)
        if fail:
            return 3
        Workspace(args.workspace).write_finding(finding, pa.table({"threshold": [cfg.threshold]}))
        return 0

    mod.HELP = mod.DESCRIPTION = f"fake {name}"
    mod.Config, mod.add_arguments, mod.run = Config, add_arguments, run
    return mod


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, types.ModuleType]:
    CALLS.clear()
    stages = {
        "dedup": _fake_stage("dedup", "duplicates"),
        "concepts": _fake_stage("concepts", "concepts"),
        "poisons": _fake_stage("poisons", "poisons", fail=True),
    }
    real = audit.cli.load_stage
    monkeypatch.setattr(
        audit.cli,
        "load_stage",
        lambda command: stages[command] if command in stages else real(command),
    )
    return stages


def _toml(path: Path, ws: Path, stages: list[str], threshold: float = 0.5) -> Path:
    path.write_text(
        f'workspace = "{ws}"\n[run]\nstages = {json.dumps(stages)}\n'
        f"[concepts]\nthreshold = {threshold}\n"
    )
    return path


def _mtime(p: Path) -> int:
    return p.stat().st_mtime_ns


def test_run_skips_finished_stages_and_reruns_after_a_change(tmp_path: Path, fakes) -> None:
    ws = make_workspace(tmp_path / "ws", findings=(), shards=False, generations=False)
    toml = _toml(tmp_path / "audit.toml", ws.root, ["dedup", "concepts"])
    assert main(["run", str(toml), "-q"]) == 0
    assert CALLS == ["dedup", "concepts"]
    report = ws.report_dir / "index.html"
    assert report.is_file() and (ws.root / "audit.toml").read_text() == toml.read_text()
    stages = json.loads((ws.root / "run.json").read_text())["stages"]
    assert {"dedup", "concepts", "report"} <= set(stages)
    first = _mtime(report)

    assert main(["run", str(toml), "-q"]) == 0  # everything finished: nothing reruns
    assert CALLS == ["dedup", "concepts"] and _mtime(report) == first

    _toml(toml, ws.root, ["dedup", "concepts"], threshold=0.7)  # concepts config changed
    assert main(["run", str(toml), "-q"]) == 0
    assert CALLS == ["dedup", "concepts", "concepts"] and _mtime(report) > first
    assert ws.read_finding("concepts").column("threshold").to_pylist() == [0.7]

    ws.finding_path("duplicates").unlink()  # an output is missing: it and all later stages rerun
    second = _mtime(report)
    assert main(["run", str(toml), "-q"]) == 0
    assert CALLS[3:] == ["dedup", "concepts"] and _mtime(report) > second

    assert main(["run", str(toml), "--force", "-q"]) == 0
    assert CALLS[5:] == ["dedup", "concepts"]


def test_a_failing_stage_stops_the_run(tmp_path: Path, fakes) -> None:
    ws = make_workspace(tmp_path / "ws", findings=(), shards=False, generations=False)
    toml = _toml(tmp_path / "audit.toml", ws.root, ["dedup", "poisons", "concepts"])
    assert main(["run", str(toml), "-q"]) == 3
    assert CALLS == ["dedup", "poisons"] and not ws.report_dir.exists()


def test_run_config_errors_are_clear(tmp_path: Path, capsys, monkeypatch) -> None:
    toml = _toml(tmp_path / "audit.toml", tmp_path / "ws", ["dedup", "bogus"])
    assert main(["run", str(toml), "-q"]) == 2
    assert "run.stages" in capsys.readouterr().err
    _toml(toml, tmp_path / "ws", ["dedup", "dedup"])
    assert main(["run", str(toml), "-q"]) == 2
    assert "lists a stage twice" in capsys.readouterr().err
    (tmp_path / "noworkspace.toml").write_text('[run]\nstages = ["report"]\n')
    assert main(["run", str(tmp_path / "noworkspace.toml"), "-q"]) == 2
    assert "no workspace" in capsys.readouterr().err
    # a stage that is not implemented fails before anything runs
    real = audit.cli.load_stage
    monkeypatch.setattr(audit.cli, "load_stage", lambda c: None if c == "concepts" else real(c))
    _toml(toml, tmp_path / "ws", ["report", "concepts"])
    assert main(["run", str(toml), "-q"]) == 2
    assert "stage 'concepts' is not implemented yet" in capsys.readouterr().err
    assert not (tmp_path / "ws" / "run.json").exists()


def test_demo_fails_clearly_when_a_stage_is_missing(tmp_path: Path, capsys, monkeypatch) -> None:
    real = audit.cli.load_stage
    monkeypatch.setattr(audit.cli, "load_stage", lambda c: None if c == "reproduce" else real(c))
    assert main(["demo", "--out", str(tmp_path / "demo"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "`laion-audit demo` needs stages that are not implemented yet" in err
    assert "reproduce" in err and "dedup" not in err
    assert not (tmp_path / "demo").exists()


def test_demo_checks_its_sections_against_the_stages_options_first(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """The demo's audit.toml sections are checked against each stage's declared options before
    anything is built: a stage whose option was renamed stops the demo at once."""
    renamed = _fake_stage("dedup", "duplicates")

    @dataclass
    class Config:
        cosine: float = 0.5  # the demo sets dedup.threshold

    renamed.Config = Config
    real = audit.cli.load_stage
    monkeypatch.setattr(audit.cli, "load_stage", lambda c: renamed if c == "dedup" else real(c))
    assert main(["demo", "--out", str(tmp_path / "demo"), "-q"]) == 2
    assert "dedup.threshold: unknown option" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path: Path, capsys) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path), "-q"]) == 3
    assert "not a demo workspace" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_demo_end_to_end(tmp_path_factory: pytest.TempPathFactory) -> None:
    ws = demo_workspace(tmp_path_factory)
    report = json.loads((ws / "report" / "report.json").read_text())
    for name in (
        "dataset",
        "duplicates",
        "concepts",
        "word_replication",
        "object_replication",
        "poisons",
        "memorization",
        "run",
    ):
        assert report[name]["status"] == "ok", (name, report[name])
    d = report["dataset"]
    assert d["n_samples"] == 300 and d["n_failed"] > 0 and d["shards"]["images_available"]
    assert report["duplicates"]["samples_in_any_group"] > 0
    assert report["memorization"]["n_prompts"] > 0
    assert report["memorization"]["rows"][0]["n"] == 8
    assert report["render"]["thumbnails"] > 0
    demo = json.loads((ws / "demo.json").read_text())
    assert demo["generations"] == 8 and demo["seconds"] > 0
    keep = ws / "filtered" / "keep.parquet"
    assert keep.is_file()
    assert os.path.isfile(ws / "report" / "index.html")
