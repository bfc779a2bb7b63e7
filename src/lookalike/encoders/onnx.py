"""open_clip towers exported to ONNX once per model and variant, and run by ONNX Runtime.

Variants: ``onnx`` (float32, agrees with torch to cosine >= 0.9999 per vector) and
``onnx-int8`` (weights quantized to int8, activations quantized per batch at run time: dynamic
quantization; cosine >= 0.99). The image graph takes the uint8 NHWC batch and returns unit
vectors, normalisation included; the text graph takes token ids with a dynamic sequence axis,
so a short text runs a short sequence. Exports are checked against their reference on a probe
batch before they are cached, and an unreadable cache entry is rebuilt.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import BadInputError, LookalikeError
from .cache import build_once, cache_key, discard, weights_identity
from .openclip import check_texts, resolve_arch
from .textcache import TextCache

log = logging.getLogger("lookalike")

EXPORT_FORMAT = 1  # bump when the exported graphs change: old cache entries are then unused
OPSET = 17
META = "meta.json"
VARIANTS = ("onnx", "onnx-int8")
MIN_AGREEMENT = {"onnx": 0.9999, "onnx-int8": 0.99}
PROBE_TEXTS = ["a photo of a cat", "a police car at night in the rain", "x", "red"]


Runner = Callable[[np.ndarray], np.ndarray]


class ExportError(LookalikeError):
    """A model could not be exported, or its export does not agree with the original."""

    code = "export_failed"


class ModelFiles:
    """One model's exported towers for one variant: built once, rebuilt when unreadable."""

    def __init__(self, name: str, weights: str | Path | None, variant: str) -> None:
        if variant not in VARIANTS:
            raise BadInputError(f"unknown ONNX variant {variant!r}; use one of {VARIANTS}")
        self.name, self.weights, self.variant = name, weights, variant
        self.key = cache_key(
            {
                "spec": f"open_clip:{name}",
                "weights": weights_identity(weights),
                "lookalike": __version__,
                "format": EXPORT_FORMAT,
                "variant": variant,
                # int8 kernels without VNNI saturate: such CPUs get 7-bit weights
                "vnni": _has_vnni() if variant == "onnx-int8" else None,
            }
        )

    def folder(self) -> Path:
        """The entry's folder, exporting first if needed."""
        return build_once(self.key, self._build)

    def rebuild(self) -> Path:
        """Throw the entry away and build it again."""
        discard(self.key)
        return self.folder()

    def _build(self, folder: Path) -> None:
        started = time.monotonic()
        log.warning(
            "exporting %s to %s, once (it may take a minute; later runs reuse it)",
            self.name,
            self.variant,
        )
        try:
            if self.variant == "onnx":
                meta = _export_fp32(self.name, self.weights, folder)
            else:
                meta = _quantize(ModelFiles(self.name, self.weights, "onnx").folder(), folder)
        except LookalikeError:
            raise
        except Exception as error:  # exporter, quantizer and ONNX Runtime raise many types
            raise ExportError(f"cannot export {self.name} to {self.variant}: {error}") from error
        meta.update(
            variant=self.variant,
            lookalike=__version__,
            seconds=round(time.monotonic() - started, 1),
            files={p.name: p.stat().st_size for p in folder.iterdir()},
        )
        (folder / META).write_text(json.dumps(meta, indent=2) + "\n")


class OnnxEncoder:
    """An open_clip model run by ONNX Runtime from its cached export (see the module doc).

    Each tower's session opens on first use, so a text-only process never loads the image
    graph. ``threads`` is ONNX Runtime's intra-op thread count (default: physical cores).
    """

    supports_text = True

    def __init__(
        self,
        name: str,
        weights: str | Path | None = None,
        variant: str = "onnx",
        threads: int | None = None,
        device: str | None = None,
    ) -> None:
        import open_clip

        arch, _ = resolve_arch(name)  # registers a config file's architecture with open_clip
        self.spec = f"open_clip:{name}"
        self.runtime = variant
        self.threads = threads
        self.providers = _providers(device)
        self._files = ModelFiles(name, weights, variant)
        self._lock = threading.Lock()
        self._sessions: dict[str, Runner] = {}
        self._folder, self._meta = self._open(self._files.folder())
        self.dim = int(self._meta["dim"])
        self.image_size = int(self._meta["image_size"])
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.text_cache = TextCache()

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """See :class:`lookalike.encoders.Encoder`."""
        return self._run("image", np.ascontiguousarray(batch, dtype=np.uint8))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """See :class:`lookalike.encoders.Encoder`; repeated texts come from a small cache."""
        check_texts(texts)
        return self.text_cache.encode(texts, self._encode_texts)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        from .towers import trim_tokens

        tokens = self.tokenizer(texts)
        trim = self._meta["text_trim"]
        if trim:
            tokens = trim_tokens(tokens, trim["pool_type"], trim["eos_id"])
        return self._run("text", tokens.numpy().astype(np.int64, copy=False))

    def _run(self, tower: str, feed: np.ndarray) -> np.ndarray:
        return np.asarray(self._session(tower)(feed), dtype=np.float32)

    def _session(self, tower: str) -> Runner:
        with self._lock:
            if tower not in self._sessions:
                try:
                    self._sessions[tower] = self._load(self._folder / f"{tower}.onnx")
                except Exception as error:  # the engines raise their own types for a bad file
                    log.warning(
                        "cached %s %s graph unreadable (%s); rebuilding", self.spec, tower, error
                    )
                    self._sessions.clear()
                    self._folder, self._meta = self._open(self._files.rebuild())
                    self._sessions[tower] = self._load(self._folder / f"{tower}.onnx")
            return self._sessions[tower]

    def _load(self, path: Path) -> Runner:
        """A graph ready to run: one input batch in, the embeddings out."""
        return ort_runner(path, self.threads, self.providers)

    def _open(self, folder: Path) -> tuple[Path, dict[str, Any]]:
        """The entry's folder and metadata, rebuilt once if a file is missing or resized."""
        for attempt in (1, 2):
            try:
                meta = json.loads((folder / META).read_text())
                files = meta["files"]
                if all((folder / n).stat().st_size == size for n, size in files.items()):
                    return folder, meta
                reason = "a file changed size"
            except (OSError, ValueError, KeyError, TypeError) as error:
                reason = str(error)
            if attempt == 2:
                raise ExportError(f"cache entry {folder} for {self.spec} is unreadable: {reason}")
            log.warning("cache entry %s unreadable (%s); rebuilding", folder, reason)
            folder = self._files.rebuild()
        raise AssertionError("unreachable")


# -- export and checks -------------------------------------------------------------------------


def _export_fp32(name: str, weights: str | Path | None, folder: Path) -> dict[str, Any]:
    """Export both towers of the torch model to ``folder``; check them; return metadata."""
    import torch

    from .openclip import OpenClipEncoder
    from .towers import ImageTower

    reference = OpenClipEncoder(name, weights=weights, device="cpu")
    model = reference.model
    images = _probe_images(reference.image_size)
    image_tower = ImageTower(model, reference.mean, reference.std).eval()
    _export(image_tower, torch.from_numpy(images[:2]), folder / "image.onnx", "pixels", ("n",))
    with torch.inference_mode():
        expected = {"image": image_tower(torch.from_numpy(images)).numpy()}
    text = reference.text_tower
    tokens = text.trim(reference.tokenizer(PROBE_TEXTS))
    _export(text, tokens[:2], folder / "text.onnx", "tokens", ("n", "length"))
    with torch.inference_mode():
        expected["text"] = text(tokens).numpy()
    feeds = {"image": images, "text": tokens.numpy()}
    agreement = _check(folder, feeds, expected, MIN_AGREEMENT["onnx"])
    return {
        "spec": reference.spec,
        "dim": reference.dim,
        "image_size": reference.image_size,
        "text_trim": (
            {"pool_type": text.pool_type, "eos_id": text.eos_id} if text.trimmable else None
        ),
        "agreement": agreement,
        "probe_tokens": feeds["text"].tolist(),
    }


def _export(
    module: Any, example: Any, path: Path, input_name: str, dynamic: tuple[str, ...]
) -> None:
    import torch

    from .towers import exportable

    options: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False  # the TorchScript exporter needs no extra packages
    with torch.no_grad(), exportable(module), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=["embedding"],
                dynamic_axes={input_name: dict(enumerate(dynamic)), "embedding": {0: "n"}},
                opset_version=OPSET,
                do_constant_folding=True,
                **options,
            )
        except Exception as error:  # the exporter raises many types for unsupported ops
            raise ExportError(f"cannot export to ONNX: {error}") from error


def _quantize(source: Path, folder: Path) -> dict[str, Any]:
    """Dynamic int8 copies of the float32 graphs in ``source``; checked against them."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = json.loads((source / META).read_text())
    feeds = {
        "image": _probe_images(int(meta["image_size"])),
        "text": np.asarray(meta["probe_tokens"], dtype=np.int64),
    }
    expected = {}
    for tower, feed in feeds.items():
        session = _session(source / f"{tower}.onnx", None, ["CPUExecutionProvider"])
        expected[tower] = session.run(None, {session.get_inputs()[0].name: feed})[0]
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs type-inference chatter on the root
        try:
            quantize_dynamic(
                source / f"{tower}.onnx",
                folder / f"{tower}.onnx",
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=not _has_vnni(),
                op_types_to_quantize=["MatMul", "Gemm"],
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        finally:
            root.setLevel(level)
    meta["agreement"] = _check(folder, feeds, expected, MIN_AGREEMENT["onnx-int8"])
    meta.pop("files", None)
    return meta


def _check(
    folder: Path, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray], minimum: float
) -> dict[str, float]:
    """Least cosine per tower between the graphs in ``folder`` and ``expected``; must reach
    ``minimum``."""
    agreement = {}
    for tower, feed in feeds.items():
        session = _session(folder / f"{tower}.onnx", None, ["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: feed})[0]
        agreement[tower] = float(np.min(np.sum(got * expected[tower], axis=1)))
        if not agreement[tower] >= minimum:
            raise ExportError(
                f"the exported {tower} tower agrees with its reference only to cosine "
                f"{agreement[tower]:.5f} (< {minimum})"
            )
    return agreement


def _probe_images(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, size, dtype=np.float32).astype(np.uint8)
    smooth = np.broadcast_to(ramp[None, :, None, None], (1, size, size, 3))
    return np.concatenate([noise, smooth]).copy()


# -- ONNX Runtime --------------------------------------------------------------------------


def ort_runner(path: Path, threads: int | None, providers: list[str]) -> Runner:
    """An ONNX Runtime session for the graph at ``path``, as a function of its one input."""
    session = _session(path, threads, providers)
    name = session.get_inputs()[0].name
    return lambda feed: session.run(None, {name: feed})[0]


def _session(path: Path, threads: int | None, providers: list[str]) -> Any:
    import onnxruntime as ort

    from .runtime import physical_cores

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle threads sleep instead of spinning: the CPU is shared with decoders and the server
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers)


def _providers(device: str | None) -> list[str]:
    if device and device.startswith("cuda"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BadInputError("the onnx runtime on CUDA needs the onnxruntime-gpu package")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _has_vnni() -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in text or " avx_vnni" in text
