"""``laion-audit concepts WS [--concepts LIST_OR_FILE]``: word and semantic concept frequency."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

from audit.config import Options, add_options, add_workspace_argument, option
from audit.vocabulary import DEFAULT_CONCEPTS_SOURCE as DEFAULT_SOURCE  # noqa: F401 - poisons
from detectors.concepts import REFERENCES

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


@dataclass
class Config(Options):
    """Options of ``laion-audit concepts`` (``[concepts]`` in audit.toml)."""

    concepts: str | None = option(
        None,
        help="comma-separated concepts, or a file with one per line",
        metavar="LIST_OR_FILE",
        default_help="general-list objects the captions name + frequent caption terms",
    )
    radius: float | None = option(
        None,
        help="semantic cosine radius",
        ge=-1,
        lt=1,
        metavar="COS",
        default_help="calibrated on the workspace",
    )
    sparse_below: float = option(
        0.0004, help="flag concepts rarer than this", ge=0, le=1, metavar="FREQ"
    )
    reference: str = option(
        "centroid",
        help="what the radius is measured from: the caption centroid of the captions naming "
        "the concept, or its prompt ensemble",
        choices=REFERENCES,
    )
    min_matches: int = option(
        5,
        help="captions naming a concept needed for its centroid (fewer: prompt ensemble)",
        ge=1,
        metavar="N",
    )
    overlap: bool = option(
        False,
        help="a caption counts for every concept within the radius (default: only for its "
        "nearest concept)",
    )
    device: str = option("cpu", help="torch device for the concept prompts")
    batch_size: int = option(256, help="text-encoder batch size", ge=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    add_options(parser, Config)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit import vocabulary
    from audit.errors import InputError
    from audit.inputs import load_captions
    from audit.workspace import Workspace
    from detectors import concepts as dc

    t0 = time.perf_counter()
    ws = Workspace(args.workspace)
    if cfg.concepts:  # a bad option fails before reading
        concepts, source = vocabulary.resolve_concepts(cfg.concepts)
    data = load_captions(ws)
    captions = data.captions
    if not cfg.concepts:
        concepts, source = vocabulary.resolve_concepts(None, captions)
    n_total = sum(1 for c in captions if c)
    matches = dc.word_matches(captions, concepts)
    word = matches.sum(axis=0)
    timings = {"word": round(time.perf_counter() - t0, 3)}
    meta: dict[str, Any] = {
        "detector": dc.NAME,
        "concepts_source": source,
        "sparse_below": cfg.sparse_below,
        "n_rows": data.n_rows,
        "reference": cfg.reference,
        "exclusive": not cfg.overlap,
    }
    sem: dict[str, Any] = {}
    n_sem = 0
    try:
        valid, temb = data.text_matrix()
        if temb.shape[0] == 0:
            raise InputError("no caption has a text embedding")
        t1 = time.perf_counter()
        mvalid = matches[valid]
        prompt = None
        if dc.needs_prompts(mvalid, cfg.reference, cfg.min_matches):
            try:
                prompt, meta["model"] = vocabulary.concept_embeddings(
                    ws.model(), concepts, cfg.device, cfg.batch_size
                )
            except (InputError, RuntimeError, OSError) as exc:
                # ModelError is a RuntimeError: e.g. imported embeddings of an unavailable model
                if cfg.reference == "prompt":
                    raise
                logger.warning(
                    "prompt embeddings unavailable (%s): concepts named by fewer than %d "
                    "captions get no semantic count",
                    exc,
                    cfg.min_matches,
                )
                meta["prompt_error"] = f"{type(exc).__name__}: {exc}"
            if prompt is not None and prompt.shape[1] != temb.shape[1]:
                raise InputError(
                    f"model {meta['model']!r} gives {prompt.shape[1]}-d text embeddings but "
                    f"the workspace's are {temb.shape[1]}-d: model.json does not match"
                )
        sem = dc.semantic_frequency(
            temb, mvalid, prompt, reference=cfg.reference, min_matches=cfg.min_matches,
            exclusive=not cfg.overlap, radius=cfg.radius,
        )  # fmt: skip
        if sem["calibration"] is None:
            meta["radius_source"] = "option"
        else:
            cal = meta["calibration"] = sem["calibration"]
            meta["radius_source"] = "calibrated (max F1 against word matches)"
            logger.info(
                "semantic radius %.3f (F1 %.3f against word matches; median cosine %.3f "
                "matched vs %.3f unmatched)",
                cal["radius"],
                cal["f1"],
                cal["median_sim_matched"],
                cal["median_sim_unmatched"],
            )
        n_sem = int(temb.shape[0])
        meta["references"] = dict(zip(concepts, sem["kinds"]))
        timings["semantic"] = round(time.perf_counter() - t1, 3)
    except (InputError, ValueError, RuntimeError, OSError) as exc:
        logger.warning("semantic frequency not computed: %s", exc)
        meta["semantic_error"] = f"{type(exc).__name__}: {exc}"
        sem = {}

    table = dc.concept_table(
        concepts, word, n_total, sem.get("counts"), n_sem, sem.get("radius"), cfg.sparse_below,
        sem.get("kinds"), sem.get("refs"),
    )  # fmt: skip
    timings["total"] = round(time.perf_counter() - t0, 3)
    meta.update(
        radius=sem.get("radius"),
        timings=timings,
        n_sparse=sum(bool(x) for x in table.column("sparse").to_pylist()),
    )
    ws.write_finding("concepts", table, meta)
    return 0
