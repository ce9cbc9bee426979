"""Poison-candidate quality on SynthLAION testbeds with planted poisons of every kind.

    python benchmarks/bench_poisons.py                  # tune seeds 11 12, report seeds 2024 4242
    python benchmarks/bench_poisons.py --report-seeds 2024 --tune-seeds --no-generator  # quick
    python benchmarks/bench_poisons.py --photos-only    # only the real-photo check (~3 min)
    python benchmarks/bench_poisons.py --ingest-only --n 3000  # only the ingest check (~6 min)

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

Real photos (``real_photos``, unless ``--no-photos``; :func:`photo_check`): chroma_hf_v1 on the
colour photos of :mod:`audit.testbed.photos` (tune photos china, flower; report photos the
other eight), four 256 px corner crops each downscaled to 128 px, PGD'd with the testbed's own
attack (tiny-sd's VAE latent toward the same corner of the next photo, L-inf 8/255 and 16/255,
50 steps), plus the report photos' first crops at 256 px (16/255, 20 steps). AUROC perturbed vs
clean per served format (clean as JPEG q90 4:2:0 or PNG; perturbed as PNG or JPEG q95 4:4:4;
both re-encoded JPEG q75 4:2:0) with a bootstrap interval over photos, and the robust z a clean
PNG or a perturbed crop gets against the clean JPEG q90 crops.

Ingest (``ingest``, unless ``--no-ingest``; :func:`ingest_check`): the parts above encode the
images by hand and score with the testbed generator's concept list. Here, per report seed, the
same testbed (same poison rates) goes the user's way: served over loopback HTTP,
``laion-audit download`` (as served, and stored as JPEG q75) and ``embed``
(``bench_replication.ingest_workspace``), then ``laion-audit poisons WS`` with its defaults (its
own concept list from the captions). Per poison kind: AUROC of combined_score against ordinary
rows and inside the attacked concept, recall at the flag rule and the false-flag rate (Wilson
intervals), and which of the planted pairs' concepts the stage's list holds; the same
workspace is also scored with the generator's list (``with_generator_concepts``), to tell the
concept list's effect from the ingest path's.
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

from detectors import poisons as P  # noqa: E402
from detectors.stats import auroc, median_mad, wilson_interval  # noqa: E402

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

    return build_testbed(
        out, n=args.n, seed=seed, overwrite=True, clip_model=clip, gen_eps=args.gen_eps,
        **poison_rates(args, seed),
    )  # fmt: skip


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


def chroma_z_by_kind(chroma: np.ndarray, kind: np.ndarray) -> dict[str, Any]:
    """Pooled robust z of chroma_hf_v1 (median, 1.4826 MAD over the rows given: the stage's
    standardisation of image-level evidence) per poison kind, and the ordinary rows' upper
    quantiles: how far below the flag threshold the perturbations sit."""
    ok = np.isfinite(chroma)
    v, k = chroma[ok], kind[ok]
    c, s = median_mad(v)
    z = (v - c) / max(s, 1e-9)
    none = z[k == "none"]
    out: dict[str, Any] = {
        "ordinary": {f"q{q}": round(float(np.quantile(none, q / 100)), 2) for q in (95, 99, 100)}
    }
    for kd in KINDS:
        zk = np.sort(z[k == kd])
        out[kd] = [round(float(x), 2) for x in zk]
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
            sv = emb["status"] == "hash_mismatch"
            res["chroma_z"] = chroma_z_by_kind(
                emb["image_scores"][P.CHROMA_HF][~sv], emb["truth"]["poison_kind"].to_numpy()[~sv]
            )
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
    """docs/quality.md rows: per report seed, served and JPEG q75, AUROC of chroma_hf_v1 for the
    generator-aimed poisons, and recall (Wilson interval) / FPR at the rule; the setting says
    whom a PGD poison was optimised against (:data:`KIND_SETTING`)."""
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
                            setting=f"{variant}, {result['rate_of_attacked_concept']:.0%} of the concept, L-inf {result['gen_eps']}; {KIND_SETTING[kind]}",
                        )
                    )  # fmt: skip
                c = v["configs"][config][kind]
                n = v["scores"][kind]["planted"]
                also = f"; {KIND_SETTING[kind]}" if kind in KIND_SETTING else ""
                rows.append(
                    row(
                        f"poisons combined ({config})",
                        f"recall {kind} at z >= {result['threshold']}",
                        c["recall_at_threshold"],
                        ci=_wilson(round(c["recall_at_threshold"] * n), n),
                        n=n,
                        tune=result["tune_seeds"],
                        report=[r["seed"]],
                        setting=f"{variant}, testbed generator's concepts; FPR {v['configs'][config]['fpr_at_threshold']:.4f}{also}",
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


# ---- real photos: chroma_hf_v1 on PGD'd crops of classic photographs --------------------------

PHOTO_CROP = 256
"""Side of the crops taken from each colour photo (4 per photo, at the corners)."""
PHOTO_SIZE = 128
"""Resolution the crops are served and attacked at (the crop downscaled, Lanczos): tiny-sd's VAE
PGD costs ~0.04 s per image-step at 128 px and ~0.3 s at 256 px on one CPU thread."""
PHOTO_EPS = (8 / 255, 16 / 255)
PHOTO_FORMATS = {
    "png": None,
    "jpeg90_420": (90, 2),
    "jpeg95_444": (95, 0),
    "jpeg75_420": (75, 2),
}
"""Served formats: PIL JPEG (quality, subsampling: 2 = 4:2:0, 0 = 4:4:4); PNG is lossless."""
PHOTO_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("perturbed PNG vs clean JPEG q90 4:2:0", "png", "jpeg90_420"),
    ("perturbed PNG vs clean PNG", "png", "png"),
    ("perturbed JPEG q95 4:4:4 vs clean JPEG q90 4:2:0", "jpeg95_444", "jpeg90_420"),
    ("perturbed JPEG q95 4:4:4 vs clean PNG", "jpeg95_444", "png"),
    ("both re-encoded JPEG q75 4:2:0", "png>jpeg75_420", "jpeg90_420>jpeg75_420"),
)
"""(label, perturbed version, clean version); ``a>b``: served as ``a``, then re-encoded as ``b``
(what an audit of a re-compressed copy of the data reads)."""


def colour_photos(split: str) -> list[str]:
    """Photos of ``split`` with colour (the grey scans have no chroma to score)."""
    from audit.testbed.photos import load_photo, photo_names

    out = []
    for name in photo_names(split):
        a = np.asarray(load_photo(name), dtype=np.int16)
        if np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean() > 1:
            out.append(name)
    return out


def photo_crops(names: list[str], crop: int, size: int) -> list[tuple[str, int, Any]]:
    """(photo, corner, image): the four corner crops of side ``crop``, resized to ``size``."""
    from PIL import Image

    from audit.testbed.photos import load_photo

    out = []
    for name in names:
        img = load_photo(name)
        w, h = img.size
        c = min(crop, w, h)
        for i, (x, y) in enumerate(((0, 0), (w - c, 0), (0, h - c), (w - c, h - c))):
            im = img.crop((x, y, x + c, y + c))
            if c != size:
                im = im.resize((size, size), Image.LANCZOS)
            out.append((name, i, im))
    return out


def serve(img: Any, version: str) -> Any:
    """``img`` as a reader decodes it after the encodings of ``version`` (``a>b``: a, then b)."""
    from audit.testbed.poison import JpegSpec

    for fmt in version.split(">"):
        spec = PHOTO_FORMATS[fmt]
        if spec is not None:
            img = JpegSpec(*spec).roundtrip(img)
    return img


def chroma(images: list[Any]) -> np.ndarray:
    return P.chroma_high_frequency([np.asarray(im.convert("RGB")) for im in images])


def cluster_bootstrap_auroc(
    pos: np.ndarray, pos_group: np.ndarray, neg: np.ndarray, neg_group: np.ndarray,
    n_boot: int = 1000, seed: int = 0,
) -> tuple[float, list[float]]:  # fmt: skip
    """AUROC of ``pos`` over ``neg`` with a percentile bootstrap 95% interval that resamples
    whole photos (crops of one photo are not independent)."""
    lab = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    a = auroc(lab, np.r_[pos, neg])
    groups = np.unique(np.r_[pos_group, neg_group])
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        pick = rng.choice(groups, len(groups))
        p = np.concatenate([pos[pos_group == g] for g in pick])
        n = np.concatenate([neg[neg_group == g] for g in pick])
        if len(p) and len(n):
            vals.append(auroc(np.r_[np.ones(len(p), bool), np.zeros(len(n), bool)], np.r_[p, n]))
    return a, [round(float(x), 4) for x in np.percentile(vals, [2.5, 97.5])]


def _psnr(a: Any, b: Any) -> float:
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(10 * np.log10(255.0**2 / max(float((d**2).mean()), 1e-12)))


def photo_split(
    vae: Any, names: list[str], *, crop: int, size: int, eps_list: tuple[float, ...],
    steps: int, threshold: float, sheet: list | None = None,
) -> dict[str, Any]:  # fmt: skip
    """PGD every crop toward the same corner's crop of the next photo (tiny-sd's VAE latent),
    then chroma_hf_v1 AUROC perturbed vs clean per served-format comparison, and robust z of
    each version against the clean JPEG q90 4:2:0 crops."""
    from audit.testbed.poison import latent_distances, pgd_toward_latents

    crops = photo_crops(names, crop, size)
    clean = [im for _, _, im in crops]
    group = np.array([n for n, _, _ in crops])
    nxt = {n: names[(i + 1) % len(names)] for i, n in enumerate(names)}
    by = {(n, i): im for n, i, im in crops}
    targets = [by[(nxt[n], i)] for n, i, _ in crops]
    versions = sorted({v for _, a, b in PHOTO_COMPARISONS for v in (a, b)})
    clean_scores = {v: chroma([serve(im, v) for im in clean]) for v in versions}
    ref = clean_scores["jpeg90_420"]
    c, s = median_mad(ref)
    s = max(s, 1e-9)  # as chroma_z_by_kind

    def zsum(x: np.ndarray) -> dict[str, Any]:
        z = (x - c) / s
        k = int((z >= threshold).sum())
        lo, hi = wilson_interval(k, len(z))
        return {
            "median": round(float(np.median(z)), 2), "max": round(float(z.max()), 2),
            "min": round(float(z.min()), 2), f"share_z_ge_{threshold:g}": k / len(z),
            "share_ci": [round(float(lo), 4), round(float(hi), 4)],
        }  # fmt: skip

    out: dict[str, Any] = {
        "photos": names,
        "crops": len(crops),
        "clean_chroma": {
            v: {
                "median": round(float(np.median(x)), 3),
                "min": round(float(x.min()), 3),
                "max": round(float(x.max()), 3),
            }
            for v, x in clean_scores.items()
        },  # fmt: skip
        "z_reference": {"versions": "clean JPEG q90 4:2:0", "median": c, "scale_1.4826mad": s},
        "z_clean": {v: zsum(x) for v, x in clean_scores.items()},
        "eps": {},
    }
    for eps in eps_list:
        t0 = time.perf_counter()
        pert = pgd_toward_latents(vae, clean, targets, eps=eps, steps=steps)
        sec = time.perf_counter() - t0
        before = latent_distances(vae, clean, targets)
        after = latent_distances(vae, pert, targets)
        if sheet is not None:
            sheet.append((eps, pert))
        ps = {v: chroma([serve(im, v) for im in pert]) for v in versions}
        res: dict[str, Any] = {
            "pgd_seconds": round(sec, 1),
            "latent_distance_ratio_mean": round(float((after / before).mean()), 3),
            "psnr_db_mean": round(
                float(np.mean([_psnr(a, b) for a, b in zip(pert, clean, strict=True)])), 1
            ),  # fmt: skip
            "z_perturbed": {v: zsum(x) for v, x in ps.items() if ">" not in v},
            "auroc": {},
        }
        for label, pv, cv in PHOTO_COMPARISONS:
            a, ci = cluster_bootstrap_auroc(ps[pv], group, clean_scores[cv], group)
            res["auroc"][label] = {"auroc": a, "ci": ci, "n_pos": len(pert), "n_neg": len(clean)}
        out["eps"][f"{round(eps * 255)}/255"] = res
        logger.info(
            "photos %s eps %d/255: %s", names[0], round(eps * 255),
            ", ".join(f"{k}: {v['auroc']:.3f}" for k, v in res["auroc"].items()),
        )  # fmt: skip
    return out


def photo_check(args: argparse.Namespace) -> dict[str, Any]:
    """chroma_hf_v1 on real photos (``audit.testbed.photos``): tune and report colour photos,
    4 corner crops each, at :data:`PHOTO_SIZE` px and, for the report photos' first crop, at
    full crop resolution (fewer PGD steps)."""
    import torch

    from audit.testbed.poison import load_vae

    torch.set_num_threads(args.threads)
    vae = load_vae("tiny-sd")
    t0 = time.perf_counter()
    tune, report = colour_photos("tune"), colour_photos("report")
    sheet: list = []
    kw = {"crop": PHOTO_CROP, "size": PHOTO_SIZE, "threshold": args.threshold}
    out: dict[str, Any] = {
        "what": (
            "chroma_hf_v1 on classic colour photos shipped in scikit-image/scikit-learn "
            "(audit.testbed.photos): 4 corner crops of 256 px per photo, downscaled to "
            f"{PHOTO_SIZE} px (Lanczos), PGD L-inf on tiny-sd's VAE latent toward the same "
            "corner of the next photo (audit.testbed.poison.pgd_toward_latents, step eps/10). "
            "AUROC perturbed vs clean crops with a bootstrap 95% interval over photos; robust z "
            "= (score - median) / (1.4826 MAD) of the clean JPEG q90 4:2:0 crops of the split"
        ),
        "steps": args.photo_steps,
        "tune": photo_split(vae, tune, eps_list=PHOTO_EPS, steps=args.photo_steps, **kw),
        "report": photo_split(
            vae, report, eps_list=PHOTO_EPS, steps=args.photo_steps, sheet=sheet, **kw
        ),
    }
    if args.photo_full_steps:
        from audit.testbed.poison import latent_distances, pgd_toward_latents

        crops = photo_crops(report, PHOTO_CROP, PHOTO_CROP)
        clean = [im for _, _, im in crops]
        group = np.array([n for n, _, _ in crops])
        first = [j for j, (_, i, _) in enumerate(crops) if i == 0]
        targets = [clean[first[(k + 1) % len(first)]] for k in range(len(first))]
        eps = PHOTO_EPS[-1]
        t1 = time.perf_counter()
        pert = pgd_toward_latents(
            vae, [clean[j] for j in first], targets, eps=eps, steps=args.photo_full_steps
        )
        sec = time.perf_counter() - t1
        ratio = latent_distances(vae, pert, targets) / latent_distances(
            vae, [clean[j] for j in first], targets
        )
        full: dict[str, Any] = {
            "size": PHOTO_CROP, "eps": f"{round(eps * 255)}/255", "steps": args.photo_full_steps,
            "pgd_seconds": round(sec, 1), "latent_distance_ratio_mean": round(float(ratio.mean()), 3),
            "psnr_db_mean": round(float(np.mean([_psnr(pert[k], clean[j]) for k, j in enumerate(first)])), 1),
            "auroc": {},
        }  # fmt: skip
        for label, pv, cv in PHOTO_COMPARISONS:
            p = chroma([serve(im, pv) for im in pert])
            n = chroma([serve(im, cv) for im in clean])
            a, ci = cluster_bootstrap_auroc(p, group[first], n, group)
            full["auroc"][label] = {"auroc": a, "ci": ci, "n_pos": len(p), "n_neg": len(n)}
        out["report_full_resolution"] = full
    if args.photo_sheet:
        _photo_sheet(Path(args.photo_sheet), photo_crops(report, PHOTO_CROP, PHOTO_SIZE), sheet)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _photo_sheet(path: Path, crops: list, sheet: list) -> None:
    """Clean crops (top row) and their perturbed versions per eps, for looking at."""
    from PIL import Image

    cols = min(8, len(crops))
    size = crops[0][2].size[0]
    canvas = Image.new("RGB", (cols * size, (1 + len(sheet)) * size), "white")
    for c in range(cols):
        canvas.paste(crops[c * len(crops) // cols][2], (c * size, 0))
        for r, (_, pert) in enumerate(sheet):
            canvas.paste(pert[c * len(crops) // cols], (c * size, (r + 1) * size))
    canvas.save(path)


def photo_quality_rows(photos: dict[str, Any], threshold: float) -> list[dict[str, Any]]:
    """docs/quality.md rows of the real-photo check (report photos; settings from none: the
    tune photos were only looked at)."""
    from quality import row

    rep = photos["report"]
    tune = photos["tune"]["photos"]
    rows = []
    for eps, res in rep["eps"].items():
        for label, r in res["auroc"].items():
            rows.append(
                row(
                    f"poisons {P.CHROMA_HF}",
                    f"AUROC PGD'd photo crops vs clean: {label}",
                    r["auroc"],
                    ci=r["ci"],
                    n=r["n_pos"],
                    tune=tune,
                    report=rep["photos"],
                    setting=f"real photos, {PHOTO_SIZE} px crops, VAE-latent PGD L-inf {eps}",
                )  # fmt: skip
            )
    z = rep["z_clean"]["png"]
    k = f"share_z_ge_{threshold:g}"
    rows.append(
        row(
            f"poisons {P.CHROMA_HF}",
            f"clean PNG crops with z >= {threshold:g} vs clean JPEG q90 (max z {z['max']:.1f})",
            z[k],
            ci=z["share_ci"],
            n=rep["crops"],
            tune=tune,
            report=rep["photos"],
            setting=f"real photos, {PHOTO_SIZE} px crops",
        )  # fmt: skip
    )
    return rows


def print_photos(photos: dict[str, Any]) -> None:
    for split in ("tune", "report"):
        sp = photos[split]
        print(f"\nreal photos, {split} ({', '.join(sp['photos'])}; {sp['crops']} crops)")
        zc = sp["z_clean"]
        print("  clean z vs clean JPEG q90: " + ", ".join(
            f"{v} median {z['median']:.1f} max {z['max']:.1f}" for v, z in zc.items()))  # fmt: skip
        for eps, res in sp["eps"].items():
            print(f"  L-inf {eps}: latent ratio {res['latent_distance_ratio_mean']:.2f}, "
                  f"PSNR {res['psnr_db_mean']:.1f} dB; z perturbed " + ", ".join(
                      f"{v} median {z['median']:.1f}" for v, z in res["z_perturbed"].items()))  # fmt: skip
            for label, r in res["auroc"].items():
                print(f"    {label:50s} {r['auroc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")
    full = photos.get("report_full_resolution")
    if full:
        print(f"\nreport photos at {full['size']} px, L-inf {full['eps']}, {full['steps']} steps:")
        for label, r in full["auroc"].items():
            print(f"    {label:50s} {r['auroc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")


# ---- ingest: the user's path (download + embed) and the stage's own concept list --------------

INGEST_SETTING = "ingest (download + embed), stage default concepts"
INGEST_VARIANTS: dict[str, tuple[str, ...]] = {
    "served": (),
    "jpeg75": (
        "--resize-mode", "keep_ratio", "--image-size", "64", "--resize-always",
        "--encode-quality", "75",
    ),
}  # fmt: skip
"""Download options per ingest variant: the bytes as served, or every image stored as JPEG q75
at download time (img2dataset's OpenCV encoder, 4:2:0). The variant resizes to the testbed's
64 px (the identity for the drawings and every poison; only the larger near-duplicate and work
variants shrink) to make every image go through the encoder: the stored ingest results were
measured so, before ``--reencode`` re-encoded images that need no resize (fixed in a756a46;
``--reencode --encode-quality 75`` would now do it without the resize)."""
TRANSFER_SETTING = "transfer (optimised against tiny-sd's VAE)"
WHITE_BOX_SETTING = "white-box (optimised against the detector's CLIP)"
KIND_SETTING = {
    "nightshade": TRANSFER_SETTING,
    "glaze": TRANSFER_SETTING,
    "clean": WHITE_BOX_SETTING,
}
"""Whom each PGD poison was optimised against: Nightshade- and Glaze-style poisons move tiny-sd's
VAE latent (the detector never sees that VAE: a transfer setting); clean-label poisons are PGD'd
against tiny-synth, the detector's own CLIP (white-box)."""


def poison_rates(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The testbed's poison rates and pairs: ``args.rate`` of each attacked concept (of the
    attacked style for Glaze-style), at least 3 poisons per kind."""
    rates: dict[str, Any] = {}
    for kind, pair in PAIRS.items():
        a = pair.split(":")[0]
        base = style_count(args.n, seed, a) if kind == "glaze" else concept_count(args.n, seed, a)
        rates[f"{kind}_rate"] = max(3, round(args.rate * base)) / args.n
        rates[f"{kind}_pairs"] = (pair,)
    return rates


def _wilson(k: int, n: int) -> list[float]:
    lo, hi = wilson_interval(k, n)
    return [round(float(lo), 4), round(float(hi), 4)]


def evaluate_ingest(ws: Any, truth: pd.DataFrame) -> dict[str, Any]:
    """Measure the ``poisons`` finding of ``ws`` (the stage run with its defaults) against the
    testbed truth of the rows ingest embedded with status ok. Rows the stage did not score (their
    caption names no concept of its list) get combined score -inf and are never flagged."""
    from audit.testbed import draw
    from audit.vocabulary import DEFAULT_CONCEPTS_SOURCE

    meta = json.loads((Path(ws.root) / "findings" / "poisons.json").read_text())
    fnd = pd.read_parquet(Path(ws.root) / "findings" / "poisons.parquet")
    concepts = [r["concept"] for r in meta.get("concept_vulnerability", [])]
    df = truth[["key", "caption", "poison_kind", "broken_kind"]].merge(
        fnd[["key", "concept", "combined_score", "flagged", "kind"]], on="key", how="left"
    )
    scored = df["combined_score"].notna().to_numpy()
    score = df["combined_score"].to_numpy(dtype=np.float64)
    score = np.where(np.isfinite(score) | np.isposinf(score), score, -np.inf)
    flagged = df["flagged"].fillna(False).to_numpy(dtype=bool)
    sv = (df["broken_kind"].fillna("") == "split_view").to_numpy()
    none = (df["poison_kind"] == "none").to_numpy() & ~sv
    lower = {c.lower() for c in concepts}
    out: dict[str, Any] = {
        "concepts_source": meta.get("concepts_source"),
        "default_source": meta.get("concepts_source") == DEFAULT_CONCEPTS_SOURCE,
        "n_concepts": len(concepts),
        "concepts": concepts,
        "generator_concepts_in_list": sum(c.lower() in lower for c in draw.CONCEPTS),
        "generator_concepts": len(draw.CONCEPTS),
        "list_not_generator": sum(c.lower() not in {g.lower() for g in draw.CONCEPTS} for c in concepts),
        "pairs_in_list": {
            pair: {side: side.lower() in lower for side in pair.split(":")} for pair in PAIRS.values()
        },
        "evidence": meta["combined"]["evidence"],
        "image_scores_read": meta.get("image_scores", {}).get("images_read"),
        "threshold": meta["parameters"].get("z_threshold"),
        "rows_ok": len(df),
        "rows_scored": int(scored.sum()),
        "n_ordinary": int(none.sum()),
        "fpr_at_threshold": float(flagged[none].mean()),
        "fpr_ci": _wilson(int(flagged[none].sum()), int(none.sum())),
        "kinds": {},
    }  # fmt: skip
    for kind, pair in PAIRS.items():
        a = pair.split(":")[0]
        pos = (df["poison_kind"] == kind).to_numpy()
        keep = pos | none
        auc, ci = bootstrap_auroc(pos[keep], score[keep])
        k = int(flagged[pos].sum())
        res: dict[str, Any] = {
            "pair": pair,
            "planted_embedded": int(pos.sum()),
            "scored": int((pos & scored).sum()),
            "combined_auroc_global": auc,
            "combined_auroc_global_ci": ci,
            "recall_at_threshold": k / pos.sum() if pos.any() else math.nan,
            "recall_ci": _wilson(k, int(pos.sum())),
            "kind_guess": df.loc[pos & flagged, "kind"].value_counts().to_dict(),
            "finding_concept": df.loc[pos, "concept"].fillna("(not scored)").value_counts().to_dict(),
        }  # fmt: skip
        if kind != "glaze" and a.lower() in lower:
            named = P.membership(
                df["caption"].tolist(), [a], text_emb=None, concept_emb=None, mode="word"
            )[:, 0]
            m = named & keep
            auc, ci = bootstrap_auroc(pos[m], score[m])
            res["concept_auroc"] = {"concept": a, "auroc": auc, "ci": ci,
                                    "planted": int((pos & m).sum()), "negatives": int((m & ~pos).sum())}  # fmt: skip
        out["kinds"][kind] = res
    if sv.any():
        out["split_view"] = {"rows": int(sv.sum()), "all_flagged": bool(flagged[sv].all())}
    return out


def ingest_check(args: argparse.Namespace) -> dict[str, Any]:
    """Per report seed: the testbed served over loopback HTTP, ``laion-audit download`` and
    ``embed`` (bench_replication.ingest_workspace: tiny-synth, SSCD at 128 px), then
    ``laion-audit poisons WS`` with its defaults (no --concepts: the stage's list from the
    captions, not the generator's), measured against truth (:func:`evaluate_ingest`)."""
    import torch
    from bench_replication import _cli, ingest_workspace

    from audit.testbed import draw

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_poisons_ingest_"))
    runs = []
    for seed, variant in [(s, v) for s in args.report_seeds for v in args.ingest_variants]:
        t0 = time.perf_counter()
        out = work / f"ingest_s{seed}_{variant}"
        ws, truth = ingest_workspace(
            out, args.n, seed, download_args=INGEST_VARIANTS[variant], gen_eps=args.gen_eps,
            **poison_rates(args, seed),
        )  # fmt: skip
        t1 = time.perf_counter()
        # the same workspace scored with the testbed generator's list, to tell what the
        # stage's own list changes from what the ingest path changes
        gen_file = out / "generator_concepts.txt"
        gen_file.write_text("\n".join(draw.CONCEPTS) + "\n")
        _cli("poisons", str(ws.root), "--concepts-file", str(gen_file))
        gen = evaluate_ingest(ws, truth)
        t2 = time.perf_counter()
        _cli("poisons", str(ws.root))  # the stage's defaults
        t3 = time.perf_counter()
        planted = pd.read_parquet(out / "testbed" / "truth.parquet")["poison_kind"]
        res = evaluate_ingest(ws, truth)
        res["with_generator_concepts"] = {
            "n_concepts": gen["n_concepts"],
            "fpr_at_threshold": gen["fpr_at_threshold"],
            "fpr_ci": gen["fpr_ci"],
            "kinds": {
                k: {m: v[m] for m in ("combined_auroc_global", "combined_auroc_global_ci",
                                      "recall_at_threshold", "recall_ci", "concept_auroc") if m in v}
                for k, v in gen["kinds"].items()
            },
        }  # fmt: skip
        res.update(
            seed=seed,
            variant=variant,
            download_args=list(INGEST_VARIANTS[variant]),
            planted={k: int((planted == k).sum()) for k in KINDS},
            seconds={"build_download_embed": round(t1 - t0, 1), "poisons": round(t3 - t2, 1)},
        )
        logger.info(
            "ingest seed %d %s: %s; fpr %.4f; pairs in list %s", seed, variant,
            ", ".join(f"{k} {v['combined_auroc_global']:.3f}/{v['recall_at_threshold']:.2f}"
                      for k, v in res["kinds"].items()),
            res["fpr_at_threshold"], res["pairs_in_list"],
        )  # fmt: skip
        runs.append(res)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    return {
        "what": (
            "the user's path: testbed served over loopback HTTP, laion-audit download "
            "(img2dataset; variant served: the bytes as served; jpeg75: every image stored as "
            "JPEG q75 4:2:0, see INGEST_VARIANTS) and embed (tiny-synth, SSCD at 128 px), then "
            "laion-audit poisons WS with its defaults (no --concepts: general-list objects the "
            "captions name + frequent caption terms, not the testbed generator's list). AUROC of "
            "combined_score, poisons vs ordinary rows (split-view left out), bootstrap 95% "
            "interval over rows; concept_auroc: among rows whose caption names the attacked "
            "concept, when the stage's list holds it; recall and FPR at combined >= threshold "
            "with Wilson intervals; rows the stage did not score count as lowest, not flagged"
        ),
        "n": args.n,
        "rate_of_attacked_concept": args.rate,
        "gen_eps": f"{round(args.gen_eps * 255)}/255",
        "threshold": args.threshold,
        "report_seeds": args.report_seeds,
        "runs": runs,
    }


def ingest_quality_rows(ing: dict[str, Any], tune: list[int]) -> list[dict[str, Any]]:
    """docs/quality.md rows of the ingest check, per report seed."""
    from quality import row

    rows = []
    for r in ing["runs"]:
        stored = {"served": "served", "jpeg75": "stored as JPEG q75 at download"}
        base = f"{INGEST_SETTING}, {stored.get(r['variant'], r['variant'])}"
        for kind, v in r["kinds"].items():
            setting = base + (f"; {KIND_SETTING[kind]}" if kind in KIND_SETTING else "")
            common = {"tune": tune, "report": [r["seed"]], "n": v["planted_embedded"]}
            rows.append(
                row("poisons combined (default)", f"AUROC {kind} vs ordinary rows",
                    v["combined_auroc_global"], ci=v["combined_auroc_global_ci"],
                    setting=setting, **common)
            )  # fmt: skip
            ca = v.get("concept_auroc")
            if ca:
                rows.append(
                    row("poisons combined (default)",
                        f"AUROC {kind} inside concept {ca['concept']!r}", ca["auroc"], ci=ca["ci"],
                        setting=setting, **common)
                )  # fmt: skip
            rows.append(
                row("poisons combined (default)", f"recall {kind} at z >= {ing['threshold']}",
                    v["recall_at_threshold"], ci=v["recall_ci"],
                    setting=f"{setting}; FPR {r['fpr_at_threshold']:.4f}", **common)
            )  # fmt: skip
        rows.append(
            row("poisons combined (default)", f"FPR ordinary rows at z >= {ing['threshold']}",
                r["fpr_at_threshold"], ci=r["fpr_ci"], n=r["n_ordinary"], tune=tune,
                report=[r["seed"]], setting=base)
        )  # fmt: skip
        g = r.get("with_generator_concepts")
        if g:
            rows.append(
                row("poisons combined (default)",
                    f"FPR ordinary rows at z >= {ing['threshold']}", g["fpr_at_threshold"],
                    ci=g["fpr_ci"], n=r["n_ordinary"], tune=tune, report=[r["seed"]],
                    setting=base.replace("stage default concepts", "testbed generator's concepts"))
            )  # fmt: skip
    return rows


def print_ingest(ing: dict[str, Any]) -> None:
    print(f"\ningest (download + embed), stage default concepts, {ing['n']} rows per testbed")
    for r in ing["runs"]:
        print(
            f"  seed {r['seed']} {r['variant']}: {r['n_concepts']} concepts ({r['concepts_source']}); "
            f"{r['generator_concepts_in_list']}/{r['generator_concepts']} generator concepts in "
            f"the list; pairs in list {r['pairs_in_list']}; FPR {r['fpr_at_threshold']:.4f}"
        )
        for kind, v in r["kinds"].items():
            ca = v.get("concept_auroc", {})
            print(f"    {kind:10s} n {v['planted_embedded']:2d} AUROC {v['combined_auroc_global']:.3f} "
                  f"[{v['combined_auroc_global_ci'][0]:.3f}, {v['combined_auroc_global_ci'][1]:.3f}]"
                  + (f" in {ca['concept']} {ca['auroc']:.3f}" if ca else "")
                  + f"; recall {v['recall_at_threshold']:.2f}")  # fmt: skip
        g = r.get("with_generator_concepts")
        if g:
            print(f"    with the generator's {g['n_concepts']} concepts: FPR {g['fpr_at_threshold']:.4f}; "
                  + ", ".join(f"{k} {v['combined_auroc_global']:.3f}" for k, v in g["kinds"].items()))  # fmt: skip


def all_quality_rows(result: dict[str, Any], config: str, threshold: float) -> list[dict[str, Any]]:
    """Every docs/quality.md row of the result: testbed runs, real photos, ingest."""
    rows = quality_rows(result, config)
    if "real_photos" in result:
        rows += photo_quality_rows(result["real_photos"], threshold)
    if "ingest" in result:
        rows += ingest_quality_rows(result["ingest"], result["tune_seeds"])
    return rows


def main(argv: list[str] | None = None) -> int:
    from quality import shipped_models

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
    ap.add_argument("--no-photos", action="store_true", help="skip the real-photo check")
    ap.add_argument(
        "--photos-only", action="store_true",
        help="run only the real-photo check and put it into the existing --out JSON",
    )  # fmt: skip
    ap.add_argument("--photo-steps", type=int, default=50, help="PGD steps, photo crops (50)")
    ap.add_argument(
        "--photo-full-steps", type=int, default=20,
        help="PGD steps of the 256 px check on the report photos (20; 0 skips it)",
    )  # fmt: skip
    ap.add_argument("--photo-sheet", default=None, help="PNG of clean and perturbed crops")
    ap.add_argument("--no-ingest", action="store_true", help="skip the ingest check")
    ap.add_argument(
        "--ingest-variants", nargs="+", default=list(INGEST_VARIANTS), choices=list(INGEST_VARIANTS),
        help="download settings of the ingest check (served: bytes as served; jpeg75: stored as "
        "JPEG q75)",
    )  # fmt: skip
    ap.add_argument(
        "--ingest-only", action="store_true",
        help="run only the ingest check (report seeds) and put it into the existing --out JSON "
        "(its runs replace those of the same seeds)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if set(args.tune_seeds) & set(args.report_seeds):
        ap.error("tune and report seeds must differ")
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for name in ("bench_poisons", "audit"):
        logging.getLogger(name).setLevel(logging.INFO)
    from audit.workspace import write_json_atomic

    t0 = time.perf_counter()
    out = Path(args.out)
    if args.photos_only:
        result = json.loads(out.read_text())
        photos = photo_check(args)
        photos["command"] = " ".join(["python benchmarks/bench_poisons.py", *sys.argv[1:]])
        result["real_photos"] = photos
        result["quality_rows"] = all_quality_rows(result, args.config, args.threshold)
        write_json_atomic(out, result)  # a partial rerun keeps the file's models record
        print_photos(photos)
        print(f"wrote real_photos into {out} ({photos['seconds']:.0f} s)")
        return 0
    if args.ingest_only:
        result = json.loads(out.read_text())
        ing = ingest_check(args)
        ing["command"] = " ".join(["python benchmarks/bench_poisons.py", *sys.argv[1:]])
        old = {(r["seed"], r["variant"]): r for r in result.get("ingest", {}).get("runs", [])}
        old.update({(r["seed"], r["variant"]): r for r in ing["runs"]})
        ing["runs"] = [old[k] for k in sorted(old)]
        ing["report_seeds"] = sorted({s for s, _ in old})
        result["ingest"] = ing
        result["quality_rows"] = all_quality_rows(result, args.config, args.threshold)
        write_json_atomic(out, result)  # a partial rerun keeps the file's models record
        print_ingest(ing)
        print(f"wrote ingest into {out}")
        return 0
    result = run(args)
    summary = summarise(result)
    result["summary"] = summary
    if not args.no_photos:
        result["real_photos"] = photo_check(args)
    if not args.no_ingest:
        result["ingest"] = ingest_check(args)
    result["quality_rows"] = all_quality_rows(result, args.config, args.threshold)
    result["models"] = shipped_models(["tiny-synth", "tiny-sd"])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print_table(result, summary)
    if "real_photos" in result:
        print_photos(result["real_photos"])
    if "ingest" in result:
        print_ingest(result["ingest"])
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
