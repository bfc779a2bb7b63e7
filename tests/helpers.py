"""Helpers that test modules import (fixtures live in conftest.py): encoding images, and
running an app on a loopback port."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator

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


def searched_during(
    ingest: Callable[[], object], served: object, final_body: dict
) -> tuple[int, set[int], dict]:
    """Runs ``ingest`` in a thread while a server over ``served`` (as collection "photos")
    answers search-by-id-0 requests in a loop, each checked to be a 200. Returns the searches
    answered, the result counts they saw, and the answer to ``final_body`` once the ingest
    has ended; an error of the ingest is raised here."""
    import httpx

    from lookalike.server import create_app

    done = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            ingest()
        except BaseException as error:  # raised below, in the test's thread
            failures.append(error)
        finally:
            done.set()

    answered, sizes = 0, set()
    with serve_app(create_app({"photos": served})) as base, httpx.Client(base_url=base) as http:
        thread = threading.Thread(target=run)
        thread.start()
        while not done.is_set():
            answer = http.post("/v1/collections/photos/search", json={"id": 0, "k": 100})
            assert answer.status_code == 200, answer.text
            answered += 1
            sizes.add(len(answer.json()["results"]))
        thread.join(60)
        final = http.post("/v1/collections/photos/search", json=final_body).json()
    if failures:
        raise failures[0]
    return answered, sizes, final
