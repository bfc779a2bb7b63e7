"""Re-scoring an approximate index's candidates.

While the float32 vector shards fit in RAM, candidates are re-scored exactly from them. Past
that (20 M x 512-d is 41 GB), each candidate would be a random disk read, so the index also
keeps compact codes of the vectors (8-bit scalar or 8-bit PQ: Faiss standalone codecs) in an
append-only file that is memory-mapped and fits the page cache; candidates are ranked by
their decoded codes and only the best few per result are re-scored from the shards.

Committed vectors never change (row ``i`` owns vector ``i`` for good), so the codes file is
only ever appended to, and its rows stay valid for every index that names it.
"""

from __future__ import annotations

import mmap
import os
import threading
from functools import partial
from pathlib import Path

import numpy as np

from ..store import VectorShards, gather
from .topk import pad, top_k

# Candidates ranked by codes and re-scored exactly, per result: tuned at build time, since
# it depends on the data (on clustered low-rank vectors 1 is nearly enough for SQ8 and 2 for
# PQ; on isotropic noise PQ needs 8). 0: the codes' scores are the answer (SQ8 within ~1e-3),
# and a search reads nothing from disk, which matters on disks that serve a few hundred
# random reads per second (this machine's, once its burst credit was spent).
EXACT_TAILS = (0, 1, 2, 4, 8)
TRAIN_MAX = 65_536  # 256 points per 8-bit centroid: plenty for a codec
# Of physical memory, what the re-rank data may take in the page cache (which must also hold
# the hot rows and the index's own files).
RAM_SHARE = 0.5
PAIRS_AT_ONCE = 16_384  # (query, candidate) pairs scored together: 32 MB fetched at 512-d


def choose_codec(count: int, dim: int, memory_budget: int | None = None) -> str:
    """Re-rank data for ``count`` vectors: "" (the float32 shards) while they fit the budget,
    else 8-bit scalar codes ("SQ8", dim bytes), else 8-bit PQ ("PQ{dim/4}np", dim/4 bytes)."""
    budget = _default_budget() if memory_budget is None else memory_budget
    if count * dim * 4 <= budget:
        return ""
    if count * dim <= budget or dim % 4:
        return "SQ8"
    return f"PQ{dim // 4}np"  # np: no polysemous training (minutes, and useless for decoding)


def _default_budget() -> int:
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * RAM_SHARE)


class Codes:
    """Compact copies of vectors [0, rows) in ``<stem>.codes``, decoded by ``<stem>.codec``."""

    def __init__(self, stem: Path, rows: int) -> None:
        import faiss

        self.stem = stem
        self.codec = faiss.read_index(str(stem.with_suffix(".codec")))
        self.code_size = int(self.codec.sa_code_size())
        self.rows = 0
        self.codes = np.zeros((0, self.code_size), dtype=np.uint8)
        self.extend(rows)
        _read_ahead(stem.with_suffix(".codes"))

    @staticmethod
    def create(stem: Path, factory: str, sample: np.ndarray) -> Codes:
        """Train a codec on ``sample`` and start an empty codes file beside it."""
        import faiss

        codec = faiss.index_factory(sample.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        codec.train(np.ascontiguousarray(sample[:TRAIN_MAX], dtype=np.float32))
        faiss.write_index(codec, str(stem.with_suffix(".codec")))
        stem.with_suffix(".codes").write_bytes(b"")
        return Codes(stem, 0)

    def stored_rows(self) -> int:
        """Whole rows in the codes file (it may run ahead of an index that names it)."""
        return self.stem.with_suffix(".codes").stat().st_size // self.code_size

    def extend(self, rows: int) -> None:
        """Map the first ``rows`` codes (which must be in the file)."""
        if rows <= self.rows:
            return
        if self.stored_rows() < rows:
            raise ValueError(f"{self.stem}.codes holds fewer than {rows} rows")
        with open(self.stem.with_suffix(".codes"), "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), rows * self.code_size, access=mmap.ACCESS_READ)
        mapped.madvise(mmap.MADV_RANDOM)  # re-rank reads are scattered: no read-ahead
        self.mapped = mapped
        self.codes = np.frombuffer(mapped, dtype=np.uint8).reshape(rows, self.code_size)
        self.rows = rows

    def write(self, block: np.ndarray) -> None:
        """Encode vectors and append their codes to the file (made durable by ``commit``)."""
        with open(self.stem.with_suffix(".codes"), "ab") as handle:
            handle.write(self.codec.sa_encode(np.ascontiguousarray(block)).tobytes())

    def commit(self, rows: int) -> None:
        """fsync what was written and map the first ``rows`` codes."""
        with open(self.stem.with_suffix(".codes"), "rb+") as handle:
            os.fsync(handle.fileno())
        self.extend(rows)

    def append(self, vectors: VectorShards, upto: int) -> None:
        """Encode vectors [stored rows, upto), append, fsync and map them."""
        first = self.stored_rows()
        with open(self.stem.with_suffix(".codes"), "r+b") as handle:
            handle.truncate(first * self.code_size)  # a crashed append's partial row
        for start, block in vectors.chunks(upto):
            for offset in range(max(first - start, 0), len(block), 100_000):
                self.write(block[offset : offset + 100_000])
        self.commit(upto)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Approximate vectors of the given ids (each < rows)."""
        return self.codec.sa_decode(gather(self.mapped, self.codes, ids))


def rerank(
    vectors: VectorShards,
    codes: Codes | None,
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    count: int,
    exact_per_result: int = EXACT_TAILS[-1],
) -> tuple[np.ndarray, np.ndarray]:
    """The best k of each query's candidate ids (-1 = none) with exact scores, best first.

    With ``codes``, the best ``k * exact_per_result`` by their codes are re-scored exactly;
    with ``exact_per_result`` 0 the codes' scores are returned."""
    if codes is not None:
        approx = _scores(queries, candidates, lambda ids: _decode(codes, vectors, ids, count))
        if exact_per_result == 0:
            return pad(*top_k(approx, candidates, k), k)
        approx, candidates = top_k(approx, candidates, k * exact_per_result)
        candidates = np.where(np.isfinite(approx), candidates, -1)
    cold = codes is not None  # the shards outgrow the page cache: fetch rows in parallel
    fetch = partial(vectors.get, count=count, prefetch=cold)
    if len(queries) == 1:
        return _rerank_one(queries[0], candidates[0], k, fetch)
    exact = _scores(queries, candidates, fetch)
    return pad(*top_k(exact, candidates, k), k)


def _rerank_one(
    query: np.ndarray, candidates: np.ndarray, k: int, fetch
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rerank` of one query's candidates (a served search) in a few numpy calls: the
    general path's pairs bookkeeping costs more than the scoring at this size."""
    ids = np.unique(candidates[candidates >= 0])  # repeats scored once; in file order
    scores = fetch(ids) @ query
    if len(ids) > k:
        best = np.argpartition(-scores, k - 1)[:k]
        ids, scores = ids[best], scores[best]
    order = np.argsort(-scores, kind="stable")
    return pad(scores[order][None], ids[order][None], k)


def _read_ahead(path: Path) -> None:
    """Pull a file into the page cache in the background: the first searches after opening
    would otherwise fault its pages in one by one (the call takes seconds for 10 GB)."""

    def read() -> None:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(descriptor)

    threading.Thread(target=read, name="lookalike-read-ahead", daemon=True).start()


def _decode(codes: Codes, vectors: VectorShards, ids: np.ndarray, count: int) -> np.ndarray:
    """Decoded codes where the codes file has them; later (delta) rows read exactly."""
    coded = ids < codes.rows
    if coded.all():
        return codes.decode(ids)
    out = np.empty((len(ids), vectors.dim), dtype=np.float32)
    out[coded] = codes.decode(ids[coded])
    out[~coded] = vectors.get(ids[~coded].tolist(), count)
    return out


def _scores(queries: np.ndarray, candidates: np.ndarray, fetch) -> np.ndarray:
    """Inner products of each query with its candidates' fetched vectors; -inf for -1 ids and
    for repeats of an id in a row. A batch of queries (a duplicates pass) is scored in a few
    vectorised blocks of pairs rather than query by query."""
    scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
    wanted = candidates >= 0
    ranked = np.sort(candidates, axis=1)
    if ((ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)).any():
        wanted &= _first_slots(candidates)
    rows, columns = np.nonzero(wanted)
    ids = candidates[rows, columns]
    for start in range(0, len(ids), PAIRS_AT_ONCE):  # bounds the fetched copy
        part = slice(start, start + PAIRS_AT_ONCE)
        products = np.einsum("ij,ij->i", fetch(ids[part]), queries[rows[part]])
        scores[rows[part], columns[part]] = products
    return scores


def _first_slots(candidates: np.ndarray) -> np.ndarray:
    """Mask of the first slot of each id in each row (an id found twice is scored once)."""
    first = np.zeros(candidates.shape, dtype=bool)
    for row, ids in enumerate(candidates):
        first[row, np.unique(ids, return_index=True)[1]] = True
    return first
