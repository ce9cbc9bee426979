"""``laion-audit run audit.toml``: run the configured stages in order, skip finished ones, end
with the report."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from audit.config import ConfigError, Options, add_options, load_toml, option, require
from audit.runner import DEFAULT_STAGES, runnable_stages, section_of

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


@dataclass
class Config(Options):
    stages: list[str] = option(
        DEFAULT_STAGES,
        help="the stages to run, in order (the report is appended when not listed)",
        choices=runnable_stages,
        nonempty=True,
        cli=False,  # [run] stages in the TOML
    )
    force: bool = option(False, help="rerun every stage, finished or not")

    def check(self) -> None:
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
    add_options(parser, Config)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.runner import run_stages, validate
    from audit.workspace import Workspace, atomic_write_bytes

    toml_path = Path(args.config)
    file_cfg = load_toml(toml_path)
    ws = args.workspace
    if not ws:
        raise ConfigError("run: no workspace (set `workspace` in the TOML or pass --workspace)")
    listed = {section_of(s) for s in cfg.stages} | {"run"}
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
