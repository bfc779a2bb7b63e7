"""HTTP benchmark: QPS and latency of ``lookalike serve`` under concurrent clients.

    python bench/http_load.py --n 1000000 --clients 16 --seconds 20   # one command; a table
    python bench/http_load.py --n 200000 --reuse /tmp/col-200k --profile  # reuse; + py-spy
    python bench/http_load.py --reuse /tmp/col-1m --baseline-src /tmp/main/src  # old vs new

Builds (or reuses, ``--reuse DIR``) a ``vectors:512`` collection of clustered vectors with
bench/index.py's generator and its IVF index, starts ``lookalike serve`` as a subprocess on a
free 127.0.0.1 port, and drives it for a bounded time with wrk (a Lua script posts a random
pre-made JSON body per request; a small threaded httpx driver stands in when wrk is missing).
Two query kinds, in the same run: vector queries (held-out draws from the mixture, k=20) and
id queries (random live ids, k=20), each with one client and with ``--clients``. In-process
``Collection.search`` rows give the library's own ceiling, so the HTTP layer's share is a
ratio. ``--baseline-src DIR`` serves the same collection a second time from another checkout's
sources (``PYTHONPATH=DIR``) and runs every HTTP row against both servers, one after the
other, so that old and new code are compared under the same load on a shared machine.
``--profile`` samples the server (its workers too) with py-spy during a loaded vector run and
prints where its CPU time goes. The servers are stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from lookalike import Collection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index import Mixture, fill  # bench/index.py: the shared generator

DIM = 512
K = 20
NAME = "bench"
HOST = "127.0.0.1"  # load is only ever sent to loopback
TARGET_QPS = 1000
TARGET_P99_MS = 50.0

WRK_SCRIPT = r"""
-- one JSON body per line of the file given after "--"; a random one per request
local threads = {}
local counter = 0
took_sum, took_n = 0, 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  bodies = {}
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  math.randomseed(id * 7919)
end

function request()
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"},
                    bodies[math.random(#bodies)])
end

function response(status, headers, body)
  local took = body:match('"took_ms":([%d%.eE+-]+)')
  if took then took_sum = took_sum + tonumber(took); took_n = took_n + 1 end
end

function done(summary, latency, requests)
  local sum, n = 0, 0
  for _, t in ipairs(threads) do sum = sum + t:get("took_sum"); n = n + t:get("took_n") end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "took_sum": %f, "took_n": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, e.connect, e.read, e.write, e.status, e.timeout, sum, n))
end
"""


@dataclass
class Run:
    """One measured row."""

    kind: str  # "vector" or "id"
    driver: str  # "library", "wrk" or "httpx"; "wrk (base)": against --baseline-src
    clients: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    took_ms: float | None = None  # server-side mean of the response's took_ms
    cpu_ms: float | None = None  # CPU time of the serving process per request

    @property
    def qps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# -- the collection ------------------------------------------------------------------------


def prepare_collection(args: argparse.Namespace, workdir: Path) -> tuple[Path, bool]:
    """(collection path, whether it holds bench/index.py's mixture); filled if absent."""
    path = args.reuse or workdir / f"http-{args.n}"
    ours = not (path / "lookalike.json").exists() or (path / "bench.json").exists()
    if ours:  # filled, or reused when an earlier run filled it with the same recipe
        print(f"filling {path} with {args.n:,} vectors (reused if filled) ...", flush=True)
        mixture = mixture_of(args)
        seconds = fill(path, args.n, mixture, mixture.model(0))
        print(f"  filled in {seconds:.0f} s", flush=True)
    collection = Collection.open(path)
    if collection.backend.index.kind != "ivf":
        print("building the IVF index ...", flush=True)
        started = time.perf_counter()
        collection.rebuild_index("ivf")
        print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    collection.close()
    return path, ours


def mixture_of(args: argparse.Namespace) -> Mixture:
    return Mixture(args.clusters, args.rank, args.spread, args.noise)


def make_queries(
    collection: Collection, mixture: Mixture | None, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """(held-out query vectors, random live ids)."""
    rng = np.random.default_rng(1)
    view = collection.backend.store.view()
    live = np.flatnonzero(~view.deleted[: view.count])
    if mixture is not None:
        vectors = mixture.draw(rng, mixture.model(0), count)
    else:  # someone else's collection: perturbed stored vectors
        picked = collection.backend.store.vectors.get(np.sort(rng.choice(live, count)), view.count)
        vectors = picked + rng.normal(0, 0.01, picked.shape).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, rng.choice(live, count)


def bodies_file(path: Path, bodies: list[dict]) -> Path:
    """One JSON body per line (as client.py would send them)."""
    path.write_text(
        "".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies), encoding="utf-8"
    )
    return path


# -- drivers -------------------------------------------------------------------------------


def closed_loop(
    call: Callable[[int], float | None], clients: int, seconds: float, kind: str, driver: str
) -> Run:
    """``clients`` threads calling ``call(i)`` back to back until the deadline.

    ``call`` returns the server's took_ms (or None) and raises on an error, whose type names
    the error in the row."""
    deadline = time.perf_counter() + seconds
    lock = threading.Lock()
    times: list[float] = []
    took: list[float] = []
    errors: Counter[str] = Counter()

    def worker(seed: int) -> None:
        i = seed * 100_003
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                server_ms = call(i)
            except Exception as error:  # counted, never raised: the load must go on
                with lock:
                    errors[type(error).__name__] += 1
                continue
            finally:
                i += 1
            elapsed = time.perf_counter() - started
            with lock:
                times.append(elapsed)
                if server_ms is not None:
                    took.append(server_ms)

    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    p50, p99 = np.percentile(times, [50, 99]) * 1000 if times else (float("nan"),) * 2
    return Run(
        kind,
        driver,
        clients,
        len(times),
        wall,
        float(p50),
        float(p99),
        dict(errors),
        float(np.mean(took)) if took else None,
        cpu * 1000 / len(times) if times and driver == "library" else None,
    )


def library_run(
    collection: Collection, queries: list[dict], clients: int, seconds: float, kind: str
) -> Run:
    """In-process ``Collection.search``: the ceiling without HTTP, JSON and pydantic."""

    def call(i: int) -> None:
        collection.search(**queries[i % len(queries)])

    return closed_loop(call, clients, seconds, kind, "library")


def stages(collection: Collection, bodies: list[str], repeat: int = 200) -> list[tuple[str, float]]:
    """Median microseconds of each step of one vector search, in-process and one at a time:
    what a request costs before HTTP, the event loop and the thread hand-offs add theirs."""
    from lookalike.query import Query
    from lookalike.server.app import _hit_body, _hit_json, _json_answer
    from lookalike.server.bodies import parse_json
    from lookalike.server.schemas import SearchBody, SearchResponse

    index = collection.backend.index
    count = collection.backend.store.view().count
    depth = K * getattr(getattr(index, "params", None), "rerank", 1)
    rng = np.random.default_rng(2)
    timings: dict[str, list[float]] = {}

    @contextmanager
    def step(name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        timings.setdefault(name, []).append((time.perf_counter() - started) * 1e6)

    for raw in bodies[:repeat]:
        with step("parse JSON + validate (Query.from_json), as the route does"):
            query = Query.from_json(parse_json(raw.encode(), "the body"))
        with step("  before: json.loads + SearchBody (pydantic)"):
            body = SearchBody.model_validate(json.loads(raw))
            body.model_dump(include={"vector"}, exclude_none=True)
        vector = np.asarray(query.parts[0].value, dtype=np.float32)
        with step("store.view + allowed mask"):
            allowed = collection.backend._allowed(None, [])
        with step("index.search (Faiss IVF + re-rank)"):
            index.search(vector[None], K, count, allowed)
        candidates = np.sort(rng.choice(count, depth, replace=False))
        with step(f"  of which VectorShards.get of {depth} candidates (random ids)"):
            collection.backend.store.vectors.get(candidates, count)
        with step("  the same rows by one fancy index per shard (what-if)"):
            for start, block in collection.backend.store.vectors.chunks(count):
                inside = candidates[(candidates >= start) & (candidates < start + len(block))]
                np.asarray(block)[inside - start]
        with step("Collection.search, all of it"):
            hits = collection.search(vector=vector, k=K)
        with step("  of which Store.rows of the 20 hits"):
            collection.backend.store.rows([hit.id for hit in hits])
        with step(f"response ({K} hits straight to JSON), as the route does"):
            _json_answer(
                SearchResponse,
                {"results": [_hit_json(NAME, h) for h in hits], "took_ms": 1.0, "model": "m"},
            )
        with step(f"  before: HitBody x {K}, validated again, JSON"):
            answer = SearchResponse(
                results=[_hit_body(NAME, hit) for hit in hits], took_ms=1.0, model="m"
            )
            json.dumps(SearchResponse.model_validate(answer.model_dump()).model_dump(mode="json"))
    return [(name, float(np.median(values))) for name, values in timings.items()]


def wrk_run(
    wrk: str, url: str, bodies: Path, clients: int, seconds: float, kind: str, workdir: Path
) -> Run:
    """wrk, keep-alive connections, a random body of ``bodies`` per request."""
    script = workdir / "bodies.lua"
    script.write_text(WRK_SCRIPT, encoding="utf-8")
    threads = min(clients, os.cpu_count() or 1)
    command = [wrk, f"-t{threads}", f"-c{clients}", f"-d{seconds:.0f}s", "--timeout", "10s"]
    result = subprocess.run(
        [*command, "-s", str(script), url, "--", str(bodies)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
        encoding="utf-8",
    )
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("RESULT "))
    data = json.loads(line.removeprefix("RESULT "))
    errors = {
        name: data[name] for name in ("connect", "read", "write", "status", "timeout") if data[name]
    }
    return Run(
        kind,
        "wrk",
        clients,
        data["requests"],
        data["seconds"],
        data["p50_ms"],
        data["p99_ms"],
        errors,
        data["took_sum"] / data["took_n"] if data["took_n"] else None,
    )


def httpx_run(url: str, bodies: Path, clients: int, seconds: float, kind: str) -> Run:
    """The fallback driver: threads with keep-alive httpx clients (costs the box more CPU)."""
    payloads = bodies.read_text(encoding="utf-8").splitlines()
    local = threading.local()

    def call(i: int) -> float | None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=10)
        response = local.client.post(
            url, content=payloads[i % len(payloads)], headers={"content-type": "application/json"}
        )
        if response.status_code >= 400:
            raise RuntimeError(f"HTTP {response.status_code}")
        return float(response.json()["took_ms"])

    return closed_loop(call, clients, seconds, kind, "httpx")


# -- the server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def start_server(
    path: Path, port: int, log: Path, env: dict[str, str], workers: int = 1
) -> subprocess.Popen:
    """``lookalike serve`` in its own process; returns once /health answers (or raises)."""
    command = [sys.executable, "-m", "lookalike", "serve", f"{NAME}={path}"]
    process = subprocess.Popen(
        [*command, "--host", HOST, "--port", str(port), "--workers", str(workers)],
        stdout=log.open("w", encoding="utf-8"),
        stderr=subprocess.STDOUT,
        cwd=log.parent,
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited ({process.returncode}):\n{log.read_text(encoding='utf-8')}"
            )
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop_server(process)
    raise RuntimeError("the server did not answer /health within 120 s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its living children (the workers of
    ``serve --workers``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rpartition(")")[2].split()
    except OSError:  # ended meanwhile
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children(pid))


def children(pid: int) -> list[int]:
    """Ids of a process' child processes."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text(encoding="utf-8").split()]
        except OSError:
            continue
    return found


def wait_idle(pid: int, limit: float = 120) -> float:
    """Wait (at most ``limit`` s) until the server has finished requests its clients gave up
    on, so they do not load the next row; returns the seconds waited."""
    started = time.monotonic()
    before = cpu_seconds(pid)
    while time.monotonic() - started < limit:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - before < 0.05:
            break
        before = now
    return time.monotonic() - started


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process and its workers (VmRSS), or one of its parts (RssAnon,
    RssFile), in MB, summed: shared file pages (mapped vector shards) count once a process."""
    total = 0.0
    for process in (pid, *children(pid)):
        for line in Path(f"/proc/{process}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith(f"{field}:"):
                total += int(line.split()[1]) / 1024
    return total


# -- profile -------------------------------------------------------------------------------

# (function name or "", path fragment, category): the deepest frame matching a rule names the
# category of a sample (None: ask the caller's frame); rules are tried in order, leaf first
CATEGORIES: list[tuple[str, str, str | None]] = [
    ("wait", "threading.py", "waiting (py-spy took a blocked thread for busy)"),
    ("", "selectors.py", "waiting (py-spy took a blocked thread for busy)"),
    ("_select", "lookalike/store.py", None),  # helpers: their caller names the category
    ("get", "lookalike/store.py", None),
    ("_map", "lookalike/store.py", None),
    ("", "lookalike/index/", "index search (Faiss IVF + exact re-rank)"),
    ("_allowed", "lookalike/backends/embedded.py", "allowed mask + view (O(n) per query)"),
    ("refresh", "lookalike/store.py", "allowed mask + view (O(n) per query)"),
    ("view", "lookalike/store.py", "allowed mask + view (O(n) per query)"),
    ("rows", "lookalike/store.py", "row lookup (SQLite)"),
    ("_row", "lookalike/store.py", "row lookup (SQLite)"),
    ("", "lookalike/store.py", "store, other"),
    ("_hit_body", "lookalike/server/app.py", "response (hits -> JSON)"),
    ("_hit_json", "lookalike/server/app.py", "response (hits -> JSON)"),
    ("_public_fields", "lookalike/server/app.py", "response (hits -> JSON)"),
    ("_json_answer", "lookalike/server/app.py", "response (hits -> JSON)"),
    ("dumps", "lookalike/server/fastjson.py", "response (hits -> JSON)"),
    ("", "lookalike/server/fastjson.py", "request (JSON parse + Query validation)"),
    ("links", "lookalike/server/bodies.py", "response (hits -> JSON)"),
    ("", "fastapi/encoders.py", "response (hits -> JSON)"),
    ("serialize_response", "fastapi/routing.py", "response (hits -> JSON)"),
    ("render", "starlette/responses.py", "response (hits -> JSON)"),
    ("", "lookalike/server/bodies.py", "request (JSON parse + Query validation)"),
    ("_search_query", "lookalike/server/app.py", "request (JSON parse + Query validation)"),
    ("_run_search", "lookalike/server/app.py", "request (JSON parse + Query validation)"),
    ("", "lookalike/query.py", "query vector + hits (collection glue)"),
    ("", "lookalike/collection.py", "query vector + hits (collection glue)"),
    ("", "lookalike/types.py", "query vector + hits (collection glue)"),
    ("", "lookalike/server/", "middleware (guard, metrics)"),
    ("", "fastapi/", "framework (FastAPI/Starlette routing)"),
    ("", "starlette/", "framework (FastAPI/Starlette routing)"),
    ("", "uvicorn/", "HTTP protocol (uvicorn: httptools or h11, socket writes)"),
    ("", "h11/", "HTTP protocol (uvicorn: httptools or h11, socket writes)"),
    ("", "anyio/", "thread hand-off (anyio)"),
    ("", "asyncio/", "event loop (asyncio)"),
]
FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<path>[^:)]+)")


def categorize(stack: list[str]) -> str:
    """The category of one sampled stack (frames root first)."""
    for frame in reversed(stack):
        match = FRAME.match(frame)
        if not match:
            continue
        func = match["func"].rpartition(".")[2]  # py-spy names methods Class.method
        rule = next(
            (c for f, p, c in CATEGORIES if p in match["path"] and (not f or f == func)), ""
        )
        if rule:
            return rule
    return "other"


def profile(pid: int, seconds: float, workdir: Path, load: Callable[[], Run]) -> str:
    """Run ``load`` while py-spy samples the server; a table of where its CPU time went."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return "py-spy is not installed (pip install py-spy): no profile"
    out = workdir / "profile.txt"
    command = [spy, "record", "--pid", str(pid), "--duration", f"{seconds:.0f}", "--rate", "200"]
    command.append("--subprocesses")  # serve --workers: the workers do the work
    sampler = subprocess.Popen(
        [*command, "--gil", "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    run = load()
    _, problems = sampler.communicate(timeout=seconds + 60)
    if sampler.returncode != 0 or not out.exists():
        return f"py-spy failed: {problems.strip()[-300:]}"
    totals: Counter[str] = Counter()
    for line in out.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        totals[categorize(stack.split(";"))] += int(count)
    samples = sum(totals.values())
    lines = [
        f"py-spy, {seconds:.0f} s of {run.clients} clients posting vector queries "
        f"({run.qps:.0f} QPS while sampled); share of the samples in which a server thread "
        "held the GIL:",
        "",
        "| where | share |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {n / samples:.0%} |" for name, n in totals.most_common()]
    return "\n".join(lines)


# -- report --------------------------------------------------------------------------------


def table(runs: list[Run]) -> str:
    lines = [
        "| query | driver | clients | requests | QPS | p50 ms | p99 ms | took_ms | CPU ms/req "
        "| errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        took = f"{r.took_ms:.2f}" if r.took_ms is not None else "-"
        cpu = f"{r.cpu_ms:.2f}" if r.cpu_ms is not None else "-"
        errors = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"
        lines.append(
            f"| {r.kind} | {r.driver} | {r.clients} | {r.requests:,} | {r.qps:.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {took} | {cpu} | {errors} |"
        )
    return "\n".join(lines)


def verdicts(runs: list[Run], clients: int) -> list[str]:
    lines = []
    for r in runs:
        if r.driver == "library" or r.clients != clients:
            continue
        single = next(
            s for s in runs if s.kind == r.kind and s.driver == r.driver and s.clients == 1
        )
        library = next(
            (
                s
                for s in runs
                if s.kind == r.kind and s.driver == "library" and s.clients == clients
            ),
            None,
        )
        met = r.qps >= TARGET_QPS and r.p99_ms <= TARGET_P99_MS and not r.errors
        lines.append(
            f"{r.kind} ({r.driver}): {clients} clients give {r.qps / single.qps:.1f}x the QPS "
            "of 1 client"
            + (f", {r.qps / library.qps:.2f}x in-process QPS" if library else "")
            + f"; target QPS >= {TARGET_QPS} and p99 <= {TARGET_P99_MS:.0f} ms "
            + ("met" if met else "NOT met")
        )
    return lines


def versus_baseline(runs: list[Run]) -> list[str]:
    """New server / baseline server, for each row run against both."""
    lines = []
    for r in runs:
        base = next(
            (
                b
                for b in runs
                if b.driver == f"{r.driver} (base)" and (b.kind, b.clients) == (r.kind, r.clients)
            ),
            None,
        )
        if base is not None and base.qps and r.p99_ms:
            lines.append(
                f"{r.kind}, {r.clients} clients: {r.qps / base.qps:.2f}x the baseline's QPS, "
                f"p50 {r.p50_ms / base.p50_ms:.2f}x, p99 {r.p99_ms / base.p99_ms:.2f}x"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20, help="per HTTP row")
    parser.add_argument("--library-seconds", type=float, default=8, help="per in-process row")
    parser.add_argument("--queries", type=int, default=1000, help="distinct bodies per kind")
    defaults = Mixture()
    parser.add_argument("--clusters", type=int, default=defaults.clusters)
    parser.add_argument("--rank", type=int, default=defaults.rank)
    parser.add_argument("--spread", type=float, default=defaults.spread)
    parser.add_argument("--noise", type=float, default=defaults.noise)
    parser.add_argument("--reuse", type=Path, default=None, help="collection dir, made if absent")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep a collection made in workdir")
    parser.add_argument("--driver", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument("--profile", action="store_true", help="py-spy the server under load")
    parser.add_argument("--server-workers", type=int, default=1, help="lookalike serve --workers")
    parser.add_argument(
        "--server-env", action="append", default=[], help="KEY=VALUE for the server process"
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another checkout's src/: every HTTP row also runs against a server from it",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lookalike-http-"))
    workdir.mkdir(parents=True, exist_ok=True)
    wrk = shutil.which("wrk") if args.driver != "httpx" else None
    if args.driver == "wrk" and not wrk:
        parser.error("wrk is not installed (apt-get install -y wrk)")

    path, ours = prepare_collection(args, workdir)
    collection = Collection.open(path)
    count = len(collection)
    vectors, ids = make_queries(collection, mixture_of(args) if ours else None, args.queries)
    queries = {
        "vector": [{"vector": list(map(float, v)), "k": K} for v in vectors],
        "id": [{"id": int(i), "k": K} for i in ids],
    }
    for _, block in collection.backend.store.vectors.chunks(count):  # map every page: steady state
        float(block[:, 0].sum())
    raw = [json.dumps(b) for b in queries["vector"]]
    steps = stages(collection, raw)
    runs: list[Run] = []
    for kind, bodies in queries.items():
        for clients in (1, args.clients):
            print(f"library: {kind} queries, {clients} threads ...", flush=True)
            runs.append(library_run(collection, bodies, clients, args.library_seconds, kind))
    collection.close()

    files = {kind: bodies_file(workdir / f"{kind}.jsonl", b) for kind, b in queries.items()}
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    env = dict(item.split("=", 1) for item in args.server_env)
    servers = {"": env}  # label in the driver column -> the server's environment
    if args.baseline_src:
        servers[" (base)"] = {**env, "PYTHONPATH": str(args.baseline_src.resolve())}
    processes: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    try:
        for label, server_env in servers.items():
            port = free_port()
            urls[label] = f"http://{HOST}:{port}/v1/collections/{NAME}/search"
            log = workdir / f"server{label.strip(' ()')}.log"
            processes[label] = start_server(path, port, log, server_env, args.server_workers)
        process = processes[""]
        rss_start = rss_mb(process.pid), rss_mb(process.pid, "RssAnon")

        def load(kind: str, clients: int, seconds: float, label: str = "") -> Run:
            pid = processes[label].pid
            cpu = cpu_seconds(pid)
            if wrk:
                run = wrk_run(wrk, urls[label], files[kind], clients, seconds, kind, workdir)
            else:
                run = httpx_run(urls[label], files[kind], clients, seconds, kind)
            run.driver += label
            if run.requests:
                run.cpu_ms = (cpu_seconds(pid) - cpu) * 1000 / run.requests
            drained = wait_idle(pid)
            if drained > 2:
                print(f"  (the server worked {drained:.0f} s more after the clients stopped)")
            return run

        print("warm-up ...", flush=True)
        for label in servers:
            load("vector", args.clients, 3, label)
        for kind in queries:
            for clients in (1, args.clients):
                for label in servers:  # old and new back to back, under the same load
                    print(f"http{label}: {kind} queries, {clients} clients ...", flush=True)
                    runs.append(load(kind, clients, args.seconds, label))
        rss_end = rss_mb(process.pid), rss_mb(process.pid, "RssAnon")
        report = (
            profile(
                process.pid,
                min(args.seconds, 10),
                workdir,
                lambda: load("vector", args.clients, min(args.seconds, 10)),
            )
            if args.profile
            else ""
        )
    finally:
        for running in processes.values():
            stop_server(running)

    body_kb = files["vector"].stat().st_size / args.queries / 1024
    print(
        f"\n{count:,} vectors x {DIM}-d in an IVF index, k={K}, {args.queries} distinct bodies "
        f"per kind (a vector body is {body_kb:.1f} KB), {args.seconds:.0f} s per HTTP row, "
        f"driver {'wrk' if wrk else 'httpx'}; server RSS, all processes summed, "
        f"{rss_start[0]:.0f} -> {rss_end[0]:.0f} MB "
        f"(anonymous {rss_start[1]:.0f} -> {rss_end[1]:.0f} MB; the rest is mapped vector "
        "shards)"
        + (f"; server env {args.server_env}" if args.server_env else "")
        + f"\nCPU: {cpu_model()}, {os.cpu_count()} cores; load average {load_before} before the "
        "HTTP rows\n"
    )
    print(table(runs))
    print(
        "\ntook_ms: mean of the responses' took_ms (the search thread's time, its wait for a "
        "pool thread included); CPU ms/req: CPU time of the serving process (the server, or "
        "this process for library rows) per answered request\n"
    )
    print("\n".join(verdicts(runs, args.clients)))
    print("\n".join(versus_baseline(runs)))
    http_p50 = next(r.p50_ms for r in runs if r.driver != "library" and r.clients == 1)
    print("\none vector query, step by step (in-process, one at a time, median µs):\n")
    print("| step | µs |\n| --- | --- |")
    print("\n".join(f"| {name} | {us:.0f} |" for name, us in steps))
    print(f"| HTTP round trip, 1 client (p50, wrk) | {http_p50 * 1000:.0f} |")
    if report:
        print()
        print(report)
    if not args.reuse and not args.keep:  # a collection made in a fresh workdir
        shutil.rmtree(path)


if __name__ == "__main__":
    main()
