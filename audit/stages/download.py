"""``laion-audit download URLS --out WS``: fetch a url list into WS/shards with img2dataset."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from audit.config import ConfigError, require
from audit.errors import InputError

logger = logging.getLogger(__name__)

HELP = "download a url list into webdataset shards with img2dataset"
DESCRIPTION = """\
Download the images of a url list (parquet, csv, tsv, jsonl, json or txt, optionally .gz; a file
or a folder) with img2dataset's Python API into WS/shards: NNNNN.tar (webdataset), NNNNN.parquet
(every input row with status and error_message) and NNNNN_stats.json per shard.

Columns: LAION names (URL, TEXT) or url/caption are found automatically; name others with
--url-col / --caption-col. Every other column is kept in the shard parquet. With a hash column
(sha256 by default when present) images whose bytes changed since the list was made are
recorded as hash_mismatch (the split-view poisoning defence): img2dataset's verify_hash drops
them, --keep-mismatched keeps them in the tar, flagged. Every input row ends in the shard
parquet exactly once (rows img2dataset lost are added as failed_to_download with the reason).

Images are stored as served by default (--resize-mode no); --resize-mode keep_ratio
--image-size 256 stores resized copies instead. A rerun resumes: finished shards are skipped.
img2dataset's own console output goes to WS/shards/_img2dataset.log; the summary goes to
WS/download.json.
"""

USES_WORKSPACE = True


@dataclass
class Config:
    input: str | None = None
    url_col: str | None = None
    caption_col: str | None = None
    hash_col: str | None = None
    hash_type: str = "sha256"
    keep_mismatched: bool = False
    image_size: int = 256
    resize_mode: str = "no"
    resize_only_if_bigger: bool = True
    reencode: bool = False
    encode_format: str = "jpg"
    encode_quality: int = 95
    processes: int = 1
    threads: int = 16
    retries: int = 0
    timeout: int = 10
    shard_size: int = 10_000
    max_pixels: int = 89_478_485
    user_agent_token: str | None = None
    ignore_robots_headers: bool = False
    save_columns: list[str] | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        from pipelines.download import HASH_TYPES, RESIZE_MODES

        require(bool(self.input), "download.input", "a url list is required (URLS)", self.input)
        require(
            self.hash_type in HASH_TYPES,
            "download.hash_type",
            f"must be one of {', '.join(HASH_TYPES)}",
            self.hash_type,
        )
        require(
            self.resize_mode in RESIZE_MODES,
            "download.resize_mode",
            f"must be one of {', '.join(RESIZE_MODES)}",
            self.resize_mode,
        )
        require(
            self.encode_format in ("jpg", "png", "webp"),
            "download.encode_format",
            "must be jpg, png or webp",
            self.encode_format,
        )
        require(
            1 <= self.encode_quality <= 100,
            "download.encode_quality",
            "must be between 1 and 100",
            self.encode_quality,
        )
        for name in ("image_size", "processes", "threads", "timeout", "shard_size", "max_pixels"):
            require(
                getattr(self, name) >= 1, f"download.{name}", "must be >= 1", getattr(self, name)
            )
        require(self.retries >= 0, "download.retries", "must be >= 0", self.retries)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        nargs="?",
        default=None,
        metavar="URLS",
        help="url list file or folder (parquet/csv/tsv/jsonl/json/txt, .gz ok)",
    )
    parser.add_argument(
        "--out",
        dest="workspace",
        default=None,
        metavar="WS",
        help="workspace; shards go to WS/shards",
    )
    g = parser.add_argument_group("columns")
    g.add_argument(
        "--url-col", dest="url_col", default=None, help="url column (default: url or URL)"
    )
    g.add_argument(
        "--caption-col",
        dest="caption_col",
        default=None,
        help="caption column (default: caption or TEXT)",
    )
    g.add_argument(
        "--hash-col",
        dest="hash_col",
        default=None,
        help="column with the expected image hash (default: the hash type's name "
        "if present; 'none' to skip the check)",
    )
    g.add_argument(
        "--hash-type", dest="hash_type", default=None, help="md5, sha256 (default) or sha512"
    )
    g.add_argument(
        "--keep-mismatched",
        dest="keep_mismatched",
        action="store_true",
        default=None,
        help="keep images whose hash changed (flagged hash_mismatch) instead of dropping them",
    )
    g.add_argument(
        "--save-columns",
        dest="save_columns",
        default=None,
        metavar="A,B",
        help="input columns to keep in the shard parquet (default: all)",
    )
    g = parser.add_argument_group("images")
    g.add_argument(
        "--resize-mode",
        dest="resize_mode",
        default=None,
        help="no (default: bytes as served), keep_ratio, center_crop, border, keep_ratio_largest",
    )
    g.add_argument(
        "--image-size",
        dest="image_size",
        type=int,
        default=None,
        help="target size for resizing (default 256)",
    )
    g.add_argument(
        "--resize-always",
        dest="resize_only_if_bigger",
        action="store_false",
        default=None,
        help="also upscale images smaller than --image-size",
    )
    g.add_argument(
        "--reencode",
        action="store_true",
        default=None,
        help="with --resize-mode no: still decode and re-encode (validates images "
        "at download time)",
    )
    g.add_argument(
        "--encode-format",
        dest="encode_format",
        default=None,
        help="jpg (default), png or webp, for re-encoded images",
    )
    g.add_argument("--encode-quality", dest="encode_quality", type=int, default=None)
    g.add_argument(
        "--max-pixels",
        dest="max_pixels",
        type=int,
        default=None,
        help="refuse larger images when decoding (default 89478485)",
    )
    g = parser.add_argument_group("fetching")
    g.add_argument("--processes", type=int, default=None, help="worker processes (default 1)")
    g.add_argument("--threads", type=int, default=None, help="threads per process (default 16)")
    g.add_argument("--retries", type=int, default=None, help="retries per url (default 0)")
    g.add_argument("--timeout", type=int, default=None, help="seconds per request (default 10)")
    g.add_argument(
        "--shard-size",
        dest="shard_size",
        type=int,
        default=None,
        help="samples per shard (default 10000)",
    )
    g.add_argument("--user-agent-token", dest="user_agent_token", default=None)
    g.add_argument(
        "--ignore-robots-headers",
        dest="ignore_robots_headers",
        action="store_true",
        default=None,
        help="do not honour X-Robots-Tag noai/noindex headers",
    )
    g.add_argument("--overwrite", action="store_true", default=None, help="delete WS/shards first")


def run(cfg: Config, args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from audit.workspace import Workspace, check_invariant
    from pipelines.download import DownloadSettings, UrlListError, download

    ws = Workspace(args.workspace)
    if cfg.overwrite and ws.shards_dir.exists():
        shutil.rmtree(ws.shards_dir)
    if not Path(cfg.input).exists():
        raise InputError(f"url list not found: {cfg.input}")
    settings = DownloadSettings(
        url_col=cfg.url_col,
        caption_col=cfg.caption_col,
        hash_col=cfg.hash_col,
        hash_type=cfg.hash_type,
        keep_mismatched=cfg.keep_mismatched,
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        reencode=cfg.reencode,
        encode_format=cfg.encode_format,
        encode_quality=cfg.encode_quality,
        processes=cfg.processes,
        threads=cfg.threads,
        retries=cfg.retries,
        timeout=cfg.timeout,
        shard_size=cfg.shard_size,
        max_pixels=cfg.max_pixels,
        user_agent_token=cfg.user_agent_token,
        respect_robots_headers=not cfg.ignore_robots_headers,
        save_columns=tuple(cfg.save_columns) if cfg.save_columns is not None else None,
        quiet=getattr(args, "verbose", 0) < 2,
    )
    try:
        report = download(cfg.input, ws.shards_dir, settings)
    except UrlListError as exc:
        raise InputError(str(exc)) from exc
    except ValueError as exc:  # img2dataset's argument checks
        raise ConfigError(f"download: {exc}") from exc
    inv = check_invariant(report.keys, report.written_keys, stage="download")
    from pipelines.readers import normalize_status

    ours: dict[str, int] = {}
    for status, n in report.counts.items():
        mapped = normalize_status(status, None)
        ours[mapped[0]] = ours.get(mapped[0], 0) + n
    summary = {
        "urls": str(cfg.input),
        "input_rows": report.input_rows,
        "rows": inv["output"],
        "shards": report.shards,
        "img2dataset_counts": report.counts,
        "counts": ours,
        "columns": report.columns,
        "hash_check": report.verify,
        "reconciled": report.reconciled,
        "seconds": round(report.seconds, 3),
        "rows_per_second": round(report.input_rows / max(report.seconds, 1e-9), 1),
    }
    ws.write_json("download.json", summary)
    logger.info(
        "download: %d rows in %d shard(s) in %.1f s (%.0f urls/s): %s",
        inv["output"],
        report.shards,
        report.seconds,
        summary["rows_per_second"],
        ", ".join(f"{n:,} {k}" for k, n in sorted(ours.items())),
    )
    if report.reconciled.get("added_missing_rows"):
        logger.warning(
            "%d rows were missing from img2dataset's output and were recorded as "
            "failed_to_download (see %s)",
            report.reconciled["added_missing_rows"],
            ws.shards_dir / "_img2dataset.log",
        )
    return 0
