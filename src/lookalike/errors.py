"""Exceptions raised by lookalike; every one carries a message fit to show a user."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class LookalikeError(Exception):
    """Base class of every error lookalike raises on purpose."""

    code = "error"


class BadInputError(LookalikeError, ValueError):
    """A query, argument, manifest or request body is malformed."""

    code = "bad_input"


class InvalidQueryError(BadInputError):
    """A search's arguments or JSON body are malformed: a field of the wrong type or range,
    an unknown field, a query part without exactly one kind (HTTP 422)."""

    code = "invalid_body"


class ImageError(BadInputError):
    """An image could not be decoded, or breaks a limit (bytes, pixels, frames)."""

    code = "bad_image"


class FetchError(BadInputError):
    """A URL could not be fetched: refused address, timeout, size limit, HTTP error."""

    code = "fetch_failed"


class NotFoundError(LookalikeError, KeyError):
    """An id, path or collection does not exist."""

    code = "not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class ModelMismatchError(BadInputError):
    """A vector, model or query does not fit the collection (spec or dimension)."""

    code = "model_mismatch"


class UnsupportedQueryError(BadInputError):
    """The collection's model cannot answer this kind of query (text on an image-only model)."""

    code = "unsupported_query"


class BusyError(LookalikeError):
    """The server has too much of this kind of work in hand; the request may be retried."""

    code = "busy"


class CollectionError(LookalikeError):
    """The collection on disk is missing, locked, corrupt or of an unknown format."""

    code = "collection_error"


def placed(error: LookalikeError, where: str) -> LookalikeError:
    """``error`` again, its message starting with where it arose (``searches[3]: ...``); as it
    is when its class takes more than a message."""
    try:
        return type(error)(f"{where}: {error}")
    except TypeError:
        return error


@contextlib.contextmanager
def placing(where: str | None, kind: type[LookalikeError] = LookalikeError) -> Iterator[None]:
    """Errors of ``kind`` raised inside start with ``where`` they arose (None: as they are)."""
    try:
        yield
    except kind as error:
        if where is None:
            raise
        raise placed(error, where) from error
