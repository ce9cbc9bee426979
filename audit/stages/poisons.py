"""``laion-audit poisons WS``: rank poison candidates (dirty-label, clean-label, split-view).

Reads ``WS/embeddings`` (and ``WS/findings/concepts.parquet`` when present), scores every
sample whose caption names a concept with the pure detectors of :mod:`detectors.poisons`,
combines the scores into one ranked score with reasons, flags by evidence (threshold), marks
an optional per-concept review quota (expected rate) apart from the flags, and writes
``WS/findings/poisons.parquet`` plus the concept vulnerability table
``WS/findings/concept_vulnerability.parquet`` (also in ``poisons.json``).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from audit.config import ConfigError, add_workspace_argument, require
from audit.errors import InputError

logger = logging.getLogger(__name__)

HELP = "rank poison candidates: dirty-label, clean-label (Nightshade-style) and split-view"
DESCRIPTION = """\
Rank poison candidates per concept and say why each one was flagged.

For every concept (captions naming it by word match, optionally also by semantic match), each
sample gets versioned scores: alignment_cos_v1 (image-text cosine) and alignment_gmm_v1
(per-concept 2-Gaussian mixture: probability the pair is mismatched), concept_pull_v1
(zero-shot over the concept list with prompt ensembles: how much nearer the image is to another
concept than to its caption's), kdist_v1 and lof_v1 (local outliers among the concept's images),
spectral_v1 (projection on the concept's top singular direction) and split_view_v1 (ingest
status hash_mismatch: the URL now serves other bytes). Per concept the evidence scores
(alignment, pull, k-distance, LOF; see --evidence) become robust z-scores; combined = largest
z + 0.5 x second largest. Rows are flagged (poison candidates) when combined >= --threshold:
evidence only. --expected-rate R adds a review list, not flags: the top 1.5 x R of each concept
by combined score get review = true ("top-ranked for review"), whatever their scores; on clean
data that list is as long as on poisoned data, so it is never counted as poison candidates,
never dropped by `filter --drop poisons`, and shown apart in the report. Split-view rows are
always flagged, first.
Kind guess: clean (Nightshade-style: flagged images of a concept that collapse onto each other,
as poisons pulled toward one anchor do; or pulled/out of place while the caption still fits),
dirty (the image does not match its caption), split_view. The reasons column names the scores
that fired and the concept an image is pulled toward.

Writes WS/findings/poisons.parquet (key, concept, one column per score, combined_score, rank,
flagged, review, kind, reasons), WS/findings/poisons.json (parameters, timings, summary, concept
vulnerability) and WS/findings/concept_vulnerability.parquet (concepts ranked by sparsity and by
the candidates they hold; joined with the `concepts` finding when it exists).
"""

DEFAULT_THRESHOLD = 6.0
"""Default flag threshold on the combined score (robust-z units)."""

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

SPLIT_VIEW_REASON = (
    "split_view_v1: the URL now serves bytes that differ from the recorded "
    "sha256 (ingest status hash_mismatch)"
)

MATCH_MODES = ("word", "semantic", "both")


@dataclass
class Config:
    """Options of ``laion-audit poisons`` (``[poisons]`` in audit.toml)."""

    concepts: list[str] | None = None
    concepts_file: str | None = None
    match: str = "word"
    semantic_threshold: float | None = None
    expected_rate: float | None = None
    threshold: float = DEFAULT_THRESHOLD
    fire_z: float = 3.5
    evidence: list[str] | None = None
    k_min: int = 16
    k_max: int = 32
    min_concept_size: int = 8
    max_reference: int = 20000
    device: str = "cpu"
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        require(
            self.match in MATCH_MODES, "poisons.match", f"must be one of {MATCH_MODES}", self.match
        )
        if self.expected_rate is not None:
            require(
                0 < self.expected_rate <= 0.5,
                "poisons.expected_rate",
                "must be in (0, 0.5]",
                self.expected_rate,
            )
        require(
            math.isfinite(self.threshold) and self.threshold > 0,
            "poisons.threshold",
            "must be a positive number",
            self.threshold,
        )
        require(self.fire_z > 0, "poisons.fire_z", "must be positive", self.fire_z)
        if self.evidence is not None:
            from detectors.poisons import EVIDENCE

            bad = [e for e in self.evidence if e not in EVIDENCE]
            require(
                bool(self.evidence) and not bad,
                "poisons.evidence",
                f"must be a non-empty subset of {list(EVIDENCE)}",
                self.evidence,
            )
        require(self.k_min >= 2, "poisons.k_min", "must be >= 2", self.k_min)
        require(self.k_max >= self.k_min, "poisons.k_max", "must be >= k_min", self.k_max)
        require(
            self.min_concept_size >= 3,
            "poisons.min_concept_size",
            "must be >= 3",
            self.min_concept_size,
        )
        require(
            self.max_reference >= 100, "poisons.max_reference", "must be >= 100", self.max_reference
        )
        require(self.batch_size >= 1, "poisons.batch_size", "must be >= 1", self.batch_size)
        if self.semantic_threshold is not None:
            require(
                -1 <= self.semantic_threshold <= 1,
                "poisons.semantic_threshold",
                "must be a cosine in [-1, 1]",
                self.semantic_threshold,
            )
        if self.concepts is not None:
            self.concepts = [c.strip() for c in self.concepts if c and c.strip()]
            require(
                bool(self.concepts),
                "poisons.concepts",
                "must name at least one concept",
                self.concepts,
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    parser.add_argument(
        "--concepts",
        default=None,
        metavar="LIST",
        help="comma-separated concepts (default: the `concepts` finding, else "
        "general-list objects the captions name + frequent caption terms)",
    )
    parser.add_argument(
        "--concepts-file",
        dest="concepts_file",
        default=None,
        metavar="FILE",
        help="file with one concept per line (instead of --concepts)",
    )
    parser.add_argument(
        "--match",
        default=None,
        choices=MATCH_MODES,
        help="concept membership: word match (default), semantic match (caption "
        "text embedding nearest to the concept's prompts, above the "
        "semantic threshold), or both",
    )
    parser.add_argument(
        "--semantic-threshold",
        dest="semantic_threshold",
        type=float,
        default=None,
        metavar="COS",
        help="cosine radius for semantic match (default: the concepts "
        "finding's semantic_threshold)",
    )
    parser.add_argument(
        "--expected-rate",
        dest="expected_rate",
        type=float,
        default=None,
        metavar="R",
        help="also mark the top 1.5 x R of each concept as 'top-ranked for review' (column "
        "review); a quota, not evidence: it never flags (flags need --threshold)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help=f"flag combined_score >= T (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--fire-z",
        dest="fire_z",
        type=float,
        default=None,
        metavar="Z",
        help="a score is named in the reasons when its robust z >= Z (3.5)",
    )
    parser.add_argument(
        "--evidence",
        default=None,
        metavar="LIST",
        help="scores in the combined score (default: alignment_cos_v1, concept_pull_v1, "
        "kdist_v1, lof_v1; spectral_v1 may be added)",
    )
    parser.add_argument(
        "--k-min",
        dest="k_min",
        type=int,
        default=None,
        help="smallest neighbourhood for k-distance/LOF (16)",
    )
    parser.add_argument(
        "--k-max",
        dest="k_max",
        type=int,
        default=None,
        help="largest neighbourhood for k-distance/LOF (32)",
    )
    parser.add_argument("--device", default=None, help="device for concept text embeddings")
    parser.add_argument("--seed", type=int, default=None, help="random seed (0)")


# ---- inputs ----------------------------------------------------------------------------------


def resolve_concepts(cfg: Config, ws: Any) -> tuple[list[str], str]:
    """The concept list and where it came from (option, file, concepts finding, else the
    data's own: :func:`audit.vocabulary.default_concepts` over the captions)."""
    if cfg.concepts:
        return _dedupe(cfg.concepts), "option"
    if cfg.concepts_file:
        p = Path(cfg.concepts_file)
        if not p.is_file():
            raise ConfigError(f"poisons.concepts_file: file not found (got {str(p)!r})")
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        items = [ln for ln in lines if ln and not ln.startswith("#")]
        if not items:
            raise ConfigError(f"poisons.concepts_file: no concepts in {str(p)!r}")
        return _dedupe(items), "file"
    if ws.has_finding("concepts"):
        tab = ws.read_finding("concepts")
        if "concept" in tab.column_names and tab.num_rows:
            return _dedupe(str(c) for c in tab.column("concept").to_pylist()), "concepts finding"
    from audit.stages.concepts import DEFAULT_SOURCE
    from audit.vocabulary import default_concepts

    tab = ws.load_embeddings(columns=["caption"])
    if "caption" not in tab.column_names:
        raise InputError("embeddings lack a caption column")
    concepts = default_concepts(tab.column("caption").to_pylist())
    if not concepts:
        raise InputError(
            "poisons: no --concepts, no concepts finding, and no caption names a general-list "
            "object or a frequent term"
        )
    logger.warning(
        "no --concepts and no concepts finding: using %d concepts from the captions", len(concepts)
    )
    return concepts, DEFAULT_SOURCE


def _dedupe(items: Any) -> list[str]:
    seen: dict[str, None] = {}
    for it in items:
        it = str(it).strip()
        if it:
            seen.setdefault(it, None)
    return list(seen)


def _matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list column without nulls (fixed-size, or variable lists of one length, which is how a
    fixed-size list with nulls comes back from parquet written without the Arrow schema) as a
    float32 (n, d) matrix."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise InputError("embedding column has null rows where embeddings were expected")
    n = len(arr)
    flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    if pa.types.is_fixed_size_list(arr.type):
        d = arr.type.list_size
    else:
        lengths = np.asarray(arr.value_lengths().to_numpy(zero_copy_only=False))
        d = int(lengths[0]) if n else 0
        if n and (lengths != d).any():
            raise InputError(f"embeddings have different lengths ({sorted(set(lengths))[:5]})")
    return flat.reshape(n, d)


def load_inputs(ws: Any) -> dict[str, Any]:
    """Rows with an image embedding (what can be scored) and the hash_mismatch keys.

    Rows without an image embedding (failed downloads/decodes) cannot be scored and are left
    out; hash_mismatch rows are kept for split-view whether or not they carry embeddings.
    """
    cols = ["key", "caption", "status", "image_emb", "text_emb", "clip_score"]
    tab = ws.load_embeddings(columns=cols)
    missing = [c for c in cols if c not in tab.column_names]
    if missing:
        raise InputError(f"embeddings lack columns {missing}")
    n_total = tab.num_rows
    status = np.asarray(tab.column("status").to_pylist(), dtype=object)
    keys_all = np.asarray(tab.column("key").to_pylist(), dtype=object)
    split_keys = keys_all[status == "hash_mismatch"]
    captions_all = tab.column("caption").to_pylist()
    has_img = np.asarray(tab.column("image_emb").is_valid().to_numpy(zero_copy_only=False))
    has_txt = np.asarray(tab.column("text_emb").is_valid().to_numpy(zero_copy_only=False))
    scorable = has_img & has_txt & np.array([bool(c) for c in captions_all])
    sub = tab.filter(pa.array(scorable))
    img = _matrix(sub.column("image_emb"))
    txt = _matrix(sub.column("text_emb"))
    from detectors.stats import normalize_rows

    img, txt = normalize_rows(img), normalize_rows(txt)
    clip = np.asarray(sub.column("clip_score").to_numpy(zero_copy_only=False), dtype=np.float64)
    own = (img * txt).sum(axis=1).astype(np.float64)
    clip = np.where(np.isfinite(clip), clip, own)
    return {
        "n_total": n_total,
        "keys": np.asarray(sub.column("key").to_pylist(), dtype=object),
        "captions": sub.column("caption").to_pylist(),
        "status": np.asarray(sub.column("status").to_pylist(), dtype=object),
        "image_emb": img,
        "text_emb": txt,
        "clip_score": clip,
        "split_keys": split_keys,
        "all_captions": captions_all,
        "all_keys": keys_all,
        "all_status": status,
        "n_unscorable": int((~scorable).sum()),
    }


def concept_text_embeddings(
    model: Any,
    tokenizer: Any,
    concepts: list[str],
    *,
    device: str = "cpu",
    batch_size: int = 256,
    templates: tuple[str, ...] = PROMPT_TEMPLATES,
) -> np.ndarray:
    """Prompt-ensemble text embedding per concept: mean of the normalised template embeddings,
    re-normalised, shape (K, d)."""
    from audit.models import encode_texts
    from detectors.stats import normalize_rows

    prompts = [t.format(c=c, a=_article(c)) for c in concepts for t in templates]
    emb = encode_texts(model, tokenizer, prompts, device=device, batch_size=batch_size)
    emb = normalize_rows(np.asarray(emb, dtype=np.float32))
    return normalize_rows(emb.reshape(len(concepts), len(templates), -1).mean(axis=1))


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def caption_centroids(text_emb: np.ndarray, members: list[np.ndarray]) -> np.ndarray:
    """Model-free fallback concept embeddings: the normalised mean caption embedding of each
    concept's members (zero rows for concepts without members)."""
    from detectors.stats import normalize_rows

    out = np.zeros((len(members), text_emb.shape[1]), np.float32)
    for i, rows in enumerate(members):
        if len(rows):
            out[i] = text_emb[rows].mean(axis=0)
    return normalize_rows(out)


def load_concept_embeddings(
    ws: Any, cfg: Config, concepts: list[str], text_emb: np.ndarray, members: list[np.ndarray]
) -> tuple[np.ndarray, str]:
    """Concept embeddings from the workspace's model (prompt ensembles), or caption centroids
    when that model cannot be loaded here (e.g. imported embeddings of an unavailable model)."""
    info = ws.model_info()
    name = info.get("model") or info.get("name")
    pretrained = info.get("pretrained")
    if not name:
        logger.warning(
            "embeddings/model.json names no model: concept pull uses caption "
            "centroids instead of prompt ensembles"
        )
        return caption_centroids(text_emb, members), "caption_centroids"
    try:
        from audit.models import load_clip

        model, _, tokenizer = load_clip(name, pretrained=pretrained, device=cfg.device)
    except Exception as exc:  # noqa: BLE001 - any load failure falls back, and is logged
        logger.warning("cannot load model %r (%s): concept pull uses caption centroids", name, exc)
        return caption_centroids(text_emb, members), "caption_centroids"
    emb = concept_text_embeddings(
        model, tokenizer, concepts, device=cfg.device, batch_size=cfg.batch_size
    )
    if emb.shape[1] != text_emb.shape[1]:
        raise InputError(
            f"model {name!r} gives {emb.shape[1]}-d text embeddings but the "
            f"workspace's are {text_emb.shape[1]}-d: model.json does not match"
        )
    return emb, f"prompt_ensemble:{name}"


def membership(
    captions: list[str | None],
    concepts: list[str],
    *,
    text_emb: np.ndarray | None,
    concept_emb: np.ndarray | None,
    mode: str,
    semantic_threshold: dict[str, float] | None = None,
) -> np.ndarray:
    """(n, K) mask: caption names concept k (word match), or (semantic) its text embedding's
    nearest reference in ``concept_emb`` is k's, with cosine >= that concept's threshold."""
    from detectors.text import match_keyword

    named = np.zeros((len(captions), len(concepts)), dtype=bool)
    if mode in ("word", "both"):
        for j, c in enumerate(concepts):
            named[:, j] = match_keyword(captions, c)
    if mode in ("semantic", "both"):
        if text_emb is None or concept_emb is None:
            raise InputError("semantic match needs text and concept embeddings")
        sims = text_emb @ concept_emb.T
        best = sims.argmax(axis=1)
        for j, c in enumerate(concepts):
            thr = (semantic_threshold or {}).get(c)
            if thr is None or not math.isfinite(thr):
                continue
            named[:, j] |= (best == j) & (sims[:, j] >= thr)
    return named


def semantic_reference(
    cfg: Config, ws: Any, concepts: list[str], prompt_emb: np.ndarray
) -> tuple[np.ndarray, dict[str, float], str]:
    """Reference embeddings and cosine thresholds for semantic membership.

    With a ``concepts`` finding that carries ``reference_emb`` and ``semantic_threshold``, its
    references (caption centroids or prompt ensembles, see ``laion-audit concepts``) and its
    calibrated radius, so both stages agree on who belongs to a concept; ``--semantic-threshold``
    overrides the radius. Without one, the prompt-ensemble embeddings and
    ``--semantic-threshold``. Concepts missing from the finding get no semantic members.
    """
    d = prompt_emb.shape[1]
    if ws.has_finding("concepts"):
        df = ws.read_finding("concepts").to_pandas()
        if {"reference_emb", "semantic_threshold"} <= set(df.columns):
            ref = np.zeros((len(concepts), d), np.float32)
            thr: dict[str, float] = {}
            rows = {str(r.concept): r for r in df.itertuples()}
            for j, c in enumerate(concepts):
                r = rows.get(c)
                if r is None or r.reference_emb is None or r.semantic_threshold is None:
                    continue
                v = np.asarray(r.reference_emb, dtype=np.float32)
                if v.shape != (d,) or not np.isfinite(r.semantic_threshold):
                    continue
                ref[j] = v / max(float(np.linalg.norm(v)), 1e-12)
                thr[c] = float(r.semantic_threshold)
            if cfg.semantic_threshold is not None:
                thr = dict.fromkeys(thr, float(cfg.semantic_threshold))
            if thr:
                return ref, thr, "concepts finding"
    if cfg.semantic_threshold is not None:
        return prompt_emb, dict.fromkeys(concepts, float(cfg.semantic_threshold)), "prompts"
    raise ConfigError(
        "poisons.match: semantic match needs --semantic-threshold or a concepts "
        "finding with reference_emb and semantic_threshold (run `laion-audit concepts` first) "
        f"(got {cfg.match!r})"
    )


# ---- scoring ---------------------------------------------------------------------------------


def score_memberships(
    image_emb: np.ndarray,
    clip_score: np.ndarray,
    named: np.ndarray,
    concepts: list[str],
    concept_emb: np.ndarray | None,
    params: Any = None,
) -> pd.DataFrame:
    """Scores and combined score for every (sample, concept) membership (see
    :func:`detectors.poisons.score_concepts` and :func:`detectors.poisons.combine`)."""
    from detectors import poisons as P

    params = params or P.PoisonParams()
    members = [np.flatnonzero(named[:, j]) for j in range(len(concepts))]
    raw = P.score_concepts(
        image_emb,
        clip_score,
        members,
        concepts,
        concept_emb=concept_emb,
        named=named,
        params=params,
    )
    return P.combine(raw, params)


def collapse_pvalues(
    per_key: pd.DataFrame,
    image_emb: np.ndarray,
    named: np.ndarray,
    concepts: list[str],
    params: Any,
    split_view: np.ndarray,
) -> np.ndarray:
    """:func:`detectors.poisons.anchor_collapse` p-value for each flagged, non-split-view row,
    grouped by concept (at least 3 flagged rows), against random subsets of the concept's
    members that are not flagged; NaN elsewhere."""
    from detectors import poisons as P

    out = np.full(len(per_key), np.nan)
    cand = per_key["flagged"].to_numpy(dtype=bool) & ~split_view
    cand &= per_key["concept"].notna().to_numpy()
    flagged_rows = set(per_key.loc[cand, "row"].astype(int))
    index = {c: j for j, c in enumerate(concepts)}
    cand_pos = np.flatnonzero(cand)
    for _, idx in per_key.iloc[cand_pos].groupby("concept").indices.items():
        pos = cand_pos[idx]
        if len(pos) < 3:
            continue
        own = index[str(per_key["concept"].iloc[pos[0]])]
        ref_rows = [r for r in np.flatnonzero(named[:, own]) if r not in flagged_rows]
        rows = per_key["row"].iloc[pos].to_numpy(dtype=np.int64)
        out[pos] = P.anchor_collapse(image_emb[rows], image_emb[ref_rows], seed=params.seed)
    return out


def select_per_key(
    comb: pd.DataFrame,
    keys: np.ndarray,
    split_keys: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    expected_rate: float | None = None,
    params: Any = None,
    image_emb: np.ndarray | None = None,
    named: np.ndarray | None = None,
    concepts: list[str] | None = None,
) -> pd.DataFrame:
    """Flag memberships, then keep one row per key (its most suspicious concept; flagged if
    flagged under any concept), add split-view rows (always flagged, combined = +inf), guess
    kinds, write reasons, and rank (1 = most suspicious)."""
    from detectors import poisons as P

    params = params or P.PoisonParams()
    comb = comb.copy()
    comb["flagged"] = P.flag(comb, threshold=threshold)
    comb["review"] = (
        P.review_quota(comb, expected_rate)
        if expected_rate is not None and len(comb)
        else np.zeros(len(comb), dtype=bool)
    )
    comb["key"] = keys[comb["row"].to_numpy(dtype=np.int64)] if len(comb) else []
    if len(comb):
        for col in ("flagged", "review"):
            comb[col] = comb.groupby("key")[col].transform("max").astype(bool)
    comb = comb.sort_values(["key", "combined_score"], ascending=[True, False], kind="stable")
    per_key = comb.drop_duplicates("key", keep="first").copy()
    concept_lists = comb.groupby("key", sort=False)["concept"].agg("|".join)
    per_key["concepts"] = per_key["key"].map(concept_lists)
    split = {str(k) for k in split_keys}
    per_key["split_view_v1"] = per_key["key"].isin(split)
    extra = sorted(split - set(per_key["key"]))
    if extra:
        per_key = pd.concat(
            [per_key, pd.DataFrame({"key": extra, "split_view_v1": True})], ignore_index=True
        )
    sv = per_key["split_view_v1"].to_numpy(dtype=bool)
    per_key["flagged"] = per_key["flagged"].astype("boolean").fillna(False).to_numpy(bool) | sv
    per_key["review"] = per_key["review"].astype("boolean").fillna(False).to_numpy(bool)
    per_key[P.ALIGNMENT_GMM] = per_key[P.ALIGNMENT_GMM].astype(float)
    per_key["anchor_collapse_p"] = (
        collapse_pvalues(per_key, image_emb, named, concepts, params, sv)
        if image_emb is not None and named is not None and concepts is not None
        else np.nan
    )
    per_key["kind"] = P.guess_kind(
        per_key,
        per_key["flagged"].to_numpy(dtype=bool),
        params.fire_z,
        per_key["anchor_collapse_p"].to_numpy(dtype=np.float64),
    )
    per_key.loc[sv, "kind"] = "split_view"
    per_key["combined_score"] = per_key["combined_score"].astype(float)
    per_key.loc[sv, "combined_score"] = np.inf
    reasons = per_key["reasons"].fillna("").astype(str)
    per_key["reasons"] = np.where(
        sv, np.where(reasons != "", SPLIT_VIEW_REASON + "; " + reasons, SPLIT_VIEW_REASON), reasons
    )
    review_only = per_key["review"] & ~per_key["flagged"]
    per_key.loc[review_only, "reasons"] = [
        _review_reason(r, params) for _, r in per_key[review_only].iterrows()
    ]
    order = np.lexsort(
        (
            per_key["key"].to_numpy(dtype=str),
            -np.nan_to_num(per_key["combined_score"].to_numpy(), nan=-np.inf),
        )
    )
    per_key = per_key.iloc[order].reset_index(drop=True)
    per_key["rank"] = np.arange(1, len(per_key) + 1, dtype=np.int64)
    return per_key


def score_workspace_arrays(
    keys: np.ndarray,
    image_emb: np.ndarray,
    clip_score: np.ndarray,
    named: np.ndarray,
    concepts: list[str],
    concept_emb: np.ndarray | None,
    split_keys: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    expected_rate: float | None = None,
    params: Any = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score, combine, flag and rank; one row per key (its most suspicious concept).

    Keys that name no concept are not scored (nothing to compare them with) unless they are
    split-view rows, which are always output and flagged. Returns the table and timings.
    """
    t0 = time.perf_counter()
    comb = score_memberships(image_emb, clip_score, named, concepts, concept_emb, params)
    t1 = time.perf_counter()
    per_key = select_per_key(
        comb,
        keys,
        split_keys,
        threshold=threshold,
        expected_rate=expected_rate,
        params=params,
        image_emb=image_emb,
        named=named,
        concepts=concepts,
    )
    t2 = time.perf_counter()
    return per_key, {"scores_s": round(t1 - t0, 3), "select_s": round(t2 - t1, 3)}


def _review_reason(row: pd.Series, params: Any) -> str:
    """Note for a row on the review list (expected-rate quota) that is not flagged."""
    zs = {e: row.get(f"{e}_z", np.nan) for e in params.evidence}
    best = max(zs, key=lambda e: -np.inf if not np.isfinite(zs[e]) else zs[e])
    fired = row.get("reasons") or ""
    return (
        "top-ranked for review (expected-rate quota of its concept), not a poison candidate: "
        f"combined score below the threshold; strongest evidence {best} z={zs[best]:.1f}"
        + (f"; {fired}" if fired else "")
    )


def output_table(per_key: pd.DataFrame) -> pa.Table:
    """The ``poisons`` finding with stable column order and types."""
    from detectors import poisons as P

    z_cols = sorted(c for c in per_key.columns if c.endswith("_z"))
    cols: dict[str, tuple[str, pa.DataType]] = {
        "key": ("key", pa.string()),
        "concept": ("concept", pa.string()),
        "concepts": ("concepts", pa.string()),
        "concept_size": ("concept_size", pa.int32()),
        "k": ("k", pa.int32()),
        P.ALIGNMENT_COS: (P.ALIGNMENT_COS, pa.float32()),
        P.ALIGNMENT_GMM: (P.ALIGNMENT_GMM, pa.float32()),
        P.CONCEPT_PULL: (P.CONCEPT_PULL, pa.float32()),
        "pull_concept": ("pull_concept", pa.string()),
        P.KDIST: (P.KDIST, pa.float32()),
        P.LOF: (P.LOF, pa.float32()),
        P.SPECTRAL: (P.SPECTRAL, pa.float32()),
        P.SPLIT_VIEW: (P.SPLIT_VIEW, pa.bool_()),
        **{c: (c, pa.float32()) for c in z_cols},
        "anchor_collapse_p": ("anchor_collapse_p", pa.float32()),
        "combined_score": ("combined_score", pa.float64()),
        "rank": ("rank", pa.int64()),
        "flagged": ("flagged", pa.bool_()),
        "review": ("review", pa.bool_()),
        "kind": ("kind", pa.string()),
        "reasons": ("reasons", pa.string()),
    }
    arrays, names = [], []
    for name, (src, typ) in cols.items():
        s = per_key[src] if src in per_key.columns else pd.Series([None] * len(per_key))
        # missing values (NaN in pandas, e.g. split-view rows outside every concept) -> null
        vals = [
            None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in s.tolist()
        ]
        arrays.append(pa.array(vals, type=typ))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _dense_positions(order: np.ndarray) -> np.ndarray:
    """1-based rank of each element given the argsort ``order`` (ties by position)."""
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def vulnerability_table(
    concepts: list[str],
    named: np.ndarray,
    per_key: pd.DataFrame,
    concepts_finding: pd.DataFrame | None,
    word_counts: dict[str, int],
    n_total: int,
) -> pd.DataFrame:
    """Concepts ranked by how few poisons would matter and how many candidates they hold.

    ``sparsity_rank`` 1 = fewest images (semantic count when known, else word count);
    ``candidate_rank`` 1 = most flagged candidates (then highest share; remaining ties by list
    order); ``vulnerability_rank`` orders by the sum of the two ranks, ties broken by sparsity. ``share_if_100_poisons`` is the
    share of the concept that 100 poisons (Nightshade's order of magnitude) would make up.
    """
    df = pd.DataFrame({"concept": concepts, "n_scored": named.sum(axis=0).astype(np.int64)})
    if concepts_finding is not None and len(concepts_finding):
        keep = [
            c
            for c in (
                "concept",
                "word_count",
                "word_freq",
                "semantic_count",
                "semantic_freq",
                "sparse",
                "n_total",
            )
            if c in concepts_finding
        ]
        df = df.merge(concepts_finding[keep], on="concept", how="left")
    for col in ("word_count", "word_freq", "semantic_count", "semantic_freq", "sparse"):
        if col not in df:
            df[col] = np.nan
    df["sparse"] = df["sparse"].astype("boolean")
    wc = df["concept"].map(word_counts).astype(float)
    df["word_count"] = df["word_count"].astype(float).fillna(wc)
    df["word_freq"] = df["word_freq"].astype(float).fillna(wc / max(n_total, 1))
    flagged = per_key[per_key["flagged"] & per_key["concept"].notna()]
    cand = flagged.groupby("concept").size()
    df["candidates"] = df["concept"].map(cand).fillna(0).astype(np.int64)
    df["candidate_share"] = df["candidates"] / df["n_scored"].clip(lower=1)
    size = df["semantic_count"].astype(float).fillna(df["word_count"].astype(float))
    df["share_if_100_poisons"] = 100.0 / (size + 100.0)
    df["sparsity_rank"] = size.rank(method="min", ascending=True).astype(np.int64)
    cand_order = np.lexsort((-df["candidate_share"].to_numpy(), -df["candidates"].to_numpy()))
    df["candidate_rank"] = _dense_positions(cand_order)
    total = (df["sparsity_rank"] + df["candidate_rank"]).to_numpy()
    df["vulnerability_rank"] = _dense_positions(np.lexsort((df["sparsity_rank"].to_numpy(), total)))
    return df.sort_values("vulnerability_rank").reset_index(drop=True)


# ---- entry point -----------------------------------------------------------------------------


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.workspace import Workspace
    from detectors import poisons as P

    ws = Workspace(args.workspace)
    t_start = time.perf_counter()
    concepts, concepts_source = resolve_concepts(cfg, ws)
    data = load_inputs(ws)
    n = len(data["keys"])
    logger.info(
        "poisons: %d scorable rows of %d, %d split-view rows, %d concepts (%s)",
        n,
        data["n_total"],
        len(data["split_keys"]),
        len(concepts),
        concepts_source,
    )
    word_named = membership(
        data["captions"], concepts, text_emb=None, concept_emb=None, mode="word"
    )
    members_word = [np.flatnonzero(word_named[:, j]) for j in range(len(concepts))]
    t0 = time.perf_counter()
    concept_emb, emb_source = load_concept_embeddings(
        ws, cfg, concepts, data["text_emb"], members_word
    )
    t_emb = time.perf_counter() - t0
    semantic_source = None
    if cfg.match == "word":
        named = word_named
    else:
        ref, thr, semantic_source = semantic_reference(cfg, ws, concepts, concept_emb)
        named = membership(
            data["captions"],
            concepts,
            text_emb=data["text_emb"],
            concept_emb=ref,
            mode=cfg.match,
            semantic_threshold=thr,
        )
    params = P.PoisonParams(
        k_min=cfg.k_min,
        k_max=cfg.k_max,
        min_concept_size=cfg.min_concept_size,
        max_reference=cfg.max_reference,
        fire_z=cfg.fire_z,
        evidence=tuple(cfg.evidence) if cfg.evidence else P.DEFAULT_EVIDENCE,
        seed=cfg.seed,
    )
    per_key, timings = score_workspace_arrays(
        data["keys"],
        data["image_emb"],
        data["clip_score"],
        named,
        concepts,
        concept_emb,
        data["split_keys"],
        threshold=cfg.threshold,
        expected_rate=cfg.expected_rate,
        params=params,
    )
    table = output_table(per_key)
    all_named = membership(
        data["all_captions"], concepts, text_emb=None, concept_emb=None, mode="word"
    )
    word_counts = {c: int(all_named[:, j].sum()) for j, c in enumerate(concepts)}
    cf = ws.read_finding("concepts").to_pandas() if ws.has_finding("concepts") else None
    vuln = vulnerability_table(concepts, named, per_key, cf, word_counts, data["n_total"])
    ws.write_table(
        ws.finding_path("concept_vulnerability"), pa.Table.from_pandas(vuln, preserve_index=False)
    )
    flagged = per_key["flagged"].to_numpy(dtype=bool)
    kinds = per_key.loc[flagged, "kind"].value_counts().to_dict()
    meta = {
        "detector": {
            "module": P.__name__,
            "combined": P.COMBINED,
            "scores": [*P.SCORE_NAMES, P.SPLIT_VIEW],
        },
        "combined": {
            "name": P.COMBINED,
            "evidence": list(params.evidence),
            "rule": "per-concept robust z; max z + second_weight * second z; split-view = +inf",
        },
        "parameters": {
            **asdict(cfg),
            **{f"detector.{k}": v for k, v in asdict(params).items()},
            "flag_rule": f"combined_score >= {cfg.threshold} (evidence; split-view always)",
            "review_rule": (
                f"top {P.REVIEW_RATE_FACTOR} x {cfg.expected_rate} of each concept by combined "
                "score (a quota, not evidence: never flags)"
                if cfg.expected_rate is not None
                else None
            ),
        },
        "concepts_source": concepts_source,
        "concept_embeddings": emb_source,
        "semantic_reference": semantic_source,
        "prompt_templates": list(PROMPT_TEMPLATES),
        "timings": {
            "concept_embeddings_s": round(t_emb, 3),
            **timings,
            "total_s": round(time.perf_counter() - t_start, 3),
        },
        "summary": {
            "n_total": data["n_total"],
            "n_scorable": n,
            "n_unscorable": data["n_unscorable"],
            "n_scored": int(per_key["concept"].notna().sum()) if len(per_key) else 0,
            "n_without_concept": int(n - (named.any(axis=1)).sum()),
            "n_split_view": int(len(data["split_keys"])),
            "n_flagged": int(flagged.sum()),
            "n_review": int(per_key["review"].sum()) if len(per_key) else 0,
            "n_review_not_flagged": int((per_key["review"] & ~per_key["flagged"]).sum())
            if len(per_key)
            else 0,
            "flagged_by_kind": {str(k): int(v) for k, v in kinds.items()},
        },
        "concept_vulnerability": vuln.to_dict(orient="records"),
    }
    ws.write_finding("poisons", table, meta)
    logger.info(
        "poisons: %d flagged of %d scored (%s)",
        int(flagged.sum()),
        len(per_key),
        ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none",
    )
    return 0
