"""Word-level replication: does a keyword's image subset collapse onto a few near-identical works?

Pure functions over arrays (L2-normalised image embeddings, captions, keys); no files, no models.

Method (after Naseh et al. 2023, with the per-cluster hand thresholds replaced by a calibration):

1. **Threshold.** :func:`calibrate_threshold` samples random pairs of the images being clustered
   and sets the copy threshold at ``1 - beta * (1 - median random-pair cosine)`` (``beta`` =
   0.05), clipped to ``[floor, ceiling]`` = [0.8, 0.99]: two images are copies when their cosine
   distance is at most 5% of the distance between two typical images of the same subset. The
   median of random pairs is almost never a copy pair (even if three works cover half of a
   subset, only ~8% of its pairs are copy pairs), and a ratio of distances does not depend on
   the encoder's scale (unrelated pairs sit at cosine ~0.2 for one CLIP, ~0.6 for another).
   A z-score rule (median + z * MAD) was tried first and rejected: with tiny-synth, unrelated
   images of one concept reach cosine 0.99 while crops of one work go down to 0.90, the
   random-pair distribution is far from Gaussian (subset "van gogh": median 0.42, MAD 0.22,
   99.9th percentile of non-copy pairs 0.94), and ``median + 6 MAD`` exceeded 1.
2. **Graph.** :func:`neighbor_graph`: exact FAISS range search (a flat inner-product index up to
   ``exact_limit`` vectors, the k-means-partitioned search of :mod:`detectors.dedup` above) gives
   every pair above the threshold, as a sparse symmetric adjacency (indices only; memory grows
   with the number of near pairs, i.e. with the square of the largest cluster, not of the
   subset).
3. **Clusters.** :func:`star_clusters`: greedy star clustering on that graph: the unassigned
   image with the most unassigned neighbours becomes a centre and takes all its unassigned
   neighbours; repeat. Every member is within the threshold of its centre, so one cluster is one
   work and clusters never chain through intermediate images. :func:`component_clusters`
   (connected components, what fastdup does) is kept as the alternative (``method``).
   Measured on three 2,000-row testbeds (``benchmarks/bench_replication.py``, "van gogh"
   subset, works found as flagged top-3 clusters of purity >= 0.9 out of 9, flagged clusters
   that are not works): at beta 0.03 both 9/9, 0; at the default 0.05 star 9/9, 0 and
   components 9/9, 1; at 0.10 star 9/9, 6 and components 9/9, 8; at 0.15 star 9/9 and
   components 7/9; at 0.20 star 8/9 and components 1/9 (chained into one 23-image cluster).
   Star clustering degrades gracefully as the threshold loosens; components do not.
4. **Per cluster** (:func:`summarize_clusters`): size, share of the subset, medoid (member with
   the highest mean similarity to the others), mean/min similarity to the medoid, the members
   nearest the medoid as representatives.
5. **Words** (:class:`WordStats`): scikit-learn ``CountVectorizer`` (binary, English stop
   words, the keyword's own words and their plurals removed) over the subset's captions; a word
   is characteristic of a cluster when it appears in at least ``min_support`` = 20% of the
   cluster's captions (and at least 2), ranked by lift = P(word | cluster) / P(word | subset),
   ties by count. ``prompt_words`` are the cluster's core words (in at least half of its
   captions, with at least half the best word's lift, so "painting", shared by all works, is
   left out) in the order they usually appear in ("starry night", not "night starry").
6. **Flag**: a cluster is a replication when it is large (``size >= flag_min_size`` = 5 and
   ``share >= flag_min_share`` = 2% of the subset; at LAION scale the share decides, the size
   only keeps the pairs and triples of reposts found in every subset out of small subsets) and
   tight (mean cosine of its members to the medoid at least the copy threshold, i.e. a mean
   distance at most ``beta`` times the random-pair median distance, see
   :func:`distance_ratio`; always true for star clusters, not for connected components).

Discovery (:func:`discover_terms`) scores each frequent caption word or bigram by the share of
its subset covered by its few largest tight clusters, times ``log(subset size)``, on one global
neighbour graph; terms whose replicated images are already explained by a broader term
(e.g. "starry night" inside "van gogh") are folded into it. Up to 300 terms are scanned, so a
discovered term also needs its largest cluster's share to exceed the flag share at a
Benjamini-Hochberg q-level over every scanned term (:func:`discovery_fdr`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from detectors.stats import (
    DEFAULT_FDR,
    FDR_METHOD,
    benjamini_hochberg,
    binomial_pvalue,
    median_mad,
    normalize_rows,
)
from detectors.text import match_keyword, normalize_caption

logger = logging.getLogger(__name__)

NAME = "word_replication_v1"
DISCOVERY_NAME = "replication_discovery_v1"

DEFAULT_BETA = 0.05
DEFAULT_FLOOR = 0.8
DEFAULT_CEILING = 0.99

# --------------------------------------------------------------------------------------------
# calibration


@dataclass
class PairStats:
    """Cosine similarity of random pairs: the "unrelated images" reference distribution."""

    n_pairs: int
    median: float
    mad: float  # scaled MAD (1.4826 * median absolute deviation): a robust standard deviation
    q99: float
    q999: float
    threshold: float
    beta: float

    def to_dict(self) -> dict[str, float]:
        return {
            "n_pairs": self.n_pairs,
            "median": self.median,
            "mad": self.mad,
            "q99": self.q99,
            "q999": self.q999,
            "threshold": self.threshold,
            "beta": self.beta,
        }


def random_pair_similarities(emb: np.ndarray, n_pairs: int = 20000, seed: int = 0) -> np.ndarray:
    """Cosine similarity of ``n_pairs`` random pairs of distinct rows (with replacement)."""
    n = emb.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 embeddings to sample pairs (got {n})")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, n_pairs)
    b = rng.integers(0, n - 1, n_pairs)
    b = b + (b >= a)  # never pair a row with itself
    x = np.asarray(emb, np.float32)
    return np.einsum("ij,ij->i", x[a], x[b])


def calibrate_threshold(
    emb: np.ndarray,
    *,
    beta: float = DEFAULT_BETA,
    floor: float = DEFAULT_FLOOR,
    ceiling: float = DEFAULT_CEILING,
    n_pairs: int = 20000,
    seed: int = 0,
) -> PairStats:
    """Copy threshold = clip(1 - beta * (1 - median random-pair cosine), floor, ceiling).

    A copy lies at most ``beta`` times as far (in cosine distance) as a typical random pair of
    the same images: scale-free, so it adapts to encoders whose unrelated pairs sit at 0.2 or at
    0.6 cosine (module docstring).
    """
    sims = random_pair_similarities(emb, n_pairs, seed)
    if not np.isfinite(sims).all():
        raise ValueError(
            f"{int((~np.isfinite(sims)).sum())} of {sims.size} random-pair similarities are not "
            "finite: the embeddings hold NaN or inf rows"
        )
    med, mad = median_mad(sims)
    thr = float(np.clip(1.0 - beta * (1.0 - med), floor, ceiling))
    return PairStats(
        n_pairs=int(sims.size),
        median=med,
        mad=mad,
        q99=float(np.quantile(sims, 0.99)),
        q999=float(np.quantile(sims, 0.999)),
        threshold=thr,
        beta=beta,
    )


def distance_ratio(value: float | np.ndarray, stats: PairStats) -> float | np.ndarray:
    """Cosine distance ``1 - value`` relative to the random-pair median distance: 0 for
    identical images, 1 for as far apart as a typical random pair."""
    return (1.0 - np.asarray(value, np.float64)) / max(1.0 - stats.median, 1e-6)


# --------------------------------------------------------------------------------------------
# neighbour graph and clustering


def neighbor_graph(
    emb: np.ndarray,
    threshold: float,
    *,
    exact_limit: int = 50_000,
    batch_size: int = 4096,
    seed: int = 0,
) -> sp.csr_matrix:
    """Symmetric boolean adjacency of pairs with cosine similarity ``> threshold`` (no self loops).

    Up to ``exact_limit`` rows: exact FAISS range search on a flat inner-product index (rows
    must be L2-normalised), queries batched. Above: the k-means-partitioned exact search of
    :func:`detectors.dedup.partitioned_edges` with every pair kept, whose memory is bounded by
    partition size (plus the pairs found: the adjacency grows with the square of the largest
    cluster, not of ``n``).
    """
    x = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = x.shape
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=bool)
    if n > exact_limit:
        from detectors.dedup import partitioned_edges

        e = partitioned_edges(x, float(threshold), keep_all_pairs=True, seed=seed)
        r = np.asarray(e.i, np.int64)
        c = np.asarray(e.j, np.int64)
    else:
        import faiss

        index = faiss.IndexFlatIP(d)
        index.add(x)
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        for start in range(0, n, batch_size):
            q = x[start : start + batch_size]
            lims, _dist, ids = index.range_search(q, float(threshold))
            counts = np.diff(lims).astype(np.int64)
            rows.append(np.repeat(np.arange(start, start + len(q), dtype=np.int64), counts))
            cols.append(ids.astype(np.int64))
        r = np.concatenate(rows)
        c = np.concatenate(cols)
    keep = r != c
    r, c = r[keep], c[keep]
    g = sp.coo_matrix((np.ones(len(r), dtype=bool), (r, c)), shape=(n, n)).tocsr()
    g = (g + g.T).astype(bool).tocsr()
    g.sum_duplicates()
    return g


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel so that 0 is the largest cluster (ties: smallest first member index)."""
    uniq, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    mapping = np.empty(len(uniq), np.int64)
    mapping[order] = np.arange(len(uniq))
    return mapping[np.searchsorted(uniq, labels)]


def star_clusters(graph: sp.csr_matrix) -> np.ndarray:
    """Greedy star clustering: labels with 0 = largest cluster; singletons get their own label.

    Repeatedly take the unassigned node with the highest degree (among all nodes, computed once)
    as a centre and give it every unassigned neighbour. Every member is adjacent to its centre.
    """
    g = graph.tocsr()
    n = g.shape[0]
    labels = np.full(n, -1, np.int64)
    degree = np.diff(g.indptr)
    order = np.lexsort((np.arange(n), -degree))
    next_label = 0
    for p in order:
        if labels[p] >= 0:
            continue
        nb = g.indices[g.indptr[p] : g.indptr[p + 1]]
        nb = nb[labels[nb] < 0]
        labels[p] = next_label
        labels[nb] = next_label
        next_label += 1
    return _relabel_by_size(labels) if n else labels


def component_clusters(graph: sp.csr_matrix) -> np.ndarray:
    """Connected components of the threshold graph, 0 = largest (can chain unlike images)."""
    from scipy.sparse.csgraph import connected_components

    if graph.shape[0] == 0:
        return np.zeros(0, np.int64)
    _, labels = connected_components(graph, directed=False)
    return _relabel_by_size(labels)


def cluster_embeddings(
    emb: np.ndarray, threshold: float, method: str = "star", **graph_kwargs: Any
) -> np.ndarray:
    """Cluster L2-normalised rows at a cosine ``threshold``; labels sorted by size (0 largest)."""
    g = neighbor_graph(emb, threshold, **graph_kwargs)
    if method == "star":
        return star_clusters(g)
    if method == "components":
        return component_clusters(g)
    raise ValueError(f"unknown clustering method {method!r} (known: star, components)")


# --------------------------------------------------------------------------------------------
# cluster statistics


@dataclass
class ClusterStats:
    """One cluster: member row indices (into the clustered array) and its tightness."""

    rank: int
    members: np.ndarray
    medoid: int
    mean_sim: float
    min_sim: float
    representatives: np.ndarray  # members nearest the medoid, medoid first

    @property
    def size(self) -> int:
        return int(len(self.members))


def medoid_of(emb: np.ndarray, members: np.ndarray, max_ref: int = 2048, seed: int = 0) -> int:
    """The member with the highest mean cosine similarity to the others (estimated against at
    most ``max_ref`` random members for very large clusters)."""
    if len(members) <= 2:
        return int(members[0])
    x = emb[members]
    ref = x
    if len(members) > max_ref:
        rng = np.random.default_rng(seed)
        ref = x[rng.choice(len(members), max_ref, replace=False)]
    score = np.zeros(len(members), np.float64)
    for s in range(0, len(members), 4096):
        score[s : s + 4096] = (x[s : s + 4096] @ ref.T).sum(1)
    return int(members[int(np.argmax(score))])


def summarize_clusters(
    emb: np.ndarray, labels: np.ndarray, min_size: int = 2, n_representatives: int = 8
) -> list[ClusterStats]:
    """Statistics of every cluster with at least ``min_size`` members, largest first."""
    out: list[ClusterStats] = []
    if len(labels) == 0:
        return out
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    groups = np.split(order, bounds)
    groups.sort(key=lambda m: (-len(m), int(m.min())))
    for rank, members in enumerate(groups):
        if len(members) < min_size:
            break
        members = np.sort(members)
        med = medoid_of(emb, members)
        sims = emb[members] @ emb[med]
        others = members != med
        near = members[np.argsort(-sims, kind="stable")][:n_representatives]
        out.append(
            ClusterStats(
                rank=rank,
                members=members,
                medoid=med,
                mean_sim=float(sims[others].mean()) if others.any() else 1.0,
                min_sim=float(sims[others].min()) if others.any() else 1.0,
                representatives=near,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# characteristic words


def keyword_words(keywords: Sequence[str]) -> list[str]:
    """The individual normalised words of one or more keywords."""
    words: list[str] = []
    for kw in keywords:
        for w in normalize_caption(kw).split():
            if w not in words:
                words.append(w)
    return words


class WordStats:
    """Binary word counts of a caption set, for per-cluster lift ranking.

    ``exclude``: words left out with their plurals (the keyword itself). Captions are
    normalised (:func:`detectors.text.normalize_caption`) before counting; tokens are words of
    two or more characters, English stop words removed.
    """

    def __init__(
        self,
        captions: Sequence[str | None],
        exclude: Sequence[str] = (),
        ngram_range: tuple[int, int] = (1, 1),
        min_df: int = 1,
    ) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        docs = [normalize_caption(c) for c in captions]
        self.n_docs = len(docs)
        vec = CountVectorizer(
            stop_words="english", binary=True, ngram_range=ngram_range, min_df=min_df
        )
        try:
            x = vec.fit_transform(docs)
            vocab = vec.get_feature_names_out()
        except ValueError:  # empty vocabulary (all captions empty or stop words)
            x = sp.csr_matrix((len(docs), 0), dtype=np.int64)
            vocab = np.array([], dtype=object)
        keep = np.ones(len(vocab), bool)
        for w in exclude:
            hit = match_keyword(list(vocab), w)
            # a term containing an excluded word as one of its words is dropped as well
            keep &= ~hit
        self.vocab = np.asarray(vocab, dtype=object)[keep]
        self.x = sp.csr_matrix(x[:, np.flatnonzero(keep)], dtype=np.int32)
        self.df = np.asarray(self.x.sum(0)).ravel()
        self.docs = docs

    def top_words(
        self, members: np.ndarray, top_n: int = 10, min_support: float = 0.2, min_count: int = 2
    ) -> list[tuple[str, float, int]]:
        """(word, lift, count in cluster) for the cluster's characteristic words, best first."""
        m = len(members)
        if m == 0 or self.x.shape[1] == 0:
            return []
        cnt = np.asarray(self.x[members].sum(0)).ravel()
        need = max(min_count, math.ceil(min_support * m))
        ok = np.flatnonzero(cnt >= need)
        if ok.size == 0:
            return []
        lift = (cnt[ok] / m) / (self.df[ok] / self.n_docs)
        order = np.lexsort((self.vocab[ok].astype(str), -cnt[ok], -np.round(lift, 9)))[:top_n]
        return [(str(self.vocab[ok][i]), float(lift[i]), int(cnt[ok][i])) for i in order]

    def prompt_words(
        self,
        members: np.ndarray,
        words: Sequence[str],
        core_support: float = 0.5,
        core_lift: float = 0.5,
    ) -> str:
        """The cluster's core words, ordered by their median position in its captions.

        Core words: among ``words`` (best first), those in at least ``core_support`` of the
        members' captions whose lift is at least ``core_lift`` times the best word's lift (so a
        generic word shared by several works, like "painting", is left out); else the best word.
        """
        if not words:
            return ""
        m = max(len(members), 1)
        idx = {w: i for i, w in enumerate(self.vocab)}
        core = []
        best_lift = None
        for w in words:
            j = idx.get(w)
            if j is None:
                continue
            c = float(self.x[members, j].sum())
            lift = (c / m) / (self.df[j] / self.n_docs)
            if best_lift is None:
                best_lift = lift
            if c / m >= core_support and lift >= core_lift * best_lift:
                core.append(w)
        if not core:
            core = [words[0]]
        pos: dict[str, float] = {}
        for w in core:
            positions = []
            for r in members:
                toks = self.docs[r].split()
                if w in toks:
                    positions.append(toks.index(w) / max(len(toks), 1))
            pos[w] = float(np.median(positions)) if positions else 1.0
        return " ".join(sorted(core, key=lambda w: (pos[w], core.index(w))))


# --------------------------------------------------------------------------------------------
# the word-level analysis


@dataclass
class ReplicationResult:
    """Rows (one per cluster of at least ``min_cluster_size``) plus calibration metadata."""

    rows: list[dict[str, Any]]
    pair_stats: PairStats | None
    n_subset: int
    labels: np.ndarray
    clusters: list[ClusterStats] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        flagged = [r for r in self.rows if r["flagged"]]
        return {
            "n_subset": self.n_subset,
            "n_clusters_reported": len(self.rows),
            "n_flagged": len(flagged),
            "flagged_share": float(sum(r["share"] for r in flagged)),
            "largest_share": float(self.rows[0]["share"]) if self.rows else 0.0,
            "pair_stats": self.pair_stats.to_dict() if self.pair_stats else None,
        }


def word_replication(
    emb: np.ndarray,
    captions: Sequence[str | None],
    keys: Sequence[str],
    keyword: str,
    *,
    threshold: float | None = None,
    beta: float = DEFAULT_BETA,
    floor: float = DEFAULT_FLOOR,
    ceiling: float = DEFAULT_CEILING,
    method: str = "star",
    min_cluster_size: int = 3,
    flag_min_size: int = 5,
    flag_min_share: float = 0.02,
    top_words: int = 10,
    min_support: float = 0.2,
    n_examples: int = 5,
    seed: int = 0,
) -> ReplicationResult:
    """Cluster one keyword subset (rows already selected) and describe every cluster.

    ``emb`` must be the subset's L2-normalised image embeddings (failed samples already
    dropped). ``threshold=None`` calibrates the copy threshold on random pairs of the subset
    (module docstring). Clusters smaller than ``min_cluster_size`` are not reported (they are
    counted in the summary). ``words_only_share`` is left ``None``: it needs captions outside
    the subset, see :func:`words_only_share`.
    """
    n = emb.shape[0]
    if len(captions) != n or len(keys) != n:
        raise ValueError(
            f"emb, captions and keys must have the same length (got {n}, {len(captions)}, "
            f"{len(keys)})"
        )
    x = normalize_rows(emb)
    if n < 2:
        return ReplicationResult([], None, n, np.zeros(n, np.int64))
    stats = calibrate_threshold(x, beta=beta, floor=floor, ceiling=ceiling, seed=seed)
    if threshold is not None:
        stats.threshold = float(threshold)
    labels = cluster_embeddings(x, stats.threshold, method=method)
    clusters = summarize_clusters(x, labels, min_size=min_cluster_size)
    words = WordStats(captions, exclude=keyword_words([keyword]))
    key_arr = np.asarray(keys, dtype=object)
    rows: list[dict[str, Any]] = []
    for c in clusters:
        tw = words.top_words(c.members, top_n=top_words, min_support=min_support)
        word_list = [w for w, _, _ in tw]
        share = c.size / n
        ratio = float(distance_ratio(c.mean_sim, stats))
        tight = c.mean_sim >= stats.threshold
        flagged = bool(c.size >= flag_min_size and share >= flag_min_share and tight)
        ex_idx = c.representatives[:n_examples]
        rows.append(
            {
                "finding_id": f"word:{keyword}:{c.rank}",
                "keyword": keyword,
                "cluster_rank": c.rank,
                "size": c.size,
                "share": share,
                "mean_sim": c.mean_sim,
                "min_sim": c.min_sim,
                "distance_ratio": ratio,
                "medoid_key": str(key_arr[c.medoid]),
                "representative_keys": [str(k) for k in key_arr[c.representatives]],
                "member_keys": [str(k) for k in key_arr[c.members]],
                "top_words": word_list,
                "top_word_lift": [lift for _, lift, _ in tw],
                "top_word_support": [cnt / c.size for _, _, cnt in tw],
                "prompt_words": words.prompt_words(c.members, word_list),
                "example_captions": [str(captions[i] or "") for i in ex_idx],
                "words_only_n": None,
                "words_only_share": None,
                "flagged": flagged,
                "threshold": stats.threshold,
                "detector": NAME,
            }
        )
    return ReplicationResult(rows, stats, n, labels, clusters)


def words_only_share(
    emb_words_only: np.ndarray,
    work_emb: np.ndarray,
    threshold: float,
    *,
    method: str = "star",
    min_n: int = 3,
) -> tuple[float | None, dict[str, Any]]:
    """The "frequency matters" share for one cluster.

    ``emb_words_only``: images whose captions contain the cluster's words but not the keyword.
    They are clustered at ``threshold``; the result is the share of them in the largest cluster
    if that cluster coincides with the keyword's work (its medoid is above ``threshold`` to the
    medoid of the work, ``work_emb``), else the share of the cluster that does coincide (0.0 if
    none does). ``None`` when fewer than ``min_n`` such images exist.
    """
    n = emb_words_only.shape[0]
    info: dict[str, Any] = {"n": int(n), "largest_share": None, "largest_is_work": None}
    if n < min_n:
        return None, info
    x = normalize_rows(emb_words_only)
    w = normalize_rows(np.asarray(work_emb, np.float32).reshape(1, -1))[0]
    labels = cluster_embeddings(x, threshold, method=method)
    clusters = summarize_clusters(x, labels, min_size=1)
    info["largest_share"] = clusters[0].size / n
    for c in clusters:
        if float(x[c.medoid] @ w) >= threshold:
            info["largest_is_work"] = c.rank == 0
            return c.size / n, info
    info["largest_is_work"] = False
    return 0.0, info


# --------------------------------------------------------------------------------------------
# discovery


@dataclass
class TermScore:
    """Replication score of one candidate term (a caption word or bigram)."""

    term: str
    n: int
    top_share: float  # share of the subset in its largest tight cluster
    coverage: float  # share in its ``top_k`` largest tight clusters of at least min_size
    n_clusters: int  # how many clusters of at least min_size
    score: float
    explained_by: str | None = None
    cluster_members: list[np.ndarray] = field(default_factory=list, repr=False)
    rows: np.ndarray | None = field(default=None, repr=False)
    p_value: float | None = None  # set by :func:`discovery_fdr`
    q_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "term": self.term,
            "n": self.n,
            "top_share": self.top_share,
            "coverage": self.coverage,
            "n_clusters": self.n_clusters,
            "score": self.score,
            "explained_by": self.explained_by,
            "p_value": self.p_value,
            "q_value": self.q_value,
        }


def candidate_terms(
    captions: Sequence[str | None],
    *,
    min_count: int = 20,
    max_terms: int = 300,
    max_doc_share: float = 0.5,
) -> tuple[list[str], sp.csc_matrix]:
    """The ``max_terms`` most frequent caption words and bigrams (stop words removed, numbers
    dropped) seen in at least ``min_count`` and at most ``max_doc_share`` of the captions, with
    their binary caption-term matrix (columns in the same order)."""
    from sklearn.feature_extraction.text import CountVectorizer

    docs = [normalize_caption(c) for c in captions]
    n = len(docs)
    vec = CountVectorizer(
        stop_words="english",
        binary=True,
        ngram_range=(1, 2),
        token_pattern=r"(?u)\b[^\W\d_][^\W\d_]+\b",
        min_df=max(1, min(min_count, n)),
        max_df=max_doc_share,
        max_features=max_terms,
    )
    try:
        x = vec.fit_transform(docs)
    except ValueError:
        return [], sp.csc_matrix((n, 0), dtype=np.int32)
    terms = [str(t) for t in vec.get_feature_names_out()]
    return terms, sp.csc_matrix(x, dtype=np.int32)


def _term_clusters(
    graph: sp.csr_matrix, rows: np.ndarray, min_size: int, top_k: int
) -> tuple[list[np.ndarray], int]:
    sub = graph[rows][:, rows]
    labels = star_clusters(sub)
    counts = np.bincount(labels)
    big = np.flatnonzero(counts >= min_size)  # labels are sorted by size
    members = [rows[labels == lab] for lab in big[:top_k]]
    return members, int(big.size)


def discover_terms(
    emb: np.ndarray,
    captions: Sequence[str | None],
    *,
    threshold: float | None = None,
    beta: float = DEFAULT_BETA,
    floor: float = DEFAULT_FLOOR,
    ceiling: float = DEFAULT_CEILING,
    min_subset: int = 20,
    max_terms: int = 300,
    cluster_min_size: int = 10,
    top_k: int = 3,
    overlap: float = 0.5,
    seed: int = 0,
    graph: sp.csr_matrix | None = None,
) -> tuple[list[TermScore], PairStats]:
    """Rank frequent caption words and bigrams by replication score, best first.

    One global neighbour graph over all rows (threshold calibrated on random pairs of all rows);
    each term's subset is clustered on its induced subgraph. ``score = coverage * ln(n)`` where
    ``coverage`` is the share of the subset in its ``top_k`` largest tight clusters of at least
    ``cluster_min_size`` images (the word-level flag size, so that small duplicate groups, present
    in every subset, do not count): a keyword whose images collapse onto a few works over a
    large subset scores high; a term with no large tight cluster scores 0.

    A term A is *explained by* a term B (and moved after every unexplained term) when most of A's
    subset is inside B's (``|A & B| >= overlap * |A|``), B's subset is larger (or equal with more
    words), and A's largest cluster lies mostly (``overlap``) inside one of B's clusters: then A
    names a work of B's (as "starry night" does for "van gogh"), and the word-level analysis of
    B reports it among the cluster's characteristic words.
    """
    x = normalize_rows(emb)
    stats = calibrate_threshold(x, beta=beta, floor=floor, ceiling=ceiling, seed=seed)
    if threshold is not None:
        stats.threshold = float(threshold)
    if graph is None:
        graph = neighbor_graph(x, stats.threshold)
    terms, mat = candidate_terms(captions, min_count=min_subset, max_terms=max_terms)
    scores: list[TermScore] = []
    for j, term in enumerate(terms):
        rows = mat.indices[mat.indptr[j] : mat.indptr[j + 1]]
        rows = np.unique(rows)
        n = len(rows)
        if n < min_subset:
            continue
        members, n_big = _term_clusters(graph, rows, cluster_min_size, top_k)
        top_share = len(members[0]) / n if members else 0.0
        coverage = sum(len(m) for m in members) / n
        scores.append(
            TermScore(
                term=term,
                n=n,
                top_share=top_share,
                coverage=coverage,
                n_clusters=n_big,
                score=coverage * math.log(n),
                cluster_members=members,
                rows=rows,
            )
        )
    _fold_explained(scores, overlap)
    scores.sort(key=lambda s: (s.explained_by is not None, -s.score, -s.n, s.term))
    return scores, stats


def discovery_fdr(
    scores: list[TermScore], min_share: float = 0.02, fdr: float | None = DEFAULT_FDR
) -> dict[str, Any]:
    """Multiple-testing control of discovery, in place: every scanned term is a test.

    A term's p-value is the one-sided exact binomial test that its largest tight cluster
    (``top_share * n`` of its ``n`` images) holds more than ``min_share`` of its subset (the
    word-level flag share), treating the cluster as given (the search for the largest cluster
    is not modelled, so the p-value is a screening value, on the lenient side). ``q_value`` is
    its Benjamini-Hochberg adjustment over all scanned terms; with ``fdr`` set, a term is only
    *discovered* when ``q_value <= fdr`` (:func:`discovered`): among a few hundred terms, a
    cluster that clears 2% by chance in one of them is expected. Returns a description for the
    finding's JSON."""
    sizes = np.array([round(s.top_share * s.n) for s in scores], dtype=np.float64)
    n = np.array([s.n for s in scores], dtype=np.float64)
    p = binomial_pvalue(sizes, n, min_share) if len(scores) else np.zeros(0)
    q = benjamini_hochberg(p) if fdr is not None else p
    for s, pv, qv in zip(scores, np.atleast_1d(p), np.atleast_1d(q)):
        s.p_value, s.q_value = float(pv), float(qv)
    return {
        "method": FDR_METHOD if fdr is not None else "none",
        "q_level": fdr,
        "n_tests": len(scores),
        "test": f"one-sided exact binomial: largest tight cluster's share of the term's subset "
        f"> {min_share}",
        "n_significant_unadjusted": int((np.asarray(p) <= (fdr or 0.05)).sum()),
        "n_significant": int((np.asarray(q) <= (fdr if fdr is not None else 1.0)).sum()),
    }


def discovered(scores: list[TermScore], top: int, fdr: float | None = DEFAULT_FDR) -> list[str]:
    """The terms discovery hands on as keywords: not explained by a broader term, a positive
    score, ``q_value <= fdr`` (when :func:`discovery_fdr` ran), best ``top`` first."""
    out = []
    for s in scores:
        if s.explained_by is not None or s.score <= 0:
            continue
        if fdr is not None and s.q_value is not None and s.q_value > fdr:
            continue
        out.append(s.term)
    return out[:top]


def _fold_explained(scores: list[TermScore], overlap: float) -> None:
    """Set ``explained_by`` on terms whose replication a broader term already covers."""
    with_clusters = [s for s in scores if s.cluster_members and s.rows is not None]

    def broader(b: TermScore, a: TermScore) -> bool:
        kb, ka = (b.n, len(b.term.split())), (a.n, len(a.term.split()))
        return kb > ka or (kb == ka and b.term < a.term)

    for a in with_clusters:
        top = a.cluster_members[0]
        best: TermScore | None = None
        for b in with_clusters:
            if b is a or not broader(b, a) or (best is not None and not broader(b, best)):
                continue
            if not any(np.isin(top, m).sum() >= overlap * len(top) for m in b.cluster_members):
                continue
            if len(np.intersect1d(a.rows, b.rows, assume_unique=True)) < overlap * a.n:
                continue
            best = b
        if best is not None:
            a.explained_by = best.term
    # follow chains (A explained by B, B explained by C -> A explained by C)
    final = {s.term: s.explained_by for s in scores}
    for s in scores:
        seen = {s.term}
        e = s.explained_by
        while e is not None and final.get(e) is not None and e not in seen:
            seen.add(e)
            e = final[e]
        s.explained_by = e


# --------------------------------------------------------------------------------------------
# one keyword, and discovery, over a whole collection

WORD_PARAMS: tuple[str, ...] = (
    "beta",
    "floor",
    "ceiling",
    "method",
    "min_cluster_size",
    "flag_min_size",
    "flag_min_share",
    "top_words",
    "min_support",
    "seed",
)
"""The :func:`word_replication` parameters :func:`keyword_replication` passes on."""


def keyword_replication(
    emb: np.ndarray,
    captions: Sequence[str],
    keys: Sequence[str],
    keyword: str,
    *,
    usable: np.ndarray | None = None,
    threshold: float | None = None,
    source: str = "keyword",
    min_subset: int = 20,
    **params: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Word-level analysis of one keyword over a collection (``emb`` (n, d), ``captions`` and
    ``keys`` of every usable image): the captions naming the keyword (``usable`` False rows
    left out, e.g. captions too long for the tokenizer) form the subset, clustered by
    :func:`word_replication` (``params``: :data:`WORD_PARAMS`; ``threshold`` None: calibrated
    per subset); each flagged cluster with prompt words gets the "frequency matters" share
    (:func:`words_only_share` over the images whose captions carry the cluster's words but not
    the keyword). Returns the rows and a summary (``skipped`` when the subset is smaller than
    ``min_subset``)."""
    import time

    t0 = time.perf_counter()
    kw_mask = match_keyword(captions, keyword)
    ok = np.ones(len(captions), bool) if usable is None else np.asarray(usable, bool)
    subset = np.flatnonzero(kw_mask & ok)
    summary: dict[str, Any] = {
        "keyword": keyword,
        "source": source,
        "n_matching": int(kw_mask.sum()),
        "n_dropped_long_captions": int((kw_mask & ~ok).sum()),
        "n_subset": int(len(subset)),
    }
    if len(subset) < min_subset:
        logger.warning(
            "keyword %r: %d usable samples (< min_subset %d); not analysed",
            keyword,
            len(subset),
            min_subset,
        )
        summary["skipped"] = f"subset smaller than min_subset={min_subset}"
        return [], summary
    key_arr = np.asarray(keys, dtype=object)
    res = word_replication(
        emb[subset], [captions[i] for i in subset], list(key_arr[subset]), keyword,
        threshold=threshold, **params,
    )  # fmt: skip
    method = params.get("method", "star")
    for row, cl in zip(res.rows, res.clusters):
        if not (row["flagged"] and row["prompt_words"]):
            continue
        mask = ~kw_mask
        for w in row["prompt_words"].split():
            mask &= match_keyword(captions, w)
        medoid_vec = emb[subset[cl.medoid]]
        share, info = words_only_share(emb[mask], medoid_vec, row["threshold"], method=method)
        row["words_only_n"] = info["n"]
        row["words_only_share"] = share
    for row in res.rows:
        row["n_subset"] = res.n_subset
        row["source"] = source
    summary.update(res.summary())
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    logger.info(
        "keyword %r: %d samples, %d clusters reported, %d flagged (largest share %.3f)",
        keyword,
        res.n_subset,
        len(res.rows),
        summary["n_flagged"],
        summary["largest_share"],
    )
    return res.rows, summary


def discover_keywords(
    emb: np.ndarray,
    captions: Sequence[str],
    *,
    top: int = 3,
    fdr: float | None = DEFAULT_FDR,
    flag_min_share: float = 0.02,
    **params: Any,
) -> tuple[list[str], dict[str, Any]]:
    """The ``top`` terms :func:`discover_terms` (``params``) ranks highest that pass
    :func:`discovery_fdr` at ``fdr``, and the discovery record for the finding's JSON (pair
    statistics, the first 100 of the ranking, the correction, seconds)."""
    import time

    t0 = time.perf_counter()
    scores, stats = discover_terms(emb, captions, **params)
    correction = discovery_fdr(scores, flag_min_share, fdr)
    chosen = discovered(scores, top, fdr)
    return chosen, {
        "detector": DISCOVERY_NAME,
        "pair_stats": stats.to_dict(),
        "chosen": chosen,
        "ranking": [s.to_dict() for s in scores[:100]],
        "multiple_testing": correction,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def finding_table(rows: list[dict[str, Any]]) -> Any:
    """The ``word_replication`` finding: the rows of :func:`keyword_replication` as an Arrow
    table (one row per cluster; member keys as a list column)."""
    import pyarrow as pa

    words = pa.list_(pa.string())
    schema = pa.schema(
        [
            ("finding_id", pa.string()),
            ("keyword", pa.string()),
            ("cluster_rank", pa.int32()),
            ("size", pa.int32()),
            ("share", pa.float64()),
            ("mean_sim", pa.float32()),
            ("min_sim", pa.float32()),
            ("distance_ratio", pa.float32()),
            ("medoid_key", pa.string()),
            ("representative_keys", words),
            ("member_keys", words),
            ("top_words", words),
            ("top_word_lift", pa.list_(pa.float64())),
            ("top_word_support", pa.list_(pa.float64())),
            ("prompt_words", pa.string()),
            ("example_captions", words),
            ("words_only_n", pa.int32()),
            ("words_only_share", pa.float64()),
            ("flagged", pa.bool_()),
            ("threshold", pa.float32()),
            ("n_subset", pa.int32()),
            ("source", pa.string()),
            ("detector", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)
