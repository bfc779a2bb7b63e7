"""Worker processes that end when their parent does, however it ended (SIGKILL included).

A process that multiprocessing started outlives a parent that dies without shutting it down:
ProcessPoolExecutor's and uvicorn's workers each hold both ends of the pipes they wait on, so
no end of file ever comes, and they sleep on for good, with the resource tracker that the
parent started (it ends only once the last process holding its pipe has).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time

POLL_SECONDS = 0.25
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(grace_seconds: float = 0.0) -> None:
    """End this process soon after the process that started it through multiprocessing ends.

    The process gets SIGTERM: at once on Linux (PR_SET_PDEATHSIG), and everywhere within
    ``POLL_SECONDS`` from a daemon thread that watches for it being re-parented; that thread
    ends the process outright ``grace_seconds`` later if SIGTERM did not (a server finishing
    its requests). Call it early in the child, e.g. as a pool's initializer; in a process
    that multiprocessing did not start it does nothing. Linux sends the signal when the
    parent's *thread* that started the child ends: start children from a thread that
    outlives them (the main thread, or the one that shuts the pool down).
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    _ask_for_parent_death_signal()
    # the pid the parent had when it started us: a parent dead already is noticed at once
    watch = threading.Thread(
        target=_watch, args=(parent.pid, grace_seconds), name="die-with-parent", daemon=True
    )
    watch.start()


def _ask_for_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), *[ctypes.c_ulong(0)] * 3)
    except (OSError, AttributeError):
        pass  # the watching thread still ends the process, a moment later


def _watch(parent_pid: int, grace_seconds: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_seconds)
    os._exit(1)
