"""Peers benchmark: lookalike's vector search against Faiss, LanceDB, Milvus and Qdrant.

    make bench-peers                       # .venv-peers, then the 1 M run below
    .venv-peers/bin/python bench/peers.py --n 1000000 --workdir DIR

Every engine gets the same base vectors (``Mixture`` from bench/index.py, drawn exactly as
that bench draws them), the same held-out queries and the same exact answers (brute force,
cached in the workdir). Each is built once (ingest + index, timed, in its own process), then a
fresh process opens it and sweeps its search parameter upward until recall@20 on the tuning
queries reaches the target; at that setting it times single queries (p50, p99, on other
held-out queries), batch QPS, and the resident memory the open and the searches added to the
process that holds the index (for Milvus: the server's). Results land in DIR/results-N-Q/
(with each step's log), so a rerun skips finished steps and a failed one is retried alone
(``--engines``). ``--builds-only`` lets a second run build beside a first; searches should
run one at a time.

Peers need packages that must not touch the project's pins: bench/peers-requirements.txt,
installed into .venv-peers by ``make bench-peers``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index import DIM, K, Mixture  # bench/index.py: the same data as the index bench

CHUNK = 200_000  # vectors drawn per chunk, as bench/index.py's fill draws them
CORES = os.cpu_count() or 1


# ---------------------------------------------------------------------------------------
# shared data: base vectors, queries, exact answers


@dataclass
class Context:
    """What every engine sees: where things live and the shared data."""

    n: int
    workdir: Path
    target: float
    queries: int

    @property
    def base_file(self) -> Path:
        return self.workdir / f"base-{self.n}.npy"

    def home(self, engine: str) -> Path:
        """A folder of the engine's own for its index files."""
        path = self.workdir / f"{engine}-{self.n}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def base(self) -> np.ndarray:
        return np.load(self.base_file, mmap_mode="r")

    def chunks(self, size: int = 50_000) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) of the base vectors, size at a time, read from the file."""
        base = self.base()
        for start in range(0, self.n, size):
            yield start, np.ascontiguousarray(base[start : start + size])

    def query_sets(self) -> tuple[np.ndarray, np.ndarray]:
        """Tuning queries (sweeps, batch QPS) and timed queries (single-query latency)."""
        saved = np.load(self.workdir / f"queries-{self.queries}.npz")
        return saved["tune"], saved["timed"]

    def truth(self) -> tuple[np.ndarray, np.ndarray]:
        saved = np.load(self.workdir / f"truth-{self.n}-{self.queries}.npz")
        return saved["tune"], saved["timed"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prepare_data(ctx: Context) -> None:
    """Draw the base vectors and queries once, and the exact top-k of every query."""
    mixture = Mixture()
    model = mixture.model(0)
    if not ctx.base_file.exists():
        log(f"drawing {ctx.n:,} base vectors")
        partial = ctx.base_file.with_suffix(".partial.npy")
        out = np.lib.format.open_memmap(partial, "w+", np.float32, (ctx.n, DIM))
        rng = np.random.default_rng(0)  # the seed and chunking of bench/index.py's fill
        for start in range(0, ctx.n, CHUNK):
            size = min(CHUNK, ctx.n - start)
            out[start : start + size] = mixture.draw(rng, model, size)
        out.flush()
        del out
        partial.rename(ctx.base_file)
    query_file = ctx.workdir / f"queries-{ctx.queries}.npz"
    if not query_file.exists():
        tune = mixture.draw(np.random.default_rng(1), model, ctx.queries)
        timed = mixture.draw(np.random.default_rng(2), model, ctx.queries)
        np.savez(query_file, tune=tune, timed=timed)
    truth_file = ctx.workdir / f"truth-{ctx.n}-{ctx.queries}.npz"
    if not truth_file.exists():
        log("exact top-k by brute force")
        tune, timed = ctx.query_sets()
        found = exact_top_k(ctx, np.concatenate([tune, timed]))
        np.savez(truth_file, tune=found[: len(tune)], timed=found[len(tune) :])


def exact_top_k(ctx: Context, queries: np.ndarray) -> np.ndarray:
    """Row numbers of each query's K highest inner products over all base vectors."""
    import faiss

    best_scores = np.full((len(queries), K), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), K), -1, dtype=np.int64)
    for start, rows in ctx.chunks(100_000):
        flat = faiss.IndexFlatIP(DIM)
        flat.add(rows)
        scores, ids = flat.search(queries, K)
        scores = np.concatenate([best_scores, scores], axis=1)
        ids = np.concatenate([best_rows, ids + start], axis=1)
        order = np.argsort(-scores, axis=1)[:, :K]
        best_scores = np.take_along_axis(scores, order, axis=1)
        best_rows = np.take_along_axis(ids, order, axis=1)
    return best_rows


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top-k that the engine returned."""
    return float(
        np.mean(
            [
                len(set(f.tolist()) & set(t.tolist())) / len(t)
                for f, t in zip(found, truth, strict=True)
            ]
        )
    )


def memory(pid: int) -> dict[str, int]:
    """Resident anonymous and file-backed bytes of a process (from /proc/PID/status)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmRSS"):
            fields[key] = int(value.split()[0]) * 1024
    return {"anon": fields["RssAnon"], "file": fields["RssFile"], "rss": fields["VmRSS"]}


# ---------------------------------------------------------------------------------------
# engines


Setting = dict[str, Any]


@dataclass
class Engine:
    """One peer: how to build it, open it, set a search parameter and search.

    ``ladder`` gives groups of settings, each in rising cost: the sweep walks a group until
    the target recall is met, and keeps the fastest setting that met it over all groups.
    """

    name: str
    label: str
    build: Callable[[Context], dict[str, Any]]
    open: Callable[[Context, dict[str, Any]], Any]
    ladder: Callable[[Context, dict[str, Any]], list[list[Setting]]]
    search_one: Callable[[Any, Setting, np.ndarray], np.ndarray]
    search_batch: Callable[[Any, Setting, np.ndarray], np.ndarray]
    close: Callable[[Any], None] = lambda handle: None
    imports: tuple[str, ...] = ()  # imported before the memory baseline, as a server would
    # for a server: (its pid, its memory once started with nothing loaded) from the handle
    server: Callable[[Any], tuple[int, dict[str, int]]] | None = None


def padded(ids: Sequence[int]) -> np.ndarray:
    out = np.full(K, -1, dtype=np.int64)
    out[: len(ids)] = ids[:K]
    return out


# lookalike: its public API only --------------------------------------------------------

# rebuild_index(target_recall=...) tried in order: the index tunes itself on perturbed stored
# vectors, so held-out queries can need a higher target than the recall wanted
TARGETS = (0.95, 0.97, 0.99)


def lookalike_build(ctx: Context) -> dict[str, Any]:
    from lookalike import Collection

    path = ctx.home("lookalike") / "collection"
    ingest_s = lookalike_ingest(ctx, path)
    collection = Collection.open(path)
    collection.auto_index = False
    tries: list[dict[str, float]] = []
    for target in TARGETS:
        tries.append(lookalike_try(ctx, collection, target))
        if tries[-1]["recall"] >= ctx.target:
            break
    best = max(tries, key=lambda t: t["recall"])
    if best is not tries[-1] and best["recall"] > tries[-1]["recall"]:
        tries.append(lookalike_try(ctx, collection, best["target_recall"]))
    collection.close()
    return {
        "ingest_s": ingest_s,
        "index_s": tries[-1]["index_s"],
        "setting": f"rebuild_index('ivf', target_recall={tries[-1]['target_recall']})",
        "tries": tries,
    }


def lookalike_ingest(ctx: Context, path: Path) -> float:
    """Adds every base vector to a new collection (kept for a rerun); the seconds it took."""
    import shutil

    from lookalike import Collection

    done = ctx.home("lookalike") / "ingest.json"
    if done.exists() and path.exists():
        return float(json.loads(done.read_text(encoding="utf-8"))["ingest_s"])
    if path.exists():
        shutil.rmtree(path)
    started = time.perf_counter()
    collection = Collection.create(path, f"vectors:{DIM}")
    collection.auto_index = False  # one index build at the end, as bench/index.py does
    ids = []
    for start, rows in ctx.chunks(CHUNK):
        ids += collection.add_vectors(rows, [f"v{i}" for i in range(start, start + len(rows))])
    collection.close()
    np.save(ctx.home("lookalike") / "ids.npy", np.asarray(ids, dtype=np.int64))
    ingest_s = time.perf_counter() - started
    done.write_text(json.dumps({"ingest_s": ingest_s}), encoding="utf-8")
    return ingest_s


def lookalike_try(ctx: Context, collection: Any, target: float) -> dict[str, float]:
    """Rebuilds the IVF index for a target recall; its recall on the tuning queries."""
    tune, _ = ctx.query_sets()
    truth, _ = ctx.truth()
    started = time.perf_counter()
    collection.rebuild_index("ivf", target_recall=target)
    index_s = time.perf_counter() - started
    handle = (collection, _row_of(ctx))
    got = recall(np.stack([lookalike_one(handle, {}, q) for q in tune]), truth)
    log(f"lookalike: rebuild_index(target_recall={target}) {index_s:.0f} s, recall {got:.3f}")
    return {"target_recall": target, "index_s": index_s, "recall": got}


def _row_of(ctx: Context) -> Callable[[list[int]], np.ndarray]:
    """Maps collection ids back to base-vector rows (ids come back from add_vectors)."""
    ids = np.load(ctx.home("lookalike") / "ids.npy")
    if np.array_equal(ids, np.arange(len(ids))):  # ids are the rows: no table to hold (it
        return np.asarray  # would count 24 MB, 24 B a vector, as lookalike's memory)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    return lambda found: order[np.searchsorted(sorted_ids, found)]


def lookalike_open(ctx: Context, built: dict[str, Any]) -> Any:
    from lookalike import Collection

    return Collection.open(ctx.home("lookalike") / "collection"), _row_of(ctx)


def lookalike_one(handle: Any, setting: Setting, query: np.ndarray) -> np.ndarray:
    collection, row_of = handle
    hits = collection.search(vector=query, k=K)
    return padded(row_of([hit.id for hit in hits]))


def lookalike_batch(handle: Any, setting: Setting, queries: np.ndarray) -> np.ndarray:
    collection, row_of = handle
    found = collection.search_many([{"vector": q} for q in queries], k=K)
    return np.stack([padded(row_of([hit.id for hit in hits])) for hits in found])


# Faiss HNSW, built by hand ------------------------------------------------------------

HNSW_M = 32  # faiss.IndexHNSWFlat(d, 32): the common hand-built choice; efConstruction 40


def faiss_hnsw_build(ctx: Context) -> dict[str, Any]:
    import faiss

    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    for _, rows in ctx.chunks():
        index.add(rows)
    faiss.write_index(index, str(ctx.home("faiss-hnsw") / "hnsw.index"))
    index_s = time.perf_counter() - started
    ef_c = index.hnsw.efConstruction
    return {"ingest_s": 0.0, "index_s": index_s, "setting": f"HNSW{HNSW_M},Flat efC={ef_c}"}


class Tunable:
    """A Faiss index and the search parameters last set on it."""

    def __init__(self, index: Any):
        self.index = index
        self.setting: Setting | None = None

    def use(self, setting: Setting) -> Any:
        """The index, with setting applied (through faiss.ParameterSpace, as clip_back does)."""
        import faiss

        if setting != self.setting:
            text = ",".join(f"{key}={value}" for key, value in setting.items())
            faiss.ParameterSpace().set_index_parameters(self.index, text)
            self.setting = setting
        return self.index


def faiss_hnsw_open(ctx: Context, built: dict[str, Any]) -> Tunable:
    import faiss

    return Tunable(faiss.read_index(str(ctx.home("faiss-hnsw") / "hnsw.index")))


def faiss_one(handle: Tunable, setting: Setting, query: np.ndarray) -> np.ndarray:
    return handle.use(setting).search(query[None, :], K)[1][0]


def faiss_batch(handle: Tunable, setting: Setting, queries: np.ndarray) -> np.ndarray:
    return handle.use(setting).search(queries, K)[1]


# from k (a smaller ef searches as ef = k: the sweep would see no gain and stop), in steps of
# about 1.15x up to 128, so each graph stops just past the target (a ladder of 1.5x steps put
# Qdrant at 0.975 with ef 96, where 0.95 needed less), then coarser
EF_LADDER = [20, 24, 28, 32, 36, 40, 48, 56, 64, 72, 80, 88, 96, 112, 128, 160, 192]
EF_LADDER += [256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192]


def doubling(lists: int) -> list[int]:
    """1, 2, 4, ... up to every list: the nprobe ladder of an IVF index."""
    return [2**i for i in range(lists.bit_length()) if 2**i < lists] + [lists]


def hnsw_ladder(ctx: Context, built: dict[str, Any]) -> list[list[Setting]]:
    return [[{"efSearch": ef} for ef in EF_LADDER]]


# autofaiss, as clip-retrieval's indexer builds it and clip_back serves it ----------------


def accept_opq_keywords() -> None:
    """Lets autofaiss 2.18 build OPQ on this faiss: it calls ``faiss.OPQMatrix(d, M=, d2=)``,
    and faiss-cpu 1.15's wrapper takes those arguments by position only (a TypeError)."""
    import faiss

    positional = faiss.OPQMatrix
    try:
        positional(8, M=2, d2=8)
    except TypeError:

        class OPQMatrix(positional):
            def __init__(self, d: int = 0, M: int = 1, d2: int = -1):
                super().__init__(d, M, d2)

        faiss.OPQMatrix = OPQMatrix


AUTOFAISS_MAX_LISTS = 4096  # k-means for more lists on 1 M x 768-d takes hours on 2 cores


def autofaiss_build(ctx: Context) -> dict[str, Any]:
    from autofaiss import build_index
    from autofaiss.external.optimize import get_optimal_index_keys_v2

    accept_opq_keywords()
    home = ctx.home("autofaiss")
    # clip_index's default budget (4G) makes autofaiss pick plain HNSW32 at 1 M x 512-d (the
    # Faiss HNSW row); under the float32 size it picks what it builds for large collections,
    # OPQ + IVF with an HNSW quantizer + PQ: a quarter of the float32 size asks for that.
    budget = f"{max(1, ctx.n * DIM * 4 // 4 // 2**20)}M"
    picked = get_optimal_index_keys_v2(ctx.n, DIM, budget)[0]
    key = re.sub(r"IVF(\d+)", lambda m: f"IVF{min(int(m[1]), AUTOFAISS_MAX_LISTS)}", picked)
    started = time.perf_counter()
    build_index(
        embeddings=np.ascontiguousarray(ctx.base()),
        index_path=str(home / "image.index"),
        index_infos_path=str(home / "image.json"),
        index_key=key,
        max_index_memory_usage=budget,
        current_memory_available="8G",
        metric_type="ip",
        nb_cores=CORES,
        min_nearest_neighbors_to_retrieve=K,
    )
    index_s = time.perf_counter() - started
    tuned = json.loads((home / "image.json").read_text(encoding="utf-8")).get("index_param")
    return {
        "ingest_s": 0.0,
        "index_s": index_s,
        "setting": f"{key} (autofaiss picked {picked}; its own tuning: {tuned})",
        "index_key": key,
        "budget": budget,
    }


def autofaiss_open(ctx: Context, built: dict[str, Any]) -> Tunable:
    import faiss

    # clip_back.load_index with enable_faiss_memory_mapping
    path = str(ctx.home("autofaiss") / "image.index")
    return Tunable(faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY))


def autofaiss_ladder(ctx: Context, built: dict[str, Any]) -> list[list[Setting]]:
    key = built.get("index_key") or ""
    lists = int(key.split("IVF")[1].split("_")[0].split(",")[0]) if "IVF" in key else 0
    if not lists:
        return hnsw_ladder(ctx, built)
    # the parameters clip_back sets: nprobe, efSearch = 2 nprobe, ht = 2048
    steps = doubling(lists)
    return [[{"nprobe": p, "efSearch": 2 * p, "ht": 2048} for p in steps]]


def autofaiss_one(handle: Tunable, setting: Setting, query: np.ndarray) -> np.ndarray:
    # as clip_back's knn_search
    return handle.use(setting).search_and_reconstruct(query[None, :], K)[1][0]


def autofaiss_batch(handle: Tunable, setting: Setting, queries: np.ndarray) -> np.ndarray:
    return handle.use(setting).search_and_reconstruct(queries, K)[1]


# LanceDB, embedded, IVF-PQ with refine ------------------------------------------------


def lance_build(ctx: Context) -> dict[str, Any]:
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfPq

    home = ctx.home("lancedb")
    db = lancedb.connect(str(home / "db"))
    started = time.perf_counter()
    table = None
    for start, rows in ctx.chunks():
        batch = pa.table(
            {
                "id": pa.array(np.arange(start, start + len(rows))),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), DIM),
            }
        )
        if table is None:
            table = db.create_table("vectors", batch, mode="overwrite")
        else:
            table.add(batch)
    ingest_s = time.perf_counter() - started
    partitions = max(1, round(ctx.n**0.5))
    sub_vectors = DIM // 8  # 64 B of codes per vector, as lookalike's PQ128x4 fast-scan
    started = time.perf_counter()
    config = IvfPq(distance_type="dot", num_partitions=partitions, num_sub_vectors=sub_vectors)
    table.create_index("vector", config=config)
    index_s = time.perf_counter() - started
    return {
        "ingest_s": ingest_s,
        "index_s": index_s,
        "setting": f"IVF_PQ partitions={partitions} sub_vectors={sub_vectors} (8 bit), dot",
        "partitions": partitions,
    }


def lance_open(ctx: Context, built: dict[str, Any]) -> Any:
    import lancedb

    return lancedb.connect(str(ctx.home("lancedb") / "db")).open_table("vectors")


def lance_ladder(ctx: Context, built: dict[str, Any]) -> list[list[Setting]]:
    partitions = built["partitions"]
    probes = [p for p in doubling(partitions) if p >= 5]
    refines = (1, 2, 5, 10, 20, 50, 100)
    return [[{"nprobes": p, "refine_factor": r} for r in refines] for p in probes]


def _lance_query(table: Any, setting: Setting, vectors: Any) -> Any:
    query = table.search(vectors).distance_type("dot").nprobes(setting["nprobes"]).limit(K)
    if setting["refine_factor"] > 1:
        query = query.refine_factor(setting["refine_factor"])
    return query.select(["id"])


def lance_one(table: Any, setting: Setting, query: np.ndarray) -> np.ndarray:
    answer = _lance_query(table, setting, query).to_arrow()
    return padded(answer.column("id").to_numpy())


def lance_batch(table: Any, setting: Setting, queries: np.ndarray) -> np.ndarray:
    answer = _lance_query(table, setting, list(queries)).to_arrow()
    which = answer.column("query_index").to_numpy()
    ids = answer.column("id").to_numpy()
    return np.stack([padded(ids[which == i]) for i in range(len(queries))])


# Milvus standalone (the real server), HNSW and IVF_SQ8 ---------------------------------

MILVUS_INDEXES = {
    "milvus-hnsw": ("HNSW", {"M": 16, "efConstruction": 128}),
    "milvus-ivf-sq8": ("IVF_SQ8", None),  # nlist from the segment size, below
}
MILVUS_SEGMENT_ROWS = 512 * 2**20 // (DIM * 4)


class MilvusServer:
    """The milvus package's standalone server on loopback, data under the workdir."""

    def __init__(self, ctx: Context):
        from milvus import MilvusServer as Server
        from pymilvus import Collection, connections, utility

        self.server = Server()
        base = ctx.workdir / f"milvus-{ctx.n}"
        self.server.set_base_dir(str(base))
        client_port, peer_port = free_port(), free_port()
        self.server.config.update(etcd_port=client_port)
        os.environ["ETCD_CONFIG_PATH"] = embedded_etcd_config(base, client_port, peer_port)
        self.server.start()
        self.pid = self.server.server_proc.pid
        self.pid_file = server_pid_file(ctx, os.getpid())
        self.pid_file.write_text(str(self.pid), encoding="utf-8")
        connections.connect(host="127.0.0.1", port=self.server.listen_port)
        for name in utility.list_collections():  # a restart reloads what was loaded
            if str(utility.load_state(name)) != "NotLoad":
                Collection(name).release()

    def stop(self) -> None:
        from pymilvus import connections

        connections.disconnect("default")
        self.server.stop()
        self.pid_file.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def embedded_etcd_config(base: Path, client_port: int, peer_port: int) -> str:
    """An etcd config on free loopback ports: the milvus package leaves its embedded etcd on
    2379/2380, so a second Milvus on the machine (another user's) would collide with it."""
    path = base / "embedded-etcd.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    path.write_text(
        f"name: default\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
        f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: default={peer}\n",
        encoding="utf-8",
    )
    return str(path)


def milvus_build(ctx: Context, engine: str) -> dict[str, Any]:
    from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, utility

    kind, params = MILVUS_INDEXES[engine]
    # Milvus indexes each sealed segment (512 MB: 262 k rows of 512-d) on its own, and sizes
    # nlist by a segment's rows: 4 sqrt(n), its guideline
    params = params or {"nlist": 4 * round(min(ctx.n, MILVUS_SEGMENT_ROWS) ** 0.5)}
    server = MilvusServer(ctx)
    try:
        name = engine.replace("-", "_")
        if utility.has_collection(name):
            utility.drop_collection(name)
        schema = CollectionSchema(
            [
                FieldSchema("id", DataType.INT64, is_primary=True),
                FieldSchema("vector", DataType.FLOAT_VECTOR, dim=DIM),
            ]
        )
        collection = Collection(name, schema)
        started = time.perf_counter()
        for start, rows in ctx.chunks(10_000):
            collection.insert([np.arange(start, start + len(rows)), rows])
        collection.flush()
        ingest_s = time.perf_counter() - started
        started = time.perf_counter()
        collection.create_index(
            "vector", {"index_type": kind, "metric_type": "IP", "params": params}
        )
        utility.wait_for_index_building_complete(name)
        index_s = time.perf_counter() - started
    finally:
        server.stop()
    settings = " ".join(f"{k}={v}" for k, v in params.items())
    return {"ingest_s": ingest_s, "index_s": index_s, "setting": f"{kind} {settings}", **params}


def milvus_open(ctx: Context, built: dict[str, Any], engine: str) -> Any:
    from pymilvus import Collection

    server = MilvusServer(ctx)
    before = memory(server.pid)
    collection = Collection(engine.replace("-", "_"))
    collection.load()
    return server, collection, before


def milvus_ladder(ctx: Context, built: dict[str, Any]) -> list[list[Setting]]:
    if "nlist" in built:
        return [[{"nprobe": p} for p in doubling(built["nlist"])]]
    return [[{"ef": ef} for ef in EF_LADDER if ef >= K]]


def milvus_batch(handle: Any, setting: Setting, queries: np.ndarray) -> np.ndarray:
    _, collection, _ = handle
    answer = collection.search(
        queries.tolist(),
        "vector",
        {"metric_type": "IP", "params": setting},
        limit=K,
        consistency_level="Eventually",  # no wait for a fresh timestamp: the fastest read
    )
    return np.stack([padded(hits.ids) for hits in answer])


def milvus_one(handle: Any, setting: Setting, query: np.ndarray) -> np.ndarray:
    return milvus_batch(handle, setting, query[None, :])[0]


def milvus_close(handle: Any) -> None:
    server, collection, _ = handle
    collection.release()
    server.stop()


# Qdrant's engine, embedded (qdrant-edge-py: a real Qdrant shard) -----------------------

QDRANT_HNSW = {"m": 16, "ef_construct": 100}  # Qdrant's defaults


def qdrant_build(ctx: Context) -> dict[str, Any]:
    import shutil

    import qdrant_edge as q

    path = ctx.home("qdrant") / "shard"
    if path.exists():
        shutil.rmtree(path)
    config = q.EdgeConfig(
        vectors=q.EdgeVectorParams(size=DIM, distance=q.Distance.Dot),
        hnsw_config=q.HnswIndexConfig(full_scan_threshold=10_000, **QDRANT_HNSW),
    )
    shard = q.EdgeShard.create(str(path), config)
    started = time.perf_counter()
    for start, rows in ctx.chunks(1_000):
        points = [q.Point(start + i, row.tolist()) for i, row in enumerate(rows)]
        shard.update(q.UpdateOperation.upsert_points(points))
    shard.flush()
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    shard.optimize()
    shard.flush()
    index_s = time.perf_counter() - started
    shard.close()
    setting = f"HNSW m={QDRANT_HNSW['m']} ef_construct={QDRANT_HNSW['ef_construct']}, float32"
    return {"ingest_s": ingest_s, "index_s": index_s, "setting": setting}


def qdrant_open(ctx: Context, built: dict[str, Any]) -> Any:
    import qdrant_edge as q

    return q.EdgeShard.load(str(ctx.home("qdrant") / "shard"))


def _qdrant_request(setting: Setting, query: np.ndarray) -> Any:
    import qdrant_edge as q

    return q.QueryRequest(
        limit=K,
        query=q.Query.Nearest(query.tolist()),
        params=q.SearchParams(hnsw_ef=setting["ef"]),
    )


def qdrant_one(shard: Any, setting: Setting, query: np.ndarray) -> np.ndarray:
    return padded([point.id for point in shard.query(_qdrant_request(setting, query))])


def qdrant_batch(shard: Any, setting: Setting, queries: np.ndarray) -> np.ndarray:
    import qdrant_edge as q

    batch = q.QueryBatchRequest([_qdrant_request(setting, query) for query in queries])
    return np.stack([padded([p.id for p in points]) for points in shard.query_batch(batch)])


def qdrant_ladder(ctx: Context, built: dict[str, Any]) -> list[list[Setting]]:
    return [[{"ef": ef} for ef in EF_LADDER]]


def _faiss_engine(name: str, label: str, **kwargs: Any) -> Engine:
    return Engine(
        name,
        label,
        search_one=kwargs.pop("search_one", faiss_one),
        search_batch=kwargs.pop("search_batch", faiss_batch),
        imports=("faiss",),
        **kwargs,
    )


def _milvus_engine(name: str, label: str) -> Engine:
    return Engine(
        name,
        label,
        build=lambda ctx: milvus_build(ctx, name),
        open=lambda ctx, built: milvus_open(ctx, built, name),
        ladder=milvus_ladder,
        search_one=milvus_one,
        search_batch=milvus_batch,
        close=milvus_close,
        server=lambda handle: (handle[0].pid, handle[2]),
    )


# in the order a run goes: cheapest builds first, so a run cut short still has most rows
ENGINES = {
    engine.name: engine
    for engine in (
        Engine(
            "lookalike",
            "lookalike (Collection.search)",
            build=lookalike_build,
            open=lookalike_open,
            ladder=lambda ctx, built: [[{}]],  # tuned at build: rebuild_index(target_recall)
            search_one=lookalike_one,
            search_batch=lookalike_batch,
            close=lambda handle: handle[0].close(),
            imports=("lookalike.collection", "faiss"),
        ),
        _faiss_engine(
            "faiss-hnsw",
            "Faiss HNSW (by hand)",
            build=faiss_hnsw_build,
            open=faiss_hnsw_open,
            ladder=hnsw_ladder,
        ),
        _milvus_engine("milvus-ivf-sq8", "Milvus standalone IVF_SQ8"),
        Engine(
            "qdrant",
            "Qdrant engine (qdrant-edge)",
            build=qdrant_build,
            open=qdrant_open,
            ladder=qdrant_ladder,
            search_one=qdrant_one,
            search_batch=qdrant_batch,
            close=lambda shard: shard.close(),
            imports=("qdrant_edge",),
        ),
        _milvus_engine("milvus-hnsw", "Milvus standalone HNSW"),
        Engine(
            "lancedb",
            "LanceDB (embedded)",
            build=lance_build,
            open=lance_open,
            ladder=lance_ladder,
            search_one=lance_one,
            search_batch=lance_batch,
            imports=("lancedb", "pyarrow"),
        ),
        _faiss_engine(
            "autofaiss",
            "autofaiss index, served as clip-retrieval (mmap)",
            build=autofaiss_build,
            open=autofaiss_open,
            ladder=autofaiss_ladder,
            search_one=autofaiss_one,
            search_batch=autofaiss_batch,
        ),
    )
}

# ---------------------------------------------------------------------------------------
# the two steps each engine runs in a process of its own


def build_step(ctx: Context, engine: Engine) -> dict[str, Any]:
    log(f"{engine.name}: building")
    built = engine.build(ctx)
    built["build_s"] = built["ingest_s"] + built["index_s"]
    log(f"{engine.name}: built in {built['build_s']:.0f} s ({built['setting']})")
    return built


def timed_batch(engine: Engine, handle: Any, setting: Setting, queries: np.ndarray):
    started = time.perf_counter()
    found = engine.search_batch(handle, setting, queries)
    return found, time.perf_counter() - started


SLOWEST_BATCH_S = 120.0  # a setting that takes longer for the tuning batch ends its group


def sweep(ctx: Context, engine: Engine, handle: Any, built: dict[str, Any]):
    """The fastest setting that reaches the target recall on the tuning queries."""
    tune, _ = ctx.query_sets()
    truth, _ = ctx.truth()
    tried, best = [], None
    for group in engine.ladder(ctx, built):
        previous = -1.0
        for step, setting in enumerate(group):
            engine.search_batch(handle, setting, tune[:20])  # warm caches at this setting
            found, seconds = timed_batch(engine, handle, setting, tune)
            got = recall(found, truth)
            tried.append({"setting": setting, "recall": got, "batch_s": seconds})
            log(f"{engine.name}: {setting} recall {got:.3f} batch {seconds:.2f} s")
            if got >= ctx.target:
                if best is None or seconds < best["batch_s"]:
                    best = tried[-1]
                break
            if step == 0 and best is not None and seconds > best["batch_s"]:
                return best, True, tried  # costlier groups from here on
            if seconds > SLOWEST_BATCH_S:
                break  # slower than any peer's answer at the target: not a contender
            if got < previous + 0.003:
                break  # this knob has stopped paying: the next group moves the other one
            previous = got
    met = best is not None
    best = best or max(tried, key=lambda t: t["recall"])
    return best, met, tried


def warm_page_cache(folder: Path) -> None:
    """Reads every file of an engine once, so each starts as on a server up for a while: its
    files in the page cache (read(), not mapped: no process's memory grows by it)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as data:
                while data.read(16 << 20):
                    pass


def search_step(ctx: Context, engine: Engine, built: dict[str, Any]) -> dict[str, Any]:
    """Open in this fresh process, sweep, then time and weigh at the chosen setting."""
    import importlib

    for module in engine.imports:
        importlib.import_module(module)
    tune, timed = ctx.query_sets()
    _, timed_truth = ctx.truth()
    warm_page_cache(ctx.home(engine.name))
    pid, before = os.getpid(), memory(os.getpid())
    started = time.perf_counter()
    handle = engine.open(ctx, built)
    open_s = time.perf_counter() - started
    if engine.server is not None:
        pid, before = engine.server(handle)
    try:
        best, met, tried = sweep(ctx, engine, handle, built)
        setting = best["setting"]
        _, batch_s = timed_batch(engine, handle, setting, tune)
        times, found = [], []
        for query in timed:
            started = time.perf_counter()
            found.append(engine.search_one(handle, setting, query))
            times.append(time.perf_counter() - started)
        after = memory(pid)
    finally:
        engine.close(handle)
    return {
        "setting": setting,
        "target_met": met,
        "recall_tune": best["recall"],
        "recall_timed": recall(np.stack(found), timed_truth),
        "p50_ms": float(np.percentile(times, 50) * 1000),
        "p99_ms": float(np.percentile(times, 99) * 1000),
        "batch_qps": len(tune) / batch_s,
        "anon_bytes": after["anon"] - before["anon"],
        "file_bytes": after["file"] - before["file"],
        "open_s": open_s,
        "sweep": tried,
    }


def worker(ctx: Context, step: str, name: str) -> None:
    """One step of one engine, in this process; its answer goes to the results folder."""
    engine = ENGINES[name]
    results = results_dir(ctx)
    if step == "build":
        answer = build_step(ctx, engine)
    else:
        built = json.loads((results / f"{name}.build.json").read_text(encoding="utf-8"))
        answer = search_step(ctx, engine, built)
    (results / f"{name}.{step}.json").write_text(
        json.dumps(answer, indent=1, default=str), encoding="utf-8"
    )


def results_dir(ctx: Context) -> Path:
    path = ctx.workdir / f"results-{ctx.n}-{ctx.queries}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_step(ctx: Context, step: str, name: str, timeout: float) -> str | None:
    """Runs one step in a fresh process unless its answer is there; the error, if any."""
    if (results_dir(ctx) / f"{name}.{step}.json").exists():
        return None
    command = [sys.executable, __file__, "--worker", step, "--engines", name]
    command += ["--n", str(ctx.n), "--workdir", str(ctx.workdir)]
    command += ["--queries", str(ctx.queries), "--target", str(ctx.target)]
    step_log = results_dir(ctx) / f"{name}.{step}.log"
    log(f"{name}: {step} (fresh process; its output: {step_log})")
    # the step writes to a file, not a pipe: it finishes even if this run is stopped
    with step_log.open("w", encoding="utf-8") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    stop_leftover_server(ctx, child.pid)
    if child.returncode == -9:
        return f"{step} ran past {timeout:.0f} s"
    if child.returncode:
        lines = [
            line.strip()
            for line in step_log.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        return f"{step} failed: {lines[-1] if lines else child.returncode}"
    return None


def server_pid_file(ctx: Context, step_pid: int) -> Path:
    """Where a step records the pid of the Milvus server it started."""
    return results_dir(ctx) / f"milvus-server-of-{step_pid}.pid"


def stop_leftover_server(ctx: Context, step_pid: int) -> None:
    """Ends the Milvus server that a killed or crashed step left running, and only that."""
    pid_file = server_pid_file(ctx, step_pid)
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text(encoding="utf-8"))
    binary = str(ctx.workdir / f"milvus-{ctx.n}" / "bin" / "milvus")
    with contextlib.suppress(OSError):
        if os.readlink(f"/proc/{pid}/exe") == binary:
            os.kill(pid, 9)
            log(f"stopped the Milvus server step {step_pid} left running, pid {pid}")
    pid_file.unlink()


# ---------------------------------------------------------------------------------------
# the report


def cpu_line() -> str:
    lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), "?")
    flags = set(next(ln for ln in lines if ln.startswith("flags")).split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")
    present = " ".join(f"{f}{'' if f in flags else ' (no)'}" for f in wanted)
    return f"{model}, {CORES} cores, flags: {present}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ("faiss-cpu", "autofaiss", "lancedb", "milvus", "pymilvus", "qdrant-edge-py", "numpy")
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def row(name: str, built: dict[str, Any], found: dict[str, Any], n: int) -> str:
    setting = ", ".join(f"{k}={v}" for k, v in found["setting"].items()) or "as built"
    missed = "" if found["target_met"] else " (target not reached)"
    return (
        f"| {ENGINES[name].label} | {built['setting']}; search {setting}{missed} "
        f"| {built['build_s']:.0f} ({built['ingest_s']:.0f} + {built['index_s']:.0f}) "
        f"| {found['p50_ms']:.2f} | {found['p99_ms']:.2f} | {found['batch_qps']:.0f} "
        f"| {found['anon_bytes'] / n:.0f} | {(found['anon_bytes'] + found['file_bytes']) / n:.0f} "
        f"| {found['recall_tune']:.3f} / {found['recall_timed']:.3f} |"
    )


def ratios(name: str, ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b > 0 else "n/a"

    mem_ours = max(ours["anon_bytes"], 1)
    rss_ours = max(ours["anon_bytes"] + ours["file_bytes"], 1)
    return (
        f"| {ENGINES[name].label} | {ratio(theirs['p50_ms'], ours['p50_ms'])} "
        f"| {ratio(theirs['p99_ms'], ours['p99_ms'])} "
        f"| {ratio(ours['batch_qps'], theirs['batch_qps'])} "
        f"| {ratio(theirs['anon_bytes'], mem_ours)} "
        f"| {ratio(theirs['anon_bytes'] + theirs['file_bytes'], rss_ours)} |"
    )


def report(ctx: Context, names: Sequence[str], errors: dict[str, str]) -> str:
    results = results_dir(ctx)
    done = {}
    for name in names:
        build_file, search_file = results / f"{name}.build.json", results / f"{name}.search.json"
        if build_file.exists() and search_file.exists():
            done[name] = (
                json.loads(build_file.read_text(encoding="utf-8")),
                json.loads(search_file.read_text(encoding="utf-8")),
            )
    lines = [
        f"{ctx.n:,} vectors x {DIM}-d ({Mixture()}), {ctx.queries} tuning + {ctx.queries} "
        f"timed held-out queries, k={K}, target recall@20 >= {ctx.target}",
        f"CPU: {cpu_line()}; load average at the end {os.getloadavg()[0]:.1f}",
        f"Python {platform.python_version()}; {versions()}",
        "",
        "| engine | index; search setting | build s (ingest + index) | p50 ms | p99 ms "
        "| batch QPS | anon B/vector | anon + file B/vector | recall@20 tune / timed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [row(name, *done[name], ctx.n) for name in names if name in done]
    lines += [f"| {ENGINES[name].label} | {errors[name]} | | | | | | | |" for name in errors]
    if "lookalike" in done:
        ours = done["lookalike"][1]
        lines += [
            "",
            "Ratios, same run (above 1x: lookalike better): peer p50 / lookalike p50, peer p99 "
            "/ lookalike p99, lookalike QPS / peer QPS, peer memory / lookalike memory.",
            "",
            "| vs | p50 | p99 | batch QPS | anon memory | anon + file memory |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [ratios(n, ours, done[n][1]) for n in names if n in done and n != "lookalike"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500, help="per set (tuning, timed)")
    parser.add_argument("--target", type=float, default=0.95, help="recall@20 to reach")
    parser.add_argument("--engines", nargs="+", choices=sorted(ENGINES), default=list(ENGINES))
    parser.add_argument("--workdir", type=Path, default=Path("peers-work"))
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per step")
    parser.add_argument(
        "--builds-only",
        action="store_true",
        help="only build (a second run can build beside a first; searches run one at a time)",
    )
    parser.add_argument("--worker", choices=("build", "search"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.n, args.workdir.resolve(), args.target, args.queries)
    if args.worker:
        worker(ctx, args.worker, args.engines[0])
        return
    prepare_data(ctx)
    errors = {}
    for name in args.engines:
        for step in ("build",) if args.builds_only else ("build", "search"):
            error = run_step(ctx, step, name, args.timeout)
            if error:
                errors[name] = error
                log(f"{name}: {error}")
                break
    table = report(ctx, args.engines, errors)
    (results_dir(ctx) / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(CORES))
    os.environ.setdefault("LANCE_LOG", "error")  # not a warning per query about _distance
    main()
