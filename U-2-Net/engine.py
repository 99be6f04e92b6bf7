"""Running the network: device choice, precision, and batched forward passes."""
from __future__ import annotations

import logging

import numpy as np
import torch

from .model import U2Net
from .transforms import normalise_prediction

log = logging.getLogger(__name__)

PRECISIONS = ("fp32",)


def choose_device(requested: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else is taken as a torch device string."""
    if requested in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for but CUDA is not available here")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


class Predictor:
    """The network on its device: a batch of prepared inputs in, normalised masks out."""

    def __init__(self, net: U2Net, device: torch.device, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        self.device = device
        self.precision = precision
        # channels_last: oneDNN and cuDNN both run these convolutions faster in NHWC (DESIGN.md §3).
        self.net = net.to(device).to(memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, S, S) float32 in [0, 1], min-max normalised per image."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        d0 = self.net(x, fused_only=True)[:, 0].float().cpu().numpy()
        return np.stack([normalise_prediction(p) for p in d0])
