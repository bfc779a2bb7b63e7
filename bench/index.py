"""Index benchmark: exact vs IVF-PQ fast-scan on synthetic clustered vectors.

    python bench/index.py --n 1000000            # one command; prints a table

Vectors are a mixture of many Gaussians (not uniform noise), streamed into a
``vectors:512`` collection in chunks so memory stays bounded. Queries are fresh draws from
the same mixture (held out). Figures: build time, anonymous resident memory per vector of a
fresh process that opens the collection and searches, p50/p99 single-query latency through
``Collection.search``, batch QPS, recall@20 against exact search.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lookalike import Collection

DIM = 512
K = 20


def mixture(rng: np.random.Generator, centers: np.ndarray, n: int, spread: float) -> np.ndarray:
    """n unit vectors drawn around random centers."""
    picks = rng.integers(0, len(centers), n)
    noise = rng.standard_normal((n, centers.shape[1]), dtype=np.float32) * spread
    points = centers[picks] + noise
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def fill(
    path: Path, n: int, seed: int, clusters: int, spread: float
) -> tuple[Collection, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    collection = Collection.create(path, f"vectors:{DIM}")
    collection.auto_index = False
    chunk = 200_000
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        collection.add_vectors(
            mixture(rng, centers, size, spread), [f"v{i}" for i in range(start, start + size)]
        )
    return collection, centers


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


MEMORY_PROBE = """
import json, sys, numpy as np
from lookalike import Collection
import faiss  # noqa: F401  (imported before the baseline, like a server would be)
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) * 1024
queries = np.load(sys.argv[2])
before = anon()
col = Collection.open(sys.argv[1])
for q in queries:
    col.search(vector=q, k=20)
print(json.dumps({"anon_bytes": anon() - before, "kind": col.index.kind}))
"""


def anon_memory(path: Path, queries: np.ndarray, workdir: Path) -> tuple[int, str]:
    query_file = workdir / "queries.npy"
    np.save(query_file, queries[:100])
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path), str(query_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return int(answer["anon_bytes"]), answer["kind"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=0.06, help="noise per dimension")
    parser.add_argument(
        "--flat-queries",
        type=int,
        default=50,
        help="single queries timed on exact search (slow at 20 M)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the collection afterwards")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    path = workdir / f"index-{args.n}"
    if path.exists():
        shutil.rmtree(path)
    started = time.perf_counter()
    collection, centers = fill(path, args.n, 0, args.clusters, args.spread)
    fill_s = time.perf_counter() - started
    queries = mixture(np.random.default_rng(1), centers, args.queries, args.spread)

    rows = []
    exact = collection.index
    count = collection.store.count
    _, truth = exact.search(queries, K, count, None)
    flat_p50, flat_p99 = latencies(
        lambda q: collection.search(vector=q, k=K), queries[: args.flat_queries]
    )
    started = time.perf_counter()
    exact.search(queries, K, count, None)
    flat_qps = len(queries) / (time.perf_counter() - started)
    flat_mem, _ = anon_memory(path, queries[: args.flat_queries], workdir)
    rows.append(("flat (exact)", 0.0, flat_mem / count, flat_p50, flat_p99, flat_qps, 1.0))

    started = time.perf_counter()
    collection.rebuild_index("ivf")
    build_s = time.perf_counter() - started
    ivf = collection.index
    _, found = ivf.search(queries, K, count, None)
    ivf_p50, ivf_p99 = latencies(lambda q: collection.search(vector=q, k=K), queries)
    started = time.perf_counter()
    ivf.search(queries, K, count, None)
    ivf_qps = len(queries) / (time.perf_counter() - started)
    ivf_mem, kind = anon_memory(path, queries, workdir)
    assert kind == "ivf", kind
    rows.append(
        (
            f"ivf {ivf.params.factory} nprobe={ivf.params.nprobe} rerank={ivf.params.rerank}",
            build_s,
            ivf_mem / count,
            ivf_p50,
            ivf_p99,
            ivf_qps,
            recall(found, truth),
        )
    )

    print(
        f"\n{args.n:,} vectors x {DIM}-d, {args.clusters} clusters, {args.queries} held-out "
        f"queries, k={K}; filling the collection took {fill_s:.0f} s\n"
    )
    print("| index | build s | anon B/vector | p50 ms | p99 ms | batch QPS | recall@20 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, build, per_vector, p50, p99, qps, rec in rows:
        print(
            f"| {name} | {build:.0f} | {per_vector:.0f} | {p50:.2f} | {p99:.2f} | {qps:.0f} "
            f"| {rec:.3f} |"
        )
    print(
        f"\nivf vs flat: p50 {flat_p50 / ivf_p50:.1f}x faster, batch QPS {ivf_qps / flat_qps:.1f}x"
    )
    collection.close()
    if not args.keep:
        shutil.rmtree(path)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
