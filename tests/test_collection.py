"""The public Collection: on disk, incremental ingest, search options, bad input, crashes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import encode
from lookalike import (
    BadInputError,
    Collection,
    CollectionError,
    FetchError,
    Hit,
    ImageError,
    ModelMismatchError,
    NotFoundError,
)
from lookalike.demo import draw_image
from lookalike.fetch import FetchPolicy
from lookalike.imaging import ImageLimits

LOCAL = FetchPolicy(allow_private=True)
DUPE = 0.9999  # cosine above which two hits count as the same picture for the tiny model


def write_image(path: Path, seed: int, fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(draw_image(seed, size), fmt))
    return path


def every_id(col: Collection) -> list[int]:
    return [item.id for item in col.items()]


def brute_force(col: Collection, query: np.ndarray, k: int, skip: set[int] = frozenset()):
    """(ids, scores) of the k best live rows by exact dot product, computed in the test."""
    ids = np.array([i for i in every_id(col) if i not in skip])
    scores = col.vectors(list(ids)) @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order].tolist(), scores[order]


def top(col: Collection, **query) -> Hit:
    return col.search(k=1, **query)[0]


@pytest.fixture
def make_col(tiny_clip, tmp_path: Path) -> Callable[..., Collection]:
    """Creates tiny-model collections under tmp_path; closed at the end of the test."""
    spec, weights = tiny_clip
    made: list[Collection] = []

    def make(name: str = "col", **options) -> Collection:
        options.setdefault("fetch_policy", LOCAL)
        made.append(Collection.create(tmp_path / name, spec, weights=weights, **options))
        return made[-1]

    yield make
    for col in made:
        col.close()


# -- a shared, read-only gallery for the search tests -----------------------------------------


@dataclass
class Gallery:
    col: Collection
    root: Path
    paths: dict[str, Path]  # name -> file
    ids: dict[str, int]  # name -> id
    sizes: dict[str, tuple[int, int]]
    rare: set[int]

    def path_of(self, name: str) -> str:
        return str(self.paths[name].resolve())


@pytest.fixture(scope="module")
def gallery(tiny_clip, tmp_path_factory: pytest.TempPathFactory) -> Gallery:
    """40 distinct images listed in a CSV with metadata, plus a near-duplicate pair."""
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("gallery")
    rows = ["path,split,n,kind"]
    paths, sizes = {}, {}
    for i in range(40):
        fmt, suffix = ("PNG", ".png") if i % 2 == 0 else ("JPEG", ".jpg")
        name = f"g{i:02d}"
        sizes[name] = (40 + i, 30 + (i * 3) % 25)
        paths[name] = write_image(root / "images" / f"{name}{suffix}", 100 + i, fmt, sizes[name])
        split = "rare" if i % 8 == 3 else "common"
        rows.append(f"images/{name}{suffix},{split},{i},{fmt.lower()}")
    twin = draw_image(999, (64, 64))
    for name, quality in (("dup_a", 95), ("dup_b", 90)):
        paths[name] = root / "images" / f"{name}.jpg"
        paths[name].write_bytes(encode(twin, "JPEG", quality=quality))
        sizes[name] = (64, 64)
        rows.append(f"images/{name}.jpg,dup,-1,jpeg")
    (root / "gallery.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    col = Collection.create(root / "col", spec, weights=weights, fetch_policy=LOCAL)
    report = col.add(root / "gallery.csv")
    assert (report.added, report.failed) == (42, [])
    ids = {name: col.lookup(path).id for name, path in paths.items()}
    rare = {ids[f"g{i:02d}"] for i in range(40) if i % 8 == 3}
    yield Gallery(col, root, paths, ids, sizes, rare)
    col.close()


def test_hits_carry_id_score_path_size_and_metadata(gallery: Gallery) -> None:
    hit = gallery.col.search(id=gallery.ids["g05"], include_self=True, k=1)[0]
    assert isinstance(hit, Hit)
    assert hit.id == gallery.ids["g05"]
    assert hit.score == pytest.approx(1.0, abs=1e-4)
    assert hit.path == gallery.path_of("g05")
    assert hit.url is None
    assert (hit.width, hit.height) == gallery.sizes["g05"]
    assert hit.metadata == {"split": "common", "n": 5, "kind": "jpeg"}
    assert set(hit.to_dict()) == {"id", "score", "path", "url", "width", "height", "metadata"}
    assert gallery.col.get(hit.id).metadata == hit.metadata


def test_search_by_text_is_exact_and_ordered(gallery: Gallery) -> None:
    col = gallery.col
    hits = col.search(text="a red square on grass", k=10)
    expected_ids, expected_scores = brute_force(col, col.embed(text="a red square on grass"), 10)
    assert [h.id for h in hits] == expected_ids
    np.testing.assert_allclose([h.score for h in hits], expected_scores, atol=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_k_default_and_k_honoured(gallery: Gallery) -> None:
    col = gallery.col
    assert len(col.search(text="anything")) == 20
    assert len(col.search(text="anything", k=7)) == 7
    everything = col.search(text="anything", k=1000)
    assert len(everything) == len(col) == 42
    assert len({h.id for h in everything}) == 42


@pytest.mark.parametrize("bad_k", [0, -1, 10**9, "5", True, 2.5, None])
def test_bad_k(gallery: Gallery, bad_k) -> None:
    with pytest.raises(BadInputError, match="k must be"):
        gallery.col.search(text="x", k=bad_k)


@pytest.mark.parametrize("form", ["bytes", "path", "str", "pil"])
def test_search_by_image_in_every_form(gallery: Gallery, form: str) -> None:
    for name in ("g04", "g07", "dup_a"):
        file = gallery.paths[name]
        if form == "pil" and file.suffix == ".jpg":
            continue  # PIL images skip the JPEG draft decode, so only PNGs match exactly
        query = {
            "bytes": lambda f: f.read_bytes(),
            "path": lambda f: f,
            "str": lambda f: str(f),
            "pil": lambda f: Image.open(f),
        }[form](file)
        hit = top(gallery.col, image=query)
        assert hit.id == gallery.ids[name]
        assert hit.score == pytest.approx(1.0, abs=1e-4)


def test_search_by_image_that_is_not_an_image(gallery: Gallery, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not an image"):
        gallery.col.search(image=b"plain text, no pixels")
    with pytest.raises(BadInputError):
        gallery.col.search(image=tmp_path / "missing.png")
    with pytest.raises(BadInputError, match="image query"):
        gallery.col.search(image=12345)


def test_search_by_url(gallery: Gallery, http_root) -> None:
    served, base = http_root
    shutil.copy(gallery.paths["g07"], served / "gallery-g07.jpg")
    hit = top(gallery.col, url=f"{base}/gallery-g07.jpg")
    assert hit.id == gallery.ids["g07"]
    assert hit.score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(FetchError, match="404"):
        gallery.col.search(url=f"{base}/no-such-file.jpg")
    # the same collection opened with the default policy refuses the loopback address
    with Collection.open(gallery.col.path) as strict, pytest.raises(FetchError, match="loopback"):
        strict.search(url=f"{base}/gallery-g07.jpg")


def test_search_by_id_excludes_itself_unless_asked(gallery: Gallery) -> None:
    col, me = gallery.col, gallery.ids["g10"]
    hits = col.search(id=me, k=5)
    assert me not in [h.id for h in hits]
    expected, _ = brute_force(col, col.vectors([me])[0], 5, skip={me})
    assert [h.id for h in hits] == expected
    with_self = col.search(id=me, k=6, include_self=True)
    assert with_self[0].id == me
    assert with_self[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.id for h in with_self[1:]] == expected
    with pytest.raises(NotFoundError):
        col.search(id=10_000)


def test_search_more_like_these(gallery: Gallery) -> None:
    col = gallery.col
    a, b = gallery.ids["g01"], gallery.ids["g02"]
    hits = col.search(id=[a, b], k=8)
    both = col.vectors([a])[0] + col.vectors([b])[0]
    expected, _ = brute_force(col, both / np.linalg.norm(both), 8, skip={a, b})
    assert [h.id for h in hits] == expected


def test_search_by_vector(gallery: Gallery) -> None:
    col, me = gallery.col, gallery.ids["g12"]
    vector = col.vectors([me])[0]
    hits = col.search(vector=vector, k=5)
    assert hits[0].id == me  # a raw vector is not an id: nothing is excluded
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    scaled = col.search(vector=(vector * 3.0).tolist(), k=5, model=col.model)
    assert [h.id for h in scaled] == [h.id for h in hits]
    np.testing.assert_allclose([h.score for h in scaled], [h.score for h in hits], atol=1e-6)


def test_vector_of_wrong_dimension_or_model(gallery: Gallery) -> None:
    col = gallery.col
    with pytest.raises(ModelMismatchError, match="32"):
        col.search(vector=np.ones(64, dtype=np.float32))
    with pytest.raises(ModelMismatchError):
        col.search(vector=np.ones((2, 32), dtype=np.float32))
    with pytest.raises(ModelMismatchError, match="open_clip:ViT-B-32"):
        col.search(vector=np.ones(32), model="open_clip:ViT-B-32/openai")
    for bad in ([0.0] * 32, [float("nan")] * 32, ["a"] * 32):
        with pytest.raises(BadInputError):
            col.search(vector=bad)


def test_filter_happens_inside_the_search(gallery: Gallery) -> None:
    col, query = gallery.col, gallery.col.vectors([gallery.ids["g00"]])[0]
    unfiltered = col.search(vector=query, k=5)
    assert len({h.id for h in unfiltered} & gallery.rare) < 5  # a post-filter would come up short
    filtered = col.search(vector=query, k=5, filter={"split": "rare"})
    assert {h.id for h in filtered} == gallery.rare
    expected, _ = brute_force(col, query, 5, skip=set(every_id(col)) - gallery.rare)
    assert [h.id for h in filtered] == expected
    assert [h.id for h in col.search(vector=query, k=3, filter={"split": "rare"})] == expected[:3]
    assert all(h.metadata["split"] == "rare" for h in filtered)
    both = col.search(vector=query, k=10, filter={"split": "rare", "n": 11})
    assert [h.id for h in both] == [gallery.ids["g11"]]
    assert len(col.search(vector=query, k=10, filter={"kind": "jpeg", "split": "rare"})) == 5
    assert col.search(vector=query, filter={"split": "nothing"}) == []
    assert col.search(vector=query, filter={"no_such_key": 1}) == []


@pytest.mark.parametrize("bad", [{"split": ["rare"]}, {"split": {"a": 1}}, {"a.b": 1}, [1, 2]])
def test_bad_filters(gallery: Gallery, bad) -> None:
    with pytest.raises(BadInputError):
        gallery.col.search(text="x", filter=bad)


def test_exclude_ids(gallery: Gallery) -> None:
    col, query = gallery.col, gallery.col.embed(text="a yellow circle")
    ranked = [h.id for h in col.search(vector=query, k=10)]
    hits = col.search(vector=query, k=7, exclude_ids=ranked[:3])
    assert [h.id for h in hits] == ranked[3:10]
    # unknown ids are simply not there to exclude
    assert [h.id for h in col.search(vector=query, k=3, exclude_ids=[10**6, -4])] == ranked[:3]
    with pytest.raises(BadInputError):
        col.search(vector=query, exclude_ids=["seven"])


def test_weighted_parts_and_negative_weight(gallery: Gallery) -> None:
    col = gallery.col
    a, b = gallery.ids["g20"], gallery.ids["g21"]
    va, vb = col.vectors([a])[0], col.vectors([b])[0]
    text = col.embed(text="at night")
    parts = [{"id": a}, {"text": "at night", "weight": 0.5}, {"id": b, "weight": -0.5}]
    combined = va + 0.5 * text - 0.5 * vb
    combined /= np.linalg.norm(combined)
    np.testing.assert_allclose(col.embed(query=parts), combined, atol=1e-6)

    hits = col.search(query=parts, k=len(col))
    expected, scores = brute_force(col, combined, len(col), skip={a, b})
    assert [h.id for h in hits] == expected
    np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-5)

    positive_only = col.search(query=parts[:2], k=len(col))
    assert [h.id for h in positive_only] != [h.id for h in hits]
    rank_of = {h.id: r for r, h in enumerate(hits)}
    positive_rank_of = {h.id: r for r, h in enumerate(positive_only)}
    # the rows most like the negative example fall in the ranking
    near_b = [i for i in brute_force(col, vb, 4, skip={a, b})[0]]
    assert sum(rank_of[i] for i in near_b) > sum(positive_rank_of[i] for i in near_b)


def test_parts_that_cancel_out(gallery: Gallery) -> None:
    col, me = gallery.col, gallery.ids["g03"]
    with pytest.raises(BadInputError, match="cancel"):
        col.search(query=[{"id": me}, {"id": me, "weight": -1}])
    with pytest.raises(BadInputError, match="cancel"):
        col.search(query=[{"text": "a cat"}, {"text": "a cat", "weight": -1.0}])
    with pytest.raises(BadInputError, match="cancel"):
        col.search(id=me, query=[{"vector": col.vectors([me])[0], "weight": -1}])


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"query": []},
        {"query": [{"weight": 2}]},
        {"query": [{"id": 1, "text": "two kinds"}]},
        {"query": [{"id": 1, "colour": "red"}]},
        {"query": [{"id": 1, "weight": "heavy"}]},
        {"query": ["just a string"]},
        {"id": "3"},
        {"id": True},
        {"text": 5},
        {"url": 5},
    ],
)
def test_malformed_queries(gallery: Gallery, query: dict) -> None:
    with pytest.raises(BadInputError):
        gallery.col.search(**query)


def test_dedupe_drops_near_identical_hits(gallery: Gallery) -> None:
    col = gallery.col
    a, b = gallery.ids["dup_a"], gallery.ids["dup_b"]
    assert gallery.paths["dup_a"].read_bytes() != gallery.paths["dup_b"].read_bytes()
    assert float(col.vectors([a])[0] @ col.vectors([b])[0]) >= DUPE  # a re-encoded twin

    plain = col.search(image=gallery.paths["dup_a"], k=7)
    assert {h.id for h in plain[:2]} == {a, b}
    deduped = col.search(image=gallery.paths["dup_a"], k=5, dedupe=DUPE)
    ids = [h.id for h in deduped]
    assert ids[0] == a
    assert b not in ids
    assert len(ids) == 5
    vectors = col.vectors(ids)
    similarity = vectors @ vectors.T
    assert (similarity[~np.eye(5, dtype=bool)] < DUPE).all()
    assert ids[1:] == [h.id for h in plain if h.id not in (a, b)][:4]
    for bad in (0, -0.5, 1.5):
        with pytest.raises(BadInputError, match="dedupe"):
            col.search(id=a, dedupe=bad)


# -- a collection on disk --------------------------------------------------------------------


def test_reopen_gives_identical_results(make_col, image_folder, tmp_path: Path) -> None:
    col = make_col()
    col.add(image_folder(12))
    queries = [
        {"text": "a green triangle"},
        {"id": 3},
        {"image": next((tmp_path / "photos").glob("*.png"))},
        {"query": [{"id": 1}, {"id": 5, "weight": -0.3}]},
    ]
    before = [[(h.id, h.score, h.path) for h in col.search(**q, k=8)] for q in queries]
    stats, items = col.stats(), list(col.items())
    col.close()
    with Collection.open(tmp_path / "col") as again:
        after = [[(h.id, h.score, h.path) for h in again.search(**q, k=8)] for q in queries]
        assert after == before
        assert list(again.items()) == items
        assert replace(again.stats(), bytes_on_disk=0) == replace(stats, bytes_on_disk=0)
        assert (stats.count, stats.dim, stats.index, stats.deleted) == (12, 32, "flat", 0)
        assert stats.bytes_on_disk > 12 * 32 * 4


def test_a_reader_sees_another_writers_commits(make_col, image_folder, tmp_path: Path) -> None:
    writer = make_col()
    folder = image_folder(4)
    writer.add(folder)
    with Collection.open(tmp_path / "col") as reader:
        assert len(reader) == 4
        more = image_folder(3, start=100)
        writer.add(more)
        writer.remove(ids=[0])
        assert len(reader) == 6
        newest = sorted(p for p in more.rglob("img01*") if p.is_file())[-1]
        hit = top(reader, image=newest)
        assert (hit.path, hit.score) == (str(newest.resolve()), pytest.approx(1.0, abs=1e-4))
        assert 0 not in [h.id for h in reader.search(text="x", k=100)]


def test_creating_over_an_existing_collection(make_col, tiny_clip, tmp_path: Path) -> None:
    spec, weights = tiny_clip
    col = make_col()
    col.add_images([encode(draw_image(1, (30, 30)))])
    with pytest.raises(CollectionError, match="already"):
        Collection.create(tmp_path / "col", spec, weights=weights)
    with Collection.create(tmp_path / "col", spec, weights=weights, exist_ok=True) as same:
        assert len(same) == 1
    with pytest.raises(ModelMismatchError, match="mobilenet"):
        Collection.create(tmp_path / "col", "torchvision:mobilenet_v2", exist_ok=True)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(CollectionError, match="not empty"):
        Collection.create(busy, spec, weights=weights)
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]


def test_opening_something_that_is_not_a_collection(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "photo.jpg").write_bytes(b"...")
    for path in (tmp_path / "plain", tmp_path / "missing"):
        with pytest.raises(CollectionError, match="not a lookalike collection"):
            Collection.open(path)
    with pytest.raises(CollectionError, match=r"photo\.jpg"):
        Collection.open(tmp_path / "plain" / "photo.jpg")
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["photo.jpg"]
    assert not (tmp_path / "missing").exists()


def test_unknown_format_version_or_broken_manifest(make_col, tmp_path: Path) -> None:
    make_col().close()
    manifest_path = tmp_path / "col" / "lookalike.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert manifest["format"] == 1
    manifest_path.write_text(json.dumps({**manifest, "format": 99}), encoding="utf-8")
    with pytest.raises(CollectionError, match="format 99"):
        Collection.open(tmp_path / "col")
    manifest_path.write_text(
        json.dumps({k: v for k, v in manifest.items() if k != "format"}), encoding="utf-8"
    )
    with pytest.raises(CollectionError, match="format"):
        Collection.open(tmp_path / "col")
    manifest_path.write_text("{ not json", encoding="utf-8")
    with pytest.raises(CollectionError, match=r"lookalike\.json"):
        Collection.open(tmp_path / "col")
    manifest_path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CollectionError):
        Collection.open(tmp_path / "col")


def test_newer_schema_is_refused(make_col, tmp_path: Path) -> None:
    make_col().close()
    with sqlite3.connect(tmp_path / "col" / "rows.sqlite") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(CollectionError, match="newer"):
        Collection.open(tmp_path / "col")


def test_a_collection_of_schema_version_1_opens_and_is_upgraded(tmp_path: Path) -> None:
    from lookalike.store import MIGRATIONS, SCHEMA_VERSION

    Collection.create(tmp_path / "col", "vectors:4").close()
    database = tmp_path / "col" / "rows.sqlite"
    database.unlink()
    with sqlite3.connect(database) as db:  # what lookalike wrote before the stale column
        db.executescript(MIGRATIONS[0])
        db.executemany(
            "INSERT INTO items (id, key, content_hash, width, height, bytes, added_at) "
            "VALUES (?, ?, ?, 1, 1, 0, 0)",
            [(i, f"https://example.com/{i}", f"h{i}") for i in range(3)],
        )
        db.execute("UPDATE meta SET value = '3' WHERE key = 'vector_count'")
        db.execute("PRAGMA user_version = 1")
    np.eye(4, dtype=np.float32)[:3].tofile(tmp_path / "col" / "vectors" / "00000.f32")
    with Collection.open(tmp_path / "col") as col:
        assert [h.id for h in col.search(vector=[1, 0, 0, 0], k=1)] == [0]
        assert col.add_vectors(np.eye(4)[3:], ["https://example.com/3"]) == [3]
        assert col.verify().ok
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# -- incremental ingest ----------------------------------------------------------------------


def test_indexing_again_adds_nothing(make_col, image_folder) -> None:
    col = make_col()
    folder = image_folder(10)
    first = col.add(folder)
    assert (first.added, first.unchanged, first.failed) == (10, 0, [])
    again = col.add(folder)
    assert (again.added, again.unchanged, again.duplicates, again.replaced) == (0, 10, 0, 0)
    assert len(col) == 10
    # touching a file without changing it re-reads it but stores nothing new
    some = next(folder.rglob("*.png"))
    os.utime(some, (1_000_000_000, 1_000_000_000))
    touched = col.add(folder)
    assert (touched.added, touched.unchanged) == (0, 10)
    assert len(col) == 10


def test_a_copy_under_another_name_is_a_duplicate(make_col, image_folder) -> None:
    col = make_col()
    folder = image_folder(6)
    col.add(folder)
    original = next(folder.rglob("*.webp"))
    shutil.copy(original, folder / "copy-of-it.webp")
    report = col.add(folder)
    assert (report.added, report.duplicates, report.unchanged) == (0, 1, 6)
    assert col.lookup(folder / "copy-of-it.webp") is None
    assert len(col) == 6
    # two copies of one new picture in the same run: one is added
    twin = encode(draw_image(500, (50, 40)))
    (folder / "new-1.png").write_bytes(twin)
    (folder / "new-2.png").write_bytes(twin)
    report = col.add(folder)
    assert (report.added, report.duplicates) == (1, 2)  # copy-of-it is still a duplicate
    assert len(col) == 7


def test_a_changed_file_replaces_its_row(make_col, image_folder) -> None:
    col = make_col()
    folder = image_folder(8)
    col.add(folder)
    target = next(folder.rglob("*.png"))
    old = col.lookup(target)
    old_vector = col.vectors([old.id])[0]
    target.write_bytes(encode(draw_image(777, (70, 50))))
    report = col.add(folder)
    assert (report.added, report.replaced, report.unchanged) == (1, 1, 7)
    assert len(col) == 8
    new = col.lookup(target)
    assert new.id != old.id
    assert (new.width, new.height) == (70, 50)
    with pytest.raises(NotFoundError):
        col.get(old.id)
    with pytest.raises(NotFoundError):
        col.search(id=old.id)
    assert old.id not in [h.id for h in col.search(vector=old_vector, k=100)]
    hit = top(col, image=target)
    assert (hit.id, hit.path) == (new.id, str(target.resolve()))
    assert hit.score == pytest.approx(1.0, abs=1e-4)


def test_a_file_changed_into_a_copy_of_another_drops_its_old_row(make_col, image_folder) -> None:
    col = make_col()
    folder = image_folder(5)
    col.add(folder)
    target, other = sorted(p for p in folder.rglob("*") if p.is_file())[:2]
    old = col.lookup(target)
    old_vector = col.vectors([old.id])[0]
    shutil.copy(other, target)  # the file now holds the same bytes as another stored one
    report = col.add(folder)
    assert (report.added, report.duplicates, report.replaced) == (0, 1, 1)
    assert len(col) == 4
    assert col.lookup(target) is None
    with pytest.raises(NotFoundError):
        col.get(old.id)
    assert old.id not in [h.id for h in col.search(vector=old_vector, k=100)]


def test_remove_by_id_and_by_path(make_col, image_folder, monkeypatch: pytest.MonkeyPatch) -> None:
    col = make_col()
    folder = image_folder(9)
    col.add(folder)
    files = sorted(folder.rglob("*.*"))
    by_id, by_path, by_relative = (col.lookup(f) for f in files[:3])
    vectors = col.vectors([by_id.id, by_path.id, by_relative.id])

    assert col.remove(ids=[by_id.id]) == 1
    assert col.remove(paths=[files[1]]) == 1
    monkeypatch.chdir(folder)
    assert col.remove(paths=[os.path.relpath(files[2], folder)]) == 1
    assert len(col) == 6
    assert col.stats().deleted == 3
    with pytest.raises(NotFoundError, match=rf"\b{by_id.id}\b"):  # already gone: named
        col.remove(ids=[by_id.id])
    with pytest.raises(NotFoundError, match=r"nothing-here\.png"):
        col.remove(paths=[folder / "nothing-here.png"])
    with pytest.raises(NotFoundError):
        col.remove(paths=[files[1]])

    survivor = col.lookup(files[3])
    with pytest.raises(NotFoundError, match="999"):  # one unknown id: nothing is removed
        col.remove([survivor.id, 999])
    assert col.get(survivor.id) == survivor
    assert col.remove(survivor.id) == 1  # a single id, not only a list
    with pytest.raises(BadInputError, match="integers"):
        col.remove(["3"])

    gone = {by_id.id, by_path.id, by_relative.id, survivor.id}
    for vector in vectors:
        assert gone.isdisjoint(h.id for h in col.search(vector=vector, k=100))
    assert gone.isdisjoint(h.id for h in col.search(text="anything", k=100))
    assert gone.isdisjoint(every_id(col))
    for removed in gone:
        with pytest.raises(NotFoundError):
            col.get(removed)
    col.close()
    with Collection.open(col.path) as again:
        assert len(again) == 5
        assert gone.isdisjoint(h.id for h in again.search(vector=vectors[0], k=100))


def test_add_images_as_bytes_with_metadata(make_col) -> None:
    col = make_col()
    images = [encode(draw_image(i, (30 + i, 20))) for i in range(3)]
    report = col.add_images(images, metadata=[{"split": "train"}, None, {"n": 2}])
    assert report.added == 3
    items = list(col.items())
    assert [i.metadata for i in items] == [{"split": "train"}, {}, {"n": 2}]
    assert [i.width for i in items] == [30, 31, 32]
    for item in items:
        assert Path(item.path).is_file()
        assert Path(item.path).is_relative_to(col.path / "uploads")
    assert col.add_images(images[:1]).unchanged == 1
    with pytest.raises(BadInputError, match="metadata"):
        col.add_images(images, metadata=[{}])
    with pytest.raises(ImageError):
        col.add_images([b"not an image at all"])
    assert len(col) == 3


# -- bad input ---------------------------------------------------------------------------------


def broken_folder(root: Path) -> tuple[list[Path], dict[Path, str]]:
    """Three good images and one of each kind of broken file: (good, {bad: expected reason})."""
    good = [write_image(root / f"a_good_{i}.png", 300 + i) for i in range(3)]
    png = encode(draw_image(1, (40, 30)))
    jpeg = encode(draw_image(2, (80, 60)), "JPEG")
    bad = {
        root / "b_corrupt.jpg": jpeg[:300] + bytes(range(256)) * 2,  # garbage after the header
        root / "c_truncated.png": png[: len(png) // 2],
        root / "d_truncated.jpg": jpeg[: len(jpeg) // 2],
        root / "e_empty.png": b"",
        root / "f_text.png": b"hello, I am a text file\n",
        root / "sub" / "g_huge.png": encode(draw_image(3, (300, 300))),
    }
    reasons = ["corrupt", "truncated", "truncated", "empty", "not an image", "too large"]
    for (path, data), _ in zip(bad.items(), reasons, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return good, dict(zip(bad, reasons, strict=True))


LIMITS = ImageLimits(max_pixels=200 * 200)


def test_broken_files_are_skipped_and_reported(
    make_col, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = broken_folder(tmp_path / "mixed")
    col = make_col(limits=LIMITS)
    with caplog.at_level(logging.WARNING, logger="lookalike"):
        report = col.add(tmp_path / "mixed")
    assert report.added == len(good)
    failed = dict(report.failed)
    assert set(failed) == {str(p.resolve()) for p in bad}
    for path, reason in bad.items():
        assert reason in failed[str(path.resolve())]
        assert any(path.name in record.getMessage() for record in caplog.records)
    assert "300x300" in failed[str((tmp_path / "mixed" / "sub" / "g_huge.png").resolve())]
    assert len(col) == len(good)
    assert report.seen == len(good) + len(bad)
    again = col.add(tmp_path / "mixed")  # broken files are tried (and reported) again
    assert (again.added, again.unchanged, len(again.failed)) == (0, len(good), len(bad))


def test_strict_stops_at_the_first_broken_file(make_col, tmp_path: Path) -> None:
    broken_folder(tmp_path / "mixed")
    col = make_col(limits=LIMITS)
    with pytest.raises(BadInputError) as caught:
        col.add(tmp_path / "mixed", strict=True)
    assert str((tmp_path / "mixed" / "b_corrupt.jpg").resolve()) in str(caught.value)
    # the lock was released: a lenient run afterwards works
    assert col.add(tmp_path / "mixed").added == 3


def test_unusual_images_are_indexed_with_displayed_size(make_col, tmp_path: Path) -> None:
    root = tmp_path / "odd"
    root.mkdir()
    base = draw_image(42, (40, 20))

    def save(name: str, image: Image.Image, fmt: str, **params) -> None:
        (root / name).write_bytes(encode(image, fmt, **params))

    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"exif{orientation}.jpg", draw_image(orientation, (40, 20)), "JPEG", exif=exif)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette.png", palette, "PNG", transparency=0)
    save("cmyk.jpg", draw_image(43, (40, 20), "CMYK"), "JPEG")
    deep = Image.fromarray((np.arange(40 * 20, dtype=np.uint16) * 80).reshape(20, 40))
    assert deep.mode.startswith("I;16")
    save("deep16.png", deep, "PNG")
    save("gray.png", draw_image(44, (40, 20), "L"), "PNG")
    frames = [draw_image(s, (40, 20)).convert("P") for s in (50, 51, 52)]
    save("animated.gif", frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    save("rgba.webp", draw_image(45, (40, 20), "RGBA"), "WEBP")

    col = make_col()
    report = col.add(root)
    assert report.failed == []
    assert report.added == 9
    sizes = {Path(i.path).name: (i.width, i.height) for i in col.items()}
    assert sizes.pop("exif6.jpg") == (20, 40)
    assert sizes.pop("exif8.jpg") == (20, 40)
    assert set(sizes.values()) == {(40, 20)}
    for name in ("exif6.jpg", "animated.gif", "deep16.png", "cmyk.jpg"):
        hit = top(col, image=root / name)
        assert Path(hit.path).name == name
        assert hit.score == pytest.approx(1.0, abs=1e-4)


# -- crashes -----------------------------------------------------------------------------------


def assert_each_file_finds_itself(col: Collection, files: list[Path]) -> None:
    for file in files:
        hit = top(col, image=file)
        assert hit.path == str(file.resolve())
        assert hit.score == pytest.approx(1.0, abs=1e-4)


def test_uncommitted_vector_tail_is_ignored_then_truncated(make_col, tmp_path: Path) -> None:
    first = [write_image(tmp_path / "one" / f"{i}.png", 600 + i) for i in range(8)]
    col = make_col()
    col.add(tmp_path / "one")
    before = [(h.id, h.score) for h in col.search(text="a boat", k=8)]
    col.close()
    shard = tmp_path / "col" / "vectors" / "00000.f32"
    assert shard.stat().st_size == 8 * 32 * 4
    # a crashed writer: it recorded how far its vectors would reach, wrote 2.5 of them, died
    with sqlite3.connect(tmp_path / "col" / "rows.sqlite") as db:
        db.execute("UPDATE meta SET value = '11' WHERE key = 'pending_count'")
    with open(shard, "ab") as f:
        f.write(np.random.default_rng(0).random(80, dtype=np.float32).tobytes())

    with Collection.open(tmp_path / "col") as reader:
        assert len(reader) == 8
        assert [(h.id, h.score) for h in reader.search(text="a boat", k=8)] == before
        second = [write_image(tmp_path / "two" / f"{i}.png", 700 + i) for i in range(5)]
        report = reader.add(tmp_path / "two")
        assert report.added == 5
        assert len(reader) == 13
        assert sorted(every_id(reader)) == list(range(13))
        assert shard.stat().st_size == 13 * 32 * 4
        assert_each_file_finds_itself(reader, first + second)


def test_a_crash_between_vectors_and_commit_loses_only_that_batch(
    make_col, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.store import VectorShards

    files = [write_image(tmp_path / "pics" / f"{i:02d}.png", 800 + i) for i in range(10)]
    col = make_col()
    real_append = VectorShards.append
    calls = []

    def append_then_crash(self, start, vectors):
        real_append(self, start, vectors)
        calls.append(len(vectors))
        if len(calls) == 2:
            raise RuntimeError("simulated crash after the vectors were written")

    monkeypatch.setattr(VectorShards, "append", append_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        col.add(tmp_path / "pics", batch_size=4)
    monkeypatch.undo()
    assert calls == [4, 4]
    assert len(col) == 4  # the first batch whole, the second not at all
    with Collection.open(tmp_path / "col") as other:
        assert len(other) == 4
        assert len(other.search(text="x", k=100)) == 4
    report = col.add(tmp_path / "pics", batch_size=4)
    assert (report.added, report.unchanged) == (6, 4)
    assert len(col) == 10
    assert sorted(every_id(col)) == list(range(10))
    assert_each_file_finds_itself(col, files)


# -- the whole story ---------------------------------------------------------------------------


def test_few_hundred_images_end_to_end(make_col, image_folder, tmp_path: Path, http_root) -> None:
    folder = image_folder(240)
    _, bad = broken_folder(folder / "broken")
    for good in (folder / "broken").glob("a_good_*"):
        good.unlink()
    files = sorted(p for p in folder.rglob("img*") if p.is_file())
    assert len(files) == 240

    col = make_col(limits=LIMITS)
    report = col.add(folder, workers=2, batch_size=32)
    assert report.added == 240
    assert {source for source, _ in report.failed} == {str(p.resolve()) for p in bad}
    assert len(col) == 240

    # every kind of query
    samples = files[::24]  # every format and mode of the generated folder
    assert_each_file_finds_itself(col, samples)
    probe = samples[3]
    probe_id = col.lookup(probe).id
    assert top(col, image=probe.read_bytes()).id == probe_id
    assert top(col, image=Image.open(files[0])).id == col.lookup(files[0]).id
    served, base = http_root
    shutil.copy(probe, served / f"e2e{probe.suffix}")
    assert top(col, url=f"{base}/e2e{probe.suffix}").id == probe_id
    assert probe_id not in [h.id for h in col.search(id=probe_id)]
    assert top(col, vector=col.vectors([probe_id])[0]).id == probe_id
    assert len(col.search(text="a photo of a red car")) == 20
    mixed = col.search(query=[{"id": 0}, {"text": "snow", "weight": 0.3}, {"id": 1, "weight": -1}])
    assert len(mixed) == 20

    again = col.add(folder)
    assert (again.added, again.unchanged) == (0, 240)
    assert len(again.failed) == len(bad)

    removed = [col.lookup(f).id for f in files[:40]]
    assert col.remove(ids=removed[:30]) == 30
    assert col.remove(paths=files[30:40]) == 10
    assert len(col) == 200
    everything = col.search(vector=col.vectors([probe_id])[0], k=1000)
    assert len(everything) == 200
    assert set(removed).isdisjoint(h.id for h in everything)
    results = [(h.id, h.score) for h in col.search(text="a blue house", k=50)]
    col.close()

    with Collection.open(tmp_path / "col") as reopened:
        assert len(reopened) == 200
        assert [(h.id, h.score) for h in reopened.search(text="a blue house", k=50)] == results
        assert set(removed).isdisjoint(h.id for h in reopened.search(text="x", k=1000))
        assert_each_file_finds_itself(reopened, files[40::20])
