"""Crashes, concurrent writers and readers, verify and repair."""

from __future__ import annotations

import json
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
        index_command(folder, crashed, spec, weights),
        capture_output=True,
        text=True,
        timeout=120,
        encoding="utf-8",
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


# -- issue 9: racing writers, a lost or damaged database, a damaged vector shard --------------


def vectors_collection(path: Path, count: int, dim: int = 8) -> Collection:
    """A model-free collection holding ``count`` random unit vectors under URL keys."""
    collection = Collection.create(path, f"vectors:{dim}")
    rng = np.random.default_rng(3)
    collection.add_vectors(
        rng.standard_normal((count, dim)), [f"https://example.com/{i}.jpg" for i in range(count)]
    )
    return collection


def shard_of(collection: Path) -> Path:
    return collection / "vectors" / "00000.f32"


def test_two_concurrent_ingests_store_each_image_once(
    tiny_clip: tuple[str, Path], image_folder, tmp_path: Path
) -> None:
    spec, weights = tiny_clip
    folder = image_folder(24)
    Collection.create(tmp_path / "col", spec, weights=weights).close()
    writers = [Collection.open(tmp_path / "col") for _ in range(2)]
    # both writers have judged their first image new before either stores it: the race
    both_looked = threading.Barrier(2, timeout=20)
    reports: list = [None, None]
    errors: list[BaseException] = []

    def run(n: int) -> None:
        first = [True]

        def progress(_report) -> None:
            if first[0]:
                first[0] = False
                both_looked.wait()

        try:
            reports[n] = writers[n].add(folder, batch_size=4, progress=progress)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    with Collection.open(tmp_path / "col") as result:
        keys = [item.path for item in result.items()]
        assert len(keys) == len(set(keys)) == 24
        assert result.verify().ok
    assert sum(r.added for r in reports) == 24
    for report in reports:  # the second writer counts what the first stored as unchanged
        assert report.added + report.unchanged + report.duplicates == 24
    for writer in writers:
        writer.close()


def test_adding_vectors_again_duplicates_nothing_and_verify_repairs_duplicate_keys(
    tmp_path: Path,
) -> None:
    from lookalike.store import NewRow

    collection = vectors_collection(tmp_path / "col", 10)
    again = collection.add_vectors(
        np.ones((2, 8)), ["https://example.com/3.jpg", "https://example.com/new"]
    )
    assert again[0] == 3 and again[1] == 10
    assert len(collection) == 11
    # rows stored twice under one key, as racing writers of an older version left them
    with collection.backend.store.writing():
        collection.backend.store.add(
            [NewRow(f"https://example.com/{i}.jpg", f"h{i}", 0, 0, 0, np.eye(8)[0]) for i in (4, 5)]
        )
    report = collection.verify()
    assert not report.ok
    (problem,) = [p for p in report.problems if "more than once" in p.what]
    assert problem.repairable and problem.ids == [4, 5]
    assert collection.verify(repair=True).ok
    assert collection.verify().ok
    assert len(collection) == 11
    assert collection.lookup("https://example.com/4.jpg").id == 11  # the latest row is kept


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_a_missing_or_empty_database_is_refused_and_no_vector_dropped(
    tmp_path: Path, damage: str
) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app

    vectors_collection(tmp_path / "col", 40).close()
    size = shard_of(tmp_path / "col").stat().st_size
    database = tmp_path / "col" / "rows.sqlite"
    database.unlink()
    if damage == "empty":
        database.write_bytes(b"")
    with pytest.raises(CollectionError, match=r"missing or empty.*40 vectors.*backup"):
        Collection.open(tmp_path / "col")
    runner = CliRunner()
    for args in (["verify"], ["verify", "--repair"]):
        result = runner.invoke(app, [*args, str(tmp_path / "col")])
        assert result.exit_code == 1, result.output
        assert "missing or empty" in result.output and "needs attention" in result.output
    assert shard_of(tmp_path / "col").stat().st_size == size
    assert database.exists() == (damage == "empty")


def test_a_replaced_database_never_costs_vectors(tmp_path: Path) -> None:
    vectors_collection(tmp_path / "col", 30).close()
    shard = shard_of(tmp_path / "col")
    size = shard.stat().st_size
    vectors_collection(tmp_path / "other", 0).close()  # an empty collection's database
    os.replace(tmp_path / "other" / "rows.sqlite", tmp_path / "col" / "rows.sqlite")
    with Collection.open(tmp_path / "col") as collection:
        with pytest.raises(CollectionError, match="30 vectors past the 0 committed rows"):
            collection.add_vectors(np.ones((1, 8)), ["x"])
        report = collection.verify(repair=True)
        assert not report.ok
        assert "records no rows" in report.problems[0].what
        assert not report.problems[0].repairable
    assert shard.stat().st_size == size


def test_an_older_copy_of_the_database_sets_the_newer_vectors_aside(tmp_path: Path) -> None:
    collection = vectors_collection(tmp_path / "col", 10)
    collection.close()
    database = tmp_path / "col" / "rows.sqlite"
    older = database.read_bytes()
    with Collection.open(tmp_path / "col") as collection:
        collection.add_vectors(np.ones((5, 8)), [f"later{i}" for i in range(5)])
    database.write_bytes(older)  # restored from a backup made before the last write
    with Collection.open(tmp_path / "col") as collection:
        assert len(collection) == 10
        with pytest.raises(CollectionError, match="5 vectors past the 10 committed rows"):
            collection.remove(ids=[0])
        report = collection.verify()
        assert not report.ok and report.problems[0].repairable
        assert collection.verify(repair=True).ok
        collection.remove(ids=[0])  # writable again
    (aside,) = (tmp_path / "col" / "set-aside").iterdir()
    kept = np.fromfile(aside, dtype=np.float32).reshape(-1, 8)
    np.testing.assert_allclose(kept, np.full((5, 8), 8**-0.5), rtol=1e-6)
    assert shard_of(tmp_path / "col").stat().st_size == 10 * 8 * 4


def test_a_cut_vector_shard_is_skipped_listed_marked_and_embedded_again(
    tiny_clip: tuple[str, Path], image_folder, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app

    spec, weights = tiny_clip
    folder = image_folder(12)
    collection = Collection.create(tmp_path / "col", spec, weights=weights)
    collection.add(folder)
    collection.close()
    shard = shard_of(tmp_path / "col")
    dim = collection.dim
    with open(shard, "r+b") as f:
        f.truncate(9 * dim * 4 + 6)  # ids 9, 10, 11 lost, plus part of a row
    with Collection.open(tmp_path / "col") as damaged:
        hits = damaged.search(vector=np.ones(dim, np.float32), k=20)
        assert sorted(h.id for h in hits) == list(range(9))
        with pytest.raises(LookupError, match="lost"):
            damaged.search(id=10)
        report = damaged.verify()
        (problem,) = [p for p in report.problems if "lack the vectors" in p.what]
        assert problem.ids == [9, 10, 11] and "9..11" in problem.what and problem.repairable
        with pytest.raises(CollectionError, match="verify --repair"):
            damaged.remove(ids=[0])
        assert shard.stat().st_size == 9 * dim * 4 + 6  # never padded behind our back
        assert damaged.verify(repair=True).problems[0].repaired
        after = damaged.verify()
        assert not after.ok and after.problems[0].ids == [9, 10, 11]
        assert "index" in after.problems[0].what
        assert len(damaged.search(vector=np.ones(dim, np.float32), k=20)) == 9
    again = CliRunner().invoke(
        app, ["index", str(folder), "--collection", str(tmp_path / "col"), "--json"]
    )
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output)
    assert (summary["added"], summary["replaced"]) == (3, 3)
    with Collection.open(tmp_path / "col") as healed:
        assert healed.verify().ok
        assert len(healed) == 12
        for item in healed.items():
            assert healed.search(image=item.path, k=1)[0].id == item.id


@pytest.mark.parametrize("damage", ["cut in half", "two pages overwritten"])
def test_a_damaged_database_is_reported_then_rebuilt(tmp_path: Path, damage: str) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app

    vectors_collection(tmp_path / "col", 3000).close()
    database = tmp_path / "col" / "rows.sqlite"
    size = shard_of(tmp_path / "col").stat().st_size
    data = bytearray(database.read_bytes())
    if damage == "cut in half":
        data = data[: len(data) // 2]
    else:
        data[3 * 4096 : 5 * 4096] = random.Random(1).randbytes(2 * 4096)
    database.write_bytes(bytes(data))
    runner = CliRunner()
    checked = runner.invoke(app, ["verify", str(tmp_path / "col")])
    assert checked.exit_code == 1, checked.output
    assert "rows.sqlite is damaged" in checked.output
    assert "repairable with --repair" in checked.output
    repaired = runner.invoke(app, ["verify", str(tmp_path / "col"), "--repair", "--json"])
    assert repaired.exit_code == 0, repaired.output
    (backup,) = (tmp_path / "col").glob("rows.sqlite.damaged-*")
    assert backup.read_bytes() == bytes(data)
    assert shard_of(tmp_path / "col").stat().st_size == size
    with Collection.open(tmp_path / "col") as rebuilt:
        items = list(rebuilt.items())
        assert len(items) >= 1000
        for item in items:  # every recovered row kept its id
            assert item.url == f"https://example.com/{item.id}.jpg"
        lost = json.loads(repaired.output)["problems"][0]["ids"]
        assert len(items) + len(lost) == 3000
        assert rebuilt.verify().ok
        rebuilt.add_vectors(np.ones((1, 8)), ["https://example.com/new.jpg"])
        assert rebuilt.lookup("https://example.com/new.jpg").id == 3000
