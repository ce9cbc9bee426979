"""``laion-audit import-embeddings DIR --out WS``: audit precomputed clip-retrieval embeddings."""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from dataclasses import dataclass

from audit.config import ConfigError, Options, add_options, add_positional, option, require
from audit.errors import InputError

logger = logging.getLogger(__name__)

HELP = "import clip-retrieval embeddings (img_emb/, text_emb/, metadata/)"
DESCRIPTION = """\
Import embeddings in clip-retrieval's layout (img_emb/img_emb_N.npy, optional
text_emb/text_emb_N.npy, metadata/metadata_N.parquet), e.g. LAION's published embeddings, into
WS/embeddings/part-NNNNN.parquet, so the audit runs with no image download. Keys come from the
metadata's key (else image_path); url, caption, sha256, width and height are taken when present.
Rows are status ok (clip-retrieval writes only embedded samples); without text embeddings,
text_emb and clip_score are null. float32 arrays are stored as float16. WS/embeddings/model.json
records what is known: --model/--pretrained, or DIR/model.json written by export-embeddings.
"""


@dataclass
class Config(Options):
    input: str | None = option(
        None,
        help="clip-retrieval output folder (img_emb/, text_emb/, metadata/)",
        metavar="DIR",
        cli=False,  # positional: add_arguments
    )
    model: str | None = option(
        None,
        help="name of the model that made the embeddings (recorded in model.json; e.g. ViT-L-14)",
    )
    pretrained: str | None = option(None, help="its pretrained tag, if known")
    overwrite: bool = option(False, help="replace embeddings already in the workspace")

    def check(self) -> None:
        require(
            bool(self.input),
            "import_embeddings.input",
            "the folder to import is required (DIR)",
            self.input,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_positional(parser, Config, "input")
    parser.add_argument(
        "--out",
        dest="workspace",
        default=None,
        metavar="WS",
        help="workspace to write WS/embeddings into",
    )
    add_options(parser, Config)


def run(cfg: Config, args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from audit.workspace import Workspace, check_invariant
    from pipelines.common import FAILED_STATUSES, ModelInfo, embedding_schema
    from pipelines.interop import InteropError, find_partitions, import_partition

    src = Path(cfg.input)
    if not src.is_dir():
        raise InputError(f"import folder not found: {src}")
    ws = Workspace(args.workspace)
    try:
        partitions = find_partitions(src)
    except InteropError as exc:
        raise InputError(str(exc)) from exc
    if ws.embeddings_dir.exists() and any(ws.embeddings_dir.glob("part-*")):
        if not cfg.overwrite:
            raise ConfigError(
                f"import_embeddings: {ws.embeddings_dir} already holds "
                "embeddings; pass --overwrite to replace them"
            )
        for p in list(ws.embeddings_dir.glob("part-*")) + [ws.embeddings_dir / "_stats.json"]:
            p.unlink(missing_ok=True)

    counts: Counter[str] = Counter()
    keys: list[str] = []
    dim = None
    norms: list[float] = []
    converted = False
    for n, suffix in partitions:
        try:
            part = import_partition(src, n, suffix)
        except InteropError as exc:
            raise InputError(str(exc)) from exc
        d = part.table.schema.field("image_emb").type.list_size
        if dim is None:
            dim = d
        elif d != dim:
            raise InputError(f"{part.files['img_emb']}: dimension {d}, earlier files {dim}")
        copy_dim = (
            part.table.schema.field("copy_emb").type.list_size
            if "copy_emb" in part.table.column_names
            else None
        )
        table = part.table.cast(embedding_schema(dim, copy_dim))
        part_counts = Counter(table.column("status").to_pylist())
        counts.update(part_counts)
        keys.extend(table.column("key").to_pylist())
        sample = table.column("image_emb").drop_null().slice(0, 256).to_pylist()
        norms.extend(float(np.linalg.norm(np.asarray(v, np.float32))) for v in sample)
        converted = converted or part.converted_float32
        ws.write_part(
            ws.part_path(n),
            table,
            {"source": part.files, "counts": dict(sorted(part_counts.items()))},
        )
    inv = check_invariant(keys, keys, stage="import-embeddings")

    recorded = src / "model.json"  # written by export-embeddings (older ones: model, embed_dim)
    info = ModelInfo.from_dict(
        json.loads(recorded.read_text()) if recorded.is_file() else {}
    ).to_dict()
    if cfg.model:
        info["name"] = cfg.model
    if cfg.pretrained:
        info["pretrained"] = cfg.pretrained
    normalized = bool(norms) and bool(np.allclose(norms, 1.0, atol=1e-2))
    info.update(
        {
            "dim": dim,
            "dtype": "float16",
            "normalized": normalized,
            "imported_from": str(src.resolve()),
        }
    )
    info.setdefault("source", "import-embeddings")
    if converted:
        info["converted_from_float32"] = True
    if info["name"] is None:
        logger.warning(
            "model unknown: pass --model NAME so later stages (and the report) know "
            "which model made these embeddings"
        )
    if not normalized and norms:
        logger.warning(
            "imported image embeddings are not L2-normalised (mean norm %.3f); "
            "cosine-based detectors expect unit vectors",
            float(np.mean(norms)),
        )
    ws.write_json(ws.embeddings_dir / "model.json", info)
    total = sum(counts.values())
    failed = sum(v for k, v in counts.items() if k in FAILED_STATUSES)
    ws.write_json(
        ws.embeddings_dir / "_stats.json",
        {
            "source": str(src.resolve()),
            "parts": len(partitions),
            "rows": total,
            "input_rows": inv["input"],
            "counts": dict(sorted(counts.items())),
            "failed": failed,
            "usable": total - failed,
        },
    )
    logger.info(
        "imported %d rows in %d partitions from %s (dim %d): %s",
        total,
        len(partitions),
        src,
        dim,
        ", ".join(f"{v:,} {k}" for k, v in sorted(counts.items())),
    )
    return 0
