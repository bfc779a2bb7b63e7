"""An approximate index for large collections: Faiss IVF with 4-bit PQ fast-scan codes,
re-ranked from the memory-mapped vectors (see :mod:`lookalike.index.rerank`).

The index is a cache of the vector shards: its file holds the first ``indexed_count``
vectors; vectors committed later go into a small in-memory delta index built on the same
trained quantizer, so adds never need a rebuild. Deleted and filtered-out ids are skipped
inside the search by a Faiss bitmap selector. Search parameters (nprobe, re-rank depth) are
tuned at build time to a target recall and stored beside the index: on stored vectors searched
as if they were not stored (each left out of its own results), which are distributed as new
images of the collection's kind are, or on query vectors the caller gives (such as embedded
texts, which sit apart from image vectors in CLIP space); :func:`tune_ivf` re-tunes a built
index without retraining it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..layout import INDEX_DIR, write_atomic
from ..store import VectorShards
from .rerank import EXACT_TAILS, Codes, choose_codec, rerank
from .topk import RunningTopK, at_least

PARAMS_FILE = "ivf.json"  # names the current index file, so a crashed save leaves the old one
EMPTY_FILE = "ivf-trained.faiss"  # quantizer and codebooks, no vectors: seeds the delta
EXACT_BELOW = 20_000  # allowed rows under which a filtered search is done exactly
TUNE_QUERIES = 500  # recall@20 over 10,000 neighbours: about +-0.005
MAX_GIVEN_QUERIES = 2000  # of the caller's tuning queries, a sample of at most this many
MIN_TRAIN = 256  # fewer vectors than this cannot train 4-bit PQ codebooks well
TUNE_K = 20
# A search for results scoring at least this (copies: bench/duplicates.py) probes at most
# CLOSE_NPROBE lists and re-ranks 2k + 16 candidates: 2 lists of 512 and k + 1 candidates
# found every planted copy at cosine >= 0.96 of 50,000 clustered 512-d vectors; at 1 M (4 of
# 2048 lists) 99.9% (bench/RESULTS.md, Duplicates at 1 M).
CLOSE_SCORE = 0.9
CLOSE_NPROBE = 8


@dataclass
class IvfParams:
    """How the index was built and how to search it."""

    factory: str
    nlist: int
    nprobe: int
    rerank: int  # candidates fetched per result, re-scored exactly
    indexed_count: int  # vectors [0, indexed_count) are in the index file
    trained_on: int
    recall_at_20: float
    target_recall: float
    built: str
    rerank_codec: str = ""  # "": re-rank from the float32 shards; else a Faiss codec
    codes: str = ""  # stem of the codec and codes files of that codec
    exact_per_result: int = 2  # with codes: candidates re-scored exactly, per result (0: none)

    @property
    def file(self) -> str:
        """The index file holding the first ``indexed_count`` vectors."""
        return f"ivf-{self.indexed_count}.faiss"


def choose_nlist(count: int) -> int:
    """Inverted lists for ``count`` vectors: about 2·sqrt(n), a power of two in [64, 8192].

    Fewer lists than the usual 4·sqrt(n): fast-scan makes scanning long lists cheap, while
    training and assigning cost grows with the list count (2 cores here).
    """
    return int(min(8192, max(64, 2 ** round(math.log2(2 * math.sqrt(max(count, 1)))))))


def factory_for(dim: int, nlist: int) -> str:
    """Faiss factory string: IVF, HNSW quantizer for many lists, 4-bit PQ fast-scan codes
    (see :func:`subquantizers`)."""
    quantizer = f"IVF{nlist}_HNSW32" if nlist >= 4096 else f"IVF{nlist}"
    return f"{quantizer},PQ{subquantizers(dim)}x4fs"


def subquantizers(dim: int) -> int:
    """4-bit sub-quantizers for ``dim``: one per 8 dimensions (32 bytes of codes at 512-d),
    but at least 32 while one per 4 dimensions allows, and a divisor of ``dim``.

    The lists, codes and ids, are what the index holds in RAM. One code per 8 dimensions
    halves them against one per 4 (40 instead of 72 bytes a vector with the id) at the same
    recall for embeddings: at 1 M clustered 512-d vectors the probed lists bound recall, and
    re-ranking twice the candidates exactly makes up for the coarser codes (bench/RESULTS.md,
    Peers). Below 32 sub-quantizers (small test dimensions) codes get too coarse to rank."""
    wanted = max(dim // 8, min(32, dim // 4), 1)
    return next(m for m in range(wanted, dim + 1) if dim % m == 0)


class IvfIndex:
    """Approximate search: IVF-PQ fast-scan candidates re-ranked from exact vectors."""

    kind = "ivf"

    def __init__(self, directory: Path, vectors: VectorShards) -> None:
        import faiss

        self.directory = directory / INDEX_DIR
        self.vectors = vectors
        self.params = _read_params(self.directory)
        self.base = faiss.read_index(
            str(self.directory / self.params.file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
        )
        # the delta's seed holds a copy of the quantizer (4 B a vector at 1 M): checked here,
        # then read again at the first add from this descriptor, so another process
        # replacing or deleting the file meanwhile does not matter
        seed = os.open(self.directory / EMPTY_FILE, os.O_RDONLY)
        weakref.finalize(self, os.close, seed)
        self._seed = seed
        self._read_seed()  # a damaged seed fails the open: searches fall back to exact
        self.delta: Any = None
        self.delta_upto = self.params.indexed_count
        self.codes = (
            Codes(self.directory / self.params.codes, self.params.indexed_count)
            if self.params.codes
            else None
        )
        self.lock = threading.Lock()
        self.populating: threading.Thread | None = None  # see map_vectors

    def map_vectors(self) -> None:
        """Map the vectors re-ranks read into this process in the background, when they are
        the float32 shards (which then fit the page cache): see :meth:`VectorShards.populate`.
        For an index that will serve searches, not one opened to check its files."""
        if self.codes is None and self.populating is None:
            self.populating = self.vectors.populate(self.params.indexed_count)

    @property
    def pending(self) -> int:
        """Vectors held only in the in-memory delta (not yet in the index file)."""
        return self.delta_upto - self.params.indexed_count

    def search(
        self,
        queries: np.ndarray,
        k: int,
        count: int,
        allowed: np.ndarray | None,
        min_score: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`lookalike.index.VectorIndex`. With a ``min_score`` of at least
        ``CLOSE_SCORE`` (copies, for a duplicates pass), fewer lists are probed and fewer
        candidates re-ranked: vectors that close share the query's nearest lists and lead
        its code ranking."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.catch_up(count)
        if allowed is None and count < k * self.params.rerank:
            allowed = np.ones(count, dtype=bool)  # nearly every row a candidate: score them all
        if allowed is not None and int(allowed.sum()) < max(EXACT_BELOW, k * self.params.rerank):
            return at_least(*self._search_subset(queries, k, count, allowed), min_score)
        nprobe = self.params.nprobe
        depth = max(k, TUNE_K) * self.params.rerank  # the depth recall was tuned at
        if min_score is not None and min_score >= CLOSE_SCORE:
            nprobe, depth = min(nprobe, CLOSE_NPROBE), min(depth, 2 * k + 16)
        selector = None  # no selector at all when every id may come back: nothing to scan
        if allowed is not None:
            bitmap = np.packbits(allowed[:count], bitorder="little")
            selector = faiss.IDSelectorBitmap(count, faiss.swig_ptr(bitmap))
        options = _search_options(self.params.nlist, nprobe, selector)
        _, ids = self.base.search(queries, depth, params=options)
        if self.pending:
            with self.lock:  # a save() may have merged the delta since
                delta = self.delta
                if delta is not None:
                    ids = np.concatenate([ids, delta.search(queries, depth, params=options)[1]], 1)
        tail = self.params.exact_per_result
        return at_least(*rerank(self.vectors, self.codes, queries, ids, k, count, tail), min_score)

    def _search_subset(
        self, queries: np.ndarray, k: int, count: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Score every allowed id (a selective filter): never misses a match."""
        ids = np.flatnonzero(allowed[:count])
        candidates = np.broadcast_to(ids, (len(queries), len(ids)))
        tail = self.params.exact_per_result
        return rerank(self.vectors, self.codes, queries, candidates, k, count, tail)

    def save(self) -> None:
        """Write the delta into a new index file, so the next open starts current."""
        import faiss

        with self.lock:
            if self.pending == 0:
                return
            if self.codes is not None:
                self.codes.append(self.vectors, self.delta_upto)
            merged = faiss.read_index(str(self.directory / self.params.file))
            for start, block in self.vectors.chunks(self.delta_upto):
                first = max(start, self.params.indexed_count)
                if first < start + len(block):
                    merged.add_with_ids(
                        np.ascontiguousarray(block[first - start :]),
                        np.arange(first, start + len(block)),
                    )
            params = IvfParams(**{**asdict(self.params), "indexed_count": self.delta_upto})
            _save(self.directory, merged, params)
            self.params = params
            self.base = faiss.read_index(
                str(self.directory / params.file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
            )
            self.delta = None

    def _open_delta(self) -> None:
        """Read the trained, empty index that seeds the delta, once."""
        if self.delta is None:
            self.delta = self._read_seed()

    def _read_seed(self) -> Any:
        import faiss

        size = os.fstat(self._seed).st_size
        data = os.pread(self._seed, size, 0)
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))

    def catch_up(self, count: int) -> None:
        """Add vectors committed since the index file was written to the delta index."""
        if count <= self.delta_upto:
            return
        with self.lock:
            self._open_delta()
            for start, block in self.vectors.chunks(count):
                end = start + len(block)
                if end <= self.delta_upto:
                    continue
                first = max(start, self.delta_upto)
                self.delta.add_with_ids(
                    np.ascontiguousarray(block[first - start :]), np.arange(first, end)
                )
                self.delta_upto = end


def build_ivf(
    directory: Path,
    vectors: VectorShards,
    count: int,
    live: np.ndarray,
    *,
    target_recall: float = 0.95,
    nlist: int | None = None,
    memory_budget: int | None = None,
    tune_queries: np.ndarray | None = None,
    seed: int = 0,
) -> IvfParams:
    """Train an IVF index on a sample of live vectors, add all, tune, and save it.

    ``memory_budget`` (bytes, default half the RAM) bounds the re-rank data: past it the
    index keeps compact codes for re-ranking instead of reading the float32 shards.
    ``tune_queries`` (vectors) are the searches to tune recall on; by default, sampled
    stored vectors, each left out of its own results.
    """
    import faiss

    rng = np.random.default_rng(seed)
    live_ids = np.flatnonzero(live[:count])
    nlist = nlist or choose_nlist(len(live_ids))
    if len(live_ids) < max(MIN_TRAIN, nlist):
        raise BadInputError(
            f"{len(live_ids)} images are too few to train an IVF index with "
            f"{nlist} lists; exact search serves small collections"
        )
    factory = factory_for(vectors.dim, nlist)
    index = faiss.index_factory(vectors.dim, factory, faiss.METRIC_INNER_PRODUCT)
    sample_size = min(len(live_ids), max(32 * nlist, 20_000), 300_000)
    sample_ids = np.sort(rng.choice(live_ids, sample_size, replace=False))
    sample = vectors.get(sample_ids.tolist(), count, prefetch=True)
    index.train(sample)
    empty = faiss.clone_index(index)
    (directory / INDEX_DIR).mkdir(parents=True, exist_ok=True)
    codec = choose_codec(len(live_ids), vectors.dim, memory_budget)
    stem = f"rerank-{secrets.token_hex(4)}" if codec else ""
    codes = Codes.create(directory / INDEX_DIR / stem, codec, sample) if codec else None
    tuning = _Tuning.of(vectors, count, live, tune_queries, rng, sample_ids)
    for start, block in vectors.chunks(count):  # one pass: add, encode, and exact truth
        for offset in range(0, len(block), 100_000):
            part = np.ascontiguousarray(block[offset : offset + 100_000])
            ids = np.arange(start + offset, start + offset + len(part))
            index.add_with_ids(part, ids)
            if codes is not None:
                codes.write(part)
            tuning.see(part, start + offset, live)
    if codes is not None:
        codes.commit(count)
    nprobe, rerank_depth, tail, recall = _tune(
        index, vectors, codes, count, live, tuning, target_recall
    )
    params = IvfParams(
        factory,
        nlist,
        nprobe,
        rerank_depth,
        count,
        sample_size,
        recall,
        target_recall,
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        codec,
        stem,
        tail,
    )
    _save(directory / INDEX_DIR, index, params, empty)
    return params


def drop_ivf(directory: Path) -> None:
    """Remove a saved IVF index (the collection falls back to exact search)."""
    for path in (directory / INDEX_DIR).glob("*"):
        if path.name.startswith(("ivf", "rerank-")):
            path.unlink()


def has_ivf(directory: Path) -> bool:
    """Whether a built IVF index is saved in the collection directory."""
    return (directory / INDEX_DIR / PARAMS_FILE).is_file()


@dataclass
class _Tuning:
    """Tuning searches and their exact answers, gathered over one pass of the vectors.

    ``left_out`` holds, per query, the id of the stored vector it is (-1 for a given query):
    that id is no answer to it, in the exact answers or in the searches. A stored vector
    searched so has neighbours as a new image of the same kind would (the first at cosine
    0.87 on the bench's clustered vectors), where the perturbed copies used before (0.96)
    found them in the lists they came from, and overstated recall (0.97 tuned, 0.94 on
    held-out queries at 1 M)."""

    queries: np.ndarray
    left_out: np.ndarray
    truth: RunningTopK

    @staticmethod
    def of(
        vectors: VectorShards,
        count: int,
        live: np.ndarray,
        given: np.ndarray | None,
        rng: np.random.Generator,
        trained_on: np.ndarray,
    ) -> _Tuning:
        """The caller's queries (vectors of the collection's dimension), else live vectors
        left out of their own results, drawn outside the ids the index was ``trained_on``:
        its centroids and codebooks fit those more closely than new images (at 1 M, 0.97
        tuned on training vectors was 0.947 on held-out queries)."""
        if given is not None:
            queries = _unit_rows(given, vectors.dim)
            if len(queries) > MAX_GIVEN_QUERIES:  # scores and top-k grow with them, per block
                queries = queries[np.sort(rng.choice(len(queries), MAX_GIVEN_QUERIES, False))]
            return _Tuning(queries, np.full(len(queries), -1), RunningTopK(len(queries), TUNE_K))
        live_ids = np.flatnonzero(live[:count])
        unseen = np.setdiff1d(live_ids, trained_on, assume_unique=True)
        pool = unseen if len(unseen) >= TUNE_QUERIES else live_ids
        left_out = np.sort(rng.choice(pool, min(TUNE_QUERIES, len(pool)), replace=False))
        queries = vectors.get(left_out.tolist(), count, prefetch=True)
        return _Tuning(queries, left_out, RunningTopK(len(queries), TUNE_K))

    def see(self, block: np.ndarray, first: int, live: np.ndarray) -> None:
        """Score one block of stored vectors, ids ``first`` on, into the exact answers."""
        ids = np.arange(first, first + len(block))
        scores = self.queries @ block.T
        scores[:, ~live[ids]] = -np.inf
        inside = np.flatnonzero((self.left_out >= first) & (self.left_out < first + len(block)))
        scores[inside, self.left_out[inside] - first] = -np.inf
        self.truth.add(scores, np.broadcast_to(ids, scores.shape))

    def candidates(self, found: np.ndarray) -> np.ndarray:
        """A search's ids without each query's own (searched one deeper for it)."""
        found = np.where(found == self.left_out[:, None], -1, found)
        order = np.argsort(found < 0, axis=1, kind="stable")  # the dropped id moves last
        return np.take_along_axis(found, order, axis=1)[:, : found.shape[1] - 1]


def _unit_rows(queries: np.ndarray, dim: int) -> np.ndarray:
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim or not len(queries):
        raise BadInputError(f"tuning queries must be a non-empty (n, {dim}) array of vectors")
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    if not np.isfinite(queries).all() or (norms == 0).any():
        raise BadInputError("tuning queries must be finite, non-zero vectors")
    return np.ascontiguousarray(queries / norms)


def tune_ivf(
    directory: Path,
    vectors: VectorShards,
    count: int,
    live: np.ndarray,
    queries: np.ndarray | None = None,
    *,
    target_recall: float = 0.95,
    seed: int = 0,
) -> IvfParams:
    """Re-tune the saved index's search settings (nprobe, re-rank depth) to reach
    ``target_recall`` on ``queries`` (default: sampled stored vectors, each left out), without
    retraining: one exact pass over the vectors, then searches. Vectors added since the index
    file was written are not in it; :meth:`IvfIndex.save` them first."""
    import faiss

    params = _read_params(directory / INDEX_DIR)
    index = faiss.read_index(str(directory / INDEX_DIR / params.file))
    count = min(count, params.indexed_count)
    # the ids the index was trained on are not recorded: at most a few percent of a large
    # collection (params.trained_on), so few of the sampled queries are among them
    tuning = _Tuning.of(
        vectors, count, live, queries, np.random.default_rng(seed), np.empty(0, np.int64)
    )
    for start, block in vectors.chunks(count):
        for offset in range(0, len(block), 100_000):
            part = np.ascontiguousarray(block[offset : offset + 100_000])
            tuning.see(part, start + offset, live)
    codes = Codes(directory / INDEX_DIR / params.codes, count) if params.codes else None
    nprobe, depth, tail, recall = _tune(index, vectors, codes, count, live, tuning, target_recall)
    tuned = IvfParams(
        **{
            **asdict(params),
            "nprobe": nprobe,
            "rerank": depth,
            "exact_per_result": tail,
            "recall_at_20": recall,
            "target_recall": target_recall,
        }
    )
    _write_params(directory / INDEX_DIR, tuned)
    return tuned


# nprobe steps of about 1.4x: a doubling ladder overshoots a target by up to twice the lists
NPROBES = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _tune(
    index: object,
    vectors: VectorShards,
    codes: Codes | None,
    count: int,
    live: np.ndarray,
    tuning: _Tuning,
    target: float,
) -> tuple[int, int, int, float]:
    """Smallest (nprobe, rerank depth), then exact tail, reaching ``target`` recall@20 on the
    tuning queries (see :data:`CONFIDENCE_Z`); the best found when none does. Returns the
    setting and its mean recall."""
    import faiss

    bitmap = np.packbits(live[:count], bitorder="little")
    selector = faiss.IDSelectorBitmap(count, faiss.swig_ptr(bitmap))
    nlist = index.nlist  # type: ignore[attr-defined]
    queries, truth = tuning.queries, tuning.truth.result()[1]

    def recall_at(nprobe: int, depth: int, tail: int) -> tuple[float, float]:
        options = _search_options(nlist, nprobe, selector)
        _, ids = index.search(queries, TUNE_K * depth + 1, params=options)  # type: ignore[attr-defined]
        found = tuning.candidates(ids)
        return _recall(rerank(vectors, codes, queries, found, TUNE_K, count, tail)[1], truth)

    nprobes = [n for n in NPROBES if n <= nlist] or [nlist]
    best = (1, 1, (0.0, 0.0))
    widest = EXACT_TAILS[-1]
    for nprobe, depth in [(n, d) for n in nprobes for d in (2, 4, 8, 16, 32)]:
        measured = recall_at(nprobe, depth, widest)
        if measured > best[2]:
            best = (nprobe, depth, measured)
        if measured[1] >= target:
            break
    nprobe, depth, (recall, sure) = best
    if codes is None:
        return nprobe, depth, widest, recall
    for tail in EXACT_TAILS[:-1]:  # every exact re-score may be a disk read: as few as reach,
        narrow, narrow_sure = recall_at(nprobe, depth, tail)
        if narrow_sure >= min(target, sure):
            return nprobe, depth, tail, narrow
    return nprobe, depth, widest, recall


# A setting reaches the target when the sample shows it with one-sided 95% confidence, not
# just on average: recall varies much between queries, and at 1 M two sets of 500 held-out
# queries differed by 0.015 at one setting (bench/RESULTS.md, Peers).
CONFIDENCE_Z = 1.645


def _recall(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean recall@k over the queries, and a lower bound of it at 95% confidence."""
    per_query = np.array(
        [
            len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, int((t >= 0).sum()))
            for f, t in zip(found, truth, strict=True)
        ]
    )
    mean = float(per_query.mean())
    if len(per_query) < 2:
        return mean, mean
    return mean, mean - CONFIDENCE_Z * float(per_query.std(ddof=1)) / math.sqrt(len(per_query))


def _read_params(index_dir: Path) -> IvfParams:
    return IvfParams(**json.loads((index_dir / PARAMS_FILE).read_text(encoding="utf-8")))


def _write_params(index_dir: Path, params: IvfParams) -> None:
    """Switch the params file (and so the index file it names) atomically."""
    text = json.dumps(asdict(params), indent=2) + "\n"
    write_atomic(index_dir / PARAMS_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _search_options(nlist: int, nprobe: int, selector: object | None) -> object:
    import faiss

    options = faiss.SearchParametersIVF(nprobe=nprobe)
    if selector is not None:
        options.sel = selector
    if nlist >= 4096:  # HNSW quantizer: explore at least as many lists as are probed
        options.quantizer_params = faiss.SearchParametersHNSW(efSearch=max(64, 2 * nprobe))
    return options


def _save(directory: Path, index: object, params: IvfParams, empty: object = None) -> None:
    """Write the index under a new name, then switch the params file to it atomically."""
    import faiss

    directory.mkdir(parents=True, exist_ok=True)
    if empty is not None:
        write_atomic(directory / EMPTY_FILE, lambda tmp: faiss.write_index(empty, str(tmp)))
    write_atomic(directory / params.file, lambda tmp: faiss.write_index(index, str(tmp)))
    _write_params(directory, params)
    keep = {params.file, EMPTY_FILE, f"{params.codes}.codec", f"{params.codes}.codes"}
    for old in [*directory.glob("ivf-*.faiss"), *directory.glob("rerank-*")]:
        if old.name not in keep:
            old.unlink(missing_ok=True)
