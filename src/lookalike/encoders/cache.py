"""A folder of files built once per key, shared safely by concurrent processes.

Each entry is a folder ``<root>/runtime/<key>/``, where ``root`` is ``$LOOKALIKE_CACHE`` or
``~/.cache/lookalike``. An entry is built in a private temporary folder beside it and renamed
into place in one step, so readers see a complete entry or none; a lock file keeps two
processes from building the same entry twice (the second waits, then uses the first's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no lock, the rename alone keeps entries whole
    fcntl = None  # type: ignore[assignment]


def cache_root() -> Path:
    """Where built artifacts live: ``$LOOKALIKE_CACHE`` or ``~/.cache/lookalike``."""
    configured = os.environ.get("LOOKALIKE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lookalike"


def cache_key(parts: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def weights_identity(weights: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """Path, size and mtime of a weights file: a changed file gets a new key."""
    if weights is None:
        return None
    path = Path(weights).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def entry_path(key: str) -> Path:
    """The folder of one cache entry (it may not exist yet)."""
    return cache_root() / "runtime" / key


def build_once(key: str, build: Callable[[Path], None]) -> Path:
    """The entry folder for ``key``, made first by ``build(tmp_folder)`` if it is missing."""
    final = entry_path(key)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{key}.lock"):
        if final.is_dir():  # another process built it while this one waited
            return final
        tmp = final.parent / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def discard(key: str) -> None:
    """Remove an entry (e.g. found corrupt) so the next :func:`build_once` makes it anew."""
    final = entry_path(key)
    if not final.exists():
        return
    # rename first: a reader never sees a half-deleted entry
    doomed = final.parent / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old"
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
