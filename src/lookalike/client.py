"""The HTTP API as Python calls: ``Client`` (sync) and ``AsyncClient``.

Needs only httpx: a client install pulls in no torch, Faiss or FastAPI.

>>> c = Client("http://127.0.0.1:8000")                   # doctest: +SKIP
>>> c.search("photos", text="police car", k=20)           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from ._version import __version__
from .errors import BadInputError, LookalikeError
from .query import Query, batch_queries, image_bytes
from .types import DuplicateGroup, Hit, IngestReport, Item, MatchCount

DEFAULT_TIMEOUT = 30.0
RETRIES = 2  # on connection errors only: a request the server may have run is never repeated


class APIError(LookalikeError):
    """The server answered with an error: ``status`` (HTTP), ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status = status
        self.code = code
        self.message = message


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200] or response.reason_phrase
    raise APIError(response.status_code, code, message)


def _absolute(base: httpx.URL, url: str | None) -> str | None:
    return str(base.join(url)) if url else None


def _hits(base: httpx.URL, payload: dict[str, Any]) -> list[Hit]:
    return [_hit(base, r) for r in payload["results"]]


def _hit_lists(base: httpx.URL, payload: dict[str, Any]) -> list[list[Hit]]:
    return [[_hit(base, r) for r in hits] for hits in payload["results"]]


def _hit(base: httpx.URL, r: dict[str, Any]) -> Hit:
    return Hit(
        id=r["id"],
        score=r["score"],
        url=_absolute(base, r.get("url")),
        width=r["width"],
        height=r["height"],
        metadata=r.get("metadata") or {},
    )


def _item(base: httpx.URL, payload: dict[str, Any]) -> Item:
    return Item(
        id=payload["id"],
        url=_absolute(base, payload.get("url")),
        width=payload["width"],
        height=payload["height"],
        metadata=payload.get("metadata") or {},
    )


def _add_request(
    images: Sequence[Any], metadata: Sequence[Mapping[str, Any] | None] | None
) -> dict[str, Any]:
    if images and all(
        isinstance(i, str) and i.lower().startswith(("http://", "https://")) for i in images
    ):
        return {
            "json": {
                "urls": list(images),
                "metadata": [dict(m or {}) for m in metadata] if metadata else None,
            }
        }
    files = [
        (
            "files",
            (Path(i).name if isinstance(i, (str, os.PathLike)) else f"image{n}", image_bytes(i)),
        )
        for n, i in enumerate(images)
    ]
    data = {"metadata": json.dumps([dict(m or {}) for m in metadata])} if metadata else {}
    return {"files": files, "data": data}


T = TypeVar("T")
HttpClient = TypeVar("HttpClient", httpx.Client, httpx.AsyncClient)


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API call: the request to send and how to read its answer."""

    method: str
    path: str
    read: Callable[[httpx.URL, Any], T]
    send: dict[str, Any] = field(default_factory=dict)  # httpx keyword arguments


def _search(collection: str, query: Any, options: dict[str, Any]) -> _Call[list[Hit]]:
    body = Query.build(query, **options).to_json()
    return _Call("POST", f"/v1/collections/{collection}/search", _hits, {"json": body})


SEARCHES_PER_REQUEST = 100  # a server's --max-batch by default


def _search_batches(
    collection: str, queries: Iterable[Any], options: dict[str, Any], batch_size: int
) -> list[_Call[list[list[Hit]]]]:
    """The requests of a batch of searches: ``batch_size`` searches each, none when empty."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError(f"batch_size must be a positive integer, not {batch_size!r}")
    searches = [query.to_json() for query in batch_queries(queries, options)]
    path = f"/v1/collections/{collection}/search/batch"
    return [
        _Call("POST", path, _hit_lists, {"json": {"searches": searches[i : i + batch_size]}})
        for i in range(0, len(searches), batch_size)
    ]


def _count(
    collection: str, query: Any, min_score: float, options: dict[str, Any]
) -> _Call[MatchCount]:
    body = {**Query.build(query, **options).to_json(), "min_score": min_score}
    return _Call("POST", f"/v1/collections/{collection}/count", _match_count, {"json": body})


def _match_count(base: httpx.URL, payload: dict[str, Any]) -> MatchCount:
    return MatchCount(**{f: payload[f] for f in MatchCount.__dataclass_fields__})


def _get(collection: str, id: int) -> _Call[Item]:
    return _Call("GET", f"/v1/collections/{collection}/items/{int(id)}", _item)


def _add(
    collection: str, images: Sequence[Any], metadata: Sequence[Mapping[str, Any] | None] | None
) -> _Call[IngestReport]:
    send = _add_request(images, metadata)
    return _Call("POST", f"/v1/collections/{collection}/items", _report, send)


def _remove(collection: str, id: int) -> _Call[int]:
    path = f"/v1/collections/{collection}/items/{int(id)}"
    return _Call("DELETE", path, lambda _, payload: int(payload["removed"]))


def _tag(
    collection: str, ids: int | Iterable[int], tag: str, *, remove: bool = False
) -> _Call[int]:
    path = f"/v1/collections/{collection}/{'untag' if remove else 'tags'}"
    answer = "untagged" if remove else "tagged"
    send = {"json": {"tag": tag, "ids": _ids(ids)}}
    return _Call("POST", path, lambda _, payload: int(payload[answer]), send)


def _tags(collection: str, id: int) -> _Call[list[str]]:
    path = f"/v1/collections/{collection}/items/{int(id)}"
    return _Call("GET", path, lambda _, payload: list(payload.get("tags", [])))


def _tag_counts(collection: str) -> _Call[dict[str, int]]:
    path = f"/v1/collections/{collection}/tags"
    return _Call("GET", path, lambda _, payload: dict(payload["tags"]))


def _tagged(collection: str, tag: str) -> _Call[list[int]]:
    path = f"/v1/collections/{collection}/tagged"
    return _Call("GET", path, lambda _, payload: list(payload["ids"]), {"params": {"tag": tag}})


def _duplicates(
    collection: str, threshold: float, exact: bool, timeout: float | None
) -> _Call[list[DuplicateGroup]]:
    send: dict[str, Any] = {"json": {"threshold": threshold, "exact": exact}}
    if timeout is not None:  # a pass over a large collection outlasts the usual timeout
        send["timeout"] = timeout
    path = f"/v1/collections/{collection}/duplicates"
    return _Call("POST", path, _duplicate_groups, send)


def _duplicate_groups(_: httpx.URL, payload: dict[str, Any]) -> list[DuplicateGroup]:
    return [
        DuplicateGroup(keeper=g["keeper"], ids=g["ids"], exact=g["exact"], score=g["score"])
        for g in payload["groups"]
    ]


def _ids(ids: int | Iterable[int]) -> list[int]:
    return [ids] if isinstance(ids, int) else [int(i) for i in ids]


def _report(base: httpx.URL, payload: dict[str, Any]) -> IngestReport:
    return IngestReport(
        added=payload["added"],
        unchanged=payload["unchanged"],
        duplicates=payload["duplicates"],
        failed=[(f["source"], f["reason"]) for f in payload["failed"]],
        ids=list(payload.get("ids", [])),
    )


_HEALTH: _Call[dict[str, Any]] = _Call("GET", "/health", lambda _, payload: payload)
_COLLECTIONS: _Call[list[dict[str, Any]]] = _Call(
    "GET", "/v1/collections", lambda _, payload: payload["collections"]
)


class _BaseClient(Generic[HttpClient]):
    """What both clients share: headers, retries, and every call's request and answer."""

    _http: HttpClient

    def __init__(self, base_url: str, api_key: str | None, retries: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"user-agent": f"lookalike-client/{__version__}"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.retries = retries

    def _unreachable(self, error: Exception) -> LookalikeError:
        return LookalikeError(f"cannot reach {self.base_url}: {error}")

    def _answer(self, call: _Call[T], response: httpx.Response) -> T:
        _raise_for(response)
        return call.read(self._http.base_url, response.json())


class Client(_BaseClient[httpx.Client]):
    """Talks to a lookalike server. Each call mirrors the library's (``Collection``)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, retries)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _run(self, call: _Call[T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(call.method, call.path, **call.send)
                return self._answer(call, response)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if attempt == self.retries:
                    raise self._unreachable(error) from error
                time.sleep(0.2 * 2**attempt)
            except httpx.TimeoutException as error:
                raise LookalikeError(f"{call.method} {call.path} timed out: {error}") from error
        raise AssertionError("unreachable")

    def health(self) -> dict[str, Any]:
        """The server's liveness answer."""
        return self._run(_HEALTH)

    def collections(self) -> list[dict[str, Any]]:
        """Served collections: name, count, model, dim, index."""
        return self._run(_COLLECTIONS)

    def collection(self, name: str) -> RemoteCollection:
        """A handle on one served collection, with ``Collection``'s calls."""
        return RemoteCollection(self, name)

    def search(self, collection: str, query: Any = None, **options: Any) -> list[Hit]:
        """Search a collection: a :class:`~lookalike.Query`, or the arguments of
        ``Collection.search`` (``text=``, ``image=`` path/bytes/PIL, ``url=``, ``id=`` one or a
        list, ``vector=``, ``query=`` parts, ``k``, ``filter``, ``exclude_ids``, ...)."""
        return self._run(_search(collection, query, options))

    def search_many(
        self,
        collection: str,
        queries: Iterable[Any],
        *,
        batch_size: int = SEARCHES_PER_REQUEST,
        **options: Any,
    ) -> list[list[Hit]]:
        """Several searches, ``batch_size`` to a request (see ``Collection.search_many``):
        each a :class:`~lookalike.Query` or a mapping of :meth:`search`'s arguments,
        ``options`` filling in what a mapping leaves out. The server refuses URL queries in a
        batch: :meth:`search` them one at a time."""
        calls = _search_batches(collection, queries, options, batch_size)
        return [hits for call in calls for hits in self._run(call)]

    def count(
        self, collection: str, query: Any = None, *, min_score: float, **options: Any
    ) -> MatchCount:
        """How many images score at least ``min_score`` for a search (the arguments of
        :meth:`search`): see ``Collection.count``."""
        return self._run(_count(collection, query, min_score, options))

    def get(self, collection: str, id: int) -> Item:
        """One stored image."""
        return self._run(_get(collection, id))

    def add(
        self,
        collection: str,
        images: Sequence[Any],
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> IngestReport:
        """Add images: file paths, bytes or PIL images (uploaded), or URLs (fetched there)."""
        return self._run(_add(collection, images, metadata))

    def remove(self, collection: str, ids: int | Iterable[int]) -> int:
        """Remove images by id (one or several); returns how many were removed."""
        return sum(self._run(_remove(collection, i)) for i in _ids(ids))

    def tag(self, collection: str, ids: int | Iterable[int], tag: str) -> int:
        """Give images a tag; returns how many did not have it yet (see ``Collection.tag``)."""
        return self._run(_tag(collection, ids, tag))

    def untag(self, collection: str, ids: int | Iterable[int], tag: str) -> int:
        """Take a tag from images; returns how many had it."""
        return self._run(_tag(collection, ids, tag, remove=True))

    def tags(self, collection: str, id: int) -> list[str]:
        """The tags of one image."""
        return self._run(_tags(collection, id))

    def tagged(self, collection: str, tag: str) -> list[int]:
        """Ids of the images holding a tag."""
        return self._run(_tagged(collection, tag))

    def tag_counts(self, collection: str) -> dict[str, int]:
        """Every tag in use and how many images hold it."""
        return self._run(_tag_counts(collection))

    def duplicates(
        self,
        collection: str,
        threshold: float = 0.95,
        *,
        exact: bool = False,
        timeout: float | None = None,
    ) -> list[DuplicateGroup]:
        """Groups of copies across a collection (see ``Collection.duplicates``); ``timeout``
        (seconds) for this call, as a pass over millions of images takes minutes."""
        return self._run(_duplicates(collection, threshold, exact, timeout))


class AsyncClient(_BaseClient[httpx.AsyncClient]):
    """The same calls as :class:`Client`, awaitable."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, retries)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _run(self, call: _Call[T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(call.method, call.path, **call.send)
                return self._answer(call, response)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if attempt == self.retries:
                    raise self._unreachable(error) from error
                await asyncio.sleep(0.2 * 2**attempt)
            except httpx.TimeoutException as error:
                raise LookalikeError(f"{call.method} {call.path} timed out: {error}") from error
        raise AssertionError("unreachable")

    async def health(self) -> dict[str, Any]:
        """The server's liveness answer."""
        return await self._run(_HEALTH)

    async def collections(self) -> list[dict[str, Any]]:
        """Served collections."""
        return await self._run(_COLLECTIONS)

    def collection(self, name: str) -> AsyncRemoteCollection:
        """A handle on one served collection, with ``Collection``'s calls, awaitable."""
        return AsyncRemoteCollection(self, name)

    async def search(self, collection: str, query: Any = None, **options: Any) -> list[Hit]:
        """Search a collection (see :meth:`Client.search`)."""
        return await self._run(_search(collection, query, options))

    async def search_many(
        self,
        collection: str,
        queries: Iterable[Any],
        *,
        batch_size: int = SEARCHES_PER_REQUEST,
        **options: Any,
    ) -> list[list[Hit]]:
        """Several searches, ``batch_size`` to a request (see :meth:`Client.search_many`)."""
        calls = _search_batches(collection, queries, options, batch_size)
        return [hits for call in calls for hits in await self._run(call)]

    async def count(
        self, collection: str, query: Any = None, *, min_score: float, **options: Any
    ) -> MatchCount:
        """How many images score at least ``min_score`` (see :meth:`Client.count`)."""
        return await self._run(_count(collection, query, min_score, options))

    async def get(self, collection: str, id: int) -> Item:
        """One stored image."""
        return await self._run(_get(collection, id))

    async def add(
        self,
        collection: str,
        images: Sequence[Any],
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> IngestReport:
        """Add images by upload or URL."""
        return await self._run(_add(collection, images, metadata))

    async def remove(self, collection: str, ids: int | Iterable[int]) -> int:
        """Remove images by id (one or several)."""
        return sum([await self._run(_remove(collection, i)) for i in _ids(ids)])

    async def tag(self, collection: str, ids: int | Iterable[int], tag: str) -> int:
        """Give images a tag (see :meth:`Client.tag`)."""
        return await self._run(_tag(collection, ids, tag))

    async def untag(self, collection: str, ids: int | Iterable[int], tag: str) -> int:
        """Take a tag from images."""
        return await self._run(_tag(collection, ids, tag, remove=True))

    async def tags(self, collection: str, id: int) -> list[str]:
        """The tags of one image."""
        return await self._run(_tags(collection, id))

    async def tagged(self, collection: str, tag: str) -> list[int]:
        """Ids of the images holding a tag."""
        return await self._run(_tagged(collection, tag))

    async def tag_counts(self, collection: str) -> dict[str, int]:
        """Every tag in use and how many images hold it."""
        return await self._run(_tag_counts(collection))

    async def duplicates(
        self,
        collection: str,
        threshold: float = 0.95,
        *,
        exact: bool = False,
        timeout: float | None = None,
    ) -> list[DuplicateGroup]:
        """Groups of copies across a collection (see :meth:`Client.duplicates`)."""
        return await self._run(_duplicates(collection, threshold, exact, timeout))


@dataclass(frozen=True)
class RemoteCollection:
    """A served collection, called like a local ``Collection``:

    >>> photos = Client("http://127.0.0.1:8000").collection("photos")  # doctest: +SKIP
    >>> photos.search(id=[3, 9], k=50)                                  # doctest: +SKIP
    """

    client: Client
    name: str

    def search(self, query: Any = None, **options: Any) -> list[Hit]:
        """See ``Collection.search``."""
        return self.client.search(self.name, query, **options)

    def search_many(self, queries: Iterable[Any], **options: Any) -> list[list[Hit]]:
        """See ``Collection.search_many``."""
        return self.client.search_many(self.name, queries, **options)

    def count(self, query: Any = None, *, min_score: float, **options: Any) -> MatchCount:
        """See ``Collection.count``."""
        return self.client.count(self.name, query, min_score=min_score, **options)

    def get(self, id: int) -> Item:
        """See ``Collection.get``."""
        return self.client.get(self.name, id)

    def add_images(
        self, images: Sequence[Any], *, metadata: Sequence[Mapping[str, Any] | None] | None = None
    ) -> IngestReport:
        """See ``Collection.add_images``: paths, bytes or PIL images are uploaded; URLs are
        fetched by the server."""
        return self.client.add(self.name, images, metadata)

    add = add_images

    def remove(self, ids: int | Iterable[int]) -> int:
        """See ``Collection.remove``."""
        return self.client.remove(self.name, ids)

    def tag(self, ids: int | Iterable[int], tag: str) -> int:
        """See ``Collection.tag``."""
        return self.client.tag(self.name, ids, tag)

    def untag(self, ids: int | Iterable[int], tag: str) -> int:
        """See ``Collection.untag``."""
        return self.client.untag(self.name, ids, tag)

    def tags(self, id: int) -> list[str]:
        """See ``Collection.tags``."""
        return self.client.tags(self.name, id)

    def tagged(self, tag: str) -> list[int]:
        """See ``Collection.tagged``."""
        return self.client.tagged(self.name, tag)

    def tag_counts(self) -> dict[str, int]:
        """See ``Collection.tag_counts``."""
        return self.client.tag_counts(self.name)

    def duplicates(
        self, threshold: float = 0.95, *, exact: bool = False, timeout: float | None = None
    ) -> list[DuplicateGroup]:
        """See ``Collection.duplicates``."""
        return self.client.duplicates(self.name, threshold, exact=exact, timeout=timeout)


@dataclass(frozen=True)
class AsyncRemoteCollection:
    """:class:`RemoteCollection`, awaitable."""

    client: AsyncClient
    name: str

    async def search(self, query: Any = None, **options: Any) -> list[Hit]:
        """See ``Collection.search``."""
        return await self.client.search(self.name, query, **options)

    async def search_many(self, queries: Iterable[Any], **options: Any) -> list[list[Hit]]:
        """See ``Collection.search_many``."""
        return await self.client.search_many(self.name, queries, **options)

    async def count(self, query: Any = None, *, min_score: float, **options: Any) -> MatchCount:
        """See ``Collection.count``."""
        return await self.client.count(self.name, query, min_score=min_score, **options)

    async def get(self, id: int) -> Item:
        """See ``Collection.get``."""
        return await self.client.get(self.name, id)

    async def add_images(
        self, images: Sequence[Any], *, metadata: Sequence[Mapping[str, Any] | None] | None = None
    ) -> IngestReport:
        """See ``Collection.add_images``."""
        return await self.client.add(self.name, images, metadata)

    add = add_images

    async def remove(self, ids: int | Iterable[int]) -> int:
        """See ``Collection.remove``."""
        return await self.client.remove(self.name, ids)

    async def tag(self, ids: int | Iterable[int], tag: str) -> int:
        """See ``Collection.tag``."""
        return await self.client.tag(self.name, ids, tag)

    async def untag(self, ids: int | Iterable[int], tag: str) -> int:
        """See ``Collection.untag``."""
        return await self.client.untag(self.name, ids, tag)

    async def tags(self, id: int) -> list[str]:
        """See ``Collection.tags``."""
        return await self.client.tags(self.name, id)

    async def tagged(self, tag: str) -> list[int]:
        """See ``Collection.tagged``."""
        return await self.client.tagged(self.name, tag)

    async def tag_counts(self) -> dict[str, int]:
        """See ``Collection.tag_counts``."""
        return await self.client.tag_counts(self.name)

    async def duplicates(
        self, threshold: float = 0.95, *, exact: bool = False, timeout: float | None = None
    ) -> list[DuplicateGroup]:
        """See ``Collection.duplicates``."""
        return await self.client.duplicates(self.name, threshold, exact=exact, timeout=timeout)
