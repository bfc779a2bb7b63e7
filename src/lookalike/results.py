"""From query parts to one vector, and from stored rows to the public Item and Hit."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import BadInputError, ModelMismatchError
from .fetch import is_url
from .query import QueryPart
from .types import Hit, Item

DEDUPE_BLOCK = 256  # candidates compared at once when dropping near-duplicates


def combine(
    parts: list[QueryPart], part_vector: Callable[[QueryPart], np.ndarray], dim: int
) -> np.ndarray:
    """The unit vector of weighted parts: the normalised weighted sum of their vectors."""
    total = np.zeros(dim, dtype=np.float32)
    for part in parts:
        total += part.weight * part_vector(part)
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < 1e-6:
        raise BadInputError("the query parts cancel out: their weighted sum is zero")
    return total / norm


def unit_vector(value: Any, dim: int) -> np.ndarray:
    """A raw vector query, checked and normalised."""
    try:
        with np.errstate(over="ignore"):  # huge numbers become inf, refused below
            vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadInputError("a vector query must be a list of numbers") from None
    if vector.ndim != 1 or len(vector) != dim:
        raise ModelMismatchError(
            f"the query vector has shape {vector.shape}; this collection holds {dim}-d vectors"
        )
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise BadInputError("a vector query must be finite and non-zero")
    return vector / norm


def dedupe(
    found: list[tuple[int, float]],
    threshold: float,
    vectors: Callable[[Sequence[int]], np.ndarray],
    k: int,
) -> list[tuple[int, float]]:
    """The first ``k`` (id, score) hits whose cosine to every better-ranked kept hit stays
    below ``threshold``."""
    if not found:
        return found
    stored = vectors([i for i, _ in found])
    kept_vectors = np.empty((min(k, len(found)), stored.shape[1]), dtype=stored.dtype)
    kept: list[int] = []
    # a block of candidates is compared with the kept hits in one product, then with each
    # other: thousands of hits (clip-retrieval's front asks 3,000) take milliseconds
    for begin in range(0, len(found), DEDUPE_BLOCK):
        block = stored[begin : begin + DEDUPE_BLOCK]
        near_kept = (block @ kept_vectors[: len(kept)].T >= threshold).any(axis=1)
        among = block @ block.T >= threshold
        chosen = np.zeros(len(block), dtype=bool)
        for j in np.flatnonzero(~near_kept).tolist():
            if (among[j] & chosen).any():
                continue
            chosen[j] = True
            kept_vectors[len(kept)] = block[j]
            kept.append(begin + j)
            if len(kept) == k:
                return [found[p] for p in kept]
    return [found[p] for p in kept]


def hit_of(row: Any, score: float) -> Hit:
    """A stored row as a search result."""
    return Hit(**_fields(row), score=score)


def item_of(row: Any) -> Item:
    """A stored row as an Item."""
    return Item(**_fields(row))


def _fields(row: Any) -> dict[str, Any]:
    """A stored row as Item fields: its key is a path or a URL."""
    remote = is_url(row.key)
    return {
        "id": row.id,
        "path": None if remote else row.key,
        "url": row.key if remote else None,
        "width": row.width,
        "height": row.height,
        "metadata": row.metadata,
    }


def file_stat(locator: str) -> tuple[int | None, float | None]:
    """(size, mtime) of a local file; (None, None) for a URL or a file that cannot be read."""
    if is_url(locator):
        return None, None
    try:
        stat = os.stat(locator)
    except OSError:
        return None, None
    return stat.st_size, stat.st_mtime
