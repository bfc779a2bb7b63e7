"""Requests that fetch URLs get one deadline each and threads of their own.

A hostile server on 127.0.0.1 trickles its answers; the lookalike server runs under uvicorn
on another loopback port. Nothing leaves loopback.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import encode, serve_app
from lookalike import Collection
from lookalike.demo import draw_image
from lookalike.fetch import FetchPolicy
from lookalike.server import ServerSettings, create_app
from test_fetch import Server, _serve

DEADLINE = 2.0
SEARCH = "/v1/collections/c/search"
ITEMS = "/v1/collections/c/items"
TIMED_OUT = f"timed out: this request's URLs took more than {DEADLINE:g} s"


@pytest.fixture(scope="module")
def collection(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, Path]
) -> Iterator[Collection]:
    spec, weights = tiny_clip
    policy = FetchPolicy(allow_private=True, deadline=DEADLINE)
    col = Collection.create(
        tmp_path_factory.mktemp("url-work") / "col", spec, weights=weights, fetch_policy=policy
    )
    assert col.add_images([encode(draw_image(i, (40, 32))) for i in range(3)]).added == 3
    yield col
    col.close()


@pytest.fixture(scope="module")
def api(collection: Collection) -> Iterator[httpx.Client]:
    """A client of a server that runs at most 4 URL-fetching requests at once (4 more wait).

    One client for every call, safe across threads: a new one per call would spend the time
    the tests measure setting up TLS contexts.
    """
    app = create_app({"c": collection}, ServerSettings(fetch_threads=4))
    limits = httpx.Limits(max_connections=64)
    with serve_app(app) as base, httpx.Client(base_url=base, limits=limits, timeout=15) as client:
        yield client


@pytest.fixture
def hostile() -> Iterator[Server]:
    yield from _serve(Server())


def timed(call: Any) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_slow_url_searches_never_hold_up_other_requests(api: httpx.Client, hostile: Server) -> None:
    slow = {"url": hostile.url("/slow")}  # a byte every 0.1 s
    assert api.get(f"{ITEMS}/0/thumbnail").status_code == 200  # made and cached beforehand
    with ThreadPoolExecutor(40) as pool:
        started = time.monotonic()
        searches = [pool.submit(timed, lambda: api.post(SEARCH, json=slow)) for _ in range(40)]
        time.sleep(0.5)  # every one of them has arrived
        for path in ("/health", f"{ITEMS}/0/thumbnail", f"{ITEMS}/0"):
            answer, took = timed(functools.partial(api.get, path, timeout=5))
            assert answer.status_code == 200 and took < 1, (path, took)
        by_id, took = timed(lambda: api.post(SEARCH, json={"id": 1, "k": 2}, timeout=5))
        assert by_id.status_code == 200 and took < 1, took
        outcomes = [future.result(timeout=30) for future in searches]
        took_all = time.monotonic() - started
    refused = [took for answer, took in outcomes if answer.status_code == 503]
    failed = [answer for answer, _ in outcomes if answer.status_code != 503]
    assert len(failed) == 8  # 4 fetching, 4 waiting
    assert all(error_of(answer, 400)["message"] == TIMED_OUT for answer in failed)
    assert max(refused) < 1  # turned away at once, not queued
    busy = next(answer for answer, _ in outcomes if answer.status_code == 503)
    assert error_of(busy, 503)["code"] == "busy" and busy.headers["retry-after"]
    assert took_all < 2 * DEADLINE + 2  # two rounds of 4, each under one deadline


def test_a_search_with_several_trickling_urls_ends_at_one_deadline(
    api: httpx.Client, hostile: Server
) -> None:
    parts = [{"url": hostile.url(path)} for path in ("/slow", "/slow-headers", "/stall", "/slow")]
    answer, took = timed(lambda: api.post(SEARCH, json={"query": parts}))
    assert error_of(answer, 400) == {"code": "fetch_failed", "message": TIMED_OUT}
    assert DEADLINE - 0.2 < took < DEADLINE + 1.5
    assert len(hostile.requests) == 4  # fetched together, not one after another


def test_knn_service_image_url_ends_at_the_deadline(api: httpx.Client, hostile: Server) -> None:
    slow = {"image_url": hostile.url("/slow")}
    answer, took = timed(lambda: api.post("/knn-service", json=slow))
    # clip-retrieval's route answers [] for what it cannot serve, saying why in a header
    assert (answer.status_code, answer.json()) == (200, [])
    assert TIMED_OUT in answer.headers["x-lookalike-error"]
    assert took < DEADLINE + 1.5
    compressed = api.post("/knn-service", json={"image_url": hostile.url("/gzip")})
    assert compressed.json() == []
    assert "Content-Encoding: gzip" in compressed.headers["x-lookalike-error"]


def test_a_url_ingest_ends_at_one_deadline(
    api: httpx.Client, hostile: Server, http_root: tuple[Path, str]
) -> None:
    folder, files = http_root
    (folder / "fine.png").write_bytes(encode(draw_image(50, (40, 32))))
    slow = [hostile.url(f"/slow?{i}") for i in range(4)]
    answer, took = timed(lambda: api.post(ITEMS, json={"urls": [*slow, f"{files}/fine.png"]}))
    assert answer.status_code == 200, answer.text
    assert took < DEADLINE + 1.5  # each URL had its own 30 s before: 2 minutes
    report = answer.json()
    assert report["added"] == 1 and report["items"][0]["url"] == f"{files}/fine.png"
    assert report["failed"] == [{"source": url, "reason": TIMED_OUT} for url in slow]


def test_a_thumbnail_of_a_trickling_url_ends_at_the_deadline(
    api: httpx.Client, collection: Collection, hostile: Server
) -> None:
    vector = collection.embed(image=encode(draw_image(60, (40, 32))))
    [item] = collection.add_vectors([vector], [hostile.url("/slow")])
    answer, took = timed(lambda: api.get(f"{ITEMS}/{item}/thumbnail"))
    assert error_of(answer, 400)["message"] == TIMED_OUT
    assert took < DEADLINE + 1.5
