"""What a server operator can set."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import BadInputError

API_KEYS_ENV = "LOOKALIKE_API_KEYS"


@dataclass(frozen=True)
class ServerSettings:
    """Limits, keys and exposure of one server."""

    max_k: int = 1000
    max_batch: int = 100  # searches one batch request may hold
    max_body_bytes: int = 32 * 1024 * 1024
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()  # none: CORS off
    rate_limit_per_minute: int = 0  # per client address; 0: off
    auth_failures_per_minute: int = 10  # wrong API keys per client address, then 429; 0: off
    header_timeout_s: float = 10.0  # longest time from connecting to the end of a request head
    body_timeout_s: float = 60.0  # longest time from the request head to the end of its body
    keep_alive_s: float = 5.0  # how long an idle connection stays open between requests
    max_connections: int = 1000  # open connections per process; idle ones go first when full
    trusted_proxies: tuple[str, ...] = ()  # addresses whose X-Forwarded-For is believed
    thumbnail_side: int = 256
    default_k: int = 20
    show_paths: bool = False  # hits and items carry their path relative to the indexed folder
    fetch_threads: int = 8  # requests fetching URLs at once (as many queue; more get 503)
    public_url: str | None = None  # base of absolute links behind a proxy; default: the request's
    clip_front: bool = False  # serve clip-retrieval's web front end at /clip-front/
    caption_columns: tuple[str, ...] = ()  # "COLUMN" for every collection or "NAME=COLUMN"
    max_export_k: int = 100_000  # results one streamed export may ask for
    url_secret: str | None = None  # signs image links (lookalike.signing); None: made at start

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s", "max_connections"):
            if not getattr(self, name) > 0:  # 0 or NaN would close every connection at once
                raise BadInputError(f"{name} must be positive, not {getattr(self, name)}")
        batch = self.max_batch
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise BadInputError(f"max_batch must be a positive integer, not {self.max_batch!r}")
        if self.public_url is not None and not self.public_url.lower().startswith(
            ("http://", "https://")
        ):
            raise BadInputError(
                f"the public URL must start with http:// or https://, not {self.public_url!r}"
            )
        for entry in self.caption_columns:
            if not _split_caption_column(entry)[1]:
                raise BadInputError(
                    f"caption column {entry!r} must look like COLUMN or NAME=COLUMN"
                )

    def check_caption_columns(self, served: Iterable[str]) -> None:
        """Raise unless every collection given a caption column of its own is served."""
        named = {n for n, _ in map(_split_caption_column, self.caption_columns) if n is not None}
        unknown = sorted(named - set(served))
        if unknown:
            raise BadInputError(f"a caption column is set for {unknown[0]!r}, which is not served")

    def caption_column(self, collection: str) -> str:
        """The metadata column that holds a collection's captions (default ``caption``)."""
        chosen = "caption"
        for entry in self.caption_columns:
            name, column = _split_caption_column(entry)
            if name is None:
                chosen = column
            elif name == collection:
                return column
        return chosen

    @classmethod
    def with_env_keys(cls, **options: Any) -> ServerSettings:
        """Settings whose API keys also come from $LOOKALIKE_API_KEYS (comma-separated)."""
        keys: tuple[str, ...] = tuple(options.pop("api_keys", ()) or ())
        from_env = tuple(
            k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()
        )
        return cls(api_keys=keys + from_env, **options)


def is_local_host(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def _split_caption_column(entry: str) -> tuple[str | None, str]:
    """(collection name or None for all, column) of a "COLUMN" or "NAME=COLUMN" entry."""
    name, sep, column = entry.partition("=")
    return (name, column) if sep else (None, name)
