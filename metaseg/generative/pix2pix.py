"""Level 1 of GenSeg: the Pix2Pix mask -> image GAN trained on the real pairs (LSGAN + lambda L1).

Images and masks are in [-1, 1] here (the generator's tanh range); `to_unit` maps generated
images to the [0, 1] range the segmenters take. Nothing here detaches the generator's output on
the way to a segmenter: `generate` keeps the graph unless asked not to, so the segmentation loss
can reach the generator (levels 2-3, `metaseg.jobs.genseg`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from metaseg.models.pix2pix import PatchDiscriminator, Pix2PixGenerator


def masks_to_input(masks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """{0,1} masks (N, H, W) -> generator input (N, 1, H, W) in [-1, 1]."""
    m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks).float()
    return m.unsqueeze(1).mul(2.0).sub(1.0)


def images_to_tanh(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [-1, 1]."""
    return torch.from_numpy(np.asarray(images)).float().div(127.5).sub(1.0)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (the segmenters' input range), differentiable."""
    return (x + 1.0) * 0.5


@dataclass
class Pix2PixConfig:
    channels: int = 3
    size: int = 64
    width: int = 16  # generator channels of the first level (64 in the paper)
    disc_width: int = 16  # discriminator channels of the first layer (64 in the paper)
    search: bool = False  # mixed-kernel convolutions with architecture logits alpha
    l1_weight: float = 100.0  # pix2pix's lambda
    lr: float = 2e-4
    batch_size: int = 8


class Pix2Pix:
    """Generator, PatchGAN discriminator and their Adam optimisers (beta1 = 0.5, as in pix2pix);
    `step` is one discriminator update and one generator update (weights only, alpha fixed)."""

    def __init__(self, config: Pix2PixConfig, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.G = Pix2PixGenerator(config.channels, config.size, config.width, config.search).to(self.device)
        self.D = PatchDiscriminator(1 + config.channels, config.disc_width).to(self.device)
        self.opt_g = torch.optim.Adam(self.G.weight_parameters(), lr=config.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr, betas=(0.5, 0.999))

    def step(self, masks: torch.Tensor, images: torch.Tensor) -> dict[str, float]:
        """masks (B, 1, S, S) and images (B, C, S, S), both in [-1, 1]."""
        masks, images = masks.to(self.device), images.to(self.device)
        fake = self.G(masks)
        real_logits = self.D(torch.cat([masks, images], 1))
        fake_logits = self.D(torch.cat([masks, fake.detach()], 1))
        loss_d = 0.5 * (F.mse_loss(real_logits, torch.ones_like(real_logits))
                        + F.mse_loss(fake_logits, torch.zeros_like(fake_logits)))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        fake_logits = self.D(torch.cat([masks, fake], 1))
        adv = F.mse_loss(fake_logits, torch.ones_like(fake_logits))
        l1 = F.l1_loss(fake, images)
        loss_g = adv + self.config.l1_weight * l1
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {"d": float(loss_d.detach()), "g_adv": float(adv.detach()), "g_l1": float(l1.detach())}

    def fit(self, images: np.ndarray, masks: np.ndarray, steps: int, seed: int = 0) -> list[dict[str, float]]:
        """`steps` updates on seeded minibatches of the real pairs (uint8 images, {0,1} masks)."""
        x, m = images_to_tanh(images), masks_to_input(masks)
        gen = torch.Generator().manual_seed(seed)
        log = []
        self.G.train()
        for _ in range(steps):
            rows = torch.randint(0, len(x), (min(self.config.batch_size, len(x)),), generator=gen)
            log.append(self.step(m[rows], x[rows]))
        return log

    def generate(self, masks: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """Generator input (B, 1, S, S) -> images in [0, 1]; the graph to G is kept unless `detach`."""
        out = to_unit(self.G(masks.to(self.device)))
        return out.detach() if detach else out

    @torch.no_grad()
    def sample_uint8(self, masks: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """{0,1} masks (N, H, W) -> uint8 images (N, C, H, W), for a fixed synthetic set or a figure."""
        self.G.eval()
        outs = []
        for i in range(0, len(masks), batch_size):
            y = self.G(masks_to_input(masks[i:i + batch_size]).to(self.device))
            outs.append(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy())
        self.G.train()
        return np.concatenate(outs)

    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


def generator_params(G: nn.Module, which: str) -> dict[str, nn.Parameter]:
    """GenSeg's top-level variables: 'arch' (the alpha logits), 'weights' (the convolution
    weights) or 'both'."""
    named = dict(G.named_parameters())
    if which == "arch":
        return {n: p for n, p in named.items() if n.endswith("alpha")}
    if which == "weights":
        return {n: p for n, p in named.items() if not n.endswith("alpha")}
    if which == "both":
        return named
    raise ValueError(f"unknown top-level variables {which!r}")
