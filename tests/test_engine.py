"""Engines: ONNX Runtime (CPU default) and PyTorch give the same masks; exports are cached."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import photo, shared_path
from u2net import engine
from u2net.model import U2NETP
from u2net.registry import get_spec
from u2net.transforms import to_model_input
from u2net.weights import build_model

SPEC = get_spec("u2netp")


def inputs() -> np.ndarray:
    return np.stack([to_model_input(photo(200, 150, seed=s), SPEC) for s in range(2)])


@pytest.mark.slow
def test_onnxruntime_equals_pytorch_on_the_real_weights(tmp_path):
    net = build_model(SPEC, shared_path("models", "u2netp", "u2netp.pth"))
    ort_masks = engine.OnnxPredictor(engine.export_onnx(net, 320))(inputs())
    torch_masks = engine.TorchPredictor(net, torch.device("cpu"))(inputs())
    assert ort_masks.shape == (2, 320, 320)
    assert np.abs(ort_masks - torch_masks).max() < 1e-4


@pytest.mark.slow
def test_export_leaves_the_network_in_eval_mode(random_weights):
    net = build_model(SPEC, random_weights)
    engine.export_onnx(net, 64)
    assert not any(m.training for m in net.modules())


@pytest.mark.slow
def test_exports_are_cached_by_weights(random_weights, tmp_path):
    builds = []

    def build():
        builds.append(1)
        return build_model(SPEC, random_weights)

    first = engine.onnx_model_bytes(build, 64, tmp_path, "weights-a")
    assert len(list(tmp_path.glob("*.onnx"))) == 1 and len(builds) == 1
    # A hit neither loads the PyTorch network nor exports again.
    assert engine.onnx_model_bytes(build, 64, tmp_path, "weights-a") == first
    assert len(builds) == 1
    engine.onnx_model_bytes(build, 64, tmp_path, "weights-b")  # other weights: a new export
    assert len(builds) == 2 and len(list(tmp_path.glob("*.onnx"))) == 2


def test_engine_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engine.choose_engine("auto", cpu) == "onnxruntime"
    assert engine.choose_engine("auto", cuda) == "torch"
    assert engine.choose_engine("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        engine.choose_engine("onnxruntime", cuda)
    with pytest.raises(ValueError, match="choose one of"):
        engine.choose_engine("tensorrt", cpu)


def test_precision_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engine.choose_engine("auto", cuda, "tf32") == "torch"
    assert engine.choose_engine("auto", cpu, "bf16") == "torch"  # autocast is PyTorch's
    with pytest.raises(ValueError, match="fp32 only"):
        engine.choose_engine("onnxruntime", cpu, "bf16")
    with pytest.raises(ValueError, match="unknown precision"):
        engine.choose_engine("auto", cpu, "int8")
    net = U2NETP()
    for precision in ("tf32", "fp16"):
        with pytest.raises(ValueError, match="CUDA only"):
            engine.TorchPredictor(net, cpu, precision)


def test_auto_races_centred_bf16_against_fp32_on_amx_and_is_fp32_elsewhere():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    race = [("torch", "bf16"), ("onnxruntime", "fp32")]
    assert engine.candidates("auto", "auto", cpu, amx=True) == race
    assert engine.candidates("auto", "auto", cpu, amx=False) == [("onnxruntime", "fp32")]
    assert engine.candidates("torch", "auto", cpu, amx=True) == [("torch", "bf16")]
    assert engine.candidates("onnxruntime", "auto", cpu, amx=True) == [("onnxruntime", "fp32")]
    assert engine.candidates("auto", "auto", cuda, amx=True) == [("torch", "fp32")]
    assert engine.candidates("auto", "bf16", cpu, amx=False) == [("torch", "bf16")]  # as asked
    assert engine.candidates("auto", "fp32", cpu, amx=True) == [("onnxruntime", "fp32")]


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert engine.cpu_has_amx(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")  # no matrix units
    assert not engine.cpu_has_amx(info)
    assert not engine.cpu_has_amx(tmp_path / "absent")


def test_mask_agreement():
    a = np.zeros((10, 10), np.float32)
    a[:5] = 1
    b = a.copy()
    b[4] = 0.4  # one row of ten falls below 0.5, by 0.6
    iou, mad = engine.mask_agreement(a, b)
    assert iou == pytest.approx(0.8) and mad == pytest.approx(0.06 * 255)
    assert engine.mask_agreement(np.zeros((4, 4)), np.zeros((4, 4))) == (1.0, 0.0)


@pytest.mark.parametrize("precision, expected", [("fp32", "ieee"), ("tf32", "tf32"),
                                                 ("bf16", "ieee")])
def test_cuda_convolutions_are_exact_fp32_unless_tf32_is_asked_for(precision, expected):
    """PyTorch's default lets cuDNN run fp32 convolutions in TF32; `fp32` must turn that off."""
    conv, was = torch.backends.cudnn.conv, torch.backends.cudnn.conv.fp32_precision
    benchmark = torch.backends.cudnn.benchmark
    try:
        conv.fp32_precision = "tf32" if expected == "ieee" else "ieee"
        engine.configure_cuda_math(precision)
        assert conv.fp32_precision == expected
        assert torch.backends.cudnn.benchmark is True
    finally:
        conv.fp32_precision, torch.backends.cudnn.benchmark = was, benchmark
