"""Duplicates benchmark: ``Collection.duplicates`` over a trained index at a million rows.

    python bench/duplicates.py --n 1000000            # one command; prints a table

A ``vectors:512`` collection of clustered vectors (``Mixture`` of bench/index.py) gets planted
copies: exact copies (a second row with the same content hash and vector, as a collection
written by another tool holds) and near copies (1-3 vectors at a cosine of 0.96-0.995 to their
source). After ``rebuild_index("ivf")``, a fresh process runs ``duplicates()`` and reports its
time and peak resident memory (VmHWM, before and after the call); the groups found are scored
against the planted ones (pair recall and precision, groups recovered exactly). ``--keep``
with ``--workdir`` keeps the collection so a rerun skips the fill and the build.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from index import DIM, Mixture, fill, log

from lookalike import Collection
from lookalike.store import NewRow

PROBE = """
import json, sys, time
from lookalike import Collection
import faiss  # noqa: F401  (imported before the baseline, as a server would have it)
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
path, threshold, exact, out = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
col = Collection.open(path)
before = peak()
shown = [0.0]
def progress(done, total):
    if done / total >= shown[0] + 0.1 or done == total:
        shown[0] = done / total
        print(f"  {done:,}/{total:,} rows searched", file=sys.stderr, flush=True)
started = time.perf_counter()
groups = col.duplicates(threshold, exact=exact, progress=progress)
seconds = time.perf_counter() - started
json.dump([[g.ids, g.exact] for g in groups], open(out, "w"))
kind = col.stats().index
print(json.dumps({"seconds": seconds, "before": before, "after": peak(), "index": kind}))
"""


def at_cosines(source: np.ndarray, cosines: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at the given cosines to the unit vector ``source``."""
    other = rng.standard_normal((len(cosines), len(source))).astype(np.float32)
    other -= np.outer(other @ source, source)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    return cosines[:, None] * source + np.sqrt(1 - cosines**2)[:, None] * other


def plant(path: Path, exact_groups: int, near_groups: int, seed: int = 3) -> list[list[int]]:
    """Add exact and near copies of random rows; the planted groups (ids, source first)."""
    marker = path / "bench-planted.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    col = Collection.open(path)
    col.backend.auto_index = False
    count = col.backend.count
    sources = rng.choice(count, exact_groups + near_groups, replace=False)
    groups: list[list[int]] = []
    exact_rows = col.backend.rows(sources[:exact_groups].tolist())
    copies = [
        NewRow(f"{r.key}-copy", r.content_hash, r.width, r.height, r.bytes, vector)
        for r, vector in zip(
            [exact_rows[int(i)] for i in sources[:exact_groups]],
            col.vectors(sources[:exact_groups]),
            strict=True,
        )
    ]
    with col.backend.writing():
        copy_ids = col.backend.add(copies)
    groups += [[int(s), c] for s, c in zip(sources[:exact_groups], copy_ids, strict=True)]
    vectors, locators, owners = [], [], []
    for g, (source, vector) in enumerate(
        zip(sources[exact_groups:], col.vectors(sources[exact_groups:]), strict=True)
    ):
        made = at_cosines(vector, rng.uniform(0.96, 0.995, int(rng.integers(1, 4))), rng)
        vectors.append(made)
        locators += [f"near-{g}-{j}" for j in range(len(made))]
        owners += [int(source)] * len(made)
    ids = col.add_vectors(np.concatenate(vectors), locators)
    near: dict[int, list[int]] = {}
    for owner, i in zip(owners, ids, strict=True):
        near.setdefault(owner, [owner]).append(i)
    groups += list(near.values())
    col.close()
    marker.write_text(json.dumps(groups), encoding="utf-8")
    return groups


def pairs(groups: list[list[int]]) -> set[tuple[int, int]]:
    return {(a, b) for ids in groups for a, b in itertools.combinations(sorted(ids), 2)}


def run_probe(path: Path, threshold: float, exact: bool, workdir: Path) -> tuple[dict, list]:
    out = workdir / "groups.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), str(threshold), "1" if exact else "0", str(out)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        encoding="utf-8",
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), json.loads(
        out.read_text(encoding="utf-8")
    )


def cpu_flags() -> str:
    """The CPU's model and its vector-instruction flags (what Faiss and BLAS can use)."""
    model, flags = platform.processor(), set()
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    vector = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni") if f in flags]
    return f"{model}, {os.cpu_count()} cores, flags {' '.join(vector)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="rows, planted copies included")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--exact-groups", type=int, default=None, help="[default: n / 1000]")
    parser.add_argument("--near-groups", type=int, default=None, help="[default: n / 1000]")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--keep", action="store_true", help="keep the collection; a rerun with --workdir reuses it"
    )
    args = parser.parse_args()
    exact_groups = args.exact_groups if args.exact_groups is not None else args.n // 1000
    near_groups = args.near_groups if args.near_groups is not None else args.n // 1000
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    path = workdir / f"duplicates-{args.n}"
    mixture = Mixture()
    load = [os.getloadavg()[0]]
    base = args.n - exact_groups - near_groups * 2  # near groups hold 2 copies on average
    fill_s = fill(path, base, mixture, mixture.model(0))
    planted = plant(path, exact_groups, near_groups)
    with Collection.open(path) as col:
        rows = len(col)
        build_s = 0.0
        if col.stats().index != "ivf" or not (path / "bench-built").exists():
            log(f"{rows:,} rows; building the IVF index")
            started = time.perf_counter()
            col.rebuild_index("ivf")
            build_s = time.perf_counter() - started
            (path / "bench-built").touch()
        params = col.backend.index.params  # type: ignore[attr-defined]
    log("exact copies only (GROUP BY content hash)")
    exact_run, exact_found = run_probe(path, args.threshold, True, workdir)
    log(f"near copies at cosine >= {args.threshold}")
    load.append(os.getloadavg()[0])
    near_run, found = run_probe(path, args.threshold, False, workdir)
    load.append(os.getloadavg()[0])

    found_pairs, planted_pairs = pairs([ids for ids, _ in found]), pairs(planted)
    hit = len(found_pairs & planted_pairs)
    planted_ids = {i for ids in planted for i in ids}
    recovered = {frozenset(ids) for ids, _ in found} & {frozenset(ids) for ids in planted}
    unplanted = sum(1 for ids, _ in found if not planted_ids & set(ids))
    exact_sets = {frozenset(ids) for ids, _ in exact_found}
    print(
        f"\n{rows:,} vectors x {DIM}-d ({mixture}); planted {exact_groups:,} exact-copy groups "
        f"and {near_groups:,} near-copy groups (1-3 copies at cosine 0.96-0.995); "
        f"threshold {args.threshold}; filled in {fill_s:.0f} s (0: reused), index built in "
        f"{build_s:.0f} s (0: reused): {params.factory}, nprobe {params.nprobe}, "
        f"re-rank {params.rerank}x from {params.rerank_codec or 'float32'}"
    )
    print(f"{cpu_flags()}; load average {', '.join(f'{x:.1f}' for x in load)} (start, mid, end)\n")
    print("| pass | index | s | rows/s | VmHWM before | VmHWM peak | groups | result |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    exact_ok = exact_sets == {frozenset(ids) for ids in planted[:exact_groups]}
    for name, run, result in (
        ("`exact=True`", exact_run, f"planted exact groups found: {exact_ok}"),
        (
            f"`duplicates({args.threshold})`",
            near_run,
            f"pair recall {hit / max(1, len(planted_pairs)):.4f}, "
            f"precision {hit / max(1, len(found_pairs)):.4f}, "
            f"{len(recovered):,}/{len(planted):,} planted groups exact, "
            f"{unplanted} groups of unplanted rows",
        ),
    ):
        groups = len(exact_found if run is exact_run else found)
        print(
            f"| {name} | {run['index']} | {run['seconds']:.1f} | "
            f"{rows / run['seconds']:,.0f} | {run['before'] / 1e9:.2f} GB | "
            f"{run['after'] / 1e9:.2f} GB | {groups:,} | {result} |"
        )
    if hit < len(planted_pairs):
        missed = sorted(planted_pairs - found_pairs)[:5]
        print(f"\nmissed pairs (first 5): {missed}")
    if not args.keep:
        shutil.rmtree(path)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
