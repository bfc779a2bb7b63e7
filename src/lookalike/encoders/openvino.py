"""open_clip towers run by OpenVINO from the cached float32 ONNX export.

Where the CPU multiplies bfloat16 natively (AVX-512 BF16, AMX), OpenVINO runs the matrix
multiplies in bfloat16 with float32 accumulation: about twice the float32 rate, since the
towers are bound by their matrix multiplies. Elsewhere it runs float32. Before first use of a
tower, its vectors are checked once against the float32 export on a probe batch and must
agree to cosine >= 0.9999 per vector, the float32 bar; the result is cached, and a tower
that misses it is refused, or with ``fallback`` (``auto``) runs on ONNX Runtime float32. The
compiled model is cached beside that check (OpenVINO's ``CACHE_DIR``), so later processes import it
instead of compiling again.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from .cache import build_once, cache_key
from .onnx import (
    EXPORT_FORMAT,
    META,
    ExportError,
    OnnxEncoder,
    Runner,
    ort_runner,
    read_meta,
)
from .probe import cpu_flags, native_bf16, physical_cores, probe_images

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.9999
CHECK_FORMAT = 2
COMPILED = "compiled"


class OpenVinoEncoder(OnnxEncoder):
    """An open_clip model run by OpenVINO (see the module doc)."""

    def __init__(
        self,
        name: str,
        weights: str | Path | None = None,
        threads: int | None = None,
        device: str | None = None,
        fallback: bool = False,
    ) -> None:
        import openvino

        self.core = openvino.Core()
        self.precision = "bf16" if _native_bf16(self.core) else "f32"
        super().__init__(name, weights, "onnx", threads=threads, device=device)
        self.runtime = "openvino"
        self._openvino_version = openvino.__version__
        self.fallback = fallback

    def _load(self, folder: Path, tower: str) -> Runner:
        """The tower compiled by OpenVINO, once checked against the float32 export."""
        check = self._checked(folder, tower)
        agreement = check["agreement"][tower]
        if not agreement >= MIN_AGREEMENT:
            problem = (
                f"OpenVINO {self.precision} agrees with the float32 export of {self.spec} "
                f"({tower} tower) only to cosine {agreement:.5f} (< {MIN_AGREEMENT})"
            )
            if not self.fallback:
                raise ExportError(problem)
            log.warning("%s: running the %s tower on ONNX Runtime instead", problem, tower)
            return super()._load(folder, tower)
        return self._compile(folder / f"{tower}.onnx", check["cache_dir"])

    def _checked(self, folder: Path, tower: str) -> dict[str, Any]:
        """The cached result of checking this engine on one tower (made first if missing)."""
        key = cache_key(
            {
                "export": self._files.key(tower),
                "lookalike": __version__,
                "format": [EXPORT_FORMAT, CHECK_FORMAT],
                "variant": "openvino",
                "openvino": self._openvino_version,
                "precision": self.precision,
                "tower": tower,
            }
        )
        entry = build_once(key, lambda into: self._check(folder, tower, into))
        check = read_meta(entry)
        if check is None:
            raise ExportError(f"cache entry {entry} is unreadable")
        return {**check, "cache_dir": str(entry / COMPILED)}

    def _compile(self, path: Path, cache_dir: str | None) -> Runner:
        return ov_runner(self.core, path, self.precision, self.threads, cache_dir)

    def _check(self, source: Path, tower: str, folder: Path) -> None:
        """Least cosine between this engine and the float32 export on probes, into ``folder``."""
        meta = read_meta(source) or {}
        if tower == "image":
            feed = probe_images(self.image_size)
        else:
            feed = np.asarray(meta["probe_tokens"], dtype=np.int64)
        path = source / f"{tower}.onnx"
        expected = ort_runner(path, self.threads, ["CPUExecutionProvider"])(feed)
        got = self._compile(path, None)(feed)
        result: dict[str, Any] = {
            "spec": self.spec,
            "tower": tower,
            "precision": f"openvino {self.precision}",
            "agreement": {tower: float(np.min(np.sum(got * expected, axis=1)))},
            "files": {},
        }
        (folder / COMPILED).mkdir()
        (folder / META).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def ov_runner(
    core: Any, path: Path, precision: str, threads: int | None, cache_dir: str | None
) -> Runner:
    """The graph at ``path`` compiled by OpenVINO for the CPU, as a function of its one input
    (``precision`` f32 also runs a quantized graph's int8 operations as int8)."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": threads or physical_cores(),
        "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False,  # the cores are shared with decoders and a server
    }
    if cache_dir:
        config["CACHE_DIR"] = cache_dir
    compiled = core.compile_model(str(path), "CPU", config)
    local = threading.local()  # an infer request serves one thread at a time

    def run(feed: np.ndarray) -> np.ndarray:
        if not hasattr(local, "request"):
            local.request = compiled.create_infer_request()
        return local.request.infer({0: feed})[0].copy()

    return run


def _native_bf16(core: Any) -> bool:
    """bfloat16 where both the CPU's flags (:func:`.probe.cpu_flags`, which an override can
    narrow) and OpenVINO say so."""
    return native_bf16(cpu_flags()) and "BF16" in core.get_property(
        "CPU", "OPTIMIZATION_CAPABILITIES"
    )
