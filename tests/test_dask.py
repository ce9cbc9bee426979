"""Beam pipelines on a real Dask ``distributed`` cluster (Beam's DaskRunner, batch only).

One module-scoped ``LocalCluster`` (2 single-threaded worker processes on 127.0.0.1, no
dashboard) serves every test and is closed at the end. Checked here:

- the partitioned near-duplicate Beam transform (``pipelines.dedup_beam``) on the Dask runner
  gives the same rows as on the DirectRunner and as the single-machine partitioned path
  (``detectors.dedup.near_duplicate_groups``) on the same clustered vectors;
- a worker process killed in the middle of a run (``os._exit`` inside a DoFn, once) neither
  loses nor duplicates rows: Dask's nanny restarts the worker and the scheduler recomputes the
  lost tasks from their inputs (Beam stages on Dask are pure bag tasks).

Output is collected as ONE element (``ToList``) written by the last transform, atomically, to a
JSON file: Beam's file sinks and ``Read`` sources are not usable on the DaskRunner here (see
``docs/runners.md``, "What the Dask runner cannot do").
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors import dedup as dd
from tests.test_dedup import clustered
from tests.test_embed import write_simple_shard

pytest.importorskip("distributed")

pytestmark = pytest.mark.slow

DIM = 64
N = 2000
PARAMS = {"partition_size": 200, "max_probes": 2, "probe_scale": 0.5}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from pipelines.beam_options import local_dask_cluster

    with local_dask_cluster(2) as c:
        yield c


def run_collect(build: Any, out: Path, setup: Any) -> list[Any]:
    """Run ``build(p) -> PCollection`` and return its elements.

    The elements travel as one list to a single task that writes ``out`` (temporary name, then
    rename: a retried task rewrites the same file). The Dask runner's client is closed after.
    """
    import apache_beam as beam

    def save(elements: list[Any], path: str) -> None:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(elements, f)
        os.replace(tmp, path)

    p = beam.Pipeline(runner=setup.new_runner(), options=setup.options)
    (build(p) | "Collect" >> beam.combiners.ToList() | "Save" >> beam.Map(save, str(out)))
    result = p.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)
        if client is not None:
            client.close()
    return json.loads(out.read_text())


def dask_setup(cluster: Any) -> Any:
    from pipelines.beam_options import beam_setup

    return beam_setup([f"--dask_client_address={cluster.scheduler_address}"], runner="DaskRunner")


def test_dask_runner_drops_finish_bundle_outputs_and_safe_equivalents(
    cluster: Any, tmp_path: Path
) -> None:
    """Beam 2.77's DaskRunner snapshots a bundle's outputs BEFORE ``finish_bundle`` runs
    (``transform_evaluator.apply_dofn_to_bundle``), so whatever a DoFn emits there is lost:
    ``BatchElements`` (its last batch of every bundle), ``Top.*`` (per-bundle heaps), the file
    sinks (temp file names). Equivalents that emit only from ``process`` survive:
    ``CombineGlobally(TopCombineFn)`` and batching by key + ``GroupByKey``. If this test fails
    because the first two lists are complete, Beam fixed the runner."""
    import apache_beam as beam
    from apache_beam.transforms.combiners import TopCombineFn

    n = 300

    def build(p: Any) -> Any:
        xs = p | beam.Create(list(range(n)))
        batched = (
            xs
            | "Batch" >> beam.BatchElements(min_batch_size=50, max_batch_size=50)
            | "BatchRows" >> beam.FlatMap(lambda b: [["batch", v] for v in b])
        )
        top = (
            xs
            | "Top" >> beam.combiners.Top.Smallest(5)
            | "TopRows" >> beam.FlatMap(lambda t: [["top", v] for v in t])
        )
        safe_top = (
            xs
            | "SafeTop" >> beam.CombineGlobally(TopCombineFn(5, reverse=True))
            | "SafeTopRows" >> beam.FlatMap(lambda t: [["safe_top", v] for v in t])
        )
        safe_batch = (
            xs
            | "Bucket" >> beam.Map(lambda v: (v % 6, v))
            | "GroupBuckets" >> beam.GroupByKey()
            | "SafeBatchRows" >> beam.FlatMapTuple(lambda k, vs: [["safe_batch", v] for v in vs])
        )
        return (batched, top, safe_top, safe_batch) | beam.Flatten()

    with dask_setup(cluster) as on_dask:
        got = run_collect(build, tmp_path / "out.json", on_dask)
    by: dict[str, list[int]] = {}
    for tag, v in got:
        by.setdefault(tag, []).append(v)
    assert sorted(by.get("safe_batch", [])) == list(range(n))
    assert sorted(by.get("safe_top", [])) == [0, 1, 2, 3, 4]
    assert len(by.get("batch", [])) < n  # lost: the batches emitted in finish_bundle
    assert by.get("top", []) == []  # lost: Top's per-bundle heaps are emitted in finish_bundle


def test_dedup_beam_on_dask_equals_direct_and_single_machine(cluster: Any, tmp_path: Path) -> None:
    """On Dask the model is fitted by a first pipeline and passed as a plain argument (what
    ``run_near_dedup`` does there); the one-pipeline version, whose model is a side input, is
    refused on Dask (see ``test_dask_side_inputs_see_duplicated_rows``)."""
    import apache_beam as beam

    from pipelines.beam_options import beam_setup
    from pipelines.dedup_beam import PartitionedNearDuplicates, fit_model

    x, truth = clustered(N, seed=3, n_groups=150, dim=DIM)
    rng = np.random.default_rng(1)
    keys = [f"{i:09d}" for i in rng.permutation(N)]
    prio = rng.random(N)
    expected, info = dd.near_duplicate_groups(
        keys, x, 0.95, priority=prio, method="partitioned", **PARAMS
    )
    assert info["n_partitions"] == 10 and expected.num_rows > 300
    want = sorted(expected.to_pylist(), key=lambda r: r["key"])
    rows = [(k, x[i], float(prio[i])) for i, k in enumerate(keys)]

    def build(p: Any, model: dict | None = None) -> Any:
        return (
            p
            | beam.Create(rows)
            | PartitionedNearDuplicates(0.95, model=model, **PARAMS)
            | beam.Map(lambda r: dict(r, similarity=float(r["similarity"])))
        )

    with beam_setup([]) as direct:
        got_direct = run_collect(build, tmp_path / "direct.json", direct)
    with dask_setup(cluster) as on_dask:
        assert on_dask.runner_name.endswith("DaskRunner")
        with pytest.raises(ValueError, match="precomputed model"):
            run_collect(build, tmp_path / "refused.json", on_dask)
        model = fit_model(
            lambda p: p | beam.Create(rows), str(tmp_path / "m.npz"), 0.95, on_dask, **PARAMS
        )
        got_dask = run_collect(lambda p: build(p, model), tmp_path / "dask.json", on_dask)

    def norm(rs: list[dict]) -> list[dict]:
        # JSON turns float32 similarities into float64 text: compare at float32 precision
        return sorted(
            ({**r, "similarity": float(np.float32(r["similarity"]))} for r in rs),
            key=lambda r: r["key"],
        )

    assert norm(got_direct) == norm(want)
    assert norm(got_dask) == norm(want)
    pairs = {(r["key"], r["group_id"]) for r in got_dask}
    assert len(pairs) == len(got_dask)  # one row per key, no duplicates


def test_batch_sample_equals_the_hash_sample_and_refuses_an_incomplete_one(monkeypatch) -> None:
    """Each batch passes only its rows that can be in the k-means sample (its smallest hashes
    and those below ~2x the sample's share of the hash range) through a two-level combine:
    the fitted centroids are those of the single-machine hash sample; a margin too small to
    hold the sample is an error, never a different sample."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that

    from pipelines import dedup_beam as db

    n, p_size = 20_000, 1000
    x, _ = clustered(n, seed=5, n_groups=10, dim=DIM)
    keys = [f"k{i:07d}" for i in range(n)]
    batches = [db.make_batch(keys[s : s + 1000], x[s : s + 1000]) for s in range(0, n, 1000)]
    size = dd.partition_sample_size(n, p_size)
    want = dd.train_partitioner(x[dd.hash_sample(keys, size)], 20)
    monkeypatch.setattr(db, "SAMPLE_KEEP_MIN", 8)  # the hash bound does the work

    def check(models: list) -> None:
        assert len(models) == 1 and models[0]["n"] == n
        np.testing.assert_array_equal(models[0]["centroids"], want)

    with TestPipeline() as pipe:
        fitted = pipe | beam.Create(batches) | db.FitPartitionModel(0.95, partition_size=p_size)
        assert_that(fitted, check)
    monkeypatch.setattr(db, "SAMPLE_MARGIN", 0.5)  # keeps ~3% of rows; the sample needs 6.4%
    with pytest.raises(Exception, match="hash sample incomplete"), TestPipeline() as pipe:
        _ = pipe | beam.Create(batches) | db.FitPartitionModel(0.95, partition_size=p_size)


def test_dask_side_inputs_see_duplicated_rows(cluster: Any, tmp_path: Path) -> None:
    """Why the near-duplicate model is never a side input on Dask: the runner recomputes a
    side input's upstream inside the worker, where the tasks of one step share Beam's output
    list (see ``pipelines.dask_checks``), so the fitted model counted ~3x the rows. If this
    fails because ``n`` is right, Beam fixed the runner."""
    import apache_beam as beam
    from apache_beam.pvalue import AsSingleton

    from pipelines import dedup_beam as db
    from pipelines.beam_options import beam_setup

    x, _ = clustered(N, seed=3, n_groups=20, dim=DIM)
    rows = [(f"{i:09d}", x[i], 0.0) for i in range(N)]

    def seen(_: Any, model: dict) -> int:
        return int(model["n"])

    def build(p: Any) -> Any:
        batches = p | beam.Create(rows) | beam.Map(db.as_batch)
        fitted = batches | db.FitPartitionModel(0.95, partition_size=200)
        return batches | "Seen" >> beam.Map(seen, AsSingleton(fitted)) | beam.Distinct()

    with dask_setup(cluster) as on_dask:
        got = run_collect(build, tmp_path / "out.json", on_dask)
    assert got and all(n > N for n in got)  # the model read as a side input: too many rows
    with beam_setup([]) as direct:
        assert run_collect(build, tmp_path / "direct.json", direct) == [N]


def test_in_process_workers_duplicate_outputs_and_every_pipeline_refuses_them(
    tmp_path: Path,
) -> None:
    """Dask workers that are threads of the launching process (``processes=False``) share the
    runner's per-step output list: 100 inputs in 4 bag partitions give 250 side-effect calls in
    the step after a ``Map`` (25 + 50 + 75 + 100). dedup, embed and reshard refuse such a
    cluster before doing any work."""
    import apache_beam as beam
    from distributed import LocalCluster

    from pipelines import dedup_beam as db
    from pipelines.beam_options import beam_setup
    from pipelines.dask_checks import UnsafeDaskCluster, check_safe_runner, worker_kinds
    from pipelines.embed import run_embed
    from pipelines.reshard import reshard

    log = tmp_path / "calls.txt"
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as threads:
        flags = [f"--dask_client_address={threads.scheduler_address}", "--dask_npartitions=4"]
        with beam_setup(flags, runner="DaskRunner") as setup:
            kinds = worker_kinds(setup.options)
            assert kinds and all(k["in_process"] for k in kinds.values())
            p = beam.Pipeline(runner=setup.new_runner(), options=setup.options)
            (
                p
                | beam.Create(list(range(100)))
                | "Double" >> beam.Map(lambda i: 2 * i)
                | "Record" >> beam.Map(_record_call, str(log))
            )
            result = p.run()
            result.wait_until_finish()
            result.client.close()
            calls = log.read_text().split()
            assert len(set(calls)) == 100 and len(calls) == 250

            with pytest.raises(UnsafeDaskCluster, match="threads inside the launching process"):
                check_safe_runner(setup)
            with pytest.raises(UnsafeDaskCluster):
                db.run_near_dedup([], str(tmp_path / "near"), 0.95, setup=setup)
            with pytest.raises(UnsafeDaskCluster):
                run_embed([], None, None, None, options=setup.options, runner=setup.new_runner())
            write_simple_shard(tmp_path / "shards", 0, 2)
            with pytest.raises(UnsafeDaskCluster):
                reshard(str(tmp_path / "shards"), "drop.parquet", str(tmp_path / "out"), flags,
                        runner="DaskRunner")  # fmt: skip
            assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.fixture(scope="module")
def threaded_cluster() -> Iterator[Any]:
    """2 worker processes with 2 threads each (what a default ``Client()`` / ``dask worker``
    gives: several threads per process)."""
    from distributed import LocalCluster

    from pipelines.beam_options import _restore_environ

    saved = dict(os.environ)
    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=None
    ) as c:
        _restore_environ(saved)
        yield c
    _restore_environ(saved)


@pytest.mark.parametrize("kind", ["1 thread", "2 threads"])
def test_pipelines_on_worker_processes_lose_and_duplicate_no_row(
    kind: str, cluster: Any, threaded_cluster: Any, tmp_path: Path
) -> None:
    """dedup (parquet in, shards out), embed and reshard on Dask worker processes with 1 and 2
    threads each: every row read comes out once, equal to the DirectRunner's output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import dedup_beam as db
    from pipelines.beam_options import beam_setup
    from pipelines.reshard import reshard
    from tests.test_dedup import make_workspace
    from tests.test_embed import TinyModel, run_pipeline

    c = cluster if kind == "1 thread" else threaded_cluster
    flags = ["--runner", "DaskRunner", f"--dask_client_address={c.scheduler_address}"]

    # dedup: 600 rows in 2 parquet parts (7 + 2 failed rows without an embedding)
    ws, _, _ = make_workspace(tmp_path / "ws", n=600, seed=21)
    parts = [str(p) for p in ws.embedding_parts()]
    n_in = sum(pq.read_metadata(p).num_rows for p in parts)
    params = {"partition_size": 60, "group_rows": 150}  # 10 partitions in 4 search groups
    outs = {}
    for name, args in (("direct", []), ("dask", flags)):
        with beam_setup(args) as setup:
            db.run_near_dedup(parts, str(tmp_path / name / "near"), 0.95, setup=setup, **params)
        files = sorted((tmp_path / name).glob("near-*-of-*.parquet"))
        outs[name] = pa.concat_tables([pq.read_table(f) for f in files]).sort_by("key")
    assert n_in == 600 and outs["direct"].num_rows > 40
    assert outs["dask"].to_pylist() == outs["direct"].to_pylist()
    assert len(set(outs["dask"].column("key").to_pylist())) == outs["dask"].num_rows

    # embed: 3 shards of 5 images + 1 failed download each: 18 rows in, 18 out, same parts
    model = TinyModel()
    for name, args in (("e_direct", []), ("e_dask", flags)):
        for i in range(3):
            write_simple_shard(tmp_path / name / "shards", i, 5, failed=1)
        run_pipeline(tmp_path / name, model, args)
    for i in range(3):
        a = pq.read_table(tmp_path / "e_direct" / "embeddings" / f"part-{i:05d}.parquet")
        b = pq.read_table(tmp_path / "e_dask" / "embeddings" / f"part-{i:05d}.parquet")
        assert a.num_rows == b.num_rows == 6 and a.equals(b)

    # reshard: 3 shards, 2 keys dropped: samples in = out + dropped, the same kept keys
    drop = tmp_path / "drop.parquet"
    pq.write_table(pa.table({"key": ["000000001", "000010003"]}), drop)
    totals = {}
    for name, args in (("r_direct", []), ("r_dask", flags)):
        totals[name] = reshard(
            str(tmp_path / "e_direct" / "shards"), str(drop), str(tmp_path / name), args
        )
        kept = set()
        for t in sorted((tmp_path / name).glob("*.tar")):
            kept |= set(_tar_member_keys(t))
        totals[name]["kept_keys"] = sorted(kept)
    assert totals["r_dask"] == totals["r_direct"]
    assert totals["r_dask"]["samples_in"] == 15 and totals["r_dask"]["samples_dropped"] == 2


def _tar_member_keys(path: Path) -> list[str]:
    import tarfile

    with tarfile.open(path) as tf:
        return sorted({m.name.split(".", 1)[0] for m in tf.getmembers()})


def _record_call(i: int, path: str) -> int:
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return i


def test_worker_killed_mid_run_loses_and_duplicates_nothing(cluster: Any, tmp_path: Path) -> None:
    import apache_beam as beam
    from distributed import Client

    marker = tmp_path / "killed.pid"
    n = 600

    def die_once(i: int, path: str) -> int:
        """Element 300 kills its worker process the first time anyone processes it."""
        if i == 300:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return i
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(1)  # no cleanup, like an OOM kill: the nanny starts a fresh worker
        return i

    def build(p: Any) -> Any:
        return (
            p
            | beam.Create(list(range(n)))
            | "Die" >> beam.Map(die_once, str(marker))
            | "Key" >> beam.Map(lambda i: (i % 7, i))
            | "Group" >> beam.GroupByKey()
            | "Sort" >> beam.MapTuple(lambda k, vs: [k, sorted(vs)])
        )

    with dask_setup(cluster) as on_dask:
        got = run_collect(build, tmp_path / "out.json", on_dask)
    assert marker.exists(), "no worker was killed"
    killed = int(marker.read_text())
    with Client(cluster.scheduler_address) as client:
        alive = set(client.run(os.getpid).values())
    assert killed not in alive  # that process is gone; a restarted worker took its place
    got = sorted(got)
    want = sorted([k, sorted(i for i in range(n) if i % 7 == k)] for k in range(7))
    assert got == want
    assert sum(len(vs) for _, vs in got) == n


def test_local_cluster_leaves_this_process_environment_alone() -> None:
    """distributed's nannies export OMP_NUM_THREADS=1 etc. into the parent process; left there,
    every later subprocess (an embed run, a notebook kernel) silently runs single-threaded."""
    import os

    from pipelines.beam_options import local_dask_cluster

    before = dict(os.environ)
    with local_dask_cluster(1) as c:
        assert c.scheduler_address.startswith("tcp://127.0.0.1")
        assert dict(os.environ) == before
    assert dict(os.environ) == before


def test_dedup_stage_beam_method_on_dask_local_equals_partitioned(tmp_path: Path) -> None:
    """``laion-audit dedup --method beam --dask-local 2``: parquet parts read with pyarrow from
    ``Create(paths)``, shards written by a keyed GroupByKey; same finding as the single-machine
    partitioned path (before the Dask-safe rewrite this run wrote an empty finding)."""
    from audit.cli import main
    from tests.test_dedup import make_workspace

    ws, _, _ = make_workspace(tmp_path / "ws", n=300, seed=13)
    common = ["--kinds", "near", "--partition-size", "40", "--threshold", "0.95", "-q"]
    assert main(["dedup", str(ws.root), "--method", "partitioned", *common]) == 0
    local = ws.read_finding("duplicates")
    assert main(["dedup", str(ws.root), "--method", "beam", "--dask-local", "2", *common]) == 0
    meta = ws.finding_meta("duplicates")["near"]
    assert meta["method"] == "beam" and meta["runner"].endswith("DaskRunner")
    assert local.num_rows > 40
    assert ws.read_finding("duplicates").to_pylist() == local.to_pylist()
