"""Reproduction stage: batched vs one-seed-at-a-time generation speed, triage AUROC and cost,
copy rates of the planted famous works, of same-keyword prompts and of other prompts.

Setup (all offline, shipped models): ``tiny-sd`` (trained on a SynthLAION-like set where the
three van Gogh "famous works" are heavily duplicated) and ``tiny-synth`` CLIP. A workspace is
built the way a user builds one, from a fresh draw of the same distribution
(``audit.training.train_tiny_sd.make_dataset`` with a seed the model never saw and no earlier
run of this benchmark reported): the drawn images are written as PNG files with a url list
(``audit.testbed.generate.write_served_images``), served over loopback HTTP, downloaded with
``laion-audit download`` (img2dataset) and embedded with ``laion-audit embed --model tiny-synth
--copy-size 128`` (as the demo: CLIP and SSCD copy embeddings, so the stage scores copies in
copy space at its default threshold); ``bench_replication.ingest_folder``. Then one
``word_replication`` finding per work whose cluster is the work's near-copies that came through
with status ok (drawn item -> url list row -> URL -> workspace key). Rows that fail are counted
per status and error in the JSON (``workspace.ingest``) and left out of findings and prompts.
Before issue 16 item 15 the images were embedded by hand and every row marked ok (copies in
CLIP space); that path is gone.

1. **Speed**: images/s of ``SeededGenerator.generate`` with batches of 16/32/64 seeds vs a loop
   generating one seed per pipeline call, same prompt, same steps, after a warm-up; plus the
   largest pixel difference between the two for the same seeds (batch-size invariance check).
2. **Prompts**: a population of the stage's own 15 prompts for the works (five kinds each) and,
   drawn at random from the captions of images that are no work, ``--same-keyword`` captions
   that name the keyword ("van gogh") and ``--plain`` captions that do not; a uniform random
   ``--subset`` of it is measured. Every prompt of the subset gets the full N
   (``laion-audit reproduce WS --prompts FILE --prompts-mode replace --n N --steps S``, triage
   with 4 seeds, no ``--triage-top`` cut), so the triage is scored on prompts it did not choose.
3. **Triage**: AUROC of Wen et al.'s first-step score (4 seeds, and 1 seed) against the N-seed
   labels ("replicates" = the Wilson 95% lower bound of the copy rate is >= 2%,
   ``detectors.memorization.replicates``, whatever the prompt's group), with a bootstrap 95%
   interval over prompts, against every non-replicating prompt and against the same-keyword
   ones alone; TPR only at false-positive rates the number of negatives resolves (at least one
   false positive allowed); cost = triage seconds per prompt / generation seconds per prompt,
   and in UNet calls.
4. **Copy rates** per group (works by kind, all works, same keyword, plain): copies / N pooled
   over the group's prompts with a bootstrap 95% interval over prompts (a prompt's generations
   are not independent draws: a pooled Wilson interval alone would be far too narrow), widened
   to the pooled Wilson interval where resampling cannot vary (a group that never copied).

Seeds: the workspace and prompt draws reported here (``--seed``, ``--prompt-seed``) are not the
workspace seed the stage's defaults were looked at on (2024, which the earlier version of this
benchmark published); both sets are written into the JSON (``seeds``), with ``setting`` (``full``
or what a reduced run changed) and the rows of docs/quality.md (``quality_rows``).

Usage::

    python benchmarks/bench_reproduce.py                  # N=50, 25 steps (~15-30 min on CPU)
    python benchmarks/bench_reproduce.py --n 16 --steps 10 --subset 20 --setting reduced

The ingest (600 rows: download + embed) adds about a minute.

Prints a table and writes ``benchmarks/results/reproduce.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (ROOT, HERE):  # the package, and bench_replication / quality beside this file
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEYWORD = "van gogh"


# ---------------------------------------------------------------------------------------------
def speed(
    generator: str,
    device: str,
    steps: int,
    batch_sizes: list[int],
    n_batched: int,
    n_loop: int,
    prompt: str,
    repeats: int = 2,
) -> dict[str, Any]:
    """Images/s batched vs one seed per call (``repeats`` interleaved rounds, median of each:
    a shared machine's load changes during the run); max pixel difference for shared seeds."""
    from audit.models import load_generator
    from pipelines.reproduce import GenerationSettings, SeededGenerator

    gen = SeededGenerator(load_generator(generator, device=device))
    h, w = gen.resolve_size(None, None)
    st = GenerationSettings(generator, steps=steps, height=h, width=w)
    warm = GenerationSettings(generator, steps=2, height=h, width=w)
    for bs in sorted({1, *batch_sizes}):
        gen.generate(prompt, list(range(bs)), warm)
    seeds = list(range(n_batched))
    loop_times: list[float] = []
    batch_times: dict[int, list[float]] = {bs: [] for bs in batch_sizes}
    diffs: dict[int, int] = {}
    loads = []
    for _ in range(repeats):
        loads.append(os.getloadavg()[0])
        t0 = time.perf_counter()
        loop_imgs = [gen.generate(prompt, [s], st)[0] for s in seeds[:n_loop]]
        loop_times.append((time.perf_counter() - t0) / n_loop)
        for bs in batch_sizes:
            t0 = time.perf_counter()
            imgs = []
            for a in range(0, n_batched, bs):
                imgs += gen.generate(prompt, seeds[a : a + bs], st)
            batch_times[bs].append((time.perf_counter() - t0) / n_batched)
            diffs[bs] = max(
                int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max())
                for x, y in zip(imgs, loop_imgs)
            )
    loop_s = float(np.median(loop_times))
    out: dict[str, Any] = {
        "generator": generator,
        "device": device,
        "steps": steps,
        "height": h,
        "width": w,
        "dtype": str(gen.dtype),
        "prompt": prompt,
        "repeats": repeats,
        "load_average_1min": loads,
        "loop": {
            "images": n_loop,
            "seconds_per_image": loop_s,
            "images_per_s": 1 / loop_s,
            "rounds_seconds_per_image": loop_times,
        },
        "batched": [],
    }
    for bs in batch_sizes:
        sec = float(np.median(batch_times[bs]))
        out["batched"].append(
            {
                "batch_size": bs,
                "images": n_batched,
                "seconds_per_image": sec,
                "images_per_s": 1 / sec,
                "rounds_seconds_per_image": batch_times[bs],
                "speedup_vs_loop": loop_s / sec,
                "max_pixel_diff_vs_loop": diffs[bs],
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
def draw_items(n: int, seed: int, work_share: float) -> list[dict[str, Any]]:
    """A fresh draw of tiny-sd's training distribution: image (PIL 64 px), caption, work_id."""
    from audit.training.train_tiny_sd import make_dataset

    return [
        {"image": it["image"], "caption": it["captions"][0], "work_id": it["work_id"]}
        for it in make_dataset(n, seed, work_share)
    ]


def ingest_items(root: Path, items: list[dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """The user's path: the items as PNG files + a url list (``write_served_images``) under
    ``root/served``, served over loopback HTTP, ``laion-audit download`` (img2dataset) and
    ``embed`` (tiny-synth + SSCD at 128 px) into ``root/ws``
    (``bench_replication.ingest_folder``). Sets each item's ``key``, ``status`` and ``error``
    (its url list row -> its URL -> the workspace's row); returns the workspace and what the
    ingest did (rows per status, the errors, per work how many near-copies came through)."""
    from bench_replication import INGEST, ingest_folder

    from audit.testbed.generate import write_served_images

    t0 = time.perf_counter()
    served = root / "served"
    write_served_images(served, [it["image"] for it in items], [it["caption"] for it in items])
    ws, rows = ingest_folder(served, root / "ws")
    if len(rows) != len(items):
        raise RuntimeError(f"url list has {len(rows)} rows for {len(items)} items")
    for it, r in zip(items, rows.itertuples()):
        it["key"] = None if r.status == "missing" else r.key
        it["status"] = r.status
        it["error"] = None if r.error is None or r.error != r.error else str(r.error)
    return ws.root, ingest_summary(items, time.perf_counter() - t0, INGEST)


def ingest_summary(items: list[dict[str, Any]], seconds: float, how: str) -> dict[str, Any]:
    """Rows per status, the errors of the rows that failed, and per work (and the other
    images) how many were drawn and how many came through with status ok."""
    works: dict[str, dict[str, int]] = {}
    for it in items:
        w = works.setdefault(it["work_id"] or "(no work)", {"drawn": 0, "ok": 0})
        w["drawn"] += 1
        w["ok"] += it["status"] == "ok"
    failed = [it for it in items if it["status"] != "ok"]
    return {
        "how": how,
        "rows": len(items),
        "ok": len(items) - len(failed),
        "failed": len(failed),
        "by_status": _counts(it["status"] for it in items),
        "errors": _counts(str(it["error"]) for it in failed),
        "by_work": works,
        "seconds": seconds,
        "note": "findings, prompts and the copy scoring use only rows with status ok",
    }


def write_planted_findings(ws_root: Path, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``word_replication`` finding per famous work from the planted truth: its members are
    the work's near-copies that the ingest embedded with status ok."""
    import pyarrow as pa

    from audit.testbed.draw import WORKS
    from audit.workspace import Workspace

    ok = [it for it in items if it["status"] == "ok"]
    findings = []
    for rank, (wid, w) in enumerate(WORKS.items()):
        members = [it for it in ok if it["work_id"] == wid]
        if not members:
            raise RuntimeError(f"no near-copy of {wid} came through the ingest with status ok")
        keys = [it["key"] for it in members]
        findings.append(
            {
                "finding_id": f"word:van gogh:{rank}",
                "keyword": KEYWORD,
                "cluster_rank": rank,
                "size": len(keys),
                "share": len(keys) / len(ok),
                "mean_sim": None,
                "min_sim": None,
                "medoid_key": keys[0],
                "representative_keys": keys[:3],
                "member_keys": keys,
                "top_words": list(w["words"]),
                "top_word_lift": [1.0] * len(w["words"]),
                "prompt_words": w["phrase"],
                "example_captions": [it["caption"] for it in members[:20]],
                "words_only_share": None,
                "flagged": True,
                "work_id": wid,
            }
        )
    Workspace(ws_root).write_finding(
        "word_replication",
        pa.Table.from_pylist(findings),
        {"detector": "bench_reproduce (planted truth)"},
    )
    return findings


def build_workspace(
    root: Path, n: int, seed: int, work_share: float
) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    """Draw ``n`` items, ingest them (:func:`ingest_items`) and write the planted findings;
    returns ``(workspace, the items with status ok, ingest summary)``."""
    items = draw_items(n, seed, work_share)
    ws, summary = ingest_items(root, items)
    write_planted_findings(ws, items)
    return ws, [it for it in items if it["status"] == "ok"], summary


def prompt_population(
    ws: Path, items: list[dict], n_same: int, n_plain: int, seed: int
) -> list[dict[str, Any]]:
    """The prompts an auditor would triage: the stage's own prompts for the three flagged works
    (five kinds each, built from the word findings like ``reproduce`` builds them), and as many
    negatives again of two kinds drawn at random (``seed``) from the workspace's captions of
    images that are no famous work: ``same_keyword`` captions that name the works' keyword
    ("van gogh") and ``plain`` captions that do not. Whether a prompt replicates is decided by
    its N generations, never by its group."""
    import pyarrow.parquet as pq

    from audit.prompts import build_prompts
    from detectors.text import match_keyword

    word = pq.read_table(ws / "findings" / "word_replication.parquet").to_pandas()
    built = build_prompts(word, None)
    out = [
        {"prompt": r.prompt, "finding_id": r.finding_id, "prompt_kind": r.prompt_kind,
         "group": "work"}
        for r in built.itertuples()
    ]  # fmt: skip
    caps = sorted({it["caption"] for it in items if it["work_id"] is None})
    named = match_keyword(caps, KEYWORD)
    rng = np.random.default_rng(seed)
    same = [c for c, m in zip(caps, named) if m]
    plain = [c for c, m in zip(caps, named) if not m]
    for group, pool, k in (("same_keyword", same, n_same), ("plain", plain, n_plain)):
        for i in np.sort(rng.choice(len(pool), size=min(k, len(pool)), replace=False)):
            out.append({"prompt": pool[i], "prompt_kind": group, "group": group})
    return out


def stage_run(
    ws: Path,
    prompts: list[dict[str, Any]],
    n: int,
    steps: int,
    batch: int,
    device: str,
    generator: str = "tiny-sd",
    threads: int = 0,
) -> dict[str, Any]:
    """``laion-audit reproduce`` on exactly ``prompts`` (a prompt file, ``--prompts-mode
    replace``): triage with 4 seeds and the full N for every prompt, no ``--triage-top`` cut."""
    import pyarrow.parquet as pq

    from audit.cli import main

    pfile = ws / "prompts.jsonl"
    pfile.write_text(
        "".join(
            json.dumps({k: p[k] for k in ("prompt", "finding_id", "prompt_kind") if k in p}) + "\n"
            for p in prompts
        )
    )
    t0 = time.perf_counter()
    code = main(
        ["reproduce", str(ws), "--n", str(n), "--steps", str(steps), "--batch-size", str(batch),
         "--chunk-size", str(max(n, 1)), "--triage-seeds", "4", "--prompts", str(pfile),
         "--prompts-mode", "replace", "--device", device, "--generator", generator,
         "--torch-threads", str(threads), "-q"]
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"laion-audit reproduce failed with exit code {code}")
    m = pq.read_table(ws / "findings" / "memorization.parquet").to_pandas()
    group = {p["prompt"]: p["group"] for p in prompts}
    m["group"] = [group[p] for p in m["prompt"]]
    tri = pq.read_table(ws / "generations" / "triage.parquet").to_pandas().set_index("prompt_id")
    m["triage_1_seed"] = [float(tri.loc[p, "triage_per_seed"][0]) for p in m["prompt_id"]]
    meta = json.loads((ws / "findings" / "memorization.json").read_text())
    return {"wall_seconds": wall, "table": m, "meta": meta}


def analyse(run: dict[str, Any], n: int, steps: int) -> dict[str, Any]:
    """Triage quality (AUROC with a bootstrap interval over prompts, TPR at the FPRs the sample
    resolves; against every negative, and against same-keyword negatives alone), its cost, and
    copy rates per group with bootstrap intervals over prompts."""
    from detectors import memorization as mem

    m, meta = run["table"], run["meta"]
    m["label"] = mem.replicates(
        m["n_copies"].to_numpy(), m["n"].to_numpy(), meta["triage"]["min_copy_share"]
    )
    hard = m[m["label"] | (m["group"] == "same_keyword")]
    t = meta["timings"]
    n_prompts = len(m)
    per_img_step = t["generation"] / (n_prompts * n * steps)
    triage = {
        "labels": "replicates: Wilson 95% lower bound of the copy rate >= "
        f"{meta['triage']['min_copy_share']} (detectors.memorization.replicates)",
        "all_negatives_4_seeds": mem.triage_quality(m["triage_score"], m["label"]),
        "all_negatives_1_seed": mem.triage_quality(m["triage_1_seed"], m["label"]),
        "same_keyword_negatives_4_seeds": mem.triage_quality(hard["triage_score"], hard["label"]),
        "stage_auroc": meta["triage"]["auroc_vs_replication"],
        "triage_seconds": t["triage"],
        "generation_seconds": t["generation"],
        "triage_seconds_per_prompt": t["triage"] / n_prompts,
        "generation_seconds_per_prompt": t["generation"] / n_prompts,
        "cost_share_seconds": t["triage"] / t["generation"],
        "cost_share_unet_calls": 4 / (n * steps),
        # the measured per-image generation time extrapolated to the default N=500 x 50 steps
        "cost_share_seconds_at_500x50": (t["triage"] / n_prompts) / (per_img_step * 500 * 50),
    }
    rates = {}
    works = m[m["group"] == "work"]
    for kind, g in works.groupby("prompt_kind"):
        rates[f"work: {kind}"] = mem.copy_rate_over_prompts(g["n_copies"], g["n"])
    rates["work: all kinds"] = mem.copy_rate_over_prompts(works["n_copies"], works["n"])
    for grp in ("same_keyword", "plain"):
        g = m[m["group"] == grp]
        rates[grp] = mem.copy_rate_over_prompts(g["n_copies"], g["n"])
    rows = m[["group", "finding_id", "prompt_kind", "prompt", "n", "n_copies",
              "replication_rate", "ci_low", "ci_high", "mean_sim", "max_sim", "verbatim_rate",
              "triage_score", "triage_1_seed", "label"]]  # fmt: skip
    return {
        "wall_seconds": run["wall_seconds"],
        "copy_threshold": meta["copy_threshold"],
        "space": (meta.get("space") or {}).get("column", "image_emb"),
        "unrelated_similarity_quantiles": meta.get("unrelated_similarity_quantiles"),
        "tiled_l2_threshold": meta.get("tiled_l2_threshold"),
        "timings": t,
        "triage": triage,
        "copy_rates": rates,
        "prompts": json.loads(rows.to_json(orient="records")),
    }


def quality_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of docs/quality.md: the triage's AUROC and the copy rates, on a workspace seed
    and prompt draws that never chose a setting."""
    from quality import row

    st, seeds = res["stage"], res["seeds"]
    tune, report = seeds["tune"], [f"workspace {seeds['report']['workspace']}",
                                   f"prompts {seeds['report']['prompts']}"]  # fmt: skip
    space = (
        "CLIP space"
        if st["space"] == "image_emb"
        else f"copy space (SSCD 128 px) at {st['copy_threshold']:.2f}"
    )
    setting = f"tiny-sd, {res['n']} seeds x {res['steps']} steps, copies in {space}"
    if res.get("ingest"):
        setting = "ingest (download + embed), " + setting
    if res.get("setting", "full") != "full":
        setting += " (reduced run)"
    out = []
    for key, what in (("all_negatives_4_seeds", "every non-replicating prompt"),
                      ("same_keyword_negatives_4_seeds", "same-keyword prompts")):  # fmt: skip
        q = st["triage"][key]
        out.append(row(
            "triage (first-step noise norm, 4 seeds)", f"AUROC vs replication, negatives: {what}",
            q["auroc"], ci=q["auroc_ci"], n=q["prompts"], tune=tune, report=report,
            setting=setting, note=f"{q['positives']} replicating of {q['prompts']} prompts",
        ))  # fmt: skip
    for grp in ("work: all kinds", "same_keyword", "plain"):
        r = st["copy_rates"][grp]
        out.append(row(
            "reproduce (copy rate)", f"{grp} prompts", r["rate"], ci=[r["ci_low"], r["ci_high"]],
            n=r["prompts"], tune=tune, report=report, setting=setting,
            note="bootstrap over prompts, at least the pooled Wilson interval",
        ))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
def _f(x: Any, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def _ci(lo: Any, hi: Any) -> str:
    return f"[{_f(lo)}, {_f(hi)}]"


def print_ingest(ing: dict[str, Any]) -> None:
    print(
        f"\n== ingest ({ing['how']}): {ing['ok']} of {ing['rows']} rows ok, {ing['failed']} "
        f"failed ({ing['seconds']:.0f} s)"
    )
    for status, c in sorted(ing["by_status"].items()):
        print(f"  {status:<24}{c:>6}")
    for err, c in sorted(ing["errors"].items(), key=lambda x: -x[1])[:10]:
        print(f"  error x{c}: {err}")
    for wid, w in ing["by_work"].items():
        print(f"  {wid:<24}{w['ok']:>6} of {w['drawn']} ok")


def print_report(res: dict[str, Any]) -> None:
    sp = res["speed"]
    print(
        f"\n== generation speed ({sp['generator']} on {sp['device']}, {sp['dtype']}, "
        f"{sp['width']}x{sp['height']}, {sp['steps']} DDIM steps, torch threads "
        f"{res['threads']}; median of {sp['repeats']} interleaved rounds; 1-min load average "
        f"{', '.join(f'{x:.1f}' for x in sp['load_average_1min'])} on {res['machine']['cpus']} "
        "CPUs)"
    )
    print(
        f"{'mode':<22}{'images':>8}{'s/image':>10}{'images/s':>10}{'speedup':>9}{'max px diff':>13}"
    )
    lp = sp["loop"]
    print(
        f"{'one seed per call':<22}{lp['images']:>8}{lp['seconds_per_image']:>10.3f}"
        f"{lp['images_per_s']:>10.2f}{1.0:>9.2f}{'-':>13}"
    )
    for b in sp["batched"]:
        print(
            f"{'batch ' + str(b['batch_size']):<22}{b['images']:>8}"
            f"{b['seconds_per_image']:>10.3f}{b['images_per_s']:>10.2f}"
            f"{b['speedup_vs_loop']:>9.2f}{b['max_pixel_diff_vs_loop']:>13}"
        )
    if (res.get("workspace") or {}).get("ingest"):
        print_ingest(res["workspace"]["ingest"])
    st, seeds = res["stage"], res["seeds"]
    tr = st["triage"]
    print(
        f"\n== triage (Wen et al. first-step ||eps_c - eps_0||) vs {res['n']}-seed labels on a "
        f"random subset of {res['prompts']['subset']} of {res['prompts']['population']} prompts "
        f"(workspace seed {seeds['report']['workspace']}, prompt seed "
        f"{seeds['report']['prompts']}; tuned on {', '.join(seeds['tune'])})"
    )
    print(f"{'negatives':<34}{'prompts':>8}{'repl.':>6}{'AUROC':>7}{'95% CI (bootstrap)':>20}"
          f"  TPR at resolvable FPR")  # fmt: skip
    for key, name in (
        ("all_negatives_4_seeds", "all, 4 seeds"),
        ("all_negatives_1_seed", "all, 1 seed"),
        ("same_keyword_negatives_4_seeds", "same keyword only, 4 seeds"),
    ):
        q = tr[key]
        tpr = ", ".join(f"{_f(v, 2)} @ {k}" for k, v in q["tpr_at_fpr"].items()) or "none"
        print(f"{name:<34}{q['prompts']:>8}{q['positives']:>6}{_f(q['auroc']):>7}"
              f"{_ci(*q['auroc_ci']):>20}  {tpr}")  # fmt: skip
    print(
        f"cost: {_f(tr['triage_seconds_per_prompt'], 2)} s/prompt vs "
        f"{_f(tr['generation_seconds_per_prompt'], 1)} s/prompt for {res['n']} x "
        f"{res['steps']} steps -> share {_f(tr['cost_share_seconds'], 4)} (UNet calls "
        f"{_f(tr['cost_share_unet_calls'], 4)}); extrapolated to 500 x 50: "
        f"{tr['cost_share_seconds_at_500x50']:.2e}"
    )
    print(f"\n== copy rates (copy = similarity >= {st['copy_threshold']:.4f} in {st['space']}; "
          "95% interval: bootstrap over prompts, at least the pooled Wilson)")  # fmt: skip
    print(f"{'prompts':<34}{'prompts':>8}{'copies/n':>12}{'rate':>8}{'95% CI':>18}")
    for name, p in st["copy_rates"].items():
        print(f"{name:<34}{p['prompts']:>8}{str(p['copies']) + '/' + str(p['n']):>12}"
              f"{_f(p['rate']):>8}{_ci(p['ci_low'], p['ci_high']):>18}")  # fmt: skip


TUNE_SEEDS = [2024, 4242]
"""Never reported here: 2024, the workspace seed the earlier version of this benchmark
published (and the stage's defaults were looked at on); 4242, the draw on which SSCD's 128 px
input for tiny-sd's 64 px images was chosen (benchmarks/bench_copies.py part 3)."""
REPORT_SEED = 5150
PROMPT_SEED = 5151


def main(argv: list[str] | None = None) -> int:
    from quality import shipped_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50, help="generations per prompt (50)")
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps (25)")
    ap.add_argument("--batch", type=int, default=50, help="stage batch size (50)")
    ap.add_argument("--speed-batches", default="16,32,64")
    ap.add_argument("--speed-seeds", type=int, default=64, help="images per batched timing")
    ap.add_argument("--loop-seeds", type=int, default=12, help="images in the one-seed loop")
    ap.add_argument("--train-n", type=int, default=600)
    ap.add_argument("--work-share", type=float, default=0.06)
    ap.add_argument("--same-keyword", type=int, default=30, help="same-keyword prompts drawn")
    ap.add_argument("--plain", type=int, default=30, help="plain caption prompts drawn")
    ap.add_argument("--subset", type=int, default=45, help="prompts of the population measured")
    ap.add_argument("--seed", type=int, default=REPORT_SEED, help="workspace seed (report)")
    ap.add_argument("--prompt-seed", type=int, default=PROMPT_SEED, help="prompt draws (report)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--generator", default="tiny-sd", help="diffusers pipeline (tiny-sd)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved speed rounds (2)")
    ap.add_argument("--setting", default="full", help="recorded as is: full, or what was reduced")
    ap.add_argument("--out", default=str(HERE / "results" / "reproduce.json"))
    args = ap.parse_args(argv)
    if args.seed in TUNE_SEEDS:
        raise SystemExit(f"--seed {args.seed} is a tuning seed; report on another one")

    import torch

    torch.set_num_threads(args.threads)
    from audit.log import setup_logging

    setup_logging(-1)
    t0 = time.time()
    res: dict[str, Any] = {
        "setting": args.setting,
        "n": args.n,
        "steps": args.steps,
        "threads": args.threads,
        "seeds": {
            "tune": [f"workspace {s}" for s in TUNE_SEEDS],
            "report": {"workspace": args.seed, "prompts": args.prompt_seed},
            "note": "nothing is fitted to labels: alpha 1e-3 and min_copy_share 0.02 come from "
            "the literature, 4 triage seeds from Wen et al.; copy space: SSCD at the stage's "
            "default 0.5 (Somepalli et al.), its 128 px input chosen on a draw with seed 4242 "
            "(bench_copies part 3); tiny-sd was trained on generator seed 0 (its training "
            "summary)",
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    batches = [int(b) for b in args.speed_batches.split(",") if b]
    res["speed"] = speed(
        args.generator,
        args.device,
        args.steps,
        batches,
        args.speed_seeds,
        args.loop_seeds,
        "starry night by van gogh",
        args.repeats,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ws, items, ingest = build_workspace(Path(tmp), args.train_n, args.seed, args.work_share)
        res["ingest"] = ingest["how"]
        print_ingest(ingest)
        population = prompt_population(ws, items, args.same_keyword, args.plain, args.prompt_seed)
        rng = np.random.default_rng([args.prompt_seed, 1])
        pick = np.sort(rng.choice(len(population), min(args.subset, len(population)), False))
        subset = [population[i] for i in pick]
        res["workspace"] = {"train_n": args.train_n, "work_share": args.work_share,
                            "ingest": ingest}  # fmt: skip
        res["prompts"] = {
            "population": len(population),
            "population_groups": _counts(p["group"] for p in population),
            "subset": len(subset),
            "subset_groups": _counts(p["group"] for p in subset),
            "how": "a uniform random subset of the population, every prompt generated at the "
            "full N (no triage cut): the triage is scored on prompts it did not choose",
        }
        run = stage_run(ws, subset, args.n, args.steps, args.batch, args.device, args.generator,
                        args.threads)  # fmt: skip
        res["stage"] = analyse(run, args.n, args.steps)
    res["quality_rows"] = quality_rows(res)
    res["models"] = shipped_models(["tiny-synth", "tiny-sd"])
    res["seconds"] = time.time() - t0
    print_report(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(f"\nwrote {out} ({res['seconds']:.0f} s)")
    return 0


def _counts(xs: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


if __name__ == "__main__":
    sys.exit(main())
