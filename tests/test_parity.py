"""Parity with the original: the real U2NETP weights, loaded by our model code and run through our
pipeline, reproduce the authors' official masks (../shared/data/parity)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image
from u2net.runtime import ModelRuntime, RuntimeOptions

from bgservice.imageio import decode_image

MAX_MAD = 1.5  # mean absolute difference, in 0..255 units
MIN_IOU = 0.98  # of the masks binarised at 128


def parity_cases():
    images = shared_path("data", "parity", "images")
    return sorted(images.iterdir())


@pytest.mark.slow
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
                                          compile=False, warmup_runs=1,
                                          weights=shared_path("models", "u2netp", "u2netp.pth")))
    rt.start(background=False)
    yield rt
    rt.close()


def bf16_everywhere(spec, weights):
    """The network with every convolution in bf16 (plain autocast, nothing centred)."""
    import torch
    from u2net.engine import _postprocess
    from u2net.weights import build_model

    net = build_model(spec, weights).eval()

    def masks(x):
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            return _postprocess(net(torch.from_numpy(x), fused_only=True)[:, 0].float().numpy())
    return masks


@pytest.mark.slow
def test_reduced_precision_stays_within_parity_and_close_to_fp32(real_u2netp, real_u2netp_bf16):
    """Centred bf16: the same parity bounds, and IoU >= 0.99 against fp32, on every parity image,
    where plain bf16 everywhere does not hold (measured over all 18: IoU 0.904 at worst, below
    0.99 on 17 of them)."""
    from u2net.engine import mask_agreement
    from u2net.transforms import to_model_input

    info = real_u2netp_bf16.info()
    assert (info["engine"], info["precision"]) == ("torch", "bf16")
    assert info["precision_check"]["iou_vs_fp32"] >= 0.99
    spec = real_u2netp_bf16.spec
    plain = bf16_everywhere(spec, real_u2netp_bf16.weights_path)
    results = shared_path("data", "parity", "u2netp_results")
    report, plain_worst = [], 1.0
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
        if len(report) <= 4:  # plain bf16 fails on 17 of the 18; four show it
            x = to_model_input(image.rgb, spec)[None]
            plain_worst = min(plain_worst, mask_agreement(real_u2netp.predictor(x), plain(x))[0])
    print("\n".join(f"{n:20s} MAD {m:5.2f}/255  IoU {i:.4f}  IoU vs fp32 {f:.4f}"
                    for n, m, i, f in report))
    print(f"bf16 everywhere, worst IoU against fp32 on the first four: {plain_worst:.4f}")
    failures = [r for r in report if r[1] > MAX_MAD or r[2] < MIN_IOU or r[3] < 0.99]
    assert not failures, f"bf16 outside the bounds: {failures}"
    assert plain_worst < 0.99  # what centring is for: these weights need it


def _round_to_tf32(t):
    """fp32 -> the nearest value with TF32's 10-bit mantissa (what tensor cores multiply)."""
    import torch

    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.mark.slow
def test_tf32_convolutions_stay_within_parity(monkeypatch):
    """The `tf32` precision's numerics, emulated on CPU: every convolution's inputs and weights
    rounded to TF32, as cuDNN does on a GPU. Masks stay within IoU 0.99 of exact fp32 (the
    issue's rule for reduced precision), but they do move (which is why `fp32` turns TF32 off on CUDA)."""
    import torch
    from u2net.registry import get_spec
    from u2net.transforms import normalise_prediction, to_model_input
    from u2net.weights import build_model

    spec = get_spec("u2netp")
    net = build_model(spec, shared_path("models", "u2netp", "u2netp.pth"))
    exact_conv = torch.nn.Conv2d._conv_forward

    def tf32_conv(self, x, weight, bias):
        return exact_conv(self, _round_to_tf32(x), _round_to_tf32(weight), bias)

    worst_iou, moved = 1.0, 0.0
    for image_path in parity_cases()[::2]:  # half the set (all 18 measured: the figures below)
        x = torch.from_numpy(to_model_input(decode_image(image_path.read_bytes(), 10**8).rgb, spec))
        with torch.no_grad():
            exact = normalise_prediction(net(x[None], fused_only=True)[0, 0].numpy())
            with monkeypatch.context() as m:
                m.setattr(torch.nn.Conv2d, "_conv_forward", tf32_conv)
                tf32 = normalise_prediction(net(x[None], fused_only=True)[0, 0].numpy())
        a, b = exact >= 0.5, tf32 >= 0.5
        worst_iou = min(worst_iou, (a & b).sum() / max(1, (a | b).sum()))
        mad = np.abs(exact - tf32).mean() * 255
        moved = max(moved, mad)
        assert mad < MAX_MAD, image_path.name
    print(f"TF32 against fp32: worst IoU {worst_iou:.4f}, worst MAD {moved:.2f}/255")
    assert worst_iou >= 0.99
    assert moved > 0.01  # the emulation really rounds (a no-op would pass the bounds trivially)
