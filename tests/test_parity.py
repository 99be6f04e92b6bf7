"""Parity with the original: the real U2NETP weights, loaded by our model code and run through our
pipeline, reproduce the authors' official masks (../shared/data/parity)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bgservice.imageio import decode_image
from conftest import shared_path
from u2net.runtime import ModelRuntime, RuntimeOptions

MAX_MAD = 1.5  # mean absolute difference, in 0..255 units
MIN_IOU = 0.98  # of the masks binarised at 128


@pytest.fixture(scope="module")
def real_u2netp():
    rt = ModelRuntime.load(RuntimeOptions(model="u2netp", device="cpu", warmup_runs=1,
                                          weights=shared_path("models", "u2netp", "u2netp.pth")))
    rt.start(background=False)
    yield rt
    rt.close()


def parity_cases():
    images = shared_path("data", "parity", "images")
    return sorted(images.iterdir())


def test_every_parity_image_matches_the_official_mask(real_u2netp):
    cases = parity_cases()
    assert len(cases) >= 10
    results = shared_path("data", "parity", "u2netp_results")
    report = []
    for image_path in cases:
        image = decode_image(image_path.read_bytes(), 10**8)
        ours = real_u2netp.mask_for(image.rgb).astype(np.float64)
        ref = np.asarray(Image.open(results / f"{image_path.stem}.png").convert("L"), np.float64)
        assert ours.shape == ref.shape, image_path.name
        mad = np.abs(ours - ref).mean()
        a, b = ours >= 128, ref >= 128
        iou = (a & b).sum() / max(1, (a | b).sum())
        report.append((image_path.name, round(mad, 2), round(iou, 4)))
    failures = [r for r in report if r[1] > MAX_MAD or r[2] < MIN_IOU]
    print("\n".join(f"{n:20s} MAD {m:5.2f}/255  IoU {i:.4f}" for n, m, i in report))
    assert not failures, f"outside the parity bound: {failures}"
