"""Neural encoders behind one protocol, named by spec strings.

Spec strings:
- ``open_clip:ViT-B-32/laion2b_s34b_b79k``: an open_clip architecture and pretrained tag
  (downloaded and cached on first use);
- ``open_clip:ViT-B-32`` with ``weights=FILE``: the same architecture from a local checkpoint;
  the architecture may also be the path of an open_clip model-config JSON file;
- ``torchvision:resnet50`` (or ``mobilenet_v2``, any torchvision classifier), image-only, from
  a local ``weights`` file (torchvision state_dict layout) or torchvision's default weights;
- ``vectors:512``: no model, for embeddings computed elsewhere (``Collection.add_vectors``).

open_clip models run on torch or, exported once to ONNX, on ONNX Runtime (``runtime``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import BadInputError, UnsupportedQueryError

DEFAULT_MODEL = "open_clip:ViT-B-32/laion2b_s34b_b79k"


@runtime_checkable
class Encoder(Protocol):
    """Turns images (and maybe texts) into unit-length float32 vectors."""

    spec: str
    dim: int
    image_size: int
    supports_text: bool

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """Embed a uint8 batch of shape (n, image_size, image_size, 3); returns float32 (n, dim)."""
        ...

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Embed texts; returns float32 (n, dim). Raises when ``supports_text`` is False."""
        ...


def load_encoder(
    spec: str,
    weights: str | Path | None = None,
    device: str | None = None,
    runtime: str = "auto",
    threads: int | None = None,
) -> Encoder:
    """Build the encoder a spec string names, loading its weights.

    ``runtime`` picks the engine of open_clip models ("auto", "torch", "onnx", "int8"...:
    see :mod:`lookalike.encoders.runtime`); ``threads`` caps its CPU threads.
    """
    from .runtime import load_open_clip, resolve_runtime, set_torch_threads

    resolve_runtime(runtime, "cpu")  # refuse an unknown name whatever the family
    family, _, name = spec.partition(":")
    if not name:
        raise BadInputError(
            f"model spec {spec!r} must look like 'open_clip:ARCH/PRETRAINED', "
            "'open_clip:ARCH' with weights, or 'torchvision:ARCH'"
        )
    if weights is not None and not Path(weights).is_file():
        raise BadInputError(f"weights file {weights} does not exist")
    if family == "open_clip":
        return load_open_clip(name, weights, device, runtime, threads)  # type: ignore[return-value]
    if family == "vectors":
        return VectorsOnly(name)
    if family == "torchvision":
        from .backbone import TorchvisionEncoder

        if runtime not in ("auto", "torch"):
            raise BadInputError(f"torchvision backbones run on torch only, not {runtime!r}")
        set_torch_threads(threads)
        return TorchvisionEncoder(name, weights=weights, device=device)
    raise BadInputError(
        f"unknown model family {family!r} in {spec!r}; use 'open_clip:...' or 'torchvision:...'"
    )


class VectorsOnly:
    """The "encoder" of a collection of imported embeddings (``vectors:512``): it embeds nothing,
    so such a collection is searched by id or by raw vector."""

    supports_text = False
    image_size = 0

    def __init__(self, dim: str) -> None:
        if not dim.isdigit() or not 0 < int(dim) <= 65536:
            raise BadInputError(f"'vectors:{dim}' needs a dimension, e.g. vectors:512")
        self.spec = f"vectors:{int(dim)}"
        self.dim = int(dim)

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """Refused: no model."""
        raise UnsupportedQueryError(
            f"a {self.spec} collection has no model: add vectors, search by id or vector"
        )

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Refused: no model."""
        return self.encode_images(np.zeros(0))
