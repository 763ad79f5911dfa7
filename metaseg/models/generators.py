"""Networks that generate a joint (image, mask) sample as one (C+1)-channel tensor in [-1, 1].

They live in `metaseg.models` (DESIGN.md: "models/ ... generators") because they are plain
`nn.Module`s with no training logic; `metaseg.generative` owns the losses, the training loop,
sampling and the memorisation audit. The last channel is the mask; it is thresholded at 0 (i.e.
probability 0.5 after mapping back to [0, 1]) when sampled.

* DCGAN (Radford et al. 2016), a compact member of the paper's GAN family: transposed-conv
  generator with BatchNorm, spectrally normalised discriminator (stabler on small data sets).
* The diffusion denoiser is diffusers' `UNet2DModel` (not hand-written), configured small enough
  for CPU: `diffusion_unet_config` gives the block layout for a side length.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from metaseg.errors import MetasegError


def check_size(size: int, option: str = "--size") -> int:
    """Side lengths the generators support: a power of two from 16 to 256."""
    if size < 16 or size > 256 or size & (size - 1):
        raise MetasegError(f"{option}: the generators need a power-of-two side from 16 to 256, got {size}")
    return int(size)


def _levels(size: int) -> int:
    """Resolution doublings from the 4x4 seed to `size`."""
    return int(math.log2(check_size(size) // 4))


class DCGANGenerator(nn.Module):
    """z (B, z_dim) -> (B, channels, size, size) in [-1, 1]; width = channels of the last block."""

    def __init__(self, z_dim: int = 64, channels: int = 2, size: int = 64, width: int = 32):
        super().__init__()
        n = _levels(size)
        widths = [width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 256, 128, 64, 32
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.z_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """(B, channels, size, size) -> (B,) real/fake logits; spectral norm on every conv, no BatchNorm."""

    def __init__(self, channels: int = 2, size: int = 64, width: int = 32):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        n = _levels(size)
        widths = [width * 2 ** i for i in range(n)]  # e.g. 32, 64, 128, 256
        layers: list[nn.Module] = [sn(nn.Conv2d(channels, widths[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [sn(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        layers += [sn(nn.Conv2d(widths[-1], 1, 4, 1, 0))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def diffusion_unet_config(channels: int = 2, size: int = 64, width: int = 32) -> dict[str, Any]:
    """UNet2DModel arguments: up to four resolution levels (width, 2w, 2w, 4w), self-attention only
    at the coarsest level (cheap there), one ResNet layer per block, GroupNorm with 8 groups."""
    if width < 8 or width % 8:
        raise MetasegError(f"--width: the diffusion U-Net needs a multiple of 8, got {width}")
    levels = min(4, _levels(size))
    blocks = [width, 2 * width, 2 * width, 4 * width][:levels]
    return {
        "sample_size": size, "in_channels": channels, "out_channels": channels, "layers_per_block": 1,
        "block_out_channels": tuple(blocks), "norm_num_groups": 8,
        "down_block_types": ("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        "up_block_types": ("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
    }


def create_diffusion_unet(channels: int = 2, size: int = 64, width: int = 32) -> nn.Module:
    """diffusers' UNet2DModel predicting the noise of a (channels, size, size) sample."""
    from diffusers import UNet2DModel  # lazy: diffusers takes seconds to import

    return UNet2DModel(**diffusion_unet_config(channels, size, width))
