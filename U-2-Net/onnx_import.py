"""Weights from an ONNX export of a registry architecture (U2NET, U2NETP, ISNetDIS).

Many published copies of these models are ONNX graphs only (rembg's releases, @imgly's IS-Net),
often with batch norm folded into the convolutions and the weights in float16. The graph's
convolutions, in graph order, are mapped onto the architecture's convolutions in execution order
(found by running the network once with hooks), checking every shape on the way; batch norms are
mapped the same way where the export kept them, and set to exact identities where it folded them.
Float16 weights are widened. The result is then proved: ONNX Runtime on the file and PyTorch on
the imported weights must agree on a probe image, or the import is refused naming the largest
difference.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from .registry import ModelLoadError, ModelSpec

log = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)

# ONNX Runtime against PyTorch on the probe; above this the graph is not the architecture.
MAX_PROBE_DIFFERENCE = 2e-3


class ImportRefused(ModelLoadError):
    """The ONNX graph does not match the architecture, or its outputs differ."""


def _resolver(graph: onnx.GraphProto):
    """value name -> float32 array, through Identity, Cast and Constant nodes (exporters put
    float16 weights behind a Cast, and unfolded graphs behind an Identity)."""
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    def value(name: str) -> np.ndarray:
        if name in initializers:
            return numpy_helper.to_array(initializers[name]).astype(np.float32)
        node = producers.get(name)
        if node is not None and node.op_type in ("Identity", "Cast"):
            return value(node.input[0])
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t).astype(np.float32)
        raise ImportRefused(f"the graph computes {name!r} instead of storing it: not a plain export")

    return value


def _execution_order(net: nn.Module, kind: type[M], side: int = 64) -> list[M]:
    """The modules of `kind` in the order a forward pass runs them (each once), from a pass on a
    small input (the order does not depend on the size)."""
    order: list[M] = []
    hooks = [m.register_forward_hook(lambda m, *_: order.append(m))
             for m in net.modules() if isinstance(m, kind)]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, side, side), fused_only=True)
    finally:
        for hook in hooks:
            hook.remove()
    return order


def state_dict_from_onnx(model: onnx.ModelProto, net: nn.Module) -> dict:
    """A state_dict for `net` (a fresh instance of the architecture) from the export `model`."""
    graph = model.graph
    value = _resolver(graph)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    norms = [n for n in graph.node if n.op_type == "BatchNormalization"]
    net_convs = _execution_order(net, nn.Conv2d)
    net_norms = _execution_order(net, nn.BatchNorm2d)
    if len(convs) != len(net_convs):
        raise ImportRefused(f"the graph has {len(convs)} convolutions; the architecture "
                            f"{len(net_convs)}: another architecture")
    with torch.no_grad():
        for i, (node, conv) in enumerate(zip(convs, net_convs, strict=True)):
            weight = value(node.input[1])
            if weight.shape != tuple(conv.weight.shape):
                raise ImportRefused(f"convolution {i} ({node.name or node.output[0]}) has shape "
                                    f"{weight.shape}; the architecture expects "
                                    f"{tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(weight))
            assert conv.bias is not None  # every convolution of these networks has one
            bias = value(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
            conv.bias.copy_(torch.as_tensor(bias, dtype=torch.float32).expand_as(conv.bias))
        if norms:
            _copy_norms(norms, net_norms, value)
        else:  # folded into the convolutions: exact identities (var + eps == 1)
            for bn in net_norms:
                assert bn.running_mean is not None and bn.running_var is not None
                bn.weight.fill_(1)
                bn.bias.zero_()
                bn.running_mean.zero_()
                bn.running_var.fill_(1 - bn.eps)
    return net.state_dict()


def _copy_norms(norms: list, net_norms: list[nn.BatchNorm2d], value) -> None:
    if len(norms) != len(net_norms):
        raise ImportRefused(f"the graph has {len(norms)} batch norms; the architecture "
                            f"{len(net_norms)}")
    for node, bn in zip(norms, net_norms, strict=True):
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale, shift, mean, var = (value(name) for name in node.input[1:5])
        if scale.shape != tuple(bn.weight.shape):
            raise ImportRefused(f"batch norm {node.name} has {scale.shape[0]} channels; the "
                                f"architecture expects {bn.weight.shape[0]}")
        bn.eps = eps
        assert bn.running_mean is not None and bn.running_var is not None
        for target, array in ((bn.weight, scale), (bn.bias, shift), (bn.running_mean, mean),
                              (bn.running_var, var)):
            target.copy_(torch.from_numpy(array))


def probe_difference(model_bytes: bytes, net: nn.Module, input_size: int) -> float:
    """Largest absolute difference between ONNX Runtime on the graph's first output and the
    network's mask, on a deterministic photo-like probe."""
    import onnxruntime as ort

    rng = np.random.default_rng(7)
    coarse = torch.from_numpy(rng.random((1, 3, 8, 8), dtype=np.float32))
    probe = torch.nn.functional.interpolate(coarse, size=(input_size, input_size), mode="bilinear")
    probe = (probe - 0.5) * 2 + torch.from_numpy(
        rng.normal(0, 0.05, (1, 3, input_size, input_size)).astype(np.float32))
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: probe.numpy()})[0]
    with torch.no_grad():
        ours = net.eval()(probe, fused_only=True).numpy()
    return float(np.abs(theirs.reshape(ours.shape) - ours).max())


def import_onnx(path: Path, net: nn.Module, input_size: int,
                tolerance: float = MAX_PROBE_DIFFERENCE) -> dict:
    """The proved state_dict of the ONNX file `path` for `net` (a fresh instance of its
    architecture, in eval mode). Raises ImportRefused."""
    data = Path(path).read_bytes()
    net.eval()
    state = state_dict_from_onnx(onnx.load_from_string(data), net)
    difference = probe_difference(data, net, input_size)
    if not difference <= tolerance:
        raise ImportRefused(f"{path}: ONNX Runtime and the imported weights differ by up to "
                            f"{difference:.2e} on the probe (limit {tolerance:.0e}): the graph is "
                            "not this architecture, or not its inference output")
    return state


def import_to_file(onnx_path: Path, spec: ModelSpec, target: Path) -> int:
    """Import and prove the export `onnx_path` as `spec`'s architecture and write the weights to
    `target` atomically (complete or absent); returns how many tensors it holds. The one path
    from an ONNX file to a .pth: `bgremove import-onnx`, U2NET_WEIGHTS=FILE.onnx, downloads."""
    from .atomic import atomic_write
    from .model import ARCHITECTURES

    state = import_onnx(onnx_path, ARCHITECTURES[spec.architecture](), spec.input_size)
    atomic_write(target, lambda f: torch.save(state, f))
    return len(state)


def imported_weights(onnx_path: Path, spec: ModelSpec, cache_dir: Path | None) -> Path:
    """The .pth for an ONNX export of `spec`'s architecture (U2NET_WEIGHTS=FILE.onnx): imported
    and proved once, then kept in `cache_dir` under the export's checksum (a temporary folder's
    file when there is no cache)."""
    from .weights import file_digest

    digest = file_digest(onnx_path)
    folder = cache_dir or Path(tempfile.gettempdir())
    target = folder / f"{onnx_path.stem}-{spec.architecture}-{digest[:16]}.pth"
    if target.is_file():
        return target
    log.info("importing %s as %s weights (once; kept as %s)", onnx_path, spec.architecture, target)
    folder.mkdir(parents=True, exist_ok=True)
    import_to_file(onnx_path, spec, target)
    return target
