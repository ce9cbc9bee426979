"""``laion-audit attack --generator ERASED --original G --prompts FILE --out FILE``: adversarial
prompts against concept erasure (UnlearnDiffAtk)."""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.config import require

logger = logging.getLogger(__name__)

USES_WORKSPACE = False
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

HELP = "adversarial prompts that bring an erased concept back (UnlearnDiffAtk)"
DESCRIPTION = """\
Tests an erased model (`laion-audit erase`, or any unlearned diffusers pipeline) with
UnlearnDiffAtk (Zhang et al., ECCV 2024): for each prompt, the ORIGINAL model generates a target
image (seed = the row's `seed`, else --seed + row number), and --tokens adversarial tokens are
prepended to the prompt and optimised so that the ERASED model denoises that target well
(||eps_erased(x_t(target), t, [adv; prompt]) - noise||^2): --timesteps evenly spaced timesteps
in increasing order, --iterations Adam steps at each (lr 0.01, weight decay 0.1), tokens as
relaxed one-hot vectors over the whole-word vocabulary (--relax simplex, the paper's) or as
embeddings projected to the nearest token (--relax project). After each timestep the erased
model generates from the attacked prompt with the row's seed; success (early stop) when that
generation copies the reference by copy-descriptor cosine >= --threshold (SSCD 0.5). Prompts
that already copy before the attack count as successes with 0 steps. ASR = (successes before +
new successes) / prompts, logged with Wilson 95% intervals. The paper's budget (50 timesteps x
40 iterations) is the default; --timesteps 5 is a tenth of it.

--prompts FILE: .jsonl/.csv/.txt as `reproduce --prompts` reads them (`prompt`, optional
`finding_id`, `prompt_kind`); a .jsonl/.csv row may also give `seed`, `reference` (work:ID or
an image path) and `target_prompt` (the original model's prompt for the target image, e.g. the
work's best prompt when attacking a near-miss). --reference sets the reference of every row
(default: the target image itself). work:ID names a canonical SynthLAION work
(audit.testbed.draw.WORKS), drawn at the generation size.

Writes --out (.jsonl), one row per prompt, readable by `laion-audit reproduce --prompts FILE`:
prompt (adversarial tokens first), finding_id, prompt_kind (the input kind + "+unlearndiffatk"),
original_prompt, seed, success, success_before, steps, timesteps_used, tokens, token_ids,
similarity, similarity_before, target_similarity, seconds; and FILE.summary.json (ASR
before/after with intervals, settings, timings). Use --generator G --original G to
sanity-check the attack on an unerased model's near-misses.
"""


@dataclass
class Config:
    generator: str = ""
    original: str = "tiny-sd"
    prompts: str = ""
    tokens: int = 3
    out: str = ""
    reference: str = ""
    relax: str = "simplex"
    iterations: int = 40
    timesteps: int = 50
    vocabulary: str = ""
    lr: float = 0.01
    weight_decay: float = 0.1
    seed: int = 0
    sample_steps: int = 50
    guidance: float = 7.5
    threshold: float = 0.5
    copy_model: str = "sscd"
    copy_size: int = 224
    limit: int = 0
    device: str = "auto"
    torch_threads: int = 0

    def __post_init__(self) -> None:
        s = "attack"
        require(bool(self.generator), f"{s}.generator", "must name the erased pipeline", "")
        require(bool(self.original), f"{s}.original", "must name the original pipeline", "")
        require(bool(self.prompts), f"{s}.prompts", "needs a prompt file (--prompts FILE)", "")
        require(bool(self.out), f"{s}.out", "needs an output file (--out FILE.jsonl)", "")
        require(
            Path(self.out).suffix.lower() == ".jsonl",
            f"{s}.out",
            "must be a .jsonl file",
            self.out,
        )
        require(1 <= self.tokens <= 16, f"{s}.tokens", "must be in 1..16", self.tokens)
        from audit.mitigations.attack import RELAXATIONS

        require(
            self.relax in RELAXATIONS, f"{s}.relax", f"must be one of {RELAXATIONS}", self.relax
        )
        require(self.iterations >= 0, f"{s}.iterations", "must be >= 0", self.iterations)
        require(1 <= self.timesteps <= 1000, f"{s}.timesteps", "must be in 1..1000", self.timesteps)
        require(self.lr > 0, f"{s}.lr", "must be > 0", self.lr)
        require(self.weight_decay >= 0, f"{s}.weight_decay", "must be >= 0", self.weight_decay)
        require(self.sample_steps >= 1, f"{s}.sample_steps", "must be >= 1", self.sample_steps)
        require(self.guidance >= 0, f"{s}.guidance", "must be >= 0", self.guidance)
        require(-1 <= self.threshold <= 1, f"{s}.threshold", "must be a cosine", self.threshold)
        require(self.copy_size >= 32, f"{s}.copy_size", "must be >= 32", self.copy_size)
        require(self.limit >= 0, f"{s}.limit", "must be >= 0 (0 = every prompt)", self.limit)
        require(
            bool(DEVICE_RE.match(self.device)),
            f"{s}.device",
            "must be auto, cpu, cuda, cuda:N or mps",
            self.device,
        )
        require(self.torch_threads >= 0, f"{s}.torch_threads", "must be >= 0", self.torch_threads)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("models and prompts")
    g.add_argument("--generator", default=None, metavar="ERASED", help="the erased pipeline")
    g.add_argument(
        "--original",
        default=None,
        metavar="G",
        help="the original pipeline that makes the target images (default tiny-sd)",
    )
    g.add_argument("--prompts", default=None, metavar="FILE", help="prompts to attack")
    g.add_argument("--out", default=None, metavar="FILE", help="adversarial prompts (.jsonl)")
    g.add_argument(
        "--reference",
        default=None,
        metavar="SPEC",
        help="what success is judged against: work:ID or an image path (default: the target)",
    )
    g.add_argument(
        "--limit", type=int, default=None, help="attack only the first N prompts (default all)"
    )
    a = parser.add_argument_group("attack")
    a.add_argument(
        "--tokens", type=int, default=None, help="adversarial tokens prepended (default 3)"
    )
    a.add_argument(
        "--relax",
        choices=("simplex", "project"),
        default=None,
        help="token relaxation: simplex (relaxed one-hot, the paper's; default) or project "
        "(nearest-embedding projection)",
    )
    a.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="optimisation steps per timestep (default 40)",
    )
    a.add_argument(
        "--timesteps",
        type=int,
        default=None,
        help="evenly spaced timesteps visited in order, a success check after each "
        "(default 50: at most 50 x 40 steps and 50 checks per prompt)",
    )
    a.add_argument(
        "--vocabulary",
        default=None,
        metavar="FILE",
        help="only these words as adversarial tokens (a text file; default: every whole-word "
        "token of the tokenizer)",
    )
    a.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 0.01)")
    a.add_argument(
        "--weight-decay",
        dest="weight_decay",
        type=float,
        default=None,
        help="AdamW weight decay (default 0.1)",
    )
    a.add_argument("--seed", type=int, default=None, help="base seed (default 0)")
    j = parser.add_argument_group("judging success")
    j.add_argument(
        "--sample-steps",
        dest="sample_steps",
        type=int,
        default=None,
        help="denoising steps of the check generations (default 50)",
    )
    j.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance (default 7.5)"
    )
    j.add_argument(
        "--threshold", type=float, default=None, help="copy cosine threshold (default 0.5)"
    )
    j.add_argument(
        "--copy-model",
        dest="copy_model",
        default=None,
        help="copy descriptor: sscd (default), sscd_distilled, or a .onnx/TorchScript path",
    )
    j.add_argument(
        "--copy-size",
        dest="copy_size",
        type=int,
        default=None,
        help="side the copy descriptor sees (default 224; use the generation size, e.g. 64, "
        "for tiny-sd: its VAE's own reconstructions score < 0.5 at 224)",
    )
    parser.add_argument(
        "--device", default=None, help="auto (default: cuda when available), cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--torch-threads",
        dest="torch_threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice)",
    )


def read_rows(path: str) -> list[dict[str, Any]]:
    """The prompt file as ``reproduce`` reads it, plus each row's optional ``seed``,
    ``reference`` and ``target_prompt`` (``.jsonl`` and ``.csv`` only)."""
    import csv
    import json

    from audit.errors import InputError
    from audit.prompts import read_prompt_file

    prompts = read_prompt_file(path)
    p = Path(path)
    extras: list[dict[str, Any]] = [{} for _ in prompts]
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        raw = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        extras = [r if isinstance(r, dict) else {} for r in raw]
    elif suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            extras = list(csv.DictReader(fh))
    rows = []
    for i, (pr, ex) in enumerate(zip(prompts, extras)):
        seed = ex.get("seed")
        if seed not in (None, ""):
            try:
                seed = int(seed)
            except (TypeError, ValueError):
                raise InputError(
                    f"{p}: row {i + 1}: seed must be an integer, got {seed!r}"
                ) from None
        rows.append(
            {
                "prompt": pr.prompt,
                "finding_id": pr.finding_id,
                "prompt_kind": pr.prompt_kind,
                "seed": None if seed in (None, "") else seed,
                "reference": ex.get("reference") or None,
                "target_prompt": ex.get("target_prompt") or None,
            }
        )
    return rows


def check_reference(spec: str) -> None:
    """Fail early (before any model is loaded) on a reference that cannot be loaded."""
    from audit.errors import InputError

    if spec.startswith("work:"):
        from audit.testbed.draw import WORKS

        if spec.split(":", 1)[1] not in WORKS:
            raise InputError(f"reference {spec!r}: unknown work; known: {', '.join(WORKS)}")
    elif not Path(spec).is_file():
        raise InputError(f"reference image not found: {spec} (or use work:ID)")


def load_reference(spec: str, size: tuple[int, int]) -> Any:
    """``work:ID`` (a canonical SynthLAION work at ``size``) or an image file, as RGB PIL."""
    from audit.errors import InputError

    if spec.startswith("work:"):
        from audit.testbed.draw import WORKS, draw_work

        wid = spec.split(":", 1)[1]
        if wid not in WORKS:
            raise InputError(f"reference {spec!r}: unknown work; known: {', '.join(WORKS)}")
        img = draw_work(wid, size=max(size))
        return img.resize((size[1], size[0])) if size[0] != size[1] else img
    from pipelines.decode import DecodeError, decode_image

    p = Path(spec)
    if not p.is_file():
        raise InputError(f"reference image not found: {spec} (or use work:ID)")
    try:
        return decode_image(p.read_bytes()).image
    except DecodeError as exc:
        raise InputError(f"reference {spec}: not a usable image ({exc})") from exc


def run(cfg: Config, args: argparse.Namespace) -> int:
    import json
    import time

    from audit import __version__
    from audit.errors import InputError
    from audit.log import progress
    from audit.mitigations.attack import (
        ATTACK_KIND_SUFFIX,
        REFERENCE,
        AttackSettings,
        attack_success_rate,
        attacker,
    )
    from audit.models import ModelError, load_copy_detector
    from audit.stages.erase import load_pipeline
    from audit.stages.reproduce import resolve_device

    t_wall, t_cpu = time.perf_counter(), time.process_time()
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    rows = read_rows(cfg.prompts)
    vocabulary = None
    if cfg.vocabulary:
        vp = Path(cfg.vocabulary)
        if not vp.is_file():
            raise InputError(f"vocabulary file not found: {vp}")
        vocabulary = sorted(set(re.findall(r"[a-z]+", vp.read_text(encoding="utf-8").lower())))
        if len(vocabulary) < 2:
            raise InputError(f"{vp}: needs at least 2 words")
    if cfg.limit:
        rows = rows[: cfg.limit]
    for spec in {cfg.reference, *(r["reference"] for r in rows)} - {"", None}:
        check_reference(spec)
    device = resolve_device(cfg.device)
    erased = load_pipeline(cfg.generator, device, "--generator")
    original = (
        erased
        if cfg.original == cfg.generator
        else load_pipeline(cfg.original, device, "--original")
    )
    try:
        detector = load_copy_detector(cfg.copy_model, size=cfg.copy_size, device=device)
    except ModelError as exc:
        raise InputError(f"--copy-model {cfg.copy_model}: {exc}") from exc
    settings = AttackSettings(
        tokens=cfg.tokens,
        relax=cfg.relax,
        iterations=cfg.iterations,
        timesteps=cfg.timesteps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        sample_steps=cfg.sample_steps,
        guidance=cfg.guidance,
        threshold=cfg.threshold,
        device=device,
    )
    results = []
    out_rows = []
    refs: dict[str, Any] = {}
    with attacker(erased, original, detector, settings, vocabulary) as atk:
        n_candidates = len(atk.cand)
        for i, row in enumerate(progress(rows, desc="attack", total=len(rows), unit="prompt")):
            spec = row["reference"] or cfg.reference or None
            if spec and spec not in refs:
                refs[spec] = load_reference(spec, atk.size)
            seed = row["seed"] if row["seed"] is not None else cfg.seed + i
            res = atk.attack(row["prompt"], seed, refs.get(spec), row["target_prompt"])
            results.append(res)
            logger.info(
                "%d/%d %s: %r -> %r (similarity %.3f -> %.3f, %d steps)",
                i + 1,
                len(rows),
                "success" if res.success else "failed",
                row["prompt"][:50],
                res.prompt[:60],
                res.similarity_before,
                res.similarity,
                res.steps,
            )
            d = res.to_dict()
            d.pop("losses")
            out_rows.append(
                {
                    "prompt": res.prompt,
                    "finding_id": row["finding_id"],
                    "prompt_kind": row["prompt_kind"] + ATTACK_KIND_SUFFIX,
                    **{k: v for k, v in d.items() if k != "prompt"},
                    "reference": spec,
                    "target_prompt": row["target_prompt"],
                }
            )
    asr = attack_success_rate(results)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in out_rows), encoding="utf-8")
    tmp.replace(out)
    summary = {
        "kind": "unlearndiffatk",
        "reference": REFERENCE,
        "generator": cfg.generator,
        "original": cfg.original,
        "prompts": cfg.prompts,
        "settings": {
            **settings.__dict__,
            "copy_model": cfg.copy_model,
            "copy_size": cfg.copy_size,
            "vocabulary": cfg.vocabulary or None,
            "candidates": n_candidates,
        },
        **asr,
        "seconds": round(time.perf_counter() - t_wall, 3),
        "cpu_seconds": round(time.process_time() - t_cpu, 3),
        "laion_audit": __version__,
    }
    summary_path = out.with_name(out.stem + ".summary.json")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    logger.info(
        "ASR before %.2f [%.2f, %.2f], after %.2f [%.2f, %.2f] over %d prompts -> %s",
        asr["asr_before"],
        *asr["ci_before"],
        asr["asr_after"],
        *asr["ci_after"],
        asr["n"],
        out,
    )
    return 0
