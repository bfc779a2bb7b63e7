"""Crashes, concurrent writers and readers, verify and repair."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike import Collection, CollectionError


def committed_rows(collection: Path) -> int:
    database = collection / "rows.sqlite"
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(database, timeout=5) as db:
            return int(db.execute("SELECT value FROM meta WHERE key='vector_count'").fetchone()[0])
    except sqlite3.Error:
        return 0


def index_command(folder: Path, collection: Path, spec: str, weights: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lookalike",
        "index",
        str(folder),
        "--collection",
        str(collection),
        "--model",
        spec,
        "--weights",
        str(weights),
        "--workers",
        "0",
        "--batch-size",
        "4",
        "--json",
    ]


def test_sigkill_during_ingest_loses_and_duplicates_nothing(
    tiny_clip: tuple[str, Path], image_folder, tmp_path: Path
) -> None:
    spec, weights = tiny_clip
    folder = image_folder(100)
    reference = Collection.create(tmp_path / "reference", spec, weights=weights)
    reference.add(folder, batch_size=4)
    crashed = tmp_path / "crashed"
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        before = committed_rows(crashed)
        process = subprocess.Popen(
            index_command(folder, crashed, spec, weights),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while process.poll() is None and committed_rows(crashed) <= before:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("ingest made no progress")
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 2, "the ingest finished before it could be killed"
    finish = subprocess.run(
        index_command(folder, crashed, spec, weights), capture_output=True, text=True, timeout=120
    )
    assert finish.returncode == 0, finish.stderr

    with Collection.open(crashed) as result:
        assert result.verify().ok
        assert len(result) == len(reference) == 100
        keys = [item.path for item in result.items()]
        assert len(set(keys)) == len(keys)
        assert sorted(keys) == sorted(item.path for item in reference.items())
        for item in list(reference.items())[::20]:
            ours = result.lookup(item.path)
            assert ours is not None
            theirs = [
                (result.get(h.id).path, round(h.score, 5)) for h in result.search(id=ours.id, k=5)
            ]
            expected = [(h.path, round(h.score, 5)) for h in reference.search(id=item.id, k=5)]
            assert theirs == expected


def test_a_second_writer_waits_then_fails_clearly(
    tiny_clip: tuple[str, Path], tmp_path: Path
) -> None:
    spec, weights = tiny_clip
    first = Collection.create(tmp_path / "col", spec, weights=weights)
    second = Collection.open(tmp_path / "col")
    with first.backend.store.writing():
        started = time.monotonic()
        with pytest.raises(CollectionError, match="being written"):
            second.backend.store.lock(timeout=0.3)
        assert time.monotonic() - started >= 0.3
    second.backend.store.lock(timeout=1)  # free again
    second.backend.store.unlock()


def test_readers_see_each_commit_while_a_writer_runs(
    tiny_clip: tuple[str, Path], image_folder, tmp_path: Path
) -> None:
    spec, weights = tiny_clip
    folder = image_folder(60)
    writer = Collection.create(tmp_path / "col", spec, weights=weights)
    reader = Collection.open(tmp_path / "col")
    seen: list[int] = []
    errors: list[Exception] = []
    done = threading.Event()

    def read() -> None:
        probe = np.ones(writer.dim, dtype=np.float32)
        while not done.is_set():
            try:
                seen.append(len(reader.search(vector=probe, k=100)))
            except Exception as error:  # any failure of a concurrent read is the bug here
                errors.append(error)

    thread = threading.Thread(target=read)
    thread.start()
    writer.add(folder, batch_size=4)
    done.set()
    thread.join()
    assert not errors
    assert seen == sorted(seen), "a reader saw rows disappear"
    assert len(reader.search(vector=np.ones(writer.dim, np.float32), k=100)) == 60


def test_verify_finds_and_repairs(
    tiny_clip: tuple[str, Path], image_folder, tmp_path: Path
) -> None:
    spec, weights = tiny_clip
    folder = image_folder(12)
    collection = Collection.create(tmp_path / "col", spec, weights=weights)
    collection.add(folder)
    assert collection.verify().ok
    # an interrupted write leaves vectors past the committed count
    with open(tmp_path / "col" / "vectors" / "00000.f32", "ab") as shard:
        shard.write(np.ones(collection.dim * 2, np.float32).tobytes())
    report = collection.verify()
    assert not report.ok and report.problems[0].repairable
    assert collection.verify(repair=True).ok
    assert collection.verify().ok
    # a damaged index file is rebuilt from the vectors (enough of them to train on)
    rng = np.random.default_rng(0)
    collection.add_vectors(
        rng.standard_normal((300, collection.dim)),
        [f"https://example.com/{i}.jpg" for i in range(300)],
    )
    collection.rebuild_index("ivf", nlist=4)
    index_file = next((tmp_path / "col" / "index").glob("ivf-[0-9]*.faiss"))
    index_file.unlink()  # a new inode: the open collection's memory map stays intact
    index_file.write_bytes(b"garbage")
    report = collection.verify()
    assert not report.ok
    assert collection.verify(repair=True).ok
    assert Collection.open(tmp_path / "col").search(id=0, k=3)
    # a vanished file is reported, its row kept
    victim = next(p for p in folder.rglob("*") if p.is_file())
    os.remove(victim)
    report = collection.verify(repair=True)
    assert not report.ok and "no longer exist" in report.problems[0].what
    assert len(collection) == 312


def test_cli_verify_exit_codes(tiny_clip: tuple[str, Path], image_folder, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app

    spec, weights = tiny_clip
    collection = Collection.create(tmp_path / "col", spec, weights=weights)
    collection.add(image_folder(4))
    runner = CliRunner()
    assert runner.invoke(app, ["verify", str(tmp_path / "col")]).exit_code == 0
    with open(tmp_path / "col" / "vectors" / "00000.f32", "ab") as shard:
        shard.write(np.ones(collection.dim, np.float32).tobytes())
    broken = runner.invoke(app, ["verify", str(tmp_path / "col")])
    assert broken.exit_code == 1 and "repairable with --repair" in broken.output
    fixed = runner.invoke(app, ["verify", str(tmp_path / "col"), "--repair"])
    assert fixed.exit_code == 0 and "[repaired]" in fixed.output
