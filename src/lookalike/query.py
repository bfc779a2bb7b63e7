"""Query parts: one query kind each (text, image, url, id, vector) with a weight.

Several parts combine into one vector: the weighted sum of their unit vectors, normalised.
A negative weight pushes results away from that part ("like this, but not like that").
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BadInputError

QUERY_KINDS = ("text", "image", "url", "id", "vector")


@dataclass(frozen=True)
class QueryPart:
    """One query kind and its value, weighted."""

    kind: str
    value: Any
    weight: float = 1.0


def parse_parts(
    query: Iterable[Mapping[str, Any] | QueryPart] | None = None, **kinds: Any
) -> list[QueryPart]:
    """Parts from keyword arguments (``text=...``, ``id=[1, 2]``) and/or a list of dicts.

    Each dict holds exactly one query kind and an optional ``weight``.
    """
    parts: list[QueryPart] = []
    for kind, value in kinds.items():
        if value is None:
            continue
        if kind not in QUERY_KINDS:
            raise BadInputError(f"unknown query kind {kind!r}; use one of {', '.join(QUERY_KINDS)}")
        many = kind == "id" and isinstance(value, (list, tuple))
        parts.extend(QueryPart(kind, v) for v in (value if many else [value]))
    for entry in query or []:
        parts.append(entry if isinstance(entry, QueryPart) else _part_from_mapping(entry))
    if not parts:
        raise BadInputError(f"give a query: one of {', '.join(QUERY_KINDS)}")
    for part in parts:
        _check(part)
    return parts


def _part_from_mapping(entry: Mapping[str, Any]) -> QueryPart:
    if not isinstance(entry, Mapping):
        raise BadInputError('each query part must be an object such as {"text": "a cat"}')
    present = [k for k in QUERY_KINDS if entry.get(k) is not None]
    unknown = set(entry) - {*QUERY_KINDS, "weight"}
    if unknown:
        raise BadInputError(f"unknown field(s) in query part: {', '.join(sorted(unknown))}")
    if len(present) != 1:
        raise BadInputError("each query part needs exactly one of " + ", ".join(QUERY_KINDS))
    return QueryPart(present[0], entry[present[0]], entry.get("weight", 1.0))


def _check(part: QueryPart) -> None:
    weight = part.weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight != weight:
        raise BadInputError("a query weight must be a number")
    if part.kind == "text" and not isinstance(part.value, str):
        raise BadInputError("a text query must be a string")
    if part.kind == "url" and not isinstance(part.value, str):
        raise BadInputError("a url query must be a string")
    if part.kind == "id" and (isinstance(part.value, bool) or not isinstance(part.value, int)):
        raise BadInputError("an id query must be an integer id")
    if (
        part.kind == "image"
        and not isinstance(part.value, (bytes, str, os.PathLike))
        and not hasattr(part.value, "convert")
    ):
        raise BadInputError("an image query must be bytes, a file path or a PIL image")
