"""Reproduction prompts built from replication findings, plus user prompt files.

Word-level findings (``word_replication``) get the five prompt kinds of Naseh et al. (see
docs/references.md), built from the cluster's own example captions and a few templates:

==========================  ================================================================
``keywords``                the keyword and the cluster's words only ("van gogh starry night")
``short_related``           the shortest of the cluster's own captions that carries its words
``long_related``            the longest such caption (extended by a template when the cluster
                            has no long caption)
``unrelated_with_keywords`` an unrelated scene that merely contains the keywords
``long_without_keyword``    the long caption with the main keyword removed (do the cluster's
                            words alone trigger the copy? the "frequency matters" question)
==========================  ================================================================

Object-level findings (``object_replication``) get prompts that contain the keyword and never name
the object (``object_keyword``, ``object_short``, ``object_long``): a generated flag then comes from
the model, not from the prompt. Training captions of the keyword's images can be passed in to
build the short and long prompts from real alt-texts (captions naming the object are skipped).

A user prompt file (``.jsonl``, ``.csv`` or ``.txt``) adds prompts, or replaces a built prompt
of the same ``(finding_id, prompt_kind)``; with ``mode="replace"`` only the file's prompts are
used. Rows without a ``finding_id`` get ``"user"``: they are scored against every training image.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from audit.errors import InputError
from detectors.text import count_tokens, keyword_pattern, match_keyword

logger = logging.getLogger(__name__)

WORD_KINDS = (
    "keywords",
    "short_related",
    "long_related",
    "unrelated_with_keywords",
    "long_without_keyword",
)
OBJECT_KINDS = ("object_keyword", "object_short", "object_long")
USER_FINDING = "user"
MAX_TOKENS = 77
LONG_MIN_WORDS = 10

# Unrelated scenes for ``unrelated_with_keywords``; one is picked per finding, deterministically,
# among those sharing no word with the finding's keyword and cluster words.
UNRELATED_SCENES = (
    "a bowl of fruit on a wooden kitchen table",
    "a red bicycle leaning against a brick wall",
    "a cat sleeping on a grey sofa",
    "a yellow taxi on a rainy city street",
    "a lighthouse on a rocky coast at noon",
    "a cup of coffee next to an open laptop",
    "a group of children playing football in a park",
    "a snowy mountain cabin with smoke from the chimney",
)
_LONG_SUFFIX = "detailed high quality art print, museum reproduction, full view"
_OBJECT_SHORT = "a photo of {a} {kw}"
_OBJECT_LONG = (
    "{a} {kw}, full body, detailed illustration, high quality, sharp focus, studio lighting"
)


@dataclass(frozen=True)
class Prompt:
    """One reproduction prompt. ``prompt_id`` is a stable hash of (finding, kind, text)."""

    prompt_id: str
    finding_id: str
    prompt_kind: str
    prompt: str
    keyword: str | None = None
    object: str | None = None
    source: str = "built"


def prompt_id(finding_id: str, prompt_kind: str, prompt: str) -> str:
    """``p`` + 12 hex digits of SHA-1 over (finding, kind, text): safe as a folder name."""
    h = hashlib.sha1(f"{finding_id}\x1f{prompt_kind}\x1f{prompt}".encode()).hexdigest()
    return "p" + h[:12]


def _make(
    finding_id: str,
    kind: str,
    text: str,
    keyword: str | None = None,
    obj: str | None = None,
    source: str = "built",
) -> Prompt:
    text = _clean(text)
    return Prompt(prompt_id(finding_id, kind, text), finding_id, kind, text, keyword, obj, source)


def _clean(text: str) -> str:
    """Collapse whitespace and stray separators left by edits."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    text = re.sub(r"\s+([,.;:!])", r"\1", text)
    text = re.sub(r"([,;:|\-])(\s*[,;:|\-])+", r"\1", text)
    text = re.sub(r"\(\s*[,;]?\s*\)", "", text)
    return re.sub(r"^[\s,.;:|\-]+|[\s,;:|\-]+$", "", text).strip()


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _has_all_words(caption: str, words: Sequence[str]) -> bool:
    return all(match_keyword([caption], w)[0] for w in words)


def _usable(captions: Iterable[Any], max_tokens: int) -> list[str]:
    """Non-empty captions of at most ``max_tokens`` rough tokens (longer ones would be cut by the
    text encoder), cleaned, de-duplicated in order."""
    seen: set[str] = set()
    out = []
    for c in captions:
        if not isinstance(c, str):
            continue
        c = _clean(c)
        if not c or count_tokens(c) > max_tokens or c.lower() in seen:
            continue
        seen.add(c.lower())
        out.append(c)
    return out


def remove_keyword(text: str, keyword: str) -> str:
    """``text`` with every occurrence of ``keyword`` removed (word boundaries, plurals)."""
    pat = keyword_pattern(keyword)
    for _ in range(5):
        new = pat.sub(" ", text)
        if new == text:
            break
        text = new
    return _clean(text)


def word_prompts(finding: dict[str, Any], max_tokens: int = MAX_TOKENS) -> list[Prompt]:
    """The five Naseh et al. prompt kinds for one ``word_replication`` row (a dict)."""
    fid = str(finding["finding_id"])
    keyword = _clean(str(finding.get("keyword") or ""))
    pw = finding.get("prompt_words")
    if not isinstance(pw, str) or not pw.strip():
        top = finding.get("top_words")
        pw = " ".join(list(top)[:2]) if top is not None and len(top) else ""
    cluster_words = [w for w in _words(pw) if w not in _words(keyword)]
    if not keyword and not cluster_words:
        raise InputError(f"word_replication finding {fid}: no keyword and no prompt words")
    words_text = " ".join(cluster_words)
    examples = finding.get("example_captions")
    caps = _usable(list(examples) if examples is not None else [], max_tokens)
    related = [c for c in caps if _has_all_words(c, cluster_words)] or caps
    out = [_make(fid, "keywords", f"{keyword} {words_text}", keyword)]

    default_short = (
        f"{words_text} by {keyword}" if keyword and words_text else words_text or keyword
    )
    by_len = sorted(related, key=lambda c: (len(_words(c)), related.index(c)))
    short = by_len[0] if by_len else default_short
    long = by_len[-1] if by_len else default_short
    if len(_words(long)) < LONG_MIN_WORDS or long == short:
        long = (
            f"{long}, {keyword} {words_text}, {_LONG_SUFFIX}"
            if keyword
            else f"{long}, {words_text}, {_LONG_SUFFIX}"
        )
    out.append(_make(fid, "short_related", short, keyword))
    out.append(_make(fid, "long_related", long, keyword))

    banned = set(_words(keyword)) | set(cluster_words)
    scenes = [s for s in UNRELATED_SCENES if not banned & set(_words(s))]
    pick = int(hashlib.sha1(fid.encode()).hexdigest(), 16) % len(scenes)
    out.append(
        _make(fid, "unrelated_with_keywords", f"{scenes[pick]}, {keyword} {words_text}", keyword)
    )

    if keyword:
        without = remove_keyword(long, keyword)
        if cluster_words and not _has_all_words(without, cluster_words):
            without = f"{without}, {words_text}"
        if _words(without):
            out.append(_make(fid, "long_without_keyword", without, keyword))
    return out


def object_prompts(
    finding: dict[str, Any], captions: Sequence[str] = (), max_tokens: int = MAX_TOKENS
) -> list[Prompt]:
    """Prompts with the keyword that never name the object, for one ``object_replication`` row.

    ``captions``: optional training captions of the keyword's images; those naming the object
    are skipped, the shortest and longest remaining ones become ``object_short`` / ``object_long``
    (templates otherwise). Any prompt that would name the object is dropped.
    """
    fid = str(finding["finding_id"])
    kw = _clean(str(finding.get("keyword") or ""))
    obj = _clean(str(finding.get("object") or ""))
    if not kw or not obj:
        raise InputError(f"object_replication finding {fid}: keyword and object are required")
    caps = [
        c
        for c in _usable(captions, max_tokens)
        if match_keyword([c], kw)[0] and not match_keyword([c], obj)[0] and c.lower() != kw.lower()
    ]
    by_len = sorted(caps, key=lambda c: (len(_words(c)), caps.index(c)))
    short = by_len[0] if by_len else _OBJECT_SHORT.format(a=_article(kw), kw=kw)
    long = by_len[-1] if by_len else _OBJECT_LONG.format(a=_article(kw), kw=kw)
    if len(_words(long)) < LONG_MIN_WORDS or long == short:
        long = f"{long}, " + _OBJECT_LONG.format(a=_article(kw), kw=kw).split(", ", 1)[1]
    out = []
    for kind, text in (("object_keyword", kw), ("object_short", short), ("object_long", long)):
        if match_keyword([text], obj)[0]:
            logger.warning("dropped %s prompt of %s: it names the object %r", kind, fid, obj)
            continue
        out.append(_make(fid, kind, text, kw, obj))
    return out


def read_prompt_file(path: str | Path) -> list[Prompt]:
    """Read user prompts from ``.jsonl`` (objects with ``prompt`` and optional ``finding_id``,
    ``prompt_kind``), ``.csv`` (a ``prompt`` column, same optional columns) or ``.txt`` (one
    prompt per line; blank lines and ``#`` comments skipped). Empty prompts are an error naming
    the line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    suffix = p.suffix.lower()
    rows: list[tuple[int, dict[str, Any]]] = []
    if suffix in (".jsonl", ".ndjson"):
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{p}:{n}: invalid JSON: {exc}") from exc
            if isinstance(obj, str):
                obj = {"prompt": obj}
            if not isinstance(obj, dict):
                raise InputError(f"{p}:{n}: expected an object with a 'prompt' field")
            rows.append((n, obj))
    elif suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "prompt" not in reader.fieldnames:
                raise InputError(
                    f"{p}: a CSV prompt file needs a 'prompt' column (got {reader.fieldnames})"
                )
            rows = [(n, r) for n, r in enumerate(reader, 2)]
    elif suffix in (".txt", ""):
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                rows.append((n, {"prompt": line}))
    else:
        raise InputError(f"{p}: unknown prompt file type {suffix!r} (use .jsonl, .csv or .txt)")
    out = []
    for n, r in rows:
        text = _clean(r.get("prompt") or "")
        if not text:
            raise InputError(f"{p}:{n}: empty prompt")
        fid = _clean(r.get("finding_id") or "") or USER_FINDING
        kind = _clean(r.get("prompt_kind") or "") or "user"
        out.append(
            _make(fid, kind, text, r.get("keyword") or None, r.get("object") or None, source="file")
        )
    if not out:
        raise InputError(f"{p}: no prompts")
    return out


def _rows(table: Any) -> list[dict[str, Any]]:
    if table is None:
        return []
    if isinstance(table, pd.DataFrame):
        return table.to_dict("records")
    if hasattr(table, "to_pylist"):
        return table.to_pylist()
    return list(table)


def _object_rows(rows: list[dict[str, Any]], only_flagged: bool) -> list[dict[str, Any]]:
    """Object findings that get prompts. Their prompts name only the keyword, so every row of
    one keyword would repeat the same texts: without ``only_flagged`` a keyword's unflagged
    rows are represented by its strongest candidate (largest ``gap``, else ``image_rate``), and
    only when none of its rows is flagged."""
    flagged = [r for r in rows if r.get("flagged", True)]
    if only_flagged:
        return flagged
    done = {str(r.get("keyword")) for r in flagged}
    best: dict[str, dict[str, Any]] = {}

    def strength(r: dict[str, Any]) -> float:
        for col in ("gap", "image_rate"):
            v = r.get(col)
            if v is not None and math.isfinite(float(v)):
                return float(v)
        return float("-inf")

    for r in rows:
        kw = str(r.get("keyword"))
        if kw in done:
            continue
        if kw not in best or strength(r) > strength(best[kw]):
            best[kw] = r
    skipped = len(rows) - len(flagged) - len(best)
    if skipped:
        logger.info(
            "%d unflagged object rows share their keyword's prompts with a stronger row: "
            "not prompted separately",
            skipped,
        )
    return flagged + list(best.values())


def build_prompts(
    word_findings: Any = None,
    object_findings: Any = None,
    prompt_file: str | Path | None = None,
    mode: str = "add",
    only_flagged: bool = True,
    object_captions: dict[str, Sequence[str]] | None = None,
    max_tokens: int = MAX_TOKENS,
) -> pd.DataFrame:
    """All reproduction prompts as a DataFrame (columns of :class:`Prompt`), one row per prompt.

    ``word_findings`` / ``object_findings``: the findings tables (Arrow, pandas or row dicts);
    with ``only_flagged`` rows whose ``flagged`` is false are skipped; without it every word
    cluster is prompted, and object rows as :func:`_object_rows` says. ``mode``: ``"add"`` (file
    prompts are added; one with the same ``(finding_id, prompt_kind)`` as a built prompt replaces
    it) or ``"replace"`` (only the file's prompts). Duplicate prompt ids are kept once.
    """
    if mode not in ("add", "replace"):
        raise ValueError(f"mode must be 'add' or 'replace', got {mode!r}")
    built: list[Prompt] = []
    if mode == "add":
        for row in _rows(word_findings):
            if only_flagged and "flagged" in row and not row["flagged"]:
                continue
            built.extend(word_prompts(row, max_tokens))
        for row in _object_rows(_rows(object_findings), only_flagged):
            caps = (object_captions or {}).get(str(row["finding_id"]), ())
            built.extend(object_prompts(row, caps, max_tokens))
    user = read_prompt_file(prompt_file) if prompt_file else []
    if mode == "replace" and not user:
        raise InputError("prompt mode 'replace' needs a prompt file")
    overridden = {(u.finding_id, u.prompt_kind) for u in user}
    merged = [b for b in built if (b.finding_id, b.prompt_kind) not in overridden] + user
    seen: set[str] = set()
    final = []
    for p in merged:
        if p.prompt_id in seen:
            continue
        seen.add(p.prompt_id)
        final.append(p)
    if len(final) < len(merged):
        logger.info("dropped %d duplicate prompts", len(merged) - len(final))
    cols = list(Prompt.__dataclass_fields__)
    return pd.DataFrame([asdict(p) for p in final], columns=cols)
