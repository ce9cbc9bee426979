"""Download for real with img2dataset from the testbed served on loopback: 404s, changed bytes
(split view), broken files; every input row ends in the shards once, with status and error."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from audit.cli import main as cli_main
from pipelines.download import DownloadSettings, key_for, prepare_url_list, reconcile

TESTBED_RATES = dict(
    clean_rate=0.0,
    missing_rate=0.06,
    split_view_rate=0.06,
    truncated_rate=0.04,
    zero_byte_rate=0.04,
    wrong_format_rate=0.04,
)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audit.testbed.generate import build_testbed

    out = tmp_path_factory.mktemp("testbed") / "tb"
    build_testbed(out, n=60, seed=3, **TESTBED_RATES)
    return out


def shard_rows(ws: Path) -> list[dict]:
    rows = []
    for f in sorted((ws / "shards").glob("[0-9]*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def tar_keys(ws: Path) -> set[str]:
    import tarfile

    keys = set()
    for f in (ws / "shards").glob("*.tar"):
        with tarfile.open(f) as tf:
            keys |= {m.name.split(".")[0] for m in tf.getmembers()}
    return keys


@pytest.mark.slow
def test_download_testbed_over_loopback(
    testbed: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from audit.testbed.generate import load_truth, write_url_list
    from audit.testbed.server import serve_testbed

    truth = {r["key"]: r for r in load_truth(testbed).to_pylist()}
    ws = tmp_path / "ws"
    with serve_testbed(testbed) as base:
        urls = write_url_list(testbed, base, tmp_path / "urls.parquet")
        assert cli_main(["download", str(urls), "--out", str(ws), "-q"]) == 0
        out = capfd.readouterr()
        assert "Starting the downloading" not in out.out + out.err  # img2dataset is quiet
        rows = shard_rows(ws)
        assert sorted(r["key"] for r in rows) == sorted(truth)  # every row once, same keys
        in_tar = tar_keys(ws)
        kinds = Counter()
        for r in rows:
            t = truth[r["key"]]
            kind = t["broken_kind"]
            kinds[kind] += 1
            assert (
                r["caption"] == t["caption"]
                and r["url"].endswith(t["file_name"])
                or kind == "missing"
            )
            assert r["expected_sha256"] == t["sha256"]
            if kind == "missing":
                assert r["status"] == "failed_to_download" and "404" in r["error_message"]
                assert r["key"] not in in_tar
            elif kind == "split_view":
                assert r["status"] == "hash_mismatch" and "hash mismatch" in r["error_message"]
                assert r["key"] not in in_tar  # img2dataset's verify_hash dropped the image
            else:
                assert r["status"] == "success", (r["key"], kind, r["error_message"])
                assert r["sha256"] == t["served_sha256"] and r["key"] in in_tar
        assert kinds["missing"] and kinds["split_view"] and kinds["truncated"]
        summary = json.loads((ws / "download.json").read_text())
        assert summary["rows"] == summary["input_rows"] == len(truth)
        assert sum(summary["counts"].values()) == len(truth)
        assert summary["counts"]["hash_mismatch"] == kinds["split_view"]
        assert (ws / "shards" / "_img2dataset.log").stat().st_size > 0
        # a rerun skips the finished shard and leaves it as it was
        before = (ws / "shards" / "00000.parquet").read_bytes()
        assert cli_main(["download", str(urls), "--out", str(ws), "-q"]) == 0
        assert (ws / "shards" / "00000.parquet").read_bytes() == before
        # another url list into the same workspace is refused
        other = tmp_path / "other.parquet"
        pq.write_table(pq.read_table(urls).slice(0, 5), other)
        assert cli_main(["download", str(other), "--out", str(ws), "-q"]) == 3

    # the embed stage maps download statuses and decodes what was stored as served
    assert cli_main(["embed", str(ws), "-q", "--model", "tiny-synth"]) == 0
    from audit.workspace import Workspace

    emb = Workspace(ws).load_embeddings(columns=["key", "status", "image_emb"]).to_pylist()
    want = {
        "missing": "failed_to_download",
        "split_view": "hash_mismatch",
        "truncated": "failed_to_decode",
        "zero_byte": "failed_to_decode",
        "wrong_format": "failed_to_decode",
        None: "ok",
    }
    got = Counter((truth[r["key"]]["broken_kind"], r["status"]) for r in emb)
    assert all(status == want[kind] for kind, status in got), got
    assert sum(got.values()) == len(truth)
    stats = json.loads((ws / "embeddings" / "_stats.json").read_text())
    assert stats["usable"] + stats["failed"] == stats["rows"] == len(truth)


@pytest.mark.slow
def test_reencode_stores_every_image_encoded_again(testbed: Path, tmp_path: Path) -> None:
    """``--reencode`` decodes and encodes every stored image at ``--encode-quality``, also the
    JPEGs that need no resize (img2dataset otherwise keeps their served bytes)."""
    import tarfile

    from audit.testbed.generate import load_truth, write_url_list
    from audit.testbed.server import serve_testbed

    truth = {r["key"]: r for r in load_truth(testbed).to_pylist()}
    stored: dict[str, dict[str, bytes]] = {}
    with serve_testbed(testbed) as base:
        urls = write_url_list(testbed, base, tmp_path / "urls.parquet")
        for name, extra in (("plain", []), ("reencode", ["--reencode", "--encode-quality", "40"])):
            ws = tmp_path / name
            argv = ["download", str(urls), "--out", str(ws), "-q", "--resize-mode", "no"]
            assert cli_main([*argv, *extra]) == 0
            with tarfile.open(ws / "shards" / "00000.tar") as tf:
                stored[name] = {
                    m.name.split(".")[0]: tf.extractfile(m).read()
                    for m in tf.getmembers()
                    if m.name.endswith(".jpg")
                }
    served_jpeg = [
        k
        for k, t in truth.items()
        if k in stored["plain"]
        and t["broken_kind"] is None  # a truncated JPEG is stored as served, not re-encoded
        and (testbed / "files" / t["file_name"]).read_bytes()[:2] == b"\xff\xd8"
    ]
    assert len(served_jpeg) > 20
    broken = [k for k, t in truth.items() if t["broken_kind"] == "truncated"]
    assert broken and not set(broken) & set(stored["reencode"])  # they fail to decode now
    for k in served_jpeg:
        served = (testbed / "files" / truth[k]["file_name"]).read_bytes()
        assert stored["plain"][k] == served  # kept as served
        again = stored["reencode"][k]
        assert again[:2] == b"\xff\xd8" and again != served  # encoded again at q40


@pytest.mark.slow
def test_custom_columns_keep_mismatched_and_dead_host(testbed: Path, tmp_path: Path) -> None:
    from audit.testbed.generate import load_truth, urls_for
    from audit.testbed.server import serve_testbed

    truth = load_truth(testbed)
    ws = tmp_path / "ws"
    with serve_testbed(testbed) as base:
        t = urls_for(testbed, base).slice(0, 30)
        links = t.column("URL").to_pylist()
        links[1] = "http://127.0.0.1:9/closed-port.jpg"  # nothing listens there
        checks = t.column("sha256").to_pylist()
        checks[2] = None  # no expected hash for this row
        table = pa.table(
            {
                "link": links,
                "alt": t.column("TEXT"),
                "checksum": checks,
                "key": [f"src{i}" for i in range(30)],
                "similarity": [0.3] * 30,
            }
        )
        csv = tmp_path / "list.csv"
        pcsv.write_csv(table, csv)
        assert (
            cli_main(
                [
                    "download",
                    str(csv),
                    "--out",
                    str(ws),
                    "-q",
                    "--url-col",
                    "link",
                    "--caption-col",
                    "alt",
                    "--hash-col",
                    "checksum",
                    "--keep-mismatched",
                    "--shard-size",
                    "20",
                    "--timeout",
                    "3",
                ]
            )
            == 0
        )
    rows = {r["key"]: r for r in shard_rows(ws)}
    keys = [key_for(i, 20)[1] for i in range(30)]
    assert sorted(rows) == keys and keys[20] == "0000100"  # img2dataset keys, 2 shards
    assert rows[keys[1]]["status"] == "failed_to_download"
    assert rows[keys[0]]["src_key"] == "src0" and rows[keys[0]]["similarity"] == 0.3
    in_tar = tar_keys(ws)
    kinds = truth.column("broken_kind").to_pylist()[:30]
    split = [keys[i] for i, kind in enumerate(kinds) if kind == "split_view" and i != 2]
    assert split, "the testbed slice should contain split-view rows"
    for k in split:
        assert rows[k]["status"] == "hash_mismatch" and "image kept" in rows[k]["error_message"]
        assert k in in_tar
    assert kinds[2] is not None or rows[keys[2]]["status"] == "success"  # no hash: not checked
    # the embed reader keeps a kept mismatch's image (embedded, still flagged)
    from pipelines.readers import match_shards, read_shard

    samples = {x.key: x for spec in match_shards(str(ws / "shards")) for x in read_shard(spec)}
    assert all(samples[k].status == "hash_mismatch" and samples[k].image for k in split)
    summary = json.loads((ws / "download.json").read_text())
    assert summary["hash_check"] == "after_download"
    assert summary["columns"] == {"url": "link", "caption": "alt", "hash": "checksum"}


def test_reconcile_adds_lost_rows_and_flags_mismatches(tmp_path: Path) -> None:
    s = DownloadSettings(shard_size=3)
    urls, _ = prepare_url_list(
        pa.table(
            {
                "URL": [f"http://x/{i}" for i in range(5)],
                "TEXT": [f"c{i}" for i in range(5)],
                "sha256": ["a", "b", "c", "d", "e"],
            }
        ),
        s,
    )
    out = tmp_path / "shards"
    out.mkdir()
    k = [key_for(i, 3)[1] for i in range(5)]
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "key": k[0],
                    "url": "http://x/0",
                    "caption": "c0",
                    "status": "success",
                    "error_message": None,
                    "sha256": "a",
                },
                {
                    "key": k[2],
                    "url": "http://x/2",
                    "caption": "c2",
                    "status": "failed_to_download",
                    "error_message": "hash mismatch",
                    "sha256": None,
                },
            ]
        ),
        out / "00000.parquet",
    )  # row 1 lost; shard 1 (rows 3, 4) never written
    fixed, written = reconcile(out, urls, s, verify=True, hash_present=True)
    assert fixed == {"added_missing_rows": 3, "hash_mismatch": 1}
    assert written == k
    s0 = {r["key"]: r for r in pq.read_table(out / "00000.parquet").to_pylist()}
    assert (
        s0[k[1]]["status"] == "failed_to_download" and "not recorded" in s0[k[1]]["error_message"]
    )
    assert s0[k[2]]["status"] == "hash_mismatch" and s0[k[2]]["expected_sha256"] == "c"
    s1 = pq.read_table(out / "00001.parquet").to_pylist()
    assert [r["status"] for r in s1] == ["failed_to_download"] * 2
    assert "shard failed" in s1[0]["error_message"] and s1[0]["caption"] == "c3"
    # idempotent
    assert reconcile(out, urls, s, verify=True, hash_present=True)[0] == {}


def test_url_list_problems_are_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "list.parquet"
    pq.write_table(pa.table({"address": ["http://x/1"]}), bad)
    assert cli_main(["download", str(bad), "--out", str(tmp_path / "ws"), "-q"]) == 3
    assert "no url column" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "download",
                str(bad),
                "--out",
                str(tmp_path / "ws"),
                "-q",
                "--url-col",
                "address",
                "--caption-col",
                "nope",
            ]
        )
        == 3
    )
    assert "caption column 'nope' not in the url list" in capsys.readouterr().err
    assert (
        cli_main(["download", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "ws"), "-q"])
        == 3
    )
    with pytest.raises(SystemExit) as exc:  # a usage error: argparse knows the choices
        cli_main(["download", str(bad), "--out", str(tmp_path / "ws"), "-q", "--resize-mode", "x"])
    assert exc.value.code == 2 and "invalid choice: 'x'" in capsys.readouterr().err
    txt = tmp_path / "list.xml"
    txt.write_text("<urls/>")
    assert cli_main(["download", str(txt), "--out", str(tmp_path / "ws"), "-q"]) == 3
