"""``laion-audit concepts WS [--concepts LIST_OR_FILE]``: word and semantic concept frequency."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.config import ConfigError, require
from audit.errors import InputError
from audit.stages import add_workspace_argument

logger = logging.getLogger(__name__)

HELP = "word and semantic frequency per concept, with a sparsity flag (concept sparsity)"
DESCRIPTION = """\
Measure how often each concept occurs among the captions, two ways:

  word frequency      share of captions naming the concept (word boundaries, case-insensitive,
                      simple plurals)
  semantic frequency  share of captions whose text embedding is within a cosine radius of the
                      concept's reference embedding, found with a FAISS range search

Reference embedding: the mean text embedding of the captions that name the concept (its caption
centroid, so captions about it that do not use the word land nearby), or, for concepts named by
fewer than --min-matches captions (or with --reference prompt), the concept's prompt-ensemble
embedding from the workspace's model. A caption counts only for its nearest concept unless
--overlap is given (use it for lists with overlapping concepts such as cat, kitten).

The radius is calibrated on the workspace unless --radius is given: the cosine threshold that
best separates captions that name a concept from those that do not (maximum F1 over all
caption-concept pairs, one radius for all concepts). Concepts with a semantic frequency below
--sparse-below (default 0.0004 = 0.04%, the Nightshade paper's figure) are flagged sparse: tens
of poisons suffice to corrupt them.

Concepts: --concepts a,b,c or --concepts FILE (one per line; # comments). Default, from the
data: the entries of the general object list shipped with laion-audit (audit/vocab/objects.txt,
the 80 MS-COCO classes and ~300 more common things) that at least one caption names, then the
100 most frequent caption words and collocations (stop words, stock boilerplate, picture kinds
and colours left out). A concept no caption names has no reference to measure and is left out
of the default; name it with --concepts to see its count (0).

Writes WS/findings/concepts.parquet (concept, word_count, word_freq, semantic_count,
semantic_freq, semantic_threshold, sparse, n_total, n_semantic, semantic_to_word, reference,
reference_emb) and WS/findings/concepts.json (detector, radius and its calibration, timings).
If no reference can be built (no text embeddings, or a model that cannot be loaded here and no
caption names the concept), the semantic columns are null and the json says why.
"""

REFERENCES = ("centroid", "prompt")


@dataclass
class Config:
    """Options of ``laion-audit concepts`` (``[concepts]`` in audit.toml)."""

    concepts: str | None = None
    radius: float | None = None
    sparse_below: float = 0.0004
    reference: str = "centroid"
    min_matches: int = 5
    overlap: bool = False
    device: str = "cpu"
    batch_size: int = 256

    def __post_init__(self) -> None:
        require(
            self.reference in REFERENCES,
            "concepts.reference",
            f"must be one of {', '.join(REFERENCES)}",
            self.reference,
        )
        require(self.min_matches >= 1, "concepts.min_matches", "must be >= 1", self.min_matches)
        if self.radius is not None:
            require(
                -1.0 <= self.radius < 1.0,
                "concepts.radius",
                "must be a cosine in [-1, 1)",
                self.radius,
            )
        require(
            0.0 <= self.sparse_below <= 1.0,
            "concepts.sparse_below",
            "must be a frequency in [0, 1]",
            self.sparse_below,
        )
        require(self.batch_size >= 1, "concepts.batch_size", "must be >= 1", self.batch_size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    parser.add_argument(
        "--concepts",
        default=None,
        metavar="LIST_OR_FILE",
        help="comma-separated concepts, or a file with one per line "
        "(default: general-list objects the captions name + frequent "
        "caption terms)",
    )
    parser.add_argument(
        "--radius",
        type=float,
        default=None,
        metavar="COS",
        help="semantic cosine radius (default: calibrated on the workspace)",
    )
    parser.add_argument(
        "--sparse-below",
        dest="sparse_below",
        type=float,
        default=None,
        metavar="FREQ",
        help="flag concepts rarer than this (default 0.0004)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        choices=REFERENCES,
        help="what the radius is measured from: the caption centroid of the "
        "captions naming the concept (default) or its prompt ensemble",
    )
    parser.add_argument(
        "--min-matches",
        dest="min_matches",
        type=int,
        default=None,
        metavar="N",
        help="captions naming a concept needed for its centroid "
        "(default 5; fewer: prompt ensemble)",
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        default=None,
        help="a caption counts for every concept within the radius (default: "
        "only for its nearest concept)",
    )
    parser.add_argument("--device", default=None, help="torch device for the concept prompts")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=None)


DEFAULT_SOURCE = "data: general object list entries named by a caption + frequent caption terms"


def resolve_concepts(
    spec: str | None, captions: list[str | None] | None = None
) -> tuple[list[str], str]:
    """The concept list and where it came from: a file, a comma list, or (no ``spec``) the
    data's own (:func:`audit.vocabulary.default_concepts` over ``captions``)."""
    if not spec:
        from audit.vocabulary import default_concepts

        out = default_concepts(captions or [])
        if not out:
            raise InputError(
                "concepts: no caption names a general-list object or a frequent term; give "
                "--concepts LIST_OR_FILE"
            )
        return out, DEFAULT_SOURCE
    p = Path(spec)
    if p.is_file():
        lines = [ln.split("#", 1)[0].strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        items, source = [ln for ln in lines if ln], f"file {p}"
    else:
        if ("/" in spec or spec.endswith(".txt")) and "," not in spec:
            raise ConfigError(f"concepts.concepts: file not found (got {spec!r})")
        items, source = [c.strip() for c in spec.split(",") if c.strip()], "option"
    out: list[str] = []
    for c in items:
        if c.lower() not in {o.lower() for o in out}:
            out.append(c)
    if not out:
        raise ConfigError(f"concepts.concepts: no concepts given (got {spec!r})")
    return out, source


def _text_matrix(col: Any) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    dim = col.type.list_size
    flat = pc.list_flatten(col.filter(pa.array(valid))).to_numpy(zero_copy_only=False)
    return valid, flat.astype(np.float32).reshape(-1, dim)


def concept_embeddings(ws: Any, concepts: list[str], cfg: Config) -> tuple[np.ndarray, str]:
    """Prompt-ensemble embeddings of the concepts with the workspace's model (the same
    ensemble the poisons stage uses, so the radius means the same there)."""
    from audit.models import load_clip
    from audit.stages.poisons import concept_text_embeddings

    info = ws.model_info()
    name = info.get("model") or info.get("name")
    if not name:
        raise InputError("embeddings/model.json names no model")
    model, _, tokenizer = load_clip(name, pretrained=info.get("pretrained"), device=cfg.device)
    emb = concept_text_embeddings(
        model, tokenizer, concepts, device=cfg.device, batch_size=cfg.batch_size
    )
    return emb, str(name)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.workspace import Workspace
    from detectors import concepts as dc

    t0 = time.perf_counter()
    ws = Workspace(args.workspace)
    if cfg.concepts:
        concepts, source = resolve_concepts(cfg.concepts)  # a bad option fails before reading
    ds = ws.embeddings()
    names = set(ds.schema.names)
    if "caption" not in names:
        raise InputError(f"embeddings lack a caption column (in {ws.embeddings_dir})")
    cols = ["caption"] + (["text_emb"] if "text_emb" in names else [])
    t = ws.load_embeddings(columns=cols)
    captions = t.column("caption").to_pylist()
    if not cfg.concepts:
        concepts, source = resolve_concepts(None, captions)
    n_total = sum(1 for c in captions if c)
    matches = dc.word_matches(captions, concepts)
    word = matches.sum(axis=0)
    timings = {"word": round(time.perf_counter() - t0, 3)}
    meta: dict[str, Any] = {
        "detector": dc.NAME,
        "concepts_source": source,
        "sparse_below": cfg.sparse_below,
        "n_rows": t.num_rows,
        "reference": cfg.reference,
        "exclusive": not cfg.overlap,
    }

    semantic = radius = kinds = refs = None
    n_sem = 0
    try:
        if "text_emb" not in names:
            raise InputError("embeddings have no text_emb column")
        valid, temb = _text_matrix(t.column("text_emb"))
        if temb.shape[0] == 0:
            raise InputError("no caption has a text embedding")
        t1 = time.perf_counter()
        mvalid = matches[valid]
        need_prompt = cfg.reference == "prompt" or bool(
            (mvalid.sum(axis=0) < cfg.min_matches).any()
        )
        prompt = None
        if need_prompt:
            try:
                prompt, meta["model"] = concept_embeddings(ws, concepts, cfg)
            except (InputError, RuntimeError, OSError) as exc:
                # ModelError is a RuntimeError: e.g. imported embeddings of an unavailable model
                if cfg.reference == "prompt":
                    raise
                logger.warning(
                    "prompt embeddings unavailable (%s): concepts named by fewer "
                    "than %d captions get no semantic count",
                    exc,
                    cfg.min_matches,
                )
                meta["prompt_error"] = f"{type(exc).__name__}: {exc}"
            if prompt is not None and prompt.shape[1] != temb.shape[1]:
                raise InputError(
                    f"model {meta['model']!r} gives {prompt.shape[1]}-d text "
                    f"embeddings but the workspace's are {temb.shape[1]}-d: "
                    "model.json does not match"
                )
        min_matches = cfg.min_matches if cfg.reference == "centroid" else mvalid.shape[0] + 1
        refs, kinds = dc.concept_references(temb, mvalid, prompt, min_matches)
        sims = dc.concept_similarities(temb, refs)
        if not cfg.overlap:
            sims = dc.exclusive_similarities(sims)
        if cfg.radius is not None:
            radius, meta["radius_source"] = float(cfg.radius), "option"
        else:
            cal = dc.calibrate_radius(sims, mvalid)
            radius = cal["radius"]
            meta["radius_source"] = "calibrated (max F1 against word matches)"
            meta["calibration"] = cal
            logger.info(
                "semantic radius %.3f (F1 %.3f against word matches; median cosine "
                "%.3f matched vs %.3f unmatched)",
                radius,
                cal["f1"],
                cal["median_sim_matched"],
                cal["median_sim_unmatched"],
            )
        semantic = dc.semantic_counts(temb, refs, radius, exclusive=not cfg.overlap)
        n_sem = int(temb.shape[0])
        meta["references"] = dict(zip(concepts, kinds))
        timings["semantic"] = round(time.perf_counter() - t1, 3)
    except (InputError, ValueError, RuntimeError, OSError) as exc:
        logger.warning("semantic frequency not computed: %s", exc)
        meta["semantic_error"] = f"{type(exc).__name__}: {exc}"
        semantic = radius = kinds = refs = None

    table = dc.concept_table(
        concepts, word, n_total, semantic, n_sem, radius, cfg.sparse_below, kinds, refs
    )
    timings["total"] = round(time.perf_counter() - t0, 3)
    meta.update(
        radius=radius,
        timings=timings,
        n_sparse=int(np.asarray(table.column("sparse").to_pylist(), bool).sum()),
    )
    ws.write_finding("concepts", table, meta)
    return 0
