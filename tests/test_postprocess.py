"""Image_PostProcesser: the OpenClone threshold rule, exactly."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import Image_PostProcesser as post

THRESHOLDS = (0, 1, 128, 200, 254, 255)


def old_rule_per_pixel(rgba: np.ndarray, mask: np.ndarray, threshold: int) -> np.ndarray:
    """The old service's getpixel/putpixel loop, written out plainly as the reference."""
    out = rgba.copy()
    for y in range(rgba.shape[0]):
        for x in range(rgba.shape[1]):
            if mask[y, x] < threshold:
                out[y, x] = (0, 0, 0, 0)
            else:
                out[y, x] = rgba[y, x]
    return out


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("with_alpha", [False, True])
def test_threshold_equals_the_per_pixel_rule(threshold, with_alpha):
    rng = np.random.default_rng(threshold + 1000 * with_alpha)
    for _ in range(5):
        h, w = rng.integers(1, 24, size=2)
        rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        alpha = rng.integers(0, 256, size=(h, w), dtype=np.uint8) if with_alpha else None
        # Include the exact threshold and its neighbours, where an off-by-one would show.
        mask = rng.choice(np.array([0, 1, 127, 128, 129, 199, 200, 201, 253, 254, 255],
                                   dtype=np.uint8), size=(h, w))
        rgba = post.compose_rgba(rgb, alpha)
        expected = old_rule_per_pixel(rgba, mask, threshold)
        got = post.apply_threshold(rgb, alpha, mask, threshold)
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == np.uint8 and got.shape == (h, w, 4)


def test_threshold_zero_keeps_everything_and_inputs_are_not_modified():
    rgb = np.full((3, 3, 3), 7, np.uint8)
    mask = np.zeros((3, 3), np.uint8)
    out = post.apply_threshold(rgb, None, mask, 0)
    assert (out[..., :3] == 7).all() and (out[..., 3] == 255).all()
    post.apply_threshold(rgb, None, mask, 255)
    assert (rgb == 7).all()


def test_bad_arguments_are_rejected():
    rgb = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError):
        post.apply_threshold(rgb, None, np.zeros((2, 2), np.uint8), 256)
    with pytest.raises(ValueError, match="does not match"):
        post.apply_threshold(rgb, None, np.zeros((3, 2), np.uint8), 10)


def blobs(soft: bool = True) -> np.ndarray:
    mask = np.zeros((200, 300), np.uint8)
    cv2.circle(mask, (80, 100), 50, 255, -1)  # the subject
    cv2.circle(mask, (220, 100), 30, 255, -1)  # a second one, 36 % of its area
    cv2.circle(mask, (285, 185), 6, 220, -1)  # a speck
    return cv2.GaussianBlur(mask, (0, 0), 2) if soft else mask


def test_subject_filter_drops_small_regions_with_their_soft_edges():
    mask = blobs()
    before = mask.copy()
    out = post.drop_small_regions(mask)
    np.testing.assert_array_equal(mask, before)  # input untouched
    speck = np.zeros_like(mask, bool)
    cv2.circle(speck.view(np.uint8), (285, 185), 14, 1, -1)
    region = speck & (mask >= post.SUBJECT_LEVEL)
    assert region.any() and (out[region] == 0).all()  # the speck and its soft edge >= 32
    np.testing.assert_array_equal(out[~speck], mask[~speck])  # nothing else changes
    assert (out[speck & (mask < post.SUBJECT_LEVEL)] == mask[speck & (mask < post.SUBJECT_LEVEL)]).all()
    stricter = post.drop_small_regions(mask, min_fraction=0.5)  # now the second subject goes too
    assert stricter[100, 220] == 0 and stricter[100, 80] == 255


@pytest.mark.parametrize("mask", [np.zeros((50, 60), np.uint8), np.full((50, 60), 255, np.uint8),
                                  np.full((2, 3), 255, np.uint8)])
def test_subject_filter_leaves_single_regions_and_tiny_masks_alone(mask):
    np.testing.assert_array_equal(post.drop_small_regions(mask), mask)


@pytest.mark.parametrize("scale, large", [(11, (1080, 1920)), (3, (170, 241)), (1, (4, 9)),
                                          (2, (301, 7))])
def test_shrink_and_enlarge_are_block_averages_and_their_bilinear_inverse(scale, large):
    """refine's coarse copy: whole blocks of scale x scale pixels averaged (the last few rows and
    columns left out), and enlarged back with each coarse pixel's centre on its block's centre,
    the edge extended; sampling that enlargement at chosen pixels (refine unmixes the edge pixels
    only) gives the same values."""
    rng = np.random.default_rng(1)
    h, w = large
    small = (w // scale, h // scale)
    image = rng.random((h, w, 3), dtype=np.float32)
    shrunk = post.shrink(image, scale, small)
    assert shrunk.shape == (h // scale, w // scale, 3)
    block = image[:scale, :scale].mean(axis=(0, 1))
    assert np.abs(shrunk[0, 0] - block).max() < 1e-5
    enlarged = post.enlarge(shrunk, scale, (w, h))
    assert enlarged.shape == image.shape
    if scale > 1:  # a block's centre lies between pixels: the mean of the four around it
        c = scale // 2 if scale % 2 else None
        if c is not None:
            assert np.abs(enlarged[c, c] - shrunk[0, 0]).max() < 1e-5
        np.testing.assert_array_equal(enlarged[:, -1], enlarged[:, (w // scale) * scale - 1])
        np.testing.assert_array_equal(enlarged[-1], enlarged[(h // scale) * scale - 1])
    ys, xs = np.nonzero(rng.random(large) < 0.4)
    got = post._enlarged_at(shrunk, scale, ys, xs)
    assert got.shape == (ys.size, 3)
    assert np.abs(got - enlarged[ys, xs]).max() < 1e-4

