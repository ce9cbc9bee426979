"""The embedding pipeline: readers, composite transforms (TestPipeline), the bad-input corpus,
rows in = ok + failed, resume after SIGKILL, other sources and runners."""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from audit.cli import main as cli_main
from audit.workspace import Workspace, embedding_schema
from pipelines.embed import (
    ClipModelHandler,
    DecodeSamples,
    EmbedSettings,
    EmbedShards,
    ReadSamples,
)
from pipelines.readers import ShardSpec, iter_tar_samples, match_shards, read_shard

REPO = Path(__file__).resolve().parents[1]


# ---- model --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TinyModel:
    name: str = "tiny-synth"
    pretrained: str | None = None

    def args(self) -> list[str]:
        return ["--model", self.name] + (
            ["--pretrained", self.pretrained] if self.pretrained else []
        )

    def loader(self):
        """Picklable: worker processes rebuild it by importing ``audit.models``."""
        from audit.models import load_clip

        return functools.partial(load_clip, self.name, self.pretrained, "cpu")


@pytest.fixture(scope="module")
def model() -> TinyModel:
    """The shipped tiny CLIP (``load_clip("tiny-synth")``)."""
    return TinyModel()


# ---- data builders ------------------------------------------------------------------------------
def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(seed: int, size: tuple[int, int] = (40, 48), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def jpeg(seed: int) -> bytes:
    return encode(noise(seed), "JPEG", quality=90)


def bomb_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def add_member(tf: tarfile.TarFile, name: str, data: bytes = b"", link: str | None = None) -> None:
    ti = tarfile.TarInfo(name)
    ti.mtime = 1_700_000_000
    if link is not None:
        ti.type = tarfile.SYMTYPE
        ti.linkname = link
        tf.addfile(ti)
        return
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def manifest_row(
    key: str, status: str = "success", error: str | None = None, caption: str | None = "a caption"
) -> dict:
    return {
        "key": key,
        "url": f"http://127.0.0.1/{key}.jpg",
        "caption": caption,
        "status": status,
        "error_message": error,
        "sha256": None,
        "width": None,
        "height": None,
    }


def write_simple_shard(
    folder: Path, index: int, n: int, seed: int = 0, failed: int = 0
) -> list[str]:
    """An img2dataset-like shard: n good samples (+ ``failed`` 404 rows); returns its keys."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, keys = [], []
    with tarfile.open(folder / f"{index:05d}.tar", "w") as tf:
        for i in range(n):
            key = f"{index:05d}{i:04d}"
            keys.append(key)
            cap = f"a photo number {i} of shard {index}"
            add_member(tf, f"{key}.jpg", jpeg(seed + 1000 * index + i))
            add_member(tf, f"{key}.txt", cap.encode())
            rows.append(manifest_row(key, caption=cap))
    for j in range(failed):
        key = f"{index:05d}{n + j:04d}"
        keys.append(key)
        rows.append(manifest_row(key, "failed_to_download", "HTTP Error 404: Not Found"))
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{index:05d}.parquet")
    return keys


def write_bad_corpus(shards: Path) -> dict[str, tuple[str, str | None]]:
    """Shard 0: one sample per kind of bad input; shard 1: a truncated tar.

    Returns ``{key: (expected status, expected error fragment)}`` for every input row.
    """
    shards.mkdir(parents=True, exist_ok=True)
    expect: dict[str, tuple[str, str | None]] = {}
    rows = []
    exif = Image.Exif()
    exif[0x0112] = 6
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    pal.putpixel((3, 3), 1)
    gif = io.BytesIO()
    noise(7).save(gif, "GIF", save_all=True, append_images=[noise(8)], duration=40)
    trunc = jpeg(9)
    good = {  # key suffix -> (image bytes, ext)
        0: (jpeg(1), "jpg"),
        1: (encode(noise(2, mode="CMYK"), "JPEG"), "jpg"),
        2: (encode(Image.fromarray(np.full((30, 30), 40_000, np.uint16)), "PNG"), "png"),
        3: (encode(pal, "PNG", transparency=0), "png"),
        4: (gif.getvalue(), "gif"),
        5: (encode(noise(5, (40, 20)), "JPEG", exif=exif.tobytes()), "jpg"),
        6: (encode(noise(6, mode="LA"), "PNG"), "png"),
    }
    bad = {
        7: (trunc[: len(trunc) // 2], "truncated"),
        8: (b"", "empty image file"),
        9: (b"<!DOCTYPE html><html>gone</html>", "HTML page"),
        10: (bomb_png(), "decompression bomb"),
    }
    with tarfile.open(shards / "00000.tar", "w") as tf:
        for i, (data, ext) in good.items():
            key = f"{i:09d}"
            add_member(tf, f"{key}.{ext}", data)
            add_member(tf, f"{key}.txt", f"good sample {i}".encode())
            rows.append(manifest_row(key, caption=f"good sample {i}"))
            expect[key] = ("ok", None)
        for i, (data, why) in bad.items():
            key = f"{i:09d}"
            add_member(tf, f"{key}.jpg", data)
            add_member(tf, f"{key}.txt", b"a broken file")
            rows.append(manifest_row(key))
            expect[key] = ("failed_to_decode", why)
        add_member(tf, "000000011.jpg", jpeg(11))
        add_member(tf, "000000011.txt", b"caf\xe9 cr\xe8me")  # latin-1, not UTF-8
        rows.append(manifest_row("000000011", caption=None))
        expect["000000011"] = ("missing_caption", "not valid UTF-8")
        add_member(tf, "000000012.jpg", jpeg(12))  # no caption at all
        rows.append(manifest_row("000000012", caption=None))
        expect["000000012"] = ("missing_caption", "missing caption")
        add_member(tf, "/abs/000000016.jpg", jpeg(16))
        expect["/abs/000000016"] = ("failed_to_decode", "absolute path")
        add_member(tf, "../000000017.jpg", jpeg(17))
        expect["../000000017"] = ("failed_to_decode", "'..'")
        add_member(tf, "000000018.jpg", link="/etc/passwd")
        rows.append(manifest_row("000000018"))
        expect["000000018"] = ("failed_to_decode", "link member")
        add_member(tf, "000000000.png", jpeg(99))  # key 0 again, not consecutive
        expect["000000000#1"] = ("failed_to_decode", "appears again")
    rows += [
        manifest_row("000000013", "failed_to_download", "hash mismatch"),
        manifest_row("000000014", "failed_to_download", "HTTP Error 404: Not Found"),
        manifest_row("000000015", "failed_to_resize", "image decoding error"),
        manifest_row("000000019"),  # listed as downloaded, absent from the tar
    ]
    expect["000000013"] = ("hash_mismatch", "hash mismatch")
    expect["000000014"] = ("failed_to_download", "404")
    expect["000000015"] = ("failed_to_decode", "image decoding error")
    expect["000000019"] = ("failed_to_decode", "missing from tar")
    pq.write_table(pa.Table.from_pylist(rows), shards / "00000.parquet")

    # shard 1: six samples, the file cut in the middle of the fourth image
    keys = write_simple_shard(shards, 1, 6, seed=50)
    tar = shards / "00001.tar"
    data = tar.read_bytes()
    with tarfile.open(tar) as tf:
        m = tf.getmember(f"{keys[3]}.jpg")
    tar.write_bytes(data[: m.offset_data + m.size // 2])
    for i, key in enumerate(keys):
        expect[key] = (
            ("ok", None)
            if i < 3
            else ("failed_to_decode", "truncated" if i == 3 else "missing from tar")
        )
    return expect


def embed_cli(ws: Path, model: TinyModel, *extra: str) -> int:
    return cli_main(["embed", "-q", str(ws), *model.args(), "--batch-size", "4", *extra])


# ---- readers ------------------------------------------------------------------------------------
def test_tar_member_safety_and_truncation(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        add_member(tf, "a.jpg", b"1")
        add_member(tf, "a.txt", b"cap")
        add_member(tf, "/etc/b.jpg", b"2")
        add_member(tf, "x/../../c.jpg", b"3")
        add_member(tf, "d.jpg", link="../../secret")
        add_member(tf, "e.jpg", b"5" * 5000)
    report: dict = {}
    samples = list(iter_tar_samples(io.BytesIO(buf.getvalue()), report))
    assert [s.key for s in samples] == ["a", "/etc/b", "x/../../c", "d", "e"]
    assert samples[0].fields == {"jpg": b"1", "txt": b"cap"}
    assert report["rejected_members"] == 3 and "damaged" not in report
    assert all(not s.fields and s.problems for s in samples[1:4])
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        e = tf.getmember("e.jpg")
    report = {}  # cut inside e.jpg's data
    samples = list(iter_tar_samples(io.BytesIO(buf.getvalue()[: e.offset_data + 100]), report))
    assert [s.key for s in samples] == ["a", "/etc/b", "x/../../c", "d", "e"]
    assert "damaged" in report and not samples[-1].fields
    assert "truncated" in samples[-1].problems[-1]
    report = {}  # cut exactly at a member boundary: no end-of-archive blocks
    samples = list(iter_tar_samples(io.BytesIO(buf.getvalue()[: e.offset]), report))
    assert [s.key for s in samples] == ["a", "/etc/b", "x/../../c", "d"]
    assert "end-of-archive" in report["damaged"]


def test_match_shards_layouts(tmp_path: Path) -> None:
    write_simple_shard(tmp_path / "wds", 3, 2)
    write_simple_shard(tmp_path / "wds", 7, 2)
    (tmp_path / "wds" / "00007.tar").unlink()  # manifest only: a shard that failed entirely
    specs = match_shards(str(tmp_path / "wds"))
    assert [(s.index, s.kind, Path(s.path).exists()) for s in specs] == [
        (3, "webdataset", True),
        (7, "webdataset", False),
    ]
    samples = list(read_shard(specs[1]))
    assert [s.status for s in samples] == ["failed_to_decode"] * 2
    assert "tar file missing" in samples[0].error
    with pytest.raises(FileNotFoundError):
        match_shards(str(tmp_path / "nope"))


# ---- composite transforms (TestPipeline + assert_that) -------------------------------------------
def test_read_and_decode_transforms(tmp_path: Path) -> None:
    keys = write_simple_shard(tmp_path, 0, 5, failed=2)
    spec = match_shards(str(tmp_path))[0]
    with BeamTestPipeline() as p:
        read = p | beam.Create([spec]) | ReadSamples(chunk_size=2)
        assert_that(
            read.chunks | "ChunkKeys" >> beam.Map(lambda c: [s.key for s in c]),
            equal_to([keys[0:2], keys[2:4], keys[4:5]]),
            label="chunks",
        )
        assert_that(
            read.failed | "FailedStatus" >> beam.MapTuple(lambda i, r: (i, r["key"], r["status"])),
            equal_to([(0, k, "failed_to_download") for k in keys[5:]]),
            label="failed",
        )
        assert_that(
            read.manifest | beam.MapTuple(lambda i, m: (i, sorted(m["keys"]))),
            equal_to([(0, sorted(keys))]),
            label="manifest",
        )

    chunk = [s for s in read_shard(spec) if s.status == "ok"][:3]
    chunk[1].image = b"not an image"
    with BeamTestPipeline() as p:
        dec = p | beam.Create([chunk]) | DecodeSamples()
        assert_that(
            dec.decoded | beam.Map(lambda c: [(e.sample.key, e.image.mode) for e in c]),
            equal_to([[(keys[0], "RGB"), (keys[2], "RGB")]]),
            label="decoded",
        )
        assert_that(
            dec.failed | beam.MapTuple(lambda i, r: (r["key"], r["status"])),
            equal_to([(keys[1], "failed_to_decode")]),
            label="decode_failed",
        )


def test_embed_shards_composite(tmp_path: Path, model: TinyModel) -> None:
    k0 = write_simple_shard(tmp_path / "in", 0, 5, failed=1)
    k1 = write_simple_shard(tmp_path / "in", 1, 3)
    ws = Workspace(tmp_path / "ws")
    specs = match_shards(str(tmp_path / "in"))

    def writer(index: int, table: pa.Table, info: dict) -> None:
        ws.write_part(ws.part_path(index), table, info)

    net, _, tok = model.loader()()
    dim = int(net.encode_text(tok(["x"])).shape[-1])
    handler = ClipModelHandler(model.loader(), model_name=model.name)
    with BeamTestPipeline() as p:
        stats = (
            p
            | beam.Create(specs)
            | EmbedShards(handler, writer, embedding_schema(dim), EmbedSettings(4))
        )
        assert_that(
            stats,
            equal_to(
                [
                    {"part": 0, "rows": 6, "counts": {"failed_to_download": 1, "ok": 5}},
                    {"part": 1, "rows": 3, "counts": {"ok": 3}},
                ]
            ),
        )
    table = ws.load_embeddings()
    assert table.column("key").to_pylist() == sorted(k0) + sorted(k1)
    assert table.schema.equals(embedding_schema(dim), check_metadata=False)
    ok = table.filter(pa.compute.equal(table["status"], "ok"))
    img = np.array(ok.column("image_emb").to_pylist(), np.float32)
    txt = np.array(ok.column("text_emb").to_pylist(), np.float32)
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=2e-3)
    assert np.allclose((img * txt).sum(1), ok.column("clip_score").to_numpy(), atol=5e-3)
    # same image embedded in a different batch composition -> same vector (deterministic chunks)
    single = ClipModelHandler(model.loader()).load_model()
    from pipelines.embed import embed_tensors

    first = next(s for s in read_shard(specs[0]) if s.status == "ok")
    from pipelines.decode import decode_image

    alone, _ = embed_tensors(single, [single.preprocess(decode_image(first.image).image)], None)
    assert np.allclose(alone[0], img[0], atol=2e-3)


class _BrokenModel:
    def to(self, device: str) -> _BrokenModel:
        return self

    def eval(self) -> _BrokenModel:
        return self

    def encode_image(self, x):
        raise RuntimeError("boom: out of memory")


def _broken_loader():
    import torch

    return _BrokenModel(), lambda im: torch.zeros(3, 8, 8), lambda t: torch.zeros(len(t), 4)


def test_model_failure_becomes_failed_to_embed_rows(tmp_path: Path) -> None:
    keys = write_simple_shard(tmp_path / "in", 0, 3, failed=1)
    ws = Workspace(tmp_path / "ws")

    def writer(index: int, table: pa.Table, info: dict) -> None:
        ws.write_part(ws.part_path(index), table, info)

    with BeamTestPipeline() as p:
        stats = (
            p
            | beam.Create(match_shards(str(tmp_path / "in")))
            | EmbedShards(
                ClipModelHandler(_broken_loader), writer, embedding_schema(8), EmbedSettings(2)
            )
        )
        assert_that(
            stats,
            equal_to(
                [{"part": 0, "rows": 4, "counts": {"failed_to_download": 1, "failed_to_embed": 3}}]
            ),
        )
    rows = {r["key"]: r for r in ws.load_embeddings().to_pylist()}
    assert sorted(rows) == sorted(keys)
    assert "boom: out of memory" in rows[keys[0]]["error"] and rows[keys[0]]["image_emb"] is None


# ---- the stage end to end ------------------------------------------------------------------------
def test_bad_input_corpus(tmp_path: Path, model: TinyModel) -> None:
    ws = tmp_path / "ws"
    expect = write_bad_corpus(ws / "shards")
    assert embed_cli(ws, model) == 0
    table = Workspace(ws).load_embeddings()
    rows = {r["key"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(expect)  # every input row exactly once
    for key, (status, fragment) in expect.items():
        r = rows[key]
        assert r["status"] == status, (key, r["status"], r["error"])
        if fragment:
            assert fragment in (r["error"] or ""), (key, r["error"])
        embedded = status in ("ok", "missing_caption")
        assert (r["image_emb"] is not None) == embedded, key
        assert (r["text_emb"] is not None) == (status == "ok"), key
        assert (r["clip_score"] is not None) == (status == "ok"), key
    assert rows["000000005"]["width"] == 20 and rows["000000005"]["height"] == 40  # EXIF
    assert rows["000000011"]["caption"] == "caf\\xe9 cr\\xe8me"
    stats = json.loads((ws / "embeddings" / "_stats.json").read_text())
    assert stats["rows"] == stats["input_rows"] == len(expect)
    assert stats["usable"] + stats["failed"] == stats["rows"]
    assert stats["counts"]["ok"] == sum(1 for s, _ in expect.values() if s == "ok")
    assert stats["rejected_tar_members"] == 3
    assert "part-00001" in stats["damaged_shards"]
    info = json.loads((ws / "embeddings" / "model.json").read_text())
    assert info["name"] == model.name
    assert info["dim"] == table.schema.field("image_emb").type.list_size


def test_rerun_skips_parts_and_model_change_needs_overwrite(
    tmp_path: Path, model: TinyModel
) -> None:
    ws = tmp_path / "ws"
    write_simple_shard(ws / "shards", 0, 3)
    write_simple_shard(ws / "shards", 1, 3)
    assert embed_cli(ws, model) == 0
    marker = ws / "embeddings" / "part-00000.SUCCESS"
    before = marker.read_text()
    (ws / "embeddings" / "part-00001.SUCCESS").unlink()  # as if killed before this marker
    (ws / "embeddings" / ".part-00001.parquet.abc.tmp").write_bytes(b"half")
    assert embed_cli(ws, model) == 0
    assert marker.read_text() == before  # part 0 was not rewritten
    assert (ws / "embeddings" / "part-00001.SUCCESS").exists()
    assert not list((ws / "embeddings").glob("*.tmp"))
    # another model into the same workspace is refused without --overwrite
    import open_clip
    import torch

    cfg = dict(open_clip.get_model_config(model.name))
    cfg["embed_dim"] = 64
    open_clip.factory._MODEL_CONFIGS["tiny-other"] = cfg
    torch.manual_seed(0)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model("tiny-other").state_dict(), other)
    assert embed_cli(ws, TinyModel("tiny-other", str(other))) == 2
    assert embed_cli(ws, TinyModel("tiny-other", str(other)), "--overwrite") == 0
    assert json.loads((ws / "embeddings" / "model.json").read_text())["dim"] == 64


def test_changed_weights_in_the_same_file_are_named_in_the_refusal(
    tmp_path: Path, model: TinyModel, capsys
) -> None:
    """Retrained weights written over the same file are a different model: the refusal says
    the file's sha256 changed (the two paths it prints are the same)."""
    ws = tmp_path / "ws"
    write_simple_shard(ws / "shards", 0, 3)
    assert embed_cli(ws, model) == 0
    mj = ws / "embeddings" / "model.json"
    rec = json.loads(mj.read_text())
    rec["weights_sha256"] = "0" * 64  # as recorded before the weights were retrained
    mj.write_text(json.dumps(rec))
    capsys.readouterr()
    assert embed_cli(ws, model) == 2
    err = capsys.readouterr().err
    assert "weights_sha256: the file changed since (000000000000 ->" in err, err
    assert "pass --overwrite to replace them" in err


def test_model_json_in_older_spellings_is_the_same_model(tmp_path: Path, model: TinyModel) -> None:
    """model.json says ``name`` and ``dim``; workspaces written when it said ``model`` and
    ``embed_dim`` are the same model to a rerun (nothing redone), which rewrites the record."""
    ws = tmp_path / "ws"
    write_simple_shard(ws / "shards", 0, 3)
    assert embed_cli(ws, model, "--copy-model", "none") == 0
    path = ws / "embeddings" / "model.json"
    info = json.loads(path.read_text())
    assert info["name"] == model.name and info["dim"] == 128 and "embed_dim" not in info
    old = {k: v for k, v in info.items() if k not in ("name", "dim")}
    path.write_text(json.dumps({**old, "model": info["name"], "embed_dim": info["dim"]}))
    assert Workspace(ws).model().name == model.name and Workspace(ws).model().dim == 128
    marker = (ws / "embeddings" / "part-00000.SUCCESS").read_text()
    assert embed_cli(ws, model, "--copy-model", "none") == 0
    assert (ws / "embeddings" / "part-00000.SUCCESS").read_text() == marker
    assert json.loads(path.read_text()) == info


def test_parts_uri_for_cluster_runners(tmp_path: Path, model: TinyModel) -> None:
    """Workers write parts to a shared location; the launcher copies them into WS."""
    ws, shared = tmp_path / "ws", tmp_path / "bucket" / "run1"
    write_simple_shard(ws / "shards", 0, 3, failed=1)
    write_simple_shard(ws / "shards", 1, 2)
    assert embed_cli(ws, model, "--parts-uri", str(shared)) == 0
    for name in ("part-00000.parquet", "part-00001.SUCCESS"):
        assert (shared / name).read_bytes() == (ws / "embeddings" / name).read_bytes()
    assert not list(shared.glob(".*.tmp"))
    (ws / "embeddings" / "part-00001.parquet").unlink()  # lost locally, finished remotely
    (ws / "embeddings" / "part-00001.SUCCESS").unlink()
    assert embed_cli(ws, model, "--parts-uri", str(shared)) == 0  # fetched, not recomputed
    assert (ws / "embeddings" / "part-00001.SUCCESS").read_bytes() == (
        shared / "part-00001.SUCCESS"
    ).read_bytes()
    assert Workspace(ws).load_embeddings().num_rows == 6


def test_parquet_and_folder_sources(tmp_path: Path, model: TinyModel) -> None:
    hf = [{"image": {"bytes": jpeg(i), "path": None}, "text": f"pic {i}"} for i in range(3)]
    hf.append({"image": {"bytes": b"junk", "path": None}, "text": "bad"})
    pq.write_table(pa.Table.from_pylist(hf), tmp_path / "train-0.parquet")
    ws = tmp_path / "ws1"
    assert embed_cli(ws, model, "--input", str(tmp_path / "train-0.parquet")) == 0
    t = Workspace(ws).load_embeddings()
    assert t.column("key").to_pylist() == ["000000000", "000000001", "000000002", "000000003"]
    assert t.column("status").to_pylist() == ["ok"] * 3 + ["failed_to_decode"]

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(jpeg(1))
    (folder / "a.txt").write_text("a photo of a")
    (folder / "sub" / "b.png").write_bytes(encode(noise(2), "PNG"))
    (folder / "c.webp").write_bytes(b"\x00\x01")
    ws = tmp_path / "ws2"
    assert embed_cli(ws, model, "--input", str(folder), "--folder-shard-size", "2") == 0
    t = Workspace(ws).load_embeddings()
    got = dict(zip(t.column("key").to_pylist(), t.column("status").to_pylist()))
    assert got == {"a": "ok", "c": "failed_to_decode", "sub/b": "missing_caption"}
    assert len(list((ws / "embeddings").glob("part-*.parquet"))) == 2


def test_bad_options_are_usage_errors(
    tmp_path: Path, model: TinyModel, capsys: pytest.CaptureFixture
) -> None:
    ws = tmp_path / "ws"
    write_simple_shard(ws / "shards", 0, 1)
    assert embed_cli(ws, model, "--direct_num_worker", "2") == 2
    assert "did you mean --direct_num_workers" in capsys.readouterr().err
    assert embed_cli(ws, model, "--batch-size", "0") == 2
    assert cli_main(["embed", "-q", str(tmp_path / "empty")]) == 3


def _subprocess_embed(ws: Path, model: TinyModel) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "audit",
        "embed",
        "-q",
        str(ws),
        *model.args(),
        "--batch-size",
        "4",
        "--shards-per-run",
        "1",
        "--torch-threads",  # the same as conftest's in-process setting: CPU float results
        "2",  # depend on the thread count
    ]
    return subprocess.Popen(
        cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path: Path, model: TinyModel) -> None:
    ref, ws = tmp_path / "ref", tmp_path / "ws"
    for root in (ref, ws):
        for i in range(3):
            write_simple_shard(root / "shards", i, 6, failed=1)
    proc = _subprocess_embed(ws, model)
    first = ws / "embeddings" / "part-00000.SUCCESS"
    while not first.exists() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = sorted(p.name for p in (ws / "embeddings").glob("*.SUCCESS"))
    assert 1 <= len(done_at_kill) < 3, done_at_kill  # really killed mid-run
    assert embed_cli(ws, model, "--shards-per-run", "1") == 0
    assert embed_cli(ref, model, "--shards-per-run", "1") == 0
    names = sorted(p.name for p in (ref / "embeddings").iterdir())
    assert names == sorted(p.name for p in (ws / "embeddings").iterdir())
    for part in sorted((ref / "embeddings").glob("part-*.parquet")):
        a = pq.read_table(part)
        b = pq.read_table(ws / "embeddings" / part.name)
        assert a.equals(b), part.name
    for name in ("model.json", "_stats.json"):
        assert (ref / "embeddings" / name).read_text() == (ws / "embeddings" / name).read_text()


def run_pipeline(
    root: Path, model: TinyModel, beam_args: list[str] | None = None, dask_local: int | None = None
) -> None:
    """The embed pipeline on ``root/shards`` writing ``root/embeddings`` (no CLI)."""
    from pipelines.beam_options import beam_setup
    from pipelines.embed import run_embed
    from pipelines.embed_parts import WorkspacePartWriter

    net, _, tok = model.loader()()
    dim = int(net.encode_text(tok(["x"])).shape[-1])
    # the same torch thread count everywhere (Dask sets OMP_NUM_THREADS=1 in its workers):
    # CPU reductions split by thread, so bit-identical vectors need the same count
    handler = ClipModelHandler(model.loader(), model_name=model.name, pad_to=4, torch_threads=2)
    with beam_setup(beam_args or [], dask_local=dask_local) as setup:
        run_embed(
            match_shards(str(root / "shards")),
            handler,
            WorkspacePartWriter(str(root)),
            embedding_schema(dim),
            options=setup.options,
            runner=setup.new_runner(),
            settings=EmbedSettings(4),
        )


@pytest.fixture(scope="module")
def in_process_reference(tmp_path_factory: pytest.TempPathFactory, model: TinyModel) -> Path:
    root = tmp_path_factory.mktemp("reference")
    for i in range(3):
        write_simple_shard(root / "shards", i, 5, failed=1)
    run_pipeline(root, model)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["multi_processing", "dask"])
def test_multi_process_runners_match_in_process(
    tmp_path: Path, model: TinyModel, mode: str, in_process_reference: Path
) -> None:
    one, two = in_process_reference, tmp_path / "two"
    for i in range(3):
        write_simple_shard(two / "shards", i, 5, failed=1)
    if mode == "dask":
        run_pipeline(two, model, dask_local=2)
    else:
        run_pipeline(two, model, ["--direct_num_workers", "2", "--direct_running_mode", mode])
    parts = sorted((one / "embeddings").glob("part-*.parquet"))
    assert len(parts) == 3
    for part in parts:
        assert pq.read_table(part).equals(pq.read_table(two / "embeddings" / part.name))


def test_beam_options() -> None:
    from pipelines.beam_options import BeamOptionsError, beam_setup

    with beam_setup(
        ["--direct_num_workers", "3"], pickle_library="cloudpickle", direct_num_workers=1
    ) as s:
        assert s.is_direct and s.runner_name == "DirectRunner"
        assert s.options.get_all_options()["direct_num_workers"] == 3  # flags win
        assert type(s.new_runner()).__name__ == "FnApiRunner"
    with beam_setup(["--runner=DataflowRunner", "--project", "p"]) as s:
        assert s.runner_name == "DataflowRunner" and not s.is_direct
    with (
        pytest.raises(BeamOptionsError, match="did you mean --temp_location"),
        beam_setup(["--temp_locaton", "gs://x"]),
    ):
        pass
    with (
        pytest.raises(BeamOptionsError, match="given twice"),
        beam_setup(["--runner", "FlinkRunner"], runner="SparkRunner"),
    ):
        pass
    with (
        pytest.raises(BeamOptionsError, match="cannot be combined"),
        beam_setup([], runner="FlinkRunner", dask_local=2),
    ):
        pass


@pytest.mark.gpu
def test_cuda_fp16_autocast(tmp_path: Path, model: TinyModel) -> None:
    ws = tmp_path / "ws"
    write_simple_shard(ws / "shards", 0, 4)
    assert embed_cli(ws, model, "--device", "cuda") == 0
    info = json.loads((ws / "embeddings" / "model.json").read_text())
    assert info["precision"] == "fp16-autocast"
    t = Workspace(ws).load_embeddings()
    assert t.column("status").to_pylist() == ["ok"] * 4


def test_shard_spec_describe() -> None:
    assert ShardSpec(0, "folder", "/x", files=("a.jpg",)).describe().startswith("/x")
