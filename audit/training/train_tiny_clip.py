"""Train the ``tiny-synth`` CLIP (open_clip architecture) on procedurally drawn SynthLAION images.

    python -m audit.training.train_tiny_clip --out runs/1 --seed 2 --concept-negatives 2

The shipped weights come from seven chained runs (``--init`` the previous run's weights; the
last on a fresh data seed): docs/testbed.md lists their options, and the shipped
``training.json`` records each under ``chain``.

Data: images from :mod:`audit.testbed.draw` (drawn at 64 px like the testbed, then passed
through the model's own open_clip preprocessing) with noisy template captions, drawn once into
an in-memory cache (two worker processes; chunk ``i`` always uses generator ``(seed, i)``, so
the cache does not depend on the number of workers). The mix:

- plain objects (random concept, colour, style, background, position, scale);
- ``--extra-rate`` of images with a second small object in a corner, named in the caption
  ("... with a flag"; the flag in ``--flag-share`` of them), so zero-shot questions like
  "an astronaut with a flag" vs "an astronaut" work;
- ``--work-rate`` of images of the three famous van gogh works (small crops, shifts and colour
  jitter), with varied captions naming them.

Writes ``tiny-synth.json`` (open_clip model config), ``open_clip_model.safetensors`` (fp16) and
``training.json`` (arguments, loss curve, wall time, held-out metrics) into ``--out``. The
evaluation uses images from generator seed ``--eval-seed``, never used for training data.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np

from audit.testbed import draw
from audit.training import load_checkpoint
from detectors.stats import auroc

logger = logging.getLogger(__name__)

#: open_clip architecture of ``tiny-synth``: a ModifiedResNet (CLIP's RN) vision tower with one
#: bottleneck per stage at 32 px, and a 3-layer text transformer of width 64. Context length is
#: 32 tokens (captions here are short; longer texts are truncated by the tokenizer) because the
#: text tower at 77 tokens cost ~3x more per training step on 2 CPU cores.
TINY_SYNTH_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
MODEL_NAME = "tiny-synth"
WEIGHTS_FILE = "open_clip_model.safetensors"
CHUNK = 500


# ---------------------------------------------------------------------------------- data


def _register_config() -> None:
    import open_clip.factory

    open_clip.factory._MODEL_CONFIGS[MODEL_NAME] = json.loads(json.dumps(TINY_SYNTH_CONFIG))


def _jitter_work(img, rng: np.random.Generator):
    """A near-copy of a work: small crop/shift, brightness/contrast jitter (what re-posts do)."""
    from PIL import Image, ImageEnhance

    w = img.size[0]
    c = float(rng.uniform(0.85, 1.0))
    side = max(8, int(w * c))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, w - side + 1))
    out = img.crop((x0, y0, x0 + side, y0 + side)).resize((w, w), Image.BICUBIC)
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.85, 1.15)))
    return ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.85, 1.15)))


def sample_item(rng: np.random.Generator, extra_rate: float, flag_share: float, work_rate: float):
    """One training item: (PIL image at 64 px, [two captions], kind)."""
    r = rng.random()
    if r < work_rate:
        wid = list(draw.WORKS)[int(rng.integers(len(draw.WORKS)))]
        img = _jitter_work(draw.draw_work(wid, size=64), rng)
        return img, [draw.work_caption(wid, rng) for _ in range(2)], "work"
    spec = draw.random_spec(rng)
    extra = None
    if r < work_rate + extra_rate:
        if rng.random() < flag_share:
            extra = "flag"
        else:
            others = [c for c in draw.CONCEPTS if c != spec["concept"]]
            extra = others[int(rng.integers(len(others)))]
    img = draw.draw_image(spec, size=64, extra_object=extra, rng=rng)
    caps = [draw.make_caption(spec, rng, extra_object=extra) for _ in range(2)]
    return img, caps, "extra" if extra else "plain"


def _make_chunk(args: tuple[int, int, int, float, float, float]):
    """Draw one chunk of the cache; runs in a worker process."""
    import open_clip
    import torch

    torch.set_num_threads(1)
    seed, idx, n, extra_rate, flag_share, work_rate = args
    _register_config()
    preprocess = _preprocess()
    tok = open_clip.get_tokenizer(MODEL_NAME)
    rng = np.random.default_rng([seed, idx])
    imgs, caps = [], []
    for _ in range(n):
        img, c, _kind = sample_item(rng, extra_rate, flag_share, work_rate)
        imgs.append(preprocess(img).to(torch.float16))
        caps.extend(c)
    return torch.stack(imgs), tok(caps).view(n, 2, -1)


def _preprocess():
    import open_clip

    from audit.models import image_transform_for

    return image_transform_for(open_clip.get_model_config(MODEL_NAME))


def build_cache(
    n: int,
    seed: int,
    extra_rate: float,
    flag_share: float,
    work_rate: float,
    workers: int,
    cache_dir: Path | None = None,
):
    """Draw ``n`` training items into (images fp16 [n,3,H,W], tokens [n,2,ctx]).

    With ``cache_dir``, every finished chunk is kept there (named by its parameters), so an
    interrupted run resumes drawing where it stopped. Delete the folder after changing draw.py.
    """
    import torch

    chunks = [
        (seed, i, min(CHUNK, n - i * CHUNK), extra_rate, flag_share, work_rate)
        for i in range(math.ceil(n / CHUNK))
    ]

    def path(c: tuple) -> Path | None:
        return cache_dir / ("chunk-" + "-".join(str(v) for v in c) + ".pt") if cache_dir else None

    parts: dict[int, tuple] = {}
    for k, c in enumerate(chunks):
        p = path(c)
        if p is not None and p.exists():
            parts[k] = load_checkpoint(p)
    todo = [k for k in range(len(chunks)) if k not in parts]
    logger.info("drawing %d of %d chunks (%d cached)", len(todo), len(chunks), len(parts))
    t0 = time.time()
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) if workers > 1 else _Serial() as pool:
        for j, (k, part) in enumerate(
            zip(todo, pool.imap(_make_chunk, [chunks[k] for k in todo]), strict=True)
        ):
            parts[k] = part
            p = path(chunks[k])
            if p is not None:
                torch.save(part, p.with_suffix(".tmp"))
                p.with_suffix(".tmp").replace(p)
            if j % 10 == 0:
                logger.info("drew %d/%d chunks (%.0f s)", j + 1, len(todo), time.time() - t0)
    images = torch.cat([parts[k][0] for k in range(len(chunks))])
    tokens = torch.cat([parts[k][1] for k in range(len(chunks))])
    logger.info("training cache: %d images in %.0f s", len(images), time.time() - t0)
    return images, tokens


class _Serial:
    """Stand-in for a process pool when ``--workers 1``."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap(self, fn, items):
        return map(fn, items)


# ---------------------------------------------------------------------------------- views


def augment_views(x, gen, mean, std, strength: float = 1.0):
    """A random near-duplicate view of each normalized image in ``x`` [B, 3, H, W]: what a
    re-post does (a crop of up to ~12% per side resized back, a small shift, brightness /
    contrast / saturation jitter of +-12%, and compression-like noise), on the tensors so the
    drawn cache is reused. Used for the instance-contrastive term."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]

    def u(lo: float, hi: float, *shape: int):
        return lo + (hi - lo) * torch.rand((b, *shape), generator=gen)

    px = x * std + mean
    scale = 1.0 - strength * u(0.0, 0.18)
    shift = (1.0 - scale)[:, None] * u(-1.0, 1.0, 2)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(px.shape), align_corners=False)
    px = F.grid_sample(px, grid, mode="bicubic", padding_mode="border", align_corners=False)
    jit = 1.0 + strength * u(-0.12, 0.12, 3)
    px = px * jit[:, 0, None, None, None]  # brightness
    grey = px.mean(dim=(1, 2, 3), keepdim=True)
    px = (px - grey) * jit[:, 1, None, None, None] + grey  # contrast
    luma = (0.299 * px[:, 0] + 0.587 * px[:, 1] + 0.114 * px[:, 2])[:, None]
    px = (px - luma) * jit[:, 2, None, None, None] + luma  # saturation
    px = px + strength * u(0.0, 0.03)[:, None, None, None] * torch.randn(px.shape, generator=gen)
    return (px.clamp(0, 1) - mean) / std


def instance_loss(f_a, f_b, temperature: float, group=None):
    """Symmetric InfoNCE between two views of the same images (SimCLR/SLIP-style): a view's
    positive is the other view of its own image, every other image in the batch a negative,
    except images of the same ``group`` (>= 0: near-copies of one famous work), which are left
    out: they ARE near duplicates of each other and must not be pushed apart."""
    import torch
    import torch.nn.functional as F

    logits = f_a @ f_b.T / temperature
    y = torch.arange(len(f_a))
    if group is not None:
        same = (group[:, None] == group[None, :]) & (group[:, None] >= 0)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2


def work_groups(tokens, tokenizer):
    """Per training item, the index of the famous work its captions name (by the work's first
    distinctive word, e.g. "starry"), else -1."""
    import torch

    group = torch.full((tokens.shape[0],), -1, dtype=torch.long)
    for w, wid in enumerate(draw.WORKS):
        word = draw.WORKS[wid]["words"][0]
        tok = int(tokenizer([word])[0][1])  # after the start-of-text token
        hit = (tokens == tok).flatten(1).any(dim=1)
        group[hit & (group < 0)] = w
    return group


def concept_token_ids(tokenizer) -> list[int]:
    """The token id of each testbed concept word (each is one BPE token)."""
    ids = []
    for c in draw.CONCEPTS:
        t = tokenizer([c])[0]
        if int((t != 0).sum()) != 3:  # start, word, end
            raise ValueError(f"concept {c!r} is not a single token")
        ids.append(int(t[1]))
    return ids


def swap_concept(txt, concept_ids, gen):
    """NegCLIP-style hard negatives: each caption with its first concept word replaced by a
    different, random concept (same colour, style and wording otherwise). Returns (negative
    tokens [B, ctx], valid [B]); captions without a concept word (the famous works) are not
    valid negatives of anything. The training loss scores every image against every swapped
    caption of the batch (B x B, not only its own as NegCLIP does); a swapped caption that
    happens to describe another image of the batch is then a false negative, rare with the
    testbed's varied templates. Only the first concept word is swapped."""
    import torch

    ids = torch.tensor(concept_ids)
    hit = (txt[..., None] == ids).any(-1)  # [B, ctx]
    valid = hit.any(1)
    pos = hit.float().argmax(1)  # first concept word
    rows = torch.arange(len(txt))
    which = (txt[rows, pos][:, None] == ids).float().argmax(1)
    shift = torch.randint(1, len(ids), (len(txt),), generator=gen)
    neg = txt.clone()
    neg[rows, pos] = torch.where(valid, ids[(which + shift) % len(ids)], txt[rows, pos])
    return neg, valid


# ---------------------------------------------------------------------------------- eval


def evaluate(model, preprocess, tokenizer, seed: int, n: int = 480) -> dict[str, float]:
    """Held-out quality of a CLIP on fresh testbed drawings from generator ``seed``.

    - ``concept_acc``: zero-shot top-1 over all concepts with "a photo of a {concept}";
    - ``colour_acc``: top-1 over colours with "a photo of a {colour} {concept}" (true concept);
    - ``style_acc``: top-1 over styles with "a {concept} in {style} style" (true concept);
    - ``flag_auroc``: the same specs drawn with and without a small flag, scored by
      cos(img, "a {concept} with a flag") - cos(img, "a {concept}");
    - ``work_acc``: near-copies of the works vs plain van gogh images, top-1 over
      {each work's "{phrase} by van gogh", "a painting in van gogh style"}.
    """
    from audit.models import encode_images, encode_texts

    rng = np.random.default_rng(seed)
    specs = [draw.random_spec(rng) for _ in range(n)]
    imgs = [draw.draw_image(s, size=64, rng=rng) for s in specs]
    flag_specs = specs[: n // 2]
    flag_imgs = [draw.draw_image(s, size=64, extra_object="flag", rng=rng) for s in flag_specs]
    e = encode_images(model, preprocess, imgs + flag_imgs)
    e_plain, e_flag = e[:n], e[n:]
    out: dict[str, float] = {}

    t = encode_texts(model, tokenizer, [f"a photo of a {c}" for c in draw.CONCEPTS])
    pred = np.argmax(e_plain @ t.T, 1)
    truth = np.array([draw.CONCEPTS.index(s["concept"]) for s in specs])
    out["concept_acc"] = float(np.mean(pred == truth))

    colours = list(draw.COLOURS)
    t_col = encode_texts(
        model, tokenizer, [f"a photo of a {c} {k}" for k in draw.CONCEPTS for c in colours]
    ).reshape(len(draw.CONCEPTS), len(colours), -1)
    t_sty = encode_texts(
        model, tokenizer, [f"a {k} in {st} style" for k in draw.CONCEPTS for st in draw.STYLES]
    ).reshape(len(draw.CONCEPTS), len(draw.STYLES), -1)
    ok_c, ok_s = [], []
    for i, s in enumerate(specs):
        k = draw.CONCEPTS.index(s["concept"])
        ok_c.append(colours[int(np.argmax(t_col[k] @ e_plain[i]))] == s["colour"])
        ok_s.append(draw.STYLES[int(np.argmax(t_sty[k] @ e_plain[i]))] == s["style"])
    out["colour_acc"] = float(np.mean(ok_c))
    out["style_acc"] = float(np.mean(ok_s))

    t_with = encode_texts(model, tokenizer, [f"a {k} with a flag" for k in draw.CONCEPTS])
    t_without = encode_texts(model, tokenizer, [f"a {k}" for k in draw.CONCEPTS])
    scores, labels = [], []
    for i, s in enumerate(flag_specs):
        k = draw.CONCEPTS.index(s["concept"])
        for emb, lab in ((e_plain[i], 0), (e_flag[i], 1)):
            scores.append(float(emb @ t_with[k] - emb @ t_without[k]))
            labels.append(lab)
    out["flag_auroc"] = auroc(np.array(labels), np.array(scores))

    work_ids = list(draw.WORKS)
    prompts = [f"{draw.WORKS[w]['phrase']} by van gogh" for w in work_ids]
    prompts.append("a painting in van gogh style")
    tw = encode_texts(model, tokenizer, prompts)
    w_imgs, w_truth = [], []
    for k in range(60):
        wid = work_ids[k % 3]
        w_imgs.append(_jitter_work(draw.draw_work(wid, size=64), rng))
        w_truth.append(k % 3)
    for _ in range(30):
        s = draw.random_spec(rng)
        s["style"] = "van gogh"
        w_imgs.append(draw.draw_image(s, size=64, rng=rng))
        w_truth.append(3)
    ew = encode_images(model, preprocess, w_imgs)
    out["work_acc"] = float(np.mean(np.argmax(ew @ tw.T, 1) == np.array(w_truth)))
    out.update(near_dup_metrics(model, preprocess, imgs, rng))
    return out


def near_dup_metrics(model, preprocess, imgs: list, rng: np.random.Generator) -> dict[str, float]:
    """How well the image tower separates near copies from distinct drawings.

    Each image gets one near copy made exactly as the testbed plants them (1-2 of resize / crop /
    jitter / JPEG q 30-90, then JPEG). ``near_dup_top1``: share of copies whose nearest original
    is their own source; ``near_dup_ap``: average precision of cosine over all (copy, original)
    pairs, own source = positive; ``near_dup_recall_at_p98``: pair recall at precision >= 0.98.
    """
    import io

    from PIL import Image
    from sklearn.metrics import average_precision_score, precision_recall_curve

    from audit.models import encode_images
    from audit.testbed.generate import NEAR_TRANSFORMS, _transform

    copies = []
    for img in imgs:
        kinds = [str(x) for x in rng.choice(NEAR_TRANSFORMS, size=int(rng.integers(1, 3)),
                                             replace=False)]  # fmt: skip
        im2, _desc, q = _transform(img.convert("RGB"), kinds, rng, (30, 90))
        buf = io.BytesIO()
        im2.save(buf, "JPEG", quality=q or 85)
        copies.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    e_o = encode_images(model, preprocess, imgs)
    e_c = encode_images(model, preprocess, copies)
    sims = e_c @ e_o.T
    n = len(imgs)
    labels = np.eye(n, dtype=bool).ravel()
    scores = sims.ravel()
    prec, rec, _ = precision_recall_curve(labels, scores)
    ok = prec >= 0.98
    return {
        "near_dup_top1": float(np.mean(sims.argmax(1) == np.arange(n))),
        "near_dup_ap": float(average_precision_score(labels, scores)),
        "near_dup_recall_at_p98": float(rec[ok].max()) if ok.any() else 0.0,
    }


# ---------------------------------------------------------------------------------- train


def train(args: argparse.Namespace) -> dict[str, Any]:
    import open_clip
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    _register_config()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    images, tokens = build_cache(
        args.n_train, args.seed, args.extra_rate, args.flag_share, args.work_rate, args.workers,
        cache,
    )  # fmt: skip
    t_data = time.time() - t_start

    model = open_clip.create_model(MODEL_NAME)
    if args.init:
        from safetensors.torch import load_file

        state = {k: v.float() for k, v in load_file(args.init).items()}
        model.load_state_dict(state)
        logger.info("initialized from %s", args.init)
    model.train()
    if args.freeze_text:
        # keep the text tower (and so tiny-sd's text encoder, converted from it) unchanged
        for name, prm in model.named_parameters():
            if not name.startswith("visual."):
                prm.requires_grad_(False)
    # The 49,408-row token table is kept at its random init: captions here use a few hundred
    # tokens, random 64-d rows are already distinct, and skipping its dense gradient and Adam
    # update saves ~30% of a training step on 2 CPU cores.
    if not args.freeze_text:
        model.token_embedding.weight.requires_grad_(not args.freeze_token_embedding)
    n_params = sum(p.numel() for p in model.parameters())
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in params if p.ndim < 2 or "logit_scale" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        p = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * p))

    gen = torch.Generator().manual_seed(args.seed)
    groups = work_groups(tokens, open_clip.get_tokenizer(MODEL_NAME)) if args.mask_works else None
    if groups is not None:
        logger.info(
            "instance loss: %d items of the famous works never negatives of each other",
            int((groups >= 0).sum()),
        )
    concept_ids = (
        concept_token_ids(open_clip.get_tokenizer(MODEL_NAME)) if args.concept_negatives else []
    )
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    n = len(images)
    perm = torch.randperm(n, generator=gen)
    pos = 0
    losses: list[tuple[int, float]] = []
    evals: list[dict[str, Any]] = []
    t_train = time.time()
    run_loss = 0.0
    start, spent = 0, 0.0
    ckpt = cache / "checkpoint.pt" if cache else None
    run_key = {k: v for k, v in vars(args).items() if k not in ("out", "workers", "threads")}
    if ckpt is not None and ckpt.exists():
        st = load_checkpoint(ckpt)
        if st["run_key"] == run_key:  # resume an interrupted run exactly where it stopped
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            gen.set_state(st["gen"])
            perm, pos, start, spent = st["perm"], st["pos"], st["step"], st["spent"]
            losses, evals = st["losses"], st["evals"]
            logger.info("resumed from %s at step %d", ckpt, start)
    t_train = time.time() - spent
    for step in range(start, args.steps):
        if ckpt is not None and step > start and step % args.checkpoint_every == 0:
            state = {
                "run_key": run_key, "model": model.state_dict(), "opt": opt.state_dict(),
                "gen": gen.get_state(), "perm": perm, "pos": pos, "step": step,
                "spent": time.time() - t_train, "losses": losses, "evals": evals,
            }  # fmt: skip
            torch.save(state, ckpt.with_suffix(".tmp"))
            ckpt.with_suffix(".tmp").replace(ckpt)
        if pos + args.batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + args.batch]
        pos += args.batch
        x = images[idx].float()
        which = torch.randint(0, 2, (len(idx),), generator=gen)
        txt = tokens[idx, which]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        if args.instance_weight > 0:
            x = augment_views(x, gen, mean, std, 0.5)  # both views are (mildly) augmented
            x2 = augment_views(x, gen, mean, std)
        if args.freeze_text:
            with torch.no_grad():
                f_t = model.encode_text(txt, normalize=True)
            f_i = model.encode_image(x, normalize=True)
            scale = model.logit_scale.exp()
        else:
            f_i, f_t, scale = model(x, txt)
        logits = scale * f_i @ f_t.T
        y = torch.arange(len(idx))
        if args.concept_negatives > 0:
            # image -> text also over captions naming another concept (hard negatives)
            extra = []
            for _ in range(args.concept_negatives):
                neg, valid = swap_concept(txt, concept_ids, gen)
                if args.freeze_text:
                    with torch.no_grad():
                        f_n = model.encode_text(neg, normalize=True)
                else:
                    f_n = model.encode_text(neg, normalize=True)
                extra.append((scale * f_i @ f_n.T).masked_fill(~valid[None, :], float("-inf")))
            i2t = F.cross_entropy(torch.cat([logits, *extra], 1), y)
            loss = (i2t + F.cross_entropy(logits.T, y)) / 2
        else:
            loss = (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2
        if args.instance_weight > 0:
            f_2 = model.encode_image(x2, normalize=True)
            loss = loss + args.instance_weight * instance_loss(
                f_i, f_2, args.instance_temp, None if groups is None else groups[idx]
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        run_loss += float(loss.detach())
        if (step + 1) % args.log_every == 0:
            avg = run_loss / args.log_every
            run_loss = 0.0
            losses.append((step + 1, round(avg, 4)))
            el = time.time() - t_train
            logger.info(
                "step %d/%d loss %.4f lr %.2e (%.2f s/step, %.0f s)",
                step + 1, args.steps, avg, lr_at(step), el / (step + 1), el,
            )  # fmt: skip
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            model.eval()
            m = evaluate(model, _preprocess(), open_clip.get_tokenizer(MODEL_NAME),
                         args.eval_seed, n=240)  # fmt: skip
            model.train()
            evals.append({"step": step + 1, **m})
            logger.info("eval at step %d: %s", step + 1, m)
    train_s = time.time() - t_train

    model.eval()
    t_eval = time.time()
    final = evaluate(model, _preprocess(), open_clip.get_tokenizer(MODEL_NAME), args.eval_seed)
    logger.info("final held-out eval (seed %d): %s", args.eval_seed, final)

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / f"{MODEL_NAME}.json").write_text(json.dumps(TINY_SYNTH_CONFIG, indent=2) + "\n")
    record = {
        "model": MODEL_NAME,
        "config": TINY_SYNTH_CONFIG,
        "n_params": n_params,
        "args": vars(args),
        "torch_threads": args.threads,
        "data_seconds": round(t_data, 1),
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(time.time() - t_eval, 1),
        "loss_curve": losses,
        "evals": evals,
        "final_eval": {"seed": args.eval_seed, **final},
        "weights_bytes": (out / WEIGHTS_FILE).stat().st_size,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("wrote %s (%d bytes)", out / WEIGHTS_FILE, record["weights_bytes"])
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="audit/assets/tiny-synth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=987654)
    p.add_argument("--steps", type=int, default=3200)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--n-train", type=int, default=40000)
    p.add_argument("--extra-rate", type=float, default=0.2)
    p.add_argument("--flag-share", type=float, default=0.5)
    p.add_argument("--work-rate", type=float, default=0.04)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest when the 2 cores are shared with other jobs)",
    )
    p.add_argument("--freeze-token-embedding", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps (needs --cache)")
    p.add_argument("--cache", default="", help="optional folder keeping drawn chunks (resumable)")
    p.add_argument("--init", default="", help="start from these weights (a .safetensors file)")
    p.add_argument(
        "--freeze-text",
        action="store_true",
        help="train the image tower only (keeps tiny-sd's text encoder valid)",
    )
    p.add_argument(
        "--instance-weight",
        type=float,
        default=0.0,
        help="weight of the instance-contrastive term between two near-duplicate views",
    )
    p.add_argument("--instance-temp", type=float, default=0.1)
    p.add_argument(
        "--concept-negatives",
        type=int,
        default=0,
        help="per caption, this many NegCLIP-style hard negatives (its concept word swapped "
        "for another concept) in the image-to-text loss",
    )
    p.add_argument(
        "--mask-works",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="copies of one famous work are not negatives of each other in the instance term",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
