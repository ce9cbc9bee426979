"""Object-level replication: objects a keyword's images carry that its captions never name.

Pure functions over arrays; the text embeddings of the prompts are computed by the caller
(``audit.vocabulary.PromptEncoder``, for the ``objects`` stage) with the workspace's own CLIP
model and passed in as a ``contrast`` function.

**Presence score.** For a keyword K and an object O, each image x gets the margin
``s(x) = cos(x, T(K with O)) - max(cos(x, T(K)), max over other objects O' of
cos(x, T(K with O')))``, where ``T(K with O)`` is the normalised mean of the text embeddings of
a prompt ensemble ("a photo of a K with a O", "a K and a O", ...) and ``T(K)`` the same
ensemble without the object (the "no object" contrast). ``s > 0`` means "K with O" describes
the image better than K alone and better than K with any other object of the vocabulary. The
other objects are needed: measured on the testbed with tiny-synth, the plain contrast
``cos(x, T(K with O)) - cos(x, T(K))`` finds the planted flags for *every* object (the model
answers "a second object is there" more than "which one"), flagging 23 of 23 objects at ~10%;
with the margin only the flag is found. The same score is computed for images outside the
subset.

**Threshold, without labels** (:func:`calibrate_presence`). Most images of a population do not
carry the object, so the bulk of ``s`` is the "absent" distribution. It is estimated robustly
(median and 1.4826 * MAD, which ignore a minority of high scores), and a two-component Gaussian
mixture is fitted with its first component started there. The threshold is where the fitted
"present" component becomes more likely than the "absent" one, provided the mixture is
supported: BIC prefers two components, the present component lies at least ``min_sep`` robust
SDs above the absent one, weighs at most half, and its mean margin is positive (for a typical
image of that component, "K with O" *is* the best description; measured on the testbed, the
modes that styles or colours create among "tree" or "umbrella" images have all their margins
below 0, the planted flags 85% above). The mixture is not even fitted when fewer than
``screen`` = 1% of the scores lie above ``median + 3 * MAD`` (a Gaussian bulk puts 0.13%
there). Otherwise no separate population of object-carrying images is visible: the threshold
falls back to ``max(0, median + z * MAD)`` (``z = 4``: a Gaussian "absent" score passes it with
probability 3e-5), so only clear outliers that the object's prompt describes best count. The
keyword subset and the outside population are calibrated separately (their "absent" scores
differ because the prompts name the keyword), each with its own threshold; an object rare
outside (~1% there) stays below the screen and its outside rate is then underestimated (only
its clearest images count): that can make a flag more likely, never hide an association.

**Rate.** ``image_rate`` = share of the subset above its threshold, with a Wilson 95% interval;
``caption_rate`` = share of the subset whose caption names the object;
``outside_rate`` = the same image rate outside the subset. A pair is flagged when the Wilson
lower bound of the image rate exceeds both the caption rate and the outside rate by
``min_gap`` (absolute), the image rate is at least ``min_rate``, and the images found are at
least ``min_distinct`` = 5 distinct pictures (near-copies, grouped at the word-level copy
threshold, count once: measured on the testbed, four near-duplicate copies of one black
umbrella that tiny-synth reads as "umbrella with a bicycle" were the only false association
discovery flagged without this rule).

**Many tests** (:func:`adjust_flags`). Every keyword x object pair is a test: the one-sided
exact binomial p-value of the images found against ``baseline + min_gap``
(:func:`detectors.stats.binomial_pvalue`). A run that tries a few hundred objects, or discovery
that tries every frequent caption term as a keyword against every object, makes thousands of
them, and a Wilson bound that clears the baseline by chance in one test of a thousand is
expected a few times. The flag therefore also needs the pair's Benjamini-Hochberg q-value over
the whole family of the run to be at most ``fdr`` (0.05 by default): the false discovery rate
of the flagged pairs is controlled at that level. ``flagged_unadjusted`` keeps the rule without
the correction. The stage weights the procedure (weighted BH, :func:`fdr_weights`): objects
that only the general list holds share 20% of the error budget (:data:`DEFAULT_GENERAL_SHARE`),
objects the user listed or the dataset's captions name somewhere the other 80%, so the ~300
general-list entries that no caption names are still searched without diluting the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.stats import (
    DEFAULT_FDR,
    FDR_METHOD,
    benjamini_hochberg,
    binomial_pvalue,
    median_mad,
    normalize_rows,
    wilson_interval,
)
from detectors.text import match_keyword

logger = logging.getLogger(__name__)

NAME = "object_presence_v1"

WITH_TEMPLATES: tuple[str, ...] = (
    "a photo of a {keyword} with a {object}",
    "a {keyword} with a {object}",
    "an image of a {keyword} and a {object}",
    "a picture of a {keyword} next to a {object}",
    "a {keyword} with a small {object} in the corner",
)
WITHOUT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {keyword}",
    "a {keyword}",
    "an image of a {keyword}",
    "a picture of a {keyword}",
    "a {keyword} alone",
)


def object_prompts(
    keyword: str,
    objects: Sequence[str],
    with_templates: Sequence[str] = WITH_TEMPLATES,
    without_templates: Sequence[str] = WITHOUT_TEMPLATES,
) -> tuple[dict[str, list[str]], list[str]]:
    """The prompt ensembles: ``({object: [with-object prompts]}, [no-object prompts])``."""
    with_obj = {o: [t.format(keyword=keyword, object=o) for t in with_templates] for o in objects}
    without = [t.format(keyword=keyword) for t in without_templates]
    return with_obj, without


def ensemble(text_emb: np.ndarray) -> np.ndarray:
    """Normalised mean of normalised prompt embeddings (one vector)."""
    x = normalize_rows(np.atleast_2d(text_emb))
    return normalize_rows(x.mean(0, keepdims=True))[0]


def presence_scores(
    img_emb: np.ndarray,
    with_vecs: np.ndarray,
    without_vec: np.ndarray,
    alternatives: np.ndarray | None = None,
) -> np.ndarray:
    """Margin of each object's prompt over the best alternative; shape (n_images, n_objects).

    ``s[i, k] = cos(img_i, with_k) - max(cos(img_i, without), max_{j != k} cos(img_i, with_j),
    max_a cos(img_i, alternatives_a))``: positive when "K with O_k" describes the image better
    than "K" alone and better than "K with" any other object. Contrasting with the other objects
    matters: a small model (and CLIP in general) responds to "there is a second object" as much
    as to which object it is, so the plain contrast with "K" would count an astronaut with a
    flag as an astronaut with a moon too.
    """
    x = normalize_rows(img_emb)
    w = normalize_rows(np.atleast_2d(with_vecs))
    o = normalize_rows(np.atleast_2d(without_vec))[0]
    sims = x @ w.T
    best_alt = x @ o
    if alternatives is not None and len(alternatives):
        best_alt = np.maximum(best_alt, (x @ normalize_rows(np.atleast_2d(alternatives)).T).max(1))
    k = sims.shape[1]
    if k > 1:
        order = np.argsort(-sims, axis=1)
        top1 = np.take_along_axis(sims, order[:, :1], 1)[:, 0]
        top2 = np.take_along_axis(sims, order[:, 1:2], 1)[:, 0]
        other = np.where(order[:, :1] == np.arange(k)[None, :], top2[:, None], top1[:, None])
        best = np.maximum(other, best_alt[:, None])
    else:
        best = best_alt[:, None]
    return sims - best


@dataclass
class Calibration:
    """The threshold of one (population, object) and how it was found."""

    threshold: float
    method: str  # "gmm" or "robust_z"
    median: float
    mad: float
    n: int
    mixture_weight: float | None = None  # weight of the "present" component when method == gmm
    separation: float | None = None  # (present mean - absent mean) / absent SD
    bic_gain: float | None = None  # BIC(1 component) - BIC(2 components)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def calibrate_presence(
    scores: np.ndarray,
    *,
    z: float = 4.0,
    min_sep: float = 3.0,
    screen: float = 0.01,
    zero: float | None = 0.0,
    seed: int = 0,
) -> Calibration:
    """Label-free threshold for one population's presence scores (module docstring).

    ``zero``: the score's natural decision point (0 for the margins of
    :func:`presence_scores`: the object's prompt is the best description), or None for scores
    without one. With it, the mixture is kept only if its "present" component's mean is above
    ``zero``, and the robust-z fallback threshold is never below ``zero``.
    """
    s = np.asarray(scores, np.float64).ravel()
    s = s[np.isfinite(s)]
    n = s.size
    if n == 0:
        return Calibration(np.inf, "robust_z", float("nan"), float("nan"), 0)
    med, mad = median_mad(s)
    mad = mad if mad > 1e-9 else float(np.std(s)) or 1e-9
    fb_thr = med + z * mad if zero is None else max(med + z * mad, zero)
    fallback = Calibration(fb_thr, "robust_z", med, mad, n)
    # screen: a Gaussian "absent" bulk puts 0.13% above median + 3 MAD; without a clear excess
    # there (>= screen) no second population is visible and the mixture is not fitted at all
    if n < 20 or (s > med + 3 * mad).mean() < max(screen, 3 / n):
        return fallback
    from sklearn.mixture import GaussianMixture

    x = s.reshape(-1, 1)
    g1 = GaussianMixture(1, random_state=seed).fit(x)
    hi = s[s > med + 2 * mad]
    init_hi = float(hi.mean()) if hi.size else med + 3 * mad
    g2 = GaussianMixture(
        2,
        random_state=seed,
        means_init=[[med], [init_hi]],
        weights_init=[0.9, 0.1],
        reg_covar=1e-6,
    ).fit(x)
    means = g2.means_.ravel()
    sds = np.sqrt(g2.covariances_.ravel())
    lo, up = int(np.argmin(means)), int(np.argmax(means))
    sep = float((means[up] - means[lo]) / max(sds[lo], 1e-9))
    bic_gain = float(g1.bic(x) - g2.bic(x))
    below_zero = zero is not None and means[up] <= zero
    if lo == up or bic_gain <= 0 or sep < min_sep or g2.weights_[up] > 0.5 or below_zero:
        fallback.separation, fallback.bic_gain = sep, bic_gain
        return fallback
    # decision boundary: first grid point above the absent mean where "present" is more likely
    grid = np.linspace(means[lo], means[up], 512).reshape(-1, 1)
    post = g2.predict_proba(grid)[:, up]
    idx = int(np.argmax(post >= 0.5)) if (post >= 0.5).any() else len(grid) - 1
    return Calibration(
        threshold=float(grid[idx, 0]),
        method="gmm",
        median=med,
        mad=mad,
        n=n,
        mixture_weight=float(g2.weights_[up]),
        separation=sep,
        bic_gain=bic_gain,
    )


def object_replication(
    keyword: str,
    objects: Sequence[str],
    inside_scores: np.ndarray,
    outside_scores: np.ndarray,
    caption_mentions: np.ndarray,
    keys: Sequence[str],
    *,
    z: float = 4.0,
    min_sep: float = 3.0,
    min_gap: float = 0.02,
    min_rate: float = 0.03,
    min_distinct: int = 5,
    inside_emb: np.ndarray | None = None,
    n_examples: int = 8,
    seed: int = 0,
    fdr: float | None = DEFAULT_FDR,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per object for ``keyword``'s subset (module docstring), plus calibration info.

    ``fdr``: q-level of the Benjamini-Hochberg correction over these objects (None: no
    correction); a caller that tests more keywords re-adjusts the whole family with
    :func:`adjust_flags`.

    ``inside_scores`` (n, k) and ``caption_mentions`` (n, k, bool) are for the subset's images
    (failed samples already dropped), ``outside_scores`` (m, k) for images outside it (m may be 0:
    then ``outside_rate`` is None and only the caption rate is compared). ``inside_emb`` (n, d),
    when given, lets near-copies count once as evidence: the images found carrying an object are
    grouped at the word-level copy threshold (:mod:`detectors.replication`) and a flag needs at
    least ``min_distinct`` groups (a near-duplicate group of four copies of one misread image is
    one piece of evidence, not four).
    """
    inside = np.asarray(inside_scores, np.float64)
    outside = np.asarray(outside_scores, np.float64)
    mentions = np.asarray(caption_mentions, bool)
    n, k = inside.shape if inside.ndim == 2 else (0, len(objects))
    if k != len(objects) or mentions.shape != (n, k):
        raise ValueError(
            f"shapes disagree: {len(objects)} objects, inside {inside.shape}, "
            f"mentions {mentions.shape}"
        )
    if outside.size and outside.shape[1] != k:
        raise ValueError(f"outside_scores has {outside.shape[1]} columns, expected {k}")
    key_arr = np.asarray(keys, dtype=object)
    if len(key_arr) != n:
        raise ValueError(f"{len(key_arr)} keys for {n} images")
    rows: list[dict[str, Any]] = []
    cal_info: dict[str, Any] = {}
    copy_thr = None
    if inside_emb is not None:
        from detectors.replication import calibrate_threshold

        if len(inside_emb) != n:
            raise ValueError(f"inside_emb has {len(inside_emb)} rows for {n} images")
        inside_emb = normalize_rows(inside_emb)
        copy_thr = calibrate_threshold(inside_emb, seed=seed).threshold if n >= 2 else 1.0
    for j, obj in enumerate(objects):
        cin = calibrate_presence(inside[:, j], z=z, min_sep=min_sep, seed=seed)
        present = inside[:, j] > cin.threshold
        k_img = int(present.sum())
        rate = k_img / n if n else 0.0
        lo, hi = wilson_interval(k_img, n)
        cap_rate = float(mentions[:, j].mean()) if n else 0.0
        out_rate: float | None = None
        cout = None
        if outside.size:
            cout = calibrate_presence(outside[:, j], z=z, min_sep=min_sep, seed=seed)
            out_rate = float((outside[:, j] > cout.threshold).mean())
        unmentioned = present & ~mentions[:, j]
        order = np.argsort(-inside[:, j], kind="stable")
        examples = [str(key_arr[i]) for i in order if unmentioned[i]][:n_examples]
        n_distinct = k_img
        if copy_thr is not None and k_img > 1:
            from detectors.replication import cluster_embeddings

            n_distinct = int(len(np.unique(cluster_embeddings(inside_emb[present], copy_thr))))
        baseline = max(cap_rate, out_rate if out_rate is not None else 0.0)
        flagged = bool(
            n > 0 and rate >= min_rate and lo >= baseline + min_gap and n_distinct >= min_distinct
        )
        p_value = float(binomial_pvalue(k_img, n, min(1.0, baseline + min_gap)))
        rows.append(
            {
                "finding_id": f"object:{keyword}:{obj}",
                "keyword": keyword,
                "object": obj,
                "n_images": n,
                "n_present": k_img,
                "n_distinct": n_distinct,
                "image_rate": rate,
                "ci_low": float(lo),
                "ci_high": float(hi),
                "caption_rate": cap_rate,
                "gap": rate - cap_rate,
                "outside_rate": out_rate,
                "n_outside": int(outside.shape[0]) if outside.size else 0,
                "threshold": float(cin.threshold),
                "outside_threshold": float(cout.threshold) if cout else None,
                "calibration": cin.method,
                "mixture_weight": cin.mixture_weight,
                "p_value": p_value,
                "q_value": p_value,
                "flagged_unadjusted": flagged,
                "flagged": flagged,
                "example_keys": examples,
                "detector": NAME,
            }
        )
        cal_info[obj] = {"inside": cin.to_dict(), "outside": cout.to_dict() if cout else None}
    adjust_flags(rows, fdr)
    return rows, cal_info


DEFAULT_GENERAL_SHARE = 0.2
"""Weighted BH: the share of the error budget that goes to objects only the general list holds
(not listed by the user, not among the captions' terms); the rest goes to the others."""


def fdr_weights(classes: Sequence[str], general_share: float | None) -> np.ndarray:
    """Weighted-BH prior weights (mean 1) per test from its object's ``vocabulary`` class:
    the ``"general"`` rows share ``general_share`` of the total weight, the others (``"listed"``,
    ``"caption"``) the rest, equally within each group. Equal weights when ``general_share`` is
    None or one group is empty."""
    cls = np.asarray(list(classes), dtype=object)
    m = len(cls)
    gen = cls == "general"
    m_g = int(gen.sum())
    if general_share is None or m_g in (0, m):
        return np.ones(m)
    return np.where(gen, general_share * m / m_g, (1 - general_share) * m / (m - m_g))


def adjust_flags(
    rows: list[dict[str, Any]],
    fdr: float | None = DEFAULT_FDR,
    general_share: float | None = None,
) -> dict[str, Any]:
    """Benjamini-Hochberg over ``rows`` (one family: every keyword x object pair tested), in
    place: ``q_value`` from the rows' ``p_value``, ``flagged = flagged_unadjusted and q_value
    <= fdr``. ``fdr=None`` turns the correction off (``q_value = p_value``).

    ``general_share`` (weighted BH, :func:`detectors.stats.benjamini_hochberg`, weights from
    :func:`fdr_weights` over the rows' ``vocabulary`` class, stored as ``bh_weight``): rows of
    objects only the shipped general list holds share that part of the error budget, objects
    the user listed or the dataset's captions name somewhere the rest. The classes are fixed
    from the options and the captions before any image is scored. ``None``: plain BH. Returns
    a description of the correction for the finding's JSON."""
    p = np.array([r["p_value"] for r in rows], dtype=np.float64)
    w = fdr_weights([r.get("vocabulary", "listed") for r in rows], general_share)
    weighted = fdr is not None and bool(len(w)) and not np.allclose(w, 1.0)
    q = benjamini_hochberg(p, w if weighted else None) if fdr is not None else p
    for r, qv, wv in zip(rows, q, w):
        r["q_value"] = float(qv)
        r["bh_weight"] = float(wv) if weighted else 1.0
        r["flagged"] = bool(r["flagged_unadjusted"] and (fdr is None or qv <= fdr))
    return {
        "method": (FDR_METHOD + (" (weighted)" if weighted else "")) if fdr is not None else "none",
        "q_level": fdr,
        "n_tests": int(np.isfinite(p).sum()),
        "test": "one-sided exact binomial: images found vs baseline + min_gap",
        "general_share": general_share if weighted else None,
        "weights": (
            {
                c: float(w[[r.get("vocabulary") == c for r in rows]][0])
                for c in ("listed", "caption", "general")
                if any(r.get("vocabulary") == c for r in rows)
            }
            if weighted
            else None
        ),  # fmt: skip
        "n_flagged_unadjusted": int(sum(r["flagged_unadjusted"] for r in rows)),
        "n_flagged": int(sum(r["flagged"] for r in rows)),
    }


# --------------------------------------------------------------------------------------------
# one keyword, and discovery, over a whole collection

Contrast = Callable[[str, list[str]], tuple[np.ndarray, np.ndarray]]
"""``(keyword, objects) -> (with-object ensemble per object (k, d), no-object ensemble (d,))``:
the prompt ensembles' text embeddings, computed by the caller with the images' CLIP model."""

OBJECT_PARAMS: tuple[str, ...] = ("z", "min_sep", "min_gap", "min_rate", "min_distinct", "fdr")
"""The :func:`object_replication` parameters :func:`keyword_objects` passes on."""


def keyword_scores(
    emb: np.ndarray,
    keyword: str,
    objects: list[str],
    alternatives: list[str],
    contrast: Contrast,
    subset: np.ndarray,
    outside: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Presence margins of ``objects`` for the ``subset`` rows' and the ``outside`` rows'
    images; every other object and every alternative competes (:func:`presence_scores`)."""
    w, o = contrast(keyword, objects)
    alt = contrast(keyword, alternatives)[0] if alternatives else None
    inside_s = presence_scores(emb[subset], w, o, alt)
    if len(outside):
        outside_s = presence_scores(emb[outside], w, o, alt)
    else:
        outside_s = np.zeros((0, len(objects)))
    return inside_s, outside_s


def _same_words(a: str, b: str) -> bool:
    return set(a.lower().split()) == set(b.lower().split())


def keyword_candidates(
    keyword: str, objects: Sequence[str], alternatives: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """What :func:`keyword_objects` scores for ``keyword``: the objects tested (every object but
    the keyword itself) and the alternatives that only compete. ``reproduce`` scores object
    presence in generations with the same candidates, so a finding's threshold means the same
    there."""
    objs = [o for o in objects if not _same_words(o, keyword)]
    alts = [a for a in alternatives if not _same_words(a, keyword) and a not in objs]
    return objs, alts


def keyword_objects(
    emb: np.ndarray,
    captions: Sequence[str],
    keys: Sequence[str],
    keyword: str,
    objects: list[str],
    contrast: Contrast,
    *,
    usable: np.ndarray | None = None,
    alternatives: list[str] | None = None,
    classes: dict[str, str] | None = None,
    source: str = "keyword",
    min_subset: int = 20,
    outside_sample: int = 5000,
    seed: int = 0,
    **params: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (one per object) and a summary for one keyword over a collection (``emb`` (n, d),
    ``captions``, ``keys`` of every usable image; ``usable`` False rows are left out of the
    subset, e.g. captions too long for the tokenizer). The images outside the subset (at most
    ``outside_sample``, drawn with ``seed``) give the outside rate. ``alternatives``: objects
    that compete but are not reported. ``classes``: object -> where it came from ("listed",
    "caption", "general"; the rows' ``vocabulary``, the weighted-BH class). ``params``:
    :data:`OBJECT_PARAMS`. Flags are Benjamini-Hochberg-adjusted over this keyword's objects
    only; a caller testing more keywords re-adjusts the family (:func:`adjust_flags`)."""
    kw_mask = match_keyword(captions, keyword)
    ok = np.ones(len(captions), bool) if usable is None else np.asarray(usable, bool)
    subset = np.flatnonzero(kw_mask & ok)
    objs, alts = keyword_candidates(keyword, objects, alternatives or [])
    summary: dict[str, Any] = {
        "keyword": keyword,
        "source": source,
        "n_matching": int(kw_mask.sum()),
        "n_subset": int(len(subset)),
        "n_objects": len(objs),
        "n_alternatives": len(alts),
    }
    if len(subset) < min_subset or not objs:
        why = "no objects left" if not objs else f"subset smaller than min_subset={min_subset}"
        logger.warning("objects: keyword %r not analysed (%s)", keyword, why)
        summary["skipped"] = why
        return [], summary
    outside = np.flatnonzero(~kw_mask)
    if len(outside) > outside_sample:
        rng = np.random.default_rng(seed)
        outside = np.sort(rng.choice(outside, outside_sample, replace=False))
    inside_s, outside_s = keyword_scores(emb, keyword, objs, alts, contrast, subset, outside)
    sub_captions = [captions[i] for i in subset]
    mentions = np.stack([match_keyword(sub_captions, ob) for ob in objs], axis=1)
    key_arr = np.asarray(keys, dtype=object)
    rows, cal = object_replication(
        keyword, objs, inside_s, outside_s, mentions, list(key_arr[subset]),
        inside_emb=emb[subset], seed=seed, **params,
    )  # fmt: skip
    for r in rows:
        r["source"] = source
        r["vocabulary"] = classes.get(r["object"], "general") if classes else "listed"
    summary["n_outside"] = int(len(outside))
    summary["calibration"] = {
        o: c
        for o, c in cal.items()
        if c["inside"]["method"] == "gmm"
        or any(r["object"] == o and r["flagged_unadjusted"] for r in rows)
    }
    summary["n_flagged"] = sum(r["flagged"] for r in rows)
    summary["score"] = association_score(rows, params.get("min_distinct", 1))
    return rows, summary


def _margin(r: dict[str, Any]) -> float:
    return r["ci_low"] - max(r["caption_rate"], r["outside_rate"] or 0.0)


def association_score(rows: list[dict[str, Any]], min_distinct: int = 1) -> float:
    """Strength of a keyword's strongest unnamed-object association: the largest margin of the
    rate's Wilson lower bound over max(mention rate, outside rate) among objects seen in at
    least ``min_distinct`` distinct images; 0 if none is positive."""
    return max([0.0, *(_margin(r) for r in rows if r["n_distinct"] >= min_distinct)])


def discover_keywords(
    terms: Sequence[str],
    analyse: Callable[[str], tuple[list[dict[str, Any]], dict[str, Any]]],
    given: list[dict[str, Any]],
    *,
    top: int = 3,
    fdr: float | None = DEFAULT_FDR,
    general_share: float | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Object discovery: every term (a caption term with enough captions) is analysed as a
    keyword (``analyse(term) -> (rows, summary)``, e.g. :func:`keyword_objects`); the family of
    every pair tested, the ``given`` keywords' rows included, is adjusted at once
    (:func:`adjust_flags`, in place); terms rank by :func:`association_score`.

    Returns (the rows of the ``top`` terms with a positive score, the correction, the discovery
    record: chosen terms and ranking)."""
    ranking = []
    found: dict[str, list[dict[str, Any]]] = {}
    for kw in terms:
        r, s = analyse(kw)
        if not r:
            continue
        found[kw] = r
        best = max(r, key=_margin)
        ranking.append(
            {
                "keyword": kw,
                "score": s["score"],
                "n_subset": s["n_subset"],
                "n_flagged": s["n_flagged"],
                "best_object": best["object"],
                "best_image_rate": best["image_rate"],
            }
        )
    ranking.sort(key=lambda x: (-x["score"], x["keyword"]))
    family = given + [x for r in found.values() for x in r]
    correction = adjust_flags(family, fdr, general_share)
    for x in ranking:
        x["n_flagged"] = sum(r["flagged"] for r in found[x["keyword"]])
    chosen = [x["keyword"] for x in ranking if x["score"] > 0][:top]
    rows = [r for kw in chosen for r in found[kw]]
    return rows, correction, {"chosen": chosen, "ranking": ranking}


def finding_table(rows: list[dict[str, Any]]) -> Any:
    """The ``object_replication`` finding: one row per keyword x object, as an Arrow table."""
    import pyarrow as pa

    f64, f32, i32, s = pa.float64(), pa.float32(), pa.int32(), pa.string()
    schema = pa.schema(
        [
            ("finding_id", s),
            ("keyword", s),
            ("object", s),
            ("n_images", i32),
            ("n_present", i32),
            ("n_distinct", i32),
            ("image_rate", f64),
            ("ci_low", f64),
            ("ci_high", f64),
            ("caption_rate", f64),
            ("gap", f64),
            ("outside_rate", f64),
            ("n_outside", i32),
            ("threshold", f32),
            ("outside_threshold", f32),
            ("calibration", s),
            ("mixture_weight", f64),
            ("p_value", f64),
            ("q_value", f64),
            ("bh_weight", f64),
            ("vocabulary", s),
            ("flagged_unadjusted", pa.bool_()),
            ("flagged", pa.bool_()),
            ("example_keys", pa.list_(s)),
            ("source", s),
            ("detector", s),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)
