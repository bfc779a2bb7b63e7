"""Encoders through the public Collection: tiny open_clip and torchvision models, local files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import encode
from lookalike import BadInputError, Collection, UnsupportedQueryError
from lookalike.demo import draw_image
from lookalike.encoders import Encoder, load_encoder


def pngs(count: int, start: int = 0, size: tuple[int, int] = (48, 40)) -> list[bytes]:
    return [encode(draw_image(seed, size)) for seed in range(start, start + count)]


def assert_unit_float32(vectors: np.ndarray, dim: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape[1] == dim
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_open_clip_from_config_file_and_local_weights(tiny_clip, tmp_path: Path) -> None:
    spec, weights = tiny_clip
    col = Collection.create(tmp_path / "col", spec, weights=weights)
    assert col.dim == 32
    assert col.model == spec
    assert col.stats().weights == str(weights.resolve())

    report = col.add_images(pngs(6))
    assert report.added == 6
    vectors = col.vectors(list(range(6)))
    assert vectors.shape == (6, 32)
    assert_unit_float32(vectors, 32)
    # distinct pictures give distinct vectors
    assert len({v.tobytes() for v in vectors}) == 6

    text = col.embed(text="a red circle on a white background")
    assert text.shape == (32,)
    assert_unit_float32(text[None], 32)
    other = col.embed(text="three blue stripes")
    assert not np.allclose(text, other)


def test_open_clip_is_deterministic_across_loads(tiny_clip, tmp_path: Path) -> None:
    spec, weights = tiny_clip
    images = pngs(4, start=10)
    first = Collection.create(tmp_path / "a", spec, weights=weights)
    second = Collection.create(tmp_path / "b", spec, weights=weights)
    first.add_images(images)
    second.add_images(images)
    np.testing.assert_allclose(
        first.vectors([0, 1, 2, 3]), second.vectors([0, 1, 2, 3]), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        first.embed(text="a dog"), second.embed(text="a dog"), rtol=0, atol=1e-6
    )
    # and a reopened collection loads the same model again from its recorded spec and weights
    first.close()
    again = Collection.open(tmp_path / "a")
    np.testing.assert_allclose(again.embed(text="a dog"), second.embed(text="a dog"), atol=1e-6)
    np.testing.assert_allclose(again.embed(image=images[2]), second.vectors([2])[0], atol=1e-5)


def test_encoder_protocol_directly(tiny_clip) -> None:
    spec, weights = tiny_clip
    encoder = load_encoder(spec, weights, "cpu")
    assert isinstance(encoder, Encoder)
    assert (encoder.dim, encoder.image_size, encoder.supports_text) == (32, 32, True)
    batch = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    images = encoder.encode_images(batch)
    assert images.shape == (3, 32)
    assert_unit_float32(images, 32)
    np.testing.assert_array_equal(images, encoder.encode_images(batch))
    texts = encoder.encode_texts(["a cat", "a police car at night"])
    assert texts.shape == (2, 32)
    assert_unit_float32(texts, 32)
    np.testing.assert_array_equal(texts, encoder.encode_texts(["a cat", "a police car at night"]))


@pytest.mark.parametrize("text", ["", "   ", "x" * 2001])
def test_open_clip_refuses_empty_or_huge_text(tiny_clip, tmp_path: Path, text: str) -> None:
    spec, weights = tiny_clip
    col = Collection.create(tmp_path / "col", spec, weights=weights)
    col.add_images(pngs(1))
    with pytest.raises(BadInputError, match="text query"):
        col.search(text=text)


@pytest.mark.parametrize(
    ("arch", "dim", "count"), [("mobilenet_v2", 1280, 3), ("resnet50", 2048, 2)]
)
def test_torchvision_backbones_from_state_dict(
    backbone_weights, tmp_path: Path, arch: str, dim: int, count: int
) -> None:
    weights = backbone_weights(arch)
    col = Collection.create(tmp_path / "col", f"torchvision:{arch}", weights=weights)
    assert col.dim == dim
    assert col.stats().model == f"torchvision:{arch}"
    images = pngs(count, start=20, size=(60, 50))
    assert col.add_images(images).added == count
    vectors = col.vectors(list(range(count)))
    assert vectors.shape == (count, dim)
    assert_unit_float32(vectors, dim)
    hits = col.search(image=images[1], k=count)
    assert hits[0].id == 1
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == count


def test_text_query_on_image_only_collection(backbone_weights, tmp_path: Path) -> None:
    col = Collection.create(
        tmp_path / "col", "torchvision:mobilenet_v2", weights=backbone_weights("mobilenet_v2")
    )
    col.add_images(pngs(2))
    with pytest.raises(UnsupportedQueryError, match="image-only") as caught:
        col.search(text="a police car")
    assert "torchvision:mobilenet_v2" in str(caught.value)
    assert "text" in str(caught.value)
    assert "\n" not in str(caught.value)
    # also as one part of a weighted query, and image queries keep working
    with pytest.raises(UnsupportedQueryError):
        col.search(query=[{"id": 0}, {"text": "at night", "weight": 0.5}])
    assert col.search(id=0, k=5)[0].id == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet50", "must look like"),
        ("open_clip:", "must look like"),
        ("caffe:alexnet", "unknown model family"),
        ("open_clip:NoSuchArch-B-99", "unknown open_clip architecture"),
        ("torchvision:no_such_net", "unknown torchvision"),
        ("open_clip:/does/not/exist.json", "does not exist"),
    ],
)
def test_bad_model_specs(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        Collection.create(tmp_path / "col", spec)
    assert not (tmp_path / "col").exists()  # a failed create leaves nothing behind


def test_missing_weights_file(tiny_clip, tmp_path: Path) -> None:
    spec, _ = tiny_clip
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(BadInputError, match=r"nowhere\.pt"):
        Collection.create(tmp_path / "col", spec, weights=missing)
    with pytest.raises(BadInputError, match=r"nowhere\.pt"):
        Collection.create(tmp_path / "col", "torchvision:mobilenet_v2", weights=missing)
    assert not (tmp_path / "col").exists()


def test_pretrained_tag_and_weights_file_together(tiny_clip, tmp_path: Path) -> None:
    _, weights = tiny_clip
    with pytest.raises(BadInputError, match="not both"):
        Collection.create(tmp_path / "col", "open_clip:ViT-B-32/openai", weights=weights)


def test_unreadable_or_mismatched_weights_are_bad_input(
    tiny_clip, backbone_weights, tmp_path: Path
) -> None:
    spec, clip_weights = tiny_clip
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch checkpoint")
    mobilenet = backbone_weights("mobilenet_v2")
    cases = [
        (spec, garbage),
        (spec, mobilenet),
        ("torchvision:mobilenet_v2", garbage),
        ("torchvision:mobilenet_v2", clip_weights),
        ("torchvision:resnet50", mobilenet),
    ]
    for model, weights in cases:
        with pytest.raises(BadInputError) as caught:
            Collection.create(tmp_path / "col", model, weights=weights)
        assert "\n" not in str(caught.value), (model, weights)
        assert not (tmp_path / "col").exists()


def test_an_architecture_without_weights_is_refused(tiny_clip) -> None:
    from lookalike import BadInputError
    from lookalike.encoders import load_encoder

    spec, _ = tiny_clip
    with pytest.raises(BadInputError, match=r"pretrained tag .* or a local weights file"):
        load_encoder(spec)


@pytest.mark.parametrize("setting", ["offline", "hub unreachable"])
def test_the_default_model_fails_fast_without_the_hub(tmp_path: Path, monkeypatch, setting) -> None:
    import socket
    import time

    import open_clip  # noqa: F401 -- imported already, so the timing is the failure's own
    from huggingface_hub import constants

    from lookalike.encoders import DEFAULT_MODEL
    from lookalike.encoders.hub import ModelUnavailableError

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if setting == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    for runtime in ("torch", "auto"):
        started = time.monotonic()
        with pytest.raises(ModelUnavailableError) as failed:
            load_encoder(DEFAULT_MODEL, runtime=runtime)
        assert time.monotonic() - started < 5
        message = str(failed.value)
        assert "\n" not in message and "--weights FILE" in message
        assert ("HF_HUB_OFFLINE" if setting == "offline" else f"127.0.0.1:{port}") in message
