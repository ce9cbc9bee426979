"""Running several stages in order on one workspace, as ``laion-audit run`` and ``laion-audit
demo`` do: check every section first, skip finished stages, stop at the first failure.

Stages are loaded through :func:`audit.cli.load_stage` (this module imports no stage), each
with the options of its own ``audit.toml`` section; the namespace a stage gets is built from its
declared options (``Config`` fields), all unset, so the section fills them.

A stage is finished when its outputs exist, its record in ``WS/run.json`` has the same
configuration, and it finished after every stage before it in the list (so a rerun of ``embed``
also reruns the detectors after it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

from audit.config import check_section, merge, to_dict
from audit.errors import NotImplementedStage

logger = logging.getLogger(__name__)

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
"""What ``laion-audit run`` runs when ``[run] stages`` is not set."""

DEMO_STAGES = [
    "download",
    "embed",
    "dedup",
    "concepts",
    "replication",
    "objects",
    "poisons",
    "reproduce",
    "filter",
    "report",
]
"""What ``laion-audit demo`` runs on its testbed."""

NOT_IN_RUN = {"run", "demo", "testbed", "erase", "attack"}
"""Commands that are not workspace stages (no workspace, or models in and models out)."""


def runnable_stages() -> tuple[str, ...]:
    """The commands ``[run] stages`` may list."""
    from audit.cli import SUBCOMMANDS

    return tuple(name for name, _ in SUBCOMMANDS if name not in NOT_IN_RUN)


def _outputs() -> dict[str, list[str]]:
    from pipelines.common import STAGE_FINDINGS

    out: dict[str, list[str]] = {
        "download": ["shards/*.parquet"],
        "embed": ["embeddings/model.json", "embeddings/part-*.SUCCESS"],
        "import-embeddings": ["embeddings/part-*.SUCCESS"],
        "report": ["report/index.html", "report/report.json"],
        "filter": ["filtered/keep.parquet", "filtered/drop.parquet"],
    }
    for stage, finding in STAGE_FINDINGS.items():
        out[stage] = [f"findings/{finding}.parquet", f"findings/{finding}.json"]
    return out


def stage_outputs(command: str, mod: ModuleType) -> list[str] | None:
    """Glob patterns (relative to WS) that must all match for a stage to count as finished: the
    module's ``OUTPUTS``, else the files it is known to write (its finding for a detector); a
    stage with no known outputs always reruns."""
    return getattr(mod, "OUTPUTS", None) or _outputs().get(command)


def section_of(command: str) -> str:
    return command.replace("-", "_")


def stage_namespace(
    command: str, mod: ModuleType, ws: str, parent: argparse.Namespace | None = None
) -> argparse.Namespace:
    """The namespace a stage would get from ``laion-audit COMMAND WS`` with no options: every
    declared option (``Config`` field) unset, so that the TOML section fills it."""
    ns = argparse.Namespace(**{f.name: None for f in dataclasses.fields(mod.Config) if f.init})
    ns.workspace = ws
    ns.command = command
    ns.beam_args = []
    ns.verbose = getattr(parent, "verbose", 0)
    ns.quiet = getattr(parent, "quiet", False)
    ns.config = None
    return ns


def _normal(obj: Any) -> Any:
    from pipelines.common import jsonable

    return json.loads(json.dumps(jsonable(obj), sort_keys=True))


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


def missing_stages(stages: list[str]) -> list[str]:
    """The stages of ``stages`` that are not implemented (no module)."""
    from audit.cli import load_stage

    return [s for s in stages if load_stage(s) is None]


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

    mods = {s: load_stage_module(s) for s in stages}
    for command, mod in mods.items():
        section = section_of(command)
        ns = stage_namespace(command, mod, ws, parent)
        merge(mod.Config, section, file_cfg.get(section), ns)
    listed = {section_of(s) for s in stages} | {"run"}
    for command, _ in SUBCOMMANDS:
        section = section_of(command)
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

    mods = {s: load_stage_module(s) for s in stages}  # fail before running anything
    workspace = Workspace(ws)
    not_before = 0.0
    for i, command in enumerate(stages, 1):
        mod = mods[command]
        section = section_of(command)
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
