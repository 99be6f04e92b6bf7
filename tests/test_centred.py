"""Centred convolutions (u2net.centred): exact in fp32, close in 16 bits, the same compiled."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from u2net.centred import CentredConv2d, centre_convolutions, fold_batch_norms
from u2net.model import U2NETP, ISNetDIS


def with_offsets(net: nn.Module, seed: int = 0) -> nn.Module:
    """Batch-norm statistics and shifts far from the identity: inputs with large offsets."""
    generator = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.5 + 2)
    return net.eval()


def forward(net, x):
    with torch.inference_mode():
        return net(x, fused_only=True)


@pytest.mark.parametrize(("architecture", "calibrated", "other"), [
    (U2NETP, (96, 96), (75, 131)),  # odd sizes: pooling rounds up, borders differ
    (ISNetDIS, (64, 64), (48, 80)),  # its stride-2 first convolution
])
def test_in_fp32_the_centred_network_is_the_network(architecture, calibrated, other):
    """Centring is exact arithmetic: x - m, then m's constant image added back with its borders
    (zero padding, dilations up to 8, stride 2), at the calibrated size and at any other."""
    torch.manual_seed(0)
    net = with_offsets(architecture())
    calibration = torch.rand(1, 3, *calibrated)
    centred = centre_convolutions(copy.deepcopy(net), calibration, torch.float32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in centred.modules())
    assert all(isinstance(m, CentredConv2d) for m in centred.modules()
               if isinstance(m, nn.Conv2d))
    for size in (calibrated, other):
        x = torch.rand(2, 3, *size)
        expected = forward(net, x)
        assert torch.allclose(forward(centred, x), expected, atol=2e-5), size


def test_the_constant_part_equals_the_convolution_of_the_mean_image():
    conv = nn.Conv2d(5, 7, 3, padding=4, dilation=4)
    mean = torch.randn(5) * 10
    centred = CentredConv2d(conv, mean, torch.float32, (20, 13))
    with torch.no_grad():
        image = mean.view(1, -1, 1, 1).expand(1, 5, 20, 13)
        assert torch.allclose(centred.offset(20, 13), conv(image), atol=1e-4)
        other = mean.view(1, -1, 1, 1).expand(1, 5, 9, 30)
        assert torch.allclose(centred.offset(9, 30), conv(other), atol=1e-4)


def test_folding_batch_norms_keeps_the_function():
    net = with_offsets(U2NETP())
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(forward(fold_batch_norms(copy.deepcopy(net)), x), forward(net, x),
                          atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_centred_convolutions_track_fp32_where_plain_16_bit_does_not(dtype):
    """An input that is an offset of 300 plus a signal of 0.1: rounded to 16 bits the signal is
    lost (bf16 keeps ~3 digits), centred it is kept. fp16 is CUDA's; CPU runs it too (slowly)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 4, 3, padding=1).eval()
    offset = torch.linspace(200, 400, 8).view(1, -1, 1, 1)
    noise = 0.1 * torch.randn(1, 8, 32, 32)
    x = offset + noise
    calibration = offset + 0.1 * torch.randn(1, 8, 32, 32)
    mean = calibration.mean(dim=(0, 2, 3))
    with torch.no_grad():
        exact = conv(x)
        centred = CentredConv2d(conv, mean, dtype, (32, 32))(x)
        plain = nn.functional.conv2d(x.to(dtype), conv.weight.to(dtype), conv.bias.to(dtype),
                                     padding=1).float()
        # what the small part of the input contributes (the convolution is linear)
        signal = nn.functional.conv2d(noise, conv.weight, padding=1).abs().mean()
    centred_error = (centred - exact).abs().mean() / signal
    plain_error = (plain - exact).abs().mean() / signal
    print(f"{dtype}: centred {centred_error:.4f}, plain {plain_error:.4f} of the signal")
    assert centred_error < 0.02 < plain_error


class TwoConvolutions(nn.Module):
    """Small enough to compile in seconds; the same kinds of layers as U²-Net."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=2, dilation=2)

    def forward(self, x, fused_only=True):
        return self.b(torch.relu(self.a(x)) + 3.0)


@pytest.mark.slow
def test_compiled_centred_convolutions_match_eager_ones():
    """What the runtime compiles on CPU gives what eager gives (the fused elementwise work
    rounds the same way up to float32 reassociation)."""
    torch.manual_seed(2)
    x = torch.rand(1, 3, 40, 40).contiguous(memory_format=torch.channels_last)
    net = centre_convolutions(TwoConvolutions().eval().to(memory_format=torch.channels_last), x,
                              torch.bfloat16)
    compiled = torch.compile(net)
    with torch.inference_mode():
        eager, fused = net(x), compiled(x)
    assert torch.allclose(eager, fused, atol=1e-3, rtol=1e-3)
