"""Duplicate detection: exact (hash) groups, caption groups and near-duplicate image groups.

Near-duplicates are pairs of L2-normalised image embeddings whose cosine similarity is above a
threshold (strictly greater, as FAISS ``range_search`` reports them); groups are the connected
components of that graph (``scipy.sparse.csgraph``), so a chain a~b~c is one group even when
a and c are below the threshold.

Two ways to find the pairs, with the same output format:

* **exact** (:func:`exact_edges`): FAISS ``IndexFlatIP`` over all vectors, range search in query
  chunks. Exact, memory ``N x D x 4`` bytes, time quadratic in N: for up to ~10^5 vectors.
* **partitioned** (:func:`partitioned_edges`): spherical k-means (FAISS) trained on a sample
  gives ``K`` centroids; every vector is assigned to its nearest centroid (its *primary*
  partition). Inside each partition an exact FAISS range search runs against itself and against
  the *probe* vectors from neighbouring partitions. Which neighbours: a vector ``a`` in partition
  ``P`` can only have a partner ``b`` (``|a - b| <= r = sqrt(2 - 2 t)`` for unit vectors above
  threshold ``t``) in partition ``Q`` if ``a . c_P - a . c_Q <= r |c_P - c_Q|`` (``b`` is closer
  to ``c_Q`` than to ``c_P``, and moving from ``b`` to ``a`` changes that margin by at most
  ``r |c_P - c_Q|``). The bound is symmetric, so ``a`` only probes partitions ``Q > P``; each pair
  is then examined exactly once. Probing every partition that passes the bound is exact
  (``probe_scale=1`` and enough ``max_probes``); the default probes only where the boundary is
  within a quarter of that worst-case distance (``probe_scale=0.25``: the offset between two
  near-duplicates is not aligned with the boundary normal in practice) and at most
  ``max_probes=2`` partitions per vector, nearest boundaries first; vectors whose list was cut
  are counted (``n_truncated``). Recall against exact search is measured by
  ``benchmarks/bench_dedup.py``.
  Assignment scores every centroid (``N x K`` work, i.e. ``N^2 / partition_size``) up to
  :data:`FLAT_ASSIGN_MAX` centroids; above that (``assign="auto"``, or ``"hnsw"``) an HNSW graph
  over the centroids (FAISS ``IndexHNSWFlat``, built once, single-threaded so it is the same on
  every worker) returns each vector's :data:`ASSIGN_CANDIDATES` nearest centroids, and the
  primary partition and the probe bound are taken over those (approximate: a partition outside
  the candidates is never probed; on clustered test data it finds the same pairs as flat).
  Memory beyond the input array is bounded by partition size (one partition's base + probe
  vectors in float32 at a time), never by N. The same per-partition function
  (:func:`search_partition`) is what the Beam pipeline (``pipelines/dedup_beam.py``) runs per
  partition, so both give identical groups.

Per partition, only a *connectivity certificate* is kept by default: a maximum-similarity
spanning forest of the pairs found there, plus each vector's best partner. Connected components
and every member's nearest neighbour (within the threshold graph) are unchanged by that
reduction, while the output stays linear in partition size even for a group of 10^4 identical
copies (whose full pair list is quadratic). ``keep_all_pairs=True`` keeps every pair (used by the
benchmark to measure pair recall).

GPU: with ``faiss.get_num_gpus() > 0`` k-means runs on the GPU and the flat searches use a GPU
index (kNN on the GPU, CPU fallback for queries with more neighbours than the kNN depth, through
``faiss.contrib.exhaustive_search.range_search_gpu``: results are still exact).

Thresholds (:data:`DEFAULT_THRESHOLDS`): 0.95 for real CLIP models, the field's choice
(clip-retrieval ``get_non_uniques``, snip-dedup; docs/references.md). ``tiny-synth`` (the project's
small CLIP trained on SynthLAION) has its own value, calibrated on a SynthLAION testbed with
``laion-audit dedup WS --calibrate truth.parquet`` (:func:`threshold_sweep` then
:func:`choose_threshold`): exact search of every pair above the lowest threshold, groups by
connected components per threshold, precision / recall by pair counting against the planted
``dup_group`` (exact, near and famous-work copies), and the best-F1 threshold among those with
precision >= 0.98. Numbers in the docstring of :data:`DEFAULT_THRESHOLDS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

NAME = "dedup_faiss_v1"

REFERENCE_THRESHOLD = 0.95
"""Near-duplicate cosine threshold for real CLIP models (docs/references.md: 0.94-0.95)."""

DEFAULT_THRESHOLDS: dict[str, float] = {
    "ViT-B-32": 0.95,
    "ViT-B-16": 0.95,
    "ViT-L-14": 0.95,
    "ViT-L-14-336": 0.95,
    "ViT-H-14": 0.95,
    "ViT-g-14": 0.95,
    "ViT-bigG-14": 0.95,
    "RN50": 0.95,
    "tiny-synth": 0.98,
}
"""Default near-duplicate threshold per model name (``embeddings/model.json``'s ``name``).
Unknown models get :data:`REFERENCE_THRESHOLD`.

``tiny-synth`` = 0.98, calibrated with the shipped weights of 2026-11-29 (safetensors sha256
``d3eed73d...``, 32 px, 128-d) on a SynthLAION v2 testbed never used in tests or benchmarks
(n=3000, seed 123; 2,939 embedded samples, 1,013 planted pairs)::

    laion-audit testbed --out CAL --n 3000 --seed 123
    laion-audit embed CAL --copy-model none
    laion-audit dedup CAL --calibrate CAL/truth.parquet   # sweep logged + in duplicates.json

Rule: the threshold with the best F1 among those whose group precision is >= 0.98
(:func:`choose_threshold`). Measured (group pair-counting, :func:`group_agreement`):
0.98 -> precision 0.991, recall 0.669; best F1 overall at 0.976 (precision 0.974, recall
0.689); 0.95 -> precision 0.60, recall 0.83 (the earlier weights, at their 0.993: 0.987 /
0.682). tiny-synth is trained for semantics, not instances: planted near copies and distinct
drawings of the same concept, colour and style overlap in its space, so no single threshold
gives both precision >= 0.98 and recall >= 0.95 with it; copy detection belongs to the copy
descriptor (SSCD, ``embed --copy-model``), which reaches both on the same kind of testbed
(docs/copy_detection.md). Recalibrate (the command above) whenever the tiny-synth weights
change."""

KINDS = ("exact", "near", "caption")

# partitioned-path defaults (measured with benchmarks/bench_dedup.py)
PARTITION_SIZE = 1000
MAX_PROBES = 2
PROBE_SCALE = 0.25
SAMPLE_PER_PARTITION = 64
MAX_SAMPLE = 262_144
EXACT_MAX_N = 50_000
# Above FLAT_ASSIGN_MAX centroids, assignment stops scoring every centroid (N x K work, i.e.
# N^2 / partition_size: what dominates at 10^9 rows): an HNSW graph over the centroids (FAISS)
# returns each row's ASSIGN_CANDIDATES nearest centroids and the probe bound is evaluated on
# those only (see benchmarks/bench_dask.py for the measured per-row cost).
FLAT_ASSIGN_MAX = 16_384
ASSIGN_CANDIDATES = 32
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
ASSIGN_METHODS = ("auto", "flat", "hnsw")


def default_threshold(model: str | None) -> float:
    """The near-duplicate threshold for ``model`` (:data:`REFERENCE_THRESHOLD` if unknown)."""
    if model and model in DEFAULT_THRESHOLDS:
        return DEFAULT_THRESHOLDS[model]
    return REFERENCE_THRESHOLD


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def faiss_gpu_available() -> bool:
    """True when the installed FAISS sees at least one GPU."""
    import faiss

    try:
        return faiss.get_num_gpus() > 0
    except AttributeError:  # CPU-only builds without the symbol
        return False


def resolve_gpu(use_gpu: bool | None) -> bool:
    """``use_gpu`` if given, else whether FAISS sees a GPU."""
    return faiss_gpu_available() if use_gpu is None else bool(use_gpu)


PARALLEL_MIN_FLOPS = 2e9
"""FAISS calls with less work than this run on one OpenMP thread: on a busy machine the
threads' synchronisation costs more than small calls gain (measured: 2x slower with 2 threads
on partitions of ~1000 x 512 while other jobs ran)."""


@contextlib.contextmanager
def faiss_threads(flops: float) -> Iterator[None]:
    """Run the block single-threaded in FAISS when ``flops`` is below
    :data:`PARALLEL_MIN_FLOPS`; otherwise with FAISS's current thread count."""
    import faiss

    if flops >= PARALLEL_MIN_FLOPS:
        yield
        return
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(prev)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def stable_hash64(key: str) -> int:
    """A 64-bit hash of a key, stable across processes and machines (blake2b)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def hash_sample(keys: Sequence[str], size: int) -> np.ndarray:
    """Indices of the ``size`` keys with the smallest :func:`stable_hash64`, in hash order.

    A deterministic sample that a distributed job can draw identically (``Top.Smallest``).
    """
    hashes = np.fromiter((stable_hash64(k) for k in keys), dtype=np.uint64, count=len(keys))
    size = min(int(size), len(keys))
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(hashes, size - 1)[:size] if size < len(keys) else np.arange(len(keys))
    return part[np.argsort(hashes[part], kind="stable")].astype(np.int64)


def probe_radius(threshold: float, slack: float = 0.01) -> float:
    """Distance bound ``sqrt(2 - 2 t)`` between unit vectors above cosine ``t``, plus ``slack``
    (relative) for float16 storage, whose norms are 1 only to ~1e-3."""
    return math.sqrt(max(0.0, 2.0 - 2.0 * threshold)) * (1.0 + slack) + 1e-3


def partition_sample_size(
    n: int,
    partition_size: int = PARTITION_SIZE,
    sample_per_partition: int = SAMPLE_PER_PARTITION,
    max_sample: int = MAX_SAMPLE,
) -> int:
    """How many (hash-sampled) rows train the k-means partitioner for ``n`` rows."""
    k = choose_n_partitions(max(n, 1), partition_size)
    return int(min(n, sample_per_partition * k, max_sample))


def auto_partition_size(n: int, minimum: int = PARTITION_SIZE) -> int:
    """Vectors per partition for ``n`` rows when none is given: ``minimum`` (1,000) up to 10^6
    rows, then about sqrt(n), which balances the assignment (every row scored against
    n / partition_size centroids) against the search inside partitions (every row against about
    partition_size others). Measured on 10^7 x 512 rows (docs/scale.md): at 1,000 per partition
    (10^4 centroids) the assignment managed 213,000 rows in about 18 minutes; at 3,000 it
    assigned all 10^7 in 499 s."""
    return max(int(minimum), int(round(math.sqrt(max(int(n), 0)))))


def choose_n_partitions(n: int, partition_size: int) -> int:
    """Number of k-means partitions for ``n`` vectors at ~``partition_size`` vectors each."""
    if partition_size <= 0:
        raise ValueError(f"partition_size must be positive (got {partition_size})")
    return max(1, int(round(n / partition_size)))


# ---------------------------------------------------------------------------------------------
# edges and their reduction
# ---------------------------------------------------------------------------------------------
@dataclass
class Edges:
    """Undirected pairs above the threshold, ``i < j`` (ids: ints or strings), with similarity.

    ``n_pairs`` counts every pair above the threshold that was examined, even when only a
    connectivity certificate is kept in ``i, j, sim``.
    """

    i: np.ndarray
    j: np.ndarray
    sim: np.ndarray
    n_pairs: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, dtype: Any = np.int64) -> Edges:
        return cls(
            np.zeros(0, dtype=dtype), np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.float32), 0
        )

    def __len__(self) -> int:
        return int(self.i.shape[0])

    @classmethod
    def concat(cls, parts: Iterable[Edges]) -> Edges:
        """Concatenate and de-duplicate (same pair twice: the higher similarity is kept)."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        i = np.concatenate([p.i for p in parts])
        j = np.concatenate([p.j for p in parts])
        sim = np.concatenate([p.sim for p in parts]).astype(np.float32)
        n_pairs = sum(p.n_pairs for p in parts)
        if i.size:
            order = np.lexsort((-sim, j, i))
            i, j, sim = i[order], j[order], sim[order]
            first = np.ones(i.size, dtype=bool)
            first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
            i, j, sim = i[first], j[first], sim[first]
        return cls(i, j, sim, n_pairs)


def _best_update(
    best_sim: np.ndarray, best_nbr: np.ndarray, lo: np.ndarray, hi: np.ndarray, sim: np.ndarray
) -> None:
    """In place: per node, the partner with the highest similarity (ties: smaller index)."""
    if lo.size == 0:
        return
    u = np.concatenate([lo, hi])
    v = np.concatenate([hi, lo])
    s = np.concatenate([sim, sim])
    order = np.lexsort((v, -s, u))
    u, v, s = u[order], v[order], s[order]
    first = np.ones(u.size, dtype=bool)
    first[1:] = u[1:] != u[:-1]
    u, v, s = u[first], v[first], s[first]
    better = (s > best_sim[u]) | ((s == best_sim[u]) & (v < best_nbr[u]))
    best_sim[u[better]] = s[better]
    best_nbr[u[better]] = v[better]


def _spanning_forest(
    n: int, lo: np.ndarray, hi: np.ndarray, sim: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A maximum-similarity spanning forest of the graph (same connected components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    if lo.size == 0:
        return lo, hi, sim
    # weights must be > 0 (scipy drops explicit zeros): 2 - sim is in [~1, ~2) for sim <= 1
    w = (2.0 - sim.astype(np.float64)).clip(1e-6)
    g = coo_matrix((w, (lo, hi)), shape=(n, n)).tocsr()
    t = minimum_spanning_tree(g).tocoo()
    a, b = t.row.astype(np.int64), t.col.astype(np.int64)
    s = (2.0 - t.data).astype(np.float32)
    lo2, hi2 = np.minimum(a, b), np.maximum(a, b)
    return lo2, hi2, s


def _dedupe_local(
    lo: np.ndarray, hi: np.ndarray, sim: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if lo.size == 0:
        return lo, hi, sim
    code = lo.astype(np.int64) * n + hi
    order = np.lexsort((-sim, code))
    code, lo, hi, sim = code[order], lo[order], hi[order], sim[order]
    first = np.ones(code.size, dtype=bool)
    first[1:] = code[1:] != code[:-1]
    return lo[first], hi[first], sim[first]


# ---------------------------------------------------------------------------------------------
# FAISS range search (CPU or GPU)
# ---------------------------------------------------------------------------------------------
class FlatIPIndex:
    """An inner-product flat index with exact range search on CPU or GPU (GPU: kNN of depth
    1024 plus CPU fallback for queries with more results, so still exact)."""

    def __init__(self, base: np.ndarray, use_gpu: bool = False) -> None:
        import faiss

        self.base = _f32(base)
        self.cpu = faiss.IndexFlatIP(self.base.shape[1])
        self.cpu.add(self.base)
        self.gpu = None
        if use_gpu and self.base.shape[0] > 0:
            self.gpu = faiss.index_cpu_to_all_gpus(self.cpu)

    def range_search(
        self, queries: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = _f32(queries)
        if self.gpu is not None:
            from faiss.contrib.exhaustive_search import range_search_gpu

            return range_search_gpu(q, float(threshold), self.gpu, self.cpu, gpu_k=1024)
        return self.cpu.range_search(q, float(threshold))


# ---------------------------------------------------------------------------------------------
# one partition: exact search of base x base and probes x base
# ---------------------------------------------------------------------------------------------
def search_partition(
    base_ids: np.ndarray,
    base: np.ndarray,
    threshold: float,
    query_ids: np.ndarray | None = None,
    queries: np.ndarray | None = None,
    *,
    keep_all_pairs: bool = False,
    chunk_size: int = 4096,
    use_gpu: bool | None = None,
) -> Edges:
    """Exact near-duplicate pairs inside one partition.

    ``base`` are the partition's own vectors (pairs among them are searched), ``queries`` the
    probe vectors from other partitions (searched against ``base`` only; their pairs among
    themselves belong to other partitions). Ids may be ints or strings and must be unique.
    Rows are processed in id order, so the result does not depend on input order.

    Returns :class:`Edges` in id space with ``i < j``: every pair if ``keep_all_pairs``, else a
    maximum spanning forest plus each row's best partner (see the module docstring).
    Memory: the partition in float32 plus one chunk's results.
    """
    base_ids = np.asarray(base_ids)
    if query_ids is None or queries is None or len(query_ids) == 0:
        query_ids = base_ids[:0]
        queries = np.zeros((0, base.shape[1]), dtype=np.float32)
    query_ids = np.asarray(query_ids)
    ids = np.concatenate([base_ids, query_ids])
    if ids.size == 0 or base_ids.size == 0:
        return Edges.empty(ids.dtype)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if ids.size > 1 and np.any(ids[1:] == ids[:-1]):
        dup = ids[1:][ids[1:] == ids[:-1]][:5]
        raise ValueError(f"search_partition: ids are not unique, e.g. {dup.tolist()}")
    is_base = np.concatenate([np.ones(len(base_ids), bool), np.zeros(len(query_ids), bool)])
    is_base = is_base[order]
    vecs = np.concatenate([_f32(base), _f32(queries)])[order]
    n = ids.size
    base_local = np.flatnonzero(is_base)
    gpu = resolve_gpu(use_gpu)
    index = FlatIPIndex(vecs[base_local], use_gpu=gpu)
    flops = 2.0 * min(n, chunk_size) * base_local.size * vecs.shape[1]

    all_lo, all_hi, all_sim = [], [], []
    f_lo = f_hi = np.zeros(0, np.int64)
    f_sim = np.zeros(0, np.float32)
    best_sim = np.full(n, -np.inf, dtype=np.float32)
    best_nbr = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    n_pairs = 0
    for start in range(0, n, chunk_size):
        rows = np.arange(start, min(n, start + chunk_size))
        with faiss_threads(np.inf if gpu else flops):
            lims, dist, idx = index.range_search(vecs[rows], threshold)
        q = np.repeat(rows, np.diff(lims).astype(np.int64))
        b = base_local[idx.astype(np.int64)]
        keep = (~is_base[q]) | (b > q)  # base x base: upper triangle, no self pairs
        q, b, s = q[keep], b[keep], dist[keep].astype(np.float32)
        lo, hi = np.minimum(q, b), np.maximum(q, b)
        n_pairs += int(lo.size)
        if keep_all_pairs:
            all_lo.append(lo)
            all_hi.append(hi)
            all_sim.append(s)
            continue
        _best_update(best_sim, best_nbr, lo, hi, s)
        f_lo, f_hi, f_sim = _spanning_forest(
            n, np.concatenate([f_lo, lo]), np.concatenate([f_hi, hi]), np.concatenate([f_sim, s])
        )
    if keep_all_pairs:
        lo = np.concatenate(all_lo) if all_lo else np.zeros(0, np.int64)
        hi = np.concatenate(all_hi) if all_hi else np.zeros(0, np.int64)
        s = np.concatenate(all_sim) if all_sim else np.zeros(0, np.float32)
    else:
        has = np.flatnonzero(best_sim > -np.inf)
        nb = best_nbr[has]
        lo = np.concatenate([f_lo, np.minimum(has, nb)])
        hi = np.concatenate([f_hi, np.maximum(has, nb)])
        s = np.concatenate([f_sim, best_sim[has]])
    lo, hi, s = _dedupe_local(lo, hi, s, n)
    return Edges(ids[lo], ids[hi], s.astype(np.float32), n_pairs)


# ---------------------------------------------------------------------------------------------
# exact path
# ---------------------------------------------------------------------------------------------
def exact_edges(
    x: np.ndarray,
    threshold: float,
    *,
    keep_all_pairs: bool = False,
    chunk_size: int = 4096,
    use_gpu: bool | None = None,
) -> Edges:
    """All near-duplicate pairs by exact FAISS range search over every vector (ids = rows)."""
    t0 = time.perf_counter()
    e = search_partition(
        np.arange(len(x), dtype=np.int64),
        x,
        threshold,
        keep_all_pairs=keep_all_pairs,
        chunk_size=chunk_size,
        use_gpu=use_gpu,
    )
    e.info = {
        "method": "exact",
        "n": int(len(x)),
        "n_pairs": e.n_pairs,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return e


# ---------------------------------------------------------------------------------------------
# partitioned path
# ---------------------------------------------------------------------------------------------
def train_partitioner(
    sample: np.ndarray,
    n_partitions: int,
    *,
    niter: int = 10,
    seed: int = 0,
    use_gpu: bool | None = None,
) -> np.ndarray:
    """Spherical k-means centroids (FAISS) on ``sample`` (float32, ``K x D``).

    With one partition (or fewer sample rows than partitions) the centroids are the sample's
    normalised mean / the sample rows themselves.
    """
    import faiss

    sample = _f32(sample)
    k = int(n_partitions)
    if k <= 1 or len(sample) == 0:
        c = sample.mean(0, keepdims=True) if len(sample) else np.ones((1, sample.shape[1]))
        return _f32(c / max(float(np.linalg.norm(c)), 1e-12))
    if len(sample) <= k:
        return sample.copy()
    km = faiss.Kmeans(
        sample.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        gpu=resolve_gpu(use_gpu),
        max_points_per_centroid=256,
        min_points_per_centroid=1,
        verbose=False,
    )
    with faiss_threads(2.0 * min(len(sample), 256 * k) * k * sample.shape[1]):
        km.train(sample)
    return _f32(km.centroids)


def centroid_distances(centroids: np.ndarray) -> np.ndarray:
    """Euclidean distances between centroids (``K x K`` float32)."""
    c = centroids.astype(np.float64)
    sq = (c * c).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (c @ c.T)
    return np.sqrt(np.maximum(d2, 0.0)).astype(np.float32)


def resolve_assign(assign: str, k: int) -> str:
    """``"flat"`` or ``"hnsw"`` for ``k`` centroids (``"auto"``: hnsw above
    :data:`FLAT_ASSIGN_MAX`)."""
    if assign not in ASSIGN_METHODS:
        raise ValueError(f"assign must be one of {ASSIGN_METHODS}, got {assign!r}")
    if assign == "auto":
        return "hnsw" if k > FLAT_ASSIGN_MAX else "flat"
    return assign


def centroid_index(
    centroids: np.ndarray,
    *,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    ef_search: int = HNSW_EF_SEARCH,
) -> Any:
    """An HNSW graph (FAISS ``IndexHNSWFlat``, inner product) over the centroids.

    Built single-threaded: FAISS's parallel HNSW insertion depends on thread timing, and every
    worker must assign a row to the same partitions. Ship it to workers with
    ``faiss.serialize_index`` rather than rebuilding it."""
    import faiss

    c = _f32(centroids)
    index = faiss.IndexHNSWFlat(c.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.add(c)
    finally:
        faiss.omp_set_num_threads(prev)
    index.hnsw.efSearch = ef_search
    return index


def _assign_with_index(
    xf: np.ndarray,
    c: np.ndarray,
    index: Any,
    radius: float,
    max_probes: int,
    candidates: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`assign_partitions` over each row's ``candidates`` nearest centroids from
    ``index`` (approximate: a partition outside the candidates is never probed)."""
    n, k = xf.shape[0], c.shape[0]
    m = max(1, min(int(candidates), k))
    s, q = index.search(xf, m)
    q = q.astype(np.int64)
    valid = q >= 0
    primary = np.where(valid[:, 0], q[:, 0], 0).astype(np.int32)
    probes = np.full((n, max(0, max_probes)), -1, dtype=np.int32)
    if m == 1:
        return primary, probes, np.zeros(n, dtype=np.int32)
    qs = np.where(valid, q, 0)
    sq = (c.astype(np.float64) ** 2).sum(1)
    dots = np.empty((n, m), dtype=np.float64)
    step = max(1, int(2**24 // max(1, m * c.shape[1])))  # bounds the gathered n x m x D block
    for a in range(0, n, step):
        b = min(n, a + step)
        dots[a:b] = np.einsum("nd,nmd->nm", c[primary[a:b]], c[qs[a:b]], dtype=np.float64)
    dist = np.sqrt(np.maximum(sq[primary][:, None] + sq[qs] - 2.0 * dots, 0.0))
    margin = s[:, :1].astype(np.float64) - s
    bound = radius * dist
    ok = valid & (qs > primary[:, None]) & (margin <= bound)  # only Q > P (symmetry)
    n_needed = ok.sum(1).astype(np.int32)
    if max_probes > 0:
        ratio = np.where(ok, margin / np.maximum(bound, 1e-12), np.inf)
        rr, cc = np.nonzero(ok)
        if rr.size:
            o = np.lexsort((qs[rr, cc], ratio[rr, cc], rr))
            rr, cc = rr[o], cc[o]
            first = np.searchsorted(rr, rr, side="left")
            rank = np.arange(rr.size) - first
            sel = rank < max_probes
            probes[rr[sel], rank[sel]] = qs[rr[sel], cc[sel]]
    return primary, probes, n_needed


def assign_partitions(
    x: np.ndarray,
    centroids: np.ndarray,
    threshold: float,
    *,
    max_probes: int = MAX_PROBES,
    probe_scale: float = PROBE_SCALE,
    cdist: np.ndarray | None = None,
    slack: float = 0.01,
    index: Any = None,
    candidates: int = ASSIGN_CANDIDATES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Primary partition and probe partitions of each row of ``x``.

    Returns ``(primary (n,), probes (n, max_probes) padded with -1, n_needed (n,))``: the probe
    partitions ``Q > primary`` whose boundary is within ``probe_scale`` x :func:`probe_radius`
    of the row (nearest boundaries first, i.e. smallest margin / bound), and how many
    partitions passed the bound before the cap. ``probe_scale=1`` is the worst-case bound
    (exact when nothing is capped); smaller values assume the offset between duplicates is not
    aligned with the boundary normal.

    With ``index`` (:func:`centroid_index`) only each row's ``candidates`` nearest centroids are
    scored (for large K); ``cdist`` is then not needed.
    """
    xf = _f32(x)
    c = _f32(centroids)
    k = c.shape[0]
    n = xf.shape[0]
    if index is not None and k > 1 and n:
        radius = probe_scale * probe_radius(threshold, slack)
        return _assign_with_index(xf, c, index, radius, max_probes, candidates)
    probes = np.full((n, max(0, max_probes)), -1, dtype=np.int32)
    if k == 1 or n == 0:
        return np.zeros(n, np.int32), probes, np.zeros(n, dtype=np.int32)
    if cdist is None:
        cdist = centroid_distances(c)
    radius = probe_scale * probe_radius(threshold, slack)
    rr, qq, margin, primary = _flat_candidates(xf, c, radius * cdist.max(axis=1))
    bound = radius * cdist[primary[rr], qq]
    ok = (qq > primary[rr]) & (margin <= bound)  # only Q > P (symmetry)
    rr, qq = rr[ok], qq[ok]
    ratio = margin[ok] / np.maximum(bound[ok], 1e-12)
    n_needed = np.bincount(rr, minlength=n).astype(np.int32)
    if max_probes > 0 and rr.size:
        order = np.lexsort((qq, ratio, rr))
        rr, qq = rr[order], qq[order]
        first = np.searchsorted(rr, rr, side="left")
        rank = np.arange(rr.size) - first
        sel = rank < max_probes
        probes[rr[sel], rank[sel]] = qq[sel]
    return primary, probes, n_needed


RELEASE_ROWS = 65_536
"""Rows gathered from a memory-mapped input between two :func:`release_pages` calls."""

FLAT_CANDIDATES = 64
"""The flat assignment asks FAISS for each row's this many most similar centroids (a BLAS
matrix product plus a small heap, instead of N x K elementwise work in numpy); rows whose list
might miss a centroid within the probe bound are scored against every centroid."""


def _flat_candidates(
    xf: np.ndarray, c: np.ndarray, loose: np.ndarray, m: int = FLAT_CANDIDATES
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (row, centroid) pair whose margin ``s[row, primary] - s[row, centroid]`` is at most
    ``loose[primary]`` (plus the primary itself): ``(rows, centroids, margins, primary)``.

    Exact, like scoring all K centroids: a row's ``m`` nearest centroids come from FAISS; when
    the m-th is still within ``loose`` of the first (a centroid beyond the list might be too),
    the row is scored against all K."""
    import faiss

    n, k = xf.shape[0], c.shape[0]
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c)
    m = int(min(k, max(2, m)))
    with faiss_threads(2.0 * n * k * c.shape[1]):
        s, q = index.search(xf, m)
    primary = q[:, 0].astype(np.int32)
    margin = s[:, :1] - s
    lim = loose[primary]
    incomplete = np.flatnonzero(margin[:, -1] <= lim) if m < k else np.zeros(0, np.int64)
    keep = margin <= lim[:, None]
    keep[incomplete] = False
    rr, cc = np.nonzero(keep)
    out_r, out_q, out_m = [rr], [q[rr, cc].astype(np.int64)], [margin[rr, cc]]
    step = max(1, int(2**24 // k))
    for a in range(0, incomplete.size, step):
        rows = incomplete[a : a + step]
        with faiss_threads(2.0 * rows.size * k * c.shape[1]):
            s2, q2 = index.search(xf[rows], k)
        m2 = s[rows, :1] - s2  # the first search's top similarity: the same primary
        r2, c2 = np.nonzero(m2 <= lim[rows, None])
        out_r.append(rows[r2])
        out_q.append(q2[r2, c2].astype(np.int64))
        out_m.append(m2[r2, c2])
    return (
        np.concatenate(out_r).astype(np.int64),
        np.concatenate(out_q),
        np.concatenate(out_m).astype(np.float32),
        primary,
    )


def release_pages(x: Any) -> None:
    """Drop the pages of a memory-mapped array (``np.load(..., mmap_mode="r")``) from this
    process's resident set (``MADV_DONTNEED``; the file stays in the page cache), so a sweep over
    a file larger than memory keeps a bounded RSS. No-op for in-memory arrays."""
    import mmap

    mm = getattr(x, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED)


def gather_rows(x: Any, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` (``rows`` sorted), gathered :data:`RELEASE_ROWS` at a time with
    :func:`release_pages` between, so a sample spread over a memory-mapped file does not leave
    the whole file in this process's resident set."""
    if getattr(x, "_mmap", None) is None:
        return np.asarray(x[rows])
    out = np.empty((len(rows), x.shape[1]), dtype=x.dtype)
    for s in range(0, len(rows), RELEASE_ROWS):
        out[s : s + RELEASE_ROWS] = x[rows[s : s + RELEASE_ROWS]]
        release_pages(x)
    return out


def partitioned_edges(
    x: np.ndarray,
    threshold: float,
    *,
    n_partitions: int | None = None,
    partition_size: int = PARTITION_SIZE,
    max_probes: int = MAX_PROBES,
    probe_scale: float = PROBE_SCALE,
    sample_size: int | None = None,
    sample_index: np.ndarray | None = None,
    niter: int = 10,
    seed: int = 0,
    centroids: np.ndarray | None = None,
    keep_all_pairs: bool = False,
    chunk_size: int = 16384,
    use_gpu: bool | None = None,
    progress: Callable[[Iterable[Any], str, int], Iterable[Any]] | None = None,
    assign: str = "auto",
    candidates: int = ASSIGN_CANDIDATES,
) -> Edges:
    """Near-duplicate pairs through k-means partitions (see the module docstring).

    ``x``: ``N x D`` (float16 is fine; partitions are converted to float32 one at a time).
    ``sample_index``: rows to train k-means on (default: ``sample_size`` random rows, seeded;
    ``sample_size`` defaults to :func:`partition_sample_size`). ``centroids`` skips training.
    Ids in the result are row numbers. ``info`` carries timings and partition statistics.
    """
    t0 = time.perf_counter()
    n, d = x.shape
    gpu = resolve_gpu(use_gpu)
    if centroids is None:
        k = n_partitions or choose_n_partitions(n, partition_size)
        if sample_index is None:
            size = min(n, sample_size or partition_sample_size(n, partition_size))
            rng = np.random.default_rng(seed)
            sample_index = np.sort(rng.choice(n, size=size, replace=False))
        centroids = train_partitioner(
            gather_rows(x, sample_index), k, niter=niter, seed=seed, use_gpu=gpu
        )
    k = centroids.shape[0]
    t_train = time.perf_counter()
    logger.debug("partitioned: %d centroids in %.1f s", k, t_train - t0)
    method = resolve_assign(assign, k)
    index = centroid_index(centroids) if method == "hnsw" and k > 1 else None
    cdist = centroid_distances(centroids) if index is None else None
    primary = np.empty(n, dtype=np.int32)
    probes = np.empty((n, max_probes), dtype=np.int32)
    n_needed = np.empty(n, dtype=np.int32)
    width = min(k, FLAT_CANDIDATES) if index is None else max(1, candidates)
    step = max(1, min(chunk_size, int(2e7 // width)))  # bounds the n x K work arrays
    touched = 0
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        touched += sl.stop - sl.start
        if touched >= RELEASE_ROWS:  # a memory-mapped x: keep the resident set bounded
            release_pages(x)
            touched = 0
        primary[sl], probes[sl], n_needed[sl] = assign_partitions(
            x[sl],
            centroids,
            threshold,
            max_probes=max_probes,
            probe_scale=probe_scale,
            cdist=cdist,
            index=index,
            candidates=candidates,
        )
    release_pages(x)
    touched = 0
    t_assign = time.perf_counter()
    logger.debug("partitioned: %d rows assigned in %.1f s", n, t_assign - t_train)

    base_order = np.argsort(primary, kind="stable")
    base_bounds = np.searchsorted(primary[base_order], np.arange(k + 1))
    q_rows, q_cols = np.nonzero(probes >= 0)
    q_part = probes[q_rows, q_cols]
    q_order = np.argsort(q_part, kind="stable")
    q_ids = q_rows[q_order].astype(np.int64)
    q_bounds = np.searchsorted(q_part[q_order], np.arange(k + 1))

    parts: list[Edges] = []
    sizes = np.diff(base_bounds)
    it: Iterable[int] = range(k)
    if progress is not None:
        it = progress(it, "partitions", k)
    max_work = 0
    for p in it:
        b_ids = base_order[base_bounds[p] : base_bounds[p + 1]].astype(np.int64)
        if b_ids.size == 0:
            continue
        qi = q_ids[q_bounds[p] : q_bounds[p + 1]]
        max_work = max(max_work, b_ids.size + qi.size)
        if b_ids.size + qi.size < 2:
            continue
        touched += b_ids.size + qi.size
        if touched >= RELEASE_ROWS:
            release_pages(x)
            touched = 0
        e = search_partition(
            b_ids, x[b_ids], threshold, qi, x[qi], keep_all_pairs=keep_all_pairs, use_gpu=gpu
        )
        if len(e) or e.n_pairs:
            parts.append(e)
    release_pages(x)
    edges = Edges.concat(parts)
    t_end = time.perf_counter()
    edges.info = {
        "method": "partitioned",
        "n": int(n),
        "n_partitions": int(k),
        "assign": method if index is not None else "flat",
        "max_probes": int(max_probes),
        "probe_scale": float(probe_scale),
        "n_pairs": int(edges.n_pairs),
        "mean_probes": float(np.mean(np.minimum(n_needed, max_probes))) if n else 0.0,
        "n_truncated": int(np.sum(n_needed > max_probes)),
        "partition_size_max": int(sizes.max()) if k else 0,
        "partition_size_median": float(np.median(sizes)) if k else 0.0,
        "max_rows_in_memory": int(max_work),
        "train_seconds": round(t_train - t0, 3),
        "assign_seconds": round(t_assign - t_train, 3),
        "search_seconds": round(t_end - t_assign, 3),
        "seconds": round(t_end - t0, 3),
        "gpu": bool(gpu),
    }
    return edges


def near_duplicate_edges(
    x: np.ndarray,
    threshold: float,
    *,
    method: str = "auto",
    exact_max_n: int = EXACT_MAX_N,
    max_memory_gb: float | None = None,
    **kwargs: Any,
) -> Edges:
    """Dispatch to :func:`exact_edges` or :func:`partitioned_edges`.

    ``auto``: exact when ``N <= exact_max_n`` and the float32 index fits half of
    ``max_memory_gb``; partitioned otherwise (exact time grows with N^2).
    """
    n, d = x.shape
    if method == "auto":
        fits = max_memory_gb is None or n * d * 4 <= max_memory_gb * 1e9 / 2
        method = "exact" if n <= exact_max_n and fits else "partitioned"
    if method == "exact":
        keep = kwargs.get("keep_all_pairs", False)
        return exact_edges(x, threshold, keep_all_pairs=keep, use_gpu=kwargs.get("use_gpu"))
    if method == "partitioned":
        return partitioned_edges(x, threshold, **kwargs)
    raise ValueError(f"unknown near-duplicate method {method!r} (exact, partitioned, auto)")


def near_duplicate_groups(
    keys: Sequence[str] | np.ndarray,
    x: np.ndarray,
    threshold: float,
    *,
    priority: np.ndarray | None = None,
    method: str = "auto",
    partition_size: int = PARTITION_SIZE,
    sample_per_partition: int = SAMPLE_PER_PARTITION,
    max_sample: int = MAX_SAMPLE,
    **kwargs: Any,
) -> tuple[Any, dict]:
    """Near-duplicate groups of keyed vectors as ``duplicates`` rows (kind ``near``).

    Rows are processed in key order; the k-means sample is the deterministic
    :func:`hash_sample` of the keys (what ``pipelines.dedup_beam`` draws), so this is the
    single-machine twin of that pipeline. Group ids are numbered by each group's smallest key;
    the representative has the highest ``priority`` (ties / None: the smallest key).
    Returns ``(table, info)``.
    """
    keys = np.asarray(keys, dtype=object)
    order = np.argsort(keys.astype(str), kind="stable")
    ks, xs = keys[order], x[order]
    if ks.size > 1 and np.any(ks[1:] == ks[:-1]):
        raise ValueError(f"duplicate keys, e.g. {ks[1:][ks[1:] == ks[:-1]][:5].tolist()}")
    pr = None if priority is None else np.asarray(priority, dtype=np.float64)[order]
    if (
        method in ("partitioned", "auto")
        and "sample_index" not in kwargs
        and "centroids" not in kwargs
    ):
        kwargs["sample_index"] = hash_sample(
            ks.astype(str).tolist(),
            partition_sample_size(len(ks), partition_size, sample_per_partition, max_sample),
        )
    if method == "exact":
        kwargs = {k: v for k, v in kwargs.items() if k in ("keep_all_pairs", "use_gpu")}
    else:
        kwargs["partition_size"] = partition_size
    edges = near_duplicate_edges(xs, threshold, method=method, **kwargs)
    labels = components(len(ks), edges)
    nbr, sim = best_partner(len(ks), edges)
    rep = pick_representatives(labels, pr)
    table = group_table(ks, labels, "near", rep, nbr, sim)
    return table, dict(edges.info, n_edges=len(edges))


# ---------------------------------------------------------------------------------------------
# groups
# ---------------------------------------------------------------------------------------------
def relabel_groups(labels: np.ndarray) -> np.ndarray:
    """Renumber group labels 0.. in order of each group's first (smallest) row; singletons and
    -1 become -1."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.shape, -1, dtype=np.int64)
    valid = labels >= 0
    if not valid.any():
        return out
    uniq, first, counts = np.unique(labels[valid], return_index=True, return_counts=True)
    rows = np.flatnonzero(valid)
    keep = counts >= 2
    rank = np.full(uniq.size, -1, dtype=np.int64)
    order = np.argsort(rows[first[keep]], kind="stable")
    rank[np.flatnonzero(keep)[order]] = np.arange(order.size)
    pos = np.searchsorted(uniq, labels[valid])
    out[valid] = rank[pos]
    return out


def components(n: int, edges: Edges) -> np.ndarray:
    """Connected components of ``edges`` over rows ``0..n-1`` (ids must be row numbers).

    Returns labels numbered by first member; rows in no group of size >= 2 get -1.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(edges) == 0:
        return np.full(n, -1, dtype=np.int64)
    g = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges.i, edges.j)), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    return relabel_groups(lab)


def best_partner(n: int, edges: Edges) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the partner with the highest similarity among ``edges`` (ties: smaller row),
    ``-1`` / NaN for rows without an edge."""
    best_sim = np.full(n, -np.inf, dtype=np.float32)
    best_nbr = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    _best_update(
        best_sim,
        best_nbr,
        edges.i.astype(np.int64),
        edges.j.astype(np.int64),
        edges.sim.astype(np.float32),
    )
    none = ~np.isfinite(best_sim)
    best_nbr[none] = -1
    best_sim[none] = np.nan
    return best_nbr, best_sim


def value_groups(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Group rows with equal non-empty values (hashes, normalised captions).

    None, NaN and "" are never grouped. Returns labels numbered by first member, -1 for rows in
    no group of size >= 2.
    """
    import pandas as pd

    s = pd.Series(list(values) if not isinstance(values, np.ndarray) else values, dtype=object)
    s = s.where(s.notna() & (s.astype(str) != ""), None)
    codes, _ = pd.factorize(s, use_na_sentinel=True)
    return relabel_groups(codes)


def merge_labels(n: int, *labelings: np.ndarray) -> np.ndarray:
    """Union of several groupings (e.g. byte hash and pixel hash): rows grouped by any of them
    end up in one group. Labels numbered by first member, -1 for ungrouped rows."""
    edges = []
    for lab in labelings:
        lab = np.asarray(lab, dtype=np.int64)
        rows = np.flatnonzero(lab >= 0)
        if rows.size < 2:
            continue
        order = rows[np.argsort(lab[rows], kind="stable")]
        same = lab[order[1:]] == lab[order[:-1]]
        edges.append(Edges(order[:-1][same], order[1:][same], np.ones(int(same.sum()), np.float32)))
    return components(n, Edges.concat(edges)) if edges else np.full(n, -1, dtype=np.int64)


def pick_representatives(labels: np.ndarray, priority: np.ndarray | None = None) -> np.ndarray:
    """The kept row of each row's group: highest ``priority`` (NaN lowest), ties the smallest
    row. ``priority=None`` keeps the first row. Rows with label -1 get -1."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    rep = np.full(n, -1, dtype=np.int64)
    rows = np.flatnonzero(labels >= 0)
    if rows.size == 0:
        return rep
    pr = np.zeros(n) if priority is None else np.asarray(priority, dtype=np.float64)
    pr = np.where(np.isnan(pr), -np.inf, pr)
    order = np.lexsort((rows, -pr[rows], labels[rows]))
    srt = rows[order]
    lab = labels[srt]
    first = np.ones(srt.size, dtype=bool)
    first[1:] = lab[1:] != lab[:-1]
    g_rep = np.full(labels.max() + 1, -1, dtype=np.int64)
    g_rep[lab[first]] = srt[first]
    rep[rows] = g_rep[labels[rows]]
    return rep


def group_centrality(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine of each grouped row to its group's mean embedding (NaN for ungrouped rows): the
    ``central`` keep-one policy keeps the most typical member."""
    from scipy.sparse import csr_matrix

    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.size, np.nan, dtype=np.float32)
    rows = np.flatnonzero(labels >= 0)
    if rows.size == 0:
        return out
    xs = _f32(x[rows])
    g = csr_matrix(
        (np.ones(rows.size, np.float32), (labels[rows], np.arange(rows.size))),
        shape=(labels.max() + 1, rows.size),
    )
    means = np.asarray(g @ xs)
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    out[rows] = np.einsum("ij,ij->i", xs, means[labels[rows]])
    return out


def group_nearest(
    x: np.ndarray | None, labels: np.ndarray, valid: np.ndarray | None = None, max_group: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Per grouped row, its most similar other member (image cosine) within its group.

    For hash and caption groups. Rows without an embedding (``valid`` False) or ``x=None`` get
    the group's first other member and NaN similarity. Groups larger than ``max_group`` compare
    each member with the group's first ``max_group`` members only (bounded cost; logged).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    nbr = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan, dtype=np.float32)
    rows = np.flatnonzero(labels >= 0)
    if rows.size == 0:
        return nbr, sim
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    order = rows[np.argsort(labels[rows], kind="stable")]
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    n_capped = 0
    for members in np.split(order, bounds):
        # fallback: first other member
        nbr[members] = members[0]
        nbr[members[0]] = members[1]
        ok = members[valid[members]] if x is not None else members[:0]
        if ok.size < 2:
            continue
        ref = ok[:max_group]
        n_capped += int(ok.size > max_group)
        for s in range(0, ok.size, 1024):
            q = ok[s : s + 1024]
            m = _f32(x[q]) @ _f32(x[ref]).T
            m[q[:, None] == ref[None, :]] = -np.inf
            j = np.argmax(m, axis=1)
            nbr[q] = ref[j]
            sim[q] = m[np.arange(q.size), j]
    if n_capped:
        logger.info(
            "%d groups larger than %d: nearest member searched among the first %d",
            n_capped,
            max_group,
            max_group,
        )
    return nbr, sim


def group_table(
    keys: np.ndarray,
    labels: np.ndarray,
    kind: str,
    representative: np.ndarray,
    nearest: np.ndarray,
    similarity: np.ndarray,
    group_offset: int = 0,
) -> Any:
    """Rows of the ``duplicates`` finding for one kind (only rows in groups of size >= 2),
    ordered by group id, then key.

    Columns: key, group_id (int64, ``+ group_offset``), group_size (int32), kind,
    representative_key, is_representative, nearest_key, similarity (float32).
    """
    import pyarrow as pa

    if kind not in KINDS:
        raise ValueError(f"unknown duplicate kind {kind!r} (known: {KINDS})")
    keys = np.asarray(keys, dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.flatnonzero(labels >= 0)
    rows = rows[np.lexsort((keys[rows].astype(str), labels[rows]))] if rows.size else rows
    sizes = np.bincount(labels[rows], minlength=(labels.max() + 1) if rows.size else 0)
    lab = labels[rows]
    rep = representative[rows]
    nb = nearest[rows]
    return pa.table(
        {
            "key": pa.array(keys[rows].tolist(), pa.string()),
            "group_id": pa.array(lab + group_offset, pa.int64()),
            "group_size": pa.array(sizes[lab] if rows.size else [], pa.int32()),
            "kind": pa.array([kind] * rows.size, pa.string()),
            "representative_key": pa.array(keys[rep].tolist() if rows.size else [], pa.string()),
            "is_representative": pa.array(rep == rows, pa.bool_()),
            "nearest_key": pa.array([keys[i] if i >= 0 else None for i in nb], pa.string()),
            "similarity": pa.array(np.asarray(similarity, np.float32)[rows], pa.float32()),
        }
    )


# ---------------------------------------------------------------------------------------------
# calibration against planted groups
# ---------------------------------------------------------------------------------------------
def _pairs_in(counts: np.ndarray) -> int:
    c = counts.astype(np.int64)
    return int((c * (c - 1) // 2).sum())


def group_agreement(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pair-counting precision / recall / F1 of predicted groups against planted groups.

    A pair of rows is predicted when both share a predicted group (label >= 0), true when both
    share a planted group (truth >= 0). Precision = true predicted pairs / predicted pairs;
    recall = true predicted pairs / true pairs (1.0 when a side has no pairs).
    """
    labels = np.asarray(labels, np.int64)
    truth = np.asarray(truth, np.int64)
    pred = _pairs_in(np.unique(labels[labels >= 0], return_counts=True)[1])
    true = _pairs_in(np.unique(truth[truth >= 0], return_counts=True)[1])
    both = (labels >= 0) & (truth >= 0)
    pairs = np.stack([labels[both], truth[both]], axis=1)
    tp = _pairs_in(np.unique(pairs, axis=0, return_counts=True)[1]) if both.any() else 0
    precision = tp / pred if pred else 1.0
    recall = tp / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp_pairs": tp,
        "predicted_pairs": pred,
        "true_pairs": true,
    }


def threshold_sweep(
    x: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float] | np.ndarray | None = None,
    max_n: int = 200_000,
) -> list[dict[str, float]]:
    """Group and direct-pair precision/recall of near-duplicate groups per threshold.

    ``truth``: planted group per row (-1 = none). One exact search at the lowest threshold;
    each threshold's groups are the connected components of the pairs above it.
    """
    if thresholds is None:
        thresholds = np.round(
            np.concatenate([np.arange(0.80, 0.95, 0.01), np.arange(0.95, 0.9995, 0.001)]), 3
        )
    thresholds = np.sort(np.asarray(thresholds, dtype=np.float64))
    n = len(x)
    if n > max_n:
        raise ValueError(f"threshold_sweep: {n} vectors; calibrate on at most {max_n}")
    truth = np.asarray(truth, np.int64)
    e = exact_edges(x, float(thresholds[0]) - 1e-6, keep_all_pairs=True)
    true_direct = _pairs_in(np.unique(truth[truth >= 0], return_counts=True)[1])
    out = []
    for t in thresholds:
        keep = e.sim > t
        sub = Edges(e.i[keep], e.j[keep], e.sim[keep])
        g = group_agreement(components(n, sub), truth)
        same = (truth[sub.i] == truth[sub.j]) & (truth[sub.i] >= 0)
        g.update(
            threshold=float(t),
            pair_precision=float(same.mean()) if len(sub) else 1.0,
            pair_recall=float(same.sum() / true_direct) if true_direct else 1.0,
            n_pairs=int(len(sub)),
        )
        out.append(g)
    return out


def choose_threshold(sweep: list[dict[str, float]], min_precision: float = 0.98) -> dict:
    """The sweep row with the best F1 among those with group precision >= ``min_precision``
    (ties: the lower threshold); if none reaches it, the best F1 overall, with
    ``meets_precision`` False."""
    ok = [r for r in sweep if r["precision"] >= min_precision]
    pool = ok or sweep
    best = max(pool, key=lambda r: (round(r["f1"], 9), -r["threshold"]))
    return dict(best, meets_precision=bool(ok))
