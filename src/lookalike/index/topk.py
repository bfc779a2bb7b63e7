"""Top-k selection over blocks of candidate scores, shared by every index kind."""

from __future__ import annotations

import numpy as np


class RunningTopK:
    """The best k (score, id) of each query over candidate blocks seen one at a time."""

    def __init__(self, queries: int, k: int) -> None:
        self.k = k
        self.scores = np.full((queries, 0), -np.inf, dtype=np.float32)
        self.ids = np.zeros((queries, 0), dtype=np.int64)

    def add(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Merge one block of (n_queries, m) scores and ids."""
        scores, ids = top_k(scores, ids, self.k)
        self.scores, self.ids = top_k(
            np.concatenate([self.scores, scores], axis=1),
            np.concatenate([self.ids, ids], axis=1),
            self.k,
        )

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), best first, padded to k with -inf / -1."""
        return pad(self.scores, self.ids, self.k)


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score, id) of each row of (n_queries, m) arrays, best first."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def at_least(
    scores: np.ndarray, ids: np.ndarray, min_score: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Results scoring below ``min_score`` (when given) turned into missing slots."""
    if min_score is None:
        return scores, ids
    below = scores < min_score
    return np.where(below, -np.inf, scores).astype(np.float32), np.where(below, -1, ids)


def pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows padded to k columns with score -inf and id -1; ids of -inf scores become -1."""
    ids = np.where(np.isfinite(scores), ids, -1)
    missing = k - scores.shape[1]
    if missing > 0:
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, missing)), constant_values=-1)
    return scores, ids
