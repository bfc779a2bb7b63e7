"""The model cache: keyed by weights content, bounded in size, listed and cleared by the CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.encoders import cache, load_encoder
from lookalike.encoders import onnx as onnx_runtime

pytest.importorskip("onnxruntime")

runner = CliRunner()


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("LOOKALIKE_CACHE", str(folder))
    monkeypatch.delenv(cache.MAX_BYTES_ENV, raising=False)
    return folder


def count_exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    exports: list[str] = []
    real = onnx_runtime._export_tower
    monkeypatch.setattr(
        onnx_runtime,
        "_export_tower",
        lambda ref, tower, folder: exports.append(tower) or real(ref, tower, folder),
    )
    return exports


def cache_info() -> dict:
    result = runner.invoke(app, ["cache", "info", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_copy_of_the_weights_reuses_the_export(tiny_clip, fresh_cache, tmp_path, monkeypatch):
    spec, weights = tiny_clip
    exports = count_exports(monkeypatch)
    first = load_encoder(spec, weights, runtime="onnx").encode_texts(["a cat"])
    copy = tmp_path / "elsewhere" / "same.pt"
    copy.parent.mkdir()
    copy.write_bytes(weights.read_bytes())
    again = load_encoder(spec, copy, runtime="onnx").encode_texts(["a cat"])
    assert exports == ["text"]
    np.testing.assert_allclose(again, first, atol=1e-6)
    entries = cache_info()["entries"]
    assert [e["what"] for e in entries if "optimized" not in e["what"]] == [f"{spec} text onnx"]


def test_weights_are_hashed_once_per_path_size_and_mtime(tiny_clip, fresh_cache) -> None:
    weights = tiny_clip[1]
    digest = cache.file_digest(weights)
    (remembered,) = (fresh_cache / "hashes").iterdir()
    remembered.write_text(
        "f" * 64, encoding="utf-8"
    )  # what is remembered is used: the file is not read again
    assert cache.file_digest(weights) == "f" * 64
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: hashed again
    try:
        assert cache.file_digest(weights) == digest
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_the_least_recently_used_entries_go_past_the_bound(
    tiny_clip, fresh_cache, tmp_path, monkeypatch
) -> None:
    spec, weights = tiny_clip
    load_encoder(spec, weights, runtime="onnx").encode_texts(["a cat"])
    old = {e["key"] for e in cache_info()["entries"]}
    total = cache_info()["total_bytes"]
    other = tmp_path / "other.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 1  # other weights: new exports
    other.write_bytes(bytes(data))
    monkeypatch.setenv(cache.MAX_BYTES_ENV, str(total))  # room for one model's entries
    load_encoder(spec, other, runtime="onnx").encode_texts(["a cat"])
    info = cache_info()
    assert info["max_bytes"] == total >= info["total_bytes"]
    assert old.isdisjoint(e["key"] for e in info["entries"])  # the older model's went first
    assert info["entries"]


def test_cache_info_and_clear(tiny_clip, fresh_cache) -> None:
    load_encoder(*tiny_clip, runtime="onnx").encode_texts(["a cat"])
    text = runner.invoke(app, ["cache", "info"])
    assert text.exit_code == 0, text.output
    assert f"cache: {fresh_cache}" in text.stdout
    info = cache_info()
    assert info["path"] == str(fresh_cache) and info["entries"]
    assert info["total_bytes"] == sum(e["bytes"] for e in info["entries"]) > 0
    assert f"{len(info['entries'])} entries" in text.stdout

    kept = runner.invoke(app, ["cache", "clear", "--older-than", "1d"])
    assert kept.exit_code == 0 and kept.stdout.startswith("removed 0 entries")
    stale = info["entries"][0]["key"]
    month_ago = time.time() - 30 * 86400
    os.utime(cache.entry_path(stale), (month_ago, month_ago))
    aged = runner.invoke(app, ["cache", "clear", "--older-than", "7d"])
    assert aged.stdout.startswith("removed 1 entries")
    assert stale not in {e["key"] for e in cache_info()["entries"]}
    bad = runner.invoke(app, ["cache", "clear", "--older-than", "soon"])
    assert bad.exit_code != 0
    everything = runner.invoke(app, ["cache", "clear"])
    assert everything.exit_code == 0
    assert cache_info()["entries"] == []
