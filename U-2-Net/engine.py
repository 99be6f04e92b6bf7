"""Running the network: device choice, the engine per device, and batched forward passes.

PyTorch is the model's definition and the GPU path. On CPU, ONNX Runtime runs the same network
(exported from the PyTorch module) about 2x faster than eager PyTorch fp32 on the development
machine (340 ms against 670 ms for U2NET at 320x320, 2 cores) with the same result to ~1e-6, so
`engine="auto"` picks it there for fp32. On a CPU with AMX, PyTorch's centred bf16 (centred.py,
compiled) is faster still for some models: `candidates` lists both and the runtime times them at
warm-up. Every choice is reported in /model-info.
"""
from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write
from .centred import centre_convolutions
from .model import U2Net
from .registry import ENGINES, PRECISIONS
from .transforms import normalise_prediction

log = logging.getLogger(__name__)

_LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOW_PRECISIONS = tuple(_LOW_PRECISION)  # centred convolutions (centred.py): need a calibration input
# Precisions that need CUDA: TF32 is a tensor-core format, and CPU fp16 convolutions are slow.
_CUDA_ONLY = ("tf32", "fp16")
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


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bf16 matrix units (Intel AMX: the `amx_bf16` flag), which oneDNN uses
    for bf16 convolutions. avx512_bf16 alone gives far less, so it does not count."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


def candidates(engine: str, precision: str, device: torch.device,
               amx: bool | None = None) -> list[tuple[str, str]]:
    """The (engine, precision) pairs to load, fastest first when known; when there are several,
    a short timing at warm-up keeps the fastest (runtime.ModelRuntime).

    An explicit precision is what runs. `auto` is exact fp32 (ONNX Runtime on CPU, PyTorch on
    CUDA), except on a CPU with bf16 matrix units (AMX) where PyTorch may run: there centred bf16
    (centred.py) races ONNX Runtime fp32, since which is faster depends on the model and the
    machine. CUDA stays fp32 under auto until a GPU run has measured the alternatives."""
    if precision != "auto":
        return [(choose_engine(engine, device, precision), precision)]
    fp32 = (choose_engine(engine, device, "fp32"), "fp32")
    if device.type != "cpu" or engine == "onnxruntime" or not (cpu_has_amx() if amx is None else amx):
        return [fp32]
    return [("torch", "bf16")] if fp32[0] == "torch" else [("torch", "bf16"), fp32]


def choose_engine(requested: str, device: torch.device, precision: str = "fp32") -> str:
    if requested not in ENGINES:
        raise ValueError(f"unknown engine {requested!r}; choose one of: {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision != "fp32":
        if requested == "onnxruntime":
            raise ValueError("the onnxruntime engine runs fp32 only; use engine torch")
        return "torch"  # reduced precision is PyTorch (autocast, or TF32 convolutions)
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


def configure_cuda_math(precision: str) -> None:
    """Set cuDNN's process-wide switches for `precision` (call before the first CUDA forward).

    PyTorch lets cuDNN run "fp32" convolutions in TF32 by default (10-bit mantissa inputs). With
    the real U2NETP weights that moves masks by up to MAD 0.3/255 and IoU 0.990 against true fp32
    (emulated on CPU by rounding every convolution's inputs and weights; tests/test_parity.py),
    inside the parity bounds but not exact. So `fp32` means exact fp32, and the faster TF32 is
    asked for by name (`tf32`). benchmark=True lets cuDNN time its algorithms once per input
    shape; the warm-up runs every batch size so no request pays for that.
    """
    # The network is convolutions only (no matmul). The fp32_precision API replaces allow_tf32,
    # and PyTorch refuses a mix of the two, so only the new one is used.
    torch.backends.cudnn.conv.fp32_precision = "tf32" if precision == "tf32" else "ieee"  # type: ignore[attr-defined]  # stubs lack it
    torch.backends.cudnn.benchmark = True


def _postprocess(d0: np.ndarray) -> np.ndarray:
    return np.stack([normalise_prediction(p) for p in d0])


# What U2NET_PRECISION=auto demands of a reduced precision at load, against fp32 on a second
# generated picture (TorchPredictor.agreement); below it that candidate is dropped. A guard against
# a broken bf16 path on this machine, not the proof of quality (that is the parity tests on real
# photos): a generated picture shows less than photos do.
MIN_AUTO_IOU = 0.99
MAX_AUTO_MAD = 1.0  # /255


def mask_agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(IoU of the masks at 0.5, mean absolute difference in 1/255) of two [0, 1] predictions."""
    a, b = reference >= 0.5, other >= 0.5
    union = int(np.logical_or(a, b).sum())
    iou = 1.0 if union == 0 else float(np.logical_and(a, b).sum()) / union
    return iou, float(np.abs(reference - other).mean() * 255)


class TorchPredictor:
    """The network on its device in PyTorch: a batch of prepared inputs in, masks out.

    fp32 is exact. tf32 (CUDA) rounds convolution inputs to TF32. bf16 and fp16 run every
    convolution centred (centred.py), calibrated on `calibration`; `agreement` is then their mask
    against fp32's (mask_agreement) on `check` (default: the calibration input itself). With
    `compile`, torch.compile (inductor) fuses the centring and the exact fp32 corrections into
    the convolutions' neighbours: the first call compiles (tens of seconds; cached on disk, see
    runtime.py).
    """

    engine = "torch"

    def __init__(self, net: U2Net, device: torch.device, precision: str = "fp32",
                 calibration: torch.Tensor | None = None, compile: bool = False,
                 check: torch.Tensor | None = None):
        if precision not in PRECISIONS or precision == "auto":
            raise ValueError(f"unknown precision {precision!r}; choose one of: "
                             f"{', '.join(p for p in PRECISIONS if p != 'auto')}")
        if precision in _CUDA_ONLY and device.type != "cuda":
            raise ValueError(f"{precision} runs on CUDA only; use fp32 or bf16 on CPU")
        self.device = device
        self.precision = precision
        if device.type == "cuda":
            configure_cuda_math(precision)
        # channels_last: oneDNN and cuDNN both run these convolutions faster in NHWC (DESIGN.md §3).
        self.net = net.to(device).to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]  # stubs lack it
        self.agreement: tuple[float, float] | None = None
        if precision in _LOW_PRECISION:
            if calibration is None:
                raise ValueError("reduced precision needs a calibration input")
            sample = calibration.to(device).contiguous(memory_format=torch.channels_last)
            probe = sample if check is None else check.to(device).contiguous(
                memory_format=torch.channels_last)
            reference = self._masks(probe)
            centre_convolutions(self.net, sample, _LOW_PRECISION[precision])
            self.agreement = mask_agreement(reference, self._masks(probe))
        self.compiled = compile
        self._forward = torch.compile(self.net) if compile else self.net

    def stop_compiling(self) -> None:
        """Run eagerly from now on (torch.compile failed on this machine: no C++ compiler, say)."""
        self._forward = self.net
        self.compiled = False

    @torch.inference_mode()
    def _masks(self, x: torch.Tensor, forward: Callable | None = None) -> np.ndarray:
        """Masks for a channels-last batch on the device, by `forward` (default: the eager net)."""
        # `is None`, not `or`: torch.compile's module has no truth value (it raises TypeError,
        # which warm-up took for a failed compile and ran eagerly from then on).
        d0 = (self.net if forward is None else forward)(x, fused_only=True)
        return _postprocess(d0[:, 0].float().cpu().numpy())

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, S, S) float32 in [0, 1], min-max normalised per image."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        return self._masks(x.contiguous(memory_format=torch.channels_last), self._forward)


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
        # The TorchScript exporter announces its own deprecation twice per export (measured with
        # torch 2.13: two DeprecationWarnings, nothing else); any other warning still shows.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, (torch.zeros(1, 3, input_size, input_size),), buf,  # type: ignore[arg-type]  # a file object works
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
            atomic_write(path, data)
        except OSError as exc:
            log.warning("cannot cache the ONNX export in %s (%s); exporting at every start",
                        cache_dir, exc)
    return data


def onnx_session(model: bytes | str, providers: list | None = None, threads: int | None = None):
    """An ONNX Runtime session the way the service runs every ONNX model (its own exports and
    custom models): all graph optimisations, torch's thread count, CPU unless `providers` says."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # No busy-waiting after a run: spinning threads steal the cores that decode and encode
    # need next (measured at 12 MP in the server: encode ~200 -> ~150 ms; forward ~3 % slower).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])


class OnnxPredictor:
    """The same network run by ONNX Runtime on CPU (exact fp32, faster than eager PyTorch)."""

    engine = "onnxruntime"

    def __init__(self, model_bytes: bytes, precision: str = "fp32", threads: int | None = None):
        if precision != "fp32":
            raise ValueError("the onnxruntime engine runs fp32 only")
        self.session = onnx_session(model_bytes, threads=threads)
        self.device = torch.device("cpu")
        self.precision = precision
        self.provider = "CPUExecutionProvider"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        d0 = self.session.run(None, {"input": np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return _postprocess(d0[:, 0])

