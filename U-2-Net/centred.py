"""Centred low-precision convolutions: bf16 (or fp16) matrix units with fp32's masks (issue 16).

Rounding a convolution's input to bf16 keeps about 3 significant digits. Some of U²-Net's layers
see inputs that are a large per-channel offset plus a small signal (a ReLU output after a batch
norm with a large shift, a residual sum): rounding erases the signal, and bf16 everywhere moves
the real U2NETP masks to IoU 0.905 against fp32. So each convolution here runs on its input
*centred* on per-channel means measured on a calibration pass, and the part that was taken out
comes back exactly, in fp32:

    conv(x) = conv_lowp(x - m) + conv(m) + bias,

where conv(m) is the convolution of the constant image m. With zero padding that is not one
number per channel: an output pixel near the border sees fewer taps. It depends only on which taps
fall inside the image, which takes a handful of values per row and per column, so it is kept as a
small table (channels x row classes x column classes) plus, for every output row and column, its
class; adding it back is a gather, which torch.compile fuses into the convolution's epilogue.

Batch norms are folded into the convolutions first (inference only): fewer elementwise passes,
and the offsets they add are handled by the same exact fp32 term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import REBNCONV


def fold_batch_norms(net: nn.Module) -> nn.Module:
    """Each REBNCONV's batch norm folded into its convolution (in place; eval statistics)."""
    for module in net.modules():
        if isinstance(module, REBNCONV) and isinstance(module.bn_s1, nn.BatchNorm2d):
            conv, bn = module.conv_s1, module.bn_s1
            mean, var = bn.running_mean, bn.running_var
            assert mean is not None and var is not None and conv.bias is not None  # eval BN
            scale = bn.weight / torch.sqrt(var + bn.eps)
            with torch.no_grad():
                conv.weight.mul_(scale[:, None, None, None])
                conv.bias.copy_((conv.bias - mean) * scale + bn.bias)
            module.bn_s1 = nn.Identity()  # type: ignore[assignment]  # inference-only copy
    return net


def _tap_classes(size: int, kernel: int, stride: int, padding: int, dilation: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """For one spatial axis: (which taps each output position sees inside the input, one row per
    distinct pattern: classes x kernel, 0/1 float64), (each output position's class)."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    source = (torch.arange(out)[:, None] * stride - padding
              + torch.arange(kernel)[None, :] * dilation)
    valid = ((source >= 0) & (source < size)).to(torch.float64)
    patterns, index = torch.unique(valid, dim=0, return_inverse=True)
    return patterns, index


class CentredConv2d(nn.Module):
    """A Conv2d run in `dtype` on its input minus `mean` (per input channel), plus the exact fp32
    convolution of the constant mean image and the bias. Output fp32, like the original's."""

    # buffers (registered in __init__; declared for type checkers)
    mean: torch.Tensor
    weight: torch.Tensor
    tap_sums: torch.Tensor
    bias: torch.Tensor
    table: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor

    def __init__(self, conv: nn.Conv2d, mean: torch.Tensor, dtype: torch.dtype,
                 input_size: tuple[int, int]):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("centred convolutions support plain zero-padded convolutions only")
        self.dtype = dtype
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        weight = conv.weight.detach()
        self.register_buffer("mean", mean.detach().float().view(1, -1, 1, 1))
        self.register_buffer("weight", weight.to(dtype))
        # sum over input channels of weight x mean, per output channel and tap, in float64
        self.register_buffer("tap_sums", torch.einsum("oikl,i->okl", weight.double(),
                                                      mean.detach().double()))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(weight.shape[0])
        self.register_buffer("bias", bias.double())
        self.input_size = tuple(input_size)
        table, rows, cols = self._offset_parts(*self.input_size)
        self.register_buffer("table", table)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)

    def _offset_parts(self, height: int, width: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(table: 1 x row classes x column classes x out channels, fp32; each output row's
        class; each output column's class) of conv(mean image) + bias for this input size."""
        kh, kw = self.weight.shape[2:]
        row_taps, rows = _tap_classes(height, kh, self.stride[0], self.padding[0], self.dilation[0])
        col_taps, cols = _tap_classes(width, kw, self.stride[1], self.padding[1], self.dilation[1])
        device = self.tap_sums.device
        table = torch.einsum("ak,bl,okl->abo", row_taps.to(device), col_taps.to(device),
                             self.tap_sums) + self.bias
        return table[None].float(), rows.to(device), cols.to(device)

    def offset(self, height: int, width: int) -> torch.Tensor:
        """conv(mean image) + bias at this input size: 1 x C x H' x W' (a channels-last view)."""
        if (height, width) == self.input_size:
            table, rows, cols = self.table, self.rows, self.cols
        else:  # not the calibrated size (the runtime always uses it): computed each time
            table, rows, cols = self._offset_parts(height, width)
        return table[:, rows][:, :, cols].permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written as plain tensor expressions (no out=, no mixed-dtype ops): eager PyTorch runs
        # those on slow paths (a bf16 out= subtraction measured 6x slower than subtract, then
        # cast), and torch.compile fuses these into the convolution's neighbours anyway.
        centred = (x - self.mean).to(self.dtype)
        y = F.conv2d(centred, self.weight, None, self.stride, self.padding, self.dilation)
        return y.float() + self.offset(x.shape[2], x.shape[3])


def input_statistics(net: nn.Module, calibration: torch.Tensor
                     ) -> dict[str, tuple[torch.Tensor, tuple[int, int]]]:
    """{conv name: (its input's per-channel mean over the calibration batch, its input size)}."""
    found: dict[str, tuple[torch.Tensor, tuple[int, int]]] = {}
    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]

    def hook(name):
        def record(module, args):
            x = args[0].detach().float()
            found[name] = (x.mean(dim=(0, 2, 3)), (x.shape[2], x.shape[3]))
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in convs]
    try:
        with torch.inference_mode():
            net(calibration, fused_only=True)
    finally:
        for h in handles:
            h.remove()
    return found


def centre_convolutions(net: nn.Module, calibration: torch.Tensor, dtype: torch.dtype) -> nn.Module:
    """`net` (in eval mode, on its device) with its batch norms folded and every convolution
    replaced by a CentredConv2d in `dtype`, calibrated on `calibration` (a batch of model inputs).
    The state_dict changes: this is an inference-only copy."""
    fold_batch_norms(net)
    statistics = input_statistics(net, calibration)
    modules = dict(net.named_modules())
    for name, (mean, size) in statistics.items():
        parent, _, attr = name.rpartition(".")
        conv = modules[name]
        assert isinstance(conv, nn.Conv2d)
        setattr(modules[parent] if parent else net, attr, CentredConv2d(conv, mean, dtype, size))
    return net
