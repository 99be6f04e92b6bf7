"""Output modes and the quality harness: metrics against hand-computed values, modes against
synthetic images with a known answer."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from helpers import blurred_disc_scene
from PIL import Image

import Image_PostProcesser as post
from bgservice import metrics
from bgservice.evaluate import ModeSpec, evaluate

# -- metrics on tiny arrays, by hand ------------------------------------------------------------

def test_iou_mae_sad_mse_by_hand():
    pred = np.array([[1.0, 0.6], [0.2, 0.0]])
    gt = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert metrics.iou(pred, gt) == 1.0  # binarised at 0.5: identical
    assert metrics.iou(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]])) == 0.5
    assert metrics.mae(pred, gt) == pytest.approx((0 + 0.4 + 0.2 + 0) / 4)
    assert metrics.sad(pred, gt) == pytest.approx(0.6 / 1000)
    assert metrics.mse(pred, gt) == pytest.approx((0.16 + 0.04) / 4)
    region = np.array([[False, True], [False, False]])
    assert metrics.sad(pred, gt, region) == pytest.approx(0.4 / 1000)
    assert metrics.mse(pred, gt, region) == pytest.approx(0.16)
    assert metrics.iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_gradient_error_is_zero_for_equal_mattes_and_counts_missing_edges():
    gt = np.zeros((20, 20))
    gt[:, 10:] = 1.0
    assert metrics.gradient_error(gt, gt) == 0.0
    flat = np.full((20, 20), 0.5)
    # A flat prediction misses all of the step's gradient.
    err = metrics.gradient_error(flat, gt)
    magnitude = metrics._gradient_magnitude(gt)
    assert err == pytest.approx((magnitude**2).sum() / 1000)
    # The kernel (sigma 1.4, epsilon 0.01): 9 taps; the 2-D kernel has unit L2 norm.
    gauss, dgauss = metrics._gradient_kernels()
    assert len(gauss) == 9 and np.outer(gauss, dgauss).__pow__(2).sum() == pytest.approx(1.0)
    # Across a unit step the response is the sum of the kernel's taps on one side.
    kernel = np.outer(gauss, dgauss)
    assert magnitude[10, 10] == pytest.approx(abs(kernel[:, :5].sum()), rel=1e-6)


def test_boundary_f_by_hand():
    gt = np.zeros((30, 30))
    gt[10:20, 10:20] = 1
    assert metrics.boundary_f(gt, gt) == 1.0
    shifted = np.zeros((30, 30))
    shifted[12:22, 10:20] = 1  # 2 px off: within 3 px
    assert metrics.boundary_f(shifted, gt) == 1.0
    far = np.zeros((30, 30))
    far[0:5, 0:5] = 1  # no boundary pixel within 3 px of the other's
    assert metrics.boundary_f(far, gt) == 0.0


# -- modes on a synthetic image with a known answer ----------------------------------------------


def test_soft_mode_uses_the_mask_as_alpha_and_combines_input_alpha():
    rgb, mask, _, _ = blurred_disc_scene(64)
    out = post.soft_alpha(rgb, None, mask)
    np.testing.assert_array_equal(out[:, :, 3], mask)
    np.testing.assert_array_equal(out[:, :, :3], rgb)
    half = np.full(mask.shape, 128, np.uint8)
    out = post.soft_alpha(rgb, half, mask)
    assert abs(int(out[32, 32, 3]) - round(int(mask[32, 32]) * 128 / 255)) <= 1


def test_refine_recovers_alpha_and_foreground_better_than_soft():
    rgb, mask, alpha, fg = blurred_disc_scene()
    soft = post.cut_out(rgb, None, mask, "soft")
    refined = post.cut_out(rgb, None, mask, "refine")
    edge = (alpha > 0.05) & (alpha < 0.95)
    soft_err = np.abs(soft[:, :, 3] / 255 - alpha)[edge].mean()
    refine_err = np.abs(refined[:, :, 3] / 255 - alpha)[edge].mean()
    assert refine_err < 0.9 * soft_err, (refine_err, soft_err)
    # Foreground colour on the semi-transparent band: soft keeps the blended (blue-tinted) pixel,
    # refine estimates the subject's own colour.
    band = (alpha > 0.2) & (alpha < 0.8)
    soft_fg_err = np.abs(soft[:, :, :3] / 255 - fg)[band].mean()
    refine_fg_err = np.abs(refined[:, :, :3] / 255 - fg)[band].mean()
    assert refine_fg_err < 0.5 * soft_fg_err, (refine_fg_err, soft_fg_err)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (2, 3), (4, 4)])
@pytest.mark.parametrize("mode", post.MODES)
def test_every_mode_handles_tiny_images(shape, mode):
    rgb = np.full((*shape, 3), 90, np.uint8)
    out = post.cut_out(rgb, None, np.full(shape, 200, np.uint8), mode, 100)
    assert out.shape == (*shape, 4) and out.dtype == np.uint8
    assert post.subject_bbox(out[:, :, 3]) == (0, 0, shape[1], shape[0])


def test_cut_out_dispatches_modes_and_rejects_unknown():
    rgb, mask, _, _ = blurred_disc_scene(32)
    np.testing.assert_array_equal(post.cut_out(rgb, None, mask, "threshold", 200),
                                  post.apply_threshold(rgb, None, mask, 200))
    with pytest.raises(ValueError, match="choose one of: threshold, soft, refine"):
        post.cut_out(rgb, None, mask, "magic")


# -- the harness ------------------------------------------------------------------------------

def test_harness_scores_a_tiny_dataset_and_writes_its_outputs(tmp_path):
    data = tmp_path / "data"
    for sub in ("images", "masks", "trimaps"):
        (data / sub).mkdir(parents=True)
    rgb, mask, alpha, _ = blurred_disc_scene(48)
    Image.fromarray(rgb).save(data / "images" / "disc.png")
    Image.fromarray(np.rint(alpha * 255).astype(np.uint8)).save(data / "masks" / "disc.png")
    trimap = np.where(alpha > 0.98, 255, np.where(alpha < 0.02, 0, 128)).astype(np.uint8)
    Image.fromarray(trimap).save(data / "trimaps" / "disc.png")
    modes = [ModeSpec.parse("threshold:128"), ModeSpec.parse("soft")]
    rows, summary, _ = evaluate(data, modes, lambda _rgb: mask, out=tmp_path / "out",
                                log=lambda *_: None)
    assert [r["mode"] for r in rows] == ["threshold:128", "soft"]
    soft = rows[1]
    expected_sad = np.abs(mask / 255 - alpha)[(trimap == 128)].sum() / 1000
    assert soft["sad_unknown"] == pytest.approx(expected_sad, abs=1e-3)
    assert {s["stat"] for s in summary} == {"mean", "median", "p10"}
    with open(tmp_path / "out" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    sheet = Image.open(tmp_path / "out" / "contact_sheet.png")
    assert sheet.size[1] >= 2 * 160


def test_harness_reads_the_portraits_layout_with_alphas(tmp_path):
    """../shared/data/portraits keeps its fractional mattes in alphas/, not masks/."""
    for sub in ("images", "alphas"):
        (tmp_path / sub).mkdir()
    rgb, mask, alpha, _ = blurred_disc_scene(48)
    Image.fromarray(rgb).save(tmp_path / "images" / "p.jpg")
    Image.fromarray(np.rint(alpha * 255).astype(np.uint8)).save(tmp_path / "alphas" / "p.png")
    rows, _, _ = evaluate(tmp_path, [ModeSpec.parse("soft")], lambda _rgb: mask, log=lambda *_: None)
    assert [r["image"] for r in rows] == ["p"]
    assert rows[0]["iou"] == pytest.approx(metrics.iou(mask / 255, np.rint(alpha * 255) / 255), abs=1e-4)
    (tmp_path / "alphas" / "p.png").unlink()
    with pytest.raises(FileNotFoundError, match="masks or .*alphas"):
        evaluate(tmp_path, [ModeSpec.parse("soft")], lambda _rgb: mask, log=lambda *_: None)


def test_mode_spec_parsing():
    assert ModeSpec.parse("threshold:200") == ModeSpec("threshold:200", "threshold", 200)
    assert ModeSpec.parse("threshold").threshold == 254
    with pytest.raises(ValueError):
        ModeSpec.parse("threshold:300")
    with pytest.raises(ValueError):
        ModeSpec.parse("sharpen")
    assert ModeSpec.parse("refine+filter") == ModeSpec("refine+filter", "refine", None, True)
    assert ModeSpec.parse("threshold:128+filter").threshold == 128
    with pytest.raises(ValueError, match="only '\\+filter'"):
        ModeSpec.parse("soft+blur")


def test_each_model_refines_with_its_own_parameters():
    from u2net.registry import get_spec

    assert post.refine_params() is post.REFINE  # U²-Net's: the values they were chosen for
    assert post.refine_params(get_spec("u2netp").refine) is post.REFINE
    isnet = post.refine_params(get_spec("isnet-general-use").refine)
    assert (isnet.radius_frac, isnet.coarse_side, isnet.bound_frac) == (0.01, 200, 0.0)
    assert (isnet.eps, isnet.contrast) == (post.REFINE.eps, post.REFINE.contrast)
    rgb, mask, _, _ = blurred_disc_scene(size=240)
    assert not np.array_equal(post.cut_out(rgb, None, mask, "refine", params=isnet),
                              post.cut_out(rgb, None, mask, "refine"))
    with pytest.raises(TypeError):
        post.refine_params((("radius", 0.01),))  # a misspelt field fails loudly


def test_stray_alpha_counts_only_what_lies_well_outside_the_subject():
    gt = np.zeros((60, 60), np.float32)
    gt[20:40, 20:40] = 1
    pred = gt.copy()
    pred[20:40, 41:44] = 1  # a halo within 5 px: an edge question, not a stray
    assert metrics.stray_alpha(pred, gt) == 0
    pred[2:6, 2:7] = 0.5  # a fragment far away: 20 pixels at 0.5
    assert metrics.stray_alpha(pred, gt) == pytest.approx(10 / 1000)


def test_unmixing_gives_the_subjects_own_colours_back_over_a_known_background():
    """With the true alpha and background, F = (I - (1 - a) B) / a is the subject's colour at
    every semi-transparent pixel (up to 8-bit rounding, amplified by 1/a), where the photo's pixel
    is a mix of subject and background; opaque and transparent pixels are left alone."""
    rgb, _, alpha, fg = blurred_disc_scene()
    alpha8 = np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8)
    background = np.empty((10, 10, 3), np.float32)
    background[:] = (0.1, 0.3, 0.9)  # blurred_disc_scene's
    fg8 = np.zeros_like(rgb)
    post._unmix_edges(rgb, alpha8, fg8, background, 24)
    edge = (alpha8 >= 26) & (alpha8 < 255)  # at least _UNMIX_FROM: unmixed, not blended
    assert np.abs(fg8 / 255 - fg)[edge].mean() < 0.005
    assert np.abs(rgb / 255 - fg)[edge].mean() > 0.2  # the photo's own pixels are far off
    assert not fg8[(alpha8 == 0) | (alpha8 == 255)].any()


def test_unmixing_keeps_blur_fusions_colour_where_the_unmixed_one_is_impossible():
    """An alpha far too low makes F = (I - (1 - a) B) / a fall outside [0, 1]: there the colour
    estimated by blur-fusion is kept (here: what fg8 held), not a clipped, saturated one."""
    rgb = np.full((8, 8, 3), (200, 180, 60), np.uint8)  # pure subject colour
    alpha8 = np.full((8, 8), 64, np.uint8)  # but alpha says a quarter
    background = np.full((2, 2, 3), (0.1, 0.3, 0.9), np.float32)
    fg8 = np.full_like(rgb, 77)
    post._unmix_edges(rgb, alpha8, fg8, background, 24)
    assert (fg8 == 77).all()
    alpha8[:] = 250  # nearly right: unmixed
    post._unmix_edges(rgb, alpha8, fg8, background, 24)
    assert np.abs(fg8.astype(int) - rgb).max() <= 3


def test_refine_adds_no_alpha_away_from_the_mask_and_cuts_no_holes_where_it_is_sure():
    """The bound: a bright edge of the old background just beyond the model's subject gets
    almost no alpha (no streaks or fragments), and a dark stripe inside, where the mask is sure,
    cuts no hole. Unbounded, the guided filter does both (the second half shows it)."""
    rng = np.random.default_rng(3)
    rgb = np.full((200, 200, 3), 40, np.uint8)
    rgb += rng.integers(0, 8, rgb.shape, dtype=np.uint8)
    rgb[40:160, 40:100] = (230, 200, 170)  # the subject
    rgb[60:140, 50:56] = 40  # a stripe on it as dark as the background
    rgb[20:180, 104:112] = (235, 205, 175)  # the old background's bright door, 4 px away
    mask = np.zeros((200, 200), np.uint8)
    mask[40:160, 40:100] = 255
    mask = cv2.GaussianBlur(mask, (0, 0), 2)
    door, stripe = (slice(20, 180), slice(104, 112)), (slice(60, 140), slice(50, 56))
    alpha = post.refine(rgb, None, mask)[:, :, 3]
    assert alpha[door].max() < 20 and alpha[stripe].min() == 255
    unbounded = post.refine(rgb, None, mask, post.RefineParams(bound_frac=0))[:, :, 3]
    assert unbounded[door].max() > 40 and unbounded[stripe].min() < 250
