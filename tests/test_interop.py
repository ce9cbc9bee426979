"""clip-retrieval layout: export then import is lossless; genuine clip-retrieval output (no
keys, no text embeddings, float32) imports with no images at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audit.cli import main as cli_main
from audit.workspace import Workspace, embedding_schema

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)


def make_part(rng: np.random.Generator, prefix: str) -> pa.Table:
    """Every kind of row: ok, missing_caption (no text vector), embedded hash_mismatch, and
    failed rows with no vectors."""
    statuses = [
        "ok",
        "ok",
        "missing_caption",
        "hash_mismatch",
        "failed_to_download",
        "failed_to_decode",
        "ok",
    ]
    n = len(statuses)
    img, txt = unit(rng, n), unit(rng, n)
    has_img = [s in ("ok", "missing_caption", "hash_mismatch") for s in statuses]
    has_txt = [s in ("ok", "hash_mismatch") for s in statuses]
    rows = []
    for i, s in enumerate(statuses):
        rows.append(
            {
                "key": f"{prefix}{i:04d}",
                "url": f"http://h/{prefix}{i}.jpg",
                "caption": None if s == "missing_caption" else f"caption {i} é ✓",
                "sha256": f"{i:064x}" if has_img[i] else None,
                "width": 64 + i if has_img[i] else None,
                "height": 48 if has_img[i] else None,
                "status": s,
                "error": None if s == "ok" else f"why {s}",
                "image_emb": img[i].tolist() if has_img[i] else None,
                "text_emb": txt[i].tolist() if has_txt[i] else None,
                "clip_score": float(img[i].astype(np.float32) @ txt[i].astype(np.float32))
                if has_img[i] and has_txt[i]
                else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=embedding_schema(DIM))


def make_workspace(root: Path, indices: tuple[int, ...] = (0, 12)) -> Workspace:
    ws = Workspace(root)
    rng = np.random.default_rng(0)
    for i in indices:
        ws.write_part(ws.part_path(i), make_part(rng, f"{i:05d}"))
    ws.write_json(
        ws.embeddings_dir / "model.json",
        {"name": "tiny-synth", "pretrained": "x.safetensors", "dim": DIM},
    )
    return ws


def test_export_import_round_trip_is_lossless(tmp_path: Path) -> None:
    src = make_workspace(tmp_path / "ws")
    out = tmp_path / "export"
    assert cli_main(["export-embeddings", str(src.root), "--out", str(out), "-q"]) == 0
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == [
        "img_emb_00.npy",
        "img_emb_12.npy",
    ]
    img = np.load(out / "img_emb" / "img_emb_00.npy")
    txt = np.load(out / "text_emb" / "text_emb_00.npy")
    meta = pq.read_table(out / "metadata" / "metadata_00.parquet")
    assert img.dtype == np.float16 and img.shape == (5, DIM) and txt.shape == (5, DIM)
    assert {"image_path", "caption", "url", "key"} <= set(meta.column_names)
    assert meta.column("key").to_pylist() == meta.column("image_path").to_pylist()
    assert not txt[2].any()  # the missing caption's text row is zero, flagged in metadata
    assert meta.column("has_text_emb").to_pylist() == [True, True, False, True, True]
    assert pq.read_table(out / "failed" / "failed_00.parquet").num_rows == 2
    assert json.loads((out / "model.json").read_text())["name"] == "tiny-synth"

    dst = Workspace(tmp_path / "ws2")
    assert cli_main(["import-embeddings", str(out), "--out", str(dst.root), "-q"]) == 0
    assert [p.name for p in dst.embedding_parts()] == [p.name for p in src.embedding_parts()]
    a, b = src.load_embeddings(), dst.load_embeddings()
    assert a.equals(b), "round trip changed the embedding table"
    info = dst.model_info()
    assert info["name"] == "tiny-synth" and info["dim"] == DIM and info["normalized"] is True
    stats = json.loads((dst.embeddings_dir / "_stats.json").read_text())
    assert stats["rows"] == a.num_rows and stats["usable"] + stats["failed"] == a.num_rows
    # and again: exporting the imported workspace gives the same files
    out2 = tmp_path / "export2"
    assert cli_main(["export-embeddings", str(dst.root), "--out", str(out2), "-q"]) == 0
    for sub in ("img_emb", "text_emb"):
        for f in (out / sub).iterdir():
            assert np.array_equal(np.load(f), np.load(out2 / sub / f.name))
    for f in (out / "metadata").iterdir():
        assert pq.read_table(f).equals(pq.read_table(out2 / "metadata" / f.name))


def test_model_json_in_older_spellings_is_read_and_rewritten(tmp_path: Path) -> None:
    """Workspaces and exports whose model.json says ``model`` and ``embed_dim`` (older
    versions) export and import with ``name`` and ``dim``."""
    src = make_workspace(tmp_path / "ws")
    old = {"model": "tiny-synth", "pretrained": "x.safetensors", "embed_dim": DIM}
    src.write_json(src.embeddings_dir / "model.json", old)
    out = tmp_path / "export"
    assert cli_main(["export-embeddings", str(src.root), "--out", str(out), "-q"]) == 0
    exported = json.loads((out / "model.json").read_text())
    assert (exported["name"], exported["pretrained"], exported["dim"]) == (
        "tiny-synth",
        "x.safetensors",
        DIM,
    )
    assert "model" not in exported and "embed_dim" not in exported
    (out / "model.json").write_text(json.dumps(old))  # an export made by an older version
    dst = Workspace(tmp_path / "ws2")
    assert cli_main(["import-embeddings", str(out), "--out", str(dst.root), "-q"]) == 0
    info = json.loads((dst.embeddings_dir / "model.json").read_text())
    assert (info["name"], info["pretrained"], info["dim"]) == ("tiny-synth", "x.safetensors", DIM)
    assert "model" not in info and "embed_dim" not in info


def write_clip_retrieval(folder: Path) -> None:
    """What clip-retrieval's ``clip inference`` writes (two partitions, one without text)."""
    rng = np.random.default_rng(1)
    for sub in ("img_emb", "text_emb", "metadata"):
        (folder / sub).mkdir(parents=True)
    v = unit(rng, 3).astype(np.float32)  # float32 on purpose
    np.save(folder / "img_emb" / "img_emb_0.npy", v)
    pd_meta = pa.table(
        {
            "image_path": ["/data/a.jpg", "/data/b.jpg", "/data/c.jpg"],
            "caption": ["a", "b", "c"],
            "url": ["u1", "u2", "u3"],
            "status": ["success"] * 3,
            "error_message": [None] * 3,
            "width": [10, 20, 30],
            "NSFW": ["UNLIKELY"] * 3,
        }
    )
    pq.write_table(pd_meta, folder / "metadata" / "metadata_0.parquet")
    w, t = unit(rng, 2), unit(rng, 2)
    np.save(folder / "img_emb" / "img_emb_1.npy", w)
    np.save(folder / "text_emb" / "text_emb_1.npy", t)
    pq.write_table(
        pa.table(
            {"image_path": ["k1", "k2"], "caption": ["x", "y"], "key": ["000010000", "000010001"]}
        ),
        folder / "metadata" / "metadata_1.parquet",
    )


def test_import_clip_retrieval_output_without_images(tmp_path: Path) -> None:
    src = tmp_path / "cr"
    write_clip_retrieval(src)
    ws = Workspace(tmp_path / "ws")
    assert (
        cli_main(
            [
                "import-embeddings",
                str(src),
                "--out",
                str(ws.root),
                "--model",
                "ViT-L-14",
                "--pretrained",
                "openai",
                "-q",
            ]
        )
        == 0
    )
    t = ws.load_embeddings()
    assert t.column("key").to_pylist() == [
        "/data/a.jpg",
        "/data/b.jpg",
        "/data/c.jpg",
        "000010000",
        "000010001",
    ]
    assert t.column("status").to_pylist() == ["ok"] * 5
    assert t.column("text_emb").null_count == 3 and t.column("clip_score").null_count == 3
    assert t.column("width").to_pylist()[:3] == [10, 20, 30]
    img = np.asarray(t.column("image_emb").to_pylist()[3], np.float32)
    txt = np.asarray(t.column("text_emb").to_pylist()[3], np.float32)
    assert t.column("clip_score").to_pylist()[3] == pytest.approx(float(img @ txt), abs=1e-3)
    assert ws.load_embeddings(only_ok=True).num_rows == 5
    info = ws.model_info()
    assert info["name"] == "ViT-L-14" and info["pretrained"] == "openai"
    assert info["dim"] == DIM and info["converted_from_float32"] is True


def test_bad_layouts_and_existing_outputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "cr"
    write_clip_retrieval(src)
    ws = tmp_path / "ws"
    assert cli_main(["import-embeddings", str(tmp_path), "--out", str(ws), "-q"]) == 3
    assert "no img_emb/ folder" in capsys.readouterr().err
    pq.write_table(pa.table({"caption": ["only one row"]}), src / "metadata" / "metadata_0.parquet")
    assert cli_main(["import-embeddings", str(src), "--out", str(ws), "-q"]) == 3
    assert "metadata_0.parquet: 1 rows but" in capsys.readouterr().err
    make_workspace(ws)
    write_clip_retrieval(tmp_path / "cr2")
    assert cli_main(["import-embeddings", str(tmp_path / "cr2"), "--out", str(ws), "-q"]) == 2
    out = tmp_path / "export"
    assert cli_main(["export-embeddings", str(ws), "--out", str(out), "-q"]) == 0
    assert cli_main(["export-embeddings", str(ws), "--out", str(out), "-q"]) == 2
    assert cli_main(["export-embeddings", str(ws), "--out", str(out), "-q", "--overwrite"]) == 0
    assert cli_main(["export-embeddings", str(tmp_path / "none"), "--out", str(out), "-q"]) == 3
