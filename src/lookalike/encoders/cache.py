"""A folder of files built once per key, shared safely by concurrent processes, bounded in size.

Each entry is a folder ``<root>/runtime/<key>/``, where ``root`` is ``$LOOKALIKE_CACHE`` or
``~/.cache/lookalike``. An entry is built in a private temporary folder beside it and renamed
into place in one step, so readers see a complete entry or none; a lock file keeps two
processes from building the same entry twice (the second waits, then uses the first's).

Weights files are known by their content (a SHA-256 of the file), so a copy of a checkpoint
reuses its exports; the digest is remembered per (path, size, mtime), so a file is hashed once.
Opening an entry marks it used (its folder's mtime); after each build the least recently used
entries are removed until the cache fits ``$LOOKALIKE_CACHE_MAX_BYTES`` (default 8 GB).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError

try:
    import fcntl
except ImportError:  # Windows: no lock, the rename alone keeps entries whole
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8_000_000_000
MAX_BYTES_ENV = "LOOKALIKE_CACHE_MAX_BYTES"


def cache_root() -> Path:
    """Where built artifacts live: ``$LOOKALIKE_CACHE`` or ``~/.cache/lookalike``."""
    configured = os.environ.get("LOOKALIKE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lookalike"


def max_bytes() -> int:
    """The size bound of the cache: ``$LOOKALIKE_CACHE_MAX_BYTES`` or 8 GB."""
    configured = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not configured:
        return DEFAULT_MAX_BYTES
    try:
        return int(float(configured))
    except ValueError:
        raise BadInputError(
            f"${MAX_BYTES_ENV} must be a number of bytes, not {configured!r}"
        ) from None


def cache_key(parts: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def weights_identity(weights: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """What a weights file holds (its SHA-256): a copy gets the same key, a change a new one."""
    if weights is None:
        return None
    return {"sha256": file_digest(Path(weights))}


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, remembered per (path, size, mtime) under ``<root>/hashes``."""
    resolved = path.resolve()
    stat = resolved.stat()
    seen = (
        cache_root()
        / "hashes"
        / cache_key({"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    )
    with contextlib.suppress(OSError):
        known = seen.read_text(encoding="utf-8").strip()
        if len(known) == 64:
            return known
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    text = digest.hexdigest()
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
        seen.parent.mkdir(parents=True, exist_ok=True)
        tmp = seen.with_name(f".{seen.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, seen)
    return text


def entry_path(key: str) -> Path:
    """The folder of one cache entry (it may not exist yet)."""
    return cache_root() / "runtime" / key


def build_once(key: str, build: Callable[[Path], None]) -> Path:
    """The entry folder for ``key``, made first by ``build(tmp_folder)`` if it is missing."""
    final = entry_path(key)
    if final.is_dir():
        _touch(final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{key}.lock"):
        if final.is_dir():  # another process built it while this one waited
            _touch(final)
            return final
        tmp = final.parent / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    evict(max_bytes(), keep={key})
    return final


def discard(key: str) -> None:
    """Remove an entry (e.g. found corrupt) so the next :func:`build_once` makes it anew."""
    _remove(entry_path(key))


@dataclass(frozen=True)
class Entry:
    """One cache entry: its key, size in bytes, last use (epoch seconds) and what it holds."""

    key: str
    bytes: int
    last_used: float
    what: str


def entries() -> list[Entry]:
    """Every complete entry of the cache, least recently used first."""
    folder = cache_root() / "runtime"
    found = []
    with contextlib.suppress(FileNotFoundError):
        for path in folder.iterdir():
            if path.name.startswith(".") or not path.is_dir():
                continue
            with contextlib.suppress(OSError):  # removed meanwhile by another process
                found.append(Entry(path.name, _size(path), path.stat().st_mtime, _describe(path)))
    return sorted(found, key=lambda e: e.last_used)


def evict(limit: int, keep: set[str] = frozenset()) -> list[Entry]:  # type: ignore[assignment]
    """Remove least recently used entries (not those in ``keep``) until the cache holds at
    most ``limit`` bytes; returns the removed entries."""
    present = entries()
    total = sum(e.bytes for e in present)
    removed = []
    for entry in present:
        if total <= limit:
            break
        if entry.key in keep:
            continue
        discard(entry.key)
        total -= entry.bytes
        removed.append(entry)
    if removed:
        log.warning(
            "the model cache %s outgrew %.1f MB ($%s): removed %d least recently used entries",
            cache_root(),
            limit / 1e6,
            MAX_BYTES_ENV,
            len(removed),
        )
    return removed


def clear(older_than_s: float | None = None) -> list[Entry]:
    """Remove every entry, or those not used for ``older_than_s`` seconds; returns them."""
    now = time.time()
    removed = []
    for entry in entries():
        if older_than_s is None or now - entry.last_used >= older_than_s:
            discard(entry.key)
            removed.append(entry)
    if older_than_s is None:
        _remove(cache_root() / "hashes")
    return removed


def _describe(folder: Path) -> str:
    """A short label of an entry from its metadata: model spec, part and variant."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "?"
    if not isinstance(meta, dict):
        return "?"
    parts = [meta.get("spec"), meta.get("tower"), meta.get("variant") or meta.get("precision")]
    return " ".join(str(p) for p in parts if p) or "?"


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _touch(folder: Path) -> None:
    """Mark an entry used now: eviction removes the least recently used first."""
    with contextlib.suppress(OSError):  # a read-only cache still serves
        os.utime(folder)


def _remove(final: Path) -> None:
    if not final.exists():
        return
    # rename first: a reader never sees a half-deleted entry
    doomed = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old"
    with contextlib.suppress(OSError):
        os.rename(final, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
