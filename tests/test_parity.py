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


@pytest.fixture(scope="module")
def real_u2netp_bf16():
    rt = ModelRuntime.load(RuntimeOptions(model="u2netp", device="cpu", precision="bf16",
                                          warmup_runs=1,
                                          weights=shared_path("models", "u2netp", "u2netp.pth")))
    rt.start(background=False)
    yield rt
    rt.close()


def test_reduced_precision_stays_within_parity_and_close_to_fp32(real_u2netp, real_u2netp_bf16):
    """bf16 (sensitive layers in fp32): the same parity bounds, and IoU >= 0.99 against fp32."""
    assert real_u2netp_bf16.info()["precision"] == "bf16"
    assert real_u2netp_bf16.info()["engine"] == "torch"
    assert real_u2netp_bf16.info()["fp32_layers"] == ["stage1d", "stage2d"]
    results = shared_path("data", "parity", "u2netp_results")
    report = []
    for image_path in parity_cases():
        image = decode_image(image_path.read_bytes(), 10**8)
        low = real_u2netp_bf16.mask_for(image.rgb).astype(np.float64)
        full = real_u2netp.mask_for(image.rgb).astype(np.float64)
        ref = np.asarray(Image.open(results / f"{image_path.stem}.png").convert("L"), np.float64)
        mad = np.abs(low - ref).mean()
        a, b, c = low >= 128, ref >= 128, full >= 128
        iou_ref = (a & b).sum() / max(1, (a | b).sum())
        iou_fp32 = (a & c).sum() / max(1, (a | c).sum())
        report.append((image_path.name, round(mad, 2), round(iou_ref, 4), round(iou_fp32, 4)))
    print("\n".join(f"{n:20s} MAD {m:5.2f}/255  IoU {i:.4f}  IoU vs fp32 {f:.4f}"
                    for n, m, i, f in report))
    failures = [r for r in report if r[1] > MAX_MAD or r[2] < MIN_IOU or r[3] < 0.99]
    assert not failures, f"bf16 outside the bounds: {failures}"


def test_offset_dominated_stages_are_kept_in_fp32():
    """Injecting an offset ~1000x the signal into one decoder layer of the real weights puts that
    stage on the fp32 list (the unmodified weights select only stage1d and stage2d: see above)."""
    import torch

    from u2net.engine import TorchPredictor
    from u2net.registry import get_spec
    from u2net.runtime import calibration_input
    from u2net.weights import build_model

    spec = get_spec("u2netp")
    net = build_model(spec, shared_path("models", "u2netp", "u2netp.pth"))
    with torch.no_grad():
        net.stage4d.rebnconv2d.conv_s1.bias.add_(1000.0)
    predictor = TorchPredictor(net, torch.device("cpu"), "bf16",
                               calibration=torch.from_numpy(calibration_input(spec)))
    assert "stage4d" in predictor.fp32_layers
