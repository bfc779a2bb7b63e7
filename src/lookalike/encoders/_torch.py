"""Torch helpers the encoders share: device choice, input normalisation, unit-length output."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pick_device(device: str | None) -> torch.device:
    """The requested device, else CUDA when present, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Normalizer:
    """uint8 NHWC batches -> normalised float NCHW tensors on the model's device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.device = device
        self.scale = (1.0 / (255.0 * torch.tensor(std))).view(1, 3, 1, 1).to(device)
        self.shift = (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1).to(device)

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        pixels = pixels.permute(0, 3, 1, 2).float()
        return pixels * self.scale - self.shift


def unit_rows(features: torch.Tensor) -> np.ndarray:
    """L2-normalised rows as a float32 numpy array."""
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)
