"""Ingest benchmark: end-to-end `Collection.add` vs the encoder alone, same model, same run.

    python bench/ingest.py --n 192 --size 1024x768     # one command; prints tables
    python bench/ingest.py --n 48 --size 4032x3024     # 12-megapixel camera photos

Photos are generated camera-like JPEGs (quality 90, 4:2:0): a scene of gradients and shapes
drawn at a quarter of the size and upscaled, plus fine texture and sensor noise at full size,
so they compress like photos (~2.7 bits a pixel: ~270 KB at 1024x768, ~4 MB at 4032x3024).
The model is open_clip ViT-B-32 with random weights saved to a local checkpoint (speed does
not depend on weight values).

Three measurements, each a ratio taken within this run so that a busy machine affects both
sides alike, repeated ``--repeats`` times (median and spread printed):

- prepare: per photo, the ingest's preparation (read, hash, JPEG draft decode, resize and crop
  to model input) now vs the previous path (the same with Pillow's bicubic resize), in
  alternation, in this process; with how closely the two agree, and how closely each agrees
  with open_clip's own preprocessing (torchvision Resize + CenterCrop of the full image);
- encoder alone: embedding the already prepared pixels;
- end-to-end: reads, hashes, decodes, resizes, encodes and commits into a fresh collection,
  with decoding inline and in worker processes; each pass alternates with an encoder-alone
  pass, and the ratio is to that pass.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lookalike import Collection
from lookalike.fetch import FetchPolicy
from lookalike.imaging import DEFAULT_LIMITS, decode_image
from lookalike.prepare import PreparedImage, content_hash, prepare, read_bytes
from lookalike.sources import SourceItem


def camera_photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth scene, edges, texture and sensor noise, quality 90."""
    rng = np.random.default_rng(seed)
    w0, h0 = max(1, width // 4), max(1, height // 4)
    ys, xs = np.mgrid[0:h0, 0:w0].astype(np.float32)
    a, b, c = rng.uniform(0.2, 1.0, 3)
    base = np.stack([xs * a, ys * b, (xs + ys) * c / 2], axis=-1) * (1024 / width) % 256
    scene = Image.fromarray(base.astype(np.uint8))
    pen = ImageDraw.Draw(scene)
    for _ in range(40):
        x, y = int(rng.integers(0, w0)), int(rng.integers(0, h0))
        r = int(rng.integers(w0 // 60 + 2, w0 // 5 + 3))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = pen.ellipse if rng.random() < 0.5 else pen.rectangle
        shape((x - r, y - r, x + r, y + r), fill=fill)
    scene = scene.filter(ImageFilter.GaussianBlur(1))
    pixels = np.asarray(scene.resize((width, height), Image.Resampling.BICUBIC), np.int16)
    texture = rng.integers(-20, 21, (height // 2 + 1, width // 2 + 1, 1), dtype=np.int16)
    texture = np.repeat(np.repeat(texture, 2, 0), 2, 1)[:height, :width]
    noisy = pixels + texture + rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_photos(folder: Path, n: int, width: int, height: int) -> list[Path]:
    """n distinct camera-like JPEGs of width x height."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"photo{i:05d}.jpg"
        path.write_bytes(camera_photo(width, height, i))
        paths.append(path)
    return paths


def random_checkpoint(folder: Path, arch: str) -> Path:
    import open_clip
    import torch

    path = folder / f"random-{arch}.pt"
    torch.save(open_clip.create_model(arch).state_dict(), path)
    return path


def previous_prepare(path: Path, size: int) -> np.ndarray:
    """The preparation before this change: read, hash, draft decode, Pillow bicubic resize."""
    data = read_bytes(str(path), DEFAULT_LIMITS, FetchPolicy())
    content_hash(data)
    image = decode_image(data, min_side=size).image
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    square = image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    return np.array(square, dtype=np.uint8)


def current_prepare(path: Path, size: int) -> np.ndarray:
    """What an ingest does now for one photo (``lookalike.prepare.prepare``)."""
    result = prepare(SourceItem(str(path)), size, DEFAULT_LIMITS, FetchPolicy())
    assert isinstance(result, PreparedImage), result
    return result.pixels


def cpu_each(fn: Callable[[Path, int], np.ndarray], paths: list[Path], size: int) -> float:
    """CPU milliseconds per photo, all threads of this process: unlike wall time, this does
    not count the waits of a machine shared with other jobs."""
    started = time.process_time()
    for path in paths:
        fn(path, size)
    return 1000 * (time.process_time() - started) / len(paths)


def reference_inputs(paths: list[Path], arch: str) -> tuple[np.ndarray, tuple, tuple]:
    """open_clip's own preprocessing of the full-size photos (normalised model input), and
    the mean and std it normalises with."""
    import open_clip

    _, _, transform = open_clip.create_model_and_transforms(arch)
    norm = transform.transforms[-1]
    inputs = np.stack([transform(Image.open(p)).numpy() for p in paths])
    return inputs, tuple(norm.mean), tuple(norm.std)


def normalise(pixels: np.ndarray, mean: tuple, std: tuple) -> np.ndarray:
    """uint8 NHWC -> float NCHW, as the model sees it."""
    x = pixels.astype(np.float32) / 255
    return ((x - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(0, 3, 1, 2)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min())


def encoder_alone(collection: Collection, pixels: np.ndarray, batch: int) -> float:
    """Images per second of the encoder on ready pixels."""
    started = time.perf_counter()
    for first in range(0, len(pixels), batch):
        collection.encoder.encode_images(pixels[first : first + batch])
    return len(pixels) / (time.perf_counter() - started)


def end_to_end(
    workdir: Path, photos: Path, spec: str, weights: Path, args: argparse.Namespace, workers: int
) -> float:
    """Images per second of a full ingest into a fresh collection."""
    path = workdir / f"e2e-{workers}"
    collection = Collection.create(path, spec, weights=weights, runtime=args.runtime)
    size = collection.encoder.image_size  # model loading is not ingest, nor is the first
    collection.encoder.encode_images(np.zeros((1, size, size, 3), np.uint8))  # run's compile
    report = collection.add(photos, workers=workers, batch_size=args.batch)
    collection.close()
    shutil.rmtree(path)
    return report.added / report.seconds


def runtime_name(collection: Collection) -> str:
    """The encoder class, with its precision where it has one (OpenVINO's bf16 or f32)."""
    encoder = collection.encoder
    precision = getattr(encoder, "precision", None)
    return type(encoder).__name__ + (f" {precision}" if precision else "")


def spread(values: list[float], digits: int = 2) -> str:
    """Median and range: '0.86 (0.84-0.88)'."""
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=192)
    parser.add_argument("--size", default="1024x768", help="photo WIDTHxHEIGHT")
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    workdir = Path(tempfile.mkdtemp(prefix="lookalike-ingest-"))
    try:
        run(args, workdir, width, height)
    finally:
        shutil.rmtree(workdir)


def run(args: argparse.Namespace, workdir: Path, width: int, height: int) -> None:
    paths = write_photos(workdir / "photos", args.n, width, height)
    mean_kb = statistics.mean(p.stat().st_size for p in paths) / 1024
    weights = random_checkpoint(workdir, args.arch)
    spec = f"open_clip:{args.arch}"
    reference = Collection.create(
        workdir / "reference", spec, weights=weights, runtime=args.runtime
    )
    size = reference.encoder.image_size
    print(
        f"\n{args.n} camera-like JPEGs {width}x{height} (~{mean_kb:.0f} KB), {spec} random "
        f"weights, runtime={args.runtime} ({runtime_name(reference)}), batch {args.batch}, "
        f"{args.repeats} repeats: median (range)\n"
    )

    pixels = np.stack([current_prepare(p, size) for p in paths])
    before = np.stack([previous_prepare(p, size) for p in paths])
    sample = paths[: min(16, len(paths))]
    official, mean, std = reference_inputs(sample, args.arch)
    ours, theirs = (
        normalise(pixels[: len(sample)], mean, std),
        normalise(before[: len(sample)], mean, std),
    )
    vectors_now = reference.encoder.encode_images(pixels[: len(sample)])
    vectors_before = reference.encoder.encode_images(before[: len(sample)])
    print("| agreement (least over photos) | cosine |")
    print("| --- | --- |")
    print(f"| model input, now vs previous prepare | {min_cosine(ours, theirs):.5f} |")
    print(f"| model input, now vs open_clip preprocessing | {min_cosine(ours, official):.5f} |")
    print(
        f"| model input, previous vs open_clip preprocessing | {min_cosine(theirs, official):.5f} |"
    )
    print(f"| embedding, now vs previous prepare | {min_cosine(vectors_now, vectors_before):.5f} |")

    encoder_alone(reference, pixels[: args.batch], args.batch)  # warm-up
    now_ms: list[float] = []
    before_ms: list[float] = []
    alone: list[float] = []
    e2e: dict[int, list[float]] = {w: [] for w in args.workers}
    e2e_ratio: dict[int, list[float]] = {w: [] for w in args.workers}
    for _ in range(args.repeats):
        before_ms.append(cpu_each(previous_prepare, paths, size))
        now_ms.append(cpu_each(current_prepare, paths, size))
        for workers in args.workers:
            rate = encoder_alone(reference, pixels, args.batch)
            alone.append(rate)
            e2e[workers].append(
                end_to_end(workdir, workdir / "photos", spec, weights, args, workers)
            )
            e2e_ratio[workers].append(e2e[workers][-1] / rate)
        print(  # as it goes: on a busy machine a run may not finish
            f"repeat {len(now_ms)}: prepare {now_ms[-1]:.2f} / {before_ms[-1]:.2f} ms; "
            + ", ".join(f"{w} workers {r[-1]:.2f}" for w, r in e2e_ratio.items()),
            flush=True,
        )
    reference.close()

    ratios = [n / b for n, b in zip(now_ms, before_ms, strict=True)]
    print("\n| prepare, one photo | CPU ms | now / previous |")
    print("| --- | --- | --- |")
    print(f"| previous (Pillow bicubic resize) | {spread(before_ms)} | 1.00 |")
    print(f"| now (inline, this process) | {spread(now_ms)} | {spread(ratios)} |")
    print("\n| variant | images/s | vs encoder alone, same repeat |")
    print("| --- | --- | --- |")
    print(f"| encoder alone (ready pixels) | {spread(alone, 1)} | 1.00 |")
    for workers, rates in e2e.items():
        label = "inline decoding" if workers == 0 else f"{workers} decode worker(s)"
        print(f"| end-to-end, {label} | {spread(rates, 1)} | {spread(e2e_ratio[workers])} |")


if __name__ == "__main__":
    main()
