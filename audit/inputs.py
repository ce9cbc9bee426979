"""The workspace's embeddings as matrices for the detectors.

Each reader returns numpy arrays aligned row by row with the keys (and captions), so the
detectors never see Arrow tables or files:

* :func:`load_samples`: the rows with an image embedding (failed samples dropped and counted),
  optionally with their copy descriptors: word- and object-level replication.
* :func:`load_keyed_rows`: every row, sorted by key, with one embedding column as a matrix and
  a validity mask, the hashes, captions and the keep-one preferences: duplicates.
* :func:`load_captions`: every row's caption, with its text embedding when there is one:
  concept frequency.
* :func:`caption_token_mask`: which captions fit the workspace model's tokenizer.

Column problems are :class:`audit.errors.InputError` (exit code 3) naming the column.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from audit.errors import InputError
from pipelines.common import ModelInfo, VectorColumnError, Vectors, vectors

if TYPE_CHECKING:
    from audit.workspace import Workspace

logger = logging.getLogger(__name__)


def column_vectors(
    column: pa.ChunkedArray | pa.Array, name: str, *, dtype: Any = np.float32, nulls: bool = True
) -> Vectors:
    """:func:`pipelines.common.vectors`, its errors as input errors."""
    try:
        return vectors(column, dtype=dtype, nulls=nulls, name=name)
    except VectorColumnError as exc:
        raise InputError(str(exc)) from exc


# ------------------------------------------------------------------------------ samples


@dataclass
class Samples:
    """The workspace's usable samples: ok image embeddings with their keys and captions."""

    keys: np.ndarray
    captions: list[str]
    emb: np.ndarray
    n_total: int
    n_failed: int
    status_counts: dict[str, int]
    copy: np.ndarray | None = None
    """Copy-descriptor rows aligned with ``emb`` (when loaded with ``copy=True``)."""


def load_samples(ws: Workspace, copy: bool = False) -> Samples:
    """Rows with an image embedding (failed samples dropped and counted); with ``copy`` also
    their copy descriptors (rows without one are dropped too)."""
    import pyarrow.compute as pc

    cols = ["key", "caption", "status", "image_emb"] + (["copy_emb"] if copy else [])
    table = ws.load_embeddings(columns=cols)
    n_total = table.num_rows
    counts: dict[str, int] = {}
    for s in table.column("status").to_pylist():
        counts[str(s)] = counts.get(str(s), 0) + 1
    valid = pc.is_valid(table.column("image_emb"))
    if copy:
        valid = pc.and_(valid, pc.is_valid(table.column("copy_emb")))
    ok = table.filter(valid)
    n_failed = n_total - ok.num_rows
    if n_failed:
        logger.info("dropped %d of %d samples without an image embedding", n_failed, n_total)
    keys = np.asarray(ok.column("key").to_pylist(), dtype=object)
    captions = [c or "" for c in ok.column("caption").to_pylist()]
    emb = column_vectors(ok.column("image_emb"), "image_emb", nulls=False).matrix
    if len(keys) and emb.shape[1] == 0:
        raise InputError("image_emb has dimension 0")
    copy_emb = (
        column_vectors(ok.column("copy_emb"), "copy_emb", nulls=False).matrix if copy else None
    )
    return Samples(keys, captions, emb, n_total, n_failed, counts, copy_emb)


def token_counter(model: ModelInfo) -> tuple[Callable[[str], int], str]:
    """A caption -> token count function using the workspace model's tokenizer (with start and
    end tokens), or the rough word/punctuation count when that tokenizer is not available."""
    from detectors.text import count_tokens

    name = model.name
    if name:
        try:
            import open_clip

            from audit.models import TINY_CLIP_NAME, register_tiny_synth

            if name == TINY_CLIP_NAME:
                register_tiny_synth()
            tok = open_clip.get_tokenizer(str(name))
            if hasattr(tok, "encode"):  # open_clip SimpleTokenizer (CLIP BPE)
                return (lambda t: len(tok.encode(t or "")) + 2), f"open_clip:{name}"
            inner = getattr(tok, "tokenizer", None)
            if inner is not None:  # HFTokenizer wrapper
                return (lambda t: len(inner(t or "")["input_ids"])), f"hf:{name}"
        except Exception as exc:  # noqa: BLE001 - fall back, and say so
            logger.warning("tokenizer of %s unavailable (%s); counting words instead", name, exc)
    return count_tokens, "words_and_punctuation"


def caption_token_mask(
    model: ModelInfo, captions: Sequence[str], max_tokens: int
) -> tuple[np.ndarray, str | None]:
    """(captions of at most ``max_tokens`` tokens, the tokenizer used); ``max_tokens`` 0 keeps
    every caption (and names no tokenizer)."""
    if not max_tokens:
        return np.ones(len(captions), bool), None
    count, tokenizer = token_counter(model)
    lengths = np.fromiter((count(c) for c in captions), np.int64, len(captions))
    ok = lengths <= max_tokens
    logger.info(
        "%d captions longer than %d tokens (%s) are left out of keyword subsets",
        int((~ok).sum()),
        max_tokens,
        tokenizer,
    )
    return ok, tokenizer


# ------------------------------------------------------------------------------ keyed rows

_KEYED_TEXT = ("sha256", "pixel_hash", "caption", "status")
_KEYED_NUMBERS = ("width", "height", "clip_score")


@dataclass
class KeyedRows:
    """Every row of the embeddings, sorted by key. ``x``: the embedding column read (zero rows
    where it is null, ``valid`` False); the other columns are None when the embeddings lack
    them."""

    keys: np.ndarray
    valid: np.ndarray
    x: np.ndarray
    sha256: list[str | None] | None = None
    pixel_hash: list[str | None] | None = None
    caption: list[str | None] | None = None
    status: list[str | None] | None = None
    width: np.ndarray | None = None
    height: np.ndarray | None = None
    clip_score: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(len(self.keys))

    def keep_priority(self, policy: str) -> np.ndarray | None:
        """Per-row preference of a keep-one policy (higher wins; None: the smallest key;
        ``central`` is decided per group by the detector)."""
        if policy in ("first", "central"):
            return None
        if policy == "clip_score":
            if self.clip_score is None:
                raise InputError("--keep clip_score: the embeddings have no clip_score column")
            return self.clip_score
        if policy == "resolution":
            if self.width is None or self.height is None:
                raise InputError("--keep resolution: the embeddings have no width/height columns")
            return self.width * self.height
        raise ValueError(policy)


def load_keyed_rows(ws: Workspace, column: str = "image_emb") -> KeyedRows:
    """The rows sorted by key with ``column`` (a copy descriptor or the CLIP image embedding)
    as a float16 matrix. Raises InputError naming what is missing, null or repeated keys."""
    names = set(ws.embeddings().schema.names)
    missing = {"key", column} - names
    if missing:
        raise InputError(f"embeddings lack columns {sorted(missing)} (in {ws.embeddings_dir})")
    wanted = ["key", *_KEYED_TEXT, column, *_KEYED_NUMBERS]
    t = ws.load_embeddings(columns=[c for c in dict.fromkeys(wanted) if c in names])
    if t.num_rows == 0:
        raise InputError(f"no rows in {ws.embeddings_dir}")
    t = t.sort_by("key")
    keys = np.asarray(t.column("key").to_pylist(), dtype=object)
    if any(k is None for k in keys):
        raise InputError("embeddings contain rows with a null key")
    if keys.size > 1 and np.any(keys[1:] == keys[:-1]):
        dup = keys[1:][keys[1:] == keys[:-1]][:5].tolist()
        raise InputError(f"embeddings contain duplicated keys, e.g. {dup}")
    v = column_vectors(t.column(column), column, dtype=np.float16)
    out = KeyedRows(keys, v.valid, v.matrix)
    for c in _KEYED_TEXT:
        if c in names:
            setattr(out, c, t.column(c).to_pylist())
    for c in _KEYED_NUMBERS:
        if c in names:
            setattr(out, c, t.column(c).to_numpy(zero_copy_only=False).astype(np.float64))
    return out


# ------------------------------------------------------------------------------ captions


@dataclass
class Captions:
    """Every row's caption (None where missing) and its ``text_emb`` column (None when the
    embeddings have none)."""

    captions: list[str | None]
    text_emb: pa.ChunkedArray | None

    @property
    def n_rows(self) -> int:
        return len(self.captions)

    def text_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows with a text embedding, their embeddings as float32). InputError when the
        embeddings have none."""
        if self.text_emb is None:
            raise InputError("embeddings have no text_emb column")
        v = column_vectors(self.text_emb, "text_emb")
        return v.valid, v.matrix[v.valid]


def load_captions(ws: Workspace) -> Captions:
    """The captions (and text embeddings) of every row; InputError without a caption column."""
    names = set(ws.embeddings().schema.names)
    if "caption" not in names:
        raise InputError(f"embeddings lack a caption column (in {ws.embeddings_dir})")
    cols = ["caption"] + (["text_emb"] if "text_emb" in names else [])
    t = ws.load_embeddings(columns=cols)
    return Captions(
        t.column("caption").to_pylist(), t.column("text_emb") if "text_emb" in names else None
    )


def truth_groups(path: str | Path, keys: np.ndarray, option: str = "calibrate") -> np.ndarray:
    """Planted group per key from a truth parquet (columns ``key`` and ``dup_group``, e.g. a
    testbed's truth.parquet); -1 = none. A missing file is a ConfigError naming ``option``."""
    import pyarrow.parquet as pq

    from audit.config import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{option}: file not found (got {str(p)!r})")
    t = pq.read_table(p)
    if not {"key", "dup_group"} <= set(t.column_names):
        raise InputError(f"{p}: needs columns key and dup_group (has {t.column_names})")
    m = dict(zip(t.column("key").to_pylist(), t.column("dup_group").to_pylist()))
    return np.array([-1 if m.get(k) is None else int(m[k]) for k in keys], dtype=np.int64)
