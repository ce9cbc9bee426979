"""``laion-audit reproduce WS``: seeded generations per prompt, replication scoring, triage."""

from __future__ import annotations

import argparse
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from audit.config import BeamOptions, add_options, add_workspace_argument, option, require
from audit.errors import InputError
from pipelines.common import STAGE_FINDINGS

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
its presence score exceeds the finding's calibrated threshold, the score computed exactly as the
objects finding computed it (the margin over the same competing objects).

Writes WS/findings/memorization.parquet (per prompt: n, replication rate with a Wilson 95%
interval, mean/p95/max similarity, verbatim rate, object rate, triage score),
findings/memorization.json (thresholds, calibration, triage AUROC against the N-seed labels
with a bootstrap interval over prompts, measured only without a --triage-top cut: on prompts the
triage chose it would measure the choice; triage cost as a share of generation, timings),
WS/generations/triage.parquet, WS/generations/scores.parquet (every generation) and
WS/generations/examples.parquet (the most similar generations of each prompt beside their
nearest training image: finding_id, prompt_id, seed, gen_path, nearest_key, similarity).
"""

ACCEPTS_BEAM_OPTIONS = True
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
FINDING = STAGE_FINDINGS["reproduce"]

GEN, PROMPTS, SCORING = "generation", "prompts and triage", "scoring"


def _spaces() -> tuple[str, ...]:
    from audit.copies import SPACES

    return tuple(SPACES)


@dataclass
class Config(BeamOptions):
    generator: str = option(
        "tiny-sd",
        help="diffusers text-to-image pipeline: hub id, local path, or tiny-sd (the shipped "
        "offline model)",
        metavar="NAME_OR_PATH",
        group=GEN,
    )
    n: int = option(
        500, help="generations per prompt, seeds 0..N-1 (0 = triage only)", ge=0, group=GEN
    )
    steps: int = option(50, help="denoising steps", ge=1, group=GEN)
    guidance: float = option(7.5, help="classifier-free guidance scale", ge=0, group=GEN)
    batch_size: int = option(
        16, help="images per pipeline call; does not change the images", ge=1, group=GEN
    )
    height: int = option(
        0, help="image height, a multiple of 8", default_help="the model's", group=GEN
    )
    width: int = option(
        0, help="image width, a multiple of 8", default_help="the model's", group=GEN
    )
    negative_prompt: str = option(
        "", help="negative prompt", metavar="TEXT", default_help="none", group=GEN
    )
    safety: str = option(
        "",
        help="mitigation at generation time: Safe Latent Diffusion guidance away from "
        "--safety-concept, preset weak, medium, strong or max",
        metavar="sld:PRESET",
        default_help="none",
        group=GEN,
    )
    safety_concept: str = option(
        "",
        help="what SLD steers away from, e.g. the memorised work",
        metavar="TEXT",
        default_help="SLD's inappropriate-content concept",
        group=GEN,
    )
    chunk_size: int = option(50, help="seeds per resumable chunk / Beam element", ge=1, group=GEN)
    seed_offset: int = option(0, help="first seed", ge=0, group=GEN)
    device: str = option(
        "auto",
        help="auto (cuda when available), cpu, cuda, cuda:N or mps",
        metavar="DEVICE",
        group=GEN,
    )
    torch_threads: int = option(
        0, help="torch CPU threads", ge=0, default_help="torch's choice", group=GEN
    )
    name: str = option(
        "",
        help="record this run under WS/generations/runs/LABEL beside the main run",
        metavar="LABEL",
        default_help="mitigation runs get a label from what they measure, other runs are the "
        "main run",
        group=GEN,
    )
    prompts: str | None = option(
        None,
        help="user prompts (.jsonl/.csv/.txt); added, or replacing a built prompt of the same "
        "finding_id and prompt_kind",
        metavar="FILE",
        group=PROMPTS,
    )
    prompts_mode: str = option(
        "add",
        help="add, or replace: use only the file's prompts",
        choices=("add", "replace"),
        group=PROMPTS,
    )
    all_findings: bool = option(
        False, help="build prompts for unflagged findings too", group=PROMPTS
    )
    triage_top: int = option(
        0,
        help="generate the full N only for the K prompts with the highest triage score "
        "(0 = every prompt)",
        metavar="K",
        ge=0,
        group=PROMPTS,
    )
    triage_per_finding: int = option(
        0,
        help="with --triage-top: also generate each finding's M best-triaged prompts, so every "
        "finding is tested even when a few findings hold the K highest scores",
        metavar="M",
        ge=0,
        group=PROMPTS,
    )
    triage_seeds: int = option(
        4, help="seeds averaged by the triage score (0 = no triage)", ge=0, group=PROMPTS
    )
    alpha: float = option(
        1e-3,
        help="copy threshold = 1 - alpha quantile of unrelated-pair similarity",
        gt=0,
        lt=0.5,
        group=SCORING,
    )
    copy_threshold: float = option(
        0.0,
        help="copy threshold: cosine of the copy descriptor, the same for every prompt; in "
        "CLIP space a fixed threshold instead of the calibrated ones (0 = the default)",
        ge=-1,
        le=1,
        default_help="0.5 in copy space, calibrated in CLIP space",
        group=SCORING,
    )
    space: str = option(
        "auto",
        help="what decides that a generation copies a training image: copy (SSCD copy_emb), "
        "clip (image_emb, thresholds calibrated per reference set), or auto (copy when the "
        "embeddings have it)",
        choices=_spaces,
        group=SCORING,
    )
    calibration_samples: int = option(
        2000, help="training images sampled for the calibration pairs", ge=50, group=SCORING
    )
    dataset_null_queries: int = option(
        500,
        help="training images whose nearest unrelated training image calibrates the threshold "
        "of prompts scored against the whole training set",
        ge=10,
        group=SCORING,
    )
    verify: bool = option(True, help="the tiled-l2 verbatim check of every copy", group=SCORING)
    verify_samples: int = option(
        200, help="training images sampled for the tiled-l2 threshold", ge=20, cli=False
    )
    examples: int = option(4, help="example pairs kept per prompt", ge=0, group=SCORING)
    min_copy_share: float = option(
        0.02,  # detectors.memorization.DEFAULT_MIN_COPY_SHARE
        help="a prompt 'replicates' (triage AUROC labels, report card and report.json) when "
        "the Wilson 95% lower bound of its copy rate is at least this (1 copy of 500 does not "
        "count, 20 of 500 do)",
        gt=0,
        le=1,
        group=SCORING,
    )
    clip_batch_size: int = option(64, help="images per CLIP batch", ge=1, group=SCORING)

    def check(self) -> None:
        from pipelines.safety import SAFETY_MODES

        s = self.section()
        require(bool(self.generator), f"{s}.generator", "must name a diffusers pipeline",
                self.generator)  # fmt: skip
        require(
            self.safety in ("", *SAFETY_MODES),
            f"{s}.safety",
            f"must be one of {', '.join(SAFETY_MODES)} (or empty: none)",
            self.safety,
        )
        for name in ("height", "width"):
            v = getattr(self, name)
            require(v == 0 or (v >= 8 and v % 8 == 0), f"{s}.{name}",
                    "must be 0 (the model's default) or a multiple of 8", v)  # fmt: skip
        require(not (self.triage_top and not self.triage_seeds), f"{s}.triage_top",
                "needs triage_seeds >= 1", self.triage_top)  # fmt: skip
        require(bool(DEVICE_RE.match(self.device)), f"{s}.device",
                "must be auto, cpu, cuda, cuda:N or mps", self.device)  # fmt: skip
        from audit.mitigations.runs import LABEL_RE, LABEL_RULE

        require(not self.name or bool(LABEL_RE.match(self.name)), f"{s}.name", LABEL_RULE,
                self.name)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workspace_argument(parser)
    add_options(parser, Config)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.copies import copy_space
    from audit.reproduce import generate as g
    from audit.reproduce import score as s
    from audit.workspace import Workspace
    from detectors import memorization as mem
    from pipelines.common import Stats
    from pipelines.reproduce import GenerationSettings

    t_start = time.perf_counter()
    ws = Workspace(args.workspace)
    if not ws.root.is_dir():
        raise InputError(f"workspace not found: {ws.root}")
    from audit.mitigations import runs

    ws, cfg, mitigation = runs.prepare(ws, cfg)  # a recorded run writes in its own folder
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    device = g.resolve_device(cfg.device)
    stats = Stats()
    findings = s.Findings.read(ws)
    train = s.training_set(ws)
    space = copy_space(ws, cfg.space, "reproduce.space")
    prompts = g.make_prompts(findings, train, cfg.prompts, cfg.prompts_mode, cfg.all_findings)
    wanted = GenerationSettings(
        generator=cfg.generator,
        steps=cfg.steps,
        guidance=cfg.guidance,
        height=cfg.height or None,
        width=cfg.width or None,
        negative_prompt=cfg.negative_prompt or None,
        batch_size=cfg.batch_size,
        chunk_size=cfg.chunk_size,
        device=device,
        safety=cfg.safety or None,
        safety_concept=cfg.safety_concept or None,
    )
    seeds = list(range(cfg.seed_offset, cfg.seed_offset + cfg.triage_seeds))
    settings, triage = g.run_triage(ws, prompts, wanted, device, seeds, stats)
    selected = mem.select_top(
        triage, cfg.triage_top or None, prompts["finding_id"].tolist(), cfg.triage_per_finding
    )
    tasks, counts = g.generate(
        ws, prompts[selected], settings, n=cfg.n, seed_offset=cfg.seed_offset, dim=train.dim,
        device=device, clip_batch_size=cfg.clip_batch_size, space=space,
        beam_args=getattr(args, "beam_args", []), runner=cfg.runner, dask_local=cfg.dask_local,
        stats=stats,
    )  # fmt: skip
    with stats.track("scoring"):
        d = s.decide(
            ws, prompts, tasks, settings, train, findings, device, space, alpha=cfg.alpha,
            copy_threshold=cfg.copy_threshold, calibration_samples=cfg.calibration_samples,
            null_queries=cfg.dataset_null_queries, verify_copies=cfg.verify,
            verify_samples=cfg.verify_samples,
        )  # fmt: skip
    out = mem.prompt_table(prompts, d.generations, d.refs, triage, selected, d.thresholds)
    out, controls = runs.control_accuracy(ws, out, tasks, settings, device)
    s.write_generation_tables(ws, d.generations, cfg.examples)
    triage_meta = s.triage_meta(
        out, seeds=cfg.triage_seeds, top=cfg.triage_top, per_finding=cfg.triage_per_finding,
        min_copy_share=cfg.min_copy_share, n=cfg.n, steps=cfg.steps, timings=stats.seconds,
        chunks_generated=counts.get("chunks_generated", 0),
    )  # fmt: skip
    meta = {
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
        "n_generations_scored": int(out.loc[out["generated"], "n"].sum()),
        "chunks": counts,
        **d.calibration,
        **d.verification,
        "triage": triage_meta,
        "timings": stats.to_dict()["seconds"],
        "mitigation": mitigation,
        "controls": controls,
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    ws.write_finding(FINDING, g.to_arrow(out), meta)
    for r in out.sort_values("replication_rate", ascending=False).head(5).to_dict("records"):
        logger.info("%-28s %-24s rate %s [%s, %s] max sim %s", r["finding_id"],
                    r["prompt_kind"], _fmt(r["replication_rate"]), _fmt(r["ci_low"]),
                    _fmt(r["ci_high"]), _fmt(r["max_sim"]))  # fmt: skip
    return 0


def _fmt(x: Any) -> str:
    try:
        return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"
    except (TypeError, ValueError):
        return "n/a"
