"""Ray ingest benchmark: `ray_ingest` vs the single-process `Collection.add`, same input.

    python bench/ray_ingest.py --n 256 --repeats 2     # one command; prints a table

Same photos and model as bench/ingest.py (generated 1024x768 JPEGs; open_clip ViT-B-32 with
random weights saved to a local checkpoint, no download). Each variant indexes the folder
into a fresh collection; variants alternate so that machine noise hits them alike, and the
table shows medians. The local Ray instance is started once before timing (as a cluster is
up before a job), so Ray's time includes making the Dataset, starting the encoder actor
(loading the model in it) and streaming the rows back; the single-process run's model is
loaded before timing, as `lookalike index` loads it before its progress bar.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ingest import random_checkpoint, write_photos

from lookalike import Collection
from lookalike.distributed import RayOptions, ray_ingest


def cpu_flags() -> str:
    """The CPU model and its vector extensions that matter to the encoder."""
    info = (
        Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").exists() else ""
    )
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), ""
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    wanted = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")]
    return f"{model or platform.processor()}; {os.cpu_count()} cores; {' '.join(wanted)}"


def single(folder: Path, root: Path, model: str, weights: Path, batch: int) -> tuple[float, int]:
    col = Collection.create(root, model, weights=weights)
    _ = col.encoder.image_size
    started = time.perf_counter()
    report = col.add(folder, batch_size=batch)
    seconds = time.perf_counter() - started
    col.close()
    return seconds, report.added


def on_ray(folder: Path, root: Path, model: str, weights: Path, batch: int) -> tuple[float, int]:
    col = Collection.create(root, model, weights=weights)
    _ = col.encoder.image_size
    started = time.perf_counter()
    report = ray_ingest(col, folder, ray=RayOptions(actors=1, batch_size=batch))
    seconds = time.perf_counter() - started
    col.close()
    return seconds, report.added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--arch", default="ViT-B-32")
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="lookalike-ray-bench-"))
    try:
        folder = work / "photos"
        write_photos(folder, args.n)
        weights = random_checkpoint(work, args.arch)
        model = f"open_clip:{args.arch}"
        warm = Collection.create(work / "warm", model, weights=weights)  # export once, cached
        warm.add_images([next(folder.iterdir())])
        warm.close()
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        times: dict[str, list[float]] = {"single process": [], "ray": []}
        for r in range(args.repeats):
            for name, run in (("single process", single), ("ray", on_ray)):
                seconds, added = run(folder, work / f"{name}-{r}", model, weights, args.batch)
                assert added == args.n, (name, added)
                times[name].append(seconds)
                print(f"{name}: {args.n / seconds:.1f} images/s", flush=True)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(times["single process"])
    print(f"\n{args.n} photos, {args.arch} random weights, batch {args.batch}; {cpu_flags()}")
    print(f"ray.init (local, once, not timed below): {ray_start:.1f} s\n")
    print("| variant | seconds | images/s | vs single process |")
    print("| --- | --- | --- | --- |")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"| {name} | {seconds:.1f} | {args.n / seconds:.1f} | {base / seconds:.2f} |")


if __name__ == "__main__":
    main()
