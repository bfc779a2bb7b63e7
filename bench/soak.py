"""Soak test (not in CI): a live server under mixed reads and writes while a CLI ingest runs.

    python bench/soak.py --seconds 120          # prints requests, errors, latencies, RSS slope
    python bench/soak.py --no-writes            # searches only: RSS growth without new data

Builds a tiny random-weight open_clip model (a config JSON and a ``torch.save``'d state dict,
loaded through the ``open_clip:/path/config.json`` + ``--weights`` spec), indexes a folder of
generated images with ``lookalike index``, and starts ``lookalike serve`` on a free 127.0.0.1
port. Then, for ``--seconds``: ``--clients`` threads send a random mix of searches (text, id,
vector, image upload), image uploads and removals, while ``lookalike index`` runs again and
again from another process into the same collection, each time over a new folder. The
server's RSS is sampled every few seconds. Any 5xx answer or connection error counts as an
error; 4xx answers (an id another client just removed) are counted apart. At the end the
collection is checked with ``lookalike verify`` and the server is stopped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

from lookalike.demo import draw_image

HOST = "127.0.0.1"  # load is only ever sent to loopback
NAME = "soak"
TINY_CLIP = {  # the shape of tests/conftest.py's tiny model: fast on a CPU, 32-d vectors
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PHRASES = ("a red car", "police car at night", "a dog in the snow", "woman on a bicycle")
# kind -> weight in the request mix
MIX = {
    "search_text": 3,
    "search_id": 3,
    "search_vector": 3,
    "search_image": 2,
    "add_upload": 2,
    "remove": 1,
}


def tiny_model(folder: Path) -> tuple[str, Path]:
    """(spec, weights file) of a tiny open_clip model with random weights."""
    import open_clip
    import torch

    config = folder / "soak-tiny.json"
    config.write_text(json.dumps(TINY_CLIP), encoding="utf-8")
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = folder / "soak-tiny.pt"
    torch.save(open_clip.create_model("soak-tiny").state_dict(), weights)
    return f"open_clip:{config}", weights


def png(seed: int) -> bytes:
    """A distinct small picture per seed, PNG-encoded."""
    buffer = io.BytesIO()
    draw_image(seed, (48 + seed % 40, 40 + seed % 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_folder(folder: Path, first_seed: int, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(first_seed, first_seed + count):
        (folder / f"img{seed}.png").write_bytes(png(seed))
    return folder


def lookalike(*args: str) -> list[str]:
    return [sys.executable, "-m", "lookalike", *args]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, anonymous resident) memory of a process, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            found[name] = int(value.split()[0]) / 1024
    return found.get("VmRSS", float("nan")), found.get("RssAnon", float("nan"))


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares growth of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 2:
        return float("nan")
    t, mb = np.array(samples).T
    return float(np.polyfit(t, mb, 1)[0] * 60)


class Soak:
    """Shared state of the clients: known ids, per-kind latencies and outcomes."""

    def __init__(self, base: str, ids: list[int], dim: int, seed: int, writes: bool) -> None:
        self.base = base
        self.mix = {k: w for k, w in MIX.items() if writes or k.startswith("search")}
        self.dim = dim
        self.ids = set(ids)
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.slowest: list[tuple[float, float, str, str]] = []  # (latency, start, kind, outcome)
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.upload_seed = 2_000_000 + seed * 100_000

    def pick_id(self, rng: random.Random) -> int:
        with self.lock:
            return rng.choice(tuple(self.ids)) if self.ids else 0

    def next_upload(self) -> int:
        with self.lock:
            self.upload_seed += 1
            return self.upload_seed

    def request(self, http: httpx.Client, kind: str, rng: random.Random) -> None:
        """One request of ``kind``; records its latency and outcome."""
        search = f"{self.base}/v1/collections/{NAME}/search"
        started = time.perf_counter()
        try:
            if kind == "search_text":
                text = f"{rng.choice(PHRASES)} {rng.randrange(10_000)}"  # mostly not cached
                response = http.post(search, json={"text": text, "k": 10})
            elif kind == "search_id":
                response = http.post(search, json={"id": self.pick_id(rng), "k": 10})
            elif kind == "search_vector":
                vector = [rng.gauss(0, 1) for _ in range(self.dim)]
                response = http.post(search, json={"vector": vector, "k": 10})
            elif kind == "search_image":
                image = png(3_000_000 + rng.randrange(1_000_000))
                response = http.post(search, files={"image": ("q.png", image)}, data={"k": "10"})
            elif kind == "add_upload":
                files = [("files", (f"u{i}.png", png(self.next_upload()))) for i in range(2)]
                response = http.post(f"{self.base}/v1/collections/{NAME}/items", files=files)
            else:
                item = self.pick_id(rng)
                response = http.delete(f"{self.base}/v1/collections/{NAME}/items/{item}")
                if response.status_code == 200:
                    with self.lock:
                        self.ids.discard(item)
            outcome = str(response.status_code)
            if response.status_code == 200 and kind != "remove":
                payload = response.json()
                found = [r["id"] for r in payload.get("results", payload.get("items", []))]
                with self.lock:
                    self.ids.update(found)
        except httpx.HTTPError as error:
            outcome = type(error).__name__
        elapsed = time.perf_counter() - started
        with self.lock:
            self.latency[kind].append(elapsed)
            self.outcomes[kind][outcome] += 1
            start = time.monotonic() - elapsed - self.started
            self.slowest = sorted([*self.slowest, (elapsed, start, kind, outcome)])[-8:]

    def client(self, deadline: float, seed: int) -> None:
        rng = random.Random(seed)
        kinds, weights = list(self.mix), list(self.mix.values())
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < deadline:
                self.request(http, rng.choices(kinds, weights)[0], rng)


def is_error(outcome: str) -> bool:
    """5xx answers and connection errors (an exception name) are errors."""
    return not outcome.isdigit() or int(outcome) >= 500


def ingest_loop(
    collection: Path, workdir: Path, origin: float, deadline: float, images: int, log: Path
) -> list[dict]:
    """``lookalike index`` over a new folder, again and again until the deadline."""
    runs: list[dict] = []
    seed = 1_000_000
    while time.monotonic() < deadline:
        folder = image_folder(workdir / f"ingest-{len(runs)}", seed, images)
        seed += images
        if time.monotonic() >= deadline:  # making the folder took the time left
            break
        started = time.monotonic()
        with log.open("a", encoding="utf-8") as out:
            try:
                result = subprocess.run(
                    lookalike("index", str(folder), "-c", str(collection), "--json"),
                    stdout=subprocess.PIPE,
                    stderr=out,
                    text=True,
                    timeout=max(60.0, deadline - time.monotonic() + 60),
                    cwd=workdir,
                    encoding="utf-8",
                )
            except subprocess.TimeoutExpired:
                window = (started - origin, time.monotonic() - origin)
                runs.append({"exit": "killed (timeout)", "window": window})
                break
        summary: dict = {"exit": result.returncode}
        try:
            summary.update(json.loads(result.stdout))
        except ValueError:
            summary["stdout"] = result.stdout[-300:]
        summary["window"] = (started - origin, time.monotonic() - origin)
        runs.append(summary)
    return runs


def percentiles(times: list[float]) -> tuple[float, float]:
    if not times:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(times, [50, 99]) * 1000
    return float(p50), float(p99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images", type=int, default=300, help="in the starting collection")
    parser.add_argument("--ingest-images", type=int, default=300, help="per CLI ingest run")
    parser.add_argument("--sample-every", type=float, default=5, help="RSS sampling, seconds")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--writes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="uploads, removals and the CLI ingest (--no-writes: searches only)",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lookalike-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    collection = workdir / NAME
    if collection.exists():
        shutil.rmtree(collection)

    spec, weights = tiny_model(workdir)
    start_folder = image_folder(workdir / "start", 0, args.images)
    model = ["--model", spec, "--weights", str(weights)]
    first = lookalike("index", str(start_folder), "-c", str(collection), *model, "--json")
    subprocess.run(first, check=True, capture_output=True, cwd=workdir)
    port = free_port()
    base = f"http://{HOST}:{port}"
    log = workdir / "server.log"
    server = subprocess.Popen(
        lookalike("serve", str(collection), "--host", HOST, "--port", str(port)),
        stdout=log.open("w", encoding="utf-8"),
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    try:
        ready = time.monotonic() + 120
        while True:
            if server.poll() is not None or time.monotonic() > ready:
                raise RuntimeError(
                    f"the server did not start:\n{log.read_text(encoding='utf-8')[-2000:]}"
                )
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        report = soak(args, workdir, collection, base, server.pid)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    verify = subprocess.run(
        lookalike("verify", str(collection)),
        capture_output=True,
        text=True,
        cwd=workdir,
        encoding="utf-8",
    )
    report.append(f"\nlookalike verify (after the server stopped): {verify.stdout.strip()}")
    unexpected = log.read_text(encoding="utf-8").count("unexpected error")
    report.append(f"server log: {unexpected} 'unexpected error' entries ({log})")
    print("\n".join(report))
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir)


def soak(
    args: argparse.Namespace, workdir: Path, collection: Path, base: str, pid: int
) -> list[str]:
    """Run clients, the ingest loop and the RSS sampler until the deadline; the report."""
    with httpx.Client(timeout=10) as http:
        count_before = http.get(f"{base}/v1/collections").json()["collections"][0]["count"]
    state = Soak(base, list(range(args.images)), TINY_CLIP["embed_dim"], 0, args.writes)
    started = state.started
    deadline = started + args.seconds
    rss: list[tuple[float, float, float]] = [(0.0, *memory_mb(pid))]
    ingests: list[dict] = []

    def run_ingests() -> None:
        ingests.extend(
            ingest_loop(
                collection, workdir, started, deadline, args.ingest_images, workdir / "ingest.log"
            )
        )

    threads = [
        threading.Thread(target=state.client, args=(deadline, seed), daemon=True)
        for seed in range(args.clients)
    ]
    if args.writes:
        threads.append(threading.Thread(target=run_ingests, daemon=True))
    for thread in threads:
        thread.start()
    while time.monotonic() < deadline:
        time.sleep(min(args.sample_every, max(0.0, deadline - time.monotonic())))
        rss.append((time.monotonic() - started, *memory_mb(pid)))
    for thread in threads:
        thread.join(timeout=180)
    rss.append((time.monotonic() - started, *memory_mb(pid)))
    with httpx.Client(timeout=10) as http:
        count_after = http.get(f"{base}/v1/collections").json()["collections"][0]["count"]
    elapsed = time.monotonic() - started
    return summary(state, rss, ingests, elapsed, count_before, count_after, args)


def summary(
    state: Soak,
    rss: list[tuple[float, float, float]],
    ingests: list[dict],
    elapsed: float,
    count_before: int,
    count_after: int,
    args: argparse.Namespace,
) -> list[str]:
    total = sum(sum(c.values()) for c in state.outcomes.values())
    errors: Counter[str] = Counter()
    for outcomes in state.outcomes.values():
        errors.update({o: n for o, n in outcomes.items() if is_error(o)})
    lines = [
        f"{elapsed:.0f} s, {args.clients} clients, tiny open_clip (32-d), "
        f"{count_before} -> {count_after} live images",
        f"requests: {total} ({total / elapsed:.1f}/s); errors (5xx or connection): "
        f"{sum(errors.values())} {dict(errors) or ''}",
        "",
        "| kind | requests | p50 ms | p99 ms | outcomes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind in state.mix:
        p50, p99 = percentiles(state.latency[kind])
        outcomes = ", ".join(f"{o}: {n}" for o, n in sorted(state.outcomes[kind].items()))
        lines.append(
            f"| {kind} | {len(state.latency[kind])} | {p50:.1f} | {p99:.1f} | {outcomes} |"
        )
    lines.append("")
    for name, column in (("RSS", 1), ("anonymous RSS", 2)):
        series = [(sample[0], sample[column]) for sample in rss]
        half = [(t, mb) for t, mb in series if t >= elapsed / 2]
        lines.append(
            f"server {name}: {series[0][1]:.0f} MB at start, {series[-1][1]:.0f} MB at end, "
            f"peak {max(mb for _, mb in series):.0f} MB; slope "
            f"{slope_mb_per_min(series):+.1f} MB/min (second half "
            f"{slope_mb_per_min(half):+.1f} MB/min)"
        )
    lines += [
        "samples (s: RSS/anonymous MB): "
        + ", ".join(f"{t:.0f}: {mb:.0f}/{anon:.0f}" for t, mb, anon in rss),
        "",
        f"CLI ingest runs during the soak: {len(ingests)}",
    ]
    for run in ingests:
        fields = {k: run.get(k) for k in ("exit", "added", "duplicates", "unchanged")}
        failed = run.get("failed")
        begin, end = run["window"]
        lines.append(
            f"- from {begin:.0f} s to {end:.0f} s (its own count: {run.get('seconds', 0):.1f} s "
            f"of ingest), {fields}"
            + (f", failed {len(failed)}" if failed else "")
            + (f", output {run['stdout']!r}" if "stdout" in run else "")
        )
    lines += ["", "slowest requests (latency s, started at s, kind, outcome):"]
    lines += [f"- {lat:.1f}, {at:.0f}, {kind}, {o}" for lat, at, kind, o in state.slowest[::-1]]
    return lines


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
