"""Turning one source item into model input: read or fetch, hash, decode, resize.

Runs in ingest worker processes, so it imports no torch and holds no state.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass

import numpy as np

from .errors import LookalikeError
from .fetch import FetchPolicy, fetch, is_url
from .imaging import ImageLimits, decode_image, to_model_input
from .sources import SourceItem


@dataclass(frozen=True)
class PreparedImage:
    """A decoded image ready for the encoder."""

    item: SourceItem
    content_hash: str
    width: int
    height: int
    bytes: int
    pixels: np.ndarray  # uint8 (size, size, 3)


@dataclass(frozen=True)
class Failure:
    """An item that could not be prepared, and why."""

    item: SourceItem
    reason: str


def content_hash(data: bytes) -> str:
    """Identity of an image file's bytes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_bytes(locator: str, limits: ImageLimits, policy: FetchPolicy) -> bytes:
    """The bytes behind a path or URL, within the byte limits."""
    if is_url(locator):
        return fetch(locator, policy)
    # non-blocking, so that opening a FIFO does not wait for a writer: it is refused below
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    # unbuffered, asking for the size fstat gives: a buffered read of max_bytes + 1 allocates
    # that much first, which cost more than the read itself (0.18 against 0.03 ms a photo)
    with open(os.open(locator, flags), "rb", buffering=0) as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise LookalikeError("not a regular file")
        data = _read_up_to(handle, limits.max_bytes + 1, status.st_size)
    if len(data) > limits.max_bytes:
        raise LookalikeError(f"file larger than the limit of {limits.max_bytes} bytes")
    return data


def _read_up_to(handle: io.RawIOBase, limit: int, expected: int) -> bytes:
    """At most ``limit`` bytes of ``handle``: first the ``expected`` size (and a byte more, to
    see the end), then more while the file turns out longer."""
    chunks: list[bytes] = []
    total = 0
    while total < limit:
        chunk = handle.read(min(limit - total, max(expected + 1 - total, 1 << 20)))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def prepare(
    item: SourceItem, size: int, limits: ImageLimits, policy: FetchPolicy
) -> PreparedImage | Failure:
    """Prepare one item; every failure is returned, never raised."""
    try:
        data = item.data if item.data is not None else read_bytes(item.locator, limits, policy)
        decoded = decode_image(data, limits=limits, min_side=size)
        pixels = to_model_input(decoded.image, size)
    except LookalikeError as error:
        return Failure(item, str(error))
    except OSError as error:
        return Failure(item, f"cannot read: {error.strerror or error}")
    return PreparedImage(item, content_hash(data), decoded.width, decoded.height, len(data), pixels)
