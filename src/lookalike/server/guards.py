"""ASGI middleware in front of every route: API keys, body size limit, rate limit, metrics."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from ..signing import BadTokenError, check_token
from .metrics import Metrics
from .settings import ServerSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = ("/health", "/static/", "/favicon.ico")
# the one route a signed link opens, without an API key: lookalike.signing
SIGNED_IMAGE = re.compile(r"/v1/collections/([^/]+)/items/([0-9]{1,19})/image")


class BodyTooLarge(Exception):
    """Raised inside receive() once a body passes the limit."""


class BodyTimeout(Exception):
    """Raised inside receive() when the body is not complete within the timeout."""


class Guard:
    """Checks keys, limits bodies and request rates, and counts requests, before the app runs."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.keys = [k.encode() for k in settings.api_keys]
        self.buckets = RateBuckets(settings.rate_limit_per_minute)
        self.auth_failures = RateBuckets(settings.auth_failures_per_minute)
        self.url_secret = (settings.url_secret or "").encode()

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
        # the client as uvicorn saw it: X-Forwarded-For counts only from --trust-proxy addresses
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = 0 if path == "/health" else self.buckets.take(client)  # probes stay answered
        if wait:
            await _too_many(send, "rate_limited", "too many requests", wait)
            return
        signed = _signed_image(scope)
        if signed is not None:  # a signed link: its token stands in for a key, for this image
            if not await self._token_ok(client, signed, send):
                return
        elif self.keys and not _is_public(path):
            # checked before the key, so that guessing goes no faster once a right key is hit
            wait = self.auth_failures.waiting(client)
            if wait:
                await _too_many(send, "auth_rate_limited", "too many wrong API keys", wait)
                return
            if not self._key_ok(headers):
                self.auth_failures.take(client)
                await _reply(
                    send,
                    401,
                    "unauthorized",
                    "missing or wrong API key: send 'Authorization: Bearer KEY' or 'x-api-key'",
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
        # one deadline for the whole body: a timeout per chunk let 1 byte / 20 s go on forever
        deadline = time.monotonic() + self.settings.body_timeout_s

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect: no deadline
                return await receive()
            try:
                message = await _within(receive(), deadline)
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
                await _reply(
                    send,
                    408,
                    "body_timeout",
                    f"the request body did not arrive within {self.settings.body_timeout_s:g} s",
                    [(b"connection", b"close")],  # the rest of the body may still be coming
                )

    async def _token_ok(self, client: str, signed: tuple[str, int, str, str], send: Send) -> bool:
        """Whether a signed link's token grants its image; answers 403 or 429 when not.
        Wrong tokens count as wrong keys: guessing them is slowed the same way."""
        wait = self.auth_failures.waiting(client)
        if wait:
            await _too_many(send, "auth_rate_limited", "too many wrong API keys or tokens", wait)
            return False
        try:
            if not self.url_secret:
                raise BadTokenError("this server signs no image links")
            check_token(self.url_secret, *signed)
        except BadTokenError as error:
            self.auth_failures.take(client)
            await _reply(send, 403, "bad_token", str(error))
            return False
        return True

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
        return self._take(client, 1.0)

    def waiting(self, client: str) -> int:
        """What :meth:`take` would answer, without taking anything."""
        return self._take(client, 0.0)

    def _take(self, client: str, cost: float) -> int:
        if self.rate <= 0 or (not cost and client not in self.buckets):
            return 0  # a look at a client never seen keeps no bucket for it
        now = time.monotonic()
        with self.lock:
            if len(self.buckets) > self.max_clients:
                self.buckets.clear()
            tokens, last = self.buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < 1:
                self.buckets[client] = (tokens, now)
                return max(1, math.ceil((1 - tokens) / self.rate))
            self.buckets[client] = (tokens - cost, now)
            return 0


async def _within(waiting: Awaitable[Message], deadline: float) -> Message:
    """``await waiting``, or asyncio.TimeoutError at ``deadline`` (time.monotonic's clock).
    Python 3.11's asyncio.timeout costs no task per call, where wait_for makes one: this runs
    for every request."""
    left = max(0.0, deadline - time.monotonic())
    if sys.version_info < (3, 11):
        return await asyncio.wait_for(waiting, left)
    async with asyncio.timeout(left):
        return await waiting


def _signed_image(scope: Scope) -> tuple[str, int, str, str] | None:
    """(collection, id, expires, token) of a request for an image by a signed link, or None
    when the request carries no token (the route then needs an API key as any other)."""
    match = SIGNED_IMAGE.fullmatch(scope["path"])
    if match is None:
        return None
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if "token" not in query:
        return None
    expires = query.get("expires", [""])[-1]
    return match.group(1), int(match.group(2)), expires, query["token"][-1]


def _is_public(path: str) -> bool:
    return path == "/" or any(path == p or path.startswith(p) for p in PUBLIC_PATHS if p)


async def _too_many(send: Send, code: str, what: str, wait: int) -> None:
    """429 with the seconds to wait."""
    await _reply(
        send, 429, code, f"{what}; retry in {wait} s", [(b"retry-after", str(wait).encode())]
    )


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
