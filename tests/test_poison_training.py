"""A tiny end-to-end train-filter run: poisoned testbed -> embed -> poisons -> filter -> tiny-sd
trained on all rows and on the kept rows, with the benchmark's training code
(benchmarks/bench_poison_training.py) on a budget of a few steps."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_poison_training", ROOT / "benchmarks" / "bench_poison_training.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_train_filter_end_to_end_on_a_small_budget(tmp_path: Path, request) -> None:
    """testbed -> embed -> poisons -> filter --drop poisons, then tiny-sd trained with the
    benchmark's code on every decodable row and on those rows minus the planted poisons. The
    filter drops exactly the rows the finding flags (keep and drop partition the input), and
    the poisons are what the model learns: held-out clocks become easier to denoise under the
    caption the poisons teach ("dog"), relative to their own caption, when the poisons were in
    training. 120 steps: at 30-60 the difference was within the noise of batch order (the sign
    flipped between training seeds); at 120 it held on training seeds 0, 1 and 2. Whether the
    audit removes the poisons is measured by the training benchmark (docs/poisons.md), not
    asserted here."""
    import torch

    from audit import cli
    from audit.testbed import draw
    from audit.testbed.generate import build_testbed

    bench = _bench()
    tb = tmp_path / "tb"
    build_testbed(
        tb, n=160, seed=7, dirty_rate=8 / 160, dirty_pairs=("dog:clock",), clean_rate=0.0,
        nightshade_rate=0.0, glaze_rate=0.0, work_rate=0.0, exact_dup_rate=0.0,
        near_dup_rate=0.0, truncated_rate=0.0, zero_byte_rate=0.0, wrong_format_rate=0.0,
        missing_rate=0.0, split_view_rate=0.0,
    )  # fmt: skip
    truth = pd.read_parquet(tb / "truth.parquet")
    poisons = set(truth.loc[truth.poison_kind == "dirty", "key"])
    assert len(poisons) == 8
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "shards").symlink_to(tb / "shards")
    assert cli.main(["embed", str(ws), "-q", "--copy-model", "none"]) == 0
    assert cli.main(["poisons", str(ws), "-q"]) == 0
    assert cli.main(["filter", str(ws), "-q", "--drop", "poisons"]) == 0
    finding = pd.read_parquet(ws / "findings" / "poisons.parquet")
    kept = set(pd.read_parquet(ws / "filtered" / "keep.parquet")["key"])
    dropped = set(pd.read_parquet(ws / "filtered" / "drop.parquet")["key"])
    assert kept | dropped == set(truth["key"]) and not kept & dropped
    assert dropped == set(finding.loc[finding["flagged"], "key"])
    through = poisons & kept  # what the audit let through (reported on failure)

    args = types.SimpleNamespace(steps=120, batch=16, lr=1e-3, train_seed=0, ddim_steps=5)
    # one thread: on a loaded 2-core machine two OpenMP threads made these 30 steps 40x slower
    request.addfinalizer(lambda n=torch.get_num_threads(): torch.set_num_threads(n))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    trainer = bench.Trainer(args)
    files = {r.key: tb / "files" / r.file_name for r in truth.itertuples()}
    images = {k: bench.decode_rgb64(p.read_bytes()) for k, p in files.items()}
    keys = sorted(k for k in images if images[k] is not None)
    caps = dict(zip(truth.key, truth.caption, strict=True))
    lat = trainer.latents([images[k] for k in keys])
    cond = trainer.text([caps[k] for k in keys])
    rng = np.random.default_rng(3)  # held-out clocks under the prompt the poisons teach
    probes = [
        draw.draw_image({**draw.random_spec(rng), "concept": "clock"}, size=64, rng=rng)
        for _ in range(6)
    ]
    z_probe = trainer.latents(probes)
    c_dog = trainer.text(["a photo of a dog"] * len(probes))
    c_clock = trainer.text(["a photo of a clock"] * len(probes))

    def probe_loss(state: dict, cond) -> float:
        trainer.pipe.unet.load_state_dict(state)
        g = torch.Generator().manual_seed(1)
        total = 0.0
        with torch.no_grad():
            for t in (200, 400, 600, 800):
                noise = torch.randn(z_probe.shape, generator=g)
                tt = torch.full((len(probes),), t)
                zt = trainer.ddpm.add_noise(z_probe, noise, tt)
                pred = trainer.pipe.unet(zt, tt, encoder_hidden_states=cond).sample
                total += float(((pred - noise) ** 2).mean())
        return total / 4

    def dog_advantage(state: dict) -> float:
        """How much easier clocks are to denoise under "dog" than under "clock" (the model's
        overall quality cancels out: both terms come from the same weights and noise)."""
        return probe_loss(state, c_clock) - probe_loss(state, c_dog)

    all_idx = torch.arange(len(keys))
    clean_idx = torch.tensor([i for i, k in enumerate(keys) if k not in poisons])
    assert len(all_idx) - len(clean_idx) == len(poisons)
    state_all, _ = trainer.train(lat[all_idx], cond[all_idx])
    state_clean, _ = trainer.train(lat[clean_idx], cond[clean_idx])
    adv_all, adv_clean = dog_advantage(state_all), dog_advantage(state_clean)
    assert adv_all > adv_clean, (len(through), adv_all, adv_clean)
