"""Serving a collection's images and thumbnails, never from outside its roots."""

from __future__ import annotations

import os
from pathlib import Path

from .. import layout
from ..collection import Collection
from ..errors import NotFoundError
from ..fetch import Deadline, fetch
from ..imaging import decode_image, make_thumbnail


def local_image_path(collection: Collection, item_id: int) -> Path:
    """The file of a stored image, resolved and checked to lie under one of the roots."""
    item = collection.get(item_id)
    if item.path is None:
        raise NotFoundError(f"image {item_id} is remote: {item.url}")
    real = Path(os.path.realpath(item.path))
    roots = [Path(os.path.realpath(root)) for root in collection.roots()]
    if not any(real.is_relative_to(root) for root in roots):
        raise NotFoundError(f"image {item_id} lies outside the collection's folders")
    if not real.is_file():
        raise NotFoundError(f"the file of image {item_id} is gone")
    return real


def thumbnail_path(collection: Collection, item_id: int, side: int) -> Path:
    """Where the thumbnail of a stored image is cached (in the collection), made or not."""
    return layout.thumbnail_path(collection.path, item_id, side)


def thumbnail(collection: Collection, item_id: int, side: int) -> Path:
    """A JPEG thumbnail of a stored image, made once and cached in the collection."""
    cached = thumbnail_path(collection, item_id, side)
    item = collection.get(item_id)  # raises for unknown or removed ids, cached or not
    if cached.is_file():
        return cached
    if item.url:
        policy = collection.fetch_policy
        data = fetch(item.url, policy, Deadline(policy.deadline))
    else:
        data = local_image_path(collection, item_id).read_bytes()
    image = decode_image(data, limits=collection.limits, min_side=side).image
    cached.parent.mkdir(parents=True, exist_ok=True)
    return layout.write_atomic(cached, make_thumbnail(image, side), durable=False)
