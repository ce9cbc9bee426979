"""``laion-audit replication``: word-level replication, for given keywords or discovered ones."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

from audit.config import ConfigError, Options, add_options, add_workspace_argument, option
from audit.copies import SPACES
from audit.vocabulary import flatten_list

logger = logging.getLogger(__name__)

HELP = "word-level replication: keywords whose images collapse onto few clusters"
DESCRIPTION = """\
Word-level replication (Naseh et al. 2023). For each keyword, the samples whose caption contains
it (word boundaries, case-insensitive, plurals) are selected; failed samples (no image
embedding) are dropped, and with --max-tokens N so are captions longer than N tokens of the
workspace model's tokenizer (77 = CLIP's context, as the paper did). The subset's images are
clustered by their copy-detection descriptors (copy_emb, SSCD) at cosine --threshold (default
0.5, one value for every keyword; FAISS range search, star clustering). Workspaces without
copy_emb (or --space clip) cluster CLIP image embeddings at a threshold calibrated on random
pairs of each subset instead (a copy is at most --beta = 5% as far as the median random pair),
clusters are sorted by size and described: size, share, tightness (mean/min cosine to the medoid),
representative keys, characteristic words (CountVectorizer, stop words and the keyword removed,
ranked by lift over the subset) and the words reproduction prompts are built from. For each
flagged cluster the "frequency matters" check clusters the images whose captions contain the
cluster's words but not the keyword, and reports the share that is the same work.

A cluster is flagged when it has at least --flag-min-size images, at least --flag-min-share of
the subset, and its mean cosine to the medoid is at least the copy threshold.

--discover ranks frequent caption words and bigrams by a replication score (share of the subset
in its three largest tight clusters of at least --discover-min-size images x ln(subset size));
a term whose replicated images a broader term already covers ("starry night" inside "van gogh")
is folded into it; the top K are analysed as keywords. Every scanned term is a test (its
largest tight cluster's share of its subset against --flag-min-share, one-sided exact
binomial): a term is only discovered when its Benjamini-Hochberg q-value over all scanned terms
is at most --fdr (0.05); the JSON names the correction and the q-level.

Writes WS/findings/word_replication.parquet (one row per cluster of at least --min-cluster-size
images; member keys as a list column) and word_replication.json (parameters, calibration,
discovery ranking, timings).
"""

FINDING = "word_replication"

CLUSTERING, WORDS = "clustering", "words and discovery"


@dataclass
class Config(Options):
    keyword: list[str] = option(
        [],
        help='keyword to analyse, e.g. "van gogh"',
        aliases=("-k",),
        metavar="WORDS",
        repeat=True,
    )
    discover: bool = option(
        False,
        help="rank frequent caption words/bigrams by replication score and analyse the top K",
    )
    top: int = option(3, help="discovered terms to analyse", ge=1, metavar="K")
    fdr: float = option(
        0.05,
        help="discovery: Benjamini-Hochberg q-level over every scanned term",
        gt=0,
        le=1,
        metavar="Q",
    )
    max_tokens: int = option(
        0,
        help="drop captions longer than N tokens of the model's tokenizer (0 = keep all; 77 = "
        "CLIP's context, as Naseh et al. did)",
        ge=0,
        metavar="N",
    )
    threshold: float | None = option(
        None,
        help="cosine copy threshold",
        gt=-1,
        lt=1,
        default_help="0.5 for the copy descriptor; in CLIP space calibrated on random pairs of "
        "each subset",
        group=CLUSTERING,
    )
    space: str = option(
        "auto",
        help="embedding near-copies are clustered in: copy (copy_emb, SSCD), clip (image_emb), "
        "or auto (copy when the embeddings have it)",
        choices=SPACES,
        group=CLUSTERING,
    )
    beta: float = option(
        0.05,
        help="copy = cosine distance at most BETA x the random-pair median distance",
        gt=0,
        lt=1,
        metavar="BETA",
        group=CLUSTERING,
    )
    floor: float = option(0.8, help="lowest calibrated threshold", group=CLUSTERING)
    ceiling: float = option(0.99, help="highest calibrated threshold", group=CLUSTERING)
    method: str = option(
        "star",
        help="star clustering or connected components of the threshold graph",
        choices=("star", "components"),
        group=CLUSTERING,
    )
    min_cluster_size: int = option(3, help="smallest cluster written", ge=2, group=CLUSTERING)
    flag_min_size: int = option(
        5, help="smallest flagged cluster, in images", ge=2, group=CLUSTERING
    )
    flag_min_share: float = option(
        0.02, help="smallest flagged share of the subset", ge=0, le=1, group=CLUSTERING
    )
    top_words: int = option(10, help="characteristic words per cluster", ge=1, group=WORDS)
    min_support: float = option(
        0.2,
        help="a characteristic word is in at least this share of the cluster's captions",
        gt=0,
        le=1,
        group=WORDS,
    )
    min_subset: int = option(
        20, help="smallest keyword subset analysed or discovered", ge=2, group=WORDS
    )
    max_terms: int = option(
        300, help="most frequent words/bigrams scored by --discover", ge=1, group=WORDS
    )
    discover_min_size: int = option(
        10,
        help="discovery counts clusters of at least this many images: with hundreds of terms "
        "tested at once, only unambiguous replications should rank a term",
        ge=2,
        group=WORDS,
    )
    seed: int = option(0, help="seed of the pair sampling", group=WORDS)

    def check(self) -> None:
        self.keyword = flatten_list(self.keyword)
        if not -1.0 < self.floor <= self.ceiling < 1.0:
            raise ConfigError(
                "replication.floor: need -1 < floor <= ceiling < 1 "
                f"(got {(self.floor, self.ceiling)!r})"
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    add_options(parser, Config)


def calibration_text(cfg: Config, space: Any, threshold: float | None) -> str:
    """How copies were decided, for the finding's JSON."""
    rule = "a cluster is flagged when size >= flag_min_size, share >= flag_min_share and "
    if space.is_copy:
        return (
            f"copy threshold {threshold} on the copy descriptor ({space.model}; "
            f"{space.source if cfg.threshold is None else 'option'}) for every subset; "
            + rule
            + "the mean cosine of its members to the medoid is >= the threshold"
        )
    return (
        "copy threshold per subset = clip(1 - beta * (1 - median cosine of 20,000 random image "
        f"pairs of the subset), {cfg.floor}, {cfg.ceiling}) with beta={cfg.beta} unless "
        "--threshold is given; "
        + rule
        + "the mean cosine distance of its members to the medoid is <= beta x the random-pair "
        "median distance"
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.copies import copy_space
    from audit.errors import InputError
    from audit.inputs import caption_token_mask, load_samples
    from audit.workspace import Workspace
    from detectors.replication import (
        NAME,
        WORD_PARAMS,
        discover_keywords,
        finding_table,
        keyword_replication,
    )

    if not cfg.keyword and not cfg.discover:
        raise ConfigError("replication: give --keyword WORDS (repeatable) or --discover")
    ws = Workspace(args.workspace)
    t0 = time.perf_counter()
    space = copy_space(ws, cfg.space, "replication.space")
    samples = load_samples(ws, copy=space.is_copy)
    if len(samples.keys) < 2:
        raise InputError(f"{ws.root}: fewer than 2 samples with an image embedding")
    token_ok, tokenizer = caption_token_mask(ws.model(), samples.captions, cfg.max_tokens)
    # the copy descriptor at its fixed threshold, or CLIP calibrated per subset (None)
    if space.is_copy and samples.copy is not None:
        x = samples.copy
        threshold = cfg.threshold if cfg.threshold is not None else space.threshold
    else:
        x, threshold = samples.emb, cfg.threshold
    keywords = list(cfg.keyword)
    sources = dict.fromkeys(keywords, "keyword")
    discovery: dict[str, Any] | None = None
    if cfg.discover:
        ok_rows = token_ok.nonzero()[0]
        chosen, discovery = discover_keywords(
            x[ok_rows], [samples.captions[i] for i in ok_rows],
            top=cfg.top, fdr=cfg.fdr, flag_min_share=cfg.flag_min_share, threshold=threshold,
            beta=cfg.beta, floor=cfg.floor, ceiling=cfg.ceiling, min_subset=cfg.min_subset,
            max_terms=cfg.max_terms, cluster_min_size=cfg.discover_min_size, seed=cfg.seed,
        )  # fmt: skip
        for term in chosen:
            if term not in sources:
                keywords.append(term)
                sources[term] = "discovered"
        logger.info("discovery: top terms %s", ", ".join(chosen) or "(none with replication)")
    params = {k: getattr(cfg, k) for k in WORD_PARAMS}
    rows: list[dict[str, Any]] = []
    summaries = []
    for kw in keywords:
        r, s = keyword_replication(
            x, samples.captions, samples.keys, kw, usable=token_ok, threshold=threshold,
            source=sources[kw], min_subset=cfg.min_subset, **params,
        )  # fmt: skip
        rows.extend(r)
        summaries.append(s)
    meta = {
        "detector": NAME,
        "parameters": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "tokenizer": tokenizer,
        "n_total": samples.n_total,
        "n_failed_dropped": samples.n_failed,
        "n_usable": int(len(samples.keys)),
        "keywords": summaries,
        "discovery": discovery,
        "space": space.to_dict(),
        "calibration": calibration_text(cfg, space, threshold),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    ws.write_finding(FINDING, finding_table(rows), meta)
    n_flag = sum(1 for r in rows if r["flagged"])
    logger.info("%d clusters written for %d keywords, %d flagged", len(rows), len(keywords), n_flag)
    return 0
