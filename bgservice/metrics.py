"""Cut-out quality metrics: pure functions on alpha mattes (float arrays in [0, 1]).

SAD, MSE and gradient error follow the alphamatting.com benchmark (Rhemann et al., CVPR 2009) and
its common implementation (Deep Image Matting): SAD and gradient error are sums reported in
thousands; gradients are Gaussian first derivatives with sigma 1.4, the kernel at unit L2 norm.
Checked against the figures in the quality issue: soft alpha of U2NETP on ../shared alphamatting
gives SAD 16.3 and gradient error 25.7 there and here. A `region` (boolean mask, e.g.
the trimap's unknown band) restricts every measure to those pixels.
"""
from __future__ import annotations

import cv2
import numpy as np


def _region(shape, region: np.ndarray | None) -> np.ndarray:
    return np.ones(shape, bool) if region is None else region.astype(bool)


def iou(pred: np.ndarray, gt: np.ndarray, at: float = 0.5) -> float:
    """Intersection over union of the two mattes binarised at `at` (1.0 when both are empty)."""
    a, b = pred >= at, gt >= at
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _boundary(binary: np.ndarray) -> np.ndarray:
    eroded = cv2.erode(binary.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return binary & ~eroded.astype(bool)


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: int = 3, at: float = 0.5) -> float:
    """Boundary F-measure: precision and recall of the binarised mattes' boundary pixels, each
    counted as matched when the other boundary lies within `tolerance` pixels (DAVIS's F)."""
    pb, gb = _boundary(pred >= at), _boundary(gt >= at)
    if not pb.any() and not gb.any():
        return 1.0
    if not pb.any() or not gb.any():
        return 0.0

    def distance_to(boundary):
        return cv2.distanceTransform((~boundary).astype(np.uint8), cv2.DIST_L2, 5)

    precision = float((distance_to(gb)[pb] <= tolerance).mean())
    recall = float((distance_to(pb)[gb] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def mae(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    r = _region(gt.shape, region)
    return float(np.abs(pred - gt)[r].mean()) if r.any() else 0.0


def mse(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    r = _region(gt.shape, region)
    return float(((pred - gt) ** 2)[r].mean()) if r.any() else 0.0


def sad(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    """Sum of absolute differences, in thousands."""
    return float(np.abs(pred - gt)[_region(gt.shape, region)].sum() / 1000)


def _gradient_kernels(sigma: float = 1.4, epsilon: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's Gaussian-derivative filter, separable: its size from `epsilon`, and the
    2-D kernel gauss(y) * dgauss(x) scaled to unit L2 norm (not unit sum), as in the
    alphamatting/Deep Image Matting evaluation code; SAD-like figures depend on that scale."""
    half = int(np.ceil(sigma * np.sqrt(-2 * np.log(np.sqrt(2 * np.pi) * sigma * epsilon))))
    x = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-x**2 / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi))
    dgauss = -x * gauss / sigma**2
    norm = np.sqrt((gauss**2).sum() * (dgauss**2).sum())
    return gauss, dgauss / norm


def _gradient_magnitude(alpha: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    gauss, dgauss = _gradient_kernels(sigma)
    a = alpha.astype(np.float64)
    # filter2D correlates; the benchmark convolves: the sign flips, the magnitude does not.
    gx = cv2.sepFilter2D(a, -1, dgauss, gauss, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(a, -1, gauss, dgauss, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx**2 + gy**2)


def gradient_error(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    """Sum of squared differences of the Gaussian gradient magnitudes, in thousands."""
    diff = (_gradient_magnitude(pred) - _gradient_magnitude(gt)) ** 2
    return float(diff[_region(gt.shape, region)].sum() / 1000)


STRAY_DISTANCE_PX = 5


def disc(radius: int) -> np.ndarray:
    """A filled disc of `radius` pixels, as a morphology kernel."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def stray_alpha(pred: np.ndarray, gt: np.ndarray, distance: int = STRAY_DISTANCE_PX) -> float:
    """Alpha more than `distance` pixels outside the true subject (gt above 0.02), summed in
    thousands like SAD: streaks of the old background, fragments beyond the hair."""
    subject = (gt > 0.02).astype(np.uint8)
    outside = cv2.dilate(subject, disc(distance)) == 0
    return float(pred[outside].sum() / 1000)


def all_metrics(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray | None = None) -> dict:
    """Every measure over the whole image, plus over the trimap's unknown region when given."""
    out = {"iou": iou(pred, gt), "boundary_f": boundary_f(pred, gt), "mae": mae(pred, gt),
           "sad": sad(pred, gt), "mse": mse(pred, gt), "grad": gradient_error(pred, gt),
           "stray": stray_alpha(pred, gt)}
    if unknown is not None:
        out.update(sad_unknown=sad(pred, gt, unknown), mse_unknown=mse(pred, gt, unknown),
                   grad_unknown=gradient_error(pred, gt, unknown), mae_unknown=mae(pred, gt, unknown))
    return out
