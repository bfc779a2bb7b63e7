"""Duplicates across a whole collection: groups of exact copies (one content hash) and of near
copies (vectors at a cosine of at least a threshold), each with a suggested keeper.

Near copies come from a k-nearest-neighbour self-search through the collection's own index
(``Backend.search``), a batch of rows at a time: each row is linked to the neighbours scoring
at least the threshold, and rows whose k-th neighbour still scores that high are searched
again with a larger k (up to ``MAX_K``). Links join groups in a union-find over the ids that
have any. Memory is that union-find plus one batch of search results, never a matrix of all
pairs; time is one search per row: minutes for millions of rows on a trained (IVF) index,
while exact search costs rows² x dim (fine below ``lookalike.index.FLAT_LIMIT``).

Exact copies come from the rows' content hashes (a GROUP BY in the database; no vectors).

The keeper of a group is the image with the most pixels (width x height), then the most
bytes, then the lowest id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .backends import Backend
from .errors import BadInputError, NotFoundError
from .store import Row
from .types import DuplicateGroup

FIRST_K = 8  # neighbours per row on the first search: most rows have no copy
WIDEN = 4  # k grows by this factor for rows whose every neighbour was a copy
MAX_K = 512  # past it a row's copies are linked through the copies' own searches
SEARCH_BATCH = 1024  # rows searched together on a trained index
FLAT_BLOCK_BYTES = 1 << 26  # exact search scores a batch against every row: bound that block
ROWS_AT_ONCE = 5_000  # group members whose rows are read together to pick keepers
TOLERANCE = 1e-6  # float rounding: identical vectors may score 0.9999999 at threshold 1
log = logging.getLogger("lookalike")

DuplicatesProgress = Callable[[int, int], None]  # (rows searched, rows to search)


def check_threshold(threshold: Any) -> float:
    """The threshold as a float, or BadInputError unless it is a cosine in (0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
        raise BadInputError(f"threshold must be a number in (0, 1]; got {threshold!r:.40}")
    value = float(threshold)
    if not 0 < value <= 1:  # NaN fails here too
        raise BadInputError(f"threshold must be a cosine in (0, 1]; got {value}")
    return value


def find_duplicates(
    backend: Backend,
    threshold: float = 0.95,
    *,
    exact: bool = False,
    progress: DuplicatesProgress | None = None,
) -> list[DuplicateGroup]:
    """Groups of copies among the live rows of ``backend``, largest first (see the module).

    ``exact``: only rows sharing a content hash, found without vectors; else also rows whose
    vectors score at least ``threshold``. ``progress(done, total)`` follows the search.
    """
    threshold = check_threshold(threshold)
    backend.refresh()
    links = Links()
    for ids in backend.content_copies():
        for other in ids[1:]:
            links.link(ids[0], other, 1.0)
    if not exact:
        total, done = backend.live_count(), 0
        for batch, vectors in _live_batches(backend, _batch_size(backend)):
            _link_neighbours(backend, batch, vectors, threshold, links)
            done += len(batch)
            if progress is not None:
                progress(min(done, total), total)
    return _groups(backend, links)


class Links:
    """Union-find over the ids that have a link, with each group's lowest link score."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.lowest: dict[int, float] = {}  # by root

    def find(self, i: int) -> int:
        """The root of ``i``'s group (``i`` itself when it has no link)."""
        root = i
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while i != root:  # path compression keeps later finds short
            self.parent[i], i = root, self.parent[i]
        return root

    def link(self, a: int, b: int, score: float) -> None:
        """Put ``a`` and ``b`` in one group, linked at ``score``."""
        first, second = sorted((self.find(a), self.find(b)))
        self.parent.setdefault(first, first)
        low = min(score, self.lowest.get(first, score))
        if second != first:
            self.parent[second] = first
            low = min(low, self.lowest.pop(second, score))
        self.lowest[first] = low

    def groups(self) -> Iterator[tuple[list[int], float]]:
        """Each group's ids (ascending) and lowest link score."""
        members: dict[int, list[int]] = {}
        for i in sorted(self.parent):
            members.setdefault(self.find(i), []).append(i)
        for root, ids in members.items():
            yield ids, self.lowest[root]


def _batch_size(backend: Backend) -> int:
    """Rows per search: exact search scores each against all rows, so fewer there."""
    if backend.index_kind != "flat":
        return SEARCH_BATCH
    return max(16, min(SEARCH_BATCH, FLAT_BLOCK_BYTES // (4 * max(1, backend.count))))


def _live_batches(backend: Backend, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of the live rows that have a vector, ``size`` at a time, in id order."""
    batch: list[int] = []
    for row in backend.iter_live():
        if not row.stale:  # its vector was lost: nothing to compare
            batch.append(row.id)
        if len(batch) == size:
            yield _with_vectors(backend, batch)
            batch = []
    if batch:
        yield _with_vectors(backend, batch)


def _with_vectors(backend: Backend, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The ids and their vectors, leaving out ids whose vector cannot be read now (removed
    meanwhile, or lost from a damaged shard: `verify` reports those)."""
    try:
        return np.asarray(ids, dtype=np.int64), backend.vectors(ids)
    except NotFoundError:
        readable = []
        for i in ids:
            try:
                readable.append((i, backend.vectors([i])[0]))
            except NotFoundError:
                continue
        if not readable:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return np.asarray([i for i, _ in readable]), np.stack([v for _, v in readable])


def _link_neighbours(
    backend: Backend, ids: np.ndarray, vectors: np.ndarray, threshold: float, links: Links
) -> None:
    """Link each row to its neighbours scoring at least ``threshold``, widening the search
    for rows whose every neighbour did."""
    pending, k = np.arange(len(ids)), FIRST_K
    while len(pending):
        floor = threshold - TOLERANCE
        # k + 1: the row finds itself
        scores, found = backend.search(vectors[pending], k + 1, min_score=floor)
        close = (scores >= floor) & (found >= 0)
        close &= found != ids[pending, None]
        for row, column in zip(*np.nonzero(close), strict=True):
            links.link(int(ids[pending[row]]), int(found[row, column]), float(scores[row, column]))
        crowded = scores[:, -1] >= floor  # all k + 1 found score that high
        if k >= MAX_K:
            if crowded.any():
                log.info("%d rows have more than %d copies each", int(crowded.sum()), MAX_K)
            return
        pending, k = pending[crowded], min(k * WIDEN, MAX_K)


def _groups(backend: Backend, links: Links) -> list[DuplicateGroup]:
    """The groups with their keepers, largest first; members removed meanwhile left out."""
    out: list[DuplicateGroup] = []
    for chunk in _chunks(links.groups(), ROWS_AT_ONCE):
        rows = backend.rows([i for ids, _ in chunk for i in ids])
        out += [g for ids, score in chunk if (g := _group(ids, score, rows)) is not None]
    out.sort(key=lambda g: (-len(g.ids), g.keeper))
    return out


def _chunks(
    groups: Iterator[tuple[list[int], float]], size: int
) -> Iterator[list[tuple[list[int], float]]]:
    """Consecutive groups holding about ``size`` ids together."""
    chunk: list[tuple[list[int], float]] = []
    held = 0
    for group in groups:
        chunk.append(group)
        held += len(group[0])
        if held >= size:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _group(ids: list[int], score: float, rows: dict[int, Row]) -> DuplicateGroup | None:
    live = [rows[i] for i in ids if i in rows and not rows[i].deleted]
    if len(live) < 2:
        return None
    keeper = max(live, key=lambda r: (r.width * r.height, r.bytes, -r.id))
    exact = len({r.content_hash for r in live}) == 1
    return DuplicateGroup(
        keeper=keeper.id,
        ids=[keeper.id, *(r.id for r in live if r.id != keeper.id)],
        exact=exact,
        score=1.0 if exact else round(min(score, 1.0), 6),
    )
