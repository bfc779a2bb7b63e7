"""Which engine runs an open_clip encoder, and with how many threads.

- ``torch``: the model as open_clip builds it; the reference, and the choice on a GPU;
- ``onnx``: both towers exported once to ONNX and run by ONNX Runtime, float32 (agrees with
  torch to cosine >= 0.9999 per vector);
- ``openvino``: the same export run by OpenVINO, in bfloat16 where the CPU has it natively
  (about 2x float32), checked once per model to agree to cosine >= 0.9999 too;
- ``onnx-int8``: the ONNX export with int8 weights (dynamic quantization): faster on CPUs with
  int8 dot products, vectors change slightly (cosine >= 0.99), so it is only used when asked;
- ``int8``: the export statically quantized to int8 with calibration, run by OpenVINO where
  the CPU has int8 dot products (VNNI, AMX) and by ONNX Runtime elsewhere, checked once per
  model and tower to agree with float32 to cosine >= 0.999 (:mod:`lookalike.encoders.int8`);
- ``auto``: torch on CUDA, else the first of ``AUTO_CPU`` that is installed and passes its
  check: the fastest variants measured by ``bench/encoder.py`` (see ``bench/RESULTS.md``)
  that keep cosine >= 0.999 to float32; torch when none does. ``int8`` and OpenVINO check each
  tower on first use and hand a tower that misses their bar to the next runtime (``int8`` to
  ``openvino``, that to ONNX Runtime float32). The CPU's flags decide the engines and
  precisions (:func:`lookalike.encoders.probe.cpu_flags`; ``$LOOKALIKE_CPU_FLAGS`` overrides
  them).

torchvision backbones run on torch only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import BadInputError

log = logging.getLogger("lookalike")

RUNTIMES = ("auto", "torch", "onnx", "openvino", "onnx-int8", "int8")
AUTO_CPU = ("int8", "openvino", "onnx")


def resolve_runtime(runtime: str, device: str | None) -> list[str]:
    """The runtimes to try, in order, for ``runtime`` and a model on ``device``."""
    if runtime not in RUNTIMES:
        raise BadInputError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return [runtime]
    if _on_gpu(device):
        return ["torch"]
    return [name for name in AUTO_CPU if _installed(name)] + ["torch"]


def _on_gpu(device: str | None) -> bool:
    """Whether the model would run on a GPU, without importing torch (seconds) when no NVIDIA
    driver is present: CUDA needs its device files."""
    if device:
        return not device.startswith("cpu")
    if not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")):
        return False
    from ._torch import pick_device

    return pick_device(device).type != "cpu"


def load_open_clip(
    name: str,
    weights: str | Path | None,
    device: str | None,
    runtime: str = "auto",
    threads: int | None = None,
) -> object:
    """An open_clip encoder on the runtime asked for (see the module doc)."""
    from .onnx import ExportError

    choices = resolve_runtime(runtime, device)
    for at, choice in enumerate(choices):
        try:
            return _load(choice, name, weights, device, threads, runtime, tuple(choices[at + 1 :]))
        except (ExportError, ImportError) as error:
            if runtime != "auto" or choice == "torch":
                raise
            log.warning("open_clip:%s does not run on %s: %s", name, choice, error)
    raise AssertionError("unreachable: torch is the last choice")


def _load(
    choice: str,
    name: str,
    weights: str | Path | None,
    device: str | None,
    threads: int | None,
    runtime: str,
    after: tuple[str, ...] = (),
) -> object:
    if choice == "torch":
        from .openclip import OpenClipEncoder

        set_torch_threads(threads)
        return OpenClipEncoder(name, weights=weights, device=device)
    if choice == "openvino":
        from .openvino import OpenVinoEncoder

        return OpenVinoEncoder(
            name, weights, threads=threads, device=device, fallback=runtime == "auto"
        )
    if choice == "int8":
        from .int8 import Int8Encoder

        exported = [c for c in after if c != "torch"]  # a tower's fallback runs an export

        def fallback() -> Any:
            return _load(exported[0], name, weights, device, threads, runtime, tuple(exported[1:]))

        return Int8Encoder(
            name, weights, threads=threads, device=device, fallback=fallback if exported else None
        )
    from .onnx import OnnxEncoder

    return OnnxEncoder(name, weights, choice, threads=threads, device=device)


def _installed(runtime: str) -> bool:
    """Whether the packages a runtime needs are installed (export needs onnx too)."""
    from importlib.util import find_spec

    needs = {
        "onnx": ("onnxruntime", "onnx"),
        "int8": ("onnxruntime", "onnx"),
        "openvino": ("openvino", "onnxruntime", "onnx"),
    }
    return all(find_spec(package) is not None for package in needs[runtime])


def set_torch_threads(threads: int | None) -> None:
    """Torch's intra-op threads for this process, when a count is given."""
    if threads:
        import torch

        torch.set_num_threads(threads)
