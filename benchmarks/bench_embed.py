"""Embedding throughput: the Beam pipeline vs a plain PyTorch DataLoader loop vs the model alone.

All three run once, in this order after a warm-up read of the shards (page cache), on the same
img2dataset shards of a SynthLAION testbed (``--n`` images of ``--size`` px, JPEG/PNG as the
testbed writes them, with its broken files):

* ``model alone``: the open_clip model on pre-decoded, pre-processed image tensors and
  pre-tokenized captions, in batches of ``--batch-size`` (upper bound).
* ``DataLoader loop``: what a PyTorch user writes: an ``IterableDataset`` that reads the same
  shards with the same reader and safe decoder and applies the model's preprocess, a
  ``DataLoader`` (``--loader-workers``, default 0 like the one-process pipeline), tokenization
  and forward in the loop, one parquet per shard written at the end of each shard. Time is split
  into data (read + decode + preprocess), model (tokenize + forward) and write.
* ``Beam pipeline``: ``pipelines.embed.run_embed`` on the DirectRunner (Beam's FnApiRunner, in
  process): read -> decode -> RunInference -> GroupByKey -> parts with .SUCCESS markers. The
  decode/model split comes from the pipeline's own metrics.

Images/s counts images that reached the model (ok + missing_caption rows); the loop and the
pipeline include model loading once (the model-alone figure does not). With ``--repeats R`` the
loop and the pipeline run R times, alternating, and the best of each is reported (all runs are
in the JSON): on a shared machine this keeps a burst of load from deciding the comparison.
The target is pipeline >= 0.9x the loop (Beam overhead <= 10%).

Usage::

    python benchmarks/bench_embed.py                     # 3000 images, 256 px, tiny-synth, CPU
    python benchmarks/bench_embed.py --n 500 --size 128  # quick
    python benchmarks/bench_embed.py --model ViT-B-32 --device cuda --untrained   # on a GPU

Prints a table and writes ``benchmarks/results/embed.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


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


def warm_page_cache(specs: list[Any]) -> int:
    total = 0
    for s in specs:
        for p in (s.path, s.manifest):
            if p and os.path.exists(p):
                total += len(Path(p).read_bytes())
    return total


# ---- variant 1: model alone -------------------------------------------------------------------
def bench_model_alone(specs, loader, device: str, batch: int) -> dict[str, Any]:
    from pipelines.decode import DecodeError, decode_image
    from pipelines.embed import ClipBundle, embed_tensors
    from pipelines.readers import read_shard

    model, preprocess, tokenizer = loader()
    bundle = ClipBundle(
        model.to(device).eval(), preprocess, tokenizer, device, autocast=device.startswith("cuda")
    )
    tensors, captions = [], []
    for spec in specs:
        for s in read_shard(spec):
            if s.image is None:
                continue
            try:
                img = decode_image(s.image).image
            except DecodeError:
                continue
            tensors.append(preprocess(img))
            captions.append(s.caption if s.caption_problem is None else None)
    batches = []
    for i in range(0, len(tensors), batch):
        caps = [c for c in captions[i : i + batch] if c is not None]
        batches.append((tensors[i : i + batch], tokenizer(caps) if caps else None))
    embed_tensors(bundle, batches[0][0], batches[0][1])  # warm-up (kernel selection)
    _sync(device)
    t0 = time.perf_counter()
    for imgs, toks in batches:
        embed_tensors(bundle, imgs, toks)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"images": len(tensors), "seconds": seconds, "images_per_s": len(tensors) / seconds}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ---- variant 2: the plain DataLoader loop ---------------------------------------------------------
def make_dataset(specs, preprocess):
    from torch.utils.data import IterableDataset, get_worker_info

    from pipelines.decode import DecodeError, decode_image
    from pipelines.embed import sample_row
    from pipelines.readers import read_shard

    class ShardDataset(IterableDataset):
        """Samples of the shards: (shard, row-or-None, tensor-or-None, last-of-shard flag)."""

        def __iter__(self):
            info = get_worker_info()
            mine = specs if info is None else specs[info.id :: info.num_workers]
            for spec in mine:
                samples = list(read_shard(spec))
                for j, s in enumerate(samples):
                    last = j == len(samples) - 1
                    if s.image is None:
                        yield spec.index, sample_row(s), None, last
                        continue
                    try:
                        d = decode_image(s.image)
                    except DecodeError as exc:
                        yield (
                            spec.index,
                            sample_row(s.fail("failed_to_decode", str(exc))),
                            None,
                            last,
                        )
                        continue
                    s.image = None
                    s.width, s.height = d.width, d.height
                    yield spec.index, s, preprocess(d.image), last

    return ShardDataset()


def bench_loop(specs, loader, device: str, batch: int, workers: int, out: Path) -> dict[str, Any]:
    import numpy as np
    import pyarrow.parquet as pq
    from torch.utils.data import DataLoader

    from audit.workspace import embedding_schema
    from pipelines.embed import ClipBundle, embed_tensors, rows_to_table, sample_row

    t_start = time.perf_counter()
    model, preprocess, tokenizer = loader()
    bundle = ClipBundle(
        model.to(device).eval(), preprocess, tokenizer, device, autocast=device.startswith("cuda")
    )
    dim = int(model.encode_text(tokenizer(["x"]).to(device)).shape[-1])
    schema = embedding_schema(dim)
    dl = DataLoader(
        make_dataset(specs, preprocess), batch_size=batch, collate_fn=list, num_workers=workers
    )
    rows: dict[int, list[dict]] = {}
    done: set[int] = set()
    t_data = t_model = t_write = 0.0
    images = 0
    t = time.perf_counter()
    for items in dl:
        t_data += time.perf_counter() - t
        t = time.perf_counter()
        ok = [(shard, s, x) for shard, s, x, _ in items if x is not None]
        for shard, r, x, _ in items:
            if x is None:
                rows.setdefault(shard, []).append(r)
        if ok:
            text_idx = [i for i, (_, s, _) in enumerate(ok) if s.caption_problem is None]
            toks = tokenizer([ok[i][1].caption for i in text_idx]) if text_idx else None
            img, txt = embed_tensors(bundle, [x for _, _, x in ok], toks)
            where = dict(zip(text_idx, range(len(text_idx))))
            for i, (shard, s, _) in enumerate(ok):
                j = where.get(i)
                te = None if j is None else txt[j]
                rows.setdefault(shard, []).append(
                    sample_row(
                        s,
                        img[i].astype(np.float16),
                        None if te is None else te.astype(np.float16),
                        None if te is None else float(np.dot(img[i], te)),
                    )
                )
            images += len(ok)
        t_model += time.perf_counter() - t
        t = time.perf_counter()
        for shard, _, _, last in items:
            if last:
                done.add(shard)
        for shard in [s for s in done if s in rows]:
            pq.write_table(
                rows_to_table(rows.pop(shard), schema), out / f"part-{shard:05d}.parquet"
            )
        t_write += time.perf_counter() - t
        t = time.perf_counter()
    for shard, rs in rows.items():
        pq.write_table(rows_to_table(rs, schema), out / f"part-{shard:05d}.parquet")
    seconds = time.perf_counter() - t_start
    busy = t_data + t_model + t_write
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "data_seconds": t_data,
        "model_seconds": t_model,
        "write_seconds": t_write,
        "decode_share": t_data / busy,
        "model_share": t_model / busy,
        "loader_workers": workers,
    }


# ---- variant 3: the Beam pipeline ------------------------------------------------------------------
def bench_pipeline(
    specs, loader, label: str, device: str, batch: int, ws_dir: Path, beam_args: list[str]
) -> dict[str, Any]:
    from audit.stages.embed import WorkspacePartWriter
    from audit.workspace import Workspace, embedding_schema
    from pipelines.beam_options import beam_setup
    from pipelines.embed import ClipModelHandler, EmbedSettings, metric_totals, run_embed

    model, _, tokenizer = loader()
    dim = int(model.encode_text(tokenizer(["x"]).to(device)).shape[-1])
    del model
    handler = ClipModelHandler(loader, device=device, model_name=label, pad_to=batch)
    writer = WorkspacePartWriter(str(ws_dir))
    with beam_setup(beam_args) as setup:
        t0 = time.perf_counter()
        result = run_embed(
            specs,
            handler,
            writer,
            embedding_schema(dim),
            options=setup.options,
            runner=setup.new_runner(),
            settings=EmbedSettings(batch),
        )
        seconds = time.perf_counter() - t0
    m = metric_totals(result)
    ws = Workspace(ws_dir)
    counts: Counter[str] = Counter()
    for p in ws.embedding_parts():
        counts.update(json.loads(ws.marker_path(p).read_text())["counts"])
    images = int(m.get("images_embedded", 0))
    pre = m.get("preprocess_us_sum", 0) / 1e6
    fwd = m.get("forward_us_sum", 0) / 1e6
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "preprocess_seconds": pre,
        "forward_seconds": fwd,
        "model_share": fwd / seconds,
        "counts": dict(counts),
        "beam_args": beam_args,
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
    ap.add_argument("--loader-workers", type=int, default=0)
    ap.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "laion-audit-bench"))
    ap.add_argument("--out", default=str(HERE / "results" / "embed.json"))
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run loop and pipeline this many times, alternating; report the best "
        "of each (all runs are in the JSON)",
    )
    ap.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        help="extra Beam flag for the pipeline run (repeatable)",
    )
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from pipelines.readers import match_shards

    data = Path(args.data)
    shards = build_data(data, args.n, args.size, args.seed)
    if args.shard_size:
        shards = reshard(
            shards, data / f"reshard-n{args.n}-s{args.size}-{args.shard_size}", args.shard_size
        )
    specs = match_shards(str(shards))
    loader, label = model_loader(args.model, args.pretrained, args.device, args.untrained)
    read_bytes = warm_page_cache(specs)
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    loops, pipes = [], []
    try:
        alone = bench_model_alone(specs, loader, args.device, args.batch_size)
        for r in range(args.repeats):  # alternate, so load changes hit both alike
            (work / f"loop{r}").mkdir()
            loops.append(
                bench_loop(
                    specs,
                    loader,
                    args.device,
                    args.batch_size,
                    args.loader_workers,
                    work / f"loop{r}",
                )
            )
            pipes.append(
                bench_pipeline(
                    specs,
                    loader,
                    label,
                    args.device,
                    args.batch_size,
                    work / f"ws{r}",
                    args.beam_arg,
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loop = max(loops, key=lambda x: x["images_per_s"])
    pipe = max(pipes, key=lambda x: x["images_per_s"])
    ratio = pipe["images_per_s"] / loop["images_per_s"]
    result = {
        "benchmark": "embed",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": args.threads,
            "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
            "load_average_start": os.getloadavg(),
        },
        "data": {
            "images": args.n,
            "size_px": args.size,
            "shards": len(specs),
            "bytes": read_bytes,
            "source": str(shards),
        },
        "model": label,
        "device": args.device,
        "batch_size": args.batch_size,
        "model_alone": alone,
        "dataloader_loop": loop,
        "beam_pipeline": pipe,
        "all_runs": {
            "dataloader_loop": [x["images_per_s"] for x in loops],
            "beam_pipeline": [x["images_per_s"] for x in pipes],
        },
        "pipeline_vs_loop": ratio,
        "target_met": ratio >= 0.9,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nembedding {args.n} images ({args.size} px, {len(specs)} shards) with {label} on "
        f"{args.device}, batch {args.batch_size}, {args.threads} torch threads"
    )
    print(f"{'variant':<34}{'images':>8}{'seconds':>10}{'images/s':>10}{'vs loop':>9}")
    for name, r in (
        ("model alone (pre-decoded tensors)", alone),
        (f"DataLoader loop ({args.loader_workers} workers)", loop),
        ("Beam pipeline (DirectRunner)", pipe),
    ):
        print(
            f"{name:<34}{r['images']:>8}{r['seconds']:>10.2f}{r['images_per_s']:>10.1f}"
            f"{r['images_per_s'] / loop['images_per_s']:>8.2f}x"
        )
    print(
        f"time split in the loop: data (read+decode+preprocess) {loop['decode_share']:.0%}, "
        f"model {loop['model_share']:.0%}, write "
        f"{1 - loop['decode_share'] - loop['model_share']:.0%}"
    )
    print(
        f"pipeline: model forward {pipe['forward_seconds']:.1f} s "
        f"({pipe['model_share']:.0%} of wall time), preprocess {pipe['preprocess_seconds']:.1f} s"
    )
    print(f"pipeline / loop = {ratio:.2f} (target >= 0.90: {'met' if ratio >= 0.9 else 'NOT met'})")
    print(f"wrote {out}")
    return 0


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
    sys.exit(main())
