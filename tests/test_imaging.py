from __future__ import annotations

import io
import random
import struct
import sys
import time
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps, features

from lookalike.errors import ImageError
from lookalike.imaging import (
    DEFAULT_LIMITS,
    IMAGE_EXTENSIONS,
    DecodedImage,
    ImageLimits,
    decode_image,
    make_thumbnail,
    sniff_image,
    to_model_input,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 8) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


ModelInput = Callable[[Image.Image, int], np.ndarray]

LOSSLESS = ["PNG", "BMP", "TIFF", "PPM", "TGA", "GIF"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "TGA"])
@pytest.mark.parametrize("size", [(1, 1), (17, 5), (5, 17), (64, 48)])
def test_round_trip(fmt: str, size: tuple[int, int]) -> None:
    decoded = decode_image(encode(Image.new("RGB", size, (200, 40, 90)), fmt))
    assert isinstance(decoded, DecodedImage)
    assert (decoded.width, decoded.height) == size
    assert decoded.image.size == size
    assert decoded.image.mode == "RGB"
    assert decoded.format == fmt
    pixel = decoded.image.getpixel((size[0] // 2, size[1] // 2))
    if fmt in LOSSLESS:
        assert pixel == (200, 40, 90)
    else:
        assert close_to(pixel, (200, 40, 90), 12)


def test_ico_round_trip() -> None:
    decoded = decode_image(encode(Image.new("RGB", (32, 32), RED), "ICO", sizes=[(32, 32)]))
    assert decoded.format == "ICO"
    assert (decoded.width, decoded.height) == (32, 32)
    assert decoded.image.getpixel((5, 5)) == RED


def icon_of(frame: bytes, declared: int = 16) -> bytes:
    """An ICO whose one directory entry declares ``declared`` pixels a side over ``frame``."""
    entry = struct.pack("<BBBBHHII", declared, declared, 0, 0, 1, 8, len(frame), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + frame


def icon_bitmap(side: int) -> bytes:
    """An 8-bit BMP icon frame: header, palette, pixels, then the AND mask (whence height x2)."""
    header = struct.pack("<IiiHHIIiiII", 40, side, 2 * side, 1, 8, 0, 0, 0, 0, 256, 0)
    palette = b"".join(struct.pack("<BBBB", 0, 0, i, 0) for i in range(256))  # BGRX: reds
    pixels = bytes([200]) * (-(-side // 4) * 4 * side)
    mask = bytes(-(-side // 32) * 4 * side)  # all 0: opaque
    return header + palette + pixels + mask


@pytest.mark.filterwarnings("ignore:Image was not the expected size")
@pytest.mark.parametrize("kind", ["PNG", "BMP"])
def test_ico_frames_are_checked_at_their_real_size(kind: str) -> None:
    # the directory declares 16x16; Pillow decoded the real frame while opening the file
    frame = encode(Image.new("RGB", (200, 200), RED), "PNG") if kind == "PNG" else icon_bitmap(200)
    data = icon_of(frame)
    decoded = decode_image(data)
    assert (decoded.width, decoded.height) == (200, 200)
    assert close_to(decoded.image.getpixel((100, 100)), (200, 0, 0) if kind == "BMP" else RED)
    with pytest.raises(ImageError, match="an ICO frame of 200x200 pixels exceeds the limit"):
        decode_image(data, limits=ImageLimits(max_pixels=10_000))
    with pytest.raises(ImageError, match="an ICO frame of 200x200 pixels has a side over"):
        decode_image(data, limits=ImageLimits(max_side=199))


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif_round_trip() -> None:
    decoded = decode_image(encode(Image.new("RGB", (16, 8), RED), "AVIF"))
    assert decoded.format == "AVIF"
    assert (decoded.width, decoded.height) == (16, 8)
    assert close_to(decoded.image.getpixel((8, 4)), RED, 16)


def test_path_input(tmp_path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (3, 2), BLUE), "PNG"))
    for source in (path, str(path)):
        decoded = decode_image(source)
        assert (decoded.width, decoded.height, decoded.format) == (3, 2, "PNG")


def test_rgba_composited_on_white() -> None:
    image = Image.new("RGBA", (2, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 255, 255))
    for fmt in ("PNG", "WEBP"):
        rgb = decode_image(encode(image, fmt, lossless=True)).image
        assert rgb.mode == "RGB"
        assert rgb.getpixel((0, 0)) == WHITE
        assert rgb.getpixel((1, 0)) == BLUE


def test_half_transparent_blends_with_white() -> None:
    image = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    r, g, b = decode_image(encode(image, "PNG")).image.getpixel((0, 0))
    assert r == g == b
    assert 125 <= r <= 129


def test_palette_with_transparency() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    image.putpixel((1, 0), 1)
    for fmt in ("PNG", "GIF"):
        rgb = decode_image(encode(image, fmt, transparency=0)).image
        assert rgb.getpixel((0, 0)) == WHITE, fmt
        assert rgb.getpixel((1, 0)) == BLUE, fmt


def test_palette_without_transparency() -> None:
    image = Image.new("P", (1, 1))
    image.putpalette([10, 20, 30] + [0] * (255 * 3))
    assert decode_image(encode(image, "PNG")).image.getpixel((0, 0)) == (10, 20, 30)


def test_la_composited_on_white() -> None:
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (0, 0))
    image.putpixel((1, 0), (100, 255))
    rgb = decode_image(encode(image, "PNG")).image
    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((1, 0)) == (100, 100, 100)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_gray_and_bilevel(mode: str) -> None:
    image = Image.new(mode, (4, 4), 255)
    assert decode_image(encode(image, "PNG")).image.getpixel((0, 0)) == WHITE


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    decoded = decode_image(data)
    assert decoded.image.mode == "RGB"
    assert close_to(decoded.image.getpixel((8, 8)), RED, 12)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_gray_is_divided_not_clipped(fmt: str) -> None:
    image = Image.fromarray(np.array([[65535, 32768, 0, 256]], dtype=np.uint16))
    assert image.mode == "I;16"
    rgb = decode_image(encode(image, fmt)).image
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert abs(rgb.getpixel((1, 0))[0] - 128) <= 1
    assert rgb.getpixel((2, 0)) == (0, 0, 0)
    assert rgb.getpixel((3, 0)) == (1, 1, 1)


def test_float_tiff_is_stretched() -> None:
    image = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), "F")
    rgb = decode_image(encode(image, "TIFF")).image
    assert [rgb.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE, RED)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert decode_image(data).image.getpixel((4, 4)) == RED


def test_animated_webp_and_png_use_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE)]
    for fmt in ("PNG", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
        assert decode_image(data).image.getpixel((4, 4)) == RED, fmt


def test_frame_limit() -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in (RED, BLUE, WHITE)]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="too many frames"):
        decode_image(data, limits=ImageLimits(max_frames=2))


def oriented_jpeg(orientation: int, size: tuple[int, int] = (40, 20)) -> bytes:
    """Blue image, red top-left quadrant, stored with an EXIF orientation tag."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0] // 2, size[1] // 2))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_6_rotates_clockwise() -> None:
    decoded = decode_image(oriented_jpeg(6))
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.image.size == (20, 40)
    assert close_to(decoded.image.getpixel((15, 5)), RED)
    assert close_to(decoded.image.getpixel((5, 5)), BLUE)


def test_exif_orientation_3_and_1() -> None:
    rotated = decode_image(oriented_jpeg(3))
    assert rotated.image.size == (40, 20)
    assert close_to(rotated.image.getpixel((35, 15)), RED)
    upright = decode_image(oriented_jpeg(1))
    assert close_to(upright.image.getpixel((5, 5)), RED)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_does_not_fail_decode() -> None:
    data = encode(Image.new("RGB", (8, 4), RED), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    decoded = decode_image(data)
    assert decoded.image.size == (8, 4)


def test_draft_downscales_large_jpeg() -> None:
    data = encode(Image.new("RGB", (2048, 1536), (10, 120, 200)), "JPEG")
    decoded = decode_image(data, min_side=224)
    assert (decoded.width, decoded.height) == (2048, 1536)
    assert 224 <= min(decoded.image.size) < 1536
    assert close_to(decoded.image.getpixel((5, 5)), (10, 120, 200))
    assert decode_image(data).image.size == (2048, 1536)


def test_draft_with_orientation_reports_original_size() -> None:
    decoded = decode_image(oriented_jpeg(6, (960, 480)), min_side=100)
    assert (decoded.width, decoded.height) == (480, 960)
    assert decoded.image.size == (120, 240)


def test_draft_ignored_for_png() -> None:
    decoded = decode_image(encode(Image.new("RGB", (800, 600)), "PNG"), min_side=100)
    assert decoded.image.size == (800, 600)


def test_invalid_min_side() -> None:
    with pytest.raises(ValueError, match="min_side"):
        decode_image(b"x", min_side=0)


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5, 0.75, 0.95])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_fail(fmt: str, fraction: float) -> None:
    data = encode(noise(64, 64), fmt)
    with pytest.raises(ImageError):
        decode_image(data[: int(len(data) * fraction)])


def test_truncated_jpeg_message_names_format() -> None:
    data = encode(noise(64, 64), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt JPEG"):
        decode_image(data[: len(data) // 2])


def test_random_bytes_fail() -> None:
    data = random.Random(1234).randbytes(4000)
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"this is plain text, not a picture\n" * 20)
    with pytest.raises(ImageError):
        decode_image(data)


def test_empty_input_fails(tmp_path) -> None:
    with pytest.raises(ImageError, match="file is empty"):
        decode_image(b"")
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="file is empty"):
        decode_image(path)


def test_unsupported_format_is_refused() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="not an image"):
        decode_image(eps)


def huge_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def test_pixel_bomb_refused_quickly() -> None:
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"too large.*limit of \d+"):
        decode_image(huge_png(100_000, 100_000))
    assert time.perf_counter() - start < 0.5


def test_pixel_limit_is_ours_not_pillows() -> None:
    data = huge_png(2000, 1000)
    with pytest.raises(ImageError, match="2000x1000 pixels exceeds the limit of 1000000"):
        decode_image(data, limits=ImageLimits(max_pixels=1_000_000))


def test_each_side_is_bounded() -> None:
    # 70000 pixels is well under the pixel limit, but the decoder takes it a whole row at a time
    with pytest.raises(ImageError, match="70000x1 pixels has a side over the limit of 65535"):
        decode_image(huge_png(70_000, 1))
    with pytest.raises(ImageError, match="1x70000 pixels has a side over the limit of 65535"):
        decode_image(huge_png(1, 70_000))
    with pytest.raises(ImageError, match="300x2 pixels has a side over the limit of 200"):
        decode_image(encode(noise(300, 2), "PNG"), limits=ImageLimits(max_side=200))
    assert decode_image(encode(noise(300, 2), "PNG"), limits=ImageLimits(max_side=300)).width


def test_progressive_jpeg_coefficients_count_at_full_size() -> None:
    # libjpeg keeps 2 bytes a sample of a progressive image, however far a draft scales it:
    # 2000x2000 at 4:4:4 is 24 MB, where the baseline image drafted to 250x250 takes 250 kB
    image = Image.new("RGB", (2_000, 2_000), (90, 120, 30))
    limits = ImageLimits(max_decode_bytes=20_000_000)
    baseline = encode(image, "JPEG", subsampling=0)
    assert decode_image(baseline, limits=limits, min_side=32).width == 2_000
    progressive = encode(image, "JPEG", subsampling=0, progressive=True)
    with pytest.raises(ImageError, match="2000x2000 multi-scan JPEG takes 24 MB, over the limit"):
        decode_image(progressive, limits=limits, min_side=32)
    assert decode_image(progressive, min_side=32).width == 2_000


def test_zero_sized_image_refused() -> None:
    with pytest.raises(ImageError):
        decode_image(huge_png(0, 10))


def test_max_bytes_for_bytes_and_path(tmp_path) -> None:
    data = encode(noise(32, 32), "PNG")
    limits = ImageLimits(max_bytes=len(data) - 1)
    with pytest.raises(ImageError, match=f"file too large: {len(data)} bytes"):
        decode_image(data, limits=limits)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="file too large"):
        decode_image(path, limits=limits)
    assert decode_image(path, limits=ImageLimits(max_bytes=len(data))).width == 32


def test_unreadable_paths(tmp_path) -> None:
    with pytest.raises(ImageError, match="No such file"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="directory"):
        decode_image(tmp_path)
    with pytest.raises(ImageError, match="cannot read"):
        decode_image("bad\x00name.jpg")


def test_defaults() -> None:
    assert ImageLimits().max_bytes == DEFAULT_LIMITS.max_bytes == 64 * 1024 * 1024
    assert DEFAULT_LIMITS.max_pixels == 100_000_000
    assert DEFAULT_LIMITS.max_side == 65_535
    assert DEFAULT_LIMITS.max_decode_bytes == 4 * DEFAULT_LIMITS.max_pixels  # RGBA at the limit
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tiff"} <= IMAGE_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)


@pytest.fixture(params=["torch", "pillow"])
def model_input(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModelInput:
    """to_model_input as it runs where torch is loaded (the engine's process), and where it is
    not (ingest workers, which never import it): both resizers must give the same input."""
    if request.param == "torch":
        pytest.importorskip("torch")
        return to_model_input

    def without_torch(image: Image.Image, size: int) -> np.ndarray:
        with monkeypatch.context() as hidden:
            hidden.delitem(sys.modules, "torch", raising=False)
            return to_model_input(image, size)

    return without_torch


def camera_photo(width: int, height: int, seed: int = 0, **save: object) -> bytes:
    """A photo-like JPEG: smooth scene, sharp shapes, fine texture and sensor noise."""
    rng = np.random.default_rng(seed)
    scene = Image.new(
        "RGB", (width // 4, height // 4), tuple(int(c) for c in rng.integers(0, 256, 3))
    )
    pen = ImageDraw.Draw(scene)
    for _ in range(30):
        x, y, r = (int(v) for v in rng.integers(0, width // 4, 3))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)(
            (x, y, x + r // 3, y + r // 3), fill=fill
        )
    scene = scene.filter(ImageFilter.GaussianBlur(1)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    grain = rng.integers(-12, 13, (height, width, 3))
    pixels = np.clip(np.asarray(scene, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90, **save)


def open_clip_input(data: bytes, size: int) -> np.ndarray:
    """open_clip's evaluation preprocessing (torchvision Resize + CenterCrop, bicubic) of the
    full-size image, upright: the reference that model input is held to."""
    transforms = pytest.importorskip("torchvision.transforms")
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    resize = transforms.Resize(size, transforms.InterpolationMode.BICUBIC)
    return np.asarray(transforms.CenterCrop(size)(resize(upright)))


def model_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two uint8 inputs as the model sees them (CLIP's mean and std removed)."""
    mean = np.array([0.48145466, 0.4578275, 0.40821073]) * 255
    std = np.array([0.26862954, 0.26130258, 0.27577711]) * 255
    x, y = ((a - mean) / std).ravel(), ((b - mean) / std).ravel()
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


@pytest.mark.parametrize(
    ("size", "model_size"),
    [((1, 1), 224), ((3, 500), 224), ((500, 3), 224), ((224, 224), 224), ((641, 480), 224),
     ((480, 641), 224), ((10, 20), 8)],
)  # fmt: skip
def test_to_model_input_shape(
    model_input: ModelInput, size: tuple[int, int], model_size: int
) -> None:
    array = model_input(noise(*size), model_size)
    assert array.shape == (model_size, model_size, 3)
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous and array.flags.writeable


def test_to_model_input_identity_and_centre_crop(model_input: ModelInput) -> None:
    image = noise(224, 224)
    assert np.array_equal(model_input(image, 224), np.asarray(image))
    wide = Image.new("RGB", (300, 100), RED)
    wide.paste(BLUE, (100, 0, 200, 100))
    array = model_input(wide, 50)
    assert np.all(array[:, 2:-2] == BLUE)
    tall = Image.new("RGB", (100, 300), RED)
    tall.paste(BLUE, (0, 100, 100, 200))
    assert np.all(model_input(tall, 50)[2:-2] == BLUE)


def test_to_model_input_matches_resize_then_crop(model_input: ModelInput) -> None:
    image = Image.open(io.BytesIO(camera_photo(600, 300)))
    resized = np.asarray(image.resize((300, 150), Image.Resampling.BICUBIC))
    difference = np.abs(model_input(image, 150).astype(int) - resized[:, 75:225])
    assert difference.max() <= 4  # torch rounds its 16-bit weights otherwise than Pillow
    assert difference.mean() <= 0.1


def test_to_model_input_converts_mode(model_input: ModelInput) -> None:
    array = model_input(Image.new("L", (10, 20), 7), 8)
    assert array.shape == (8, 8, 3)
    assert np.all(array == 7)


@pytest.mark.parametrize(
    ("width", "height", "orientation"), [(1024, 768, 1), (2016, 1512, 6), (720, 477, 1)]
)
def test_model_input_agrees_with_open_clip_preprocessing(
    model_input: ModelInput, width: int, height: int, orientation: int
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = camera_photo(width, height, seed=width, exif=exif.tobytes())
    reference = open_clip_input(data, 224)
    decoded = decode_image(data, min_side=224)  # JPEG draft: 1/2, 1/4 and 1/2 of the size
    assert min(decoded.image.size) < min(width, height)
    ours = model_input(decoded.image, 224)
    assert ours.shape == reference.shape
    assert model_cosine(ours, reference) >= 0.999
    assert np.abs(ours.astype(int) - reference).mean() <= 2.5


def test_model_input_same_with_and_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    decoded = decode_image(camera_photo(1024, 768, seed=3), min_side=224).image
    with_torch = to_model_input(decoded, 224).astype(int)
    monkeypatch.delitem(sys.modules, "torch")
    with_pillow = to_model_input(decoded, 224).astype(int)
    assert np.abs(with_torch - with_pillow).max() <= 4
    assert model_cosine(with_torch, with_pillow) >= 0.9999


def test_make_thumbnail() -> None:
    thumb = Image.open(io.BytesIO(make_thumbnail(noise(1000, 500), 256)))
    assert thumb.format == "JPEG"
    assert thumb.size == (256, 128)
    small = Image.open(io.BytesIO(make_thumbnail(noise(30, 20))))
    assert small.size == (30, 20)
    rgba = Image.open(io.BytesIO(make_thumbnail(Image.new("RGBA", (600, 30)), 100)))
    assert rgba.size == (100, 5)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "ICO"])
def test_sniff_image_positive(fmt: str) -> None:
    assert sniff_image(encode(Image.new("RGB", (16, 16)), fmt)[:16])


def test_sniff_image_pnm_and_big_endian_tiff() -> None:
    assert sniff_image(encode(Image.new("L", (4, 4)), "PPM")[:16])
    assert sniff_image(encode(Image.new("1", (4, 4)), "PPM")[:16])
    assert sniff_image(b"MM\x00*\x00\x00\x00\x08")


@pytest.mark.parametrize(
    "head",
    [b"", b"\xff", b"hello world", b"%PDF-1.7\n", b"PK\x03\x04", b"BM", b"BMW is a car brand!",
     b"RIFF\x00\x00\x00\x00WAVEfmt ", b"Pizza", b"\x00\x00\x00\x00\x00\x00", b"GIF8"],
)  # fmt: skip
def test_sniff_image_negative(head: bytes) -> None:
    assert not sniff_image(head)


hypothesis = pytest.importorskip("hypothesis", reason="hypothesis not installed")
st = hypothesis.strategies

SMALL_LIMITS = ImageLimits(max_pixels=1_000_000)
SEEDS = {
    "png": encode(noise(8, 8), "PNG"),
    "jpeg": encode(noise(8, 8), "JPEG"),
    "gif": encode(noise(8, 8), "GIF"),
}


def decodes_or_image_error(data: bytes) -> None:
    try:
        decoded = decode_image(data, limits=SMALL_LIMITS, min_side=2)
    except ImageError:
        return
    assert decoded.image.mode == "RGB"


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    decodes_or_image_error(data)


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(
    st.sampled_from(sorted(SEEDS)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(0, 10_000),
)
def test_fuzz_mutated_images(kind: str, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SEEDS[kind])
    for position, value in edits:
        data[position % len(data)] = value
    decodes_or_image_error(bytes(data[: max(cut, 1)]) if cut < len(data) else bytes(data))
