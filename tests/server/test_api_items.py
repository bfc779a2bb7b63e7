"""The HTTP API: stored images, their files and thumbnails, adds and deletes."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from api_support import (
    ITEMS,
    LARGE,
    SEARCH,
    Shared,
    assert_error,
    b64,
    ids_of,
    new_image,
    search,
)
from fastapi.testclient import TestClient
from PIL import Image

from helpers import encode
from lookalike import Collection
from lookalike.server import create_app

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
