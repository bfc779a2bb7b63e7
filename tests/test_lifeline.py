"""Worker processes end with the process that started them, even one killed with SIGKILL.

Each test starts the CLI in a session (and process group) of its own, kills it with SIGKILL
once its workers run, and checks that nothing it started is left alive: not the decode or
server workers, nor multiprocessing's resource tracker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from helpers import encode
from lookalike import Collection
from lookalike.demo import draw_image

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")

WORKER = "spawn_main"  # in the command line of every process that multiprocessing spawns
ENDED_WITHIN = 10  # seconds


def group(pgid: int) -> dict[int, str]:
    """The live processes (zombies excluded) of process group ``pgid``: pid -> command line."""
    listing = subprocess.run(
        ["ps", "-A", "-ww", "-o", "pid=,pgid=,stat=,args="],  # -ww: command lines uncut
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
        encoding="utf-8",
    ).stdout
    members = {}
    for line in listing.splitlines():
        pid, gid, state, *args = line.split(None, 3)
        if int(gid) == pgid and not state.startswith("Z"):
            members[int(pid)] = args[0] if args else ""
    return members


def wait_for(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + 90
    while not ready():
        assert process.poll() is None, (
            f"the CLI ended before {what}: {log.read_text(encoding='utf-8')[-2000:]}"
        )
        assert time.monotonic() < deadline, (
            f"no {what} in 90 s: {log.read_text(encoding='utf-8')[-2000:]}"
        )
        time.sleep(0.1)


@contextlib.contextmanager
def cli(*args: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The CLI in a process group of its own; whatever is left of the group is killed after."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "lookalike", *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # only this test's group
        process.wait(10)


def kill_and_check_group_ends(
    process: subprocess.Popen[bytes], log: Path, within: float = ENDED_WITHIN
) -> None:
    started = group(process.pid)
    assert sum(WORKER in command for command in started.values()) >= 2, started
    process.kill()
    process.wait(10)
    deadline = time.monotonic() + within
    while (left := group(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, (
        f"alive {within} s after SIGKILL: {left}\n{log.read_text(encoding='utf-8')[-2000:]}"
    )


def stored_vectors(collection: Path) -> bool:
    return any(shard.stat().st_size for shard in collection.rglob("*.f32"))


def workers_of(pgid: int, count: int) -> Callable[[], bool]:
    return lambda: sum(WORKER in command for command in group(pgid).values()) >= count


POOL_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from lookalike import lifeline

    def start_worker():
        if sys.argv[1] == "watchdog":  # as on macOS, which has no parent-death signal
            lifeline._ask_for_parent_death_signal = lambda: None
        lifeline.die_with_parent()

    if __name__ == "__main__":
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=spawn, initializer=start_worker) as pool:
            started = [pool.submit(time.sleep, 0.5) for _ in range(2)]
            [future.result() for future in started]
            sleeping = [pool.submit(time.sleep, 60) for _ in range(2)]
            print("ready", flush=True)
            time.sleep(60)
    """
)


@pytest.mark.parametrize("how", ["signal", "watchdog"])
def test_pool_workers_end_with_their_parent(how: str, tmp_path: Path) -> None:
    script, log = tmp_path / "pool.py", tmp_path / "log"
    script.write_text(POOL_SCRIPT, encoding="utf-8")
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(script), how],
            stdout=subprocess.PIPE,
            stderr=output,
            start_new_session=True,
        )
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n", log
        kill_and_check_group_ends(process, log, within=3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_killed_ingest_leaves_no_worker_behind(tmp_path: Path, tiny_clip: tuple[str, Path]) -> None:
    spec, weights = tiny_clip
    images = tmp_path / "images"
    images.mkdir()
    for i in range(300):
        (images / f"{i:03d}.png").write_bytes(encode(draw_image(i, (160, 120))))
    collection, log = tmp_path / "col", tmp_path / "log"
    options = ["--model", spec, "--weights", str(weights), "--workers", "2", "--batch-size", "2"]
    with cli("index", "-c", str(collection), str(images), *options, log=log) as process:
        wait_for(workers_of(process.pid, 2), process, "decode workers", log)
        wait_for(lambda: stored_vectors(collection), process, "stored batch", log)
        kill_and_check_group_ends(process, log)


def test_killed_server_leaves_no_worker_behind(tmp_path: Path, tiny_clip: tuple[str, Path]) -> None:
    spec, weights = tiny_clip
    with Collection.create(tmp_path / "col", spec, weights=weights) as col:
        col.add_images([encode(draw_image(i, (40, 30))) for i in range(2)])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "log"
    serve = ["serve", str(tmp_path / "col"), "--port", str(port), "--workers", "2"]
    with cli(*serve, log=log) as process:

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_for(workers_of(process.pid, 2), process, "server workers", log)
        wait_for(answers, process, "answer from the server", log)
        kill_and_check_group_ends(process, log)
