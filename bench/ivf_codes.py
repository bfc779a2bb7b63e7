"""IVF list codes at 1 M: which codes the IVF index should hold, by recall, speed and RAM.

    python bench/ivf_codes.py --workdir peers-work     # after bench/peers.py drew its data

Reads the peers bench's base vectors, held-out timed queries and exact answers (bench/peers.py
``--workdir``), trains each Faiss index on the same 65,536-vector sample with the collection's
list count (2048 at 1 M), and for each (nprobe, candidates) prints the Faiss search p50 (one
query at a time) and recall@20 after an exact re-rank of the candidates. Then it opens each
saved index in a fresh process, the way lookalike would (``IO_FLAG_MMAP_IFC``: zero-copy where
Faiss can map the lists), and prints the anonymous memory that adds: what a server owns.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FACTORIES = ("IVF2048,PQ128x4fs", "IVF2048,PQ64x4fs", "IVF2048,PQ64")
K = 20
OPEN = """
import re, sys, faiss
anon = lambda: int(re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read())[1])
before = anon()
index = faiss.read_index(sys.argv[1], faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
print(anon() - before)
"""


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("peers-work"))
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--factories", nargs="+", default=list(FACTORIES))
    args = parser.parse_args()
    base = np.load(args.workdir / f"base-{args.n}.npy", mmap_mode="r")
    queries = np.load(args.workdir / "queries-500.npz")["timed"]
    truth = np.load(args.workdir / f"truth-{args.n}-500.npz")["timed"]
    rng = np.random.default_rng(0)
    sample = np.ascontiguousarray(base[np.sort(rng.choice(args.n, 65_536, replace=False))])
    print("| codes | nprobe | candidates | Faiss p50 ms | recall@20 |")
    print("| --- | --- | --- | --- | --- |")
    files = {}
    for factory in args.factories:
        files[factory] = path = args.workdir / f"ivf-codes-{factory.replace(',', '_')}.faiss"
        if not path.exists():
            index = faiss.index_factory(base.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
            index.train(sample)
            for start in range(0, args.n, 100_000):
                index.add(np.ascontiguousarray(base[start : start + 100_000]))
            faiss.write_index(index, str(path))
        index = faiss.read_index(str(path))
        for nprobe in (4, 8, 16):
            options = faiss.SearchParametersIVF(nprobe=nprobe)
            for depth in (2 * K, 4 * K, 8 * K):
                times, found = [], []
                for query in queries:
                    started = time.perf_counter()
                    _, ids = index.search(query[None], depth, params=options)
                    times.append(time.perf_counter() - started)
                    ids = np.sort(ids[0][ids[0] >= 0])
                    found.append(ids[np.argsort(-(base[ids] @ query))[:K]])
                hits = [len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]
                print(
                    f"| {factory} | {nprobe} | {depth} | {np.median(times) * 1e3:.3f} "
                    f"| {np.mean(hits):.3f} |",
                    flush=True,
                )
    print("\n| codes | file MB | anonymous MB added by opening it |\n| --- | --- | --- |")
    for factory, path in files.items():
        opened = subprocess.run([sys.executable, "-c", OPEN, str(path)], capture_output=True)
        added = int(re.findall(rb"-?\d+", opened.stdout)[-1]) / 1024
        print(f"| {factory} | {path.stat().st_size / 1e6:.0f} | {added:.1f} |")


if __name__ == "__main__":
    main()
