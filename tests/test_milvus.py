"""The Milvus backend, against a real Milvus standalone server (the one the ``milvus`` package
ships), started once for this module on a free local port and stopped at its end.

Every behaviour is checked the same way: the same operations on a Milvus-backed and an
embedded collection give the same answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lookalike import BadInputError, Collection, CollectionError, NotFoundError
from lookalike.cli import app as cli_app
from lookalike.cli import main
from lookalike.layout import MANIFEST
from lookalike.store import Row

DIM = 32
N = 1_500
K = 20
HOSTILE = [
    'say "hi"',
    "back\\slash",
    "\\",
    '\\"',
    "it's",
    '" or id >= 0 or "',
    "') or true or ('",
    "line\nbreak\ttab",
    "ünï cödé 😀",
    "",
]


def _vectors(n: int, seed: int) -> np.ndarray:
    """Clustered unit vectors, so neighbours are near and ties are rare."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, DIM)).astype(np.float32)
    points = centers[rng.integers(0, 40, n)] + 0.4 * rng.standard_normal((n, DIM)).astype(
        np.float32
    )
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def _metadata(i: int) -> dict[str, Any]:
    return {
        "split": ["train", "val", "test"][i % 3],
        "n": i % 7,
        "ratio": [0.5, 1.25][i % 2],
        "flag": i % 4 == 0,
        "label": HOSTILE[i % len(HOSTILE)],
        **({"rare": "yes"} if i % 50 == 0 else {}),
    }


def _pair(root: Path, uri: str, n: int = N, seed: int = 0) -> tuple[Collection, Collection]:
    """(Milvus-backed, embedded) collections holding the same vectors and metadata."""
    made = (
        Collection.create(root / "milvus", f"vectors:{DIM}", backend="milvus", uri=uri),
        Collection.create(root / "embedded", f"vectors:{DIM}"),
    )
    vectors = _vectors(n, seed)
    for col in made:
        ids = col.add_vectors(
            vectors,
            [f"/data/v{i}.jpg" for i in range(n)],
            metadata=[_metadata(i) for i in range(n)],
        )
        assert ids == list(range(n))
    return made


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, milvus_uri: str
) -> Iterator[tuple[Collection, Collection]]:
    """A read-only pair, shared by the search tests."""
    made = _pair(tmp_path_factory.mktemp("pair"), milvus_uri)
    yield made
    for col in made:
        col.close()


def _agree(found: list, expected: list, *, overlap: float = 0.95) -> None:
    """Top results agree: overlap of ids, and scores within 1e-4 for the ids in both."""
    assert len(found) == len(expected)
    if not expected:
        return
    got = {h.id: h.score for h in found}
    want = {h.id: h.score for h in expected}
    common = set(got) & set(want)
    assert len(common) >= overlap * len(want), (sorted(got), sorted(want))
    assert max(abs(got[i] - want[i]) for i in common) < 1e-4


SEARCHES: list[dict[str, Any]] = [
    {"id": 3},
    {"id": [3, 10, 400]},
    {"query": [{"id": 5}, {"id": 6, "weight": -0.5}]},
    {"id": 7, "filter": {"split": "val"}},
    {"id": 7, "filter": {"split": "train", "n": 2}},
    {"id": 7, "filter": {"ratio": 1.25, "flag": False}},
    {"id": 8, "filter": {"rare": None}},
    {"id": 8, "filter": {"rare": "yes"}},
    {"id": 9, "exclude_ids": list(range(0, 300, 2))},
    {"id": 9, "include_self": True, "k": 1},
    {"id": 11, "k": 300},
    {"id": 12, "dedupe": 0.95},
]


@pytest.mark.parametrize("options", SEARCHES, ids=lambda o: json.dumps(o)[:40])
def test_searches_agree_with_the_embedded_backend(
    pair: tuple[Collection, Collection], options: dict[str, Any]
) -> None:
    milvus, embedded = pair
    options = {"k": K, **options}
    _agree(milvus.search(**options), embedded.search(**options))


def test_a_batch_of_searches_agrees_with_the_embedded_backend(
    pair: tuple[Collection, Collection],
) -> None:
    milvus, embedded = pair
    found = milvus.search_many(SEARCHES, k=K)
    for options, hits in zip(SEARCHES, found, strict=True):
        _agree(hits, embedded.search(**{"k": K, **options}))


def test_vector_queries_agree_and_hits_carry_the_rows(pair: tuple[Collection, Collection]) -> None:
    milvus, embedded = pair
    for query in _vectors(10, seed=99):
        found, expected = milvus.search(vector=query, k=K), embedded.search(vector=query, k=K)
        _agree(found, expected)
        assert [(h.path, h.metadata) for h in found[:5]] == [
            (h.path, h.metadata) for h in expected[:5]
        ]
    assert milvus.stats().index == "flat"
    assert milvus.get(5) == embedded.get(5)
    assert np.allclose(milvus.vectors([1, 2]), embedded.vectors([1, 2]), atol=1e-6)
    assert milvus.lookup("/data/v9.jpg") == embedded.lookup("/data/v9.jpg")
    assert milvus.backend.metadata_keys() == embedded.backend.metadata_keys()


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_filter_values_match_exactly(
    pair: tuple[Collection, Collection], value: str
) -> None:
    """Quotes, backslashes and would-be expression code in a filter value are data: the rows
    holding exactly that value match, no more."""
    milvus, embedded = pair
    found = milvus.search(id=1, k=N, filter={"label": value})
    expected = embedded.search(id=1, k=N, filter={"label": value})
    assert {h.id for h in found} == {h.id for h in expected}
    assert found and all(h.metadata["label"] == value for h in found)


def test_hostile_filter_keys_and_bad_filters(pair: tuple[Collection, Collection]) -> None:
    milvus, embedded = pair
    for key in ["back\\slash", "it's", "ü"]:  # legal keys that no row has
        assert milvus.search(id=1, filter={key: "x"}) == embedded.search(id=1, filter={key: "x"})
    for bad in [{'a"b': 1}, {"a.b": 1}, {"x": [1]}, {"x": float("nan")}, {"x": 2**70}]:
        with pytest.raises(BadInputError):
            milvus.search(id=1, filter=bad)


def _timeless(rows: dict[int, Row]) -> dict[int, Row]:
    return {i: replace(row, added_at=0.0) for i, row in rows.items()}


def test_removes_adds_and_reopen_behave_the_same(
    tmp_path: Path, milvus_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    milvus, embedded = _pair(tmp_path, milvus_uri, n=300, seed=1)
    extra = _vectors(5, seed=2)
    for col in (milvus, embedded):
        assert col.remove([3, 4, 250]) == 3
        assert col.remove(paths=["/data/v5.jpg"]) == 1
        with pytest.raises(NotFoundError):
            col.remove([3])  # removed already: nothing is removed
        # an existing key keeps its id; a new one gets the next id
        assert col.add_vectors(extra[:2], ["/data/v6.jpg", "/data/new.jpg"]) == [6, 300]
    for col in (milvus, embedded):
        assert len(col) == 297
        assert col.backend.count == 301
        assert col.backend.deleted_count() == 4
        with pytest.raises(NotFoundError):
            col.get(3)
        with pytest.raises(NotFoundError):
            col.vectors([4])
        assert col.lookup("/data/v5.jpg") is None
    assert _timeless(milvus.backend.rows([3, 7, 400])) == _timeless(
        embedded.backend.rows([3, 7, 400])
    )
    gone = milvus.backend.rows([3])[3]
    assert gone.deleted and gone.key == "/data/v3.jpg"
    assert milvus.backend.removed_by_key("/data/v3.jpg").id == 3
    assert [r.id for r in milvus.backend.iter_live()] == [
        r.id for r in embedded.backend.iter_live()
    ]
    for options in ({"id": 2}, {"id": 300}, {"vector": extra[4]}):
        found = milvus.search(k=K, **options)
        _agree(found, embedded.search(k=K, **options))
        assert not {3, 4, 5, 250} & {h.id for h in found}

    # reopened from its folder: the manifest names the server; the same rows and answers
    milvus.backend.add_roots(["/data"])
    before = milvus.search(id=1, k=K)
    manifest = json.loads((tmp_path / "milvus" / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["backend"] == "milvus" and manifest["milvus"]["uri"] == milvus_uri
    milvus.close()
    again = Collection.open(tmp_path / "milvus")
    assert (len(again), again.backend.count, again.backend.deleted_count()) == (297, 301, 4)
    assert again.search(id=1, k=K) == before
    assert _timeless(again.backend.rows([3, 300])) == _timeless(embedded.backend.rows([3, 300]))
    assert "/data" in again.roots()
    with pytest.raises(CollectionError, match="verify checks embedded collections"):
        again.verify()
    monkeypatch.setattr(sys, "argv", ["lookalike", "verify", str(tmp_path / "milvus")])
    with pytest.raises(SystemExit) as ended:
        main()
    stderr = capsys.readouterr().err
    assert ended.value.code and "verify checks embedded" in stderr and "Traceback" not in stderr
    # asking for it as it is opens it; as something else is refused
    spec = f"vectors:{DIM}"
    Collection.create(tmp_path / "milvus", spec, exist_ok=True, backend="milvus").close()
    with pytest.raises(CollectionError, match="milvus backend, not embedded"):
        Collection.create(tmp_path / "milvus", spec, exist_ok=True, backend="embedded")
    with pytest.raises(CollectionError, match="not http://elsewhere:19530"):
        Collection.create(tmp_path / "milvus", spec, exist_ok=True, uri="http://elsewhere:19530")
    again.close()


def test_tags_and_tag_filters(tmp_path: Path, milvus_uri: str) -> None:
    """The tag methods of the Backend protocol (tags branch): tag, untag, tags_of, tagged,
    tag_counts, and search's tags= / exclude_tags=."""
    milvus, _ = _pair(tmp_path, milvus_uri, n=100, seed=4)
    backend = milvus.backend
    with backend.writing():
        assert backend.tag([1, 2, 3], 'good "one"') == 3
        assert backend.tag([2, 3], 'good "one"') == 0
        assert backend.tag([3, 4], "back\\slash") == 2
        assert backend.untag([1, 9], 'good "one"') == 1
    assert backend.tags_of([1, 2, 3, 4]) == {
        2: ['good "one"'],
        3: ["back\\slash", 'good "one"'],
        4: ["back\\slash"],
    }
    assert backend.tagged('good "one"') == [2, 3]
    assert backend.tag_counts() == {"back\\slash": 2, 'good "one"': 2}
    query = milvus.vectors([2])
    _, ids = backend.search(query, 10, tags=['good "one"'])
    assert set(ids[0]) == {2, 3, -1}
    _, ids = backend.search(query, 10, tags=['good "one"', "back\\slash"])
    assert set(ids[0]) == {3, -1}
    _, ids = backend.search(query, 100, exclude_tags=["back\\slash"])
    assert {3, 4}.isdisjoint(ids[0]) and len(set(ids[0]) - {-1}) == 98
    milvus.remove([3])  # a removed row loses its tags
    assert backend.tagged('good "one"') == [2]
    assert backend.tag_counts() == {"back\\slash": 1, 'good "one"': 1}


def test_rebuild_index_hnsw_then_flat(pair: tuple[Collection, Collection]) -> None:
    """Runs last of the tests on the shared pair: it ends with the exact index back."""
    milvus, embedded = pair
    assert milvus.rebuild_index("hnsw") == "hnsw" and milvus.stats().index == "hnsw"
    overlaps = []
    for query in _vectors(20, seed=6):
        found = {h.id for h in milvus.search(vector=query, k=K)}
        overlaps.append(len(found & {h.id for h in embedded.search(vector=query, k=K)}) / K)
    assert np.mean(overlaps) >= 0.95
    with pytest.raises(BadInputError, match="index kind"):
        milvus.rebuild_index("annoy")
    with pytest.raises(BadInputError, match="fixed settings"):
        milvus.tune_index(target_recall=0.9)
    assert milvus.rebuild_index("flat") == "flat"
    _agree(milvus.search(id=3, k=K), embedded.search(id=3, k=K))


CRASH = """
import sys
from lookalike import Collection
from lookalike.backends import milvus
import numpy as np

col = Collection.open(sys.argv[1])
save = milvus.MilvusBackend._save

def die_at_commit(self, **changes):
    if "count" in changes:
        import os
        os._exit(3)  # the process dies between inserting the rows and committing them
    save(self, **changes)

milvus.MilvusBackend._save = die_at_commit
col.add_vectors(np.eye(4, 32, dtype=np.float32), [f"/crash/{i}" for i in range(4)])
"""


def test_a_write_that_dies_before_its_commit_is_invisible_then_undone(
    tmp_path: Path, milvus_uri: str
) -> None:
    milvus, _ = _pair(tmp_path, milvus_uri, n=50, seed=7)
    milvus.close()
    died = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CRASH), str(tmp_path / "milvus")],
        capture_output=True,
        text=True,
        timeout=120,
        encoding="utf-8",
    )
    assert died.returncode == 3, died.stderr
    col = Collection.open(tmp_path / "milvus")
    assert col.backend.count == 50 and len(col) == 50
    assert col.lookup("/crash/0") is None
    assert all(h.id < 50 for h in col.search(vector=np.eye(1, 32)[0], k=60))
    raw = col.backend._collection  # the Milvus collection itself: the rows are there
    assert len(raw.query("id >= 50", output_fields=["id"], consistency_level="Strong")) == 4
    assert col.add_vectors(np.eye(2, 32, dtype=np.float32), ["/a", "/b"]) == [50, 51]
    left = raw.query("id >= 50", output_fields=["key"], consistency_level="Strong")
    assert sorted(e["key"] for e in left) == ["/a", "/b"]  # the next writer undid the rest
    col.close()


def test_bad_backend_arguments_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="needs the server's uri"):
        Collection.create(tmp_path / "a", f"vectors:{DIM}", backend="milvus")
    with pytest.raises(BadInputError, match="backend must be one of"):
        Collection.create(tmp_path / "b", f"vectors:{DIM}", backend="faiss")
    with pytest.raises(BadInputError, match="looks like"):
        Collection.create(tmp_path / "c", f"vectors:{DIM}", backend="milvus", uri="localhost")
    started = time.monotonic()
    with pytest.raises(CollectionError, match="cannot reach Milvus"):
        Collection.create(
            tmp_path / "d", f"vectors:{DIM}", backend="milvus", uri="http://127.0.0.1:9"
        )
    assert time.monotonic() - started < 30
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_cli_index_and_the_server_answer_from_milvus(
    tmp_path: Path,
    milvus_uri: str,
    tiny_clip: tuple[str, Path],
    image_folder: Any,
) -> None:
    """`lookalike index --backend milvus --uri` makes a Milvus-backed collection; the HTTP API
    answers searches, items and images from it as from an embedded one."""
    from lookalike.server import create_app

    spec, weights = tiny_clip
    photos = image_folder(12)
    cols = {"milvus": tmp_path / "m", "embedded": tmp_path / "e"}
    for name, path in cols.items():
        extra = ["--backend", "milvus", "--uri", milvus_uri] if name == "milvus" else []
        args = ["index", photos, "-c", path, "--model", spec, "--weights", weights]
        args += ["--workers", 0, "--runtime", "torch"]  # no ONNX export: faster
        result = CliRunner().invoke(cli_app, [*map(str, args), *extra])
        assert result.exit_code == 0, result.output
    assert (
        json.loads((cols["milvus"] / MANIFEST).read_text(encoding="utf-8"))["backend"] == "milvus"
    )
    opened = {name: Collection.open(path, runtime="torch") for name, path in cols.items()}
    answers: dict[str, Any] = {}
    for name, col in opened.items():
        with TestClient(create_app({"photos": col})) as client:
            body = {"text": "a red square", "k": 5}
            found = client.post("/v1/collections/photos/search", json=body)
            assert found.status_code == 200, found.text
            results = found.json()["results"]
            first = results[0]["id"]
            item = client.get(f"/v1/collections/photos/items/{first}").json()
            assert item["id"] == first and item["metadata"] == col.get(first).metadata
            image = client.get(f"/v1/collections/photos/items/{first}/image")
            assert image.status_code == 200
            assert image.content == Path(col.get(first).path).read_bytes()
            listed = client.get("/v1/collections").json()
            answers[name] = (
                [(r["path"], round(r["score"], 4)) for r in results],
                listed["collections"][0]["count"],
            )
    assert answers["milvus"] == answers["embedded"]
    for col in opened.values():
        col.close()
