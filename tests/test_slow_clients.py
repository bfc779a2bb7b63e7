"""A client that trickles its request body is cut off; others keep being served."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from conftest import serve_app
from lookalike import Collection
from lookalike.server import ServerSettings, create_app


def test_a_trickling_body_gets_408_and_the_server_keeps_serving(
    tiny_clip: tuple[str, Path], tmp_path: Path
) -> None:
    spec, weights = tiny_clip
    collection = Collection.create(tmp_path / "col", spec, weights=weights)
    app = create_app({"c": collection}, ServerSettings(body_timeout_s=0.5))
    with serve_app(app) as base:
        address = urlsplit(base)
        with socket.create_connection((address.hostname, address.port), timeout=10) as slow:
            slow.sendall(
                b"POST /v1/collections/c/search HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"te'
            )
            started = time.monotonic()
            assert httpx.get(f"{base}/health", timeout=5).status_code == 200  # not blocked
            received = b""
            while b"body_timeout" not in received and (chunk := slow.recv(4096)):
                received += chunk
            waited = time.monotonic() - started
        answer = received.decode("latin-1")
        assert answer.startswith("HTTP/1.1 408"), answer[:300]
        assert "body_timeout" in answer
        assert 0.3 < waited < 5
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
