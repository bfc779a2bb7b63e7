"""Helpers that test modules import (fixtures live in conftest.py): encoding images, and
running an app on a loopback port."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator

from PIL import Image

from lookalike.server.settings import ServerSettings


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    """Image -> encoded bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@contextlib.contextmanager
def serve_app(
    app: object, settings: ServerSettings | None = None, http: str = "auto"
) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL.
    With ``settings``, uvicorn runs as ``lookalike serve`` runs it (connection limits, proxy
    trust), with the ``http`` protocol ("h11", "httptools" or "auto")."""
    import uvicorn

    from lookalike.server.connections import uvicorn_options

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = uvicorn_options(settings, http) if settings is not None else {}
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
