"""Vector indexes over a collection's stored vectors, behind one small interface."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .store import VectorShards


class VectorIndex(Protocol):
    """Finds the stored vectors with the highest inner product with each query."""

    kind: str

    def search(
        self, queries: np.ndarray, k: int, count: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of the first ``count`` vectors for each query row.

        ``allowed`` is a boolean mask over ids (False excludes the id: deleted, filtered out).
        Returns (scores, ids), each of shape (n_queries, k), best first; missing slots
        hold id -1 and score -inf.
        """
        ...


class FlatIndex:
    """Exact search straight over the memory-mapped vector shards: nothing to build or store."""

    kind = "flat"

    def __init__(self, vectors: VectorShards) -> None:
        self.vectors = vectors

    def search(
        self, queries: np.ndarray, k: int, count: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`VectorIndex`."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        best = RunningTopK(len(queries), k)
        for start, block in self.vectors.chunks(count):
            scores = queries @ block.T
            if allowed is not None:
                scores[:, ~allowed[start : start + len(block)]] = -np.inf
            best.add(scores, np.broadcast_to(np.arange(start, start + len(block)), scores.shape))
        return best.result()


class RunningTopK:
    """The best k (score, id) of each query over candidate blocks seen one at a time."""

    def __init__(self, queries: int, k: int) -> None:
        self.k = k
        self.scores = np.full((queries, 0), -np.inf, dtype=np.float32)
        self.ids = np.zeros((queries, 0), dtype=np.int64)

    def add(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Merge one block of (n_queries, m) scores and ids."""
        scores, ids = _top_k(scores, ids, self.k)
        self.scores, self.ids = _top_k(
            np.concatenate([self.scores, scores], axis=1),
            np.concatenate([self.ids, ids], axis=1),
            self.k,
        )

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), best first, padded to k with -inf / -1."""
        return _pad(self.scores, self.ids, self.k)


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score, id) of each row, best first, dropping -inf entries' order concerns."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.where(np.isfinite(scores), ids, -1)
    missing = k - scores.shape[1]
    if missing > 0:
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, missing)), constant_values=-1)
    return scores, ids
