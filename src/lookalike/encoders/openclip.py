"""open_clip models: image and text towers in one embedding space."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInputError
from ._torch import Normalizer, pick_device, unit_rows
from .textcache import MAX_TEXT_CHARS, TextCache, check_texts
from .towers import TextTower

__all__ = ["MAX_TEXT_CHARS", "OpenClipEncoder", "check_texts", "resolve_arch"]


class OpenClipEncoder:
    """Any open_clip model, from a pretrained tag or a local checkpoint file."""

    supports_text = True

    def __init__(
        self, name: str, weights: str | Path | None = None, device: str | None = None
    ) -> None:
        import open_clip

        arch, pretrained = resolve_arch(name)
        if weights is not None and pretrained:
            raise BadInputError("give either a pretrained tag or a weights file, not both")
        if weights is None and not pretrained and not arch.startswith("hf-hub:"):
            # random weights would index silently useless vectors
            raise BadInputError(
                f"open_clip:{name} needs a pretrained tag "
                f"(open_clip:{name}/TAG) or a local weights file"
            )
        self.spec = f"open_clip:{name}"
        self.device = pick_device(device)
        checkpoint, tag_config = str(weights) if weights else None, None
        if pretrained and not arch.startswith("hf-hub:"):
            from .hub import pretrained_checkpoint

            checkpoint, tag_config = pretrained_checkpoint(arch, pretrained)
        root_logger = logging.getLogger()
        level = root_logger.level
        root_logger.setLevel(logging.ERROR)  # open_clip warns on the root logger about no tag
        try:
            # a local file, with the tag's preprocessing: open_clip would ask the hub again
            self.model = open_clip.create_model(
                arch,
                pretrained=checkpoint,
                device=self.device,
                force_preprocess_cfg=tag_config,
            )
        except Exception as error:  # torch and open_clip raise many types for a bad checkpoint
            raise BadInputError(f"cannot load {self.spec}: {_first_line(error)}") from error
        finally:
            root_logger.setLevel(level)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.text_tower = TextTower(self.model)
        self.text_cache = TextCache()
        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"]
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self._normalize = Normalizer(cfg["mean"], cfg["std"], self.device)
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
            self.dim = int(self.model.encode_image(probe).shape[-1])

    @torch.inference_mode()
    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """See :class:`lookalike.encoders.Encoder`."""
        return unit_rows(self.model.encode_image(self._normalize(batch)))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """See :class:`lookalike.encoders.Encoder`; repeated texts come from a small cache."""
        check_texts(texts)
        return self.text_cache.encode(texts, self._encode_texts)

    @torch.inference_mode()
    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        # run only up to the batch's longest real length, not the padded context length
        tokens = self.text_tower.trim(self.tokenizer(texts)).to(self.device)
        return unit_rows(self.text_tower(tokens))


def resolve_arch(name: str) -> tuple[str, str]:
    """(open_clip architecture name, pretrained tag or "") of a spec's name part.

    A config-file path is registered with open_clip under its file stem.
    """
    import open_clip

    whole = name.endswith(".json") or name.startswith("hf-hub:")
    arch, _, pretrained = (name, "", "") if whole else name.partition("/")
    if arch.endswith(".json"):
        config = Path(arch)
        if not config.is_file():
            raise BadInputError(f"model config {arch} does not exist")
        open_clip.add_model_config(config)
        arch = config.stem
    elif arch not in open_clip.list_models() and not arch.startswith("hf-hub:"):
        raise BadInputError(f"unknown open_clip architecture {arch!r}")
    return arch, pretrained


def _first_line(error: BaseException) -> str:
    """The first line of an error's message: torch's run to pages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
