"""Rewrite webdataset shards without the dropped samples (an Apache Beam pipeline).

One element per input shard: the ``ReshardShard`` DoFn streams the tar member by member into a
new tar that leaves out every sample whose key is in the drop list, filters the shard's parquet
(img2dataset's per-shard metadata) the same way, and writes ``<shard>_stats.json`` with the
counts. Memory is bounded by one member plus the drop-key set (loaded once per worker in
``setup``). Outputs are written to temporary names and renamed when complete, so a crash never
leaves a half-written shard; a rerun rewrites every shard (cheap, streaming).

Members whose names are absolute or contain ``..`` are not copied (counted as ``rejected``).
Sample keys are those of the embed stage (:mod:`pipelines.readers`): webdataset's key rule, and
``<shard stem>/<key>`` for a key that several shards use (:func:`pipelines.readers.qualify_keys`,
decided once by the driver from the same listing as ``embed``), so a dropped sample is found in
its own shard only.
Files go through Beam's ``FileSystems``, so the output may be on any filesystem Beam supports
(local paths here; ``gs://`` etc. on a cluster).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

logger = logging.getLogger(__name__)


def sample_key(member_name: str) -> str | None:
    """The webdataset sample key of a tar member, as the embed stage reads it
    (``dir/000000012.jpg`` -> ``dir/000000012``); ``None`` without an extension."""
    from pipelines.readers import split_member_name

    key, ext = split_member_name(member_name)
    return key if ext else None


def _unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/")


def _join(directory: str, name: str) -> str:
    return FileSystems.join(directory, name)


def _stem(path: str) -> str:
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return base[:-4] if base.endswith(".tar") else base


class ReshardShard(beam.DoFn):
    """Copy one shard (tar + parquet) without the dropped keys; yields the shard's counts."""

    def __init__(
        self, drop_path: str, out_dir: str, qualified: dict[str, frozenset[str]] | None = None
    ) -> None:
        self.drop_path = drop_path
        self.out_dir = out_dir
        self.qualified = dict(qualified or {})  # shard stem -> keys read as <stem>/<key>
        self.drop: frozenset[str] = frozenset()

    def setup(self) -> None:
        with FileSystems.open(self.drop_path) as fh:
            table = pq.read_table(io.BytesIO(fh.read()), columns=["key"])
        self.drop = frozenset(table.column("key").to_pylist())

    def process(self, tar_path: str) -> Iterator[dict[str, Any]]:
        stem = _stem(tar_path)
        qualified = self.qualified.get(stem, frozenset())

        def dropped(key: str) -> bool:
            return (f"{stem}/{key}" if key in qualified else key) in self.drop

        counts = {
            "shard": stem,
            "samples_in": 0,
            "samples_out": 0,
            "samples_dropped": 0,
            "members_in": 0,
            "members_out": 0,
            "rejected": 0,
            "parquet_rows_in": 0,
            "parquet_rows_out": 0,
        }
        seen_in: set[str] = set()
        seen_out: set[str] = set()
        out_tar = _join(self.out_dir, f"{stem}.tar")
        tmp_tar = _join(self.out_dir, f".{stem}.tar.tmp")
        with (
            FileSystems.open(tar_path, compression_type="uncompressed") as src,
            FileSystems.create(tmp_tar, compression_type="uncompressed") as dst,
            tarfile.open(fileobj=src, mode="r|") as tin,
            tarfile.open(fileobj=dst, mode="w|", format=tarfile.PAX_FORMAT) as tout,
        ):
            for info in tin:
                counts["members_in"] += 1
                key = sample_key(info.name)
                if not info.isfile() or _unsafe(info.name) or key is None:
                    counts["rejected"] += 1
                    continue
                seen_in.add(key)
                if dropped(key):
                    continue
                tout.addfile(info, tin.extractfile(info))
                seen_out.add(key)
                counts["members_out"] += 1
        FileSystems.rename([tmp_tar], [out_tar])
        counts["samples_in"] = len(seen_in)
        counts["samples_out"] = len(seen_out)
        counts["samples_dropped"] = len(seen_in - seen_out)
        src_pq = tar_path[:-4] + ".parquet" if tar_path.endswith(".tar") else None
        if src_pq and FileSystems.exists(src_pq):
            with FileSystems.open(src_pq, compression_type="uncompressed") as fh:
                table = pq.read_table(io.BytesIO(fh.read()))
            counts["parquet_rows_in"] = table.num_rows
            if "key" in table.column_names:
                keys = table.column("key").to_pylist()
                keep = [k is None or not dropped(str(k)) for k in keys]
                table = table.filter(pa.array(keep, pa.bool_()))
            counts["parquet_rows_out"] = table.num_rows
            self._write(_join(self.out_dir, f"{stem}.parquet"), _parquet_bytes(table))
        stats = {**counts, "successes": counts["samples_out"], "count": counts["parquet_rows_out"]}
        self._write(
            _join(self.out_dir, f"{stem}_stats.json"),
            (json.dumps(stats, indent=2, sort_keys=True) + "\n").encode(),
        )
        yield counts

    @staticmethod
    def _write(path: str, data: bytes) -> None:
        tmp = path.rsplit("/", 1)
        tmp_path = _join(tmp[0], "." + tmp[1] + ".tmp") if len(tmp) == 2 else "." + path + ".tmp"
        with FileSystems.create(tmp_path, compression_type="uncompressed") as fh:
            fh.write(data)
        FileSystems.rename([tmp_path], [path])


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _sum_counts(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for c in items:
        for k, v in c.items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
    return total


class Reshard(beam.PTransform):
    """Shard tar paths -> per-shard counts, writing the filtered shards into ``out_dir``."""

    def __init__(
        self, drop_path: str, out_dir: str, qualified: dict[str, frozenset[str]] | None = None
    ) -> None:
        super().__init__()
        self.drop_path = drop_path
        self.out_dir = out_dir
        self.qualified = qualified

    def expand(self, paths: beam.PCollection) -> beam.PCollection:
        return (
            paths
            | "Reshuffle" >> beam.Reshuffle()
            | "RewriteShard"
            >> beam.ParDo(ReshardShard(self.drop_path, self.out_dir, self.qualified))
        )


def qualified_keys(shards_dir: str) -> dict[str, frozenset[str]]:
    """Shard stem -> the keys the embed stage reads as ``<stem>/<key>`` (used by other shards
    too), from the same listing as ``embed``."""
    from pipelines.readers import match_shards, qualify_keys

    specs = qualify_keys(match_shards(shards_dir))
    return {s.prefix: s.qualified for s in specs if s.qualified and s.kind == "webdataset"}


def find_shards(shards_dir: str) -> list[str]:
    """The webdataset tar files under ``shards_dir`` (one level, as img2dataset writes them)."""
    matches = FileSystems.match([_join(shards_dir, "*.tar")])[0].metadata_list
    return sorted(m.path for m in matches)


def reshard(
    shards_dir: str,
    drop_path: str,
    out_dir: str,
    pipeline_args: Sequence[str] | None = None,
    runner: str | None = None,
    dask_local: int | None = None,
) -> dict[str, Any]:
    """Run the pipeline over every tar in ``shards_dir``; returns the summed counts (from the
    ``_stats.json`` files the workers wrote) plus ``shards``. Runner options as in
    :func:`pipelines.beam_options.beam_setup` (DirectRunner by default)."""
    from pipelines.beam_options import beam_setup
    from pipelines.dask_checks import check_safe_runner, with_bag_partitions

    with beam_setup(list(pipeline_args or []), runner=runner, dask_local=dask_local) as setup:
        check_safe_runner(setup)  # refuses Dask workers that duplicate rows, before any work
        tars = find_shards(shards_dir)
        if not tars:
            raise FileNotFoundError(f"no webdataset shards (*.tar) in {shards_dir}")
        qualified = qualified_keys(shards_dir)
        if not FileSystems.exists(out_dir):
            FileSystems.mkdirs(out_dir)
        with beam.Pipeline(
            runner=setup.new_runner(), options=with_bag_partitions(setup, len(tars)).options
        ) as p:
            _ = (
                p
                | "Shards" >> beam.Create(tars)
                | "Reshard" >> Reshard(drop_path, out_dir, qualified)
            )
    per_shard = []
    for t in tars:
        with FileSystems.open(
            _join(out_dir, f"{_stem(t)}_stats.json"), compression_type="uncompressed"
        ) as fh:
            per_shard.append(json.loads(fh.read()))
    total = _sum_counts(per_shard)
    total.pop("successes", None)
    total.pop("count", None)
    total["shards"] = len(tars)
    if total["samples_in"] != total["samples_out"] + total["samples_dropped"]:
        raise RuntimeError(f"reshard counts do not reconcile: {total}")
    logger.info(
        "resharded %d shards: %d samples in, %d kept, %d dropped",
        len(tars),
        total["samples_in"],
        total["samples_out"],
        total["samples_dropped"],
    )
    return total
