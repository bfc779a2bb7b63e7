"""Hostile images: a generated corpus of broken, odd and malicious files, and fuzzing.

Ingesting the corpus must finish, add every odd but valid image, report every broken one with
a reason naming the problem, and stay within time and memory bounds; the server must answer
each file with a 4xx (never a 500) and stay up; ``decode_image`` must only ever raise
ImageError, quickly, whatever the bytes.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers import encode
from lookalike import Collection, imaging
from lookalike.demo import draw_image
from lookalike.errors import ImageError
from lookalike.imaging import ImageLimits, decode_image, sniff_image
from lookalike.server import create_app

pytestmark = [  # Pillow's warnings about corrupt data and large images are expected here
    pytest.mark.filterwarnings(r"ignore::UserWarning:PIL\..*"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]

MB = 1024 * 1024
MODEL_SIDE = 32  # the tiny test model's input size, the min_side ingest decodes with
# Fuzzed bytes easily declare an image at the default pixel limit (100 million pixels), which
# takes seconds and gigabytes to decode, legitimately: fuzzing runs under a lower limit instead
FUZZ_LIMITS = ImageLimits(max_pixels=16_000_000)

# What a refusal must say, by kind of problem
EMPTY = "file is empty"
NOT_IMAGE = "not an image"
CORRUPT = "corrupt|truncated"
BROKEN = "corrupt|truncated|not an image"  # a cut so early that no format is left to name
TOO_LARGE = "image too large"
TOO_MANY_FRAMES = "too many frames"
UNSUPPORTED = "unsupported image format"
NOT_REGULAR = "not a regular file"
CANNOT_READ = "cannot read"
ADDED = None  # a valid image, however odd: it must be added
EITHER = "either"  # added, or refused for any reason: only the bounds matter
IGNORED = "ignored"  # a folder walk does not pick it (no image name, no image magic)


@dataclass(frozen=True)
class Hostile:
    """One corpus file: its name, bytes and what must become of it."""

    name: str
    data: bytes
    expect: str | None  # ADDED, EITHER or a pattern the refusal matches
    large: bool = False  # decodes to a large image: spared the server's full-size add path
    ignored: bool = False  # a folder walk skips it: neither added nor reported


# --- crafting files -----------------------------------------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(
    width: int, height: int, *, depth: int = 8, colour: int = 2, idat: bytes, before: bytes = b""
) -> bytes:
    """A PNG from its parts, with correct CRCs; ``before`` goes between IHDR and IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + before
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def apng(frames: int) -> bytes:
    """An APNG animation-control chunk claiming ``frames`` frames."""
    return png_chunk(b"acTL", struct.pack(">II", frames, 0))


def zeros_stream(width: int, height: int, bits_per_pixel: int) -> bytes:
    """The zlib stream of an all-zero PNG image, compressed row block by row block."""
    row = b"\x00" * (1 + (width * bits_per_pixel + 7) // 8)
    packer = zlib.compressobj(9)
    rows = [packer.compress(row * min(256, height - top)) for top in range(0, height, 256)]
    return b"".join(rows) + packer.flush()


def zeros_zlib(size: int, block: int = MB) -> bytes:
    """A zlib stream of ``size`` zero bytes, made in milliseconds: one fully flushed block of
    deflate (which refers to nothing before it) repeated, then the rest."""
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    repeated = head.compress(bytes(block)) + head.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    rest = tail.compress(bytes(size % block)) + tail.flush()
    adler = ((size % 65521) << 16) | 1  # the Adler-32 of zeros
    return b"\x78\xda" + repeated * (size // block) + rest + struct.pack(">I", adler)


def zeros_png(width: int, height: int, colour: int = 0) -> bytes:
    """A valid all-zero 8-bit PNG of any size (gray, RGB or RGBA by ``colour``), tiny."""
    bands = {0: 1, 2: 3, 6: 4}[colour]
    return png(width, height, colour=colour, idat=zeros_zlib((1 + width * bands) * height))


def ico_holding(frame: bytes, declared: int = 16) -> bytes:
    """An icon whose one directory entry declares ``declared`` pixels a side over ``frame``."""
    entry = struct.pack("<BBBBHHII", declared, declared, 0, 0, 1, 32, len(frame), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + frame


def gif_frame_beyond_screen(width: int, height: int) -> bytes:
    """A 16x16 GIF whose first frame's descriptor claims ``width`` x ``height``."""
    data = encode(noise(16, 16, 14).convert("P"), "GIF")
    at = data.index(b"\x2c\x00\x00\x00\x00")  # the image descriptor, at (0, 0)
    return data[: at + 5] + struct.pack("<HH", width, height) + data[at + 9 :]


def tiff_tiled(width: int, height: int, tile: int) -> bytes:
    """An 8-bit gray TIFF of ``width`` x ``height`` in one ``tile`` x ``tile`` tile of 16 bytes."""
    tags = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (277, 3, 1, 1),
        (322, 4, 1, tile),
        (323, 4, 1, tile),
        (324, 4, 1, 8),
        (325, 4, 1, 16),
    ]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
    return b"II*\x00" + struct.pack("<I", 24) + b"\x00" * 16 + ifd + b"\x00" * 4


def with_jpeg_size(data: bytes, width: int, height: int, start: int = 0) -> bytes:
    """``data`` with the frame header of the JPEG starting at ``start`` claiming another size."""
    out = bytearray(data)
    at = start + 2
    while out[at + 1] not in (0xC0, 0xC1, 0xC2):
        at += 2 + struct.unpack(">H", out[at + 2 : at + 4])[0]
    out[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def tiff_second_page_claiming(width: int, height: int) -> bytes:
    """A two-page TIFF whose small first page is followed by one claiming another size."""
    pages = [Image.new("L", (16, 16), 90), Image.new("L", (16, 16), 160)]
    data = bytearray(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    first = struct.unpack_from("<I", data, 4)[0]
    (second,) = struct.unpack_from("<I", data, first + 2 + 12 * data[first])
    (count,) = struct.unpack_from("<H", data, second)
    for entry in range(second + 2, second + 2 + 12 * count, 12):
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<I" if kind == 4 else "<H", data, entry + 8, value)
    return bytes(data)


def mpo_second_frame_claiming(width: int, height: int) -> bytes:
    """A two-frame MPO whose second frame's header claims another size."""
    frames = [noise(16, 16, 15), noise(16, 16, 16)]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    return with_jpeg_size(data, width, height, start=data.index(b"\xff\xd8\xff", 2))


def with_chunk(png_data: bytes, chunk: bytes) -> bytes:
    """``png_data`` with ``chunk`` inserted right after IHDR."""
    return png_data[:33] + chunk + png_data[33:]


def noise(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def animated_gif(frames: int) -> bytes:
    """A real two-frame GIF followed by ``frames`` more 1x1 frames, written by hand."""
    pictures = [draw_image(s, (40, 30)).convert("P") for s in (40, 41)]
    base = encode(pictures[0], "GIF", save_all=True, append_images=pictures[1:], loop=0)
    extra = []
    for i in range(frames):
        control = b"\x21\xf9\x04\x04\x02\x00\x00\x00"  # 20 ms, no transparency
        where = b"\x2c" + struct.pack("<HHHH", i % 40, (i // 40) % 30, 1, 1) + b"\x00"
        pixel = b"\x02\x02" + (b"\x44" if i % 2 else b"\x4c") + b"\x01\x00"  # index 0 or 1
        extra.append(control + where + pixel)
    assert base.endswith(b";")
    return base[:-1] + b"".join(extra) + b";"


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims another size."""
    data = bytearray(encode(noise(16, 16, 7), "JPEG"))
    at = 2
    while data[at + 1] not in (0xC0, 0xC1, 0xC2):
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_claiming(width: int, height: int, strips: int = 1) -> bytes:
    """A little-endian 8-bit gray TIFF header; ``strips`` is what its strip tags claim."""
    tags = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, strips, 8),  # strip offsets: with a huge count, past the end of the file
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, strips, 16),
    ]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
    return b"II*\x00" + struct.pack("<I", 24) + b"\x00" * 16 + ifd + b"\x00" * 4


def tiff_overlapping_strips(width: int, height: int) -> bytes:
    """An uncompressed TIFF of one-row strips that all start a byte after each other."""
    pixels = bytes(range(256)) * (width // 256 + 1) + bytes(height)
    ifd_at = 8 + len(pixels) + len(pixels) % 2
    offsets_at = ifd_at + 2 + 9 * 12 + 4
    counts_at = offsets_at + 4 * height
    tags = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, height, offsets_at),
        (277, 3, 1, 1),
        (278, 4, 1, 1),
        (279, 4, height, counts_at),
    ]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
    offsets = struct.pack(f"<{height}I", *range(8, 8 + height))
    counts = struct.pack(f"<{height}I", *[width] * height)
    head = (b"II*\x00" + struct.pack("<I", ifd_at) + pixels).ljust(ifd_at, b"\x00")
    return head + ifd + bytes(4) + offsets + counts


def webp_claiming(width: int, height: int) -> bytes:
    """An animated WebP (extended header, VP8X) whose canvas claims another size."""
    frames = [noise(4, 4, 9), noise(4, 4, 10)]
    data = bytearray(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = encode(noise(8, 8, 11).convert("P"), "GIF")
    return data[:6] + struct.pack("<HH", width, height) + data[10:]


def bmp_claiming(width: int, height: int) -> bytes:
    data = encode(noise(8, 8, 12), "BMP")
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


def random_bytes(seed: int, size: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    assert not sniff_image(data)
    return data


# Files whose real frame must be checked before decoding: each took 0.5 to 4 s and 250 to
# 960 MB (ICO: 1.9 s, 678 MB; the 100-million-pixel row: 4 s, 957 MB) before decode_image did
HIDDEN_BOMBS = {
    # Pillow decodes an icon's largest declared frame while opening it
    "ico_16x16_holding_13300x13300.ico": lambda: ico_holding(zeros_png(13_300, 13_300, 6)),
    # under the pixel limit, but decoded and converted a whole 100 MB row at a time
    "row_100000000x1.png": lambda: zeros_png(100_000_000, 1),
    "gif_frame_12000x12000_on_16x16.gif": lambda: gif_frame_beyond_screen(12_000, 12_000),
    "tile_16384x16384_of_16x16.tif": lambda: tiff_tiled(16, 16, 16_384),
    # libjpeg keeps a progressive JPEG's coefficients at full size, whatever the draft scale
    "progressive_444_12000x8300.jpg": lambda: with_jpeg_size(
        encode(noise(16, 16, 17), "JPEG", progressive=True, subsampling=0), 12_000, 8_300
    ),
}

# --- the corpus --------------------------------------------------------------------------------


@functools.cache
def hostile_corpus() -> tuple[Hostile, ...]:
    """Every hostile file, generated: odd but valid images first, then broken ones."""
    files: list[Hostile] = []

    def add(name: str, data: bytes, expect: str | None, **flags: bool) -> None:
        files.append(Hostile(name, data, expect, **flags))

    # plain good images, for contrast
    for i, fmt in enumerate(["PNG", "JPEG", "WEBP", "GIF"]):
        add(f"good_{i}.{fmt.lower()}", encode(draw_image(i, (48, 40)), fmt), ADDED)

    # odd but valid
    add("one_by_one.png", encode(Image.new("RGB", (1, 1), (200, 10, 10))), ADDED)
    add("one_by_one.jpg", encode(Image.new("RGB", (1, 1), (10, 200, 10)), "JPEG"), ADDED)
    gray16 = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    add("gray_16bit.png", encode(Image.fromarray(gray16)), ADDED)
    rgb16 = np.random.default_rng(3).integers(0, 65536, (24, 32, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    add("rgb_16bit.png", png(32, 24, depth=16, colour=2, idat=zlib.compress(rows)), ADDED)
    add("cmyk.jpg", encode(draw_image(5, (40, 30), "CMYK"), "JPEG"), ADDED)
    add("palette_alpha.png", encode(draw_image(6, (40, 30), "P"), "PNG", transparency=0), ADDED)
    add("palette_alpha.gif", encode(draw_image(7, (40, 30), "P"), "GIF", transparency=0), ADDED)
    add("animated_3000.gif", animated_gif(3000), ADDED)
    frames = [Image.new("RGB", (4, 4), (i % 256, i // 256, 90)) for i in range(3000)]
    add(
        "animated_3000.png",
        encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        ADDED,
    )
    add(
        "animated_300.webp",
        encode(frames[0], "WEBP", save_all=True, append_images=frames[1:300], lossless=True),
        ADDED,
    )
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: a 60 KB EXIF segment
    exif[0x0112] = 6  # and an orientation to apply
    add("huge_exif.jpg", encode(draw_image(8, (40, 30)), "JPEG", exif=exif.tobytes()), ADDED)
    garbage = b"Exif\x00\x00" + random.Random(8).randbytes(60_000)
    add("garbage_exif.jpg", encode(draw_image(9, (40, 30)), "JPEG", exif=garbage), ADDED)
    loop = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00" + struct.pack("<HHII", 0x8769, 4, 1, 8)
    add("exif_loop.jpg", encode(draw_image(10, (40, 30)), "JPEG", exif=loop + b"\x08\x00"), ADDED)
    add("png_named.jpg", encode(draw_image(11, (40, 30))), ADDED)
    add("jpeg_named.png", encode(draw_image(12, (40, 30)), "JPEG"), ADDED)
    add("webp_named.gif", encode(draw_image(13, (40, 30)), "WEBP"), ADDED)
    add("png_without_extension", encode(draw_image(14, (40, 30))), ADDED)
    text = b"".join(png_chunk(b"tEXt", b"k\x00%d" % i) for i in range(20_000))
    add("many_text_chunks.png", with_chunk(encode(draw_image(15, (40, 30))), text), ADDED)
    # a few KB of PNG inflating to a 9900x9900 1-bit image: under the pixel limit, so decoded,
    # but within bounded time and memory
    bomb = png(9_900, 9_900, depth=1, colour=0, idat=zeros_stream(9_900, 9_900, 1))
    add("bomb_9900x9900_1bit.png", bomb, ADDED, large=True)
    # a frame header claiming 60000x2900 (under the limit) over the data of 16x16 pixels
    add("jpeg_claims_60000x2900.jpg", jpeg_claiming(60_000, 2_900), EITHER, large=True)
    # rows far longer than Pillow's read blocks, and strips overlapping a byte apart: both took
    # Pillow minutes (quadratic re-joining of blocks) before decode_image guarded against them
    add("canvas_4000000x4.webp", webp_claiming(4_000_000, 4), EITHER, large=True)
    add("strips_a_byte_apart.tif", tiff_overlapping_strips(20_000, 5_000), EITHER, large=True)

    # not images at all
    add("empty.jpg", b"", EMPTY)
    add("empty.png", b"", EMPTY)
    for i, ext in enumerate(["jpg", "png", "gif", "webp", "tif", "bmp"]):
        add(f"random_{i}.{ext}", random_bytes(i, 50 + 997 * i), NOT_IMAGE)
    add("text.png", b"hello, I am a text file with a picture's name\n" * 20, NOT_IMAGE)
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    svg += b'<rect width="10" height="10" fill="red"/></svg>\n'
    add("svg_named.png", svg, UNSUPPORTED)
    add("drawing.svg", svg, UNSUPPORTED, ignored=True)
    heic = struct.pack(">I", 24) + b"ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200
    add("heic_named.jpg", heic, UNSUPPORTED)
    add("photo.heic", heic, UNSUPPORTED, ignored=True)
    add("notes.txt", b"just some notes\n", NOT_IMAGE, ignored=True)

    # headers claiming huge sizes
    add("claims_100000x100000.png", png(100_000, 100_000, idat=zeros_stream(8, 8, 24)), TOO_LARGE)
    zip_bomb = png(30_000, 30_000, depth=8, colour=2, idat=zeros_stream(300, 300, 24))
    add("zip_bomb_30000x30000.png", zip_bomb, TOO_LARGE)
    add("claims_65535x65535.jpg", jpeg_claiming(65_535, 65_535), TOO_LARGE)
    add("claims_65535x65535.gif", gif_claiming(65_535, 65_535), TOO_LARGE)
    add("claims_100000x100000.bmp", bmp_claiming(100_000, 100_000), TOO_LARGE)
    add("claims_100000x100000.tif", tiff_claiming(100_000, 100_000), TOO_LARGE)
    add("claims_16384x16384.webp", webp_claiming(16_384, 16_384), TOO_LARGE)
    add(
        "claims_20000_frames.png",
        with_chunk(encode(draw_image(16, (8, 8))), apng(20_000)),
        TOO_MANY_FRAMES,
    )
    add("tiff_claims_1e8_strips.tif", tiff_claiming(16, 16, strips=100_000_000), CORRUPT)
    # real sizes behind small declared ones: each took seconds and hundreds of MB to decode
    for name, data in HIDDEN_BOMBS.items():
        add(name, data(), TOO_LARGE)

    # zero sizes
    add("zero_by_zero.png", png(0, 0, idat=zlib.compress(b"")), CORRUPT)
    add("zero_width.png", png(0, 10, idat=zlib.compress(b"")), CORRUPT)
    add("zero_by_zero.bmp", bmp_claiming(0, 0), f"{CORRUPT}|invalid image size")

    # broken structure
    plain = encode(draw_image(17, (40, 30)))
    add("bad_ihdr_crc.png", plain[:29] + b"\x00\x00\x00\x00" + plain[33:], CORRUPT)
    add("garbage_idat.png", png(40, 30, idat=random_bytes(100, 3000)), CORRUPT)
    add(
        "empty_idat_x100000.png",
        png(8, 8, idat=b"", before=png_chunk(b"IDAT", b"") * 100_000),
        CORRUPT,
    )
    text_bomb = png_chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(b"\x00" * 50 * MB))
    add("ztxt_bomb.png", with_chunk(plain, text_bomb), CORRUPT)
    icc_bomb = png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * 50 * MB))
    add("iccp_bomb.png", with_chunk(plain, icc_bomb), CORRUPT)
    add("png_magic_then_noise.png", b"\x89PNG\r\n\x1a\n" + random_bytes(101, 2000), CORRUPT)
    add("jpeg_magic_then_noise.jpg", b"\xff\xd8\xff\xe0" + random_bytes(102, 2000), CORRUPT)
    gif = encode(noise(8, 8, 13).convert("P"), "GIF")
    palette = 3 << ((gif[10] & 7) + 1)  # the global colour table's size
    add("gif_without_frames.gif", gif[: 13 + palette] + b";", CORRUPT)

    # truncated at many offsets
    for fmt, ext in [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp")]:
        data = encode(noise(64, 48, 20 + len(ext)) if fmt != "GIF" else noise(64, 48, 30), fmt)
        for fraction in (0.0005, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
            cut = max(1, int(len(data) * fraction))
            add(f"truncated_{fmt.lower()}_{cut:05d}.{ext}", data[:cut], BROKEN)
    return tuple(files)


def write_corpus(folder: Path) -> dict[str, str | None]:
    """Writes the corpus (plus file system oddities where the platform has them) into
    ``folder``; returns {file name: expectation}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for hostile in hostile_corpus():
        (folder / hostile.name).write_bytes(hostile.data)
        expected[hostile.name] = IGNORED if hostile.ignored else hostile.expect
    (folder / "folder.jpg").mkdir()  # a directory with an image's name
    expected["folder.jpg"] = IGNORED
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.jpg")  # reading it would wait forever for a writer
        expected["pipe.jpg"] = NOT_REGULAR
    if hasattr(os, "symlink"):
        os.symlink("loop.png", folder / "loop.png")
        expected["loop.png"] = CANNOT_READ
        os.symlink("missing.png", folder / "dangling.png")
        expected["dangling.png"] = CANNOT_READ
        if Path("/dev/zero").exists():
            os.symlink("/dev/zero", folder / "endless.jpg")  # an endless stream of zeros
            expected["endless.jpg"] = NOT_REGULAR
    return expected


# --- the ingest run: in a process of its own, so that its peak memory is its own; started
# --- by the first test that needs it and left running while the server and fuzz tests run

INGEST_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path

    def peak_mb():
        # Linux: VmHWM, since ru_maxrss survives exec and would report the parent's peak
        try:
            with open("/proc/self/status") as status:
                return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
        except OSError:  # macOS: ru_maxrss in bytes, and its own
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def main():
        args = json.loads(sys.argv[1])
        from lookalike import Collection
        col = Collection.create(args["col"], args["spec"], weights=args["weights"])
        col.add(args["warmup"])  # loads and runs the model once
        before = peak_mb()
        started = time.monotonic()
        report = col.add(args["corpus"])
        seconds = time.monotonic() - started
        growth = peak_mb() - before
        added = sorted(Path(item.path).name for item in col.items())
        col.close()
        started = time.monotonic()
        other = Collection.create(args["col"] + "-2", args["spec"], weights=args["weights"])
        parallel = other.add(args["corpus"], workers=2)
        other.close()
        print(json.dumps({
            "added": added,
            "failed": {Path(source).name: reason for source, reason in report.failed},
            "counts": [report.added, report.duplicates, report.unchanged, len(report.failed)],
            "seconds": seconds,
            "growth_mb": growth,
            "parallel_failed": sorted(Path(source).name for source, _ in parallel.failed),
            "parallel_added": parallel.added,
            "parallel_seconds": time.monotonic() - started,
        }))

    if __name__ == "__main__":
        main()
    """
)


@dataclass
class IngestRun:
    process: subprocess.Popen[bytes]
    out: Path
    err: Path
    expected: dict[str, str | None]


@pytest.fixture(scope="module")
def ingest_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, Path]
) -> Iterator[IngestRun]:
    root = tmp_path_factory.mktemp("hostile")
    expected = write_corpus(root / "corpus")
    warmup = root / "warmup"
    warmup.mkdir()
    for i in range(3):
        (warmup / f"w{i}.png").write_bytes(encode(draw_image(900 + i, (40, 30))))
    script = root / "ingest.py"
    script.write_text(INGEST_SCRIPT, encoding="utf-8")
    spec, weights = tiny_clip
    args = {
        "col": str(root / "col"),
        "spec": spec,
        "weights": str(weights),
        "warmup": str(warmup),
        "corpus": str(root / "corpus"),
    }
    out, err = root / "stdout", root / "stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(script), json.dumps(args)], stdout=stdout, stderr=stderr, cwd=root
        )
    yield IngestRun(process, out, err, expected)
    if process.poll() is None:
        process.kill()
        process.wait()


@dataclass
class Ingested:
    expected: dict[str, str | None]  # file name: expectation
    result: dict[str, Any]  # what the ingest script printed


@pytest.fixture(scope="module")
def ingested(ingest_run: IngestRun) -> Ingested:
    """The ingest run's outcome; it must end, and well."""
    try:
        code = ingest_run.process.wait(timeout=120)  # a hang fails here, not the whole suite
    except subprocess.TimeoutExpired:
        ingest_run.process.kill()
        pytest.fail("ingesting the hostile corpus did not finish in 120 s")
    assert code == 0, ingest_run.err.read_text(errors="replace", encoding="utf-8")[-4000:]
    return Ingested(ingest_run.expected, json.loads(ingest_run.out.read_text(encoding="utf-8")))


# --- the server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(
    ingest_run: IngestRun, tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, Path]
) -> Iterator[TestClient]:
    """A server over a small collection of its own (asking for ``ingest_run`` starts the ingest
    process first, so that both run at once)."""
    spec, weights = tiny_clip
    col = Collection.create(tmp_path_factory.mktemp("hostile-server") / "c", spec, weights=weights)
    col.add_images([encode(draw_image(800 + i, (40, 30))) for i in range(4)])
    with TestClient(create_app({"c": col}), raise_server_exceptions=False) as test_client:
        yield test_client
    col.close()


@pytest.fixture(scope="module")
def fuzz_client(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, Path]
) -> Iterator[TestClient]:
    """A server whose collection decodes under FUZZ_LIMITS."""
    spec, weights = tiny_clip
    path = tmp_path_factory.mktemp("hostile-fuzz") / "c"
    col = Collection.create(path, spec, weights=weights, limits=FUZZ_LIMITS)
    col.add_images([encode(draw_image(700 + i, (40, 30))) for i in range(2)])
    with TestClient(create_app({"c": col}), raise_server_exceptions=False) as test_client:
        yield test_client
    col.close()


SEARCH = "/v1/collections/c/search"
ITEMS = "/v1/collections/c/items"


def check_answer(response: Any, hostile: Hostile, how: str) -> None:
    where = f"{how} {hostile.name}: {response.status_code} {response.text[:300]}"
    assert response.status_code != 500, where
    if hostile.expect is ADDED:
        assert response.status_code == 200, where
    elif hostile.expect == EITHER:
        assert response.status_code == 200 or 400 <= response.status_code < 500, where
    elif how == "upload" and response.status_code == 200:
        # past a header check an upload is decoded once, by the ingest, which reports the
        # file as failed (as `lookalike index` does), with the reason
        report = response.json()
        assert report["added"] == 0 and len(report["failed"]) == 1, where
        assert re.search(hostile.expect, report["failed"][0]["reason"]), where
    else:
        assert 400 <= response.status_code < 500, where
        assert re.search(hostile.expect, response.json()["error"]["message"]), where


def test_server_answers_every_hostile_file_without_500(client: TestClient) -> None:
    started = time.monotonic()
    for hostile in hostile_corpus():
        upload = {"image": (hostile.name, hostile.data, "application/octet-stream")}
        check_answer(client.post(SEARCH, files=upload), hostile, "multipart search")
        body = {"image": base64.b64encode(hostile.data).decode(), "k": 3}
        check_answer(client.post(SEARCH, json=body), hostile, "JSON search")
        if not hostile.large:
            files = {"files": (hostile.name, hostile.data, "application/octet-stream")}
            check_answer(client.post(ITEMS, files=files), hostile, "upload")
    assert client.get("/health").status_code == 200
    assert client.post(SEARCH, json={"text": "a red square", "k": 3}).status_code == 200
    assert time.monotonic() - started < 30


# --- fuzzing -----------------------------------------------------------------------------------

SEEDS = {
    "png": encode(noise(16, 12, 50)),
    "jpeg": encode(noise(16, 12, 51), "JPEG"),
    "gif": encode(noise(16, 12, 52).convert("P"), "GIF"),
    "webp": encode(noise(16, 12, 53), "WEBP"),
    "webp_lossless": encode(noise(16, 12, 54), "WEBP", lossless=True),
    "webp_animated": encode(
        noise(16, 12, 57), "WEBP", save_all=True, append_images=[noise(16, 12, 58)], lossless=True
    ),
    "tiff": encode(noise(16, 12, 55), "TIFF"),
    "bmp": encode(noise(16, 12, 56), "BMP"),
}
MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP"]
MAGICS += [b"II*\x00", b"BM", b"\x00\x00\x01\x00"]

edits = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete"]),
        st.integers(0, 1 << 16),
        st.integers(0, 255),
    ),
    max_size=8,
)


def mutate(data: bytes, changes: list[tuple[str, int, int]], cut: int | None) -> bytes:
    buffer = bytearray(data)
    for change, position, value in changes:
        at = position % (len(buffer) + 1)
        if change == "insert":
            buffer[at:at] = bytes([value]) * (1 + value % 8)
        elif at < len(buffer):
            if change == "flip":
                buffer[at] ^= 1 << (value % 8)
            elif change == "set":
                buffer[at] = value
            else:
                del buffer[at : at + 1 + value % 8]
    return bytes(buffer if cut is None else buffer[: cut % (len(buffer) + 1)])


mutated = st.builds(
    mutate,
    st.sampled_from(sorted(SEEDS)).map(SEEDS.get),
    edits,
    st.none() | st.integers(0, 1 << 16),
)
noise_bytes = st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGICS), st.binary())
hostile_bytes = mutated | noise_bytes


def decode_or_refuse(data: bytes) -> float:
    """CPU seconds taken; fails unless the bytes decode to RGB or are refused with ImageError."""
    started = time.process_time()
    try:
        decoded = decode_image(data, limits=FUZZ_LIMITS, min_side=MODEL_SIDE)
    except ImageError as error:
        assert str(error)
    else:
        assert decoded.image.mode == "RGB"
        assert min(decoded.image.size) >= 1
    return time.process_time() - started


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(hostile_bytes)
def test_decode_only_raises_image_error_and_is_fast(data: bytes) -> None:
    assert decode_or_refuse(data) < 2


@hypothesis.settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(hostile_bytes)
def test_server_search_never_answers_500(fuzz_client: TestClient, data: bytes) -> None:
    response = fuzz_client.post(SEARCH, files={"image": ("fuzz.png", data, "image/png")})
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    assert fuzz_client.get("/health").status_code == 200


# --- the strip-wise conversion behind the bounded memory ---------------------------------------


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "1", "CMYK", "RGB"])
def test_large_images_convert_in_strips_exactly(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the real threshold is 4 megapixels; lowered here so that small images take the same path
    monkeypatch.setattr(imaging, "_STRIP_PIXELS", 10_000)
    rng = np.random.default_rng(7)
    rgba = Image.fromarray(rng.integers(0, 256, (157, 301, 4), dtype=np.uint8), "RGBA")
    image = rgba.getchannel(0) if mode == "P" else rgba.convert(mode)
    if mode == "P":
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())  # L becomes P
    options = {"transparency": 3} if mode == "P" else {}
    data = encode(image, "TIFF" if mode == "CMYK" else "PNG", **options)
    with Image.open(io.BytesIO(data)) as reference:
        reference.load()
        if reference.has_transparency_data:
            rgba_ref = reference.convert("RGBA")
            whole = Image.new("RGB", reference.size, (255, 255, 255))
            whole.paste(rgba_ref, mask=rgba_ref)
        else:
            whole = reference.convert("RGB")
    assert np.array_equal(np.asarray(decode_image(data).image), np.asarray(whole))
    shrunk = decode_image(data, min_side=10)  # 157 // (3 * 10): shrunk 5 times, by strips of 30
    assert (shrunk.width, shrunk.height) == (301, 157)
    assert np.array_equal(np.asarray(shrunk.image), np.asarray(whole.reduce(5)))


def test_rows_longer_than_pillows_read_blocks_take_linear_time() -> None:
    # Pillow re-joins 64 KiB blocks until a row fits: this took 5 s (53 s at 11.4 million pixels
    # wide) before decode_image let a block hold a row
    data = webp_claiming(8_000_000, 4)
    started = time.process_time()
    decoded = decode_image(data, min_side=MODEL_SIDE, limits=ImageLimits(max_side=8_000_000))
    assert time.process_time() - started < 2
    assert (decoded.width, decoded.height) == (8_000_000, 4)


# --- real frame sizes, checked before decoding, in a process of its own to measure its peak ----

DECODE_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    from lookalike.errors import BadInputError
    from lookalike.imaging import decode_image

    def peak_mb():
        # Linux: VmHWM, since ru_maxrss survives exec and would report the parent's peak
        try:
            with open("/proc/self/status") as status:
                return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
        except OSError:  # macOS: ru_maxrss in bytes, and its own
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    data = open(sys.argv[1], "rb").read()
    before, started = peak_mb(), time.monotonic()
    try:
        decoded = decode_image(data, min_side=224)
        error = None
    except BadInputError as exc:
        error = str(exc)
    print(json.dumps({
        "error": error, "seconds": time.monotonic() - started, "growth_mb": peak_mb() - before
    }))
    """
)

# Containers of several frames decode their first alone: a later frame's size does not matter
FIRST_FRAME_ONLY = {
    "tiff_second_page_60000x60000.tif": lambda: tiff_second_page_claiming(60_000, 60_000),
    "mpo_second_frame_60000x60000.jpg": lambda: mpo_second_frame_claiming(60_000, 60_000),
}


@pytest.mark.parametrize("name", [*HIDDEN_BOMBS, *FIRST_FRAME_ONLY])
def test_real_frame_sizes_bound_decoding_time_and_memory(name: str, tmp_path: Path) -> None:
    make = HIDDEN_BOMBS.get(name) or FIRST_FRAME_ONLY[name]
    (tmp_path / name).write_bytes(make())
    (tmp_path / "decode.py").write_text(DECODE_SCRIPT, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(tmp_path / "decode.py"), str(tmp_path / name)],
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
    result = json.loads(run.stdout)
    if name in HIDDEN_BOMBS:
        assert result["error"] and re.match(TOO_LARGE, result["error"]), result
    else:
        assert result["error"] is None, result
    assert result["growth_mb"] < 100, result
    assert result["seconds"] < 1, result


# --- ingest, checked last: it ran meanwhile -----------------------------------------------------


def test_ingest_adds_the_valid_and_reports_the_broken(ingested: Ingested) -> None:
    result, expected = ingested.result, ingested.expected
    added, failed = set(result["added"]), result["failed"]
    assert not added & set(failed)
    for name, expect in expected.items():
        if expect is ADDED:
            assert name in added, f"{name} not added: {failed.get(name)}"
        elif expect == EITHER:
            assert name in added or failed[name], name
        elif expect == IGNORED:
            assert name not in added and name not in failed, name
        else:
            assert name in failed, f"{name} was added, not refused"
            assert re.search(expect, failed[name]), f"{name}: {failed[name]!r} !~ {expect!r}"
    assert set(failed) <= set(expected)  # nothing but the corpus was looked at
    assert result["counts"] == [len(added) - 3, 0, 0, len(failed)]  # 3 warm-up images


def test_ingest_time_and_memory_are_bounded(ingested: Ingested) -> None:
    result = ingested.result
    assert result["seconds"] < 20, result
    # the 9900x9900 bomb decodes to 98 MB at one byte a pixel and is shrunk strip by strip
    assert result["growth_mb"] < 500, result


def test_ingest_with_worker_processes_agrees(ingested: Ingested) -> None:
    result = ingested.result
    assert result["parallel_failed"] == sorted(result["failed"])
    assert result["parallel_added"] == len(result["added"]) - 3
    assert result["parallel_seconds"] < 30, result
