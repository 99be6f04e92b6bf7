"""Options as every entry point resolves them (bgservice.options): the mode/threshold rule, the
defaults, and the output's composition (cropping and the subject's box)."""
from __future__ import annotations

import numpy as np
import pytest

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
    pixels, box = compose_output(image, mask, OutputOptions(mode="soft", crop=True, padding=2))
    assert box == (28, 8, 19, 14) and pixels.shape == (14, 19, 4)
    _, none = compose_output(image, np.zeros_like(mask), OutputOptions(mode="soft"), want_bbox=True)
    assert none is None
