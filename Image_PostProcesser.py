"""Mask post-processing: pure functions on arrays, shared by the service, the CLI and the tests.

Each takes the image (8-bit RGB and optional alpha) and the model's 8-bit mask at the image's size,
and returns a new H x W x 4 uint8 RGBA array; nothing here reads files or touches the model.
"""
from __future__ import annotations

import numpy as np


def compose_rgba(rgb: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """RGB plus alpha (opaque when None) -> one H x W x 4 RGBA array."""
    h, w = rgb.shape[:2]
    rgba = np.empty((h, w, 4), dtype=np.uint8)
    rgba[:, :, :3] = rgb
    rgba[:, :, 3] = 255 if alpha is None else alpha
    return rgba


def apply_threshold(rgb: np.ndarray, alpha: np.ndarray | None, mask: np.ndarray,
                    threshold: int) -> np.ndarray:
    """The OpenClone rule, vectorised: a pixel whose mask value is below `threshold` becomes
    (0, 0, 0, 0); every other pixel keeps its colour and alpha. Threshold 0 keeps everything."""
    if not 0 <= threshold <= 255:
        raise ValueError(f"threshold must be in 0..255, got {threshold}")
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {rgb.shape[:2]}")
    rgba = compose_rgba(rgb, alpha)
    if threshold > 0:
        rgba[mask < threshold] = 0
    return rgba
