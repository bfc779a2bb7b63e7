"""Ray ingest, embed to Parquet and import: the same rows and vectors as a single-process
ingest of the same input, bad files included; reruns add nothing."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lookalike import Collection
from lookalike.cli import app, main
from lookalike.errors import BadInputError, ModelMismatchError
from lookalike.types import IngestReport

ray = pytest.importorskip("ray")

from helpers import searched_during  # noqa: E402
from lookalike.distributed import (  # noqa: E402
    RayOptions,
    embed_to_parquet,
    import_parquet,
    ray_ingest,
)

SMALL = RayOptions(actors=1, batch_size=8)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One small local Ray for the module (2 CPUs, a 200 MB object store)."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


@pytest.fixture
def source(image_folder: Callable[..., Path]) -> Path:
    """20 images, a copy of one of them, and four broken files."""
    folder = image_folder(20)
    shutil.copy(folder / "img0001.jpg", folder / "copy-of-1.jpg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image at all", encoding="utf-8")
    (folder / "truncated.png").write_bytes((folder / "img0002.webp").read_bytes()[:-1][:60])
    (folder / "bad-header.gif").write_bytes(b"GIF89a" + b"\0" * 40)
    return folder


def _collection(path: Path, tiny_clip: tuple[str, Path]) -> Collection:
    spec, weights = tiny_clip
    return Collection.create(path, spec, weights=weights)


def _rows(col: Collection) -> dict[str, tuple]:
    """Stored rows by path: content, size, bytes, mtime, metadata."""
    return {
        row.key: (row.content_hash, row.width, row.height, row.bytes, row.mtime, row.metadata)
        for row in col.backend.iter_live()
    }


def _vectors(col: Collection) -> dict[str, np.ndarray]:
    rows = list(col.backend.iter_live())
    return dict(zip([r.key for r in rows], col.vectors([r.id for r in rows]), strict=True))


def _counts(report: IngestReport) -> tuple:
    return (
        report.added,
        report.unchanged,
        report.duplicates,
        report.replaced,
        report.removed,
        sorted(report.failed),
    )


def _assert_same(col: Collection, reference: Collection) -> None:
    assert _rows(col) == _rows(reference)
    mine, theirs = _vectors(col), _vectors(reference)
    for key, vector in theirs.items():
        assert float(mine[key] @ vector) >= 0.9999, key


@pytest.fixture
def reference(
    source: Path, tmp_path: Path, tiny_clip: tuple[str, Path]
) -> tuple[Collection, IngestReport]:
    """The single-process ingest of the same source."""
    col = _collection(tmp_path / "reference", tiny_clip)
    return col, col.add(source, workers=0, batch_size=8)


def test_ray_ingest_stores_what_the_single_process_ingest_stores(
    source: Path, tmp_path: Path, tiny_clip: tuple[str, Path], reference: tuple
) -> None:
    expected, expected_report = reference
    col = _collection(tmp_path / "ray", tiny_clip)
    report = ray_ingest(col, source, ray=SMALL)
    assert _counts(report) == _counts(expected_report)
    assert report.added == 20 and report.duplicates == 1 and len(report.failed) == 4
    _assert_same(col, expected)
    assert col.backend.roots() == expected.backend.roots()
    again = ray_ingest(col, source, ray=SMALL)  # a rerun reads nothing and adds nothing
    # the copy is read again (its path holds no row) and found a duplicate, as with add()
    assert (again.added, again.unchanged, again.duplicates, len(again.failed)) == (0, 20, 1, 4)
    assert len(col) == 20


def test_a_rerun_after_a_failure_resumes(
    image_folder: Callable[..., Path], tmp_path: Path, tiny_clip: tuple[str, Path]
) -> None:
    folder = image_folder(20, name="resume")
    (folder / "nested" / "zz-last.jpg").write_bytes(b"\xff\xd8 broken")  # read last
    col = _collection(tmp_path / "ray", tiny_clip)
    with pytest.raises(BadInputError, match="zz-last"):  # --strict stops at the broken file
        ray_ingest(col, folder, ray=SMALL, strict=True)
    assert len(col) == 16  # the two full batches before it were committed
    report = ray_ingest(col, folder, ray=SMALL)
    assert report.unchanged == 16  # skipped by path, size and mtime: never read again
    assert (report.added, len(report.failed)) == (4, 1)
    reference = _collection(tmp_path / "reference", tiny_clip)
    reference.add(folder, workers=0)
    _assert_same(col, reference)


def test_embed_then_import_equals_the_direct_ingest(
    source: Path, tmp_path: Path, tiny_clip: tuple[str, Path], reference: tuple
) -> None:
    expected, expected_report = reference
    spec, weights = tiny_clip
    shards = tmp_path / "shards"
    written = embed_to_parquet(source, shards, model=spec, weights=weights, ray=SMALL)
    assert written.rows == 25 and sorted(written.failed) == sorted(expected_report.failed)
    col = _collection(tmp_path / "imported", tiny_clip)
    report = import_parquet(col, shards)
    assert _counts(report) == _counts(expected_report)
    _assert_same(col, expected)
    assert col.backend.roots() == expected.backend.roots()
    again = import_parquet(col, shards)
    assert (again.added, again.unchanged, again.duplicates) == (0, 20, 1)
    # another model's collection refuses the shards, whatever its dimension
    for other in ("vectors:32", "vectors:16"):
        foreign = Collection.create(tmp_path / other.replace(":", "-"), other)
        with pytest.raises(ModelMismatchError, match="holds vectors of"):
            import_parquet(foreign, shards)
        assert len(foreign) == 0
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "part.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(BadInputError, match="not a readable Parquet file"):
        import_parquet(col, tmp_path / "junk")
    with pytest.raises(BadInputError, match="must be 1 or more"):
        RayOptions(actors=0)
    with pytest.raises(BadInputError, match="no Parquet shards"):
        import_parquet(col, source)  # a folder of images, not shards


def test_the_cli_runs_index_embed_and_import_on_ray(
    source: Path,
    tmp_path: Path,
    tiny_clip: tuple[str, Path],
    reference: tuple,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec, weights = tiny_clip
    runner = CliRunner()
    ray_flags = ["--ray", "--ray-actors", "1", "--ray-batch-size", "8"]
    target = tmp_path / "cli"
    index = [
        "index", str(source), "-c", str(target), "--model", spec, "--weights", str(weights),
        *ray_flags, "--json",
    ]  # fmt: skip
    result = runner.invoke(app, index)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["added"], summary["duplicates"], len(summary["failed"])) == (20, 1, 4)
    with Collection.open(target) as col:
        _assert_same(col, reference[0])
    shards = tmp_path / "cli-shards"
    embed = ["embed", str(source), *ray_flags, "--out", str(shards), "--model", spec]
    result = runner.invoke(app, [*embed, "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    assert "wrote 25 rows (4 failed)" in result.stdout
    other = tmp_path / "cli-imported"
    Collection.create(other, spec, weights=weights).close()
    result = runner.invoke(app, ["import", str(shards), "-c", str(other)])
    assert result.exit_code == 0, result.output
    assert "added 20, unchanged 0, duplicates 1" in result.stdout
    foreign = tmp_path / "foreign"
    Collection.create(foreign, "vectors:32").close()
    monkeypatch.setattr(sys, "argv", ["lookalike", "import", str(shards), "-c", str(foreign)])
    with pytest.raises(SystemExit) as ended:
        main()
    assert ended.value.code == 1
    error = capsys.readouterr().err
    assert "holds vectors of" in error and "Traceback" not in error


def test_a_server_answers_searches_during_a_ray_ingest(
    image_folder: Callable[..., Path], tmp_path: Path, tiny_clip: tuple[str, Path]
) -> None:

    folder = image_folder(48)
    writer = _collection(tmp_path / "shared", tiny_clip)
    writer.add_images([folder / "img0001.jpg"])
    served = Collection.open(tmp_path / "shared")
    answered, seen, final = searched_during(
        lambda: ray_ingest(writer, folder, ray=RayOptions(actors=1, batch_size=4)),
        served,
        {"id": 0, "k": 100},
    )
    assert answered > 1 and len(final["results"]) == 47  # every image but the query's own
    assert len(seen) > 1  # searches saw the collection grow, batch by batch
