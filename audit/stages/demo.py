"""``laion-audit demo [--out DIR] [--n N]``: the whole audit, end to end, on a built-in testbed."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.config import Options, add_options, option
from audit.runner import DEMO_STAGES

logger = logging.getLogger(__name__)

USES_WORKSPACE = False

HELP = "build a testbed and run the whole audit on it, end to end"
DESCRIPTION = """\
Builds a SynthLAION testbed (planted duplicates, famous works, an unmentioned object, poisons,
broken files) in DIR/testbed, serves it on a loopback HTTP server, downloads it with img2dataset
into the workspace DIR, embeds it with the shipped tiny-synth CLIP, runs every detector,
reproduces the replication findings with the shipped tiny-sd generator, writes the keep/drop
lists and the report, and prints the report's path.

To stay within minutes on a laptop CPU the demo generates --generations images per prompt
(default 100) with --steps denoising steps (default 20); real audits use
`laion-audit reproduce --n 500` (the default) and the sampler's usual 50 steps.

The options used are written to DIR/audit.toml: rerunning the demo skips finished stages, and
`laion-audit run DIR/audit.toml` reruns it (while the testbed server is not running, the
download stage is finished and skipped). A different --n or --seed rebuilds the testbed and
reruns everything. DIR must be empty, absent, or an earlier demo workspace.
"""

DEMO_OUTPUTS = (
    "shards",
    "embeddings",
    "findings",
    "generations",
    "report",
    "filtered",
    "run.json",
    "audit.toml",
)
"""What a demo writes into DIR besides DIR/testbed (removed when the testbed is rebuilt)."""


@dataclass
class Config(Options):
    out: str = option(
        "demo-workspace",
        help="workspace folder; the testbed goes to DIR/testbed",
        metavar="DIR",
    )
    n: int = option(
        1000,
        help="testbed rows (the planted findings need a few hundred images)",
        ge=200,
        le=200_000,
    )
    seed: int = option(0, help="testbed seed")
    generations: int = option(
        100, help="generations per prompt (real audits use 500)", ge=4, metavar="N"
    )
    steps: int = option(20, help="denoising steps per generation (real audits 50)", ge=1)
    force: bool = option(False, help="rerun every stage even if finished")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, Config)


def demo_config(ws: Path, url_list: Path, cfg: Config) -> dict[str, Any]:
    """The audit.toml of the demo, as a dict (also written to WS/audit.toml)."""
    return {
        "workspace": str(ws),
        "run": {"stages": list(DEMO_STAGES)},
        "download": {"input": str(url_list), "processes": 1, "threads": 8},
        # the testbed's images are 64 px: SSCD sees them at 128 px (upscaled to the 224 px
        # default, tiny-sd's blurry copies fall below 0.5; benchmarks/bench_copies.py part 3)
        "embed": {"model": "tiny-synth", "batch_size": 64, "copy_size": 128},
        # SSCD on 64 px drawings: at 0.5 connected components chain look-alike drawings (group
        # precision 0.01-0.02 on testbed seeds 2024 and 4242, 2,000 rows); at 0.65 precision
        # 0.96-0.98, recall 0.97-0.98 (docs/copy_detection.md). Photos of ordinary size keep 0.5.
        "dedup": {"threshold": 0.65},
        "concepts": {},
        "replication": {"discover": True, "keyword": ["van gogh"], "threshold": 0.65},
        "objects": {"keyword": ["astronaut"]},
        "poisons": {},
        # A small demo testbed may have no cluster large enough to be flagged: reproduce every
        # finding (the unflagged clusters then act as controls), spending the full N on the 8
        # prompts the one-step triage ranks highest plus each finding's best-ranked prompt.
        "reproduce": {
            "generator": "tiny-sd",
            "n": cfg.generations,
            "steps": cfg.steps,
            "all_findings": True,
            "triage_top": 8,
            "triage_per_finding": 1,
            "batch_size": 32,
        },
        "filter": {"drop": ["duplicates", "poisons", "failed"]},
        "report": {},
    }


def _toml(cfg: dict[str, Any]) -> str:
    """A small TOML writer for the demo's flat config (strings, numbers, bools, lists)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    lines = ["# written by `laion-audit demo`; rerun with `laion-audit run` on this file"]
    lines += [f"{k} = {value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for section, opts in cfg.items():
        if isinstance(opts, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {value(v)}" for k, v in opts.items()]
    return "\n".join(lines) + "\n"


def _check_out(ws: Path) -> None:
    """DIR must be absent, empty or an earlier demo workspace (never someone's data)."""
    if ws.exists() and any(ws.iterdir()) and not (ws / "testbed" / "testbed.json").is_file():
        from audit.errors import InputError

        raise InputError(
            f"{ws} exists and is not a demo workspace (no testbed/testbed.json): "
            "pass an empty or new --out folder"
        )


def _prepare(ws: Path, cfg: Config) -> bool:
    """Check DIR; returns True when the testbed must be (re)built (everything reruns)."""
    testbed = ws / "testbed"
    info_path = testbed / "testbed.json"
    _check_out(ws)
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        params = info.get("params", info)
        if params.get("n") == cfg.n and params.get("seed") == cfg.seed:
            return False
        logger.info(
            "demo: testbed parameters changed (n=%s seed=%s): rebuilding",
            params.get("n"),
            params.get("seed"),
        )
    for name in DEMO_OUTPUTS:
        p = ws / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    if testbed.exists():
        shutil.rmtree(testbed)
    return True


def run(cfg: Config, args: argparse.Namespace) -> int:
    from audit.config import load_toml
    from audit.errors import NotImplementedStage
    from audit.runner import missing_stages, run_stages, validate
    from audit.testbed.generate import build_testbed, write_url_list
    from audit.testbed.server import serve_testbed
    from audit.workspace import Workspace, atomic_write_bytes
    from pipelines.common import Stats

    stats = Stats()
    ws = Path(cfg.out).resolve()
    _check_out(ws)
    missing = missing_stages(DEMO_STAGES)
    if missing:  # fail clearly before building anything
        raise NotImplementedStage(
            f"`laion-audit demo` needs stages that are not implemented yet: {', '.join(missing)}"
        )
    testbed = ws / "testbed"
    # the sections are the stages' declared options: checked before anything is built
    validate(demo_config(ws, testbed / "urls-served.parquet", cfg), str(ws), DEMO_STAGES, args)
    with stats.track("demo") as total:
        with stats.track("testbed"):
            rebuild = _prepare(ws, cfg)
            if rebuild:
                logger.info(
                    "demo: building a %d-row testbed (seed %d) in %s", cfg.n, cfg.seed, testbed
                )
                build_testbed(testbed, n=cfg.n, seed=cfg.seed, overwrite=True)
        logger.info(
            "demo: %d generations per prompt with %d steps (real audits: 500 per prompt, 50 steps)",
            cfg.generations,
            cfg.steps,
        )
        with serve_testbed(testbed) as base_url:
            url_list = write_url_list(testbed, base_url, testbed / "urls-served.parquet")
            file_cfg = demo_config(ws, url_list, cfg)
            atomic_write_bytes(ws / "audit.toml", _toml(file_cfg).encode())
            file_cfg = load_toml(ws / "audit.toml")  # exactly what `laion-audit run` would read
            code = run_stages(
                file_cfg, str(ws), DEMO_STAGES, force=bool(cfg.force or rebuild), parent=args
            )
    if code != 0:
        return code
    timings = {"testbed": round(stats.seconds["testbed"], 1)}
    runs = Workspace(ws).read_json("run.json", default={}) or {}
    for stage, rec in (runs.get("stages") or {}).items():
        timings[stage] = rec.get("seconds")
    Workspace(ws).write_json(
        "demo.json",
        {
            "seconds": round(total.seconds, 1),
            "n": cfg.n,
            "seed": cfg.seed,
            "generations": cfg.generations,
            "steps": cfg.steps,
            "stage_seconds": timings,
        },
    )
    report = ws / "report" / "index.html"
    logger.info(
        "demo finished in %.0f s (%d-row testbed; %d generations per prompt, %d steps: "
        "a real audit uses 500 per prompt)",
        total.seconds,
        cfg.n,
        cfg.generations,
        cfg.steps,
    )
    print(report)
    return 0
