"""Where a collection's rows and vectors live, behind one small boundary.

:class:`Backend` is everything :class:`lookalike.Collection` asks of its storage: rows by id,
key or content hash; vectors by id; a top-k search that applies filters and exclusions
inside the index; and writes under a writer lock. The embedded backend (SQLite rows, vector
shards, a Faiss index, all in the collection folder) is the default; a distributed engine is
one more module implementing the same protocol and named in the manifest's ``backend``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import BadInputError, CollectionError
from ..store import NewRow, Row


class Backend(Protocol):
    """The storage and search of one collection."""

    kind: str  # "embedded", ...

    # -- reads: safe from many threads and processes at once --------------------------------
    def refresh(self) -> None:
        """See writes committed since the last call (by this or another process)."""

    @property
    def count(self) -> int:
        """Ids handed out so far: rows live or deleted. New ids continue from here."""

    def live_count(self) -> int:
        """Rows not deleted."""

    def deleted_count(self) -> int:
        """Rows deleted."""

    def rows(self, ids: Sequence[int]) -> dict[int, Row]:
        """Rows of these ids (deleted ones included) that exist."""

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Unit vectors of live ids, in order; NotFoundError for an unknown or deleted id."""

    def live_by_key(self, key: str) -> Row | None:
        """The live row stored under a path or URL."""

    def live_by_hash(self, content_hash: str) -> Row | None:
        """A live row holding this content."""

    def live_by_keys(self, keys: Sequence[str]) -> dict[str, Row]:
        """Live rows stored under any of these paths or URLs, by key."""

    def removed_by_key(self, key: str) -> Row | None:
        """The newest row a user removed under this path or URL."""

    def content_copies(self) -> list[list[int]]:
        """Ids of live rows holding the same content (hash), one sorted list per content
        held by more than one row."""

    def stale_rows(self) -> list[Row]:
        """Live rows whose vector was lost and waits to be embedded again."""

    def iter_live(self) -> Iterator[Row]:
        """Every live row in id order."""

    def metadata_keys(self) -> list[str]:
        """Metadata keys that rows use, for messages and filters."""

    def roots(self) -> list[str]:
        """Folders that files were indexed from."""

    @property
    def index_kind(self) -> str:
        """How searches run: "flat" (exact), "ivf", ..."""

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        filter: Mapping[str, Any] | None = None,
        exclude_ids: Iterable[int] = (),
        tags: Sequence[str] = (),
        exclude_tags: Sequence[str] = (),
        min_score: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` live rows by inner product for each query row, best first.

        Only rows whose metadata equals each ``filter`` value, holding every one of ``tags``,
        none of ``exclude_tags``, and not in ``exclude_ids``, are candidates: k results come
        back whenever k rows qualify. With ``min_score``, only results scoring at least that
        are wanted (a duplicates pass): the others come back missing, and an approximate index
        may search less widely. Returns (scores, ids), each (n_queries, k); missing slots hold
        id -1 and score -inf.
        """

    def tags_of(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """The sorted tags of each of these ids that has any."""

    def tagged(self, tag: str) -> list[int]:
        """Ids of live rows holding ``tag``, in id order."""

    def tag_counts(self) -> dict[str, int]:
        """Every tag live rows hold, and how many hold it."""

    def allowed_ids(
        self,
        *,
        filter: Mapping[str, Any] | None = None,
        exclude_ids: Iterable[int] = (),
        tags: Sequence[str] = (),
        exclude_tags: Sequence[str] = (),
    ) -> np.ndarray:
        """Ids of every live row with a readable vector that :meth:`search` with the same
        restrictions may return, ascending (what a count scores)."""

    # -- writes: inside ``writing()`` --------------------------------------------------------
    def writing(self) -> AbstractContextManager[Any]:
        """Hold the collection's single writer lock (across processes)."""

    def add(self, rows: Sequence[NewRow], replaces: Sequence[int] = ()) -> list[int]:
        """Store rows and their vectors in one commit, deleting ``replaces`` in it; new ids."""

    def remove(self, ids: Iterable[int]) -> int:
        """Delete live rows for good (remembered by key), and their tags; how many were
        deleted."""

    def tag(self, ids: Sequence[int], tag: str) -> int:
        """Give live rows (ids checked by the caller) a tag; how many did not have it yet."""

    def untag(self, ids: Sequence[int], tag: str) -> int:
        """Take a tag from rows; how many had it."""

    def add_roots(self, paths: Iterable[str]) -> None:
        """Record folders whose files may be served."""

    def keep_up(self) -> None:
        """After writes: bring the index up to date, training one once it pays off."""

    def rebuild_index(self, kind: str = "auto", **options: Any) -> str:
        """(Re)build the index from the stored vectors; returns the kind in use."""

    def tune_index(self, queries: np.ndarray | None, target_recall: float) -> float:
        """Re-tune the trained index's search settings to ``target_recall`` on ``queries``
        (vectors; None: the backend's own sample) without retraining; the recall reached."""

    def close(self) -> None:
        """Release files, connections and locks."""


def open_backend(path: Path, manifest: Mapping[str, Any]) -> Backend:
    """The backend a collection's manifest names (``embedded`` when it names none)."""
    name = manifest.get("backend", "embedded")
    if name == "embedded":
        from .embedded import EmbeddedBackend

        return EmbeddedBackend(path, int(manifest["dim"]))
    if name == "milvus":
        from .milvus import MilvusBackend

        return MilvusBackend(path, int(manifest["dim"]), manifest.get("milvus") or {})
    raise CollectionError(f"{path} uses the backend {name!r}, which this lookalike lacks")


def new_backend(name: str, dim: int, uri: str | None = None) -> dict[str, Any]:
    """Make the storage of a new collection; returns the manifest entries that name it.
    ``embedded`` needs nothing made; ``milvus`` makes a collection on the server at ``uri``."""
    if name == "embedded":
        if uri is not None:
            raise BadInputError("a uri is for a server backend (--backend milvus)")
        return {"backend": "embedded"}
    if name == "milvus":
        if not uri:
            raise BadInputError("the milvus backend needs the server's uri, e.g. http://HOST:19530")
        from .milvus import create_collection

        return create_collection(uri, dim)
    raise BadInputError(f"backend must be one of {', '.join(BACKENDS)} (got {name!r:.40})")


def check_backend(
    path: Path, manifest: Mapping[str, Any], backend: str | None, uri: str | None
) -> None:
    """Refuse to open an existing collection as another backend or server than it uses."""
    used = manifest.get("backend", "embedded")
    if backend is not None and backend != used:
        raise CollectionError(f"{path} uses the {used} backend, not {backend}")
    recorded = (manifest.get(used) or {}).get("uri") if used != "embedded" else None
    if uri is not None and uri != recorded:
        raise CollectionError(f"{path} keeps its data at {recorded or 'its folder'}, not {uri}")


BACKENDS = ("embedded", "milvus")

__all__ = ["BACKENDS", "Backend", "check_backend", "new_backend", "open_backend"]
