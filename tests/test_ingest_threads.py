"""Ingest preparing in threads that take turns with the encoder (the default), against inline
and worker-process preparation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from lookalike import Collection
from lookalike import ingest as ingest_module


@pytest.fixture
def make_col(tiny_clip, tmp_path: Path) -> Iterator[Callable[[str], Collection]]:
    spec, weights = tiny_clip
    made: list[Collection] = []

    def make(name: str) -> Collection:
        made.append(Collection.create(tmp_path / name, spec, weights=weights))
        return made[-1]

    yield make
    for col in made:
        col.close()


def vectors_by_path(col: Collection) -> dict[str, np.ndarray]:
    items = list(col.items())
    vectors = col.vectors([item.id for item in items])
    return {Path(item.path).name: vector for item, vector in zip(items, vectors, strict=True)}


def test_preparing_threads_never_run_beside_the_encoder(
    make_col, image_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = image_folder(20)
    col = make_col("col")
    spans: dict[str, list[tuple[float, float]]] = {"prepare": [], "encode": []}
    threads: set[str] = set()
    real_prepare, real_encode = ingest_module.prepare, col.encoder.encode_images

    def timed(kind: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans[kind].append((started, time.perf_counter()))
                if kind == "prepare":
                    threads.add(threading.current_thread().name)

        return run

    monkeypatch.setattr(ingest_module, "prepare", timed("prepare", real_prepare))
    monkeypatch.setattr(col.encoder, "encode_images", timed("encode", real_encode))
    report = col.add(folder, threads=3, batch_size=6)

    assert report.added == 20 and not report.failed
    assert len(spans["prepare"]) == 20 and len(spans["encode"]) == 4  # batches of 6, 6, 6, 2
    assert threading.main_thread().name not in threads
    for encode_start, encode_end in spans["encode"]:
        for prepare_start, prepare_end in spans["prepare"]:
            assert prepare_end <= encode_start or prepare_start >= encode_end


def test_threads_inline_and_processes_store_the_same_vectors(make_col, image_folder) -> None:
    folder = image_folder(12)
    stored = {}
    for name, options in {
        "threads": {"threads": 3},
        "inline": {"threads": 1},
        "processes": {"workers": 1},
    }.items():
        col = make_col(name)
        report = col.add(folder, batch_size=5, **options)
        assert report.added == 12 and not report.failed, name
        stored[name] = vectors_by_path(col)
    for name in ("inline", "processes"):
        assert stored[name].keys() == stored["threads"].keys()
        for path, vector in stored["threads"].items():
            assert np.array_equal(vector, stored[name][path]), (name, path)
