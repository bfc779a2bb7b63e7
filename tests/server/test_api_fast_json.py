"""The search route reads bodies with orjson (where installed) and writes its answer straight
to JSON: the values, the errors and the documented response model stay what they were."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import PurePath
from typing import Any

import numpy as np
import pytest
from api_support import assert_error
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from lookalike import Collection
from lookalike.server import ServerSettings, create_app
from lookalike.server.bodies import relative_path
from lookalike.server.fastjson import loads
from lookalike.server.schemas import HitBody, SearchResponse
from lookalike.types import Item

SEARCH = "/v1/collections/v/search"
DIM = 8
BIG = 2**70  # past 64 bits: orjson alone would read it as a float


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collection]:
    col = Collection.create(tmp_path_factory.mktemp("fastjson") / "v", f"vectors:{DIM}")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, DIM)).astype(np.float32)
    metadata: list[dict[str, Any]] = [
        {"n": i, "even": i % 2 == 0, "caption": f"vecteur n° {i} \u2028", "w": i / 7}
        for i in range(30)
    ]
    metadata[3]["big"] = BIG
    col.add_vectors(vectors, [f"/data/images/v{i}.jpg" for i in range(30)], metadata=metadata)
    yield col
    col.close()


@pytest.fixture(scope="module", params=[False, True], ids=["paths hidden", "paths shown"])
def api(collection: Collection, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    app = create_app({"v": collection}, ServerSettings(show_paths=request.param))
    with TestClient(app) as client:
        yield client


def vector(seed: int) -> list[float]:
    return [float(x) for x in np.random.default_rng(seed).normal(size=DIM)]


@pytest.mark.parametrize(
    "body",
    [
        {"vector": vector(1)},
        {"vector": vector(2), "k": 30, "filter": {"even": True}},
        {"id": 4},
        {"id": 4, "include_self": True, "exclude_ids": [5, 6]},
        {"query": [{"id": 1}, {"vector": vector(3), "weight": -0.5}], "k": 5},
    ],
)
def test_a_search_answer_is_what_its_documented_model_writes(
    api: TestClient, collection: Collection, body: dict[str, Any]
) -> None:
    response = api.post(SEARCH, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    modelled = SearchResponse.model_validate_json(response.content).model_dump(mode="json")
    assert answer == modelled  # no field missing, extra or of another type
    assert list(answer) == list(SearchResponse.model_fields)
    assert all(list(hit) == list(HitBody.model_fields) for hit in answer["results"])
    expected = collection.search(**{"k": 20, **body})
    assert [h["id"] for h in answer["results"]] == [h.id for h in expected]
    assert [h["score"] for h in answer["results"]] == [h.score for h in expected]  # exact
    assert [h["metadata"] for h in answer["results"]] == [h.metadata for h in expected]


def test_integers_past_64_bits_in_metadata_come_back_exact(api: TestClient) -> None:
    answer = api.post(SEARCH, json={"id": 3, "include_self": True, "k": 1}).json()
    assert answer["results"][0]["metadata"]["big"] == BIG


def test_integers_past_64_bits_in_a_body_are_refused_as_integers(api: TestClient) -> None:
    error = assert_error(api, api.post(SEARCH, content=f'{{"id": {BIG}}}'), 422)
    assert str(BIG) in error["message"]  # the integer as sent, not a float near it
    response = api.post(SEARCH, content=f'{{"id": 1, "filter": {{"n": {2**64}}}}}')
    assert "64-bit" in assert_error(api, response, 400)["message"]


def test_bodies_orjson_refuses_are_read_as_the_standard_library_reads_them(
    api: TestClient,
) -> None:
    body = {"vector": vector(4), "k": 3}
    expected = api.post(SEARCH, json=body).json()["results"]
    text = json.dumps(body)
    for raw in (text.encode("utf-16"), b"\xef\xbb\xbf" + text.encode()):  # BOMs, UTF-16
        response = api.post(SEARCH, content=raw)
        assert response.status_code == 200, response.text
        assert response.json()["results"] == expected
    deep = b"[" * 2000 + b"]" * 2000  # past orjson's depth, and the standard library's
    assert (
        "nests JSON too deep" in assert_error(api, api.post(SEARCH, content=deep), 400)["message"]
    )


def test_floats_with_long_fractions_are_read_exactly(api: TestClient) -> None:
    # digits after the point (here 22) are no long integer: the fast parser reads them
    small = [0.0000123456789012345678, *vector(5)[1:]]
    raw = "[" + ",".join(["0.0000123456789012345678", *map(repr, small[1:])]) + "]"
    response = api.post(SEARCH, content=f'{{"vector": {raw}, "k": 2}}')
    assert response.status_code == 200, response.text
    assert response.json() == {
        **response.json(),
        "results": api.post(SEARCH, json={"vector": small, "k": 2}).json()["results"],
    }


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_the_parser_agrees_with_the_standard_library(value: Any, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    parsed = loads(raw)
    assert parsed == json.loads(raw)
    assert type(parsed) is type(json.loads(raw))


def test_the_parser_agrees_on_what_orjson_refuses() -> None:
    for raw in (b"NaN", b"[1e400]", b'"\\ud800"', b"\xef\xbb\xbf{}", b"[-9223372036854775809]"):
        assert repr(loads(raw)) == repr(json.loads(raw))
    for raw in (b"{", b"\xff", b"[1,]"):
        with pytest.raises(ValueError):
            loads(raw)


def relative_by_purepath(path: str, roots: list[str]) -> str | None:
    """What relative_path answers, as PurePath computes it."""
    holding = [PurePath(root) for root in roots if PurePath(path).is_relative_to(root)]
    if not holding:
        return None
    outermost = min(holding, key=lambda root: len(root.parts))
    return PurePath(path).relative_to(outermost).as_posix()


NAMES = st.lists(st.sampled_from(["a", "ab", "b"]), max_size=4)
PLAIN_PATHS = NAMES.map(lambda names: "/" + "/".join(names))  # as PurePath writes them
ODD_PATHS = st.builds(  # empty and "." parts, trailing slashes, relative, ".."
    lambda absolute, parts, tail: ("/" if absolute else "") + "/".join(parts) + tail,
    st.booleans(),
    st.lists(st.sampled_from(["a", "ab", ".", "", "..", "é x"]), max_size=5),
    st.sampled_from(["", "/", "/."]),
)
PATHS = PLAIN_PATHS | ODD_PATHS


@settings(max_examples=500, deadline=None)
@given(PATHS, st.lists(PATHS, max_size=3))
def test_paths_shown_relative_to_their_root_agree_with_purepath(
    path: str, roots: list[str]
) -> None:
    item = Item(id=1, path=path or "/")
    assert relative_path(item, roots) == relative_by_purepath(path or "/", roots)
