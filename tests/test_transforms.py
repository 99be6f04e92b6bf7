"""Pre- and post-processing against the authors' pipeline (skimage is the reference)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import photo, shared_path
from PIL import Image
from skimage import transform
from u2net.registry import get_spec
from u2net.transforms import (
    mask_to_size,
    normalise_prediction,
    resize_antialiased,
    to_model_input,
)

SPEC = get_spec("u2net_human_seg")


def reference_input(rgb: np.ndarray) -> np.ndarray:
    """u2net_human_seg_test.py: RescaleT(320) then ToTensorLab(flag=0), written out."""
    x = transform.resize(rgb, (320, 320), mode="constant")
    x = x / np.max(x)
    out = np.zeros_like(x)
    for c in range(3):
        out[:, :, c] = (x[:, :, c] - SPEC.mean[c]) / SPEC.std[c]
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize("size", [(120, 160), (320, 320), (173, 290), (480, 640), (1000, 700)])
def test_resize_equals_skimage_below_a_3x_downscale(size):
    rgb = photo(size[1], size[0], seed=size[0])
    ours = resize_antialiased(rgb, (320, 320))
    ref = transform.resize(rgb, (320, 320), mode="constant")
    assert np.abs(ours - ref).max() < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1080, 1920), (3000, 4000)])
def test_resize_is_close_to_skimage_on_large_photos(size):
    src = np.asarray(Image.open(shared_path("data", "photos", "Two_dancers.jpg")).convert("RGB"))
    rgb = np.asarray(Image.fromarray(src).resize(size[::-1], Image.BICUBIC))
    diff = np.abs(resize_antialiased(rgb, (320, 320)) - transform.resize(rgb, (320, 320),
                                                                        mode="constant")) * 255
    assert diff.mean() < 0.5 and np.percentile(diff, 99.9) < 6


def test_model_input_matches_the_authors_normalisation():
    rgb = photo(200, 150)
    np.testing.assert_allclose(to_model_input(rgb, SPEC), reference_input(rgb), atol=2e-3)


def test_black_image_gives_finite_input():
    assert np.isfinite(to_model_input(np.zeros((50, 50, 3), np.uint8), SPEC)).all()


def test_prediction_is_min_max_normalised_and_resized_once():
    pred = normalise_prediction(np.linspace(0.2, 0.6, 320 * 320, dtype=np.float32).reshape(320, 320))
    assert pred.min() == 0 and pred.max() == 1
    mask = mask_to_size(pred, (480, 640))
    assert mask.shape == (480, 640) and mask.dtype == np.uint8
    assert mask[0, 0] == 0 and mask[-1, -1] == 255
    assert mask_to_size(pred, (100, 80)).shape == (100, 80)
    assert (normalise_prediction(np.full((4, 4), 0.3, np.float32)) == 0).all()
