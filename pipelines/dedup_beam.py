"""Partitioned near-duplicate detection as an Apache Beam pipeline (for data past one machine).

The same algorithm as ``detectors.dedup.partitioned_edges``, one step per Beam transform. Rows
travel as **Arrow record batches** (columns ``key``, ``vec`` = fixed-size list, ``priority``),
a few thousand rows per element, so Beam's cost is paid per batch, not per row:

1. **sample**: the ``max_sample`` rows with the smallest stable key hash (each batch keeps its
   own bottom rows, ``CombineGlobally(BottomKFn)`` merges them), the same deterministic sample
   as ``detectors.dedup.hash_sample`` on one machine;
2. **train**: spherical FAISS k-means on the first ``sample_per_partition x K`` of them
   (``K = round(N / partition_size)``, N summed over the batches), once;
3. **assign**: every vector of a batch to its nearest centroid (its base partition) and to the
   probe partitions whose boundary is within the duplicate radius (``assign_partitions``);
   above ``dd.FLAT_ASSIGN_MAX`` centroids (``assign="auto"``) each vector scores only its
   nearest centroids from an HNSW graph built once by the train step and broadcast serialized.
   The batch is cut into one sub-batch per *search group* (partition ``p`` belongs to group
   ``p % G``, ``G ~ N / group_rows``), base and probe copies together;
4. **GroupByKey(group)** then **search**: per partition of the group, exact FAISS range search
   of the partition against itself plus its probe vectors (``search_partition``), emitting a
   connectivity certificate (spanning forest + each vector's best partner) and the priority of
   every key that has an edge. Worker memory is bounded by one group;
5. **components**: global connected components over the emitted edges (scipy), group ids
   numbered by each group's smallest key, each member's best partner, and the representative
   (highest priority, ties the smallest key): output batches with the columns of
   :data:`OUTPUT_COLUMNS`.

Output rows are equal row for row to the single-machine partitioned path on the same input
(same sample, centroids, partitions and per-partition function; equality holds up to
floating-point ties at partition boundaries, which neither path resolves meaningfully). Step 5
holds the edge list in one worker: that list is linear in the number of duplicated rows (at
most two edges per row per partition), e.g. ~2.4 GB for 10^8 edges.

Runs on the DirectRunner by default; any Beam runner through standard pipeline options. Nothing
is emitted from ``finish_bundle`` (Beam 2.77's DaskRunner drops such outputs; see
:data:`BATCHING` and :func:`run_near_dedup`). On the DaskRunner, whose side inputs are
recomputed per bundle (:func:`recomputes_side_inputs`), :func:`run_near_dedup` runs steps 1-2
as a first pipeline (:func:`fit_model`) and gives the model to the second as a plain argument.

Two entry points: :class:`NearDuplicateBatches` (record batches in, output batches out: what
:func:`run_near_dedup` runs) and :class:`PartitionedNearDuplicates` (``(key, vector,
priority)`` tuples in, output dicts out; batches the rows first).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton

from detectors import dedup as dd
from pipelines.common import atomic_write_uri, vectors

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
"""A row-API input element: (key, L2-normalised vector, priority for the keep-one policy)."""

BATCH_ROWS = 8192
"""Rows per record batch read from parquet (and the largest row-API batch)."""
GROUP_ROWS = 16_384
"""Rows (base copies) per search group, the unit of the partition shuffle."""
MAX_GROUPS = 4096
"""At most this many search groups, however large N: a batch is cut into at most this many
sub-batches (bigger groups beyond ~6.7 x 10^7 rows)."""

BATCHING = ("auto", "bundle", "shuffle")
"""How the row API batches tuples: ``bundle`` = ``BatchElements`` (no shuffle; its last batch
per bundle is emitted from ``finish_bundle``), ``shuffle`` = rows hashed into ~N/max_batch
buckets and grouped (one extra shuffle, emits only from ``process``), ``auto`` = ``shuffle`` on
runners that drop ``finish_bundle`` outputs (the DaskRunner), else ``bundle``. Record-batch
inputs are not re-batched."""

FIT_PARAMS = ("partition_size", "sample_per_partition", "max_sample", "niter", "seed", "assign")


# ---------------------------------------------------------------------------------------------
# record batches
# ---------------------------------------------------------------------------------------------
def make_batch(keys: Sequence[str], x: np.ndarray, priority: np.ndarray | None = None) -> Any:
    """A record batch of rows: ``key`` (string), ``vec`` (fixed-size list of ``x``'s float
    dtype), ``priority`` (float64, NaN = none)."""
    x = np.asarray(x)
    n = len(keys)
    d = x.shape[1] if x.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(x).reshape(-1))
    pr = np.full(n, np.nan) if priority is None else np.asarray(priority, dtype=np.float64)
    return pa.RecordBatch.from_arrays(
        [pa.array(list(keys), pa.string()), pa.FixedSizeListArray.from_arrays(flat, d), pr],
        names=["key", "vec", "priority"],
    )


def batch_arrays(batch: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys as a unicode array, vectors n x d, priorities)`` of a record batch."""
    vec = batch.column("vec")
    x = vectors(vec, dtype=vec.type.value_type.to_pandas_dtype(), nulls=False, name="vec").matrix
    keys = np.asarray(batch.column("key").to_numpy(zero_copy_only=False).astype(str))
    prio = batch.column("priority").to_numpy(zero_copy_only=False).astype(np.float64)
    return keys, x, prio


def as_batch(element: Any) -> Any:
    """A record batch from an element: a batch as is, a list of :data:`Row` tuples, one tuple."""
    if isinstance(element, pa.RecordBatch):
        return element
    if isinstance(element, pa.Table):
        return element.combine_chunks().to_batches()[0] if element.num_rows else None
    rows = [element] if isinstance(element, tuple) else list(element)
    if not rows:
        return None
    x = np.stack([np.asarray(r[1]) for r in rows])
    pr = np.array([_prio_or_nan(r[2]) for r in rows], dtype=np.float64)
    return make_batch([r[0] for r in rows], x, pr)


def _prio_or_nan(p: Any) -> float:
    return float("nan") if p is None else float(p)


def batch_from_table(
    table: Any, vector_column: str = "image_emb", priority_column: str | None = None
) -> Any:
    """A record batch (``key``, ``vec``, ``priority``) from an embeddings table or batch; rows
    with a null vector are skipped (they have no embedding to compare). None if no row is
    left."""
    import pyarrow.compute as pc

    col = table.column(vector_column)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    valid = col.is_valid()
    kept = col.filter(valid)
    if len(kept) == 0:
        return None
    # readers may hand fixed-size lists over as plain lists: check the lengths
    if not pa.types.is_fixed_size_list(kept.type):
        lengths = pc.list_value_length(kept).to_numpy(zero_copy_only=False)
        if np.any(lengths != lengths[0]):
            raise ValueError(
                f"{vector_column}: vectors of different lengths "
                f"({sorted(set(lengths.tolist()))[:5]})"
            )
        kept = pa.FixedSizeListArray.from_arrays(pc.list_flatten(kept), int(lengths[0]))
    keys = _filtered(table.column("key"), valid)
    if priority_column:
        prio = pc.cast(_filtered(table.column(priority_column), valid), pa.float64())
        prio = pc.fill_null(prio, float("nan"))
    else:
        prio = pa.array(np.full(len(kept), np.nan))
    return pa.RecordBatch.from_arrays(
        [pc.cast(keys, pa.string()), kept, prio], names=["key", "vec", "priority"]
    )


def _filtered(col: Any, mask: Any) -> Any:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.filter(mask)


def rows_from_table(
    table: Any, vector_column: str = "image_emb", priority: np.ndarray | None = None
) -> Iterator[Row]:
    """(key, vector, priority) tuples from an Arrow table/record batch (the row API); rows with
    a null vector are skipped."""
    col = table.column(vector_column)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False))
    batch = batch_from_table(table, vector_column)
    if batch is None:
        return
    keys, x, _ = batch_arrays(batch)
    rows = np.flatnonzero(valid)
    for r, k, v in zip(rows, keys.tolist(), x):
        yield k, v, float("nan") if priority is None else float(priority[r])


# ---------------------------------------------------------------------------------------------
# steps 1-2: sample and train
# ---------------------------------------------------------------------------------------------
def _hashes(keys: np.ndarray) -> np.ndarray:
    return np.fromiter((dd.stable_hash64(k) for k in keys.tolist()), np.uint64, len(keys))


def bottom_k(batch: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` rows of a batch with the smallest ``(stable_hash64(key), key)``, in that
    order: ``(hashes, keys, vectors)``."""
    batch = None if batch is None else as_batch(batch)
    if batch is None or batch.num_rows == 0:
        return np.zeros(0, np.uint64), np.zeros(0, str), np.zeros((0, 0), np.float32)
    keys, x, _ = batch_arrays(batch)
    return _compact(_hashes(keys), keys, x, k)


def _compact(h: np.ndarray, keys: np.ndarray, x: np.ndarray, k: int) -> tuple:
    """The ``k`` smallest ``(hash, key)``, in that order (keys break hash ties, which 64-bit
    hashes practically never have: the string sort runs only then)."""
    order = np.argsort(h, kind="stable")
    hs = h[order]
    if hs.size > 1 and np.any(hs[1:] == hs[:-1]):
        order = np.lexsort((keys, h))
    order = order[:k]
    return h[order], keys[order], x[order]


SAMPLE_KEEP_MIN = 4096
"""A batch always passes its this many smallest hashes to the sample combine."""
SAMPLE_MARGIN = 2.0
"""... and every row whose hash is below ``SAMPLE_MARGIN x sample_per_partition /
partition_size`` of the hash range: about twice the share of rows the sample can take (it
never takes more than ``sample_per_partition`` rows per ``partition_size``), so the combine
sees ~13% of the vectors instead of all of them."""
SAMPLE_FANOUT = 64
"""Batches are combined in this many groups first, then the groups' samples once: no worker
ever holds more than ``SAMPLE_FANOUT x max_sample`` sample rows."""
_U64 = float(2**64)


def summarize(
    batch: Any, k: int, share: float = 1.0, keep_min: int = SAMPLE_KEEP_MIN
) -> tuple[int, tuple, float | int]:
    """A batch -> ``(rows, (hashes, keys, vectors) of the rows that may be in the sample,
    smallest hash left out)``, what :class:`BottomKFn` merges: the batch's ``keep_min``
    smallest hashes and every row below ``share`` of the hash range, at most ``k``."""
    h, keys, x = bottom_k(batch, k)
    n = _batch_count(batch)
    keep = np.arange(h.size) < keep_min
    if share < 1.0:
        keep |= h < np.uint64(min(int(share * _U64), 2**64 - 1))
    left_out: float | int = int(h[~keep][0]) if (~keep).any() else float("inf")
    if n > h.size and h.size:  # rows beyond the batch's bottom k were left out too
        left_out = min(left_out, int(h[-1]))
    return n, (h[keep], keys[keep], x[keep]), left_out


class BottomKFn(beam.CombineFn):
    """Merges :func:`summarize` outputs into ``(N, global bottom k, smallest hash left out)``:
    the row count and the hash sample in one combine, composable (its output is a valid
    input, for a combine in two levels). No side input; emits only from ``extract_output``:
    safe on the DaskRunner, unlike ``Top``."""

    def __init__(self, k: int) -> None:
        self.k = int(k)

    def create_accumulator(self) -> tuple[int, list, float]:
        return 0, [], float("inf")

    def add_input(self, acc: tuple[int, list, float], summary: tuple) -> tuple[int, list, float]:
        n, triples, left = acc
        triples.append(summary[1])
        if sum(len(t[0]) for t in triples) > 2 * self.k:
            triples, left = self._shrink(triples, left)
        return n + int(summary[0]), triples, min(left, summary[2])

    def merge_accumulators(self, accs: Iterable[tuple[int, list, float]]) -> tuple:
        accs = list(accs)
        triples, left = self._shrink(
            [t for a in accs for t in a[1]], min((a[2] for a in accs), default=float("inf"))
        )
        return sum(a[0] for a in accs), triples, left

    def _shrink(self, triples: list, left: float) -> tuple[list, float]:
        triples = [t for t in triples if len(t[0])]
        if not triples:
            return [], left
        h = np.concatenate([t[0] for t in triples])
        keys = np.concatenate([t[1] for t in triples])
        x = np.concatenate([t[2] for t in triples])
        if h.size > self.k:  # what is cut here is left out too
            order = np.argsort(h, kind="stable")
            left = min(left, int(h[order[self.k]]))
        return [_compact(h, keys, x, self.k)], left

    def extract_output(self, acc: tuple[int, list, float]) -> tuple[int, tuple, float]:
        n, triples, left = acc
        triples, left = self._shrink(triples, left)
        return n, triples[0] if triples else bottom_k(None, self.k), left


def _fanout_key(summary: tuple, fanout: int) -> tuple[int, tuple]:
    keys = summary[1][1]
    return (dd.stable_hash64(str(keys[0])) % fanout if len(keys) else 0), summary


def train_model(
    sample: Any,
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
    default above ``dd.FLAT_ASSIGN_MAX`` centroids, where a K x K matrix no longer fits).

    ``sample``: :class:`BottomKFn`'s ``(hashes, keys, vectors)`` (already in hash order) or a
    list of ``(key, vector)`` pairs."""
    if isinstance(sample, tuple) and len(sample) == 3 and isinstance(sample[0], np.ndarray):
        vecs_all = sample[2]
    else:
        pairs = sorted(sample, key=lambda kv: (dd.stable_hash64(kv[0]), kv[0]))
        vecs_all = np.stack([np.asarray(v) for _, v in pairs]) if pairs else np.zeros((0, 0))
    k = dd.choose_n_partitions(max(n, 1), partition_size)
    size = dd.partition_sample_size(n, partition_size, sample_per_partition, max_sample)
    if len(vecs_all) == 0:
        return {"centroids": None, "cdist": None, "index": None, "k": 0}
    centroids = dd.train_partitioner(vecs_all[:size], k, niter=niter, seed=seed)
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


def _train_summary(summary: tuple[int, tuple, float], **kw: Any) -> dict[str, Any]:
    n, sample, left_out = summary
    size = dd.partition_sample_size(
        n, kw["partition_size"], kw["sample_per_partition"], kw["max_sample"]
    )
    h = sample[0]
    if size > 0 and (h.size < size or int(h[size - 1]) >= left_out):
        raise RuntimeError(
            f"hash sample incomplete: {size} rows needed, {h.size} kept, a smaller hash was "
            "left out by a batch (raise dedup_beam.SAMPLE_MARGIN)"
        )
    return {**train_model(sample, n, **kw), "n": int(n)}


EMPTY_MODEL: dict[str, Any] = {"centroids": None, "cdist": None, "index": None, "k": 0, "n": 0}
"""The model of an input without rows."""


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


def n_groups(n: int, k: int, group_rows: int = GROUP_ROWS) -> int:
    """Search groups for ``n`` rows in ``k`` partitions: ~``n / group_rows``, at least 1, at
    most ``k`` and :data:`MAX_GROUPS`."""
    return int(max(1, min(k, MAX_GROUPS, math.ceil(max(n, 1) / max(1, group_rows)))))


def _batch_count(batch: Any) -> int:
    batch = as_batch(batch)
    return 0 if batch is None else batch.num_rows


class FitPartitionModel(beam.PTransform):
    """Batches (or row tuples) -> one dict: :func:`train_model`'s model plus the row count
    ``n`` (steps 1-2 of the module doc)."""

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
        dd.resolve_assign(assign, 0)  # validates
        self.kw = dict(
            threshold=threshold,
            partition_size=partition_size,
            sample_per_partition=sample_per_partition,
            max_sample=max_sample,
            niter=niter,
            seed=seed,
            assign=assign,
        )

    def expand(self, batches: Any) -> Any:
        k = self.kw["max_sample"]
        share = SAMPLE_MARGIN * self.kw["sample_per_partition"] / self.kw["partition_size"]
        # no side input, no default value (CombineGlobally's default is injected through a
        # side input): nothing here is recomputed per bundle on any runner; no rows, no model
        return (
            batches
            | "Summarize" >> beam.Map(summarize, k, share, SAMPLE_KEEP_MIN)
            | "FanOut" >> beam.Map(_fanout_key, SAMPLE_FANOUT)
            | "CountAndSampleGroups" >> beam.CombinePerKey(BottomKFn(k))
            | "Samples" >> beam.Values()
            | "CountAndSample" >> beam.CombineGlobally(BottomKFn(k)).without_defaults()
            | "Train" >> beam.Map(_train_summary, **self.kw)
        )


# ---------------------------------------------------------------------------------------------
# steps 3-5: assign, search, components
# ---------------------------------------------------------------------------------------------
class AssignPartitions(beam.DoFn):
    """A batch -> ``(group, sub-batch)`` for every search group it touches; the sub-batch holds
    the base rows and probe copies of the group's partitions (columns of the batch plus
    ``part`` int32 and ``base`` bool)."""

    def __init__(
        self, threshold: float, max_probes: int, probe_scale: float, group_rows: int = GROUP_ROWS
    ) -> None:
        self.threshold = threshold
        self.max_probes = max_probes
        self.probe_scale = probe_scale
        self.group_rows = group_rows
        self.truncated = Metrics.counter(NAME, "probe_lists_truncated")
        self.probes = Metrics.counter(NAME, "probe_copies")
        self.rows = Metrics.counter(NAME, "rows_assigned")

    def process(self, element: Any, model: dict[str, Any]) -> Iterator[tuple[int, Any]]:
        batch = as_batch(element)
        if batch is None or batch.num_rows == 0:
            return
        _, x, _ = batch_arrays(batch)
        primary, probes, needed = dd.assign_partitions(
            x,
            model["centroids"],
            self.threshold,
            max_probes=self.max_probes,
            probe_scale=self.probe_scale,
            cdist=model["cdist"],
            index=_model_index(model),
        )
        n = batch.num_rows
        self.rows.inc(n)
        self.truncated.inc(int(np.sum(needed > self.max_probes)))
        pr, pc_ = np.nonzero(probes >= 0)
        self.probes.inc(int(pr.size))
        rows = np.concatenate([np.arange(n), pr])
        part = np.concatenate([primary.astype(np.int64), probes[pr, pc_].astype(np.int64)])
        base = np.concatenate([np.ones(n, bool), np.zeros(pr.size, bool)])
        g = part % n_groups(int(model["n"]), int(model["k"]), self.group_rows)
        order = np.argsort(g, kind="stable")
        bounds = np.flatnonzero(np.diff(g[order])) + 1
        for sel in np.split(order, bounds):
            sub = batch.take(pa.array(rows[sel]))
            yield (
                int(g[sel[0]]),
                pa.RecordBatch.from_arrays(
                    [*sub.columns, pa.array(part[sel], pa.int32()), pa.array(base[sel])],
                    names=[*sub.schema.names, "part", "base"],
                ),
            )


class SearchGroup(beam.DoFn):
    """``(group, sub-batches)`` -> one ``(edges, priorities)`` element: the certificate edges
    ``key_i < key_j`` of every partition in the group (a batch with ``i``, ``j``, ``sim``) and
    the priority of each key with an edge (``key``, ``priority``)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.pairs = Metrics.counter(NAME, "pairs_above_threshold")
        self.size = Metrics.distribution(NAME, "partition_rows")

    def process(self, element: tuple[int, Iterable[Any]]) -> Iterator[tuple[Any, Any]]:
        _, subs = element
        subs = [s for s in subs if s.num_rows]
        if not subs:
            return
        t = pa.Table.from_batches(subs).combine_chunks()
        batch = t.to_batches()[0] if t.num_rows else None
        if batch is None:
            return
        keys, x, prio = batch_arrays(batch)
        part = batch.column("part").to_numpy()
        base = batch.column("base").to_numpy(zero_copy_only=False)
        order = np.lexsort((keys, part))
        bounds = np.flatnonzero(np.diff(part[order])) + 1
        ei, ej, es = [], [], []
        for sel in np.split(order, bounds):
            self.size.update(int(sel.size))
            b, q = sel[base[sel]], sel[~base[sel]]
            if b.size == 0 or sel.size < 2:
                continue
            e = dd.search_partition(
                keys[b],
                x[b],
                self.threshold,
                keys[q] if q.size else None,
                x[q] if q.size else None,
            )
            self.pairs.inc(e.n_pairs)
            if len(e):
                ei.append(e.i)
                ej.append(e.j)
                es.append(e.sim)
        if not ei:
            return
        i, j, s = np.concatenate(ei), np.concatenate(ej), np.concatenate(es)
        involved = np.unique(np.concatenate([i, j]))
        first = np.unique(keys, return_index=True)  # a key's priority is the same in every copy
        p = prio[first[1][np.searchsorted(first[0], involved)]]
        yield (
            pa.RecordBatch.from_arrays(
                [pa.array(i, pa.string()), pa.array(j, pa.string()), pa.array(s, pa.float32())],
                names=["i", "j", "sim"],
            ),
            pa.RecordBatch.from_arrays(
                [pa.array(involved, pa.string()), pa.array(p, pa.float64())],
                names=["key", "priority"],
            ),
        )


def components(found: list[tuple[Any, Any]]) -> Iterator[Any]:
    """Every group's ``(edges, priorities)`` -> the output rows (one record batch with the
    columns of :data:`OUTPUT_COLUMNS`, sorted by group id then key)."""
    found = [f for f in found if f[0].num_rows]
    if not found:
        return
    a = np.concatenate([f[0].column("i").to_numpy(zero_copy_only=False) for f in found])
    b = np.concatenate([f[0].column("j").to_numpy(zero_copy_only=False) for f in found])
    s = np.concatenate([f[0].column("sim").to_numpy() for f in found]).astype(np.float32)
    a, b = a.astype(str), b.astype(str)
    keys, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    m = a.size
    edges = dd.Edges.concat([dd.Edges(inv[:m].astype(np.int64), inv[m:].astype(np.int64), s)])
    labels = dd.components(keys.size, edges)
    nbr, sim = dd.best_partner(keys.size, edges)
    pk = np.concatenate([f[1].column("key").to_numpy(zero_copy_only=False) for f in found])
    pv = np.concatenate([f[1].column("priority").to_numpy() for f in found])
    pk = pk.astype(str)
    prio = np.full(keys.size, np.nan)
    prio[np.searchsorted(keys, pk)] = pv
    rep = dd.pick_representatives(labels, prio)
    table = dd.group_table(keys.astype(object), labels, "near", rep, nbr, sim)
    if table.num_rows:
        yield table.combine_chunks().to_batches()[0]


class NearDuplicateBatches(beam.PTransform):
    """PCollection of record batches (``key``, ``vec``, ``priority``; see :func:`make_batch`,
    :func:`batch_from_table`) -> PCollection of output record batches (columns
    :data:`OUTPUT_COLUMNS`).

    ``model`` (from :func:`fit_model`): skip steps 1-2 and pass the model to the assignment as
    a plain argument instead of a side input (two-pass mode)."""

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
        assign: str = "auto",
        group_rows: int = GROUP_ROWS,
        model: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if model is not None and "n" not in model:
            raise ValueError(
                "a precomputed model needs its row count under 'n' "
                "(what FitPartitionModel / fit_model return)"
            )
        dd.resolve_assign(assign, 0)  # validates
        self.model = model
        self.threshold = threshold
        self.max_probes = max_probes
        self.probe_scale = probe_scale
        self.group_rows = group_rows
        self.fit = dict(
            partition_size=partition_size,
            sample_per_partition=sample_per_partition,
            max_sample=max_sample,
            niter=niter,
            seed=seed,
            assign=assign,
        )

    def expand(self, batches: Any) -> Any:
        if self.model is None:
            refuse_side_inputs(batches.pipeline)
            fitted = batches | "Fit" >> FitPartitionModel(self.threshold, **self.fit)
            model_arg: Any = AsSingleton(fitted, default_value=EMPTY_MODEL)
        else:  # precomputed (two-pass mode): a plain argument, no side input
            model_arg = self.model
        return (
            batches
            | "Assign"
            >> beam.ParDo(
                AssignPartitions(
                    self.threshold, self.max_probes, self.probe_scale, self.group_rows
                ),
                model_arg,
            )
            | "GroupByGroup" >> beam.GroupByKey()
            | "Search" >> beam.ParDo(SearchGroup(self.threshold))
            | "AllEdges"
            >> beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
            | "Components" >> beam.FlatMap(components)
        )


class PartitionedNearDuplicates(beam.PTransform):
    """The row API: PCollection[(key, vec, priority)] -> PCollection[dict] output rows (see the
    module doc). Rows are batched (``batching``, :data:`BATCHING`) into record batches and run
    through :class:`NearDuplicateBatches`; ``model=`` (from :func:`fit_model`) as there."""

    def __init__(
        self,
        threshold: float,
        *,
        min_batch: int = 256,
        max_batch: int = 4096,
        batching: str = "auto",
        model: dict[str, Any] | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        self.threshold = threshold
        self.min_batch = min_batch
        self.max_batch = max_batch
        self.batching = batching
        self.model = model
        self.params = params
        # validates the model and the parameters now, not at expansion
        self.core = NearDuplicateBatches(threshold, model=model, **params)

    def expand(self, rows: Any) -> Any:
        batching = self.batching
        if batching == "auto":
            batching = "shuffle" if drops_finish_bundle_outputs(rows.pipeline) else "bundle"
        if batching == "bundle":
            lists = rows | "Batch" >> beam.BatchElements(
                min_batch_size=self.min_batch, max_batch_size=self.max_batch
            )
        else:
            if self.model is not None:
                count: Any = int(self.model["n"])
            else:
                count = AsSingleton(rows | "CountRows" >> beam.combiners.Count.Globally())
            lists = (
                rows
                | "Bucket" >> beam.Map(_bucket, count, self.max_batch)
                | "GroupBuckets" >> beam.GroupByKey()
                | "Batches" >> beam.FlatMap(_chunks, self.max_batch)
            )
        return (
            lists
            | "ToBatches" >> beam.Map(as_batch)
            | "NearDuplicates" >> self.core
            | "ToRows" >> beam.FlatMap(_batch_rows)
        )


def _batch_rows(batch: Any) -> list[dict[str, Any]]:
    return batch.to_pylist()


def drops_finish_bundle_outputs(pipeline: Any) -> bool:
    """Beam 2.77's DaskRunner snapshots a bundle's outputs before ``finish_bundle`` runs, so
    anything emitted there is lost (see tests/test_dask.py)."""
    return type(getattr(pipeline, "runner", None)).__name__ == "DaskRunner"


def _bucket(row: Row, n: int, max_batch: int) -> tuple[int, Row]:
    n_buckets = max(1, -(-int(n) // max_batch))
    return dd.stable_hash64(row[0]) % n_buckets, row


def _chunks(element: tuple[int, Iterable[Row]], max_batch: int) -> Iterator[list[Row]]:
    _, rows = element
    rows = list(rows)
    for i in range(0, len(rows), max_batch):
        yield rows[i : i + max_batch]


def refuse_side_inputs(pipeline: Any) -> None:
    """Raise ValueError on runners whose side inputs are recomputed per bundle (the DaskRunner):
    there the recomputation runs inside a worker process, where Beam 2.77's shared output
    lists accumulate (:mod:`pipelines.dask_checks`), so the fitted model saw ~3x the rows
    (measured: n = 6096 for 2000 rows) and rows went missing. Fit first (:func:`fit_model`)
    and pass ``model=``: what :func:`run_near_dedup` does there."""
    runner = getattr(pipeline, "runner", None)
    if runner is not None and recomputes_side_inputs(runner):
        raise ValueError(
            "near-duplicates on the DaskRunner need a precomputed model: its side inputs are "
            "recomputed inside each worker and see duplicated rows; call fit_model(...) and "
            "pass model= (run_near_dedup does this)"
        )


def recomputes_side_inputs(runner: Any) -> bool:
    """Beam 2.77's DaskRunner materialises a side input by computing its whole upstream graph
    again for every bundle that reads it (``DaskBagWindowedIterator`` calls ``list(bag)``), so a
    per-row side input costs O(N) per bundle: O(N^2) in all (measured: a ``Map`` with an
    ``AsSingleton(Count)`` side input took 2.1 s for 1000 rows, 22 s for 4000, 78 s for 8000).
    Pipelines there run in two passes (:func:`fit_model`, then ``model=``). ``runner``: a
    runner object or its name (``BeamSetup.new_runner()`` gives the DaskRunner by name)."""
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1] == "DaskRunner"


# ---------------------------------------------------------------------------------------------
# the model on disk (two-pass mode)
# ---------------------------------------------------------------------------------------------
def save_model(model: dict[str, Any], path: str) -> str:
    """Write a fitted model (arrays + scalars, ``.npz``, no pickle) atomically through Beam's
    ``FileSystems``; returns ``path``."""
    import io

    arrays = {k: np.asarray(v) for k, v in model.items() if v is not None}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_uri(path, buf.getvalue())
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
    """Pass 1 of the two-pass mode: ``read_rows(pipeline) -> PCollection`` of record batches
    (or row tuples), fitted and written to ``model_path`` by a worker (from ``process``), then
    read back here. ``params``: the :data:`FIT_PARAMS` among the transform's options."""
    from pipelines.dask_checks import check_safe_runner

    fit = {k: v for k, v in params.items() if k in FIT_PARAMS}
    check_safe_runner(setup)
    p = beam.Pipeline(runner=setup.new_runner(), options=setup.options)
    (
        read_rows(p)
        | "FitModel" >> FitPartitionModel(threshold, **fit)
        | "SaveModel" >> beam.Map(save_model, model_path)
    )
    result = p.run()
    result.wait_until_finish()
    _close_client(result)
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(model_path):  # no rows: nothing was fitted
        return dict(EMPTY_MODEL)
    return load_model(model_path)


def _close_client(result: Any) -> None:
    client = getattr(result, "client", None)  # the DaskRunner never closes its own
    if client is not None:
        client.close()


# ---------------------------------------------------------------------------------------------
# parquet in, parquet out
# ---------------------------------------------------------------------------------------------
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
    return pa.schema([(n, pa.type_for_alias(t)) for n, t in OUTPUT_SCHEMA_FIELDS])


def plan_reads(
    paths: Sequence[str], columns: Sequence[str], target_rows: int = 8 * BATCH_ROWS
) -> list[tuple[str, tuple[int, ...] | None]]:
    """Read tasks ``(path, row groups)``: a file's row groups in runs of ~``target_rows`` rows
    (``None``: the whole file). More tasks than files lets a runner that parallelises by
    input element (the DaskRunner) read one large file on several workers. Checks the columns
    up front."""

    out: list[tuple[str, tuple[int, ...] | None]] = []
    for path in sorted(paths):
        with _open_parquet(path) as meta:
            missing = [c for c in columns if c not in meta.schema_arrow.names]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}")
            sizes = [meta.metadata.row_group(g).num_rows for g in range(meta.num_row_groups)]
        if len(sizes) <= 1:
            out.append((path, None))
            continue
        run: list[int] = []
        rows = 0
        for g, r in enumerate(sizes):
            run.append(g)
            rows += r
            if rows >= target_rows:
                out.append((path, tuple(run)))
                run, rows = [], 0
        if run:
            out.append((path, tuple(run)))
    return out


@contextlib.contextmanager
def _open_parquet(path: str) -> Iterator[Any]:
    """A ``pq.ParquetFile``: local paths through pyarrow's own file reader (reading through a
    Python file object cost 3 s per 60 MB), other URIs through Beam's ``FileSystems``."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    if "://" not in str(path):
        pf = pq.ParquetFile(str(path))
        try:
            yield pf
        finally:
            pf.close()
        return
    with FileSystems.open(path) as f:
        yield pq.ParquetFile(f)


def read_parquet_batches(
    path: Any, columns: Sequence[str], batch_size: int = BATCH_ROWS
) -> Iterator[Any]:
    """Record batches of one parquet file (or of ``(path, row groups)`` from
    :func:`plan_reads`), read with pyarrow through Beam's ``FileSystems`` (local paths, gs://,
    s3://...). Used instead of ``ReadFromParquetBatched``, whose source the DaskRunner cannot
    read."""

    groups = None
    if isinstance(path, tuple | list):
        path, groups = path
    with _open_parquet(path) as pf:
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        yield from pf.iter_batches(
            batch_size=batch_size,
            columns=list(columns),
            row_groups=list(groups) if groups is not None else None,
        )


def split_shards(batch: Any, n_shards: int) -> Iterator[tuple[int, list[Any]]]:
    """The output batch -> ``(shard, [rows of that shard])`` by stable key hash (components
    emits one batch in all, so each shard comes once: written without a shuffle)."""
    keys = batch.column("key").to_numpy(zero_copy_only=False)
    shard = np.array([dd.stable_hash64(k) % n_shards for k in keys], dtype=np.int64)
    for s in np.unique(shard):
        yield int(s), [batch.filter(pa.array(shard == s))]


def write_output_shard(
    element: tuple[int, Iterable[Any]], prefix: str, n_shards: int
) -> Iterator[str]:
    """(shard, record batches or row dicts) -> ``{prefix}-SSSSS-of-NNNNN.parquet``, rows sorted
    by key, written to a temporary name and renamed, so a retried bundle rewrites the same file
    and a reader never sees half a shard. A sink that emits only from ``process`` (Beam's file
    sinks emit their temporary names from ``finish_bundle``, which the DaskRunner drops)."""
    import pyarrow.parquet as pq

    shard, items = element
    items = list(items)
    schema = output_schema()
    if items and isinstance(items[0], dict):
        table = pa.Table.from_pylist(items, schema=schema)
    else:
        table = pa.Table.from_batches([b.cast(schema) for b in items], schema=schema)
    table = table.sort_by("key")
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    path = f"{prefix}-{shard:05d}-of-{n_shards:05d}.parquet"
    atomic_write_uri(path, buf.getvalue().to_pybytes())
    yield path


def _to_batch(batch: Any, vector_column: str, priority_column: str | None) -> Iterator[Any]:
    out = batch_from_table(batch, vector_column, priority_column)
    if out is not None:
        yield out


DRIVER_FIT_MAX_ROWS = 1_000_000
"""Two-pass mode: up to this many rows the launching process fits the partition model itself
(reading the parts once, the same functions as :class:`FitPartitionModel`, so the same
model); a cluster pipeline costs seconds of scheduling that a small input does not repay."""


def count_rows(paths: Sequence[str]) -> int:
    """Rows of the parquet files, from their footers."""
    total = 0
    for path in paths:
        with _open_parquet(path) as pf:
            total += pf.metadata.num_rows
    return total


def fit_model_here(
    reads: Sequence[Any],
    columns: Sequence[str],
    threshold: float,
    vector_column: str,
    batch_rows: int = BATCH_ROWS,
    **params: Any,
) -> dict[str, Any]:
    """:class:`FitPartitionModel` in this process: the same per-batch summaries, the same
    combine and training, so the same model as the pipeline."""
    fit = {k: v for k, v in params.items() if k in FIT_PARAMS}
    kw = {
        "threshold": threshold,
        "partition_size": fit.get("partition_size", dd.PARTITION_SIZE),
        "sample_per_partition": fit.get("sample_per_partition", dd.SAMPLE_PER_PARTITION),
        "max_sample": fit.get("max_sample", dd.MAX_SAMPLE),
        "niter": fit.get("niter", 10),
        "seed": fit.get("seed", 0),
        "assign": fit.get("assign", "auto"),
    }
    share = SAMPLE_MARGIN * kw["sample_per_partition"] / kw["partition_size"]
    combine = BottomKFn(kw["max_sample"])
    acc = combine.create_accumulator()
    priority = columns[2] if len(columns) > 2 else None
    for task in reads:
        for raw in read_parquet_batches(task, columns, batch_rows):
            for batch in _to_batch(raw, vector_column, priority):
                acc = combine.add_input(
                    acc, summarize(batch, kw["max_sample"], share, SAMPLE_KEEP_MIN)
                )
    n, sample, left_out = combine.extract_output(acc)
    if n == 0:
        return dict(EMPTY_MODEL)
    return _train_summary((n, sample, left_out), **kw)


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
    batch_rows: int = BATCH_ROWS,
    **params: Any,
) -> None:
    """Read embedding parts, run :class:`NearDuplicateBatches`, write parquet shards to
    ``output_prefix-SSSSS-of-NNNNN.parquet`` (columns :data:`OUTPUT_COLUMNS`; a shard with no
    rows is not written).

    Every step emits only from ``process`` (files read with pyarrow from ``Create(read
    tasks)``, each shard written once, from ``process``, by a temporary name and a rename), so
    the pipeline gives the same result on every runner, the DaskRunner included. ``setup``: a ``pipelines.beam_options.BeamSetup``
    (runner + options); default DirectRunner. Runner configurations that lose or duplicate
    rows are refused before anything runs (:func:`pipelines.dask_checks.check_safe_runner`).
    ``vector_column``: the embedding searched (``image_emb`` or the copy descriptor
    ``copy_emb``). ``two_pass`` (default: on runners where :func:`recomputes_side_inputs`): fit
    the partition model in a first pipeline (written to ``output_prefix-model.npz``), then run
    the search with it as a plain argument.
    """
    from pipelines.beam_options import beam_setup
    from pipelines.dask_checks import check_safe_runner, with_bag_partitions

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
                batch_rows=batch_rows,
                **params,
            )
    check_safe_runner(setup)
    columns = ["key", vector_column] + ([priority_column] if priority_column else [])
    reads = plan_reads(parquet_files, columns, 8 * batch_rows)
    setup = with_bag_partitions(setup, len(reads))
    n = max(1, int(n_output_shards))

    def read_batches(p: Any) -> Any:
        return (
            p
            | "ReadTasks" >> beam.Create(reads)
            | "Read" >> beam.FlatMap(read_parquet_batches, columns, batch_rows)
            | "ToBatches" >> beam.FlatMap(_to_batch, vector_column, priority_column)
        )

    if two_pass is None:
        two_pass = recomputes_side_inputs(setup.new_runner())
    if two_pass:
        rows = count_rows(parquet_files)
        where = "here" if rows <= DRIVER_FIT_MAX_ROWS else "in a first pipeline"
        logger.info(
            "near-dedup in two passes: fitting the partition model %s (%d rows; %s "
            "recomputes side inputs per bundle)",
            where,
            rows,
            setup.runner_name,
        )
        if rows <= DRIVER_FIT_MAX_ROWS:
            model = fit_model_here(reads, columns, threshold, vector_column, batch_rows, **params)
        else:
            model = fit_model(
                read_batches, f"{output_prefix}-model.npz", threshold, setup, **params
            )
        params = {**params, "model": model}
    p = beam.Pipeline(runner=setup.new_runner(), options=setup.options)
    (
        read_batches(p)
        | "NearDuplicates" >> NearDuplicateBatches(threshold, **params)
        | "Shard" >> beam.FlatMap(split_shards, n)
        | "Write" >> beam.FlatMap(write_output_shard, output_prefix, n)
    )
    result = p.run()
    try:
        result.wait_until_finish()
    finally:
        _close_client(result)
