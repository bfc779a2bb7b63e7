"""Ingest benchmark: end-to-end `Collection.add` vs the encoder alone, same model, same run.

    python bench/ingest.py --n 256            # one command; prints a table

Photos are generated 1024x768 JPEGs (gradients, shapes and noise, ~150-250 KB each). The
model is open_clip ViT-B-32 with random weights saved to a local checkpoint (speed does not
depend on weight values). "encoder alone" embeds the already decoded and resized pixels;
"end-to-end" reads, hashes, decodes (JPEG draft mode), resizes, encodes and commits.
Variants (inline decoding, worker processes) alternate with the encoder-alone pass so that
machine noise hits them alike; the table shows the median of the repeats.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lookalike import Collection
from lookalike.imaging import decode_image, to_model_input


def write_photos(folder: Path, n: int) -> list[Path]:
    """n distinct photo-like 1024x768 JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    ys, xs = np.mgrid[0:768, 0:1024]
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([xs * a / 4, ys * b / 3, (xs + ys) * c / 7], axis=-1) % 256
        image = Image.fromarray(base.astype(np.uint8))
        pen = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = rng.integers(0, 1024), rng.integers(0, 768)
            r = int(rng.integers(20, 200))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        image = image.filter(ImageFilter.GaussianBlur(1))
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 12, (768, 1024, 3))
        path = folder / f"photo{i:05d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def random_checkpoint(folder: Path, arch: str) -> Path:
    import open_clip
    import torch

    path = folder / f"random-{arch}.pt"
    torch.save(open_clip.create_model(arch).state_dict(), path)
    return path


def encoder_alone(collection: Collection, pixels: np.ndarray, batch: int) -> float:
    """Images per second of the encoder on ready pixels."""
    started = time.perf_counter()
    for first in range(0, len(pixels), batch):
        collection.encoder.encode_images(pixels[first : first + batch])
    return len(pixels) / (time.perf_counter() - started)


def end_to_end(
    workdir: Path,
    photos: Path,
    spec: str,
    weights: Path,
    runtime: str,
    workers: int,
    batch: int,
    run: int,
) -> float:
    """Images per second of a full ingest into a fresh collection."""
    path = workdir / f"e2e-{workers}-{run}"
    collection = Collection.create(path, spec, weights=weights, runtime=runtime)
    size = collection.encoder.image_size  # model loading is not ingest, nor is the first
    collection.encoder.encode_images(np.zeros((1, size, size, 3), np.uint8))  # run's compile
    report = collection.add(photos, workers=workers, batch_size=batch)
    collection.close()
    shutil.rmtree(path)
    return report.added / report.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lookalike-ingest-"))
    paths = write_photos(workdir / "photos", args.n)
    mean_kb = statistics.mean(p.stat().st_size for p in paths) / 1024
    weights = random_checkpoint(workdir, args.arch)
    spec = f"open_clip:{args.arch}"
    reference = Collection.create(
        workdir / "reference", spec, weights=weights, runtime=args.runtime
    )
    size = reference.encoder.image_size
    pixels = np.stack([to_model_input(decode_image(p, min_side=size).image, size) for p in paths])
    encoder_alone(reference, pixels[: args.batch], args.batch)  # warm-up

    alone: list[float] = []
    e2e: dict[int, list[float]] = {w: [] for w in args.workers}
    for run in range(args.repeats):
        for workers in args.workers:
            alone.append(encoder_alone(reference, pixels, args.batch))
            e2e[workers].append(
                end_to_end(
                    workdir,
                    workdir / "photos",
                    spec,
                    weights,
                    args.runtime,
                    workers,
                    args.batch,
                    run,
                )
            )
    base = statistics.median(alone)
    print(
        f"\n{args.n} JPEG photos 1024x768 (~{mean_kb:.0f} KB), {spec} random weights, "
        f"runtime={args.runtime}, batch {args.batch}, median of {args.repeats}\n"
    )
    print("| variant | images/s | vs encoder alone |")
    print("| --- | --- | --- |")
    print(f"| encoder alone (ready pixels) | {base:.1f} | 1.00 |")
    for workers, rates in e2e.items():
        label = "inline decoding" if workers == 0 else f"{workers} decode worker(s)"
        rate = statistics.median(rates)
        print(f"| end-to-end, {label} | {rate:.1f} | {rate / base:.2f} |")
    reference.close()
    shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
