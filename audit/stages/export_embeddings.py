"""``laion-audit export-embeddings WS --out DIR``: write clip-retrieval's embedding layout."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from audit.config import ConfigError, Options, add_options, add_workspace_argument, option, require

logger = logging.getLogger(__name__)

HELP = "export embeddings in clip-retrieval's layout"
DESCRIPTION = """\
Write WS/embeddings in clip-retrieval's layout, one partition per part:
DIR/img_emb/img_emb_N.npy and DIR/text_emb/text_emb_N.npy (float16, L2-normalised, row-aligned)
and DIR/metadata/metadata_N.parquet (image_path, key, url, caption, sha256, width, height,
status, error, clip_score, has_text_emb). Rows without an image embedding go to
DIR/failed/failed_N.parquet, a caption that was not embedded is a zero row in text_emb with
has_text_emb false, and DIR/model.json records the model: `import-embeddings DIR` gives back
exactly the same workspace tables.
"""


@dataclass
class Config(Options):
    out: str | None = option(None, help="output folder (required)", metavar="DIR")
    overwrite: bool = option(False, help="replace an existing export in DIR")

    def check(self) -> None:
        require(
            bool(self.out),
            "export_embeddings.out",
            "an output folder is required (--out)",
            self.out,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    add_options(parser, Config)


def run(cfg: Config, args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    import pyarrow.parquet as pq

    from audit.workspace import Workspace, restore_fixed_lists
    from pipelines.interop import export_part

    ws = Workspace(args.workspace)
    parts = ws.embedding_parts()
    if not parts:
        ws.embeddings()  # raises FileNotFoundError with the message saying what to run
    out = Path(cfg.out)
    existing = out / "img_emb"
    if existing.exists() and any(existing.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(
                f"export_embeddings.out: {out} already holds an export; pass "
                "--overwrite to replace it"
            )
        for sub in ("img_emb", "text_emb", "copy_emb", "metadata", "failed"):
            shutil.rmtree(out / sub, ignore_errors=True)
    indices = [int(p.stem.split("-")[1]) for p in parts]
    pad = len(str(max(indices)))
    embedded = failed = 0
    for index, part in zip(indices, parts):
        table = restore_fixed_lists(pq.read_table(part))
        n = export_part(table, index, out, pad)
        embedded += n["embedded"]
        failed += n["failed"]
    info = ws.model()
    if info.raw:
        ws.write_json(out.resolve() / "model.json", info.to_dict())
    logger.info(
        "exported %d parts to %s: %d rows with embeddings, %d failed rows (in failed/)",
        len(parts),
        out,
        embedded,
        failed,
    )
    return 0
