"""Concept frequency: word frequency and semantic frequency of concepts among captions.

* **word frequency**: share of captions naming the concept (``detectors.text.match_keyword``:
  word boundaries, case, simple plurals).
* **semantic frequency**: share of captions whose text embedding lies within a cosine radius of
  the concept's reference embedding, found with a FAISS range search (each reference is a query
  against the caption embeddings, in chunks, so memory is bounded by the chunk size).

Reference embedding (:func:`concept_references`): by default the normalised mean text embedding
of the captions that name the concept (its *caption centroid*: in the same distribution as the
captions, so a caption about the concept that does not use its word lands near it), or the
concept's prompt-ensemble embedding when fewer than ``min_matches`` captions name it. With
``exclusive=True`` (default) a caption counts only for the concept whose reference is nearest to
it, as in the poisons stage's semantic membership; concept lists with overlapping concepts
("cat", "kitten") should use ``exclusive=False``.

The radius is calibrated on the data (:func:`calibrate_radius`): over all (caption, concept)
pairs, the word match is a noisy label of "the caption is about the concept"; the radius is the
cosine threshold that best separates word-matched from unmatched pairs (maximum F1 of
``similarity > radius`` against the word match, pooled over concepts, so one radius serves every
concept). Measured on a 3,000-sample SynthLAION testbed with tiny-synth: caption centroids +
nearest concept give F1 0.94 against word matches (median per-concept |semantic - word| / word
5%); the plain prompt-ensemble cosine gives F1 0.35, because the tiny text encoder's absolute
cosines are dominated by colour/style words. Concepts whose semantic frequency is below
``sparse_below`` (default 0.04%, the Nightshade paper's figure for 92% of LAION-Aesthetic
concepts) are flagged sparse: a few tens of poisons are enough to corrupt such a concept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from detectors.text import match_keyword

logger = logging.getLogger(__name__)

NAME = "concepts_v1"

SPARSE_BELOW = 0.0004
"""Semantic frequency below which a concept is flagged sparse (Nightshade: 0.04%)."""

REFERENCES = ("centroid", "prompt")
"""What the radius is measured from: the caption centroid (prompt ensemble for concepts too
few captions name) or always the prompt ensemble."""

PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {c}.",
    "{a} {c}.",
    "{c}",
    "an illustration of {a} {c}.",
    "a drawing of {a} {c}.",
    "a painting of {a} {c}.",
    "the {c}.",
    "a picture of the {c}.",
)
"""Prompt ensemble for concept text embeddings (``{a}`` is the indefinite article)."""


def article(word: str) -> str:
    """The indefinite article of ``word`` (by its first letter)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def concept_prompts(
    concepts: Sequence[str], templates: Sequence[str] = PROMPT_TEMPLATES
) -> list[str]:
    """Every template for every concept, concept by concept (``len(concepts) * len(templates)``
    prompts; :func:`concept_ensembles` averages them back)."""
    return [t.format(c=c, a=article(c)) for c in concepts for t in templates]


def concept_ensembles(prompt_emb: np.ndarray, n_concepts: int) -> np.ndarray:
    """Prompt-ensemble embedding per concept from the embeddings of :func:`concept_prompts`:
    the mean of the normalised template embeddings, re-normalised, shape (K, d)."""
    from detectors.stats import normalize_rows

    emb = normalize_rows(np.asarray(prompt_emb, dtype=np.float32))
    return normalize_rows(emb.reshape(n_concepts, -1, emb.shape[-1]).mean(axis=1))


def word_counts(captions: Sequence[str | None], concepts: Sequence[str]) -> np.ndarray:
    """Number of captions naming each concept (None/empty captions never match)."""
    return np.array([int(match_keyword(captions, c).sum()) for c in concepts], dtype=np.int64)


def word_matches(captions: Sequence[str | None], concepts: Sequence[str]) -> np.ndarray:
    """``(n, K)`` boolean mask: caption i names concept k."""
    out = np.zeros((len(captions), len(concepts)), dtype=bool)
    for k, c in enumerate(concepts):
        out[:, k] = match_keyword(captions, c)
    return out


def concept_similarities(
    text_emb: np.ndarray, concept_emb: np.ndarray, chunk_size: int = 65536
) -> np.ndarray:
    """``(n, K)`` float32 cosine similarity of each caption embedding to each concept
    embedding (both L2-normalised)."""
    c = np.ascontiguousarray(concept_emb, dtype=np.float32)
    out = np.empty((len(text_emb), len(c)), dtype=np.float32)
    for s in range(0, len(text_emb), chunk_size):
        out[s : s + chunk_size] = np.asarray(text_emb[s : s + chunk_size], np.float32) @ c.T
    return out


def semantic_counts(
    text_emb: np.ndarray,
    concept_emb: np.ndarray,
    radius: float | Sequence[float] | np.ndarray,
    *,
    exclusive: bool = False,
    chunk_size: int = 200_000,
    use_gpu: bool | None = None,
) -> np.ndarray:
    """Per concept, the number of caption embeddings with cosine ``> radius`` to it.

    FAISS range search with the concept embeddings as queries over caption-embedding chunks
    (an ``IndexFlatIP`` of ``chunk_size`` rows at a time). ``radius`` is one value or one per
    concept (searched at the smallest, then filtered). ``exclusive``: a caption found for a
    concept counts only if that concept is its nearest one (ties: the first concept). On a GPU
    the search is a kNN with CPU fallback (``faiss.contrib.exhaustive_search.range_search_gpu``),
    still exact.
    """
    from detectors.dedup import FlatIPIndex, resolve_gpu

    q = np.ascontiguousarray(concept_emb, dtype=np.float32)
    k = q.shape[0]
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), (k,)).copy()
    if not np.all(np.isfinite(r)):
        raise ValueError(f"semantic radius must be finite (got {r.tolist()})")
    counts = np.zeros(k, dtype=np.int64)
    gpu = resolve_gpu(use_gpu)
    for s in range(0, len(text_emb), chunk_size):
        chunk = np.asarray(text_emb[s : s + chunk_size], np.float32)
        index = FlatIPIndex(chunk, use_gpu=gpu)
        lims, dist, idx = index.range_search(q, float(r.min()))
        for j in range(k):
            d = dist[lims[j] : lims[j + 1]]
            rows = idx[lims[j] : lims[j + 1]].astype(np.int64)
            hit = d > r[j]
            if exclusive and hit.any():
                cand = rows[hit]
                hit[hit] = np.argmax(chunk[cand] @ q.T, axis=1) == j
            counts[j] += int(hit.sum())
    return counts


def concept_references(
    text_emb: np.ndarray,
    word_mask: np.ndarray,
    prompt_emb: np.ndarray | None = None,
    min_matches: int = 5,
) -> tuple[np.ndarray, list[str]]:
    """Reference embedding per concept: the caption centroid (normalised mean text embedding of
    the captions naming it) when at least ``min_matches`` do, else the prompt embedding.

    Returns ``(refs (K, D) float32, kinds)`` with kind ``"caption_centroid"`` or
    ``"prompt_ensemble"``. A concept with neither gets a zero vector (it matches nothing) and
    kind ``"none"``.
    """
    from detectors.stats import normalize_rows

    k = word_mask.shape[1]
    d = text_emb.shape[1]
    refs = np.zeros((k, d), dtype=np.float32)
    kinds: list[str] = []
    for j in range(k):
        rows = np.flatnonzero(word_mask[:, j])
        if rows.size >= min_matches:
            refs[j] = np.asarray(text_emb[rows], np.float32).mean(axis=0)
            kinds.append("caption_centroid")
        elif prompt_emb is not None:
            refs[j] = prompt_emb[j]
            kinds.append("prompt_ensemble")
        else:
            kinds.append("none")
    return normalize_rows(refs), kinds


def exclusive_similarities(sims: np.ndarray) -> np.ndarray:
    """``sims`` with every entry but each row's maximum set to -inf (nearest concept only)."""
    out = np.full_like(sims, -np.inf)
    if sims.size:
        best = np.argmax(sims, axis=1)
        rows = np.arange(sims.shape[0])
        out[rows, best] = sims[rows, best]
    return out


def calibrate_radius(
    sims: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None
) -> dict[str, Any]:
    """Cosine radius that best separates word-matched (``labels``) from unmatched pairs.

    ``sims`` and ``labels`` are ``(n, K)`` (or flat). Returns the radius with the highest F1 of
    ``sims > radius`` against ``labels`` (ties: the smaller radius), its precision / recall /
    F1, and the median similarity of matched and unmatched pairs. Raises ``ValueError`` when
    there are no matched pairs to calibrate on.
    """
    s = np.asarray(sims, dtype=np.float32).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"sims and labels differ in shape ({s.shape} vs {y.shape})")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("no caption names any concept: cannot calibrate a semantic radius")
    if grid is None:
        grid = np.round(np.arange(-0.2, 0.995, 0.005), 3)
    grid = np.sort(np.asarray(grid, dtype=np.float64))
    # counts above each grid value via sorted similarities (-inf entries: excluded pairs,
    # e.g. not the caption's nearest concept; they count as "below every radius")
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    pos_f, neg_f = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    tp = n_pos - np.searchsorted(pos, grid, side="right")
    fp = neg.size - np.searchsorted(neg, grid, side="right")
    prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    rec = tp / n_pos
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    best = int(np.argmax(f1))  # first maximum = smallest radius among ties
    return {
        "radius": float(grid[best]),
        "f1": float(f1[best]),
        "precision": float(prec[best]),
        "recall": float(rec[best]),
        "n_matched_pairs": n_pos,
        "median_sim_matched": float(np.median(pos_f)) if pos_f.size else float("nan"),
        "median_sim_unmatched": float(np.median(neg_f)) if neg_f.size else float("nan"),
    }


def concept_table(
    concepts: Sequence[str],
    word: np.ndarray,
    n_total: int,
    semantic: np.ndarray | None,
    n_semantic: int,
    radius: np.ndarray | float | None,
    sparse_below: float = SPARSE_BELOW,
    reference: Sequence[str] | None = None,
    reference_emb: np.ndarray | None = None,
) -> Any:
    """The ``concepts`` finding: one row per concept.

    Columns: concept, word_count, word_freq, semantic_count, semantic_freq, semantic_threshold
    (the radius), sparse, n_total (captions considered for word frequency), n_semantic
    (caption embeddings considered), semantic_to_word (how many times more captions are about
    the concept than name it), reference (what the radius is measured from: caption_centroid or
    prompt_ensemble), reference_emb (that vector, so other stages can reuse it). Without
    embeddings the semantic columns are null and ``sparse`` uses the word frequency.
    """
    import pyarrow as pa

    k = len(concepts)
    word = np.asarray(word, dtype=np.int64)
    word_freq = word / n_total if n_total else np.full(k, np.nan)
    if semantic is None:
        sem = pa.nulls(k, pa.int64())
        sem_freq = pa.nulls(k, pa.float64())
        thr = pa.nulls(k, pa.float32())
        sparse = word_freq < sparse_below
        ratio = pa.nulls(k, pa.float64())
    else:
        semantic = np.asarray(semantic, dtype=np.int64)
        none = np.array(
            [r == "none" for r in reference] if reference is not None else [False] * k, dtype=bool
        )  # no reference: unknown, not zero
        sf = semantic / n_semantic if n_semantic else np.full(k, np.nan)
        sem = pa.array(semantic, pa.int64(), mask=none)
        sem_freq = pa.array(sf, pa.float64(), mask=none)
        thr = pa.array(
            np.broadcast_to(np.asarray(radius, np.float32), (k,)), pa.float32(), mask=none
        )
        sparse = np.where(none, word_freq < sparse_below, sf < sparse_below)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(word_freq > 0, sf / np.where(word_freq > 0, word_freq, 1), np.nan)
        ratio = pa.array(r, pa.float64())
    return pa.table(
        {
            "concept": pa.array(list(concepts), pa.string()),
            "word_count": pa.array(word, pa.int64()),
            "word_freq": pa.array(word_freq, pa.float64()),
            "semantic_count": sem,
            "semantic_freq": sem_freq,
            "semantic_threshold": thr,
            "sparse": pa.array(np.asarray(sparse, bool), pa.bool_()),
            "n_total": pa.array([int(n_total)] * k, pa.int64()),
            "n_semantic": pa.array([int(n_semantic)] * k, pa.int64()),
            "semantic_to_word": ratio,
            "reference": pa.array(
                list(reference) if reference is not None else [None] * k, pa.string()
            ),
            "reference_emb": pa.array(
                [None] * k
                if reference_emb is None
                else [list(map(float, v)) for v in np.asarray(reference_emb, np.float32)],
                pa.list_(pa.float32()),
            ),
        }
    )


def needs_prompts(matches: np.ndarray, reference: str = "centroid", min_matches: int = 5) -> bool:
    """Whether any concept is measured from its prompt ensemble: ``reference="prompt"``, or a
    concept that fewer than ``min_matches`` captions name (``matches``: (n, K) word matches of
    the captions with a text embedding)."""
    return reference == "prompt" or bool((matches.sum(axis=0) < min_matches).any())


def semantic_frequency(
    text_emb: np.ndarray,
    matches: np.ndarray,
    prompt_emb: np.ndarray | None = None,
    *,
    reference: str = "centroid",
    min_matches: int = 5,
    exclusive: bool = True,
    radius: float | None = None,
) -> dict[str, Any]:
    """Semantic counts of K concepts among ``text_emb`` (n, d) captions whose word matches are
    ``matches`` (n, K): references (:func:`concept_references`; ``reference="prompt"`` uses the
    prompt ensembles ``prompt_emb`` for every concept), the radius (given, or
    :func:`calibrate_radius` against the word matches), the counts (:func:`semantic_counts`).

    Returns ``counts``, ``radius``, ``kinds``, ``refs`` and ``calibration`` (None when the
    radius was given)."""
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r} (known: {', '.join(REFERENCES)})")
    need = min_matches if reference == "centroid" else matches.shape[0] + 1
    refs, kinds = concept_references(text_emb, matches, prompt_emb, need)
    cal = None
    if radius is None:
        sims = concept_similarities(text_emb, refs)
        if exclusive:
            sims = exclusive_similarities(sims)
        cal = calibrate_radius(sims, matches)
        radius = cal["radius"]
    counts = semantic_counts(text_emb, refs, radius, exclusive=exclusive)
    return {
        "counts": counts,
        "radius": float(radius),
        "kinds": kinds,
        "refs": refs,
        "calibration": cal,
    }
