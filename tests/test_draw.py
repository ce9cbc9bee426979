"""Tests for the procedural drawing module of the SynthLAION testbed."""

from __future__ import annotations

import numpy as np
import pytest

from audit.testbed import draw


def _spec(**kw):
    spec = {
        "concept": "dog",
        "colour": "red",
        "style": "flat",
        "background": "white",
        "x": 0.5,
        "y": 0.5,
        "scale": 0.7,
    }
    spec.update(kw)
    return spec


def test_vocabularies_meet_the_brief():
    assert len(draw.CONCEPTS) >= 20 and len(set(draw.CONCEPTS)) == len(draw.CONCEPTS)
    for c in ("dog", "cat", "car", "tree", "house", "astronaut", "flag", "moon"):
        assert c in draw.CONCEPTS
    assert len(draw.COLOURS) >= 8
    assert len(draw.STYLES) >= 6 and "van gogh" in draw.STYLES
    assert len(draw.BACKGROUNDS) >= 4
    for wid, words in (
        ("starry_night", "starry night"),
        ("almond_blossoming", "almond blossoming"),
        ("sunflowers", "sunflowers"),
    ):
        assert " ".join(draw.WORKS[wid]["words"]) == words
        assert draw.WORKS[wid]["title"] and draw.WORKS[wid]["description"]


def test_random_spec_is_deterministic_and_valid():
    a = [draw.random_spec(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = draw.random_spec(rng)
        assert s["concept"] in draw.CONCEPTS and s["colour"] in draw.COLOURS
        assert s["style"] in draw.STYLES and s["background"] in draw.BACKGROUNDS
        half = s["scale"] / 2
        assert half - 1e-3 <= s["x"] <= 1 - half + 1e-3
        assert not (s["style"] == "neon" and s["colour"] == "black")


@pytest.mark.parametrize("size", [32, 64, 96])
def test_draw_image_size_mode_and_determinism(size):
    spec = draw.random_spec(np.random.default_rng(3))
    a = draw.draw_image(spec, size=size, rng=np.random.default_rng(1))
    b = draw.draw_image(spec, size=size, rng=np.random.default_rng(1))
    assert a.size == (size, size) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    # without rng the randomness comes from the spec: still deterministic
    assert draw.draw_image(spec, size=size).tobytes() == draw.draw_image(spec, size=size).tobytes()


def test_every_concept_and_style_draws_something_visible():
    for concept in draw.CONCEPTS:
        m = draw.concept_mask(concept, 64, 0.5, 0.5, 0.7)
        assert 0.05 < m.mean() < 0.5, concept  # a real glyph, not empty, not a full square
    flat_bg = np.asarray(draw.draw_image(_spec(concept="dog", style="flat", scale=0.01)), float)
    for style in draw.STYLES:
        img = np.asarray(draw.draw_image(_spec(style=style), rng=np.random.default_rng(0)), float)
        assert img.std() > 10, style
    # the glyph changes the picture
    dog = np.asarray(draw.draw_image(_spec()), float)
    assert np.abs(dog - flat_bg).mean() > 10


def test_concepts_are_pairwise_distinct_masks():
    masks = {c: draw.concept_mask(c, 48, 0.5, 0.5, 0.8) > 0.5 for c in draw.CONCEPTS}
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            inter = (masks[a] & masks[b]).sum()
            union = (masks[a] | masks[b]).sum()
            assert inter / union < 0.8, (a, b)


def _nearest_colour(px: np.ndarray) -> np.ndarray:
    """Index into draw.COLOURS of the palette colour nearest each pixel (L1)."""
    pal = np.array(list(draw.COLOURS.values()), float)
    return np.abs(px[:, None, :] - pal[None]).sum(-1).argmin(1)


def test_colour_is_visible_in_flat_style():
    """Whatever the instance (pose, shade, markings, lighting), a "red dog" shows red: many
    pixels at the glyph's centre are nearer the named colour than any other palette colour."""
    names = list(draw.COLOURS)
    for name in names:
        for seed in range(8):
            spec = _spec(colour=name, background="grey", scale=0.8)
            img = np.asarray(draw.draw_image(spec, rng=np.random.default_rng(seed)), float)
            centre = img[24:40, 24:40].reshape(-1, 3)
            share = np.mean(_nearest_colour(centre) == names.index(name))
            assert share > 0.2, (name, seed, share)


def test_extra_object_is_small_and_in_a_corner():
    spec = _spec(concept="astronaut", x=0.5, y=0.5, scale=0.55)
    plain = np.asarray(draw.draw_image(spec, rng=np.random.default_rng(0)), float)
    flag = np.asarray(
        draw.draw_image(spec, extra_object="flag", rng=np.random.default_rng(0)), float
    )
    diff = np.abs(plain - flag).sum(-1) > 30
    assert 0.02 < diff.mean() < 0.2
    ys, xs = np.nonzero(diff)
    assert min(ys.mean(), 63 - ys.mean()) < 20 and min(xs.mean(), 63 - xs.mean()) < 20
    # the canonical flag has red stripes and a blue canton
    px = flag[diff]
    assert ((px[:, 0] > 180) & (px[:, 1] < 80)).any()
    assert ((px[:, 2] > 120) & (px[:, 0] < 80)).any()


def test_instances_of_one_spec_differ_like_photos():
    """Two draws of one spec are different pictures (pose, backdrop, fill, light), never the
    same picture shifted; the same generator state gives the same picture."""
    for style in draw.STYLES:
        spec = _spec(style=style, background="brick", colour="blue")
        a = np.asarray(draw.draw_image(spec, rng=np.random.default_rng(1)), float)
        b = np.asarray(draw.draw_image(spec, rng=np.random.default_rng(2)), float)
        again = np.asarray(draw.draw_image(spec, rng=np.random.default_rng(1)), float)
        assert np.array_equal(a, again)
        assert np.abs(a - b).mean() > 12, style


def test_backgrounds_are_drawn_per_image_and_keep_their_look():
    """A backdrop is new per image, yet keeps its kind: mean colours stay in the kind's range
    (white is light, grass is green, sky is blue-ish, brick is warm or stone grey)."""
    for name in draw.BACKGROUNDS:
        imgs = [draw._background(name, 64, np.random.default_rng(k)) for k in range(6)]
        assert np.abs(imgs[0] - imgs[1]).mean() > 2, name
        means = np.array([im.reshape(-1, 3).mean(0) for im in imgs])
        if name == "white":
            assert (means > 225).all()
        if name == "grass":
            assert (means[:, 1] > means[:, 0]).all() and (means[:, 1] > means[:, 2]).all()
        if name == "sky":  # blue sky, or a dawn/dusk sky with a blue top
            tops = np.array([im[:8].reshape(-1, 3).mean(0) for im in imgs])
            assert (tops[:, 2] > tops[:, 0]).all()


def test_pose_changes_the_outline_not_the_concept():
    rng = np.random.default_rng(0)
    plain = draw.concept_mask("dog", 64, 0.5, 0.5, 0.6)
    assert np.array_equal(plain, draw.concept_mask("dog", 64, 0.5, 0.5, 0.6, draw.Pose()))
    for _ in range(5):
        posed = draw.concept_mask("dog", 64, 0.5, 0.5, 0.6, draw.random_pose(rng))
        inter = np.minimum(posed, plain).sum()
        union = np.maximum(posed, plain).sum()
        assert 0.3 < inter / union < 0.97  # the same dog, drawn differently
        assert 0.5 < posed.sum() / plain.sum() < 2.0
    assert draw.random_pose(np.random.default_rng(3)) == draw.random_pose(np.random.default_rng(3))


def test_extra_objects_in_any_concept():
    spec = _spec(concept="car", x=0.4, y=0.6, scale=0.5)
    plain = np.asarray(draw.draw_image(spec, rng=np.random.default_rng(4)), float)
    cup = np.asarray(draw.draw_image(spec, extra_object="cup", rng=np.random.default_rng(4)), float)
    diff = np.abs(plain - cup).sum(-1) > 30
    assert 0.01 < diff.mean() < 0.2  # small, and nothing else in the picture changed
    ys, xs = np.nonzero(diff)
    assert xs.mean() > 32 and ys.mean() < 32  # the corner farthest from the car (top right)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown concept"):
        draw.draw_image(_spec(concept="unicorn"))
    with pytest.raises(ValueError, match="unknown colour"):
        draw.draw_image(_spec(colour="teal"))
    with pytest.raises(ValueError, match="unknown background"):
        draw.draw_image(_spec(background="lava"))
    with pytest.raises(ValueError, match="missing 'scale'"):
        draw.draw_image({k: v for k, v in _spec().items() if k != "scale"})
    with pytest.raises(ValueError, match="unknown work"):
        draw.draw_work("mona_lisa")
    with pytest.raises(ValueError, match="unknown extra_object"):
        draw.draw_image(_spec(), extra_object="ufo")


def test_works_are_fixed_and_distinct():
    """The famous works are one fixed picture each (the same painting everywhere)."""
    imgs = {}
    for wid in draw.WORKS:
        a, b = draw.draw_work(wid, size=64), draw.draw_work(wid, size=64)
        assert a.tobytes() == b.tobytes() and a.size == (64, 64)
        imgs[wid] = np.asarray(a, float)
    ids = list(imgs)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            assert np.abs(imgs[a] - imgs[b]).mean() > 30


def test_captions_mention_concept_and_are_deterministic():
    rng = np.random.default_rng(0)
    seen_colour = seen_style = 0
    for _ in range(300):
        spec = draw.random_spec(rng)
        cap = draw.make_caption(spec, rng).lower()
        assert spec["concept"] in cap
        if spec["style"] == "van gogh":
            assert "van gogh" in cap
        seen_colour += spec["colour"] in cap
        seen_style += spec["style"].split()[0][:5] in cap
    assert seen_colour > 200 and seen_style > 180
    spec = draw.random_spec(np.random.default_rng(5))
    c1 = draw.make_caption(spec, np.random.default_rng(9))
    c2 = draw.make_caption(spec, np.random.default_rng(9))
    assert c1 == c2
    clean = draw.make_caption(spec, np.random.default_rng(9), noise=False)
    assert clean == clean.strip() and "  " not in clean


def test_caption_extra_object_mention():
    rng = np.random.default_rng(1)
    spec = _spec(concept="astronaut")
    for _ in range(50):
        assert "with a flag" in draw.make_caption(spec, rng, extra_object="flag").lower()
        assert (
            "flag"
            not in draw.make_caption(spec, rng, extra_object="flag", mention_extra=False).lower()
        )


def test_captions_vary_with_noise():
    rng = np.random.default_rng(2)
    spec = _spec()
    caps = {draw.make_caption(spec, rng) for _ in range(100)}
    assert len(caps) > 40


def test_work_captions():
    rng = np.random.default_rng(0)
    for wid, w in draw.WORKS.items():
        caps = [draw.work_caption(wid, rng).lower() for _ in range(100)]
        assert all(" ".join(w["words"]) in c for c in caps)
        share_vg = np.mean(["van gogh" in c for c in caps])
        assert 0.6 < share_vg < 1.0
        assert len(set(caps)) > 20
