"""Facts about this machine and fixed inputs that the encoder runtimes share (a leaf: it
imports no other part of lookalike)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    try:
        cores: set[tuple[str, str]] = set()
        package = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "physical id":
                package = value
            elif key == "core id":
                cores.add((package, value))
    except OSError:
        cores = set()
    logical = os.cpu_count() or usable
    threads_per_core = max(1, round(logical / len(cores))) if cores else 1
    return max(1, usable // threads_per_core)


def probe_images(size: int) -> np.ndarray:
    """Four fixed images (noise and a smooth ramp) that check an export against its source."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, size, dtype=np.float32).astype(np.uint8)
    smooth = np.broadcast_to(ramp[None, :, None, None], (1, size, size, 3))
    return np.concatenate([noise, smooth]).copy()
