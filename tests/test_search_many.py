"""``Collection.search_many``: a batch of searches answers as the same searches one at a time."""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike import Collection, InvalidQueryError, NotFoundError, Query
from lookalike.allocator import give_back_freed_memory
from lookalike.collection import QUERIES_AT_ONCE

DIM = 24
N = 3_000


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((30, DIM)).astype(np.float32)
    points = centers[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", params=["flat", "ivf"])
def collection(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Collection]:
    root: Path = tmp_path_factory.mktemp(f"many-{request.param}")
    with Collection.create(root / "col", f"vectors:{DIM}") as col:
        col.add_vectors(
            _vectors(N, 0),
            [f"/data/{i}.jpg" for i in range(N)],
            metadata=[{"split": ["train", "val"][i % 2], "n": i % 5} for i in range(N)],
        )
        col.tag(range(0, N, 7), "labeled")
        if request.param == "ivf":
            assert col.rebuild_index("ivf", nlist=32) == "ivf"
        yield col


QUERY_VECTORS = _vectors(4, 1)
SEARCHES: list[dict[str, Any]] = [
    {"vector": QUERY_VECTORS[0]},
    {"vector": QUERY_VECTORS[1], "k": 5},
    {"id": 3},
    {"id": 4, "k": 1},
    {"id": [3, 10, 400]},
    {"id": 9, "include_self": True, "k": 3},
    {"query": [{"id": 5}, {"id": 6, "weight": -0.5}]},
    {"vector": QUERY_VECTORS[2], "filter": {"split": "val"}},
    {"id": 7, "filter": {"split": "val", "n": 2}},
    {"id": 8, "exclude_ids": list(range(0, 600, 2))},
    {"id": 8, "exclude_tags": ["labeled"]},
    {"vector": QUERY_VECTORS[3], "tags": ["labeled"], "k": 50},
    {"id": 12, "dedupe": 0.95},
    {"id": 13, "diverse": 0.5},
    {"relevant": [20, 21, 22], "irrelevant": [30]},
    {"id": 40, "relevant": [41]},
]


def _same(found: list, expected: list) -> None:
    """The same hits in the same order; scores equal but for float rounding (a batch runs
    other BLAS kernels than one query)."""
    assert [h.id for h in found] == [h.id for h in expected]
    assert [h.score for h in found] == pytest.approx([h.score for h in expected], abs=1e-5)


def test_a_batch_answers_as_one_search_at_a_time(collection: Collection) -> None:
    one_by_one = [collection.search(**s) for s in SEARCHES]
    together = collection.search_many(SEARCHES)
    for found, expected in zip(together, one_by_one, strict=True):
        _same(found, expected)
    assert [len(h) for h in together] == [s.get("k", 20) for s in SEARCHES]
    assert together[4][0].path == one_by_one[4][0].path


def test_ids_searched_by_are_left_out_yet_k_come_back(collection: Collection) -> None:
    # the query's own id is its best match: searched together, each still gets k others;
    # past QUERIES_AT_ONCE queries, the batch goes in parts that answer the same
    found = collection.search_many([{"id": i, "k": 5} for i in range(QUERIES_AT_ONCE + 20)])
    assert len(found) == QUERIES_AT_ONCE + 20
    for i, hits in enumerate(found):
        assert len(hits) == 5 and i not in [h.id for h in hits]
        _same(hits, collection.search(id=i, k=5))


def test_options_fill_in_what_a_query_leaves_out(collection: Collection) -> None:
    found = collection.search_many([{"id": 1}, {"id": 2, "k": 2}, Query.build(id=3)], k=4)
    assert [len(h) for h in found] == [4, 2, 20]  # a Query is taken as it is
    assert collection.search_many([]) == []


def test_bad_queries_are_named(collection: Collection) -> None:
    with pytest.raises(InvalidQueryError, match="a Query or a mapping"):
        collection.search_many([{"id": 1}, 42])  # type: ignore[list-item]
    with pytest.raises(InvalidQueryError, match="unknown search argument"):
        collection.search_many([{"id": 1, "colour": "red"}])
    with pytest.raises(NotFoundError, match=r"^query 2 of the batch: .*999999"):
        collection.search_many([{"id": 1}, {"vector": QUERY_VECTORS[0]}, {"id": 999_999}])
    with pytest.raises(NotFoundError, match=r"^no image with id 999999"):
        collection.search(id=999_999)  # one search: its error as it is
    with pytest.raises(NotFoundError, match=r"^query 1 of the batch: "):
        collection.search_many([{"id": 1}, {"relevant": [999_999]}])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_system() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(10_000)]  # 40 MB, touched
    for block in blocks:
        ctypes.memset(block, 1, 4096)
    last = libc.malloc(4096)  # pins the heap's top: only a trim can return what lies below
    for block in blocks:
        libc.free(block)
    before = _anon_mb()
    assert give_back_freed_memory()
    assert before - _anon_mb() > 20
    libc.free(last)


def _anon_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_a_search_as_deep_as_the_collection_is_exact(collection: Collection) -> None:
    # an IVF index probing a few lists holds fewer candidates than such a search asks for
    stored = collection.vectors(list(range(N)))
    scores = stored @ stored[5]
    exact = [int(i) for i in np.argsort(-scores, kind="stable") if i != 5][:600]
    for hits in (collection.search(id=5, k=600), collection.search_many([{"id": 5}], k=600)[0]):
        assert len(hits) == 600
        assert len({h.id for h in hits} & set(exact)) >= 599  # ties at the edge may swap


def test_deep_queries_go_in_parts_that_answer_the_same(collection: Collection) -> None:
    batch = [{"id": i, "k": 1200} for i in range(3)] + [{"id": 3}]  # two deep ones a part
    for found, search in zip(collection.search_many(batch), batch, strict=True):
        _same(found, collection.search(**search))
