"""lookalike: find the images of a collection that look like a query image, URL, text or vector.

``import lookalike`` is cheap: the engine (torch, Faiss) and the client load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    BadInputError,
    CollectionError,
    FetchError,
    ImageError,
    InvalidQueryError,
    LookalikeError,
    ModelMismatchError,
    NotFoundError,
    UnsupportedQueryError,
)
from .query import Query, QueryPart
from .types import DuplicateGroup, Hit, IngestReport, Item, MatchCount

if TYPE_CHECKING:
    from .client import APIError, AsyncClient, Client
    from .collection import Collection

_LAZY = {
    "Collection": "collection",
    "Client": "client",
    "AsyncClient": "client",
    "APIError": "client",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lookalike' has no attribute {name!r}")


__all__ = [
    "APIError",
    "AsyncClient",
    "BadInputError",
    "Client",
    "Collection",
    "CollectionError",
    "DuplicateGroup",
    "FetchError",
    "Hit",
    "ImageError",
    "IngestReport",
    "InvalidQueryError",
    "Item",
    "LookalikeError",
    "MatchCount",
    "ModelMismatchError",
    "NotFoundError",
    "Query",
    "QueryPart",
    "UnsupportedQueryError",
    "__version__",
]
