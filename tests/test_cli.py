"""The ``lookalike`` command: index, search, info, remove, and how it reports errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import encode
from lookalike import Collection
from lookalike.cli import app, main
from lookalike.demo import draw_image

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def run_main(monkeypatch: pytest.MonkeyPatch, capsys, *args: object) -> tuple[int, str, str]:
    """Run the real entry point in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["lookalike", *map(str, args)])
    with pytest.raises(SystemExit) as ended:
        main()
    captured = capsys.readouterr()
    return ended.value.code or 0, captured.out, captured.err


def one_line_error(stderr: str, *needles: str) -> None:
    """stderr holds one error line (besides index's progress bar) and no traceback."""
    lines = [
        line for line in stderr.splitlines() if line.strip() and not line.startswith("indexing")
    ]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def write_images(folder: Path, count: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(start, start + count):
        files.append(folder / f"p{i:03d}.png")
        files[-1].write_bytes(encode(draw_image(i, (40 + i, 36))))
    return files


def model_args(tiny_clip) -> list[str]:
    spec, weights = tiny_clip
    return ["--model", spec, "--weights", str(weights), "--workers", "0"]


@pytest.fixture(scope="module")
def indexed(tiny_clip, tmp_path_factory: pytest.TempPathFactory):
    """(collection dir, image files) of 12 images indexed through the CLI from a CSV manifest."""
    root = tmp_path_factory.mktemp("cli")
    files = write_images(root / "images", 12)
    rows = ["path,split,n"] + [
        f"images/{f.name},{'rare' if i % 4 == 0 else 'common'},{i}" for i, f in enumerate(files)
    ]
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = invoke("index", root / "labels.csv", "-c", root / "col", *model_args(tiny_clip))
    assert result.exit_code == 0, result.output
    assert "added 12, unchanged 0, duplicates 0, replaced 0, failed 0" in result.stdout
    return root / "col", files


def search_json(col: Path, *args: object) -> list[dict]:
    result = invoke("search", col, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("index", "search", "info", "remove"):
        assert command in result.stdout
    for command in ("index", "search"):
        assert invoke(command, "--help").exit_code == 0


def test_help_through_the_installed_entry_point() -> None:
    script = Path(sys.executable).parent / "lookalike"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lookalike"]
    done = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=60, encoding="utf-8"
    )
    assert done.returncode == 0, done.stderr
    assert "search" in done.stdout and "index" in done.stdout


def test_info(indexed, tiny_clip) -> None:
    col, _ = indexed
    result = invoke("info", col)
    assert result.exit_code == 0
    fields = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    assert fields["count"] == "12"
    assert fields["model"] == tiny_clip[0]
    assert fields["dim"] == "32"
    assert fields["index"] == "flat"
    assert int(fields["bytes_on_disk"]) > 12 * 32 * 4
    stats = json.loads(invoke("info", col, "--json").stdout)
    assert (stats["count"], stats["dim"], stats["index"], stats["deleted"]) == (12, 32, "flat", 0)
    assert stats["weights"] == str(tiny_clip[1].resolve())


def test_search_by_text_json_and_table(indexed) -> None:
    col, files = indexed
    hits = search_json(col, "--text", "a red circle", "-k", "3")
    assert len(hits) == 3
    assert set(hits[0]) == {"id", "score", "path", "url", "width", "height", "metadata"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert {h["path"] for h in hits} <= {str(f.resolve()) for f in files}
    assert len(search_json(col, "--text", "a red circle")) == 12  # k defaults to 20
    table = invoke("search", col, "--text", "a red circle", "-k", "3")
    assert table.exit_code == 0
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "id", "path"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert [int(line.split()[2]) for line in lines[1:]] == [h["id"] for h in hits]


def test_search_by_image_file(indexed) -> None:
    col, files = indexed
    hits = search_json(col, "--image", files[5], "-k", "2")
    assert hits[0]["path"] == str(files[5].resolve())
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert (hits[0]["width"], hits[0]["height"]) == (45, 36)
    assert hits[0]["metadata"] == {"split": "common", "n": 5}


def test_search_by_ids(indexed) -> None:
    col, _ = indexed
    assert 4 not in [h["id"] for h in search_json(col, "--id", 4)]
    with_self = search_json(col, "--id", 4, "--include-self", "-k", 1)
    assert with_self[0]["id"] == 4
    assert with_self[0]["score"] == pytest.approx(1.0, abs=1e-4)
    both = search_json(col, "--id", 4, "--id", 7, "-k", 20)
    assert len(both) == 10
    assert {4, 7}.isdisjoint(h["id"] for h in both)


def test_search_filter_exclude_dedupe(indexed) -> None:
    col, _ = indexed
    rare = search_json(col, "--text", "x", "--filter", "split=rare")
    assert sorted(h["metadata"]["n"] for h in rare) == [0, 4, 8]
    exact = search_json(col, "--text", "x", "--filter", "n=7", "--filter", "split=common")
    assert [h["metadata"]["n"] for h in exact] == [7]  # "7" was read as a number
    ranked = [h["id"] for h in search_json(col, "--text", "x", "-k", 5)]
    rest = search_json(col, "--text", "x", "-k", 3, "--exclude-id", ranked[0], "--exclude-id", 99)
    assert [h["id"] for h in rest] == ranked[1:4]
    deduped = [h["id"] for h in search_json(col, "--text", "x", "-k", 5, "--dedupe", "0.99")]
    assert deduped[0] == ranked[0]
    with Collection.open(col) as library:
        vectors = library.vectors(deduped)
    assert (np.triu(vectors @ vectors.T, 1) < 0.99).all()


def test_search_by_vector(indexed, tmp_path: Path) -> None:
    col, _ = indexed
    with Collection.open(col) as library:
        vector = library.vectors([6])[0]
    listed = search_json(col, "--vector", ",".join(f"{x:.8f}" for x in vector), "-k", 1)
    assert listed[0]["id"] == 6
    np.save(tmp_path / "query.npy", vector)
    assert search_json(col, "--vector", tmp_path / "query.npy", "-k", 1)[0]["id"] == 6
    (tmp_path / "query.json").write_text(json.dumps(vector.tolist()), encoding="utf-8")
    assert search_json(col, "--vector", tmp_path / "query.json", "-k", 1)[0]["id"] == 6


def test_search_by_url(indexed, http_root, monkeypatch, capsys) -> None:
    col, files = indexed
    served, base = http_root
    shutil.copy(files[9], served / "cli-query.png")
    url = f"{base}/cli-query.png"
    hits = search_json(col, "--url", url, "--allow-private-urls", "-k", 1)
    assert hits[0]["path"] == str(files[9].resolve())
    code, _, err = run_main(monkeypatch, capsys, "search", col, "--url", url)
    assert code == 1
    one_line_error(err, "loopback")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-k", "0", "--text", "x"], "k must be"),
        (["-k", "1000000000", "--text", "x"], "k must be"),
        ([], "give a query"),
        (["--vector", "1,2,3"], "32-d"),
        (["--vector", "a,b"], "comma-separated"),
        (["--filter", "split", "--text", "x"], "KEY=VALUE"),
        (["--id", "999"], "no image with id 999"),
        (["--image", "/no/such/file.png"], "/no/such/file.png"),
    ],
)
def test_search_errors_are_one_line(indexed, monkeypatch, capsys, args, needle) -> None:
    col, _ = indexed
    code, out, err = run_main(monkeypatch, capsys, "search", col, *args)
    assert code == 1
    assert out == ""
    one_line_error(err, needle)


def test_not_a_collection(tmp_path: Path, monkeypatch, capsys) -> None:
    for command in (["info"], ["search", "--text", "x"], ["remove", "--id", "1"]):
        code, _, err = run_main(monkeypatch, capsys, command[0], tmp_path, *command[1:])
        assert code == 1
        one_line_error(err, "not a lookalike collection")


def test_index_again_then_remove(tiny_clip, tmp_path: Path, monkeypatch, capsys) -> None:
    files = write_images(tmp_path / "imgs", 6)
    col = tmp_path / "col"
    assert invoke("index", tmp_path / "imgs", "-c", col, *model_args(tiny_clip)).exit_code == 0
    again = invoke("index", tmp_path / "imgs", "-c", col, "--workers", "0", "--json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["added"], summary["unchanged"], summary["failed"]) == (0, 6, [])

    removed = invoke("remove", col, "--path", files[0], "--id", "3")
    assert removed.exit_code == 0, removed.output
    assert removed.stdout.strip() == "removed 2"
    assert json.loads(invoke("info", col, "--json").stdout)["count"] == 4
    ids = {h["id"] for h in search_json(col, "--text", "x")}
    assert ids == {1, 2, 4, 5}

    code, _, err = run_main(monkeypatch, capsys, "remove", col, "--path", tmp_path / "nope.png")
    assert code == 1
    one_line_error(err, "nope.png")
    code, _, err = run_main(monkeypatch, capsys, "remove", col, "--id", "4", "--id", "77")
    assert code == 1  # an unknown id is named, and nothing is removed
    one_line_error(err, "77")
    assert json.loads(invoke("info", col, "--json").stdout)["count"] == 4

    # a removed image stays removed when its folder is indexed again, until its file changes
    again = json.loads(invoke("index", tmp_path / "imgs", "-c", col, "--json").stdout)
    assert (again["added"], again["removed"], again["unchanged"]) == (0, 2, 4)
    plain = invoke("index", tmp_path / "imgs", "-c", col)
    assert "skipped 2 images removed earlier" in plain.stdout
    files[0].write_bytes(encode(draw_image(99, (40, 30))))
    changed = json.loads(invoke("index", tmp_path / "imgs", "-c", col, "--json").stdout)
    assert (changed["added"], changed["removed"]) == (1, 1)
    back = invoke("index", tmp_path / "imgs", "-c", col, "--include-removed", "--json")
    assert json.loads(back.stdout)["added"] == 1
    assert json.loads(invoke("info", col, "--json").stdout)["count"] == 6
    code, _, err = run_main(monkeypatch, capsys, "remove", col)
    assert code == 1
    one_line_error(err, "--id or --path")
    code, _, err = run_main(
        monkeypatch, capsys, "index", tmp_path / "imgs", "-c", col, "--model", "open_clip:RN50"
    )
    assert code == 1
    one_line_error(err, "open_clip:RN50")


def test_a_full_disk_is_one_line_and_keeps_what_was_committed(
    tiny_clip, tmp_path: Path, monkeypatch, capsys
) -> None:
    write_images(tmp_path / "imgs", 6)
    col = tmp_path / "col"
    Collection.create(col, tiny_clip[0], weights=tiny_clip[1]).close()
    (col / "vectors" / "00000.f32").symlink_to("/dev/full")  # every write: ENOSPC
    code, _, err = run_main(monkeypatch, capsys, "index", tmp_path / "imgs", "-c", col)
    assert code == 1
    one_line_error(err, "No space left on device", "free some space")
    with Collection.open(col) as opened:
        assert len(opened) == 0


def test_a_missing_vector_shard_is_reported_not_a_traceback(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    col = tmp_path / "col"
    with Collection.create(col, "vectors:4") as made:
        made.add_vectors(np.eye(4), [f"https://example.com/{i}" for i in range(4)])
    (col / "vectors" / "00000.f32").unlink()
    code, out, err = run_main(monkeypatch, capsys, "search", col, "--vector", "1,0,0,0")
    assert (code, "Traceback" in err) == (0, False)
    code, _, err = run_main(monkeypatch, capsys, "remove", col, "--id", "1")
    assert code == 1
    one_line_error(err, "lack the vectors of 4 committed rows", "verify --repair")
    code, out, err = run_main(monkeypatch, capsys, "verify", col)
    assert code == 1 and "Traceback" not in err
    assert "ids 0..3" in out


def test_index_reports_broken_files_and_strict_stops(
    tiny_clip, tmp_path: Path, monkeypatch, capsys
) -> None:
    folder = tmp_path / "mixed"
    write_images(folder, 3)
    (folder / "q_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    (folder / "r_empty.png").write_bytes(b"")
    code, out, err = run_main(
        monkeypatch, capsys, "index", folder, "-c", tmp_path / "col", *model_args(tiny_clip)
    )
    assert code == 0
    assert "added 3" in out and "failed 2" in out
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2
    assert "q_broken.jpg" in skipped[0]
    assert "r_empty.png" in skipped[1] and "empty" in skipped[1]

    code, out, err = run_main(
        monkeypatch,
        capsys,
        "index",
        folder,
        "-c",
        tmp_path / "strict",
        "--strict",
        *model_args(tiny_clip),
    )
    assert code == 1
    one_line_error(err, str(folder.resolve() / "q_broken.jpg"))


def test_index_urls_need_allow_private(tiny_clip, tmp_path: Path, http_root) -> None:
    served, base = http_root
    served.joinpath("cli-index.png").write_bytes(encode(draw_image(5, (30, 30))))
    url = f"{base}/cli-index.png"
    refused = invoke("index", url, "-c", tmp_path / "col", *model_args(tiny_clip))
    assert refused.exit_code == 0, refused.output
    assert "added 0" in refused.stdout and "failed 1" in refused.stdout
    assert f"skipped {url}" in refused.stderr and "loopback" in refused.stderr
    allowed = invoke("index", url, "-c", tmp_path / "col", "--workers", "0", "--allow-private-urls")
    assert allowed.exit_code == 0, allowed.output
    assert "added 1" in allowed.stdout
    hits = search_json(tmp_path / "col", "--text", "x")
    assert [(h["url"], h["path"]) for h in hits] == [(url, None)]


def test_text_query_on_image_only_collection_end_to_end(backbone_weights, tmp_path: Path) -> None:
    with Collection.create(
        tmp_path / "col", "torchvision:mobilenet_v2", weights=backbone_weights("mobilenet_v2")
    ) as col:
        col.add_images([encode(draw_image(1, (40, 40)))])
    done = subprocess.run(
        [sys.executable, "-m", "lookalike", "search", str(tmp_path / "col"), "--text", "a cat"],
        capture_output=True,
        text=True,
        timeout=120,
        encoding="utf-8",
    )
    assert done.returncode == 1
    assert done.stdout == ""
    one_line_error(done.stderr, "image-only", "torchvision:mobilenet_v2")


def test_default_model_offline_fails_fast_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_images(tmp_path / "imgs", 2)
    import open_clip  # noqa: F401 -- imported already, so the timing below is the failure's own

    started = time.monotonic()
    code, out, err = run_main(monkeypatch, capsys, "index", tmp_path / "imgs", "-c", tmp_path / "c")
    assert time.monotonic() - started < 5  # not a minute of retries
    assert code == 1 and out == ""
    one_line_error(err, "HF_HUB_OFFLINE", "--weights FILE", "lookalike demo")
    assert not (tmp_path / "c").exists()


def test_a_missing_source_fails_before_the_model_loads(tmp_path: Path, monkeypatch, capsys) -> None:
    # a model that cannot load: its error would come first if the model loaded first
    code, _, err = run_main(
        monkeypatch, capsys, "index", tmp_path / "typo", "-c", tmp_path / "new",
        "--model", "open_clip:no-such-arch/tag",
    )  # fmt: skip
    assert code == 1
    one_line_error(err, str(tmp_path / "typo"), "does not exist")
    assert not (tmp_path / "new").exists()


def test_a_failed_first_ingest_leaves_no_collection_behind(
    tiny_clip, tmp_path: Path, monkeypatch, capsys
) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    args = ["index", folder, "--strict", *model_args(tiny_clip)]
    code, _, err = run_main(monkeypatch, capsys, *args, "-c", tmp_path / "new")
    assert code == 1
    one_line_error(err, "a_broken.jpg")
    assert not (tmp_path / "new").exists()
    # a collection that was there before the command stays, even when nothing was added
    write_images(tmp_path / "good", 1)
    assert invoke("index", tmp_path / "good", "-c", tmp_path / "kept", *model_args(tiny_clip))
    code, _, err = run_main(monkeypatch, capsys, *args, "-c", tmp_path / "kept")
    assert code == 1
    assert json.loads(invoke("info", tmp_path / "kept", "--json").stdout)["count"] == 1


def test_serve_refuses_a_folder_before_announcing(tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, err = run_main(monkeypatch, capsys, "serve", tmp_path, "--port", "1")
    assert code == 1 and out == ""
    one_line_error(err, "not a lookalike collection", "lookalike index SOURCES -c")
    assert "serving" not in err


def test_errors_name_cli_commands_not_library_calls(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_main(monkeypatch, capsys, "info", tmp_path)
    assert code == 1
    one_line_error(err, f"lookalike index SOURCES -c {tmp_path}")
    assert "Collection.create" not in err


def test_an_empty_result_says_why(indexed, tiny_clip, tmp_path: Path) -> None:
    col, _ = indexed

    def no_results(*args: object) -> str:
        result = invoke("search", *args)
        assert result.exit_code == 0, result.output
        assert "rank" not in result.stdout  # no bare table header
        assert result.stdout.startswith("no results: ")
        return result.stdout

    typo = no_results(col, "--text", "x", "--filter", "split==rare")
    assert "did you mean --filter split=rare?" in typo and "keys: n, split" in typo
    unknown = no_results(col, "--text", "x", "--filter", "colour=red")
    assert "no image has the metadata key colour (keys: n, split)" in unknown
    assert (
        json.loads(invoke("search", col, "--text", "x", "--filter", "n=99", "--json").stdout) == []
    )
    spec, weights = tiny_clip
    Collection.create(tmp_path / "empty", spec, weights=weights).close()
    assert "holds no images" in no_results(tmp_path / "empty", "--text", "x")


def test_a_broken_query_image_is_named(indexed, tmp_path: Path, monkeypatch, capsys) -> None:
    col, _ = indexed
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, out, err = run_main(monkeypatch, capsys, "search", col, "--image", broken)
    assert code == 1 and out == ""
    one_line_error(err, str(broken))


def test_progress_reports_every_image_up_to_the_total(tiny_clip, tmp_path: Path) -> None:
    """The library's progress= callback: monotone, reaches the total, a rate above zero."""
    write_images(tmp_path / "imgs", 10)
    seen: list[tuple[int, float]] = []
    with Collection.create(tmp_path / "col", tiny_clip[0], weights=tiny_clip[1]) as col:
        report = col.add(
            tmp_path / "imgs",
            progress=lambda r: seen.append((r.seen, r.images_per_second)),
            batch_size=4,  # 10 images: two full batches and a partial one
            workers=0,
        )
    counts = [count for count, _ in seen]
    assert counts == sorted(counts)
    assert counts[-1] == report.seen == 10
    assert seen[-1][1] > 0


def test_decoding_default_follows_the_encoder_device() -> None:
    from types import SimpleNamespace

    from lookalike.ingest import IngestOptions, default_workers

    assert IngestOptions().workers is None  # chosen per encoder
    assert IngestOptions().threads == max(1, min(8, os.cpu_count() or 1))
    assert default_workers(SimpleNamespace(device="cpu")) == 0  # threads take turns with it
    beside_gpu = default_workers(SimpleNamespace(device="cuda:0"))
    assert beside_gpu == max(1, min(8, (os.cpu_count() or 2) - 1))


def demo_results(tiny_clip, workdir: Path, monkeypatch, capsys) -> list[str]:
    """The result lines of one fresh offline demo run on the tiny architecture."""
    from lookalike import demo

    demo.run(workdir, per_kind=1, fallback_arch="lookalike-tiny")
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed and "{" not in printed  # prose, not a JSON dump
    assert "more like #0 (red-circle-0000.jpg), only stripes" in printed
    rows = [
        line for line in printed.splitlines() if re.match(r"\s+\d+\s+-?\d\.\d{3}\s+\S+\.jpg", line)
    ]
    assert len(rows) == 15  # three searches, five results each
    return rows


def test_demo_gives_the_same_results_on_every_fresh_run(
    tiny_clip, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the default model is not cached: random weights
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    first = demo_results(tiny_clip, tmp_path / "one", monkeypatch, capsys)
    second = demo_results(tiny_clip, tmp_path / "two", monkeypatch, capsys)
    assert first == second


ASCII_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "", "COLUMNS": "500"}


def run_cli(*args: object, **env: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m lookalike ARGS`` in a process of its own, with ``env`` added."""
    return subprocess.run(
        [sys.executable, "-m", "lookalike", *map(str, args)],
        capture_output=True,
        timeout=180,
        env={**os.environ, **env},
    )


def test_an_ascii_locale_prints_accented_paths_as_escapes(tiny_clip, tmp_path: Path) -> None:
    accented = os.path.join(os.fsencode(tmp_path), b"caf\xc3\xa9")
    os.mkdir(accented)
    for i in range(3):
        with open(os.path.join(accented, b"p%d.png" % i), "wb") as image:
            image.write(encode(draw_image(i, (40, 36))))
    args = ("-c", tmp_path / "col", *model_args(tiny_clip))
    made = run_cli("index", os.fsdecode(accented), *args, PYTHONUTF8="1")
    assert made.returncode == 0, made.stderr.decode(errors="replace")
    done = run_cli("search", tmp_path / "col", "--id", "0", **ASCII_LOCALE)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"caf\\xe9" in done.stdout, done.stdout
    as_json = run_cli("search", tmp_path / "col", "--id", "0", "--json", **ASCII_LOCALE)
    assert as_json.returncode == 0, as_json.stderr.decode(errors="replace")
    assert all("/café/" in hit["path"] for hit in json.loads(as_json.stdout))


def test_an_ascii_locale_skips_names_it_cannot_decode(tiny_clip, tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 1)
    undecodable = os.path.join(os.fsencode(tmp_path), b"imgs/\xc3\xa9.png")  # in ASCII
    os.rename(os.fsencode(tmp_path / "imgs" / "p000.png"), undecodable)
    write_images(tmp_path / "imgs", 1, start=1)
    args = ("-c", tmp_path / "col", *model_args(tiny_clip))
    done = run_cli("index", tmp_path / "imgs", *args, **ASCII_LOCALE)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"added 1," in done.stdout and b"failed 1" in done.stdout
    assert b"Traceback" not in done.stderr and b"PYTHONUTF8=1" in done.stderr
    assert b"\\xc3" not in done.stderr  # shown as UTF-8 would, escaped: \xe9
    assert b"\\xe9.png" in done.stderr
