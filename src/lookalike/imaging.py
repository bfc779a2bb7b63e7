"""Decode untrusted image bytes safely and prepare them as model input."""

from __future__ import annotations

import functools
import io
import os
import stat
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, TiffImagePlugin, features

from .errors import ImageError

# Our own pixel check replaces Pillow's warning; its hard error still applies past 2x its limit.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Pillow reads uncompressed TIFF strips itself, in reads as long as the gap to the next strip:
# strips declared a byte apart make a tiny file take minutes. libtiff reads them directly.
if features.check_codec("libtiff"):
    TiffImagePlugin.READ_LIBTIFF = True

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif", ".bmp", ".dib",
        ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".avif",
    }
)  # fmt: skip

# Tried in this order; TGA has no magic number, so it goes last. MPO arrives through JPEG.
# Formats such as EPS (which runs Ghostscript) are deliberately left out.
_WANTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "ICO", "PPM", "TGA")
# Formats whose frame count is read from the header; asking GIF or TIFF means parsing every frame.
_CHEAP_FRAME_COUNT = frozenset({"PNG", "WEBP", "MPO", "AVIF"})
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_WHITE = (255, 255, 255)

# Images above this many pixels change mode a strip at a time (and are shrunk for min_side),
# so a small file declaring a large image costs about its decoded size, not several copies.
_STRIP_PIXELS = 1 << 22

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ICO_MAGIC = b"\x00\x00\x01\x00"

_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what decode_image accepts, checked before pixels are decoded.

    ``max_pixels`` and ``max_side`` apply to every frame that a decoder would allocate: the
    image, each frame of an icon, each tile of a TIFF. A decode holds ``max_decode_bytes`` at
    most, plus up to 4 bytes a pixel more while changing to RGB, less as ``min_side`` shrinks
    the image.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 100_000_000  # a 12000x8000 photo fits
    max_frames: int = 10_000
    # each of width and height: a 1-pixel-high row of 100 million pixels takes the decoder and
    # every conversion one whole row at a time; 65535 is the largest side JPEG and GIF allow
    max_side: int = 65_535
    # the decoder's buffers: the image at Pillow's 1, 2 or 4 bytes a pixel, and a progressive
    # JPEG's coefficients of the full-size image (2 bytes a sample, whatever the draft scale)
    max_decode_bytes: int = 400_000_000


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image, fully loaded, with its size as displayed (after EXIF orientation).

    ``width`` and ``height`` are the original sizes, even when a JPEG draft (or, for a large
    image, ``min_side``) made ``image`` smaller.
    """

    image: Image.Image
    width: int
    height: int
    format: str


def sniff_image(head: bytes) -> bool:
    """Return True when ``head`` (the first bytes of a file) starts with a known image magic."""
    head = bytes(head[:16])
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")):
        return True
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return True
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return True
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return True
    if head.startswith(b"BM") and len(head) >= 16:
        return head[14] in (12, 16, 40, 52, 56, 64, 108, 124) and head[15] == 0
    if head.startswith(b"\x00\x00\x01\x00") and len(head) >= 6:
        return head[4:6] != b"\x00\x00"
    return len(head) >= 3 and head[0:1] == b"P" and head[1] in b"123456" and head[2] in b" \t\r\n"


def decode_image(
    data: bytes | str | os.PathLike[str],
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
    min_side: int | None = None,
) -> DecodedImage:
    """Decode image bytes (or the file at a path) into an RGB image.

    Only the first frame of an animated image is used. EXIF orientation is applied and
    transparency is composited onto white. With ``min_side``, JPEGs are downscaled while
    decoding (by 1/2, 1/4 or 1/8) as far as possible while both sides stay >= ``min_side``,
    and other images of over 4 megapixels are shrunk by a whole factor while both sides stay
    >= 3 * ``min_side``.

    Raises ImageError for anything that is not a decodable image within ``limits``.
    """
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be at least 1, not {min_side}")
    raw = _read(data, limits.max_bytes)
    img = _open_checked(raw, limits)
    fmt = img.format or "image"
    width, height = img.size

    try:
        if min_side is not None and fmt in _DRAFT_FORMATS:
            img.draft("RGB", (min_side, min_side))
    except Exception as exc:
        raise ImageError(f"truncated or corrupt {fmt}: {_reason(exc)}") from None
    _check_decode_bytes(img, raw, (width, height), limits)
    try:
        # Pillow hands a decoder blocks of decodermaxblock bytes, joined until a whole row fits:
        # rows much longer than a block (a WebP canvas 10 million pixels wide) take quadratic time
        img.decodermaxblock = max(img.decodermaxblock, 4 * img.width)
        img.load()
    except Image.DecompressionBombError:
        raise ImageError(_pillow_bomb_message(limits)) from None
    except Exception as exc:
        raise ImageError(f"truncated or corrupt {fmt}: {_reason(exc)}") from None
    if img.size != (width, height) and fmt not in _DRAFT_FORMATS:
        _check_size(*img.size, limits)  # a decoder that grew the image: no known case left

    orientation = _orientation(img)
    factor = 1
    if min_side is not None and img.width * img.height > _STRIP_PIXELS:
        factor = max(1, min(img.size) // (3 * min_side))  # stays well above min_side
    try:
        rgb = _to_rgb(img, factor)
    except Exception as exc:
        raise ImageError(f"unsupported {fmt} image (mode {img.mode}): {_reason(exc)}") from None

    transpose = _TRANSPOSE.get(orientation)
    if transpose is not None:
        rgb = rgb.transpose(transpose)
        if orientation >= 5:
            width, height = height, width
    return DecodedImage(image=rgb, width=width, height=height, format=fmt)


def check_image(data: bytes, *, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[str, int, int]:
    """(format, width, height) of image bytes, checked from their headers against ``limits``
    without decoding the pixels; ImageError otherwise. A cheap gate for bytes that are kept
    (uploads) before the one real decode, which may still find them truncated."""
    with _open_checked(_read(data, limits.max_bytes), limits) as img:
        return img.format or "image", img.width, img.height


def _open_checked(raw: bytes, limits: ImageLimits) -> ImageFile.ImageFile:
    """The image of ``raw`` opened (its headers read, no pixels decoded) and checked: every
    frame's and tile's real size, the pixel and side limits, the frame count."""
    if raw.startswith(_ICO_MAGIC):  # Pillow decodes an icon's largest frame while opening it
        for frame_width, frame_height in _ico_frame_sizes(raw):
            _check_bounds(frame_width, frame_height, limits, "an ICO frame of ")
    try:
        img = Image.open(io.BytesIO(raw), formats=_formats())
    except Image.DecompressionBombError:
        raise ImageError(_pillow_bomb_message(limits)) from None
    except Image.UnidentifiedImageError:
        raise ImageError(_unidentified(raw)) from None
    except Exception as exc:
        raise ImageError(f"corrupt image header: {_reason(exc)}") from None
    _check_size(*img.size, limits)
    if img.format == "TIFF":
        _check_tiles(img, limits)
    if img.format in _CHEAP_FRAME_COUNT:
        n_frames = getattr(img, "n_frames", 1)
        if n_frames > limits.max_frames:
            raise ImageError(
                f"too many frames: {n_frames} exceeds the limit of {limits.max_frames}"
            )
    return img


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shortest side to ``size`` (bicubic), centre-crop to a square, return HxWx3 uint8.

    Equivalent to torchvision's Resize(size) + CenterCrop(size), but only the cropped
    region is resampled. Always Pillow's bicubic, in every process: an image must give the
    same pixels, so the same vector, whether an ingest worker or a query prepares it (torch's
    faster kernel rounds otherwise, and searching by an image's own bytes then ranked its
    near copy first).
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, not {size}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    if side == size and width == height:
        return np.array(image, dtype=np.uint8)
    left = (width - side) / 2
    top = (height - side) / 2
    square = image.resize(
        (size, size),
        Image.Resampling.BICUBIC,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )
    return np.array(square, dtype=np.uint8)


def make_thumbnail(image: Image.Image, max_side: int = 256) -> bytes:
    """Return JPEG bytes of ``image`` scaled down to fit in ``max_side`` (never scaled up)."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    width, height = image.size
    scale = max_side / max(width, height)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


@functools.cache
def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(fmt for fmt in _WANTED_FORMATS if fmt in Image.OPEN)


def _read(data: bytes | str | os.PathLike[str], max_bytes: int) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        size = len(raw)
    else:
        try:
            st = os.stat(data)
            if stat.S_ISDIR(st.st_mode):
                raise ImageError(f"cannot read {os.fspath(data)!r}: is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(f"cannot read {os.fspath(data)!r}: not a regular file")
            size = st.st_size
            if size > max_bytes:
                raise ImageError(_too_many_bytes(size, max_bytes))
            with open(data, "rb") as f:
                raw = f.read(max_bytes + 1)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ImageError(f"cannot read {os.fspath(data)!r}: {reason}") from None
        size = len(raw)
    if size == 0:
        raise ImageError("file is empty")
    if size > max_bytes:
        raise ImageError(_too_many_bytes(size, max_bytes))
    return raw


def _too_many_bytes(size: int, limit: int) -> str:
    return f"file too large: {size} bytes exceeds the limit of {limit}"


def _pillow_bomb_message(limits: ImageLimits) -> str:
    limit = min(limits.max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0))
    return f"image too large: exceeds the limit of {limit} pixels"


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"invalid image size: {width}x{height} pixels")
    _check_bounds(width, height, limits)


def _check_bounds(width: int, height: int, limits: ImageLimits, what: str = "") -> None:
    """Refuse ``what`` (an image unless named) of ``width`` x ``height`` over ``limits``."""
    size = f"{what}{width}x{height} pixels"
    if width * height > limits.max_pixels:
        raise ImageError(f"image too large: {size} exceeds the limit of {limits.max_pixels}")
    if max(width, height) > limits.max_side:
        raise ImageError(
            f"image too large: {size} has a side over the limit of {limits.max_side} pixels"
        )


def _check_decode_bytes(
    img: Image.Image, raw: bytes, size: tuple[int, int], limits: ImageLimits
) -> None:
    """Refuse an image whose decoding would hold more than ``limits.max_decode_bytes``;
    ``size`` is its size before a JPEG draft scaled ``img``."""
    needed = img.width * img.height * _bytes_per_pixel(img.mode)
    kind = img.format or "image"
    if img.format in _DRAFT_FORMATS and _jpeg_buffers_coefficients(img, raw):
        needed += _jpeg_coefficient_bytes(img.layer, *size)  # type: ignore[attr-defined]
        kind = f"multi-scan {kind}"
    if needed > limits.max_decode_bytes:
        width, height = size
        raise ImageError(
            f"image too large: decoding a {width}x{height} {kind} takes {needed // 10**6} MB,"
            f" over the limit of {limits.max_decode_bytes // 10**6} MB"
        )


def _bytes_per_pixel(mode: str) -> int:
    """What Pillow stores a pixel of ``mode`` in: every mode of over one band takes 4 bytes."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _jpeg_buffers_coefficients(img: Image.Image, raw: bytes) -> bool:
    """Whether libjpeg keeps the whole image's coefficients: a progressive JPEG, or one whose
    first scan holds fewer components than the image (libjpeg's has_multiple_scans)."""
    components = len(img.layer)  # type: ignore[attr-defined]  # a JpegImageFile's
    return bool(img.info.get("progressive")) or _first_scan_components(raw) < components


def _first_scan_components(raw: bytes) -> int:
    """The component count of a JPEG's first scan (its SOS marker); 0 when there is none."""
    at = 2
    while at + 4 < len(raw):
        if raw[at] != 0xFF or raw[at + 1] == 0xFF:
            at += 1  # garbage or fill bytes between segments, skipped like libjpeg does
        elif raw[at + 1] == 0xDA:
            return raw[at + 4]
        elif 0xD0 <= raw[at + 1] <= 0xD8 or raw[at + 1] == 0x01:
            at += 2  # markers without a length
        else:
            at += 2 + int.from_bytes(raw[at + 2 : at + 4], "big")
    return 0


def _jpeg_coefficient_bytes(
    layers: list[tuple[int, int, int, int]], width: int, height: int
) -> int:
    """2 bytes for each sample of each component (id, h, v, table), in whole 8x8 blocks."""
    h_max = max(h for _, h, _, _ in layers) or 1
    v_max = max(v for _, _, v, _ in layers) or 1
    total = 0
    for _, h, v, _ in layers:
        blocks_across = -(-width * h // (8 * h_max))
        blocks_down = -(-height * v // (8 * v_max))
        total += blocks_across * blocks_down * 64 * 2
    return total


def _ico_frame_sizes(raw: bytes) -> Iterator[tuple[int, int]]:
    """The real size of every frame of an ICO, from the PNG or BMP header it embeds: the sizes
    its directory declares are single bytes, and Pillow trusts them to pick a frame."""
    count = int.from_bytes(raw[4:6], "little")
    for entry in range(6, 6 + 16 * count, 16):
        offset = int.from_bytes(raw[entry + 12 : entry + 16], "little")
        header = raw[offset : offset + 24]
        if len(header) < 16:
            continue  # Pillow refuses it as truncated
        if header.startswith(_PNG_MAGIC):
            if len(header) == 24 and header[12:16] == b"IHDR":
                yield struct.unpack(">II", header[16:24])
        elif header.startswith(b"\x0c\x00\x00\x00"):  # BITMAPCOREHEADER: 16-bit sides
            width, height = struct.unpack("<HH", header[4:8])
            yield width, height // 2  # an icon's BMP holds its AND mask under the image
        else:
            width, height = struct.unpack("<ii", header[4:12])
            yield abs(width), abs(height) // 2


def _check_tiles(img: Image.Image, limits: ImageLimits) -> None:
    """A TIFF's tile is decoded whole, into a buffer of its own, however small the image."""
    tags = getattr(img, "tag_v2", {})
    tile_width, tile_height = tags.get(322), tags.get(323)  # TileWidth, TileLength
    if isinstance(tile_width, int) and isinstance(tile_height, int):
        _check_bounds(tile_width, tile_height, limits, "a TIFF tile of ")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "out of memory"
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation, 1 when absent or unreadable."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation)
        return value if isinstance(value, int) and value in _TRANSPOSE else 1
    except Exception:
        return 1


def _to_rgb(img: Image.Image, factor: int = 1) -> Image.Image:
    """``img`` in RGB, shrunk ``factor`` times; a large image is converted a strip at a time."""
    mode = img.mode
    if mode == "RGB":
        return _shrink(img, factor)
    if mode.startswith(("I", "F")):
        gray = Image.fromarray(_scale_to_uint8(np.asarray(img), mode), "L")
        return _shrink(gray, factor).convert("RGB")
    width, height = img.size
    if width * height <= _STRIP_PIXELS:
        return _shrink(_strip_to_rgb(img), factor)
    rows = max(factor, _STRIP_PIXELS // width // factor * factor)
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        strip = _strip_to_rgb(img.crop((0, top, width, min(height, top + rows))))
        out.paste(_shrink(strip, factor), (0, top // factor))
    return out


def _strip_to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.has_transparency_data:
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba)
        return background
    return img.convert("RGB")


def _shrink(img: Image.Image, factor: int) -> Image.Image:
    return img.reduce(factor) if factor > 1 else img


def _unidentified(raw: bytes) -> str:
    """Why Pillow could not open ``raw``: a damaged file of a known kind, or not an image."""
    head = raw[:32]
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "unsupported image format: HEIC/HEIF"
    start = raw[:1024].lstrip().lower()
    if start.startswith((b"<?xml", b"<svg", b"<!doctype svg")) and b"<svg" in start:
        return "unsupported image format: SVG (a vector image)"
    claimed = _claimed_format(head) if sniff_image(head) else None
    if claimed is None:
        return "not an image (unrecognised format)"
    if claimed not in _formats():
        return f"unsupported image format: {claimed} (this Pillow cannot read it)"
    return f"corrupt or truncated {claimed} header"


def _claimed_format(head: bytes) -> str:
    """The Pillow format ``head`` claims; call only when sniff_image(head) holds."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG"):
        return "PNG"
    if head.startswith(b"GIF8"):
        return "GIF"
    if head.startswith((b"II", b"MM")):
        return "TIFF"
    if head.startswith(b"RIFF"):
        return "WEBP"
    if head[4:8] == b"ftyp":
        return "AVIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    return "PPM"


def _scale_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """16-bit data keeps its scale (divide by 256); floats and other ranges are stretched."""
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize == 2:
        return (pixels >> 8).astype(np.uint8)
    if mode != "F" and pixels.size and pixels.min() >= 0 and pixels.max() <= 0xFFFF:
        return (pixels >> 8).astype(np.uint8)
    values = np.nan_to_num(pixels.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return ((values - low) * (255.0 / (high - low)) + 0.5).astype(np.uint8)
