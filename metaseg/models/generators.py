"""Networks that generate a joint (image, mask) sample as one (C+1)-channel tensor in [-1, 1].

They live in `metaseg.models` (DESIGN.md: "models/ ... generators") because they are plain
`nn.Module`s with no training logic; `metaseg.generative` owns the losses, the training loop,
sampling and the memorisation audit. The last channel is the mask; it is thresholded at 0 (i.e.
probability 0.5 after mapping back to [0, 1]) when sampled.

* DCGAN (Radford et al. 2016), a compact member of the paper's GAN family: transposed-conv
  generator with BatchNorm, spectrally normalised discriminator (stabler on small data sets).
* StyleGAN-lite (`StyleGenerator`): the StyleGAN generator's two ideas at DCGAN cost - a mapping
  MLP z -> w and a learned constant 4x4 input whose features are modulated by w at every
  resolution (AdaIN) - without progressive growing, noise inputs or weight demodulation.
* `MinibatchStdDev` (Karras et al. 2018, progressive GAN): the discriminator sees how much a batch
  varies, so a generator that outputs one image for every z is easy to tell from real data.
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


class AdaIN(nn.Module):
    """Instance-normalise the features, then scale and shift them per channel from the style w."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.style = nn.Linear(w_dim, 2 * channels)
        with torch.no_grad():  # scale starts around 1, shift around 0 (StyleGAN's bias init)
            self.style.bias.copy_(torch.cat([torch.ones(channels), torch.zeros(channels)]))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        scale, shift = self.style(w)[:, :, None, None].chunk(2, dim=1)
        return scale * self.norm(x) + shift


class StyleGenerator(nn.Module):
    """StyleGAN-lite: z (B, z_dim) -> mapping MLP -> w; a learned 4x4 constant, then per resolution
    (nearest upsample, 3x3 conv, AdaIN(w), LeakyReLU) up to `size`, a 1x1 conv to `channels`, tanh.
    Same widths as `DCGANGenerator` (width = channels of the last block)."""

    def __init__(self, z_dim: int = 64, channels: int = 2, size: int = 64, width: int = 32, mapping_layers: int = 4):
        super().__init__()
        n = _levels(size)
        widths = [width * 2 ** max(n - 1 - i, 0) for i in range(n + 1)]  # e.g. 256, 128, 64, 32, 32
        mapping: list[nn.Module] = []
        for _ in range(mapping_layers):
            mapping += [nn.Linear(z_dim, z_dim), nn.LeakyReLU(0.2, True)]
        self.mapping = nn.Sequential(*mapping)
        self.const = nn.Parameter(torch.randn(1, widths[0], 4, 4))
        self.convs = nn.ModuleList([nn.Conv2d(widths[0], widths[0], 3, 1, 1)]
                                   + [nn.Conv2d(a, b, 3, 1, 1) for a, b in zip(widths[:-1], widths[1:])])
        self.styles = nn.ModuleList([AdaIN(c, z_dim) for c in widths])
        self.to_out = nn.Conv2d(widths[-1], channels, 1)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)  # pixel norm of z, as in StyleGAN
        w = self.mapping(z)
        x = self.const.expand(z.shape[0], -1, -1, -1)
        for i, (conv, style) in enumerate(zip(self.convs, self.styles)):
            if i > 0:
                x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            x = nn.functional.leaky_relu(style(conv(x), w), 0.2)
        return torch.tanh(self.to_out(x))


class MinibatchStdDev(nn.Module):
    """Append one feature map: the standard deviation over groups of `group` samples, averaged over
    channels and pixels (Karras et al. 2018). A batch of near-identical fakes has a tell-tale ~0."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = math.gcd(b, self.group)  # a group size that divides the batch
        y = x.reshape(g, -1, c, h, w)  # sample i is in group i % (b / g), as in the reference code
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (b / g,)
        return torch.cat([x, std.repeat(g).view(b, 1, 1, 1).expand(b, 1, h, w)], dim=1)


class DCGANDiscriminator(nn.Module):
    """(B, channels, size, size) -> (B,) real/fake logits; spectral norm on every conv, no BatchNorm;
    `mbstd`: a minibatch-standard-deviation feature before the last conv."""

    def __init__(self, channels: int = 2, size: int = 64, width: int = 32, mbstd: bool = False):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        n = _levels(size)
        widths = [width * 2 ** i for i in range(n)]  # e.g. 32, 64, 128, 256
        layers: list[nn.Module] = [sn(nn.Conv2d(channels, widths[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [sn(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        if mbstd:
            layers += [MinibatchStdDev()]
        layers += [sn(nn.Conv2d(widths[-1] + int(mbstd), 1, 4, 1, 0))]
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
