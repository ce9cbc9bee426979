"""``laion-audit erase --generator G --concept TEXT --out DIR``: concept erasure (ESD)."""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass

from audit.config import Options, add_options, option, require
from audit.mitigations.pipeline_io import (
    checkpoint_path,
    load_pipeline,
    prepare_out,
    resolve_device,
    save,
)

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


def _methods() -> tuple[str, ...]:
    from audit.mitigations.esd import METHODS

    return tuple(METHODS)


@dataclass
class Config(Options):
    generator: str = option(
        "tiny-sd",
        help="diffusers pipeline to erase from: hub id, local folder, or tiny-sd (the shipped "
        "offline model)",
        metavar="NAME_OR_PATH",
    )
    concept: str = option(
        "",
        help="the concept to erase, as a prompt (e.g. 'starry night by van gogh')",
        metavar="TEXT",
        default_help="none; required",
    )
    method: str = option("esd-x", help="which UNet parameters are trained", choices=_methods)
    steps: int = option(200, help="training steps", ge=1)
    lr: float = option(5e-5, help="Adam learning rate", gt=0)
    eta: float = option(2.0, help="negative guidance of the target", ge=0)
    seed: int = option(0, help="random seed")
    ddim_steps: int = option(50, help="DDIM schedule that x_t is sampled on", ge=1)
    sample_guidance: float = option(3.0, help="classifier-free guidance when sampling x_t", ge=0)
    batch_size: int = option(1, help="noise samples per step", ge=1)
    device: str = option(
        "auto", help="auto (cuda when available), cpu, cuda, cuda:N or mps", metavar="DEVICE"
    )
    torch_threads: int = option(
        0, help="torch CPU threads", ge=0, default_help="torch's choice", metavar="N"
    )
    checkpoint_every: int = option(
        50,
        help="save the training state every N steps next to DIR (.DIR.esd-checkpoint.pt): a "
        "rerun after an interruption resumes there and ends with the same weights; 0 = never",
        ge=0,
    )
    out: str = option(
        "", help="folder for the erased pipeline", metavar="DIR", default_help="none; required"
    )
    overwrite: bool = option(False, help="replace DIR if it already holds files")

    def check(self) -> None:
        s = "erase"
        require(bool(self.generator), f"{s}.generator", "must name a diffusers pipeline", "")
        require(
            bool(self.concept.strip()),
            f"{s}.concept",
            "must name the concept to erase (a prompt, e.g. 'starry night by van gogh')",
            self.concept,
        )
        require(
            bool(DEVICE_RE.match(self.device)),
            f"{s}.device",
            "must be auto, cpu, cuda, cuda:N or mps",
            self.device,
        )
        require(bool(self.out), f"{s}.out", "needs an output folder (--out DIR)", self.out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, Config)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit import __version__
    from audit.log import progress
    from audit.mitigations import esd

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
    ckpt = None
    if cfg.checkpoint_every:
        ckpt = esd.Checkpoint(checkpoint_path(cfg.out), cfg.checkpoint_every, cfg.generator)
    result = esd.erase_concept(
        pipe,
        cfg.concept,
        settings,
        progress=lambda it: progress(it, desc=f"{cfg.method} steps", total=cfg.steps),
        checkpoint=ckpt,
    )
    card = esd.card(cfg.concept, cfg.generator, settings, result, __version__)
    save(pipe, cfg.out, card)
    if ckpt is not None:
        ckpt.clear()
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
