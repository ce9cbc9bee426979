"""Near-duplicate search at scale: partitioned path vs brute force vs a SemDeDup-style reference.

Data: ``N x 512`` float16 unit vectors shaped like CLIP image embeddings (a shared mean direction,
so unrelated pairs have cosine ~0.3; 64 topics, N/200 clusters; ~0.6 cosine inside a cluster)
with planted near-duplicate groups (3% of rows get 1-7 copies at cosine ~0.91-1.0, some exact),
so the threshold has both true pairs and near misses around it. Not uniform noise.

Methods, each in its own fresh subprocess (peak memory = ``ru_maxrss`` of that process, which
includes the data array; FAISS allocations are invisible to tracemalloc):

* ``partitioned``: ``detectors.dedup.partitioned_edges`` (FAISS spherical k-means on a sample,
  nearest-centroid partitions, exact FAISS range search per partition against itself plus probe
  vectors from neighbouring partitions), keeping every pair for the recall measurement.
* ``brute``: exact all-pairs FAISS range search (``detectors.dedup.exact_edges``); measured up to
  ``--brute-max`` vectors, beyond that extrapolated quadratically in time and linearly in memory
  from the largest measured size, and labelled "extrapolated".
* ``semdedup``: SemDeDup-style reference: scikit-learn ``MiniBatchKMeans`` fitted on all vectors
  (same number of clusters as the partitioned path), then per cluster the full matrix product
  ``X_c X_c^T`` thresholded (pairs across clusters are never compared).

Recall = share of the true pairs above the threshold that a method finds, with truth from exact
search of ``--queries`` random query vectors against all N (pairs touching a query).

Usage::

    python benchmarks/bench_dedup.py                       # 100k, 300k, 1M (long: run in bg)
    python benchmarks/bench_dedup.py --sizes 20000,50000   # quick

Prints a table and writes ``benchmarks/results/dedup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
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
    n: int, dim: int = 512, seed: int = 0, dup_rate: float = 0.03, chunk: int = 50_000
) -> tuple[np.ndarray, dict[str, Any]]:
    """Clustered unit vectors (float16) with planted near-duplicate groups (see module doc)."""
    ss = np.random.SeedSequence(seed)
    rng = np.random.default_rng(ss.spawn(1)[0])
    mean = _unit(rng.standard_normal((1, dim))).astype(np.float32)
    n_topics, n_clusters = 64, max(8, n // 200)
    topics = _unit(rng.standard_normal((n_topics, dim))).astype(np.float32)
    centres = _unit(
        topics[rng.integers(0, n_topics, n_clusters)]
        + _unit(rng.standard_normal((n_clusters, dim)))
    ).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float16)
    for s, child in zip(range(0, n, chunk), ss.spawn((n + chunk - 1) // chunk)):
        r = np.random.default_rng(child)
        m = min(chunk, n - s)
        lab = r.integers(0, n_clusters, m)
        noise = _unit(r.standard_normal((m, dim)).astype(np.float32))
        x[s : s + m] = _unit(0.55 * mean + 0.6 * centres[lab] + 0.58 * noise)
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
    info = {
        "n": n,
        "dim": dim,
        "seed": seed,
        "n_clusters": n_clusters,
        "n_topics": n_topics,
        "planted_sources": int(n_src),
        "planted_copies": int(dst.size),
    }
    return x, info


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


def _semdedup(x: np.ndarray, threshold: float, n_clusters: int, seed: int) -> tuple:
    from sklearn.cluster import MiniBatchKMeans

    t0 = time.perf_counter()
    xf = x.astype(np.float32)
    km = MiniBatchKMeans(n_clusters=n_clusters, batch_size=4096, n_init=1, random_state=seed)
    labels = km.fit_predict(xf)
    t_fit = time.perf_counter()
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
    ii, jj = [], []
    for c in range(n_clusters):
        rows = order[bounds[c] : bounds[c + 1]]
        if rows.size < 2:
            continue
        xc = xf[rows]
        sim = xc @ xc.T
        a, b = np.nonzero(np.triu(sim > threshold, k=1))
        ii.append(rows[a])
        jj.append(rows[b])
    i = np.concatenate(ii) if ii else np.zeros(0, np.int64)
    j = np.concatenate(jj) if jj else np.zeros(0, np.int64)
    info = {
        "fit_seconds": round(t_fit - t0, 3),
        "search_seconds": round(time.perf_counter() - t_fit, 3),
        "n_clusters": n_clusters,
        "cluster_size_max": int(np.diff(bounds).max()),
    }
    return i, j, info


def _truth(x: np.ndarray, queries: np.ndarray, threshold: float) -> np.ndarray:
    import faiss

    n = x.shape[0]
    q = x[queries].astype(np.float32)
    codes = []
    for s in range(0, n, 100_000):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x[s : s + 100_000].astype(np.float32))
        lims, _, idx = index.range_search(q, threshold)
        qq = np.repeat(queries, np.diff(lims).astype(np.int64))
        jj = idx.astype(np.int64) + s
        keep = qq != jj
        codes.append(qq[keep].astype(np.int64) * n + jj[keep])
    return np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.int64)


def worker(args: argparse.Namespace) -> int:
    """Run one method on the cached data; write a JSON result (and pair codes) to ``--result``."""
    import faiss

    faiss.omp_set_num_threads(args.threads)
    x = np.load(args.data)
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

            e = exact_edges(x, args.threshold, keep_all_pairs=True)
            i, j, info, n_pairs = e.i, e.j, e.info, e.n_pairs
        elif args.worker == "semdedup":
            i, j, info = _semdedup(x, args.threshold, params["n_clusters"], params["seed"])
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
    }
    Path(args.result).write_text(json.dumps(out))
    return 0


def run_worker(
    method: str, data: Path, queries: Path, threshold: float, params: dict, tmp: Path, threads: int
) -> tuple[dict, np.ndarray]:
    result = tmp / f"{method}-{data.stem}.json"
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
    subprocess.run(cmd, check=True)
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
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--queries", type=int, default=10_000, help="query vectors for recall")
    p.add_argument(
        "--brute-max",
        type=int,
        default=100_000,
        help="largest N for measured brute force (beyond: extrapolated)",
    )
    p.add_argument("--partition-size", type=int, default=1000)
    p.add_argument("--max-probes", type=int, default=2)
    p.add_argument("--probe-scale", type=float, default=0.25)
    p.add_argument("--methods", default="partitioned,brute,semdedup")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "dedup.json"))
    # worker mode
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--query-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    return drive(args)


def drive(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="bench_dedup_"))
    rows: list[dict[str, Any]] = []
    brute_ref: dict[str, Any] | None = None
    try:
        for n in sizes:
            t0 = time.perf_counter()
            x, data_info = make_data(n, args.dim, args.seed)
            gen_s = time.perf_counter() - t0
            data = tmp / f"x{n}.npy"
            np.save(data, x)
            del x
            nq = min(args.queries, n)
            qidx = np.sort(np.random.default_rng(args.seed + 1).choice(n, nq, replace=False))
            qpath = tmp / f"q{n}.npy"
            np.save(qpath, qidx)
            print(
                f"# N={n}: data generated in {gen_s:.1f} s; computing truth for {nq} queries",
                flush=True,
            )
            truth, truth_codes = run_worker(
                "truth", data, qpath, args.threshold, {}, tmp, args.threads
            )
            n_true = int(truth_codes.size)
            k = max(1, round(n / args.partition_size))
            per_method: dict[str, dict[str, Any]] = {}
            for m in methods:
                if m == "brute" and n > args.brute_max:
                    continue
                params: dict[str, Any] = {"seed": args.seed}
                if m == "partitioned":
                    params.update(
                        partition_size=args.partition_size,
                        max_probes=args.max_probes,
                        probe_scale=args.probe_scale,
                    )
                if m == "semdedup":
                    params.update(n_clusters=k)
                print(f"# N={n}: running {m}", flush=True)
                res, codes = run_worker(m, data, qpath, args.threshold, params, tmp, args.threads)
                found = int(np.isin(truth_codes, codes, assume_unique=True).sum())
                res["recall"] = found / n_true if n_true else float("nan")
                res["true_pairs_in_sample"] = n_true
                res["measured"] = True
                per_method[m] = res
                if m == "brute":
                    brute_ref = res
            if "brute" in methods and "brute" not in per_method and brute_ref is not None:
                scale = n / brute_ref["n"]
                per_method["brute"] = {
                    "method": "brute",
                    "n": n,
                    "measured": False,
                    "seconds": round(brute_ref["seconds"] * scale**2, 1),
                    "peak_rss_mb": round(brute_ref["peak_rss_mb"] * scale, 1),
                    "recall": 1.0,
                    "note": f"extrapolated from N={brute_ref['n']} "
                    "(time x (N/N0)^2, memory x N/N0)",
                }
            for res in per_method.values():
                res.update(data=data_info, truth_seconds=truth["seconds"])
                rows.append(res)
            (tmp / f"x{n}.npy").unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = _summarise(rows)
    _print_table(rows)
    for line in summary["lines"]:
        print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "dedup",
                "threshold": args.threshold,
                "dim": args.dim,
                "queries": args.queries,
                "sizes": sizes,
                "seed": args.seed,
                "partitioned_params": {
                    "partition_size": args.partition_size,
                    "max_probes": args.max_probes,
                    "probe_scale": args.probe_scale,
                },
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "processor": _cpu_name(),
                    "faiss_threads": args.threads,
                },
                "rows": rows,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


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
            "peak_gb": round(part["peak_rss_mb"] / 1024, 2),
        }
        if brute:
            entry["speedup_vs_brute"] = round(brute["seconds"] / part["seconds"], 1)
            entry["brute_measured"] = brute["measured"]
        if sem:
            entry["speedup_vs_semdedup"] = round(sem["seconds"] / part["seconds"], 2)
            entry["semdedup_recall"] = sem["recall"]
        out[str(n)] = entry
        lines.append(
            f"N={n}: partitioned recall {part['recall']:.4f}, "
            f"peak {entry['peak_gb']} GB"
            + (
                f", {entry['speedup_vs_brute']}x faster than brute force"
                f"{'' if entry.get('brute_measured') else ' (extrapolated)'}"
                if brute
                else ""
            )
            + (
                f", {entry['speedup_vs_semdedup']}x vs SemDeDup-style (recall {sem['recall']:.4f})"
                if sem
                else ""
            )
        )
    if len(ns) >= 2:
        t = np.array([by[("partitioned", n)]["seconds"] for n in ns])
        slope = float(np.polyfit(np.log(ns), np.log(t), 1)[0])
        out["time_exponent_partitioned"] = round(slope, 2)
        lines.append(f"partitioned time grows as N^{slope:.2f} over N={ns[0]}..{ns[-1]}")
    return out


def _print_table(rows: list[dict[str, Any]]) -> None:
    hdr = f"{'N':>9} {'method':<12} {'seconds':>10} {'peak GB':>8} {'recall':>7} {'pairs':>9}  note"
    print(hdr)
    print("-" * len(hdr))
    for r in sorted(rows, key=lambda r: (r["n"], r["method"])):
        rec = r.get("recall")
        print(
            f"{r['n']:>9} {r['method']:<12} {r['seconds']:>10.1f} "
            f"{r['peak_rss_mb'] / 1024:>8.2f} "
            f"{(f'{rec:.4f}' if rec is not None else '-'):>7} "
            f"{r.get('n_pairs', '-'):>9}  "
            f"{r.get('note', '') if not r.get('measured', True) else ''}"
        )


if __name__ == "__main__":
    sys.exit(main())
