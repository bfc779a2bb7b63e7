"""Hostile requests to the HTTP API (issue 9): each is a 4xx in the JSON error shape, logs no
traceback, and costs the server no more than a bounded amount of work on its event loop."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers import encode, serve_app
from lookalike import BadInputError, Collection
from lookalike.demo import draw_image
from lookalike.imaging import ImageLimits
from lookalike.server import ServerSettings, create_app

SEARCH = "/v1/collections/c/search"
ITEMS = "/v1/collections/c/items"
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def collection(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, Path]
) -> Iterator[Collection]:
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("abuse")
    col = Collection.create(
        root / "col", spec, weights=weights, limits=ImageLimits(max_pixels=200_000_000)
    )
    images = [encode(draw_image(i, (40, 32))) for i in range(6)]
    col.add_images(images, metadata=[{"n": i, "even": i % 2 == 0} for i in range(6)])
    yield col
    col.close()


@pytest.fixture(scope="module")
def api(collection: Collection) -> Iterator[TestClient]:
    with TestClient(create_app({"c": collection}), raise_server_exceptions=False) as client:
        yield client


def assert_compat_refusal(response: httpx.Response, reason: str) -> None:
    """A clip-retrieval route's refusal: 200 with [], the reason in X-Lookalike-Error."""
    assert (response.status_code, response.json()) == (200, []), response.text[:300]
    assert reason in response.headers["x-lookalike-error"]


def assert_4xx(response: httpx.Response, status: int | None = None) -> dict[str, str]:
    """A client error in the project's JSON shape."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"]
    return error


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The test logs nothing at ERROR level (an unexpected exception logs its traceback)."""
    with caplog.at_level(logging.ERROR):
        yield
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[:2000]


# --- bodies the parser or the database choked on --------------------------------------------


@pytest.mark.parametrize("path", [SEARCH, ITEMS])
def test_json_nested_100000_deep_is_a_400(api: TestClient, path: str, no_tracebacks: None) -> None:
    error = assert_4xx(api.post(path, content=DEEP), 400)
    assert "deep" in error["message"]
    assert api.get("/health").status_code == 200


@pytest.mark.parametrize("path", ["/knn-service", "/metadata"])
def test_json_nested_100000_deep_on_compat_routes_is_an_empty_answer(
    api: TestClient, path: str, no_tracebacks: None
) -> None:
    """clip-retrieval's routes answer [] for what they cannot serve (its front end reads any
    other body as results), saying why in a header: never a 500."""
    assert_compat_refusal(api.post(path, content=DEEP), "deep")
    assert api.get("/health").status_code == 200


def test_deeply_nested_form_fields_are_a_400(api: TestClient, no_tracebacks: None) -> None:
    png = encode(draw_image(1, (40, 32)))
    search = api.post(SEARCH, files={"image": ("a.png", png)}, data={"filter": DEEP})
    assert "deep" in assert_4xx(search, 400)["message"]
    add = api.post(ITEMS, files={"files": ("a.png", png)}, data={"metadata": DEEP})
    assert "deep" in assert_4xx(add, 400)["message"]


@pytest.mark.parametrize(
    ("filter_body", "named"),
    [
        ('{"n": 18446744073709551617}', "64-bit"),
        ('{"n": -9223372036854775809}', "64-bit"),
        ('{"a\\u0000b": 1}', "NUL"),
        ('{"n": NaN}', "finite"),
        ('{"n": Infinity}', "finite"),
        ('{"n": -Infinity}', "finite"),
        (json.dumps({f"k{i}": i for i in range(1001)}), "keys"),
    ],
)
def test_filters_the_database_cannot_take_are_a_400(
    api: TestClient, filter_body: str, named: str, no_tracebacks: None
) -> None:
    body = '{"text": "x", "filter": ' + filter_body + "}"
    error = assert_4xx(api.post(SEARCH, content=body), 400)
    assert named in error["message"], error


def test_the_largest_64_bit_filter_integers_still_search(api: TestClient) -> None:
    for value in (2**63 - 1, -(2**63)):
        response = api.post(SEARCH, json={"text": "x", "filter": {"n": value}})
        assert response.status_code == 200 and response.json()["results"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"id": True},
        {"query": [{"id": True}]},
        {"text": "x", "exclude_ids": [True]},
        {"text": "x", "exclude_ids": [0, False]},
    ],
)
def test_booleans_are_not_ids(api: TestClient, body: dict[str, Any], no_tracebacks: None) -> None:
    assert_4xx(api.post(SEARCH, json=body))


def test_booleans_are_not_metadata_ids(api: TestClient, no_tracebacks: None) -> None:
    assert_compat_refusal(api.post("/metadata", json={"ids": [True]}), "")


def test_library_refuses_non_finite_out_of_range_and_odd_filters(collection: Collection) -> None:
    bad: list[tuple[dict[Any, Any], str]] = [
        ({"n": float("nan")}, "finite"),
        ({"n": float("inf")}, "finite"),
        ({"n": 2**64}, "64-bit"),
        ({"a\x00": 1}, "NUL"),
        ({3: 1}, "string"),
        ({f"k{i}": i for i in range(1001)}, "keys"),
    ]
    for filter_, named in bad:
        with pytest.raises(BadInputError, match=named):
            collection.search(text="x", filter=filter_)
    with pytest.raises(BadInputError, match="integer ids"):
        collection.search(text="x", exclude_ids=[True])
    evens = collection.search(text="x", filter={"even": True}, k=6)
    assert sorted(hit.metadata["n"] for hit in evens) == [0, 2, 4]


# --- guessing API keys, dodging the rate limit --------------------------------------------


def wrong_keys(client: TestClient, count: int) -> list[int]:
    return [
        client.get("/v1/collections", headers={"x-api-key": f"guess{i}"}).status_code
        for i in range(count)
    ]


def test_wrong_api_keys_are_slowed_down_per_client(collection: Collection) -> None:
    settings = ServerSettings(api_keys=("right",), auth_failures_per_minute=10)
    app = create_app({"c": collection}, settings)
    with TestClient(app, client=("10.0.0.1", 5000)) as guesser:
        statuses = wrong_keys(guesser, 300)
        assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
        # a right guess is refused too while the client is held back: hitting it tells nothing
        held = guesser.get("/v1/collections", headers={"x-api-key": "right"})
        error = assert_4xx(held, 429)
        assert error["code"] == "auth_rate_limited" and "API keys" in error["message"]
        assert 1 <= int(held.headers["retry-after"]) <= 6
        assert guesser.get("/health").status_code == 200
    with TestClient(app, client=("10.0.0.2", 5000)) as other:
        assert other.get("/v1/collections", headers={"x-api-key": "right"}).status_code == 200


def test_wrong_api_keys_count_against_the_rate_limit(collection: Collection) -> None:
    settings = ServerSettings(api_keys=("right",), rate_limit_per_minute=10)
    with TestClient(create_app({"c": collection}, settings)) as client:
        statuses = wrong_keys(client, 30)
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}


def rotating_forwarded_for(base: str, count: int) -> list[int]:
    return [
        httpx.get(
            f"{base}/v1/collections", headers={"x-forwarded-for": f"203.0.113.{i}"}
        ).status_code
        for i in range(count)
    ]


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(collection: Collection) -> None:
    direct = ServerSettings(rate_limit_per_minute=3)
    with serve_app(create_app({"c": collection}, direct), direct) as base:
        assert rotating_forwarded_for(base, 6) == [200] * 3 + [429] * 3
    behind = ServerSettings(rate_limit_per_minute=3, trusted_proxies=("127.0.0.1",))
    with serve_app(create_app({"c": collection}, behind), behind) as base:
        assert rotating_forwarded_for(base, 6) == [200] * 6  # six clients behind the proxy


# --- uploads decode off the event loop ------------------------------------------------------


def grey_png(side: int) -> bytes:
    """A small file that takes long to decode: ``side`` x ``side`` flat grey pixels."""
    out = io.BytesIO()
    Image.new("L", (side, side), 128).save(out, "PNG")
    return out.getvalue()


def test_health_answers_while_uploads_decode(collection: Collection) -> None:
    # 3 x 64 M pixels: about 2 s of decoding that once ran on the event loop. The last file is
    # no image, so the upload is refused once all are checked, and nothing is decoded twice.
    slow = grey_png(8000)
    files = [("files", (f"g{i}.png", slow, "image/png")) for i in range(3)]
    files.append(("files", ("last.png", b"not an image", "image/png")))
    settings = ServerSettings()
    with serve_app(create_app({"c": collection}, settings), settings) as base:
        answers: list[httpx.Response] = []
        uploading = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{base}{ITEMS}", files=files, timeout=60))
        )
        uploading.start()
        worst = 0.0
        while uploading.is_alive():
            started = time.monotonic()
            assert httpx.get(f"{base}/health", timeout=10).status_code == 200
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.05)
        uploading.join()
    assert "last.png" in assert_4xx(answers[0], 415)["message"]
    assert worst < 1.0, f"/health took {worst:.2f} s during the upload"
