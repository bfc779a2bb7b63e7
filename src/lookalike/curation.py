"""Curation: relevance feedback, diverse results and match counts over a collection.

Relevance feedback. With ids marked ``relevant`` and ``irrelevant``, rows are ranked by a
small linear model fitted on the marked vectors: L2-regularised logistic regression (a few
Newton steps, class-weighted), with a seeded sample of random rows as extra, lighter
negatives. The query's own vector, if the search has one, is one more positive. The model
scores a large candidate pool from the index (the top rows around the positives' centroid,
around each positive and along the model's own direction), so a second round finds rows that
"more like these" (the centroid) misses. A hit's score is then the model's probability that
the row is relevant (0-1). Marked with relevant ids only, the search is by the normalised sum
of the positives (the query vector and each relevant vector), as ``id=[...]`` is.

Diversity: ``diverse=λ`` re-ranks a pool of candidates by maximal marginal relevance, each
pick maximising ``(1 - λ) * score - λ * (highest cosine to a row already picked)``, the score
being the hit's own (a cosine, or the model's probability); λ=0 keeps the relevance order,
λ=1 spreads the results as far apart as the pool allows (the best row still comes first).
Near-copies give way to other rows once λ passes 0.5, sooner the closer the copies are.

Counts: how many rows score at least ``min_score`` for a query, exactly (every row a search
may return is scored) up to ``EXACT_LIMIT`` rows, else estimated from a uniform sample, with
a 95 % Wilson interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import NotFoundError
from .types import MatchCount

if TYPE_CHECKING:
    from .backends import Backend

# (vectors, depth) -> (scores, ids) of the rows the search may return, as Backend.search gives
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
VectorsFn = Callable[[Sequence[int]], np.ndarray]

BACKGROUND_MIN = 64  # random rows added as negatives: 4 per mark, at least this many...
BACKGROUND_MAX = 4096  # ...and at most this many
BACKGROUND_WEIGHT = 0.2  # a random row counts less than a marked irrelevant one: it may be relevant
BACKGROUND_SEED = 0
NEWTON_STEPS = 12
RIDGE = 0.3  # L2 penalty on the weights, relative to the total sample weight of 2 classes
POOL_WIDE = 2000  # candidates around the centroid and along w: max(this, 50 k) each...
POOL_PER_POSITIVE = 200  # ...and around each positive: max(this, 5 k) each
POOL_POSITIVES = 64  # positives searched around, at most
POOL_MAX = 10_000  # rows asked of the index per search vector, at most
DIVERSE_POOL = 10  # diverse re-ranks this many times k candidates
EXACT_LIMIT = 200_000  # counts score every row up to this many, else a sample
COUNT_SAMPLE = 20_000
COUNT_CHUNK = 16_384
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Scorer:
    """How rows are scored: cosine to ``direction``, or a fitted linear model (``weights``,
    ``bias``) as a probability. ``around`` are extra vectors whose neighbours join the pool."""

    direction: np.ndarray
    weights: np.ndarray | None = None
    bias: float = 0.0
    around: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        """Whether a model (not a cosine) ranks."""
        return self.weights is not None

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """The ranking value of each row: cosine, or the model's log-odds."""
        if self.weights is None:
            return vectors @ self.direction
        return vectors @ self.weights + self.bias

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """The scores shown: cosines as they are, log-odds as probabilities."""
        return logits if self.weights is None else _sigmoid(logits)

    def threshold(self, min_score: float) -> float:
        """``min_score`` on the scale of :meth:`logits`."""
        if self.weights is None or min_score <= 0:
            return min_score if self.weights is None else -math.inf
        if min_score >= 1:
            return math.inf
        return math.log(min_score / (1 - min_score))


def marked_vectors(backend: Backend, ids: Sequence[int]) -> np.ndarray:
    """Vectors of marked ids, in order; NotFoundError naming every one not stored."""
    live = _live_rows(backend, list(dict.fromkeys(ids)))
    missing = [i for i in dict.fromkeys(ids) if i not in live]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        raise NotFoundError(f"marked ids not stored: {shown}")
    return backend.vectors(list(ids))


def background(backend: Backend, n: int, leave_out: Sequence[int]) -> np.ndarray:
    """Vectors of up to ``n`` live rows drawn at random (seeded: the same rows each time),
    none of ``leave_out``."""
    count = backend.count
    if count == 0 or n <= 0:
        return np.zeros((0, 0), dtype=np.float32)
    rng = np.random.default_rng(BACKGROUND_SEED)
    drawn = rng.permutation(count)[: min(count, 2 * n + len(leave_out))].tolist()
    live = _live_rows(backend, drawn)
    skipped = set(leave_out)
    chosen = [i for i in drawn if i in live and i not in skipped][:n]
    return backend.vectors(chosen) if chosen else np.zeros((0, 0), dtype=np.float32)


def _live_rows(backend: Backend, ids: list[int]) -> set[int]:
    """The ids among these whose rows are live with a readable vector."""
    inside = [i for i in ids if 0 <= i < backend.count]
    rows = backend.rows(inside) if inside else {}
    return {i for i, row in rows.items() if not row.deleted and not row.stale}


def feedback_scorer(
    query_vector: np.ndarray | None,
    relevant: np.ndarray,
    irrelevant: np.ndarray,
    background: Callable[[int], np.ndarray],
) -> Scorer:
    """The scorer of a search with marks: a model when both sides are marked (the query
    vector is one more positive), else the normalised sum of the positives."""
    positives = relevant if query_vector is None else _stack(query_vector[None], relevant)
    centroid = _unit(positives.sum(axis=0))
    if not len(irrelevant):
        return Scorer(centroid)
    extra = background(max(BACKGROUND_MIN, 4 * (len(positives) + len(irrelevant))))
    weights, bias = fit_logistic(positives, irrelevant, extra)
    return Scorer(centroid, weights, bias, around=_spread(positives, POOL_POSITIVES))


def fit_logistic(
    positives: np.ndarray, negatives: np.ndarray, background: np.ndarray
) -> tuple[np.ndarray, float]:
    """(w, b) of class-weighted, L2-regularised logistic regression by Newton's method.

    The classes weigh the same in total; a background row weighs ``BACKGROUND_WEIGHT`` of a
    marked negative. Newton steps solve in the smaller of the sample and feature spaces.
    """
    x = np.concatenate([positives, negatives, background]).astype(np.float64)
    x = np.hstack([x, np.ones((len(x), 1))])  # the bias as a constant feature
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives) + len(background))])
    c = np.concatenate(
        [
            np.ones(len(positives)),
            np.ones(len(negatives)),
            np.full(len(background), BACKGROUND_WEIGHT),
        ]
    )
    c[y == 1] /= c[y == 1].sum()
    c[y == 0] /= c[y == 0].sum()
    ridge = RIDGE / len(x)  # weights sum to 2; the penalty shrinks as marks accumulate
    w = np.zeros(x.shape[1])
    for _ in range(NEWTON_STEPS):
        p = _sigmoid(x @ w)
        gradient = x.T @ (c * (p - y)) + ridge * w
        curvature = np.sqrt(c * p * (1 - p))[:, None] * x
        step = _ridge_solve(curvature, ridge, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-6:
            break
    return w[:-1].astype(np.float32), float(w[-1])


def _ridge_solve(m: np.ndarray, ridge: float, g: np.ndarray) -> np.ndarray:
    """(ridge I + MᵀM)⁻¹ g, through the n×n system when M has fewer rows than columns."""
    n, d = m.shape
    if n < d:  # Woodbury: (λI + MᵀM)⁻¹ = (I - Mᵀ(λI + MMᵀ)⁻¹M) / λ
        inner = np.linalg.solve(ridge * np.eye(n) + m @ m.T, m @ g)
        return (g - m.T @ inner) / ridge
    return np.linalg.solve(ridge * np.eye(d) + m.T @ m, g)


def pool_depth(k: int, dedupe: bool, diverse: float | None) -> int:
    """How many ranked rows a search needs before dedupe and diversity pick k of them."""
    depth = k * 4 if dedupe else k
    if diverse:
        depth = max(depth, min(k * DIVERSE_POOL, POOL_MAX))
    return depth


def pool_vectors(scorer: Scorer, k: int) -> list[tuple[np.ndarray, int]]:
    """(search vectors, depth) whose results make a fitted scorer's candidate pool."""
    wide = min(max(POOL_WIDE, 50 * k), POOL_MAX)
    searches = [(scorer.direction[None], wide)]
    if scorer.weights is not None:
        searches.append((_unit(scorer.weights)[None], wide))
    if scorer.around is not None and len(scorer.around):
        searches.append((scorer.around, min(max(POOL_PER_POSITIVE, 5 * k), POOL_MAX)))
    return searches


def ranked(
    scorer: Scorer, k: int, depth: int, search: SearchFn, vectors: VectorsFn
) -> list[tuple[int, float]]:
    """(id, score) of the best ``depth`` rows (at least k), best first: by the index alone for
    a cosine scorer; a fitted scorer scores its whole candidate pool."""
    depth = max(depth, k)
    if not scorer.fitted:
        scores, ids = search(scorer.direction[None], depth)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
    found: set[int] = set()
    for queries, wide in pool_vectors(scorer, k):
        _, ids = search(queries.astype(np.float32), wide)
        found.update(int(i) for i in ids.ravel() if i >= 0)
    candidates = sorted(found)
    if not candidates:
        return []
    logits = scorer.logits(vectors(candidates))
    order = np.argsort(-logits, kind="stable")[:depth]
    scores = scorer.scores(logits[order])
    return [(candidates[j], float(s)) for j, s in zip(order, scores, strict=True)]


def diversify(
    found: list[tuple[int, float]], vectors: VectorsFn, k: int, diverse: float
) -> list[tuple[int, float]]:
    """The ``k`` hits picked by maximal marginal relevance from ``found`` (best first)."""
    if diverse <= 0 or len(found) <= 1:
        return found[:k]
    stored = vectors([i for i, _ in found]).astype(np.float32)
    relevance = np.array([s for _, s in found], dtype=np.float64)
    nearest = np.full(len(found), -np.inf)  # highest cosine to a picked row
    free = np.ones(len(found), dtype=bool)
    picked: list[int] = []
    for _ in range(min(k, len(found))):
        gain = (1 - diverse) * relevance - diverse * np.where(np.isinf(nearest), 0.0, nearest)
        gain[~free] = -np.inf
        best = int(np.argmax(gain))
        picked.append(best)
        free[best] = False
        nearest = np.maximum(nearest, stored @ stored[best])
    return [found[p] for p in picked]


def count_matching(
    scorer: Scorer,
    allowed: np.ndarray,
    vectors: VectorsFn,
    min_score: float,
    exact_limit: int = EXACT_LIMIT,
    sample: int = COUNT_SAMPLE,
) -> MatchCount:
    """How many of the ``allowed`` ids score at least ``min_score``: every one scored up to
    ``exact_limit`` of them (or ``sample``, if more), else a seeded uniform sample of
    ``sample`` scaled up, with a 95 % Wilson interval."""
    total = len(allowed)
    exact = total <= max(exact_limit, sample)
    rng = np.random.default_rng(BACKGROUND_SEED)
    scored = allowed if exact else np.sort(rng.choice(allowed, size=sample, replace=False))
    threshold = scorer.threshold(min_score)
    hits = 0
    for begin in range(0, len(scored), COUNT_CHUNK):
        chunk = scored[begin : begin + COUNT_CHUNK].tolist()
        hits += int((scorer.logits(vectors(chunk)) >= threshold).sum())
    if exact:
        return MatchCount(
            estimate=hits, low=hits, high=hits, exact=True, sampled=total, total=total
        )
    low, high = wilson(hits, len(scored))
    misses = len(scored) - hits
    return MatchCount(
        estimate=round(hits / len(scored) * total),
        low=max(hits, math.floor(low * total)),
        high=min(total - misses, math.ceil(high * total)),
        exact=False,
        sampled=len(scored),
        total=total,
    )


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``hits / n``."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _spread(rows: np.ndarray, most: int) -> np.ndarray:
    """At most ``most`` of the rows, evenly spaced (deterministic)."""
    if len(rows) <= most:
        return rows
    return rows[np.linspace(0, len(rows) - 1, most).round().astype(int)]


def _stack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a if not len(b) else np.concatenate([a, b.astype(a.dtype)])


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm > 0 else vector).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # no overflow warnings at large |x|
