"""A self-contained tour: generate sample pictures, index them, search by image and text."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .encoders import DEFAULT_MODEL
from .errors import LookalikeError

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
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def run(
    workdir: Path | None = None,
    model: str = DEFAULT_MODEL,
    weights: str | None = None,
    per_kind: int = 8,
) -> None:
    """Index generated samples into a collection, then search it by image, id and text."""
    from .collection import Collection

    root = Path(workdir or tempfile.mkdtemp(prefix="lookalike-demo-"))
    manifest = write_samples(root / "samples", per_kind)
    print(
        f"wrote {sum(1 for _ in manifest.parent.glob('*.jpg'))} sample images to {manifest.parent}"
    )
    if model == DEFAULT_MODEL and weights is None and not _hub_reachable():
        print(
            "The model hub cannot be reached, so the demo uses ViT-B-32 with RANDOM weights:\n"
            "the plumbing and speed are real, the rankings are not. With internet (or\n"
            "--model open_clip:ViT-B-32 --weights FILE) it uses the trained model."
        )
        model, weights = "open_clip:ViT-B-32", str(_random_weights(root, "ViT-B-32"))
    try:
        collection = Collection.create(root / "collection", model, weights=weights, exist_ok=True)
    except LookalikeError as error:
        raise LookalikeError(
            f"{error}\nThe default model downloads its weights on first use; offline, pass "
            "--model open_clip:ViT-B-32 --weights FILE with a local checkpoint."
        ) from error
    with collection:
        report = collection.add(manifest)
        print(f"indexed: {json.dumps(report.to_dict())}")
        query = next(manifest.parent.glob("red-circle-*.jpg"))
        _show(f"image {query.name}", collection.search(image=query.read_bytes(), k=5))
        _show(
            "more like id 0, only stripes",
            collection.search(id=0, k=5, filter={"shape": "stripes"}),
        )
        if collection.encoder.supports_text:
            _show("text 'a blue triangle'", collection.search(text="a blue triangle", k=5))
        print(f"collection: {collection.path}  ({len(collection)} images)")


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _random_weights(root: Path, arch: str) -> Path:
    import open_clip
    import torch

    path = root / f"random-{arch}.pt"
    if not path.exists():
        torch.save(open_clip.create_model(arch).state_dict(), path)
    return path


def _show(title: str, hits: list) -> None:
    print(f"\nsearch by {title}:")
    for rank, hit in enumerate(hits, start=1):
        print(f"  {rank:2d}  {hit.score:.3f}  {Path(hit.locator).name}  {hit.metadata}")
