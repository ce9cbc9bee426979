"""Reproduction stage: batched vs one-seed-at-a-time generation speed, triage AUROC and cost,
replication rates of the planted famous works vs control prompts.

Setup (all offline, shipped models): ``tiny-sd`` (trained on a SynthLAION-like set where the
three van Gogh "famous works" are heavily duplicated) and ``tiny-synth`` CLIP. A workspace is
built from a fresh draw of the same distribution (``audit.training.train_tiny_sd.make_dataset``
with a seed the model never saw): its embeddings (tiny CLIP), shards, and one
``word_replication`` finding per work whose cluster is the work's near-copies. Controls are the
captions of non-duplicated images (a prompt file, scored against every training image).

1. **Speed**: images/s of ``SeededGenerator.generate`` with batches of 16/32/64 seeds vs a loop
   generating one seed per pipeline call, same prompt, same steps, after a warm-up; plus the
   largest pixel difference between the two for the same seeds (batch-size invariance check).
2. **Stage run**: ``laion-audit reproduce WS --n N --steps S`` (triage with 4 seeds on every
   prompt, full N for every prompt so the triage can be scored).
3. **Triage**: AUROC (and TPR at 1% FPR) of Wen et al.'s first-step score (4 seeds, and 1 seed)
   against the N-seed labels ("replicates" = the Wilson 95% lower bound of the copy rate is >= 2%,
   ``detectors.memorization.replicates``);
   cost = triage seconds per prompt / generation seconds per prompt, and in UNet calls.
4. **Replication**: per prompt kind, pooled over the three works, and for the controls: copies,
   rate, Wilson 95% interval.

Usage::

    python benchmarks/bench_reproduce.py                  # N=50, 25 steps (several minutes)
    python benchmarks/bench_reproduce.py --n 16 --steps 10 --controls 6 --speed-seeds 32

Prints a table and writes ``benchmarks/results/reproduce.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
def build_workspace(root: Path, n: int, seed: int, work_share: float) -> tuple[Path, list[dict]]:
    """Embeddings, shards and one word_replication finding per famous work (see module doc)."""
    import pyarrow as pa

    from audit.models import encode_images, encode_texts, load_clip
    from audit.testbed.draw import WORKS
    from audit.training.train_tiny_sd import make_dataset
    from audit.workspace import Workspace, embedding_schema
    from pipelines.embed import rows_to_table

    items = [
        {"image": it["image"], "caption": it["captions"][0], "work_id": it["work_id"]}
        for it in make_dataset(n, seed, work_share)
    ]
    ws = Workspace(root)
    model, preprocess, tok = load_clip("tiny-synth")
    keys = [f"{i:09d}" for i in range(len(items))]
    img = encode_images(model, preprocess, [it["image"] for it in items])
    txt = encode_texts(model, tok, [it["caption"] for it in items])
    rows = [
        {
            "key": k,
            "url": f"http://127.0.0.1/{k}.png",
            "caption": it["caption"],
            "sha256": None,
            "width": 64,
            "height": 64,
            "status": "ok",
            "error": None,
            "image_emb": img[i],
            "text_emb": txt[i],
            "clip_score": float(img[i] @ txt[i]),
        }
        for i, (k, it) in enumerate(zip(keys, items))
    ]
    ws.write_part(ws.part_path(0), rows_to_table(rows, embedding_schema(img.shape[1])))
    ws.write_json(
        ws.embeddings_dir / "model.json",
        {"name": "tiny-synth", "pretrained": None, "dim": int(img.shape[1])},
    )
    ws.shards_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(ws.shards_dir / "00000.tar", "w") as tar:
        for k, it in zip(keys, items):
            buf = io.BytesIO()
            it["image"].save(buf, format="PNG")
            for name, data in ((f"{k}.png", buf.getvalue()), (f"{k}.txt", it["caption"].encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    findings = []
    for rank, (wid, w) in enumerate(WORKS.items()):
        idx = [i for i, it in enumerate(items) if it["work_id"] == wid]
        findings.append(
            {
                "finding_id": f"word:van gogh:{rank}",
                "keyword": "van gogh",
                "cluster_rank": rank,
                "size": len(idx),
                "share": len(idx) / len(items),
                "mean_sim": None,
                "min_sim": None,
                "medoid_key": keys[idx[0]],
                "representative_keys": [keys[i] for i in idx[:3]],
                "member_keys": [keys[i] for i in idx],
                "top_words": list(w["words"]),
                "top_word_lift": [1.0] * len(w["words"]),
                "prompt_words": w["phrase"],
                "example_captions": [items[i]["caption"] for i in idx[:20]],
                "words_only_share": None,
                "flagged": True,
                "work_id": wid,
            }
        )
    ws.write_finding(
        "word_replication",
        pa.Table.from_pylist(findings),
        {"detector": "bench_reproduce (planted truth)"},
    )
    return root, items


def pooled(df: Any) -> dict[str, Any]:
    from detectors.stats import wilson_interval

    k, n = int(df["n_copies"].sum()), int(df["n"].sum())
    lo, hi = wilson_interval(k, n)
    return {
        "prompts": int(len(df)),
        "copies": k,
        "n": n,
        "rate": k / n if n else None,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "mean_sim": float(np.average(df["mean_sim"], weights=df["n"])) if n else None,
    }


def stage_run(
    ws: Path,
    items: list[dict],
    n: int,
    steps: int,
    batch: int,
    controls: int,
    device: str,
    generator: str = "tiny-sd",
    threads: int = 0,
) -> dict[str, Any]:
    import pandas as pd
    import pyarrow.parquet as pq

    from audit.cli import main
    from detectors import memorization as mem

    plain = [it["caption"] for it in items if it["work_id"] is None]
    rng = np.random.default_rng(7)
    picked = [
        plain[i] for i in rng.choice(len(plain), size=min(controls, len(plain)), replace=False)
    ]
    pfile = ws / "controls.jsonl"
    pfile.write_text(
        "".join(json.dumps({"prompt": c, "prompt_kind": "control"}) + "\n" for c in picked)
    )
    t0 = time.perf_counter()
    code = main(
        [
            "reproduce",
            str(ws),
            "--n",
            str(n),
            "--steps",
            str(steps),
            "--batch-size",
            str(batch),
            "--chunk-size",
            str(max(n, 1)),
            "--triage-seeds",
            "4",
            "--prompts",
            str(pfile),
            "--device",
            device,
            "--generator",
            generator,
            "--torch-threads",
            str(threads),
            "-q",
        ]
    )
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"laion-audit reproduce failed with exit code {code}")
    m = pq.read_table(ws / "findings" / "memorization.parquet").to_pandas()
    meta = json.loads((ws / "findings" / "memorization.json").read_text())
    tri = pq.read_table(ws / "generations" / "triage.parquet").to_pandas().set_index("prompt_id")
    labels = mem.replication_labels(
        m["n_copies"].to_numpy(), m["n"].to_numpy(), meta["triage"]["min_copy_share"]
    )
    one_seed = np.array([tri.loc[p, "triage_per_seed"][0] for p in m["prompt_id"]])
    t = meta["timings"]
    n_prompts = len(m)
    triage = {
        "prompts": n_prompts,
        "replicating": int(labels.sum()),
        "auroc_4_seeds": mem.triage_auroc(m["triage_score"], labels),
        "auroc_1_seed": mem.triage_auroc(one_seed, labels),
        "tpr_at_1pct_fpr_4_seeds": mem.tpr_at_fpr(m["triage_score"], labels, 0.01),
        "triage_seconds": t["triage"],
        "generation_seconds": t["generation"],
        "triage_seconds_per_prompt": t["triage"] / n_prompts,
        "generation_seconds_per_prompt": t["generation"] / n_prompts,
        "cost_share_seconds": (t["triage"] / n_prompts) / (t["generation"] / n_prompts),
        "cost_share_unet_calls": 4 / (n * steps),
        "cost_share_seconds_at_500x50": None,
    }
    # extrapolate the measured per-image generation time to the default N=500 x 50 steps
    per_img_step = t["generation"] / (n_prompts * n * steps)
    triage["cost_share_seconds_at_500x50"] = (t["triage"] / n_prompts) / (per_img_step * 500 * 50)
    by_kind = {}
    for kind, g in m.groupby("prompt_kind"):
        by_kind[str(kind)] = pooled(g)
    works = m[m["prompt_kind"] != "control"]
    rows = m[
        [
            "finding_id",
            "prompt_kind",
            "prompt",
            "n",
            "n_copies",
            "replication_rate",
            "ci_low",
            "ci_high",
            "mean_sim",
            "max_sim",
            "verbatim_rate",
            "triage_score",
        ]
    ].copy()
    rows["label"] = labels
    return {
        "wall_seconds": wall,
        "copy_threshold": meta["copy_threshold"],
        "unrelated_similarity_quantiles": meta["unrelated_similarity_quantiles"],
        "tiled_l2_threshold": meta.get("tiled_l2_threshold"),
        "timings": t,
        "triage": triage,
        "by_kind": by_kind,
        "works_all_kinds": pooled(works),
        "controls": pooled(m[m["prompt_kind"] == "control"]),
        "prompts": json.loads(pd.DataFrame(rows).to_json(orient="records")),
    }


# ---------------------------------------------------------------------------------------------
def _f(x: Any, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


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
    st = res["stage"]
    tr = st["triage"]
    print(
        f"\n== triage (Wen et al. first-step ||eps_c - eps_0||) vs {res['n']}-seed labels: "
        f"{tr['replicating']} of {tr['prompts']} prompts replicate"
    )
    print(
        f"AUROC 4 seeds {_f(tr['auroc_4_seeds'])}  1 seed {_f(tr['auroc_1_seed'])}  "
        f"TPR@1%FPR {_f(tr['tpr_at_1pct_fpr_4_seeds'])}"
    )
    print(
        f"cost: {_f(tr['triage_seconds_per_prompt'], 2)} s/prompt vs "
        f"{_f(tr['generation_seconds_per_prompt'], 1)} s/prompt for {res['n']} x "
        f"{res['steps']} steps -> share {_f(tr['cost_share_seconds'], 4)} (UNet calls "
        f"{_f(tr['cost_share_unet_calls'], 4)}); extrapolated to 500 x 50: "
        f"{tr['cost_share_seconds_at_500x50']:.2e}"
    )
    print(
        f"\n== replication (copy = best cosine over the cluster >= "
        f"{st['copy_threshold']:.4f}, the 1-1e-3 quantile of unrelated training pairs)"
    )
    print(
        f"{'prompt kind':<26}{'prompts':>8}{'copies/n':>12}{'rate':>8}{'95% CI':>18}"
        f"{'mean sim':>10}"
    )
    for kind, p in sorted(st["by_kind"].items(), key=lambda kv: kv[0] == "control"):
        print(
            f"{kind:<26}{p['prompts']:>8}{str(p['copies']) + '/' + str(p['n']):>12}"
            f"{_f(p['rate']):>8}{'[' + _f(p['ci_low']) + ', ' + _f(p['ci_high']) + ']':>18}"
            f"{_f(p['mean_sim']):>10}"
        )
    w, c = st["works_all_kinds"], st["controls"]
    print(
        f"{'works (all kinds)':<26}{w['prompts']:>8}{str(w['copies']) + '/' + str(w['n']):>12}"
        f"{_f(w['rate']):>8}{'[' + _f(w['ci_low']) + ', ' + _f(w['ci_high']) + ']':>18}"
    )
    print(
        f"{'controls':<26}{c['prompts']:>8}{str(c['copies']) + '/' + str(c['n']):>12}"
        f"{_f(c['rate']):>8}{'[' + _f(c['ci_low']) + ', ' + _f(c['ci_high']) + ']':>18}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50, help="generations per prompt (50)")
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps (25)")
    ap.add_argument("--batch", type=int, default=50, help="stage batch size (50)")
    ap.add_argument("--speed-batches", default="16,32,64")
    ap.add_argument("--speed-seeds", type=int, default=64, help="images per batched timing")
    ap.add_argument("--loop-seeds", type=int, default=12, help="images in the one-seed loop")
    ap.add_argument("--train-n", type=int, default=600)
    ap.add_argument("--work-share", type=float, default=0.06)
    ap.add_argument("--controls", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--generator", default="tiny-sd", help="diffusers pipeline (tiny-sd)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved speed rounds (2)")
    ap.add_argument("--out", default=str(HERE / "results" / "reproduce.json"))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from audit.log import setup_logging

    setup_logging(-1)
    t0 = time.time()
    res: dict[str, Any] = {
        "n": args.n,
        "steps": args.steps,
        "threads": args.threads,
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
        ws, items = build_workspace(Path(tmp) / "ws", args.train_n, 2024, args.work_share)
        res["workspace"] = {
            "train_n": args.train_n,
            "work_share": args.work_share,
            "seed": 2024,
            "controls": args.controls,
        }
        res["stage"] = stage_run(
            ws,
            items,
            args.n,
            args.steps,
            args.batch,
            args.controls,
            args.device,
            args.generator,
            args.threads,
        )
    res["seconds"] = time.time() - t0
    print_report(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(f"\nwrote {out} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
