"""Pix2Pix networks for GenSeg's mask -> image generator (Isola et al. 2017; Zhang et al. 2024).

* `Pix2PixGenerator`: a U-Net from a (B, 1, S, S) mask in [-1, 1] to a (B, C, S, S) image in
  [-1, 1]; depth sized to the input (down to 2x2: 5 levels at 64 px, 6 at 128, 7 at 256).
  With `search=True` every down/up convolution is a softmax mixture of the candidate kernels
  (4/2/1, 6/2/2, 8/2/3 = kernel/stride/padding; all halve or double the side exactly) whose
  mixing logits `alpha` are GenSeg's architecture variables (`arch_parameters()`), kept apart
  from the convolution weights (`weight_parameters()`).
* `PatchDiscriminator`: the 70x70 PatchGAN (C64-C128-C256-C512, 4x4 kernels) on the
  concatenated (mask, image), every convolution spectrally normalised; `width` scales the
  channels (64 in the paper, smaller on a CPU).

Plain modules: the losses and the three-level optimisation live in `metaseg.generative`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from metaseg.errors import MetasegError

KERNELS: tuple[tuple[int, int, int], ...] = ((4, 2, 1), (6, 2, 2), (8, 2, 3))  # (kernel, stride, padding)


def unet_depth(size: int, option: str = "--size") -> int:
    """Down-sampling levels for a side `size` (a power of two, 32..512): down to a 2x2 bottleneck."""
    if size < 32 or size > 512 or size & (size - 1):
        raise MetasegError(f"{option}: pix2pix needs a power-of-two side from 32 to 512, got {size}")
    return int(math.log2(size)) - 1


class MixedConv(nn.Module):
    """sum_k softmax(alpha)_k conv_k(x) over the candidate kernels (one candidate without search)."""

    def __init__(self, cin: int, cout: int, transpose: bool, search: bool):
        super().__init__()
        conv = nn.ConvTranspose2d if transpose else nn.Conv2d
        kernels = KERNELS if search else KERNELS[:1]
        self.ops = nn.ModuleList(conv(cin, cout, k, s, p) for k, s, p in kernels)
        self.alpha = nn.Parameter(torch.zeros(len(kernels))) if search else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha is None:
            return self.ops[0](x)
        w = torch.softmax(self.alpha, dim=0)
        return sum(w[i] * op(x) for i, op in enumerate(self.ops))


class Pix2PixGenerator(nn.Module):
    """U-Net mask -> image. `width` = channels of the first level (64 in pix2pix), doubled per
    level up to 8x; InstanceNorm (batch statistics would mix generated and real rows)."""

    def __init__(self, out_channels: int = 3, size: int = 64, width: int = 16, search: bool = False,
                 in_channels: int = 1, dropout: float = 0.0):
        super().__init__()
        self.size, self.search, self.out_channels = size, search, out_channels
        depth = unet_depth(size)
        chans = [min(width * 2 ** i, width * 8) for i in range(depth)]
        self.down = nn.ModuleList()
        self.down_norm = nn.ModuleList()
        cin = in_channels
        for i, c in enumerate(chans):
            self.down.append(MixedConv(cin, c, transpose=False, search=search))
            self.down_norm.append(nn.Identity() if i in (0, depth - 1) else nn.InstanceNorm2d(c, affine=True))
            cin = c
        self.up = nn.ModuleList()
        self.up_norm = nn.ModuleList()
        for i in reversed(range(depth)):
            cout = out_channels if i == 0 else chans[i - 1]
            cin_up = chans[i] if i == depth - 1 else chans[i] * 2
            self.up.append(MixedConv(cin_up, cout, transpose=True, search=search))
            self.up_norm.append(nn.Identity() if i == 0 else nn.InstanceNorm2d(cout, affine=True))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        skips = []
        x = mask
        for i, (conv, norm) in enumerate(zip(self.down, self.down_norm)):
            x = norm(conv(x if i == 0 else F.leaky_relu(x, 0.2)))
            skips.append(x)
        for j, (conv, norm) in enumerate(zip(self.up, self.up_norm)):
            if j > 0:
                x = torch.cat([x, skips[len(skips) - 1 - j]], dim=1)
            x = norm(conv(F.relu(x)))
            if 0 < j < 3:
                x = self.dropout(x)
        return torch.tanh(x)

    def arch_parameters(self) -> list[nn.Parameter]:
        """The mixing logits alpha (empty without search)."""
        return [p for n, p in self.named_parameters() if n.endswith("alpha")]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.endswith("alpha")]

    def chosen_kernels(self) -> list[str]:
        """The kernel each searched layer weighs most (k/s/p), down then up."""
        out = []
        for m in list(self.down) + list(self.up):
            i = 0 if m.alpha is None else int(m.alpha.argmax())
            out.append("%d/%d/%d" % KERNELS[i])
        return out


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN on cat(mask, image): (B, 1 + C, S, S) -> (B, 1, S/8 - 2, S/8 - 2) logits."""

    def __init__(self, in_channels: int = 4, width: int = 16):
        super().__init__()
        sn = nn.utils.spectral_norm
        w = width
        self.net = nn.Sequential(
            sn(nn.Conv2d(in_channels, w, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(4 * w, 8 * w, 4, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(8 * w, 1, 4, 1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
