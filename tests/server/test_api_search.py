"""The HTTP API: service endpoints and every query kind of a search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from api_support import (
    COPY,
    HIT_KEYS,
    ITEMS,
    LARGE,
    SEARCH,
    N,
    Shared,
    app_with,
    assert_error,
    b64,
    ids_of,
    search,
)
from fastapi.testclient import TestClient
from PIL import Image

from lookalike import Collection
from lookalike.server import create_app

# --- service endpoints ------------------------------------------------------------------------


def test_health(api: TestClient) -> None:
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "collections": 1}


def test_collections_lists_the_served_collection(api: TestClient, shared: Shared) -> None:
    response = api.get("/v1/collections")
    assert response.status_code == 200
    (body,) = response.json()["collections"]
    assert body == {
        "name": "photos",
        "count": len(shared.col),
        "model": shared.col.model,
        "dim": 32,
        "index": shared.col.backend.index.kind,
        "supports_text": True,
    }
    assert body["count"] >= N


def test_page_is_html(api: TestClient) -> None:
    response = api.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()


def test_openapi_documents_every_route_and_body(api: TestClient) -> None:
    response = api.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    paths = spec["paths"]
    for path, methods in {
        "/health": {"get"},
        "/metrics": {"get"},
        "/v1/collections": {"get"},
        "/v1/collections/{name}/search": {"post"},
        "/v1/collections/{name}/items": {"post"},
        "/v1/collections/{name}/items/{item_id}": {"get", "delete"},
        "/v1/collections/{name}/items/{item_id}/image": {"get"},
        "/v1/collections/{name}/items/{item_id}/thumbnail": {"get"},
        "/knn-service": {"post"},
        "/metadata": {"post"},
        "/indices-list": {"get"},
    }.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    schemas = spec["components"]["schemas"]

    def ref(operation: dict, *keys: str) -> str:
        node: Any = operation
        for key in keys:
            node = node[key]
        return node["$ref"].rsplit("/", 1)[1]

    search_op = paths["/v1/collections/{name}/search"]["post"]
    assert ref(search_op, "requestBody", "content", "application/json", "schema") == "SearchBody"
    assert "multipart/form-data" in search_op["requestBody"]["content"]
    add_op = paths["/v1/collections/{name}/items"]["post"]
    assert ref(add_op, "requestBody", "content", "application/json", "schema") == "AddUrlsBody"
    for name in ("SearchBody", "AddUrlsBody", "QueryPartBody"):
        assert name in schemas, name
    assert {"text", "image", "url", "id", "vector", "query", "k", "filter"} <= set(
        schemas["SearchBody"]["properties"]
    )
    ok = ("responses", "200", "content", "application/json", "schema")
    assert ref(search_op, *ok) == "SearchResponse"
    assert ref(add_op, *ok) == "AddResponse"
    item_path = paths["/v1/collections/{name}/items/{item_id}"]
    assert ref(item_path["get"], *ok) == "ItemBody"
    assert ref(item_path["delete"], *ok) == "DeleteResponse"
    assert ref(paths["/v1/collections"]["get"], *ok) == "CollectionsResponse"
    assert ref(paths["/health"]["get"], *ok) == "HealthResponse"
    assert ref(search_op, "responses", "404", "content", "application/json", "schema") == (
        "ErrorResponse"
    )
    # every reference anywhere in the spec resolves
    text = json.dumps(spec)
    for piece in text.split('"$ref": "#/components/schemas/')[1:]:
        assert piece.split('"', 1)[0] in schemas


def test_metrics_use_route_templates(api: TestClient, shared: Shared) -> None:
    item = shared.ids[3]
    assert api.get(f"{ITEMS}/{item}").status_code == 200
    assert api.get(f"{ITEMS}/987654").status_code == 404
    assert api.get("/no/such/route").status_code == 404
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE lookalike_requests_total counter" in text
    assert "# TYPE lookalike_request_seconds histogram" in text
    template = "/v1/collections/{name}/items/{item_id}"
    assert f'method="GET",route="{template}",status="200"' in text
    assert f'method="GET",route="{template}",status="404"' in text
    assert 'route="unmatched",status="404"' in text
    assert f'lookalike_request_seconds_count{{route="{template}"}}' in text
    assert f'lookalike_collection_images{{collection="photos"}} {float(len(shared.col))}' in text
    assert f"/items/{item}" not in text and "987654" not in text and "/no/such" not in text
    for line in text.splitlines():
        assert line.startswith("#") or line.rsplit(" ", 1)[1].replace(".", "").isdigit(), line


# --- search: query kinds ----------------------------------------------------------------------


def test_search_by_text_has_the_response_shape(api: TestClient, shared: Shared) -> None:
    response = api.post(SEARCH, json={"text": "a red circle"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"results", "took_ms", "model"}
    assert body["model"] == shared.col.model
    assert isinstance(body["took_ms"], float) and body["took_ms"] >= 0
    results = body["results"]
    assert len(results) == 20  # the default k
    for hit in results:
        assert set(hit) == HIT_KEYS
        stored = shared.col.get(hit["id"])
        assert hit["url"] == (stored.url or f"{ITEMS}/{hit['id']}/image")  # remote: its own
        assert hit["thumbnail_url"] == f"{ITEMS}/{hit['id']}/thumbnail"
        assert (hit["width"], hit["height"]) == (stored.width, stored.height)
        assert hit["metadata"] == stored.metadata
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)
    expected = shared.col.search(text="a red circle")
    assert ids_of(results) == [h.id for h in expected]
    assert scores == pytest.approx([h.score for h in expected], abs=1e-5)


@pytest.mark.parametrize("i", [0, 5, LARGE])
def test_search_by_own_bytes_finds_the_image_first(api: TestClient, shared: Shared, i: int) -> None:
    results = search(api, image=b64(shared.data(i)), k=5)
    assert results[0]["id"] == shared.ids[i]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert results[0]["metadata"]["n"] == i
    width, height = Image.open(shared.paths[i]).size
    assert (results[0]["width"], results[0]["height"]) == (width, height)


def test_search_by_data_url(api: TestClient, shared: Shared) -> None:
    data_url = "data:image/jpeg;base64," + b64(shared.data(7))
    results = search(api, image=data_url, k=3)
    assert results[0]["id"] == shared.ids[7]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_search_by_url(api: TestClient, shared: Shared, http_files: tuple[Path, str]) -> None:
    folder, base = http_files
    (folder / "query-9.jpg").write_bytes(shared.data(9))
    results = search(api, url=f"{base}/query-9.jpg", k=3)
    assert results[0]["id"] == shared.ids[9]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_search_by_url_refuses_loopback_by_default(
    shared: Shared, http_files: tuple[Path, str]
) -> None:
    folder, base = http_files
    (folder / "query-4.png").write_bytes(shared.data(4))
    strict = Collection.open(shared.col.path)  # the default fetch policy
    try:
        client = TestClient(create_app({"photos": strict}))
        response = client.post(SEARCH, json={"url": f"{base}/query-4.png"})
        error = assert_error(client, response, 400, "fetch_failed")
        assert "loopback" in error["message"]
    finally:
        strict.close()


def test_search_by_id_excludes_the_query_unless_include_self(
    api: TestClient, shared: Shared
) -> None:
    query = shared.ids[2]
    results = search(api, id=query, k=500)
    assert query not in ids_of(results)
    assert len(results) == len(shared.col) - 1
    with_self = search(api, id=query, include_self=True, k=5)
    assert with_self[0]["id"] == query
    assert with_self[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert ids_of(with_self)[1:] == ids_of(results)[:4]


def test_search_by_vector(api: TestClient, shared: Shared) -> None:
    vector = shared.col.vectors([shared.ids[11]])[0]
    results = search(api, vector=(vector * 3.5).tolist(), k=4)  # any length: it is normalised
    assert results[0]["id"] == shared.ids[11]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_search_by_weighted_query_parts(api: TestClient, shared: Shared) -> None:
    a, b, c = shared.ids[3], shared.ids[8], shared.ids[14]
    parts = [
        {"id": a},
        {"id": b},
        {"image": b64(shared.data(20)), "weight": 0.5},
        {"text": "at night", "weight": 0.5},
        {"id": c, "weight": -0.5},
    ]
    results = search(api, query=parts, k=10)
    library_parts = [dict(p) for p in parts]
    library_parts[2]["image"] = shared.data(20)
    expected = shared.col.search(query=library_parts, k=10)
    assert ids_of(results) == [h.id for h in expected]
    assert [r["score"] for r in results] == pytest.approx([h.score for h in expected], abs=1e-5)
    assert not {a, b, c} & set(ids_of(results))  # ids used as queries are left out
    # the negative part counts: the scores are those of the weighted, normalised sum
    vectors = shared.col.vectors([a, b, c])
    image_vector = shared.col.embed(image=shared.data(20))
    text_vector = shared.col.embed(text="at night")
    total = vectors[0] + vectors[1] + 0.5 * image_vector + 0.5 * text_vector - 0.5 * vectors[2]
    total /= np.linalg.norm(total)
    top = results[0]
    assert top["score"] == pytest.approx(float(shared.col.vectors([top["id"]])[0] @ total), 1e-4)
    positive = search(api, query=parts[:4], k=10)
    assert [r["score"] for r in positive] != [r["score"] for r in results]


def test_k_default_honoured_and_capped(api: TestClient, shared: Shared) -> None:
    assert len(search(api, text="x")) == 20
    assert len(search(api, text="x", k=5)) == 5
    assert len(search(api, text="x", k=1)) == 1
    assert len(search(api, text="x", k=500)) == len(shared.col)  # fewer stored than asked
    capped = app_with(shared, max_k=10)
    assert len(search(capped, text="x", k=10)) == 10
    error = assert_error(capped, capped.post(SEARCH, json={"text": "x", "k": 11}), 400)
    assert "10" in error["message"]
    short = app_with(shared, default_k=7)
    assert len(search(short, text="x")) == 7


def test_filter_keeps_matching_metadata(api: TestClient, shared: Shared) -> None:
    results = search(api, text="x", k=N, filter={"split": "train"})
    assert len(results) == 15
    assert all(r["metadata"]["split"] == "train" for r in results)
    results = search(api, id=shared.ids[0], include_self=True, k=N, filter={"n": 5})
    assert ids_of(results) == [shared.ids[5]]
    assert search(api, text="x", filter={"split": "nowhere"}) == []


def test_exclude_ids(api: TestClient, shared: Shared) -> None:
    first = ids_of(search(api, text="x", k=6))
    rest = search(api, text="x", k=6, exclude_ids=first[:3])
    assert not set(first[:3]) & set(ids_of(rest))
    assert ids_of(rest)[:3] == first[3:]


def test_dedupe_drops_near_duplicates(api: TestClient, shared: Shared) -> None:
    plain = ids_of(search(api, id=shared.ids[0], include_self=True, k=40))
    assert plain[:2] == [shared.ids[0], shared.ids[COPY]]  # the copy is nearest
    threshold = 0.9995
    kept = ids_of(search(api, id=shared.ids[0], include_self=True, k=10, dedupe=threshold))
    assert kept[0] == shared.ids[0] and shared.ids[COPY] not in kept
    # greedily, best first: a hit is kept unless it is that close to one kept before it
    expected: list[int] = []
    for candidate in plain:
        vector = shared.col.vectors([candidate])[0]
        if not expected or (shared.col.vectors(expected) @ vector).max() < threshold:
            expected.append(candidate)
    assert kept == expected[:10]
    vectors = shared.col.vectors(kept)
    assert np.all((vectors @ vectors.T)[np.triu_indices(len(kept), 1)] < threshold)


def test_search_by_multipart_upload(api: TestClient, shared: Shared) -> None:
    response = api.post(
        SEARCH,
        files={"image": ("query.png", shared.data(6), "image/png")},
        data={"k": "3", "filter": json.dumps({"split": "train"})},
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3
    assert results[0]["id"] == shared.ids[6]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert all(r["metadata"]["split"] == "train" for r in results)
    no_field = api.post(SEARCH, files={"file": ("q.png", shared.data(6), "image/png")})
    assert_error(api, no_field, 400, "bad_input")
    bad_filter = api.post(
        SEARCH, files={"image": ("q.png", shared.data(6), "image/png")}, data={"filter": "{"}
    )
    assert_error(api, bad_filter, 400, "bad_input")


# --- a batch of searches -----------------------------------------------------------------------

BATCH = "/v1/collections/photos/search/batch"


def test_a_batch_answers_as_its_searches_one_at_a_time(api: TestClient, shared: Shared) -> None:
    searches: list[dict[str, Any]] = [
        {"text": "a red circle", "k": 3},
        {"id": shared.ids[0]},
        {"query": [{"id": shared.ids[1]}, {"id": shared.ids[2]}], "filter": {"split": "test"}},
        {"image": b64(shared.data(4)), "dedupe": 0.99, "k": 5},
        {"vector": shared.col.vectors([shared.ids[5]])[0].tolist(), "exclude_ids": [shared.ids[5]]},
        {"relevant": [shared.ids[6], shared.ids[7]], "k": 4},
    ]
    response = api.post(BATCH, json={"searches": searches})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results", "took_ms", "model"} and body["model"] == shared.col.model
    for search_body, results in zip(searches, body["results"], strict=True):
        assert results == search(api, **search_body)
        assert all(set(hit) == HIT_KEYS for hit in results)
    assert [len(r) for r in body["results"]] == [3, 20, 14, 5, 20, 4]


def test_a_batch_is_bounded_and_names_the_bad_search(api: TestClient, shared: Shared) -> None:
    bad = api.post(BATCH, json={"searches": [{"id": 0}, {"id": 0, "k": 0}]})
    assert "searches[1]" in assert_error(api, bad, 422)["message"]
    for body in ({"searches": []}, {"searches": {"id": 0}}, [{"id": 0}], {"searches": [], "k": 3}):
        assert_error(api, api.post(BATCH, json=body), 422)
    unknown = api.post(BATCH, json={"searches": [{"id": 0}, {"id": 10**9}]})
    assert "query 1 of the batch" in assert_error(api, unknown, 404, "not_found")["message"]
    url = api.post(BATCH, json={"searches": [{"url": "http://127.0.0.1:1/x.png"}]})
    assert "on its own" in assert_error(api, url, 422)["message"]
    with app_with(shared, max_batch=2) as small:
        many = small.post(BATCH, json={"searches": [{"id": 0}] * 3})
        assert "1 to 2 searches" in assert_error(small, many, 400)["message"]
        assert small.post(BATCH, json={"searches": [{"id": 0}] * 2}).status_code == 200


def test_the_batch_route_is_in_the_spec(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    operation = spec["paths"]["/v1/collections/{name}/search/batch"]["post"]
    content = operation["requestBody"]["content"]["application/json"]
    assert content["schema"] == {"$ref": "#/components/schemas/SearchBatchBody"}
    assert "SearchBatchBody" in spec["components"]["schemas"]
