"""Vector indexes over a collection's vector shards: exact (flat) search, a trained IVF
index with re-ranking, shared top-k helpers, and the policy of which index when."""

from .flat import FlatIndex, VectorIndex
from .ivf import IvfIndex, build_ivf, drop_ivf, has_ivf
from .policy import (
    FLAT_LIMIT,
    INDEX_KINDS,
    build_index,
    keep_up,
    needs_training,
    open_index,
    tune_index,
)
from .topk import RunningTopK, pad, top_k

__all__ = [
    "FLAT_LIMIT",
    "INDEX_KINDS",
    "FlatIndex",
    "IvfIndex",
    "RunningTopK",
    "VectorIndex",
    "build_index",
    "build_ivf",
    "drop_ivf",
    "has_ivf",
    "keep_up",
    "needs_training",
    "open_index",
    "pad",
    "top_k",
    "tune_index",
]
