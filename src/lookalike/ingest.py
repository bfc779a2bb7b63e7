"""The ingest pipeline: source items -> prepare (threads or processes) -> batched encode -> store.

By default a batch is prepared (read, hash, decode, resize) by threads of this process, one per
core, and then encoded while they wait: the two take turns, each with every core. Pillow,
libjpeg and hashlib release the GIL, so the threads decode in parallel; and a decoder never
preempts one of the encoder's threads, which would stall the others at their next barrier
(bench/RESULTS.md, Ingest). With ``workers`` > 0, worker processes prepare ahead while the
main process encodes the previous batch, with a bounded number of items in flight so memory
stays flat whatever the input size. Each batch is committed on its own, so a crash loses at
most the batch in progress and a re-run skips what is stored.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .encoders import Encoder
from .errors import BadInputError, ModelMismatchError
from .fetch import FetchPolicy
from .imaging import ImageLimits
from .lifeline import die_with_parent
from .prepare import Failure, PreparedImage, content_hash, prepare
from .sources import SourceItem
from .store import NewRow
from .types import IngestReport

if TYPE_CHECKING:
    from .backends import Backend

log = logging.getLogger("lookalike")

Progress = Callable[[IngestReport], None]


def default_threads() -> int:
    """Preparing threads by default (with ``workers=0``): one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def default_workers(encoder: Encoder) -> int:
    """Worker processes by default: none while the encoder computes on the CPU (threads take
    turns with it); beside a GPU encoder, cores - 1 (at most 8), preparing while it runs."""
    if str(getattr(encoder, "device", "cpu") or "cpu").startswith("cpu"):
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class IngestOptions:
    """How an ingest run behaves."""

    batch_size: int = 64
    # worker processes preparing beside the encoder; 0 prepares in this process, between
    # batches; None: by the encoder's device (:func:`default_workers`)
    workers: int | None = None
    threads: int = field(default_factory=default_threads)  # preparing threads when workers=0
    strict: bool = False  # stop at the first bad item instead of skipping it
    limits: ImageLimits = field(default_factory=ImageLimits)
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    include_removed: bool = False  # add again images a user removed (same path and content)


class _InlineExecutor(Executor):
    """Runs submitted work at once in this process (workers=0)."""

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def ingest(
    store: Backend,
    encoder: Encoder,
    items: Iterable[SourceItem],
    options: IngestOptions = IngestOptions(),
    progress: Progress | None = None,
) -> IngestReport:
    """Add every new image of ``items`` to ``store``, committing batch by batch."""
    committer = Committer(store, options, progress, encode=encoder.encode_images)
    workers = default_workers(encoder) if options.workers is None else options.workers
    if workers <= 0:
        _take_turns(committer, encoder, items, options)
        return committer.finish()
    in_flight: deque[Future] = deque()
    window = options.batch_size * 2 + workers * 8
    with _executor(workers) as pool:
        try:
            for item in items:
                if item.error:
                    committer.take(Failure(item, item.error))
                elif not committer.skip_unread(item):
                    in_flight.append(
                        pool.submit(
                            prepare, item, encoder.image_size, options.limits, options.fetch_policy
                        )
                    )
                    while len(in_flight) >= window or (in_flight and in_flight[0].done()):
                        committer.take(in_flight.popleft().result())
            while in_flight:
                committer.take(in_flight.popleft().result())
        finally:
            for future in in_flight:
                future.cancel()
    return committer.finish()


def _take_turns(
    committer: Committer, encoder: Encoder, items: Iterable[SourceItem], options: IngestOptions
) -> None:
    """Prepare a batch of items with ``options.threads`` threads, then hand them to the
    committer (which encodes them) while the threads wait; and so on."""
    chunk: list[SourceItem] = []
    with _thread_executor(options.threads) as pool:

        def prepare_chunk() -> None:
            futures = [
                pool.submit(prepare, item, encoder.image_size, options.limits, options.fetch_policy)
                for item in chunk
            ]
            chunk.clear()
            for future in futures:
                committer.take(future.result())

        for item in items:
            if item.error:
                committer.take(Failure(item, item.error))
            elif not committer.skip_unread(item):
                chunk.append(item)
                if len(chunk) >= options.batch_size:
                    prepare_chunk()
        prepare_chunk()


class Committer:
    """The one step every ingest path ends in: take prepared (and maybe already encoded)
    items, judge each unchanged, removed, a duplicate or new, and commit the new ones batch
    by batch under the writer lock. The single-process ingest, the Ray ingest and the
    Parquet import all feed it, so they store the same rows and count alike."""

    def __init__(
        self,
        store: Backend,
        options: IngestOptions,
        progress: Progress | None = None,
        encode: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.store = store
        self.options = options
        self.progress = progress
        self.encode = encode  # for items taken without a vector
        self.report = IngestReport()
        self._started = time.monotonic()
        self._batch: list[PreparedImage] = []
        self._vectors: list[np.ndarray | None] = []
        self._replaced: list[int] = []
        self._batch_hashes: set[str] = set()

    def skip_unread(self, item: SourceItem) -> bool:
        """Count and skip an item stored already, or removed by a user, judged by its path,
        size and mtime before it is read; whether it was skipped."""
        if _unchanged(self.store, item):
            self.report.unchanged += 1
        elif not self.options.include_removed and _removed(self.store, item):
            self.report.removed += 1
        else:
            return False
        self._tick()
        return True

    def take(self, result: PreparedImage | Failure, vector: np.ndarray | None = None) -> None:
        """Judge one prepared item (its vector given, or computed when its batch is stored)."""
        report = self.report
        if isinstance(result, Failure):
            self._fail(result.item, result.reason)
        else:
            kind, old = _classify(
                self.store, result, self._batch_hashes, self.options.include_removed
            )
            if kind == "unchanged":
                report.unchanged += 1
            elif kind == "removed":
                report.removed += 1
            elif kind == "duplicate":
                report.duplicates += 1
                if old is not None:  # the path now holds a copy of another stored image
                    self._replaced.append(old)
            else:  # what it replaces is looked up again when the batch is stored
                self._batch.append(result)
                self._vectors.append(vector)
                self._batch_hashes.add(result.content_hash)
            if len(self._batch) >= self.options.batch_size:
                self.flush()
        self._tick()

    def flush(self) -> None:
        """Store the batch waiting (and the rows its duplicates replace)."""
        batch, report = self._batch, self.report
        vectors = self._batch_vectors()
        with self.store.writing():  # held per batch, so other writers interleave with an ingest
            # decided again under the lock: another writer may have stored some since take()
            rows, replaces = _still_new(
                self.store, batch, vectors, self._replaced, report, self.options
            )
            # one transaction: a crash never leaves a changed file's old and new rows both live
            report.ids += self.store.add(rows, replaces=replaces)
        report.added += len(rows)
        report.replaced += len(replaces)
        batch.clear()
        self._vectors.clear()
        self._replaced.clear()
        self._batch_hashes.clear()

    def finish(self) -> IngestReport:
        """Store the last partial batch; the report of the run."""
        self.flush()
        self._tick()  # so a progress display reaches the total
        return self.report

    def _batch_vectors(self) -> list[Any]:
        if not self._batch:
            return []
        if all(v is not None for v in self._vectors):
            return self._vectors
        assert self.encode is not None, "items without vectors need an encoder"
        return list(self.encode(np.stack([p.pixels for p in self._batch])))

    def _fail(self, item: SourceItem, reason: str) -> None:
        if self.options.strict:
            raise BadInputError(f"{item.locator or 'manifest'}: {reason}")
        log.warning("skipped %s: %s", item.locator or "manifest row", reason)
        self.report.failed.append((item.locator, reason))

    def _tick(self) -> None:
        self.report.seconds = time.monotonic() - self._started
        if self.progress:
            self.progress(self.report)


def _classify(
    store: Backend, image: PreparedImage, batch_hashes: set[str], include_removed: bool = False
) -> tuple[str, int | None]:
    """Whether a prepared image is "unchanged" (stored under its path or URL), "removed" (a
    user removed it, and it has not changed since), a "duplicate" (its content is stored, or
    waits in the batch) or "new"; and the id of the live row it replaces, if any."""
    known = store.live_by_key(image.item.locator)
    old = known.id if known is not None else None
    if known is not None and not known.stale and known.content_hash == image.content_hash:
        return "unchanged", None
    if known is None and not include_removed:
        gone = store.removed_by_key(image.item.locator)
        if gone is not None and gone.content_hash == image.content_hash:
            return "removed", None
    if image.content_hash in batch_hashes or store.live_by_hash(image.content_hash):
        return "duplicate", old
    return "new", old


def _still_new(
    store: Backend,
    batch: list[PreparedImage],
    vectors: Any,
    replaced: list[int],
    report: IngestReport,
    options: IngestOptions,
) -> tuple[list[NewRow], list[int]]:
    """The rows of the batch that are still new (under the writer lock), and the live ids they
    and the batch's duplicates replace; counts the others as unchanged or duplicates."""
    rows: list[NewRow] = []
    replaces = {i for i, row in store.rows(replaced).items() if not row.deleted}
    hashes: set[str] = set()
    for p, vector in zip(batch, vectors, strict=True):
        kind, old = _classify(store, p, hashes, options.include_removed)
        if old is not None:
            replaces.add(old)
        if kind == "unchanged":
            report.unchanged += 1
        elif kind == "removed":
            report.removed += 1
        elif kind == "duplicate":
            report.duplicates += 1
        else:
            hashes.add(p.content_hash)
            rows.append(
                NewRow(
                    p.item.locator,
                    p.content_hash,
                    p.width,
                    p.height,
                    p.bytes,
                    vector,
                    p.item.mtime,
                    p.item.metadata,
                )
            )
    return rows, sorted(replaces)


def _removed(store: Backend, item: SourceItem) -> bool:
    """Whether a user removed the file at this path and it has the same size and mtime since
    (a URL is judged after fetching, by its content)."""
    if item.size is None or store.live_by_key(item.locator) is not None:
        return False
    gone = store.removed_by_key(item.locator)
    return gone is not None and gone.bytes == item.size and gone.mtime == item.mtime


def _unchanged(store: Backend, item: SourceItem) -> bool:
    """Whether the item is stored already and, for a file, has the same size and mtime."""
    known = store.live_by_key(item.locator)
    if known is None or known.stale:
        return False
    return item.size is None or (known.bytes == item.size and known.mtime == item.mtime)


def _thread_executor(threads: int) -> Executor:
    return ThreadPoolExecutor(threads, "lookalike-prepare") if threads > 1 else _InlineExecutor()


def _executor(workers: int) -> Executor:
    # spawn, not fork: the parent holds torch's thread pools, which do not survive a fork
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent
    )


def vector_rows(
    vectors: Any,
    locators: Sequence[str],
    dim: int,
    metadata: Sequence[Mapping[str, Any] | None] | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> list[NewRow]:
    """Rows for embeddings computed elsewhere, one per locator (its key); vectors normalised,
    content hashes derived from the locators since no image bytes are read."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ModelMismatchError(
            f"vectors have shape {array.shape}; this collection holds {dim}-d vectors"
        )
    if len(locators) != len(array) or (metadata is not None and len(metadata) != len(array)):
        raise BadInputError("give one locator (and metadata entry) per vector")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise BadInputError("vectors must be finite and non-zero")
    metas = metadata or [None] * len(array)
    shapes = sizes or [(0, 0)] * len(array)
    return [
        NewRow(
            str(locator),
            content_hash(f"vector:{locator}".encode()),
            *shape,
            0,
            vector,
            metadata=dict(meta or {}),
        )
        for locator, vector, meta, shape in zip(locators, array / norms, metas, shapes, strict=True)
    ]


def add_new_keys(store: Backend, rows: list[NewRow]) -> list[int]:
    """Add the rows whose key is not stored yet (or waits for re-embedding), under the writer
    lock the caller holds; return every row's id, stored or new."""
    stored = store.live_by_keys([r.key for r in rows])
    fresh: dict[str, NewRow] = {}
    for row in rows:
        known = stored.get(row.key)
        if (known is None or known.stale) and row.key not in fresh:
            fresh[row.key] = row
    replaces = [stored[key].id for key in fresh if key in stored]
    new_ids = store.add(list(fresh.values()), replaces=replaces)
    ids = {key: stored[key].id for key in stored} | dict(zip(fresh, new_ids, strict=True))
    return [ids[r.key] for r in rows]
