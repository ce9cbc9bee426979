"""``laion-audit objects``: object-level replication (objects in images that captions never name)."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from audit.config import ConfigError, require
from audit.errors import InputError
from audit.stages import add_workspace_argument
from audit.stages.replication import _flatten_keywords, load_samples, token_counter

logger = logging.getLogger(__name__)

HELP = "object-level replication: objects in images that captions never name"
DESCRIPTION = """\
Object-level replication (Naseh et al. 2023: ~10% of "astronaut" images carry a US flag their
captions never name). For each keyword, every image of its caption subset (failed samples
dropped; with --max-tokens N, captions longer than N tokens too) gets a zero-shot presence score
per object from the workspace's own CLIP model (embeddings/model.json): the margin
cos(image, "a photo of a KEYWORD with a OBJECT" ensemble) - max(cos(image, "a photo of a
KEYWORD" ensemble), cos(image, "... KEYWORD with a OTHER" ensemble) for every other object of
the vocabulary), positive when the object's prompt describes the image best. The presence
threshold is calibrated without labels, separately inside the subset and on a random sample of
images outside it: a two-component Gaussian mixture started at the robust (median/MAD) "absent"
bulk, used only when BIC, the components' separation and a positive "present" mean support it,
else max(0, median + z * MAD). Per object: image rate with a Wilson 95% interval, caption mention
rate, gap, outside rate, example keys of images carrying the unnamed object. Flagged when the
interval's lower bound exceeds both the mention rate and the outside rate by --min-gap and the
images found are at least --min-distinct distinct pictures (near-copies count once).

Vocabulary (none of it is a list of what the data is expected to hold): the general object
list shipped with laion-audit (audit/vocab/objects.txt: the 80 MS-COCO classes and ~300 more
common things, signs and symbols) plus the --caption-terms K most frequent words and
collocations of the workspace's captions (stop words, stock boilerplate, picture kinds, colours
and common adjectives left out). Without --objects every vocabulary entry is tested (the
keyword itself left out) and each competes with all the others. With --objects LIST the listed
objects are tested first and the vocabulary is still searched: an object that no caption names
and nobody listed is found when it is in the general list or among the caption terms.
--only-listed tests the listed objects only; the whole vocabulary still competes as
alternatives, because without competitors the score cannot tell which object is there (a
CLIP model answers "a second object is in the picture" more than which one: an unnamed flag
would be reported as whichever listed object describes it best). An object in none of these
lists cannot be found: the score compares prompts that name objects, it does not detect unnamed
things (add it with --objects); measured on six testbeds whose flag was removed from the
vocabulary, nothing was flagged in its place (benchmarks/bench_objects.py).

Many tests: every keyword x object pair is a one-sided exact binomial test of the images found
against max(mention rate, outside rate) + --min-gap; a flag also needs the Benjamini-Hochberg
q-value over every pair the run tested (discovery's scanned keywords included) to be at most
--fdr (0.05); the finding's JSON names the correction and the q-level. The procedure is
weighted (fixed before any image is scored): objects only the general list holds share
--general-share (20%) of the error budget, objects listed with --objects or named by the
dataset's captions somewhere the rest, so the general list can be searched without drowning
them (demo testbed, 1,000 rows, 376 objects: the planted flag, 10 of 127 astronaut images at
p = 2.6e-4, has q = 0.096 under plain BH and 0.013 weighted).
--discover scores every caption term (the --caption-terms list) with at least --min-subset
captions as a keyword and keeps the --top K keywords with the strongest unnamed-object
association.

Writes WS/findings/object_replication.parquet (one row per keyword x object) and
object_replication.json (prompts, calibration per object, discovery ranking, timings).
"""

FINDING = "object_replication"


def vocabulary(cfg: Config, captions: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The objects searched besides ``--objects`` and competing with them: the general list
    and the captions' frequent terms (``--caption-terms``), and where each part came from."""
    from audit.vocabulary import caption_terms, general_objects, merge

    general = general_objects()
    terms = caption_terms(captions, cfg.caption_terms, cfg.min_term_count)
    vocab = merge(general, terms)
    return vocab, {
        "general": len(general),
        "caption_terms": terms,
        "n_vocabulary": len(vocab),
    }


def object_classes(cfg: Config, vocab_info: dict[str, Any]) -> dict[str, str]:
    """Where each object comes from, for the weighted BH: "listed" (--objects), "caption" (a
    caption term: the dataset names it somewhere); objects not in the mapping are "general"
    (only the general list holds them)."""
    out = {t: "caption" for t in vocab_info["caption_terms"]}
    out.update({o: "listed" for o in cfg.objects})
    return out


def plan_objects(cfg: Config, vocab: list[str]) -> tuple[list[str], list[str]]:
    """(objects tested, alternatives that only compete). Without --objects: the vocabulary,
    no extra alternatives. With it: the listed objects then the vocabulary (the vocabulary
    only competes with --only-listed)."""
    from audit.vocabulary import merge

    if not cfg.objects:
        return list(vocab), []
    if cfg.only_listed:
        listed = {o.lower() for o in cfg.objects}
        return list(cfg.objects), [v for v in vocab if v.lower() not in listed]
    return merge(cfg.objects, vocab), []


@dataclass
class Config:
    keyword: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    discover: bool = False
    top: int = 3
    max_tokens: int = 0
    z: float = 4.0
    min_sep: float = 3.0
    min_gap: float = 0.02
    min_rate: float = 0.03
    min_distinct: int = 5
    min_subset: int = 20
    outside_sample: int = 5000
    caption_terms: int = 100
    min_term_count: int = 5
    only_listed: bool = False
    fdr: float = 0.05
    general_share: float = 0.2
    device: str = "cpu"
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        self.keyword = _flatten_keywords(self.keyword)
        self.objects = _flatten_keywords(self.objects)
        require(self.top >= 1, "objects.top", "must be >= 1", self.top)
        require(self.max_tokens >= 0, "objects.max_tokens", "must be >= 0", self.max_tokens)
        require(self.z > 0, "objects.z", "must be > 0", self.z)
        require(self.min_sep > 0, "objects.min_sep", "must be > 0", self.min_sep)
        require(0 <= self.min_gap < 1, "objects.min_gap", "must be in [0, 1)", self.min_gap)
        require(0 <= self.min_rate <= 1, "objects.min_rate", "must be in [0, 1]", self.min_rate)
        require(self.min_distinct >= 1, "objects.min_distinct", "must be >= 1", self.min_distinct)
        require(self.min_subset >= 2, "objects.min_subset", "must be >= 2", self.min_subset)
        require(
            self.outside_sample >= 0,
            "objects.outside_sample",
            "must be >= 0 (0 = no outside comparison)",
            self.outside_sample,
        )
        require(self.batch_size >= 1, "objects.batch_size", "must be >= 1", self.batch_size)
        require(self.caption_terms >= 0, "objects.caption_terms", "must be >= 0",
                self.caption_terms)  # fmt: skip
        require(self.min_term_count >= 1, "objects.min_term_count", "must be >= 1",
                self.min_term_count)  # fmt: skip
        require(0 < self.fdr <= 1, "objects.fdr", "must be in (0, 1]", self.fdr)
        require(0 < self.general_share < 1, "objects.general_share", "must be in (0, 1)",
                self.general_share)  # fmt: skip
        require(not self.only_listed or bool(self.objects), "objects.only_listed",
                "needs --objects", self.only_listed)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    parser.add_argument(
        "--keyword",
        "-k",
        action="append",
        default=None,
        metavar="WORDS",
        help="keyword whose images are examined, e.g. astronaut; repeat or comma list",
    )
    parser.add_argument(
        "--objects",
        action="append",
        default=None,
        metavar="LIST",
        help="objects to test first, repeat or comma list; the vocabulary (general list + "
        "caption terms) is searched too unless --only-listed",
    )
    parser.add_argument(
        "--only-listed",
        dest="only_listed",
        action="store_true",
        default=None,
        help="test only the --objects (the vocabulary still competes as alternatives); an "
        "unnamed object nobody listed is then not searched for",
    )
    parser.add_argument(
        "--caption-terms",
        dest="caption_terms",
        type=int,
        default=None,
        metavar="K",
        help="frequent caption words/collocations added to the vocabulary, and the keywords "
        "--discover scans (100; 0 = none)",
    )
    parser.add_argument(
        "--min-term-count",
        dest="min_term_count",
        type=int,
        default=None,
        metavar="N",
        help="a caption term must be in at least N captions (5)",
    )
    parser.add_argument(
        "--discover",
        action="store_true",
        default=None,
        help="score every caption term as a keyword and keep the top K",
    )
    parser.add_argument(
        "--top", type=int, default=None, metavar="K", help="discovered keywords (3)"
    )
    parser.add_argument(
        "--max-tokens",
        dest="max_tokens",
        type=int,
        default=None,
        metavar="N",
        help="drop captions longer than N tokens of the model's tokenizer (0 = keep all)",
    )
    g = parser.add_argument_group("calibration and flagging")
    g.add_argument(
        "--z", type=float, default=None, help="robust-z threshold when no mixture is found (4)"
    )
    g.add_argument(
        "--min-sep",
        dest="min_sep",
        type=float,
        default=None,
        help="mixture components must be this many SDs apart (3)",
    )
    g.add_argument(
        "--min-gap",
        dest="min_gap",
        type=float,
        default=None,
        help="flag when the rate's lower bound exceeds mention and outside rates by this (0.02)",
    )
    g.add_argument(
        "--min-rate", dest="min_rate", type=float, default=None, help="smallest flagged rate (0.03)"
    )
    g.add_argument(
        "--min-distinct",
        dest="min_distinct",
        type=int,
        default=None,
        help="a flag needs this many distinct images (near-copies count once) (5)",
    )
    g.add_argument(
        "--fdr",
        type=float,
        default=None,
        metavar="Q",
        help="Benjamini-Hochberg q-level over every keyword x object pair tested (0.05)",
    )
    g.add_argument(
        "--general-share",
        dest="general_share",
        type=float,
        default=None,
        metavar="S",
        help="weighted BH: share of the error budget for objects only the general list holds "
        "(not listed, not a caption term) (0.2)",
    )
    g.add_argument(
        "--min-subset",
        dest="min_subset",
        type=int,
        default=None,
        help="smallest keyword subset analysed (20)",
    )
    g.add_argument(
        "--outside-sample",
        dest="outside_sample",
        type=int,
        default=None,
        help="random images outside the subset for the outside rate (5000; 0 = none)",
    )
    m = parser.add_argument_group("model")
    m.add_argument("--device", default=None, help="torch device for the text encoder (cpu)")
    m.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="(256)")
    m.add_argument("--seed", type=int, default=None, help="seed of the outside sample (0)")


_LIST_STR = pa.list_(pa.string())

SCHEMA = pa.schema(
    [
        ("finding_id", pa.string()),
        ("keyword", pa.string()),
        ("object", pa.string()),
        ("n_images", pa.int32()),
        ("n_present", pa.int32()),
        ("n_distinct", pa.int32()),
        ("image_rate", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("caption_rate", pa.float64()),
        ("gap", pa.float64()),
        ("outside_rate", pa.float64()),
        ("n_outside", pa.int32()),
        ("threshold", pa.float32()),
        ("outside_threshold", pa.float32()),
        ("calibration", pa.string()),
        ("mixture_weight", pa.float64()),
        ("p_value", pa.float64()),
        ("q_value", pa.float64()),
        ("bh_weight", pa.float64()),
        ("vocabulary", pa.string()),
        ("flagged_unadjusted", pa.bool_()),
        ("flagged", pa.bool_()),
        ("example_keys", _LIST_STR),
        ("source", pa.string()),
        ("detector", pa.string()),
    ]
)


class PromptEncoder:
    """Encodes prompt ensembles with the workspace's CLIP text tower (cached per prompt)."""

    def __init__(self, model_info: dict[str, Any], device: str, batch_size: int, dim: int) -> None:
        from audit.models import load_clip

        name = model_info.get("model") or model_info.get("name")
        if not name:
            raise InputError(
                "embeddings/model.json names no model: object prompts need the CLIP text "
                "encoder the image embeddings came from"
            )
        try:
            self.model, _, self.tokenizer = load_clip(
                name, pretrained=model_info.get("pretrained"), device=device
            )
        except Exception as exc:  # noqa: BLE001 - any load failure is an input problem here
            raise InputError(f"cannot load the workspace's model {name!r}: {exc}") from exc
        self.name = str(name)
        self.device = device
        self.batch_size = batch_size
        self.dim = dim
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, prompts: list[str]) -> np.ndarray:
        from audit.models import encode_texts

        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            emb = encode_texts(
                self.model, self.tokenizer, todo, device=self.device, batch_size=self.batch_size
            )
            if emb.shape[1] != self.dim:
                raise InputError(
                    f"model {self.name!r} gives {emb.shape[1]}-d text embeddings but the "
                    f"workspace's images are {self.dim}-d: model.json does not match"
                )
            self._cache.update(zip(todo, emb))
        return np.stack([self._cache[p] for p in prompts])

    def contrast(self, keyword: str, objects: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(with-object ensemble per object (k, d), no-object ensemble (d,))."""
        from detectors.objects import ensemble, object_prompts

        with_obj, without = object_prompts(keyword, objects)
        self.encode([p for o in objects for p in with_obj[o]] + without)  # one batch, cached
        w = np.stack([ensemble(self.encode(with_obj[o])) for o in objects])
        return w, ensemble(self.encode(without))


def _same_words(a: str, b: str) -> bool:
    return set(a.lower().split()) == set(b.lower().split())


def keyword_scores(
    samples: Any,
    keyword: str,
    objects: list[str],
    alternatives: list[str],
    encoder: PromptEncoder,
    subset: np.ndarray,
    outside: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Presence margins of ``objects`` for the subset's and the outside sample's images; every
    other object and every alternative competes (:func:`detectors.objects.presence_scores`)."""
    from detectors.objects import presence_scores

    w, o = encoder.contrast(keyword, objects)
    alt = encoder.contrast(keyword, alternatives)[0] if alternatives else None
    inside_s = presence_scores(samples.emb[subset], w, o, alt)
    if len(outside):
        outside_s = presence_scores(samples.emb[outside], w, o, alt)
    else:
        outside_s = np.zeros((0, len(objects)))
    return inside_s, outside_s


def analyse_keyword(
    samples: Any,
    keyword: str,
    objects: list[str],
    cfg: Config,
    encoder: PromptEncoder,
    token_ok: np.ndarray,
    source: str = "keyword",
    alternatives: list[str] | None = None,
    classes: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (one per object) and a summary for one keyword. ``alternatives``: objects that
    compete but are not reported. ``classes``: object -> where it came from ("listed",
    "caption", "general"; the rows' ``vocabulary``, the weighted-BH class). Flags are
    Benjamini-Hochberg-adjusted over this keyword's objects only; :func:`run` re-adjusts over
    every pair of the run."""
    from detectors.objects import object_replication
    from detectors.text import match_keyword

    kw_mask = match_keyword(samples.captions, keyword)
    subset = np.flatnonzero(kw_mask & token_ok)
    objs = [o for o in objects if not _same_words(o, keyword)]
    alts = [a for a in alternatives or [] if not _same_words(a, keyword) and a not in objs]
    summary: dict[str, Any] = {
        "keyword": keyword,
        "source": source,
        "n_matching": int(kw_mask.sum()),
        "n_subset": int(len(subset)),
        "n_objects": len(objs),
        "n_alternatives": len(alts),
    }
    if len(subset) < cfg.min_subset or not objs:
        why = "no objects left" if not objs else f"subset smaller than min_subset={cfg.min_subset}"
        logger.warning("objects: keyword %r not analysed (%s)", keyword, why)
        summary["skipped"] = why
        return [], summary
    outside = np.flatnonzero(~kw_mask)
    if len(outside) > cfg.outside_sample:
        rng = np.random.default_rng(cfg.seed)
        outside = np.sort(rng.choice(outside, cfg.outside_sample, replace=False))
    inside_s, outside_s = keyword_scores(samples, keyword, objs, alts, encoder, subset, outside)
    captions = [samples.captions[i] for i in subset]
    mentions = np.stack([match_keyword(captions, ob) for ob in objs], axis=1)
    rows, cal = object_replication(
        keyword,
        objs,
        inside_s,
        outside_s,
        mentions,
        list(samples.keys[subset]),
        z=cfg.z,
        min_sep=cfg.min_sep,
        min_gap=cfg.min_gap,
        min_rate=cfg.min_rate,
        min_distinct=cfg.min_distinct,
        inside_emb=samples.emb[subset],
        seed=cfg.seed,
        fdr=cfg.fdr,
    )
    for r in rows:
        r["source"] = source
        r["vocabulary"] = classes.get(r["object"], "general") if classes else "listed"
    summary["n_outside"] = int(len(outside))
    summary["calibration"] = {
        o: c for o, c in cal.items() if c["inside"]["method"] == "gmm" or _flagged(rows, o)
    }
    summary["n_flagged"] = sum(r["flagged"] for r in rows)
    summary["score"] = association_score(rows, cfg.min_distinct)
    return rows, summary


def _flagged(rows: list[dict[str, Any]], obj: str) -> bool:
    return any(r["object"] == obj and r["flagged_unadjusted"] for r in rows)


def association_score(rows: list[dict[str, Any]], min_distinct: int = 1) -> float:
    """Strength of a keyword's strongest unnamed-object association: the largest margin of the
    rate's Wilson lower bound over max(mention rate, outside rate) among objects seen in at
    least ``min_distinct`` distinct images; 0 if none is positive."""
    best = 0.0
    for r in rows:
        if r["n_distinct"] < min_distinct:
            continue
        base = max(r["caption_rate"], r["outside_rate"] or 0.0)
        best = max(best, r["ci_low"] - base)
    return best


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.workspace import Workspace
    from detectors.objects import NAME, WITH_TEMPLATES, WITHOUT_TEMPLATES, adjust_flags
    from detectors.text import match_keyword

    if not cfg.keyword and not cfg.discover:
        raise ConfigError("objects: give --keyword WORDS (repeatable) or --discover")
    ws = Workspace(args.workspace)
    t0 = time.perf_counter()
    samples = load_samples(ws)
    if len(samples.keys) < 2:
        raise InputError(f"{ws.root}: fewer than 2 samples with an image embedding")
    vocab, vocab_info = vocabulary(cfg, list(samples.captions))
    objects, alternatives = plan_objects(cfg, vocab)
    classes = object_classes(cfg, vocab_info)
    if not objects:
        raise ConfigError("objects: nothing to look for (empty vocabulary and no --objects)")
    token_ok = np.ones(len(samples.keys), bool)
    tokenizer = None
    if cfg.max_tokens:
        count, tokenizer = token_counter(ws.model_info())
        lengths = np.fromiter((count(c) for c in samples.captions), np.int64, len(samples.keys))
        token_ok = lengths <= cfg.max_tokens
    encoder = PromptEncoder(ws.model_info(), cfg.device, cfg.batch_size, samples.emb.shape[1])
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    done: set[str] = set()
    for kw in cfg.keyword:
        r, s = analyse_keyword(
            samples, kw, objects, cfg, encoder, token_ok, "keyword", alternatives, classes
        )
        rows.extend(r)
        summaries.append(s)
        done.add(kw)
    discovery = None
    if cfg.discover:
        td = time.perf_counter()
        ranking = []
        found: dict[str, list[dict[str, Any]]] = {}
        for kw in vocab_info["caption_terms"]:
            if kw in done or match_keyword(samples.captions, kw).sum() < cfg.min_subset:
                continue
            r, s = analyse_keyword(
                samples, kw, objects, cfg, encoder, token_ok, "discovered", alternatives, classes
            )
            if not r:
                continue
            found[kw] = r
            best = max(
                r, key=lambda x: x["ci_low"] - max(x["caption_rate"], x["outside_rate"] or 0)
            )
            ranking.append(
                {
                    "keyword": kw,
                    "score": s["score"],
                    "n_subset": s["n_subset"],
                    "n_flagged": s["n_flagged"],
                    "best_object": best["object"],
                    "best_image_rate": best["image_rate"],
                }
            )
        ranking.sort(key=lambda x: (-x["score"], x["keyword"]))
        # one family: every pair discovery tested, chosen or not, with the given keywords' pairs
        family = rows + [x for kw, r in found.items() for x in r]
        correction = adjust_flags(family, cfg.fdr, cfg.general_share)
        for x in ranking:
            x["n_flagged"] = sum(r["flagged"] for r in found[x["keyword"]])
        chosen = [x["keyword"] for x in ranking if x["score"] > 0][: cfg.top]
        for kw in chosen:
            rows.extend(found[kw])
        discovery = {
            "chosen": chosen,
            "keywords_scanned": "caption terms with >= min_subset captions",
            "ranking": ranking,
            "seconds": round(time.perf_counter() - td, 3),
        }
        logger.info("object discovery: top keywords %s", ", ".join(chosen) or "(none)")
    else:
        correction = adjust_flags(rows, cfg.fdr, cfg.general_share)
    for s in summaries:
        s["n_flagged"] = sum(r["flagged"] for r in rows if r["keyword"] == s["keyword"])
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    meta = {
        "detector": NAME,
        "model": encoder.name,
        "parameters": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "objects": objects,
        "alternatives": alternatives,
        "vocabulary": vocab_info,
        "multiple_testing": correction,
        "with_templates": list(WITH_TEMPLATES),
        "without_templates": list(WITHOUT_TEMPLATES),
        "tokenizer": tokenizer,
        "n_total": samples.n_total,
        "n_failed_dropped": samples.n_failed,
        "keywords": summaries,
        "discovery": discovery,
        "calibration": (
            "per (population, object), on the margin score: two-component GaussianMixture, "
            "started at the median/MAD bulk, kept when BIC prefers it, its present component "
            f"is >= {cfg.min_sep} absent-SDs away, weighs <= 0.5 and has a positive mean "
            "(threshold = where the present posterior reaches 0.5); else "
            f"max(0, median + {cfg.z} * MAD); the mixture is not fitted when < 1% of scores "
            "exceed median + 3 MAD"
        ),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    ws.write_finding(FINDING, table, meta)
    logger.info(
        "%d keyword x object rows written, %d flagged", len(rows), sum(r["flagged"] for r in rows)
    )
    return 0
