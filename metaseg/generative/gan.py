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
* `augment`: DiffAugment (Zhao et al. 2020) for small training sets: every sample the discriminator
  sees, real or fake, is translated by up to 1/8 of its side and has a random square of half the
  side cut out - the same differentiable transform on the image and its mask.
* `mode_seeking`: weight of the mode-seeking term (Mao et al. 2019, MSGAN): the generator is
  rewarded for mapping two different z of a batch to different samples (0 = off).
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
LEGACY = {"arch": "dcgan", "mbstd": False, "r1": 0.0, "ema": False, "augment": False, "mode_seeking": 0.0}
DEFAULTS = {"arch": "style", "mbstd": True, "r1": 1.0, "ema": True, "augment": False, "mode_seeking": 1.0}  # benchmarks/synthetic_gan_probe.py
EMA_HALFLIFE_IMAGES, EMA_RAMPUP = 10_000, 0.05


def diff_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """DiffAugment's translation (up to 1/8 of the side, background -1 shifted in) and cutout (a square
    of half the side set to 0) on (B, C, H, W); differentiable, randomness from `gen`."""
    b, _, h, w = x.shape
    s = h // 8
    shift = torch.randint(-s, s + 1, (2, b), generator=gen).tolist()
    padded = F.pad(x, (s, s, s, s), value=-1.0)
    x = torch.stack([padded[i, :, s + dy:s + dy + h, s + dx:s + dx + w] for i, (dy, dx) in enumerate(zip(*shift))])
    side = h // 2
    corner = torch.randint(0, h - side + 1, (2, b), generator=gen)
    r0, c0 = corner[0][:, None, None], corner[1][:, None, None]
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    keep = ~((rows >= r0) & (rows < r0 + side) & (cols >= c0) & (cols < c0 + side))
    return x * keep[:, None].to(x.device, x.dtype)


class GAN(JointGenerator):
    default_lr = 2e-4
    legacy_spec = LEGACY

    def __init__(self, channels: int, size: int, width: int = 32, lr: float | None = None, z_dim: int = 64,
                 arch: str = DEFAULTS["arch"], mbstd: bool = DEFAULTS["mbstd"], r1: float = DEFAULTS["r1"],
                 ema: bool = DEFAULTS["ema"], augment: bool = DEFAULTS["augment"],
                 mode_seeking: float = DEFAULTS["mode_seeking"], device: str = "cpu"):
        if arch not in ARCHS:
            raise MetasegError(f"--gan-arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        for option, value in (("--r1", r1), ("--mode-seeking", mode_seeking)):
            if value < 0:
                raise MetasegError(f"{option} must be >= 0 (0 = off), got {value}")
        super().__init__(channels, size, width, lr, device)
        self.z_dim, self.arch, self.mbstd, self.r1, self.ema = int(z_dim), arch, bool(mbstd), float(r1), bool(ema)
        self.augment, self.mode_seeking = bool(augment), float(mode_seeking)
        net = StyleGenerator if arch == "style" else DCGANGenerator
        self.g = net(self.z_dim, self.channels, self.size, self.width).to(self.device)
        self.d = DCGANDiscriminator(self.channels, self.size, self.width, mbstd=self.mbstd).to(self.device)
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False) if self.ema else None
        self.images_seen = 0
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=self.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=self.lr, betas=(0.5, 0.999))

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "z_dim": self.z_dim, "arch": self.arch, "mbstd": self.mbstd, "r1": self.r1, "ema": self.ema,
                "augment": self.augment, "mode_seeking": self.mode_seeking}

    def train_step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        self.g.train(), self.d.train()
        z = self.noise((x.shape[0], self.z_dim), gen)
        fake = self.g(z)
        aug = (lambda t: diff_augment(t, gen)) if self.augment else (lambda t: t)
        # discriminator: real -> 1, fake -> 0 (softplus form of the logistic loss), + R1 on reals
        real = aug(x.detach()).detach().requires_grad_(self.r1 > 0)
        real_logits = self.d(real)
        loss_d = F.softplus(-real_logits).mean() + F.softplus(self.d(aug(fake.detach()))).mean()
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
        loss_g = F.softplus(-self.d(aug(fake))).mean()
        if self.mode_seeking > 0:  # pairs (i, i + B/2): distance of samples over distance of codes, maximised
            h = x.shape[0] // 2
            ratio = (fake[:h] - fake[h:2 * h]).abs().mean(dim=(1, 2, 3)) / (z[:h] - z[h:2 * h]).abs().mean(dim=1)
            loss_g = loss_g + self.mode_seeking / (ratio.mean() + 1e-5)
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
