"""Signed, expiring image links: one image of one collection, readable without an API key.

A labeling tool (Label Studio, CVAT, FiftyOne's app) shows images to people who hold no API
key of ours. A signed link grants exactly one image: its token is an HMAC-SHA256, keyed by
the server's secret, over the collection name, the image id and the expiry time, so a token
made for one image, or one whose expiry was altered, does not verify for anything else.

    GET /v1/collections/{name}/items/{id}/image?expires=UNIX_TIME&token=TOKEN

The server takes its secret from ``--url-secret`` or ``$LOOKALIKE_URL_SECRET`` (or makes
one at start, and then only it can sign, through ``POST /v1/collections/{name}/signed-urls``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from urllib.parse import quote

from .errors import BadInputError

URL_SECRET_ENV = "LOOKALIKE_URL_SECRET"
DEFAULT_TTL_S = 7 * 24 * 3600  # a labeling round takes days
MAX_TTL_S = 366 * 24 * 3600
MIN_SECRET_BYTES = 16


class BadTokenError(BadInputError):
    """A signed link whose token is missing, malformed, wrong or expired."""


def secret_bytes(secret: str | bytes | None = None) -> bytes:
    """The signing secret: the one given, else ``$LOOKALIKE_URL_SECRET``; at least 16 bytes."""
    if secret is None:
        secret = os.environ.get(URL_SECRET_ENV, "")
        if not secret:
            raise BadInputError(
                f"no URL secret: pass --url-secret or set {URL_SECRET_ENV} "
                "(the same one the server uses)"
            )
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(raw) < MIN_SECRET_BYTES:
        raise BadInputError(f"a URL secret needs at least {MIN_SECRET_BYTES} bytes")
    return raw


def token(secret: bytes, collection: str, item_id: int, expires: int) -> str:
    """The token granting ``collection``'s image ``item_id`` until ``expires`` (Unix time)."""
    message = f"lookalike-image\0{collection}\0{int(item_id)}\0{int(expires)}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_image_url(
    base_url: str,
    collection: str,
    item_id: int,
    secret: str | bytes | None = None,
    *,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """An absolute link to one image of a server at ``base_url``, valid for ``ttl_s``
    seconds, readable without an API key. ``secret`` defaults to ``$LOOKALIKE_URL_SECRET``."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 0 < ttl_s <= MAX_TTL_S:
        raise BadInputError(f"a link's lifetime must be 1 to {MAX_TTL_S} seconds")
    if not base_url.lower().startswith(("http://", "https://")):
        raise BadInputError(f"the server URL must start with http:// or https://: {base_url!r}")
    key = secret_bytes(secret)
    expires = int(time.time() if now is None else now) + ttl_s
    signature = token(key, collection, item_id, expires)
    path = f"/v1/collections/{quote(collection, safe='')}/items/{int(item_id)}/image"
    return f"{base_url.rstrip('/')}{path}?expires={expires}&token={signature}"


def check_token(
    secret: bytes,
    collection: str,
    item_id: int,
    expires: str,
    given: str,
    *,
    now: float | None = None,
) -> None:
    """Raise :class:`BadTokenError` unless ``given`` grants this image until ``expires``,
    a time not yet past. Compared in constant time."""
    if not expires.isdigit() or len(expires) > 12:
        raise BadTokenError("a signed link needs 'expires' as a Unix time")
    if int(expires) < (time.time() if now is None else now):
        raise BadTokenError("this signed link has expired")
    expected = token(secret, collection, item_id, int(expires))
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        raise BadTokenError("this signed link's token is not valid for this image")
