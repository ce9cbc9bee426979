"""``laion-audit report WS``: the HTML + JSON memorization / audit report."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from audit.config import Options, add_options, add_workspace_argument, option

logger = logging.getLogger(__name__)

HELP = "write the HTML + JSON memorization report"
DESCRIPTION = """\
Collects every finding of the workspace into WS/report/report.json (schema: docs/report_schema.md)
and renders WS/report/index.html: dataset summary (counts by status, hash mismatches, model),
duplicates (group-size histogram, largest groups as thumbnail strips), concept sparsity,
word-level replication (cluster sizes, top words, member thumbnails), object-level replication
(rates with 95% intervals, examples), poison candidates (ranked gallery with every score and the
reason), reproduction (replication rate with interval per prompt, similarity histogram,
generations beside their nearest training images) and run metadata (versions, config, timings).

The page is self-contained: inline CSS, no scripts, no external requests; figures and thumbnails
are PNG files under WS/report/img/. Thumbnails are read by sample key from the webdataset shards
in WS/shards; a workspace without shards (imported embeddings) lists keys instead. Sections whose
stage has not run say so. Lists are capped (--top-*) and the caps are recorded in report.json.
"""


@dataclass
class Config(Options):
    out: str | None = option(None, help="write the report here instead of WS/report", metavar="DIR")
    thumb_size: int = option(96, help="thumbnail size in pixels", ge=16, le=512, metavar="PX")
    top_groups: int = option(
        8, help="largest duplicate groups shown per kind", ge=0, le=10_000, metavar="N"
    )
    top_clusters: int = option(8, help="clusters shown per keyword", ge=0, le=10_000, metavar="N")
    top_poisons: int = option(
        24, help="top-ranked poison candidates shown", ge=0, le=10_000, metavar="N"
    )
    top_prompts: int = option(60, help="reproduction prompts listed", ge=0, le=10_000, metavar="N")
    pairs: int = option(
        6,
        help="generation / nearest-training pairs shown per prompt",
        ge=0,
        le=10_000,
        metavar="N",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    add_options(parser, Config)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.report import Limits, write_report
    from audit.workspace import Workspace

    ws = Workspace(args.workspace)
    if not ws.root.is_dir():
        raise FileNotFoundError(f"workspace {ws.root} does not exist")
    limits = Limits(
        groups=cfg.top_groups,
        clusters=cfg.top_clusters,
        poisons=cfg.top_poisons,
        prompts=cfg.top_prompts,
        generations=cfg.pairs,
    )
    path = write_report(ws, cfg.out, limits=limits, thumb_size=cfg.thumb_size)
    logger.info("report written: %s", path.resolve())
    return 0
