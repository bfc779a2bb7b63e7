"""The public object: one on-disk collection of images, their vectors, and search over them."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .encoders import DEFAULT_MODEL, Encoder, load_encoder
from .errors import (
    BadInputError,
    CollectionError,
    LookalikeError,
    ModelMismatchError,
    NotFoundError,
)
from .fetch import FetchError, FetchPolicy, fetch_all, fetch_each, is_url
from .imaging import ImageLimits, decode_image, to_model_input
from .index import FlatIndex, VectorIndex
from .ingest import IngestOptions, Progress, ingest
from .ivf import IvfIndex, build_ivf, drop_ivf, has_ivf
from .prepare import content_hash
from .query import QueryPart, parse_parts
from .sources import SourceItem, iter_source, source_roots
from .store import NewRow, Store, View
from .types import Hit, IngestReport, Item
from .verify import VerifyReport, verify

FORMAT_VERSION = 1
MANIFEST = "lookalike.json"
MAX_K = 10_000
DEDUPE_BLOCK = 256  # candidates compared at once when dropping near-duplicates
log = logging.getLogger("lookalike")

FLAT_LIMIT = 100_000  # live images above which an IVF index is trained
UPLOADS = "uploads"


@dataclass(frozen=True)
class Stats:
    """What a collection holds."""

    path: str
    count: int
    deleted: int
    model: str
    weights: str | None
    dim: int
    index: str
    bytes_on_disk: int
    format: int


class Collection:
    """Images of one directory on disk, searchable by text, image, URL, id or vector.

    >>> col = Collection.create("./col")                   # doctest: +SKIP
    >>> col.add("./photos")                                # doctest: +SKIP
    >>> col.search(text="a red bicycle", k=5)              # doctest: +SKIP
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        *,
        device: str | None = None,
        fetch_policy: FetchPolicy | None = None,
        limits: ImageLimits | None = None,
        encoder: Encoder | None = None,
        runtime: str = "auto",
        threads: int | None = None,
    ) -> None:
        self.path = path.resolve()
        self.manifest = manifest
        self.model: str = manifest["model"]
        self.weights: str | None = manifest.get("weights")
        self.dim: int = int(manifest["dim"])
        self.fetch_policy = fetch_policy or FetchPolicy()
        self.limits = limits or ImageLimits()
        self._device = device
        self._runtime = runtime  # encoder engine: see lookalike.encoders.runtime
        self._threads = threads
        self._encoder = encoder
        self.store = Store(path, self.dim)
        self.index: VectorIndex = _open_index(self.path, self.store.vectors)
        self.auto_index = True  # train/persist the index as the collection grows

    # -- life cycle ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        model: str = DEFAULT_MODEL,
        *,
        weights: str | os.PathLike[str] | None = None,
        device: str | None = None,
        exist_ok: bool = False,
        **options: Any,
    ) -> Collection:
        """Make a new collection at ``path`` whose images are embedded by ``model``.

        With ``exist_ok``, an existing collection made with the same model is opened instead.
        ``runtime`` ("auto", "torch", "onnx", "onnx-int8") and ``threads`` choose how the model
        runs in this process (see :mod:`lookalike.encoders.runtime`); ``open`` takes them too.
        """
        root = Path(path)
        if model.startswith("open_clip:") and model.endswith(".json"):  # a config file, by path
            model = f"open_clip:{Path(model.partition(':')[2]).resolve()}"
        if (root / MANIFEST).exists():
            if not exist_ok:
                raise CollectionError(f"{root} already holds a collection")
            collection = cls.open(root, device=device, **options)
            if model != collection.model:
                raise ModelMismatchError(f"{root} was made with {collection.model}, not {model}")
            return collection
        if root.exists() and any(root.iterdir()):
            raise CollectionError(f"{root} exists and is not empty; choose a new directory")
        weights_path = str(Path(weights).resolve()) if weights else None
        encoder = load_encoder(
            model, weights_path, device, options.get("runtime", "auto"), options.get("threads")
        )
        root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT_VERSION,
            "model": encoder.spec,
            "weights": weights_path,
            "dim": encoder.dim,
            "metric": "cosine",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "created_by": f"lookalike {__version__}",
        }
        tmp = root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, root / MANIFEST)
        return cls(root, manifest, device=device, encoder=encoder, **options)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, device: str | None = None, **options: Any
    ) -> Collection:
        """Open an existing collection; its model loads on first need."""
        root = Path(path)
        return cls(root, read_manifest(root), device=device, **options)

    def close(self) -> None:
        """Release files and locks."""
        self.store.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.store.live_count()

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r}, model={self.model!r}, count={len(self)})"

    @property
    def encoder(self) -> Encoder:
        """The collection's model, loaded on first use."""
        if self._encoder is None:
            self._encoder = load_encoder(
                self.model, self.weights, self._device, self._runtime, self._threads
            )
            if self._encoder.dim != self.dim:
                raise ModelMismatchError(
                    f"{self.model} now gives {self._encoder.dim}-d vectors but the collection "
                    f"holds {self.dim}-d ones; were the weights at {self.weights} replaced?"
                )
        return self._encoder

    # -- writes ----------------------------------------------------------------------------

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
            with self.store.writing():
                self.store.add_roots(roots)
        # ingest takes the writer lock per batch, so other writers (a server) interleave
        report = ingest(self.store, encoder, items, self._ingest_options(options), progress)
        with self.store.writing():
            self._maintain_index()
        return report

    def rebuild_index(
        self,
        kind: str = "auto",
        *,
        target_recall: float = 0.95,
        nlist: int | None = None,
        memory_budget: int | None = None,
    ) -> str:
        """(Re)build the vector index from the stored vectors; returns the kind in use.

        ``auto`` picks exact search below ``FLAT_LIMIT`` live images and a trained IVF index
        above; ``ivf`` retrains even a small collection; ``flat`` drops any trained index.
        ``memory_budget`` (bytes; default half the RAM) bounds the IVF index's re-rank data:
        past it, compact codes stand in for the full vectors.
        """
        if kind not in {"auto", "flat", "ivf"}:
            raise BadInputError("index kind must be auto, flat or ivf")
        with self.store.writing():
            view = self.store.view()
            live = ~view.deleted
            if kind == "auto":
                kind = "ivf" if int(live.sum()) >= FLAT_LIMIT else "flat"
            if kind == "flat":
                drop_ivf(self.path)
            else:
                build_ivf(
                    self.path,
                    self.store.vectors,
                    view.count,
                    live,
                    target_recall=target_recall,
                    nlist=nlist,
                    memory_budget=memory_budget,
                )
            self.index = _open_index(self.path, self.store.vectors)
        return self.index.kind

    def _maintain_index(self) -> None:
        """Train an index once the collection outgrows exact search; persist a large delta."""
        if not self.auto_index:
            return
        if isinstance(self.index, IvfIndex):
            self.index.catch_up(self.store.count)
            if self.index.pending > max(50_000, self.index.params.indexed_count // 10):
                self.index.save()
        elif self.store.live_count() >= FLAT_LIMIT:
            self.rebuild_index("ivf")

    def reembed(self, *, progress: Progress | None = None, **options: Any) -> IngestReport:
        """Embed again the images whose vectors were lost (rows that ``verify(repair=True)``
        marked stale), from their stored paths or URLs: each gets a new id and its old row is
        dropped. Rows added as vectors cannot be embedded here and are reported as failed."""
        items, failed = [], []
        for row in self.store.stale_rows():
            if row.content_hash == content_hash(f"vector:{row.key}".encode()):
                failed.append((row.key, "added as a vector: add it again with add_vectors"))
            else:
                items.append(SourceItem(row.key, row.metadata, *_stat(row.key)))
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
        for image, meta in zip(images, metadata or [None] * len(images), strict=True):
            locator = self._keep_upload(image) if isinstance(image, bytes) else os.fspath(image)
            if "\0" in locator:
                raise BadInputError(f"{locator!r} is not a usable path or URL (a NUL character)")
            if not is_url(locator):
                locator = str(Path(locator).resolve())
                if not isinstance(image, bytes):
                    roots.add(str(Path(locator).parent))
            stat = _stat(locator)
            items.append(SourceItem(locator, dict(meta or {}), *stat))
        return self._ingest(self._fetched(items), sorted(roots), progress, options)

    def _fetched(self, items: list[SourceItem]) -> Iterator[SourceItem]:
        """The items, each new URL's body (or why it could not be fetched) attached."""
        new = [
            index
            for index, item in enumerate(items)
            if is_url(item.locator) and self.store.live_by_key(item.locator) is None
        ]
        bodies = fetch_each([items[index].locator for index in new], self.fetch_policy)
        wanted = set(new)
        for index, item in enumerate(items):
            if index in wanted:  # bodies come in the order of `new`
                body = next(bodies)
                failed = isinstance(body, FetchError)
                item = replace(item, error=str(body)) if failed else replace(item, data=body)
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
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ModelMismatchError(
                f"vectors have shape {array.shape}; this collection holds {self.dim}-d vectors"
            )
        if len(locators) != len(array) or (metadata is not None and len(metadata) != len(array)):
            raise BadInputError("give one locator (and metadata entry) per vector")
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise BadInputError("vectors must be finite and non-zero")
        metas = metadata or [None] * len(array)
        shapes = sizes or [(0, 0)] * len(array)
        rows = [
            NewRow(
                str(locator),
                content_hash(f"vector:{locator}".encode()),
                *shape,
                0,
                vector,
                metadata=dict(meta or {}),
            )
            for locator, vector, meta, shape in zip(
                locators, array / norms, metas, shapes, strict=True
            )
        ]
        with self.store.writing():  # checked and added under the lock: writers may race
            ids: list[int] = []
            for start in range(0, len(rows), 100_000):
                ids += self._add_new_keys(rows[start : start + 100_000])
            self._maintain_index()
        return ids

    def _add_new_keys(self, rows: list[NewRow]) -> list[int]:
        """Add the rows whose key is not stored yet (or waits for re-embedding); return every
        row's id, stored or new."""
        stored = self.store.live_by_keys([r.key for r in rows])
        fresh: dict[str, NewRow] = {}
        for row in rows:
            known = stored.get(row.key)
            if (known is None or known.stale) and row.key not in fresh:
                fresh[row.key] = row
        replaces = [stored[key].id for key in fresh if key in stored]
        new_ids = self.store.add(list(fresh.values()), replaces=replaces)
        ids = {key: stored[key].id for key in stored} | dict(zip(fresh, new_ids, strict=True))
        return [ids[r.key] for r in rows]

    def remove(self, ids: Iterable[int] = (), paths: Iterable[str | os.PathLike[str]] = ()) -> int:
        """Remove images by id or by path/URL; returns how many were removed."""
        wanted = [int(i) for i in ids]
        for path in paths:
            text = os.fspath(path)
            row = self.store.live_by_key(text if is_url(text) else str(Path(text).resolve()))
            if row is None:
                raise NotFoundError(f"no image stored under {text}")
            wanted.append(row.id)
        with self.store.writing():
            return self.store.mark_deleted(wanted)

    def _ingest_options(self, options: dict[str, Any]) -> IngestOptions:
        return IngestOptions(limits=self.limits, fetch_policy=self.fetch_policy, **options)

    def _keep_upload(self, data: bytes) -> str:
        # refuse non-images before keeping them; min_side lets big images decode downscaled
        decode_image(data, limits=self.limits, min_side=self.encoder.image_size or None)
        digest = content_hash(data)
        folder = self.path / UPLOADS / digest[:2]
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / digest
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return str(target)

    # -- reads -----------------------------------------------------------------------------

    def get(self, id: int) -> Item:
        """The stored image with this id."""
        self.store.refresh()
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            raise BadInputError("an id must be an integer")
        row = self.store.rows([id]).get(int(id)) if 0 <= id < self.store.count else None
        if row is None or row.deleted:
            raise NotFoundError(f"no image with id {id}")
        return _item(row)

    def lookup(self, image: str | os.PathLike[str] | bytes) -> Item | None:
        """The stored image for a path or URL, or holding these exact bytes, if any."""
        if isinstance(image, bytes):
            row = self.store.live_by_hash(content_hash(image))
        else:
            text = os.fspath(image)
            row = self.store.live_by_key(text if is_url(text) else str(Path(text).resolve()))
        return _item(row) if row else None

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of live ids."""
        view = self.store.view()
        for i in ids:
            if view.unreadable is not None and 0 <= int(i) < view.count and view.unreadable[i]:
                raise NotFoundError(
                    f"the vector of image {i} was lost (a damaged vector file): "
                    "`lookalike verify --repair` then `lookalike index` embed it again"
                )
            if not 0 <= int(i) < view.count or view.deleted[int(i)]:
                raise NotFoundError(f"no image with id {i}")
        return self.store.vectors.get(ids, view.count)

    def embed(
        self,
        query: Iterable[Mapping[str, Any] | QueryPart] | None = None,
        *,
        model: str | None = None,
        **kinds: Any,
    ) -> np.ndarray:
        """The unit query vector of the given parts (see :meth:`search`)."""
        return self._combine(parse_parts(query, **kinds), model)

    def search(
        self,
        query: Iterable[Mapping[str, Any] | QueryPart] | None = None,
        *,
        text: str | None = None,
        image: Any = None,
        url: str | None = None,
        id: int | Sequence[int] | None = None,
        vector: Any = None,
        k: int = 20,
        filter: Mapping[str, Any] | None = None,
        exclude_ids: Iterable[int] = (),
        include_self: bool = False,
        dedupe: float | None = None,
        model: str | None = None,
    ) -> list[Hit]:
        """The ``k`` stored images most similar to the query, best first.

        Give one or several of ``text``, ``image`` (bytes, path or PIL image), ``url``,
        ``id`` (one or a list: "more like these"), ``vector``; or ``query``, a list of parts
        like ``{"text": "police car"}, {"id": 7, "weight": -0.5}``. Parts combine as the
        normalised weighted sum of their vectors. ``filter`` keeps rows whose metadata equals
        each given value; ``exclude_ids`` drops ids (e.g. already labeled); ids used as
        queries are left out unless ``include_self``; ``dedupe`` (a cosine such as 0.95)
        drops results nearly identical to a better one; ``model`` (a spec) makes a raw
        vector query fail unless it names the collection's model.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise BadInputError(f"k must be an integer from 1 to {MAX_K}")
        if dedupe is not None and not 0 < dedupe <= 1:
            raise BadInputError("dedupe must be a cosine similarity in (0, 1]")
        parts = parse_parts(query, text=text, image=image, url=url, id=id, vector=vector)
        query_vector = self._combine(parts, model)
        view = self.store.view()
        query_ids = [] if include_self else [p.value for p in parts if p.kind == "id"]
        allowed = self._allowed(view, filter, [*exclude_ids, *query_ids])
        depth = k * 4 if dedupe else k
        scores, ids = self.index.search(query_vector[None, :], depth, view.count, allowed)
        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        if dedupe:
            found = self._dedupe(found, dedupe, view.count, k)
        found = found[:k]
        rows = self.store.rows([i for i, _ in found])
        return [_hit(rows[i], score) for i, score in found]

    def _combine(self, parts: list[QueryPart], model: str | None) -> np.ndarray:
        if model is not None and model != self.model:
            raise ModelMismatchError(f"the query is for {model}; this collection uses {self.model}")
        parts = self._fetch_url_parts(parts)
        total = np.zeros(self.dim, dtype=np.float32)
        for part in parts:
            total += part.weight * self._part_vector(part)
        norm = float(np.linalg.norm(total))
        if not np.isfinite(norm) or norm < 1e-6:
            raise BadInputError("the query parts cancel out: their weighted sum is zero")
        return total / norm

    def _part_vector(self, part: QueryPart) -> np.ndarray:
        if part.kind == "text":
            return self.encoder.encode_texts([part.value])[0]
        if part.kind == "id":
            return self.vectors([part.value])[0]
        if part.kind == "vector":
            return _unit_vector(part.value, self.dim)
        data = part.value  # an image's bytes, path or PIL image: URL parts are fetched by now
        image = (
            data
            if hasattr(data, "convert")
            else decode_image(data, limits=self.limits, min_side=self.encoder.image_size).image
        )
        pixels = to_model_input(image.convert("RGB"), self.encoder.image_size)
        return self.encoder.encode_images(pixels[None])[0]

    def _fetch_url_parts(self, parts: list[QueryPart]) -> list[QueryPart]:
        """The parts with URL parts turned into image parts of their bytes, fetched together
        within one deadline (``fetch_policy.deadline``)."""
        urls = [part.value for part in parts if part.kind == "url"]
        if not urls:
            return parts
        bodies = iter(fetch_all(urls, self.fetch_policy))
        return [
            QueryPart("image", next(bodies), part.weight) if part.kind == "url" else part
            for part in parts
        ]

    def _allowed(
        self, view: View, filter: Mapping[str, Any] | None, excluded: Iterable[Any]
    ) -> np.ndarray | None:
        """Mask over ids of the rows a search may return; None when every row may."""
        try:
            dropped = [_id_of(i) for i in excluded]
        except (TypeError, ValueError):
            raise BadInputError("exclude_ids must be integer ids") from None
        if not filter and not dropped and not view.deleted_count:
            return None
        allowed = ~view.deleted
        if filter:
            if not isinstance(filter, Mapping):
                raise BadInputError("filter must map metadata keys to values")
            ids = self.store.ids_matching(dict(filter))
            matching = np.zeros_like(allowed)
            matching[ids[ids < view.count]] = True
            allowed &= matching
        allowed[[i for i in dropped if 0 <= i < view.count]] = False
        return allowed

    def _dedupe(
        self, found: list[tuple[int, float]], threshold: float, count: int, k: int
    ) -> list[tuple[int, float]]:
        """The first ``k`` hits whose cosine to every better-ranked kept hit stays below
        ``threshold``."""
        if not found:
            return found
        vectors = self.store.vectors.get([i for i, _ in found], count)
        kept_vectors = np.empty((min(k, len(found)), vectors.shape[1]), dtype=vectors.dtype)
        kept: list[int] = []
        # a block of candidates is compared with the kept hits in one product, then with each
        # other: thousands of hits (clip-retrieval's front asks 3,000) take milliseconds
        for begin in range(0, len(found), DEDUPE_BLOCK):
            block = vectors[begin : begin + DEDUPE_BLOCK]
            near_kept = (block @ kept_vectors[: len(kept)].T >= threshold).any(axis=1)
            among = block @ block.T >= threshold
            chosen = np.zeros(len(block), dtype=bool)
            for j in np.flatnonzero(~near_kept).tolist():
                if (among[j] & chosen).any():
                    continue
                chosen[j] = True
                kept_vectors[len(kept)] = block[j]
                kept.append(begin + j)
                if len(kept) == k:
                    return [found[p] for p in kept]
        return [found[p] for p in kept]

    def stats(self) -> Stats:
        """Counts, model and size on disk."""
        view = self.store.view()
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        deleted = int(view.deleted.sum())
        return Stats(
            str(self.path),
            view.count - deleted,
            deleted,
            self.model,
            self.weights,
            self.dim,
            self.index.kind,
            size,
            FORMAT_VERSION,
        )

    def verify(self, *, repair: bool = False) -> VerifyReport:
        """Check rows, vectors, index and files agree; with ``repair``, fix what can be fixed
        without losing rows or vectors (see :func:`lookalike.verify.verify_path` for a
        collection whose database is too damaged to open)."""
        return verify(self, repair=repair)

    def items(self) -> Iterable[Item]:
        """Every stored image in id order."""
        return (_item(row) for row in self.store.iter_live())

    def roots(self) -> list[str]:
        """Folders the collection's files were indexed from (plus its uploads)."""
        return [*self.store.roots(), str((self.path / UPLOADS).resolve())]


def read_manifest(root: Path) -> dict[str, Any]:
    """The collection manifest of ``root``, checked for a format this version reads."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise CollectionError(
            f"{root} is not a lookalike collection (no {MANIFEST}); make one with Collection.create"
        ) from None
    except (OSError, ValueError) as error:
        raise CollectionError(f"cannot read {root / MANIFEST}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise CollectionError(
            f"{root} has collection format {found!r}; this lookalike reads format {FORMAT_VERSION}"
        )
    return manifest


def _open_index(path: Path, vectors: Any) -> VectorIndex:
    if not has_ivf(path):
        return FlatIndex(vectors)
    try:
        return IvfIndex(path, vectors)
    except Exception as error:  # a damaged index fails in many ways inside Faiss
        log.warning(
            "the IVF index of %s cannot be read (%s): searching exactly until "
            "`lookalike verify --repair` rebuilds it",
            path,
            error,
        )
        return FlatIndex(vectors)


def _hit(row: Any, score: float) -> Hit:
    return Hit(**_fields(row), score=score)


def _item(row: Any) -> Item:
    return Item(**_fields(row))


def _fields(row: Any) -> dict[str, Any]:
    """A stored row as Item fields: its key is a path or a URL."""
    remote = is_url(row.key)
    return {
        "id": row.id,
        "path": None if remote else row.key,
        "url": row.key if remote else None,
        "width": row.width,
        "height": row.height,
        "metadata": row.metadata,
    }


def _stat(locator: str) -> tuple[int | None, float | None]:
    if is_url(locator):
        return None, None
    try:
        stat = os.stat(locator)
    except OSError:
        return None, None
    return stat.st_size, stat.st_mtime


def _id_of(value: Any) -> int:
    """An id given by a caller: any integer, but not a boolean (True is no id)."""
    if isinstance(value, bool):
        raise TypeError("a boolean is no id")
    return int(value)


def _unit_vector(value: Any, dim: int) -> np.ndarray:
    try:
        with np.errstate(over="ignore"):  # huge numbers become inf, refused below
            vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadInputError("a vector query must be a list of numbers") from None
    if vector.ndim != 1 or len(vector) != dim:
        raise ModelMismatchError(
            f"the query vector has shape {vector.shape}; this collection holds {dim}-d vectors"
        )
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise BadInputError("a vector query must be finite and non-zero")
    return vector / norm


__all__ = ["Collection", "LookalikeError", "Stats"]
