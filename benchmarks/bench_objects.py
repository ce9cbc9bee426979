"""Object-level replication: the generator's vocabulary vs the shipped general list + captions.

Until this benchmark, ``laion-audit objects`` took its default objects, and the alternatives
every object competes with, from the testbed generator's own concept list
(``audit.testbed.draw.CONCEPTS``), which holds the planted object ("flag"). The stage now uses
the general object list shipped as package data (``audit/vocab/objects.txt``) plus the
captions' frequent terms (``audit.vocabulary``). This benchmark measures both on testbeds whose
seeds no test uses (default 21, 22, 23; ``--n`` rows each, clean-label poisons off):

* per-image precision / recall / F1 of the "flag" decisions (an astronaut image's presence
  score above the calibrated threshold) against ``truth.parquet``'s ``object_present``, among
  the embedded "astronaut" images, with Wilson 95% intervals, and whether the keyword x flag
  pair is flagged (the default scenario's per-image precision and recall are the
  ``quality_rows`` of docs/quality.md, reported on seeds other than the tuning seeds 0-2);
* other objects flagged for "astronaut" (false findings), after Benjamini-Hochberg;
* scenarios: the old default (generator list, each object competing with the others), old
  ``--objects flag`` (generator list as alternatives), each generator object *alone* (no
  competitors: the failure the alternatives exist for), the new default, new ``--objects flag
  --only-listed`` (vocabulary as alternatives), new ``--objects moon`` (the flag nobody listed:
  the vocabulary is searched too), and the new vocabulary with "flag" removed (an object in no
  list cannot be found: is anything flagged in its place?);
* object discovery (``objects --discover``) through the CLI with the new vocabulary: chosen
  keywords, tests in the BH family, seconds.

Measured (``results/objects_vocabulary.json`` at 2,000 rows, ``..._n1000.json`` at 1,000;
testbed v2 and the tiny-synth of 2026-11-29, zero-shot concept accuracy 0.93; about 10% of the
"astronaut" images carry the flag; per-image P / R of the flag decisions, their Wilson 95%
intervals in the JSON and in docs/quality.md):

=======================================================  ==============  =====================
scenario                                                 2,000 rows      1,000 rows
=======================================================  ==============  =====================
old default (generator list)                             P 0.96-1.00,    P 0.87-1.00,
                                                         R 0.89-0.92     R 0.93-1.00 (seed 21:
                                                                         not flagged, q 0.13)
new default (general list + caption terms, weighted BH)  P 0.96-1.00,    P 0.92-1.00,
                                                         R 0.88-0.93     R 0.85-1.00
q of the flag, new weighted / new plain BH               3e-7-5e-9 /     1e-4-5e-4 /
                                                         3e-6-4e-8       9e-4-4e-3
each generator object alone, no competitors              1 of 23 flagged (the flag), ~10-13%
vocabulary without "flag" (an object in no list)         nothing flagged in its place
--objects moon (flag not listed): vocabulary searched    flag found, moon not flagged
discovery (~9,000-14,000 keyword x object tests)         "astronaut" chosen on every seed, the
                                                         flag its only finding; no other pair
                                                         flagged
=======================================================  ==============  =====================

With the earlier tiny-synth (zero-shot concept accuracy 0.67) 14-18 of the 23 generator
objects were flagged when each was tested alone, and at 1,000 rows the new vocabulary cost
power (seed 22: R 0.71, not flagged under plain BH). The retrained model tells objects apart
well enough that an object without competitors is no longer mistaken for the flag, and the
general vocabulary now finds the flag on every seed at both sizes. On the 1,000-row discovery
test testbed (seed 0, no poisons; 13 of 125 astronaut images carry the flag) the flag is the
scan's strongest pair at q = 0.067, just outside the 5% FDR; on the demo testbed it is flagged
at q = 7e-5.

Usage::

    python benchmarks/bench_objects.py                 # seeds 21 22 23, 2000 rows each
    python benchmarks/bench_objects.py --seeds 21 --n 1000

Prints a table and writes ``benchmarks/results/objects_vocabulary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

KEYWORD = "astronaut"
TARGET = "flag"
TUNE_SEEDS = [0, 1, 2]
"""The testbed seeds the object rules (margin score, calibration, flag rule) were chosen on;
the reported seeds must differ (``benchmarks/quality.py`` refuses an overlap)."""
DEFAULT_SCENARIO = "new: general list + caption terms (default)"


def _prf(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Per-image precision / recall / F1 of presence decisions against ``object_present``, with
    Wilson 95% intervals (precision over the images decided present, recall over the images
    that carry the object)."""
    from detectors.stats import wilson_interval

    tp, n_pred, n_true = int((pred & truth).sum()), int(pred.sum()), int(truth.sum())
    p = tp / max(n_pred, 1)
    r = tp / max(n_true, 1)
    return {
        "precision": round(p, 3),
        "precision_ci": [round(float(v), 3) for v in wilson_interval(tp, n_pred)],
        "recall": round(r, 3),
        "recall_ci": [round(float(v), 3) for v in wilson_interval(tp, n_true)],
        "f1": round(2 * p * r / (p + r), 3) if p + r else 0.0,
        "n_predicted": n_pred,
        "n_true_positives": tp,
    }


def scenario(ctx: dict[str, Any], name: str, objects: list[str], alternatives: list[str],
             target: str = TARGET, classes: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """One way of choosing objects and alternatives, scored as the stage scores them: with
    ``classes`` (the new vocabulary) the stage's weighted BH, else plain BH over the objects."""
    from detectors.objects import (
        DEFAULT_GENERAL_SHARE,
        adjust_flags,
        keyword_scores,
        object_replication,
    )
    from detectors.stats import DEFAULT_FDR
    from detectors.text import match_keyword

    s, sub, out, y = ctx["samples"], ctx["subset"], ctx["outside"], ctx["truth"]
    objs = [o for o in objects if o != KEYWORD]
    alts = [a for a in alternatives if a != KEYWORD and a not in objs]
    t0 = time.perf_counter()
    ins, outs = keyword_scores(s.emb, KEYWORD, objs, alts, ctx["encoder"].contrast, sub, out)
    caps = [s.captions[i] for i in sub]
    ment = np.stack([match_keyword(caps, o) for o in objs], 1)
    rows, _ = object_replication(KEYWORD, objs, ins, outs, ment, list(s.keys[sub]),
                                 inside_emb=s.emb[sub])  # fmt: skip
    for r in rows:
        r["vocabulary"] = classes.get(r["object"], "general") if classes else "listed"
    res_bh = adjust_flags(rows, DEFAULT_FDR, DEFAULT_GENERAL_SHARE if classes else None)
    res: dict[str, Any] = {"scenario": name, "n_objects": len(objs), "n_alternatives": len(alts)}
    by = {r["object"]: r for r in rows}
    if target in by:
        j = objs.index(target)
        r = by[target]
        res.update(
            target_flagged_unadjusted=r["flagged_unadjusted"],
            target_flagged=r["flagged"],
            target_p=r["p_value"],
            target_rate=round(r["image_rate"], 4),
            target_q=r["q_value"],
            **_prf(ins[:, j] > r["threshold"], y),
        )
    others = sorted(
        ((r["object"], round(r["image_rate"], 3)) for r in rows
         if r["object"] != target and r["flagged"]),
        key=lambda x: -x[1],
    )  # fmt: skip
    res["other_flagged"] = len(others)
    res["other_flagged_examples"] = others[:6]
    res["other_flagged_unadjusted"] = sum(
        r["flagged_unadjusted"] for r in rows if r["object"] != target
    )
    res["bh"] = res_bh["method"]
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def one_seed(seed: int, n: int, clip: Any, work: Path) -> dict[str, Any]:
    from bench_replication import testbed_workspace

    from audit.cli import main
    from audit.inputs import load_samples
    from audit.testbed.draw import CONCEPTS  # the generator's list: the old default
    from audit.vocabulary import PromptEncoder, object_classes, object_vocabulary
    from detectors.text import match_keyword

    ws, truth = testbed_workspace(work / f"seed{seed}", n, seed, clip)
    samples = load_samples(ws)
    planted = dict(zip(truth["key"], truth["object_present"]))
    mask = match_keyword(samples.captions, KEYWORD)
    sub = np.flatnonzero(mask)
    ctx = {
        "samples": samples,
        "subset": sub,
        "outside": np.flatnonzero(~mask),  # < 5000: the stage uses every outside image too
        "truth": np.array([bool(planted[k]) for k in samples.keys[sub]]),
        "encoder": PromptEncoder(ws.model(), "cpu", 256, samples.emb.shape[1]),
    }
    old = list(CONCEPTS)
    vocab, info = object_vocabulary(samples.captions)
    res: dict[str, Any] = {
        "seed": seed,
        "n": n,
        "n_subset": int(len(sub)),
        "n_planted": int(ctx["truth"].sum()),
        "vocabulary": {
            "n": len(vocab),
            "general": info["general"],
            "caption_terms": info["caption_terms"],
        },  # fmt: skip
        "flag_in_general_list": TARGET in vocab[: info["general"]],
    }
    cls = object_classes([], info["caption_terms"])
    moon = object_classes(["moon"], info["caption_terms"])
    no_flag = {k: v for k, v in cls.items() if k != TARGET}
    new_moon = ["moon", *vocab]
    sc = [
        scenario(ctx, "old: generator list (default)", old, []),
        scenario(ctx, "old: --objects flag, generator list competes", [TARGET], old),
        scenario(ctx, DEFAULT_SCENARIO, vocab, [], classes=cls),
        scenario(ctx, "new: same, plain BH (no weights)", vocab, []),
        scenario(ctx, "new: --objects flag --only-listed, vocabulary competes", [TARGET], vocab),
        scenario(ctx, "new: --objects moon (flag not listed)", new_moon, [], classes=moon),
        scenario(
            ctx,
            "new: vocabulary without flag (in no list)",
            [v for v in vocab if v != TARGET],
            [],
            classes=no_flag,
        ),  # fmt: skip
    ]
    alone = []
    for o in (c for c in old if c != KEYWORD):
        r = scenario(ctx, f"alone: {o}", [o], [], target=o)
        alone.append({"object": o, "flagged": r["target_flagged"], "rate": r["target_rate"]})
    res["scenarios"] = sc
    res["alone_no_competitors"] = {
        "objects": len(alone),
        "flagged": sum(a["flagged"] for a in alone),
        "median_rate": float(np.median([a["rate"] for a in alone])),
        "rows": alone,
    }
    t0 = time.perf_counter()
    assert main(["objects", "-q", str(ws.root), "--discover", "--top", "3"]) == 0
    meta = ws.finding_meta("object_replication")
    res["discovery"] = {
        "chosen": meta["discovery"]["chosen"],
        "top5": [
            (x["keyword"], x["best_object"], round(x["score"], 3), x["n_flagged"])
            for x in meta["discovery"]["ranking"][:5]
        ],  # fmt: skip
        "multiple_testing": meta["multiple_testing"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return res


def quality_rows(results: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The rows of docs/quality.md: per image, the default vocabulary's "flag" decisions for
    the "astronaut" images against the testbed's ``object_present`` (issue 16 item 12: scored
    per image, so errors cannot cancel as they can in |estimated - planted rate|)."""
    from quality import row

    rows = []
    for r in results:
        sc = next(s for s in r["scenarios"] if s["scenario"] == DEFAULT_SCENARIO)
        for metric, n_items in (("precision", sc["n_predicted"]), ("recall", r["n_planted"])):
            rows.append(
                row(
                    f"object-level replication: {KEYWORD} x {TARGET}, tiny-synth",
                    f"per-image {metric}",
                    sc[metric],
                    ci=sc[f"{metric}_ci"],
                    n=n_items,
                    tune=TUNE_SEEDS,
                    report=[r["seed"]],
                    setting=f"served, testbed {n} rows, general list + caption terms",
                    note=f"pair flagged: {sc.get('target_flagged')}",
                )
            )
    return rows


def main() -> int:
    from quality import shipped_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[21, 22, 23])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", default=str(HERE / "results" / "objects_vocabulary.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from audit.models import load_clip

    torch.set_num_threads(1)
    clip = load_clip("tiny-synth")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_objects_") as tmp:
        for seed in args.seeds:
            results.append(one_seed(seed, args.n, clip, Path(tmp)))
    print(f"{'seed':>4} {'scenario':<58} {'flag':>5} {'q':>8} {'rate':>6} {'P':>5} {'R':>5} "
          f"{'F1':>5} {'other':>5}")  # fmt: skip
    for r in results:
        for s in r["scenarios"]:
            print(f"{r['seed']:>4} {s['scenario']:<58} {str(s.get('target_flagged', '-')):>5} "
                  f"{s.get('target_q', float('nan')):>8.2g} "
                  f"{s.get('target_rate', float('nan')):>6.3f} {s.get('precision', 0):>5.2f} "
                  f"{s.get('recall', 0):>5.2f} {s.get('f1', 0):>5.2f} "
                  f"{s['other_flagged']:>5}")  # fmt: skip
        a = r["alone_no_competitors"]
        print(f"{r['seed']:>4} each generator object alone (no competitors): {a['flagged']} of "
              f"{a['objects']} flagged, median rate {a['median_rate']:.3f}")  # fmt: skip
        d = r["discovery"]
        print(f"{r['seed']:>4} discovery: chosen {d['chosen']}, "
              f"{d['multiple_testing']['n_tests']} tests, {d['seconds']} s")  # fmt: skip
    out = {
        "benchmark": "objects_vocabulary",
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "keyword": KEYWORD,
        "target": TARGET,
        "results": results,
        "tune_seeds": TUNE_SEEDS,
        "report_seeds": args.seeds,
        "quality_rows": quality_rows(results, args.n),
        "models": shipped_models(["tiny-synth"]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
