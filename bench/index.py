"""Index benchmark: exact vs IVF-PQ fast-scan on synthetic clustered vectors.

    python bench/index.py --n 1000000            # one command; prints a table

Vectors are a mixture of many low-rank Gaussians (see ``Mixture``), streamed into a
``vectors:512`` collection in chunks so memory stays bounded; ``--keep`` with ``--workdir``
keeps the collection so a rerun skips the fill. Queries are fresh draws from
the same mixture (held out). Figures: build time, anonymous resident memory per vector of a
fresh process that opens the collection and searches, p50/p99 single-query latency through
``Collection.search``, batch QPS, recall@20 against exact search.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lookalike import Collection

DIM = 512
K = 20


@dataclass(frozen=True)
class Mixture:
    """Many Gaussian clusters on the unit sphere, each spread along its own few directions.

    A point is ``center + basis @ z * spread + noise``, normalised; ``rank`` directions per
    cluster give the data a low intrinsic dimension, as image embeddings have (``rank 0``
    is isotropic noise around each center: much harder than real embeddings).
    """

    clusters: int = 4000
    rank: int = 8
    spread: float = 0.5
    noise: float = 0.2  # total norm of the isotropic noise

    def model(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        centers = rng.standard_normal((self.clusters, DIM), dtype=np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        bases = rng.standard_normal((self.clusters, self.rank, DIM), dtype=np.float32)
        return centers, bases * (self.spread / np.sqrt(DIM))

    def draw(self, rng: np.random.Generator, model: tuple[np.ndarray, np.ndarray], n: int):
        """n unit vectors, in random order (neighbours are not stored side by side)."""
        centers, bases = model
        picks = np.sort(rng.integers(0, self.clusters, n))
        points = rng.standard_normal((n, DIM), dtype=np.float32) * (self.noise / np.sqrt(DIM))
        weights = rng.standard_normal((n, self.rank), dtype=np.float32)
        bounds = np.searchsorted(picks, np.arange(self.clusters + 1))
        for cluster, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            if hi > lo:
                points[lo:hi] += weights[lo:hi] @ bases[cluster] + centers[cluster]
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        return points[rng.permutation(n)]


def fill(path: Path, n: int, mixture: Mixture, model: tuple[np.ndarray, np.ndarray]) -> float:
    """Stream n vectors into a new collection at path (reused if a run already filled it)."""
    recipe = json.dumps({"n": n, **asdict(mixture)})
    marker = path / "bench.json"
    if marker.is_file() and marker.read_text(encoding="utf-8") == recipe:
        return 0.0
    if path.exists():
        shutil.rmtree(path)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    collection = Collection.create(path, f"vectors:{DIM}")
    collection.backend.auto_index = False
    chunk = 200_000
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        collection.add_vectors(
            mixture.draw(rng, model, size), [f"v{i}" for i in range(start, start + size)]
        )
    collection.close()
    marker.write_text(recipe, encoding="utf-8")
    return time.perf_counter() - started


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def latencies(search, queries: np.ndarray) -> tuple[float, float]:
    times = []
    for query in queries:
        started = time.perf_counter()
        search(query)
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


# memory budgets that make the index pick each kind of re-rank data for n vectors
BUDGETS = {
    "auto": lambda n: None,
    "float32": lambda n: n * DIM * 4,
    "SQ8": lambda n: n * DIM,
    "PQ": lambda n: 0,
}

MEMORY_PROBE = """
import json, sys, numpy as np
from lookalike import Collection
import faiss  # noqa: F401  (imported before the baseline, like a server would be)
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) * 1024
queries = np.load(sys.argv[2])
import time
before = anon()
started = time.perf_counter()
col = Collection.open(sys.argv[1])
open_s = time.perf_counter() - started
for q in queries:
    col.search(vector=q, k=20)
print(json.dumps({"anon_bytes": anon() - before, "kind": col.backend.index.kind, "open_s": open_s}))
"""


def anon_memory(path: Path, queries: np.ndarray, workdir: Path) -> tuple[int, str, float]:
    """Anonymous memory a fresh process gains by opening and searching; kind; open time."""
    query_file = workdir / "queries.npy"
    np.save(query_file, queries[:100])
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path), str(query_file)],
        capture_output=True,
        text=True,
        check=True,
        encoding="utf-8",
    )
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return int(answer["anon_bytes"]), answer["kind"], float(answer["open_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500)
    defaults = Mixture()
    parser.add_argument("--clusters", type=int, default=defaults.clusters)
    parser.add_argument("--rank", type=int, default=defaults.rank, help="directions per cluster")
    parser.add_argument("--spread", type=float, default=defaults.spread)
    parser.add_argument("--noise", type=float, default=defaults.noise)
    parser.add_argument(
        "--flat-queries",
        type=int,
        default=50,
        help="single queries timed on exact search (slow at 20 M; 0: no exact row)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--keep", action="store_true", help="keep the collection; a rerun with --workdir reuses it"
    )
    parser.add_argument(
        "--rerank",
        nargs="+",
        choices=sorted(BUDGETS),
        default=["auto"],
        help="IVF variants by re-rank data (auto: chosen from the RAM, as in production)",
    )
    parser.add_argument("--fill-only", action="store_true", help="stop once filled")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    path = workdir / f"index-{args.n}"
    mixture = Mixture(args.clusters, args.rank, args.spread, args.noise)
    model = mixture.model(0)
    fill_s = fill(path, args.n, mixture, model)
    if args.fill_only:
        print(f"filled {path} in {fill_s:.0f} s")
        return
    collection = Collection.open(path)
    collection.backend.auto_index = False
    queries = mixture.draw(np.random.default_rng(1), model, args.queries)

    timed = mixture.draw(np.random.default_rng(2), model, args.queries)  # not batch-warmed
    rows = []
    collection.rebuild_index("flat")  # a reused collection may hold the last run's index
    count = collection.backend.store.count
    truth_file = path / f"bench-truth-{args.queries}.npz"  # exact answers of a reused fill
    if truth_file.exists():
        saved = np.load(truth_file)
        truth, flat_qps = saved["truth"], float(saved["qps"])
    else:
        started = time.perf_counter()
        _, truth = collection.backend.index.search(queries, K, count, None)
        flat_qps = len(queries) / (time.perf_counter() - started)
        np.savez(truth_file, truth=truth, qps=flat_qps)
    log("exact truth done")
    flat_p50 = None
    if args.flat_queries:
        flat_p50, flat_p99 = latencies(
            lambda q: collection.search(vector=q, k=K), timed[: args.flat_queries]
        )
        flat_mem, _, _ = anon_memory(path, timed[: args.flat_queries], workdir)
        rows.append(
            ("flat (exact)", 0.0, flat_mem / count, DIM * 4, flat_p50, flat_p99, flat_qps, 1.0)
        )
    log("exact latency and memory done")
    for variant in args.rerank:
        log(f"building ivf ({variant} re-rank data)")
        started = time.perf_counter()
        collection.rebuild_index("ivf", memory_budget=BUDGETS[variant](args.n))
        build_s = time.perf_counter() - started
        ivf = collection.backend.index
        params = ivf.params
        started = time.perf_counter()
        _, found = ivf.search(queries, K, count, None)
        ivf_qps = len(queries) / (time.perf_counter() - started)
        log(f"built in {build_s:.0f} s: {params}")
        ivf_p50, ivf_p99 = latencies(lambda q: collection.search(vector=q, k=K), timed)
        ivf_mem, kind, open_s = anon_memory(path, timed, workdir)
        assert kind == "ivf", kind
        print(f"{variant}: a fresh process opened the collection in {open_s:.2f} s", flush=True)
        rerank_bytes = ivf.codes.code_size if ivf.codes is not None else DIM * 4
        rows.append(
            (
                f"ivf {params.factory} nprobe={params.nprobe} rerank={params.rerank}x "
                f"from {params.rerank_codec or 'float32'}",
                build_s,
                ivf_mem / count,
                rerank_bytes,
                ivf_p50,
                ivf_p99,
                ivf_qps,
                recall(found, truth),
            )
        )

    print(
        f"\n{args.n:,} vectors x {DIM}-d, {mixture}, {args.queries} held-out queries, k={K}; "
        f"filling the collection took {fill_s:.0f} s (0: reused)\n"
    )
    print(
        "| index | build s | anon B/vector | re-rank data B/vector (page cache) | p50 ms | p99 ms "
        "| batch QPS | recall@20 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, build, per_vector, rerank_bytes, p50, p99, qps, rec in rows:
        print(
            f"| {name} | {build:.0f} | {per_vector:.0f} | {rerank_bytes} | {p50:.2f} | {p99:.2f} "
            f"| {qps:.0f} | {rec:.3f} |"
        )
    for name, _, _, _, p50, _, qps, _ in rows[1 if flat_p50 else 0 :]:
        speedup = f"p50 {flat_p50 / p50:.1f}x faster, " if flat_p50 else ""
        print(f"{name} vs flat: {speedup}batch QPS {qps / flat_qps:.1f}x")
    collection.close()
    if not args.keep:
        shutil.rmtree(path)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
