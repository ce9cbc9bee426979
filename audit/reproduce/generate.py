"""The reproduce stage's prompts, triage and generation (see ``audit/stages/reproduce.py``)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from audit.copies import CopySpace
    from audit.reproduce.score import Findings
    from audit.workspace import Workspace
    from pipelines.common import Stats
    from pipelines.reproduce import ChunkTask, GenerationSettings
    from pipelines.training_set import TrainingSet

logger = logging.getLogger(__name__)


# ---- picklable model builders (run inside Beam workers) ------------------------------------
@dataclass(frozen=True)
class GeneratorLoader:
    """``()`` -> the diffusers pipeline, via ``audit.models.load_generator``."""

    name_or_path: str
    device: str = "cpu"

    def __call__(self) -> Any:
        from audit.models import load_generator

        return load_generator(self.name_or_path, device=self.device)


@dataclass(frozen=True)
class ClipImageEncoder:
    """``()`` -> ``encode(pil_images) -> (n, d)`` with the workspace's CLIP model."""

    name: str
    pretrained: str | None = None
    device: str = "cpu"
    batch_size: int = 64

    def __call__(self) -> Any:
        from audit.models import encode_images, load_clip

        model, preprocess, _ = load_clip(self.name, pretrained=self.pretrained, device=self.device)

        def encode(images: list[Any]) -> np.ndarray:
            return encode_images(
                model, preprocess, images, device=self.device, batch_size=self.batch_size
            )

        return encode


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; any other value as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def free_cuda() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


# ---- prompts ---------------------------------------------------------------------------------
def make_prompts(
    findings: Findings,
    train: TrainingSet,
    prompts_file: str | None,
    mode: str = "add",
    all_findings: bool = False,
) -> pd.DataFrame:
    """Prompts from the findings and the user file (see ``audit.prompts``)."""
    from audit.prompts import build_prompts

    obj_caps = {}
    if findings.objects is not None and mode == "add":
        for fid, r in findings.rows("objects").items():
            if all_findings or r.get("flagged", True):
                obj_caps[fid] = train.captions_matching(str(r["keyword"]))
    prompts = build_prompts(
        findings.word,
        findings.objects,
        prompts_file,
        mode,
        only_flagged=not all_findings,
        object_captions=obj_caps,
    )
    if prompts.empty:
        raise InputError(
            "nothing to reproduce: no flagged findings in findings/word_replication.parquet or "
            "findings/object_replication.parquet (run `laion-audit replication` / `objects`, "
            "pass --all-findings, or give --prompts FILE)"
        )
    logger.info("%d prompts from %d findings", len(prompts), prompts["finding_id"].nunique())
    return prompts


# ---- triage ----------------------------------------------------------------------------------
def run_triage(
    ws: Workspace,
    prompts: pd.DataFrame,
    settings: GenerationSettings,
    device: str,
    seeds: list[int],
    stats: Stats,
) -> tuple[GenerationSettings, np.ndarray]:
    """Load the generator here once: resolve the image size (``settings.height``/``width``
    None or 0: the model's), and score every prompt with Wen et al.'s first-step norm averaged
    over ``seeds`` (written to ``generations/triage.parquet``; NaN scores without seeds)."""
    from detectors.memorization import TRIAGE_NAME
    from pipelines.reproduce import SeededGenerator

    with stats.track("load_generator"):
        gen = SeededGenerator(GeneratorLoader(settings.generator, device)(), device=None)
        height, width = gen.resolve_size(settings.height or None, settings.width or None)
    settings = dataclasses.replace(settings, height=height, width=width)
    triage = np.full(len(prompts), np.nan)
    if seeds:
        with stats.track("triage") as took:
            per_seed = gen.triage(
                prompts["prompt"].tolist(),
                seeds,
                settings,
                batch_size=max(settings.batch_size, len(seeds)),
            )
        triage = per_seed.mean(axis=1)
        tri = prompts[["prompt_id", "finding_id", "prompt_kind", "prompt"]].copy()
        tri["triage_score"] = triage
        tri["triage_per_seed"] = list(per_seed)
        tri["detector"] = TRIAGE_NAME
        ws.write_table(ws.generations_dir / "triage.parquet", to_arrow(tri))
        logger.info(
            "triage: %d prompts x %d seeds in %.1f s", len(prompts), len(seeds), took.seconds
        )
    del gen
    free_cuda()
    return settings, triage


# ---- generation ------------------------------------------------------------------------------
def generate(
    ws: Workspace,
    chosen: pd.DataFrame,
    settings: GenerationSettings,
    *,
    n: int,
    seed_offset: int,
    dim: int,
    device: str,
    clip_batch_size: int,
    space: CopySpace | None,
    beam_args: list[str],
    runner: str | None,
    dask_local: int | None,
    stats: Stats,
) -> tuple[list[ChunkTask], dict[str, int]]:
    """The Beam fan-out of (prompt, seed range) chunks of ``chosen``; finished chunks are
    skipped. Each generation gets the CLIP image embedding and, in copy space, the copy
    descriptor."""
    from audit.copies import CopyEncoder
    from pipelines.beam_options import beam_setup
    from pipelines.reproduce import plan_chunks, run_generation

    info = ws.model()
    if not info.name:
        raise InputError(
            f"{ws.embeddings_dir}/model.json names no CLIP model: generations must "
            "be embedded with the model of the training embeddings"
        )
    encoder = ClipImageEncoder(str(info.name), info.pretrained, device, clip_batch_size)
    tasks = plan_chunks(
        list(zip(chosen["prompt_id"], chosen["prompt"])), n, settings.chunk_size, seed_offset
    )
    counts: dict[str, int] = {"chunks": 0}
    copy_builder = (
        CopyEncoder.for_workspace(ws, device) if space is not None and space.is_copy else None
    )
    with stats.track("generation") as took:
        if tasks:
            logger.info(
                "generating %d prompts x %d seeds (%d chunks, batch %d, %d steps, %dx%d, %s)",
                len(chosen), n, len(tasks), settings.batch_size, settings.steps,
                settings.width, settings.height, device,
            )  # fmt: skip
            with beam_setup(beam_args, runner, dask_local) as setup:
                counts = run_generation(
                    tasks,
                    GeneratorLoader(settings.generator, device),
                    encoder,
                    settings,
                    ws.generations_dir,
                    dim=dim,
                    options=setup.options,
                    runner=setup.new_runner(),
                    copy_builder=copy_builder,
                )
    logger.info("generation: %s in %.1f s", counts, took.seconds)
    return tasks, counts


def to_arrow(df: pd.DataFrame) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
