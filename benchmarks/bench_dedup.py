"""Near-duplicate search at scale: partitioned path vs brute force vs a SemDeDup-style reference.

Data: ``N x 512`` float16 unit vectors shaped like CLIP image embeddings (a shared mean direction,
so unrelated pairs have cosine ~0.3; 64 topics, N/200 clusters; ~0.6 cosine inside a cluster)
with planted near-duplicate groups (3% of rows get 1-7 copies at cosine ~0.91-1.0, some exact),
so the threshold has both true pairs and near misses around it. Not uniform noise. The data is
written once per size to ``--work`` as an ``.npy`` file (10 GB at 10^7 rows) and every method
reads it **memory-mapped**: nothing holds all N rows in memory.

Methods, each in its own fresh subprocess (peak memory = ``ru_maxrss`` of that process: the
pages of the mapped file it holds plus its own arrays; the workers drop the mapped pages they
swept, ``detectors.dedup.release_pages``, so the file's page cache is not counted):

* ``partitioned``: ``detectors.dedup.partitioned_edges`` (FAISS spherical k-means on a sample,
  nearest-centroid partitions, exact FAISS range search per partition against itself plus probe
  vectors from neighbouring partitions), keeping every pair for the recall measurement.
* ``brute``: exact all-pairs FAISS range search (``detectors.dedup.exact_edges``); measured up to
  ``--brute-max`` (300,000) vectors. Larger sizes get a row marked ``extrapolated`` (time x
  (N/N0)^2, memory x N/N0 from the largest measured size) with NO recall: it was not run.
* ``semdedup``: SemDeDup-style reference with OUR k-means: the same FAISS spherical k-means on
  the same seeded sample as ``partitioned`` (identical centroids), every vector assigned to its
  nearest centroid, then per cluster the full product ``X_c X_c^T`` thresholded (pairs across
  clusters are never compared: no probes). Up to ``--semdedup-max`` rows.

Recall = share of the true pairs above the threshold that a method finds. Truth: exact FAISS
range search of query rows against all N (``--queries`` rows drawn from the planted groups,
where the true pairs are, plus ``--random-queries`` from all rows; fewer at large N, at most
``--truth-budget`` query x row products). Reported with a Wilson 95% interval over pairs and a
bootstrap 95% interval over query rows (the pairs of one query are not independent).

Stepwise and resumable: each (size, step) writes its result to ``--work``; a rerun skips what
is done, and ``benchmarks/results/dedup.json`` is rewritten after every step from all finished
steps, so a long run can be stopped and continued.

Usage::

    python benchmarks/bench_dedup.py                       # 100k, 300k, 1M (long: run in bg)
    python benchmarks/bench_dedup.py --sizes 20000,50000   # quick
    nice -n 5 python benchmarks/bench_dedup.py --n 10000000 --methods partitioned --keep-data --merge

Prints a table and writes ``benchmarks/results/dedup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_SIZES = (100_000, 300_000, 1_000_000)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def make_data(
    n: int,
    dim: int = 512,
    seed: int = 0,
    dup_rate: float = 0.03,
    chunk: int = 50_000,
    out: np.ndarray | None = None,
    with_planted: bool = False,
) -> tuple:
    """Clustered unit vectors (float16) with planted near-duplicate groups (see module doc).

    ``out``: an ``n x dim`` float16 array to fill (e.g. ``np.lib.format.open_memmap``), so 10^7
    rows never sit in memory at once. Returns ``(x, info)``, plus the planted rows (sources and
    copies, sorted) with ``with_planted``."""
    from detectors.dedup import release_pages

    ss = np.random.SeedSequence(seed)
    rng = np.random.default_rng(ss.spawn(1)[0])
    mean = _unit(rng.standard_normal((1, dim))).astype(np.float32)
    n_topics, n_clusters = 64, max(8, n // 200)
    topics = _unit(rng.standard_normal((n_topics, dim))).astype(np.float32)
    centres = _unit(
        topics[rng.integers(0, n_topics, n_clusters)]
        + _unit(rng.standard_normal((n_clusters, dim)))
    ).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float16) if out is None else out
    for s, child in zip(range(0, n, chunk), ss.spawn((n + chunk - 1) // chunk)):
        r = np.random.default_rng(child)
        m = min(chunk, n - s)
        lab = r.integers(0, n_clusters, m)
        noise = _unit(r.standard_normal((m, dim)).astype(np.float32))
        x[s : s + m] = _unit(0.55 * mean + 0.6 * centres[lab] + 0.58 * noise)
        _flush(x)
    # planted groups: sources get 1..7 copies at random other positions
    n_src = int(n * dup_rate)
    perm = rng.permutation(n)
    src = perm[:n_src]
    n_copies = np.minimum(rng.geometric(0.5, n_src), 7)
    dst = perm[n_src : n_src + int(n_copies.sum())]
    if dst.size < n_copies.sum():
        raise ValueError("dup_rate too high for n")
    src_rep = np.repeat(src, n_copies)
    tau = rng.uniform(0.0, 0.45, src_rep.size).astype(np.float32)
    tau[rng.random(src_rep.size) < 0.1] = 0.0  # exact copies
    for s in range(0, src_rep.size, chunk):
        sl = slice(s, s + chunk)
        base = x[src_rep[sl]].astype(np.float32)
        noise = _unit(rng.standard_normal(base.shape).astype(np.float32))
        x[dst[sl]] = _unit(base + tau[sl, None] * noise)
        _flush(x)
    release_pages(x)
    info = {
        "n": n,
        "dim": dim,
        "seed": seed,
        "n_clusters": n_clusters,
        "n_topics": n_topics,
        "planted_sources": int(n_src),
        "planted_copies": int(dst.size),
    }
    if with_planted:
        return x, info, np.sort(np.concatenate([src, dst])).astype(np.int64)
    return x, info


def _flush(x: np.ndarray) -> None:
    """Write a memory-mapped array's dirty pages and drop them from the resident set."""
    from detectors.dedup import release_pages

    if isinstance(x, np.memmap):
        x.flush()
        release_pages(x)


# ---------------------------------------------------------------------------------------------
# workers (run in a fresh subprocess each)
# ---------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pairs_touching(i: np.ndarray, j: np.ndarray, queries: np.ndarray, n: int) -> np.ndarray:
    """Codes ``q * n + other`` of the pairs touching a query row (both orientations)."""
    isq = np.zeros(n, dtype=bool)
    isq[queries] = True
    a = np.concatenate([i[isq[i]], j[isq[j]]]).astype(np.int64)
    b = np.concatenate([j[isq[i]], i[isq[j]]]).astype(np.int64)
    return np.unique(a * n + b)


def _semdedup(x: np.ndarray, threshold: float, params: dict[str, Any]) -> tuple:
    """SemDeDup-style reference with OUR k-means: the same FAISS spherical k-means on the same
    seeded sample as ``partitioned_edges`` (so the centroids are identical), every vector
    assigned to its nearest centroid (FAISS), then per cluster the full product ``X_c X_c^T``
    thresholded. Pairs across clusters are never compared (no probes)."""
    import faiss

    from detectors import dedup as dd

    t0 = time.perf_counter()
    n = x.shape[0]
    k = dd.choose_n_partitions(n, params["partition_size"])
    size = min(n, dd.partition_sample_size(n, params["partition_size"]))
    rng = np.random.default_rng(params["seed"])
    sample_index = np.sort(rng.choice(n, size=size, replace=False))
    centroids = dd.train_partitioner(dd.gather_rows(x, sample_index), k, seed=params["seed"])
    t_fit = time.perf_counter()
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    labels = np.empty(n, dtype=np.int64)
    for s in range(0, n, 65536):
        labels[s : s + 65536] = index.search(x[s : s + 65536].astype(np.float32), 1)[1][:, 0]
        dd.release_pages(x)
    t_assign = time.perf_counter()
    k = centroids.shape[0]
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    ii, jj = [], []
    for c in range(k):
        rows = order[bounds[c] : bounds[c + 1]]
        if rows.size < 2:
            continue
        xc = x[rows].astype(np.float32)
        sim = xc @ xc.T
        a, b = np.nonzero(np.triu(sim > threshold, k=1))
        ii.append(rows[a])
        jj.append(rows[b])
    dd.release_pages(x)
    i = np.concatenate(ii) if ii else np.zeros(0, np.int64)
    j = np.concatenate(jj) if jj else np.zeros(0, np.int64)
    info = {
        "kmeans": "detectors.dedup.train_partitioner (FAISS spherical, same sample and seed "
        "as partitioned)",
        "train_seconds": round(t_fit - t0, 3),
        "assign_seconds": round(t_assign - t_fit, 3),
        "search_seconds": round(time.perf_counter() - t_assign, 3),
        "n_clusters": int(k),
        "cluster_size_max": int(np.diff(bounds).max()),
    }
    return i, j, info


def _truth(x: np.ndarray, queries: np.ndarray, threshold: float) -> np.ndarray:
    """Exact pairs above ``threshold`` touching a query row: range search of the queries
    against all N, 100k rows at a time (memory-mapped input: pages released per block)."""
    import faiss

    from detectors.dedup import release_pages

    n = x.shape[0]
    q = x[queries].astype(np.float32)
    codes = []
    for s in range(0, n, 100_000):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x[s : s + 100_000].astype(np.float32))
        release_pages(x)
        lims, _, idx = index.range_search(q, threshold)
        qq = np.repeat(queries, np.diff(lims).astype(np.int64))
        jj = idx.astype(np.int64) + s
        keep = qq != jj
        codes.append(qq[keep].astype(np.int64) * n + jj[keep])
        if s // 100_000 % 10 == 9:
            print(f"#   truth: {s + 100_000} of {n} rows", file=sys.stderr, flush=True)
    return np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.int64)


def worker(args: argparse.Namespace) -> int:
    """Run one method on the cached data (memory-mapped); write a JSON result (and the codes
    of the pairs touching a query) to ``--result``."""
    import logging

    import faiss

    logging.basicConfig(level=logging.DEBUG, format="#   %(message)s", stream=sys.stderr)
    for noisy in ("faiss", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    faiss.omp_set_num_threads(args.threads)
    x = np.load(args.data, mmap_mode="r")
    queries = np.load(args.query_file)
    rss_load = _rss_mb()
    n = x.shape[0]
    params = json.loads(args.params)
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if args.worker == "truth":
        codes = _truth(x, queries, args.threshold)
        n_pairs = -1
    else:
        if args.worker == "partitioned":
            from detectors.dedup import partitioned_edges

            e = partitioned_edges(x, args.threshold, keep_all_pairs=True, **params)
            i, j, info, n_pairs = e.i, e.j, e.info, e.n_pairs
        elif args.worker == "brute":
            from detectors.dedup import exact_edges

            e = exact_edges(np.asarray(x), args.threshold, keep_all_pairs=True)
            i, j, info, n_pairs = e.i, e.j, e.info, e.n_pairs
        elif args.worker == "semdedup":
            i, j, info = _semdedup(x, args.threshold, params)
            n_pairs = int(i.size)
        else:
            raise SystemExit(f"unknown worker {args.worker}")
        codes = _pairs_touching(i, j, queries, n)
    seconds = time.perf_counter() - t0
    np.save(args.result + ".npy", codes)
    out = {
        "method": args.worker,
        "n": n,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(_rss_mb(), 1),
        "rss_after_load_mb": round(rss_load, 1),
        "n_pairs": int(n_pairs),
        "info": info,
        "params": params,
        "load_average_end": _load(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = args.result + ".tmp"
    Path(tmp).write_text(json.dumps(out))
    os.replace(tmp, args.result)
    return 0


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_worker(
    method: str,
    data: Path,
    queries: Path,
    threshold: float,
    params: dict,
    result: Path,
    threads: int,
    nice: int = 0,
) -> tuple[dict, np.ndarray]:
    """One method in a fresh subprocess, unless ``result`` exists (a finished step of an
    earlier, interrupted run: reused)."""
    if not result.exists():
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            method,
            "--data",
            str(data),
            "--query-file",
            str(queries),
            "--threshold",
            str(threshold),
            "--result",
            str(result),
            "--params",
            json.dumps(params),
            "--threads",
            str(threads),
        ]
        if nice:
            cmd = ["nice", "-n", str(nice), *cmd]
        load0 = _load()
        subprocess.run(cmd, check=True)
        res = json.loads(result.read_text())
        res["load_average_start"] = load0
        result.write_text(json.dumps(res))
    return json.loads(result.read_text()), np.load(str(result) + ".npy")


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--sizes",
        default=",".join(str(s) for s in DEFAULT_SIZES),
        help="comma-separated N (default 100000,300000,1000000)",
    )
    p.add_argument("--n", type=int, default=None, help="one size (same as --sizes N)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument(
        "--queries",
        type=int,
        default=5000,
        help="query rows for recall, drawn from the rows of planted groups (where the true "
        "pairs are)",
    )
    p.add_argument(
        "--random-queries",
        type=int,
        default=1000,
        help="extra query rows drawn from all rows (chance pairs above the threshold)",
    )
    p.add_argument(
        "--truth-budget",
        type=float,
        default=2e10,
        help="at most this many query x row products for the truth (fewer queries at large N)",
    )
    p.add_argument(
        "--brute-max",
        type=int,
        default=300_000,
        help="largest N for measured brute force (beyond: extrapolated, no recall)",
    )
    p.add_argument(
        "--semdedup-max", type=int, default=1_000_000, help="largest N for the SemDeDup reference"
    )
    p.add_argument("--partition-size", type=int, default=1000)
    p.add_argument("--max-probes", type=int, default=2)
    p.add_argument("--probe-scale", type=float, default=0.25)
    p.add_argument("--methods", default="partitioned,brute,semdedup")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nice", type=int, default=0, help="run the workers under nice -n")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--work",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "laion-audit-bench-dedup"),
        help="folder for the data files (N x dim float16 .npy, memory-mapped by the workers) "
        "and every finished step; a rerun reuses finished steps (resumable)",
    )
    p.add_argument(
        "--keep-data",
        action="store_true",
        help="keep a size's data file after its methods ran (default: delete it)",
    )
    p.add_argument("--out", default=str(HERE / "results" / "dedup.json"))
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of --out for (method, N) steps this run does not have (e.g. add "
        "N=10^7 to an earlier 10^5..10^6 table)",
    )
    # worker mode
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--query-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.n:
        args.sizes = str(args.n)
    return drive(args)


def _tag(args: argparse.Namespace, n: int) -> str:
    return f"n{n}-d{args.dim}-s{args.seed}-t{args.threshold}"


def query_counts(args: argparse.Namespace, n: int) -> tuple[int, int]:
    """(planted, random) query rows for size ``n``: ``--queries`` + ``--random-queries``, scaled
    down (same proportion) so the truth search does at most ``--truth-budget`` query x row
    products."""
    total = args.queries + args.random_queries
    scale = min(1.0, args.truth_budget / max(1, n) / max(1, total))
    return int(round(args.queries * scale)), int(round(args.random_queries * scale))


def prepare(args: argparse.Namespace, n: int, work: Path) -> tuple[Path, Path, dict]:
    """The data file, the query rows and the data info for size ``n`` (cached in ``work``)."""
    data = work / "x.npy"
    meta = work / "data.json"
    qpath = work / "queries.npy"
    if not meta.exists() or not data.exists():
        t0 = time.perf_counter()
        out = np.lib.format.open_memmap(data, mode="w+", dtype=np.float16, shape=(n, args.dim))
        _, info, planted = make_data(n, args.dim, args.seed, out=out, with_planted=True)
        out.flush()
        del out
        rng = np.random.default_rng(args.seed + 1)
        n_planted, n_random = query_counts(args, n)
        q_planted = rng.choice(planted, min(n_planted, planted.size), replace=False)
        q_random = rng.choice(n, min(n_random, n), replace=False)
        qidx = np.unique(np.concatenate([q_planted, q_random])).astype(np.int64)
        np.save(qpath, qidx)
        info = dict(
            info,
            generate_seconds=round(time.perf_counter() - t0, 1),
            file_gb=round(data.stat().st_size / 1e9, 2),
            query_rows=int(qidx.size),
            query_rows_planted=int(q_planted.size),
            query_rows_random=int(q_random.size),
        )
        meta.write_text(json.dumps(info))
        print(f"# N={n}: data generated in {info['generate_seconds']} s", flush=True)
    return data, qpath, json.loads(meta.read_text())


def drive(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    root = Path(args.work)
    root.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        work = root / _tag(args, n)
        work.mkdir(exist_ok=True)
        todo = [
            m
            for m in methods
            if not (m == "brute" and n > args.brute_max)
            and not (m == "semdedup" and n > args.semdedup_max)
        ]
        if all((work / f"{m}.json").exists() for m in ["truth", *todo]):
            continue
        data, qpath, _ = prepare(args, n, work)
        print(f"# N={n}: truth (exact search of the query rows against all N)", flush=True)
        run_worker(
            "truth", data, qpath, args.threshold, {}, work / "truth.json", args.threads, args.nice
        )
        for m in todo:
            params: dict[str, Any] = {"seed": args.seed}
            if m in ("partitioned", "semdedup"):
                params.update(partition_size=args.partition_size)
            if m == "partitioned":
                params.update(max_probes=args.max_probes, probe_scale=args.probe_scale)
            print(f"# N={n}: running {m}", flush=True)
            run_worker(
                m, data, qpath, args.threshold, params, work / f"{m}.json", args.threads, args.nice
            )
            write_results(args, root)
        if not args.keep_data:
            data.unlink(missing_ok=True)
    doc = write_results(args, root)
    _print_table(doc["rows"])
    for line in doc["summary"]["lines"]:
        print(line)
    print(f"wrote {args.out}")
    return 0


def collect(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """Every finished (size, method) step in ``root`` for these settings, with recall against
    the truth of its size; brute force beyond the largest measured size extrapolated (no
    recall)."""
    from detectors.stats import wilson_interval

    rows: list[dict[str, Any]] = []
    suffix = _tag(args, 0)[2:]  # the settings part of the folder names
    for work in sorted(root.glob(f"n*{suffix}")):
        if not (work / "truth.json").exists() or not (work / "data.json").exists():
            continue
        data_info = json.loads((work / "data.json").read_text())
        truth = json.loads((work / "truth.json").read_text())
        truth_codes = np.load(work / "truth.json.npy")
        n = data_info["n"]
        queries = np.load(work / "queries.npy") if (work / "queries.npy").exists() else None
        for f in sorted(work.glob("*.json")):
            if f.name in ("truth.json", "data.json"):
                continue
            res = json.loads(f.read_text())
            codes = np.load(str(f) + ".npy")
            found = np.isin(truth_codes, codes, assume_unique=True)
            n_true = int(truth_codes.size)
            lo, hi = wilson_interval(int(found.sum()), n_true)
            res.update(
                recall=found.sum() / n_true if n_true else None,
                recall_wilson95=[round(float(lo), 5), round(float(hi), 5)],
                recall_bootstrap95=_bootstrap_recall(truth_codes, found, n, queries),
                true_pairs_in_sample=n_true,
                measured=True,
                data=data_info,
                truth_seconds=truth["seconds"],
            )
            rows.append(res)
    brute = sorted((r for r in rows if r["method"] == "brute"), key=lambda r: r["n"])
    if brute and "brute" in args.methods:
        ref = brute[-1]
        for n in sorted({r["n"] for r in rows if r["method"] == "partitioned"}):
            if n <= ref["n"] or any(r["method"] == "brute" and r["n"] == n for r in rows):
                continue
            scale = n / ref["n"]
            rows.append(
                {
                    "method": "brute",
                    "n": n,
                    "measured": False,
                    "extrapolated": True,
                    "seconds": round(ref["seconds"] * scale**2, 1),
                    "peak_rss_mb": round(ref["peak_rss_mb"] * scale, 1),
                    "recall": None,
                    "note": f"EXTRAPOLATED from the measured N={ref['n']} (time x (N/N0)^2, "
                    "memory x N/N0); not run, so no recall",
                }
            )
    return sorted(rows, key=lambda r: (r["n"], r["method"]))


def _bootstrap_recall(
    truth_codes: np.ndarray, found: np.ndarray, n: int, queries: np.ndarray | None, reps: int = 1000
) -> list[float] | None:
    """95% percentile interval of the recall, resampling query rows (the pairs of one query are
    not independent trials: a group's copies are found or missed together)."""
    if queries is None or truth_codes.size == 0:
        return None
    q = truth_codes // n
    pos = np.searchsorted(queries, q)
    tot = np.bincount(pos, minlength=queries.size).astype(np.float64)
    hit = np.bincount(pos, weights=found.astype(np.float64), minlength=queries.size)
    rng = np.random.default_rng(0)
    pick = rng.integers(0, queries.size, (reps, queries.size))
    t, h = tot[pick].sum(1), hit[pick].sum(1)
    r = h[t > 0] / t[t > 0]
    return [round(float(np.percentile(r, 2.5)), 5), round(float(np.percentile(r, 97.5)), 5)]


def write_results(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    rows = collect(args, root)
    out = Path(args.out)
    command = "python benchmarks/bench_dedup.py " + " ".join(sys.argv[1:])
    earlier: list[str] = []
    for r in rows:
        r.setdefault("measured_by", command)
    if getattr(args, "merge", False) and out.exists():
        have = {(r["method"], r["n"]) for r in rows}
        prev = json.loads(out.read_text())
        prev_command = prev.get("command", "(not recorded)")
        kept = [r for r in prev.get("rows", []) if (r["method"], r["n"]) not in have]
        for r in kept:
            r.setdefault("measured_by", prev_command)
            if (
                "recall_wilson95" not in r
                and r.get("true_pairs_in_sample")
                and r.get("recall") is not None
            ):
                # rows written before the JSON carried intervals: the same Wilson interval
                from detectors.stats import wilson_interval

                n_true = int(r["true_pairs_in_sample"])
                lo, hi = wilson_interval(round(r["recall"] * n_true), n_true)
                r["recall_wilson95"] = [round(float(lo), 5), round(float(hi), 5)]
        earlier = [*prev.get("earlier_commands", []), prev_command]
        rows = sorted(kept + rows, key=lambda r: (r["n"], r["method"]))
    summary = _summarise(rows)
    doc = {
        "benchmark": "dedup",
        "threshold": args.threshold,
        "dim": args.dim,
        "queries": {
            "planted": args.queries,
            "random": args.random_queries,
            "truth_budget": args.truth_budget,
            "how": "query rows: --queries drawn from the rows of planted groups plus "
            "--random-queries from all rows (both scaled down to --truth-budget query x row "
            "products at large N: data.query_rows per size); truth = exact FAISS range search of those rows "
            "against all N; recall = share of the true pairs touching a query that a method "
            "found (Wilson 95% interval over pairs, and a bootstrap over query rows)",
        },
        "sizes": sorted({r["n"] for r in rows}),
        "seed": args.seed,
        "partitioned_params": {
            "partition_size": args.partition_size,
            "max_probes": args.max_probes,
            "probe_scale": args.probe_scale,
        },
        "data_on_disk": "N x dim float16 .npy, memory-mapped read-only by each worker; pages "
        "released from the worker's resident set as it sweeps (detectors.dedup.release_pages): "
        "peak RSS counts the pages the worker holds, not the page cache",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "faiss_threads": args.threads,
            "note": "shared 2-core machine: see load_average_start/end per row",
        },
        "command": command,
        "earlier_commands": earlier,
        "rows": rows,
        "summary": summary,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    os.replace(tmp, out)
    return doc


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["method"], r["n"]): r for r in rows}
    ns = sorted({r["n"] for r in rows if r["method"] == "partitioned"})
    lines: list[str] = []
    out: dict[str, Any] = {"lines": lines}
    for n in ns:
        part = by[("partitioned", n)]
        brute = by.get(("brute", n))
        sem = by.get(("semdedup", n))
        entry: dict[str, Any] = {
            "recall": part["recall"],
            "recall_wilson95": part["recall_wilson95"],
            "seconds": part["seconds"],
            "peak_gb": round(part["peak_rss_mb"] / 1024, 2),
        }
        if brute:
            entry["speedup_vs_brute"] = round(brute["seconds"] / part["seconds"], 1)
            entry["brute_measured"] = brute["measured"]
        if sem:
            entry["semdedup_seconds_over_partitioned"] = round(sem["seconds"] / part["seconds"], 2)
            entry["semdedup_recall"] = sem["recall"]
            entry["semdedup_recall_wilson95"] = sem["recall_wilson95"]
        out[str(n)] = entry
        lo, hi = part["recall_wilson95"]
        lines.append(
            f"N={n}: partitioned {part['seconds']:.0f} s, recall {part['recall']:.4f} "
            f"[{lo:.4f}, {hi:.4f}], peak {entry['peak_gb']} GB"
            + (
                f"; brute force {entry['speedup_vs_brute']}x slower"
                + ("" if brute["measured"] else " (EXTRAPOLATED, not run)")
                if brute
                else ""
            )
            + (
                f"; SemDeDup-style (same FAISS k-means) takes "
                f"{entry['semdedup_seconds_over_partitioned']}x the time, recall "
                f"{sem['recall']:.4f}"
                if sem
                else ""
            )
        )
    if len(ns) >= 2:
        t = np.array([by[("partitioned", n)]["seconds"] for n in ns])
        slope = float(np.polyfit(np.log(ns), np.log(t), 1)[0])
        out["time_exponent_partitioned"] = round(slope, 2)
        steps = [
            f"{ns[a]}->{ns[a + 1]}: x{t[a + 1] / t[a]:.1f} time for x{ns[a + 1] / ns[a]:.0f} rows"
            for a in range(len(ns) - 1)
        ]
        out["growth_steps"] = steps
        lines.append(
            f"partitioned time grows as N^{slope:.2f} over N={ns[0]}..{ns[-1]} ({'; '.join(steps)})"
        )
    return out


def _print_table(rows: list[dict[str, Any]]) -> None:
    hdr = (
        f"{'N':>9} {'method':<12} {'seconds':>10} {'peak GB':>8} {'recall':>7} "
        f"{'95% (Wilson)':>17} {'pairs':>9}  note"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in sorted(rows, key=lambda r: (r["n"], r["method"])):
        rec = r.get("recall")
        ci = r.get("recall_wilson95")
        print(
            f"{r['n']:>9} {r['method']:<12} {r['seconds']:>10.1f} "
            f"{r['peak_rss_mb'] / 1024:>8.2f} "
            f"{(f'{rec:.4f}' if rec is not None else '-'):>7} "
            f"{(f'[{ci[0]:.4f}, {ci[1]:.4f}]' if ci and rec is not None else '-'):>17} "
            f"{r.get('n_pairs', '-'):>9}  "
            f"{r.get('note', '') if not r.get('measured', True) else ''}"
        )


if __name__ == "__main__":
    sys.exit(main())
