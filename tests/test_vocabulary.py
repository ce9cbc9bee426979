"""Default vocabularies come from the data and the shipped general list, never from the
synthetic testbed's generator."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from audit.vocabulary import (
    CAPTION_STOPWORDS,
    GENERAL_OBJECTS,
    caption_terms,
    default_concepts,
    general_objects,
    merge,
)
from detectors.text import frequent_terms

ROOT = Path(__file__).resolve().parents[1]

# Modules that may import the generator: the generator itself, the two CLI stages that build
# testbeds, and the training scripts of the tiny models, which are trained on its drawings.
MAY_IMPORT_TESTBED = ("audit/testbed/", "audit/stages/testbed.py", "audit/stages/demo.py",
                      "audit/training/",
                      # only for `attack --reference work:ID` (a testbed work as the target
                      # image); the attack itself never looks at the generator
                      "audit/mitigations/attack_inputs.py")  # fmt: skip


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_no_detector_stage_report_or_pipeline_imports_the_testbed_generator() -> None:
    offenders = []
    for pkg in ("audit", "detectors", "pipelines"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(MAY_IMPORT_TESTBED):
                continue
            bad = [
                m for m in _imports(path) if m == "audit.testbed" or m.startswith("audit.testbed.")
            ]
            if bad:
                offenders.append((rel, sorted(bad)))
    assert not offenders, offenders


def test_general_list_is_package_data_with_coco_and_common_objects() -> None:
    assert GENERAL_OBJECTS.is_file() and CAPTION_STOPWORDS.is_file()
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert '"vocab/*.txt"' in setup  # shipped in the wheel, not only in a checkout
    objs = general_objects()
    assert len(objs) == len(set(objs)) >= 300
    coco = objs[:80]  # the file starts with the 80 MS-COCO classes
    assert coco[0] == "person" and coco[-1] == "toothbrush" and "traffic light" in coco
    assert {"flag", "banner", "watermark", "sign", "logo"} <= set(objs)
    assert "astronaut" not in objs  # a role, not a thing in the picture


def test_frequent_terms_skip_boilerplate_fold_plurals_and_keep_collocations() -> None:
    caps = (
        ["Red dog on the grass, stock photo HD"] * 6
        + ["two dogs by van gogh, canvas print"] * 5
        + ["van gogh starry sky wallpaper free download"] * 4
        + ["a blue astronaut, vector illustration"] * 5
        + ["dog van gogh style"] * 2
        + ["a cat"] * 2  # below min_count
    )
    stop = ["stock", "photo", "hd", "canvas", "print", "wallpaper", "free", "download",
            "vector", "illustration", "red", "blue", "style"]  # fmt: skip
    terms = dict(frequent_terms(caps, stop_words=stop, min_count=3, max_doc_share=0.9))
    assert terms["dog"] == 13  # "dogs" folded into "dog"
    assert terms["van gogh"] == 11 and "gogh" not in terms and "van" not in terms
    assert {"grass", "astronaut", "starry sky"} <= set(terms)
    assert not set(terms) & {"stock", "photo", "red", "dogs", "cat", "dog van", "grass stock"}
    assert caption_terms(caps, max_terms=2, min_count=3) == ["dog", "van gogh"]
    assert frequent_terms([]) == [] and caption_terms(caps, max_terms=0) == []


def test_default_concepts_come_from_the_captions_not_the_testbed() -> None:
    caps = ["a zebra next to a traffic light", "zebra crossing sign", "my astronaut sticker"] * 2
    caps += [None, ""]
    got = default_concepts(caps, min_term_count=2)
    # named general-list entries first, then the frequent caption terms
    assert got[:4] == ["traffic light", "zebra", "sign", "sticker"]  # general-list order
    assert "astronaut" in got and "crossing sign" in got and "crossing" not in got
    assert "dog" not in got and "flag" not in got  # in the general list, named by no caption
    assert merge(["Dog", "cat"], ["dog", "bird"]) == ["Dog", "cat", "bird"]


def test_concepts_stage_default_is_the_datas(tmp_path) -> None:
    from audit.errors import InputError
    from audit.vocabulary import DEFAULT_CONCEPTS_SOURCE as DEFAULT_SOURCE
    from audit.vocabulary import resolve_concepts

    caps = ["a zebra and a kite", "zebra", "kite on the beach"]
    concepts, source = resolve_concepts(None, caps)
    assert source == DEFAULT_SOURCE and {"zebra", "kite", "beach"} <= set(concepts)
    assert resolve_concepts("a, b ,a") == (["a", "b"], "option")
    with pytest.raises(InputError):
        resolve_concepts(None, ["the of and", None])
