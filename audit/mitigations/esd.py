"""Erased Stable Diffusion (ESD; Gandikota et al., ICCV 2023): fine-tune a text-to-image UNet so
that it no longer draws a concept, with the frozen original as teacher and no training data.

For a concept prompt ``c`` the fine-tuned UNet ``eps*`` is trained towards the *negatively
guided* prediction of the original ``eps``::

    eps*(x_t, c, t)  ->  eps(x_t, "", t) - eta * (eps(x_t, c, t) - eps(x_t, "", t))

where ``x_t`` comes from the model's own sampling for ``c``: DDIM from pure noise (guidance
``sample_guidance``, with the model being trained, as the official code does) stopped at a
random step of a ``ddim_steps`` schedule. Which parameters are trained decides what is erased:

============== =====================================================================
``esd-x``       cross-attention only (``attn2``): styles and works tied to the prompt
``esd-x-strict`` cross-attention keys and values only (``attn2.to_k``, ``attn2.to_v``)
``esd-u``       everything except cross-attention, the time embedding and the output
                layers (the paper's "noxattn"): objects, prompt-independent erasure
============== =====================================================================

Settings from the paper: 1,000 steps, Adam lr 1e-5, eta 1; the authors' later diffusers code:
200 steps, lr 5e-5, eta 2 (the defaults here). A tiny model needs its own lr and steps
(``benchmarks/bench_unlearning.py`` measures them on tiny-sd).

Determinism: every random draw (stop step, noise) comes from one CPU ``torch.Generator`` seeded
with ``seed``; the same seed, settings, device and thread count give identical weights.
On CUDA the trained weights stay fp32 (master weights) and the forward passes run under autocast
(bf16 where supported, else fp16 with a gradient scaler); the frozen teacher is kept in the
autocast dtype to halve its memory.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

METHODS = ("esd-x", "esd-u", "esd-x-strict")
REFERENCE = "Gandikota et al., Erasing Concepts from Diffusion Models, ICCV 2023"


@dataclass(frozen=True)
class ESDSettings:
    """How to erase. ``eta`` is the negative guidance scale of the training target."""

    method: str = "esd-x"
    steps: int = 200
    lr: float = 5e-5
    eta: float = 2.0
    seed: int = 0
    ddim_steps: int = 50
    sample_guidance: float = 3.0
    batch_size: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown ESD method {self.method!r}; known: {', '.join(METHODS)}")
        if self.steps < 1 or self.ddim_steps < 1 or self.batch_size < 1:
            raise ValueError("steps, ddim_steps and batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0 (got {self.lr})")


def is_trained(name: str, method: str) -> bool:
    """Whether UNet parameter ``name`` (diffusers naming) is fine-tuned by ``method``."""
    if method == "esd-x":
        return ".attn2." in f".{name}"
    if method == "esd-x-strict":
        return ".attn2.to_k." in f".{name}" or ".attn2.to_v." in f".{name}"
    if method == "esd-u":
        top = name.split(".", 1)[0]
        return not (
            ".attn2." in f".{name}" or top in ("time_embedding", "conv_out", "conv_norm_out")
        )
    raise ValueError(f"unknown ESD method {method!r}; known: {', '.join(METHODS)}")


def trained_parameter_names(unet: Any, method: str) -> list[str]:
    """The UNet parameters ``method`` fine-tunes (the rest stay bit-identical)."""
    return [n for n, _ in unet.named_parameters() if is_trained(n, method)]


@dataclass
class ESDResult:
    """What a run did: per-step loss, timings, and which parameters were trained."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    trained: list[str] = field(default_factory=list)
    n_trained_values: int = 0
    amp_dtype: str | None = None
    resumed_from: int = 0  # the step a checkpoint resumed from (0: from the start)


@dataclass
class Checkpoint:
    """Where an ESD run keeps its resumable state (one ``torch.save`` file, written atomically:
    the trained parameters, Adam's state, the random generator, the losses so far), saved every
    ``every`` steps and used only by a run of the same concept, settings and ``generator``."""

    path: Any  # str | Path
    every: int = 25
    generator: str = ""

    def _key(self, concept: str, settings: ESDSettings) -> dict[str, Any]:
        s = asdict(settings)
        s.pop("device", None)  # a CPU state resumes on CUDA and back
        return {"concept": concept, "settings": s, "generator": self.generator}

    def load(self, concept: str, settings: ESDSettings) -> dict[str, Any] | None:
        from pathlib import Path

        import torch

        p = Path(self.path)
        if not p.is_file():
            return None
        try:
            state = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a broken checkpoint means starting afresh
            logger.warning("ignoring unreadable ESD checkpoint %s: %s", p, exc)
            return None
        if state.get("key") != self._key(concept, settings):
            logger.info("ESD checkpoint %s is for another concept or settings: starting afresh", p)
            return None
        return state

    def save(self, concept: str, settings: ESDSettings, state: dict[str, Any]) -> None:
        import os
        import tempfile
        from pathlib import Path

        import torch

        p = Path(self.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
        os.close(fd)
        try:
            torch.save({"key": self._key(concept, settings), **state}, tmp)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        from pathlib import Path

        Path(self.path).unlink(missing_ok=True)


def _amp(device: str) -> tuple[Any, bool]:
    """(autocast dtype or None, whether a GradScaler is needed) for ``device``."""
    import torch

    if not device.startswith("cuda"):
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def erase_concept(
    pipe: Any,
    concept: str,
    settings: ESDSettings,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    checkpoint: Checkpoint | None = None,
) -> ESDResult:
    """Fine-tune ``pipe.unet`` in place so that it stops drawing ``concept``.

    ``pipe`` is a Stable-Diffusion-family diffusers pipeline (``unet``, ``text_encoder``,
    ``tokenizer``, ``scheduler``, ``encode_prompt``) in float32 on ``settings.device``.
    ``progress`` wraps the range of the steps still to run (e.g. a tqdm bar). With
    ``checkpoint`` the run saves its state every ``checkpoint.every`` steps and starts from a
    saved state of the same concept and settings: an interrupted run resumes where it stopped
    and ends with the weights an uninterrupted run has. Returns the loss curve and timings.
    """
    import contextlib

    import torch
    from diffusers import DDIMScheduler

    if not concept.strip():
        raise ValueError("concept must not be empty")
    if pipe.unet.dtype != torch.float32:
        raise ValueError(f"ESD trains fp32 master weights; the UNet is {pipe.unet.dtype}")
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    dev = settings.device
    unet = pipe.unet
    amp_dtype, use_scaler = _amp(dev)
    teacher = copy.deepcopy(unet).requires_grad_(False).eval()
    if amp_dtype is not None:
        teacher = teacher.to(dtype=amp_dtype)
    names = set(trained_parameter_names(unet, settings.method))
    unet.requires_grad_(False)
    params = []
    for n, p in unet.named_parameters():
        if n in names:
            p.requires_grad_(True)
            params.append(p)
    if not params:
        raise ValueError(f"{settings.method}: this UNet has no parameters to train")
    unet.train()
    opt = torch.optim.Adam(params, lr=settings.lr)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(settings.ddim_steps, device=dev)
    timesteps = sched.timesteps
    gen = torch.Generator("cpu").manual_seed(int(settings.seed))
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(
            concept, dev, settings.batch_size, True, negative_prompt=""
        )
    cond, uncond = cond.float(), uncond.float()
    s = unet.config.sample_size
    s = int(s[0] if isinstance(s, (list, tuple)) else s)
    shape = (settings.batch_size, int(unet.config.in_channels), s, s)

    def autocast() -> Any:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=amp_dtype)

    result = ESDResult(
        trained=sorted(names),
        n_trained_values=sum(p.numel() for p in params),
        amp_dtype=None if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
    )
    first = 0
    if checkpoint is not None:
        state = checkpoint.load(concept, settings)
        if state is not None:
            with torch.no_grad():
                named = dict(unet.named_parameters())
                for n, v in state["params"].items():
                    named[n].copy_(v.to(named[n].device))
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            result.losses = list(state["losses"])
            first = int(state["step"])
            result.resumed_from = first
            logger.info("resuming %r from step %d of %d", concept, first, settings.steps)
    steps: Iterable[int] = range(first, settings.steps)
    if progress is not None:
        steps = progress(steps)
    every = max(1, settings.steps // 10)
    for step in steps:
        stop = int(torch.randint(0, len(timesteps), (1,), generator=gen))
        z = torch.randn(shape, generator=gen).to(dev) * float(sched.init_noise_sigma)
        with torch.no_grad(), autocast():
            for t in timesteps[:stop]:  # the model's own sampling of the concept, up to t
                x_in = sched.scale_model_input(torch.cat([z, z]), t)
                e_u, e_c = (
                    unet(x_in, t, encoder_hidden_states=torch.cat([uncond, cond]))
                    .sample.float()
                    .chunk(2)
                )
                z = sched.step(e_u + settings.sample_guidance * (e_c - e_u), t, z).prev_sample
            t = timesteps[stop]
            x_in = sched.scale_model_input(torch.cat([z, z]), t)
            x_t = x_in.to(teacher.dtype)
            e_0, e_p = (
                teacher(x_t, t, encoder_hidden_states=torch.cat([uncond, cond]).to(teacher.dtype))
                .sample.float()
                .chunk(2)
            )
            target = e_0 - settings.eta * (e_p - e_0)
        with autocast():
            e_n = unet(sched.scale_model_input(z, t), t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(e_n.float(), target)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        result.losses.append(float(loss.detach()))
        if (
            checkpoint is not None
            and (step + 1) % checkpoint.every == 0
            and step + 1 < settings.steps
        ):
            checkpoint.save(
                concept,
                settings,
                {
                    "step": step + 1,
                    "params": {
                        n: p.detach().cpu().clone()
                        for n, p in unet.named_parameters()
                        if n in names
                    },
                    "optimizer": opt.state_dict(),
                    "generator": gen.get_state(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "losses": list(result.losses),
                },
            )
        if (step + 1) % every == 0 or step + 1 == settings.steps:
            recent = result.losses[-every:]
            logger.debug(
                "ESD step %d/%d: loss %.5f (mean of last %d)",
                step + 1,
                settings.steps,
                sum(recent) / len(recent),
                len(recent),
            )
    unet.requires_grad_(False).eval()
    del teacher
    result.seconds = time.perf_counter() - t_wall
    result.cpu_seconds = time.process_time() - t_cpu
    return result


def card(
    concept: str, generator: str, settings: ESDSettings, result: ESDResult, version: str
) -> dict[str, Any]:
    """The ``erase.json`` card written next to the erased pipeline."""
    import torch

    return {
        "kind": "concept_erasure",
        "method": settings.method,
        "reference": REFERENCE,
        "concept": concept,
        "generator": generator,
        "settings": asdict(settings),
        "trained_parameters": result.trained,
        "n_trained_parameters": len(result.trained),
        "n_trained_values": result.n_trained_values,
        "master_weights": "float32",
        "autocast_dtype": result.amp_dtype,
        "loss_curve": [round(v, 6) for v in result.losses],
        "resumed_from_step": result.resumed_from or None,
        "loss_first": result.losses[0] if result.losses else None,
        "loss_last_mean": (
            sum(result.losses[-10:]) / len(result.losses[-10:]) if result.losses else None
        ),
        "seconds": round(result.seconds, 3),
        "cpu_seconds": round(result.cpu_seconds, 3),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "laion_audit": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
