"""GAN on joint (image, mask) samples: non-saturating logistic loss, Adam(0.5, 0.999).

The discriminator sees image and mask together, so the generator must produce masks that fit
its images (the point of a joint model). Compact on purpose: 64 px trains on a CPU.

Options against mode collapse (all well known; measured in docs/synthetic.md):
* `arch`: "dcgan" (transposed convs + BatchNorm) or "style" (StyleGAN-lite: mapping MLP, learned
  constant, AdaIN per resolution; `metaseg.models.generators.StyleGenerator`).
* `mbstd`: minibatch-standard-deviation feature in the discriminator (progressive GAN).
* `r1`: gamma of the R1 gradient penalty on real samples (StyleGAN; 0 = off).
* `ema`: sample from an exponential moving average of the generator's weights (progressive GAN /
  StyleGAN: half-life 10k images, ramped up as 5 % of the images seen so far).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from metaseg.errors import MetasegError
from metaseg.generative.base import JointGenerator
from metaseg.models.generators import DCGANDiscriminator, DCGANGenerator, StyleGenerator

ARCHS = ("dcgan", "style")
# what a checkpoint written before these options existed was trained with
LEGACY = {"arch": "dcgan", "mbstd": False, "r1": 0.0, "ema": False}
DEFAULTS = {"arch": "style", "mbstd": True, "r1": 0.0, "ema": True}  # chosen by benchmarks/synthetic_gan_probe.py
EMA_HALFLIFE_IMAGES, EMA_RAMPUP = 10_000, 0.05


class GAN(JointGenerator):
    default_lr = 2e-4
    legacy_spec = LEGACY

    def __init__(self, channels: int, size: int, width: int = 32, lr: float | None = None, z_dim: int = 64,
                 arch: str = DEFAULTS["arch"], mbstd: bool = DEFAULTS["mbstd"], r1: float = DEFAULTS["r1"],
                 ema: bool = DEFAULTS["ema"], device: str = "cpu"):
        if arch not in ARCHS:
            raise MetasegError(f"--gan-arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        if r1 < 0:
            raise MetasegError(f"--r1 must be >= 0 (0 = off), got {r1}")
        super().__init__(channels, size, width, lr, device)
        self.z_dim, self.arch, self.mbstd, self.r1, self.ema = int(z_dim), arch, bool(mbstd), float(r1), bool(ema)
        net = StyleGenerator if arch == "style" else DCGANGenerator
        self.g = net(self.z_dim, self.channels, self.size, self.width).to(self.device)
        self.d = DCGANDiscriminator(self.channels, self.size, self.width, mbstd=self.mbstd).to(self.device)
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False) if self.ema else None
        self.images_seen = 0
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=self.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=self.lr, betas=(0.5, 0.999))

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "z_dim": self.z_dim, "arch": self.arch, "mbstd": self.mbstd, "r1": self.r1, "ema": self.ema}

    def train_step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        self.g.train(), self.d.train()
        z = self.noise((x.shape[0], self.z_dim), gen)
        fake = self.g(z)
        # discriminator: real -> 1, fake -> 0 (softplus form of the logistic loss), + R1 on reals
        real = x.detach().requires_grad_(self.r1 > 0)
        real_logits = self.d(real)
        loss_d = F.softplus(-real_logits).mean() + F.softplus(self.d(fake.detach())).mean()
        losses = {}
        if self.r1 > 0:
            (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            penalty = grad.pow(2).flatten(1).sum(1).mean()
            loss_d = loss_d + 0.5 * self.r1 * penalty
            losses["r1"] = penalty.item()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        # generator: non-saturating loss, make the discriminator call fakes real
        loss_g = F.softplus(-self.d(fake)).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.images_seen += x.shape[0]
        if self.g_ema is not None:
            self._update_ema(x.shape[0])
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), **losses}

    @torch.no_grad()
    def _update_ema(self, batch: int) -> None:
        beta = 0.5 ** (batch / max(min(EMA_HALFLIFE_IMAGES, self.images_seen * EMA_RAMPUP), 1e-8))
        for p_ema, p in zip(self.g_ema.parameters(), self.g.parameters()):
            p_ema.lerp_(p, 1.0 - beta)
        for b_ema, b in zip(self.g_ema.buffers(), self.g.buffers()):  # BatchNorm statistics: copied
            b_ema.copy_(b)

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator, **options: Any) -> torch.Tensor:
        g = self.g_ema if self.g_ema is not None else self.g.eval()
        return g(self.noise((n, self.z_dim), gen))

    def state_dict(self) -> dict[str, Any]:
        state = {"g": self.g.state_dict(), "d": self.d.state_dict(),
                 "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "images_seen": self.images_seen}
        if self.g_ema is not None:
            state["g_ema"] = self.g_ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.images_seen = int(state.get("images_seen", 0))
        if self.g_ema is not None:
            self.g_ema.load_state_dict(state["g_ema"])
