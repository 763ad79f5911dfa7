"""DCGAN on joint (image, mask) samples: non-saturating logistic loss, Adam(0.5, 0.999).

The discriminator sees image and mask together, so the generator must produce masks that fit
its images (the point of a joint model). Compact on purpose: 64 px trains on a CPU.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from metaseg.generative.base import JointGenerator
from metaseg.models.generators import DCGANDiscriminator, DCGANGenerator


class GAN(JointGenerator):
    default_lr = 2e-4

    def __init__(self, channels: int, size: int, width: int = 32, lr: float | None = None, z_dim: int = 64,
                 device: str = "cpu"):
        super().__init__(channels, size, width, lr, device)
        self.z_dim = int(z_dim)
        self.g = DCGANGenerator(self.z_dim, self.channels, self.size, self.width).to(self.device)
        self.d = DCGANDiscriminator(self.channels, self.size, self.width).to(self.device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=self.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=self.lr, betas=(0.5, 0.999))

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "z_dim": self.z_dim}

    def train_step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        self.g.train(), self.d.train()
        z = self.noise((x.shape[0], self.z_dim), gen)
        fake = self.g(z)
        # discriminator: real -> 1, fake -> 0 (softplus form of the logistic loss)
        loss_d = F.softplus(-self.d(x)).mean() + F.softplus(self.d(fake.detach())).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        # generator: non-saturating loss, make the discriminator call fakes real
        loss_g = F.softplus(-self.d(fake)).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator, **options: Any) -> torch.Tensor:
        self.g.eval()
        return self.g(self.noise((n, self.z_dim), gen))

    def state_dict(self) -> dict[str, Any]:
        return {"g": self.g.state_dict(), "d": self.d.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
