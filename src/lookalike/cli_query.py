"""The query options of the CLI, declared once for every command that runs a search.

``@query_options()`` adds them to a command (``search``, ``count``, ``export``,
``labelstudio push``, ...) and hands it one built :class:`~lookalike.Query` as ``query``
instead; an error about the query image then names its file. A new search option is a field
of ``Query`` plus one line here.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import BadInputError, ImageError, LookalikeError
from .query import DEFAULT_K, Query

# (parameter, its type, help, option names, default): in the order of the commands' --help
_QUERY_OPTIONS: list[tuple[str, Any, str, tuple[str, ...], Any]] = [
    ("text", str | None, "Text query.", (), None),
    ("image", Path | None, "Query image file.", (), None),
    ("url", str | None, "Query image URL.", (), None),
    ("id", list[int] | None, "Indexed image id (repeat for 'more like these').", ("--id",), None),
    (
        "vector",
        str | None,
        "Raw vector: comma-separated numbers, or a .npy / .json file.",
        (),
        None,
    ),
    ("filter", list[str] | None, "Metadata equality, KEY=VALUE (repeatable).", ("--filter",), None),
    ("exclude_id", list[int] | None, "Leave out this id (repeatable).", (), None),
    ("include_self", bool, "Keep --id images in results.", (), False),
    (
        "with_tag",
        list[str] | None,
        "Keep images holding this tag (repeatable: all).",
        ("--with-tag",),
        None,
    ),
    (
        "exclude_tag",
        list[str] | None,
        "Leave out images holding this tag (repeatable: any).",
        ("--exclude-tag",),
        None,
    ),
    (
        "relevant",
        list[int] | None,
        "Id marked relevant (repeatable): relevance feedback.",
        ("--relevant",),
        None,
    ),
    ("irrelevant", list[int] | None, "Id marked irrelevant (repeatable).", ("--irrelevant",), None),
    (
        "dedupe",
        float | None,
        "Drop results whose cosine to a better one is at least this.",
        (),
        None,
    ),
    (
        "diverse",
        float | None,
        "0 (relevance order) to 1 (most varied): spread the results.",
        (),
        None,
    ),
]


def query_options(
    *,
    k: int | None = DEFAULT_K,
    k_help: str = "How many results.",
    ranking: bool = True,
    without: tuple[str, ...] = (),
    deferred: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the query options and hand it ``query``, a built Query. ``k`` is the
    default of ``-k`` (None: the command has its own, or none); without ``ranking`` the
    options that only order results (``dedupe``, ``diverse``) are left out (a count);
    ``without`` leaves out others (a command whose own option has the name). With
    ``deferred``, ``query`` is a function building the Query with more relevance marks
    (``relevant=``, ``irrelevant=``), for a command that finds some of its own."""
    skipped = {*without, *(() if ranking else ("dedupe", "diverse"))}
    options = [o for o in _QUERY_OPTIONS if o[0] not in skipped]
    if k is not None:
        options.insert(5, ("k", int, k_help, ("-k", "--k"), k))
    added = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=Annotated[kind, typer.Option(*names, help=help)],
        )
        for name, kind, help, names, default in options
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)  # typer reads real annotations
        own = [p for p in signature.parameters.values() if p.name != "query"]
        first_keyword = next(
            (i for i, p in enumerate(own) if p.default is not inspect.Parameter.empty), len(own)
        )
        parameters = [*own[:first_keyword], *added, *own[first_keyword:]]
        names = {p.name for p in added}

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            options = {name: kwargs.pop(name) for name in names}
            image = options.get("image")
            with naming_the_image(image):
                if deferred:
                    return command(*args, query=functools.partial(build_query, **options), **kwargs)
                return command(*args, query=build_query(**options), **kwargs)

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters]
        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


def build_query(
    *,
    image: Path | None = None,
    vector: str | None = None,
    id: list[int] | None = None,
    filter: list[str] | None = None,
    exclude_id: list[int] | None = None,
    with_tag: list[str] | None = None,
    exclude_tag: list[str] | None = None,
    relevant: list[int] | None = None,
    irrelevant: list[int] | None = None,
    more_relevant: Iterable[int] = (),
    more_irrelevant: Iterable[int] = (),
    **options: Any,
) -> Query:
    """The Query of a command's options (names as on the command line), with ``more_*``
    relevance marks found otherwise (from tags)."""
    return Query.build(
        image=read_file(image) if image is not None else None,
        vector=read_vector(vector) if vector else None,
        id=id or None,
        filter=parse_filters(filter or []),
        exclude_ids=exclude_id or [],
        tags=with_tag or (),
        exclude_tags=exclude_tag or (),
        relevant=[*(relevant or []), *more_relevant],
        irrelevant=[*(irrelevant or []), *more_irrelevant],
        **options,
    )


@contextlib.contextmanager
def naming_the_image(image: Path | None) -> Iterator[None]:
    """Errors about the query image name its file: decoding only sees bytes."""
    try:
        yield
    except ImageError as error:
        if image is None:
            raise
        raise ImageError(f"--image {image}: {error}") from error
    except LookalikeError as error:
        if image is None or getattr(error, "code", "") != "bad_image":
            raise
        raise ImageError(f"--image {image}: {getattr(error, 'message', error)}") from error


def parse_filters(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` options as a filter; a value that reads as JSON is taken as such."""
    filters: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInputError(f"--filter {pair!r} must look like KEY=VALUE")
        try:
            filters[key] = json.loads(value)
        except ValueError:
            filters[key] = value
    return filters


def read_file(path: Path) -> bytes:
    """A query image file's bytes, or a clear error."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise BadInputError(f"cannot read {path}: {error.strerror}") from error


def read_vector(value: str) -> list[float]:
    """A ``--vector``: comma-separated numbers, or a .npy / .json file of them."""
    import numpy as np

    path = Path(value)
    if path.suffix in {".npy", ".json"} and path.is_file():
        data = (
            np.load(path) if path.suffix == ".npy" else json.loads(path.read_text(encoding="utf-8"))
        )
        return np.asarray(data, dtype=np.float32).ravel().tolist()
    try:
        return [float(x) for x in value.split(",")]
    except ValueError:
        raise BadInputError("--vector takes comma-separated numbers or a .npy/.json file") from None
