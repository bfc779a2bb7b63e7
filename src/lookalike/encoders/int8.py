"""open_clip towers statically quantized to int8, checked once per model against float32.

The graph is the ``onnx-qdq`` export (see :mod:`lookalike.encoders.onnx`): matrix multiplies
by weights in int8, their activation ranges calibrated on probe images and synthetic photos.
The engine follows the CPU's flags (:func:`.probe.cpu_flags`): OpenVINO where the CPU has int8
dot products (VNNI, AMX), whose int8 kernels there are the fastest measured; ONNX Runtime
elsewhere, whose int8 kernels have an AVX2 path (OpenVINO's own int8 falls back to a generic
GEMM without VNNI, no faster than float32).

Before first use of a tower, the engine runs it on a check batch not used to calibrate it
(probe images and other synthetic photos, or the probe texts), and the least per-vector cosine
to the float32 export is stored in a cache entry with the engine's name, once per model, tower,
engine and versions. A tower below ``MIN_AGREEMENT`` is refused, or under ``auto`` handed to
the next runtime (``fallback``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from .cache import build_once, cache_key
from .onnx import (
    EXPORT_FORMAT,
    META,
    ExportError,
    ModelFiles,
    OnnxEncoder,
    Runner,
    check_feed,
    optimized_runner,
    ort_runner,
    read_meta,
)
from .probe import cpu_flags, int8_dot_products

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.999
CHECK_FORMAT = 1
COMPILED = "compiled"


def int8_engine() -> str:
    """Which engine runs int8 graphs on this CPU: ``openvino`` or ``onnxruntime``."""
    from importlib.util import find_spec

    if int8_dot_products(cpu_flags()) and find_spec("openvino") is not None:
        return "openvino"
    return "onnxruntime"


class Int8Encoder(OnnxEncoder):
    """An open_clip model run from its statically quantized export (see the module doc).

    ``fallback`` makes the encoder a tower that misses the bar runs on (``auto``); without it
    such a tower is refused with :class:`ExportError`.
    """

    def __init__(
        self,
        name: str,
        weights: str | Path | None = None,
        threads: int | None = None,
        device: str | None = None,
        fallback: Callable[[], OnnxEncoder] | None = None,
    ) -> None:
        super().__init__(name, weights, "onnx-qdq", threads=threads, device=device)
        self.runtime = "int8"
        self.engine = int8_engine()
        self._float_files = ModelFiles(name, weights, "onnx")
        self._fallback = fallback
        self._fallback_encoder: OnnxEncoder | None = None

    def agreement(self, tower: str) -> float:
        """The least cosine of this engine's vectors to float32 ones on the check batch."""
        return float(self._checked(self._folder(tower), tower)["agreement"][tower])

    def _session(self, tower: str) -> Runner:
        try:
            return super()._session(tower)
        except ExportError as error:  # not quantizable, or below the bar
            if self._fallback is None:
                raise
            with self._lock:
                if tower not in self._sessions:
                    if self._fallback_encoder is None:
                        self._fallback_encoder = self._fallback()
                    log.warning(
                        "%s: running the %s tower on %s instead",
                        error,
                        tower,
                        self._fallback_encoder.runtime,
                    )
                    self._sessions[tower] = self._fallback_encoder._session(tower)
            return self._sessions[tower]

    def _load(self, folder: Path, tower: str) -> Runner:
        check = self._checked(folder, tower)
        agreement = check["agreement"][tower]
        if not agreement >= MIN_AGREEMENT:
            raise ExportError(
                f"int8 on {self.engine} agrees with the float32 export of {self.spec} "
                f"({tower} tower) only to cosine {agreement:.5f} (< {MIN_AGREEMENT})"
            )
        return self._runner(folder / f"{tower}.onnx", check["cache_dir"])

    def _runner(self, path: Path, cache_dir: str | None) -> Runner:
        if self.engine == "openvino":
            import openvino

            from .openvino import ov_runner

            return ov_runner(openvino.Core(), path, "f32", self.threads, cache_dir)
        return optimized_runner(path, self.threads, self.providers)

    def _checked(self, folder: Path, tower: str) -> dict[str, Any]:
        """The cached result of checking this engine on one tower (made first if missing)."""
        key = cache_key(
            {
                "export": self._files.key(tower),
                "lookalike": __version__,
                "format": [EXPORT_FORMAT, CHECK_FORMAT],
                "variant": "int8",
                "engine": self.engine,
                "versions": _engine_versions(self.engine),
                "tower": tower,
            }
        )
        entry = build_once(key, lambda into: self._check(folder, tower, into))
        check = read_meta(entry)
        if check is None:
            raise ExportError(f"cache entry {entry} is unreadable")
        return {**check, "cache_dir": str(entry / COMPILED) if self.engine == "openvino" else None}

    def _check(self, source: Path, tower: str, folder: Path) -> None:
        """Least cosine between this engine and the float32 export on the check batch."""
        float_folder = self._float_files.folder(tower)
        feed = check_feed(read_meta(float_folder) or {}, tower)
        expected = ort_runner(
            float_folder / f"{tower}.onnx", self.threads, ["CPUExecutionProvider"]
        )(feed)
        got = self._runner(source / f"{tower}.onnx", None)(feed)
        least = float(np.min(np.sum(got * expected, axis=1)))
        result: dict[str, Any] = {
            "spec": self.spec,
            "tower": tower,
            "precision": f"int8 on {self.engine}",
            "runtime": "int8",
            "engine": self.engine,
            "agreement": {tower: least},
            "checked_on": len(feed),
            "files": {},
        }
        (folder / COMPILED).mkdir()
        (folder / META).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def _engine_versions(engine: str) -> dict[str, str]:
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    if engine == "openvino":
        import openvino

        versions["openvino"] = openvino.__version__
    return versions
