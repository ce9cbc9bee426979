"""Model loading and embedding helpers: open_clip for embeddings, diffusers for generation.

The project ships two tiny models trained on its own SynthLAION testbed (see
``audit/training``), loaded through exactly the same library calls as real checkpoints:

- ``load_clip("tiny-synth")`` registers the shipped open_clip config and calls
  ``open_clip.create_model_and_transforms("tiny-synth", pretrained=<shipped safetensors>)``;
  any other name goes straight to open_clip (e.g. ``load_clip("ViT-B-32", "laion2b_s34b_b79k")``
  or a local checkpoint path as ``pretrained``).
- ``load_generator("tiny-sd")`` calls ``DiffusionPipeline.from_pretrained(<shipped folder>)``;
  anything else is passed to ``from_pretrained`` as a hub id or local path.

Heavy imports (torch, open_clip, diffusers) happen inside the functions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_CLIP_NAME = "tiny-synth"
TINY_CLIP_DIR = ASSETS / "tiny-synth"
TINY_CLIP_WEIGHTS = TINY_CLIP_DIR / "open_clip_model.safetensors"
TINY_CLIP_CONFIG = TINY_CLIP_DIR / "tiny-synth.json"
TINY_SD_NAME = "tiny-sd"
TINY_SD_DIR = ASSETS / "tiny-sd"


class ModelError(RuntimeError):
    """A model could not be found or loaded (message says which file or name)."""


def register_tiny_synth(config_path: str | Path | None = None) -> str:
    """Register the ``tiny-synth`` open_clip config file with open_clip (``add_model_config``)
    and return the model name. A no-op when the same config is already registered."""
    import open_clip

    path = Path(config_path) if config_path else TINY_CLIP_CONFIG
    if not path.is_file():
        raise ModelError(
            f"tiny-synth config not found at {path}; the package data is missing "
            "(reinstall, or retrain with `python -m audit.training.train_tiny_clip`)"
        )
    if open_clip.get_model_config(TINY_CLIP_NAME) != json.loads(path.read_text()):
        open_clip.add_model_config(path)
    return TINY_CLIP_NAME


def _tiny_config_for(pretrained: str | None) -> Path:
    """The config that belongs to tiny-synth weights: ``tiny-synth.json`` next to a retrained
    weights file if there is one, else the shipped config."""
    if pretrained:
        local = Path(pretrained).parent / TINY_CLIP_CONFIG.name
        if local.is_file():
            return local
    return TINY_CLIP_CONFIG


def image_transform_for(model_cfg: dict[str, Any]):
    """open_clip's inference transform for a model config (what create_model_and_transforms
    returns for a model with default preprocessing: bicubic resize, centre crop, OpenAI
    mean/std)."""
    import open_clip

    return open_clip.image_transform(model_cfg["vision_cfg"]["image_size"], is_train=False)


def _resolve_device(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r} requested but CUDA is not available")
    return device


def load_clip(name: str = TINY_CLIP_NAME, pretrained: str | None = None, device: str = "cpu"):
    """Load an open_clip model: returns ``(model, preprocess, tokenizer)``, model in eval mode.

    ``name="tiny-synth"`` uses the shipped weights unless ``pretrained`` points elsewhere.
    For other names ``pretrained`` is an open_clip tag (fetched by open_clip's own hub code) or a
    local checkpoint path.
    """
    import open_clip

    device = _resolve_device(device)
    if name == TINY_CLIP_NAME:
        register_tiny_synth(_tiny_config_for(pretrained))
        if pretrained is None:
            pretrained = str(TINY_CLIP_WEIGHTS)
        if not Path(pretrained).is_file():
            raise ModelError(
                f"tiny-synth weights not found at {pretrained}; retrain with "
                "`python -m audit.training.train_tiny_clip --out audit/assets/tiny-synth`"
            )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device
        )
    except RuntimeError as e:  # open_clip raises RuntimeError for unknown names/tags
        raise ModelError(f"could not load open_clip model {name!r} ({pretrained!r}): {e}") from e
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess, tokenizer


def model_info(name: str, pretrained: str | None, model=None) -> dict[str, Any]:
    """What ``embeddings/model.json`` records: name, weights, embedding dim, preprocessing."""
    import open_clip

    if name == TINY_CLIP_NAME:
        register_tiny_synth(_tiny_config_for(pretrained))
        if pretrained is None:
            pretrained = str(TINY_CLIP_WEIGHTS)
    cfg = open_clip.get_model_config(name) or {}
    info: dict[str, Any] = {"name": name, "pretrained": pretrained}
    if cfg:
        info["embed_dim"] = cfg["embed_dim"]
        info["image_size"] = cfg["vision_cfg"].get("image_size")
        info["context_length"] = cfg["text_cfg"].get("context_length", 77)
    if model is not None:
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        info["image_mean"] = list(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        info["image_std"] = list(pp.get("std", open_clip.OPENAI_DATASET_STD))
        info["interpolation"] = pp.get("interpolation", "bicubic")
        info["resize_mode"] = pp.get("resize_mode", "shortest")
    else:
        info["image_mean"] = list(open_clip.OPENAI_DATASET_MEAN)
        info["image_std"] = list(open_clip.OPENAI_DATASET_STD)
    if name == TINY_CLIP_NAME and pretrained and Path(pretrained).is_file():
        import hashlib

        info["weights_sha256"] = hashlib.sha256(Path(pretrained).read_bytes()).hexdigest()
    return info


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def encode_images(
    model, preprocess, images: Sequence[Any], *, device: str = "cpu", batch_size: int = 256
) -> np.ndarray:
    """L2-normalised float32 image embeddings, shape (len(images), D). Images are PIL images;
    non-RGB ones are converted to RGB first."""
    import torch

    dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else None
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            batch = [
                im if im.mode == "RGB" else im.convert("RGB") for im in images[i : i + batch_size]
            ]
            x = torch.stack([preprocess(im) for im in batch]).to(device)
            out.append(model.encode_image(x).float().cpu().numpy())
    if not out:
        return np.zeros((0, dim or 0), np.float32)
    return _normalise(np.concatenate(out))


def encode_texts(
    model, tokenizer, texts: Sequence[str], *, device: str = "cpu", batch_size: int = 1024
) -> np.ndarray:
    """L2-normalised float32 text embeddings, shape (len(texts), D). Texts longer than the
    model's context length are truncated by the tokenizer."""
    import torch

    out: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            tok = tokenizer(list(texts[i : i + batch_size])).to(device)
            out.append(model.encode_text(tok).float().cpu().numpy())
    if not out:
        dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else 0
        return np.zeros((0, dim), np.float32)
    return _normalise(np.concatenate(out))


def load_generator(name_or_path: str = TINY_SD_NAME, device: str = "cpu", dtype=None):
    """Load a diffusers text-to-image pipeline (fp16 on CUDA unless ``dtype`` is given),
    with the progress bar and any safety checker disabled. A local folder is loaded from
    safetensors only (``use_safetensors=True``: pickled ``.bin`` weights are refused, never
    unpickled); hub ids keep diffusers' own choice."""
    import torch
    from diffusers import DiffusionPipeline

    device = _resolve_device(device)
    path: str = name_or_path
    if name_or_path == TINY_SD_NAME:
        if not (TINY_SD_DIR / "model_index.json").is_file():
            raise ModelError(
                f"tiny-sd pipeline not found at {TINY_SD_DIR}; retrain with "
                "`python -m audit.training.train_tiny_sd --out audit/assets/tiny-sd`"
            )
        path = str(TINY_SD_DIR)
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    index = Path(path) / "model_index.json"
    if index.is_file() and "safety_checker" in json.loads(index.read_text()):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if Path(path).is_dir():
        kwargs["use_safetensors"] = True
    try:
        pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load diffusers pipeline {name_or_path!r}: {e}") from e
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
