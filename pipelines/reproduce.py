"""Seeded generation at scale (Apache Beam): (prompt, seed range) chunks fanned out to workers.

::

    ChunkTask(prompt_id, prompt, seeds a..b) --Reshuffle--> GenerateChunkFn (generator and image
        encoder loaded once per worker in DoFn.setup) --> <out>/<prompt_id>/
            00000a.png ... 00000b-1.png, chunk-00000a-00000b.parquet, chunk-00000a-00000b.SUCCESS

Design points:

- **Deterministic per (prompt, seed), whatever the batch size.** The initial latents of every
  seed are drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (one generator per
  sample) and handed to the pipeline; with a deterministic sampler (DDIM, eta 0) the image is a
  function of (prompt, seed, settings). Batching only changes the floating-point summation order
  of batched kernels (oneDNN / cuDNN pick algorithms by shape): images from different batch
  sizes agree to within a grey level or so, and a rerun with the same batch size is
  bit-identical (see tests/test_reproduce.py).
- **Resumable.** A chunk is finished once its ``.SUCCESS`` marker exists and records the same
  settings fingerprint (generator, steps, guidance, size, negative prompt). Images are written
  first, then the chunk's parquet (seeds, paths, status, CLIP image embeddings), then the
  marker, each atomically (temporary file + rename), so a crash never leaves a chunk that looks
  finished. Chunk boundaries depend only on ``chunk_size``, not on the batch size or the runner.
- **Models as builders.** This module does not import ``audit``; the stage passes picklable
  zero-argument callables that load the diffusers pipeline and the CLIP image encoder inside
  each worker (``DoFn.setup``), the pattern of img2dataset and Beam's ModelHandler.
- **Nothing silently lost.** A batch whose generation raises becomes rows with status
  ``failed_to_generate`` and the error; a chunk holding failures is written but not counted as
  finished, so a rerun retries it. Counters go to Beam metrics.
- Wen et al.'s triage score (:func:`triage_scores`): ``||eps(x_T, c) - eps(x_T, empty)||`` at the
  first denoising step of the same schedule and the same seeds' initial latents.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.common import atomic_path, atomic_write_bytes, fixed_list_array, write_json_atomic

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "laion_audit_reproduce"
OK, FAILED_TO_GENERATE, FAILED_TO_EMBED = "ok", "failed_to_generate", "failed_to_embed"

GeneratorBuilder = Callable[[], Any]
"""Zero-argument callable returning a diffusers text-to-image pipeline."""
EncoderBuilder = Callable[[], Callable[[list[Any]], np.ndarray]]
"""Zero-argument callable returning ``encode(pil_images) -> (n, d) float32 normalised``."""


# ---- settings and tasks ---------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationSettings:
    """What every image of a run shares. ``height``/``width`` must be resolved (not None) before
    chunks are planned; :meth:`SeededGenerator.resolve_size` gives the pipeline's default."""

    generator: str
    steps: int = 50
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    batch_size: int = 8
    chunk_size: int = 50
    device: str = "cpu"
    safety: str | None = None  # "sld:weak|medium|strong|max" (pipelines.safety)
    safety_concept: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """The settings an image depends on (batch size and device are not among them); the
        safety keys only when a safety mode is set, so earlier chunks keep their fingerprint."""
        from pipelines.safety import fingerprint as safety_fingerprint

        return {
            "generator": self.generator,
            "steps": self.steps,
            "guidance": self.guidance,
            "height": self.height,
            "width": self.width,
            "negative_prompt": self.negative_prompt,
            **safety_fingerprint(self.safety, self.safety_concept),
        }


@dataclass(frozen=True)
class ChunkTask:
    """Generate seeds ``seed_start .. seed_stop - 1`` of one prompt."""

    prompt_id: str
    prompt: str
    seed_start: int
    seed_stop: int

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed_start, self.seed_stop))

    @property
    def name(self) -> str:
        return f"chunk-{self.seed_start:06d}-{self.seed_stop:06d}"


def plan_chunks(
    prompts: Sequence[tuple[str, str]], n: int, chunk_size: int, seed_offset: int = 0
) -> list[ChunkTask]:
    """Chunks of ``chunk_size`` seeds covering seeds ``seed_offset .. seed_offset + n - 1`` for
    each ``(prompt_id, prompt)``. Boundaries are multiples of ``chunk_size`` counted from the
    offset, so a rerun with a larger ``n`` reuses every earlier chunk but the last partial one."""
    if n < 0 or chunk_size < 1:
        raise ValueError(f"need n >= 0 and chunk_size >= 1 (got n={n}, chunk_size={chunk_size})")
    tasks = []
    for pid, prompt in prompts:
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            tasks.append(ChunkTask(pid, prompt, seed_offset + start, seed_offset + stop))
    return tasks


def image_name(seed: int) -> str:
    return f"{seed:06d}.png"


def chunk_paths(out_root: str | Path, task: ChunkTask) -> tuple[Path, Path]:
    """(parquet, marker) of a chunk."""
    d = Path(out_root) / task.prompt_id
    return d / f"{task.name}.parquet", d / f"{task.name}.SUCCESS"


def chunk_done(out_root: str | Path, task: ChunkTask, settings: GenerationSettings) -> bool:
    """Finished with the same settings and no failed rows (then a rerun skips it)."""
    part, marker = chunk_paths(out_root, task)
    if not (part.exists() and marker.exists()):
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("fingerprint") == settings.fingerprint() and not info.get("failed")


def png_bytes(image: Any) -> bytes:
    """PNG bytes of a PIL image (deterministic for the same pixels)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ---- the generator --------------------------------------------------------------------------
class SeededGenerator:
    """A diffusers text-to-image pipeline whose images depend on (prompt, seed) only.

    On CUDA the pipeline runs in fp16 unless it was loaded in another dtype on purpose
    (``fp16=False``). Pipelines with a ``unet`` and ``vae_scale_factor`` (the Stable Diffusion
    family) get explicit per-seed initial latents; others get a list of per-seed CPU generators,
    which diffusers also draws sample by sample.
    """

    def __init__(self, pipe: Any, device: str | None = None, fp16: bool = True) -> None:
        import torch

        self.pipe = pipe
        if device is not None:
            self.pipe = self.pipe.to(device)
        dev = str(getattr(self.pipe, "device", device or "cpu"))
        self.device = dev
        if dev.startswith("cuda") and fp16 and getattr(self.pipe, "dtype", None) != torch.float16:
            self.pipe = self.pipe.to(dtype=torch.float16)
        with contextlib.suppress(Exception):
            self.pipe.set_progress_bar_config(disable=True)

    @property
    def dtype(self) -> Any:
        return getattr(self.pipe, "dtype", None)

    def resolve_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """Explicit sizes, or the pipeline's default (UNet sample size x VAE scale factor)."""
        if height and width:
            return int(height), int(width)
        unet = getattr(self.pipe, "unet", None)
        if unet is None:
            raise ValueError(
                f"{type(self.pipe).__name__} has no default image size: pass --height and --width"
            )
        s = unet.config.sample_size
        s = s[0] if isinstance(s, (list, tuple)) else s
        default = int(s) * int(getattr(self.pipe, "vae_scale_factor", 8))
        return int(height or default), int(width or default)

    def _latent_shape(self, height: int, width: int) -> tuple[int, int, int] | None:
        unet = getattr(self.pipe, "unet", None)
        scale = getattr(self.pipe, "vae_scale_factor", None)
        if unet is None or scale is None:
            return None
        return int(unet.config.in_channels), height // int(scale), width // int(scale)

    def initial_latents(self, seeds: Sequence[int], height: int, width: int) -> Any:
        """(len(seeds), C, h, w) float32 CPU tensor; row i depends only on ``seeds[i]``."""
        import torch

        shape = self._latent_shape(height, width)
        if shape is None:
            raise ValueError("this pipeline has no UNet latent shape")
        return torch.stack(
            [
                torch.randn(
                    shape, generator=torch.Generator("cpu").manual_seed(int(s)), dtype=torch.float32
                )
                for s in seeds
            ]
        )

    def generate(
        self, prompt: str, seeds: Sequence[int], settings: GenerationSettings
    ) -> list[Any]:
        """PIL images, one per seed, in order."""
        import torch

        h, w = self.resolve_size(settings.height, settings.width)
        kwargs: dict[str, Any] = dict(
            prompt=[prompt] * len(seeds),
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            height=h,
            width=w,
            output_type="pil",
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
        )
        if settings.negative_prompt:
            kwargs["negative_prompt"] = [settings.negative_prompt] * len(seeds)
        if self._latent_shape(h, w) is not None:
            kwargs["latents"] = self.initial_latents(seeds, h, w).to(self.device, dtype=self.dtype)
        pipe = self.pipe
        if settings.safety:  # Safe Latent Diffusion guidance with the same modules and latents
            from pipelines.safety import safe_pipeline, sld_parameters

            pipe = safe_pipeline(self.pipe, settings.safety_concept)
            kwargs.update(sld_parameters(settings.safety, settings.steps))
        with torch.inference_mode():
            out = pipe(**kwargs)
        return list(out.images)

    def triage(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        settings: GenerationSettings,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Wen et al.'s score per (prompt, seed): ``||eps(x_T, c) - eps(x_T, empty)||_2`` at the
        first timestep of the ``settings.steps`` schedule, from the seed's initial latents.
        Returns a (len(prompts), len(seeds)) float64 array. Needs a UNet pipeline with
        ``encode_prompt`` (the Stable Diffusion family)."""
        import torch

        pipe = self.pipe
        if getattr(pipe, "unet", None) is None or not hasattr(pipe, "encode_prompt"):
            raise NotImplementedError(
                f"triage needs a Stable-Diffusion-style pipeline (unet + encode_prompt); "
                f"{type(pipe).__name__} has none"
            )
        h, w = self.resolve_size(settings.height, settings.width)
        sched = pipe.scheduler
        sched.set_timesteps(settings.steps, device=self.device)
        t0 = sched.timesteps[0]
        lat = self.initial_latents(seeds, h, w) * float(sched.init_noise_sigma)
        lat = lat.to(self.device, dtype=self.dtype)
        out = np.zeros((len(prompts), len(seeds)), dtype=np.float64)
        per = max(1, batch_size // max(1, len(seeds)))  # prompts per UNet call
        with torch.inference_mode():
            for a in range(0, len(prompts), per):
                group = list(prompts[a : a + per])
                cond, uncond = pipe.encode_prompt(
                    group,
                    self.device,
                    len(seeds),
                    True,
                    negative_prompt=[settings.negative_prompt or ""] * len(group),
                )
                x = lat.repeat(len(group), 1, 1, 1)
                x_in = sched.scale_model_input(torch.cat([x, x]), t0)
                eps = pipe.unet(x_in, t0, encoder_hidden_states=torch.cat([uncond, cond])).sample
                e_u, e_c = eps.float().chunk(2)
                norms = (e_c - e_u).flatten(1).norm(dim=1).cpu().numpy()
                out[a : a + len(group)] = norms.reshape(len(group), len(seeds))
        return out


# ---- one chunk ------------------------------------------------------------------------------
def chunk_schema(dim: int) -> pa.Schema:
    """Rows of a chunk parquet. ``image_emb`` (L2-normalised float16, ``dim`` values, null for
    failed rows) is a variable-size list on disk: pyarrow <= 25 writes null fixed-size lists to
    parquet but cannot read them back (apache/arrow#35692)."""
    del dim  # every row holds ``dim`` values; the type does not record it
    return pa.schema(
        [
            ("prompt_id", pa.string()),
            ("prompt", pa.string()),
            ("seed", pa.int64()),
            ("path", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("image_emb", pa.list_(pa.float16())),
            ("copy_emb", pa.list_(pa.float16())),
        ]
    )


def _encode_rows(
    encode: Callable[[list[Any]], np.ndarray],
    images: list[Any],
    ok_idx: list[int],
    status: list[str],
    errors: list[str | None],
    what: str,
) -> tuple[list[np.ndarray | None], int | None]:
    """Embed the generated images ``ok_idx`` with ``encode``; a failure marks the rows
    ``failed_to_embed`` with the error (the chunk is retried on rerun). Returns the per-row
    vectors (None where missing) and their dimension."""
    out: list[np.ndarray | None] = [None] * len(images)
    try:
        vecs = np.asarray(encode([images[i] for i in ok_idx]), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - recorded, chunk retried on rerun
        logger.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        for i in ok_idx:
            status[i], errors[i] = FAILED_TO_EMBED, f"{what}: {type(exc).__name__}: {exc}"
        return out, None
    for j, i in enumerate(ok_idx):
        if np.all(np.isfinite(vecs[j])):
            out[i] = vecs[j]
        else:
            status[i], errors[i] = FAILED_TO_EMBED, f"{what}: non-finite embedding"
    return out, int(vecs.shape[1])


def _vectors(vecs: list[np.ndarray | None], dim: int) -> pa.Array:
    values = np.zeros((len(vecs), dim), dtype=np.float16)
    valid = np.array([v is not None for v in vecs], dtype=bool)
    for i in np.flatnonzero(valid):
        values[i] = np.asarray(vecs[i], dtype=np.float16).reshape(-1)
    return fixed_list_array(values, valid).cast(pa.list_(pa.float16()))


@dataclass
class ChunkResult:
    """What a chunk did: ``status`` is ``generated`` or ``skipped``."""

    prompt_id: str
    seed_start: int
    seed_stop: int
    status: str
    n_ok: int = 0
    n_failed: int = 0
    seconds: float = 0.0
    images: int = 0
    errors: list[str] = field(default_factory=list)


def generate_chunk(
    gen: SeededGenerator,
    encode: Callable[[list[Any]], np.ndarray] | None,
    task: ChunkTask,
    settings: GenerationSettings,
    out_root: str | Path,
    dim: int | None = None,
    copy_encode: Callable[[list[Any]], np.ndarray] | None = None,
) -> ChunkResult:
    """Generate, embed and write one chunk unless it is already finished (then ``skipped``).

    Images are written as ``<out_root>/<prompt_id>/<seed>.png`` (paths in the parquet are
    relative to ``out_root``). ``encode`` may be None (no embeddings: ``dim`` must then be given
    and embeddings are null). ``copy_encode`` (optional) fills ``copy_emb`` with the
    copy-detection descriptor of each image (null without it).
    """
    if chunk_done(out_root, task, settings):
        return ChunkResult(task.prompt_id, task.seed_start, task.seed_stop, "skipped")
    t0 = time.perf_counter()
    root = Path(out_root)
    seeds = task.seeds
    images: list[Any | None] = []
    errors: list[str | None] = []
    for a in range(0, len(seeds), settings.batch_size):
        batch = seeds[a : a + settings.batch_size]
        try:
            imgs = gen.generate(task.prompt, batch, settings)
            if len(imgs) != len(batch):
                raise RuntimeError(f"pipeline returned {len(imgs)} images for {len(batch)} seeds")
            images.extend(imgs)
            errors.extend([None] * len(batch))
        except Exception as exc:  # noqa: BLE001 - recorded per seed, chunk retried on rerun
            logger.warning(
                "%s seeds %d-%d failed: %s: %s",
                task.prompt_id,
                batch[0],
                batch[-1],
                type(exc).__name__,
                exc,
            )
            images.extend([None] * len(batch))
            errors.extend([f"{type(exc).__name__}: {exc}"] * len(batch))
    ok_idx = [i for i, im in enumerate(images) if im is not None]
    emb: list[np.ndarray | None] = [None] * len(seeds)
    copy: list[np.ndarray | None] = [None] * len(seeds)
    copy_dim = 1
    status = [OK if e is None else FAILED_TO_GENERATE for e in errors]
    if encode is not None and ok_idx:
        emb, got = _encode_rows(
            encode, images, ok_idx, status, errors, f"{task.prompt_id}: image embedding"
        )
        dim = got or dim
    if copy_encode is not None and ok_idx:
        copy, got = _encode_rows(
            copy_encode, images, ok_idx, status, errors, f"{task.prompt_id}: copy descriptor"
        )
        copy_dim = got or copy_dim
    if dim is None:
        raise ValueError("no image embeddings and no dim given")
    paths = []
    for s, im in zip(seeds, images):
        rel = f"{task.prompt_id}/{image_name(s)}"
        if im is not None:
            atomic_write_bytes(root / rel, png_bytes(im))
        paths.append(rel if im is not None else None)
    sizes = [(im.width, im.height) if im is not None else (None, None) for im in images]
    table = pa.table(
        [
            pa.array([task.prompt_id] * len(seeds), pa.string()),
            pa.array([task.prompt] * len(seeds), pa.string()),
            pa.array(seeds, pa.int64()),
            pa.array(paths, pa.string()),
            pa.array(status, pa.string()),
            pa.array(errors, pa.string()),
            pa.array([w for w, _ in sizes], pa.int32()),
            pa.array([h for _, h in sizes], pa.int32()),
            _vectors(emb, dim),
            _vectors(copy, copy_dim),
        ],
        schema=chunk_schema(dim),
    )
    part, marker = chunk_paths(root, task)
    with atomic_path(part) as tmp:
        pq.write_table(table, tmp)
    n_failed = sum(st != OK for st in status)
    write_json_atomic(
        marker,
        {
            "finished": time.time(),
            "rows": len(seeds),
            "failed": n_failed,
            "fingerprint": settings.fingerprint(),
            "prompt": task.prompt,
            "batch_size": settings.batch_size,
            "device": gen.device,
            "dtype": str(gen.dtype),
        },
    )
    logger.info(
        "%s %s: %d images in %.1f s",
        task.prompt_id,
        task.name,
        len(ok_idx),
        time.perf_counter() - t0,
    )
    if n_failed:  # keep the rows for inspection, but let a rerun retry the chunk
        logger.warning(
            "%s %s: %d of %d seeds failed; rerun to retry",
            task.prompt_id,
            task.name,
            n_failed,
            len(seeds),
        )
    return ChunkResult(
        task.prompt_id,
        task.seed_start,
        task.seed_stop,
        "generated",
        n_ok=len(seeds) - n_failed,
        n_failed=n_failed,
        seconds=time.perf_counter() - t0,
        images=len(ok_idx),
        errors=sorted({e for e in errors if e})[:3],
    )


# ---- Beam -----------------------------------------------------------------------------------
class GenerateChunkFn(beam.DoFn):
    """:class:`ChunkTask` -> :class:`ChunkResult`; the generator and the image encoder are
    loaded once per worker in ``setup``. ``on_chunk`` is called after each chunk (progress, or a
    test simulating a crash)."""

    def __init__(
        self,
        generator_builder: GeneratorBuilder,
        encoder_builder: EncoderBuilder | None,
        settings: GenerationSettings,
        out_root: str,
        dim: int | None = None,
        on_chunk: Callable[[ChunkResult], None] | None = None,
        copy_builder: EncoderBuilder | None = None,
    ) -> None:
        self.generator_builder = generator_builder
        self.encoder_builder = encoder_builder
        self.copy_builder = copy_builder
        self._copy: Callable[[list[Any]], np.ndarray] | None = None
        self.settings = settings
        self.out_root = str(out_root)
        self.dim = dim
        self.on_chunk = on_chunk
        self._gen: SeededGenerator | None = None
        self._encode: Callable[[list[Any]], np.ndarray] | None = None

    def setup(self) -> None:
        self._gen = SeededGenerator(self.generator_builder(), device=self.settings.device)
        self._encode = self.encoder_builder() if self.encoder_builder else None
        self._copy = self.copy_builder() if self.copy_builder else None

    def process(self, task: ChunkTask) -> Iterator[ChunkResult]:
        counter = beam.metrics.Metrics.counter
        if chunk_done(self.out_root, task, self.settings):
            res = ChunkResult(task.prompt_id, task.seed_start, task.seed_stop, "skipped")
            counter(METRICS_NAMESPACE, "chunks_skipped").inc()
        else:
            assert self._gen is not None, "setup() did not run"
            res = generate_chunk(
                self._gen, self._encode, task, self.settings, self.out_root, self.dim, self._copy
            )
            counter(METRICS_NAMESPACE, "chunks_generated").inc()
            counter(METRICS_NAMESPACE, "images_generated").inc(res.images)
            counter(METRICS_NAMESPACE, "images_failed").inc(res.n_failed)
        if self.on_chunk is not None:
            self.on_chunk(res)
        yield res


def run_generation(
    tasks: Sequence[ChunkTask],
    generator_builder: GeneratorBuilder,
    encoder_builder: EncoderBuilder | None,
    settings: GenerationSettings,
    out_root: str | Path,
    *,
    dim: int | None = None,
    options: Any = None,
    runner: Any = None,
    on_chunk: Callable[[ChunkResult], None] | None = None,
    copy_builder: EncoderBuilder | None = None,
) -> dict[str, int]:
    """Run the Beam pipeline over ``tasks`` (DirectRunner in-process by default).
    ``copy_builder``: like ``encoder_builder``, for the copy-detection descriptor (``copy_emb``).

    Returns counters ``chunks``, ``chunks_skipped``, ``chunks_generated``, ``images_generated``,
    ``images_failed`` read back from the chunk markers (so they are right on any runner).
    """
    if settings.height is None or settings.width is None:
        raise ValueError("resolve settings.height and settings.width before planning chunks")
    todo = [t for t in tasks if not chunk_done(out_root, t, settings)]
    counts = {
        "chunks": len(tasks),
        "chunks_skipped": len(tasks) - len(todo),
        "chunks_generated": 0,
        "images_generated": 0,
        "images_failed": 0,
    }
    if not todo:
        logger.info("all %d chunks already finished; nothing to generate", len(tasks))
        return counts
    if runner is None:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        runner = FnApiRunner()
    fn = GenerateChunkFn(
        generator_builder, encoder_builder, settings, str(out_root), dim, on_chunk, copy_builder
    )
    p = beam.Pipeline(runner=runner, options=options)
    _ = (
        p
        | "Chunks" >> beam.Create(todo, reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | "Generate" >> beam.ParDo(fn)
    )
    result = p.run()
    result.wait_until_finish()
    for t in todo:
        part, marker = chunk_paths(out_root, t)
        if marker.exists():
            info = json.loads(marker.read_text())
            counts["chunks_generated"] += 1
            counts["images_generated"] += int(info.get("rows", 0)) - int(info.get("failed", 0))
            counts["images_failed"] += int(info.get("failed", 0))
    return counts


def read_chunks(
    out_root: str | Path, tasks: Sequence[ChunkTask], settings: GenerationSettings
) -> pa.Table | None:
    """The rows of every finished chunk among ``tasks`` (chunks with failures included, so the
    failures are counted), concatenated; None when there are none."""
    tables = []
    for t in tasks:
        part, marker = chunk_paths(out_root, t)
        if not (part.exists() and marker.exists()):
            continue
        info = json.loads(marker.read_text())
        if info.get("fingerprint") != settings.fingerprint():
            continue
        tables.append(pq.read_table(part))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


@dataclass
class Generations:
    """The finished chunks' rows as read back: ``frame`` (pandas, one row per generation, no
    vectors), ``image_emb`` (n, dim) and, when asked for, ``copy_emb`` (n, copy_dim); rows
    whose generation or embedding failed (or whose chunk has no descriptor) are NaN."""

    frame: Any
    image_emb: np.ndarray
    copy_emb: np.ndarray | None = None

    def missing_copies(self) -> np.ndarray:
        """Rows generated fine but without a copy descriptor (chunks written without one)."""
        if self.copy_emb is None:
            return np.zeros(0, np.int64)
        ok = self.frame["status"].eq(OK).to_numpy(bool)
        return np.flatnonzero(ok & ~np.isfinite(self.copy_emb).all(axis=1))


def read_generations(
    out_root: str | Path,
    tasks: Sequence[ChunkTask],
    settings: GenerationSettings,
    dim: int,
    copy_dim: int | None = None,
) -> Generations:
    """:func:`read_chunks` as :class:`Generations` (an empty frame when nothing is finished)."""
    import pandas as pd
    import pyarrow.compute as pc

    from pipelines.common import vectors

    gens = read_chunks(out_root, tasks, settings)
    if gens is None:
        cols = (("prompt_id", str), ("prompt", str), ("seed", "int64"), ("path", str),
                ("status", str), ("error", str))  # fmt: skip
        frame = pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols})
        copy = None if copy_dim is None else np.zeros((0, copy_dim), np.float32)
        return Generations(frame, np.zeros((0, dim), np.float32), copy)
    vec_cols = [c for c in ("image_emb", "copy_emb") if c in gens.column_names]
    frame = gens.drop_columns(vec_cols).to_pandas()
    bad = ~frame["status"].eq(OK).to_numpy(bool)

    def matrix(column: str, d: int) -> np.ndarray:
        out = np.full((len(frame), d), np.nan, np.float32)
        if column in gens.column_names:
            valid = pc.is_valid(gens.column(column)).to_numpy(zero_copy_only=False)
            if valid.any():
                out[valid] = vectors(gens.filter(valid).column(column), name=column).matrix
        out[bad] = np.nan
        return out

    copy = None if copy_dim is None else matrix("copy_emb", copy_dim)
    return Generations(frame, matrix("image_emb", dim), copy)


def settings_dict(settings: GenerationSettings) -> dict[str, Any]:
    return asdict(settings)
