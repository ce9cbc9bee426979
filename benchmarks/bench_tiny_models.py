"""Quality of the two shipped tiny models, measured on fresh SynthLAION drawings.

    python benchmarks/bench_tiny_models.py [--clip-n 480] [--seeds 100] [--controls 10]

tiny-synth CLIP (held-out generator seed, never used for training data):
  zero-shot concept accuracy ("a photo of a {concept}"), colour and style retrieval accuracy
  (given the concept), flag-present AUROC ("a {c} with a flag" minus "a {c}"), and famous-work
  recognition accuracy.
tiny-sd: for each famous work's prompt and for control prompts (captions of non-duplicated
  training images), the share of ``--seeds`` generations that copy the prompt's own source, with
  a Wilson 95% interval per prompt, decided two ways: in copy space (SSCD at ``--copy-size`` px,
  best cosine to the source's training images >= 0.5, Somepalli et al.'s threshold; the
  decision the quality table reports) and by the nearest training image in tiny-synth's image
  space. The rates of all works and all controls pool the prompts' generations with a bootstrap
  95% interval over prompts (one prompt's generations are not independent draws), at least as
  wide as the pooled Wilson interval (``detectors.memorization.copy_rate_over_prompts``).
Training times are read from the records the training scripts wrote next to the weights; the
JSON names the seeds the models were trained (tuned) on and the seeds measured here.

Prints a table and writes ``benchmarks/results/tiny_models.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

from audit import models
from audit.training import train_tiny_clip, train_tiny_sd

RESULTS = Path(__file__).resolve().parent / "results" / "tiny_models.json"


def main(argv: list[str] | None = None) -> int:
    from quality import shipped_models

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip-seed", type=int, default=271828, help="generator seed of the eval set")
    p.add_argument("--clip-n", type=int, default=480)
    p.add_argument("--seeds", type=int, default=100, help="generations per prompt")
    p.add_argument("--controls", type=int, default=10, help="control (non-duplicated) prompts")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps per generation")
    p.add_argument("--copy-size", type=int, default=128,
                   help="SSCD input side for copy decisions (the demo embeds at 128)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--setting", default="full", help="recorded as is: full, or what was reduced")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("root", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    clip = models.load_clip("tiny-synth")
    t0 = time.time()
    clip_q = train_tiny_clip.evaluate(*clip, seed=args.clip_seed, n=args.clip_n)
    clip_s = time.time() - t0
    clip_rec = json.loads((models.TINY_CLIP_DIR / "training.json").read_text())

    sd_rec = json.loads((models.TINY_SD_DIR / "training_summary.json").read_text())
    sd_args = sd_rec["args"]
    items = train_tiny_sd.make_dataset(sd_args["n"], sd_args["seed"], sd_args["work_share"])
    prompts = train_tiny_sd.default_prompts(items, args.controls, seed=1000 + sd_args["seed"])
    pipe = models.load_generator("tiny-sd")
    t1 = time.time()
    mem = train_tiny_sd.memorization_rates(
        pipe,
        clip,
        [it["image"] for it in items],
        train_tiny_sd.sources(items),
        prompts,
        list(range(args.seeds)),
        steps=args.steps,
        copy_detector=models.load_copy_detector(size=args.copy_size),
    )
    gen_s = time.time() - t1
    works = {k: v for k, v in mem.items() if not k.startswith("control_")}
    controls = {k: v for k, v in mem.items() if k.startswith("control_")}
    from detectors.memorization import copy_rate_over_prompts

    pooled = {
        name: copy_rate_over_prompts([v["copies"] for v in group.values()],
                                     [v["n"] for v in group.values()])
        for name, group in (("works", works), ("controls", controls))
    }  # fmt: skip
    pooled_copy = {
        name: copy_rate_over_prompts([v["copy_space"]["copies"] for v in group.values()],
                                     [v["n"] for v in group.values()])
        for name, group in (("works", works), ("controls", controls))
    }  # fmt: skip

    sizes = {
        "tiny-synth": models.TINY_CLIP_WEIGHTS.stat().st_size,
        "tiny-sd": sum(f.stat().st_size for f in models.TINY_SD_DIR.rglob("*.safetensors")),
    }
    result = {
        "setting": args.setting,
        "machine": {"platform": platform.platform(), "torch_threads": args.threads},
        "seeds": {
            "tune": {
                # data seeds of every run the shipped weights come from (training.json chain)
                "tiny_synth_training": sorted(
                    {
                        r["args"]["seed"] if "args" in r and r["args"] else r.get("seed")
                        for r in clip_rec.get("chain", [])
                    }
                    - {None}
                )
                or [clip_rec["args"].get("seed")],
                "tiny_synth_training_eval": clip_rec["args"].get("eval_seed"),
                "tiny_sd_training": sd_args["seed"],
                "tiny_synth_recipe_selection_eval": clip_rec.get("selection_eval_seeds", []),
            },
            "report": {
                "tiny_synth_eval": args.clip_seed,
                "tiny_sd_control_prompts": 1000 + sd_args["seed"],
                "tiny_sd_generation_seeds": f"0..{args.seeds - 1}",
            },
            "note": "tiny-sd is measured on its own training images (memorization of the "
            "training set is the point); the control prompts are drawn with a seed no training "
            "step used",
        },
        "tiny_synth": {
            "eval_seed": args.clip_seed,
            "n_images": args.clip_n,
            **{k: round(v, 4) for k, v in clip_q.items()},
            "eval_seconds": round(clip_s, 1),
            "training_seconds": clip_rec["train_seconds"],
            "training_data_seconds": clip_rec["data_seconds"],
            "training_steps": clip_rec["args"]["steps"],
        },
        "tiny_sd": {
            "seeds_per_prompt": args.seeds,
            "ddim_steps": args.steps,
            "works_copy_rate": round(pooled["works"]["rate"], 4),
            "works_bootstrap95": [round(pooled["works"][k], 4) for k in ("ci_low", "ci_high")],
            "controls_copy_rate": round(pooled["controls"]["rate"], 4),
            "controls_bootstrap95": [
                round(pooled["controls"][k], 4) for k in ("ci_low", "ci_high")
            ],
            "pooled": pooled,
            "copy_space": {
                "model": next(iter(mem.values()))["copy_space"]["model"],
                "threshold": 0.5,
                "works_copy_rate": round(pooled_copy["works"]["rate"], 4),
                "controls_copy_rate": round(pooled_copy["controls"]["rate"], 4),
                "pooled": pooled_copy,
                "best_work_prompt_rate_min": min(v["copy_space"]["rate"] for v in works.values()),
            },
            "per_prompt": mem,
            "generation_seconds": round(gen_s, 1),
            "training_seconds": sd_rec["seconds"],
        },
        "weights_bytes": sizes,
        "weights_bytes_total": sum(sizes.values()),
    }
    result["quality_rows"] = quality_rows(result)
    result["models"] = shipped_models(["tiny-synth", "tiny-sd"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\ntiny-synth CLIP (eval seed {args.clip_seed}, {args.clip_n} fresh images)")
    print(f"  {'metric':<28}{'value':>8}")
    for k in ("concept_acc", "colour_acc", "style_acc", "flag_auroc", "work_acc"):
        print(f"  {k:<28}{clip_q[k]:>8.3f}")
    print(f"  {'training time (s)':<28}{clip_rec['train_seconds']:>8.0f}")
    print(f"\ntiny-sd memorization ({args.seeds} seeds/prompt, DDIM {args.steps} steps)")
    print(f"  {'prompt':<44}{'copies (SSCD)':>14}{'95% CI':>16}{'best':>7}{'CLIP nn':>9}")
    for v in mem.values():
        c = v["copy_space"]
        lo, hi = c["wilson95"]
        print(f"  {v['prompt'][:43]:<44}{c['copies']:>7}{c['rate']:>7.2f}"
              f"{f'[{lo:.2f}, {hi:.2f}]':>16}{c['max_best_to_source']:>7.3f}{v['rate']:>9.2f}")  # fmt: skip
    for name, key in (("ALL WORKS (bootstrap over prompts)", "works"),
                      ("ALL CONTROLS (bootstrap over prompts)", "controls")):  # fmt: skip
        p, q = pooled_copy[key], pooled[key]
        lo, hi = p["ci_low"], p["ci_high"]
        print(f"  {name:<44}{p['copies']:>7}{p['rate']:>7.2f}{f'[{lo:.2f}, {hi:.2f}]':>16}"
              f"{'':>7}{q['rate']:>9.2f}")  # fmt: skip
    print(f"\nweights: {sum(sizes.values()) / 1e6:.1f} MB in total; results -> {out}")
    return 0


def quality_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The tiny models' rows of docs/quality.md: tiny-synth's zero-shot concept accuracy on a
    generator seed no training or selection step saw, and tiny-sd's copy rates in copy space."""
    from quality import row

    from detectors.stats import wilson_interval

    seeds, clip, sd = res["seeds"], res["tiny_synth"], res["tiny_sd"]
    k = round(clip["concept_acc"] * clip["n_images"])
    tune_clip = [
        *(f"data {d}" for d in seeds["tune"]["tiny_synth_training"]),
        seeds["tune"]["tiny_synth_training_eval"],
        *seeds["tune"]["tiny_synth_recipe_selection_eval"],
    ]
    cs = sd["copy_space"]
    setting = f"{cs['model']} >= {cs['threshold']}, DDIM {sd['ddim_steps']} steps"
    rows = [
        row(
            "tiny-synth",
            'zero-shot concept accuracy ("a photo of a {concept}", 24 concepts)',
            clip["concept_acc"],
            ci=wilson_interval(k, clip["n_images"]),
            n=clip["n_images"],
            tune=tune_clip,
            report=seeds["report"]["tiny_synth_eval"],
            setting="fresh testbed drawings, 64 px",
            target=">= 0.90",
        ),  # fmt: skip
    ]
    for name, key, target in (
        ("works", "works", ">= 0.5 each"),
        ("controls", "controls", "<= 0.05"),
    ):
        p = cs["pooled"][key]
        rows.append(
            row(
                "tiny-sd",
                f"copy rate of the {name}' prompts (pooled)",
                p["rate"],
                ci=(p["ci_low"], p["ci_high"]),
                n=p["n"],
                tune=f"training seed {seeds['tune']['tiny_sd_training']}",
                report=f"generation seeds {seeds['report']['tiny_sd_generation_seeds']}",
                setting=setting,
                target=target,
                note=f"min over works: {cs['best_work_prompt_rate_min']:.2f}"
                if key == "works"
                else "",
            )  # fmt: skip
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
