"""open_clip towers run by OpenVINO from the cached float32 ONNX export.

Where the CPU multiplies bfloat16 natively (AVX-512 BF16, AMX), OpenVINO runs the matrix
multiplies in bfloat16 with float32 accumulation: about twice the float32 rate, since the
towers are bound by their matrix multiplies. Elsewhere it runs float32. Before first use on a
model, its vectors are checked once against the float32 export on a probe batch and must
agree to cosine >= 0.9999 per vector, the float32 bar; the result is cached, and a model
that misses it is refused (``auto`` then falls back to ONNX Runtime float32).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from .cache import build_once, cache_key, weights_identity
from .onnx import EXPORT_FORMAT, META, ExportError, OnnxEncoder, Runner, _probe_images, ort_runner

MIN_AGREEMENT = 0.9999
CHECK_FORMAT = 1


class OpenVinoEncoder(OnnxEncoder):
    """An open_clip model run by OpenVINO (see the module doc)."""

    def __init__(
        self,
        name: str,
        weights: str | Path | None = None,
        threads: int | None = None,
        device: str | None = None,
    ) -> None:
        import openvino

        self.core = openvino.Core()
        self.precision = "bf16" if _native_bf16(self.core) else "f32"
        super().__init__(name, weights, "onnx", threads=threads, device=device)
        self.runtime = "openvino"
        key = cache_key(
            {
                "spec": self.spec,
                "weights": weights_identity(weights),
                "lookalike": __version__,
                "format": [EXPORT_FORMAT, CHECK_FORMAT],
                "variant": "openvino",
                "openvino": openvino.__version__,
                "precision": self.precision,
            }
        )
        check = json.loads((build_once(key, self._check) / META).read_text())
        if not check["ok"]:
            raise ExportError(
                f"OpenVINO {self.precision} agrees with the float32 export of {name} only to "
                f"cosine {min(check['agreement'].values()):.5f} (< {MIN_AGREEMENT})"
            )

    def _load(self, path: Path) -> Runner:
        from .runtime import physical_cores

        compiled = self.core.compile_model(
            str(path),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": self.precision,
                "INFERENCE_NUM_THREADS": self.threads or physical_cores(),
                "PERFORMANCE_HINT": "LATENCY",
                "ENABLE_CPU_PINNING": False,  # the cores are shared with decoders and a server
            },
        )
        local = threading.local()  # an infer request serves one thread at a time

        def run(feed: np.ndarray) -> np.ndarray:
            if not hasattr(local, "request"):
                local.request = compiled.create_infer_request()
            return local.request.infer({0: feed})[0].copy()

        return run

    def _check(self, folder: Path) -> None:
        """Least cosine per tower between this engine and the float32 export on probes."""
        feeds = {
            "image": _probe_images(self.image_size),
            "text": np.asarray(self._meta["probe_tokens"], dtype=np.int64),
        }
        agreement = {}
        for tower, feed in feeds.items():
            path = self._folder / f"{tower}.onnx"
            expected = ort_runner(path, self.threads, ["CPUExecutionProvider"])(feed)
            got = self._load(path)(feed)
            agreement[tower] = float(np.min(np.sum(got * expected, axis=1)))
        result: dict[str, Any] = {
            "precision": self.precision,
            "agreement": agreement,
            "ok": all(value >= MIN_AGREEMENT for value in agreement.values()),
        }
        (folder / META).write_text(json.dumps(result, indent=2) + "\n")


def _native_bf16(core: Any) -> bool:
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
