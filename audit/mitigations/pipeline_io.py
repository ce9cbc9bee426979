"""Loading and saving the diffusers pipelines that ``erase`` and ``attack`` work on: a checked
loader (clear input errors for what is not a Stable-Diffusion-family pipeline), the device
choice, and an atomic save of an erased pipeline with its card."""

from __future__ import annotations


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


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoint_path(out: str) -> str:
    """Where ``erase`` keeps its resumable state for the output folder ``out``."""
    from pathlib import Path

    p = Path(out).resolve()
    return str(p.with_name(f".{p.name}.esd-checkpoint.pt"))


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
