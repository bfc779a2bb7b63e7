"""Image-only torchvision classifiers, embedding with the pooled penultimate feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import BadInputError, UnsupportedQueryError
from ._torch import Normalizer, pick_device, unit_rows

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchvisionEncoder:
    """A torchvision classification model with its last linear layer removed."""

    supports_text = False
    image_size = 224

    def __init__(
        self, arch: str, weights: str | Path | None = None, device: str | None = None
    ) -> None:
        import torchvision

        if arch not in torchvision.models.list_models(torchvision.models):
            raise BadInputError(f"unknown torchvision classification model {arch!r}")
        self.spec = f"torchvision:{arch}"
        self.device = pick_device(device)
        model = torchvision.models.get_model(arch, weights=None if weights else "DEFAULT")
        if weights is not None:
            try:
                model.load_state_dict(_read_state_dict(Path(weights)))
            except RuntimeError as error:  # keys or shapes of another architecture
                raise BadInputError(
                    f"weights file {weights} does not fit {self.spec}: {_first_line(error)}"
                ) from error
        self.dim = _drop_last_linear(model)
        self.model = model.eval().to(self.device)
        self._normalize = Normalizer(IMAGENET_MEAN, IMAGENET_STD, self.device)

    @torch.inference_mode()
    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """See :class:`lookalike.encoders.Encoder`."""
        return unit_rows(self.model(self._normalize(batch)))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Image-only models cannot embed text."""
        raise UnsupportedQueryError(
            f"{self.spec} is an image-only model: this collection cannot be searched by text"
        )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise BadInputError(f"cannot read weights file {path}: {_first_line(error)}") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise BadInputError(f"weights file {path} holds no state_dict")
    return state


def _drop_last_linear(model: torch.nn.Module) -> int:
    """Replace the model's last Linear layer by Identity; return its input width."""
    last_name, last = None, None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            last_name, last = name, module
    if last is None or last_name is None:
        raise BadInputError("the model has no final linear layer to remove")
    parent = model.get_submodule(last_name.rpartition(".")[0]) if "." in last_name else model
    setattr(parent, last_name.rpartition(".")[2], torch.nn.Identity())
    return int(last.in_features)


def _first_line(error: BaseException) -> str:
    """The first line of an error's message: torch's run to pages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
