"""Embedding throughput: the Beam pipeline vs a plain PyTorch DataLoader loop vs the models alone,
for CLIP only and for CLIP + the SSCD copy descriptor (one decode, both models).

All variants read the same img2dataset shards of a SynthLAION testbed (``--n`` images of
``--size`` px, JPEG/PNG as the testbed writes them, with its broken files), after a warm-up read
that puts them in the page cache. Two modes (``--modes``, default both):

* ``clip``: the open_clip model (image + caption embeddings), no ``copy_emb``.
* ``clip+sscd``: the same plus the copy descriptor (``--copy-model sscd --copy-size 224``,
  ONNX Runtime on the CPU) on the same decoded images; parts gain ``copy_emb``.

Variants:

* ``model alone``: the models on pre-decoded inputs (CLIP: preprocessed tensors and tokens,
  padded batches of ``--batch-size``; SSCD: pre-resized uint8 arrays). The ``clip+sscd`` upper
  bound is the sum of the two. Timed once, before the repeats.
* ``DataLoader loop``: what a careful PyTorch user writes. An ``IterableDataset`` reads the
  shards with the same reader and safe decoder, cuts each shard into chunks of
  ``--batch-size`` samples in read order exactly like the pipeline's ``ReadShardFn`` (so both
  run the same forward passes), decodes once and, in the DataLoader worker(s)
  (``--loader-workers``, default 1), applies the CLIP preprocess, tokenizes the captions and
  resizes for SSCD. The main process pads short batches to ``--batch-size`` the way the
  pipeline's handler does (``pipelines.embed._padded``), runs CLIP then SSCD, and writes one
  parquet per shard (with ``copy_emb`` in the two-model mode). Model loading is included.
* ``Beam pipeline``: ``pipelines.embed.run_embed`` on the DirectRunner (Beam's FnApiRunner, in
  process) with ``ClipModelHandler(..., pad_to=batch, copy_loader=...)``: read -> decode ->
  RunInference -> GroupByKey -> parts with .SUCCESS markers. Model loading is included.

Loop and pipeline run ``--repeats`` times (default 5), interleaved (each repeat runs, per mode,
the loop then the pipeline, or the pipeline then the loop on odd repeats), with the 1-minute load
average read before and after every run: the machine may be shared. Reported per variant: the
median and the spread (min-max) of the wall time; the comparison is the ratio of the medians
``loop / pipeline`` (>= 0.9 is the target: pipeline time <= loop time / 0.9), and the median of
the per-repeat ratios, which cancels slow drifts of the load.

Where the pipeline's time goes (median over the repeats, share of the wall time): CLIP forward
(``forward_us``), SSCD forward including its resize (``copy_forward_us``), CLIP preprocess +
tokenize (``preprocess_us``) and model loading (RunInference's ``load_model_latency``) from the
pipeline's own metrics; read, decode and part writing measured by the benchmark around the
functions the pipeline calls (in-process runners only; decode has no pipeline metric); the rest
is Beam's own overhead (pipeline construction and start, element passing, GroupByKey). The loop's time is split the same way on its
main process (data wait = time the main process waited for the worker).

Images/s counts images that reached the model (ok + missing_caption rows).

Usage::

    python benchmarks/bench_embed.py                      # 3000 images, 256 px, tiny-synth, CPU
    python benchmarks/bench_embed.py --n 600 --shard-size 100     # what the JSON holds (~7 min)
    python benchmarks/bench_embed.py --n 600 --shard-size 100 --threads 1 \\
        --key tiny-synth-1thread                          # 1 torch thread + 1 loader worker
    python benchmarks/bench_embed.py --model ViT-B-32 --untrained --n 64 --shard-size 32 \\
        --batch-size 16                                   # a model that dominates (~11 min CPU)
    python benchmarks/bench_embed.py --model ViT-B-32 --device cuda --untrained   # on a GPU

On a shared 2-core machine, 2 torch threads make small per-image tensor ops (the CLIP
preprocess's ToTensor/Normalize, the tiny model's layers) wait at OpenMP barriers for a thread
that is descheduled: compare the ``--threads 1`` configuration before reading much into the
loop-vs-pipeline ratio.

Prints a table and writes the result under ``configs[--key]`` of ``benchmarks/results/embed.json``
(other keys in that file are kept).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

MODES = ("clip", "clip+sscd")
TARGET = 0.9
"""``loop seconds / pipeline seconds`` must be at least this (Beam overhead <= ~11%)."""
SCHEMA = 2


def build_data(folder: Path, n: int, size: int, seed: int) -> Path:
    """Testbed shards (cached in ``folder`` keyed by n/size/seed)."""
    from audit.testbed.generate import build_testbed

    tag = folder / f"tb-n{n}-s{size}-seed{seed}"
    if not (tag / "shards").is_dir():
        print(f"building a {n}-image testbed at {size} px in {tag} ...", flush=True)
        build_testbed(tag, n=n, seed=seed, size=size, clean_rate=0.0, overwrite=True)
    return tag / "shards"


def model_loader(name: str, pretrained: str | None, device: str, untrained: bool):
    """``(loader, label)``; ``untrained`` builds the architecture with random weights."""
    if untrained:
        return functools.partial(_untrained, name, device), f"{name} (random weights)"
    from audit.models import load_clip

    return functools.partial(load_clip, name, pretrained, device), name


def _untrained(name: str, device: str):
    import open_clip

    if name == "tiny-synth" and open_clip.get_model_config(name) is None:
        try:
            from audit.models import register_tiny_synth

            register_tiny_synth()
        except Exception:  # noqa: BLE001 - config file not shipped yet: use the training one
            import copy

            from audit.training.train_tiny_clip import TINY_SYNTH_CONFIG

            open_clip.factory._MODEL_CONFIGS[name] = copy.deepcopy(TINY_SYNTH_CONFIG)

    model = open_clip.create_model(name, pretrained=None, device=device).eval()
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    return model, preprocess, open_clip.get_tokenizer(name)


def copy_loader(name: str, size: int) -> Callable[[], Any]:
    """The copy detector's loader, as ``laion-audit embed`` builds it (CPU, ONNX Runtime)."""
    from audit.models import load_copy_detector

    return functools.partial(load_copy_detector, name, size, "cpu")


def warm_page_cache(specs: list[Any]) -> int:
    total = 0
    for s in specs:
        for p in (s.path, s.manifest):
            if p and os.path.exists(p):
                total += len(Path(p).read_bytes())
    return total


def load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        return None


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and the spread (max - min) relative to the median."""
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / med if med else None,
        "values": values,
    }


# ---- timing the functions the pipeline calls (in-process runners only) ----------------------------
TIMERS: defaultdict[str, float] = defaultdict(float)


def _timed(key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        TIMERS[key] += time.perf_counter() - t0


def _timed_iter(key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """``fn(...)``'s items, timing only the time spent producing them (not their consumers)."""
    t0 = time.perf_counter()
    it = iter(fn(*args, **kwargs))
    TIMERS[key] += time.perf_counter() - t0
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            TIMERS[key] += time.perf_counter() - t0
            return
        TIMERS[key] += time.perf_counter() - t0
        yield item


SEEN: dict[str, Any] = {}


def _load_seen(fn: Callable[[], Any]) -> Any:
    """``fn()`` timed as ``load``, noting the thread that runs the model and its torch threads."""
    import threading

    import torch

    SEEN.update(thread=threading.current_thread().name, torch_threads=torch.get_num_threads())
    return _timed("load", fn)


@contextmanager
def instrumented_pipeline() -> Iterator[None]:
    """Time ``read_shard`` and ``decode_image`` as ``pipelines.embed`` calls them."""
    import pipelines.embed as pe

    saved = pe.read_shard, pe.decode_image
    pe.read_shard = functools.partial(_timed_iter, "read", saved[0])
    pe.decode_image = functools.partial(_timed, "decode", saved[1])
    try:
        yield
    finally:
        pe.read_shard, pe.decode_image = saved


# ---- variant 1: the models alone -----------------------------------------------------------------
def prepare_inputs(specs, preprocess, tokenizer, copy_prepare, batch: int) -> dict[str, Any]:
    """Read, decode and preprocess everything once (timed per step, single process)."""
    from pipelines.decode import decode_image
    from pipelines.readers import read_shard

    t = Counter()
    tensors, captions, arrays = [], [], []
    for spec in specs:
        t0 = time.perf_counter()
        samples = list(read_shard(spec))
        t["read"] += time.perf_counter() - t0
        for s in samples:
            if s.image is None:
                continue
            t0 = time.perf_counter()
            try:
                img = decode_image(s.image).image
            except Exception:  # noqa: BLE001 - counted as not embedded, like the pipeline
                t["decode"] += time.perf_counter() - t0
                continue
            t1 = time.perf_counter()
            tensors.append(preprocess(img))
            t2 = time.perf_counter()
            if copy_prepare is not None:
                arrays.append(copy_prepare(img))
            t3 = time.perf_counter()
            t["decode"] += t1 - t0
            t["clip_preprocess"] += t2 - t1
            t["sscd_resize"] += t3 - t2
            captions.append(s.caption if s.caption_problem is None else None)
    batches = []
    t0 = time.perf_counter()
    for i in range(0, len(tensors), batch):
        caps = [c for c in captions[i : i + batch] if c is not None]
        batches.append((tensors[i : i + batch], tokenizer(caps) if caps else None))
    t["tokenize"] = time.perf_counter() - t0
    return {"clip_batches": batches, "arrays": arrays, "images": len(tensors), "seconds": dict(t)}


def bench_clip_alone(bundle, batches, batch: int, device: str) -> dict[str, Any]:
    from pipelines.embed import _padded, embed_tensors

    embed_tensors(bundle, _padded(batches[0][0], batch), _padded(batches[0][1], batch))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for imgs, toks in batches:
        embed_tensors(bundle, _padded(imgs, batch), _padded(toks, batch))
        n += len(imgs)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def bench_sscd_alone(detector, arrays, batch: int) -> dict[str, Any]:
    import numpy as np

    detector.embed_arrays(np.stack(arrays[:batch]))  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(arrays), batch):
        _copy_forward(detector, arrays[i : i + batch])
    seconds = time.perf_counter() - t0
    return {
        "images": len(arrays),
        "seconds": seconds,
        "images_per_s": len(arrays) / seconds,
        "note": "pre-resized uint8 arrays; the resize is in standalone_seconds.sscd_resize",
    }


def _copy_forward(detector, arrays) -> Any:
    """SSCD on prepared arrays in the slices ``CopyDetector.embed`` uses (64)."""
    import numpy as np

    out = [detector.embed_arrays(np.stack(arrays[i : i + 64])) for i in range(0, len(arrays), 64)]
    return np.concatenate(out)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ---- variant 2: the plain DataLoader loop ------------------------------------------------------------
def _identity(x: Any) -> Any:
    return x


def make_dataset(specs, preprocess, tokenizer, copy_prepare, chunk_size: int):
    """Chunks of ``chunk_size`` samples per shard in read order, as ``ReadShardFn`` cuts them,
    decoded once and prepared for both models in the DataLoader worker."""
    from dataclasses import replace

    from torch.utils.data import IterableDataset, get_worker_info

    from pipelines.decode import decode_image
    from pipelines.embed import _decode_failed, sample_row
    from pipelines.readers import read_shard

    def prepare(shard: int, chunk: list[Any], failed: list[dict], last: bool) -> dict[str, Any]:
        t = Counter()
        ok, tensors, arrays = [], [], []
        for s in chunk:
            t0 = time.perf_counter()
            try:
                d = decode_image(s.image)
            except Exception as exc:  # noqa: BLE001 - as DecodeChunkFn
                failed.append(sample_row(_decode_failed(replace(s), str(exc))))
                t["decode"] += time.perf_counter() - t0
                continue
            t1 = time.perf_counter()
            ok.append(replace(s, image=None, width=d.width, height=d.height))
            tensors.append(preprocess(d.image))
            t2 = time.perf_counter()
            if copy_prepare is not None:
                arrays.append(copy_prepare(d.image))
            t3 = time.perf_counter()
            t["decode"] += t1 - t0
            t["clip_preprocess"] += t2 - t1
            t["sscd_resize"] += t3 - t2
        t0 = time.perf_counter()
        text_idx = [i for i, s in enumerate(ok) if s.caption_problem is None]
        tokens = tokenizer([ok[i].caption for i in text_idx]) if text_idx else None
        t["tokenize"] += time.perf_counter() - t0
        return {
            "shard": shard,
            "failed": failed,
            "samples": ok,
            "tensors": tensors,
            "tokens": tokens,
            "text_idx": text_idx,
            "arrays": arrays,
            "last": last,
            "worker_seconds": dict(t),
        }

    class ShardChunks(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            mine = specs if info is None else specs[info.id :: info.num_workers]
            for spec in mine:
                failed: list[dict] = []
                chunk: list[Any] = []
                t_read = 0.0
                it = iter(read_shard(spec))
                while True:
                    t0 = time.perf_counter()
                    s = next(it, None)
                    t_read += time.perf_counter() - t0
                    if s is None:
                        break
                    if s.image is None:
                        failed.append(sample_row(s))
                        continue
                    chunk.append(s)
                    if len(chunk) >= chunk_size:
                        item = prepare(spec.index, chunk, failed, False)
                        item["worker_seconds"]["read"] = t_read
                        t_read, chunk, failed = 0.0, [], []
                        yield item
                item = prepare(spec.index, chunk, failed, True)
                item["worker_seconds"]["read"] = t_read
                yield item

    return ShardChunks()


def bench_loop(
    specs, loader, copy_load, device: str, batch: int, workers: int, out: Path
) -> dict[str, Any]:
    import numpy as np
    import pyarrow.parquet as pq
    from torch.utils.data import DataLoader

    from audit.workspace import embedding_schema, parquet_safe
    from pipelines.embed import ClipBundle, _padded, embed_tensors, rows_to_table, sample_row

    t_start = time.perf_counter()
    model, preprocess, tokenizer = loader()
    bundle = ClipBundle(
        model.to(device).eval(), preprocess, tokenizer, device, autocast=device.startswith("cuda")
    )
    detector = copy_load() if copy_load is not None else None
    dim = int(model.encode_text(tokenizer(["x"]).to(device)).shape[-1])
    schema = embedding_schema(dim, detector.dim if detector is not None else None)
    t_load = time.perf_counter() - t_start
    dl = DataLoader(
        make_dataset(
            specs,
            preprocess,
            tokenizer,
            detector.prepare if detector is not None else None,
            batch,
        ),
        batch_size=None,
        collate_fn=_identity,
        num_workers=workers,
    )
    rows: dict[int, list[dict]] = defaultdict(list)
    t = Counter()
    worker = Counter()
    images = forwards = 0
    it = iter(dl)
    while True:
        t0 = time.perf_counter()
        item = next(it, None)
        t["data_wait"] += time.perf_counter() - t0
        if item is None:
            break
        worker.update(item["worker_seconds"])
        shard, ok = item["shard"], item["samples"]
        rows[shard].extend(item["failed"])
        if ok:
            t0 = time.perf_counter()
            img, txt = embed_tensors(
                bundle, _padded(item["tensors"], batch), _padded(item["tokens"], batch)
            )
            t1 = time.perf_counter()
            cp = _copy_forward(detector, item["arrays"]) if detector is not None else None
            t2 = time.perf_counter()
            where = dict(zip(item["text_idx"], range(len(item["text_idx"]))))
            for i, s in enumerate(ok):
                j = where.get(i)
                te = None if j is None else txt[j]
                rows[shard].append(
                    sample_row(
                        s,
                        img[i].astype(np.float16),
                        None if te is None else te.astype(np.float16),
                        None if te is None else float(np.dot(img[i], te)),
                        None if cp is None else cp[i].astype(np.float16),
                    )
                )
            images += len(ok)
            forwards += 1
            t["clip_forward"] += t1 - t0
            t["sscd_forward"] += t2 - t1
            t["rows"] += time.perf_counter() - t2
        if item["last"]:
            t0 = time.perf_counter()
            table = parquet_safe(rows_to_table(rows.pop(shard), schema))  # readable back
            pq.write_table(table, out / f"part-{shard:05d}.parquet")
            t["write"] += time.perf_counter() - t0
    if rows:
        raise RuntimeError(f"loop: shards {sorted(rows)} never finished")
    seconds = time.perf_counter() - t_start
    t["model_load"] = t_load
    # the resize is timed in the worker; the SSCD row of the share table includes it only for
    # the pipeline (where it runs inside CopyDetector.embed on the main thread)
    parts = {k: v for k, v in t.items()}
    parts["other"] = max(0.0, seconds - sum(parts.values()))
    return {
        "images": images,
        "forward_passes": forwards,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "main_seconds": parts,
        "shares": {k: v / seconds for k, v in parts.items()},
        "worker_busy_seconds": dict(worker),
        "loader_workers": workers,
    }


# ---- variant 3: the Beam pipeline -----------------------------------------------------------------
def bench_pipeline(
    specs,
    loader,
    copy_load,
    label: str,
    device: str,
    batch: int,
    dims: tuple[int, int | None],
    ws_dir: Path,
    beam_args: list[str],
) -> dict[str, Any]:
    from audit.workspace import Workspace, embedding_schema
    from pipelines.beam_options import beam_setup
    from pipelines.embed import ClipModelHandler, EmbedSettings, metric_totals, run_embed
    from pipelines.embed_parts import WorkspacePartWriter

    handler = ClipModelHandler(
        functools.partial(_load_seen, loader),
        device=device,
        model_name=label,
        pad_to=batch,
        copy_loader=None if copy_load is None else functools.partial(_timed, "load", copy_load),
    )
    writer = functools.partial(_timed, "write", WorkspacePartWriter(str(ws_dir)))
    TIMERS.clear()
    SEEN.clear()
    with beam_setup(beam_args) as setup, instrumented_pipeline():
        t0 = time.perf_counter()
        result = run_embed(
            specs,
            handler,
            writer,
            embedding_schema(*dims),
            options=setup.options,
            runner=setup.new_runner(),
            settings=EmbedSettings(batch),
        )
        seconds = time.perf_counter() - t0
    timers = dict(TIMERS)
    m = metric_totals(result)
    ws = Workspace(ws_dir)
    counts: Counter[str] = Counter()
    for p in ws.embedding_parts():
        counts.update(json.loads(ws.marker_path(p).read_text())["counts"])
    images = int(m.get("images_embedded", 0))
    parts = {
        "clip_forward": m.get("forward_us_sum", 0) / 1e6,
        "sscd_forward": m.get("copy_forward_us_sum", 0) / 1e6,
        "clip_preprocess": m.get("preprocess_us_sum", 0) / 1e6,
    }
    if "load_model_latency_milli_secs_sum" in m:  # RunInference's own metric
        parts["model_load"] = m["load_model_latency_milli_secs_sum"] / 1e3
    if timers:  # in-process runner: the benchmark saw the calls
        parts.update(read=timers.get("read", 0.0), decode=timers.get("decode", 0.0))
        parts.setdefault("model_load", timers.get("load", 0.0))
        parts["write"] = timers.get("write", 0.0)
    parts["beam_overhead"] = max(0.0, seconds - sum(parts.values()))
    return {
        "images": images,
        "forward_passes": int(m.get("forward_us_count", 0) or m.get("copy_forward_us_count", 0)),
        "seconds": seconds,
        "images_per_s": images / seconds,
        "seconds_by_step": parts,
        "shares": {k: v / seconds for k, v in parts.items()},
        "instrumented": bool(timers),
        "model_thread": dict(SEEN),
        "metrics": m,
        "counts": dict(counts),
        "beam_args": beam_args,
    }


# ---- driver ---------------------------------------------------------------------------------------
def run_mode(
    mode: str, r: int, specs, loader, copy_load, label, args, dims, work: Path
) -> list[dict[str, Any]]:
    """One loop run and one pipeline run of ``mode`` (order alternates with the repeat)."""
    order = ("loop", "pipeline") if r % 2 == 0 else ("pipeline", "loop")
    out = []
    for variant in order:
        before = load1()
        if variant == "loop":
            d = work / f"{mode}-loop{r}"
            d.mkdir(parents=True)
            res = bench_loop(
                specs, loader, copy_load, args.device, args.batch_size, args.loader_workers, d
            )
        else:
            res = bench_pipeline(
                specs,
                loader,
                copy_load,
                label,
                args.device,
                args.batch_size,
                dims,
                work / f"{mode}-ws{r}",
                args.beam_arg,
            )
        res.update(variant=variant, mode=mode, repeat=r, load_before=before, load_after=load1())
        print(
            f"  {mode:<10} repeat {r + 1}/{args.repeats} {variant:<9}"
            f"{res['seconds']:>8.1f} s {res['images_per_s']:>7.1f} img/s  load "
            f"{res['load_before']} -> {res['load_after']}",
            flush=True,
        )
        out.append(res)
        shutil.rmtree(work / (f"{mode}-loop{r}" if variant == "loop" else f"{mode}-ws{r}"), True)
    return out


def summarise_mode(runs: list[dict[str, Any]]) -> dict[str, Any]:
    loops = sorted((x for x in runs if x["variant"] == "loop"), key=lambda x: x["repeat"])
    pipes = sorted((x for x in runs if x["variant"] == "pipeline"), key=lambda x: x["repeat"])
    loop_s = summary([x["seconds"] for x in loops])
    pipe_s = summary([x["seconds"] for x in pipes])
    paired = [a["seconds"] / b["seconds"] for a, b in zip(loops, pipes)]
    ratio = loop_s["median"] / pipe_s["median"]

    def med_shares(xs: list[dict[str, Any]]) -> dict[str, float]:
        keys = {k for x in xs for k in x["shares"]}
        return {k: statistics.median(x["shares"].get(k, 0.0) for x in xs) for k in sorted(keys)}

    return {
        "images": pipes[0]["images"],
        "loop": {
            "seconds": loop_s,
            "images_per_s": summary([x["images_per_s"] for x in loops]),
            "shares_median": med_shares(loops),
        },
        "pipeline": {
            "seconds": pipe_s,
            "images_per_s": summary([x["images_per_s"] for x in pipes]),
            "shares_median": med_shares(pipes),
        },
        "ratio_of_medians_loop_over_pipeline": ratio,
        "paired_ratios": paired,
        "paired_ratio_median": statistics.median(paired),
        "target": TARGET,
        "target_met": ratio >= TARGET,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--shard-size",
        type=int,
        default=500,
        help="re-shard the testbed into shards of this many samples (default 500)",
    )
    ap.add_argument("--model", default="tiny-synth")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument(
        "--untrained",
        action="store_true",
        help="random weights (timing only), e.g. for ViT-B-32 on a GPU",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument(
        "--loader-workers",
        type=int,
        default=1,
        help="DataLoader worker processes of the loop (default 1, >= 1)",
    )
    ap.add_argument("--copy-model", default="sscd")
    ap.add_argument("--copy-size", type=int, default=224)
    ap.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated, of {', '.join(MODES)} (default both)",
    )
    ap.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "laion-audit-bench"))
    ap.add_argument("--out", default=str(HERE / "results" / "embed.json"))
    ap.add_argument(
        "--key",
        default=None,
        help="key of this configuration in the JSON (default: the model name, "
        "+ '-untrained', + '-<device>' off the CPU)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="interleaved runs of loop and pipeline per mode (default 5); medians reported",
    )
    ap.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        help="extra Beam flag for the pipeline run (repeatable)",
    )
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: expected some of {', '.join(MODES)}, got {args.modes!r}")
    if args.loader_workers < 1:
        ap.error("--loader-workers must be >= 1 (the loop decodes in a worker process)")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    key = args.key or (
        args.model
        + ("-untrained" if args.untrained else "")
        + ("" if args.device == "cpu" else f"-{args.device}")
    )

    bench_t0 = time.perf_counter()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    import torch

    torch.set_num_threads(args.threads)
    from pipelines.embed import ClipBundle
    from pipelines.readers import match_shards

    data = Path(args.data)
    shards = build_data(data, args.n, args.size, args.seed)
    if args.shard_size:
        shards = reshard(
            shards, data / f"reshard-n{args.n}-s{args.size}-{args.shard_size}", args.shard_size
        )
    specs = match_shards(str(shards))
    loader, label = model_loader(args.model, args.pretrained, args.device, args.untrained)
    copy_load = copy_loader(args.copy_model, args.copy_size) if "clip+sscd" in modes else None
    read_bytes = warm_page_cache(specs)

    # models alone (and the single-process cost of each data step)
    model, preprocess, tokenizer = loader()
    bundle = ClipBundle(
        model.to(args.device).eval(),
        preprocess,
        tokenizer,
        args.device,
        autocast=args.device.startswith("cuda"),
    )
    dim = int(model.encode_text(tokenizer(["x"]).to(args.device)).shape[-1])
    detector = copy_load() if copy_load is not None else None
    prep = prepare_inputs(
        specs, preprocess, tokenizer, detector.prepare if detector else None, args.batch_size
    )
    alone = {"clip": bench_clip_alone(bundle, prep["clip_batches"], args.batch_size, args.device)}
    if detector is not None:
        alone["sscd"] = bench_sscd_alone(detector, prep["arrays"], args.batch_size)
        s = alone["clip"]["seconds"] + alone["sscd"]["seconds"]
        alone["clip+sscd"] = {
            "images": alone["clip"]["images"],
            "seconds": s,
            "images_per_s": alone["clip"]["images"] / s,
        }
    standalone = prep["seconds"]
    copy_dim = detector.dim if detector is not None else None
    copy_info = detector.info() if detector is not None else None
    del bundle, model, detector, prep

    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        for r in range(args.repeats):  # interleaved, so load changes hit every variant alike
            for mode in modes:
                cl = copy_load if mode == "clip+sscd" else None
                dims = (dim, copy_dim if mode == "clip+sscd" else None)
                runs[mode].extend(run_mode(mode, r, specs, loader, cl, label, args, dims, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {m: summarise_mode(runs[m]) for m in modes}
    loads = [x[k] for m in modes for x in runs[m] for k in ("load_before", "load_after")]
    loads = [v for v in loads if v is not None]
    bench_seconds = time.perf_counter() - bench_t0

    config = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "bench_seconds": bench_seconds,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "load1_seen": {"min": min(loads), "max": max(loads)} if loads else None,
        },
        "settings": {
            "model": label,
            "device": args.device,
            "batch_size": args.batch_size,
            "torch_threads": args.threads,
            "loader_workers": args.loader_workers,
            "repeats": args.repeats,
            "modes": modes,
            "copy_model": copy_info,
            "beam_args": args.beam_arg,
            "runner": "DirectRunner (FnApiRunner, in process)",
        },
        "data": {
            "images": args.n,
            "size_px": args.size,
            "shard_size": args.shard_size,
            "shards": len(specs),
            "bytes": read_bytes,
            "source": str(shards),
        },
        "standalone_seconds": {
            **standalone,
            "note": "one pass, one process, over every sample (read, decode, CLIP preprocess, "
            "SSCD resize) and the ok captions (tokenize)",
        },
        "model_alone": alone,
        "modes": results,
        "target": f"loop seconds / pipeline seconds >= {TARGET} (ratio of the medians)",
    }
    write_result(Path(args.out), key, config)
    print_table(key, config, args)
    print(f"wrote {args.out} (key {key!r}); bench took {bench_seconds / 60:.1f} min")
    return 0


def write_result(out: Path, key: str, config: dict[str, Any]) -> None:
    """``configs[key] = config`` in ``out``, keeping the other keys (a file of another layout is
    replaced)."""
    doc: dict[str, Any] = {}
    if out.is_file():
        try:
            doc = json.loads(out.read_text())
        except ValueError:
            doc = {}
    if doc.get("schema") != SCHEMA:
        doc = {}
    doc.update(benchmark="embed", schema=SCHEMA)
    doc.setdefault("configs", {})[key] = config
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


SHARE_ORDER = (
    ("clip_forward", "CLIP fwd"),
    ("sscd_forward", "SSCD fwd"),
    ("clip_preprocess", "CLIP prep"),
    ("read", "read"),
    ("decode", "decode"),
    ("model_load", "load"),
    ("write", "write"),
    ("beam_overhead", "Beam rest"),
)
LOOP_SHARE_ORDER = (
    ("clip_forward", "CLIP fwd"),
    ("sscd_forward", "SSCD fwd"),
    ("data_wait", "data wait"),
    ("model_load", "load"),
    ("rows", "rows"),
    ("write", "write"),
    ("other", "other"),
)


def _fmt_shares(shares: dict[str, float], order) -> str:
    return ", ".join(f"{name} {shares[k]:.0%}" for k, name in order if k in shares)


def print_table(key: str, config: dict[str, Any], args: argparse.Namespace) -> None:
    st, data = config["settings"], config["data"]
    print(
        f"\n[{key}] embedding {data['images']} images ({data['size_px']} px, {data['shards']} "
        f"shards) with {st['model']} on {st['device']}, batch {st['batch_size']}, "
        f"{st['torch_threads']} torch threads, loop with {st['loader_workers']} DataLoader "
        f"worker(s); {st['repeats']} interleaved repeats, median [min-max]"
    )
    head = f"{'mode':<10}{'variant':<30}{'images':>7}{'seconds':>24}{'images/s':>10}{'vs loop':>9}"
    print(head)
    print("-" * len(head))
    for mode, res in config["modes"].items():
        loop_med = res["loop"]["seconds"]["median"]
        alone = config["model_alone"].get(mode)
        rows = []
        if alone:
            rows.append(("model(s) alone (pre-decoded)", alone["images"], alone["seconds"], None))
        for v, name in (("loop", "DataLoader loop"), ("pipeline", "Beam pipeline (DirectRunner)")):
            rows.append((name, res["images"], None, res[v]["seconds"]))
        for name, images, secs, summ in rows:
            if summ is None:
                col = f"{secs:.1f}"
                med = secs
            else:
                med = summ["median"]
                col = f"{med:.1f} [{summ['min']:.1f}-{summ['max']:.1f}]"
            print(
                f"{mode:<10}{name:<30}{images:>7}{col:>24}{images / med:>10.1f}"
                f"{loop_med / med:>8.2f}x"
            )
        ratio = res["ratio_of_medians_loop_over_pipeline"]
        print(
            f"{mode:<10}ratio loop/pipeline (medians) = {ratio:.2f}, per repeat median "
            f"{res['paired_ratio_median']:.2f} [{min(res['paired_ratios']):.2f}-"
            f"{max(res['paired_ratios']):.2f}]; target >= {TARGET} (pipeline <= loop/{TARGET}):"
            f" {'met' if res['target_met'] else 'NOT met'}"
        )
        print(
            f"{'':<10}pipeline time: {_fmt_shares(res['pipeline']['shares_median'], SHARE_ORDER)}"
        )
        print(
            f"{'':<10}loop main process: "
            f"{_fmt_shares(res['loop']['shares_median'], LOOP_SHARE_ORDER)}"
        )
    m = config["machine"]
    seen = m["load1_seen"]
    if seen:
        print(
            f"1-min load average over the runs: {seen['min']:.2f}-{seen['max']:.2f} on "
            f"{m['cpus']} CPUs"
        )


def reshard(src: Path, dst: Path, size: int) -> Path:
    """Split img2dataset shards into shards of ``size`` samples (tar + manifest), so the run
    has several parts like a real dataset."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    if dst.is_dir() and any(dst.glob("*.tar")):
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    rows = []
    for f in sorted(src.glob("[0-9]*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    rows.sort(key=lambda r: r["key"])
    members: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {}
    for t in sorted(src.glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                members.setdefault(m.name.split(".")[0], []).append((m, tf.extractfile(m).read()))
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        name = f"{i // size:05d}"
        with tarfile.open(dst / f"{name}.tar", "w") as tf:
            for r in chunk:
                for m, data in members.get(r["key"], []):
                    tf.addfile(m, io.BytesIO(data))
        pq.write_table(pa.Table.from_pylist(chunk), dst / f"{name}.parquet")
    return dst


if __name__ == "__main__":
    # Run as the importable module ``bench_embed``: Beam pickles the timing wrappers given to the
    # pipeline, and functions of ``__main__`` are pickled by value, with globals of their own.
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import bench_embed

    sys.exit(bench_embed.main())
