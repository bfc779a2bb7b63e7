"""Where images come from: folders, lists of paths or URLs, CSV/Parquet manifests.

Each source becomes a stream of :class:`SourceItem` (a locator and its metadata); nothing
here opens an image or knows of models and storage.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .fetch import is_url
from .imaging import IMAGE_EXTENSIONS, sniff_image

LOCATOR_COLUMNS = ("path", "url", "filepath", "file", "image_path", "image_url")
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
COLLECTION_MARKER = "lookalike.json"


@dataclass(frozen=True)
class SourceItem:
    """One image to ingest: an absolute path or a URL, with metadata to store beside it."""

    locator: str
    metadata: dict[str, Any] = field(default_factory=dict)
    size: int | None = None
    mtime: float | None = None
    error: str | None = None  # set when the source itself is broken (e.g. an empty manifest cell)
    data: bytes | None = field(default=None, repr=False, compare=False)  # a URL's body, fetched


UNDECODED_NAME = (
    "the name is not UTF-8: rename the file"
    if sys.getfilesystemencoding() == "utf-8"
    else f"the name is not {sys.getfilesystemencoding()} text, this process's file-name "
    "encoding: run lookalike with PYTHONUTF8=1 or under a UTF-8 locale"
)


def iter_source(source: str | os.PathLike[str], *, sniff: bool = True) -> Iterator[SourceItem]:
    """Items of a folder (recursive), a list file, a CSV/Parquet manifest, an image or a URL."""
    text = _text(os.fspath(source))
    if is_url(text):
        yield SourceItem(text)
        return
    path = Path(text).expanduser()
    if path.is_dir():
        yield from iter_folder(path, sniff=sniff)
    elif not path.exists():
        raise BadInputError(f"{path} does not exist")
    elif path.suffix.lower() in {".csv", ".tsv"}:
        yield from iter_csv(path)
    elif path.suffix.lower() == ".parquet":
        yield from iter_parquet(path)
    elif path.suffix.lower() in LIST_SUFFIXES:
        yield from iter_list(path)
    else:
        yield _file_item(path.resolve())


def source_roots(source: str | os.PathLike[str]) -> list[str]:
    """Folders whose files a source may name: the collection may serve files under them."""
    text = _text(os.fspath(source))
    if is_url(text):
        return []
    path = Path(text).expanduser().resolve()
    return [str(path if path.is_dir() else path.parent)]


def iter_folder(folder: Path, *, sniff: bool = True) -> Iterator[SourceItem]:
    """Image files under ``folder``, by extension or (with ``sniff``) by content, sorted.

    Symlinked folders are not followed (they can loop) and lookalike collections are skipped.
    """
    folder = folder.resolve()
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if COLLECTION_MARKER in files:
            subdirs[:] = []
            continue
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(directory, name)
            if path.suffix.lower() in IMAGE_EXTENSIONS or (sniff and _looks_like_image(path)):
                yield _file_item(path)


def iter_list(path: Path) -> Iterator[SourceItem]:
    """One path or URL per line; blank lines and ``#`` comments are skipped."""
    base = path.resolve().parent
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield _locate(entry, base, {})


def iter_csv(path: Path) -> Iterator[SourceItem]:
    """Rows of a CSV (or TSV) manifest; the locator column is one of LOCATOR_COLUMNS."""
    base = path.resolve().parent
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        column = _locator_column(list(reader.fieldnames or []), path)
        for number, record in enumerate(reader, start=2):
            locator = (record.pop(column, None) or "").strip()
            metadata = {k: _parse_cell(v) for k, v in record.items() if k}
            if not locator:
                yield SourceItem("", metadata, error=f"{path.name} line {number}: empty {column}")
            else:
                yield _locate(locator, base, metadata)


def iter_parquet(path: Path, batch_rows: int = 10_000) -> Iterator[SourceItem]:
    """Rows of a Parquet manifest, read in batches so memory stays bounded."""
    import pyarrow.parquet as pq

    base = path.resolve().parent
    try:
        table = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a bad file
        raise BadInputError(f"{path} is not a readable Parquet file: {error}") from error
    column = _locator_column(table.schema_arrow.names, path)
    for batch in table.iter_batches(batch_size=batch_rows):
        for record in batch.to_pylist():
            locator = record.pop(column, None)
            if not locator:
                yield SourceItem("", record, error=f"{path.name}: row with empty {column}")
            else:
                yield _locate(str(locator), base, record)


def _locator_column(columns: list[str], path: Path) -> str:
    by_lower = {c.lower().strip(): c for c in columns}
    for wanted in LOCATOR_COLUMNS:
        if wanted in by_lower:
            return by_lower[wanted]
    raise BadInputError(
        f"manifest {path} needs a 'path' or 'url' column; it has {', '.join(columns) or 'none'}"
    )


def _locate(entry: str, base: Path, metadata: dict[str, Any]) -> SourceItem:
    if is_url(entry):
        return SourceItem(entry, metadata)
    path = Path(entry).expanduser()
    return _file_item((base / path).resolve() if not path.is_absolute() else path, metadata)


def _text(name: str) -> str:
    """``name`` if it is text; an error if this process's locale could not decode it."""
    if _is_text(name):
        return name
    raise BadInputError(f"{_readable(name)}: {UNDECODED_NAME}")


def _is_text(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # surrogates: bytes the file-system encoding could not decode
        return False
    return True


def _readable(name: str) -> str:
    """A name with undecoded bytes, shown as UTF-8 where they are (the usual case)."""
    return os.fsencode(name).decode("utf-8", errors="backslashreplace")


def _file_item(path: Path, metadata: dict[str, Any] | None = None) -> SourceItem:
    if not _is_text(str(path)):  # it could be opened, but not stored, served or exported
        return SourceItem(_readable(str(path)), metadata or {}, error=UNDECODED_NAME)
    try:
        stat = path.stat()
    except OSError as error:
        return SourceItem(str(path), metadata or {}, error=f"cannot read: {error.strerror}")
    return SourceItem(str(path), metadata or {}, size=stat.st_size, mtime=stat.st_mtime)


def _looks_like_image(path: Path) -> bool:
    try:
        if not path.is_file():  # a FIFO or device would block or never end
            return False
        with open(path, "rb") as handle:
            return sniff_image(handle.read(16))
    except OSError:
        return False


_INT = re.compile(r"-?\d{1,18}")
_FLOAT = re.compile(r"-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")


def _parse_cell(value: str | None) -> Any:
    """CSV cells become ints or floats when they spell one, else stay strings."""
    if value is None:
        return None
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value
