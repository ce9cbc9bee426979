"""The ``duplicates`` finding: groups of three kinds in one table, and what they remove together.

:mod:`detectors.dedup` finds groups (hash values, FAISS near-duplicate search, connected
components); this module turns rows sorted by key into the finding, kind by kind, and counts
duplicates once:

* :func:`exact_labels` (equal sha256 of the bytes or equal decoded-pixel hash, among rows whose
  image decoded: identical empty files or error pages are failures, never duplicates),
  :func:`caption_labels` (equal normalised captions), :func:`kind_table` (a kind's rows:
  representative by the keep-one priority or the most central member, nearest other member);
* :func:`near_table`: near-duplicate groups through :func:`detectors.dedup.near_duplicate_groups`,
  the function the Beam pipeline is tested against, over the rows that have an embedding;
* :func:`combine`: the kinds in one table with group ids unique across kinds, and the column
  ``adds_beyond_exact`` (near rows: the group holds images of at least two different exact
  groups or ungrouped images, so it removes something the exact groups do not; null for exact
  and caption rows);
* :func:`summarize` (:func:`union_counts`): groups, rows and removable rows per kind, and the
  rows removable once the groups of several kinds that share a sample are merged (what
  ``laion-audit filter`` drops: one row kept per merged group), so a row that is an exact and a
  near duplicate counts once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from detectors import dedup as dd

logger = logging.getLogger(__name__)

KEEP_POLICIES = ("first", "clip_score", "resolution", "central")
BEYOND_EXACT = "adds_beyond_exact"


def exact_labels(
    n: int, hashes: Sequence[Sequence[str | None] | None], decoded: np.ndarray
) -> np.ndarray:
    """Groups of equal hash among decoded rows (``decoded`` True), merged over the hash lists
    given (e.g. sha256 of the bytes and a pixel hash; None lists are skipped)."""
    labs = [
        dd.value_groups([h if ok else None for h, ok in zip(v, decoded)])
        for v in hashes
        if v is not None
    ]
    return dd.merge_labels(n, *labs) if labs else np.full(n, -1, np.int64)


def caption_labels(captions: Sequence[str | None]) -> np.ndarray:
    """Groups of equal captions after :func:`detectors.text.normalize_caption`."""
    from detectors.text import normalize_caption

    return dd.value_groups([normalize_caption(c) for c in captions])


def _central_priority(x: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    priority = dd.group_centrality(x, labels)
    priority[~valid] = np.nan
    return priority


def kind_table(
    kind: str,
    keys: np.ndarray,
    labels: np.ndarray,
    x: np.ndarray,
    valid: np.ndarray,
    priority: np.ndarray | None = None,
    central: bool = False,
) -> Any:
    """One kind's rows of the finding (:func:`detectors.dedup.group_table`, group ids from 0):
    the representative has the highest ``priority`` (``central``: the member closest to its
    group's mean embedding), every member its most similar other member."""
    if central:
        priority = _central_priority(x, labels, valid)
    rep = dd.pick_representatives(labels, priority)
    nbr, sim = dd.group_nearest(x, labels, valid)
    return dd.group_table(keys, labels, kind, rep, nbr, sim)


def near_table(
    keys: np.ndarray,
    x: np.ndarray,
    valid: np.ndarray,
    threshold: float,
    priority: np.ndarray | None = None,
    central: bool = False,
    **search: Any,
) -> tuple[Any, dict[str, Any]]:
    """Near-duplicate rows among the rows with an embedding (``valid``), by
    :func:`detectors.dedup.near_duplicate_groups` (``search``: method, partition_size,
    max_probes, ...); ``central`` re-picks each group's representative as in
    :func:`kind_table`. Returns ``(table, info)``."""
    import pyarrow as pa

    rows = np.flatnonzero(valid)
    table, info = dd.near_duplicate_groups(
        keys[rows],
        x[rows],
        threshold,
        priority=None if priority is None or central else priority[rows],
        **search,
    )
    if central and table.num_rows:
        labels = labels_of(table, keys)
        rep = dd.pick_representatives(labels, _central_priority(x, labels, valid))
        at = _rows_of(table, keys)
        for name, col in (
            ("representative_key", pa.array(keys[rep[at]].tolist(), pa.string())),
            ("is_representative", pa.array(rep[at] == at, pa.bool_())),
        ):
            table = table.set_column(table.schema.get_field_index(name), name, col)
    return table, info


def _rows_of(table: Any, keys: np.ndarray) -> np.ndarray:
    """Row of each table row's key in ``keys``."""
    row_of = {k: i for i, k in enumerate(keys.tolist())}
    return np.array([row_of[k] for k in table.column("key").to_pylist()], dtype=np.int64)


def labels_of(table: Any, keys: np.ndarray) -> np.ndarray:
    """Group id per row of ``keys`` from one kind's rows (-1 for rows in no group)."""
    labels = np.full(len(keys), -1, np.int64)
    labels[_rows_of(table, keys)] = table.column("group_id").to_numpy()
    return labels


def shift_groups(table: Any, offset: int) -> Any:
    """``table`` with ``offset`` added to its group ids."""
    import pyarrow as pa

    if not offset:
        return table
    i = table.schema.get_field_index("group_id")
    return table.set_column(
        i, "group_id", pa.array(table.column("group_id").to_numpy() + offset, pa.int64())
    )


def combine(tables: Sequence[Any]) -> Any:
    """The kinds' tables (each numbered from 0) as one finding: group ids shifted to be unique
    across kinds, in the order given, and the ``adds_beyond_exact`` column."""
    import pyarrow as pa

    out, offset = [], 0
    for t in tables:
        t = shift_groups(t, offset)
        gids = t.column("group_id").to_numpy()
        offset = int(gids.max()) + 1 if gids.size else offset
        out.append(t)
    if not out:
        e = np.zeros(0, np.int64)
        out.append(dd.group_table(np.zeros(0, object), e, "exact", e, e, np.zeros(0, np.float32)))
    table = pa.concat_tables(out)
    return table.append_column(BEYOND_EXACT, pa.array(_beyond_exact(table), pa.bool_()))


def _key_codes(table: Any) -> tuple[np.ndarray, int]:
    import pandas as pd

    codes, uniq = pd.factorize(np.asarray(table.column("key").to_pylist(), dtype=object))
    return codes.astype(np.int64), len(uniq)


def _beyond_exact(table: Any) -> list[bool | None]:
    """Per row: for near rows, whether its group spans two or more exact groups or ungrouped
    rows; None for the other kinds."""
    kind = np.asarray(table.column("kind").to_pylist(), dtype=object)
    gid = table.column("group_id").to_numpy()
    codes, n_keys = _key_codes(table)
    exact = kind == "exact"
    near = np.flatnonzero(kind == "near")
    out = np.full(len(kind), None, dtype=object)
    if near.size:
        # a row's exact class: its exact group, else a class of its own
        cls = np.arange(n_keys, dtype=np.int64) + (int(gid.max()) + 1)
        cls[codes[exact]] = gid[exact]
        pairs = np.unique(np.stack([gid[near], cls[codes[near]]], axis=1), axis=0)
        groups, n_classes = np.unique(pairs[:, 0], return_counts=True)
        out[near] = n_classes[np.searchsorted(groups, gid[near])] >= 2
    return out.tolist()


def _kind_counts(table: Any) -> dict[str, int]:
    gids = table.column("group_id").to_numpy()
    n_groups = int(np.unique(gids).size)
    return {"groups": n_groups, "rows": table.num_rows, "removable": table.num_rows - n_groups}


def union_counts(table: Any, kinds: Sequence[str]) -> dict[str, Any]:
    """Rows of the ``kinds`` groups counted once: groups that share a row are merged (as
    ``laion-audit filter`` merges them); ``removable`` = rows in any group - merged groups, the
    rows a filter keeping one per merged group drops."""
    t = _of_kinds(table, kinds)
    codes, n_keys = _key_codes(t)
    gid = t.column("group_id").to_numpy()
    kind = np.asarray(t.column("kind").to_pylist(), dtype=object)
    labelings = []
    for k in kinds:
        m = kind == k
        lab = np.full(n_keys, -1, np.int64)
        lab[codes[m]] = gid[m]
        labelings.append(lab)
    merged = dd.merge_labels(n_keys, *labelings)
    n_groups = int(np.unique(merged[merged >= 0]).size)
    return {
        "kinds": list(kinds),
        "rows": n_keys,
        "groups": n_groups,
        "removable": n_keys - n_groups,
    }


def summarize(table: Any, kinds: Sequence[str]) -> dict[str, Any]:
    """The finding's counts: per kind ``groups``, ``rows`` and ``removable`` (all but one per
    group; near also ``groups_beyond_exact`` and ``removable_beyond_exact``: the rows a filter
    of exact + near drops beyond what exact alone drops), ``union`` (:func:`union_counts` over
    every kind, ``all``, and over ``exact+near`` when both were searched) and
    ``unique_removable`` (``union.all.removable``: each removable row counted once)."""
    counts = {k: _kind_counts(_of_kinds(table, [k])) for k in kinds}
    union = {"all": union_counts(table, kinds)}
    if "exact" in kinds and "near" in kinds:
        union["exact+near"] = union_counts(table, ["exact", "near"])
        near = _of_kinds(table, ["near"])
        adds = np.asarray(near.column(BEYOND_EXACT).to_pylist(), dtype=bool)
        counts["near"]["groups_beyond_exact"] = int(
            np.unique(near.column("group_id").to_numpy()[adds]).size
        )
        counts["near"]["removable_beyond_exact"] = (
            union["exact+near"]["removable"] - counts["exact"]["removable"]
        )
    return {"counts": counts, "union": union, "unique_removable": union["all"]["removable"]}


def _of_kinds(table: Any, kinds: Sequence[str]) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return table.filter(
        pc.is_in(table.column("kind"), value_set=pa.array(list(kinds), pa.string()))
    )


# ------------------------------------------------------------------------------ calibration


def calibrate(
    x: np.ndarray,
    truth: np.ndarray,
    min_precision: float = 0.98,
    thresholds: np.ndarray | None = None,
) -> dict[str, Any]:
    """Sweep near-duplicate thresholds against planted groups (``truth``: group per row, -1 =
    none; :func:`detectors.dedup.threshold_sweep`) and pick one
    (:func:`detectors.dedup.choose_threshold`); each row of the sweep is logged."""
    sweep = dd.threshold_sweep(x, truth, thresholds)
    chosen = dd.choose_threshold(sweep, min_precision)
    for r in sweep:
        logger.info(
            "threshold %.3f: precision %.4f recall %.4f f1 %.4f (direct pairs: "
            "precision %.4f recall %.4f)",
            r["threshold"],
            r["precision"],
            r["recall"],
            r["f1"],
            r["pair_precision"],
            r["pair_recall"],
        )
    logger.info(
        "calibrated threshold: %.3f (precision %.4f, recall %.4f, f1 %.4f)",
        chosen["threshold"],
        chosen["precision"],
        chosen["recall"],
        chosen["f1"],
    )
    return {"sweep": sweep, "chosen": chosen, "min_precision": min_precision}
