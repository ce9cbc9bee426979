"""The damage poisons do when tiny-sd is trained on them, and whether the audit prevents it.

    python benchmarks/bench_poison_training.py            # the full table (see --help)
    python benchmarks/bench_poison_training.py --ks 0 200 --kinds dirty   # a quick look

One SynthLAION testbed (``--n`` ordinary rows, seed ``--seed``) also holds 200 poisons of each
kind for one concept pair A:B (``--pair``, default house:clock): dirty-label (an image of B,
caption names A) and Nightshade-style (an image of A whose latent under tiny-sd's VAE was moved
toward the same drawing with B in place of A by PGD under L-infinity ``--eps``; caption names
A). A condition (kind, k) is the ordinary rows plus the first k poisons of that kind (nested:
the 25 are in the 50, ...). For each condition tiny-sd's UNet is trained further (VAE and text
encoder frozen) with the same budget (``--steps`` x ``--batch`` at ``--lr``, one training seed),
then asked for 100 generations of "a photo of a A": attack success = the share that the
zero-shot tiny-synth classifier (prompt ensembles over the testbed's concepts) reads as B, with
a Wilson 95% interval, and the share it reads as A. Bleed-through: the share of B among
generations of the related concept (nearest to A in tiny-sd's text-encoder space); controls
(the two concepts farthest from A there): the share read as themselves and as B.

The defence: the audit as a user runs it. The testbed is embedded once by ``laion-audit
embed`` (tiny-synth, no copy model); each condition gets a workspace holding that condition's
rows (the embedding rows are per sample, so this equals embedding the condition alone) and the
testbed shards, then ``laion-audit poisons`` (default options) and ``laion-audit filter --drop
poisons``; tiny-sd is trained again on the kept rows with the same budget and measured again.
"Clean dropped" counts ordinary rows the filter removed. Identical training sets (same kept
keys) are trained once.

Extra Nightshade-style budgets (``--eps-sweep``) are measured at the largest k only, with the
same sources and targets re-attacked (:func:`audit.testbed.generate.poison_sources`).

Writes ``benchmarks/results/poison_training.json`` (with CPU and wall times and the load
average) and prints the table.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("bench_poison_training")

TUNE_SEEDS = [11, 12]
"""Testbed seeds on which the poisons stage's defaults (flag rule, evidence) were chosen."""


def _fraction(text: str) -> float:
    if "/" in text:
        a, b = text.split("/", 1)
        return float(a) / float(b)
    return float(text)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---------------------------------------------------------------------------- data


def build(args: argparse.Namespace, work: Path) -> tuple[Path, pd.DataFrame]:
    from audit.testbed.generate import build_testbed

    tb = work / "testbed"
    k_max = max(args.ks)
    total = args.n + 2 * k_max
    if not (tb / "truth.parquet").exists():
        build_testbed(
            tb,
            n=total,
            seed=args.seed,
            overwrite=True,
            dirty_rate=k_max / total,
            dirty_pairs=(args.pair,),
            nightshade_rate=k_max / total,
            nightshade_pairs=(args.pair,),
            gen_eps=args.eps,
            clean_rate=0.0,
            glaze_rate=0.0,
        )
    return tb, pd.read_parquet(tb / "truth.parquet")


def decode_rgb64(data: bytes | None) -> Any:
    """The image a training pipeline sees: decoded, RGB, shorter side to 64, centre crop."""
    from pipelines.decode import DecodeError, decode_image

    try:
        im = decode_image(data).image
    except DecodeError:
        return None
    from detectors.poisons import _generator_batch  # the poisons stage's preprocessing

    x = _generator_batch([im], 64)[0]
    from PIL import Image

    arr = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def jpeg(im: Any, quality: int = 95, subsampling: int = 0) -> Any:
    from PIL import Image

    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


# ---------------------------------------------------------------------------- model


class Trainer:
    """tiny-sd's UNet trained further on precomputed latents and text states."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from audit.models import load_generator
        from audit.training.train_tiny_sd import noise_schedulers

        self.args = args
        self.pipe = load_generator("tiny-sd")
        self.base = {k: v.clone() for k, v in self.pipe.unet.state_dict().items()}
        self.ddpm, _ = noise_schedulers()
        self.scaling = float(self.pipe.vae.config.scaling_factor)
        self.uncond = self.text([""])
        self.torch = torch

    def text(self, captions: list[str]) -> Any:
        from audit.training.train_tiny_sd import encode_prompts

        return encode_prompts(self.pipe.tokenizer, self.pipe.text_encoder, captions)

    def latents(self, images: list[Any]) -> Any:
        from audit.training.train_tiny_sd import _to_tensor

        torch = self.torch
        out = []
        with torch.no_grad():
            for b in range(0, len(images), 128):
                x = _to_tensor(images[b : b + 128])
                out.append(self.pipe.vae.encode(x).latent_dist.mean * self.scaling)
        return torch.cat(out)

    def train(self, latents: Any, cond: Any) -> tuple[dict, list]:
        import torch.nn.functional as F

        torch, a = self.torch, self.args
        unet = self.pipe.unet
        unet.load_state_dict(self.base)
        unet.train()
        gen = torch.Generator().manual_seed(a.train_seed)
        opt = torch.optim.AdamW(unet.parameters(), lr=a.lr, weight_decay=1e-2)
        n, curve, run = len(latents), [], 0.0
        for step in range(a.steps):
            for g in opt.param_groups:
                g["lr"] = a.lr * min(1.0, (step + 1) / 20)
            idx = torch.randint(0, n, (a.batch,), generator=gen)
            c = cond[idx]
            drop = torch.rand(a.batch, generator=gen) < 0.1
            c = torch.where(drop[:, None, None], self.uncond.expand_as(c), c)
            z0 = latents[idx]
            noise = torch.randn(z0.shape, generator=gen)
            t = torch.randint(0, 1000, (a.batch,), generator=gen)
            pred = unet(self.ddpm.add_noise(z0, noise, t), t, encoder_hidden_states=c).sample
            loss = F.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            run += float(loss.detach())
            if (step + 1) % 100 == 0:
                curve.append([step + 1, round(run / 100, 5)])
                logger.info("  step %d/%d loss %.4f", step + 1, a.steps, run / 100)
                run = 0.0
        unet.eval()
        return {k: v.detach().clone() for k, v in unet.state_dict().items()}, curve

    def generate(self, state: dict | None, prompt: str, n: int) -> list[Any]:
        from audit.training.train_tiny_sd import generate

        self.pipe.unet.load_state_dict(state if state is not None else self.base)
        self.pipe.unet.eval()
        return generate(self.pipe, prompt, list(range(n)), steps=self.args.ddim_steps)


class Classifier:
    """Zero-shot tiny-synth over the testbed's concepts (prompt ensembles)."""

    def __init__(self, concepts: list[str]) -> None:
        from audit.models import load_clip
        from audit.vocabulary import concept_text_embeddings

        self.model, self.preprocess, tok = load_clip("tiny-synth")
        self.concepts = np.asarray(concepts)
        self.emb = concept_text_embeddings(self.model, tok, list(concepts))

    def __call__(self, images: list[Any]) -> np.ndarray:
        from audit.models import encode_images

        e = encode_images(self.model, self.preprocess, images)
        return self.concepts[(e @ self.emb.T).argmax(1)]


def rate(labels: np.ndarray, what: str) -> dict[str, Any]:
    from detectors.stats import wilson_interval

    k, n = int((labels == what).sum()), len(labels)
    lo, hi = wilson_interval(k, n)
    return {
        "rate": round(k / n, 4),
        "ci": [round(float(lo), 4), round(float(hi), 4)],
        "k": k,
        "n": n,
    }


# ---------------------------------------------------------------------------- audit


def laion_audit(*argv: str) -> None:
    cmd = [sys.executable, "-m", "audit", *argv, "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr[-2000:]}")


def embed_all(tb: Path, work: Path) -> Path:
    ws = work / "ws_all"
    if not (ws / "embeddings" / "model.json").exists():
        ws.mkdir(parents=True, exist_ok=True)
        if not (ws / "shards").exists():
            (ws / "shards").symlink_to(tb / "shards")
        laion_audit("embed", str(ws), "--copy-model", "none")
    return ws


def audit_condition(ws_all: Path, keys: set[str], work: Path, name: str) -> dict[str, Any]:
    """The condition's rows as a workspace; poisons + filter --drop poisons; kept keys."""
    import pyarrow.parquet as pq

    ws = work / f"ws_{name}"
    if ws.exists():
        shutil.rmtree(ws)
    (ws / "embeddings").mkdir(parents=True)
    (ws / "shards").symlink_to((ws_all / "shards").resolve())
    shutil.copy(ws_all / "embeddings" / "model.json", ws / "embeddings" / "model.json")
    parts = sorted((ws_all / "embeddings").glob("part-*.parquet"))
    tab = pq.read_table(parts)
    mask = np.isin(np.asarray(tab.column("key").to_pylist(), dtype=object), list(keys))
    pq.write_table(tab.filter(mask), ws / "embeddings" / "part-00000.parquet")
    (ws / "embeddings" / "part-00000.SUCCESS").write_text("")
    t0 = time.perf_counter()
    laion_audit("poisons", str(ws))
    laion_audit("filter", str(ws), "--drop", "poisons")
    kept = set(pd.read_parquet(ws / "filtered" / "keep.parquet")["key"])
    meta = json.loads((ws / "findings" / "poisons.json").read_text())
    shutil.rmtree(ws / "embeddings")
    return {"kept": kept, "seconds": round(time.perf_counter() - t0, 1), "meta": meta}


# ---------------------------------------------------------------------------- run


def text_neighbours(trainer: Trainer, a: str, b: str, concepts: list[str]) -> tuple[str, list]:
    """The concept nearest to A in the generator's text-encoder space (pooled output of "a
    photo of a X"), and the two farthest (controls); B is never either."""
    torch = trainer.torch
    tok, te = trainer.pipe.tokenizer, trainer.pipe.text_encoder
    with torch.no_grad():
        ids = tok([f"a photo of a {c}" for c in concepts], padding="max_length",
                  max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids  # fmt: skip
        e = te(ids).pooler_output
    e = torch.nn.functional.normalize(e, dim=-1).numpy()
    i = concepts.index(a)
    sims = e @ e[i]
    order = [concepts[j] for j in np.argsort(-sims) if concepts[j] not in (a, b)]
    return order[0], order[-2:]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from audit.testbed import draw
    from audit.testbed.generate import poison_sources
    from audit.testbed.poison import JpegSpec, latent_distances, load_vae, pgd_toward_latents

    torch.set_num_threads(args.threads)
    t_wall, t_cpu = time.perf_counter(), cpu_seconds()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_poison_training_"))
    work.mkdir(parents=True, exist_ok=True)
    a, b = args.pair.split(":")
    tb, truth = build(args, work)
    t_build = time.perf_counter() - t_wall
    files = {r.key: tb / "files" / r.file_name for r in truth.itertuples()}
    images = {k: decode_rgb64(p.read_bytes() if p.exists() else None) for k, p in files.items()}
    ok = {k for k, im in images.items() if im is not None}
    rng = np.random.default_rng(args.seed)
    poisons = {
        kind: list(rng.permutation(sorted(truth.loc[truth.poison_kind == kind, "key"])))
        for kind in ("dirty", "nightshade")
    }
    ordinary = set(truth.loc[truth.poison_kind == "none", "key"])
    ordinary_a = set(truth.loc[(truth.poison_kind == "none") & (truth.caption_concept == a), "key"])
    n_a_clean = len(ordinary_a)

    trainer = Trainer(args)
    classifier = Classifier(list(draw.CONCEPTS))
    related, controls = text_neighbours(trainer, a, b, list(draw.CONCEPTS))
    keys_all = sorted(ok)
    caps = dict(zip(truth.key, truth.caption, strict=True))
    cond_all = trainer.text([caps[k] for k in keys_all])
    lat_all = trainer.latents([images[k] for k in keys_all])
    index = {k: i for i, k in enumerate(keys_all)}

    # Nightshade-style at other budgets: the same sources and targets, re-attacked
    vae = load_vae("tiny-sd")
    src = poison_sources(tb)
    ns_keys = poisons["nightshade"]
    variants: dict[str, Any] = {}
    latent_moves: dict[str, Any] = {}
    srcs = [src[k]["source"] for k in ns_keys]
    tgts = [src[k]["target"] for k in ns_keys]
    d0 = latent_distances(vae, srcs, tgts)
    served = [images[k] for k in ns_keys]
    latent_moves[f"{round(args.eps * 255)}/255"] = {
        "served_jpeg95": round(float((latent_distances(vae, served, tgts) / d0).mean()), 4),
        "after_jpeg75": round(
            float((latent_distances(vae, [jpeg(i, 75, 2) for i in served], tgts) / d0).mean()), 4
        ),
    }
    for eps in args.eps_sweep:
        adv = pgd_toward_latents(vae, srcs, tgts, eps=eps, steps=50, jpeg=JpegSpec(95, 0))
        adv = [jpeg(im) for im in adv]
        name = f"{round(eps * 255)}/255"
        variants[name] = trainer.latents(adv)
        latent_moves[name] = {
            "served_jpeg95": round(float((latent_distances(vae, adv, tgts) / d0).mean()), 4),
            "after_jpeg75": round(
                float((latent_distances(vae, [jpeg(i, 75, 2) for i in adv], tgts) / d0).mean()),
                4,
            ),
        }

    cache: dict[str, Any] = {}

    def measure(keys: set[str], variant: str | None = None) -> dict[str, Any]:
        rows = sorted(k for k in keys if k in index)
        budget = (args.steps, args.batch, args.lr, args.train_seed, args.ddim_steps, args.gens,
                  args.related_gens, args.control_gens, args.eps)  # fmt: skip
        sig = hashlib.sha256(("|".join(rows) + f"#{variant}#{budget}").encode()).hexdigest()
        disk = work / "trained" / f"{sig[:20]}.json"
        if sig in cache:
            return {**cache[sig], "reused": True}
        if disk.exists():  # an earlier run in the same --work folder trained this set
            cache[sig] = json.loads(disk.read_text())
            return cache[sig]
        idx = torch.tensor([index[k] for k in rows])
        lat = lat_all[idx].clone()
        if variant is not None:
            pos = {k: i for i, k in enumerate(ns_keys)}
            for j, k in enumerate(rows):
                if k in pos:
                    lat[j] = variants[variant][pos[k]]
        t0, c0 = time.perf_counter(), cpu_seconds()
        state, curve = trainer.train(lat, cond_all[idx])
        t1 = time.perf_counter()
        res: dict[str, Any] = {"train_rows": len(rows), "loss_curve": curve}
        lab = classifier(trainer.generate(state, f"a photo of a {a}", args.gens))
        res["attack"] = {"as_B": rate(lab, b), "as_A": rate(lab, a)}
        lab = classifier(trainer.generate(state, f"a photo of a {related}", args.related_gens))
        res["related"] = {"concept": related, "as_B": rate(lab, b), "as_self": rate(lab, related)}
        res["controls"] = {}
        for c in controls:
            lab = classifier(trainer.generate(state, f"a photo of a {c}", args.control_gens))
            res["controls"][c] = {"as_B": rate(lab, b), "as_self": rate(lab, c)}
        res["train_seconds"] = round(t1 - t0, 1)
        res["eval_seconds"] = round(time.perf_counter() - t1, 1)
        res["cpu_seconds"] = round(cpu_seconds() - c0, 1)
        cache[sig] = res
        disk.parent.mkdir(exist_ok=True)
        disk.write_text(json.dumps(res))
        logger.info(
            "%d rows%s: %s -> %s %.2f (%s %.2f), %.0f s",
            len(rows),
            f" ({variant})" if variant else "",
            a,
            b,
            res["attack"]["as_B"]["rate"],
            a,
            res["attack"]["as_A"]["rate"],
            time.perf_counter() - t0,
        )
        return res

    ws_all = embed_all(tb, work) if not args.no_defence else None
    conditions = []
    for kind in args.kinds:
        for k in args.ks:
            if k == 0 and kind != args.kinds[0]:
                continue
            keys = ordinary | set(poisons[kind][:k])
            entry: dict[str, Any] = {
                "kind": "none" if k == 0 else kind,
                "k": k,
                "eps": f"{round(args.eps * 255)}/255" if kind == "nightshade" else None,
                "poison_share_of_A": round(k / (k + n_a_clean), 4),
                "before": measure(keys),
            }
            if ws_all is not None and (args.defence_ks is None or k in args.defence_ks):
                aud = audit_condition(ws_all, keys, work, f"{kind}_{k}")
                kept = aud["kept"]
                pk = set(poisons[kind][:k])
                entry["audit"] = {
                    "poisons_dropped": len(pk - kept),
                    "poisons": k,
                    "clean_dropped": len((keys - pk) - kept),
                    "clean": len(keys - pk),
                    "clean_dropped_of_A": len(((keys - pk) - kept) & ordinary_a),
                    "flagged_by_kind": aud["meta"]["summary"]["flagged_by_kind"],
                    "seconds": aud["seconds"],
                }
                entry["after"] = measure(keys & kept)
            conditions.append(entry)
    sweep = []
    k_max = max(args.ks)
    for name in variants:
        keys = ordinary | set(ns_keys[:k_max])
        sweep.append(
            {
                "kind": "nightshade",
                "k": k_max,
                "eps": name,
                "poison_share_of_A": round(k_max / (k_max + n_a_clean), 4),
                "before": measure(keys, name),
            }
        )
    return {
        "pair": args.pair,
        "related": related,
        "controls": controls,
        "n_ordinary": len(ordinary),
        "n_A_ordinary": n_a_clean,
        "testbed_seed": args.seed,
        "tune_seeds": TUNE_SEEDS,
        "report_seeds": [args.seed],
        "budget": {
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "train_seed": args.train_seed,
            "ddim_steps": args.ddim_steps,
            "guidance": 7.5,
            "generations": {
                "A": args.gens,
                "related": args.related_gens,
                "control": args.control_gens,
            },
        },
        "eps": f"{round(args.eps * 255)}/255",
        "latent_distance_ratio": latent_moves,
        "conditions": conditions,
        "eps_sweep": sweep,
        "seconds": {
            "build": round(t_build, 1),
            "wall": round(time.perf_counter() - t_wall, 1),
            "cpu": round(cpu_seconds() - t_cpu, 1),
        },
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "threads": args.threads,
        "work": str(work),
    }


def quality_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of docs/quality.md: what the default audit removed before training (poisons and
    clean rows), per audited condition."""
    from quality import row  # benchmarks/ is the script's folder

    from detectors.stats import wilson_interval

    a, b = res["pair"].split(":")
    rows = []
    for c in res["conditions"]:
        au = c.get("audit")
        if not au or not au["poisons"]:
            continue
        kind = c["kind"] + (f" {c['eps']}" if c.get("eps") else "")
        setting = (
            f"{kind}, k={c['k']} ({round(100 * c['poison_share_of_A'])}% of '{a}' captions), "
            f"testbed {res['n_ordinary']} rows, served; poisons + filter --drop poisons"
        )
        for metric, k, n in (
            ("poisons removed before training", au["poisons_dropped"], au["poisons"]),
            ("clean rows removed (cost)", au["clean_dropped"], au["clean"]),
        ):
            lo, hi = wilson_interval(k, n)
            rows.append(
                row(
                    f"poisons audit + filter: {a}->{b}",
                    metric,
                    k / n,
                    ci=(float(lo), float(hi)),
                    n=n,
                    tune=res["tune_seeds"],
                    report=res["report_seeds"],
                    setting=setting,
                )
            )
    return rows


def _cell(r: dict[str, Any]) -> str:
    return f"{r['rate']:.2f} [{r['ci'][0]:.2f},{r['ci'][1]:.2f}]"


def print_table(res: dict[str, Any]) -> None:
    a, b = res["pair"].split(":")
    print(
        f"tiny-sd trained further ({res['budget']['steps']} steps x {res['budget']['batch']}, "
        f"lr {res['budget']['lr']}) on {res['n_ordinary']} ordinary rows ({res['n_A_ordinary']} "
        f"of '{a}') + k poisons; attack success = '{a}' generations read as '{b}'"
    )
    head = (
        f"{'kind':10s} {'eps':6s} {'k':>4s} {'share':>5s} {'A->B':>18s} {'A->A':>5s} "
        f"{res['related'] + '->B':>18s} {'ctrl self':>9s} | {'after A->B':>18s} "
        f"{'pois.drop':>9s} {'clean.drop':>10s}"
    )
    print(head)
    print("-" * len(head))
    for c in [*res["conditions"], *res["eps_sweep"]]:
        be = c["before"]
        ctrl = np.mean([v["as_self"]["rate"] for v in be["controls"].values()])
        line = (
            f"{c['kind']:10s} {c['eps'] or '-':6s} {c['k']:4d} {c.get('poison_share_of_A', 0):5.2f} "
            f"{_cell(be['attack']['as_B']):>18s} {be['attack']['as_A']['rate']:5.2f} "
            f"{_cell(be['related']['as_B']):>18s} {ctrl:9.2f}"
        )
        if "after" in c:
            au = c["audit"]
            line += (
                f" | {_cell(c['after']['attack']['as_B']):>18s} "
                f"{au['poisons_dropped']:4d}/{au['poisons']:<4d} "
                f"{au['clean_dropped']:5d}/{au['clean']:<5d}"
            )
        print(line)
    print(f"latent distance to target after PGD / before (mean): {res['latent_distance_ratio']}")
    s = res["seconds"]
    print(
        f"wall {s['wall']:.0f} s, cpu {s['cpu']:.0f} s, load average at end {res['load_average_end']}"
    )


def main(argv: list[str] | None = None) -> int:
    from quality import shipped_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=800, help="ordinary testbed rows (800)")
    ap.add_argument("--seed", type=int, default=101, help="testbed seed (101)")
    ap.add_argument("--pair", default="house:clock")
    ap.add_argument("--kinds", nargs="+", default=["dirty", "nightshade"])
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 25, 50, 100, 200])
    ap.add_argument("--eps", type=_fraction, default=64 / 255, help="Nightshade L-inf (64/255)")
    ap.add_argument(
        "--eps-sweep",
        type=_fraction,
        nargs="*",
        default=[16 / 255, 32 / 255],
        help="other Nightshade budgets, measured at the largest k",
    )
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--ddim-steps", type=int, default=20)
    ap.add_argument("--gens", type=int, default=100)
    ap.add_argument("--related-gens", type=int, default=50)
    ap.add_argument("--control-gens", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-defence", action="store_true", help="skip the audit and retraining")
    ap.add_argument(
        "--defence-ks", type=int, nargs="*", default=None, help="audit and retrain at these k only"
    )
    ap.add_argument("--work", default=None, help="working folder (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "poison_training.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("bench_poison_training").setLevel(logging.INFO)
    res = run(args)
    res["quality_rows"] = quality_rows(res)
    res["models"] = shipped_models(["tiny-synth", "tiny-sd"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from audit.workspace import write_json_atomic

    write_json_atomic(out, res)
    print_table(res)
    print(f"wrote {out}")
    if not args.keep and not args.work:
        shutil.rmtree(res["work"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
