"""Slow clients (slowloris): a client that trickles or withholds its request, or idles, is cut
off within a deadline; connections are capped; others keep being served."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from typer.testing import CliRunner

from helpers import serve_app
from lookalike import BadInputError, Collection, cli
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


# --- slowloris: every stage of a request has a deadline, and connections a cap ---------------

HEAD_S = 1.0
BODY_S = 1.5
IDLE_S = 1.0
CAP = 40
LIMITS = ServerSettings(
    header_timeout_s=HEAD_S, body_timeout_s=BODY_S, keep_alive_s=IDLE_S, max_connections=CAP
)


@pytest.fixture(scope="module", params=["h11", "httptools"])
def limited(
    tiny_clip: tuple[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[str]:
    """Base URL of a server run as ``lookalike serve`` runs it, with 1-2 s deadlines, with
    each HTTP protocol: h11 (pure Python) and httptools (the server extra's C parser)."""
    if request.param == "httptools":
        pytest.importorskip("httptools")
    spec, weights = tiny_clip
    collection = Collection.create(tmp_path_factory.mktemp("slow") / "col", spec, weights=weights)
    with serve_app(create_app({"c": collection}, LIMITS), LIMITS, request.param) as base:
        yield base
    collection.close()


def connect(base: str) -> socket.socket:
    address = urlsplit(base)
    return socket.create_connection((address.hostname, address.port), timeout=10)


def until_closed(sock: socket.socket, limit: float = 10) -> tuple[bytes, float]:
    """(all the server sent, seconds) until it closed the connection; fails after ``limit``."""
    started = time.monotonic()
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def trickle(sock: socket.socket, data: bytes, every: float = 0.2, limit: float = 10) -> float:
    """Send ``data`` a byte every ``every`` s (then spaces), whatever the server answers, until
    it closes the connection; the seconds that took. Fails after ``limit``."""
    started = time.monotonic()
    position = 0
    while time.monotonic() - started < limit:
        try:
            sock.sendall(data[position : position + 1] or b" ")
            position += 1
            if select.select([sock], [], [], every)[0] and not sock.recv(4096):
                return time.monotonic() - started
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    raise AssertionError(f"the connection was still open after {limit} s")


def health_time(base: str) -> float:
    started = time.monotonic()
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    return time.monotonic() - started


def test_a_silent_connection_is_closed(limited: str) -> None:
    with connect(limited) as silent:
        received, waited = until_closed(silent)
    assert received == b""
    assert HEAD_S * 0.8 < waited < HEAD_S + 1.5


def test_a_half_sent_request_line_gets_408_and_is_closed(limited: str) -> None:
    with connect(limited) as half:
        half.sendall(b"GET /hea")
        received, waited = until_closed(half)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b'"header_timeout"' in received
    assert waited < HEAD_S + 1.5


def test_headers_trickled_a_byte_at_a_time_are_cut_off(limited: str) -> None:
    with connect(limited) as slow:
        waited = trickle(slow, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100)
    assert waited < HEAD_S + 1.5


@pytest.mark.parametrize("path", ["/v1/collections/c/search", "/health"])
def test_a_body_trickled_a_byte_at_a_time_is_cut_off(limited: str, path: str) -> None:
    # the search reads its body (the guard answers 408); /health answers 405 without reading it
    with connect(limited) as slow:
        slow.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
        )
        waited = trickle(slow, b'{"text": "' + b"a" * 1000)
    assert waited < BODY_S + 2.5  # 1 s after the guard's deadline, the socket closes


def test_an_idle_kept_alive_connection_is_closed(limited: str) -> None:
    with connect(limited) as kept:
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        received, waited = until_closed(kept)
    assert received.startswith(b"HTTP/1.1 200")
    assert waited < IDLE_S + 1.5


def test_health_answers_while_many_slow_connections_are_open(limited: str) -> None:
    openers = [b"", b"GET /hea", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: aa"]
    slow = []
    try:
        for i in range(2 * CAP + 20):
            sock = connect(limited)
            sock.sendall(openers[i % 3])
            slow.append(sock)
        worst = max(health_time(limited) for _ in range(10))
        # beyond the cap, the longest-idle connections made room for the newer ones at once
        time.sleep(0.3)
        closed = sum(1 for sock in slow if select.select([sock], [], [], 0)[0])
    finally:
        for sock in slow:
            sock.close()
    assert worst < 1.0, f"/health took {worst:.2f} s"
    assert closed >= CAP + 20, closed


def test_when_every_connection_is_busy_a_new_one_gets_503(limited: str) -> None:
    busy = []
    try:
        for _ in range(CAP):  # requests in progress: their bodies are still coming
            sock = connect(limited)
            sock.sendall(
                b"POST /v1/collections/c/search HTTP/1.1\r\nHost: x\r\n"
                b'Content-Length: 1000\r\n\r\n{"te'
            )
            busy.append(sock)
        time.sleep(0.2)
        with connect(limited) as late:
            received, waited = until_closed(late)
        assert received.startswith(b"HTTP/1.1 503"), received[:200]
        assert b'"too_many_connections"' in received and waited < 0.5
    finally:
        for sock in busy:
            sock.close()
    time.sleep(0.2)
    assert health_time(limited) < 1.0


@pytest.mark.parametrize(
    ("option", "setting"),
    [
        ("--header-timeout", "header_timeout_s"),
        ("--body-timeout", "body_timeout_s"),
        ("--keep-alive", "keep_alive_s"),
        ("--max-connections", "max_connections"),
    ],
)
def test_deadlines_and_the_connection_cap_must_be_positive(option: str, setting: str) -> None:
    with pytest.raises(BadInputError, match=setting):
        ServerSettings(**{setting: 0})
    result = CliRunner().invoke(cli.app, ["serve", "nowhere", option, "0"])
    assert isinstance(result.exception, BadInputError) and setting in str(result.exception)


def test_pipelined_requests_are_all_answered_then_the_connection_idles_out(limited: str) -> None:
    with connect(limited) as kept:
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        received, waited = until_closed(kept)
    assert received.count(b"HTTP/1.1 200") == 3, received[:600]
    assert waited < IDLE_S + 1.5
