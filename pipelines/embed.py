"""The embedding pipeline (Apache Beam): shards -> samples -> decode -> RunInference -> parts.

::

    ShardSpec --ReadSamples--> chunks of samples ----DecodeSamples----> chunks of RGB images
                  |  \\--failed rows (download/hash/missing-from-tar)      |  \\--failed_to_decode
                  \\--manifest (every key read)                           v
                                      RunInference(ClipModelHandler) -> one Arrow table per chunk
                                                           \\--failed_to_embed rows
    all rows + manifests --GroupByKey(shard)--> WriteParts -> part-NNNNN.parquet + .SUCCESS

Design points:

- Batches are made per shard in read order (``chunk_size`` samples), not by Beam's adaptive
  ``BatchElements``; RunInference runs with ``with_no_batching()`` on those chunks, and the
  handler pads short batches to the full size. A sample's embedding therefore depends only on
  the data (and the torch thread count), never on bundle boundaries, workers or timing, so a
  resumed run writes parts identical to an uninterrupted one.
- Each DoFn emits one stream of ``(kind, value)`` pairs split by :func:`select` (no tagged
  outputs, which Beam's Dask runner mixes up); a batch the model fails on becomes
  ``failed_to_embed`` rows in the handler itself.
- The model is loaded once per worker by RunInference (``ModelHandler.load_model``) through a
  picklable ``loader`` callable; the ``audit`` package passes ``audit.models.load_clip``.
  This module does not import ``audit`` (import direction audit -> pipelines -> detectors):
  parts are written through a ``writer(index, table, info)`` callable, the schema is passed in.
- Nothing is dropped: every sample read becomes one row with ``status`` and ``error``; failed
  rows have null embeddings. ``WriteParts`` checks each part holds exactly the keys its reader
  saw before writing it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler, RunInference

from pipelines.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DecodeError, decode_image
from pipelines.readers import Sample, ShardSpec, read_shard

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "laion_audit_embed"
CHUNK, ROW, MANIFEST = "chunk", "row", "manifest"
"""Kinds of the ``(kind, value)`` elements the DoFns emit. One output stream split by
:func:`select` instead of tagged outputs: the Dask runner does not keep tagged outputs apart."""
PartWriter = Callable[[int, pa.Table, dict], None]
ModelLoader = Callable[[], tuple[Any, Any, Any]]
CopyLoader = Callable[[], Any]
"""Returns a copy detector: ``.embed(list of PIL images) -> L2-normalised float32 [n, D]``."""


# ---- rows ------------------------------------------------------------------------------------
def sample_row(
    s: Sample,
    image_emb: np.ndarray | None = None,
    text_emb: np.ndarray | None = None,
    clip_score: float | None = None,
    copy_emb: np.ndarray | None = None,
) -> dict:
    """The embedding-table row of a sample (docs/architecture.md schema). Caption problems become
    ``missing_caption`` when the image itself is fine."""
    status, error = s.status, s.error
    if status == "ok" and s.caption_problem is not None:
        status = "missing_caption"
        error = s.caption_problem if not error else f"{s.caption_problem}; {error}"
    return {
        "key": s.key,
        "url": s.url,
        "caption": s.caption,
        "sha256": s.sha256,
        "width": s.width,
        "height": s.height,
        "status": status,
        "error": error,
        "image_emb": image_emb,
        "text_emb": text_emb,
        "clip_score": clip_score,
        "copy_emb": copy_emb,
    }


def select(element: tuple[str, Any], kind: str = CHUNK) -> list[Any]:
    """The value of a ``(kind, value)`` element when its kind matches, else nothing."""
    return [element[1]] if element[0] == kind else []


@dataclass
class EmbedInput:
    """One decoded sample on its way into the model (image bytes already released)."""

    sample: Sample
    image: Any  # PIL.Image.Image, RGB


# ---- DoFns -------------------------------------------------------------------------------------
class ReadShardFn(beam.DoFn):
    """ShardSpec -> ``(CHUNK, samples)``, ``(ROW, (shard, failed row))`` and one
    ``(MANIFEST, (shard, info))``. A chunk holds at most ``chunk_size`` samples of one shard,
    in read order."""

    def __init__(self, chunk_size: int = 64, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
        self.chunk_size = chunk_size
        self.max_bytes = max_bytes

    def process(self, spec: ShardSpec) -> Iterator[Any]:
        report: dict[str, Any] = {}
        keys: list[str] = []
        chunk: list[Sample] = []
        read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "samples_read")
        for s in read_shard(spec, report, max_bytes=self.max_bytes):
            keys.append(s.key)
            read.inc()
            if s.image is None:
                yield ROW, (spec.index, sample_row(s))
                continue
            chunk.append(s)
            if len(chunk) >= self.chunk_size:
                yield CHUNK, chunk
                chunk = []
        if chunk:
            yield CHUNK, chunk
        if report.get("damaged"):
            logger.warning("%s: %s", spec.describe(), report["damaged"])
        if report.get("rejected_members"):
            logger.warning(
                "%s: %d unsafe tar members rejected", spec.describe(), report["rejected_members"]
            )
        extra = report.pop("extra_keys", [])
        yield (
            MANIFEST,
            (
                spec.index,
                {"keys": keys, "source": spec.describe(), "report": report, "extra_keys": extra},
            ),
        )


class DecodeChunkFn(beam.DoFn):
    """Chunk of samples -> ``(CHUNK, [EmbedInput])`` + ``(ROW, (shard, failed_to_decode row))``.
    Input samples are not modified (Beam elements are immutable); copies carry the changes."""

    def __init__(
        self, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def process(self, chunk: list[Sample]) -> Iterator[Any]:
        failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_to_decode")
        out: list[EmbedInput] = []
        for s in chunk:
            try:
                decoded = decode_image(s.image, self.max_pixels, self.max_bytes)
            except Exception as exc:  # noqa: BLE001 - a decoder bug must not kill the run either
                failed.inc()
                reason = (
                    str(exc)
                    if isinstance(exc, DecodeError)
                    else f"decoder crashed: {type(exc).__name__}: {exc}"
                )
                yield ROW, (s.shard, sample_row(_decode_failed(replace(s), reason)))
                continue
            out.append(
                EmbedInput(
                    replace(s, image=None, width=decoded.width, height=decoded.height),
                    decoded.image,
                )
            )
        if out:
            yield CHUNK, out


def _decode_failed(s: Sample, reason: str) -> Sample:
    """``failed_to_decode``, except that a hash mismatch keeps its (more important) status."""
    if s.status == "hash_mismatch":
        return s.fail("hash_mismatch", f"{s.error}; image not decodable: {reason}")
    return s.fail("failed_to_decode", reason)


# ---- model -------------------------------------------------------------------------------------
def open_clip_loader(
    name: str, pretrained: str | None = None, device: str = "cpu"
) -> tuple[Any, Any, Any]:
    """Plain open_clip loading: ``(model, preprocess, tokenizer)`` (eval mode, on ``device``)."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, device=device
    )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)


@dataclass
class ClipBundle:
    """What ``ClipModelHandler.load_model`` returns: the model and its transforms."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: str
    autocast: bool
    copy: Any = None


class ClipModelHandler(ModelHandler[EmbedInput, tuple, ClipBundle]):
    """RunInference handler around an open_clip model: images and captions of a chunk in, rows
    out (L2-normalised float16 embeddings, cosine ``clip_score``).

    ``loader()`` returns ``(model, preprocess, tokenizer)`` and runs once per worker. On CUDA
    the forward passes run under fp16 autocast. Use ``.with_no_batching()``: each element is
    already a chunk. ``pad_to`` pads smaller image and caption batches (a shard's last chunk,
    chunks that lost samples to decoding, fewer captions than images) to that size with copies
    of their first row, whose outputs are dropped: every forward pass has the same shape, so
    CPU kernels are not re-planned for each new batch size.

    ``copy_loader()`` (optional) returns a copy-detection descriptor (SSCD) that embeds the same
    decoded images into ``copy_emb``: one decode, both models. With ``loader=None`` only the
    copy descriptor runs (adding ``copy_emb`` to an existing workspace without recomputing CLIP).
    """

    def __init__(
        self,
        loader: ModelLoader | None,
        device: str = "cpu",
        torch_threads: int = 0,
        model_name: str = "",
        pad_to: int = 0,
        copy_loader: CopyLoader | None = None,
    ) -> None:
        super().__init__()
        if loader is None and copy_loader is None:
            raise ValueError("ClipModelHandler needs a CLIP loader, a copy loader or both")
        self._loader = loader
        self._device = device
        self._torch_threads = torch_threads
        self._model_name = model_name
        self._pad_to = pad_to
        self._copy_loader = copy_loader

    def __repr__(self) -> str:
        return f"ClipModelHandler({self._model_name or self._loader!r}, device={self._device!r})"

    def process_cached(self) -> ClipModelHandler:
        """A copy whose model is loaded once per worker process for this run and kept there
        (the last run's only). Beam's DaskRunner sets every DoFn up again for each bundle, and
        RunInference's shared handle does not outlive an unpickled DoFn: without this, every
        shard loaded the model again. ``run_embed`` uses it on the DaskRunner."""
        import copy
        import uuid

        out = copy.copy(self)
        out._cache_token = uuid.uuid4().hex
        return out

    def load_model(self) -> ClipBundle:
        token = getattr(self, "_cache_token", None)
        if token is not None:
            with _MODEL_LOCK:
                if _PROCESS_MODEL.get("token") != token:
                    _PROCESS_MODEL.clear()
                    _PROCESS_MODEL.update(token=token, bundle=self._load())
                return _PROCESS_MODEL["bundle"]
        return self._load()

    def _load(self) -> ClipBundle:
        import torch

        if self._torch_threads > 0:
            torch.set_num_threads(self._torch_threads)
        t0 = time.perf_counter()
        model = preprocess = tokenizer = None
        if self._loader is not None:
            model, preprocess, tokenizer = self._loader()
            model = model.to(self._device).eval()
        copy = self._copy_loader() if self._copy_loader is not None else None
        logger.info(
            "loaded %s%s on %s in %.1f s",
            self._model_name or "model",
            f" + copy model {copy!r}" if copy is not None else "",
            self._device,
            time.perf_counter() - t0,
        )
        return ClipBundle(
            model,
            preprocess,
            tokenizer,
            self._device,
            autocast=str(self._device).startswith("cuda"),
            copy=copy,
        )

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def get_num_bytes(self, batch: Sequence[EmbedInput]) -> int:
        return sum(e.image.width * e.image.height * 3 for e in batch)

    def run_inference(
        self,
        batch: Sequence[EmbedInput],
        model: ClipBundle,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[tuple[int, Any]]:
        if not batch:
            return []
        try:
            with _MODEL_LOCK:
                return self._embed(batch, model)
        except Exception as exc:  # noqa: BLE001 - a bad batch is recorded, not fatal
            logger.warning(
                "model failed on a batch of %d samples: %s: %s", len(batch), type(exc).__name__, exc
            )
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_to_embed").inc(len(batch))
            msg = f"model failed on this batch: {type(exc).__name__}: {exc}"[:500]
            rows = [sample_row(replace(e.sample).fail("failed_to_embed", msg)) for e in batch]
            return [(batch[0].sample.shard, chunk_table(rows))]

    def _embed(self, batch: Sequence[EmbedInput], model: ClipBundle) -> list[tuple[int, Any]]:
        """The chunk's rows as ONE element: ``(shard, Arrow table)`` (a chunk never spans
        shards), so Beam's cost after inference is per chunk, not per row."""
        img_emb = txt_emb = copy_emb = None
        text_idx: list[int] = []
        if model.model is not None:
            t0 = time.perf_counter()
            images = _preprocess_single_threaded(model.preprocess, [e.image for e in batch])
            text_idx = [i for i, e in enumerate(batch) if e.sample.caption_problem is None]
            texts = [batch[i].sample.caption for i in text_idx]
            tokens = model.tokenizer(texts) if texts else None
            t1 = time.perf_counter()
            img_emb, txt_emb = embed_tensors(
                model, _padded(images, self._pad_to), _padded(tokens, self._pad_to)
            )
            img_emb = img_emb[: len(images)]
            txt_emb = None if txt_emb is None else txt_emb[: len(texts)]
            t2 = time.perf_counter()
            beam.metrics.Metrics.distribution(METRICS_NAMESPACE, "preprocess_us").update(
                int((t1 - t0) * 1e6)
            )
            beam.metrics.Metrics.distribution(METRICS_NAMESPACE, "forward_us").update(
                int((t2 - t1) * 1e6)
            )
        if model.copy is not None:
            t2 = time.perf_counter()
            copy_emb = model.copy.embed([e.image for e in batch])
            beam.metrics.Metrics.distribution(METRICS_NAMESPACE, "copy_forward_us").update(
                int((time.perf_counter() - t2) * 1e6)
            )
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_embedded").inc(len(batch))
        text_of = dict(zip(text_idx, range(len(text_idx))))
        rows = []
        for i, e in enumerate(batch):
            ie = img_emb[i] if img_emb is not None else None
            j = text_of.get(i)
            te = txt_emb[j] if j is not None and txt_emb is not None else None
            score = float(np.dot(ie, te)) if te is not None and ie is not None else None
            row = sample_row(
                e.sample,
                None if ie is None else ie.astype(np.float16),
                None if te is None else te.astype(np.float16),
                score,
                None if copy_emb is None else copy_emb[i].astype(np.float16),
            )
            rows.append(row)
        return [(batch[0].sample.shard, chunk_table(rows))]


_PROCESS_MODEL: dict[str, Any] = {}
"""``ClipModelHandler.process_cached``'s model of this worker process (one run's only)."""

_MODEL_LOCK = threading.RLock()
"""One batch at a time through the models of a process. A worker with several threads (a Dask
worker process with ``nthreads > 1``, ``multi_threading``) shares one model between them, and
torch's thread count is process-wide: without the lock, one batch's single-threaded preprocess
(:func:`_preprocess_single_threaded`) changed another's forward pass to one thread, and so its
floating-point reductions (tests/test_dask.py: parts differed from the in-process run)."""


def _preprocess_single_threaded(preprocess: Any, images: list[Any]) -> list[Any]:
    """Per-image transforms with one torch thread: the ops are too small to split, and extra
    threads only spin (measured by benchmarks/bench_embed.py: 64 ViT-B-32 preprocesses took
    4.65 s with 2 threads on a loaded 2-core machine, 0.09 s with 1)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [preprocess(im) for im in images]
    finally:
        torch.set_num_threads(n)


def _padded(batch: Any, size: int) -> Any:
    """A list of tensors or a 2-D token tensor padded to ``size`` rows with its first row."""
    if batch is None or size <= 0 or len(batch) == 0 or len(batch) >= size:
        return batch
    if isinstance(batch, list):
        return batch + [batch[0]] * (size - len(batch))
    import torch

    return torch.cat([batch, batch[:1].expand(size - len(batch), *batch.shape[1:])])


def embed_tensors(
    model: ClipBundle, images: list[Any], tokens: Any | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Forward preprocessed image tensors and caption tokens; float32 L2-normalised arrays."""
    import torch

    device = model.device
    ctx = (
        torch.autocast(device_type="cuda", dtype=torch.float16)
        if model.autocast
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), ctx:
        x = torch.stack(images).to(device, non_blocking=True)
        f = model.model.encode_image(x).float()
        f = torch.nn.functional.normalize(f, dim=-1)
        g = None
        if tokens is not None:
            g = model.model.encode_text(tokens.to(device)).float()
            g = torch.nn.functional.normalize(g, dim=-1)
    return f.cpu().numpy(), None if g is None else g.cpu().numpy()


# ---- writing parts --------------------------------------------------------------------------
def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (sorted by key here) -> an Arrow table with ``schema`` (null embeddings allowed)."""
    rows = sorted(rows, key=lambda r: r["key"])
    dim = schema.field("image_emb").type.list_size
    cols: dict[str, Any] = {}
    for name in ("key", "url", "caption", "sha256", "status", "error"):
        cols[name] = pa.array([r[name] for r in rows], pa.string())
    for name in ("width", "height"):
        cols[name] = pa.array([r[name] for r in rows], pa.int32())
    for name in ("image_emb", "text_emb"):
        cols[name] = _vector_array([r[name] for r in rows], dim, schema.field(name).type)
    cols["clip_score"] = pa.array([r["clip_score"] for r in rows], pa.float32())
    if "copy_emb" in schema.names:
        typ = schema.field("copy_emb").type
        cols["copy_emb"] = _vector_array([r.get("copy_emb") for r in rows], typ.list_size, typ)
    return pa.table([cols[f.name] for f in schema], schema=schema)


def _vector_array(vectors: list[np.ndarray | None], dim: int, typ: pa.DataType) -> pa.Array:
    n = len(vectors)
    values = np.zeros((n, dim), dtype=np.float16)
    valid = np.zeros(n, dtype=bool)
    for i, v in enumerate(vectors):
        if v is not None:
            v = np.asarray(v, dtype=np.float16).reshape(-1)
            if v.shape[0] != dim:
                raise ValueError(f"embedding of length {v.shape[0]}, expected {dim}")
            values[i] = v
            valid[i] = True
    arr = pa.FixedSizeListArray.from_arrays(
        pa.array(values.reshape(-1)), dim, mask=pa.array(~valid)
    )
    return arr.cast(typ) if arr.type != typ else arr


VECTOR_COLUMNS = ("image_emb", "text_emb", "copy_emb")


def chunk_table(rows: list[dict]) -> pa.Table:
    """Rows of one chunk as an Arrow table, vector columns as fixed-size float16 lists (only
    those some row has; :func:`align_table` adds the others as nulls when the part is built)."""
    from pipelines.common import fixed_list_array

    cols: dict[str, Any] = {}
    for name in ("key", "url", "caption", "sha256", "status", "error"):
        cols[name] = pa.array([r[name] for r in rows], pa.string())
    for name in ("width", "height"):
        cols[name] = pa.array([r[name] for r in rows], pa.int32())
    cols["clip_score"] = pa.array([r["clip_score"] for r in rows], pa.float32())
    for name in VECTOR_COLUMNS:
        vecs = [r.get(name) for r in rows]
        first = next((v for v in vecs if v is not None), None)
        if first is None:
            continue
        valid = np.array([v is not None for v in vecs])
        m = np.zeros((len(rows), np.asarray(first).size), np.float16)
        m[valid] = np.stack([np.asarray(v, np.float16).reshape(-1) for v in vecs if v is not None])
        cols[name] = fixed_list_array(m, valid)
    return pa.table(cols)


def align_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table``'s columns in ``schema``'s order and types; missing columns are nulls."""
    n = table.num_rows
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if f.name in VECTOR_COLUMNS and col.type.list_size != f.type.list_size:
                raise ValueError(
                    f"{f.name}: embedding of length {col.type.list_size}, expected "
                    f"{f.type.list_size}"
                )
            cols.append(col.cast(f.type))
        else:
            cols.append(pa.nulls(n, f.type))
    return pa.table(cols, schema=schema)


class WritePartFn(beam.DoFn):
    """(shard, [rows and one manifest]) -> part written via ``writer`` -> per-part stats.

    Refuses to write a part whose keys differ from those its reader saw (lost or duplicated
    rows are a bug, never silently written).
    """

    def __init__(self, writer: PartWriter, schema: pa.Schema) -> None:
        self.writer = writer
        self.schema = schema

    def process(self, element: tuple[int, Iterable[tuple[str, Any]]]) -> Iterator[dict]:
        index, items = element
        rows: list[dict] = []
        tables: list[pa.Table] = []
        manifests: list[dict] = []
        for kind, value in items:
            if kind == "row":
                rows.append(value)
            elif kind == "batch":
                tables.append(align_table(value, self.schema))
            else:
                manifests.append(value)
        if len(manifests) != 1:
            raise RuntimeError(f"part {index}: expected one manifest, got {len(manifests)}")
        manifest = manifests[0]
        if rows or not tables:
            tables.append(rows_to_table(rows, self.schema))
        table = pa.concat_tables(tables).sort_by("key")  # rows_to_table's order
        got = Counter(table.column("key").to_pylist())
        want = Counter(manifest["keys"])
        if got != want:
            missing = sorted((want - got).keys())[:5]
            extra = sorted((got - want).keys())[:5]
            raise RuntimeError(
                f"part {index} ({manifest['source']}): rows do not match the "
                f"samples read (missing {missing}, unexpected {extra})"
            )
        counts = dict(sorted(Counter(table.column("status").to_pylist()).items()))
        info = {
            "source": manifest["source"],
            "counts": counts,
            "extra_keys": manifest["extra_keys"],
            "report": manifest["report"],
        }
        self.writer(index, table, info)
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "parts_written").inc()
        yield {"part": index, "rows": table.num_rows, "counts": counts}


# ---- composites ---------------------------------------------------------------------------------
class ReadOutputs(NamedTuple):
    chunks: beam.PCollection
    failed: beam.PCollection
    manifest: beam.PCollection


class DecodeOutputs(NamedTuple):
    decoded: beam.PCollection
    failed: beam.PCollection


class ReadSamples(beam.PTransform):
    """PCollection[ShardSpec] -> ``ReadOutputs(chunks, failed, manifest)``."""

    def __init__(self, chunk_size: int = 64, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.max_bytes = max_bytes

    def expand(self, specs: beam.PCollection) -> ReadOutputs:
        out = specs | "ReadShard" >> beam.ParDo(ReadShardFn(self.chunk_size, self.max_bytes))
        return ReadOutputs(
            out | "Chunks" >> beam.FlatMap(select, kind=CHUNK),
            out | "FailedRows" >> beam.FlatMap(select, kind=ROW),
            out | "Manifests" >> beam.FlatMap(select, kind=MANIFEST),
        )


class DecodeSamples(beam.PTransform):
    """Chunks of samples -> ``DecodeOutputs(decoded, failed)``."""

    def __init__(
        self, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        super().__init__()
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def expand(self, chunks: beam.PCollection) -> DecodeOutputs:
        out = chunks | "Decode" >> beam.ParDo(DecodeChunkFn(self.max_pixels, self.max_bytes))
        return DecodeOutputs(
            out | "Decoded" >> beam.FlatMap(select, kind=CHUNK),
            out | "FailedRows" >> beam.FlatMap(select, kind=ROW),
        )


class EmbedChunks(beam.PTransform):
    """Decoded chunks -> ``(shard, Arrow table of the chunk's rows)`` with embeddings (a
    failing batch gives ``failed_to_embed`` rows, from the handler)."""

    def __init__(self, handler: ClipModelHandler) -> None:
        super().__init__()
        self.handler = handler

    def expand(self, decoded: beam.PCollection) -> beam.PCollection:
        return decoded | "RunInference" >> RunInference(self.handler.with_no_batching())


class WriteParts(beam.PTransform):
    """``(shard, row)`` rows + ``(shard, table)`` chunks + manifests -> one part per shard ->
    per-part stats. ``pcolls``: ``(rows, manifests)`` or ``(rows, chunks, manifests)``."""

    def __init__(self, writer: PartWriter, schema: pa.Schema) -> None:
        super().__init__()
        self.writer = writer
        self.schema = schema

    def expand(self, pcolls: tuple[beam.PCollection, ...]) -> beam.PCollection:
        rows, *chunks, manifests = pcolls
        tagged = [
            rows | "TagRows" >> beam.MapTuple(_tag, kind="row"),
            *(c | "TagChunks" >> beam.MapTuple(_tag, kind="batch") for c in chunks),
            manifests | "TagManifests" >> beam.MapTuple(_tag, kind="manifest"),
        ]
        return (
            tuple(tagged)
            | "Both" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WritePart" >> beam.ParDo(WritePartFn(self.writer, self.schema))
        )


def _tag(index: int, value: Any, kind: str = "row") -> tuple[int, tuple[str, Any]]:
    return index, (kind, value)


@dataclass(frozen=True)
class EmbedSettings:
    """Pipeline knobs (the model itself comes with the handler)."""

    chunk_size: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES


class EmbedShards(beam.PTransform):
    """The whole stage: PCollection[ShardSpec] -> per-part stats, parts written by ``writer``."""

    def __init__(
        self,
        handler: ClipModelHandler,
        writer: PartWriter,
        schema: pa.Schema,
        settings: EmbedSettings = EmbedSettings(),
    ) -> None:
        super().__init__()
        self.handler = handler
        self.writer = writer
        self.schema = schema
        self.settings = settings

    def expand(self, specs: beam.PCollection) -> beam.PCollection:
        st = self.settings
        read = specs | "Read" >> ReadSamples(st.chunk_size, st.max_bytes)
        decoded = read.chunks | "DecodeSamples" >> DecodeSamples(st.max_pixels, st.max_bytes)
        embedded = decoded.decoded | "Embed" >> EmbedChunks(self.handler)
        rows = (read.failed, decoded.failed) | "AllRows" >> beam.Flatten()
        return (rows, embedded, read.manifest) | "Write" >> WriteParts(self.writer, self.schema)


def run_embed(
    specs: list[ShardSpec],
    handler: ClipModelHandler,
    writer: PartWriter,
    schema: pa.Schema,
    options: Any = None,
    runner: Any = None,
    settings: EmbedSettings = EmbedSettings(),
) -> Any:
    """Build and run the pipeline over ``specs``; returns the finished ``PipelineResult``.
    A Dask cluster whose workers would duplicate rows is refused first
    (:func:`pipelines.dask_checks.check_workers`)."""
    from pipelines.dask_checks import bag_partitions, check_workers, is_dask

    if options is not None and runner is not None:
        check_workers(options, runner)
        options = bag_partitions(options, runner, len(specs))  # one shard per Dask partition
        if is_dask(runner):
            handler = handler.process_cached()
    p = beam.Pipeline(runner=runner, options=options)
    _ = (
        p
        | "Shards" >> beam.Create(specs, reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | "EmbedShards" >> EmbedShards(handler, writer, schema, settings)
    )
    result = p.run()
    result.wait_until_finish()
    client = getattr(result, "client", None)  # the Dask runner's own client: close it now
    if client is not None and hasattr(client, "close"):
        client.close()
    return result


def metric_totals(result: Any) -> dict[str, Any]:
    """Counters and distribution sums of the embed namespace from a finished pipeline."""
    out: dict[str, Any] = {}
    try:
        from apache_beam.metrics.metric import MetricsFilter

        m = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception:  # noqa: BLE001 - some runners do not report metrics
        return out
    for c in m.get("counters", []):
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (c.committed or 0)
    for d in m.get("distributions", []):
        val = d.committed
        if val is not None:
            out[d.key.metric.name + "_sum"] = out.get(d.key.metric.name + "_sum", 0) + val.sum
            out[d.key.metric.name + "_count"] = out.get(d.key.metric.name + "_count", 0) + val.count
    return out
