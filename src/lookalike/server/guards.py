"""ASGI middleware in front of every route: API keys, body size limit, rate limit, metrics."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .metrics import Metrics
from .settings import ServerSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = ("/health", "/static/", "/favicon.ico")


class BodyTooLarge(Exception):
    """Raised inside receive() once a body passes the limit."""


class BodyTimeout(Exception):
    """Raised inside receive() when a body chunk takes longer than the timeout to arrive."""


class Guard:
    """Checks keys, limits bodies and request rates, and counts requests, before the app runs."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.keys = [k.encode() for k in settings.api_keys]
        self.buckets = RateBuckets(settings.rate_limit_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_seen: list[int] = []

        async def send_tracking(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, send_tracking)
        finally:
            self.metrics.observe(
                scope, status_seen[0] if status_seen else 500, time.perf_counter() - started
            )

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        if self.keys and not _is_public(path) and not self._key_ok(headers):
            await _reply(
                send,
                401,
                "unauthorized",
                "missing or wrong API key: send 'Authorization: Bearer KEY' or 'x-api-key'",
            )
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = 0 if path == "/health" else self.buckets.take(client)  # probes stay answered
        if wait:
            await _reply(
                send,
                429,
                "rate_limited",
                f"too many requests; retry in {wait} s",
                [(b"retry-after", str(wait).encode())],
            )
            return
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _reply(send, 413, "body_too_large", f"request body exceeds {limit} bytes")
            return
        received = 0
        started = False

        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.settings.body_timeout_s)
            except asyncio.TimeoutError:
                raise BodyTimeout from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _reply(send, 413, "body_too_large", f"request body exceeds {limit} bytes")
        except BodyTimeout:
            if not started:
                await _reply(send, 408, "body_timeout", "the request body arrived too slowly")

    def _key_ok(self, headers: dict[str, bytes]) -> bool:
        given = headers.get("x-api-key", b"")
        auth = headers.get("authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        # compare against every key in constant time, without stopping at a match
        matches = [hmac.compare_digest(given, key) for key in self.keys]
        return bool(given) and any(matches)


class RateBuckets:
    """A token bucket per client address: ``per_minute`` requests, refilled continuously."""

    def __init__(self, per_minute: int, max_clients: int = 100_000) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.max_clients = max_clients
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, client: str) -> int:
        """0 when the request may go ahead, else seconds to wait."""
        if self.rate <= 0:
            return 0
        now = time.monotonic()
        with self.lock:
            if len(self.buckets) > self.max_clients:
                self.buckets.clear()
            tokens, last = self.buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < 1:
                self.buckets[client] = (tokens, now)
                return max(1, math.ceil((1 - tokens) / self.rate))
            self.buckets[client] = (tokens - 1, now)
            return 0


def _is_public(path: str) -> bool:
    return path == "/" or any(path == p or path.startswith(p) for p in PUBLIC_PATHS if p)


async def _reply(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
