"""A backend whose rows, vectors, tags and index live in a Milvus server (``pymilvus``).

One Milvus collection holds one lookalike collection: the primary key is lookalike's own
dense id (INT64, ``auto_id`` off), beside the unit vector, the row's fields (key,
content_hash, width, height, bytes, mtime, added_at, the deleted / removed / stale flags),
its metadata as a JSON field and its tags as an ARRAY of VARCHAR. A deleted row stays, with
its flag set, so ``rows(ids)`` still finds it and ``removed_by_key`` remembers what a user
removed; searches and lookups skip it by expression.

The collection folder keeps the manifest (``"backend": "milvus"``, the server's URI and the
Milvus collection's name), the single-writer lock (a file lock, as for the embedded backend)
and ``milvus-state.json``: how many ids were handed out (``count``), the index in use, the
roots, and what an interrupted write must finish or undo. A write inserts rows past
``count`` and only then commits the new count to that file; every read asks for
``id < count``, so a batch is visible whole or not at all, and the next writer deletes the
rows of a write that died before its commit.

Filters become Milvus expressions (``{"split": "train"}`` -> ``metadata["split"] == "train"``),
each value written as a quoted literal that Milvus' parser reads back exactly; ``None``
matches rows lacking the key (``not exists``; unlike SQLite, a key holding JSON null exists).
Every read uses Strong consistency, so a search right after an add sees it.

Index: ``FLAT`` (exact) below :data:`FLAT_LIMIT` live rows; ``HNSW`` (``M`` 16,
``efConstruction`` 200, searched with ``ef`` = max(512, 2k)) above it, or on request
``IVF_SQ8`` (``nlist`` 4 sqrt(n), ``nprobe`` 128). Milvus indexes new segments itself;
``rebuild_index`` drops and creates the index, during which searches fail (Milvus releases
the collection to change its index).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..errors import BadInputError, CollectionError, NotFoundError
from ..layout import write_atomic
from ..store import (
    LOCK_TIMEOUT_S,
    MAX_FILTER_KEYS,
    NewRow,
    Row,
    _filter_value,
    _json_path,
    writer_lock,
)

STATE = "milvus-state.json"
FLAT_LIMIT = 100_000  # live rows past which `auto` trades exact search for HNSW
INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")
HNSW_BUILD = {"M": 16, "efConstruction": 200}
HNSW_MIN_EF = 512  # searched with ef = max(this, 2k): recall@20 0.955 in bench/RESULTS.md
IVF_NPROBE = 128
MAX_TOPK = 16_384  # Milvus' own cap on a search's k
MAX_KEY_BYTES = 65_535  # VARCHAR cap
MAX_TAGS = 4096  # ARRAY capacity (Milvus' cap)
MAX_TAG_BYTES = 1024
INSERT_BATCH = 2_000  # rows per insert: ~4 MB at 512-d, well inside gRPC's message limit
ID_BATCH = 1_000  # ids per `id in [...]` expression
SCAN_STEP = 10_000  # ids per range query of a scan (Milvus returns at most 16384 rows)
CONNECT_TIMEOUT_S = 10.0
TOKEN_ENV = "LOOKALIKE_MILVUS_TOKEN"  # user:password or API key, kept out of the manifest

ROW_FIELDS = [
    "id",
    "key",
    "content_hash",
    "width",
    "height",
    "bytes",
    "mtime",
    "has_mtime",
    "added_at",
    "deleted",
    "removed",
    "stale",
    "metadata",
    "tags",
]
ALL_FIELDS = [*ROW_FIELDS, "vector"]
LIVE = "deleted == false"
SEARCHABLE = "deleted == false and stale == false"

log = logging.getLogger("lookalike")
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # its errors come back as ours


def _pymilvus() -> Any:
    """The ``pymilvus`` module, or a clear error naming the extra that installs it."""
    try:
        with warnings.catch_warnings():  # pymilvus 2.3 imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import pymilvus
    except ImportError as error:
        raise CollectionError(
            f"the Milvus backend needs pymilvus ({error}): pip install 'lookalike[milvus]'"
        ) from error
    return pymilvus


@contextmanager
def _milvus_errors(uri: str, doing: str) -> Iterator[None]:
    """Milvus and connection failures as CollectionError naming the server and the step."""
    pymilvus = _pymilvus()
    try:
        yield
    except pymilvus.exceptions.MilvusException as error:
        message = getattr(error, "message", None) or str(error)
        raise CollectionError(f"Milvus at {uri} failed to {doing}: {message}") from error


# -- expressions ---------------------------------------------------------------------------


def literal(value: str) -> str:
    """A string as a Milvus expression literal: double-quoted, with ``"``, ``\\`` and control
    characters escaped as its parser (Go's strconv.Unquote) reads them back."""
    if not isinstance(value, str):
        raise BadInputError(f"expected a string, got {value!r:.40}")
    if "\0" in value:
        raise BadInputError(f"{value!r:.40} holds a NUL character")
    return json.dumps(value, ensure_ascii=False)


def _value(name: str, value: Any) -> str:
    """A filter value as an expression literal (checked as the embedded backend checks it)."""
    _filter_value(name, value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return literal(value)


def filter_expression(filter: Mapping[str, Any]) -> str:
    """Metadata equalities as a Milvus expression over the ``metadata`` JSON field."""
    if len(filter) > MAX_FILTER_KEYS:
        raise BadInputError(
            f"a filter may hold at most {MAX_FILTER_KEYS} keys; this one has {len(filter)}"
        )
    clauses = []
    for name, value in filter.items():
        _json_path(name)  # a plain metadata key, as the embedded backend requires
        field = f"metadata[{literal(name)}]"
        clauses.append(
            f"(not exists {field})" if value is None else f"{field} == {_value(name, value)}"
        )
    return " and ".join(clauses)


def _id_list(ids: Iterable[int]) -> str:
    return "[" + ",".join(str(int(i)) for i in ids) + "]"


def _literal_list(values: Iterable[str]) -> str:
    return "[" + ",".join(literal(v) for v in values) + "]"


def _search_expression(
    count: int,
    filter: Mapping[str, Any] | None,
    exclude_ids: Sequence[int],
    tags: Sequence[str],
    exclude_tags: Sequence[str],
) -> str:
    clauses = [f"id < {count}", SEARCHABLE]
    if filter:
        clauses.append(filter_expression(filter))
    if exclude_ids:
        clauses.append(f"id not in {_id_list(exclude_ids)}")
    if tags:
        clauses.append(f"array_contains_all(tags, {_literal_list(tags)})")
    if exclude_tags:
        clauses.append(f"not array_contains_any(tags, {_literal_list(exclude_tags)})")
    return " and ".join(clauses)


# -- index choice ---------------------------------------------------------------------------


def index_params(kind: str, live: int, nlist: int | None = None) -> dict[str, Any]:
    """Milvus index parameters for a lookalike index kind at ``live`` rows."""
    if kind not in INDEX_KINDS:
        raise BadInputError(f"index kind must be one of {', '.join(INDEX_KINDS)}")
    if kind == "auto":
        kind = "hnsw" if live >= FLAT_LIMIT else "flat"
    if kind == "flat":
        return {"index_type": "FLAT", "metric_type": "IP", "params": {}}
    if kind == "hnsw":
        return {"index_type": "HNSW", "metric_type": "IP", "params": dict(HNSW_BUILD)}
    lists = nlist or min(65_536, max(16, int(4 * math.sqrt(max(live, 1)))))
    return {"index_type": "IVF_SQ8", "metric_type": "IP", "params": {"nlist": int(lists)}}


KIND_OF = {"FLAT": "flat", "HNSW": "hnsw", "IVF_SQ8": "ivf"}


def search_params(index_type: str, k: int) -> dict[str, Any]:
    """How a search of k results runs on an index of this Milvus type."""
    if index_type == "HNSW":
        return {"metric_type": "IP", "params": {"ef": max(HNSW_MIN_EF, 2 * k)}}
    if index_type.startswith("IVF"):
        return {"metric_type": "IP", "params": {"nprobe": IVF_NPROBE}}
    return {"metric_type": "IP", "params": {}}


# -- creating one ------------------------------------------------------------------------------

LOAD_TIMEOUT_S = 600.0


def load(collection: Any) -> None:
    """Load a Milvus collection for search and wait until it is (pymilvus' own wait polls
    every 0.5 s; loading a small collection takes a fraction of that)."""
    pymilvus = _pymilvus()
    collection.load(_async=True)
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    using = collection._using
    while pymilvus.utility.loading_progress(collection.name, using=using).get(
        "loading_progress"
    ) not in ("100%", 100):
        if time.monotonic() > deadline:
            raise CollectionError(f"Milvus did not load {collection.name} in {LOAD_TIMEOUT_S} s")
        time.sleep(0.02)


def connect(uri: str) -> str:
    """A new pymilvus connection alias to ``uri``; CollectionError when it cannot be reached."""
    parts = urlsplit(uri) if isinstance(uri, str) else None
    if parts is None or parts.scheme not in ("http", "https", "tcp") or not parts.hostname:
        raise BadInputError(f"a Milvus URI looks like http://HOST:19530 (got {uri!r:.80})")
    try:  # a refused port fails now, not after pymilvus' own retries
        port = parts.port or (443 if parts.scheme == "https" else 19530)
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise CollectionError(f"cannot reach Milvus at {uri}: {error}") from error
    pymilvus = _pymilvus()
    alias = f"lookalike-{uuid.uuid4().hex}"
    try:
        pymilvus.connections.connect(
            alias, uri=uri, token=os.environ.get(TOKEN_ENV, ""), timeout=CONNECT_TIMEOUT_S
        )
    except Exception as error:  # pymilvus raises several kinds, grpc's among them
        raise CollectionError(f"cannot reach Milvus at {uri}: {error}") from error
    return alias


def create_collection(uri: str, dim: int, name: str | None = None) -> dict[str, Any]:
    """Make an empty Milvus collection for ``dim``-d vectors, with an exact index, loaded;
    returns the manifest entries that name it."""
    pymilvus = _pymilvus()
    name = name or f"lookalike_{uuid.uuid4().hex}"
    alias = connect(uri)
    dt = pymilvus.DataType
    field = pymilvus.FieldSchema
    schema = pymilvus.CollectionSchema(
        [
            field("id", dt.INT64, is_primary=True, auto_id=False),
            field("vector", dt.FLOAT_VECTOR, dim=dim),
            field("key", dt.VARCHAR, max_length=MAX_KEY_BYTES),
            field("content_hash", dt.VARCHAR, max_length=256),
            field("width", dt.INT64),
            field("height", dt.INT64),
            field("bytes", dt.INT64),
            field("mtime", dt.DOUBLE),
            field("has_mtime", dt.BOOL),
            field("added_at", dt.DOUBLE),
            field("deleted", dt.BOOL),
            field("removed", dt.BOOL),
            field("stale", dt.BOOL),
            field("metadata", dt.JSON),
            field(
                "tags",
                dt.ARRAY,
                element_type=dt.VARCHAR,
                max_capacity=MAX_TAGS,
                max_length=MAX_TAG_BYTES,
            ),
        ],
        description="a lookalike collection",
    )
    try:
        with _milvus_errors(uri, f"create the collection {name}"):
            if pymilvus.utility.has_collection(name, using=alias):
                raise CollectionError(f"Milvus at {uri} already holds a collection named {name}")
            collection = pymilvus.Collection(name, schema, using=alias, consistency_level="Strong")
            collection.create_index("vector", index_params("flat", 0))
            load(collection)
    finally:
        pymilvus.connections.disconnect(alias)
    return {"backend": "milvus", "milvus": {"uri": uri, "collection": name}}


# -- the backend ------------------------------------------------------------------------------


class MilvusBackend:
    """Rows, vectors, tags and index of one collection, in a Milvus collection."""

    kind = "milvus"

    def __init__(self, path: Path, dim: int, settings: Mapping[str, Any]) -> None:
        if not isinstance(settings, Mapping) or not isinstance(settings.get("uri"), str):
            raise CollectionError(f"{path}'s manifest lacks the Milvus server's uri")
        self.path = path
        self.dim = dim
        self.uri: str = settings["uri"]
        self.name = str(settings.get("collection", ""))
        self.auto_index = True  # switch to HNSW as the collection grows
        self._pymilvus = _pymilvus()
        self._alias = connect(self.uri)
        with self._errors(f"open the collection {self.name}"):
            if not self._pymilvus.utility.has_collection(self.name, using=self._alias):
                self._pymilvus.connections.disconnect(self._alias)
                raise CollectionError(
                    f"Milvus at {self.uri} has no collection {self.name!r}, which {path} uses: "
                    "was it dropped, or is this another server?"
                )
            self._collection = self._pymilvus.Collection(self.name, using=self._alias)
            load(self._collection)
        self._mutex = threading.RLock()  # guards the cached state
        self._writer = threading.RLock()  # orders this process's writers; the flock the rest
        self._depth = 0
        self._session = 0  # Milvus timestamp of this process's latest write
        self._state: dict[str, Any] = {}
        self._state_stamp: tuple[int, int, int] | None = None
        self.refresh()

    def _errors(self, doing: str) -> Any:
        return _milvus_errors(self.uri, doing)

    # -- state file ------------------------------------------------------------------------

    def refresh(self) -> None:
        """See :class:`~lookalike.backends.Backend`."""
        target = self.path / STATE
        with self._mutex:
            try:
                stat = target.stat()
            except FileNotFoundError:
                self._state, self._state_stamp = self._new_state(), None
                return
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if stamp == self._state_stamp:
                return
            try:
                state = json.loads(target.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise CollectionError(f"cannot read {target}: {error}") from error
            self._state, self._state_stamp = {**self._new_state(), **state}, stamp

    def _new_state(self) -> dict[str, Any]:
        return {
            "count": 0,
            "pending": 0,
            "replacing": [],
            "roots": [],
            "index": "FLAT",
            "written": 0,  # Milvus timestamp of the last committed write
        }

    def _save(self, **changes: Any) -> None:
        """Commit changes to the state file (under the writer lock)."""
        self._require_lock()
        with self._mutex:
            state = {**self._state, "written": self._written(), **changes}
            write_atomic(self.path / STATE, json.dumps(state, indent=1) + "\n")
            self._state, self._state_stamp = state, None
        self.refresh()

    def _consistency(self) -> dict[str, Any]:
        """Read at the timestamp of the last committed write (by any process): Milvus waits
        until it sees that write, as Strong consistency would, but without waiting for its
        next time tick (200 ms) once it does."""
        return {"consistency_level": "Customized", "guarantee_timestamp": self._written()}

    def _written(self) -> int:
        return max(int(self._current()["written"]), self._session)

    def _wrote(self, result: Any) -> None:
        """Remember a write's Milvus timestamp, for this writer's next reads and the commit."""
        self._session = max(self._session, int(getattr(result, "timestamp", 0) or 0))

    def _current(self) -> dict[str, Any]:
        self.refresh()
        return self._state

    # -- reads -----------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """See :class:`~lookalike.backends.Backend`."""
        return int(self._current()["count"])

    def _count_where(self, expr: str) -> int:
        with self._errors("count rows"):
            found = self._collection.query(
                f"id < {self.count} and {expr}",
                output_fields=["count(*)"],
                **self._consistency(),
            )
        return int(found[0]["count(*)"]) if found else 0

    def live_count(self) -> int:
        """See :class:`~lookalike.backends.Backend`."""
        return self._count_where(SEARCHABLE)

    def deleted_count(self) -> int:
        """See :class:`~lookalike.backends.Backend`."""
        return self.count - self.live_count()

    def _query(self, expr: str, fields: Sequence[str], limit: int | None = None) -> list[dict]:
        """Entities of committed rows matching ``expr``."""
        options = {"limit": limit} if limit else {}
        with self._errors("read rows"):
            return self._collection.query(
                f"id < {self.count} and ({expr})",
                output_fields=list(fields),
                **self._consistency(),
                **options,
            )

    def _by_ids(self, ids: Sequence[int], fields: Sequence[str]) -> dict[int, dict]:
        out: dict[int, dict] = {}
        wanted = sorted({int(i) for i in ids})
        for start in range(0, len(wanted), ID_BATCH):
            for entity in self._query(
                f"id in {_id_list(wanted[start : start + ID_BATCH])}", fields
            ):
                out[int(entity["id"])] = entity
        return out

    def _scan(self, expr: str, fields: Sequence[str]) -> Iterator[dict]:
        """Entities matching ``expr`` in id order, a range of ids per query."""
        count = self.count
        for start in range(0, count, SCAN_STEP):
            found = self._query(f"id >= {start} and id < {start + SCAN_STEP} and {expr}", fields)
            yield from sorted(found, key=lambda entity: int(entity["id"]))

    def rows(self, ids: Sequence[int]) -> dict[int, Row]:
        """See :class:`~lookalike.backends.Backend`."""
        found = self._by_ids(ids, ROW_FIELDS)
        return {i: _row(entity) for i, entity in found.items()}

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """See :class:`~lookalike.backends.Backend`."""
        ids = [int(i) for i in ids]
        found = self._by_ids(ids, ["id", "vector", "deleted", "stale"])
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for position, i in enumerate(ids):
            entity = found.get(i)
            if entity is None or entity["deleted"]:
                raise NotFoundError(f"no image with id {i}")
            if entity["stale"]:
                raise NotFoundError(f"the vector of image {i} waits to be embedded again")
            out[position] = entity["vector"]
        return out

    def _one(self, expr: str) -> Row | None:
        found = self._query(expr, ROW_FIELDS, limit=1)
        return _row(found[0]) if found else None

    def live_by_key(self, key: str) -> Row | None:
        """See :class:`~lookalike.backends.Backend`."""
        return self._one(f"key == {literal(key)} and {LIVE}")

    def live_by_hash(self, content_hash: str) -> Row | None:
        """See :class:`~lookalike.backends.Backend`."""
        return self._one(f"content_hash == {literal(content_hash)} and {SEARCHABLE}")

    def live_by_keys(self, keys: Sequence[str]) -> dict[str, Row]:
        """See :class:`~lookalike.backends.Backend`."""
        out: dict[str, Row] = {}
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), ID_BATCH):
            chunk = _literal_list(keys[start : start + ID_BATCH])
            for entity in self._query(f"key in {chunk} and {LIVE}", ROW_FIELDS):
                out[entity["key"]] = _row(entity)
        return out

    def removed_by_key(self, key: str) -> Row | None:
        """See :class:`~lookalike.backends.Backend`."""
        found = self._query(f"key == {literal(key)} and removed == true", ROW_FIELDS)
        return _row(max(found, key=lambda e: int(e["id"]))) if found else None

    def stale_rows(self) -> list[Row]:
        """See :class:`~lookalike.backends.Backend`."""
        return [_row(e) for e in self._scan(f"{LIVE} and stale == true", ROW_FIELDS)]

    def iter_live(self) -> Iterator[Row]:
        """See :class:`~lookalike.backends.Backend`."""
        return (_row(entity) for entity in self._scan(LIVE, ROW_FIELDS))

    def metadata_keys(self) -> list[str]:
        """See :class:`~lookalike.backends.Backend`."""
        keys: set[str] = set()
        for entity in self._scan(LIVE, ["id", "metadata"]):
            keys.update(entity["metadata"] or {})
        return sorted(keys)

    def roots(self) -> list[str]:
        """See :class:`~lookalike.backends.Backend`."""
        return sorted(self._current()["roots"])

    @property
    def index_kind(self) -> str:
        """See :class:`~lookalike.backends.Backend`."""
        return KIND_OF.get(self._current()["index"], self._current()["index"].lower())

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
        """See :class:`~lookalike.backends.Backend`. Milvus returns at most 16384 results
        a query; deeper slots stay empty, as do results below ``min_score``."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        state = self._current()
        expr = _search_expression(
            int(state["count"]), filter, sorted(set(map(int, exclude_ids))), tags, exclude_tags
        )
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if not len(queries) or not state["count"]:
            return scores, ids
        limit = min(k, MAX_TOPK)
        with self._errors("search"):
            results = self._collection.search(
                list(queries),
                "vector",
                search_params(state["index"], limit),
                limit,
                expr=expr,
                output_fields=[],
                **self._consistency(),
            )
        for row, hits in enumerate(results):
            found = list(zip(hits.ids, hits.distances, strict=True))[:k]
            if min_score is not None:
                found = [(i, score) for i, score in found if score >= min_score]
            for slot, (i, score) in enumerate(found):
                ids[row, slot], scores[row, slot] = int(i), float(score)
        return scores, ids

    def allowed_ids(
        self,
        *,
        filter: Mapping[str, Any] | None = None,
        exclude_ids: Iterable[int] = (),
        tags: Sequence[str] = (),
        exclude_tags: Sequence[str] = (),
    ) -> np.ndarray:
        """See :class:`~lookalike.backends.Backend`."""
        state = self._current()
        expr = _search_expression(
            int(state["count"]), filter, sorted(set(map(int, exclude_ids))), tags, exclude_tags
        )
        ids = [int(entity["id"]) for entity in self._scan(expr, ["id"])]
        return np.asarray(ids, dtype=np.int64)

    def content_copies(self) -> list[list[int]]:
        """See :class:`~lookalike.backends.Backend`."""
        by_hash: dict[str, list[int]] = {}
        for entity in self._scan(LIVE, ["id", "content_hash"]):
            by_hash.setdefault(entity["content_hash"], []).append(int(entity["id"]))
        return [sorted(ids) for ids in by_hash.values() if len(ids) > 1]

    # -- tags --------------------------------------------------------------------------------

    def tags_of(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """The sorted tags of each of these ids that has any."""
        found = self._by_ids(ids, ["id", "tags"])
        return {i: sorted(e["tags"]) for i, e in found.items() if e["tags"]}

    def tagged(self, tag: str) -> list[int]:
        """Ids of live rows holding ``tag``, in id order."""
        expr = f"array_contains(tags, {literal(tag)}) and {LIVE}"
        return [int(e["id"]) for e in self._scan(expr, ["id"])]

    def tag_counts(self) -> dict[str, int]:
        """Every tag live rows hold, and how many hold it."""
        counts: dict[str, int] = {}
        for entity in self._scan(LIVE, ["id", "tags"]):
            for tag in entity["tags"] or ():
                counts[tag] = counts.get(tag, 0) + 1
        return dict(sorted(counts.items()))

    def tag(self, ids: Sequence[int], tag: str) -> int:
        """Give live rows (ids checked by the caller) a tag; how many did not have it yet."""
        _check_tag(tag)

        def give(entity: dict) -> bool:
            if entity["deleted"] or tag in entity["tags"]:
                return False
            if len(entity["tags"]) >= MAX_TAGS:
                raise BadInputError(f"image {entity['id']} holds {MAX_TAGS} tags, the most")
            entity["tags"] = [*entity["tags"], tag]
            return True

        return self._update(ids, give)

    def untag(self, ids: Sequence[int], tag: str) -> int:
        """Take a tag from rows; how many had it."""

        def take(entity: dict) -> bool:
            if tag not in entity["tags"]:
                return False
            entity["tags"] = [t for t in entity["tags"] if t != tag]
            return True

        return self._update(ids, take)

    # -- writes ------------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[MilvusBackend]:
        """See :class:`~lookalike.backends.Backend`: a file lock in the collection folder, so
        writers in other processes wait, as for the embedded backend."""
        if not self._writer.acquire(timeout=LOCK_TIMEOUT_S):
            raise CollectionError(
                f"{self.path} is being written by another writer (waited "
                f"{LOCK_TIMEOUT_S:.0f} s); try again when it has finished"
            )
        try:
            self._depth += 1
            if self._depth > 1:
                yield self
                return
            with writer_lock(self.path):
                self._settle()
                yield self
        finally:
            self._depth -= 1
            self._writer.release()

    def _require_lock(self) -> None:
        if self._depth == 0:
            raise CollectionError("writing needs the collection's writer lock")

    def _settle(self) -> None:
        """Undo the inserts of a write that died before its commit; finish its deletions."""
        self._state_stamp = None
        state = self._current()
        count, pending = int(state["count"]), int(state["pending"])
        if pending > count:
            with self._errors("drop an interrupted write's rows"):
                self._wrote(self._collection.delete(f"id >= {count}"))
        if state["replacing"]:
            self._mark(state["replacing"], removed=False)
        if pending > count or state["replacing"]:
            self._save(pending=count, replacing=[])

    def add(self, rows: Sequence[NewRow], replaces: Sequence[int] = ()) -> list[int]:
        """See :class:`~lookalike.backends.Backend`."""
        self._require_lock()
        if not rows:
            if replaces:
                self._mark(replaces, removed=False)
            return []
        for row in rows:  # all checked before any is written
            _check_row(row, self.dim)
        start = self.count
        self._save(pending=start + len(rows))  # how far an interrupted write may reach
        now = time.time()
        with self._errors("insert rows"):
            for offset in range(0, len(rows), INSERT_BATCH):  # as entities a batch at a time
                batch = [_entity(row) for row in rows[offset : offset + INSERT_BATCH]]
                for position, entity in enumerate(batch, start + offset):
                    entity["id"], entity["added_at"] = position, now
                self._wrote(self._collection.insert(batch))
        replacing = sorted({int(i) for i in replaces})
        self._save(count=start + len(rows), replacing=replacing)  # the commit
        if replacing:
            self._mark(replacing, removed=False)
            self._save(replacing=[])
        return list(range(start, start + len(rows)))

    def remove(self, ids: Iterable[int]) -> int:
        """See :class:`~lookalike.backends.Backend`."""
        self._require_lock()
        return self._mark(ids, removed=True)

    def _mark(self, ids: Iterable[int], *, removed: bool) -> int:
        """Flag live rows deleted (and removed by a user, losing their tags); how many."""

        def delete(entity: dict) -> bool:
            if entity["deleted"]:
                return False
            entity["deleted"] = True
            if removed:
                entity["removed"], entity["tags"] = True, []
            return True

        return self._update(ids, delete)

    def _update(self, ids: Iterable[int], change: Callable[[dict], bool]) -> int:
        """Apply ``change`` to the rows of ``ids`` and write back those it changed (Milvus
        upserts whole rows, vector included); how many changed."""
        self._require_lock()
        wanted = sorted({int(i) for i in ids})
        changed = 0
        for start in range(0, len(wanted), ID_BATCH):
            found = self._by_ids(wanted[start : start + ID_BATCH], ALL_FIELDS)
            entities = [e for e in found.values() if change(e)]
            if entities:
                with self._errors("update rows"):
                    self._wrote(self._collection.upsert([_plain(e) for e in entities]))
                changed += len(entities)
        if changed:
            self._save()  # commits the write's timestamp, so other processes read past it
        return changed

    def add_roots(self, paths: Iterable[str]) -> None:
        """See :class:`~lookalike.backends.Backend`."""
        with self.writing():
            roots = set(self._current()["roots"]) | set(paths)
            if roots != set(self._state["roots"]):
                self._save(roots=sorted(roots))

    def keep_up(self) -> None:
        """See :class:`~lookalike.backends.Backend`: Milvus indexes new segments itself;
        past :data:`FLAT_LIMIT` live rows an exact index gives way to HNSW."""
        exact = self._current()["index"] == "FLAT"
        if self.auto_index and exact and self.live_count() >= FLAT_LIMIT:
            self.rebuild_index("auto")

    def rebuild_index(self, kind: str = "auto", **options: Any) -> str:
        """See :class:`~lookalike.backends.Backend`. Kinds: ``auto`` (FLAT below
        :data:`FLAT_LIMIT` live rows, else HNSW), ``flat``, ``hnsw``, ``ivf`` (IVF_SQ8;
        option ``nlist``). Other options of the embedded index are ignored."""
        with self.writing():
            params = index_params(kind, self.live_count(), options.get("nlist"))
            with self._errors(f"build a {params['index_type']} index"):
                self._collection.flush()  # seals growing segments, so the index covers all
                self._collection.release()
                self._collection.drop_index()
                self._collection.create_index("vector", params)
                load(self._collection)
            self._save(index=params["index_type"])
        return KIND_OF[params["index_type"]]

    def tune_index(self, queries: np.ndarray | None, target_recall: float) -> float:
        """See :class:`~lookalike.backends.Backend`: not offered; Milvus searches with the
        fixed ``ef`` / ``nprobe`` of :func:`search_params`."""
        raise BadInputError(
            "tuning applies to the embedded index; a Milvus collection searches with fixed "
            f"settings (HNSW ef >= {HNSW_MIN_EF}, IVF_SQ8 nprobe {IVF_NPROBE})"
        )

    def close(self) -> None:
        """See :class:`~lookalike.backends.Backend`."""
        self._pymilvus.connections.disconnect(self._alias)


# -- rows <-> entities --------------------------------------------------------------------------


def _check_tag(tag: str) -> None:
    literal(tag)  # a string without NUL
    if len(tag.encode("utf-8", "surrogatepass")) > MAX_TAG_BYTES:
        raise BadInputError(f"a tag may hold at most {MAX_TAG_BYTES} bytes")


def _check_row(row: NewRow, dim: int) -> None:
    """Refuse a row Milvus would refuse, before anything is written."""
    if np.size(row.vector) != dim:
        raise BadInputError(f"vectors have dimension {np.size(row.vector)}, expected {dim}")
    if len(row.key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise BadInputError(f"{row.key[:60]!r}... is longer than Milvus keeps ({MAX_KEY_BYTES} B)")


def _entity(row: NewRow) -> dict[str, Any]:
    """A new row as a Milvus entity (id and added_at set by the caller)."""
    return {
        "vector": np.asarray(row.vector, dtype=np.float32).reshape(-1).tolist(),
        "key": row.key,
        "content_hash": row.content_hash,
        "width": int(row.width),
        "height": int(row.height),
        "bytes": int(row.bytes),
        "mtime": float(row.mtime) if row.mtime is not None else 0.0,
        "has_mtime": row.mtime is not None,
        "deleted": False,
        "removed": False,
        "stale": False,
        # as the embedded store keeps it: values JSON cannot hold become strings
        "metadata": json.loads(json.dumps(row.metadata, ensure_ascii=False, default=str)),
        "tags": [],
    }


def _plain(entity: dict) -> dict[str, Any]:
    """A queried entity as pymilvus takes it back (numpy scalars as Python numbers)."""
    return {
        **entity,
        "vector": [float(x) for x in entity["vector"]],
        "tags": list(entity["tags"] or []),
    }


def _row(entity: Mapping[str, Any]) -> Row:
    return Row(
        int(entity["id"]),
        entity["key"],
        entity["content_hash"],
        int(entity["width"]),
        int(entity["height"]),
        int(entity["bytes"]),
        float(entity["mtime"]) if entity["has_mtime"] else None,
        dict(entity["metadata"] or {}),
        float(entity["added_at"]),
        bool(entity["deleted"]),
        bool(entity["stale"]),
    )


# -- a local server, for trying it out, tests and benchmarks ----------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


ETCD_CONFIG = """name: default
listen-client-urls: http://127.0.0.1:{client}
advertise-client-urls: http://127.0.0.1:{client}
listen-peer-urls: http://127.0.0.1:{peer}
initial-advertise-peer-urls: http://127.0.0.1:{peer}
initial-cluster: default=http://127.0.0.1:{peer}
"""
SERVER_START_S = 180.0


@contextmanager
def local_server(base_dir: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Run the Milvus standalone server that the ``milvus`` package ships (2.3.x, Linux and
    macOS), with its data under ``base_dir`` (a temporary folder by default), on free local
    ports (its embedded etcd's too, so several can run side by side); yields its URI and
    stops it on exit."""
    try:
        from milvus import MilvusServer, MilvusServerConfig
    except ImportError as error:
        raise CollectionError(
            f"no local Milvus server ({error}): pip install 'milvus>=2.3,<2.4'"
        ) from error
    with tempfile.TemporaryDirectory(prefix="lookalike-milvus-") as scratch:
        base = Path(base_dir or scratch).resolve()
        for attempt in range(1, START_ATTEMPTS + 1):
            # each try on new ports, in a folder of its own: another server starting at the
            # same time may take a port between the probe that found it free and the bind
            server = _server(MilvusServer, MilvusServerConfig, base / f"server-{attempt}")
            try:
                server.start()
                _wait_started(server, base / f"server-{attempt}")
            except CollectionError:
                server.stop()
                if attempt == START_ATTEMPTS:
                    raise
                continue
            try:
                yield f"http://127.0.0.1:{server.listen_port}"
            finally:
                server.stop()
            return


START_ATTEMPTS = 3


def _server(server_class: Any, config_class: Any, base: Path) -> Any:
    """A Milvus server (not started) with its data under ``base``, every port (its embedded
    etcd's included, which the stock config leaves at 2379/2380) a free one."""
    base.mkdir(parents=True, exist_ok=True)
    client, peer = _free_port(), _free_port()
    (base / "etcd.yaml").write_text(ETCD_CONFIG.format(client=client, peer=peer), encoding="utf-8")
    stock = config_class()
    template = Path(stock.template_file).read_text(encoding="utf-8")
    embed = "  use:\n    embed: true"
    if embed not in template:
        raise CollectionError("this milvus package's config template is not the known one")
    (base / "milvus.yaml.template").write_text(
        template.replace(embed, f"  config:\n    path: {base / 'etcd.yaml'}\n{embed}"),
        encoding="utf-8",
    )
    ports = {key: _free_port() for key in stock.configurable_items if key.endswith("_port")}
    config = config_class(template=str(base / "milvus.yaml.template"), **ports)
    config.update(etcd_port=client)
    config.glog_conf_file = stock.glog_conf_file  # set only for the stock template
    server = server_class(config, wait_for_started=False)
    server.set_base_dir(str(base))
    server.webservice_port = _free_port()
    return server


def _wait_started(server: Any, base: Path) -> None:
    """Wait for a started server to answer its health check; fail at once if it exits."""
    import urllib.request

    deadline = time.monotonic() + SERVER_START_S
    health = f"http://127.0.0.1:{server.webservice_port}/healthz"
    while True:
        code = server.server_proc.poll()
        if code is not None:
            raise CollectionError(
                f"the local Milvus server exited at start (code {code}): see {base / 'logs'}"
            )
        try:
            with urllib.request.urlopen(health, timeout=2) as answer:
                if b"OK" in answer.read():
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise CollectionError(f"the local Milvus server did not start in {SERVER_START_S} s")
        time.sleep(0.2)


__all__ = [
    "FLAT_LIMIT",
    "INDEX_KINDS",
    "MilvusBackend",
    "create_collection",
    "filter_expression",
    "literal",
    "local_server",
]
