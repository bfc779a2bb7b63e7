"""Small parsers shared by the API's routes: JSON bodies, base64 images, item links."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi import Request

from ..errors import BadInputError
from ..types import Item
from . import fastjson


async def read_json(request: Request) -> Any:
    """The body parsed as JSON."""
    # clip-retrieval's client posts JSON without a content type, so the body is parsed as JSON
    # whatever the header says
    return parse_json(await request.body(), "the body")


def parse_json(raw: str | bytes, what: str) -> Any:
    """``raw`` parsed as JSON; ``what`` names it in the error."""
    try:
        return fastjson.loads(raw)
    except RecursionError:  # the C parser recurses once per level: "[[[[...]]]]" 100,000 deep
        raise BadInputError(f"{what} nests JSON too deep") from None
    except (ValueError, UnicodeDecodeError):
        raise BadInputError(f"{what} must be JSON") from None


def links(name: str, item: Item) -> tuple[str, str]:
    """(image URL, thumbnail URL) of a stored image served under collection ``name``."""
    base = f"/v1/collections/{name}/items/{item.id}"
    return item.url or f"{base}/image", f"{base}/thumbnail"


def item_name(item: Item) -> str:
    """A stored image's file name, or the last segment of its URL (its host if none)."""
    if item.path:
        return _file_name(item.path)
    parts = urlsplit(item.url or "")
    return unquote(parts.path.rstrip("/").rpartition("/")[2]) or parts.hostname or ""


def _file_name(path: str) -> str:
    """``PurePath(path).name``, without building a PurePath for the plain case (a search
    answer names 20 or more files)."""
    name = path.rpartition("/")[2]
    if os.sep == "/" and name not in ("", "."):
        return name
    return PurePath(path).name


def relative_path(item: Item, roots: Sequence[str]) -> str | None:
    """A local image's path relative to the outermost of ``roots`` holding it (POSIX
    separators), or None for remote images and files outside every root."""
    if not item.path:
        return None
    if os.sep == "/" and all(_plain(root) for root in roots):
        if not item.path.startswith("/"):
            return None  # a relative path lies under no absolute root
        if _plain(item.path):
            return _relative_plain(item.path, roots)
    path = PurePath(item.path)
    holding = [PurePath(root) for root in roots if path.is_relative_to(root)]
    if not holding:
        return None
    return path.relative_to(min(holding, key=lambda root: len(root.parts))).as_posix()


def _plain(path: str) -> bool:
    """Whether a POSIX path is absolute and written as PurePath writes it (no empty or "."
    parts, no trailing slash), so that string prefixes compare its parts."""
    return (
        path.startswith("/")
        and "//" not in path
        and "/./" not in path
        and not path.endswith(("/", "/."))
    ) or path == "/"


def _relative_plain(path: str, roots: Sequence[str]) -> str | None:
    """:func:`relative_path` of plain paths (see :func:`_plain`) by string prefixes: a
    search answer shows 20 or more paths, and PurePath costs 5 µs each."""
    holding = [
        root
        for root in roots
        if path == root or path.startswith(root if root == "/" else root + "/")
    ]
    if not holding:
        return None
    outermost = min(holding, key=len)  # every holder is a prefix of path: fewest parts
    return "." if path == outermost else path[len(outermost) :].lstrip("/")
