"""The collection's rows (SQLite) and vectors (append-only shard files), committed together.

Row ids are dense and never reused: row ``i`` owns vector ``i``. A write appends vectors past
the committed count, fsyncs them, then commits the rows and the new count in one SQLite
transaction. A crash between the two leaves vectors past the count, which readers ignore and
the next writer truncates: a batch is visible whole or not at all. Before it appends, a write
records how far its vectors will reach (``pending_count``), so a writer truncates no more than
an interrupted write can have left; anything else past the count, a database that is missing or
empty beside stored vectors, or a shard shorter than the committed rows is damage, which writers
refuse to touch and ``lookalike verify`` reports and repairs.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import math
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError, CollectionError

DATABASE = "rows.sqlite"
SHARD_ROWS = 1 << 20
PAGE = mmap.PAGESIZE
PREFETCH_BATCH = 1024  # rows whose pages are requested together before they are copied
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+
POPULATE_CHUNK = 64 << 20  # bytes mapped in per call
LOCK_TIMEOUT_S = 30.0
MAX_FILTER_KEYS = 100  # SQLite refuses expressions past 1000 terms deep
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Step-by-step schema migrations: MIGRATIONS[i] takes schema version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        mtime REAL,
        metadata TEXT NOT NULL DEFAULT '{}',
        added_at REAL NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX items_key ON items (key);
    CREATE INDEX items_hash ON items (content_hash);
    CREATE TABLE roots (path TEXT PRIMARY KEY);
    INSERT INTO meta VALUES ('vector_count', '0');
    """,
    # stale: the row's vector was lost (a damaged shard) and waits to be embedded again;
    # pending_count: how far the vectors of the write in progress reach
    """
    ALTER TABLE items ADD COLUMN stale INTEGER NOT NULL DEFAULT 0;
    INSERT INTO meta SELECT 'pending_count', value FROM meta WHERE key = 'vector_count';
    """,
    # removed: deleted by a user (not replaced by a changed file), so that indexing the same
    # folder again does not bring it back
    """
    ALTER TABLE items ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX items_removed_key ON items (key) WHERE removed = 1;
    """,
    # tags: names users give rows ("labeled", "exported:batch-3"), for curation and searches
    """
    CREATE TABLE tags (tag TEXT NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (tag, id))
        WITHOUT ROWID;
    CREATE INDEX tags_id ON tags (id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass
class NewRow:
    """A row about to be added, with its vector."""

    key: str
    content_hash: str
    width: int
    height: int
    bytes: int
    vector: np.ndarray
    mtime: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """A stored row."""

    id: int
    key: str
    content_hash: str
    width: int
    height: int
    bytes: int
    mtime: float | None
    metadata: dict[str, Any]
    added_at: float
    deleted: bool
    stale: bool = False  # its vector was lost and waits to be embedded again


_ROW_COLUMNS = (
    "id, key, content_hash, width, height, bytes, mtime, metadata, added_at, deleted, stale"
)


def _row(r: tuple) -> Row:
    metadata = {} if r[7] == "{}" else json.loads(r[7])  # most rows: a search's 20 hits' worth
    return Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], metadata, r[8], bool(r[9]), bool(r[10]))


@dataclass(frozen=True)
class View:
    """A consistent snapshot for readers: committed row count and, by id, the flags of rows a
    search must not return (deleted, waiting for re-embedding, or without a readable vector)."""

    count: int
    deleted: np.ndarray
    deleted_count: int = 0  # counted once here, not by every search
    unreadable: np.ndarray | None = None  # ids whose vector is missing from a damaged shard


class VectorShards:
    """Float32 vectors in fixed-size shard files under ``directory``, read by memory map."""

    def __init__(self, directory: Path, dim: int) -> None:
        self.directory = directory
        self.dim = dim
        self._maps: dict[int, np.memmap] = {}  # for scans: the kernel reads ahead
        self._scattered: dict[int, tuple[mmap.mmap, np.ndarray]] = {}  # for gathers: no read-ahead

    def _path(self, shard: int) -> Path:
        return self.directory / f"{shard:05d}.f32"

    def _shards(self) -> Iterator[tuple[int, Path]]:
        for path in self.directory.glob("*.f32"):
            if path.stem.isdigit():
                yield int(path.stem), path

    def rows_in(self, shard: int) -> int:
        """Whole vectors in one shard file (0 when the file is missing)."""
        try:
            return self._path(shard).stat().st_size // (self.dim * 4)
        except FileNotFoundError:
            return 0

    @staticmethod
    def _expected(shard: int, count: int) -> int:
        """Vectors shard ``shard`` must hold for ``count`` committed rows."""
        return min(max(count - shard * SHARD_ROWS, 0), SHARD_ROWS)

    def missing(self, count: int) -> list[tuple[int, int]]:
        """Id ranges [start, stop) below ``count`` whose vector is missing (a shard cut short
        or deleted). Forgets the memory maps of such shards: reading past a file's end through
        a map made before it shrank would kill the process."""
        gaps = []
        for shard in range((count + SHARD_ROWS - 1) // SHARD_ROWS):
            have, want = self.rows_in(shard), self._expected(shard, count)
            if have < want:
                self._maps.pop(shard, None)
                self._scattered.pop(shard, None)
                gaps.append((shard * SHARD_ROWS + have, shard * SHARD_ROWS + want))
        return gaps

    def stored_past(self, count: int) -> int:
        """Vectors stored past the first ``count`` (an interrupted write's, or damage)."""
        return sum(
            max(self.rows_in(shard) - self._expected(shard, count), 0)
            for shard, _ in self._shards()
        )

    def truncate(self, count: int) -> None:
        """Drop every vector at position >= count (left over by a crashed write); never
        lengthens a shard."""
        self._maps.clear()
        self._scattered.clear()
        last_shard, offset = divmod(count, SHARD_ROWS)
        for shard, path in self._shards():
            if shard > last_shard:
                path.unlink()
            elif shard == last_shard and path.stat().st_size > offset * self.dim * 4:
                with open(path, "r+b") as f:
                    f.truncate(offset * self.dim * 4)
                    os.fsync(f.fileno())

    def pad(self, count: int) -> None:
        """Fill the missing vectors below ``count`` with zeros, so later ids keep their
        positions (the rows they belong to must be marked stale first)."""
        self._maps.clear()
        self._scattered.clear()
        for start, _ in self.missing(count):
            shard = start // SHARD_ROWS
            with open(self._path(shard), "ab") as f:
                f.truncate(self._expected(shard, count) * self.dim * 4)
                os.fsync(f.fileno())

    def set_aside(self, count: int, target: Path) -> int:
        """Copy the vectors past ``count`` to ``target`` (raw float32), then drop them from the
        shards; returns how many were moved."""
        moved = 0
        with open(target, "wb") as out:
            for shard, path in sorted(self._shards()):
                skip = self._expected(shard, count) * self.dim * 4
                with open(path, "rb") as f:
                    f.seek(skip)
                    while block := f.read(1 << 24):
                        out.write(block)
                        moved += len(block)
            out.flush()
            os.fsync(out.fileno())
        self.truncate(count)
        return moved // (self.dim * 4)

    def append(self, start: int, vectors: np.ndarray) -> None:
        """Write ``vectors`` at positions start.. and fsync them."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        position = 0
        while position < len(vectors):
            shard, offset = divmod(start + position, SHARD_ROWS)
            take = min(len(vectors) - position, SHARD_ROWS - offset)
            with open(self._path(shard), "ab") as f:
                if f.tell() != offset * self.dim * 4:
                    raise CollectionError(f"vector shard {self._path(shard)} has a wrong size")
                f.write(vectors[position : position + take].tobytes())
                f.flush()
                os.fsync(f.fileno())
            self._maps.pop(shard, None)
            self._scattered.pop(shard, None)
            position += take

    def stored_count(self) -> int:
        """Vectors present in the shard files, committed or not."""
        return sum(path.stat().st_size // (self.dim * 4) for _, path in self._shards())

    def _map(self, shard: int, rows: int) -> np.ndarray:
        cached = self._maps.get(shard)
        if cached is None or len(cached) < rows:
            # whole rows only: a crashed writer may have left a partial row past the count
            whole = self.rows_in(shard)
            if whole == 0:  # a missing or emptied shard: nothing to map
                return np.zeros((0, self.dim), dtype=np.float32)
            cached = np.memmap(
                self._path(shard), dtype=np.float32, mode="r", shape=(whole, self.dim)
            )
            self._maps[shard] = cached
        return cached[:rows]

    def chunks(self, count: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first id, read-only view) for the first ``count`` vectors, shard by shard;
        a damaged shard yields only the vectors it still holds."""
        for shard in range((count + SHARD_ROWS - 1) // SHARD_ROWS):
            start = shard * SHARD_ROWS
            block = self._map(shard, min(SHARD_ROWS, count - start))
            if len(block):
                yield start, block

    def get(self, ids: Sequence[int], count: int, *, prefetch: bool = False) -> np.ndarray:
        """Vectors of the given ids (each < count), in order; ``prefetch``: see :func:`gather`
        (for shards that outgrow the page cache)."""
        wanted = np.asarray(ids, dtype=np.int64)
        if len(wanted) and wanted.max() < SHARD_ROWS and wanted.min() >= 0:  # one shard, the 0th
            return self._get_from(0, wanted, prefetch)
        out = np.empty((len(wanted), self.dim), dtype=np.float32)
        shards = wanted // SHARD_ROWS
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            rows = wanted[where] - int(shard) * SHARD_ROWS
            out[where] = self._get_from(int(shard), rows, prefetch)
        return out

    def _get_from(self, shard: int, rows: np.ndarray, prefetch: bool) -> np.ndarray:
        """Vectors of rows (positions within one shard)."""
        if rows.max() >= self.rows_in(shard):
            raise CollectionError(
                f"the vector of id {shard * SHARD_ROWS + int(rows.max())} is missing "
                f"from {self._path(shard)}: run `lookalike verify`"
            )
        mapped, block = self._scattered_map(shard, int(rows.max()) + 1)
        return gather(mapped, block, rows) if prefetch else block[rows]

    def populate(self, count: int) -> threading.Thread:
        """Map the first ``count`` vectors' pages into this process in a background thread.

        A re-rank reads ~40 random vectors a search; while their pages are not yet mapped in
        this process, each costs a page fault even from the page cache, and a fresh process
        pays them until it has touched most pages (p50 0.75 against 0.57-0.62 ms at 1 M,
        bench/RESULTS.md). For shards that fit the page cache: a cold file is read meanwhile."""
        blocks = []
        for shard in range((count + SHARD_ROWS - 1) // SHARD_ROWS):
            rows = min(self.rows_in(shard), self._expected(shard, count))
            if rows:
                blocks.append(self._scattered_map(shard, rows)[1])  # mapped before any search

        def run() -> None:
            # through ctypes, which lets go of the GIL (mmap.madvise holds it, for seconds on a
            # cold file); a view of the map keeps it open meanwhile
            try:
                madvise = ctypes.CDLL(None, use_errno=True).madvise
            except (OSError, AttributeError):  # no C library to call: searches fault pages in
                return
            for block in blocks:
                base, length = block.ctypes.data, block.nbytes
                for offset in range(0, length, POPULATE_CHUNK):
                    size = min(POPULATE_CHUNK, length - offset)
                    if (
                        madvise(
                            ctypes.c_void_p(base + offset),
                            ctypes.c_size_t(size),
                            MADV_POPULATE_READ,
                        )
                        != 0
                    ):
                        return  # a kernel without it, or a file cut short under the map

        thread = threading.Thread(target=run, name="lookalike-populate", daemon=True)
        thread.start()
        return thread

    def _scattered_map(self, shard: int, rows: int) -> tuple[mmap.mmap, np.ndarray]:
        cached = self._scattered.get(shard)
        if cached is None or len(cached[1]) < rows:
            whole = self._path(shard).stat().st_size // (self.dim * 4)
            with open(self._path(shard), "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), whole * self.dim * 4, access=mmap.ACCESS_READ)
            # gathers touch scattered rows: read-ahead around each would read ~50x the data
            mapped.madvise(mmap.MADV_RANDOM)
            cached = (mapped, np.frombuffer(mapped, dtype=np.float32).reshape(whole, self.dim))
            self._scattered[shard] = cached
        return cached


def _flock(directory: Path, timeout: float) -> Any:
    """The collection's ``write.lock`` file, locked exclusively; None if another writer held it
    for ``timeout`` seconds."""
    handle = open(directory / "write.lock", "a+", encoding="utf-8")  # noqa: SIM115 - held by the caller
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.05)


@contextmanager
def writer_lock(directory: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold a collection's writer lock without opening its database (to rebuild it)."""
    handle = _flock(directory, timeout)
    if handle is None:
        raise CollectionError(
            f"{directory} is being written by another writer (waited {timeout:.0f} s); "
            "try again when it has finished"
        )
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def gather(mapped: mmap.mmap, block: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``block[rows]`` of an array over ``mapped``, first asking the kernel for every row's
    pages, so the ones not in the page cache are read in parallel rather than one page fault
    after another (2-3x faster cold; a wasted system call per page when they are cached)."""
    out = np.empty((len(rows), *block.shape[1:]), dtype=block.dtype)
    row_bytes = block.strides[0]
    for start in range(0, len(rows), PREFETCH_BATCH):
        batch = rows[start : start + PREFETCH_BATCH]
        edges = np.concatenate([batch * row_bytes, (batch + 1) * row_bytes - 1])
        for page in np.unique(edges // PAGE):
            mapped.madvise(mmap.MADV_WILLNEED, int(page) * PAGE, PAGE)
        out[start : start + len(batch)] = block[batch]
    return out


class Store:
    """Rows and vectors of one collection directory."""

    def __init__(self, directory: Path, dim: int, *, readonly: bool = False) -> None:
        self.directory = directory
        self.dim = dim
        vector_dir = directory / "vectors"
        vector_dir.mkdir(exist_ok=True)
        self.vectors = VectorShards(vector_dir, dim)
        database = directory / DATABASE
        if not database.exists() and self.vectors.stored_count():
            raise CollectionError(lost_rows_message(database, self.vectors.stored_count()))
        self._mutex = threading.RLock()
        try:
            self._db = sqlite3.connect(
                database, timeout=LOCK_TIMEOUT_S, check_same_thread=False, isolation_level=None
            )
            if not schema_version(self._db) and self.vectors.stored_count():
                self._db.close()  # an empty file: giving it a schema would hide the loss
                raise CollectionError(lost_rows_message(database, self.vectors.stored_count()))
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit (and the pending count before the vectors) survives a power cut
            self._db.execute("PRAGMA synchronous=FULL")
            migrate(self._db)
            self._lock_file: Any = None
            self._writer = threading.RLock()
            self._depth = 0  # the flock is per process; the RLock orders its threads
            self._seen_version: tuple[int, int] | None = None
            self._view = View(0, np.zeros(0, dtype=bool))
            self._damage: tuple[tuple[tuple[int, int], ...], View, View] | None = None
            self.refresh()
        except sqlite3.DatabaseError as error:
            raise database_error(database, error) from error

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _select(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run a query under the connection's mutex (threads share one connection)."""
        with self._mutex:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as error:
                raise database_error(self.directory / DATABASE, error) from error

    def close(self) -> None:
        """Release the writer lock and the database connection."""
        self.unlock()
        self._db.close()

    # -- freshness -------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Load the committed count and deleted flags if another connection changed them."""
        with self._mutex:
            version = (self._select("PRAGMA data_version")[0][0], self._db.total_changes)
            if version == self._seen_version:
                return False
            count = int(self._select("SELECT value FROM meta WHERE key = 'vector_count'")[0][0])
            deleted = np.zeros(count, dtype=bool)
            ids = [
                r[0] for r in self._select("SELECT id FROM items WHERE deleted = 1 OR stale = 1")
            ]
            deleted[np.asarray(ids, dtype=np.int64)] = True
            self._view = View(count, deleted, len(ids))
            self._seen_version = version
            return True

    def view(self) -> View:
        """The latest committed (count, deleted) pair, refreshed first; ids whose vector a
        damaged shard lost count as deleted, so searches skip them."""
        self.refresh()
        gaps = tuple(self.vectors.missing(self._view.count))  # a few stat calls
        if not gaps:
            return self._view
        if self._damage is None or self._damage[:2] != (gaps, self._view):
            unreadable = np.zeros(self._view.count, dtype=bool)
            for start, stop in gaps:
                unreadable[start:stop] = True
            hidden = self._view.deleted | unreadable
            damaged = View(self._view.count, hidden, int(hidden.sum()), unreadable)
            self._damage = (gaps, self._view, damaged)
        return self._damage[2]

    def pending_count(self) -> int:
        """How far the vectors of the latest write reach (committed or not)."""
        found = self._select("SELECT value FROM meta WHERE key = 'pending_count'")
        return int(found[0][0]) if found else self.count

    @property
    def count(self) -> int:
        """Committed rows (deleted included), as of the last refresh."""
        return self._view.count

    @property
    def deleted(self) -> np.ndarray:
        """Deleted flags by id, as of the last refresh."""
        return self._view.deleted

    # -- writer lock -----------------------------------------------------------------------

    @contextmanager
    def writing(self, timeout: float = LOCK_TIMEOUT_S, *, check: bool = True) -> Iterator[Store]:
        """Hold the single-writer lock (threads of this process and other processes alike)."""
        self.lock(timeout, check=check)
        try:
            yield self
        finally:
            self.unlock()

    def lock(self, timeout: float = LOCK_TIMEOUT_S, *, check: bool = True) -> None:
        """Take the single-writer lock, waiting up to ``timeout`` seconds. Unless ``check`` is
        False (for repairs), an interrupted write's vectors are then truncated, and damaged
        vector files are refused."""
        busy = CollectionError(
            f"{self.directory} is being written by another writer (waited {timeout:.0f} s); "
            "try again when it has finished"
        )
        if not self._writer.acquire(timeout=timeout):
            raise busy
        self._depth += 1
        if self._depth > 1:  # nested: this thread holds the lock already
            return
        handle = _flock(self.directory, timeout)
        if handle is None:
            self._depth -= 1
            self._writer.release()
            raise busy
        self._lock_file = handle
        if not check:
            return
        try:
            self.refresh()
            self._settle_vectors()
        except BaseException:
            self.unlock()
            raise

    def _settle_vectors(self) -> None:
        """Truncate an interrupted write's vectors; refuse to write over damage."""
        count = self.count
        gaps = self.vectors.missing(count)
        if gaps:
            lost = sum(stop - start for start, stop in gaps)
            raise CollectionError(
                f"the vector files of {self.directory} lack the vectors of {lost} committed rows "
                f"(ids {describe_ranges(gaps)}): run `lookalike verify --repair`, then "
                "`lookalike index` to embed them again"
            )
        past = self.vectors.stored_past(count)
        if past > max(self.pending_count() - count, 0):
            raise CollectionError(
                f"the vector files of {self.directory} hold {past} vectors past the {count} "
                f"committed rows, more than an interrupted write leaves: {DATABASE} may have "
                "been replaced or restored from an older copy; nothing was changed: run "
                "`lookalike verify`"
            )
        self.vectors.truncate(count)

    def unlock(self) -> None:
        """Release the writer lock (the file lock goes with the outermost release)."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None
        self._writer.release()

    # -- writes ----------------------------------------------------------------------------

    def add(self, rows: Sequence[NewRow], replaces: Sequence[int] = ()) -> list[int]:
        """Append rows and their vectors, and delete the rows they replace, atomically;
        return the new ids."""
        if not rows:
            if replaces:
                self.mark_deleted(replaces)
            return []
        self._require_lock()
        vectors = np.stack([r.vector for r in rows]).astype(np.float32, copy=False)
        if vectors.shape[1] != self.dim:
            raise BadInputError(f"vectors have dimension {vectors.shape[1]}, expected {self.dim}")
        start = self.count
        with self._transaction():  # first say how far these vectors reach
            self._set_meta("pending_count", start + len(rows))
        self.vectors.append(start, vectors)
        now = time.time()
        with self._transaction():
            self._db.executemany(
                f"INSERT INTO items ({_ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0)",
                [
                    (
                        start + i,
                        r.key,
                        r.content_hash,
                        r.width,
                        r.height,
                        r.bytes,
                        r.mtime,
                        json.dumps(r.metadata, ensure_ascii=False, default=str),
                        now,
                    )
                    for i, r in enumerate(rows)
                ],
            )
            self._set_meta("vector_count", start + len(rows))
            self._db.executemany(
                "UPDATE items SET deleted = 1 WHERE id = ?", [(int(i),) for i in replaces]
            )
        self.refresh()
        return list(range(start, start + len(rows)))

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def mark_deleted(self, ids: Iterable[int]) -> int:
        """Flag rows as deleted; return how many live rows were removed."""
        self._require_lock()
        ids = [int(i) for i in ids]
        with self._transaction():
            changed = self._db.executemany(
                "UPDATE items SET deleted = 1 WHERE id = ? AND deleted = 0", [(i,) for i in ids]
            ).rowcount
        self.refresh()
        return changed

    def remove(self, ids: Iterable[int]) -> int:
        """Delete rows for good: unlike a replaced row, a removed one is remembered, so that
        indexing its file again skips it; return how many live rows were removed."""
        self._require_lock()
        ids = [int(i) for i in ids]
        with self._transaction():
            changed = self._db.executemany(
                "UPDATE items SET deleted = 1, removed = 1 WHERE id = ? AND deleted = 0",
                [(i,) for i in ids],
            ).rowcount
            self._db.executemany("DELETE FROM tags WHERE id = ?", [(i,) for i in ids])
        self.refresh()
        return changed

    def removed_by_key(self, key: str) -> Row | None:
        """The newest row removed by a user under ``key`` (path or URL), if any."""
        found = self._select(
            f"SELECT {_ROW_COLUMNS} FROM items WHERE key = ? AND removed = 1 "
            "ORDER BY id DESC LIMIT 1",
            (key,),
        )
        return _row(found[0]) if found else None

    def mark_stale(self, ids: Iterable[int]) -> int:
        """Flag live rows whose vector was lost, so searches skip them and the next ingest
        embeds them again; returns how many were flagged."""
        self._require_lock()
        with self._transaction():
            changed = self._db.executemany(
                "UPDATE items SET stale = 1 WHERE id = ? AND deleted = 0 AND stale = 0",
                [(int(i),) for i in ids],
            ).rowcount
        self.refresh()
        return changed

    def add_roots(self, paths: Iterable[str]) -> None:
        """Remember folders whose files the collection may serve."""
        with self._transaction():
            self._db.executemany("INSERT OR IGNORE INTO roots VALUES (?)", [(p,) for p in paths])

    # -- tags ------------------------------------------------------------------------------

    def tag(self, ids: Sequence[int], tag: str) -> int:
        """Give live rows a tag; returns how many did not have it yet."""
        self._require_lock()
        with self._transaction():
            return self._db.executemany(
                "INSERT OR IGNORE INTO tags SELECT ?, id FROM items WHERE id = ? AND deleted = 0",
                [(tag, int(i)) for i in ids],
            ).rowcount

    def untag(self, ids: Sequence[int], tag: str) -> int:
        """Take a tag from rows; returns how many had it."""
        self._require_lock()
        with self._transaction():
            return self._db.executemany(
                "DELETE FROM tags WHERE tag = ? AND id = ?", [(tag, int(i)) for i in ids]
            ).rowcount

    def tags_of(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """The sorted tags of each of these ids that has any."""
        out: dict[int, list[str]] = {}
        ids = [int(i) for i in ids]
        for begin in range(0, len(ids), 500):
            chunk = ids[begin : begin + 500]
            marks = ",".join("?" * len(chunk))
            for i, tag in self._select(
                f"SELECT id, tag FROM tags WHERE id IN ({marks}) ORDER BY tag", chunk
            ):
                out.setdefault(i, []).append(tag)
        return out

    def tagged(self, tags: Sequence[str], *, every: bool = True) -> np.ndarray:
        """Ids of live rows holding every one (or, with ``every=False``, any) of the tags."""
        if not tags:
            return np.zeros(0, dtype=np.int64)
        marks = ",".join("?" * len(tags))
        having = f"HAVING COUNT(*) = {len(set(tags))}" if every else ""
        found = self._select(
            f"SELECT t.id FROM tags AS t JOIN items AS i ON i.id = t.id WHERE i.deleted = 0 "
            f"AND t.tag IN ({marks}) GROUP BY t.id {having} ORDER BY t.id",
            list(tags),
        )
        return np.asarray([r[0] for r in found], dtype=np.int64)

    def tag_counts(self) -> dict[str, int]:
        """Every tag in use and how many live rows hold it, by name."""
        found = self._select(
            "SELECT t.tag, COUNT(*) FROM tags AS t JOIN items AS i ON i.id = t.id "
            "WHERE i.deleted = 0 GROUP BY t.tag ORDER BY t.tag"
        )
        return {str(tag): int(n) for tag, n in found}

    def _require_lock(self) -> None:
        if self._lock_file is None:
            raise CollectionError("writing needs the collection's writer lock")

    # -- reads -----------------------------------------------------------------------------

    def rows(self, ids: Sequence[int]) -> dict[int, Row]:
        """Rows by id (deleted ones included)."""
        out: dict[int, Row] = {}
        ids = [int(i) for i in ids]
        for begin in range(0, len(ids), 500):
            chunk = ids[begin : begin + 500]
            marks = ",".join("?" * len(chunk))
            for r in self._select(f"SELECT {_ROW_COLUMNS} FROM items WHERE id IN ({marks})", chunk):
                out[r[0]] = _row(r)
        return out

    def live_by_key(self, key: str) -> Row | None:
        """The live row stored under ``key`` (path or URL), if any."""
        found = self._select(
            f"SELECT {_ROW_COLUMNS} FROM items WHERE key = ? AND deleted = 0 LIMIT 1", (key,)
        )
        return _row(found[0]) if found else None

    def live_by_hash(self, content_hash: str) -> Row | None:
        """A live row with this content hash and a usable vector, if any."""
        found = self._select(
            f"SELECT {_ROW_COLUMNS} FROM items "
            "WHERE content_hash = ? AND deleted = 0 AND stale = 0 LIMIT 1",
            (content_hash,),
        )
        return _row(found[0]) if found else None

    def live_by_keys(self, keys: Sequence[str]) -> dict[str, Row]:
        """The live rows stored under these keys, by key."""
        out: dict[str, Row] = {}
        for begin in range(0, len(keys), 500):
            chunk = list(keys[begin : begin + 500])
            marks = ",".join("?" * len(chunk))
            for r in self._select(
                f"SELECT {_ROW_COLUMNS} FROM items WHERE deleted = 0 AND key IN ({marks})", chunk
            ):
                out[r[1]] = _row(r)
        return out

    def duplicate_keys(self) -> dict[str, list[int]]:
        """Keys held by more than one live row (left by racing writers), with their ids."""
        found = self._select(
            "SELECT key, group_concat(id) FROM items WHERE deleted = 0 "
            "GROUP BY key HAVING COUNT(*) > 1"
        )
        return {key: sorted(int(i) for i in ids.split(",")) for key, ids in found}

    def content_copies(self) -> list[list[int]]:
        """Ids of live rows sharing a content hash, one sorted list per hash held by several."""
        found = self._select(
            "SELECT group_concat(id) FROM items WHERE deleted = 0 "
            "GROUP BY content_hash HAVING COUNT(*) > 1"
        )
        return [sorted(int(i) for i in ids.split(",")) for (ids,) in found]

    def stale_rows(self) -> list[Row]:
        """Live rows whose vector waits to be embedded again, in id order."""
        found = self._select(
            f"SELECT {_ROW_COLUMNS} FROM items WHERE deleted = 0 AND stale = 1 ORDER BY id"
        )
        return [_row(r) for r in found]

    def ids_matching(self, equals: dict[str, Any]) -> np.ndarray:
        """Ids of live rows whose metadata has each key equal to the given value."""
        if len(equals) > MAX_FILTER_KEYS:
            raise BadInputError(
                f"a filter may hold at most {MAX_FILTER_KEYS} keys; this one has {len(equals)}"
            )
        clauses, params = [], []
        for name, value in equals.items():
            clauses.append("json_extract(metadata, ?) IS ?")
            params.append(_json_path(name))
            params.append(_filter_value(name, value))
        where = " AND ".join(["deleted = 0", *clauses])
        ids = [r[0] for r in self._select(f"SELECT id FROM items WHERE {where}", params)]
        return np.asarray(ids, dtype=np.int64)

    def metadata_keys(self) -> list[str]:
        """The metadata keys of live rows, sorted (a full scan: for messages, not searches)."""
        found = self._select(
            "SELECT DISTINCT j.key FROM items, json_each(items.metadata) AS j "
            "WHERE items.deleted = 0 ORDER BY j.key"
        )
        return [str(r[0]) for r in found]

    def integrity_check(self) -> str:
        """SQLite's own consistency check: "ok" or what is wrong."""
        return "; ".join(str(r[0]) for r in self._select("PRAGMA integrity_check"))

    def id_range(self) -> tuple[int, int, int]:
        """(row count, lowest id, highest id), deleted rows included."""
        rows, lowest, highest = self._select("SELECT COUNT(*), MIN(id), MAX(id) FROM items")[0]
        return (
            int(rows),
            int(lowest if lowest is not None else -1),
            int(highest if highest is not None else -1),
        )

    def roots(self) -> list[str]:
        """Folders registered as sources of the collection's files."""
        return [r[0] for r in self._select("SELECT path FROM roots ORDER BY path")]

    def live_count(self) -> int:
        """Number of rows not deleted."""
        view = self.view()
        return int(view.count - view.deleted.sum())

    def iter_live(self, batch: int = 10_000) -> Iterator[Row]:
        """Every live row in id order."""
        last = -1
        while True:
            found = self._select(
                f"SELECT {_ROW_COLUMNS} FROM items WHERE deleted = 0 AND id > ? "
                "ORDER BY id LIMIT ?",
                (last, batch),
            )
            if not found:
                return
            for r in found:
                yield _row(r)
            last = found[-1][0]


def schema_version(db: sqlite3.Connection) -> int:
    """The schema version of an open database (0: no schema yet)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection) -> None:
    """Bring a database's schema to :data:`SCHEMA_VERSION`, one step at a time."""
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise CollectionError(
            f"collection schema version {version} is newer than this lookalike supports "
            f"({SCHEMA_VERSION}); upgrade lookalike"
        )
    while version < SCHEMA_VERSION:
        # executescript commits whatever is pending, so the script carries its own transaction
        db.executescript(
            f"BEGIN IMMEDIATE; {MIGRATIONS[version]}; PRAGMA user_version = {version + 1}; COMMIT;"
        )
        version += 1


def lost_rows_message(database: Path, vectors: int) -> str:
    """What to say when the rows of stored vectors are gone."""
    return (
        f"{database} is missing or empty, but the collection's vector files hold {vectors} "
        "vectors: their rows (paths, metadata) are lost, and nothing was changed. Restore "
        f"{database.name} from a backup, or index the sources again into a new collection"
    )


def database_error(database: Path, error: sqlite3.DatabaseError) -> CollectionError:
    """A clear error for a database that cannot be read."""
    if isinstance(error, sqlite3.OperationalError):  # busy, locked, disk full, permissions
        return CollectionError(f"cannot use {database}: {error}")
    return CollectionError(
        f"{database} is damaged ({error}): `lookalike verify --repair` rebuilds it from what "
        "is readable and keeps a copy of the damaged file"
    )


def id_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted ids as [start, stop) runs of consecutive ids."""
    ranges: list[tuple[int, int]] = []
    for i in ids:
        if ranges and ranges[-1][1] == i:
            ranges[-1] = (ranges[-1][0], i + 1)
        else:
            ranges.append((i, i + 1))
    return ranges


def describe_ranges(ranges: Sequence[tuple[int, int]], limit: int = 5) -> str:
    """Id ranges [start, stop) as text: "3, 7..9, 12", the first ``limit`` of them."""
    parts = [str(a) if b - a == 1 else f"{a}..{b - 1}" for a, b in ranges[:limit]]
    return ", ".join(parts) + (", ..." if len(ranges) > limit else "")


def _json_path(name: str) -> str:
    if not isinstance(name, str):
        raise BadInputError(f"filter field {name!r} must be a string")
    if "\x00" in name:
        raise BadInputError(f"filter field {name!r} must not hold NUL characters")
    if not name or any(c in name for c in '."[]$'):
        raise BadInputError(f"filter field {name!r} must be a plain metadata key")
    return f'$."{name}"'


def _filter_value(name: str, value: Any) -> Any:
    """``value`` as SQLite compares it: refused where SQLite would fail or match wrongly."""
    if isinstance(value, bool):
        return int(value)  # JSON true is stored as 1
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise BadInputError(f"filter value for {name!r} is beyond 64-bit integers: {value}")
    if isinstance(value, float) and not math.isfinite(value):
        # SQLite binds NaN as NULL, which would match every row lacking the key
        raise BadInputError(f"filter value for {name!r} must be a finite number, not {value}")
    if value is not None and not isinstance(value, (str, int, float)):
        raise BadInputError(f"filter value for {name!r} must be a string, number, boolean or null")
    return value
