"""Fetch-bound work (requests that download URLs) runs on threads of its own.

Starlette runs blocking work on one shared pool of threads; requests waiting on slow URLs
could fill it, and then even ``/health`` waits. Such requests run here instead, a bounded
number at a time, and are turned away with 503 when too many are waiting already.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import BusyError

T = TypeVar("T")


class FetchWork:
    """At most ``threads`` fetch-bound calls at once, as many more queued; the rest refused."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError("fetch_threads must be at least 1")
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lookalike-url-work")
        self._admitted = threading.BoundedSemaphore(threads * 2)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on a fetch thread; raises BusyError at once when none is near."""
        if not self._admitted.acquire(blocking=False):
            raise BusyError("too many requests are fetching URLs; try again shortly")
        try:
            future = self._pool.submit(function, *args)
        except BaseException:
            self._admitted.release()
            raise
        # released when the work ends, not when a client gives up: the thread is busy till then
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: Future[Any]) -> None:
        self._admitted.release()
