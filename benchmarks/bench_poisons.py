"""Poison-candidate quality on SynthLAION testbeds with planted poisons.

    python benchmarks/bench_poisons.py                      # 3 seeds x rates 0.5%, 1%, 2%
    python benchmarks/bench_poisons.py --n 3000 --seeds 0 --rates 0.02   # quick look

For every (seed, rate) it builds a testbed whose poisoned concepts hold ``rate`` poisons of each
kind: dirty-label pairs on one concept (caption names A, the image shows B) and clean-label
Nightshade-style PGD poisons (L-infinity 8/255 toward one anchor image of B, optimised against
the tiny CLIP through JPEG q95) on another. It embeds every served image directly with the tiny
CLIP (``audit.models.encode_images``, the model the embed stage uses) instead of running the
Beam pipeline, once as served and once after re-encoding *every* image as JPEG q=75. Split-view
rows (the URL serves another image) get ingest's status ``hash_mismatch``; files that do not
decode are failed rows. Then it runs the poisons stage's scoring (the same function as
``laion-audit poisons``) and reports, per poison kind and per score:

- AUROC and precision at the planted count inside the poisoned concept (poisons of that kind
  vs the concept's other members, split-view rows left out: they serve another image and are
  rightly at the top);
- for the combined score also over the whole ranked table (poisons vs every non-poison row);
- recall and false-positive rate at the default threshold, kind-guess accuracy, and whether
  every split-view row was flagged;
- how far the PGD moved the poisons (cosine to the anchor, zero-shot share read as B), before
  and after the JPEG q75 re-encoding.

Prints a table and writes ``benchmarks/results/poisons.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from audit.stages import poisons as stage  # noqa: E402
from detectors import poisons as P  # noqa: E402

logger = logging.getLogger("bench_poisons")

DIRTY_PAIR = "cat:bird"
CLEAN_PAIR = "dog:cat"
SCORES = [
    P.ALIGNMENT_COS,
    P.ALIGNMENT_GMM,
    P.CONCEPT_PULL,
    P.KDIST,
    P.LOF,
    P.SPECTRAL,
    "combined_score",
    "combined_no_align",
]
NO_ALIGN = P.PoisonParams(evidence=(P.CONCEPT_PULL, P.KDIST, P.LOF))
"""Ablation: the combined score without the alignment evidence, i.e. what carries the
clean-label poisons when they stay aligned with their caption (as real Nightshade poisons do
for a CLIP model they were not optimised against)."""
SIGN = {P.ALIGNMENT_COS: -1.0}


def concept_count(n: int, seed: int, concept: str) -> int:
    """Rows whose caption names ``concept`` in a testbed with no poisons (same n and seed)."""
    from audit.testbed import generate as G

    units, _ = G._plan(G.TestbedParams(n=n, seed=seed, dirty_rate=0.0, clean_rate=0.0))
    return sum(u.size for u in units if u.concept == concept and u.kind != "work")


def build(out: Path, n: int, seed: int, rate: float, clip: tuple[Any, Any]) -> dict[str, Any]:
    from audit.testbed.generate import build_testbed

    a_dirty, a_clean = DIRTY_PAIR.split(":")[0], CLEAN_PAIR.split(":")[0]
    n_dirty = max(1, round(rate * concept_count(n, seed, a_dirty)))
    n_clean = max(1, round(rate * concept_count(n, seed, a_clean)))
    return build_testbed(
        out,
        n=n,
        seed=seed,
        overwrite=True,
        clip_model=clip,
        dirty_rate=n_dirty / n,
        dirty_pairs=(DIRTY_PAIR,),
        clean_rate=n_clean / n,
        clean_pairs=(CLEAN_PAIR,),
    )


def embed_testbed(
    tb: Path, model: Any, preprocess: Any, tokenizer: Any, jpeg_quality: int | None = None
) -> dict[str, Any]:
    """Embed every served file as the embed stage would (decode, RGB, tiny CLIP); with
    ``jpeg_quality`` every decoded image is first re-encoded as JPEG at that quality.
    Undecodable or missing files are failed rows (no embedding)."""
    from PIL import Image

    from audit.models import encode_images, encode_texts
    from pipelines.decode import DecodeError, decode_image

    truth = pd.read_parquet(tb / "truth.parquet")
    images, ok = [], []
    for fname in truth["file_name"]:
        path = tb / "files" / fname
        try:
            img = decode_image(path.read_bytes() if path.exists() else None).image
        except DecodeError:
            ok.append(False)
            continue
        if jpeg_quality is not None:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=jpeg_quality)
            img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        images.append(img)
        ok.append(True)
    ok_arr = np.array(ok)
    sub = truth[ok_arr].reset_index(drop=True)
    img_emb = encode_images(model, preprocess, images, batch_size=256)
    txt_emb = encode_texts(model, tokenizer, sub["caption"].tolist(), batch_size=512)
    status = np.where(sub["broken_kind"].fillna("") == "split_view", "hash_mismatch", "ok")
    return {
        "truth": sub,
        "all_truth": truth,
        "keys": sub["key"].to_numpy(dtype=object),
        "captions": sub["caption"].tolist(),
        "image_emb": img_emb,
        "text_emb": txt_emb,
        "clip_score": (img_emb * txt_emb).sum(1).astype(np.float64),
        "status": status,
        "images": images,
    }


def evaluate(
    emb: dict[str, Any],
    concepts: list[str],
    concept_emb: np.ndarray,
    threshold: float,
    params: P.PoisonParams,
) -> dict[str, Any]:
    """Score like the stage does, then measure against truth."""
    truth = emb["truth"]
    named = stage.membership(
        emb["captions"], concepts, text_emb=None, concept_emb=None, mode="word"
    )
    split_keys = emb["keys"][emb["status"] == "hash_mismatch"]
    t0 = time.perf_counter()
    comb = stage.score_memberships(
        emb["image_emb"], emb["clip_score"], named, concepts, concept_emb, params
    )
    per_key = stage.select_per_key(
        comb,
        emb["keys"],
        split_keys,
        threshold=threshold,
        params=params,
        image_emb=emb["image_emb"],
        named=named,
        concepts=concepts,
    )
    seconds = time.perf_counter() - t0
    raw_cols = [
        c
        for c in comb.columns
        if not c.endswith("_z") and c not in ("combined_score", "fired", "reasons")
    ]
    comb["combined_no_align"] = P.combine(comb[raw_cols], NO_ALIGN)["combined_score"].to_numpy()
    df = per_key.merge(
        truth[["key", "poison_kind", "caption_concept", "broken_kind"]], on="key", how="left"
    )
    sv = (df["broken_kind"].fillna("") == "split_view").to_numpy()
    lab_all = truth["poison_kind"].to_numpy()
    split_all = (truth["broken_kind"].fillna("") == "split_view").to_numpy()
    out: dict[str, Any] = {"score_seconds": round(seconds, 2), "rows_scored": int(len(df))}
    for kind, pair in (("dirty", DIRTY_PAIR), ("clean", CLEAN_PAIR)):
        a = pair.split(":")[0]
        # inside the poisoned concept: its memberships, poisons of this kind vs the members that
        # are neither poisons nor split-view rows (those serve another image: rightly flagged)
        ca = comb[comb["concept"] == a]
        rows_a = ca["row"].to_numpy(dtype=np.int64)
        lab = lab_all[rows_a]
        pos = lab == kind
        keep = pos | ((lab == "none") & ~split_all[rows_a])
        res: dict[str, Any] = {
            "concept": a,
            "planted": int(pos.sum()),
            "concept_size": int(len(ca)),
        }
        for s in SCORES:
            v = SIGN.get(s, 1.0) * ca[s].to_numpy(dtype=np.float64)[keep]
            res[s] = {"auroc": P.auroc(pos[keep], v), "precision": P.precision_at(pos[keep], v)}
        g_pos = (df["poison_kind"] == kind).to_numpy()
        g_keep = g_pos | ((df["poison_kind"] == "none").to_numpy() & ~sv)
        gv = df["combined_score"].to_numpy(dtype=np.float64)[g_keep]
        res["combined_global"] = {
            "auroc": P.auroc(g_pos[g_keep], gv),
            "precision": P.precision_at(g_pos[g_keep], gv),
        }
        flagged = df["flagged"].to_numpy(dtype=bool)
        res["recall_at_threshold"] = float(flagged[g_pos].mean()) if g_pos.any() else math.nan
        hit = flagged & g_pos
        res["kind_accuracy"] = (
            float((df["kind"].to_numpy()[hit] == kind).mean()) if hit.any() else math.nan
        )
        counts: dict[str, int] = {}
        for lst in df.loc[g_pos, "fired"]:
            for name in lst if isinstance(lst, list) else []:
                counts[name] = counts.get(name, 0) + 1
        res["fired"] = counts
        out[kind] = res
    neg = ((df["poison_kind"] == "none") & ~sv).to_numpy()
    out["fpr_at_threshold"] = float(df["flagged"].to_numpy(dtype=bool)[neg].mean())
    out["split_view"] = {
        "rows": int(sv.sum()),
        "all_flagged": bool(df.loc[sv, "flagged"].all()) if sv.any() else None,
        "kind_ok": bool((df.loc[sv, "kind"] == "split_view").all()),
        "max_rank": int(df.loc[sv, "rank"].max()) if sv.any() else None,
    }
    return out


def pgd_strength(
    emb: dict[str, Any], concepts: list[str], concept_emb: np.ndarray, anchor_emb: np.ndarray
) -> dict[str, float]:
    """How far the clean-label poisons moved: cosine to the anchor and zero-shot share that
    reads as the target concept, vs clean images of the same concept."""
    truth = emb["truth"]
    a, b = CLEAN_PAIR.split(":")
    zs = np.asarray(concepts)[(emb["image_emb"] @ concept_emb.T).argmax(1)]
    pois = (truth["poison_kind"] == "clean").to_numpy()
    clean_a = ((truth["caption_concept"] == a) & (truth["poison_kind"] == "none")).to_numpy()
    cos_anchor = emb["image_emb"] @ anchor_emb
    return {
        "poison_cos_to_anchor": float(cos_anchor[pois].mean()),
        "clean_a_cos_to_anchor": float(cos_anchor[clean_a].mean()),
        "poison_zero_shot_is_target": float((zs[pois] == b).mean()),
        "poison_zero_shot_is_source": float((zs[pois] == a).mean()),
        "clean_a_zero_shot_is_source": float((zs[clean_a] == a).mean()),
        "poison_clip_score": float(emb["clip_score"][pois].mean()),
        "clean_a_clip_score": float(emb["clip_score"][clean_a].mean()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from audit.models import encode_images, load_clip, model_info
    from audit.testbed import draw
    from audit.testbed.generate import TestbedParams, _anchor

    torch.set_num_threads(args.threads)
    model, preprocess, tokenizer = load_clip("tiny-synth")
    concepts = list(draw.CONCEPTS)
    concept_emb = stage.concept_text_embeddings(model, tokenizer, concepts)
    params = P.PoisonParams()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_poisons_"))
    runs = []
    for seed in args.seeds:
        for rate in args.rates:
            tb = work / f"tb_s{seed}_r{rate}"
            t0 = time.perf_counter()
            summary = build(tb, args.n, seed, rate, (model, preprocess))
            t_build = time.perf_counter() - t0
            tp = TestbedParams(n=args.n, seed=seed, clean_pairs=(CLEAN_PAIR,))
            _, anchor_img = _anchor(tp, 0, CLEAN_PAIR.split(":")[1])
            anchor_emb = encode_images(model, preprocess, [anchor_img])[0]
            entry: dict[str, Any] = {
                "seed": seed,
                "rate": rate,
                "n": args.n,
                "build_seconds": round(t_build, 1),
                "testbed_clean_poisons": summary.get("clean_poisons", {}),
            }
            for variant, q in (("served", None), ("jpeg75", 75)):
                t1 = time.perf_counter()
                emb = embed_testbed(tb, model, preprocess, tokenizer, jpeg_quality=q)
                t_emb = time.perf_counter() - t1
                res = evaluate(emb, concepts, concept_emb, args.threshold, params)
                res["embed_seconds"] = round(t_emb, 1)
                res["pgd"] = pgd_strength(emb, concepts, concept_emb, anchor_emb)
                entry[variant] = res
                logger.info(
                    "seed %d rate %.3f %s: dirty AUROC %.3f clean AUROC %.3f "
                    "(combined, in concept), fpr %.4f",
                    seed,
                    rate,
                    variant,
                    res["dirty"]["combined_score"]["auroc"],
                    res["clean"]["combined_score"]["auroc"],
                    res["fpr_at_threshold"],
                )
            runs.append(entry)
            if not args.keep:
                shutil.rmtree(tb, ignore_errors=True)
    return {
        "runs": runs,
        "threshold": args.threshold,
        "dirty_pair": DIRTY_PAIR,
        "clean_pair": CLEAN_PAIR,
        "params": params.__dict__,
        "model": {
            k: v
            for k, v in model_info("tiny-synth", None, model).items()
            if k in ("name", "pretrained", "weights_sha256")
        },
        "n": args.n,
        "seeds": args.seeds,
        "rates": args.rates,
        "work": str(work),
    }


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else math.nan


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Mean over seeds per (variant, rate, kind, score) and overall targets."""
    table: dict[str, Any] = {}
    for variant in ("served", "jpeg75"):
        for rate in result["rates"]:
            rs = [r[variant] for r in result["runs"] if r["rate"] == rate]
            for kind in ("dirty", "clean"):
                row: dict[str, Any] = {"planted": _mean([r[kind]["planted"] for r in rs])}
                for s in SCORES:
                    row[s] = {m: _mean([r[kind][s][m] for r in rs]) for m in ("auroc", "precision")}
                row["combined_global"] = {
                    m: _mean([r[kind]["combined_global"][m] for r in rs])
                    for m in ("auroc", "precision")
                }
                row["recall_at_threshold"] = _mean([r[kind]["recall_at_threshold"] for r in rs])
                row["kind_accuracy"] = _mean([r[kind]["kind_accuracy"] for r in rs])
                row["min_combined_auroc"] = min(r[kind]["combined_score"]["auroc"] for r in rs)
                table[f"{variant}|{rate}|{kind}"] = row
            table[f"{variant}|{rate}|fpr"] = _mean([r["fpr_at_threshold"] for r in rs])
            table[f"{variant}|{rate}|split_view_all_flagged"] = all(
                r["split_view"]["all_flagged"] in (True, None) for r in rs
            )
    served = [r["served"] for r in result["runs"]]
    targets = {
        "dirty_combined_auroc_min": min(r["dirty"]["combined_score"]["auroc"] for r in served),
        "clean_combined_auroc_min": min(r["clean"]["combined_score"]["auroc"] for r in served),
        "dirty_combined_auroc_mean": _mean([r["dirty"]["combined_score"]["auroc"] for r in served]),
        "clean_combined_auroc_mean": _mean([r["clean"]["combined_score"]["auroc"] for r in served]),
        "split_view_always_flagged": all(
            r[v]["split_view"]["all_flagged"] in (True, None)
            for r in result["runs"]
            for v in ("served", "jpeg75")
        ),
    }
    targets["dirty_target_met"] = targets["dirty_combined_auroc_mean"] >= 0.99
    targets["clean_target_met"] = targets["clean_combined_auroc_mean"] >= 0.95
    return {"table": table, "targets": targets}


def print_table(result: dict[str, Any], summary: dict[str, Any]) -> None:
    short = {
        P.ALIGNMENT_COS: "align",
        P.ALIGNMENT_GMM: "gmm",
        P.CONCEPT_PULL: "pull",
        P.KDIST: "kdist",
        P.LOF: "lof",
        P.SPECTRAL: "spectr",
        "combined_score": "COMB",
        "combined_no_align": "noAlign",
    }
    head = (
        f"{'variant':8s} {'rate':>6s} {'kind':6s} {'n':>5s} "
        + " ".join(f"{short[s]:>13s}" for s in SCORES)
        + f" {'global':>13s} {'rec@T':>6s} {'kind%':>6s}"
    )
    print("AUROC / precision@planted inside the poisoned concept (mean over seeds)")
    print(head)
    print("-" * len(head))
    for key, row in summary["table"].items():
        variant, rate, kind = key.split("|")
        if kind not in ("dirty", "clean"):
            continue
        cells = " ".join(f"{row[s]['auroc']:6.3f}/{row[s]['precision']:5.2f}" for s in SCORES)
        g = row["combined_global"]
        print(
            f"{variant:8s} {float(rate):6.3f} {kind:6s} {row['planted']:5.1f} {cells} "
            f"{g['auroc']:6.3f}/{g['precision']:5.2f} {row['recall_at_threshold']:6.2f} "
            f"{row['kind_accuracy']:6.2f}"
        )
    for variant in ("served", "jpeg75"):
        fprs = [summary["table"][f"{variant}|{r}|fpr"] for r in result["rates"]]
        print(
            f"{variant}: false-positive rate at threshold {result['threshold']}: "
            + ", ".join(f"{f:.4f}" for f in fprs)
        )
    pg = {
        v: _mean([r[v]["pgd"]["poison_zero_shot_is_target"] for r in result["runs"]])
        for v in ("served", "jpeg75")
    }
    print(
        f"clean-label poisons read as the target concept (zero-shot): served {pg['served']:.2f}"
        f", after JPEG q75 {pg['jpeg75']:.2f}"
    )
    print("targets:", json.dumps(summary["targets"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6000, help="rows per testbed (6000)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.005, 0.01, 0.02])
    ap.add_argument("--threshold", type=float, default=stage.DEFAULT_THRESHOLD)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="folder for the testbeds (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the testbeds")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "poisons.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for name in ("bench_poisons", "audit"):
        logging.getLogger(name).setLevel(logging.INFO)
    t0 = time.perf_counter()
    result = run(args)
    summary = summarise(result)
    result["summary"] = summary
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from audit.workspace import write_json_atomic

    write_json_atomic(out, result)
    print_table(result, summary)
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
