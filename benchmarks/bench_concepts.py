"""Semantic concept frequency validated on captions that never name the concept by its word.

``laion-audit concepts`` counts a concept two ways: captions that name it (word match) and
captions whose text embedding lies within a radius of the concept's reference (semantic
match). The radius is calibrated against the word matches and the reference is the centroid of
the captions that name the concept, so measuring the semantic count against word matches would
only check that it reproduces what it was fitted to. This benchmark measures the part the word
count cannot see: captions that mention the concept **only by a synonym or a paraphrase**.

For each reported testbed seed the captions are the testbed's own (``audit.testbed``); a share
``--paraphrase-rate`` of the rows whose concept has entries in :data:`PARAPHRASES` get that word
replaced by one of its paraphrases ("dog" -> "puppy", "hound", "pooch", ...), so they no longer
name the concept. Every caption is then encoded with the workspace's text encoder (``--model``;
the shipped tiny-synth by default) and :func:`detectors.concepts.semantic_frequency` runs with
the stage's defaults (centroid reference, radius calibrated against word matches, exclusive
assignment), exactly as ``laion-audit concepts`` calls it. Measured, per seed:

* ``paraphrase recall``: share of the paraphrased captions that the semantic match assigns to
  their true concept (the word match finds 0 of them by construction), Wilson 95% interval;
* ``word-match recall``: the same share among captions that do name their concept (the part the
  radius was calibrated on: the upper reference);
* ``precision of semantic-only members``: among captions assigned to a concept by the semantic
  match but not naming it, the share whose true concept it is;
* ``frequency error``: |semantic frequency - true frequency| per concept (true = captions about
  the concept, named or paraphrased), median over concepts.

The paraphrase list is the benchmark's (what a person would write), never the detector's; the
detector is given only the concept names, as a user passing ``--concepts`` would. Nothing is
tuned here: the stage's defaults were set during development on seeds 0-2; the reported seeds
are ``--seeds`` (default 31, 32).

Usage::

    python benchmarks/bench_concepts.py            # ~2 min on 2 cores

Prints a table and writes ``benchmarks/results/concepts.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TUNE_SEEDS = [0, 1, 2]
"""Seeds on which the concepts stage's defaults (reference, min_matches, calibration) were set."""

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "dog": ("puppy", "hound", "pooch", "doggy"),
    "cat": ("kitten", "kitty", "feline"),
    "car": ("automobile", "sedan", "vehicle"),
    "house": ("home", "cottage", "cabin"),
    "bird": ("sparrow", "songbird", "parrot"),
    "fish": ("trout", "goldfish", "salmon"),
    "flower": ("blossom", "daisy", "tulip"),
    "boat": ("ship", "sailboat", "yacht"),
    "bicycle": ("bike", "cycle"),
    "clock": ("timepiece", "wall clock face"),
    "cup": ("mug", "teacup"),
    "chair": ("seat", "armchair", "stool"),
    "tree": ("oak", "pine", "maple"),
    "rocket": ("spaceship", "missile"),
    "guitar": ("acoustic instrument", "ukulele"),
    "mushroom": ("toadstool", "fungus"),
    "umbrella": ("parasol",),
    "heart": ("love symbol",),
    "sun": ("sunshine", "daystar"),
}
"""Words a caption writer uses instead of the concept (the benchmark's, not the detector's)."""


def paraphrase(caption: str, concept: str, rng: np.random.Generator) -> str | None:
    """``caption`` with every whole-word mention of ``concept`` (and its plural) replaced by one
    paraphrase; None when the caption does not name it."""
    pat = re.compile(rf"\b{re.escape(concept)}s?\b", re.IGNORECASE)
    if not pat.search(caption):
        return None
    word = PARAPHRASES[concept][int(rng.integers(len(PARAPHRASES[concept])))]
    return pat.sub(word, caption)


def testbed_captions(n: int, seed: int, work: Path) -> tuple[list[str], list[str]]:
    """Captions and the concept each one is about, from a testbed of ``n`` rows (built once)."""
    import pandas as pd

    from audit.testbed.generate import build_testbed

    tb = work / f"tb_{n}_{seed}"
    if not (tb / "truth.parquet").exists():
        # captions only: the image-side poisons (PGD) are left out to save minutes
        build_testbed(tb, n=n, seed=seed, overwrite=True, clean_rate=0.0, nightshade_rate=0.0,
                      glaze_rate=0.0)  # fmt: skip
    truth = pd.read_parquet(tb / "truth.parquet")
    truth = truth[truth["caption"].notna() & truth["caption_concept"].notna()]
    return list(truth["caption"]), list(truth["caption_concept"])


def measure(
    captions: list[str],
    about: list[str],
    concepts: list[str],
    rate: float,
    seed: int,
    model: Any,
    tokenizer: Any,
) -> dict[str, Any]:
    from audit.models import encode_texts
    from detectors import concepts as dc
    from detectors.stats import wilson_interval

    rng = np.random.default_rng(seed + 7919)
    caps = list(captions)
    para = np.zeros(len(caps), dtype=bool)
    for i, (c, a) in enumerate(zip(captions, about, strict=True)):
        if a in PARAPHRASES and rng.random() < rate:
            new = paraphrase(c, a, rng)
            if new is not None:
                caps[i], para[i] = new, True
    matches = dc.word_matches(caps, concepts)
    temb = encode_texts(model, tokenizer, caps)
    sem = dc.semantic_frequency(temb, matches)
    refs, radius = sem["refs"], sem["radius"]
    sims = dc.exclusive_similarities(dc.concept_similarities(temb, refs))
    member = sims > radius  # (n, K): the stage's exclusive semantic membership
    idx = {c: j for j, c in enumerate(concepts)}
    truth_j = np.array([idx.get(a, -1) for a in about])
    rows = np.arange(len(caps))
    known = truth_j >= 0
    hit = np.zeros(len(caps), dtype=bool)
    hit[known] = member[rows[known], truth_j[known]]
    names = matches[rows[known], truth_j[known]]
    named = np.zeros(len(caps), dtype=bool)
    named[known] = names

    def share(mask: np.ndarray) -> dict[str, Any]:
        k, n = int(hit[mask].sum()), int(mask.sum())
        lo, hi = wilson_interval(k, n)
        return {"rate": round(k / n, 4) if n else None, "ci": [round(float(lo), 4), round(float(hi), 4)],
                "k": k, "n": n}  # fmt: skip

    sem_only = member & ~matches.astype(bool)
    k_right = int(sum(sem_only[i, truth_j[i]] for i in np.flatnonzero(known)))
    n_sem_only = int(sem_only.sum())
    lo, hi = wilson_interval(k_right, n_sem_only)
    true_freq = np.array([(truth_j == j).mean() for j in range(len(concepts))])
    sem_freq = sem["counts"] / len(caps)
    word_freq = matches.sum(0) / len(caps)
    para_concepts = [j for j, c in enumerate(concepts) if c in PARAPHRASES]
    return {
        "n_captions": len(caps),
        "n_paraphrased": int(para.sum()),
        "radius": round(float(radius), 4),
        "calibration_f1": round(float(sem["calibration"]["f1"]), 4),
        "paraphrase_recall": share(para & known),
        "word_match_recall": share(named & ~para),
        "semantic_only_precision": {
            "rate": round(k_right / n_sem_only, 4) if n_sem_only else None,
            "ci": [round(float(lo), 4), round(float(hi), 4)],
            "k": k_right,
            "n": n_sem_only,
        },
        "freq_abs_error_median": {
            "semantic": round(float(np.median(np.abs(sem_freq - true_freq)[para_concepts])), 5),
            "word": round(float(np.median(np.abs(word_freq - true_freq)[para_concepts])), 5),
        },
    }


def quality_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    from quality import row

    rows = []
    for seed, r in res["runs"].items():
        for metric, key in (
            ("recall on captions naming the concept only by a paraphrase", "paraphrase_recall"),
            ("recall on captions naming the concept (calibration side)", "word_match_recall"),
            ("precision of semantic-only members", "semantic_only_precision"),
        ):
            v = r[key]
            rows.append(
                row(
                    f"semantic concept frequency, {res['model']}",
                    metric,
                    v["rate"],
                    ci=v["ci"],
                    n=v["n"],
                    tune=res["tune_seeds"],
                    report=[int(seed)],
                    setting=f"testbed captions, {round(100 * res['paraphrase_rate'])}% of "
                    "paraphrasable rows paraphrased",
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    from quality import shipped_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="testbed rows per seed (3000)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[31, 32])
    ap.add_argument("--paraphrase-rate", type=float, default=0.3)
    ap.add_argument("--model", default="tiny-synth")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument(
        "--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "bench_concepts")
    )
    ap.add_argument("--out", default=str(HERE / "results" / "concepts.json"))
    args = ap.parse_args(argv)
    if set(args.seeds) & set(TUNE_SEEDS):
        ap.error(f"--seeds must not overlap the tune seeds {TUNE_SEEDS}")
    import torch

    from audit.models import load_clip
    from audit.testbed import draw
    from audit.workspace import write_json_atomic

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, _, tokenizer = load_clip(args.model, args.pretrained)
    concepts = list(draw.CONCEPTS)  # what a user would pass as --concepts
    res: dict[str, Any] = {
        "benchmark": "concepts",
        "model": args.model if not args.pretrained else f"{args.model}/{args.pretrained}",
        "paraphrase_rate": args.paraphrase_rate,
        "paraphrases": {k: list(v) for k, v in PARAPHRASES.items()},
        "tune_seeds": TUNE_SEEDS,
        "report_seeds": args.seeds,
        "command": "python benchmarks/bench_concepts.py " + " ".join(sys.argv[1:]),
        "runs": {},
    }
    for seed in args.seeds:
        caps, about = testbed_captions(args.n, seed, work)
        res["runs"][str(seed)] = measure(
            caps, about, concepts, args.paraphrase_rate, seed, model, tokenizer
        )
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["quality_rows"] = quality_rows(res)
    res["models"] = shipped_models(["tiny-synth"])
    write_json_atomic(Path(args.out), res)
    print(f"semantic concept frequency ({res['model']}), paraphrase rate {args.paraphrase_rate}")
    print(f"{'seed':>5s} {'paraphrase recall':>24s} {'word recall':>24s} {'sem-only prec':>24s} "
          f"{'|freq err| sem/word':>20s}")  # fmt: skip
    for seed, r in res["runs"].items():

        def cell(v: dict[str, Any]) -> str:
            return f"{v['rate']:.3f} [{v['ci'][0]:.3f},{v['ci'][1]:.3f}] n={v['n']}"

        fe = r["freq_abs_error_median"]
        print(
            f"{seed:>5s} {cell(r['paraphrase_recall']):>24s} {cell(r['word_match_recall']):>24s} "
            f"{cell(r['semantic_only_precision']):>24s} {fe['semantic']:9.4f}/{fe['word']:.4f}"
        )
    print(f"wrote {args.out} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
