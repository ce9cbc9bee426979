"""Default vocabularies of the detectors: a general object list and the captions' own terms.

Nothing here knows about the synthetic testbed: the defaults come from the package data in
``audit/vocab/`` and from the data being audited.

* :func:`general_objects`: ``audit/vocab/objects.txt``, a general list of things that appear
  in pictures (the 80 MS-COCO classes first, then common animals, vehicles, plants, buildings,
  household things, clothing, food, instruments, signs and symbols; ~380 entries).
* :func:`caption_terms`: the frequent words and collocations of the captions themselves
  (:func:`detectors.text.frequent_terms`, a scikit-learn ``CountVectorizer`` over the
  captions), without scikit-learn's English stop words and ``audit/vocab/caption_stopwords.txt``
  (web and stock boilerplate, picture kinds and media, colours, common adjectives).
* :func:`default_concepts`: the vocabulary of the ``concepts`` and ``poisons`` stages when none
  is given: general-list entries that at least ``min_count`` captions name, then the frequent
  caption terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
GENERAL_OBJECTS = VOCAB_DIR / "objects.txt"
CAPTION_STOPWORDS = VOCAB_DIR / "caption_stopwords.txt"

DEFAULT_CAPTION_TERMS = 100
"""How many frequent caption terms a default vocabulary takes."""
DEFAULT_MIN_TERM_COUNT = 5
"""A caption term must occur in at least this many captions."""


def read_list(path: str | Path) -> list[str]:
    """One entry per line, ``#`` comments and blank lines skipped, lower-cased, first
    occurrence kept."""
    out: dict[str, None] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        item = " ".join(line.split("#", 1)[0].lower().split())
        if item:
            out.setdefault(item, None)
    return list(out)


@lru_cache(maxsize=1)
def _general() -> tuple[str, ...]:
    if not GENERAL_OBJECTS.is_file():
        raise FileNotFoundError(
            f"general object list not found at {GENERAL_OBJECTS}: the package data is missing "
            "(reinstall laion-audit)"
        )
    return tuple(read_list(GENERAL_OBJECTS))


def general_objects() -> list[str]:
    """The general object list shipped as package data (``audit/vocab/objects.txt``)."""
    return list(_general())


@lru_cache(maxsize=1)
def caption_stopwords() -> frozenset[str]:
    """Words left out of caption-derived vocabularies (``audit/vocab/caption_stopwords.txt``)."""
    return frozenset(read_list(CAPTION_STOPWORDS)) if CAPTION_STOPWORDS.is_file() else frozenset()


def caption_terms(
    captions: Sequence[str | None],
    max_terms: int = DEFAULT_CAPTION_TERMS,
    min_count: int = DEFAULT_MIN_TERM_COUNT,
) -> list[str]:
    """The ``max_terms`` most frequent caption words and collocations (module docstring)."""
    from detectors.text import frequent_terms

    if max_terms <= 0:
        return []
    terms = frequent_terms(
        captions, stop_words=caption_stopwords(), min_count=min_count, max_terms=max_terms
    )
    return [t for t, _ in terms]


def merge(*lists: Sequence[str]) -> list[str]:
    """Concatenate, keeping the first occurrence of each entry (case-insensitive)."""
    out: dict[str, str] = {}
    for lst in lists:
        for x in lst:
            x = " ".join(str(x).split())
            if x:
                out.setdefault(x.lower(), x)
    return list(out.values())


def default_concepts(
    captions: Sequence[str | None],
    min_count: int = 1,
    max_terms: int = DEFAULT_CAPTION_TERMS,
    min_term_count: int = DEFAULT_MIN_TERM_COUNT,
) -> list[str]:
    """General-list entries named by at least ``min_count`` captions (word match, simple
    plurals), then the frequent caption terms: the concepts this dataset's captions contain."""
    import numpy as np

    from detectors.concepts import word_matches

    general = general_objects()
    named = word_matches(list(captions), general).sum(axis=0) if len(captions) else []
    present = [c for c, k in zip(general, np.asarray(named).tolist()) if k >= min_count]
    return merge(present, caption_terms(captions, max_terms, min_term_count))
