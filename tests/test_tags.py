"""Tags through the library: naming images, searching with and without them, durability."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from lookalike import BadInputError, Collection, InvalidQueryError, NotFoundError, Query
from lookalike.store import DATABASE


def vectors_collection(path: Path, count: int = 40, dim: int = 8, seed: int = 0) -> Collection:
    """A model-less collection of ``count`` random vectors, ids 0..count-1."""
    col = Collection.create(path, f"vectors:{dim}")
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    col.add_vectors(vectors, [f"https://example.com/{i}.jpg" for i in range(count)])
    return col


@pytest.fixture
def col(tmp_path: Path) -> Collection:
    with vectors_collection(tmp_path / "col") as opened:
        yield opened


def test_tag_untag_and_list(col: Collection) -> None:
    assert col.tag([1, 2, 3], "labeled") == 3
    assert col.tag([3, 4], "labeled") == 1  # 3 had it already
    assert col.tag(7, "label:police car") == 1
    assert col.tags(3) == ["labeled"]
    assert col.tags(7) == ["label:police car"]
    assert col.tags(0) == []
    assert col.tagged("labeled") == [1, 2, 3, 4]
    assert col.tag_counts() == {"label:police car": 1, "labeled": 4}
    assert col.untag([2, 5], "labeled") == 1
    assert col.tagged("labeled") == [1, 3, 4]


@pytest.mark.parametrize(
    "name", ["exported:batch-3", "label:police car", "ラベル/猫 ✓", "a" * 200, "x,y;z=1 'q\""]
)
def test_any_printable_tag_name_round_trips(col: Collection, name: str) -> None:
    assert col.tag([0, 5], name) == 2
    assert col.tags(5) == [name]
    assert [h.id for h in col.search(id=1, k=40, tags=[name])] == [0, 5]


@pytest.mark.parametrize("name", ["", "   ", "a" * 201, "tab\there", "new\nline", "nul\0", 3, None])
def test_bad_tag_names_are_refused_clearly(col: Collection, name: object) -> None:
    with pytest.raises(BadInputError, match="tag"):
        col.tag([1], name)  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError, match="tag"):
        col.search(id=1, exclude_tags=[name])
    assert col.tag_counts() == {}


def test_unknown_ids_tag_nothing_and_are_named(col: Collection) -> None:
    col.remove(9)
    with pytest.raises(NotFoundError, match=r"40, 9\b.*nothing tagged|9, 40"):
        col.tag([1, 40, 9], "labeled")
    assert col.tag_counts() == {}
    with pytest.raises(NotFoundError, match="12345"):
        col.tags(12345)
    with pytest.raises(BadInputError, match="integer"):
        col.tag(["1"], "labeled")  # type: ignore[list-item]


def test_exclude_tags_still_gives_k_results(col: Collection) -> None:
    """The tag mask is applied inside the search: k results whenever k rows qualify."""
    first = [h.id for h in col.search(id=0, k=10)]
    col.tag(first, "labeled")
    nxt = col.search(id=0, k=10, exclude_tags=["labeled"])
    assert len(nxt) == 10 and not set(first) & {h.id for h in nxt}
    col.tag([h.id for h in nxt], "seen")
    rest = col.search(id=0, k=40, exclude_tags=["labeled", "seen"])  # holding any is excluded
    assert len(rest) == 40 - 1 - 20
    both = col.search(id=0, k=40, tags=["labeled", "seen"])  # holding all: none hold both
    assert both == []
    only = col.search(id=0, k=40, tags=["labeled"], exclude_tags=["seen"])
    assert {h.id for h in only} == set(first)


def test_query_carries_tags_through_json(col: Collection) -> None:
    query = Query.build(id=0, k=5, tags=["a b"], exclude_tags="labeled")
    assert query.exclude_tags == ("labeled",)
    body = query.to_json()
    assert body["tags"] == ["a b"] and body["exclude_tags"] == ["labeled"]
    assert Query.from_json(body) == query
    with pytest.raises(InvalidQueryError, match="tags"):
        Query.from_json({"id": 0, "tags": {"a": 1}})


def test_tags_survive_reopen_verify_and_rebuild(tmp_path: Path) -> None:
    with vectors_collection(tmp_path / "col", count=300) as col:
        col.tag([1, 2], "labeled")
        assert col.rebuild_index("ivf", nlist=4) == "ivf"
        assert {h.id for h in col.search(id=0, k=300, tags=["labeled"])} == {1, 2}
        report = col.verify(repair=True)
        assert report.ok, report.problems
    with Collection.open(tmp_path / "col") as col:
        assert col.tagged("labeled") == [1, 2]
        assert len(col.search(id=0, k=300, exclude_tags=["labeled"])) == 297


def test_a_removed_rows_tags_do_not_come_back(col: Collection) -> None:
    col.tag([3, 4], "labeled")
    col.remove(3)
    assert col.tagged("labeled") == [4]
    assert col.tag_counts() == {"labeled": 1}
    ids = col.add_vectors(np.ones((1, 8)), ["https://example.com/3.jpg"])  # the same key, a new row
    assert col.tags(ids[0]) == []


def test_a_collection_made_before_tags_is_upgraded(tmp_path: Path) -> None:
    with vectors_collection(tmp_path / "col", count=5):
        pass
    with sqlite3.connect(tmp_path / "col" / DATABASE) as db:  # back to schema version 3
        db.execute("DROP TABLE tags")
        db.execute("PRAGMA user_version = 3")
    with Collection.open(tmp_path / "col") as col:
        assert col.tag([0], "labeled") == 1


def test_damaged_database_rebuild_keeps_tags(tmp_path: Path) -> None:
    from lookalike.recovery import rebuild_database

    with vectors_collection(tmp_path / "col", count=5) as col:
        col.tag([0, 2], "labeled")
    rebuild_database(tmp_path / "col", 8)  # what `verify --repair` runs on a damaged file
    with Collection.open(tmp_path / "col") as col:
        assert col.tagged("labeled") == [0, 2]
