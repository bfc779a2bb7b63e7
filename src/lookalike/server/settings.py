"""What a server operator can set."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import BadInputError

API_KEYS_ENV = "LOOKALIKE_API_KEYS"


@dataclass(frozen=True)
class ServerSettings:
    """Limits, keys and exposure of one server."""

    max_k: int = 1000
    max_body_bytes: int = 32 * 1024 * 1024
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()  # none: CORS off
    rate_limit_per_minute: int = 0  # per client address; 0: off
    body_timeout_s: float = 30.0  # longest wait for the next chunk of a request body
    thumbnail_side: int = 256
    default_k: int = 20
    public_url: str | None = None  # base of absolute links behind a proxy; default: the request's
    clip_front: bool = False  # serve clip-retrieval's web front end at /clip-front/
    caption_columns: tuple[str, ...] = ()  # "COLUMN" for every collection or "NAME=COLUMN"

    def __post_init__(self) -> None:
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
    def with_env_keys(cls, **options: object) -> ServerSettings:
        """Settings whose API keys also come from $LOOKALIKE_API_KEYS (comma-separated)."""
        keys = tuple(options.pop("api_keys", ()) or ())  # type: ignore[arg-type]
        from_env = tuple(
            k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()
        )
        return cls(api_keys=keys + from_env, **options)  # type: ignore[arg-type]


def _split_caption_column(entry: str) -> tuple[str | None, str]:
    """(collection name or None for all, column) of a "COLUMN" or "NAME=COLUMN" entry."""
    name, sep, column = entry.partition("=")
    return (name, column) if sep else (None, name)
