"""The Label Studio round trip against a real Label Studio on 127.0.0.1: push hits as tasks,
label them through Label Studio's API as a labeler would, pull the labels back as tags and
relevance marks, and the next search skips what was labeled."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from typer.testing import CliRunner

from helpers import encode, serve_app
from labelstudio_server import BINARY, TOKEN, label_studio
from lookalike import Collection
from lookalike.cli import app as cli
from lookalike.demo import draw_image
from lookalike.errors import BadInputError
from lookalike.integrations.labelstudio import (
    LabelStudio,
    LabelStudioError,
    marks_from_tags,
    pull,
)
from lookalike.query import OPTIONS
from lookalike.server import ServerSettings, create_app

PROJECT = "police cars round 1"
SECRET = "label-studio-test-secret-0123456789"
KEY = "lookalike-api-key"

if not BINARY.exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"Label Studio is not installed at {BINARY}: run make")
    pytest.skip(
        f"Label Studio is not installed at {BINARY} (make installs it)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with label_studio(tmp_path_factory.mktemp("label-studio")) as url:
        yield url


@pytest.fixture(scope="module")
def col(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, Path]
) -> Iterator[Collection]:
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("ls-col")
    photos = root / "photos"
    photos.mkdir()
    for i in range(12):
        (photos / f"car{i:02d}.png").write_bytes(encode(draw_image(i, (48, 36), "RGB")))
    collection = Collection.create(root / "col", spec, weights=weights)
    collection.add(photos)
    yield collection
    collection.close()


def _ls(url: str, method: str, path: str, **options: object) -> object:
    answer = httpx.request(
        method, f"{url}{path}", headers={"authorization": f"Token {TOKEN}"}, timeout=30, **options
    )
    assert answer.status_code < 300, answer.text
    return answer.json() if answer.content else None


def _tasks(url: str, project_id: int) -> list[dict]:
    return _ls(
        url, "GET", f"/api/projects/{project_id}/export?exportType=JSON&download_all_tasks=true"
    )  # type: ignore[return-value]


def _label(url: str, task_id: int, choice: str) -> None:
    """What a labeler's click sends: one annotation choosing ``choice``."""
    result = [
        {
            "from_name": "label",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": [choice]},
        }
    ]
    _ls(url, "POST", f"/api/tasks/{task_id}/annotations", json={"result": result})


def test_push_label_pull_and_the_next_search_skips_the_labeled(
    studio_url: str, col: Collection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    monkeypatch.setenv("LOOKALIKE_URL_SECRET", SECRET)
    settings = ServerSettings(api_keys=(KEY,), url_secret=SECRET)
    with serve_app(create_app({"col": col}, settings)) as lookalike_url:
        push = [
            "labelstudio", "push", str(col.path), "--url", studio_url, "--project", PROJECT,
            "--id", "0", "-k", "5", "--labels", "police_car,other", "--image-server", lookalike_url,
        ]  # fmt: skip
        first = CliRunner().invoke(cli, push)
        assert first.exit_code == 0, first.output
        assert "5 tasks imported" in first.output and TOKEN not in first.output

        project = LabelStudio(studio_url).find_project(PROJECT)
        assert project is not None
        tasks = _tasks(studio_url, project["id"])
        ids = sorted(t["data"]["lookalike_id"] for t in tasks)
        assert len(tasks) == 5 and 0 not in ids
        # the images load without an API key, through their signed links, and only those
        for task in tasks:
            image = httpx.get(task["data"]["image"], timeout=10)
            assert image.status_code == 200
            assert image.content == Path(col.get(task["data"]["lookalike_id"]).path).read_bytes()
        assert httpx.get(f"{lookalike_url}/v1/collections/col/items/0/image").status_code == 401
        assert sorted(col.tagged(f"exported:{PROJECT}")) == ids

        again = CliRunner().invoke(cli, push)  # the same hits: nothing added
        assert again.exit_code == 0 and "0 tasks imported, 5 already there" in again.output
        assert len(_tasks(studio_url, project["id"])) == 5

    predictions = _ls(studio_url, "GET", f"/api/predictions?task={tasks[0]['id']}")
    assert predictions[0]["model_version"] == f"lookalike:{col.model}"  # type: ignore[index]
    assert isinstance(predictions[0]["score"], float)  # type: ignore[index]

    by_id = {t["data"]["lookalike_id"]: t["id"] for t in tasks}
    police, other, gone = ids[0:2], ids[2], ids[3]  # ids[4] stays unlabeled
    for item_id in police:
        _label(studio_url, by_id[item_id], "police_car")
    _label(studio_url, by_id[other], "other")
    _label(studio_url, by_id[gone], "police_car")
    col.remove(gone)  # labeled, then removed from the collection: reported, not fatal

    marks_file = tmp_path / "marks.json"
    pulled = CliRunner().invoke(
        cli, ["labelstudio", "pull", str(col.path), "--url", studio_url, "--project", PROJECT,
              "--save", str(marks_file)],
    )  # fmt: skip
    assert pulled.exit_code == 0, pulled.output
    assert f"image {gone} was labeled but is no longer in the collection" in pulled.output
    assert json.loads(marks_file.read_text(encoding="utf-8")) == {
        "relevant": police,
        "irrelevant": [other],
        "target": "police_car",
    }
    assert col.tagged("label:police_car") == police and col.tagged("label:other") == [other]

    with LabelStudio(studio_url) as studio:
        assert pull(col, studio, PROJECT).changed == 0  # run again: nothing changes
        _label(studio_url, by_id[other], "police_car")  # a second opinion, later, wins
        relabeled = pull(col, studio, PROJECT)
    assert relabeled.changed == 2 and relabeled.relevant == sorted([*police, other])
    # the tags carry the marks from one round to the next
    assert marks_from_tags(col, ["label:police_car"], ["label:other"]) == relabeled.marks()
    assert col.tags(other) == ["exported:" + PROJECT, "label:police_car"]

    # the next search skips everything sent to the project, and k still comes back
    later = col.search(id=0, k=5, exclude_tags=[f"exported:{PROJECT}"])
    assert len(later) == 5 and not {h.id for h in later} & set(ids)
    labeled = col.search(id=0, k=10, tags=["label:police_car"])
    assert sorted(h.id for h in labeled) == sorted([*police, other])


@pytest.mark.skipif(
    "relevant" not in OPTIONS, reason="needs relevance feedback (search relevant=/irrelevant=)"
)
def test_the_next_round_is_pushed_by_the_labels_of_the_last(
    studio_url: str, col: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    sent = set(col.tagged(f"exported:{PROJECT}"))
    assert col.tagged("label:police_car"), "runs after the round trip above"
    result = CliRunner().invoke(
        cli,
        ["labelstudio", "push", str(col.path), "--url", studio_url, "--project", PROJECT,
         "-k", "3", "--relevant-tag", "label:police_car", "--irrelevant-tag", "label:other",
         "--exclude-tag", f"exported:{PROJECT}", "--local-files-root", str(col.path.parent)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 tasks imported, 0 already there" in result.output
    now = set(col.tagged(f"exported:{PROJECT}"))
    assert len(now - sent) == 3
    project = LabelStudio(studio_url).find_project(PROJECT)
    new = [t for t in _tasks(studio_url, project["id"]) if t["data"]["lookalike_id"] in now - sent]
    assert all(t["data"]["image"].startswith("/data/local-files/?d=photos/") for t in new)


def test_a_wrong_key_is_refused_clearly_and_never_shown(studio_url: str) -> None:
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY") as caught:
        LabelStudio(studio_url, "not-the-key-0123456789").find_project(PROJECT)
    assert "not-the-key" not in str(caught.value)
    assert "not-the-key" not in repr(LabelStudio(studio_url, "not-the-key-0123456789"))


def test_pull_of_an_unknown_project_says_so(studio_url: str, col: Collection) -> None:
    with (
        LabelStudio(studio_url, TOKEN) as studio,
        pytest.raises(Exception, match="no Label Studio project"),
    ):
        pull(col, studio, "no such project")


def test_signed_links_in_tasks_point_at_the_image_route(col: Collection) -> None:
    from lookalike.integrations.labelstudio import signed_links

    link = signed_links("http://lookalike.example:8000", "col", SECRET)(col.get(1))
    parts = urlsplit(link)
    assert parts.path == "/v1/collections/col/items/1/image" and "token=" in parts.query


def test_push_says_what_is_missing_in_one_line(
    col: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    base = ["labelstudio", "push", str(col.path), "--project", PROJECT, "--id", "0"]
    cases = [
        ([*base, "--url", "http://127.0.0.1:9"], "--image-server URL"),
        ([*base, "--url", "http://127.0.0.1:9", "--local-files-root", "/"], "cannot reach Label"),
        ([*base, "--url", "localhost:8080", "--local-files-root", "/"], "must start with http"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code != 0 and message in str(result.exception), result.output
    with pytest.raises(BadInputError, match="no image holds the tags"):
        marks_from_tags(col, ["label:nothing"], None)
