"""Tags and exports over HTTP (in-process), and through the client against a real server."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import serve_app
from lookalike import APIError, AsyncClient, Client, Collection
from lookalike.server import ServerSettings, create_app

DIM = 8


@pytest.fixture
def col(tmp_path: Path) -> Iterator[Collection]:
    vectors = np.random.default_rng(3).normal(size=(30, DIM)).astype(np.float32)
    with Collection.create(tmp_path / "col", f"vectors:{DIM}") as opened:
        opened.add_vectors(vectors, [f"https://example.com/{i}.jpg" for i in range(30)])
        yield opened


@pytest.fixture
def api(col: Collection) -> Iterator[TestClient]:
    with TestClient(create_app({"photos": col}, ServerSettings(max_export_k=25))) as client:
        yield client


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def test_tag_untag_count_and_item_tags(api: TestClient) -> None:
    body = {"tag": "label:police car", "ids": [1, 2, 3]}
    assert api.post("/v1/collections/photos/tags", json=body).json() == {"tagged": 3}
    assert api.post("/v1/collections/photos/tags", json=body).json() == {"tagged": 0}
    assert api.get("/v1/collections/photos/items/2").json()["tags"] == ["label:police car"]
    assert api.get("/v1/collections/photos/tags").json() == {"tags": {"label:police car": 3}}
    found = api.get("/v1/collections/photos/tagged", params={"tag": "label:police car"})
    assert found.json() == {"tag": "label:police car", "ids": [1, 2, 3]}
    untag = {"tag": "label:police car", "ids": [1]}
    assert api.request("DELETE", "/v1/collections/photos/tags", json=untag).json() == {
        "untagged": 1
    }
    assert api.post("/v1/collections/photos/untag", json={**untag, "ids": [2]}).json() == {
        "untagged": 1
    }
    assert api.get("/v1/collections/photos/tags").json() == {"tags": {"label:police car": 1}}


def test_tag_errors(api: TestClient) -> None:
    message = error_of(
        api.post("/v1/collections/photos/tags", json={"tag": "x", "ids": [1, 99]}), 404
    )
    assert "99" in message and "nothing tagged" in message
    assert api.get("/v1/collections/photos/tags").json() == {"tags": {}}
    error_of(api.post("/v1/collections/photos/tags", json={"tag": "a\u0007b", "ids": [1]}), 400)
    error_of(api.post("/v1/collections/photos/tags", json={"tag": "", "ids": [1]}), 422)
    error_of(api.post("/v1/collections/photos/tags", json={"tag": "x", "ids": [True]}), 422)
    error_of(api.post("/v1/collections/photos/tags", json={"tag": "x", "ids": []}), 422)
    error_of(api.post("/v1/collections/nope/tags", json={"tag": "x", "ids": [1]}), 404)


def test_search_bodies_take_tags(api: TestClient) -> None:
    first = api.post("/v1/collections/photos/search", json={"id": 0, "k": 10}).json()["results"]
    ids = [r["id"] for r in first]
    api.post("/v1/collections/photos/tags", json={"tag": "labeled", "ids": ids})
    body = {"id": 0, "k": 10, "exclude_tags": ["labeled"]}
    rest = api.post("/v1/collections/photos/search", json=body).json()["results"]
    assert len(rest) == 10 and not {r["id"] for r in rest} & set(ids)
    only = api.post("/v1/collections/photos/search", json={"id": 0, "k": 29, "tags": ["labeled"]})
    assert {r["id"] for r in only.json()["results"]} == set(ids)
    bad = api.post("/v1/collections/photos/search", json={"id": 0, "tags": ["a\nb"]})
    assert "control character" in error_of(bad, 422)


def test_export_streams_jsonl_and_csv_and_tags(api: TestClient, col: Collection) -> None:
    body = {"id": 0, "k": 12, "format": "jsonl", "tag": "exported:batch-1"}
    response = api.post("/v1/collections/photos/export", json=body)
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "application/x-ndjson"
    )
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert [r["id"] for r in rows] == [h.id for h in col.search(id=0, k=12)]
    assert col.tagged("exported:batch-1") == sorted(r["id"] for r in rows)
    body = {"id": 0, "k": 25, "format": "csv", "exclude_tags": ["exported:batch-1"]}
    table = list(
        csv.DictReader(api.post("/v1/collections/photos/export", json=body).text.splitlines())
    )
    assert len(table) == 29 - 12 and not {int(r["id"]) for r in table} & {r["id"] for r in rows}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"id": 0, "k": 26}, 400, "at most 25"),
        ({"id": 0, "format": "cvat"}, 400, "format must be one of jsonl, csv"),
        ({"id": 0, "tag": "a\tb"}, 400, "control character"),
        ({"id": 999}, 404, "999"),
        ({"id": 0, "k": 0}, 400, "k must be"),
        ([1, 2], 400, "JSON object"),
    ],
)
def test_export_errors_come_before_the_stream(api: TestClient, body, status, message) -> None:
    assert message in error_of(api.post("/v1/collections/photos/export", json=body), status)


def test_openapi_documents_the_curation_routes(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"post", "delete", "get"} <= set(paths["/v1/collections/{name}/tags"])
    assert "post" in paths["/v1/collections/{name}/export"]
    assert "tags" in spec["components"]["schemas"]["ItemBody"]["properties"]
    assert "exclude_tags" in spec["components"]["schemas"]["SearchBody"]["properties"]


def test_clients_mirror_the_library(col: Collection) -> None:
    with serve_app(create_app({"photos": col})) as base, Client(base) as client:
        photos = client.collection("photos")
        assert photos.tag([4, 5], "label:cat ✓") == 2
        assert client.untag("photos", 5, "label:cat ✓") == 1
        assert photos.tags(4) == ["label:cat ✓"] and photos.tags(5) == []
        assert photos.tagged("label:cat ✓") == [4]
        assert photos.tag_counts() == {"label:cat ✓": 1}
        hits = photos.search(id=4, k=29, include_self=True, exclude_tags=["label:cat ✓"])
        assert len(hits) == 29 and 4 not in {h.id for h in hits}
        with pytest.raises(APIError) as raised:
            photos.tag([1000], "x")
        assert raised.value.status == 404 and "1000" in raised.value.message

        async def run() -> None:
            async with AsyncClient(base) as remote:
                handle = remote.collection("photos")
                assert await handle.tag(7, "async") == 1
                assert await handle.tags(7) == ["async"]
                assert await handle.tagged("async") == [7]
                assert await remote.tag_counts("photos") == {"async": 1, "label:cat ✓": 1}
                assert await handle.untag([7], "async") == 1

        asyncio.run(run())
    assert col.tag_counts() == {"label:cat ✓": 1}
