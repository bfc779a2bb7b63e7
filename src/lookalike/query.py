"""The query value: what to search for and how, validated once, in and out of JSON.

A query holds weighted parts, one query kind each (text, image, url, id, vector). Several
parts combine into one vector: the weighted sum of their unit vectors, normalised; a negative
weight pushes results away from that part ("like this, but not like that"). The options
(``k``, ``filter``, ``exclude_ids``, ``include_self``, ``dedupe``, ``model``, ``tags``,
``exclude_tags``) say which rows may come back and how many; ``relevant`` / ``irrelevant``
(relevance feedback) and ``diverse`` shape the ranking (:mod:`lookalike.curation`). The
library, the HTTP API, the client, the CLI and the clip-retrieval routes all build this one
value, so a search option is defined and checked only here.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import BadInputError, InvalidQueryError
from .tags import check_tags

QUERY_KINDS = ("text", "image", "url", "id", "vector")
DEFAULT_K = 20
MAX_K = 10_000  # the library's cap; a server may set a lower one
MAX_PARTS = 64
MAX_FILTER_KEYS = 100
MAX_TEXT = 2000
MAX_VECTOR = 65_536
MAX_MARKS = 5000  # relevance-feedback marks on each side
ID_MAX = 2**63 - 1
PLAIN_NUMBERS = frozenset({float, int})  # bool is a type of its own: never a number here
INT64_MIN = -(2**63)
FilterValue = str | int | float | bool | None


@dataclass(frozen=True)
class QueryPart:
    """One query kind and its value, weighted."""

    kind: str
    value: Any
    weight: float = 1.0


@dataclass(frozen=True)
class Query:
    """A search: weighted parts and the options that shape the results.

    >>> Query.build(text="police car", k=50, filter={"split": "train"})  # doctest: +SKIP
    """

    parts: tuple[QueryPart, ...]
    k: int = DEFAULT_K
    filter: Mapping[str, FilterValue] | None = None
    exclude_ids: tuple[int, ...] = ()
    include_self: bool = False
    dedupe: float | None = None
    model: str | None = None
    tags: tuple[str, ...] = ()  # rows must hold every one
    exclude_tags: tuple[str, ...] = ()  # rows holding any one are left out
    relevant: tuple[int, ...] = ()
    irrelevant: tuple[int, ...] = ()
    diverse: float | None = None

    def __post_init__(self) -> None:
        if not self.parts and not self.relevant:
            raise InvalidQueryError(
                f"give a query: one of {', '.join(QUERY_KINDS)}, or relevant ids"
                + (" (irrelevant marks alone say nothing to look for)" if self.irrelevant else "")
            )
        if len(self.parts) > MAX_PARTS:
            raise InvalidQueryError(f"a query has at most {MAX_PARTS} parts")
        for part in self.parts:
            _check_part(part)
        _check_k(self.k)
        if self.filter is not None:
            _check_filter(self.filter)
        for i in self.exclude_ids:
            _check_id(i, "exclude_ids")
        if not isinstance(self.include_self, bool):
            raise InvalidQueryError("include_self must be true or false")
        if self.dedupe is not None and (not _is_number(self.dedupe) or not 0 < self.dedupe <= 1):
            raise InvalidQueryError("dedupe must be a cosine similarity in (0, 1]")
        if self.model is not None and not isinstance(self.model, str):
            raise InvalidQueryError("model must be a model spec string")
        for name in ("tags", "exclude_tags"):
            try:
                object.__setattr__(self, name, check_tags(getattr(self, name), name))
            except BadInputError as error:
                raise InvalidQueryError(str(error)) from None
        _check_marks(self.relevant, self.irrelevant)
        if self.diverse is not None and (
            not _is_number(self.diverse) or not 0 <= self.diverse <= 1
        ):
            raise InvalidQueryError("diverse must be a number from 0 (relevance) to 1 (diversity)")

    @classmethod
    def build(
        cls, query: Query | Iterable[Mapping[str, Any] | QueryPart] | None = None, **arguments: Any
    ) -> Query:
        """A query from the arguments of ``Collection.search``: query kinds (``text=``,
        ``image=``, ``url=``, ``id=`` one or a list for "more like these", ``vector=``) and/or
        ``query``, a list of parts such as ``{"text": "a cat", "weight": 0.5}``; plus options
        (``k=``, ``filter=``, ``exclude_ids=``, ``include_self=``, ``dedupe=``, ``model=``,
        ``tags=``, ``exclude_tags=``, ``relevant=``, ``irrelevant=``, ``diverse=``). Relevant
        ids alone are a query too.

        A ``Query`` given as ``query`` comes back with the options given replacing its own.
        """
        kinds = {kind: arguments.pop(kind) for kind in QUERY_KINDS if kind in arguments}
        unknown = set(arguments) - OPTIONS
        if unknown:
            raise InvalidQueryError(f"unknown search argument(s): {', '.join(sorted(unknown))}")
        for name in ID_LISTS:
            if name in arguments:
                arguments[name] = tuple(_ids(arguments[name] or (), name))
        if isinstance(query, Query):
            if any(value is not None for value in kinds.values()):
                raise InvalidQueryError(
                    "give the query parts in the Query or as arguments, not both"
                )
            return replace(query, **arguments)
        # no parts is checked by __post_init__: relevance marks alone are a query
        return cls(tuple(parse_parts(query, required=False, **kinds)), **arguments)

    @property
    def fetches(self) -> bool:
        """Whether the query names a URL to fetch (slow, bounded work for a server)."""
        return any(p.kind == "url" for p in self.parts)

    @property
    def query_ids(self) -> list[int]:
        """Ids searched by, which results leave out unless ``include_self``."""
        return [] if self.include_self else [p.value for p in self.parts if p.kind == "id"]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_json` reads back; images become base64 (a file
        path is read, a PIL image is encoded as PNG). Options left at their default are
        omitted."""
        body: dict[str, Any] = {"query": [_part_json(p) for p in self.parts]} if self.parts else {}
        for option in fields(self):
            if option.name == "parts":
                continue
            value = getattr(self, option.name)
            if value != option.default:
                body[option.name] = list(value) if isinstance(value, tuple) else value
        if self.filter is not None:
            body["filter"] = dict(self.filter)
        return body

    @classmethod
    def from_json(cls, body: Any) -> Query:
        """A query from its JSON form: ``{"query": [parts]}`` or one kind at the top level
        (``{"text": "..."}``), plus options. Images are base64 strings or data: URLs."""
        if not isinstance(body, Mapping):
            raise InvalidQueryError("a search body must be a JSON object")
        unknown = set(body) - OPTIONS - {"query", *QUERY_KINDS}
        if unknown:
            raise InvalidQueryError(f"unknown search field(s): {', '.join(sorted(unknown))}")
        raw_parts = body.get("query")
        if raw_parts is not None and not isinstance(raw_parts, list):
            raise InvalidQueryError("query must be a list of parts")
        if isinstance(raw_parts, list) and len(raw_parts) > MAX_PARTS:
            raise InvalidQueryError(f"a query has at most {MAX_PARTS} parts")
        parts = [_part_from_json(p) for p in raw_parts or []]
        parts += [_part_from_json({k: body[k]}) for k in QUERY_KINDS if body.get(k) is not None]
        options = {name: body[name] for name in OPTIONS if body.get(name) is not None}
        for name in ID_LISTS:
            if name in options:
                options[name] = tuple(_ids(options[name], name))
        return cls(tuple(parts), **options)


OPTIONS = frozenset(f.name for f in fields(Query)) - {"parts"}
ID_LISTS = ("exclude_ids", "relevant", "irrelevant")


def batch_queries(
    queries: Iterable[Query | Mapping[str, Any]], options: Mapping[str, Any]
) -> list[Query]:
    """The queries of a batch: a :class:`Query` as it is, a mapping of ``Collection.search``'s
    arguments with ``options`` filling in what it leaves out."""
    built = []
    for query in queries:
        if isinstance(query, Query):
            built.append(query)
        elif isinstance(query, Mapping):
            built.append(Query.build(**{**options, **query}))
        else:
            raise InvalidQueryError(
                "each query of a batch is a Query or a mapping of search arguments, "
                f"not {type(query).__name__}"
            )
    return built


def parse_parts(
    query: Iterable[Mapping[str, Any] | QueryPart] | None = None,
    *,
    required: bool = True,
    **kinds: Any,
) -> list[QueryPart]:
    """Parts from keyword arguments (``text=...``, ``id=[1, 2]``) and/or a list of dicts.

    Each dict holds exactly one query kind and an optional ``weight``. Without ``required``,
    no part at all is no error (relevance marks alone are a query).
    """
    parts: list[QueryPart] = []
    for kind, value in kinds.items():
        if value is None:
            continue
        if kind not in QUERY_KINDS:
            raise InvalidQueryError(
                f"unknown query kind {kind!r}; use one of {', '.join(QUERY_KINDS)}"
            )
        many = kind == "id" and isinstance(value, (list, tuple))
        parts.extend(
            QueryPart(kind, _plain_int(v) if kind == "id" else v)
            for v in (value if many else [value])
        )
    if isinstance(query, (str, bytes, Mapping)):
        raise InvalidQueryError('query must be a list of parts such as [{"text": "a cat"}]')
    for entry in query or []:
        parts.append(entry if isinstance(entry, QueryPart) else _part_from_mapping(entry))
    if not parts and required:
        raise InvalidQueryError(f"give a query: one of {', '.join(QUERY_KINDS)}")
    for part in parts:
        _check_part(part)
    return parts


def decode_base64(text: str) -> bytes:
    """Bytes of a base64 string or data: URL."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInputError("image must be base64-encoded bytes") from None


def image_bytes(image: Any) -> bytes:
    """Encoded bytes of an image given as bytes, a file path or a PIL image (as PNG)."""
    if isinstance(image, bytes):
        return image
    if hasattr(image, "save"):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    try:
        return Path(image).read_bytes()
    except OSError as error:
        raise BadInputError(f"cannot read the image {image}: {error.strerror}") from None


def _part_from_mapping(entry: Mapping[str, Any]) -> QueryPart:
    if not isinstance(entry, Mapping):
        raise InvalidQueryError('each query part must be an object such as {"text": "a cat"}')
    present = [k for k in QUERY_KINDS if entry.get(k) is not None]
    unknown = set(entry) - {*QUERY_KINDS, "weight"}
    if unknown:
        raise InvalidQueryError(f"unknown field(s) in query part: {', '.join(sorted(unknown))}")
    if len(present) != 1:
        raise InvalidQueryError("each query part needs exactly one of " + ", ".join(QUERY_KINDS))
    return QueryPart(present[0], entry[present[0]], entry.get("weight", 1.0))


def _part_from_json(entry: Any) -> QueryPart:
    part = _part_from_mapping(entry)
    if part.kind == "image":
        if not isinstance(part.value, str):
            raise InvalidQueryError("an image in JSON must be a base64 string")
        part = replace(part, value=decode_base64(part.value))
    return part


def _part_json(part: QueryPart) -> dict[str, Any]:
    value = part.value
    if part.kind == "image":
        value = base64.b64encode(image_bytes(value)).decode("ascii")
    elif part.kind == "vector":
        value = [float(x) for x in value]
    entry = {part.kind: value}
    if part.weight != 1.0:
        entry["weight"] = part.weight
    return entry


def _check_part(part: QueryPart) -> None:
    if not _is_number(part.weight) or not -100 <= part.weight <= 100:
        raise InvalidQueryError("a query weight must be a number from -100 to 100")
    if part.kind == "text" and not isinstance(part.value, str):
        raise InvalidQueryError("a text query must be a string")
    if part.kind == "text" and len(part.value) > MAX_TEXT:
        raise InvalidQueryError(f"a text query has at most {MAX_TEXT} characters")
    if part.kind == "url" and not isinstance(part.value, str):
        raise InvalidQueryError("a url query must be a string")
    if part.kind == "id":
        _check_id(part.value, "an id query")
    if part.kind == "vector":
        _check_vector(part.value)
    if (
        part.kind == "image"
        and not isinstance(part.value, (bytes, str, os.PathLike))
        and not hasattr(part.value, "convert")
    ):
        raise InvalidQueryError("an image query must be bytes, a file path or a PIL image")


def _check_vector(value: Any) -> None:
    if hasattr(value, "dtype") and hasattr(value, "size"):  # an array: its shape is the
        ok = value.dtype.kind in "fiu"  # collection's to judge (a wrong dimension)
        size = int(value.size)
    else:
        ok = isinstance(value, (list, tuple)) and (
            # plain floats and ints (what JSON gives) at C speed; else the slow exact check
            set(map(type, value)) <= PLAIN_NUMBERS or all(_is_real(x) for x in value)
        )
        size = len(value) if ok else 0
    if not ok or not 0 < size <= MAX_VECTOR:
        raise InvalidQueryError(f"a vector query must be a list of 1 to {MAX_VECTOR} numbers")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidQueryError(f"k must be an integer from 1 to {MAX_K}")


def _check_id(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > ID_MAX:
        raise InvalidQueryError(f"{what} must hold integer ids (got {value!r:.40})")


def _ids(values: Any, what: str) -> list[int]:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise InvalidQueryError(f"{what} must be a list of integer ids")
    ids = [_plain_int(v) for v in values]
    for i in ids:
        _check_id(i, what)
    return ids


def _check_marks(relevant: tuple[int, ...], irrelevant: tuple[int, ...]) -> None:
    for name, ids in (("relevant", relevant), ("irrelevant", irrelevant)):
        if len(ids) > MAX_MARKS:
            raise InvalidQueryError(f"{name} holds at most {MAX_MARKS} ids")
        for i in ids:
            _check_id(i, name)
    both = sorted(set(relevant) & set(irrelevant))
    if both:
        shown = ", ".join(map(str, both[:20])) + (", ..." if len(both) > 20 else "")
        raise InvalidQueryError(f"ids marked both relevant and irrelevant: {shown}")


def _check_filter(equals: Any) -> None:
    """Filters hold what the row database can compare: a bad shape is off-schema (422), a
    value it cannot take (NaN, beyond 64 bits, NUL, too many keys) a bad query (400)."""
    if not isinstance(equals, Mapping):
        raise InvalidQueryError("filter must map metadata keys to values")
    if len(equals) > MAX_FILTER_KEYS:
        raise BadInputError(f"a filter has at most {MAX_FILTER_KEYS} keys, not {len(equals)}")
    for key, value in equals.items():
        if not isinstance(key, str) or not key:
            raise BadInputError(f"filter keys must be non-empty strings, not {key!r:.60}")
        if "\0" in key:
            raise BadInputError(f"filter key {key!r:.60} contains NUL")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadInputError(f"filter value of {key!r} must be a finite number")
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not INT64_MIN <= value <= ID_MAX
        ):
            raise BadInputError(f"filter value of {key!r} is beyond 64-bit integers")
        if isinstance(value, str) and "\0" in value:
            raise BadInputError(f"filter value of {key!r} contains NUL")
        if value is not None and not isinstance(value, (str, int, float)):
            raise InvalidQueryError(f"filter value of {key!r} must be a string, number or bool")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _plain_int(value: Any) -> Any:
    """NumPy integers as Python ints; anything else as it is, for the checks to judge."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
        return int(value)
    return value
