"""``laion-audit report WS``: the HTML + JSON memorization / audit report."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from audit.config import require
from audit.stages import add_workspace_argument

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
class Config:
    out: str | None = None
    thumb_size: int = 96
    top_groups: int = 8
    top_clusters: int = 8
    top_poisons: int = 24
    top_prompts: int = 60
    pairs: int = 6

    def __post_init__(self) -> None:
        require(
            16 <= self.thumb_size <= 512,
            "report.thumb_size",
            "must be in [16, 512] pixels",
            self.thumb_size,
        )
        for name in ("top_groups", "top_clusters", "top_poisons", "top_prompts", "pairs"):
            value = getattr(self, name)
            require(0 <= value <= 10_000, f"report.{name}", "must be in [0, 10000]", value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="write the report here instead of WS/report"
    )
    parser.add_argument(
        "--thumb-size",
        dest="thumb_size",
        type=int,
        default=None,
        metavar="PX",
        help="thumbnail size in pixels (default 96)",
    )
    parser.add_argument(
        "--top-groups",
        dest="top_groups",
        type=int,
        default=None,
        metavar="N",
        help="largest duplicate groups shown per kind (default 8)",
    )
    parser.add_argument(
        "--top-clusters",
        dest="top_clusters",
        type=int,
        default=None,
        metavar="N",
        help="clusters shown per keyword (default 8)",
    )
    parser.add_argument(
        "--top-poisons",
        dest="top_poisons",
        type=int,
        default=None,
        metavar="N",
        help="top-ranked poison candidates shown (default 24)",
    )
    parser.add_argument(
        "--top-prompts",
        dest="top_prompts",
        type=int,
        default=None,
        metavar="N",
        help="reproduction prompts listed (default 60)",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=None,
        metavar="N",
        help="generation / nearest-training pairs shown per prompt (default 6)",
    )


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
