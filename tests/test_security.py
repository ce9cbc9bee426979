"""Security and robustness (issue 20, item 6): untrusted image bytes go through the allow-listed,
capped decoder everywhere; checkpoints and local pipelines never unpickle code; a rejected
config writes nothing; sidecar captions are capped; thumbnail names never collide; keys reused
by several shards are qualified by their shard, and the report and filter still find each one.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import EpsImagePlugin, Image

from audit.cli import main as cli_main
from audit.report.images import ShardIndex, decode_rgb, open_path, thumb_name
from audit.workspace import Workspace
from pipelines.readers import (
    MAX_CAPTION_BYTES,
    KeyCollisionError,
    ShardSpec,
    match_shards,
    qualify_keys,
    read_shard,
    source_keys,
)


# ---- helpers --------------------------------------------------------------------------------
def encoded(fmt: str, colour: tuple[int, int, int] = (10, 120, 200), size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, fmt)
    return buf.getvalue()


def noisy_jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))


def embed(ws: Path, *extra: str) -> int:
    return cli_main(["embed", "-q", str(ws), "--model", "tiny-synth", "--batch-size", "4", *extra])


@pytest.fixture
def no_ghostscript(monkeypatch: pytest.MonkeyPatch) -> list:
    """Records every attempt to hand EPS data to Ghostscript (PIL's EPS plugin does on load)."""
    calls: list = []

    def fake(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript must never run on untrusted data")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", fake)
    return calls


# ---- 1. untrusted image bytes: one safe decoder -------------------------------------------------
def test_report_decoder_refuses_formats_outside_the_allow_list(
    tmp_path: Path, no_ghostscript: list
) -> None:
    for fmt in ("PCX", "SGI", "EPS"):
        assert decode_rgb(encoded(fmt), fmt) is None, fmt
    assert not no_ghostscript
    png = decode_rgb(encoded("PNG"))
    assert png is not None and png.mode == "RGB" and png.getpixel((0, 0)) == (10, 120, 200)
    # the pixel cap of the decoder applies too (decompression bombs)
    assert decode_rgb(encoded("PNG", size=64), max_pixels=100) is None
    # generations on disk (open_path) go through the same decoder, with the byte cap
    (tmp_path / "gen.pcx.png").write_bytes(encoded("PCX"))
    (tmp_path / "gen.png").write_bytes(encoded("PNG"))
    assert open_path(tmp_path / "gen.pcx.png") is None
    assert open_path(tmp_path / "gen.png") is not None
    assert open_path(tmp_path / "gen.png", max_bytes=10) is None


def test_shard_index_refuses_pcx_and_eps_members_and_caps_member_size(
    tmp_path: Path, no_ghostscript: list
) -> None:
    shards = tmp_path / "shards"
    big = encoded("PNG", size=64)
    write_tar(
        shards / "00000.tar",
        [
            ("00000000.jpg", encoded("PCX")),  # content is sniffed, the extension not trusted
            ("00000001.png", encoded("EPS")),
            ("00000002.png", encoded("PNG")),
            ("00000003.png", big),
        ],
    )
    index = ShardIndex(shards, max_bytes=len(big) - 1)
    assert {"00000000", "00000001", "00000002", "00000003"} <= set(index.index)
    assert index.open_image("00000000") is None
    assert index.open_image("00000001") is None
    assert index.open_image("00000002") is not None
    assert index.read_bytes("00000003") is None  # larger than the byte cap: never read
    assert ShardIndex(shards).read_bytes("00000003") == big
    assert not no_ghostscript


def test_embed_reader_refuses_pcx_and_eps_members(tmp_path: Path, no_ghostscript: list) -> None:
    ws = tmp_path / "ws"
    write_tar(
        ws / "shards" / "00000.tar",
        [
            ("00000000.jpg", noisy_jpeg(0)),
            ("00000000.txt", b"a good photo"),
            ("00000001.jpg", encoded("PCX")),
            ("00000001.txt", b"a pcx file"),
            ("00000002.png", encoded("EPS")),
            ("00000002.txt", b"an eps file"),
            ("00000003.eps", encoded("EPS")),
            ("00000003.txt", b"an honest eps file"),
        ],
    )
    assert embed(ws) == 0
    t = Workspace(ws).load_embeddings(columns=["key", "status", "error"]).to_pylist()
    got = {r["key"]: (r["status"], r["error"] or "") for r in t}
    assert got["00000000"][0] == "ok"
    assert got["00000001"][0] == "failed_to_decode"
    assert "unsupported or unrecognised image format" in got["00000001"][1]
    assert got["00000002"] == ("failed_to_decode", "not an image: looks like a PostScript document")
    assert got["00000003"][0] == "failed_to_decode" and "no image member" in got["00000003"][1]
    assert not no_ghostscript


def test_parquet_and_folder_readers_refuse_pcx_and_eps(
    tmp_path: Path, no_ghostscript: list
) -> None:
    """The other two embed inputs hand their bytes to the same decoder: a parquet with image
    bytes and a folder of images (where the extension is not trusted either)."""
    from pipelines.embed import CHUNK, ROW, DecodeChunkFn

    members = {"good": noisy_jpeg(0), "pcx": encoded("PCX"), "eps": encoded("EPS")}
    rows = [{"key": k, "jpg": data, "caption": k} for k, data in members.items()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "images.parquet")
    folder = tmp_path / "photos"
    folder.mkdir()
    for key, data in members.items():
        (folder / f"{key}.{'png' if key == 'eps' else 'jpg'}").write_bytes(data)
    for source in (tmp_path / "images.parquet", folder):
        (spec,) = match_shards(str(source))
        samples = list(read_shard(spec))
        assert sorted(s.key for s in samples) == ["eps", "good", "pcx"], source
        out = list(DecodeChunkFn().process(samples))
        decoded = [e.sample.key for kind, chunk in out if kind == CHUNK for e in chunk]
        failed = {value[1]["key"]: value[1] for kind, value in out if kind == ROW}
        assert decoded == ["good"], source
        assert failed["pcx"]["status"] == "failed_to_decode"
        assert "unsupported or unrecognised image format" in failed["pcx"]["error"]
        assert failed["eps"]["error"] == "not an image: looks like a PostScript document"
    assert not no_ghostscript


def test_report_thumbnails_refuse_pcx_and_eps_members(tmp_path: Path, no_ghostscript: list) -> None:
    from audit.report.html import Renderer

    ws = Workspace(tmp_path / "ws")
    write_tar(
        ws.shards_dir / "00000.tar",
        [("pcx.jpg", encoded("PCX")), ("eps.png", encoded("EPS")), ("ok.png", encoded("PNG"))],
    )
    r = Renderer({}, ws, ws.report_dir, thumb_size=16)
    assert r._thumb_file("pcx") is None and r._thumb_file("eps") is None
    assert r._thumb_file("ok") is not None
    assert "no image" in r.thumb("pcx") and (r.n_thumbs, r.n_missing) == (1, 2)
    assert [p.name for p in (ws.report_dir / "img" / "k").iterdir()] == [thumb_name("ok")]
    assert not no_ghostscript


# ---- 2. checkpoints and local pipelines never unpickle code ---------------------------------------
class _Payload:
    """Unpickling this creates a file: stands in for code hidden in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _tiny_unet_setup():
    import torch

    class Unet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1)

        def forward(self, z, t, encoder_hidden_states):
            return SimpleNamespace(sample=self.conv(z))

    torch.manual_seed(0)
    latents = torch.randn(6, 4, 2, 2)
    cond = torch.randn(6, 2, 3, 5)
    uncond = torch.zeros(1, 3, 5)
    ddpm = SimpleNamespace(
        config=SimpleNamespace(num_train_timesteps=10), add_noise=lambda z, n, t: z + n
    )
    args = SimpleNamespace(unet_lr=1e-3, unet_steps=6, batch=2, checkpoint_every=2, log_every=1)
    return Unet, latents, cond, uncond, ddpm, args


def test_training_checkpoints_resume_with_weights_only_and_refuse_pickled_code(
    tmp_path: Path,
) -> None:
    import torch

    from audit.training import load_checkpoint
    from audit.training.train_tiny_sd import train_unet

    Unet, latents, cond, uncond, ddpm, args = _tiny_unet_setup()
    run_key = {"seed": 0, "n": 6, "work_share": 0.07, "clip_weights": None, "flag": True}
    ckpt = tmp_path / "unet.pt"
    curve, _ = train_unet(
        Unet(), latents, cond, uncond, ddpm, args, torch.Generator().manual_seed(0), ckpt, run_key
    )
    st = load_checkpoint(ckpt)  # optimizer state, generator state, run key, loss curve
    assert st["step"] == 4 and st["run_key"] == run_key and st["curve"] == curve[:4]
    resumed, _ = train_unet(
        Unet(), latents, cond, uncond, ddpm, args, torch.Generator().manual_seed(0), ckpt, run_key
    )
    assert resumed[:4] == curve[:4] and len(resumed) == 6

    # the CLIP script's checkpoint holds the same kinds of values (plus a permutation, evals)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "run_key": run_key, "model": model.state_dict(), "opt": opt.state_dict(),
        "gen": torch.Generator().get_state(), "perm": torch.randperm(5), "pos": 2, "step": 3,
        "spent": 1.5, "losses": [(1, 0.5)], "evals": [{"step": 1, "concept_acc": 0.25}],
        "chunk": (torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(2, 2, 4, dtype=torch.long)),
    }  # fmt: skip
    torch.save(state, tmp_path / "clip.pt")
    assert load_checkpoint(tmp_path / "clip.pt")["evals"] == state["evals"]

    marker = tmp_path / "pwned"
    torch.save({"run_key": _Payload(marker)}, ckpt)
    with pytest.raises(pickle.UnpicklingError):
        train_unet(Unet(), latents, cond, uncond, ddpm, args, torch.Generator(), ckpt, run_key)
    assert not marker.exists()
    for script in ("train_tiny_sd.py", "train_tiny_clip.py"):
        src = (Path(__file__).parents[1] / "audit" / "training" / script).read_text()
        assert "torch.load(" not in src and "weights_only=False" not in src, script


def test_load_generator_reads_local_folders_from_safetensors_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers
    import torch
    from safetensors.torch import load_file

    from audit import models

    seen: list[tuple[str, dict]] = []

    class Stop(Exception):
        pass

    def fake(path, **kwargs):
        seen.append((path, kwargs))
        raise Stop

    with monkeypatch.context() as m:
        m.setattr(diffusers.DiffusionPipeline, "from_pretrained", staticmethod(fake))
        for name in ("tiny-sd", "stabilityai/stable-diffusion-2-1-base"):
            with pytest.raises(Stop):
                models.load_generator(name)
    assert seen[0][1].get("use_safetensors") is True  # the shipped (local) folder
    assert "use_safetensors" not in seen[1][1]  # hub ids: diffusers' own choice

    # a local pipeline whose unet weights are a pickle is refused, not unpickled
    local = tmp_path / "pipe"
    shutil.copytree(models.TINY_SD_DIR, local)
    unet = local / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(unet), unet.with_name("diffusion_pytorch_model.bin"))
    unet.unlink()
    with pytest.raises(models.ModelError, match="could not load diffusers pipeline"):
        models.load_generator(str(local))


# ---- 3. a rejected config leaves no trace ---------------------------------------------------------
@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ('[run]\nstages = ["dedup", "report"]\n[dedup]\nthreshold = "high"\n', "dedup.threshold"),
        ('[run]\nstages = ["embed"]\n[embed]\nbatch_size = 0\n', "embed.batch_size"),
        ('[run]\nstages = ["report"]\n[report]\nthumb_size = 4\n', "report.thumb_size"),
        # a stage that is not listed still has its section checked (kept in WS/audit.toml)
        ('[run]\nstages = ["report"]\n[poisons]\nexpected_rate = "x"\n', "poisons.expected_rate"),
        ('[run]\nstages = ["report"]\n[dedup]\nthreshhold = 0.9\n', "dedup.threshhold"),
    ],
)
def test_rejected_config_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, sections: str, field: str
) -> None:
    ws = tmp_path / "new-ws"
    toml = tmp_path / "bad.toml"
    toml.write_text(f'workspace = "{ws}"\n{sections}')
    assert cli_main(["run", str(toml), "-q"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and field in err
    assert not ws.exists()


# ---- 4. sidecar captions are capped ---------------------------------------------------------------
def test_oversize_sidecar_caption_is_a_caption_problem(tmp_path: Path) -> None:
    from pipelines.embed import sample_row

    folder = tmp_path / "photos"
    folder.mkdir()
    for stem, caption in (
        ("big", b"x" * (MAX_CAPTION_BYTES + 1)),
        ("edge", b"y" * MAX_CAPTION_BYTES),
        ("small", b"a small caption"),
    ):
        (folder / f"{stem}.jpg").write_bytes(noisy_jpeg(len(stem)))
        (folder / f"{stem}.txt").write_bytes(caption)
    (spec,) = match_shards(str(folder))
    samples = {s.key: s for s in read_shard(spec)}
    big = samples["big"]
    assert big.caption is None and "caption file too large" in big.caption_problem
    assert big.image is not None and big.status == "ok"
    row = sample_row(big)
    assert row["status"] == "missing_caption" and "too large" in row["error"]
    assert samples["edge"].caption == "y" * MAX_CAPTION_BYTES
    assert samples["edge"].caption_problem is None
    assert samples["small"].caption == "a small caption"


# ---- 5. thumbnail names ---------------------------------------------------------------------------
def test_thumbnail_names_do_not_collide(tmp_path: Path) -> None:
    from audit.report.html import Renderer

    keys = ["a/b", "a_b", "a?b", "a b", "A_b", "a_B", "../etc", "x" * 300, "x" * 301, "ключ"]
    names = [thumb_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    assert len({n.lower() for n in names}) == len(keys)  # case-insensitive disks too
    assert names == [thumb_name(k) for k in keys]  # deterministic
    for n in names:
        assert n.endswith(".png") and len(n) < 100 and "/" not in n and ".." not in n
        assert all(c.isascii() and (c.isalnum() or c in "-_.") for c in n)

    ws = Workspace(tmp_path / "ws")
    red, blue = encoded("PNG", (255, 0, 0)), encoded("PNG", (0, 0, 255))
    write_tar(ws.shards_dir / "00000.tar", [("a/b.png", red), ("a_b.png", blue)])
    (ws.generations_dir / "g" / "a").mkdir(parents=True)
    (ws.generations_dir / "g" / "a" / "b.png").write_bytes(red)
    (ws.generations_dir / "g" / "a_b.png").write_bytes(blue)
    r = Renderer({}, ws, ws.report_dir, thumb_size=16)
    src = [r._thumb_file("a/b"), r._thumb_file("a_b")]
    assert None not in src and src[0] != src[1]
    colours = [Image.open(ws.report_dir / s).convert("RGB").getpixel((0, 0)) for s in src]
    assert colours == [(255, 0, 0), (0, 0, 255)]
    pages = [r.gen_thumb(f"generations/g/{n}", "gen", False) for n in ("a/b.png", "a_b.png")]
    files = sorted((ws.report_dir / "img" / "g").iterdir())
    assert len(files) == 2 and all(f.name in "".join(pages) for f in files)


# ---- 6. keys reused by several shards -------------------------------------------------------------
def test_keys_reused_across_shards_are_qualified_end_to_end(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shards = ws / "shards"
    shared = "123_456"
    img0, img1 = noisy_jpeg(10), noisy_jpeg(11)
    # webdataset shards from another project: no manifests, the same key in both tars; the
    # copy in 00000 has no caption (missing_caption), so `filter --drop failed` drops it only
    write_tar(
        shards / "00000.tar",
        [(f"{shared}.jpg", img0), ("aaa.jpg", noisy_jpeg(12)), ("aaa.txt", b"first")],
    )
    assert embed(ws) == 0  # alone, 00000's key is its own
    assert "123_456" in Workspace(ws).load_embeddings(columns=["key"]).column("key").to_pylist()
    write_tar(  # a shard added later reuses the key: 00000's part is embedded again
        shards / "00001.tar",
        [
            (f"{shared}.jpg", img1),
            (f"{shared}.txt", b"second"),
            ("bbb.jpg", noisy_jpeg(13)),
            ("bbb.txt", b"third"),
        ],
    )
    assert embed(ws) == 0
    t = Workspace(ws).load_embeddings(columns=["key", "status", "image_emb"])
    rows = {r["key"]: r for r in t.to_pylist()}
    q0, q1 = f"00000/{shared}", f"00001/{shared}"
    assert set(rows) == {q0, q1, "aaa", "bbb"}
    assert rows[q0]["status"] == "missing_caption" and rows[q1]["status"] == "ok"
    assert rows[q0]["image_emb"] != rows[q1]["image_emb"]
    stats = json.loads((ws / "embeddings" / "_stats.json").read_text())
    assert stats["input_rows"] == 4 and stats["rows"] == 4

    # the report (and notebooks, reproduce) find each copy's own image
    index = ShardIndex(ws / "shards")
    assert index.read_bytes(q0) == img0 and index.read_bytes(q1) == img1
    assert index.read_bytes("aaa") is not None and index.read_bytes(shared) is None

    # filter rewrites the shards: the dropped copy leaves 00000 only
    out = tmp_path / "filtered"
    assert cli_main(["filter", "-q", str(ws), "--drop", "failed", "--out", str(out)]) == 0
    drop = pq.read_table(ws / "filtered" / "drop.parquet").column("key").to_pylist()
    assert drop == [q0]
    with tarfile.open(out / "00000.tar") as tf:
        assert tf.getnames() == ["aaa.jpg", "aaa.txt"]
    with tarfile.open(out / "00001.tar") as tf:
        assert tf.getnames() == [f"{shared}.jpg", f"{shared}.txt", "bbb.jpg", "bbb.txt"]
        assert tf.extractfile(f"{shared}.jpg").read() == img1


def test_qualified_keys_with_manifests_folders_and_refusals(tmp_path: Path) -> None:
    # img2dataset-like shards whose manifests share a key (one copy failed to download)
    wds = tmp_path / "wds"
    write_tar(wds / "00000.tar", [("k1.jpg", noisy_jpeg(1)), ("k2.jpg", noisy_jpeg(2))])
    write_tar(wds / "00001.tar", [("k2.jpg", noisy_jpeg(3))])
    for name, keys in (("00000", ["k1", "k2"]), ("00001", ["k2", "k3"])):
        rows = [{"key": k, "caption": "c", "status": "success"} for k in keys]
        if name == "00001":
            rows[1]["status"] = "failed_to_download"
        pq.write_table(pa.Table.from_pylist(rows), wds / f"{name}.parquet")
    specs = qualify_keys(match_shards(str(wds)))
    assert [sorted(s.qualified) for s in specs] == [["k2"], ["k2"]]
    got = [sorted(s.key for s in read_shard(spec)) for spec in specs]
    assert got == [["00000/k2", "k1"], ["00001/k2", "k3"]]
    assert [sorted(source_keys(s)) for s in specs] == got
    assert qualify_keys(match_shards(str(wds))) == specs  # deterministic

    # folder inputs: a stem shared by two files is keyed by the file name
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "a.png", "b.jpg"):
        (folder / name).write_bytes(noisy_jpeg(len(name)))
    specs = qualify_keys(match_shards(str(folder), folder_shard_size=1))
    keys = sorted(s.key for spec in specs for s in read_shard(spec))
    assert keys == ["a.jpg", "a.png", "b"]
    assert sorted(k for s in specs for k in source_keys(s)) == keys

    # a qualified key that is another sample's key stays ambiguous: refused up front (exit 3)
    ws = tmp_path / "ws"
    write_tar(ws / "shards" / "00000.tar", [("x.jpg", noisy_jpeg(4))])
    write_tar(ws / "shards" / "00001.tar", [("x.jpg", noisy_jpeg(5)), ("00000/x.jpg", b"?")])
    with pytest.raises(KeyCollisionError, match="00000/x"):
        qualify_keys(match_shards(str(ws / "shards")))
    assert embed(ws) == 3
    assert not list((ws / "embeddings").glob("part-*"))
    # a parquet shard that repeats a key is refused as well
    rows = [{"key": "r", "jpg": noisy_jpeg(6)}, {"key": "r", "jpg": noisy_jpeg(7)}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "dup.parquet")
    with pytest.raises(KeyCollisionError, match="'r'"):
        qualify_keys(match_shards(str(tmp_path / "dup.parquet")))
    assert ShardSpec(0, "webdataset", "s/00007.tar", qualified=frozenset({"k"})).qualify("k") == (
        "00007/k"
    )
