"""Sample sources for the embedding pipeline: shards in, :class:`Sample` records out.

Three layouts are read (see :func:`match_shards`):

- **webdataset**: ``NNNNN.tar`` (+ ``NNNNN.parquet``) as img2dataset writes them. The parquet is
  the manifest: it lists every input row, downloaded or not, with ``status`` and
  ``error_message``. Samples are grouped by webdataset's key rule (path up to the first dot of the
  file name); members of one sample must be consecutive.
- **parquet**: a parquet file whose rows carry image bytes (img2dataset's ``parquet`` output, a
  Hugging Face ``Image`` column, or any binary column named jpg/png/webp/image/img/bytes).
- **folder**: image files anywhere under a folder, with an optional ``same-name.txt`` caption;
  the key is the relative path without its extension.

Every input row comes out exactly once: rows that cannot be used keep their ``status`` and
``error`` (nothing is dropped here). Safety: tar members with an absolute path, a ``..``
component, or that are links or devices are never read, and their sample records why; a
truncated or damaged tar keeps every sample before the damage, and manifest rows after it are
recorded as missing from the tar; members larger than ``max_bytes`` are not read; sidecar
captions larger than :data:`MAX_CAPTION_BYTES` are not read (the sample is ``missing_caption``,
with the reason).

Keys are unique across the shards of a source: webdataset only asks for unique keys within one
shard, so shards from other projects reuse keys (``123_456.jpg`` in two tars). Before anything
is read, :func:`qualify_keys` lists the keys of every shard cheaply (manifest, key column, file
listing, or the tar headers of a tar without manifest); a key that several shards use is read as
``<shard stem>/<key>`` in each of them (``ShardSpec.qualified``). Folder inputs qualify a stem
that several files share (``a.jpg``, ``a.png``) by the file name instead. Keys that would stay
ambiguous are refused up front (:class:`KeyCollisionError`).

Paths go through Beam's ``FileSystems``, so ``gs://`` and other registered filesystems work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.common import FAILED_STATUSES
from pipelines.decode import DEFAULT_MAX_BYTES, IMAGE_EXTENSIONS, decode_caption

logger = logging.getLogger(__name__)

IMAGE_FIELD_PRIORITY = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    "gif",
    "bmp",
    "tif",
    "tiff",
    "jfif",
    "ppm",
    "pgm",
    "pbm",
    "ico",
    "tga",
    "avif",
    "mpo",
)
PARQUET_IMAGE_COLUMNS = ("jpg", "png", "webp", "image", "img", "image_bytes", "bytes")
PARQUET_CAPTION_COLUMNS = ("caption", "txt", "text", "TEXT")
PARQUET_URL_COLUMNS = ("url", "URL", "image_path")

MAX_CAPTION_BYTES = 64 * 1024
"""Largest sidecar caption file (folder inputs) that is read; larger ones are a caption problem."""

_WDS_KEY = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: becomes one ``embeddings/part-NNNNN.parquet`` (``index`` = NNNNN).

    ``kind`` is ``webdataset`` (``path`` = the tar, ``manifest`` = img2dataset's parquet; either
    may be missing), ``parquet`` (``path`` = a parquet with image bytes) or ``folder`` (``path``
    = the folder, ``files`` = relative image paths of this shard). ``qualified`` holds the keys
    of this shard that another shard also uses (set by :func:`qualify_keys`): they are read as
    ``<prefix>/<key>`` (folder inputs: the file name with its extension).
    """

    index: int
    kind: str
    path: str
    manifest: str | None = None
    files: tuple[str, ...] = ()
    qualified: frozenset[str] = frozenset()

    @property
    def prefix(self) -> str:
        """What qualifies a colliding key: the shard's file stem (``00012`` for ``00012.tar``)."""
        return _stem(self.path or self.manifest or "")

    def qualify(self, key: str) -> str:
        """The key of sample ``key`` of this shard across the whole source."""
        return f"{self.prefix}/{key}" if key in self.qualified else key

    def folder_key(self, rel: str) -> str:
        """Folder inputs: the key of the image file ``rel`` (its path without the extension,
        or with it when several files share that stem)."""
        stem = str(PurePosixPath(rel).with_suffix(""))
        return rel if stem in self.qualified else stem

    def describe(self) -> str:
        if self.kind == "folder":
            return f"{self.path} ({len(self.files)} files, shard {self.index})"
        return self.path if self.kind != "webdataset" or self.path else str(self.manifest)


@dataclass
class Sample:
    """One input row. ``status`` is ``ok`` until something fails; ``image`` holds the bytes
    (only ``ok`` and ``hash_mismatch`` samples keep them: a changed image is still embedded,
    under its flag)."""

    key: str
    shard: int
    url: str | None = None
    caption: str | None = None
    caption_problem: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    status: str = "ok"
    error: str | None = None
    image: bytes | None = field(default=None, repr=False)

    def fail(self, status: str, error: str) -> Sample:
        """Mark as failed; the image bytes are released."""
        self.status, self.error, self.image = status, error, None
        return self


def normalize_status(status: Any, error: Any) -> tuple[str, str | None]:
    """Map img2dataset's ``status``/``error_message`` to ours.

    ``success`` -> ``ok``; ``failed_to_download`` with ``hash mismatch`` -> ``hash_mismatch``
    (img2dataset's ``verify_hash`` drops such images); ``failed_to_resize`` (img2dataset could not
    decode the bytes) -> ``failed_to_decode``; unknown statuses are failures that keep their name
    in ``error``.
    """
    err = None if error is None else str(error)
    if status is None or status in ("success", "ok", "missing_caption"):
        return "ok", None if status in (None, "success", "ok") else err
    if status == "failed_to_download":
        if err and "hash mismatch" in err.lower():
            return "hash_mismatch", err
        return "failed_to_download", err or "download failed"
    if status == "failed_to_resize":
        return "failed_to_decode", f"img2dataset could not decode/resize: {err}"
    if status in FAILED_STATUSES:
        return str(status), err
    return "failed_to_download", f"unknown upstream status {status!r}: {err}"


def _sha256(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data else None


def _as_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _open(path: str):
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _exists(path: str | None) -> bool:
    if not path:
        return False
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


# ---- tar -----------------------------------------------------------------------------------
@dataclass
class TarSample:
    """The members of one webdataset sample: ``fields`` maps extension -> bytes."""

    key: str
    fields: dict[str, bytes] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset's rule: ``dir/000012.seg.png`` -> (``dir/000012``, ``seg.png``)."""
    m = _WDS_KEY.match(name)
    if not m:
        return name, ""
    return m.group(1), m.group(2).lower()


def unsafe_member_reason(member: tarfile.TarInfo) -> str | None:
    """Why a member must not be read (absolute path, ``..``, link, device), or ``None``."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", name):
        return "absolute path"
    if ".." in re.split(r"[\\/]+", name):
        return "path contains '..'"
    if member.issym() or member.islnk():
        return "link member"
    if not member.isfile():
        return "not a regular file"
    return None


def iter_tar_samples(
    fileobj: Any, report: dict[str, Any], max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[TarSample]:
    """Stream a (possibly compressed) tar as webdataset samples; never extracts to disk.

    ``report`` receives ``members``, ``rejected_members`` and, when the tar is damaged or
    truncated, ``damaged`` (a reason); samples before the damage are yielded.
    """
    report.setdefault("members", 0)
    report.setdefault("rejected_members", 0)
    fileobj = _TailTracker(fileobj)
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r|*")  # noqa: SIM115 - closed below
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        report["damaged"] = f"unreadable tar: {exc}"
        return
    current: TarSample | None = None
    reading: str | None = None  # the member whose data is being read
    with tf:
        try:
            for member in tf:
                if member.isdir():
                    continue
                report["members"] += 1
                key, ext = split_member_name(member.name)
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = TarSample(key)
                current.members.append(member.name)
                reason = unsafe_member_reason(member)
                if reason is not None:
                    report["rejected_members"] += 1
                    current.problems.append(f"tar member {member.name!r} rejected ({reason})")
                    continue
                if member.size > max_bytes:
                    current.problems.append(
                        f"tar member {member.name!r} too large ({member.size} bytes > "
                        f"max_bytes {max_bytes})"
                    )
                    continue
                reading = member.name
                fh = tf.extractfile(member)
                data = fh.read() if fh is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"unexpected end of data in {member.name!r}")
                reading = None
                if ext in current.fields:
                    current.problems.append(f"duplicate member {member.name!r} ignored")
                    continue
                current.fields[ext] = data
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            report["damaged"] = f"tar damaged after {report['members']} members: {exc}"
            if current is not None and reading is not None:
                current.problems.append(f"tar member {reading!r} truncated ({exc})")
    plain = getattr(tf.fileobj, "comptype", "") == "tar"
    if "damaged" not in report and plain and not fileobj.ends_with_zero_block():
        report["damaged"] = (
            "tar ends without its end-of-archive blocks (truncated at a member "
            f"boundary after {report['members']} members?)"
        )
    if current is not None:
        yield current


class _TailTracker:
    """File wrapper remembering the last 512 bytes read (to see the end-of-archive block)."""

    def __init__(self, fileobj: Any) -> None:
        self._f = fileobj
        self._tail = b""

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if data:
            self._tail = (self._tail + data)[-512:]
        return data

    def ends_with_zero_block(self) -> bool:
        return len(self._tail) == 512 and not self._tail.strip(b"\0")


def _pick_image(fields: dict[str, bytes]) -> bytes | None:
    for ext in IMAGE_FIELD_PRIORITY:
        if ext in fields:
            return fields[ext]
    for ext, data in fields.items():
        if ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
            return data
    return None


def load_manifest(path: str) -> dict[str, dict[str, Any]]:
    """img2dataset's per-shard parquet as ``{key: row}`` (keys sorted); raises on damage."""
    with _open(path) as fh:
        table = pq.read_table(fh)
    if "key" not in table.column_names:
        raise ValueError(f"{path}: manifest has no 'key' column (columns: {table.column_names})")
    rows = table.to_pylist()
    return {str(r["key"]): r for r in sorted(rows, key=lambda r: str(r["key"]))}


def read_webdataset_shard(
    spec: ShardSpec, report: dict[str, Any] | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[Sample]:
    """Samples of one img2dataset shard (tar joined with its parquet manifest)."""
    report = {} if report is None else report
    manifest: dict[str, dict[str, Any]] | None = None
    if spec.manifest and _exists(spec.manifest):
        try:
            manifest = load_manifest(spec.manifest)
        except Exception as exc:  # noqa: BLE001 - a broken manifest: fall back to the tar alone
            report["manifest_error"] = f"{type(exc).__name__}: {exc}"
            logger.warning("%s: unreadable manifest, using the tar alone: %s", spec.manifest, exc)
    report["manifest_rows"] = 0 if manifest is None else len(manifest)
    report["tar_only"] = 0
    extra: list[str] = report.setdefault("extra_keys", [])  # keys the manifest does not list
    seen: dict[str, int] = {}
    if spec.path and _exists(spec.path):
        with _open(spec.path) as fh:
            for ts in iter_tar_samples(fh, report, max_bytes):
                n = seen.get(ts.key, 0)
                seen[ts.key] = n + 1
                if n:
                    key = f"{spec.qualify(ts.key)}#{n}"
                    extra.append(key)
                    yield Sample(key, spec.index).fail(
                        "failed_to_decode",
                        f"sample key {ts.key!r} appears again later in the tar (members of one "
                        f"sample must be consecutive): {', '.join(ts.members)}",
                    )
                    continue
                row = manifest.pop(ts.key, None) if manifest is not None else None
                if manifest is not None and row is None:
                    report["tar_only"] += 1
                    extra.append(spec.qualify(ts.key))
                s = _wds_sample(spec.index, ts, row)
                s.key = spec.qualify(s.key)
                yield s
    elif spec.path:
        report["damaged"] = f"tar file missing: {spec.path}"
    for key, row in (manifest or {}).items():
        s = _manifest_sample(spec.index, spec.qualify(key), row)
        if s.status == "ok":
            where = report.get("damaged") or "no such member"
            s.fail("failed_to_decode", f"image missing from tar ({where})")
        yield s


def _json_meta(fields: dict[str, bytes]) -> dict[str, Any]:
    raw = fields.get("json")
    if not raw:
        return {}
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _manifest_sample(shard: int, key: str, row: dict[str, Any]) -> Sample:
    status, error = normalize_status(row.get("status"), row.get("error_message"))
    caption, problem = decode_caption(row.get("caption"))
    s = Sample(
        key,
        shard,
        url=row.get("url"),
        caption=caption,
        caption_problem=problem,
        sha256=row.get("sha256"),
        width=_as_int(row.get("width")),
        height=_as_int(row.get("height")),
    )
    if status != "ok":
        s.fail(status, error or status)
    return s


def _wds_sample(shard: int, ts: TarSample, row: dict[str, Any] | None) -> Sample:
    meta = _json_meta(ts.fields)
    source = row if row is not None else meta
    status, error = normalize_status(source.get("status"), source.get("error_message"))
    if "txt" in ts.fields:
        caption, problem = decode_caption(ts.fields["txt"])
    else:
        caption, problem = decode_caption(source.get("caption"))
    image = _pick_image(ts.fields)
    s = Sample(
        ts.key,
        shard,
        url=source.get("url"),
        caption=caption,
        caption_problem=problem,
        sha256=source.get("sha256") or _sha256(image),
        width=_as_int(source.get("width")),
        height=_as_int(source.get("height")),
        image=image,
    )
    if status == "hash_mismatch" and image is not None:  # kept by the download: embed, flagged
        s.status, s.error = status, error
        return s
    if status != "ok":
        return s.fail(status, error or status)
    if image is None:
        why = "; ".join(ts.problems) or (
            f"no image member in tar sample (members: {', '.join(ts.members)})"
        )
        return s.fail("failed_to_decode", why)
    if ts.problems:
        s.error = "; ".join(ts.problems)
    return s


# ---- parquet with image bytes ---------------------------------------------------------------
def _image_column(schema: pa.Schema) -> str | None:
    def usable(t: pa.DataType) -> bool:
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return True
        return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0

    for name in PARQUET_IMAGE_COLUMNS:
        if name in schema.names and usable(schema.field(name).type):
            return name
    for f in schema:
        if usable(f.type):
            return f.name
    return None


def _first(names: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in names), None)


def read_parquet_shard(
    spec: ShardSpec,
    report: dict[str, Any] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    batch_size: int = 256,
) -> Iterator[Sample]:
    """Samples of a parquet file with image bytes; keys from ``key`` or ``NNNNNRRRR``."""
    report = {} if report is None else report
    with _open(spec.path) as fh:
        pf = pq.ParquetFile(fh)
        names = pf.schema_arrow.names
        image_col = _image_column(pf.schema_arrow)
        cap_col = _first(names, PARQUET_CAPTION_COLUMNS)
        url_col = _first(names, PARQUET_URL_COLUMNS)
        n_rows = pf.metadata.num_rows
        width = max(4, len(str(max(n_rows - 1, 0))))
        report["rows"] = n_rows
        row_index = 0
        for batch in pf.iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                key = row.get("key")
                key = str(key) if key is not None else f"{spec.index:05d}{row_index:0{width}d}"
                key = spec.qualify(key)
                row_index += 1
                yield _parquet_sample(spec.index, key, row, image_col, cap_col, url_col, max_bytes)


def _parquet_sample(
    shard: int,
    key: str,
    row: dict[str, Any],
    image_col: str | None,
    cap_col: str | None,
    url_col: str | None,
    max_bytes: int,
) -> Sample:
    status, error = normalize_status(row.get("status"), row.get("error_message"))
    caption, problem = decode_caption(row.get(cap_col) if cap_col else None)
    image = row.get(image_col) if image_col else None
    if isinstance(image, dict):
        image = image.get("bytes")
    s = Sample(
        key,
        shard,
        url=row.get(url_col) if url_col else None,
        caption=caption,
        caption_problem=problem,
        sha256=row.get("sha256") or _sha256(image),
        width=_as_int(row.get("width")),
        height=_as_int(row.get("height")),
        image=image,
    )
    if status == "hash_mismatch" and image is not None:
        s.status, s.error = status, error
        return s
    if status != "ok":
        return s.fail(status, error or status)
    if image_col is None:
        return s.fail("failed_to_decode", "parquet has no image bytes column")
    if image is None:
        return s.fail("failed_to_decode", f"no image bytes in column {image_col!r}")
    if len(image) > max_bytes:
        return s.fail(
            "failed_to_decode", f"image file too large: {len(image)} bytes > max_bytes {max_bytes}"
        )
    return s


# ---- folder of images -----------------------------------------------------------------------
def read_folder_shard(
    spec: ShardSpec, report: dict[str, Any] | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[Sample]:
    """Image files with optional sidecar captions (``photo.jpg`` + ``photo.txt``)."""
    from apache_beam.io.filesystems import FileSystems

    report = {} if report is None else report
    root = spec.path.rstrip("/")
    for rel in spec.files:
        path = FileSystems.join(root, rel)
        stem = str(PurePosixPath(rel).with_suffix(""))
        s = Sample(spec.folder_key(rel), spec.index, url=path)
        cap_path = FileSystems.join(root, stem + ".txt")
        raw_caption = None
        try:
            if FileSystems.exists(cap_path):
                with _open(cap_path) as fh:
                    raw_caption = fh.read(MAX_CAPTION_BYTES + 1)
                if len(raw_caption) > MAX_CAPTION_BYTES:
                    raw_caption = None
                    s.caption_problem = (
                        f"caption file too large (more than {MAX_CAPTION_BYTES} bytes): not read"
                    )
        except OSError as exc:
            s.caption_problem = f"caption file unreadable: {exc}"
        if s.caption_problem is None:
            s.caption, s.caption_problem = decode_caption(raw_caption)
        try:
            size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
            if size > max_bytes:
                s.fail(
                    "failed_to_decode",
                    f"image file too large: {size} bytes > max_bytes {max_bytes}",
                )
                yield s
                continue
            with _open(path) as fh:
                s.image = fh.read()
        except (OSError, IndexError) as exc:
            s.fail("failed_to_decode", f"image file unreadable: {exc}")
            yield s
            continue
        s.sha256 = _sha256(s.image)
        yield s


READERS = {
    "webdataset": read_webdataset_shard,
    "parquet": read_parquet_shard,
    "folder": read_folder_shard,
}


def read_shard(
    spec: ShardSpec, report: dict[str, Any] | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[Sample]:
    """Samples of any shard kind; ``report`` collects per-shard notes (damage, rejections)."""
    return READERS[spec.kind](spec, report, max_bytes=max_bytes)


# ---- matching ---------------------------------------------------------------------------------
def _match(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    try:
        result = FileSystems.match([pattern])[0]
    except Exception:  # noqa: BLE001 - Beam raises BeamIOError when nothing matches
        return []
    return sorted(m.path for m in result.metadata_list)


def _stem(path: str) -> str:
    name = PurePosixPath(path).name
    for suffix in (".tar.gz", ".tgz", ".tar", ".parquet"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _stem_path(path: str) -> str:
    name = PurePosixPath(path).name
    return path[: len(path) - len(name)] + _stem(path)


def _is_dir(path: str) -> bool:
    if "://" not in path:
        return os.path.isdir(path)
    return not path.endswith((".tar", ".tar.gz", ".tgz", ".parquet"))


def _has_image_column(path: str) -> bool:
    with _open(path) as fh:
        schema = pq.read_schema(fh)
    return _image_column(schema) is not None


def _numbered(stems: list[str]) -> list[int]:
    if stems and all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(stems)))


def match_shards(source: str, folder_shard_size: int = 10_000) -> list[ShardSpec]:
    """Find the shards of a source: a folder of img2dataset shards, a folder of parquet files
    with image bytes, a folder of images, a single ``.tar``/``.parquet``, or a glob pattern.

    Shard indices come from numeric file names (img2dataset's ``00012.tar`` -> 12), else from
    the sorted position. Files starting with ``_`` or ``.`` are ignored.
    """
    from apache_beam.io.filesystems import FileSystems

    src = source.rstrip("/") if len(source) > 1 else source
    if any(ch in src for ch in "*?["):
        files = _match(src)
        if not files:
            raise FileNotFoundError(f"no input files match {source}")
    elif not _is_dir(src):
        if not FileSystems.exists(src):
            raise FileNotFoundError(f"input not found: {source}")
        if not src.endswith((".tar", ".tar.gz", ".tgz", ".parquet")):
            raise ValueError(f"{source}: expected a folder, a .tar, a .parquet or a glob pattern")
        files = [src]
        if not src.endswith(".parquet"):
            manifest = _stem_path(src) + ".parquet"
            if FileSystems.exists(manifest):
                files.append(manifest)
    else:
        files = (
            _match(FileSystems.join(src, "*.tar"))
            + _match(FileSystems.join(src, "*.tar.gz"))
            + _match(FileSystems.join(src, "*.tgz"))
            + _match(FileSystems.join(src, "*.parquet"))
        )
        if not files:
            images = [
                p
                for p in _match(FileSystems.join(src, "**"))
                if PurePosixPath(p).suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
            ]
            rels = sorted(str(PurePosixPath(p).relative_to(src)) for p in images)
            rels = [
                r
                for r in rels
                if not any(part.startswith((".", "_")) for part in PurePosixPath(r).parts)
            ]
            size = max(1, folder_shard_size)
            return [
                ShardSpec(i, "folder", src, files=tuple(rels[s : s + size]))
                for i, s in enumerate(range(0, len(rels), size))
            ]
    files = [f for f in files if not PurePosixPath(f).name.startswith(("_", "."))]
    tars = {_stem(f): f for f in files if not f.endswith(".parquet")}
    parquets = {_stem(f): f for f in files if f.endswith(".parquet")}
    specs: list[tuple[str, str, str, str | None]] = []  # (stem, kind, path, manifest)
    for stem, tar in tars.items():
        specs.append((stem, "webdataset", tar, parquets.get(stem)))
    for stem, pq_path in parquets.items():
        if stem in tars:
            continue
        if _has_image_column(pq_path):
            specs.append((stem, "parquet", pq_path, None))
        else:  # a manifest whose tar is missing (e.g. img2dataset failed the whole shard)
            specs.append((stem, "webdataset", _stem_path(pq_path) + ".tar", pq_path))
    specs.sort(key=lambda s: s[0].zfill(20) if s[0].isdigit() else s[0])
    indices = _numbered([s[0] for s in specs])
    return [
        ShardSpec(i, kind, path, manifest) for i, (_, kind, path, manifest) in zip(indices, specs)
    ]


def source_keys(spec: ShardSpec) -> list[str] | None:
    """Keys every reader must return for ``spec``, read cheaply from its manifest or listing
    (an independent check of the pipeline); ``None`` when only reading the data would tell."""
    if spec.kind == "folder":
        return [spec.folder_key(r) for r in spec.files]
    raw = _listed_keys(spec)
    return None if raw is None else [spec.qualify(k) for k in raw]


def _listed_keys(spec: ShardSpec) -> list[str] | None:
    """The unqualified keys of a manifest or parquet shard (``None``: a tar without manifest)."""
    if spec.kind == "webdataset" and spec.manifest and _exists(spec.manifest):
        with _open(spec.manifest) as fh:
            return [str(k) for k in pq.read_table(fh, columns=["key"]).column("key").to_pylist()]
    if spec.kind == "parquet":
        with _open(spec.path) as fh:
            pf = pq.ParquetFile(fh)
            if "key" in pf.schema_arrow.names:
                return [str(k) for k in pf.read(columns=["key"]).column("key").to_pylist()]
            n = pf.metadata.num_rows
            width = max(4, len(str(max(n - 1, 0))))
            return [f"{spec.index:05d}{i:0{width}d}" for i in range(n)]
    return None


def tar_keys(path: str) -> list[str]:
    """The sample keys of a tar from its member headers, in order (repeats included); a local
    plain tar is listed by seeking over the member data. A damaged tar gives the keys before
    the damage."""
    keys: list[str] = []
    if not _exists(path):
        return keys
    try:
        if "://" not in path and path.endswith(".tar"):
            with tarfile.open(path, mode="r:") as tf:
                keys.extend(split_member_name(m.name)[0] for m in tf if not m.isdir())
        else:
            with _open(path) as fh, tarfile.open(fileobj=fh, mode="r|*") as tf:
                for m in tf:
                    if not m.isdir():
                        keys.append(split_member_name(m.name)[0])
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        logger.debug("%s: keys listed up to the damage (%d): %s", path, len(keys), exc)
    return keys


def shard_keys(spec: ShardSpec) -> list[str]:
    """The unqualified keys the reader of ``spec`` yields, listed without reading image data:
    the manifest's or parquet's key column, the folder listing (stems), or the tar headers of a
    tar without (readable) manifest. Keys a damaged or unreadable shard hides are not listed."""
    if spec.kind == "folder":
        return [str(PurePosixPath(r).with_suffix("")) for r in spec.files]
    try:
        listed = _listed_keys(spec)
    except Exception as exc:  # noqa: BLE001 - the reader records the damage; list the tar
        logger.debug("%s: cannot list keys: %s", spec.describe(), exc)
        listed = None
    if listed is None and spec.kind == "webdataset" and spec.path:
        listed = tar_keys(spec.path)
    return listed or []


class KeyCollisionError(ValueError):
    """Sample keys of a source that stay ambiguous even when qualified by their shard."""


def qualify_keys(specs: list[ShardSpec]) -> list[ShardSpec]:
    """``specs`` with :attr:`ShardSpec.qualified` set, so that every sample key of the source is
    unique: a key that several shards use becomes ``<shard stem>/<key>`` in each of them (folder
    inputs: a stem that several files share becomes each file's name). Deterministic: it
    depends only on the keys listed by :func:`shard_keys`.

    Raises :class:`KeyCollisionError` (naming the shards) when keys stay ambiguous: a qualified
    key equal to another sample's key, two shards with the same stem sharing keys, or a key
    repeated within one parquet shard.
    """
    listed = {s.index: shard_keys(s) for s in specs}
    owner: dict[str, int] = {}
    colliding: dict[int, set[str]] = defaultdict(set)
    for s in specs:
        keys = listed[s.index]
        if s.kind == "folder":  # a stem that two files of one folder shard share
            counts = Counter(keys)
            colliding[s.index].update(k for k, c in counts.items() if c > 1)
        for k in dict.fromkeys(keys):
            first = owner.setdefault(k, s.index)
            if first != s.index:
                colliding[first].add(k)
                colliding[s.index].add(k)
    del owner
    out = [
        replace(s, qualified=frozenset(colliding[s.index])) if colliding.get(s.index) else s
        for s in specs
    ]
    final: dict[str, ShardSpec] = {}
    clashes: list[str] = []
    n_clashes = 0
    for s in out:
        if s.kind == "folder":
            keys = [s.folder_key(r) for r in s.files]
        elif s.kind == "webdataset":  # repeats inside one tar: the reader's "key#n" rule
            keys = [s.qualify(k) for k in dict.fromkeys(listed[s.index])]
        else:
            keys = [s.qualify(k) for k in listed[s.index]]
        for k in keys:
            if k not in final:
                final[k] = s
                continue
            n_clashes += 1
            if len(clashes) < 5:
                clashes.append(f"{k!r} in {final[k].describe()} and {s.describe()}")
    if n_clashes:
        raise KeyCollisionError(
            f"{n_clashes} sample keys are not unique even when qualified by their shard, e.g. "
            + "; ".join(clashes)
            + " (rename the shards or their samples)"
        )
    touched = [s for s in out if s.qualified]
    if touched:
        logger.warning(
            "%d sample keys are used by more than one shard (%d shards): each copy is read as "
            "<shard stem>/<key> (folder inputs: the file name), e.g. %s in %s",
            len(set().union(*(s.qualified for s in touched))),
            len(touched),
            sorted(touched[0].qualified)[:3],
            touched[0].describe(),
        )
    return out
