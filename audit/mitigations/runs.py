"""Reproduce runs side by side: what a run measured (the model as audited, an erased model,
adversarial prompts, safety guidance), where it is recorded, and what a fix costs.

- The **main run**: ``laion-audit reproduce WS`` of an unmitigated model without ``--name``
  writes ``findings/memorization.*`` and ``generations/`` as always.
- A **recorded run**: a run given ``--name LABEL``, or one that measures a mitigation
  (``--safety sld:PRESET``; a ``--generator`` folder written by ``laion-audit erase``, known by
  its ``erase.json``; a ``--prompts`` file written by ``laion-audit attack``), writes everything
  under ``generations/runs/<label>/`` instead: its chunks and images, ``triage.parquet``,
  ``scores.parquet``, ``examples.parquet`` and its own ``memorization.parquet`` / ``.json``. Runs
  never overwrite each other and each resumes on its own. Without ``--name`` a mitigation run is
  labelled from what it measures: ``<generator>+sld-<preset>``, ``<erased folder>``,
  ``<erased folder>+<attack file stem>``.
- A recorded run measures **the main run's prompts**: without ``--prompts`` it generates every
  prompt the main run generated (same finding, kind and text, so the same prompt ids; no triage
  cut); ``--prompts FILE`` adds to them (a file row replaces a prompt of the same finding and
  kind); ``--prompts-mode replace`` uses only the file. A file written by ``laion-audit
  attack`` is measured alone (every adversarial prompt, nothing else). Without a main run a
  recorded run builds its prompts from the findings as a main run would.
- **Control prompts** (``prompt_kind`` ``control``, the concept in ``keyword``, e.g.
  ``{"prompt": "a photo of a dog", "prompt_kind": "control", "keyword": "dog"}``) measure what a
  fix costs: each control generation is classified zero-shot by the workspace's CLIP model among
  the run's control concepts (``"a photo of a {concept}"``); per prompt ``zero_shot_n`` and
  ``zero_shot_correct`` in the run's memorization table.

The report's "Mitigations" section (``audit.report.mitigations``) reads every run.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from audit.workspace import Workspace

logger = logging.getLogger(__name__)

FINDING = "memorization"
RUNS_DIR = "runs"
CONTROL_KIND = "control"
ATTACK_SUFFIX = "+unlearndiffatk"  # audit.mitigations.attack.ATTACK_KIND_SUFFIX
ZERO_SHOT_TEMPLATE = "a photo of a {}"
LABEL_RE = re.compile(r"^(?!main$)[A-Za-z0-9][A-Za-z0-9._+-]{0,79}$")
LABEL_RULE = (
    "letters, digits, '.', '_', '+', '-' (up to 80, not starting with '.', '+', '-'; 'main' "
    "names the main run)"
)


class RunWorkspace(Workspace):
    """The workspace as a recorded run sees it: generations and the memorization finding under
    ``generations/runs/<label>/``; every other finding and the embeddings are the workspace's."""

    def __init__(self, path: str | Path, label: str) -> None:
        super().__init__(path)
        self.label = label

    def __repr__(self) -> str:
        return f"RunWorkspace({str(self.root)!r}, {self.label!r})"

    @property
    def generations_dir(self) -> Path:
        return self.root / "generations" / RUNS_DIR / self.label

    def finding_path(self, name: str) -> Path:
        if name == FINDING:
            return self.generations_dir / f"{name}.parquet"
        return super().finding_path(name)


def runs_root(ws: Workspace) -> Path:
    return ws.root / "generations" / RUNS_DIR


# ---- what a run measures ---------------------------------------------------------------------
def erase_card(generator: str | None) -> dict[str, Any] | None:
    """The ``erase.json`` card of an erased pipeline folder (the fields the report shows), or
    None for any other generator."""
    if not generator:
        return None
    path = Path(generator) / "erase.json"
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("%s is not readable JSON: the generator is not treated as erased", path)
        return None
    s = card.get("settings") or {}
    return {
        "method": card.get("method"),
        "concept": card.get("concept"),
        "generator": card.get("generator"),
        "steps": s.get("steps"),
        "lr": s.get("lr"),
        "eta": s.get("eta"),
        "seed": s.get("seed"),
        "loss_first": card.get("loss_first"),
        "loss_last_mean": card.get("loss_last_mean"),
        "seconds": card.get("seconds"),
        "created": card.get("created"),
        "path": str(Path(generator).resolve()),
    }


def attack_info(prompts: str | None) -> dict[str, Any] | None:
    """What ``laion-audit attack`` wrote, when ``prompts`` is its output: the attack-time ASR
    (``FILE.summary.json``) and, per adversarial prompt, its prompt id (as reproduce reads the
    file), the prompt it was made from and whether the attack succeeded at its seed."""
    if not prompts:
        return None
    path = Path(prompts)
    if path.suffix.lower() not in (".jsonl", ".ndjson") or not path.is_file():
        return None
    from audit.prompts import read_prompt_file

    raw = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                obj = json.loads(line)
            except ValueError:
                return None  # reproduce reports the bad line itself
            raw.append(obj if isinstance(obj, dict) else {})
    parsed = read_prompt_file(path)
    rows = [
        {
            "prompt_id": p.prompt_id,
            "finding_id": p.finding_id,
            "prompt_kind": p.prompt_kind,
            "original_prompt": r.get("original_prompt"),
            "seed": r.get("seed"),
            "success": r.get("success"),
            "success_before": r.get("success_before"),
            "steps": r.get("steps"),
        }
        for p, r in zip(parsed, raw)
        if p.prompt_kind.endswith(ATTACK_SUFFIX) and r.get("original_prompt")
    ]
    if not rows:
        return None
    summary: dict[str, Any] = {}
    spath = path.with_name(path.stem + ".summary.json")
    if spath.is_file():
        try:
            summary = json.loads(spath.read_text())
        except ValueError:
            summary = {}
    keep = ("n", "asr_before", "ci_before", "asr_after", "ci_after", "successes_before",
            "successes_after", "generator", "original", "seconds", "cpu_seconds")  # fmt: skip
    st = summary.get("settings") or {}
    return {
        "file": str(path.resolve()),
        **{k: summary.get(k) for k in keep if k in summary},
        "settings": {
            k: st.get(k)
            for k in ("tokens", "relax", "iterations", "timesteps", "threshold")
            if k in st
        },
        "prompts": rows,
    }


def describe(cfg: Any) -> dict[str, Any]:
    """The mitigation a reproduce run measures (``cfg``: the stage's Config), for its
    ``memorization.json`` (key ``mitigation``)."""
    from pipelines.safety import DEFAULT_SLD_CONCEPT

    erase = erase_card(cfg.generator)
    attack = attack_info(cfg.prompts)
    out = {
        "label": None,
        "generator": cfg.generator,
        "erase": erase,
        "attack": attack,
        "safety": cfg.safety or None,
        "safety_concept": (cfg.safety_concept or DEFAULT_SLD_CONCEPT) if cfg.safety else None,
        "negative_prompt": cfg.negative_prompt or None,
        "prompts_file": str(Path(cfg.prompts).resolve()) if cfg.prompts else None,
        "prompts_from": (
            "prompts file"
            if cfg.prompts and cfg.prompts_mode == "replace"
            else "findings + prompts file"
            if cfg.prompts
            else "findings"
        ),
    }
    out["mitigated"] = bool(erase or attack or cfg.safety)
    return out


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-._")
    return s or "run"


def auto_label(cfg: Any, desc: dict[str, Any]) -> str:
    """The label of a mitigation run without ``--name``: generator (folder) name, attack file
    stem, SLD preset."""
    gen = str(cfg.generator).rstrip("/")
    parts = [_slug(Path(gen).name if Path(gen).exists() else gen.split("/")[-1])]
    if desc.get("attack") and cfg.prompts:
        parts.append(_slug(Path(cfg.prompts).stem))
    if cfg.safety:
        parts.append("sld-" + str(cfg.safety).split(":", 1)[-1])
    return "+".join(parts)[:80]


def main_prompts(ws: Workspace) -> list[dict[str, Any]]:
    """The prompts the main run generated (finding, kind, text, keyword, object), or []."""
    if not ws.has_finding(FINDING):
        return []
    import pyarrow.parquet as pq

    t = pq.read_table(ws.finding_path(FINDING)).to_pandas()
    if "generated" in t.columns:
        t = t[t["generated"].fillna(True).astype(bool)]
    t = t[t["n"].fillna(0).astype(int) > 0]
    out = []
    for r in t.to_dict("records"):
        row = {
            "prompt": r["prompt"],
            "finding_id": r["finding_id"],
            "prompt_kind": r["prompt_kind"],
        }
        for k in ("keyword", "object"):
            if _str(r.get(k)):
                row[k] = str(r[k])
        out.append(row)
    return out


def prepare(ws: Workspace, cfg: Any) -> tuple[Workspace, Any, dict[str, Any]]:
    """Decide where a reproduce run writes and which prompts it measures (module docstring).
    Returns the workspace (a :class:`RunWorkspace` for a recorded run), the config to run with
    and the mitigation record for ``memorization.json``."""
    desc = describe(cfg)
    label = cfg.name or (auto_label(cfg, desc) if desc["mitigated"] else "")
    if not label:
        return ws, cfg, desc
    desc["label"] = label
    view = RunWorkspace(ws.root, label)
    base = main_prompts(ws) if cfg.prompts_mode == "add" and not desc["attack"] else []
    if desc["attack"]:  # an attack's output: exactly its prompts, every one generated
        cfg = replace(cfg, prompts_mode="replace", triage_top=0, triage_per_finding=0)
        desc["prompts_from"] = "prompts file"
    elif base:
        from audit.prompts import read_prompt_file

        user = read_prompt_file(cfg.prompts) if cfg.prompts else []
        override = {(u.finding_id, u.prompt_kind) for u in user}
        rows = [r for r in base if (r["finding_id"], r["prompt_kind"]) not in override]
        rows += [
            {
                "prompt": u.prompt,
                "finding_id": u.finding_id,
                "prompt_kind": u.prompt_kind,
                **({"keyword": u.keyword} if u.keyword else {}),
                **({"object": u.object} if u.object else {}),
            }
            for u in user
        ]
        from audit.workspace import atomic_write_bytes

        path = view.generations_dir / "prompts.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
        cfg = replace(
            cfg, prompts=str(path), prompts_mode="replace", triage_top=0, triage_per_finding=0
        )
        desc["prompts_from"] = "main run" + (" + prompts file" if user else "")
    logger.info(
        "recorded run %r: writes %s (the main run's finding stays as it is); prompts from the %s",
        label,
        view.generations_dir,
        desc["prompts_from"],
    )
    return view, cfg, desc


# ---- what a fix costs: zero-shot accuracy on control prompts ----------------------------------
def control_accuracy(
    ws: Workspace, out: Any, tasks: list, settings: Any, device: str = "cpu"
) -> tuple[Any, dict[str, Any] | None]:
    """Classify the generations of the control prompts zero-shot with the workspace's CLIP
    model among the run's control concepts; adds ``zero_shot_n``, ``zero_shot_correct`` and
    ``zero_shot_accuracy`` to ``out`` (the per-prompt table; 0 / 0 / NaN for other prompts).
    Returns the table and a summary for ``memorization.json`` (None without control prompts)."""
    if "keyword" not in out.columns:
        return out, None
    kw = out["keyword"].map(_str)
    is_ctrl = (out["prompt_kind"] == CONTROL_KIND) & kw.notna()
    if not is_ctrl.any():
        return out, None
    labels = sorted({str(k).strip().lower() for k in kw[is_ctrl]})
    info: dict[str, Any] = {
        "template": ZERO_SHOT_TEMPLATE.format("{concept}"),
        "labels": labels,
        "n_prompts": int(is_ctrl.sum()),
    }
    out = out.copy()
    out["zero_shot_n"] = 0
    out["zero_shot_correct"] = 0
    out["zero_shot_accuracy"] = float("nan")
    if len(labels) < 2:
        info["note"] = "fewer than 2 control concepts: nothing to classify among"
        return out, info
    pids = set(out.loc[is_ctrl & (out["n"] > 0), "prompt_id"])
    table = _chunk_embeddings(
        ws.generations_dir, [t for t in tasks if t.prompt_id in pids], settings
    )
    if table is None:
        info["note"] = "no control generations with CLIP embeddings"
        return out, info
    import pyarrow.compute as pc

    ok = pc.and_(pc.equal(table.column("status"), "ok"), pc.is_valid(table.column("image_emb")))
    table = table.filter(ok)
    flat = table.column("image_emb").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    emb = np.asarray(flat, np.float32).reshape(table.num_rows, -1)
    from audit.models import encode_texts, load_clip

    model_info = ws.model_info()
    name = model_info.get("name") or model_info.get("model")
    model, _, tok = load_clip(str(name), pretrained=model_info.get("pretrained"), device=device)
    text = encode_texts(model, tok, [ZERO_SHOT_TEMPLATE.format(c) for c in labels], device=device)
    pred = np.asarray(labels, dtype=object)[(emb @ text.T).argmax(axis=1)] if len(emb) else []
    truth = dict(zip(out.loc[is_ctrl, "prompt_id"], kw[is_ctrl].str.strip().str.lower()))
    per: dict[str, list[int]] = {}
    for pid, p in zip(table.column("prompt_id").to_pylist(), pred):
        c = per.setdefault(pid, [0, 0])
        c[0] += 1
        c[1] += int(p == truth.get(pid))
    idx = out["prompt_id"].map(lambda p: per.get(p, [0, 0]))
    out["zero_shot_n"] = [int(v[0]) for v in idx]
    out["zero_shot_correct"] = [int(v[1]) for v in idx]
    out["zero_shot_accuracy"] = [v[1] / v[0] if v[0] else float("nan") for v in idx]
    n, k = int(out["zero_shot_n"].sum()), int(out["zero_shot_correct"].sum())
    from detectors.stats import wilson_interval

    lo, hi = wilson_interval(k, n)
    info.update(
        clip=str(name),
        n=n,
        correct=k,
        accuracy=k / n if n else None,
        ci=[float(lo), float(hi)],
    )
    logger.info(
        "control prompts: zero-shot accuracy %d/%d among %d concepts (%s)", k, n, len(labels), name
    )
    return out, info


def _chunk_embeddings(out_root: Path, tasks: list, settings: Any) -> Any:
    """``prompt_id``, ``status`` and ``image_emb`` of the finished chunks of ``tasks`` (those
    written with ``settings``), or None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.reproduce import chunk_paths

    tables = []
    for t in tasks:
        part, marker = chunk_paths(out_root, t)
        if not (part.is_file() and marker.is_file()):
            continue
        try:
            if json.loads(marker.read_text()).get("fingerprint") != settings.fingerprint():
                continue
        except ValueError:
            continue
        cols = ("prompt_id", "status", "image_emb")
        if not set(cols) <= set(pq.read_schema(part).names):
            continue
        tables.append(pq.read_table(part, columns=list(cols)))
    return pa.concat_tables(tables, promote_options="default") if tables else None


# ---- reading the runs back -------------------------------------------------------------------
@dataclass
class Run:
    """One reproduce run of the workspace: the main run (``label`` None) or a recorded one."""

    label: str | None
    table: Any  # pandas: the run's memorization table
    meta: dict[str, Any]
    generations_dir: Path

    @property
    def name(self) -> str:
        return self.label or "main"


def list_runs(ws: Workspace) -> list[Run]:
    """The main run (when ``findings/memorization.parquet`` exists) and every recorded run
    (``generations/runs/*/memorization.parquet`` with its JSON), main first, then by label."""
    import pyarrow.parquet as pq

    runs = []
    if ws.has_finding(FINDING):
        runs.append(
            Run(
                None,
                pq.read_table(ws.finding_path(FINDING)).to_pandas(),
                ws.finding_meta(FINDING),
                ws.generations_dir,
            )
        )
    root = runs_root(ws)
    if root.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            view = RunWorkspace(ws.root, d.name)
            path = view.finding_path(FINDING)
            if not (path.is_file() and path.with_suffix(".json").is_file()):
                continue
            try:
                table = pq.read_table(path).to_pandas()
            except Exception as exc:  # noqa: BLE001 - one broken run must not hide the others
                logger.warning("skipping run %s: unreadable %s (%s)", d.name, path, exc)
                continue
            runs.append(Run(d.name, table, view.finding_meta(FINDING), view.generations_dir))
    return runs


def _str(x: Any) -> str | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    s = str(x).strip()
    return s or None
