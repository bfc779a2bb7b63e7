"""Duplicates across a collection: exact copies (one content hash) and near copies (cosine at
least a threshold), each group with a keeper; from the library, the CLI, HTTP and the client."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from helpers import encode, serve_app
from lookalike import APIError, AsyncClient, BadInputError, Client, Collection, DuplicateGroup
from lookalike.cli import app as cli_app
from lookalike.demo import draw_image
from lookalike.server import create_app
from lookalike.store import NewRow

D = 64
runner = CliRunner()


def at_cosine(vector: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly ``cosine`` to ``vector``."""
    unit = vector / np.linalg.norm(vector)
    other = rng.standard_normal(len(unit))
    other -= (other @ unit) * unit
    other /= np.linalg.norm(other)
    return (cosine * unit + math.sqrt(1 - cosine**2) * other).astype(np.float32)


def add_copy(col: Collection, of: int, key: str, *, bytes: int = 0) -> int:
    """Store a second row holding the content of row ``of`` (same hash, same vector), as a
    collection written by an older lookalike or another tool may hold; its id."""
    row = col.backend.rows([of])[of]
    vector = col.vectors([of])[0]
    copy = NewRow(key, row.content_hash, row.width, row.height, bytes, vector)
    with col.backend.writing():
        return col.backend.add([copy])[0]


def planted(path: Path, n: int = 300, seed: int = 0) -> Collection:
    """A ``vectors:64`` collection of ``n`` random vectors with planted copies:
    near {0, 1 (0.99), 2 (0.97, more pixels)}; near {10, 11 (0.96)}; a chain {20, 21 (0.96 to
    20), 22 (0.96 to 21)}; exact {30, n (same content, more bytes)}."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, D)).astype(np.float32)
    vectors[1] = at_cosine(vectors[0], 0.99, rng)
    vectors[2] = at_cosine(vectors[0], 0.97, rng)
    vectors[11] = at_cosine(vectors[10], 0.96, rng)
    vectors[21] = at_cosine(vectors[20], 0.96, rng)
    vectors[22] = at_cosine(vectors[21], 0.96, rng)
    sizes = [(20, 20) if i == 2 else (10, 10) for i in range(n)]
    col = Collection.create(path, f"vectors:{D}")
    col.add_vectors(vectors, [f"v{i}" for i in range(n)], sizes=sizes)
    assert add_copy(col, 30, "v30-copy", bytes=5) == n
    return col


def as_sets(groups: list[DuplicateGroup]) -> set[tuple[int, frozenset[int], bool]]:
    """(keeper, ids, exact) of each group."""
    return {(g.keeper, frozenset(g.ids), g.exact) for g in groups}


def expected(n: int) -> set[tuple[int, frozenset[int], bool]]:
    return {
        (2, frozenset({0, 1, 2}), False),
        (10, frozenset({10, 11}), False),
        (20, frozenset({20, 21, 22}), False),
        (n, frozenset({30, n}), True),
    }


@pytest.fixture(scope="module")
def vectors_col(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collection]:
    with planted(tmp_path_factory.mktemp("dups") / "col") as col:
        yield col


# --- library ------------------------------------------------------------------------------


def test_planted_exact_and_near_copies_are_grouped_with_their_keepers(vectors_col) -> None:
    groups = vectors_col.duplicates(0.95)
    assert as_sets(groups) == expected(300)
    for group in groups:
        assert group.ids[0] == group.keeper and group.ids[1:] == sorted(group.extras)
    by_keeper = {g.keeper: g for g in groups}
    vectors = vectors_col.vectors([0, 1, 2])
    weakest = min(float(vectors[a] @ vectors[b]) for a, b in ((0, 1), (0, 2), (1, 2)))
    assert by_keeper[2].score == pytest.approx(weakest, abs=1e-5)  # its weakest link
    assert by_keeper[20].score == pytest.approx(0.96, abs=1e-4)  # a chain is one group
    assert by_keeper[300].score == 1.0
    assert [len(g.ids) for g in groups] == sorted((len(g.ids) for g in groups), reverse=True)


def test_the_threshold_decides_what_is_near(vectors_col) -> None:
    assert as_sets(vectors_col.duplicates(0.98)) == {
        (0, frozenset({0, 1}), False),  # same pixels and bytes: the lowest id is kept
        (300, frozenset({30, 300}), True),
    }
    assert as_sets(vectors_col.duplicates(1.0)) == {(300, frozenset({30, 300}), True)}


def test_exact_only_groups_same_content_without_searching(vectors_col) -> None:
    calls: list[tuple[int, int]] = []
    groups = vectors_col.duplicates(exact=True, progress=lambda *done: calls.append(done))
    assert as_sets(groups) == {(300, frozenset({30, 300}), True)}
    assert calls == []  # no vector search ran


def test_progress_reaches_every_live_row(vectors_col) -> None:
    calls: list[tuple[int, int]] = []
    vectors_col.duplicates(0.95, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (301, 301)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_removed_images_leave_their_groups(tmp_path: Path) -> None:
    with planted(tmp_path / "col", n=60) as col:
        col.remove([1, 11])
        assert as_sets(col.duplicates()) == {
            (2, frozenset({0, 2}), False),
            (20, frozenset({20, 21, 22}), False),
            (60, frozenset({30, 60}), True),
        }


def test_a_group_larger_than_one_search_is_one_group(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((200, D)).astype(np.float32)
    for i in range(1, 60):  # 59 copies of row 0: more than a first search returns
        vectors[i] = at_cosine(vectors[0], 0.99, rng)
    with Collection.create(tmp_path / "col", f"vectors:{D}") as col:
        col.add_vectors(vectors, [f"v{i}" for i in range(200)])
        assert as_sets(col.duplicates(0.95)) == {(0, frozenset(range(60)), False)}


def test_a_trained_index_finds_the_same_groups(tmp_path: Path) -> None:
    with planted(tmp_path / "col", n=1500) as col:
        exact_search = col.duplicates(0.95)
        assert col.rebuild_index("ivf", nlist=16) == "ivf"
        trained = col.duplicates(0.95)
        assert as_sets(trained) == as_sets(exact_search) == expected(1500)


@pytest.mark.parametrize("threshold", [0, -0.5, 1.01, 2, math.nan, True, "0.9", None])
def test_a_threshold_outside_0_1_is_refused(vectors_col, threshold) -> None:
    with pytest.raises(BadInputError, match="threshold"):
        vectors_col.duplicates(threshold)


def test_real_images_copies_of_the_tiny_model(tiny_clip, tmp_path: Path) -> None:
    """Images: a picture saved again larger and one re-encoded as JPEG are near copies of
    theirs (the random tiny model finds most pictures alike, hence a high threshold), and a
    row holding the same file's content is an exact copy."""
    spec, weights = tiny_clip
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"p{i}.png")
        paths[-1].write_bytes(encode(draw_image(i, (64, 48))))
    larger = tmp_path / "p0-large.png"
    larger.write_bytes(encode(draw_image(0, (64, 48)).resize((128, 96))))
    jpeg = tmp_path / "p1.jpg"
    jpeg.write_bytes(encode(draw_image(1, (64, 48)), "JPEG", quality=90))
    with Collection.create(tmp_path / "col", spec, weights=weights) as col:
        ids = col.add_images([*paths, larger, jpeg], workers=0).ids
        copy = add_copy(col, ids[3], str(tmp_path / "elsewhere" / "p3.png"))
        groups = col.duplicates(0.999)
        assert as_sets(groups) == {
            (ids[8], frozenset({ids[0], ids[8]}), False),  # the larger one is kept
            (ids[1], frozenset({ids[1], ids[9]}), False),  # same pixels: the PNG has more bytes
            (ids[3], frozenset({ids[3], copy}), True),
        }
        assert as_sets(col.duplicates(exact=True)) == {(ids[3], frozenset({ids[3], copy}), True)}


# --- CLI ----------------------------------------------------------------------------------


def cli(*args: object):
    return runner.invoke(cli_app, ["duplicates", *map(str, args)])


def test_cli_table_json_and_csv(vectors_col) -> None:
    path = vectors_col.path
    table = cli(path, "--threshold", "0.95")
    assert table.exit_code == 0, table.output
    assert "4 groups, 6 copies besides the keepers" in table.stdout
    assert "v30-copy" in table.stdout and "exact" in table.stdout
    listed = json.loads(cli(path, "--json").stdout)
    assert {(g["keeper"], frozenset(g["ids"]), g["exact"]) for g in listed} == expected(300)
    first = next(g for g in listed if g["keeper"] == 2)
    assert first["paths"] == ["v2", "v0", "v1"] and first["extras"] == [0, 1]
    lines = list(csv.DictReader(io.StringIO(cli(path, "--csv", "--exact").stdout)))
    assert [(line["id"], line["keeper"], line["path"]) for line in lines] == [
        ("300", "True", "v30-copy"),
        ("30", "False", "v30"),
    ]
    assert cli(path, "--format", "csv", "--exact").stdout == cli(path, "--csv", "--exact").stdout


def test_cli_says_when_there_are_none(tmp_path: Path) -> None:
    with Collection.create(tmp_path / "col", f"vectors:{D}") as col:
        col.add_vectors(np.eye(D, dtype=np.float32)[:5], [f"v{i}" for i in range(5)])
    done = cli(tmp_path / "col")
    assert done.exit_code == 0 and "no duplicates" in done.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--threshold", "0"], "threshold must be a cosine in (0, 1]"),
        (["--threshold", "1.5"], "threshold must be a cosine in (0, 1]"),
        (["--format", "xml"], "--format must be one of table, json, csv"),
        (["--json", "--csv"], "choose one output"),
        (["--tag-extra", " "], "--tag-extra needs a tag name"),
    ],
)
def test_cli_bad_input_is_one_line(vectors_col, monkeypatch, capsys, args, needle) -> None:
    from test_cli import one_line_error, run_main

    code, out, err = run_main(monkeypatch, capsys, "duplicates", vectors_col.path, *args)
    assert code == 1 and out == ""
    one_line_error(err, needle)


@pytest.mark.skipif(hasattr(Collection, "tag"), reason="tags are here: see the next test")
def test_cli_tag_extra_without_tags_says_so(vectors_col, monkeypatch, capsys) -> None:
    from test_cli import one_line_error, run_main

    code, _, err = run_main(
        monkeypatch, capsys, "duplicates", vectors_col.path, "--tag-extra", "dup"
    )
    assert code == 1
    one_line_error(err, "--tag-extra needs image tags")


@pytest.mark.skipif(not hasattr(Collection, "tag"), reason="needs Collection.tag (tags branch)")
def test_cli_tag_extra_tags_every_copy_but_the_keepers(tmp_path: Path) -> None:
    with planted(tmp_path / "col", n=60):
        pass
    done = cli(tmp_path / "col", "--tag-extra", "dup")
    assert done.exit_code == 0, done.output
    assert "tagged 6 images 'dup'" in done.stderr
    with Collection.open(tmp_path / "col") as col:  # tagging them again changes nothing
        assert col.tag([0, 1, 11, 21, 22, 30], "dup") == 0  # type: ignore[attr-defined]


# --- HTTP and the client ------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(vectors_col) -> TestClient:
    return TestClient(create_app({"vecs": vectors_col}))


def groups_of(payload: dict) -> set[tuple[int, frozenset[int], bool]]:
    return {(g["keeper"], frozenset(g["ids"]), g["exact"]) for g in payload["groups"]}


def test_http_get_and_post(api: TestClient) -> None:
    got = api.get("/v1/collections/vecs/duplicates", params={"threshold": 0.95})
    assert got.status_code == 200, got.text
    assert groups_of(got.json()) == expected(300)
    assert got.json()["threshold"] == 0.95 and got.json()["exact"] is False
    posted = api.post("/v1/collections/vecs/duplicates", json={"threshold": 0.98})
    assert groups_of(posted.json()) == {
        (0, frozenset({0, 1}), False),
        (300, frozenset({30, 300}), True),
    }
    exact = api.post("/v1/collections/vecs/duplicates", json={"exact": True})
    assert groups_of(exact.json()) == {(300, frozenset({30, 300}), True)}
    assert groups_of(api.post("/v1/collections/vecs/duplicates").json()) == expected(300)
    spec = api.get("/openapi.json").json()
    assert {"get", "post"} <= set(spec["paths"]["/v1/collections/{name}/duplicates"])
    assert "DuplicatesBody" in spec["components"]["schemas"]


@pytest.mark.parametrize(
    ("method", "send", "status"),
    [
        ("GET", {"params": {"threshold": 0}}, 422),
        ("GET", {"params": {"threshold": 1.5}}, 422),
        ("GET", {"params": {"threshold": "high"}}, 422),
        ("POST", {"json": {"threshold": -1}}, 422),
        ("POST", {"json": {"threshold": 0.9, "format": "xml"}}, 422),
        ("POST", {"json": [0.9]}, 422),
        ("POST", {"content": b"{not json"}, 400),
    ],
)
def test_http_bad_input_is_a_clear_4xx(api: TestClient, method, send, status) -> None:
    response = api.request(method, "/v1/collections/vecs/duplicates", **send)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    unknown = api.get("/v1/collections/nope/duplicates")
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]


def test_client_sync_async_and_handle(vectors_col) -> None:
    with serve_app(create_app({"vecs": vectors_col})) as url:
        with Client(url) as client:
            assert as_sets(client.duplicates("vecs", 0.95)) == expected(300)
            handle = client.collection("vecs")
            groups = handle.duplicates(exact=True, timeout=60)
            assert groups == [DuplicateGroup(keeper=300, ids=[300, 30], exact=True, score=1.0)]
            with pytest.raises(APIError) as refused:
                handle.duplicates(1.5)
            assert refused.value.status == 422 and "threshold" in refused.value.message

        async def remote() -> list[DuplicateGroup]:
            async with AsyncClient(url) as client:
                return await client.collection("vecs").duplicates(0.98)

        assert as_sets(asyncio.run(remote())) == as_sets(vectors_col.duplicates(0.98))


def test_http_runs_one_pass_at_a_time(vectors_col) -> None:
    """A second pass asked while one runs gets 503 busy at once, not a second full pass."""
    api = TestClient(create_app({"vecs": vectors_col}))
    running, answered = threading.Event(), threading.Event()
    original = vectors_col.duplicates

    def held(*args, **options):  # the first pass waits until the second request is answered
        def progress(*_: int) -> None:
            running.set()
            answered.wait(10)

        return original(*args, **options, progress=progress)

    vectors_col.duplicates = held
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(api.get, "/v1/collections/vecs/duplicates")
            assert running.wait(10)
            second = api.get("/v1/collections/vecs/duplicates", params={"exact": True})
            answered.set()
            assert first.result().status_code == 200
    finally:
        del vectors_col.duplicates
    assert second.status_code == 503 and second.json()["error"]["code"] == "busy"
    assert api.get("/v1/collections/vecs/duplicates", params={"exact": True}).status_code == 200
