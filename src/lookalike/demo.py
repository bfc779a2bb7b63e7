"""A self-contained tour: generate sample pictures, index them, search by image and text."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .encoders import DEFAULT_MODEL

SHAPES = ("circle", "square", "triangle", "stripes")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 30),
    "black": (20, 20, 20),
}


def draw_image(seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A distinct picture per seed: a coloured background with a few shapes and some noise."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    pen = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        x1, y1 = x0 + int(rng.integers(4, size[0])), y0 + int(rng.integers(4, size[1]))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)((x0, y0, x1, y1), fill=fill)
    noise = rng.integers(-20, 20, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    return image.convert(mode) if mode != "RGB" else image


def draw_scene(shape: str, colour: str, seed: int, side: int = 256) -> Image.Image:
    """A named shape in a named colour on a light background: something CLIP can read."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (side, side), tuple(int(c) for c in rng.integers(200, 256, 3)))
    pen = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    margin = int(rng.integers(side // 10, side // 4))
    box = (margin, margin, side - margin, side - margin)
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "triangle":
        pen.polygon(
            [(side // 2, margin), (margin, side - margin), (side - margin, side - margin)],
            fill=fill,
        )
    else:
        for x in range(0, side, side // 8):
            pen.rectangle((x, 0, x + side // 16, side), fill=fill)
    return image


def write_samples(folder: Path, per_kind: int = 8) -> Path:
    """Sample JPEGs of every shape and colour, with a CSV manifest of their labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,shape,colour"]
    seed = 0
    for shape in SHAPES:
        for colour in COLOURS:
            for _ in range(per_kind):
                name = f"{colour}-{shape}-{seed:04d}.jpg"
                draw_scene(shape, colour, seed).save(folder / name, quality=90)
                rows.append(f"{name},{shape},{colour}")
                seed += 1
    manifest = folder / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest


def run(
    workdir: Path | None = None,
    model: str = DEFAULT_MODEL,
    weights: str | None = None,
    per_kind: int = 8,
    fallback_arch: str = "ViT-B-32",
) -> None:
    """Index generated samples into a collection, then search it by image, id and text.

    Without the default model's weights (offline), it runs ``fallback_arch`` with seeded
    random weights: the same results on every run, but rankings that mean nothing.
    """
    from .cli import progress_bar
    from .collection import Collection
    from .encoders.hub import ModelUnavailableError

    root = Path(workdir or tempfile.mkdtemp(prefix="lookalike-demo-"))
    manifest = write_samples(root / "samples", per_kind)
    count = len(SHAPES) * len(COLOURS) * per_kind
    print(f"1/4  wrote {count} sample pictures ({len(SHAPES)} shapes x {len(COLOURS)} colours)")
    print(f"     to {manifest.parent}, labelled in {manifest.name}")
    print(f"2/4  loading {model} (the first run exports it once: about a minute on a laptop)")
    try:
        collection = Collection.create(root / "collection", model, weights=weights, exist_ok=True)
    except ModelUnavailableError as error:
        if model != DEFAULT_MODEL or weights is not None:
            raise
        print(
            f"     {error.args[0].split('. ')[0]}.\n"
            f"     So the demo runs {fallback_arch} with RANDOM weights (seeded: every run gives\n"
            "     the same results): the plumbing and speed are real, the rankings are not.\n"
            "     With internet, or --model open_clip:ViT-B-32 --weights FILE, it uses the\n"
            "     trained model."
        )
        model, weights = f"open_clip:{fallback_arch}", str(_random_weights(root, fallback_arch))
        collection = Collection.create(root / "collection", model, weights=weights, exist_ok=True)
    with collection:
        print(f"3/4  indexing {count} images into {collection.path}")
        with progress_bar(count) as progress:
            report = collection.add(manifest, progress=progress)
            progress.finish_source(report)
        rate = report.seen / report.seconds if report.seconds else 0.0
        print(
            f"     {report.added} added, {report.unchanged} already there, "
            f"{len(report.failed)} skipped, in {report.seconds:.1f} s ({rate:.0f} images/s)"
        )
        print("4/4  searching")
        query = next(iter(sorted(manifest.parent.glob("red-circle-*.jpg"))))
        _show(f"images like {query.name}", collection.search(image=query.read_bytes(), k=5))
        first = Path(collection.get(0).locator).name
        _show(
            f"more like #0 ({first}), only stripes",
            collection.search(id=0, k=5, filter={"shape": "stripes"}),
        )
        if collection.encoder.supports_text:
            _show('the text "a blue triangle"', collection.search(text="a blue triangle", k=5))
        print(f"\ncollection: {collection.path}  ({len(collection)} images). Next:")
        print(f'  lookalike search {collection.path} --text "a green square"')
        print(f"  lookalike serve {collection.path}    # web page at http://127.0.0.1:8000")


def _random_weights(root: Path, arch: str) -> Path:
    """A checkpoint of ``arch`` with random weights from a fixed seed: the same every run."""
    import open_clip
    import torch

    path = root / f"random-{arch}.pt"
    if not path.exists():
        root_logger = logging.getLogger()
        level = root_logger.level
        root_logger.setLevel(logging.ERROR)  # open_clip warns on the root logger about no tag
        try:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                model = open_clip.create_model(arch)
        finally:
            root_logger.setLevel(level)
        torch.save(model.state_dict(), path)
    return path


def _show(title: str, hits: list) -> None:
    print(f"\n  {title}:")
    print("  rank   score  image                     labels")
    for rank, hit in enumerate(hits, start=1):
        labels = " ".join(str(v) for v in hit.metadata.values())
        print(f"  {rank:4d}  {hit.score:6.3f}  {Path(hit.locator).name:<24}  {labels}")
