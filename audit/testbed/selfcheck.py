"""The testbed checks itself: does a real copy detector agree with its duplicate truth?

:func:`copy_check` embeds every decodable served image of a testbed with the SSCD copy
descriptor (``audit.models.load_copy_detector``) and compares the truth's two kinds of pairs:

- *distinct* pairs: two rows the truth puts in different ``dup_group`` s (or none). Their
  most similar ones (99.99th percentile, max) must stay below the copy threshold (0.5), or the
  truth calls "distinct" what a person and a detector call a copy;
- *planted* pairs: two rows of one ``dup_group`` (exact, near or work copies), and every work
  copy against the canonical work (``draw.draw_work``). Their least similar ones (5th
  percentile, min) should stay above it.

It also draws a contact sheet (:func:`contact_sheet`) of the closest distinct and the farthest
planted pairs, so a person can look at what the numbers mean.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from audit.testbed import draw

logger = logging.getLogger(__name__)

SHEET_NAME = "testbed_pairs.png"
COPY_THRESHOLD = 0.5
_SHOW = 20  # pairs of each kind on the contact sheet and in testbed.json


def _load(path: Path) -> Image.Image | None:
    """The served image, or None when it does not decode (broken rows)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError):
        return None


def _top_distinct(
    emb: np.ndarray, groups: np.ndarray, k: int, block: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The ``k`` most similar pairs (i < j) with different groups: (cosines, i, j) sorted by
    decreasing cosine, the number of such pairs and how many reach COPY_THRESHOLD. A blocked
    matmul: n ~ 6,000 is 18 M pairs, well within reach of an exact scan."""
    n = len(emb)
    best_v = np.zeros(0, np.float32)
    best_i = np.zeros(0, np.int64)
    best_j = np.zeros(0, np.int64)
    total = above = 0
    for s in range(0, n, block):
        e = min(n, s + block)
        sims = emb[s:e] @ emb[s:].T  # rows s..e against columns s..n
        ii = np.arange(s, e)[:, None]
        jj = np.arange(s, n)[None, :]
        ok = (jj > ii) & (groups[s:e, None] != groups[None, s:])
        total += int(ok.sum())
        above += int((ok & (sims >= COPY_THRESHOLD)).sum())
        vals = np.where(ok, sims, -np.inf).ravel()
        kk = min(k, vals.size)
        idx = np.argpartition(-vals, kk - 1)[:kk] if kk else np.zeros(0, np.int64)
        idx = idx[np.isfinite(vals[idx])]
        bi, bj = np.divmod(idx, n - s)
        best_v = np.concatenate([best_v, vals[idx].astype(np.float32)])
        best_i = np.concatenate([best_i, bi + s])
        best_j = np.concatenate([best_j, bj + s])
        if best_v.size > k:
            keep = np.argpartition(-best_v, k - 1)[:k]
            best_v, best_i, best_j = best_v[keep], best_i[keep], best_j[keep]
    order = np.argsort(-best_v, kind="stable")
    return best_v[order], best_i[order], best_j[order], total, above


def _upper_quantile(top: np.ndarray, total: int, q: float) -> float:
    """``np.quantile(all, q)`` (linear interpolation) from the sorted-descending top values of
    ``total`` values; ``top`` must hold every value ranked above the quantile."""
    pos = q * (total - 1)  # ascending rank
    lo = int(np.floor(pos))
    hi = min(lo + 1, total - 1)
    a, b = top[total - 1 - lo], top[total - 1 - hi]  # descending index of ascending ranks
    return float(a + (b - a) * (pos - lo))


def _low_stats(v: np.ndarray) -> dict[str, Any]:
    """Pair count, min, 5th percentile and mean of planted-pair cosines."""
    if v.size == 0:
        return {"pairs": 0}
    return {
        "pairs": int(v.size),
        "min": round(float(v.min()), 4),
        "p5": round(float(np.quantile(v, 0.05)), 4),
        "mean": round(float(v.mean()), 4),
    }


def copy_check(
    out_dir: str | Path,
    *,
    detector: Any = None,
    model: str = "sscd",
    input_size: int | None = None,
    sheet: str | Path | None = None,
    image_size: int = 64,
) -> dict[str, Any] | None:
    """Embed the testbed in ``out_dir`` with the copy descriptor and measure how far its truth
    is from the detector's view (see the module docstring). Returns the summary written under
    ``copy_check`` in testbed.json, or None (with a warning) when the detector cannot be loaded.

    ``detector``: an already loaded one (else ``load_copy_detector(model, input_size)``, the
    project's default input size when None); ``sheet``: where to draw the contact sheet (default
    ``out_dir/testbed_pairs.png``); ``image_size``: the testbed's drawing size (the canonical
    works are drawn at it).
    """
    from audit.models import DEFAULT_COPY_SIZE, ModelError, load_copy_detector

    out = Path(out_dir)
    t0 = time.perf_counter()
    if detector is None:
        try:
            detector = load_copy_detector(model, input_size or DEFAULT_COPY_SIZE)
        except ModelError as exc:
            logger.warning("testbed copy check skipped: %s", exc)
            return None
    truth = pq.read_table(out / "truth.parquet").to_pylist()
    rows, imgs = [], []
    for t in truth:
        if t["served_sha256"] is None:
            continue
        im = _load(out / "files" / t["file_name"])
        if im is not None:
            rows.append(t)
            imgs.append(im)
    emb = detector.embed(imgs).astype(np.float32)
    n = len(rows)
    groups = np.array(
        [t["dup_group"] if t["dup_group"] is not None else -1 - i for i, t in enumerate(rows)],
        np.int64,
    )
    n_groups = len(set(groups.tolist()))
    total_pairs = n * (n - 1) // 2
    n_distinct_est = total_pairs - sum(
        c * (c - 1) // 2 for c in np.unique(groups, return_counts=True)[1]
    )
    k = max(_SHOW, int(np.ceil(1e-4 * n_distinct_est)) + 2)
    top_v, top_i, top_j, n_distinct, n_above = _top_distinct(emb, groups, k)

    distinct: dict[str, Any] = {"pairs": n_distinct}
    if n_distinct:
        distinct.update(
            max=round(float(top_v[0]), 4),
            p9999=round(_upper_quantile(top_v, n_distinct, 0.9999), 4),
            above_threshold=n_above,
        )

    # planted pairs: every pair inside a dup_group, and work copies vs the canonical work
    members: dict[int, list[int]] = {}
    for i, t in enumerate(rows):
        if t["dup_group"] is not None:
            members.setdefault(int(t["dup_group"]), []).append(i)
    pa_i, pa_j, kinds = [], [], []
    for idx in members.values():
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                pa_i.append(idx[a])
                pa_j.append(idx[b])
                kinds.append(rows[idx[a]]["dup_kind"])
    planted_v = (
        np.einsum("ij,ij->i", emb[pa_i], emb[pa_j]) if pa_i else np.zeros(0, np.float32)
    ).astype(np.float32)
    work_ids = sorted({t["work_id"] for t in rows if t["work_id"]})
    work_imgs = {w: draw.draw_work(w, size=image_size) for w in work_ids}
    work_emb = (
        dict(zip(work_ids, detector.embed([work_imgs[w] for w in work_ids]).astype(np.float32)))
        if work_ids
        else {}
    )
    wi = [i for i, t in enumerate(rows) if t["work_id"]]
    work_v = np.array([float(emb[i] @ work_emb[rows[i]["work_id"]]) for i in wi], np.float32)
    kinds_arr = np.array(kinds, dtype=object)
    planted_all = np.concatenate([planted_v, work_v])
    planted = _low_stats(planted_all)
    by_kind = {kind: _low_stats(planted_v[kinds_arr == kind]) for kind in sorted(set(kinds))}
    by_kind["work_vs_canonical"] = _low_stats(work_v)
    # copies vs their near-dup original, by edit: which benchmark edits the detector misses
    by_edit: dict[str, list[float]] = {}
    for idx in members.values():
        src = [i for i in idx if rows[i]["transform"] == "original"]
        if not src:
            continue
        for i in idx:
            if i != src[0]:
                for kind in str(rows[i]["transform"]).split("+"):
                    name = kind.split(":")[0]
                    if name != "upscale":  # every copy is edited at >= COPY_MIN_SIDE
                        by_edit.setdefault(name, []).append(float(emb[i] @ emb[src[0]]))
    planted["by_kind"] = by_kind
    planted["near_vs_original_by_edit"] = {
        k: {"n": len(v), "min": round(min(v), 4), "mean": round(float(np.mean(v)), 4)}
        for k, v in sorted(by_edit.items())
    }

    # the worst planted pairs (low cosine) for the sheet and the json
    cand: list[tuple[float, Any, Any, str]] = []
    for v, i, j, kind in zip(planted_v.tolist(), pa_i, pa_j, kinds, strict=True):
        cand.append((v, i, j, kind))
    for v, i in zip(work_v.tolist(), wi, strict=True):
        cand.append((v, i, ("work", rows[i]["work_id"]), "work_vs_canonical"))
    cand.sort(key=lambda c: c[0])
    far = cand[:_SHOW]
    close = list(zip(top_v[:_SHOW].tolist(), top_i[:_SHOW].tolist(), top_j[:_SHOW].tolist()))

    def label(i: Any) -> str:
        if isinstance(i, tuple):
            return f"work:{i[1]}"
        return str(rows[i]["key"])

    def image(i: Any) -> Image.Image:
        return work_imgs[i[1]] if isinstance(i, tuple) else imgs[i]

    def desc(i: Any) -> str:
        if isinstance(i, tuple):
            return f"canonical {i[1]}"
        t = rows[i]
        if t["work_id"]:
            return f"{t['work_id']} {t['transform']}"
        what = f"{t['colour']} {t['concept']}, {t['style']}, {t['background']}"
        return what + (f" [{t['transform']}]" if t["transform"] else "")

    sheet_path = Path(sheet) if sheet is not None else out / SHEET_NAME
    contact_sheet(
        sheet_path,
        [(image(i), image(j), f"{v:.3f} {desc(i)} | {desc(j)}") for v, i, j in close],
        [(image(i), image(j), f"{v:.3f} {desc(i)} | {desc(j)}") for v, i, j, _ in far],
        titles=(
            f"closest DISTINCT pairs (truth: different images), SSCD cosine; "
            f"max {distinct.get('max', float('nan')):.3f}",
            f"farthest PLANTED pairs (truth: copies), SSCD cosine; "
            f"min {planted.get('min', float('nan')):.3f}",
        ),
    )
    seconds = time.perf_counter() - t0
    result = {
        "model": getattr(detector, "name", model),
        "input_size": getattr(detector, "size", None),
        "threshold": COPY_THRESHOLD,
        "images": n,
        "groups": n_groups,
        "distinct": distinct,
        "planted": planted,
        "separated": bool(
            n_distinct and planted.get("pairs") and distinct["p9999"] < planted["p5"]
        ),
        "closest_distinct": [
            {"a": label(i), "b": label(j), "cosine": round(v, 4)} for v, i, j in close
        ],
        "farthest_planted": [
            {"a": label(i), "b": label(j), "kind": kind, "cosine": round(v, 4)}
            for v, i, j, kind in far
        ],
        "sheet": str(sheet_path),
    }
    logger.info(
        "testbed copy check (%s, %d images): distinct pairs p99.99 %.3f max %.3f; planted pairs "
        "p5 %.3f min %.3f; contact sheet %s (%.0f s)",
        result["model"],
        n,
        distinct.get("p9999", float("nan")),
        distinct.get("max", float("nan")),
        planted.get("p5", float("nan")),
        planted.get("min", float("nan")),
        sheet_path,
        seconds,
    )
    return result


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(
    path: str | Path,
    first: Sequence[tuple[Image.Image, Image.Image, str]],
    second: Sequence[tuple[Image.Image, Image.Image, str]],
    *,
    titles: tuple[str, str] = ("", ""),
    tile: int = 96,
    per_row: int = 4,
) -> Path:
    """A PNG of two sections of image pairs, each pair side by side (upscaled to ``tile`` px,
    nearest neighbour so pixels stay visible) over a label line."""
    font, small = _font(14), _font(10)
    pair_w, label_h, gap = 2 * tile + 4, 26, 10
    cell_w, cell_h = pair_w + gap, tile + label_h + gap
    width = per_row * cell_w + gap
    sections = [(titles[0], list(first)), (titles[1], list(second))]
    height = gap
    for _, pairs in sections:
        height += 24 + max(1, -(-len(pairs) // per_row)) * cell_h
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    y = gap
    for title, pairs in sections:
        d.text((gap, y), title, fill=(0, 0, 0), font=font)
        y += 24
        for k, (a, b, text) in enumerate(pairs):
            x0 = gap + (k % per_row) * cell_w
            y0 = y + (k // per_row) * cell_h
            for m, im in enumerate((a, b)):
                im = im.convert("RGB")
                s = tile / max(im.size)
                im = im.resize(
                    (max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.NEAREST
                )
                sheet.paste(im, (x0 + m * (tile + 4), y0))
            words = text.split(" | ")
            d.text((x0, y0 + tile + 1), words[0][:44], fill=(0, 0, 0), font=small)
            if len(words) > 1:
                d.text((x0, y0 + tile + 13), "| " + words[1][:42], fill=(0, 0, 0), font=small)
        y += max(1, -(-len(pairs) // per_row)) * cell_h
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=True)
    p.write_bytes(buf.getvalue())
    return p
