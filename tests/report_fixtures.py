"""A small synthetic audit workspace for the report, filter and notebook tests: real webdataset
shards (drawn testbed images), an embeddings part with failed rows, every findings table with
the TEAM.md columns, generations with per-seed scores, and run.json. Deterministic per seed.

Not collected by pytest (no ``test_`` prefix); imported by the test modules.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from audit.testbed.draw import draw_image, draw_work, random_spec
from audit.workspace import Workspace, embedding_schema
from detectors.stats import wilson_interval

ALL_FINDINGS = (
    "duplicates",
    "concepts",
    "word_replication",
    "object_replication",
    "poisons",
    "memorization",
)
DIM = 8


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_workspace(
    root: str | Path,
    n: int = 60,
    seed: int = 0,
    findings: tuple[str, ...] = ALL_FINDINGS,
    shards: bool = True,
    generations: bool = True,
) -> Workspace:
    """Build the workspace; returns it. Layout of the planted content (n >= 40):

    keys 0..n-1 ("000000000" ...); keys 1, 2 fail to download, key 3 is a hash mismatch;
    exact group {10, 11, 12} (rep 10), near group {13, 14} (rep 13), caption group {10, 15}
    (rep 15); keyword "van gogh" cluster 0 = keys 20..27 (work "starry_night", flagged),
    cluster 1 = 28..30; object finding "astronaut"/"flag" with examples 31..33;
    poisons: 34 (dirty, flagged), 35 (clean, flagged), 36 (not flagged); plus every other
    key scored and not flagged.
    """
    assert n >= 40, "the planted layout needs n >= 40"
    rng = np.random.default_rng(seed)
    ws = Workspace(root)
    ws.root.mkdir(parents=True, exist_ok=True)
    keys = [f"{i:09d}" for i in range(n)]
    status = ["ok"] * n
    error: list[str | None] = [None] * n
    status[1] = status[2] = "failed_to_download"
    error[1] = error[2] = "HTTP Error 404: Not Found"
    status[3], error[3] = "hash_mismatch", "sha256 differs from the url list"
    captions = []
    images = {}
    for i, k in enumerate(keys):
        if 20 <= i < 28:
            img = draw_work("starry_night", size=64)
            cap = f"starry night by vincent van gogh print {i}"
        elif i in (11, 12):
            img = images[keys[10]]
            cap = f"exact copy {i}"
        elif i == 14:
            img = images[keys[13]].rotate(3)
            cap = "near copy"
        else:
            spec = random_spec(rng)
            extra = "flag" if 31 <= i <= 33 else None
            if 31 <= i <= 33:
                spec["concept"] = "astronaut"
            img = draw_image(spec, size=64, extra_object=extra, rng=rng)
            cap = f"a {spec['colour']} {spec['concept']} in {spec['style']} style"
        if i == 15:
            cap = captions[10]
        images[k] = img
        captions.append(cap)
    emb = rng.normal(size=(n, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ok_emb = [s != "failed_to_download" for s in status]
    vec_type = pa.list_(pa.float16(), DIM)
    vecs = pa.array(
        [e.astype(np.float16).tolist() if ok else None for e, ok in zip(emb, ok_emb)], vec_type
    )
    part = pa.Table.from_pydict(
        {
            "key": keys,
            "url": [f"http://127.0.0.1:1/{k}.jpg" for k in keys],
            "caption": captions,
            "sha256": [None] * n,
            "width": [64] * n,
            "height": [64] * n,
            "status": status,
            "error": error,
            "image_emb": vecs,
            "text_emb": vecs,
            "clip_score": pa.array([0.3 if ok else None for ok in ok_emb], pa.float32()),
        },
        schema=embedding_schema(DIM),
    )
    ws.write_part(ws.part_path(0), part)
    ws.write_json(
        ws.embeddings_dir / "model.json",
        {"model": "tiny-synth", "pretrained": "synthetic", "dim": DIM},
    )

    if shards:
        ws.shards_dir.mkdir(parents=True, exist_ok=True)
        half = n // 2
        for s, rng_keys in enumerate((keys[:half], keys[half:])):
            with tarfile.open(ws.shards_dir / f"{s:05d}.tar", "w") as tf:
                for k in rng_keys:
                    i = int(k)
                    if status[i] == "failed_to_download":
                        continue
                    for ext, data in (
                        ("jpg", _jpg(images[k])),
                        ("txt", captions[i].encode()),
                        ("json", json.dumps({"key": k}).encode()),
                    ):
                        info = tarfile.TarInfo(f"{k}.{ext}")
                        info.size = len(data)
                        tf.addfile(info, io.BytesIO(data))
            idx = [int(k) for k in rng_keys]
            st = [
                "success" if status[i] != "failed_to_download" else "failed_to_download"
                for i in idx
            ]
            ws.write_table(
                ws.shards_dir / f"{s:05d}.parquet",
                pa.table(
                    {
                        "url": [f"http://127.0.0.1:1/{keys[i]}.jpg" for i in idx],
                        "caption": [captions[i] for i in idx],
                        "key": [keys[i] for i in idx],
                        "status": st,
                        "error_message": [error[i] for i in idx],
                        "width": [64 if s_ == "success" else None for s_ in st],
                        "height": [64 if s_ == "success" else None for s_ in st],
                    }
                ),
            )
            ws.write_json(ws.shards_dir / f"{s:05d}_stats.json", {"count": len(idx)})

    if "duplicates" in findings:
        rows = []
        for gid, kind, members, rep in (
            (0, "exact", [10, 11, 12], 10),
            (1, "near", [13, 14], 13),
            (2, "caption", [10, 15], 15),
        ):
            for m in members:
                rows.append(
                    {
                        "key": keys[m],
                        "group_id": gid,
                        "group_size": len(members),
                        "kind": kind,
                        "representative_key": keys[rep],
                        "is_representative": m == rep,
                        "nearest_key": keys[rep] if m != rep else keys[members[1]],
                        "similarity": 1.0 if kind == "exact" else 0.97,
                    }
                )
        ws.write_finding(
            "duplicates",
            pa.Table.from_pylist(
                rows,
                schema=pa.schema(
                    [
                        ("key", pa.string()),
                        ("group_id", pa.int64()),
                        ("group_size", pa.int32()),
                        ("kind", pa.string()),
                        ("representative_key", pa.string()),
                        ("is_representative", pa.bool_()),
                        ("nearest_key", pa.string()),
                        ("similarity", pa.float32()),
                    ]
                ),
            ),
            {"detector": "dedup_faiss_v1", "seconds": 0.1},
        )
    if "concepts" in findings:
        names = ["dog", "cat", "astronaut", "starry night", "mushroom"]
        wc = [12, 9, 3, 8, 0]
        sc = [14, 10, 5, 8, 1]
        ws.write_finding(
            "concepts",
            pa.table(
                {
                    "concept": names,
                    "word_count": wc,
                    "word_freq": [c / n for c in wc],
                    "semantic_count": sc,
                    "semantic_freq": [c / n for c in sc],
                    "semantic_threshold": [0.8] * 5,
                    "sparse": [False, False, True, False, True],
                    "n_total": [n] * 5,
                }
            ),
            {"detector": "concepts_v1"},
        )
    if "word_replication" in findings:
        c0 = [keys[i] for i in range(20, 28)]
        c1 = [keys[i] for i in range(28, 31)]
        ws.write_finding(
            "word_replication",
            pa.Table.from_pylist(
                [
                    {
                        "finding_id": "word:van gogh:0",
                        "keyword": "van gogh",
                        "cluster_rank": 0,
                        "size": 8,
                        "share": 8 / 11,
                        "mean_sim": 0.96,
                        "min_sim": 0.9,
                        "medoid_key": c0[0],
                        "representative_keys": c0[:3],
                        "member_keys": c0,
                        "top_words": ["starry", "night"],
                        "top_word_lift": [9.5, 7.25],
                        "prompt_words": "starry night van gogh",
                        "example_captions": [captions[20], captions[21]],
                        "words_only_share": 0.9,
                        "flagged": True,
                    },
                    {
                        "finding_id": "word:van gogh:1",
                        "keyword": "van gogh",
                        "cluster_rank": 1,
                        "size": 3,
                        "share": 3 / 11,
                        "mean_sim": 0.5,
                        "min_sim": 0.3,
                        "medoid_key": c1[0],
                        "representative_keys": c1[:1],
                        "member_keys": c1,
                        "top_words": ["dog"],
                        "top_word_lift": [1.2],
                        "prompt_words": "dog van gogh",
                        "example_captions": [captions[28]],
                        "words_only_share": None,
                        "flagged": False,
                    },
                ]
            ),
            {"detector": "word_replication_v1"},
        )
    if "object_replication" in findings:
        ex = [keys[i] for i in (31, 32, 33)]
        ws.write_finding(
            "object_replication",
            pa.Table.from_pylist(
                [
                    {
                        "finding_id": "object:astronaut:flag",
                        "keyword": "astronaut",
                        "object": "flag",
                        "n_images": 30,
                        "image_rate": 0.1,
                        "ci_low": 0.035,
                        "ci_high": 0.256,
                        "caption_rate": 0.0,
                        "gap": 0.1,
                        "outside_rate": 0.01,
                        "threshold": 0.05,
                        "flagged": True,
                        "example_keys": ex,
                    },
                    {
                        "finding_id": "object:dog:moon",
                        "keyword": "dog",
                        "object": "moon",
                        "n_images": 12,
                        "image_rate": 0.0,
                        "ci_low": 0.0,
                        "ci_high": 0.24,
                        "caption_rate": 0.0,
                        "gap": 0.0,
                        "outside_rate": 0.02,
                        "threshold": 0.05,
                        "flagged": False,
                        "example_keys": [],
                    },
                ]
            ),
            {"detector": "object_replication_v1"},
        )
    if "poisons" in findings:
        ok_keys = [k for k, s in zip(keys, status) if s != "failed_to_download"]
        score = {k: float(rng.uniform(0, 1)) for k in ok_keys}
        score[keys[34]], score[keys[35]], score[keys[36]] = 5.0, 4.0, 3.0
        order = sorted(ok_keys, key=lambda k: -score[k])
        rows = []
        for r, k in enumerate(order):
            kind = {keys[34]: "dirty", keys[35]: "clean"}.get(k, "none")
            rows.append(
                {
                    "key": k,
                    "concept": "dog",
                    "alignment_gmm_v1": score[k] / 2,
                    "knn_distance_v1": score[k] / 3,
                    "combined_score": score[k],
                    "rank": r + 1,
                    "flagged": kind != "none",
                    "kind": kind,
                    "reasons": (
                        "caption/image mismatch"
                        if kind == "dirty"
                        else "features pulled toward 'cat'"
                        if kind == "clean"
                        else ""
                    ),
                }
            )
        ws.write_finding("poisons", pa.Table.from_pylist(rows), {"detector": "poisons_v1"})
    if "memorization" in findings:
        prompts = [
            ("word:van gogh:0", "keywords_only", "starry night van gogh", 0.75),
            ("word:van gogh:0", "unrelated", "a red dog, van gogh", 0.0),
            ("object:astronaut:flag", "keyword", "an astronaut", 0.125),
        ]
        mem_rows, gen_rows = [], []
        n_gen = 8
        for fid, kind, prompt, rate in prompts:
            sims = []
            for s in range(n_gen):
                sim = 0.95 - 0.01 * s if s < rate * n_gen else 0.3 + 0.02 * s
                is_copy = s < rate * n_gen
                sims.append(sim)
                rel = f"{fid.replace(':', '_').replace(' ', '_')}/{kind}/{s:04d}.png"
                if generations:
                    p = ws.generations_dir / rel
                    p.parent.mkdir(parents=True, exist_ok=True)
                    img = (
                        draw_work("starry_night", size=64)
                        if is_copy
                        else draw_image(random_spec(rng), size=64, rng=rng)
                    )
                    img.save(p)
                gen_rows.append(
                    {
                        "finding_id": fid,
                        "prompt_kind": kind,
                        "prompt": prompt,
                        "seed": s,
                        "path": rel,
                        "similarity": sim,
                        "nearest_key": keys[20 + s % 8],
                        "is_copy": is_copy,
                    }
                )
            k = int(round(rate * n_gen))
            lo, hi = wilson_interval(k, n_gen)
            mem_rows.append(
                {
                    "finding_id": fid,
                    "prompt_kind": kind,
                    "prompt": prompt,
                    "n": n_gen,
                    "replication_rate": k / n_gen,
                    "ci_low": lo,
                    "ci_high": hi,
                    "mean_sim": float(np.mean(sims)),
                    "p95_sim": float(np.percentile(sims, 95)),
                    "max_sim": float(max(sims)),
                    "object_rate": None,
                    "triage_score": float(rate * 10),
                }
            )
        ws.write_finding(
            "memorization",
            pa.Table.from_pylist(mem_rows),
            {"detector": "reproduce_v1", "copy_threshold": 0.9, **_run_meta()},
        )
        if generations:
            ws.write_table(ws.generations_dir / "scores.parquet", pa.Table.from_pylist(gen_rows))
        add_mitigation_runs(ws)
    for stage in ("embed", "dedup", "concepts"):
        ws.record_stage(stage, {"seconds": 1.5, "config": {"x": 1}, "version": "0.1.0"})
    return ws


def _run_meta(**mitigation) -> dict:
    """A reproduce run's metadata as the stage writes it (the fields the report reads)."""
    safety = mitigation.get("safety")
    settings = {"generator": "tiny-sd", "steps": 20, "guidance": 7.5, "height": 64, "width": 64,
                "negative_prompt": None}  # fmt: skip
    if safety:
        settings.update(safety=safety, safety_concept=mitigation.get("safety_concept"))
    m = {"label": None, "generator": "tiny-sd", "erase": None, "attack": None, "safety": None,
         "safety_concept": None, "negative_prompt": None, "prompts_file": None,
         "prompts_from": None, **mitigation}  # fmt: skip
    m["generator"] = (m.get("erase") or {}).get("path") or m["generator"]
    settings["generator"] = m["generator"]
    return {"generator": m["generator"], "settings": settings, "n": 8, "seed_offset": 0,
            "copy_threshold": 0.9, "triage": {"min_copy_share": 0.02}, "mitigation": m}  # fmt: skip


def _mem_row(fid: str, kind: str, prompt: str, k: int, n: int = 8, **extra) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"finding_id": fid, "prompt_kind": kind, "prompt": prompt, "n": n, "n_copies": k,
            "replication_rate": k / n, "ci_low": lo, "ci_high": hi, "generated": True,
            "keyword": None, "prompt_id": None, "zero_shot_n": 0, "zero_shot_correct": 0,
            **extra}  # fmt: skip


def _control(concept: str, correct: int, n: int = 8) -> dict:
    return _mem_row("user", "control", f"a photo of a {concept}", 0, n, keyword=concept,
                    zero_shot_n=n, zero_shot_correct=correct)  # fmt: skip


ERASE_CARD = {"method": "esd-x", "concept": "starry night by van gogh", "generator": "tiny-sd",
              "steps": 25, "lr": 0.001, "eta": 1.0, "seed": 0, "path": "/models/erased-starry"}  # fmt: skip
ADV_PROMPT = "glow ferry omen starry night van gogh"


def add_mitigation_runs(ws: Workspace) -> None:
    """Recorded reproduce runs beside the main run (``audit.mitigations.runs``): the original
    with control prompts (10 of 16 control generations classified right), ESD-x erasing starry
    night (0/8 on the main prompts, controls 9/16), the erased model under UnlearnDiffAtk (2/8),
    SLD max (1/8 and 0/8)."""
    from audit.mitigations.runs import RunWorkspace
    from audit.prompts import prompt_id

    fid = "word:van gogh:0"

    def write(label: str, rows: list[dict], meta: dict) -> None:
        meta["mitigation"]["label"] = label
        RunWorkspace(ws.root, label).write_finding(
            "memorization", pa.Table.from_pylist(rows), {"detector": "reproduce_v1", **meta}
        )

    write("original", [_control("dog", 6), _control("cat", 4)], _run_meta())
    write(
        "erased-starry",
        [_mem_row(fid, "keywords_only", "starry night van gogh", 0),
         _mem_row(fid, "unrelated", "a red dog, van gogh", 0), _control("dog", 5),
         _control("cat", 4)],
        _run_meta(erase=ERASE_CARD),
    )  # fmt: skip
    kind = "keywords_only+unlearndiffatk"
    pid = prompt_id(fid, kind, ADV_PROMPT)
    attack = {"file": "/work/adv.jsonl", "n": 1, "asr_before": 0.0, "ci_before": [0.0, 0.79],
              "asr_after": 1.0, "ci_after": [0.21, 1.0], "successes_before": 0,
              "successes_after": 1, "settings": {"tokens": 3, "relax": "simplex",
              "iterations": 40, "timesteps": 5, "threshold": 0.5},
              "prompts": [{"prompt_id": pid, "finding_id": fid, "prompt_kind": kind,
                           "original_prompt": "starry night van gogh", "seed": 0,
                           "success": True, "success_before": False, "steps": 80}]}  # fmt: skip
    write(  # its control prompt was measured by "erased-starry" too: counted once
        "erased-starry+adv",
        [_mem_row(fid, kind, ADV_PROMPT, 2, prompt_id=pid), _control("dog", 7)],
        _run_meta(erase=ERASE_CARD, attack=attack),
    )
    write(
        "tiny-sd+sld-max",
        [_mem_row(fid, "keywords_only", "starry night van gogh", 1),
         _mem_row(fid, "unrelated", "a red dog, van gogh", 0)],
        _run_meta(safety="sld:max", safety_concept="starry night, a painting by van gogh"),
    )  # fmt: skip


DEMO_N = 300
DEMO_GENERATIONS = 8
DEMO_STEPS = 2


def demo_stages_missing() -> list[str]:
    """Stages of the demo that are not implemented yet (their module does not exist)."""
    from audit.cli import load_stage
    from audit.runner import DEMO_STAGES

    return [s for s in DEMO_STAGES if load_stage(s) is None]


def demo_workspace(tmp_path_factory) -> Path:
    """A small demo workspace (``laion-audit demo --n 300``), built once per test session and
    shared by the demo and notebook tests; skips while a demo stage is not implemented."""
    import pytest

    from audit.cli import main

    missing = demo_stages_missing()
    if missing:
        pytest.skip(f"the demo needs stages that are not implemented yet: {missing}")
    root = tmp_path_factory.getbasetemp() / "demo-workspace"
    if not (root / "demo.json").is_file():
        code = main(
            [
                "demo",
                "--out",
                str(root),
                "--n",
                str(DEMO_N),
                "--generations",
                str(DEMO_GENERATIONS),
                "--steps",
                str(DEMO_STEPS),
                "-q",
            ]
        )
        assert code == 0, f"laion-audit demo failed with exit code {code}"
    return root


def model_workspace(root: str | Path, n: int = 120, seed: int = 123, copy_size: int = 128) -> Path:
    """A workspace a real model can be audited in: the tiny-sd training distribution (famous
    works as near-copies, ``work_share`` 0.08 each, the rest distinct drawings) embedded with
    the shipped tiny-synth and SSCD copy descriptors at ``copy_size``, img2dataset-like shards,
    and one flagged word-replication finding per work (``word:van gogh:<rank>``, rank in
    ``audit.testbed.draw.WORKS`` order) whose members are that work's copies."""
    from audit.models import encode_images, encode_texts, load_clip, load_copy_detector
    from audit.testbed.draw import WORKS
    from audit.training.train_tiny_sd import make_dataset
    from pipelines.embed import rows_to_table

    items = [
        {"image": it["image"], "caption": it["captions"][0], "work_id": it["work_id"]}
        for it in make_dataset(n, seed, 0.08)
    ]
    ws = Workspace(root)
    model, preprocess, tok = load_clip("tiny-synth")
    keys = [f"{i:09d}" for i in range(len(items))]
    img = encode_images(model, preprocess, [it["image"] for it in items])
    txt = encode_texts(model, tok, [it["caption"] for it in items])
    det = load_copy_detector("sscd", copy_size)
    copy = det.embed([it["image"] for it in items])
    rows = [
        {"key": k, "url": f"http://127.0.0.1/{k}.png", "caption": it["caption"], "sha256": None,
         "width": 64, "height": 64, "status": "ok", "error": None, "image_emb": img[i],
         "text_emb": txt[i], "clip_score": float(img[i] @ txt[i]), "copy_emb": copy[i]}
        for i, (k, it) in enumerate(zip(keys, items))
    ]  # fmt: skip
    ws.write_part(ws.part_path(0), rows_to_table(rows, embedding_schema(img.shape[1], det.dim)))
    ws.write_json(
        ws.embeddings_dir / "model.json",
        {"name": "tiny-synth", "pretrained": None, "dim": int(img.shape[1]),
         "copy_model": det.info()},
    )  # fmt: skip
    ws.shards_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(ws.shards_dir / "00000.tar", "w") as tar:
        for k, it in zip(keys, items):
            for name, data in ((f"{k}.png", _png(it["image"])), (f"{k}.txt", it["caption"].encode())):  # fmt: skip
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    findings = []
    for rank, (wid, w) in enumerate(WORKS.items()):
        idx = [i for i, it in enumerate(items) if it["work_id"] == wid]
        findings.append(
            {"finding_id": f"word:van gogh:{rank}", "keyword": "van gogh", "cluster_rank": rank,
             "size": len(idx), "share": len(idx) / len(items), "mean_sim": 0.9, "min_sim": 0.8,
             "medoid_key": keys[idx[0]], "representative_keys": [keys[i] for i in idx[:3]],
             "member_keys": [keys[i] for i in idx], "top_words": list(w["words"]),
             "top_word_lift": [1.0] * len(w["words"]), "prompt_words": w["phrase"],
             "example_captions": [items[i]["caption"] for i in idx[:10]],
             "words_only_share": None, "flagged": True}
        )  # fmt: skip
    ws.write_finding("word_replication", pa.Table.from_pylist(findings), {"detector": "test"})
    return Path(root)
