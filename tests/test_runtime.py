"""Encoder runtimes: ONNX exports agree with torch, short texts run short, the cache holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import encode
from lookalike import BadInputError, Collection
from lookalike.demo import draw_image
from lookalike.encoders import Encoder, load_encoder
from lookalike.encoders import onnx as onnx_runtime
from lookalike.encoders.cache import entry_path
from lookalike.encoders.runtime import AUTO_CPU, resolve_runtime

pytest.importorskip("onnxruntime")

TEXTS = ["a", "a dog riding a bicycle in the park at night", "police car", "a red circle"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One export cache for the module: each variant of the tiny model is exported once."""
    folder = tmp_path_factory.mktemp("runtime-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOOKALIKE_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def torch_encoder(tiny_clip) -> Encoder:
    return load_encoder(*tiny_clip, "cpu", runtime="torch")


def images(count: int = 6, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def least_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


@pytest.mark.parametrize(
    ("runtime", "minimum"), [("onnx", 0.9999), ("openvino", 0.9999), ("onnx-int8", 0.99)]
)
def test_export_agrees_with_torch(tiny_clip, cache_dir, torch_encoder, runtime, minimum) -> None:
    encoder = load_encoder(*tiny_clip, "cpu", runtime=runtime)
    assert isinstance(encoder, onnx_runtime.OnnxEncoder)
    assert isinstance(encoder, Encoder)
    assert (encoder.spec, encoder.dim, encoder.image_size) == (torch_encoder.spec, 32, 32)
    batch = images()
    got = encoder.encode_images(batch)
    assert got.dtype == np.float32 and got.shape == (6, 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert least_cosine(got, torch_encoder.encode_images(batch)) >= minimum
    # any batch size (int8 quantizes activations per batch, so its vectors vary a little)
    assert least_cosine(encoder.encode_images(batch[:1]), got[:1]) >= minimum
    texts = encoder.encode_texts(TEXTS)
    assert texts.dtype == np.float32 and texts.shape == (4, 32)
    assert least_cosine(texts, torch_encoder.encode_texts(TEXTS)) >= minimum


def test_trimmed_texts_equal_padded(tiny_clip, cache_dir, torch_encoder) -> None:
    tokens = torch_encoder.tokenizer(TEXTS)
    trimmed = torch_encoder.text_tower.trim(tokens)
    # the longest text's end-of-text token is the last column kept
    assert trimmed.shape[1] == int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1]
    with torch.inference_mode():
        padded = torch.nn.functional.normalize(torch_encoder.model.encode_text(tokens), dim=-1)
    padded_np = padded.numpy()
    assert least_cosine(torch_encoder.encode_texts(TEXTS), padded_np) >= 0.99999
    # one text alone runs at its own length and still equals its padded run
    alone = torch_encoder.encode_texts(["a"])
    assert least_cosine(alone, padded_np[:1]) >= 0.99999
    exported = load_encoder(*tiny_clip, "cpu", runtime="onnx")
    assert least_cosine(exported.encode_texts(TEXTS), padded_np) >= 0.9999


def test_repeated_texts_hit_the_cache(tiny_clip, cache_dir) -> None:
    encoder = load_encoder(*tiny_clip, "cpu", runtime="onnx")
    first = encoder.encode_texts(["a cat", "a dog"])
    misses = encoder.text_cache.misses
    again = encoder.encode_texts(["a dog", "a cat", "a dog"])
    assert encoder.text_cache.misses == misses
    np.testing.assert_array_equal(again, first[[1, 0, 1]])
    again[0] = 0  # callers get their own copy
    np.testing.assert_array_equal(encoder.encode_texts(["a dog"])[0], first[1])


def test_export_is_cached_and_rebuilt_when_corrupt(tiny_clip, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path))
    exports: list[str] = []
    real_export = onnx_runtime._export_tower
    monkeypatch.setattr(
        onnx_runtime,
        "_export_tower",
        lambda ref, tower, folder: exports.append(tower) or real_export(ref, tower, folder),
    )
    first = load_encoder(*tiny_clip, "cpu", runtime="onnx")
    expected = first.encode_texts(TEXTS)
    assert exports == ["text"]  # a text query exports the text tower only
    folder = entry_path(first._files.key("text"))
    assert folder.parent.parent == tmp_path
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    second = load_encoder(*tiny_clip, "cpu", runtime="onnx")
    np.testing.assert_allclose(second.encode_texts(TEXTS), expected, atol=1e-6)
    assert exports == ["text"]  # no new export
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary leftovers

    # same size, garbage content: found when the session opens, rebuilt then
    text_file = folder / "text.onnx"
    text_file.write_bytes(os.urandom(text_file.stat().st_size))
    third = load_encoder(*tiny_clip, "cpu", runtime="onnx")
    np.testing.assert_allclose(third.encode_texts(TEXTS), expected, atol=1e-6)
    assert exports == ["text", "text"]

    # truncated: found on open
    reference = first.encode_images(images())
    assert exports == ["text", "text", "image"]
    (entry_path(first._files.key("image")) / "image.onnx").write_bytes(b"\0" * 10)
    fourth = load_encoder(*tiny_clip, "cpu", runtime="onnx")
    np.testing.assert_allclose(fourth.encode_images(images()), reference, atol=1e-6)
    assert exports == ["text", "text", "image", "image"]


def test_a_cached_tower_runs_without_torch(tiny_clip, tmp_path, monkeypatch) -> None:
    """A text query on a cached export imports neither torch nor open_clip (seconds each)."""
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path))
    script = (
        "import sys; from lookalike.encoders import load_encoder\n"
        f"e = load_encoder({tiny_clip[0]!r}, {str(tiny_clip[1])!r}, runtime=sys.argv[1])\n"
        "v = e.encode_texts(['a red circle'])\n"
        "print(v.shape[1], 'torch' in sys.modules, 'open_clip' in sys.modules)\n"
    )
    for runtime in ("onnx", "openvino"):
        load_encoder(*tiny_clip, "cpu", runtime=runtime).encode_texts(["warm"])  # warm cache
        done = subprocess.run(
            [sys.executable, "-c", script, runtime],
            capture_output=True,
            text=True,
            timeout=120,
            encoding="utf-8",
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["32", "False", "False"], (runtime, done.stdout)
    towers = {
        json.loads(p.read_text(encoding="utf-8"))["tower"]
        for p in tmp_path.glob("runtime/*/meta.json")
    }
    assert towers == {"text"}  # text queries never exported nor checked the image tower


def test_the_torch_free_tokenizer_gives_open_clips_tokens(tiny_clip) -> None:
    import open_clip

    from lookalike.encoders.tokenizer import ClipTokenizer, open_clip_vocab

    reference = open_clip.get_tokenizer("ViT-B-32")
    ours = ClipTokenizer(open_clip_vocab())
    texts = [
        *onnx_runtime.TOKENIZER_PROBES,
        "",
        "I'll say it's   WHAT's what",
        "&lt;b&gt;bold&lt;/b&gt; &amp;amp; 3.14159 x²",
        "émoji 👮‍♀️ and ﬁ ligature",
    ]
    np.testing.assert_array_equal(ours(texts), reference(texts).numpy())


def test_a_copy_of_the_weights_shares_the_export_and_a_change_gets_a_new_one(
    tiny_clip, tmp_path
) -> None:
    spec, weights = tiny_clip
    name = spec.partition(":")[2]
    copy = tmp_path / "copy.pt"
    copy.write_bytes(weights.read_bytes())
    original = {
        onnx_runtime.ModelFiles(name, weights, v).key("text") for v in onnx_runtime.VARIANTS
    }
    copied = {onnx_runtime.ModelFiles(name, copy, v).key("text") for v in onnx_runtime.VARIANTS}
    assert len(original) == len(onnx_runtime.VARIANTS) and copied == original  # by content
    os.utime(copy, ns=(0, 0))  # touched, same bytes: same key (hashed again)
    assert onnx_runtime.ModelFiles(name, copy, "onnx").key("text") in original
    data = bytearray(copy.read_bytes())
    data[-100] ^= 1
    copy.write_bytes(bytes(data))
    assert onnx_runtime.ModelFiles(name, copy, "onnx").key("text") not in original


def test_collection_on_onnx_searches_like_torch(tiny_clip, cache_dir, tmp_path) -> None:
    spec, weights = tiny_clip
    pictures = [encode(draw_image(seed, (48, 40))) for seed in range(12)]
    results = {}
    for runtime in ("torch", "onnx"):
        col = Collection.create(tmp_path / runtime, spec, weights=weights, runtime=runtime)
        col.add_images(pictures)
        results[runtime] = col
    reopened = Collection.open(tmp_path / "torch", runtime="onnx")
    assert isinstance(reopened.encoder, onnx_runtime.OnnxEncoder)
    for query in ({"text": "a red circle"}, {"image": pictures[3]}, {"id": 5}):
        ranked = [[h.id for h in col.search(**query, k=5)] for col in results.values()]
        assert ranked[0] == ranked[1]
        assert [h.id for h in reopened.search(**query, k=5)] == ranked[0]
    np.testing.assert_allclose(
        results["onnx"].vectors(list(range(12))),
        results["torch"].vectors(list(range(12))),
        atol=1e-4,
    )


def test_runtime_choice(backbone_weights) -> None:
    assert resolve_runtime("auto", "cpu") == [*AUTO_CPU, "torch"]
    assert resolve_runtime("torch", "cpu") == ["torch"]
    with pytest.raises(BadInputError, match="unknown runtime"):
        resolve_runtime("tensorrt", "cpu")
    with pytest.raises(BadInputError, match="torch only"):
        load_encoder("torchvision:mobilenet_v2", backbone_weights("mobilenet_v2"), runtime="onnx")


def test_openvino_is_checked_once_and_refused_below_the_float32_bar(
    tiny_clip, tmp_path, monkeypatch, caplog
) -> None:
    from lookalike.encoders import int8
    from lookalike.encoders import openvino as openvino_runtime

    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path))
    first = load_encoder(*tiny_clip, "cpu", runtime="openvino")
    assert isinstance(first, openvino_runtime.OpenVinoEncoder) and first.runtime == "openvino"
    first.encode_texts(["a cat"])
    checks = [
        json.loads(p.read_text(encoding="utf-8"))
        for p in (tmp_path / "runtime").glob("*/meta.json")
    ]
    # the float32 text export, ONNX Runtime's optimized copy is not made, the engine's check
    assert sorted(str(c.get("precision", c.get("variant"))) for c in checks) == sorted(
        ["onnx", f"openvino {first.precision}"]
    )
    assert all(c["tower"] == "text" for c in checks)
    # a model whose vectors miss the bar: refused when asked for, run on ONNX Runtime by auto
    monkeypatch.setattr(openvino_runtime, "MIN_AGREEMENT", 1.5)
    monkeypatch.setattr(openvino_runtime, "CHECK_FORMAT", 99)  # a new check, not the cached one
    monkeypatch.setattr(int8, "MIN_AGREEMENT", 1.5)  # auto's first choice, passed on too
    with pytest.raises(onnx_runtime.ExportError, match="agrees with the float32 export"):
        load_encoder(*tiny_clip, "cpu", runtime="openvino").encode_texts(["a cat"])
    fallback = load_encoder(*tiny_clip, "cpu", runtime="auto")
    np.testing.assert_allclose(
        fallback.encode_texts(["a cat"]), first.encode_texts(["a cat"]), atol=1e-2
    )
    assert "running the text tower on ONNX Runtime instead" in caplog.text


def _checks(cache: Path) -> list[dict]:
    """The engines' check entries in a cache: what ran and the cosine it measured."""
    metas = [
        json.loads(p.read_text(encoding="utf-8")) for p in (cache / "runtime").glob("*/meta.json")
    ]
    return [m for m in metas if "agreement" in m and "precision" in m]


@pytest.mark.parametrize(
    ("flags", "engine"),
    [("fpu sse4_2 avx avx2 fma", "onnxruntime"), ("avx2 avx512f avx512bw avx512_vnni", "openvino")],
)
def test_auto_runs_checked_int8_on_a_cpu_without_bf16(
    tiny_clip, torch_encoder, tmp_path, monkeypatch, flags, engine
) -> None:
    from lookalike.encoders.int8 import Int8Encoder

    if engine == "openvino":
        pytest.importorskip("openvino")
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path))
    monkeypatch.setenv("LOOKALIKE_CPU_FLAGS", flags)  # acts as that CPU
    encoder = load_encoder(*tiny_clip, "cpu", runtime="auto")
    assert isinstance(encoder, Int8Encoder)
    assert (encoder.runtime, encoder.engine) == ("int8", engine)
    batch = images()
    # the bar holds on the check batch; inputs seen by neither calibration nor check stay close
    assert least_cosine(encoder.encode_images(batch), torch_encoder.encode_images(batch)) >= 0.998
    assert least_cosine(encoder.encode_texts(TEXTS), torch_encoder.encode_texts(TEXTS)) >= 0.998
    # checked once per tower, the engine and its cosine kept in the cache entry
    checks = _checks(tmp_path)
    assert sorted(c["tower"] for c in checks) == ["image", "text"]
    assert all(c["runtime"] == "int8" and c["engine"] == engine for c in checks)
    assert all(c["agreement"][c["tower"]] >= 0.999 for c in checks)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runtime").glob("*/meta.json")}
    again = load_encoder(*tiny_clip, "cpu", runtime="auto")
    again.encode_images(batch[:2])
    again.encode_texts(["a cat"])
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runtime").glob("*/meta.json")} == stamps


def test_int8_below_the_bar_is_refused_or_passed_on_by_auto(
    tiny_clip, torch_encoder, tmp_path, monkeypatch, caplog
) -> None:
    from lookalike.encoders import int8

    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path))
    monkeypatch.setenv("LOOKALIKE_CPU_FLAGS", "avx2 fma")
    load_encoder(*tiny_clip, "cpu", runtime="int8").encode_texts(["a cat"])
    measured = _checks(tmp_path)[0]["agreement"]["text"]
    monkeypatch.setattr(int8, "MIN_AGREEMENT", measured + 1e-6)  # the cached cosine misses it
    with pytest.raises(onnx_runtime.ExportError, match="agrees with the float32 export"):
        load_encoder(*tiny_clip, "cpu", runtime="int8").encode_texts(["a cat"])
    fallback = load_encoder(*tiny_clip, "cpu", runtime="auto")
    assert least_cosine(fallback.encode_texts(TEXTS), torch_encoder.encode_texts(TEXTS)) >= 0.9999
    assert "running the text tower on openvino instead" in caplog.text
    assert len(_checks(tmp_path)) == 2  # int8's one check, then OpenVINO's: none repeated


def test_cpu_flags_follow_the_override(monkeypatch) -> None:
    from lookalike.encoders.probe import cpu_flags, int8_dot_products, native_bf16

    monkeypatch.setenv("LOOKALIKE_CPU_FLAGS", "AVX2, fma avx512_vnni")
    assert cpu_flags() == {"avx2", "fma", "avx512_vnni"}
    assert int8_dot_products(cpu_flags()) and not native_bf16(cpu_flags())
    monkeypatch.delenv("LOOKALIKE_CPU_FLAGS")
    if Path("/proc/cpuinfo").exists():
        assert "fpu" in cpu_flags() or not cpu_flags() & {"sse2"}  # the real CPU's flags
