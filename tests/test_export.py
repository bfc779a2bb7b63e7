"""Exports through the library: every format parsed back, large k streamed, bad input."""

from __future__ import annotations

import csv
import json
import os
import time
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import BadInputError, Collection, InvalidQueryError, NotFoundError
from lookalike.export import FORMATS, export

DIM = 8


@pytest.fixture
def gallery(tmp_path: Path) -> Collection:
    """12 real image files (two with the same file name in two folders) and one URL image,
    added as vectors with their sizes and metadata."""
    paths = []
    for i in range(12):
        folder = tmp_path / "images" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i // 2}.png"
        Image.new("RGB", (10 + i, 20), (i * 20, 0, 0)).save(path)
        paths.append(str(path))
    locators = [*paths, "https://example.com/pics/remote%20one.jpg"]
    vectors = np.random.default_rng(1).normal(size=(len(locators), DIM)).astype(np.float32)
    col = Collection.create(tmp_path / "col", f"vectors:{DIM}")
    col.add_vectors(
        vectors,
        locators,
        metadata=[{"n": i, "split": "train" if i < 6 else "val"} for i in range(len(locators))],
        sizes=[(10 + i, 20) for i in range(len(locators))],
    )
    with col:
        yield col


def test_json_jsonl_and_csv_hold_every_hit_in_order(gallery: Collection, tmp_path: Path) -> None:
    hits = gallery.search(id=0, k=13, include_self=True)
    gallery.tag([hits[1].id], "label:police car")
    for fmt in ("json", "jsonl", "csv"):
        report = gallery.export(tmp_path / f"out.{fmt}", fmt, id=0, k=13, include_self=True)
        assert report.written == 13 and not report.skipped
        text = (tmp_path / f"out.{fmt}").read_text(encoding="utf-8")
        if fmt == "json":
            rows = json.loads(text)
        elif fmt == "jsonl":
            rows = [json.loads(line) for line in text.splitlines()]
        else:
            rows = list(csv.DictReader(text.splitlines()))
        assert [int(r["id"]) for r in rows] == [h.id for h in hits]
        assert [int(r["rank"]) for r in rows] == list(range(1, 14))
        assert float(rows[0]["score"]) == pytest.approx(hits[0].score, abs=1e-6)
        tags = rows[1]["tags"] if fmt != "csv" else json.loads(rows[1]["tags"])
        assert tags == ["label:police car"]
        metadata = rows[2]["metadata"] if fmt != "csv" else json.loads(rows[2]["metadata"])
        assert metadata == hits[2].metadata


def test_folder_copies_or_links_the_files_with_a_manifest(
    gallery: Collection, tmp_path: Path
) -> None:
    for link in (False, True):
        out = tmp_path / f"folder-{link}"
        report = gallery.export(out, "folder", id=0, k=13, include_self=True, link=link)
        assert report.written == 12
        assert [reason for _, reason in report.skipped] == [
            "stored by URL, not as a file: https://example.com/pics/remote%20one.jpg"
        ]
        rows = list(csv.DictReader((out / "manifest.csv").open(encoding="utf-8")))
        assert len(rows) == 13
        for row in rows:
            if not row["path"]:
                assert row["file"] == "" and row["url"]
                continue
            copy = out / row["file"]
            assert copy.is_symlink() == link
            assert copy.read_bytes() == Path(row["path"]).read_bytes()
            assert json.loads(row["metadata"])["n"] == gallery.get(int(row["id"])).metadata["n"]
        assert len({row["file"] for row in rows if row["file"]}) == 12  # same names, no clash


def test_label_studio_tasks_and_config(gallery: Collection, tmp_path: Path) -> None:
    out = tmp_path / "ls" / "tasks.json"
    out.parent.mkdir()
    report = gallery.export(
        out,
        "label-studio",
        id=0,
        k=5,
        base_url="http://127.0.0.1:8000/",
        name="photos",
        labels=["police car", "other"],
    )
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert report.written == len(tasks) == 5
    first = tasks[0]
    lookalike_id = first["data"]["lookalike_id"]
    assert first["data"]["image"] == (
        f"http://127.0.0.1:8000/v1/collections/photos/items/{lookalike_id}/image"
    )
    prediction = first["predictions"][0]
    assert prediction["model_version"] == f"vectors:{DIM}"
    assert prediction["score"] == pytest.approx(gallery.search(id=0, k=1)[0].score)
    assert prediction["result"][0]["value"] == {"choices": ["police car"]}
    assert prediction["result"][0]["from_name"] == "label"
    config = ET.parse(out.with_name("tasks.label_config.xml")).getroot()
    assert config.tag == "View"
    assert config.find("Image").get("value") == "$image"
    choices = config.find("Choices")
    assert choices.get("toName") == "image" and choices.get("name") == "label"
    assert [c.get("value") for c in choices] == ["police car", "other"]


def test_label_studio_local_files(gallery: Collection, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    report = gallery.export(
        out,
        "label-studio",
        id=0,
        k=13,
        include_self=True,
        local_files_root=tmp_path / "images" / "a",
    )
    tasks = json.loads(out.read_text(encoding="utf-8"))
    images = [t["data"]["image"] for t in tasks]
    assert len(tasks) == report.written == 7  # 6 files under a/, and the URL image as it is
    assert "https://example.com/pics/remote%20one.jpg" in images
    assert {i for i in images if i.startswith("/data/local-files/?d=")} == {
        f"/data/local-files/?d=img{i}.png" for i in range(6)
    }
    assert len(report.skipped) == 6 and "not under --local-files-root" in report.skipped[0][1]
    assert tasks[0]["predictions"][0]["result"] == []  # no labels, no pre-selected choice
    assert not out.with_name("tasks.label_config.xml").exists()


def test_cvat_for_images_1_1(gallery: Collection, tmp_path: Path) -> None:
    out = tmp_path / "cvat"
    report = gallery.export(out, "cvat", id=0, k=13, include_self=True, labels=["police car", "x"])
    assert report.written == 13
    root = ET.parse(out / "annotations.xml").getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert task.findtext("size") == "13" and task.findtext("mode") == "annotation"
    assert [label.findtext("name") for label in task.findall("labels/label")] == ["police car", "x"]
    images = root.findall("image")
    assert [int(i.get("id")) for i in images] == list(range(13))
    names = [i.get("name") for i in images]
    assert len(set(names)) == 13  # img0.png twice: the second is named by id
    listed = (out / "images.txt").read_text(encoding="utf-8").splitlines()
    for image, source in zip(images, listed, strict=True):
        item = gallery.lookup(source)
        assert (int(image.get("width")), int(image.get("height"))) == (item.width, item.height)
        assert [(t.get("label"), t.get("source")) for t in image.findall("tag")] == [
            ("police car", "auto")
        ]
        assert image.get("name").endswith(Path(source).name.replace("remote%20one", "remote one"))
    assert not list(out.glob(".*"))  # no scratch file left


def test_fiftyone_classification_dataset(gallery: Collection, tmp_path: Path) -> None:
    gallery.tag([0], "labeled")
    out = tmp_path / "fo"
    report = gallery.export(out, "fiftyone", id=0, k=13, include_self=True, labels=["car"])
    labels = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    extra = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert labels["classes"] == ["car"]
    assert report.written == len(labels["labels"]) == len(extra) == 12  # not the URL image
    for uuid, target in labels["labels"].items():
        (data,) = (out / "data").glob(f"{uuid}.*")
        assert data.read_bytes() == Path(extra[uuid]["source"]).read_bytes()
        assert target["label"] == 0 and target["confidence"] == extra[uuid]["score"]
    assert extra["0"]["tags"] == ["labeled"] and extra["0"]["lookalike_id"] == 0
    plain = gallery.export(tmp_path / "fo2", "fiftyone", id=0, k=3, link=True)
    assert plain.written == 3
    assert set(
        json.loads((tmp_path / "fo2" / "labels.json").read_text(encoding="utf-8"))[
            "labels"
        ].values()
    ) == {None}


def test_export_tags_what_it_wrote_so_the_next_search_skips_it(
    gallery: Collection, tmp_path: Path
) -> None:
    first = gallery.export(tmp_path / "b1.jsonl", id=0, k=5, tag="exported:batch-1")
    assert first.tagged == 5
    batch1 = [json.loads(line)["id"] for line in (tmp_path / "b1.jsonl").open(encoding="utf-8")]
    second = gallery.export(
        tmp_path / "b2.jsonl", id=0, k=5, tag="exported:batch-2", exclude_tags=["exported:batch-1"]
    )
    batch2 = [json.loads(line)["id"] for line in (tmp_path / "b2.jsonl").open(encoding="utf-8")]
    assert second.written == 5 and not set(batch1) & set(batch2)
    assert gallery.tag_counts() == {"exported:batch-1": 5, "exported:batch-2": 5}
    # the library function, over any hits
    hits = gallery.search(id=0, k=13, exclude_tags=["exported:batch-1", "exported:batch-2"])
    report = export(hits, "json", tmp_path / "h.json", collection=gallery, tag="exported:batch-3")
    assert (
        report.tagged == 2
        and len(json.loads((tmp_path / "h.json").read_text(encoding="utf-8"))) == 2
    )


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"format": "parquet"}, BadInputError, "unknown export format 'parquet'"),
        ({"k": 0}, BadInputError, "k must be an integer from 1 to 1,000,000"),
        ({"k": 1_000_001}, BadInputError, "k must be an integer"),
        ({"format": "label-studio"}, BadInputError, "needs --base-url"),
        ({"tag": "bad\ttag"}, BadInputError, "control character"),
        ({"labels": ["a", "a"]}, BadInputError, "distinct"),
        ({"labels": [""]}, BadInputError, "empty"),
        ({"base_url": "ftp://x"}, BadInputError, "http"),
        ({"exclude_tags": ["a\nb"]}, InvalidQueryError, "control character"),
        ({"id": 999}, NotFoundError, "999"),
    ],
)
def test_bad_exports_fail_before_writing(
    gallery: Collection, tmp_path: Path, arguments: dict, error: type, message: str
) -> None:
    arguments = {"id": 0, **arguments}
    with pytest.raises(error, match=message):
        gallery.export(tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()
    assert gallery.tag_counts() == {}


def test_unwritable_or_occupied_out(gallery: Collection, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    for fmt in FORMATS:
        options = {"base_url": "http://h"} if fmt == "label-studio" else {}
        with pytest.raises(BadInputError, match=r"cannot write the export|no such folder"):
            gallery.export(blocker / "out", fmt, id=0, k=2, **options)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine", encoding="utf-8")
    for fmt in ("folder", "cvat", "fiftyone"):
        with pytest.raises(BadInputError, match="not an empty folder"):
            gallery.export(occupied, fmt, id=0, k=2)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    with pytest.raises(BadInputError, match="cannot write the export"):
        gallery.export(occupied, "json", id=0, k=2)  # a folder where the file would go


def test_search_k_over_the_cap_is_refused(gallery: Collection) -> None:
    with pytest.raises(InvalidQueryError, match="k must be an integer from 1 to 10000"):
        gallery.search(id=0, k=10_001)


def test_k_20000_streams_from_25000_vectors(tmp_path: Path) -> None:
    """An export past the search cap pages through searches, writing as it goes: its memory
    stays far below 20,000 hits held twice, and it returns the exact top 20,000."""
    dim = 16
    vectors = np.random.default_rng(2).normal(size=(25_000, dim)).astype(np.float32)
    with Collection.create(tmp_path / "big", f"vectors:{dim}") as col:
        col.add_vectors(vectors, [f"https://example.com/{i}.jpg" for i in range(25_000)])
        col.tag(list(range(0, 25_000, 5)), "labeled")  # 5,000 rows to skip
        query = vectors[7] / np.linalg.norm(vectors[7])
        started = time.perf_counter()
        tracemalloc.start()
        report = col.export(
            tmp_path / "big.jsonl", vector=query.tolist(), k=20_000, exclude_tags=["labeled"]
        )
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (tmp_path / "big.jsonl").open(encoding="utf-8")]
    assert report.written == len(rows) == 20_000
    ids = [r["id"] for r in rows]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = [i for i in np.argsort(-(unit @ query), kind="stable") if i % 5][:20_000]
    assert set(ids) == set(int(i) for i in expected)
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert peak < 60 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    print(f"export k=20,000 of 25,000: {seconds:.2f} s, peak traced memory {peak / 2**20:.1f} MiB")
    assert os.path.getsize(tmp_path / "big.jsonl") > 0
