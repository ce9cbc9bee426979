"""``laion-audit objects``: object-level replication (objects in images that captions never name)."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

from audit.config import ConfigError, Options, add_options, add_workspace_argument, option

# PromptEncoder re-exported for audit/reproduce/score.py until it imports audit.vocabulary
from audit.vocabulary import PromptEncoder, flatten_list  # noqa: F401

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

CALIBRATION, MODEL = "calibration and flagging", "model"


@dataclass
class Config(Options):
    keyword: list[str] = option(
        [],
        help="keyword whose images are examined, e.g. astronaut",
        aliases=("-k",),
        metavar="WORDS",
        repeat=True,
    )
    objects: list[str] = option(
        [],
        help="objects to test first; the vocabulary (general list + caption terms) is searched "
        "too unless --only-listed",
        metavar="LIST",
        repeat=True,
    )
    only_listed: bool = option(
        False,
        help="test only the --objects (the vocabulary still competes as alternatives); an "
        "unnamed object nobody listed is then not searched for",
    )
    caption_terms: int = option(
        100,
        help="frequent caption words/collocations added to the vocabulary, and the keywords "
        "--discover scans (0 = none)",
        ge=0,
        metavar="K",
    )
    min_term_count: int = option(
        5, help="a caption term must be in at least N captions", ge=1, metavar="N"
    )
    discover: bool = option(False, help="score every caption term as a keyword and keep the top K")
    top: int = option(3, help="discovered keywords", ge=1, metavar="K")
    max_tokens: int = option(
        0,
        help="drop captions longer than N tokens of the model's tokenizer (0 = keep all)",
        ge=0,
        metavar="N",
    )
    z: float = option(
        4.0, help="robust-z threshold when no mixture is found", gt=0, group=CALIBRATION
    )
    min_sep: float = option(
        3.0, help="mixture components must be this many SDs apart", gt=0, group=CALIBRATION
    )
    min_gap: float = option(
        0.02,
        help="flag when the rate's lower bound exceeds mention and outside rates by this",
        ge=0,
        lt=1,
        group=CALIBRATION,
    )
    min_rate: float = option(0.03, help="smallest flagged rate", ge=0, le=1, group=CALIBRATION)
    min_distinct: int = option(
        5,
        help="a flag needs this many distinct images (near-copies count once)",
        ge=1,
        group=CALIBRATION,
    )
    fdr: float = option(
        0.05,
        help="Benjamini-Hochberg q-level over every keyword x object pair tested",
        gt=0,
        le=1,
        metavar="Q",
        group=CALIBRATION,
    )
    general_share: float = option(
        0.2,
        help="weighted BH: share of the error budget for objects only the general list holds "
        "(not listed, not a caption term)",
        gt=0,
        lt=1,
        metavar="S",
        group=CALIBRATION,
    )
    min_subset: int = option(20, help="smallest keyword subset analysed", ge=2, group=CALIBRATION)
    outside_sample: int = option(
        5000,
        help="random images outside the subset for the outside rate (0 = none)",
        ge=0,
        group=CALIBRATION,
    )
    device: str = option("cpu", help="torch device for the text encoder", group=MODEL)
    batch_size: int = option(256, help="text-encoder batch size", ge=1, group=MODEL)
    seed: int = option(0, help="seed of the outside sample", group=MODEL)

    def check(self) -> None:
        self.keyword = flatten_list(self.keyword)
        self.objects = flatten_list(self.objects)
        if self.only_listed and not self.objects:
            raise ConfigError(f"objects.only_listed: needs --objects (got {self.only_listed!r})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    add_options(parser, Config)


CALIBRATION_TEXT = (
    "per (population, object), on the margin score: two-component GaussianMixture, started at "
    "the median/MAD bulk, kept when BIC prefers it, its present component is >= {min_sep} "
    "absent-SDs away, weighs <= 0.5 and has a positive mean (threshold = where the present "
    "posterior reaches 0.5); else max(0, median + {z} * MAD); the mixture is not fitted when "
    "< 1% of scores exceed median + 3 MAD"
)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit import vocabulary as v
    from audit.errors import InputError
    from audit.inputs import caption_token_mask, load_samples
    from audit.workspace import Workspace
    from detectors import objects as det
    from detectors.text import match_keyword

    if not cfg.keyword and not cfg.discover:
        raise ConfigError("objects: give --keyword WORDS (repeatable) or --discover")
    ws = Workspace(args.workspace)
    t0 = time.perf_counter()
    samples = load_samples(ws)
    if len(samples.keys) < 2:
        raise InputError(f"{ws.root}: fewer than 2 samples with an image embedding")
    vocab, vocab_info = v.object_vocabulary(samples.captions, cfg.caption_terms, cfg.min_term_count)
    objects, alternatives = v.plan_objects(cfg.objects, vocab, cfg.only_listed)
    classes = v.object_classes(cfg.objects, vocab_info["caption_terms"])
    if not objects:
        raise ConfigError("objects: nothing to look for (empty vocabulary and no --objects)")
    token_ok, tokenizer = caption_token_mask(ws.model(), samples.captions, cfg.max_tokens)
    encoder = v.PromptEncoder(ws.model(), cfg.device, cfg.batch_size, samples.emb.shape[1])
    params = {k: getattr(cfg, k) for k in det.OBJECT_PARAMS}

    def analyse(keyword: str, source: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return det.keyword_objects(
            samples.emb, samples.captions, samples.keys, keyword, objects, encoder.contrast,
            usable=token_ok, alternatives=alternatives, classes=classes, source=source,
            min_subset=cfg.min_subset, outside_sample=cfg.outside_sample, seed=cfg.seed,
            **params,
        )  # fmt: skip

    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    for kw in cfg.keyword:
        r, s = analyse(kw, "keyword")
        rows.extend(r)
        summaries.append(s)
    discovery = None
    if cfg.discover:
        td = time.perf_counter()
        terms = [
            t
            for t in vocab_info["caption_terms"]
            if t not in cfg.keyword and match_keyword(samples.captions, t).sum() >= cfg.min_subset
        ]
        found, correction, discovery = det.discover_keywords(
            terms, lambda kw: analyse(kw, "discovered"), rows, top=cfg.top, fdr=cfg.fdr,
            general_share=cfg.general_share,
        )  # fmt: skip
        rows.extend(found)
        discovery.update(
            keywords_scanned="caption terms with >= min_subset captions",
            seconds=round(time.perf_counter() - td, 3),
        )
        logger.info("object discovery: top keywords %s", ", ".join(discovery["chosen"]) or "(none)")
    else:
        correction = det.adjust_flags(rows, cfg.fdr, cfg.general_share)
    for s in summaries:
        s["n_flagged"] = sum(r["flagged"] for r in rows if r["keyword"] == s["keyword"])
    meta = {
        "detector": det.NAME,
        "model": encoder.name,
        "parameters": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "objects": objects,
        "alternatives": alternatives,
        "vocabulary": vocab_info,
        "multiple_testing": correction,
        "with_templates": list(det.WITH_TEMPLATES),
        "without_templates": list(det.WITHOUT_TEMPLATES),
        "tokenizer": tokenizer,
        "n_total": samples.n_total,
        "n_failed_dropped": samples.n_failed,
        "keywords": summaries,
        "discovery": discovery,
        "calibration": CALIBRATION_TEXT.format(min_sep=cfg.min_sep, z=cfg.z),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    ws.write_finding(FINDING, det.finding_table(rows), meta)
    logger.info(
        "%d keyword x object rows written, %d flagged", len(rows), sum(r["flagged"] for r in rows)
    )
    return 0
