"""Which engine runs an open_clip encoder, and with how many threads.

- ``torch``: the model as open_clip builds it; the reference, and the choice on a GPU;
- ``onnx``: both towers exported once to ONNX and run by ONNX Runtime, float32 (agrees with
  torch to cosine >= 0.9999 per vector);
- ``onnx-int8``: the same with int8 weights (dynamic quantization): faster on CPUs with int8
  dot products, vectors change slightly (cosine >= 0.99), so it is only used when asked for;
- ``auto``: torch on CUDA, else ``AUTO_CPU``, the fastest float32-exact variant measured by
  ``bench/encoder.py`` (see ``bench/RESULTS.md``); torch when ONNX Runtime is missing or the
  model does not export.

torchvision backbones run on torch only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import BadInputError

log = logging.getLogger("lookalike")

RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
AUTO_CPU = "onnx"


def resolve_runtime(runtime: str, device: str | None) -> str:
    """The concrete runtime ``runtime`` names for a model on ``device``."""
    if runtime not in RUNTIMES:
        raise BadInputError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    from ._torch import pick_device

    if pick_device(device).type != "cpu" or not onnxruntime_available():
        return "torch"
    return AUTO_CPU


def load_open_clip(
    name: str,
    weights: str | Path | None,
    device: str | None,
    runtime: str = "auto",
    threads: int | None = None,
) -> object:
    """An open_clip encoder on the runtime asked for (see the module doc)."""
    from .openclip import OpenClipEncoder

    choice = resolve_runtime(runtime, device)
    if choice != "torch":
        from .onnx import ExportError, OnnxEncoder

        try:
            return OnnxEncoder(name, weights, choice, threads=threads, device=device)
        except (ExportError, ImportError) as error:
            if runtime != "auto":
                raise
            log.warning("open_clip:%s runs on torch: %s", name, error)
    set_torch_threads(threads)
    return OpenClipEncoder(name, weights=weights, device=device)


def set_torch_threads(threads: int | None) -> None:
    """Torch's intra-op threads for this process, when a count is given."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and onnx (to export) are installed."""
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None and find_spec("onnx") is not None


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
