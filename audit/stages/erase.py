"""``laion-audit erase --generator G --concept TEXT --out DIR``: concept erasure (ESD)."""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass

from audit.config import require

logger = logging.getLogger(__name__)

USES_WORKSPACE = False
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

HELP = "erase a concept from a diffusion model (ESD) and save the erased pipeline"
DESCRIPTION = """\
Fine-tunes a Stable-Diffusion-family pipeline so that it stops drawing a concept (a memorised
work, a style, an object), as Erased Stable Diffusion does (Gandikota et al., ICCV 2023): the
UNet's prediction for the concept prompt is trained towards the frozen original's prediction
guided *away* from it, eps(x_t, "") - eta * (eps(x_t, c) - eps(x_t, "")), at points x_t of the
model's own sampling of the concept (DDIM, --ddim-steps, stopped at a random step). No training
data is needed.

Methods (which UNet parameters are trained; the others stay bit-identical):
  esd-x         cross-attention (attn2) only: works, styles, anything tied to the words
  esd-x-strict  cross-attention keys and values only (attn2.to_k, attn2.to_v)
  esd-u         everything but cross-attention, time embedding and output layers: objects

Defaults follow the authors' diffusers code (200 steps, Adam lr 5e-5, eta 2; the paper used
1000 steps, lr 1e-5, eta 1). The shipped tiny-sd tolerates a much larger lr: lr 1e-3 with
eta 1 and 25-50 steps erases a tiny-sd work (benchmarks/bench_unlearning.py). Trained weights
are fp32 (master weights) on every device; on CUDA the forward passes use autocast.

Writes DIR: the erased diffusers pipeline (save_pretrained, safetensors; load it with
--generator DIR in reproduce or attack) and DIR/erase.json (what was erased, the settings, the
trained parameter names, the loss curve, wall and CPU time). Measure what erasure did with
`laion-audit reproduce --generator DIR` and what survives it with `laion-audit attack`.
"""


@dataclass
class Config:
    generator: str = "tiny-sd"
    concept: str = ""
    method: str = "esd-x"
    steps: int = 200
    lr: float = 5e-5
    eta: float = 2.0
    seed: int = 0
    ddim_steps: int = 50
    sample_guidance: float = 3.0
    batch_size: int = 1
    device: str = "auto"
    torch_threads: int = 0
    out: str = ""
    overwrite: bool = False

    def __post_init__(self) -> None:
        from audit.mitigations.esd import METHODS

        s = "erase"
        require(bool(self.generator), f"{s}.generator", "must name a diffusers pipeline", "")
        require(
            bool(self.concept.strip()),
            f"{s}.concept",
            "must name the concept to erase (a prompt, e.g. 'starry night by van gogh')",
            self.concept,
        )
        require(self.method in METHODS, f"{s}.method", f"must be one of {METHODS}", self.method)
        require(self.steps >= 1, f"{s}.steps", "must be >= 1", self.steps)
        require(self.lr > 0, f"{s}.lr", "must be > 0", self.lr)
        require(self.eta >= 0, f"{s}.eta", "must be >= 0", self.eta)
        require(self.ddim_steps >= 1, f"{s}.ddim_steps", "must be >= 1", self.ddim_steps)
        require(self.batch_size >= 1, f"{s}.batch_size", "must be >= 1", self.batch_size)
        require(
            self.sample_guidance >= 0,
            f"{s}.sample_guidance",
            "must be >= 0",
            self.sample_guidance,
        )
        require(
            bool(DEVICE_RE.match(self.device)),
            f"{s}.device",
            "must be auto, cpu, cuda, cuda:N or mps",
            self.device,
        )
        require(self.torch_threads >= 0, f"{s}.torch_threads", "must be >= 0", self.torch_threads)
        require(bool(self.out), f"{s}.out", "needs an output folder (--out DIR)", self.out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--generator",
        default=None,
        metavar="NAME_OR_PATH",
        help="diffusers pipeline to erase from: hub id, local folder, or tiny-sd (default)",
    )
    parser.add_argument("--concept", default=None, help="the concept to erase, as a prompt")
    parser.add_argument(
        "--method",
        default=None,
        choices=("esd-x", "esd-u", "esd-x-strict"),
        help="which parameters are trained (default esd-x)",
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 200)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 5e-5)")
    parser.add_argument(
        "--eta", type=float, default=None, help="negative guidance of the target (default 2)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument(
        "--ddim-steps",
        dest="ddim_steps",
        type=int,
        default=None,
        help="DDIM schedule that x_t is sampled on (default 50)",
    )
    parser.add_argument(
        "--sample-guidance",
        dest="sample_guidance",
        type=float,
        default=None,
        help="classifier-free guidance when sampling x_t (default 3)",
    )
    parser.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        default=None,
        help="noise samples per step (default 1)",
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
    parser.add_argument("--out", default=None, metavar="DIR", help="folder for the erased pipeline")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace DIR if it already holds files",
    )


def load_pipeline(name_or_path: str, device: str, what: str = "--generator") -> object:
    """A Stable-Diffusion-family pipeline in float32, or InputError saying what is wrong."""
    from pathlib import Path

    import torch

    from audit.errors import InputError
    from audit.models import TINY_SD_NAME, ModelError, load_generator

    p = Path(name_or_path)
    if (
        name_or_path != TINY_SD_NAME
        and p.exists()
        and (not p.is_dir() or not (p / "model_index.json").is_file())
    ):
        raise InputError(
            f"{what} {name_or_path}: not a diffusers pipeline folder (no model_index.json)"
        )
    try:
        pipe = load_generator(name_or_path, device=device, dtype=torch.float32)
    except ModelError as exc:
        raise InputError(f"{what} {name_or_path}: {exc}") from exc
    missing = [
        c
        for c in ("unet", "text_encoder", "tokenizer", "vae", "scheduler")
        if getattr(pipe, c, None) is None
    ]
    if missing or not hasattr(pipe, "encode_prompt"):
        raise InputError(
            f"{what} {name_or_path}: {type(pipe).__name__} is not a Stable-Diffusion-family "
            f"pipeline (missing {', '.join(missing) or 'encode_prompt'})"
        )
    return pipe


def prepare_out(out: str, overwrite: bool) -> None:
    """Refuse a non-empty output folder unless ``overwrite``."""
    from pathlib import Path

    from audit.config import ConfigError

    p = Path(out)
    if p.exists() and (not p.is_dir() or any(p.iterdir())) and not overwrite:
        raise ConfigError(f"erase.out: {p} exists and is not empty (pass --overwrite)")


def save(pipe: object, out: str, card: dict) -> None:
    """Write the pipeline (safetensors) and ``erase.json`` into a temporary folder next to
    ``out``, then move it into place, so a crash never leaves a half-written pipeline."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    dst = Path(out).resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "erase.json").write_text(json.dumps(card, indent=2) + "\n")
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit import __version__
    from audit.log import progress
    from audit.mitigations import esd
    from audit.stages.reproduce import resolve_device

    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    prepare_out(cfg.out, cfg.overwrite)
    device = resolve_device(cfg.device)
    pipe = load_pipeline(cfg.generator, device)
    settings = esd.ESDSettings(
        method=cfg.method,
        steps=cfg.steps,
        lr=cfg.lr,
        eta=cfg.eta,
        seed=cfg.seed,
        ddim_steps=cfg.ddim_steps,
        sample_guidance=cfg.sample_guidance,
        batch_size=cfg.batch_size,
        device=device,
    )
    logger.info(
        "erasing %r from %s with %s: %d steps, lr %g, eta %g, seed %d, %s",
        cfg.concept,
        cfg.generator,
        cfg.method,
        cfg.steps,
        cfg.lr,
        cfg.eta,
        cfg.seed,
        device,
    )
    result = esd.erase_concept(
        pipe,
        cfg.concept,
        settings,
        progress=lambda it: progress(it, desc=f"{cfg.method} steps", total=cfg.steps),
    )
    card = esd.card(cfg.concept, cfg.generator, settings, result, __version__)
    save(pipe, cfg.out, card)
    logger.info(
        "erased pipeline in %s: %d parameters trained (%d values), loss %.5f -> %.5f, "
        "%.1f s (%.1f s CPU)",
        cfg.out,
        len(result.trained),
        result.n_trained_values,
        card["loss_first"],
        card["loss_last_mean"],
        result.seconds,
        result.cpu_seconds,
    )
    return 0
