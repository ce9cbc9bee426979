"""Render report.json as a self-contained ``index.html``: inline CSS, no scripts, no external
requests; figures and thumbnails are PNG files under ``report/img/`` next to it, so the folder
can be zipped and read offline.

Every section is a ``<section id=...>`` with ``data-status`` ("ok", "not_run", "error"); a
section whose stage has not run says so and names the command that fills it.
"""

from __future__ import annotations

import html
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from audit.report import plots
from audit.report.images import ShardIndex, open_path, thumb_name, thumbnail
from audit.workspace import Workspace

logger = logging.getLogger(__name__)

SECTION_IDS = {
    "dataset": ("dataset", "Dataset summary"),
    "duplicates": ("duplicates", "Duplicates"),
    "concepts": ("concepts", "Concept sparsity"),
    "word_replication": ("word-replication", "Word-level replication"),
    "object_replication": ("object-replication", "Object-level replication"),
    "poisons": ("poisons", "Poison candidates"),
    "memorization": ("reproduction", "Reproduction"),
    "mitigations": ("mitigations", "Mitigations"),
    "run": ("run-metadata", "Run metadata"),
}
"""report.json section -> (HTML id, heading)."""

MODEL_FIELDS = ("name", "model", "pretrained", "dim", "embed_dim", "image_size", "device")
"""Fields of embeddings/model.json shown on the page (report.json keeps all of them)."""

CSS = """
:root { --fg:#1d2430; --muted:#5b6675; --line:#d9dee5; --bg:#f6f7f9; --red:#c0392b;
        --blue:#2e6da4; --card:#fff; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
       color:var(--fg); background:var(--bg); }
header { background:#1d2430; color:#fff; padding:18px 28px; }
header h1 { margin:0 0 4px; font-size:22px; }
header .sub { color:#c5ccd6; font-size:12px; }
nav { position:sticky; top:0; z-index:2; background:#fff; border-bottom:1px solid var(--line);
      padding:8px 28px; display:flex; flex-wrap:wrap; gap:14px; font-size:13px; }
nav a { color:var(--blue); text-decoration:none; }
nav a.not_run, nav a.error { color:var(--muted); }
main { padding:10px 28px 40px; max-width:1400px; }
section { background:var(--card); border:1px solid var(--line); border-radius:6px;
          padding:14px 20px; margin:18px 0; }
section h2 { margin:0 0 8px; font-size:18px; }
section h3 { margin:16px 0 6px; font-size:15px; }
.cards { display:flex; flex-wrap:wrap; gap:10px; margin:14px 0 4px; }
.card { background:#fff; border:1px solid var(--line); border-radius:6px; padding:8px 14px;
        min-width:140px; }
.card .v { font-size:20px; font-weight:600; }
.card .l { color:var(--muted); font-size:12px; }
.card.alert .v { color:var(--red); }
table { border-collapse:collapse; margin:6px 0 10px; font-size:12.5px; }
th, td { border-bottom:1px solid var(--line); padding:3px 8px; text-align:left;
         vertical-align:top; }
th { background:#eef1f5; font-weight:600; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
td.rep { background:#fdf1ef; color:var(--red); }
tr.cost td { border-top:2px solid var(--line); background:#f4f8fc; }
tr.fgroup td { background:#eef1f5; font-weight:600; }
td.cell { white-space:nowrap; text-align:right; font-variant-numeric:tabular-nums; }
td.cell small { color:var(--muted); }
tr.flag td { background:#fdf1ef; }
.note { color:var(--muted); font-size:12.5px; }
.not-run { color:var(--muted); font-style:italic; }
.error { color:var(--red); }
.badge { display:inline-block; padding:0 6px; border-radius:8px; font-size:11px;
         background:#e6e9ee; color:var(--fg); }
.badge.red { background:var(--red); color:#fff; }
.strip { display:flex; flex-wrap:wrap; gap:6px; margin:6px 0 12px; align-items:flex-start; }
figure.thumb { margin:0; width:calc(var(--t) + 4px); font-size:10.5px; color:var(--muted);
               text-align:center; }
figure.thumb img, figure.thumb .missing { width:var(--t); height:var(--t); object-fit:contain;
               image-rendering:pixelated; border:2px solid transparent; background:#eee;
               display:block; }
figure.thumb.rep img { border-color:var(--blue); }
figure.thumb.copy img { border-color:var(--red); }
figure.thumb .missing { display:flex; align-items:center; justify-content:center;
               font-size:10px; }
figure.thumb figcaption { overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.pair { display:inline-flex; gap:2px; padding:4px; border:1px solid var(--line);
        border-radius:4px; margin:0 6px 6px 0; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill,minmax(320px,1fr)); gap:10px; }
.gitem { display:flex; flex-wrap:wrap; gap:4px 10px; border:1px solid var(--line);
         border-radius:4px; padding:6px; font-size:11.5px; align-items:flex-start; }
.gitem dl { flex:1; min-width:180px; }
.gitem .cap { flex-basis:100%; color:var(--muted); font-style:italic; }
.gitem .why { flex-basis:100%; }
.gitem .scores { flex-basis:100%; display:grid; grid-template-columns:auto auto auto auto;
         gap:0 8px; font-size:11px; color:var(--muted); }
.gitem .scores b { font-weight:500; color:var(--fg); text-align:right; margin-right:6px; }
.gitem.flag { border-color:var(--red); }
.gitem dl { margin:0; display:grid; grid-template-columns:auto 1fr; gap:0 6px; }
.gitem dt { color:var(--muted); } .gitem dd { margin:0; }
img.plot { max-width:100%; height:auto; display:block; margin:6px 0; }
.row { display:flex; flex-wrap:wrap; gap:16px; align-items:flex-start; }
pre { background:#f1f3f6; padding:8px; overflow:auto; font-size:11.5px; max-height:320px; }
details { margin:6px 0; } summary { cursor:pointer; color:var(--blue); }
.kw { border-top:1px solid var(--line); padding-top:6px; margin-top:10px; }
.groups { display:flex; flex-wrap:wrap; gap:10px; }
.grp { border:1px solid var(--line); border-radius:4px; padding:6px 8px; max-width:100%; }
.grp .gt { font-weight:600; font-size:13px; }
.grp .strip { margin:4px 0 0; }
"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return esc(x)


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def interval(lo: float | None, hi: float | None) -> str:
    return "–" if lo is None or hi is None else f"[{pct(lo)}, {pct(hi)}]"


class Renderer:
    """Writes images (plots, thumbnails) under ``out_dir/img`` and returns the page."""

    def __init__(
        self, report: dict[str, Any], ws: Workspace, out_dir: Path, thumb_size: int = 96
    ) -> None:
        self.r = report
        self.ws = ws
        self.out = out_dir
        self.img_dir = out_dir / "img"
        self.thumb_size = thumb_size
        self.shards = ShardIndex(ws.shards_dir)
        self.captions: dict[str, str] = report.get("captions", {}) or {}
        self._thumbs: dict[str, str | None] = {}
        self.n_thumbs = 0
        self.n_missing = 0
        self.max_histograms = int((report.get("limits") or {}).get("histograms", 20))

    # ---- images ------------------------------------------------------------------------
    def plot(self, name: str, fn: Any, *args: Any) -> str:
        """Run a plot function into img/<name>.png; the <img> tag, or "" when nothing plotted."""
        path = self.img_dir / f"{name}.png"
        try:
            ok = fn(*args, path)
        except Exception as exc:  # noqa: BLE001 - a broken figure must not lose the report
            logger.warning("figure %s failed: %s", name, exc)
            return f'<p class="error">figure {esc(name)} failed: {esc(exc)}</p>'
        if not ok:
            return ""
        return f'<img class="plot" src="img/{esc(path.name)}" alt="{esc(name)}">'

    def _thumb_file(self, key: str) -> str | None:
        if key in self._thumbs:
            return self._thumbs[key]
        rel = None
        img = self.shards.open_image(key)
        if img is not None:
            path = self.img_dir / "k" / thumb_name(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            thumbnail(img, self.thumb_size).save(path)
            rel = f"img/k/{path.name}"
            self.n_thumbs += 1
        else:
            self.n_missing += 1
        self._thumbs[key] = rel
        return rel

    def thumb(
        self, key: str, label: str | None = None, cls: str = "", title: str | None = None
    ) -> str:
        src = self._thumb_file(key)
        caption = title if title is not None else self.captions.get(key, "")
        tip = esc(f"{key}: {caption}" if caption else key)
        label_html = esc(label if label is not None else key)
        if src is None:
            body = '<div class="missing">no image</div>'
        else:
            body = f'<img src="{esc(src)}" alt="{esc(key)}" title="{tip}">'
        return (
            f'<figure class="thumb {esc(cls)}" title="{tip}">{body}'
            f"<figcaption>{label_html}</figcaption></figure>"
        )

    def strip(self, keys: list[str], rep: str | None = None) -> str:
        if not self.shards.available:
            return ""
        items = [self.thumb(k, cls="rep" if k == rep else "") for k in keys]
        return f'<div class="strip">{"".join(items)}</div>'

    def gen_thumb(self, rel: str | None, label: str, copy: bool) -> str:
        if rel is None:
            return (
                f'<figure class="thumb"><div class="missing">no image</div>'
                f"<figcaption>{esc(label)}</figcaption></figure>"
            )
        src_path = Path(rel) if Path(rel).is_absolute() else self.ws.root / rel
        dest = self.img_dir / "g" / thumb_name(rel)
        img = open_path(src_path)
        if img is None:
            return (
                f'<figure class="thumb"><div class="missing">unreadable</div>'
                f"<figcaption>{esc(label)}</figcaption></figure>"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        thumbnail(img, self.thumb_size).save(dest)
        cls = "copy" if copy else ""
        return (
            f'<figure class="thumb {cls}" title="{esc(rel)}"><img src="img/g/{esc(dest.name)}"'
            f' alt="generation"><figcaption>{esc(label)}</figcaption></figure>'
        )

    def no_images_note(self) -> str:
        if self.shards.available:
            return ""
        return (
            '<p class="note">No thumbnails: this workspace has no webdataset shards under '
            "<code>shards/</code> (for example, it was built from imported embeddings), so "
            "images are listed by key only.</p>"
        )

    # ---- page --------------------------------------------------------------------------
    def page(self) -> str:
        r = self.r
        nav = []
        body = []
        for key, (sid, title) in SECTION_IDS.items():
            sec = r.get(key, {"status": "not_run"})
            status = sec.get("status", "not_run")
            nav.append(f'<a href="#{sid}" class="{esc(status)}">{esc(title)}</a>')
            try:
                inner = self._not_ok(sec) if status != "ok" else getattr(self, f"s_{key}")(sec)
            except Exception as exc:  # noqa: BLE001 - one section's bug must not lose the page
                logger.warning("rendering section %s failed: %s", key, exc, exc_info=True)
                status, inner = "error", f'<p class="error">rendering failed: {esc(exc)}</p>'
            body.append(
                f'<section id="{sid}" data-status="{esc(status)}">'
                f"<h2>{esc(title)}</h2>{inner}</section>"
            )
        ws_name = Path(r.get("workspace", "")).name
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>laion-audit report: {esc(ws_name)}</title>"
            f"<style>:root{{--t:{self.thumb_size}px}}{CSS}</style></head><body>"
            f'<header><h1>Audit report: {esc(ws_name)}</h1><div class="sub">'
            f"workspace {esc(r.get('workspace'))} · generated {esc(r.get('generated_at'))} · "
            f"laion-audit {esc(r.get('run', {}).get('versions', {}).get('laion-audit'))} · "
            f'numbers in <a style="color:#9cc3ff" href="report.json">report.json</a>'
            f"</div></header><nav>{''.join(nav)}</nav><main>{self.cards()}"
            f"{''.join(body)}</main></body></html>\n"
        )

    def _not_ok(self, sec: dict[str, Any]) -> str:
        stage = sec.get("stage") or "the stage"
        if sec.get("status") == "error":
            return f'<p class="error">This finding could not be read: {esc(sec.get("error"))}</p>'
        if sec.get("note"):
            return f'<p class="not-run">{esc(sec["note"])}</p>'
        cmd = " / ".join(f"laion-audit {s.strip()} WS" for s in str(stage).split("/"))
        return f'<p class="not-run">Stage not run: <code>{esc(cmd)}</code> writes this section.</p>'

    def cards(self) -> str:
        r = self.r
        cards = []

        def card(value: Any, label: str, alert: bool = False) -> None:
            cls = "card alert" if alert else "card"
            cards.append(
                f'<div class="{cls}"><div class="v">{value}</div>'
                f'<div class="l">{esc(label)}</div></div>'
            )

        d = r.get("dataset", {})
        if d.get("status") == "ok":
            card(fmt(d["n_samples"]), "samples")
            card(fmt(d["n_failed"]), "failed / not ok", d["n_failed"] > 0)
        dup = r.get("duplicates", {})
        if dup.get("status") == "ok":
            red = sum(v["redundant"] for v in dup["by_kind"].values())
            card(fmt(red), "redundant duplicate rows (all kinds)", red > 0)
        w = r.get("word_replication", {})
        if w.get("status") == "ok":
            card(fmt(w["n_flagged"]), "replicated clusters (word level)", w["n_flagged"] > 0)
        o = r.get("object_replication", {})
        if o.get("status") == "ok":
            card(fmt(o["n_flagged"]), "object-level findings", o["n_flagged"] > 0)
        p = r.get("poisons", {})
        if p.get("status") == "ok":
            card(fmt(p["n_flagged"]), "poison candidates flagged", p["n_flagged"] > 0)
        m = r.get("memorization", {})
        if m.get("status") == "ok":
            # counted over every prompt of the finding (report.json's n_replicating), by the
            # one definition of detectors.memorization.replicates
            rep = m["n_replicating"]
            card(
                f"{rep} / {m['n_generated']}",
                f"generated prompts that replicate (copy rate's 95% lower bound "
                f">= {m['min_copy_share']:.0%})",
                rep > 0,
            )
        return f'<div class="cards">{"".join(cards)}</div>' if cards else ""

    # ---- sections ----------------------------------------------------------------------
    def s_dataset(self, d: dict[str, Any]) -> str:
        rows = "".join(
            f"<tr><td>{esc(k)}</td><td class=num>{fmt(v)}</td>"
            f"<td class=num>{pct(v / d['n_samples'] if d['n_samples'] else None)}"
            f"</td></tr>"
            for k, v in d["status_counts"].items()
        )
        model = d.get("model") or {}
        shown = [k for k in MODEL_FIELDS if model.get(k) not in (None, "")]
        model_txt = ", ".join(f"{k}={model[k]}" for k in shown) or "–"
        errs = "".join(
            f"<tr><td class=num>{fmt(e['count'])}</td><td>{esc(e['error'])}</td></tr>"
            for e in d.get("top_errors", [])
        )
        cs = d.get("clip_score") or {}
        shards = d.get("shards", {})
        images = (
            "images readable from shards"
            if self.shards.available
            else "no images (no shards: imported embeddings?)"
        )
        return (
            f"<p>{fmt(d['n_samples'])} samples read from {esc(d.get('source'))}; "
            f"{fmt(d['n_ok'])} ok, {fmt(d['n_failed'])} not ok; "
            f"<b>{fmt(d['hash_mismatches'])}</b> hash mismatches (content changed since the "
            f"url list was built: split-view risk). {fmt(shards.get('tar_files'))} shard tar "
            f"files, {esc(images)}.</p>"
            f"<div class=row><div><table><tr><th>status</th><th>samples</th><th>share</th></tr>"
            f"{rows}</table>"
            f"<table><tr><th>embedding model</th><td>{esc(model_txt)}</td></tr>"
            f"<tr><th>unique captions</th><td class=num>{fmt(d.get('unique_captions'))}</td></tr>"
            f"<tr><th>CLIP score mean / p5 / p50 / p95</th><td class=num>"
            f"{fmt(cs.get('mean'))} / {fmt(cs.get('p05'))} / {fmt(cs.get('p50'))} / "
            f"{fmt(cs.get('p95'))}</td></tr></table></div>"
            f"<div>{self.plot('status', plots.status_bars, d['status_counts'])}</div></div>"
            + (
                f"<h3>Most common errors</h3><table><tr><th>count</th><th>error</th></tr>{errs}"
                f"</table>"
                if errs
                else ""
            )
            + self._filtered(d.get("filtered"))
        )

    def _filtered(self, f: dict[str, Any] | None) -> str:
        if not f or "counts" not in f:
            return ""
        c = f["counts"]
        reasons = "".join(
            f"<tr><td>{esc(k)}</td><td class=num>{fmt(v)}</td></tr>"
            for k, v in c.items()
            if ":" in k and not k.startswith("rule:")
        )
        shards = f.get("reshard")
        return (
            f"<h3>Filtered dataset</h3><p><code>laion-audit filter --drop "
            f"{esc(','.join(f.get('drop', [])))}</code> keeps {fmt(c.get('kept'))} of "
            f"{fmt(c.get('input'))} samples and drops {fmt(c.get('dropped'))} "
            f"(<code>filtered/keep.parquet</code>, <code>filtered/drop.parquet</code>)"
            + (
                f"; rewritten shards in <code>{esc(f.get('out'))}</code> hold "
                f"{fmt(shards.get('samples_out'))} samples"
                if shards
                else ""
            )
            + f".</p><table><tr><th>reason</th><th>samples</th></tr>{reasons}</table>"
        )

    def s_duplicates(self, d: dict[str, Any]) -> str:
        rows = "".join(
            f"<tr><td>{esc(k)}</td><td class=num>{fmt(v['groups'])}</td>"
            f"<td class=num>{fmt(v['samples'])}</td><td class=num>{fmt(v['redundant'])}</td>"
            f"<td class=num>{fmt(v['largest_group'])}</td></tr>"
            for k, v in d["by_kind"].items()
        )
        groups = []
        for g in d["largest_groups"]:
            shown = f" (showing {len(g['keys'])})" if len(g["keys"]) < g["size"] else ""
            groups.append(
                f'<div class="grp"><div class="gt">{esc(g["kind"])} group {g["group_id"]}: '
                f"{g['size']} images{shown}</div><div class=note>representative "
                f"{esc(g['representative_key'])} (blue border); min similarity "
                f"{fmt(g.get('min_similarity'))}</div>"
                + (
                    self.strip(g["keys"], g["representative_key"])
                    or f"<p class=note>keys: {esc(', '.join(g['keys']))}</p>"
                )
                + "</div>"
            )
        return (
            f"<p>{fmt(d['samples_in_any_group'])} samples belong to at least one duplicate group."
            f" Redundant = samples that are not their group's representative.</p>"
            f"<div class=row><table><tr><th>kind</th><th>groups</th><th>samples in groups</th>"
            f"<th>redundant</th><th>largest</th></tr>{rows}</table>"
            f"{self.plot('dup_sizes', plots.group_size_histogram, d['by_kind'])}</div>"
            f"<h3>Largest groups</h3>{self.no_images_note()}"
            f'<div class="groups">{"".join(groups)}</div>'
        )

    def s_concepts(self, d: dict[str, Any]) -> str:
        rows = "".join(
            f'<tr class="{"flag" if r["sparse"] else ""}"><td>{esc(r["concept"])}</td>'
            f"<td class=num>{fmt(r['word_count'])}</td><td class=num>{pct(r['word_freq'], 2)}</td>"
            f"<td class=num>{fmt(r['semantic_count'])}</td>"
            f"<td class=num>{pct(r['semantic_freq'], 2)}</td>"
            f"<td class=num>{fmt(r['ratio'], 2)}</td><td>{fmt(r['sparse'])}</td></tr>"
            for r in d["rows"]
        )
        more = (
            f"<p class=note>showing the {len(d['rows'])} sparsest of {d['rows_total']}.</p>"
            if d["rows_total"] > len(d["rows"])
            else ""
        )
        return (
            f"<p>{fmt(d['n_sparse'])} of {fmt(d['n_concepts'])} concepts are sparse "
            f"({pct(d['sparse_share'])}): few poisons suffice to corrupt a sparse concept. "
            f"Word frequency counts captions naming the concept; semantic frequency counts "
            f"captions whose text embedding is close to it.</p>"
            f"<div class=row><div><table><tr><th>concept</th><th>word count</th>"
            f"<th>word freq</th><th>semantic count</th><th>semantic freq</th>"
            f"<th>semantic / word</th><th>sparse</th></tr>{rows}</table>{more}</div>"
            f"{self.plot('concepts', plots.concept_frequencies, d['rows'])}</div>"
        )

    def s_word_replication(self, d: dict[str, Any]) -> str:
        parts = [
            f"<p>{fmt(d['n_flagged'])} of {fmt(d['n_clusters'])} clusters across "
            f"{fmt(d['n_keywords'])} keywords are flagged as replicated (a keyword's images "
            f"collapse onto one near-identical cluster).{self._discovery_note(d)}</p>",
            self.no_images_note(),
        ]
        for i, kw in enumerate(d["keywords"]):
            parts.append(
                f'<div class="kw"><h3>"{esc(kw["keyword"])}": {kw["n_clusters"]} '
                f"clusters, {kw['n_flagged']} flagged</h3>"
            )
            parts.append(
                self.plot(
                    f"clusters_{i}",
                    plots.cluster_sizes,
                    kw["keyword"],
                    kw["clusters"],
                    kw["cluster_sizes"],
                )
            )
            for c in kw["clusters"]:
                words = ", ".join(
                    f"{esc(w)}" + (f" (×{lift:.1f})" if lift is not None else "")
                    for w, lift in zip(c["top_words"], c["top_word_lift"] + [None] * 10)
                )
                caps = "".join(f"<li>{esc(t)}</li>" for t in c["example_captions"])
                badge = '<span class="badge red">flagged</span>' if c["flagged"] else ""
                parts.append(
                    f"<h3>cluster {c['cluster_rank']} {badge}</h3><p class=note>"
                    f"<code>{esc(c['finding_id'])}</code> · {fmt(c['size'])} images "
                    f"({pct(c['share'])} of the keyword) · mean similarity "
                    f"{fmt(c['mean_sim'])}, min {fmt(c['min_sim'])}"
                    + (
                        f" · words-only share {pct(c['words_only_share'])}"
                        if c.get("words_only_share") is not None
                        else ""
                    )
                    + f"</p><p>top words: {words or '–'}"
                    + (
                        f"; prompt words: <i>{esc(c['prompt_words'])}</i>"
                        if c.get("prompt_words")
                        else ""
                    )
                    + "</p>"
                    + (
                        f"<details><summary>example captions</summary><ul>{caps}</ul></details>"
                        if caps
                        else ""
                    )
                    + self.strip(c["keys"], c.get("medoid_key"))
                )
            parts.append("</div>")
        return "".join(parts)

    @staticmethod
    def _discovery_note(d: dict[str, Any]) -> str:
        mt = d.get("discovery_multiple_testing")
        if not mt:
            return ""
        return (
            f" Discovered keywords: {esc(mt.get('method'))} at q &le; {fmt(mt.get('q_level'))} "
            f"over {fmt(mt.get('n_tests'))} scanned terms."
        )

    def s_object_replication(self, d: dict[str, Any]) -> str:
        # flagged pairs, then the strongest others, so tables of all-zero pairs stay short
        shown = [r for r in d["rows"] if r["flagged"]]
        shown += [r for r in d["rows"] if not r["flagged"]][: max(0, 10 - len(shown))]
        hidden = len(d["rows"]) - len(shown)
        rows = "".join(
            f'<tr class="{"flag" if r["flagged"] else ""}"><td>{esc(r["keyword"])}</td>'
            f"<td>{esc(r['object'])}</td><td class=num>{fmt(r['n_images'])}</td>"
            f"<td class=num>{pct(r['image_rate'])}</td><td>{interval(r['ci_low'], r['ci_high'])}"
            f"</td><td class=num>{pct(r['caption_rate'])}</td>"
            f"<td class=num>{pct(r['outside_rate'])}</td><td class=num>{pct(r['threshold'])}</td>"
            f"<td class=num>{fmt(r.get('q_value'))}</td><td>{fmt(r['flagged'])}</td></tr>"
            for r in shown
        )
        mt = d.get("multiple_testing") or {}
        correction = (
            f" Multiple testing: {esc(mt.get('method'))} at q &le; {fmt(mt.get('q_level'))} over "
            f"{fmt(mt.get('n_tests'))} keyword &times; object tests "
            f"({fmt(mt.get('n_flagged_unadjusted'))} would be flagged without the correction)."
            if mt
            else ""
        )
        more = (
            f"<p class=note>{hidden} more pairs with lower rates are not shown here "
            f"(all are in report.json).</p>"
            if hidden
            else ""
        )
        examples = []
        for r in d["rows"]:
            if r["flagged"] and r["example_keys"]:
                examples.append(
                    f'<h3>{esc(r["object"])} in "{esc(r["keyword"])}" images '
                    f"(caption never names it)</h3>"
                    + (
                        self.strip(r["example_keys"])
                        or f"<p class=note>{esc(', '.join(r['example_keys']))}</p>"
                    )
                )
        return (
            f"<p>{fmt(d['n_flagged'])} of {fmt(d['n_findings'])} keyword/object pairs flagged: "
            f"the object appears in a keyword's images far more often than elsewhere, while "
            f"captions do not name it.{correction}</p>"
            f"<table><tr><th>keyword</th><th>object</th><th>images</th><th>object rate</th>"
            f"<th>95% interval</th><th>named in caption</th><th>rate outside keyword</th>"
            f"<th>threshold</th><th>q (BH)</th><th>flagged</th></tr>{rows}</table>{more}"
            f"{self.plot('objects', plots.object_rates, shown)}"
            f"{self.no_images_note()}{''.join(examples)}"
        )

    def s_poisons(self, d: dict[str, Any]) -> str:
        kinds = ", ".join(f"{esc(k)}: {v}" for k, v in d["flagged_by_kind"].items()) or "none"
        items = []
        for p in d["top"]:
            scores = "".join(
                f"<span>{esc(k)}</span><b>{fmt(v)}</b>"
                for k, v in p["scores"].items()
                if v is not None
            )
            pic = self.thumb(p["key"], label=f"#{p['rank']}") if self.shards.available else ""
            flag = ' <span class="badge red">flagged</span>' if p["flagged"] else ""
            if p.get("review") and not p["flagged"]:
                flag = ' <span class="badge">review quota, not flagged</span>'
            combined = fmt(p["combined_score"]) if p["combined_score"] is not None else "∞"
            items.append(
                f'<div class="gitem {"flag" if p["flagged"] else ""}">{pic}<dl>'
                f"<dt>rank</dt><dd>{fmt(p['rank'])}</dd><dt>key</dt><dd>{esc(p['key'])}</dd>"
                f"<dt>kind</dt><dd>{esc(p['kind'])}{flag}</dd>"
                f"<dt>concept</dt><dd>{esc(p['concept'])}</dd>"
                f"<dt>combined</dt><dd>{combined}</dd></dl>"
                + (f'<div class="scores">{scores}</div>' if scores else "")
                + f"<div class=why>{esc(p['reasons']) or 'no detector fired'}</div>"
                f"<div class=cap>caption: {esc(p.get('caption'))}</div></div>"
            )
        review = ""
        if d.get("n_review"):
            rows = "".join(
                f"<tr><td class=num>{fmt(p['rank'])}</td><td>{esc(p['key'])}</td>"
                f"<td>{esc(p['concept'])}</td><td class=num>{fmt(p['combined_score'])}</td>"
                f"<td>{esc(p['reasons'])}</td></tr>"
                for p in d.get("review") or []
            )
            review = (
                f"<details><summary>{fmt(d['n_review'])} samples top-ranked for review "
                f"({fmt(d.get('n_review_not_flagged'))} of them not flagged): "
                f"{esc(d.get('review_rule') or 'expected-rate quota')}. A quota fills the same "
                "number of places on clean data; these are not poison candidates and are not "
                "counted above.</summary>"
                "<table><tr><th>rank</th><th>key</th><th>concept</th><th>combined</th>"
                f"<th>note</th></tr>{rows}</table></details>"
            )
        return (
            f"<p>{fmt(d['n_flagged'])} of {fmt(d['n_scored'])} samples flagged as poison "
            f"candidates by their scores ({kinds}). "
            f"Scores per detector: {esc(', '.join(d['score_columns']) or '–')}. Ranked by the "
            f"combined score; the top {len(d['top'])} are shown.</p>"
            f"{_coverage(d.get('coverage'))}"
            f"{self.plot('poison_scores', plots.score_histogram, d['combined_histogram'])}"
            f"{self.no_images_note()}<div class=gallery>{''.join(items)}</div>{review}"
        )

    def s_memorization(self, d: dict[str, Any]) -> str:
        thr = d.get("copy_threshold")
        parts = [
            f"<p>{fmt(d['n_prompts'])} prompts from {fmt(d['n_findings'])} findings; "
            f"{fmt(d.get('n_generated', d['n_prompts']))} were generated with "
            f"{fmt(max((r['n'] or 0 for r in d['rows']), default=0))} seeds each. A generation "
            f"counts as a copy when its {esc(_space_words(d))} to the finding's training "
            f"cluster (the whole dataset for object findings) is at least {fmt(thr)}. "
            f"{esc(d['replication_rule'])}: {fmt(d['n_replicating'])} prompts replicate "
            f"(highlighted).</p>",
            self.plot("replication_rates", plots.replication_rates, d["rows"]),
        ]
        if not d.get("generations_available"):
            parts.append(
                "<p class=note>No per-generation scores under <code>generations/"
                "</code>: histograms and example pairs are not available.</p>"
            )
        generated = [r for r in d["rows"] if r.get("generated", True)]
        skipped = [r for r in d["rows"] if not r.get("generated", True)]
        rows = "".join(
            f'<tr class="{"flag" if r.get("replicates") else ""}">'
            f"<td><code>{esc(r['finding_id'])}</code></td><td>{esc(r['prompt_kind'])}</td>"
            f"<td>{esc(r['prompt'])}</td><td class=num>{fmt(r['n'])}</td>"
            f"<td class=num>{pct(r['replication_rate'])}</td>"
            f"<td>{interval(r['ci_low'], r['ci_high'])}</td>"
            f"<td class=num>{pct(r.get('verbatim_rate'))}</td>"
            f"<td class=num>{fmt(r['mean_sim'])}</td>"
            f"<td class=num>{fmt(r['p95_sim'])}</td><td class=num>{fmt(r['max_sim'])}</td>"
            f"<td class=num>{pct(r['object_rate'])}</td><td class=num>{fmt(r['triage_score'])}"
            f"</td></tr>"
            for r in generated
        )
        parts.append(
            "<table><tr><th>finding</th><th>prompt kind</th><th>prompt</th><th>n</th>"
            "<th>replication</th><th>95% interval</th><th>verbatim (tiled l2)</th>"
            "<th>mean sim</th><th>p95 sim</th>"
            f"<th>max sim</th><th>object rate</th><th>triage score</th></tr>{rows}</table>"
        )
        if skipped:
            skipped = sorted(skipped, key=lambda r: -(r["triage_score"] or 0))
            rows = "".join(
                f"<tr><td><code>{esc(r['finding_id'])}</code></td>"
                f"<td>{esc(r['prompt_kind'])}</td><td>{esc(r['prompt'])}</td>"
                f"<td class=num>{fmt(r['triage_score'])}</td></tr>"
                for r in skipped
            )
            parts.append(
                f"<details><summary>{len(skipped)} prompts not generated: their one-step "
                f"triage score ranked below the --triage-top cut "
                f"(highest {fmt(skipped[0]['triage_score'])})</summary>"
                "<table><tr><th>finding</th><th>prompt kind</th><th>prompt</th>"
                f"<th>triage score</th></tr>{rows}</table></details>"
            )
        for i, r in enumerate(d["rows"]):
            if not r.get("pairs") and not r.get("similarity_histogram"):
                continue
            pairs = "".join(
                '<div class="pair">'
                + self.gen_thumb(p["generation"], f"seed {p['seed']}", p["copy"])
                + (
                    self.thumb(p["nearest_key"], label=f"sim {fmt(p['similarity'], 2)}")
                    if p.get("nearest_key") and self.shards.available
                    else ""
                )
                + "</div>"
                for p in r["pairs"]
            )
            if i >= self.max_histograms:
                parts.append(
                    f"<p class=note>{len(d['rows']) - i} more prompts: see the table "
                    f"above and report.json.</p>"
                )
                break
            parts.append(
                f"<h3>{esc(r['prompt_kind'])}: “{esc(r['prompt'])}” — "
                f"{pct(r['replication_rate'])} {interval(r['ci_low'], r['ci_high'])} of "
                f"{fmt(r['n'])}</h3><div class=row>"
                + self.plot(
                    f"sim_{i}", plots.similarity_histogram, r.get("similarity_histogram"), thr
                )
                + f"<div><p class=note>most similar generations (red border: copy) beside their "
                f"nearest training image</p>{pairs}</div></div>"
            )
        return "".join(parts)

    def s_mitigations(self, d: dict[str, Any]) -> str:
        cols = d["columns"]
        from audit.report.mitigations import cells_of, costs_of

        costs = costs_of(d)
        shown = [c for c in cols if any(c["key"] in cells_of(r) for r in d["rows"])]
        shown += [c for c in cols if c not in shown and c["key"] in costs]
        n_runs = len(d["runs"])
        parts = [
            f"<p>Did a fix stop the copying, and what did it cost? {n_runs} reproduce runs of "
            f"this workspace side by side ({esc(', '.join(r['run'] for r in d['runs']))}). A "
            "column is one way of generating: the audited model, a model erased by "
            "<code>laion-audit erase</code>, SLD safety guidance (<code>--safety</code>), and "
            "prompts rewritten by <code>laion-audit attack</code> (UnlearnDiffAtk: adversarial "
            "tokens in front of the prompt, sitting in the row of the prompt they were made "
            "from). A cell is the prompt's replication rate, its Wilson 95% interval and the "
            "number of seeds; red: the prompt replicates (interval's lower bound at least the "
            "run's minimum copy share). &#9733; marks each finding's best prompt (the one the "
            "original model copies most).</p>"
        ]
        if d.get("differences"):
            by_setting: dict[str, list[str]] = {}
            for x in d["differences"]:
                by_setting.setdefault(x["setting"], []).append(f"{x['run']} {x['value']}")
            diff = "; ".join(f"{esc(k)}: {esc(', '.join(v))}" for k, v in by_setting.items())
            parts.append(
                f'<p class="error">The runs differ in settings that change the rates, so '
                f"columns are not strictly comparable: {diff}.</p>"
            )
        moved = [  # each finding's best prompt, where some column copies at all
            r
            for r in d["rows"]
            if r["best"] and any((c.get("replication_rate") or 0) > 0 for c in r["cells"])
        ]
        parts.append(self.plot("mitigations", plots.mitigation_rates, moved, cols))
        head = "".join(
            f'<th title="{esc(", ".join(c["runs"]))}">{esc(c["label"])}</th>' for c in shown
        )
        body = []
        last = None
        for r in d["rows"]:
            if r["finding_id"] != last:
                body.append(
                    f'<tr class="fgroup"><td colspan="{2 + len(shown)}"><code>'
                    f"{esc(r['finding_id'])}</code></td></tr>"
                )
                last = r["finding_id"]
            row_cells = cells_of(r)
            cells = "".join(_mitigation_cell(row_cells.get(c["key"])) for c in shown)
            star = "&#9733; " if r["best"] else ""
            body.append(
                f"<tr><td>{star}{esc(r['prompt_kind'])}</td><td>{esc(r['prompt'])}</td>{cells}</tr>"
            )
        if costs:
            cost_cells = []
            for c in shown:
                x = costs.get(c["key"])
                if not x or x.get("accuracy") is None:
                    cost_cells.append('<td class="cell">–</td>')
                    continue
                change = (
                    f" <small>({x['change']:+.2f})</small>"
                    if x.get("change") is not None and c["key"] != d.get("original")
                    else ""
                )
                cost_cells.append(
                    f'<td class="cell">{pct(x["accuracy"])}{change}<br><small>'
                    f"{interval(x['ci_low'], x['ci_high'])} · {fmt(x['n'])}</small></td>"
                )
            body.append(
                f'<tr class="cost"><td colspan="2">What the fix costs: zero-shot accuracy of '
                f"control prompts' generations (change vs the original)</td>"
                f"{''.join(cost_cells)}</tr>"
            )
        more = (
            f"<p class=note>{d['n_rows_total'] - len(d['rows'])} more prompts in report.json.</p>"
            if d["n_rows_total"] > len(d["rows"])
            else ""
        )
        parts.append(
            f"<table><tr><th>prompt kind</th><th>prompt</th>{head}</tr>{''.join(body)}</table>"
            + more
        )
        if not costs:
            parts.append(
                "<p class=note>No control prompts in these runs, so the cost of a fix is not "
                'measured: add rows such as <code>{"prompt": "a photo of a dog", '
                '"prompt_kind": "control", "keyword": "dog"}</code> (a few '
                "concepts unrelated to the findings) with <code>--prompts</code> to the "
                "original's run and every mitigation run.</p>"
            )
        else:
            parts.append(f"<p class=note>Cost: {esc(d['cost_measure'])}.</p>")
        if d["attacks"]:
            rows = "".join(
                f"<tr><td>{esc(a['run'])}</td><td>{esc(a['column'])}</td>"
                f"<td class=num>{fmt(a.get('n'))}</td>"
                f"<td>{pct(a.get('asr_before'))} {interval(*(a.get('ci_before') or [None, None]))}"
                f"</td><td>{pct(a.get('asr_after'))} "
                f"{interval(*(a.get('ci_after') or [None, None]))}</td>"
                f"<td>{esc(_budget(a.get('settings') or {}))}</td></tr>"
                for a in d["attacks"]
            )
            parts.append(
                "<h3>Attacks</h3><p class=note>Attack success rate when the prompts were "
                "attacked: one seed per prompt (a prompt that already copied counts as a "
                "success before the attack); the table above measures the same prompts over "
                "every seed.</p><table><tr><th>run</th><th>column</th><th>prompts</th>"
                f"<th>ASR before</th><th>ASR after</th><th>budget</th></tr>{rows}</table>"
            )
        runs = "".join(
            f"<tr><td>{esc(r['run'])}</td><td>{esc(', '.join(r['columns']))}</td>"
            f"<td>{esc(_short(r['generator']))}</td><td>{esc(_erasure(r.get('erase')))}</td>"
            f"<td>{esc(r.get('safety') or '–')}"
            + (f"<br><small>{esc(r['safety_concept'])}</small>" if r.get("safety_concept") else "")
            + f"</td><td>{esc(r.get('prompts_from') or ('findings' if r['main'] else '–'))}</td>"
            f"<td class=num>{fmt(r.get('n_prompts'))}</td><td class=num>{fmt(r.get('n'))}</td>"
            f"<td class=num>{fmt(r.get('steps'))}</td><td><code>{esc(r['path'])}</code></td></tr>"
            for r in d["runs"]
        )
        parts.append(
            "<h3>Runs</h3><table><tr><th>run</th><th>columns</th><th>generator</th>"
            "<th>erasure</th><th>safety</th><th>prompts</th><th>prompts generated</th>"
            f"<th>seeds</th><th>steps</th><th>folder</th></tr>{runs}</table>"
        )
        return "".join(parts)

    def s_run(self, d: dict[str, Any]) -> str:
        versions = "".join(
            f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in d["versions"].items()
        )
        stages = "".join(
            f"<tr><td>{esc(s['stage'])}</td><td class=num>{fmt(s['seconds'], 1)}</td>"
            f"<td>{esc(_when(s.get('finished')))}</td>"
            f"<td><details><summary>config</summary><pre>{esc(_kv(s['config']))}</pre>"
            f"</details></td></tr>"
            for s in d["stages"]
        )
        findings = "".join(
            f"<tr><td>{esc(k)}</td><td>{esc(v.get('detector') or v.get('detectors') or '–')}</td>"
            f"<td class=num>{fmt(v.get('rows'))}</td><td class=num>{fmt(v.get('seconds'), 1)}"
            f"</td><td>{esc(_when(v.get('written')))}</td></tr>"
            for k, v in d["findings"].items()
            if v
        )
        toml = (
            f"<h3>audit.toml</h3><pre>{esc(d['audit_toml'])}</pre>" if d.get("audit_toml") else ""
        )
        return (
            f"<p>{len(d['stages'])} stages recorded in <code>run.json</code>, "
            f"{fmt(d['total_seconds'], 1)} s in total.</p><div class=row>"
            f"<div><table><tr><th>stage</th><th>seconds</th><th>finished</th><th>config</th></tr>"
            f"{stages}</table></div>{self.plot('timings', plots.stage_timings, d['stages'])}</div>"
            + (
                f"<h3>Findings</h3><table><tr><th>finding</th><th>detector</th><th>rows</th>"
                f"<th>seconds</th><th>written</th></tr>{findings}</table>"
                if findings
                else ""
            )
            + f"<h3>Versions</h3><table>{versions}</table>{toml}"
        )


def _mitigation_cell(c: dict[str, Any] | None) -> str:
    if not c:
        return '<td class="cell">–</td>'
    cls = "cell rep" if c.get("replicates") else "cell"
    title = f' title="{esc(c["prompt"])}"' if c.get("prompt") else ""
    mark = ""
    if c.get("attack_success") is not None:
        mark = " &#10003;" if c["attack_success"] else " &#10007;"
    return (
        f'<td class="{cls}"{title}>{pct(c.get("replication_rate"))}{mark}<br><small>'
        f"{interval(c.get('ci_low'), c.get('ci_high'))} · {fmt(c.get('n'))}</small></td>"
    )


def _short(path: Any) -> str:
    p = str(path or "–").rstrip("/")
    return p.split("/")[-1] if "/" in p else p


def _erasure(e: dict[str, Any] | None) -> str:
    if not e:
        return "–"
    return (
        f"{e.get('method')} “{e.get('concept')}”: {e.get('steps')} steps, lr {e.get('lr')}, "
        f"eta {e.get('eta')}, seed {e.get('seed')}"
    )


def _budget(s: dict[str, Any]) -> str:
    if not s:
        return "–"
    return (
        f"{s.get('tokens')} tokens, {s.get('timesteps')} timesteps x {s.get('iterations')} "
        f"steps ({s.get('relax')})"
    )


def _coverage(cov: Any) -> str:
    """What each poison score can and cannot see (``coverage`` in the poisons finding's JSON):
    the structure of :func:`detectors.poisons.coverage` (measured AUROC per score and poison
    kind, the rule, the limits), or older forms: a text, a list of lines, or score -> text /
    {sees, misses} / list."""
    if not cov:
        return ""

    def words(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return ", ".join(str(x) for x in v)
        return str(v)

    if isinstance(cov, dict) and isinstance(cov.get("scores"), dict):
        return _measured_coverage(cov)
    if isinstance(cov, str):
        body = f"<p>{esc(cov)}</p>"
    elif isinstance(cov, (list, tuple)):
        body = "<ul>" + "".join(f"<li>{esc(words(x))}</li>" for x in cov) + "</ul>"
    elif isinstance(cov, dict):
        rows = []
        for score, v in cov.items():
            if isinstance(v, dict):
                sees = v.get("sees", v.get("can_see", v.get("detects")))
                misses = v.get("misses", v.get("cannot_see", v.get("blind_to")))
                note = {k: x for k, x in v.items() if k not in (
                    "sees", "can_see", "detects", "misses", "cannot_see", "blind_to")}  # fmt: skip
                rows.append(
                    f"<tr><td><code>{esc(score)}</code></td><td>{esc(words(sees or '–'))}</td>"
                    f"<td>{esc(words(misses or '–'))}</td>"
                    f"<td>{esc('; '.join(f'{k}: {words(x)}' for k, x in note.items()))}</td></tr>"
                )
            else:
                rows.append(
                    f"<tr><td><code>{esc(score)}</code></td><td colspan=3>{esc(words(v))}</td></tr>"
                )
        body = (
            "<table><tr><th>score</th><th>can see</th><th>cannot see</th><th>note</th></tr>"
            f"{''.join(rows)}</table>"
        )
    else:
        body = f"<p>{esc(cov)}</p>"
    return f"<h3>What each score can and cannot see</h3>{body}"


def _measured_coverage(cov: dict[str, Any]) -> str:
    """The measured coverage table: per score, AUROC per poison kind (served / JPEG q75), what
    it sees, whether this run computed it and used it in the combined score; then the limits."""
    kinds = cov.get("kinds") or {}
    names = {k: str(v).split(" (")[0] for k, v in kinds.items()}
    order = (
        cov.get("kind_order")
        or list(kinds)
        or sorted({k for r in cov["scores"].values() for k in r.get("auroc", {})})
    )  # the finding's JSON may come back with sorted keys: the recorded orders win

    def label(ks: Any) -> str:
        return ", ".join(names.get(k, str(k)) for k in ks or []) or "–"

    rows = []
    scores = [x for x in cov.get("score_order") or [] if x in cov["scores"]]
    for score in scores + [x for x in cov["scores"] if x not in scores]:
        r = cov["scores"][score]
        if not isinstance(r, dict):
            continue
        a, j = r.get("auroc") or {}, r.get("auroc_jpeg_q75") or {}
        cells = "".join(
            f"<td class=num>{fmt(a.get(k), 2)}"
            + (f" / {fmt(j.get(k), 2)}" if j.get(k) is not None else "")
            + "</td>"
            for k in order
        )
        used = "in combined" if r.get("in_combined") else (
            "computed" if r.get("computed") else "not computed")  # fmt: skip
        sees = (
            "; ".join(
                ([label(r["sees"])] if r.get("sees") else [])
                + ([f"partly: {label(r['partly'])}"] if r.get("partly") else [])
            )
            or "–"
        )
        rows.append(
            f"<tr><td><code>{esc(score)}</code></td><td>{esc(used)}</td>{cells}"
            f"<td>{esc(sees)}</td><td>{esc(label(r.get('blind_to')))}</td></tr>"
        )
    head = "".join(f"<th>{esc(names.get(k, k))}</th>" for k in order)
    recall = cov.get("recall_at_default_threshold") or {}
    limits = "".join(f"<li>{esc(x)}</li>" for x in cov.get("limits") or [])
    return (
        "<h3>What each score can and cannot see</h3>"
        f"<p>Measured AUROC, served / after JPEG q75 re-encoding ({esc(cov.get('setting', ''))};"
        f" {esc(cov.get('source', ''))}). {esc(cov.get('rule', ''))}."
        + (
            " Share of planted poisons flagged by the default rule: "
            + esc(", ".join(f"{names.get(k, k)} {fmt(recall[k], 2)}" for k in order if k in recall))
            + "."
            if recall
            else ""
        )  # fmt: skip
        + "</p>"
        f"<table><tr><th>score</th><th>this run</th>{head}<th>sees</th><th>cannot see</th></tr>"
        f"{''.join(rows)}</table>" + (f"<ul>{limits}</ul>" if limits else "")
    )


def _when(ts: float | None) -> str:
    return "–" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _kv(obj: Any) -> str:
    if isinstance(obj, dict):
        return "\n".join(f"{k} = {v!r}" for k, v in obj.items())
    return repr(obj)


def render_html(
    report: dict[str, Any], ws: Workspace, out_dir: str | Path, thumb_size: int = 96
) -> dict[str, Any]:
    """Write ``out_dir/index.html`` and ``out_dir/img/``; returns counts (thumbnails written,
    keys without an image)."""
    out = Path(out_dir)
    img = out / "img"
    if img.exists():
        shutil.rmtree(img)  # stale thumbnails of an earlier report
    img.mkdir(parents=True, exist_ok=True)
    r = Renderer(report, ws, out, thumb_size)
    page = r.page()
    from audit.workspace import atomic_write_bytes

    atomic_write_bytes(out / "index.html", page.encode("utf-8"))
    return {
        "thumbnails": r.n_thumbs,
        "keys_without_image": r.n_missing,
        "shard_images_indexed": len(r.shards) if r.shards.available else 0,
    }


def _space_words(d: dict[str, Any]) -> str:
    """How the memorization section names the similarity copies are decided by."""
    if d.get("copy_space") == "copy_emb":
        return f"copy-detection similarity ({d.get('copy_model') or 'copy model'}, cosine)"
    return "CLIP image similarity (no copy descriptors in this workspace)"
