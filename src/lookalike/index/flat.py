"""The interface every vector index meets, and exact search over the vector shards."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..store import VectorShards
from .topk import RunningTopK, at_least


class VectorIndex(Protocol):
    """Finds the stored vectors with the highest inner product with each query."""

    kind: str

    def search(
        self,
        queries: np.ndarray,
        k: int,
        count: int,
        allowed: np.ndarray | None,
        min_score: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of the first ``count`` vectors for each query row.

        ``allowed`` is a boolean mask over ids (False excludes the id: deleted, filtered out).
        ``min_score``: results scoring below it are not wanted (their slots come back
        missing), which lets an approximate index search less widely.
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
        self,
        queries: np.ndarray,
        k: int,
        count: int,
        allowed: np.ndarray | None,
        min_score: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`VectorIndex`."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        best = RunningTopK(len(queries), k)
        for start, block in self.vectors.chunks(count):
            scores = queries @ block.T
            if allowed is not None:
                scores[:, ~allowed[start : start + len(block)]] = -np.inf
            best.add(scores, np.broadcast_to(np.arange(start, start + len(block)), scores.shape))
        return at_least(*best.result(), min_score)
