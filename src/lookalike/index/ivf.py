"""An approximate index for large collections: Faiss IVF with 4-bit PQ fast-scan codes,
re-ranked from the memory-mapped vectors (see :mod:`lookalike.index.rerank`).

The index is a cache of the vector shards: its file holds the first ``indexed_count``
vectors; vectors committed later go into a small in-memory delta index built on the same
trained quantizer, so adds never need a rebuild. Deleted and filtered-out ids are skipped
inside the search by a Faiss bitmap selector. Search parameters (nprobe, re-rank depth) are
tuned at build time to a target recall on held-out queries and stored beside the index.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..layout import INDEX_DIR, write_atomic
from ..store import VectorShards
from .rerank import EXACT_TAILS, Codes, choose_codec, rerank
from .topk import RunningTopK, at_least

PARAMS_FILE = "ivf.json"  # names the current index file, so a crashed save leaves the old one
EMPTY_FILE = "ivf-trained.faiss"  # quantizer and codebooks, no vectors: seeds the delta
EXACT_BELOW = 20_000  # allowed rows under which a filtered search is done exactly
TUNE_QUERIES = 200
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
    """Faiss factory string: IVF, HNSW quantizer for many lists, 4-bit PQ (dim/8 bytes)."""
    quantizer = f"IVF{nlist}_HNSW32" if nlist >= 4096 else f"IVF{nlist}"
    return f"{quantizer},PQ{dim // 4}x4fs"


class IvfIndex:
    """Approximate search: IVF-PQ fast-scan candidates re-ranked from exact vectors."""

    kind = "ivf"

    def __init__(self, directory: Path, vectors: VectorShards) -> None:
        import faiss

        self.directory = directory / INDEX_DIR
        self.vectors = vectors
        self.params = IvfParams(**json.loads((self.directory / PARAMS_FILE).read_text()))
        self.base = faiss.read_index(
            str(self.directory / self.params.file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
        )
        self.delta = faiss.read_index(str(self.directory / EMPTY_FILE))
        self.delta_upto = self.params.indexed_count
        self.codes = (
            Codes(self.directory / self.params.codes, self.params.indexed_count)
            if self.params.codes
            else None
        )
        self.lock = threading.Lock()

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
        if self.delta.ntotal:
            with self.lock:
                _, more = self.delta.search(queries, depth, params=options)
            ids = np.concatenate([ids, more], axis=1)
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
            self.delta.reset()

    def catch_up(self, count: int) -> None:
        """Add vectors committed since the index file was written to the delta index."""
        if count <= self.delta_upto:
            return
        with self.lock:
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
    seed: int = 0,
) -> IvfParams:
    """Train an IVF index on a sample of live vectors, add all, tune, and save it.

    ``memory_budget`` (bytes, default half the RAM) bounds the re-rank data: past it the
    index keeps compact codes for re-ranking instead of reading the float32 shards.
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
    queries = _tune_queries(sample, rng)
    truth = RunningTopK(len(queries), TUNE_K)
    for start, block in vectors.chunks(count):  # one pass: add, encode, and exact truth
        for offset in range(0, len(block), 100_000):
            part = np.ascontiguousarray(block[offset : offset + 100_000])
            ids = np.arange(start + offset, start + offset + len(part))
            index.add_with_ids(part, ids)
            if codes is not None:
                codes.write(part)
            scores = queries @ part.T
            scores[:, ~live[ids]] = -np.inf
            truth.add(scores, np.broadcast_to(ids, scores.shape))
    if codes is not None:
        codes.commit(count)
    nprobe, rerank_depth, tail, recall = _tune(
        index, vectors, codes, count, live, queries, truth.result()[1], target_recall
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


def _tune_queries(sample: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Perturbed copies of sampled vectors: near the data, but not themselves in the index."""
    picked = rng.choice(len(sample), min(TUNE_QUERIES, len(sample)), replace=False)
    queries = sample[np.sort(picked)]
    queries += rng.normal(0, 0.3 / math.sqrt(sample.shape[1]), queries.shape).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def _tune(
    index: object,
    vectors: VectorShards,
    codes: Codes | None,
    count: int,
    live: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
) -> tuple[int, int, int, float]:
    """Smallest (nprobe, rerank depth), then exact tail, reaching ``target`` recall@20 on the
    held-out queries; the best found when none does."""
    import faiss

    bitmap = np.packbits(live[:count], bitorder="little")
    selector = faiss.IDSelectorBitmap(count, faiss.swig_ptr(bitmap))
    nlist = index.nlist  # type: ignore[attr-defined]

    def recall_at(nprobe: int, depth: int, tail: int) -> float:
        options = _search_options(nlist, nprobe, selector)
        _, ids = index.search(queries, TUNE_K * depth, params=options)  # type: ignore[attr-defined]
        return _recall(rerank(vectors, codes, queries, ids, TUNE_K, count, tail)[1], truth)

    nprobes = [n for n in (4, 8, 16, 32, 64, 128, 256, 512) if n <= nlist] or [nlist]
    best = (1, 1, 0.0)
    widest = EXACT_TAILS[-1]
    for nprobe, depth in [(n, d) for n in nprobes for d in (2, 4, 8, 16, 32)]:
        recall = recall_at(nprobe, depth, widest)
        if recall > best[2]:
            best = (nprobe, depth, recall)
        if recall >= target:
            break
    nprobe, depth, recall = best
    if codes is None:
        return nprobe, depth, widest, recall
    for tail in EXACT_TAILS[:-1]:  # every exact re-score may be a disk read: as few as reach,
        narrow = recall_at(nprobe, depth, tail)
        if narrow >= min(target, recall):
            return nprobe, depth, tail, narrow
    return nprobe, depth, widest, recall


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


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
    write_atomic(
        directory / PARAMS_FILE,
        lambda tmp: tmp.write_text(json.dumps(asdict(params), indent=2) + "\n"),
    )
    keep = {params.file, EMPTY_FILE, f"{params.codes}.codec", f"{params.codes}.codes"}
    for old in [*directory.glob("ivf-*.faiss"), *directory.glob("rerank-*")]:
        if old.name not in keep:
            old.unlink(missing_ok=True)
