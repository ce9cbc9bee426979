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
  caption terms; :func:`resolve_concepts` reads a ``--concepts`` list or file instead.
* :func:`object_vocabulary`, :func:`plan_objects`, :func:`object_classes`: what the ``objects``
  stage tests, what only competes, and where each object came from (the weighted BH's classes).

Embedding a vocabulary with the workspace's CLIP text tower (the model named in
``embeddings/model.json``): :func:`concept_text_embeddings` (prompt ensembles per concept, the
same for ``concepts`` and ``poisons``, so a radius means the same in both),
:func:`concept_embeddings` (the same, loading the workspace's model) and :class:`PromptEncoder`
(the keyword x object prompts of ``objects`` and ``reproduce``, cached per prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from audit.config import ConfigError
from audit.errors import InputError
from detectors.concepts import PROMPT_TEMPLATES
from pipelines.common import ModelInfo

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


def flatten_list(values: Sequence[str]) -> list[str]:
    """Option values given as repeated flags and/or comma lists as one list: items split at
    commas, whitespace collapsed, empty and repeated items dropped (first occurrence kept)."""
    out: list[str] = []
    for v in values:
        for part in str(v).split(","):
            part = " ".join(part.split())
            if part and part not in out:
                out.append(part)
    return out


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
    from detectors.concepts import word_matches

    general = general_objects()
    named = word_matches(list(captions), general).sum(axis=0) if len(captions) else []
    present = [c for c, k in zip(general, np.asarray(named).tolist()) if k >= min_count]
    return merge(present, caption_terms(captions, max_terms, min_term_count))


DEFAULT_CONCEPTS_SOURCE = (
    "data: general object list entries named by a caption + frequent caption terms"
)
"""Where :func:`resolve_concepts` says the default concepts came from."""


def resolve_concepts(
    spec: str | None, captions: Sequence[str | None] | None = None
) -> tuple[list[str], str]:
    """The concept list and where it came from: a file (one per line, ``#`` comments), a comma
    list, or (no ``spec``) the data's own (:func:`default_concepts` over ``captions``).
    Repeated concepts (case-insensitive) are dropped."""
    if not spec:
        out = default_concepts(captions or [])
        if not out:
            raise InputError(
                "concepts: no caption names a general-list object or a frequent term; give "
                "--concepts LIST_OR_FILE"
            )
        return out, DEFAULT_CONCEPTS_SOURCE
    p = Path(spec)
    if p.is_file():
        lines = [ln.split("#", 1)[0].strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        items, source = [ln for ln in lines if ln], f"file {p}"
    else:
        if ("/" in spec or spec.endswith(".txt")) and "," not in spec:
            raise ConfigError(f"concepts.concepts: file not found (got {spec!r})")
        items, source = [c.strip() for c in spec.split(",") if c.strip()], "option"
    out: list[str] = []
    for c in items:
        if c.lower() not in {o.lower() for o in out}:
            out.append(c)
    if not out:
        raise ConfigError(f"concepts.concepts: no concepts given (got {spec!r})")
    return out, source


def object_vocabulary(
    captions: Sequence[str | None],
    n_caption_terms: int = DEFAULT_CAPTION_TERMS,
    min_term_count: int = DEFAULT_MIN_TERM_COUNT,
) -> tuple[list[str], dict[str, Any]]:
    """The objects searched besides the listed ones and competing with them: the general list
    and the captions' ``n_caption_terms`` frequent terms, and where each part came from."""
    general = general_objects()
    terms = caption_terms(captions, n_caption_terms, min_term_count)
    vocab = merge(general, terms)
    return vocab, {"general": len(general), "caption_terms": terms, "n_vocabulary": len(vocab)}


def object_classes(listed: Sequence[str], terms: Sequence[str]) -> dict[str, str]:
    """Where each object comes from, for the weighted BH: "listed" (``--objects``), "caption"
    (a caption term: the dataset names it somewhere); objects not in the mapping are "general"
    (only the general list holds them)."""
    out = {t: "caption" for t in terms}
    out.update({o: "listed" for o in listed})
    return out


def plan_objects(
    listed: Sequence[str], vocab: Sequence[str], only_listed: bool = False
) -> tuple[list[str], list[str]]:
    """(objects tested, alternatives that only compete). Nothing listed: the vocabulary, no
    extra alternatives. Listed objects: they come first, then the vocabulary (which only
    competes with ``only_listed``)."""
    if not listed:
        return list(vocab), []
    if only_listed:
        names = {o.lower() for o in listed}
        return list(listed), [v for v in vocab if v.lower() not in names]
    return merge(listed, vocab), []


# ------------------------------------------------------------------------------ embeddings


def concept_text_embeddings(
    model: Any,
    tokenizer: Any,
    concepts: list[str],
    *,
    device: str = "cpu",
    batch_size: int = 256,
    templates: tuple[str, ...] = PROMPT_TEMPLATES,
) -> np.ndarray:
    """Prompt-ensemble text embedding per concept: mean of the normalised template embeddings,
    re-normalised, shape (K, d) (:func:`detectors.concepts.concept_ensembles`)."""
    from audit.models import encode_texts
    from detectors.concepts import concept_ensembles, concept_prompts

    prompts = concept_prompts(concepts, templates)
    emb = encode_texts(model, tokenizer, prompts, device=device, batch_size=batch_size)
    return concept_ensembles(emb, len(concepts))


def concept_embeddings(
    model: ModelInfo, concepts: list[str], device: str = "cpu", batch_size: int = 256
) -> tuple[np.ndarray, str]:
    """(:func:`concept_text_embeddings` with the workspace's model, that model's name).
    InputError when model.json names no model; the model loader's own errors otherwise."""
    from audit.models import load_clip

    if not model.name:
        raise InputError("embeddings/model.json names no model")
    clip, _, tokenizer = load_clip(model.name, pretrained=model.pretrained, device=device)
    emb = concept_text_embeddings(clip, tokenizer, concepts, device=device, batch_size=batch_size)
    return emb, str(model.name)


class PromptEncoder:
    """Encodes prompt ensembles with the workspace's CLIP text tower (cached per prompt).

    ``model``: the workspace's :class:`~pipelines.common.ModelInfo` (or model.json as a dict);
    ``dim``: the image embeddings' size, which the text embeddings must match."""

    def __init__(
        self, model: ModelInfo | dict[str, Any], device: str, batch_size: int, dim: int
    ) -> None:
        from audit.models import load_clip

        info = model if isinstance(model, ModelInfo) else ModelInfo.from_dict(model)
        if not info.name:
            raise InputError(
                "embeddings/model.json names no model: object prompts need the CLIP text "
                "encoder the image embeddings came from"
            )
        try:
            self.model, _, self.tokenizer = load_clip(
                info.name, pretrained=info.pretrained, device=device
            )
        except Exception as exc:  # noqa: BLE001 - any load failure is an input problem here
            raise InputError(f"cannot load the workspace's model {info.name!r}: {exc}") from exc
        self.name = str(info.name)
        self.device = device
        self.batch_size = batch_size
        self.dim = dim
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, prompts: list[str]) -> np.ndarray:
        from audit.models import encode_texts

        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            emb = encode_texts(
                self.model, self.tokenizer, todo, device=self.device, batch_size=self.batch_size
            )
            if emb.shape[1] != self.dim:
                raise InputError(
                    f"model {self.name!r} gives {emb.shape[1]}-d text embeddings but the "
                    f"workspace's images are {self.dim}-d: model.json does not match"
                )
            self._cache.update(zip(todo, emb))
        return np.stack([self._cache[p] for p in prompts])

    def contrast(self, keyword: str, objects: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(with-object ensemble per object (k, d), no-object ensemble (d,))."""
        from detectors.objects import ensemble, object_prompts

        with_obj, without = object_prompts(keyword, objects)
        self.encode([p for o in objects for p in with_obj[o]] + without)  # one batch, cached
        w = np.stack([ensemble(self.encode(with_obj[o])) for o in objects])
        return w, ensemble(self.encode(without))
