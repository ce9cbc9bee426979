"""The audit report: ``build`` collects the workspace's numbers into ``report.json``; ``html``
renders them as a self-contained page with ``plots`` (matplotlib) and thumbnails read by key
from the webdataset shards (``images``).

``write_report(ws)`` does both and returns the path of ``WS/report/index.html``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from audit.report.build import SCHEMA, SECTIONS, Limits, build_report
from audit.workspace import Workspace

logger = logging.getLogger(__name__)

__all__ = ["SCHEMA", "SECTIONS", "Limits", "build_report", "write_report"]


def write_report(
    ws: Workspace | str | Path,
    out_dir: str | Path | None = None,
    limits: Limits | None = None,
    thumb_size: int = 96,
) -> Path:
    """Write ``report.json`` and ``index.html`` (+ ``img/``) into ``out_dir``
    (default ``WS/report``); returns the path of ``index.html``."""
    from audit.report.html import render_html

    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    out = Path(out_dir) if out_dir is not None else ws.report_dir
    report = build_report(ws, limits)
    stats = render_html(report, ws, out, thumb_size=thumb_size)
    report["render"] = stats
    ws.write_json(out.resolve() / "report.json", report)
    logger.info(
        "report: %d thumbnails, %d keys without an image",
        stats["thumbnails"],
        stats["keys_without_image"],
    )
    return out / "index.html"
