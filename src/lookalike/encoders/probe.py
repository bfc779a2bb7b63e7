"""Facts about this machine and fixed inputs that the encoder runtimes share (a leaf: it
imports no other part of lookalike)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CPU_FLAGS_ENV = "LOOKALIKE_CPU_FLAGS"


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    try:
        cores: set[tuple[str, str]] = set()
        package = ""
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
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


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them in /proc/cpuinfo (``avx2``, ``avx512_vnni``,
    ``avx512_bf16``, ``amx_int8``...); empty where unknown (not Linux).

    ``$LOOKALIKE_CPU_FLAGS`` (names separated by spaces or commas) replaces them, to act as
    another CPU, e.g. ``avx2`` for one without AVX-512: the runtime choice then follows it.
    """
    configured = os.environ.get(CPU_FLAGS_ENV)
    if configured is not None:
        return frozenset(configured.replace(",", " ").lower().split())
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def int8_dot_products(flags: frozenset[str]) -> bool:
    """Whether a CPU with ``flags`` multiplies int8 without saturating: VNNI or AMX."""
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def native_bf16(flags: frozenset[str]) -> bool:
    """Whether a CPU with ``flags`` multiplies bfloat16 natively (AVX-512 BF16, AMX)."""
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def probe_images(size: int) -> np.ndarray:
    """Four fixed images (noise and a smooth ramp) that check an export against its source."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, size, dtype=np.float32).astype(np.uint8)
    smooth = np.broadcast_to(ramp[None, :, None, None], (1, size, size, 3))
    return np.concatenate([noise, smooth]).copy()


def synthetic_photos(size: int, count: int, seed: int) -> np.ndarray:
    """``count`` photo-like uint8 images (NHWC): colour fields with natural images' 1/f
    spectrum, lit by a gradient, some with a bright or dark patch. They calibrate and check
    quantized graphs on pixels that look more like photos than noise does."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    falloff = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size) ** rng.uniform(0.8, 1.6, (count, 1, 1))
    images = np.empty((count, size, size, 3), np.uint8)
    ramp = np.linspace(-1.0, 1.0, size)
    for i in range(count):
        channels = []
        for _ in range(3):
            phase = rng.uniform(0, 2 * np.pi, falloff[i].shape)
            field = np.fft.irfft2(falloff[i] * np.exp(1j * phase), s=(size, size))
            channels.append((field - field.mean()) / (field.std() + 1e-9))
        mix = rng.normal(0, 1, (3, 3)) * 0.4 + np.eye(3)  # correlated colours, as in photos
        picture = np.einsum("chw,cd->hwd", np.stack(channels), mix)
        light = (
            rng.uniform(-0.8, 0.8) * ramp[None, :, None]
            + rng.uniform(-0.8, 0.8) * ramp[:, None, None]
        )
        picture = rng.uniform(70, 180, 3) + rng.uniform(20, 60) * (picture + light)
        if i % 3 == 0:
            top, left = rng.integers(0, size // 2, 2)
            picture[top : top + size // 3, left : left + size // 3] = rng.choice([5.0, 250.0])
        images[i] = np.clip(picture, 0, 255).astype(np.uint8)
    return images
