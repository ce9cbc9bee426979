"""Poison candidates: pure detectors on synthetic vectors, the stage on a synthetic workspace,
and (when the testbed and the tiny CLIP exist) planted poisons found on a small testbed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from detectors import poisons as P
from detectors.stats import normalize_rows

CONCEPTS = [f"thing{i}" for i in range(6)]


def synthetic(
    n_per: int = 300,
    k: int = 6,
    d: int = 48,
    n_poison: int = 6,
    seed: int = 0,
    poisons: bool = True,
) -> dict:
    """Concept clusters with style directions; per concept ``n_poison`` dirty-label images (an
    image of the next concept) and ``n_poison`` clean-label ones (pulled toward one anchor image
    of the next concept, caption unchanged)."""
    rng = np.random.default_rng(seed)
    cdir = normalize_rows(rng.normal(size=(k, d)))
    styles = normalize_rows(rng.normal(size=(5, d)))
    labels = np.repeat(np.arange(k), n_per)
    n = len(labels)
    st = rng.integers(0, len(styles), n)
    img = normalize_rows(cdir[labels] + 0.3 * styles[st] + 0.2 * rng.normal(size=(n, d)))
    txt = normalize_rows(cdir[labels] + 0.25 * styles[st] + 0.15 * rng.normal(size=(n, d)))
    kind = np.zeros(n, dtype=int)
    if poisons:
        for a in range(k):
            b = (a + 1) % k
            sel = rng.choice(np.flatnonzero(labels == a), 2 * n_poison, replace=False)
            dirty, clean = sel[:n_poison], sel[n_poison:]
            img[dirty] = normalize_rows(
                cdir[b] + 0.3 * styles[st[dirty]] + 0.2 * rng.normal(size=(n_poison, d))
            )
            anchor = img[np.flatnonzero(labels == b)[0]]
            img[clean] = normalize_rows(
                0.35 * img[clean] + 0.65 * anchor + 0.03 * rng.normal(size=(n_poison, d))
            )
            kind[dirty], kind[clean] = 1, 2
    named = np.zeros((n, k), dtype=bool)
    named[np.arange(n), labels] = True
    concept_emb = normalize_rows(cdir + 0.1 * rng.normal(size=(k, d)))
    return {
        "img": img,
        "txt": txt,
        "cos": (img * txt).sum(1),
        "named": named,
        "labels": labels,
        "kind": kind,
        "concept_emb": concept_emb,
    }


def _score(s: dict, **kw) -> pd.DataFrame:
    members = [np.flatnonzero(s["named"][:, j]) for j in range(s["named"].shape[1])]
    raw = P.score_concepts(
        s["img"],
        s["cos"],
        members,
        CONCEPTS[: len(members)],
        concept_emb=s["concept_emb"],
        named=s["named"],
        **kw,
    )
    return P.combine(raw)


# ---- pure detectors --------------------------------------------------------------------------


def test_adaptive_k_stays_in_range_and_shrinks_for_small_concepts() -> None:
    assert P.adaptive_k(2) == 0
    assert P.adaptive_k(10_000) == 32
    assert P.adaptive_k(400) == 20
    assert P.adaptive_k(100) == 16
    assert P.adaptive_k(20) == 5
    assert all(1 <= P.adaptive_k(n) < n for n in range(3, 200))


def test_concept_pull_margin_and_nearest_other() -> None:
    c = np.eye(3, dtype=np.float32)
    img = normalize_rows(np.array([[1, 0.1, 0], [0.2, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32))
    named = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0]], bool)
    margin, nearest = P.concept_pull(img, c, named)
    assert margin[0] < 0 and margin[1] > 0 and margin[2] < 0
    assert nearest[1] == 1
    assert margin[3] < 0  # caption names both concepts it is near: no pull
    none = np.zeros((4, 3), bool)
    m2, n2 = P.concept_pull(img, c, none)
    assert np.isnan(m2).all() and (n2 == -1).all()
    with pytest.raises(ValueError, match="named must be"):
        P.concept_pull(img, c, named[:, :2])


def test_alignment_gmm_is_zero_without_a_mismatched_population() -> None:
    rng = np.random.default_rng(1)
    clean = rng.normal(0.3, 0.03, 500)
    assert np.all(P.alignment_gmm(clean) == 0.0)
    mixed = np.concatenate([clean, rng.normal(0.05, 0.02, 15)])
    p = P.alignment_gmm(mixed)
    assert p[500:].min() > 0.9
    assert (p[:500] > 0.5).mean() < 0.01
    with_nan = P.alignment_gmm(np.array([0.3, np.nan, 0.2]))
    assert np.isnan(with_nan[1]) and with_nan[0] == 0.0


def test_neighbour_and_spectral_scores_single_out_outliers() -> None:
    rng = np.random.default_rng(2)
    x = normalize_rows(
        np.r_[
            rng.normal(size=(300, 16)) * 0.2 + np.eye(16)[0],
            normalize_rows(rng.normal(size=(5, 16))),
        ]
    )
    out = np.r_[np.zeros(300, bool), np.ones(5, bool)]
    k = P.adaptive_k(len(x))
    assert P.auroc(out, P.k_distance(x, k)) > 0.99
    assert P.auroc(out, P.lof_scores(x, k)) > 0.99
    # the reference-subsample path (bounded memory) agrees on who is an outlier
    assert P.auroc(out, P.k_distance(x, k, max_reference=150)) > 0.95
    assert P.auroc(out, P.lof_scores(x, k, max_reference=150)) > 0.95
    # spectral: a shifted minority shares one direction
    y = rng.normal(size=(300, 16)) * 0.1
    y[:9] += 0.5 * np.eye(16)[3]
    lab = np.arange(300) < 9
    assert P.auroc(lab, P.spectral_signature(y)) > 0.99
    assert np.isnan(P.k_distance(x[:3], 5)).all()


def test_anchor_collapse_separates_one_anchor_groups_from_natural_images() -> None:
    rng = np.random.default_rng(3)
    centre = normalize_rows(rng.normal(size=(1, 32)))[0]
    natural = normalize_rows(centre + 0.6 * rng.normal(size=(200, 32)))
    anchor = natural[0]
    collapsed = normalize_rows(anchor + 0.1 * rng.normal(size=(8, 32)))
    assert (P.anchor_collapse(collapsed, natural[1:]) < 0.05).all()
    # a group of natural images of the reference concept is not collapsed
    assert np.median(P.anchor_collapse(natural[1:9], natural[9:])) > 0.2
    assert np.isnan(P.anchor_collapse(collapsed[:2], natural)).all()


def test_combined_score_finds_both_poison_kinds_on_synthetic_vectors() -> None:
    s = synthetic()
    comb = _score(s)
    kind = s["kind"][comb["row"].to_numpy()]
    comb_s = comb["combined_score"].to_numpy()
    assert P.auroc(kind == 1, comb_s) > 0.99
    assert P.auroc(kind == 2, comb_s) > 0.9
    assert P.auroc(kind == 1, -comb[P.ALIGNMENT_COS].to_numpy()) > 0.9
    flags = P.flag(comb, threshold=6.0)
    assert flags[kind == 1].mean() > 0.5
    # the reasons name what fired, with the concept the image is pulled toward
    r = comb.loc[(kind == 1) & flags, "reasons"].iloc[0]
    assert P.CONCEPT_PULL in r and "nearer 'thing" in r
    kinds = P.guess_kind(comb, flags)
    assert set(kinds[~flags]) == {"none"}
    assert set(kinds[flags]) <= {"dirty", "clean"}


def test_sum_rule_and_spectral_evidence_are_available() -> None:
    s = synthetic()
    members = [np.flatnonzero(s["named"][:, j]) for j in range(s["named"].shape[1])]
    raw = P.score_concepts(
        s["img"], s["cos"], members, CONCEPTS, concept_emb=s["concept_emb"], named=s["named"]
    )
    params = P.PoisonParams(rule="sum", evidence=(*P.DEFAULT_EVIDENCE, P.SPECTRAL))
    comb = P.combine(raw, params)
    assert f"{P.SPECTRAL}_z" in comb.columns
    kind = s["kind"][comb["row"].to_numpy()]
    assert P.auroc(kind == 1, comb["combined_score"].to_numpy()) > 0.97
    with pytest.raises(ValueError, match="rule"):
        P.PoisonParams(rule="mean")
    with pytest.raises(ValueError, match="evidence"):
        P.PoisonParams(evidence=("nope",))


def test_clean_synthetic_data_gives_few_flags() -> None:
    s = synthetic(poisons=False)
    comb = _score(s)
    fpr = P.flag(comb, threshold=6.0).mean()
    assert fpr <= 0.01, fpr


def test_expected_rate_is_a_review_quota_per_concept_never_a_flag() -> None:
    s = synthetic(n_per=200, k=3)
    comb = _score(s)
    review = P.review_quota(comb, expected_rate=0.02)
    per = pd.Series(review).groupby(comb["concept"].to_numpy()).sum()
    assert (per == 6).all()  # ceil(1.5 * 0.02 * 200)
    # the same quota on clean data: a fixed-size list whatever the evidence
    clean = _score(synthetic(n_per=200, k=3, poisons=False))
    assert P.review_quota(clean, expected_rate=0.02).sum() == review.sum()
    with pytest.raises(ValueError):
        P.flag(comb)
    with pytest.raises(TypeError):
        P.flag(comb, expected_rate=0.02)  # a quota cannot flag
    with pytest.raises(ValueError):
        P.review_quota(comb, expected_rate=1.5)


def test_small_concepts_get_pooled_z_and_no_neighbour_scores() -> None:
    s = synthetic(n_per=100, k=3, n_poison=2)
    members = [np.flatnonzero(s["named"][:, 0]), np.flatnonzero(s["named"][:, 1])[:5]]
    raw = P.score_concepts(
        s["img"],
        s["cos"],
        members,
        CONCEPTS[:2],
        concept_emb=s["concept_emb"][:2],
        named=s["named"][:, :2],
    )
    small = raw[raw["concept"] == CONCEPTS[1]]
    assert len(small) == 5 and small[P.LOF].isna().all() and (small["k"] == 0).all()
    comb = P.combine(raw)
    assert np.isfinite(comb["combined_score"]).all()


def test_metrics() -> None:
    lab = np.array([0, 0, 1, 1], bool)
    assert P.auroc(lab, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert P.auroc(lab, np.array([0.1, 0.1, 0.1, 0.1])) == 0.5
    assert P.auroc(lab, np.array([np.nan, 0.2, 0.3, np.inf])) == 1.0
    assert P.precision_at(lab, np.array([0.9, 0.2, 0.3, 0.4])) == 0.5
    assert np.isnan(P.auroc(np.zeros(3, bool), np.arange(3.0)))


# ---- measured coverage: one place for the numbers, docs/poisons.md and the report -----------

ROOT = Path(__file__).resolve().parents[1]


def test_coverage_numbers_are_the_benchmark_results() -> None:
    res = json.loads((ROOT / P.MEASURED_SOURCE).read_text())
    served, jpeg = res["summary"]["report|served"], res["summary"]["report|jpeg75"]
    for score, by_kind in P.MEASURED_AUROC.items():
        for kind, (a, b) in by_kind.items():
            if score == P.COMBINED:
                got = [
                    t["configs"]["default"][kind]["combined_auroc_global"] for t in (served, jpeg)
                ]
            else:
                got = [t["scores"][kind][score] for t in (served, jpeg)]
            assert [a, b] == [round(g, 2) for g in got], (score, kind)
    for kind, (a, b) in P.MEASURED_RECALL.items():
        got = [t["configs"]["default"][kind]["recall_at_threshold"] for t in (served, jpeg)]
        assert [a, b] == [round(g, 2) for g in got], kind
    runs = [r for r in res["runs"] if r["role"] == "report"]
    for kind in ("nightshade", "glaze", "clean"):
        z = [v for r in runs for v in r["served"]["chroma_z"][kind]]
        assert P.CHROMA_Z[kind] == (round(min(z), 1), round(max(z), 1)), kind
    z = [v for r in runs for v in r["jpeg75"]["chroma_z"]["nightshade"]]
    assert P.CHROMA_Z["nightshade jpeg75"] == (round(min(z), 1), round(max(z), 1))
    for q, key in (("q95", "ordinary q95"), ("q100", "ordinary max")):
        z = [r["served"]["chroma_z"]["ordinary"][q] for r in runs]
        assert P.CHROMA_Z[key] == (round(min(z), 1), round(max(z), 1)), key
    photos = res["real_photos"]["report"]
    for label, pair in P.REAL_PHOTOS.items():
        got = [photos["eps"][e]["auroc"][label]["auroc"] for e in ("8/255", "16/255")]
        assert list(pair) == [round(g, 2) for g in got], label
    assert round(photos["z_clean"]["png"]["max"], 1) == P.REAL_PHOTOS_CLEAN_PNG_Z_MAX


def test_ingest_numbers_are_the_benchmark_results() -> None:
    ing = json.loads((ROOT / P.MEASURED_SOURCE).read_text())["ingest"]
    by = {v: [r for r in ing["runs"] if r["variant"] == v] for v in ("served", "jpeg75")}
    assert all(len(rs) == len(ing["report_seeds"]) for rs in by.values())
    for kind, pair in P.MEASURED_INGEST.items():
        got = [np.mean([r["kinds"][kind]["combined_auroc_global"] for r in by[v]]) for v in by]
        assert list(pair) == [round(float(g), 2) for g in got], kind
    for name, key in (("stage_concepts", None), ("generator_concepts", "with_generator_concepts")):
        got = [
            np.mean([(r[key] if key else r)["fpr_at_threshold"] for r in by[v]]) for v in by
        ]  # fmt: skip
        assert list(P.MEASURED_INGEST_FPR[name]) == [round(float(g), 4) for g in got], name
    for r in ing["runs"]:
        assert r["default_source"] and r["n_concepts"] > r["generator_concepts"]


def test_coverage_says_what_each_score_sees() -> None:
    cov = P.coverage(P.DEFAULT_EVIDENCE, [P.CHROMA_HF, P.FREQ_HF])
    chroma = cov["scores"][P.CHROMA_HF]
    assert chroma["sees"] == ["clean", "nightshade", "glaze"] and chroma["blind_to"] == ["dirty"]
    assert chroma["in_combined"] and chroma["computed"]
    assert not cov["scores"][P.VAE_RECON]["computed"]  # no --generator in this run
    assert cov["scores"][P.FREQ_HF]["computed"] and not cov["scores"][P.FREQ_HF]["in_combined"]
    assert cov["scores"][P.KDIST]["sees"] == ["dirty"]
    assert any("not flagged" in line for line in cov["limits"])
    assert any("JPEG 4:2:0" in line for line in cov["limits"])
    json.dumps(cov)  # goes into poisons.json as is
    no_pixels = P.coverage(P.DEFAULT_EVIDENCE, [])["scores"][P.CHROMA_HF]  # --no-pixel-scores
    assert not no_pixels["computed"] and not no_pixels["in_combined"]


def test_docs_poisons_holds_the_generated_coverage_text() -> None:
    doc = (ROOT / "docs" / "poisons.md").read_text()
    start = "<!-- coverage: generated by detectors.poisons.coverage_markdown() -->\n"
    block = doc[doc.index(start) + len(start) : doc.index("<!-- end coverage -->")]
    assert block == P.coverage_markdown()


# ---- the stage on a synthetic workspace ------------------------------------------------------


def _write_workspace(
    root: Path, s: dict, split: list[int], unnamed: tuple[int, ...] = ()
) -> list[str]:
    from audit.workspace import Workspace, embedding_schema

    n, d = s["img"].shape
    keys = [f"{i:09d}" for i in range(n)]
    captions = [f"a picture of a {CONCEPTS[c]}" for c in s["labels"]]
    for i in unnamed:  # captions about the concept that do not use its word
        captions[i] = "a picture of something"
    status = ["ok"] * n
    for i in split:
        status[i] = "hash_mismatch"
    # two failed rows without embeddings, one without caption-concept match
    keys += ["900000000", "900000001"]
    captions += ["a thing0 that failed", None]
    status += ["failed_to_download", "failed_to_decode"]
    img = [row.astype(np.float16).tolist() for row in s["img"]] + [None, None]
    txt = [row.astype(np.float16).tolist() for row in s["txt"]] + [None, None]
    clip = [float(v) for v in s["cos"]] + [None, None]
    # a split-view row whose caption names no concept (still output, flagged)
    keys.append("900000002")
    captions.append("nothing to see here")
    status.append("hash_mismatch")
    img.append(s["img"][0].astype(np.float16).tolist())
    txt.append(s["txt"][0].astype(np.float16).tolist())
    clip.append(float(s["cos"][0]))
    m = len(keys)
    table = pa.table(
        {
            "key": keys,
            "url": [f"http://127.0.0.1/{k}.jpg" for k in keys],
            "caption": captions,
            "sha256": ["0" * 64] * m,
            "width": pa.array([64] * m, pa.int32()),
            "height": pa.array([64] * m, pa.int32()),
            "status": status,
            "error": [None] * m,
            "image_emb": pa.array(img, pa.list_(pa.float16(), d)),
            "text_emb": pa.array(txt, pa.list_(pa.float16(), d)),
            "clip_score": pa.array(clip, pa.float32()),
        },
        schema=embedding_schema(d),
    )
    ws = Workspace(root)
    ws.write_part(ws.part_path(0), table)
    return keys


def test_stage_writes_ranked_findings_and_vulnerability(tmp_path: Path) -> None:
    from audit import cli
    from audit.workspace import Workspace

    s = synthetic(n_per=150, k=4, n_poison=3)
    split_rows = [5, 160]
    _write_workspace(tmp_path, s, split_rows)
    # a concepts finding for three of the four concepts (thing3 is missing from it)
    Workspace(tmp_path).write_finding(
        "concepts",
        pa.table(
            {
                "concept": CONCEPTS[:3], "word_count": [151, 150, 150],
                "word_freq": [0.25, 0.25, 0.25], "semantic_count": [400, 20, 160],
                "semantic_freq": [0.66, 0.03, 0.26], "semantic_threshold": [0.5] * 3,
                "sparse": [False, True, False], "n_total": [602] * 3,
            }
        ),
    )  # fmt: skip
    code = cli.main(["poisons", str(tmp_path), "-q", "--concepts", ",".join(CONCEPTS[:4])])
    assert code == 0
    ws = Workspace(tmp_path)
    df = ws.read_finding("poisons").to_pandas()
    for col in (
        "key",
        "concept",
        P.ALIGNMENT_COS,
        P.ALIGNMENT_GMM,
        P.CONCEPT_PULL,
        P.KDIST,
        P.LOF,
        P.SPECTRAL,
        P.SPLIT_VIEW,
        "combined_score",
        "rank",
        "flagged",
        "kind",
        "reasons",
    ):
        assert col in df.columns, col
    assert df["key"].is_unique and len(df) == len(s["img"]) + 1
    assert df["rank"].tolist() == list(range(1, len(df) + 1))
    sv = df[df[P.SPLIT_VIEW]]
    assert sorted(sv["key"]) == [f"{i:09d}" for i in split_rows] + ["900000002"]
    assert sv["flagged"].all() and (sv["kind"] == "split_view").all()
    assert (sv["rank"] <= 3).all() and sv["reasons"].str.contains("hash_mismatch").all()
    assert sv.set_index("key")["concept"].isna().loc["900000002"]
    df = df[df["key"] != "900000002"]
    kind = s["kind"][df["key"].astype(int).to_numpy()]
    comb = df["combined_score"].to_numpy()
    ok = ~df[P.SPLIT_VIEW].to_numpy()
    assert P.auroc(kind[ok] == 1, comb[ok]) > 0.97
    assert (df.loc[df["flagged"] & ~df[P.SPLIT_VIEW], "reasons"] != "").all()
    meta = ws.finding_meta("poisons")
    assert meta["concept_embeddings"] == "caption_centroids"  # no model.json in this workspace
    assert meta["summary"]["n_unscorable"] == 2 and meta["summary"]["n_split_view"] == 3
    vuln = pd.read_parquet(tmp_path / "findings" / "concept_vulnerability.parquet")
    assert sorted(vuln["concept"]) == CONCEPTS[:4]
    assert vuln["vulnerability_rank"].tolist() == [1, 2, 3, 4]
    v = vuln.set_index("concept")
    assert v.loc["thing1", "sparsity_rank"] == 1  # semantic count 20: the sparsest
    assert v.loc["thing0", "sparsity_rank"] == 4  # semantic count 400
    assert bool(v.loc["thing1", "sparse"]) and pd.isna(v.loc["thing3", "sparse"])
    assert v.loc["thing1", "share_if_100_poisons"] == pytest.approx(100 / 120)
    assert int(vuln.loc[vuln["concept"] == "thing0", "word_count"].iloc[0]) == 151
    assert vuln["candidates"].sum() == int((df["flagged"] & df["concept"].notna()).sum())
    assert json.loads((tmp_path / "findings" / "poisons.json").read_text())["rows"] == len(df) + 1


def test_stage_expected_rate_and_config_errors(tmp_path: Path, capsys) -> None:
    from audit import cli
    from audit.workspace import Workspace

    s = synthetic(n_per=100, k=3, n_poison=2)
    _write_workspace(tmp_path, s, [])
    assert (
        cli.main(
            [
                "poisons",
                str(tmp_path),
                "-q",
                "--concepts",
                ",".join(CONCEPTS[:3]),
                "--expected-rate",
                "0.02",
            ]
        )
        == 0
    )
    df = Workspace(tmp_path).read_finding("poisons").to_pandas()
    assert df.groupby("concept")["review"].sum().tolist() == [3, 3, 3]
    # flags come from the evidence alone: the same with and without the quota
    meta = Workspace(tmp_path).finding_meta("poisons")
    assert meta["summary"]["n_review"] == 9 and meta["parameters"]["review_rule"]
    assert cli.main(["poisons", str(tmp_path), "-q", "--concepts", ",".join(CONCEPTS[:3])]) == 0
    plain = Workspace(tmp_path).read_finding("poisons").to_pandas().set_index("key")
    assert (df.set_index("key")["flagged"] == plain.loc[df["key"], "flagged"]).all()
    assert not plain["review"].any()
    assert cli.main(["poisons", str(tmp_path), "--expected-rate", "2"]) == 2
    assert "poisons.expected_rate" in capsys.readouterr().err
    assert cli.main(["poisons", str(tmp_path), "--match", "semantic", "--concepts", "thing0"]) == 2
    assert "semantic" in capsys.readouterr().err


def test_clean_data_with_expected_rate_gives_zero_poison_candidates(tmp_path: Path) -> None:
    """--expected-rate on clean data used to flag 1.5 x R of every concept as poison
    candidates; now it only fills the review list and nothing is flagged or dropped."""
    from audit import cli
    from audit.workspace import Workspace

    s = synthetic(n_per=100, k=4, poisons=False)
    _write_workspace(tmp_path, s, [])  # plus one split-view row: a fact, always flagged
    cmd = ["poisons", str(tmp_path), "-q", "--concepts", ",".join(CONCEPTS[:4])]
    assert cli.main([*cmd, "--expected-rate", "0.05"]) == 0
    ws = Workspace(tmp_path)
    df = ws.read_finding("poisons").to_pandas()
    summary = ws.finding_meta("poisons")["summary"]
    assert df.loc[df["flagged"], "kind"].tolist() == ["split_view"]
    assert summary["flagged_by_kind"] == {"split_view": 1}
    assert df.groupby("concept")["review"].sum().tolist() == [8] * 4  # ceil(1.5 * 0.05 * 100)
    assert summary["n_review"] == summary["n_review_not_flagged"] == 32
    assert (df.loc[df["review"], "kind"] == "none").all()
    assert df.loc[df["review"], "reasons"].str.startswith("top-ranked for review").all()
    vuln = pd.read_parquet(tmp_path / "findings" / "concept_vulnerability.parquet")
    assert vuln["candidates"].sum() == 0
    # the report counts candidates by evidence and shows the quota apart, labelled as such
    assert cli.main(["report", str(tmp_path), "-q"]) == 0
    rep = json.loads((ws.report_dir / "report.json").read_text())["poisons"]
    assert (rep["n_flagged"], rep["n_review"], rep["n_review_not_flagged"]) == (1, 32, 32)
    assert all(r["review"] and not r["flagged"] for r in rep["review"])
    page = (ws.report_dir / "index.html").read_text()
    assert '<div class="v">1</div><div class="l">poison candidates flagged' in page
    assert "32 samples top-ranked for review" in page and "not poison candidates" in page


# ---- planted poisons on a small SynthLAION testbed (tiny CLIP, real model) -----------------


def _testbed_workspace(root: Path, n: int, seed: int, **rates) -> pd.DataFrame:
    """Build a testbed, embed every served file with the tiny CLIP (what the embed stage does,
    without Beam), and write it as a workspace: split-view rows get status hash_mismatch with
    the served image's embedding; files that do not decode are failed rows. Returns truth."""
    from audit.models import encode_images, encode_texts, load_clip, model_info
    from audit.testbed.generate import build_testbed
    from audit.workspace import Workspace, embedding_schema
    from pipelines.decode import DecodeError, decode_image

    tb = root / "testbed"
    model, preprocess, tokenizer = load_clip("tiny-synth")
    build_testbed(tb, n=n, seed=seed, clip_model=(model, preprocess), **rates)
    truth = pd.read_parquet(tb / "truth.parquet")
    images, ok, errors = [], [], []
    for fname in truth["file_name"]:
        path = tb / "files" / fname
        try:
            images.append(decode_image(path.read_bytes() if path.exists() else None).image)
            ok.append(True)
            errors.append(None)
        except DecodeError as exc:
            ok.append(False)
            errors.append(str(exc))
    ok_arr = np.array(ok)
    img = encode_images(model, preprocess, images)
    txt = encode_texts(model, tokenizer, truth["caption"][ok_arr].tolist())
    d = img.shape[1]
    img_col: list = [None] * len(truth)
    txt_col: list = [None] * len(truth)
    clip: list = [None] * len(truth)
    for j, i in enumerate(np.flatnonzero(ok_arr)):
        img_col[i] = img[j].astype(np.float16).tolist()
        txt_col[i] = txt[j].astype(np.float16).tolist()
        clip[i] = float(img[j] @ txt[j])
    split = (truth["broken_kind"].fillna("") == "split_view").to_numpy()
    status = np.where(split, "hash_mismatch", np.where(ok_arr, "ok", "failed_to_decode"))
    m = len(truth)
    table = pa.table(
        {
            "key": truth["key"], "url": truth["url"], "caption": truth["caption"],
            "sha256": truth["sha256"], "width": pa.array(truth["width"], pa.int32()),
            "height": pa.array(truth["height"], pa.int32()), "status": status,
            "error": errors, "image_emb": pa.array(img_col, pa.list_(pa.float16(), d)),
            "text_emb": pa.array(txt_col, pa.list_(pa.float16(), d)),
            "clip_score": pa.array(clip, pa.float32()),
        },
        schema=embedding_schema(d),
    )  # fmt: skip
    assert table.num_rows == m
    ws = Workspace(root / "ws")
    ws.write_part(ws.part_path(0), table)
    ws.write_json(ws.embeddings_dir / "model.json", model_info("tiny-synth", None, model))
    return truth


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="testbed v2 (varied drawings) with the retrained tiny-synth: dirty-label AUROC 0.93 "
    "and recall 0.17 at the default flag rule, whose z-threshold was tuned on v1; it must be "
    "retuned on seeds that are not reported (issue 16 item 2). Strict: un-mark once it passes.",
)
def test_planted_poisons_found_on_a_small_testbed(tmp_path: Path) -> None:
    from audit import cli
    from audit.workspace import Workspace

    truth = _testbed_workspace(
        tmp_path, n=1500, seed=11, dirty_rate=6 / 1500, dirty_pairs=("cat:bird",),
        clean_rate=8 / 1500, clean_pairs=("dog:cat",),
    )  # fmt: skip
    assert cli.main(["poisons", str(tmp_path / "ws"), "-q"]) == 0
    ws = Workspace(tmp_path / "ws")
    df = (
        ws.read_finding("poisons")
        .to_pandas()
        .merge(truth[["key", "poison_kind", "broken_kind"]], on="key", how="left")
    )
    assert ws.finding_meta("poisons")["concept_embeddings"] == "prompt_ensemble:tiny-synth"
    sv = (df["broken_kind"] == "split_view").to_numpy()
    assert sv.sum() == (truth["broken_kind"] == "split_view").sum() > 0
    assert df.loc[sv, "flagged"].all() and (df.loc[sv, "kind"] == "split_view").all()
    assert df.loc[sv, "rank"].max() == sv.sum()  # split-view rows come first
    ok = ~sv
    comb = df["combined_score"].to_numpy()[ok]
    kind = df["poison_kind"].to_numpy()[ok]
    for k in ("dirty", "clean"):
        sel = (kind == k) | (kind == "none")
        auc = P.auroc(kind[sel] == k, comb[sel])
        assert auc >= 0.97, (k, auc)
        recall = df.loc[df["poison_kind"] == k, "flagged"].mean()
        assert recall >= 0.75, (k, recall)
    flagged_dirty = df[(df["poison_kind"] == "dirty") & df["flagged"]]
    assert (flagged_dirty["kind"] == "dirty").mean() >= 0.75
    assert flagged_dirty["reasons"].str.contains(P.ALIGNMENT_COS).all()
    fpr = df.loc[ok & (df["poison_kind"] == "none").to_numpy(), "flagged"].mean()
    assert fpr <= 0.02, f"false-positive rate at the default threshold: {fpr:.4f}"
    vuln = pd.read_parquet(tmp_path / "ws" / "findings" / "concept_vulnerability.parquet")
    assert vuln.set_index("concept").loc["dog", "candidates"] >= 6


@pytest.mark.slow
def test_clean_testbed_gives_few_flags(tmp_path: Path) -> None:
    from audit import cli
    from audit.workspace import Workspace

    truth = _testbed_workspace(
        tmp_path, n=1200, seed=12, dirty_rate=0.0, clean_rate=0.0, nightshade_rate=0.0,
        glaze_rate=0.0,
    )  # fmt: skip
    assert (truth["poison_kind"] == "none").all()
    assert cli.main(["poisons", str(tmp_path / "ws"), "-q"]) == 0
    df = Workspace(tmp_path / "ws").read_finding("poisons").to_pandas()
    df = df.merge(truth[["key", "broken_kind"]], on="key")
    clean = df[df["broken_kind"] != "split_view"]
    fpr = clean["flagged"].mean()
    # measured 0.3-0.9% on the benchmark testbeds at the default threshold
    assert fpr <= 0.015, f"false-positive rate at the default threshold: {fpr:.4f}"
    assert (clean.loc[clean["flagged"], "reasons"] != "").all()


def test_semantic_membership_uses_the_concepts_finding(tmp_path: Path) -> None:
    from audit import cli
    from audit.workspace import Workspace

    s = synthetic(n_per=100, k=3, n_poison=2)
    unnamed = (1, 2, 3)  # rows of thing0 whose captions do not say "thing0"
    _write_workspace(tmp_path, s, [], unnamed=unnamed)
    ws = Workspace(tmp_path)
    ref = normalize_rows(np.stack([s["txt"][s["labels"] == j].mean(0) for j in range(3)]))
    ws.write_finding(
        "concepts",
        pa.table(
            {
                "concept": CONCEPTS[:3], "word_count": [97, 100, 100],
                "semantic_threshold": [0.5] * 3,
                "reference_emb": pa.array(ref.tolist(), pa.list_(pa.float32(), ref.shape[1])),
            }
        ),
    )  # fmt: skip
    unnamed_keys = {f"{i:09d}" for i in unnamed}
    assert cli.main(["poisons", str(tmp_path), "-q"]) == 0
    df = ws.read_finding("poisons").to_pandas()
    assert unnamed_keys.isdisjoint(df["key"])
    assert cli.main(["poisons", str(tmp_path), "-q", "--match", "both"]) == 0
    df = ws.read_finding("poisons").to_pandas().set_index("key")
    assert unnamed_keys <= set(df.index)
    assert (df.loc[sorted(unnamed_keys), "concept"] == "thing0").all()
    assert ws.finding_meta("poisons")["semantic_reference"] == "concepts finding"


# ---- poisons aimed at the generator (Nightshade- and Glaze-style, tiny-sd's VAE) -------------


def _served_rgb(tb: Path, name: str) -> Image.Image:
    from pipelines.decode import decode_image

    return decode_image((tb / "files" / name).read_bytes()).image


def test_generator_poisons_are_deterministic_and_move_the_vae_latent(tmp_path: Path) -> None:
    """Nightshade- and Glaze-style testbed poisons: same seed, same bytes; recorded in the truth
    with their target; within the L-infinity budget of their source drawing (plus the JPEG
    q95 they are served as); and their VAE latent is measurably nearer their target's."""
    from audit.testbed.generate import build_testbed, load_truth, poison_sources
    from audit.testbed.poison import latent_distances, load_vae

    vae = load_vae("tiny-sd")
    kw = dict(
        n=100,
        dirty_rate=0.0,
        clean_rate=0.0,
        nightshade_rate=0.04,
        glaze_rate=0.04,
        gen_steps=30,
        work_rate=0.0,
        vae=vae,
    )
    s1 = build_testbed(tmp_path / "a", seed=3, **kw)
    build_testbed(tmp_path / "b", seed=3, **kw)
    build_testbed(tmp_path / "c", seed=4, **kw)
    ta, tb_, tc = (load_truth(tmp_path / x).to_pandas() for x in "abc")
    pa_ = ta[ta["poison_kind"].isin(["nightshade", "glaze"])]
    assert sorted(pa_["poison_kind"].value_counts().items()) == [("glaze", 4), ("nightshade", 4)]
    assert (pa_["served_sha256"].to_numpy() == tb_.loc[pa_.index, "served_sha256"]).all()
    assert set(pa_["served_sha256"]).isdisjoint(tc["served_sha256"].dropna())
    ns = pa_[pa_["poison_kind"] == "nightshade"]
    assert (ns["concept"] == "house").all() and (ns["caption_concept"] == "house").all()
    assert (ns["poison_target"] == "clock").all()
    gl = pa_[pa_["poison_kind"] == "glaze"]
    assert (gl["style"] == "watercolor").all() and (gl["poison_target"] == "pixel art").all()
    assert all(("watercolo" in c.lower()) for c in gl["caption"])  # the caption names the style
    src = poison_sources(tmp_path / "a")
    assert set(src) == set(pa_["key"])
    served = [_served_rgb(tmp_path / "a", f) for f in pa_["file_name"]]
    sources = [src[k]["source"] for k in pa_["key"]]
    targets = [src[k]["target"] for k in pa_["key"]]
    assert [src[k]["target_label"] for k in pa_["key"]] == pa_["poison_target"].tolist()
    eps = 16  # gen_eps default, in pixels; the served JPEG q95 adds its own rounding
    for a, b in zip(served, sources, strict=True):
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        assert diff.mean() <= eps and np.percentile(diff, 99) <= eps + 12
    before = latent_distances(vae, sources, targets)
    after = latent_distances(vae, served, targets)
    ratio = after / before
    assert (ratio < 0.95).all() and ratio.mean() < 0.8, ratio
    # the generator's own measurement agrees
    g = s1["generator_poisons"]
    assert g["nightshade"]["count"] == 4 and g["nightshade"]["latent_distance_ratio_mean"] < 0.8
    assert g["glaze"]["latent_distance_ratio_mean"] < 0.8
    assert g["eps_pixels"] == 16.0


def test_z_threshold_is_the_flag_rule_and_threshold_its_old_spelling(tmp_path: Path) -> None:
    from audit import cli
    from audit.workspace import Workspace

    s = synthetic(n_per=100, k=3, n_poison=3)
    _write_workspace(tmp_path, s, [])
    cmd = ["poisons", str(tmp_path), "-q", "--concepts", ",".join(CONCEPTS[:3])]
    flags = {}
    for spelling in ("--z-threshold", "--threshold"):
        assert cli.main([*cmd, spelling, "2.5"]) == 0
        ws = Workspace(tmp_path)
        assert ws.finding_meta("poisons")["parameters"]["z_threshold"] == 2.5
        flags[spelling] = ws.read_finding("poisons").to_pandas().set_index("key")["flagged"]
    assert flags["--z-threshold"].equals(flags["--threshold"])
    assert cli.main(cmd) == 0  # default 6: fewer flags than 2.5
    default = Workspace(tmp_path).read_finding("poisons").to_pandas()["flagged"].sum()
    assert default < flags["--z-threshold"].sum()
    # the old audit.toml key still works
    (tmp_path / "old.toml").write_text("[poisons]\nthreshold = 2.5\n")
    assert cli.main([*cmd, "-c", str(tmp_path / "old.toml")]) == 0
    assert Workspace(tmp_path).finding_meta("poisons")["parameters"]["z_threshold"] == 2.5


def test_bad_generator_and_unknown_testbed_concepts_are_one_clear_error(
    tmp_path: Path, capsys
) -> None:
    from audit import cli

    s = synthetic(n_per=60, k=2, n_poison=2)
    _write_workspace(tmp_path / "ws", s, [])
    cmd = ["poisons", str(tmp_path / "ws"), "-q", "--concepts", ",".join(CONCEPTS[:2])]
    not_a_pipeline = tmp_path / "weights"
    not_a_pipeline.mkdir()
    (not_a_pipeline / "model.safetensors").write_bytes(b"not a model")
    assert cli.main([*cmd, "--generator", str(not_a_pipeline)]) == 2
    err = capsys.readouterr().err
    assert err.count("poisons.generator") == 1 and "diffusers pipeline" in err
    assert "Traceback" not in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    assert cli.main([*cmd, "--generator", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("poisons.generator") == 1 and "Traceback" not in err
    # a poison pair naming a concept the testbed does not draw
    out = tmp_path / "tb"
    assert cli.main(["testbed", "--out", str(out), "--nightshade-pairs", "house:unicorn"]) == 2
    err = capsys.readouterr().err
    assert "unknown concept 'unicorn'" in err and "Traceback" not in err
    assert cli.main(["testbed", "--out", str(out), "--glaze-pairs", "watercolor:cubism"]) == 2
    assert "unknown style 'cubism'" in capsys.readouterr().err
    assert not (out / "truth.parquet").exists()
