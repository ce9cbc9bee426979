"""Object-level replication: the detector on synthetic scores/vectors, the stage, and the
issue's quality targets on the SynthLAION testbed with the shipped tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.objects import (
    calibrate_presence,
    ensemble,
    object_prompts,
    object_replication,
    presence_scores,
)
from detectors.stats import normalize_rows


def test_prompts_and_ensemble() -> None:
    with_obj, without = object_prompts("astronaut", ["flag", "moon"])
    assert with_obj["flag"][0] == "a photo of a astronaut with a flag"
    assert all("flag" in p and "astronaut" in p for p in with_obj["flag"])
    assert all("flag" not in p and "astronaut" in p for p in without)
    v = ensemble(np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert np.allclose(v, [2**-0.5, 2**-0.5])


def test_presence_scores_contrast() -> None:
    rng = np.random.default_rng(0)
    d = 32
    kw, obj = normalize_rows(rng.normal(size=(2, d)))
    with_vec = normalize_rows((kw + obj)[None])[0]
    imgs = normalize_rows(np.stack([kw, kw + obj, obj]))
    s = presence_scores(imgs, with_vec[None], kw)
    assert s.shape == (3, 1)
    assert s[1, 0] > 0.2 and s[0, 0] < 0 and s[2, 0] > s[0, 0]


def _scores(rng: np.random.Generator, n: int, rate: float, shift: float = 6.0) -> tuple:
    present = np.zeros(n, bool)
    present[: int(round(rate * n))] = True
    rng.shuffle(present)
    s = rng.normal(0.0, 1.0, n) + shift * present
    return 0.01 * s + 0.05, present  # arbitrary scale and offset, as cosine differences have


def test_calibration_recovers_a_planted_rate() -> None:
    rng = np.random.default_rng(1)
    s, present = _scores(rng, 400, 0.10)
    cal = calibrate_presence(s)
    assert cal.method == "gmm"
    assert abs((s > cal.threshold).mean() - 0.10) < 0.02
    assert abs(cal.mixture_weight - 0.10) < 0.03
    assert ((s > cal.threshold) == present).mean() > 0.98


def test_calibration_flags_nothing_without_a_second_population() -> None:
    rng = np.random.default_rng(2)
    for dist in (rng.normal(0.1, 0.02, 500), rng.standard_t(5, 500) * 0.02, rng.uniform(0, 1, 500)):
        cal = calibrate_presence(dist)
        assert (dist > cal.threshold).mean() < 0.02, cal


def test_object_replication_flags_only_the_planted_pair() -> None:
    rng = np.random.default_rng(3)
    n, m = 300, 2000
    flag_in, present = _scores(rng, n, 0.10)
    moon_in, _ = _scores(rng, n, 0.0)
    flag_out, _ = _scores(rng, m, 0.01)
    moon_out, _ = _scores(rng, m, 0.04)
    inside = np.stack([flag_in, moon_in], 1)
    outside = np.stack([flag_out, moon_out], 1)
    mentions = np.zeros((n, 2), bool)
    mentions[:3, 1] = True  # a few captions name the moon
    keys = [f"{i:09d}" for i in range(n)]
    rows, cal = object_replication("astronaut", ["flag", "moon"], inside, outside, mentions, keys)
    flag, moon = rows
    assert flag["finding_id"] == "object:astronaut:flag" and flag["flagged"]
    assert abs(flag["image_rate"] - 0.10) <= 0.02
    assert flag["ci_low"] < 0.10 < flag["ci_high"]  # the interval covers the planted rate
    assert flag["ci_high"] - flag["ci_low"] < 0.08  # and is informative at n = 300
    assert flag["outside_rate"] < 0.03 and flag["caption_rate"] == 0.0
    assert set(flag["example_keys"]) <= {keys[i] for i in np.flatnonzero(present)}
    assert not moon["flagged"] and moon["image_rate"] < 0.02
    assert moon["caption_rate"] == pytest.approx(0.01)
    assert cal["flag"]["inside"]["method"] == "gmm"


def test_bh_removes_an_object_flag_that_only_many_tests_explain() -> None:
    """One pair clears the baseline at p ~ 0.004: flagged when it is the only test, not when it
    is one of 400 keyword x object pairs whose other p-values are null (q ~ 1)."""
    from detectors.objects import adjust_flags
    from detectors.stats import binomial_pvalue

    rng = np.random.default_rng(4)
    n, base = 300, 0.02  # baseline + min_gap of the pair
    k = 15  # 5% found where 2% is the bar: p ~ 0.004
    p = float(binomial_pvalue(k, n, base))
    assert 0.001 < p < 0.01
    hit = {"p_value": p, "flagged_unadjusted": True}
    alone = [dict(hit)]
    info = adjust_flags(alone, 0.05)
    assert alone[0]["flagged"] and info["n_tests"] == 1
    nulls = [
        {"p_value": float(binomial_pvalue(rng.binomial(n, base), n, base)),
         "flagged_unadjusted": False}
        for _ in range(399)
    ]  # fmt: skip
    family = [dict(hit), *nulls]
    info = adjust_flags(family, 0.05)
    assert not family[0]["flagged"] and family[0]["q_value"] > 0.05
    assert info == {**info, "method": "benjamini-hochberg", "q_level": 0.05, "n_tests": 400,
                    "n_flagged_unadjusted": 1, "n_flagged": 0}  # fmt: skip
    # the correction can be switched off (then q = p)
    adjust_flags(family, None)
    assert family[0]["flagged"] and family[0]["q_value"] == p


def test_weighted_bh_gives_general_list_only_objects_a_fifth_of_the_budget() -> None:
    from detectors.objects import adjust_flags, fdr_weights

    w = fdr_weights(["caption"] * 40 + ["listed"] * 2 + ["general"] * 338, 0.2)
    assert w.mean() == pytest.approx(1.0) and w[-338:].sum() == pytest.approx(0.2 * 380)
    assert (fdr_weights(["general"] * 5, 0.2) == 1).all()  # one group: plain BH
    # p = 2.6e-4 among 376 tests: not enough under plain BH, enough with the weight of a
    # caption term; the same p for a general-list-only object is not
    rows = [{"p_value": 2.6e-4, "flagged_unadjusted": True, "vocabulary": "caption"}]
    rows += [{"p_value": 1.0, "flagged_unadjusted": False, "vocabulary": "caption"}] * 40
    rows += [{"p_value": 1.0, "flagged_unadjusted": False, "vocabulary": "general"}] * 335
    rows = [dict(r) for r in rows]
    assert not adjust_flags(rows, 0.05)["n_flagged"]
    info = adjust_flags(rows, 0.05, general_share=0.2)
    assert rows[0]["flagged"] and info["method"] == "benjamini-hochberg (weighted)"
    rows[0]["vocabulary"], rows[-1]["vocabulary"] = "general", "caption"
    assert not adjust_flags(rows, 0.05, general_share=0.2)["n_flagged"]


def test_object_replication_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shapes disagree"):
        object_replication("a", ["x"], np.zeros((3, 2)), np.zeros((0, 2)), np.zeros((3, 2), bool),
                           ["1", "2", "3"])  # fmt: skip
    with pytest.raises(ValueError, match="keys"):
        object_replication("a", ["x"], np.zeros((3, 1)), np.zeros((0, 1)), np.zeros((3, 1), bool),
                           ["1"])  # fmt: skip


# --------------------------------------------------------------------------------------------
# the targets on the SynthLAION testbed (shared with test_replication.py)


@pytest.mark.slow
def test_testbed_flag_rate_within_3_points_and_no_false_flags() -> None:
    from test_replication import shared_testbed

    from audit.cli import main
    from detectors.text import match_keyword

    ws, truth = shared_testbed()
    assert main(["objects", "-q", str(ws.root), "-k", "astronaut"]) == 0
    rows = ws.read_finding("object_replication").to_pylist()
    meta = ws.finding_meta("object_replication")
    assert meta["model"] == "tiny-synth"
    sub = truth[match_keyword(list(truth["caption"]), "astronaut")]
    planted = float(sub["object_present"].mean())
    assert 0.07 < planted < 0.13
    by_obj = {r["object"]: r for r in rows}
    # the vocabulary is the general list + the captions' terms, never the generator's list
    vocab = meta["vocabulary"]
    assert "astronaut" not in by_obj and len(by_obj) == vocab["n_vocabulary"] - 1
    assert vocab["general"] > 300 and "flag" in vocab["caption_terms"]
    flag = by_obj["flag"]
    assert flag["n_images"] == len(sub)
    assert abs(flag["image_rate"] - planted) <= 0.03, (flag["image_rate"], planted)
    assert flag["flagged"] and flag["caption_rate"] == 0.0
    assert flag["outside_rate"] < flag["ci_low"]
    present = set(sub.loc[sub["object_present"], "key"])
    assert len(flag["example_keys"]) >= 5
    assert len(set(flag["example_keys"]) & present) >= 0.8 * len(flag["example_keys"])
    # no association flagged above 5% where none was planted
    assert not [(o, r["image_rate"]) for o, r in by_obj.items()
                if o != "flag" and r["flagged"] and r["image_rate"] > 0.05]  # fmt: skip
    # a short object list: the rest of the vocabulary still competes, same answer
    cmd = ["objects", "-q", str(ws.root), "-k", "astronaut", "--objects", "flag,moon"]
    assert main([*cmd, "--only-listed"]) == 0
    rows = {r["object"]: r for r in ws.read_finding("object_replication").to_pylist()}
    assert set(rows) == {"flag", "moon"} and rows["flag"]["flagged"] and not rows["moon"]["flagged"]
    assert abs(rows["flag"]["image_rate"] - planted) <= 0.03


@pytest.mark.slow
def test_testbed_object_nobody_listed_is_still_found_and_never_pinned_on_a_listed_one() -> None:
    """--objects names the wrong objects: the vocabulary is searched too and finds the flag;
    with --only-listed nothing is flagged, because the vocabulary still competes. Without
    that competition (what the stage did with a testbed-free list) the flag images are
    reported as whichever listed object describes them best."""
    from test_replication import shared_testbed

    from audit.cli import main
    from audit.inputs import load_samples
    from audit.vocabulary import PromptEncoder, object_vocabulary
    from detectors.objects import keyword_objects

    ws, _ = shared_testbed()
    assert main(["objects", "-q", str(ws.root), "-k", "astronaut", "--objects", "moon"]) == 0
    rows = ws.read_finding("object_replication").to_pylist()
    assert rows[0]["object"] == "moon" and not rows[0]["flagged"]
    assert [r["object"] for r in rows if r["flagged"]] == ["flag"]
    cmd = ["objects", "-q", str(ws.root), "-k", "astronaut", "--objects", "moon,cup"]
    assert main([*cmd, "--only-listed"]) == 0
    rows = ws.read_finding("object_replication").to_pylist()
    assert {r["object"] for r in rows} == {"moon", "cup"} and not any(r["flagged"] for r in rows)
    # with the vocabulary competing, neither listed object takes the unnamed flag (without
    # competitors the v1 tiny CLIP pinned it on one of them; the retrained one no longer does,
    # so that half is not asserted)
    samples = load_samples(ws)
    enc = PromptEncoder(ws.model(), "cpu", 256, samples.emb.shape[1])
    vocab, _ = object_vocabulary(samples.captions)
    rows, _ = keyword_objects(
        samples.emb, samples.captions, samples.keys, "astronaut", ["moon", "cup"], enc.contrast,
        alternatives=vocab,
    )  # fmt: skip
    assert {r["object"] for r in rows} == {"moon", "cup"}
    assert not any(r["flagged"] for r in rows)


@pytest.mark.slow
def test_testbed_object_discovery_ranks_astronaut_in_top3() -> None:
    from test_replication import shared_testbed

    from audit.cli import main

    ws, _ = shared_testbed()
    assert main(["objects", "-q", str(ws.root), "--discover", "--top", "3"]) == 0
    disc = ws.finding_meta("object_replication")["discovery"]
    assert "astronaut" in disc["chosen"], disc["ranking"][:5]
    assert disc["ranking"][0]["keyword"] == "astronaut", disc["ranking"][:3]
    assert disc["ranking"][0]["best_object"] == "flag", disc["ranking"][0]
    rows = ws.read_finding("object_replication").to_pylist()
    assert {r["source"] for r in rows} == {"discovered"}
    # the planted pair is the strongest finding of the scan; 13 of the 125 astronaut images
    # carry the flag here, which leaves it at the edge of the 5 % FDR on 1,000 rows (measured
    # with the shipped tiny-synth: 11 found, q = 0.067); bench_objects measures the flag rule
    # on 2,000-row testbeds
    best = min(rows, key=lambda r: r["p_value"])
    assert (best["keyword"], best["object"]) == ("astronaut", "flag"), best
    assert best["q_value"] <= 0.1 and best["n_present"] >= 8, best
    mt = ws.finding_meta("object_replication")["multiple_testing"]
    assert mt["method"].startswith("benjamini-hochberg") and mt["q_level"] == 0.05
    assert mt["n_tests"] > 1000  # every scanned keyword x every object


def test_stage_needs_a_model_and_a_keyword(tmp_path) -> None:
    from test_replication import _synthetic_corpus, _write_workspace

    from audit.cli import main

    e, caps, _, keys = _synthetic_corpus(n_style=20, n_other=20)
    ws = _write_workspace(tmp_path, e, caps, keys)
    assert main(["objects", "-q", str(ws.root)]) == 2  # neither --keyword nor --discover
    assert main(["objects", "-q", str(ws.root), "-k", "dog", "--min-gap", "2"]) == 2
    # no embeddings/model.json: the prompts cannot be embedded -> input error
    assert main(["objects", "-q", str(ws.root), "-k", "dog"]) == 3
