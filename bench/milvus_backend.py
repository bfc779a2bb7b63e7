"""Milvus backend vs the embedded one: single-query latency and recall@20 on the same vectors.

    python bench/milvus_backend.py --n 1000000 --workdir DIR --keep   # one command; a table

The same synthetic clustered vectors (``Mixture`` of bench/index.py) go into an embedded and a
Milvus-backed ``vectors:512`` collection, each with the index its backend picks at that size
(``auto``: embedded IVF past 100 k, Milvus HNSW past 100 k; FLAT / exact below), or the kinds
given by ``--milvus-index``. Without ``--uri`` a Milvus standalone server (the ``milvus``
package's) runs for the benchmark, with its data in the work folder. Latency is p50/p99 of
single queries through ``Collection.search`` (query vector -> backend search -> rows -> hits);
recall@20 is against exact search, on the same held-out queries.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
from index import DIM, K, Mixture, fill, log, recall  # bench/index.py

from lookalike import Collection
from lookalike.backends.milvus import local_server

CHUNK = 100_000


def fill_milvus(path: Path, uri: str, n: int, mixture: Mixture, model: tuple) -> float:
    """Stream the same n vectors as ``fill`` into a Milvus-backed collection (reused if a run
    already filled it on this server)."""
    recipe = json.dumps({"n": n, "uri": uri, **asdict(mixture)})
    marker = path / "bench.json"
    if marker.is_file() and marker.read_text(encoding="utf-8") == recipe:
        return 0.0
    if path.exists():
        import shutil

        shutil.rmtree(path)
    started = time.perf_counter()
    rng = np.random.default_rng(0)  # the same draws as fill()
    collection = Collection.create(path, f"vectors:{DIM}", backend="milvus", uri=uri)
    collection.backend.auto_index = False
    for start in range(0, n, 200_000):  # fill() draws 200 k at a time: the same vectors
        size = min(200_000, n - start)
        vectors = mixture.draw(rng, model, size)
        for offset in range(0, size, CHUNK):
            first = start + offset
            part = vectors[offset : offset + CHUNK]
            collection.add_vectors(part, [f"v{i}" for i in range(first, first + len(part))])
        log(f"milvus: {start + size:,} vectors in {time.perf_counter() - started:.0f} s")
    collection.close()
    marker.write_text(recipe, encoding="utf-8")
    return time.perf_counter() - started


def timed_searches(collection: Collection, queries: np.ndarray) -> tuple[float, float, np.ndarray]:
    """p50 and p99 ms of single searches through Collection.search, and the ids found."""
    for query in queries[:20]:  # warm-up
        collection.search(vector=query, k=K)
    times, found = [], []
    for query in queries:
        started = time.perf_counter()
        hits = collection.search(vector=query, k=K)
        times.append(time.perf_counter() - started)
        found.append([h.id for h in hits])
    p50, p99 = np.percentile(times, [50, 99]) * 1000
    return float(p50), float(p99), np.array(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep both collections for a rerun")
    parser.add_argument("--uri", default=None, help="a running Milvus server (default: start one)")
    parser.add_argument(
        "--milvus-index", nargs="+", default=["auto"], choices=["auto", "flat", "hnsw", "ivf"]
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lookalike-bench-milvus-"))
    workdir.mkdir(parents=True, exist_ok=True)
    mixture = Mixture()
    model = mixture.model(0)
    queries = mixture.draw(np.random.default_rng(1), model, args.queries)

    embedded_path = workdir / f"index-{args.n}"  # the same folder bench/index.py fills
    fill_s = fill(embedded_path, args.n, mixture, model)
    log(f"embedded filled in {fill_s:.0f} s (0: reused)")
    embedded = Collection.open(embedded_path)
    embedded.backend.auto_index = False
    embedded.rebuild_index("flat")
    _, truth = embedded.backend.index.search(queries, K, embedded.backend.count, None)
    log("exact truth done")
    rows = []
    started = time.perf_counter()
    kind = embedded.rebuild_index("auto")
    build_s = time.perf_counter() - started
    p50, p99, found = timed_searches(embedded, queries)
    rows.append((f"embedded {kind}", fill_s, build_s, p50, p99, recall(found, truth)))
    embedded.close()

    server = local_server(workdir / "milvus-server") if args.uri is None else nullcontext(args.uri)
    with server as uri:
        path = workdir / f"milvus-{args.n}"
        milvus_fill_s = fill_milvus(path, uri, args.n, mixture, model)
        log(f"milvus filled in {milvus_fill_s:.0f} s")
        milvus = Collection.open(path)
        milvus.backend.auto_index = False
        for wanted in args.milvus_index:
            started = time.perf_counter()
            kind = milvus.rebuild_index(wanted)
            build_s = time.perf_counter() - started
            log(f"milvus {kind} built in {build_s:.0f} s")
            p50, p99, found = timed_searches(milvus, queries)
            rows.append((f"milvus {kind}", milvus_fill_s, build_s, p50, p99, recall(found, truth)))
        milvus.close()

    print(f"\n{args.n:,} vectors x {DIM}-d, {mixture}, {args.queries} held-out queries, k={K}\n")
    print("| backend, index | fill s | index build s | p50 ms | p99 ms | recall@20 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, fill_seconds, build, p50, p99, rec in rows:
        print(f"| {name} | {fill_seconds:.0f} | {build:.0f} | {p50:.2f} | {p99:.2f} | {rec:.3f} |")
    if not args.keep and args.workdir is None:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
