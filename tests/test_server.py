"""The HTTP API, driven in-process through FastAPI's TestClient over a real collection.

Every endpoint, every query kind and every error status; a local http.server on 127.0.0.1 serves
the images that URL queries and URL adds fetch. Nothing leaves loopback.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import encode
from lookalike import BadInputError, Collection
from lookalike.demo import draw_image
from lookalike.fetch import FetchPolicy
from lookalike.server import ServerSettings, create_app
from lookalike.server.settings import API_KEYS_ENV

N = 30
LARGE = 28  # a 600x400 image, for thumbnails that must shrink
COPY = 29  # image 0 with one pixel changed: a near duplicate with other bytes
HIT_KEYS = {"id", "score", "url", "thumbnail_url", "name", "path", "width", "height", "metadata"}
SEARCH = "/v1/collections/photos/search"
ITEMS = "/v1/collections/photos/items"
MB = 1024 * 1024


# --- the shared collection --------------------------------------------------------------------


def _picture(i: int) -> tuple[Image.Image, str]:
    """(image, format) of picture ``i`` of the shared collection."""
    if i == LARGE:
        return draw_image(i, (600, 400)), "PNG"
    if i == COPY:
        image = draw_image(0, (48, 40))
        image.putpixel((0, 0), (255, 0, 255))
        return image, "PNG"
    return draw_image(i, (48 + 5 * i, 40 + 3 * i)), "PNG" if i % 2 == 0 else "JPEG"


@dataclass
class Shared:
    root: Path
    col: Collection
    paths: list[Path]
    ids: list[int]  # ids[i]: id of picture i

    def data(self, i: int) -> bytes:
        return self.paths[i].read_bytes()


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, Path]
) -> Iterator[Shared]:
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("server")
    photos = root / "photos"
    photos.mkdir()
    paths = []
    for i in range(N):
        image, fmt = _picture(i)
        path = photos / f"pic{i:02d}.{'png' if fmt == 'PNG' else 'jpg'}"
        path.write_bytes(encode(image, fmt, **({"quality": 95} if fmt == "JPEG" else {})))
        paths.append(path)
    metadata = [
        {"n": i, "split": "train" if i % 2 == 0 else "test", "caption": f"picture {i}"}
        for i in range(N)
    ]
    col = Collection.create(
        root / "col", spec, weights=weights, fetch_policy=FetchPolicy(allow_private=True)
    )
    report = col.add_images(paths, metadata=metadata)
    assert report.added == N and not report.failed
    ids = [col.lookup(p).id for p in paths]  # type: ignore[union-attr]
    yield Shared(root, col, paths, ids)
    col.close()


@pytest.fixture(scope="module")
def api(shared: Shared) -> Iterator[TestClient]:
    # one event loop for every request, as under uvicorn: a blocking route would stall them all
    with TestClient(create_app({"photos": shared.col})) as client:
        yield client


def app_with(shared: Shared, **settings: Any) -> TestClient:
    return TestClient(create_app({"photos": shared.col}, ServerSettings(**settings)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_image(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """PNG bytes of a picture not in the shared collection."""
    return encode(draw_image(seed, size))


def search(client: TestClient, **body: Any) -> list[dict[str, Any]]:
    response = client.post(SEARCH, json=body)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def ids_of(results: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in results]


def assert_error(
    client: TestClient, response: Any, status: int, code: str | None = None, alive: bool = True
) -> dict:
    """The response is the JSON error shape with this status; the server still answers."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    if alive:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
    return body["error"]


@pytest.fixture(scope="module")
def http_files(http_root: tuple[Path, str]) -> tuple[Path, str]:
    """(folder, base URL) of a local http.server that URL queries and adds fetch from."""
    return http_root


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


# --- items ------------------------------------------------------------------------------------


def test_get_item(api: TestClient, shared: Shared) -> None:
    item = shared.ids[12]
    response = api.get(f"{ITEMS}/{item}")
    assert response.status_code == 200
    width, height = Image.open(shared.paths[12]).size
    assert response.json() == {
        "id": item,
        "url": f"{ITEMS}/{item}/image",
        "thumbnail_url": f"{ITEMS}/{item}/thumbnail",
        "name": shared.paths[12].name,
        "path": None,  # hidden: the default
        "width": width,
        "height": height,
        "metadata": {"n": 12, "split": "train", "caption": "picture 12"},
        "tags": [],
    }


@pytest.mark.parametrize(("i", "media_type"), [(12, "image/png"), (13, "image/jpeg")])
def test_get_image_serves_the_file(
    api: TestClient, shared: Shared, i: int, media_type: str
) -> None:
    response = api.get(f"{ITEMS}/{shared.ids[i]}/image")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content == shared.data(i)


def test_thumbnail_is_a_small_jpeg_made_once(api: TestClient, shared: Shared) -> None:
    item = shared.ids[LARGE]
    cached = shared.col.path / "thumbnails" / "256" / f"{item}.jpg"
    assert not cached.exists()
    response = api.get(f"{ITEMS}/{item}/thumbnail")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert "max-age" in response.headers["cache-control"]
    thumb = Image.open(io.BytesIO(response.content))
    assert thumb.format == "JPEG"
    assert thumb.size == (256, 171)  # 600x400 scaled to fit 256, aspect kept
    assert cached.read_bytes() == response.content
    # a second request is answered from the cached file, not made again
    marker = encode(Image.new("RGB", (10, 10), (0, 255, 0)), "JPEG")
    cached.write_bytes(marker)
    again = api.get(f"{ITEMS}/{item}/thumbnail")
    assert again.status_code == 200 and again.content == marker
    # a small image is never scaled up
    small = api.get(f"{ITEMS}/{shared.ids[1]}/thumbnail")
    assert Image.open(io.BytesIO(small.content)).size == Image.open(shared.paths[1]).size


def test_add_by_upload_then_search(api: TestClient, shared: Shared) -> None:
    first, second = new_image(101), new_image(102, (80, 60))
    before = len(shared.col)
    response = api.post(
        ITEMS,
        files=[("files", ("a.png", first, "image/png")), ("files", ("b.png", second, "image/png"))],
        data={"metadata": json.dumps([{"src": "upload", "tag": 1}, {"src": "upload", "tag": 2}])},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["added"], body["unchanged"], body["duplicates"], body["failed"]) == (2, 0, 0, [])
    assert [item["metadata"] for item in body["items"]] == [
        {"src": "upload", "tag": 1},
        {"src": "upload", "tag": 2},
    ]
    assert (body["items"][1]["width"], body["items"][1]["height"]) == (80, 60)
    assert len(shared.col) == before + 2
    new_id = body["items"][1]["id"]
    results = search(api, image=b64(second), k=3)
    assert results[0]["id"] == new_id
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert results[0]["metadata"] == {"src": "upload", "tag": 2}
    image = api.get(f"{ITEMS}/{new_id}/image")
    assert image.status_code == 200 and image.content == second
    assert image.headers["content-type"] == "image/png"
    # the same bytes again are a duplicate, not a new row
    again = api.post(ITEMS, files=[("files", ("c.png", second, "image/png"))]).json()
    assert again["added"] == 0 and len(shared.col) == before + 2
    bad_metadata = api.post(
        ITEMS, files=[("files", ("a.png", first, "image/png"))], data={"metadata": '{"a": 1}'}
    )
    assert_error(api, bad_metadata, 400, "bad_input")


def test_add_by_url_then_search(
    api: TestClient, shared: Shared, http_files: tuple[Path, str]
) -> None:
    folder, base = http_files
    data = new_image(103, (70, 50))
    (folder / "remote-103.png").write_bytes(data)
    url = f"{base}/remote-103.png"
    response = api.post(ITEMS, json={"urls": [url], "metadata": [{"src": "web"}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["added"] == 1
    (item,) = body["items"]
    assert item["url"] == url and item["metadata"] == {"src": "web"}
    assert (item["width"], item["height"]) == (70, 50)
    results = search(api, url=url, k=2)
    assert results[0]["id"] == item["id"] and results[0]["url"] == url
    image = api.get(f"{ITEMS}/{item['id']}/image", follow_redirects=False)
    assert image.status_code == 307 and image.headers["location"] == url
    thumb = api.get(f"{ITEMS}/{item['id']}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (70, 50)
    failed = api.post(ITEMS, json={"urls": [f"{base}/missing.png"]}).json()
    assert failed["added"] == 0 and failed["failed"][0]["source"] == f"{base}/missing.png"
    assert_error(api, api.post(ITEMS, json={"urls": []}), 422, "invalid_body")


def test_delete_item(api: TestClient, shared: Shared) -> None:
    data = new_image(104)
    added = api.post(ITEMS, files=[("files", ("d.png", data, "image/png"))]).json()
    item = added["items"][0]["id"]
    assert search(api, image=b64(data), k=1)[0]["id"] == item
    before = len(shared.col)
    response = api.delete(f"{ITEMS}/{item}")
    assert response.status_code == 200 and response.json() == {"removed": 1}
    assert len(shared.col) == before - 1
    for suffix in ("", "/image", "/thumbnail"):
        assert_error(api, api.get(f"{ITEMS}/{item}{suffix}"), 404, "not_found")
    assert item not in ids_of(search(api, image=b64(data), k=500))
    assert item not in ids_of(search(api, text="x", k=500))
    assert_error(api, api.post(SEARCH, json={"id": item}), 404, "not_found")
    assert_error(api, api.delete(f"{ITEMS}/{item}"), 404, "not_found")


def test_files_outside_the_roots_are_not_served(
    tmp_path: Path, tiny_clip: tuple[str, Path]
) -> None:
    spec, weights = tiny_clip
    photos, outside = tmp_path / "photos", tmp_path / "outside"
    photos.mkdir()
    outside.mkdir()
    (photos / "kept.png").write_bytes(new_image(201))
    (photos / "moved.png").write_bytes(new_image(202))
    (photos / "swapped.png").write_bytes(new_image(203))
    (outside / "secret.png").write_bytes(new_image(204))
    (photos / "link.png").symlink_to(outside / "secret.png")
    with Collection.create(tmp_path / "col", spec, weights=weights) as col:
        assert col.add(photos).added == 4
        ids = {Path(item.path).name: item.id for item in col.items()}  # type: ignore[arg-type]
        shutil.move(photos / "moved.png", outside / "moved.png")
        (photos / "swapped.png").unlink()
        (photos / "swapped.png").symlink_to(outside / "moved.png")
        client = TestClient(create_app({"photos": col}))
        kept = client.get(f"{ITEMS}/{ids['kept.png']}/image")
        assert kept.status_code == 200 and kept.content == (photos / "kept.png").read_bytes()
        for name in ("link.png", "moved.png", "swapped.png"):
            for suffix in ("/image", "/thumbnail"):
                response = client.get(f"{ITEMS}/{ids[name]}{suffix}")
                assert_error(client, response, 404, "not_found")
        # the item itself is still known; only its file is withheld
        assert client.get(f"{ITEMS}/{ids['link.png']}").status_code == 200
        assert not (col.path / "thumbnails" / "256" / f"{ids['link.png']}.jpg").exists()


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


# --- concurrency ------------------------------------------------------------------------------


class _SlowImage(BaseHTTPRequestHandler):
    data = b""
    delay = 1.5

    def do_GET(self) -> None:
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("content-type", "image/png")
        self.send_header("content-length", str(len(self.data)))
        self.end_headers()
        self.wfile.write(self.data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_slow_request_does_not_block_others(api: TestClient, shared: Shared) -> None:
    _SlowImage.data = shared.data(18)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowImage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/slow.png"
        with ThreadPoolExecutor(8) as pool:
            started = time.monotonic()
            slow = pool.submit(search, api, url=url, k=1)
            time.sleep(0.1)
            fast = [
                pool.submit(search, api, id=shared.ids[i], include_self=True, k=3) for i in range(6)
            ]
            for i, future in enumerate(fast):
                assert future.result(timeout=30)[0]["id"] == shared.ids[i]
            fast_done = time.monotonic() - started
            assert not slow.done()
            assert slow.result(timeout=30)[0]["id"] == shared.ids[18]
        assert fast_done < _SlowImage.delay
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_writes_by_another_collection_object_are_seen(api: TestClient, shared: Shared) -> None:
    data = new_image(105, (90, 70))
    path = shared.root / "ingested" / "late.png"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    before = api.get("/v1/collections").json()["collections"][0]["count"]
    with Collection.open(shared.col.path) as other:  # as a CLI ingest would
        assert other.add_images([path], metadata=[{"src": "cli"}]).added == 1
        new_id = other.lookup(path).id  # type: ignore[union-attr]
    assert api.get("/v1/collections").json()["collections"][0]["count"] == before + 1
    results = search(api, image=b64(data), k=2)
    assert results[0]["id"] == new_id and results[0]["metadata"] == {"src": "cli"}
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    image = api.get(f"{ITEMS}/{new_id}/image")
    assert image.status_code == 200 and image.content == data
    with Collection.open(shared.col.path) as other:
        assert other.remove(ids=[new_id]) == 1
    assert_error(api, api.get(f"{ITEMS}/{new_id}"), 404, "not_found")
    assert new_id not in ids_of(search(api, image=b64(data), k=500))


def test_errors_keep_the_server_serving(api: TestClient, shared: Shared) -> None:
    bad = [
        lambda: api.post(SEARCH, content=b"{{{"),
        lambda: api.post(SEARCH, json={"vector": [1.0]}),
        lambda: api.post(SEARCH, json={"image": b64(b"junk")}),
        lambda: api.get(f"{ITEMS}/424242"),
    ]
    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(f.result().status_code for f in [pool.submit(call) for call in bad * 3])
    assert statuses == sorted([400, 400, 415, 404] * 3)
    assert search(api, id=shared.ids[0], include_self=True, k=1)[0]["id"] == shared.ids[0]


def test_serve_config_rebuilds_the_same_app_in_a_worker(shared: Shared) -> None:
    from lookalike.server.launch import CONFIG_ENV, ServeConfig, app_from_env

    settings = ServerSettings(api_keys=("k",), max_k=7, cors_origins=("http://a.test",))
    config = ServeConfig.from_entries(
        [f"photos={shared.root / 'col'}"], settings, allow_private_urls=True
    )
    again = ServeConfig.from_json(config.to_json())
    assert again == config
    with pytest.raises(BadInputError, match="two collections"):
        ServeConfig.from_entries([str(shared.root / "col"), f"col={shared.root / 'col'}"], settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_ENV, config.to_json())
        with TestClient(app_from_env()) as worker:
            headers = {"x-api-key": "k"}
            answer = worker.post(
                "/v1/collections/photos/search", json={"id": shared.ids[0]}, headers=headers
            )
            assert answer.status_code == 200 and len(answer.json()["results"]) == 7
            assert worker.get("/v1/collections", headers={}).status_code == 401


def test_adding_by_url_refuses_server_paths(api: TestClient, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode(draw_image(99)))
    for entry in (str(secret), f"file://{secret}", "../photos/pic00.png", "a\x00b"):
        answer = api.post("/v1/collections/photos/items", json={"urls": [entry]})
        assert answer.status_code == 400, (entry, answer.text)
        assert answer.json()["error"]["code"] == "bad_input"
    assert api.get("/health").status_code == 200
