"""Caption text helpers: normalisation and keyword matching with word boundaries.

Keyword matching is case-insensitive, on word boundaries, tolerant of punctuation or several
spaces between the words of a multi-word keyword, and of simple plurals ("dog" matches "dogs",
"dog's"; "glass" matches "glasses"). It never matches inside a longer word ("cat" does not match
"catalog").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

_WS = re.compile(r"\s+")
_NON_WORD = re.compile(r"[^\w\s]+")


def normalize_caption(text: str | None) -> str:
    """Lower-case, NFKC, punctuation to spaces, collapsed whitespace ("" for None)."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _NON_WORD.sub(" ", text)
    return _WS.sub(" ", text).strip()


@lru_cache(maxsize=4096)
def keyword_pattern(keyword: str, plurals: bool = True) -> re.Pattern[str]:
    """Compiled regex for ``keyword`` on word boundaries (see module docstring)."""
    words = normalize_caption(keyword).split()
    if not words:
        raise ValueError(f"empty keyword: {keyword!r}")
    parts = [re.escape(w) for w in words]
    if plurals:
        parts[-1] = parts[-1] + r"(?:s|es|'s)?"
    body = r"[\W_]+".join(parts)
    return re.compile(rf"(?<![\w]){body}(?![\w])", re.IGNORECASE)


def match_keyword(captions: Sequence[str | None] | Iterable[str | None], keyword: str,
                  plurals: bool = True) -> np.ndarray:
    """Boolean mask: which captions contain ``keyword`` (None/empty captions never match)."""
    pat = keyword_pattern(keyword, plurals)
    return np.fromiter((bool(c) and pat.search(c) is not None for c in captions), dtype=bool)


def count_tokens(text: str | None) -> int:
    """Rough CLIP-BPE-free token count (words + punctuation) used to drop very long captions
    when the real tokenizer is not at hand."""
    if not text:
        return 0
    return len(re.findall(r"\w+|[^\w\s]", text))
