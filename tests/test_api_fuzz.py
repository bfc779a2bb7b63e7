"""The OpenAPI spec, fuzzed: whatever the generated request, the server never answers 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")

from helpers import encode  # noqa: E402
from lookalike import Collection, FetchError  # noqa: E402
from lookalike.demo import draw_image  # noqa: E402
from lookalike.server import ServerSettings, create_app  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(tiny_clip: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory):
    spec, weights = tiny_clip
    folder = tmp_path_factory.mktemp("fuzz-images")
    paths = []
    for i in range(6):
        path = folder / f"img{i}.png"
        path.write_bytes(encode(draw_image(i)))
        paths.append(path)
    collection = Collection.create(folder / "col", spec, weights=weights)
    collection.add_images(paths, metadata=[{"n": i} for i in range(6)])
    app = create_app({"photos": collection}, ServerSettings(max_k=50))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_operation_answers_a_server_error(api_schema, monkeypatch) -> None:
    def no_dns(host: str, port: int) -> list:
        raise FetchError(f"{host} is not resolved in tests")

    monkeypatch.setattr("lookalike.fetch._resolve", no_dns)  # generated URLs stay offline
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def no_server_error(case) -> None:
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, response.text[:300])
            if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
                assert set(response.json()) == {"error"}, response.text[:300]

        no_server_error()
