"""A damaged ``rows.sqlite``: telling it apart from a sound one, and rebuilding it from the rows
that can still be read, without touching a vector.

Rows are read through SQLite id by id where its b-tree still leads to them, then found by
scanning every page of the file (and its write-ahead log) for the table's leaf cells, as
sqlite3's ``.recover`` does, for rows whose path from the root was damaged. The rebuilt
database keeps every row id: a row that cannot be read becomes a deleted placeholder, so row
``i`` still owns vector ``i`` and no vector is dropped. The damaged file is kept beside it.
Images whose rows were lost come back when their sources are indexed again.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fetch import is_url
from .store import (
    DATABASE,
    VectorShards,
    describe_ranges,
    id_ranges,
    lost_rows_message,
    migrate,
    schema_version,
    writer_lock,
)

WINDOW = 1000  # ids read per query; a window that fails is read again id by id
_COLUMNS = (
    "id",
    "key",
    "content_hash",
    "width",
    "height",
    "bytes",
    "mtime",
    "metadata",
    "added_at",
    "deleted",
    "stale",
)


@dataclass(frozen=True)
class Damage:
    """What is wrong with a collection's database, and whether a rebuild can mend it."""

    what: str
    repairable: bool


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild did, and the ids of the rows it could not read."""

    what: str
    lost: list[int] = field(default_factory=list)


def diagnose_database(root: Path, dim: int) -> Damage | None:
    """Why the database of the collection at ``root`` is unusable, or None when its integrity
    check passes (or it is missing in a collection that holds nothing yet)."""
    database = root / DATABASE
    stored = VectorShards(root / "vectors", dim).stored_count()
    if not database.exists() or database.stat().st_size == 0:
        return Damage(lost_rows_message(database, stored), False) if stored else None
    try:
        with closing(sqlite3.connect(database.resolve().as_uri() + "?mode=rw", uri=True)) as db:
            if not schema_version(db):
                return Damage(lost_rows_message(database, stored), False) if stored else None
            answers = [str(r[0]) for r in db.execute("PRAGMA integrity_check(5)")]
    except sqlite3.OperationalError as error:  # locked, unreadable: not damage we can mend
        return Damage(f"cannot use {database}: {error}", False)
    except sqlite3.DatabaseError as error:
        answers = [str(error)]
    if answers == ["ok"]:
        return None
    lines = [line for a in answers for line in a.splitlines() if not line.startswith("***")]
    return Damage(
        f"{DATABASE} is damaged ({'; '.join(lines[:5])}): --repair rebuilds it from its readable "
        "rows and keeps a copy of the damaged file",
        True,
    )


def rebuild_database(root: Path, dim: int) -> Rebuilt:
    """Replace the collection's damaged database by one holding every row that can be read;
    the damaged file (and its journal) is kept as ``rows.sqlite.damaged-<time>``."""
    database = root / DATABASE
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = root / f"{DATABASE}.damaged-{stamp}"
    scratch = root / f"{DATABASE}.reading"
    fresh = root / f"{DATABASE}.rebuilt"
    with writer_lock(root):
        _copy_database(database, scratch)  # read a copy: opening may rewrite what it reads
        stored = VectorShards(root / "vectors", dim).stored_count()
        try:
            with closing(sqlite3.connect(scratch, isolation_level=None)) as damaged:
                salvage = _salvage(damaged, stored)
        finally:
            _remove_database(scratch)
        _add_scanned_rows(salvage, database)
        salvage.stored_vectors = stored
        _remove_database(fresh)
        count = _write_database(fresh, salvage)
        for suffix in ("-wal", "-shm", ""):  # a stale journal must never meet the new file
            with suppress(FileNotFoundError):
                os.replace(f"{database}{suffix}", f"{backup}{suffix}")
        os.replace(fresh, database)
        _fsync_directory(root)
    lost = [i for i in range(count) if i not in salvage.rows]
    what = (
        f"rebuilt it: {len(salvage.rows)} of {count} rows recovered, kept the damaged file as "
        f"{backup.name}"
    )
    if lost:
        what += (
            f"; {len(lost)} rows could not be read (ids {describe_ranges(id_ranges(lost))}): "
            "their vectors are kept but no longer searched; index their sources again to add "
            "those images back"
        )
    return Rebuilt(what, lost)


@dataclass
class _Salvage:
    rows: dict[int, tuple] = field(default_factory=dict)  # id -> values in _COLUMNS order
    meta: dict[str, str] = field(default_factory=dict)
    roots: list[str] | None = None  # None: unreadable
    stored_vectors: int = 0
    tags: list[tuple[str, int]] = field(default_factory=list)  # (tag, id) pairs readable


def _salvage(db: sqlite3.Connection, stored_vectors: int) -> _Salvage:
    """Every row, meta value and root of a damaged database that reads back sane."""
    db.row_factory = sqlite3.Row
    found = _Salvage()
    with suppress(sqlite3.DatabaseError):
        found.meta = {str(r[0]): str(r[1]) for r in db.execute("SELECT key, value FROM meta")}
    with suppress(sqlite3.DatabaseError):
        found.roots = [str(r[0]) for r in db.execute("SELECT path FROM roots")]
    with suppress(sqlite3.DatabaseError):  # a database from before tags has no such table
        found.tags = [(str(r[0]), int(r[1])) for r in db.execute("SELECT tag, id FROM tags")]
    upto = max(stored_vectors, _int(found.meta.get("vector_count")) or 0)
    with suppress(sqlite3.DatabaseError):
        upto = max(upto, int(db.execute("SELECT MAX(id) FROM items").fetchone()[0] or 0) + 1)
    for start in range(0, upto, WINDOW):
        for raw in _read_window(db, start, min(start + WINDOW, upto)):
            row = _sane(raw)
            if row is not None:
                found.rows[row[0]] = row
    return found


def _read_window(db: sqlite3.Connection, start: int, stop: int) -> Iterator[sqlite3.Row]:
    """Rows with ids in [start, stop): in one query, then id by id for any it did not give."""
    got: list[sqlite3.Row] = []
    with suppress(sqlite3.DatabaseError):
        got = db.execute("SELECT * FROM items WHERE id >= ? AND id < ?", (start, stop)).fetchall()
    yield from got
    if len(got) == stop - start:
        return
    seen = {r["id"] for r in got}
    for i in range(start, stop):
        if i not in seen:
            with suppress(sqlite3.DatabaseError):
                yield from db.execute("SELECT * FROM items WHERE id = ?", (i,)).fetchall()


def _sane(raw: sqlite3.Row) -> tuple | None:
    """The row's values in ``_COLUMNS`` order if each has a plausible type, else None (a
    damaged page can read back as values of the wrong kind)."""
    values = dict(zip(raw.keys(), tuple(raw), strict=True))
    values.setdefault("stale", 0)  # a schema from before the column
    try:
        return _plausible(tuple(values[c] for c in _COLUMNS))
    except KeyError:
        return None


def _plausible(row: tuple) -> tuple | None:
    """``row`` (values in ``_COLUMNS`` order) if each value has a plausible type, else None."""
    try:
        ints = [row[0], row[3], row[4], row[5], row[9], row[10]]
        if not all(isinstance(v, int) for v in ints) or row[0] < 0:
            return None
        if not (isinstance(row[1], str) and row[1] and isinstance(row[2], str)):
            return None
        if not (row[6] is None or isinstance(row[6], (int, float))):
            return None
        if not isinstance(row[8], (int, float)) or not isinstance(json.loads(row[7]), dict):
            return None
    except (TypeError, ValueError):
        return None
    return row


def _add_scanned_rows(salvage: _Salvage, database: Path) -> None:
    """Add the rows that SQLite could not reach, found by scanning the pages of the file and of
    its log; of several copies of a row (older ones linger in freed pages), the flags that
    say it was deleted or lost its vector win, as they only ever go from 0 to 1."""
    found: dict[int, tuple] = {}
    for rowid, values in _leaf_records(database):
        if len(values) not in (len(_COLUMNS) - 1, len(_COLUMNS)) or rowid in salvage.rows:
            continue
        values = [rowid, *values[1:]] + [0] * (len(_COLUMNS) - len(values))
        row = _plausible(tuple(values))
        if row is None:
            continue
        if rowid in found:
            old = found[rowid]
            row = (*row[:9], max(row[9], old[9]), max(row[10], old[10]))
        found[rowid] = row
    salvage.rows.update(found)


def _leaf_records(database: Path) -> Iterator[tuple[int, list[Any]]]:
    """(rowid, values) of every record in the table leaf pages of a database file and of its
    write-ahead log, whatever the b-tree above them."""
    if database.stat().st_size < 512:
        return
    with open(database, "rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as data:
        size = int.from_bytes(data[16:18], "big")
        page_size = 65536 if size == 1 else size
        if page_size < 512 or page_size & (page_size - 1):
            page_size = 4096  # the header is damaged too: the size lookalike's databases use
        usable = page_size - data[20]
        logged: list[bytes] = []
        wal = Path(f"{database}-wal")
        if wal.exists():  # checkpointed every ~1000 pages: small
            log = wal.read_bytes()
            frame = 24 + page_size
            logged = [log[i + 24 : i + frame] for i in range(32, len(log) - frame + 1, frame)]
        pages = _Pages(data, page_size, logged)
        for number in range(len(pages)):
            yield from _page_records(pages[number], 100 if number == 0 else 0, usable, pages)


class _Pages:
    """The pages of a memory-mapped database file (not read whole: it can be large), then
    those of its log; a page number ``n`` of an overflow chain is ``pages[n - 1]``."""

    def __init__(self, data: mmap.mmap, page_size: int, logged: list[bytes]) -> None:
        self.data, self.page_size, self.logged = data, page_size, logged
        self.in_file = len(data) // page_size

    def __len__(self) -> int:
        return self.in_file + len(self.logged)

    def __getitem__(self, n: int) -> bytes:
        if n >= self.in_file:
            return self.logged[n - self.in_file]
        return self.data[n * self.page_size : (n + 1) * self.page_size]


def _page_records(
    page: bytes, start: int, usable: int, pages: _Pages
) -> Iterator[tuple[int, list[Any]]]:
    """The records of one page if it is a table leaf page; nothing otherwise."""
    if len(page) < start + 8 or page[start] != 0x0D:
        return
    cells = int.from_bytes(page[start + 3 : start + 5], "big")
    for n in range(cells):
        at = start + 8 + 2 * n
        try:
            offset = int.from_bytes(page[at : at + 2], "big")
            length, offset = _varint(page, offset)
            rowid, offset = _varint(page, offset)
            payload = _payload(page, offset, length, usable, pages)
            yield rowid, _record(payload)
        except (IndexError, ValueError, UnicodeDecodeError, struct.error):
            continue  # a damaged cell


def _payload(page: bytes, offset: int, length: int, usable: int, pages: _Pages) -> bytes:
    """A cell's payload, following its overflow pages when it spills."""
    most = usable - 35
    if length <= most:
        return page[offset : offset + length]
    least = (usable - 12) * 32 // 255 - 23
    local = least + (length - least) % (usable - 4)
    local = local if local <= most else least
    out = bytearray(page[offset : offset + local])
    following = int.from_bytes(page[offset + local : offset + local + 4], "big")
    while len(out) < length:
        if not 0 < following <= len(pages):
            raise ValueError("a broken overflow chain")
        overflow = pages[following - 1]
        out += overflow[4 : 4 + min(usable - 4, length - len(out))]
        following = int.from_bytes(overflow[:4], "big")
    return bytes(out)


def _record(payload: bytes) -> list[Any]:
    """The values of an SQLite record."""
    header_size, at = _varint(payload, 0)
    types = []
    while at < header_size:
        kind, at = _varint(payload, at)
        types.append(kind)
    values: list[Any] = []
    at = header_size
    for kind in types:
        value, at = _value(payload, at, kind)
        values.append(value)
    if at != len(payload):
        raise ValueError("the record's size does not add up")
    return values


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _value(payload: bytes, at: int, kind: int) -> tuple[Any, int]:
    if kind == 0:
        return None, at
    if kind in _INT_SIZES:
        size = _INT_SIZES[kind]
        if at + size > len(payload):
            raise ValueError("a cut value")
        return int.from_bytes(payload[at : at + size], "big", signed=True), at + size
    if kind == 7:
        return struct.unpack(">d", payload[at : at + 8])[0], at + 8
    if kind in (8, 9):
        return kind - 8, at
    if kind >= 12:
        size = (kind - 12) // 2
        if at + size > len(payload):
            raise ValueError("a cut value")
        raw = payload[at : at + size]
        return (raw.decode() if kind % 2 else bytes(raw)), at + size
    raise ValueError(f"serial type {kind}")


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """An SQLite varint at ``at``: (value, position after it)."""
    value = 0
    for i in range(9):
        byte = data[at + i]
        if i == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    raise ValueError("unreachable")


def _write_database(path: Path, salvage: _Salvage) -> int:
    """A fresh database at ``path`` with the salvaged rows and a deleted placeholder for each
    id that was lost; returns the committed row count."""
    highest = max(salvage.rows, default=-1)
    committed = _int(salvage.meta.get("vector_count"))
    # without a readable count, every stored vector is kept as committed
    count = max(salvage.stored_vectors if committed is None else committed, highest + 1)
    pending = max(_int(salvage.meta.get("pending_count")) or 0, count)
    now = time.time()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        migrate(db)
        db.execute("BEGIN")
        marks = ", ".join("?" * len(_COLUMNS))
        db.executemany(
            f"INSERT INTO items ({', '.join(_COLUMNS)}) VALUES ({marks})",
            (
                salvage.rows.get(i) or (i, f"lost:{i}", "", 0, 0, 0, None, "{}", now, 1, 0)
                for i in range(count)
            ),
        )
        db.execute("UPDATE meta SET value = ? WHERE key = 'vector_count'", (str(count),))
        db.execute("UPDATE meta SET value = ? WHERE key = 'pending_count'", (str(pending),))
        roots = salvage.roots
        if roots is None:  # the folders of the recovered files may be served, as when added
            roots = sorted(
                {str(Path(r[1]).parent) for r in salvage.rows.values() if not is_url(r[1])}
            )
        db.executemany("INSERT OR IGNORE INTO roots VALUES (?)", [(r,) for r in roots])
        db.executemany(
            "INSERT OR IGNORE INTO tags VALUES (?, ?)",
            [(tag, i) for tag, i in salvage.tags if i in salvage.rows],
        )
        db.execute("COMMIT")
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return count


def _copy_database(source: Path, target: Path) -> None:
    """Copy a database and its log; a file cut short gets a header that says so, for SQLite
    reads the rest as damage otherwise."""
    _remove_database(target)
    for suffix in ("", "-wal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
    with open(target, "r+b") as copy:
        header = copy.read(100)
        if len(header) < 100:
            return
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = os.fstat(copy.fileno()).st_size // max(page_size, 512)
        if int.from_bytes(header[28:32], "big") > pages:
            copy.seek(28)
            copy.write(pages.to_bytes(4, "big"))


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")


def _fsync_directory(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
