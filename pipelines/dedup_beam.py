"""Partitioned near-duplicate detection as an Apache Beam pipeline (for data past one machine).

The same algorithm as ``detectors.dedup.partitioned_edges``, one step per Beam transform:

1. **sample**: the ``max_sample`` rows with the smallest stable key hash
   (``CombineGlobally(TopCombineFn)``), the same deterministic sample as
   ``detectors.dedup.hash_sample`` on one machine;
2. **train**: spherical FAISS k-means on the first ``sample_per_partition x K`` of them
   (``K = round(N / partition_size)``, N from ``Count.Globally``), once, as a singleton side
   input;
3. **assign**: every vector to its nearest centroid (its base partition) and to the probe
   partitions whose boundary is within the duplicate radius (``assign_partitions``); above
   ``dd.FLAT_ASSIGN_MAX`` centroids (``assign="auto"``) each vector scores only its nearest
   centroids from an HNSW graph built once by the train step and broadcast serialized;
4. **GroupByKey(partition)** then **search**: exact FAISS range search of the partition against
   itself plus its probe vectors (``search_partition``), emitting a connectivity certificate
   (spanning forest + each vector's best partner). Worker memory is bounded by one partition;
5. **components**: global connected components over the emitted edges (scipy), group ids
   numbered by each group's smallest key, each member's best partner;
6. **representative**: joined with a per-row priority (``CoGroupByKey``), grouped by group id;
   highest priority wins, ties the smallest key.

Output rows (dicts): ``key, group_id, group_size, kind="near", representative_key,
is_representative, nearest_key, similarity``, equal row for row to the single-machine partitioned
path on the same input (same sample, centroids, partitions and per-partition function; equality
holds up to floating-point ties at partition boundaries, which neither path resolves
meaningfully). Step 5 holds the edge list in one worker: that list is linear in the number of
duplicated rows (at most two edges per row per partition), e.g. ~2.4 GB for 10^8 edges.

Runs on the DirectRunner by default; any Beam runner through standard pipeline options. Nothing
is emitted from ``finish_bundle`` on runners that drop such outputs (Beam 2.77's DaskRunner):
see :data:`BATCHING` and :func:`run_near_dedup`. On the DaskRunner, whose side inputs are
recomputed per bundle (:func:`recomputes_side_inputs`), :func:`run_near_dedup` runs steps 1-2
as a first pipeline (:func:`fit_model`) and gives the model to the second as a plain argument.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from detectors import dedup as dd

logger = logging.getLogger(__name__)

NAME = "dedup_beam_v1"

OUTPUT_COLUMNS = (
    "key",
    "group_id",
    "group_size",
    "kind",
    "representative_key",
    "is_representative",
    "nearest_key",
    "similarity",
)

Row = tuple[str, np.ndarray, float]
"""An input element: (key, L2-normalised vector, priority for the keep-one policy)."""


def train_model(
    sample: Sequence[tuple[str, np.ndarray]],
    n: int,
    *,
    threshold: float,
    partition_size: int,
    sample_per_partition: int,
    max_sample: int,
    niter: int,
    seed: int,
    assign: str = "auto",
) -> dict[str, Any]:
    """Centroids from the hash-ordered sample (``n`` = row count), with what assignment needs:
    their distance matrix (flat) or a serialized HNSW graph over them (``assign="hnsw"``, the
    default above ``dd.FLAT_ASSIGN_MAX`` centroids, where a K x K matrix no longer fits)."""
    sample = sorted(sample, key=lambda kv: (dd.stable_hash64(kv[0]), kv[0]))
    k = dd.choose_n_partitions(max(n, 1), partition_size)
    size = dd.partition_sample_size(n, partition_size, sample_per_partition, max_sample)
    if not sample:
        return {"centroids": None, "cdist": None, "index": None, "k": 0}
    vecs = np.stack([np.asarray(v) for _, v in sample[:size]])
    centroids = dd.train_partitioner(vecs, k, niter=niter, seed=seed)
    k = int(centroids.shape[0])
    if dd.resolve_assign(assign, k) == "hnsw" and k > 1:
        import faiss

        index = faiss.serialize_index(dd.centroid_index(centroids))
        return {
            "centroids": centroids,
            "cdist": None,
            "index": index,
            "k": k,
            "threshold": threshold,
        }
    return {
        "centroids": centroids,
        "cdist": dd.centroid_distances(centroids),
        "index": None,
        "k": k,
        "threshold": threshold,
    }


_INDEX_CACHE: dict[str, Any] = {}


def _model_index(model: dict[str, Any]) -> Any:
    """The model's HNSW graph, deserialized once per worker process (None for flat). The same
    blob object is recognised without reading it; a fresh copy (side inputs may arrive as one
    per bundle) is matched by a content hash before deserializing again."""
    blob = model.get("index")
    if blob is None:
        return None
    if _INDEX_CACHE.get("blob") is blob:
        return _INDEX_CACHE["index"]
    raw = np.asarray(blob, dtype=np.uint8)
    key = hashlib.blake2b(raw.tobytes(), digest_size=16).digest()
    if _INDEX_CACHE.get("key") != key:
        import faiss

        index = faiss.deserialize_index(raw)
        index.hnsw.efSearch = dd.HNSW_EF_SEARCH
        _INDEX_CACHE.update(key=key, index=index)
    _INDEX_CACHE["blob"] = blob
    return _INDEX_CACHE["index"]


def _beam():
    import apache_beam as beam

    return beam


def make_transforms() -> dict[str, Any]:
    """Build the DoFns / PTransform lazily so importing this module does not import Beam."""
    beam = _beam()
    from apache_beam.metrics import Metrics

    class AssignPartitions(beam.DoFn):
        """A batch of rows -> (partition, (key, vec, is_base)) for base and probe partitions."""

        def __init__(self, threshold: float, max_probes: int, probe_scale: float) -> None:
            self.threshold = threshold
            self.max_probes = max_probes
            self.probe_scale = probe_scale
            self.truncated = Metrics.counter(NAME, "probe_lists_truncated")
            self.probes = Metrics.counter(NAME, "probe_copies")

        def process(self, batch: list[Row], model: dict[str, Any]) -> Iterator[tuple]:
            if not batch:
                return
            keys = [r[0] for r in batch]
            x = np.stack([np.asarray(r[1]) for r in batch])
            primary, probes, needed = dd.assign_partitions(
                x,
                model["centroids"],
                self.threshold,
                max_probes=self.max_probes,
                probe_scale=self.probe_scale,
                cdist=model["cdist"],
                index=_model_index(model),
            )
            self.truncated.inc(int(np.sum(needed > self.max_probes)))
            for r, key in enumerate(keys):
                yield int(primary[r]), (key, x[r], True)
                for q in probes[r]:
                    if q < 0:
                        break
                    self.probes.inc()
                    yield int(q), (key, x[r], False)

    class SearchPartition(beam.DoFn):
        """(partition, members) -> edges (key_i, key_j, sim), key_i < key_j."""

        def __init__(self, threshold: float) -> None:
            self.threshold = threshold
            self.pairs = Metrics.counter(NAME, "pairs_above_threshold")
            self.size = Metrics.distribution(NAME, "partition_rows")

        def process(self, element: tuple[int, Iterable[tuple]]) -> Iterator[tuple]:
            _, items = element
            items = sorted(items, key=lambda t: t[0])
            self.size.update(len(items))
            base = [t for t in items if t[2]]
            query = [t for t in items if not t[2]]
            if not base or len(items) < 2:
                return
            e = dd.search_partition(
                np.array([t[0] for t in base]),
                np.stack([t[1] for t in base]),
                self.threshold,
                np.array([t[0] for t in query]) if query else None,
                np.stack([t[1] for t in query]) if query else None,
            )
            self.pairs.inc(e.n_pairs)
            for a, b, s in zip(e.i.tolist(), e.j.tolist(), e.sim.tolist()):
                yield str(a), str(b), float(s)

    def components(edges: list[tuple[str, str, float]]) -> Iterator[tuple[str, dict]]:
        """All edges -> (key, {group_id, group_size, nearest_key, similarity})."""
        if not edges:
            return
        a = np.array([e[0] for e in edges])
        b = np.array([e[1] for e in edges])
        s = np.array([e[2] for e in edges], dtype=np.float32)
        keys, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
        m = a.size
        ei = dd.Edges.concat([dd.Edges(inv[:m].astype(np.int64), inv[m:].astype(np.int64), s)])
        labels = dd.components(keys.size, ei)
        nbr, sim = dd.best_partner(keys.size, ei)
        sizes = np.bincount(labels[labels >= 0])
        for r in np.flatnonzero(labels >= 0):
            yield (
                str(keys[r]),
                {
                    "group_id": int(labels[r]),
                    "group_size": int(sizes[labels[r]]),
                    "nearest_key": str(keys[nbr[r]]),
                    "similarity": float(sim[r]),
                },
            )

    def representative(element: tuple[int, Iterable[tuple]]) -> Iterator[dict[str, Any]]:
        """(group_id, [(key, info, priority)]) -> output rows with the kept member."""
        _, members = element
        members = list(members)
        best = min(members, key=lambda t: (-_prio(t[2]), t[0]))
        for key, info, _ in sorted(members, key=lambda t: t[0]):
            yield {
                "key": key,
                "group_id": info["group_id"],
                "group_size": info["group_size"],
                "kind": "near",
                "representative_key": best[0],
                "is_representative": key == best[0],
                "nearest_key": info["nearest_key"],
                "similarity": info["similarity"],
            }

    def join(element: tuple[str, dict[str, list]]) -> Iterator[tuple[int, tuple]]:
        key, d = element
        prios = list(d["priority"])
        for info in d["group"]:
            prio = prios[0] if prios else float("nan")
            yield info["group_id"], (key, info, prio)

    class PartitionedNearDuplicates(beam.PTransform):
        """PCollection[(key, vec, priority)] -> PCollection[dict] near-duplicate group rows."""

        def __init__(
            self,
            threshold: float,
            *,
            partition_size: int = dd.PARTITION_SIZE,
            max_probes: int = dd.MAX_PROBES,
            probe_scale: float = dd.PROBE_SCALE,
            sample_per_partition: int = dd.SAMPLE_PER_PARTITION,
            max_sample: int = dd.MAX_SAMPLE,
            niter: int = 10,
            seed: int = 0,
            min_batch: int = 256,
            max_batch: int = 4096,
            batching: str = "auto",
            assign: str = "auto",
            model: dict[str, Any] | None = None,
        ) -> None:
            super().__init__()
            if model is not None and "n" not in model:
                raise ValueError(
                    "a precomputed model needs its row count under 'n' "
                    "(what FitPartitionModel / fit_model return)"
                )
            self.model = model
            if batching not in BATCHING:
                raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
            dd.resolve_assign(assign, 0)  # validates
            self.assign = assign
            self.batching = batching
            self.threshold = threshold
            self.partition_size = partition_size
            self.max_probes = max_probes
            self.probe_scale = probe_scale
            self.sample_per_partition = sample_per_partition
            self.max_sample = max_sample
            self.niter = niter
            self.seed = seed
            self.min_batch = min_batch
            self.max_batch = max_batch

        def expand(self, rows: Any) -> Any:
            from apache_beam.pvalue import AsSingleton

            if self.model is None:
                fitted = rows | "Fit" >> FitPartitionModel(
                    self.threshold,
                    partition_size=self.partition_size,
                    sample_per_partition=self.sample_per_partition,
                    max_sample=self.max_sample,
                    niter=self.niter,
                    seed=self.seed,
                    assign=self.assign,
                )
                model_arg: Any = AsSingleton(fitted)
                count_arg: Any = AsSingleton(fitted | "N" >> beam.Map(lambda m: m["n"]))
            else:
                # precomputed (two-pass mode): plain arguments, no side inputs
                model_arg, count_arg = self.model, int(self.model["n"])
            batching = self.batching
            if batching == "auto":
                batching = "shuffle" if drops_finish_bundle_outputs(rows.pipeline) else "bundle"
            if batching == "bundle":
                batches = rows | "Batch" >> beam.BatchElements(
                    min_batch_size=self.min_batch, max_batch_size=self.max_batch
                )
            else:
                batches = (
                    rows
                    | "Bucket" >> beam.Map(_bucket, count_arg, self.max_batch)
                    | "GroupBuckets" >> beam.GroupByKey()
                    | "Batches" >> beam.FlatMap(_chunks, self.max_batch)
                )
            edges = (
                batches
                | "Assign"
                >> beam.ParDo(
                    AssignPartitions(self.threshold, self.max_probes, self.probe_scale), model_arg
                )
                | "GroupByPartition" >> beam.GroupByKey()
                | "Search" >> beam.ParDo(SearchPartition(self.threshold))
            )
            groups = (
                edges
                | "AllEdges" >> beam.combiners.ToList()
                | "Components" >> beam.FlatMap(components)
            )
            priority = rows | "Priority" >> beam.Map(lambda r: (r[0], r[2]))
            return (
                {"group": groups, "priority": priority}
                | "JoinPriority" >> beam.CoGroupByKey()
                | "ByGroup" >> beam.FlatMap(join)
                | "GroupMembers" >> beam.GroupByKey()
                | "Representative" >> beam.FlatMap(representative)
            )

    class FitPartitionModel(beam.PTransform):
        """PCollection[(key, vec, priority)] -> one dict: :func:`train_model`'s model plus the
        row count ``n`` (steps 1-2 of the module doc)."""

        def __init__(
            self,
            threshold: float,
            *,
            partition_size: int = dd.PARTITION_SIZE,
            sample_per_partition: int = dd.SAMPLE_PER_PARTITION,
            max_sample: int = dd.MAX_SAMPLE,
            niter: int = 10,
            seed: int = 0,
            assign: str = "auto",
        ) -> None:
            super().__init__()
            self.kw = dict(
                threshold=threshold,
                partition_size=partition_size,
                sample_per_partition=sample_per_partition,
                max_sample=max_sample,
                niter=niter,
                seed=seed,
                assign=assign,
            )

        def expand(self, rows: Any) -> Any:
            from apache_beam.pvalue import AsSingleton
            from apache_beam.transforms.combiners import TopCombineFn

            count = rows | "Count" >> beam.combiners.Count.Globally()
            # CombineGlobally(TopCombineFn), not Top.Smallest: Top emits per-bundle heaps from
            # finish_bundle, which the DaskRunner drops
            sample = (
                rows
                | "KeyVec" >> beam.Map(lambda r: (r[0], r[1]))
                | "HashSample"
                >> beam.CombineGlobally(
                    TopCombineFn(self.kw["max_sample"], key=_sample_order, reverse=True)
                )
            )
            # single-element main input: the side input is read once
            return sample | "Train" >> beam.Map(
                lambda smp, n, **kw: {**train_model(smp, n, **kw), "n": int(n)},
                AsSingleton(count),
                **self.kw,
            )

    return {
        "AssignPartitions": AssignPartitions,
        "SearchPartition": SearchPartition,
        "PartitionedNearDuplicates": PartitionedNearDuplicates,
        "FitPartitionModel": FitPartitionModel,
    }


BATCHING = ("auto", "bundle", "shuffle")
"""How rows are batched for the partition assignment: ``bundle`` = ``BatchElements`` (no
shuffle; its last batch per bundle is emitted from ``finish_bundle``), ``shuffle`` = rows hashed
into ~N/max_batch buckets and grouped (one extra shuffle, emits only from ``process``), ``auto``
= ``shuffle`` on runners that drop ``finish_bundle`` outputs (the DaskRunner), else ``bundle``."""


def drops_finish_bundle_outputs(pipeline: Any) -> bool:
    """Beam 2.77's DaskRunner snapshots a bundle's outputs before ``finish_bundle`` runs, so
    anything emitted there is lost (see tests/test_dask.py)."""
    return type(getattr(pipeline, "runner", None)).__name__ == "DaskRunner"


def _sample_order(kv: tuple[str, Any]) -> tuple[int, str]:
    return dd.stable_hash64(kv[0]), kv[0]


def _bucket(row: Row, n: int, max_batch: int) -> tuple[int, Row]:
    n_buckets = max(1, -(-int(n) // max_batch))
    return dd.stable_hash64(row[0]) % n_buckets, row


def _chunks(element: tuple[int, Iterable[Row]], max_batch: int) -> Iterator[list[Row]]:
    _, rows = element
    rows = list(rows)
    for i in range(0, len(rows), max_batch):
        yield rows[i : i + max_batch]


def _prio(p: float | None) -> float:
    return float("-inf") if p is None or p != p else float(p)


def PartitionedNearDuplicates(threshold: float, **kwargs: Any) -> Any:  # noqa: N802 - a PTransform
    """The composite transform: ``rows | PartitionedNearDuplicates(0.95)``; see the module doc.

    ``model=`` (from :func:`fit_model`) skips the fit steps and passes the model to the
    assignment as a plain argument instead of a side input (two-pass mode)."""
    return make_transforms()["PartitionedNearDuplicates"](threshold, **kwargs)


def FitPartitionModel(threshold: float, **kwargs: Any) -> Any:  # noqa: N802 - a PTransform
    """``rows | FitPartitionModel(0.95)``: one dict, the partition model plus the row count."""
    return make_transforms()["FitPartitionModel"](threshold, **kwargs)


FIT_PARAMS = ("partition_size", "sample_per_partition", "max_sample", "niter", "seed", "assign")


def recomputes_side_inputs(runner: Any) -> bool:
    """Beam 2.77's DaskRunner materialises a side input by computing its whole upstream graph
    again for every bundle that reads it (``DaskBagWindowedIterator`` calls ``list(bag)``), so a
    per-row side input costs O(N) per bundle: O(N^2) in all (measured: a ``Map`` with an
    ``AsSingleton(Count)`` side input took 2.1 s for 1000 rows, 22 s for 4000, 78 s for 8000).
    Pipelines there run in two passes (:func:`fit_model`, then ``model=``). ``runner``: a
    runner object or its name (``BeamSetup.new_runner()`` gives the DaskRunner by name)."""
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1] == "DaskRunner"


def save_model(model: dict[str, Any], path: str) -> str:
    """Write a fitted model (arrays + scalars, ``.npz``, no pickle) atomically through Beam's
    ``FileSystems``; returns ``path``."""
    import io
    import uuid

    from apache_beam.io.filesystems import FileSystems

    arrays = {k: np.asarray(v) for k, v in model.items() if v is not None}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp) as f:
        f.write(buf.getvalue())
    FileSystems.rename([tmp], [path])
    return path


def load_model(path: str) -> dict[str, Any]:
    """Read :func:`save_model`'s file back into a model dict."""
    import io

    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        z = np.load(io.BytesIO(f.read()), allow_pickle=False)
    model: dict[str, Any] = {"centroids": None, "cdist": None, "index": None}
    for k in z.files:
        v = z[k]
        model[k] = v.item() if v.ndim == 0 else v
    for k in ("k", "n"):
        if k in model:
            model[k] = int(model[k])
    if "threshold" in model:
        model["threshold"] = float(model["threshold"])
    return model


def fit_model(
    read_rows: Any, model_path: str, threshold: float, setup: Any, **params: Any
) -> dict[str, Any]:
    """Pass 1 of the two-pass mode: ``read_rows(pipeline) -> PCollection`` of rows, fitted
    and written to ``model_path`` by a worker (from ``process``), then read back here.
    ``params``: the :data:`FIT_PARAMS` among ``PartitionedNearDuplicates``'s options."""
    beam = _beam()
    fit = {k: v for k, v in params.items() if k in FIT_PARAMS}
    p = beam.Pipeline(runner=setup.new_runner(), options=setup.options)
    (
        read_rows(p)
        | "FitModel" >> FitPartitionModel(threshold, **fit)
        | "SaveModel" >> beam.Map(save_model, model_path)
    )
    result = p.run()
    result.wait_until_finish()
    _close_client(result)
    return load_model(model_path)


def _close_client(result: Any) -> None:
    client = getattr(result, "client", None)  # the DaskRunner never closes its own
    if client is not None:
        client.close()


def rows_from_table(
    table: Any, vector_column: str = "image_emb", priority: np.ndarray | None = None
) -> Iterator[Row]:
    """(key, vector, priority) rows from an Arrow table/record batch; rows with a null vector
    are skipped (they have no embedding to compare)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(vector_column) if isinstance(table, pa.Table) else table[vector_column]
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    keys = table.column("key").to_pylist()
    kept = col.filter(pa.array(valid))
    # Beam's parquet reader may hand fixed-size lists over as plain lists: check the lengths
    lengths = pc.list_value_length(kept).to_numpy(zero_copy_only=False)
    if lengths.size and np.any(lengths != lengths[0]):
        raise ValueError(
            f"{vector_column}: vectors of different lengths ({sorted(set(lengths.tolist()))[:5]})"
        )
    flat = pc.list_flatten(kept).to_numpy(zero_copy_only=False)
    vecs = flat.reshape(len(kept), -1) if len(kept) else flat.reshape(0, 0)
    rows = np.flatnonzero(valid)
    for r, v in zip(rows, vecs):
        p = float("nan") if priority is None else float(priority[r])
        yield keys[r], v, p


OUTPUT_SCHEMA_FIELDS = (
    ("key", "string"),
    ("group_id", "int64"),
    ("group_size", "int32"),
    ("kind", "string"),
    ("representative_key", "string"),
    ("is_representative", "bool"),
    ("nearest_key", "string"),
    ("similarity", "float32"),
)


def output_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(n, pa.type_for_alias(t)) for n, t in OUTPUT_SCHEMA_FIELDS])


def read_parquet_batches(
    path: str, columns: Sequence[str], batch_size: int = 65536
) -> Iterator[Any]:
    """Record batches of one parquet file, read with pyarrow through Beam's ``FileSystems``
    (local paths, gs://, s3://...). Used instead of ``ReadFromParquetBatched``, whose source
    the DaskRunner cannot read."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        pf = pq.ParquetFile(f)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        yield from pf.iter_batches(batch_size=batch_size, columns=list(columns))


def write_output_shard(
    element: tuple[int, Iterable[dict]], prefix: str, n_shards: int
) -> Iterator[str]:
    """(shard, rows) -> ``{prefix}-SSSSS-of-NNNNN.parquet``, rows sorted by key, written to a
    temporary name and renamed, so a retried bundle rewrites the same file and a reader never
    sees half a shard. A sink that emits only from ``process`` (Beam's file sinks emit their
    temporary names from ``finish_bundle``, which the DaskRunner drops)."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    shard, rows = element
    rows = sorted(rows, key=lambda r: r["key"])
    table = pa.Table.from_pylist(rows, schema=output_schema())
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    path = f"{prefix}-{shard:05d}-of-{n_shards:05d}.parquet"
    tmp = f"{prefix}-{shard:05d}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp) as f:
        f.write(buf.getvalue().to_pybytes())
    FileSystems.rename([tmp], [path])
    yield path


def run_near_dedup(
    parquet_files: Sequence[str],
    output_prefix: str,
    threshold: float,
    *,
    priority_column: str | None = None,
    setup: Any = None,
    n_output_shards: int = 8,
    two_pass: bool | None = None,
    vector_column: str = "image_emb",
    **params: Any,
) -> None:
    """Read embedding parts, run :class:`PartitionedNearDuplicates`, write parquet shards to
    ``output_prefix-SSSSS-of-NNNNN.parquet`` (columns :data:`OUTPUT_COLUMNS`; a shard with no
    rows is not written).

    Every step emits only from ``process`` (files read with pyarrow from ``Create(paths)``,
    shards written by a keyed ``GroupByKey``), so the pipeline gives the same result on every
    runner, the DaskRunner included. ``setup``: a ``pipelines.beam_options.BeamSetup`` (runner
    + options); default DirectRunner. ``vector_column``: the embedding searched (``image_emb``
    or the copy descriptor ``copy_emb``). ``two_pass`` (default: on runners where
    :func:`recomputes_side_inputs`): fit the partition model in a first pipeline (written to
    ``output_prefix-model.npz``), then run the search with it as a plain argument.
    """
    from pipelines.beam_options import beam_setup

    beam = _beam()
    columns = ["key", vector_column] + ([priority_column] if priority_column else [])

    def to_rows(batch: Any) -> Iterator[Row]:
        pr = None
        if priority_column:
            pr = np.asarray(
                batch.column(priority_column).to_numpy(zero_copy_only=False), dtype=np.float64
            )
        yield from rows_from_table(batch, vector_column, pr)

    if setup is None:
        with beam_setup([]) as default_setup:
            return run_near_dedup(
                parquet_files,
                output_prefix,
                threshold,
                priority_column=priority_column,
                setup=default_setup,
                n_output_shards=n_output_shards,
                two_pass=two_pass,
                vector_column=vector_column,
                **params,
            )
    n = max(1, int(n_output_shards))

    def read_rows(p: Any) -> Any:
        return (
            p
            | "Files" >> beam.Create(sorted(parquet_files))
            | "Read" >> beam.FlatMap(read_parquet_batches, columns)
            | "ToRows" >> beam.FlatMap(to_rows)
        )

    if two_pass is None:
        two_pass = recomputes_side_inputs(setup.new_runner())
    if two_pass:
        logger.info(
            "near-dedup in two passes: fitting the partition model first (%s "
            "recomputes side inputs per bundle)",
            setup.runner_name,
        )
        params = {
            **params,
            "model": fit_model(read_rows, f"{output_prefix}-model.npz", threshold, setup, **params),
        }
    with beam.Pipeline(runner=setup.new_runner(), options=setup.options) as p:
        (
            read_rows(p)
            | "NearDuplicates" >> PartitionedNearDuplicates(threshold, **params)
            | "Shard" >> beam.Map(lambda r: (dd.stable_hash64(r["key"]) % n, r))
            | "GroupShards" >> beam.GroupByKey()
            | "Write" >> beam.FlatMap(write_output_shard, output_prefix, n)
        )
