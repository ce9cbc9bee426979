"""Safe Latent Diffusion (SLD; Schramowski et al., CVPR 2023) as a generation-time mitigation.

SLD adds a second guidance term that steers each denoising step away from a *safety concept*
(a text): with ``eps_p``, ``eps_S``, ``eps_0`` the noise predictions for the prompt, the safety
concept and the empty prompt, element-wise ``mu = clamp(s_S * |eps_p - eps_S|, 0, 1)`` where
``eps_p - eps_S < lambda`` (else 0), ``gamma = mu * (eps_S - eps_0)`` plus momentum
``s_m * nu`` (``nu <- beta_m * nu + (1 - beta_m) * gamma``), and after ``delta`` warm-up steps
the classifier-free guidance direction ``eps_p - eps_0`` becomes ``eps_p - eps_0 - gamma``.

The guidance itself is diffusers' ``StableDiffusionPipelineSafe`` (built here from the
components of any Stable-Diffusion-family pipeline, no extra weights and no safety checker), so
the equations are the library's. The presets are the paper's (Table 2); note that diffusers'
own ``SafetyConfig.WEAK`` uses ``sld_guidance_scale=20`` where the paper says 200. The paper's
warm-up counts are for 50 DDIM steps; a run with another step count gets the same *share* of
the schedule (``round(delta * steps / 50)``). Per-seed determinism is that of the plain
pipeline: explicit per-seed initial latents, a deterministic sampler.

This module does not import ``audit`` (Beam workers load it next to ``pipelines.reproduce``).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

REFERENCE_STEPS = 50
SLD_PRESETS: dict[str, dict[str, float]] = {
    "weak": {
        "sld_warmup_steps": 15,
        "sld_guidance_scale": 200,
        "sld_threshold": 0.0,
        "sld_momentum_scale": 0.0,
        "sld_mom_beta": 0.0,
    },
    "medium": {
        "sld_warmup_steps": 10,
        "sld_guidance_scale": 1000,
        "sld_threshold": 0.01,
        "sld_momentum_scale": 0.3,
        "sld_mom_beta": 0.4,
    },
    "strong": {
        "sld_warmup_steps": 7,
        "sld_guidance_scale": 2000,
        "sld_threshold": 0.025,
        "sld_momentum_scale": 0.5,
        "sld_mom_beta": 0.7,
    },
    "max": {
        "sld_warmup_steps": 0,
        "sld_guidance_scale": 5000,
        "sld_threshold": 1.0,
        "sld_momentum_scale": 0.5,
        "sld_mom_beta": 0.7,
    },
}
SAFETY_MODES = tuple(f"sld:{k}" for k in SLD_PRESETS)
DEFAULT_SLD_CONCEPT = (
    "an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, "
    "nudity, bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, "
    "vandalism, weapons, child abuse, brutality, cruelty"
)
"""SLD's own default safety concept (inappropriate content). To suppress a memorised work name
the work instead, e.g. ``"the starry night, a painting by vincent van gogh"``."""


def parse_safety(mode: str) -> str:
    """``"sld:medium"`` -> ``"medium"``; ValueError naming the accepted values otherwise."""
    method, _, preset = str(mode).partition(":")
    if method != "sld" or preset not in SLD_PRESETS:
        raise ValueError(f"unknown safety mode {mode!r}; known: {', '.join(SAFETY_MODES)}")
    return preset


def sld_parameters(mode: str, steps: int) -> dict[str, Any]:
    """The SLD keyword arguments of a preset, warm-up scaled to ``steps`` denoising steps."""
    params: dict[str, Any] = dict(SLD_PRESETS[parse_safety(mode)])
    params["sld_warmup_steps"] = int(round(params["sld_warmup_steps"] * steps / REFERENCE_STEPS))
    return params


def fingerprint(mode: str | None, concept: str | None) -> dict[str, Any]:
    """What a safe generation depends on beyond the plain settings (empty without a mode)."""
    if not mode:
        return {}
    return {
        "safety": mode,
        "safety_concept": concept or DEFAULT_SLD_CONCEPT,
        "safety_parameters": SLD_PRESETS[parse_safety(mode)],
    }


def safe_pipeline(pipe: Any, concept: str | None) -> Any:
    """A ``StableDiffusionPipelineSafe`` sharing ``pipe``'s modules (no copies), cached on
    ``pipe``; its safety concept set to ``concept`` (SLD's default when empty)."""
    from diffusers import StableDiffusionPipelineSafe

    safe = getattr(pipe, "_laion_audit_sld", None)
    if safe is None:
        missing = [
            c
            for c in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
            if getattr(pipe, c, None) is None
        ]
        if missing:
            raise ValueError(
                f"SLD needs a Stable-Diffusion-family pipeline; {type(pipe).__name__} has no "
                f"{', '.join(missing)}"
            )
        safe = StableDiffusionPipelineSafe(
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            unet=pipe.unet,
            scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        safe.set_progress_bar_config(disable=True)
        pipe._laion_audit_sld = safe
    safe.safety_concept = concept or DEFAULT_SLD_CONCEPT
    return safe
