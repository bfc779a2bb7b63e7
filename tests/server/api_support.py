"""What the HTTP API tests share: the shared collection's pictures and layout, and small
helpers to search and to check error answers."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from helpers import encode
from lookalike import Collection
from lookalike.demo import draw_image
from lookalike.server import ServerSettings, create_app

N = 30
LARGE = 28  # a 600x400 image, for thumbnails that must shrink
COPY = 29  # image 0 with one pixel changed: a near duplicate with other bytes
HIT_KEYS = {"id", "score", "url", "thumbnail_url", "name", "path", "width", "height", "metadata"}
SEARCH = "/v1/collections/photos/search"
ITEMS = "/v1/collections/photos/items"
MB = 1024 * 1024


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
