"""Which index a collection's vectors get, and when it is trained, saved or dropped."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..store import VectorShards
from .flat import FlatIndex, VectorIndex
from .ivf import IvfIndex, build_ivf, drop_ivf, has_ivf, tune_ivf

FLAT_LIMIT = 100_000  # live images above which an IVF index is trained
INDEX_KINDS = ("auto", "flat", "ivf")
log = logging.getLogger("lookalike")


def open_index(path: Path, vectors: VectorShards) -> VectorIndex:
    """The collection's trained index, or exact search when it has none or it is unreadable."""
    if not has_ivf(path):
        return FlatIndex(vectors)
    try:
        index = IvfIndex(path, vectors)
    except Exception as error:  # a damaged index fails in many ways inside Faiss
        log.warning(
            "the IVF index of %s cannot be read (%s): searching exactly until "
            "`lookalike verify --repair` rebuilds it",
            path,
            error,
        )
        return FlatIndex(vectors)
    index.map_vectors()
    return index


def build_index(
    path: Path,
    vectors: VectorShards,
    count: int,
    live: np.ndarray,
    kind: str = "auto",
    *,
    target_recall: float = 0.95,
    nlist: int | None = None,
    memory_budget: int | None = None,
    tune_queries: np.ndarray | None = None,
) -> VectorIndex:
    """(Re)build the index of the first ``count`` vectors (``live`` masks the deleted out).

    ``auto`` picks exact search below ``FLAT_LIMIT`` live vectors and a trained IVF index
    above; ``ivf`` trains even a small collection; ``flat`` drops any trained index.
    ``tune_queries``: vectors of the searches to tune a trained index's recall on.
    """
    if kind not in INDEX_KINDS:
        raise BadInputError(f"index kind must be one of {', '.join(INDEX_KINDS)}")
    if kind == "auto":
        kind = "ivf" if int(live.sum()) >= FLAT_LIMIT else "flat"
    if kind == "flat":
        drop_ivf(path)
    else:
        build_ivf(
            path,
            vectors,
            count,
            live,
            target_recall=target_recall,
            nlist=nlist,
            memory_budget=memory_budget,
            tune_queries=tune_queries,
        )
    return open_index(path, vectors)


def tune_index(
    path: Path,
    index: VectorIndex,
    count: int,
    live: np.ndarray,
    queries: np.ndarray | None = None,
    *,
    target_recall: float = 0.95,
) -> VectorIndex:
    """Re-tune a trained index's search settings to ``target_recall`` on ``queries`` (vectors;
    default: stored vectors searched as new ones) without retraining; the index reopened."""
    if not isinstance(index, IvfIndex):
        raise BadInputError("this collection is searched exactly: there is no index to tune")
    if not 0 < target_recall <= 1:
        raise BadInputError("target_recall must be in (0, 1]")
    index.save()  # vectors held only in memory join the index file, so tuning sees them
    tune_ivf(path, index.vectors, count, live, queries, target_recall=target_recall)
    return open_index(path, index.vectors)


def needs_training(index: VectorIndex, live_count: int) -> bool:
    """Whether a collection has outgrown exact search."""
    return not isinstance(index, IvfIndex) and live_count >= FLAT_LIMIT


def keep_up(index: VectorIndex, count: int) -> None:
    """Bring a trained index up to ``count`` vectors; persist its delta once it is large."""
    if isinstance(index, IvfIndex):
        index.catch_up(count)
        if index.pending > max(50_000, index.params.indexed_count // 10):
            index.save()
