"""The default backend: everything in the collection folder, nothing to run.

Rows live in SQLite, vectors in append-only shards (:mod:`lookalike.store`), and searches
run on exact or trained indexes over the shards (:mod:`lookalike.index`). Filters and
exclusions become a mask over ids that the index applies inside its search.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NotFoundError
from ..index import (
    IvfIndex,
    VectorIndex,
    build_index,
    keep_up,
    needs_training,
    open_index,
    tune_index,
)
from ..store import NewRow, Row, Store, View


class EmbeddedBackend:
    """Rows, vectors and index of one collection folder."""

    kind = "embedded"

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.store = Store(path, dim)
        self.index: VectorIndex = open_index(path, self.store.vectors)
        self.auto_index = True  # train and persist the index as the collection grows

    # -- reads -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """See :class:`~lookalike.backends.Backend`."""
        self.store.refresh()

    @property
    def count(self) -> int:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.view().count

    def live_count(self) -> int:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.live_count()

    def deleted_count(self) -> int:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.view().deleted_count

    def rows(self, ids: Sequence[int]) -> dict[int, Row]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.rows(ids)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """See :class:`~lookalike.backends.Backend`."""
        view = self.store.view()
        for i in map(int, ids):
            if view.unreadable is not None and 0 <= i < view.count and view.unreadable[i]:
                raise NotFoundError(
                    f"the vector of image {i} was lost (a damaged vector file): "
                    "`lookalike verify --repair` then `lookalike index` embed it again"
                )
            if not 0 <= i < view.count or view.deleted[i]:
                raise NotFoundError(f"no image with id {i}")
        return self.store.vectors.get(ids, view.count)

    def live_by_key(self, key: str) -> Row | None:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.live_by_key(key)

    def live_by_hash(self, content_hash: str) -> Row | None:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.live_by_hash(content_hash)

    def live_by_keys(self, keys: Sequence[str]) -> dict[str, Row]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.live_by_keys(keys)

    def removed_by_key(self, key: str) -> Row | None:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.removed_by_key(key)

    def content_copies(self) -> list[list[int]]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.content_copies()

    def stale_rows(self) -> list[Row]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.stale_rows()

    def iter_live(self) -> Iterator[Row]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.iter_live()

    def metadata_keys(self) -> list[str]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.metadata_keys()

    def roots(self) -> list[str]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.roots()

    @property
    def index_kind(self) -> str:
        """See :class:`~lookalike.backends.Backend`."""
        return self.index.kind

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
        """See :class:`~lookalike.backends.Backend`."""
        view = self.store.view()
        allowed = self._allowed(filter, list(exclude_ids), tags, exclude_tags, view)
        return self.index.search(queries, k, view.count, allowed, min_score)

    def allowed_ids(
        self,
        *,
        filter: Mapping[str, Any] | None = None,
        exclude_ids: Iterable[int] = (),
        tags: Sequence[str] = (),
        exclude_tags: Sequence[str] = (),
    ) -> np.ndarray:
        """See :class:`~lookalike.backends.Backend`."""
        allowed = self._allowed(filter, list(exclude_ids), tags, exclude_tags)
        # deleted covers lost vectors too
        return np.flatnonzero(~self.store.view().deleted if allowed is None else allowed)

    def _allowed(
        self,
        filter: Mapping[str, Any] | None,
        excluded: list[int],
        tags: Sequence[str] = (),
        exclude_tags: Sequence[str] = (),
        view: View | None = None,
    ) -> np.ndarray | None:
        """Mask over ids of the rows a search may return; None when every row may."""
        view = view or self.store.view()
        if not (filter or excluded or tags or exclude_tags or view.deleted_count):
            return None
        allowed = ~view.deleted
        for ids in (
            self.store.ids_matching(dict(filter)) if filter else None,
            self.store.tagged(tags) if tags else None,
        ):
            if ids is not None:
                matching = np.zeros_like(allowed)
                matching[ids[ids < view.count]] = True
                allowed &= matching
        if exclude_tags:
            ids = self.store.tagged(exclude_tags, every=False)
            allowed[ids[ids < view.count]] = False
        allowed[[i for i in excluded if 0 <= i < view.count]] = False
        return allowed

    def tags_of(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.tags_of(ids)

    def tagged(self, tag: str) -> list[int]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.tagged([tag]).tolist()

    def tag_counts(self) -> dict[str, int]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.tag_counts()

    # -- writes ----------------------------------------------------------------------------

    def writing(self) -> AbstractContextManager[Any]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.writing()

    def add(self, rows: Sequence[NewRow], replaces: Sequence[int] = ()) -> list[int]:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.add(rows, replaces=replaces)

    def remove(self, ids: Iterable[int]) -> int:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.remove(ids)

    def tag(self, ids: Sequence[int], tag: str) -> int:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.tag(ids, tag)

    def untag(self, ids: Sequence[int], tag: str) -> int:
        """See :class:`~lookalike.backends.Backend`."""
        return self.store.untag(ids, tag)

    def add_roots(self, paths: Iterable[str]) -> None:
        """See :class:`~lookalike.backends.Backend`."""
        self.store.add_roots(paths)

    def keep_up(self) -> None:
        """See :class:`~lookalike.backends.Backend`."""
        if not self.auto_index:
            return
        if needs_training(self.index, self.store.live_count()):
            self.rebuild_index("ivf")
        else:
            keep_up(self.index, self.store.count)

    def rebuild_index(self, kind: str = "auto", **options: Any) -> str:
        """See :class:`~lookalike.backends.Backend`. Options: ``target_recall``, ``nlist``,
        ``memory_budget`` (bytes of re-rank data; past it, compact codes stand in)."""
        with self.store.writing():
            view = self.store.view()
            self.index = build_index(
                self.path, self.store.vectors, view.count, ~view.deleted, kind, **options
            )
        return self.index.kind

    def tune_index(self, queries: np.ndarray | None, target_recall: float) -> float:
        """See :class:`~lookalike.backends.Backend`."""
        with self.store.writing():
            view = self.store.view()
            self.index = tune_index(
                self.path,
                self.index,
                view.count,
                ~view.deleted,
                queries,
                target_recall=target_recall,
            )
        assert isinstance(self.index, IvfIndex)
        return self.index.params.recall_at_20

    def close(self) -> None:
        """See :class:`~lookalike.backends.Backend`."""
        self.store.close()
