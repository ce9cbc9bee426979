"""The report's "Mitigations" section: every reproduce run of the workspace (the main run and
the runs recorded under ``generations/runs/``, see ``audit.mitigations.runs``) side by side.

A *column* is one way of generating: the model (the audited one, another one, or one erased by
``laion-audit erase``), with or without SLD safety guidance or a negative prompt, and the
prompts as written or as ``laion-audit attack`` rewrote them (UnlearnDiffAtk). A *row* is one
prompt of a finding (an adversarial prompt sits in the row of the prompt it was made from). A
cell is that prompt's replication rate in that column, with its Wilson 95% interval, from the
run that generated it (the one with the most generations when several did). Control prompts
are not rows: their zero-shot accuracy per column is what a fix costs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SLD_ORDER = ("weak", "medium", "strong", "max")
NOT_RUN_NOTE = (
    "No mitigation measured yet. Erase a concept (laion-audit erase), attack the erased model "
    "(laion-audit attack), then run laion-audit reproduce WS --generator ERASED, --prompts "
    "ADV.jsonl or --safety sld:PRESET: each such run is recorded under generations/runs/ and "
    "compared here with the main run, prompt by prompt."
)


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _i(x: Any) -> int | None:
    v = _f(x)
    return None if v is None else int(v)


def _s(x: Any) -> str | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    s = str(x).strip()
    return s or None


def _describe(meta: dict[str, Any]) -> dict[str, Any]:
    """A run's mitigation record; runs written before the record existed are described from
    their settings (no erase card or attack summary then)."""
    m = dict(meta.get("mitigation") or {})
    settings = meta.get("settings") or {}
    m.setdefault("generator", meta.get("generator") or settings.get("generator"))
    m.setdefault("safety", settings.get("safety"))
    m.setdefault("safety_concept", settings.get("safety_concept"))
    m.setdefault("negative_prompt", settings.get("negative_prompt"))
    return m


def _column(run_main_generator: str | None, m: dict[str, Any], attacked: bool) -> dict[str, Any]:
    """The column a run's rows of one kind (attacked or not) belong to."""
    erase = m.get("erase") or None
    gen = str(m.get("generator") or "?")
    safety = m.get("safety") or None
    neg = m.get("negative_prompt") or None
    if erase:
        method = str(erase.get("method") or "esd")
        method = "ESD" + method[3:] if method.lower().startswith("esd") else method
        model = f"{method} “{erase.get('concept')}”"
        model_kind = "erased"
    elif run_main_generator is None or gen == run_main_generator:
        model, model_kind = "original", "original"
    else:
        model, model_kind = gen.rstrip("/").split("/")[-1], "other"
    parts = [] if (model_kind == "original" and (safety or neg)) else [model]
    preset = str(safety).split(":", 1)[-1] if safety else None
    if safety:
        parts.append(f"SLD {preset}")
    if neg:
        parts.append("negative prompt")
    if attacked:
        parts.append("UnlearnDiffAtk")
    key = "|".join(
        [
            f"{'erased' if erase else 'model'}:{(erase or {}).get('path') or gen}",
            safety or "",
            (m.get("safety_concept") or "") if safety else "",
            neg or "",
            "attack" if attacked else "",
        ]
    )
    order = (
        {"original": 0, "erased": 2, "other": 6}[model_kind]
        + (1 if attacked else 0)
        + (4 if safety else 0)
        + (5 if neg else 0)
    )
    return {
        "key": key,
        "label": " + ".join(parts),
        "model": model_kind,
        "generator": gen,
        "erased_concept": (erase or {}).get("concept"),
        "erase_method": (erase or {}).get("method"),
        "safety": safety,
        "safety_concept": m.get("safety_concept") if safety else None,
        "negative_prompt": neg,
        "attacked": attacked,
        "_order": (order, SLD_ORDER.index(preset) if preset in SLD_ORDER else 9),
        "runs": [],
    }


def mitigations_section(ws: Any, limits: Any) -> dict[str, Any]:
    """The section's numbers (see docs/report_schema.md, ``mitigations``)."""
    from audit.mitigations.runs import ATTACK_SUFFIX, CONTROL_KIND, list_runs
    from detectors import memorization as mem
    from detectors.stats import wilson_interval

    runs = list_runs(ws)
    if not any(r.label for r in runs):
        return {"status": "not_run", "stage": "erase / attack / reproduce", "note": NOT_RUN_NOTE}
    main = next((r for r in runs if r.label is None), None)
    main_gen = _describe(main.meta).get("generator") if main is not None else None
    if main_gen is None:  # no main run: the most common unerased generator is "the original"
        gens = [
            _describe(r.meta).get("generator") for r in runs if not _describe(r.meta).get("erase")
        ]
        main_gen = max(set(gens), key=gens.count) if gens else None
    columns: dict[str, dict[str, Any]] = {}
    cells: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    controls: dict[str, dict[str, tuple]] = {}
    run_rows = []
    attacks = []
    for run in runs:
        m = _describe(run.meta)
        df = run.table
        share = _f((run.meta.get("triage") or {}).get("min_copy_share"))
        share = mem.DEFAULT_MIN_COPY_SHARE if share is None else share
        originals = {a["prompt_id"]: a for a in ((m.get("attack") or {}).get("prompts") or []) if a}
        used: set[str] = set()
        for r in df.to_dict("records"):
            n = _i(r.get("n")) or 0
            if n <= 0 or (r.get("generated") is not None and not _gen(r.get("generated"))):
                continue
            kind = str(r["prompt_kind"])
            attacked = kind.endswith(ATTACK_SUFFIX)
            col = _column(main_gen, m, attacked)
            columns.setdefault(col["key"], col)
            if run.name not in columns[col["key"]]["runs"]:
                columns[col["key"]]["runs"].append(run.name)
            used.add(col["key"])
            if kind == CONTROL_KIND:  # one run's numbers per control prompt and column
                zn, zk = _i(r.get("zero_shot_n")) or 0, _i(r.get("zero_shot_correct")) or 0
                have = controls.setdefault(col["key"], {}).get(str(r["prompt"]))
                if zn and (have is None or zn > have[0]):
                    controls[col["key"]][str(r["prompt"])] = (
                        zn,
                        zk,
                        n,
                        _i(r.get("n_copies")) or 0,
                        _s(r.get("keyword")),
                    )
                continue
            if attacked:
                a = originals.get(str(r.get("prompt_id"))) or {}
                base_kind = kind[: -len(ATTACK_SUFFIX)]
                base_prompt = a.get("original_prompt") or _strip_tokens(str(r["prompt"]), m)
            else:
                base_kind, base_prompt, a = kind, str(r["prompt"]), {}
            k = _i(r.get("n_copies"))
            if k is None:
                k = int(round((_f(r.get("replication_rate")) or 0.0) * n))
            cell = {
                "run": run.name,
                "n": n,
                "n_copies": k,
                "replication_rate": _f(r.get("replication_rate")),
                "ci_low": _f(r.get("ci_low")),
                "ci_high": _f(r.get("ci_high")),
                "replicates": bool(mem.replicates(k, n, share)),
                "prompt": str(r["prompt"]) if attacked else None,
                "attack_success": a.get("success") if attacked else None,
            }
            key = (str(r["finding_id"]), base_kind, base_prompt)
            have = cells.setdefault(key, {}).get(col["key"])
            if have is None or n > have["n"]:
                cells[key][col["key"]] = cell
        if m.get("attack"):
            att = m["attack"]
            attacks.append(
                {
                    "run": run.name,
                    "column": _column(main_gen, m, True)["label"],
                    **{
                        k: att.get(k)
                        for k in (
                            "n",
                            "asr_before",
                            "ci_before",
                            "asr_after",
                            "ci_after",
                            "successes_before",
                            "successes_after",
                            "original",
                            "generator",
                            "settings",
                            "file",
                        )  # fmt: skip
                    },
                }
            )
        settings = run.meta.get("settings") or {}
        run_rows.append(
            {
                "run": run.name,
                "main": run.label is None,
                "columns": [
                    columns[c]["label"] for c in sorted(used, key=lambda c: columns[c]["_order"])
                ],
                "generator": m.get("generator"),
                "erase": m.get("erase"),
                "attack_file": (m.get("attack") or {}).get("file"),
                "safety": m.get("safety"),
                "safety_concept": m.get("safety_concept"),
                "negative_prompt": m.get("negative_prompt"),
                "prompts_from": m.get("prompts_from"),
                "n": _i(run.meta.get("n")),
                "seed_offset": _i(run.meta.get("seed_offset")),
                "steps": _i(settings.get("steps")),
                "guidance": _f(settings.get("guidance")),
                "size": [settings.get("width"), settings.get("height")],
                "n_prompts": _i(run.meta.get("n_generated_prompts")),
                "copy_threshold": _f(run.meta.get("copy_threshold")),
                "copy_space": (run.meta.get("space") or {}).get("column", "image_emb"),
                "written": _f(run.meta.get("written")),
                "path": _rel(ws, run.generations_dir),
            }
        )
    order = sorted(columns, key=lambda c: (columns[c]["_order"], columns[c]["label"]))
    original = next((c for c in order if columns[c]["model"] == "original"
                     and not columns[c]["safety"] and not columns[c]["negative_prompt"]
                     and not columns[c]["attacked"]), None)  # fmt: skip
    rows = []
    for (fid, kind, prompt), cs in cells.items():
        if not any(c != original for c in cs):
            continue  # measured by the original only: nothing to compare
        base = cs.get(original) if original else None
        rows.append(
            {
                "finding_id": fid,
                "prompt_kind": kind,
                "prompt": prompt,
                "best": False,
                "cells": [{"column": c, **cs[c]} for c in order if c in cs],
                "_rate": (base or {}).get("replication_rate") or -1.0,
            }
        )
    finding_rate: dict[str, float] = {}
    for r in rows:
        finding_rate[r["finding_id"]] = max(finding_rate.get(r["finding_id"], -1.0), r["_rate"])
    rows.sort(key=lambda r: (-finding_rate[r["finding_id"]], r["finding_id"], -r["_rate"],
                             r["prompt_kind"], r["prompt"]))  # fmt: skip
    seen: set[str] = set()
    for r in rows:
        if r["finding_id"] not in seen and original in cells_of(r):
            r["best"] = True  # the finding's prompt the original model copies most
        seen.add(r["finding_id"])
        del r["_rate"]
    costs = {c: [sum(v[i] for v in by.values()) for i in range(4)] for c, by in controls.items()}
    cost_labels = {
        c: {str(v[4]).lower() for v in by.values() if v[4]} for c, by in controls.items()
    }
    cost_out: list[dict[str, Any]] = []
    base_acc = None
    if original in costs and costs[original][0]:
        base_acc = costs[original][1] / costs[original][0]
    for c in order:
        if c not in costs:
            continue
        zn, zk, n, copies = costs[c]
        lo, hi = wilson_interval(zk, zn) if zn else (None, None)
        acc = zk / zn if zn else None
        cost_out.append(
            {
                "column": c,
                "n": zn,
                "correct": zk,
                "accuracy": acc,
                "ci_low": _f(lo),
                "ci_high": _f(hi),
                "change": (acc - base_acc) if acc is not None and base_acc is not None else None,
                "n_concepts": len(cost_labels.get(c, ())),
                "copy_rate": copies / n if n else None,
            }
        )
    differences = []
    for field in ("n", "seed_offset", "steps", "guidance", "size", "copy_threshold", "copy_space"):
        if len({repr(r[field]) for r in run_rows}) > 1:
            differences += [
                {"setting": field, "run": r["run"], "value": r[field]} for r in run_rows
            ]
    return {
        "status": "ok",
        "original": original,
        "columns": [{k: v for k, v in columns[c].items() if k != "_order"} for c in order],
        "n_rows_total": len(rows),
        "rows": rows[: limits.prompts],
        "costs": cost_out,
        "cost_measure": "zero-shot accuracy of the control prompts' generations with the "
        "workspace's CLIP model among the run's control concepts ('a photo of a {concept}')",
        "attacks": attacks,
        "runs": run_rows,
        "differences": differences,
    }


def cells_of(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A row's cells by column key."""
    return {c["column"]: c for c in row.get("cells") or []}


def costs_of(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The section's costs by column key."""
    return {c["column"]: c for c in section.get("costs") or []}


def _gen(x: Any) -> bool:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return True
    return bool(x)


def _strip_tokens(prompt: str, m: dict[str, Any]) -> str:
    """An adversarial prompt without its leading tokens (when the attack's record is gone)."""
    k = _i(((m.get("attack") or {}).get("settings") or {}).get("tokens")) or 3
    return " ".join(prompt.split()[k:])


def _rel(ws: Any, path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ws.root.resolve()))
    except ValueError:
        return str(path)


def best_prompt_rates(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Per finding, its best prompt's cells (for the figure)."""
    return [r for r in section.get("rows", []) if r.get("best")]


__all__ = ["NOT_RUN_NOTE", "best_prompt_rates", "cells_of", "costs_of", "mitigations_section"]
