"""Poison-candidate quality on SynthLAION testbeds with planted poisons of every kind.

    python benchmarks/bench_poisons.py                  # tune seeds 11 12, report seeds 2024 4242
    python benchmarks/bench_poisons.py --report-seeds 2024 --tune-seeds --no-generator  # quick

Each testbed (``--n`` rows) holds, at ``--rate`` of the attacked concept (1% by default):
dirty-label pairs (cat:bird: caption names cat, the image shows a bird), clean-label poisons
against the auditor's CLIP (car:bicycle: PGD L-inf 8/255 toward one anchor image in tiny CLIP
space), Nightshade-style poisons aimed at the generator (dog:clock: PGD L-inf ``--gen-eps``
moving tiny-sd's VAE latent toward the same drawing with a clock in place of the dog) and
Glaze-style cloaks (watercolor:pixel art, at ``--rate`` of the watercolor rows). Every served
image is embedded with the tiny CLIP (``audit.models.encode_images``, the embed stage's model)
once as served and once after re-encoding *every* image as JPEG q75 (4:2:0); the pixel scores
(chroma_hf_v1, freq_hf_v1) and, unless ``--no-generator``, tiny-sd's scores (vae_recon_v1,
diffusion_loss_v1, diffusion_gain_v1) are computed on the same images. Split-view rows get
ingest's status ``hash_mismatch``; files that do not decode are failed rows. Scoring is the
poisons stage's (:func:`detectors.poisons.score_and_select`), with the testbed's concept list.

Per poison kind and per score: AUROC of the poisons against the attacked concept's other members
(split-view rows left out; for Glaze-style, against every ordinary row) with a bootstrap 95%
interval over the rows, and recall at the default flag rule; the false-positive rate on ordinary
rows; per detector configuration (``CONFIGS``), so the default can be chosen on the tune seeds
and reported on the others. Prints a table and writes ``benchmarks/results/poisons.json`` (with
``quality_rows`` for docs/quality.md; tune and report seeds never overlap).
"""

from __future__ import annotations

import argparse
import io
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

from detectors import poisons as P  # noqa: E402
from detectors.stats import auroc  # noqa: E402

logger = logging.getLogger("bench_poisons")

PAIRS = {
    "dirty": "cat:bird",
    "clean": "car:bicycle",
    "nightshade": "dog:clock",
    "glaze": "watercolor:pixel art",
}
KINDS = tuple(PAIRS)
EMB_SCORES = [P.ALIGNMENT_COS, P.ALIGNMENT_GMM, P.CONCEPT_PULL, P.KDIST, P.LOF, P.SPECTRAL]
SIGN = {P.ALIGNMENT_COS: -1.0}
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "no_chroma": {"evidence": tuple(e for e in P.DEFAULT_EVIDENCE if e != P.CHROMA_HF)},
}
"""Detector configurations compared (PoisonParams overrides); the stage default is chosen on
the tune seeds. "no_chroma" is the default before chroma_hf_v1 joined it (the tune-seed
comparison that put it in: detectors.poisons.DEFAULT_EVIDENCE). (The results of 2026-11-29 also hold "cap" and "chroma+cap": a per-concept
z-score centre capped at the pooled 0.9 quantile, tried for concepts flooded with poisons; it
changed nothing and was removed.)"""


def concept_count(n: int, seed: int, concept: str) -> int:
    """Rows whose caption names ``concept`` in a testbed with no poisons (same n and seed)."""
    from audit.testbed import generate as G

    p = G.TestbedParams(n=n, seed=seed, dirty_rate=0, clean_rate=0, nightshade_rate=0, glaze_rate=0)
    units, _ = G._plan(p)
    return sum(u.size for u in units if u.concept == concept and u.kind != "work")


def style_count(n: int, seed: int, style: str) -> int:
    """Expected rows drawn in ``style`` (styles are uniform over draw.STYLES)."""
    from audit.testbed import draw

    return round(n / len(draw.STYLES))


def build(out: Path, args: argparse.Namespace, seed: int, clip: tuple[Any, Any]) -> dict:
    from audit.testbed.generate import build_testbed

    rates = {}
    for kind, pair in PAIRS.items():
        a = pair.split(":")[0]
        base = style_count(args.n, seed, a) if kind == "glaze" else concept_count(args.n, seed, a)
        rates[f"{kind}_rate"] = max(3, round(args.rate * base)) / args.n
        rates[f"{kind}_pairs"] = (pair,)
    return build_testbed(
        out, n=args.n, seed=seed, overwrite=True, clip_model=clip, gen_eps=args.gen_eps, **rates
    )


def load_images(tb: Path, truth: pd.DataFrame, jpeg_quality: int | None) -> tuple[list, np.ndarray]:
    from PIL import Image

    from pipelines.decode import DecodeError, decode_image

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
            img.save(buf, "JPEG", quality=jpeg_quality)  # PIL default subsampling: 4:2:0
            img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        images.append(img)
        ok.append(True)
    return images, np.array(ok)


def embed(tb: Path, models: dict[str, Any], jpeg_quality: int | None) -> dict[str, Any]:
    """What the stage reads for every decodable row: CLIP embeddings and the image scores."""
    from audit.models import encode_images, encode_texts

    truth = pd.read_parquet(tb / "truth.parquet")
    images, ok = load_images(tb, truth, jpeg_quality)
    sub = truth[ok].reset_index(drop=True)
    model, preprocess, tokenizer = models["clip"]
    t0 = time.perf_counter()
    img_emb = encode_images(model, preprocess, images, batch_size=256)
    txt_emb = encode_texts(model, tokenizer, sub["caption"].tolist(), batch_size=512)
    t1 = time.perf_counter()
    it = iter(images)
    scores, _ = P.image_scores(
        lambda _k: next(it), sub["key"].tolist(), sub["caption"].tolist(), pipe=models["pipe"]
    )
    status = np.where(sub["broken_kind"].fillna("") == "split_view", "hash_mismatch", "ok")
    return {
        "truth": sub,
        "keys": sub["key"].to_numpy(dtype=object),
        "captions": sub["caption"].tolist(),
        "image_emb": img_emb,
        "clip_score": (img_emb * txt_emb).sum(1).astype(np.float64),
        "status": status,
        "image_scores": scores,
        "seconds": {"clip": round(t1 - t0, 1), "image_scores": round(time.perf_counter() - t1, 1)},
    }


def bootstrap_auroc(
    lab: np.ndarray, v: np.ndarray, n_boot: int = 300, seed: int = 0
) -> tuple[float, list[float]]:
    """AUROC and a percentile bootstrap 95% interval (resampling positives and negatives)."""
    a = auroc(lab, v)
    if not math.isfinite(a):
        return a, [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(lab), np.flatnonzero(~lab)
    vals = []
    for _ in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        vals.append(auroc(lab[idx], v[idx]))
    return a, [round(float(x), 4) for x in np.nanpercentile(vals, [2.5, 97.5])]


def evaluate(
    emb: dict[str, Any], concepts: list[str], concept_emb: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Score like the stage does (every configuration), then measure against truth."""
    truth = emb["truth"]
    named = P.membership(emb["captions"], concepts, text_emb=None, concept_emb=None, mode="word")
    split_keys = emb["keys"][emb["status"] == "hash_mismatch"]
    lab_all = truth["poison_kind"].to_numpy()
    split_all = (truth["broken_kind"].fillna("") == "split_view").to_numpy()
    out: dict[str, Any] = {"scores": {}, "configs": {}}
    raw = None
    for cname, over in CONFIGS.items():
        params = P.PoisonParams(**over)
        t0 = time.perf_counter()
        per_key, _ = P.score_and_select(
            emb["keys"], emb["image_emb"], emb["clip_score"], named, concepts, concept_emb,
            split_keys, threshold=threshold, params=params, image_scores=emb["image_scores"],
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        if raw is None:
            raw = P.score_memberships(
                emb["image_emb"], emb["clip_score"], named, concepts, concept_emb, params,
                emb["image_scores"],
            )  # fmt: skip
        df = per_key.merge(truth[["key", "poison_kind", "broken_kind"]], on="key", how="left")
        sv = (df["broken_kind"].fillna("") == "split_view").to_numpy()
        flagged = df["flagged"].to_numpy(dtype=bool)
        res: dict[str, Any] = {"score_seconds": round(seconds, 2)}
        for kind in KINDS:
            pos = (df["poison_kind"] == kind).to_numpy()
            keep = pos | ((df["poison_kind"] == "none").to_numpy() & ~sv)
            a, ci = bootstrap_auroc(pos[keep], df["combined_score"].to_numpy(float)[keep])
            hit = flagged & pos
            res[kind] = {
                "combined_auroc_global": a,
                "combined_auroc_global_ci": ci,
                "recall_at_threshold": float(flagged[pos].mean()) if pos.any() else math.nan,
                "kind_guess": df.loc[hit, "kind"].value_counts().to_dict(),
            }
        neg = ((df["poison_kind"] == "none") & ~sv).to_numpy()
        res["fpr_at_threshold"] = float(flagged[neg].mean())
        res["n_ordinary"] = int(neg.sum())
        res["split_view_all_flagged"] = bool(df.loc[sv, "flagged"].all()) if sv.any() else None
        out["configs"][cname] = res
    # per-score AUROC inside the attacked concept (Glaze: over every ordinary row)
    assert raw is not None
    rows = raw["row"].to_numpy()
    for kind, pair in PAIRS.items():
        a = pair.split(":")[0]
        if kind == "glaze":
            first = ~raw.duplicated("row").to_numpy()
            m = first
        else:
            m = (raw["concept"] == a).to_numpy()
        lab = lab_all[rows[m]]
        pos = lab == kind
        keep = pos | ((lab == "none") & ~split_all[rows[m]])
        res = {"concept": a, "planted": int(pos.sum()), "negatives": int((keep & ~pos).sum())}
        for s in [*EMB_SCORES, *P.IMAGE_SCORES, "combined_score"]:
            if s not in raw.columns:
                continue
            v = SIGN.get(s, 1.0) * raw[s].to_numpy(dtype=np.float64)[m][keep]
            if s == "combined_score":
                continue
            if not np.isfinite(v).any():
                continue
            auc, ci = bootstrap_auroc(pos[keep], v)
            res[s] = {"auroc": auc, "ci": ci}
        out["scores"][kind] = res
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from audit.models import load_clip, load_generator, model_info
    from audit.testbed import draw
    from audit.vocabulary import concept_text_embeddings

    torch.set_num_threads(args.threads)
    clip = load_clip("tiny-synth")
    models = {"clip": clip, "pipe": None if args.no_generator else load_generator("tiny-sd")}
    concepts = list(draw.CONCEPTS)
    concept_emb = concept_text_embeddings(clip[0], clip[2], concepts)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_poisons_"))
    runs = []
    for seed in [*args.tune_seeds, *args.report_seeds]:
        tb = work / f"tb_s{seed}"
        t0 = time.perf_counter()
        summary = build(tb, args, seed, (clip[0], clip[1]))
        entry: dict[str, Any] = {
            "seed": seed,
            "role": "tune" if seed in args.tune_seeds else "report",
            "build_seconds": round(time.perf_counter() - t0, 1),
            "planted": summary["counts"]["poison_pairs"],
            "generator_poisons": summary.get("generator_poisons", {}),
        }
        for variant, q in (("served", None), ("jpeg75", 75)):
            emb = embed(tb, models, q)
            res = evaluate(emb, concepts, concept_emb, args.threshold)
            res["embed_seconds"] = emb["seconds"]
            entry[variant] = res
            d = res["configs"]["default"]
            logger.info(
                "seed %d %s: nightshade chroma AUROC %.3f, combined %.3f; fpr %.4f",
                seed,
                variant,
                res["scores"]["nightshade"].get(P.CHROMA_HF, {}).get("auroc", math.nan),
                d["nightshade"]["combined_auroc_global"],
                d["fpr_at_threshold"],
            )
        runs.append(entry)
        if not args.keep:
            shutil.rmtree(tb, ignore_errors=True)
    return {
        "runs": runs,
        "threshold": args.threshold,
        "pairs": PAIRS,
        "rate_of_attacked_concept": args.rate,
        "gen_eps": f"{round(args.gen_eps * 255)}/255",
        "configs": {
            k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
            for k, v in CONFIGS.items()
        },  # fmt: skip
        "model": {
            k: v
            for k, v in model_info("tiny-synth", None, clip[0]).items()
            if k in ("name", "pretrained", "weights_sha256")
        },
        "generator_scores": not args.no_generator,
        "n": args.n,
        "tune_seeds": args.tune_seeds,
        "report_seeds": args.report_seeds,
    }


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else math.nan


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Means over the tune seeds and over the report seeds, per variant."""
    out: dict[str, Any] = {}
    for role in ("tune", "report"):
        rs = [r for r in result["runs"] if r["role"] == role]
        if not rs:
            continue
        for variant in ("served", "jpeg75"):
            tab: dict[str, Any] = {"scores": {}, "configs": {}}
            for kind in KINDS:
                names = {s for r in rs for s in r[variant]["scores"][kind] if isinstance(r[variant]["scores"][kind][s], dict)}  # fmt: skip
                tab["scores"][kind] = {
                    s: _mean([r[variant]["scores"][kind].get(s, {}).get("auroc", math.nan) for r in rs])
                    for s in sorted(names)
                }  # fmt: skip
            for cname in CONFIGS:
                c = {
                    kind: {
                        m: _mean([r[variant]["configs"][cname][kind][m] for r in rs])
                        for m in ("combined_auroc_global", "recall_at_threshold")
                    }
                    for kind in KINDS
                }
                c["fpr_at_threshold"] = _mean(
                    [r[variant]["configs"][cname]["fpr_at_threshold"] for r in rs]
                )
                tab["configs"][cname] = c
            out[f"{role}|{variant}"] = tab
    return out


def quality_rows(result: dict[str, Any], config: str) -> list[dict[str, Any]]:
    """docs/quality.md rows: per report seed, served and JPEG q75, AUROC of the best pixel score
    and of the combined score for the generator-aimed poisons, and recall / FPR at the rule."""
    from quality import row

    rows = []
    for r in result["runs"]:
        if r["role"] != "report":
            continue
        for variant in ("served", "jpeg75"):
            v = r[variant]
            for kind in ("nightshade", "glaze", "dirty", "clean"):
                sc = v["scores"][kind].get(P.CHROMA_HF)
                if sc and kind in ("nightshade", "glaze"):
                    rows.append(
                        row(
                            f"poisons {P.CHROMA_HF}",
                            f"AUROC {kind}-style",
                            sc["auroc"],
                            ci=sc["ci"],
                            n=v["scores"][kind]["planted"],
                            tune=result["tune_seeds"],
                            report=[r["seed"]],
                            setting=f"{variant}, {result['rate_of_attacked_concept']:.0%} of the concept, L-inf {result['gen_eps']}",
                        )
                    )  # fmt: skip
                c = v["configs"][config][kind]
                rows.append(
                    row(
                        f"poisons combined ({config})",
                        f"recall {kind} at z >= {result['threshold']}",
                        c["recall_at_threshold"],
                        n=v["scores"][kind]["planted"],
                        tune=result["tune_seeds"],
                        report=[r["seed"]],
                        setting=f"{variant}; FPR {v['configs'][config]['fpr_at_threshold']:.4f}",
                    )
                )
    return rows


def print_table(result: dict[str, Any], summary: dict[str, Any]) -> None:
    short = {
        P.ALIGNMENT_COS: "align", P.ALIGNMENT_GMM: "gmm", P.CONCEPT_PULL: "pull",
        P.KDIST: "kdist", P.LOF: "lof", P.SPECTRAL: "spectr", P.CHROMA_HF: "chroma",
        P.FREQ_HF: "freq", P.VAE_RECON: "vaerec", P.DIFFUSION_LOSS: "dloss",
        P.DIFFUSION_GAIN: "dgain",
    }  # fmt: skip
    for key, tab in summary.items():
        role, variant = key.split("|")
        print(f"\n{role} seeds, {variant}: AUROC per score inside the attacked concept (mean)")
        names = [s for s in short if any(s in tab["scores"][k] for k in KINDS)]
        print(f"{'kind':11s} " + " ".join(f"{short[s]:>7s}" for s in names))
        for kind in KINDS:
            cells = " ".join(f"{tab['scores'][kind].get(s, math.nan):7.3f}" for s in names)
            print(f"{kind:11s} {cells}")
        print("configuration: combined AUROC / recall at the rule per kind; FPR")
        for cname, c in tab["configs"].items():
            cells = " ".join(
                f"{k}={c[k]['combined_auroc_global']:.3f}/{c[k]['recall_at_threshold']:.2f}"
                for k in KINDS
            )
            print(f"  {cname:11s} {cells} fpr={c['fpr_at_threshold']:.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="rows per testbed (5000)")
    ap.add_argument("--tune-seeds", type=int, nargs="*", default=[11, 12])
    ap.add_argument("--report-seeds", type=int, nargs="+", default=[2024, 4242])
    ap.add_argument("--rate", type=float, default=0.01, help="poisons per attacked concept (1%%)")
    ap.add_argument("--gen-eps", type=lambda t: float(t.split("/")[0]) / float(t.split("/")[1]) if "/" in t else float(t), default=16 / 255)  # fmt: skip
    ap.add_argument("--threshold", type=float, default=P.DEFAULT_THRESHOLD)
    ap.add_argument("--config", default="default", choices=list(CONFIGS), help="for quality rows")
    ap.add_argument("--no-generator", action="store_true", help="skip tiny-sd's scores")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None, help="folder for the testbeds (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the testbeds")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "poisons.json"))
    args = ap.parse_args(argv)
    if set(args.tune_seeds) & set(args.report_seeds):
        ap.error("tune and report seeds must differ")
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for name in ("bench_poisons", "audit"):
        logging.getLogger(name).setLevel(logging.INFO)
    t0 = time.perf_counter()
    result = run(args)
    summary = summarise(result)
    result["summary"] = summary
    result["quality_rows"] = quality_rows(result, args.config)
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
