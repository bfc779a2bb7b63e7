"""What a server operator can set."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

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
    show_paths: bool = False  # hits and items carry their path relative to the indexed folder
    fetch_threads: int = 8  # requests fetching URLs at once (as many queue; more get 503)

    @classmethod
    def with_env_keys(cls, **options: object) -> ServerSettings:
        """Settings whose API keys also come from $LOOKALIKE_API_KEYS (comma-separated)."""
        keys = tuple(options.pop("api_keys", ()) or ())  # type: ignore[arg-type]
        from_env = tuple(
            k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()
        )
        return cls(api_keys=keys + from_env, **options)  # type: ignore[arg-type]


def is_local_host(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False
