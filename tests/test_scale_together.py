"""Both scale paths at once: a Ray ingest into a Milvus-backed collection while a server
answers searches from it; the result matches a single-process ingest into the embedded
default. A real Milvus standalone server and a local Ray, both started here and stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import searched_during
from lookalike import Collection

ray = pytest.importorskip("ray")
pytest.importorskip("pymilvus")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


def test_a_ray_ingest_into_milvus_while_a_server_answers(
    milvus_uri: str,
    local_ray: None,
    image_folder: Callable[..., Path],
    tmp_path: Path,
    tiny_clip: tuple[str, Path],
) -> None:
    from lookalike.distributed import RayOptions, ray_ingest

    spec, weights = tiny_clip
    folder = image_folder(40)
    first = folder / "img0001.jpg"
    options = {"weights": weights, "runtime": "torch"}
    writer = Collection.create(
        tmp_path / "milvus", spec, backend="milvus", uri=milvus_uri, **options
    )
    writer.add_images([first])
    served = Collection.open(tmp_path / "milvus", runtime="torch")
    answered, _, final = searched_during(
        lambda: ray_ingest(writer, folder, ray=RayOptions(actors=1, batch_size=4)),
        served,
        {"text": "x", "k": 100},
    )
    assert answered > 1 and len(final["results"]) == 40  # every image, none twice

    # the same images, one process, the embedded default: the same rows and rankings
    with Collection.create(tmp_path / "embedded", spec, **options) as embedded:
        embedded.add(folder, workers=0)
        ranked = [h.path for h in embedded.search(text="x", k=100)]
        by_path = {h.path: h.score for h in embedded.search(text="x", k=100)}
    with Collection.open(tmp_path / "milvus", runtime="torch") as milvus:
        hits = milvus.search(text="x", k=100)
    assert {h.path for h in hits} == set(ranked)
    for hit in hits:  # FLAT below 100,000 rows: exact scores
        assert hit.score == pytest.approx(by_path[hit.path], abs=1e-4)
    writer.close()
    served.close()
