"""Options as every entry point resolves them (bgservice.options): the mode/threshold rule, the
defaults, and the output's composition (cropping and the subject's box)."""
from __future__ import annotations

import numpy as np
import pytest

import Image_PostProcesser as post
from bgservice.errors import BadRequest
from bgservice.imageio import DecodedImage
from bgservice.options import OutputOptions, compose_output, parse_options, resolve_mode


@pytest.mark.parametrize("mode, threshold, default, expected", [
    (None, None, "refine", ("refine", None)),        # neither: the service's default mode
    (None, 200, "refine", ("threshold", 200)),       # a threshold always means threshold mode
    ("threshold", None, "soft", ("threshold", 254)),  # threshold mode: OpenClone's default
    ("soft", None, "refine", ("soft", None)),
])
def test_the_mode_rule(mode, threshold, default, expected):
    assert resolve_mode(mode, threshold, default) == expected


def test_a_threshold_with_another_mode_is_refused():
    with pytest.raises(BadRequest, match="applies to mode 'threshold' only"):
        resolve_mode("refine", 10, "refine")


def test_strings_give_the_dataclass_defaults_where_nothing_is_sent():
    assert parse_options({}, "refine") == OutputOptions()
    assert parse_options({"padding": "", "crop": "0"}, "soft") == OutputOptions(mode="soft")


def test_crop_returns_the_subject_with_its_padding_and_the_box():
    rgb = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 30:45] = 255
    image = DecodedImage(rgb=rgb, alpha=None, format="PNG", mode="RGB")
    pixels, box, _ = compose_output(image, mask, OutputOptions(mode="soft", crop=True, padding=2))
    assert box == (28, 8, 19, 14) and pixels.shape == (14, 19, 4)
    _, none, _ = compose_output(image, np.zeros_like(mask), OutputOptions(mode="soft"), want_bbox=True)
    assert none is None


def test_a_see_through_background_colour_is_composited_with_straight_alpha():
    """(r, g, b, a): the cut-out over the colour; where the cut-out is opaque, its own pixel;
    where it is transparent, the colour at a; in between, 'over' in straight alpha."""
    rgba = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 0, 128]]], np.uint8)
    out = post.composite_on_color(rgba, (0, 0, 255, 128))
    assert out.shape == (1, 3, 4)
    assert tuple(out[0, 0]) == (200, 100, 0, 255) and tuple(out[0, 1]) == (0, 0, 255, 128)
    a_s, a_c = 128 / 255, 128 / 255 * (1 - 128 / 255)
    total = a_s + a_c
    want = [round((200 * a_s) / total), round((100 * a_s) / total), round(255 * a_c / total),
            round(total * 255)]
    assert np.abs(out[0, 2].astype(int) - want).max() <= 1
    opaque = post.composite_on_color(rgba, (0, 0, 255, 255))
    assert opaque.shape == (1, 3, 3) and tuple(opaque[0, 1]) == (0, 0, 255)


def test_padding_in_pixels_or_as_a_percentage_of_the_subject():
    assert parse_options({"padding": "10%"}, "soft").padding_percent == 10.0
    assert parse_options({"padding": "7px"}, "soft").padding == 7
    alpha = np.zeros((100, 200), np.uint8)
    alpha[40:60, 50:90] = 255  # a 40 x 20 subject
    assert post.subject_bbox(alpha) == (50, 40, 40, 20)
    assert post.subject_bbox(alpha, 5) == (45, 35, 50, 30)
    assert post.subject_bbox(alpha, padding_percent=25) == (40, 35, 60, 30)  # 10 px and 5 px
    assert post.subject_bbox(alpha, padding_percent=1000) == (0, 0, 200, 100)  # clipped
