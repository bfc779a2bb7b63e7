"""Cold CLI search benchmark: the wall time of fresh `lookalike search` processes, warm cache.

    python bench/cold_cli.py --runs 5                      # this tree only
    python bench/cold_cli.py --runs 5 --baseline 4cc21e4   # and an older commit, as a ratio

Each run is a new process (`python -m lookalike search COL --text ... -k 5`), so it pays for
imports, opening the collection and loading the model, as a user at a shell does. The model is
open_clip ViT-B-32 with seeded random weights saved to a local checkpoint (no download: the
speed does not depend on the weight values). Every tree gets its own export cache, warmed by
one search of each kind before the timed runs. The baseline tree is `git archive` of the given
commit, run the same way.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUERIES = {"text": ["--text", "a red circle"], "image": ["--image", "IMAGE"]}


def random_checkpoint(folder: Path, arch: str = "ViT-B-32") -> Path:
    """A seeded random-weight open_clip checkpoint (made once per folder)."""
    path = folder / f"random-{arch}.pt"
    if not path.exists():
        import open_clip
        import torch

        torch.manual_seed(0)
        torch.save(open_clip.create_model(arch).state_dict(), path)
    return path


def baseline_tree(folder: Path, rev: str) -> Path:
    """The ``src`` folder of commit ``rev``, extracted under ``folder``."""
    target = folder / f"baseline-{rev}"
    if not (target / "src").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def lookalike(src: Path, cache: Path, *args: str) -> tuple[float, float]:
    """Run the CLI from the tree ``src`` with its own cache; return its (wall, CPU) seconds.

    CPU time (user + system, all threads) does not grow when other work shares the cores,
    where wall time does."""
    env = {**os.environ, "PYTHONPATH": str(src), "LOOKALIKE_CACHE": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lookalike", *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"lookalike {' '.join(args)} failed:\n{done.stderr}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed processes per query kind")
    parser.add_argument("--images", type=int, default=32, help="images in the collection")
    parser.add_argument("--baseline", help="a git commit to compare with, e.g. 4cc21e4")
    parser.add_argument("--kinds", default="text,image", help="query kinds to time")
    parser.add_argument("--runtime", default="auto", help="the --runtime of every search")
    parser.add_argument("--workdir", type=Path, help="keep files here [default: a temp folder]")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lookalike-cold-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "src"))
    from lookalike.demo import write_samples

    weights = random_checkpoint(work)
    samples = work / "samples"
    if not samples.is_dir():
        write_samples(samples, per_kind=max(1, args.images // 20))
    query_image = next(samples.glob("*.jpg"))
    trees = {"this tree": REPO / "src"}
    if args.baseline:
        trees[f"baseline {args.baseline}"] = baseline_tree(work, args.baseline)
    collection = work / "collection"
    if not collection.is_dir():
        lookalike(
            REPO / "src", work / "cache-0", "index", str(samples), "-c", str(collection),
            "--model", "open_clip:ViT-B-32", "--weights", str(weights),
        )  # fmt: skip
    kinds = args.kinds.split(",")
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for number, (label, src) in enumerate(trees.items()):
        cache = work / f"cache-{number}"
        for kind in kinds:
            query = [str(query_image) if a == "IMAGE" else a for a in QUERIES[kind]]
            command = ["search", str(collection), *query, "-k", "5", "--runtime", args.runtime]
            warm, _ = lookalike(src, cache, *command)  # builds the cache entries it needs
            print(f"{label}, {kind}: warm-up {warm:.1f} s", file=sys.stderr)
            times[label, kind] = [lookalike(src, cache, *command) for _ in range(args.runs)]
    cores = os.cpu_count()
    print(f"\n{args.runs} fresh `lookalike search` processes per row, ViT-B-32, {cores} cores")
    print("| tree | query | wall median s | wall min s | CPU median s | vs this tree (wall, CPU) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for (label, kind), runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        mine = times["this tree", kind]
        ratio_wall = wall / statistics.median(w for w, _ in mine)
        ratio_cpu = cpu / statistics.median(c for _, c in mine)
        print(
            f"| {label} | {kind} | {wall:.2f} | {min(w for w, _ in runs):.2f} | {cpu:.2f} "
            f"| {ratio_wall:.1f}x, {ratio_cpu:.1f}x |"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
