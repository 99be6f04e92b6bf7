"""U²-Net and U²-Netp (Qin et al., 2020), written to match the official checkpoints.

Every attribute name below is part of the checkpoint format: `stage1.rebnconvin.conv_s1.weight`,
`side1`, `outconv`, ... must match the authors' `model/u2net.py` exactly so that an official `.pth`
loads with `strict=True`. Change a name and every released checkpoint stops loading.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class REBNCONV(nn.Module):
    """3x3 convolution (optionally dilated), batch norm, ReLU: the unit every RSU is built from."""

    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


def upsample_like(src: torch.Tensor, tar: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of `src` to `tar`'s spatial size (align_corners=False, as the authors)."""
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """Residual U-block of the given depth (RSU-7 ... RSU-4): a small U-Net plus a skip.

    Layers are registered under the authors' names (`rebnconv1`, `pool1`, ..., `rebnconv1d`) so the
    checkpoint keys match; one class replaces the authors' four copies that differ only in depth.
    """

    def __init__(self, depth: int, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.depth = depth
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.add_module("rebnconv1", REBNCONV(out_ch, mid_ch))
        for i in range(1, depth - 1):
            self.add_module(f"pool{i}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
            self.add_module(f"rebnconv{i + 1}", REBNCONV(mid_ch, mid_ch))
        self.add_module(f"rebnconv{depth}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for i in range(depth - 1, 1, -1):
            self.add_module(f"rebnconv{i}d", REBNCONV(mid_ch * 2, mid_ch))
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        encoded = [self.rebnconv1(hxin)]  # type: ignore[operator]  # added with add_module (the authors' key names)
        for i in range(1, self.depth - 1):
            pooled = getattr(self, f"pool{i}")(encoded[-1])
            encoded.append(getattr(self, f"rebnconv{i + 1}")(pooled))
        hx = getattr(self, f"rebnconv{self.depth}")(encoded[-1])
        for i in range(self.depth - 1, 0, -1):
            skip = encoded[i - 1]
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((hx, skip), 1))
            if i > 1:
                hx = upsample_like(hx, encoded[i - 2])
        return hx + hxin


class RSU4F(nn.Module):
    """RSU-4F: the dilated variant used at the lowest resolutions (no pooling, dilation 1-8)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
        return hx1d + hxin


@dataclass(frozen=True)
class U2NetConfig:
    """Channel plan of a U²-Net variant: (in, mid, out) per stage, side-output input widths."""

    name: str
    # encoder stages 1-6, then decoder stages 5d, 4d, 3d, 2d, 1d; each (block, in, mid, out)
    stages: tuple[tuple[str, int, int, int], ...]
    side_channels: tuple[int, ...]  # channels feeding side1 .. side6


U2NET_CONFIG = U2NetConfig(
    name="U2NET",
    stages=(
        ("RSU7", 3, 32, 64), ("RSU6", 64, 32, 128), ("RSU5", 128, 64, 256),
        ("RSU4", 256, 128, 512), ("RSU4F", 512, 256, 512), ("RSU4F", 512, 256, 512),
        ("RSU4F", 1024, 256, 512), ("RSU4", 1024, 128, 256), ("RSU5", 512, 64, 128),
        ("RSU6", 256, 32, 64), ("RSU7", 128, 16, 64),
    ),
    side_channels=(64, 64, 128, 256, 512, 512),
)

U2NETP_CONFIG = U2NetConfig(
    name="U2NETP",
    stages=(
        ("RSU7", 3, 16, 64), ("RSU6", 64, 16, 64), ("RSU5", 64, 16, 64),
        ("RSU4", 64, 16, 64), ("RSU4F", 64, 16, 64), ("RSU4F", 64, 16, 64),
        ("RSU4F", 128, 16, 64), ("RSU4", 128, 16, 64), ("RSU5", 128, 16, 64),
        ("RSU6", 128, 16, 64), ("RSU7", 128, 16, 64),
    ),
    side_channels=(64, 64, 64, 64, 64, 64),
)

_STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4", "stage5", "stage6",
                "stage5d", "stage4d", "stage3d", "stage2d", "stage1d")


def _block(kind: str, in_ch: int, mid_ch: int, out_ch: int) -> nn.Module:
    if kind == "RSU4F":
        return RSU4F(in_ch, mid_ch, out_ch)
    return RSU(int(kind[3:]), in_ch, mid_ch, out_ch)


class U2Net(nn.Module):
    """The two-level nested U-structure: 6 encoder stages, 5 decoder stages, 6 fused side outputs.

    `forward` returns the fused map d0 and the six side maps, all through sigmoid, as the authors'
    code does (training needs all seven). With `fused_only=True` it returns d0 alone (inference);
    with `logits=True` the maps come before the sigmoid (training).
    """

    def __init__(self, config: U2NetConfig, in_ch: int = 3, out_ch: int = 1):
        super().__init__()
        self.config = config
        for name, (kind, cin, mid, cout) in zip(_STAGE_NAMES, config.stages, strict=True):
            if name == "stage1":
                cin = in_ch
            self.add_module(name, _block(kind, cin, mid, cout))
        for i in range(1, 6):
            self.add_module(f"pool{i}{i + 1}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        for i, channels in enumerate(config.side_channels, start=1):
            self.add_module(f"side{i}", nn.Conv2d(channels, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, fused_only: bool = False, logits: bool = False):
        decoded = self._stages(x)
        d1 = self.side1(decoded[1])  # type: ignore[operator]  # added with add_module (the authors' key names)
        sides = [d1] + [upsample_like(getattr(self, f"side{i}")(decoded[i]), d1) for i in range(2, 7)]
        d0 = self.outconv(torch.cat(sides, 1))
        return _activated([d0, *sides], fused_only, logits)

    def _stages(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """The encoder and decoder: {level: its decoder stage's output} (level 6: encoder stage 6),
        the inputs of the side outputs."""
        encoded = []
        hx = x
        for i in range(1, 7):
            if i > 1:
                hx = getattr(self, f"pool{i - 1}{i}")(hx)
            hx = getattr(self, f"stage{i}")(hx)
            encoded.append(hx)

        decoded = {6: encoded[5]}
        hx = encoded[5]
        for i in range(5, 0, -1):
            hx = upsample_like(hx, encoded[i - 1])
            hx = getattr(self, f"stage{i}d")(torch.cat((hx, encoded[i - 1]), 1))
            decoded[i] = hx
        return decoded


def _activated(maps: list[torch.Tensor], fused_only: bool, logits: bool):
    """The first map alone (`fused_only`: inference) or all of them, through sigmoid unless
    `logits` (training takes the logits: BCE on logits is numerically stable and autocast-safe)."""
    activate = (lambda d: d) if logits else torch.sigmoid
    if fused_only:
        return activate(maps[0])
    return tuple(activate(d) for d in maps)


ISNET_CONFIG = U2NetConfig(
    name="ISNetDIS",
    # U2NET's stages, stage 1 fed by conv_in's 64 channels
    stages=(("RSU7", 64, 32, 64), *U2NET_CONFIG.stages[1:]),
    side_channels=U2NET_CONFIG.side_channels,
)


class ISNetDIS(U2Net):
    """IS-Net (Qin et al., "Highly Accurate Dichotomous Image Segmentation", ECCV 2022;
    xuebinqin/DIS, IS-Net/models/isnet.py): U2NET's stages and side outputs behind a stride-2
    `conv_in` (the stages see half the 1024 px input), no fused `outconv`: every side output is
    resized to the input, and the mask is side 1's. The authors define `pool_in` and do not use
    it (it has no weights); it is kept so that the module tree matches theirs.

    `forward` returns the six side maps (through sigmoid unless `logits`), or side 1's alone with
    `fused_only`, so the runtime, the exporter and training treat it as they treat U2Net.
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 1):
        super().__init__(ISNET_CONFIG, in_ch=64, out_ch=out_ch)
        del self.outconv
        self.conv_in = nn.Conv2d(in_ch, 64, 3, stride=2, padding=1)
        self.pool_in = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor, fused_only: bool = False, logits: bool = False):
        decoded = self._stages(self.conv_in(x))
        sides = [upsample_like(getattr(self, f"side{i}")(decoded[i]), x) for i in range(1, 7)]
        return _activated(sides, fused_only, logits)


def U2NET(in_ch: int = 3, out_ch: int = 1) -> U2Net:
    """Full U²-Net (44.0 M parameters): the architecture of u2net and u2net_human_seg."""
    return U2Net(U2NET_CONFIG, in_ch, out_ch)


def U2NETP(in_ch: int = 3, out_ch: int = 1) -> U2Net:
    """U²-Netp (1.1 M parameters): same layout, narrower stages."""
    return U2Net(U2NETP_CONFIG, in_ch, out_ch)


ARCHITECTURES = {"U2NET": U2NET, "U2NETP": U2NETP, "ISNetDIS": ISNetDIS}
