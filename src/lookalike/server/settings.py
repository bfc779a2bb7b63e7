"""What a server operator can set."""

from __future__ import annotations

import ipaddress
import os
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

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s", "max_connections"):
            if not getattr(self, name) > 0:  # 0 or NaN would close every connection at once
                raise BadInputError(f"{name} must be positive, not {getattr(self, name)}")

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
