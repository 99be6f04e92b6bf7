"""IS-Net parity: the project's ISNetDIS, with the official general-use weights imported from the
shared ONNX graph, reproduces the IS-Net authors' published masks for their two demo photos
through the project's own pipeline (decode, IS-Net's resize, forward, mask), as
../shared/data/parity-isnet/SOURCE.md describes."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image
from u2net.calibration import calibration_input
from u2net.engine import TorchPredictor, mask_agreement
from u2net.registry import get_spec
from u2net.runtime import ModelRuntime, RuntimeOptions
from u2net.transforms import to_model_input
from u2net.weights import build_model

from bgservice.imageio import decode_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def isnet_as_custom(tmp_path_factory) -> Path:
    """The shared IS-Net export as a custom model (u2net/custom.py): a link to the file, read in
    place, with its description beside the link."""
    import json

    folder = tmp_path_factory.mktemp("custom-isnet")
    link = folder / "isnet-imgly.onnx"
    link.symlink_to(shared_path("models", "isnet", "isnet-imgly.onnx"))
    (folder / "isnet-imgly.onnx.json").write_text(json.dumps({
        "input_size": 1024, "resize": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [1, 1, 1],
        "output": 0, "sigmoid": False, "normalise": "minmax", "licence": "Apache-2.0"}))
    return link


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def isnet(request, isnet_weights) -> ModelRuntime:
    """The model in exact fp32, and in centred bf16 (what U2NET_PRECISION=auto may choose on a CPU
    with AMX; eager here: compiling IS-Net takes minutes, and gives the same masks)."""
    rt = ModelRuntime.load(RuntimeOptions(model="isnet-general-use", weights=isnet_weights,
                                          engine="torch", device="cpu", precision=request.param,
                                          compile=False, warmup_runs=1))
    rt.start(background=False)
    yield rt
    rt.close()


@pytest.mark.parametrize("name", ["0003", "bike"])
def test_the_authors_published_masks_are_reproduced(isnet, name):
    folder = shared_path("data", "parity-isnet")
    image = decode_image((folder / "images" / f"{name}.jpeg").read_bytes(), 10**8)
    ours = isnet.mask_for(image.rgb).astype(np.float32)
    theirs = np.asarray(Image.open(folder / "isnet_results" / f"{name}.png").convert("L"), np.float32)
    assert ours.shape == theirs.shape
    mad = float(np.abs(ours - theirs).mean())
    iou = ((ours >= 128) & (theirs >= 128)).sum() / ((ours >= 128) | (theirs >= 128)).sum()
    print(f"{name}: mean absolute difference {mad:.3f}/255, IoU {iou:.4f}")
    assert mad <= 1.0 and iou >= 0.99  # measured: 0.16 and 0.08/255, IoU 0.999


def real_photos() -> list[Path]:
    """Photos of people the parity set does not hold: two shared photos (a dancer pair, a crowd)
    and a portrait. (bench/precision_agreement.py measures all 53 shared photos: IoU >= 0.9967.)"""
    portraits = sorted(shared_path("data", "portraits", "images").iterdir())[:1]
    photos = ("Two_dancers.jpg", "track-runners-hurdles-1280.jpg")
    return [shared_path("data", "photos", name) for name in photos] + portraits


def test_bf16_keeps_masks_within_iou_099_of_fp32_on_real_photos(isnet_weights):
    """Centred bf16 (the issue's bar for a reduced precision): the network's masks (at 1024x1024)
    against fp32, photo by photo. Measured: IoU >= 0.9996, MAD <= 0.03/255."""
    spec = get_spec("isnet-general-use")
    net = build_model(spec, isnet_weights)
    fp32 = TorchPredictor(net, torch.device("cpu"), "fp32")
    bf16 = TorchPredictor(build_model(spec, isnet_weights), torch.device("cpu"), "bf16",
                          calibration=torch.from_numpy(calibration_input(spec)))
    for path in real_photos():
        x = to_model_input(decode_image(path.read_bytes(), 10**8).rgb, spec)[None]
        iou, mad = mask_agreement(fp32(x), bf16(x))
        print(f"{path.name}: IoU {iou:.4f}, MAD {mad:.2f}/255")
        assert iou >= 0.99 and mad <= 1.0, path.name


def test_isnets_resize_is_the_authors():
    """IS-Net/Inference.py: F.upsample (bilinear, align_corners False, no anti-aliasing) of the
    float image, truncated to uint8, divided by 255, minus 0.5 (std 1)."""
    rgb = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), size=(64, 64), mode="bilinear")
    reference = (reference.to(torch.uint8).float() / 255 - 0.5)[0].numpy()
    spec = dataclasses.replace(get_spec("isnet-general-use"), input_size=64)
    ours = to_model_input(rgb, spec)
    assert np.abs(ours - reference).max() <= 1 / 255 + 1e-6  # a truncation step at most
    assert (np.abs(ours - reference) > 1e-6).mean() < 0.01


def test_refine_with_isnets_parameters_beats_its_plain_mask_at_the_edges(isnet_as_custom):
    """Issue 11's target on ../shared/data/alphamatting (trimap's unknown region): IS-Net's refine
    (its own parameters, registry ModelSpec.refine) at least as good as soft on SAD and gradient
    error. Measured (bf16 of an earlier session): SAD 17.76 against 17.90, gradient 20.92 against
    22.11. The masks come from the shared export run as a custom model (fp32, ONNX Runtime: no
    export to make first), which gives the native model's masks (the test below)."""
    import Image_PostProcesser as post
    from bgservice.evaluate import ModeSpec, evaluate, summarise

    spec = get_spec("isnet-general-use")
    rt = ModelRuntime.load(RuntimeOptions(model=str(isnet_as_custom), device="cpu", warmup_runs=0))
    try:
        rows, _, _ = evaluate(shared_path("data", "alphamatting"),
                              [ModeSpec.parse("soft"), ModeSpec.parse("refine")], rt.mask_for,
                              log=lambda *_: None, refine=post.refine_params(spec.refine))
    finally:
        rt.close()
    mean = {e["mode"]: e for e in summarise(rows) if e["stat"] == "mean"}
    print({m: (round(e["sad_unknown"], 2), round(e["grad_unknown"], 2)) for m, e in mean.items()})
    assert mean["refine"]["sad_unknown"] <= mean["soft"]["sad_unknown"]
    assert mean["refine"]["grad_unknown"] <= mean["soft"]["grad_unknown"]


def test_the_shared_onnx_file_described_as_a_custom_model_gives_the_native_masks(
        isnet_as_custom, isnet_weights):
    """Issue 12: the rembg IS-Net export, run as a custom model (read in place through a link,
    with its description beside the link), against the native ISNetDIS in fp32 on the authors'
    demo photos. Measured: identical except at most a level of 1/255 at a few pixels."""
    custom = ModelRuntime.load(RuntimeOptions(model=str(isnet_as_custom), device="cpu",
                                              warmup_runs=1))
    native = ModelRuntime.load(RuntimeOptions(model="isnet-general-use", weights=isnet_weights,
                                              device="cpu", engine="torch", precision="fp32",
                                              warmup_runs=1))
    try:
        custom.start(background=False)
        native.start(background=False)
        folder = shared_path("data", "parity-isnet", "images")
        for path in sorted(folder.iterdir())[:1]:  # bike measured alike (max 1, mean 0.0010)
            rgb = decode_image(path.read_bytes(), 10**8).rgb
            diff = np.abs(custom.mask_for(rgb).astype(int) - native.mask_for(rgb).astype(int))
            print(f"{path.name}: max {diff.max()}/255, mean {diff.mean():.4f}/255")
            assert diff.max() <= 1, path.name
    finally:
        custom.close()
        native.close()
