"""Download a url list into webdataset shards with img2dataset's Python API, with integrity checks.

Steps (:func:`download`):

1. Read the url list (parquet, csv, tsv, jsonl, json, txt; ``.gz`` too; a file or a folder of
   them) and normalise it to ``shards/_urls.parquet``: ``url``, ``caption``, the expected hash,
   and every other input column (LAION's ``WIDTH``, ``HEIGHT``, ``similarity``, ``punsafe``, ...;
   names img2dataset reserves get a ``src_`` prefix). Row ``i`` becomes img2dataset's key for
   ``i`` (``compute_key``), so keys are known before anything is fetched.
2. Run ``img2dataset.download(...)`` (webdataset output, resize policy, processes, threads,
   retries, timeout; wandb off; its console output goes to ``shards/_img2dataset.log``).
   With a hash column, img2dataset's ``verify_hash`` drops images whose bytes changed (the
   split-view defence); ``keep_mismatched`` keeps them in the tar instead, flagged.
3. Reconcile: every input row must be in its shard's parquet with ``status`` and
   ``error_message``. Rows img2dataset lost (a crashed sample or shard) are added as
   ``failed_to_download`` with the reason; hash mismatches get status ``hash_mismatch`` and every
   row gets ``expected_sha256``. Shard parquets are rewritten atomically, sorted by key.

A rerun resumes: img2dataset skips shards that have their ``NNNNN_stats.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.common import Stats, write_table_atomic

logger = logging.getLogger(__name__)

RESERVED = frozenset(
    {
        "key",
        "caption",
        "url",
        "width",
        "height",
        "original_width",
        "original_height",
        "status",
        "error_message",
        "exif",
        "md5",
        "sha256",
        "sha512",
    }
)
"""Column names img2dataset writes itself (input columns with these names are prefixed)."""

URL_COLUMNS = ("url", "URL", "image_url", "link")
CAPTION_COLUMNS = ("caption", "TEXT", "text", "alt", "txt")
HASH_TYPES = ("md5", "sha256", "sha512")
RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border", "keep_ratio_largest")
INPUT_FORMATS = ("parquet", "csv", "tsv", "jsonl", "json", "txt")
URLS_FILE = "_urls.parquet"
LOG_FILE = "_img2dataset.log"
OOM_SHARD_COUNT = 5


class UrlListError(ValueError):
    """The url list is unusable (missing file or column); the message says what is wrong."""


@dataclass(frozen=True)
class DownloadSettings:
    """img2dataset options we expose (defaults friendly to a small machine)."""

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
    respect_robots_headers: bool = True
    save_columns: tuple[str, ...] | None = None
    quiet: bool = True


@dataclass
class DownloadReport:
    """What happened: rows per status, shards, the mapping used, timing (``stats``: seconds
    per step, see :class:`pipelines.common.Stats`)."""

    input_rows: int
    shards: int
    counts: dict[str, int]
    columns: dict[str, str | None]
    seconds: float
    reconciled: dict[str, int] = field(default_factory=dict)
    verify: str = "none"
    keys: list[str] = field(default_factory=list, repr=False)
    written_keys: list[str] = field(default_factory=list, repr=False)
    stats: dict[str, Any] = field(default_factory=dict)


# ---- the url list ----------------------------------------------------------------------------
def _format_of(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    ext = name.rsplit(".", 1)[-1] if "." in name else ""
    if ext in INPUT_FORMATS:
        return ext
    if ext == "ndjson":
        return "jsonl"
    raise UrlListError(
        f"{path}: unknown url list format (expected one of "
        f"{', '.join(INPUT_FORMATS)}, optionally .gz)"
    )


def read_url_list(path: str | Path) -> pa.Table:
    """A url list file, or a folder of them (concatenated in name order), as one table."""
    import gzip

    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    p = Path(path)
    if not p.exists():
        raise UrlListError(f"url list not found: {p}")
    files = (
        sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith((".", "_")))
        if p.is_dir()
        else [p]
    )
    if not files:
        raise UrlListError(f"{p}: folder holds no url list files")
    tables = []
    for f in files:
        fmt = _format_of(f)
        try:
            if fmt == "parquet":
                t = pq.read_table(f)
            else:
                opener = gzip.open if f.name.lower().endswith(".gz") else open
                with opener(f, "rb") as fh:
                    if fmt == "csv":
                        t = pcsv.read_csv(fh)
                    elif fmt == "tsv":
                        t = pcsv.read_csv(fh, parse_options=pcsv.ParseOptions(delimiter="\t"))
                    elif fmt == "jsonl":
                        t = pjson.read_json(fh)
                    elif fmt == "json":
                        import json

                        data = json.load(fh)
                        t = pa.Table.from_pylist(data if isinstance(data, list) else [data])
                    else:  # txt: one url per line
                        lines = fh.read().decode("utf-8").splitlines()
                        t = pa.table({"url": [ln.strip() for ln in lines if ln.strip()]})
        except (pa.ArrowInvalid, ValueError, OSError, UnicodeDecodeError) as exc:
            raise UrlListError(f"{f}: cannot read as {fmt}: {exc}") from exc
        tables.append(t)
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowInvalid as exc:
        raise UrlListError(f"{p}: url list files have incompatible columns: {exc}") from exc


def _pick(
    names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, required: bool
) -> str | None:
    if wanted:
        if wanted not in names:
            raise UrlListError(
                f"{what} column {wanted!r} not in the url list (columns: {', '.join(names)})"
            )
        return wanted
    for c in candidates:
        if c in names:
            return c
    if required:
        raise UrlListError(
            f"no {what} column in the url list (looked for "
            f"{', '.join(candidates)}; columns: {', '.join(names)}); "
            f"name it with --{what}-col"
        )
    return None


def key_for(index: int, shard_size: int) -> tuple[int, str]:
    """img2dataset's (shard id, key) of input row ``index`` (its ``compute_key``)."""
    oom = math.ceil(math.log10(shard_size))
    shard, i = divmod(index, shard_size)
    return shard, f"{(10**oom) * shard + i:0{oom + OOM_SHARD_COUNT}d}"


def prepare_url_list(table: pa.Table, s: DownloadSettings) -> tuple[pa.Table, dict[str, Any]]:
    """Normalise columns for img2dataset: ``url``, ``caption``, hash, extras (``src_`` prefix
    for reserved names). Returns the table and the column mapping used."""
    names = table.column_names
    url_col = _pick(names, s.url_col, URL_COLUMNS, "url", required=True)
    cap_col = _pick(names, s.caption_col, CAPTION_COLUMNS, "caption", required=False)
    if s.hash_type not in HASH_TYPES:
        raise UrlListError(
            f"hash type must be one of {', '.join(HASH_TYPES)} (got {s.hash_type!r})"
        )
    if s.hash_col in ("", "none"):
        hash_col = None
    else:
        hash_col = _pick(names, s.hash_col, (s.hash_type,), "hash", required=False)
    out: dict[str, pa.Array] = {
        "url": pc.cast(table.column(url_col), pa.string()),
    }
    if cap_col:
        out["caption"] = pc.cast(table.column(cap_col), pa.string())
    if hash_col:
        out["expected_hash"] = pc.utf8_lower(pc.cast(table.column(hash_col), pa.string()))
    wanted = (
        list(s.save_columns)
        if s.save_columns is not None
        else [c for c in names if c not in (url_col, cap_col, hash_col)]
    )
    extras: list[str] = []
    for c in wanted:
        if c not in names:
            raise UrlListError(
                f"column {c!r} to save is not in the url list (columns: {', '.join(names)})"
            )
        new = f"src_{c}" if c in RESERVED or c in ("expected_hash", "expected_sha256") else c
        out[new] = table.column(c)
        extras.append(new)
    mapping = {"url": url_col, "caption": cap_col, "hash": hash_col, "extras": extras}
    return pa.table(out), mapping


# ---- running img2dataset -----------------------------------------------------------------------
@contextlib.contextmanager
def _output_to(path: Path | None) -> Iterator[None]:
    """Send fds 1 and 2 (inherited by img2dataset's worker processes) and Python's
    ``sys.stdout``/``sys.stderr`` to ``path``."""
    if path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with (
            open(path, "ab") as log,
            open(path, "a", buffering=1) as text,
            contextlib.redirect_stdout(text),
            contextlib.redirect_stderr(text),
        ):
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _img2dataset_kwargs(
    url_file: Path,
    out_dir: Path,
    s: DownloadSettings,
    has_caption: bool,
    verify: bool,
    extras: list[str],
) -> dict[str, Any]:
    return dict(
        url_list=str(url_file),
        output_folder=str(out_dir),
        input_format="parquet",
        url_col="url",
        caption_col="caption" if has_caption else None,
        output_format="webdataset",
        processes_count=s.processes,
        thread_count=s.threads,
        image_size=s.image_size,
        resize_mode=s.resize_mode,
        resize_only_if_bigger=s.resize_only_if_bigger,
        encode_format=s.encode_format,
        encode_quality=s.encode_quality,
        # --reencode: every image decoded and encoded again (img2dataset otherwise keeps the
        # original bytes of an image that needs no resize and is already --encode-format)
        skip_reencode=not s.reencode,
        disable_all_reencoding=(s.resize_mode == "no" and not s.reencode),
        number_sample_per_shard=s.shard_size,
        oom_shard_count=OOM_SHARD_COUNT,
        timeout=s.timeout,
        retries=s.retries,
        compute_hash=s.hash_type,
        verify_hash=[s.hash_type, s.hash_type] if verify else None,
        save_additional_columns=extras or None,
        extract_exif=False,
        enable_wandb=False,
        distributor="multiprocessing",
        incremental_mode="incremental",
        max_shard_retry=1,
        max_image_area=float(s.max_pixels),
        user_agent_token=s.user_agent_token,
        disallowed_header_directives=None if s.respect_robots_headers else [],
    )


def run_img2dataset(
    url_file: Path,
    out_dir: Path,
    s: DownloadSettings,
    has_caption: bool,
    verify: bool,
    extras: list[str],
) -> None:
    """Call ``img2dataset.download`` quietly; restores the SIGINT handler it installs."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import img2dataset

    for name in ("img2dataset", "exifread", "wandb", "albumentations"):
        logging.getLogger(name).setLevel(logging.ERROR)
    kwargs = _img2dataset_kwargs(url_file, out_dir, s, has_caption, verify, extras)
    previous = signal.getsignal(signal.SIGINT)
    try:
        with _output_to(out_dir / LOG_FILE if s.quiet else None):
            img2dataset.download(**kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- reconciling -------------------------------------------------------------------------------
def _shard_name(shard: int) -> str:
    return f"{shard:0{OOM_SHARD_COUNT}d}"


def reconcile(
    out_dir: Path, urls: pa.Table, s: DownloadSettings, verify: bool, hash_present: bool
) -> tuple[dict[str, int], list[str]]:
    """Make every input row appear once in its shard's parquet; flag hash mismatches.

    Returns counts of what was fixed and the keys now in the shard parquets.
    """
    n = urls.num_rows
    fixed: Counter[str] = Counter()
    written: list[str] = []
    hash_col = s.hash_type
    expected_all = urls.column("expected_hash").to_pylist() if hash_present else [None] * n
    n_shards = math.ceil(n / s.shard_size) if n else 0
    for shard in range(n_shards):
        lo, hi = shard * s.shard_size, min(n, (shard + 1) * s.shard_size)
        keys = [key_for(i, s.shard_size)[1] for i in range(lo, hi)]
        expected = dict(zip(keys, expected_all[lo:hi]))
        path = out_dir / f"{_shard_name(shard)}.parquet"
        if path.exists():
            try:
                table = pq.read_table(path)
            except Exception as exc:  # noqa: BLE001 - a damaged parquet: rebuild it below
                logger.warning("%s unreadable (%s); its rows are recorded as failed", path, exc)
                table = None
        else:
            table = None
        rows = table.to_pylist() if table is not None else []
        seen: dict[str, dict[str, Any]] = {}
        for r in rows:
            k = str(r.get("key"))
            if k in seen or k not in expected:
                fixed["dropped_unexpected_rows"] += 1
                continue
            seen[k] = r
        reason = (
            "shard failed in img2dataset (see _img2dataset.log); rerun download to retry"
            if table is None
            else "sample not recorded by img2dataset (see "
            "_img2dataset.log); rerun download to retry"
        )
        input_rows = urls.slice(lo, hi - lo).to_pylist()
        for k, src in zip(keys, input_rows):
            if k not in seen:
                fixed["added_missing_rows"] += 1
                row = {c: v for c, v in src.items() if c != "expected_hash"}
                row.update({"key": k, "status": "failed_to_download", "error_message": reason})
                seen[k] = row
            r = seen[k]
            exp = expected[k]
            r["expected_" + hash_col] = exp
            got = r.get(hash_col)
            if (
                r.get("status") == "failed_to_download"
                and r.get("error_message") == "hash mismatch"
            ):
                r["status"] = "hash_mismatch"
                r["error_message"] = (
                    f"hash mismatch: served bytes differ from expected "
                    f"{hash_col} {exp} (image dropped by verify_hash)"
                )
                fixed["hash_mismatch"] += 1
            elif (
                not verify
                and exp
                and got
                and r.get("status") == "success"
                and str(got).lower() != str(exp).lower()
            ):
                r["status"] = "hash_mismatch"
                r["error_message"] = (
                    f"hash mismatch: served bytes have {hash_col} {got}, "
                    f"expected {exp} (image kept, flagged)"
                )
                fixed["hash_mismatch"] += 1
        ordered = [seen[k] for k in sorted(seen)]
        new = pa.Table.from_pylist(ordered, schema=_merged_schema(table, ordered))
        write_table_atomic(path, new)
        written.extend(r["key"] for r in ordered)
    return dict(fixed), written


def _merged_schema(table: pa.Table | None, rows: list[dict[str, Any]]) -> pa.Schema:
    inferred = pa.Table.from_pylist(rows).schema if rows else pa.schema([])
    if table is None:
        return inferred
    fields = list(table.schema)
    names = set(table.schema.names)
    for f in inferred:
        if f.name not in names:
            fields.append(f)
    return pa.schema(fields)


def _url_list_digest(urls: pa.Table) -> str:
    h = hashlib.sha256()
    for u in urls.column("url").to_pylist():
        h.update((u or "").encode() + b"\n")
    return h.hexdigest()


# ---- the whole step ----------------------------------------------------------------------------
def download(
    url_list: str | Path, out_dir: str | Path, s: DownloadSettings = DownloadSettings()
) -> DownloadReport:
    """Download ``url_list`` into ``out_dir`` (webdataset shards + parquet + stats)."""
    t0 = time.perf_counter()
    stats = Stats()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if s.resize_mode not in RESIZE_MODES:
        raise UrlListError(
            f"resize mode must be one of {', '.join(RESIZE_MODES)} (got {s.resize_mode!r})"
        )
    with stats.track("read_url_list"):
        raw = read_url_list(url_list)
    if raw.num_rows == 0:
        raise UrlListError(f"{url_list}: the url list is empty")
    urls, mapping = prepare_url_list(raw, s)
    hash_present = mapping["hash"] is not None
    verify = hash_present and not s.keep_mismatched
    if verify and urls.column("expected_hash").null_count:
        logger.warning(
            "%d rows have no expected %s: verifying after the download instead of "
            "with img2dataset's verify_hash (mismatched images are kept, flagged)",
            urls.column("expected_hash").null_count,
            s.hash_type,
        )
        verify = False
    url_file = out / URLS_FILE
    if url_file.exists():
        old = pq.read_table(url_file, columns=["url"])
        if old.num_rows != urls.num_rows or _url_list_digest(old) != _url_list_digest(urls):
            raise UrlListError(
                f"{out} already holds shards of a different url list; use "
                "another workspace or --overwrite"
            )
    # img2dataset reads the hash column under the hash type's name when verifying
    for_i2d = urls
    if hash_present:
        i = urls.schema.get_field_index("expected_hash")
        for_i2d = (
            urls.rename_columns(
                [s.hash_type if n == "expected_hash" else n for n in urls.column_names]
            )
            if verify
            else urls.remove_column(i)
        )
    write_table_atomic(url_file, for_i2d)
    logger.info(
        "downloading %d urls into %s (%d shard(s) of %d; %d process(es) x %d threads; "
        "hash check: %s)",
        urls.num_rows,
        out,
        math.ceil(urls.num_rows / s.shard_size),
        s.shard_size,
        s.processes,
        s.threads,
        "verify_hash (drop)" if verify else "after download (keep)" if hash_present else "none",
    )
    with stats.track("img2dataset"):
        run_img2dataset(url_file, out, s, mapping["caption"] is not None, verify, mapping["extras"])
    with stats.track("reconcile"):
        reconciled, written = reconcile(out, urls, s, verify, hash_present)
    keys = [key_for(i, s.shard_size)[1] for i in range(urls.num_rows)]
    counts: Counter[str] = Counter()
    for f in sorted(out.glob("*.parquet")):
        if f.name.startswith(("_", ".")):
            continue
        counts.update(pq.read_table(f, columns=["status"]).column("status").to_pylist())
    return DownloadReport(
        input_rows=urls.num_rows,
        shards=math.ceil(urls.num_rows / s.shard_size),
        counts=dict(sorted(counts.items())),
        columns={"url": mapping["url"], "caption": mapping["caption"], "hash": mapping["hash"]},
        seconds=time.perf_counter() - t0,
        reconciled=reconciled,
        verify="verify_hash" if verify else "after_download" if hash_present else "none",
        keys=keys,
        written_keys=written,
        stats=stats.to_dict(),
    )
