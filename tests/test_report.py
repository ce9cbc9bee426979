"""The report: numbers in report.json, the self-contained HTML, and a real headless Chromium
load (no console errors, every section rendered, a non-blank screenshot)."""

from __future__ import annotations

import io
import json
import re
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from audit.cli import main
from audit.report import SECTIONS, build_report, write_report
from audit.report.html import SECTION_IDS
from audit.report.images import ShardIndex
from audit.workspace import Workspace
from tests.chromium import find_chromium, load_page
from tests.report_fixtures import ADV_PROMPT, make_workspace

DOCS = Path(__file__).resolve().parents[1] / "docs" / "report_schema.md"


def k(i: int) -> str:
    return f"{i:09d}"


@pytest.fixture(scope="module")
def full_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace with every finding, shards and generations, and its report written."""
    ws = make_workspace(tmp_path_factory.mktemp("report") / "ws")
    write_report(ws)
    return ws


@pytest.fixture(scope="module")
def report(full_ws: Workspace) -> dict:
    return json.loads((full_ws.report_dir / "report.json").read_text())


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.ids: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href"):
            if a.get(name):
                self.refs.append(a[name])
        if tag == "section":
            self.ids[a["id"]] = a.get("data-status")


def test_report_numbers(report: dict) -> None:
    assert report["schema"] == "laion-audit-report/1"
    assert all(report[s]["status"] == "ok" for s in SECTIONS)
    d = report["dataset"]
    assert (d["n_samples"], d["n_ok"], d["n_failed"], d["hash_mismatches"]) == (60, 57, 3, 1)
    assert d["status_counts"] == {"ok": 57, "failed_to_download": 2, "hash_mismatch": 1}
    assert d["top_errors"][0] == {"error": "HTTP Error 404: Not Found", "count": 2}
    assert d["model"]["model"] == "tiny-synth" and d["shards"]["images_available"]
    dup = report["duplicates"]
    assert dup["by_kind"]["exact"] == {
        "groups": 1,
        "samples": 3,
        "redundant": 2,
        "largest_group": 3,
        "size_histogram": {"3": 1},
    }
    assert dup["samples_in_any_group"] == 6
    g = dup["largest_groups"][0]
    assert (g["kind"], g["size"], g["keys"]) == ("exact", 3, [k(10), k(11), k(12)])
    c = report["concepts"]
    assert (c["n_concepts"], c["n_sparse"]) == (5, 2)
    assert [r["concept"] for r in c["rows"][:2]] == ["mushroom", "astronaut"]
    assert c["rows"][0]["ratio"] is None and c["rows"][1]["ratio"] == pytest.approx(5 / 3)
    w = report["word_replication"]
    assert (w["n_keywords"], w["n_clusters"], w["n_flagged"]) == (1, 2, 1)
    c0 = w["keywords"][0]["clusters"][0]
    assert c0["flagged"] and c0["keys"] == [k(i) for i in range(20, 28)]
    assert c0["top_words"] == ["starry", "night"] and c0["top_word_lift"] == [9.5, 7.25]
    o = report["object_replication"]
    assert o["n_flagged"] == 1 and o["rows"][0]["example_keys"] == [k(31), k(32), k(33)]
    p = report["poisons"]
    assert (p["n_scored"], p["n_flagged"], p["flagged_by_kind"]) == (
        58,
        2,
        {"dirty": 1, "clean": 1},
    )
    assert p["score_columns"] == ["alignment_gmm_v1", "knn_distance_v1"]
    assert [t["key"] for t in p["top"][:3]] == [k(34), k(35), k(36)]
    assert p["top"][0]["scores"]["alignment_gmm_v1"] == pytest.approx(2.5)
    assert p["top"][0]["caption"] and p["top"][0]["reasons"] == "caption/image mismatch"
    assert sum(p["combined_histogram"]["all"]["counts"]) == 58
    assert sum(p["combined_histogram"]["flagged"]["counts"]) == 2
    m = report["memorization"]
    assert m["copy_threshold"] == 0.9 and m["generations_available"]
    assert [r["replication_rate"] for r in m["rows"]] == [0.75, 0.125, 0.0]
    top = m["rows"][0]
    assert sum(top["similarity_histogram"]["counts"]) == 8
    assert len(top["pairs"]) == 6 and all(pair["copy"] for pair in top["pairs"])
    assert [pair["seed"] for pair in top["pairs"]] == [0, 1, 2, 3, 4, 5]
    assert top["pairs"][0]["generation"].startswith("generations/")
    mit = report["mitigations"]
    starry = "ESD-x “starry night by van gogh”"
    assert [c["label"] for c in mit["columns"]] == [
        "original", starry, f"{starry} + UnlearnDiffAtk", "SLD max",
    ]  # fmt: skip
    assert mit["columns"][0]["runs"] == ["main", "original"] and mit["differences"] == []
    assert len(mit["rows"]) == 2  # the object prompt was measured by the original only
    best = mit["rows"][0]
    assert best["best"] and best["prompt"] == "starry night van gogh"
    cells = {c["column"]: c for c in best["cells"]}
    assert [cells[c["key"]]["replication_rate"] for c in mit["columns"]] == [0.75, 0.0, 0.25, 0.125]
    attacked = cells[mit["columns"][2]["key"]]
    assert attacked["prompt"] == ADV_PROMPT and attacked["attack_success"] is True
    assert cells[mit["original"]]["run"] == "main" and cells[mit["original"]]["replicates"]
    assert not cells[mit["columns"][1]["key"]]["replicates"]
    costs = {c["column"]: c for c in mit["costs"]}
    assert (costs[mit["original"]]["correct"], costs[mit["original"]]["n"]) == (10, 16)
    assert costs[mit["columns"][1]["key"]]["change"] == pytest.approx(9 / 16 - 10 / 16)
    assert mit["attacks"][0]["asr_after"] == 1.0 and mit["attacks"][0]["n"] == 1
    assert [r["run"] for r in mit["runs"]][0] == "main"
    run = report["run"]
    assert [s["stage"] for s in run["stages"]] == ["embed", "dedup", "concepts"]
    assert run["versions"]["laion-audit"] and "pyarrow" in run["versions"]
    assert run["findings"]["poisons"]["detector"] == "poisons_v1"
    assert report["render"]["thumbnails"] > 30 and report["render"]["keys_without_image"] == 0


def test_html_is_self_contained(full_ws: Workspace) -> None:
    page = (full_ws.report_dir / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert parser.ids == {sid: "ok" for sid, _ in SECTION_IDS.values()}
    assert "<script" not in page and "<link" not in page
    images = [r for r in parser.refs if r.endswith(".png")]
    assert len(images) > 40
    for ref in parser.refs:
        assert not re.match(r"^(https?:)?//", ref), ref
        if not ref.startswith("#"):
            assert (full_ws.report_dir / ref).is_file(), ref
    for png in images:  # every image is a real, decodable PNG
        Image.open(full_ws.report_dir / png).verify()
    # the generations appear beside their nearest training image
    assert 'class="pair"' in page and "img/g/" in page


def test_report_json_fields_are_documented(report: dict) -> None:
    doc = DOCS.read_text()
    documented = {
        word for code in re.findall(r"`([^`]+)`", doc) for word in re.findall(r"[a-z_0-9]+", code)
    }
    skip_children = {
        "captions",
        "status_counts",
        "versions",
        "meta",
        "findings",
        "scores",
        "by_kind",
        "size_histogram",
        "flagged_by_kind",
        "config",
        "model",
        "embed_stats",
    }
    missing: set[str] = set()

    def walk(obj: object, parent: str = "") -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key not in documented:
                    missing.add(f"{parent}.{key}")
                if key not in skip_children:
                    walk(value, key)
        elif isinstance(obj, list):
            for item in obj[:3]:
                walk(item, parent)

    walk(report)
    assert not missing, f"report.json fields missing from docs/report_schema.md: {missing}"


def test_one_copy_of_500_does_not_replicate_and_card_json_and_triage_agree(tmp_path: Path) -> None:
    """A prompt "replicates" when the copy rate's Wilson 95% lower bound >= min_copy_share (0.02), counted
    over every prompt (not the rows shown), the same on the card, in report.json and in the
    triage labels."""
    from detectors import memorization as mem

    assert not mem.replicates(1, 500) and mem.replicates(50, 500)
    assert not mem.replicates(10, 500) and not mem.replicates(0, 500)
    assert mem.replicates(1, 500, min_share=0.0) and not mem.replicates(0, 0)
    from audit.cli import load_stage

    Config = load_stage("reproduce").Config  # noqa: N806 - the stage's class

    assert Config.__dataclass_fields__["min_copy_share"].default == mem.DEFAULT_MIN_COPY_SHARE
    copies = np.array([50, 25, 1, 10, 0])
    assert mem.replication_labels(copies, np.full(5, 500)).tolist() == [
        True, True, False, False, False,
    ]  # fmt: skip
    ws = make_workspace(tmp_path / "ws", findings=(), shards=False, generations=False)
    rows = [
        {"finding_id": f"word:x:{i}", "prompt_kind": "keywords", "prompt": f"p{i}", "n": 500,
         "n_copies": int(c), "replication_rate": c / 500, "ci_low": 0.0, "ci_high": 1.0,
         "mean_sim": 0.5, "p95_sim": 0.6, "max_sim": 0.7, "triage_score": 1.0}
        for i, c in enumerate(copies)
    ]  # fmt: skip
    meta = {"copy_threshold": 0.9, "triage": {"min_copy_share": mem.DEFAULT_MIN_COPY_SHARE}}
    ws.write_finding("memorization", pa.Table.from_pylist(rows), meta)
    assert main(["report", str(ws.root), "-q", "--top-prompts", "1"]) == 0
    m = json.loads((ws.report_dir / "report.json").read_text())["memorization"]
    assert len(m["rows"]) == 1 and m["rows"][0]["replicates"]
    assert (m["n_replicating"], m["n_generated"], m["min_copy_share"]) == (2, 5, 0.02)
    page = (ws.report_dir / "index.html").read_text()
    card = re.search(r'<div class="v">(\d+) / (\d+)</div><div class="l">generated prompts', page)
    assert card and (int(card[1]), int(card[2])) == (m["n_replicating"], m["n_generated"])
    # a stricter share recorded by the reproduce run is the one the report uses
    meta["triage"]["min_copy_share"] = 0.05
    ws.write_finding("memorization", pa.Table.from_pylist(rows), meta)
    assert main(["report", str(ws.root), "-q"]) == 0
    m = json.loads((ws.report_dir / "report.json").read_text())["memorization"]
    assert m["n_replicating"] == 1 and [r["replicates"] for r in m["rows"]] == [
        True, False, False, False, False,
    ]  # fmt: skip


def test_sections_not_run_say_so(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", findings=(), shards=False, generations=False)
    code = main(["report", str(ws.root), "-q"])
    assert code == 0
    report = json.loads((ws.report_dir / "report.json").read_text())
    assert report["dataset"]["status"] == "ok" and report["run"]["status"] == "ok"
    for name, stage in (
        ("duplicates", "dedup"),
        ("poisons", "poisons"),
        ("memorization", "reproduce"),
        ("word_replication", "replication"),
    ):
        assert report[name] == {"status": "not_run", "stage": stage}
    page = (ws.report_dir / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert parser.ids["duplicates"] == "not_run" and parser.ids["dataset"] == "ok"
    assert page.count("Stage not run") == 6
    assert "laion-audit dedup WS" in page and "laion-audit reproduce WS" in page
    assert report["mitigations"]["status"] == "not_run" and parser.ids["mitigations"] == "not_run"
    assert "No mitigation measured yet" in page


def test_mitigations_table_and_poison_coverage_on_the_page(full_ws: Workspace) -> None:
    page = (full_ws.report_dir / "index.html").read_text()
    section = page[page.index('<section id="mitigations"') :]
    section = section[: section.index("</section>")]
    assert "SLD max" in section and "UnlearnDiffAtk" in section and "img/mitigations.png" in section
    assert "75.0%" in section and "25.0%" in section and "12.5%" in section
    assert "What the fix costs" in section and "62.5%" in section and "(-0.06)" in section
    assert f'title="{ADV_PROMPT}"' in section  # the adversarial prompt behind the cell


def test_poison_coverage_is_rendered_when_the_finding_records_it(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", findings=("poisons",), shards=False, generations=False)
    meta = ws.finding_meta("poisons")
    coverage = {"alignment_gmm_v1": {"sees": ["dirty-label"], "misses": ["clean-label"]},
                "knn_distance_v1": "clean-label and split-view at high rates"}  # fmt: skip
    ws.write_finding("poisons", ws.read_finding("poisons"), {**meta, "coverage": coverage})
    page = write_report(ws).read_text()
    report = json.loads((ws.report_dir / "report.json").read_text())
    assert report["poisons"]["coverage"] == coverage
    assert "What each score can and cannot see" in page and "clean-label and split-view" in page
    ws.write_finding("poisons", ws.read_finding("poisons"), meta)
    assert "can and cannot see" not in write_report(ws).read_text()


def test_measured_poison_coverage_table_and_limits(tmp_path: Path) -> None:
    from detectors import poisons as P

    ws = make_workspace(tmp_path / "ws", findings=("poisons",), shards=False, generations=False)
    meta = ws.finding_meta("poisons")
    cov = P.coverage(P.DEFAULT_EVIDENCE, [P.CHROMA_HF, P.FREQ_HF])
    ws.write_finding("poisons", ws.read_finding("poisons"), {**meta, "coverage": cov})
    page = write_report(ws).read_text()
    section = page[page.index('<section id="poisons"') :]
    section = section[: section.index("</section>")]
    assert "What each score can and cannot see" in section
    kinds = "".join(f"<th>{v.split(' (')[0]}</th>" for v in P.POISON_KINDS.values())
    assert kinds in section  # in the recorded order, though the JSON comes back key-sorted
    row = section[section.index("<code>chroma_hf_v1</code>") :]
    row = row[: row.index("</tr>")]
    a, b = P.MEASURED_AUROC[P.CHROMA_HF]["nightshade"]
    assert "in combined" in row and f"{a:.2f} / {b:.2f}" in row
    assert "Nightshade-style" in row and "dirty-label" in row  # sees / cannot see
    vae = section[section.index("<code>vae_recon_v1</code>") :]
    assert "not computed" in vae[: vae.index("</tr>")]
    assert "Ranked, not flagged" in section and "JPEG 4:2:0 re-encoding" in section


def test_imported_embeddings_without_shards_list_keys(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", shards=False, generations=False)
    path = write_report(ws)
    page = path.read_text()
    report = json.loads((ws.report_dir / "report.json").read_text())
    assert report["dataset"]["shards"]["images_available"] is False
    assert report["render"]["thumbnails"] == 0
    assert "No thumbnails: this workspace has no webdataset shards" in page
    assert f"keys: {k(10)}, {k(11)}, {k(12)}" in page  # duplicate group listed by key
    assert not list((ws.report_dir / "img").glob("k/*.png"))


def test_broken_finding_is_an_error_section_not_a_crash(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", findings=("concepts",), generations=False)
    ws.write_finding("duplicates", pa.table({"key": ["000000010"], "kind": ["exact"]}))
    (ws.findings_dir / "poisons.parquet").write_bytes(b"not a parquet file")
    report = build_report(ws)
    assert report["duplicates"]["status"] == "error"
    assert "lacks columns" in report["duplicates"]["error"]
    assert report["poisons"]["status"] == "error"
    assert report["concepts"]["status"] == "ok"
    page = write_report(ws).read_text()
    assert "could not be read" in page


def test_missing_workspace_is_an_input_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "nope"), "-q"]) == 3
    assert "does not exist" in capsys.readouterr().err


def test_report_options_are_validated(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path), "--thumb-size", "4", "-q"]) == 2
    assert "report.thumb_size" in capsys.readouterr().err


def test_shard_index_reads_by_key_and_skips_unsafe_members(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    img = Image.new("RGB", (8, 8), (200, 10, 10))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    with tarfile.open(shards / "00000.tar", "w") as tf:
        for name, payload in (
            ("000000001.png", data),
            ("000000001.txt", b"cap"),
            ("../000000002.png", data),
            ("/abs/000000003.png", data),
            ("000000004.json", b"{}"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    # a truncated second shard keeps the members before the damage
    with tarfile.open(shards / "00001.tar", "w") as tf:
        for name in ("000000005.png", "000000006.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = (shards / "00001.tar").read_bytes()
    (shards / "00001.tar").write_bytes(raw[: 512 + len(data) + 700])
    index = ShardIndex(shards)
    assert "000000001" in index and "000000005" in index
    assert "000000002" not in index and "000000003" not in index and "000000004" not in index
    assert index.read_bytes("000000001") == data
    got = index.open_image("000000001")
    assert got is not None and np.asarray(got)[0, 0].tolist() == [200, 10, 10]
    assert index.open_image("000000004") is None


@pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium is not installed (`make chromium` or apt-get install chromium)",
)
def test_report_in_headless_chromium(full_ws: Workspace, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    url = (full_ws.report_dir / "index.html").resolve().as_uri()
    result = load_page(url, shot)
    assert result.errors == []
    probe = result.probe
    ids = {s["id"]: s for s in probe["sections"]}
    assert list(ids) == [sid for sid, _ in SECTION_IDS.values()]
    for sid, s in ids.items():
        assert s["status"] == "ok" and s["height"] > 50 and s["text"] > 100, sid
    assert probe["images"] > 40 and probe["broken"] == [] and probe["external"] == []
    assert probe["scripts"] == 0
    assert all(u.startswith("file://") for u in result.requests), result.requests
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape[0] > 2000 and img.shape[1] >= 1200
    assert img.std() > 20  # not blank
    # the top of the page (header, cards) is not blank either
    assert img[:800].std() > 20
