"""Connection limits under uvicorn: deadlines for the request head, body and idle time, and a
cap on open connections, so slow or silent clients cannot hold sockets (slowloris).

uvicorn's protocols (h11, httptools) only time out a connection that is idle after a response: a
socket that never sends a request, or sends its head a byte at a time, stays open for ever. Its
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

try:  # the server extra brings httptools; without it, h11 parses requests in Python
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:
    HttpToolsProtocol = None

from ..errors import BadInputError
from .settings import ServerSettings

log = logging.getLogger("lookalike.server")

FD_HEADROOM = 128  # descriptors kept for collection files, shards, logs and thread pools
BODY_GRACE_S = 1.0  # the guard answers 408 at the body deadline; the socket closes after


class _Deadlines:
    """Deadlines and the connection cap, for a uvicorn HTTP protocol class that follows it in
    the bases. The protocol says where its client is through :meth:`_stage`."""

    settings: ServerSettings
    connections: set[Any]
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    timeout_keep_alive_task: asyncio.TimerHandle | None

    def _init_deadlines(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.deadline: asyncio.TimerHandle | None = None
        self.deadline_kind = ""
        self.idle_since: float | None = None  # waiting for a request (none yet or between two)

    def connection_made(self, transport: asyncio.Transport) -> None:
        """Make room under the connection cap, then give the client the head timeout."""
        super().connection_made(transport)  # type: ignore[misc]
        self._start()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm()
        self.idle_since = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _stage(self) -> str:
        """Where the client is: "idle" (no request, or a partial head), "body" (sending a
        body) or "app" (its request is in: the answer is the app's business)."""
        raise NotImplementedError

    def _partial_head(self) -> bool:
        """Whether part of a request head has arrived while no answer is under way."""
        raise NotImplementedError

    def _start(self) -> bool:
        """For connection_made: make room under the connection cap, then give the client the
        head timeout; False when the connection was refused."""
        self.idle_since = time.monotonic()
        if not self._make_room():
            return False
        self._arm("head", self.settings.header_timeout_s)
        return True

    def _follow(self) -> None:
        """Move the deadline along with the request: head, then body, then idle."""
        stage = self._stage()
        if stage == "idle":
            if self.idle_since is None:
                self.idle_since = time.monotonic()
            if self.deadline is None and self.timeout_keep_alive_task is None:
                # a body that ended after its response left no keep-alive timer running
                self._arm("idle", self.settings.keep_alive_s)
        elif stage == "body":
            self.idle_since = None
            if self.deadline_kind != "body":
                self._arm("body", self.settings.body_timeout_s + BODY_GRACE_S)
        else:
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
        if kind == "head" and self._partial_head():
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


class GuardedH11Protocol(_Deadlines, H11Protocol):
    """uvicorn's h11 protocol (pure Python) with the deadlines and connection cap of
    ``settings``."""

    def __init__(self, *args: Any, settings: ServerSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_deadlines(settings)

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

    def _stage(self) -> str:
        state = self.conn.their_state
        return "idle" if state is h11.IDLE else "body" if state is h11.SEND_BODY else "app"

    def _partial_head(self) -> bool:
        return bool(self.conn.trailing_data[0]) and self.conn.our_state is h11.IDLE


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(_Deadlines, HttpToolsProtocol):
        """uvicorn's httptools protocol (a C parser: about 0.1 ms less CPU a request than
        h11) with the same deadlines and cap, following the request through the parser's
        callbacks."""

        def __init__(self, *args: Any, settings: ServerSettings, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._init_deadlines(settings)
            self.reading = "idle"  # "head", "body", then "app" once the request is in

        def data_received(self, data: bytes) -> None:
            """Start the head deadline with the first byte of a request on a kept-alive
            connection, then follow the request's progress."""
            if self.reading == "idle" and self.deadline_kind != "head":
                self._arm("head", self.settings.header_timeout_s)
            super().data_received(data)
            self._follow()

        def on_message_begin(self) -> None:
            """A request head starts."""
            super().on_message_begin()
            self.reading = "head"

        def on_headers_complete(self) -> None:
            """The head is in; a body may follow."""
            super().on_headers_complete()
            self.reading = "body"

        def on_message_complete(self) -> None:
            """The whole request is in."""
            super().on_message_complete()
            self.reading = "app"

        def on_response_complete(self) -> None:
            """After a response: the body may still be arriving, a pipelined request may be
            starting, or the connection waits for the next one."""
            super().on_response_complete()
            if self.reading == "app" and self.cycle.response_complete:
                self.reading = "idle"  # the newest request read is answered
            self._follow()

        def _stage(self) -> str:
            return "app" if self.reading == "app" else "body" if self.reading == "body" else "idle"

        def _partial_head(self) -> bool:
            answering = self.cycle is not None and not self.cycle.response_complete
            return self.reading == "head" and not answering


def max_connections(settings: ServerSettings) -> int:
    """The connection cap, lowered to what the process' open-file limit allows."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    return max(8, min(settings.max_connections, soft - FD_HEADROOM))


def uvicorn_options(settings: ServerSettings, http: str = "auto") -> dict[str, Any]:
    """uvicorn.Config options that apply ``settings``' connection limits and proxy trust.
    ``http``: "httptools", "h11" or "auto" (httptools where installed)."""
    capped = dataclasses.replace(settings, max_connections=max_connections(settings))
    if http == "auto":
        http = "h11" if HttpToolsProtocol is None else "httptools"
    if http == "httptools" and HttpToolsProtocol is None:
        raise BadInputError("httptools is not installed: pip install 'lookalike[server]'")
    protocol = GuardedHttpToolsProtocol if http == "httptools" else GuardedH11Protocol
    return {
        "http": functools.partial(protocol, settings=capped),  # picklable for workers
        "timeout_keep_alive": settings.keep_alive_s,
        # X-Forwarded-For is a header anyone can send: believed only from named proxies
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies) or None,
    }
