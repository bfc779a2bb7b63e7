"""CVAT: the task's files and annotations XML, and the call shapes of the real cvat-sdk.

No CVAT server runs here: the XML is checked against CVAT for images 1.1 as CVAT documents
it, and the calls against the installed SDK's own signatures and request models (which
validate field names and values), not against a mock's behaviour."""

from __future__ import annotations

import inspect
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import encode
from lookalike import Collection
from lookalike.cli import app as cli
from lookalike.demo import draw_image
from lookalike.errors import BadInputError
from lookalike.integrations.cvat import CvatError, create_task, plan_task

if os.environ.get("CI"):
    import cvat_sdk  # dev dependency: must be there in CI
else:
    cvat_sdk = pytest.importorskip("cvat_sdk")
from cvat_sdk import models
from cvat_sdk.core.proxies.tasks import ResourceType, TasksRepo


@pytest.fixture(scope="module")
def col(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, Path]
) -> Iterator[Collection]:
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("cvat-col")
    photos = root / "photos"
    photos.mkdir()
    for i in range(6):
        (photos / f"frame{i}.png").write_bytes(encode(draw_image(i, (40 + i, 30), "RGB")))
    collection = Collection.create(root / "col", spec, weights=weights)
    collection.add(photos)
    collection.tag([0], "label:police_car")
    collection.tag([1], "label:other")
    collection.tag([2], "label:not-a-task-label")
    yield collection
    collection.close()


def test_annotations_are_cvat_for_images_1_1(col: Collection, tmp_path: Path) -> None:
    hits = col.search(id=3, k=6, include_self=True)
    task = plan_task(col, hits, "police cars", ["police_car", "other"], tmp_path)
    root = ElementTree.parse(task.annotation_path).getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    labels = [e.findtext("name") for e in root.iter("label")]
    assert labels == ["police_car", "other"]
    images = root.findall("image")
    # frames in rank order, named as cvat-sdk uploads them (file name), with their sizes
    assert [int(e.get("id")) for e in images] == list(range(6))
    assert [e.get("name") for e in images] == [Path(p).name for p in task.resources]
    assert task.resources == [h.path for h in hits] and task.ids == [h.id for h in hits]
    for element, hit in zip(images, hits, strict=True):
        assert (int(element.get("width")), int(element.get("height"))) == (hit.width, hit.height)
        expected = {0: ["police_car"], 1: ["other"]}.get(hit.id, [])  # other tags are left out
        assert [(t.get("label"), t.get("source")) for t in element.findall("tag")] == [
            (label, "manual") for label in expected
        ]


def test_the_task_fits_the_sdk_calls(col: Collection, tmp_path: Path) -> None:
    task = plan_task(col, col.search(id=0, k=3), "t1", ["police_car", "other"], tmp_path)
    spec = models.TaskWriteRequest(
        name=task.spec()["name"],
        labels=[models.PatchedLabelRequest(**label) for label in task.spec()["labels"]],
    )
    assert [label.name for label in spec.labels] == ["police_car", "other"]
    # the data parameters are ones CVAT's DataRequest model accepts, values included
    models.DataRequest(**task.data_params)
    call = inspect.signature(TasksRepo.create_from_data).bind(
        None,
        spec=spec,
        resources=task.resources,
        resource_type=ResourceType.LOCAL,
        data_params=task.data_params,
        annotation_path=task.annotation_path,
        annotation_format=task.annotation_format,
    )
    assert call.arguments["annotation_format"] == "CVAT 1.1"
    assert all(Path(p).is_file() for p in task.resources)


def test_no_credentials_or_no_server_is_a_clear_error(
    col: Collection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = plan_task(col, col.search(id=0, k=2), "t2", ["a", "b"], tmp_path)
    for name in ("CVAT_ACCESS_TOKEN", "CVAT_USERNAME", "CVAT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(BadInputError, match="CVAT_ACCESS_TOKEN"):
        create_task(task, "http://127.0.0.1:9")
    monkeypatch.setenv("CVAT_USERNAME", "someone")
    monkeypatch.setenv("CVAT_PASSWORD", "hunter2-secret")
    with pytest.raises(CvatError, match=r"CVAT at http://127\.0\.0\.1:9 failed") as caught:
        create_task(task, "http://127.0.0.1:9")  # nothing listens on port 9
    assert "hunter2" not in str(caught.value)
    result = CliRunner().invoke(
        cli,
        ["cvat", "push", str(col.path), "--host", "http://127.0.0.1:9", "--task", "t3",
         "--labels", "a,b", "--id", "0", "-k", "2"],
    )  # fmt: skip
    assert result.exit_code != 0 and "hunter2" not in result.output
    assert col.tagged("exported:cvat:t3") == []  # nothing marked exported when CVAT failed


def test_files_cvat_cannot_tell_apart_are_refused(col: Collection, tmp_path: Path) -> None:
    hits = col.search(id=0, k=2)
    twin = tmp_path / "other" / Path(hits[0].path).name
    twin.parent.mkdir()
    twin.write_bytes(encode(draw_image(40, (30, 30), "RGB")))
    (new,) = col.add_images([twin]).ids
    with pytest.raises(BadInputError, match="occur twice"):
        plan_task(col, [*hits, col.get(new)], "t4", ["a", "b"], tmp_path)
    col.remove(new)
