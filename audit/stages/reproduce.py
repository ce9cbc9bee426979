"""``laion-audit reproduce WS``: seeded generations per prompt, replication scoring, triage."""

from __future__ import annotations

import argparse
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.config import require
from audit.copies import SPACES, CopySpace, copy_space
from audit.errors import InputError
from audit.stages import add_beam_arguments, add_workspace_argument

logger = logging.getLogger(__name__)

HELP = "seed N generations per prompt and measure replication"
DESCRIPTION = """\
Prove or refute each replication finding with the model itself (Carlini et al., Somepalli et
al., Naseh et al.; see docs/references.md).

Prompts: for every flagged word-level finding (findings/word_replication.parquet) five kinds
built from the cluster's own captions and templates: keywords only, short related caption, long
related caption, unrelated caption containing the keywords, long caption without the main
keyword; for every flagged object-level finding (findings/object_replication.parquet) prompts
with the keyword that never name the object. --prompts FILE (.jsonl/.csv/.txt with a `prompt`
and optional `finding_id`, `prompt_kind`) adds prompts or replaces a built prompt of the same
(finding_id, prompt_kind); --prompts-mode replace uses only the file.

Triage first (Wen et al. 2024): for every prompt, ||eps(x_T, c) - eps(x_T, empty)|| at the first
denoising step, averaged over --triage-seeds seeds (a few UNet calls per prompt). With
--triage-top K only the K highest-scoring prompts get the full N generations.

Generation: N images per prompt, seeds 0..N-1; each image a deterministic function of
(prompt, seed) whatever the batch size (initial latents drawn per seed on the CPU); batched;
fp16 on CUDA; fanned out as (prompt, seed range) chunks by an Apache Beam pipeline (DirectRunner
in one process by default; any Beam runner flag passes through; on a cluster WS must be a path
every worker mounts, since workers write the chunks). Resumable: finished chunks
(.SUCCESS marker with the same settings) are never regenerated. Writes
WS/generations/<prompt_id>/<seed>.png and chunk parquets (seed, path, CLIP image embedding from
the workspace's own model, embeddings/model.json).

Mitigation: --safety sld:weak|medium|strong|max generates with Safe Latent Diffusion guidance
(Schramowski et al., CVPR 2023; the paper's presets) away from --safety-concept; the mode and
the concept are part of the chunks' settings fingerprint, so runs with and without it never
mix. An erased model (`laion-audit erase`) is just another --generator.

Runs side by side: a run that measures a mitigation (--safety, a --generator written by
`laion-audit erase`, --prompts written by `laion-audit attack`) or is given --name LABEL is
recorded under WS/generations/runs/<label>/ (its generations, tables and memorization.parquet)
and never overwrites the main run's findings/memorization; it generates the main run's prompts
(--prompts adds to them), so `laion-audit report` compares the runs per prompt ("Mitigations").
Control prompts (prompt_kind "control", the concept in "keyword") measure what a fix costs:
zero-shot accuracy of their generations with the workspace's CLIP model. See
audit/mitigations/runs.py.

Scoring per generation: best cosine similarity (CLIP image space) over every member of the
finding's training cluster (object findings and file prompts without a finding: over every
training image). Copy threshold, calibrated without labels: the pair threshold is the
(1 - alpha) quantile of the cosine similarity of unrelated training pairs (random pairs not in
the same duplicate group or replication cluster; alpha 1e-3 by default), so an unrelated image
passes it one time in a thousand; since a generation is scored by its best match over a whole
reference set, each reference set (a cluster; the whole training set) uses the larger of that
and the (1 - alpha) quantile of the same best-match score for training images unrelated to the
set (recorded per prompt in `copy_threshold` and in memorization.json). Copies are
verified against their nearest training image by tiled l2 (16 tiles, max over tiles of the RMS
pixel difference; threshold = the alpha quantile of the same distance on unrelated training
pairs) when the shards hold the images. Object findings: the generation carries the object when
the objects detector's presence score exceeds the finding's calibrated threshold.

Writes WS/findings/memorization.parquet (per prompt: n, replication rate with a Wilson 95%
interval, mean/p95/max similarity, verbatim rate, object rate, triage score),
findings/memorization.json (thresholds, calibration, triage AUROC against the N-seed labels,
triage cost as a share of generation, timings), WS/generations/triage.parquet,
WS/generations/scores.parquet (every generation) and WS/generations/examples.parquet (the most
similar generations of each prompt beside their nearest training image: finding_id, prompt_id,
seed, gen_path, nearest_key, similarity).
"""

ACCEPTS_BEAM_OPTIONS = True
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
FINDING = "memorization"


@dataclass
class Config:
    generator: str = "tiny-sd"
    n: int = 500
    steps: int = 50
    guidance: float = 7.5
    batch_size: int = 16
    height: int = 0
    width: int = 0
    negative_prompt: str = ""
    safety: str = ""
    safety_concept: str = ""
    prompts: str | None = None
    prompts_mode: str = "add"
    all_findings: bool = False
    triage_top: int = 0
    triage_per_finding: int = 0
    triage_seeds: int = 4
    chunk_size: int = 50
    seed_offset: int = 0
    device: str = "auto"
    alpha: float = 1e-3
    space: str = "auto"
    copy_threshold: float = 0.0
    calibration_samples: int = 2000
    dataset_null_queries: int = 500
    verify: bool = True
    verify_samples: int = 200
    examples: int = 4
    min_copy_share: float = 0.02  # detectors.memorization.DEFAULT_MIN_COPY_SHARE
    clip_batch_size: int = 64
    torch_threads: int = 0
    name: str = ""  # a recorded run's label (audit.mitigations.runs)
    runner: str | None = None
    dask_local: int | None = None

    def __post_init__(self) -> None:
        s = "reproduce"
        require(self.space in SPACES, f"{s}.space", f"must be one of {', '.join(SPACES)}",
                self.space)  # fmt: skip
        require(
            bool(self.generator), f"{s}.generator", "must name a diffusers pipeline", self.generator
        )
        require(self.n >= 0, f"{s}.n", "must be >= 0 (0 = triage only)", self.n)
        require(self.steps >= 1, f"{s}.steps", "must be >= 1", self.steps)
        require(self.guidance >= 0, f"{s}.guidance", "must be >= 0", self.guidance)
        require(self.batch_size >= 1, f"{s}.batch_size", "must be >= 1", self.batch_size)
        from pipelines.safety import SAFETY_MODES

        require(
            self.safety in ("", *SAFETY_MODES),
            f"{s}.safety",
            f"must be one of {', '.join(SAFETY_MODES)} (or empty: none)",
            self.safety,
        )
        for name in ("height", "width"):
            v = getattr(self, name)
            require(
                v == 0 or (v >= 8 and v % 8 == 0),
                f"{s}.{name}",
                "must be 0 (the model's default) or a multiple of 8",
                v,
            )
        require(
            self.prompts_mode in ("add", "replace"),
            f"{s}.prompts_mode",
            "must be 'add' or 'replace'",
            self.prompts_mode,
        )
        require(
            self.triage_top >= 0,
            f"{s}.triage_top",
            "must be >= 0 (0 = every prompt)",
            self.triage_top,
        )
        require(
            self.triage_per_finding >= 0,
            f"{s}.triage_per_finding",
            "must be >= 0",
            self.triage_per_finding,
        )
        require(
            self.triage_seeds >= 0,
            f"{s}.triage_seeds",
            "must be >= 0 (0 = no triage)",
            self.triage_seeds,
        )
        require(
            not (self.triage_top and not self.triage_seeds),
            f"{s}.triage_top",
            "needs triage_seeds >= 1",
            self.triage_top,
        )
        require(self.chunk_size >= 1, f"{s}.chunk_size", "must be >= 1", self.chunk_size)
        require(self.seed_offset >= 0, f"{s}.seed_offset", "must be >= 0", self.seed_offset)
        require(
            bool(DEVICE_RE.match(self.device)),
            f"{s}.device",
            "must be auto, cpu, cuda, cuda:N or mps",
            self.device,
        )
        require(0 < self.alpha < 0.5, f"{s}.alpha", "must be in (0, 0.5)", self.alpha)
        require(
            -1 <= self.copy_threshold <= 1,
            f"{s}.copy_threshold",
            "must be a cosine in [-1, 1] (0 = calibrate)",
            self.copy_threshold,
        )
        require(
            self.calibration_samples >= 50,
            f"{s}.calibration_samples",
            "must be >= 50",
            self.calibration_samples,
        )
        require(
            self.dataset_null_queries >= 10,
            f"{s}.dataset_null_queries",
            "must be >= 10",
            self.dataset_null_queries,
        )
        require(
            self.verify_samples >= 20, f"{s}.verify_samples", "must be >= 20", self.verify_samples
        )
        require(self.examples >= 0, f"{s}.examples", "must be >= 0", self.examples)
        require(
            0 < self.min_copy_share <= 1,
            f"{s}.min_copy_share",
            "must be in (0, 1]",
            self.min_copy_share,
        )
        require(
            self.clip_batch_size >= 1, f"{s}.clip_batch_size", "must be >= 1", self.clip_batch_size
        )
        require(self.torch_threads >= 0, f"{s}.torch_threads", "must be >= 0", self.torch_threads)
        from audit.mitigations.runs import LABEL_RE, LABEL_RULE

        require(not self.name or bool(LABEL_RE.match(self.name)), f"{s}.name", LABEL_RULE,
                self.name)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    g = parser.add_argument_group("generation")
    g.add_argument(
        "--generator",
        default=None,
        metavar="NAME_OR_PATH",
        help="diffusers text-to-image pipeline: hub id, local path, or tiny-sd (the "
        "shipped offline model; default)",
    )
    g.add_argument(
        "--n",
        type=int,
        default=None,
        help="generations per prompt, seeds 0..N-1 (default 500; 0 = triage only)",
    )
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default 50)")
    g.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (default 7.5)"
    )
    g.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        default=None,
        help="images per pipeline call (default 16); does not change the images",
    )
    g.add_argument("--height", type=int, default=None, help="image height (default: model's)")
    g.add_argument("--width", type=int, default=None, help="image width (default: model's)")
    g.add_argument(
        "--negative-prompt",
        dest="negative_prompt",
        default=None,
        help="negative prompt (default none)",
    )
    g.add_argument(
        "--safety",
        default=None,
        metavar="sld:PRESET",
        help="mitigation at generation time: Safe Latent Diffusion guidance away from "
        "--safety-concept, preset weak, medium, strong or max (default none)",
    )
    g.add_argument(
        "--safety-concept",
        dest="safety_concept",
        default=None,
        metavar="TEXT",
        help="what SLD steers away from, e.g. the memorised work (default: SLD's "
        "inappropriate-content concept)",
    )
    g.add_argument(
        "--chunk-size",
        dest="chunk_size",
        type=int,
        default=None,
        help="seeds per resumable chunk / Beam element (default 50)",
    )
    g.add_argument(
        "--seed-offset", dest="seed_offset", type=int, default=None, help="first seed (default 0)"
    )
    g.add_argument(
        "--device",
        default=None,
        help="auto (default: cuda when available), cpu, cuda, cuda:N or mps",
    )
    g.add_argument(
        "--torch-threads",
        dest="torch_threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice)",
    )
    g.add_argument(
        "--name",
        default=None,
        metavar="LABEL",
        help="record this run under WS/generations/runs/LABEL beside the main run (default: "
        "mitigation runs get a label from what they measure, other runs are the main run)",
    )
    p = parser.add_argument_group("prompts and triage")
    p.add_argument(
        "--prompts",
        default=None,
        metavar="FILE",
        help="user prompts (.jsonl/.csv/.txt); added, or replacing a built prompt "
        "of the same finding_id and prompt_kind",
    )
    p.add_argument(
        "--prompts-mode",
        dest="prompts_mode",
        choices=("add", "replace"),
        default=None,
        help="add (default) or replace: use only the file's prompts",
    )
    p.add_argument(
        "--all-findings",
        dest="all_findings",
        action="store_true",
        default=None,
        help="build prompts for unflagged findings too",
    )
    p.add_argument(
        "--triage-top",
        dest="triage_top",
        type=int,
        default=None,
        metavar="K",
        help="generate the full N only for the K prompts with the highest triage "
        "score (default 0 = every prompt)",
    )
    p.add_argument(
        "--triage-per-finding",
        dest="triage_per_finding",
        type=int,
        default=None,
        metavar="M",
        help="with --triage-top: also generate each finding's M best-triaged prompts, so "
        "every finding is tested even when a few findings hold the K highest scores "
        "(default 0)",
    )
    p.add_argument(
        "--triage-seeds",
        dest="triage_seeds",
        type=int,
        default=None,
        help="seeds averaged by the triage score (default 4; 0 = no triage)",
    )
    s = parser.add_argument_group("scoring")
    s.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="copy threshold = 1 - alpha quantile of unrelated-pair similarity (default 0.001)",
    )
    s.add_argument(
        "--copy-threshold",
        dest="copy_threshold",
        type=float,
        default=None,
        help="copy threshold: cosine of the copy descriptor (default 0.5, the same for every "
        "prompt); in CLIP space a fixed threshold instead of the calibrated ones",
    )
    s.add_argument(
        "--space",
        choices=SPACES,
        default=None,
        help="what decides that a generation copies a training image: copy (SSCD copy_emb), "
        "clip (image_emb, thresholds calibrated per reference set), or auto (copy when the "
        "embeddings have it; default)",
    )
    s.add_argument(
        "--calibration-samples",
        dest="calibration_samples",
        type=int,
        default=None,
        help="training images sampled for the calibration pairs (default 2000)",
    )
    s.add_argument(
        "--dataset-null-queries",
        dest="dataset_null_queries",
        type=int,
        default=None,
        help="training images whose nearest unrelated training image calibrates the threshold "
        "of prompts scored against the whole training set (default 500)",
    )
    s.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        default=None,
        help="skip the tiled-l2 verbatim check",
    )
    s.add_argument(
        "--examples", type=int, default=None, help="example pairs kept per prompt (default 4)"
    )
    s.add_argument(
        "--min-copy-share",
        dest="min_copy_share",
        type=float,
        default=None,
        help="a prompt 'replicates' (triage AUROC labels, report card and report.json) when "
        "the Wilson 95%% lower bound of its copy rate is at least this (default 0.02: 1 copy "
        "of 500 does not count, 20 of 500 do)",
    )
    s.add_argument(
        "--clip-batch-size",
        dest="clip_batch_size",
        type=int,
        default=None,
        help="images per CLIP batch (default 64)",
    )
    add_beam_arguments(parser)


# ---- picklable model builders (run inside Beam workers) ------------------------------------
@dataclass(frozen=True)
class GeneratorLoader:
    """``()`` -> the diffusers pipeline, via ``audit.models.load_generator``."""

    name_or_path: str
    device: str = "cpu"

    def __call__(self) -> Any:
        from audit.models import load_generator

        return load_generator(self.name_or_path, device=self.device)


@dataclass(frozen=True)
class ClipImageEncoder:
    """``()`` -> ``encode(pil_images) -> (n, d)`` with the workspace's CLIP model."""

    name: str
    pretrained: str | None = None
    device: str = "cpu"
    batch_size: int = 64

    def __call__(self) -> Any:
        from audit.models import encode_images, load_clip

        model, preprocess, _ = load_clip(self.name, pretrained=self.pretrained, device=self.device)

        def encode(images: list[Any]) -> np.ndarray:
            return encode_images(
                model, preprocess, images, device=self.device, batch_size=self.batch_size
            )

        return encode


# ---- helpers ---------------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _vectors(column: Any) -> np.ndarray:
    """A fixed-size-list column (no nulls) as a float32 matrix."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, getattr(arr.type, "list_size", 0)), np.float32)
    flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(len(arr), -1)


class TrainingSet:
    """Read access to the workspace's image embeddings (``column``: ``image_emb`` or the copy
    descriptor ``copy_emb``), bounded by batch size, never by the dataset: cluster members by
    key, random samples, and a streaming nearest-neighbour pass."""

    def __init__(self, ws: Any, column: str = "image_emb") -> None:
        import pyarrow.dataset as pds

        self.ws = ws
        self.column = column
        self.ds = ws.embeddings()
        self.ok = pds.field(column).is_valid()
        self.n_ok = self.ds.count_rows(filter=self.ok)
        if self.n_ok == 0:
            raise InputError(f"{ws.embeddings_dir} holds no {column} vectors (every row failed)")
        typ = self.ds.schema.field(column).type  # fixed-size list (or list once re-read)
        self.dim = getattr(typ, "list_size", None) or int(
            _vectors(self.ds.head(1, columns=[column], filter=self.ok).column(column)).shape[1]
        )

    def by_keys(self, keys: list[str]) -> tuple[list[str], np.ndarray]:
        import pyarrow.dataset as pds

        t = self.ds.to_table(
            columns=["key", self.column], filter=self.ok & pds.field("key").isin(list(keys))
        )
        return [str(k) for k in t.column("key").to_pylist()], _vectors(t.column(self.column))

    def sample(self, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
        import pyarrow as pa

        idx = np.arange(self.n_ok)
        if self.n_ok > n:
            idx = np.sort(np.random.default_rng(seed).choice(self.n_ok, n, replace=False))
        t = self.ds.take(pa.array(idx), columns=["key", self.column], filter=self.ok)
        return [str(k) for k in t.column("key").to_pylist()], _vectors(t.column(self.column))

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """Best cosine over every training image and its key, streaming the parts."""
        from detectors.memorization import best_match

        best = np.full(len(queries), -np.inf, np.float32)
        keys: list[str | None] = [None] * len(queries)
        if not len(queries):
            return best, keys
        for batch in self.ds.to_batches(
            columns=["key", self.column], filter=self.ok, batch_size=65536
        ):
            if batch.num_rows == 0:
                continue
            s, j = best_match(queries, _vectors(batch.column(self.column)))
            better = s > best
            bkeys = batch.column("key").to_pylist()
            for i in np.flatnonzero(better):
                keys[i] = str(bkeys[j[i]])
            best = np.where(better, s, best)
        return best, keys

    def nearest_unrelated(
        self, keys: list[str], emb: np.ndarray, relations: Relations
    ) -> np.ndarray:
        """For training samples ``keys``: their best cosine over every other training image
        they are unrelated to (the null of the "whole training set" reference), streaming."""
        from detectors.memorization import max_unrelated_similarity

        best = np.full(len(keys), -np.inf, np.float32)
        qlab = relations.labels(keys)
        qids = np.asarray(keys, dtype=object)
        for batch in self.ds.to_batches(
            columns=["key", self.column], filter=self.ok, batch_size=16384
        ):
            if batch.num_rows == 0:
                continue
            bkeys = [str(k) for k in batch.column("key").to_pylist()]
            m = max_unrelated_similarity(
                emb,
                _vectors(batch.column(self.column)),
                qlab,
                relations.labels(bkeys),
                qids,
                np.asarray(bkeys, dtype=object),
            )
            best = np.maximum(best, m)
        return best

    def captions_matching(self, keyword: str, limit: int = 200) -> list[str]:
        from detectors.text import match_keyword

        out: list[str] = []
        for batch in self.ds.to_batches(columns=["caption"], batch_size=65536):
            caps = batch.column("caption").to_pylist()
            mask = match_keyword(caps, keyword)
            out.extend(c for c, m in zip(caps, mask) if m)
            if len(out) >= limit:
                break
        return out[:limit]


class Relations:
    """Which training samples are copies of each other by construction: duplicate groups
    (``exact`` and ``near`` from findings/duplicates.parquet) and replication clusters. Pairs that
    share one are left out of the "unrelated pairs" the copy threshold is calibrated on. Memory:
    one dict entry per sample in a duplicate group or cluster."""

    def __init__(self, ws: Any, word: Any) -> None:
        self.maps: list[dict[str, int]] = []
        if ws.has_finding("duplicates"):
            import pyarrow.parquet as pq

            dup = pq.read_table(
                ws.finding_path("duplicates"),
                columns=["key", "group_id", "kind"],
                filters=[("kind", "in", ["exact", "near"])],
            ).to_pandas()
            for _kind, g in dup.groupby("kind"):
                self.maps.append(dict(zip(g["key"].astype(str), g["group_id"].astype(np.int64))))
        if word is not None and len(word):
            clusters: dict[str, int] = {}
            for f, members in enumerate(word["member_keys"]):
                for k in members if members is not None else []:
                    clusters.setdefault(str(k), f)
            self.maps.append(clusters)

    def labels(self, keys: list[str]) -> list[np.ndarray]:
        """One label array per relation over ``keys`` (-1 = in no group)."""
        return [np.fromiter((m.get(k, -1) for k in keys), np.int64, len(keys)) for m in self.maps]


def _group_labels(ws: Any, keys: list[str], word: Any) -> list[np.ndarray]:
    """Label arrays over ``keys`` (see :class:`Relations`)."""
    return Relations(ws, word).labels(keys)


def _load_pixels(images: list[Any], size: tuple[int, int]) -> np.ndarray:
    """PIL images -> (n, h, w, 3) uint8 at ``size`` (w, h), bicubic."""
    from PIL import Image

    return np.stack(
        [np.asarray(im.convert("RGB").resize(size, Image.BICUBIC), np.uint8) for im in images]
    )


# ---- the stage -------------------------------------------------------------------------------
@dataclass
class Findings:
    """The replication findings the prompts come from (pandas frames or None)."""

    word: Any = None
    objects: Any = None

    @classmethod
    def read(cls, ws: Any) -> Findings:
        def get(name: str) -> Any:
            return ws.read_finding(name).to_pandas() if ws.has_finding(name) else None

        return cls(get("word_replication"), get("object_replication"))

    def rows(self, which: str) -> dict[str, dict[str, Any]]:
        df = self.word if which == "word" else self.objects
        return {} if df is None else {str(r["finding_id"]): r for r in df.to_dict("records")}


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.workspace import Workspace

    t_start = time.perf_counter()
    ws = Workspace(args.workspace)
    if not ws.root.is_dir():
        raise InputError(f"workspace not found: {ws.root}")
    from audit.mitigations import runs

    ws, cfg, mitigation = runs.prepare(ws, cfg)  # a recorded run writes in its own folder
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    timings: dict[str, float] = {}
    findings = Findings.read(ws)
    train = TrainingSet(ws)
    space = copy_space(ws, cfg.space, "reproduce.space")
    copies = TrainingSet(ws, space.column) if space.is_copy else None
    prompts = make_prompts(cfg, findings, train)
    settings, triage = run_triage(cfg, ws, prompts, device, timings)
    from detectors.memorization import select_top

    selected = select_top(
        triage,
        cfg.triage_top or None,
        groups=prompts["finding_id"].tolist(),
        per_group=cfg.triage_per_finding,
    )
    tasks, counts = generate(
        cfg, ws, prompts[selected], settings, train.dim, device, args, timings, space
    )
    t0 = time.perf_counter()
    gdf, refs = score(cfg, ws, prompts, tasks, settings, train, findings, device, copies)
    if copies is not None:  # one threshold on the copy descriptor for every prompt
        cal = _copy_calibration(cfg, space)
        thr = {pid: cal["copy_threshold"] for pid in prompts["prompt_id"]}
    else:
        cal = _calibrate(cfg, ws, train, findings, prompts)
        thr = _thresholds(prompts, refs, cal)
    gdf["threshold"] = [thr[p] for p in gdf["prompt_id"]]
    sim = gdf["similarity"].to_numpy(np.float64)
    gdf["is_copy"] = np.isfinite(sim) & (sim >= gdf["threshold"].to_numpy(np.float64))
    verify_info = _verify(
        cfg, ws, gdf, train, findings.word, (settings.width or 0, settings.height or 0)
    )
    timings["scoring"] = time.perf_counter() - t0
    out = per_prompt(prompts, gdf, refs, triage, selected, thr)
    out, controls = runs.control_accuracy(ws, out, tasks, settings, device)
    write_generation_tables(ws, gdf, cfg.examples)
    meta = run_meta(cfg, out, settings, device, counts, cal, verify_info, timings)
    meta.update(mitigation=mitigation, controls=controls)
    meta["seconds"] = round(time.perf_counter() - t_start, 3)
    ws.write_finding(FINDING, _to_arrow(out), meta)
    for r in out.sort_values("replication_rate", ascending=False).head(5).to_dict("records"):
        logger.info(
            "%-28s %-24s rate %s [%s, %s] max sim %s",
            r["finding_id"],
            r["prompt_kind"],
            _fmt(r["replication_rate"]),
            _fmt(r["ci_low"]),
            _fmt(r["ci_high"]),
            _fmt(r["max_sim"]),
        )
    return 0


def make_prompts(cfg: Config, findings: Findings, train: TrainingSet) -> Any:
    """Prompts from the findings and the user file (see ``audit.prompts``)."""
    from audit.prompts import build_prompts

    obj_caps = {}
    if findings.objects is not None and cfg.prompts_mode == "add":
        for fid, r in findings.rows("objects").items():
            if cfg.all_findings or r.get("flagged", True):
                obj_caps[fid] = train.captions_matching(str(r["keyword"]))
    prompts = build_prompts(
        findings.word,
        findings.objects,
        cfg.prompts,
        cfg.prompts_mode,
        only_flagged=not cfg.all_findings,
        object_captions=obj_caps,
    )
    if prompts.empty:
        raise InputError(
            "nothing to reproduce: no flagged findings in findings/word_replication.parquet or "
            "findings/object_replication.parquet (run `laion-audit replication` / `objects`, "
            "pass --all-findings, or give --prompts FILE)"
        )
    logger.info("%d prompts from %d findings", len(prompts), prompts["finding_id"].nunique())
    return prompts


def run_triage(
    cfg: Config, ws: Any, prompts: Any, device: str, timings: dict[str, float]
) -> tuple[Any, np.ndarray]:
    """Load the generator here once: resolve the image size, and score every prompt with Wen et
    al.'s first-step norm (written to ``generations/triage.parquet``)."""
    from detectors.memorization import TRIAGE_NAME
    from pipelines.reproduce import GenerationSettings, SeededGenerator

    t0 = time.perf_counter()
    gen = SeededGenerator(GeneratorLoader(cfg.generator, device)(), device=None)
    height, width = gen.resolve_size(cfg.height or None, cfg.width or None)
    settings = GenerationSettings(
        generator=cfg.generator,
        steps=cfg.steps,
        guidance=cfg.guidance,
        height=height,
        width=width,
        negative_prompt=cfg.negative_prompt or None,
        batch_size=cfg.batch_size,
        chunk_size=cfg.chunk_size,
        device=device,
        safety=cfg.safety or None,
        safety_concept=cfg.safety_concept or None,
    )
    timings["load_generator"] = time.perf_counter() - t0
    triage = np.full(len(prompts), np.nan)
    if cfg.triage_seeds:
        t0 = time.perf_counter()
        seeds = list(range(cfg.seed_offset, cfg.seed_offset + cfg.triage_seeds))
        per_seed = gen.triage(
            prompts["prompt"].tolist(),
            seeds,
            settings,
            batch_size=max(cfg.batch_size, cfg.triage_seeds),
        )
        triage = per_seed.mean(axis=1)
        timings["triage"] = time.perf_counter() - t0
        tri = prompts[["prompt_id", "finding_id", "prompt_kind", "prompt"]].copy()
        tri["triage_score"] = triage
        tri["triage_per_seed"] = list(per_seed)
        tri["detector"] = TRIAGE_NAME
        ws.write_table(ws.generations_dir / "triage.parquet", _to_arrow(tri))
        logger.info(
            "triage: %d prompts x %d seeds in %.1f s",
            len(prompts),
            cfg.triage_seeds,
            timings["triage"],
        )
    del gen
    _free_cuda()
    return settings, triage


def generate(
    cfg: Config,
    ws: Any,
    chosen: Any,
    settings: Any,
    dim: int,
    device: str,
    args: argparse.Namespace,
    timings: dict[str, float],
    space: CopySpace | None = None,
) -> tuple[list, dict]:
    """The Beam fan-out of (prompt, seed range) chunks; finished chunks are skipped. Each
    generation gets the CLIP image embedding and, in copy space, the copy descriptor."""
    from audit.copies import CopyEncoder
    from pipelines.beam_options import beam_setup
    from pipelines.reproduce import plan_chunks, run_generation

    info = ws.model_info()
    clip_name = info.get("name") or info.get("model")
    if not clip_name:
        raise InputError(
            f"{ws.embeddings_dir}/model.json names no CLIP model: generations must "
            "be embedded with the model of the training embeddings"
        )
    encoder = ClipImageEncoder(str(clip_name), info.get("pretrained"), device, cfg.clip_batch_size)
    tasks = plan_chunks(
        list(zip(chosen["prompt_id"], chosen["prompt"])), cfg.n, cfg.chunk_size, cfg.seed_offset
    )
    counts: dict[str, int] = {"chunks": 0}
    t0 = time.perf_counter()
    if tasks:
        logger.info(
            "generating %d prompts x %d seeds (%d chunks, batch %d, %d steps, %dx%d, %s)",
            len(chosen),
            cfg.n,
            len(tasks),
            cfg.batch_size,
            cfg.steps,
            settings.width,
            settings.height,
            device,
        )
        with beam_setup(getattr(args, "beam_args", []), cfg.runner, cfg.dask_local) as setup:
            counts = run_generation(
                tasks,
                GeneratorLoader(cfg.generator, device),
                encoder,
                settings,
                ws.generations_dir,
                dim=dim,
                options=setup.options,
                runner=setup.new_runner(),
                copy_builder=(
                    CopyEncoder.for_workspace(ws, device)
                    if space is not None and space.is_copy
                    else None
                ),
            )
    timings["generation"] = time.perf_counter() - t0
    logger.info("generation: %s in %.1f s", counts, timings["generation"])
    return tasks, counts


def _read_generations(
    ws: Any, tasks: list, settings: Any, dim: int, copy_dim: int | None = None, device: str = "cpu"
) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """Rows of the finished chunks (pandas, no embeddings), their CLIP embeddings and, with
    ``copy_dim``, their copy descriptors (NaN rows where generation or embedding failed).
    Generations from chunks written without descriptors are described here, from their PNGs."""
    import pandas as pd

    from pipelines.reproduce import read_chunks

    gens = read_chunks(ws.generations_dir, tasks, settings)
    if gens is None:
        gdf = pd.DataFrame(
            {
                c: pd.Series(dtype=t)
                for c, t in (
                    ("prompt_id", str),
                    ("prompt", str),
                    ("seed", "int64"),
                    ("path", str),
                    ("status", str),
                    ("error", str),
                )
            }
        )
        return (
            gdf,
            np.zeros((0, dim), np.float32),
            (None if copy_dim is None else np.zeros((0, copy_dim), np.float32)),
        )
    import pyarrow.compute as pc

    vec_cols = [c for c in ("image_emb", "copy_emb") if c in gens.column_names]
    gdf = gens.drop_columns(vec_cols).to_pandas()
    bad = ~gdf["status"].eq("ok").to_numpy(bool)

    def matrix(column: str, d: int) -> np.ndarray:
        out = np.full((len(gdf), d), np.nan, np.float32)
        if column in gens.column_names:
            valid = pc.is_valid(gens.column(column)).to_numpy(zero_copy_only=False)
            if valid.any():
                out[valid] = _vectors(gens.filter(valid).column(column))
        out[bad] = np.nan
        return out

    gemb = matrix("image_emb", dim)
    if copy_dim is None:
        return gdf, gemb, None
    gcopy = matrix("copy_emb", copy_dim)
    missing = np.flatnonzero(~bad & ~np.isfinite(gcopy).all(axis=1))
    if len(missing):
        from audit.copies import CopyEncoder
        from audit.report.images import open_path

        logger.info("describing %d earlier generations with the copy model", len(missing))
        encode = CopyEncoder.for_workspace(ws, device)()
        for a in range(0, len(missing), 256):
            rows = missing[a : a + 256]
            ims = [open_path(ws.generations_dir / gdf.at[r, "path"]) for r in rows]
            have = [r for r, im in zip(rows, ims) if im is not None]
            if have:
                gcopy[have] = encode([im for im in ims if im is not None])
    return gdf, gemb, gcopy


def score(
    cfg: Config,
    ws: Any,
    prompts: Any,
    tasks: list,
    settings: Any,
    train: TrainingSet,
    findings: Findings,
    device: str,
    copies: TrainingSet | None = None,
) -> tuple[Any, dict[str, tuple[str, int]]]:
    """Per generation: best cosine over the finding's cluster (word findings) or over every
    training image (object findings, file prompts), its training key, and for object findings
    the presence score and test. With ``copies`` (the copy descriptors of the training set)
    ``similarity`` and ``nearest_key`` are the copy descriptor's and the CLIP ones are kept as
    ``clip_similarity`` / ``clip_nearest_key``. Returns the generations frame and each prompt's
    reference (``"cluster"`` or ``"dataset"``, size)."""
    gdf, gemb, gcopy = _read_generations(
        ws, tasks, settings, train.dim, copies.dim if copies is not None else None, device
    )
    word_rows, obj_rows = findings.rows("word"), findings.rows("objects")
    pid_to_row = {r["prompt_id"]: r for r in prompts.to_dict("records")}
    by_prompt = gdf.groupby("prompt_id", sort=False).indices if len(gdf) else {}
    sim, nearest, refs, usable = _reference_scores(gemb, train, pid_to_row, word_rows, obj_rows,
                                                   by_prompt)  # fmt: skip
    if copies is not None and gcopy is not None:
        gdf["clip_similarity"] = sim
        gdf["clip_nearest_key"] = nearest
        sim, nearest, _, _ = _reference_scores(gcopy, copies, pid_to_row, word_rows, obj_rows,
                                               by_prompt, warn=False)  # fmt: skip
    obj_present = np.full(len(gdf), None, dtype=object)
    obj_score = np.full(len(gdf), np.nan, np.float32)
    encoder = None
    for pid, p in pid_to_row.items():
        fid, idx = str(p["finding_id"]), usable[pid]
        if fid not in obj_rows or not len(idx):
            continue
        from detectors.objects import presence_scores

        if encoder is None:
            from audit.stages.objects import PromptEncoder

            encoder = PromptEncoder(ws.model_info(), device, 256, train.dim)
        o = obj_rows[fid]
        w, without = encoder.contrast(str(o["keyword"]), [str(o["object"])])
        sc = presence_scores(gemb[idx], w, without)[:, 0]
        thr = o.get("threshold")
        thr = float(thr) if thr is not None and math.isfinite(float(thr)) else math.inf
        obj_score[idx] = sc
        obj_present[idx] = sc > thr
    gdf["similarity"] = sim
    gdf["nearest_key"] = nearest
    gdf["object_score"] = obj_score
    gdf["object_present"] = obj_present
    gdf["finding_id"] = [str(pid_to_row[p]["finding_id"]) for p in gdf["prompt_id"]]
    gdf["prompt_kind"] = [str(pid_to_row[p]["prompt_kind"]) for p in gdf["prompt_id"]]
    gen_dir = ws.generations_dir.relative_to(ws.root).as_posix()
    gdf["gen_path"] = [f"{gen_dir}/{p}" if isinstance(p, str) else None for p in gdf["path"]]
    return gdf, refs


def _reference_scores(
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
                raw = word_rows[fid].get("member_keys")
                clusters[fid] = train.by_keys([str(k) for k in (raw if raw is not None else [])])
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


def _copy_calibration(cfg: Config, space: CopySpace) -> dict[str, Any]:
    """The copy threshold in copy-descriptor space: one value for every prompt (the option, or
    the descriptor's default), with where it came from."""
    thr = float(cfg.copy_threshold or space.threshold)
    return {
        "copy_threshold_method": "fixed" if cfg.copy_threshold else "copy_descriptor_default",
        "copy_threshold": thr,
        "copy_threshold_source": "option" if cfg.copy_threshold else space.source,
        "space": space.to_dict(),
        "cluster_thresholds": {},
        "dataset_threshold": thr,
    }


def _thresholds(
    prompts: Any, refs: dict[str, tuple[str, int]], cal: dict[str, Any]
) -> dict[str, float]:
    """Each prompt's copy threshold: its cluster's, or the whole training set's."""
    out = {}
    for p in prompts.to_dict("records"):
        pid, fid = p["prompt_id"], str(p["finding_id"])
        if refs[pid][0] == "cluster":
            out[pid] = float(cal["cluster_thresholds"].get(fid, cal["copy_threshold"]))
        else:
            t = cal["dataset_threshold"]
            out[pid] = float(cal["copy_threshold"] if t is None else t)
    return out


def per_prompt(
    prompts: Any,
    gdf: Any,
    refs: dict[str, tuple[str, int]],
    triage: np.ndarray,
    selected: np.ndarray,
    thresholds: dict[str, float],
) -> Any:
    """The memorization table: one row per prompt (prompts left out by triage get n = 0)."""
    import pandas as pd

    from detectors.memorization import NAME, summarize_generations

    summary = {}
    if len(gdf):
        summary = (
            summarize_generations(gdf, by=["prompt_id"]).set_index("prompt_id").to_dict("index")
        )
    rank = pd.Series(triage).rank(ascending=False, method="first").to_numpy()
    empty = dict(
        n=0,
        n_copies=0,
        replication_rate=float("nan"),
        ci_low=0.0,
        ci_high=1.0,
        mean_sim=float("nan"),
        p95_sim=float("nan"),
        max_sim=float("nan"),
        n_failed=0,
        n_verbatim=None,
        verbatim_rate=float("nan"),
        n_object=None,
        object_rate=float("nan"),
        object_ci_low=float("nan"),
        object_ci_high=float("nan"),
    )
    rows = []
    for i, p in enumerate(prompts.to_dict("records")):
        ref = refs[p["prompt_id"]]
        rows.append(
            {
                "finding_id": p["finding_id"],
                "prompt_id": p["prompt_id"],
                "prompt_kind": p["prompt_kind"],
                "prompt": p["prompt"],
                "keyword": p["keyword"],
                "object": p["object"],
                "source": p["source"],
                **summary.get(p["prompt_id"], empty),
                "triage_score": float(triage[i]),
                "triage_rank": float(rank[i]),
                "generated": bool(selected[i]),
                "reference": ref[0],
                "reference_size": int(ref[1]),
                "copy_threshold": thresholds[p["prompt_id"]],
                "detector": NAME,
            }
        )
    out = pd.DataFrame(rows)
    for col in ("n", "n_copies", "n_failed"):
        out[col] = out[col].astype("int64")
    for col in ("n_verbatim", "n_object"):
        out[col] = pd.array(out[col], dtype="Int64")
    return out


def write_generation_tables(ws: Any, gdf: Any, examples: int) -> None:
    """``generations/scores.parquet`` (every generation) and ``generations/examples.parquet``
    (the ``examples`` most similar generations of each prompt beside their nearest training
    image)."""
    scored = gdf.drop(columns=["error"]).copy()
    ex = scored[np.isfinite(scored["similarity"].to_numpy(np.float64))]
    ex = ex.sort_values(["prompt_id", "similarity", "seed"], ascending=[True, False, True])
    ex = ex.groupby("prompt_id", sort=False).head(examples)
    cols = [
        "finding_id",
        "prompt_id",
        "prompt_kind",
        "seed",
        "gen_path",
        "path",
        "nearest_key",
        "similarity",
        "is_copy",
        "is_verbatim",
        "tiled_l2",
        "object_present",
    ]
    ws.write_table(ws.generations_dir / "scores.parquet", _to_arrow(scored))
    ws.write_table(ws.generations_dir / "examples.parquet", _to_arrow(ex[cols]))


def run_meta(
    cfg: Config,
    out: Any,
    settings: Any,
    device: str,
    counts: dict[str, int],
    cal: dict[str, Any],
    verify_info: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    """``findings/memorization.json``: thresholds, calibration evidence, the triage's AUROC
    against this run's N-seed labels and its cost, timings."""
    from detectors import memorization as mem

    gen_rows = out[out["generated"] & (out["n"] > 0)]
    labels = mem.replication_labels(
        gen_rows["n_copies"].to_numpy(), gen_rows["n"].to_numpy(), cfg.min_copy_share
    )
    auroc = (
        mem.triage_auroc(gen_rows["triage_score"].to_numpy(), labels)
        if cfg.triage_seeds and len(gen_rows)
        else float("nan")
    )
    n_generated = max(1, int(out["generated"].sum()))
    seconds_share = None
    if timings.get("triage") and counts.get("chunks_generated"):
        seconds_share = (timings["triage"] / len(out)) / (timings["generation"] / n_generated)
    return {
        "detector": mem.NAME,
        "triage_detector": mem.TRIAGE_NAME,
        "generator": cfg.generator,
        "device": device,
        "settings": settings.fingerprint(),
        "batch_size": cfg.batch_size,
        "n": cfg.n,
        "seed_offset": cfg.seed_offset,
        "n_prompts": len(out),
        "n_generated_prompts": int(out["generated"].sum()),
        "n_generations_scored": int(gen_rows["n"].sum()),
        "chunks": counts,
        **cal,
        **verify_info,
        "triage": {
            "seeds": cfg.triage_seeds,
            "top": cfg.triage_top,
            "per_finding": cfg.triage_per_finding,
            "auroc_vs_replication": auroc,
            "n_replicating_prompts": int(labels.sum()),
            "min_copy_share": cfg.min_copy_share,
            "unet_calls_share": cfg.triage_seeds / (cfg.n * cfg.steps) if cfg.n else None,
            "seconds": timings.get("triage"),
            "seconds_share": seconds_share,
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def _fmt(x: Any) -> str:
    try:
        return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"
    except (TypeError, ValueError):
        return "n/a"


def _free_cuda() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


def _to_arrow(df: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)


def _calibrate(
    cfg: Config, ws: Any, train: TrainingSet, findings: Findings, prompts: Any
) -> dict[str, Any]:
    """Copy thresholds: the pair threshold (unrelated training pairs), then one per reference
    set used by the prompts (each cluster; the whole training set) from the best-match null of
    training images unrelated to it (see ``detectors.memorization``). ``--copy-threshold`` fixes
    every threshold instead."""
    from detectors import memorization as mem

    relations = Relations(ws, findings.word)
    keys, emb = train.sample(cfg.calibration_samples, seed=0)
    labels = relations.labels(keys)
    sims = mem.unrelated_pair_similarities(emb, labels, max_items=cfg.calibration_samples)
    pair = mem.calibrate_copy_threshold(sims, cfg.alpha)
    q = np.quantile(sims, [0.5, 0.9, 0.99, 0.999])
    out: dict[str, Any] = {
        "copy_threshold_method": "fixed" if cfg.copy_threshold else "unrelated_pairs_quantile",
        "pair_threshold": pair,
        "alpha": cfg.alpha,
        "unrelated_pairs": int(len(sims)),
        "unrelated_similarity_quantiles": {"p50": q[0], "p90": q[1], "p99": q[2], "p999": q[3]},
    }
    word_rows = findings.rows("word")
    used = set(prompts["finding_id"].astype(str))
    cluster_thr: dict[str, float] = {}
    null_q: dict[str, dict[str, float]] = {}
    for fid in sorted(used & set(word_rows)):
        raw = word_rows[fid].get("member_keys")
        mkeys, memb = train.by_keys([str(k) for k in (raw if raw is not None else [])])
        if not len(mkeys):
            continue
        null = mem.max_unrelated_similarity(
            emb,
            memb,
            labels,
            relations.labels(mkeys),
            np.asarray(keys, object),
            np.asarray(mkeys, object),
        )
        cluster_thr[fid] = cfg.copy_threshold or mem.calibrate_reference_threshold(
            null, pair, cfg.alpha
        )
        fin = null[np.isfinite(null)]
        null_q[fid] = {"p50": float(np.median(fin)), "max": float(fin.max())} if len(fin) else {}
    dataset_thr = None
    if used - set(word_rows):
        n_q = min(len(keys), cfg.dataset_null_queries)
        null = train.nearest_unrelated(keys[:n_q], emb[:n_q], relations)
        dataset_thr = cfg.copy_threshold or mem.calibrate_reference_threshold(null, pair, cfg.alpha)
        fin = null[np.isfinite(null)]
        null_q["dataset"] = (
            {"p50": float(np.median(fin)), "max": float(fin.max()), "queries": n_q}
            if len(fin)
            else {}
        )
    out.update(
        copy_threshold=float(cfg.copy_threshold or pair),
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


def _verify(
    cfg: Config, ws: Any, gdf: Any, train: TrainingSet, word: Any, size: tuple[int, int]
) -> dict[str, Any]:
    """Tiled-l2 check of every copy against its nearest training image (adds ``tiled_l2`` and
    ``is_verbatim`` to ``gdf``; null where unchecked)."""
    from audit.report.images import ShardIndex, open_path
    from detectors import memorization as mem

    gdf["tiled_l2"] = np.nan
    gdf["is_verbatim"] = _na_bool(len(gdf))
    info: dict[str, Any] = {"verbatim_checked": False}
    copies = np.flatnonzero(gdf["is_copy"].to_numpy(bool))
    if not cfg.verify:
        info["verbatim_note"] = "disabled (--no-verify)"
        return info
    shards = ShardIndex(ws.shards_dir)
    if not shards.available:
        info["verbatim_note"] = "no training images in WS/shards (imported embeddings?)"
        return info
    keys, _ = train.sample(cfg.verify_samples, seed=1)
    imgs = [(k, shards.open_image(k)) for k in keys]
    imgs = [(k, im) for k, im in imgs if im is not None]
    if len(imgs) < 20:
        info["verbatim_note"] = f"only {len(imgs)} training images readable from the shards"
        return info
    px = _load_pixels([im for _, im in imgs], size)
    from detectors.memorization import sample_unrelated_pairs

    labels = _group_labels(ws, [k for k, _ in imgs], word)
    i, j = sample_unrelated_pairs(len(imgs), labels, max_items=len(imgs))
    d = mem.tiled_l2(px[i], px[j])
    l2_thr = mem.calibrate_tiled_l2_threshold(d, cfg.alpha)
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
        a = _load_pixels([gen_im], size)
        b = _load_pixels([train_im], size)
        dists[r] = float(mem.tiled_l2(a, b)[0])
    checked = np.isfinite(dists)
    gdf["tiled_l2"] = dists
    verb = _na_bool(len(gdf))
    verb[checked] = dists[checked] <= l2_thr
    gdf["is_verbatim"] = verb
    info["verbatim_copies_checked"] = int(checked.sum())
    return info


def _na_bool(n: int) -> Any:
    import pandas as pd

    return pd.array([pd.NA] * n, dtype="boolean")
