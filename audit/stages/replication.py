"""``laion-audit replication``: word-level replication, for given keywords or discovered ones."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from audit.config import ConfigError, require
from audit.copies import SPACES, CopySpace, copy_space
from audit.errors import InputError
from audit.stages import add_workspace_argument

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


# --------------------------------------------------------------------------------------------
# config


def _flatten_keywords(values: Sequence[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        for part in str(v).split(","):
            part = " ".join(part.split())
            if part and part not in out:
                out.append(part)
    return out


@dataclass
class Config:
    keyword: list[str] = field(default_factory=list)
    discover: bool = False
    top: int = 3
    max_tokens: int = 0
    threshold: float | None = None
    space: str = "auto"
    beta: float = 0.05
    floor: float = 0.8
    ceiling: float = 0.99
    method: str = "star"
    min_cluster_size: int = 3
    flag_min_size: int = 5
    discover_min_size: int = 10
    flag_min_share: float = 0.02
    top_words: int = 10
    min_support: float = 0.2
    min_subset: int = 20
    max_terms: int = 300
    fdr: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        self.keyword = _flatten_keywords(self.keyword)
        require(self.top >= 1, "replication.top", "must be >= 1", self.top)
        require(self.max_tokens >= 0, "replication.max_tokens", "must be >= 0", self.max_tokens)
        if self.threshold is not None:
            require(
                -1.0 < self.threshold < 1.0,
                "replication.threshold",
                "must be a cosine in (-1, 1)",
                self.threshold,
            )
        require(0 < self.beta < 1, "replication.beta", "must be in (0, 1)", self.beta)
        require(0 < self.fdr <= 1, "replication.fdr", "must be in (0, 1]", self.fdr)
        require(self.space in SPACES, "replication.space", f"must be one of {', '.join(SPACES)}",
                self.space)  # fmt: skip
        require(
            -1.0 < self.floor <= self.ceiling < 1.0,
            "replication.floor",
            "need -1 < floor <= ceiling < 1",
            (self.floor, self.ceiling),
        )
        require(
            self.method in ("star", "components"),
            "replication.method",
            "must be 'star' or 'components'",
            self.method,
        )
        require(
            self.min_cluster_size >= 2,
            "replication.min_cluster_size",
            "must be >= 2",
            self.min_cluster_size,
        )
        require(self.flag_min_size >= 2, "replication.flag_min_size", "must be >= 2",
                self.flag_min_size)  # fmt: skip
        require(
            0.0 <= self.flag_min_share <= 1.0,
            "replication.flag_min_share",
            "must be in [0, 1]",
            self.flag_min_share,
        )
        require(self.top_words >= 1, "replication.top_words", "must be >= 1", self.top_words)
        require(
            0.0 < self.min_support <= 1.0,
            "replication.min_support",
            "must be in (0, 1]",
            self.min_support,
        )
        require(self.min_subset >= 2, "replication.min_subset", "must be >= 2", self.min_subset)
        require(
            self.discover_min_size >= 2,
            "replication.discover_min_size",
            "must be >= 2",
            self.discover_min_size,
        )
        require(self.max_terms >= 1, "replication.max_terms", "must be >= 1", self.max_terms)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    parser.add_argument(
        "--keyword",
        "-k",
        action="append",
        default=None,
        metavar="WORDS",
        help='keyword to analyse, e.g. "van gogh"; repeat or give a comma list for several',
    )
    parser.add_argument(
        "--discover",
        action="store_true",
        default=None,
        help="rank frequent caption words/bigrams by replication score and analyse the top K",
    )
    parser.add_argument(
        "--top", type=int, default=None, metavar="K", help="discovered terms to analyse (3)"
    )
    parser.add_argument(
        "--fdr",
        type=float,
        default=None,
        metavar="Q",
        help="discovery: Benjamini-Hochberg q-level over every scanned term (0.05)",
    )
    parser.add_argument(
        "--max-tokens",
        dest="max_tokens",
        type=int,
        default=None,
        metavar="N",
        help="drop captions longer than N tokens of the model's tokenizer (0 = keep all; "
        "77 = CLIP's context, as Naseh et al. did)",
    )
    g = parser.add_argument_group("clustering")
    g.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="cosine copy threshold (default 0.5 for the copy descriptor; in CLIP space "
        "calibrated on random pairs of each subset)",
    )
    g.add_argument(
        "--space",
        choices=SPACES,
        default=None,
        help="embedding near-copies are clustered in: copy (copy_emb, SSCD), clip (image_emb), "
        "or auto (copy when the embeddings have it; default)",
    )
    g.add_argument(
        "--beta",
        type=float,
        default=None,
        help="copy = cosine distance at most BETA x the random-pair median distance (0.05)",
    )
    g.add_argument("--floor", type=float, default=None, help="lowest calibrated threshold (0.8)")
    g.add_argument(
        "--ceiling", type=float, default=None, help="highest calibrated threshold (0.99)"
    )
    g.add_argument(
        "--method",
        choices=("star", "components"),
        default=None,
        help="star clustering (default) or connected components of the threshold graph",
    )
    g.add_argument(
        "--min-cluster-size",
        dest="min_cluster_size",
        type=int,
        default=None,
        help="smallest cluster written (3)",
    )
    g.add_argument(
        "--flag-min-size",
        dest="flag_min_size",
        type=int,
        default=None,
        help="smallest flagged cluster (5 images)",
    )
    g.add_argument(
        "--flag-min-share",
        dest="flag_min_share",
        type=float,
        default=None,
        help="smallest flagged share of the subset (0.02)",
    )
    w = parser.add_argument_group("words and discovery")
    w.add_argument(
        "--top-words",
        dest="top_words",
        type=int,
        default=None,
        help="characteristic words per cluster (10)",
    )
    w.add_argument(
        "--min-support",
        dest="min_support",
        type=float,
        default=None,
        help="a characteristic word is in at least this share of the cluster's captions (0.2)",
    )
    w.add_argument(
        "--min-subset",
        dest="min_subset",
        type=int,
        default=None,
        help="smallest keyword subset analysed or discovered (20)",
    )
    w.add_argument(
        "--max-terms",
        dest="max_terms",
        type=int,
        default=None,
        help="most frequent words/bigrams scored by --discover (300)",
    )
    w.add_argument(
        "--discover-min-size",
        dest="discover_min_size",
        type=int,
        default=None,
        help="discovery counts clusters of at least this many images (10): with hundreds of "
        "terms tested at once, only unambiguous replications should rank a term",
    )
    w.add_argument("--seed", type=int, default=None, help="seed of the pair sampling (0)")


# --------------------------------------------------------------------------------------------
# shared helpers (also used by the objects stage)


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list embedding column without nulls as an (n, d) float32 array."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise ValueError("embedding column has nulls: drop failed samples first")
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    dim = arr.type.list_size
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, np.float32).reshape(n, dim)


@dataclass
class Samples:
    """The workspace's usable samples: ok image embeddings with their keys and captions."""

    keys: np.ndarray
    captions: list[str]
    emb: np.ndarray
    n_total: int
    n_failed: int
    status_counts: dict[str, int]
    copy: np.ndarray | None = None
    """Copy-descriptor rows aligned with ``emb`` (when loaded with ``copy=True``)."""


def load_samples(ws: Any, copy: bool = False) -> Samples:
    """Rows with an image embedding (failed samples dropped and counted); with ``copy`` also
    their copy descriptors (rows without one are dropped too)."""
    import pyarrow.compute as pc

    cols = ["key", "caption", "status", "image_emb"] + (["copy_emb"] if copy else [])
    table = ws.load_embeddings(columns=cols)
    n_total = table.num_rows
    statuses = table.column("status").to_pylist()
    counts: dict[str, int] = {}
    for s in statuses:
        counts[str(s)] = counts.get(str(s), 0) + 1
    valid = pc.is_valid(table.column("image_emb"))
    if copy:
        valid = pc.and_(valid, pc.is_valid(table.column("copy_emb")))
    ok = table.filter(valid)
    n_failed = n_total - ok.num_rows
    if n_failed:
        logger.info("dropped %d of %d samples without an image embedding", n_failed, n_total)
    keys = np.asarray(ok.column("key").to_pylist(), dtype=object)
    captions = [c or "" for c in ok.column("caption").to_pylist()]
    emb = embedding_matrix(ok.column("image_emb"))
    if len(keys) and emb.shape[1] == 0:
        raise InputError("image_emb has dimension 0")
    copy_emb = embedding_matrix(ok.column("copy_emb")) if copy else None
    return Samples(keys, captions, emb, n_total, n_failed, counts, copy_emb)


def token_counter(model_info: dict[str, Any]) -> tuple[Callable[[str], int], str]:
    """A caption -> token count function using the workspace model's tokenizer (with start and
    end tokens), or the rough word/punctuation count when that tokenizer is not available."""
    from detectors.text import count_tokens

    name = model_info.get("model") or model_info.get("name")
    if name:
        try:
            import open_clip

            from audit.models import TINY_CLIP_NAME, register_tiny_synth

            if name == TINY_CLIP_NAME:
                register_tiny_synth()
            tok = open_clip.get_tokenizer(str(name))
            if hasattr(tok, "encode"):  # open_clip SimpleTokenizer (CLIP BPE)
                return (lambda t: len(tok.encode(t or "")) + 2), f"open_clip:{name}"
            inner = getattr(tok, "tokenizer", None)
            if inner is not None:  # HFTokenizer wrapper
                return (lambda t: len(inner(t or "")["input_ids"])), f"hf:{name}"
        except Exception as exc:  # noqa: BLE001 - fall back, and say so
            logger.warning("tokenizer of %s unavailable (%s); counting words instead", name, exc)
    return count_tokens, "words_and_punctuation"


# --------------------------------------------------------------------------------------------
# the stage

_LIST_STR = pa.list_(pa.string())

SCHEMA = pa.schema(
    [
        ("finding_id", pa.string()),
        ("keyword", pa.string()),
        ("cluster_rank", pa.int32()),
        ("size", pa.int32()),
        ("share", pa.float64()),
        ("mean_sim", pa.float32()),
        ("min_sim", pa.float32()),
        ("distance_ratio", pa.float32()),
        ("medoid_key", pa.string()),
        ("representative_keys", _LIST_STR),
        ("member_keys", _LIST_STR),
        ("top_words", _LIST_STR),
        ("top_word_lift", pa.list_(pa.float64())),
        ("top_word_support", pa.list_(pa.float64())),
        ("prompt_words", pa.string()),
        ("example_captions", _LIST_STR),
        ("words_only_n", pa.int32()),
        ("words_only_share", pa.float64()),
        ("flagged", pa.bool_()),
        ("threshold", pa.float32()),
        ("n_subset", pa.int32()),
        ("source", pa.string()),
        ("detector", pa.string()),
    ]
)


def analyse_keyword(
    samples: Samples,
    keyword: str,
    cfg: Config,
    token_ok: np.ndarray,
    source: str = "keyword",
    space: CopySpace | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Word-level analysis of one keyword over ``samples``; rows plus a summary dict. Images are
    clustered in ``space`` (the copy descriptor at its fixed threshold, or CLIP calibrated)."""
    from detectors.replication import word_replication, words_only_share
    from detectors.text import match_keyword

    t0 = time.perf_counter()
    kw_mask = match_keyword(samples.captions, keyword)
    subset = np.flatnonzero(kw_mask & token_ok)
    summary: dict[str, Any] = {
        "keyword": keyword,
        "source": source,
        "n_matching": int(kw_mask.sum()),
        "n_dropped_long_captions": int((kw_mask & ~token_ok).sum()),
        "n_subset": int(len(subset)),
    }
    if len(subset) < cfg.min_subset:
        logger.warning(
            "keyword %r: %d usable samples (< min_subset %d); not analysed",
            keyword,
            len(subset),
            cfg.min_subset,
        )
        summary["skipped"] = f"subset smaller than min_subset={cfg.min_subset}"
        return [], summary
    x, threshold = _space_inputs(samples, cfg, space)
    res = word_replication(
        x[subset],
        [samples.captions[i] for i in subset],
        list(samples.keys[subset]),
        keyword,
        threshold=threshold,
        beta=cfg.beta,
        floor=cfg.floor,
        ceiling=cfg.ceiling,
        method=cfg.method,
        min_cluster_size=cfg.min_cluster_size,
        flag_min_size=cfg.flag_min_size,
        flag_min_share=cfg.flag_min_share,
        top_words=cfg.top_words,
        min_support=cfg.min_support,
        seed=cfg.seed,
    )
    # "frequency matters": the cluster's own words without the keyword, over all usable samples
    for row, cl in zip(res.rows, res.clusters):
        if not (row["flagged"] and row["prompt_words"]):
            continue
        mask = ~kw_mask
        for w in row["prompt_words"].split():
            mask &= match_keyword(samples.captions, w)
        medoid_vec = x[subset[cl.medoid]]
        share, info = words_only_share(x[mask], medoid_vec, row["threshold"], method=cfg.method)
        row["words_only_n"] = info["n"]
        row["words_only_share"] = share
    for row in res.rows:
        row["n_subset"] = res.n_subset
        row["source"] = source
    summary.update(res.summary())
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    logger.info(
        "keyword %r: %d samples, %d clusters reported, %d flagged (largest share %.3f)",
        keyword,
        res.n_subset,
        len(res.rows),
        summary["n_flagged"],
        summary["largest_share"],
    )
    return res.rows, summary


def _space_inputs(
    samples: Samples, cfg: Config, space: CopySpace | None
) -> tuple[np.ndarray, float | None]:
    """The vectors to cluster and the threshold (None = calibrate per subset, CLIP space)."""
    if space is not None and space.is_copy and samples.copy is not None:
        return samples.copy, cfg.threshold if cfg.threshold is not None else space.threshold
    return samples.emb, cfg.threshold


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.workspace import Workspace
    from detectors.replication import (
        DISCOVERY_NAME,
        NAME,
        discover_terms,
        discovered,
        discovery_fdr,
    )

    if not cfg.keyword and not cfg.discover:
        raise ConfigError("replication: give --keyword WORDS (repeatable) or --discover")
    ws = Workspace(args.workspace)
    t0 = time.perf_counter()
    space = copy_space(ws, cfg.space, "replication.space")
    samples = load_samples(ws, copy=space.is_copy)
    if len(samples.keys) < 2:
        raise InputError(f"{ws.root}: fewer than 2 samples with an image embedding")
    token_ok = np.ones(len(samples.keys), bool)
    tokenizer = None
    if cfg.max_tokens:
        count, tokenizer = token_counter(ws.model_info())
        lengths = np.fromiter((count(c) for c in samples.captions), np.int64, len(samples.keys))
        token_ok = lengths <= cfg.max_tokens
        logger.info(
            "%d captions longer than %d tokens (%s) are left out of keyword subsets",
            int((~token_ok).sum()),
            cfg.max_tokens,
            tokenizer,
        )
    keywords = list(cfg.keyword)
    sources = dict.fromkeys(keywords, "keyword")
    discovery: dict[str, Any] | None = None
    if cfg.discover:
        td = time.perf_counter()
        ok_rows = np.flatnonzero(token_ok)
        x, threshold = _space_inputs(samples, cfg, space)
        scores, stats = discover_terms(
            x[ok_rows],
            [samples.captions[i] for i in ok_rows],
            threshold=threshold,
            beta=cfg.beta,
            floor=cfg.floor,
            ceiling=cfg.ceiling,
            min_subset=cfg.min_subset,
            max_terms=cfg.max_terms,
            cluster_min_size=cfg.discover_min_size,
            seed=cfg.seed,
        )
        correction = discovery_fdr(scores, cfg.flag_min_share, cfg.fdr)
        chosen = discovered(scores, cfg.top, cfg.fdr)
        for term in chosen:
            if term not in sources:
                keywords.append(term)
                sources[term] = "discovered"
        discovery = {
            "detector": DISCOVERY_NAME,
            "pair_stats": stats.to_dict(),
            "chosen": chosen,
            "ranking": [s.to_dict() for s in scores[:100]],
            "multiple_testing": correction,
            "seconds": round(time.perf_counter() - td, 3),
        }
        logger.info("discovery: top terms %s", ", ".join(chosen) or "(none with replication)")
    rows: list[dict[str, Any]] = []
    summaries = []
    for kw in keywords:
        r, s = analyse_keyword(samples, kw, cfg, token_ok, source=sources[kw], space=space)
        rows.extend(r)
        summaries.append(s)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
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
        "calibration": (
            f"copy threshold {_space_inputs(samples, cfg, space)[1]} on the copy descriptor "
            f"({space.model}; {space.source if cfg.threshold is None else 'option'}) for "
            "every subset; a cluster is flagged when size >= flag_min_size, share >= "
            "flag_min_share and the mean cosine of its members to the medoid is >= the "
            "threshold"
            if space.is_copy
            else "copy threshold per subset = clip(1 - beta * (1 - median cosine of 20,000 "
            f"random image pairs of the subset), {cfg.floor}, {cfg.ceiling}) with "
            f"beta={cfg.beta} unless --threshold is given; a cluster is flagged when size >= "
            "flag_min_size, share >= flag_min_share and the mean cosine distance of its "
            "members to the medoid is <= beta x the random-pair median distance"
        ),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    ws.write_finding(FINDING, table, meta)
    n_flag = sum(1 for r in rows if r["flagged"])
    logger.info("%d clusters written for %d keywords, %d flagged", len(rows), len(keywords), n_flag)
    return 0
