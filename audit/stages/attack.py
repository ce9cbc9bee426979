"""``laion-audit attack --generator ERASED --original G --prompts FILE --out FILE``: adversarial
prompts against concept erasure (UnlearnDiffAtk)."""

from __future__ import annotations

import argparse
import logging
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.config import Options, add_options, option, require

logger = logging.getLogger(__name__)

USES_WORKSPACE = False
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

HELP = "adversarial prompts that bring an erased concept back (UnlearnDiffAtk)"
DESCRIPTION = """\
Tests an erased model (`laion-audit erase`, or any unlearned diffusers pipeline) with
UnlearnDiffAtk (Zhang et al., ECCV 2024): for each prompt, the ORIGINAL model generates a target
image (seed = the row's `seed`, else --seed + row number), and --tokens adversarial tokens are
prepended to the prompt and optimised so that the ERASED model denoises that target well
(||eps_erased(x_t(target), t, [adv; prompt]) - noise||^2): --timesteps evenly spaced timesteps
in increasing order, --iterations Adam steps at each (lr 0.01, weight decay 0.1), tokens as
relaxed one-hot vectors over the whole-word vocabulary (--relax simplex, the paper's) or as
embeddings projected to the nearest token (--relax project). After each timestep the erased
model generates from the attacked prompt with the row's seed; success (early stop) when that
generation copies the reference by copy-descriptor cosine >= --threshold (SSCD 0.5). Prompts
that already copy before the attack count as successes with 0 steps. ASR = (successes before +
new successes) / prompts, logged with Wilson 95% intervals. The paper's budget (50 timesteps x
40 iterations) is the default; --timesteps 5 is a tenth of it.

--prompts FILE: .jsonl/.csv/.txt as `reproduce --prompts` reads them (`prompt`, optional
`finding_id`, `prompt_kind`); a .jsonl/.csv row may also give `seed`, `reference` (work:ID or
an image path) and `target_prompt` (the original model's prompt for the target image, e.g. the
work's best prompt when attacking a near-miss). --reference sets the reference of every row
(default: the target image itself). work:ID names a canonical SynthLAION work
(audit.testbed.draw.WORKS), drawn at the generation size. --workspace WS --finding ID instead
attacks the prompts the workspace's main reproduce run generated for that finding (most copied
first), and reads WS/audit.toml's [attack] section.

Writes --out (.jsonl), one row per prompt, readable by `laion-audit reproduce --prompts FILE`:
prompt (adversarial tokens first), finding_id, prompt_kind (the input kind + "+unlearndiffatk"),
original_prompt, seed, success, success_before, steps, timesteps_used, tokens, token_ids,
similarity, similarity_before, target_similarity, seconds; and FILE.summary.json (ASR
before/after with intervals, settings, timings). Use --generator G --original G to
sanity-check the attack on an unerased model's near-misses. Measure the adversarial prompts
over many seeds with `laion-audit reproduce WS --generator ERASED --prompts FILE`: the report's
"Mitigations" section puts them beside the prompts they were made from.

Resumable: every finished prompt is appended to .FILE.partial.jsonl; a rerun with the same
models, settings and prompts attacks only the rest (--no-resume starts afresh).
"""


def _relaxations() -> tuple[str, ...]:
    from audit.mitigations.attack import RELAXATIONS

    return tuple(RELAXATIONS)


@dataclass
class Config(Options):
    generator: str = option(
        "", help="the erased pipeline", metavar="ERASED", default_help="none; required",
        group="models and prompts",
    )  # fmt: skip
    original: str = option(
        "tiny-sd", help="the original pipeline that makes the target images", metavar="G",
        group="models and prompts",
    )  # fmt: skip
    prompts: str = option(
        "",
        help="prompts to attack (.jsonl/.csv/.txt, as `reproduce --prompts` reads them)",
        metavar="FILE",
        default_help="none; this or --finding",
        group="models and prompts",
    )
    workspace: str = option(
        "",
        help="the audit workspace --finding reads (its audit.toml's [attack] section applies too)",
        metavar="WS",
        default_help="none",
        group="models and prompts",
    )
    finding: list[str] = option(
        [],
        help="attack the prompts the workspace's main reproduce run generated for these "
        "findings (finding ids; most copied first)",
        metavar="IDS",
        group="models and prompts",
    )
    out: str = option(
        "", help="adversarial prompts (.jsonl)", metavar="FILE", default_help="none; required",
        group="models and prompts",
    )  # fmt: skip
    reference: str = option(
        "",
        help="what success is judged against: work:ID or an image path",
        metavar="SPEC",
        default_help="the target image",
        group="models and prompts",
    )
    limit: int = option(
        0, help="attack only the first N prompts", ge=0, default_help="every prompt",
        group="models and prompts",
    )  # fmt: skip
    tokens: int = option(3, help="adversarial tokens prepended", ge=1, le=16, group="attack")
    relax: str = option(
        "simplex",
        help="token relaxation: simplex (relaxed one-hot, the paper's) or project "
        "(nearest-embedding projection)",
        choices=_relaxations,
        group="attack",
    )
    iterations: int = option(40, help="optimisation steps per timestep", ge=0, group="attack")
    timesteps: int = option(
        50,
        help="evenly spaced timesteps visited in order, a success check after each (50: at "
        "most 50 x 40 steps and 50 checks per prompt)",
        ge=1,
        le=1000,
        group="attack",
    )
    vocabulary: str = option(
        "",
        help="only these words as adversarial tokens (a text file)",
        metavar="FILE",
        default_help="every whole-word token of the tokenizer",
        group="attack",
    )
    lr: float = option(0.01, help="AdamW learning rate", gt=0, group="attack")
    weight_decay: float = option(0.1, help="AdamW weight decay", ge=0, group="attack")
    seed: int = option(0, help="base seed", group="attack")
    sample_steps: int = option(
        50, help="denoising steps of the check generations", ge=1, group="judging success"
    )
    guidance: float = option(7.5, help="classifier-free guidance", ge=0, group="judging success")
    threshold: float = option(
        0.5, help="copy cosine threshold", ge=-1, le=1, group="judging success"
    )
    copy_model: str = option(
        "sscd",
        help="copy descriptor: sscd, sscd_distilled, or a .onnx/TorchScript path",
        metavar="NAME",
        group="judging success",
    )
    copy_size: int = option(
        224,
        help="side the copy descriptor sees (use the generation size, e.g. 64, for tiny-sd: "
        "its VAE's own reconstructions score < 0.5 at 224)",
        ge=32,
        group="judging success",
    )
    device: str = option(
        "auto", help="auto (cuda when available), cpu, cuda, cuda:N or mps", metavar="DEVICE"
    )
    torch_threads: int = option(
        0, help="torch CPU threads", ge=0, default_help="torch's choice", metavar="N"
    )
    resume: bool = option(
        True,
        help="keep the prompts an interrupted run of the same models and settings finished "
        "(in .FILE.partial.jsonl next to FILE) and attack only the rest",
    )

    def check(self) -> None:
        s = "attack"
        require(bool(self.generator), f"{s}.generator", "must name the erased pipeline", "")
        require(bool(self.original), f"{s}.original", "must name the original pipeline", "")
        require(
            bool(self.prompts) != bool(self.finding),
            f"{s}.prompts",
            "needs a prompt file (--prompts FILE) or --finding ID with --workspace WS, not both",
            self.prompts or self.finding,
        )
        require(
            not self.finding or bool(self.workspace),
            f"{s}.finding",
            "needs the workspace it comes from (--workspace WS)",
            self.finding,
        )
        require(bool(self.out), f"{s}.out", "needs an output file (--out FILE.jsonl)", "")
        require(
            Path(self.out).suffix.lower() == ".jsonl",
            f"{s}.out",
            "must be a .jsonl file",
            self.out,
        )
        require(
            bool(DEVICE_RE.match(self.device)),
            f"{s}.device",
            "must be auto, cpu, cuda, cuda:N or mps",
            self.device,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, Config)


def finding_rows(workspace: str, findings: list[str]) -> list[dict[str, Any]]:
    """The prompts the workspace's main reproduce run generated for ``findings`` (most copied
    first, within the order the findings are given), as :func:`read_rows` returns rows."""
    from audit.errors import InputError
    from audit.mitigations.runs import ATTACK_SUFFIX, CONTROL_KIND, FINDING
    from audit.workspace import Workspace

    ws = Workspace(workspace)
    if not ws.has_finding(FINDING):
        raise InputError(
            f"{ws.finding_path(FINDING)} not found: run `laion-audit reproduce {workspace}` "
            "first (or give --prompts FILE)"
        )
    df = ws.read_finding(FINDING).to_pandas()
    df = df[df["n"].fillna(0).astype(int) > 0]
    if "generated" in df.columns:
        df = df[df["generated"].fillna(True).astype(bool)]
    df = df[(df["prompt_kind"] != CONTROL_KIND) & ~df["prompt_kind"].str.endswith(ATTACK_SUFFIX)]
    rows = []
    for fid in findings:
        sub = df[df["finding_id"].astype(str) == fid]
        if sub.empty:
            known = sorted(df["finding_id"].astype(str).unique())
            raise InputError(
                f"finding {fid!r}: no generated prompts in {ws.finding_path(FINDING)} "
                f"(findings there: {', '.join(known) or 'none'})"
            )
        sub = sub.sort_values(["replication_rate", "prompt_kind"], ascending=[False, True])
        for r in sub.to_dict("records"):
            rows.append(
                {
                    "prompt": str(r["prompt"]),
                    "finding_id": fid,
                    "prompt_kind": str(r["prompt_kind"]),
                    "seed": None,
                    "reference": None,
                    "target_prompt": None,
                }
            )
    return rows


def read_rows(path: str) -> list[dict[str, Any]]:
    """The prompt file as ``reproduce`` reads it, plus each row's optional ``seed``,
    ``reference`` and ``target_prompt`` (``.jsonl`` and ``.csv`` only)."""
    import csv
    import json

    from audit.errors import InputError
    from audit.prompts import read_prompt_file

    prompts = read_prompt_file(path)
    p = Path(path)
    extras: list[dict[str, Any]] = [{} for _ in prompts]
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        raw = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        extras = [r if isinstance(r, dict) else {} for r in raw]
    elif suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            extras = list(csv.DictReader(fh))
    rows = []
    for i, (pr, ex) in enumerate(zip(prompts, extras)):
        seed = ex.get("seed")
        if seed not in (None, ""):
            try:
                seed = int(seed)
            except (TypeError, ValueError):
                raise InputError(
                    f"{p}: row {i + 1}: seed must be an integer, got {seed!r}"
                ) from None
        rows.append(
            {
                "prompt": pr.prompt,
                "finding_id": pr.finding_id,
                "prompt_kind": pr.prompt_kind,
                "seed": None if seed in (None, "") else seed,
                "reference": ex.get("reference") or None,
                "target_prompt": ex.get("target_prompt") or None,
            }
        )
    return rows


def check_reference(spec: str) -> None:
    """Fail early (before any model is loaded) on a reference that cannot be loaded."""
    from audit.errors import InputError

    if spec.startswith("work:"):
        from audit.testbed.draw import WORKS

        if spec.split(":", 1)[1] not in WORKS:
            raise InputError(f"reference {spec!r}: unknown work; known: {', '.join(WORKS)}")
    elif not Path(spec).is_file():
        raise InputError(f"reference image not found: {spec} (or use work:ID)")


def load_reference(spec: str, size: tuple[int, int]) -> Any:
    """``work:ID`` (a canonical SynthLAION work at ``size``) or an image file, as RGB PIL."""
    from audit.errors import InputError

    if spec.startswith("work:"):
        from audit.testbed.draw import WORKS, draw_work

        wid = spec.split(":", 1)[1]
        if wid not in WORKS:
            raise InputError(f"reference {spec!r}: unknown work; known: {', '.join(WORKS)}")
        img = draw_work(wid, size=max(size))
        return img.resize((size[1], size[0])) if size[0] != size[1] else img
    from pipelines.decode import DecodeError, decode_image

    p = Path(spec)
    if not p.is_file():
        raise InputError(f"reference image not found: {spec} (or use work:ID)")
    try:
        return decode_image(p.read_bytes()).image
    except DecodeError as exc:
        raise InputError(f"reference {spec}: not a usable image ({exc})") from exc


def fingerprint(cfg: Config, settings: Any, vocabulary: Any, rows: list[dict]) -> dict[str, Any]:
    """What an attacked prompt depends on: the models (an erased folder by its erase.json's
    creation time too), the attack and judging settings, and the prompt rows."""
    import hashlib
    import json

    def model(name: str) -> Any:
        card = Path(name) / "erase.json"
        if card.is_file():
            return [str(Path(name).resolve()), json.loads(card.read_text()).get("created")]
        return name

    st = dict(settings.__dict__)
    st.pop("device", None)
    return {
        "generator": model(cfg.generator),
        "original": model(cfg.original),
        "settings": st,
        "copy_model": cfg.copy_model,
        "copy_size": cfg.copy_size,
        "reference": cfg.reference,
        "vocabulary": vocabulary,
        "rows": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest(),
    }


class Partial:
    """``.FILE.partial.jsonl`` next to the output: a header line with the run's fingerprint,
    then one line per finished prompt (its row number and output row), flushed as it is
    written; a rerun with the same fingerprint keeps those prompts. Removed once FILE is
    written."""

    def __init__(self, out: Path, fp: dict[str, Any]) -> None:
        self.path = out.with_name(f".{out.name}.partial.jsonl")
        self.fp = fp
        self.fh: Any = None

    def load(self) -> dict[int, dict[str, Any]]:
        import json

        if not self.path.is_file():
            return {}
        done: dict[int, dict[str, Any]] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
            if not lines or json.loads(lines[0]).get("fingerprint") != json.loads(
                json.dumps(self.fp)
            ):
                return {}
            for line in lines[1:]:
                rec = json.loads(line)  # a torn last line ends the usable part
                done[int(rec["index"])] = rec["row"]
        except (ValueError, KeyError, TypeError):
            pass
        return done

    def start(self, keep: dict[int, dict[str, Any]]) -> None:
        import json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(
            json.dumps({"fingerprint": self.fp}) + "\n"
            + "".join(json.dumps({"index": i, "row": r}) + "\n" for i, r in sorted(keep.items())),
            encoding="utf-8",
        )  # fmt: skip
        tmp.replace(self.path)
        self.fh = self.path.open("a", encoding="utf-8")

    def append(self, index: int, row: dict[str, Any]) -> None:
        import json
        import os

        self.fh.write(json.dumps({"index": index, "row": row}) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def clear(self) -> None:
        if self.fh is not None:
            self.fh.close()
        self.path.unlink(missing_ok=True)


def run(cfg: Config, args: argparse.Namespace) -> int:
    import json
    import time

    from audit import __version__
    from audit.errors import InputError
    from audit.log import progress
    from audit.mitigations.attack import (
        ATTACK_KIND_SUFFIX,
        REFERENCE,
        AttackSettings,
        attack_success_rate,
        attacker,
    )
    from audit.models import ModelError, load_copy_detector
    from audit.stages.erase import load_pipeline, resolve_device

    t_wall, t_cpu = time.perf_counter(), time.process_time()
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    rows = read_rows(cfg.prompts) if cfg.prompts else finding_rows(cfg.workspace, cfg.finding)
    vocabulary = None
    if cfg.vocabulary:
        vp = Path(cfg.vocabulary)
        if not vp.is_file():
            raise InputError(f"vocabulary file not found: {vp}")
        vocabulary = sorted(set(re.findall(r"[a-z]+", vp.read_text(encoding="utf-8").lower())))
        if len(vocabulary) < 2:
            raise InputError(f"{vp}: needs at least 2 words")
    if cfg.limit:
        rows = rows[: cfg.limit]
    for spec in {cfg.reference, *(r["reference"] for r in rows)} - {"", None}:
        check_reference(spec)
    device = resolve_device(cfg.device)
    erased = load_pipeline(cfg.generator, device, "--generator")
    original = (
        erased
        if cfg.original == cfg.generator
        else load_pipeline(cfg.original, device, "--original")
    )
    try:
        detector = load_copy_detector(cfg.copy_model, size=cfg.copy_size, device=device)
    except ModelError as exc:
        raise InputError(f"--copy-model {cfg.copy_model}: {exc}") from exc
    settings = AttackSettings(
        tokens=cfg.tokens,
        relax=cfg.relax,
        iterations=cfg.iterations,
        timesteps=cfg.timesteps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        sample_steps=cfg.sample_steps,
        guidance=cfg.guidance,
        threshold=cfg.threshold,
        device=device,
    )
    results: list[Any] = []
    out_rows: list[dict[str, Any]] = []
    refs: dict[str, Any] = {}
    partial = Partial(Path(cfg.out), fingerprint(cfg, settings, vocabulary, rows))
    done = partial.load() if cfg.resume else {}
    if done:
        logger.info("resuming: %d of %d prompts finished by an earlier run", len(done), len(rows))
    partial.start(keep=done)
    with attacker(erased, original, detector, settings, vocabulary) as atk:
        n_candidates = len(atk.cand)
        for i, row in enumerate(progress(rows, desc="attack", total=len(rows), unit="prompt")):
            spec = row["reference"] or cfg.reference or None
            seed = row["seed"] if row["seed"] is not None else cfg.seed + i
            if i in done:
                out_rows.append(done[i])
                results.append(types.SimpleNamespace(**done[i]))
                continue
            if spec and spec not in refs:
                refs[spec] = load_reference(spec, atk.size)
            res = atk.attack(row["prompt"], seed, refs.get(spec), row["target_prompt"])
            results.append(res)
            logger.info(
                "%d/%d %s: %r -> %r (similarity %.3f -> %.3f, %d steps)",
                i + 1,
                len(rows),
                "success" if res.success else "failed",
                row["prompt"][:50],
                res.prompt[:60],
                res.similarity_before,
                res.similarity,
                res.steps,
            )
            d = res.to_dict()
            d.pop("losses")
            out_rows.append(
                {
                    "prompt": res.prompt,
                    "finding_id": row["finding_id"],
                    "prompt_kind": row["prompt_kind"] + ATTACK_KIND_SUFFIX,
                    **{k: v for k, v in d.items() if k != "prompt"},
                    "reference": spec,
                    "target_prompt": row["target_prompt"],
                }
            )
            partial.append(i, out_rows[-1])
    asr = attack_success_rate(results)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in out_rows), encoding="utf-8")
    tmp.replace(out)
    summary = {
        "kind": "unlearndiffatk",
        "reference": REFERENCE,
        "generator": cfg.generator,
        "original": cfg.original,
        "prompts": cfg.prompts or None,
        "workspace": cfg.workspace or None,
        "findings": cfg.finding or None,
        "settings": {
            **settings.__dict__,
            "copy_model": cfg.copy_model,
            "copy_size": cfg.copy_size,
            "vocabulary": cfg.vocabulary or None,
            "candidates": n_candidates,
        },
        **asr,
        "seconds": round(time.perf_counter() - t_wall, 3),
        "cpu_seconds": round(time.process_time() - t_cpu, 3),
        "laion_audit": __version__,
    }
    summary["resumed_prompts"] = len(done)
    summary_path = out.with_name(out.stem + ".summary.json")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    partial.clear()
    logger.info(
        "ASR before %.2f [%.2f, %.2f], after %.2f [%.2f, %.2f] over %d prompts -> %s",
        asr["asr_before"],
        *asr["ci_before"],
        asr["asr_after"],
        *asr["ci_after"],
        asr["n"],
        out,
    )
    return 0
