"""``laion-audit download URLS --out WS``: fetch a url list into WS/shards with img2dataset."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from audit.config import ConfigError, Options, add_options, add_positional, option, require
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


def _hash_types() -> tuple[str, ...]:
    from pipelines.download import HASH_TYPES

    return HASH_TYPES


def _resize_modes() -> tuple[str, ...]:
    from pipelines.download import RESIZE_MODES

    return RESIZE_MODES


@dataclass
class Config(Options):
    input: str | None = option(
        None,
        help="url list file or folder (parquet/csv/tsv/jsonl/json/txt, .gz ok)",
        metavar="URLS",
        cli=False,  # positional: add_arguments
    )
    url_col: str | None = option(
        None, help="url column", default_help="url or URL", group="columns"
    )
    caption_col: str | None = option(
        None, help="caption column", default_help="caption or TEXT", group="columns"
    )
    hash_col: str | None = option(
        None,
        help="column with the expected image hash; 'none' to skip the check",
        default_help="the hash type's name if present",
        group="columns",
    )
    hash_type: str = option("sha256", help="hash type", choices=_hash_types, group="columns")
    keep_mismatched: bool = option(
        False,
        help="keep images whose hash changed (flagged hash_mismatch) instead of dropping them",
        group="columns",
    )
    save_columns: list[str] | None = option(
        None,
        help="input columns to keep in the shard parquet",
        metavar="A,B",
        default_help="all",
        group="columns",
    )
    resize_mode: str = option(
        "no",
        help="how images are stored: no keeps the bytes as served, the others resize to "
        "--image-size",
        choices=_resize_modes,
        group="images",
    )
    image_size: int = option(256, help="target size for resizing", ge=1, group="images")
    resize_always: bool = option(
        False, help="also upscale images smaller than --image-size", group="images"
    )
    reencode: bool = option(
        False,
        help="decode and re-encode every image as --encode-format at --encode-quality, also "
        "those that need no resize (validates images at download time; without it an image "
        "already in that format and size keeps its original bytes)",
        group="images",
    )
    encode_format: str = option(
        "jpg",
        help="format of re-encoded images",
        choices=("jpg", "png", "webp"),
        group="images",
    )
    encode_quality: int = option(
        95, help="quality of re-encoded images", ge=1, le=100, group="images"
    )
    max_pixels: int = option(
        89_478_485, help="refuse larger images when decoding", ge=1, group="images"
    )
    processes: int = option(1, help="worker processes", ge=1, group="fetching")
    threads: int = option(16, help="threads per process", ge=1, group="fetching")
    retries: int = option(0, help="retries per url", ge=0, group="fetching")
    timeout: int = option(10, help="seconds per request", ge=1, group="fetching")
    shard_size: int = option(10_000, help="samples per shard", ge=1, group="fetching")
    user_agent_token: str | None = option(
        None, help="token added to img2dataset's User-Agent", group="fetching"
    )
    ignore_robots_headers: bool = option(
        False, help="do not honour X-Robots-Tag noai/noindex headers", group="fetching"
    )
    overwrite: bool = option(False, help="delete WS/shards first", group="fetching")

    def check(self) -> None:
        require(bool(self.input), "download.input", "a url list is required (URLS)", self.input)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_positional(parser, Config, "input")
    parser.add_argument(
        "--out",
        dest="workspace",
        default=None,
        metavar="WS",
        help="workspace; shards go to WS/shards",
    )
    add_options(parser, Config)


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
        resize_only_if_bigger=not cfg.resize_always,
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
        "stats": report.stats,
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
