"""The HTTP API under concurrency: slow requests, writes from other processes, worker configs."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from api_support import (
    ITEMS,
    SEARCH,
    Shared,
    assert_error,
    b64,
    ids_of,
    new_image,
    search,
)
from fastapi.testclient import TestClient

from helpers import encode
from lookalike import BadInputError, Collection
from lookalike.demo import draw_image
from lookalike.server import ServerSettings

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
