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


def match_keyword(
    captions: Sequence[str | None] | Iterable[str | None], keyword: str, plurals: bool = True
) -> np.ndarray:
    """Boolean mask: which captions contain ``keyword`` (None/empty captions never match)."""
    pat = keyword_pattern(keyword, plurals)
    return np.fromiter((bool(c) and pat.search(c) is not None for c in captions), dtype=bool)


def count_tokens(text: str | None) -> int:
    """Rough CLIP-BPE-free token count (words + punctuation) used to drop very long captions
    when the real tokenizer is not at hand."""
    if not text:
        return 0
    return len(re.findall(r"\w+|[^\w\s]", text))


_TERM_TOKEN = re.compile(r"(?u)\b[^\W\d_][^\W\d_]+\b")


def frequent_terms(
    captions: Sequence[str | None],
    *,
    stop_words: Iterable[str] = (),
    min_count: int = 5,
    max_terms: int = 100,
    max_doc_share: float = 0.5,
    ngram_max: int = 2,
    phrase_share: float = 0.9,
    collocation: float = 0.4,
) -> list[tuple[str, int]]:
    """The caption vocabulary: frequent words and phrases that may name a thing in the picture.

    scikit-learn ``CountVectorizer`` (binary, so counts are captions) over normalised captions,
    with n-grams of 1 to ``ngram_max`` *contiguous* words none of which is a stop word
    (scikit-learn's English list plus ``stop_words``; a phrase never bridges a removed word,
    so "a dog on the grass" gives "dog" and "grass", not "dog grass"). A term must be in at
    least ``min_count`` captions and at most ``max_doc_share`` of them; a phrase must be a
    collocation, in at least ``collocation`` of the captions of its rarest word ("van gogh",
    not the "dog van" of "dog van gogh style"). Then, most frequent
    first: a plural is folded into its singular when both occur ("dogs" into "dog", whose count
    becomes the captions with either form, as :func:`match_keyword` counts them), and a
    word that nearly always occurs inside one longer term (``phrase_share`` of its captions,
    e.g. "gogh" in "van gogh") is left out for that term. Without a part-of-speech tagger,
    adjectives that the stop list does not name can come through.

    Returns ``[(term, caption count)]``, at most ``max_terms``, most frequent first (ties by
    term).
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    stop = set(ENGLISH_STOP_WORDS) | {normalize_caption(w) for w in stop_words}

    def analyzer(doc: str) -> list[str]:
        toks = _TERM_TOKEN.findall(normalize_caption(doc))
        out: set[str] = set()
        for i in range(len(toks)):
            for n in range(1, ngram_max + 1):
                gram = toks[i : i + n]
                if len(gram) < n or any(t in stop for t in gram):
                    break
                out.add(" ".join(gram))
        return sorted(out)

    docs = [c or "" for c in captions]
    if not docs:
        return []
    vec = CountVectorizer(
        analyzer=analyzer,
        binary=True,
        min_df=max(1, min(min_count, len(docs))),
        max_df=max_doc_share if len(docs) > 1 else 1.0,
    )
    try:
        x = vec.fit_transform(docs)
    except ValueError:  # no term left
        return []
    terms = [str(t) for t in vec.get_feature_names_out()]
    counts = np.asarray(x.sum(axis=0)).ravel()
    df = dict(zip(terms, counts.tolist()))
    word_df: dict[str, int] = {}
    for doc in docs:
        for w in set(_TERM_TOKEN.findall(normalize_caption(doc))):
            word_df[w] = word_df.get(w, 0) + 1
    cols = {t: j for j, t in enumerate(terms)}
    xc = x.tocsc()
    parents: dict[str, list[str]] = {}  # term -> the longer terms it is a contiguous part of
    for u in terms:
        w = u.split()
        for n in range(1, len(w)):
            for i in range(len(w) - n + 1):
                parents.setdefault(" ".join(w[i : i + n]), []).append(u)

    def together(t: str, u: str) -> int:
        return int(xc[:, cols[t]].multiply(xc[:, cols[u]]).sum())

    keep: dict[str, int] = {}
    for t in sorted(terms, key=lambda t: (-df[t], t)):
        words = t.split()
        if len(words) > 1 and df[t] < collocation * min(word_df.get(w, 0) for w in words):
            continue  # two frequent words side by side by chance
        if words[-1].endswith("s"):
            stem = [" ".join(words[:-1] + [words[-1][:-k]]) for k in (1, 2)]
            single = next((s for s in stem if s in df and df[s] >= df[t]), None)
            if single is not None:  # the singular is at least as frequent: "dogs" is "dog"
                if single in keep:  # its count: captions with either form
                    both = xc[:, cols[single]] + xc[:, cols[t]]
                    keep[single] = int((both > 0).sum())
                continue
        need = phrase_share * df[t]
        if any(df[u] >= need and together(t, u) >= need for u in parents.get(t, ())):
            continue  # "gogh" is "van gogh"
        keep[t] = df[t]
    return sorted(keep.items(), key=lambda kv: (-kv[1], kv[0]))[:max_terms]
