"""The reproduce stage's scoring: every generation against the training images, the copy
thresholds, the verbatim check, object presence, and the tables and metadata it writes.

The arithmetic is ``detectors.memorization``'s (and ``detectors.objects``' for object presence);
this module reads the workspace (``pipelines.training_set``, the generations' chunks) and the
images the checks need.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.errors import InputError
from audit.reproduce.generate import to_arrow
from pipelines.training_set import EmptyTrainingSet, Relations, TrainingSet

if TYPE_CHECKING:
    import pandas as pd

    from audit.copies import CopySpace
    from audit.workspace import Workspace
    from pipelines.reproduce import ChunkTask, GenerationSettings

logger = logging.getLogger(__name__)


# ---- the workspace's side --------------------------------------------------------------------
@dataclass
class Findings:
    """The replication findings the prompts come from (pandas frames or None), and the objects
    finding's metadata (its candidate objects, for the presence score)."""

    word: Any = None
    objects: Any = None
    objects_meta: dict[str, Any] | None = None

    @classmethod
    def read(cls, ws: Workspace) -> Findings:
        def get(name: str) -> Any:
            return ws.read_finding(name).to_pandas() if ws.has_finding(name) else None

        objects = get("object_replication")
        meta = ws.finding_meta("object_replication") if objects is not None else None
        return cls(get("word_replication"), objects, meta)

    def rows(self, which: str) -> dict[str, dict[str, Any]]:
        df = self.word if which == "word" else self.objects
        return {} if df is None else {str(r["finding_id"]): r for r in df.to_dict("records")}


def training_set(ws: Workspace, column: str = "image_emb") -> TrainingSet:
    """The workspace's training vectors of ``column`` (an input error when there are none)."""
    try:
        return TrainingSet(ws.embeddings(), column)
    except EmptyTrainingSet as exc:
        raise InputError(f"{ws.embeddings_dir} {exc}") from exc


def relations(ws: Workspace, word: Any) -> Relations:
    """Duplicate groups (findings/duplicates) and replication clusters (``word``)."""
    dup = ws.finding_path("duplicates") if ws.has_finding("duplicates") else None
    return Relations(dup, word)


def read_generations(
    ws: Workspace,
    tasks: list[ChunkTask],
    settings: GenerationSettings,
    dim: int,
    copy_dim: int | None = None,
    device: str = "cpu",
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
    """Rows of the finished chunks (pandas, no embeddings), their CLIP embeddings and, with
    ``copy_dim``, their copy descriptors (NaN rows where generation or embedding failed).
    Generations from chunks written without descriptors are described here, from their PNGs."""
    from pipelines.reproduce import read_generations as read_chunks

    g = read_chunks(ws.generations_dir, tasks, settings, dim, copy_dim)
    missing = g.missing_copies()
    if len(missing):
        from audit.copies import CopyEncoder
        from audit.report.images import open_path

        logger.info("describing %d earlier generations with the copy model", len(missing))
        encode = CopyEncoder.for_workspace(ws, device)()
        for a in range(0, len(missing), 256):
            rows = missing[a : a + 256]
            ims = [open_path(ws.generations_dir / g.frame.at[r, "path"]) for r in rows]
            have = [r for r, im in zip(rows, ims) if im is not None]
            if have:
                g.copy_emb[have] = encode([im for im in ims if im is not None])
    return g.frame, g.image_emb, g.copy_emb


# ---- scoring ---------------------------------------------------------------------------------
def score(
    ws: Workspace,
    prompts: pd.DataFrame,
    tasks: list[ChunkTask],
    settings: GenerationSettings,
    train: TrainingSet,
    findings: Findings,
    device: str,
    copies: TrainingSet | None = None,
) -> tuple[pd.DataFrame, dict[str, tuple[str, int]]]:
    """Per generation: best cosine over the finding's cluster (word findings) or over every
    training image (object findings, file prompts), its training key, and for object findings
    the presence score and test. With ``copies`` (the copy descriptors of the training set)
    ``similarity`` and ``nearest_key`` are the copy descriptor's and the CLIP ones are kept as
    ``clip_similarity`` / ``clip_nearest_key``. Returns the generations frame and each prompt's
    reference (``"cluster"`` or ``"dataset"``, size)."""
    gdf, gemb, gcopy = read_generations(
        ws, tasks, settings, train.dim, copies.dim if copies is not None else None, device
    )
    word_rows, obj_rows = findings.rows("word"), findings.rows("objects")
    pid_to_row = {r["prompt_id"]: r for r in prompts.to_dict("records")}
    by_prompt = gdf.groupby("prompt_id", sort=False).indices if len(gdf) else {}
    sim, nearest, refs, usable = reference_scores(gemb, train, pid_to_row, word_rows, obj_rows,
                                                  by_prompt)  # fmt: skip
    if copies is not None and gcopy is not None:
        gdf["clip_similarity"] = sim
        gdf["clip_nearest_key"] = nearest
        sim, nearest, _, _ = reference_scores(gcopy, copies, pid_to_row, word_rows, obj_rows,
                                              by_prompt, warn=False)  # fmt: skip
    obj_score, obj_present = object_presence(ws, gemb, pid_to_row, usable, findings, device)
    gdf["similarity"] = sim
    gdf["nearest_key"] = nearest
    gdf["object_score"] = obj_score
    gdf["object_present"] = obj_present
    gdf["finding_id"] = [str(pid_to_row[p]["finding_id"]) for p in gdf["prompt_id"]]
    gdf["prompt_kind"] = [str(pid_to_row[p]["prompt_kind"]) for p in gdf["prompt_id"]]
    gen_dir = ws.generations_dir.relative_to(ws.root).as_posix()
    gdf["gen_path"] = [f"{gen_dir}/{p}" if isinstance(p, str) else None for p in gdf["path"]]
    return gdf, refs


def reference_scores(
    gemb: np.ndarray,
    train: TrainingSet,
    pid_to_row: dict[str, dict[str, Any]],
    word_rows: dict[str, dict[str, Any]],
    obj_rows: dict[str, dict[str, Any]],
    by_prompt: dict[str, Any],
    warn: bool = True,
) -> tuple[np.ndarray, list[str | None], dict[str, tuple[str, int]], dict[str, np.ndarray]]:
    """Best cosine of each generation over its prompt's reference set in ``train``'s space:
    the word finding's cluster members, else every training image (one streaming pass).
    Returns (similarity, nearest key, reference per prompt, usable rows per prompt)."""
    from audit.prompts import USER_FINDING
    from detectors.memorization import best_match

    sim = np.full(len(gemb), np.nan, np.float32)
    nearest: list[str | None] = [None] * len(gemb)
    refs: dict[str, tuple[str, int]] = {}
    clusters: dict[str, tuple[list[str], np.ndarray]] = {}
    usable: dict[str, np.ndarray] = {}
    for pid, p in pid_to_row.items():
        fid = str(p["finding_id"])
        idx = np.asarray(by_prompt.get(pid, []), dtype=np.int64)
        idx = idx[np.isfinite(gemb[idx]).all(axis=1)]
        usable[pid] = idx
        if fid in word_rows:
            if fid not in clusters:
                clusters[fid] = train.by_keys(_member_keys(word_rows[fid]))
            mkeys, memb = clusters[fid]
            refs[pid] = ("cluster", len(mkeys))
            if len(mkeys) and len(idx):
                s, j = best_match(gemb[idx], memb)
                sim[idx] = s
                for i, jj in zip(idx, j):
                    nearest[i] = mkeys[jj]
        else:
            if warn and fid != USER_FINDING and fid not in obj_rows and len(idx):
                logger.warning(
                    "prompt %s names unknown finding %r: scored against every training image",
                    pid,
                    fid,
                )
            refs[pid] = ("dataset", train.n_ok)
    rest = [usable[pid] for pid in pid_to_row if refs[pid][0] == "dataset"]
    all_idx = np.concatenate(rest) if rest else np.zeros(0, np.int64)
    if len(all_idx):  # one streaming pass over the embeddings for every such generation
        s, ks = train.nearest(gemb[all_idx])
        sim[all_idx] = s
        for i, k in zip(all_idx, ks):
            nearest[i] = k
    return sim, nearest, refs, usable


def _member_keys(row: dict[str, Any]) -> list[str]:
    raw = row.get("member_keys")
    return [str(k) for k in (raw if raw is not None else [])]


def object_presence(
    ws: Workspace,
    gemb: np.ndarray,
    pid_to_row: dict[str, dict[str, Any]],
    usable: dict[str, np.ndarray],
    findings: Findings,
    device: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Presence score and test of each object finding's object in its prompts' generations
    (CLIP image space), scored as the objects finding scored the training images
    (:func:`presence_scorer`), against the finding's threshold. Other generations: NaN and
    None."""
    obj_rows = findings.rows("objects")
    obj_score = np.full(len(gemb), np.nan, np.float32)
    obj_present = np.full(len(gemb), None, dtype=object)
    scorer = None
    for pid, p in pid_to_row.items():
        fid, idx = str(p["finding_id"]), usable[pid]
        if fid not in obj_rows or not len(idx):
            continue
        if scorer is None:
            scorer = presence_scorer(ws, findings.objects_meta, device, gemb.shape[1])
        o = obj_rows[fid]
        sc = scorer(gemb[idx], str(o["keyword"]), str(o["object"]))
        thr = o.get("threshold")
        thr = float(thr) if thr is not None and math.isfinite(float(thr)) else math.inf
        obj_score[idx] = sc
        obj_present[idx] = sc > thr
    return obj_score, obj_present


def presence_scorer(
    ws: Workspace, meta: dict[str, Any] | None, device: str, dim: int
) -> Callable[[np.ndarray, str, str], np.ndarray]:
    """``score(img_emb, keyword, object) -> (n,)``: the margin the objects finding calibrated
    its threshold on (``detectors.objects.keyword_scores``), with the same candidates (the
    objects it tested and the alternatives that competed, from its metadata, less the keyword:
    ``keyword_candidates``) and the workspace's CLIP text tower. A finding that records no
    candidates (written before they were recorded) is scored against its own object alone,
    with a warning: its threshold was calibrated on another score."""
    from audit.vocabulary import PromptEncoder
    from detectors.objects import keyword_candidates, keyword_scores

    meta = meta or {}
    objects, alternatives = list(meta.get("objects") or []), list(meta.get("alternatives") or [])
    if not objects:
        logger.warning(
            "findings/object_replication.json records no candidate objects: object presence is "
            "scored against each finding's object alone, not the score its threshold was "
            "calibrated on (rerun `laion-audit objects`)"
        )
    batch = int((meta.get("parameters") or {}).get("batch_size") or 256)
    encoder = PromptEncoder(ws.model(), device, batch, dim)
    none = np.zeros(0, np.int64)

    def score_one(emb: np.ndarray, keyword: str, obj: str) -> np.ndarray:
        objs, alts = keyword_candidates(keyword, objects or [obj], alternatives)
        if obj not in objs:  # a finding row whose object the recorded list lacks
            objs = [obj, *objs]
        inside, _ = keyword_scores(emb, keyword, objs, alts, encoder.contrast,
                                   np.arange(len(emb)), none)  # fmt: skip
        return inside[:, objs.index(obj)]

    return score_one


@dataclass
class Decisions:
    """A scored run: ``generations`` (one row per generation, ``is_copy`` and the verbatim
    check decided), each prompt's reference set and copy threshold, and the calibration and
    verification records for the finding's metadata."""

    generations: pd.DataFrame
    refs: dict[str, tuple[str, int]]
    thresholds: dict[str, float]
    calibration: dict[str, Any]
    verification: dict[str, Any]


def decide(
    ws: Workspace,
    prompts: pd.DataFrame,
    tasks: list[ChunkTask],
    settings: GenerationSettings,
    train: TrainingSet,
    findings: Findings,
    device: str,
    space: CopySpace,
    *,
    alpha: float,
    copy_threshold: float,
    calibration_samples: int,
    null_queries: int,
    verify_copies: bool,
    verify_samples: int,
) -> Decisions:
    """Score every finished generation (:func:`score`), decide copies with one threshold in
    copy-descriptor space (:func:`copy_calibration`) or the thresholds calibrated per reference
    set in CLIP space (:func:`calibrate`), then check copies verbatim (:func:`verify`).
    ``train``: the training images' CLIP embeddings."""
    from detectors.memorization import prompt_thresholds

    copies = training_set(ws, space.column) if space.is_copy else None
    gdf, refs = score(ws, prompts, tasks, settings, train, findings, device, copies)
    if copies is not None:  # one threshold on the copy descriptor for every prompt
        cal = copy_calibration(copy_threshold, space)
    else:
        cal = calibrate(ws, train, findings, prompts, alpha=alpha, copy_threshold=copy_threshold,
                        samples=calibration_samples, null_queries=null_queries)  # fmt: skip
    thr = prompt_thresholds(prompts, refs, cal)
    gdf["threshold"] = [thr[p] for p in gdf["prompt_id"]]
    sim = gdf["similarity"].to_numpy(np.float64)
    gdf["is_copy"] = np.isfinite(sim) & (sim >= gdf["threshold"].to_numpy(np.float64))
    size = (settings.width or 0, settings.height or 0)
    info = verify(ws, gdf, train, findings.word, size, enabled=verify_copies, alpha=alpha,
                  samples=verify_samples)  # fmt: skip
    return Decisions(gdf, refs, thr, cal, info)


# ---- copy thresholds -------------------------------------------------------------------------
def copy_calibration(copy_threshold: float, space: CopySpace) -> dict[str, Any]:
    """The copy threshold in copy-descriptor space: one value for every prompt (the option, or
    the descriptor's default), with where it came from."""
    thr = float(copy_threshold or space.threshold)
    return {
        "copy_threshold_method": "fixed" if copy_threshold else "copy_descriptor_default",
        "copy_threshold": thr,
        "copy_threshold_source": "option" if copy_threshold else space.source,
        "space": space.to_dict(),
        "cluster_thresholds": {},
        "dataset_threshold": thr,
    }


def calibrate(
    ws: Workspace,
    train: TrainingSet,
    findings: Findings,
    prompts: pd.DataFrame,
    *,
    alpha: float,
    copy_threshold: float,
    samples: int,
    null_queries: int,
) -> dict[str, Any]:
    """Copy thresholds in CLIP space: the pair threshold (``samples`` training images, their
    unrelated pairs), then one per reference set used by the prompts (each cluster; the whole
    training set from ``null_queries`` images) from the best-match null of training images
    unrelated to it (see ``detectors.memorization``). A ``copy_threshold`` fixes every
    threshold instead."""
    from detectors import memorization as mem

    rel = relations(ws, findings.word)
    keys, emb = train.sample(samples, seed=0)
    labels = rel.labels(keys)
    sims = mem.unrelated_pair_similarities(emb, labels, max_items=samples)
    pair = mem.calibrate_copy_threshold(sims, alpha)
    q = np.quantile(sims, [0.5, 0.9, 0.99, 0.999])
    out: dict[str, Any] = {
        "copy_threshold_method": "fixed" if copy_threshold else "unrelated_pairs_quantile",
        "pair_threshold": pair,
        "alpha": alpha,
        "unrelated_pairs": int(len(sims)),
        "unrelated_similarity_quantiles": {"p50": q[0], "p90": q[1], "p99": q[2], "p999": q[3]},
    }
    word_rows = findings.rows("word")
    used = set(prompts["finding_id"].astype(str))
    cluster_thr: dict[str, float] = {}
    null_q: dict[str, dict[str, float]] = {}
    for fid in sorted(used & set(word_rows)):
        mkeys, memb = train.by_keys(_member_keys(word_rows[fid]))
        if not len(mkeys):
            continue
        null = mem.max_unrelated_similarity(
            emb,
            memb,
            labels,
            rel.labels(mkeys),
            np.asarray(keys, object),
            np.asarray(mkeys, object),
        )
        cluster_thr[fid] = copy_threshold or mem.calibrate_reference_threshold(null, pair, alpha)
        fin = null[np.isfinite(null)]
        null_q[fid] = {"p50": float(np.median(fin)), "max": float(fin.max())} if len(fin) else {}
    dataset_thr = None
    if used - set(word_rows):
        n_q = min(len(keys), null_queries)
        null = train.nearest_unrelated(keys[:n_q], emb[:n_q], rel)
        dataset_thr = copy_threshold or mem.calibrate_reference_threshold(null, pair, alpha)
        fin = null[np.isfinite(null)]
        null_q["dataset"] = (
            {"p50": float(np.median(fin)), "max": float(fin.max()), "queries": n_q}
            if len(fin)
            else {}
        )
    out.update(
        copy_threshold=float(copy_threshold or pair),
        cluster_thresholds=cluster_thr,
        dataset_threshold=dataset_thr,
        reference_null=null_q,
    )
    logger.info(
        "copy thresholds: pair %.4f (%d unrelated pairs: median %.3f, p99.9 %.3f), clusters %s, "
        "whole training set %s",
        pair,
        len(sims),
        q[0],
        q[3],
        ", ".join(f"{k} {v:.4f}" for k, v in cluster_thr.items()) or "none",
        "n/a" if dataset_thr is None else f"{dataset_thr:.4f}",
    )
    return out


# ---- verbatim check --------------------------------------------------------------------------
def verify(
    ws: Workspace,
    gdf: pd.DataFrame,
    train: TrainingSet,
    word: Any,
    size: tuple[int, int],
    *,
    enabled: bool,
    alpha: float,
    samples: int,
) -> dict[str, Any]:
    """Tiled-l2 check of every copy against its nearest training image (adds ``tiled_l2`` and
    ``is_verbatim`` to ``gdf``; null where unchecked). The distance threshold is the ``alpha``
    quantile over unrelated pairs of ``samples`` training images read from the shards."""
    from audit.report.images import ShardIndex, open_path
    from detectors import memorization as mem

    gdf["tiled_l2"] = np.nan
    gdf["is_verbatim"] = _na_bool(len(gdf))
    info: dict[str, Any] = {"verbatim_checked": False}
    copies = np.flatnonzero(gdf["is_copy"].to_numpy(bool))
    if not enabled:
        info["verbatim_note"] = "disabled (--no-verify)"
        return info
    shards = ShardIndex(ws.shards_dir)
    if not shards.available:
        info["verbatim_note"] = "no training images in WS/shards (imported embeddings?)"
        return info
    keys, _ = train.sample(samples, seed=1)
    imgs = [(k, shards.open_image(k)) for k in keys]
    imgs = [(k, im) for k, im in imgs if im is not None]
    if len(imgs) < 20:
        info["verbatim_note"] = f"only {len(imgs)} training images readable from the shards"
        return info
    px = load_pixels([im for _, im in imgs], size)
    labels = relations(ws, word).labels([k for k, _ in imgs])
    i, j = mem.sample_unrelated_pairs(len(imgs), labels, max_items=len(imgs))
    d = mem.tiled_l2(px[i], px[j])
    l2_thr = mem.calibrate_tiled_l2_threshold(d, alpha)
    info.update(
        verbatim_checked=True,
        tiled_l2_threshold=l2_thr,
        tiled_l2_pairs=int(len(d)),
        tiled_l2_tiles=mem.DEFAULT_TILES,
        unrelated_tiled_l2_quantiles={
            "p001": float(np.quantile(d, 0.001)),
            "p01": float(np.quantile(d, 0.01)),
            "p50": float(np.quantile(d, 0.5)),
        },
    )
    cache: dict[str, Any] = {}
    dists = np.full(len(gdf), np.nan)
    for r in copies:
        key = gdf.at[r, "nearest_key"]
        if key not in cache:
            cache[key] = shards.open_image(key)
        train_im = cache[key]
        gen_im = open_path(ws.generations_dir / gdf.at[r, "path"])
        if train_im is None or gen_im is None:
            continue
        a = load_pixels([gen_im], size)
        b = load_pixels([train_im], size)
        dists[r] = float(mem.tiled_l2(a, b)[0])
    checked = np.isfinite(dists)
    gdf["tiled_l2"] = dists
    verb = _na_bool(len(gdf))
    verb[checked] = dists[checked] <= l2_thr
    gdf["is_verbatim"] = verb
    info["verbatim_copies_checked"] = int(checked.sum())
    return info


def load_pixels(images: list[Any], size: tuple[int, int]) -> np.ndarray:
    """PIL images -> (n, h, w, 3) uint8 at ``size`` (w, h), bicubic."""
    from PIL import Image

    return np.stack(
        [np.asarray(im.convert("RGB").resize(size, Image.BICUBIC), np.uint8) for im in images]
    )


def _na_bool(n: int) -> Any:
    import pandas as pd

    return pd.array([pd.NA] * n, dtype="boolean")


# ---- what the stage writes -------------------------------------------------------------------
def write_generation_tables(ws: Workspace, gdf: pd.DataFrame, examples: int) -> None:
    """``generations/scores.parquet`` (every generation) and ``generations/examples.parquet``
    (the ``examples`` most similar generations of each prompt beside their nearest training
    image)."""
    scored = gdf.drop(columns=["error"]).copy()
    ex = scored[np.isfinite(scored["similarity"].to_numpy(np.float64))]
    ex = ex.sort_values(["prompt_id", "similarity", "seed"], ascending=[True, False, True])
    ex = ex.groupby("prompt_id", sort=False).head(examples)
    cols = ["finding_id", "prompt_id", "prompt_kind", "seed", "gen_path", "path", "nearest_key",
            "similarity", "is_copy", "is_verbatim", "tiled_l2", "object_present"]  # fmt: skip
    ws.write_table(ws.generations_dir / "scores.parquet", to_arrow(scored))
    ws.write_table(ws.generations_dir / "examples.parquet", to_arrow(ex[cols]))


def triage_meta(
    out: pd.DataFrame,
    *,
    seeds: int,
    top: int,
    per_finding: int,
    min_copy_share: float,
    n: int,
    steps: int,
    timings: dict[str, float],
    chunks_generated: int,
) -> dict[str, Any]:
    """The triage's quality against this run's N-seed labels and its cost. Its AUROC (with a
    bootstrap interval over prompts) is measured only when the prompts generated at the full N
    were not chosen by the triage itself (no ``--triage-top`` cut): on the prompts it chose,
    the AUROC would measure the selection."""
    from detectors import memorization as mem

    gen_rows = out[out["generated"] & (out["n"] > 0)]
    labels = mem.replication_labels(
        gen_rows["n_copies"].to_numpy(), gen_rows["n"].to_numpy(), min_copy_share
    )
    chosen_by_triage = bool(top) and not bool(out["generated"].all())
    quality: dict[str, Any] = {}
    if seeds and len(gen_rows) and not chosen_by_triage:
        quality = mem.triage_quality(gen_rows["triage_score"].to_numpy(), labels)
    n_generated = max(1, int(out["generated"].sum()))
    seconds_share = None
    if timings.get("triage") and chunks_generated:
        seconds_share = (timings["triage"] / len(out)) / (timings["generation"] / n_generated)
    return {
        "seeds": seeds,
        "top": top,
        "per_finding": per_finding,
        "auroc_vs_replication": quality.get("auroc", float("nan")),
        "auroc_ci": quality.get("auroc_ci"),
        "auroc_interval": quality.get("auroc_interval"),
        "tpr_at_fpr": quality.get("tpr_at_fpr"),
        "auroc_prompts": (
            "not measured: the prompts generated were chosen by the triage (--triage-top)"
            if chosen_by_triage
            else "every prompt generated at the full N"
        ),
        "n_replicating_prompts": int(labels.sum()),
        "min_copy_share": min_copy_share,
        "unet_calls_share": seeds / (n * steps) if n else None,
        "seconds": timings.get("triage"),
        "seconds_share": seconds_share,
    }
