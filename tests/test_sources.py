"""Where images come from: folders, list files, CSV/TSV/Parquet manifests, files and URLs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers import encode
from lookalike import BadInputError, Collection
from lookalike.demo import draw_image
from lookalike.fetch import FetchPolicy
from lookalike.sources import UNDECODED_NAME, iter_source

LOCAL = FetchPolicy(allow_private=True)


@pytest.fixture
def col(tiny_clip, tmp_path: Path) -> Collection:
    spec, weights = tiny_clip
    collection = Collection.create(tmp_path / "col", spec, weights=weights, fetch_policy=LOCAL)
    yield collection
    collection.close()


def write_image(path: Path, seed: int, fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(draw_image(seed, size), fmt))
    return path


def stored(col: Collection) -> dict[str, dict]:
    """locator -> metadata of every stored image."""
    return {item.locator: item.metadata for item in col.items()}


def test_folder_recursive_by_extension_and_content(col: Collection, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    expected = [
        write_image(root / "a.png", 1),
        write_image(root / "UPPER.JPG", 2, "JPEG"),
        write_image(root / "sub" / "b.webp", 3, "WEBP"),
        write_image(root / "sub" / "deeper" / "c.gif", 4, "GIF"),
        write_image(root / "photo_noext", 5),  # no extension: found by its first bytes
        write_image(root / "sub" / "scan.bin", 6, "TIFF"),  # wrong extension, image content
    ]
    (root / "x.dat").write_text("just some text, not an image\n" * 10, encoding="utf-8")
    (root / "notes.md").write_text("# not an image\n", encoding="utf-8")
    write_image(root / ".hidden.png", 7)
    write_image(root / ".cache" / "thumb.png", 8)
    write_image(root / "sub" / ".git" / "icon.png", 9)

    report = col.add(root)
    assert report.added == len(expected)
    assert report.failed == []
    assert set(stored(col)) == {str(p.resolve()) for p in expected}


def test_folder_skips_a_collection_inside_it(tiny_clip, tmp_path: Path) -> None:
    spec, weights = tiny_clip
    root = tmp_path / "photos"
    write_image(root / "a.png", 1)
    with Collection.create(root / "col", spec, weights=weights) as col:
        col.add_images([encode(draw_image(2, (30, 30)))])  # kept under col/uploads
        report = col.add(root)
        assert report.added == 1
        assert str((root / "a.png").resolve()) in stored(col)


def test_list_file_with_relative_absolute_paths_urls_and_comments(
    col: Collection, tmp_path: Path, http_root, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, base = http_root
    lists = tmp_path / "lists"
    relative = write_image(lists / "imgs" / "rel.png", 11)
    absolute = write_image(tmp_path / "elsewhere" / "abs.jpg", 12, "JPEG")
    write_image(served / "listed.png", 13)
    listing = lists / "images.txt"
    listing.write_text(
        "# images to index\n"
        "imgs/rel.png\n"
        "\n"
        f"   {absolute}   \n"
        "  # an indented comment\n"
        f"{base}/listed.png\n"
        "imgs/missing.png\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)  # relative entries are relative to the list, not the cwd
    report = col.add(listing)
    assert report.added == 3
    assert set(stored(col)) == {
        str(relative.resolve()),
        str(absolute.resolve()),
        f"{base}/listed.png",
    }
    [(source, reason)] = report.failed
    assert source == str((lists / "imgs" / "missing.png").resolve())
    assert reason
    url_item = next(i for i in col.items() if i.url)
    assert url_item.path is None
    assert (url_item.width, url_item.height) == (40, 30)


def test_csv_manifest_metadata_and_relative_paths(
    col: Collection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    write_image(data / "img" / "one.png", 21)
    write_image(data / "img" / "two.jpg", 22, "JPEG")
    absolute = write_image(tmp_path / "abs" / "three.png", 23)
    manifest = data / "labels.csv"
    manifest.write_text(
        "path,split,count,score,note\n"
        "img/one.png,train,3,0.5,first\n"
        "img/two.jpg,test,-12,1e3,\n"
        f"{absolute},train,007,.25,has spaces here\n",
        encoding="utf-8",
    )
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    report = col.add("../data/labels.csv")
    assert report.added == 3, report.failed
    meta = stored(col)
    one = meta[str((data / "img" / "one.png").resolve())]
    assert one == {"split": "train", "count": 3, "score": 0.5, "note": "first"}
    two = meta[str((data / "img" / "two.jpg").resolve())]
    assert two["count"] == -12
    assert two["score"] == 1000.0
    three = meta[str(absolute.resolve())]
    assert three["count"] == 7
    assert three["note"] == "has spaces here"
    # metadata is usable as a filter, ints compared as ints
    hits = col.search(text="anything", filter={"split": "train"}, k=10)
    assert {h.path for h in hits} == {
        str((data / "img" / "one.png").resolve()),
        str(absolute.resolve()),
    }
    assert [h.metadata["count"] for h in col.search(text="x", filter={"count": -12})] == [-12]


def test_tsv_manifest_with_other_locator_column_name(col: Collection, tmp_path: Path) -> None:
    write_image(tmp_path / "m" / "a.png", 31)
    manifest = tmp_path / "m" / "list.tsv"
    manifest.write_text("Image_Path\tlabel\na.png\tcat\n", encoding="utf-8")
    assert col.add(manifest).added == 1
    assert list(stored(col).values()) == [{"label": "cat"}]


def test_csv_empty_cell_is_a_reported_failure(col: Collection, tmp_path: Path) -> None:
    write_image(tmp_path / "m" / "a.png", 41)
    write_image(tmp_path / "m" / "b.png", 42)
    manifest = tmp_path / "m" / "labels.csv"
    manifest.write_text("path,label\na.png,cat\n,dog\n  ,bird\nb.png,fish\n", encoding="utf-8")
    report = col.add(manifest)
    assert report.added == 2
    assert len(report.failed) == 2
    reasons = [reason for _, reason in report.failed]
    assert "line 3" in reasons[0]
    assert "line 4" in reasons[1]
    assert all("labels.csv" in r and "empty path" in r for r in reasons)
    assert sorted(m["label"] for m in stored(col).values()) == ["cat", "fish"]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest_without_locator_column(col: Collection, tmp_path: Path, kind: str) -> None:
    manifest = tmp_path / f"labels.{kind}"
    if kind == "csv":
        manifest.write_text("name,label\na.png,cat\n", encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"name": ["a.png"], "label": ["cat"]}), manifest)
    with pytest.raises(BadInputError) as caught:
        col.add(manifest)
    message = str(caught.value)
    assert "path" in message and "url" in message
    assert "name" in message and "label" in message
    assert len(col) == 0
    # the writer lock was released: the collection still takes images
    write_image(tmp_path / "ok.png", 1)
    assert col.add(tmp_path / "ok.png").added == 1


def test_parquet_manifest_with_paths(col: Collection, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_image(tmp_path / "pq" / "img" / "a.png", 51)
    write_image(tmp_path / "pq" / "img" / "b.jpg", 52, "JPEG")
    manifest = tmp_path / "pq" / "items.parquet"
    table = pa.table(
        {
            "path": ["img/a.png", None, "img/b.jpg"],
            "label": ["cat", "ghost", "dog"],
            "n": [1, 2, 3],
            "flag": [True, False, True],
        }
    )
    pq.write_table(table, manifest)
    report = col.add(manifest)
    assert report.added == 2
    [(_, reason)] = report.failed
    assert "items.parquet" in reason and "empty path" in reason
    meta = stored(col)
    assert meta[str((tmp_path / "pq" / "img" / "a.png").resolve())] == {
        "label": "cat",
        "n": 1,
        "flag": True,
    }
    assert [h.metadata["label"] for h in col.search(text="x", filter={"n": 3})] == ["dog"]
    assert {h.metadata["label"] for h in col.search(text="x", filter={"flag": True})} == {
        "cat",
        "dog",
    }


def test_parquet_manifest_with_urls(col: Collection, tmp_path: Path, http_root) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    served, base = http_root
    write_image(served / "pq-1.png", 61, size=(50, 20))
    write_image(served / "pq-2.jpg", 62, "JPEG", size=(20, 50))
    manifest = tmp_path / "remote.parquet"
    pq.write_table(
        pa.table(
            {
                "url": [f"{base}/pq-1.png", f"{base}/pq-2.jpg", f"{base}/absent.png"],
                "split": ["a", "b", "c"],
            }
        ),
        manifest,
    )
    report = col.add(manifest)
    assert report.added == 2
    [(source, reason)] = report.failed
    assert source == f"{base}/absent.png"
    assert "404" in reason
    by_url = {item.url: item for item in col.items()}
    first = by_url[f"{base}/pq-1.png"]
    assert (first.path, first.width, first.height, first.metadata) == (None, 50, 20, {"split": "a"})
    assert (by_url[f"{base}/pq-2.jpg"].width, by_url[f"{base}/pq-2.jpg"].height) == (20, 50)
    # unchanged URLs are not fetched again
    again = col.add(manifest)
    assert (again.added, again.unchanged) == (0, 2)


def test_single_file_url_and_missing_sources(col: Collection, tmp_path: Path, http_root) -> None:
    served, base = http_root
    image = write_image(tmp_path / "single.jpeg", 71, "JPEG")
    write_image(served / "single.png", 72)
    assert col.add(image).added == 1
    assert col.add(f"{base}/single.png").added == 1
    assert set(stored(col)) == {str(image.resolve()), f"{base}/single.png"}
    with pytest.raises(BadInputError, match="does not exist"):
        col.add(tmp_path / "no-such-folder")


def test_loopback_url_refused_without_allow_private(tiny_clip, tmp_path: Path, http_root) -> None:
    spec, weights = tiny_clip
    served, base = http_root
    write_image(served / "private.png", 81)
    listing = tmp_path / "urls.txt"
    listing.write_text(f"{base}/private.png\n", encoding="utf-8")
    with Collection.create(tmp_path / "col", spec, weights=weights) as col:
        report = col.add(listing)
        assert report.added == 0
        [(source, reason)] = report.failed
        assert source == f"{base}/private.png"
        assert "loopback" in reason
        assert len(col) == 0


def test_source_files_are_not_modified(col: Collection, tmp_path: Path) -> None:
    root = tmp_path / "ro"
    image = write_image(root / "a.png", 91)
    before = (image.read_bytes(), os.stat(image).st_mtime_ns)
    col.add(root)
    assert (image.read_bytes(), os.stat(image).st_mtime_ns) == before
    assert sorted(p.name for p in root.iterdir()) == ["a.png"]  # nothing written beside it


def test_a_file_name_that_is_not_text_is_skipped_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "fine.png").write_bytes(b"x")
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"), "wb") as latin1:
        latin1.write(b"x")  # Latin-1 bytes: no UTF-8 (nor ASCII) name decodes them
    items = {item.locator: item for item in iter_source(tmp_path, sniff=False)}
    assert items[str(tmp_path / "fine.png")].error is None
    (skipped,) = [item for item in items.values() if item.error]
    assert skipped.locator.endswith("caf\\xe9.png")  # printable, not a lone surrogate
    assert skipped.error == UNDECODED_NAME
    if sys.getfilesystemencoding() == "utf-8":
        assert "rename the file" in skipped.error
    else:
        assert "PYTHONUTF8=1" in skipped.error
