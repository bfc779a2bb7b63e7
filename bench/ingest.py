"""Ingest benchmark: end-to-end `Collection.add` vs the encoder alone, same model, same run.

    python bench/ingest.py --n 96 --size 1024x768 --repeats 3    # one command; prints tables
    python bench/ingest.py --n 24 --size 4032x3024               # 12-megapixel camera photos

Photos are generated camera-like JPEGs (quality 90, 4:2:0): a scene of gradients and shapes
drawn at a quarter of the size and upscaled, plus fine texture and sensor noise at full size,
so they compress like photos (~2.7 bits a pixel: ~270 KB at 1024x768, ~4 MB at 4032x3024).
The model is open_clip ViT-B-32 with random weights saved to a local checkpoint (speed does
not depend on weight values; ``--weights`` reuses one, and with it the runtime's export).

Measured in this process, each a ratio taken within this run so that a busy machine affects
both sides alike, repeated ``--repeats`` times (median and range printed):

- breakdown: CPU milliseconds per photo of each step of preparing it (read, hash, open and
  check headers, JPEG draft decode, EXIF and mode, resize and crop, pickling the pixels as a
  worker process sends them), against the encoder's CPU and wall milliseconds per image;
- encoder alone: embedding the already prepared pixels;
- end-to-end: reads, hashes, decodes, resizes, encodes and commits into a fresh collection,
  preparing in ``--threads`` threads of this process (taking turns with the encoder; 1 is
  inline) and in ``--workers`` worker processes (beside the encoder); each pass alternates
  with an encoder-alone pass, and the ratio is to that pass.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lookalike import Collection, imaging
from lookalike.fetch import FetchPolicy
from lookalike.imaging import DEFAULT_LIMITS, to_model_input
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


def current_prepare(path: Path, size: int) -> np.ndarray:
    """What an ingest does for one photo (``lookalike.prepare.prepare``)."""
    result = prepare(SourceItem(str(path)), size, DEFAULT_LIMITS, FetchPolicy())
    assert isinstance(result, PreparedImage), result
    return result.pixels


STEPS = (
    "read",
    "content hash",
    "open, check headers, draft",
    "JPEG decode (libjpeg-turbo)",
    "EXIF orientation, RGB",
    "resize + crop (to_model_input)",
    "pickle pixels (worker IPC)",
)


def breakdown(paths: list[Path], size: int) -> dict[str, float]:
    """CPU milliseconds per photo of each step of ``prepare`` (the same calls, one by one)."""
    spent = dict.fromkeys(STEPS, 0.0)
    for path in paths:
        times = [time.process_time()]
        data = read_bytes(str(path), DEFAULT_LIMITS, FetchPolicy())
        times.append(time.process_time())
        content_hash(data)
        times.append(time.process_time())
        image = imaging._open_checked(data, DEFAULT_LIMITS)
        image.draft("RGB", (size, size))
        times.append(time.process_time())
        image.load()
        times.append(time.process_time())
        imaging._orientation(image)
        rgb = imaging._to_rgb(image)
        times.append(time.process_time())
        pixels = to_model_input(rgb, size)
        times.append(time.process_time())
        pickle.dumps(pixels)
        times.append(time.process_time())
        for step, before, after in zip(STEPS, times, times[1:], strict=False):
            spent[step] += after - before
    return {step: 1000 * total / len(paths) for step, total in spent.items()}


def prepare_cpu(paths: list[Path], size: int) -> float:
    """CPU milliseconds per photo of ``prepare`` as a whole."""
    started = time.process_time()
    for path in paths:
        current_prepare(path, size)
    return 1000 * (time.process_time() - started) / len(paths)


def encoder_alone(collection: Collection, pixels: np.ndarray, batch: int) -> float:
    """Images per second of the encoder on ready pixels."""
    return encoder_timed(collection, pixels, batch)[0]


def encoder_timed(collection: Collection, pixels: np.ndarray, batch: int) -> tuple[float, float]:
    """Images per second of the encoder on ready pixels, and its CPU ms per image."""
    started, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(pixels), batch):
        collection.encoder.encode_images(pixels[first : first + batch])
    used = time.process_time() - cpu
    return len(pixels) / (time.perf_counter() - started), 1000 * used / len(pixels)


def end_to_end(
    workdir: Path, photos: Path, spec: str, weights: Path, args: argparse.Namespace, variant: str
) -> float:
    """Images per second of a full ingest into a fresh collection; ``variant`` is ``tN`` (N
    threads, taking turns with the encoder) or ``pN`` (N worker processes beside it)."""
    path = workdir / f"e2e-{variant}"
    collection = Collection.create(path, spec, weights=weights, runtime=args.runtime)
    size = collection.encoder.image_size  # model loading is not ingest, nor is the first
    collection.encoder.encode_images(np.zeros((1, size, size, 3), np.uint8))  # run's compile
    count = int(variant[1:])
    options = {"workers": 0, "threads": count} if variant[0] == "t" else {"workers": count}
    report = collection.add(photos, batch_size=args.batch, **options)
    collection.close()
    shutil.rmtree(path)
    return report.added / report.seconds


def variant_label(variant: str) -> str:
    count = int(variant[1:])
    if variant == "t1":
        return "inline (1 thread, between batches)"
    if variant[0] == "t":
        return f"{count} threads, between batches"
    return f"{count} worker process{'es' if count > 1 else ''}, beside the encoder"


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
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--size", default="1024x768", help="photo WIDTHxHEIGHT")
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--workers", type=int, nargs="*", default=[1])
    parser.add_argument("--weights", type=Path, help="a checkpoint of --arch to reuse")
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
    weights = args.weights or random_checkpoint(workdir, args.arch)
    spec = f"open_clip:{args.arch}"
    reference = Collection.create(
        workdir / "reference", spec, weights=weights, runtime=args.runtime
    )
    size = reference.encoder.image_size
    print(
        f"\n{args.n} camera-like JPEGs {width}x{height} (~{mean_kb:.0f} KB), {spec} random "
        f"weights, runtime={args.runtime} ({runtime_name(reference)}), batch {args.batch}, "
        f"{args.repeats} repeats: median (range); load average "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}\n"
    )

    pixels = np.stack([current_prepare(p, size) for p in paths])
    encoder_alone(reference, pixels[: args.batch], args.batch)  # warm-up
    variants = [f"t{n}" for n in args.threads] + [f"p{n}" for n in args.workers]
    steps: list[dict[str, float]] = []
    whole: list[float] = []
    encoder_cpu: list[float] = []
    encoder_wall: list[float] = []
    alone: list[float] = []
    e2e: dict[str, list[float]] = {v: [] for v in variants}
    e2e_ratio: dict[str, list[float]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        rate, cpu = encoder_timed(reference, pixels, args.batch)
        encoder_wall.append(1000 / rate)
        encoder_cpu.append(cpu)
        steps.append(breakdown(paths, size))
        whole.append(prepare_cpu(paths, size))
        for variant in variants[repeat % len(variants) :] + variants[: repeat % len(variants)]:
            rate = encoder_alone(reference, pixels, args.batch)
            alone.append(rate)
            e2e[variant].append(
                end_to_end(workdir, workdir / "photos", spec, weights, args, variant)
            )
            e2e_ratio[variant].append(e2e[variant][-1] / rate)
        print(  # as it goes: on a busy machine a run may not finish
            f"repeat {repeat + 1} (load {os.getloadavg()[0]:.1f}): prepare {whole[-1]:.2f} ms "
            f"CPU, encoder {encoder_cpu[-1]:.1f} ms CPU / {encoder_wall[-1]:.1f} ms wall; "
            + ", ".join(f"{v} {r[-1]:.2f}" for v, r in e2e_ratio.items()),
            flush=True,
        )
    reference.close()

    print("\n| per photo | CPU ms | share of prepare |")
    print("| --- | --- | --- |")
    for step in STEPS:
        values = [s[step] for s in steps]
        share = [s[step] / w for s, w in zip(steps, whole, strict=True)]
        print(f"| {step} | {spread(values)} | {spread(share)} |")
    print(f"| **prepare, whole** (`lookalike.prepare.prepare`) | {spread(whole)} | 1.00 |")
    print(f"| encoder, per image (CPU, all its threads) | {spread(encoder_cpu, 1)} | |")
    print(f"| encoder, per image (wall) | {spread(encoder_wall, 1)} | |")
    print("\n| variant | images/s | vs encoder alone, same repeat |")
    print("| --- | --- | --- |")
    print(f"| encoder alone (ready pixels) | {spread(alone, 1)} | 1.00 |")
    for variant, rates in e2e.items():
        label = variant_label(variant)
        print(f"| end-to-end, {label} | {spread(rates, 1)} | {spread(e2e_ratio[variant])} |")


if __name__ == "__main__":
    main()
