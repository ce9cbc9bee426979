"""Clean-label, Nightshade-style poisons: PGD under an L-infinity pixel budget.

A poison starts as a correct image of concept A (its caption still says A). Projected gradient
descent moves its CLIP image embedding toward the embedding of one *anchor* image of concept B
(Nightshade uses a single anchor per target concept), while every pixel stays within ``eps`` of
the original (L-infinity, in [0, 1] units; the default 8/255 is about what Nightshade uses).

The model's preprocessing is re-implemented with differentiable torch ops (resize with
antialiasing, centre crop, mean/std normalisation, read from the open_clip transform) so the
attack sees what the embedding stage sees. When the poison will be served as JPEG, the second
half of the steps runs the real JPEG round trip (PIL, same quality and chroma subsampling) in the
forward pass with a straight-through gradient (BPDA), so the perturbation that survives the
encoding is the one that was optimised. The result is rounded to uint8 pixels; nothing else is
dropped. All randomness is fixed: the attack has no random start.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

NAME = "pgd_linf_anchor_v1"


@dataclass(frozen=True)
class JpegSpec:
    """How a poison will be encoded: PIL JPEG ``quality`` and ``subsampling`` (0 = 4:4:4)."""

    quality: int = 95
    subsampling: int = 0

    def encode(self, img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(
            buf,
            "JPEG",
            quality=self.quality,
            subsampling=self.subsampling,
            optimize=False,
            progressive=False,
        )
        return buf.getvalue()

    def roundtrip(self, img: Image.Image) -> Image.Image:
        return Image.open(io.BytesIO(self.encode(img))).convert("RGB")


def _preprocess_params(
    preprocess: Any, model: Any
) -> tuple[int, tuple[float, ...], tuple[float, ...], str]:
    """(image_size, mean, std, interpolation) of an open_clip inference transform."""
    size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interp = "bicubic"
    for t in getattr(preprocess, "transforms", []):
        name = type(t).__name__
        if name == "Resize":
            s = t.size
            size = int(s if isinstance(s, int) else s[0])
            interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
        elif name == "CenterCrop":
            s = t.size
            size = int(s if isinstance(s, int) else s[0])
        elif name == "Normalize":
            mean, std = tuple(map(float, t.mean)), tuple(map(float, t.std))
    if size is None:
        vs = getattr(model.visual, "image_size", None)
        size = int(vs if isinstance(vs, int) else vs[0]) if vs is not None else None
    if size is None or mean is None or std is None:
        raise ValueError(f"cannot read image size / mean / std from the preprocess {preprocess!r}")
    if interp not in ("bicubic", "bilinear", "nearest"):
        interp = "bicubic"
    return size, mean, std, interp


class _Differentiable:
    """open_clip's inference preprocessing as torch ops on (B, 3, H, W) tensors in [0, 1]."""

    def __init__(self, model: Any, preprocess: Any, device: str) -> None:
        import torch

        self.size, mean, std, self.mode = _preprocess_params(preprocess, model)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.model = model

    def embed(self, x: Any) -> Any:
        import torch
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        s = self.size
        if min(h, w) != s:  # resize the shorter side to s (open_clip's "shortest" mode)
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            kw = {"align_corners": False} if self.mode != "nearest" else {}
            x = F.interpolate(
                x, size=(nh, nw), mode=self.mode, antialias=self.mode != "nearest", **kw
            )
            h, w = nh, nw
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top : top + s, left : left + s]
        x = (x - self.mean) / self.std
        f = self.model.encode_image(x)
        return torch.nn.functional.normalize(f.float(), dim=-1)


def _to_tensor(images: Sequence[Image.Image], device: str) -> Any:
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(device)


def _to_pil(x: Any) -> list[Image.Image]:
    arr = x.detach().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


def pgd_toward_anchors(
    model: Any,
    preprocess: Any,
    images: Sequence[Image.Image],
    anchors: Sequence[Image.Image],
    *,
    eps: float = 8 / 255,
    steps: int = 40,
    step_size: float | None = None,
    jpeg: JpegSpec | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    threads: int | None = 1,
) -> list[Image.Image]:
    """Perturb each ``images[i]`` (RGB, any size) within an L-infinity ball of radius ``eps``
    so that its image embedding moves toward ``anchors[i]``'s. Returns uint8 RGB images of the
    same sizes. ``jpeg``: optimise through that JPEG encoding for the second half of the steps.
    Images of different sizes are attacked in separate batches. ``threads``: torch CPU threads
    during the attack (restored after); fixed by default so the rounded pixels do not depend on
    the machine's core count (and one thread is fastest for tiny models on a busy machine).
    """
    import torch

    if len(images) != len(anchors):
        raise ValueError(f"{len(images)} images but {len(anchors)} anchors")
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1] (got {eps})")
    if steps < 1:
        raise ValueError(f"steps must be >= 1 (got {steps})")
    alpha = step_size if step_size is not None else max(eps / 8, 1.5 / 255)
    diff = _Differentiable(model, preprocess, device)
    out: list[Image.Image | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(im.size, []).append(i)
    was_training = model.training
    model.eval()
    params = list(model.parameters())
    grad_flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    old_threads = torch.get_num_threads()
    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    try:
        for idx_all in by_size.values():
            for b in range(0, len(idx_all), batch_size):
                idx = idx_all[b : b + batch_size]
                x0 = _to_tensor([images[i] for i in idx], device)
                with torch.no_grad():
                    target = diff.embed(_to_tensor([anchors[i] for i in idx], device))
                x = x0.clone()
                for step in range(steps):
                    x.requires_grad_(True)
                    xin = x
                    if jpeg is not None and step >= steps // 2:
                        q = _to_tensor([jpeg.roundtrip(im) for im in _to_pil(x)], device)
                        xin = x + (q - x).detach()  # straight-through: JPEG forward, identity grad
                    sim = (diff.embed(xin) * target).sum(dim=-1)
                    (grad,) = torch.autograd.grad(sim.sum(), x)
                    with torch.no_grad():
                        x = x + alpha * grad.sign()
                        x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)
                # round to pixels, then make sure rounding did not leave the budget
                xq = x.detach().mul(255).round().div(255)
                xq = torch.minimum(torch.maximum(xq, x0 - eps), x0 + eps)
                for j, im in zip(idx, _to_pil(xq), strict=True):
                    out[j] = im
    finally:
        torch.set_num_threads(old_threads)
        for p, flag in zip(params, grad_flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return [im for im in out if im is not None]


def anchor_similarity(
    model: Any,
    preprocess: Any,
    images: Sequence[Image.Image],
    anchors: Sequence[Image.Image],
    device: str = "cpu",
) -> np.ndarray:
    """Cosine between each image's embedding and its anchor's, through the real preprocess."""
    from audit.models import encode_images

    a = encode_images(model, preprocess, list(images), device=device)
    b = encode_images(model, preprocess, list(anchors), device=device)
    return (a * b).sum(axis=1)


# ---- poisons aimed at the generator: its VAE encoder's latent -----------------------------------

GENERATOR_METHOD = "pgd_linf_vae_latent_v1"
"""Nightshade- and Glaze-style poisons: PGD under an L-infinity pixel budget that moves the
latent a text-to-image model trains on (its VAE encoder's posterior mean) toward a target
image's latent."""


def load_vae(name_or_path: str = "tiny-sd", device: str = "cpu") -> Any:
    """The VAE (``AutoencoderKL``, fp32, eval mode, frozen) of a diffusers text-to-image
    pipeline folder (``model_index.json`` + ``vae/``), or of the shipped ``tiny-sd``. Weights
    are read from safetensors only."""
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKL

    from audit.models import TINY_SD_DIR, TINY_SD_NAME, ModelError

    path = TINY_SD_DIR if name_or_path == TINY_SD_NAME else Path(name_or_path)
    if not (path / "vae" / "config.json").is_file():
        raise ModelError(
            f"{name_or_path!r} is not a diffusers pipeline folder with a vae/ (no "
            f"{path / 'vae' / 'config.json'})"
        )
    try:
        vae = AutoencoderKL.from_pretrained(
            str(path), subfolder="vae", use_safetensors=True, torch_dtype=torch.float32
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the VAE of {name_or_path!r}: {e}") from e
    vae = vae.to(device).eval()
    vae.requires_grad_(False)
    return vae


def vae_latents(vae: Any, x: Any) -> Any:
    """Posterior mean of ``vae`` for (B, 3, H, W) images in [0, 1] (unscaled latents)."""
    return vae.encode(x * 2 - 1).latent_dist.mean


def latent_distances(
    vae: Any,
    images: Sequence[Image.Image],
    targets: Sequence[Image.Image],
    device: str = "cpu",
    batch_size: int = 64,
) -> np.ndarray:
    """L2 distance between each image's VAE latent and its target's (same sizes per pair)."""
    import torch

    out = []
    with torch.no_grad():
        for b in range(0, len(images), batch_size):
            za = vae_latents(vae, _to_tensor(list(images[b : b + batch_size]), device))
            zb = vae_latents(vae, _to_tensor(list(targets[b : b + batch_size]), device))
            out.append((za - zb).flatten(1).norm(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def pgd_toward_latents(
    vae: Any,
    images: Sequence[Image.Image],
    targets: Sequence[Image.Image],
    *,
    eps: float = 16 / 255,
    steps: int = 100,
    step_size: float | None = None,
    jpeg: JpegSpec | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    threads: int | None = 1,
) -> list[Image.Image]:
    """Perturb each ``images[i]`` within an L-infinity ball of radius ``eps`` so that its VAE
    latent (posterior mean) moves toward ``targets[i]``'s: minimise the squared L2 distance
    by signed-gradient steps of ``step_size`` (default ``eps / 10``). ``targets[i]`` must have
    the size of ``images[i]``. Nightshade (target: an image of another concept) and Glaze
    (target: the same picture in another style) are this attack with different targets.

    ``jpeg``: the second half of the steps optimises through that JPEG round trip
    (straight-through gradient), as :func:`pgd_toward_anchors` does. Returns uint8 RGB images;
    deterministic (no random start; ``threads`` fixes torch's CPU threads during the attack).
    """
    import torch

    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1] (got {eps})")
    if steps < 1:
        raise ValueError(f"steps must be >= 1 (got {steps})")
    for i, (a, b) in enumerate(zip(images, targets, strict=True)):
        if a.size != b.size:
            raise ValueError(f"image {i} is {a.size} but its target is {b.size}")
    alpha = step_size if step_size is not None else eps / 10
    out: list[Image.Image | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(im.size, []).append(i)
    old_threads = torch.get_num_threads()
    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    try:
        for idx_all in by_size.values():
            for b in range(0, len(idx_all), batch_size):
                idx = idx_all[b : b + batch_size]
                x0 = _to_tensor([images[i] for i in idx], device)
                with torch.no_grad():
                    target = vae_latents(vae, _to_tensor([targets[i] for i in idx], device))
                x = x0.clone()
                for step in range(steps):
                    x.requires_grad_(True)
                    xin = x
                    if jpeg is not None and step >= steps // 2:
                        q = _to_tensor([jpeg.roundtrip(im) for im in _to_pil(x)], device)
                        xin = x + (q - x).detach()  # straight-through: JPEG forward, identity grad
                    loss = (vae_latents(vae, xin) - target).pow(2).sum()
                    (grad,) = torch.autograd.grad(loss, x)
                    with torch.no_grad():
                        x = x - alpha * grad.sign()
                        x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)
                xq = x.detach().mul(255).round().div(255)
                xq = torch.minimum(torch.maximum(xq, x0 - eps), x0 + eps)
                for j, im in zip(idx, _to_pil(xq), strict=True):
                    out[j] = im
    finally:
        torch.set_num_threads(old_threads)
    return [im for im in out if im is not None]
