"""Tags and exports from the command line."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lookalike import Collection
from lookalike.cli import app, main

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def col(tmp_path: Path) -> Path:
    vectors = np.random.default_rng(4).normal(size=(20, 8)).astype(np.float32)
    with Collection.create(tmp_path / "col", "vectors:8") as made:
        made.add_vectors(vectors, [f"https://example.com/{i}.jpg" for i in range(20)])
    return tmp_path / "col"


def test_tag_from_search_results_then_search_without_them(col: Path, tmp_path: Path) -> None:
    results = invoke("search", col, "--id", 0, "-k", 5, "--json")
    assert results.exit_code == 0, results.output
    (tmp_path / "results.json").write_text(results.stdout, encoding="utf-8")
    tagged = invoke("tag", col, "label:police car", "--from", tmp_path / "results.json", "--id", 19)
    assert tagged.exit_code == 0 and "tagged 6 of 6" in tagged.stdout
    counts = json.loads(invoke("tags", col, "--json").stdout)
    assert counts == {"label:police car": 6}
    assert invoke("tags", col, "--id", 19).stdout.strip() == "label:police car"
    rest = json.loads(
        invoke(
            "search", col, "--id", 0, "-k", 20, "--exclude-tag", "label:police car", "--json"
        ).stdout
    )
    assert len(rest) == 13  # 20, less the query and 6 tagged
    only = invoke("search", col, "--id", 0, "-k", 20, "--with-tag", "label:police car", "--json")
    assert len(json.loads(only.stdout)) == 6
    untagged = invoke("untag", col, "label:police car", "--id", 19)
    assert "untagged 1 of 1" in untagged.stdout
    assert "5  label:police car" in invoke("tags", col).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tag", "labeled", "--id", 99), "no image with id 99"),
        (("tag", "bad\ttag", "--id", 1), "control character"),
        (("tag", "labeled"), "give --id or --from"),
        (("tag", "labeled", "--from", "missing.json"), "cannot read"),
        (("search", "--id", 0, "-k", 10001), "k must be an integer from 1 to 10000"),
        (("export", "--id", 0, "--out", "x", "--format", "pdf"), "unknown export format 'pdf'"),
        (("export", "--id", 0, "--out", "x", "-k", 1_000_001), "-k must be from 1 to 1,000,000"),
        (("export", "--id", 0, "--out", "/proc/nope/x.json", "--format", "json"), "no such folder"),
    ],
)
def test_bad_input_gets_one_clear_line(
    col: Path, args: tuple, message: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    command, *rest = args
    monkeypatch.setattr(sys, "argv", ["lookalike", command, str(col), *map(str, rest)])
    with pytest.raises(SystemExit) as ended:
        main()
    stderr = capsys.readouterr().err
    assert ended.value.code == 1
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_export_cvat_tags_the_batch(col: Path, tmp_path: Path) -> None:
    result = invoke(
        "export",
        col,
        "--id",
        0,
        "-k",
        8,
        "--format",
        "cvat",
        "--out",
        tmp_path / "cvat",
        "--labels",
        "police car,other",
        "--tag",
        "exported:batch-3",
    )
    assert result.exit_code == 0, result.output
    assert "exported 8 (cvat)" in result.stdout and "tagged 8" in result.stdout
    root = ET.parse(tmp_path / "cvat" / "annotations.xml").getroot()
    assert len(root.findall("image")) == 8
    again = invoke(
        "export",
        col,
        "--id",
        0,
        "-k",
        20,
        "--format",
        "json",
        "--out",
        tmp_path / "next.json",
        "--exclude-tag",
        "exported:batch-3",
        "--json",
    )
    report = json.loads(again.stdout)
    assert report["written"] == 11  # 19 others, 8 already exported
    assert len(json.loads((tmp_path / "next.json").read_text(encoding="utf-8"))) == 11


def test_export_takes_the_feedback_and_diversity_options(col: Path, tmp_path: Path) -> None:
    out = tmp_path / "marked.json"
    done = invoke(
        "export", col, "--relevant", 1, "--relevant", 2, "--irrelevant", 7, "--diverse", 0.3,
        "-k", 6, "--format", "json", "--out", out,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    ids = [row["id"] for row in json.loads(out.read_text(encoding="utf-8"))]
    assert len(ids) == 6 and not {1, 2, 7} & set(ids)  # marked ids never come back
    with Collection.open(col) as opened:
        same = opened.search(relevant=[1, 2], irrelevant=[7], diverse=0.3, k=6)
    assert ids == [h.id for h in same]
    bad = invoke("export", col, "--relevant", 1, "--diverse", 2, "--format", "json", "--out", out)
    assert bad.exit_code != 0 and "diverse" in str(bad.exception)
