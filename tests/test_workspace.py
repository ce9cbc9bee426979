from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from audit.workspace import (
    InvariantError,
    Workspace,
    check_invariant,
    embedding_schema,
    write_table_atomic,
)


def _part(keys: list[str], dim: int = 4) -> pa.Table:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(keys), dim)).astype(np.float16)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float16()), dim)
    n = len(keys)
    return pa.Table.from_pydict(
        {
            "key": keys,
            "url": [f"http://x/{k}" for k in keys],
            "caption": ["c"] * n,
            "sha256": [None] * n,
            "width": [64] * n,
            "height": [64] * n,
            "status": ["ok"] * n,
            "error": [None] * n,
            "image_emb": vec,
            "text_emb": vec,
            "clip_score": [0.3] * n,
        },
        schema=embedding_schema(dim),
    )


def test_parts_markers_and_dataset(tmp_path) -> None:
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(FileNotFoundError, match="run `laion-audit embed"):
        ws.embeddings()
    ws.write_part(ws.part_path(0), _part(["000000000", "000000001"]))
    ws.write_part(ws.part_path(1), _part(["000000002"]))
    # a part without its marker (crashed run) is not read
    write_table_atomic(ws.part_path(2), _part(["000000003"]))
    assert ws.is_done(ws.part_path(0)) and not ws.is_done(ws.part_path(2))
    table = ws.load_embeddings()
    assert table.column("key").to_pylist() == ["000000000", "000000001", "000000002"]
    assert table.schema.field("image_emb").type == pa.list_(pa.float16(), 4)
    assert not list((tmp_path / "ws" / "embeddings").glob("*.tmp"))


def test_findings_roundtrip(tmp_path) -> None:
    ws = Workspace(tmp_path)
    t = pa.table({"key": ["a", "b"], "score": [0.1, float("nan")]})
    ws.write_finding("poisons", t, {"detector": "x_v1", "value": float("inf")})
    assert ws.read_finding("poisons").num_rows == 2
    meta = ws.finding_meta("poisons")
    assert meta["detector"] == "x_v1" and meta["rows"] == 2 and meta["value"] is None
    with pytest.raises(FileNotFoundError, match="no finding 'dedup'"):
        ws.read_finding("dedup")


def test_invariant() -> None:
    assert check_invariant(["a", "b"], ["b", "a"]) == {"input": 2, "output": 2}
    with pytest.raises(InvariantError, match="1 input keys missing"):
        check_invariant(["a", "b"], ["a"], "embed")
    with pytest.raises(InvariantError, match="written more than once"):
        check_invariant(["a", "b"], ["a", "b", "b"], "embed")
    with pytest.raises(InvariantError, match="not in the input"):
        check_invariant(["a"], ["a", "z"], "embed")


def test_atomic_write_survives_sigkill(tmp_path) -> None:
    """A writer killed mid-write leaves the previous complete file, never a partial one."""
    target = tmp_path / "t.parquet"
    write_table_atomic(target, pa.table({"x": [1, 2, 3]}))
    code = (
        "import time, pyarrow as pa, pyarrow.parquet as pq\n"
        "from audit.workspace import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    pq.write_table(pa.table({'x': list(range(100))}), tmp)\n"
        "    print('written', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    import pyarrow.parquet as pq

    assert pq.read_table(target).column("x").to_pylist() == [1, 2, 3]


def test_a_relative_workspace_path_resolves_layout_paths_once(tmp_path, monkeypatch) -> None:
    """``laion-audit embed CAL`` from the parent folder once wrote model.json to CAL/CAL/."""
    monkeypatch.chdir(tmp_path)
    ws = Workspace("CAL")
    assert ws.root == tmp_path / "CAL"
    ws.write_json(ws.embeddings_dir / "model.json", {"name": "m"})
    assert (tmp_path / "CAL" / "embeddings" / "model.json").is_file()
    assert ws.read_json(ws.embeddings_dir / "model.json") == {"name": "m"}
    assert not (tmp_path / "CAL" / "CAL").exists()


def test_model_reads_the_older_spellings_of_model_json(tmp_path) -> None:
    ws = Workspace(tmp_path)
    ws.write_json(
        ws.embeddings_dir / "model.json",
        {"model": "ViT-B-32", "pretrained": "openai", "embed_dim": 512, "image_size": 224},
    )
    info = ws.model()
    assert (info.name, info.pretrained, info.dim, info.get("image_size")) == (
        "ViT-B-32",
        "openai",
        512,
        224,
    )
    out = info.to_dict()
    assert (out["name"], out["dim"]) == ("ViT-B-32", 512)
    assert "model" not in out and "embed_dim" not in out
