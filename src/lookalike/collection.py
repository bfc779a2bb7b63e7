"""The public object: one on-disk collection of images, their vectors, and search over them."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import curation
from .adding import ImageAdding
from .allocator import give_back_freed_memory
from .backends import Backend, check_backend, new_backend, open_backend
from .encoders import DEFAULT_MODEL, Encoder, load_encoder
from .errors import (
    BadInputError,
    CollectionError,
    InvalidQueryError,
    LookalikeError,
    ModelMismatchError,
    NotFoundError,
    placing,
)
from .export import Exporting
from .fetch import FetchPolicy, fetch_all, is_url
from .imaging import ImageLimits, decode_image, to_model_input
from .layout import MANIFEST, UPLOADS_DIR
from .manifest import FORMAT_VERSION, new_manifest, read_manifest, write_manifest
from .prepare import content_hash
from .query import Query, QueryPart, batch_queries
from .results import combine, dedupe, hit_of, item_of, unit_vector
from .tags import Tagging
from .types import DuplicateGroup, Hit, Item, MatchCount, Stats

if TYPE_CHECKING:
    from .verify import VerifyReport

log = logging.getLogger("lookalike")
MAX_TUNING_TEXTS = 2000  # text queries embedded to tune on: a sample past this
# a batch's queries searched together: past this, the working memory (candidates, vectors
# to re-rank, rows) grows and stays with the allocator for little more speed (at 1 M x
# 512-d: 3,150 QPS and +3.5 MB at 128; 3,500 QPS and +24 MB at 500)
QUERIES_AT_ONCE = 128
DEPTH_AT_ONCE = QUERIES_AT_ONCE * 21  # results searched for by one part: 128 "more like this"
TRIM_AFTER = 64  # a batch of this many queries hands its freed memory back (~0.5 ms)


class Collection(ImageAdding, Tagging, Exporting):
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
        self.backend: Backend = open_backend(self.path, manifest)

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
        backend: str | None = None,
        uri: str | None = None,
        **options: Any,
    ) -> Collection:
        """Make a new collection at ``path`` whose images are embedded by ``model``.

        ``backend`` chooses where rows, vectors and index live: "embedded" (the default, all
        in the folder) or "milvus" (a Milvus server at ``uri``, e.g. "http://HOST:19530").
        With ``exist_ok``, an existing collection made with the same model is opened instead.
        ``runtime`` ("auto", "torch", "onnx", "int8", ...) and ``threads`` choose how the model
        runs in this process (see :mod:`lookalike.encoders.runtime`); ``open`` takes them too.
        """
        root = Path(path)
        if model.startswith("open_clip:") and model.endswith(".json"):  # a config file, by path
            model = f"open_clip:{Path(model.partition(':')[2]).resolve()}"
        if (root / MANIFEST).exists():
            if not exist_ok:
                raise CollectionError(f"{root} already holds a collection")
            check_backend(root, read_manifest(root), backend, uri)
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
        manifest = new_manifest(encoder.spec, weights_path, encoder.dim)
        manifest.update(new_backend(backend or "embedded", encoder.dim, uri))
        write_manifest(root, manifest)
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
        self.backend.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.backend.live_count()

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

    def rebuild_index(
        self,
        kind: str = "auto",
        *,
        target_recall: float = 0.95,
        nlist: int | None = None,
        memory_budget: int | None = None,
        tune_texts: Sequence[str] = (),
    ) -> str:
        """(Re)build the vector index from the stored vectors; returns the kind in use.

        ``auto`` picks exact search for small collections and a trained IVF index past
        ``lookalike.index.FLAT_LIMIT`` live images; ``ivf`` retrains even a small collection;
        ``flat`` drops any trained index. ``memory_budget`` (bytes; default half the RAM)
        bounds the IVF index's re-rank data: past it, compact codes stand in for the vectors.
        A trained index is tuned to ``target_recall`` on stored images searched as new ones,
        or on ``tune_texts`` when given (see :meth:`tune_index`).
        """
        options: dict[str, Any] = {"target_recall": target_recall, "nlist": nlist}
        options["memory_budget"] = memory_budget
        if tune_texts:
            options["tune_queries"] = self._tuning_vectors(None, tune_texts)
        return self.backend.rebuild_index(kind, **options)

    def tune_index(
        self,
        queries: np.ndarray | None = None,
        *,
        texts: Sequence[str] = (),
        target_recall: float = 0.95,
    ) -> float:
        """Re-tune the trained index's search settings (lists probed, candidates re-ranked)
        to reach ``target_recall`` (recall@20) on searches like the users' own, without
        retraining. The setting kept is the cheapest whose tuning sample shows the target
        with 95% confidence, else the best found; returns its mean recall on that sample.
        ``queries``: query vectors; ``texts``: text queries, embedded here (CLIP texts sit
        apart from image vectors, so image-tuned settings may fall short for them); at most
        2,000 of either are sampled; neither: stored images searched as if new. Takes one
        pass over the vectors.
        """
        return self.backend.tune_index(self._tuning_vectors(queries, texts), target_recall)

    def _tuning_vectors(
        self, queries: np.ndarray | None, texts: Sequence[str]
    ) -> np.ndarray | None:
        if queries is not None and texts:
            raise BadInputError("tune on query vectors or on texts, not both")
        if isinstance(texts, str):
            raise BadInputError("texts must be a list of strings, not one string")
        if not texts:
            return queries
        texts = [Query.build(text=t).parts[0].value for t in texts]  # each checked as a query
        if len(texts) > MAX_TUNING_TEXTS:
            picked = np.random.default_rng(0).choice(len(texts), MAX_TUNING_TEXTS, replace=False)
            texts = [texts[i] for i in sorted(picked)]
        return np.concatenate(
            [self.encoder.encode_texts(texts[i : i + 256]) for i in range(0, len(texts), 256)]
        )

    # -- reads -----------------------------------------------------------------------------

    def get(self, id: int) -> Item:
        """The stored image with this id."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            raise BadInputError("an id must be an integer")
        self.backend.refresh()
        row = self.backend.rows([int(id)]).get(int(id)) if 0 <= id < self.backend.count else None
        if row is None or row.deleted:
            raise NotFoundError(f"no image with id {id}")
        return item_of(row)

    def lookup(self, image: str | os.PathLike[str] | bytes) -> Item | None:
        """The stored image for a path or URL, or holding these exact bytes, if any."""
        if isinstance(image, bytes):
            row = self.backend.live_by_hash(content_hash(image))
        else:
            text = os.fspath(image)
            row = self.backend.live_by_key(text if is_url(text) else str(Path(text).resolve()))
        return item_of(row) if row else None

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of live ids."""
        return self.backend.vectors(ids)

    def embed(
        self, query: Query | Iterable[Mapping[str, Any] | QueryPart] | None = None, **options: Any
    ) -> np.ndarray:
        """The unit query vector of a query (given as to :meth:`search`)."""
        return self._query_vector(Query.build(query, **options))

    def search(
        self, query: Query | Iterable[Mapping[str, Any] | QueryPart] | None = None, **options: Any
    ) -> list[Hit]:
        """The ``k`` stored images most similar to the query, best first.

        ``query`` is a :class:`~lookalike.query.Query`, or the same given as arguments:
        one or several of ``text``, ``image`` (bytes, path or PIL image), ``url``, ``id``
        (one or a list: "more like these"), ``vector``; or ``query``, a list of parts like
        ``{"text": "police car"}, {"id": 7, "weight": -0.5}``. Parts combine as the
        normalised weighted sum of their vectors. ``k`` (default 20); ``filter`` keeps rows
        whose metadata equals each given value; ``exclude_ids`` drops ids (e.g. already
        labeled); ``tags`` keeps rows holding all these tags, ``exclude_tags`` drops rows
        holding any (:meth:`tag`); ids used as queries are left out unless ``include_self``;
        ``dedupe`` (a cosine such as 0.95) drops results nearly identical to a better one;
        ``model`` (a spec) makes a raw vector query fail unless it names the collection's model.
        ``relevant`` / ``irrelevant`` (ids; with or without other parts) rank by a model of
        these marks (relevance feedback), and leave the marked ids out; ``diverse`` (0-1)
        trades relevance for variety among the results (see :mod:`lookalike.curation`).
        """
        return self.search_many([Query.build(query, **options)])[0]

    def search_many(
        self, queries: Iterable[Query | Mapping[str, Any]], **options: Any
    ) -> list[list[Hit]]:
        """The results of several searches, in their order. Each is a
        :class:`~lookalike.query.Query` (taken as it is) or a mapping of :meth:`search`'s
        arguments, to which ``options`` (``k=``, ``filter=``, ...) add those it does not set.

        Similarity searches that share their restrictions (filter, tags, excluded ids) and
        their k go through the index in one batched call, and every result's rows are read
        at once: a batch costs far less than as many :meth:`search` calls, and answers the
        same.
        """
        built = batch_queries(queries, options)
        answers: list[list[Hit]] = []
        for chunk in _parts(built):
            ranked = self._ranked(chunk, first=len(answers), batched=len(built) > 1)
            found = [self._picked(query, pool) for query, pool in zip(chunk, ranked, strict=True)]
            rows = self.backend.rows(sorted({i for hits in found for i, _ in hits}))
            answers += [[hit_of(rows[i], score) for i, score in hits] for hits in found]
        if len(built) >= TRIM_AFTER:
            give_back_freed_memory()
        return answers

    def _ranked(
        self, queries: list[Query], *, first: int = 0, batched: bool = False
    ) -> list[list[tuple[int, float]]]:
        """Each query's pool of (id, score), best first, before dedupe and diversity; an
        error names its query's place in the batch (``first`` is the first one's).

        Cosine queries sharing their restrictions and depth search together, so a batch
        answers as its queries one at a time. The ids a query searches by are dropped from
        its own results after the search (asking that many more), not masked in it: "more
        like this" queries batch too, and none builds a mask of every id."""
        pools: list[list[tuple[int, float]]] = [[] for _ in queries]
        vectors: dict[int, np.ndarray] = {}
        together: dict[str, list[int]] = {}
        for n, query in enumerate(queries):
            with placing(f"query {first + n} of the batch" if batched else None):
                if query.relevant or query.irrelevant:  # a fitted scorer: a pool of its own
                    search, scorer = self._restricted_search(query), self._scorer(query)
                    depth = _pool_depth(query)
                    vectors_of = self.backend.vectors
                    pools[n] = curation.ranked(scorer, query.k, depth, search, vectors_of)
                    continue
                vectors[n] = self._query_vector(query)
            # the same restrictions and depth: what one batched search must share
            shared = [self._restrictions(query, own_ids=False), _searched_depth(query)]
            together.setdefault(json.dumps(shared, sort_keys=True, default=repr), []).append(n)
        for members in together.values():
            lead = queries[members[0]]
            scores, ids = self.backend.search(
                np.stack([vectors[n] for n in members]).astype(np.float32),
                _searched_depth(lead),
                **self._restrictions(lead, own_ids=False),
            )
            for row, n in enumerate(members):
                own = set(queries[n].query_ids)
                pool = [
                    (int(i), float(s))
                    for i, s in zip(ids[row], scores[row], strict=True)
                    if i >= 0 and int(i) not in own
                ]
                pools[n] = pool[: _pool_depth(queries[n])]
        return pools

    def _picked(self, query: Query, found: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """The k results of a ranked pool: near-duplicates dropped, then diversified."""
        if query.dedupe:
            found = dedupe(found, query.dedupe, self.backend.vectors, len(found))
        if query.diverse:
            found = curation.diversify(found, self.backend.vectors, query.k, query.diverse)
        return found[: query.k]

    def count(
        self,
        query: Query | Iterable[Mapping[str, Any] | QueryPart] | None = None,
        *,
        min_score: float,
        exact_limit: int = curation.EXACT_LIMIT,
        sample_size: int = curation.COUNT_SAMPLE,
        **options: Any,
    ) -> MatchCount:
        """How many rows score at least ``min_score`` for a query given as to :meth:`search`
        (its ``filter``, exclusions and marks apply; ``k``, ``dedupe`` and ``diverse`` do not).

        Up to ``exact_limit`` rows are all scored (``exact``); past it, a uniform sample of
        ``sample_size`` is, and the estimate comes with a 95 % Wilson interval (``low``,
        ``high``). Scores are
        cosines, or with relevance feedback on both sides the model's probability.
        """
        if not _is_score(min_score):
            raise InvalidQueryError(
                f"min_score must be a number from -1 to 1 (got {min_score!r:.40})"
            )
        for name, value in (("exact_limit", exact_limit), ("sample_size", sample_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadInputError(f"{name} must be a positive integer")
        query = Query.build(query, **options)
        scorer = self._scorer(query)
        allowed = self.backend.allowed_ids(**self._restrictions(query))
        return curation.count_matching(
            scorer, allowed, self.backend.vectors, float(min_score), exact_limit, sample_size
        )

    def _restrictions(self, query: Query, *, own_ids: bool = True) -> dict[str, Any]:
        """Which rows a query's results may hold, as ``Backend.search`` takes it: its filter,
        and its exclusions, marked ids and (with ``own_ids``) the ids it searches by left out."""
        own = query.query_ids if own_ids else []
        left_out = [*query.exclude_ids, *own, *query.relevant, *query.irrelevant]
        return {
            "filter": query.filter,
            "exclude_ids": left_out,
            "tags": query.tags,
            "exclude_tags": query.exclude_tags,
        }

    def _restricted_search(self, query: Query) -> curation.SearchFn:
        restrictions = self._restrictions(query)
        return lambda vectors, depth: self.backend.search(vectors, depth, **restrictions)

    def _scorer(self, query: Query) -> curation.Scorer:
        """How a query ranks rows: cosine to its vector, or a model of its relevance marks."""
        query_vector = self._query_vector(query) if query.parts else None
        if not query.relevant and not query.irrelevant:
            assert query_vector is not None  # a query without marks has parts
            return curation.Scorer(query_vector)
        self.backend.refresh()
        marked = curation.marked_vectors(self.backend, [*query.relevant, *query.irrelevant])
        relevant, irrelevant = marked[: len(query.relevant)], marked[len(query.relevant) :]
        leave_out = [*query.relevant, *query.irrelevant]
        return curation.feedback_scorer(
            query_vector,
            relevant,
            irrelevant,
            lambda n: curation.background(self.backend, n, leave_out),
        )

    def _query_vector(self, query: Query) -> np.ndarray:
        dim = self._check_model(query.model)
        return combine(self._fetch_url_parts(list(query.parts)), self._part_vector, dim)

    def _check_model(self, model: str | None) -> int:
        """The query vectors' dimension, once a query naming a model is found to fit."""
        if model is not None and model != self.model:
            raise ModelMismatchError(f"the query is for {model}; this collection uses {self.model}")
        return self.dim

    def _part_vector(self, part: QueryPart) -> np.ndarray:
        if part.kind == "text":
            return self.encoder.encode_texts([part.value])[0]
        if part.kind == "id":
            return self.vectors([part.value])[0]
        if part.kind == "vector":
            return unit_vector(part.value, self.dim)
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

    def duplicates(
        self,
        threshold: float = 0.95,
        *,
        exact: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[DuplicateGroup]:
        """Groups of copies across the collection, largest first, each with a suggested
        ``keeper`` (most pixels, then bytes, then lowest id): images of one content hash, and
        unless ``exact``, images whose vectors score at least ``threshold`` (a cosine in
        (0, 1]). ``progress(done, total)`` follows the search (see :mod:`lookalike.duplicates`).
        """
        from .duplicates import find_duplicates

        return find_duplicates(self.backend, threshold, exact=exact, progress=progress)

    def stats(self) -> Stats:
        """Counts, model and size on disk."""
        self.backend.refresh()
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return Stats(
            str(self.path),
            self.backend.live_count(),
            self.backend.deleted_count(),
            self.model,
            self.weights,
            self.dim,
            self.backend.index_kind,
            size,
            FORMAT_VERSION,
        )

    def verify(self, *, repair: bool = False) -> VerifyReport:
        """Check rows, vectors, index and files agree; with ``repair``, fix what can be fixed
        without losing rows or vectors (see :func:`lookalike.verify.verify_path` for a
        collection whose database is too damaged to open)."""
        from .verify import verify

        return verify(self.backend, repair=repair)  # type: ignore[arg-type]

    def items(self) -> Iterable[Item]:
        """Every stored image in id order."""
        return (item_of(row) for row in self.backend.iter_live())

    def roots(self) -> list[str]:
        """Folders the collection's files were indexed from (plus its uploads)."""
        return [*self.backend.roots(), str((self.path / UPLOADS_DIR).resolve())]


def _pool_depth(query: Query) -> int:
    return curation.pool_depth(query.k, bool(query.dedupe), query.diverse)


def _parts(queries: list[Query]) -> Iterator[list[Query]]:
    """A batch in parts of at most ``QUERIES_AT_ONCE`` queries and ``DEPTH_AT_ONCE`` results
    searched for: a few deep queries (k in the thousands, or diverse) go in parts of their own."""
    part: list[Query] = []
    depth = 0
    for query in queries:
        wanted = _searched_depth(query)
        if part and (len(part) == QUERIES_AT_ONCE or depth + wanted > DEPTH_AT_ONCE):
            yield part
            part, depth = [], 0
        part.append(query)
        depth += wanted
    if part:
        yield part


def _searched_depth(query: Query) -> int:
    """How deep to search for a pool once the ids searched by are dropped from it."""
    return _pool_depth(query) + len(set(query.query_ids))


def _is_score(value: Any) -> bool:
    return bool(
        isinstance(value, (int, float, np.floating))
        and not isinstance(value, bool)
        and -1 <= value <= 1  # NaN fails this too
    )


__all__ = ["Collection", "LookalikeError", "Stats"]
