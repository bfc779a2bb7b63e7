"""The HTTP API: every error status, API keys, the rate limit and CORS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import (
    ITEMS,
    MB,
    SEARCH,
    Shared,
    app_with,
    assert_error,
    b64,
    ids_of,
    new_image,
    search,
)
from fastapi.testclient import TestClient

from lookalike import Collection
from lookalike.server import ServerSettings, create_app
from lookalike.server.settings import API_KEYS_ENV

# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},  # none
        {"k": 3},
        {"text": "x", "k": "x"},
        {"id": "abc"},
        {"vector": ["a", "b"]},
        {"text": "x", "k": 0},
        {"text": "x", "dedupe": 2},
        {"text": "x", "colour": "red"},  # unknown field
        {"query": [{"id": 1, "text": "x"}]},  # a part with two kinds
        {"query": [{"weight": 2}]},  # a part with none
        {"query": []},
        [1, 2],
    ],
)
def test_malformed_search_bodies_are_422(api: TestClient, body: Any) -> None:
    assert_error(api, api.post(SEARCH, json=body), 422, "invalid_body")


def test_kinds_combine_as_in_the_library(api: TestClient, shared: Shared) -> None:
    """Top-level kinds and query parts add up to one query, as Collection.search's do."""
    both = search(api, text="x", id=shared.ids[0], k=5)
    parts = search(api, query=[{"text": "x"}, {"id": shared.ids[0]}], k=5)
    mixed = search(api, text="x", query=[{"id": shared.ids[0]}], k=5)
    assert ids_of(both) == ids_of(parts) == ids_of(mixed)
    assert shared.ids[0] not in ids_of(both)


def test_huge_k_is_400(api: TestClient) -> None:
    error = assert_error(api, api.post(SEARCH, json={"text": "x", "k": 10**6}), 400, "bad_input")
    assert "1000" in error["message"]


def test_unknown_collection_is_404(api: TestClient, shared: Shared) -> None:
    base = "/v1/collections/nope"
    item = shared.ids[0]
    for response in (
        api.post(f"{base}/search", json={"text": "x"}),
        api.get(f"{base}/items/{item}"),
        api.get(f"{base}/items/{item}/image"),
        api.get(f"{base}/items/{item}/thumbnail"),
        api.delete(f"{base}/items/{item}"),
        api.post(f"{base}/items", json={"urls": ["http://127.0.0.1:1/a.png"]}),
    ):
        error = assert_error(api, response, 404, "not_found")
        assert "nope" in error["message"]


def test_unknown_id_is_404(api: TestClient) -> None:
    for response in (
        api.get(f"{ITEMS}/99999"),
        api.get(f"{ITEMS}/99999/image"),
        api.get(f"{ITEMS}/99999/thumbnail"),
        api.delete(f"{ITEMS}/99999"),
        api.post(SEARCH, json={"id": 99999}),
        api.post(SEARCH, json={"query": [{"id": 99999}]}),
    ):
        assert_error(api, response, 404, "not_found")
    assert_error(api, api.get(f"{ITEMS}/abc"), 422, "invalid_body")


def test_non_json_body_is_400(api: TestClient) -> None:
    for content in (b"not json", b"\xff\xfe", b""):
        response = api.post(SEARCH, content=content, headers={"content-type": "application/json"})
        assert_error(api, response, 400, "bad_input")
    assert_error(api, api.post(ITEMS, content=b"{"), 400, "bad_input")


def test_non_images_are_415(api: TestClient, shared: Shared) -> None:
    not_image = b"this is plain text, not a picture" * 10
    upload = api.post(SEARCH, files={"image": ("q.png", not_image, "image/png")})
    assert_error(api, upload, 415, "bad_image")
    assert_error(api, api.post(SEARCH, json={"image": b64(not_image)}), 415, "bad_image")
    part = api.post(SEARCH, json={"query": [{"image": b64(not_image)}]})
    assert_error(api, part, 415, "bad_image")
    before = len(shared.col)
    added = api.post(ITEMS, files=[("files", ("notes.txt", not_image, "text/plain"))])
    error = assert_error(api, added, 415, "bad_image")
    assert "notes.txt" in error["message"]
    assert len(shared.col) == before
    # not base64 at all is a bad request, not a bad image
    assert_error(api, api.post(SEARCH, json={"image": "!!not base64!!"}), 400, "bad_input")


def test_body_over_the_limit_is_413(shared: Shared) -> None:
    client = app_with(shared, max_body_bytes=1 * MB)
    body = json.dumps({"image": "A" * (2 * MB)}).encode()
    declared = client.post(SEARCH, content=body, headers={"content-type": "application/json"})
    assert_error(client, declared, 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no content-length: the limit holds while reading
        yield b'{"image": "'
        for _ in range(8):
            yield b"A" * (256 * 1024)
        yield b'"}'

    streamed = client.post(SEARCH, content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in streamed.request.headers
    assert_error(client, streamed, 413, "body_too_large")
    upload = client.post(ITEMS, files=[("files", ("big.png", b"\0" * (2 * MB), "image/png"))])
    assert_error(client, upload, 413, "body_too_large")
    # just under the limit is read and judged on its content
    small = client.post(SEARCH, json={"image": b64(shared.data(0))})
    assert small.status_code == 200


def test_50_mb_upload_is_413_with_default_limits(api: TestClient, shared: Shared) -> None:
    before = len(shared.col)
    response = api.post(ITEMS, files=[("files", ("huge.png", b"\0" * (50 * MB), "image/png"))])
    assert_error(api, response, 413, "body_too_large")
    response = api.post(SEARCH, files={"image": ("huge.png", b"\0" * (50 * MB), "image/png")})
    assert_error(api, response, 413, "body_too_large")
    assert len(shared.col) == before


def test_vector_of_wrong_dimension_is_400(api: TestClient) -> None:
    error = assert_error(api, api.post(SEARCH, json={"vector": [0.1] * 31}), 400, "model_mismatch")
    assert "32" in error["message"]
    assert_error(api, api.post(SEARCH, json={"vector": [0.0] * 32}), 400, "bad_input")


def test_cancelling_parts_are_400(api: TestClient, shared: Shared) -> None:
    parts = [{"id": shared.ids[1]}, {"id": shared.ids[1], "weight": -1}]
    assert_error(api, api.post(SEARCH, json={"query": parts}), 400, "bad_input")


def test_text_on_an_image_only_collection_is_400(tmp_path: Path, backbone_weights: Any) -> None:
    weights = backbone_weights("mobilenet_v2")
    with Collection.create(tmp_path / "col", "torchvision:mobilenet_v2", weights=weights) as col:
        first, second = new_image(301), new_image(302)
        assert col.add_images([first, second]).added == 2
        client = TestClient(create_app({"plain": col}))
        listed = client.get("/v1/collections").json()["collections"]
        assert listed[0]["name"] == "plain" and listed[0]["supports_text"] is False
        response = client.post("/v1/collections/plain/search", json={"text": "a cat"})
        error = assert_error(client, response, 400, "unsupported_query")
        assert "image-only" in error["message"]
        by_image = client.post("/v1/collections/plain/search", json={"image": b64(second)})
        assert by_image.status_code == 200
        assert by_image.json()["results"][0]["id"] == col.lookup(second).id  # type: ignore[union-attr]


def test_unsupported_method_is_405(api: TestClient, shared: Shared) -> None:
    assert_error(api, api.get(SEARCH), 405, "method_not_allowed")
    assert_error(api, api.put(f"{ITEMS}/{shared.ids[0]}", json={}), 405, "method_not_allowed")
    assert_error(api, api.delete("/v1/collections"), 405, "method_not_allowed")


def test_unknown_route_is_404(api: TestClient) -> None:
    assert_error(api, api.get("/v2/anything"), 404, "not_found")


# --- auth, rate limit, CORS -------------------------------------------------------------------


def test_api_keys(shared: Shared) -> None:
    client = app_with(shared, api_keys=("k1", "k2"))
    for headers in (
        {},
        {"authorization": "Bearer nope"},
        {"x-api-key": "nope"},
        {"authorization": "Basic k1"},
        {"authorization": "Bearer "},
        {"x-api-key": "k1x"},
    ):
        response = client.get("/v1/collections", headers=headers)
        assert_error(client, response, 401, "unauthorized")
    for headers in (
        {"authorization": "Bearer k1"},
        {"authorization": "bearer k2"},
        {"x-api-key": "k1"},
    ):
        assert client.get("/v1/collections", headers=headers).status_code == 200
    ok = client.post(SEARCH, json={"text": "x", "k": 2}, headers={"x-api-key": "k2"})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2
    assert_error(client, client.post(SEARCH, json={"text": "x"}), 401)
    assert_error(client, client.post("/knn-service", content=b'{"text": "x"}'), 401)
    assert_error(client, client.get("/metrics"), 401)
    assert client.get("/health").status_code == 200  # public


def test_api_keys_from_the_environment(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEYS_ENV, " e1, e2 ,,")
    settings = ServerSettings.with_env_keys(api_keys=("k1",), max_k=50)
    assert settings.api_keys == ("k1", "e1", "e2") and settings.max_k == 50
    client = TestClient(create_app({"photos": shared.col}, settings))
    assert client.get("/v1/collections", headers={"x-api-key": "e2"}).status_code == 200
    assert client.get("/v1/collections", headers={"x-api-key": "k1"}).status_code == 200
    assert_error(client, client.get("/v1/collections", headers={"x-api-key": "e3"}), 401)
    monkeypatch.delenv(API_KEYS_ENV)
    assert ServerSettings.with_env_keys().api_keys == ()


def test_rate_limit(shared: Shared) -> None:
    client = app_with(shared, rate_limit_per_minute=5)
    for _ in range(5):
        assert client.get("/v1/collections").status_code == 200
    response = client.get("/v1/collections")
    error = assert_error(client, response, 429, "rate_limited", alive=False)
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["retry-after"] in error["message"]
    assert client.post(SEARCH, json={"text": "x"}).status_code == 429
    # other servers' buckets are their own
    assert app_with(shared, rate_limit_per_minute=5).get("/health").status_code == 200


def test_cors_is_off_by_default(api: TestClient) -> None:
    response = api.get("/v1/collections", headers={"origin": "http://elsewhere.test"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_cors_on_for_listed_origins(shared: Shared) -> None:
    client = app_with(shared, cors_origins=("http://page.test",), api_keys=("k1",))
    response = client.get(
        "/v1/collections", headers={"origin": "http://page.test", "x-api-key": "k1"}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://page.test"
    other = client.get("/v1/collections", headers={"origin": "http://evil.test", "x-api-key": "k1"})
    assert "access-control-allow-origin" not in other.headers
    # a browser's preflight carries no key; it must pass so the real request can send one
    preflight = client.options(
        SEARCH,
        headers={
            "origin": "http://page.test",
            "access-control-request-method": "POST",
            "access-control-request-headers": "x-api-key, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://page.test"
    assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
    # and an error answer can be read by the page
    denied = client.get("/v1/collections", headers={"origin": "http://page.test"})
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == "http://page.test"
