"""Fixtures of the HTTP API tests: a real collection of generated pictures, served in-process
through FastAPI's TestClient (one per test module); a local http.server on 127.0.0.1 serves the
images that URL queries and URL adds fetch. Nothing leaves loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import N, Shared, _picture
from fastapi.testclient import TestClient

from helpers import encode
from lookalike import Collection
from lookalike.fetch import FetchPolicy
from lookalike.server import create_app


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


@pytest.fixture(scope="module")
def http_files(http_root: tuple[Path, str]) -> tuple[Path, str]:
    """(folder, base URL) of a local http.server that URL queries and adds fetch from."""
    return http_root
