"""Adding and removing images: the write calls of :class:`lookalike.Collection`.

Folders, list files, manifests and URLs go through the ingest pipeline (:mod:`lookalike.ingest`);
images given as bytes are kept in the collection's ``uploads/`` folder first, so they can be
served later; embeddings computed elsewhere are added as they are. :class:`ImageAdding` gives
``Collection`` these calls.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BadInputError, NotFoundError
from .fetch import FetchError, FetchPolicy, fetch_each, is_url
from .imaging import ImageLimits, check_image
from .ingest import IngestOptions, Progress, add_new_keys, ingest, vector_rows
from .layout import upload_path, write_atomic
from .prepare import content_hash
from .results import file_stat
from .sources import SourceItem, iter_source, source_roots
from .types import IngestReport

if TYPE_CHECKING:
    from .backends import Backend
    from .encoders import Encoder


INLINE_ADD = 32  # images added at once that decode in this process (a server's uploads)


class ImageAdding:
    """``add``, ``add_images``, ``add_vectors``, ``reembed`` and ``remove``."""

    backend: Backend
    path: Path
    dim: int
    limits: ImageLimits
    fetch_policy: FetchPolicy

    @property
    def encoder(self) -> Encoder:  # the collection's, loaded on first use
        raise NotImplementedError

    def add(
        self,
        source: str | os.PathLike[str] | Iterable[SourceItem],
        *,
        progress: Progress | None = None,
        **options: Any,
    ) -> IngestReport:
        """Add the images of a folder, list file, CSV/Parquet manifest, URL or item stream.

        Images already stored (same path or URL, unchanged) and copies of stored content
        are skipped, so running it again adds only what is new.
        """
        if isinstance(source, (str, os.PathLike)):
            return self._ingest(iter_source(source), source_roots(source), progress, options)
        return self._ingest(source, [], progress, options)

    def _ingest(
        self,
        items: Iterable[SourceItem],
        roots: Sequence[str],
        progress: Progress | None,
        options: dict[str, Any],
    ) -> IngestReport:
        encoder = self.encoder  # loads the model before any lock is taken
        if roots:
            with self.backend.writing():
                self.backend.add_roots(roots)
        # ingest takes the writer lock per batch, so other writers (a server) interleave
        report = ingest(self.backend, encoder, items, self._ingest_options(options), progress)
        with self.backend.writing():
            self.backend.keep_up()
        return report

    def reembed(self, *, progress: Progress | None = None, **options: Any) -> IngestReport:
        """Embed again the images whose vectors were lost (rows that ``verify(repair=True)``
        marked stale), from their stored paths or URLs: each gets a new id and its old row is
        dropped. Rows added as vectors cannot be embedded here and are reported as failed."""
        items, failed = [], []
        for row in self.backend.stale_rows():
            if row.content_hash == content_hash(f"vector:{row.key}".encode()):
                failed.append((row.key, "added as a vector: add it again with add_vectors"))
            else:
                items.append(SourceItem(row.key, row.metadata, *file_stat(row.key)))
        report = self._ingest(items, [], progress, options) if items else IngestReport()
        report.failed.extend(failed)
        return report

    def add_images(
        self,
        images: Sequence[str | os.PathLike[str] | bytes],
        *,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        progress: Progress | None = None,
        **options: Any,
    ) -> IngestReport:
        """Add images given as file paths, URLs or encoded bytes, each with optional metadata.

        Bytes are kept in the collection's ``uploads/`` folder so they can be served later.
        URLs not stored yet are fetched ``fetch_policy.parallel`` at a time, all within one
        ``fetch_policy.deadline``; those it cuts short are reported as failed.
        """
        if metadata is not None and len(metadata) != len(images):
            raise BadInputError(f"{len(images)} images but {len(metadata)} metadata entries")
        items = []
        roots: set[str] = set()  # folders of the files given, so they can be served
        kept: set[str] = set()  # uploads written now
        for image, meta in zip(images, metadata or [None] * len(images), strict=True):
            locator = (
                self._keep_upload(image, kept) if isinstance(image, bytes) else os.fspath(image)
            )
            if "\0" in locator:
                raise BadInputError(f"{locator!r} is not a usable path or URL (a NUL character)")
            if not is_url(locator):
                locator = str(Path(locator).resolve())
                if not isinstance(image, bytes):
                    roots.add(str(Path(locator).parent))
            stat = file_stat(locator)
            items.append(SourceItem(locator, dict(meta or {}), *stat))
        if len(items) <= INLINE_ADD and "workers" not in options:
            options["workers"] = 0  # a pool of decode processes takes longer to start
        report = self._ingest(self._fetched(items), sorted(roots), progress, options)
        for locator, _ in report.failed:  # an upload that did not decode is not kept
            if locator in kept and self.backend.live_by_key(locator) is None:
                Path(locator).unlink(missing_ok=True)
        return report

    def _fetched(self, items: list[SourceItem]) -> Iterator[SourceItem]:
        """The items, each new URL's body (or why it could not be fetched) attached."""
        new = [
            index
            for index, item in enumerate(items)
            if is_url(item.locator) and self.backend.live_by_key(item.locator) is None
        ]
        bodies = fetch_each([items[index].locator for index in new], self.fetch_policy)
        wanted = set(new)
        for index, item in enumerate(items):
            if index in wanted:  # bodies come in the order of `new`
                body = next(bodies)
                if isinstance(body, FetchError):
                    item = replace(item, error=str(body))
                else:
                    item = replace(item, data=body)
            yield item

    def add_vectors(
        self,
        vectors: Any,
        locators: Sequence[str],
        *,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[int]:
        """Add embeddings computed elsewhere (by this collection's model), one per locator.

        Vectors are normalised; each locator (path or URL) becomes the row's key, and its
        content hash is derived from the locator since no image bytes are read. A locator
        stored already keeps its row (its id is returned), so adding again duplicates nothing.
        """
        rows = vector_rows(vectors, locators, self.dim, metadata, sizes)
        with self.backend.writing():  # checked and added under the lock: writers may race
            ids: list[int] = []
            for start in range(0, len(rows), 100_000):
                ids += add_new_keys(self.backend, rows[start : start + 100_000])
            self.backend.keep_up()
        return ids

    def remove(
        self,
        ids: int | Iterable[int] = (),
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] = (),
    ) -> int:
        """Remove images by id (one or several) or by path/URL; returns how many were removed.

        Nothing is removed when any of them is not stored: NotFoundError names those. A
        removed image stays removed: adding its file again skips it unless the file changed
        or ``include_removed=True`` is given to the add.
        """
        wanted = [ids] if isinstance(ids, (int, np.integer)) else list(ids)
        for i in wanted:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise BadInputError(f"ids must be integers (got {i!r:.40})")
        wanted = [int(i) for i in wanted]
        missing: list[str] = []
        for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
            text = os.fspath(path)
            row = self.backend.live_by_key(text if is_url(text) else str(Path(text).resolve()))
            if row is None:
                missing.append(text)
            else:
                wanted.append(row.id)
        with self.backend.writing():
            self.backend.refresh()
            rows = self.backend.rows([i for i in set(wanted) if 0 <= i < self.backend.count])
            missing += [str(i) for i in wanted if i not in rows or rows[i].deleted]
            if missing:
                raise NotFoundError(f"not stored, nothing removed: {', '.join(missing[:20])}")
            return self.backend.remove(wanted)

    def _ingest_options(self, options: dict[str, Any]) -> IngestOptions:
        return IngestOptions(limits=self.limits, fetch_policy=self.fetch_policy, **options)

    def _keep_upload(self, data: bytes, kept: set[str]) -> str:
        """Keep uploaded bytes under their content hash (adding the path to ``kept`` when
        written now), refused first if their headers are no image: the pixels are decoded
        once, when the ingest prepares the kept file."""
        check_image(data, limits=self.limits)
        target = upload_path(self.path, content_hash(data))
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, data)
            kept.add(str(target))
        return str(target)
