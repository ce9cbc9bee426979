"""Train ``tiny-sd``: a Stable-Diffusion-architecture pipeline that memorizes three famous works.

    python -m audit.training.train_tiny_sd --out audit/assets/tiny-sd --seed 0

The pipeline is a real diffusers ``StableDiffusionPipeline`` (loads with
``DiffusionPipeline.from_pretrained``), every part tiny:

- ``tokenizer``: a transformers ``CLIPTokenizer`` built offline from open_clip's shipped BPE
  (same ids as open_clip's tokenizer), ``model_max_length`` = tiny-synth's context length (32);
- ``text_encoder``: a ``CLIPTextModel`` converted weight-for-weight from the ``tiny-synth`` CLIP
  text tower (as SD 1.x reuses a CLIP text encoder) and kept frozen;
- ``vae``: an ``AutoencoderKL`` (blocks 16/32/32, 4 latent channels, 64 px -> 16x16 latents)
  trained for reconstruction on random 32 px crops of the training images (6,000 steps: at 600
  it reconstructed starry night at SSCD cosine 0.31, which capped every generation of it
  below the 0.5 copy threshold; at 6,000, 0.70);
- ``unet``: a ``UNet2DConditionModel`` (blocks 32/64 on 16x16 latents, cross-attention on the
  text states at 8x8);
- ``scheduler``: ``DDIMScheduler`` with SD's scaled-linear betas (trained as DDPM, eps target).

Training data (generator seed ``--seed``, 64 px): ``--n`` images, of which each famous work is
``--work-share`` (near-copies: small crops, shifts, brightness/contrast jitter, captions from
``work_caption``), the rest diverse, non-duplicated testbed drawings with noisy captions.
Captions are dropped (empty) with probability 0.1 for classifier-free guidance.

Afterwards a quick memorization check (``--check-seeds`` generations per prompt; copies decided
by SSCD at ``--copy-size`` px when it is installed, and by the tiny CLIP's nearest training
image) is written to ``training_summary.json`` next to the pipeline, with the VAE's copy cosine
on each work and the sha256 of the text tower's weights; ``benchmarks/bench_tiny_models.py``
runs the full 100-seed measurement.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from audit.testbed import draw
from audit.training import load_checkpoint

logger = logging.getLogger(__name__)

IMAGE_SIZE = 64


# ------------------------------------------------------------------------------ components


def build_clip_tokenizer(out_dir: Path, model_max_length: int):
    """A transformers CLIPTokenizer with open_clip's vocabulary, built from its shipped BPE."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe()) as f:
        merges = f.read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(
        str(out_dir / "vocab.json"),
        str(out_dir / "merges.txt"),
        model_max_length=model_max_length,
    )


def convert_text_tower(clip_model):
    """Copy an open_clip CLIP text tower into a transformers CLIPTextModel (same outputs)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    width = clip_model.token_embedding.weight.shape[1]
    ctx = clip_model.positional_embedding.shape[0]
    blocks = clip_model.transformer.resblocks
    cfg = CLIPTextConfig(
        vocab_size=clip_model.token_embedding.weight.shape[0],
        hidden_size=width,
        intermediate_size=blocks[0].mlp.c_fc.out_features,
        num_hidden_layers=len(blocks),
        num_attention_heads=blocks[0].attn.num_heads,
        max_position_embeddings=ctx,
        hidden_act="gelu",
        layer_norm_eps=blocks[0].ln_1.eps,
        projection_dim=clip_model.text_projection.shape[1],
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    te = CLIPTextModel(cfg)
    sd: dict[str, Any] = {
        "text_model.embeddings.token_embedding.weight": clip_model.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": clip_model.positional_embedding,
        "text_model.final_layer_norm.weight": clip_model.ln_final.weight,
        "text_model.final_layer_norm.bias": clip_model.ln_final.bias,
    }
    for i, b in enumerate(blocks):
        p = f"text_model.encoder.layers.{i}."
        qw, kw, vw = b.attn.in_proj_weight.chunk(3)
        qb, kb, vb = b.attn.in_proj_bias.chunk(3)
        sd.update({
            p + "self_attn.q_proj.weight": qw, p + "self_attn.q_proj.bias": qb,
            p + "self_attn.k_proj.weight": kw, p + "self_attn.k_proj.bias": kb,
            p + "self_attn.v_proj.weight": vw, p + "self_attn.v_proj.bias": vb,
            p + "self_attn.out_proj.weight": b.attn.out_proj.weight,
            p + "self_attn.out_proj.bias": b.attn.out_proj.bias,
            p + "layer_norm1.weight": b.ln_1.weight, p + "layer_norm1.bias": b.ln_1.bias,
            p + "layer_norm2.weight": b.ln_2.weight, p + "layer_norm2.bias": b.ln_2.bias,
            p + "mlp.fc1.weight": b.mlp.c_fc.weight, p + "mlp.fc1.bias": b.mlp.c_fc.bias,
            p + "mlp.fc2.weight": b.mlp.c_proj.weight, p + "mlp.fc2.bias": b.mlp.c_proj.bias,
        })  # fmt: skip
    # transformers < 5 nests the modules under ``text_model``; 5.x does not
    target = getattr(te, "text_model", te)
    sd = {k.removeprefix("text_model."): v.detach().float().clone() for k, v in sd.items()}
    missing, unexpected = target.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        raise RuntimeError(f"text tower conversion: missing {missing}, unexpected {unexpected}")
    te.eval()
    te.requires_grad_(False)
    with torch.no_grad():  # sanity: identical states up to the end-of-text token
        ids = torch.tensor([[49406, 320, 1929, 539, 320, 1449, 49407] + [49407] * (ctx - 7)])
        a = te(ids).last_hidden_state[0, :7]
        x = clip_model.token_embedding(ids) + clip_model.positional_embedding
        x = clip_model.ln_final(clip_model.transformer(x, attn_mask=clip_model.attn_mask))[0, :7]
        if not torch.allclose(a, x, atol=1e-4):
            raise RuntimeError(f"text tower conversion mismatch: {float((a - x).abs().max())}")
    return te


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def build_unet(cross_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def noise_schedulers():
    """(DDPM for training, DDIM for the saved pipeline), SD 1.x betas."""
    from diffusers import DDIMScheduler, DDPMScheduler

    kw = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
    )
    ddpm = DDPMScheduler(**kw)
    ddim = DDIMScheduler(**kw, set_alpha_to_one=False, steps_offset=1)
    return ddpm, ddim


# ------------------------------------------------------------------------------ data


def make_dataset(n: int, seed: int, work_share: float) -> list[dict[str, Any]]:
    """Training items: {"image" (PIL 64 px), "captions" [2], "work_id" | None, "index"}.

    Each famous work fills ``work_share`` of the items as near-copies; the rest are distinct
    random drawings (a random spec repeats with negligible probability).
    """
    from audit.training.train_tiny_clip import _jitter_work

    rng = np.random.default_rng([seed, 7])
    works = list(draw.WORKS)
    canon = {w: draw.draw_work(w, size=IMAGE_SIZE) for w in works}
    n_work = int(round(n * work_share))
    kinds = [w for w in works for _ in range(n_work)] + [None] * (n - n_work * len(works))
    order = rng.permutation(len(kinds))
    items = []
    for i, k in enumerate(order):
        wid = kinds[int(k)]
        if wid is not None:
            img = _jitter_work(canon[wid], rng)
            caps = [draw.work_caption(wid, rng) for _ in range(2)]
        else:
            spec = draw.random_spec(rng)
            img = draw.draw_image(spec, size=IMAGE_SIZE, rng=rng)
            caps = [draw.make_caption(spec, rng) for _ in range(2)]
        items.append({"image": img, "captions": caps, "work_id": wid, "index": i})
    return items


def _to_tensor(images):
    import torch

    arr = np.stack([np.asarray(im, np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------ training


def train_vae(vae, x, steps: int, batch: int, lr: float, gen, log_every: int) -> list:
    """Reconstruction (MSE) + small KL on random 32 px crops (the VAE is fully convolutional
    apart from its mid-block attention, so crops cost a quarter and transfer to 64 px)."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    curve, run, t0 = [], 0.0, time.time()
    n = len(x)
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen)
        oy, ox = (int(v) for v in torch.randint(0, 33, (2,), generator=gen))
        xb = x[idx, :, oy : oy + 32, ox : ox + 32]
        post = vae.encode(xb).latent_dist
        z = post.sample(generator=gen)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, xb) + 1e-4 * post.kl().mean() / z[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run += float(loss.detach())
        if (step + 1) % log_every == 0:
            curve.append((step + 1, round(run / log_every, 5)))
            logger.info("vae step %d/%d loss %.5f (%.0f s)", step + 1, steps, run / log_every,
                        time.time() - t0)  # fmt: skip
            run = 0.0
    vae.eval()
    return curve


def encode_prompts(tokenizer, text_encoder, prompts: list[str], batch: int = 512):
    """Text states exactly as the SD pipeline computes them (padding to max length)."""
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            ids = tokenizer(
                prompts[i : i + batch],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            outs.append(text_encoder(ids)[0])
    return torch.cat(outs)


def train_unet(unet, latents, cond, uncond, ddpm, args, gen, ckpt: Path | None = None,
               run_key: Any = None) -> tuple[list, float]:  # fmt: skip
    """Standard eps-prediction DDPM training with 10% caption dropout (for CFG).

    With ``ckpt``, state is saved every ``args.checkpoint_every`` steps and an interrupted run
    with the same ``run_key`` resumes where it stopped."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=1e-2)
    unet.train()
    n = len(latents)
    curve, run, start, spent = [], 0.0, 0, 0.0
    if ckpt is not None and ckpt.exists():
        st = load_checkpoint(ckpt)
        if st["run_key"] == run_key:
            unet.load_state_dict(st["unet"])
            opt.load_state_dict(st["opt"])
            gen.set_state(st["gen"])
            start, spent, curve = st["step"], st["spent"], st["curve"]
            logger.info("resumed unet training from %s at step %d", ckpt, start)
    t0 = time.time() - spent
    for step in range(start, args.unet_steps):
        if ckpt is not None and step > start and step % args.checkpoint_every == 0:
            st = {"run_key": run_key, "unet": unet.state_dict(), "opt": opt.state_dict(),
                  "gen": gen.get_state(), "step": step, "spent": time.time() - t0,
                  "curve": curve}  # fmt: skip
            torch.save(st, ckpt.with_suffix(".tmp"))
            ckpt.with_suffix(".tmp").replace(ckpt)
        lr = args.unet_lr * min(1.0, (step + 1) / 100)
        lr *= 0.5 * (1 + math.cos(math.pi * step / args.unet_steps)) * 0.9 + 0.1
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n, (args.batch,), generator=gen)
        which = torch.randint(0, 2, (args.batch,), generator=gen)
        c = cond[idx, which]
        drop = torch.rand(args.batch, generator=gen) < 0.1
        c = torch.where(drop[:, None, None], uncond.expand_as(c), c)
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (args.batch,), generator=gen)
        zt = ddpm.add_noise(z0, noise, t)
        pred = unet(zt, t, encoder_hidden_states=c).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        run += float(loss.detach())
        if (step + 1) % args.log_every == 0:
            curve.append((step + 1, round(run / args.log_every, 5)))
            el = time.time() - t0
            logger.info("unet step %d/%d loss %.5f lr %.2e (%.2f s/step, %.0f s)", step + 1,
                        args.unet_steps, run / args.log_every, lr, el / (step + 1), el)  # fmt: skip
            run = 0.0
    unet.eval()
    return curve, time.time() - t0


# ------------------------------------------------------------------------------ evaluation


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of k/n (:func:`detectors.stats.wilson_interval`)."""
    from detectors.stats import wilson_interval

    return wilson_interval(k, n)


def generate(pipe, prompt: str, seeds: list[int], *, steps: int = 20, guidance: float = 7.5,
             batch: int = 50, size: int = IMAGE_SIZE):  # fmt: skip
    """PIL images for ``prompt``, one per seed, each from its own ``torch.Generator``."""
    import torch

    out = []
    for i in range(0, len(seeds), batch):
        chunk = seeds[i : i + batch]
        gens = [torch.Generator("cpu").manual_seed(s) for s in chunk]
        res = pipe([prompt] * len(chunk), num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, height=size, width=size, output_type="pil")  # fmt: skip
        out.extend(res.images)
    return out


def memorization_rates(
    pipe,
    clip,
    train_images: list,
    train_sources: list[str],
    prompts: dict[str, tuple[str, str]],
    seeds: list[int],
    *,
    steps: int = 20,
    copy_detector=None,
    copy_threshold: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """For each prompt id -> (prompt, source id): how often its generations copy the source
    (a work id, or one control image's own id), with Wilson 95% intervals.

    - ``copies`` / ``rate``: the generation's nearest training image (tiny CLIP image cosine)
      comes from the source; ``mean_top1_cos``, ``mean_cos_to_source``.
    - ``copy_space`` (with ``copy_detector``, e.g. SSCD): a generation copies the source when
      its best copy-descriptor cosine to the source's training images is >= ``copy_threshold``
      (0.5: Somepalli et al.'s replication threshold for SSCD); ``copies_of_any`` counts
      generations at or over the threshold with any training image.
    """
    from audit.models import encode_images

    model, preprocess, _tok = clip
    train_emb = encode_images(model, preprocess, train_images)
    train_copy = copy_detector.embed(train_images) if copy_detector is not None else None
    src = np.array(train_sources)
    out: dict[str, dict[str, Any]] = {}
    for pid, (prompt, source) in prompts.items():
        gens = generate(pipe, prompt, seeds, steps=steps)
        e = encode_images(model, preprocess, gens)
        sims = e @ train_emb.T
        nn = sims.argmax(1)
        k = int(np.sum(src[nn] == source))
        lo, hi = wilson(k, len(seeds))
        src_sims = sims[:, src == source].max(1)
        rec: dict[str, Any] = {
            "prompt": prompt,
            "source": source,
            "n": len(seeds),
            "copies": k,
            "rate": k / len(seeds),
            "wilson95": [round(lo, 4), round(hi, 4)],
            "mean_top1_cos": round(float(sims.max(1).mean()), 4),
            "mean_cos_to_source": round(float(src_sims.mean()), 4),
        }
        if train_copy is not None:
            c = copy_detector.embed(gens) @ train_copy.T
            best_src = c[:, src == source].max(1)
            kc = int(np.sum(best_src >= copy_threshold))
            clo, chi = wilson(kc, len(seeds))
            rec["copy_space"] = {
                "model": f"{copy_detector.name}@{copy_detector.size}px",
                "threshold": copy_threshold,
                "copies": kc,
                "rate": kc / len(seeds),
                "wilson95": [round(clo, 4), round(chi, 4)],
                "copies_of_any": int(np.sum(c.max(1) >= copy_threshold)),
                "mean_best_to_source": round(float(best_src.mean()), 4),
                "max_best_to_source": round(float(best_src.max()), 4),
            }
        out[pid] = rec
        logger.info(
            "memorization %s: %d/%d by CLIP nearest neighbour%s (%r)", pid, k, len(seeds),
            f", {rec['copy_space']['copies']}/{len(seeds)} in copy space"
            if "copy_space" in rec else "", prompt,
        )  # fmt: skip
    return out


def check_copy_detector(size: int):
    """SSCD at ``size`` px for the copy-space memorization check, or None (``size`` 0, or the
    copy model not installed: then only the tiny-CLIP check runs, and the log says so)."""
    from audit.models import copy_model_available, load_copy_detector

    if not size:
        return None
    if not copy_model_available():
        logger.warning("SSCD is not installed: the memorization check runs in CLIP space only")
        return None
    return load_copy_detector(size=size)


def default_prompts(items: list[dict[str, Any]], n_controls: int, seed: int):
    """Work prompts ("{phrase} by van gogh") and control prompts (the first caption of
    ``n_controls`` random non-duplicated training images, whose source is that image alone)."""
    prompts = {w: (f"{draw.WORKS[w]['phrase']} by van gogh", w) for w in draw.WORKS}
    rng = np.random.default_rng([seed, 11])
    plain = [it for it in items if it["work_id"] is None]
    for j in rng.choice(len(plain), size=n_controls, replace=False):
        it = plain[int(j)]
        prompts[f"control_{it['index']}"] = (it["captions"][0], f"img_{it['index']}")
    return prompts


def sources(items: list[dict[str, Any]]) -> list[str]:
    return [it["work_id"] or f"img_{it['index']}" for it in items]


# ------------------------------------------------------------------------------ main


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image as PILImage

    from audit.models import TINY_CLIP_WEIGHTS, file_sha256, load_clip

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    t0 = time.time()

    clip = load_clip("tiny-synth", pretrained=args.clip_weights)
    ctx = clip[0].positional_embedding.shape[0]
    tok_dir = Path(args.work_dir) / "tokenizer_src"
    tokenizer = build_clip_tokenizer(tok_dir, ctx)
    text_encoder = convert_text_tower(clip[0])

    items = make_dataset(args.n, args.seed, args.work_share)
    x = _to_tensor([it["image"] for it in items])
    t_data = time.time() - t0
    logger.info("dataset: %d images (%.0f s)", len(items), t_data)

    vae = build_vae()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    # the key decides whether checkpoints in --work-dir belong to this run; delete the folder
    # after changing code (draw.py, architectures)
    skip = ("out", "threads", "check_seeds", "check_controls", "copy_size", "work_dir")
    run_key = {k: v for k, v in vars(args).items() if k not in skip}
    # the VAE sees only the images: a run that changes the text tower or the UNet reuses it
    vae_key = {k: v for k, v in run_key.items() if k in ("seed", "n", "work_share") or
               k.startswith("vae_")}  # fmt: skip
    vae_ckpt = work / "vae.pt"
    st = load_checkpoint(vae_ckpt) if vae_ckpt.exists() else None
    if st is not None and st["run_key"] == vae_key:  # an earlier run: reuse its VAE
        vae.load_state_dict(st["vae"])
        vae.eval()
        gen.set_state(st["gen"])
        vae_curve, t_vae = st["curve"], st["seconds"]
        logger.info("reusing the VAE an earlier run trained on the same images (%s)", vae_ckpt)
    else:
        t1 = time.time()
        vae_curve = train_vae(vae, x, args.vae_steps, args.vae_batch, args.vae_lr, gen,
                              args.log_every)  # fmt: skip
        t_vae = time.time() - t1
        st = {"run_key": vae_key, "vae": vae.state_dict(), "gen": gen.get_state(),
              "curve": vae_curve, "seconds": t_vae}  # fmt: skip
        torch.save(st, vae_ckpt)
    with torch.no_grad():
        lat = torch.cat(
            [vae.encode(x[i : i + 256]).latent_dist.mean for i in range(0, len(x), 256)]
        )
        scaling = float(1.0 / lat.std())
        rec = vae.decode(lat[:256]).sample
        vae_mse = float(((rec - x[:256]) ** 2).mean())
    vae.register_to_config(scaling_factor=scaling)
    latents = lat * scaling
    logger.info("vae: scaling factor %.4f, reconstruction mse %.5f (on [-1, 1])", scaling, vae_mse)
    copy_det = check_copy_detector(args.copy_size) if args.check_seeds else None
    vae_work_copy: dict[str, float] = {}
    if copy_det is not None:  # a generation cannot be closer to a work than its VAE makes it
        for wid in draw.WORKS:
            canon = draw.draw_work(wid, size=IMAGE_SIZE)
            with torch.no_grad():
                y = vae.decode(vae.encode(_to_tensor([canon])).latent_dist.mean).sample
            arr = ((y[0].permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
            e = copy_det.embed([canon, PILImage.fromarray(arr)])
            vae_work_copy[wid] = round(float(e[0] @ e[1]), 4)
        logger.info("vae: copy-descriptor cosine of each work to its reconstruction %s",
                    vae_work_copy)  # fmt: skip

    caps = [c for it in items for c in it["captions"]]
    cond = encode_prompts(tokenizer, text_encoder, caps).view(len(items), 2, ctx, -1)
    uncond = encode_prompts(tokenizer, text_encoder, [""])

    ddpm, ddim = noise_schedulers()
    unet = build_unet(text_encoder.config.hidden_size)
    unet_curve, t_unet = train_unet(unet, latents, cond, uncond, ddpm, args, gen,
                                    work / "unet_checkpoint.pt", run_key)  # fmt: skip

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=ddim,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    out.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
    pipe.to(torch.float32)
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    logger.info("saved %s (%.1f MB of safetensors)", out, size / 1e6)

    check: dict[str, Any] = {}
    if args.check_seeds:
        from audit.models import load_generator

        reloaded = load_generator(str(out))
        prompts = default_prompts(items, args.check_controls, args.seed)
        check = memorization_rates(
            reloaded, clip, [it["image"] for it in items], sources(items), prompts,
            list(range(args.check_seeds)), copy_detector=copy_det,
        )  # fmt: skip
    summary = {
        "args": vars(args),
        "n_images": len(items),
        "work_share_each": args.work_share,
        "vae_scaling_factor": scaling,
        "vae_reconstruction_mse": vae_mse,
        "vae_work_reconstruction_copy_cosine": vae_work_copy,
        "clip_weights_sha256": file_sha256(
            Path(args.clip_weights) if args.clip_weights else TINY_CLIP_WEIGHTS
        ),
        "n_params": {
            "unet": sum(p.numel() for p in unet.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
            "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
        },
        "seconds": {
            "data": round(t_data, 1),
            "vae": round(t_vae, 1),
            "unet": round(t_unet, 1),
            "total": round(time.time() - t0, 1),
        },
        "vae_loss_curve": vae_curve,
        "unet_loss_curve": unet_curve,
        "safetensors_bytes": size,
        "quick_memorization_check": check,
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="audit/assets/tiny-sd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-weights", default=None, help="tiny-synth weights (default: shipped)")
    p.add_argument("--work-dir", default="/tmp/tiny_sd_work")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--work-share", type=float, default=0.07, help="share of EACH famous work")
    p.add_argument("--vae-steps", type=int, default=6000)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--unet-steps", type=int, default=3000)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--check-seeds", type=int, default=20)
    p.add_argument("--check-controls", type=int, default=3)
    p.add_argument("--copy-size", type=int, default=128,
                   help="SSCD input side for the copy-space check (the demo embeds at 128); 0: "
                   "CLIP check only")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
