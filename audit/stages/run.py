"""``laion-audit run audit.toml``: run the configured stages in order, skip finished ones, end
with the report."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from audit.config import ConfigError, check_section, load_toml, merge, require, to_dict
from audit.errors import NotImplementedStage

logger = logging.getLogger(__name__)

HELP = "run the stages configured in audit.toml, then the report"
DESCRIPTION = """\
Runs the stages listed in [run] stages = [...] in that order, each with the options of its own
section of the TOML (e.g. [embed], [dedup]); the workspace is the top-level `workspace` key
(relative paths are relative to the current directory) or --workspace. The report is always the
last stage (appended when not listed). The TOML is copied to WS/audit.toml, so single stages run
later (`laion-audit dedup WS`) use the same options. Every section is checked before anything is
written: a rejected value stops the run (exit 2) without creating or touching the workspace.

A stage is skipped when it is finished: its outputs exist, its record in WS/run.json has the
same configuration, and it finished after every stage before it in the list (so a rerun of
`embed` also reruns the detectors after it). --force reruns everything.

Example audit.toml:
    workspace = "my-audit"
    [run]
    stages = ["embed", "dedup", "concepts", "replication", "objects", "poisons", "reproduce"]
    [embed]
    model = "ViT-B-32"
    pretrained = "laion2b_s34b_b79k"
"""

DEFAULT_STAGES = [
    "embed",
    "dedup",
    "concepts",
    "replication",
    "objects",
    "poisons",
    "reproduce",
    "report",
]
NOT_IN_RUN = {"run", "demo", "testbed", "erase", "attack"}  # no workspace: models in, models out
WS_OUT_STAGES = {"download", "import-embeddings"}
"""Stages that create the workspace with ``--out WS`` rather than a positional WS."""

OUTPUTS: dict[str, list[str]] = {
    "download": ["shards/*.parquet"],
    "embed": ["embeddings/model.json", "embeddings/part-*.SUCCESS"],
    "import-embeddings": ["embeddings/part-*.SUCCESS"],
    "dedup": ["findings/duplicates.parquet", "findings/duplicates.json"],
    "concepts": ["findings/concepts.parquet", "findings/concepts.json"],
    "replication": ["findings/word_replication.parquet", "findings/word_replication.json"],
    "objects": ["findings/object_replication.parquet", "findings/object_replication.json"],
    "poisons": ["findings/poisons.parquet", "findings/poisons.json"],
    "reproduce": ["findings/memorization.parquet", "findings/memorization.json"],
    "report": ["report/index.html", "report/report.json"],
    "filter": ["filtered/keep.parquet", "filtered/drop.parquet"],
}
"""Glob patterns (relative to WS) that must all match for a stage to count as finished. A stage
module may override with ``OUTPUTS = [...]``; a stage with no known outputs always reruns."""


@dataclass
class Config:
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    force: bool = False

    def __post_init__(self) -> None:
        from audit.cli import SUBCOMMANDS

        known = [name for name, _ in SUBCOMMANDS if name not in NOT_IN_RUN]
        require(bool(self.stages), "run.stages", "needs at least one stage", self.stages)
        for s in self.stages:
            require(
                s in known,
                "run.stages",
                f"unknown or not runnable stage; known: {', '.join(known)}",
                s,
            )
        dup = sorted({s for s in self.stages if self.stages.count(s) > 1})
        require(not dup, "run.stages", "lists a stage twice", dup)
        if "report" not in self.stages:
            self.stages = [*self.stages, "report"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        metavar="TOML",
        help="audit.toml with `workspace`, [run] stages and one section per stage",
    )
    parser.add_argument(
        "--workspace",
        default=None,
        metavar="WS",
        help="workspace folder (overrides `workspace` in the TOML)",
    )
    parser.add_argument(
        "--force", action="store_true", default=None, help="rerun every stage, finished or not"
    )


def stage_namespace(
    command: str, mod: ModuleType, ws: str, parent: argparse.Namespace
) -> argparse.Namespace:
    """The argparse namespace a stage would get from ``laion-audit COMMAND WS`` with no
    options: every option at its default (None), so the TOML section fills it."""
    p = argparse.ArgumentParser(add_help=False)
    mod.add_arguments(p)
    ns = argparse.Namespace(
        **{a.dest: a.default for a in p._actions if a.dest != argparse.SUPPRESS}
    )
    ns.workspace = ws
    if command in WS_OUT_STAGES and hasattr(ns, "out"):
        ns.out = ws
    ns.command = command
    ns.beam_args = []
    ns.verbose = getattr(parent, "verbose", 0)
    ns.quiet = getattr(parent, "quiet", False)
    ns.config = None
    return ns


def _normal(obj: Any) -> Any:
    from audit.workspace import _jsonable

    return json.loads(json.dumps(_jsonable(obj), sort_keys=True))


def stage_outputs(command: str, mod: ModuleType) -> list[str] | None:
    return getattr(mod, "OUTPUTS", None) or OUTPUTS.get(command)


def is_finished(
    ws_root: Path, command: str, mod: ModuleType, cfg: Any, record: dict | None, not_before: float
) -> tuple[bool, str]:
    """(finished?, why not) for one stage; see the module docstring for the rule."""
    patterns = stage_outputs(command, mod)
    if not patterns:
        return False, "no known outputs"
    missing = [p for p in patterns if not any(ws_root.glob(p))]
    if missing:
        return False, f"missing {', '.join(missing)}"
    if not record:
        return False, "no record in run.json"
    if _normal(record.get("config", {})) != _normal(to_dict(cfg)):
        return False, "configuration changed"
    if float(record.get("finished", 0)) < not_before:
        return False, "an earlier stage ran after it"
    return True, ""


def load_stage_module(command: str) -> ModuleType:
    from audit.cli import load_stage

    mod = load_stage(command)
    if mod is None:
        raise NotImplementedStage(
            f"`laion-audit run`: stage '{command}' is not implemented "
            f"yet (remove it from [run] stages to run the others)"
        )
    return mod


def validate(
    file_cfg: dict[str, Any],
    ws: str,
    stages: list[str],
    parent: argparse.Namespace | None = None,
) -> dict[str, ModuleType]:
    """Check the whole configuration before anything is written; returns the stage modules.

    Each listed stage's section is merged and validated as its run will be (raises
    ``ConfigError`` naming the field, or ``NotImplementedStage``); the sections of stages that
    are not listed (kept in WS/audit.toml for later single-stage runs, whose command line may
    add required options) have their keys and value types checked.
    """
    from audit.cli import SUBCOMMANDS, load_stage

    parent = parent or argparse.Namespace(verbose=0, quiet=False)
    mods = {s: load_stage_module(s) for s in stages}
    for command, mod in mods.items():
        section = command.replace("-", "_")
        merge(mod.Config, section, file_cfg.get(section), stage_namespace(command, mod, ws, parent))
    listed = {s.replace("-", "_") for s in stages} | {"run"}
    for command, _ in SUBCOMMANDS:
        section = command.replace("-", "_")
        values = file_cfg.get(section)
        if section in listed or not isinstance(values, dict):
            continue
        mod = load_stage(command)
        if mod is not None:
            check_section(mod.Config, section, values)
    return mods


def run_stages(
    file_cfg: dict[str, Any],
    ws: str,
    stages: list[str],
    force: bool = False,
    parent: argparse.Namespace | None = None,
) -> int:
    """Run ``stages`` on workspace ``ws`` with ``file_cfg`` (a parsed audit.toml); returns the
    first non-zero exit code, or 0."""
    from audit.cli import dispatch
    from audit.workspace import Workspace

    parent = parent or argparse.Namespace(verbose=0, quiet=False)
    mods = {s: load_stage_module(s) for s in stages}  # fail before running anything
    workspace = Workspace(ws)
    not_before = 0.0
    for i, command in enumerate(stages, 1):
        mod = mods[command]
        section = command.replace("-", "_")
        ns = stage_namespace(command, mod, ws, parent)
        cfg = merge(mod.Config, section, file_cfg.get(section), ns)
        runs = workspace.read_json("run.json", default={}) or {}
        record = (runs.get("stages") or {}).get(section)
        done, why = (
            (False, "--force")
            if force
            else is_finished(workspace.root, command, mod, cfg, record, not_before)
        )
        if done:
            logger.info(
                "[%d/%d] %s: finished earlier with the same configuration, skipped",
                i,
                len(stages),
                command,
            )
            not_before = max(not_before, float(record.get("finished", 0)))
            continue
        logger.info("[%d/%d] %s: running (%s)", i, len(stages), command, why)
        code = dispatch(command, mod, ns, file_cfg)
        if code != 0:
            logger.error("stage %s failed with exit code %d; later stages not run", command, code)
            return code
        runs = workspace.read_json("run.json", default={}) or {}
        rec = (runs.get("stages") or {}).get(section) or {}
        not_before = max(not_before, float(rec.get("finished", 0)))
    return 0


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.workspace import Workspace, atomic_write_bytes

    toml_path = Path(args.config)
    file_cfg = load_toml(toml_path)
    ws = args.workspace
    if not ws:
        raise ConfigError("run: no workspace (set `workspace` in the TOML or pass --workspace)")
    listed = {s.replace("-", "_") for s in cfg.stages} | {"run"}
    extra = sorted(k for k, v in file_cfg.items() if isinstance(v, dict) and k not in listed)
    if extra:
        logger.info("sections not used by this run (stages not listed): %s", ", ".join(extra))
    validate(file_cfg, ws, cfg.stages, parent=args)  # before the workspace is created
    workspace = Workspace(ws)
    workspace.root.mkdir(parents=True, exist_ok=True)
    if toml_path.resolve() != workspace.config_path.resolve():
        atomic_write_bytes(workspace.config_path, toml_path.read_bytes())
    code = run_stages(file_cfg, ws, cfg.stages, force=cfg.force, parent=args)
    if code == 0:
        logger.info("report: %s", (workspace.report_dir / "index.html").resolve())
    return code
