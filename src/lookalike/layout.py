"""The files of a collection on disk, named in one place, and the one way to write them.

```
mycollection/
  lookalike.json   manifest: format, model spec, dim, backend
  rows.sqlite      rows and metadata (SQLite, WAL)
  vectors/         append-only float32 shards, row id order
  index/           trained index files (a cache of vectors/)
  uploads/         images added as bytes, by content hash
  thumbnails/      thumbnails made on first request, by side and id
```
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

MANIFEST = "lookalike.json"
ROWS_DB = "rows.sqlite"
VECTORS_DIR = "vectors"
INDEX_DIR = "index"
UPLOADS_DIR = "uploads"
THUMBNAILS_DIR = "thumbnails"


def write_atomic(
    target: Path, content: bytes | str | Callable[[Path], object], *, durable: bool = True
) -> Path:
    """Write ``target`` whole or not at all: into a private temporary file, synced to disk
    (unless not ``durable``: a cache that can be made again), then renamed over it.
    ``content`` is the bytes or text, or a function writing a path."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if isinstance(content, bytes):
            partial.write_bytes(content)
        elif isinstance(content, str):
            partial.write_text(content, encoding="utf-8")
        else:
            content(partial)
        if durable:
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def thumbnail_path(root: Path, item_id: int, side: int) -> Path:
    """Where the cached thumbnail of one image at one size lives."""
    return root / THUMBNAILS_DIR / str(side) / f"{int(item_id)}.jpg"


def upload_path(root: Path, digest: str) -> Path:
    """Where an image added as bytes is kept, by its content hash."""
    return root / UPLOADS_DIR / digest[:2] / digest
