"""The HTTP API as Python calls: ``Client`` (sync) and ``AsyncClient``.

Needs only httpx: a client install pulls in no torch, Faiss or FastAPI.

>>> c = Client("http://127.0.0.1:8000")                   # doctest: +SKIP
>>> c.search("photos", text="police car", k=20)           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from . import __version__
from .errors import BadInputError, LookalikeError
from .types import Hit, Item

DEFAULT_TIMEOUT = 30.0
RETRIES = 2  # on connection errors only: a request the server may have run is never repeated


class APIError(LookalikeError):
    """The server answered with an error: ``status`` (HTTP), ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status = status
        self.code = code
        self.message = message


def _image_bytes(image: Any) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, os.PathLike)):
        try:
            return Path(image).read_bytes()
        except OSError as error:
            raise BadInputError(f"cannot read {os.fspath(image)}: {error.strerror}") from None
    if hasattr(image, "save"):  # a PIL image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise BadInputError("image must be bytes, a file path or a PIL image")


def _search_body(
    *,
    text: str | None,
    image: Any,
    url: str | None,
    id: int | None,
    vector: Sequence[float] | None,
    query: Iterable[Mapping[str, Any]] | None,
    k: int,
    filter: Mapping[str, Any] | None,
    exclude_ids: Sequence[int] | None,
    include_self: bool | None,
    dedupe: float | None,
) -> dict[str, Any]:
    """The JSON body of a search, from the arguments of ``Client.search``."""
    fields = {
        "text": text,
        "url": url,
        "id": id,
        "vector": list(map(float, vector)) if vector is not None else None,
        "image": base64.b64encode(_image_bytes(image)).decode() if image is not None else None,
        "query": [_part(p) for p in query] if query is not None else None,
        "k": k,
        "filter": dict(filter) if filter else None,
        "exclude_ids": list(exclude_ids) if exclude_ids else None,
        "include_self": include_self,
        "dedupe": dedupe,
    }
    return {key: value for key, value in fields.items() if value is not None}


def _part(part: Mapping[str, Any]) -> dict[str, Any]:
    part = dict(part)
    if "image" in part:
        part["image"] = base64.b64encode(_image_bytes(part["image"])).decode()
    return part


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
    return [
        Hit(
            id=r["id"],
            score=r["score"],
            url=_absolute(base, r.get("url")),
            width=r["width"],
            height=r["height"],
            metadata=r.get("metadata") or {},
        )
        for r in payload["results"]
    ]


def _item(base: httpx.URL, payload: dict[str, Any]) -> Item:
    return Item(
        id=payload["id"],
        url=_absolute(base, payload.get("url")),
        width=payload["width"],
        height=payload["height"],
        metadata=payload.get("metadata") or {},
    )


def _add_request(
    images: Sequence[Any], metadata: Sequence[Mapping[str, Any]] | None
) -> dict[str, Any]:
    if images and all(
        isinstance(i, str) and i.lower().startswith(("http://", "https://")) for i in images
    ):
        return {
            "json": {
                "urls": list(images),
                "metadata": [dict(m) for m in metadata] if metadata else None,
            }
        }
    files = [
        (
            "files",
            (Path(i).name if isinstance(i, (str, os.PathLike)) else f"image{n}", _image_bytes(i)),
        )
        for n, i in enumerate(images)
    ]
    data = {"metadata": json.dumps([dict(m) for m in metadata])} if metadata else {}
    return {"files": files, "data": data}


class Client:
    """Talks to a lookalike server."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"user-agent": f"lookalike-client/{__version__}"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.retries = retries
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if attempt == self.retries:
                    raise LookalikeError(f"cannot reach {self._http.base_url}: {error}") from error
                time.sleep(0.2 * 2**attempt)
            except httpx.TimeoutException as error:
                raise LookalikeError(f"{method} {path} timed out: {error}") from error
        _raise_for(response)
        return response

    def health(self) -> dict[str, Any]:
        """The server's liveness answer."""
        return self._request("GET", "/health").json()

    def collections(self) -> list[dict[str, Any]]:
        """Served collections: name, count, model, dim, index."""
        return self._request("GET", "/v1/collections").json()["collections"]

    def search(
        self,
        collection: str,
        *,
        text: str | None = None,
        image: Any = None,
        url: str | None = None,
        id: int | None = None,
        vector: Sequence[float] | None = None,
        query: Iterable[Mapping[str, Any]] | None = None,
        k: int = 20,
        filter: Mapping[str, Any] | None = None,
        exclude_ids: Sequence[int] | None = None,
        include_self: bool | None = None,
        dedupe: float | None = None,
    ) -> list[Hit]:
        """Search a collection; the query kinds are those of ``Collection.search``."""
        body = _search_body(
            text=text,
            image=image,
            url=url,
            id=id,
            vector=vector,
            query=query,
            k=k,
            filter=filter,
            exclude_ids=exclude_ids,
            include_self=include_self,
            dedupe=dedupe,
        )
        return _hits(
            self._http.base_url,
            self._request("POST", f"/v1/collections/{collection}/search", json=body).json(),
        )

    def get(self, collection: str, id: int) -> Item:
        """One stored image."""
        return _item(
            self._http.base_url,
            self._request("GET", f"/v1/collections/{collection}/items/{int(id)}").json(),
        )

    def add(
        self,
        collection: str,
        images: Sequence[Any],
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Add images: file paths, bytes or PIL images (uploaded), or URLs (fetched there)."""
        return self._request(
            "POST", f"/v1/collections/{collection}/items", **_add_request(images, metadata)
        ).json()

    def remove(self, collection: str, id: int) -> int:
        """Remove an image; returns how many were removed."""
        return self._request("DELETE", f"/v1/collections/{collection}/items/{int(id)}").json()[
            "removed"
        ]


class AsyncClient:
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
        headers = {"user-agent": f"lookalike-client/{__version__}"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.retries = retries
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if attempt == self.retries:
                    raise LookalikeError(f"cannot reach {self._http.base_url}: {error}") from error
                await asyncio.sleep(0.2 * 2**attempt)
            except httpx.TimeoutException as error:
                raise LookalikeError(f"{method} {path} timed out: {error}") from error
        _raise_for(response)
        return response

    async def health(self) -> dict[str, Any]:
        """The server's liveness answer."""
        return (await self._request("GET", "/health")).json()

    async def collections(self) -> list[dict[str, Any]]:
        """Served collections."""
        return (await self._request("GET", "/v1/collections")).json()["collections"]

    async def search(
        self,
        collection: str,
        *,
        text: str | None = None,
        image: Any = None,
        url: str | None = None,
        id: int | None = None,
        vector: Sequence[float] | None = None,
        query: Iterable[Mapping[str, Any]] | None = None,
        k: int = 20,
        filter: Mapping[str, Any] | None = None,
        exclude_ids: Sequence[int] | None = None,
        include_self: bool | None = None,
        dedupe: float | None = None,
    ) -> list[Hit]:
        """Search a collection."""
        body = _search_body(
            text=text,
            image=image,
            url=url,
            id=id,
            vector=vector,
            query=query,
            k=k,
            filter=filter,
            exclude_ids=exclude_ids,
            include_self=include_self,
            dedupe=dedupe,
        )
        response = await self._request("POST", f"/v1/collections/{collection}/search", json=body)
        return _hits(self._http.base_url, response.json())

    async def get(self, collection: str, id: int) -> Item:
        """One stored image."""
        response = await self._request("GET", f"/v1/collections/{collection}/items/{int(id)}")
        return _item(self._http.base_url, response.json())

    async def add(
        self,
        collection: str,
        images: Sequence[Any],
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Add images by upload or URL."""
        response = await self._request(
            "POST", f"/v1/collections/{collection}/items", **_add_request(images, metadata)
        )
        return response.json()

    async def remove(self, collection: str, id: int) -> int:
        """Remove an image."""
        response = await self._request("DELETE", f"/v1/collections/{collection}/items/{int(id)}")
        return response.json()["removed"]
