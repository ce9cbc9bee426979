"""Streaming read access to a workspace's training embeddings, for scoring generations.

The reproduce stage compares every generation with the training images: the members of a
replication cluster, a random sample (the copy threshold's calibration), or every image (a
streaming nearest-neighbour pass). :class:`TrainingSet` does that over the embedding parts as a
``pyarrow.dataset.Dataset``, so memory is bounded by the batch size, never by the dataset.
:class:`Relations` says which training images are copies of each other by construction
(duplicate groups, replication clusters): pairs that share one are not "unrelated".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds

from pipelines.common import vectors


class EmptyTrainingSet(ValueError):
    """The embeddings hold no vector of the requested column (every row failed)."""


def _matrix(column: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    return vectors(column, nulls=False, name=name).matrix


class TrainingSet:
    """Read access to the training images' vectors (``column``: ``image_emb``, or the copy
    descriptor ``copy_emb``) of the rows where they are present: cluster members by key, random
    samples, and streaming nearest-neighbour passes."""

    def __init__(self, dataset: pds.Dataset, column: str = "image_emb") -> None:
        self.ds = dataset
        self.column = column
        self.ok = pds.field(column).is_valid()
        self.n_ok = self.ds.count_rows(filter=self.ok)
        if self.n_ok == 0:
            raise EmptyTrainingSet(f"holds no {column} vectors (every row failed)")
        dim = getattr(self.ds.schema.field(column).type, "list_size", None)  # or a plain list
        if not dim:
            dim = self._matrix(self.ds.head(1, columns=[column], filter=self.ok)).shape[1]
        self.dim = int(dim)

    def by_keys(self, keys: list[str]) -> tuple[list[str], np.ndarray]:
        t = self.ds.to_table(
            columns=["key", self.column], filter=self.ok & pds.field("key").isin(list(keys))
        )
        return [str(k) for k in t.column("key").to_pylist()], self._matrix(t)

    def sample(self, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
        idx = np.arange(self.n_ok)
        if self.n_ok > n:
            idx = np.sort(np.random.default_rng(seed).choice(self.n_ok, n, replace=False))
        t = self.ds.take(pa.array(idx), columns=["key", self.column], filter=self.ok)
        return [str(k) for k in t.column("key").to_pylist()], self._matrix(t)

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """Best cosine over every training image and its key, streaming the parts."""
        from detectors.memorization import best_match

        best = np.full(len(queries), -np.inf, np.float32)
        keys: list[str | None] = [None] * len(queries)
        if not len(queries):
            return best, keys
        for batch in self._batches(65536):
            s, j = best_match(queries, self._matrix(batch))
            better = s > best
            bkeys = batch.column("key").to_pylist()
            for i in np.flatnonzero(better):
                keys[i] = str(bkeys[j[i]])
            best = np.where(better, s, best)
        return best, keys

    def nearest_unrelated(
        self, keys: list[str], emb: np.ndarray, relations: Relations
    ) -> np.ndarray:
        """For training samples ``keys``: their best cosine over every other training image
        they are unrelated to (the null of the "whole training set" reference), streaming."""
        from detectors.memorization import max_unrelated_similarity

        best = np.full(len(keys), -np.inf, np.float32)
        qlab = relations.labels(keys)
        qids = np.asarray(keys, dtype=object)
        for batch in self._batches(16384):
            bkeys = [str(k) for k in batch.column("key").to_pylist()]
            m = max_unrelated_similarity(
                emb,
                self._matrix(batch),
                qlab,
                relations.labels(bkeys),
                qids,
                np.asarray(bkeys, dtype=object),
            )
            best = np.maximum(best, m)
        return best

    def captions_matching(self, keyword: str, limit: int = 200) -> list[str]:
        from detectors.text import match_keyword

        out: list[str] = []
        for batch in self.ds.to_batches(columns=["caption"], batch_size=65536):
            caps = batch.column("caption").to_pylist()
            mask = match_keyword(caps, keyword)
            out.extend(c for c, m in zip(caps, mask) if m)
            if len(out) >= limit:
                break
        return out[:limit]

    def _batches(self, batch_size: int) -> Any:
        for batch in self.ds.to_batches(
            columns=["key", self.column], filter=self.ok, batch_size=batch_size
        ):
            if batch.num_rows:
                yield batch

    def _matrix(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        return _matrix(table.column(self.column), self.column)


class Relations:
    """Which training samples are copies of each other by construction: duplicate groups
    (``exact`` and ``near`` rows of the duplicates finding) and replication clusters (the word
    finding's ``member_keys``). Pairs that share one are left out of the "unrelated pairs" the
    copy threshold is calibrated on. Memory: one dict entry per sample in a group or cluster."""

    def __init__(self, duplicates: str | Path | None, word: Any) -> None:
        """``duplicates``: the duplicates finding's parquet (None: none); ``word``: the word
        replication finding as a pandas frame (None: none)."""
        self.maps: list[dict[str, int]] = []
        if duplicates is not None:
            import pyarrow.parquet as pq

            dup = pq.read_table(
                duplicates,
                columns=["key", "group_id", "kind"],
                filters=[("kind", "in", ["exact", "near"])],
            ).to_pandas()
            for _kind, g in dup.groupby("kind"):
                self.maps.append(dict(zip(g["key"].astype(str), g["group_id"].astype(np.int64))))
        if word is not None and len(word):
            clusters: dict[str, int] = {}
            for f, members in enumerate(word["member_keys"]):
                for k in members if members is not None else []:
                    clusters.setdefault(str(k), f)
            self.maps.append(clusters)

    def labels(self, keys: list[str]) -> list[np.ndarray]:
        """One label array per relation over ``keys`` (-1 = in no group)."""
        return [np.fromiter((m.get(k, -1) for k in keys), np.int64, len(keys)) for m in self.maps]
