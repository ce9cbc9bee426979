"""``laion-audit filter WS --drop duplicates,poisons,failed [--out DIR]``: keep/drop lists."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from audit.config import BeamOptions, add_options, add_workspace_argument, option

logger = logging.getLogger(__name__)

ACCEPTS_BEAM_OPTIONS = True

HELP = "write keep/drop lists and optionally filtered shards"
DESCRIPTION = """\
Decides, from the findings, which samples to keep. Rules (--drop, comma-separated):
  duplicates  one sample is kept per duplicate group (groups of the --duplicate-kinds that
              share a sample are merged first, so no group loses all its members); the others
              are dropped with reason duplicates:<kind> and duplicate_of = the kept key.
              Default kinds: exact,near (caption duplicates, same caption with different images,
              are dropped only if you add "caption").
  poisons     samples the poisons finding flagged are dropped with reason poisons:<kind>.
  failed      samples whose status is not ok (failed downloads/decodes, hash mismatches,
              missing captions) are dropped with reason failed:<status>.
Writes WS/filtered/keep.parquet (key, url, caption, status), WS/filtered/drop.parquet (the same
plus reasons: list<string>, duplicate_of) and WS/filtered/summary.json (counts per reason).
Kept + dropped = input is checked. With --out DIR, a Beam pipeline rewrites the webdataset
shards of WS/shards into DIR without the dropped samples (tar + parquet + _stats.json per shard).
"""


def _rules() -> tuple[str, ...]:
    from audit.filter import RULES

    return tuple(RULES)


def _duplicate_kinds() -> tuple[str, ...]:
    from audit.filter import DUPLICATE_KINDS

    return tuple(DUPLICATE_KINDS)


@dataclass
class Config(BeamOptions):
    drop: list[str] = option(
        ["duplicates", "poisons", "failed"],
        help="rules deciding what is dropped",
        metavar="RULES",
        choices=_rules,
        nonempty=True,
    )
    duplicate_kinds: list[str] = option(
        ["exact", "near"],
        help="duplicate kinds the duplicates rule drops",
        metavar="KINDS",
        choices=_duplicate_kinds,
    )
    out: str | None = option(
        None, help="also write filtered webdataset shards into DIR (Beam pipeline)", metavar="DIR"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    add_options(parser, Config)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.errors import InputError
    from audit.filter import decide, write_decision
    from audit.workspace import Workspace

    ws = Workspace(args.workspace)
    if not ws.root.is_dir():
        raise FileNotFoundError(f"workspace {ws.root} does not exist")
    decision = decide(ws, cfg.drop, tuple(cfg.duplicate_kinds))
    meta = {"drop": cfg.drop, "duplicate_kinds": cfg.duplicate_kinds}
    c = decision.counts
    logger.info(
        "filter: %d samples, %d kept, %d dropped (%s)",
        c["input"],
        c["kept"],
        c["dropped"],
        ", ".join(f"{k}: {v}" for k, v in c.items() if ":" in k),
    )
    if cfg.out:
        from pipelines.readers import KeyCollisionError
        from pipelines.reshard import reshard

        write_decision(ws, decision, meta)  # the pipeline reads drop.parquet
        if not ws.shards_dir.is_dir():
            raise InputError(
                f"--out needs webdataset shards in {ws.shards_dir}; this workspace "
                "has none (imported embeddings?)"
            )
        try:
            meta["reshard"] = reshard(
                str(ws.shards_dir.resolve()),
                str((ws.filtered_dir / "drop.parquet").resolve()),
                _out_path(cfg.out),
                getattr(args, "beam_args", []),
                runner=cfg.runner,
                dask_local=cfg.dask_local,
            )
        except KeyCollisionError as exc:  # shards whose keys embed would have refused too
            raise InputError(f"{ws.shards_dir}: {exc}") from exc
        meta["out"] = str(cfg.out)
        logger.info(
            "filtered shards in %s: %d samples kept of %d",
            cfg.out,
            meta["reshard"]["samples_out"],
            meta["reshard"]["samples_in"],
        )
    write_decision(ws, decision, meta)
    return 0


def _out_path(out: str) -> str:
    """Local output folders as absolute paths; URLs (gs://...) as given."""
    from pathlib import Path

    return out if "://" in out else str(Path(out).resolve())
