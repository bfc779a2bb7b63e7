"""open_clip towers exported to ONNX once per model, tower and variant, run by ONNX Runtime.

Variants: ``onnx`` (float32, agrees with torch to cosine >= 0.9999 per vector), ``onnx-int8``
(weights quantized to int8, activations quantized per batch at run time: dynamic quantization;
cosine >= 0.99) and ``onnx-qdq`` (static quantization: int8 weights, and activation ranges
fixed beforehand from calibration inputs, as QuantizeLinear/DequantizeLinear pairs that ONNX
Runtime and OpenVINO both run as int8 kernels; its agreement is checked by the engine that runs
it, see :mod:`lookalike.encoders.int8`). The image graph takes the uint8 NHWC batch and returns unit
vectors, normalisation included; the text graph takes token ids with a dynamic sequence axis,
so a short text runs a short sequence. Exports are checked against their reference on a probe
batch before they are cached, and an unreadable cache entry is rebuilt.

Each tower is its own cache entry and is opened on first use, so a text query never exports,
reads or compiles the image tower, and the other way round. Once a tower is cached, opening it
needs neither torch nor open_clip (their imports alone take seconds): the entry records what
the model needs (dimension, input size, tokenizer) and texts are tokenized by
:mod:`lookalike.encoders.tokenizer`. ONNX Runtime's graph optimizations run once and are kept
(``optimized_model_filepath``); later sessions load the optimized graph as it is.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import BadInputError, LookalikeError
from .cache import build_once, cache_key, discard, entry_path, weights_identity
from .probe import cpu_flags, int8_dot_products, physical_cores, probe_images, synthetic_photos
from .textcache import TextCache, check_texts

log = logging.getLogger(__name__)

EXPORT_FORMAT = 2  # bump when the exported graphs change: old cache entries are then unused
OPSET = 17
QDQ_FORMAT = 2  # bump when the static quantization changes
META = "meta.json"
VARIANTS = ("onnx", "onnx-int8", "onnx-qdq")
TOWERS = ("image", "text")
MIN_AGREEMENT = {"onnx": 0.9999, "onnx-int8": 0.99}
PROBE_TEXTS = ["a photo of a cat", "a police car at night in the rain", "x", "red"]
TOKENIZER_PROBES = [
    *PROBE_TEXTS,
    "Caf\u00e9 &amp; CR\u00c8ME br\u00fbl\u00e9e, 12\u00bd kg!!",
    "  two   spaces\tand a tab; it's    what's what  ",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \U0001f697\U0001f693",
    "a very long text " * 30,
]
MODEL_FIELDS = ("spec", "dim", "image_size", "text_trim", "tokenizer")


Runner = Callable[[np.ndarray], np.ndarray]


class ExportError(LookalikeError):
    """A model could not be exported, or its export does not agree with the original."""

    code = "export_failed"


class ModelFiles:
    """One model's exported towers for one variant: each built once, rebuilt when unreadable.

    The torch model is loaded only to export a tower or to learn the model's shape when no
    tower is cached yet, and then once for all.
    """

    def __init__(self, name: str, weights: str | Path | None, variant: str) -> None:
        if variant not in VARIANTS:
            raise BadInputError(f"unknown ONNX variant {variant!r}; use one of {VARIANTS}")
        self.name, self.weights, self.variant = name, weights, variant
        self._identity = weights_identity(weights)
        self._reference: Any = None

    def key(self, tower: str) -> str:
        """The cache key of one tower's export."""
        return cache_key(
            {
                "spec": f"open_clip:{self.name}",
                "weights": self._identity,
                "lookalike": __version__,
                "format": EXPORT_FORMAT,
                "variant": self.variant,
                "tower": tower,
                # int8 kernels without VNNI saturate: such CPUs get 7-bit weights
                "vnni": _has_vnni() if self.variant != "onnx" else None,
                "qdq": QDQ_FORMAT if self.variant == "onnx-qdq" else None,
            }
        )

    def folder(self, tower: str) -> Path:
        """The tower's entry folder, exporting first if needed."""
        return build_once(self.key(tower), lambda folder: self._build(tower, folder))

    def rebuild(self, tower: str) -> Path:
        """Throw the tower's entry away and build it again."""
        discard(self.key(tower))
        return self.folder(tower)

    def model_meta(self) -> dict[str, Any]:
        """What the encoder needs to know of the model (dimension, input size, tokenizer):
        from a cached tower when there is one, else from the torch model."""
        for tower in TOWERS:
            meta = read_meta(entry_path(self.key(tower)))
            if meta is not None and all(field in meta for field in MODEL_FIELDS):
                return {field: meta[field] for field in MODEL_FIELDS}
        return _model_meta(self.reference())

    def reference(self) -> Any:
        """The torch model, loaded on first need and kept for the next tower's export."""
        if self._reference is None:
            from .openclip import OpenClipEncoder

            self._reference = OpenClipEncoder(self.name, weights=self.weights, device="cpu")
        return self._reference

    def _build(self, tower: str, folder: Path) -> None:
        started = time.monotonic()
        log.warning(
            "exporting the %s tower of %s to %s, once (it may take a minute; later runs reuse it)",
            tower,
            self.name,
            self.variant,
        )
        try:
            if self.variant == "onnx":
                meta = _export_tower(self.reference(), tower, folder)
            else:
                source = ModelFiles(self.name, self.weights, "onnx")
                source._reference = self._reference
                quantize = _quantize if self.variant == "onnx-int8" else _quantize_static
                meta = quantize(source.folder(tower), folder, tower)
        except LookalikeError:
            raise
        except Exception as error:  # exporter, quantizer and ONNX Runtime raise many types
            raise ExportError(
                f"cannot export the {tower} tower of {self.name} to {self.variant}: {error}"
            ) from error
        meta.update(
            tower=tower,
            variant=self.variant,
            lookalike=__version__,
            seconds=round(time.monotonic() - started, 1),
            files={p.name: p.stat().st_size for p in folder.iterdir()},
        )
        (folder / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def read_meta(folder: Path) -> dict[str, Any] | None:
    """An entry's metadata if the entry is whole (every listed file at its size), else None."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if all((folder / n).stat().st_size == size for n, size in meta["files"].items()):
            return meta
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


class OnnxEncoder:
    """An open_clip model run by ONNX Runtime from its cached export (see the module doc).

    Each tower's export and session are made on first use, so a text-only process never
    touches the image graph. ``threads`` is ONNX Runtime's intra-op thread count (default:
    physical cores).
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
        self.spec = f"open_clip:{name}"
        self.runtime = variant
        self.threads = threads
        self.providers = _providers(device)
        self._files = ModelFiles(name, weights, variant)
        self._lock = threading.Lock()
        self._sessions: dict[str, Runner] = {}
        self._folders: dict[str, Path] = {}
        self._meta = self._files.model_meta()
        self.dim = int(self._meta["dim"])
        self.image_size = int(self._meta["image_size"])
        self._tokenizer: Any = None
        self.text_cache = TextCache()

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """See :class:`lookalike.encoders.Encoder`."""
        return self._run("image", np.ascontiguousarray(batch, dtype=np.uint8))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """See :class:`lookalike.encoders.Encoder`; repeated texts come from a small cache."""
        check_texts(texts)
        return self.text_cache.encode(texts, self._encode_texts)

    def warm_up(self) -> None:
        """Open both towers now (a server, before its first request), exporting if needed."""
        for tower in TOWERS:
            self._session(tower)

    def graph_path(self, tower: str) -> Path:
        """The float32 or int8 ONNX graph of a tower (exported first if needed)."""
        return self._folder(tower) / f"{tower}.onnx"

    @property
    def tokenizer(self) -> Callable[[list[str]], Any]:
        """Texts -> token ids: the torch-free CLIP tokenizer when the export checked it fits,
        else open_clip's."""
        if self._tokenizer is None:
            described = self._meta.get("tokenizer")
            if described:
                from .tokenizer import ClipTokenizer

                self._tokenizer = ClipTokenizer(
                    self._folder("text") / described["vocab"],
                    described["context_length"],
                    described["clean"],
                )
            else:
                import open_clip

                from .openclip import resolve_arch

                self._tokenizer = open_clip.get_tokenizer(resolve_arch(self._files.name)[0])
        return self._tokenizer

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        tokens = np.asarray(self.tokenizer(texts), dtype=np.int64)
        trim = self._meta["text_trim"]
        if trim:
            tokens = _trim(tokens, trim["pool_type"], trim["eos_id"])
        return self._run("text", tokens)

    def _run(self, tower: str, feed: np.ndarray) -> np.ndarray:
        return np.asarray(self._session(tower)(feed), dtype=np.float32)

    def _folder(self, tower: str) -> Path:
        """The tower's entry, built if missing and rebuilt once if a file is missing or resized."""
        if tower not in self._folders:
            folder = self._files.folder(tower)
            if read_meta(folder) is None:
                log.warning("cache entry %s is incomplete; rebuilding", folder)
                folder = self._files.rebuild(tower)
                if read_meta(folder) is None:
                    raise ExportError(f"cache entry {folder} for {self.spec} is unreadable")
            self._folders[tower] = folder
        return self._folders[tower]

    def _session(self, tower: str) -> Runner:
        with self._lock:
            if tower not in self._sessions:
                try:
                    self._sessions[tower] = self._load(self._folder(tower), tower)
                except LookalikeError:
                    raise
                except Exception as error:  # the engines raise their own types for a bad file
                    log.warning(
                        "cached %s %s graph unreadable (%s); rebuilding", self.spec, tower, error
                    )
                    self._folders[tower] = self._files.rebuild(tower)
                    self._sessions[tower] = self._load(self._folders[tower], tower)
            return self._sessions[tower]

    def _load(self, folder: Path, tower: str) -> Runner:
        """A graph ready to run: one input batch in, the embeddings out."""
        return optimized_runner(folder / f"{tower}.onnx", self.threads, self.providers)


# -- export and checks -------------------------------------------------------------------------


def _model_meta(reference: Any) -> dict[str, Any]:
    """Dimension, input size, text trimming and tokenizer of a loaded torch model."""
    text = reference.text_tower
    return {
        "spec": reference.spec,
        "dim": reference.dim,
        "image_size": reference.image_size,
        "text_trim": (
            {"pool_type": text.pool_type, "eos_id": text.eos_id} if text.trimmable else None
        ),
        "tokenizer": _portable_tokenizer(reference.tokenizer),
    }


def _portable_tokenizer(tokenizer: Any) -> dict[str, Any] | None:
    """How to tokenize without torch, if :mod:`.tokenizer` gives this tokenizer's ids."""
    from .tokenizer import ClipTokenizer, describe, open_clip_vocab

    described = describe(tokenizer)
    if described is None:
        return None
    try:
        ours = ClipTokenizer(open_clip_vocab(), described["context_length"], described["clean"])
        if not np.array_equal(ours(TOKENIZER_PROBES), tokenizer(TOKENIZER_PROBES).numpy()):
            return None
    except (ImportError, OSError, KeyError, ValueError):
        return None
    return {**described, "vocab": open_clip_vocab().name}


def _export_tower(reference: Any, tower: str, folder: Path) -> dict[str, Any]:
    """Export one tower of the torch model to ``folder``; check it; return metadata."""
    import torch

    from .towers import ImageTower

    meta = _model_meta(reference)
    if tower == "image":
        images = probe_images(reference.image_size)
        module = ImageTower(reference.model, reference.mean, reference.std).eval()
        feed = torch.from_numpy(images)
        _export(module, feed[:2], folder / "image.onnx", "pixels", ("n",))
    else:
        module = reference.text_tower
        feed = module.trim(reference.tokenizer(PROBE_TEXTS))
        _export(module, feed[:2], folder / "text.onnx", "tokens", ("n", "length"))
        meta["probe_tokens"] = feed.tolist()
        if meta["tokenizer"]:
            from .tokenizer import open_clip_vocab

            shutil.copyfile(open_clip_vocab(), folder / meta["tokenizer"]["vocab"])
    with torch.inference_mode():
        expected = module(feed).numpy()
    meta["agreement"] = _check(folder, tower, feed.numpy(), expected, MIN_AGREEMENT["onnx"])
    return meta


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


def _quantize(source: Path, folder: Path, tower: str) -> dict[str, Any]:
    """A dynamic int8 copy of the float32 graph of ``tower`` in ``source``; checked against it."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = json.loads((source / META).read_text(encoding="utf-8"))
    feed = (
        probe_images(int(meta["image_size"]))
        if tower == "image"
        else np.asarray(meta["probe_tokens"], dtype=np.int64)
    )
    expected = ort_runner(source / f"{tower}.onnx", None, ["CPUExecutionProvider"])(feed)
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
    for name in meta["files"]:  # the tokenizer's vocabulary travels with the text graph
        if not name.endswith(".onnx") and name != META:
            shutil.copyfile(source / name, folder / name)
    meta["agreement"] = _check(folder, tower, feed, expected, MIN_AGREEMENT["onnx-int8"])
    meta.pop("files", None)
    return meta


def calibration_feed(source: Path, meta: dict[str, Any], tower: str) -> list[np.ndarray]:
    """Batches that set the activation ranges of a statically quantized tower: the probe
    images and synthetic photos, or the probe texts and the tokenizer's probes (tokenized with
    the vocabulary in the float32 entry ``source``)."""
    if tower == "image":
        size = int(meta["image_size"])
        images = np.concatenate([probe_images(size), synthetic_photos(size, 20, seed=1)])
        return [images[i : i + 4] for i in range(0, len(images), 4)]
    batches = [np.asarray(meta["probe_tokens"], dtype=np.int64)]
    if meta.get("tokenizer") and meta.get("text_trim"):
        from .tokenizer import ClipTokenizer

        described = meta["tokenizer"]
        tokenizer = ClipTokenizer(
            source / described["vocab"], described["context_length"], described["clean"]
        )
        trim = meta["text_trim"]
        for text in TOKENIZER_PROBES:
            batches.append(_trim(tokenizer([text]), trim["pool_type"], trim["eos_id"]))
    return batches


def check_feed(meta: dict[str, Any], tower: str) -> np.ndarray:
    """What a quantized tower is checked on: probe images and synthetic photos not used to
    calibrate it, or the probe texts."""
    if tower == "image":
        size = int(meta["image_size"])
        return np.concatenate([probe_images(size), synthetic_photos(size, 12, seed=2)])
    return np.asarray(meta["probe_tokens"], dtype=np.int64)


def _quantize_static(source: Path, folder: Path, tower: str) -> dict[str, Any]:
    """A statically quantized (QDQ) copy of the float32 graph of ``tower`` in ``source``.

    Only the matrix multiplies by weights are quantized (per output channel); the attention
    products, softmax and norms stay float32. Without int8 dot products (VNNI) the kernels
    saturate on 8-bit weights, so those CPUs get 7-bit weights.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    meta = json.loads((source / META).read_text(encoding="utf-8"))
    batches = calibration_feed(source, meta, tower)
    input_name = "pixels" if tower == "image" else "tokens"

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs type-inference chatter on the root
    try:
        quantize_static(
            str(source / f"{tower}.onnx"),
            str(folder / f"{tower}.onnx"),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=not _has_vnni(),
            op_types_to_quantize=["MatMul", "Gemm"],
            calibrate_method=CalibrationMethod.MinMax,
            # int8 products come out in float: quantizing them again costs accuracy, not time
            extra_options={
                "MatMulConstBOnly": True,
                "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
            },
        )
    finally:
        root.setLevel(level)
    for name in meta["files"]:  # the tokenizer's vocabulary travels with the text graph
        if not name.endswith(".onnx") and name != META:
            shutil.copyfile(source / name, folder / name)
    meta.pop("files", None)
    meta.pop("agreement", None)  # measured by the engine that runs it
    meta["calibration_batches"] = len(batches)
    return meta


def _check(
    folder: Path, tower: str, feed: np.ndarray, expected: np.ndarray, minimum: float
) -> dict[str, float]:
    """Least cosine between the graph of ``tower`` in ``folder`` and ``expected``; must reach
    ``minimum``."""
    got = ort_runner(folder / f"{tower}.onnx", None, ["CPUExecutionProvider"])(feed)
    least = float(np.min(np.sum(got * expected, axis=1)))
    if not least >= minimum:
        raise ExportError(
            f"the exported {tower} tower agrees with its reference only to cosine "
            f"{least:.5f} (< {minimum})"
        )
    return {tower: least}


def _trim(tokens: np.ndarray, pool_type: str, eos_id: int | None) -> np.ndarray:
    """``tokens`` cut after the batch's last pooled (end-of-text) position: see
    :func:`lookalike.encoders.towers.trim_tokens`, here without torch."""
    if pool_type == "eos" and eos_id is not None:
        pooled = (tokens == eos_id).argmax(axis=-1)
    else:
        pooled = tokens.argmax(axis=-1)  # EOT has the highest id of the vocabulary
    return tokens[:, : int(pooled.max()) + 1]


# -- ONNX Runtime --------------------------------------------------------------------------


def ort_runner(path: Path, threads: int | None, providers: list[str]) -> Runner:
    """An ONNX Runtime session for the graph at ``path``, as a function of its one input."""
    session = _session(path, threads, providers)
    name = session.get_inputs()[0].name
    return lambda feed: session.run(None, {name: feed})[0]


def optimized_runner(path: Path, threads: int | None, providers: list[str]) -> Runner:
    """Like :func:`ort_runner`, from the graph as ONNX Runtime optimized it the first time
    (kept in its own cache entry per ONNX Runtime version): opening it skips the optimizer,
    about half the time of a session on a large graph."""
    import onnxruntime as ort

    if providers != ["CPUExecutionProvider"]:  # optimized graphs are specific to a provider
        return ort_runner(path, threads, providers)
    stat = path.stat()
    key = cache_key(
        {
            "graph": [str(path.resolve()), stat.st_size, stat.st_mtime_ns],
            "onnxruntime": ort.__version__,
        }
    )

    def build(folder: Path) -> None:
        _session(path, 1, providers, save=folder / path.name)
        source = read_meta(path.parent) or {}
        meta = {
            "spec": source.get("spec"),
            "tower": source.get("tower"),
            "variant": f"{source.get('variant')} optimized by onnxruntime {ort.__version__}",
            "files": {path.name: (folder / path.name).stat().st_size},
        }
        (folder / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    try:
        optimized = build_once(key, build) / path.name
        session = _session(optimized, threads, providers, level="disabled")
    except Exception as error:  # a failed optimization only costs the optimizer's time
        log.warning("cannot keep the optimized graph of %s (%s); optimizing each time", path, error)
        discard(key)
        return ort_runner(path, threads, providers)
    name = session.get_inputs()[0].name
    return lambda feed: session.run(None, {name: feed})[0]


def _session(
    path: Path,
    threads: int | None,
    providers: list[str],
    *,
    save: Path | None = None,
    level: str = "all",
) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    levels = ort.GraphOptimizationLevel
    options.graph_optimization_level = (
        levels.ORT_DISABLE_ALL if level == "disabled" else levels.ORT_ENABLE_ALL
    )
    if save is not None:
        options.optimized_model_filepath = str(save)
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
    """Whether the CPU has int8 dot-product instructions (see :func:`.probe.cpu_flags`)."""
    return int8_dot_products(cpu_flags())
