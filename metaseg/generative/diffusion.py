"""Denoising diffusion on joint (image, mask) samples with diffusers: UNet2DModel predicts the
noise (epsilon objective), DDPMScheduler adds it during training, DDIMScheduler (same noise
schedule) samples in a few dozen deterministic steps, or DDPM with the full chain.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from metaseg.errors import MetasegError
from metaseg.generative.base import JointGenerator
from metaseg.models.generators import create_diffusion_unet

SAMPLERS = ("ddim", "ddpm")
# what the U-Net predicts (diffusers' prediction_type): the noise (DDPM's epsilon), the velocity
# v = sqrt(a) eps - sqrt(1 - a) x (Salimans & Ho 2022) or the clean sample. With few training steps and
# few DDIM steps, epsilon's x0 estimate at high noise divides the network's error by sqrt(a) ~ 0 and
# the samples stay noise-like; v and sample predict a bounded target (docs/synthetic.md, measured).
PREDICTIONS = ("epsilon", "v_prediction", "sample")


class Diffusion(JointGenerator):
    default_lr = 5e-4

    def __init__(self, channels: int, size: int, width: int = 32, lr: float | None = None, train_timesteps: int = 1000,
                 prediction: str = "epsilon", device: str = "cpu"):
        from diffusers import DDPMScheduler

        if prediction not in PREDICTIONS:
            raise MetasegError(f"--prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        super().__init__(channels, size, width, lr, device)
        self.train_timesteps = int(train_timesteps)
        self.prediction = prediction
        self.unet = create_diffusion_unet(self.channels, self.size, self.width).to(self.device)
        self.scheduler = DDPMScheduler(num_train_timesteps=self.train_timesteps, beta_schedule="linear", prediction_type=prediction)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=self.lr, weight_decay=0.0)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "train_timesteps": self.train_timesteps, "prediction": self.prediction}

    def train_step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        self.unet.train()
        noise = self.noise(tuple(x.shape), gen)
        t = torch.randint(0, self.train_timesteps, (x.shape[0],), generator=gen).to(self.device)
        pred = self.unet(self.scheduler.add_noise(x, noise, t), t).sample
        target = {"epsilon": noise, "sample": x}.get(self.prediction)
        loss = F.mse_loss(pred, self.scheduler.get_velocity(x, noise, t) if target is None else target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator, sampler: str = "ddim", steps: int = 50, **options: Any) -> torch.Tensor:
        """`steps` denoising steps (DDIM, eta = 0) or the full DDPM chain (sampler='ddpm')."""
        from diffusers import DDIMScheduler, DDPMScheduler

        if sampler not in SAMPLERS:
            raise MetasegError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if steps < 1 or steps > self.train_timesteps:
            raise MetasegError(f"--sample-steps must be between 1 and {self.train_timesteps}, got {steps}")
        cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
        scheduler = cls.from_config(self.scheduler.config)
        scheduler.set_timesteps(steps if sampler == "ddim" else self.train_timesteps)
        self.unet.eval()
        x = self.noise((n, self.channels, self.size, self.size), gen)
        for t in scheduler.timesteps:
            out = self.unet(x, t).sample  # epsilon, v or x0: the scheduler converts by its prediction_type
            x = scheduler.step(out, t, x, generator=gen).prev_sample
        return x.clamp(-1, 1)

    def state_dict(self) -> dict[str, Any]:
        return {"unet": self.unet.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        self.opt.load_state_dict(state["opt"])
