"""Running the network: device choice, the engine per device, and batched forward passes.

PyTorch is the model's definition and the GPU path. On CPU, ONNX Runtime runs the same network
(exported from the PyTorch module) about 2x faster than eager PyTorch fp32 on the development
machine (340 ms against 670 ms for U2NET at 320x320, 2 cores) with the same result to ~1e-6, so
`engine="auto"` picks it there. Both engines are exact fp32; the choice is reported in /model-info.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .model import U2Net
from .transforms import normalise_prediction

log = logging.getLogger(__name__)

PRECISIONS = ("fp32",)
ENGINES = ("auto", "torch", "onnxruntime")
ONNX_OPSET = 17


def choose_device(requested: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else is taken as a torch device string."""
    if requested in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for but CUDA is not available here")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def choose_engine(requested: str, device: torch.device) -> str:
    if requested not in ENGINES:
        raise ValueError(f"unknown engine {requested!r}; choose one of: {', '.join(ENGINES)}")
    if requested != "auto":
        if requested == "onnxruntime" and device.type != "cpu":
            raise ValueError("the onnxruntime engine runs on CPU only; use engine torch on CUDA")
        return requested
    if device.type == "cpu":
        try:
            import onnxruntime  # noqa: F401
            return "onnxruntime"
        except ImportError:
            log.warning("onnxruntime is not installed; running PyTorch on CPU (about 2x slower)")
    return "torch"


def _postprocess(d0: np.ndarray) -> np.ndarray:
    return np.stack([normalise_prediction(p) for p in d0])


class TorchPredictor:
    """The network on its device in PyTorch: a batch of prepared inputs in, masks out."""

    engine = "torch"

    def __init__(self, net: U2Net, device: torch.device, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        self.device = device
        self.precision = precision
        # channels_last: oneDNN and cuDNN both run these convolutions faster in NHWC (DESIGN.md §3).
        self.net = net.to(device).to(memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, S, S) float32 in [0, 1], min-max normalised per image."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        return _postprocess(self.net(x, fused_only=True)[:, 0].float().cpu().numpy())


class _FusedOutput(torch.nn.Module):
    """Export wrapper: the fused map d0 only (inference needs nothing else)."""

    def __init__(self, net: U2Net):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, fused_only=True)


def export_onnx(net: U2Net, input_size: int) -> bytes:
    """The network as an ONNX model (fp32, dynamic batch), as bytes."""
    # The wrapper must be in eval mode too: the exporter restores every module to the wrapper's
    # mode afterwards, and a fresh wrapper is in training mode (batch-norm would then use batch
    # statistics: masks become garbage).
    wrapper = _FusedOutput(net).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(wrapper, (torch.zeros(1, 3, input_size, input_size),), buf,
                          input_names=["input"], output_names=["mask"],
                          dynamic_axes={"input": {0: "batch"}, "mask": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    assert not net.training, "export left the network in training mode"
    return buf.getvalue()


def onnx_model_bytes(build: Callable[[], U2Net], input_size: int, cache_dir: Path | None,
                     weights_id: str) -> bytes:
    """The exported model, from the cache when this exact weights file was exported before.

    `build` (which loads the PyTorch network strictly) runs only on a cache miss: a hit is keyed
    by the weights file's SHA-256, so those exact bytes loaded strictly when they were exported.
    Export takes seconds for U2NET, so each (weights, torch version, opset) is exported once; an
    unwritable cache only costs the export at every start.
    """
    key = hashlib.sha256(f"{weights_id}|{torch.__version__}|{ONNX_OPSET}|{input_size}".encode())
    path = Path(cache_dir) / f"{key.hexdigest()[:24]}.onnx" if cache_dir else None
    if path and path.is_file():
        return path.read_bytes()
    data = export_onnx(build(), input_size)
    if path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot cache the ONNX export in %s (%s); exporting at every start",
                        cache_dir, exc)
    return data


class OnnxPredictor:
    """The same network run by ONNX Runtime on CPU (exact fp32, faster than eager PyTorch)."""

    engine = "onnxruntime"

    def __init__(self, model_bytes: bytes, precision: str = "fp32", threads: int | None = None):
        import onnxruntime as ort

        if precision != "fp32":
            raise ValueError("the onnxruntime engine runs fp32 only")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(model_bytes, options,
                                            providers=["CPUExecutionProvider"])
        self.device = torch.device("cpu")
        self.precision = precision

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        d0 = self.session.run(None, {"input": np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return _postprocess(d0[:, 0])

