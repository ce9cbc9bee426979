"""``laion-audit poisons WS``: rank poison candidates (dirty-label, clean-label, perturbed aimed
at the generator, split-view).

Glue: reads ``WS/embeddings`` (and ``WS/findings/concepts.parquet`` when present, and the images
in ``WS/shards`` for the pixel and generator scores), calls :mod:`detectors.poisons`, writes
``WS/findings/poisons.parquet``, ``poisons.json`` and the concept vulnerability table
``WS/findings/concept_vulnerability.parquet``.
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

from audit.config import ConfigError, Options, add_options, add_workspace_argument, option, require
from audit.errors import InputError

logger = logging.getLogger(__name__)

HELP = (
    "rank poison candidates: dirty-label, clean-label, Nightshade/Glaze-style perturbations "
    "and split-view"
)
DESCRIPTION = """\
Rank poison candidates per concept and say why each one was flagged (docs/poisons.md).

Scores per sample (versioned names): from the CLIP embeddings, per concept (captions naming it
by word, optionally semantic match): alignment_cos_v1 / alignment_gmm_v1 (image-text
agreement), concept_pull_v1 (the image is nearer another concept), kdist_v1 and lof_v1 (local
outliers), spectral_v1; from the pixels in WS/shards (--no-pixel-scores skips them):
chroma_hf_v1 (high-frequency colour noise, the trace of an adversarial perturbation such as
Nightshade's or Glaze's) and freq_hf_v1 (spectral energy above half the Nyquist frequency); with
--generator DIR (the diffusers text-to-image pipeline to be trained): vae_recon_v1,
diffusion_loss_v1 (its per-sample training loss at --timesteps) and diffusion_gain_v1 (minus the
loss with an empty caption); split_view_v1 (ingest status hash_mismatch).

The --evidence scores become robust z-scores (per concept for the embedding scores, over every
row for the image-level ones); combined = largest z + 0.5 x second largest. Flagged = combined
>= --z-threshold: evidence only. --expected-rate R adds a review list (top 1.5 x R of each
concept), never flags. Split-view rows are always flagged, first. Kinds: perturbed, clean,
dirty, split_view. poisons.json says under coverage which poison kinds each score was measured
to see and not to see.

Writes WS/findings/poisons.parquet (key, concept, scores, z-scores, combined_score, rank,
flagged, review, kind, reasons), poisons.json and concept_vulnerability.parquet.
"""

MATCH_MODES = ("word", "semantic", "both")


def _evidence_names() -> tuple[str, ...]:
    from detectors.poisons import EVIDENCE

    return tuple(EVIDENCE)


def _default_evidence() -> list[str]:
    from detectors.poisons import DEFAULT_EVIDENCE

    return list(DEFAULT_EVIDENCE)


@dataclass
class Config(Options):
    """Options of ``laion-audit poisons`` (``[poisons]`` in audit.toml)."""

    concepts: list[str] | None = option(
        None,
        help="concepts to score",
        default_help="the `concepts` finding, else general-list objects the captions name + "
        "frequent caption terms",
    )
    concepts_file: str | None = option(
        None, help="file with one concept per line (instead of --concepts)", metavar="FILE"
    )
    match: str = option(
        "word",
        help="concept membership: word match, semantic match (caption text embedding nearest "
        "to the concept's reference, above the semantic threshold), or both",
        choices=MATCH_MODES,
    )
    semantic_threshold: float | None = option(
        None,
        help="cosine radius for semantic match",
        metavar="COS",
        ge=-1,
        le=1,
        default_help="the concepts finding's semantic_threshold",
    )
    expected_rate: float | None = option(
        None,
        help="also mark the top 1.5 x R of each concept as 'top-ranked for review' (column "
        "review); a quota, not evidence: it never flags (flags need --z-threshold)",
        metavar="R",
        gt=0,
        le=0.5,
    )
    z_threshold: float = option(
        6.0,
        help="flag rows whose combined score (robust-z units) is at least Z",
        metavar="Z",
        aliases=("--threshold",),
        gt=0,
    )
    threshold: float | None = option(
        None, help="old name of z_threshold (audit.toml only)", cli=False, gt=0
    )
    fire_z: float = option(
        3.5, help="a score is named in the reasons when its robust z is at least Z", gt=0
    )
    evidence: list[str] = option(
        _default_evidence(),
        help="scores in the combined score",
        choices=_evidence_names,
        nonempty=True,
    )
    pixel_scores: bool = option(
        True, help="compute chroma_hf_v1 and freq_hf_v1 from the images in WS/shards"
    )
    generator: str | None = option(
        None,
        help="diffusers text-to-image pipeline (folder, or tiny-sd) whose VAE reconstruction and "
        "per-sample training loss become scores",
        metavar="DIR",
    )
    timesteps: list[int] = option(
        [100, 300, 500, 700],
        help="diffusion timesteps at which --generator's loss is measured",
        ge=0,
        nonempty=True,
    )
    k_min: int = option(16, help="smallest neighbourhood for k-distance/LOF", ge=2)
    k_max: int = option(32, help="largest neighbourhood for k-distance/LOF", ge=2)
    min_concept_size: int = option(8, help="smaller concepts get pooled z-scores", ge=3)
    max_reference: int = option(20000, help="reference rows per concept for LOF", ge=100)
    device: str = option("cpu", help="torch device for concept text embeddings and --generator")
    batch_size: int = option(256, help="text-encoder batch size", ge=1)
    seed: int = option(0, help="random seed")

    def check(self) -> None:
        if self.threshold is not None:
            self.z_threshold = self.threshold
        require(math.isfinite(self.z_threshold), "poisons.z_threshold", "must be finite",
                self.z_threshold)  # fmt: skip
        require(self.k_max >= self.k_min, "poisons.k_max", "must be >= k_min", self.k_max)
        if self.concepts is not None:
            self.concepts = [c.strip() for c in self.concepts if c and c.strip()]
            require(bool(self.concepts), "poisons.concepts", "must name a concept", self.concepts)
        if self.generator is not None and self.generator != "tiny-sd":
            p = Path(self.generator)
            require(
                (p / "model_index.json").is_file(),
                "poisons.generator",
                "must be a diffusers pipeline folder (with model_index.json) or tiny-sd",
                self.generator,
            )

    def params(self) -> Any:
        from detectors.poisons import PoisonParams

        names = ("k_min", "k_max", "min_concept_size", "max_reference", "fire_z", "seed")
        return PoisonParams(evidence=tuple(self.evidence), **{n: getattr(self, n) for n in names})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    add_options(parser, Config)


# ---- inputs ----------------------------------------------------------------------------------


def resolve_concepts(cfg: Config, ws: Any) -> tuple[list[str], str]:
    """The concept list and where it came from (option, file, concepts finding, else the
    data's own: :func:`audit.vocabulary.default_concepts` over the captions)."""
    from audit.vocabulary import DEFAULT_CONCEPTS_SOURCE, default_concepts

    def dedupe(items: Any) -> list[str]:
        return list(dict.fromkeys(str(i).strip() for i in items if str(i).strip()))

    if cfg.concepts:
        return dedupe(cfg.concepts), "option"
    if cfg.concepts_file:
        p = Path(cfg.concepts_file)
        if not p.is_file():
            raise ConfigError(f"poisons.concepts_file: file not found (got {str(p)!r})")
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        items = dedupe(ln for ln in lines if ln and not ln.startswith("#"))
        if not items:
            raise ConfigError(f"poisons.concepts_file: no concepts in {str(p)!r}")
        return items, "file"
    if ws.has_finding("concepts"):
        tab = ws.read_finding("concepts")
        if "concept" in tab.column_names and tab.num_rows:
            return dedupe(tab.column("concept").to_pylist()), "concepts finding"
    concepts = default_concepts(
        ws.load_embeddings(columns=["caption"]).column("caption").to_pylist()
    )
    if not concepts:
        raise InputError(
            "poisons: no --concepts, no concepts finding, and no caption names a general-list "
            "object or a frequent term"
        )
    logger.warning(
        "no --concepts and no concepts finding: %d concepts from the captions", len(concepts)
    )
    return concepts, DEFAULT_CONCEPTS_SOURCE


def load_inputs(ws: Any) -> dict[str, Any]:
    """Rows with an image embedding (what can be scored) and the hash_mismatch keys.

    Rows without an image embedding (failed downloads/decodes) cannot be scored and are left
    out; hash_mismatch rows are kept for split-view whether or not they carry embeddings.
    """
    from audit.inputs import column_vectors
    from detectors.stats import normalize_rows

    cols = ["key", "caption", "status", "image_emb", "text_emb", "clip_score"]
    tab = ws.load_embeddings(columns=cols)
    missing = [c for c in cols if c not in tab.column_names]
    if missing:
        raise InputError(f"embeddings lack columns {missing}")
    status = np.asarray(tab.column("status").to_pylist(), dtype=object)
    keys_all = np.asarray(tab.column("key").to_pylist(), dtype=object)
    captions_all = tab.column("caption").to_pylist()
    has_img = np.asarray(tab.column("image_emb").is_valid().to_numpy(zero_copy_only=False))
    has_txt = np.asarray(tab.column("text_emb").is_valid().to_numpy(zero_copy_only=False))
    scorable = has_img & has_txt & np.array([bool(c) for c in captions_all])
    sub = tab.filter(pa.array(scorable))
    img = normalize_rows(column_vectors(sub.column("image_emb"), "image_emb", nulls=False).matrix)
    txt = normalize_rows(column_vectors(sub.column("text_emb"), "text_emb", nulls=False).matrix)
    clip = np.asarray(sub.column("clip_score").to_numpy(zero_copy_only=False), dtype=np.float64)
    clip = np.where(np.isfinite(clip), clip, (img * txt).sum(axis=1).astype(np.float64))
    return {
        "n_total": tab.num_rows,
        "keys": np.asarray(sub.column("key").to_pylist(), dtype=object),
        "captions": sub.column("caption").to_pylist(),
        "image_emb": img,
        "text_emb": txt,
        "clip_score": clip,
        "split_keys": keys_all[status == "hash_mismatch"],
        "all_captions": captions_all,
        "n_unscorable": int((~scorable).sum()),
    }


def load_concept_embeddings(
    ws: Any, cfg: Config, concepts: list[str], text_emb: np.ndarray, members: list[np.ndarray]
) -> tuple[np.ndarray, str]:
    """Concept embeddings from the workspace's model (prompt ensembles), or caption centroids
    when that model cannot be loaded here (e.g. imported embeddings of an unavailable model)."""
    from audit.vocabulary import concept_embeddings
    from detectors.poisons import caption_centroids

    try:
        emb, name = concept_embeddings(ws.model(), concepts, cfg.device, cfg.batch_size)
    except Exception as exc:  # noqa: BLE001 - any load failure falls back, and is logged
        logger.warning("%s: concept pull uses caption centroids instead of prompt ensembles", exc)
        return caption_centroids(text_emb, members), "caption_centroids"
    if emb.shape[1] != text_emb.shape[1]:
        raise InputError(
            f"model {name!r} gives {emb.shape[1]}-d text embeddings but the "
            f"workspace's are {text_emb.shape[1]}-d: model.json does not match"
        )
    return emb, f"prompt_ensemble:{name}"


def semantic_reference(
    cfg: Config, ws: Any, concepts: list[str], prompt_emb: np.ndarray
) -> tuple[np.ndarray, dict[str, float], str]:
    """Reference embeddings and cosine thresholds for semantic membership: the ``concepts``
    finding's (so both stages agree on who belongs to a concept; --semantic-threshold overrides
    its radius), else the prompt ensembles with --semantic-threshold."""
    from detectors.poisons import semantic_reference_from

    df = ws.read_finding("concepts").to_pandas() if ws.has_finding("concepts") else None
    ref = semantic_reference_from(df, concepts, prompt_emb, cfg.semantic_threshold)
    if ref is None:
        raise ConfigError(
            "poisons.match: semantic match needs --semantic-threshold or a concepts "
            "finding with reference_emb and semantic_threshold (run `laion-audit concepts` first) "
            f"(got {cfg.match!r})"
        )
    return ref


def load_generator_checked(cfg: Config) -> Any:
    """``--generator`` as a loaded diffusers text-to-image pipeline, or one ConfigError."""
    from audit.models import ModelError, load_generator

    try:
        pipe = load_generator(str(cfg.generator), device=cfg.device)
    except (ModelError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"poisons.generator: could not load a diffusers pipeline: {exc} (got {cfg.generator!r})"
        ) from None
    parts = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
    lacking = [p for p in parts if getattr(pipe, p, None) is None]
    if lacking:
        raise ConfigError(
            f"poisons.generator: not a text-to-image pipeline with a VAE and a UNet (lacks "
            f"{', '.join(lacking)}) (got {cfg.generator!r})"
        )
    return pipe


def image_scores(ws: Any, cfg: Config, keys: np.ndarray, captions: list[str]) -> tuple[dict, dict]:
    """The pixel and generator scores of every scorable row, reading images from WS/shards in
    chunks; empty when neither is asked for or the workspace has no shards."""
    from detectors import poisons as P

    info: dict[str, Any] = {"pixel_scores": False, "generator": None, "images_read": 0}
    if not cfg.pixel_scores and not cfg.generator:
        return {}, info
    pipe = load_generator_checked(cfg) if cfg.generator else None
    from audit.report.images import ShardIndex

    shards = ShardIndex(ws.shards_dir)
    if not shards.available:
        logger.warning("no images in %s: pixel and generator scores are skipped", ws.shards_dir)
        return {}, {**info, "skipped": "no shards"}
    t0 = time.perf_counter()
    out, info["images_read"] = P.image_scores(
        lambda k: shards.open_image(str(k)), keys, captions, pixel=cfg.pixel_scores, pipe=pipe,
        timesteps=cfg.timesteps, device=cfg.device,
    )  # fmt: skip
    info.update(
        pixel_scores=bool(cfg.pixel_scores),
        generator=cfg.generator,
        seconds=round(time.perf_counter() - t0, 3),
    )
    return out, info


# ---- output ----------------------------------------------------------------------------------


def output_table(per_key: pd.DataFrame) -> pa.Table:
    """The ``poisons`` finding with stable column order and types (NaN -> null)."""
    from detectors.poisons import finding_columns

    arrays, names = [], []
    for name, typ in finding_columns(per_key):
        s = per_key[name] if name in per_key.columns else pd.Series([None] * len(per_key))
        vals = [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in s]
        arrays.append(pa.array(vals, type=getattr(pa, typ)()))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


# ---- entry point -----------------------------------------------------------------------------


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.workspace import Workspace
    from detectors import poisons as P
    from detectors.concepts import PROMPT_TEMPLATES

    ws = Workspace(args.workspace)
    t_start = time.perf_counter()
    concepts, concepts_source = resolve_concepts(cfg, ws)
    data = load_inputs(ws)
    n = len(data["keys"])
    word_named = P.membership(
        data["captions"], concepts, text_emb=None, concept_emb=None, mode="word"
    )
    members = [np.flatnonzero(word_named[:, j]) for j in range(len(concepts))]
    t0 = time.perf_counter()
    concept_emb, emb_source = load_concept_embeddings(ws, cfg, concepts, data["text_emb"], members)
    t_emb = time.perf_counter() - t0
    named, semantic_source = word_named, None
    if cfg.match != "word":
        ref, thr, semantic_source = semantic_reference(cfg, ws, concepts, concept_emb)
        named = P.membership(
            data["captions"], concepts, text_emb=data["text_emb"], concept_emb=ref,
            mode=cfg.match, semantic_threshold=thr,
        )  # fmt: skip
    scored = named.any(axis=1)
    img_scores, img_info = image_scores(
        ws, cfg, data["keys"][scored], [c for c, s in zip(data["captions"], scored) if s]
    )
    img_scores = {k: _expand(v, scored) for k, v in img_scores.items()}
    params = cfg.params()
    per_key, timings = P.score_and_select(
        data["keys"], data["image_emb"], data["clip_score"], named, concepts, concept_emb,
        data["split_keys"], threshold=cfg.z_threshold, expected_rate=cfg.expected_rate,
        params=params, image_scores=img_scores,
    )  # fmt: skip
    all_named = P.membership(
        data["all_captions"], concepts, text_emb=None, concept_emb=None, mode="word"
    )
    word_counts = {c: int(all_named[:, j].sum()) for j, c in enumerate(concepts)}
    cf = ws.read_finding("concepts").to_pandas() if ws.has_finding("concepts") else None
    vuln = P.vulnerability_table(concepts, named, per_key, cf, word_counts, data["n_total"])
    ws.write_table(
        ws.finding_path("concept_vulnerability"), pa.Table.from_pandas(vuln, preserve_index=False)
    )
    summary = P.summarize(per_key, data["n_total"], n, data["n_unscorable"], int(n - scored.sum()),
                          int(len(data["split_keys"])))  # fmt: skip
    meta = {
        "detector": {"module": P.__name__, "combined": P.COMBINED,
                     "scores": [*P.SCORE_NAMES, P.SPLIT_VIEW, *P.IMAGE_SCORES]},
        "combined": {"name": P.COMBINED, "evidence": list(params.evidence),
                     "rule": "robust z (per concept; image-level scores over all rows); max z + "
                     "second_weight * second z; split-view = +inf"},
        "parameters": {
            **asdict(cfg),
            **{f"detector.{k}": v for k, v in asdict(params).items()},
            "flag_rule": f"combined_score >= {cfg.z_threshold} (evidence; split-view always)",
            "review_rule": (
                f"top {P.REVIEW_RATE_FACTOR} x {cfg.expected_rate} of each concept by combined "
                "score (a quota, not evidence: never flags)"
                if cfg.expected_rate is not None else None
            ),
        },
        "concepts_source": concepts_source,
        "concept_embeddings": emb_source,
        "semantic_reference": semantic_source,
        "image_scores": img_info,
        "prompt_templates": list(PROMPT_TEMPLATES),
        "timings": {"concept_embeddings_s": round(t_emb, 3), **timings,
                    "total_s": round(time.perf_counter() - t_start, 3)},
        "summary": summary,
        "coverage": P.coverage(list(params.evidence), sorted(img_scores)),
        "concept_vulnerability": vuln.to_dict(orient="records"),
    }  # fmt: skip
    ws.write_finding("poisons", output_table(per_key), meta)
    logger.info("poisons: %d flagged of %d scored (%s)", summary["n_flagged"], len(per_key),
                summary["flagged_by_kind"] or "none")  # fmt: skip
    return 0


def _expand(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.full(len(mask), np.nan)
    out[mask] = values
    return out
