"""Keep/drop decisions and the Beam reshard pipeline."""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audit.cli import main
from audit.errors import InputError
from audit.filter import decide, duplicate_drops
from audit.workspace import Workspace
from tests.report_fixtures import make_workspace


def k(i: int) -> str:
    return f"{i:09d}"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return make_workspace(tmp_path_factory.mktemp("filter") / "ws", generations=False)


def _drops(decision) -> dict[str, list[str]]:
    t = decision.drop
    return dict(zip(t.column("key").to_pylist(), t.column("reasons").to_pylist()))


def test_each_rule_and_reconciliation(ws: Workspace) -> None:
    d = decide(ws, ["duplicates", "poisons", "failed"], ("exact", "near"))
    drops = _drops(d)
    assert drops == {
        k(1): ["failed:failed_to_download"],
        k(2): ["failed:failed_to_download"],
        k(3): ["failed:hash_mismatch"],
        k(11): ["duplicates:exact"],
        k(12): ["duplicates:exact"],
        k(14): ["duplicates:near"],
        k(34): ["poisons:dirty"],
        k(35): ["poisons:clean"],
    }
    dup_of = dict(zip(d.drop.column("key").to_pylist(), d.drop.column("duplicate_of").to_pylist()))
    assert dup_of[k(11)] == dup_of[k(12)] == k(10) and dup_of[k(14)] == k(13)
    kept = set(d.keep.column("key").to_pylist())
    assert kept.isdisjoint(drops) and len(kept) + len(drops) == 60 == d.n_input
    assert k(10) in kept and k(13) in kept and k(36) in kept  # 36 scored but not flagged
    assert d.counts["input"] == 60 and d.counts["kept"] == 52 and d.counts["dropped"] == 8
    assert d.counts["rule:duplicates"] == 3 and d.counts["duplicates:exact"] == 2


def test_only_selected_rules_apply(ws: Workspace) -> None:
    assert set(_drops(decide(ws, ["failed"]))) == {k(1), k(2), k(3)}
    assert set(_drops(decide(ws, ["poisons"]))) == {k(34), k(35)}


def test_caption_groups_merge_with_image_groups(ws: Workspace) -> None:
    # caption group {10, 15} (rep 15) shares 10 with exact group {10, 11, 12} (rep 10): one
    # component, one sample kept, never both or neither
    d = decide(ws, ["duplicates"], ("exact", "near", "caption"))
    drops = _drops(d)
    assert drops[k(15)] == ["duplicates:caption"]
    assert k(10) not in drops and drops[k(11)] == ["duplicates:exact"]


def test_several_reasons_are_all_recorded(tmp_path: Path) -> None:
    w = make_workspace(tmp_path / "ws", generations=False)
    p = w.read_finding("poisons").to_pylist()
    for row in p:
        if row["key"] in (k(3), k(11)):
            row.update(flagged=True, kind="clean")
    w.write_finding("poisons", pa.Table.from_pylist(p))
    drops = _drops(decide(w, ["duplicates", "poisons", "failed"], ("exact",)))
    assert drops[k(3)] == ["failed:hash_mismatch", "poisons:clean"]
    assert drops[k(11)] == ["duplicates:exact", "poisons:clean"]


def test_one_keeper_per_connected_component_on_random_groups() -> None:
    rng = np.random.default_rng(3)
    keys = [k(i) for i in range(200)]
    status = {key: ("ok" if rng.random() > 0.1 else "hash_mismatch") for key in keys}
    rows = []
    for kind in ("exact", "near", "caption"):
        for gid in range(25):
            members = rng.choice(200, size=int(rng.integers(2, 6)), replace=False)
            rep = int(members[0])
            for m in members:
                rows.append(
                    {
                        "key": keys[m],
                        "group_id": gid,
                        "kind": kind,
                        "is_representative": bool(m == rep),
                    }
                )
    out = duplicate_drops(pa.Table.from_pylist(rows), status, ("exact", "near", "caption"))
    # connected components by brute force
    adj: dict[str, set[str]] = defaultdict(set)
    groups: dict[tuple, list[str]] = defaultdict(list)
    for r in rows:
        groups[(r["kind"], r["group_id"])].append(r["key"])
    for members in groups.values():
        for a in members:
            adj[a].update(members)
    seen: set[str] = set()
    for start in adj:
        if start in seen:
            continue
        comp, stack = set(), [start]
        while stack:
            x = stack.pop()
            if x not in comp:
                comp.add(x)
                stack.extend(adj[x] - comp)
        seen |= comp
        kept = [x for x in comp if x not in out]
        assert len(kept) == 1, comp
        assert all(out[x][1] == kept[0] for x in comp - set(kept))


def test_cli_errors_name_the_problem(tmp_path: Path, capsys) -> None:
    w = make_workspace(tmp_path / "ws", findings=("concepts",), generations=False)
    assert main(["filter", str(w.root), "--drop", "duplicates,bogus", "-q"]) == 2
    assert "filter.drop" in capsys.readouterr().err
    assert main(["filter", str(w.root), "--drop", "duplicates", "-q"]) == 3
    assert "laion-audit dedup" in capsys.readouterr().err
    w.write_finding(
        "duplicates",
        pa.table(
            {
                "key": ["999999999", k(10)],
                "group_id": [0, 0],
                "group_size": [2, 2],
                "kind": ["exact", "exact"],
                "representative_key": [k(10), k(10)],
                "is_representative": [False, True],
            }
        ),
    )
    with pytest.raises(InputError, match="not samples of this workspace"):
        decide(w, ["duplicates"])


def _tar_keys(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            out[key].append(ext)
    return out


def test_cli_writes_lists_and_resharded_webdataset(tmp_path: Path) -> None:
    w = make_workspace(tmp_path / "ws", generations=False)
    out = tmp_path / "filtered-shards"
    assert (
        main(
            ["filter", str(w.root), "--drop", "duplicates,poisons,failed", "--out", str(out), "-q"]
        )
        == 0
    )
    keep = pq.read_table(w.filtered_dir / "keep.parquet")
    drop = pq.read_table(w.filtered_dir / "drop.parquet")
    assert keep.num_rows + drop.num_rows == 60
    assert drop.schema.field("reasons").type == pa.list_(pa.string())
    summary = json.loads((w.filtered_dir / "summary.json").read_text())
    assert summary["counts"]["kept"] == 52 and summary["reshard"]["shards"] == 2
    kept = set(keep.column("key").to_pylist())
    dropped = set(drop.column("key").to_pylist())
    got: dict[str, list[str]] = {}
    src: dict[str, list[str]] = {}
    for s in ("00000", "00001"):
        got |= _tar_keys(out / f"{s}.tar")
        src |= _tar_keys(w.shards_dir / f"{s}.tar")
        rows = pq.read_table(out / f"{s}.parquet").column("key").to_pylist()
        assert set(rows) <= kept and not set(rows) & dropped
        stats = json.loads((out / f"{s}_stats.json").read_text())
        assert stats["samples_in"] == stats["samples_out"] + stats["samples_dropped"]
    # every kept sample with an image is copied whole (image, caption, json); no dropped one
    assert set(got) == {key for key in src if key in kept}
    assert all(sorted(got[key]) == sorted(src[key]) == ["jpg", "json", "txt"] for key in got)
    r = summary["reshard"]
    assert r["samples_in"] == 58 and r["samples_out"] == 52 and r["samples_dropped"] == 6
    assert r["parquet_rows_out"] == 52 and not list(out.glob(".*tmp"))


def test_report_shows_the_filter_summary(ws: Workspace) -> None:
    from audit.filter import write_decision
    from audit.report import build_report
    from audit.report.html import Renderer

    write_decision(ws, decide(ws, ["duplicates", "poisons", "failed"]), {"drop": ["failed"]})
    report = build_report(ws)
    counts = report["dataset"]["filtered"]["counts"]
    assert (counts["input"], counts["kept"], counts["dropped"]) == (60, 52, 8)
    html = Renderer(report, ws, ws.report_dir)._filtered(report["dataset"]["filtered"])
    assert "keeps 52 of 60 samples and drops 8" in html
    assert "<td>failed:hash_mismatch</td><td class=num>1</td>" in html
