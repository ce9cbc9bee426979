"""Report figures with matplotlib (object API on the Agg canvas: no pyplot, no display, no
global state). Every function takes numbers from report.json and writes one PNG; it returns
``False`` (and writes nothing) when there is nothing to plot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RED = "#c0392b"
BLUE = "#2e6da4"
GREY = "#95a5a6"
KIND_COLOURS = {"exact": "#8e44ad", "near": BLUE, "caption": "#e67e22"}


def _figure(width: float = 6.0, height: float = 3.0) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _save(fig: Any, path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight", pad_inches=0.05)
    return True


def status_bars(counts: dict[str, int], path: Path) -> bool:
    """Samples per status (horizontal bars, ok in blue, failures in red)."""
    if not counts:
        return False
    names = list(counts)[::-1]
    values = [counts[n] for n in names]
    fig = _figure(6, 0.45 * len(names) + 0.9)
    ax = fig.subplots()
    ax.barh(names, values, color=[BLUE if n == "ok" else RED for n in names])
    for i, v in enumerate(values):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    ax.set_xlabel("samples")
    ax.set_xlim(0, max(values) * 1.15)
    ax.set_title("Samples by status", fontsize=10)
    return _save(fig, path)


def group_size_histogram(by_kind: dict[str, Any], path: Path) -> bool:
    """Number of duplicate groups per group size, one bar series per kind (log y)."""
    kinds = [k for k, v in by_kind.items() if v.get("size_histogram")]
    if not kinds:
        return False
    fig = _figure(6, 2.8)
    ax = fig.subplots()
    sizes = sorted({int(s) for k in kinds for s in by_kind[k]["size_histogram"]})
    width = 0.8 / len(kinds)
    pos = {s: i for i, s in enumerate(sizes)}
    for j, k in enumerate(kinds):
        hist = by_kind[k]["size_histogram"]
        xs = [pos[int(s)] + (j - (len(kinds) - 1) / 2) * width for s in hist]
        ax.bar(xs, list(hist.values()), width=width, label=k, color=KIND_COLOURS.get(k, GREY))
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes], fontsize=8)
    ax.set_xlabel("group size (images)")
    ax.set_ylabel("groups")
    if max(max(by_kind[k]["size_histogram"].values()) for k in kinds) > 30:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Duplicate groups by size", fontsize=10)
    return _save(fig, path)


def concept_frequencies(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Word frequency vs semantic frequency per concept (log-log), sparse concepts in red."""
    pts = [r for r in rows if r.get("word_freq") is not None and r.get("semantic_freq") is not None]
    if not pts:
        return False
    positive = [v for r in pts for v in (r["word_freq"], r["semantic_freq"]) if v > 0]
    floor = min(positive) / 3 if positive else 1e-4
    fig = _figure(5.2, 4.0)
    ax = fig.subplots()
    for sparse, colour, label in ((False, BLUE, "not sparse"), (True, RED, "sparse")):
        sel = [r for r in pts if bool(r["sparse"]) == sparse]
        if sel:
            ax.scatter(
                [max(r["word_freq"], floor) for r in sel],
                [max(r["semantic_freq"], floor) for r in sel],
                s=18,
                color=colour,
                label=label,
            )
    for r in pts[:12]:
        ax.annotate(
            r["concept"],
            (max(r["word_freq"], floor), max(r["semantic_freq"], floor)),
            fontsize=7,
            xytext=(3, 2),
            textcoords="offset points",
        )
    lo = min(min(max(r["word_freq"], floor), max(r["semantic_freq"], floor)) for r in pts)
    hi = max(max(r["word_freq"], r["semantic_freq"]) for r in pts)
    ax.plot([lo, hi], [lo, hi], color=GREY, lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("word frequency (share of captions)")
    ax.set_ylabel("semantic frequency")
    ax.legend(fontsize=8)
    ax.set_title("Concept sparsity", fontsize=10)
    return _save(fig, path)


def cluster_sizes(
    keyword: str, clusters: Sequence[dict[str, Any]], sizes: Sequence[int], path: Path
) -> bool:
    """Cluster sizes of one keyword in rank order; flagged clusters in red."""
    if not sizes:
        return False
    flagged = {c["cluster_rank"]: c["flagged"] for c in clusters}
    n = min(len(sizes), 30)
    fig = _figure(max(3.0, 0.25 * n + 1.5), 2.3)
    ax = fig.subplots()
    ax.bar(range(n), list(sizes)[:n], color=[RED if flagged.get(i) else BLUE for i in range(n)])
    step = max(1, n // 10)
    ax.set_xticks(range(0, n, step))
    ax.set_xlabel("cluster rank (largest first)")
    ax.set_ylabel("images")
    ax.set_title(f'"{keyword}": cluster sizes', fontsize=10)
    return _save(fig, path)


def object_rates(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Object rate inside each keyword's images with its 95% interval, the rate outside the
    keyword, and the flag threshold."""
    rows = [r for r in rows if r.get("image_rate") is not None][:20]
    if not rows:
        return False
    fig = _figure(6, 0.4 * len(rows) + 1.2)
    ax = fig.subplots()
    labels = [f'{r["object"]} in "{r["keyword"]}"' for r in rows][::-1]
    for i, r in enumerate(rows[::-1]):
        rate = r["image_rate"]
        lo = r["ci_low"] if r["ci_low"] is not None else rate
        hi = r["ci_high"] if r["ci_high"] is not None else rate
        colour = RED if r["flagged"] else BLUE
        ax.errorbar([rate], [i], xerr=[[rate - lo], [hi - rate]], fmt="o", color=colour, capsize=3)
        if r.get("outside_rate") is not None:
            ax.plot([r["outside_rate"]], [i], marker="|", color="black", ms=12)
        if r.get("threshold") is not None:
            ax.plot([r["threshold"]], [i], marker="x", color=GREY, ms=6)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(
        "share of images with the object (dot: rate, bar: 95% interval; "
        "|: outside the keyword; x: threshold)",
        fontsize=7,
    )
    ax.set_title("Object-level replication", fontsize=10)
    return _save(fig, path)


def score_histogram(
    hist: dict[str, Any],
    path: Path,
    title: str = "Combined poison score",
    xlabel: str = "combined score",
) -> bool:
    """Histogram of a score for all candidates and for the flagged ones (from report.json
    bin edges and counts)."""
    all_h = hist.get("all") or {}
    if not all_h.get("counts"):
        return False
    edges = all_h["edges"]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    fig = _figure(6, 2.5)
    ax = fig.subplots()
    ax.bar(edges[:-1], all_h["counts"], width=widths, align="edge", color=GREY, label="all")
    fl = hist.get("flagged") or {}
    if fl.get("counts"):
        ax.bar(
            fl["edges"][:-1], fl["counts"], width=widths, align="edge", color=RED, label="flagged"
        )
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def replication_rates(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Replication rate per prompt with its Wilson 95% interval."""
    rows = [r for r in rows if r.get("replication_rate") is not None][:30]
    if not rows:
        return False
    fig = _figure(7, 0.32 * len(rows) + 1.2)
    ax = fig.subplots()
    labels = []
    for i, r in enumerate(rows[::-1]):
        rate = r["replication_rate"]
        lo = r["ci_low"] if r["ci_low"] is not None else rate
        hi = r["ci_high"] if r["ci_high"] is not None else rate
        ax.errorbar(
            [rate],
            [i],
            xerr=[[max(rate - lo, 0)], [max(hi - rate, 0)]],
            fmt="o",
            color=RED if r.get("replicates", lo > 0) else BLUE,
            capsize=3,
        )
        prompt = r["prompt"] if len(r["prompt"]) <= 48 else r["prompt"][:45] + "..."
        labels.append(f"{r['prompt_kind']}: {prompt}")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("replication rate with 95% CI\n(share of seeds that copy the training cluster)")
    ax.set_title("Reproduction: replication rate per prompt", fontsize=10)
    return _save(fig, path)


def similarity_histogram(hist: dict[str, Any], threshold: float | None, path: Path) -> bool:
    """Best similarity of each generation to the finding's training cluster."""
    if not hist or not hist.get("counts"):
        return False
    edges = hist["edges"]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    fig = _figure(3.6, 2.0)
    ax = fig.subplots()
    ax.bar(
        edges[:-1],
        hist["counts"],
        width=widths,
        align="edge",
        color=[RED if threshold is not None and a >= threshold else BLUE for a in edges[:-1]],
    )
    if threshold is not None:
        ax.axvline(threshold, color="black", lw=0.8, ls="--")
    ax.set_xlabel("similarity to nearest training image", fontsize=8)
    ax.set_ylabel("generations", fontsize=8)
    ax.tick_params(labelsize=7)
    return _save(fig, path)


def stage_timings(stages: Sequence[dict[str, Any]], path: Path) -> bool:
    """Seconds per stage."""
    stages = [s for s in stages if s.get("seconds") is not None]
    if not stages:
        return False
    fig = _figure(6, 0.35 * len(stages) + 1.0)
    ax = fig.subplots()
    names = [s["stage"] for s in stages][::-1]
    secs = [s["seconds"] for s in stages][::-1]
    ax.barh(names, secs, color=BLUE)
    for i, v in enumerate(secs):
        ax.text(v, i, f" {v:.1f} s", va="center", fontsize=8)
    ax.set_xlim(0, max(secs) * 1.2 or 1)
    ax.set_xlabel("seconds")
    ax.set_title("Stage timings", fontsize=10)
    return _save(fig, path)


def mitigation_rates(
    rows: Sequence[dict[str, Any]], columns: Sequence[dict[str, Any]], path: Path
) -> bool:
    """Per finding, its best prompt's replication rate (Wilson 95% interval) in every column
    (original, erased, erased under attack, SLD presets, ...): one group of bars per finding."""
    cells = [{c["column"]: c for c in r.get("cells") or []} for r in rows]
    rows, cells = [r for r, c in zip(rows, cells) if c][:12], [c for c in cells if c][:12]
    cols = [c for c in columns if any(c["key"] in x for x in cells)]
    if not rows or not cols:
        return False
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    fig = _figure(9.5, 0.3 * len(rows) * len(cols) + 1.4)
    ax = fig.subplots()
    height = 0.8 / len(cols)
    for j, c in enumerate(cols):
        ys, xs, lo, hi = [], [], [], []
        for i, x in enumerate(cells):
            cell = x.get(c["key"])
            if not cell or cell.get("replication_rate") is None:
                continue
            rate = cell["replication_rate"]
            ys.append(len(rows) - 1 - i + (len(cols) - 1 - j - (len(cols) - 1) / 2) * height)
            xs.append(rate)
            lo.append(
                max(rate - (cell.get("ci_low") if cell.get("ci_low") is not None else rate), 0)
            )
            hi.append(
                max((cell.get("ci_high") if cell.get("ci_high") is not None else rate) - rate, 0)
            )
        colour = GREY if c.get("model") == "original" and j == 0 else cmap(j % 10)
        ax.barh(ys, xs, height=height * 0.9, color=colour, label=c["label"])
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="none", ecolor="black", elinewidth=0.7, capsize=2)
        for x, y, h in zip(xs, ys, hi):
            ax.text(x + h + 0.01, y, f"{x:.0%}", va="center", fontsize=7)
    labels = []
    for r in rows[::-1]:
        prompt = r["prompt"] if len(r["prompt"]) <= 36 else r["prompt"][:33] + "..."
        labels.append(f"{r['finding_id']}\n{prompt}")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlim(0, 1.12)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("replication rate, Wilson 95% interval", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Mitigations: each finding's best prompt", fontsize=10)
    return _save(fig, path)
