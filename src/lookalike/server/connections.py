"""Connection limits under uvicorn: deadlines for the request head, body and idle time, and a
cap on open connections, so slow or silent clients cannot hold sockets (slowloris).

uvicorn's h11 protocol only times out a connection that is idle after a response: a socket that
never sends a request, or sends its head a byte at a time, stays open for ever. Its
``limit_concurrency`` answers 503 once the connections are many, but keeps them all open, so a
flood of silent sockets still runs the process out of file descriptors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import resource
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServerSettings

log = logging.getLogger("lookalike.server")

FD_HEADROOM = 128  # descriptors kept for collection files, shards, logs and thread pools
BODY_GRACE_S = 1.0  # the guard answers 408 at the body deadline; the socket closes after


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines and connection cap of ``settings``."""

    def __init__(self, *args: Any, settings: ServerSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.deadline: asyncio.TimerHandle | None = None
        self.deadline_kind = ""
        self.idle_since: float | None = None  # waiting for a request (none yet or between two)

    def connection_made(self, transport: asyncio.Transport) -> None:
        """Make room under the connection cap, then give the client the head timeout."""
        super().connection_made(transport)
        self.idle_since = time.monotonic()
        if not self._make_room():
            return
        self._arm("head", self.settings.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm()
        self.idle_since = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Start the head deadline with the first byte of a request on a kept-alive
        connection, then follow the request's progress."""
        if self.conn.their_state is h11.IDLE and self.deadline_kind != "head":
            self._arm("head", self.settings.header_timeout_s)
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        """After a response: the body may still be arriving, or the next request may."""
        super().on_response_complete()
        self._follow()

    def _follow(self) -> None:
        """Move the deadline along with the request: head, then body, then idle."""
        state = self.conn.their_state
        if state is h11.IDLE:
            if self.idle_since is None:
                self.idle_since = time.monotonic()
            if self.deadline is None and self.timeout_keep_alive_task is None:
                # a body that ended after its response left no keep-alive timer running
                self._arm("idle", self.settings.keep_alive_s)
        elif state is h11.SEND_BODY:
            self.idle_since = None
            if self.deadline_kind != "body":
                self._arm("body", self.settings.body_timeout_s + BODY_GRACE_S)
        else:  # the request is in; its answer is the app's business
            self.idle_since = None
            self._disarm()

    def _arm(self, kind: str, seconds: float) -> None:
        self._disarm()
        self.deadline_kind = kind
        self.deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = None
        self.deadline_kind = ""

    def _expired(self) -> None:
        kind = self.deadline_kind
        self.deadline = None
        self.deadline_kind = ""
        if self.transport.is_closing():
            return
        partial_head = kind == "head" and bool(self.conn.trailing_data[0])
        if partial_head and self.conn.our_state is h11.IDLE:
            seconds = self.settings.header_timeout_s
            self._close_with(
                408, "header_timeout", f"the request head did not arrive within {seconds:g} s"
            )
        else:
            self.transport.close()

    def _make_room(self) -> bool:
        """Within the cap, or room made by closing the longest-idle connection: True.
        Otherwise this connection is answered 503 and closed."""
        if len(self.connections) <= self.settings.max_connections:
            return True
        idle = [
            other
            for other in self.connections
            if other is not self and getattr(other, "idle_since", None) is not None
        ]
        if idle:
            oldest = min(idle, key=lambda other: other.idle_since)
            oldest.transport.close()
            oldest.connections.discard(oldest)  # counted out now, not when the loop gets to it
            return True
        log.warning("%d connections are busy: refusing one", len(self.connections) - 1)
        self._close_with(503, "too_many_connections", "the server is busy; retry shortly")
        return False

    def _close_with(self, status: int, code: str, message: str) -> None:
        """Write a JSON error in the project's shape and close: for moments when no request
        cycle exists to answer through."""
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        reason = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
        head = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        head += b"content-type: application/json\r\nconnection: close\r\n"
        head += b"content-length: %d\r\n\r\n" % len(body)
        self.transport.write(head + body)
        self.transport.close()


def max_connections(settings: ServerSettings) -> int:
    """The connection cap, lowered to what the process' open-file limit allows."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    return max(8, min(settings.max_connections, soft - FD_HEADROOM))


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """uvicorn.Config options that apply ``settings``' connection limits and proxy trust."""
    capped = dataclasses.replace(settings, max_connections=max_connections(settings))
    return {
        "http": functools.partial(GuardedH11Protocol, settings=capped),  # picklable for workers
        "timeout_keep_alive": settings.keep_alive_s,
        # X-Forwarded-For is a header anyone can send: believed only from named proxies
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies) or None,
    }
